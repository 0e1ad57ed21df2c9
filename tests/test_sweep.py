"""Sweeps: YAML validation, run keys, the local process pool, submitit's local executor, resume of a killed
sweep, failed runs, aggregation. The runs execute a tiny probe notebook through the real papermill runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from ncutils import plot
from ncutils.__main__ import main
from ncutils.pipeline import sweep

PROBE = '''
import json, pathlib, time
from ncutils import theory
time.sleep(sleep_s)
if counter:  # every execution leaves a line: a run executed twice shows up twice
    with open(counter, "a") as fh:
        fh.write(f"{lambda_W}\\n")
if fail:
    raise RuntimeError("probe failure requested")
opt = theory.ufm_mse_optimum(K, n, lambda_W, lambda_H)
out = pathlib.Path(results_dir)
out.mkdir(parents=True, exist_ok=True)
summary = {"params": {"K": K, "lambda_W": lambda_W}, "passed": True, "objective": opt.objective,
           "checks": [{"id": "f_star", "name": f"f* at lambda_W = {lambda_W}", "gd": opt.objective,
                      "theory": opt.objective, "passed": True}],
           "extra": {"seed_plus_one": seed + 1}}
(out / "summary.json").write_text(json.dumps(summary))
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    """A tiny notebook with a parameters cell: f* of the UFM in closed form (fails when ``fail``)."""
    return make_probe(tmp_path_factory.mktemp("nb") / "probe.ipynb")


def make_probe(path: Path) -> Path:
    """Write the probe notebook to ``path``."""
    params = ("K: int = 4\nn: int = 5\nlambda_W: float = 0.005\nlambda_H: float = 0.005\nseed: int = 0\n"
              "fail: bool = False\nsleep_s: float = 0.0\ncounter: str = ''\n"
              "results_dir: str = ''\nfigures_dir: str = 'figures'")
    nb = new_notebook(cells=[new_code_cell(params, metadata={"tags": ["parameters"]}), new_code_cell(PROBE)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("OUT", str(tmp_path / "out")))
    return path


def spec(probe: Path, body: str) -> str:
    return f"notebook: {probe}\noutput: OUT\n{body}"


def test_load_sweep_expands_grid_zip_and_seeds(probe, tmp_path):
    sw = sweep.load_sweep(write(tmp_path, spec(probe, "params: {n: 3}\ngrid: {lambda_W: [0.001, 0.01]}\n"
                                                      "zip: {K: [3, 4], lambda_H: [0.002, 0.02]}\nseeds: 2\n")))
    assert len(sw.runs) == 2 * 2 * 2
    assert len({r.key for r in sw.runs}) == 8 and all(r.folder.parent == tmp_path / "out" / "runs" for r in sw.runs)
    assert {(r.swept["K"], r.swept["lambda_H"]) for r in sw.runs} == {(3, 0.002), (4, 0.02)}  # zipped, not crossed
    assert {r.params["seed"] for r in sw.runs} == {0, 1} and all(r.params["n"] == 3 for r in sw.runs)
    assert sw.swept == ["lambda_W", "seed", "K", "lambda_H"]
    again = sweep.load_sweep(write(tmp_path, spec(probe, "params: {n: 3}\ngrid: {lambda_W: [0.001, 0.01]}\n"
                                                        "zip: {K: [3, 4], lambda_H: [0.002, 0.02]}\nseeds: 2\n")))
    assert [r.key for r in again.runs] == [r.key for r in sw.runs]  # keys are content hashes: stable


@pytest.mark.parametrize("body,message", [
    ("grid: {lambda_W: [0.001, 0.01]\n", "is not valid YAML"),
    ("grid: {lambda_W: []}\n", "grid.lambda_W is an empty list"),
    ("grid: {lambda_X: [1]}\n", "unknown parameter(s) ['lambda_X'] in 'grid'"),
    ("zip: {K: [3, 4], n: [1]}\n", "must have equal lengths"),
    ("grid: {lambda_W: [-1.0]}\n", "parameter lambda_W must be a finite number in [0, inf), got -1.0"),
    ("grid: {K: [1]}\n", "parameter K must be an integer in [2, inf)"),
    ("executor: cloud\n", "executor must be one of"),
    ("slurm: {gpus: 1}\n", "unknown slurm option(s) ['gpus']"),
    ("params: {results_dir: x}\n", "chooses each run's folders itself"),
    ("grid: {lambda_W: 0.1}\n", "grid.lambda_W must be a list"),
    ("colour: red\n", "unknown key(s) ['colour']"),
    ("grid: {lambda_W: [0.001]}\ngrid: {K: [3]}\n", "found the key 'grid' twice"),
    ("slurm: {time_min: 0.5}\n", "parameter slurm.time_min must be a number of minutes >= 1, got 0.5"),
])
def test_bad_sweep_files_fail_with_a_message(probe, tmp_path, body, message):
    with pytest.raises(ValueError, match="sweep file") as err:
        sweep.load_sweep(write(tmp_path, spec(probe, body)))
    assert message in str(err.value)


def test_unknown_notebook_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown notebook '99_nothing'; available notebooks are \['01_ufm_mse'"):
        sweep.load_sweep(write(tmp_path, "notebook: 99_nothing\n"))


def test_local_sweep_runs_skips_reports_failures_and_reruns_alone(probe, tmp_path):
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01], fail: [false, true]}\nworkers: 2\n"))
    messages: list[str] = []
    table = sweep.run_sweep(path, say=messages.append)
    assert sorted(table.status) == ["done", "done", "failed", "failed"]
    failed = table[table.status == "failed"]
    assert failed.error.str.contains("probe failure requested").all()
    done = table[table.status == "done"].sort_values("lambda_W")
    assert done["objective"].tolist() == pytest.approx([float(x) for x in done["checks[f_star].theory"]])
    assert (done["extra.seed_plus_one"] == 1).all() and (done.wall_time_s > 0).all()
    assert {"key", "status", "wall_time_s", "error", "lambda_W", "fail", "checks[f_star].passed"} <= set(table.columns)
    assert not [c for c in table.columns if c.startswith("checks[f*")]  # one column per check id, not per label
    out = tmp_path / "out"
    assert pd.read_parquet(out / "table.parquet").shape == table.shape
    assert pd.read_csv(out / "table.csv").shape == table.shape
    assert any("4 runs: 2 done, 0 running, 2 failed, 0 pending" in m for m in messages)

    sw = sweep.load_sweep(path)
    started = {r.key: json.loads(r.status_file.read_text())["started"] for r in sw.runs}
    messages.clear()
    sweep.run_sweep(sw, say=messages.append)  # nothing pending: nothing runs, failures are reported
    assert {r.key: json.loads(r.status_file.read_text())["started"] for r in sw.runs} == started
    assert sum("failed earlier" in m for m in messages) == 2

    key = failed.key.iloc[0]
    sweep.run_sweep(sw, only=key[:8], say=messages.append)  # one run alone, by key prefix
    after = {r.key: json.loads(r.status_file.read_text())["started"] for r in sw.runs}
    assert [k for k in after if after[k] != started[k]] == [key]


def test_malformed_file_loses_nothing_and_a_grown_sweep_skips_finished_runs(probe, tmp_path):
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001]}\n"))
    sweep.run_sweep(path, say=lambda m: None)
    (run,) = sweep.load_sweep(path).runs
    status = run.status_file.read_text()
    write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01]\n"))  # broken edit
    assert main(["sweep", str(path)]) == 2
    assert run.status_file.read_text() == status and (run.folder / "summary.json").exists()
    write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01]}\n"))  # fixed and grown
    table = sweep.run_sweep(path, say=lambda m: None)
    assert (table.status == "done").all() and len(table) == 2
    assert run.status_file.read_text() == status  # the finished run was skipped


def test_submitit_local_executor(probe, tmp_path):
    pytest.importorskip("submitit")
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01]}\nexecutor: submitit-local\n"
                                       "slurm: {time_min: 10, cpus_per_task: 1}\n"))
    table = sweep.run_sweep(path, say=lambda m: None)
    assert (table.status == "done").all() and len(table) == 2
    assert table["objective"].notna().all()
    assert list((tmp_path / "out" / "submitit").iterdir())  # submitit's own job folders


def test_killed_sweep_resumes_where_it_stopped(probe, tmp_path):
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.002, 0.004]}\nparams: {sleep_s: 4.0}\n"))
    sw = sweep.load_sweep(path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ncutils", "sweep", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while sweep.sweep_status(sw)["done"] < 1:
        assert proc.poll() is None and time.time() < deadline, "the sweep ended or stalled before the kill"
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its worker and the kernel
    proc.wait()
    time.sleep(0.5)
    counts = sweep.sweep_status(sw)
    assert counts["done"] >= 1 and counts["done"] < 3 and counts["running"] == 0
    interrupted = [r for r in sw.runs if json.loads(r.status_file.read_text() if r.status_file.exists() else "{}")
                   .get("state") == "running"]
    assert interrupted and all(sweep.run_state(r) == "pending" for r in interrupted)
    finished = {r.key: r.status_file.read_text() for r in sw.runs if sweep.run_state(r) == "done"}
    table = sweep.run_sweep(path, say=lambda m: None)
    assert (table.status == "done").all()
    assert all(sw.run(k).status_file.read_text() == v for k, v in finished.items())  # not re-run


def test_sweep_metric_plot_and_cli_status(probe, tmp_path, capsys):
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01]}\nseeds: 2\n"))
    assert main(["sweep", str(path), "--workers", "2"]) == 0
    table = pd.read_csv(tmp_path / "out" / "table.csv")
    fig = plot.sweep_metric(table, "lambda_W", "objective", logx=True)
    (line,) = fig.axes[0].lines
    assert list(line.get_ydata()) == pytest.approx(sorted(table.groupby("lambda_W").objective.mean()))
    with pytest.raises(KeyError, match="no column 'nope'"):
        plot.sweep_metric(table, "lambda_W", "nope")
    assert main(["sweep", str(path), "--status"]) == 0
    assert "4 runs: 4 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out


def test_every_documented_slurm_option_is_a_submitit_parameter():
    submitit = pytest.importorskip("submitit")
    valid = submitit.SlurmExecutor._valid_parameters()
    generic = {"timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb"}  # AutoExecutor's own names
    for key, name in sweep.SLURM_OPTIONS.items():
        assert name in generic or (name.startswith("slurm_") and name[len("slurm_"):] in valid), key


def test_a_worker_that_dies_is_reported_as_failed(probe, tmp_path):
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001]}\nparams: {sleep_s: 6.0}\n"))
    (run,) = sweep.load_sweep(path).runs
    proc = subprocess.Popen([sys.executable, "-m", "ncutils", "sweep", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run.status_file.exists() and json.loads(run.status_file.read_text())["state"] == "running"):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    os.kill(json.loads(run.status_file.read_text())["pid"], signal.SIGKILL)  # the worker, not the sweep
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    status = json.loads(run.status_file.read_text())
    assert status["state"] == "failed" and "worker process died" in status["error"]
    assert "worker process died" in err


def test_checks_not_passed_lists_finished_runs_whose_theory_checks_failed():
    table = pd.DataFrame({"key": ["a", "b", "c", "d"], "status": ["done", "done", "failed", "done"],
                          "passed": [True, False, None, None]})
    assert sweep.checks_not_passed(table) == ["b"]
    assert sweep.checks_not_passed(table.drop(columns="passed")) == []


# --------------------------------------------------------------------------- #
# issue 19: keys, --only, two processes, read-only --status, bad output folders, SLURM checks without a cluster
# --------------------------------------------------------------------------- #
def test_keys_hash_every_ncutils_source_file_and_the_lock_file(probe, tmp_path, monkeypatch):
    names = {p.name for p in sweep.source_files()}
    assert {"sweep.py", "runner.py", "theory.py"} <= names
    assert "requirements.lock" in names or not (Path(sweep.__file__).parents[2] / "requirements.lock").exists()
    fake = tmp_path / "fake.py"
    fake.write_text("x = 1\n")
    monkeypatch.setattr(sweep, "source_files", lambda: [fake])
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01]}\n"))
    before = [r.key for r in sweep.load_sweep(path).runs]
    assert [r.key for r in sweep.load_sweep(path).runs] == before
    fake.write_text("x = 2  # a fix to ncutils\n")
    after = [r.key for r in sweep.load_sweep(path).runs]
    assert not set(before) & set(after)  # results computed before the fix are not reused


def test_only_refuses_an_empty_or_ambiguous_key(probe, tmp_path, capsys):
    from dataclasses import replace

    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01, 0.1]}\n"))
    sw = sweep.load_sweep(path)
    sw.runs = [replace(r, key=k) for r, k in zip(sw.runs, ["abc111", "abc222", "abd333"], strict=True)]
    with pytest.raises(ValueError, match=r"parameter only = 'abc' is ambiguous: 2 runs .*abc111.*abc222"):
        sw.run("abc")
    assert sw.run("abd").key == "abd333" and sw.run("abc222").key == "abc222"
    with pytest.raises(ValueError, match=r"parameter only must be a run key or key prefix \(non-empty\), got ''"):
        sw.run("")
    assert main(["sweep", str(path), "--only", ""]) == 2
    assert "error: parameter only must be" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()  # nothing ran


def test_two_sweep_processes_on_one_file_execute_every_run_once(probe, tmp_path):
    counter = tmp_path / "executions.txt"
    path = write(tmp_path, spec(probe, f"grid: {{lambda_W: [0.001, 0.002, 0.004]}}\n"
                                       f"params: {{sleep_s: 1.0, counter: '{counter}'}}\n"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "ncutils", "sweep", str(path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    lines = counter.read_text().split()
    assert sorted(lines) == ["0.001", "0.002", "0.004"], f"a run executed twice: {lines}"
    sw = sweep.load_sweep(path)
    assert sweep.sweep_status(sw)["done"] == 3  # no finished run flipped back to running
    assert any("skipped" in e or "running in another process" in e for e in errs) or len(lines) == 3


def test_status_is_read_only(probe, tmp_path, capsys):
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01]}\n"))
    sweep.run_sweep(path, say=lambda m: None)
    out = tmp_path / "out"
    for f in [out / "table.csv", out / "table.parquet", *out.glob("runs/*/.lock")]:
        f.unlink()
    snapshot = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["sweep", str(path), "--status"]) == 0
    assert "2 runs: 2 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == snapshot  # nothing written, nothing created


BAD_OUTPUTS = {
    "a file": ("file", "cannot be a folder"),
    "under a file": ("file/sub", "cannot be a folder"),
    "unwritable": ("/proc/ncutils-sweep-out", "is not writable"),
    "a run folder that is a file": ("runfile", "is a file"),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_every_bad_output_folder_is_an_error_line_before_anything_runs(probe, tmp_path, capsys, case):
    where, message = BAD_OUTPUTS[case]
    out = where if where.startswith("/") else str(tmp_path / "out" / where.split("/")[0])
    if where.startswith("file"):
        (tmp_path / "out").mkdir()
        Path(out).write_text("not a folder")
        out = str(tmp_path / "out" / where)
    body = "grid: {lambda_W: [0.001, 0.01]}\n"
    path = tmp_path / "sweep.yaml"
    path.write_text(f"notebook: {probe}\noutput: {out}\n{body}")
    if where == "runfile":
        sw = sweep.load_sweep(path)
        sw.runs[0].folder.parent.mkdir(parents=True)
        sw.runs[0].folder.write_text("in the way")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err
    assert all(line.startswith("error: sweep sweep.yaml") for line in err.splitlines()), err
    assert not list(tmp_path.rglob("status.json"))  # nothing ran


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_an_error_line(probe, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o555)
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001]}\n"))
    assert main(["sweep", str(path)]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_device_cuda_on_slurm_is_checked_against_the_compute_nodes_not_this_machine(tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the login-node case cannot be shown here")
    body = "notebook: 01_ufm_mse\nprofile: small\nparams: {device: cuda}\noutput: OUT\n"
    with pytest.raises(ValueError, match="CUDA is not available here"):
        sweep.load_sweep(write(tmp_path, body))  # local runs run here
    sw = sweep.load_sweep(write(tmp_path, body + "executor: slurm\n"))
    assert sw.runs[0].params["device"] == "cuda"
    with pytest.raises(ValueError, match=r"slurm\.gpus_per_node is not set"):
        sweep.preflight(sw)
    sw.slurm = {"gpus_per_node": 1}
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo here
    with pytest.raises(ValueError, match=r"sinfo cannot list the compute nodes' GPUs"):
        sweep.preflight(sw)


def test_time_min_leaves_every_run_time_after_submitits_signal_margin():
    assert sweep.signal_margin_s(None) == 90 and sweep.signal_margin_s(60) == 90
    assert sweep.signal_margin_s(1) < 60 and sweep.signal_margin_s(2) < 120


def test_an_sbatch_refusal_is_one_line_naming_the_option(probe, tmp_path):
    sw = sweep.load_sweep(write(tmp_path, spec(probe, "executor: slurm\nprofile: null\n"
                                                      "slurm: {partition: nosuch}\n")))
    err = RuntimeError("sbatch: error: invalid partition specified: nosuch\n"
                       "sbatch: error: Batch job submission failed: Invalid partition name specified")
    msg = sweep._sbatch_message(sw, err)
    assert "\n" not in msg and "check slurm.partition = 'nosuch'" in msg and "profile None" in msg
