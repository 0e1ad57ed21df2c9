"""One figure style and one panel layout for every neural-collapse figure.

``style()`` sets seaborn's colour-blind palette; :func:`nc_panels` draws the
standard objective | NC1 | NC2 | NC3 row from a GD history; :func:`save` writes
PDF and PNG with fixed metadata so an unchanged figure gives unchanged bytes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["PANELS", "nc_panels", "save", "style", "threshold_sweep"]

#: Panels of the standard NC figure: title → (metric, label) pairs.
PANELS: dict[str, list[tuple[str, str]]] = {
    "objective": [("objective", "objective")],
    "NC1": [("nc1", "tr(Σ_W Σ_B†)/K")],
    "NC2": [("nc2_orthogonal", "orthogonal frame"), ("nc2_etf", "simplex ETF")],
    "NC3": [("nc3_orthogonal", "W vs M (orth.)"), ("nc3_etf", "W vs M̃ (ETF)")],
}
_DASHES = ["", (4, 2), (1, 1), (3, 1, 1, 1)]


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


def threshold_sweep(df: pd.DataFrame, title: str | None = None) -> Figure:
    """‖μ_k‖² and f against c: theory as lines, GD as markers (``df`` from
    :func:`ncutils.experiments.ufm_threshold_sweep`); the threshold c = 1 dashed."""
    style()
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.2), constrained_layout=True)
    for ax, (key, label) in zip(axes, [("mean_norm_sq", "mean ‖μ_k‖²"), ("objective", "objective f")], strict=True):
        ax.plot(df.c, df[f"{key}_theory"], color="C0", label="theory")
        ax.plot(df.c, df[f"{key}_gd"], "o", color="C1", ms=5, mfc="none", label="GD")
        ax.axvline(1.0, color="0.4", ls="--", lw=1, label="c = 1")
        ax.set_xlabel("c = K √(n λ_H λ_W)")
        ax.set_title(label)
        ax.legend(fontsize="x-small")
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
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}", suffix=f".{ext}")
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        out.append(path)
    return out
