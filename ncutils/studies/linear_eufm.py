"""Notebook 02 — the linear extended UFM (Tirer & Bruna, ICML 2022, §4.1, Theorem 4.1; Figs. 3, 8)."""

from __future__ import annotations

import pandas as pd

from ..solve import GDResult
from . import _multilayer
from ._common import Assumption, Requirement, Rule, width_at_least
from ._multilayer import *  # noqa: F403 (the shared multi-layer steps, _multilayer.__all__)
from ._multilayer import MULTILAYER_RULES

__all__ = [
    "ASSUMPTIONS",
    "NOTEBOOK",
    "REQUIREMENTS",
    "RULES",
    "level_ratio",
    *_multilayer.__all__,
]

NOTEBOOK = "02_linear_eufm"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {**MULTILAYER_RULES}
#: Hard requirements of the theory: a run whose parameters break one fails before any compute.
REQUIREMENTS: list[Requirement] = [width_at_least("d", "K")]
#: Assumptions of the theorem: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = []


def level_ratio(
    gd: GDResult, metric: str, upper: str, lower: str, run: int | None = None, floor: float = 1e-20
) -> pd.Series:
    """``metric(upper) / metric(lower)`` along GD (per recorded step, run ``run`` or the median over runs).

    Steps where either value is below ``floor`` are dropped: there both are round-off (NC1 of a
    collapsed float64 run is ~1e-30) and their ratio means nothing.
    """
    ratios = _multilayer.depth_ratios({"": gd}, metric, upper, lower, floor)  # one pivot and floor for both
    name = f"{metric}({upper})/{metric}({lower})"
    if run is not None:
        return ratios[ratios.run == run].set_index("step").ratio.rename(name)
    return ratios.groupby("step").ratio.median().rename(name)
