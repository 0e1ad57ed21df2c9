"""ncutils — neural collapse: one set of metrics, the unconstrained-features models and their theory.

``import ncutils as nc`` gives the modules (``nc.metrics``, ``nc.theory``, ``nc.models``,
``nc.solve``, ``nc.plot``, ``nc.report``, ``nc.experiments``, ``nc.run``) and the
names a notebook calls most: :func:`setup`, :class:`UFM`, :class:`DeepUFM`, :func:`extended_ufm`,
:func:`gradient_descent`.
"""

from importlib.metadata import PackageNotFoundError, version

from . import data, experiments, metrics, models, perturbation, phase, plot, report, solve, sweep, theory, train, ulpm
from .models import UFM, DeepUFM, FeatureModel, Level, extended_ufm
from .params import Run, setup
from .solve import DivergenceError, GDResult, gradient_descent

try:
    __version__ = version("ncutils")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "UFM",
    "DeepUFM",
    "DivergenceError",
    "FeatureModel",
    "GDResult",
    "Level",
    "Run",
    "__version__",
    "data",
    "experiments",
    "extended_ufm",
    "gradient_descent",
    "metrics",
    "models",
    "perturbation",
    "phase",
    "plot",
    "report",
    "setup",
    "solve",
    "sweep",
    "theory",
    "train",
    "ulpm",
]
