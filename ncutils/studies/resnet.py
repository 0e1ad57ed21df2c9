"""Notebook 07 — ResNet18 on MNIST / CIFAR-10, neural collapse layer by layer.

Tirer & Bruna 2022, Figs. 5, 10; Papyan, Han & Donoho 2020.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from ..data import missing_files
from ..device import resolve_device
from ..nets import RESNET_LAYERS
from ..plot import finish_axes as _finish
from ..plot import legend_below, style
from ..report import check
from ..train import TrainConfig
from ._common import POSITIVE, Assumption, Requirement, Rule


def resnet_cpu_hours(p: Mapping[str, Any]) -> float:
    """Rough CPU time of a ResNet18 run: 3 × 1.11 GFLOP per image and epoch at width 1 (∝ width²), 50 GFLOP/s."""
    images = p["per_class"] * 10 * p["epochs"]
    return 3 * 1.11e9 * p["width_multiplier"] ** 2 * images / 50e9 / 3600


__all__ = ["ASSUMPTIONS", "NOTEBOOK", "REQUIREMENTS", "RULES", "collapse_rates", "figure_name",
           "objective_accuracy_panel", "resnet_checks", "resnet_cpu_hours", "resnet_data", "resnet_final",
           "resnet_metric_table", "terminal_phase", "training_figure"]

NOTEBOOK = "07_resnet"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    **TrainConfig.RULES,
    "checkpoint_every": Rule(int, low=1),
    "compile": Rule(bool),
    "fake_data": Rule(bool),
    "max_cpu_hours": POSITIVE,
}
#: Hard requirements of the theory: a run whose parameters break one fails before any compute.
REQUIREMENTS: list[Requirement] = [
    Requirement(("dataset", "data_root", "fake_data"),
                lambda p: p["fake_data"] or missing_files(p["dataset"], p["data_root"]) is None,
                lambda p: f"parameter data_root: {missing_files(p['dataset'], p['data_root'])}", machine=True),
    Requirement(
        ("device", "width_multiplier", "per_class", "epochs", "max_cpu_hours"),
        lambda p: resolve_device(p["device"]).type != "cpu" or resnet_cpu_hours(p) <= p["max_cpu_hours"],
        lambda p: (
            f"this run needs about {resnet_cpu_hours(p):.3g} CPU hours (ResNet18 training ≈ 3.3 "
            "GFLOP per 32×32 image at width 1, assumed 50 GFLOP/s): run it on a GPU (device "
            "cuda), lower width_multiplier/per_class/epochs (profile cpu), or raise max_cpu_hours"
        ),
        machine=True,
    ),
]
#: Assumptions of the theorem: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = []


# --------------------------------------------------------------------------- #
# §7 ResNet18 on real data (notebook 07)
# --------------------------------------------------------------------------- #
def resnet_data(
    dataset: str, data_root: str, per_class: int, test_per_class: int = 0, seed: int = 0, fake: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced training subset and test set, normalized, MNIST zero-padded to 32×32 (the CIFAR stem).
    ``test_per_class`` 0: the whole test split. ``fake``: write and read tiny files in the dataset's real
    format under ``data_root`` first (tests, CI)."""
    from ..data import load_dataset, write_fake_cifar10, write_fake_mnist

    if fake:
        writer = write_fake_mnist if dataset == "mnist" else write_fake_cifar10
        writer(data_root, per_class=per_class, test_per_class=max(test_per_class, 2), seed=seed)
    Xtr, ytr = load_dataset(dataset, data_root, per_class=per_class, seed=seed, pad_to=32, verify=not fake)
    Xte, yte = load_dataset(
        dataset, data_root, train=False, per_class=test_per_class or None, seed=seed, pad_to=32, verify=not fake
    )
    return Xtr, ytr, Xte, yte


def _by_depth(layers: Any) -> list[str]:
    """Layer names in network order (stem, layer1, …), each pooled level before its flattened one."""
    return sorted(layers, key=lambda name: (RESNET_LAYERS.index(name.removesuffix("_flat")), name.endswith("_flat")))


def resnet_final(result: Any) -> pd.DataFrame:
    """Final per-layer metrics of a :func:`ncutils.train.train_resnet` run: one row per layer, by depth."""
    h = result.history
    last = h[(h.epoch == h[h.metric == "nc1"].epoch.max()) & (h.layer != "model")]
    table = last.pivot(index="layer", columns="metric", values="value")
    return table.loc[_by_depth(table.index)]


def resnet_metric_table(result: Any, metric: str = "nc1") -> pd.DataFrame:
    """``metric`` per layer (rows, by depth) at the first and the last measured epoch (columns)."""
    t = result.history[result.history.metric == metric].pivot(index="layer", columns="epoch", values="value")
    return t.loc[_by_depth(t.index)].iloc[:, [0, -1]]


def figure_name(cfg: TrainConfig, profile: str) -> str:
    """File name of a run's figure, after the paper figure its protocol follows: Ji et al. 2022 Fig. 1
    (``jlzds22_fig1_``) without any weight decay, else Tirer & Bruna 2022 Fig. 5 (MNIST) / Fig. 10 (CIFAR-10)
    (``tb22_fig5_`` / ``tb22_fig10_``); then network, dataset, loss, ``_bias`` and the profile (``cpu`` profiles
    are the CPU-scale runs, paper profiles width 1)."""
    no_wd = cfg.wd_features == 0 and cfg.wd_classifier == 0
    paper = "jlzds22_fig1" if no_wd else {"mnist": "tb22_fig5", "cifar10": "tb22_fig10"}[cfg.dataset]
    return f"{paper}_resnet18_{cfg.dataset}_{cfg.loss}{'_bias' if cfg.fc_bias else ''}_{profile}"


def terminal_phase(result: Any) -> int | None:
    """The first measured epoch with zero training error (training accuracy 1): where Papyan, Han & Donoho's
    terminal phase of training starts; None if the run never reaches it."""
    h = result.history
    acc = h[(h.layer == "model") & (h.metric == "train_accuracy")].sort_values("epoch")
    done = acc[acc.value >= 1.0]
    return None if done.empty else int(done.epoch.iloc[0])


def collapse_rates(result: Any, layer: str = "layer4",
                   metrics: tuple[str, ...] = ("nc1", "nc2_etf", "nc2_orthogonal", "nc3_etf", "nc3_orthogonal"),
                   start: int | None = None) -> pd.DataFrame:
    """How fast collapse goes on in the terminal phase (Ji et al. 2022, Fig. 1: without weight decay the metrics
    still fall, slowly): per metric of ``layer``, the least-squares slope of log(metric) against log(epoch) over
    the measured epochs from ``start`` (default :func:`terminal_phase`) on, with the number of points and the
    first and last values. Empty when fewer than 2 measured epochs are in the terminal phase."""
    start = terminal_phase(result) if start is None else int(start)
    h = result.history
    rows = []
    for metric in metrics:
        c = h[(h.layer == layer) & (h.metric == metric)].sort_values("epoch")
        c = c[(c.epoch >= start) & (c.value > 0)] if start is not None else c.iloc[:0]
        if len(c) < 2:
            continue
        slope = float(np.polyfit(np.log(c.epoch.to_numpy(float)), np.log(c.value.to_numpy(float)), 1)[0])
        rows.append({"metric": metric, "from_epoch": int(c.epoch.iloc[0]), "to_epoch": int(c.epoch.iloc[-1]),
                     "points": len(c), "first": float(c.value.iloc[0]), "last": float(c.value.iloc[-1]),
                     "slope_vs_log_epoch": slope})
    return pd.DataFrame(rows, columns=["metric", "from_epoch", "to_epoch", "points", "first", "last",
                                       "slope_vs_log_epoch"]).set_index("metric")


def resnet_checks(result: Any) -> list[dict[str, Any]]:
    """The real-network claims (Papyan, Han & Donoho 2020; Tirer & Bruna 2022, Fig. 5; Ji et al. 2022, Fig. 1)
    on this run: training reaches zero error (when the run measures the training accuracy); NC1 of the
    penultimate features (GAP of ``layer4``) falls from the first to the last measured epoch, and at the last
    epoch the penultimate features are the most collapsed of all tapped (pooled) layers (earlier layers with an
    NC1 as small: 0 expected); without any weight decay (``result.config``), Ji et al.'s claim that collapse goes
    on in the terminal phase: penultimate NC1 at the last epoch below its value where training error first
    reached 0. How NC1 orders the earlier layers, NC2 and NC3 are printed, not checked."""
    h = result.history
    nc1 = h[h.metric == "nc1"].pivot(index="epoch", columns="layer", values="value")
    if "layer4" not in nc1:
        return []
    earlier = [name for name in RESNET_LAYERS[:-1] if name in nc1.columns]
    last = nc1.iloc[-1]
    out = []
    acc = h[(h.layer == "model") & (h.metric == "train_accuracy")].sort_values("epoch")
    if not acc.empty:
        out.append(check("training error at the last epoch", 1.0 - float(acc.value.iloc[-1]), 0.0, 0.0, kind="abs"))
    out += [
        check("penultimate NC1: last / first measured epoch (< 1)", nc1.layer4.iloc[-1] / nc1.layer4.iloc[0], 0.0, 1.0,
              kind="abs"),
        check(f"earlier layers ({', '.join(earlier)}) with NC1 <= the penultimate's at the last epoch",
              int((last[earlier] <= last["layer4"]).sum()), 0, 0, kind="abs",
              id="earlier_layers_nc1_not_above_penultimate"),
    ]
    cfg = getattr(result, "config", None)
    if cfg is not None and cfg.wd_features == 0 and cfg.wd_classifier == 0:
        start = terminal_phase(result)
        ratio = math.inf if start is None else float(nc1.layer4.iloc[-1] / nc1.layer4.loc[start])
        out.append(check("no weight decay: penultimate NC1 last / at zero training error (< 1)", ratio, 0.0, 1.0,
                         kind="abs", id="no_weight_decay_terminal_nc1_falls"))
    return out


def objective_accuracy_panel(ax: Any, history: pd.DataFrame, loss: str = "loss") -> pd.DataFrame:
    """The first panel of a network run's training figure (Tirer & Bruna Fig. 5; notebooks 07, 12): the objective
    (loss + weight decay) and the training ``loss`` (log scale, left axis) and train/test accuracy (right axis)
    against the measured epochs of ``history`` (long form, layer ``"model"``). Returns the model-level metrics
    (epoch × metric) it plotted from."""
    m = (
        history[history.layer == "model"]
        .pivot(index="epoch", columns="metric", values="value")
        .dropna(subset=["objective"])
    )
    ax.plot(m.index, m.objective, color="C0", label="objective (loss + decay)" if loss == "loss" else
            f"objective ({loss} + decay)")
    ax.plot(m.index, m.train_loss, color="C0", ls="--", label=f"train {loss}")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(m.index, m.train_accuracy, color="C2", label="train acc.")
    if "test_accuracy" in m:
        ax2.plot(m.index, m.test_accuracy, color="C2", ls=":", label="test acc.")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("accuracy")
    _finish(ax, "objective and accuracy", "epoch")
    ax.set_ylabel(f"objective, {loss}")
    legend_below(ax, ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0])
    return m


def training_figure(history: pd.DataFrame, frame: str = "etf", title: str | None = None) -> Figure:
    """Tirer & Bruna Fig. 5 layout for a network run (``history`` of :func:`ncutils.train.train_resnet`):
    objective and train/test accuracy, then NC1 and NC2 (to ``frame``: ``"orthogonal"`` for MSE without
    bias, ``"etf"`` otherwise) per layer, and NC3 / NC4 (test) of the classifier's input, against epochs.
    One colour per layer, deeper is darker; flattened feature maps dashed."""
    style()
    fig, axes = plt.subplots(1, 4, figsize=(14.4, 3.9), constrained_layout=True)
    m = objective_accuracy_panel(axes[0], history)
    feats = history[history.layer != "model"]
    layers = [name for name in dict.fromkeys(feats.layer) if not name.endswith("_flat")]
    colors = dict(zip(layers, sns.color_palette("rocket_r", len(layers) + 1)[1:], strict=True))
    frame_name = "simplex ETF" if frame == "etf" else "orthogonal frame"
    for ax, (panel, metric) in zip(
        axes[1:3], [("NC1 (dashed: flattened maps)", "nc1"), (f"NC2 to the {frame_name}", f"nc2_{frame}")], strict=True
    ):
        for layer in layers:
            for suffix, dashes in (("", ""), ("_flat", (4, 2))):
                c = feats[(feats.layer == layer + suffix) & (feats.metric == metric)]
                if not c.empty:
                    ax.plot(c.epoch, c.value, color=colors[layer], marker=".", dashes=dashes,
                            label=layer if not suffix else None)
        _finish(ax, panel, "epoch", ylog=metric == "nc1")  # NC2 spans well under a decade: a linear axis
        legend_below(ax, ncol=3)
    ax = axes[3]
    for metric, label in (("nc3_etf", "NC3 (ETF)"), ("nc3_orthogonal", "NC3 (orth.)")):
        c = feats[(feats.layer == "layer4") & (feats.metric == metric)]
        ax.plot(c.epoch, c.value, marker=".", label=label)
    if "nc4_test" in m:
        ax.plot(m.index, m.nc4_test, marker=".", label="NC4 (test)")
    _finish(ax, "classifier vs penultimate (layer4)", "epoch", ylog=True)
    legend_below(ax, ncol=2)
    if title:
        fig.suptitle(title)
    return fig
