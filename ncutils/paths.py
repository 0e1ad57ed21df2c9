"""Paths resolved from the repository root, never from the current directory.

papermill runs kernels in the caller's directory and nbval in the notebook's
folder; resolving every relative path here keeps outputs in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "resolve_path"]


def repo_root() -> Path:
    """The checkout holding ``pyproject.toml`` and ``notebooks/`` (editable install),
    else ``$NCUTILS_ROOT``, else the current directory."""
    env = os.environ.get("NCUTILS_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir():
        return here
    return Path.cwd().resolve()


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if absolute, else relative to :func:`repo_root`."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p
