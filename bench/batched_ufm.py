"""Batched vs Python-loop gradient descent on many independent UFM problems (docs/benchmarks.md).

The same P problems (UFM, MSE, no bias, K=4, d=20, n=50 by default, one (λ_W, λ_H) each from a grid, the
same initializations) are solved by

* **batched**: one :func:`ncutils.solve.gradient_descent` over all problems (per-run λ), in chunks of C runs;
* **loop**: one :func:`gradient_descent` call per problem (scalar λ), in a Python loop — what a script
  without batching does.

The loop is timed on ``--loop-sample`` problems and scaled to P (its cost is linear in P: every call does the
same work); its final objectives are checked against the batched ones. Prints one Markdown table row per
chunk size and writes JSON with ``--json``.

    python bench/batched_ufm.py --problems 10000 --steps 200 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from ncutils import UFM, gradient_descent
from ncutils.device import resolve_device
from ncutils.phase import auto_chunk, grid


def problems(P: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    lam = grid(2e-3, 1e-1, int(np.ceil(np.sqrt(P))))
    lw, lh = (g.ravel()[:P] for g in np.meshgrid(lam, lam, indexing="ij"))
    return tuple(lw.tolist()), tuple(lh.tolist())


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def compare(P: int = 10000, steps: int = 200, K: int = 4, d: int = 20, n: int = 50, lr: float = 0.3,
            chunks: tuple[int, ...] = (-1, 0, 4096, 1024, 256, 64, 16), loop_sample: int = 100,
            device: str | torch.device = "cpu", dtype: str = "float64") -> dict:
    """Time the batched solver against the Python loop on ``P`` problems (wall-clock seconds).

    Returns the run's description and ``rows``: per chunk size (runs per batched program; -1 all at once, 0
    :func:`ncutils.phase.auto_chunk`) ``batched_s``, ``loop_s`` (the loop's time per problem, measured on
    ``loop_sample`` problems, times P), ``ratio`` = loop_s / batched_s, and the largest relative difference
    of the final objectives of the sampled problems between the two.
    """
    dev = resolve_device(device)
    dt = getattr(torch, dtype)
    lw, lh = problems(P)
    P = len(lw)
    init = UFM(K, n, d).init(P, 0.3, torch.Generator().manual_seed(0), dt)
    gd = dict(lr=lr, steps=steps, device=dev, dtype=dt, record_every=steps, progress=False)

    # warm-up (kernels, caches, CUDA context)
    gradient_descent(UFM(K, n, d, lw[:8], lh[:8]), init={k: v[:8] for k, v in init.items()}, **gd)
    gradient_descent(UFM(K, n, d, lw[0], lh[0]), init={k: v[:1] for k, v in init.items()}, **gd)

    m = min(loop_sample, P)
    sync(dev)
    t0 = time.perf_counter()
    loop_f = [gradient_descent(UFM(K, n, d, lw[i], lh[i]), init={k: v[i:i + 1] for k, v in init.items()},
                               **gd).final("objective")[0] for i in range(m)]
    sync(dev)
    loop_per_problem = (time.perf_counter() - t0) / m
    loop_total = loop_per_problem * P

    rows = []
    for chunk in chunks:
        c = P if chunk < 0 else auto_chunk(UFM(K, n, d), P, dev, dt) if chunk == 0 else min(chunk, P)
        sync(dev)
        t0 = time.perf_counter()
        finals = []
        for s in range(0, P, c):
            e = min(s + c, P)
            r = gradient_descent(UFM(K, n, d, lw[s:e], lh[s:e]), init={k: v[s:e] for k, v in init.items()}, **gd)
            finals.append(r.final("objective"))
        sync(dev)
        wall = time.perf_counter() - t0
        f = np.concatenate(finals)
        err = float(np.max(np.abs(f[:m] - np.array(loop_f)) / np.abs(np.array(loop_f))))
        rows.append({"chunk": c, "auto": chunk == 0, "batched_s": wall, "loop_s": loop_total,
                     "ratio": loop_total / wall, "max_rel_diff_vs_loop": err})
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return {"problems": P, "steps": steps, "K": K, "d": d, "n": n, "dtype": dtype, "device": str(dev),
            "device_name": device_name, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "loop_sample": m, "loop_s_per_problem": loop_per_problem, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--d", type=int, default=20)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--chunks", type=int, nargs="*", default=[-1, 0, 4096, 1024, 256, 64, 16],
                    help="runs per batched program (-1: all at once, 0: ncutils.phase.auto_chunk)")
    ap.add_argument("--loop-sample", type=int, default=100, help="problems timed in the Python loop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--json", help="write the results to this file")
    a = ap.parse_args()
    info = compare(a.problems, a.steps, a.K, a.d, a.n, a.lr, tuple(a.chunks), a.loop_sample, a.device, a.dtype)
    P, m, rows = info["problems"], info["loop_sample"], info["rows"]
    print(f"{P} problems (K={a.K}, d={a.d}, n={a.n}), {a.steps} GD steps, {a.dtype}, {info['device']} "
          f"({info['device_name']}, {info['threads']} threads); loop timed on {m} problems: "
          f"{info['loop_s_per_problem'] * 1e3:.1f} ms each")
    print("| chunk | batched (s) | loop (s, scaled) | loop / batched | max rel diff of f |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        label = f"{r['chunk']}{' (auto)' if r['auto'] else ''}"
        print(f"| {label} | {r['batched_s']:.2f} | {r['loop_s']:.1f} | {r['ratio']:.1f}x | "
              f"{r['max_rel_diff_vs_loop']:.1e} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(info, fh, indent=2)


if __name__ == "__main__":
    main()
