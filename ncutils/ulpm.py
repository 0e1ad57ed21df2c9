"""The unconstrained layer-peeled model of Ji et al. (ICLR 2022) and its max-margin problem (``docs/notation.md``).

The ULPM is the cross-entropy UFM with no regularization and no bias —
``ncutils.models.UFM(K, n, d, lambda_W=0, lambda_H=0, loss="ce")`` — run for millions of
GD steps by :func:`ncutils.solve.gradient_descent`. Gradient flow converges in
direction to KKT points of the minimum-norm separation problem

    min ½(‖W‖²_F + ‖H‖²_F)  s.t.  (w_k − w_j)ᵀ h_{k,i} ≥ 1  ∀ k, i, j ≠ k       (Ji et al., Eq. 5)

whose global minimizers are neural collapse. :func:`min_norm_separation` solves it
directly with SciPy's SLSQP from several random starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from ._extras import need
from ._validate import check_integer
from .metrics import nc_metrics_t

pd = need("pandas")  # the [data] extra: tables

__all__ = ["MaxMarginSolution", "min_norm_separation"]


@dataclass(frozen=True)
class MaxMarginSolution:
    """Best of several SLSQP solutions: ``W (K, d)``, ``H (N, d)`` class-major, ``value`` ½(‖W‖² + ‖H‖²),
    the smallest constraint value ``min_margin`` (1 when feasible and tight) and a per-start ``table``
    (value, min margin, NC1, NC2 to the simplex ETF, NC3, success)."""

    W: np.ndarray
    H: np.ndarray
    value: float
    min_margin: float
    metrics: dict[str, float]
    table: pd.DataFrame


def _constraints(K: int, n: int, d: int):
    """Constraint values c(x) = (w_{y_i} − w_j)ᵀh_i − 1 for j ≠ y_i, ``(N(K−1),)``, and their Jacobian."""
    N = K * n
    y = np.repeat(np.arange(K), n)
    others = np.array([[j for j in range(K) if j != k] for k in range(K)])[y]  # (N, K−1)

    def split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[:K * d].reshape(K, d), x[K * d:].reshape(N, d)

    def fun(x: np.ndarray) -> np.ndarray:
        W, H = split(x)
        Z = H @ W.T
        return (Z[np.arange(N), y][:, None] - np.take_along_axis(Z, others, 1) - 1.0).reshape(-1)

    rows = np.arange(N * (K - 1))
    i_of = np.repeat(np.arange(N), K - 1)
    j_of = others.reshape(-1)
    k_of = y[i_of]

    def jac(x: np.ndarray) -> np.ndarray:
        W, H = split(x)
        J = np.zeros((N * (K - 1), K * d + N * d))
        for c in range(d):
            J[rows, k_of * d + c] += H[i_of, c]  # ∂/∂w_k = h_i
            J[rows, j_of * d + c] -= H[i_of, c]  # ∂/∂w_j = −h_i
            J[rows, K * d + i_of * d + c] = W[k_of, c] - W[j_of, c]  # ∂/∂h_i = w_k − w_j
        return J

    return split, fun, jac


def min_norm_separation(K: int, n: int, d: int, starts: int = 5, seed: int = 0, init_std: float = 1.0,
                        maxiter: int = 1000, ftol: float = 1e-12) -> MaxMarginSolution:
    """Solve Ji et al.'s Eq. 5 with SLSQP (exact gradients and constraint Jacobians) from ``starts``
    random N(0, init_std²) points; returns the lowest-value feasible solution. The problem is
    non-convex, but its landscape is benign (Ji et al., Thm 3.2): every start should reach the
    global value √n(K−1) (:func:`ncutils.theory.ulpm_optimum`)."""
    for name, value, low in (("K", K, 2), ("n", n, 1), ("d", d, 1), ("starts", starts, 1)):
        check_integer(name, value, low)
    N = K * n
    split, cons, cons_jac = _constraints(K, n, d)
    rng = np.random.default_rng(seed)
    y = torch.arange(K).repeat_interleave(n)
    best, rows = None, []
    for start in range(starts):
        x0 = init_std * rng.standard_normal(K * d + N * d)
        res = scipy.optimize.minimize(lambda x: 0.5 * x @ x, x0, jac=lambda x: x, method="SLSQP",
                                      constraints=[{"type": "ineq", "fun": cons, "jac": cons_jac}],
                                      options={"maxiter": maxiter, "ftol": ftol})
        W, H = split(res.x)
        m = nc_metrics_t(torch.from_numpy(H.copy()), y, K, W=torch.from_numpy(W.copy()))
        margin = float(cons(res.x).min() + 1.0)
        row = {"start": start, "value": float(res.fun), "min_margin": margin, "success": bool(res.success),
               "iterations": int(res.nit), **{k: float(m[k]) for k in ("nc1", "nc2_etf", "nc3_etf")}}
        rows.append(row)
        if margin > 1 - 1e-6 and (best is None or row["value"] < best[0]["value"]):
            best = (row, W.copy(), H.copy(), m)
    table = pd.DataFrame(rows)
    if best is None:
        raise RuntimeError(f"SLSQP found no feasible point in {starts} starts:\n{table.to_string()}")
    row, W, H, m = best
    return MaxMarginSolution(W=W, H=H, value=row["value"], min_margin=row["min_margin"],
                             metrics={k: float(v) for k, v in m.items()}, table=table)
