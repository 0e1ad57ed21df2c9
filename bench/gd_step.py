"""Microseconds per GD step per problem: eager (generic) vs fused step vs the batched-GEMM floor (docs/benchmarks.md).

For every model the theory notebooks run, at their paper sizes and batch sizes (seeds run as one program):

* **eager**: ``FeatureModel.step`` — θ ← θ − lr ∇f(θ) from the model's closed-form ``gradient`` (a dict of new
  tensors per step, weight decay and 1/N as separate passes);
* **fused**: the model's own ``step`` (in place, preallocated buffers, decay and 1/N folded into ``baddbmm_``);
* **floor**: ``torch.bmm`` of exactly the step's matrix products (same shapes, same batch, preallocated outputs):
  the float64 batched-GEMM rate of this machine for the step's FLOPs.

All three run with the thread count :func:`ncutils.solve.gradient_descent` picks (one intra-op thread for
these sizes). Then one notebook-sized step (ReLU extended UFM, 10 seeds) is timed again while two other
CPU-bound processes run, on one thread and on two (torch's default here); target: ≤ 3× its idle time.

    python bench/gd_step.py            # writes docs/bench_gd_step.json and the section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import torch

from ncutils.device import threads_for
from ncutils.models import UFM, DeepUFM, FeatureModel, extended_ufm
from ncutils.solve import threads

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## GD step: eager vs fused vs floor"

# (label, notebook, model, runs S): the paper settings' sizes and batch sizes.
CASES: list[tuple[str, str, FeatureModel, int]] = [
    ("UFM MSE", "01", UFM(K=4, n=50, d=20), 1),
    ("UFM CE", "01/06", UFM(K=4, n=50, d=20, loss="ce"), 1),
    ("EUFM linear", "02", extended_ufm(4, 50, 20, "linear"), 5),
    ("EUFM ReLU", "03", extended_ufm(4, 50, 20, "relu"), 10),
    *((f"DUFM L={L}", "04", DeepUFM(K=2, n=50, d=20, L=L, lambda_W=4e-3, lambda_H=4e-3), 10) for L in (2, 3, 4, 5)),
    ("DUFM L=4, K=10, d=30", "04", DeepUFM(K=10, n=5, d=30, L=4, lambda_W=4e-3, lambda_H=4e-3), 10),
]


def gemms(model: FeatureModel, S: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one GD step (each batched over S runs)."""
    N = model.N
    dims = (model.d, model.K) if isinstance(model, UFM) else (*model.widths, model.K)
    out = []
    for a, b in pairwise(dims):
        out += [(N, a, b), (b, N, a), (N, b, a)]  # forward, ∇W, back to the features
    return out


def per_call(fn, budget: float = 0.25, blocks: int = 3) -> float:
    """Best seconds per call of ``fn`` over ``blocks`` blocks of about ``budget`` seconds each."""
    fn()
    t0 = time.perf_counter()
    fn()
    reps = max(3, int(budget / max(time.perf_counter() - t0, 1e-7)))
    best = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def floor_time(model: FeatureModel, S: int) -> float:
    ops = []
    for m, k, n in gemms(model, S):
        A, B, C = (torch.randn(S, *shape, dtype=torch.float64) for shape in ((m, k), (k, n), (m, n)))
        ops.append((A, B, C))

    def run() -> None:
        for A, B, C in ops:
            torch.bmm(A, B, out=C)

    return per_call(run)


def step_times(model: FeatureModel, S: int, lr: float = 1e-3) -> tuple[float, float]:
    p = model.init(S, 0.3, torch.Generator().manual_seed(0), torch.float64)
    eager = per_call(lambda: FeatureModel.step(model, p, lr))
    fused = per_call(lambda: model.step(p, lr))
    return eager, fused


def loaded(model: FeatureModel, S: int) -> dict[str, float]:
    """Fused step of ``model`` idle and with two busy processes, on 1 and 2 threads (seconds per step)."""
    p = model.init(S, 0.3, torch.Generator().manual_seed(0), torch.float64)
    res = {}
    for n in (1, 2):
        with threads(n):
            res[f"idle_{n}"] = per_call(lambda: model.step(p, 1e-3))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.5)
        for n in (1, 2):
            with threads(n):
                res[f"busy_{n}"] = per_call(lambda: model.step(p, 1e-3), budget=0.5)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    return res


def markdown(rows: list[dict], load: dict, meta: dict) -> str:
    lines = [SECTION, "",
             f"Command: `python bench/gd_step.py` (run {meta['date']}, {meta['machine']}, torch {meta['torch']}, "
             f"float64, {meta['threads']} intra-op thread(s) as `gradient_descent` picks them; load average "
             f"{meta['load']} at the start: other jobs shared the cores). µs per GD step per problem (step time / S); "
             "**eager**: `FeatureModel.step` from the closed-form `gradient`; **fused**: the model's `step`; "
             "**floor**: `torch.bmm` of the same matrix products (preallocated), i.e. the measured batched-GEMM "
             "rate for the step's FLOPs. JSON: `docs/bench_gd_step.json`.", "",
             "| model (notebook) | S | MFLOP/step | eager µs | fused µs | floor µs | eager / fused | fused / floor "
             "| fused GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} ({r['notebook']}) | {r['S']} | {r['flops'] / 1e6:.2f} | {r['eager_us']:.1f} | "
                     f"{r['fused_us']:.1f} | {r['floor_us']:.1f} | {r['eager_us'] / r['fused_us']:.2f}× | "
                     f"{r['fused_us'] / r['floor_us']:.2f}× | {r['fused_gflops']:.1f} |")
    lines += ["", f"Loaded machine: one fused step of the {load['model']} (S = {load['S']}) as the machine was found "
              f"(\"idle\": load average {meta['load']}) vs with two more CPU-bound processes "
              "(`python -c \"while True: pass\"`) on the 2 cores (µs per step):", "",
              "| intra-op threads | idle | two busy processes | busy / idle |", "|---:|---:|---:|---:|"]
    for n in (1, 2):
        i, b = load[f"idle_{n}"] * 1e6, load[f"busy_{n}"] * 1e6
        lines.append(f"| {n} | {i:.0f} | {b:.0f} | {b / i:.1f}× |")
    lines += ["", "Target ≤ 3× the idle time; `gradient_descent` runs these sizes on one thread "
              "(`ncutils.device.threads_for`, threshold `GD_THREAD_FLOPS`).", ""]
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    doc = path.read_text()
    pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    doc = pattern.sub(lambda _: text + "\n", doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + text
    path.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=str(ROOT / "docs" / "bench_gd_step.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"), help="'' to leave the docs alone")
    a = ap.parse_args()
    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg()), "python": platform.python_version()}
    rows = []
    t_start = time.perf_counter()
    for label, nb, model, S in CASES:
        flops = model.step_flops(S)
        n = threads_for(flops)
        meta["threads"] = n
        with threads(n):
            eager, fused = step_times(model, S)
            floor = floor_time(model, S)
        rows.append({"model": label, "notebook": nb, "S": S, "flops": flops, "threads": n,
                     "eager_us": eager / S * 1e6, "fused_us": fused / S * 1e6, "floor_us": floor / S * 1e6,
                     "fused_gflops": flops / fused / 1e9, "floor_gflops": flops / floor / 1e9})
        r = rows[-1]
        print(f"{label:22s} S={S:3d} eager {r['eager_us']:8.1f}  fused {r['fused_us']:8.1f}  floor "
              f"{r['floor_us']:8.1f} µs/step/problem", flush=True)
    label, _, model, S = CASES[3]
    load = {"model": label, "S": S, **loaded(model, S)}
    print({k: (f"{v * 1e6:.0f} µs" if isinstance(v, float) else v) for k, v in load.items()})
    meta["bench_s"] = round(time.perf_counter() - t_start, 1)
    Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows, "loaded": load}, indent=1) + "\n")
    if a.doc:
        write_section(markdown(rows, load, meta), Path(a.doc))
    print(f"wrote {a.json}" + (f" and {a.doc}" if a.doc else "") + f" in {meta['bench_s']} s")


if __name__ == "__main__":
    main()
