"""Training real networks whose features the theory notebooks analyse.

:func:`train_mlp` trains a small fully connected ReLU network with SGD on a
tensor dataset (full tensors in memory, shuffled mini-batches, deterministic
from ``seed``); :func:`mlp_features` returns the features of every hidden layer.
:func:`train_resnet` trains ResNet18 (CIFAR stem) and measures layer-wise neural
collapse with streaming metrics (:func:`measure_network`), checkpointing and resuming.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ._extras import need
from ._validate import Rule, check_bool, check_choice, check_integer, check_ints
from .data import DATASETS, DeviceBatches
from .device import is_quiet, progress_bar
from .nets import RESNET_LAYERS, FeatureTaps
from .paths import atomic_path, load_checkpoint, tensor_digest

pd = need("pandas")  # the [data] extra: tables

__all__ = ["LOSSES", "PRECISIONS", "SCHEDULES", "MLPResult", "TrainConfig", "TrainResult", "TrainingCheckpoint",
           "checkpoint_file", "measure_network", "mlp_features", "run_fingerprint", "train_epoch", "train_mlp",
           "train_resnet"]


@dataclass
class MLPResult:
    """A trained MLP (``nn.Sequential`` of Linear/ReLU pairs + a linear classifier) and its per-epoch history."""

    model: nn.Sequential
    history: pd.DataFrame


def _mlp(d_in: int, widths: Sequence[int], K: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    prev = d_in
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, K))
    return nn.Sequential(*layers)


def train_mlp(X: Tensor, y: Tensor, widths: Sequence[int], *, epochs: int, lr: float = 0.05,
              batch_size: int = 64, momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
              progress: bool | None = None) -> MLPResult:
    """Train a ReLU MLP ``X (N, …) → widths → K`` with cross-entropy, SGD with momentum, on the CPU.

    Returns the model (eval mode) and a table of epoch, loss and training accuracy.
    """
    check_ints("widths", widths, 1)
    check_integer("epochs", epochs, 1)
    check_integer("batch_size", batch_size, 1)
    K = int(y.max()) + 1
    torch.manual_seed(seed)
    model = _mlp(X[0].numel(), widths, K)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    show = (not is_quiet()) if progress is None else progress
    for epoch in progress_bar(range(1, epochs + 1), desc="MLP", disable=not show):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if not torch.isfinite(torch.tensor(total)):
            raise RuntimeError(f"MLP training diverged at epoch {epoch} (loss {total}); lower lr = {lr}")
        model.eval()
        with torch.no_grad():
            acc = float((model(X).argmax(-1) == y).float().mean())
        rows.append({"epoch": epoch, "loss": total / len(y), "train_accuracy": acc})
    return MLPResult(model.eval(), pd.DataFrame(rows))


@torch.no_grad()
def mlp_features(model: nn.Sequential, X: Tensor) -> list[Tensor]:
    """Post-ReLU features of every hidden layer of a :func:`train_mlp` model, each ``(N, width)`` float64."""
    feats, h = [], X
    for layer in model:
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            feats.append(h.to(torch.float64))
    return feats


# --------------------------------------------------------------------------- ResNet18 (notebook 07)
SCHEDULES: tuple[str, ...] = ("step40", "thirds", "constant")
LOSSES: tuple[str, ...] = ("mse", "ce")
#: :func:`train_resnet`'s training precisions: bfloat16 autocast (CUDA's default) or float32 (CPU's default).
PRECISIONS: tuple[str, ...] = ("bf16", "fp32")


def _layer_names(layers: tuple[str, ...]) -> None:
    unknown = [name for name in layers if name not in RESNET_LAYERS]
    if not layers or unknown:
        raise ValueError(f"must be a non-empty list of ResNet18 layers from {RESNET_LAYERS}, "
                         f"got {'unknown ' + repr(unknown) if unknown else 'none'}")


#: Field names as they were before a rename, used by :meth:`TrainConfig.fingerprint` so that checkpoints
#: written before the rename still resume.
_FINGERPRINT_NAMES = {"width_multiplier": "width"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a ResNet training run (its checkpoint fingerprint): the training part of
    notebook 07's parameters, under the same names; :attr:`RULES` is the one description of their valid
    values (``__post_init__`` validates with it), :meth:`from_params` picks them out of the notebook's parameters.

    Loss: ``"mse"`` is ½‖W h + b − e_y‖² averaged over the batch — Tirer & Bruna's 1/(2Kn)‖WH − Y‖²
    with the network's features as H; ``"ce"`` the mean cross-entropy. Weight decay: SGD's
    ``weight_decay`` adds wd·θ to the gradient, i.e. the penalty (wd/2)‖θ‖², so ``wd_classifier`` is the
    UFM's λ_W exactly; ``wd_features`` decays every backbone parameter, which the UFM abstracts as its λ_H
    on H (a heuristic correspondence only). The classifier's bias is not decayed (the UFM's unregularized
    bias). Schedules: ``step40`` ÷10 every 40 epochs (Tirer & Bruna), ``thirds`` ÷10 at 1/3 and 2/3 of
    the epochs (Papyan et al.), ``constant``.
    """

    dataset: str = "mnist"
    loss: str = "mse"
    fc_bias: bool = False
    lr: float = 0.05
    schedule: str = "step40"
    epochs: int = 350
    batch_size: int = 128
    momentum: float = 0.9
    wd_features: float = 5e-4
    wd_classifier: float = 5e-4
    per_class: int = 5000
    test_per_class: int = 0
    width_multiplier: float = 1.0
    layers: tuple[str, ...] = RESNET_LAYERS
    flatten: bool = False
    measure_every: int = 10
    seed: int = 0

    #: Type and valid values of every field (the notebook's parameter rules for these names).
    RULES: ClassVar[dict[str, Rule]] = {
        "dataset": Rule(str, choices=tuple(DATASETS), doc="dataset: mnist or cifar10"),
        "loss": Rule(str, choices=LOSSES, doc="mse (one-hot targets, 1/2 squared error) or ce (cross-entropy)"),
        "fc_bias": Rule(bool, doc="classifier bias (never decayed)"),
        "lr": Rule(float, low=0.0, strict_low=True, doc="SGD learning rate"),
        "schedule": Rule(str, choices=SCHEDULES, doc="step40 (÷10 every 40 epochs), thirds (at 1/3 and 2/3), constant"),
        "epochs": Rule(int, low=1, doc="training epochs"),
        "batch_size": Rule(int, low=1, doc="mini-batch size"),
        "momentum": Rule(float, low=0.0, doc="SGD momentum"),
        "wd_features": Rule(float, low=0.0, doc="weight decay of every backbone parameter"),
        "wd_classifier": Rule(float, low=0.0, doc="weight decay of the classifier weight W (the UFM's lambda_W)"),
        "per_class": Rule(int, low=1, doc="training images per class, a balanced random subset"),
        "test_per_class": Rule(int, low=0, doc="test images per class; 0 uses the whole test split"),
        "width_multiplier": Rule(float, low=0.0, strict_low=True,
                                 doc="channel multiplier (1.0 is ResNet18's 64-128-256-512)"),
        "layers": Rule(list, check=_layer_names, doc=f"measured layers, a non-empty list from {RESNET_LAYERS}"),
        "flatten": Rule(bool, doc="also measure the flattened (C x H x W) feature maps"),
        "measure_every": Rule(int, low=1, doc="measure after epoch 1, every k epochs and after the last"),
        "seed": Rule(int, low=0, doc="seed of the subset, the initialization and the batch order"),
    }

    def __post_init__(self) -> None:
        if isinstance(self.layers, tuple):  # a list in the notebook's parameters, a tuple here (hashable)
            object.__setattr__(self, "layers", list(self.layers))
        for f in fields(self):
            object.__setattr__(self, f.name, self.RULES[f.name].validate(f.name, getattr(self, f.name)))
        object.__setattr__(self, "layers", tuple(self.layers))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainConfig:
        """The configuration in notebook 07's parameters ``params`` (a mapping with other keys too: device,
        data_root, results_dir, …): every field present under its own name; absent fields keep their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})

    def milestones(self) -> list[int]:
        """Epochs after which the learning rate is divided by 10."""
        if self.schedule == "step40":
            return list(range(40, self.epochs, 40))
        if self.schedule == "thirds":
            return sorted({self.epochs // 3, 2 * self.epochs // 3} - {0})
        return []

    def measured_epochs(self) -> list[int]:
        """Epochs after which the metrics are measured: 1, every ``measure_every``, and the last."""
        return sorted({1, self.epochs, *range(self.measure_every, self.epochs + 1, self.measure_every)})

    def fingerprint(self) -> str:
        """SHA-256 of the configuration (the dataclass repr, with fields under their names before any rename:
        equal for equal configurations, and unchanged by the rename of ``width`` to ``width_multiplier``)."""
        import hashlib

        body = ", ".join(f"{_FINGERPRINT_NAMES.get(f.name, f.name)}={getattr(self, f.name)!r}" for f in fields(self))
        return hashlib.sha256(f"{type(self).__qualname__}({body})".encode()).hexdigest()


@dataclass
class TrainResult:
    """A finished (or resumed-and-finished) run: the model, a long-form ``history`` (epoch, layer,
    metric, value; layer ``"model"`` holds losses, accuracies and timings), wall-clock totals in seconds, and how
    the training step ran (``precision`` ``"bf16"``/``"fp32"``, ``channels_last``, ``compiled``)."""

    model: nn.Module
    history: pd.DataFrame
    config: TrainConfig
    train_time_s: float
    measure_time_s: float
    device: str
    resumed_from: int
    precision: str = "fp32"
    channels_last: bool = False
    compiled: bool = False

    def final(self, metric: str, layer: str = "model") -> float:
        h = self.history
        rows = h[(h.metric == metric) & (h.layer == layer)]
        if rows.empty:
            raise KeyError(f"no metric {metric!r} at layer {layer!r}")
        return float(rows[rows.epoch == rows.epoch.max()].value.iloc[0])


def _loss_fn(loss: str, K: int):
    if loss == "mse":
        return lambda out, y: 0.5 * (out - nn.functional.one_hot(y, K).to(out.dtype)).square().sum(1).mean()
    return lambda out, y: nn.functional.cross_entropy(out, y)


@dataclass
class TrainingCheckpoint:
    """The resumable state of a mini-batch training run in one file (``path``; None: no checkpointing), written
    atomically: model, optimizer, scheduler, the shuffling ``generator``, the caller's ``history`` and the
    epoch and times. A file written for another ``fingerprint`` (configuration and data) is refused
    (:func:`ncutils.paths.load_checkpoint`)."""

    path: Path | None
    fingerprint: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator

    def load(self) -> dict[str, Any] | None:
        """Restore model, optimizer, scheduler and generator from the file and return its state (``epoch,
        history, train_time, measure_time``), or None when there is no file."""
        if self.path is None or not self.path.exists():
            return None
        state = load_checkpoint(self.path, self.fingerprint)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        return state

    def save(self, epoch: int, history: Any, train_time: float, measure_time: float) -> None:
        """Write the state after ``epoch`` (nothing without a path)."""
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            torch.save({"fingerprint": self.fingerprint, "epoch": epoch, "model": self.model.state_dict(),
                        "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "generator": self.generator.get_state(), "history": history,
                        "train_time": train_time, "measure_time": measure_time}, tmp)


def train_epoch(loss_of: Callable[[Tensor, Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]],
                opt: torch.optim.Optimizer, *, epoch: int, lr: float, device: torch.device, bf16: bool = False,
                accumulate: torch.dtype = torch.float32) -> tuple[float, float]:
    """One epoch of mini-batch training: for every ``(X, y)`` of ``batches``, ``loss_of(X, y)`` (under bf16
    autocast when ``bf16``), backward and ``opt.step()``. Returns ``(mean loss over the samples, seconds)``; the
    per-batch losses are summed on the device in ``accumulate`` (one host sync per epoch).
    Raises :class:`ncutils.solve.DivergenceError` when the mean loss is not finite (``epoch`` and ``lr`` name it)."""
    from .solve import DivergenceError

    t0 = time.perf_counter()
    total = torch.zeros((), dtype=accumulate, device=device)
    count = 0
    for X, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(X, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach().to(accumulate) * len(y)
        count += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    mean_loss = float(total) / max(count, 1)
    if not math.isfinite(mean_loss):
        raise DivergenceError(f"training diverged at epoch {epoch}: mean loss {mean_loss} with lr = {lr}; lower lr")
    return mean_loss, seconds


_Taps = FeatureTaps  # the old private name


class _Epochs:
    """A :class:`DeviceBatches` as an iterable of batches: one epoch per iteration."""

    def __init__(self, batches: DeviceBatches) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches.epoch())


#: module names (``model.named_modules()``) of the taps of :data:`RESNET_LAYERS` in :func:`ncutils.nets.resnet18`
_RESNET_MODULES = {"stem": "maxpool", **{f"layer{i}": f"layer{i}" for i in range(1, 5)}}


@torch.no_grad()
def measure_network(model: nn.Module, train: DeviceBatches, test: DeviceBatches | None, K: int, loss: str,
                    layers: tuple[str, ...], flatten: bool = False,
                    autocast: bool = False) -> dict[str, dict[str, float]]:
    """NC metrics of every tapped ResNet18 level over the whole training set, plus losses, accuracies and NC4 on
    the test set (nearest *training* class mean vs the classifier), in eval mode: :func:`ncutils.measure` with
    the taps of :data:`ncutils.nets.RESNET_LAYERS` (globally average-pooled, and ``"<name>_flat"`` with
    ``flatten``); NC3 and NC4 at ``layer4`` (the classifier's input) when tapped. ``autocast``: run the forward
    passes under bf16 autocast (the features are still taken in float32).
    """
    from .measure import measure

    lf = _loss_fn(loss, K)
    sums = {"train_loss": 0.0, "train_accuracy": 0.0, "test_loss": 0.0, "test_accuracy": 0.0}

    def on_output(out: Tensor, y: Tensor, split: str) -> None:
        out = out.float()
        sums[f"{split}_loss"] += float(lf(out, y)) * len(y)
        sums[f"{split}_accuracy"] += float((out.argmax(1) == y).sum())

    head = "layer4" in layers
    res = measure(model, _Epochs(train), [_RESNET_MODULES[name] for name in layers], num_classes=K,
                  classifier="fc" if head else None, classifier_reads="layer4" if head else None,
                  device=train.y.device, test_loader=None if test is None else _Epochs(test), pooled=True,
                  flatten=flatten, autocast=torch.bfloat16 if autocast else None, on_output=on_output)
    tap = {m: name for name, m in _RESNET_MODULES.items()}  # "maxpool" → "stem", "maxpool_flat" → "stem_flat"
    res = {tap[level] if level in tap else tap[level.removesuffix("_flat")] + "_flat": vals
           for level, vals in res.items()}
    N = len(train.y)
    res["model"] = {"train_loss": sums["train_loss"] / N, "train_accuracy": sums["train_accuracy"] / N}
    if test is not None:
        res["model"].update({k: sums[k] / len(test.y) for k in ("test_loss", "test_accuracy")})
        if head:
            res["model"]["nc4_test"] = res["layer4"].pop("nc4_test")
    return res


def run_fingerprint(cfg: TrainConfig, data: Sequence[Tensor | None]) -> str:
    """What a training run's checkpoint must match: the configuration and the data's identity (its tensors, so
    the dataset, the subset, and real versus synthetic files all count)."""
    return hashlib.sha256((cfg.fingerprint() + tensor_digest(*data)).encode()).hexdigest()


def checkpoint_file(folder: str | Path, cfg: TrainConfig, data: Sequence[Tensor | None]) -> Path:
    """``folder/checkpoint-<fingerprint>.pt``: one file per configuration and data, so a run never meets
    another run's checkpoint."""
    return Path(folder) / f"checkpoint-{run_fingerprint(cfg, data)[:16]}.pt"


def train_resnet(cfg: TrainConfig, data: tuple[Tensor, Tensor, Tensor | None, Tensor | None], *,
                 device: torch.device | str = "cpu", checkpoint: str | Path | None = None, checkpoint_every: int = 1,
                 compile: bool = False, precision: str | None = None, channels_last: bool | None = None,
                 progress: bool | None = None) -> TrainResult:
    """Train ResNet18 (:func:`ncutils.nets.resnet18`) with SGD + momentum and measure layer-wise NC.

    ``data``: ``(X_train, y_train, X_test, y_test)`` image tensors (test may be None). The training set
    lives on ``device`` as one tensor (:class:`ncutils.data.DeviceBatches`). By default, on CUDA: bf16 autocast
    and channels_last; on CPU: float32, deterministic from ``cfg.seed``. Explicitly, on either device:
    ``precision`` ``"bf16"`` (the training forward passes under ``torch.autocast(device.type, bfloat16)``; the
    loss, the gradients' accumulation and the parameters stay float32) or ``"fp32"``; ``channels_last`` (model and
    images in NHWC memory order); ``compile``: the training step's model through ``torch.compile`` (inductor:
    Triton kernels on CUDA, C++ on CPU, which needs a C compiler). The network metrics are always measured in
    float32 (:func:`measure_network` outside autocast, on the uncompiled model).
    ``checkpoint``: a file written atomically every ``checkpoint_every`` epochs and at the end (model,
    optimizer, scheduler, shuffling generator, history); a run restarted with the same configuration
    resumes from it and reproduces the uninterrupted run; a different configuration raises.
    Raises :class:`ncutils.solve.DivergenceError` when the training loss stops being finite.
    """
    from .nets import resnet18

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    precision = check_choice("precision", precision, PRECISIONS) if precision is not None else (
        "bf16" if cuda else "fp32")
    nhwc = cuda if channels_last is None else check_bool("channels_last", channels_last)
    check_bool("compile", compile)
    Xtr, ytr, Xte, yte = data
    K = int(ytr.max()) + 1
    torch.manual_seed(cfg.seed)
    model = resnet18(K, Xtr.shape[1], cfg.fc_bias, cfg.width_multiplier).to(dev)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    head = [model.fc.weight]
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("fc.")],
               "weight_decay": cfg.wd_features},
              {"params": head, "weight_decay": cfg.wd_classifier}]
    if model.fc.bias is not None:
        groups.append({"params": [model.fc.bias], "weight_decay": 0.0})
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones(), gamma=0.1)
    train = DeviceBatches(Xtr, ytr, cfg.batch_size, dev, seed=cfg.seed, channels_last=nhwc)
    full = DeviceBatches(Xtr, ytr, max(cfg.batch_size, 256), dev, shuffle=False, channels_last=nhwc)
    test = None if Xte is None else DeviceBatches(Xte, yte, max(cfg.batch_size, 256), dev, shuffle=False,
                                                 channels_last=nhwc)
    rows: list[dict] = []
    start, t_train, t_measure = 0, 0.0, 0.0
    ckpt = TrainingCheckpoint(Path(checkpoint) if checkpoint is not None else None, run_fingerprint(cfg, data),
                              model, opt, sched, train.generator)
    state = ckpt.load()
    if state is not None:
        rows, start, t_train, t_measure = state["history"], state["epoch"], state["train_time"], state["measure_time"]
    resumed_from = start
    step_model = torch.compile(model) if compile else model
    bf16 = precision == "bf16"
    lf = _loss_fn(cfg.loss, K)
    measured = set(cfg.measured_epochs())

    show = (not is_quiet()) if progress is None else progress
    bar = progress_bar(range(start + 1, cfg.epochs + 1), desc="ResNet18", disable=not show, initial=start,
                       total=cfg.epochs)
    for epoch in bar:
        model.train()
        mean_loss, epoch_time = train_epoch(lambda X, y: lf(step_model(X).float(), y), train.epoch(), opt,
                                            epoch=epoch, lr=sched.get_last_lr()[0], device=dev, bf16=bf16)
        t_train += epoch_time
        sched.step()
        rows += [{"epoch": epoch, "layer": "model", "metric": "epoch_time_s", "value": epoch_time},
                 {"epoch": epoch, "layer": "model", "metric": "running_loss", "value": mean_loss}]
        if epoch in measured:
            t0 = time.perf_counter()
            res = measure_network(model, full, test, K, cfg.loss, cfg.layers, cfg.flatten)  # float32 features
            if cuda:
                torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t0
            t_measure += dt
            with torch.no_grad():
                reg = sum(cfg.wd_features / 2 * float(p.square().sum()) for p in groups[0]["params"])
                reg += cfg.wd_classifier / 2 * float(model.fc.weight.square().sum())
            res["model"].update({"objective": res["model"]["train_loss"] + reg, "measure_time_s": dt})
            rows += [{"epoch": epoch, "layer": layer, "metric": k, "value": float(v)}
                     for layer, vals in res.items() for k, v in vals.items()]
            bar.set_postfix(loss=f"{mean_loss:.3g}", acc=f"{res['model']['train_accuracy']:.3f}")
        if epoch % checkpoint_every == 0 or epoch == cfg.epochs:
            ckpt.save(epoch, rows, t_train, t_measure)
    bar.close()
    return TrainResult(model=model, history=pd.DataFrame(rows), config=cfg, train_time_s=t_train,
                       measure_time_s=t_measure, device=str(dev), resumed_from=resumed_from, precision=precision,
                       channels_last=nhwc, compiled=compile)
