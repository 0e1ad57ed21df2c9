"""Faults a new user or an attacker meets: stale injected parameters, numbers typed as text, custom runs,
interrupts, bad files and paths, permissions, checkpoints. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

import ncutils as nc
from ncutils.__main__ import main
from ncutils.paths import atomic_path, repo_root, write_json
from ncutils.pipeline import params, runner, yamlio

PROBE_PARAMS = "K: int = 4  # classes\nsleep_s: float = 0.0  # seconds to sleep\nresults_dir: str = ''  # output folder"
PROBE = """
import json, pathlib, time
time.sleep(sleep_s)
pathlib.Path(results_dir).mkdir(parents=True, exist_ok=True)
(pathlib.Path(results_dir) / "seen.json").write_text(json.dumps({"K": K}))
"""


def _probe(folder: Path, stale: str | None = None, code: str = PROBE) -> Path:
    cells = [new_code_cell(PROBE_PARAMS, metadata={"tags": ["parameters"]})]
    if stale is not None:  # what a committed notebook of an earlier run could carry
        cells.append(new_code_cell(stale, metadata={"tags": ["injected-parameters"]}))
    cells.append(new_code_cell(code))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = runner.KERNEL_DISPLAY
    path = folder / "probe.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_stale_injected_cell_cannot_leak(tmp_path):
    path = _probe(tmp_path, stale="# Parameters\nK = 3\n")
    nb = nbformat.read(path, as_version=4)
    nb.metadata["papermill"] = {"parameters": {"K": 3, "data_root": "/elsewhere"}}  # an earlier run's record
    nbformat.write(nb, path)
    runner.run_notebook(path, params={"results_dir": str(tmp_path / "a")}, output=tmp_path / "a.ipynb")
    assert json.loads((tmp_path / "a" / "seen.json").read_text()) == {"K": 4}  # the default, not the stale 3
    assert nbformat.read(tmp_path / "a.ipynb", as_version=4).metadata.papermill.parameters == {
        "results_dir": str(tmp_path / "a")}  # what this run injected, not the earlier record
    runner.run_notebook(path, params={"K": 6, "results_dir": str(tmp_path / "b")}, output=tmp_path / "b.ipynb")
    assert json.loads((tmp_path / "b" / "seen.json").read_text()) == {"K": 6}
    out = nbformat.read(tmp_path / "b.ipynb", as_version=4)
    injected = [c for c in out.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "K = 6" in injected[0].source and "K = 3" not in injected[0].source


def test_the_committed_notebooks_hold_no_injected_cell_and_run_their_defaults():
    for path in runner.list_notebooks():
        nb = nbformat.read(path, as_version=4)
        assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])], path.name
        assert runner.load_profile(path, runner.committed_profile(path)) == {}, path.name


def test_no_committed_file_points_into_the_development_machines_shared_folder():
    """``../shared`` exists only on development machines: no committed notebook, profile, default, or doc names it."""
    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=repo_root(), check=True).stdout
    shared = repo_root().parent / "shared"  # the development machines' folder, when this checkout has one beside it
    names = ["../shared", *([str(shared.resolve())] if shared.is_dir() else [])]
    hits = [f for f in files.split() if not f.startswith("tests/") and (repo_root() / f).is_file()
            and any(name in (repo_root() / f).read_text(errors="ignore") for name in names)]
    assert hits == []


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("5E-4", 5e-4), (".5", 0.5), ("-2.5e+3", -2500.0),
                                        ("[1e-3, 2]", [1e-3, 2]), ("'1e-3'", "1e-3"), ("true", True), ("3", 3)])
def test_numbers_parse_as_numbers(text, value):
    assert yamlio.load(text) == value and type(yamlio.load(text)) is type(value)


def test_numbers_in_the_command_line_profiles_and_duplicate_keys(monkeypatch, tmp_path):
    seen = {}

    def fake_run(notebook, profile=None, params=None, output=None):
        seen.update(params)
        return runner.RunRecord("01_ufm_mse", profile, tmp_path / "x.ipynb", True, 1.0, passed=True)

    monkeypatch.setattr(runner, "run_notebook", fake_run)
    assert main(["run", "01", "-p", "lambda_W", "1e-3", "-p", "lr", ".5"]) == 0
    assert seen == {"lambda_W": 1e-3, "lr": 0.5}
    assert params.validate("01_ufm_mse", {"lambda_W": yamlio.load("1e-3")}) == {"lambda_W": 1e-3}
    dup = tmp_path / "p.yaml"
    dup.write_text("paper: {}\nsmall: {K: 3}\nsmall: {K: 4}\n")
    with pytest.raises(ValueError, match=r"p.yaml is not valid YAML for ncutils: .*found the key 'small' twice"):
        yamlio.load_file(dup)


@pytest.mark.parametrize("value,match", [
    ("[3,", r"parameter K: cannot read '\[3,' as a value"),
    ("!!python/object/apply:os.system ['echo pwned']",
     r"parameter K: cannot read .*could not determine a constructor"),
])
def test_malformed_values_are_error_lines(value, match, capsys):
    assert main(["run", "01", "-p", "K", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(match, err), err


@pytest.mark.parametrize("argv,match", [
    (["-p", "steps", "1000000000000"], r"parameter steps must be an integer in \[1, 1e\+09\]"),
    (["-p", "K", "100000000000"], r"need about .* GiB of memory; this machine has"),
    (["-p", "lr", "true"], r"parameter lr must be a finite number in \(0, inf\), got True \(bool\)"),
    (["-p", "record_every", "0"], r"parameter record_every must be an integer in \[1, inf\)"),
])
def test_absurd_values_are_refused_before_any_kernel(argv, match, capsys, monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("kernel started"))
    assert main(["run", "01", *argv]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_an_output_that_is_a_folder_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("kernel started"))
    assert main(["run", "01", "-o", str(tmp_path)]) == 2
    assert f"error: parameter output: {tmp_path} is a folder" in capsys.readouterr().err


def test_outside_a_checkout_the_cli_says_where_notebooks_are_looked_for(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NCUTILS_ROOT", str(tmp_path))
    assert main(["run", "01"]) == 2
    assert f"no notebooks/ folder in {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize("passed,flag,code,words", [(True, [], 0, "all checks passed"),
                                                     (False, [], 1, "SOME CHECKS FAILED"),
                                                     (False, ["--allow-failed-checks"], 0, "SOME CHECKS FAILED")])
def test_the_last_line_says_whether_the_checks_passed(passed, flag, code, words, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(runner, "run_notebook", lambda *a, **k: runner.RunRecord("01_ufm_mse", None, tmp_path, True,
                                                                                  2.0, passed=passed))
    assert main(["run", "01", *flag]) == code
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(words)


def test_custom_parameter_sets_never_write_the_profiles_results():
    paper = nc.setup("01_ufm_mse")
    assert paper.name == "paper" and paper.results_dir == repo_root() / "outputs" / "01_ufm_mse" / "paper"
    assert paper.figures_dir == repo_root() / "figures"
    custom = nc.setup("01_ufm_mse", K=5)
    assert custom.name.startswith("custom-") and custom.name == nc.setup("01_ufm_mse", K=5).name
    assert custom.results_dir == repo_root() / "outputs" / "01_ufm_mse" / custom.name
    assert custom.figures_dir == custom.results_dir / "figures"
    lying = nc.setup("01_ufm_mse", K=5, profile="paper")  # a profile name does not make a profile's run
    assert lying.name == custom.name
    small = runner.load_profile("01", "small")
    assert nc.setup("01_ufm_mse", **small, profile="small").name == "small"
    assert nc.setup("01_ufm_mse", device="cpu").name == "paper"  # where it runs is not what it computes
    assert nc.setup("01_ufm_mse", K=5).summary([])["run"] == custom.name


def test_plain_papermill_refuses_names_the_notebook_does_not_declare(tmp_path):
    import papermill

    path = _probe(tmp_path, code="import ncutils as nc\nrun = nc.setup('probe', globals())\nprint(run.name)")
    with pytest.raises(papermill.PapermillExecutionError, match=r"unknown parameter\(s\) \['lamda_W'\]"):
        papermill.execute_notebook(str(path), str(tmp_path / "out.ipynb"), parameters={"lamda_W": 0.1},
                                   kernel_name="python3", progress_bar=False, cwd=str(tmp_path))


def test_run_notebook_leaves_the_callers_environment_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("NCUTILS_QUIET", raising=False)
    runner.run_notebook(_probe(tmp_path), params={"results_dir": str(tmp_path / "r")}, output=tmp_path / "o.ipynb")
    assert "NCUTILS_QUIET" not in os.environ


def test_sigterm_leaves_the_partial_notebook_and_one_line(tmp_path):
    path = _probe(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "ncutils", "run", str(path), "-p", "sleep_s", "60", "-p",
                             "results_dir", str(tmp_path / "r"), "-o", str(tmp_path / "out.ipynb")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(repo_root()))
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".out*.ipynb")):  # papermill writes as it goes
        time.sleep(0.5)
    time.sleep(3)  # the kernel is in the sleeping cell
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("interrupted: probe.ipynb") and "partial notebook" in lines[-1], err
    assert "Traceback" not in err
    assert (tmp_path / "out.failed.ipynb").is_file() and not (tmp_path / "out.ipynb").exists()


def test_outputs_have_normal_permissions_and_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644
    assert len(synced) >= 2


def _idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload)


@pytest.mark.parametrize("case,match", [
    ("magic", r"train-labels-idx1-ubyte: magic number 0x00000802, expected 0x00000801"),
    ("empty", r"train-labels-idx1-ubyte is 0 bytes, too short for an IDX header"),
    ("label200", r"label 200 at sample 3 is not a class in \[0, 10\)"),
    ("truncated", r"train-images-idx3-ubyte is .* bytes but its header \(6, 28, 28\) needs"),
])
def test_broken_mnist_files_are_named_with_the_remedy(case, match, tmp_path):
    from ncutils.data import DatasetFormatError, load_dataset, write_fake_mnist

    write_fake_mnist(tmp_path, per_class=1, seed=0)
    raw = tmp_path / "MNIST" / "raw"
    labels = bytes([0, 1, 2, 200, 4, 5])
    images = np.zeros(6 * 784, dtype=np.uint8).tobytes()
    _idx(raw / "train-images-idx3-ubyte", 0x803, (6, 28, 28), images)
    _idx(raw / "train-labels-idx1-ubyte", 0x801, (6,), bytes([0, 1, 2, 3, 4, 5]))
    if case == "magic":
        _idx(raw / "train-labels-idx1-ubyte", 0x802, (6,), labels)
    elif case == "empty":
        (raw / "train-labels-idx1-ubyte").write_bytes(b"")
    elif case == "label200":
        _idx(raw / "train-labels-idx1-ubyte", 0x801, (6,), labels)
    else:
        _idx(raw / "train-images-idx3-ubyte", 0x803, (6, 28, 28), images[:-10])
    with pytest.raises(DatasetFormatError, match=match):
        load_dataset("mnist", tmp_path)


def _ckpt_run(ckpt: Path, init=None):
    model = nc.UFM(K=3, n=4, d=5, lambda_W=1e-2, lambda_H=1e-2)
    return nc.gradient_descent(model, lr=0.1, steps=40, record_every=10, checkpoint=ckpt, checkpoint_every=20,
                               init=init, progress=False, device="cpu")


def test_checkpoints_load_weights_only_and_corrupt_ones_are_named(tmp_path):
    ckpt = tmp_path / "gd.pt"
    first = _ckpt_run(ckpt)
    torch.load(ckpt, weights_only=True)  # plain data and tensors only
    again = _ckpt_run(ckpt)  # resumes from the finished checkpoint
    assert np.allclose(first.final("objective"), again.final("objective"))
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=r"checkpoint .*gd.pt cannot be read .*delete it to start the run afresh"):
        _ckpt_run(ckpt)


def test_a_resume_with_another_explicit_init_is_refused(tmp_path):
    ckpt = tmp_path / "gd.pt"
    model = nc.UFM(K=3, n=4, d=5, lambda_W=1e-2, lambda_H=1e-2)
    init_a = model.init(1, 0.1, torch.Generator().manual_seed(0), torch.float64)
    init_b = model.init(1, 0.1, torch.Generator().manual_seed(1), torch.float64)
    _ckpt_run(ckpt, init_a)
    _ckpt_run(ckpt, init_a)
    with pytest.raises(ValueError, match="different configuration"):
        _ckpt_run(ckpt, init_b)


def test_the_default_autograd_gradient_works_inside_gradient_descent():
    class Quadratic(nc.UFM):
        gradient = nc.FeatureModel.gradient  # the documented autograd default, not the closed form

        def step(self, p, lr):
            for k, g in self.gradient(p).items():
                p[k].sub_(lr * g)

    m = Quadratic(K=3, n=4, d=5, lambda_W=1e-2, lambda_H=1e-2)
    ref = nc.gradient_descent(nc.UFM(K=3, n=4, d=5, lambda_W=1e-2, lambda_H=1e-2), lr=0.1, steps=30,
                              progress=False, device="cpu")
    out = nc.gradient_descent(m, lr=0.1, steps=30, progress=False, device="cpu")
    assert np.allclose(out.final("objective"), ref.final("objective"), rtol=1e-10)


def test_nc3_gram_needs_no_d_by_d_matrix():
    d = 200_000  # a d×d float64 matrix would be 320 GB
    H = torch.randn(30, d, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(10)
    W = torch.randn(3, d, dtype=torch.float64)
    out = nc.metrics.nc_metrics(H, y, W=W)
    assert 0 <= out["nc3_gram"] <= 2


def test_nc3_gram_in_a_basis_equals_the_direct_form():
    from ncutils.metrics import nc3_gram_t

    gen = torch.Generator().manual_seed(0)
    A, M = torch.randn(2, 4, 300, generator=gen, dtype=torch.float64), torch.randn(2, 3, 300, generator=gen,
                                                                                  dtype=torch.float64)
    P, Q = A.transpose(-1, -2) @ A, M.transpose(-1, -2) @ M
    direct = torch.linalg.matrix_norm(P / torch.linalg.matrix_norm(P)[..., None, None]
                                      - Q / torch.linalg.matrix_norm(Q)[..., None, None])
    assert torch.allclose(nc3_gram_t(M, A=A), direct, rtol=1e-12, atol=1e-13)


def test_a_successful_run_prints_no_kernel_log_lines(tmp_path):
    path = _probe(tmp_path)
    out = subprocess.run([sys.executable, "-m", "ncutils", "run", str(path), "-p", "results_dir", str(tmp_path / "r"),
                          "-o", str(tmp_path / "out.ipynb")], capture_output=True, text=True, timeout=300,
                         cwd=str(repo_root()))
    assert out.returncode == 0, out.stderr
    assert "IPKernelApp" not in out.stdout + out.stderr and "KeyboardInterrupt" not in out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1].endswith("no summary.json written")


def test_a_killed_run_leaves_no_kernel_files_behind(tmp_path):
    """SIGKILL cannot be caught: the runner's private connection-file folder stays, its kernel exits (ipykernel
    polls its parent), and the next run sweeps the folder; a run that ends normally removes its own."""
    base = Path(runner.tempfile.gettempdir()) / f"ncutils-kernels-{os.getuid()}"
    path = _probe(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "ncutils", "run", str(path), "-p", "sleep_s", "60", "-p",
                             "results_dir", str(tmp_path / "r"), "-o", str(tmp_path / "out.ipynb")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(repo_root()))
    mine = base / "missing"
    deadline = time.time() + 120
    while time.time() < deadline:
        found = [d for d in base.glob(f"{proc.pid}-*") if list(d.glob("kernel-*.json"))] if base.is_dir() else []
        if found and list(tmp_path.glob(".out*.ipynb")):
            mine = found[0]
            break
        time.sleep(0.5)
    assert mine.is_dir(), "the kernel's connection file is not in the runner's private folder"
    time.sleep(3)
    proc.kill()
    proc.wait(timeout=60)
    assert list(mine.glob("kernel-*.json")), "SIGKILL ran no clean-up: the file is still there"
    deadline = time.time() + 60  # the orphaned kernel notices its parent is gone
    while time.time() < deadline and subprocess.run(["pgrep", "-f", str(mine)], capture_output=True).returncode == 0:
        time.sleep(0.5)
    alive = subprocess.run(["pgrep", "-f", str(mine)], capture_output=True).returncode == 0
    assert not alive, "the kernel outlived its runner"
    with runner.kernel_runtime_dir() as here:  # the next run sweeps what the killed one left
        assert here.is_dir() and os.environ["JUPYTER_RUNTIME_DIR"] == str(here)
        assert not mine.exists()
    assert not here.exists()


def test_an_interrupted_run_removes_its_kernel_folder():
    with pytest.raises(KeyboardInterrupt), runner.kernel_runtime_dir() as here:
        (here / "kernel-x.json").write_text("{}")
        raise KeyboardInterrupt
    assert not here.exists() and os.environ.get("JUPYTER_RUNTIME_DIR") != str(here)


RELAY_PROBE = """
from ncutils.pipeline.params import _relay_cells
_relay_cells()
"""
RELAY_WORK = """# training the probe
import time
from ncutils.device import progress_bar
for _ in progress_bar(range(40), desc="probe GD", mininterval=0.05):
    time.sleep(0.1)
"""


@pytest.mark.skipif(not shutil.which("script"), reason="needs script(1) (util-linux) for a pseudo-terminal")
def test_on_a_terminal_the_runner_shows_the_running_cell_and_the_kernels_own_bar(tmp_path):
    path = _probe(tmp_path, code=RELAY_PROBE)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(new_code_cell(RELAY_WORK))
    nbformat.write(nb, path)
    cmd = f"{sys.executable} -m ncutils run {path} -p results_dir {tmp_path / 'r'} -o {tmp_path / 'out.ipynb'}"
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NCUTILS_QUIET")}
    tty = subprocess.run(["script", "-qfec", f"stty cols 120 rows 40; {cmd}", "/dev/null"], capture_output=True,
                         text=True, timeout=300, cwd=str(repo_root()), env=env)  # a pty of 0 columns shows no bar
    assert tty.returncode == 0, tty.stdout[-2000:]
    assert re.search(r"kernel: \[training the probe\] probe GD: +\d+%", tty.stdout), tty.stdout[-3000:]
    assert "Executing" in tty.stdout  # papermill's own cell bar (n/m cells)
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert not any("probe GD" in str(o) for c in out.cells for o in c.get("outputs", []))  # relayed, not stored
    piped = subprocess.run(cmd.split(), capture_output=True, text=True, timeout=300, cwd=str(repo_root()), env=env)
    assert piped.returncode == 0 and "kernel:" not in piped.stdout + piped.stderr  # quiet when not a terminal


SUMMARY_PROBE = PROBE + """
from ncutils import report
checks = [report.check("f", 1.01, 1.0, 0.1), report.check("NC1", 1e-9, 0.0, 1e-6, kind="abs"),
          report.check("big one", 1.3, 1.0, 0.1, id="big"), report.check("loss below", 0.5, 1.0, 0.1, kind="below"),
          report.count_check("seeds", 3, 4, 4)]
(pathlib.Path(results_dir) / "summary.json").write_text(json.dumps(report.summary({"K": K}, checks)))
"""


def test_a_run_records_its_checks_worst_error_date_commit_and_version(tmp_path):
    """The gallery's card reads these from the executed notebook's ``metadata.ncutils``."""
    from datetime import datetime, timezone
    from importlib.metadata import PackageNotFoundError, version

    before = datetime.now(timezone.utc).replace(microsecond=0)
    rec = runner.run_notebook(_probe(tmp_path, code=SUMMARY_PROBE), params={"results_dir": str(tmp_path / "r")},
                              output=tmp_path / "o.ipynb")
    meta = nbformat.read(rec.output, as_version=4).metadata.ncutils
    assert meta["profile"].startswith("custom-")  # the existing keys stay: profile, wall time, passed, checks
    assert meta["wall_time_s"] >= 0 and meta["passed"] is False and rec.passed is False
    assert meta["checks"] == {"f": True, "nc1": True, "big": False, "loss_below": True, "seeds": False}
    assert meta["checks_passed"] == 3 and meta["checks_total"] == 5
    assert meta["worst_rel_err"] == pytest.approx(0.3) and meta["worst_rel_err_check"] == "big"
    assert meta["worst_rel_err_name"] == "big one"  # the rel_diff of the "below" check is not an error
    run_date = datetime.fromisoformat(meta["run_date"])
    assert run_date.utcoffset().total_seconds() == 0 and before <= run_date <= datetime.now(timezone.utc)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=repo_root()).stdout.strip()
    assert meta["commit"] in (head, f"{head}-dirty"), meta["commit"]
    try:
        assert meta["ncutils_version"] == version("neural-collapse-utils")
    except PackageNotFoundError:
        assert meta["ncutils_version"] == nc.__version__


def test_summary_record_of_a_summary_without_relative_checks_or_with_a_nan(tmp_path):
    def record(checks):
        (tmp_path / "summary.json").write_text(json.dumps({"params": {}, "checks": checks, "passed": False}))
        return runner._summary_record({"results_dir": str(tmp_path)}, "x", "y", since=0.0)

    rec = record([{"id": "a", "name": "A", "kind": "abs", "abs_err": 0.5, "passed": True}])
    assert rec["checks_passed"] == 1 and rec["checks_total"] == 1
    assert rec["worst_rel_err"] is None and rec["worst_rel_err_check"] is None
    rec = record([{"id": "a", "name": "A", "kind": "rel", "rel_err": 0.5, "passed": False},
                  {"id": "b", "name": "B", "kind": "rel", "rel_err": float("nan"), "passed": False},
                  {"id": "c", "name": "C", "kind": "rel", "rel_err": 2.0, "passed": False}])
    assert rec["worst_rel_err"] is None and rec["worst_rel_err_check"] == "b"  # a non-finite error is the worst
    assert record([])["checks_total"] == 0 and record([])["worst_rel_err"] is None
    (tmp_path / "summary.json").unlink()
    assert runner._summary_record({"results_dir": str(tmp_path)}, "x", "y", since=0.0) == {}


def test_git_commit_is_none_outside_a_checkout_or_without_git_and_marks_tracked_changes(tmp_path, monkeypatch):
    assert runner._git_commit(tmp_path) is None  # not a checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "untracked.txt").write_text("x")
    assert runner._git_commit(tmp_path) == head  # an untracked file is not a change of the commit's files
    (tmp_path / "a.txt").write_text("2")
    assert runner._git_commit(tmp_path) == f"{head}-dirty"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no git at all
    assert runner._git_commit(tmp_path) is None

    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

    monkeypatch.setattr(subprocess, "run", hang)
    assert runner._git_commit(tmp_path) is None
