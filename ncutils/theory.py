"""Closed-form predictions for the unconstrained-features models (Tirer & Bruna 2022; Súkeník, Mondelli &
Lampert 2023; Tirer, Huang & Niles-Weed 2023; Ji et al. 2022), summarized in ``docs/notation.md``.

Notation of Tirer & Bruna (ICML 2022), bias-free MSE UFM

    f(W, H) = 1/(2Kn) ‖WH − Y‖²_F + (λ_W/2) ‖W‖²_F + (λ_H/2) ‖H‖²_F,

K classes, n samples per class. The *threshold* ``c = K √(n λ_H λ_W)`` decides
between a collapsed orthogonal frame (c < 1) and the trivial minimizer (c ≥ 1).

Formulas marked (derived) are consequences of the papers' theorems (not stated in them) that the
unit tests confirm against gradient descent (``tests/test_theory_models.py``, ``tests/test_deep_ufm.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ._validate import bad_type, check_choice, check_float, check_floats, check_int

__all__ = [
    "DeepUFMOptimum",
    "PerturbationJacobian",
    "SRGConstruction",
    "UFMOptimum",
    "ULPMOptimum",
    "dufm_collapsed_objective",
    "dufm_fit",
    "dufm_optimum",
    "dufm_q",
    "dufm_threshold",
    "eufm_optimum",
    "eufm_threshold",
    "frame_distance",
    "perturbation_jacobian",
    "perturbation_to_ufm",
    "srg_construction",
    "srg_loss",
    "srg_r",
    "ufm_ce_optimum",
    "ufm_fit",
    "ufm_mean_norm_sq",
    "ufm_mse_optimum",
    "ufm_objective_star",
    "ufm_threshold",
    "ulpm_optimum",
]


class _Record:
    """Mixin of the closed-form records: ``as_dict()`` for JSON summaries."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)  # type: ignore[call-overload]


def _check(K: int, n: int, lambda_W: float, lambda_H: float, positive: bool = True) -> None:
    check_int("K", K, 2)
    check_int("n", n, 1)
    check_float("lambda_W", lambda_W, 0.0, strict_low=positive)
    check_float("lambda_H", lambda_H, 0.0, strict_low=positive)


@dataclass(frozen=True)
class UFMOptimum(_Record):
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


def ufm_threshold(K: int, n: int, lambda_W: float, lambda_H: float) -> float:
    """c = K √(n λ_H λ_W) (Tirer & Bruna 2022, Thm 3.1): collapse iff c < 1, (0, 0) iff c ≥ 1."""
    _check(K, n, lambda_W, lambda_H, positive=False)
    return K * math.sqrt(n * lambda_H * lambda_W)


def ufm_fit(K: int, n: int, lambda_W: float, lambda_H: float) -> float:
    """s = 1 − c (0 past the threshold): W M = s I at the optimum (derived from Tirer & Bruna 2022, Thm 3.1)."""
    return max(1.0 - ufm_threshold(K, n, lambda_W, lambda_H), 0.0)


def ufm_mean_norm_sq(K: int, n: int, lambda_W: float, lambda_H: float) -> float:
    """ρ = ‖μ_k‖² = (1 − c) √(λ_W / (n λ_H)), MᵀM = ρ I (derived from Tirer & Bruna 2022, Thm 3.1)."""
    _check(K, n, lambda_W, lambda_H)
    return ufm_fit(K, n, lambda_W, lambda_H) * math.sqrt(lambda_W / (n * lambda_H))


def ufm_objective_star(K: int, n: int, lambda_W: float, lambda_H: float, bias: bool = False) -> float:
    """f* = c − c²/2 for c ≤ 1, else 1/2; times (K−1)/K with an unregularized bias (derived from Tirer & Bruna
    2022, Thm 3.1)."""
    c = min(ufm_threshold(K, n, lambda_W, lambda_H), 1.0)
    f = c - c * c / 2
    return (K - 1) / K * f if bias else f


def ufm_mse_optimum(K: int, n: int, lambda_W: float, lambda_H: float, bias: bool = False) -> UFMOptimum:
    """All invariants of the MSE-UFM minimizer (Tirer & Bruna 2022, Thm 3.1; closed forms derived).

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
    check_int("K", K, 2)
    return math.sqrt(2.0 - 2.0 * math.sqrt((K - 1) / K))


# --------------------------------------------------------------------------- #
# Extended (L = 2) and deep UFM: the collapsed branch (Tirer & Bruna 2022, §4; Súkeník et al. 2023; derived)
# --------------------------------------------------------------------------- #
def _check_lambdas(n: int, lambda_W: Sequence[float], lambda_H: float) -> tuple[float, ...]:
    """``lambda_W`` (one weight decay per layer) as a tuple of floats, after checking n, λ_W and λ_H > 0."""
    check_int("n", n, 1)
    what = "a non-empty list of finite numbers in (0, inf) (one weight decay per layer)"
    if isinstance(lambda_W, str | bytes) or not isinstance(lambda_W, Sequence | np.ndarray):
        raise bad_type("lambda_W", what, lambda_W)
    lams = check_floats("lambda_W", lambda_W, 0.0, strict_low=True)
    check_float("lambda_H", lambda_H, 0.0, strict_low=True)
    return lams  # type: ignore[return-value]


def dufm_q(n: int, lambda_W: Sequence[float], lambda_H: float) -> float:
    """q = (n λ_{H₁} Π_l λ_{W_l})^{1/m}, m = L + 1 (Súkeník, Mondelli & Lampert 2023, Thm 3; the EUFM's q of
    Tirer & Bruna 2022, §4, for L = 2).

    ``lambda_W``: the weight decays λ_{W_1}, …, λ_{W_L}, one per layer; ``lambda_H``: λ_{H₁}."""
    lams = _check_lambdas(n, lambda_W, lambda_H)
    m = len(lams) + 1
    return math.exp((math.log(n) + math.log(lambda_H) + sum(math.log(x) for x in lams)) / m)


def dufm_collapsed_objective(s: float, K: int, q: float, m: int) -> float:
    """g(s) = (s − 1)²/2 + (K m/2) q s^{2/m}: the objective of the collapsed branch whose output
    class means are s·I (derived from Súkeník, Mondelli & Lampert 2023, Thm 3: the regularizer of m balanced
    factors by AM–GM)."""
    return (s - 1.0) ** 2 / 2 + K * m / 2 * q * s ** (2.0 / m)


def dufm_threshold(m: int) -> float:
    """Largest (K m/2)·q with a non-zero collapsed minimizer: ((m−2)/(m−1))^{(m−2)/m} · m/(2(m−1)).

    For m = 3 (the extended UFM) this is K·q ≤ 2^{−4/3}; for m = 2 (plain UFM) c = Kq ≤ 1 (derived;
    Tirer & Bruna 2022, §4 and Thm 3.1). At the threshold the minimizing s jumps from (m−2)/(m−1) to 0.
    """
    check_int("m", m, 2)
    return ((m - 2) / (m - 1)) ** ((m - 2) / m) * m / (2 * (m - 1))


def dufm_spinodal(m: int) -> float:
    """Largest (K m/2)·q at which the collapsed branch is still a local minimum (m = L + 1 ≥ 2).

    Derived from :func:`dufm_fit` (``docs/notation.md``): with a = 1 − 2/m, h(s) = s − 1 + Kq s^{−a} has a root
    only while its minimum h(s₀) ≤ 0, i.e. s₀ = a/(1+a) and Kq ≤ (a/(1+a))^{1+a}/a. Between
    :func:`dufm_threshold` and this value the collapsed solution is metastable (GD from a large
    initialization can still end there); for m = 2 both are 1 (c = 1).
    """
    check_int("m", m, 2)
    if m == 2:
        return 1.0
    a = 1.0 - 2.0 / m
    return m / 2 * (a / (1 + a)) ** (1 + a) / a


def eufm_threshold() -> float:
    """2^{−4/3} ≈ 0.3969: the extended UFM has a non-zero minimizer iff K·q ≤ 2^{−4/3} (derived for Tirer &
    Bruna 2022, §4)."""
    return 2.0 ** (-4.0 / 3.0)


def dufm_fit(K: int, q: float, m: int, branch: str = "global") -> float:
    """s* = argmin_{s ∈ [0, 1]} g(s) (:func:`dufm_collapsed_objective`), solved to machine precision.

    For m = 2, s* = max(1 − Kq, 0). For m > 2 the stationary points solve
    s − 1 + K q s^{2/m − 1} = 0; the local minimum is the larger root, found by Brent's method
    (SciPy) on [s₀, 1] with s₀ the minimizer of the left-hand side; s* = 0 when g there is not
    below g(0) = 1/2 (ties at the threshold go to the collapsed branch).
    ``branch="collapsed"`` returns the local minimum s > 0 even past the threshold, where it
    is a *metastable* collapsed solution GD can still converge to (0 once it has disappeared).
    """
    check_choice("branch", branch, ("global", "collapsed"))
    check_int("K", K, 2)
    check_int("m", m, 2)
    check_float("q", q, 0.0)
    return _balanced_fit(K * q, m, branch)


def _balanced_fit(B: float, m: int, branch: str = "global") -> float:
    """argmin_{s ∈ [0, 1]} (s − 1)²/2 + (m/2) B s^{2/m}: :func:`dufm_fit` with B = K q (also the SRG branch's
    fit, :func:`srg_construction`, whose B is the constant Q of its m balanced factors)."""
    if m == 2:  # g is convex: no metastable branch
        return max(1.0 - B, 0.0)
    if B == 0:
        return 1.0
    from scipy.optimize import brentq

    e = 2.0 / m - 1.0  # h(s) = s − 1 + B s^e, e ∈ (−1, 0)
    s0 = (B * (1.0 - 2.0 / m)) ** (1.0 / (1.0 - e))  # h'(s0) = 0
    if s0 >= 1.0 or s0 - 1.0 + B * s0**e > 0:
        return 0.0
    s = brentq(lambda x: x - 1.0 + B * x**e, s0, 1.0, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=200)
    return s if branch == "collapsed" or (s - 1.0) ** 2 / 2 + m / 2 * B * s ** (2.0 / m) <= 0.5 else 0.0


@dataclass(frozen=True)
class DeepUFMOptimum(_Record):
    """The collapsed minimizer of the L-layer UFM (:class:`ncutils.models.DeepUFM`), derived from
    Súkeník, Mondelli & Lampert 2023, Thm 3 (``docs/notation.md``).

    Every factor carries the same share T = q s^{2/m} of the regularizer (balancedness
    λ_{H₁}‖H₁‖² = λ_{W_l}‖W_l‖² = K T), the output class means are s·I, the levels' class
    means have equal norms a_l and, where the theory says so, form orthogonal frames.

    Attributes
    ----------
    L, m : layers and number of factors m = L + 1.
    q, s, T : q = (nλ_{H₁}Πλ_{W_l})^{1/m}, the fit s (output means s·I), T = q s^{2/m}.
    objective : f* of the collapsed branch (f_DNC of Súkeník et al.); 1/2 when s = 0.
    mean_norm_sq : a_l² = ‖μ_k‖² at levels H1 … HL: a₁² = T/(nλ_{H₁}), a_{l+1}² = a_l² T/λ_{W_l}.
    norm_W_sq : ‖W_l‖²_F = K T/λ_{W_l}, l = 1 … L.
    norm_H_sq : ‖H₁‖²_F = K T/λ_{H₁}.
    threshold, threshold_max : (K m/2)·q and its largest value with a non-zero minimizer.
    collapsed : s > 0.
    """

    L: int
    m: int
    q: float
    s: float
    T: float
    objective: float
    mean_norm_sq: tuple[float, ...]
    norm_W_sq: tuple[float, ...]
    norm_H_sq: float
    threshold: float
    threshold_max: float
    collapsed: bool


def dufm_optimum(K: int, n: int, lambda_W: Sequence[float], lambda_H: float, branch: str = "global") -> DeepUFMOptimum:
    """Collapsed-branch optimum of the L-layer UFM with λ_{W_1..W_L} = ``lambda_W`` (one weight decay per
    layer, L ≥ 1) and λ_{H₁} = ``lambda_H`` (the argument order of :func:`ufm_mse_optimum`).

    ``branch="collapsed"``: the metastable collapsed local minimum past the threshold instead
    (see :func:`dufm_fit`); ``collapsed`` is False once it has disappeared.

    Derived (``docs/notation.md``): f_DNC = min_{s∈[0,1]} (s−1)²/2 + (Km/2) q s^{2/m}. It is the global optimum
    of the linear model and, for K = 2, of the ReLU model (Súkeník et al. 2023, Thm 3); for K > 2,
    L ≥ 3 ReLU models reach lower, low-rank solutions (Súkeník et al. 2024). L = 1 is the plain UFM.
    """
    check_int("K", K, 2)
    lams = _check_lambdas(n, lambda_W, lambda_H)
    L, m = len(lams), len(lams) + 1
    q = dufm_q(n, lams, lambda_H)
    s = dufm_fit(K, q, m, branch)
    T = q * s ** (2.0 / m)
    norms = [T / (n * lambda_H)]
    for lam in lams[:-1]:
        norms.append(norms[-1] * T / lam)
    return DeepUFMOptimum(
        L=L, m=m, q=q, s=s, T=T, objective=dufm_collapsed_objective(s, K, q, m),
        mean_norm_sq=tuple(norms), norm_W_sq=tuple(K * T / lam for lam in lams),
        norm_H_sq=K * T / lambda_H, threshold=K * m / 2 * q, threshold_max=dufm_threshold(m),
        collapsed=s > 0,
    )


def eufm_optimum(K: int, n: int, lambda_W1: float, lambda_W2: float, lambda_H1: float) -> DeepUFMOptimum:
    """The extended UFM (Tirer & Bruna 2022, §4), linear or ReLU: :func:`dufm_optimum` with L = 2.

    Derived (``docs/notation.md``): q = (nλ_{H₁}λ_{W₁}λ_{W₂})^{1/3}, f* = min_s (s−1)²/2 + (3K/2) q s^{2/3},
    non-zero iff K q ≤ 2^{−4/3}; ‖μ₁‖² = T/(nλ_{H₁}), ‖μ₂‖² = ‖μ₁‖² T/λ_{W₁}, M₂ᵀM₂ = ‖μ₂‖² I.
    """
    return dufm_optimum(K, n, (lambda_W1, lambda_W2), lambda_H1)


# --------------------------------------------------------------------------- #
# Deep UFM, K > 2: the low-rank SRG construction (Súkeník, Lampert & Mondelli 2024, §4; derived)
# --------------------------------------------------------------------------- #
def srg_r(K: int) -> int:
    """r with K = r(r − 1)/2 (the classes are the edges of the complete graph K_r); ValueError if K is not
    such a triangular number (K = 3, 6, 10, 15, 21, 28, …)."""
    check_int("K", K, 3)
    r = round((1 + math.sqrt(1 + 8 * K)) / 2)
    if r * (r - 1) // 2 != K:
        raise ValueError(f"the SRG construction needs K = r(r-1)/2 classes (3, 6, 10, 15, ...), got K = {K}")
    return r


def _incidence(r: int) -> np.ndarray:
    """Vertex–edge incidence X ∈ {0,1}^{r×K} of K_r, edges in lexicographic order: X_{i,e} = 1[i ∈ e]."""
    from itertools import combinations

    edges = list(combinations(range(r), 2))
    X = np.zeros((r, len(edges)))
    for e, (i, j) in enumerate(edges):
        X[i, e] = X[j, e] = 1.0
    return X


@dataclass(frozen=True)
class SRGConstruction(_Record):
    """The low-rank SRG solution of the deep UFM (:func:`srg_construction`).

    Attributes
    ----------
    K, r, L, m : classes K = r(r−1)/2, the rank r of the intermediate class means, layers, m = L + 1 factors.
    beta : the shift β ∈ [0, ½] of the top pre-activations |e∩f| − 2β (½: their ReLU is the identity).
    C : scale of the top level's post-ReLU class means C·P_β, P_β = (2−2β) I + (1−2β) A (A: adjacency of
        the triangular graph T(r), strongly regular).
    fit : mean diagonal of the output class means (s·I when β = ½).
    objective : L_SRG (1/2 when C = 0).
    dnc_objective, ratio : f_DNC (:func:`dufm_optimum`) and L_SRG / f_DNC.
    scales : scales t_0 … t_{L−1} of H1, W_1 … W_{L−1} (Π t_j = C; α_j t_j² equal for every j).
    ranks : rank of the class means at H1 … HL (pre-ReLU at H1, post-ReLU above): r, …, r, K (L = 2: rank Z).
    pre_relu_rank : rank of the pre-activations W_{L−1} M_{L−1} of the top level (≤ r).
    params : the DeepUFM parameters (``H1 (S, N, d_1)``, ``W{l} (S, d_{l+1}, d_l)``), S copies; not in ``as_dict``.
    """

    K: int
    r: int
    L: int
    m: int
    beta: float
    C: float
    fit: float
    objective: float
    dnc_objective: float
    ratio: float
    scales: tuple[float, ...]
    ranks: tuple[int, ...]
    pre_relu_rank: int
    params: dict = field(default_factory=dict, repr=False, compare=False)

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k != "params"}  # type: ignore[call-overload]


class _SRG:
    """The SRG branch at fixed (r, n, λ): the loss as a function of (β, C) and its minimizer."""

    def __init__(self, r: int, n: int, lams: tuple[float, ...], lambda_H: float) -> None:
        self.r, self.n, self.lams, self.lambda_H = r, n, lams, lambda_H
        self.K, self.L = r * (r - 1) // 2, len(lams)
        self.X = _incidence(r)
        # eigenvalues θ_k of the triangular graph T(r) and their multiplicities (r = 3: K_3, no third eigenspace)
        self.theta = np.array([2.0 * (r - 2), r - 4.0, -2.0])
        self.dims = np.array([1.0, r - 1.0, self.K - r])

    def pre(self, beta: float) -> np.ndarray:
        """Top pre-activations (K, K) per unit scale: |e∩f| − 2β."""
        return self.X.T @ self.X - 2.0 * beta

    def alphas(self, beta: float) -> tuple[list[float], np.ndarray]:
        """Weights α_j of the first L factors (H1, W_1 … W_{L−1}) and the matrix the pair (H1, W1) factorizes."""
        r, K, L, lams = self.r, self.K, self.L, self.lams
        B = self.X if L >= 3 else self.pre(beta)
        # nuclear norms in closed form: σ(X)² = 2r−2 (once), r−2 (r−1 times); XᵀX − 2βJ has eigenvalues
        # 2r−2−2βK (on 1), r−2 (r−1 times), 0
        nuc = (math.sqrt(2 * r - 2) + (r - 1) * math.sqrt(r - 2) if L >= 3
               else abs(2 * r - 2 - 2 * beta * K) + (r - 1) * (r - 2))
        pair = math.sqrt(self.n * self.lambda_H * lams[0]) * nuc
        alphas = [pair, pair]
        if L >= 3:
            alphas += [r * lam for lam in lams[1:L - 2]]
            alphas.append(K * (2 * (1 - beta) ** 2 + (r - 2) * beta**2) * lams[L - 2])  # rows e_i + e_j − β1
        return alphas, B

    def loss(self, beta: float, C: float) -> float:
        alphas, _ = self.alphas(beta)
        lamL, K, L = self.lams[-1], self.K, self.L
        reg = L / 2 * math.exp(sum(math.log(a) for a in alphas) / L) * C ** (2.0 / L)
        p = (2 - 2 * beta) + (1 - 2 * beta) * self.theta
        return reg + float((self.dims * lamL / (2 * (C**2 * p**2 + K * lamL))).sum())

    def best_C(self, beta: float) -> tuple[float, float]:
        from scipy.optimize import minimize_scalar

        grid = np.exp(np.linspace(-12, 6, 181))
        vals = [self.loss(beta, c) for c in grid]
        k = int(np.argmin(vals))
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        res = minimize_scalar(lambda u: self.loss(beta, math.exp(u)), bounds=(math.log(lo), math.log(hi)),
                              method="bounded", options={"xatol": 1e-13})
        C, f = math.exp(res.x), float(res.fun)
        return (C, f) if f < 0.5 else (0.0, 0.5)

    def best(self, beta: float | None) -> tuple[float, float, float]:
        if beta is not None:
            return (beta, *self.best_C(beta))
        from scipy.optimize import minimize_scalar

        grid = np.linspace(0.0, 0.5, 51)
        vals = [self.best_C(b)[1] for b in grid]
        k = int(np.argmin(vals))
        res = minimize_scalar(lambda b: self.best_C(b)[1], bounds=(grid[max(k - 1, 0)], grid[min(k + 1, 50)]),
                              method="bounded", options={"xatol": 1e-12})
        b = float(res.x) if res.fun <= vals[k] else float(grid[k])
        return (b, *self.best_C(b))


def _srg_setup(K: int, n: int, lambda_W: Sequence[float], lambda_H: float, beta: float | None) -> _SRG:
    r = srg_r(K)
    lams = _check_lambdas(n, lambda_W, lambda_H)
    if len(lams) < 2:
        raise ValueError("the SRG construction needs L >= 2 layers (one ReLU)")
    if beta is not None:
        check_float("beta", beta, 0.0)
        if beta > 0.5:
            raise ValueError(f"beta must lie in [0, 1/2], got {beta}")
    return _SRG(r, n, lams, lambda_H)


def srg_loss(K: int, n: int, lambda_W: Sequence[float], lambda_H: float, beta: float | None = None) -> float:
    """L_SRG: the loss of the SRG construction (:func:`srg_construction`) of the L-layer ReLU deep UFM,
    K = r(r−1)/2, L = len(lambda_W) ≥ 2 (the loss alone, no tensors)."""
    return _srg_setup(K, n, lambda_W, lambda_H, beta).best(beta)[2]


def srg_construction(K: int, n: int, lambda_W: Sequence[float], lambda_H: float, d: int | Sequence[int] | None = None,
                     beta: float | None = None, runs: int = 1, dtype: object = None) -> SRGConstruction:
    """The low-rank "strongly regular graph" (SRG) solution of the L-layer ReLU deep UFM
    (:class:`ncutils.models.DeepUFM`, MSE, no bias) of Súkeník, Lampert & Mondelli (NeurIPS 2024,
    arXiv 2405.14468, §4 and Fig. 1; Fig. 3 left plots L_SRG/L_DNC against r for K = r(r−1)/2), with its loss
    and explicit parameters to start GD from.

    The classes are the K = r(r−1)/2 edges of the complete graph K_r; their line graph, the triangular graph
    T(r) (adjacency A), is strongly regular. The paper's §4 text was not available to us: the construction is
    *derived* from Fig. 1's description (rows of M_{L−1} with r − 1 equal non-zeros, rank M_L = r before and
    K after the ReLU) and from first principles; L_SRG is its exact loss (an upper bound on the optimum), not
    the paper's formula verbatim.

    Derivation. X ∈ {0,1}^{r×K} is the vertex–edge incidence. All classes collapse (DNC1); levels
    H2 … H_{L−1} have class means c_l X (non-negative, rank r, kept by the ReLU, W_l = t_l I_r in between);
    W_{L−1} has rows e_i + e_j − β1 (edge e = ij), so the top pre-activations (|e∩f| − 2β) have rank ≤ r and
    their ReLU is C·P_β, P_β = (2−2β)I + (1−2β)A, of rank K; W_L = C P_β (C²P_β² + Kλ_{W_L} I)⁻¹ (ridge).
    (H1, W1) is the balanced factorization of c_2 X (of the pre-activations when L = 2), costing
    √(nλ_{H₁}λ_{W₁})‖·‖_*; AM–GM over the other factors gives
    L_SRG = min_{β,C} (L/2)(Π_{j<L} α_j)^{1/L} C^{2/L} + Σ_k d_k λ_{W_L} / (2(C² p_k² + Kλ_{W_L})), with
    α = √(nλ_Hλ_1)‖X‖_*·(1, 1), rλ_{W_l} (l = 2 … L−2), K(2(1−β)² + (r−2)β²)λ_{W_{L−1}}, and p_k, d_k the
    eigenvalues and multiplicities of P_β (T(r): 2(r−2), r−4, −2 with multiplicities 1, r−1, K−r).
    β = ½ (an orthogonal frame on top) reduces it to the DNC form with Kq replaced by Q = (Π_j α_j)^{1/m}.

    Parameters
    ----------
    K : classes, K = r(r−1)/2 with r ≥ 3.
    n, lambda_W, lambda_H : as :func:`dufm_optimum` (λ_{W_1..W_L}, L = len(lambda_W) ≥ 2; λ_{H₁}).
    d : widths of the DeepUFM levels (an int or L ints; default K): d_l ≥ r below the top (L = 2: ≥ the rank
        of the pre-activations), d_L ≥ K.
    beta : the shift β ∈ [0, ½]; None (default): minimize over it.
    runs, dtype : S copies of the parameters (leading dimension) and their torch dtype (default float64).
    """
    import torch

    srg = _srg_setup(K, n, lambda_W, lambda_H, beta)
    r, L, lams = srg.r, srg.L, srg.lams
    check_int("runs", runs, 1)
    widths = (K,) * L if d is None else ((d,) * L if isinstance(d, int) else tuple(d))
    b, C, objective = srg.best(beta)
    alphas, B = srg.alphas(b)
    TL = math.exp(sum(math.log(a) for a in alphas) / L) * C ** (2.0 / L) if C > 0 else 0.0
    t = [math.sqrt(TL / a) for a in alphas]  # α_j t_j² equal, Π t_j = C

    U, sv, Vt = np.linalg.svd(B, full_matrices=False)
    rho = int((sv > 1e-12 * sv[0]).sum())
    U, sv, Vt = U[:, :rho], sv[:rho], Vt[:rho]
    need = [rho] + [r] * (L - 2) + [K] if L >= 3 else [rho, K]
    if len(widths) != L or any(not isinstance(w, int) or w < k for w, k in zip(widths, need, strict=True)):
        raise ValueError(f"the SRG construction needs widths d of L = {L} ints >= {need}, got {d!r}")
    scale = (lams[0] / (n * lambda_H)) ** 0.25  # nλ_H‖M1‖² = λ_1‖W1‖² within the pair
    M1 = scale * t[0] * np.sqrt(sv)[:, None] * Vt  # (ρ, K): H1's class means
    mats = [t[1] / scale * U * np.sqrt(sv)[None, :]]  # W1: W1 M1 = t_0 t_1 B
    if L >= 3:
        mats += [t[j] * np.eye(r) for j in range(2, L - 1)]  # W_2 … W_{L−2}
        mats.append(t[L - 1] * (srg.X.T - b))  # W_{L−1} (K, r): rows e_i + e_j − β1
    P = C * np.maximum(srg.pre(b), 0.0)  # top level's post-ReLU class means C·P_β
    WL = P @ np.linalg.inv(P @ P + K * lams[-1] * np.eye(K)) if C > 0 else np.zeros((K, K))
    mats.append(WL)
    dims = (*widths, K)
    tdtype = torch.float64 if dtype is None else dtype
    H1 = np.zeros((K * n, dims[0]))
    H1[:, :M1.shape[0]] = np.repeat(M1.T, n, axis=0)  # class-major rows
    params = {"H1": torch.as_tensor(H1, dtype=tdtype).expand(runs, -1, -1).clone()}
    for layer, Wm in enumerate(mats, start=1):
        W = np.zeros((dims[layer], dims[layer - 1]))
        W[:Wm.shape[0], :Wm.shape[1]] = Wm
        params[f"W{layer}"] = torch.as_tensor(W, dtype=tdtype).expand(runs, -1, -1).clone()
    f_dnc = dufm_optimum(K, n, lams, lambda_H).objective
    pre_rank = int(np.linalg.matrix_rank(srg.pre(b)))
    ranks = (rho,) + (r,) * (L - 2) + (K,)
    return SRGConstruction(K=K, r=r, L=L, m=L + 1, beta=b, C=C, fit=float(np.trace(WL @ P)) / K,
                           objective=objective, dnc_objective=f_dnc, ratio=objective / f_dnc, scales=tuple(t),
                           ranks=ranks, pre_relu_rank=pre_rank, params=params)


# --------------------------------------------------------------------------- #
# §5 perturbation model (Tirer, Huang & Niles-Weed 2023)
# --------------------------------------------------------------------------- #
def perturbation_to_ufm(K: int, n: int, lambda_W: float, lambda_H: float) -> tuple[float, float]:
    """Map the perturbation paper's (λ_W, λ_H) to Tirer & Bruna's: (λ_W/K, λ_H/(Kn)) (Tirer, Huang & Niles-Weed
    2023, Eq. 3 vs Tirer & Bruna 2022, Eq. 3).

    Their f = 1/(2Kn)‖WH − Y‖² + λ_W/(2K)‖W‖² + λ_H/(2Kn)‖H‖² equals TB's f with
    λ'_W = λ_W/K and λ'_H = λ_H/(Kn); then c = K√(nλ'_Hλ'_W) = √(λ_Hλ_W).
    """
    _check(K, n, lambda_W, lambda_H, positive=False)
    return lambda_W / K, lambda_H / (K * n)


@dataclass(frozen=True)
class PerturbationJacobian(_Record):
    """Theorem 4.2 of Tirer, Huang & Niles-Weed 2023 (β ≫ max(1, λ_H), λ_Hλ_W < 1, d > K).

    ``diag_sigma_max``/``diag_sigma_min``: extreme singular values of a diagonal block F_kk;
    ``offdiag_rank``/``offdiag_sigma_max``: of an off-diagonal block F_kk' (k ≠ k').
    """

    diag_sigma_max: float
    diag_sigma_min: float
    offdiag_rank: int
    offdiag_sigma_max: float


def perturbation_jacobian(lambda_W: float, lambda_H: float, beta: float) -> PerturbationJacobian:
    """Predicted spectrum of F = ∂vec(H*)/∂vec(H₀) at a collapsed H₀ (THN 2023, Thm 4.2), their λs.

    σ_max(F_kk) = 1, σ_min(F_kk) = 1 − √(λ_H/λ_W)/β; F_kk' has rank 1 and
    σ_max = 2λ_H(1 − √(λ_Hλ_W))/β (first order in 1/β).
    """
    for name, v in (("lambda_W", lambda_W), ("lambda_H", lambda_H), ("beta", beta)):
        check_float(name, v, 0.0, strict_low=True)
    if lambda_H * lambda_W >= 1:
        raise ValueError("parameters lambda_H and lambda_W must satisfy lambda_H * lambda_W < 1 (Theorem 4.2 needs "
                         f"a collapsed H0), got lambda_H * lambda_W = {lambda_H * lambda_W}")
    return PerturbationJacobian(
        diag_sigma_max=1.0,
        diag_sigma_min=1.0 - math.sqrt(lambda_H / lambda_W) / beta,
        offdiag_rank=1,
        offdiag_sigma_max=2 * lambda_H * (1 - math.sqrt(lambda_H * lambda_W)) / beta,
    )


# --------------------------------------------------------------------------- #
# §6 unconstrained layer-peeled model (Ji et al. 2022)
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class ULPMOptimum(_Record):
    """Minimum-norm separation: min ½(‖W‖² + ‖H‖²) s.t. (w_k − w_j)ᵀh_{k,i} ≥ 1 (Ji et al. 2022, Eq. 5).

    ``value``: √n(K−1); ``norm_w_sq``: ‖w_k‖² = √n(K−1)/K; ``mean_norm_sq``: ‖μ_k‖² =
    (K−1)/(K√n); ``normalized_margin``: 1/(√n(K−1)), the limit of the margin divided by
    ½(‖W‖² + ‖H‖²) along gradient flow on the unregularized CE (derived).
    """

    value: float
    norm_w_sq: float
    mean_norm_sq: float
    normalized_margin: float


def ulpm_optimum(K: int, n: int) -> ULPMOptimum:
    """Closed form of the ULPM's max-margin problem (Ji et al. 2022, Eq. 5; the value is derived).

    On a simplex ETF with ‖w_k‖ = a, ‖h‖ = m, W ∝ M̃ᵀ: margin a·m·K/(K−1) = 1 and
    ½(K a² + Kn m²) is minimal at a² = n m², giving the value K a² = √n(K−1).
    """
    _check(K, n, 1.0, 1.0)
    value = math.sqrt(n) * (K - 1)
    return ULPMOptimum(value=value, norm_w_sq=value / K, mean_norm_sq=(K - 1) / (K * math.sqrt(n)),
                       normalized_margin=1.0 / value)
