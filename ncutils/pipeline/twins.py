"""Readable notebook diffs: every ``notebooks/NN_*.ipynb`` has a jupytext percent-format twin
``notebooks/scripts/NN_*.py`` holding its code and markdown (no outputs), kept in sync by a test.

``python -m ncutils twins`` rewrites the twins from the notebooks; ``--check`` only reports the ones that
differ (exit 1). With jupytext's JupyterLab extension the pairing (``metadata.jupytext.formats``) keeps
them in sync while you edit.
"""

from __future__ import annotations

from pathlib import Path

from .runner import list_notebooks

__all__ = ["FORMATS", "stale_twins", "twin_path", "twin_text", "write_twins"]

#: jupytext pairing of every notebook with its twin in ``scripts/``
FORMATS = "ipynb,scripts//py:percent"


def twin_path(notebook: Path) -> Path:
    """``notebooks/scripts/<stem>.py`` for ``notebooks/<stem>.ipynb``."""
    return notebook.parent / "scripts" / f"{notebook.stem}.py"


def twin_text(notebook: Path) -> str:
    """The percent-format text of a notebook's cells (sources only; outputs and run metadata left out)."""
    import jupytext

    nb = jupytext.read(notebook)
    nb.metadata = {"jupytext": {"formats": FORMATS}, "kernelspec": nb.metadata.get("kernelspec", {})}
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags" and v}
    return jupytext.writes(nb, fmt="py:percent")


def stale_twins(notebooks: list[Path] | None = None) -> list[Path]:
    """Notebooks whose twin is missing or differs from their cells."""
    return [nb for nb in notebooks or list_notebooks()
            if not twin_path(nb).exists() or twin_path(nb).read_text() != twin_text(nb)]


def write_twins(notebooks: list[Path] | None = None) -> list[Path]:
    """Rewrite the stale twins; return the notebooks whose twin changed."""
    from ..paths import atomic_path

    changed = stale_twins(notebooks)
    for nb in changed:
        with atomic_path(twin_path(nb)) as tmp:
            tmp.write_text(twin_text(nb))
    return changed
