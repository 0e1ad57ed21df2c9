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
from .device import forward_ad_quietly, is_quiet, progress_bar, resolve_device, resolve_dtype, threads_for
from .metrics import nc_metrics_t
from .models import ClassReduced, FeatureModel, Params, class_reduce, class_reducible, gd_rows
from .paths import atomic_path, load_checkpoint, tensor_digest

if TYPE_CHECKING:  # pandas is imported where a history table is built, not with the module
    import pandas as pd

__all__ = ["POLISH_MAX_PARAMS", "DivergenceError", "GDResult", "PolishResult", "gradient_descent", "newton_polish",
           "record_steps", "threads"]


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


@contextmanager
def flush_subnormals(enabled: bool = True) -> Iterator[None]:
    """Run the block with subnormal floats flushed to zero on the CPU (``torch.set_flush_denormal``), then turn
    flushing off again (torch's default). GD toward collapse drives within-class deviations, and every parameter
    of a trivial-phase run, geometrically through the subnormal range (below 2.2e-308 in float64), where x86
    arithmetic is many times slower: a notebook-08 grid ran 2.2x slower per step after 16k steps than at its start.
    Flushing changes only values below that range, to 0."""
    if not enabled or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


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
    reduce: bool | None = None,
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
    reduce : run a linear MSE model (UFM without bias, linear deep UFM) in its exact class-reduced coordinates
        (:class:`ncutils.models.ClassReduced`: K + d₁ rows instead of N, the same iterates to float round-off);
        default (None): wherever it is exact and smaller; False: never; True: required (an error otherwise).
        ``params`` and every recorded metric are those of the full features.

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
    if reduce not in (None, True, False):
        raise ValueError(f"parameter reduce must be None, True or False, got {reduce!r}")
    reducible = class_reducible(model)
    if reduce and not reducible:
        raise ValueError("parameter reduce=True needs a linear MSE model without bias (UFM, linear deep UFM) "
                         f"with K + d_1 < N; {model!r} is not one")
    reduced = reducible and reduce is not False
    if threads is not None:
        check_int("threads", threads, 1)
    elif dev.type == "cpu":
        flops = model.step_flops(S)
        if flops is not None:  # K + d₁ rows instead of N where class-reduced
            flops *= gd_rows(model, reduced) / model.N
        threads = threads_for(flops)
    with _thread_count(threads if dev.type == "cpu" else None), flush_subnormals(dev.type == "cpu"):
        grid = record_steps(int(steps), record_every, num_records, geometric)

        fingerprint = _fingerprint(model, lr=lr, steps=int(steps), runs=S, seed=seed, init_std=init_std,
                                   dtype=str(dt), grid=grid.tobytes().hex(),
                                   init=None if init is None else tensor_digest(*(init[k] for k in sorted(init))),
                                   **({"reduced": True} if reduced else {}))
        ckpt = Path(checkpoint) if checkpoint is not None else None
        chunks: list[pd.DataFrame] = []
        start, elapsed = 0, 0.0
        if ckpt is not None and ckpt.exists():
            state = load_checkpoint(ckpt, fingerprint)
            p = {k: v.to(dev) for k, v in state["params"].items()}
            pd = need("pandas")
            start, elapsed = state["step"], state["elapsed"]
            chunks = [pd.DataFrame(c) for c in state["history"]]
            run_model: FeatureModel = ClassReduced(model, state["basis"].to(dev)) if reduced else model  # type: ignore[arg-type]
        else:
            if init is not None:
                p = {k: v.detach().to(dev, dt).clone() for k, v in init.items()}
            else:
                gen = torch.Generator().manual_seed(int(seed))
                p = {k: v.to(dev) for k, v in model.init(S, float(init_std), gen, dt).items()}
            run_model = model
            if reduced:
                run_model, p = class_reduce(model, p)  # type: ignore[misc]

        y = model.labels(dev)
        last_saved = start

        def save(step: int) -> None:
            if ckpt is not None:
                with atomic_path(ckpt) as tmp:
                    torch.save({"fingerprint": fingerprint, "step": step, "elapsed": elapsed + time.perf_counter() - t0,
                                "params": {k: v.cpu() for k, v in p.items()},
                                **({"basis": run_model.basis.cpu()} if isinstance(run_model, ClassReduced) else {}),
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
            f0 = run_model.objective(p)
            check(f0, 0)
            chunks += _record(run_model, p, y, 0, f0)
        step = start
        with torch.no_grad():
            for target in grid[grid > start]:
                target = int(target)
                while step < target:
                    todo = min(check_every, target - step)
                    for _ in range(todo):
                        run_model.step(p, lr)
                    step += todo
                    bar.update(todo)
                    if step < target:
                        check(run_model.objective(p), step)
                f = run_model.objective(p)
                check(f, step)
                chunks += _record(run_model, p, y, step, f)
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
        if isinstance(run_model, ClassReduced):
            p = run_model.expand(p)
        return GDResult(model=model, params=p, history=history, steps=int(steps), lr=float(lr),
                        wall_time_s=wall, device=str(dev))


# --------------------------------------------------------------------------- #
# second-order polishing of GD's endpoint
# --------------------------------------------------------------------------- #
#: Largest number of parameters of one run that :func:`newton_polish` accepts by default (a dense float64
#: Hessian of 6 000² entries is 288 MB, its Cholesky factorization a few seconds on one core).
POLISH_MAX_PARAMS = 6000


@dataclass
class PolishResult:
    """Outcome of :func:`newton_polish`.

    Attributes
    ----------
    model : the model.
    params : the parameters, same layout as :attr:`GDResult.params` (all S runs; runs not polished are copied).
    table : one row per polished run (columns in :func:`newton_polish`).
    eigenvalues : per polished run, the ``n_eigs`` smallest eigenvalues of the (reduced) Hessian at the end
        (empty when ``spectrum=False``).
    flat_tol : the relative tolerance that defined a flat direction.
    """

    model: FeatureModel
    params: Params
    table: pd.DataFrame
    eigenvalues: dict[int, np.ndarray]
    flat_tol: float


class _Face:
    """The smooth problem of one run: the objective, and for a ReLU :class:`~ncutils.models.DeepUFM` one piece
    of the piecewise-smooth objective (the activation ``masks`` fixed) with some pre-activations ``pinned`` to the
    kink z = 0 (and off).

    ``f(x)``: the objective with the masks fixed; ``c(x)``: the pinned pre-activations (constraints c = 0,
    empty when none); ``G(x)``: ∂(data term)/∂(activation) at the pinned units (the slope on the active side of
    each kink)."""

    def __init__(self, model: FeatureModel, unflat: Any, masks: list[Tensor] | None = None,
                 pinned: list[Tensor] | None = None) -> None:
        self.model, self.unflat, self.masks = model, unflat, masks
        self.pinned = pinned or []
        self.n_pinned = sum(int(a.sum()) for a in self.pinned)

    @classmethod
    def start(cls, model: FeatureModel, unflat: Any, x0: Tensor, kink_tol: float) -> _Face:
        """The piece of ``x0``'s activation pattern with |z| ≤ ``kink_tol``·max|z| pinned (ReLU DeepUFM; units of
        dead neurons — outgoing weights below 1e-3 of the largest — are set off, not pinned), else the model."""
        from .models import DeepUFM

        if not (isinstance(model, DeepUFM) and model.activation == "relu" and model.L >= 2):
            return cls(model, unflat)
        with torch.no_grad():
            pre = model.forward(unflat(x0))[1]
        top = max(float(z.abs().max()) for z in pre)
        face = cls(model, unflat, [z > 0 for z in pre], [torch.zeros_like(z, dtype=torch.bool) for z in pre])
        dead = face.dead(x0)
        pinned = [(z.abs() <= kink_tol * top) & ~dd for z, dd in zip(pre, dead, strict=True)]
        masks = [(z > 0) & ~a & ~dd for z, a, dd in zip(pre, pinned, dead, strict=True)]
        return cls(model, unflat, masks, pinned)

    def dead(self, x: Tensor) -> list[Tensor]:
        """Per level, the units of neurons whose outgoing weights (a column of the next W) are below 1e-3 of the
        largest column: at such a neuron the kink is multiplied by ~0 (pinning it would give degenerate
        constraints), so it is set off."""
        p = self.unflat(x)
        out = []
        for layer, mk in enumerate(self.masks or [], start=1):
            cols = p[f"W{layer + 1}"][0].norm(dim=0)  # (d_{layer+1},)
            out.append((cols <= 1e-3 * cols.max()).expand_as(mk))
        return out

    def pre(self, x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            return self._forward(x)[1]

    def _forward(self, x: Tensor, shifts: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        p = self.unflat(x)
        H, pre = p["H1"], []
        for layer, mask in enumerate(self.masks or [], start=1):
            Z = H @ p[f"W{layer}"].transpose(-1, -2)
            pre.append(Z)
            H = Z * mask if shifts is None else Z * mask + shifts[layer - 1]
        return H @ p[f"W{self.model.L}"].transpose(-1, -2), pre  # type: ignore[attr-defined]

    def _data(self, out: Tensor) -> Tensor:
        return (out - self.model.targets(out)).square().sum((-1, -2)) / (2 * self.model.N)

    def f(self, x: Tensor) -> Tensor:
        if self.masks is None:
            return self.model.objective(self.unflat(x))[0]
        return (self._data(self._forward(x)[0]) + self.model._regularizer(self.unflat(x)))[0]  # type: ignore[attr-defined]

    def c(self, x: Tensor) -> Tensor:
        if not self.n_pinned:
            return x[:0]
        return torch.cat([z[a] for z, a in zip(self._forward(x)[1], self.pinned, strict=True)])

    def G(self, x: Tensor) -> Tensor:
        """∂(data term)/∂(activation) at the pinned units (the slope of the objective as z leaves 0 upwards)."""
        from torch.func import grad as func_grad

        zeros = [torch.zeros_like(z) for z in self.pre(x)]
        gs = func_grad(lambda e: self._data(self._forward(x, e)[0]).sum())(zeros)
        return torch.cat([g[a] for g, a in zip(gs, self.pinned, strict=True)])

    def update(self, x: Tensor, nu: Tensor, G: Tensor, tol: float) -> _Face | None:
        """One active-set change, or None: pinned units whose multiplier ν leaves [−G, 0] (by more than ``tol``)
        are released (ν > 0: off, ν + G < 0: on); unpinned units whose z crossed 0 against their mask are pinned."""
        if self.masks is None:
            return None
        masks = [mk.clone() for mk in self.masks]
        pinned = [a.clone() for a in self.pinned]
        changed = False
        if self.n_pinned:
            off, on = nu > tol, nu + G < -tol
            start = 0
            for mk, a in zip(masks, pinned, strict=True):
                idx = a.nonzero(as_tuple=True)
                k = idx[0].numel()
                o, n_ = off[start:start + k], on[start:start + k]
                start += k
                if bool((o | n_).any()):
                    changed = True
                    rel = tuple(i[o | n_] for i in idx)
                    a[rel] = False
                    mk[tuple(i[n_] for i in idx)] = True
        pre = self.pre(x)
        eps = 1e-12 * max(float(z.abs().max()) for z in pre)
        for z, mk, a, dd in zip(pre, masks, pinned, self.dead(x), strict=True):
            crossed = ~a & ~dd & ((mk & (z < -eps)) | (~mk & (z > eps)))
            if bool(crossed.any()):
                changed = True
                a |= crossed
                mk &= ~crossed
        return _Face(self.model, self.unflat, masks, pinned) if changed else None


def _newton(face: _Face, x: Tensor, *, max_iter: int, tol: float) -> tuple[Tensor, int, tuple]:
    """Damped Newton–KKT iteration of :func:`newton_polish` on one face: the point, the iterations and the
    final state ``(f, ∇f, c, J, ν, residual)``."""
    from torch.func import grad as func_grad
    from torch.func import jacrev

    eps = float(torch.finfo(torch.float64).eps)
    n, m_c = x.numel(), face.n_pinned
    g_fn, J_fn = func_grad(face.f), jacrev(face.c)

    def state(x: Tensor) -> tuple[float, Tensor, Tensor, Tensor, Tensor, float]:
        f, g, c = float(face.f(x)), g_fn(x), face.c(x)
        J = J_fn(x) if m_c else x.new_zeros(0, n)
        nu = torch.linalg.lstsq(J.T, g.unsqueeze(-1)).solution.squeeze(-1) if m_c else x.new_zeros(0)
        return f, g, c, J, nu, float(torch.cat([g - J.T @ nu, c]).norm())

    st = state(x)
    mu: float | None = None
    it = 0
    while st[5] > tol and it < max_iter:
        it += 1
        fx, g, c, J, nu, res = st
        Hm = _lagrangian_hessian(face, x, nu)
        scale = float(Hm.diagonal().abs().max())
        mu_min = 1e-10 * scale
        mu = 1e-8 * scale if mu is None else max(mu, mu_min)
        for _ in range(40):
            A = Hm + mu * torch.eye(n, dtype=Hm.dtype)
            if m_c:
                K = torch.cat([torch.cat([A, J.T], 1), torch.cat([J, -mu_min * torch.eye(m_c, dtype=J.dtype)], 1)])
                step = torch.linalg.solve(K, torch.cat([-g, -c]))[:n]
            else:
                step = torch.linalg.solve(A, -g)
            new = state(x + step)
            rises = not m_c and new[0] > fx + 1e3 * eps * max(abs(fx), 1.0)
            if new[5] < res and not rises:
                x, st = x + step, new
                mu = max(mu / 4, mu_min)
                break
            mu *= 4
        else:
            break  # no step lowers the residual: stuck at round-off
    return x, it, st


def _kink_certificate(J: Tensor, g: Tensor, G: Tensor) -> tuple[float, np.ndarray]:
    """min ‖Jᵀν − ∇f‖ over multipliers in the box −G ≤ ν ≤ 0 (``scipy.optimize.lsq_linear``): 0 certifies that
    no direction lowers the non-smooth objective to first order (module docstring of :func:`newton_polish`).
    A pinned unit with G < 0 (turning it on helps) has an empty box: the residual is then > 0."""
    from scipy.optimize import lsq_linear

    Gn = G.numpy()
    if bool((Gn < -(1e-12 + 1e-9 * np.abs(Gn).max())).any()):
        return float("inf"), Gn
    lo = -np.maximum(Gn, 0.0)
    sol = lsq_linear(J.T.numpy(), g.numpy(), bounds=(lo, np.full_like(lo, 1e-300)), method="bvls")
    return float(np.linalg.norm(J.T.numpy() @ sol.x - g.numpy())), sol.x


def _lagrangian_hessian(face: _Face, x: Tensor, nu: Tensor) -> Tensor:
    from torch.func import hessian as func_hessian

    with forward_ad_quietly():  # hessian = jacfwd(jacrev): torch's first forward-AD call warns about its internals
        return func_hessian(lambda z: face.f(z) - face.c(z) @ nu)(x)


def _polish_one(face: _Face, objective: Any, x: Tensor, *, max_iter: int, tol: float, flat_tol: float,
                spectrum: bool, max_rounds: int) -> tuple[Tensor, dict[str, Any], np.ndarray | None]:
    """:func:`newton_polish` on one run: the polished point, its table row and the (reduced) Hessian's spectrum."""
    from torch.func import grad as func_grad

    n = x.numel()
    row: dict[str, Any] = {"params": n, "kinks_start": face.n_pinned, "objective_before": float(objective(x)),
                           "grad_norm_before": float(func_grad(objective)(x).norm())}
    iterations, rounds = 0, 0
    while True:
        x, it, st = _newton(face, x, max_iter=max_iter - iterations, tol=tol)
        iterations += it
        rounds += 1
        nu, G = st[4], face.G(x) if face.n_pinned else st[4]
        cert = _kink_certificate(st[3], st[1], G) if face.n_pinned else None
        if cert is not None and cert[0] <= max(tol, 1e-9 * float(st[1].norm())):
            nxt = None  # first-order stationary for the non-smooth objective: nothing to release
            break
        nxt = face.update(x, nu, G, 1e-8 * (float(G.abs().max()) if face.n_pinned else 1.0))
        if nxt is None or rounds >= max_rounds or iterations >= max_iter:
            break
        face = nxt
    _, g, c, J, nu, res = st
    row.update({"kinks": face.n_pinned, "objective_after": float(objective(x)), "residual_after": res,
                "grad_norm_after": float(func_grad(objective)(x).norm()), "iterations": iterations,
                "rounds": rounds})
    if cert is not None:
        row.update({"kink_residual": cert[0], "kinks_certified": cert[0] <= max(tol, 1e-9 * float(g.norm())),
                    "max_pinned_z": float(c.abs().max())})
    else:
        row.update({"kink_residual": float("nan"), "kinks_certified": None, "max_pinned_z": float("nan")})
    row["converged"] = res <= tol and nxt is None
    ev = None
    if spectrum:
        Hm = _lagrangian_hessian(face, x, nu)
        if face.n_pinned:  # the tangent space of the face: the null space of J
            _, sv, Vh = torch.linalg.svd(J, full_matrices=True)
            B = Vh[int((sv > 1e-12 * sv[0]).sum()):].T
            Hm = B.T @ Hm @ B
        ev = torch.linalg.eigvalsh(Hm).numpy()
        top = float(np.abs(ev).max())
        above = ev[ev > flat_tol * top]
        row.update({"min_eig": float(ev[0]), "max_eig": float(ev[-1]),
                    "flat": int((np.abs(ev) <= flat_tol * top).sum()), "negative": int((ev < -flat_tol * top).sum()),
                    "gap": float(above[0]) if above.size else float("nan")})
    return x, row, ev


def newton_polish(model: FeatureModel, params: Params, *, max_iter: int = 50, tol: float = 1e-12,
                  runs: list[int] | None = None, max_params: int = POLISH_MAX_PARAMS, kink_tol: float = 1e-3,
                  flat_tol: float = 1e-9, spectrum: bool = True, n_eigs: int = 12,
                  max_rounds: int = 10) -> PolishResult:
    """Polish GD's endpoint with a damped (Levenberg–Marquardt) Newton iteration on the same objective, one run
    at a time, in float64: a second-order certificate of the critical point GD was approaching.

    Each run's parameters are flattened to a vector x (``n`` entries, at most ``max_params``); gradients,
    Jacobians and the dense Hessian come from :mod:`torch.func`. The step solves the Newton–KKT system
    ``[[∇²ℒ + μI, Jᵀ], [J, 0]] [Δx; ν] = [−∇f; −c]`` (no constraints: (∇²f + μI)Δx = −∇f) and is accepted when
    the residual ‖(∇f − Jᵀν, c)‖ (ν: least-squares multipliers) drops and, without constraints, the objective
    does not rise (beyond round-off); μ is divided by 4 on success, multiplied by 4 on failure and kept
    ≥ 1e-10·max|diag ∇²ℒ| so that flat directions (a singular Hessian at a non-isolated minimum) and
    indefinite Hessians do not break the solve. Stops when the residual is ≤ ``tol`` or after ``max_iter``.

    **ReLU kinks.** The ReLU :class:`~ncutils.models.DeepUFM` is piecewise smooth, and its minimizers put
    pre-activations exactly at 0 (a unit that is off for a class sits at the kink: any negative value costs
    weight norm): GD then hovers at |z| ~ 1e-8 and a plain Newton step sees the wrong piece. Pre-activations
    with |z| ≤ ``kink_tol``·max|z| at the start are *pinned*: the polish solves min f on the face
    {z_pinned = 0} of the piece of the start's activation pattern (constraints c = z_pinned, the pinned units
    off). Units of dead neurons (outgoing weights below 1e-3 of the largest: the kink is multiplied by ~0) are
    set off instead. After each Newton solve an active-set round releases pinned units whose multiplier leaves
    its box (below) and pins units whose z crossed 0 against their mask, at most ``max_rounds`` rounds.
    At a kink the first-order condition of the non-smooth objective is: there are multipliers ν with
    ∇f = Jᵀν and −G ≤ ν ≤ 0 at every pinned unit, G = ∂(data term)/∂(activation) there (moving z below 0
    must not help: ν ≤ 0; above 0: ν + G ≥ 0). ``kink_residual`` = min ‖Jᵀν − ∇f‖ over that box
    (``scipy.optimize.lsq_linear``; inf when some G < 0); ``kinks_certified``: it is ≤ max(``tol``, 1e-9‖∇f‖).

    Table columns: ``run, params, kinks_start, kinks`` (pinned pre-activations at the start and end),
    ``objective_before/after`` (the model's own objective), ``grad_norm_before`` (‖∇f‖ of the model),
    ``residual_after`` (the KKT residual ‖∇f − Jᵀν‖ + ‖c‖ on the final face: ‖∇f‖ when nothing is pinned),
    ``grad_norm_after`` (the model's autograd ‖∇f‖, with the ReLU's one-sided derivative: not small at a
    kink, for information), ``iterations, rounds, kink_residual, kinks_certified, max_pinned_z, converged``
    (residual ≤ ``tol`` and no active-set change left) and with ``spectrum`` the eigenvalues of the Hessian of
    the Lagrangian on the face's tangent space (the null space of J): ``min_eig, max_eig, flat``
    (|λ| ≤ ``flat_tol``·max|λ|: flat directions), ``negative`` (λ < −``flat_tol``·max|λ|; on a piece whose
    boundary passes through the point — a dead neuron — a negative eigenvalue need not be a descent
    direction of the non-smooth objective), ``gap`` (the smallest eigenvalue above the flat ones);
    ``seconds``. Cost per iteration: a dense Hessian and an (n + kinks)² solve, O(n³); the spectrum adds a
    null-space basis and one ``eigvalsh``, O(n³) (about 2–3 min per run at n = 4 480 on one busy core, see
    :func:`ncutils.studies._multilayer.polished_geometry` for the cheaper class-mean reduction).

    Raises
    ------
    ValueError : a run has more than ``max_params`` parameters (the dense Hessian would be too large).
    """
    pd = need("pandas")
    check_int("max_iter", max_iter, 0)
    check_float("tol", tol, 0.0)
    check_float("kink_tol", kink_tol, 0.0)
    check_float("flat_tol", flat_tol, 0.0)
    check_int("max_params", max_params, 1)
    keys = list(params)
    S = params[keys[0]].shape[0]
    shapes = [tuple(params[k].shape[1:]) for k in keys]
    sizes = [int(np.prod(s)) for s in shapes]
    n = sum(sizes)
    if n > max_params:
        raise ValueError(f"newton_polish: one run has {n} parameters, above max_params = {max_params} "
                         f"(a dense float64 Hessian of {n}² entries is {n * n * 8 / 2**20:.0f} MiB); "
                         "raise max_params if memory and time allow")
    todo = list(range(S)) if runs is None else [check_int("run", r, 0) for r in runs]
    if any(r >= S for r in todo):
        raise ValueError(f"parameter runs must name runs in 0..{S - 1}, got {runs}")
    out = {k: v.detach().to("cpu", torch.float64).clone() for k, v in params.items()}

    def unflat(x: Tensor) -> Params:
        return {k: t.reshape(1, *s) for k, t, s in zip(keys, torch.split(x, sizes), shapes, strict=True)}

    def objective(x: Tensor) -> Tensor:
        return model.objective(unflat(x))[0]

    rows, eigs = [], {}
    for r in todo:
        t0 = time.perf_counter()
        x = torch.cat([out[k][r].reshape(-1) for k in keys])
        face = _Face.start(model, unflat, x, kink_tol)
        x, row, ev = _polish_one(face, objective, x, max_iter=max_iter, tol=tol, flat_tol=flat_tol,
                                 spectrum=spectrum, max_rounds=max_rounds)
        if ev is not None:
            eigs[r] = ev[:n_eigs]
        row = {"run": r, **row, "seconds": time.perf_counter() - t0}
        for k, t in unflat(x).items():
            out[k][r] = t[0]
        rows.append(row)
    return PolishResult(model=model, params=out, table=pd.DataFrame(rows), eigenvalues=eigs, flat_tol=flat_tol)
