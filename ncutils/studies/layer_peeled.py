"""Notebook 06 — the unconstrained layer-peeled model without weight decay (Ji et al., ICLR 2022, Thm 3.1, Fig. 2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from .. import theory
from ..plot import DASHES as _DASHES
from ..plot import finish_axes as _finish
from ..plot import style
from ..report import check
from ..solve import GDResult
from ..ulpm import MaxMarginSolution
from ._common import POSITIVE, Assumption, Requirement, Rule, best_run
from .ufm_mse import ufm_checks

__all__ = ["ASSUMPTIONS", "NOTEBOOK", "REQUIREMENTS", "RULES", "ULPM_PANELS", "best_run", "loglog_slope", "ufm_checks",
           "ulpm_checks", "ulpm_figure"]

NOTEBOOK = "06_layer_peeled"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    "num_records": Rule(int, low=2),
    "wd_lambda": POSITIVE,
    "wd_steps": Rule(int, low=1),
    "maxmargin_starts": Rule(int, low=1),
    "margin_tol": POSITIVE,
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
        check("SLSQP: |w_k|^2 (mean over k)", float(np.square(sol.W).sum() / K), opt.norm_w_sq, 1e-5),
        check("SLSQP: |mu_k|^2", sol.metrics["mean_norm_sq"], opt.mean_norm_sq, 1e-5),
    ]


def loglog_slope(gd: GDResult, metric: str, level: str = "H", t_min: float = 1e3) -> np.ndarray:
    """Per run, the least-squares slope of log(metric) against log(log t) over steps ≥ ``t_min`` (Ji et al.:
    the log of NC quantities decays like O(1/log t), so these curves flatten only slowly)."""
    h = gd.history
    rows = h[(h.metric == metric) & (h.level == level) & (h.step >= t_min)]
    out = []
    for _, part in rows.groupby("run", observed=True):
        x = np.log(np.log(part.step.to_numpy(dtype=float)))
        out.append(np.polyfit(x, np.log(part.value.to_numpy()), 1)[0])
    return np.array(out)


#: Panels of the layer-peeled figure: title → (level, metric, label) triples.
ULPM_PANELS: dict[str, list[tuple[str, str, str]]] = {
    "normalized margin": [("model", "normalized_margin", "margin / ½(‖W‖²+‖H‖²)")],
    "NC1": [("H", "nc1", "tr(Σ_W Σ_B†)/K")],
    "NC2 (Papyan)": [
        ("H", "nc2_equinorm", "equinorm"),
        ("H", "nc2_equiangle", "equiangle"),
        ("H", "nc2_maxangle", "max-angle"),
    ],
    "NC3": [("H", "nc3_etf", "W vs M̃ (ETF)")],
}


def ulpm_figure(results: Mapping[str, Any], margin_limit: float, title: str | None = None) -> Figure:
    """The layer-peeled model against log(log t) (Ji et al., Fig. 2): normalized margin (its limit
    1/(√n(K−1)) dashed), NC1, Papyan's NC2 variants, NC3 — and ‖W‖_F against log t. One colour per
    entry of ``results`` (label → GDResult); the mean over seeds is drawn."""
    style()
    fig, axes = plt.subplots(
        1, len(ULPM_PANELS) + 1, figsize=(3.3 * (len(ULPM_PANELS) + 1), 3.2), constrained_layout=True
    )
    colors = dict(zip(results, sns.color_palette("colorblind", len(results)), strict=True))
    for label, gd in results.items():
        h = gd.history[gd.history.step >= 2]
        for ax, (panel, curves) in zip(axes, ULPM_PANELS.items(), strict=False):
            for j, (lev, metric, name) in enumerate(curves):
                c = h[(h.level == lev) & (h.metric == metric)].groupby("step", observed=True).value.mean()
                (line,) = ax.plot(
                    np.log(np.log(c.index.to_numpy(dtype=float))),
                    c.to_numpy(),
                    color=colors[label],
                    label=f"{label}" + (f", {name}" if len(curves) > 1 else ""),
                )
                line.set_dashes(_DASHES[j % len(_DASHES)])
            ax.set_title(panel)
        w = h[h.metric == "norm_W_sq"].groupby("step", observed=True).value.mean()
        axes[-1].plot(np.log(w.index.to_numpy(dtype=float)), np.sqrt(w.to_numpy()), color=colors[label], label=label)
    axes[0].axhline(margin_limit, color="0.3", ls="--", lw=1, label="1/(√n(K−1))")
    for ax in axes[:-1]:
        ax.set_xlabel("log(log t)")
        if ax is not axes[0]:
            ax.set_yscale("log")
        ax.legend(fontsize="x-small")
    _finish(axes[-1], "‖W‖_F", "log t")
    if title:
        fig.suptitle(title)
    return fig
