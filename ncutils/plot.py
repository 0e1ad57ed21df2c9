"""One figure style and one panel layout for every neural-collapse figure.

``style()`` sets seaborn's colour-blind palette; :func:`nc_panels` draws the
standard objective | NC1 | NC2 | NC3 row from a GD history; :func:`save` writes
PDF and PNG with fixed metadata so an unchanged figure gives unchanged bytes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .paths import atomic_path

__all__ = [
    "LEVEL_PANELS",
    "PANELS",
    "ULPM_PANELS",
    "beta_sweep",
    "class_mean_spectra",
    "dufm_threshold_sweep",
    "gram_cosines",
    "init_scales",
    "jacobian_spectra",
    "layerwise_chain",
    "level_panels",
    "nc_panels",
    "perturbation_flow",
    "phase_panels",
    "rank_studies",
    "save",
    "style",
    "sweep_metric",
    "threshold_sweep",
    "training_panels",
    "ulpm_panels",
]

#: Panels of the standard NC figure: title → (metric, label) pairs.
PANELS: dict[str, list[tuple[str, str]]] = {
    "objective": [("objective", "objective")],
    "NC1": [("nc1", "tr(Σ_W Σ_B†)/K")],
    "NC2": [("nc2_orthogonal", "orthogonal frame"), ("nc2_etf", "simplex ETF")],
    "NC3": [("nc3_orthogonal", "W vs M (orth.)"), ("nc3_etf", "W vs M̃ (ETF)")],
}
_DASHES = ["", (4, 2), (1, 1), (3, 1, 1, 1)]


def _finish(ax: Any, title: str, xlabel: str, xlog: bool = False, ylog: bool = False) -> None:
    """Title, x label, log scales and the small legend shared by every panel."""
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:  # nothing labelled, no (empty) legend
        ax.legend(fontsize="x-small")


def style() -> None:
    """The shared style: seaborn ``ticks`` with grid, colour-blind palette, TrueType fonts in PDFs."""
    sns.set_theme(context="notebook", style="ticks", palette="colorblind",
                  rc={"axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100, "savefig.dpi": 150,
                      "pdf.fonttype": 42, "svg.hashsalt": "ncutils", "legend.frameon": False,
                      "axes.titlesize": "medium"})


def nc_panels(
    history: pd.DataFrame | Mapping[str, Any],
    *,
    hue: str | None = None,
    level: str = "H",
    theory: Mapping[str, float] | None = None,
    panels: Mapping[str, Sequence[tuple[str, str]]] = PANELS,
    title: str | None = None,
    logy: bool = True,
) -> Figure:
    """The standard row of panels (objective | NC1 | NC2 | NC3) against GD step.

    Parameters
    ----------
    history : long-form GD history (``step, run, level, metric, value``), optionally
        with a ``hue`` column distinguishing several runs — or a mapping
        ``{label: GDResult}``, drawn with one colour per label.
    level : the feature level whose metrics are drawn.
    theory : f* per hue value (or under key ``""`` without hue), drawn as dashed lines.
    Runs of the same hue are averaged (seaborn's mean with a 95% band).
    """
    if isinstance(history, Mapping):
        history = pd.concat([r.history.assign(model=label) for label, r in history.items()], ignore_index=True)
        hue = "model"
    style()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), constrained_layout=True)
    hues = [None] if hue is None else list(dict.fromkeys(history[hue]))
    palette = dict(zip(hues, sns.color_palette("colorblind", len(hues)), strict=False))
    for ax, (panel, metrics) in zip(axes, panels.items(), strict=True):
        for j, (metric, label) in enumerate(metrics):
            lev = "model" if metric == "objective" else level
            rows = history[(history.metric == metric) & (history.level == lev)]
            for h in hues:
                part = rows if h is None else rows[rows[hue] == h]
                if part.empty:
                    continue
                curve = part.groupby("step", observed=True).value.mean()
                name = " ".join(str(x) for x in (h, label if len(metrics) > 1 else None) if x is not None)
                (line,) = ax.plot(curve.index, curve.values, color=palette[h], label=name or label)
                line.set_dashes(_DASHES[j % len(_DASHES)])
                if metric == "objective" and theory is not None and (h if h is not None else "") in theory:
                    ax.axhline(theory[h if h is not None else ""], color=palette[h], ls="--", lw=1,
                               label=f"{h + ' ' if h else ''}f* (theory)")
        ax.set_title(panel)
        ax.set_xlabel("GD step")
        if logy:
            ax.set_yscale("log")
        ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return fig


#: Per-level panels: title → metrics in order of preference (the first one a level has is drawn).
LEVEL_PANELS: dict[str, list[str]] = {
    "NC1": ["nc1"],
    "NC2 (orthogonal frame)": ["nc2_orthogonal"],
    "NC3 (W vs means)": ["nc3_orthogonal", "nc3_gram"],
}


def level_panels(
    results: Mapping[str, Any],
    *,
    panels: Mapping[str, Sequence[str]] = LEVEL_PANELS,
    theory: Mapping[str, float] | None = None,
    title: str | None = None,
    alpha: float = 0.45,
) -> Figure:
    """One row per model (``{label: GDResult}``): objective | one panel per metric, one colour per
    feature level (H1, H2, …), one thin line per run (so stalled seeds stay visible).

    ``panels``: title → metric names in order of preference; for the classifier level
    ``nc3_orthogonal`` is drawn, for hidden levels ``nc3_gram``. ``theory``: f* per label (dashed).
    """
    style()
    ncol = 1 + len(panels)
    fig, axes = plt.subplots(len(results), ncol, figsize=(3.4 * ncol, 2.9 * len(results)),
                             constrained_layout=True, squeeze=False)
    for row, (label, res) in zip(axes, results.items(), strict=True):
        h = res.history
        levels = [lv for lv in dict.fromkeys(h.level.astype(str)) if lv != "model"]
        colors = dict(zip(levels, sns.color_palette("colorblind", len(levels)), strict=True))
        obj = h[h.metric == "objective"].pivot_table(index="step", columns="run", values="value", observed=True)
        row[0].plot(obj.index, obj.to_numpy(), color="0.2", lw=0.9, alpha=alpha)
        if theory is not None and label in theory:
            row[0].axhline(theory[label], color="C3", ls="--", lw=1.2, label="f* (theory)")
            row[0].legend(fontsize="x-small")
        row[0].set_title(f"{label}: objective")
        for ax, (panel, prefs) in zip(row[1:], panels.items(), strict=True):
            for lv in levels:
                have = set(h[h.level == lv].metric.astype(str))
                metric = next((mt for mt in prefs if mt in have), None)
                if metric is None:
                    continue
                sel = h[(h.level == lv) & (h.metric == metric)]
                wide = sel.pivot_table(index="step", columns="run", values="value", observed=True)
                lines = ax.plot(wide.index, wide.to_numpy(), color=colors[lv], lw=0.9, alpha=alpha)
                lines[0].set_label(lv)
            ax.set_title(panel)
            ax.legend(fontsize="x-small")
        for ax in row:
            ax.set_yscale("log")
            ax.set_xlabel("GD step")
    if title:
        fig.suptitle(title)
    return fig


def gram_cosines(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Pairwise cosines of class means per level, one dot per run and pair (``df`` from
    :func:`ncutils.experiments.mean_gram_cosines`); 0 (orthogonal frame) dashed."""
    style()
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * df.level.nunique(), 3.2), constrained_layout=True)
    sns.stripplot(data=df, x="level", y="cosine", hue="pair", dodge=True, ax=ax, size=4, jitter=0.15)
    ax.axhline(0.0, color="0.4", ls="--", lw=1)
    ax.set_ylabel("cos(μ_k, μ_k')")
    ax.legend(title="classes", fontsize="x-small", ncol=2)
    if title:
        ax.set_title(title)
    return fig


def init_scales(study: Any, table: pd.DataFrame, f_star: float, title: str | None = None) -> Figure:
    """The initialization-scale study (:func:`ncutils.experiments.init_scale_study`): objective along GD,
    one line per run coloured by init std (left), and the final |f/f* − 1| per seed (right). The
    dotted line is the trivial stationary point f = 1/2 (H = 0) where a too-small initialization stalls."""
    style()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8.4, 3.3), constrained_layout=True)
    h = study.history
    obj = h[h.metric == "objective"].pivot_table(index="step", columns="run", values="value", observed=True)
    scales = list(dict.fromkeys(table.init_std))
    colors = dict(zip(scales, sns.color_palette("viridis", len(scales)), strict=True))
    for std in scales:
        runs = table.run[table.init_std == std].tolist()
        lines = ax0.plot(obj.index, obj[runs].to_numpy(), color=colors[std], lw=0.9, alpha=0.6)
        lines[0].set_label(f"init std {std:g}")
    ax0.axhline(f_star, color="C3", ls="--", lw=1.2, label="f* (theory)")
    ax0.axhline(0.5, color="0.4", ls=":", lw=1, label="f = 1/2 (H = 0)")
    _finish(ax0, "objective", "GD step", ylog=True)
    err = study.final("objective")[table.run] / f_star - 1
    ax1.scatter(table.init_std, np.clip(np.abs(err), 1e-16, None), s=18, facecolors="none", edgecolors="C0")
    ax1.axhline(0.5 / f_star - 1, color="0.4", ls=":", lw=1, label="stall at H = 0 (f = 1/2)")
    _finish(ax1, "final |f / f* − 1| per seed", "init std", xlog=True, ylog=True)
    if title:
        fig.suptitle(title)
    return fig


def class_mean_spectra(ranks: pd.DataFrame, hue: str = "run", title: str | None = None) -> Figure:
    """Normalized singular values σ_k/σ_1 of every level's class means (``ranks`` from
    :func:`ncutils.experiments.class_mean_ranks`, optionally with another ``hue`` column), one panel per level."""
    style()
    levels = list(dict.fromkeys(ranks.level))
    fig, axes = plt.subplots(1, len(levels), figsize=(2.9 * len(levels), 3.0), constrained_layout=True,
                             sharey=True, squeeze=False)
    for ax, lv in zip(axes[0], levels, strict=True):
        part = ranks[ranks.level == lv]
        sns.lineplot(data=part, x="k", y="sv_rel", hue=hue, units="run", estimator=None, ax=ax, lw=0.9,
                     marker="o", ms=3, palette="colorblind" if part[hue].nunique() <= 10 else "viridis",
                     legend=ax is axes[0][-1])
        ax.set_yscale("log")
        ax.set_title(f"{lv}: σ_k / σ_1")
        ax.set_xlabel("k")
    if title:
        fig.suptitle(title)
    return fig


def rank_studies(width_table: pd.DataFrame, lambda_ranks: pd.DataFrame, K: int, title: str | None = None) -> Figure:
    """Left: how many seeds end at f_DNC / below / above per width (``width_table``: ``width, status``
    from :func:`ncutils.experiments.seed_table`). Right: mean numerical rank of each level's class means
    against λ (``lambda_ranks``: ``lambda, level, run, rank`` from :func:`ncutils.experiments.class_mean_ranks`)."""
    style()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8.6, 3.3), constrained_layout=True)
    counts = width_table.groupby(["width", "status"]).size().unstack(fill_value=0)
    for status in ("at f*", "below f*", "above f*"):
        if status not in counts:
            counts[status] = 0
    counts = counts[["at f*", "below f*", "above f*"]]
    counts.index = counts.index.astype(str)
    counts.plot.bar(stacked=True, ax=ax0, color=["C2", "C0", "C7"], rot=0)
    ax0.set_ylabel("seeds")
    _finish(ax0, "GD outcome vs width (at f* = DNC)", "width")
    per = lambda_ranks.drop_duplicates(["run", "level"]).groupby(["lambda", "level"])["rank"].mean().reset_index()
    sns.lineplot(data=per, x="lambda", y="rank", hue="level", marker="o", ax=ax1, palette="colorblind")
    ax1.axhline(K, color="0.4", ls="--", lw=1, label=f"K = {K}")
    _finish(ax1, "mean rank of the class means vs λ", "lambda", xlog=True)
    if title:
        fig.suptitle(title)
    return fig


def dufm_threshold_sweep(df: pd.DataFrame, level_label: str = "last level", title: str | None = None) -> Figure:
    """f and ‖μ_k‖² against (Km/2)q / threshold (``df`` from :func:`ncutils.experiments.dufm_threshold_sweep`):
    global optimum (line, with its jump at 1), metastable collapsed branch (dotted), GD (markers)."""
    style()
    fig, axes = plt.subplots(1, 2, figsize=(7.8, 3.2), constrained_layout=True)
    for ax, (key, label) in zip(axes, [("mean_norm_sq", f"‖μ_k‖², {level_label}"), ("objective", "objective f")],
                                strict=True):
        for side in (df.ratio <= 1, df.ratio > 1):
            ax.plot(df.ratio[side], df[f"{key}_theory"][side], color="C0",
                    label="theory (global)" if side.iloc[0] else None)
        ax.plot(df.ratio, df[f"{key}_metastable"], color="C2", ls=":", label="collapsed branch (local)")
        ax.plot(df.ratio, df[f"{key}_gd"], "o", color="C1", ms=5, mfc="none", label="GD")
        ax.axvline(1.0, color="0.4", ls="--", lw=1, label="threshold")
        _finish(ax, label, "(K m / 2) q / threshold")
    if title:
        fig.suptitle(title)
    return fig


def threshold_sweep(df: pd.DataFrame, title: str | None = None) -> Figure:
    """‖μ_k‖² and f against c: theory as lines, GD as markers (``df`` from
    :func:`ncutils.experiments.ufm_threshold_sweep`); the threshold c = 1 dashed."""
    style()
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.2), constrained_layout=True)
    for ax, (key, label) in zip(axes, [("mean_norm_sq", "mean ‖μ_k‖²"), ("objective", "objective f")], strict=True):
        ax.plot(df.c, df[f"{key}_theory"], color="C0", label="theory")
        ax.plot(df.c, df[f"{key}_gd"], "o", color="C1", ms=5, mfc="none", label="GD")
        ax.axvline(1.0, color="0.4", ls="--", lw=1, label="c = 1")
        _finish(ax, label, "c = K √(n λ_H λ_W)")
    if title:
        fig.suptitle(title)
    return fig


def perturbation_flow(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Theorem 3.1 along the gradient flow (``table`` from :meth:`ncutils.perturbation.PerturbationModel.flow`):
    nc1_trace(H_t), e^{2λ_H t} tr Σ_W and e^{2λ_H t} tr Σ_B against t (log axis; t = 0 as a dotted line)."""
    style()
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.2), constrained_layout=True)
    pos = table[table.t > 0]
    for ax, (col, label, claim) in zip(axes, [("nc1_trace", "nc1_trace = tr Σ_W / tr Σ_B", "decreases"),
                                              ("scaled_tr_Sigma_W", "e^{2λ_H t} tr Σ_W", "decreases"),
                                              ("scaled_tr_Sigma_B", "e^{2λ_H t} tr Σ_B", "increases")], strict=True):
        ax.plot(pos.t, pos[col], color="C0", label=f"flow (claim: {claim})")
        ax.axhline(float(table[col].iloc[0]), color="0.4", ls=":", lw=1, label="t = 0")
        _finish(ax, label, "time t", xlog=True, ylog=True)
    if title:
        fig.suptitle(title)
    return fig


def beta_sweep(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Corollary 3.2: nc1_trace (and Papyan's NC1) of the minimizer H_{1/β} against β, with nc1_trace(H₀)
    dashed (``df`` from :func:`ncutils.experiments.beta_sweep`)."""
    style()
    fig, ax = plt.subplots(figsize=(4.6, 3.3), constrained_layout=True)
    ax.plot(df.beta, df.nc1_trace, "o-", color="C0", ms=4, label="nc1_trace(H*)")
    ax.plot(df.beta, df.nc1, "s:", color="C1", ms=3, label="NC1 (Papyan) of H*")
    ax.axhline(float(df.nc1_trace_H0.iloc[0]), color="0.3", ls="--", lw=1, label="nc1_trace(H₀)")
    _finish(ax, "minimizer of f(·; H₀) vs β", "β", xlog=True, ylog=True)
    if title:
        fig.suptitle(title)
    return fig


def jacobian_spectra(table: pd.DataFrame, spectra: Mapping[float, np.ndarray], title: str | None = None) -> Figure:
    """Fig. 1 of Tirer, Huang & Niles-Weed: singular values of a diagonal block F_kk, one colour per λ_H,
    with the predicted σ_min = 1 − √(λ_H/λ_W)/β (dashed) and σ_max = 1 (grey); right: σ_max of the
    off-diagonal blocks vs 2λ_H(1 − √(λ_Hλ_W))/β (``table``/``spectra`` from
    :func:`ncutils.experiments.jacobian_study`)."""
    style()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.0, 3.4), constrained_layout=True,
                                   gridspec_kw={"width_ratios": [2, 1]})
    colors = sns.color_palette("colorblind", len(spectra))
    for color, (lh, sv) in zip(colors, spectra.items(), strict=True):
        ax0.plot(np.arange(1, len(sv) + 1), sv, ".", color=color, ms=4, label=f"λ_H = {lh:g}")
        pred = float(table.loc[table.lambda_H == lh, "pred_diag_sigma_min"].iloc[0])
        ax0.axhline(pred, color=color, ls="--", lw=1)
    ax0.axhline(1.0, color="0.4", lw=1, label="σ_max = 1 (theory)")
    ax0.set_ylabel("σ_i(F_kk)")
    _finish(ax0, "diagonal block F_kk (dashed: predicted σ_min)", "index i")
    x = np.arange(len(table))
    ax1.bar(x - 0.2, table.offdiag_sigma_max, width=0.4, color="C0", label="implicit diff.")
    ax1.bar(x + 0.2, table.pred_offdiag_sigma_max, width=0.4, color="C1", label="2λ_H(1−√(λ_Hλ_W))/β")
    ax1.set_xticks(x, [f"{v:g}" for v in table.lambda_H])
    _finish(ax1, "σ_max(F_kk'), rank 1", "λ_H")
    if title:
        fig.suptitle(title)
    return fig


def layerwise_chain(chain: pd.DataFrame, title: str | None = None) -> Figure:
    """NC1 and nc1_trace against layer for each β (``chain`` from :func:`ncutils.experiments.mnist_chain`)."""
    style()
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2), constrained_layout=True)
    for ax, (col, label) in zip(axes, [("nc1", "NC1 = tr(Σ_W Σ_B†)/K"), ("nc1_trace", "nc1_trace")], strict=True):
        sns.lineplot(data=chain.assign(beta=chain.beta.map("β = {:g}".format)), x="layer", y=col, hue="beta",
                     marker="o", ax=ax, palette="colorblind")
        ax.set_ylabel("")
        _finish(ax, label, "layer (0 = the MLP's features H₀)", ylog=True)
    if title:
        fig.suptitle(title)
    return fig


#: Panels of the layer-peeled figure: title → (level, metric, label) triples.
ULPM_PANELS: dict[str, list[tuple[str, str, str]]] = {
    "normalized margin": [("model", "normalized_margin", "margin / ½(‖W‖²+‖H‖²)")],
    "NC1": [("H", "nc1", "tr(Σ_W Σ_B†)/K")],
    "NC2 (Papyan)": [("H", "nc2_equinorm", "equinorm"), ("H", "nc2_equiangle", "equiangle"),
                     ("H", "nc2_maxangle", "max-angle")],
    "NC3": [("H", "nc3_etf", "W vs M̃ (ETF)")],
}


def ulpm_panels(results: Mapping[str, Any], margin_limit: float, title: str | None = None) -> Figure:
    """The layer-peeled model against log(log t) (Ji et al., Fig. 2): normalized margin (its limit
    1/(√n(K−1)) dashed), NC1, Papyan's NC2 variants, NC3 — and ‖W‖_F against log t. One colour per
    entry of ``results`` (label → GDResult); the mean over seeds is drawn."""
    style()
    fig, axes = plt.subplots(1, len(ULPM_PANELS) + 1, figsize=(3.3 * (len(ULPM_PANELS) + 1), 3.2),
                             constrained_layout=True)
    colors = dict(zip(results, sns.color_palette("colorblind", len(results)), strict=True))
    for label, gd in results.items():
        h = gd.history[gd.history.step >= 2]
        for ax, (panel, curves) in zip(axes, ULPM_PANELS.items(), strict=False):
            for j, (lev, metric, name) in enumerate(curves):
                c = h[(h.level == lev) & (h.metric == metric)].groupby("step", observed=True).value.mean()
                (line,) = ax.plot(np.log(np.log(c.index.to_numpy(dtype=float))), c.to_numpy(), color=colors[label],
                                  label=f"{label}" + (f", {name}" if len(curves) > 1 else ""))
                line.set_dashes(_DASHES[j % len(_DASHES)])
            ax.set_title(panel)
        w = h[h.metric == "norm_W_sq"].groupby("step", observed=True).value.mean()
        axes[-1].plot(np.log(w.index.to_numpy(dtype=float)), np.sqrt(w.to_numpy()), color=colors[label], label=label)
    axes[0].axhline(margin_limit, color="0.3", ls="--", lw=1, label="1/(√n(K−1))")
    for ax in axes[:-1]:
        ax.set_xlabel("log(log t)")
        if ax is not axes[0]:
            ax.set_yscale("log")
        ax.legend(fontsize="x-small")
    _finish(axes[-1], "‖W‖_F", "log t")
    if title:
        fig.suptitle(title)
    return fig


def training_panels(history: pd.DataFrame, frame: str = "etf", title: str | None = None) -> Figure:
    """Tirer & Bruna Fig. 5 layout for a network run (``history`` of :func:`ncutils.train.train_resnet`):
    objective and train/test accuracy, then NC1 and NC2 (to ``frame``: ``"orthogonal"`` for MSE without
    bias, ``"etf"`` otherwise) per layer, and NC3 / NC4 (test) of the classifier's input, against epochs.
    One colour per layer, deeper is darker; flattened feature maps dashed."""
    style()
    fig, axes = plt.subplots(1, 4, figsize=(14.4, 3.3), constrained_layout=True)
    m = history[history.layer == "model"].pivot(index="epoch", columns="metric", values="value").dropna(
        subset=["objective"])
    ax = axes[0]
    ax.plot(m.index, m.objective, color="C0", label="objective (loss + decay)")
    ax.plot(m.index, m.train_loss, color="C0", ls="--", label="train loss")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(m.index, m.train_accuracy, color="C2", label="train acc.")
    if "test_accuracy" in m:
        ax2.plot(m.index, m.test_accuracy, color="C2", ls=":", label="test acc.")
    ax2.set_ylim(0, 1.02)
    ax2.legend(fontsize="x-small", loc="center right")
    _finish(ax, "objective and accuracy", "epoch")
    feats = history[history.layer != "model"]
    layers = [name for name in dict.fromkeys(feats.layer) if not name.endswith("_flat")]
    colors = dict(zip(layers, sns.color_palette("rocket_r", len(layers) + 1)[1:], strict=True))
    for ax, (panel, metric) in zip(axes[1:3], [("NC1 (dashed: flattened maps)", "nc1"),
                                               (f"NC2 to the {frame} frame", f"nc2_{frame}")], strict=True):
        for layer in layers:
            for suffix, dashes in (("", ""), ("_flat", (4, 2))):
                c = feats[(feats.layer == layer + suffix) & (feats.metric == metric)]
                if not c.empty:
                    ax.plot(c.epoch, c.value, color=colors[layer], marker=".", dashes=dashes,
                            label=layer if not suffix else None)
        _finish(ax, panel, "epoch", ylog=True)
    ax = axes[3]
    for metric, label in (("nc3_etf", "NC3 (ETF)"), ("nc3_orthogonal", "NC3 (orth.)")):
        c = feats[(feats.layer == "layer4") & (feats.metric == metric)]
        ax.plot(c.epoch, c.value, marker=".", label=label)
    if "nc4_test" in m:
        ax.plot(m.index, m.nc4_test, marker=".", label="NC4 (test)")
    _finish(ax, "classifier vs penultimate (layer4)", "epoch", ylog=True)
    if title:
        fig.suptitle(title)
    return fig


def save(fig: Figure, name: str, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``name.pdf`` and ``name.png`` into ``folder`` atomically, with stable bytes.

    PDF metadata has no creation date; PNG metadata holds no timestamp either, so
    re-running an unchanged computation rewrites identical files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, meta in (("pdf", {"CreationDate": None, "ModDate": None}), ("png", {"Software": None})):
        path = folder / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta)
        out.append(path)
    return out


_PHASE_TITLES = {"ufm": "UFM: c = K√(nλ_Hλ_W) = 1", "eufm": "extended UFM: K q = 2^(−4/3)",
                 "dufm": "deep UFM (L = {L}): (Km/2) q = threshold"}


def phase_panels(tables: Mapping[str, pd.DataFrame], boundaries: Mapping[str, Mapping[str, np.ndarray]],
                 L: int = 3, title: str | None = None) -> Figure:
    """Phase diagrams, one column per model (``tables`` from :func:`ncutils.phase.phase_table`, keyed by kind):
    top, the fit s GD reaches (0 = the trivial solution H = 0, colour) with the theory boundary (solid) and,
    for deeper models, where the metastable collapsed branch ends (dashed); × marks a point where GD's phase
    differs from the theory's. Bottom, log₁₀ of the relative error of f between GD (best seed) and theory.
    ``boundaries[kind]``: ``{"lambda_W": …, "threshold": λ_H, "spinodal": λ_H}`` curves."""
    style()
    kinds = list(tables)
    fig, axes = plt.subplots(2, len(kinds), figsize=(3.9 * len(kinds), 6.6), constrained_layout=True, squeeze=False)
    for j, kind in enumerate(kinds):
        t = tables[kind]
        lw, lh = np.unique(t.lambda_W), np.unique(t.lambda_H)
        b = boundaries[kind]
        for i, (col, label, kw) in enumerate([
            ("fit_gd", "fit s reached by GD", {"vmin": 0.0, "vmax": 1.0, "cmap": "viridis"}),
            ("log_err", "log₁₀ rel. error of f", {"vmin": -16, "vmax": 0, "cmap": "magma"}),
        ]):
            ax = axes[i, j]
            values = t.fit_gd if col == "fit_gd" else np.log10(np.maximum(t.objective_rel_err, 1e-16))
            Z = values.to_numpy().reshape(len(lw), len(lh)).T  # rows: λ_H, columns: λ_W
            mesh = ax.pcolormesh(lw, lh, Z, shading="nearest", **kw)
            fig.colorbar(mesh, ax=ax, label=label, shrink=0.85)
            ax.plot(b["lambda_W"], b["threshold"], color="w", lw=2, label="theory boundary")
            if kind != "ufm":
                ax.plot(b["lambda_W"], b["spinodal"], color="w", lw=1.5, ls="--", label="end of metastable branch")
            wrong = t[t.collapsed_gd != t.collapsed_theory]
            ax.plot(wrong.lambda_W, wrong.lambda_H, "x", color="r", ms=7, mew=2, ls="none",
                    label="GD phase ≠ theory")
            ax.set_xlim(lw.min() / 1.2, lw.max() * 1.2)
            ax.set_ylim(lh.min() / 1.2, lh.max() * 1.2)
            ax.set_ylabel("λ_H")
            _finish(ax, _PHASE_TITLES[kind].format(L=L) if i == 0 else "", "λ_W", xlog=True, ylog=True)
            if i == 1:  # one legend per column, on the light top panel
                ax.get_legend().remove()
    if title:
        fig.suptitle(title)
    return fig


def sweep_metric(table: pd.DataFrame, x: str, y: str, hue: str | None = None, logx: bool = False,
                 logy: bool = False, title: str | None = None) -> Figure:
    """A metric of a sweep (a column of :func:`ncutils.sweep.collect`'s table, e.g. ``checks[objective].gd``)
    against a swept parameter: mean over the other parameters (seeds) with a ±1 sd band, one line per ``hue``.
    Failed runs (status ≠ done) are left out."""
    style()
    for col in (x, y, hue):
        if col is not None and col not in table.columns:
            raise KeyError(f"no column {col!r} in the sweep table; columns are {sorted(table.columns)}")
    done = table[table.status == "done"].copy()
    done[y] = pd.to_numeric(done[y], errors="coerce")
    fig, ax = plt.subplots(figsize=(4.8, 3.4), constrained_layout=True)
    sns.lineplot(data=done, x=x, y=y, hue=hue, marker="o", errorbar="sd", ax=ax,
                 palette="colorblind" if hue else None)
    ax.set_ylabel(y)
    _finish(ax, title or f"{len(done)} runs, mean ± sd", x, xlog=logx, ylog=logy)
    if hue is not None:
        ax.legend(title=hue, fontsize="x-small", title_fontsize="x-small")
    return fig
