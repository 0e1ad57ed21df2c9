"""The package's layout: a light, lazy core; studies and pipeline on top; old paths deprecated, not broken;
the wheel installs with only the core's requirements."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from ncutils.paths import repo_root

ROOT = repo_root()
HEAVY = ("matplotlib", "seaborn", "pandas", "papermill", "nbformat", "yaml", "scipy")
CORE = ("metrics", "stream", "theory", "models", "nets", "solve", "device", "paths", "_validate", "report")


def _run(code: str, env: dict[str, str] | None = None, python: str = sys.executable,
         cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=str(cwd))


def test_import_ncutils_and_nc1_load_no_plotting_tables_or_notebook_machinery():
    out = _run(f"""
        import sys, torch
        import ncutils as nc
        assert set(sys.modules) & {set(HEAVY)!r} == set(), "import ncutils"
        H = torch.randn(30, 5, dtype=torch.float64); y = torch.arange(3).repeat_interleave(10)
        print(nc.metrics.nc1(H, y), nc.nc_metrics(H, y)["nc1"] > 0, nc.StreamingNC.__name__, nc.UFM.__name__)
        print(sorted(set(sys.modules) & {set(HEAVY)!r}))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]", out.stdout  # metrics, nc_metrics, StreamingNC, UFM: none of them


def test_no_private_torch_module_is_imported_anywhere():
    for src in (ROOT / "ncutils").rglob("*.py"):
        tree = ast.parse(src.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(re.match(r"torch(\.\w+)*\._", n) for n in names), f"{src}: imports {names}"


def test_core_modules_import_nothing_from_studies_pipeline_or_plot():
    for name in (*CORE, "perturbation", "ulpm", "phase", "data", "train"):
        tree = ast.parse((ROOT / "ncutils" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                mod = node.module or ""
                assert not mod.startswith(("pipeline", "studies", "plot", "experiments", "params", "run", "sweep",
                                           "site")), f"ncutils.{name} imports .{mod}"
                assert not (mod == "" and {a.name for a in node.names} & {"pipeline", "studies", "plot"}), name


def test_top_level_offers_what_users_reach_for_first():
    import ncutils as nc

    for name in ("nc_metrics", "StreamingNC", "UFM", "DeepUFM", "gradient_descent", "theory", "setup"):
        assert name in dir(nc) and getattr(nc, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        nc.nope  # noqa: B018


@pytest.mark.parametrize("old,new,name", [
    ("ncutils.experiments", "ncutils.studies.ufm_mse", "ufm_checks"),
    ("ncutils.experiments", "ncutils.studies.resnet", "resnet_checks"),
    ("ncutils.plot", "ncutils.studies.phase_diagrams", "phase_panels"),
])
def test_moved_functions_keep_their_old_path_with_a_deprecation_warning(old, new, name):
    import importlib

    with pytest.warns(DeprecationWarning, match=f"moved to {new}"):
        obj = getattr(importlib.import_module(old), name)
    assert obj.__module__ == new


@pytest.mark.parametrize("old,new", [("params", "pipeline.params"), ("run", "pipeline.runner"),
                                     ("sweep", "pipeline.sweep"), ("site", "pipeline.site")])
def test_moved_modules_keep_their_old_path_with_a_deprecation_warning(old, new):
    out = _run(f"""
        import warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as w:
            import ncutils.{old} as m
        assert any(issubclass(x.category, DeprecationWarning) and "ncutils.{new}" in str(x.message) for x in w), w
        import ncutils.{new} as n
        assert all(getattr(m, k) is getattr(n, k) for k in n.__all__)
    """)
    assert out.returncode == 0, out.stderr


def test_every_notebook_has_one_study_module_and_every_study_one_notebook():
    from ncutils import studies
    from ncutils.pipeline.params import study_for
    from ncutils.pipeline.runner import list_notebooks

    stems = [p.stem for p in list_notebooks()]
    assert sorted(study_for(s).__name__.rsplit(".", 1)[1] for s in stems) == studies.available()
    for stem in stems:
        assert study_for(stem).NOTEBOOK == stem
        assert (ROOT / "profiles" / f"{stem}.yaml").is_file()
    with pytest.raises(ValueError, match=r"notebook 99_nope has no study module: expected ncutils/studies/nope.py"):
        study_for("99_nope")


def test_check_ids_are_stable_keys_separate_from_labels():
    from ncutils.report import check, summary

    c = check("MSE, no bias: objective f*", 1.0, 1.0, 1e-4)
    assert c["id"] == "mse_no_bias_objective_f" and c["name"] == "MSE, no bias: objective f*"
    a = check("sweep: f at c = 0.733 (worst of 15)", 1.0, 1.0, 1e-4, id="sweep_worst_objective")
    b = check("sweep: f at c = 1.1 (worst of 15)", 1.0, 1.0, 1e-4, id="sweep_worst_objective")
    assert a["id"] == b["id"] and a["name"] != b["name"]
    with pytest.raises(ValueError, match="duplicate ids"):
        summary({}, [a, b])
    with pytest.raises(ValueError, match="parameter id must be"):
        check("x", 1.0, 1.0, 1e-4, id="Has Spaces")


def test_twins_are_in_sync_and_a_stale_one_is_found(tmp_path):
    import shutil

    from ncutils.pipeline import twins

    assert twins.stale_twins() == [], "run `python -m ncutils twins` and commit notebooks/scripts/"
    nb = tmp_path / "01_ufm_mse.ipynb"
    shutil.copy(ROOT / "notebooks" / "01_ufm_mse.ipynb", nb)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "01_ufm_mse.py").write_text(twins.twin_text(nb))
    assert twins.stale_twins([nb]) == []
    data = json.loads(nb.read_text())
    data["cells"][1]["source"] = ["K: int = 5  # number of classes, at least 2\n"]
    nb.write_text(json.dumps(data))
    assert twins.stale_twins([nb]) == [nb]
    assert twins.write_twins([nb]) == [nb] and twins.stale_twins([nb]) == []
    assert "K: int = 5" in (tmp_path / "scripts" / "01_ufm_mse.py").read_text()


def _closure(names: list[str]) -> set[str]:
    """Distributions needed by ``names`` (their Requires-Dist without extras, transitively), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen.add(key)
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return seen


def test_wheel_installs_with_only_the_core_requirements(tmp_path):
    """Build the wheel, install it into a fresh environment that holds only the core's requirements (torch,
    numpy, scipy and what they need), compute nc1 there; the pipeline then names the extra to install."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("neural_collapse_utils-*.whl")
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    py = env / "bin" / "python"
    site = Path(_run("import sysconfig; print(sysconfig.get_paths()['purelib'])", python=str(py)).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    requires = md.PathDistribution(next(site.glob("neural_collapse_utils-*.dist-info"))).requires
    core = sorted(re.split(r"[\s<>=]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r)
    assert core == ["numpy", "scipy", "torch"]
    # the core requirements, linked from this environment: exactly their dependency closure, nothing else
    deps = tmp_path / "core-deps"
    deps.mkdir()
    for name in _closure(core):
        d = md.distribution(name)
        for top in {Path(str(f)).parts[0] for f in d.files or []}:
            src = Path(d.locate_file(top))
            if src.exists() and not (deps / top).exists() and top != "..":
                (deps / top).symlink_to(src)
    (site / "core-deps.pth").write_text(str(deps) + "\n")
    out = _run("""
        import sys, torch
        import ncutils as nc
        H = torch.randn(40, 6, dtype=torch.float64); y = torch.arange(4).repeat_interleave(10)
        print("nc1", nc.metrics.nc1(H, y), nc.__version__, nc.__file__)
        try:
            import matplotlib
            print("matplotlib is here: the environment is not core-only")
        except ImportError:
            pass
        try:
            import ncutils.pipeline
        except ImportError as err:
            print("pipeline:", err)
        try:
            import ncutils.phase
        except ImportError as err:
            print("phase:", err)
    """, env={"PYTHONPATH": "", "NCUTILS_ROOT": str(tmp_path)}, python=str(py), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^nc1 \d", out.stdout, flags=re.M) and str(site) in out.stdout, out.stdout
    assert "matplotlib is here" not in out.stdout
    assert "pipeline: ncutils.pipeline needs papermill" in out.stdout, out.stdout
    assert "pip install 'neural-collapse-utils[notebooks]'" in out.stdout, out.stdout
    assert "phase: this part of ncutils needs pandas" in out.stdout and "[data]'" in out.stdout, out.stdout


def test_old_nc_setup_style_is_refused_for_names_of_other_notebooks():
    import ncutils as nc

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['beta'\] for 01_ufm_mse"):
            nc.setup("01_ufm_mse", beta=2.0)
