"""A ``torchmetrics.Metric`` of neural collapse (needs the ``torchmetrics`` extra): :class:`NeuralCollapse`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._extras import need
from .._validate import bad_type, check_int
from ..stream import StreamingNC

_tm = need("torchmetrics", "torchmetrics")

__all__ = ["NeuralCollapse"]


class NeuralCollapse(_tm.Metric):
    """NC1–NC4, NCC accuracy and CDNV of named feature levels as a ``torchmetrics.Metric`` (Papyan, Han & Donoho
    2020; Galanti et al. 2022): :class:`ncutils.stream.StreamingNC` with its sums and counts as metric states
    (``dist_reduce_fx="sum"``), so that in a DDP job ``compute()`` gives the numbers of one process on all data.

    ``num_classes``: K; ``dims``: ``{level: d}``, the width of every level's (flattened) features ``(B, d)``.
    Two passes over the same data: ``update(features_by_layer, y)`` for every batch, :meth:`finalize_means`
    (on every rank: it sums the class sums over the processes), ``update(features_by_layer, y, classifiers)``
    again for every batch, then ``compute()`` → ``{level: {metric: value}}`` as :meth:`StreamingNC.result`.
    ``forward`` (calling the metric on a batch) is refused: one batch has no class means of its own.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, dims: Mapping[str, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        K = check_int("num_classes", num_classes, 2)
        if not isinstance(dims, Mapping) or not dims:
            raise bad_type("dims", "a non-empty mapping {level: d}", dims)
        self.dims = {str(name): check_int(f"dims[{name!r}]", d, 1) for name, d in dims.items()}
        self.num_classes = K
        z = torch.zeros
        self.add_state("counts", z(K, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts_within", z(K, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_test", z((), dtype=torch.float64), dist_reduce_fx="sum")
        for i, d in enumerate(self.dims.values()):
            for key, shape in (("sum", (K, d)), ("nc1_sum", ()), ("ss_within", (K,)), ("resid_sum", (K, d)),
                               ("ncc_hits", ()), ("ncc_hits_test", ()), ("nc4_miss", ()), ("nc4_miss_test", ())):
                self.add_state(f"{key}_{i}", z(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self._acc = StreamingNC(K, self.counts.device)

    def _state(self, key: str) -> dict[str, Tensor]:
        return {name: getattr(self, f"{key}_{i}") for i, name in enumerate(self.dims)}

    def _bind(self) -> StreamingNC:
        """The accumulator, its sums pointing at the current metric states (torchmetrics replaces them on
        sync, reset and ``.to(device)``)."""
        acc = self._acc
        acc.device = self.counts.device
        if not acc.means:
            acc.counts, acc.sums = self.counts, self._state("sum")
            return acc
        acc.counts_within, acc.n_test = self.counts_within, self.n_test
        for key in ("nc1_sum", "ss_within", "resid_sum", "ncc_hits", "ncc_hits_test", "nc4_miss", "nc4_miss_test"):
            setattr(acc, key, self._state(key))
        return acc

    def update(self, features_by_layer: Mapping[str, Any], y: Any,
               classifiers: Mapping[str, tuple[Any, Any]] | None = None) -> None:
        """Add a batch ``{level: H (B, d)}``, ``y (B,)``: to the class sums before :meth:`finalize_means`, to the
        within-class statistics after (with ``classifiers = {level: (W (K, d), b or None)}`` for NC3/NC4)."""
        acc = self._bind()
        if not acc.means:
            if classifiers is not None:
                raise ValueError("parameter classifiers must be None in the first pass (before finalize_means())")
            if isinstance(features_by_layer, Mapping) and set(features_by_layer) != set(self.dims):
                raise ValueError(f"parameter features_by_layer must hold the levels of dims {list(self.dims)}, "
                                 f"got {list(features_by_layer)}")
            if not acc.levels:
                acc.levels = dict(self.dims)
            acc.update_means(features_by_layer, y)
        else:
            acc.update_within(features_by_layer, y, classifiers)

    def finalize_means(self) -> None:
        """End of the first pass: sum the class sums and counts over the processes (when distributed) and fix
        the class means; the next :meth:`update` calls are the second pass."""
        acc = self._bind()
        if acc.means:
            raise RuntimeError("finalize_means() was already called; reset() starts a new measurement")
        synced = False
        if not self._is_synced:
            self.sync()
            synced = self._is_synced
        acc.counts, acc.sums = self.counts.clone(), {n: t.clone() for n, t in self._state("sum").items()}
        if synced:
            self.unsync()
        acc.finalize_means()

    def compute(self) -> dict[str, dict[str, float]]:
        """``{level: {metric: value}}`` (:meth:`ncutils.stream.StreamingNC.result`) over every process's data."""
        acc = self._bind()
        if not acc.means:
            raise RuntimeError("compute() needs both passes: call finalize_means() after the first and update() "
                               "again with the same data")
        acc.counts, acc.sums = self.counts, self._state("sum")
        return acc.result()

    def reset(self) -> None:
        super().reset()
        self._acc.reset()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("NeuralCollapse has no per-batch value (NC metrics need the class means of all the data): "
                           "call update() for every batch, finalize_means(), update() again, then compute()")
