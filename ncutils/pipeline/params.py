"""Notebook parameters: declared once, in the notebook's ``parameters`` cell; validated by its study.

A notebook's ``parameters`` cell is the one place its parameters are written::

    K: int = 4  # number of classes, at least 2

— name, type, default and doc. :func:`notebook_schema` reads that cell (no kernel needed) and attaches
to each name the :class:`~ncutils._validate.Rule` that checks it: the study's own ``RULES``
(:mod:`ncutils.studies`), else the shared vocabulary :data:`~ncutils.studies._common.COMMON_RULES`.
:func:`validate` checks names, types and ranges, :func:`check_requirements` the theory's hard
requirements; both run before any kernel starts (runner, sweeps) and again in :func:`setup`, the first
call of every notebook (``run = nc.setup("01_ufm_mse", globals())``), so JupyterLab users get the same
errors as the command line.
"""

from __future__ import annotations

import ast
import importlib
import io
import os
import platform
import random
import sys
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .._validate import Rule
from ..device import resolve_device, resolve_dtype
from ..paths import repo_root, resolve_path, write_json

__all__ = ["Parameter", "Run", "check_requirements", "notebook_file", "notebook_schema", "parse_parameters", "setup",
           "study_for", "validate"]


@dataclass(frozen=True)
class Parameter:
    """One declared parameter: ``name: type = default  # doc`` in the notebook's parameters cell."""

    name: str
    type: str
    default: Any
    doc: str
    rule: Rule


def _stem(notebook: str | os.PathLike[str]) -> str:
    """The stem of a notebook given by stem, path or number (``"01"`` → ``01_ufm_mse`` of this checkout)."""
    stem = Path(str(notebook)).stem
    if stem.isdigit():
        found = sorted((repo_root() / "notebooks").glob(f"{stem}_*.ipynb"))
        if found:
            return found[0].stem
    return stem


def study_for(notebook: str | os.PathLike[str], required: bool = True) -> ModuleType | None:
    """The study module of a notebook: ``01_ufm_mse`` → :mod:`ncutils.studies.ufm_mse` (the stem without its
    number). Study modules outside the package are found through ``$NCUTILS_STUDIES_PATH`` (folders).
    A notebook without a study (``required=False``: e.g. a user's own notebook run by path) gives ``None``."""
    from .. import studies

    stem = _stem(notebook)
    slug = stem.split("_", 1)[1] if "_" in stem and stem[:2].isdigit() else stem
    try:
        module = importlib.import_module(f"ncutils.studies.{slug}")
    except ModuleNotFoundError as err:
        if err.name != f"ncutils.studies.{slug}":
            raise
        if not required:
            return None
        raise ValueError(f"notebook {stem} has no study module: expected ncutils/studies/{slug}.py (or {slug}.py in "
                         f"a folder of $NCUTILS_STUDIES_PATH); studies are {studies.available()}") from None
    if getattr(module, "NOTEBOOK", stem) != stem:
        raise ValueError(f"study ncutils.studies.{slug} belongs to notebook {module.NOTEBOOK}, not {stem}")
    return module


def notebook_file(notebook: str | os.PathLike[str]) -> Path | None:
    """``notebooks/<stem>.ipynb`` of this checkout (or ``notebook`` itself if it is a path), if it exists."""
    p = Path(notebook)
    if p.suffix == ".ipynb":
        return p if p.exists() else None
    cand = repo_root() / "notebooks" / f"{p.name}.ipynb"
    return cand if cand.exists() else None


def _comments(source: str) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def parse_parameters(source: str, where: str = "parameters cell") -> dict[str, tuple[str, Any, str]]:
    """``{name: (type, default, doc)}`` of a parameters cell: one ``name: type = literal  # doc`` per line."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError(f"{where}: not valid Python: {err}") from None
    comments = _comments(source)
    out: dict[str, tuple[str, Any, str]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            raise ValueError(f"{where}, line {node.lineno}: every statement must be `name: type = value  # doc`")
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            name = node.target.id
            raise ValueError(f"{where}, line {node.lineno}: the default of {name} must be a literal") from None
        out[node.target.id] = (ast.unparse(node.annotation), default, comments.get(node.lineno, ""))
    return out


def _parameters_source(path: Path) -> str:
    import json

    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    src = cells[0]["source"]
    return "".join(src) if isinstance(src, list) else src


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list}


@lru_cache(maxsize=64)
def _schema(stem: str, source: str, known: bool) -> dict[str, Parameter]:
    from ..studies._common import COMMON_RULES

    study = study_for(stem, required=known)
    rules = {**COMMON_RULES, **(study.RULES if study is not None else {})}
    out = {}
    for name, (kind, default, doc) in parse_parameters(source, f"{stem}: parameters cell").items():
        if kind not in _TYPES:
            raise ValueError(f"{stem}: parameter {name} must be annotated with one of {sorted(_TYPES)}, got {kind}")
        rule = rules.get(name)
        if rule is None and study is not None:
            raise ValueError(f"{stem}: parameter {name} has no rule: add it to RULES in {study.__name__}")
        out[name] = Parameter(name, kind, default, doc, rule or Rule(_TYPES[kind]))  # no study: its type only
    return out


def notebook_schema(notebook: str | os.PathLike[str], source: str | None = None) -> dict[str, Parameter]:
    """Every parameter the notebook declares, with its rule; ``source``: the parameters cell's text (default:
    read from the notebook file). A notebook of this checkout (``notebooks/``) must have a study; a notebook
    given by a path elsewhere may not, and then its parameters are checked by their annotated type only."""
    stem = Path(str(notebook)).stem
    path = notebook_file(notebook)
    known = path is not None and path.resolve().parent == (repo_root() / "notebooks").resolve()
    if source is None:
        if path is None:
            raise ValueError(f"notebook {stem} not found (looked for {repo_root() / 'notebooks' / (stem + '.ipynb')})")
        source = _parameters_source(path)
    return _schema(stem, source, known)


def validate(notebook: str | os.PathLike[str], params: Mapping[str, Any],
             schema: Mapping[str, Parameter] | None = None) -> dict[str, Any]:
    """Check names, types and ranges of ``params`` against the notebook's schema; return them validated.

    A name the notebook does not declare is refused, listing the valid names.
    """
    schema = notebook_schema(notebook) if schema is None else schema
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {Path(notebook).stem}; valid parameters are "
                         f"{sorted(schema)}")
    return {name: schema[name].rule.validate(name, value) for name, value in params.items()}


def resolve_data_root(params: dict[str, Any]) -> dict[str, Any]:
    """An empty ``data_root`` means ``$NCUTILS_DATA_ROOT`` (``make figures DATA_ROOT=…`` sets it), else ``data``:
    where the datasets lie is this machine's business, not a parameter of the experiment."""
    if params.get("data_root") == "":
        params = {**params, "data_root": os.environ.get("NCUTILS_DATA_ROOT") or "data"}
    return params


def check_requirements(notebook: str | os.PathLike[str], params: Mapping[str, Any], machine: bool = True) -> None:
    """Raise ``ValueError`` for the first requirement of the notebook's study that ``params`` break
    (requirements on parameters that are not given are skipped; ``machine=False`` skips those that depend on
    this machine: dataset files, the device)."""
    from ..studies._common import COMMON_REQUIREMENTS

    study = study_for(notebook, required=False)
    for req in [*(study.REQUIREMENTS if study is not None else []), *COMMON_REQUIREMENTS]:
        if req.machine and not machine:
            continue
        if not all(name in params for name in req.names):
            continue
        if not req.holds(params):
            message = req.message(params) if callable(req.message) else req.message
            raise ValueError(f"{message}; got {({name: params[name] for name in req.names})}")


#: parameters that say where a run reads and writes or what it runs on, not what it computes
MACHINE_PARAMETERS = ("device", "data_root", "results_dir", "figures_dir", "profile")


def load_profiles(notebook: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``profiles/<stem>.yaml`` of this checkout as ``{profile: overrides}`` (empty without the file)."""
    from . import yamlio

    path = repo_root() / "profiles" / f"{_stem(notebook)}.yaml"
    if not path.is_file():
        return {}
    return {str(k): dict(v or {}) for k, v in (yamlio.load_file(path) or {}).items()}


def run_name(notebook: str | os.PathLike[str], params: Mapping[str, Any],
             schema: Mapping[str, Parameter] | None = None) -> str:
    """The name of a parameter set: its profile's name when ``params`` are exactly that profile of
    ``profiles/<stem>.yaml`` (machine parameters — device, data root, folders — aside), else
    ``custom-<hash of the parameters>``, so that no other parameter set can write over a profile's results."""
    import hashlib
    import json

    schema = notebook_schema(notebook) if schema is None else schema
    defaults = {name: p.default for name, p in schema.items()}
    science = {k: v for k, v in params.items() if k not in MACHINE_PARAMETERS}
    profile = params.get("profile")
    overrides = load_profiles(notebook).get(str(profile)) if profile is not None else None
    if overrides is not None:
        expected = {**defaults, **overrides}
        if all(expected.get(k) == v for k, v in science.items()):
            return str(profile)
    key = json.dumps({k: science[k] for k in sorted(science)}, sort_keys=True, default=str)
    return "custom-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def injected_names(namespace: Mapping[str, Any]) -> list[str]:
    """Names assigned by papermill's injected-parameters cell in a kernel's input history (``In``), if any."""
    for source in reversed(list(namespace.get("In", []) or [])):
        if isinstance(source, str) and source.lstrip().startswith("# Parameters"):
            try:
                tree = ast.parse(source)
            except SyntaxError:
                return []
            return [t.id for node in tree.body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)]
    return []


@dataclass
class Run:
    """What a notebook needs after :func:`setup`: validated parameters, device, folders."""

    notebook: str
    params: dict[str, Any]
    name: str  # the profile's name, or custom-<hash> for any other parameter set
    device: torch.device
    dtype: torch.dtype
    results_dir: Path
    figures_dir: Path
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    def summary(self, checks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """The run's ``summary.json`` content (:func:`ncutils.report.summary`) with its parameters and name."""
        from ..report import summary

        return summary(self.params, checks, run=self.name, **extra)

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON into the results folder, atomically."""
        return write_json(self.results_dir / name, obj, default=float)

    def environment(self) -> dict[str, str]:
        """Versions of python, torch, ncutils, the device and the hardware the run used (for the closing cell): the
        CPU model, its logical cores and torch's intra-op threads, and on CUDA the GPU's name."""
        from .. import __version__

        dev = str(self.device)
        if self.device.type == "cuda":
            dev += f" ({torch.cuda.get_device_name(self.device)})"
        return {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "ncutils": __version__, "device": dev, "cpu": cpu_model(),
                "cores": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads())}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`), or ``"unknown"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def setup(notebook: str, namespace: Mapping[str, Any] | None = None, /, **params: Any) -> Run:
    """Validate every parameter, seed all generators, pick the device, create the folders.

    In a notebook: ``run = nc.setup("01_ufm_mse", globals())`` takes every parameter the notebook declares
    from its namespace (no name is typed twice). From code: ``nc.setup("01_ufm_mse", K=5)``; undeclared
    names are refused, the others keep their defaults. Raises ``TypeError``/``ValueError`` naming the
    parameter and its valid range. Prints a note (kept in ``Run.notes``) for each theorem assumption the
    parameters break. ``results_dir`` defaults to ``outputs/<notebook>/<profile>`` under the repository
    root; relative folders are resolved against the repository root, never the cwd.
    """
    stem = Path(str(notebook)).stem
    if namespace is not None and params:
        raise TypeError("setup takes either the notebook's namespace (globals()) or keyword parameters, not both")
    schema = notebook_schema(stem) if notebook_file(stem) is not None or namespace is None else None
    if schema is None:  # a notebook outside a checkout: its annotations are its declarations
        annotations = dict(namespace.get("__annotations__", {}))  # type: ignore[union-attr]
        src = "\n".join(f"{k}: {getattr(v, '__name__', v)} = {namespace[k]!r}"  # type: ignore[index]
                        for k, v in annotations.items())
        schema = notebook_schema(stem, src)
    if namespace is not None:
        unknown = sorted(set(injected_names(namespace)) - set(schema))
        if unknown:  # papermill only warns about names the notebook does not declare; they would be ignored
            raise ValueError(f"unknown parameter(s) {unknown} for {stem} were injected; valid parameters are "
                             f"{sorted(schema)}")
        missing = [name for name in schema if name not in namespace]
        if missing:
            raise ValueError(f"parameters {missing} of {stem} are not defined: run the parameters cell first")
        given = {name: namespace[name] for name in schema}
    else:
        given = {**{name: p.default for name, p in schema.items()}, **params}
    p = resolve_data_root(validate(stem, given, schema))
    check_requirements(stem, p)
    seed = p.get("seed", 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = resolve_device(p.get("device", "auto"))
    dtype = resolve_dtype(p.get("dtype", "float64"))
    name = run_name(stem, p, schema)
    results = p.get("results_dir") or f"outputs/{stem}/{name}"
    figures = p.get("figures_dir", "figures")
    default_figures = schema["figures_dir"].default if "figures_dir" in schema else "figures"
    if name.startswith("custom-") and figures == default_figures:
        figures = f"outputs/{stem}/{name}/figures"  # only the profiles' runs write the repository's figures/
    run = Run(stem, p, name, device, dtype, resolve_path(results), resolve_path(figures))
    run.results_dir.mkdir(parents=True, exist_ok=True)
    run.figures_dir.mkdir(parents=True, exist_ok=True)
    study = study_for(stem, required=False)
    for assumption in study.ASSUMPTIONS if study is not None else []:
        try:
            broken = not assumption.holds(p)
        except KeyError:  # the assumption involves a parameter this call does not set
            broken = False
        if broken:
            run.notes.append(assumption.message)
            print("NOTE:", assumption.message)
    _relay_cells()
    return run


def cell_label(source: str) -> str:
    """What a code cell is about, for progress lines: its first comment (``# …``, not a ``NBVAL`` marker), else
    its first line of code."""
    lines = [ln.strip() for ln in source.splitlines() if ln.strip()]
    comments = [ln.lstrip("#").strip() for ln in lines if ln.startswith("#") and "NBVAL" not in ln]
    text = next((c for c in comments if c), None) or next((ln for ln in lines if not ln.startswith("#")), "")
    return text[:80]


def _relay_cells() -> None:
    """Under the runner on a terminal (``$NCUTILS_PROGRESS_FILE``), tell it which cell runs: an IPython
    ``pre_run_cell`` hook relays :func:`cell_label` (registered once per kernel)."""
    from ..device import _CURRENT_CELL, PROGRESS_FILE_ENV, relay_status

    if not os.environ.get(PROGRESS_FILE_ENV):
        return
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is None or getattr(shell, "_ncutils_cell_relay", False):
        return

    def announce(info: Any) -> None:
        _CURRENT_CELL[0] = cell_label(getattr(info, "raw_cell", "") or "")
        relay_status(f"[{_CURRENT_CELL[0]}]")

    shell.events.register("pre_run_cell", announce)
    shell._ncutils_cell_relay = True
