"""Parameters, setup, the papermill runner, figures and the golden notebooks."""

import json
import subprocess
import sys

import matplotlib.pyplot as plt
import nbformat
import pytest

from ncutils import plot, report
from ncutils.paths import atomic_path, repo_root, write_json
from ncutils.pipeline import params, runner

NB = "01_ufm_mse"


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"lambda_W": -0.1}, r"lambda_W must be a finite number in \[0, inf\)"),
        ({"K": 1}, r"K must be an integer in \[2, inf\)"),
        ({"n": 0}, r"n must be an integer in \[1, inf\)"),
        ({"d": 0}, r"parameter d must"),
        ({"lr": 0.0}, r"lr must be a finite number in \(0, inf\)"),
        ({"steps": 0}, "steps must"),
        ({"steps": 1.5}, r"steps must be an integer .* got 1.5 \(float\)"),
        ({"K": "4"}, r"K must be an integer .* \(str\)"),
        ({"device": "tpu"}, r"parameter device must be 'auto', 'cpu'"),
        ({"dtype": "half"}, r"dtype must be one of \('float64', 'float32'\)"),
        ({"bogus": 1}, r"unknown parameter\(s\) \['bogus'\] for 01_ufm_mse; valid parameters are"),
    ],
)
def test_bad_parameters_fail_before_any_compute(no_kernel, bad, match, monkeypatch):
    # the runner validates before a kernel starts: papermill must never be called
    with pytest.raises(ValueError, match=match):
        runner.run_notebook(NB, params=bad)
    if "bogus" not in bad:
        with pytest.raises(ValueError, match=match):
            params.setup(NB, **bad)


def test_setup_folders_and_assumption_note(tmp_path, capsys):
    run = params.setup(NB, K=5, d=3, results_dir=str(tmp_path / "res"), figures_dir=str(tmp_path / "fig"))
    assert run.results_dir.is_dir() and run.figures_dir.is_dir()
    assert any("d < K" in note for note in run.notes)
    assert "NOTE: d < K" in capsys.readouterr().out
    path = run.write_json("summary.json", {"x": 1.0})
    assert json.loads(path.read_text()) == {"x": 1.0}
    env = run.environment()  # the closing cell records the hardware the run used
    assert env["cpu"] and env["cpu"] == params.cpu_model() and int(env["cores"]) >= 1 and int(env["torch_threads"]) >= 1
    # relative folders resolve against the repository root, not the cwd
    run2 = params.setup(NB, results_dir="outputs/test-setup")
    assert run2.results_dir == repo_root() / "outputs" / "test-setup"


def test_unknown_notebook_and_profile():
    with pytest.raises(ValueError, match="unknown notebook 'nope'; available notebooks are"):
        runner.run_notebook("nope")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        runner.run_notebook(NB, profile="huge")


@pytest.mark.parametrize("nb", [p.stem for p in runner.list_notebooks()])
def test_every_parameter_is_declared_once_typed_documented_and_ruled(nb):
    """The parameters cell is the one declaration: every name has a type, a doc and a rule (from the notebook's
    study or the shared vocabulary, never the type-only fallback), the annotated type is the rule's; the study
    has no rule its notebook does not declare; the notebook hands its namespace to setup instead of retyping
    its names; `papermill --help-notebook` lists them."""
    import papermill

    from ncutils.studies._common import COMMON_RULES

    study = params.study_for(nb)
    schema = params.notebook_schema(nb)
    assert set(schema) == set(papermill.inspect_notebook(str(runner.notebook_path(nb))))
    for name, p in schema.items():
        assert p.doc.strip(), f"{name} has no doc comment"
        rule = study.RULES.get(name, COMMON_RULES.get(name))
        assert rule is p.rule, f"{name} has no rule in {study.__name__} or COMMON_RULES"
        assert p.type == rule.kind.__name__, f"{name}: annotated {p.type}, rule checks {rule.kind.__name__}"
        assert rule.validate(name, p.default) == p.default  # the defaults themselves are valid
    assert not set(study.RULES) - set(schema), f"{study.__name__} has rules for undeclared names"
    for path in (runner.notebook_path(nb), repo_root() / "tests" / "golden" / f"{nb}.ipynb"):
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert sum(f'nc.setup("{nb}", globals())' in c for c in code) == 1, path
        assert not any("nc.setup(" in c and "globals()" not in c for c in code), path
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(runner.notebook_path(nb))],
                         capture_output=True, text=True, check=True).stdout
    for name in schema:
        assert name in out


def test_setup_refuses_names_the_notebook_does_not_declare():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['beta'\] for 01_ufm_mse; valid parameters are"):
        params.setup("01_ufm_mse", beta=2.0)
    with pytest.raises(TypeError, match=r"parameter K must be an integer in \[2, inf\), got '3' \(str\)"):
        params.setup("01_ufm_mse", K="3")
    with pytest.raises(ValueError, match=r"parameters \['d'\] of 01_ufm_mse are not defined"):
        params.setup("01_ufm_mse", {k: v.default for k, v in params.notebook_schema("01_ufm_mse").items() if k != "d"})


def test_profiles_use_declared_names():
    for nb in runner.list_notebooks():
        declared = runner.declared_parameters(nb)
        for prof in ["small", *runner.figure_profiles(nb)]:
            checked = params.validate(nb, {**declared, **runner.load_profile(nb, prof)})
            params.check_requirements(nb.stem, checked, machine=False)  # datasets are checked at run time


def test_an_empty_polish_list_is_valid():
    nb = runner.notebook_path("04")
    checked = params.validate(nb, {**runner.declared_parameters(nb), "polish_depths": []})
    params.check_requirements("04_deep_ufm", checked, machine=False)
    assert checked["polish_depths"] == []


def test_figure_profiles():
    assert runner.figure_profiles("01") == ["paper"]
    assert runner.figure_profiles("02") == ["paper", "fig8", "check"]
    assert runner.figure_profiles("03") == ["paper", "fig9", "check"]


@pytest.mark.parametrize(
    "nb,bad,match",
    [
        ("02", {"lambda_W1": -0.005}, r"parameter lambda_W1 must be a finite number in \(0, inf\), got -0.005"),
        ("03", {"lambda_H1": -1.0}, r"parameter lambda_H1 must be a finite number in \(0, inf\)"),
        ("04", {"lambda_W": -0.004}, r"parameter lambda_W must be a finite number in \[0, inf\)"),
        ("04", {"depths": [2, 0]}, r"parameter depths: must be a non-empty list of integers >= 1 \(depths L\)"),
        ("04", {"depths": []}, r"parameter depths: must be a non-empty list"),
        ("04", {"multi_L": 0}, r"parameter multi_L must be an integer in \[1, inf\)"),
        ("04", {"activation": "tanh"}, r"parameter activation must be one of \('relu', 'linear'\), got 'tanh'"),
        ("04", {"width": 1}, r"parameter width must be >= K .* got \{'width': 1, 'K': 2\}"),
        ("04", {"width_study": [30, 5]}, r"parameter width_study must be >= multi_K"),
        ("04", {"polish_depths": [4, 7]}, r"parameter polish_depths must name depths that are run"),
        ("04", {"polish_depths": [1]}, r"parameter polish_depths: must be a list of integers >= 2"),
        ("04", {"polish_max_iter": 0}, r"parameter polish_max_iter must be an integer in \[1, inf\)"),
        ("02", {"d": 3}, r"parameter d must be >= K .* got \{'d': 3, 'K': 4\}"),
        ("03", {"init_scales": [0.1, -1]}, r"parameter init_scales: must be a non-empty list of finite numbers > 0"),
        ("03", {"tag": "a/b"}, r"parameter tag: must be a non-empty name"),
    ],
)
def test_bad_parameters_of_the_multilayer_notebooks(no_kernel, nb, bad, match, monkeypatch):
    with pytest.raises(ValueError, match=match):
        runner.run_notebook(nb, params=bad)


def test_golden_code_matches_source():
    """A golden notebook is the source notebook executed with the small profile: its code
    cells (minus papermill's injected parameters) must equal the source's. If this fails,
    run `make golden`."""
    for src in runner.list_notebooks():
        gold = repo_root() / "tests" / "golden" / src.name
        assert gold.exists(), f"missing golden notebook {gold}; run `make golden`"
        a = [c.source for c in nbformat.read(src, 4).cells
             if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
        b = [c.source for c in nbformat.read(gold, 4).cells
             if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
        assert a == b, f"{gold.name} drifted from {src.name}; run `make golden`"
        checked = [c for c in nbformat.read(gold, 4).cells if "# NBVAL_CHECK_OUTPUT" in c.source]
        assert checked and all(c.outputs for c in checked), f"{gold.name} has no checked outputs"


def test_committed_notebooks_carry_outputs_and_no_errors():
    for src in runner.list_notebooks():
        nb = nbformat.read(src, 4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code), f"{src.name} is not fully executed (run `make figures`)"
        counts = [c.execution_count for c in code]
        assert counts == sorted(counts), f"{src.name} cells ran out of order"
        assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
        assert any(o.get("output_type") == "display_data" for c in code for o in c.outputs), "no figures"


def test_figures_have_stable_bytes(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    a = plot.save(fig, "x", tmp_path / "a")
    b = plot.save(fig, "x", tmp_path / "b")
    for p, q in zip(a, b, strict=True):
        assert p.read_bytes() == q.read_bytes(), p.suffix
    plt.close(fig)


def test_report_check():
    c = report.check("f", 1.00001, 1.0, 1e-4)
    assert c["passed"] and c["rel_err"] == pytest.approx(1e-5)
    assert not report.check("f", 1.1, 1.0, 1e-4)["passed"]
    assert report.check("nc1", 1e-9, 0.0, 1e-6, kind="abs")["passed"]
    with pytest.raises(ValueError, match="kind='abs'"):
        report.check("nc1", 0.1, 0.0, 1e-6)
    assert not report.check("f", float("nan"), 1.0, 1e-4)["passed"]
    below = report.check("f", 0.9, 1.0, 0.0, kind="below")
    assert below["passed"] and below["rel_diff"] == pytest.approx(-0.1)
    assert not report.check("f", 1.0, 1.0, 0.0, kind="below")["passed"]
    assert "below -1.0e-01" in report.checks_table([below]).to_string()


def test_the_checks_table_shows_measured_errors_and_their_tolerance_not_buckets():
    near = report.check("fit", 1.019, 1.0, 0.1)  # a 1.9 % error: once printed as the bucket "rel <1e-1"
    table = report.checks_table([near, report.check("nc1", 3e-10, 0.0, 1e-6, kind="abs"),
                                 report.count_check("seeds at f* with NC2 < 1e-3", 7, 10, 1)])
    assert table.loc["fit", "error"] == "rel 1.9e-02" and table.loc["fit", "tol"] == "0.1"
    assert table.loc["fit", "used"] == "0.19" and table.loc["fit", "ok"] == "PASS"
    assert table.loc["nc1", "error"] == "abs <1e-08" and table.loc["nc1", "used"] == "<0.01"
    exact = report.checks_table([report.check("layers above", 0, 0, 0, kind="abs")])  # tolerance 0, met exactly
    assert exact.loc["layers above", "used"] == "<0.01" and exact.loc["layers above", "ok"] == "PASS"
    missed = report.checks_table([report.check("layers above", 1, 0, 0, kind="abs")])
    assert missed.loc["layers above", "used"] == "inf" and missed.loc["layers above", "ok"] == "FAIL"
    row = table.loc["seeds at f* with NC2 < 1e-3"]
    assert row["GD"] == "7/10" and row["error"] == "need >= 1" and row["ok"] == "PASS"
    assert not report.count_check("all seeds", 7, 10, 10)["passed"]
    with pytest.raises(ValueError, match="parameter count"):
        report.count_check("x", 11, 10, 1)
    with pytest.raises(ValueError, match="parameter required"):
        report.count_check("x", 1, 10, 11)


def test_source_hash_tracks_code_profile_and_ncutils(tmp_path, monkeypatch):
    h = runner.source_hash(NB, "paper")
    assert h == runner.source_hash(NB, "paper")
    assert h != runner.source_hash(NB, "small")
    src = runner.notebook_path(NB)
    nb = nbformat.read(src, as_version=4)  # a copy of the notebook: prose edits keep the hash, code edits change it
    copy = tmp_path / src.name
    nb.cells.append(nbformat.v4.new_markdown_cell("One more sentence of prose."))
    nbformat.write(nb, copy)
    monkeypatch.setattr(runner, "notebook_path", lambda _nb: copy)
    assert runner.source_hash(copy, "paper") == h
    nb.cells.append(nbformat.v4.new_code_cell("x = 1"))
    nbformat.write(nb, copy)
    assert runner.source_hash(copy, "paper") != h


def test_source_hash_leaves_out_only_other_notebooks_studies_that_nothing_imports(tmp_path, monkeypatch):
    """A new or edited study of another notebook keeps a notebook's stamp current; its own study, a shared module, a
    study its own study imports, or a study its code cells import make it stale."""
    import shutil

    root = repo_root()
    for name in ("ncutils", "notebooks", "profiles"):
        shutil.copytree(root / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "scripts"))
    monkeypatch.setattr(runner, "repo_root", lambda: tmp_path)
    studies = tmp_path / "ncutils" / "studies"
    nb06, nb03 = tmp_path / "notebooks" / "06_layer_peeled.ipynb", tmp_path / "notebooks" / "03_relu_eufm.ipynb"
    names = {p.stem for p in runner.notebook_sources(nb06)}
    assert {"layer_peeled", "ufm_mse", "_common", "metrics", "runner"} <= names  # 06's study imports ufm_mse's
    assert not names & {"relu_eufm", "deep_ufm", "resnet", "your_network"}
    h06, h03 = runner.source_hash(nb06, "paper"), runner.source_hash(nb03, "paper")

    def edit(path, text="\n# edited\n"):
        path.write_text(path.read_text() + text)

    edit(studies / "resnet.py")  # another notebook's study
    (studies / "new_study.py").write_text("NOTEBOOK = '99_new_study'\n")  # a study of a notebook not there yet
    assert (runner.source_hash(nb06, "paper"), runner.source_hash(nb03, "paper")) != (h06, h03)  # new file: kept
    (tmp_path / "notebooks" / "99_new_study.ipynb").write_bytes(nb03.read_bytes())  # now it is a notebook's study
    assert (runner.source_hash(nb06, "paper"), runner.source_hash(nb03, "paper")) == (h06, h03)
    edit(studies / "ufm_mse.py")  # imported by 06's study, not by 03's
    assert runner.source_hash(nb06, "paper") != h06 and runner.source_hash(nb03, "paper") == h03
    h06 = runner.source_hash(nb06, "paper")
    edit(studies / "relu_eufm.py")  # 03's own study
    assert runner.source_hash(nb06, "paper") == h06 and runner.source_hash(nb03, "paper") != h03
    h03 = runner.source_hash(nb03, "paper")
    edit(tmp_path / "ncutils" / "metrics.py")  # shared
    assert runner.source_hash(nb06, "paper") != h06 and runner.source_hash(nb03, "paper") != h03
    h03 = runner.source_hash(nb03, "paper")
    nb = nbformat.read(nb03, as_version=4)  # a code cell of 03 importing 09's study
    nb.cells.append(nbformat.v4.new_code_cell("from ncutils.studies import (your_network as yn,\n    resnet)"))
    nbformat.write(nb, nb03)
    assert {"your_network", "resnet"} <= {p.stem for p in runner.notebook_sources(nb03)}


def test_figures_goes_on_when_a_run_cannot_start(monkeypatch, capsys, tmp_path):
    """A notebook refused before any kernel (e.g. its dataset is missing) is reported, the others still run,
    and the command exits non-zero listing why."""
    from ncutils.__main__ import main

    calls = []

    def fake_run(path, profile=None, output=None, raise_on_error=True, **kw):
        calls.append(path.stem)
        if path.stem == "05_perturbation":
            raise ValueError("parameter data_root: mnist not found: looked for … in data/MNIST/raw")
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("executed")]), output)
        return runner.RunRecord(path.stem, profile, output, True, 0.0, passed=True)

    (tmp_path / "notebooks").mkdir()
    notebooks = []  # copies: the committed notebooks are never written by this test
    for src in runner.list_notebooks():
        notebooks.append(tmp_path / "notebooks" / src.name)
        notebooks[-1].write_bytes(src.read_bytes())
    monkeypatch.setattr(runner, "list_notebooks", lambda: notebooks)
    monkeypatch.setattr(runner, "repo_root", lambda: tmp_path)  # stamps and outputs go to tmp_path
    monkeypatch.setattr(runner, "run_notebook", fake_run)
    monkeypatch.setattr(runner, "figure_profiles", lambda path: ["paper"])
    monkeypatch.setattr(runner, "committed_profile", lambda path: "paper")
    monkeypatch.setattr(runner, "source_hash", lambda path, profile: "x")
    assert main(["figures", "--force", "--only", "04", "05", "06"]) == 1
    assert sorted(calls) == ["04_deep_ufm", "05_perturbation", "06_layer_peeled"]  # longest (recorded) first
    copied = nbformat.read(tmp_path / "notebooks" / "04_deep_ufm.ipynb", as_version=4)  # copied back, stamped
    assert copied.cells[0].source == "executed"
    assert copied.metadata.ncutils.stamps == {"paper": {"hash": "x", "wall_time_s": 0.0, "passed": True}}
    assert runner.stamps(tmp_path / "notebooks" / "04_deep_ufm.ipynb")["paper"]["hash"] == "x"
    err = capsys.readouterr().err
    assert "could not run 05_perturbation: could not start: parameter data_root: mnist not found" in err


def test_atomic_path_keeps_the_old_file_when_writing_fails_and_leaves_no_temporary(tmp_path):
    target = write_json(tmp_path / "sub" / "a.json", {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"x": 1}
    write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_clean_gives_the_injected_parameters_cell_a_stable_id_and_drops_timings(tmp_path):
    from nbformat.v4 import new_code_cell, new_notebook

    injected = new_code_cell("K = 3", metadata={"tags": ["injected-parameters"], "papermill": {"duration": 1.0}})
    nb = new_notebook(cells=[new_code_cell("K = 4", metadata={"tags": ["parameters"]}), injected])
    nb.metadata["papermill"] = {"start_time": "now", "parameters": {"K": 3}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    runner._clean(path, record={"profile": "small", "wall_time_s": 1.0})
    out = nbformat.read(path, as_version=4)
    assert out.cells[1].id == "injected-parameters" and "papermill" not in out.cells[1].metadata
    assert out.cells[0].id == nb.cells[0].id
    assert out.metadata.papermill == {"parameters": {"K": 3}}
    assert out.metadata.ncutils == {"profile": "small", "wall_time_s": 1.0}


def test_long_gd_step_axes_get_compact_ticks(tmp_path):
    fig, (a, b) = plt.subplots(1, 2, figsize=(4, 2))
    a.plot([0, 200_000], [1, 0])
    a.set_xlabel("GD step")
    b.plot([0, 200_000], [1, 0])
    b.set_xlabel("λ")
    plot.save(fig, "x", tmp_path)
    labels = [t.get_text() for t in a.get_xticklabels() if t.get_text()]
    assert labels and all(len(t) <= 5 for t in labels) and "100k" in labels, labels
    assert plot._step_label(1_500_000) == "1.5M" and plot._step_label(500) == "500"
    assert b.xaxis.get_major_formatter().__class__.__name__ != "FuncFormatter"
    plt.close(fig)
