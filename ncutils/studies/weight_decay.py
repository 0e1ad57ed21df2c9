"""Notebook 11 — the weight decay of the feature layers against the classifier's: ResNet18's penultimate collapse.

Tirer, Huang & Niles-Weed, ICML 2023, Fig. 3 (the experiment) and Theorem 4.2 (the prediction).

ResNet18 (:func:`ncutils.nets.resnet18`, CIFAR stem) is trained with :func:`ncutils.train.train_resnet` in two arms
— MSE without classifier bias and cross-entropy with one — and four weight-decay variants (λ_H: the decay of every
backbone parameter, ``wd_features``; λ_W: the classifier weight's, ``wd_classifier``): both as trained, the feature
decay doubled, the classifier decay doubled, the feature decay zeroed. The penultimate features (``layer4``,
globally average-pooled, shape ``(N, d)``) are measured at the end over the whole training set: NC1, NC1~
(``nc1_trace``) and NC2. A difference between two variants counts as resolved only when it exceeds the seed spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from ..data import missing_files
from ..device import is_quiet, progress_bar, resolve_device
from ..plot import finish_axes as _finish
from ..plot import style
from ..report import count_check
from ..solve import threads as torch_threads_context
from ..train import LOSSES, TrainConfig, checkpoint_file, train_resnet
from ._common import POSITIVE, Assumption, Requirement, Rule
from .resnet import resnet_cpu_hours, resnet_data

__all__ = ["ASSUMPTIONS", "FC_BIAS", "FRAME", "NOTEBOOK", "PAPER_SETTINGS", "PREDICTED", "REQUIREMENTS", "RULES",
           "TERMINAL_ACCURACY", "VARIANTS", "Training", "comparisons", "decay_horizon", "feature_vs_classifier",
           "final_row", "n_trainings", "prediction_table", "train_all", "trainings", "variant_figure", "variant_table",
           "weight_decay_checks", "weight_decay_cpu_hours", "weight_decay_data"]

NOTEBOOK = "11_weight_decay"

#: The paper's four variants: (factor of the feature layers' decay λ_H, factor of the classifier's λ_W) × ``wd``.
VARIANTS: dict[str, tuple[float, float]] = {
    "baseline": (1.0, 1.0),
    "features_x2": (2.0, 1.0),
    "classifier_x2": (1.0, 2.0),
    "features_0": (0.0, 1.0),
}
#: Theorem 4.2's direction for NC1 (and NC1~, NC2) against the baseline: −1 lower (closer to collapse), +1 higher.
PREDICTED: dict[str, int] = {"features_x2": -1, "classifier_x2": +1, "features_0": +1}
#: The paper's arms: MSE without the classifier bias, cross-entropy with it (Tirer & Bruna's protocol).
FC_BIAS: dict[str, bool] = {"mse": False, "ce": True}
#: The frame NC2 is measured against in each arm: MSE without bias → orthogonal frame, CE → simplex ETF.
FRAME: dict[str, str] = {"mse": "orthogonal", "ce": "etf"}
#: Papyan et al.'s terminal phase: from (near) zero training error on.
TERMINAL_ACCURACY = 0.999
#: The paper-scale settings of Fig. 3 (SPEC §5: SGD lr 0.05 ÷10 every 40 epochs, momentum 0.9, WD 5e-4, ResNet18
#: on CIFAR-10; epochs and batch size are not stated: 200 and 128, as notebook 07's paper profiles). The
#: ``cifar10`` profile of ``profiles/11_weight_decay.yaml`` holds the same values (a test says so).
PAPER_SETTINGS: dict[str, Any] = {"dataset": "cifar10", "per_class": 5000, "batch_size": 128, "epochs": 200,
                                  "schedule": "step40", "lr": 0.05, "momentum": 0.9, "wd": 5e-4}
_METRICS: dict[str, str] = {"nc1": "log", "nc1_trace": "log", "nc2": "linear"}  # compared, and on which scale
_TRAIN_KEYS = ("dataset", "lr", "schedule", "epochs", "batch_size", "momentum", "per_class", "test_per_class",
               "width_multiplier")


def _distinct(valid: tuple[str, ...], what: str) -> Callable[[Any], None]:
    """A check for a non-empty list of distinct names from ``valid``."""

    def check(values: Any) -> None:
        bad = [v for v in values if v not in valid]
        if not values or bad or len(set(values)) != len(values):
            got = f"unknown {bad}" if bad else "an empty list" if not values else f"repeated names in {list(values)}"
            raise ValueError(f"must be a non-empty list of distinct {what} from {valid}, got {got}")

    return check


def n_trainings(p: Mapping[str, Any]) -> int:
    """How many trainings ``p`` asks for: per arm, ``baseline_seeds`` of the baseline and ``seeds`` of every other
    variant."""
    return len(p["losses"]) * ((len(p["variants"]) - 1) * p["seeds"] + p["baseline_seeds"])


def weight_decay_cpu_hours(p: Mapping[str, Any]) -> float:
    """Rough CPU time of every training of the notebook: :func:`ncutils.studies.resnet.resnet_cpu_hours` of one
    training × :func:`n_trainings`."""
    return resnet_cpu_hours(p) * n_trainings(p)


#: Rules of the parameters that are this notebook's own (the rest: ``COMMON_RULES``).
RULES: dict[str, Rule] = {
    **{k: TrainConfig.RULES[k] for k in _TRAIN_KEYS},
    "losses": Rule(list, check=_distinct(LOSSES, "losses")),
    "variants": Rule(list, check=_distinct(tuple(VARIANTS), "weight-decay variants")),
    "wd": POSITIVE,
    "checkpoint_every": Rule(int, low=1),
    "compile": Rule(bool),
    "fake_data": Rule(bool),
    "max_cpu_hours": POSITIVE,
    "torch_threads": Rule(int, low=0),
    "baseline_seeds": Rule(int, low=1),
}
#: Hard requirements: a run whose parameters break one fails before any compute.
REQUIREMENTS: list[Requirement] = [
    Requirement(("variants",), lambda p: "baseline" in p["variants"],
                "parameter variants must include 'baseline' (every other variant is compared with it)"),
    Requirement(("baseline_seeds",), lambda p: p["baseline_seeds"] >= 2,
                lambda p: f"parameter baseline_seeds must be >= 2 (the seed spread decides which differences "
                          f"between variants are resolved), got {p['baseline_seeds']}"),
    Requirement(
        ("device", "width_multiplier", "per_class", "epochs", "losses", "variants", "seeds", "baseline_seeds",
         "max_cpu_hours"),
        lambda p: resolve_device(p["device"]).type != "cpu" or weight_decay_cpu_hours(p) <= p["max_cpu_hours"],
        lambda p: (
            f"these {n_trainings(p)} trainings need about "
            f"{weight_decay_cpu_hours(p):.3g} CPU hours (ResNet18 training ≈ 3.3 GFLOP per 32×32 image at width 1, "
            "assumed 50 GFLOP/s): run them on a GPU (device cuda), lower width_multiplier/per_class/epochs "
            "(profile cpu), or raise max_cpu_hours"
        ),
        machine=True,
    ),
    Requirement(("dataset", "data_root", "fake_data"),
                lambda p: p["fake_data"] or missing_files(p["dataset"], p["data_root"]) is None,
                lambda p: f"parameter data_root: {missing_files(p['dataset'], p['data_root'])}", machine=True),
]
#: Assumptions of the theorem: runs go on, but say so.
ASSUMPTIONS: list[Assumption] = []


@dataclass(frozen=True)
class Training:
    """One training of the notebook: its arm (``loss``), weight-decay ``variant``, ``seed`` and full configuration."""

    loss: str
    variant: str
    seed: int
    config: TrainConfig


def weight_decay_data(p: Mapping[str, Any], fake_root: str | Path | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The balanced training subset ``(N, C, 32, 32)`` and the test images of ``p`` (:func:`resnet_data`; subset
    drawn with ``p["seed"]``, shared by every training). ``fake_data``: tiny files in the dataset's real format are
    written under ``fake_root`` first (tests, CI)."""
    root = str(fake_root) if p["fake_data"] else p["data_root"]
    return resnet_data(p["dataset"], root, p["per_class"], p["test_per_class"], p["seed"], fake=p["fake_data"])


def trainings(p: Mapping[str, Any]) -> list[Training]:
    """Every training of the notebook's parameters ``p``, seed by seed (an interrupted run has whole seeds first):
    for each arm ``loss`` (the classifier bias as in :data:`FC_BIAS`), variant (:data:`VARIANTS` × ``wd``) and seed
    ``p["seed"] + i`` (the initialization and the batch order; the data subset stays), ``i`` below
    ``baseline_seeds`` for the baseline and below ``seeds`` for the other variants. Only the penultimate
    features (``layer4``, pooled) are measured, after epoch 1 and after the last."""
    base = {k: p[k] for k in _TRAIN_KEYS}
    out = []
    for i in range(max(p["seeds"], p["baseline_seeds"])):
        for loss in p["losses"]:
            for variant in p["variants"]:
                if i >= (p["baseline_seeds"] if variant == "baseline" else p["seeds"]):
                    continue
                f, c = VARIANTS[variant]
                cfg = TrainConfig(**base, loss=loss, fc_bias=FC_BIAS[loss], wd_features=f * p["wd"],
                                  wd_classifier=c * p["wd"], layers=("layer4",), flatten=False,
                                  measure_every=p["epochs"], seed=p["seed"] + i)
                out.append(Training(loss, variant, p["seed"] + i, cfg))
    return out


def final_row(t: Training, result: Any) -> dict[str, Any]:
    """The end-of-training numbers of one training (a :class:`ncutils.train.TrainResult`): the penultimate
    features' NC1, NC1~, NC2 to both frames and to the arm's own (:data:`FRAME`) as ``nc2``, NC1 after epoch 1,
    train/test accuracy and loss, objective, and timings."""
    h = result.history
    feats = h[(h.layer == "layer4")]
    last, first = feats[feats.epoch == feats.epoch.max()], feats[feats.epoch == feats.epoch.min()]
    m = h[(h.layer == "model") & (h.epoch == feats.epoch.max())].set_index("metric").value
    v = last.set_index("metric").value
    row = {"loss": t.loss, "variant": t.variant, "seed": t.seed, "wd_features": t.config.wd_features,
           "wd_classifier": t.config.wd_classifier, "nc1_epoch1": float(first.set_index("metric").value["nc1"]),
           **{k: float(v[k]) for k in ("nc1", "nc1_trace", "nc2_etf", "nc2_orthogonal", "nc3_etf", "nc3_orthogonal")},
           "nc2": float(v[f"nc2_{FRAME[t.loss]}"]),
           **{k: float(m[k]) for k in ("train_accuracy", "train_loss", "objective", "test_accuracy") if k in m},
           "train_time_s": result.train_time_s, "measure_time_s": result.measure_time_s,
           "resumed_from": result.resumed_from}
    bad = [k for k in ("nc1", "nc1_trace", "nc2", "train_loss") if not math.isfinite(row[k])]
    if bad:
        raise RuntimeError(f"training {t.loss}/{t.variant}/seed {t.seed} ended with non-finite {bad}: it diverged; "
                           "lower lr")
    return row


def train_all(runs: Sequence[Training], data: tuple[torch.Tensor, ...], *, device: torch.device | str,
              folder: str | Path, checkpoint_every: int = 5, compile: bool = False, torch_threads: int = 1,
              progress: bool | None = None) -> pd.DataFrame:
    """Train every configuration of ``runs`` with :func:`ncutils.train.train_resnet` (one resumable checkpoint
    file per configuration in ``folder``, :func:`ncutils.train.checkpoint_file`: re-running after an interruption
    resumes where it stopped and reproduces the uninterrupted numbers), with ``torch_threads`` intra-op threads
    (0: torch's default); a progress bar with an ETA over the trainings. Returns one :func:`final_row` per run."""
    rows = []
    show = (not is_quiet()) if progress is None else progress
    with torch_threads_context(torch_threads or None):
        for t in progress_bar(runs, desc="trainings", disable=not show):
            res = train_resnet(t.config, data, device=device, checkpoint=checkpoint_file(folder, t.config, data),
                               checkpoint_every=checkpoint_every, compile=compile, progress=False)
            rows.append(final_row(t, res))
    return pd.DataFrame(rows)


def _scaled(values: pd.Series, metric: str) -> np.ndarray:
    return np.log10(values.to_numpy()) if _METRICS[metric] == "log" else values.to_numpy()


def variant_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm and variant: mean (geometric for NC1 and NC1~), min and max over the seeds of every compared metric,
    and the final train accuracy's minimum."""
    out = []
    for (loss, variant), g in runs.groupby(["loss", "variant"], sort=False):
        row: dict[str, Any] = {"loss": loss, "variant": variant, "seeds": len(g)}
        for metric in _METRICS:
            s = _scaled(g[metric], metric)
            mean = s.mean()
            row[metric] = 10 ** mean if _METRICS[metric] == "log" else mean
            row[f"{metric}_min"], row[f"{metric}_max"] = g[metric].min(), g[metric].max()
        row["min_train_accuracy"] = g.train_accuracy.min()
        out.append(row)
    return pd.DataFrame(out).set_index(["loss", "variant"])


def comparisons(runs: pd.DataFrame) -> pd.DataFrame:
    """Every variant against the baseline, per arm and metric: the difference of the seed means ``delta``
    (log10 of the ratio for NC1 and NC1~, plain for NC2), the seed ``spread`` (the larger of the two variants'
    max − min over seeds, on the same scale: the baseline's alone when the variant has one seed),
    ``resolved`` = |delta| > spread, the predicted direction
    (:data:`PREDICTED`, Tirer, Huang & Niles-Weed 2023, Thm 4.2) and the observed one (``within spread`` when
    unresolved)."""
    out = []
    for loss, arm in runs.groupby("loss", sort=False):
        base = arm[arm.variant == "baseline"]
        for variant, g in arm.groupby("variant", sort=False):
            if variant == "baseline":
                continue
            for metric, scale in _METRICS.items():
                a, b = _scaled(g[metric], metric), _scaled(base[metric], metric)
                delta = float(a.mean() - b.mean())
                spread = float(max(np.ptp(a), np.ptp(b)))
                resolved = abs(delta) > spread
                observed = ("lower" if delta < 0 else "higher") if resolved else "within spread"
                out.append({"loss": loss, "variant": variant, "metric": metric, "scale": scale, "delta": delta,
                            "spread": spread, "resolved": resolved,
                            "predicted": "lower" if PREDICTED[variant] < 0 else "higher", "observed": observed,
                            "agrees": resolved and observed == ("lower" if PREDICTED[variant] < 0 else "higher")})
    return pd.DataFrame(out)


def feature_vs_classifier(runs: pd.DataFrame) -> pd.DataFrame:
    """The paper's finding — changing the feature layers' decay moves NC1/NC2 more than changing the classifier's —
    measured on the two doublings, per arm and metric: |delta| of ``features_x2`` and of ``classifier_x2``
    against the baseline (:func:`comparisons`), their difference, and the seed spread (the largest of the three
    variants'); ``resolved`` when the difference exceeds it. Empty when either doubling is missing."""
    c = comparisons(runs)
    out = []
    for (loss, metric), g in c.groupby(["loss", "metric"], sort=False):
        g = g.set_index("variant")
        if not {"features_x2", "classifier_x2"} <= set(g.index):
            continue
        f, w = abs(g.delta["features_x2"]), abs(g.delta["classifier_x2"])
        spread = float(max(g.spread["features_x2"], g.spread["classifier_x2"]))
        out.append({"loss": loss, "metric": metric, "features_x2": f, "classifier_x2": w, "difference": f - w,
                    "spread": spread, "resolved": abs(f - w) > spread,
                    "features_more": f - w > spread})
    return pd.DataFrame(out)


def prediction_table(variants: Sequence[str], wd: float) -> pd.DataFrame:
    """Theorem 4.2 of Tirer, Huang & Niles-Weed 2023 read for the variants: near collapse, a diagonal block of the
    Jacobian ∂H*/∂H₀ has 1 − σ_min(F_kk) = √(λ_H/λ_W)/β, so the contraction towards collapse scales as
    √(λ_H/λ_W); here relative to the baseline's (λ_H = ``wd_features``, λ_W = ``wd_classifier``; the network's
    feature decay stands for the model's λ_H heuristically). Larger λ_H: closer to collapse (NC1 lower); larger
    λ_W: the opposite."""
    rows = []
    for v in variants:
        f, c = VARIANTS[v]
        rows.append({"variant": v, "wd_features (λ_H)": f * wd, "wd_classifier (λ_W)": c * wd,
                     "contraction √(λ_H/λ_W) / baseline's": math.sqrt(f / c),
                     "predicted NC1 vs baseline": "-" if v == "baseline" else
                     ("lower" if PREDICTED[v] < 0 else "higher")})
    return pd.DataFrame(rows).set_index("variant")


def decay_horizon(p: Mapping[str, Any], K: int = 10) -> float:
    """wd · Σ_t lr_t / (1 − momentum) over the whole training of ``p`` (``K`` balanced classes of ``per_class``,
    ``ceil(K·per_class/batch_size)`` SGD steps per epoch, the learning-rate schedule of :class:`TrainConfig`):
    the log-factor by which the decay alone would shrink a weight (momentum's effective step is lr/(1 − m)).
    A horizon ≪ 1 leaves the weight norms far from the balance that the decay sets."""
    cfg = TrainConfig(**{k: p[k] for k in ("lr", "schedule", "epochs", "batch_size", "momentum")})
    steps = math.ceil(K * p["per_class"] / p["batch_size"])
    milestones = cfg.milestones()
    lr_sum = sum(p["lr"] * 0.1 ** sum(m < e for m in milestones) for e in range(1, p["epochs"] + 1)) * steps
    return p["wd"] * lr_sum / (1 - p["momentum"])


def _mark(ok: bool) -> str:
    return "observed" if ok else "not observed"


def weight_decay_checks(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """What the run shows, each over every seed it covers: every training ends in the terminal phase (train
    accuracy ≥ :data:`TERMINAL_ACCURACY`) and with a lower penultimate NC1 than after epoch 1; per arm and variant,
    Theorem 4.2's direction of NC1 against the baseline, resolved beyond the seed spread (:func:`comparisons`;
    the label says observed or not, with the numbers); per arm, the paper's finding that doubling the feature
    decay moves NC1 more than doubling the classifier's (:func:`feature_vs_classifier`)."""
    n = len(runs)
    checks = [
        count_check(f"trainings at train accuracy >= {TERMINAL_ACCURACY} (terminal phase)",
                    int((runs.train_accuracy >= TERMINAL_ACCURACY).sum()), n, n, id="terminal_phase_trainings"),
        count_check("trainings whose penultimate NC1 fell from epoch 1 to the end",
                    int((runs.nc1 < runs.nc1_epoch1).sum()), n, n, id="penultimate_nc1_fell"),
    ]
    comp = comparisons(runs)
    for r in comp[comp.metric == "nc1"].itertuples():
        checks.append(count_check(
            f"{r.loss.upper()} {r.variant}: NC1 {r.predicted} than baseline beyond the seed spread — "
            f"{_mark(r.agrees)} (log10 ratio {r.delta:+.3f}, spread {r.spread:.3f})",
            int(r.agrees), 1, 1, id=f"{r.loss}_{r.variant}_nc1_{r.predicted}_resolved"))
    fvc = feature_vs_classifier(runs)
    for r in fvc[fvc.metric == "nc1"].itertuples() if not fvc.empty else []:
        checks.append(count_check(
            f"{r.loss.upper()}: doubling the feature decay moves NC1 more than doubling the classifier's — "
            f"{_mark(r.features_more)} (|log10 ratio| {r.features_x2:.3f} vs {r.classifier_x2:.3f}, "
            f"spread {r.spread:.3f})", int(r.features_more), 1, 1, id=f"{r.loss}_features_move_nc1_more"))
    return checks


_LABELS = {"baseline": "baseline", "features_x2": "λ_H ×2", "classifier_x2": "λ_W ×2", "features_0": "λ_H = 0"}
_ARROW = {-1: "↓", +1: "↑"}
_FRAME_NAME = {"orthogonal": "the orthogonal frame", "etf": "the simplex ETF"}


def variant_figure(runs: pd.DataFrame, title: str | None = None) -> Figure:
    """Tirer, Huang & Niles-Weed Fig. 3 as final values: one row per arm (MSE without bias, CE with bias), panels
    NC1 (log), NC1~ (log) and NC2 (to the arm's frame, :data:`FRAME`) of the penultimate features against the
    weight-decay variant (λ_H: the feature layers' decay, λ_W: the classifier's); every seed a small point, the seed
    mean (geometric for the log panels) a large one with the seeds' range as a bar; the dotted line is the
    baseline's mean; the tick labels carry Thm 4.2's predicted direction."""
    from matplotlib.ticker import FuncFormatter

    style()
    arms = list(dict.fromkeys(runs.loss))
    fig, axes = plt.subplots(len(arms), 3, figsize=(12.6, 3.1 * len(arms) + 0.9), constrained_layout=True,
                             squeeze=False)
    table = variant_table(runs)
    fmt = FuncFormatter(lambda v, _pos: f"{v:.3g}")
    for row, loss in zip(axes, arms, strict=True):
        arm = runs[runs.loss == loss]
        variants = list(dict.fromkeys(arm.variant))
        for ax, metric in zip(row, _METRICS, strict=True):
            log = _METRICS[metric] == "log"
            for i, v in enumerate(variants):
                vals = arm[arm.variant == v][metric].to_numpy()
                ax.scatter(np.full(len(vals), i) + np.linspace(-0.08, 0.08, len(vals)), vals, s=14, color="0.45",
                           zorder=3, label="a seed" if i == 0 else None)
                mean = table.loc[(loss, v), metric]
                ax.errorbar([i], [mean], yerr=[[max(mean - vals.min(), 0.0)], [max(vals.max() - mean, 0.0)]],
                            fmt="o", ms=8, color=f"C{i}", capsize=4, zorder=4,
                            label="seed mean and range" if i == 0 else None)
            ax.axhline(table.loc[(loss, "baseline"), metric], color="0.3", ls=":", lw=1, label="baseline mean")
            ax.set_xticks(range(len(variants)),
                          [_LABELS[v] + (f"\n(pred. {_ARROW[PREDICTED[v]]})" if v in PREDICTED else "")
                           for v in variants], fontsize="small")
            ax.set_xlim(-0.5, len(variants) - 0.5)
            name = {"nc1": "NC1", "nc1_trace": "NC1~ = tr Σ_W / tr Σ_B",
                    "nc2": f"NC2 to {_FRAME_NAME[FRAME[loss]]}"}
            bias = "no bias" if not FC_BIAS[loss] else "with bias"
            _finish(ax, f"{loss.upper()} ({bias}): {name[metric]}", "", ylog=log)
            if log:
                ax.yaxis.set_major_formatter(fmt)
                ax.yaxis.set_minor_formatter(fmt)
                ax.tick_params(axis="y", which="minor", labelsize="x-small")
            if ax.get_legend() is not None:
                ax.get_legend().remove()
    fig.legend(handles=axes[0, 0].get_legend_handles_labels()[0], loc="outside lower center", ncol=3,
               fontsize="small")
    if title:
        fig.suptitle(title)
    return fig
