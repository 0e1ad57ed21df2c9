"""ncutils — neural collapse: one set of metrics, the unconstrained-features models and their theory.

``import ncutils as nc`` is cheap: submodules load on first use (``nc.metrics``, ``nc.theory``, …).
What users reach for first is at the top level: :func:`nc_metrics`, :class:`StreamingNC`, :class:`UFM`,
:class:`DeepUFM`, :func:`gradient_descent`, :mod:`theory`. The notebooks' machinery (:func:`setup`,
:mod:`ncutils.pipeline`, :mod:`ncutils.studies`, :mod:`ncutils.plot`) needs the ``notebooks`` extra.

Layout: core (``metrics``, ``stream``, ``theory``, ``models``, ``nets``, ``solve``, ``perturbation``,
``ulpm``, ``phase``, ``data``, ``train``, ``report``) → ``studies`` (one module per notebook) and
``plot`` → ``pipeline`` (runner, sweeps, gallery, ``setup``). Nothing imports what is to its right.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("neural-collapse-utils")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

#: submodules loaded on first attribute access
_SUBMODULES = ("data", "device", "experiments", "measure", "metrics", "models", "nets", "params", "paths",
               "perturbation", "phase", "pipeline", "plot", "report", "run", "site", "solve", "stream", "studies",
               "sweep", "theory", "train", "ulpm")
#: top-level names → the module that defines them
_NAMES = {
    "nc_metrics": "metrics",
    "StreamingNC": "stream",
    "UFM": "models",
    "DeepUFM": "models",
    "FeatureModel": "models",
    "Level": "models",
    "extended_ufm": "models",
    "gradient_descent": "solve",
    "GDResult": "solve",
    "DivergenceError": "solve",
    "setup": "pipeline.params",
    "Run": "pipeline.params",
}

_DEPRECATED = ("experiments", "params", "run", "site", "sweep")  # old homes, kept for one release
__all__ = ["__version__", *sorted(_NAMES), *[m for m in _SUBMODULES if m not in _DEPRECATED]]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'ncutils' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports the lazy ones stand for
    # ruff: noqa: F401
    from . import data, metrics, models, nets, perturbation, phase, plot, report, solve, stream, theory, train, ulpm
    from .metrics import nc_metrics
    from .models import UFM, DeepUFM, FeatureModel, Level, extended_ufm
    from .pipeline.params import Run, setup
    from .solve import DivergenceError, GDResult, gradient_descent
    from .stream import StreamingNC
