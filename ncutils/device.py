"""Device and dtype selection, and the quiet switch for progress bars."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch

from ._validate import bad_type, bad_value, check_choice

__all__ = [
    "DTYPES",
    "GD_THREAD_FLOPS",
    "PROGRESS_FILE_ENV",
    "forward_ad_quietly",
    "is_quiet",
    "progress_bar",
    "relay_status",
    "resolve_device",
    "resolve_dtype",
    "threads_for",
]

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` when available, else ``cpu``; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises ``ValueError`` for unknown names and for CUDA requested where none exists.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise bad_type("device", "'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device", device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"parameter device = {device!r} was requested but CUDA is not available here; "
                             "use 'auto' or 'cpu'")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"parameter device = {device!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(device)
    raise bad_value("device", "'auto', 'cpu', 'cuda' or 'cuda:N'", device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float64"`` (theory checks) or ``"float32"``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES[check_choice("dtype", dtype, tuple(DTYPES))]


@contextlib.contextmanager
def forward_ad_quietly() -> Iterator[None]:
    """Silence the one warning of torch's first forward-mode AD call (``torch.func.jvp``/``jacfwd``/``hessian``):
    torch then loads its forward-AD decompositions, which still call the deprecated ``torch.jit.script`` (a
    FutureWarning about torch internals, not about this code). Public API only (``warnings``); nothing else is
    filtered."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
        yield


def is_quiet() -> bool:
    """True when progress bars should stay off: ``NCUTILS_QUIET=1`` (set by the runner) or CI."""
    return os.environ.get("NCUTILS_QUIET", "").lower() in ("1", "true", "yes") or bool(os.environ.get("CI"))


def _in_jupyter() -> bool:
    """Running inside a Jupyter kernel (JupyterLab, Notebook), where progress bars can be widgets."""
    import sys

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


#: Set by the runner for the kernel it starts when its own output is a terminal: the kernel's progress bars
#: write their latest line into this file instead of the notebook, and the runner shows it under its cell bar.
PROGRESS_FILE_ENV = "NCUTILS_PROGRESS_FILE"


#: The label of the cell the kernel runs (set by the runner's cell hook), shown before a relayed bar.
_CURRENT_CELL = [""]


class _RelayFile:
    """A file-like target for tqdm that keeps only the bar's latest line, written atomically to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, text: str) -> int:
        line = text.replace("\r", "\n").strip().splitlines()
        if line and line[-1].strip():
            cell = _CURRENT_CELL[0]
            relay_status(f"[{cell}] {line[-1].strip()}" if cell else line[-1].strip(), self.path)
        return len(text)

    def flush(self) -> None:
        pass


def relay_status(line: str, path: str | None = None) -> None:
    """Write ``line`` (one status line) to the runner's progress file, if the runner asked for one."""
    path = path or os.environ.get(PROGRESS_FILE_ENV)
    if not path:
        return
    try:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            fh.write(line[:200])
        os.replace(tmp, path)
    except OSError:  # the runner's folder is gone (the run ended): progress is best effort
        pass


def progress_bar(*args: object, **kwargs: object):
    """A tqdm bar: a widget in JupyterLab (``tqdm.auto``, when ipywidgets is installed), plain text on a terminal
    — never pink stderr text in a notebook. Needs the ``[data]`` extra (tqdm).

    Under the runner on a terminal (``$NCUTILS_PROGRESS_FILE`` set) the bar is relayed: its latest line goes to
    that file, the runner shows it with its own cell bar, and nothing reaches the notebook's outputs."""
    import importlib.util

    from ._extras import need

    need("tqdm")
    relay = os.environ.get(PROGRESS_FILE_ENV)
    if relay:
        from tqdm import tqdm

        kwargs.update(disable=False, file=_RelayFile(relay), ascii=True, dynamic_ncols=False, ncols=100)
        return tqdm(*args, **kwargs)
    if _in_jupyter() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm(*args, **kwargs)


#: Below this many FLOPs per GD step, batched GD runs on one intra-op thread. Measured on the 2-core
#: development machine (docs/benchmarks.md, "GD step"): a step of the ReLU extended UFM over 10 seeds
#: (5.8 MFLOP) took 0.93 ms on one thread and 153 ms on two while other jobs shared the cores (idle, two
#: threads gain at most ~1.7× at this size); a 1.6 GFLOP step was still 2.5× slower on two busy threads.
#: Tiny operations make spinning intra-op threads wait on each other; parallelism comes from processes.
GD_THREAD_FLOPS = 1e8


def threads_for(flops_per_step: float | None, available: int | None = None) -> int:
    """Intra-op threads for a GD loop of ``flops_per_step`` FLOPs per step: 1 below
    :data:`GD_THREAD_FLOPS`, else ``available`` (default: the current ``torch.get_num_threads()``);
    ``None`` (size unknown) keeps ``available``."""
    avail = torch.get_num_threads() if available is None else available
    if flops_per_step is None or flops_per_step >= GD_THREAD_FLOPS:
        return avail
    return 1
