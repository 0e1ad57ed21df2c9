"""The notebook machinery: parameters and ``setup`` (:mod:`.params`), the papermill runner
(:mod:`.runner`), sweeps (:mod:`.sweep`) and the HTML gallery (:mod:`.site`).

It needs the ``notebooks`` extra (``pip install 'neural-collapse-utils[notebooks]'``; sweeps on SLURM
also ``[sweep]``). Nothing in the library core imports this package.
"""

from __future__ import annotations

import importlib.util

#: module → the extra that provides it
_NEEDS = {"papermill": "notebooks", "nbformat": "notebooks", "yaml": "notebooks", "pandas": "notebooks",
          "matplotlib": "notebooks", "seaborn": "notebooks"}


def require(*modules: str) -> None:
    """Raise ``ImportError`` naming the extra to install when one of ``modules`` is missing."""
    for mod in modules:
        if importlib.util.find_spec(mod) is None:
            extra = _NEEDS.get(mod, {"submitit": "sweep", "pyarrow": "sweep"}.get(mod, "notebooks"))
            raise ImportError(f"ncutils.pipeline needs {mod}, which is not installed: "
                              f"pip install 'neural-collapse-utils[{extra}]'")


require("papermill", "nbformat", "yaml", "pandas", "matplotlib", "seaborn")
