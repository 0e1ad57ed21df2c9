"""The one notebook runner: papermill with validated parameters and profiles.

Used by ``make figures`` (:func:`figures`), ``make golden`` (:func:`golden`), the
tests, and ``python -m ncutils run``. Not for use inside a running Jupyter
kernel (papermill would hit "event loop is already running").

* Parameters come from a named profile in ``profiles/<notebook>.yaml`` and/or
  explicit pairs; names are checked against the notebook's own ``parameters``
  cell and types/ranges against the notebook's study (:mod:`ncutils.studies`) *before* a kernel
  starts.
* Output is written atomically: a failed run never leaves a fresh-looking
  notebook behind (the partial notebook is kept as ``*.failed.ipynb``).
* :func:`figures` re-runs a notebook only when the hash of its code cells, its
  profile, the ``ncutils`` sources or the lock file changed (content hashes, not
  mtimes, which git resets).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import yaml

from ..device import PROGRESS_FILE_ENV
from ..paths import _finish_file, atomic_path, repo_root, resolve_path
from .params import check_requirements, load_profiles, notebook_schema, resolve_data_root, run_name, validate

__all__ = [
    "RunRecord",
    "declared_parameters",
    "figure_profiles",
    "figures",
    "golden",
    "list_notebooks",
    "load_profile",
    "notebook_path",
    "notebook_sources",
    "run_notebook",
    "source_hash",
]

#: the notebooks run in the standard kernel of the environment JupyterLab (or the runner) starts from
KERNEL_DISPLAY = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


@dataclass
class RunRecord:
    """Result of one notebook execution."""

    notebook: str
    profile: str | None
    output: Path
    ok: bool
    wall_time_s: float
    error: str | None = None
    skipped: bool = False
    passed: bool | None = None  # the run's summary.json says its checks passed (None: no summary)


def list_notebooks() -> list[Path]:
    """All numbered notebooks ``notebooks/NN_*.ipynb``, in order."""
    return sorted(p for p in (repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def notebook_path(notebook: str | os.PathLike[str]) -> Path:
    """A notebook by stem (``"01_ufm_mse"``), number (``"01"``) or path."""
    p = Path(notebook)
    if p.suffix == ".ipynb" and p.exists():
        return p.resolve()
    for cand in list_notebooks():
        if cand.stem == str(notebook) or cand.stem.split("_", 1)[0] == str(notebook):
            return cand
    folder = repo_root() / "notebooks"
    if not folder.is_dir():
        raise ValueError(f"no notebooks/ folder in {repo_root()}: run from a checkout of the repository, set "
                         "NCUTILS_ROOT to one, or pass the notebook's path (…/NN_name.ipynb)")
    names = [c.stem for c in list_notebooks()]
    raise ValueError(f"unknown notebook {str(notebook)!r}; available notebooks are {names}")


def declared_parameters(path: Path) -> dict[str, Any]:
    """The notebook's ``parameters`` cell as ``{name: default}``."""
    return {name: p.default for name, p in notebook_schema(path).items()}


def load_profile(notebook: str | os.PathLike[str], profile: str) -> dict[str, Any]:
    """Parameters of ``profile`` in ``profiles/<notebook stem>.yaml`` (``paper`` may be empty)."""
    stem = notebook_path(notebook).stem
    profiles = load_profiles(stem)
    if not profiles:
        raise ValueError(f"no profile file {repo_root() / 'profiles' / (stem + '.yaml')} for notebook {stem}")
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r} for {stem}; profiles in {stem}.yaml: {sorted(profiles)}")
    return dict(profiles[profile])


def _clean(path: Path, kernel: dict[str, str] = KERNEL_DISPLAY, record: dict[str, Any] | None = None) -> None:
    """Drop per-cell timing metadata and restore the ncutils kernelspec (quiet diffs); ``record`` (profile,
    wall time, what the checks found, run date, commit, ncutils version: :func:`_summary_record`,
    :func:`_provenance`) is kept as the notebook's ``metadata.ncutils`` for the gallery (:mod:`ncutils.site`)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.id = "injected-parameters"  # papermill draws a random id per run: a diff on every re-run
    nb.metadata.get("papermill", {}).pop("start_time", None)
    nb.metadata.get("papermill", {}).pop("end_time", None)
    nb.metadata.get("papermill", {}).pop("duration", None)
    nb.metadata.get("papermill", {}).pop("input_path", None)
    nb.metadata.get("papermill", {}).pop("output_path", None)
    nb.metadata.get("papermill", {}).pop("environment_variables", None)
    nb.metadata["kernelspec"] = dict(kernel)
    if record is not None:
        nb.metadata["ncutils"] = record
    nbformat.write(nb, path)


@contextmanager
def _kernel_environment(**env: str) -> Iterator[None]:
    """Set variables for the kernel papermill starts (it inherits this process's environment), then restore."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextmanager
def kernel_runtime_dir() -> Iterator[Path]:
    """A private folder for the kernel's connection file (``$JUPYTER_RUNTIME_DIR``), removed when the run ends
    however it ends; folders left by runs that were killed (SIGKILL, power loss) are swept at the next start.

    The folders live in ``<tmp>/ncutils-kernels-<uid>/<pid>-<random>``; a folder whose ``<pid>`` is no longer
    running is stale. The kernel itself exits when its runner dies (ipykernel polls its parent).
    """
    import shutil

    base = Path(tempfile.gettempdir()) / f"ncutils-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"
    base.mkdir(mode=0o700, exist_ok=True)
    for old in base.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    here = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))
    try:
        with _kernel_environment(JUPYTER_RUNTIME_DIR=str(here)):
            yield here
    finally:
        shutil.rmtree(here, ignore_errors=True)


@contextmanager
def _relayed_progress(path: str | None, every_s: float = 0.5) -> Iterator[None]:
    """While the block runs, show the kernel's relayed status line (``path``, written by
    :func:`ncutils.device.progress_bar` and the cell hook of :func:`ncutils.pipeline.params.setup`) as a second
    line under papermill's cell bar. ``path=None``: nothing (not a terminal, or CI)."""
    if path is None:
        yield
        return
    from tqdm import tqdm

    line = tqdm(total=0, position=1, bar_format="{desc}", leave=False, file=sys.stderr)
    stop = threading.Event()

    def poll() -> None:
        last = ""
        while not stop.wait(every_s):
            try:
                text = Path(path).read_text().strip()
            except OSError:
                continue
            if text and text != last:
                line.set_description_str(f"  kernel: {text}", refresh=True)
                last = text

    worker = threading.Thread(target=poll, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(timeout=2)
        line.close()


def _kernel_manager_class() -> type:
    """jupyter_client's kernel manager with its connection file in ``$JUPYTER_RUNTIME_DIR`` (by default it is a
    ``mkstemp`` file in the system temp folder, which a killed runner leaves behind)."""
    import uuid

    from jupyter_client.manager import AsyncKernelManager

    class PrivateKernelManager(AsyncKernelManager):
        def _connection_file_default(self) -> str:
            from jupyter_core.paths import jupyter_runtime_dir

            return os.path.join(jupyter_runtime_dir(), f"kernel-{uuid.uuid4()}.json")

    return PrivateKernelManager


def strip_injected(source: Path, target: Path) -> None:
    """Write ``source`` to ``target`` without any ``injected-parameters`` cell or papermill metadata: papermill
    keeps an existing injected cell (and the parameters it records) when it has nothing to inject, so a stale one
    would run, or be reported, instead of the defaults."""
    nb = nbformat.read(source, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    nb.metadata.pop("papermill", None)  # its `parameters` record an earlier run's injection, not this one's
    nbformat.write(nb, target)


def check_output(output: str | os.PathLike[str]) -> Path:
    """The executed notebook's path, refused before any run when it cannot be written there."""
    out = Path(output)
    if out.is_dir():
        raise ValueError(f"parameter output: {out} is a folder; give the path of the executed notebook (*.ipynb)")
    if out.suffix != ".ipynb":
        raise ValueError(f"parameter output must end in .ipynb, got {out}")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise ValueError(f"parameter output: {parent} is not a folder, so {out} cannot be written")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"parameter output: cannot write into {parent} (permission denied)")
    return out


def run_notebook(
    notebook: str | os.PathLike[str],
    *,
    profile: str | None = None,
    params: dict[str, Any] | None = None,
    output: str | os.PathLike[str] | None = None,
    kernel_name: str = "python3",
    timeout_s: int | None = None,
    raise_on_error: bool = True,
) -> RunRecord:
    """Execute a notebook with papermill, with exactly the validated parameters.

    Parameters
    ----------
    notebook : stem, number or path of the notebook.
    profile : a profile name in ``profiles/<stem>.yaml``; its values, then ``params``,
        override the notebook's defaults. The profile name is passed as ``profile``.
    output : the executed notebook; default ``outputs/<stem>/<name>/<stem>.ipynb`` where ``name`` is the
        profile's name, or ``custom-<hash>`` for any other parameter set (:func:`~.params.run_name`).
    kernel_name : ``"python3"`` runs the kernel in this very environment.

    Any ``injected-parameters`` cell the notebook file holds is dropped before papermill injects the
    run's own, so what runs is what was validated. ``$NCUTILS_DATA_ROOT`` reaches the kernel as an
    environment variable (the data's location is not a parameter of the experiment).

    Raises
    ------
    ValueError : unknown notebook/profile/parameter, a bad value or output path — before any kernel starts.
    RuntimeError : the notebook failed (when ``raise_on_error``), naming the cell's error.
    KeyboardInterrupt : interrupted; the partial notebook is kept as ``*.failed.ipynb``.
    """
    import papermill

    path = notebook_path(notebook)
    schema = notebook_schema(path)
    declared = {name: p.default for name, p in schema.items()}
    merged: dict[str, Any] = {}
    if profile is not None:
        merged.update(load_profile(path, profile))
        if "profile" in declared:
            merged["profile"] = profile
    merged.update(params or {})
    checked = validate(path, {**declared, **merged}, schema)
    check_requirements(path.stem, resolve_data_root(checked))
    # inject what differs from the notebook's defaults (a paper run leaves the notebook untouched)
    merged = {k: checked[k] for k in merged if checked[k] != declared.get(k, object())}
    name = run_name(path, checked, schema)
    out = check_output(output if output is not None else repo_root() / "outputs" / path.stem / name / path.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}", suffix=".ipynb")
    os.close(fd)
    source = Path(tmp).with_name(Path(tmp).stem + ".input.ipynb")
    strip_injected(path, source)
    t0, started = time.perf_counter(), time.time()
    failed = out.with_suffix(".failed.ipynb")
    try:
        terminal = sys.stderr.isatty() and not os.environ.get("CI")
        with kernel_runtime_dir() as rdir:
            relay = {PROGRESS_FILE_ENV: str(rdir / "progress.txt")} if terminal else {}
            with _kernel_environment(NCUTILS_QUIET="1", **relay,
                                     MPLBACKEND=os.environ.get("MPLBACKEND",
                                                               "module://matplotlib_inline.backend_inline")), \
                    _relayed_progress(relay.get(PROGRESS_FILE_ENV)):
                papermill.execute_notebook(
                    str(source), tmp, parameters=merged, kernel_name=kernel_name,
                    # cells n/m with an ETA on a terminal (and under it the kernel's own bar, relayed through a
                    # file); nothing in CI logs or when output goes to a file
                    progress_bar={"position": 0, "leave": False} if terminal else False,
                    cwd=str(repo_root()), execution_timeout=timeout_s, kernel_manager_class=_kernel_manager_class(),
                    # the kernel's own start-up log (e.g. ipykernel's local-TCP notice) is noise; cell output is kept
                    extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                )
    except KeyboardInterrupt:
        if os.path.exists(tmp):
            os.replace(tmp, failed)
        raise KeyboardInterrupt(f"{path.name} ({name}) interrupted; partial notebook: {failed}") from None
    except Exception as err:  # papermill.PapermillExecutionError and kernel failures
        if os.path.exists(tmp):
            os.replace(tmp, failed)
        msg = f"{path.name} ({name}) failed: {getattr(err, 'ename', type(err).__name__)}: " \
              f"{getattr(err, 'evalue', err)}; partial notebook: {failed}"
        if raise_on_error:
            raise RuntimeError(msg) from err
        return RunRecord(path.stem, profile, failed, False, time.perf_counter() - t0, msg)
    finally:
        source.unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    record: dict[str, Any] = {"profile": name, "wall_time_s": round(wall, 1)}
    summary = _summary_record(checked, path.stem, name, since=started)
    record.update(summary)
    record.update(_provenance(started))
    _clean(Path(tmp), record=record)
    _finish_file(Path(tmp))
    os.replace(tmp, out)
    return RunRecord(path.stem, profile, out, True, wall, passed=summary.get("passed"))


def _summary_record(params: dict[str, Any], stem: str, name: str, since: float) -> dict[str, Any]:
    """What the ``summary.json`` this run wrote says (a summary older than the run is not this run's: then
    nothing is recorded): ``passed``, the per-check pass/fail by check id (``checks``), ``checks_passed`` of
    ``checks_total``, and the largest relative error of its ``kind="rel"`` checks, ``worst_rel_err``, with that
    check's id and label (``worst_rel_err_check``, ``worst_rel_err_name``; all None when it has no such check;
    a non-finite error is the worst, recorded as None with its check)."""
    import json
    import math

    folder = params.get("results_dir") or f"outputs/{stem}/{name}"
    path = resolve_path(folder) / "summary.json"
    if not path.exists() or path.stat().st_mtime < since:
        return {}
    summary = json.loads(path.read_text())
    entries = [c for c in summary.get("checks", []) if isinstance(c, dict)]
    checks = {c.get("id", c.get("name")): bool(c.get("passed")) for c in entries}
    worst: dict[str, Any] | None = None
    for c in entries:
        if c.get("kind", "rel" if "rel_err" in c else None) != "rel" or c.get("rel_err") is None:
            continue
        try:
            err = float(c["rel_err"])
        except (TypeError, ValueError):
            continue
        bad = not math.isfinite(err)
        if worst is None or (bad and not worst["bad"]) or (not worst["bad"] and err > worst["err"]):
            worst = {"err": err, "bad": bad, "id": c.get("id", c.get("name")), "name": c.get("name", c.get("id"))}
    return {"passed": bool(summary.get("passed")), "checks": checks,
            "checks_passed": sum(1 for c in entries if c.get("passed")), "checks_total": len(entries),
            "worst_rel_err": None if worst is None or worst["bad"] else worst["err"],
            "worst_rel_err_check": worst and worst["id"], "worst_rel_err_name": worst and worst["name"]}


def _git_commit(root: Path) -> str | None:
    """``git rev-parse --short HEAD`` of ``root``, with ``-dirty`` when a tracked file differs from it; None
    outside a git checkout, without git, or when git hangs (a run never fails for want of it)."""
    import subprocess

    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}  # no index.lock: parallel runs read at once

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                 env=env, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    head = git("rev-parse", "--short", "HEAD")
    if not head or not head.strip():
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return head.strip() + ("-dirty" if status and status.strip() else "")


def _ncutils_version() -> str | None:
    """The installed ``neural-collapse-utils`` distribution's version, else ``ncutils.__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neural-collapse-utils")
    except PackageNotFoundError:
        import ncutils

        return getattr(ncutils, "__version__", None)


def _provenance(started: float) -> dict[str, Any]:
    """When, from which commit and with which ncutils a run ran: ``run_date`` (UTC, ISO 8601, the run's start),
    ``commit`` (:func:`_git_commit` of the repository root) and ``ncutils_version``."""
    from datetime import datetime, timezone

    return {"run_date": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "commit": _git_commit(repo_root()), "ncutils_version": _ncutils_version()}


#: Imports of study modules: ``import ncutils.studies.x``, ``from .studies.x import``,
#: ``import_module("ncutils.studies.x")``; ``from <package>studies import a, b``; inside ``ncutils/studies/``:
#: ``from .x import`` and ``from . import a, b``.
_STUDY_DOTTED = re.compile(r"^[ \t]*(?:from|import)[ \t]+(?:\.+|ncutils\.)studies\.(\w+)"
                           r"|import_module\(\W*ncutils\.studies\.(\w+)", re.M)
_NAMES = r"(\([^)]*\)|[\w \t,]+)"
_STUDY_FROM = re.compile(r"^[ \t]*from[ \t]+(?:\.+|ncutils\.)studies[ \t]+import[ \t]+" + _NAMES, re.M)
_SIBLING = re.compile(r"^[ \t]*from[ \t]+\.(\w*)[ \t]+import[ \t]+" + _NAMES, re.M)


def _study_slug(stem: str) -> str:
    return stem.split("_", 1)[1] if "_" in stem and stem[:2].isdigit() else stem


def _names(group: str) -> list[str]:
    """``"(a as b,\n c)"`` → ``["a", "c"]``."""
    return [n.split()[0] for n in group.strip("()").replace("\n", ",").split(",") if n.strip()]


def _imported_studies(text: str, sibling: bool) -> set[str]:
    """Names of study modules that ``text`` (Python source) imports; ``sibling``: ``text`` is itself in
    ``ncutils/studies/`` (relative imports name other studies)."""
    names = {a or b for a, b in _STUDY_DOTTED.findall(text)}
    for group in _STUDY_FROM.findall(text):
        names.update(_names(group))
    if sibling:
        for module, group in _SIBLING.findall(text):
            names.update([module] if module else _names(group))
    return names


def notebook_sources(notebook: str | os.PathLike[str]) -> list[Path]:
    """The ``ncutils`` source files a notebook's outputs depend on (what :func:`source_hash` hashes): every
    ``ncutils/**/*.py`` except the study modules of *other* notebooks (``ncutils/studies/<slug>.py``) that
    neither this notebook's code cells nor any kept source imports (transitively). So a new or edited study of
    notebook 10 leaves the stamps of 01–09 current, while an edit of a shared module (``metrics``, ``solve``,
    ``train``, ``studies/_common``, …) or of a study that this notebook's study imports makes them stale."""
    path = notebook_path(notebook)
    root = repo_root()
    sources = sorted((root / "ncutils").rglob("*.py"))
    studies = root / "ncutils" / "studies"
    other = {_study_slug(p.stem) for p in list_notebooks()} - {_study_slug(path.stem)}
    optional = {src.stem: src for src in sources if src.parent == studies and src.stem in other}
    kept = [src for src in sources if src.stem not in optional or src.parent != studies]
    nb = nbformat.read(path, as_version=4)
    wanted = set().union(*(_imported_studies(c.source, False) for c in nb.cells if c.cell_type == "code"))
    todo = list(kept)
    while todo:
        src = todo.pop()
        wanted |= _imported_studies(src.read_text(encoding="utf-8"), src.parent == studies)
        for slug in sorted(wanted & set(optional)):
            todo.append(optional.pop(slug))
            kept.append(todo[-1])
    return sorted(kept)


def source_hash(notebook: str | os.PathLike[str], profile: str) -> str:
    """Hash of what a notebook's outputs depend on: its code cells, the profile's parameters, the ``ncutils``
    sources it depends on (:func:`notebook_sources`: all of them but other notebooks' study modules) and the
    dependency lock file (markdown is left out: editing the prose does not make the outputs stale)."""
    path = notebook_path(notebook)
    h = hashlib.sha256()
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code" or "injected-parameters" in cell.metadata.get("tags", []):
            continue
        h.update(cell.source.encode() + b"\0")
    h.update(yaml.safe_dump(load_profile(path, profile), sort_keys=True).encode())
    root = repo_root()
    for src in notebook_sources(path):
        h.update(src.relative_to(root).as_posix().encode() + src.read_bytes())
    lock = root / "requirements.lock"
    if lock.exists():
        h.update(lock.read_bytes())
    return h.hexdigest()


def committed_profile(notebook: str | os.PathLike[str]) -> str:
    """The profile whose run is committed as ``notebooks/<stem>.ipynb``: the first profile of
    ``profiles/<stem>.yaml`` that changes nothing (the parameters cell's own defaults, so that "Run All" in
    JupyterLab runs what the committed outputs show) — ``paper`` for the theory notebooks."""
    stem = notebook_path(notebook).stem
    profiles = load_profiles(stem)
    return next((name for name, overrides in profiles.items() if not overrides), "paper")


def figure_profiles(notebook: str | os.PathLike[str]) -> list[str]:
    """The profiles ``make figures`` runs: the committed one (:func:`committed_profile`) first, then every
    other profile of ``profiles/<stem>.yaml`` except ``small`` (the CI profile) — e.g. a second paper figure's
    settings or the held-out check settings — in file order."""
    first = committed_profile(notebook)
    return [first, *[p for p in load_profiles(notebook_path(notebook).stem) if p not in (first, "small")]]


def stamps(path: Path) -> dict[str, dict[str, Any]]:
    """What ``make figures`` recorded in the committed notebook's ``metadata.ncutils.stamps``: per profile the
    :func:`source_hash` of its last successful run, its wall time and whether its checks passed. Committed with
    the notebook, so a fresh clone does not re-run what is current."""
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError):
        return {}
    return dict(nb.metadata.get("ncutils", {}).get("stamps", {}))


_NOTEBOOK_LOCK = threading.Lock()  # parallel runs of one notebook's profiles update one committed file


def _record_success(path: Path, profile: str, digest: str, rec: RunRecord) -> None:
    """Copy the committed profile's run into ``notebooks/`` (atomically) and stamp the run in its metadata."""
    with _NOTEBOOK_LOCK:
        kept = stamps(path)
        kept[profile] = {"hash": digest, "wall_time_s": round(rec.wall_time_s, 1), "passed": rec.passed}
        source = rec.output if profile == committed_profile(path) else path
        nb = nbformat.read(source, as_version=4)
        nb.metadata.setdefault("ncutils", {})["stamps"] = {k: kept[k] for k in sorted(kept)}
        with atomic_path(path) as tmp:
            nbformat.write(nb, tmp)
        if profile == committed_profile(path):
            rec.output = path


def _run_in_subprocess(path: Path, profile: str, out: Path, threads: int) -> RunRecord:
    """One figure run in its own process with ``threads`` BLAS/torch threads (parallel ``make figures``)."""
    import json
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads)}
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call([sys.executable, "-m", "ncutils", "run", str(path), "--profile", profile, "-o", str(out),
                              "--allow-failed-checks"], stdout=fh, stderr=subprocess.STDOUT, env=env,
                             cwd=str(repo_root()))
    wall = time.perf_counter() - t0
    tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:] or [""]
    if rc == 0:
        meta = json.loads(out.read_text()).get("metadata", {}).get("ncutils", {})
        return RunRecord(path.stem, profile, out, True, float(meta.get("wall_time_s", wall)), passed=meta.get("passed"))
    if rc == 2:
        reason = tail[0].removeprefix("error: ")
        return RunRecord(path.stem, profile, out, False, wall, error=f"could not start: {reason}")
    return RunRecord(path.stem, profile, out.with_suffix(".failed.ipynb"), False, wall,
                     error=f"{tail[0]} (log: {log})")


def figures(only: list[str] | None = None, force: bool = False, profile: str | None = None,
            jobs: int = 1) -> list[RunRecord]:
    """Run every notebook at paper settings, refreshing ``figures/``.

    The committed profile (:func:`committed_profile`, ``paper`` for the theory notebooks) runs in place
    (``notebooks/NN_*.ipynb`` gets the outputs a GitHub reader sees); the other profiles
    (:func:`figure_profiles`) write their notebook to ``outputs/<stem>/<profile>/``. ``profile`` runs that one
    profile only. Skips runs whose :func:`source_hash` matches their stamp (:func:`stamps`). ``jobs > 1`` runs
    that many notebooks/profiles at once, each in its own process with ``cores // jobs`` threads, longest first;
    one line per run as it starts and ends, with an ETA for the whole run from the last recorded wall times.
    """
    from concurrent.futures import ThreadPoolExecutor

    tasks = []
    for path in list_notebooks():
        if only and path.stem not in only and path.stem[:2] not in only:
            continue
        for prof in [profile] if profile else figure_profiles(path):
            tasks.append((path, prof))
    records: list[RunRecord] = []
    todo = []
    for path, prof in tasks:
        digest = source_hash(path, prof)
        if not force and stamps(path).get(prof, {}).get("hash") == digest:
            print(f"[ncutils] {path.stem} ({prof}): up to date, skipped", flush=True)
            records.append(RunRecord(path.stem, prof, path, True, 0.0, skipped=True))
        else:
            todo.append((path, prof, digest, float(stamps(path).get(prof, {}).get("wall_time_s") or 60.0)))
    todo.sort(key=lambda t: -t[3])  # longest first: the parallel run ends sooner
    jobs = max(1, min(int(jobs), len(todo) or 1))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    left = [sum(t[3] for t in todo)]
    lock = threading.Lock()
    t_start = time.perf_counter()

    def one(task: tuple[Path, str, str, float]) -> RunRecord:
        path, prof, digest, expected = task
        with lock:
            eta = left[0] / jobs
            print(f"[ncutils] {path.stem} ({prof}): started; about {expected:.0f} s last time; "
                  f"all remaining runs: ETA {eta / 60:.1f} min", flush=True)
        out = repo_root() / "outputs" / path.stem / prof / path.name
        try:
            rec = (run_notebook(path, profile=prof, output=out, raise_on_error=False) if jobs == 1
                   else _run_in_subprocess(path, prof, out, threads))
        except ValueError as err:  # refused before any kernel started (bad parameters, missing dataset): go on
            rec = RunRecord(path.stem, prof, out, False, 0.0, error=f"could not start: {err}")
        if rec.ok:
            _record_success(path, prof, digest, rec)
        with lock:
            left[0] -= expected
            elapsed = time.perf_counter() - t_start
            if rec.ok:
                verdict = {True: "checks passed", False: "SOME CHECKS FAILED", None: "no summary"}[rec.passed]
                print(f"[ncutils] {path.stem} ({prof}): done in {rec.wall_time_s:.1f} s, {verdict}; "
                      f"{elapsed / 60:.1f} min so far, ETA {left[0] / jobs / 60:.1f} min", flush=True)
            else:
                print(f"[ncutils] {path.stem} ({prof}): FAILED: {rec.error}", file=sys.stderr, flush=True)
        return rec

    if jobs == 1:
        records += [one(t) for t in todo]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            records += list(pool.map(one, todo))
    return records


def golden(only: list[str] | None = None, profile: str = "small") -> list[RunRecord]:
    """Regenerate the golden notebooks ``tests/golden/NN_*.ipynb`` (the small profile)."""
    records = []
    for path in list_notebooks():
        if only and path.stem not in only and path.stem[:2] not in only:
            continue
        out = repo_root() / "tests" / "golden" / path.name
        records.append(run_notebook(path, profile=profile, output=out))
        print(f"[ncutils] golden {path.stem}: {records[-1].wall_time_s:.1f} s", flush=True)
    return records
