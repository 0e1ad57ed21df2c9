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
the notebook's code cells, the run's parameters, every ncutils source file and the lock file (what ``make figures``
hashes: a fix to ncutils invalidates earlier results). A run folder holds ``params.json``,
``status.json`` (state ``submitted``/``running``/``done``/``failed``, error, wall time, SLURM job id, a heartbeat
of the running task), the executed ``notebook.ipynb``,
the notebook's ``summary.json`` and ``figures/``. Finished runs are skipped, failed ones are reported (and
re-run with ``retry_failed`` or alone with ``only``), and an interrupted run (its ``status.json`` says running
but no process holds its lock) is run again, so a killed sweep resumes where it stopped.
:func:`collect` gathers one tidy table (parameters, every ``summary.json`` field, status, wall time).
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..paths import atomic_path, repo_root, resolve_path, write_json
from . import yamlio
from .params import check_requirements, validate
from .runner import declared_parameters, load_profile, notebook_path

__all__ = ["EXECUTORS", "SLURM_OPTIONS", "Sweep", "SweepRun", "collect", "load_sweep", "notebook_code_hash",
           "preflight", "run_sweep", "source_files", "sweep_status", "sweep_table"]

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
#: seconds between two heartbeats of a running task in its ``status.json`` (``NCUTILS_SWEEP_HEARTBEAT_S``)
HEARTBEAT_S = float(os.environ.get("NCUTILS_SWEEP_HEARTBEAT_S", "30"))
#: seconds between two polls of the SLURM queue while a sweep waits (``NCUTILS_SWEEP_POLL_S``)
POLL_S = float(os.environ.get("NCUTILS_SWEEP_POLL_S", "5"))
#: submitit's default: USR2 90 s before the time limit, after which a run that cannot checkpoint is stopped
SUBMITIT_SIGNAL_S = 90
#: SLURM job states in which a task is still queued or alive
ALIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
         "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD")
#: a file system with less free space than this refuses new runs (:func:`preflight`)
MIN_FREE_BYTES = 16 * 2**20


def notebook_code_hash(path: Path) -> str:
    """SHA-256 of a notebook's cells (type and source; injected parameters excluded): what a run depends on
    besides its parameters and ncutils."""
    import nbformat

    h = hashlib.sha256()
    for cell in nbformat.read(path, as_version=4).cells:
        if "injected-parameters" not in cell.metadata.get("tags", []):
            h.update(cell.cell_type.encode() + b"\0" + cell.source.encode() + b"\0")
    return h.hexdigest()


def source_files() -> list[Path]:
    """Every ``ncutils`` source file and the dependency lock file: what a run depends on besides its notebook and
    parameters (a superset of what :func:`ncutils.pipeline.runner.source_hash` hashes for ``make figures``, which
    leaves out other notebooks' study modules)."""
    root = repo_root()
    files = sorted((root / "ncutils").rglob("*.py"))
    if not files:  # an installed (non-editable) ncutils: hash the package itself
        files = sorted(Path(__file__).resolve().parents[1].rglob("*.py"))
    lock = root / "requirements.lock"
    return [*files, lock] if lock.exists() else files


def sources_hash() -> str:
    """SHA-256 of :func:`source_files` (relative names and contents)."""
    h = hashlib.sha256()
    root = repo_root()
    for src in source_files():
        name = src.relative_to(root).as_posix() if src.is_relative_to(root) else src.name
        h.update(name.encode() + b"\0" + src.read_bytes() + b"\0")
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
    profile: str | None = None

    def run(self, key: str) -> SweepRun:
        """The run with this key or key prefix (an ambiguous prefix lists its matches and is refused)."""
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"parameter only must be a run key or key prefix (non-empty), got {key!r}")
        exact = [r for r in self.runs if r.key == key]
        matches = exact or [r for r in self.runs if r.key.startswith(key)]
        if len(matches) > 1:
            listed = ", ".join(f"{r.key} {r.swept}" for r in matches)
            raise ValueError(f"parameter only = {key!r} is ambiguous: {len(matches)} runs of sweep {self.source} "
                             f"start with it ({listed}); give more of the key")
        if not matches:
            raise ValueError(f"no run {key!r} in sweep {self.source}; run keys: {[r.key for r in self.runs]}")
        return matches[0]

    @property
    def label(self) -> str:
        """How messages name this sweep: its file, notebook and profile."""
        return f"{self.source.name} ({self.notebook.stem}, profile {self.profile})"


def _fail(source: Path | str, message: str) -> ValueError:
    return ValueError(f"sweep file {source}: {message}")


def _as_list(source: Path, where: str, name: str, values: Any) -> list[Any]:
    if not isinstance(values, list):
        raise _fail(source, f"{where}.{name} must be a list of values, got {values!r}")
    if not values:
        raise _fail(source, f"{where}.{name} is an empty list: the sweep would have no runs")
    return values


def _is_cuda(value: Any) -> bool:
    return isinstance(value, str) and (value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()))


def load_sweep(path: str | os.PathLike[str], executor: str | None = None) -> Sweep:
    """Read and validate a sweep file: YAML syntax, keys, the notebook, every parameter name and value of
    every run (against the notebook's ``parameters`` cell and the notebook's study) — all before
    anything runs. Raises ``ValueError`` naming the problem. ``executor`` overrides the file's.

    With ``executor: slurm`` a ``device: cuda`` run is not checked against this (login) machine's CUDA:
    :func:`preflight` checks it against the compute nodes' GPUs (``sinfo``) instead."""
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
    executor = executor if executor is not None else spec.get("executor", "local")
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
    sources = sources_hash()
    from .. import __version__

    zip_rows = [dict(zip(zip_lists, vals, strict=True)) for vals in zip(*zip_lists.values(), strict=True)] or [{}]
    runs, seen = [], set()
    for combo in itertools.product(*grid_lists.values()):
        for zrow in zip_rows:
            swept = {**dict(zip(grid_lists, combo, strict=True)), **zrow}
            merged = {**base, **fixed, **swept}
            remote_cuda = executor == "slurm" and _is_cuda(merged.get("device"))
            try:  # a compute node's CUDA is checked by preflight (sinfo), not this machine's
                checked = validate(nb, {**declared, **merged, **({"device": "cpu"} if remote_cuda else {})})
                check_requirements(nb.stem, checked, machine=False)
            except ValueError as err:
                raise _fail(source, f"run {swept}: {err}") from None
            if remote_cuda:
                checked["device"] = merged["device"]
            params = {k: checked[k] for k in merged}
            content = {"notebook": code, "params": params, "ncutils": __version__, "sources": sources}
            key = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]
            if key in seen:
                raise _fail(source, f"run {swept} appears twice (every run must have distinct parameters)")
            seen.add(key)
            runs.append(SweepRun(key, params, swept, output / "runs" / key))
    if "time_min" in slurm:
        t = slurm["time_min"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not t >= 1:
            raise _fail(source, f"parameter slurm.time_min must be a number of minutes >= 1, got {t!r}")
    profile = None if spec.get("profile") is None else str(spec["profile"])
    return Sweep(source, nb, runs, [*grid_lists, *zip_lists], executor, workers, output, dict(slurm), profile)


# --------------------------------------------------------------------------- #
# status of runs
# --------------------------------------------------------------------------- #
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _locked(folder: Path) -> bool:
    """True when a live process holds the run's lock (a run in progress, here or on a shared filesystem).
    Opens the lock file read-only and creates nothing: works on a read-only copy of a sweep."""
    try:
        fh = open(folder / ".lock", "rb")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _slurm(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str] | None:
    """A SLURM client command (``None`` when it is missing or does not answer in time: clients block while the
    controller is down)."""
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_queue() -> dict[str, str] | None:
    """``job id → state`` of this user's queued and running SLURM jobs, one entry per array task (``123_4``);
    ``None`` when ``squeue`` cannot answer."""
    res = _slurm("squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T")
    if res is None or res.returncode != 0:
        return None
    return dict(line.split("|", 1) for line in res.stdout.split() if "|" in line)


def _slurm_end(job_id: str) -> str:
    """How a SLURM job ended, from ``sacct`` or (without accounting) ``scontrol show job``."""
    res = _slurm("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,Reason", timeout=20)
    if res is not None and res.returncode == 0 and res.stdout.strip():
        state, code, reason = ([*res.stdout.strip().splitlines()[0].split("|"), "", ""])[:3]
        return f"sacct: state {state}, exit code {code}" + (f", reason {reason}" if reason not in ("", "None") else "")
    res = _slurm("scontrol", "show", "job", job_id, timeout=20)
    if res is not None and res.returncode == 0:
        found = {k: re.search(rf"\b{k}=(\S+)", res.stdout) for k in ("JobState", "Reason", "ExitCode")}
        if found["JobState"]:
            vals = {k: m.group(1) if m else "?" for k, m in found.items()}
            return (f"scontrol: state {vals['JobState']}, exit code {vals['ExitCode']}"
                    + (f", reason {vals['Reason']}" if vals["Reason"] not in ("None", "?") else ""))
    return "neither sacct nor scontrol knows it any more"


def _log_of(run_folder: Path, job_id: str) -> Path:
    array, _, task = job_id.partition("_")
    return run_folder.parent.parent / "submitit" / job_id / f"{array}_{task or 0}_0_log.err"


def _verdict(run: SweepRun, queue: dict[str, str] | None, status: dict[str, Any] | None = None
             ) -> tuple[str, str | None]:
    """``(state, reason)`` of a run; ``reason`` is set when a SLURM task ended (or stopped beating) without writing
    its final status: the run is ``failed`` for that reason."""
    status = (_read_json(run.status_file) or {}) if status is None else status
    state = status.get("state")
    if state in ("done", "failed"):
        return state, None
    if state not in ("running", "submitted"):
        return "pending", None
    if _locked(run.folder):
        return "running", None
    job = status.get("job_id")
    if not job:  # a local run nobody holds (interrupted) or a submission that never got its job id
        return "pending", None
    if queue is None:  # squeue does not answer: trust a task whose heartbeat is fresh, and a queued one
        if state == "submitted":
            return "running", None
        beat = float(status.get("heartbeat") or status.get("started") or 0)
        if time.time() - beat < 4 * HEARTBEAT_S:
            return "running", None
        return "failed", (f"SLURM job {job} stopped beating ({time.time() - beat:.0f} s since its last heartbeat) "
                          f"and squeue does not answer; log: {_log_of(run.folder, job)}")
    if job in queue:
        return "running", None
    again = _read_json(run.status_file) or {}  # it may have finished between the two reads
    if again.get("state") in ("done", "failed"):
        return again["state"], None
    where = "while queued" if again.get("state") == "submitted" else "while running"
    return "failed", (f"SLURM job {job} ended {where} without writing its result ({_slurm_end(job)}); "
                      f"log: {_log_of(run.folder, job)}")


def _queue_if_needed(runs: list[SweepRun]) -> dict[str, str] | None:
    statuses = [_read_json(r.status_file) or {} for r in runs]
    needs = any(s.get("job_id") and s.get("state") in ("running", "submitted") for s in statuses)
    return slurm_queue() if needs else {}


def sweep_states(sweep: Sweep) -> dict[str, tuple[str, str | None]]:
    """``key → (state, reason)`` of every run, with one ``squeue`` call for all of them (read-only)."""
    queue = _queue_if_needed(sweep.runs)
    return {r.key: _verdict(r, queue) for r in sweep.runs}


def run_state(run: SweepRun) -> str:
    """``done``, ``failed`` (also: its SLURM task ended without a result), ``running`` (a live process holds it
    or its SLURM task is queued or running) or ``pending`` (never run, or interrupted)."""
    return _verdict(run, _queue_if_needed([run]))[0]


def sweep_status(sweep: Sweep) -> dict[str, int]:
    """How many runs are done, running, failed and pending."""
    counts = Counter(state for state, _ in sweep_states(sweep).values())
    return {s: counts.get(s, 0) for s in STATES}


@contextmanager
def _hold(folder: Path, wait_s: float = 2.0) -> Iterator[bool]:
    """Take the run's lock; yields False when another process still holds it after ``wait_s`` seconds (a
    status probe holds it for microseconds; a run holds it while it runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        deadline = time.time() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _own_job_id() -> str | None:
    """This SLURM task's job id as submitit names it (``123_4`` in an array)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _skip_reason(current: dict[str, Any], token: str | None, rerun: bool) -> str | None:
    """Why a run must not start now that its lock is taken (``None``: start it)."""
    state = current.get("state")
    if token is not None:  # a SLURM task: only the submission recorded in status.json runs it
        if current.get("token") != token:
            return (f"it was submitted again since (status.json names job {current.get('job_id')}, "
                    f"state {state})" if state in ("submitted", "running") else f"it is already {state}")
        return None if state in ("submitted", "running") else f"it is already {state}"
    if state in ("done", "failed") and not rerun:
        return f"it is already {state} (another sweep process ran it)"
    return None


def execute_run(notebook: str, folder: str, params: dict[str, Any], threads: int | None = None,
                profile: str | None = None, token: str | None = None, rerun: bool = False) -> dict[str, Any]:
    """Run one sweep run (in a worker process, a submitit job or a SLURM array task); returns its status.

    The notebook writes ``summary.json`` and ``figures/`` into ``folder``; ``status.json`` is written
    atomically before (``running``, then a ``heartbeat`` time every :data:`HEARTBEAT_S` seconds) and after
    (``done``/``failed``, with the error and wall time). After taking the run's lock, a run that another process
    holds, already finished (unless ``rerun``) or was submitted again since (``token``: the submission it belongs
    to) is skipped: the returned status then has ``skipped`` (why). ``threads``: BLAS/OpenMP threads of the kernel
    (parallel runs must not oversubscribe the cores). ``profile``: the sweep's base profile (named in messages).
    """
    from .runner import run_notebook

    path = Path(folder)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    with _hold(path) as got:
        if not got:
            return {**(_read_json(path / "status.json") or {}), "skipped": "another process holds its lock"}
        current = _read_json(path / "status.json") or {}
        skip = _skip_reason(current, token, rerun)
        if skip:
            return {**current, "skipped": skip}
        started = time.time()
        base = {"state": "running", "host": socket.gethostname(), "pid": os.getpid(), "started": started,
                "heartbeat": started, "profile": profile}
        job = _own_job_id()
        if job:
            base.update(job_id=job, array_job_id=job.split("_")[0], token=token)
        write_json(path / "status.json", base)
        write_json(path / "params.json", params)
        stop = threading.Event()
        terminated: list[int] = []
        if job and threading.current_thread() is threading.main_thread():  # scancel, preemption: SIGTERM first
            signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                write_json(path / "status.json", {**base, "heartbeat": time.time()})

        beater = threading.Thread(target=beat, name="ncutils-heartbeat", daemon=True)
        beater.start()
        run_params = {**params, "results_dir": str(path), "figures_dir": str(path / "figures")}
        try:
            rec = run_notebook(notebook, profile=profile, params=run_params, output=path / "notebook.ipynb",
                               raise_on_error=False)
            ok, error = rec.ok, rec.error
        except Exception as err:  # refused before start (e.g. a dataset missing on this machine)
            ok, error = False, f"could not start (profile {profile}): {err}"
        finally:
            stop.set()
            beater.join()
        if terminated and not ok:
            error = f"SLURM sent SIGTERM to job {job} (scancel, preemption or node shutdown): {error}"
        status = {**base, "state": "done" if ok else "failed", "error": error,
                  "wall_time_s": time.time() - started, "finished": time.time()}
        write_json(path / "status.json", status)
    return status


# --------------------------------------------------------------------------- #
# checks before anything runs
# --------------------------------------------------------------------------- #
def signal_margin_s(time_min: float | None) -> int:
    """Seconds before the time limit at which submitit's USR2 stops a run that cannot checkpoint: submitit's 90 s
    for limits of 15 minutes and more, 10 % of the limit (at least 5 s) below — so ``time_min: 1`` leaves a run 54 s,
    not none (submitit's default margin of 90 s is longer than the whole limit)."""
    if time_min is None:
        return SUBMITIT_SIGNAL_S
    return int(min(SUBMITIT_SIGNAL_S, max(5, time_min * 60 * 0.1)))


def _writable_problem(folder: Path, what: str) -> str | None:
    """Why ``folder`` cannot hold sweep results (``None`` when it can): created if missing, then written to."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{what} {folder} cannot be a folder: {probe} is a file"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ncutils-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        return f"{what} {folder} is not writable: {err.strerror or err}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{what} {folder} is read-only"
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        return f"{what} {folder} is on a full file system ({free / 2**20:.1f} MiB free)"
    return None


def _gpu_counts(gres: str) -> list[int]:
    return [int(n) for n in re.findall(r"gpu(?::[^:,(\s]+)?:(\d+)", gres)]


def _slurm_problems(sweep: Sweep) -> list[str]:
    problems = []
    opts = sweep.slurm
    cuda = sorted({str(r.params["device"]) for r in sweep.runs if _is_cuda(r.params.get("device"))})
    extra = opts.get("additional_parameters") or {}
    gpus = opts.get("gpus_per_node")
    asks_gpus = bool(gpus) or any(k in extra for k in ("gres", "gpus", "gpus_per_task", "gpus_per_node"))
    if cuda and not asks_gpus:
        problems.append(f"runs set device {cuda[0]!r} but slurm.gpus_per_node is not set: their SLURM tasks would "
                        "get no GPU (set slurm.gpus_per_node: 1)")
    if gpus:
        part = opts.get("partition")
        res = _slurm("sinfo", "-h", "-o", "%P|%G", *(["-p", str(part)] if part else []), timeout=20)
        if res is None or res.returncode != 0:
            why = "no answer" if res is None else (res.stderr.strip() or f"exit {res.returncode}")
            problems.append(f"slurm.gpus_per_node = {gpus} but sinfo cannot list the compute nodes' GPUs ({why}); "
                            "is this a SLURM login node (SLURM_CONF)?")
        else:
            rows = [line.split("|", 1) for line in res.stdout.split() if "|" in line]
            if not part:  # the default partition is marked with a *
                rows = [row for row in rows if row[0].endswith("*")] or rows
            have = max((n for _, gres in rows for n in _gpu_counts(gres)), default=0)
            if have < int(gpus):
                where = f"partition {part}" if part else "the default partition"
                seen = sorted({gres for _, gres in rows}) or ["no nodes"]
                problems.append(f"parameter slurm.gpus_per_node must be at most the GPUs of a node of {where} "
                                f"(sinfo gres: {', '.join(seen)}), got {gpus}")
    return problems


def preflight(sweep: Sweep, runs: list[SweepRun] | None = None) -> None:
    """Everything that would stop runs, checked before any runs: the output folder and the run folders
    (a file, read-only, unwritable, full), and for ``executor: slurm`` the GPUs of the compute nodes. Raises one
    ``ValueError`` with one line per problem."""
    problems = [p for p in (_writable_problem(sweep.output, "output folder"),) if p]
    if not problems:
        problems += [p for p in [_writable_problem(sweep.output / "runs", "runs folder")] if p]
    for r in sweep.runs if runs is None else runs:
        if r.folder.exists() and not r.folder.is_dir():
            problems.append(f"run folder {r.folder} is a file")
        elif r.folder.is_dir() and not problems:
            p = _writable_problem(r.folder, "run folder")
            if p:
                problems.append(p)
    if sweep.executor == "slurm":
        problems += _slurm_problems(sweep)
    if problems:
        raise ValueError("\n".join(f"sweep {sweep.label}: {p}" for p in problems))


# --------------------------------------------------------------------------- #
# executors
# --------------------------------------------------------------------------- #
def _report(sweep: Sweep, say: Callable[[str], None], prefix: str = "[sweep]") -> dict[str, int]:
    counts = sweep_status(sweep)
    say(f"{prefix} {len(sweep.runs)} runs: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    return counts


def _job_died(run: SweepRun, error: str) -> dict[str, Any]:
    """Record a run whose process died before it could write its own final status."""
    status = {**(_read_json(run.status_file) or {}), "state": "failed", "error": error, "wall_time_s": math.nan,
              "finished": time.time()}
    write_json(run.status_file, status)
    return status


def _line(sweep: Sweep, r: SweepRun, status: dict[str, Any]) -> str:
    if status.get("skipped"):
        return f"[sweep] {r.key} skipped: {status['skipped']} {r.swept}"
    wall = status.get("wall_time_s")
    took = f" in {wall:.1f} s" if isinstance(wall, int | float) and not math.isnan(wall) else ""
    return (f"[sweep] {r.key} {status.get('state')}{took} {r.swept}"
            + (f": {status['error']}" if status.get("error") else ""))


def _local(sweep: Sweep, todo: list[SweepRun], say: Callable[[str], None], rerun: set[str]) -> None:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    threads = max(1, (os.cpu_count() or 1) // sweep.workers)
    with ProcessPoolExecutor(max_workers=sweep.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(execute_run, str(sweep.notebook), str(r.folder), r.params, threads, sweep.profile,
                               None, r.key in rerun): r for r in todo}
        for fut in as_completed(futures):
            r = futures[fut]
            try:
                status = fut.result()
            except Exception as err:  # the worker process itself died (killed, out of memory)
                status = _job_died(r, f"worker process died: {type(err).__name__}: {err}")
            say(_line(sweep, r, status))
            _report(sweep, say)


def _submitit_local(sweep: Sweep, todo: list[SweepRun], say: Callable[[str], None], rerun: set[str]) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=sweep.output / "submitit" / "%j", cluster="local")
    options = {SLURM_OPTIONS[k]: v for k, v in sweep.slurm.items()}
    options = {k: v for k, v in options.items() if not k.startswith("slurm_")}  # they do not apply here
    executor.update_parameters(name=f"ncutils-{sweep.source.stem}", **options)
    n = len(todo)
    jobs = executor.map_array(execute_run, [str(sweep.notebook)] * n, [str(r.folder) for r in todo],
                              [r.params for r in todo], [sweep.slurm.get("cpus_per_task")] * n, [sweep.profile] * n,
                              [None] * n, [r.key in rerun for r in todo])
    say(f"[sweep] submitted {len(jobs)} local job(s)")
    pending = dict(zip(jobs, todo, strict=True))
    while pending:
        time.sleep(1.0)
        for job in [j for j in pending if j.done()]:
            r = pending.pop(job)
            try:
                status = job.result()
            except Exception as err:  # the job itself died
                status = _job_died(r, f"job {job.job_id} failed: {err}")
            say(_line(sweep, r, status))
            _report(sweep, say)


#: words of an sbatch error → the sweep file's slurm option they are about
SBATCH_HINTS: tuple[tuple[str, str], ...] = (
    ("gres", "gpus_per_node"), ("gpu", "gpus_per_node"), ("partition", "partition"), ("account", "account"),
    ("qos", "qos"), ("time limit", "time_min"), ("memory", "mem_gb"), ("cpu", "cpus_per_task"),
    ("feature", "constraint"), ("constraint", "constraint"),
)


def _sbatch_message(sweep: Sweep, err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    errors = [ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln] or lines[-1:] or [repr(err)]
    text = "; ".join(dict.fromkeys(errors))
    named = [opt for word, opt in SBATCH_HINTS if word in text.lower()]
    extra = sweep.slurm.get("additional_parameters") or {}
    options = [f"slurm.{o} = {sweep.slurm[o]!r}" for o in dict.fromkeys(named) if o in sweep.slurm]
    if not options and extra:
        options = [f"slurm.additional_parameters = {extra!r}"]
    if not options and named:
        options = [f"slurm.{named[0]} (not set)"]
    return (f"sweep {sweep.label}: sbatch refused the job array: {text}"
            + (f" — check {', '.join(options)}" if options else f" (slurm options: {sweep.slurm})"))


def _slurm_submit(sweep: Sweep, todo: list[SweepRun], say: Callable[[str], None]) -> None:
    """Submit ``todo`` as one array; every run's ``status.json`` says ``submitted`` (with a token, then the job id)
    before this returns, so a restart waits for queued tasks instead of submitting them again."""
    import submitit

    folder = sweep.output / "submitit"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    options = {SLURM_OPTIONS[k]: v for k, v in sweep.slurm.items()}
    executor.update_parameters(name=f"ncutils-{sweep.source.stem}", slurm_signal_delay_s=signal_margin_s(
        sweep.slurm.get("time_min")), **options)
    token = uuid.uuid4().hex
    before = {r.key: (r.status_file.read_bytes() if r.status_file.exists() else None) for r in todo}
    for r in todo:
        r.folder.mkdir(parents=True, exist_ok=True)
        write_json(r.status_file, {"state": "submitted", "token": token, "submitted": time.time(),
                                   "sweep": f"{socket.gethostname()}:{os.getpid()}", "profile": sweep.profile})
    existing = set(folder.rglob("*")) if folder.exists() else set()
    n = len(todo)
    try:
        jobs = executor.map_array(execute_run, [str(sweep.notebook)] * n, [str(r.folder) for r in todo],
                                  [r.params for r in todo], [sweep.slurm.get("cpus_per_task")] * n,
                                  [sweep.profile] * n, [token] * n, [False] * n)
    except Exception as err:  # sbatch refused (submitit.core.utils.FailedJobError) or is missing
        for r in todo:  # nothing was submitted: the runs are as they were
            if before[r.key] is None:
                r.status_file.unlink(missing_ok=True)
            else:
                r.status_file.write_bytes(before[r.key])
        for orphan in sorted(set(folder.rglob("*")) - existing, reverse=True):  # submitit's pickles and script
            orphan.rmdir() if orphan.is_dir() else orphan.unlink(missing_ok=True)
        raise ValueError(_sbatch_message(sweep, err)) from None
    for job, r in zip(jobs, todo, strict=True):
        with _hold(r.folder, wait_s=0.2) as got:  # a task that started already holds it and wrote its own job id
            current = _read_json(r.status_file) or {}
            if got and current.get("token") == token and current.get("state") == "submitted":
                write_json(r.status_file, {**current, "job_id": job.job_id, "array_job_id": job.job_id.split("_")[0]})
    say(f"[sweep] submitted {len(jobs)} SLURM array task(s) of {sweep.label}: job {jobs[0].job_id.split('_')[0]}")


def _slurm_watch(sweep: Sweep, runs: list[SweepRun], say: Callable[[str], None]) -> None:
    """Wait until every run of ``runs`` is done or failed; a task that left the queue without its result is
    recorded as failed with the reason (``sacct``, or ``scontrol`` without accounting)."""
    waiting = {r.key: r for r in runs}
    arrays = sorted({str((_read_json(r.status_file) or {}).get("array_job_id")) for r in runs} - {"None"})
    say(f"[sweep] waiting for {len(waiting)} SLURM task(s) of {sweep.label} (job {', '.join(arrays) or '?'}); "
        f"Ctrl-C detaches (the tasks keep running: watch them with `python -m ncutils sweep {sweep.source} --status` "
        f"or `squeue -j {','.join(arrays) or '<job>'}`, and start the sweep again to wait and write the table)")
    silent = 0
    try:
        while waiting:
            time.sleep(POLL_S)
            queue = slurm_queue()
            if queue is None:
                silent += 1
                if silent == 1:
                    say("[sweep] squeue does not answer; waiting (a task's death is then told by its heartbeat)")
            else:
                silent = 0
            changed = False
            for key, r in list(waiting.items()):
                state, reason = _verdict(r, queue)
                if state == "running":
                    continue
                status = _job_died(r, reason) if reason else (_read_json(r.status_file) or {"state": state})
                if state == "pending":  # the submission never got its job id: nothing of it is queued
                    status = {"state": "pending", "error": "not in the SLURM queue; run the sweep again"}
                say(_line(sweep, r, status))
                del waiting[key]
                changed = True
            if changed:
                _report(sweep, say)
    except KeyboardInterrupt:
        say(f"[sweep] detached from {len(waiting)} SLURM task(s) (job {', '.join(arrays)}): they keep running; "
            f"`python -m ncutils sweep {sweep.source} --status` shows them, a new `sweep` run waits for them")
        raise


def run_sweep(sweep: Sweep | str | os.PathLike[str], *, retry_failed: bool = False, only: str | None = None,
              say: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run what is left of a sweep and return the aggregated table (also written as ``table.csv`` and
    ``table.parquet`` in the sweep's output folder).

    Checks the output folders (and for SLURM the compute nodes' GPUs) first (:func:`preflight`). Skips finished
    runs and runs that another live process or a queued/running SLURM task holds (with ``executor: slurm`` it
    waits for those); records SLURM tasks that ended without a result as failed; re-runs interrupted runs;
    reports failed runs and re-runs them only with ``retry_failed``. ``only``: run this one key (or an unambiguous
    key prefix) alone, whatever its state.
    """
    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    chosen = [sw.run(only)] if only is not None else None
    preflight(sw, chosen)
    states = sweep_states(sw)
    for r in sw.runs:  # SLURM tasks that died while nobody watched: failed, with the reason
        _, reason = states[r.key]
        if reason:
            _job_died(r, reason)
            say(f"[sweep] {r.key} failed: {reason}")
    live = [r for r in sw.runs if states[r.key][0] == "running"]
    if chosen is not None:
        if states[chosen[0].key][0] == "running":
            raise ValueError(f"run {chosen[0].key} of sweep {sw.label} is running in another process or SLURM task")
        todo = chosen
    else:
        todo = [r for r in sw.runs
                if states[r.key][0] == "pending" or (retry_failed and states[r.key][0] == "failed")]
        for r in sw.runs:
            if states[r.key][0] == "failed" and not retry_failed:
                err = (_read_json(r.status_file) or {}).get("error")
                say(f"[sweep] {r.key} failed earlier (re-run with --retry-failed or --only {r.key}): {err}")
    rerun = {r.key for r in todo if states[r.key][0] in ("done", "failed")}
    _report(sw, say)
    if todo:
        say(f"[sweep] running {len(todo)} run(s) of {sw.label} with executor {sw.executor}"
            + (f", {sw.workers} worker(s)" if sw.executor == "local" else ""))
        if sw.executor == "local":
            _local(sw, todo, say, rerun)
        elif sw.executor == "submitit-local":
            _submitit_local(sw, todo, say, rerun)
        else:
            _slurm_submit(sw, todo, say)
    watched = [r for r in live if (_read_json(r.status_file) or {}).get("job_id")]
    if sw.executor == "slurm" and (todo or watched):
        _slurm_watch(sw, [*watched, *todo], say)
    elif live:
        say(f"[sweep] {len(live)} run(s) are running in another process: "
            f"{', '.join(r.key for r in live)}; this sweep process does not wait for them")
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


def sweep_table(sweep: Sweep) -> pd.DataFrame:
    """One tidy row per run: ``key``, ``status``, ``wall_time_s``, ``error``, every parameter (``param.<name>``
    for fixed ones, plain names for swept ones) and every ``summary.json`` field (nested keys joined with
    ``.``, checks as ``checks[<id>].<field>``). Reads only (``sweep --status`` on a read-only copy)."""
    rows = []
    states = sweep_states(sweep)
    for r in sweep.runs:
        status = _read_json(r.status_file) or {}
        state, reason = states[r.key]
        row: dict[str, Any] = {"key": r.key, "status": state, "wall_time_s": status.get("wall_time_s"),
                               "error": reason or status.get("error"), **r.swept}
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
    return table


def collect(sweep: Sweep) -> pd.DataFrame:
    """:func:`sweep_table`, written atomically to ``table.csv`` and ``table.parquet`` in the sweep's output."""
    table = sweep_table(sweep)
    with atomic_path(sweep.output / "table.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(sweep.output / "table.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return table
