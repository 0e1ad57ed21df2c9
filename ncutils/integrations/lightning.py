"""A PyTorch Lightning ``Callback`` that measures neural collapse every k epochs (needs the ``lightning`` extra)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .._extras import need
from .._validate import bad_type, check_bool, check_int
from ..measure import measure

_pl = need("lightning.pytorch", "lightning")

__all__ = ["NeuralCollapseCallback"]


class NeuralCollapseCallback(_pl.Callback):
    """Measure NC1–NC4, NCC accuracy and CDNV (Papyan, Han & Donoho 2020; Galanti et al. 2022) of the modules
    ``layers`` of the LightningModule with :func:`ncutils.measure` at the end of every ``every_n_epochs``-th
    training epoch (and the last), and log them with ``pl_module.log_dict`` as ``"<prefix>/<level>/<metric>"``
    (the trainer's logger: CSV, TensorBoard, W&B …).

    ``layers``, ``classifier``, ``classifier_reads``, ``pooled``, ``flatten``: as in :func:`ncutils.measure`
    (names relative to the LightningModule, e.g. ``"model.layer4"``); ``num_classes``: K. ``loader``: the
    ``(inputs, labels)`` batches to measure on; default: the trainer's training dataloader (each rank's shard
    under DDP, summed over the ranks). ``test_loader``: adds the test-set NCC accuracy and NC4. ``metrics``: the
    metric names to log (default: all). The last measurement is kept in :attr:`last`
    (``{level: {metric: value}}``, the epoch in :attr:`last_epoch`).
    """

    def __init__(self, layers: Sequence[str], *, num_classes: int, every_n_epochs: int = 1,
                 classifier: str | None = None, classifier_reads: str | None = None,
                 loader: Iterable | None = None, test_loader: Iterable | None = None, pooled: bool = True,
                 flatten: bool = False, metrics: Sequence[str] | None = None, prefix: str = "nc") -> None:
        super().__init__()
        if isinstance(layers, str) or not isinstance(layers, Sequence):
            raise bad_type("layers", "a list of module names from pl_module.named_modules()", layers)
        if metrics is not None and (isinstance(metrics, str) or not isinstance(metrics, Sequence)):
            raise bad_type("metrics", "a list of metric names or None", metrics)
        if not isinstance(prefix, str):
            raise bad_type("prefix", "a string", prefix)
        self.layers = list(layers)
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, 1)
        self.classifier, self.classifier_reads = classifier, classifier_reads
        self.loader, self.test_loader = loader, test_loader
        self.pooled, self.flatten = check_bool("pooled", pooled), check_bool("flatten", flatten)
        self.metrics = None if metrics is None else list(metrics)
        self.prefix = prefix
        self.last: dict[str, dict[str, float]] | None = None
        self.last_epoch: int | None = None

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last:
            return
        loader = self.loader if self.loader is not None else trainer.train_dataloader
        if loader is None:
            raise ValueError("parameter loader is needed: the trainer has no training dataloader to measure on")
        res = measure(pl_module, loader, self.layers, num_classes=self.num_classes, classifier=self.classifier,
                      classifier_reads=self.classifier_reads, device=pl_module.device, test_loader=self.test_loader,
                      pooled=self.pooled, flatten=self.flatten, distributed=trainer.world_size > 1)
        self.last, self.last_epoch = res, epoch
        values = {f"{self.prefix}/{level}/{k}": v for level, vals in res.items() for k, v in vals.items()
                  if self.metrics is None or k in self.metrics}
        pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=False)
