"""Phase diagrams: many small UFM problems (a λ_W × λ_H grid × seeds) as one batched program.

A grid point is one model of the core (:class:`ncutils.models.UFM` or :class:`ncutils.models.DeepUFM`)
with per-run hyperparameters; :func:`phase_diagram` runs all points × seeds through the one GD loop
(:func:`ncutils.solve.gradient_descent`), in chunks of ``chunk`` runs to bound memory and stay in cache,
from initializations drawn once for the whole grid (so the result does not depend on ``chunk``), and
compares every point with the closed forms of :mod:`ncutils.theory`.

Kinds (``kind``):

- ``"ufm"``: the MSE UFM without bias (Tirer & Bruna 2022, Eq. 3); collapse iff c = K√(nλ_Hλ_W) < 1.
- ``"eufm"``: the extended UFM, L = 2, λ_{W₁} = λ_{W₂} = λ_W (Eq. 9); non-zero iff K·q ≤ 2^{−4/3}.
- ``"dufm"``: the L-layer UFM, all λ_{W_l} = λ_W (Súkeník et al. 2023); non-zero iff
  (K m/2)·q ≤ :func:`ncutils.theory.dufm_threshold` (m = L + 1), metastable up to
  :func:`ncutils.theory.dufm_spinodal`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from . import theory
from ._extras import need
from ._validate import bad_value, check_choice, check_float, check_integer
from .device import resolve_device, resolve_dtype
from .metrics import class_means_t
from .models import UFM as _UFM
from .models import DeepUFM, FeatureModel, gd_rows
from .report import check
from .solve import gradient_descent

pd = need("pandas")  # the [data] extra: tables

__all__ = ["CPU_CHUNK_BYTES", "PHASE_KINDS", "PhaseResult", "auto_chunk", "boundary_curves", "grid", "phase_boundary",
           "phase_checks", "phase_diagram", "phase_model", "phase_table", "phase_theory",
           "worst_points"]

Kind = Literal["ufm", "eufm", "dufm"]
#: Working set of one batched program on a CPU in automatic chunking: measured best on a 2-core EPYC (L2 1 MiB
#: per core) at 64 UFM problems of K=4, d=20, n=50 in float64 (bench/batched_ufm.py, docs/benchmarks.md).
CPU_CHUNK_BYTES = 64 * 8 * (200 * 20 + 4 * 20 + 200 * 4)
PHASE_KINDS: tuple[str, ...] = ("ufm", "eufm", "dufm")


def _check_kind(kind: str, L: int) -> int:
    """The number L of weight matrices of ``kind`` (1 for the UFM, 2 for the EUFM, ``L`` ≥ 2 for the DUFM)."""
    check_choice("kind", kind, PHASE_KINDS)
    if kind == "dufm":
        check_integer("L", L, 2)
    return {"ufm": 1, "eufm": 2}.get(kind, L)


def phase_model(kind: Kind, K: int, n: int, d: int, lambda_W: Any, lambda_H: Any, *, L: int = 3,
                activation: str = "linear") -> FeatureModel:
    """The core model of a grid point (or of many: ``lambda_W``/``lambda_H`` one value per run)."""
    layers = _check_kind(kind, L)
    if kind == "ufm":
        return _UFM(K=K, n=n, d=d, lambda_W=lambda_W, lambda_H=lambda_H, loss="mse")
    return DeepUFM(K=K, n=n, d=d, L=layers, activation=activation,  # type: ignore[arg-type]
                   lambda_W=(lambda_W,) * layers, lambda_H=lambda_H, name=f"{kind}_{activation}")


def phase_theory(kind: Kind, K: int, n: int, lambda_W: float, lambda_H: float, L: int = 3) -> dict[str, float]:
    """Closed-form prediction at one point: f*, the last level's ‖μ_k‖², the fit s, and ``ratio`` =
    threshold quantity / its critical value (< 1: collapse; c for the UFM, (Km/2)q / threshold otherwise),
    ``spinodal_ratio`` (where the metastable collapsed branch disappears, in the same units)."""
    layers = _check_kind(kind, L)
    if kind == "ufm":
        opt = theory.ufm_mse_optimum(K, n, lambda_W, lambda_H)
        return {"objective": opt.objective, "mean_norm_sq": opt.mean_norm_sq, "fit": opt.fit,
                "ratio": theory.ufm_threshold(K, n, lambda_W, lambda_H), "spinodal_ratio": 1.0}
    o = theory.dufm_optimum(K, n, [lambda_W] * layers, lambda_H)
    return {"objective": o.objective, "mean_norm_sq": o.mean_norm_sq[-1], "fit": o.s,
            "ratio": o.threshold / o.threshold_max, "spinodal_ratio": theory.dufm_spinodal(o.m) / o.threshold_max}


def phase_boundary(kind: Kind, K: int, n: int, lambda_W: Any, L: int = 3, which: str = "threshold") -> np.ndarray:
    """λ_H on the theory boundary at each λ_W: c = K√(nλ_Hλ_W) = 1 (UFM), or (Km/2)q = threshold
    (``which="threshold"``, the EUFM's K·q = 2^{−4/3}) / = spinodal (``which="spinodal"``) with
    q^m = nλ_Hλ_W^L."""
    layers = _check_kind(kind, L)
    check_choice("which", which, ("threshold", "spinodal"))
    lw = np.asarray(lambda_W, dtype=float)
    m = layers + 1
    crit = theory.dufm_threshold(m) if which == "threshold" else theory.dufm_spinodal(m)
    q = 2 * crit / (K * m)  # (K m/2) q = crit; for m = 2: K q = 1, i.e. c = 1
    return q**m / (n * lw**layers)


def _output_rank(model: FeatureModel, p: dict[str, torch.Tensor], tol: float = 1e-2) -> np.ndarray:
    """Per run, the rank of the output class means (singular values > ``tol``): K at the collapsed
    minimizer (s·I), fewer at the lower-rank critical points GD can stop at (``(S,)``)."""
    with torch.no_grad():
        out = model.forward(p)[2] if isinstance(model, DeepUFM) else p["H"] @ p["W"].transpose(-1, -2)
        Z = class_means_t(out, model.labels(out.device), model.K)
        return (torch.linalg.svdvals(Z) > tol).sum(-1).cpu().numpy()


@dataclass
class PhaseResult:
    """Outcome of :func:`phase_diagram`: one row per run (``point``, ``seed``, λ_W, λ_H, GD finals) in
    ``runs``; ``wall_time_s`` of the whole grid; ``chunks`` programs of at most ``chunk`` runs each."""

    kind: str
    K: int
    n: int
    d: int
    L: int
    activation: str
    runs: pd.DataFrame
    wall_time_s: float
    chunk: int
    chunks: int
    device: str
    steps: int

    @property
    def problems(self) -> int:
        return len(self.runs)


def auto_chunk(model: FeatureModel, S: int, device: torch.device, dtype: torch.dtype) -> int:
    """Runs per batched program: all of them on a GPU; on a CPU as many as keep the parameters and the
    activations of one program within :data:`CPU_CHUNK_BYTES` (batches that spill out of the caches run
    several times slower per problem), counting the rows GD really runs on (K + d₁ for a class-reducible
    model, :func:`ncutils.models.gd_rows`; else N)."""
    if device.type != "cpu":
        return S
    widths = model.widths if isinstance(model, DeepUFM) else (model.d,)  # type: ignore[attr-defined]
    rows = gd_rows(model)  # GD runs on K + d₁ class-reduced rows where exact
    per_run = torch.finfo(dtype).bits // 8 * (rows * (sum(widths) + model.K) + model.K * widths[-1])
    return max(1, min(S, CPU_CHUNK_BYTES // per_run))


def phase_diagram(
    kind: Kind, K: int, n: int, d: int, lambda_W: Any, lambda_H: Any, *, seeds: int = 1, L: int = 3,
    activation: str = "linear", lr: float, steps: int, init_std: float, seed: int = 0, chunk: int | None = None,
    device: Any = "auto", dtype: Any = "float64", progress: bool | None = None,
) -> PhaseResult:
    """GD on every point of the λ_W × λ_H grid × ``seeds``, as batched programs of ``chunk`` runs.

    Parameters
    ----------
    kind : ``"ufm"``, ``"eufm"`` or ``"dufm"`` (see the module docstring); ``L``/``activation`` for the DUFM/EUFM.
    lambda_W, lambda_H : 1-D grids (positive); the diagram has ``len(lambda_W) · len(lambda_H)`` points.
    seeds : initializations per point; run ``r = point · seeds + seed``, ``point = i_W · len(lambda_H) + i_H``.
    lr, steps, init_std, seed : as :func:`ncutils.solve.gradient_descent` (initializations drawn once, on the CPU).
    chunk : runs per batched program; default (None): :func:`auto_chunk` (cache-sized on a CPU, all on a GPU).
    """
    layers = _check_kind(kind, L)
    check_integer("seeds", seeds, 1)
    grids = {}
    for name, values in (("lambda_W", lambda_W), ("lambda_H", lambda_H)):
        arr = np.asarray(values, dtype=float)
        if arr.ndim != 1 or arr.size < 1 or not np.all(np.isfinite(arr) & (arr > 0)):
            raise bad_value(name, "a non-empty 1-D list of finite numbers in (0, inf)", values)
        grids[name] = arr
    S = grids["lambda_W"].size * grids["lambda_H"].size * seeds
    lw_pt, lh_pt = (g.ravel() for g in np.meshgrid(grids["lambda_W"], grids["lambda_H"], indexing="ij"))
    lw_run, lh_run = np.repeat(lw_pt, seeds), np.repeat(lh_pt, seeds)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    template = phase_model(kind, K, n, d, 1.0, 1.0, L=layers, activation=activation)
    chunk = auto_chunk(template, S, dev, dt) if chunk is None else check_integer("chunk", chunk, 1)
    init = template.init(S, float(init_std), torch.Generator().manual_seed(int(seed)), dt)  # one draw: chunk-free
    last = "H" if kind == "ufm" else f"H{layers}"
    keys = ("objective", "fit", "mean_norm_sq", "nc1", "nc2", "output_rank")
    finals: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    t0 = time.perf_counter()
    starts = range(0, S, chunk)
    for i, a in enumerate(starts):
        b = min(a + chunk, S)
        model = phase_model(kind, K, n, d, tuple(lw_run[a:b].tolist()), tuple(lh_run[a:b].tolist()), L=layers,
                            activation=activation)
        gd = gradient_descent(model, lr=lr, steps=steps, init={k: v[a:b] for k, v in init.items()},
                              device=dev, dtype=dt, record_every=steps, progress=progress,
                              desc=f"{kind} grid {i + 1}/{len(starts)}")
        finals["objective"].append(gd.final("objective"))
        finals["fit"].append(gd.final("fit"))
        finals["mean_norm_sq"].append(gd.final("mean_norm_sq", last))
        finals["nc1"].append(gd.final("nc1", last))
        finals["nc2"].append(gd.final("nc2_etf" if kind == "ufm" else "nc2_orthogonal", last))
        finals["output_rank"].append(_output_rank(model, gd.params))
    wall = time.perf_counter() - t0
    runs = pd.DataFrame({"point": np.arange(S) // seeds, "seed": np.arange(S) % seeds,
                         "lambda_W": lw_run, "lambda_H": lh_run,
                         **{f"{k}_gd": np.concatenate(v) for k, v in finals.items()}})
    return PhaseResult(kind=kind, K=K, n=n, d=d, L=layers, activation=activation, runs=runs, wall_time_s=wall,
                       chunk=chunk, chunks=len(starts), device=str(dev), steps=int(steps))


def phase_table(result: PhaseResult, collapse_fit: float = 1e-2) -> pd.DataFrame:
    """One row per grid point: the best seed (lowest objective — the theory is about the global minimizer),
    the theory, relative errors, and the phase: ``collapsed_gd`` (fit s = mean diag of the output class means
    > ``collapse_fit`` *and* output class means of full rank K, as s·I has) vs ``collapsed_theory`` (s > 0);
    ``partial_gd`` marks the lower-rank critical points (fit > ``collapse_fit`` but rank < K, e.g. one class
    at 0), which count as neither phase."""
    r = result.runs
    best = r.loc[r.groupby("point").objective_gd.idxmin()].set_index("point").sort_index()
    th = pd.DataFrame([phase_theory(result.kind, result.K, result.n, w, h, result.L)  # type: ignore[arg-type]
                       for w, h in zip(best.lambda_W, best.lambda_H, strict=True)], index=best.index)
    out = best.rename(columns={"seed": "best_seed"})
    for col in ("objective", "mean_norm_sq", "fit"):
        out[f"{col}_theory"] = th[col]
    out["ratio"], out["spinodal_ratio"] = th.ratio, th.spinodal_ratio
    out["objective_rel_err"] = (out.objective_gd - out.objective_theory).abs() / out.objective_theory
    scale = out.mean_norm_sq_theory.where(out.mean_norm_sq_theory > 0, 1.0)
    out["mean_norm_sq_err"] = (out.mean_norm_sq_gd - out.mean_norm_sq_theory).abs() / scale
    out["collapsed_gd"] = (out.fit_gd > collapse_fit) & (out.output_rank_gd == result.K)
    out["partial_gd"] = (out.fit_gd > collapse_fit) & (out.output_rank_gd < result.K)
    out["collapsed_theory"] = out.fit_theory > 0
    f = r.sort_values(["point", "seed"]).objective_gd.to_numpy().reshape(len(out), -1)
    out["seeds_at_theory"] = (np.abs(f / out.objective_theory.to_numpy()[:, None] - 1) <= 1e-4).sum(axis=1)
    return out


def phase_checks(table: pd.DataFrame, *, band: float = 0.15, tol: float = 1e-4, min_fraction: float = 1.0,
                 label: str = "") -> list[dict[str, Any]]:
    """Checks of a phase diagram off the boundary (|ratio − 1| > ``band``; next to it GD slows down):
    the fraction of points where GD's phase equals the theory's (a lower-rank partial solution, ``partial_gd``
    of :func:`phase_table`, never does), and the fraction where the relative error of f is ≤ ``tol``; each must
    be ≥ ``min_fraction`` (1 = every point)."""
    away = table[(table.ratio - 1).abs() > band]
    if away.empty:
        raise ValueError(f"no grid point is farther than band = {band} from the boundary; widen the grid")
    agree = float((away.collapsed_gd == away.collapsed_theory).mean())
    close = float((away.objective_rel_err <= tol).mean())
    pre = f"{label}: " if label else ""
    slack = 1.0 - min_fraction
    return [
        check(f"{pre}fraction of {len(away)} off-boundary points in the theory's phase", agree, 1.0, slack,
              kind="abs"),
        check(f"{pre}fraction of {len(away)} off-boundary points with rel err of f <= {tol:g}", close, 1.0, slack,
              kind="abs"),
    ]


def boundary_curves(kind: Kind, K: int, n: int, lambda_W: Any, L: int = 3, points: int = 200) -> dict[str, np.ndarray]:
    """The theory curves of a diagram over the range of ``lambda_W``: ``{"lambda_W", "threshold", "spinodal"}``
    (λ_H on the boundary, and where the metastable collapsed branch ends; the same curve for the UFM)."""
    lw = np.asarray(lambda_W, dtype=float)
    fine = np.geomspace(lw.min() / 1.2, lw.max() * 1.2, points)
    return {"lambda_W": fine, "threshold": phase_boundary(kind, K, n, fine, L),
            "spinodal": phase_boundary(kind, K, n, fine, L, which="spinodal")}


def worst_points(table: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The ``k`` grid points with the largest relative error of f (for printing; 3 significant digits)."""
    cols = ["lambda_W", "lambda_H", "ratio", "objective_gd", "objective_theory", "objective_rel_err", "fit_gd",
            "fit_theory", "output_rank_gd", "seeds_at_theory"]
    worst = table.nlargest(k, "objective_rel_err")[cols]
    return worst.map(lambda v: "<1e-08" if 0 < abs(v) < 1e-8 else f"{v:.3g}")


def grid(low: float, high: float, points: int) -> np.ndarray:
    """A geometric grid of ``points`` values from ``low`` to ``high`` (phase diagrams span decades)."""
    check_integer("points", points, 1)
    check_float("low", low, 0.0, strict_low=True)
    check_float("high", high, low)
    return np.geomspace(low, high, points)
