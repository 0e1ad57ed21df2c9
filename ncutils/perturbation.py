"""The perturbation model of Tirer, Huang & Niles-Weed (ICML 2023), their Eq. 3 and normalization.

    f(W, H; H₀) = 1/(2Kn)‖WH − Y‖²_F + λ_W/(2K)‖W‖²_F + λ_H/(2Kn)‖H‖²_F + β/(2Kn)‖H − H₀‖²_F

H₀ is a given feature matrix (a layer's input features); the minimizer H* is how
far the next layers move them, 1/β measuring the freedom. With β = 0 this is the
bias-free MSE UFM of Tirer & Bruna with λ'_W = λ_W/K, λ'_H = λ_H/(Kn)
(:func:`ncutils.theory.perturbation_to_ufm`).

Shapes (code convention, rows are samples): ``H, H0 (N, d)`` class-major, ``W (K, d)``.
The paper's H ∈ R^{d×N} is ``H.T`` and its vec(H) (columns stacked) is ``H.reshape(-1)``,
so the block of class k in vec(H) is ``[k n d, (k+1) n d)``.

Everything here is float64 torch on the CPU (problem sizes are a few thousand
unknowns): the minimizer by a Newton-type trust-region method with exact
Hessian-vector products, the Jacobian by implicit differentiation with
:mod:`torch.func`, the gradient flow by SciPy's DOP853.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.integrate
import scipy.optimize
import torch
from torch import Tensor

from ._extras import need
from ._validate import check_float, check_integer, check_integers
from .device import forward_ad_quietly
from .metrics import class_means_t, nc1_t, nc1_trace_t, nc2_from_means_t
from .theory import perturbation_to_ufm, ufm_mse_optimum

pd = need("pandas")  # the [data] extra: tables


__all__ = ["FlowResult", "Minimizer", "PerturbationModel", "jacobian_blocks", "layerwise_chain", "monotonicity_checks"]


@dataclass(frozen=True)
class Minimizer:
    """A minimizer H* of f(·; H₀) with ``W* = W*(H*)``, the objective and the gradient norm reached."""

    H: Tensor
    W: Tensor
    objective: float
    grad_norm: float
    iterations: int
    converged: bool


@dataclass(frozen=True)
class FlowResult:
    """The gradient flow dH/dt = −Kn ∇L(H) sampled at ``times``: ``H (T, N, d)`` and a tidy ``table``
    (one row per time: t, L, nc1, nc1_trace, tr_Sigma_W, tr_Sigma_B and the e^{2λ_H t}-scaled traces)."""

    times: np.ndarray
    H: Tensor
    table: pd.DataFrame
    nfev: int
    method: str
    rtol: float
    atol: float


@dataclass(frozen=True)
class PerturbationModel:
    """f(W, H; H₀) of Tirer, Huang & Niles-Weed 2023 (Eq. 3), their normalization (λ_W, λ_H, β).

    Parameters: K ≥ 2 classes, n ≥ 1 samples per class, width d ≥ 1, λ_W > 0, λ_H ≥ 0, β > 0.
    """

    K: int
    n: int
    d: int
    lambda_W: float
    lambda_H: float
    beta: float = 1.0

    def __post_init__(self) -> None:
        check_integers(self, (("K", 2), ("n", 1), ("d", 1)))
        object.__setattr__(self, "lambda_W", check_float("lambda_W", self.lambda_W, 0.0, strict_low=True))
        object.__setattr__(self, "lambda_H", check_float("lambda_H", self.lambda_H, 0.0))
        object.__setattr__(self, "beta", check_float("beta", self.beta, 0.0, strict_low=True))

    @property
    def N(self) -> int:
        return self.K * self.n

    # ------------------------------------------------------------------ basics
    def labels(self) -> Tensor:
        """Class-major labels ``(N,)``."""
        return torch.arange(self.K).repeat_interleave(self.n)

    def targets(self) -> Tensor:
        """One-hot targets ``(N, K)`` (the paper's Y ∈ R^{K×N}, transposed), float64."""
        return torch.nn.functional.one_hot(self.labels(), self.K).double()

    def check_H0(self, H0: Tensor | np.ndarray) -> Tensor:
        """``H0`` as a float64 ``(N, d)`` tensor; a clear error for a wrong shape or non-finite entries."""
        H0 = torch.as_tensor(np.asarray(H0) if not isinstance(H0, Tensor) else H0).detach()
        if H0.shape != (self.N, self.d):
            raise ValueError(f"H0 must have shape (N, d) = ({self.N}, {self.d}) (K n rows, class-major), "
                             f"got {tuple(H0.shape)}")
        if not H0.is_floating_point():
            H0 = H0.double()
        if not bool(torch.isfinite(H0).all()):
            bad = int((~torch.isfinite(H0)).sum())
            raise ValueError(f"H0 must be finite; it has {bad} NaN/inf entries")
        return H0.to(torch.float64)

    def ufm_lambdas(self) -> tuple[float, float]:
        """The same model's (λ_W, λ_H) in Tirer & Bruna's normalization (:func:`ncutils.theory.perturbation_to_ufm`)."""
        return perturbation_to_ufm(self.K, self.n, self.lambda_W, self.lambda_H)

    # --------------------------------------------------------------- objective
    def objective(self, W: Tensor, H: Tensor, H0: Tensor | None = None) -> Tensor:
        """f(W, H; H₀) (Eq. 3); without ``H0`` the β term is dropped (the UFM)."""
        Kn = self.N
        f = ((H @ W.T - self.targets()).square().sum() / (2 * Kn) + self.lambda_W / (2 * self.K) * W.square().sum()
             + self.lambda_H / (2 * Kn) * H.square().sum())
        if H0 is not None:
            f = f + self.beta / (2 * Kn) * (H - H0).square().sum()
        return f

    def central_W(self, H: Tensor) -> Tensor:
        """W*(H) = Y Hᵀ(H Hᵀ + nλ_W I)⁻¹ (THN 2023, §3; paper shapes) — the minimizer over W, ``(K, d)``."""
        G = H.T @ H + self.n * self.lambda_W * torch.eye(self.d, dtype=H.dtype)
        return torch.linalg.solve(G, H.T @ self.targets()).T

    def reduced_objective(self, H: Tensor) -> Tensor:
        """L(H) = f(W*(H), H) without the β term (the central-path objective)."""
        return self.objective(self.central_W(H), H)

    def flow_velocity(self, H: Tensor) -> Tensor:
        """dH/dt = −Kn ∇L(H) = −(H W*ᵀ − Y) W* − λ_H H (envelope theorem: W* is optimal), ``(N, d)``."""
        W = self.central_W(H)
        return -(H @ W.T - self.targets()) @ W - self.lambda_H * H

    def perturbed_objective(self, H: Tensor, H0: Tensor) -> Tensor:
        """Φ(H; H₀) = min_W f(W, H; H₀) = L(H) + β/(2Kn)‖H − H₀‖²."""
        return self.reduced_objective(H) + self.beta / (2 * self.N) * (H - H0).square().sum()

    # ----------------------------------------------------------------- solvers
    def collapsed_minimizer(self, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A global minimizer (W, H) of the β-free objective (needs λ_Hλ_W < 1 and d ≥ K):
        the orthogonal frame of Tirer & Bruna 2022, Thm 3.1, rotated by a random orthonormal d×K basis (``seed``)."""
        if self.lambda_H * self.lambda_W >= 1 or self.d < self.K or self.lambda_H == 0:
            raise ValueError("parameters lambda_H, lambda_W, d must satisfy 0 < lambda_H * lambda_W < 1 and d >= K "
                             "for a collapsed minimizer, got "
                             f"lambda_H * lambda_W = {self.lambda_H * self.lambda_W}, d = {self.d}, K = {self.K}")
        lw, lh = self.ufm_lambdas()
        opt = ufm_mse_optimum(self.K, self.n, lw, lh)
        g = torch.Generator().manual_seed(seed)
        Q = torch.linalg.qr(torch.randn(self.d, self.K, generator=g, dtype=torch.float64))[0]  # (d, K)
        M = math.sqrt(opt.mean_norm_sq) * Q.T  # (K, d): μ_k = √ρ q_k
        H = M.repeat_interleave(self.n, 0)
        return math.sqrt(self.n * lh / lw) * M, H

    def minimize(self, H0: Tensor | np.ndarray, gtol: float = 1e-10, maxiter: int = 200) -> Minimizer:
        """The minimizer of f(·, ·; H₀) reached from H = H₀ (unique for large β, where Φ is strongly
        convex around H₀), on Φ = min_W f scaled by Kn/β (its Hessian is then I + O(1/β)).

        SciPy's ``trust-ncg`` (Newton–CG trust region, exact gradient and Hessian-vector products from
        torch.func) stops at a scaled gradient norm ``gtol``, or where rounding of Φ stops it; a few
        Newton steps on ∇Φ = 0 (CG solves, no objective values needed) then polish the result.
        ``grad_norm`` reports the unscaled ‖∇_H Φ‖.
        """
        H0 = self.check_H0(H0)
        shape = H0.shape
        scale = 1.0 / self.beta  # Φ's curvature is ≥ β/(Kn) near H₀: rescale so the method sees O(1) numbers

        def phi(h: Tensor) -> Tensor:
            return self.perturbed_objective(h.reshape(shape), H0) * (self.N * scale)

        grad = torch.func.grad(phi)

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            h = torch.from_numpy(x)
            return float(phi(h)), grad(h).numpy()

        def hessp(x: np.ndarray, v: np.ndarray) -> np.ndarray:
            return torch.func.jvp(grad, (torch.from_numpy(x),), (torch.from_numpy(v),))[1].numpy()

        with forward_ad_quietly():
            res = scipy.optimize.minimize(fun, H0.reshape(-1).numpy().copy(), jac=True, hessp=hessp,
                                          method="trust-ncg", options={"gtol": gtol, "maxiter": maxiter})
            x = res.x if res.success else _newton_polish(res.x, grad, hessp)
        H = torch.from_numpy(x).reshape(shape)
        g0 = float(torch.linalg.vector_norm(grad(H0.reshape(-1))))
        g_scaled = float(torch.linalg.vector_norm(grad(H.reshape(-1))))
        g = g_scaled / (self.N * scale)
        # SciPy reports failure when rounding stops progress: judge convergence by the gradient itself
        converged = bool(res.success) or g_scaled <= 1e-8 * max(1.0, g0)
        return Minimizer(H=H, W=self.central_W(H), objective=float(self.objective(self.central_W(H), H, H0)),
                         grad_norm=g, iterations=int(res.nit), converged=converged)

    def jacobian(self, H0: Tensor | np.ndarray, H_star: Tensor | None = None) -> Tensor:
        """F = ∂vec(H*)/∂vec(H₀), ``(Nd, Nd)``, by implicit differentiation (THN 2023, Thm 4.2).

        At the minimizer G(H*, H₀) = ∇_H Φ(H*; H₀) = 0, so F = −(∂G/∂H)⁻¹ ∂G/∂H₀, both blocks by
        :mod:`torch.func` (exact second derivatives, no finite differences). ``H_star``: the
        minimizer for ``H0`` (default: :meth:`minimize`).
        """
        H0 = self.check_H0(H0)
        H = self.minimize(H0).H if H_star is None else H_star.to(torch.float64)
        m = H.numel()

        def phi(h: Tensor, h0: Tensor) -> Tensor:
            return self.perturbed_objective(h.reshape(H0.shape), h0.reshape(H0.shape))

        x, x0 = H.reshape(-1), H0.reshape(-1)
        with forward_ad_quietly():
            hess = torch.func.hessian(phi, argnums=0)(x, x0).reshape(m, m)
            mixed = torch.func.jacfwd(torch.func.grad(phi, argnums=0), argnums=1)(x, x0).reshape(m, m)
        return -torch.linalg.solve(hess, mixed)

    def reduced_hessian(self, H: Tensor) -> Tensor:
        """Kn ∇²L(H) at a point of the central path, ``(Nd, Nd)`` in the paper's vec(H) order, in closed form.

        The Schur complement of THN 2023, Thm 4.1 (their f without the β term, scaled by Kn):
        A = λ_H I + I_N ⊗ WᵀW − Cᵀ B⁻¹ C with W = W*(H) ``(K, d)``, the paper's H ``(d, N)`` = ``H.T``,
        C = Kn ∇_H∇_W f = H ⊗ W + (I_d ⊗ R)·T ``(dK, Nd)`` (R = WH − Y ``(K, N)``, T the commutation matrix
        vec(dH) ↦ vec(dHᵀ)) and B = Kn ∇²_W f = HHᵀ ⊗ I_K + nλ_W I ``(dK, dK)``. Kronecker products only
        (no automatic differentiation), an independent route to the Jacobian of :meth:`jacobian`.
        """
        H = H.to(torch.float64)
        if H.shape != (self.N, self.d):
            raise ValueError(f"H must have shape (N, d) = ({self.N}, {self.d}), got {tuple(H.shape)}")
        W = self.central_W(H)  # (K, d)
        Hp = H.T.contiguous()  # the paper's H, (d, N)
        R = W @ Hp - self.targets().T  # (K, N)
        eye_d = torch.eye(self.d, dtype=torch.float64)
        # vec(R dHᵀ)[j K + k] = Σ_i R[k, i] dH[j, i]; vec(dH)[i d + l]: entry (j K + k, i d + l) = R[k, i] δ_jl
        C = torch.kron(Hp, W) + torch.einsum("ki,jl->jkil", R, eye_d).reshape(self.d * self.K, self.N * self.d)
        B = torch.kron(Hp @ Hp.T, torch.eye(self.K, dtype=torch.float64)) \
            + self.n * self.lambda_W * torch.eye(self.d * self.K, dtype=torch.float64)
        A = torch.kron(torch.eye(self.N, dtype=torch.float64), W.T @ W) - C.T @ torch.linalg.solve(B, C)
        return A + self.lambda_H * torch.eye(self.N * self.d, dtype=torch.float64)

    def first_order_jacobian(self, H_star: Tensor) -> Tensor:
        """F₁ = I − A/β, ``(Nd, Nd)``: THN 2023, Thm 4.1, Eq. 5 (β ≫ max(1, λ_H)), A = :meth:`reduced_hessian` at H*.

        The exact Jacobian at the minimizer ``H_star`` ``(N, d)`` is F = (I + A/β)⁻¹ (Thm 4.1's first display),
        so F − F₁ = A²/β² + O(β⁻³): Eq. 5 is accurate to second order in 1/β.
        """
        A = self.reduced_hessian(H_star)
        return torch.eye(A.shape[0], dtype=torch.float64) - A / self.beta

    def flow(self, H0: Tensor | np.ndarray, t_max: float, num: int = 200, rtol: float = 1e-11,
             atol: float = 1e-13) -> FlowResult:
        """Integrate dH/dt = −Kn ∇L(H) from H₀ to ``t_max`` with SciPy's DOP853 (explicit Runge–Kutta
        of order 8 with adaptive steps; ``rtol``/``atol`` bound the local error) and record ``num``
        geometrically spaced times (plus t = 0) (THN 2023, Thm 3.1)."""
        H0 = self.check_H0(H0)
        t_max = check_float("t_max", t_max, 0.0, strict_low=True)
        shape = H0.shape
        times = np.unique(np.concatenate([[0.0], np.geomspace(t_max * 1e-4, t_max, num)]))

        def rhs(_t: float, x: np.ndarray) -> np.ndarray:
            return self.flow_velocity(torch.from_numpy(x).reshape(shape)).reshape(-1).numpy()

        sol = scipy.integrate.solve_ivp(rhs, (0.0, t_max), H0.reshape(-1).numpy().copy(), method="DOP853",
                                        t_eval=times, rtol=rtol, atol=atol)
        if not sol.success or not np.isfinite(sol.y).all():
            raise RuntimeError(f"gradient flow integration failed: {sol.message}")
        Hs = torch.from_numpy(sol.y.T.copy()).reshape(len(times), *shape)
        return FlowResult(times=times, H=Hs, table=self.flow_table(times, Hs), nfev=int(sol.nfev),
                          method="DOP853", rtol=rtol, atol=atol)

    def flow_table(self, times: np.ndarray, Hs: Tensor) -> pd.DataFrame:
        """Metrics along a path ``Hs (T, N, d)``: L, nc1, nc1_trace, tr Σ_W, tr Σ_B and e^{2λ_H t}·traces."""
        y = self.labels()
        M = class_means_t(Hs, y, self.K)
        res = Hs - M[:, y]
        tr_w = res.square().sum((-1, -2)) / self.N
        tr_b = (M - M.mean(-2, keepdim=True)).square().sum((-1, -2)) / self.K
        grow = np.exp(2 * self.lambda_H * times)
        return pd.DataFrame({
            "t": times,
            "L": [float(self.reduced_objective(h)) for h in Hs],
            "nc1": nc1_t(Hs, y, self.K, M).numpy(),
            "nc1_trace": nc1_trace_t(Hs, y, self.K, M).numpy(),
            "nc2_orthogonal": nc2_from_means_t(M, "orthogonal").numpy(),
            "tr_Sigma_W": tr_w.numpy(),
            "tr_Sigma_B": tr_b.numpy(),
            "scaled_tr_Sigma_W": grow * tr_w.numpy(),
            "scaled_tr_Sigma_B": grow * tr_b.numpy(),
        })


def _newton_polish(x: np.ndarray, grad, hessp, steps: int = 3, cg_iters: int = 100) -> np.ndarray:
    """Newton steps x ← x − H⁻¹∇ (``scipy.sparse.linalg.cg``, at most ``cg_iters`` Hessian-vector products
    each) while ‖∇‖ falls."""
    import scipy.sparse.linalg

    def g_of(z: np.ndarray) -> np.ndarray:
        return grad(torch.from_numpy(z)).numpy()

    g = g_of(x)
    for _ in range(steps):
        op = scipy.sparse.linalg.LinearOperator((x.size, x.size), matvec=lambda v, x=x: hessp(x, v), dtype=np.float64)
        dx, info = scipy.sparse.linalg.cg(op, -g, rtol=1e-12, maxiter=cg_iters)
        if info < 0:
            break
        x_new = x + dx
        g_new = g_of(x_new)
        if not np.linalg.norm(g_new) < np.linalg.norm(g):
            break
        x, g = x_new, g_new
    return x


def monotonicity_checks(table: pd.DataFrame) -> pd.DataFrame:
    """Theorem 3.1's three claims on a :meth:`PerturbationModel.flow` table, one row per claim.

    ``violations``: recorded steps where the claim fails (strictly: a non-decrease of
    nc1_trace or a non-increase of e^{2λ_H t}tr Σ_B; e^{2λ_H t}tr Σ_W may not increase);
    ``worst``: the least favourable relative change between consecutive recorded steps.
    """
    rows = []
    for col, claim, sign, strict in (("nc1_trace", "nc1_trace(H_t) strictly decreases", -1, True),
                                     ("scaled_tr_Sigma_W", "e^{2 lambda_H t} tr Sigma_W decreases", -1, False),
                                     ("scaled_tr_Sigma_B", "e^{2 lambda_H t} tr Sigma_B strictly increases", 1, True)):
        v = table[col].to_numpy()
        rel = sign * np.diff(v) / np.abs(v[:-1])  # > 0: the claimed direction
        bad = (rel <= 0) if strict else (rel < 0)
        rows.append({"claim": claim, "steps": len(rel), "violations": int(bad.sum()), "worst": float(rel.min()),
                     "holds": bool(not bad.any())})
    return pd.DataFrame(rows)


def jacobian_blocks(F: Tensor, K: int, n: int, d: int, rel_tol: float = 1e-9) -> pd.DataFrame:
    """Singular values of the class blocks of F ``(Nd, Nd)``: one row per (k, k') block with
    σ_max, σ_min, numerical rank (σ > ``rel_tol``·σ_max(F)) and the multiplicities of the
    distinct singular values (clustered at relative distance ``rel_tol``·1e3)."""
    size = n * d
    top = float(torch.linalg.matrix_norm(F, ord=2))
    rows = []
    for k in range(K):
        for kk in range(K):
            sv = torch.linalg.svdvals(F[k * size:(k + 1) * size, kk * size:(kk + 1) * size]).numpy()
            rank = int((sv > rel_tol * top).sum())
            rows.append({"k": k, "k2": kk, "diagonal": k == kk, "sigma_max": float(sv[0]),
                         "sigma_min": float(sv[-1]), "rank": rank,
                         "multiplicities": _multiplicities(sv[:rank], rel_tol * 1e3), "sv": sv})
    return pd.DataFrame(rows)


def _multiplicities(sv: np.ndarray, tol: float) -> str:
    """Distinct values of a descending ``sv`` with their multiplicities, e.g. ``'1.0×93, 0.998×6'``."""
    groups: list[list[float]] = []
    for s in sv:
        if groups and abs(groups[-1][0] - s) <= tol * max(abs(groups[-1][0]), 1e-300):
            groups[-1].append(float(s))
        else:
            groups.append([float(s)])
    return ", ".join(f"{g[0]:.6g}x{len(g)}" for g in groups)


def layerwise_chain(H0: Tensor | np.ndarray, model: PerturbationModel,
                    layers: int) -> tuple[list[Tensor], pd.DataFrame]:
    """The paper's depth-wise argument (THN 2023, §3.2): H_{l+1} = argmin_H min_W f(W, H; H_l), l = 0…layers−1.

    Each layer's minimizer is the next layer's H₀. Returns ``[H_0, …, H_layers]`` and a table with
    nc1, nc1_trace and NC2 (orthogonal frame) per layer, and the solver's final gradient norm.
    """
    check_integer("layers", layers, 1)
    Hs = [model.check_H0(H0)]
    info = [{"grad_norm": float("nan"), "iterations": 0, "converged": True}]
    for _ in range(layers):
        r = model.minimize(Hs[-1])
        Hs.append(r.H)
        info.append({"grad_norm": r.grad_norm, "iterations": r.iterations, "converged": r.converged})
    stack = torch.stack(Hs)
    y = model.labels()
    M = class_means_t(stack, y, model.K)
    table = pd.DataFrame({"layer": range(layers + 1), "nc1": nc1_t(stack, y, model.K, M).numpy(),
                          "nc1_trace": nc1_trace_t(stack, y, model.K, M).numpy(),
                          "nc2_orthogonal": nc2_from_means_t(M, "orthogonal").numpy(),
                          "mean_norm_sq": M.square().sum(-1).mean(-1).numpy()})
    return Hs, pd.concat([table, pd.DataFrame(info)], axis=1)
