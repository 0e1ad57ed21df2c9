import os

os.environ.setdefault("NCUTILS_QUIET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if a notebook kernel starts: bad parameters must be refused before papermill is called."""
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("kernel started"))


@contextmanager
def script_module(path: Path, name: str) -> Iterator[ModuleType]:
    """A script of bench/ imported as module ``name`` for the tests, unregistered afterwards."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
