"""Microseconds per GD step per problem: eager (generic) vs fused step vs the batched-GEMM floor, and the total
GD work of every theory notebook at its figure profiles with the floor time it implies (docs/benchmarks.md).

For every model the theory notebooks run, at their paper sizes and batch sizes (seeds run as one program):

* **eager**: ``FeatureModel.step`` — θ ← θ − lr ∇f(θ) from the model's closed-form ``gradient`` (a dict of new
  tensors per step, weight decay and 1/N as separate passes);
* **fused**: the model's own ``step`` (in place, preallocated buffers, decay and 1/N folded into ``baddbmm_``);
* **floor**: ``torch.bmm`` of exactly the step's matrix products (same shapes, same batch, preallocated outputs):
  the float64 batched-GEMM rate of this machine for the step's FLOPs;
* **reduced**: for the linear MSE models (:func:`ncutils.models.class_reducible`), the fused step in the exact
  class-reduced coordinates that :func:`ncutils.solve.gradient_descent` runs by default (``K + d₁`` rows instead
  of ``N``; :class:`ncutils.models.ClassReduced`), and the floor of *its* products.

Notebook 05 runs no GD: its row is the right-hand side dH/dt of the perturbation model's gradient flow
(``PerturbationModel.flow_velocity`` as ``PerturbationModel.flow`` hands it to SciPy's DOP853), which has one
implementation only (timed as "eager"; no fused path exists), against the floor of its four matrix products.

All run with the thread count :func:`ncutils.solve.gradient_descent` picks (one intra-op thread for these
sizes). Then one notebook-sized step (ReLU extended UFM, 10 seeds) is timed again while two other CPU-bound
processes run, on one thread and on two (torch's default here); target: ≤ 3× its idle time.

Second table: for each theory notebook (01–06, 08) and each profile ``make figures`` runs (every profile of
``profiles/<notebook>.yaml`` but ``small``), the GD work Σ over its runs of FLOPs per step (the ``gemms`` count
below, with the rows GD really runs on: ``K + d₁`` for class-reducible models) × runs per batched program × steps,
from an explicit per-notebook table of the runs (``runs_01`` …
``runs_08``, reading the notebook's parameters cell and the profile), the floor time at the batched-GEMM rate
measured here for each run's shapes (1 and 2 threads), and the wall time of the notebook's last recorded run
(``metadata.ncutils.stamps`` of the committed notebook).

    python bench/gd_step.py            # writes docs/bench_gd_step.json and the section of docs/benchmarks.md
    python bench/gd_step.py --quick --out-json /tmp/gd.json --out-md /tmp/gd.md   # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncutils.device import threads_for
from ncutils.models import UFM, DeepUFM, FeatureModel, class_reduce, extended_ufm, gd_rows
from ncutils.perturbation import PerturbationModel
from ncutils.phase import auto_chunk, phase_model
from ncutils.pipeline.runner import declared_parameters, figure_profiles, load_profile, notebook_path, stamps
from ncutils.solve import threads

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## GD step: eager vs fused vs floor"

#: Timing effort of :func:`per_call` (seconds per block, blocks) and of the loaded-machine test; ``--quick`` shrinks it.
TIMING = {"budget": 0.25, "blocks": 3, "min_reps": 3, "floor_budget": 0.1, "floor_blocks": 2, "settle": 0.5,
          "busy_budget": 0.5}
QUICK = {"budget": 0.004, "blocks": 1, "min_reps": 1, "floor_budget": 0.002, "floor_blocks": 1, "settle": 0.1,
         "busy_budget": 0.01}

# (label, notebook, model, runs S): the paper settings' sizes and batch sizes.
CASES: list[tuple[str, str, FeatureModel, int]] = [
    ("UFM MSE", "01", UFM(K=4, n=50, d=20), 1),
    ("UFM CE", "01", UFM(K=4, n=50, d=20, loss="ce"), 1),
    ("UFM CE, K=4, n=10, d=10", "06", UFM(K=4, n=10, d=10, lambda_W=0.0, lambda_H=0.0, loss="ce"), 5),
    ("EUFM linear", "02", extended_ufm(4, 50, 20, "linear"), 5),
    ("EUFM ReLU", "03", extended_ufm(4, 50, 20, "relu"), 10),
    *((f"DUFM L={L}", "04", DeepUFM(K=2, n=50, d=20, L=L, lambda_W=4e-3, lambda_H=4e-3), 10) for L in (2, 3, 4, 5)),
    ("DUFM L=4, K=10, d=30", "04", DeepUFM(K=10, n=5, d=30, L=4, lambda_W=4e-3, lambda_H=4e-3), 10),
    ("UFM MSE grid", "08", UFM(K=4, n=50, d=20), 98),
    ("EUFM linear grid", "08", extended_ufm(4, 50, 20, "linear"), 98),
    ("DUFM L=3 linear grid", "08", DeepUFM(K=4, n=50, d=20, L=3, activation="linear"), 98),
]
LOADED_CASE = "EUFM ReLU"
#: Notebook 05's gradient flow at its paper settings (K=4, n=10, d=10, λ_W=√2, λ_H=0.2): one dH/dt per evaluation.
FLOW = ("perturbation flow dH/dt", "05", PerturbationModel(K=4, n=10, d=10, lambda_W=math.sqrt(2), lambda_H=0.2))

Model = FeatureModel | PerturbationModel




def gemms(model: Model, S: int = 1, rows: int | None = None) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one GD step on ``rows`` feature rows (default N; each batched over S
    runs); for the perturbation
    model, of one evaluation of dH/dt = −(H W*ᵀ − Y) W* − λ_H H with W* = (Hᵀ H + nλ_W I)⁻¹ Hᵀ Y (its d×d
    solve is not a matrix product: not counted)."""
    if isinstance(model, PerturbationModel):
        N, d, K = model.N, model.d, model.K
        return [(d, N, d), (d, N, K), (N, d, K), (N, K, d)]  # HᵀH, HᵀY, H W*ᵀ, (·) W*
    N = model.N if rows is None else rows
    dims = (model.d, model.K) if isinstance(model, UFM) else (*model.widths, model.K)
    out = []
    for a, b in pairwise(dims):
        out += [(N, a, b), (b, N, a), (N, b, a)]  # forward, ∇W, back to the features
    return out


def step_flops(model: Model, S: int = 1, rows: int | None = None) -> float:
    """FLOPs of one step of ``S`` runs on ``rows`` rows: 2mkn per matrix product of :func:`gemms`
    (= ``model.step_flops(S)`` for N rows)."""
    return float(S * sum(2 * m * k * n for m, k, n in gemms(model, S, rows)))


def per_call(fn: Callable[[], Any], budget: float | None = None, blocks: int | None = None) -> float:
    """Best seconds per call of ``fn`` over ``blocks`` blocks of about ``budget`` seconds each."""
    budget = TIMING["budget"] if budget is None else budget
    blocks = int(TIMING["blocks"] if blocks is None else blocks)
    fn()
    t0 = time.perf_counter()
    fn()
    reps = max(int(TIMING["min_reps"]), int(budget / max(time.perf_counter() - t0, 1e-7)))
    best = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def floor_time(model: Model, S: int, budget: float | None = None, blocks: int | None = None,
               rows: int | None = None) -> float:
    """Seconds of ``torch.bmm`` of the step's matrix products on ``rows`` rows (default N; preallocated operands
    and outputs, float64)."""
    ops = []
    for m, k, n in gemms(model, S, rows):
        A, B, C = (torch.randn(S, *shape, dtype=torch.float64) for shape in ((m, k), (k, n), (m, n)))
        ops.append((A, B, C))

    def run() -> None:
        for A, B, C in ops:
            torch.bmm(A, B, out=C)

    return per_call(run, budget, blocks)


def step_times(model: FeatureModel, S: int, lr: float = 1e-3) -> tuple[float, float, float | None]:
    """Seconds per step: eager, fused, and the fused step in class-reduced coordinates (None if not reducible)."""
    p = model.init(S, 0.3, torch.Generator().manual_seed(0), torch.float64)
    eager = per_call(lambda: FeatureModel.step(model, p, lr))
    fused = per_call(lambda: model.step(p, lr))
    red = class_reduce(model, p)
    if red is None:
        return eager, fused, None
    rmodel, rp = red
    return eager, fused, per_call(lambda: rmodel.step(rp, lr))


def flow_times(model: PerturbationModel) -> dict[str, float]:
    """Seconds per dH/dt evaluation as :meth:`PerturbationModel.flow` hands it to ``solve_ivp`` (NumPy vector in,
    NumPy vector out; the same closure), from a random non-collapsed H; and the floor with the d×d solve."""
    g = torch.Generator().manual_seed(0)
    H0 = torch.randn(model.N, model.d, generator=g, dtype=torch.float64)
    shape, x = H0.shape, H0.reshape(-1).numpy().copy()

    def rhs() -> np.ndarray:  # PerturbationModel.flow's rhs(_t, x)
        return model.flow_velocity(torch.from_numpy(x).reshape(shape)).reshape(-1).numpy()

    G = torch.randn(model.d, model.d, dtype=torch.float64)
    G = G @ G.T + model.d * torch.eye(model.d, dtype=torch.float64)
    Bk, X = torch.randn(model.d, model.K, dtype=torch.float64), torch.empty(model.d, model.K, dtype=torch.float64)
    return {"eager": per_call(rhs), "solve": per_call(lambda: torch.linalg.solve(G, Bk, out=X))}


def loaded(model: FeatureModel, S: int) -> dict[str, float]:
    """Fused step of ``model`` idle and with two busy processes, on 1 and 2 threads (seconds per step)."""
    p = model.init(S, 0.3, torch.Generator().manual_seed(0), torch.float64)
    res = {}
    for n in (1, 2):
        with threads(n):
            res[f"idle_{n}"] = per_call(lambda: model.step(p, 1e-3))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(TIMING["settle"])
        for n in (1, 2):
            with threads(n):
                res[f"busy_{n}"] = per_call(lambda: model.step(p, 1e-3), budget=TIMING["busy_budget"])
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    return res


# ------------------------------------------------------------------ total GD work of each notebook

@dataclass(frozen=True)
class GDRun:
    """``programs`` batched GD programs of ``S`` runs each, ``steps`` steps each, of ``model`` (one line of a
    notebook's GD work)."""

    what: str
    model: FeatureModel
    S: int
    steps: int
    programs: int = 1

    @property
    def flops(self) -> float:
        """FLOPs of the products GD runs (class-reduced rows where :func:`ncutils.models.gd_rows` says so)."""
        return step_flops(self.model, self.S, gd_rows(self.model)) * self.steps * self.programs

    @property
    def full_flops(self) -> float:
        """FLOPs of the same steps on all N rows (no class reduction)."""
        return step_flops(self.model, self.S) * self.steps * self.programs


def notebook_parameters(stem: str, profile: str) -> dict[str, Any]:
    """The notebook's parameters cell, overridden by ``profile`` (what ``make figures`` runs)."""
    return {**declared_parameters(notebook_path(stem)), **load_profile(stem, profile)}


def runs_01(p: dict[str, Any]) -> list[GDRun]:
    """01_ufm_mse: three single runs (MSE, MSE + bias — the eager step, same products —, CE) of ``steps`` and the
    threshold sweep (``sweep_points`` values of c as one program) of ``sweep_steps``."""
    K, n, d = p["K"], p["n"], p["d"]
    return [GDRun("MSE, no bias", UFM(K=K, n=n, d=d), 1, p["steps"]),
            GDRun("MSE + bias", UFM(K=K, n=n, d=d, bias=True), 1, p["steps"]),
            GDRun("CE, no bias", UFM(K=K, n=n, d=d, loss="ce"), 1, p["steps"]),
            GDRun("threshold sweep", UFM(K=K, n=n, d=d), p["sweep_points"], p["sweep_steps"])]


def runs_02(p: dict[str, Any]) -> list[GDRun]:
    """02_linear_eufm: the linear extended UFM, ``seeds`` runs of ``steps``, and the initialization study
    (``len(init_scales) × seeds`` runs as one program) of ``steps``."""
    m = extended_ufm(p["K"], p["n"], p["d"], "linear")
    return [GDRun("linear EUFM", m, p["seeds"], p["steps"]),
            GDRun("init scales", m, len(p["init_scales"]) * p["seeds"], p["steps"])]


def runs_03(p: dict[str, Any]) -> list[GDRun]:
    """03_relu_eufm: ReLU and linear extended UFM, ``seeds`` runs of ``steps`` each; with ``studies``: the ReLU
    initialization study (``len(init_scales) × seeds`` runs of ``study_steps``) and the threshold sweep
    (``sweep_points × sweep_seeds`` runs of the ReLU EUFM, ``sweep_steps``)."""
    K, n, d = p["K"], p["n"], p["d"]
    relu, linear = extended_ufm(K, n, d, "relu"), extended_ufm(K, n, d, "linear")
    out = [GDRun("ReLU EUFM", relu, p["seeds"], p["steps"]), GDRun("linear EUFM", linear, p["seeds"], p["steps"])]
    if p["studies"]:
        out += [GDRun("init scales", relu, len(p["init_scales"]) * p["seeds"], p["study_steps"]),
                GDRun("threshold sweep", relu, p["sweep_points"] * p["sweep_seeds"], p["sweep_steps"])]
    return out


def runs_04(p: dict[str, Any]) -> list[GDRun]:
    """04_deep_ufm: binary part (one DUFM per depth in ``depths``, ``seeds`` runs of ``steps``); low-rank part
    (K = ``multi_K``, ``seeds`` runs of ``multi_steps``); width study (one DUFM per width in ``width_study``,
    ``seeds`` runs of ``study_steps``); weight-decay study (``len(lambda_study) × seeds`` runs of ``study_steps``);
    the appendix setting (one DUFM per K in ``appendix_K``, ``seeds`` runs of ``appendix_steps``)."""
    act = p["activation"]
    out = [GDRun(f"binary L={L}", DeepUFM(K=p["K"], n=p["n"], d=p["width"], L=L, activation=act), p["seeds"],
                 p["steps"]) for L in p["depths"]]

    def multi(width: int) -> DeepUFM:
        return DeepUFM(K=p["multi_K"], n=p["multi_n"], d=width, L=p["multi_L"], activation=act)

    out.append(GDRun("low-rank K>2", multi(p["multi_width"]), p["seeds"], p["multi_steps"]))
    out += [GDRun(f"width {w}", multi(w), p["seeds"], p["study_steps"]) for w in p["width_study"]]
    out.append(GDRun("weight decays", multi(p["multi_width"]), len(p["lambda_study"]) * p["seeds"], p["study_steps"]))
    out += [GDRun(f"appendix K={K}", DeepUFM(K=K, n=p["multi_n"], d=p["multi_width"], L=p["multi_L"], activation=act),
                  p["seeds"], p["appendix_steps"]) for K in p["appendix_K"]]
    return out


def runs_05(p: dict[str, Any]) -> list[GDRun]:
    """05_perturbation: no gradient descent (an ODE solve, trust-region minimizations, implicit Jacobians and an
    MLP trained by SGD: see :data:`NOT_COUNTED`)."""
    return []


def runs_06(p: dict[str, Any]) -> list[GDRun]:
    """06_layer_peeled: the unregularized CE UFM, ``seeds`` runs of ``steps``, and the weight-decay contrast,
    ``seeds`` runs of ``wd_steps``."""
    K, n, d = p["K"], p["n"], p["d"]
    return [GDRun("ULPM (no decay)", UFM(K=K, n=n, d=d, lambda_W=0.0, lambda_H=0.0, loss="ce"), p["seeds"], p["steps"]),
            GDRun("weight decay", UFM(K=K, n=n, d=d, lambda_W=p["wd_lambda"], lambda_H=p["wd_lambda"], loss="ce"),
                  p["seeds"], p["wd_steps"])]


def runs_08(p: dict[str, Any]) -> list[GDRun]:
    """08_phase_diagrams: for each of the UFM, the extended UFM and the deep UFM (L = ``dufm_L``), the
    ``grid_points² × seeds`` runs of ``steps``, in batched programs of ``chunk`` runs (0: ``auto_chunk`` on a
    CPU — cache-sized; the recorded wall times are CPU runs)."""
    S = p["grid_points"] ** 2 * p["seeds"]
    out = []
    for kind, act in (("ufm", "linear"), ("eufm", p["eufm_activation"]), ("dufm", p["dufm_activation"])):
        m = phase_model(kind, p["K"], p["n"], p["d"], 1.0, 1.0, L=p["dufm_L"], activation=act)
        chunk = p["chunk"] or auto_chunk(m, S, torch.device("cpu"), torch.float64)
        full, rest = divmod(S, chunk)
        if full:
            out.append(GDRun(f"{kind} grid", m, chunk, p["steps"], full))
        if rest:
            out.append(GDRun(f"{kind} grid (last chunk)", m, rest, p["steps"]))
    return out


#: One function per theory notebook: its GD runs from its parameters (cell defaults overridden by a profile).
COUNTERS: dict[str, Callable[[dict[str, Any]], list[GDRun]]] = {
    "01_ufm_mse": runs_01, "02_linear_eufm": runs_02, "03_relu_eufm": runs_03, "04_deep_ufm": runs_04,
    "05_perturbation": runs_05, "06_layer_peeled": runs_06, "08_phase_diagrams": runs_08,
}

#: Left out of every notebook's GD count.
NOT_COUNTED_GD = ("the objective checks of every GD run (one forward product every `check_every` steps: 100, 1000 in "
                  "06 — under 0.4 % of the step products) and the metrics at its recorded steps (class means, SVDs and "
                  "eigendecompositions for NC1–NC3)")
#: What each notebook computes besides its GD steps (not GEMM FLOPs, or not derivable from its parameters).
NOT_COUNTED: dict[str, str] = {
    "01_ufm_mse": "the closed-form optima.",
    "02_linear_eufm": "the closed-form optimum (a scalar minimization).",
    "03_relu_eufm": "the closed-form optima of the sweep points (scalar minimizations).",
    "04_deep_ufm": "the closed-form optima and the class-mean ranks (SVDs) of every run.",
    "05_perturbation": ("no GD at all. Not counted: the gradient flow (DOP853, an adaptive number of dH/dt "
                        "evaluations{flow}), the β sweep's trust-region Newton–CG minimizations (Hessian-vector "
                        "products by torch.func), the Jacobians (dense Hessians and LU solves of (Nd)×(Nd) matrices, "
                        "SVDs of their blocks), and the MNIST chain (an MLP trained by SGD, then trust-ncg per "
                        "layer); its wall time is all of that plus reading MNIST."),
    "06_layer_peeled": "the SLSQP max-margin solves (`maxmargin_starts` starts).",
    "08_phase_diagrams": "the closed-form theory of every point and the output ranks (SVDs).",
}


def gd_runs(stem: str, profile: str) -> list[GDRun]:
    """The GD runs notebook ``stem`` performs under ``profile``."""
    return COUNTERS[stem](notebook_parameters(stem, profile))


def recorded_flow_nfev() -> int | None:
    """dH/dt evaluations of the committed notebook 05's flow (its printed output), or None."""
    nb = json.loads(notebook_path("05_perturbation").read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            m = re.search(r"(\d+) evaluations of dH/dt", "".join(out.get("text", "")))
            if m:
                return int(m.group(1))
    return None


def note(stem: str) -> str:
    text = NOT_COUNTED[stem]
    if stem == "05_perturbation":
        nfev, mflop = recorded_flow_nfev(), step_flops(FLOW[2]) / 1e6
        text = text.format(flow=f": {nfev} in the committed paper run × {mflop:.4f} MFLOP = "
                           f"{nfev * mflop / 1e6:.1e} TFLOP" if nfev else "")
    return text


def work_table(measure: bool = True) -> list[dict[str, Any]]:
    """One row per notebook and figure profile: runs, TFLOP, floor seconds on 1 and 2 threads (``measure``:
    timed here per distinct batched shape, else None), and the last recorded wall time."""
    cache: dict[tuple, float] = {}

    def floor_s(run: GDRun, n: int) -> float:
        rows = gd_rows(run.model)
        key = (tuple(gemms(run.model, 1, rows)), run.S, n)
        if key not in cache:
            with threads(n):
                cache[key] = floor_time(run.model, run.S, TIMING["floor_budget"], TIMING["floor_blocks"], rows)
        return cache[key]

    rows = []
    for stem in COUNTERS:
        recorded = stamps(notebook_path(stem))
        for profile in figure_profiles(stem):
            runs = gd_runs(stem, profile)
            row: dict[str, Any] = {
                "notebook": stem, "profile": profile, "flops": sum(r.flops for r in runs),
                "full_flops": sum(r.full_flops for r in runs),
                "run_steps": sum(r.S * r.steps * r.programs for r in runs),
                "wall_time_s": recorded.get(profile, {}).get("wall_time_s"),
                "runs": [{"what": r.what, "model": describe(r.model), "S": r.S, "steps": r.steps,
                          "programs": r.programs, "rows": gd_rows(r.model),
                          "mflop_per_step": step_flops(r.model, r.S, gd_rows(r.model)) / 1e6,
                          "tflop": r.flops / 1e12} for r in runs],
            }
            for n in (1, 2):
                if measure and runs:
                    secs = [floor_s(r, n) * r.steps * r.programs for r in runs]
                    for r, s in zip(row["runs"], secs, strict=True):
                        r[f"floor_s_{n}"] = s
                    row[f"floor_s_{n}"] = sum(secs)
                else:
                    row[f"floor_s_{n}"] = 0.0 if measure else None
            rows.append(row)
    return rows


def describe(model: FeatureModel) -> str:
    if isinstance(model, UFM):
        return f"UFM {model.loss}{' + bias' if model.bias else ''}, K={model.K}, n={model.n}, d={model.d}"
    assert isinstance(model, DeepUFM)
    return f"DUFM L={model.L} {model.activation}, K={model.K}, n={model.n}, d={model.d}"


# ------------------------------------------------------------------ report

def _secs(s: float | None) -> str:
    return "—" if s is None else f"{s:.3g}" if s < 10 else f"{s:.0f}"


def markdown(rows: list[dict], load: dict, meta: dict, work: list[dict] | None = None) -> str:
    lines = [SECTION, "",
             f"Command: `{meta.get('command', 'python bench/gd_step.py')}` (run {meta['date']}, {meta['machine']}, "
             f"torch {meta['torch']}, float64, intra-op threads as `gradient_descent` picks them (column thr: eager, "
             "fused and floor / class-reduced); "
             f"load average {meta['load']} at the start: other jobs shared the cores). µs per GD step per problem "
             "(step time / S); **eager**: `FeatureModel.step` from the closed-form `gradient`; **fused**: the model's "
             "`step`; **floor**: `torch.bmm` of the same matrix products (preallocated), i.e. the measured "
             "batched-GEMM rate for the step's FLOPs; **class-reduced**: the fused step of a linear MSE model in the "
             "exact class-reduced coordinates (`ncutils.models.ClassReduced`: K + d₁ rows instead of N = Kn, the "
             "same GD iterates to round-off) that `gradient_descent` runs by default, and the floor of its own "
             "(smaller) products; MFLOP/step and fused / floor are those of the full N rows. "
             f"JSON: `{meta.get('json', 'docs/bench_gd_step.json')}`.", "",
             "| model (notebook) | S | thr | MFLOP/step | eager µs | fused µs | floor µs | eager / fused "
             "| fused / floor | fused GFLOP/s | class-reduced µs (rows) | its floor µs | fused / reduced |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("fused_us") is None:  # one implementation: its time in the eager column, ratios against it
            lines.append(f"| {r['model']} ({r['notebook']}) | {r['S']} | {r['threads']} | {r['flops'] / 1e6:.4f} "
                         f"| {r['eager_us']:.1f} "
                         f"| — (one implementation) | {r['floor_us']:.1f} | — | {r['eager_us'] / r['floor_us']:.2f}× "
                         f"(eager) | {r['eager_gflops']:.2f} (eager) | — | — | — |")
            continue
        red = ("— (not exact: ReLU or CE) | — | —" if r.get("reduced_us") is None else
               f"{r['reduced_us']:.1f} ({r['reduced_rows']}) | {r['reduced_floor_us']:.1f} | "
               f"{r['fused_us'] / r['reduced_us']:.1f}×")
        thr = f"{r['threads']}" + (f" / {r['reduced_threads']}" if r.get("reduced_us") is not None else "")
        lines.append(f"| {r['model']} ({r['notebook']}) | {r['S']} | {thr} | {r['flops'] / 1e6:.2f} | "
                     f"{r['eager_us']:.1f} | {r['fused_us']:.1f} | {r['floor_us']:.1f} | "
                     f"{r['eager_us'] / r['fused_us']:.2f}× | "
                     f"{r['fused_us'] / r['floor_us']:.2f}× | {r['fused_gflops']:.1f} | {red} |")
    flow = next((r for r in rows if r.get("fused_us") is None), None)
    if flow is not None:
        lines += ["", f"The {flow['model']} row (notebook 05, K=4, n=10, d=10): one evaluation of "
                  "`PerturbationModel.flow_velocity` as `PerturbationModel.flow` passes it to SciPy's DOP853 "
                  "(NumPy in and out). It has a single implementation — there is no fused path, so no speedup "
                  "is claimed; its MFLOP and floor are the four products HᵀH, HᵀY, H W*ᵀ, (H W*ᵀ − Y) W*, without "
                  f"the d×d solve for W* ({flow['solve_us']:.1f} µs by itself, not a matrix product)."]
    lines += ["", f"Loaded machine: one fused step of the {load['model']} (S = {load['S']}) as the machine was found "
              f"(\"idle\": load average {meta['load']}) vs with two more CPU-bound processes "
              "(`python -c \"while True: pass\"`) on the 2 cores (µs per step):", "",
              "| intra-op threads | idle | two busy processes | busy / idle |", "|---:|---:|---:|---:|"]
    for n in (1, 2):
        i, b = load[f"idle_{n}"] * 1e6, load[f"busy_{n}"] * 1e6
        lines.append(f"| {n} | {i:.0f} | {b:.0f} | {b / i:.1f}× |")
    lines += ["", "Target ≤ 3× the idle time; `gradient_descent` runs these sizes on one thread "
              "(`ncutils.device.threads_for`, threshold `GD_THREAD_FLOPS`).", ""]
    if work:
        lines += work_markdown(work)
    return "\n".join(lines)


def work_markdown(work: list[dict]) -> list[str]:
    lines = ["### Total GD work per notebook and the floor it implies", "",
             "Each theory notebook at each profile `make figures` runs (`profiles/<notebook>.yaml` but `small`; "
             "`paper: {}` = the parameters cell's defaults): TFLOP = Σ over its GD runs of MFLOP per step (the "
             "products above, `gemms` in `bench/gd_step.py`) × runs per batched program × steps × programs, from "
             "the per-notebook run tables `runs_01` … `runs_08` of `bench/gd_step.py` (they read the parameters and "
             "the profile, so a changed profile changes the count). **floor**: the same steps at the `torch.bmm` "
             "rate measured in this run for each run's shapes and batch (1 and 2 intra-op threads); **GFLOP/s**: "
             "TFLOP / floor (1 thread); **TFLOP on N rows**: the same steps without the class reduction (what the "
             "notebooks ran before it); **TFLOP run** and the floors: on the rows GD runs on (K + d₁ for the linear "
             "MSE models); **wall**: the notebook's last recorded run (`metadata.ncutils.stamps` of "
             "the committed notebook, a whole notebook with setup, metrics, figures and non-GD work).", "",
             "| notebook | profile | GD runs × steps | TFLOP on N rows | TFLOP run | floor GFLOP/s (1 thread) "
             "| floor s (1 thread) | floor s (2 threads) | recorded wall s | wall / floor (1 thread) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in work:
        f1, f2, wall = w["floor_s_1"], w["floor_s_2"], w["wall_time_s"]
        rate = f"{w['flops'] / f1 / 1e9:.1f}" if f1 else "—"
        ratio = f"{wall / f1:.1f}×" if f1 and wall else "—"
        lines.append(f"| {w['notebook']} | {w['profile']} | {w['run_steps']:.3g} | {w['full_flops'] / 1e12:.4g} "
                     f"| {w['flops'] / 1e12:.4g} | {rate} "
                     f"| {_secs(f1) if w['flops'] else '0 (no GD)'} | {_secs(f2) if w['flops'] else '0 (no GD)'} "
                     f"| {_secs(wall)} | {ratio} |")
    lines += ["", f"Not counted: {NOT_COUNTED_GD}; and per notebook:", ""]
    lines += [f"* {stem}: {note(stem)}" for stem in dict.fromkeys(w["notebook"] for w in work)]
    lines.append("")
    return lines


def write_section(text: str, path: Path) -> None:
    doc = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text + "\n", doc)
    else:
        doc = (doc.rstrip() + "\n\n" if doc.strip() else "") + text
    path.write_text(doc)


def _shown(path: str) -> str:
    """``path`` relative to the repository when inside it (for the docs), '' → 'not written'."""
    if not path:
        return "not written"
    p = Path(path).resolve()
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: a few ms per timing, a short loaded test; numbers are rough and the docs are "
                         "not written (only --out-json/--out-md, if given)")
    ap.add_argument("--out-json", "--json", dest="out_json", default=None,
                    help="JSON path (default: docs/bench_gd_step.json; with --quick: not written)")
    ap.add_argument("--out-md", "--doc", dest="out_md", default=None,
                    help="markdown file whose section is replaced (default: docs/benchmarks.md; with --quick: not "
                         "written); '' to leave the docs alone")
    a = ap.parse_args(argv)
    if a.quick:
        TIMING.update(QUICK)
    out_json = a.out_json if a.out_json is not None else ("" if a.quick else str(ROOT / "docs" / "bench_gd_step.json"))
    out_md = a.out_md if a.out_md is not None else ("" if a.quick else str(ROOT / "docs" / "benchmarks.md"))
    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg()), "python": platform.python_version(),
            "command": "python bench/gd_step.py" + (" --quick" if a.quick else ""), "quick": a.quick,
            "json": _shown(out_json)}
    rows = []
    t_start = time.perf_counter()
    for label, nb, model, S in CASES:
        flops = model.step_flops(S)
        assert flops == step_flops(model, S), label
        n = threads_for(flops)
        n_red = threads_for(step_flops(model, S, gd_rows(model)))  # what gradient_descent picks for the reduced step
        with threads(n):
            eager, fused, _ = step_times(model, S)
            floor = floor_time(model, S)
        with threads(n_red):
            red = step_times(model, S)[2]
            red_floor = None if red is None else floor_time(model, S, rows=gd_rows(model))
        rows.append({"model": label, "notebook": nb, "S": S, "flops": flops, "threads": n, "reduced_threads": n_red,
                     "eager_us": eager / S * 1e6, "fused_us": fused / S * 1e6, "floor_us": floor / S * 1e6,
                     "fused_gflops": flops / fused / 1e9, "floor_gflops": flops / floor / 1e9,
                     "reduced_rows": gd_rows(model) if red is not None else None,
                     "reduced_us": None if red is None else red / S * 1e6,
                     "reduced_floor_us": None if red_floor is None else red_floor / S * 1e6})
        r = rows[-1]
        print(f"{label:24s} S={S:3d} eager {r['eager_us']:8.1f}  fused {r['fused_us']:8.1f}  floor "
              f"{r['floor_us']:8.1f}" + ("" if red is None else f"  reduced {r['reduced_us']:8.1f}") +
              " µs/step/problem", flush=True)
    label, nb, pm = FLOW
    flops = step_flops(pm)
    n = threads_for(flops)
    with threads(n):
        ft = flow_times(pm)
        floor = floor_time(pm, 1)
    rows.append({"model": label, "notebook": nb, "S": 1, "flops": flops, "threads": n, "eager_us": ft["eager"] * 1e6,
                 "fused_us": None, "floor_us": floor * 1e6, "solve_us": ft["solve"] * 1e6,
                 "eager_gflops": flops / ft["eager"] / 1e9, "floor_gflops": flops / floor / 1e9,
                 "note": "one implementation (PerturbationModel.flow_velocity): no fused path"})
    print(f"{label:24s} S=  1 eager {ft['eager'] * 1e6:8.1f}  (one implementation)  floor {floor * 1e6:8.1f} µs "
          f"(+ d×d solve {ft['solve'] * 1e6:.1f} µs)", flush=True)
    _, _, model, S = next(c for c in CASES if c[0] == LOADED_CASE)
    load = {"model": LOADED_CASE, "S": S, **loaded(model, S)}
    print({k: (f"{v * 1e6:.0f} µs" if isinstance(v, float) else v) for k, v in load.items()}, flush=True)
    work = work_table()
    for w in work:
        print(f"{w['notebook']:18s} {w['profile']:6s} {w['flops'] / 1e12:9.4f} TFLOP  floor {_secs(w['floor_s_1'])} s "
              f"(1 thread), {_secs(w['floor_s_2'])} s (2)  recorded wall {_secs(w['wall_time_s'])} s", flush=True)
    meta["bench_s"] = round(time.perf_counter() - t_start, 1)
    if out_json:
        Path(out_json).write_text(json.dumps({"meta": meta, "rows": rows, "loaded": load, "work": work}, indent=1)
                                  + "\n")
    if out_md:
        write_section(markdown(rows, load, meta, work), Path(out_md))
    wrote = " and ".join(p for p in (out_json, out_md) if p)
    print((f"wrote {wrote}" if wrote else "wrote nothing (--quick)") + f" in {meta['bench_s']} s")


if __name__ == "__main__":
    main()
