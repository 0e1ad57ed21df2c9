"""Streaming neural-collapse metrics for network features that do not fit in memory (definitions: ``docs/notation.md``).

:class:`StreamingNC` accumulates, batch by batch and on the features' device, what
:func:`ncutils.metrics.nc_metrics` computes from a whole feature matrix:

- **pass 1** (:meth:`StreamingNC.update_means`): per-class sums and counts → class means μ_k;
- **pass 2** (:meth:`StreamingNC.update_within`): Σ_i ‖M̃^†(h_i − μ_{y_i})‖² (NC1),
  Σ_i ‖h_i − μ_{y_i}‖² (tr Σ_W, two-pass hence numerically stable) and, for a level read by
  the classifier, the NC4 mismatches argmax(W h + b) ≠ argmin_k ‖h − μ_k‖.

Memory per level: the sums and the means, 2·K·d float64 numbers, the K×d pseudo-inverse
factors of pass 2 (another K·d), and K counts — never a d×d matrix, so flattened
convolutional features (d = 10⁴–10⁵) are fine. Passes: two over the data, for every level
at once. Accumulation is in float64 whatever the features' dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ._validate import check_int
from .metrics import (
    centred_means_t,
    equiangle_t,
    equinorm_t,
    maxangle_t,
    nc2_from_means_t,
    nc3_from_means_t,
    pinv_projector_t,
)

__all__ = ["StreamingNC"]


class StreamingNC:
    """Two-pass accumulator of NC metrics for several named feature levels.

    ``K``: classes; ``device``: where the statistics live (the features' device).
    Use: for every batch ``update_means({name: H_b (B, d)}, y_b)``; then for every batch
    ``update_within(...)``; then :meth:`result` with the classifier ``(W (K, d), b)`` of the level it reads.
    """

    def __init__(self, K: int, device: torch.device | str = "cpu") -> None:
        self.K = check_int("K", K, 2)
        self.device = torch.device(device)
        self.sums: dict[str, Tensor] = {}
        self.counts = torch.zeros(K, dtype=torch.float64, device=self.device)
        self.means: dict[str, Tensor] = {}
        self._proj: dict[str, Callable[[Tensor], Tensor]] = {}
        self.nc1_sum: dict[str, Tensor] = {}
        self.trw_sum: dict[str, Tensor] = {}
        self.nc4_sum: dict[str, Tensor] = {}
        self.n_within = 0
        self._classifier: dict[str, tuple[Tensor, Tensor | None]] = {}

    # ------------------------------------------------------------------ pass 1
    def update_means(self, feats: Mapping[str, Tensor], y: Tensor) -> None:
        """Add a batch ``{level: H (B, d)}`` with labels ``y (B,)`` to the per-class sums."""
        if self.means:
            raise RuntimeError("update_means after the means were finalized (pass 2 has started)")
        y = y.to(self.device)
        self.counts += torch.bincount(y, minlength=self.K).to(torch.float64)
        for name, H in feats.items():
            H = H.detach().reshape(H.shape[0], -1).to(self.device, torch.float64)
            if name not in self.sums:
                if self.counts.sum() != len(y):
                    raise ValueError(f"level {name!r} appeared after the first batch")
                self.sums[name] = torch.zeros(self.K, H.shape[1], dtype=torch.float64, device=self.device)
            self.sums[name].index_add_(0, y, H)

    def _finalize_means(self) -> None:
        if self.means:
            return
        if not self.sums:
            raise RuntimeError("no batches were added in pass 1 (update_means)")
        empty = torch.nonzero(self.counts == 0).flatten().tolist()
        if empty:
            raise ValueError(f"class(es) {empty} have no samples; every class in [0, {self.K}) needs at least one")
        for name, S in self.sums.items():
            M = S / self.counts[:, None]
            self.means[name] = M
            self._proj[name] = pinv_projector_t(M)
            self.nc1_sum[name] = torch.zeros((), dtype=torch.float64, device=self.device)
            self.trw_sum[name] = torch.zeros((), dtype=torch.float64, device=self.device)

    # ------------------------------------------------------------------ pass 2
    def update_within(self, feats: Mapping[str, Tensor], y: Tensor,
                      classifiers: Mapping[str, tuple[Tensor, Tensor | None]] | None = None) -> None:
        """Add a batch to the within-class statistics (and NC4 for levels with a classifier ``(W, b)``)."""
        self._finalize_means()
        y = y.to(self.device)
        self.n_within += len(y)
        for name, H in feats.items():
            H = H.detach().reshape(H.shape[0], -1).to(self.device, torch.float64)
            M = self.means[name]
            R = H - M[y]
            self.nc1_sum[name] += self._proj[name](R).square().sum()
            self.trw_sum[name] += R.square().sum()
            if classifiers and name in classifiers:
                W, b = classifiers[name]
                W = W.detach().to(self.device, torch.float64)
                logits = H @ W.T + (0 if b is None else b.detach().to(self.device, torch.float64))
                nearest = torch.cdist(H, M).argmin(-1)
                miss = (logits.argmax(-1) != nearest).sum().to(torch.float64)
                self.nc4_sum[name] = self.nc4_sum.get(name, torch.zeros((), dtype=torch.float64,
                                                                        device=self.device)) + miss
                self._classifier[name] = (W, b)

    # ------------------------------------------------------------------ results
    def result(self) -> dict[str, dict[str, float]]:
        """``{level: {metric: value}}`` with the keys of :func:`ncutils.metrics.nc_metrics` (nc1, nc1_trace,
        nc2_etf, nc2_orthogonal, Papyan's variants, mean_norm_sq; nc3_* and nc4 where a classifier was given)."""
        self._finalize_means()
        if self.n_within != int(self.counts.sum()):
            raise RuntimeError(f"pass 2 saw {self.n_within} samples but pass 1 saw {int(self.counts.sum())}")
        out = {}
        for name, M in self.means.items():
            Mc = centred_means_t(M)
            r = {
                "nc1": self.nc1_sum[name] / self.n_within,
                "nc1_trace": (self.trw_sum[name] / self.n_within) / (Mc.square().sum() / self.K),
                "nc2_etf": nc2_from_means_t(M, "etf"),
                "nc2_orthogonal": nc2_from_means_t(M, "orthogonal"),
                "nc2_equinorm": equinorm_t(Mc),
                "nc2_equiangle": equiangle_t(Mc),
                "nc2_maxangle": maxangle_t(Mc),
                "mean_norm_sq": M.square().sum(-1).mean(),
            }
            if name in self._classifier:
                W, _ = self._classifier[name]
                r["nc3_etf"] = nc3_from_means_t(M, W=W, frame="etf")
                r["nc3_orthogonal"] = nc3_from_means_t(M, W=W, frame="orthogonal")
                r["nc2_equinorm_weights"] = equinorm_t(W)
                r["nc4"] = self.nc4_sum[name] / self.n_within
            out[name] = {k: float(v) for k, v in r.items()}
        return out
