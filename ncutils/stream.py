"""Streaming neural-collapse metrics for network features that do not fit in memory (definitions: ``docs/notation.md``).

:class:`StreamingNC` accumulates, batch by batch and on its device, what :func:`ncutils.metrics.nc_metrics`
computes from a whole feature matrix, for several named feature levels at once:

- **pass 1** (:meth:`StreamingNC.update_means`): per-class sums and counts → class means μ_k;
- **pass 2** (:meth:`StreamingNC.update_within`): Σ_i ‖M̃^†(h_i − μ_{y_i})‖² (NC1), the per-class
  Σ_{y_i=k} ‖h_i − μ_k‖² (tr Σ_W and the CDNV, two-pass hence numerically stable), the per-class sums of the
  residuals h_i − μ_{y_i} (which must vanish: pass 2 must see the data of pass 1), the nearest-class-centre
  (NCC) hits argmin_k ‖h − μ_k‖ = y and, for a level read by the classifier ``(W, b)``, the NC4 mismatches
  argmax(W h + b) ≠ argmin_k ‖h − μ_k‖;
- optionally a **test set** (:meth:`StreamingNC.update_test`): NCC accuracy and NC4 against the training means.

Partial results combine: :meth:`~StreamingNC.merge` adds another accumulator's sums (several loaders),
:meth:`~StreamingNC.all_reduce` sums them over ``torch.distributed`` (a DDP job: call it after each pass),
:meth:`~StreamingNC.state_dict` / :meth:`~StreamingNC.load_state_dict` save and restore them.

Memory per level: the class sums and the residual sums, 2·K·d float64 numbers, the means and the K×d
pseudo-inverse factors of pass 2 (another 2·K·d), and O(K) counts — never a d×d matrix, so flattened
convolutional features (d = 10⁴–10⁵) are fine. Matrices with K columns (distances of a batch to the K means,
logits, the K×K Gram matrices of the metrics) are built in tiles of at most ``tile`` numbers, so K may be large;
the pseudo-inverse is an SVD of the K×d centred means and ``nc3_gram`` works in a basis of ≤ 2K vectors.
Accumulation is in float64 whatever the features' dtype.

Degenerate inputs follow the rule of :mod:`ncutils.metrics` (its docstring, "Degenerate inputs"), with the
mean squared feature norm s² = tr Σ_W + Σ_k (n_k/N)‖μ_k‖²: when Σ_B = 0 up to round-off, ``nc1``, ``nc1_trace``
and ``cdnv`` are ``inf`` (``nan`` if Σ_W = 0 too) and the metrics of the class-mean geometry and of the
nearest class mean (``nc2_*`` but ``nc2_equinorm_weights``, ``nc3_*``, ``nc4``, ``ncc_accuracy``, and their
``_test`` versions) are ``nan``. ``rank_tol`` (constructor) gives the rank-aware ``nc1`` of
:func:`ncutils.metrics.nc1`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._validate import ParameterTypeError, bad_type, check_float, check_int
from .metrics import centred_means_t, degenerate_rule_t, equinorm_t, nc3_from_means_t, pinv_projector_t, zero_spread_t

__all__ = ["StreamingNC"]

_F64 = torch.float64
#: every metric :meth:`StreamingNC.result` returns for a level (and, with a classifier, ``CLASSIFIER_KEYS``)
KEYS = ("nc1", "nc1_trace", "nc2_etf", "nc2_orthogonal", "nc2_equinorm", "nc2_equiangle", "nc2_maxangle",
        "nc2_equinorm_uncentred", "mean_norm_sq", "global_mean_norm", "ncc_accuracy", "cdnv")
CLASSIFIER_KEYS = ("nc3_etf", "nc3_orthogonal", "nc2_equinorm_weights", "nc2_equiangle_weights", "nc2_maxangle_weights",
                   "nc4", "nc3_gram")


def _as_tensor(x: Any, name: str, where: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray | np.generic | list | tuple):
        return torch.as_tensor(np.asarray(x))
    raise bad_type(name, f"a numpy array or torch tensor ({where})", x)


class StreamingNC:
    """Two-pass accumulator of NC metrics for several named feature levels (Papyan, Han & Donoho 2020;
    CDNV of Galanti, György & Hutter 2022; definitions in ``docs/notation.md``).

    ``K``: classes; ``device``: where the statistics live (features are moved there); ``tile``: the largest
    number of entries of an intermediate N×K or K×K matrix (larger ones are built in tiles); ``drift_tol``: how
    far the class means of pass 2 may lie from those of pass 1, relative to the class's RMS feature norm,
    before :meth:`result` refuses (different labels, or a model not in eval mode, between the passes);
    ``rank_tol``: ``None`` or r in (0, 1), the rank-aware ``nc1`` (:func:`ncutils.metrics.nc1`: Σ_B^† keeps the
    directions of the centred means with σ_k > r·σ_1), fixed for both passes.

    Use: for every batch ``update_means({name: H_b (B, d) or (B, C, H, W)}, y_b (B,))``; then for every batch
    (in any order) ``update_within(..., classifiers={name: (W (K, d), b (K,) or None)})`` for the level the
    classifier reads; then :meth:`result`. In a DDP job call :meth:`all_reduce` after each pass on every rank.
    """

    def __init__(self, K: int, device: torch.device | str = "cpu", *, tile: int = 2**22,
                 drift_tol: float = 1e-4, rank_tol: float | None = None) -> None:
        self.K = check_int("K", K, 2)
        self.device = torch.device(device)
        self.tile = check_int("tile", tile, 1)
        self.drift_tol = check_float("drift_tol", drift_tol, 0.0, strict_low=True)
        self.rank_tol = None if rank_tol is None else check_float("rank_tol", rank_tol, 0.0, 1.0, strict_low=True,
                                                                  strict_high=True)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> StreamingNC:
        """Forget every batch (both passes and the test set); the settings stay."""
        z = self._zeros
        self.levels: dict[str, int] = {}  # level → d, in the order of the first batch
        self.batches = [0, 0, 0]  # batches added in pass 1, pass 2, test
        self.reduced: set[str] = set()  # phases already all-reduced: "means", "within"
        self.counts = z(self.K)
        self.sums: dict[str, Tensor] = {}
        self.means: dict[str, Tensor] = {}
        self._proj: dict[str, Any] = {}
        # pass 2 and test
        self.counts_within = z(self.K)
        self.classifier_levels: tuple[str, ...] | None = None  # fixed by the first pass-2 (or test) batch
        self.classifiers: dict[str, tuple[Tensor, Tensor | None]] = {}
        self.nc1_sum: dict[str, Tensor] = {}
        self.ss_within: dict[str, Tensor] = {}  # (K,): Σ_{y_i=k} ‖h_i − μ_k‖²
        self.resid_sum: dict[str, Tensor] = {}  # (K, d): Σ_{y_i=k} (h_i − μ_k)
        self.ncc_hits: dict[str, Tensor] = {}
        self.nc4_miss: dict[str, Tensor] = {}
        self.n_test = z(())
        self.ncc_hits_test: dict[str, Tensor] = {}
        self.nc4_miss_test: dict[str, Tensor] = {}
        return self

    def _zeros(self, *shape: int | tuple) -> Tensor:
        return torch.zeros(*shape, dtype=_F64, device=self.device)

    @property
    def phase(self) -> str:
        """``"means"`` while pass 1 runs, ``"within"`` once the means are fixed (pass 2 and the test set)."""
        return "within" if self.means else "means"

    @property
    def n_within(self) -> int:
        """Samples added in pass 2."""
        return int(self.counts_within.sum())

    # ------------------------------------------------------------------ validation
    def _labels(self, y: Any, where: str) -> Tensor:
        t = _as_tensor(y, "y", where)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ParameterTypeError(f"parameter y must be integer class labels, got dtype {t.dtype} ({where})")
        if t.ndim != 1:
            raise ValueError(f"parameter y must be a 1-D array (B,) of labels, got shape {tuple(t.shape)} ({where})")
        t = t.to(self.device, torch.int64)
        if len(t):
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= self.K:
                raise ValueError(f"parameter y must hold labels in [0, K) = [0, {self.K}), "
                                 f"got label {lo if lo < 0 else hi} ({where})")
        return t

    def _features(self, feats: Any, B: int, where: str) -> dict[str, Tensor]:
        if not isinstance(feats, Mapping) or not feats:
            raise bad_type("feats", f"a non-empty mapping {{level: (B, d) features}} ({where})", feats)
        if self.levels:
            missing = [n for n in self.levels if n not in feats]
            extra = [n for n in feats if n not in self.levels]
            if missing or extra:
                what = f"no level {missing[0]!r}" if missing else f"a new level {extra[0]!r}"
                raise ValueError(f"parameter feats must hold the levels of the first batch, {list(self.levels)}, "
                                 f"in every batch, got {what} ({where}); a level missing from some batches "
                                 f"would get class means of part of the data")
        out = {}
        for name, H in feats.items():
            if not isinstance(name, str):
                raise bad_type("feats", f"a mapping with string level names ({where})", name)
            t = _as_tensor(H, f"feats[{name!r}]", where)
            if t.is_complex() or t.dtype == torch.bool:
                raise ParameterTypeError(f"parameter feats[{name!r}] must be real features, got dtype {t.dtype} "
                                         f"({where})")
            if t.ndim < 2 or t.shape[0] != B:
                raise ValueError(f"parameter feats[{name!r}] must have shape (B, d) or (B, …) with B = {B} rows, "
                                 f"one per label, got shape {tuple(t.shape)} ({where})")
            t = t.flatten(1).to(self.device, _F64)
            d = self.levels.get(name)
            if d is not None and t.shape[1] != d:
                raise ValueError(f"parameter feats[{name!r}] must have d = {d} features per row as in the earlier "
                                 f"batches, got {t.shape[1]} ({where})")
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"parameter feats[{name!r}] must be finite, got {bad} NaN or inf values ({where})")
            out[name] = t
        return out

    def _classifier_arg(self, classifiers: Any, where: str) -> dict[str, tuple[Tensor, Tensor | None]]:
        if classifiers is None:
            classifiers = {}
        if not isinstance(classifiers, Mapping):
            raise bad_type("classifiers", f"a mapping {{level: (W, b)}} or None ({where})", classifiers)
        out = {}
        for name, wb in classifiers.items():
            if name not in self.levels:
                raise ValueError(f"parameter classifiers must name levels of feats {list(self.levels)}, "
                                 f"got {name!r} ({where})")
            if not isinstance(wb, tuple | list) or len(wb) != 2:
                raise bad_type(f"classifiers[{name!r}]", f"a pair (W, b) with b None for no bias ({where})", wb)
            d = self.levels[name]
            W = _as_tensor(wb[0], f"classifiers[{name!r}] W", where).to(self.device, _F64)
            if W.shape != (self.K, d):
                raise ValueError(f"parameter classifiers[{name!r}] must have W of shape (K, d) = ({self.K}, {d}), "
                                 f"got {tuple(W.shape)} ({where})")
            b = None
            if wb[1] is not None:
                b = _as_tensor(wb[1], f"classifiers[{name!r}] b", where).to(self.device, _F64)
                if b.shape != (self.K,):
                    raise ValueError(f"parameter classifiers[{name!r}] must have b of shape (K,) = ({self.K},), "
                                     f"got {tuple(b.shape)} ({where})")
            out[name] = (W, b)
        if self.classifier_levels is None:
            return out
        if tuple(out) != self.classifier_levels:
            raise ValueError(f"parameter classifiers must give the same levels in every batch after pass 1 "
                             f"({list(self.classifier_levels)} in the first), got {list(out)} ({where}); "
                             f"NC4 needs the classifier on every sample")
        for name, (W, b) in out.items():
            W0, b0 = self.classifiers[name]
            if not (torch.equal(W, W0) and ((b is None and b0 is None) or
                                            (b is not None and b0 is not None and torch.equal(b, b0)))):
                raise ValueError(f"parameter classifiers[{name!r}] must be the same (W, b) in every batch after "
                                 f"pass 1, got a different one ({where})")
        return out

    def _fix_classifiers(self, clf: dict[str, tuple[Tensor, Tensor | None]]) -> None:
        if self.classifier_levels is None:
            self.classifier_levels = tuple(clf)
            self.classifiers = dict(clf)
            for name in clf:
                self.nc4_miss.setdefault(name, self._zeros(()))
                self.nc4_miss_test.setdefault(name, self._zeros(()))

    def _refuse_after_reduce(self, phase: str, what: str) -> None:
        if phase in self.reduced:
            raise RuntimeError(f"{what} after all_reduce() of the {phase!r} statistics: add every batch first, "
                               f"then all_reduce() once per pass")

    # ------------------------------------------------------------------ pass 1
    def update_means(self, feats: Mapping[str, Any], y: Any) -> None:
        """Add a batch ``{level: H (B, d) or (B, …) flattened}`` with labels ``y (B,)`` to the per-class sums."""
        if self.means:
            raise RuntimeError("update_means after the means were finalized (pass 2 has started)")
        self._refuse_after_reduce("means", "update_means")
        where = f"pass 1, batch {self.batches[0]}"
        yt = self._labels(y, where)
        Hs = self._features(feats, len(yt), where)
        if not self.levels:
            self.levels = {name: H.shape[1] for name, H in Hs.items()}
            self.sums = {name: self._zeros(self.K, d) for name, d in self.levels.items()}
        self.counts += torch.bincount(yt, minlength=self.K).to(_F64)
        for name, H in Hs.items():
            self.sums[name].index_add_(0, yt, H)
        self.batches[0] += 1

    def finalize_means(self) -> dict[str, Tensor]:
        """Fix the class means ``{level: (K, d)}`` from pass 1 (the first pass-2 batch does it); refuses empty
        classes."""
        if self.means:
            return self.means
        if not self.sums:
            raise RuntimeError("no batches were added in pass 1 (update_means)")
        empty = torch.nonzero(self.counts == 0).flatten().tolist()
        if empty:
            raise ValueError(f"class(es) {empty} have no samples; every class in [0, {self.K}) needs at least one")
        for name, S in self.sums.items():
            M = S / self.counts[:, None]
            self.means[name] = M
            self._proj[name] = pinv_projector_t(M, self.rank_tol)
            self.nc1_sum[name] = self._zeros(())
            self.ss_within[name] = self._zeros(self.K)
            self.resid_sum[name] = self._zeros(self.K, self.levels[name])
            self.ncc_hits[name] = self._zeros(())
            self.ncc_hits_test[name] = self._zeros(())
        return self.means

    # ------------------------------------------------------------------ tiles
    def _col_tiles(self, rows: int, cols: int) -> Iterator[slice]:
        t = max(1, self.tile // max(rows, 1))
        for j in range(0, cols, t):
            yield slice(j, j + t)

    def _nearest_mean(self, H: Tensor, M: Tensor) -> Tensor:
        """argmin_k ‖h − μ_k‖ for rows ``H (B, d)``, over the classes in tiles."""
        best_v = best_i = None
        for s in self._col_tiles(H.shape[0], self.K):
            v, i = torch.cdist(H, M[s]).min(-1)
            i = i + s.start
            if best_v is None:
                best_v, best_i = v, i
            else:
                better = v < best_v
                best_v, best_i = torch.where(better, v, best_v), torch.where(better, i, best_i)
        return best_i

    def _argmax_logits(self, H: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        """argmax_k (W h + b)_k for rows ``H (B, d)``, over the classes in tiles."""
        best_v = best_i = None
        for s in self._col_tiles(H.shape[0], self.K):
            z = H @ W[s].T + (0 if b is None else b[s])
            v, i = z.max(-1)
            i = i + s.start
            if best_v is None:
                best_v, best_i = v, i
            else:
                better = v > best_v
                best_v, best_i = torch.where(better, v, best_v), torch.where(better, i, best_i)
        return best_i

    def _gram_tiles(self, A: Tensor, B: Tensor | None = None) -> Iterator[tuple[slice, Tensor]]:
        """Row tiles of A Bᵀ (B = A by default): ``(rows, A[rows] @ Bᵀ)``."""
        B = A if B is None else B
        t = max(1, self.tile // B.shape[0])
        for i in range(0, A.shape[0], t):
            s = slice(i, i + t)
            yield s, A[s] @ B.T

    def _gram_norm(self, A: Tensor, B: Tensor | None = None) -> Tensor:
        return torch.sqrt(sum(G.square().sum() for _, G in self._gram_tiles(A, B)))

    def _offdiag(self, s: slice, K: int, upper: bool = False) -> Tensor:
        r = torch.arange(s.start, min(s.stop, K), device=self.device)[:, None]
        c = torch.arange(K, device=self.device)[None, :]
        return c > r if upper else c != r

    def _nc2(self, A: Tensor, frame: str) -> Tensor:
        """‖G/‖G‖_F − T‖_F with G = A Aᵀ, T the unit-norm simplex ETF or orthogonal frame (Papyan et al. 2020)."""
        K = A.shape[0]
        norm = self._gram_norm(A)
        total = self._zeros(())
        for s, G in self._gram_tiles(A):
            eye = (~self._offdiag(s, K)).to(_F64)
            T = (eye - 1.0 / K) / math.sqrt(K - 1) if frame == "etf" else eye / math.sqrt(K)
            total += (G / norm - T).square().sum()
        return total.sqrt()

    def _cosine_tiles(self, V: Tensor) -> Iterator[tuple[slice, Tensor]]:
        Vn = V / torch.linalg.vector_norm(V, dim=-1, keepdim=True)
        return self._gram_tiles(Vn)

    def _equiangle(self, V: Tensor) -> Tensor:
        """Unbiased std of cos(v_k, v_k') over pairs k < k' (Papyan et al. 2020, Fig. 3); two sweeps."""
        K = V.shape[0]
        P = K * (K - 1) // 2
        mean = sum(C[self._offdiag(s, K, upper=True)].sum() for s, C in self._cosine_tiles(V)) / P
        ss = sum((C[self._offdiag(s, K, upper=True)] - mean).square().sum() for s, C in self._cosine_tiles(V))
        return (ss / (P - 1)).sqrt() if P > 1 else self._zeros(())

    def _maxangle(self, V: Tensor) -> Tensor:
        """Mean over k ≠ k' of |cos(v_k, v_k') + 1/(K−1)| (Papyan et al. 2020, Fig. 4)."""
        K = V.shape[0]
        total = sum((C[self._offdiag(s, K)] + 1.0 / (K - 1)).abs().sum() for s, C in self._cosine_tiles(V))
        return total / (K * (K - 1))

    def _cdnv(self, M: Tensor, var: Tensor) -> Tensor:
        """Mean over k ≠ k' of (σ_k² + σ_k'²) / (2‖μ_k − μ_k'‖²) (Galanti, György & Hutter 2022, Def. 1)."""
        K = M.shape[0]
        Mc = centred_means_t(M)
        total = self._zeros(())
        t = max(1, self.tile // K)
        for i in range(0, K, t):
            s = slice(i, i + t)
            D2 = torch.cdist(Mc[s], Mc, compute_mode="donot_use_mm_for_euclid_dist").square()
            off = self._offdiag(s, K)
            total += ((var[s, None] + var[None, :]) / (2 * D2))[off].sum()
        return total / (K * (K - 1))

    def _nc3_gram(self, M: Tensor, W: Tensor) -> Tensor:
        """‖WᵀW/‖WᵀW‖_F − MᵀM/‖MᵀM‖_F‖_F (``docs/notation.md``, nc3_gram) in the span of the rows of W and M:
        with Q (d, r ≤ 2K) an orthonormal basis of it, both d×d Grams are Q (·) Qᵀ of r×r ones, same norm."""
        Q, _ = torch.linalg.qr(torch.cat([W, M]).T)
        A, B = W @ Q, M @ Q
        P, R = A.T @ A, B.T @ B
        return torch.linalg.matrix_norm(P / torch.linalg.matrix_norm(P) - R / torch.linalg.matrix_norm(R))

    # ------------------------------------------------------------------ pass 2 and test
    def _second_pass_batch(self, method: str, where: str, feats: Mapping[str, Any], y: Any,
                           classifiers: Mapping[str, tuple[Any, Any]] | None) -> tuple[Tensor, dict, dict]:
        """Validate a batch of pass 2 or of the test set: labels, features and classifiers, checked against
        pass 1 (``where`` names the batch in errors)."""
        self.finalize_means()
        self._refuse_after_reduce("within", method)
        yt = self._labels(y, where)
        Hs = self._features(feats, len(yt), where)
        clf = self._classifier_arg(classifiers, where)
        self._fix_classifiers(clf)
        return yt, Hs, clf

    def update_within(self, feats: Mapping[str, Any], y: Any,
                      classifiers: Mapping[str, tuple[Any, Any]] | None = None) -> None:
        """Add a pass-2 batch (the data of pass 1, in any order) to the within-class statistics, the NCC hits
        and, for levels with a classifier ``(W (K, d), b (K,) or None)``, the NC4 mismatches."""
        yt, Hs, clf = self._second_pass_batch("update_within", f"pass 2, batch {self.batches[1]}", feats, y,
                                              classifiers)
        for name, H in Hs.items():
            M = self.means[name]
            R = H - M[yt]
            self.nc1_sum[name] += self._proj[name](R).square().sum()
            self.ss_within[name].index_add_(0, yt, R.square().sum(1))
            self.resid_sum[name].index_add_(0, yt, R)
            nearest = self._nearest_mean(H, M)
            self.ncc_hits[name] += (nearest == yt).sum()
            if name in clf:
                self.nc4_miss[name] += (self._argmax_logits(H, *clf[name]) != nearest).sum()
        self.counts_within += torch.bincount(yt, minlength=self.K).to(_F64)
        self.batches[1] += 1

    def update_test(self, feats: Mapping[str, Any], y: Any,
                    classifiers: Mapping[str, tuple[Any, Any]] | None = None) -> None:
        """Add a test batch: NCC accuracy and NC4 against the *training* class means of pass 1
        (Papyan et al. 2020, Fig. 7); the classifiers as in :meth:`update_within`."""
        yt, Hs, clf = self._second_pass_batch("update_test", f"test, batch {self.batches[2]}", feats, y, classifiers)
        for name, H in Hs.items():
            nearest = self._nearest_mean(H, self.means[name])
            self.ncc_hits_test[name] += (nearest == yt).sum()
            if name in clf:
                self.nc4_miss_test[name] += (self._argmax_logits(H, *clf[name]) != nearest).sum()
        self.n_test += len(yt)
        self.batches[2] += 1

    # ------------------------------------------------------------------ results
    def _check_passes(self) -> None:
        n1, n2 = int(self.counts.sum()), self.n_within
        if n2 != n1:
            raise RuntimeError(f"pass 2 saw {n2} samples but pass 1 saw {n1}")
        if not torch.equal(self.counts, self.counts_within):
            raise ValueError(f"the labels of pass 2 differ from those of pass 1: class counts "
                             f"{self.counts_within.long().tolist()} in pass 2, {self.counts.long().tolist()} in pass 1")
        for name, M in self.means.items():
            n = self.counts[:, None]
            var = self.ss_within[name] / self.counts
            rms = (M.square().sum(1) + var).sqrt().clamp_min(torch.finfo(_F64).tiny)
            drift = torch.linalg.vector_norm(self.resid_sum[name] / n, dim=1) / rms
            k = int(drift.argmax())
            if float(drift[k]) > self.drift_tol:
                raise ValueError(f"level {name!r}: the class means of pass 2 differ from those of pass 1 (class {k}: "
                                 f"by {float(drift[k]):.3g} of its RMS feature norm > drift_tol = {self.drift_tol:g}); "
                                 f"pass 2 must see the same (features, label) pairs as pass 1: the same labels, "
                                 f"the model in eval mode")

    def result(self) -> dict[str, dict[str, float]]:
        """``{level: {metric: value}}``: the keys of :func:`ncutils.metrics.nc_metrics` (``nc1, nc1_trace,
        nc2_etf, nc2_orthogonal``, Papyan's variants, ``nc2_equinorm_uncentred, mean_norm_sq,
        global_mean_norm``; with a classifier ``nc3_etf, nc3_orthogonal, nc2_equinorm_weights, nc2_equiangle_weights,
        nc2_maxangle_weights, nc4, nc3_gram``)
        plus ``ncc_accuracy`` (fraction with argmin_k ‖h − μ_k‖ = y) and ``cdnv``; with a test set also
        ``ncc_accuracy_test`` (and ``nc4_test`` with a classifier). The classifier–NCC agreement is 1 − nc4.
        Degenerate inputs (Σ_B = 0): ``inf``/``nan`` as in :mod:`ncutils.metrics` (module docstring)."""
        self.finalize_means()
        self._check_passes()
        N = self.n_within
        out = {}
        for name, M in self.means.items():
            Mc = centred_means_t(M)
            var = self.ss_within[name] / self.counts  # σ_k²: mean squared distance to the class mean
            tr_w, tr_b = self.ss_within[name].sum() / N, Mc.square().sum() / self.K
            mean_sq_norm = tr_w + (self.counts * M.square().sum(1)).sum() / N  # (1/N) Σ_i ‖h_i‖²
            zero_b, zero_w = zero_spread_t(tr_w, tr_b, mean_sq_norm, N)
            r = {
                "nc1": self.nc1_sum[name] / N,
                "nc1_trace": tr_w / tr_b,
                "nc2_etf": self._nc2(Mc, "etf"),
                "nc2_orthogonal": self._nc2(M, "orthogonal"),
                "nc2_equinorm": equinorm_t(Mc),
                "nc2_equiangle": self._equiangle(Mc),
                "nc2_maxangle": self._maxangle(Mc),
                "nc2_equinorm_uncentred": equinorm_t(M),
                "mean_norm_sq": M.square().sum(-1).mean(),
                "global_mean_norm": torch.linalg.vector_norm(M.mean(0)),
                "ncc_accuracy": self.ncc_hits[name] / N,
                "cdnv": self._cdnv(M, var),
            }
            if name in self.classifiers:
                W, _ = self.classifiers[name]
                r["nc3_etf"] = nc3_from_means_t(M, W=W, frame="etf")
                r["nc3_orthogonal"] = nc3_from_means_t(M, W=W, frame="orthogonal")
                r["nc2_equinorm_weights"] = equinorm_t(W)
                r["nc2_equiangle_weights"] = self._equiangle(W)
                r["nc2_maxangle_weights"] = self._maxangle(W)
                r["nc4"] = self.nc4_miss[name] / N
                r["nc3_gram"] = self._nc3_gram(M, W)
            if self.batches[2]:
                r["ncc_accuracy_test"] = self.ncc_hits_test[name] / self.n_test
                if name in self.classifiers:
                    r["nc4_test"] = self.nc4_miss_test[name] / self.n_test
            r = degenerate_rule_t(r, zero_b, zero_w)
            out[name] = {k: float(v) for k, v in r.items()}
        return out

    # ------------------------------------------------------------------ combining
    def _pass1_tensors(self) -> list[Tensor]:
        return [self.counts, *(self.sums[n] for n in sorted(self.levels))]

    def _pass2_tensors(self) -> list[Tensor]:
        out = [self.counts_within, self.n_test]
        for name in sorted(self.levels):
            out += [self.nc1_sum[name], self.ss_within[name], self.resid_sum[name], self.ncc_hits[name],
                    self.ncc_hits_test[name]]
            if name in self.classifiers:
                out += [self.nc4_miss[name], self.nc4_miss_test[name]]
        return out

    def merge(self, other: StreamingNC) -> StreamingNC:
        """Add ``other``'s sums and counts to these (e.g. the same model measured on another loader) and return self.

        Both must be in the same pass: merge the pass-1 accumulators, copy the merged state to every
        accumulator (``load_state_dict``) so that all use the same class means, run pass 2 on each, merge again.
        """
        if not isinstance(other, StreamingNC):
            raise bad_type("other", "a StreamingNC", other)
        if other.K != self.K:
            raise ValueError(f"parameter other must have K = {self.K} classes, got K = {other.K}")
        if other.rank_tol != self.rank_tol:
            raise ValueError(f"parameter other must have rank_tol = {self.rank_tol} as this accumulator, got "
                             f"{other.rank_tol} (its nc1 sums use another pseudo-inverse)")
        if other.phase != self.phase:
            raise ValueError(f"parameter other must be in the same pass as this accumulator ({self.phase!r}), "
                             f"got {other.phase!r}")
        if not other.levels:
            return self
        if self.levels and other.levels != self.levels:
            raise ValueError(f"parameter other must have the levels and widths of this accumulator {self.levels}, "
                             f"got {other.levels}")
        if self.phase == "means":
            if not self.levels:
                self.levels = dict(other.levels)
                self.sums = {name: self._zeros(self.K, d) for name, d in self.levels.items()}
            for mine, theirs in zip(self._pass1_tensors(), other._pass1_tensors(), strict=True):
                mine += theirs.to(self.device)
            self.batches[0] += other.batches[0]
            return self
        same = torch.equal(self.counts, other.counts.to(self.device)) and all(
            torch.equal(self.sums[n], other.sums[n].to(self.device)) for n in self.levels)
        if not same:
            raise ValueError("parameter other must have the pass-1 statistics of this accumulator to merge pass 2 "
                             "(the same class means): merge after pass 1 and share the state (load_state_dict) "
                             "before pass 2")
        if other.classifier_levels is not None:
            theirs = {n: (W.to(self.device), None if b is None else b.to(self.device))
                      for n, (W, b) in other.classifiers.items()}
            self._classifier_arg(theirs, "merge")
            self._fix_classifiers(theirs)
            for mine, t in zip(self._pass2_tensors(), other._pass2_tensors(), strict=True):
                mine += t.to(self.device)
        self.batches[1] += other.batches[1]
        self.batches[2] += other.batches[2]
        return self

    def all_reduce(self, group: Any = None) -> StreamingNC:
        """Sum the current pass's sums and counts over the processes of ``torch.distributed`` (every rank calls
        it: after pass 1, so that all ranks use the class means of all the data in pass 2, and after pass 2);
        afterwards every rank's :meth:`result` is that of one process that saw all the data. Returns self."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("all_reduce() needs an initialized torch.distributed process group "
                               "(torch.distributed.init_process_group)")
        phase = self.phase
        self._refuse_after_reduce(phase, "all_reduce()")
        sig: tuple = (self.K, phase, tuple(sorted(self.levels.items())), self.rank_tol)
        if phase == "within":
            checksum = [float(self.counts.sum()), *(float(self.sums[n].sum()) for n in sorted(self.levels))]
            sig += (self.classifier_levels, checksum)
        sigs: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(sigs, sig, group=group)
        for rank, s in enumerate(sigs):
            if s != sig:
                raise ValueError(f"the accumulators of the ranks differ (this one: K, pass, levels, rank_tol "
                                 f"{sig[:4]}; rank {rank}: {s[:4]}); every rank must add batches with the same "
                                 f"levels, widths and classifier levels, use the same rank_tol, and call "
                                 f"all_reduce() after pass 1")
        tensors = self._pass1_tensors() if phase == "means" else self._pass2_tensors()
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        i = 0
        for t in tensors:
            t.copy_(flat[i:i + t.numel()].view_as(t))
            i += t.numel()
        self.reduced.add(phase)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Everything accumulated (copies; ``torch.save``-able); :meth:`load_state_dict` restores it."""
        def c(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.clone() for k, v in d.items()}

        return {
            "K": self.K, "rank_tol": self.rank_tol, "levels": dict(self.levels), "batches": list(self.batches),
            "reduced": sorted(self.reduced),
            "counts": self.counts.clone(), "sums": c(self.sums), "means_fixed": bool(self.means),
            "counts_within": self.counts_within.clone(), "n_test": self.n_test.clone(),
            "classifier_levels": self.classifier_levels,
            "classifiers": {n: (W.clone(), None if b is None else b.clone()) for n, (W, b) in self.classifiers.items()},
            "nc1_sum": c(self.nc1_sum), "ss_within": c(self.ss_within), "resid_sum": c(self.resid_sum),
            "ncc_hits": c(self.ncc_hits), "nc4_miss": c(self.nc4_miss),
            "ncc_hits_test": c(self.ncc_hits_test), "nc4_miss_test": c(self.nc4_miss_test),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> StreamingNC:
        """Replace the accumulated state by ``state`` (from :meth:`state_dict`, possibly of another process)."""
        if not isinstance(state, Mapping) or "K" not in state:
            raise bad_type("state", "a StreamingNC.state_dict()", state)
        if state["K"] != self.K:
            raise ValueError(f"parameter state must have K = {self.K} classes, got K = {state['K']}")
        if state.get("rank_tol") != self.rank_tol:  # states saved before rank_tol existed have None
            raise ValueError(f"parameter state must have rank_tol = {self.rank_tol} as this accumulator, got "
                             f"{state.get('rank_tol')} (its nc1 sums use another pseudo-inverse)")
        self.reset()

        def t(x: Tensor) -> Tensor:
            return x.detach().to(self.device, _F64).clone()

        self.levels = dict(state["levels"])
        self.batches = list(state["batches"])
        self.reduced = set(state["reduced"])
        self.counts = t(state["counts"])
        self.sums = {k: t(v) for k, v in state["sums"].items()}
        if state["means_fixed"]:
            self.finalize_means()
            self.counts_within, self.n_test = t(state["counts_within"]), t(state["n_test"])
            for key in ("nc1_sum", "ss_within", "resid_sum", "ncc_hits", "ncc_hits_test"):
                setattr(self, key, {k: t(v) for k, v in state[key].items()})
            if state["classifier_levels"] is not None:
                self.classifier_levels = tuple(state["classifier_levels"])
                self.classifiers = {n: (t(W), None if b is None else t(b))
                                    for n, (W, b) in state["classifiers"].items()}
                self.nc4_miss = {k: t(v) for k, v in state["nc4_miss"].items()}
                self.nc4_miss_test = {k: t(v) for k, v in state["nc4_miss_test"].items()}
        return self
