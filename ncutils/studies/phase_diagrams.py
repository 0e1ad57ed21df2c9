"""Notebook 08 — batched phase diagrams of the UFM, extended UFM and deep UFM over (λ_W, λ_H)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..plot import finish_axes as _finish
from ..plot import style
from ._common import POSITIVE, Assumption, Requirement, Rule, width_at_least

__all__ = ["ASSUMPTIONS", "NOTEBOOK", "REQUIREMENTS", "RULES", "phase_figure"]

NOTEBOOK = "08_phase_diagrams"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    "lambda_min": POSITIVE,
    "lambda_max": POSITIVE,
    "grid_points": Rule(int, low=2),
    "dufm_L": Rule(int, low=2),
    "eufm_activation": Rule(str, choices=("relu", "linear")),
    "dufm_activation": Rule(str, choices=("relu", "linear")),
    "chunk": Rule(int, low=0),
    "band": Rule(float, low=0.0),
    "tol": POSITIVE,
    "min_fraction": Rule(float, low=0.0, high=1.0),
}
#: Hard requirements of the theory: a run whose parameters break one fails before any compute.
REQUIREMENTS: list[Requirement] = [
    width_at_least("d", "K"),
    Requirement(("lambda_min", "lambda_max"), lambda p: p["lambda_min"] < p["lambda_max"],
                "parameter lambda_min must be < lambda_max"),
]
#: Assumptions of the theorem: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = []


_PHASE_TITLES = {
    "ufm": "UFM: c = K√(nλ_Hλ_W) = 1",
    "eufm": "extended UFM: K q = 2^(−4/3)",
    "dufm": "deep UFM (L = {L}): (Km/2) q = threshold",
}


def phase_figure(tables: Mapping[str, pd.DataFrame], boundaries: Mapping[str, Mapping[str, np.ndarray]], L: int = 3,
                 title: str | None = None, activations: Mapping[str, str] | None = None) -> Figure:
    """Phase diagrams, one column per model (``tables`` from :func:`ncutils.phase.phase_table`, keyed by kind):
    top, the fit s GD reaches (0 = the trivial solution H = 0, colour) with the theory boundary (solid) and,
    for deeper models, where the metastable collapsed branch ends (dashed); × marks a point where GD's phase
    differs from the theory's. Bottom, log₁₀ of the relative error of f between GD (best seed) and theory.
    ``boundaries[kind]``: ``{"lambda_W": …, "threshold": λ_H, "spinodal": λ_H}`` curves; ``activations[kind]``
    (``"linear"``/``"relu"``) is named in each column's title (the UFM is linear by definition)."""
    style()
    kinds = list(tables)
    fig, axes = plt.subplots(2, len(kinds), figsize=(3.9 * len(kinds), 6.6), constrained_layout=True, squeeze=False)
    for j, kind in enumerate(kinds):
        t = tables[kind]
        lw, lh = np.unique(t.lambda_W), np.unique(t.lambda_H)
        b = boundaries[kind]
        for i, (col, label, kw) in enumerate(
            [
                ("fit_gd", "fit s reached by GD", {"vmin": 0.0, "vmax": 1.0, "cmap": "viridis"}),
                ("log_err", "log₁₀ rel. error of f", {"vmin": -16, "vmax": 0, "cmap": "magma"}),
            ]
        ):
            ax = axes[i, j]
            values = t.fit_gd if col == "fit_gd" else np.log10(np.maximum(t.objective_rel_err, 1e-16))
            Z = values.to_numpy().reshape(len(lw), len(lh)).T  # rows: λ_H, columns: λ_W
            mesh = ax.pcolormesh(lw, lh, Z, shading="nearest", **kw)
            fig.colorbar(mesh, ax=ax, label=label, shrink=0.85)
            ax.plot(b["lambda_W"], b["threshold"], color="w", lw=2, label="theory boundary")
            if kind != "ufm":
                ax.plot(b["lambda_W"], b["spinodal"], color="w", lw=1.5, ls="--", label="end of metastable branch")
            wrong = t[t.collapsed_gd != t.collapsed_theory]
            ax.plot(wrong.lambda_W, wrong.lambda_H, "x", color="r", ms=7, mew=2, ls="none", label="GD phase ≠ theory")
            ax.set_xlim(lw.min() / 1.2, lw.max() * 1.2)
            ax.set_ylim(lh.min() / 1.2, lh.max() * 1.2)
            ax.set_ylabel("λ_H")
            head = _PHASE_TITLES[kind].format(L=L)
            if activations and kind != "ufm" and kind in activations:
                head = f"{activations[kind]} {head}"
            _finish(ax, head if i == 0 else "", "λ_W", xlog=True, ylog=True)
            if ax.get_legend() is not None:  # one legend for the figure, below the panels (none covers data)
                ax.get_legend().remove()
    from matplotlib.lines import Line2D

    proxies = [Line2D([], [], color="k", lw=2, label="theory boundary"),
               Line2D([], [], color="k", lw=1.5, ls="--", label="end of metastable branch (deeper models)"),
               Line2D([], [], color="r", marker="x", ms=7, mew=2, ls="none", label="GD phase ≠ theory")]
    fig.legend(handles=proxies, loc="outside lower center", ncol=3, fontsize="small")
    if title:
        fig.suptitle(title)
    return fig
