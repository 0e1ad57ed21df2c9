"""Notebook 10 — an MLP trained layer by layer: the within-class variability of its deepest features as
layers are added (Tirer, Huang & Niles-Weed, ICML 2023, Fig. 2; SPEC §5).

The protocol: hidden layer 1 (``Linear + ReLU``) and a fresh linear classifier are trained on the flattened
images; layer 1 is frozen; hidden layer 2 and a fresh classifier are trained on layer 1's (fixed) features;
… up to ``depth`` hidden layers. After each stage the deepest features ``H_k (N, width)`` are measured on the
whole training set (float32 features, float64 statistics: :class:`ncutils.stream.StreamingNC`). Their
perturbation model (Corollary 3.2) says that a layer which can move its input features only a little
(β large) lowers ``nc1_trace`` = tr Σ_W / tr Σ_B: the deepest features should become less variable
within classes as layers are added.

Open choices (SPEC §5 leaves width, optimizer, loss and weight decay open), made here and in
``profiles/10_layerwise_mlp.yaml``: ReLU layers of one width, SGD with momentum 0.9, the learning rate divided
by 10 at 1/3 and 2/3 of each stage's epochs, weight decay 5e-4 on the new layer and on the classifier's
weight (not on its bias), MSE on one-hot targets by default (the perturbation model's loss; ``loss="ce"``
for cross-entropy).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..data import DATASETS, missing_files
from ..device import is_quiet, progress_bar, resolve_device
from ..paths import atomic_path, load_checkpoint, tensor_digest
from ..plot import finish_axes as _finish
from ..plot import legend_below, style
from ..report import check, count_check
from ..stream import StreamingNC
from ..train import _loss_fn  # ½‖out − e_y‖² (mean over the batch) or cross-entropy
from ._common import POSITIVE, Assumption, Requirement, Rule

__all__ = ["ASSUMPTIONS", "CPU_FLOPS", "LOSSES", "NOTEBOOK", "REQUIREMENTS", "RULES", "LayerwiseConfig",
           "LayerwiseResult", "checkpoint_path", "layer_table", "layerwise_checks", "layerwise_cpu_hours",
           "layerwise_data", "layerwise_figure", "layerwise_flops", "measure_level", "train_layerwise"]

NOTEBOOK = "10_layerwise_mlp"

LOSSES: tuple[str, ...] = ("mse", "ce")

#: Floating-point operations per second assumed for a CPU run (one core, fp32 matrix products of an MLP
#: stage, batch 128): 23–25 GFLOP/s were measured for the ``cpu`` profile's training on one core of the 2-core
#: development machine (load average 2.4–3.4); used only to refuse runs that would take hours.
CPU_FLOPS = 20e9


@dataclass(frozen=True)
class LayerwiseConfig:
    """Everything that determines a layer-wise run (its checkpoint fingerprint): the training part of notebook
    10's parameters, under the same names. :attr:`RULES` describes their valid values (``__post_init__``
    validates with them); :meth:`from_params` picks them out of the notebook's parameters.

    Loss: ``"mse"`` is ½‖W h + b − e_y‖² averaged over the batch (Tirer, Huang & Niles-Weed's
    1/(2Kn)‖WH − Y‖² with the new layer's features as H); ``"ce"`` the mean cross-entropy. Weight decay:
    SGD's ``weight_decay`` (the penalty (wd/2)‖θ‖²) on the new layer's weight and bias and on the classifier's
    weight W (the UFM's λ_W); the classifier's bias (``fc_bias``) is not decayed.
    """

    dataset: str = "mnist"
    depth: int = 10
    width: int = 256
    loss: str = "mse"
    fc_bias: bool = False
    lr: float = 0.05
    epochs: int = 60
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    per_class: int = 500
    test_per_class: int = 0
    seed: int = 0

    #: Type and valid values of every field (the notebook's parameter rules for these names).
    RULES: ClassVar[dict[str, Rule]] = {
        "dataset": Rule(str, choices=tuple(DATASETS), doc="dataset: mnist or cifar10 (flattened images)"),
        "depth": Rule(int, low=2, high=100, doc="hidden layers, trained one after another"),
        "width": Rule(int, low=10, doc="width of every hidden layer (at least K = 10)"),
        "loss": Rule(str, choices=LOSSES, doc="mse (one-hot targets, 1/2 squared error) or ce (cross-entropy)"),
        "fc_bias": Rule(bool, doc="bias of each stage's classifier (never decayed)"),
        "lr": Rule(float, low=0.0, strict_low=True, doc="SGD learning rate of each stage"),
        "epochs": Rule(int, low=1, doc="training epochs per layer"),
        "batch_size": Rule(int, low=1, doc="mini-batch size"),
        "momentum": Rule(float, low=0.0, high=1.0, doc="SGD momentum"),
        "weight_decay": Rule(float, low=0.0, doc="weight decay of the new layer and the classifier's weight"),
        "per_class": Rule(int, low=2, doc="training images per class, a balanced random subset"),
        "test_per_class": Rule(int, low=0, doc="test images per class; 0 uses the whole test split"),
        "seed": Rule(int, low=0, doc="seed of the subset, every layer's initialization and batch order"),
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, self.RULES[f.name].validate(f.name, getattr(self, f.name)))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LayerwiseConfig:
        """The configuration in notebook 10's parameters ``params`` (other keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})

    def milestones(self) -> list[int]:
        """Epochs of a stage after which its learning rate is divided by 10: 1/3 and 2/3 of ``epochs``."""
        return sorted({self.epochs // 3, 2 * self.epochs // 3} - {0})

    def fingerprint(self) -> str:
        """SHA-256 of the configuration (equal for equal configurations)."""
        body = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return hashlib.sha256(f"{type(self).__qualname__}({body})".encode()).hexdigest()


def layerwise_flops(p: Mapping[str, Any]) -> float:
    """Floating-point operations of a run with parameters ``p``: forward + backward ≈ 6 × (multiply-adds) per
    sample and epoch of each stage (the new layer D_in × width and the classifier width × K), plus the
    measurement passes (2 forward passes of each new layer over the training set)."""
    D = {"mnist": 28 * 28, "cifar10": 3 * 32 * 32}[p["dataset"]]
    K, w, L = 10, p["width"], p["depth"]
    N = K * p["per_class"]
    per_sample = [(D if k == 0 else w) * w + w * K for k in range(L)]
    return float(sum(6 * N * p["epochs"] * m + 4 * N * m for m in per_sample))


def layerwise_cpu_hours(p: Mapping[str, Any]) -> float:
    """Rough CPU time of a run: :func:`layerwise_flops` at :data:`CPU_FLOPS`."""
    return layerwise_flops(p) / CPU_FLOPS / 3600


#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    **{k: v for k, v in LayerwiseConfig.RULES.items() if k not in ("lr", "seed")},
    "min_train_accuracy": Rule(float, low=0.0, high=1.0),
    "fake_data": Rule(bool),
    "max_cpu_hours": POSITIVE,
}
#: Hard requirements: a run refused before any compute (on a CPU, runs estimated above ``max_cpu_hours``;
#: the dataset's files must be there unless ``fake_data``).
REQUIREMENTS: list[Requirement] = [
    Requirement(
        ("device", "dataset", "depth", "width", "per_class", "epochs", "max_cpu_hours"),
        lambda p: resolve_device(p["device"]).type != "cpu" or layerwise_cpu_hours(p) <= p["max_cpu_hours"],
        lambda p: (
            f"this run needs about {layerwise_cpu_hours(p):.3g} CPU hours ({layerwise_flops(p) / 1e12:.3g} TFLOP "
            f"of MLP training at an assumed {CPU_FLOPS / 1e9:.0f} GFLOP/s): run it on a GPU (device cuda), lower "
            "width/per_class/epochs/depth (profile cpu), or raise max_cpu_hours"
        ),
        machine=True,
    ),
    Requirement(("dataset", "data_root", "fake_data"),
                lambda p: p["fake_data"] or missing_files(p["dataset"], p["data_root"]) is None,
                lambda p: f"parameter data_root: {missing_files(p['dataset'], p['data_root'])}", machine=True),
]
#: Assumptions of the theorem: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = [
    Assumption(lambda p: p["weight_decay"] > 0,
               "weight_decay = 0: the perturbation model (Tirer, Huang & Niles-Weed, Thm 3.1 / Cor. 3.2) assumes "
               "lambda_W > 0"),
]


# --------------------------------------------------------------------------- data
def layerwise_data(dataset: str, data_root: str | Path, per_class: int, test_per_class: int = 0, seed: int = 0,
                   fake: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Balanced training subset ``X (N, D)``, ``y (N,)`` and test set ``Xt (Nt, D)``, ``yt (Nt,)``: images
    normalized with the dataset's mean/std and flattened (D = 784 for MNIST, 3072 for CIFAR-10), float32.
    ``test_per_class`` 0: the whole test split. ``fake``: write tiny files in the dataset's real format under
    ``data_root`` first (tests, CI) and read them with the same torchvision code."""
    from ..data import load_dataset, write_fake_cifar10, write_fake_mnist

    if fake:
        writer = write_fake_mnist if dataset == "mnist" else write_fake_cifar10
        writer(data_root, per_class=per_class, test_per_class=test_per_class or 5, seed=seed)
    X, y = load_dataset(dataset, data_root, per_class=per_class, seed=seed, verify=not fake)
    Xt, yt = load_dataset(dataset, data_root, train=False, per_class=test_per_class or None, seed=seed,
                          verify=not fake)
    return X.flatten(1).contiguous(), y, Xt.flatten(1).contiguous(), yt


# --------------------------------------------------------------------------- training
@dataclass
class LayerwiseResult:
    """A finished (or resumed-and-finished) layer-wise run: the trained hidden layers (``Linear``; the
    network is ``relu(layers[k](…))`` in turn), each stage's classifier, a long ``history`` table (layer,
    metric, value; layer 0 is the input), wall-clock totals in seconds, and how many layers a checkpoint
    already held when the call started (``resumed_from``)."""

    layers: list[nn.Linear]
    classifiers: list[nn.Linear]
    history: pd.DataFrame
    config: LayerwiseConfig
    train_time_s: float
    measure_time_s: float
    device: str
    resumed_from: int


def _stage_seed(seed: int, layer: int) -> int:
    """The seed of stage ``layer`` (its initialization and batch order): independent of earlier stages' RNG
    use, so that a resumed run draws exactly what the uninterrupted run drew."""
    return seed * 1_000_003 + layer


@torch.no_grad()
def _features(layer: nn.Linear, X: Tensor, chunk: int = 4096) -> Tensor:
    """relu(layer(X)) for ``X (N, D_in)`` in fixed chunks → ``(N, width)`` float32 (the same chunks every time,
    so a resumed run recomputes the frozen features bit for bit)."""
    return torch.cat([torch.relu(layer(X[i:i + chunk])) for i in range(0, len(X), chunk)])


def _train_stage(F: Tensor, y: Tensor, cfg: LayerwiseConfig, layer: int, K: int, tick: Callable[[float], None],
                 ) -> tuple[nn.Linear, nn.Linear, float]:
    """Train hidden layer ``layer`` (``Linear(D_in, width)`` + ReLU) and a fresh classifier on the frozen
    features ``F (N, D_in)`` with SGD; returns both and the last epoch's mean training loss.
    Raises :class:`ncutils.solve.DivergenceError` when the loss stops being finite."""
    from ..solve import DivergenceError

    dev = F.device
    torch.manual_seed(_stage_seed(cfg.seed, layer))
    hidden = nn.Linear(F.shape[1], cfg.width).to(dev)
    clf = nn.Linear(cfg.width, K, bias=cfg.fc_bias).to(dev)
    groups = [{"params": [*hidden.parameters(), clf.weight], "weight_decay": cfg.weight_decay}]
    if clf.bias is not None:
        groups.append({"params": [clf.bias], "weight_decay": 0.0})
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones(), gamma=0.1)
    gen = torch.Generator().manual_seed(_stage_seed(cfg.seed, layer))
    lf = _loss_fn(cfg.loss, K)
    mean_loss = math.nan
    for epoch in range(1, cfg.epochs + 1):
        total = torch.zeros((), device=dev)
        for idx in torch.randperm(len(y), generator=gen).to(dev).split(cfg.batch_size):
            loss = lf(clf(torch.relu(hidden(F[idx]))), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        mean_loss = float(total) / len(y)
        if not math.isfinite(mean_loss):
            raise DivergenceError(f"layer {layer} diverged at epoch {epoch}: mean training loss {mean_loss} with "
                                  f"lr = {sched.get_last_lr()[0]:g}; lower lr")
        sched.step()
        tick(mean_loss)
    return hidden.eval(), clf.eval(), mean_loss


@torch.no_grad()
def measure_level(H: Tensor, y: Tensor, Ht: Tensor | None = None, yt: Tensor | None = None,
                  classifier: nn.Linear | None = None, loss: str = "mse", K: int = 10,
                  batch: int = 2048) -> dict[str, float]:
    """NC metrics of one feature level over the whole training set: ``H (N, d)`` float32 features with labels
    ``y (N,)``, streamed in batches through :class:`ncutils.stream.StreamingNC` (float64 statistics; no d×d
    matrix): ``nc1`` = tr(Σ_W Σ_B^†)/K, ``nc1_trace`` = tr Σ_W / tr Σ_B (NC1~ of Tirer, Huang & Niles-Weed,
    Eq. 8), NC2, NCC accuracy, CDNV; with the test features ``Ht (Nt, d)`` the NCC accuracy on them; with the
    ``classifier`` that reads them: NC3, NC4 (train and test), and the classifier's loss and accuracy on
    both sets (``train_loss``, ``train_accuracy``, ``test_accuracy``)."""
    acc = StreamingNC(K, H.device)
    for i in range(0, len(y), batch):
        acc.update_means({"h": H[i:i + batch]}, y[i:i + batch])
    clf = {"h": (classifier.weight, classifier.bias)} if classifier is not None else None
    lf = _loss_fn(loss, K)
    sums = {"train_loss": 0.0, "train_accuracy": 0.0, "test_accuracy": 0.0}
    for i in range(0, len(y), batch):
        acc.update_within({"h": H[i:i + batch]}, y[i:i + batch], clf)
        if classifier is not None:
            out = classifier(H[i:i + batch])
            sums["train_loss"] += float(lf(out, y[i:i + batch])) * len(out)
            sums["train_accuracy"] += float((out.argmax(1) == y[i:i + batch]).sum())
    if Ht is not None and yt is not None:
        for i in range(0, len(yt), batch):
            acc.update_test({"h": Ht[i:i + batch]}, yt[i:i + batch], clf)
            if classifier is not None:
                sums["test_accuracy"] += float((classifier(Ht[i:i + batch]).argmax(1) == yt[i:i + batch]).sum())
    res = acc.result()["h"]
    if classifier is not None:
        res.update(train_loss=sums["train_loss"] / len(y), train_accuracy=sums["train_accuracy"] / len(y))
        if Ht is not None and yt is not None:
            res["test_accuracy"] = sums["test_accuracy"] / len(yt)
    return res


def _run_fingerprint(cfg: LayerwiseConfig, data: tuple[Tensor, Tensor, Tensor | None, Tensor | None]) -> str:
    return hashlib.sha256((cfg.fingerprint() + tensor_digest(*data)).encode()).hexdigest()


def checkpoint_path(folder: str | Path, cfg: LayerwiseConfig,
                    data: tuple[Tensor, Tensor, Tensor | None, Tensor | None]) -> Path:
    """``folder/checkpoint-<fingerprint>.pt``: one file per configuration and data."""
    return Path(folder) / f"checkpoint-{_run_fingerprint(cfg, data)[:16]}.pt"


def train_layerwise(cfg: LayerwiseConfig, data: tuple[Tensor, Tensor, Tensor | None, Tensor | None], *,
                    device: torch.device | str = "cpu", checkpoint: str | Path | None = None,
                    progress: bool | None = None) -> LayerwiseResult:
    """Train an MLP layer by layer (Tirer, Huang & Niles-Weed 2023, Fig. 2) and measure its deepest features
    after every stage.

    ``data``: ``(X (N, D), y (N,), Xt (Nt, D) or None, yt (Nt,) or None)``, flattened images. Stage k = 1 … depth
    trains ``Linear(D_{k−1}, width)`` + ReLU and a fresh ``Linear(width, K)`` classifier on the frozen features
    H_{k−1} (H_0 = X) — :class:`LayerwiseConfig` says how — then freezes the layer and measures H_k
    (:func:`measure_level`). The input is measured as layer 0. Each stage is seeded by itself
    (:func:`_stage_seed`).

    ``checkpoint``: a file written atomically after every trained layer (the layers, classifiers and history);
    a run restarted with the same configuration and data resumes at the next layer and ends with the numbers
    of an uninterrupted run (the frozen features are recomputed from the saved layers); a checkpoint of
    another configuration raises ``ValueError``.
    """
    dev = torch.device(device)
    X, y, Xt, yt = data
    if X.ndim != 2 or y.shape != (len(X),):
        raise ValueError(f"parameter data must hold X (N, D) and y (N,), got shapes {tuple(X.shape)}, "
                         f"{tuple(y.shape)}")
    K = int(y.max()) + 1
    fingerprint = _run_fingerprint(cfg, data)
    F, Ft = X.to(dev), None if Xt is None else Xt.to(dev)
    y, yt = y.to(dev), None if yt is None else yt.to(dev)
    layers: list[nn.Linear] = []
    classifiers: list[nn.Linear] = []
    rows: list[dict[str, Any]] = []
    t_train, t_measure = 0.0, 0.0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt, fingerprint)
        for hs, cs in zip(state["layers"], state["classifiers"], strict=True):
            hidden, clf = nn.Linear(F.shape[1], cfg.width).to(dev), nn.Linear(cfg.width, K, bias=cfg.fc_bias).to(dev)
            hidden.load_state_dict(hs)
            clf.load_state_dict(cs)
            layers.append(hidden.eval())
            classifiers.append(clf.eval())
            F, Ft = _features(hidden, F), None if Ft is None else _features(hidden, Ft)
        rows, t_train, t_measure = list(state["history"]), state["train_time"], state["measure_time"]
    resumed_from = len(layers)

    def record(layer: int, values: Mapping[str, float]) -> None:
        rows.extend({"layer": layer, "metric": k, "value": float(v)} for k, v in values.items())

    if not rows:  # the input, as layer 0
        t0 = time.perf_counter()
        record(0, measure_level(F, y, Ft, yt, K=K))
        t_measure += time.perf_counter() - t0
    show = (not is_quiet()) if progress is None else progress
    bar = progress_bar(total=cfg.depth * cfg.epochs, initial=resumed_from * cfg.epochs, desc="layer-wise MLP",
                       disable=not show)
    for layer in range(resumed_from + 1, cfg.depth + 1):
        t0 = time.perf_counter()

        def tick(loss: float, layer: int = layer) -> None:
            bar.update(1)
            bar.set_postfix(layer=layer, loss=f"{loss:.3g}")

        hidden, clf, last_loss = _train_stage(F, y, cfg, layer, K, tick)
        dt = time.perf_counter() - t0
        t_train += dt
        t0 = time.perf_counter()
        F, Ft = _features(hidden, F), None if Ft is None else _features(hidden, Ft)
        res = measure_level(F, y, Ft, yt, clf, cfg.loss, K)
        with torch.no_grad():
            decay = sum(float(p.square().sum()) for p in (*hidden.parameters(), clf.weight))
        res.update(objective=res["train_loss"] + cfg.weight_decay / 2 * decay, running_loss=last_loss,
                   train_time_s=dt)
        t_measure += time.perf_counter() - t0
        record(layer, res)
        layers.append(hidden)
        classifiers.append(clf)
        if ckpt is not None:
            with atomic_path(ckpt) as tmp:
                torch.save({"fingerprint": fingerprint, "layers": [m.state_dict() for m in layers],
                            "classifiers": [m.state_dict() for m in classifiers], "history": rows,
                            "train_time": t_train, "measure_time": t_measure}, tmp)
    bar.close()
    return LayerwiseResult(layers, classifiers, pd.DataFrame(rows, columns=["layer", "metric", "value"]), cfg,
                           t_train, t_measure, str(dev), resumed_from)


# --------------------------------------------------------------------------- tables, checks, figure
def layer_table(history: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """``metrics`` (columns; default all) per layer (rows: 0 = the input, 1 … depth = the deepest features after
    that stage)."""
    t = history.pivot(index="layer", columns="metric", values="value").sort_index()
    return t if metrics is None else t[[m for m in metrics if m in t.columns]]


def _at_least(label: str, value: float, bound: float, key: str) -> dict[str, Any]:
    """A check that ``value`` ≥ ``bound``: its error is the shortfall (0 when reached)."""
    c = check(label, max(bound - value, 0.0) if math.isfinite(value) else math.inf, 0.0, 0.0, kind="abs", id=key)
    return {**c, "gd": float(value), "theory": float(bound)}


def layerwise_checks(history: pd.DataFrame, min_train_accuracy: float) -> list[dict[str, Any]]:
    """The claims of Tirer, Huang & Niles-Weed's Fig. 2 on this run, over every stage: NC1 and NC1~ of the
    deepest features fall each time a layer is added (counted over the depth − 1 added layers; the claim is
    every one), and the deepest layer's value is below the first layer's; and the stages fit their training
    data (the last stage's training accuracy at least ``min_train_accuracy``). A non-finite value counts as not
    falling."""
    t = layer_table(history)
    t = t[t.index >= 1]
    L = int(t.index.max())
    out = []
    for metric, label in (("nc1", "NC1"), ("nc1_trace", "NC1~")):
        v = t[metric].to_numpy(dtype=float)
        falls = int((np.diff(v) < 0).sum())
        out.append(count_check(f"{label} of the deepest features falls when a layer is added (layers 2-{L})",
                               falls, L - 1, L - 1, id=f"{metric}_falls_at_every_added_layer"))
        out.append(check(f"{label}: layer {L} / layer 1 (below 1)", v[-1] / v[0] if v[0] else math.inf, 1.0, 0.0,
                         kind="below", id=f"{metric}_last_over_first_below_1"))
    acc = float(t.train_accuracy.iloc[-1])
    out.append(_at_least(f"training accuracy of the last stage >= {min_train_accuracy:g}", acc, min_train_accuracy,
                         "final_train_accuracy_reached"))
    return out


def layerwise_figure(history: pd.DataFrame, title: str | None = None) -> Figure:
    """Tirer, Huang & Niles-Weed Fig. 2's panels for a layer-wise run: NC1 = tr(Σ_W Σ_B^†)/K and
    NC1~ = tr Σ_W / tr Σ_B of the deepest features (log scale) against the number of trained layers (the
    input's value dotted), and the accuracies of each stage (its classifier on the training and test sets, the
    nearest-class-centre rule on the deepest features' test set)."""
    style()
    t = layer_table(history)
    net = t[t.index >= 1]
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.6), constrained_layout=True)
    for ax, (metric, label) in zip(axes[:2], [("nc1", "NC1 = tr(Σ_W Σ_B†)/K"), ("nc1_trace", "NC1~ = tr Σ_W / tr Σ_B")],
                                   strict=True):
        ax.plot(net.index, net[metric], marker="o", color="C0", label="deepest features")
        if 0 in t.index:
            ax.axhline(float(t.loc[0, metric]), color="0.4", ls=":", lw=1, label="input (layer 0)")
        _finish(ax, label, "hidden layers (trained one by one)", ylog=True)
        legend_below(ax)
    ax = axes[2]
    ax.plot(net.index, net.train_accuracy, marker="o", color="C2", label="train (classifier)")
    if "test_accuracy" in net:
        ax.plot(net.index, net.test_accuracy, marker="o", ls=":", color="C2", label="test (classifier)")
    if "ncc_accuracy_test" in net:
        ax.plot(net.index, net.ncc_accuracy_test, marker=".", ls="--", color="C1", label="test (nearest class mean)")
    _finish(ax, "accuracy of each stage", "hidden layers (trained one by one)")
    legend_below(ax)
    for a in axes:
        a.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return fig
