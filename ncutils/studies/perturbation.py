"""Notebook 05 — the perturbation model (Tirer, Huang & Niles-Weed, ICML 2023, Thms 3.1, 4.2; Fig. 1)."""

from __future__ import annotations

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
from ..report import check
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
           "flow_checks", "flow_figure", "jacobian_checks", "jacobian_spectra_figure", "jacobian_study",
           "layerwise_chain_figure", "mnist_chain", "random_features"]

NOTEBOOK = "05_perturbation"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    "beta": POSITIVE,
    "jacobian_lambda_H": Rule(list, check=positive_list("lambda_H values of the Jacobian study")),
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
    Requirement(
        ("beta_min", "beta_max"), lambda p: p["beta_min"] < p["beta_max"], "parameter beta_min must be < beta_max"
    ),
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


def jacobian_study(
    K: int, n: int, d: int, lambda_W: float, lambda_Hs: list[float], beta: float, seed: int = 0
) -> tuple[pd.DataFrame, dict[float, np.ndarray]]:
    """Theorem 4.2 / Fig. 1: for each λ_H, the Jacobian F = ∂vec(H*)/∂vec(H₀) at a collapsed minimizer H₀
    (implicit differentiation), summarized per λ_H: the extreme singular values of the diagonal blocks,
    rank and σ_max of the off-diagonal blocks, multiplicities, and the predictions.
    Returns that table and the singular values of F_11 per λ_H (for the figure)."""
    rows, spectra = [], {}
    for lh in lambda_Hs:
        model = PerturbationModel(K=K, n=n, d=d, lambda_W=lambda_W, lambda_H=float(lh), beta=beta)
        _, H0 = model.collapsed_minimizer(seed)
        star = model.minimize(H0)
        blocks = jacobian_blocks(model.jacobian(H0, star.H), K, n, d)
        pred = theory.perturbation_jacobian(lambda_W, float(lh), beta)
        diag, off = blocks[blocks.diagonal], blocks[~blocks.diagonal]
        spectra[float(lh)] = diag.sv.iloc[0]
        rows.append(
            {
                "lambda_H": float(lh),
                "moved": float((star.H - H0).norm()),
                "diag_sigma_max": float(diag.sigma_max.max()),
                "diag_sigma_min": float(diag.sigma_min.min()),
                "diag_sigma_min_spread": float(diag.sigma_min.max() - diag.sigma_min.min()),
                "diag_rank": int(diag["rank"].min()),
                "offdiag_rank": int(off["rank"].max()),
                "offdiag_sigma_max": float(off.sigma_max.max()),
                "pred_diag_sigma_min": pred.diag_sigma_min,
                "pred_offdiag_sigma_max": pred.offdiag_sigma_max,
                "diag_multiplicities": diag.multiplicities.iloc[0],
            }
        )
    return pd.DataFrame(rows), spectra


def jacobian_checks(
    table: pd.DataFrame, n: int, d: int, abs_tol: float = 1e-4, offdiag_rel_tol: float = 0.01
) -> list[dict[str, Any]]:
    """Theorem 4.2's claims per λ_H: σ_max(F_kk) = 1, |σ_min(F_kk) − 1 + √(λ_H/λ_W)/β| ≤ ``abs_tol``,
    F_kk of full rank n·d, F_kk' of rank 1 with σ_max within ``offdiag_rel_tol`` of the first-order
    prediction 2λ_H(1 − √(λ_Hλ_W))/β."""
    out = []
    for r in table.itertuples():
        tag = f"lambda_H={r.lambda_H:g}"
        out += [
            check(f"{tag}: sigma_max(F_kk)", r.diag_sigma_max, 1.0, 1e-9),
            check(f"{tag}: sigma_min(F_kk)", r.diag_sigma_min, r.pred_diag_sigma_min, abs_tol, kind="abs"),
            check(f"{tag}: rank(F_kk)", r.diag_rank, n * d, 0, kind="abs"),
            check(f"{tag}: rank(F_kk'), k != k'", r.offdiag_rank, 1, 0, kind="abs"),
            check(f"{tag}: sigma_max(F_kk'), first order in 1/beta", r.offdiag_sigma_max, r.pred_offdiag_sigma_max,
                  offdiag_rel_tol),
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


def jacobian_spectra_figure(
    table: pd.DataFrame, spectra: Mapping[float, np.ndarray], title: str | None = None
) -> Figure:
    """Fig. 1 of Tirer, Huang & Niles-Weed: singular values of a diagonal block F_kk, one colour per λ_H,
    with the predicted σ_min = 1 − √(λ_H/λ_W)/β (dashed) and σ_max = 1 (grey); right: σ_max of the
    off-diagonal blocks vs 2λ_H(1 − √(λ_Hλ_W))/β (``table``/``spectra`` from
    :func:`jacobian_study`)."""
    style()
    fig, (ax0, ax1) = plt.subplots(
        1, 2, figsize=(9.0, 3.4), constrained_layout=True, gridspec_kw={"width_ratios": [2, 1]}
    )
    colors = sns.color_palette("colorblind", len(spectra))
    for color, (lh, sv) in zip(colors, spectra.items(), strict=True):
        ax0.plot(np.arange(1, len(sv) + 1), sv, ".", color=color, ms=4, label=f"λ_H = {lh:g}")
        pred = float(table.loc[table.lambda_H == lh, "pred_diag_sigma_min"].iloc[0])
        ax0.axhline(pred, color=color, ls="--", lw=1)
    ax0.axhline(1.0, color="0.4", lw=1, label="σ_max = 1 (theory)")
    ax0.set_ylabel("σ_i(F_kk)")
    _finish(ax0, "diagonal block F_kk (dashed: predicted σ_min)", "index i")
    x = np.arange(len(table))
    ax1.bar(x - 0.2, table.offdiag_sigma_max, width=0.4, color="C0", label="implicit diff.")
    ax1.bar(x + 0.2, table.pred_offdiag_sigma_max, width=0.4, color="C1", label="2λ_H(1−√(λ_Hλ_W))/β")
    ax1.set_xticks(x, [f"{v:g}" for v in table.lambda_H])
    _finish(ax1, "σ_max(F_kk'), rank 1", "λ_H")
    if title:
        fig.suptitle(title)
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
