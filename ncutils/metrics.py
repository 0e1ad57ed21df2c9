"""Neural-collapse metrics NC1–NC4: the one definition used everywhere in ncutils.

Every formula is the one of ``docs/notation.md`` (shapes, NC1–NC4 as implemented
here), reproduced in each docstring below with the paper it comes from.

Conventions
-----------
* Features ``H`` are **rows**: shape ``(N, d)``; labels ``y`` are integers in
  ``[0, K)`` of shape ``(N,)``. The papers write ``H ∈ R^{d×N}``.
* :func:`class_means` returns the means as rows, ``(K, d)``; the papers' class-mean
  matrix is ``M = class_means(H, y).T ∈ R^{d×K}``.
* The global mean ``μ_G`` is the **mean of the class means**,
  ``μ_G = (1/K) Σ_k μ_k``. For balanced data it equals the sample mean; for
  unbalanced data it weighs every class equally (so Σ_B does not favour large
  classes).
* ``Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`` and
  ``Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ``.
* Inputs may be numpy arrays or torch tensors on any device; every metric is
  computed in float64 on the input's device and returned as a Python float.
* Classifier ``W`` is ``(K, d)`` (rows are the class vectors ``w_k``), bias ``b`` is
  ``(K,)``.

The ``*_t`` functions are the batched torch cores: they accept leading batch
dimensions on ``H`` (``(..., N, d)``) and ``W`` (``(..., K, d)``) with shared labels, do
no validation, and return tensors. The solvers use them to record the metrics
of many problems at once; the public functions validate and call them.

Degenerate inputs
-----------------
Inputs whose class means coincide never read as collapse. Let s² = (1/N) Σ_i ‖h_i‖² (the mean
squared feature norm) and τ = 16·N·ε (ε the float64 machine epsilon: the worst-case round-off of a
mean of N numbers, with slack). Then **Σ_B = 0** when tr Σ_B ≤ τ²·s² and **Σ_W = 0** when
tr Σ_W ≤ τ²·s² (scale-free; all-zero features have both). When Σ_B = 0:

* ``nc1``, ``nc1_trace`` (ratios of within- to between-class spread) are ``inf`` if Σ_W ≠ 0 and
  ``nan`` if Σ_W = 0 too (0/0: all features equal);
* every metric of the class-mean geometry is ``nan``: ``nc2`` (both frames), ``nc2_equinorm``,
  ``nc2_equiangle``, ``nc2_maxangle``, ``nc2_equinorm_uncentred``, ``nc3`` (both frames), ``nc3_gram``,
  and ``nc4`` (its nearest-class-mean classifier is undefined when the means coincide);
* :func:`class_mean_rank` is 0.

Statistics that are not ratios or geometries (``mean_norm_sq``, ``global_mean_norm``, the
classifier's ``nc2_equinorm_weights``, the singular values) keep their values. A partial
degeneracy (one class mean equal to the global mean, K ≥ 3) is not caught: the metrics take their
values by their formulas (a cosine with a zero vector is ``nan``).

Rank-aware NC1
--------------
``rank_tol=r`` (in (0, 1)) in :func:`nc1` and :func:`nc_metrics` replaces Σ_B^† by the pseudo-inverse
that keeps only the singular directions of the centred means M̃ with σ_k > r·σ_1: near-low-rank
means, whose tiny directions would dominate tr(Σ_W Σ_B^†), count as rank-deficient. The number of
directions kept is :func:`class_mean_rank`. ``rank_tol=None`` keeps the round-off cut
σ_k > max(K, d)·ε·σ_1, which also bounds every ``rank_tol`` from below.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ._validate import ParameterTypeError, bad_type, check_bool, check_choice, check_float, check_int

__all__ = [
    "Frame",
    "between_class_cov",
    "class_mean_rank",
    "class_mean_singular_values",
    "class_means",
    "max_margin_distance",
    "nc1",
    "nc1_trace",
    "nc2",
    "nc2_equiangle",
    "nc2_equiangle_weights",
    "nc2_equinorm",
    "nc2_equinorm_weights",
    "nc2_maxangle",
    "nc2_maxangle_weights",
    "nc3",
    "nc3_gram",
    "nc3_squared",
    "nc4",
    "nc_metrics",
    "normalized_margin",
    "within_class_cov",
]

Frame = Literal["etf", "orthogonal"]
ArrayLike = np.ndarray | Tensor
_FRAMES = ("etf", "orthogonal")


# --------------------------------------------------------------------------- #
# validation and conversion
# --------------------------------------------------------------------------- #
def _as_float64(x: ArrayLike, name: str, device: torch.device | None = None) -> Tensor:
    if isinstance(x, Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray | list | tuple):
        t = torch.as_tensor(np.asarray(x))
    else:
        raise bad_type(name, "a numpy array or torch tensor", x)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise ParameterTypeError(f"parameter {name} must be an array of real numbers, got dtype {t.dtype}")
    t = t.to(device=device if device is not None else t.device, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"parameter {name} must be finite (metrics need finite input), got {bad} NaN or inf values")
    return t


def _check_features(
    H: ArrayLike, y: ArrayLike, num_classes: int | None = None
) -> tuple[Tensor, Tensor, int]:
    """Validate ``H`` (N, d) and ``y`` (N,) and return (H float64, y int64, K)."""
    Ht = _as_float64(H, "H")
    if Ht.ndim != 2:
        raise ValueError(f"parameter H must be a 2-D (N, d) array of feature rows, got shape {tuple(Ht.shape)}")
    N = Ht.shape[0]
    yt = y.detach() if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
    if yt.ndim != 1 or yt.shape[0] != N:
        raise ValueError(
            f"y must have shape (N,) = ({N},) to match H of shape {tuple(Ht.shape)}, got {tuple(yt.shape)}"
        )
    if yt.is_floating_point() or yt.is_complex() or yt.dtype == torch.bool:
        raise ParameterTypeError(f"parameter y must be an array of integer class labels, got dtype {yt.dtype}")
    yt = yt.to(device=Ht.device, dtype=torch.int64)
    if N == 0:
        raise ValueError("parameters H and y are empty (N = 0); metrics need at least one sample per class")
    if int(yt.min()) < 0:
        raise ValueError(f"parameter y must hold labels in [0, K), got label {int(yt.min())}")
    K = int(yt.max()) + 1 if num_classes is None else check_int("num_classes", num_classes, 2)
    if K < 2:
        raise ValueError(f"parameter y must hold labels of K >= 2 classes (neural collapse needs two), got K = {K}")
    if int(yt.max()) >= K:
        raise ValueError(f"parameter y must hold labels in [0, K) = [0, {K}), got label {int(yt.max())}")
    counts = torch.bincount(yt, minlength=K)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"parameter y: class(es) {empty} have no samples; every class in [0, {K}) needs at least one")
    return Ht, yt, K


def _check_classifier(W: ArrayLike, K: int, d: int, device: torch.device, b: ArrayLike | None = None):
    Wt = _as_float64(W, "W", device)
    if Wt.shape != (K, d):
        raise ValueError(f"W must have shape (K, d) = ({K}, {d}) to match H and y, got {tuple(Wt.shape)}")
    bt = None
    if b is not None:
        bt = _as_float64(b, "b", device)
        if bt.shape != (K,):
            raise ValueError(f"b must have shape (K,) = ({K},) to match W, got {tuple(bt.shape)}")
    return Wt, bt


def _check_frame(frame: str) -> None:
    check_choice("frame", frame, _FRAMES)


def _check_rank_tol(rank_tol: float | None, allow_none: bool = True) -> float | None:
    """``rank_tol`` if it is None (where allowed) or a number in (0, 1)."""
    if rank_tol is None and allow_none:
        return None
    return check_float("rank_tol", rank_tol, 0.0, 1.0, strict_low=True, strict_high=True)


# --------------------------------------------------------------------------- #
# batched torch cores (no validation)
# --------------------------------------------------------------------------- #
def class_means_t(H: Tensor, y: Tensor, K: int) -> Tensor:
    """Class means ``(..., K, d)`` of features ``H (..., N, d)``: μ_k = mean of h_i with y_i = k."""
    onehot = torch.nn.functional.one_hot(y, K).to(H.dtype)  # (N, K)
    counts = onehot.sum(0)
    return (onehot.T @ H) / counts[:, None]


def centred_means_t(M: Tensor) -> Tensor:
    """Centred class means M̃ (rows μ_k − μ_G, ``(..., K, d)``), μ_G the mean of class means."""
    return M - M.mean(dim=-2, keepdim=True)


def _residuals_t(H: Tensor, y: Tensor, M: Tensor) -> Tensor:
    return H - M[..., y, :]


def round_off_tol(N: int) -> float:
    """τ = 16·N·ε: a spread below τ times the RMS feature norm counts as zero (module docstring, "Degenerate
    inputs"); ε is the float64 machine epsilon, N the number of samples the means average."""
    return 16.0 * N * torch.finfo(torch.float64).eps


def zero_spread_t(tr_w: Tensor, tr_b: Tensor, mean_sq_norm: Tensor, N: int) -> tuple[Tensor, Tensor]:
    """``(Σ_B = 0, Σ_W = 0)`` as boolean tensors: tr Σ_B ≤ τ²·s², tr Σ_W ≤ τ²·s² with s² = ``mean_sq_norm``
    = (1/N) Σ_i ‖h_i‖² and τ = :func:`round_off_tol` (N) (module docstring, "Degenerate inputs")."""
    cut = round_off_tol(N) ** 2 * mean_sq_norm
    return tr_b <= cut, tr_w <= cut


def spread_traces_t(H: Tensor, y: Tensor, K: int, M: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(tr Σ_W, tr Σ_B, s²)`` of features ``H (..., N, d)``, s² = (1/N) Σ_i ‖h_i‖²."""
    M = class_means_t(H, y, K) if M is None else M
    N = H.shape[-2]
    tr_w = _residuals_t(H, y, M).square().sum((-1, -2)) / N
    tr_b = centred_means_t(M).square().sum((-1, -2)) / K
    return tr_w, tr_b, H.square().sum((-1, -2)) / N


def degenerate_t(H: Tensor, y: Tensor, K: int, M: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(Σ_B = 0, Σ_W = 0)`` of features ``H (..., N, d)`` up to round-off (:func:`zero_spread_t`)."""
    return zero_spread_t(*spread_traces_t(H, y, K, M), H.shape[-2])


def spread_ratio_t(value: Tensor, zero_b: Tensor, zero_w: Tensor) -> Tensor:
    """A within/between ratio with the degenerate rule: ``value`` where Σ_B ≠ 0, ``inf`` where Σ_B = 0 ≠ Σ_W,
    ``nan`` where both are 0."""
    inf_or_nan = torch.where(zero_w, torch.full_like(value, float("nan")), torch.full_like(value, float("inf")))
    return torch.where(zero_b, inf_or_nan, value)


def nan_where_t(value: Tensor, mask: Tensor) -> Tensor:
    """``value`` with ``nan`` where ``mask`` (Σ_B = 0 for the metrics of the class-mean geometry)."""
    return torch.where(mask, torch.full_like(value, float("nan")), value)


#: within/between ratios: ``inf`` (``nan`` if Σ_W = 0) where Σ_B = 0 (``cdnv``: :class:`ncutils.stream.StreamingNC`)
SPREAD_RATIO_KEYS = ("nc1", "nc1_trace", "cdnv")
#: plain statistics, kept where Σ_B = 0; every other key of :func:`nc_metrics` (and of ``StreamingNC.result``,
#: but the singular values ``sv_*``) is a geometry of the class means and ``nan`` there
PLAIN_KEYS = ("mean_norm_sq", "global_mean_norm", "nc2_equinorm_weights", "nc2_equiangle_weights",
              "nc2_maxangle_weights")


def degenerate_rule_t(values: dict[str, Tensor], zero_b: Tensor, zero_w: Tensor) -> dict[str, Tensor]:
    """The metrics ``values`` (keys of :func:`nc_metrics`) with the rule of the module docstring, "Degenerate
    inputs": :data:`SPREAD_RATIO_KEYS` by :func:`spread_ratio_t`, :data:`PLAIN_KEYS` unchanged, the rest ``nan``
    where Σ_B = 0 (``zero_b``)."""
    return {key: spread_ratio_t(v, zero_b, zero_w) if key in SPREAD_RATIO_KEYS
            else v if key in PLAIN_KEYS else nan_where_t(v, zero_b) for key, v in values.items()}


def nc1_t(H: Tensor, y: Tensor, K: int, M: Tensor | None = None, *, rank_tol: float | None = None) -> Tensor:
    """(1/K) tr(Σ_W Σ_B^†) as (1/N) Σ_i ‖M̃^†(h_i − μ_{y_i})‖², O(N·d·K), no d×d matrix (SPEC §1, ``nc1``).

    ``rank_tol``: keep only the directions of M̃ with σ_k > rank_tol·σ_1 (:func:`pinv_projector_t`). Σ_B = 0
    gives ``inf`` (``nan`` if Σ_W = 0 too) (module docstring, "Degenerate inputs").
    """
    M = class_means_t(H, y, K) if M is None else M
    value = pinv_projector_t(M, rank_tol)(_residuals_t(H, y, M)).square().sum(-1).mean(-1)
    return spread_ratio_t(value, *degenerate_t(H, y, K, M))


def rank_cut_t(S: Tensor, shape: tuple[int, ...] | torch.Size, rank_tol: float | None = None) -> Tensor:
    """The singular-value cut ``(..., 1)`` of a ``shape = (..., K, d)`` matrix with singular values ``S (..., r)``:
    max(rank_tol, max(K, d)·ε)·σ_1 (``rank_tol=None``: the round-off cut alone); directions with σ_k above it
    count."""
    rel = max(shape[-2], shape[-1]) * torch.finfo(S.dtype).eps
    if rank_tol is not None:
        rel = max(rel, rank_tol)
    return S.amax(dim=-1, keepdim=True) * rel


def pinv_projector_t(M: Tensor, rank_tol: float | None = None):
    """r ↦ M̃^† r for rows r ``(..., N, d)`` → ``(..., N, r)``, M̃ the centred means of ``M (..., K, d)``.

    M̃ᵀ = U diag(S) Vh, hence pinv(M̃) = U diag(1/S) Vh and ‖pinv(M̃) r‖ = ‖diag(1/S) Vh r‖; singular values
    at or below :func:`rank_cut_t` (the round-off cut max(K, d)·ε·σ_1, or ``rank_tol``·σ_1 when larger) are
    dropped. Memory O(K d): no d×d matrix.
    """
    Mc = centred_means_t(M)  # (..., K, d) = M̃ᵀ
    _, S, Vh = torch.linalg.svd(Mc, full_matrices=False)
    keep = S > rank_cut_t(S, Mc.shape, rank_tol)
    S_inv = torch.where(keep, 1.0 / torch.where(keep, S, torch.ones_like(S)), torch.zeros_like(S))
    return lambda R: (R @ Vh.transpose(-1, -2)) * S_inv.unsqueeze(-2)


def nc1_trace_t(H: Tensor, y: Tensor, K: int, M: Tensor | None = None) -> Tensor:
    """tr(Σ_W) / tr(Σ_B) (NC1~ of Tirer, Huang & Niles-Weed 2023, their Thm 3.1; SPEC §1, ``nc1_trace``).

    Σ_B = 0 gives ``inf`` (``nan`` if Σ_W = 0 too) (module docstring, "Degenerate inputs")."""
    tr_w, tr_b, sq = spread_traces_t(H, y, K, M)
    return spread_ratio_t(tr_w / tr_b, *zero_spread_t(tr_w, tr_b, sq, H.shape[-2]))


def _frame_means(M: Tensor, frame: str) -> Tensor:
    return centred_means_t(M) if frame == "etf" else M


def _frame_target(K: int, frame: str, like: Tensor) -> Tensor:
    eye = torch.eye(K, dtype=like.dtype, device=like.device)
    if frame == "etf":
        return (eye - 1.0 / K) / (K - 1) ** 0.5
    return eye / K**0.5


def nc2_from_means_t(M: Tensor, frame: str) -> Tensor:
    """‖G/‖G‖_F − T‖_F with G the Gram of the (centred for "etf") means, T the unit-norm frame."""
    A = _frame_means(M, frame)
    G = A @ A.transpose(-1, -2)
    G = G / torch.linalg.matrix_norm(G).unsqueeze(-1).unsqueeze(-1)
    return torch.linalg.matrix_norm(G - _frame_target(M.shape[-2], frame, M))


def nc3_from_means_t(M: Tensor, *, W: Tensor, frame: str) -> Tensor:
    """‖W/‖W‖_F − M̂ᵀ/‖M̂‖_F‖_F, M̂ = centred means ("etf") or raw means ("orthogonal")."""
    A = _frame_means(M, frame)
    Wn = W / torch.linalg.matrix_norm(W).unsqueeze(-1).unsqueeze(-1)
    An = A / torch.linalg.matrix_norm(A).unsqueeze(-1).unsqueeze(-1)
    return torch.linalg.matrix_norm(Wn - An)


def nc3_gram_t(M: Tensor, *, A: Tensor) -> Tensor:
    """‖AᵀA/‖AᵀA‖_F − MᵀM/‖MᵀM‖_F‖_F for a layer ``A (..., d_out, d)`` reading means ``M (..., K, d)``.

    No d×d matrix when d is larger than ``d_out + K``: both Gram matrices live in the span of the rows of A
    and M, so they are compared in an orthonormal basis of it (a QR of the ``(d, d_out + K)`` stack;
    Frobenius norms are unchanged), O(d (d_out + K)²) time and O(d (d_out + K)) memory.
    """
    r = A.shape[-2] + M.shape[-2]
    if A.shape[-1] > r:
        B, _ = torch.linalg.qr(torch.cat([A, M], dim=-2).transpose(-1, -2))  # (..., d, r), orthonormal columns
        A, M = A @ B, M @ B
    P = A.transpose(-1, -2) @ A
    Q = M.transpose(-1, -2) @ M
    P = P / torch.linalg.matrix_norm(P).unsqueeze(-1).unsqueeze(-1)
    Q = Q / torch.linalg.matrix_norm(Q).unsqueeze(-1).unsqueeze(-1)
    return torch.linalg.matrix_norm(P - Q)


def singular_values_t(M: Tensor) -> Tensor:
    """Singular values of the (uncentred) class-mean matrix ``M (..., K, d)``, descending, ``(..., min(K, d))``."""
    return torch.linalg.svdvals(M)


def _coef_of_variation(x: Tensor) -> Tensor:
    return x.std(dim=-1, correction=1) / x.mean(dim=-1)


def _cosines(V: Tensor) -> Tensor:
    Vn = V / torch.linalg.vector_norm(V, dim=-1, keepdim=True)
    return Vn @ Vn.transpose(-1, -2)


def equinorm_t(V: Tensor) -> Tensor:
    """std/mean (unbiased std, as Papyan et al.'s code) of the row norms of ``V (..., K, d)``."""
    return _coef_of_variation(torch.linalg.vector_norm(V, dim=-1))


def equiangle_t(V: Tensor) -> Tensor:
    """Unbiased std of the pairwise cosines cos(v_k, v_k'), k < k', of the rows of ``V``
    (0 for K = 2, which has a single pair)."""
    K = V.shape[-2]
    iu = torch.triu_indices(K, K, offset=1, device=V.device)
    cos = _cosines(V)[..., iu[0], iu[1]]
    return cos.std(dim=-1, correction=1 if cos.shape[-1] > 1 else 0)


def maxangle_t(V: Tensor) -> Tensor:
    """Mean over k ≠ k' of |cos(v_k, v_k') + 1/(K−1)| (Papyan's "coherence")."""
    K = V.shape[-2]
    off = ~torch.eye(K, dtype=torch.bool, device=V.device)
    cos = _cosines(V)[..., off]
    return (cos + 1.0 / (K - 1)).abs().mean(dim=-1)


def nc4_t(H: Tensor, M: Tensor, *, W: Tensor, b: Tensor | None = None) -> Tensor:
    """Fraction of rows where argmax_k (W h + b)_k ≠ argmin_k ‖h − μ_k‖."""
    logits = H @ W.transpose(-1, -2)
    if b is not None:
        logits = logits + b.unsqueeze(-2)
    nearest = torch.cdist(H, M).argmin(dim=-1)
    return (logits.argmax(dim=-1) != nearest).to(H.dtype).mean(dim=-1)


def margin_t(H: Tensor, y: Tensor, *, W: Tensor) -> Tensor:
    """Smallest logit margin min_i min_{j≠y_i} (w_{y_i} − w_j)ᵀh_i, per run (Ji et al. 2022, Eq. 4)."""
    Z = H @ W.transpose(-1, -2)  # (..., N, K)
    own = Z.gather(-1, y.expand(*Z.shape[:-1]).unsqueeze(-1))
    others = Z.scatter(-1, y.expand(*Z.shape[:-1]).unsqueeze(-1), float("-inf"))
    return (own.squeeze(-1) - others.amax(-1)).amin(-1)


def max_margin_distance_t(W: Tensor, H: Tensor, y: Tensor, K: int) -> Tensor:
    """Distance of the unit-norm direction (W, H)/‖(W, H)‖_F to the set of max-margin directions of the ULPM
    (Ji et al. 2022, Eq. 5: the simplex ETF with W = √n·M, all rotations Q ∈ O(d)), per run ``(...,)``.

    Orthogonal Procrustes on the stack Z = [W; H] ``(..., K+N, d)``: min_Q ‖Ẑ − Ẑ*Q‖_F = √(2 − 2‖Fᵀ Ẑ‖_*), with
    F ``(K+N, K−1)`` the unit-norm max-margin point in ETF coordinates. Balanced classes, d ≥ K−1; in [0, √2].
    """
    n = y.shape[0] // K
    E = math.sqrt(K / (K - 1)) * (torch.eye(K, dtype=H.dtype, device=H.device) - 1.0 / K)  # rows: unit simplex ETF
    F0 = torch.linalg.svd(E)[0][:, : K - 1] * math.sqrt(K / (K - 1))  # (K, K−1): E in an orthonormal basis of 1⊥
    F = torch.cat([n**0.25 * F0, n**-0.25 * F0[y]])  # ‖w_k‖² = n‖h‖² (Ji et al., Thm 3.2 balance)
    F = F / torch.linalg.matrix_norm(F)
    Z = torch.cat([W, H], dim=-2)
    Z = Z / torch.linalg.matrix_norm(Z).unsqueeze(-1).unsqueeze(-1)
    cos = torch.linalg.svdvals(F.transpose(-1, -2) @ Z).sum(-1)
    return (2.0 - 2.0 * cos).clamp(min=0.0).sqrt()


def nc_metrics_t(
    H: Tensor, y: Tensor, K: int, *, W: Tensor | None = None, b: Tensor | None = None,
    A: Tensor | None = None, spectrum: bool = False, rank_tol: float | None = None,
) -> dict[str, Tensor]:
    """All metrics of one feature level at once, batched; keys as :func:`nc_metrics`.

    ``A (..., d_out, d)``: the weight of a (non-classifier) layer reading this level — adds
    ``nc3_gram`` (:func:`nc3_gram`); with a classifier ``W`` ``nc3_gram`` is computed for ``W``.
    ``spectrum``: adds ``sv_1 … sv_r``, the singular values of the uncentred class means
    (r = min(K, d)). ``rank_tol``: the rank-aware ``nc1`` (:func:`nc1`). Where Σ_B = 0 (module docstring,
    "Degenerate inputs") ``nc1``/``nc1_trace`` are ``inf`` (``nan`` if Σ_W = 0) and the geometry metrics
    (``nc2_*``, ``nc3_*``, ``nc4``) ``nan``.
    """
    M = class_means_t(H, y, K)
    Mc = centred_means_t(M)
    tr_w, tr_b, sq = spread_traces_t(H, y, K, M)
    out = {
        "nc1": pinv_projector_t(M, rank_tol)(_residuals_t(H, y, M)).square().sum(-1).mean(-1),
        "nc1_trace": tr_w / tr_b,
        "nc2_etf": nc2_from_means_t(M, "etf"),
        "nc2_orthogonal": nc2_from_means_t(M, "orthogonal"),
        "nc2_equinorm": equinorm_t(Mc),
        "nc2_equiangle": equiangle_t(Mc),
        "nc2_maxangle": maxangle_t(Mc),
        "nc2_equinorm_uncentred": equinorm_t(M),
        "mean_norm_sq": M.square().sum(-1).mean(-1),
        "global_mean_norm": torch.linalg.vector_norm(M.mean(-2), dim=-1),
    }
    if W is not None:
        out["nc3_etf"] = nc3_from_means_t(M, W=W, frame="etf")
        out["nc3_orthogonal"] = nc3_from_means_t(M, W=W, frame="orthogonal")
        out["nc2_equinorm_weights"] = equinorm_t(W)
        out["nc2_equiangle_weights"] = equiangle_t(W)
        out["nc2_maxangle_weights"] = maxangle_t(W)
        out["nc4"] = nc4_t(H, M, W=W, b=b)
    reader = A if A is not None else W
    if reader is not None:
        out["nc3_gram"] = nc3_gram_t(M, A=reader)
    out = degenerate_rule_t(out, *zero_spread_t(tr_w, tr_b, sq, H.shape[-2]))
    if spectrum:
        sv = singular_values_t(M)
        out.update({f"sv_{i + 1}": sv[..., i] for i in range(sv.shape[-1])})
    return out


# --------------------------------------------------------------------------- #
# public API: validated, float64, Python floats
# --------------------------------------------------------------------------- #
def class_means(H: ArrayLike, y: ArrayLike, num_classes: int | None = None) -> Tensor:
    """Class means μ_k as rows, shape ``(K, d)`` (the papers' M ∈ R^{d×K} transposed).

    Parameters
    ----------
    H : (N, d) features (rows).
    y : (N,) integer labels in ``[0, K)``; every class must have a sample.
    num_classes : K; default ``max(y) + 1``.
    """
    Ht, yt, K = _check_features(H, y, num_classes)
    return class_means_t(Ht, yt, K)


def within_class_cov(H: ArrayLike, y: ArrayLike, num_classes: int | None = None) -> Tensor:
    """Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ, shape ``(d, d)`` (``docs/notation.md``)."""
    Ht, yt, K = _check_features(H, y, num_classes)
    R = _residuals_t(Ht, yt, class_means_t(Ht, yt, K))
    return R.T @ R / Ht.shape[0]


def between_class_cov(H: ArrayLike, y: ArrayLike, num_classes: int | None = None) -> Tensor:
    """Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ, shape ``(d, d)``, μ_G the mean of class means."""
    Ht, yt, K = _check_features(H, y, num_classes)
    Mc = centred_means_t(class_means_t(Ht, yt, K))
    return Mc.T @ Mc / K


def _zero_between(H: Tensor, y: Tensor, K: int, M: Tensor) -> Tensor:
    """Σ_B = 0 up to round-off (module docstring, "Degenerate inputs")."""
    return degenerate_t(H, y, K, M)[0]


def nc1(H: ArrayLike, y: ArrayLike, num_classes: int | None = None, *, rank_tol: float | None = None) -> float:
    """NC1 = (1/K) tr(Σ_W Σ_B^†) (Papyan, Han & Donoho 2020, Fig. 6; SPEC §1, ``nc1``).

    Computed as (1/N) Σ_i ‖M̃^†(h_i − μ_{y_i})‖² with M̃ the d×K centred means of ``H (N, d)``, ``y (N,)``,
    in O(N·d·K) time and O(N·K + d·K) extra memory: no d×d matrix is formed, so
    flattened convolutional features (d ~ 1e5) are fine. Never negative;
    0 iff every sample sits on its class mean (given non-degenerate means).
    Singular values of M̃ at or below ``max(K, d)·eps·σ_max`` are treated as zero (the
    centred means have rank ≤ K−1).

    ``rank_tol``: ``None`` (default), or r in (0, 1): rank-aware NC1, Σ_B^† keeps only the directions of M̃
    with σ_k > r·σ_1 (σ of the centred means, the count of :func:`class_mean_rank`), so that near-low-rank
    means whose tiny directions dominate tr(Σ_W Σ_B^†) are treated as rank-deficient.

    Degenerate inputs: ``inf`` when Σ_B = 0 (all class means equal up to round-off), ``nan`` when Σ_W = 0
    too (module docstring).
    """
    rank_tol = _check_rank_tol(rank_tol)
    Ht, yt, K = _check_features(H, y, num_classes)
    return float(nc1_t(Ht, yt, K, rank_tol=rank_tol))


def nc1_trace(H: ArrayLike, y: ArrayLike, num_classes: int | None = None) -> float:
    """NC1~ = tr(Σ_W) / tr(Σ_B) (Tirer, Huang & Niles-Weed 2023, Eq. 8; monotone in their Thm 3.1), ``H (N, d)``.

    Degenerate inputs: ``inf`` when Σ_B = 0 (all class means equal up to round-off), ``nan`` when Σ_W = 0
    too (module docstring).
    """
    Ht, yt, K = _check_features(H, y, num_classes)
    return float(nc1_trace_t(Ht, yt, K))


def class_mean_rank(
    H: ArrayLike, y: ArrayLike, rank_tol: float = 1e-3, num_classes: int | None = None, *, centred: bool = True
) -> int:
    """Numerical rank of the class means of ``H (N, d)``: #{σ_k > rank_tol·σ_1} (SPEC §1, the rank behind ``nc1``).

    ``centred=True`` (default): σ of the centred means M̃ (rows μ_k − μ_G), the directions the rank-aware
    :func:`nc1` keeps with the same ``rank_tol``. ``centred=False``: σ of the uncentred means M (rows μ_k),
    as :func:`class_mean_singular_values` and ``studies._multilayer.class_mean_ranks`` count them
    (an orthogonal frame has uncentred rank K, centred rank K − 1). The cut is never below the round-off cut
    max(K, d)·eps·σ_1. ``rank_tol`` in (0, 1).

    Degenerate inputs: 0 when the means counted are zero up to round-off (Σ_B = 0 for ``centred=True``,
    module docstring).
    """
    rank_tol = _check_rank_tol(rank_tol, allow_none=False)
    check_bool("centred", centred)
    Ht, yt, K = _check_features(H, y, num_classes)
    M = class_means_t(Ht, yt, K)
    A = centred_means_t(M) if centred else M
    tr_w, _, sq = spread_traces_t(Ht, yt, K, M)
    if bool(zero_spread_t(tr_w, A.square().sum() / K, sq, Ht.shape[0])[0]):
        return 0
    S = torch.linalg.svdvals(A)
    return int((S > rank_cut_t(S, A.shape, rank_tol)).sum())


def nc2(H: ArrayLike, y: ArrayLike, frame: Frame = "etf", num_classes: int | None = None) -> float:
    """NC2: distance of the normalized class-mean Gram to a frame, ``H (N, d)`` (SPEC §1, ``nc2``).

    ``frame="etf"``: ‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F with G = M̃ᵀM̃ (centred means),
    0 for a simplex ETF (Papyan et al. 2020).
    ``frame="orthogonal"``: ‖G/‖G‖_F − I/√K‖_F with G = MᵀM (uncentred means), 0 for an
    orthogonal frame — the bias-free MSE geometry (Tirer & Bruna 2022, Thm 3.1).

    Degenerate inputs: ``nan`` (both frames) when Σ_B = 0 (all class means equal up to round-off; module
    docstring).
    """
    _check_frame(frame)
    Ht, yt, K = _check_features(H, y, num_classes)
    M = class_means_t(Ht, yt, K)
    return float(nan_where_t(nc2_from_means_t(M, frame), _zero_between(Ht, yt, K, M)))


def _centred_geometry(fn, H: ArrayLike, y: ArrayLike, num_classes: int | None) -> float:
    Ht, yt, K = _check_features(H, y, num_classes)
    M = class_means_t(Ht, yt, K)
    return float(nan_where_t(fn(centred_means_t(M)), _zero_between(Ht, yt, K, M)))


def nc2_equinorm(H: ArrayLike, y: ArrayLike, num_classes: int | None = None) -> float:
    """std/mean of ‖μ_k − μ_G‖ over classes (Papyan et al. 2020, Fig. 2; unbiased std), ``H (N, d)``.

    Degenerate inputs: ``nan`` when Σ_B = 0 (module docstring)."""
    return _centred_geometry(equinorm_t, H, y, num_classes)


def nc2_equiangle(H: ArrayLike, y: ArrayLike, num_classes: int | None = None) -> float:
    """Std of cos(μ_k − μ_G, μ_k' − μ_G) over pairs k < k' (Papyan et al. 2020, Fig. 3; unbiased), ``H (N, d)``.

    Degenerate inputs: ``nan`` when Σ_B = 0 (module docstring)."""
    return _centred_geometry(equiangle_t, H, y, num_classes)


def nc2_maxangle(H: ArrayLike, y: ArrayLike, num_classes: int | None = None) -> float:
    """Mean over k ≠ k' of |cos(μ_k − μ_G, μ_k' − μ_G) + 1/(K−1)| (Papyan et al. 2020, Fig. 4), ``H (N, d)``.

    Degenerate inputs: ``nan`` when Σ_B = 0 (module docstring)."""
    return _centred_geometry(maxangle_t, H, y, num_classes)


def _check_weights(W: ArrayLike) -> Tensor:
    Wt = _as_float64(W, "W")
    if Wt.ndim != 2 or Wt.shape[0] < 2:
        raise ValueError(f"parameter W must be a (K, d) classifier with K >= 2 rows, got shape {tuple(Wt.shape)}")
    return Wt


def nc2_equinorm_weights(W: ArrayLike) -> float:
    """std/mean of the classifier norms ‖w_k‖ (Papyan et al. 2020, Fig. 2), ``W (K, d)``."""
    return float(equinorm_t(_check_weights(W)))


def nc2_equiangle_weights(W: ArrayLike) -> float:
    """Std of cos(w_k, w_k') over pairs k < k' (Papyan et al. 2020, Fig. 3), ``W (K, d)``."""
    return float(equiangle_t(_check_weights(W)))


def nc2_maxangle_weights(W: ArrayLike) -> float:
    """Mean over k ≠ k' of |cos(w_k, w_k') + 1/(K−1)| (Papyan et al. 2020, Fig. 4), ``W (K, d)``."""
    return float(maxangle_t(_check_weights(W)))


def nc3(
    H: ArrayLike, y: ArrayLike, *, W: ArrayLike, frame: Frame = "etf", num_classes: int | None = None
) -> float:
    """NC3 = ‖W/‖W‖_F − M̂ᵀ/‖M̂‖_F‖_F, self-duality of classifier and means.

    ``W`` is ``(K, d)``. M̂ = M̃ (centred means, ``frame="etf"``, Papyan et al. 2020) or
    M (raw means, ``frame="orthogonal"``, Tirer & Bruna 2022, where W ∝ Mᵀ).
    Papyan et al. plot the square of the ETF version: :func:`nc3_squared`. ``H (N, d)``, ``y (N,)``.

    Degenerate inputs: ``nan`` (both frames) when Σ_B = 0 (all class means equal up to round-off; module
    docstring).
    """
    _check_frame(frame)
    Ht, yt, K = _check_features(H, y, num_classes)
    Wt, _ = _check_classifier(W, K, Ht.shape[1], Ht.device)
    M = class_means_t(Ht, yt, K)
    return float(nan_where_t(nc3_from_means_t(M, W=Wt, frame=frame), _zero_between(Ht, yt, K, M)))


def nc3_gram(H: ArrayLike, y: ArrayLike, *, A: ArrayLike, num_classes: int | None = None) -> float:
    """DNC3 of a hidden layer: ‖AᵀA/‖AᵀA‖_F − MᵀM/‖MᵀM‖_F‖_F (M the (K, d) uncentred class means).

    ``A (d_out, d)`` is the weight of the layer that reads ``H (N, d)``, e.g. W_l of the
    deep UFM (Súkeník, Mondelli & Lampert 2023, DNC3: the rows of W_l lie in the span
    of, and are aligned with, the class means of its input). 0 iff the row space of A
    carries the same Gram as the means; for a classifier ``W ∝ Mᵀ`` it is 0 like
    ``nc3(frame="orthogonal")``, and unlike that metric it does not need d_out = K.
    The Gram form is our choice (the paper defines DNC3 without fixing a metric; ``docs/notation.md``).
    O(d²) memory.

    Degenerate inputs: ``nan`` when Σ_B = 0 (module docstring).
    """
    Ht, yt, K = _check_features(H, y, num_classes)
    At = _as_float64(A, "A", Ht.device)
    if At.ndim != 2 or At.shape[1] != Ht.shape[1]:
        raise ValueError(f"A must have shape (d_out, d) with d = {Ht.shape[1]}, got {tuple(At.shape)}")
    M = class_means_t(Ht, yt, K)
    return float(nan_where_t(nc3_gram_t(M, A=At), _zero_between(Ht, yt, K, M)))


def class_mean_singular_values(H: ArrayLike, y: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Singular values of the uncentred class-mean matrix (K, d), descending — its rank is the
    number of non-zero ones (the low-rank bias of Súkeník et al. 2024, Fig. 2)."""
    Ht, yt, K = _check_features(H, y, num_classes)
    return singular_values_t(class_means_t(Ht, yt, K)).cpu().numpy()


def nc3_squared(H: ArrayLike, y: ArrayLike, *, W: ArrayLike, num_classes: int | None = None) -> float:
    """Square of the ETF :func:`nc3`, the quantity of Papyan et al. 2020, Fig. 5 (``nan`` when Σ_B = 0)."""
    return nc3(H, y, W=W, frame="etf", num_classes=num_classes) ** 2


def normalized_margin(H: ArrayLike, y: ArrayLike, *, W: ArrayLike, num_classes: int | None = None) -> float:
    """Scale-free margin min_i min_{j≠y_i} (w_{y_i} − w_j)ᵀh_i / (½(‖W‖²_F + ‖H‖²_F)) (Ji et al. 2022, §3).

    Invariant to (W, H) → (aW, aH); its maximum over all (W, H) is 1/(√n(K−1)) for balanced
    classes (:func:`ncutils.theory.ulpm_optimum`), reached exactly by neural collapse.
    ``W (K, d)``, ``H (N, d)``, ``y (N,)``.
    """
    Ht, yt, K = _check_features(H, y, num_classes)
    Wt = _check_classifier(W, K, Ht.shape[1], Ht.device)[0]
    scale = (Wt.square().sum() + Ht.square().sum()) / 2
    return float(margin_t(Ht, yt, W=Wt) / scale)


def nc4(
    H: ArrayLike,
    y: ArrayLike,
    *,
    W: ArrayLike,
    b: ArrayLike | None = None,
    means: ArrayLike | None = None,
    num_classes: int | None = None,
) -> float:
    """NC4: fraction of samples where argmax_k (W h + b)_k ≠ argmin_k ‖h − μ_k‖.

    Parameters
    ----------
    H, y : (N, d) features and (N,) labels to evaluate on (e.g. the test set).
    W, b : (K, d) classifier and optional (K,) bias — include the bias whenever the
        model has one.
    means : (K, d) class means to use (the *training-set* means when ``H`` is the
        test set, as in Papyan et al. 2020); default: the class means of ``H, y``.

    Degenerate inputs: ``nan`` when the means used coincide (their tr Σ_B ≤ τ²·(1/N) Σ_i ‖h_i‖², module
    docstring): the nearest-class-mean classifier is then undefined.
    """
    Ht, yt, K = _check_features(H, y, num_classes)
    Wt, bt = _check_classifier(W, K, Ht.shape[1], Ht.device, b)
    if means is None:
        M = class_means_t(Ht, yt, K)
    else:
        M = _as_float64(means, "means", Ht.device)
        if M.shape != (K, Ht.shape[1]):
            raise ValueError(f"means must have shape (K, d) = ({K}, {Ht.shape[1]}), got {tuple(M.shape)}")
    tr_b = centred_means_t(M).square().sum() / K
    zero_b, _ = zero_spread_t(tr_b, tr_b, Ht.square().sum() / Ht.shape[0], Ht.shape[0])
    return float(nan_where_t(nc4_t(Ht, M, W=Wt, b=bt), zero_b))


def max_margin_distance(W: ArrayLike, H: ArrayLike, y: ArrayLike, num_classes: int | None = None) -> float:
    """Distance of (W, H)/‖(W, H)‖_F to the nearest max-margin direction of the ULPM (Ji et al. 2022, Eq. 5),
    minimized over rotations (:func:`max_margin_distance_t`); ``W (K, d)``, ``H (N, d)``, balanced ``y (N,)``."""
    Ht, yt, K = _check_features(H, y, num_classes)
    Wt, _ = _check_classifier(W, K, Ht.shape[1], Ht.device)
    counts = torch.bincount(yt, minlength=K)
    if bool((counts != counts[0]).any()) or Ht.shape[1] < K - 1:
        raise ValueError(f"max_margin_distance needs balanced classes and d >= K-1, got counts {counts.tolist()}, "
                         f"d = {Ht.shape[1]}")
    return float(max_margin_distance_t(Wt, Ht, yt, K))


def nc_metrics(
    H: ArrayLike,
    y: ArrayLike,
    *,
    W: ArrayLike | None = None,
    b: ArrayLike | None = None,
    num_classes: int | None = None,
    rank_tol: float | None = None,
) -> dict[str, float]:
    """Every metric of one feature level ``H (N, d)``, ``y (N,)`` in one call (one class-mean pass), as floats.

    Keys: ``nc1, nc1_trace, nc2_etf, nc2_orthogonal, nc2_equinorm, nc2_equiangle,
    nc2_maxangle, nc2_equinorm_uncentred`` (std/mean of ‖μ_k‖, the equal norms of an
    orthogonal frame), ``mean_norm_sq`` (mean ‖μ_k‖²), ``global_mean_norm`` (‖μ_G‖), and with a
    classifier ``W (K, d)``: ``nc3_etf, nc3_orthogonal, nc2_equinorm_weights, nc2_equiangle_weights,
    nc2_maxangle_weights, nc4, nc3_gram``. ``rank_tol``: the rank-aware ``nc1`` (:func:`nc1`).

    Degenerate inputs: when Σ_B = 0, ``nc1`` and ``nc1_trace`` are ``inf`` (``nan`` if Σ_W = 0 too) and
    ``nc2_*`` (but the classifier's own ``nc2_*_weights``), ``nc3_*`` and ``nc4`` are ``nan`` (module docstring).
    """
    rank_tol = _check_rank_tol(rank_tol)
    Ht, yt, K = _check_features(H, y, num_classes)
    Wt = bt = None
    if W is not None:
        Wt, bt = _check_classifier(W, K, Ht.shape[1], Ht.device, b)
    return {k: float(v) for k, v in nc_metrics_t(Ht, yt, K, W=Wt, b=bt, rank_tol=rank_tol).items()}
