"""Steps shared by the multi-layer UFM studies (notebooks 02–04).

Checks against the collapsed optimum, seed tables, init-scale studies.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from .. import theory
from .._validate import check_floats
from ..models import DeepUFM
from ..plot import finish_axes as _finish
from ..plot import style
from ..report import check, check_id
from ..solve import GDResult, gradient_descent
from ._common import POSITIVE, Rule, best_run, positive_list

#: The steps every multi-layer study (notebooks 02–04) re-exports: ``from ._multilayer import *``.
__all__ = [
    "best_run",
    "class_mean_ranks",
    "continued_descent",
    "continued_descent_check",
    "deep_ufm_checks",
    "depth_contrast_checks",
    "depth_ratio_table",
    "depth_ratios",
    "depth_ratios_figure",
    "init_scale_study",
    "init_scales_figure",
    "monotone_objective_check",
    "polish_checks",
    "polish_limit_checks",
    "polish_limits",
    "polish_summary",
    "polished_geometry",
    "product_alignment",
    "rank_aware_nc1",
    "seed_geometry_checks",
    "seed_table",
]

#: Parameters of the extended UFM shared by notebooks 02 and 03.
MULTILAYER_RULES: dict[str, Rule] = {
    "lambda_W1": POSITIVE,
    "lambda_W2": POSITIVE,
    "lambda_H1": POSITIVE,
    "init_scales": Rule(list, check=positive_list("initialization stds")),
}


def _deep(gd: GDResult) -> DeepUFM:
    if not isinstance(gd.model, DeepUFM):
        raise TypeError(f"expected a DeepUFM result, got {type(gd.model).__name__}")
    return gd.model


def deep_ufm_checks(gd: GDResult, opt: theory.DeepUFMOptimum, *, run: int | None = None, label: str = "",
                    tol: float = 1e-4, zero_tol: float = 1e-6, frame_tol: float = 1e-3,
                    frame_levels: list[int] | None = None) -> list[dict[str, Any]]:
    """GD-versus-theory checks of a multi-layer UFM run against its collapsed optimum
    (Tirer & Bruna 2022, Thms 4.1–4.2; Súkeník et al. 2023, Thm 3).

    Relative errors (``tol``) for f*, the fit s (output means s·I), ‖H₁‖², every ‖W_l‖² and every
    level's ‖μ_k‖²; absolute errors for NC1 at every level (``zero_tol``) and, at the levels where
    the theory predicts an orthogonal frame (``frame_levels``; default: all levels of the linear
    model, levels 2…L of the ReLU model — the pre-ReLU Gram of H₁ is not determined), NC2 to the
    orthogonal frame and NC3 (``nc3_gram``; ``nc3_orthogonal`` for the classifier), ``frame_tol``.
    ``run``: which run to check (default :func:`best_run`; the seed table says how many runs got there).
    """
    m = _deep(gd)
    r = best_run(gd) if run is None else run
    frame_levels = _frame_levels(m, frame_levels)
    pre = f"{label}: " if label else ""

    def final(metric: str, level: str = "model") -> float:
        return float(gd.final(metric, level)[r])

    out = [
        check(f"{pre}objective f*", final("objective"), opt.objective, tol),
        check(f"{pre}fit s (output means s I)", final("fit"), opt.s, tol),
        check(f"{pre}||H1||_F^2", final("norm_H1_sq"), opt.norm_H_sq, tol),
    ]
    out += [
        check(f"{pre}||W{layer}||_F^2", final(f"norm_W{layer}_sq"), opt.norm_W_sq[layer - 1], tol)
        for layer in range(1, m.L + 1)
    ]
    out += [
        check(f"{pre}||mu_k||^2 at H{layer}", final("mean_norm_sq", f"H{layer}"), opt.mean_norm_sq[layer - 1], tol)
        for layer in range(1, m.L + 1)
    ]
    out += [
        check(f"{pre}NC1 at H{layer}", final("nc1", f"H{layer}"), 0.0, zero_tol, kind="abs")
        for layer in range(1, m.L + 1)
    ]
    for layer in frame_levels:
        out.append(
            check(
                f"{pre}NC2 to orthogonal at H{layer}", final("nc2_orthogonal", f"H{layer}"), 0.0, frame_tol, kind="abs"
            )
        )
        nc3 = "nc3_orthogonal" if layer == m.L else "nc3_gram"
        out.append(check(f"{pre}NC3 ({nc3[4:]}) at H{layer}", final(nc3, f"H{layer}"), 0.0, frame_tol, kind="abs"))
    return out


def class_mean_ranks(gd: GDResult, rel_tol: float = 1e-3) -> pd.DataFrame:
    """Final singular values of every level's class means, per run and level, normalized by the
    largest, with the numerical rank (#{σ_k > rel_tol·σ_1}). Columns: ``run, level, k, sv, sv_rel, rank``.

    σ are those of the *uncentred* means (the recorded ``sv_*``): the rank is
    ``ncutils.metrics.class_mean_rank(H, y, rel_tol, centred=False)``. The rank-aware ``nc1(rank_tol=…)`` and
    ``class_mean_rank``'s default cut the *centred* means, whose rank is one less for an orthogonal frame."""
    h = gd.history
    last = h[(h.step == h.step.max()) & h.metric.astype(str).str.startswith("sv_")].copy()
    last["level"] = last.level.astype(str)
    last["k"] = last.metric.astype(str).str[3:].astype(int)
    last = last.rename(columns={"value": "sv"})[["run", "level", "k", "sv"]].sort_values(["run", "level", "k"])
    top = last.groupby(["run", "level"]).sv.transform("max")
    last["sv_rel"] = last.sv / top
    last["rank"] = last.assign(big=last.sv_rel > rel_tol).groupby(["run", "level"]).big.transform("sum")
    return last.reset_index(drop=True)


def _frame_levels(m: DeepUFM, frame_levels: list[int] | None) -> list[int]:
    """Levels where the theory predicts an orthogonal frame: all of the linear model, 2…L of the ReLU model."""
    return list(range(1 if m.activation == "linear" else 2, m.L + 1)) if frame_levels is None else frame_levels


def seed_table(
    gd: GDResult, opt: theory.DeepUFMOptimum, reach_tol: float = 1e-3, rank_tol: float = 1e-3
) -> pd.DataFrame:
    """One row per run: final objective, its relative error to f*, whether it got there
    (``reach_tol``), whether it went *below* f* (a lower, non-collapsed solution), the largest
    NC1 over levels, the smallest class-mean rank over levels, and every level's geometry:
    ``nc1_H{l}``, ``nc2_H{l}`` (to the orthogonal frame) and ``nc3_H{l}`` (``nc3_gram`` below the top level,
    ``nc3_orthogonal`` of the classifier at the top); for the linear model also ``nc3_prodW_H1``
    (:func:`product_alignment`, the level-1 statement W_L⋯W₁ ∝ M₁ᵀ)."""
    m = _deep(gd)
    f = gd.final("objective")
    rel = (f - opt.objective) / opt.objective
    nc1 = np.max([gd.final("nc1", f"H{layer}") for layer in range(1, m.L + 1)], axis=0)
    ranks = class_mean_ranks(gd, rank_tol).groupby("run")["rank"].min().to_numpy()
    status = np.where(np.abs(rel) <= reach_tol, "at f*", np.where(rel < 0, "below f*", "above f*"))
    cols: dict[str, Any] = {"run": np.arange(len(f)), "objective": f, "rel_err": rel, "status": status,
                            "max_nc1": nc1, "min_rank": ranks}
    for layer in range(1, m.L + 1):
        lv = f"H{layer}"
        cols[f"nc1_{lv}"] = gd.final("nc1", lv)
        cols[f"nc2_{lv}"] = gd.final("nc2_orthogonal", lv)
        cols[f"nc3_{lv}"] = gd.final("nc3_orthogonal" if layer == m.L else "nc3_gram", lv)
    if m.activation == "linear":
        cols["nc3_prodW_H1"] = product_alignment(gd)
    return pd.DataFrame(cols)


def seed_geometry_checks(gd: GDResult, table: pd.DataFrame, *, label: str = "", zero_tol: float = 1e-6,
                         frame_tol: float = 1e-3, frame_levels: list[int] | None = None,
                         required: int = 1) -> list[dict[str, Any]]:
    """How many of the runs that reached f* (``status == "at f*"`` in :func:`seed_table`) also show each
    property of the collapsed optimum: NC1 < ``zero_tol`` at every level, and at each frame level NC2 to the
    orthogonal frame and NC3 < ``frame_tol`` (Tirer & Bruna 2022, Thm 4.1; Súkeník et al. 2023, Thm 3).
    One :func:`~ncutils.report.count_check` per property ("7/10 at f*: NC2(H2) < 1e-3"), passing when at least
    ``required`` runs show it; the first check counts the runs at f* among all runs. For the linear model also
    the level-1 statement of Tirer & Bruna 2022, Thm 4.1 (W_L⋯W₁ ∝ M₁ᵀ, :func:`product_alignment`)."""
    from ..report import check_id, count_check

    m = _deep(gd)
    pre = f"{label}: " if label else ""
    at = table[table.status == "at f*"]
    n_at = len(at)
    out = [count_check(f"{pre}runs at f* (of all seeds)", n_at, len(table), required)]
    if n_at == 0:
        return out
    out.append(count_check(f"{pre}runs at f* with NC1 < {zero_tol:g} at every level",
                           int((at[[f"nc1_H{lv}" for lv in range(1, m.L + 1)]] < zero_tol).all(axis=1).sum()),
                           n_at, min(required, n_at)))
    for layer in _frame_levels(m, frame_levels):
        for what in ("nc2", "nc3"):
            out.append(count_check(f"{pre}runs at f* with {what.upper()}(H{layer}) < {frame_tol:g}",
                                   int((at[f"{what}_H{layer}"] < frame_tol).sum()), n_at, min(required, n_at)))
    if "nc3_prodW_H1" in at:
        out.append(count_check(f"{pre}runs at f* with NC3(W{m.L}...W1 vs M1) < {frame_tol:g}",
                               int((at["nc3_prodW_H1"] < frame_tol).sum()), n_at, min(required, n_at),
                               id=f"{check_id(pre + 'runs at f* with NC3 product')}"))
    return out


def _level_geometry(m: DeepUFM, p: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """NC1, NC2 (orthogonal frame) and NC3 (``nc3_gram`` below the top level, ``nc3_orthogonal`` at it) of every
    level of ``p``, per run: the metric code GD records (:func:`ncutils.metrics.nc_metrics_t` on ``m.levels``)."""
    from ..metrics import nc_metrics_t

    with torch.no_grad():
        p = {k: v.to(torch.float64) for k, v in p.items()}
        y = m.labels(p["H1"].device)
        out = {}
        for layer, (name, lev) in enumerate(m.levels(p).items(), start=1):
            met = nc_metrics_t(lev.H, y, m.K, W=lev.W, b=lev.b, A=lev.A)
            nc3 = "nc3_orthogonal" if layer == m.L else "nc3_gram"
            out[name] = {"nc1": met["nc1"].cpu().numpy(), "nc2": met["nc2_orthogonal"].cpu().numpy(),
                         "nc3": met[nc3].cpu().numpy()}
        return out


def class_mean_problem(m: DeepUFM, p: dict[str, torch.Tensor]) -> tuple[DeepUFM, dict[str, torch.Tensor]]:
    """The model restricted to class-collapsed features (NC1: every H₁ row equal to its class mean) and the
    parameters ``p`` projected onto it: a :class:`DeepUFM` with n = 1 and λ_{H₁}·n (its objective at the means
    equals ``m``'s objective at the collapsed point), H₁ replaced by the K class means. A critical point of the
    restriction is one of ``m`` (the within-class permutations are symmetries: Palais' principle of symmetric
    criticality), with K·d₁ instead of N·d₁ feature parameters."""
    from ..metrics import class_means_t

    lam_h = m.lambda_H
    lam_h = tuple(v * m.n for v in lam_h) if isinstance(lam_h, tuple) else lam_h * m.n
    reduced = DeepUFM(K=m.K, n=1, d=m.d, L=m.L, activation=m.activation, lambda_W=m.lambda_W, lambda_H=lam_h,
                      name=f"{m.name}_means")
    H1 = p["H1"].to(torch.float64)
    return reduced, {**{k: v.to(torch.float64) for k, v in p.items()},
                     "H1": class_means_t(H1, m.labels(H1.device), m.K)}


def polished_geometry(gd: GDResult, opt: theory.DeepUFMOptimum, runs: list[int] | None = None, *,
                      reach_tol: float = 1e-3, means: bool = False, result: bool = False,
                      **polish: Any) -> pd.DataFrame | tuple[pd.DataFrame, Any]:
    """Certify the limit of GD where the objective converged but the geometry did not: polish the runs at f*
    (|f/f* − 1| ≤ ``reach_tol``; or ``runs``) with :func:`ncutils.solve.newton_polish` (``polish``: its
    keyword arguments; ``max_iter`` 200 by default: on a face with nearly flat or negative directions the damped
    iteration can converge only linearly) and tabulate the geometry of GD's endpoint and of the polished critical point.

    One row per polished run: ``run, objective_before/after, rel_err_before/after`` (to f*), ``grad_norm_before/after``
    (the model's closed-form gradient; at a ReLU kink it takes the one-sided derivative, so it stays O(|G|)
    there), ``residual_after`` (KKT residual on the face of pinned ReLU kinks), ``kinks, kinks_certified, converged,
    iterations, flat, negative, gap, seconds`` and per level ``nc1_H{l}_before/after``, ``nc2_H{l}_before/after``
    (orthogonal frame) and ``nc3_H{l}_before/after`` (``nc3_gram`` below the top level, ``nc3_orthogonal`` at it).

    ``means=True``: polish the class-mean problem (:func:`class_mean_problem`, K·d₁ instead of N·d₁ feature
    parameters: a few seconds per run instead of minutes) and put every H₁ row at its polished class mean —
    valid where GD's endpoint has NC1 at every level (its within-class spread is then lost; ``nc1_H1_before``
    says how large it was), and the spectrum is that of the class-symmetric subspace only. ``result``: also
    return the :class:`~ncutils.solve.PolishResult` (with ``means``, of the reduced problem), with the
    polished parameters (in ``m``'s layout, ``.params`` of the returned result are replaced).
    """
    from ..solve import newton_polish

    polish.setdefault("max_iter", 200)
    m = _deep(gd)
    p = {k: v.detach().to("cpu", torch.float64) for k, v in gd.params.items()}
    def grad_norm(q: dict[str, torch.Tensor]) -> np.ndarray:
        g = m.gradient(q)
        return torch.sqrt(sum(v.square().flatten(1).sum(1) for v in g.values())).numpy()  # type: ignore[arg-type]

    with torch.no_grad():
        f, g0 = m.objective(p).numpy(), grad_norm(p)
    if runs is None:
        runs = [int(r) for r in np.flatnonzero(np.abs(f / opt.objective - 1) <= reach_tol)]
    if not runs:
        raise ValueError(f"no run reached f* = {opt.objective:.6g} to reach_tol = {reach_tol:g}")
    if means:
        reduced, pr = class_mean_problem(m, p)
        res = newton_polish(reduced, pr, runs=runs, **polish)
        labels = m.labels()
        res.params = {**res.params, "H1": res.params["H1"][:, labels]}
    else:
        res = newton_polish(m, p, runs=runs, **polish)
    with torch.no_grad():
        f_after, g1 = m.objective(res.params).numpy(), grad_norm(res.params)
    before, after = _level_geometry(m, p), _level_geometry(m, res.params)
    t = res.table.set_index("run").loc[runs]
    cols: dict[str, Any] = {"run": runs, "objective_before": f[runs], "objective_after": f_after[runs],
                            "rel_err_before": f[runs] / opt.objective - 1,
                            "rel_err_after": f_after[runs] / opt.objective - 1,
                            "grad_norm_before": g0[runs], "grad_norm_after": g1[runs],
                            "residual_after": t.residual_after.to_numpy()}
    for c in ("kinks", "kinks_certified", "converged", "iterations", "flat", "negative", "gap", "seconds"):
        if c in t:
            cols[c] = t[c].to_numpy()
    for name in before:
        for what in ("nc1", "nc2", "nc3"):
            cols[f"{what}_{name}_before"] = before[name][what][runs]
            cols[f"{what}_{name}_after"] = after[name][what][runs]
    table = pd.DataFrame(cols)
    return (table, res) if result else table


def collapsed_params(model: DeepUFM, opt: theory.DeepUFMOptimum, runs: int = 1,
                     dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """The collapsed point of ``opt`` (either branch of :func:`ncutils.theory.dufm_optimum`) as parameters of
    ``model``, ``runs`` copies: H₁ rows a₁e_{y_i}, W_l = (a_{l+1}/a_l)·P_K (P_K keeps the first K coordinates)
    for l < L and W_L = (s/a_L)[I_K 0]: level means a_l e_k (a non-negative orthogonal frame, left unchanged by
    the ReLU), output means s·I (Súkeník, Mondelli & Lampert 2023, Thm 3). ``H1 (S, N, d)``, ``W_l (S, d, d)``,
    ``W_L (S, K, d)``. Its objective is ``opt.objective`` when every factor's norm is balanced as there."""
    K, d, L = model.K, model.d, model.L
    if d < K:
        raise ValueError(f"parameter d must be >= K = {K} for an orthogonal frame, got {d}")
    a = [float(np.sqrt(x)) for x in opt.mean_norm_sq]
    E = torch.zeros(K, d, dtype=dtype)
    E[:, :K] = torch.eye(K, dtype=dtype)
    P = torch.zeros(d, d, dtype=dtype)
    P[:K, :K] = torch.eye(K, dtype=dtype)
    p = {"H1": (a[0] * E[model.labels()]).expand(runs, -1, -1).clone()}
    for layer in range(1, L):
        p[f"W{layer}"] = (a[layer] / a[layer - 1] * P).expand(runs, -1, -1).clone()
    p[f"W{L}"] = (opt.s / a[-1] * E).expand(runs, -1, -1).clone()
    return p


def rank_aware_nc1(gd: GDResult, rank_tol: float = 1e-3) -> pd.DataFrame:
    """Final NC1 of every level and run three ways: ``nc1`` = tr(Σ_W Σ_B^†)/K with the default pseudo-inverse,
    ``nc1_rank`` with only the directions of the centred means above ``rank_tol``·σ₁
    (:func:`ncutils.metrics.nc1_t`), and ``nc1_trace`` = tr Σ_W / tr Σ_B; ``rank`` counts those directions
    (:func:`ncutils.metrics.class_mean_rank`'s rule). Near-low-rank means make ``nc1`` weigh directions of tiny
    σ_k by 1/σ_k²; the other two do not. Columns ``run, level, rank, nc1, nc1_rank, nc1_trace``."""
    from ..metrics import centred_means_t, class_means_t, nc1_t, nc1_trace_t

    m = _deep(gd)
    with torch.no_grad():
        feats, _, _ = m.forward({k: v.to(torch.float64) for k, v in gd.params.items()})
        y = m.labels(feats[0].device)
        rows = []
        for layer, H in enumerate(feats, start=1):
            M = class_means_t(H, y, m.K)
            sv = torch.linalg.svdvals(centred_means_t(M))
            rank = (sv > rank_tol * sv[..., :1]).sum(-1)
            a, b, c = nc1_t(H, y, m.K), nc1_t(H, y, m.K, rank_tol=rank_tol), nc1_trace_t(H, y, m.K)
            for r in range(H.shape[0]):
                rows.append({"run": r, "level": f"H{layer}", "rank": int(rank[r]), "nc1": float(a[r]),
                             "nc1_rank": float(b[r]), "nc1_trace": float(c[r])})
    return pd.DataFrame(rows)


def polish_checks(table: pd.DataFrame, level: str, *, label: str = "", frame_tol: float = 1e-8,
                  rel_tol: float = 1e-10) -> list[dict[str, Any]]:
    """What polishing (:func:`polished_geometry`) certifies: of the polished runs, how many converged to a
    critical point (kinks certified) at f* (relative ``rel_tol``) with NC2 and NC3 at ``level`` below
    ``frame_tol`` — the orthogonal frame is the limit GD was approaching (count checks, every polished run)."""
    from ..report import count_check

    pre = f"{label}: " if label else ""
    n = len(table)
    ok = table.converged.astype(bool) & table.kinks_certified.astype(bool) & (table.rel_err_after.abs() <= rel_tol)
    frame = ok & (table[f"nc2_{level}_after"] < frame_tol) & (table[f"nc3_{level}_after"] < frame_tol)
    return [
        count_check(f"{pre}polished runs at a certified critical point with f = f* (rel {rel_tol:g})", int(ok.sum()),
                    n, n, id=check_id(f"{pre}polished certified")),
        count_check(f"{pre}polished runs with NC2({level}) and NC3({level}) < {frame_tol:g}", int(frame.sum()), n, n,
                    id=check_id(f"{pre}polished frame {level}")),
    ]


#: What :func:`polish_limits` calls the critical point a polished run converged to (or that it did not).
POLISH_LIMITS = ("DNC frame", "f*, frame off", "between f* and GD", "above GD's objective", "not converged")


def polish_limits(table: pd.DataFrame, levels: list[str], *, frame_tol: float = 1e-8,
                  rel_tol: float = 1e-10) -> pd.Series:
    """Per row of :func:`polished_geometry`, where the polish ended (one of :data:`POLISH_LIMITS`):

    * ``"not converged"``: no certified critical point within the iteration budget (KKT residual above ``tol``,
      an active-set change left, or kinks not certified);
    * ``"DNC frame"``: a certified critical point at f* (relative ``rel_tol``) with NC2 and NC3 below
      ``frame_tol`` at every level of ``levels`` — the collapsed optimum is the limit GD was approaching;
    * ``"f*, frame off"``: at f* but without that geometry (another minimizer at the optimal value);
    * ``"above GD's objective"``: a certified critical point whose objective is above that of GD's own endpoint
      (``objective_after > objective_before``): not the limit of GD, whose objective does not rise at a stable
      step size — the polish left GD's basin (e.g. the face of pinned kinks chosen from GD's endpoint is wrong);
    * ``"between f* and GD"``: a certified critical point above f* and below GD's objective — another critical
      point GD may be approaching. ``(runs,)`` of str, index as ``table``."""
    ok = table.converged.astype(bool) & table.kinks_certified.fillna(True).astype(bool)
    at = table.rel_err_after.abs() <= rel_tol
    frame = pd.Series(True, index=table.index)
    for lv in levels:
        frame &= (table[f"nc2_{lv}_after"] < frame_tol) & (table[f"nc3_{lv}_after"] < frame_tol)
    above = table.objective_after > table.objective_before
    out = pd.Series("between f* and GD", index=table.index, dtype=object)
    out[above] = "above GD's objective"
    out[at] = "f*, frame off"
    out[at & frame] = "DNC frame"
    out[~ok] = "not converged"
    return out.rename("limit")


def polish_summary(table: pd.DataFrame, levels: list[str], *, frame_tol: float = 1e-8,
                   rel_tol: float = 1e-10) -> pd.DataFrame:
    """One compact row per polished run of :func:`polished_geometry`: the relative error to f* before and after,
    the largest NC2 and NC3 over ``levels`` before and after (``max_nc2_before`` …), the iterations, the
    negative-curvature directions on the final face and where the polish ended (``limit``,
    :func:`polish_limits`). Index ``run``."""
    out = pd.DataFrame({"rel_err_before": table.rel_err_before.to_numpy(),
                        "rel_err_after": table.rel_err_after.to_numpy()}, index=pd.Index(table.run, name="run"))
    for what in ("nc2", "nc3"):
        for when in ("before", "after"):
            out[f"max_{what}_{when}"] = table[[f"{what}_{lv}_{when}" for lv in levels]].max(axis=1).to_numpy()
    for c in ("iterations", "negative"):
        if c in table:
            out[c] = table[c].to_numpy()
    out["limit"] = polish_limits(table, levels, frame_tol=frame_tol, rel_tol=rel_tol).to_numpy()
    return out


def polish_limit_checks(table: pd.DataFrame, levels: list[str], *, label: str = "", frame_tol: float = 1e-8,
                        rel_tol: float = 1e-10, required: int = 1) -> list[dict[str, Any]]:
    """What polishing certifies where only some runs converge (:func:`polish_limits`): at least ``required``
    polished runs end at the DNC frame; *every* polished run that converged to a critical point at f* has the
    frame (the collapsed optimum is the only minimizer found at f*); and *no* polished run that converged did so
    to a critical point between f* and GD's objective (no other limit of GD was found; the runs that did not
    converge decide nothing and are not counted). Count checks."""
    from ..report import count_check

    pre = f"{label}: " if label else ""
    lim = polish_limits(table, levels, frame_tol=frame_tol, rel_tol=rel_tol)
    n, span = len(lim), f"{levels[0]}-{levels[-1]}" if len(levels) > 1 else levels[0]
    at = int(lim.isin(["DNC frame", "f*, frame off"]).sum())
    conv = n - int((lim == "not converged").sum())
    frame = int((lim == "DNC frame").sum())
    return [
        count_check(f"{pre}polished runs at the DNC frame (f*, NC2 and NC3 < {frame_tol:g} at {span})", frame, n,
                    min(required, n), id=check_id(f"{pre}polished dnc frame")),
        count_check(f"{pre}polished critical points at f* that have the DNC frame", frame, at, at,
                    id=check_id(f"{pre}polished f* is dnc")),
        count_check(f"{pre}converged polished runs not at a critical point between f* and GD's objective",
                    conv - int((lim == "between f* and GD").sum()), conv, conv,
                    id=check_id(f"{pre}polished no other limit")),
    ]


def continued_descent(gd: GDResult, opt: theory.DeepUFMOptimum, runs: list[int], *, steps: int, lr: float,
                      records: int = 6, desc: str = "continued GD") -> pd.DataFrame:
    """GD continued for ``steps`` more steps from ``gd``'s endpoint of ``runs`` (one batched program, same model,
    step ``lr``, device and dtype): does GD keep moving where polishing did not decide its limit? Long form, one row
    per run and record (``records`` + 1 of them, step 0 = ``gd``'s endpoint): ``run`` (the run of ``gd``), ``step``,
    ``rel_err`` (f/f* − 1) and ``max_nc2`` (NC2 to the orthogonal frame, largest over the frame levels H₂…H_L of the
    ReLU model, every level of the linear one). Empty when ``runs`` is."""
    from ..solve import gradient_descent

    if not runs:
        return pd.DataFrame(columns=["run", "step", "rel_err", "max_nc2"])
    m = _deep(gd)
    p = {k: v[runs].clone() for k, v in gd.params.items()}
    more = gradient_descent(m, lr=lr, steps=steps, runs=len(runs), init=p, record_every=max(steps // records, 1),
                            device=p["H1"].device, dtype=p["H1"].dtype, desc=desc)
    h = more.history
    levels = [f"H{lv}" for lv in _frame_levels(m, None)]
    f = h[h.metric == "objective"].pivot_table(index=["step", "run"], values="value", observed=True)["value"]
    nc2 = (h[(h.metric == "nc2_orthogonal") & h.level.isin(levels)]
           .pivot_table(index=["step", "run"], values="value", aggfunc="max", observed=True)["value"])
    out = pd.DataFrame({"rel_err": f / opt.objective - 1, "max_nc2": nc2}).reset_index()
    out["run"] = [runs[i] for i in out.run]
    return out[["run", "step", "rel_err", "max_nc2"]]


def continued_descent_check(table: pd.DataFrame, *, label: str = "") -> dict[str, Any]:
    """How many runs of :func:`continued_descent` end with both a smaller objective gap |f/f* − 1| and a smaller
    NC2 than at its start (a count check, every run required)."""
    from ..report import count_check

    first = table[table.step == table.step.min()].set_index("run")
    last = table[table.step == table.step.max()].set_index("run").loc[first.index]
    fell = (last.rel_err.abs() < first.rel_err.abs()) & (last.max_nc2 < first.max_nc2)
    pre = f"{label}: " if label else ""
    return count_check(f"{pre}undecided runs whose objective gap and NC2 both fall under continued GD",
                       int(fell.sum()), len(fell), len(fell), id=check_id(f"{pre}continued descent"))


def monotone_objective_check(gd: GDResult, *, label: str = "", rtol: float = 1e-12) -> dict[str, Any]:
    """How many runs of ``gd`` have a recorded objective that never rises between records (by more than
    ``rtol`` relative: round-off): GD at a stable step size descends, so a critical point above GD's own
    objective is not its limit (:func:`polish_limits`). A count check, every run required."""
    from ..report import count_check

    h = gd.history
    f = h[h.metric == "objective"].pivot_table(index="step", columns="run", values="value", observed=True)
    v = f.sort_index().to_numpy()
    rises = (np.diff(v, axis=0) > rtol * np.abs(v[1:])).any(axis=0)
    pre = f"{label}: " if label else ""
    return count_check(f"{pre}runs whose recorded objective never rises (GD descends)", int((~rises).sum()),
                       v.shape[1], v.shape[1], id=check_id(f"{pre}objective monotone"))


def product_alignment(gd: GDResult) -> np.ndarray:
    """Per run, ‖P/‖P‖_F − M₁/‖M₁‖_F‖_F for the product P = W_L⋯W₁ ``(K, d)`` and the (uncentred) class means
    M₁ ``(K, d)`` of H₁: Tirer & Bruna 2022, Thm 4.1's level-1 statement for the linear model
    (W₂W₁ ∝ M₁ᵀ at the minimizer), the NC3 of the end-to-end linear classifier of H₁. ``(S,)``."""
    from ..metrics import class_means_t, nc3_from_means_t

    m = _deep(gd)
    p = gd.params
    with torch.no_grad():
        P = p["W1"].to(torch.float64)
        for layer in range(2, m.L + 1):
            P = p[f"W{layer}"].to(torch.float64) @ P
        H1 = p["H1"].to(torch.float64)
        M1 = class_means_t(H1, m.labels(H1.device), m.K)
        return nc3_from_means_t(M1, W=P, frame="orthogonal").cpu().numpy()


def depth_ratios(results: dict[str, GDResult], metric: str = "nc1", upper: str = "H2", lower: str = "H1",
                 floor: float = 1e-20) -> pd.DataFrame:
    """``metric(upper)/metric(lower)`` along GD for every run of every model (``{label: GDResult}``), Tirer &
    Bruna 2022's depth contrast (is the deeper level more collapsed?). Long form: ``model, step, run, ratio``;
    steps where either value is below ``floor`` (round-off) are dropped."""
    rows = []
    for label, gd in results.items():
        h = gd.history
        wide = h[h.metric == metric].pivot_table(index=["step", "run"], columns="level", values="value",
                                                 observed=True)
        wide = wide[(wide[upper] >= floor) & (wide[lower] >= floor)]
        rows.append(pd.DataFrame({"model": label, "step": wide.index.get_level_values("step"),
                                  "run": wide.index.get_level_values("run"),
                                  "ratio": (wide[upper] / wide[lower]).to_numpy()}))
    return pd.concat(rows, ignore_index=True)


def depth_ratio_table(ratios: pd.DataFrame, at: tuple[float, ...] = (0.005, 0.05, 0.25, 1.0)) -> pd.DataFrame:
    """:func:`depth_ratios` at a few fractions ``at`` of the last recorded step (the nearest recorded step
    at or below; a run whose ratio is not defined there — round-off — is left out): per model and step, the
    median, min and max over seeds and how many seeds are counted."""
    out = []
    last = ratios.step.max()
    steps = sorted(ratios.step.unique())
    for frac in at:
        step = max([s for s in steps if s <= frac * last] or [steps[0]])
        part = ratios[ratios.step == step]
        for label, g in part.groupby("model", sort=False):
            out.append({"model": label, "step": int(step), "median": g.ratio.median(), "min": g.ratio.min(),
                        "max": g.ratio.max(), "seeds": len(g)})
    return pd.DataFrame(out).set_index(["model", "step"]).sort_index(level=0, sort_remaining=True)


def depth_contrast_checks(ratios: pd.DataFrame, *, relu: str = "ReLU", linear: str = "linear",
                          linear_max: float = 0.1) -> list[dict[str, Any]]:
    """What the measured depth contrast (:func:`depth_ratios` of a ReLU and a linear run from the same
    initializations) shows: (1) at the first recorded step after the start, every seed's ratio
    NC1(H2)/NC1(H1) is lower with ReLU than linear (the ReLU model's deeper level collapses first); (2) at the
    last step where every linear seed is above round-off, every linear ratio is below ``linear_max`` —
    Tirer & Bruna's "NC1(H2) ≈ NC1(H1)" for the linear model is then not observed."""
    from ..report import count_check

    steps = sorted(s for s in ratios.step.unique() if s > 0)
    first = ratios[ratios.step == steps[0]].pivot_table(index="run", columns="model", values="ratio")
    paired = first.dropna(subset=[relu, linear])
    lin = ratios[ratios.model == linear]
    n_lin = lin.run.nunique()
    full = lin.groupby("step").run.nunique()
    last = int(full[full == n_lin].index.max())
    at = lin[lin.step == last]
    return [
        count_check(f"depth contrast at step {int(steps[0])}: seeds with NC1(H2)/NC1(H1) lower for {relu} than "
                    f"{linear}", int((paired[relu] < paired[linear]).sum()), len(paired), len(paired),
                    id="depth_contrast_relu_below_linear_first_step"),
        count_check(f"depth contrast at step {last}: {linear} seeds with NC1(H2)/NC1(H1) < {linear_max:g}",
                    int((at.ratio < linear_max).sum()), len(at), len(at), id="depth_contrast_linear_ratio_small"),
    ]


def depth_ratios_figure(ratios: pd.DataFrame, metric: str = "NC1", upper: str = "H2", lower: str = "H1",
                        title: str | None = None) -> Figure:
    """:func:`depth_ratios` against GD step: one thin line per seed, the median bold, one colour per model;
    the dotted line is ratio 1 (both levels equally collapsed)."""
    style()
    fig, ax = plt.subplots(figsize=(5.4, 3.4), constrained_layout=True)
    for i, (label, part) in enumerate(ratios.groupby("model", sort=False)):
        wide = part.pivot_table(index="step", columns="run", values="ratio")
        ax.plot(wide.index, wide.to_numpy(), color=f"C{i}", lw=0.7, alpha=0.35)
        ax.plot(wide.index, wide.median(axis=1), color=f"C{i}", lw=2.2, label=f"{label} (median of seeds)")
    ax.axhline(1.0, color="0.4", ls=":", lw=1, label="ratio 1")
    _finish(ax, f"{metric}({upper}) / {metric}({lower})", "GD step", ylog=True)
    if title:
        fig.suptitle(title)
    return fig


def init_scale_study(model: DeepUFM, scales: list[float] | np.ndarray, *, seeds: int, lr: float, steps: int,
                     seed: int = 0, device: Any = "auto", dtype: Any = "float64",
                     record_every: int | None = None) -> tuple[GDResult, pd.DataFrame]:
    """GD from initializations of several scales × ``seeds`` seeds, as one batched run.

    Run ``i·seeds + j`` starts from scale ``scales[i]`` times the j-th standard-normal draw (the same
    draws for every scale). Returns the result and a table ``run, init_std, seed``.
    """
    sc = np.asarray(check_floats("scales", scales, 0.0, strict_low=True))
    if model.runs() is not None:
        raise ValueError("init_scale_study needs scalar hyperparameters (the runs are the scales × seeds)")
    base = model.init(seeds, 1.0, torch.Generator().manual_seed(int(seed)), torch.float64)
    init = {k: torch.cat([float(x) * v for x in sc]) for k, v in base.items()}
    gd = gradient_descent(model, lr=lr, steps=steps, runs=len(sc) * seeds, init=init, device=device, dtype=dtype,
                          record_every=record_every, desc="init scales")
    table = pd.DataFrame(
        {
            "run": np.arange(len(sc) * seeds),
            "init_std": np.repeat(sc, seeds),
            "seed": np.tile(np.arange(seeds), len(sc)),
        }
    )
    return gd, table


def init_scales_figure(study: Any, table: pd.DataFrame, f_star: float, title: str | None = None) -> Figure:
    """The initialization-scale study (:func:`init_scale_study`): objective along GD,
    one line per run coloured by init std (left), and the final |f/f* − 1| per seed (right). The
    dotted line is the trivial stationary point f = 1/2 (H = 0) where a too-small initialization stalls."""
    style()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8.4, 3.3), constrained_layout=True)
    h = study.history
    obj = h[h.metric == "objective"].pivot_table(index="step", columns="run", values="value", observed=True)
    scales = list(dict.fromkeys(table.init_std))
    colors = dict(zip(scales, sns.color_palette("viridis", len(scales)), strict=True))
    for std in scales:
        runs = table.run[table.init_std == std].tolist()
        lines = ax0.plot(obj.index, obj[runs].to_numpy(), color=colors[std], lw=0.9, alpha=0.6)
        lines[0].set_label(f"init std {std:g}")
    ax0.axhline(f_star, color="C3", ls="--", lw=1.2, label="f* (theory)")
    ax0.axhline(0.5, color="0.4", ls=":", lw=1, label="f = 1/2 (H = 0)")
    _finish(ax0, "objective", "GD step", ylog=True)
    err = study.final("objective")[table.run] / f_star - 1
    ax1.scatter(table.init_std, np.clip(np.abs(err), 1e-16, None), s=18, facecolors="none", edgecolors="C0")
    ax1.axhline(0.5 / f_star - 1, color="0.4", ls=":", lw=1, label="stall at H = 0 (f = 1/2)")
    _finish(ax1, "final |f / f* − 1| per seed", "init std", xlog=True, ylog=True)
    if title:
        fig.suptitle(title)
    return fig
