"""The core modules import neither private torch modules nor the heavy plotting/table libraries."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOADER = """
import importlib, sys, types
pkg = types.ModuleType("ncutils")  # skip ncutils/__init__.py, which imports every module
pkg.__path__ = [sys.argv[1] + "/ncutils"]
sys.modules["ncutils"] = pkg
importlib.import_module("ncutils." + sys.argv[2])
heavy = {"pandas", "scipy", "matplotlib", "seaborn", "papermill"}
print(sorted({m.split(".")[0] for m in sys.modules} & heavy))
"""


@pytest.mark.parametrize("module", ["metrics", "stream", "theory", "models", "nets", "solve"])
def test_core_module_imports_no_heavy_libraries(module):
    if not (ROOT / "ncutils" / f"{module}.py").exists():
        pytest.skip(f"ncutils/{module}.py does not exist")
    out = subprocess.run([sys.executable, "-c", LOADER, str(ROOT), module], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", f"ncutils.{module} imports {out.stdout.strip()} at module import time"


CORE = ("metrics", "models", "nets", "solve", "stream", "theory", "perturbation", "ulpm", "phase", "data", "train",
        "device", "paths", "_validate")


def test_no_private_torch_imports():
    for path in (ROOT / "ncutils" / f"{name}.py" for name in CORE):
        text = path.read_text() if path.exists() else ""
        assert "torch._decomp" not in text and "import torch._" not in text, path.name
