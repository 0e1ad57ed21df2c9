"""Sweeps: many parameter sets of one notebook from one YAML file, on a laptop or a SLURM cluster.

A sweep file::

    notebook: 01_ufm_mse          # stem, number or path
    profile: small                # optional: a profile of profiles/<notebook>.yaml as the base
    params: {steps: 2000}         # fixed parameters
    grid:                         # every combination (Cartesian product) ...
      lambda_W: [0.001, 0.005]
    zip:                          # ... of these lists taken together, element by element
      K: [3, 4]
      d: [10, 20]
    seeds: 3                      # an int (seeds 0..N-1) or a list; sets the notebook's ``seed``
    executor: local               # local | submitit-local | slurm
    workers: 2                    # local: parallel runs
    output: outputs/sweeps/demo   # default: outputs/sweeps/<file stem>
    slurm: {partition: gpu, time_min: 60, gpus_per_node: 1, cpus_per_task: 8, mem_gb: 32, array_parallelism: 16}

Every run is executed by :func:`ncutils.pipeline.runner.run_notebook` into ``<output>/runs/<key>/`` where ``key`` hashes
the notebook's code cells, the run's parameters and the ncutils version. A run folder holds ``params.json``,
``status.json`` (state ``running``/``done``/``failed``, error, wall time), the executed ``notebook.ipynb``,
the notebook's ``summary.json`` and ``figures/``. Finished runs are skipped, failed ones are reported (and
re-run with ``retry_failed`` or alone with ``only``), and an interrupted run (its ``status.json`` says running
but no process holds its lock) is run again, so a killed sweep resumes where it stopped.
:func:`collect` gathers one tidy table (parameters, every ``summary.json`` field, status, wall time).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..paths import atomic_path, resolve_path, write_json
from . import yamlio
from .params import check_requirements, validate
from .runner import declared_parameters, load_profile, notebook_path

__all__ = ["EXECUTORS", "SLURM_OPTIONS", "Sweep", "SweepRun", "collect", "load_sweep", "notebook_code_hash",
           "run_sweep", "sweep_status"]

EXECUTORS: tuple[str, ...] = ("local", "submitit-local", "slurm")
KEYS: tuple[str, ...] = ("notebook", "profile", "params", "grid", "zip", "seeds", "executor", "workers", "output",
                         "slurm")
#: ``slurm:`` keys of a sweep file → submitit's parameters (README, "Sweeps on SLURM").
SLURM_OPTIONS: dict[str, str] = {
    "partition": "slurm_partition", "time_min": "timeout_min", "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb", "array_parallelism": "slurm_array_parallelism",
    "account": "slurm_account", "qos": "slurm_qos", "constraint": "slurm_constraint",
    "setup": "slurm_setup", "additional_parameters": "slurm_additional_parameters",
}
STATES: tuple[str, ...] = ("done", "running", "failed", "pending")


def notebook_code_hash(path: Path) -> str:
    """SHA-256 of a notebook's cells (type and source; injected parameters excluded): what a run depends on
    besides its parameters and ncutils."""
    import nbformat

    h = hashlib.sha256()
    for cell in nbformat.read(path, as_version=4).cells:
        if "injected-parameters" not in cell.metadata.get("tags", []):
            h.update(cell.cell_type.encode() + b"\0" + cell.source.encode() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class SweepRun:
    """One parameter set of a sweep: ``params`` (swept and fixed, without the output folders) and its ``key``."""

    key: str
    params: dict[str, Any]
    swept: dict[str, Any]
    folder: Path

    @property
    def status_file(self) -> Path:
        return self.folder / "status.json"


@dataclass
class Sweep:
    """A validated sweep file (see the module docstring)."""

    source: Path
    notebook: Path
    runs: list[SweepRun]
    swept: list[str]
    executor: str = "local"
    workers: int = 1
    output: Path = field(default_factory=Path)
    slurm: dict[str, Any] = field(default_factory=dict)

    def run(self, key: str) -> SweepRun:
        for r in self.runs:
            if r.key == key or r.key.startswith(key):
                return r
        raise ValueError(f"no run {key!r} in sweep {self.source}; run keys: {[r.key for r in self.runs]}")


def _fail(source: Path | str, message: str) -> ValueError:
    return ValueError(f"sweep file {source}: {message}")


def _as_list(source: Path, where: str, name: str, values: Any) -> list[Any]:
    if not isinstance(values, list):
        raise _fail(source, f"{where}.{name} must be a list of values, got {values!r}")
    if not values:
        raise _fail(source, f"{where}.{name} is an empty list: the sweep would have no runs")
    return values


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Read and validate a sweep file: YAML syntax, keys, the notebook, every parameter name and value of
    every run (against the notebook's ``parameters`` cell and the notebook's study) — all before
    anything runs. Raises ``ValueError`` naming the problem."""
    source = Path(path)
    if not source.is_file():
        raise ValueError(f"sweep file {source} does not exist")
    try:
        spec = yamlio.load(source.read_text())
    except yaml.YAMLError as err:
        raise _fail(source, f"is not valid YAML: {err}") from None
    if not isinstance(spec, dict):
        raise _fail(source, f"must be a YAML mapping with keys {list(KEYS)}, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise _fail(source, f"unknown key(s) {unknown}; valid keys are {list(KEYS)}")
    if "notebook" not in spec:
        raise _fail(source, "names no notebook (key 'notebook')")
    try:
        nb = notebook_path(str(spec["notebook"]))
    except ValueError as err:
        raise _fail(source, str(err)) from None
    declared = declared_parameters(nb)
    for needed in ("results_dir", "figures_dir"):
        if needed not in declared:
            raise _fail(source, f"notebook {nb.stem} has no parameter {needed}: a sweep needs it to keep runs apart")
    base: dict[str, Any] = {}
    if spec.get("profile") is not None:
        try:
            base.update(load_profile(nb, str(spec["profile"])))
        except ValueError as err:
            raise _fail(source, str(err)) from None
        if "profile" in declared:
            base["profile"] = str(spec["profile"])
        for own in ("results_dir", "figures_dir"):  # a sweep chooses each run's folders itself
            base.pop(own, None)
    fixed = spec.get("params") or {}
    grid = spec.get("grid") or {}
    zipped = spec.get("zip") or {}
    for where, block in (("params", fixed), ("grid", grid), ("zip", zipped)):
        if not isinstance(block, dict):
            raise _fail(source, f"'{where}' must be a mapping of parameter names, got {block!r}")
        bad = sorted(set(block) - set(declared))
        if bad:
            raise _fail(source, f"unknown parameter(s) {bad} in '{where}' of notebook {nb.stem}; "
                        f"valid parameters are {sorted(declared)}")
        reserved = sorted(set(block) & {"results_dir", "figures_dir"})
        if reserved:
            raise _fail(source, f"'{where}' sets {reserved}: a sweep chooses each run's folders itself")
    grid_lists = {k: _as_list(source, "grid", k, v) for k, v in grid.items()}
    zip_lists = {k: _as_list(source, "zip", k, v) for k, v in zipped.items()}
    if len({len(v) for v in zip_lists.values()}) > 1:
        raise _fail(source, f"the lists under 'zip' must have equal lengths, got "
                    f"{ {k: len(v) for k, v in zip_lists.items()} }")
    seeds = spec.get("seeds")
    if seeds is not None:
        if "seed" not in declared:
            raise _fail(source, f"'seeds' is set but notebook {nb.stem} has no parameter seed")
        ok = (isinstance(seeds, int) and seeds >= 1) or (isinstance(seeds, list) and bool(seeds))
        if isinstance(seeds, bool) or not ok:
            raise _fail(source, f"seeds must be an integer >= 1 or a non-empty list of seeds, got {seeds!r}")
        seed_list = list(range(seeds)) if isinstance(seeds, int) else seeds
        if "seed" in grid_lists or "seed" in zip_lists:
            raise _fail(source, "seed is swept twice ('seeds' and under 'grid'/'zip')")
        grid_lists["seed"] = seed_list
    overlap = sorted(set(grid_lists) & set(zip_lists) | (set(grid_lists) | set(zip_lists)) & set(fixed))
    if overlap:
        raise _fail(source, f"parameter(s) {overlap} are set in more than one of 'params', 'grid', 'zip'")
    executor = spec.get("executor", "local")
    if executor not in EXECUTORS:
        raise _fail(source, f"executor must be one of {EXECUTORS}, got {executor!r}")
    workers = spec.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise _fail(source, f"workers must be an integer >= 1, got {workers!r}")
    slurm = spec.get("slurm") or {}
    bad = sorted(set(slurm) - set(SLURM_OPTIONS)) if isinstance(slurm, dict) else ["(not a mapping)"]
    if bad:
        raise _fail(source, f"unknown slurm option(s) {bad}; valid options are {sorted(SLURM_OPTIONS)}")
    output = resolve_path(spec.get("output") or f"outputs/sweeps/{source.stem}")

    code = notebook_code_hash(nb)
    from .. import __version__

    zip_rows = [dict(zip(zip_lists, vals, strict=True)) for vals in zip(*zip_lists.values(), strict=True)] or [{}]
    runs, seen = [], set()
    for combo in itertools.product(*grid_lists.values()):
        for zrow in zip_rows:
            swept = {**dict(zip(grid_lists, combo, strict=True)), **zrow}
            merged = {**base, **fixed, **swept}
            try:
                checked = validate(nb, {**declared, **merged})
                check_requirements(nb.stem, checked, machine=False)
            except ValueError as err:
                raise _fail(source, f"run {swept}: {err}") from None
            params = {k: checked[k] for k in merged}
            key = hashlib.sha256(json.dumps({"notebook": code, "params": params, "ncutils": __version__},
                                            sort_keys=True, default=str).encode()).hexdigest()[:16]
            if key in seen:
                raise _fail(source, f"run {swept} appears twice (every run must have distinct parameters)")
            seen.add(key)
            runs.append(SweepRun(key, params, swept, output / "runs" / key))
    return Sweep(source, nb, runs, [*grid_lists, *zip_lists], executor, workers, output, dict(slurm))


# --------------------------------------------------------------------------- #
# status of runs
# --------------------------------------------------------------------------- #
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _locked(folder: Path) -> bool:
    """True when a live process holds the run's lock (a run in progress, here or on a shared filesystem)."""
    lock = folder / ".lock"
    if not lock.exists():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def run_state(run: SweepRun) -> str:
    """``done``, ``failed``, ``running`` (a live process holds it) or ``pending`` (never run, or interrupted)."""
    status = _read_json(run.status_file) or {}
    state = status.get("state")
    if state in ("done", "failed"):
        return state
    return "running" if state == "running" and _locked(run.folder) else "pending"


def sweep_status(sweep: Sweep) -> dict[str, int]:
    """How many runs are done, running, failed and pending."""
    counts = Counter(run_state(r) for r in sweep.runs)
    return {s: counts.get(s, 0) for s in STATES}


@contextmanager
def _hold(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def execute_run(notebook: str, folder: str, params: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Run one sweep run (in a worker process, a submitit job or a SLURM array task); returns its status.

    The notebook writes ``summary.json`` and ``figures/`` into ``folder``; ``status.json`` is written
    atomically before (``running``) and after (``done``/``failed``, with the error and wall time).
    ``threads``: BLAS/OpenMP threads of the kernel (parallel runs must not oversubscribe the cores).
    """
    from .runner import run_notebook

    path = Path(folder)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    with _hold(path):
        started = time.time()
        base = {"state": "running", "host": socket.gethostname(), "pid": os.getpid(), "started": started}
        write_json(path / "status.json", base)
        write_json(path / "params.json", params)
        run_params = {**params, "results_dir": str(path), "figures_dir": str(path / "figures")}
        try:
            rec = run_notebook(notebook, params=run_params, output=path / "notebook.ipynb", raise_on_error=False)
            ok, error = rec.ok, rec.error
        except Exception as err:  # refused before start (e.g. a dataset missing on this machine)
            ok, error = False, f"could not start: {err}"
        status = {**base, "state": "done" if ok else "failed", "error": error,
                  "wall_time_s": time.time() - started, "finished": time.time()}
        write_json(path / "status.json", status)
    return status


# --------------------------------------------------------------------------- #
# executors
# --------------------------------------------------------------------------- #
def _report(sweep: Sweep, say: Callable[[str], None], prefix: str = "[sweep]") -> dict[str, int]:
    counts = sweep_status(sweep)
    say(f"{prefix} {len(sweep.runs)} runs: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    return counts


def _job_died(run: SweepRun, error: str) -> dict[str, Any]:
    """Record a run whose process died before it could write its own final status."""
    status = {**(_read_json(run.status_file) or {}), "state": "failed", "error": error, "wall_time_s": math.nan}
    write_json(run.status_file, status)
    return status


def _local(sweep: Sweep, todo: list[SweepRun], say: Callable[[str], None]) -> None:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    threads = max(1, (os.cpu_count() or 1) // sweep.workers)
    with ProcessPoolExecutor(max_workers=sweep.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(execute_run, str(sweep.notebook), str(r.folder), r.params, threads): r for r in todo}
        for fut in as_completed(futures):
            r = futures[fut]
            try:
                status = fut.result()
            except Exception as err:  # the worker process itself died (killed, out of memory)
                status = _job_died(r, f"worker process died: {type(err).__name__}: {err}")
            say(f"[sweep] {r.key} {status['state']} in {status['wall_time_s']:.1f} s {r.swept}"
                + (f": {status['error']}" if status.get("error") else ""))
            _report(sweep, say)


def _submitit(sweep: Sweep, todo: list[SweepRun], say: Callable[[str], None]) -> None:
    import submitit

    cluster = "local" if sweep.executor == "submitit-local" else "slurm"
    executor = submitit.AutoExecutor(folder=sweep.output / "submitit" / "%j", cluster=cluster)
    options = {SLURM_OPTIONS[k]: v for k, v in sweep.slurm.items()}
    if cluster == "local":  # slurm_* options do not apply to the local executor
        options = {k: v for k, v in options.items() if not k.startswith("slurm_")}
    executor.update_parameters(name=f"ncutils-{sweep.source.stem}", **options)
    threads = sweep.slurm.get("cpus_per_task")
    jobs = executor.map_array(execute_run, [str(sweep.notebook)] * len(todo), [str(r.folder) for r in todo],
                              [r.params for r in todo], [threads] * len(todo))
    say(f"[sweep] submitted {len(jobs)} {cluster} job(s): {jobs[0].job_id.split('_')[0] if jobs else '-'}")
    pending = dict(zip(jobs, todo, strict=True))
    while pending:
        time.sleep(1.0)
        for job in [j for j in pending if j.done()]:
            r = pending.pop(job)
            try:
                status = job.result()
            except Exception as err:  # the job itself died (time limit, node failure, preemption)
                status = _job_died(r, f"job {job.job_id} failed: {err}")
            error = f": {status['error']}" if status.get("error") else ""
            say(f"[sweep] {r.key} {status['state']} {r.swept}{error}")
            _report(sweep, say)


def run_sweep(sweep: Sweep | str | os.PathLike[str], *, retry_failed: bool = False, only: str | None = None,
              say: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run what is left of a sweep and return the aggregated table (also written as ``table.csv`` and
    ``table.parquet`` in the sweep's output folder).

    Skips finished runs and runs that another live process holds; re-runs interrupted runs; reports failed
    runs and re-runs them only with ``retry_failed``. ``only``: run this one key (or key prefix) alone,
    whatever its state.
    """
    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    sw.output.mkdir(parents=True, exist_ok=True)
    if only is not None:
        todo = [sw.run(only)]
        if run_state(todo[0]) == "running":
            raise ValueError(f"run {todo[0].key} is running in another process")
    else:
        states = {r.key: run_state(r) for r in sw.runs}
        todo = [r for r in sw.runs if states[r.key] == "pending" or (retry_failed and states[r.key] == "failed")]
        for r in sw.runs:
            if states[r.key] == "failed" and not retry_failed:
                err = (_read_json(r.status_file) or {}).get("error")
                say(f"[sweep] {r.key} failed earlier (re-run with --retry-failed or --only {r.key}): {err}")
    _report(sw, say)
    if todo:
        say(f"[sweep] running {len(todo)} run(s) with executor {sw.executor}"
            + (f", {sw.workers} worker(s)" if sw.executor == "local" else ""))
        (_local if sw.executor == "local" else _submitit)(sw, todo, say)
    counts = _report(sw, say, "[sweep] finished:")
    table = collect(sw)
    say(f"[sweep] table: {sw.output / 'table.csv'} ({len(table)} rows; {counts['failed']} failed)")
    unmet = checks_not_passed(table)
    if unmet:
        say(f"[sweep] {len(unmet)} finished run(s) did not pass their theory checks (summary 'passed' is False): "
            + ", ".join(unmet))
    return table


def checks_not_passed(table: pd.DataFrame) -> list[str]:
    """Keys of finished runs whose ``summary.json`` says their theory checks did not pass."""
    if "passed" not in table.columns:
        return []
    done = table[table["status"] == "done"]
    return [str(k) for k, ok in zip(done["key"], done["passed"], strict=True) if not pd.isna(ok) and not bool(ok)]


# --------------------------------------------------------------------------- #
# aggregation
# --------------------------------------------------------------------------- #
def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, list) and obj and all(isinstance(c, dict) and ("id" in c or "name" in c) for c in obj):
        for c in obj:  # the checks list: one column group per check id (its label may hold run-dependent numbers)
            key = c.get("id", c.get("name"))
            _flatten({k: v for k, v in c.items() if k not in ("id", "name")}, f"{prefix}[{key}]", out)
    elif isinstance(obj, list):
        out[prefix] = json.dumps(obj)
    else:
        out[prefix] = obj


def collect(sweep: Sweep) -> pd.DataFrame:
    """One tidy row per run: ``key``, ``status``, ``wall_time_s``, ``error``, every parameter (``param.<name>``
    for fixed ones, plain names for swept ones) and every ``summary.json`` field (nested keys joined with
    ``.``, checks as ``checks[<id>].<field>``). Written atomically to ``table.csv`` and ``table.parquet``."""
    rows = []
    for r in sweep.runs:
        status = _read_json(r.status_file) or {}
        row: dict[str, Any] = {"key": r.key, "status": run_state(r), "wall_time_s": status.get("wall_time_s"),
                               "error": status.get("error"), **r.swept}
        row.update({f"param.{k}": v for k, v in r.params.items() if k not in r.swept})
        summary = _read_json(r.folder / "summary.json")
        if summary is not None and row["status"] == "done":
            flat: dict[str, Any] = {}
            _flatten({k: v for k, v in summary.items() if k != "params"}, "", flat)
            row.update(flat)
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in table.columns:  # lists/dicts as JSON text: CSV and Parquet hold scalars
        if table[col].map(lambda v: isinstance(v, list | dict)).any():
            table[col] = table[col].map(lambda v: json.dumps(v) if isinstance(v, list | dict) else v)
    with atomic_path(sweep.output / "table.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(sweep.output / "table.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return table
