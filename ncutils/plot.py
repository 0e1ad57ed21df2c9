"""One figure style, the generic panels, and saving: what every notebook's figures share.

Figures that serve one notebook live in its study (:mod:`ncutils.studies`).

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
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .paths import atomic_path

__all__ = ["DASHES", "LEVEL_PANELS", "PANELS", "finish_axes", "level_panels", "nc_panels", "save", "style",
           "sweep_metric", "threshold_panels"]

#: Panels of the standard NC figure: title → (metric, label) pairs.
PANELS: dict[str, list[tuple[str, str]]] = {
    "objective": [("objective", "objective")],
    "NC1": [("nc1", "tr(Σ_W Σ_B†)/K")],
    "NC2": [("nc2_orthogonal", "orthogonal frame"), ("nc2_etf", "simplex ETF")],
    "NC3": [("nc3_orthogonal", "W vs M (orth.)"), ("nc3_etf", "W vs M̃ (ETF)")],
}
DASHES = ["", (4, 2), (1, 1), (3, 1, 1, 1)]


def finish_axes(ax: Any, title: str, xlabel: str, xlog: bool = False, ylog: bool = False) -> None:
    """Title, x label, log scales and the small legend shared by every panel."""
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:  # nothing labelled, no (empty) legend
        ax.legend(fontsize="x-small")


def legend_below(ax: Any, handles: list[Any] | None = None, ncol: int = 2) -> None:
    """The panel's legend under its x axis (it covers no data); ``handles`` default: the panel's own."""
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, fontsize="x-small")


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
            for i, h in enumerate(hues):
                part = rows if h is None else rows[rows[hue] == h]
                if part.empty:
                    continue
                curve = part.groupby("step", observed=True).value.mean()
                name = " ".join(str(x) for x in (h, label if len(metrics) > 1 else None) if x is not None)
                # each later hue is drawn thinner on top, so curves that coincide stay visible under it
                (line,) = ax.plot(curve.index, curve.values, color=palette[h], label=name or label,
                                  lw=max(2.8 - 0.8 * i, 0.9))
                line.set_dashes(DASHES[j % len(DASHES)])
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
    "NC3": ["nc3_orthogonal", "nc3_gram"],
}
#: Legend labels of metrics that a panel draws for some levels only (the level's name is prefixed):
#: ``nc3_gram`` is not the classifier's NC3 — it compares the Gram of the next layer's weights with the means'.
METRIC_LABELS: dict[str, str] = {
    "nc3_orthogonal": "W vs M (classifier)",
    "nc3_gram": "W_next Gram vs M Gram",
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
    ``nc3_orthogonal`` is drawn, for hidden levels ``nc3_gram``, each labelled by what it compares
    (:data:`METRIC_LABELS`). ``theory``: f* per label (dashed).
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
                lines[0].set_label(f"{lv}: {METRIC_LABELS[metric]}" if len(prefs) > 1 and metric in METRIC_LABELS
                                   else lv)
            ax.set_title(panel)
            ax.legend(fontsize="x-small")
        for ax in row:
            ax.set_yscale("log")
            ax.set_xlabel("GD step")
    if title:
        fig.suptitle(title)
    return fig


def threshold_panels(df: pd.DataFrame, x: str, xlabel: str, threshold_label: str, *,
                     norm_label: str = "mean ‖μ_k‖²", theory_label: str = "theory", split: bool = False,
                     figsize: tuple[float, float] = (7.6, 3.2), title: str | None = None) -> Figure:
    """A threshold sweep (a table with ``x`` and ``<key>_theory`` / ``<key>_gd`` columns, and optionally
    ``<key>_metastable``, for key ``mean_norm_sq`` and ``objective``): theory as a line (``split``: broken at
    the threshold x = 1, where a discontinuous theory jumps), a metastable branch dotted, GD as markers, the
    threshold dashed — one panel for ‖μ_k‖², one for f."""
    style()
    fig, axes = plt.subplots(1, 2, figsize=figsize, constrained_layout=True)
    for ax, (key, label) in zip(axes, [("mean_norm_sq", norm_label), ("objective", "objective f")], strict=True):
        sides = (df[x] <= 1, df[x] > 1) if split else (df[x] == df[x],)
        for i, side in enumerate(sides):
            ax.plot(df[x][side], df[f"{key}_theory"][side], color="C0", label=theory_label if i == 0 else None)
        if f"{key}_metastable" in df:
            ax.plot(df[x], df[f"{key}_metastable"], color="C2", ls=":", label="collapsed branch (local)")
        ax.plot(df[x], df[f"{key}_gd"], "o", color="C1", ms=5, mfc="none", label="GD")
        ax.axvline(1.0, color="0.4", ls="--", lw=1, label=threshold_label)
        finish_axes(ax, label, xlabel)
    if title:
        fig.suptitle(title)
    return fig


def _step_label(x: float, _pos: Any = None) -> str:
    """A GD-step tick: ``50k``, ``1.5M`` (long step counts written out run into each other)."""
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{unit}"
    return f"{x:g}"


def compact_step_ticks(fig: Figure) -> None:
    """Every linear x axis labelled "GD step" (or "step", "epoch") gets at most 6 ticks written as ``50k``."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    for ax in fig.axes:
        if ax.get_xscale() == "linear" and ax.get_xlabel().strip().lower() in ("gd step", "step", "steps"):
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
            ax.xaxis.set_major_formatter(FuncFormatter(_step_label))


def save(fig: Figure, name: str, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``name.pdf`` and ``name.png`` into ``folder`` atomically, with stable bytes.

    PDF metadata has no creation date; PNG metadata holds no timestamp either, so
    re-running an unchanged computation rewrites identical files. GD-step axes get compact ticks
    (:func:`compact_step_ticks`).
    """
    compact_step_ticks(fig)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, meta in (("pdf", {"CreationDate": None, "ModDate": None}), ("png", {"Software": None})):
        path = folder / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta)
        out.append(path)
    return out


def sweep_metric(table: pd.DataFrame, x: str, y: str, hue: str | None = None, logx: bool = False,
                 logy: bool = False, title: str | None = None) -> Figure:
    """A metric of a sweep (a column of :func:`ncutils.pipeline.sweep.collect`'s table, e.g. ``checks[objective].gd``)
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
    finish_axes(ax, title or f"{len(done)} runs, mean ± sd", x, xlog=logx, ylog=logy)
    if hue is not None:
        ax.legend(title=hue, fontsize="x-small", title_fontsize="x-small")
    return fig


#: Per-notebook figures that moved to their study in 0.2 (old name → (study, new name)).
_MOVED = {
    "threshold_sweep": ("ufm_mse", "threshold_sweep_figure"),
    "init_scales": ("_multilayer", "init_scales_figure"),
    "gram_cosines": ("relu_eufm", "gram_cosines_figure"),
    "dufm_threshold_sweep": ("relu_eufm", "dufm_threshold_sweep_figure"),
    "class_mean_spectra": ("deep_ufm", "class_mean_spectra_figure"),
    "rank_studies": ("deep_ufm", "rank_studies_figure"),
    "perturbation_flow": ("perturbation", "flow_figure"),
    "beta_sweep": ("perturbation", "beta_sweep_figure"),
    "jacobian_spectra": ("perturbation", "jacobian_spectra_figure"),
    "layerwise_chain": ("perturbation", "layerwise_chain_figure"),
    "ULPM_PANELS": ("layer_peeled", "ULPM_PANELS"),
    "ulpm_panels": ("layer_peeled", "ulpm_figure"),
    "training_panels": ("resnet", "training_figure"),
    "phase_panels": ("phase_diagrams", "phase_figure"),
}


def __getattr__(name: str) -> Any:
    """The old home of a per-notebook figure: still works for one release, with a ``DeprecationWarning``."""
    if name == "_finish":
        return finish_axes
    if name not in _MOVED:
        raise AttributeError(f"module 'ncutils.plot' has no attribute {name!r}")
    import importlib
    import warnings

    study, new = _MOVED[name]
    where = "ncutils.studies." + study
    warnings.warn(f"ncutils.plot.{name} moved to {where}.{new}; the old name goes in the next release",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(where), new)
