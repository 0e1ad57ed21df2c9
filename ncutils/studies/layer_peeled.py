"""Notebook 06 — the unconstrained layer-peeled model without weight decay (Ji et al., ICLR 2022, Thm 3.1, Fig. 2)."""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .. import theory
from ..metrics import max_margin_distance
from ..plot import DASHES as _DASHES
from ..plot import finish_axes as _finish
from ..plot import style
from ..report import check, count_check
from ..solve import GDResult
from ..ulpm import MaxMarginSolution
from ._common import POSITIVE, Assumption, Requirement, Rule, best_run
from .ufm_mse import ufm_checks

__all__ = ["ASSUMPTIONS", "NOTEBOOK", "REQUIREMENTS", "RULES", "ULPM_PANELS", "ULPM_RATES", "best_run", "loglog_slope",
           "metric_table", "norm_growth_slope", "theta_norm", "ufm_checks", "ulpm_checks", "ulpm_figure",
           "ulpm_rate_checks", "w_mean_floor"]

NOTEBOOK = "06_layer_peeled"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    "num_records": Rule(int, low=2),
    "wd_lambda": POSITIVE,
    "wd_steps": Rule(int, low=1),
    "maxmargin_starts": Rule(int, low=1),
    "margin_tol": POSITIVE,
    "slope_tol": POSITIVE,
    "growth_tol": POSITIVE,
}
#: Hard requirements of the theory: a run whose parameters break one fails before any compute.
REQUIREMENTS: list[Requirement] = []
#: Assumptions of the theorem: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = []


# --------------------------------------------------------------------------- #
# §6 unconstrained layer-peeled model (notebook 06)
# --------------------------------------------------------------------------- #
def ulpm_checks(gd: GDResult, opt: theory.ULPMOptimum, sol: MaxMarginSolution, margin_tol: float = 0.03,
                value_tol: float = 1e-6, zero_tol: float = 1e-6) -> list[dict[str, Any]]:
    """GD's best normalized margin vs 1/(√n(K−1)) (relative, ``margin_tol``: convergence is O(1/log t));
    the SLSQP max-margin solution's value vs √n(K−1), its NC1/NC2/NC3 (→ 0) and norms."""
    margin = gd.final("normalized_margin")
    K = gd.model.K
    return [
        check("GD: normalized margin (best seed)", margin.max(), opt.normalized_margin, margin_tol),
        check("GD: normalized margin stays below its limit (worst seed, abs excess)",
              max(margin.max() - opt.normalized_margin, 0.0), 0.0, 1e-12, kind="abs"),
        check("SLSQP: min 1/2(|W|^2+|H|^2) vs sqrt(n)(K-1)", sol.value, opt.value, value_tol),
        check("SLSQP: smallest margin", sol.min_margin, 1.0, value_tol),
        check("SLSQP: NC1", sol.metrics["nc1"], 0.0, zero_tol, kind="abs"),
        check("SLSQP: NC2 (simplex ETF)", sol.metrics["nc2_etf"], 0.0, zero_tol, kind="abs"),
        check("SLSQP: NC3 (W vs centred means)", sol.metrics["nc3_etf"], 0.0, zero_tol, kind="abs"),
        check("SLSQP: distance to the closed-form max-margin point (best rotation)",
              max_margin_distance(sol.W, sol.H, np.repeat(np.arange(K), gd.model.n)), 0.0, 1e-4, kind="abs"),
        check("SLSQP: |w_k|^2 (mean over k)", float(np.square(sol.W).sum() / K), opt.norm_w_sq, 1e-5),
        check("SLSQP: |mu_k|^2", sol.metrics["mean_norm_sq"], opt.mean_norm_sq, 1e-5),
    ]


def loglog_slope(gd: GDResult, metric: str, level: str = "H", t_min: float = 1e3,
                 t_max: float = math.inf) -> np.ndarray:
    """Per run, ``(S,)``, the least-squares slope of log(metric) against log(log t) over steps in
    [``t_min``, ``t_max``]: −p for a metric that decays like (log t)^(−p)."""
    h = gd.history
    rows = h[(h.metric == metric) & (h.level == level) & (h.step >= t_min) & (h.step <= t_max)]
    out = []
    for _, part in rows.groupby("run", observed=True):
        x = np.log(np.log(part.step.to_numpy(dtype=float)))
        out.append(np.polyfit(x, np.log(part.value.to_numpy()), 1)[0])
    return np.array(out)


#: Predicted exponents p of (log t)^(−p) along GD on the ULPM (derived; the notebook's §2): metric → (level,
#: slope of log(metric) vs log(log t), kind). "rate": the slope itself (the conserved classifier mean w̄ holds
#: these at ‖θ‖⁻¹ ∝ (log t)^(−1/2)); "faster": only bounded by the direction distance, so at least as fast.
ULPM_RATES: dict[str, tuple[str, float, str]] = {
    "maxmargin_distance": ("model", -0.5, "rate"),
    "nc3_etf": ("H", -0.5, "rate"),
    "nc2_equiangle": ("H", -0.5, "faster"),
    "nc1": ("H", -1.0, "faster"),
}


def theta_norm(gd: GDResult) -> pd.DataFrame:
    """‖θ‖ = √(‖W‖² + ‖H‖²) per recorded ``step`` (rows) and ``run`` (columns)."""
    h = gd.history
    sq = h[h.metric.isin(["norm_W_sq", "norm_H_sq"])].groupby(["step", "run"], observed=True).value.sum()
    return np.sqrt(sq.unstack("run"))


def w_mean_floor(gd: GDResult) -> pd.DataFrame:
    """Lower bound √K‖w̄‖/‖θ‖ on :func:`ncutils.metrics.max_margin_distance` (``(steps, runs)``): the row mean w̄
    of W is invisible to the CE, so GD never changes it, while every max-margin point has w̄ = 0."""
    h = gd.history
    w = h[(h.metric == "w_mean_norm") & (h.level == "model")].set_index(["step", "run"]).value.unstack("run")
    return np.sqrt(gd.model.K) * w / theta_norm(gd)


def metric_table(gd: GDResult, metric: str, level: str = "model") -> pd.DataFrame:
    """``metric`` at ``level`` as a (steps, runs) table."""
    h = gd.history
    return h[(h.metric == metric) & (h.level == level)].set_index(["step", "run"]).value.unstack("run")


def norm_growth_slope(gd: GDResult, t_min: float, t_max: float = math.inf) -> tuple[np.ndarray, float]:
    """Per run, the slope of ½‖θ‖² against log t over steps in [t_min, t_max], and its prediction
    (1 + 1/ū)·√n(K−1): from dR/dt = 2(K−1)·u·e^(−u)·(1/γ*)… with u = γ*R the smallest margin (derived), ū the
    window's mean GD margin; the asymptotic slope is 1/γ* = √n(K−1)."""
    R = theta_norm(gd) ** 2 / 2
    R = R[(R.index >= t_min) & (R.index <= t_max)]
    x = np.log(R.index.to_numpy(dtype=float))
    slopes = np.array([np.polyfit(x, R[c].to_numpy(), 1)[0] for c in R.columns])
    u = metric_table(gd, "margin")
    u = u[(u.index >= t_min) & (u.index <= t_max)].to_numpy().mean()
    K, n = gd.model.K, gd.model.n
    return slopes, (1.0 + 1.0 / u) * math.sqrt(n) * (K - 1)


def ulpm_rate_checks(gd: GDResult, t_min: float, slope_tol: float = 0.1, growth_tol: float = 0.03,
                     early: float = 100.0, conserved_tol: float = 1e-3) -> list[dict[str, Any]]:
    """The rate claims of the notebook's §2 on the late window [``t_min``, end]: seed-mean slopes of
    log(metric) vs log(log t) against :data:`ULPM_RATES` (``slope_tol`` absolute), ½‖θ‖² vs log t against
    :func:`norm_growth_slope` (``growth_tol`` relative), the two invariants (w̄ to round-off, WᵀW − HᵀH after the
    first ``early`` steps to ``conserved_tol``) and the floor √K‖w̄‖/‖θ‖ ≤ distance at every record."""
    out = []
    for metric, (level, slope, kind) in ULPM_RATES.items():
        got = loglog_slope(gd, metric, level, t_min).mean()
        if kind == "rate":
            out.append(check(f"rate: slope of log {metric} vs log log t", got, slope, slope_tol, kind="abs"))
        else:
            out.append(check(f"rate: slope of log {metric} vs log log t, at least as fast as", got, slope, 0.0,
                             kind="below"))
    slopes, predicted = norm_growth_slope(gd, t_min)
    out.append(check("growth: slope of |theta|^2/2 vs log t", slopes.mean(), predicted, growth_tol))
    w = metric_table(gd, "w_mean_norm")
    out.append(check("invariant: |mean_k w_k|, last vs first record (worst seed)",
                     float((w.iloc[-1] / w.iloc[0] - 1).abs().max()), 0.0, 1e-9, kind="abs"))
    c = metric_table(gd, "imbalance_norm")
    c = c[c.index >= early]
    out.append(check(f"invariant: |W^TW - H^TH|, last vs step {c.index[0]} (worst seed)",
                     float((c.iloc[-1] / c.iloc[0] - 1).abs().max()), 0.0, conserved_tol, kind="abs",
                     id="invariant_imbalance"))
    dist, floor = metric_table(gd, "maxmargin_distance"), w_mean_floor(gd)
    holds = ((dist >= floor) | (dist.index.to_numpy() == 0)[:, None]).all(axis=0)
    out.append(count_check("floor: distance >= sqrt(K)|w_mean|/|theta| at every record", int(holds.sum()),
                           len(holds), len(holds)))
    return out


#: Panels of the layer-peeled figure: title → (level, metric, label) triples (Ji et al., Fig. 2: features and
#: classifier side); the last panel of each row is ½‖θ‖².
ULPM_PANELS: dict[str, list[tuple[str, str, str]]] = {
    "normalized margin": [("model", "normalized_margin", "margin / ½‖θ‖²")],
    "NC1": [("H", "nc1", "tr(Σ_W Σ_B†)/K")],
    "NC2, features μ_k − μ_G": [
        ("H", "nc2_equinorm", "equinorm"),
        ("H", "nc2_equiangle", "equiangle"),
        ("H", "nc2_maxangle", "max-angle"),
    ],
    "NC2, classifier w_k": [
        ("H", "nc2_equinorm_weights", "equinorm"),
        ("H", "nc2_equiangle_weights", "equiangle"),
        ("H", "nc2_maxangle_weights", "max-angle"),
    ],
    "NC3 and max-margin distance": [
        ("H", "nc3_etf", "NC3: W vs M̃"),
        ("model", "maxmargin_distance", "dist(θ/‖θ‖, max-margin)"),
    ],
}


def _mean_curve(gd: GDResult, level: str, metric: str) -> pd.Series:
    h = gd.history
    return h[(h.level == level) & (h.metric == metric) & (h.step >= 2)].groupby("step", observed=True).value.mean()


def ulpm_figure(gd: GDResult, wd: GDResult, margin_limit: float, wd_label: str = "weight decay",
                title: str | None = None) -> Figure:
    """Two rows of panels (Ji et al., Fig. 2), each with its own axes: the unregularized run ``gd`` against
    log(log t) (½‖θ‖² against log t, its asymptotic slope √n(K−1) dotted; the floor √K‖w̄‖/‖θ‖ of the
    max-margin distance dotted, top row only) and the weight-decay run ``wd`` against the GD step. Means over seeds."""
    style()
    ncol = len(ULPM_PANELS) + 1
    fig, axes = plt.subplots(2, ncol, figsize=(3.1 * ncol, 6.2), constrained_layout=True)
    colors = sns.color_palette("colorblind", 3)
    K, n = gd.model.K, gd.model.n
    for row, (run, label) in enumerate(((gd, "no regularization"), (wd, wd_label))):
        def x_of(steps: np.ndarray, row: int = row) -> np.ndarray:
            return np.log(np.log(steps)) if row == 0 else steps

        for ax, (panel, curves) in zip(axes[row], ULPM_PANELS.items(), strict=False):
            for j, (lev, metric, name) in enumerate(curves):
                c = _mean_curve(run, lev, metric)
                (line,) = ax.plot(x_of(c.index.to_numpy(dtype=float)), c.to_numpy(), color=colors[j], label=name)
                line.set_dashes(_DASHES[j % len(_DASHES)])
            if panel == "normalized margin":
                ax.axhline(margin_limit, color="0.3", ls="--", lw=1, label="1/(√n(K−1))")
            else:
                ax.set_yscale("log")
            if panel.startswith("NC3") and row == 0:  # the floor holds without regularization only
                floor = w_mean_floor(run).mean(axis=1)
                floor = floor[floor.index >= 2]
                ax.plot(x_of(floor.index.to_numpy(dtype=float)), floor.to_numpy(), color="0.3", ls=":", lw=1.2,
                        label="√K‖w̄‖/‖θ‖")
            _finish(ax, f"{panel}\n{label}", "log(log t)" if row == 0 else "GD step", xlog=row == 1)
            if panel.startswith("NC3"):
                ax.legend(fontsize="x-small", loc="lower left")
        R = (theta_norm(run) ** 2 / 2).mean(axis=1)
        R = R[R.index >= 2]
        ax = axes[row, -1]
        steps = R.index.to_numpy(dtype=float)
        ax.plot(np.log(steps) if row == 0 else steps, R.to_numpy(), color=colors[0], label="½‖θ‖²")
        if row == 0:
            ref = math.sqrt(n) * (K - 1) * (np.log(steps) - np.log(steps[-1])) + R.iloc[-1]
            ax.plot(np.log(steps), ref, color="0.3", ls=":", lw=1.2, label="slope √n(K−1)")
        _finish(ax, f"½(‖W‖²+‖H‖²)\n{label}", "log t" if row == 0 else "GD step", xlog=row == 1)
    if title:
        fig.suptitle(title)
    return fig
