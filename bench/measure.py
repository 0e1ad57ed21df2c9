"""Measuring NC on network features: ncutils' streaming two-pass metric vs the d×d covariance approach vs
in-memory ``nc_metrics``, on CPU, time and peak memory (issue 17's benchmark; writes docs/bench_measure.md).

* **ncutils** — :class:`ncutils.stream.StreamingNC` over batches of 1 000 (class sums, then within-class terms
  projected on the K centred means: no d×d matrix);
* **d×d covariances** — what per-class covariance accumulators do (the approach of the most-used public metrics
  library): Σ_W and Σ_B as d×d float64 matrices from streamed batches, then NC1 = tr(Σ_W Σ_B^†)/K with a
  pseudo-inverse of the d×d Σ_B;
* **in memory** — :func:`ncutils.metrics.nc_metrics` on the whole (N, d) float32 feature matrix.

Each method runs in its own subprocess so that its peak resident memory (``ru_maxrss``, minus the process's
footprint before the features exist) is its own; a method that would need more than ``--max-gib`` is not
started and is reported as such. N = 10 000 samples, K = 10 classes, features N(class mean, 1) in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N, K, BATCH = 10_000, 10, 1_000

CHILD = r"""
import json, resource, sys, time
import torch
method, d, N, K, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(int(sys.argv[6]))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gen = torch.Generator().manual_seed(0)
means = torch.randn(K, d, generator=gen) * 3
y = torch.arange(K).repeat_interleave(N // K)
def batches():  # the same features every pass, generated batch by batch as a data loader would
    g = torch.Generator().manual_seed(1)
    for i in range(0, N, batch):
        yb = y[i:i + batch]
        yield means[yb] + torch.randn(len(yb), d, generator=g), yb
t0 = time.perf_counter()
if method == "ncutils":
    from ncutils.stream import StreamingNC
    s = StreamingNC(K)
    for H, yb in batches():
        s.update_means({"h": H}, yb)
    for H, yb in batches():
        s.update_within({"h": H}, yb)
    nc1 = float(s.result()["h"]["nc1"])
elif method == "dxd":
    sums = torch.zeros(K, d, dtype=torch.float64)
    counts = torch.zeros(K, dtype=torch.float64)
    for H, yb in batches():
        sums.index_add_(0, yb, H.double()); counts += torch.bincount(yb, minlength=K)
    mu = sums / counts[:, None]
    mu_g = mu.mean(0)
    Sw = torch.zeros(d, d, dtype=torch.float64)
    for H, yb in batches():
        R = H.double() - mu[yb]
        Sw += R.T @ R
    Sw /= N
    Mc = mu - mu_g
    Sb = Mc.T @ Mc / K
    nc1 = float(torch.trace(Sw @ torch.linalg.pinv(Sb, hermitian=True)) / K)
else:
    from ncutils.metrics import nc_metrics
    H = torch.cat([h for h, _ in batches()])
    nc1 = float(nc_metrics(H, y)["nc1"])
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": wall, "peak_mib": (peak - base) / 1024, "nc1": nc1}))
"""


def need_gib(method: str, d: int) -> float:
    """What a method must hold at least (GiB): the d×d approach three d×d float64 matrices, in memory the N×d
    features (float32) and a float64 copy, ncutils a batch and K×d sums."""
    if method == "dxd":
        return 3 * d * d * 8 / 2**30
    if method == "memory":
        return N * d * (4 + 8) / 2**30
    return (BATCH * d * 12 + 4 * K * d * 8) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 8192, 65536])
    ap.add_argument("--max-gib", type=float, default=4.0, help="refuse a method that needs more (default 4)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_measure.md"))
    args = ap.parse_args()
    rows = []
    for d in args.dims:
        for method in ("ncutils", "dxd", "memory"):
            need = need_gib(method, d)
            if need > args.max_gib:
                rows.append({"d": d, "method": method, "seconds": None, "peak_mib": None, "nc1": None,
                             "note": f"not run: needs at least {need:.1f} GiB > {args.max_gib:g} GiB"})
                print(rows[-1], flush=True)
                continue
            out = subprocess.run([sys.executable, "-c", CHILD, method, str(d), str(N), str(K), str(BATCH),
                                  str(args.threads)], capture_output=True, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            if out.returncode != 0:
                rows.append({"d": d, "method": method, "seconds": None, "peak_mib": None, "nc1": None,
                             "note": "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:120]})
            else:
                rows.append({"d": d, "method": method, **json.loads(out.stdout.strip().splitlines()[-1]),
                             "note": ""})
            print(rows[-1], flush=True)
    load = os.getloadavg()
    lines = ["# Measuring NC: streaming vs d×d covariances vs in memory", "",
             f"Command: `python bench/measure.py` (run {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
             f"{os.cpu_count()} cores, {args.threads} torch threads, load average {load[0]:.1f} at the end). "
             f"N = {N}, K = {K}, batches of {BATCH}, float32 features; peak = resident memory the method added. "
             "NC1 of each method shown to check they compute the same quantity.", "",
             "| d | method | seconds | peak MiB | NC1 | note |", "|---:|---|---:|---:|---:|---|"]
    for r in rows:
        s = "" if r["seconds"] is None else f"{r['seconds']:.2f}"
        m = "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        v = "" if r["nc1"] is None else f"{r['nc1']:.6g}"
        lines.append(f"| {r['d']} | {r['method']} | {s} | {m} | {v} | {r['note']} |")
    by = {(r["d"], r["method"]): r for r in rows}
    lines.append("")
    for d in args.dims:
        a, b = by.get((d, "ncutils")), by.get((d, "dxd"))
        if a and b and a["seconds"] and b["seconds"]:
            lines.append(f"- d = {d}: ncutils is {b['seconds'] / a['seconds']:.1f}× faster than the d×d approach.")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
