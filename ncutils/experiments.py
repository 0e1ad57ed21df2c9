"""Reusable experiment steps of the notebooks (one call per notebook step)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import theory
from .metrics import class_means_t, nc1_t, nc1_trace_t
from .models import RESNET_LAYERS, UFM, DeepUFM
from .perturbation import FlowResult, PerturbationModel, jacobian_blocks, layerwise_chain, monotonicity_checks
from .report import check
from .solve import GDResult, gradient_descent
from .ulpm import MaxMarginSolution

__all__ = [
    "best_run",
    "beta_sweep",
    "chain_checks",
    "class_mean_ranks",
    "deep_ufm_checks",
    "dufm_sweep_checks",
    "dufm_threshold_sweep",
    "flow_checks",
    "init_scale_study",
    "jacobian_checks",
    "jacobian_study",
    "level_ratio",
    "loglog_slope",
    "mean_gram_cosines",
    "mnist_chain",
    "random_features",
    "resnet_checks",
    "resnet_data",
    "resnet_final",
    "resnet_metric_table",
    "seed_table",
    "sweep_check",
    "ufm_checks",
    "ufm_threshold_sweep",
    "ulpm_checks",
]


def ufm_checks(gd: GDResult, opt: theory.UFMOptimum, tol: float = 1e-4, zero_tol: float = 1e-6,
               run: int = 0) -> list[dict[str, Any]]:
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
    out.append(check(f"{label}: {'NC2 to orthogonal' if etf else 'NC3 (ETF)'} = frame distance",
                     final(distinct, "H"), theory.frame_distance(m.K), tol))
    return out


def ufm_threshold_sweep(
    K: int, n: int, d: int, c_values: np.ndarray | list[float], *, loss: str = "mse", bias: bool = False,
    lr: float, steps: int, init_std: float, seed: int, device: Any = "auto", dtype: Any = "float64",
) -> pd.DataFrame:
    """GD across the threshold c = K√(nλ_Hλ_W) with λ_W = λ_H = c/(K√n), all points as one batched run.

    Returns one row per c: the GD and theory values of f and ‖μ_k‖² and their relative error.
    """
    c = np.asarray(c_values, dtype=float)
    if c.ndim != 1 or c.size < 1 or not np.all(c > 0):
        raise ValueError(f"c_values must be a non-empty 1-D list of positive numbers, got {c_values!r}")
    lam = tuple(float(x) for x in c / (K * math.sqrt(n)))
    model = UFM(K=K, n=n, d=d, lambda_W=lam, lambda_H=lam, loss=loss, bias=bias)  # type: ignore[arg-type]
    gd = gradient_descent(model, lr=lr, steps=steps, init_std=init_std, seed=seed, device=device,
                          dtype=dtype, record_every=steps, desc="threshold sweep")
    optimum = theory.ufm_ce_optimum if loss == "ce" else (
        lambda K, n, lw, lh: theory.ufm_mse_optimum(K, n, lw, lh, bias))
    th = [optimum(K, n, x, x) for x in lam]
    df = pd.DataFrame({
        "c": c, "lambda": lam,
        "objective_gd": gd.final("objective"), "objective_theory": [t.objective for t in th],
        "mean_norm_sq_gd": gd.final("mean_norm_sq", "H"), "mean_norm_sq_theory": [t.mean_norm_sq for t in th],
    })
    df["objective_rel_err"] = (df.objective_gd - df.objective_theory).abs() / df.objective_theory
    return df


def sweep_check(sweep: pd.DataFrame, tol: float = 1e-4) -> dict[str, Any]:
    """The worst point of a threshold sweep as one relative-error check of f."""
    worst = sweep.loc[sweep.objective_rel_err.idxmax()]
    return check(f"sweep: f at c = {worst.c:.3g} (worst of {len(sweep)})", worst.objective_gd,
                 worst.objective_theory, tol)


# --------------------------------------------------------------------------- #
# multi-layer UFMs (extended / deep UFM)
# --------------------------------------------------------------------------- #
def best_run(gd: GDResult) -> int:
    """Index of the run with the lowest final objective."""
    return int(np.argmin(gd.final("objective")))


def _deep(gd: GDResult) -> DeepUFM:
    if not isinstance(gd.model, DeepUFM):
        raise TypeError(f"expected a DeepUFM result, got {type(gd.model).__name__}")
    return gd.model


def deep_ufm_checks(gd: GDResult, opt: theory.DeepUFMOptimum, *, run: int | None = None, label: str = "",
                    tol: float = 1e-4, zero_tol: float = 1e-6, frame_tol: float = 1e-3,
                    frame_levels: list[int] | None = None) -> list[dict[str, Any]]:
    """GD-versus-theory checks of a multi-layer UFM run against its collapsed optimum (SPEC §3–§4).

    Relative errors (``tol``) for f*, the fit s (output means s·I), ‖H₁‖², every ‖W_l‖² and every
    level's ‖μ_k‖²; absolute errors for NC1 at every level (``zero_tol``) and, at the levels where
    the theory predicts an orthogonal frame (``frame_levels``; default: all levels of the linear
    model, levels 2…L of the ReLU model — the pre-ReLU Gram of H₁ is not determined), NC2 to the
    orthogonal frame and NC3 (``nc3_gram``; ``nc3_orthogonal`` for the classifier), ``frame_tol``.
    ``run``: which run to check (default :func:`best_run`; the seed table says how many runs got there).
    """
    m = _deep(gd)
    r = best_run(gd) if run is None else run
    if frame_levels is None:
        frame_levels = list(range(1 if m.activation == "linear" else 2, m.L + 1))
    pre = f"{label}: " if label else ""

    def final(metric: str, level: str = "model") -> float:
        return float(gd.final(metric, level)[r])

    out = [check(f"{pre}objective f*", final("objective"), opt.objective, tol),
           check(f"{pre}fit s (output means s I)", final("fit"), opt.s, tol),
           check(f"{pre}||H1||_F^2", final("norm_H1_sq"), opt.norm_H_sq, tol)]
    out += [check(f"{pre}||W{layer}||_F^2", final(f"norm_W{layer}_sq"), opt.norm_W_sq[layer - 1], tol)
            for layer in range(1, m.L + 1)]
    out += [check(f"{pre}||mu_k||^2 at H{layer}", final("mean_norm_sq", f"H{layer}"), opt.mean_norm_sq[layer - 1], tol)
            for layer in range(1, m.L + 1)]
    out += [check(f"{pre}NC1 at H{layer}", final("nc1", f"H{layer}"), 0.0, zero_tol, kind="abs")
            for layer in range(1, m.L + 1)]
    for layer in frame_levels:
        out.append(check(f"{pre}NC2 to orthogonal at H{layer}", final("nc2_orthogonal", f"H{layer}"), 0.0,
                         frame_tol, kind="abs"))
        nc3 = "nc3_orthogonal" if layer == m.L else "nc3_gram"
        out.append(check(f"{pre}NC3 ({nc3[4:]}) at H{layer}", final(nc3, f"H{layer}"), 0.0, frame_tol, kind="abs"))
    return out


def class_mean_ranks(gd: GDResult, rel_tol: float = 1e-3) -> pd.DataFrame:
    """Final singular values of every level's class means, per run and level, normalized by the
    largest, with the numerical rank (#{σ_k > rel_tol·σ_1}). Columns: ``run, level, k, sv, sv_rel, rank``."""
    h = gd.history
    last = h[(h.step == h.step.max()) & h.metric.astype(str).str.startswith("sv_")].copy()
    last["level"] = last.level.astype(str)
    last["k"] = last.metric.astype(str).str[3:].astype(int)
    last = last.rename(columns={"value": "sv"})[["run", "level", "k", "sv"]].sort_values(["run", "level", "k"])
    top = last.groupby(["run", "level"]).sv.transform("max")
    last["sv_rel"] = last.sv / top
    last["rank"] = last.assign(big=last.sv_rel > rel_tol).groupby(["run", "level"]).big.transform("sum")
    return last.reset_index(drop=True)


def seed_table(gd: GDResult, opt: theory.DeepUFMOptimum, reach_tol: float = 1e-3,
               rank_tol: float = 1e-3) -> pd.DataFrame:
    """One row per run: final objective, its relative error to f*, whether it got there
    (``reach_tol``), whether it went *below* f* (a lower, non-collapsed solution), the largest
    NC1 over levels and the smallest class-mean rank over levels."""
    m = _deep(gd)
    f = gd.final("objective")
    rel = (f - opt.objective) / opt.objective
    nc1 = np.max([gd.final("nc1", f"H{layer}") for layer in range(1, m.L + 1)], axis=0)
    ranks = class_mean_ranks(gd, rank_tol).groupby("run")["rank"].min().to_numpy()
    status = np.where(np.abs(rel) <= reach_tol, "at f*", np.where(rel < 0, "below f*", "above f*"))
    return pd.DataFrame({"run": np.arange(len(f)), "objective": f, "rel_err": rel, "status": status,
                         "max_nc1": nc1, "min_rank": ranks})


def level_ratio(gd: GDResult, metric: str, upper: str, lower: str, run: int | None = None,
                floor: float = 1e-20) -> pd.Series:
    """``metric(upper) / metric(lower)`` along GD (per recorded step, run ``run`` or the median over runs).

    Steps where either value is below ``floor`` are dropped: there both are round-off (NC1 of a
    collapsed float64 run is ~1e-30) and their ratio means nothing.
    """
    h = gd.history
    sel = h[h.metric == metric]
    wide = sel.pivot_table(index=["step", "run"], columns="level", values="value", observed=True)
    wide = wide[(wide[upper] >= floor) & (wide[lower] >= floor)]
    ratio = (wide[upper] / wide[lower]).rename(f"{metric}({upper})/{metric}({lower})")
    if run is not None:
        return ratio.xs(run, level="run")
    return ratio.groupby(level="step").median()


def mean_gram_cosines(gd: GDResult) -> pd.DataFrame:
    """Final pairwise cosines cos(μ_k, μ_k') of every level's (uncentred) class means, per run.

    Columns ``run, level, pair, cosine`` — e.g. to show that the ReLU EUFM's H₁ Gram is not fixed
    across seeds (SPEC §3) while H₂'s is the identity.
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
                rows.append({"run": r, "level": f"H{layer}", "pair": f"{int(iu[0, j]) + 1}-{int(iu[1, j]) + 1}",
                             "cosine": float(cos[r, j])})
    return pd.DataFrame(rows)


def init_scale_study(model: DeepUFM, scales: list[float] | np.ndarray, *, seeds: int, lr: float, steps: int,
                     seed: int = 0, device: Any = "auto", dtype: Any = "float64",
                     record_every: int | None = None) -> tuple[GDResult, pd.DataFrame]:
    """GD from initializations of several scales × ``seeds`` seeds, as one batched run.

    Run ``i·seeds + j`` starts from scale ``scales[i]`` times the j-th standard-normal draw (the same
    draws for every scale). Returns the result and a table ``run, init_std, seed``.
    """
    sc = np.asarray(scales, dtype=float)
    if sc.ndim != 1 or sc.size < 1 or not np.all(np.isfinite(sc) & (sc > 0)):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales!r}")
    if model.runs() is not None:
        raise ValueError("init_scale_study needs scalar hyperparameters (the runs are the scales × seeds)")
    base = model.init(seeds, 1.0, torch.Generator().manual_seed(int(seed)), torch.float64)
    init = {k: torch.cat([float(x) * v for x in sc]) for k, v in base.items()}
    gd = gradient_descent(model, lr=lr, steps=steps, runs=len(sc) * seeds, init=init, device=device,
                          dtype=dtype, record_every=record_every, desc="init scales")
    table = pd.DataFrame({"run": np.arange(len(sc) * seeds), "init_std": np.repeat(sc, seeds),
                          "seed": np.tile(np.arange(seeds), len(sc))})
    return gd, table


def dufm_threshold_sweep(
    K: int, n: int, d: int, ratios: np.ndarray | list[float], *, L: int = 2, activation: str = "relu",
    lr: float, steps: int, init_std: float, seeds: int = 1, seed: int = 0, device: Any = "auto",
    dtype: Any = "float64",
) -> pd.DataFrame:
    """GD across the existence threshold of the multi-layer UFM, all points × seeds as one batched run.

    All λ equal to λ; ``ratios`` = (Km/2)q / threshold (1 = the threshold: K q = 2^{−4/3} for L = 2),
    so λ = (2 ratio·threshold/(K m))·n^{−1/m}. Returns one row per point: GD (the seed with the lowest
    objective — the theory is about the *global* minimizer, and single ReLU runs can stop at partial
    solutions — and how many seeds reached the global value within 1e-4) and theory (global optimum,
    and the metastable collapsed branch that survives past the threshold) for f and the last level's ‖μ_k‖².
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    r = np.asarray(ratios, dtype=float)
    if r.ndim != 1 or r.size < 1 or not np.all(r > 0):
        raise ValueError(f"ratios must be a non-empty 1-D list of positive numbers, got {ratios!r}")
    m_ = L + 1
    q = 2 * r * theory.dufm_threshold(m_) / (K * m_)
    lam = tuple(float(x) for x in q / n ** (1 / m_))  # q = (n λ^m)^{1/m} = n^{1/m} λ
    per_run = tuple(x for x in lam for _ in range(seeds))  # point i, seed j → run i·seeds + j
    model = DeepUFM(K=K, n=n, d=d, L=L, activation=activation,  # type: ignore[arg-type]
                    lambda_W=(per_run,) * L, lambda_H=per_run)
    gd = gradient_descent(model, lr=lr, steps=steps, init_std=init_std, seed=seed, device=device,
                          dtype=dtype, record_every=steps, desc="threshold sweep")
    rows = []
    for i, x in enumerate(lam):
        opt = theory.dufm_optimum(K, n, x, [x] * L)
        meta = theory.dufm_optimum(K, n, x, [x] * L, branch="collapsed")
        rows.append({"ratio": r[i], "lambda": x, "objective_theory": opt.objective,
                     "objective_metastable": meta.objective if meta.collapsed else np.nan,
                     "mean_norm_sq_theory": opt.mean_norm_sq[-1],
                     "mean_norm_sq_metastable": meta.mean_norm_sq[-1] if meta.collapsed else np.nan})
    df = pd.DataFrame(rows)
    f = gd.final("objective").reshape(len(lam), seeds)
    best = f.argmin(axis=1)
    df["objective_gd"] = f[np.arange(len(lam)), best]
    df["mean_norm_sq_gd"] = gd.final("mean_norm_sq", f"H{L}").reshape(len(lam), seeds)[np.arange(len(lam)), best]
    df["seeds_at_theory"] = (np.abs(f / df.objective_theory.to_numpy()[:, None] - 1) <= 1e-4).sum(axis=1)
    df["objective_rel_err"] = (df.objective_gd - df.objective_theory).abs() / df.objective_theory
    return df


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
        check(f"sweep: GD below the global f* (worst of {len(sweep)} points)", max(0.0, float(-rel.min())), 0.0,
              1e-9, kind="abs"),
        check(f"sweep: f at ratio {first.ratio:.3g} (collapsed)", first.objective_gd, first.objective_theory, tol),
        check(f"sweep: f at ratio {last.ratio:.3g} (H = 0)", last.objective_gd, last.objective_theory, tol),
    ]


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
    out = [check(f"Thm 3.1: {r.claim} (violations in {r.steps} steps)", r.violations, 0, 0, kind="abs")
           for r in mono.itertuples()]
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
        rows.append({"beta": float(beta), "nc1": float(nc1_t(r.H, y, model.K)),
                     "nc1_trace": float(nc1_trace_t(r.H, y, model.K)), "nc1_trace_H0": base,
                     "grad_norm": r.grad_norm, "converged": r.converged})
    return pd.DataFrame(rows)


def jacobian_study(K: int, n: int, d: int, lambda_W: float, lambda_Hs: list[float], beta: float,
                   seed: int = 0) -> tuple[pd.DataFrame, dict[float, np.ndarray]]:
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
        rows.append({"lambda_H": float(lh), "moved": float((star.H - H0).norm()),
                     "diag_sigma_max": float(diag.sigma_max.max()), "diag_sigma_min": float(diag.sigma_min.min()),
                     "diag_sigma_min_spread": float(diag.sigma_min.max() - diag.sigma_min.min()),
                     "diag_rank": int(diag["rank"].min()), "offdiag_rank": int(off["rank"].max()),
                     "offdiag_sigma_max": float(off.sigma_max.max()),
                     "pred_diag_sigma_min": pred.diag_sigma_min, "pred_offdiag_sigma_max": pred.offdiag_sigma_max,
                     "diag_multiplicities": diag.multiplicities.iloc[0]})
    return pd.DataFrame(rows), spectra


def jacobian_checks(table: pd.DataFrame, n: int, d: int, abs_tol: float = 1e-4,
                    offdiag_rel_tol: float = 0.01) -> list[dict[str, Any]]:
    """Theorem 4.2's claims per λ_H: σ_max(F_kk) = 1, |σ_min(F_kk) − 1 + √(λ_H/λ_W)/β| ≤ ``abs_tol``,
    F_kk of full rank n·d, F_kk' of rank 1 with σ_max within ``offdiag_rel_tol`` of the first-order
    prediction 2λ_H(1 − √(λ_Hλ_W))/β."""
    out = []
    for r in table.itertuples():
        tag = f"lambda_H={r.lambda_H:g}"
        out += [check(f"{tag}: sigma_max(F_kk)", r.diag_sigma_max, 1.0, 1e-9),
                check(f"{tag}: sigma_min(F_kk)", r.diag_sigma_min, r.pred_diag_sigma_min, abs_tol, kind="abs"),
                check(f"{tag}: rank(F_kk)", r.diag_rank, n * d, 0, kind="abs"),
                check(f"{tag}: rank(F_kk'), k != k'", r.offdiag_rank, 1, 0, kind="abs"),
                check(f"{tag}: sigma_max(F_kk'), first order in 1/beta", r.offdiag_sigma_max,
                      r.pred_offdiag_sigma_max, offdiag_rel_tol)]
    return out


def mnist_chain(model: PerturbationModel, betas: list[float], *, layers: int, data_root: str, per_class: int,
                width: int, epochs: int, seed: int = 0, fake: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The layer-wise argument on real features: train a 784→width→width→10 ReLU MLP on a balanced MNIST
    subset (``per_class`` digits per class, read by torchvision from ``data_root``), take its first hidden
    layer's features as H₀ (scaled so that the mean squared row norm equals the collapsed ‖μ_k‖² of the
    model), and chain ``layers`` minimizers H_{l+1} = argmin f(·; H_l) for each β.
    ``fake``: write and read a synthetic MNIST in the real format first (tests, CI).
    Returns the chain table (β, layer, nc1, …) and the MLP's training history."""
    from .data import load_dataset, write_fake_mnist
    from .train import mlp_features, train_mlp

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
            out.append(check(f"{data} chain beta={beta:g}: layers where {metric} does not decrease "
                             f"(last/H0 = {v[-1] / v[0]:.3g})", int((np.diff(v) >= 0).sum()), 0, 0, kind="abs"))
    return out


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


# --------------------------------------------------------------------------- #
# §7 ResNet18 on real data (notebook 07)
# --------------------------------------------------------------------------- #
def resnet_data(dataset: str, data_root: str, per_class: int, test_per_class: int = 0, seed: int = 0,
                fake: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced training subset and test set, normalized, MNIST zero-padded to 32×32 (the CIFAR stem).
    ``test_per_class`` 0: the whole test split. ``fake``: write and read tiny files in the dataset's real
    format under ``data_root`` first (tests, CI)."""
    from .data import load_dataset, write_fake_cifar10, write_fake_mnist

    if fake:
        writer = write_fake_mnist if dataset == "mnist" else write_fake_cifar10
        writer(data_root, per_class=per_class, test_per_class=max(test_per_class, 2), seed=seed)
    Xtr, ytr = load_dataset(dataset, data_root, per_class=per_class, seed=seed, pad_to=32, verify=not fake)
    Xte, yte = load_dataset(dataset, data_root, train=False, per_class=test_per_class or None, seed=seed, pad_to=32,
                            verify=not fake)
    return Xtr, ytr, Xte, yte


def _by_depth(layers: Any) -> list[str]:
    """Layer names in network order (stem, layer1, …), each pooled level before its flattened one."""
    return sorted(layers, key=lambda name: (RESNET_LAYERS.index(name.removesuffix("_flat")), name.endswith("_flat")))


def resnet_final(result: Any) -> pd.DataFrame:
    """Final per-layer metrics of a :func:`ncutils.train.train_resnet` run: one row per layer, by depth."""
    h = result.history
    last = h[(h.epoch == h[h.metric == "nc1"].epoch.max()) & (h.layer != "model")]
    table = last.pivot(index="layer", columns="metric", values="value")
    return table.loc[_by_depth(table.index)]


def resnet_metric_table(result: Any, metric: str = "nc1") -> pd.DataFrame:
    """``metric`` per layer (rows, by depth) at the first and the last measured epoch (columns)."""
    t = result.history[result.history.metric == metric].pivot(index="layer", columns="epoch", values="value")
    return t.loc[_by_depth(t.index)].iloc[:, [0, -1]]


def resnet_checks(result: Any) -> list[dict[str, Any]]:
    """The real-network claims of SPEC §7 on this run: NC1 of the penultimate features (GAP of ``layer4``)
    falls from the first to the last measured epoch, and at the last epoch the penultimate features are the
    most collapsed of all tapped (pooled) layers (earlier layers with an NC1 as small: 0 expected). How NC1
    orders the earlier layers is printed, not checked: stem and layer1 can swap in small runs."""
    h = result.history
    nc1 = h[h.metric == "nc1"].pivot(index="epoch", columns="layer", values="value")
    if "layer4" not in nc1:
        return []
    earlier = [name for name in RESNET_LAYERS[:-1] if name in nc1.columns]
    last = nc1.iloc[-1]
    return [
        check("penultimate NC1: last / first measured epoch (< 1)", nc1.layer4.iloc[-1] / nc1.layer4.iloc[0],
              0.0, 1.0, kind="abs"),
        check(f"earlier layers ({', '.join(earlier)}) with NC1 <= the penultimate's at the last epoch",
              int((last[earlier] <= last["layer4"]).sum()), 0, 0, kind="abs"),
    ]
