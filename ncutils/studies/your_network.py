"""Notebook 09 — neural collapse of your own network: a small CNN that is not from ncutils, trained with a plain
PyTorch loop and with PyTorch Lightning, measured with :func:`ncutils.measure` and
:class:`ncutils.integrations.lightning.NeuralCollapseCallback`.

The network and both training loops are written in the notebook (they are the user's code); this module holds
the parameters' rules, the data, the history table, the checks and the figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from ..data import missing_files
from ..plot import finish_axes as _finish
from ..plot import style
from ..report import check
from ._common import NONNEG, Assumption, Requirement, Rule

__all__ = [
    "ASSUMPTIONS",
    "NOTEBOOK",
    "REQUIREMENTS",
    "RULES",
    "checks",
    "digits",
    "figure",
    "history_frame",
    "logged_vs_measured",
    "metric_table",
]

NOTEBOOK = "09_your_network"

#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    "per_class": Rule(int, low=1),
    "test_per_class": Rule(int, low=1),
    "width": Rule(int, low=1),
    "hidden": Rule(int, low=1),
    "epochs": Rule(int, low=1),
    "batch_size": Rule(int, low=1),
    "momentum": Rule(float, low=0.0, high=1.0),
    "weight_decay": NONNEG,
    "measure_every": Rule(int, low=1),
    "flatten": Rule(bool),
    "min_train_accuracy": Rule(float, low=0.0, high=1.0),
    "fake_data": Rule(bool),
}
#: Hard requirements: the MNIST files must be under ``data_root`` (unless ``fake_data``).
REQUIREMENTS: list[Requirement] = [
    Requirement(
        ("data_root", "fake_data"),
        lambda p: p["fake_data"] or missing_files("mnist", p["data_root"]) is None,
        lambda p: f"parameter data_root: {missing_files('mnist', p['data_root'])}",
        machine=True,
    ),
]
ASSUMPTIONS: list[Assumption] = []


def digits(run: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced MNIST training and test subsets (``per_class``, ``test_per_class``; seed ``seed``), normalized,
    28×28, from ``run["data_root"]`` — or, with ``fake_data``, from tiny synthetic files in MNIST's real IDX
    format written first under ``results_dir/fake_data`` and read by the same torchvision code."""
    from ..data import load_dataset, write_fake_mnist

    p = run.params
    root: str | Path = p["data_root"]
    if p["fake_data"]:
        root = run.results_dir / "fake_data"
        write_fake_mnist(root, per_class=p["per_class"], test_per_class=p["test_per_class"], seed=p["seed"])
    Xtr, ytr = load_dataset("mnist", root, per_class=p["per_class"], seed=p["seed"])
    Xte, yte = load_dataset("mnist", root, train=False, per_class=p["test_per_class"], seed=p["seed"])
    return Xtr, ytr, Xte, yte


def history_frame(records: list[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (epoch, layer, metric) from records ``{"epoch": e, "layer": name, "metric": m, "value": v}``
    or ``{"epoch": e, "result": ncutils.measure(...)}`` (expanded) — the long table the figure reads."""
    rows = []
    for r in records:
        if "result" in r:
            rows += [{"epoch": r["epoch"], "layer": layer, "metric": k, "value": float(v)}
                     for layer, vals in r["result"].items() for k, v in vals.items()]
        else:
            rows.append({k: r[k] for k in ("epoch", "layer", "metric", "value")})
    return pd.DataFrame(rows, columns=["epoch", "layer", "metric", "value"])


def metric_table(history: pd.DataFrame, metrics: list[str], epoch: int | None = None) -> pd.DataFrame:
    """``metrics`` (columns) per measured layer (rows, in measurement order) at ``epoch`` (default: the last)."""
    h = history[history.layer != "model"]
    epoch = int(h.epoch.max()) if epoch is None else epoch
    h = h[(h.epoch == epoch) & h.metric.isin(metrics)]
    t = h.pivot(index="layer", columns="metric", values="value")
    return t.loc[list(dict.fromkeys(h.layer)), [m for m in metrics if m in t.columns]]


def logged_vs_measured(logged: Mapping[str, float], measured: Mapping[str, Mapping[str, float]],
                       prefix: str = "nc/", strip: str = "") -> tuple[float, int]:
    """Largest difference between the values a :class:`NeuralCollapseCallback` logged (``"<prefix><level>/<metric>"``
    keys, levels named ``strip + name``) and ``measured`` (``{name: {metric: value}}``), relative to
    ``max(1, |value|)``, and how many values were compared. A value missing on either side counts as ``inf``."""
    worst, n = 0.0, 0
    for level, vals in measured.items():
        for k, v in vals.items():
            key = f"{prefix}{strip}{level}/{k}"
            got = logged.get(key, math.nan)
            err = abs(float(got) - v) / max(1.0, abs(v)) if math.isfinite(v) else (0.0 if got == v else math.inf)
            worst = max(worst, err if math.isfinite(err) else math.inf)
            n += 1
    extra = [k for k in logged if k.startswith(prefix) and k.removeprefix(prefix).removeprefix(strip).rsplit("/", 1)[0]
             not in measured]
    return (math.inf if extra else worst), n


def checks(history: pd.DataFrame, penultimate: str, min_train_accuracy: float, weights_diff: float,
           lightning_err: float, lightning_values: int, tol: float = 1e-6) -> list[dict[str, Any]]:
    """The claims this run can make: the network fits its training digits (final training accuracy at least
    ``min_train_accuracy``); the penultimate features' NC1 falls from the first to the last measured epoch
    (Papyan, Han & Donoho 2020); the Lightning run ends with the plain loop's weights (``weights_diff``, the
    largest difference, ≤ ``tol``) and its callback's last logged values equal the plain loop's
    :func:`ncutils.measure` of that final model (``lightning_err``: :func:`logged_vs_measured`, ≤ ``tol``)."""
    m = history[history.layer == "model"].pivot(index="epoch", columns="metric", values="value")
    nc1 = history[(history.layer == penultimate) & (history.metric == "nc1")].sort_values("epoch").value
    return [
        _at_least(f"final training accuracy >= {min_train_accuracy:g}", m.train_accuracy.iloc[-1],
                  min_train_accuracy, "final_train_accuracy_reached"),
        check("penultimate NC1: last / first measured epoch (< 1)", nc1.iloc[-1] / nc1.iloc[0], 0.0, 1.0,
              kind="abs", id="penultimate_nc1_falls"),
        check("Lightning run's final weights = the plain loop's", weights_diff, 0.0, tol, kind="abs",
              id="lightning_weights_equal_loop"),
        check(f"Lightning callback's last logged values = the plain loop's measurement ({lightning_values} values)",
              lightning_err, 0.0, tol, kind="abs", id="lightning_log_equals_loop_measure"),
    ]


def _at_least(label: str, value: float, bound: float, key: str) -> dict[str, Any]:
    """A check that ``value`` ≥ ``bound``: its error is the shortfall (0 when reached)."""
    c = check(label, max(bound - value, 0.0), 0.0, 0.0, kind="abs", id=key)
    return {**c, "gd": float(value), "theory": float(bound)}


def figure(history: pd.DataFrame, title: str | None = None) -> Figure:
    """Accuracy (network, and the nearest-class-centre rule on the penultimate features), NC1 and CDNV per
    layer against epochs. One colour per layer, deeper is darker; flattened maps dashed."""
    style()
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.4), constrained_layout=True)
    m = history[history.layer == "model"].pivot(index="epoch", columns="metric", values="value")
    feats = history[history.layer != "model"]
    layers = list(dict.fromkeys(feats.layer))
    pooled = [name for name in layers if not name.endswith("_flat")]
    colors = dict(zip(pooled, sns.color_palette("rocket_r", len(pooled) + 1)[1:], strict=True))
    ax = axes[0]
    ax.plot(m.index, m.train_accuracy, color="C2", marker=".", label="train (network)")
    if "test_accuracy" in m:
        ax.plot(m.index, m.test_accuracy, color="C2", ls=":", marker=".", label="test (network)")
    last = pooled[-1]
    for metric, ls, label in (("ncc_accuracy", "-", "train"), ("ncc_accuracy_test", ":", "test")):
        c = feats[(feats.layer == last) & (feats.metric == metric)]
        if not c.empty:
            ax.plot(c.epoch, c.value, color=colors[last], ls=ls, label=f"{label} (NCC on {last})")
    _finish(ax, "accuracy", "epoch")
    for ax, metric, panel in ((axes[1], "nc1", "NC1 (dashed: flattened maps)"), (axes[2], "cdnv", "CDNV")):
        for name in layers:
            c = feats[(feats.layer == name) & (feats.metric == metric)]
            base = name.removesuffix("_flat")
            if not c.empty:
                ax.plot(c.epoch, c.value, color=colors.get(base, "0.5"), marker=".",
                        dashes=(4, 2) if name.endswith("_flat") else "", label=None if name.endswith("_flat") else name)
        _finish(ax, panel, "epoch", ylog=True)
    if title:
        fig.suptitle(title)
    return fig
