"""The API reference (`make docs`): pdoc builds it from the docstrings of the core modules without a warning."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the modules of the API reference, as `make docs` lists them
MODULES = ["ncutils.metrics", "ncutils.stream", "ncutils.measure", "ncutils.theory", "ncutils.models", "ncutils.nets",
           "ncutils.solve", "ncutils.perturbation", "ncutils.ulpm", "ncutils.phase", "ncutils.data", "ncutils.train",
           "ncutils.report", "ncutils.integrations"]
# (``Level`` and ``Dataset`` set their NamedTuple ``__new__.__module__`` so pdoc resolves their annotations.)


def test_api_reference_builds_without_warnings(tmp_path):
    pytest.importorskip("pdoc")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "pdoc", "--docformat", "numpy", "-o", str(tmp_path), *MODULES],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "warn" in line.lower()]
    assert not warnings, "pdoc warned:\n" + "\n".join(warnings)
    index = tmp_path / "index.html"
    metrics = tmp_path / "ncutils" / "metrics.html"
    assert index.is_file() and metrics.is_file()
    assert "nc1" in metrics.read_text() and "ncutils.metrics" in index.read_text()
    for name in MODULES:
        assert (tmp_path / (name.replace(".", "/") + ".html")).is_file() or \
            (tmp_path / name.replace(".", "/") / "index.html").is_file(), name
