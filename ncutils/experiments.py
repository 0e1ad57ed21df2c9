"""Deprecated: the notebooks' steps moved to their studies (:mod:`ncutils.studies`, one module per notebook).

``ncutils.experiments.<name>`` still works for one release and warns with a ``DeprecationWarning``
naming the new home.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

#: old name → study module that now holds it (same name)
_MOVED: dict[str, str] = {
    "best_run": "_common",
    "deep_ufm_checks": "_multilayer",
    "seed_table": "_multilayer",
    "init_scale_study": "_multilayer",
    "ufm_checks": "ufm_mse",
    "ufm_threshold_sweep": "ufm_mse",
    "sweep_check": "ufm_mse",
    "level_ratio": "linear_eufm",
    "mean_gram_cosines": "relu_eufm",
    "dufm_threshold_sweep": "relu_eufm",
    "dufm_sweep_checks": "relu_eufm",
    "class_mean_ranks": "deep_ufm",
    "random_features": "perturbation",
    "flow_checks": "perturbation",
    "beta_sweep": "perturbation",
    "jacobian_study": "perturbation",
    "jacobian_checks": "perturbation",
    "mnist_chain": "perturbation",
    "chain_checks": "perturbation",
    "ulpm_checks": "layer_peeled",
    "loglog_slope": "layer_peeled",
    "resnet_data": "resnet",
    "resnet_final": "resnet",
    "resnet_metric_table": "resnet",
    "resnet_checks": "resnet",
}

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'ncutils.experiments' has no attribute {name!r}")
    where = f"ncutils.studies.{_MOVED[name]}"
    warnings.warn(f"ncutils.experiments.{name} moved to {where}.{name}; the old path goes in the next release",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(where), name)
