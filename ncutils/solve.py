"""Full-batch gradient descent for unconstrained-features models — the one loop.

:func:`gradient_descent` runs any :class:`ncutils.models.FeatureModel` for S
independent runs at once (seeds, or a grid of hyperparameters), on CPU or GPU,
records a tidy history (objective, every metric of every feature level, extra
quantities) on a linear or geometric grid of steps, stops with a
:class:`DivergenceError` when the objective stops being finite, and can
checkpoint and resume.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ._extras import need
from ._validate import check_float, check_int
from .device import is_quiet, progress_bar, resolve_device, resolve_dtype, threads_for
from .metrics import nc_metrics_t
from .models import FeatureModel, Params
from .paths import atomic_path, load_checkpoint, tensor_digest

if TYPE_CHECKING:  # pandas is imported where a history table is built, not with the module
    import pandas as pd

__all__ = ["DivergenceError", "GDResult", "gradient_descent", "record_steps", "threads"]


class DivergenceError(RuntimeError):
    """Gradient descent produced a non-finite objective."""


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged) and restore the caller's count."""
    if n is None:
        yield
        return
    n = check_int("threads", n, 1)
    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


_thread_count = threads  # gradient_descent's argument of the same name shadows it


def record_steps(steps: int, every: int | None = None, num: int | None = None, geometric: bool = False) -> np.ndarray:
    """Steps at which the history is recorded: always 0 and ``steps``.

    ``every``: every k steps (linear grid). ``num`` with ``geometric=True``: about
    ``num`` steps spaced geometrically (for runs of millions of steps).
    """
    steps = check_int("steps", steps, 1)
    if geometric:
        num = 100 if num is None else check_int("num_records", num, 1)
        grid = np.unique(np.round(np.geomspace(1, steps, num)).astype(np.int64))
    else:
        every = max(steps // 100, 1) if every is None else check_int("record_every", every, 1)
        grid = np.arange(0, steps + 1, every, dtype=np.int64)
    return np.unique(np.concatenate([[0], grid, [steps]]))


@dataclass
class GDResult:
    """Outcome of :func:`gradient_descent`.

    Attributes
    ----------
    model : the model that was run.
    params : final parameters, each with a leading run dimension S.
    history : long-form table with columns ``step, run, level, metric, value``;
        ``level`` is ``"model"`` for the objective and extras, else a feature
        level of the model (e.g. ``"H"``).
    steps, lr, wall_time_s, device : what was run, how long it took, where.
    """

    model: FeatureModel
    params: Params
    history: pd.DataFrame
    steps: int
    lr: float
    wall_time_s: float
    device: str

    def final(self, metric: str, level: str = "model") -> np.ndarray:
        """Last recorded value of ``metric`` at ``level``, one entry per run, shape ``(S,)``."""
        h = self.history
        rows = h[(h.metric == metric) & (h.level == level)]
        if rows.empty:
            known = sorted(set(zip(h.level, h.metric, strict=True)))
            raise KeyError(f"no metric {metric!r} at level {level!r}; recorded: {known}")
        last = rows[rows.step == rows.step.max()].sort_values("run")
        return last.value.to_numpy()


def _plain(obj: Any) -> Any:
    """Numbers, strings, lists and dicts only (numpy scalars as Python ones): what ``weights_only`` loads."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj.item() if isinstance(obj, np.generic) else obj


def _fingerprint(model: FeatureModel, **config: object) -> str:
    text = repr(model) + repr(sorted(config.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _record(model: FeatureModel, p: Params, y: Tensor, step: int, objective: Tensor) -> list[pd.DataFrame]:
    pd = need("pandas")

    S = objective.shape[0]
    runs = np.arange(S)
    chunks = []

    def add(level: str, values: dict[str, Tensor]) -> None:
        for metric, v in values.items():
            chunks.append(
                pd.DataFrame(
                    {"step": step, "run": runs, "level": level, "metric": metric,
                     "value": v.detach().to("cpu", torch.float64).numpy()}
                )
            )

    add("model", {"objective": objective, **model.extras(p)})
    for name, lev in model.levels(p).items():
        W, b, A = (None if t is None else t.to(torch.float64) for t in (lev.W, lev.b, lev.A))
        add(name, nc_metrics_t(lev.H.to(torch.float64), y, model.K, W=W, b=b, A=A, spectrum=lev.spectrum))
    return chunks


def gradient_descent(
    model: FeatureModel,
    *,
    lr: float,
    steps: int,
    runs: int | None = None,
    seed: int = 0,
    init_std: float = 0.1,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float64",
    record_every: int | None = None,
    num_records: int | None = None,
    geometric: bool = False,
    check_every: int = 100,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    init: Params | None = None,
    progress: bool | None = None,
    desc: str = "GD",
    threads: int | None = None,
) -> GDResult:
    """Plain full-batch gradient descent θ ← θ − lr ∇f(θ) on ``model``.

    Parameters
    ----------
    model : the model (its hyperparameters may hold one value per run).
    lr, steps : step size (> 0) and number of steps (≥ 1).
    runs : number S of independent runs; default: the length of the model's
        per-run hyperparameters, else 1.
    seed, init_std : initializations are drawn on the CPU from ``seed``, so runs
        are identical across devices; ``init_std`` is the N(0, std²) scale.
    device, dtype : ``"auto"``/``"cpu"``/``"cuda[:N]"``; ``"float64"`` or ``"float32"``.
    record_every, num_records, geometric : the recording grid, see :func:`record_steps`.
    check_every : the objective is checked for NaN/inf at least this often.
    checkpoint, checkpoint_every : a file to write the state to (atomically) every
        ``checkpoint_every`` steps (at the next recorded step) and at the end. A run
        started with the same configuration and an existing checkpoint resumes from it
        (and returns at once when it had finished); a different configuration raises.
    init : explicit initial parameters (overrides seed / init_std).
    progress : show a tqdm bar; default: on unless quiet (see :func:`ncutils.device.is_quiet`).
    threads : torch intra-op threads while the loop runs on a CPU (the caller's count is restored after);
        default: 1 for steps below :data:`ncutils.device.GD_THREAD_FLOPS` FLOPs (the notebooks' UFMs:
        tiny operations on several threads wait on each other, worst on a busy machine), else unchanged.

    Raises
    ------
    DivergenceError : the objective became NaN or inf (the message names the step size).
    """
    check_float("lr", lr, 0.0, strict_low=True)
    check_int("steps", steps, 1)
    check_float("init_std", init_std, 0.0)
    check_int("check_every", check_every, 1)
    if checkpoint_every is not None:
        check_int("checkpoint_every", checkpoint_every, 1)
    implied = model.runs()
    S = check_int("runs", runs, 1) if runs is not None else (implied or 1)
    if implied is not None and S != implied:
        raise ValueError(f"parameter runs must match the {implied} values of the per-run hyperparameters, got {S}")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if threads is not None:
        check_int("threads", threads, 1)
    elif dev.type == "cpu":
        threads = threads_for(model.step_flops(S))
    with _thread_count(threads if dev.type == "cpu" else None):
        grid = record_steps(int(steps), record_every, num_records, geometric)

        fingerprint = _fingerprint(model, lr=lr, steps=int(steps), runs=S, seed=seed, init_std=init_std,
                                   dtype=str(dt), grid=grid.tobytes().hex(),
                                   init=None if init is None else tensor_digest(*(init[k] for k in sorted(init))))
        ckpt = Path(checkpoint) if checkpoint is not None else None
        chunks: list[pd.DataFrame] = []
        start, elapsed = 0, 0.0
        if ckpt is not None and ckpt.exists():
            state = load_checkpoint(ckpt, fingerprint)
            p = {k: v.to(dev) for k, v in state["params"].items()}
            pd = need("pandas")
            start, elapsed = state["step"], state["elapsed"]
            chunks = [pd.DataFrame(c) for c in state["history"]]
        elif init is not None:
            p = {k: v.detach().to(dev, dt).clone() for k, v in init.items()}
        else:
            gen = torch.Generator().manual_seed(int(seed))
            p = {k: v.to(dev) for k, v in model.init(S, float(init_std), gen, dt).items()}

        y = model.labels(dev)
        last_saved = start

        def save(step: int) -> None:
            if ckpt is not None:
                with atomic_path(ckpt) as tmp:
                    torch.save({"fingerprint": fingerprint, "step": step, "elapsed": elapsed + time.perf_counter() - t0,
                                "params": {k: v.cpu() for k, v in p.items()},
                                "history": [_plain(c.to_dict("list")) for c in chunks]}, tmp)

        def check(f: Tensor, step: int) -> None:
            if not bool(torch.isfinite(f).all()):
                bad = int((~torch.isfinite(f)).nonzero()[0, 0])
                raise DivergenceError(
                    f"gradient descent diverged: objective = {float(f[bad])} at step {step} (run {bad}) "
                    f"with lr = {lr}; lower the step size lr"
                )

        show = (not is_quiet()) if progress is None else progress
        t0 = time.perf_counter()
        bar = progress_bar(total=int(steps), initial=start, desc=desc, disable=not show, mininterval=1.0)
        if start == 0:
            f0 = model.objective(p)
            check(f0, 0)
            chunks += _record(model, p, y, 0, f0)
        step = start
        with torch.no_grad():
            for target in grid[grid > start]:
                target = int(target)
                while step < target:
                    todo = min(check_every, target - step)
                    for _ in range(todo):
                        model.step(p, lr)
                    step += todo
                    bar.update(todo)
                    if step < target:
                        check(model.objective(p), step)
                f = model.objective(p)
                check(f, step)
                chunks += _record(model, p, y, step, f)
                if ckpt is not None and checkpoint_every is not None and step - last_saved >= checkpoint_every:
                    save(step)
                    last_saved = step
        bar.close()
        if ckpt is not None and (step != last_saved or not ckpt.exists()):
            save(step)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        wall = elapsed + time.perf_counter() - t0
        pd = need("pandas")

        history = pd.concat(chunks, ignore_index=True)
        history["level"] = history["level"].astype("category")
        history["metric"] = history["metric"].astype("category")
        return GDResult(model=model, params=p, history=history, steps=int(steps), lr=float(lr),
                        wall_time_s=wall, device=str(dev))
