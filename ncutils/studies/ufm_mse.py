"""Notebook 01 — the UFM with MSE loss (Tirer & Bruna, ICML 2022, §3, Theorem 3.1; Fig. 1)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import theory
from .._validate import check_floats
from ..models import UFM
from ..plot import threshold_panels
from ..report import check
from ..solve import GDResult, gradient_descent
from ._common import POSITIVE, Assumption, Requirement, Rule

__all__ = ["ASSUMPTIONS", "NOTEBOOK", "REQUIREMENTS", "RULES", "sweep_check", "threshold_sweep_figure", "ufm_checks",
           "ufm_threshold_sweep"]

NOTEBOOK = "01_ufm_mse"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    "sweep_c_max": POSITIVE,
}
#: Hard requirements of the theory: a run whose parameters break one fails before any compute.
REQUIREMENTS: list[Requirement] = []
#: Assumptions of the theorem: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = [
    Assumption(
        lambda p: p["d"] >= p["K"],
        "d < K: Tirer & Bruna's Theorem 3.1 assumes d >= K (an orthogonal frame of K means needs "
        "K dimensions); the run goes on but the closed forms need not apply",
    ),
]


def ufm_checks(
    gd: GDResult, opt: theory.UFMOptimum, tol: float = 1e-4, zero_tol: float = 1e-6, run: int = 0
) -> list[dict[str, Any]]:
    """GD-versus-theory checks for a UFM run (MSE or CE, with or without bias).

    Relative errors (``tol``) for f*, ‖μ_k‖², the fit diag(WM), ‖W‖², ‖H‖² (and b*);
    absolute errors (``zero_tol``) for the metrics the theorem sends to 0 — NC1 and
    NC2/NC3 towards the frame of the model: orthogonal (bias-free MSE) or simplex
    ETF (MSE with bias, CE) — and a relative check of what tells the frames apart,
    which must equal :func:`ncutils.theory.frame_distance` (K): NC2 to the orthogonal
    frame for an ETF; NC3 (ETF) for the orthogonal frame (its centred means *are* an
    ETF, but W ∝ Mᵀ is not ∝ M̃ᵀ).
    """
    m = gd.model
    assert isinstance(m, UFM)
    etf = m.bias or m.loss == "ce"
    own = "etf" if etf else "orthogonal"
    label = f"{m.loss.upper()}{' + bias' if m.bias else ''}"

    def final(metric: str, level: str = "model") -> float:
        return float(gd.final(metric, level)[run])

    out = [
        check(f"{label}: objective f*", final("objective"), opt.objective, tol),
        check(f"{label}: mean ||mu_k||^2", final("mean_norm_sq", "H"), opt.mean_norm_sq, tol),
        check(f"{label}: diag(W M)", final("fit"), opt.fit, tol),
        check(f"{label}: ||W||_F^2", final("norm_W_sq"), opt.norm_W_sq, tol),
        check(f"{label}: ||H||_F^2", final("norm_H_sq"), opt.norm_H_sq, tol),
    ]
    if opt.bias is not None:
        out.append(check(f"{label}: bias b_k", final("bias_mean"), opt.bias, tol))
    out += [
        check(f"{label}: NC1", final("nc1", "H"), 0.0, zero_tol, kind="abs"),
        check(f"{label}: NC2 to {own}", final(f"nc2_{own}", "H"), 0.0, zero_tol, kind="abs"),
        check(f"{label}: NC3 ({own})", final(f"nc3_{own}", "H"), 0.0, zero_tol, kind="abs"),
    ]
    distinct = "nc2_orthogonal" if etf else "nc3_etf"
    out.append(
        check(f"{label}: {'NC2 to orthogonal' if etf else 'NC3 (ETF)'} = frame distance", final(distinct, "H"),
              theory.frame_distance(m.K), tol)
    )
    return out


def ufm_threshold_sweep(K: int, n: int, d: int, c_values: np.ndarray | list[float], *, loss: str = "mse",
                        bias: bool = False, lr: float, steps: int, init_std: float, seed: int, device: Any = "auto",
                        dtype: Any = "float64") -> pd.DataFrame:
    """GD across the threshold c = K√(nλ_Hλ_W) with λ_W = λ_H = c/(K√n), all points as one batched run.

    Returns one row per c: the GD and theory values of f and ‖μ_k‖² and their relative error.
    """
    c = np.asarray(check_floats("c_values", c_values, 0.0, strict_low=True))
    lam = tuple(float(x) for x in c / (K * math.sqrt(n)))
    model = UFM(K=K, n=n, d=d, lambda_W=lam, lambda_H=lam, loss=loss, bias=bias)  # type: ignore[arg-type]
    gd = gradient_descent(model, lr=lr, steps=steps, init_std=init_std, seed=seed, device=device, dtype=dtype,
                          record_every=steps, desc="threshold sweep")
    optimum = (
        theory.ufm_ce_optimum if loss == "ce" else (lambda K, n, lw, lh: theory.ufm_mse_optimum(K, n, lw, lh, bias))
    )
    th = [optimum(K, n, x, x) for x in lam]
    df = pd.DataFrame(
        {
            "c": c,
            "lambda": lam,
            "objective_gd": gd.final("objective"),
            "objective_theory": [t.objective for t in th],
            "mean_norm_sq_gd": gd.final("mean_norm_sq", "H"),
            "mean_norm_sq_theory": [t.mean_norm_sq for t in th],
        }
    )
    df["objective_rel_err"] = (df.objective_gd - df.objective_theory).abs() / df.objective_theory
    return df


def sweep_check(sweep: pd.DataFrame, tol: float = 1e-4) -> dict[str, Any]:
    """The worst point of a threshold sweep as one relative-error check of f."""
    worst = sweep.loc[sweep.objective_rel_err.idxmax()]
    return check(f"sweep: f at c = {worst.c:.3g} (worst of {len(sweep)})", worst.objective_gd, worst.objective_theory,
                 tol, id="sweep_worst_objective")


def threshold_sweep_figure(df: pd.DataFrame, title: str | None = None) -> Figure:
    """‖μ_k‖² and f against c: theory as lines, GD as markers (``df`` from :func:`ufm_threshold_sweep`); the
    threshold c = 1 dashed."""
    return threshold_panels(df, "c", "c = K √(n λ_H λ_W)", "c = 1", title=title)
