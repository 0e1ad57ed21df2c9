"""Closed-form predictions for the unconstrained-features models (SPEC §2).

Notation of Tirer & Bruna (ICML 2022), bias-free MSE UFM

    f(W, H) = 1/(2Kn) ‖WH − Y‖²_F + (λ_W/2) ‖W‖²_F + (λ_H/2) ‖H‖²_F,

K classes, n samples per class. The *threshold* ``c = K √(n λ_H λ_W)`` decides
between a collapsed orthogonal frame (c < 1) and the trivial minimizer (c ≥ 1).

Formulas marked (derived) in SPEC §2 are consequences of the theorem that the
unit tests confirm against gradient descent (``tests/test_theory.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = [
    "UFMOptimum",
    "frame_distance",
    "ufm_ce_optimum",
    "ufm_fit",
    "ufm_mean_norm_sq",
    "ufm_mse_optimum",
    "ufm_objective_star",
    "ufm_threshold",
]


def _check(K: int, n: int, lambda_W: float, lambda_H: float, positive: bool = True) -> None:
    if int(K) != K or K < 2:
        raise ValueError(f"K must be an integer >= 2, got {K}")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n}")
    for name, lam in (("lambda_W", lambda_W), ("lambda_H", lambda_H)):
        if not math.isfinite(lam) or lam < 0 or (positive and lam == 0):
            rng = "(0, inf)" if positive else "[0, inf)"
            raise ValueError(f"{name} must be finite and in {rng}, got {lam}")


@dataclass(frozen=True)
class UFMOptimum:
    """Global minimizer of a UFM, described by its invariants.

    Attributes
    ----------
    c : K √(n λ_H λ_W), the threshold parameter.
    objective : f*, the minimal objective value.
    fit : s, the diagonal of W M (both (K, K)); W M = s I in the bias-free MSE case.
    mean_norm_sq : ‖μ_k‖², identical for every class.
    norm_W_sq, norm_H_sq : ‖W‖²_F and ‖H‖²_F at the optimum.
    bias : b_k at the optimum (None for bias-free models).
    """

    c: float
    objective: float
    fit: float
    mean_norm_sq: float
    norm_W_sq: float
    norm_H_sq: float
    bias: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def ufm_threshold(K: int, n: int, lambda_W: float, lambda_H: float) -> float:
    """c = K √(n λ_H λ_W) (Tirer & Bruna 2022, Thm 3.1): collapse iff c < 1, (0, 0) iff c ≥ 1."""
    _check(K, n, lambda_W, lambda_H, positive=False)
    return K * math.sqrt(n * lambda_H * lambda_W)


def ufm_fit(K: int, n: int, lambda_W: float, lambda_H: float) -> float:
    """s = 1 − c (0 past the threshold): W M = s I at the optimum (derived, SPEC §2)."""
    return max(1.0 - ufm_threshold(K, n, lambda_W, lambda_H), 0.0)


def ufm_mean_norm_sq(K: int, n: int, lambda_W: float, lambda_H: float) -> float:
    """ρ = ‖μ_k‖² = (1 − c) √(λ_W / (n λ_H)), MᵀM = ρ I (derived, SPEC §2)."""
    _check(K, n, lambda_W, lambda_H)
    return ufm_fit(K, n, lambda_W, lambda_H) * math.sqrt(lambda_W / (n * lambda_H))


def ufm_objective_star(K: int, n: int, lambda_W: float, lambda_H: float, bias: bool = False) -> float:
    """f* = c − c²/2 for c ≤ 1, else 1/2; times (K−1)/K with an unregularized bias (SPEC §2)."""
    c = min(ufm_threshold(K, n, lambda_W, lambda_H), 1.0)
    f = c - c * c / 2
    return (K - 1) / K * f if bias else f


def ufm_mse_optimum(K: int, n: int, lambda_W: float, lambda_H: float, bias: bool = False) -> UFMOptimum:
    """All invariants of the MSE-UFM minimizer (Tirer & Bruna 2022, Thm 3.1; closed forms SPEC §2).

    Bias-free: MᵀM = ρ I (orthogonal frame), W = √(nλ_H/λ_W) Mᵀ, W M = (1 − c) I.
    With an unregularized bias: b* = 1/K, μ_G = 0 and MᵀM = ρ (I − 11ᵀ/K) (simplex
    ETF), hence ‖μ_k‖² = ρ (K−1)/K, and W M = (1 − c)(I − 11ᵀ/K).
    """
    _check(K, n, lambda_W, lambda_H)
    c = ufm_threshold(K, n, lambda_W, lambda_H)
    s = ufm_fit(K, n, lambda_W, lambda_H)
    rho = ufm_mean_norm_sq(K, n, lambda_W, lambda_H)
    shrink = (K - 1) / K if bias else 1.0
    mean_sq = rho * shrink
    norm_H_sq = K * n * mean_sq
    norm_W_sq = n * lambda_H / lambda_W * K * mean_sq
    return UFMOptimum(
        c=c,
        objective=ufm_objective_star(K, n, lambda_W, lambda_H, bias),
        fit=s * shrink,
        mean_norm_sq=mean_sq,
        norm_W_sq=norm_W_sq,
        norm_H_sq=norm_H_sq,
        bias=1.0 / K if bias else None,
    )


def ufm_ce_optimum(K: int, n: int, lambda_W: float, lambda_H: float) -> UFMOptimum:
    """Minimizer of the L2-regularized cross-entropy UFM (Zhu et al. 2021; Lu & Steinerberger 2022).

    Objective (same normalization as the MSE UFM):
    (1/(Kn)) Σ_i CE(W h_i, y_i) + (λ_W/2)‖W‖²_F + (λ_H/2)‖H‖²_F. Its minimizers are
    simplex ETFs with W ∝ M̃ᵀ (with or without an unregularized bias, which then
    is a multiple of 1 and does not change f*). On an ETF with ‖w_k‖ = a,
    ‖h‖ = β and p = aβ the loss is ℓ(p) = log(1 + (K−1) exp(−pK/(K−1))); the
    regularizer, minimized at fixed p, is c·p (AM–GM), so f* = min_p ℓ(p) + c p, whose
    stationarity condition gives p* = ((K−1)/K) log((K − c(K−1))/c) for c < 1, else 0 (derived).
    ``fit`` is the diagonal of W M, w_kᵀμ_k = p (the logit margin is pK/(K−1)).
    """
    _check(K, n, lambda_W, lambda_H)
    c = ufm_threshold(K, n, lambda_W, lambda_H)

    def f(p: float) -> float:
        return math.log1p((K - 1) * math.exp(-p * K / (K - 1))) + c * p

    # ℓ'(p) = −K e/(1 + (K−1)e), e = exp(−pK/(K−1)); ℓ'(p) + c = 0 ⇔ e = c/(K − c(K−1)).
    p = (K - 1) / K * math.log((K - c * (K - 1)) / c) if c < 1.0 else 0.0
    a_sq = p * math.sqrt(n * lambda_H / lambda_W)  # ‖w_k‖²
    h_sq = p * math.sqrt(lambda_W / (n * lambda_H))  # ‖h_{k,i}‖² = ‖μ_k‖²
    return UFMOptimum(
        c=c,
        objective=f(p),
        fit=p,
        mean_norm_sq=h_sq,
        norm_W_sq=K * a_sq,
        norm_H_sq=K * n * h_sq,
        bias=None,
    )


def frame_distance(K: int) -> float:
    """‖A − B‖_F between the unit-norm orthogonal frame I/√K and simplex ETF (I − 11ᵀ/K)/√(K−1).

    Equal to √(2 − 2√((K−1)/K)) (0.5176 for K = 4): the NC2 of an ETF measured against
    the orthogonal frame and vice versa, and the ETF-NC3 of W ∝ Mᵀ when MᵀM ∝ I (derived).
    """
    if int(K) != K or K < 2:
        raise ValueError(f"K must be an integer >= 2, got {K}")
    return math.sqrt(2.0 - 2.0 * math.sqrt((K - 1) / K))
