"""Notebook 04 — the deep UFM (Súkeník, Mondelli & Lampert, NeurIPS 2023; low-rank K > 2: Súkeník et al. 2024)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..plot import finish_axes as _finish
from ..plot import style
from ._common import POSITIVE, Assumption, Requirement, Rule, best_run, int_list, positive_list, width_at_least
from ._multilayer import class_mean_ranks, deep_ufm_checks, polished_geometry, seed_geometry_checks, seed_table

__all__ = ["ASSUMPTIONS", "NOTEBOOK", "REQUIREMENTS", "RULES", "best_run", "class_mean_ranks",
           "class_mean_spectra_figure", "deep_ufm_checks", "polished_geometry", "rank_studies_figure",
           "seed_geometry_checks", "seed_table"]

NOTEBOOK = "04_deep_ufm"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    "width": Rule(int, low=1),
    "depths": Rule(list, check=int_list(1, "depths L")),
    "activation": Rule(str, choices=("relu", "linear")),
    "multi_K": Rule(int, low=2),
    "multi_n": Rule(int, low=1),
    "multi_width": Rule(int, low=1),
    "multi_L": Rule(int, low=1),
    "multi_steps": Rule(int, low=1),
    "multi_init_std": POSITIVE,
    "width_study": Rule(list, check=int_list(1, "widths")),
    "lambda_study": Rule(list, check=positive_list("weight decays")),
}
#: Hard requirements of the theory: a run whose parameters break one fails before any compute.
REQUIREMENTS: list[Requirement] = [
    width_at_least("width", "K"),
    width_at_least("multi_width", "multi_K"),
    width_at_least("width_study", "multi_K"),
]
#: Assumptions of the theorem: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = []


def class_mean_spectra_figure(ranks: pd.DataFrame, hue: str = "run", title: str | None = None) -> Figure:
    """Normalized singular values σ_k/σ_1 of every level's class means (``ranks`` from
    :func:`class_mean_ranks`, optionally with another ``hue`` column), one panel per level."""
    style()
    levels = list(dict.fromkeys(ranks.level))
    fig, axes = plt.subplots(
        1, len(levels), figsize=(2.9 * len(levels), 3.0), constrained_layout=True, sharey=True, squeeze=False
    )
    for ax, lv in zip(axes[0], levels, strict=True):
        part = ranks[ranks.level == lv]
        sns.lineplot(data=part, x="k", y="sv_rel", hue=hue, units="run", estimator=None, ax=ax, lw=0.9, marker="o",
                     ms=3, palette="colorblind" if part[hue].nunique() <= 10 else "viridis", legend=ax is axes[0][-1])
        ax.set_yscale("log")
        ax.set_title(f"{lv}: σ_k / σ_1")
        ax.set_xlabel("k")
    if title:
        fig.suptitle(title)
    return fig


def rank_studies_figure(
    width_table: pd.DataFrame, lambda_ranks: pd.DataFrame, K: int, title: str | None = None
) -> Figure:
    """Left: how many seeds end at f_DNC / below / above per width (``width_table``: ``width, status``
    from :func:`seed_table`). Right: mean numerical rank of each level's class means
    against λ (``lambda_ranks``: ``lambda, level, run, rank`` from :func:`class_mean_ranks`)."""
    style()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8.6, 3.3), constrained_layout=True)
    counts = width_table.groupby(["width", "status"]).size().unstack(fill_value=0)
    for status in ("at f*", "below f*", "above f*"):
        if status not in counts:
            counts[status] = 0
    counts = counts[["at f*", "below f*", "above f*"]]
    counts.index = counts.index.astype(str)
    counts.plot.bar(stacked=True, ax=ax0, color=["C2", "C0", "C7"], rot=0)
    ax0.set_ylabel("seeds")
    _finish(ax0, "GD outcome vs width (at f* = DNC)", "width")
    per = lambda_ranks.drop_duplicates(["run", "level"]).groupby(["lambda", "level"])["rank"].mean().reset_index()
    sns.lineplot(data=per, x="lambda", y="rank", hue="level", marker="o", ax=ax1, palette="colorblind")
    ax1.axhline(K, color="0.4", ls="--", lw=1, label=f"K = {K}")
    _finish(ax1, "mean rank of the class means vs λ", "lambda", xlog=True)
    if title:
        fig.suptitle(title)
    return fig
