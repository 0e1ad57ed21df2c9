"""Notebook 04 — the deep UFM (Súkeník, Mondelli & Lampert, NeurIPS 2023; low-rank K > 2: Súkeník et al. 2024)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..plot import finish_axes as _finish
from ..plot import style
from ..report import check
from ..solve import GDResult
from ..theory import dufm_optimum, srg_construction, srg_loss, srg_r
from . import _multilayer
from ._common import POSITIVE, Assumption, Requirement, Rule, int_list, positive_list, width_at_least
from ._multilayer import *  # noqa: F403 (the shared multi-layer steps, _multilayer.__all__)

__all__ = [
    "ASSUMPTIONS",
    "NOTEBOOK",
    "REQUIREMENTS",
    "RULES",
    "class_mean_spectra_figure",
    "rank_aware_checks",
    "rank_studies_figure",
    "small_k_checks",
    "small_k_table",
    "srg_checks",
    "srg_ratio_figure",
    "srg_ratio_table",
    *_multilayer.__all__,
]

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
    "appendix_K": Rule(list, check=int_list(2, "classes K")),
    "appendix_steps": Rule(int, low=1),
    "polish_depths": Rule(list, check=int_list(2, "polished depths L", non_empty=False)),
    "polish_max_iter": Rule(int, low=1),
    "continue_steps": Rule(int, low=0),
}
#: Hard requirements of the theory: a run whose parameters break one fails before any compute.
REQUIREMENTS: list[Requirement] = [
    width_at_least("width", "K"),
    width_at_least("multi_width", "multi_K"),
    width_at_least("width_study", "multi_K"),
    Requirement(("multi_width", "appendix_K"), lambda p: p["multi_width"] >= max(p["appendix_K"]),
                "parameter multi_width must be >= every class count in appendix_K (every level must hold an "
                "orthogonal frame of K class means for the collapsed optimum to exist)"),
    Requirement(("polish_depths", "depths"), lambda p: set(p["polish_depths"]) <= set(p["depths"]),
                "parameter polish_depths must name depths that are run (a subset of depths)"),
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


def rank_aware_checks(table: pd.DataFrame, seeds: pd.DataFrame, *, tol: float = 1e-3, rank_tol: float = 1e-3,
                      K: int | None = None) -> list[dict[str, Any]]:
    """Within-class collapse of the runs below f_DNC (``seeds``: :func:`seed_table`), with the rank-aware NC1 of
    :func:`rank_aware_nc1` (directions of the centred means above ``rank_tol``·σ₁) and NC1~ = tr Σ_W/tr Σ_B at
    every level: how many runs have each below ``tol``; with ``K``, how many have class means of rank < K at some
    level (the low-rank bias; ``min_rank`` of the seed table). Count checks: every run below f_DNC required."""
    from ..report import count_check

    below = set(seeds.run[seeds.status == "below f*"])
    t = table[table.run.isin(below)]
    worst = t.groupby("run")[["nc1_rank", "nc1_trace"]].max()
    n = len(worst)
    if n == 0:
        return [count_check("runs below f_DNC", 0, len(seeds), 1)]
    out = [
        count_check(f"runs below f_DNC with rank-aware NC1 (rank_tol {rank_tol:g}) < {tol:g} at every level",
                    int((worst.nc1_rank < tol).sum()), n, n, id="below_fdnc_rank_aware_nc1"),
        count_check(f"runs below f_DNC with NC1~ = tr(S_W)/tr(S_B) < {tol:g} at every level",
                    int((worst.nc1_trace < tol).sum()), n, n, id="below_fdnc_nc1_trace"),
    ]
    if K is not None:
        low = seeds[seeds.run.isin(below)].min_rank < K
        out.append(count_check(f"runs below f_DNC with class means of rank < K = {K} at some level",
                               int(low.sum()), n, n, id="below_fdnc_low_rank"))
    return out


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


def srg_ratio_table(n: int, lambda_W: float, lambda_H: float, depths: Sequence[int] = (3, 4, 5),
                    rs: Sequence[int] = tuple(range(3, 11))) -> pd.DataFrame:
    """The data of Súkeník, Lampert & Mondelli 2024, Fig. 3 left: L_SRG / L_DNC against r for K = r(r−1)/2
    classes, one row per (L, r), all layers at weight decay ``lambda_W`` (:func:`ncutils.theory.srg_construction`,
    :func:`ncutils.theory.dufm_optimum`). Columns ``L, r, K, L_SRG, L_DNC, ratio``."""
    rows = []
    for L in depths:
        for r in rs:
            K = r * (r - 1) // 2
            f_srg = srg_loss(K, n, [lambda_W] * L, lambda_H)
            f_dnc = dufm_optimum(K, n, [lambda_W] * L, lambda_H).objective
            rows.append({"L": L, "r": r, "K": K, "L_SRG": f_srg, "L_DNC": f_dnc, "ratio": f_srg / f_dnc})
    return pd.DataFrame(rows)


def srg_ratio_figure(table: pd.DataFrame, title: str | None = None) -> Figure:
    """L_SRG / L_DNC against r (K = r(r−1)/2), one curve per depth L (``table`` from :func:`srg_ratio_table`);
    below the dashed line at 1 the SRG construction beats deep neural collapse."""
    style()
    fig, ax = plt.subplots(figsize=(4.6, 3.3), constrained_layout=True)
    sns.lineplot(data=table.assign(L=table.L.astype(str)), x="r", y="ratio", hue="L", marker="o", ax=ax,
                 palette="colorblind")
    ax.axhline(1.0, color="0.4", ls="--", lw=1)
    ax.set_ylabel("L_SRG / L_DNC")
    _finish(ax, title or "SRG construction vs DNC (K = r(r−1)/2)", "r")
    return fig


def srg_checks(gd: GDResult, n: int, lambda_W: float, lambda_H: float, *, tol: float = 0.01,
               label: str = "") -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The best GD loss of a K > 2 deep-UFM run against the SRG construction's L_SRG (K = r(r−1)/2, all layers
    at ``lambda_W``): a check that GD gets at least close to the construction — its best loss at most ``tol``
    (relative) above L_SRG, below being allowed since L_SRG only bounds the optimum from above (in the small
    profile, K = 6, GD ends 3.8% below it) — and a check that the theory's L_SRG is below f_DNC (kind
    ``below``). Returns the checks and the numbers (L_SRG, f_DNC, best GD, relative differences); no checks
    when K is not of the form r(r−1)/2."""
    m = gd.model
    K, L = m.K, m.L  # type: ignore[attr-defined]
    try:
        srg_r(K)
    except ValueError:
        return [], {}
    c = srg_construction(K, n, [lambda_W] * L, lambda_H)
    f_dnc = dufm_optimum(K, n, [lambda_W] * L, lambda_H).objective
    best = float(np.min(gd.final("objective")))
    pre = f"{label}: " if label else f"K={K}, L={L}: "
    numbers = {"r": c.r, "beta": c.beta, "L_SRG": c.objective, "f_DNC": f_dnc, "gd_best": best,
               "gd_vs_srg": best / c.objective - 1, "gd_vs_dnc": best / f_dnc - 1,
               "srg_vs_dnc": c.objective / f_dnc - 1}
    checks = [check(f"{pre}best GD loss at most {tol:.0%} above L_SRG", best, c.objective, -tol, kind="below",
                    id="multi_gd_vs_srg"),
              check(f"{pre}L_SRG (theory, r={c.r}) below f_DNC", c.objective, f_dnc, 0.0, kind="below",
                    id="multi_srg_below_dnc")]
    return checks, numbers


def small_k_table(results: dict[int, GDResult], n: int, lambda_W: float, lambda_H: float, *,
                  reach_tol: float = 1e-4, rank_tol: float = 1e-3) -> pd.DataFrame:
    """Súkeník et al. 2024's appendix setting (K = 3, 4, 5 at L = 4; ``results[K]``: one batched GD of the
    ReLU deep UFM per K, all layers at ``lambda_W``): one row per K with f_DNC (theory), the best and worst GD
    loss and the best one's relative difference to f_DNC, the seeds below f_DNC (relative < −``reach_tol``),
    at it (|relative| ≤ ``reach_tol``), and at it with uncentred class means of rank K at every level
    (:func:`class_mean_ranks`, σ_k > ``rank_tol``·σ₁), the smallest rank over levels and seeds, and L_SRG
    where K = r(r−1)/2 (else NaN)."""
    rows = []
    for K, gd in results.items():
        L = gd.model.L  # type: ignore[attr-defined]
        f_dnc = dufm_optimum(K, n, [lambda_W] * L, lambda_H).objective
        f = gd.final("objective")
        rel = f / f_dnc - 1
        at = np.abs(rel) <= reach_tol
        ranks = _multilayer.class_mean_ranks(gd, rank_tol).groupby("run")["rank"].min().reindex(range(len(f)))
        try:
            srg_r(K)
            f_srg = srg_loss(K, n, [lambda_W] * L, lambda_H)
        except ValueError:
            f_srg = float("nan")
        rows.append({"K": K, "L": L, "seeds": len(f), "f_DNC": f_dnc, "best": f.min(), "worst": f.max(),
                     "best_rel": rel.min(), "below": int((rel < -reach_tol).sum()), "at_f_DNC": int(at.sum()),
                     "at_full_rank": int((at & (ranks.to_numpy() == K)).sum()), "min_rank": int(ranks.min()),
                     "L_SRG": f_srg})
    return pd.DataFrame(rows).set_index("K")


def small_k_checks(table: pd.DataFrame, *, tol: float = 1e-4) -> list[dict[str, Any]]:
    """What the appendix setting shows here, per K (``table`` from :func:`small_k_table`): the best GD loss equals
    f_DNC (relative ``tol``: no lower, low-rank solution found) and all seeds but at most one reach f_DNC with class
    means of rank K at every level (count checks)."""
    from ..report import count_check

    out = []
    for K, row in table.iterrows():
        L, seeds = int(row.L), int(row.seeds)
        out.append(check(f"K={K}, L={L}: best GD loss = f_DNC", row.best, row.f_DNC, tol,
                         id=f"appendix_k{K}_best_at_dnc"))
        out.append(count_check(f"K={K}, L={L}: seeds at f_DNC with class means of rank K at every level",
                               int(row.at_full_rank), seeds, max(seeds - 1, 1), id=f"appendix_k{K}_full_rank"))
    return out
