"""Optional dependencies: a module of the ``[data]`` extra (pandas, tqdm, torchvision) or another extra,
imported with an error that names the extra to install when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["need"]


def need(module: str, extra: str = "data") -> ModuleType:
    """``import module``, or ``ImportError`` saying ``pip install 'neural-collapse-utils[<extra>]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this part of ncutils needs {module.split('.')[0]}, which is not installed: "
                          f"pip install 'neural-collapse-utils[{extra}]'") from err
