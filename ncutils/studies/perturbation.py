"""Notebook 05 — the perturbation model (Tirer, Huang & Niles-Weed, ICML 2023, Thms 3.1, 4.1, 4.2; Fig. 1)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from .. import theory
from ..data import missing_files
from ..metrics import nc1_t, nc1_trace_t
from ..paths import resolve_path
from ..perturbation import FlowResult, PerturbationModel, jacobian_blocks, layerwise_chain, monotonicity_checks
from ..plot import finish_axes as _finish
from ..plot import style
from ..report import check, count_check
from ._common import POSITIVE, Assumption, Requirement, Rule, positive_list


def _h0_file(value: str) -> None:
    """An optional H₀ file: empty, or a readable .npy holding a 2-D array of finite numbers."""
    if not value:
        return
    path = resolve_path(value)
    if not path.is_file():
        raise ValueError(f"file {path} does not exist (expected a .npy array of shape (K n, d))")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read {path} as a .npy array: {err}") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path} must hold a 2-D numeric (K n, d) array, got shape {arr.shape} ({arr.dtype})")
    if not np.isfinite(arr).all():
        raise ValueError(f"H0 in {path} must be finite; it has {int((~np.isfinite(arr)).sum())} NaN/inf entries")


def _h0_shape(p: dict) -> bool:
    return not p["h0_file"] or np.load(resolve_path(p["h0_file"]), mmap_mode="r").shape == (p["K"] * p["n"], p["d"])


__all__ = ["ASSUMPTIONS", "NOTEBOOK", "REQUIREMENTS", "RULES", "beta_sweep", "beta_sweep_figure", "chain_checks",
           "direction_checks", "first_order_checks", "first_order_figure", "first_order_study", "flow_checks",
           "flow_figure", "jacobian_checks", "jacobian_lambda_W_study", "jacobian_spectra_figure", "jacobian_study",
           "layerwise_chain_figure", "mnist_chain", "random_features", "spectrum_moves"]

NOTEBOOK = "05_perturbation"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    "beta": POSITIVE,
    "jacobian_lambda_H": Rule(list, check=positive_list("lambda_H values of the Jacobian study")),
    "jacobian_lambda_W": Rule(list, check=positive_list("lambda_W values of the Jacobian study")),
    "first_order_beta_min": POSITIVE,
    "first_order_beta_max": POSITIVE,
    "first_order_points": Rule(int, low=3),
    "h0_std": POSITIVE,
    "h0_file": Rule(str, check=_h0_file),
    "flow_t_max": POSITIVE,
    "flow_records": Rule(int, low=2),
    "beta_min": POSITIVE,
    "beta_max": POSITIVE,
    "beta_points": Rule(int, low=2),
    "chain_data": Rule(str, choices=("mnist", "fake")),
    "chain_per_class": Rule(int, low=2),
    "chain_width": Rule(int, low=11),
    "chain_epochs": Rule(int, low=1),
    "chain_layers": Rule(int, low=1),
    "chain_betas": Rule(list, check=positive_list("beta values of the layer-wise chain")),
}
#: Hard requirements of the theory: a run whose parameters break one fails before any compute.
REQUIREMENTS: list[Requirement] = [
    Requirement(("d", "K"), lambda p: p["d"] > p["K"], "parameter d must be > K (Theorem 4.2 assumes d > K)"),
    Requirement(
        ("lambda_W",), lambda p: p["lambda_W"] > 0, "parameter lambda_W must be > 0 (the central path W*(H) needs it)"
    ),
    Requirement(("lambda_W", "lambda_H"), lambda p: p["lambda_W"] * p["lambda_H"] < 1,
                "parameters lambda_W * lambda_H must be < 1 (else the minimizer is H = 0: nothing collapses)"),
    Requirement(("lambda_W", "jacobian_lambda_H"),
                lambda p: all(p["lambda_W"] * v < 1 for v in p["jacobian_lambda_H"]),
                "parameters lambda_W * jacobian_lambda_H must all be < 1 (Theorem 4.2 needs a collapsed H0)"),
    Requirement(("lambda_H",), lambda p: p["lambda_H"] > 0,
                "parameter lambda_H must be > 0 (the Eq. 5 comparison and the lambda_W study start from a collapsed "
                "minimizer, which needs lambda_H > 0)"),
    Requirement(("lambda_H", "jacobian_lambda_W"),
                lambda p: all(p["lambda_H"] * v < 1 for v in p["jacobian_lambda_W"]),
                "parameters lambda_H * jacobian_lambda_W must all be < 1 (Theorem 4.2 needs a collapsed H0)"),
    Requirement(
        ("beta_min", "beta_max"), lambda p: p["beta_min"] < p["beta_max"], "parameter beta_min must be < beta_max"
    ),
    Requirement(("first_order_beta_min", "first_order_beta_max"),
                lambda p: p["first_order_beta_min"] < p["first_order_beta_max"],
                "parameter first_order_beta_min must be < first_order_beta_max"),
    Requirement(("h0_file", "K", "n", "d"), _h0_shape,
                "parameter h0_file must hold an array of shape (K n, d), rows class-major"),
    Requirement(("chain_data", "data_root"),
                lambda p: p["chain_data"] != "mnist" or missing_files("mnist", p["data_root"]) is None,
                lambda p: f"parameter data_root: {missing_files('mnist', p['data_root'])}", machine=True),
]
#: Assumptions of the theorem: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = []


# --------------------------------------------------------------------------- #
# §5 perturbation model (notebook 05)
# --------------------------------------------------------------------------- #
def random_features(K: int, n: int, d: int, std: float = 1.0, seed: int = 0) -> torch.Tensor:
    """A generic non-collapsed H₀ ``(Kn, d)``: i.i.d. N(0, std²) rows, class-major (float64)."""
    gen = torch.Generator().manual_seed(seed)
    return std * torch.randn(K * n, d, generator=gen, dtype=torch.float64)


def flow_checks(model: PerturbationModel, flow: FlowResult, tol: float = 1e-6) -> list[dict[str, Any]]:
    """Theorem 3.1 at every recorded time (one check per claim: the number of violations, 0 expected)
    and the end of the flow vs the β-free optimum f* = c − c²/2, c = √(λ_Hλ_W) (TB normalization)."""
    mono = monotonicity_checks(flow.table)
    out = [
        check(f"Thm 3.1: {r.claim} (violations in {r.steps} steps)", r.violations, 0, 0, kind="abs")
        for r in mono.itertuples()
    ]
    lw, lh = model.ufm_lambdas()
    f_star = theory.ufm_objective_star(model.K, model.n, lw, lh)
    out.append(check("flow end: L(H_T) vs f* (their lambdas mapped to TB)", flow.table.L.iloc[-1], f_star, tol))
    return out


def beta_sweep(model: PerturbationModel, H0: torch.Tensor, betas: list[float] | np.ndarray) -> pd.DataFrame:
    """Corollary 3.2: the minimizer H_{1/β} of f(·; H₀) for each β — its nc1, nc1_trace and the solver's
    gradient norm, next to nc1_trace(H₀) (column ``nc1_trace_H0``)."""
    y = model.labels()
    base = float(nc1_trace_t(H0, y, model.K))
    rows = []
    for beta in betas:
        m = replace(model, beta=float(beta))
        r = m.minimize(H0)
        rows.append(
            {
                "beta": float(beta),
                "nc1": float(nc1_t(r.H, y, model.K)),
                "nc1_trace": float(nc1_trace_t(r.H, y, model.K)),
                "nc1_trace_H0": base,
                "grad_norm": r.grad_norm,
                "converged": r.converged,
            }
        )
    return pd.DataFrame(rows)


def _jacobian_row(K: int, n: int, d: int, lambda_W: float, lambda_H: float, beta: float,
                  seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """One (λ_W, λ_H) of the Theorem 4.2 study: the exact F (implicit differentiation) and Eq. 5's F₁ at a collapsed
    H₀, their block spectra and the predictions; also the singular values ``(nd,)`` of the exact F_11."""
    model = PerturbationModel(K=K, n=n, d=d, lambda_W=lambda_W, lambda_H=lambda_H, beta=beta)
    _, H0 = model.collapsed_minimizer(seed)
    star = model.minimize(H0)
    blocks = jacobian_blocks(model.jacobian(H0, star.H), K, n, d)
    first = jacobian_blocks(model.first_order_jacobian(star.H), K, n, d)
    pred = theory.perturbation_jacobian(lambda_W, lambda_H, beta)
    diag, off = blocks[blocks.diagonal], blocks[~blocks.diagonal]
    fdiag, foff = first[first.diagonal], first[~first.diagonal]
    row = {
        "lambda_W": lambda_W,
        "lambda_H": lambda_H,
        "moved": float((star.H - H0).norm()),
        "diag_sigma_max": float(diag.sigma_max.max()),
        "diag_sigma_min": float(diag.sigma_min.min()),
        "diag_sigma_min_spread": float(diag.sigma_min.max() - diag.sigma_min.min()),
        "diag_rank": int(diag["rank"].min()),
        "offdiag_rank": int(off["rank"].max()),
        "offdiag_sigma_max": float(off.sigma_max.max()),
        "first_order_diag_sigma_max": float(fdiag.sigma_max.max()),
        "first_order_diag_sigma_min": float(fdiag.sigma_min.min()),
        "first_order_offdiag_sigma_max": float(foff.sigma_max.max()),
        "pred_diag_sigma_min": pred.diag_sigma_min,
        "pred_offdiag_sigma_max": pred.offdiag_sigma_max,
        "diag_multiplicities": diag.multiplicities.iloc[0],
    }
    return row, diag.sv.iloc[0]


def jacobian_study(
    K: int, n: int, d: int, lambda_W: float, lambda_Hs: list[float], beta: float, seed: int = 0
) -> tuple[pd.DataFrame, dict[float, np.ndarray]]:
    """Theorem 4.2 / Fig. 1: for each λ_H, the Jacobian F = ∂vec(H*)/∂vec(H₀) at a collapsed minimizer H₀
    (implicit differentiation) and Eq. 5's first-order F₁, summarized per λ_H: the extreme singular values of
    the diagonal blocks, rank and σ_max of the off-diagonal blocks, multiplicities, and the predictions.
    Returns that table and the singular values ``(nd,)`` of F_11 per λ_H (for the figure)."""
    rows, spectra = [], {}
    for lh in lambda_Hs:
        row, spectra[float(lh)] = _jacobian_row(K, n, d, float(lambda_W), float(lh), beta, seed)
        rows.append(row)
    return pd.DataFrame(rows), spectra


def jacobian_lambda_W_study(
    K: int, n: int, d: int, lambda_Ws: list[float], lambda_H: float, beta: float, seed: int = 0
) -> tuple[pd.DataFrame, dict[float, np.ndarray]]:
    """:func:`jacobian_study` with λ_H fixed and λ_W varied (Thm 4.2: larger λ_W raises σ_min(F_kk) and lowers
    σ_max(F_kk')). Returns the table and the singular values ``(nd,)`` of F_11 per λ_W."""
    rows, spectra = [], {}
    for lw in lambda_Ws:
        row, spectra[float(lw)] = _jacobian_row(K, n, d, float(lw), float(lambda_H), beta, seed)
        rows.append(row)
    return pd.DataFrame(rows), spectra


def spectrum_moves(spectra: Mapping[float, np.ndarray], tol: float = 1e-9) -> pd.DataFrame:
    """How the sorted singular values ``(nd,)`` of F_kk move between consecutive values of the varied λ:
    one row per pair with the number of σ_i that decrease, stay (|Δσ_i| ≤ ``tol``) or increase."""
    keys = list(spectra)
    rows = []
    for a, b in itertools.pairwise(keys):
        delta = np.asarray(spectra[b]) - np.asarray(spectra[a])
        rows.append({"from": a, "to": b, "decrease": int((delta < -tol).sum()),
                     "unchanged": int((np.abs(delta) <= tol).sum()), "increase": int((delta > tol).sum()),
                     "total": len(delta)})
    return pd.DataFrame(rows)


def direction_checks(table: pd.DataFrame, spectra: Mapping[float, np.ndarray], vary: str) -> list[dict[str, Any]]:
    """Theorem 4.2's direction claims over consecutive values of ``vary`` (``"lambda_H"`` or ``"lambda_W"``),
    each a count of pairs (all required). λ_H: σ_min(F_kk) = 1 − √(λ_H/λ_W)/β decreases. λ_W: σ_min(F_kk)
    increases, no singular value of F_kk decreases (the paper's "contrary to increasing λ_W"), and
    σ_max(F_kk') = 2λ_H(1 − √(λ_Hλ_W))/β decreases (less inter-class crosstalk)."""
    if vary not in ("lambda_H", "lambda_W"):
        raise ValueError(f"parameter vary must be 'lambda_H' or 'lambda_W', got {vary!r}")
    t = table.sort_values(vary)
    pairs = len(t) - 1
    dmin = np.diff(t.diag_sigma_min.to_numpy())
    if vary == "lambda_H":
        return [count_check("lambda_H up: pairs where sigma_min(F_kk) decreases", int((dmin < 0).sum()), pairs,
                            pairs)]
    moves = spectrum_moves(dict(sorted(spectra.items())))
    doff = np.diff(t.offdiag_sigma_max.to_numpy())
    return [
        count_check("lambda_W up: pairs where sigma_min(F_kk) increases", int((dmin > 0).sum()), pairs, pairs),
        count_check("lambda_W up: pairs where no sigma_i(F_kk) decreases", int((moves.decrease == 0).sum()), pairs,
                    pairs),
        count_check("lambda_W up: pairs where sigma_max(F_kk') decreases", int((doff < 0).sum()), pairs, pairs),
    ]


def first_order_study(model: PerturbationModel, H0s: Mapping[str, torch.Tensor],
                      betas: list[float] | np.ndarray) -> pd.DataFrame:
    """Theorem 4.1 vs its Eq. 5: for each H₀ ``(N, d)`` (name → matrix) and β, the minimizer H*, the exact
    Jacobian F (implicit differentiation, :meth:`~ncutils.perturbation.PerturbationModel.jacobian`) and
    F₁ = I − A/β (Eq. 5, A = Kn∇²L(H*) in closed form). Columns: ``rel_err`` = ‖F − F₁‖₂/‖F‖₂,
    ``scaled_err`` = β²·rel_err (→ ‖A²‖₂/‖F‖₂ at second order), ``norm_F`` = ‖F‖₂, ``norm_A`` = ‖A‖₂,
    ``norm_A2`` = ‖A²‖₂,
    ``resolvent_err`` = max|F − (I + A/β)⁻¹| (Thm 4.1's first display, exact) and the solver's gradient norm."""
    rows = []
    for name, H0 in H0s.items():
        for beta in betas:
            m = replace(model, beta=float(beta))
            star = m.minimize(H0)
            F = m.jacobian(H0, star.H)
            A = m.reduced_hessian(star.H)
            eye = torch.eye(A.shape[0], dtype=torch.float64)
            F1 = eye - A / m.beta
            norm_F = float(torch.linalg.matrix_norm(F, 2))
            rel = float(torch.linalg.matrix_norm(F - F1, 2)) / norm_F
            rows.append({
                "H0": name, "beta": float(beta), "rel_err": rel, "scaled_err": rel * float(beta) ** 2,
                "norm_F": norm_F, "norm_A": float(torch.linalg.matrix_norm(A, 2)),
                "norm_A2": float(torch.linalg.matrix_norm(A @ A, 2)),
                "resolvent_err": float((F - torch.linalg.inv(eye + A / m.beta)).abs().max()),
                "grad_norm": star.grad_norm, "converged": star.converged,
            })
    return pd.DataFrame(rows)


def _loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def first_order_checks(table: pd.DataFrame, order: float = 2.0, resolvent_tol: float = 1e-10) -> list[dict[str, Any]]:
    """Per H₀ of :func:`first_order_study`: (i) F = (I + A/β)⁻¹ to ``resolvent_tol`` at every β (Thm 4.1,
    exact); (ii) the least-squares slope of log rel_err against log(1/β) equals ``order`` (Eq. 5 drops
    A²/β²). Since F − F₁ = (A/β)²(I + A/β)⁻¹, the local slope differs from 2 by at most about ‖A‖₂/β: the
    tolerance is max ‖A‖₂/β over the grid (its smallest β)."""
    out = []
    for name, part in table.groupby("H0", sort=False):
        out.append(check(f"Thm 4.1 ({name} H0): max |F - (I + A/beta)^-1| over {len(part)} betas",
                         part.resolvent_err.max(), 0.0, resolvent_tol, kind="abs"))
        slope = _loglog_slope(1.0 / part.beta.to_numpy(), part.rel_err.to_numpy())
        tol = float((part.norm_A / part.beta).max())
        out.append(check(f"Eq. 5 ({name} H0): slope of log ||F - F1||/||F|| vs log(1/beta)", slope, order, tol,
                         kind="abs", id=f"eq5_{name}_slope"))
    return out


def jacobian_checks(
    table: pd.DataFrame, n: int, d: int, abs_tol: float = 1e-4, offdiag_rel_tol: float = 0.01,
    vary: str = "lambda_H", first_order_tol: float = 1e-12,
) -> list[dict[str, Any]]:
    """Theorem 4.2's claims per row (labelled by the varied ``vary``): σ_max(F_kk) = 1,
    |σ_min(F_kk) − 1 + √(λ_H/λ_W)/β| ≤ ``abs_tol``, F_kk of full rank n·d, F_kk' of rank 1 with σ_max within
    ``offdiag_rel_tol`` of the first-order prediction 2λ_H(1 − √(λ_Hλ_W))/β; and, on Eq. 5's F₁ (where the
    theorem's values are exact), σ_min(F₁_kk) and σ_max(F₁_kk') to ``first_order_tol`` (relative)."""
    out = []
    for r in table.itertuples():
        tag = f"{vary}={getattr(r, vary):g}"
        out += [
            check(f"{tag}: sigma_max(F_kk)", r.diag_sigma_max, 1.0, 1e-9),
            check(f"{tag}: sigma_min(F_kk)", r.diag_sigma_min, r.pred_diag_sigma_min, abs_tol, kind="abs"),
            check(f"{tag}: rank(F_kk)", r.diag_rank, n * d, 0, kind="abs"),
            check(f"{tag}: rank(F_kk'), k != k'", r.offdiag_rank, 1, 0, kind="abs"),
            check(f"{tag}: sigma_max(F_kk'), first order in 1/beta", r.offdiag_sigma_max, r.pred_offdiag_sigma_max,
                  offdiag_rel_tol),
        ]
        if hasattr(r, "first_order_diag_sigma_min"):
            out += [
                check(f"{tag}: Eq. 5 F1: sigma_min(F1_kk)", r.first_order_diag_sigma_min, r.pred_diag_sigma_min,
                      first_order_tol),
                check(f"{tag}: Eq. 5 F1: sigma_max(F1_kk')", r.first_order_offdiag_sigma_max,
                      r.pred_offdiag_sigma_max, first_order_tol),
            ]
    return out


def mnist_chain(model: PerturbationModel, betas: list[float], *, layers: int, data_root: str, per_class: int,
                width: int, epochs: int, seed: int = 0, fake: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The layer-wise argument on real features: train a 784→width→width→10 ReLU MLP on a balanced MNIST
    subset (``per_class`` digits per class, read by torchvision from ``data_root``), take its first hidden
    layer's features as H₀ (scaled so that the mean squared row norm equals the collapsed ‖μ_k‖² of the
    model), and chain ``layers`` minimizers H_{l+1} = argmin f(·; H_l) for each β.
    ``fake``: write and read a synthetic MNIST in the real format first (tests, CI).
    Returns the chain table (β, layer, nc1, …) and the MLP's training history."""
    from ..data import load_dataset, write_fake_mnist
    from ..train import mlp_features, train_mlp

    if fake:
        write_fake_mnist(data_root, per_class=per_class, seed=seed)
    X, y = load_dataset("mnist", data_root, per_class=per_class, seed=seed)
    mlp = train_mlp(X, y, [width, width], epochs=epochs, seed=seed)
    H0 = mlp_features(mlp.model, X)[0]
    lw, lh = model.ufm_lambdas()
    rho = theory.ufm_mse_optimum(model.K, model.n, lw, lh).mean_norm_sq
    H0 = H0 * math.sqrt(rho / float(H0.square().sum(1).mean()))
    tables = []
    for beta in betas:
        _, table = layerwise_chain(H0, replace(model, beta=float(beta)), layers)
        tables.append(table.assign(beta=float(beta)))
    return pd.concat(tables, ignore_index=True), mlp.history


def chain_checks(chain: pd.DataFrame, data: str = "mnist") -> list[dict[str, Any]]:
    """Every layer of every chain lowers NC1 and nc1_trace (reported as the last layer's ratio to H₀; the
    check counts layers where a metric does not decrease, 0 expected)."""
    out = []
    for beta, part in chain.groupby("beta"):
        for metric in ("nc1", "nc1_trace"):
            v = part.sort_values("layer")[metric].to_numpy()
            out.append(
                check(
                    f"{data} chain beta={beta:g}: layers where {metric} does not decrease "
                    f"(last/H0 = {v[-1] / v[0]:.3g})",
                    int((np.diff(v) >= 0).sum()),
                    0,
                    0,
                    kind="abs",
                )
            )
    return out


def flow_figure(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Theorem 3.1 along the gradient flow (``table`` from :meth:`ncutils.perturbation.PerturbationModel.flow`):
    nc1_trace(H_t), e^{2λ_H t} tr Σ_W and e^{2λ_H t} tr Σ_B against t (log axis; t = 0 as a dotted line)."""
    style()
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.2), constrained_layout=True)
    pos = table[table.t > 0]
    for ax, (col, label, claim) in zip(
        axes,
        [
            ("nc1_trace", "nc1_trace = tr Σ_W / tr Σ_B", "decreases"),
            ("scaled_tr_Sigma_W", "e^{2λ_H t} tr Σ_W", "decreases"),
            ("scaled_tr_Sigma_B", "e^{2λ_H t} tr Σ_B", "increases"),
        ],
        strict=True,
    ):
        ax.plot(pos.t, pos[col], color="C0", label=f"flow (claim: {claim})")
        ax.axhline(float(table[col].iloc[0]), color="0.4", ls=":", lw=1, label="t = 0")
        _finish(ax, label, "time t", xlog=True, ylog=True)
    if title:
        fig.suptitle(title)
    return fig


def beta_sweep_figure(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Corollary 3.2: nc1_trace (and Papyan's NC1) of the minimizer H_{1/β} against β, with nc1_trace(H₀)
    dashed (``df`` from :func:`beta_sweep`)."""
    style()
    fig, ax = plt.subplots(figsize=(5.6, 3.6), constrained_layout=True)
    ax.plot(df.beta, df.nc1_trace, "o-", color="C0", ms=4, label="nc1_trace(H*)")
    ax.plot(df.beta, df.nc1, "s:", color="C1", ms=3, label="NC1 (Papyan) of H*")
    ax.axhline(float(df.nc1_trace_H0.iloc[0]), color="0.3", ls="--", lw=1, label="nc1_trace(H₀)")
    _finish(ax, "minimizer of f(·; H₀) vs β", "β", xlog=True, ylog=True)
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def _spectra_panels(ax0: Any, ax1: Any, table: pd.DataFrame, spectra: Mapping[float, np.ndarray], vary: str,
                    symbol: str) -> None:
    """One row of :func:`jacobian_spectra_figure`: the spectrum of F_kk per value of ``vary`` and σ_max(F_kk')."""
    colors = sns.color_palette("colorblind", len(spectra))
    for color, (v, sv) in zip(colors, spectra.items(), strict=True):
        ax0.plot(np.arange(1, len(sv) + 1), sv, ".", color=color, ms=4, label=f"{symbol} = {v:g}")
        pred = float(table.loc[table[vary] == v, "pred_diag_sigma_min"].iloc[0])
        ax0.axhline(pred, color=color, ls="--", lw=1)
    ax0.axhline(1.0, color="0.4", lw=1, label="σ_max = 1 (theory)")
    ax0.set_ylabel("σ_i(F_kk)")
    fixed = "λ_W" if vary == "lambda_H" else "λ_H"
    other = "lambda_W" if vary == "lambda_H" else "lambda_H"
    _finish(ax0, f"F_kk, {symbol} varied ({fixed} = {float(table[other].iloc[0]):.3g}; dashed: predicted σ_min)",
            "index i")
    x = np.arange(len(table))
    ax1.bar(x - 0.2, table.offdiag_sigma_max, width=0.4, color="C0", label="implicit diff.")
    ax1.bar(x + 0.2, table.pred_offdiag_sigma_max, width=0.4, color="C1", label="2λ_H(1−√(λ_Hλ_W))/β")
    ax1.set_xticks(x, [f"{v:g}" for v in table[vary]])
    _finish(ax1, "σ_max(F_kk'), rank 1", symbol)


def jacobian_spectra_figure(
    table: pd.DataFrame, spectra: Mapping[float, np.ndarray], title: str | None = None,
    lambda_W_table: pd.DataFrame | None = None, lambda_W_spectra: Mapping[float, np.ndarray] | None = None,
) -> Figure:
    """Fig. 1 of Tirer, Huang & Niles-Weed: singular values of a diagonal block F_kk, one colour per λ_H,
    with the predicted σ_min = 1 − √(λ_H/λ_W)/β (dashed) and σ_max = 1 (grey); right: σ_max of the
    off-diagonal blocks vs 2λ_H(1 − √(λ_Hλ_W))/β (``table``/``spectra`` from :func:`jacobian_study`).
    With ``lambda_W_table``/``lambda_W_spectra`` (from :func:`jacobian_lambda_W_study`) a second row shows
    the same with λ_W varied."""
    style()
    rows = 1 if lambda_W_table is None else 2
    fig, axes = plt.subplots(
        rows, 2, figsize=(9.0, 3.4 * rows), constrained_layout=True, gridspec_kw={"width_ratios": [2, 1]},
        squeeze=False,
    )
    _spectra_panels(axes[0, 0], axes[0, 1], table, spectra, "lambda_H", "λ_H")
    if lambda_W_table is not None:
        if lambda_W_spectra is None:
            raise ValueError("parameter lambda_W_spectra is needed with lambda_W_table")
        _spectra_panels(axes[1, 0], axes[1, 1], lambda_W_table, lambda_W_spectra, "lambda_W", "λ_W")
    if title:
        fig.suptitle(title)
    return fig


def first_order_figure(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Theorem 4.1's Eq. 5 vs the exact Jacobian: ‖F − F₁‖₂/‖F‖₂ against β per H₀ (log–log), with the
    second-order term ‖A²‖₂/(β²‖F‖₂) dashed (``table`` from :func:`first_order_study`)."""
    style()
    fig, ax = plt.subplots(figsize=(5.6, 3.6), constrained_layout=True)
    for i, (name, part) in enumerate(table.groupby("H0", sort=False)):
        ax.plot(part.beta, part.rel_err, "o", color=f"C{i}", ms=5, label=f"{name} H₀: exact F vs Eq. 5")
        ax.plot(part.beta, part.norm_A2 / (part.beta**2 * part.norm_F), "--",
                color=f"C{i}", lw=1, label=f"{name} H₀: ‖A²‖/β² (slope −2)")
    ax.set_ylabel("‖F − F₁‖₂ / ‖F‖₂")
    _finish(ax, "first-order formula (Eq. 5) vs exact Jacobian", "β", xlog=True, ylog=True)
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def layerwise_chain_figure(chain: pd.DataFrame, title: str | None = None) -> Figure:
    """NC1 and nc1_trace against layer for each β (``chain`` from :func:`mnist_chain`)."""
    style()
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2), constrained_layout=True)
    for ax, (col, label) in zip(axes, [("nc1", "NC1 = tr(Σ_W Σ_B†)/K"), ("nc1_trace", "nc1_trace")], strict=True):
        sns.lineplot(data=chain.assign(beta=chain.beta.map("β = {:g}".format)), x="layer", y=col, hue="beta",
                     marker="o", ax=ax, palette="colorblind")
        ax.set_ylabel("")
        _finish(ax, label, "layer (0 = the MLP's features H₀)", ylog=True)
    if title:
        fig.suptitle(title)
    return fig
