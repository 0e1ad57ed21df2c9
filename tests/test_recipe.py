"""docs/adding_a_notebook.md, followed literally: a new notebook is one study module, one notebook, one profile."""

from __future__ import annotations

import json
import re

import jupytext
import nbformat
import pytest

import ncutils.studies
from ncutils.paths import repo_root
from ncutils.pipeline import params, runner

DOC = repo_root() / "docs" / "adding_a_notebook.md"


def _files() -> dict[str, str]:
    text = DOC.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", text, re.S)}


def test_the_recipe_adds_notebook_09(tmp_path, monkeypatch):
    files = _files()
    assert set(files) == {"ncutils/studies/example.py", "notebooks/scripts/09_example.py", "profiles/09_example.yaml"}
    root = tmp_path / "repo"
    studies = tmp_path / "studies"  # stands in for ncutils/studies/ (found through $NCUTILS_STUDIES_PATH)
    (root / "notebooks").mkdir(parents=True)
    (root / "profiles").mkdir()
    studies.mkdir()
    (studies / "example.py").write_text(files["ncutils/studies/example.py"])
    (root / "profiles" / "09_example.yaml").write_text(files["profiles/09_example.yaml"])
    nb = jupytext.reads(files["notebooks/scripts/09_example.py"], fmt="py:percent")
    nb.metadata["kernelspec"] = runner.KERNEL_DISPLAY
    nbformat.write(nb, root / "notebooks" / "09_example.ipynb")
    monkeypatch.setenv("NCUTILS_ROOT", str(root))
    monkeypatch.setenv("NCUTILS_STUDIES_PATH", str(studies))
    monkeypatch.setattr(ncutils.studies, "__path__", [*ncutils.studies.__path__, str(studies)])

    assert [p.stem for p in runner.list_notebooks()] == ["09_example"]
    assert params.study_for("09").NOTEBOOK == "09_example"
    # validated before any kernel starts, against the study's rule and the shared vocabulary
    with pytest.raises(ValueError, match=r"parameter zero_tol must be a finite number in \(0, inf\), got 0.0"):
        runner.run_notebook("09", profile="small", params={"zero_tol": 0.0})
    with pytest.raises(ValueError, match=r"parameter d must be >= K"):
        runner.run_notebook("09", profile="small", params={"d": 2})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['beta'\] for 09_example"):
        runner.run_notebook("09", profile="small", params={"beta": 1.0})

    rec = runner.run_notebook("09", profile="small")
    assert rec.ok
    summary = json.loads((root / "outputs" / "09_example" / "small" / "summary.json").read_text())
    assert summary["passed"] and summary["params"]["K"] == 3 and summary["params"]["steps"] == 6000
    assert {c["id"] for c in summary["checks"]} >= {"mse_objective_f", "mse_nc1"}
    assert (root / "figures" / "example_ufm.png").is_file() and (root / "figures" / "example_ufm.pdf").is_file()
    meta = nbformat.read(rec.output, as_version=4).metadata.ncutils
    assert meta["passed"] is True and meta["checks"]["mse_nc1"] is True and meta["profile"] == "small"
