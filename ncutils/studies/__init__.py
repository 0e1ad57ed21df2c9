"""One module per notebook: its parameter rules, theory requirements, steps, checks and figures.

``notebooks/NN_<slug>.ipynb`` ↔ ``ncutils/studies/<slug>.py``. A study module defines ``NOTEBOOK`` (the
notebook's stem), ``RULES`` (rules of the parameters that are its own; the shared vocabulary is
:data:`ncutils.studies._common.COMMON_RULES`), ``REQUIREMENTS`` and ``ASSUMPTIONS`` (the theorem's), and
the functions its notebook calls, one per step. Modules starting with ``_`` hold what several studies
share. Folders listed in ``$NCUTILS_STUDIES_PATH`` (``os.pathsep``-separated) are searched too, so a
study can live outside the package.
"""

from __future__ import annotations

import os
import pkgutil

__path__ = [*__path__, *[p for p in os.environ.get("NCUTILS_STUDIES_PATH", "").split(os.pathsep) if p]]


def available() -> list[str]:
    """The names of every study module (``ufm_mse``, …)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
