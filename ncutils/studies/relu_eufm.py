"""Notebook 03 — the ReLU extended UFM (Tirer & Bruna, ICML 2022, §4.2, Theorem 4.2; Figs. 4, 9)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from .. import theory
from .._validate import check_floats, check_int
from ..metrics import class_means_t
from ..models import DeepUFM
from ..plot import style, threshold_panels
from ..report import check
from ..solve import GDResult, gradient_descent
from . import _multilayer
from ._common import POSITIVE, Assumption, Requirement, Rule, width_at_least
from ._multilayer import *  # noqa: F403 (the shared multi-layer steps, _multilayer.__all__)
from ._multilayer import MULTILAYER_RULES, _deep

__all__ = [
    "ASSUMPTIONS",
    "NOTEBOOK",
    "REQUIREMENTS",
    "RULES",
    "dufm_sweep_checks",
    "dufm_threshold_sweep",
    "dufm_threshold_sweep_figure",
    "gram_cosines_figure",
    "mean_gram_cosines",
    "metastable_checks",
    "metastable_start",
    "sweep_branches",
    "sweep_interior_checks",
    *_multilayer.__all__,
]

NOTEBOOK = "03_relu_eufm"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    **MULTILAYER_RULES,
    "studies": Rule(bool),
    "polish": Rule(bool),
    "sweep_ratio_max": POSITIVE,
    "sweep_seeds": Rule(int, low=1),
    "sweep_reach_max": Rule(float, low=0.0, high=1.0, strict_low=True),
    # (1, spinodal ratio): past the threshold, where the collapsed branch still exists
    "metastable_ratio": Rule(float, low=1.0, high=float(theory.dufm_spinodal(3) / theory.dufm_threshold(3)),
                             strict_low=True),
}
#: Hard requirements of the theory: a run whose parameters break one fails before any compute.
REQUIREMENTS: list[Requirement] = [width_at_least("d", "K")]
#: Assumptions of the theorem: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = []


def mean_gram_cosines(gd: GDResult) -> pd.DataFrame:
    """Final pairwise cosines cos(μ_k, μ_k') of every level's (uncentred) class means, per run.

    Columns ``run, level, pair, cosine`` — e.g. to show that the ReLU EUFM's H₁ Gram is not fixed
    across seeds (Tirer & Bruna 2022, §4.2) while H₂'s is the identity.
    """
    m = _deep(gd)
    feats = m.forward(gd.params)[0]
    y = m.labels(feats[0].device)
    iu = torch.triu_indices(m.K, m.K, offset=1)
    rows = []
    for layer, H in enumerate(feats, start=1):
        M = class_means_t(H.to(torch.float64), y, m.K)
        Mn = M / torch.linalg.vector_norm(M, dim=-1, keepdim=True)
        cos = (Mn @ Mn.transpose(-1, -2))[:, iu[0], iu[1]].cpu().numpy()
        for r in range(cos.shape[0]):
            for j in range(cos.shape[1]):
                rows.append(
                    {
                        "run": r,
                        "level": f"H{layer}",
                        "pair": f"{int(iu[0, j]) + 1}-{int(iu[1, j]) + 1}",
                        "cosine": float(cos[r, j]),
                    }
                )
    return pd.DataFrame(rows)


def dufm_threshold_sweep(K: int, n: int, d: int, ratios: np.ndarray | list[float], *, L: int = 2,
                         activation: str = "relu", lr: float, steps: int, init_std: float, seeds: int = 1,
                         seed: int = 0, device: Any = "auto", dtype: Any = "float64") -> pd.DataFrame:
    """GD across the existence threshold of the multi-layer UFM, all points × seeds as one batched run.

    All λ equal to λ; ``ratios`` = (Km/2)q / threshold (1 = the threshold: K q = 2^{−4/3} for L = 2),
    so λ = (2 ratio·threshold/(K m))·n^{−1/m}. Returns one row per point: GD (the seed with the lowest
    objective — the theory is about the *global* minimizer, and single ReLU runs can stop at partial
    solutions — and how many seeds reached the global value within 1e-4) and theory (global optimum,
    and the metastable collapsed branch that survives past the threshold) for f and the last level's ‖μ_k‖².
    """
    check_int("seeds", seeds, 1)
    r = np.asarray(check_floats("ratios", ratios, 0.0, strict_low=True))
    m_ = L + 1
    q = 2 * r * theory.dufm_threshold(m_) / (K * m_)
    lam = tuple(float(x) for x in q / n ** (1 / m_))  # q = (n λ^m)^{1/m} = n^{1/m} λ
    per_run = tuple(x for x in lam for _ in range(seeds))  # point i, seed j → run i·seeds + j
    model = DeepUFM(
        K=K,
        n=n,
        d=d,
        L=L,
        activation=activation,  # type: ignore[arg-type]
        lambda_W=(per_run,) * L,
        lambda_H=per_run,
    )
    gd = gradient_descent(model, lr=lr, steps=steps, init_std=init_std, seed=seed, device=device, dtype=dtype,
                          record_every=steps, desc="threshold sweep")
    rows = []
    for i, x in enumerate(lam):
        opt = theory.dufm_optimum(K, n, [x] * L, x)
        meta = theory.dufm_optimum(K, n, [x] * L, x, branch="collapsed")
        rows.append(
            {
                "ratio": r[i],
                "lambda": x,
                "objective_theory": opt.objective,
                "objective_metastable": meta.objective if meta.collapsed else np.nan,
                "mean_norm_sq_theory": opt.mean_norm_sq[-1],
                "mean_norm_sq_metastable": meta.mean_norm_sq[-1] if meta.collapsed else np.nan,
            }
        )
    df = pd.DataFrame(rows)
    f = gd.final("objective").reshape(len(lam), seeds)
    best = f.argmin(axis=1)
    df["objective_gd"] = f[np.arange(len(lam)), best]
    df["mean_norm_sq_gd"] = gd.final("mean_norm_sq", f"H{L}").reshape(len(lam), seeds)[np.arange(len(lam)), best]
    df["seeds_at_theory"] = (np.abs(f / df.objective_theory.to_numpy()[:, None] - 1) <= 1e-4).sum(axis=1)
    df["objective_rel_err"] = (df.objective_gd - df.objective_theory).abs() / df.objective_theory
    return df


def sweep_branches(sweep: pd.DataFrame, tol: float = 1e-4) -> pd.Series:
    """Where GD's best seed landed at each point of a threshold sweep (:func:`dufm_threshold_sweep`):
    ``"global"`` (f within ``tol`` of the global f*), ``"metastable"`` (within ``tol`` of the collapsed branch
    past the threshold, where that is not the global value), ``"other"`` (a partial solution or not converged)."""
    f = sweep.objective_gd
    glob = (f / sweep.objective_theory - 1).abs() <= tol
    meta = ((f / sweep.objective_metastable - 1).abs() <= tol) & (sweep.objective_metastable > sweep.objective_theory
                                                                  * (1 + tol))
    return pd.Series(np.where(glob, "global", np.where(meta.fillna(False), "metastable", "other")), index=sweep.index,
                     name="branch")


def sweep_interior_checks(sweep: pd.DataFrame, reach_max: float, tol: float = 1e-4) -> list[dict[str, Any]]:
    """Checks of a threshold sweep's interior (:func:`dufm_threshold_sweep`, :func:`sweep_branches`): every
    point at ratio ≤ ``reach_max`` reaches the global f* (best seed), every point past the threshold (ratio > 1)
    ends at the global f = 1/2, and no point's best seed lands on the metastable collapsed branch."""
    from ..report import count_check

    branch = sweep_branches(sweep, tol)
    low, high = branch[sweep.ratio <= reach_max], branch[sweep.ratio > 1]
    meta = sweep.objective_metastable > sweep.objective_theory * (1 + tol)
    return [
        count_check(f"sweep: points at ratio <= {reach_max:g} where GD reaches the global f*",
                    int((low == "global").sum()), len(low), len(low), id="sweep_below_reach_max_global"),
        count_check("sweep: points past the threshold where GD ends at the global f = 1/2",
                    int((high == "global").sum()), len(high), len(high), id="sweep_past_threshold_global"),
        check(f"sweep: points (of {int(meta.sum())} with a metastable branch) where GD lands on it",
              int((branch == "metastable").sum()), 0.0, 0.0, kind="abs", id="sweep_never_on_metastable"),
    ]


def metastable_checks(meta: theory.DeepUFMOptimum, gd: GDResult, ratio: float, tol: float = 1e-6,
                      ) -> list[dict[str, Any]]:
    """The collapsed branch past the threshold is a local minimum: GD started next to it
    (:func:`metastable_start`) returns to its objective (worst seed, relative ``tol``), which is above the
    global f = 1/2."""
    f = gd.final("objective")
    return [
        check(f"metastable start at ratio {ratio:g}: f of the worst seed vs the branch", float(f[np.argmax(
            np.abs(f / meta.objective - 1))]), meta.objective, tol, id="metastable_start_objective"),
        check(f"ratio {ratio:g}: the global f = 1/2 lies below the metastable branch's f", 0.5, meta.objective, 0.0,
              kind="below", id="metastable_branch_above_global"),
    ]


def metastable_start(K: int, n: int, d: int, ratio: float, *, L: int = 2, activation: str = "relu", lr: float,
                     steps: int, noise: float = 1e-3, seeds: int = 4, seed: int = 0, device: Any = "auto",
                     dtype: Any = "float64") -> tuple[theory.DeepUFMOptimum, GDResult]:
    """GD started next to the collapsed branch past the threshold: all λ equal, (Km/2)q = ``ratio``·threshold
    (as :func:`dufm_threshold_sweep`), from :func:`~._multilayer.collapsed_params` of the metastable branch
    plus N(0, (``noise``·‖θ‖/√size)²) per factor, ``seeds`` draws as one batched run. If the branch is a local
    minimum, GD returns to its objective (> 1/2 = f(0), the global minimum there). Returns the branch and GD."""
    from ._multilayer import collapsed_params

    check_int("seeds", seeds, 1)
    r = float(check_floats("ratio", [ratio], 0.0, strict_low=True)[0])
    m_ = L + 1
    lam = 2 * r * theory.dufm_threshold(m_) / (K * m_) / n ** (1 / m_)
    meta = theory.dufm_optimum(K, n, [lam] * L, lam, branch="collapsed")
    if not meta.collapsed:
        raise ValueError(f"parameter ratio = {r:g} is past the end of the collapsed branch (spinodal ratio "
                         f"{theory.dufm_spinodal(m_) / theory.dufm_threshold(m_):.4g}): there is no branch to start on")
    model = DeepUFM(K=K, n=n, d=d, L=L, activation=activation, lambda_W=lam, lambda_H=lam)  # type: ignore[arg-type]
    start = collapsed_params(model, meta, seeds)
    g = torch.Generator().manual_seed(int(seed))
    init = {k: v + noise * v.norm(dim=(-2, -1), keepdim=True) / v[0].numel() ** 0.5
            * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in start.items()}
    gd = gradient_descent(model, lr=lr, steps=steps, init=init, device=device, dtype=dtype,
                          record_every=max(steps // 50, 1), desc="metastable start")
    return meta, gd


def dufm_sweep_checks(sweep: pd.DataFrame, tol: float = 1e-4) -> list[dict[str, Any]]:
    """Checks of a threshold sweep (:func:`dufm_threshold_sweep`) that hold whatever GD's luck near the threshold.

    (1) GD's best objective is never below the global optimum (by more than round-off, 1e-9 relative) at any
    point; (2) at the smallest ratio GD reaches the collapsed global optimum; (3) at the largest ratio, past
    the metastable branch, GD reaches f = 1/2 (H = 0). Between them GD from random initializations can stop
    at partial solutions or at 0 — reported in ``seeds_at_theory``, not checked.
    """
    rel = (sweep.objective_gd - sweep.objective_theory) / sweep.objective_theory
    first, last = sweep.iloc[0], sweep.iloc[-1]
    return [
        check(f"sweep: GD below the global f* (worst of {len(sweep)} points)", max(0.0, float(-rel.min())), 0.0, 1e-9,
              kind="abs", id="sweep_never_below_global"),
        check(f"sweep: f at ratio {first.ratio:.3g} (collapsed)", first.objective_gd, first.objective_theory, tol,
              id="sweep_smallest_ratio_objective"),
        check(f"sweep: f at ratio {last.ratio:.3g} (H = 0)", last.objective_gd, last.objective_theory, tol,
              id="sweep_largest_ratio_objective"),
    ]


def gram_cosines_figure(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Pairwise cosines of class means per level, one dot per run and pair (``df`` from
    :func:`mean_gram_cosines`); 0 (orthogonal frame) dashed."""
    style()
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * df.level.nunique(), 3.2), constrained_layout=True)
    sns.stripplot(data=df, x="level", y="cosine", hue="pair", dodge=True, ax=ax, size=4, jitter=0.15)
    ax.axhline(0.0, color="0.4", ls="--", lw=1)
    ax.set_ylabel("cos(μ_k, μ_k')")
    ax.legend(title="classes", fontsize="x-small", ncol=2)
    if title:
        ax.set_title(title)
    return fig


def dufm_threshold_sweep_figure(df: pd.DataFrame, level_label: str = "last level", title: str | None = None) -> Figure:
    """f and ‖μ_k‖² against (Km/2)q / threshold (``df`` from :func:`dufm_threshold_sweep`): global optimum
    (line, with its jump at 1), metastable collapsed branch (dotted), GD (markers)."""
    return threshold_panels(df, "ratio", "(K m / 2) q / threshold", "threshold", norm_label=f"‖μ_k‖², {level_label}",
                            theory_label="theory (global)", split=True, figsize=(7.8, 3.2), title=title)
