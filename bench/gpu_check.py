"""GPU check (issue 18): everything a lent GPU machine should measure, in one command within a time budget.

    make gpu-check                                  # = python bench/gpu_check.py
    python bench/gpu_check.py --device cuda --budget-s 500 --data-root /path/to/data
    python bench/gpu_check.py --device cpu --quick  # tiny sizes: the whole check in about a minute on 2 cores

Parts, in order (each gets a share of the global budget ``--budget-s``; one that cannot start within what is left
is skipped, and the report says why):

* **unit_tests** — ``pytest -m gpu`` in a subprocess: solvers, metrics, StreamingNC and ResNet training on the
  device against the CPU (``tests/test_devices.py``); pass/fail/skip counts.
* **batched_ufm** — ``bench/batched_ufm.py``'s comparison on the device: one batched ``gradient_descent`` over P
  UFM problems vs a Python loop of single problems (ratio loop / batched; target ≥ 1000× for P ≥ 10⁴ on a GPU).
* **resnet_epoch** — ResNet18 (CIFAR stem) epoch time on CIFAR-shaped synthetic images: a plain
  ``torch.utils.data.DataLoader`` float32 loop vs :func:`ncutils.train.train_resnet` with bf16 autocast,
  channels_last and the data on the device (:class:`ncutils.data.DeviceBatches`), eager and compiled; each vs
  the bf16 compute floor = images × 3 × forward FLOPs per image / the device's measured bf16 GEMM rate.
* **measure_overhead** — the time of one :func:`ncutils.train.measure_network` (all five layers, float32
  features, training and test set) relative to one training epoch of the bf16 run above.
* **tb22_fig5_mnist** — Tirer & Bruna 2022, Fig. 5 (MNIST, MSE, no FC bias, weight decay 5e-4, SGD lr 0.05
  ÷10 every 40 epochs) at full width on the MNIST digits under ``--data-root`` (never downloaded), for as many
  epochs as the budget allows; "skipped: no data" when the files are not there.

On a CPU every CUDA default degrades to its CPU counterpart: the "bf16" variant runs under CPU autocast
(bfloat16) with channels_last, ``torch.compile`` uses inductor's C++ backend, and the bf16 floor uses the CPU's
measured bf16 GEMM rate. Writes one JSON and one Markdown report (``--out``, default ``outputs/gpu_check``),
atomically, after every part (so a run stopped from outside still leaves the parts it finished). Exit status 1
when a part failed or a unit test failed. Times are wall-clock seconds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installation (the GPU machine)
    sys.path.insert(0, str(ROOT))

from ncutils.paths import atomic_path, resolve_path  # noqa: E402

SCHEMA = "ncutils.gpu_check/1"
#: Forward FLOPs of one 32×32 image through ResNet18 with the CIFAR stem at width 1 (2 × multiply-adds;
#: the figure the brief and ``ncutils.studies.resnet`` use). The check also counts them for the run's own width.
RESNET18_CIFAR_FORWARD_FLOP = 1.11e9
#: Training FLOPs per image ≈ this × forward FLOPs (backward ≈ 2 × forward).
TRAIN_FLOP_PER_FORWARD = 3
#: The batched-UFM target on a GPU: loop / batched ≥ this for at least ``UFM_TARGET_PROBLEMS`` problems.
UFM_TARGET_RATIO = 1000.0
UFM_TARGET_PROBLEMS = 10_000
#: Tirer & Bruna's Fig. 5 protocol runs this many epochs (the paper profile of notebook 07).
FIG5_PAPER_EPOCHS = 200
FIG5_PAPER_PER_CLASS = 5000
PARTS = ("unit_tests", "batched_ufm", "resnet_epoch", "measure_overhead", "tb22_fig5_mnist")
TITLES = {
    "unit_tests": "(a) unit tests marked gpu (device vs CPU)",
    "batched_ufm": "(b) batched UFM solver vs a Python loop",
    "resnet_epoch": "(c) ResNet18 epoch time: DataLoader fp32 vs bf16 on-device data vs the bf16 floor",
    "measure_overhead": "(d) measurement overhead per epoch",
    "tb22_fig5_mnist": "(e) Tirer & Bruna Fig. 5, MNIST MSE (width 1; tiny with --quick)",
}


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and budget shares of one mode (``FULL`` on a GPU, ``QUICK`` for a CPU smoke run).

    Shares are fractions of the global budget; ``min_s`` the least time (s) a part needs to start."""

    shares: dict[str, float]
    min_s: dict[str, float]
    deselect: tuple[str, ...]  # node-id prefixes of tests marked gpu that this mode leaves out
    ufm_problems: int
    ufm_steps: int
    ufm_loop_sample: int
    ufm_chunks: tuple[int, ...]
    gemm_n: int  # side of the square bf16 GEMM that measures the matmul rate
    resnet_per_class: int  # CIFAR-shaped synthetic images per class (10 classes)
    resnet_test_per_class: int
    resnet_width: float
    resnet_batch: int
    resnet_epochs: int  # epochs per train_resnet variant (the first one is warm-up)
    baseline_epochs: int  # epochs of the DataLoader loop (the first one is warm-up)
    compile_variant: bool  # also time the torch.compile'd bf16 run
    fig5_per_class_cap: int
    fig5_test_per_class_cap: int
    fig5_width: float
    fig5_batch: int
    fig5_max_epochs: int


#: the torch.compile test of tests/test_devices.py (cold compilation: minutes on 2 CPU cores)
COMPILE_TEST = "tests/test_devices.py::test_train_resnet_compiled_bf16_channels_last"
_SHARES = {"unit_tests": 0.30, "batched_ufm": 0.12, "resnet_epoch": 0.30, "measure_overhead": 0.05,
           "tb22_fig5_mnist": 1.0}  # the last part gets whatever is left
FULL = Sizes(shares=_SHARES, min_s={"unit_tests": 30, "batched_ufm": 15, "resnet_epoch": 30, "measure_overhead": 5,
                                    "tb22_fig5_mnist": 30},
             deselect=(f"{COMPILE_TEST}[cpu]",), ufm_problems=10_000, ufm_steps=2000, ufm_loop_sample=20,
             ufm_chunks=(-1, 0, 1024),
             gemm_n=8192, resnet_per_class=5000, resnet_test_per_class=1000, resnet_width=1.0, resnet_batch=128,
             resnet_epochs=3, baseline_epochs=2, compile_variant=True, fig5_per_class_cap=FIG5_PAPER_PER_CLASS,
             fig5_test_per_class_cap=1000, fig5_width=1.0, fig5_batch=128, fig5_max_epochs=FIG5_PAPER_EPOCHS)
QUICK = Sizes(shares={"unit_tests": 0.55, "batched_ufm": 0.08, "resnet_epoch": 0.15, "measure_overhead": 0.04,
                      "tb22_fig5_mnist": 1.0},
              min_s={"unit_tests": 10, "batched_ufm": 2, "resnet_epoch": 3, "measure_overhead": 1,
                     "tb22_fig5_mnist": 2},
              deselect=(COMPILE_TEST,), ufm_problems=32, ufm_steps=20, ufm_loop_sample=4, ufm_chunks=(-1, 0),
              gemm_n=256, resnet_per_class=4, resnet_test_per_class=2, resnet_width=0.0625, resnet_batch=20,
              resnet_epochs=2, baseline_epochs=2, compile_variant=False, fig5_per_class_cap=6,
              fig5_test_per_class_cap=2, fig5_width=0.0625, fig5_batch=20, fig5_max_epochs=3)


class Skip(Exception):
    """A part cannot run here; the message is the reason recorded in the report."""


class OverBudget(Exception):
    """Raised by the watchdog when a part runs past its budget."""


class PartFailed(Exception):
    """A part that stopped early but has partial results to report."""

    def __init__(self, reason: str, results: dict[str, Any]) -> None:
        super().__init__(reason)
        self.results = results


@contextmanager
def watchdog(seconds: float, what: str = "its budget"):
    """Raise :class:`OverBudget` in the main thread after ``seconds`` (SIGALRM; a no-op where there is none).
    Nests: an enclosing watchdog's deadline still holds inside (the earlier one fires) and is restored after."""
    if not hasattr(signal, "setitimer"):
        yield
        return
    t0 = time.monotonic()
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    seconds = max(seconds, 1e-3)
    fires_first = not outer_left or seconds < outer_left

    def fire(_sig: int, _frame: Any) -> None:
        raise OverBudget(f"stopped after {what} of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire if fires_first else signal.getsignal(signal.SIGALRM))
    signal.setitimer(signal.ITIMER_REAL, seconds if fires_first else outer_left)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        remaining = outer_left - (time.monotonic() - t0)
        if outer_left and remaining > 0:  # (an outer deadline that has passed has fired already, or is moot)
            signal.setitimer(signal.ITIMER_REAL, remaining)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def environment(dev: torch.device) -> dict[str, Any]:
    """Where the check ran: host, Python, torch, the device's name and memory, CPU threads, the C compiler."""
    env: dict[str, Any] = {"host": socket.gethostname(), "python": platform.python_version(),
                           "torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": str(dev),
                           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(),
                           "c_compiler": shutil.which(os.environ.get("CXX", "g++")) or shutil.which("cc")}
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError as err:
        env["torchvision"] = f"missing ({err})"
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                   device_capability=f"{props.major}.{props.minor}", bf16_supported=torch.cuda.is_bf16_supported())
    else:
        env["device_name"] = env["cpu"]
    return env


# --------------------------------------------------------------------------- (a) unit tests
def junit_counts(path: Path) -> dict[str, Any]:
    """Counts of a pytest JUnit XML file: tests, passed, failed (failures + errors), skipped, with the names of
    the failed tests and the reasons of the skipped ones."""
    root = ET.parse(path).getroot()
    failed, skipped, total = [], [], 0
    for case in root.iter("testcase"):
        total += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif (s := case.find("skipped")) is not None:
            skipped.append(f"{name}: {s.get('message', '')}")
    return {"tests": total, "passed": total - len(failed) - len(skipped), "failed": len(failed),
            "skipped": len(skipped), "failed_tests": failed, "skip_reasons": skipped}


def part_unit_tests(ctx: Context, budget_s: float) -> dict[str, Any]:
    """``python -m pytest -m gpu tests`` in a subprocess, stopped after ``budget_s`` seconds."""
    try:
        import pytest  # noqa: F401
    except ImportError as err:
        raise Skip(f"pytest is not installed here ({err}); install it from the wheelhouse") from None
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
               *(f"--deselect={d}" for d in ctx.sizes.deselect), f"--junitxml={xml}", "tests"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        log = Path(tmp) / "pytest.log"
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True)
            interrupted = False
            try:
                proc.wait(timeout=max(1.0, budget_s - 10.0))
            except subprocess.TimeoutExpired:  # SIGINT: pytest stops and still writes its JUnit report
                interrupted = True
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=10.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            finally:
                if proc.poll() is None:  # the watchdog fired, or this process is being stopped
                    proc.kill()
                    proc.wait()
        wall = time.perf_counter() - t0
        output = log.read_text(errors="replace")
        if not xml.is_file():
            raise RuntimeError(f"pytest wrote no report (exit status {proc.returncode}"
                               f"{', interrupted at its budget' if interrupted else ''}): {output[-2000:]}")
        counts = junit_counts(xml)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    results = {"command": " ".join(cmd[1:]).replace(f"--junitxml={xml}", "--junitxml=<tmp>"),
               "exit_status": proc.returncode, "pytest_wall_s": wall, **counts,
               "ok": proc.returncode == 0 and not interrupted, "interrupted": interrupted,
               "deselected": list(ctx.sizes.deselect), "summary_line": lines[-1] if lines else ""}
    if interrupted:
        raise PartFailed(f"over budget: pytest interrupted after {wall:.0f} s (budget {budget_s:.0f} s); the counts "
                         "are of the tests that had finished", results)
    return results


# --------------------------------------------------------------------------- (b) batched UFM
def part_batched_ufm(ctx: Context, budget_s: float) -> dict[str, Any]:
    """bench/batched_ufm.py's :func:`compare` on the device (float64)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from batched_ufm import compare
    finally:
        sys.path.remove(str(ROOT / "bench"))
    s = ctx.sizes
    info = compare(P=s.ufm_problems, steps=s.ufm_steps, loop_sample=s.ufm_loop_sample, chunks=s.ufm_chunks,
                   device=ctx.device, dtype="float64")
    best = max(info["rows"], key=lambda r: r["ratio"])
    applies = ctx.device.type == "cuda" and info["problems"] >= UFM_TARGET_PROBLEMS
    info.update(best_ratio=best["ratio"], best_chunk=best["chunk"], target_ratio=UFM_TARGET_RATIO,
                target_problems=UFM_TARGET_PROBLEMS, target_applies=applies,
                target_met=(best["ratio"] >= UFM_TARGET_RATIO) if applies else None)
    return info


# --------------------------------------------------------------------------- (c) ResNet epoch time
def bf16_matmul_rate(dev: torch.device, n: int, min_time_s: float = 0.2) -> dict[str, float]:
    """The device's bf16 GEMM rate (FLOP/s): repeated ``n × n @ n × n`` products, 2n³ FLOP each, timed after a
    warm-up until at least ``min_time_s`` seconds have passed (the best of the timed rounds)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, torch.bfloat16)
    b = torch.randn(n, n, generator=g).to(dev, torch.bfloat16)
    for _ in range(2):
        a @ b
    sync(dev)
    best, reps, spent = math.inf, 1, 0.0
    while spent < min_time_s:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(dev)
        dt = (time.perf_counter() - t0) / reps
        spent += dt * reps
        best = min(best, dt)
        reps *= 2
    return {"gemm_n": n, "bf16_matmul_flop_per_s": 2 * n**3 / best, "gemm_s": best}


def forward_flops(width: float, in_channels: int, K: int = 10) -> float:
    """FLOPs (2 × multiply-adds, torch's ``FlopCounterMode``) of one 32×32 image through :func:`resnet18`."""
    from torch.utils.flop_counter import FlopCounterMode

    from ncutils.nets import resnet18

    model = resnet18(K, in_channels, False, width).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, in_channels, 32, 32))
    return float(counter.get_total_flops())


def cifar_shaped(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic CIFAR-shaped images ``(10·per_class, 3, 32, 32)`` float32 (a class-dependent mean plus noise),
    labels class-major: what a CIFAR-10 epoch costs, without the files."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(per_class)
    X = torch.randn(len(y), 3, 32, 32, generator=g)
    X += 0.2 * (y.float() - 4.5).reshape(-1, 1, 1, 1)
    return X, y


def dataloader_fp32_epochs(X: torch.Tensor, y: torch.Tensor, width: float, batch: int, epochs: int,
                           dev: torch.device, deadline: float) -> list[float]:
    """Seconds per epoch of the plain baseline: ``DataLoader(TensorDataset(X, y), shuffle=True)`` on the CPU
    (default collation, no workers, no pinned memory), each batch copied to ``dev``, float32 NCHW ResNet18,
    the same MSE loss and SGD as :func:`ncutils.train.train_resnet`. Stops after the epoch that passes
    ``deadline`` (``time.perf_counter()``)."""
    from torch.utils.data import DataLoader, TensorDataset

    from ncutils.nets import resnet18

    torch.manual_seed(0)
    model = resnet18(10, X.shape[1], False, width).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(TensorDataset(X, y), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(epochs):
        sync(dev)
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(dev), yb.to(dev)
            out = model(xb)
            loss = 0.5 * (out - torch.nn.functional.one_hot(yb, 10).to(out.dtype)).square().sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(dev)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return times


def steady(times: list[float]) -> float:
    """The epoch time without the first epoch (warm-up: allocations, cuDNN autotuning, compilation) when there
    are several: the median of the others."""
    rest = sorted(times[1:] if len(times) > 1 else times)
    return rest[len(rest) // 2]


def part_resnet_epoch(ctx: Context, budget_s: float) -> dict[str, Any]:
    from ncutils.nets import RESNET_LAYERS
    from ncutils.train import TrainConfig, train_resnet

    s, dev = ctx.sizes, ctx.device
    t_start = time.perf_counter()
    deadline = t_start + budget_s
    X, y = cifar_shaped(s.resnet_per_class, 0)
    Xt, yt = cifar_shaped(s.resnet_test_per_class, 1)
    N = len(y)
    rate = bf16_matmul_rate(dev, s.gemm_n)
    fwd = forward_flops(s.resnet_width, 3)
    floor_s = N * TRAIN_FLOP_PER_FORWARD * fwd / rate["bf16_matmul_flop_per_s"]
    res: dict[str, Any] = {"images_per_epoch": N, "batch_size": s.resnet_batch, "width_multiplier": s.resnet_width,
                           "data": "synthetic CIFAR-shaped images (3x32x32 float32, 10 classes)",
                           **rate, "forward_flop_per_image": fwd,
                           "forward_flop_per_image_width1_reference": RESNET18_CIFAR_FORWARD_FLOP,
                           "train_flop_per_forward": TRAIN_FLOP_PER_FORWARD, "bf16_floor_epoch_s": floor_s,
                           "variants": {}, "skipped_variants": {}}
    variants = res["variants"]

    def record(name: str, times: list[float], **extra: Any) -> None:
        epoch = steady(times)
        variants[name] = {"epoch_times_s": times, "epoch_s": epoch, "images_per_s": N / epoch,
                          "epoch_over_bf16_floor": epoch / floor_s, **extra}

    # the baseline: a plain DataLoader float32 loop
    times = dataloader_fp32_epochs(X, y, s.resnet_width, s.resnet_batch, s.baseline_epochs, dev, deadline)
    record("dataloader_fp32", times, precision="fp32", channels_last=False, data="DataLoader on the CPU",
           compiled=False)
    cfg = TrainConfig(dataset="cifar10", loss="mse", fc_bias=False, lr=0.05, schedule="constant",
                      epochs=s.resnet_epochs, batch_size=s.resnet_batch, per_class=s.resnet_per_class,
                      width_multiplier=s.resnet_width, layers=RESNET_LAYERS, flatten=False,
                      measure_every=s.resnet_epochs)  # measured after epoch 1 and the last
    runs = [("device_bf16", False)] + ([("device_bf16_compiled", True)] if s.compile_variant else [])
    if not s.compile_variant:
        res["skipped_variants"]["device_bf16_compiled"] = ("--quick: torch.compile of the same step is exercised "
                                                           "by tests/test_devices.py")
    for name, compiled in runs:
        left = deadline - time.perf_counter()
        if variants.get("device_bf16") and compiled:
            # compilation costs about as much as a few epochs: require room for it and the epochs
            need = 3 * variants["device_bf16"]["epoch_s"] * s.resnet_epochs + 30.0 * (dev.type == "cuda")
            if left < need:
                res["skipped_variants"][name] = f"budget: {left:.0f} s left in this part, needs about {need:.0f} s"
                continue
        if compiled and ctx.env.get("c_compiler") is None:
            res["skipped_variants"][name] = "no C compiler on PATH (inductor needs one)"
            continue
        if compiled:
            torch._dynamo.reset()
        try:
            with watchdog(deadline - time.perf_counter(), "the part's budget"):
                run = train_resnet(cfg, (X, y, Xt, yt), device=dev, precision="bf16", channels_last=True,
                                   compile=compiled, progress=False)
        except OverBudget as why:
            res["skipped_variants"][name] = f"over budget: {why}"
            continue
        h = run.history
        times = h[h.metric == "epoch_time_s"].sort_values("epoch").value.tolist()
        measures = h[h.metric == "measure_time_s"].sort_values("epoch").value.tolist()
        record(name, times, precision=run.precision, channels_last=run.channels_last, compiled=run.compiled,
               data="DeviceBatches on the device", measure_times_s=measures,
               final_train_loss=run.final("train_loss"))
        if name == "device_bf16":
            ctx.shared["resnet_run"] = (run, (X, y, Xt, yt), cfg)
    if dev.type == "cuda":
        res["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32  # the fp32 baseline's convolutions use TF32 if so
        res["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    base = variants["dataloader_fp32"]["epoch_s"]
    for v in variants.values():
        v["speedup_vs_dataloader_fp32"] = base / v["epoch_s"]
    return res


# --------------------------------------------------------------------------- (d) measurement overhead
def part_measure_overhead(ctx: Context, budget_s: float) -> dict[str, Any]:
    """Time :func:`measure_network` on the bf16 run's trained model (float32 features; as ``train_resnet`` does
    after a measured epoch), twice, and divide by that run's steady epoch time."""
    from ncutils.data import DeviceBatches
    from ncutils.train import measure_network

    if "resnet_run" not in ctx.shared:
        why = ctx.report["parts"]["resnet_epoch"].get("reason") or "its device_bf16 variant did not run"
        raise Skip(f"needs the trained bf16 model of part resnet_epoch, which did not run ({why})")
    run, (X, y, Xt, yt), cfg = ctx.shared["resnet_run"]
    dev = ctx.device
    bs = max(cfg.batch_size, 256)
    full = DeviceBatches(X, y, bs, dev, shuffle=False, channels_last=run.channels_last)
    test = DeviceBatches(Xt, yt, bs, dev, shuffle=False, channels_last=run.channels_last)
    times = []
    for _ in range(2):
        sync(dev)
        t0 = time.perf_counter()
        measure_network(run.model, full, test, 10, cfg.loss, cfg.layers, cfg.flatten)
        sync(dev)
        times.append(time.perf_counter() - t0)
    h = run.history
    epoch = steady(h[h.metric == "epoch_time_s"].sort_values("epoch").value.tolist())
    measure = min(times)
    in_training = h[h.metric == "measure_time_s"].sort_values("epoch").value.tolist()
    return {"layers": list(cfg.layers), "flatten": cfg.flatten, "train_images": len(y), "test_images": len(yt),
            "measure_times_s": times, "measure_s": measure, "epoch_s": epoch, "measure_over_epoch": measure / epoch,
            "overhead_per_epoch_at_measure_every_5": measure / epoch / 5,
            "measure_times_in_training_s": in_training, "features_dtype": "float32"}


# --------------------------------------------------------------------------- (e) Tirer & Bruna Fig. 5
def _epoch_estimate(ctx: Context, images: int, width: float) -> tuple[float, float, str]:
    """Seconds per training epoch and per measurement of ``images`` MNIST images, from part resnet_epoch's bf16
    run when it ran at this width (scaled by the image count), else from timing a few training steps now."""
    res = ctx.report["parts"]["resnet_epoch"].get("results") or {}
    v = res.get("variants", {}).get("device_bf16")
    if v and res.get("width_multiplier") == width and ctx.device.type == "cuda":
        per_image = v["epoch_s"] / res["images_per_epoch"]
        measure = (v["measure_times_s"][-1] if v["measure_times_s"] else 0.0) / res["images_per_epoch"]
        return per_image * images, measure * images, "part resnet_epoch (device_bf16), scaled by the image count"
    from ncutils.nets import resnet18

    dev, bs = ctx.device, ctx.sizes.fig5_batch
    model = resnet18(10, 1, False, width).to(dev)
    cuda = dev.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xb, yb = torch.randn(bs, 1, 32, 32, device=dev), torch.arange(bs, device=dev) % 10
    times = []
    for _ in range(4):
        sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(xb).float(), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(dev)
        times.append(time.perf_counter() - t0)
    per_image = min(times[1:]) / bs
    # a measurement: about 3 forward passes over the training set ≈ one training epoch's cost (3 × forward)
    return per_image * images, per_image * images, "timing 3 training steps now (a measurement assumed ≈ 1 epoch)"


def part_tb22_fig5(ctx: Context, budget_s: float) -> dict[str, Any]:
    from ncutils.data import load_dataset, missing_files
    from ncutils.nets import RESNET_LAYERS
    from ncutils.train import TrainConfig, train_resnet

    root = resolve_path(ctx.data_root)
    missing = missing_files("mnist", root)
    if missing is not None:
        raise Skip(f"no data: {missing} (this check never downloads)")
    s = ctx.sizes
    X, y = load_dataset("mnist", root, pad_to=32)
    Xt, yt = load_dataset("mnist", root, train=False, pad_to=32)
    available = int(torch.bincount(y, minlength=10).min())
    per_class = min(available, s.fig5_per_class_cap)
    test_per_class = min(int(torch.bincount(yt, minlength=10).min()), s.fig5_test_per_class_cap)
    if per_class < 1:
        raise Skip(f"no data: a class has no training digits under {root}")
    X, y = load_dataset("mnist", root, per_class=per_class, pad_to=32)
    Xt, yt = load_dataset("mnist", root, train=False, per_class=test_per_class, pad_to=32)
    epoch_s, measure_s, source = _epoch_estimate(ctx, len(y), s.fig5_width)
    measure_every = 5
    usable = 0.75 * budget_s - (time.perf_counter() - ctx.part_start)  # a quarter kept for warm-up and the rest
    epochs = int(max(1, min(s.fig5_max_epochs, usable // (epoch_s + measure_s / measure_every))))
    measure_every = max(1, min(measure_every, epochs))
    cfg = TrainConfig(dataset="mnist", loss="mse", fc_bias=False, lr=0.05, schedule="step40", epochs=epochs,
                      batch_size=s.fig5_batch, momentum=0.9, wd_features=5e-4, wd_classifier=5e-4,
                      per_class=per_class, test_per_class=test_per_class, width_multiplier=s.fig5_width,
                      layers=RESNET_LAYERS, flatten=False, measure_every=measure_every, seed=0)
    info = {"data_root": str(root), "digits_available_per_class": available, "per_class": per_class,
            "test_per_class": test_per_class, "paper_per_class": FIG5_PAPER_PER_CLASS, "epochs": epochs,
            "paper_epochs": FIG5_PAPER_EPOCHS, "lr_milestones": cfg.milestones(), "measure_every": measure_every,
            "width_multiplier": s.fig5_width, "batch_size": s.fig5_batch,
            "precision": "bf16" if ctx.device.type == "cuda" else "fp32",  # train_resnet's defaults
            "channels_last": ctx.device.type == "cuda", "epoch_estimate_s": epoch_s, "epoch_estimate_source": source}
    with tempfile.TemporaryDirectory(prefix="gpu_check_fig5_") as tmp:
        ckpt = Path(tmp) / "checkpoint.pt"  # at every measured epoch: what a run stopped at the budget reports
        try:
            with watchdog(ctx.part_start + budget_s - time.perf_counter(), "the part's budget"):
                run = train_resnet(cfg, (X, y, Xt, yt), device=ctx.device, checkpoint=ckpt,
                                   checkpoint_every=measure_every, progress=False)
        except OverBudget as why:
            import pandas as pd

            rows = torch.load(ckpt, weights_only=True)["history"] if ckpt.exists() else []
            if not rows:
                raise
            partial = fig5_summary(pd.DataFrame(rows), info)
            raise PartFailed(f"over budget: {why}; results of the last checkpoint (epoch "
                             f"{partial['final_epoch']} of {epochs})", partial) from None
    return fig5_summary(run.history, info)


def fig5_summary(h: Any, info: dict[str, Any]) -> dict[str, Any]:
    """Timings and the last measured epoch's metrics (every layer and the model's losses and accuracies) of a
    :func:`train_resnet` history, with ``info`` (the run's settings)."""
    from ncutils.nets import RESNET_LAYERS

    last = int(h[h.metric == "nc1"].epoch.max())
    final = {layer: {k: float(v) for k, v in h[(h.layer == layer) & (h.epoch == last)].set_index("metric").value
                     .items()} for layer in ("model", *RESNET_LAYERS)}
    nc1 = h[(h.layer == "layer4") & (h.metric == "nc1")].sort_values("epoch")
    epochs = h[h.metric == "epoch_time_s"].value
    return {**info, "train_time_s": float(epochs.sum()),
            "measure_time_s": float(h[h.metric == "measure_time_s"].value.sum()),
            "mean_epoch_s": float(epochs.mean()), "final_epoch": last, "final": final,
            "layer4_nc1_by_epoch": dict(zip(nc1.epoch.astype(int).tolist(), nc1.value.tolist(), strict=True))}


# --------------------------------------------------------------------------- driver and report
@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    data_root: str
    env: dict[str, Any]
    report: dict[str, Any]
    shared: dict[str, Any]
    part_start: float = 0.0


PART_FUNCS: dict[str, Callable[[Context, float], dict[str, Any]]] = {
    "unit_tests": part_unit_tests, "batched_ufm": part_batched_ufm, "resnet_epoch": part_resnet_epoch,
    "measure_overhead": part_measure_overhead, "tb22_fig5_mnist": part_tb22_fig5}


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def headline(name: str, r: dict[str, Any]) -> str:
    """One line of what a part found (for the summary table)."""
    if name == "unit_tests":
        return (f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped of {r['tests']} "
                f"(exit status {r['exit_status']})")
    if name == "batched_ufm":
        target = ("" if not r["target_applies"] else
                  f"; target ≥ {r['target_ratio']:.0f}×: {'met' if r['target_met'] else 'NOT met'}")
        return (f"{r['problems']} problems × {r['steps']} steps: loop / batched = {r['best_ratio']:.1f}× "
                f"(chunk {r['best_chunk']}){target}")
    if name == "resnet_epoch":
        parts = [f"{k} {v['epoch_s']:.3g} s ({v['epoch_over_bf16_floor']:.3g}× floor)"
                 for k, v in r["variants"].items()]
        floor = r["bf16_floor_epoch_s"]
        return f"epoch of {r['images_per_epoch']} images: " + ", ".join(parts) + f"; floor {floor:.3g} s"
    if name == "measure_overhead":
        return f"measurement {r['measure_s']:.3g} s = {r['measure_over_epoch']:.3g} × an epoch ({r['epoch_s']:.3g} s)"
    if name == "tb22_fig5_mnist":
        m = r["final"]["model"]
        return (f"{r['epochs']} of {r['paper_epochs']} epochs on {r['per_class']}/class: train acc "
                f"{m.get('train_accuracy', float('nan')):.3f}, test acc {m.get('test_accuracy', float('nan')):.3f}, "
                f"layer4 NC1 {r['final']['layer4'].get('nc1', float('nan')):.3g}")
    return ""


def markdown(report: dict[str, Any]) -> str:
    env, opts = report["environment"], report["options"]
    lines = ["# GPU check", "",
             f"Run {report['created']} on {env.get('device_name')} ({env['device']}; host {env['host']}, "
             f"torch {env['torch']}, Python {env['python']}), {'--quick' if opts['quick'] else 'full sizes'}, "
             f"budget {opts['budget_s']:.0f} s, used {report['used_s']:.0f} s. Times are wall-clock seconds.", "",
             "| part | status | wall (s) | budget (s) | result or reason |", "|---|---|---:|---:|---|"]
    for name in PARTS:
        p = report["parts"][name]
        what = p["reason"] if p["status"] != "ran" else headline(name, p["results"])
        lines.append(f"| {p['title']} | {p['status']} | {_fmt(p.get('wall_s'))} | {_fmt(p.get('budget_s'))} | "
                     f"{what} |")
    lines.append("")
    for name in PARTS:
        p = report["parts"][name]
        lines += [f"## {p['title']}", ""]
        if p["status"] != "ran":
            lines += [f"{p['status']}: {p['reason']}", ""]
            if not p["results"] or "traceback" in p["results"]:  # partial results (PartFailed) are shown
                if p["results"]:
                    lines += ["```", p["results"]["traceback"].rstrip(), "```", ""]
                continue
        r = p["results"]
        if name == "unit_tests":
            lines += [f"`{r['command']}`: {r['summary_line']}", "",
                      f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped of {r['tests']}", ""]
            lines += [f"- failed: `{t}`" for t in r["failed_tests"]] + [f"- skipped: {t}" for t in r["skip_reasons"]]
            if r.get("deselected"):
                lines.append(f"- deselected: {', '.join(r['deselected'])} (the normal test suite runs the CPU case; "
                             "--quick leaves out every torch.compile test: cold compilation takes minutes on 2 cores)")
        elif name == "batched_ufm":
            lines += [f"{r['problems']} UFM problems (K={r['K']}, d={r['d']}, n={r['n']}), {r['steps']} GD steps, "
                      f"{r['dtype']}, {r['device']} ({r['device_name']}); loop timed on {r['loop_sample']} problems: "
                      f"{r['loop_s_per_problem'] * 1e3:.3g} ms each.", "",
                      "| runs per program | batched (s) | loop (s, scaled) | loop / batched | max rel diff of f |",
                      "|---:|---:|---:|---:|---:|"]
            lines += [f"| {row['chunk']}{' (auto)' if row['auto'] else ''} | {row['batched_s']:.3g} | "
                      f"{row['loop_s']:.3g} | {row['ratio']:.1f}× | {row['max_rel_diff_vs_loop']:.1e} |"
                      for row in r["rows"]]
        elif name == "resnet_epoch":
            lines += [f"{r['images_per_epoch']} {r['data']}, batch {r['batch_size']}, width ×{r['width_multiplier']}. "
                      f"Floor = images × {r['train_flop_per_forward']} × {r['forward_flop_per_image'] / 1e9:.4g} "
                      f"GFLOP (forward, counted; {r['forward_flop_per_image_width1_reference'] / 1e9:.3g} at width 1) "
                      f"/ {r['bf16_matmul_flop_per_s'] / 1e12:.4g} TFLOP/s (bf16 GEMM {r['gemm_n']}², measured) = "
                      f"{r['bf16_floor_epoch_s']:.3g} s.", "",
                      "| variant | data | precision | channels_last | compiled | epoch (s) | images/s | "
                      "× floor | speed-up vs DataLoader fp32 |", "|---|---|---|---|---|---:|---:|---:|---:|"]
            lines += [f"| {k} | {v['data']} | {v['precision']} | {v['channels_last']} | {v['compiled']} | "
                      f"{v['epoch_s']:.3g} | {v['images_per_s']:.4g} | {v['epoch_over_bf16_floor']:.3g} | "
                      f"{v['speedup_vs_dataloader_fp32']:.3g} |" for k, v in r["variants"].items()]
            lines += [f"- {k} skipped: {why}" for k, why in r["skipped_variants"].items()]
        elif name == "measure_overhead":
            lines += [f"measure_network over {r['train_images']} training + {r['test_images']} test images, layers "
                      f"{', '.join(r['layers'])}, {r['features_dtype']} features: {r['measure_s']:.3g} s (best of "
                      f"{len(r['measure_times_s'])}); a bf16 training epoch: {r['epoch_s']:.3g} s; ratio "
                      f"{r['measure_over_epoch']:.3g} (per epoch when measuring every 5 epochs: "
                      f"{r['overhead_per_epoch_at_measure_every_5']:.3g})."]
        elif name == "tb22_fig5_mnist":
            lines += [f"MNIST from {r['data_root']}: {r['per_class']} digits per class (paper {r['paper_per_class']}; "
                      f"{r['digits_available_per_class']} available), {r['test_per_class']} test digits per class, "
                      f"width ×{r['width_multiplier']}, batch {r['batch_size']}, {r['precision']}, {r['epochs']} "
                      f"epochs of the paper's {r['paper_epochs']} (lr ÷10 after {r['lr_milestones'] or 'none'}; "
                      f"epochs chosen from the budget with an epoch estimate of {r['epoch_estimate_s']:.3g} s from "
                      f"{r['epoch_estimate_source']}); {r['mean_epoch_s']:.3g} s per epoch, measurements "
                      f"{r['measure_time_s']:.3g} s in all.", "",
                      "| layer | nc1 | nc2_orthogonal | nc2_etf | ncc_accuracy |", "|---|---:|---:|---:|---:|"]
            for layer, vals in r["final"].items():
                if layer != "model":
                    lines.append(f"| {layer} | " + " | ".join(_fmt(vals.get(k, float("nan")))
                                                               for k in ("nc1", "nc2_orthogonal", "nc2_etf",
                                                                         "ncc_accuracy")) + " |")
            lines += ["", "model: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["final"]["model"].items())]
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> None:
    """``out/report.json`` and ``out/report.md``, each written atomically."""
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str, allow_nan=True) + "\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(report) + "\n")


def run_check(device: str, quick: bool, budget_s: float, out: Path, data_root: str) -> dict[str, Any]:
    """Run the parts within ``budget_s`` seconds; returns the report (also written to ``out``)."""
    from ncutils.device import resolve_device

    t_start = time.perf_counter()
    dev = resolve_device(device)
    sizes = QUICK if quick else FULL
    threads = torch.get_num_threads()
    if quick and dev.type == "cpu":
        torch.set_num_threads(1)  # tiny sizes: one thread is several times faster on a busy machine
    try:
        return _run_parts(dev, sizes, device, quick, budget_s, out, data_root, t_start)
    finally:
        torch.set_num_threads(threads)


def _run_parts(dev: torch.device, sizes: Sizes, device: str, quick: bool, budget_s: float, out: Path,
               data_root: str, t_start: float) -> dict[str, Any]:
    env = environment(dev)
    report: dict[str, Any] = {
        "schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "options": {"device": device, "quick": quick, "budget_s": budget_s, "out": str(out), "data_root": data_root},
        "sizes": asdict(sizes), "environment": env, "used_s": 0.0,
        "parts": {name: {"title": TITLES[name], "status": "pending", "reason": "not reached yet when this report "
                         "was written (the check is running, or was stopped from outside)", "budget_s": None,
                         "wall_s": None, "results": None} for name in PARTS}}
    ctx = Context(device=dev, sizes=sizes, data_root=data_root, env=env, report=report, shared={})
    write_report(report, out)
    for name in PARTS:
        part = report["parts"][name]
        left = budget_s - (time.perf_counter() - t_start)
        allotted = max(0.0, min(sizes.shares[name] * budget_s, left))
        part["budget_s"] = allotted
        if allotted < sizes.min_s[name]:
            part.update(status="skipped", reason=f"budget: {left:.0f} s of the {budget_s:.0f} s left, this part "
                                                 f"needs at least {sizes.min_s[name]:.0f} s")
        else:
            print(f"gpu_check: {name} (budget {allotted:.0f} s)", flush=True)
            ctx.part_start = time.perf_counter()
            try:
                with watchdog(allotted + max(5.0, 0.1 * allotted)):
                    results = PART_FUNCS[name](ctx, allotted)
                part.update(status="ran", reason=None, results=results)
            except Skip as why:
                part.update(status="skipped", reason=str(why))
            except OverBudget as why:
                part.update(status="failed", reason=f"over budget: {why}")
            except PartFailed as why:
                part.update(status="failed", reason=str(why), results=why.results)
            except Exception as err:
                part.update(status="failed", reason=f"{type(err).__name__}: {str(err)[:1000]}",
                            results={"traceback": traceback.format_exc()[-4000:]})
            finally:
                part["wall_s"] = time.perf_counter() - ctx.part_start
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            print(f"gpu_check: {name}: {part['status']}"
                  f"{'' if part['status'] == 'ran' else ': ' + str(part['reason'])[:300]}", flush=True)
        report["used_s"] = time.perf_counter() - t_start
        write_report(report, out)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                    help="auto: CUDA when available, else the CPU")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run of every part)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="global wall-clock budget in seconds (default 500; 75 with --quick)")
    ap.add_argument("--out", default="outputs/gpu_check", help="folder of report.json and report.md")
    ap.add_argument("--data-root", default=os.environ.get("NCUTILS_DATA_ROOT") or "data",
                    help="folder holding MNIST/raw (default $NCUTILS_DATA_ROOT, else data/); never downloaded")
    a = ap.parse_args(argv)
    budget = a.budget_s if a.budget_s is not None else (75.0 if a.quick else 500.0)
    out = resolve_path(a.out)
    report = run_check(a.device, a.quick, budget, out, a.data_root)
    print(markdown(report))
    print(f"gpu_check: report in {out / 'report.json'} and {out / 'report.md'}")
    parts = report["parts"]
    bad = any(p["status"] == "failed" for p in parts.values()) or (
        parts["unit_tests"]["status"] == "ran" and not parts["unit_tests"]["results"]["ok"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
