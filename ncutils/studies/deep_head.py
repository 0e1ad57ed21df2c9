"""Notebook 12 — a convolutional backbone with a deep bias-free MLP head trained end to end on real digits:
deep neural collapse (DNC1–DNC3) per head layer and the rank of the class means (Súkeník, Mondelli & Lampert,
NeurIPS 2023; Súkeník, Lampert & Mondelli, NeurIPS 2024, arXiv 2405.14468).

The deep UFM (SPEC §4) replaces the backbone by free features H₁; here H₁ is the pooled output of a real
backbone, and the L head layers are the deep UFM's W₁ … W_L: bias-free linear layers with ReLU between,
MSE on one-hot targets, weight decay λ on every head layer (the DUFM's λ_{W_l}) and on the backbone (the
backbone's decay stands in for the DUFM's λ_{H₁}: a heuristic correspondence only). Features are rows,
``H_l (N, d_l)``: H₁ the backbone output, H_{l+1} = ReLU(H_l W_lᵀ) for l < L, and the output H_L W_Lᵀ.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..data import DeviceBatches, missing_files
from ..device import is_quiet, progress_bar, resolve_device
from ..metrics import class_mean_rank, nc1_t, nc4, nc_metrics_t
from ..paths import tensor_digest
from ..plot import finish_axes as _finish
from ..plot import legend_below, style
from ..report import check, count_check
from ..train import TrainingCheckpoint, _loss_fn, train_epoch
from ._common import NONNEG, POSITIVE, Assumption, Requirement, Rule
from .resnet import objective_accuracy_panel, resnet_cpu_hours

__all__ = ["ASSUMPTIONS", "BACKBONES", "NOTEBOOK", "REQUIREMENTS", "RULES", "TRAIN_KEYS", "DeepHeadNet",
           "HeadResult", "checkpoint_path", "checks", "final_table", "head_cpu_hours", "head_data", "make_model",
           "measure_head", "small_cnn", "smallest_sv_table", "spectra_figure", "spectra_table", "srg_reference",
           "train_deep_head", "training_figure"]

NOTEBOOK = "12_deep_head"
K_CLASSES = 10  # MNIST and CIFAR-10
BACKBONES: tuple[str, ...] = ("cnn", "resnet18")
#: Assumed sustained throughput of one CPU thread on the small CNN (forward FLOPs counted by :func:`head_cpu_hours`):
#: measured 1.6e10 on the 2-core development machine (width 16, 5 000 MNIST digits, 40 epochs in 160 s, one
#: thread, load average 3), rounded down.
CNN_CPU_FLOPS = 1.2e10


def _rank_tol(value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"must be in (0, 1), got {value!r}")


#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    "dataset": Rule(str, choices=("mnist", "cifar10")),
    "backbone": Rule(str, choices=BACKBONES),
    "width": Rule(int, low=1),
    "head_layers": Rule(int, low=2, high=12),
    "head_width": Rule(int, low=K_CLASSES),
    "per_class": Rule(int, low=1),
    "test_per_class": Rule(int, low=0),
    "epochs": Rule(int, low=1),
    "batch_size": Rule(int, low=1),
    "momentum": Rule(float, low=0.0, high=0.999),
    "weight_decay": NONNEG,
    "wd_backbone": NONNEG,
    "schedule": Rule(str, choices=("constant", "thirds")),
    "measure_every": Rule(int, low=1),
    "checkpoint_every": Rule(int, low=1),
    "rank_tol": Rule(float, check=_rank_tol),
    "min_train_accuracy": Rule(float, low=0.0, high=1.0),
    "max_cpu_hours": POSITIVE,
    "fake_data": Rule(bool),
}
#: The parameters that determine a training run (its checkpoint fingerprint, with the data).
TRAIN_KEYS: tuple[str, ...] = ("dataset", "backbone", "width", "head_layers", "head_width", "epochs", "batch_size",
                               "lr", "momentum", "weight_decay", "wd_backbone", "schedule", "measure_every",
                               "rank_tol", "seed")


def head_cpu_hours(p: Mapping[str, Any]) -> float:
    """Rough CPU time of a run in hours. ``cnn``: the forward FLOPs of its three 3×3 conv blocks per image
    (28×28 MNIST, 32×32 CIFAR-10), ×3 for a training step, plus one forward pass over the training and test
    images per measurement, at :data:`CNN_CPU_FLOPS`; the head's FLOPs are negligible. ``resnet18``:
    :func:`ncutils.studies.resnet.resnet_cpu_hours` at width multiplier ``width``/64."""
    if p["backbone"] == "resnet18":
        return resnet_cpu_hours({"per_class": p["per_class"], "epochs": p["epochs"],
                                 "width_multiplier": p["width"] / 64})
    side, c_in = (28, 1) if p["dataset"] == "mnist" else (32, 3)
    w = p["width"]
    fwd = 2 * 9 * (side**2 * c_in * w + (side // 2) ** 2 * w * 2 * w + (side // 4) ** 2 * 2 * w * 4 * w)
    n_train = K_CLASSES * p["per_class"]
    n_test = K_CLASSES * (p["test_per_class"] or 1000)
    measurements = 2 + p["epochs"] // p["measure_every"]
    return fwd * (3 * n_train * p["epochs"] + measurements * (n_train + n_test)) / CNN_CPU_FLOPS / 3600


#: Hard requirements: a CPU run must fit ``max_cpu_hours`` (checked first: a GPU profile on a CPU machine is refused
#: for that, whatever data the machine has), and the dataset files must be there.
REQUIREMENTS: list[Requirement] = [
    Requirement(
        ("device", "dataset", "backbone", "width", "per_class", "test_per_class", "epochs", "measure_every",
         "max_cpu_hours"),
        lambda p: resolve_device(p["device"]).type != "cpu" or head_cpu_hours(p) <= p["max_cpu_hours"],
        lambda p: (f"this run needs about {head_cpu_hours(p):.3g} CPU hours (more than max_cpu_hours = "
                   f"{p['max_cpu_hours']:g}): run it on a GPU (device cuda), lower width/per_class/epochs "
                   "(profile cpu), or raise max_cpu_hours"),
        machine=True,
    ),
    Requirement(("dataset", "data_root", "fake_data"),
                lambda p: p["fake_data"] or missing_files(p["dataset"], p["data_root"]) is None,
                lambda p: f"parameter data_root: {missing_files(p['dataset'], p['data_root'])}", machine=True),
]
#: Assumptions of the theory: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = [
    Assumption(lambda p: p["head_layers"] >= 3,
               "head_layers < 3: Súkeník et al. 2024 predict the low-rank bias for L >= 3 layers only"),
]


# --------------------------------------------------------------------------- data and model
def head_data(dataset: str, data_root: str | Path, per_class: int, test_per_class: int = 0, seed: int = 0,
              fake: bool = False, pad_to: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Balanced training subset ``(N, C, S, S)`` and test images (``test_per_class`` 0: the whole test split),
    normalized; ``fake``: tiny synthetic files in the dataset's real format written first under ``data_root``
    (tests, CI). ``pad_to``: zero-pad (32 for the ResNet's CIFAR stem on MNIST)."""
    from ..data import load_dataset, write_fake_cifar10, write_fake_mnist

    if fake:
        writer = write_fake_mnist if dataset == "mnist" else write_fake_cifar10
        writer(data_root, per_class=per_class, test_per_class=max(test_per_class, 2), seed=seed)
    Xtr, ytr = load_dataset(dataset, data_root, per_class=per_class, seed=seed, pad_to=pad_to, verify=not fake)
    Xte, yte = load_dataset(dataset, data_root, train=False, per_class=test_per_class or None, seed=seed,
                            pad_to=pad_to, verify=not fake)
    return Xtr, ytr, Xte, yte


def small_cnn(in_channels: int, width: int) -> nn.Sequential:
    """Three 3×3 conv blocks (conv, BatchNorm, ReLU; 2×2 max-pool after the first two) of ``width``, 2·``width``,
    4·``width`` channels, then a global average pool: images ``(B, C, S, S)`` → pooled features ``(B, 4·width)``
    (non-negative: the last block ends with a ReLU)."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, c in enumerate((width, 2 * width, 4 * width)):
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        if i < 2:
            layers.append(nn.MaxPool2d(2))
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class DeepHeadNet(nn.Module):
    """A backbone followed by the deep UFM's head: ``L`` bias-free linear layers ``head[l]`` (W_{l+1}), ReLU
    between (Súkeník, Mondelli & Lampert 2023, Eq. 1 with the backbone's output as H₁).

    ``levels(x)`` returns the feature levels ``[H₁, …, H_L]`` (rows, ``(B, d_l)``; H₁ the backbone output,
    H_{l+1} = ReLU(H_l W_lᵀ)) and the output ``H_L W_Lᵀ (B, K)``."""

    def __init__(self, backbone: nn.Module, d_in: int, head_width: int, head_layers: int, K: int) -> None:
        super().__init__()
        self.backbone = backbone
        dims = [d_in] + [head_width] * (head_layers - 1) + [K]
        self.head = nn.ModuleList(nn.Linear(dims[i], dims[i + 1], bias=False) for i in range(head_layers))
        for i, layer in enumerate(self.head):  # He init before a ReLU, LeCun for the classifier
            gain = 1.0 if i == head_layers - 1 else 2.0
            nn.init.normal_(layer.weight, std=math.sqrt(gain / dims[i]))

    def levels(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        h = self.backbone(x)
        feats = [h]
        for layer in self.head[:-1]:
            h = torch.relu(layer(h))
            feats.append(h)
        return feats, self.head[-1](h)

    def forward(self, x: Tensor) -> Tensor:
        return self.levels(x)[1]


def make_model(p: Mapping[str, Any], in_channels: int, K: int = K_CLASSES) -> DeepHeadNet:
    """The network of parameters ``p`` (``backbone``, ``width``, ``head_width``, ``head_layers``), seeded by
    ``p["seed"]``: ``cnn`` (:func:`small_cnn`, pooled features of 4·width) or ``resnet18``
    (:func:`ncutils.nets.resnet18`, CIFAR stem, width multiplier width/64, its ``fc`` replaced by the head:
    the pooled ``layer4`` features of 8·width)."""
    torch.manual_seed(p["seed"])
    if p["backbone"] == "resnet18":
        from ..nets import resnet18

        body = resnet18(K, in_channels, False, p["width"] / 64)
        d_in = body.fc.in_features
        body.fc = nn.Identity()
    else:
        body, d_in = small_cnn(in_channels, p["width"]), 4 * p["width"]
    return DeepHeadNet(body, d_in, p["head_width"], p["head_layers"], K)


def _mse(out: Tensor, y: Tensor, K: int) -> Tensor:
    """½‖out − e_y‖² averaged over the batch: the deep UFM's 1/(2N)‖W_L σ(…) − Y‖²_F per sample (the MSE of
    :func:`ncutils.train.train_resnet`)."""
    return _loss_fn("mse", K)(out, y)


# --------------------------------------------------------------------------- measurement
@torch.no_grad()
def _features(model: DeepHeadNet, X: Tensor, batch: int = 128) -> tuple[list[Tensor], Tensor]:
    """Every level's features of ``X`` in eval mode, float32 on the model's device, then float64 for the metrics."""
    dev = next(model.parameters()).device
    parts: list[list[Tensor]] = []
    outs = []
    for i in range(0, len(X), batch):
        feats, out = model.levels(X[i:i + batch].to(dev).float())
        parts.append([f.float() for f in feats])
        outs.append(out.float())
    levels = [torch.cat([p[k] for p in parts]).double() for k in range(len(parts[0]))]
    return levels, torch.cat(outs).double()


@torch.no_grad()
def measure_head(model: DeepHeadNet, X: Tensor, y: Tensor, Xte: Tensor | None = None, yte: Tensor | None = None,
                 *, K: int = K_CLASSES, rank_tol: float = 1e-2) -> dict[str, dict[str, float]]:
    """DNC metrics of every level over the whole training set ``X (N, …)``, ``y (N,)`` (features taken in float32
    in eval mode, metrics in float64; SPEC §1, §4), plus the model's loss and accuracies.

    Per level ``H{l}`` (l = 1 … L): ``nc1`` (tr(Σ_W Σ_B^†)/K), ``nc1_rank`` (rank-aware, σ > ``rank_tol``·σ₁ of the
    centred means), ``nc1_trace``; ``nc2_orthogonal``, ``nc2_etf`` and Papyan's ``nc2_*``; DNC3 of the layer
    W_l that reads the level: ``nc3_gram`` (‖W_lᵀW_l/‖·‖ − MᵀM/‖·‖‖_F, :func:`ncutils.metrics.nc3_gram`) and at H_L,
    which the classifier W_L reads, also ``nc3_orthogonal``, ``nc3_etf`` and ``nc4`` (``nc4_test``: test features
    against the training means); ``sv_1 … sv_K`` (uncentred class means) with ``rank`` (#σ_k > rank_tol·σ₁,
    uncentred, as Súkeník et al. 2024 count it) and ``rank_centred``. The levels are small (d ≤ a few hundred),
    so they are held in memory (N·d floats each); the only d×d matrices are the Grams of ``nc3_gram`` when
    d ≤ d_out + K (:func:`ncutils.metrics.nc3_gram`).
    """
    was_training = model.training
    model.eval()
    try:
        levels, out = _features(model, X)
        yd = y.to(levels[0].device)
        res: dict[str, dict[str, float]] = {}
        L = len(model.head)
        test = None
        if Xte is not None and yte is not None:
            test_levels, test_out = _features(model, Xte)
            test = (test_levels[-1], test_out, yte.to(test_out.device))
        for l, H in enumerate(levels, start=1):
            W = model.head[l - 1].weight.detach().double().to(H.device)
            kw = {"W": W} if l == L else {"A": W}
            vals = {k: float(v) for k, v in nc_metrics_t(H, yd, K, spectrum=True, **kw).items()}
            vals["nc1_rank"] = float(nc1_t(H, yd, K, rank_tol=rank_tol))
            vals["rank"] = float(class_mean_rank(H, yd, rank_tol, K, centred=False))
            vals["rank_centred"] = float(class_mean_rank(H, yd, rank_tol, K, centred=True))
            if l == L and test is not None:
                M = torch.stack([H[yd == k].mean(0) for k in range(K)])
                vals["nc4_test"] = nc4(test[0], test[2], W=W, means=M, num_classes=K)
            res[f"H{l}"] = vals
        model_vals = {"train_loss": float(_mse(out, yd, K)),
                      "train_accuracy": float((out.argmax(1) == yd).double().mean())}
        if test is not None:
            model_vals["test_loss"] = float(_mse(test[1], test[2], K))
            model_vals["test_accuracy"] = float((test[1].argmax(1) == test[2]).double().mean())
        res["model"] = model_vals
        return res
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- training
@dataclass
class HeadResult:
    """A finished (or resumed-and-finished) run: the model, a long-form ``history`` (epoch, layer, metric, value;
    layer ``"model"``: losses, accuracies, objective, timings; ``"H{l}"``: :func:`measure_head`), wall-clock
    totals in seconds, the epoch it resumed from and the number of head layers L."""

    model: DeepHeadNet
    history: pd.DataFrame
    train_time_s: float
    measure_time_s: float
    resumed_from: int
    L: int


def _config(p: Mapping[str, Any]) -> dict[str, Any]:
    """The training parameters of ``p`` (:data:`TRAIN_KEYS`), validated with :data:`RULES` / the shared rules."""
    from ._common import COMMON_RULES

    missing = [k for k in TRAIN_KEYS if k not in p]
    if missing:
        raise ValueError(f"parameters {missing} are missing (the training needs {list(TRAIN_KEYS)})")
    return {k: RULES.get(k, COMMON_RULES.get(k)).validate(k, p[k]) for k in TRAIN_KEYS}  # type: ignore[union-attr]


def _fingerprint(cfg: Mapping[str, Any], data: tuple[Tensor, ...]) -> str:
    return hashlib.sha256((json.dumps(dict(cfg), sort_keys=True) + tensor_digest(*data)).encode()).hexdigest()


def checkpoint_path(folder: str | Path, p: Mapping[str, Any], data: tuple[Tensor, ...]) -> Path:
    """``folder/checkpoint-<fingerprint>.pt``: one file per configuration and data."""
    return Path(folder) / f"checkpoint-{_fingerprint(_config(p), data)[:16]}.pt"


def train_deep_head(p: Mapping[str, Any], data: tuple[Tensor, Tensor, Tensor, Tensor], *,
                    device: torch.device | str = "cpu", checkpoint: str | Path | None = None,
                    checkpoint_every: int = 1, progress: bool | None = None) -> HeadResult:
    """Train the backbone + deep head end to end with SGD (momentum) on MSE, weight decay ``weight_decay`` on
    every head layer W_l (the DUFM's λ_{W_l}: SGD's decay adds λθ to the gradient, the penalty (λ/2)‖θ‖²) and
    ``wd_backbone`` on every backbone parameter; learning rate constant or ÷10 at 1/3 and 2/3 of the epochs
    (``schedule``). Measures :func:`measure_head` after epoch 1, every ``measure_every`` epochs and the last.

    ``p``: the parameters :data:`TRAIN_KEYS` (validated here, before any compute). ``data``: ``(X_train, y_train,
    X_test, y_test)``. ``checkpoint``: written atomically every ``checkpoint_every`` epochs and at the end (model,
    optimizer, scheduler, shuffling generator, history); a run restarted with the same parameters and data
    resumes from it and reproduces the uninterrupted run; another configuration raises ``ValueError``.
    Raises :class:`ncutils.solve.DivergenceError` when the training loss stops being finite.
    """

    cfg = _config(p)
    Xtr, ytr, Xte, yte = data
    K = int(ytr.max()) + 1
    dev = torch.device(device)
    model = make_model(cfg, Xtr.shape[1], K).to(dev)
    L = cfg["head_layers"]
    head_params = [layer.weight for layer in model.head]
    groups = [{"params": list(model.backbone.parameters()), "weight_decay": cfg["wd_backbone"]},
              {"params": head_params, "weight_decay": cfg["weight_decay"]}]
    opt = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"])
    E = cfg["epochs"]
    milestones = sorted({E // 3, 2 * E // 3} - {0}) if cfg["schedule"] == "thirds" else []
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    train = DeviceBatches(Xtr, ytr, cfg["batch_size"], dev, seed=cfg["seed"])
    measured = sorted({1, E, *range(cfg["measure_every"], E + 1, cfg["measure_every"])})
    rows: list[dict[str, Any]] = []
    start, t_train, t_measure = 0, 0.0, 0.0
    ckpt = TrainingCheckpoint(Path(checkpoint) if checkpoint is not None else None, _fingerprint(cfg, data), model,
                              opt, sched, train.generator)
    state = ckpt.load()
    if state is not None:
        rows = [dict(zip(("epoch", "layer", "metric", "value"), r, strict=True)) for r in state["history"]]
        start, t_train, t_measure = int(state["epoch"]), float(state["train_time"]), float(state["measure_time"])
    resumed_from = start

    show = (not is_quiet()) if progress is None else progress
    bar = progress_bar(range(start + 1, E + 1), desc="backbone + deep head", disable=not show, initial=start,
                       total=E)
    for epoch in bar:
        model.train()
        mean_loss, dt = train_epoch(lambda X, y: _mse(model(X), y, K), train.epoch(), opt, epoch=epoch,
                                    lr=sched.get_last_lr()[0], device=dev, accumulate=torch.float64)
        t_train += dt
        sched.step()
        rows += [{"epoch": epoch, "layer": "model", "metric": "epoch_time_s", "value": dt},
                 {"epoch": epoch, "layer": "model", "metric": "running_loss", "value": mean_loss}]
        if epoch in measured:
            t0 = time.perf_counter()
            res = measure_head(model, Xtr, ytr, Xte, yte, K=K, rank_tol=cfg["rank_tol"])
            with torch.no_grad():
                reg = sum(cfg["wd_backbone"] / 2 * float(q.double().square().sum()) for q in groups[0]["params"])
                reg += sum(cfg["weight_decay"] / 2 * float(w.double().square().sum()) for w in head_params)
            dm = time.perf_counter() - t0
            t_measure += dm
            res["model"].update({"objective": res["model"]["train_loss"] + reg, "measure_time_s": dm})
            rows += [{"epoch": epoch, "layer": layer, "metric": k, "value": float(v)}
                     for layer, vals in res.items() for k, v in vals.items()]
            bar.set_postfix(loss=f"{mean_loss:.3g}", acc=f"{res['model']['train_accuracy']:.3f}")
        if epoch % checkpoint_every == 0 or epoch == E:
            ckpt.save(epoch, [(r["epoch"], r["layer"], r["metric"], r["value"]) for r in rows], t_train,
                      t_measure)
    bar.close()
    return HeadResult(model=model, history=pd.DataFrame(rows, columns=["epoch", "layer", "metric", "value"]),
                      train_time_s=t_train, measure_time_s=t_measure, resumed_from=resumed_from, L=L)


# --------------------------------------------------------------------------- tables, theory, checks
def _levels(history: pd.DataFrame) -> list[str]:
    return sorted({lv for lv in history.layer.unique() if lv.startswith("H")}, key=lambda s: int(s[1:]))


def _pivot(history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``metric`` per measured epoch (rows) and level (columns, H1 … HL, the levels that have it)."""
    h = history[(history.metric == metric) & history.layer.str.startswith("H")]
    t = h.pivot(index="epoch", columns="layer", values="value")
    return t[[lv for lv in _levels(history) if lv in t.columns]]


def final_table(history: pd.DataFrame) -> pd.DataFrame:
    """One row per level at the last measured epoch: DNC1 (``nc1``, ``nc1_rank``, ``nc1_trace``), DNC2
    (``nc2_orthogonal``, ``nc2_etf``), DNC3 of the layer reading the level (``dnc3``: ``nc3_gram`` below the top,
    the classifier's ``nc3_orthogonal`` at H_L) and the ranks of the class means."""
    levels = _levels(history)
    last = history[history.epoch == history[history.metric == "nc1"].epoch.max()]
    t = last[last.layer.isin(levels)].pivot(index="layer", columns="metric", values="value").loc[levels]
    t["dnc3"] = t["nc3_gram"]
    t.loc[levels[-1], "dnc3"] = t.loc[levels[-1], "nc3_orthogonal"]
    cols = ["nc1", "nc1_rank", "nc1_trace", "nc2_orthogonal", "nc2_etf", "dnc3", "rank", "rank_centred"]
    out = t[cols].copy()
    out[["rank", "rank_centred"]] = out[["rank", "rank_centred"]].astype(int)
    return out


def spectra_table(history: pd.DataFrame, epoch: int | None = None) -> pd.DataFrame:
    """σ_k/σ_1 of the uncentred class means, one row per level, one column per k, at ``epoch`` (default: the last
    measured one) — the spectra of Súkeník et al. 2024, Fig. 2."""
    h = history[history.metric.str.startswith("sv_") & history.layer.str.startswith("H")]
    epoch = int(h.epoch.max()) if epoch is None else epoch
    t = h[h.epoch == epoch].assign(k=lambda d: d.metric.str[3:].astype(int))
    t = t.pivot(index="layer", columns="k", values="value").loc[_levels(history)]
    return t.div(t[1], axis=0)


def smallest_sv_table(history: pd.DataFrame) -> pd.DataFrame:
    """σ_K/σ_1 (the smallest over the largest singular value of the uncentred class means; K = min(K, d_l)) per
    measured epoch (rows) and level (columns): how far each level is from rank K − 1 along training."""
    levels = _levels(history)
    h = history[history.metric.str.startswith("sv_") & history.layer.isin(levels)].dropna(subset=["value"])
    k = h.metric.str[3:].astype(int)
    last = h[k == k.groupby(h.layer).transform("max")].pivot(index="epoch", columns="layer", values="value")
    return (last / _pivot(history, "sv_1"))[levels]


def srg_reference(K: int, L: int) -> dict[str, Any]:
    """What the low-rank SRG construction of Súkeník et al. 2024 (:func:`ncutils.theory.srg_construction`) has
    at K = r(r−1)/2 classes and L layers: the rank of the class means at H₁ … H_L (r below the top, K at H_L).
    The ranks do not depend on n or λ (only whether it beats DNC does); ``{}`` when K is not triangular."""
    from ..theory import srg_construction, srg_r

    try:
        r = srg_r(K)
    except ValueError:
        return {}
    c = srg_construction(K, 10, [0.004] * L, 0.004)  # any (n, λ): the ranks are structural
    return {"r": r, "ranks": {f"H{i}": rank for i, rank in enumerate(c.ranks, start=1)}}


def checks(history: pd.DataFrame, *, K: int = K_CLASSES, min_train_accuracy: float = 0.95) -> list[dict[str, Any]]:
    """The claims the notebook makes on a run's ``history`` (:func:`train_deep_head`):

    * the network fits the training digits: final train accuracy ≥ ``min_train_accuracy``;
    * DNC1 develops (Súkeník et al. 2023, Thm 3; 2024: DNC1 also holds in the low-rank solutions): the rank-aware
      NC1 of every level falls from the first to the last measured epoch (count check, all levels), and at the
      last epoch NC1 of the top level H_L is below that of the backbone output H₁ (ratio < 1);
    * the low-rank bias of Súkeník et al. 2024 (K > 2, L ≥ 3): at least one hidden level H₂ … H_{L−1} has
      class means of numerical rank < K (uncentred, σ_k > rank_tol·σ₁; the SRG construction has rank r there).
      Only for L ≥ 3; it fails when the bias is not observed, and the notebook then says so with the ranks.

    DNC2 and DNC3 have no check: for K > 2 the theory does not say which of the two branches (collapsed, or low
    rank) SGD reaches; their values are printed and plotted."""
    levels = _levels(history)
    m = history[history.layer == "model"].pivot(index="epoch", columns="metric", values="value")
    acc = float(m.train_accuracy.dropna().iloc[-1])
    nc1 = _pivot(history, "nc1_rank")
    first, last = nc1.iloc[0], nc1.iloc[-1]
    out = [
        check(f"final train accuracy >= {min_train_accuracy:g}", acc, 1.0, 1.0 - min_train_accuracy, kind="abs",
              id="train_accuracy"),
        count_check("levels whose rank-aware NC1 falls from the first to the last measured epoch",
                    int((last < first).sum()), len(levels), len(levels), id="nc1_falls_every_level"),
        check(f"rank-aware NC1 at {levels[-1]} / at H1, last epoch (< 1)", float(last.iloc[-1] / last.iloc[0]), 0.0,
              1.0, kind="abs", id="nc1_top_over_backbone"),
    ]
    hidden = levels[1:-1]
    if hidden:
        rank = _pivot(history, "rank").iloc[-1][hidden]
        out.append(count_check(f"hidden levels ({', '.join(hidden)}) with class-mean rank < K = {K} (low-rank bias)",
                               int((rank < K).sum()), len(hidden), 1, id="low_rank_hidden_levels"))
    return out


# --------------------------------------------------------------------------- figures
def _colors(levels: list[str]) -> dict[str, Any]:
    return dict(zip(levels, sns.color_palette("rocket_r", len(levels) + 1)[1:], strict=True))


def training_figure(history: pd.DataFrame, title: str | None = None) -> Figure:
    """The panels of Súkeník et al. 2023 (DNC1, DNC2, DNC3 per layer against training time) for the real network,
    against epochs: objective and accuracy; DNC1 (NC1, rank-aware dashed) per level; DNC2 (to the orthogonal
    frame, ETF dashed) per level; DNC3 of every head layer W_l (``nc3_gram`` of W_l and the class means of H_l;
    W_L: ``nc3_orthogonal``). Deeper is darker."""
    style()
    fig, axes = plt.subplots(1, 4, figsize=(14.4, 3.9), constrained_layout=True)
    objective_accuracy_panel(axes[0], history, loss="MSE")
    levels = _levels(history)
    colors = _colors(levels)
    panels = [("DNC1: NC1 (dashed: rank-aware, on it when equal)", ["nc1", "nc1_rank"]),
              ("DNC2: NC2 to the orth. frame (dashed: ETF)", ["nc2_orthogonal", "nc2_etf"])]
    for ax, (panel, metrics) in zip(axes[1:3], panels, strict=True):
        for lv in levels:
            for metric, dashes in zip(metrics, ("", (4, 2)), strict=False):
                t = _pivot(history, metric)[lv]
                ax.plot(t.index, t.values, color=colors[lv], marker=".", dashes=dashes,
                        label=lv if metric == metrics[0] else None)
        _finish(ax, panel, "epoch", ylog=metrics[0] == "nc1")  # NC2 spans about a decade or less: linear
        legend_below(ax, ncol=3)
    ax = axes[3]
    for i, lv in enumerate(levels, start=1):
        metric = "nc3_orthogonal" if lv == levels[-1] else "nc3_gram"
        t = _pivot(history, metric)[lv]
        ax.plot(t.index, t.values, color=colors[lv], marker=".", label=f"W{i} vs {lv}")
    _finish(ax, f"DNC3: W_l vs means of H_l (Gram; W{len(levels)}: NC3 orth.)", "epoch")
    legend_below(ax, ncol=3)
    if title:
        fig.suptitle(title)
    return fig


def spectra_figure(history: pd.DataFrame, rank_tol: float, srg_r: int | None = None,
                   title: str | None = None) -> Figure:
    """Normalized singular values σ_k/σ_1 of each level's (uncentred) class means, one panel per level, at
    every measured epoch (light: early, dark: last), as Súkeník et al. 2024, Fig. 2 (top); the dotted line is
    ``rank_tol`` (the rank counts the σ above it), the grey line marks k = r of the SRG construction."""
    style()
    levels = _levels(history)
    epochs = sorted(history[history.metric == "sv_1"].epoch.unique())
    fig, axes = plt.subplots(1, len(levels), figsize=(2.9 * len(levels), 3.1), constrained_layout=True,
                             sharey=True, squeeze=False)
    palette = sns.color_palette("mako_r", len(epochs) + 1)[1:]
    for ax, lv in zip(axes[0], levels, strict=True):
        for color, ep in zip(palette, epochs, strict=True):
            s = spectra_table(history, int(ep)).loc[lv]
            ax.plot(s.index, np.maximum(s.values, 1e-12), color=color, marker="o", ms=3, lw=0.9,
                    label=f"epoch {ep}")
        ax.axhline(rank_tol, color="0.3", ls=":", lw=1)
        if srg_r is not None and lv != levels[-1]:  # the construction has rank r below the top level, K at it
            ax.axvline(srg_r, color="0.6", ls="--", lw=1, label=f"SRG rank r = {srg_r}")
        ax.set_yscale("log")
        ax.set_title(f"{lv}: σ_k / σ_1")
        ax.set_xlabel("k")
    axes[0][0].plot([], [], color="0.3", ls=":", lw=1, label=f"rank_tol {rank_tol:g}")
    handles = {lab: h for ax in axes[0] for h, lab in zip(*ax.get_legend_handles_labels(), strict=True)}
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize="x-small", loc="upper left",
                       bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title)
    return fig
