"""The device paths against the CPU: solvers, metrics, streaming metrics and ResNet training (marker ``gpu``).

Every test is parametrized over the devices available here (``cpu``, and ``cuda`` where there is one), so the
normal suite runs the CPU case and ``make gpu-check`` (``pytest -m gpu``) on a GPU machine runs both. The branches
that are CUDA defaults in :func:`ncutils.train.train_resnet` — bf16 autocast, channels_last, ``torch.compile`` —
run on the CPU too (CPU autocast bfloat16, NHWC on the CPU, inductor's C++ backend), so a GPU run is never
their first execution.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from ncutils import UFM, gradient_descent
from ncutils.metrics import nc_metrics_t
from ncutils.models import DeepUFM
from ncutils.nets import resnet18
from ncutils.phase import phase_diagram
from ncutils.stream import StreamingNC
from ncutils.train import TrainConfig, measure_network, train_resnet

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
pytestmark = [pytest.mark.gpu, pytest.mark.parametrize("device", DEVICES)]


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """One intra-op CPU thread: these models are tiny, and several threads wait on each other (about 3× slower
    on a busy 2-core machine); the caller's count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(got: dict, ref: dict, rtol: float, atol: float, where: str = "") -> None:
    assert got.keys() == ref.keys(), where
    for key, r in ref.items():
        g = got[key]
        if isinstance(r, dict):
            _close(g, r, rtol, atol, f"{where}/{key}")
            continue
        g, r = (np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v, dtype=float) for v in (g, r))
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{where}/{key}")


# --------------------------------------------------------------------------- solvers
def test_gradient_descent_on_device_matches_cpu(device):
    """Batched float64 GD (per-run λ) on ``device`` follows the CPU's trajectory: same initializations (drawn
    on the CPU), same recorded history up to float64 summation-order round-off."""
    model = UFM(4, 10, 8, (0.005, 0.01, 0.02), (0.005, 0.01, 0.02))
    kw = dict(lr=0.2, steps=300, seed=1, dtype="float64", record_every=100, progress=False)
    ref = gradient_descent(model, device="cpu", **kw)
    got = gradient_descent(model, device=device, **kw)
    assert got.device.startswith(device)
    for k, v in ref.params.items():
        np.testing.assert_allclose(got.params[k].cpu().numpy(), v.numpy(), rtol=1e-7, atol=1e-9, err_msg=k)
    a, b = ref.history, got.history
    assert a[["step", "run", "level", "metric"]].equals(b[["step", "run", "level", "metric"]])
    np.testing.assert_allclose(b.value, a.value, rtol=1e-7, atol=1e-9, equal_nan=True)


def test_deep_ufm_and_phase_diagram_on_device_match_cpu(device):
    deep = DeepUFM(3, 6, 6, L=3, activation="relu", lambda_W=0.01, lambda_H=(0.01, 0.02))
    kw = dict(lr=0.1, steps=200, seed=2, dtype="float64", record_every=200, progress=False)
    ref, got = gradient_descent(deep, device="cpu", **kw), gradient_descent(deep, device=device, **kw)
    np.testing.assert_allclose(got.history.value, ref.history.value, rtol=1e-7, atol=1e-9, equal_nan=True)
    grid = dict(lr=0.3, steps=200, init_std=0.3, seeds=2, progress=False)
    pa = phase_diagram("ufm", 3, 5, 6, [0.005, 0.05], [0.005, 0.05], device="cpu", **grid)
    pb = phase_diagram("ufm", 3, 5, 6, [0.005, 0.05], [0.005, 0.05], device=device, **grid)
    cols = [c for c in pa.runs.columns if c.endswith("_gd") and c != "output_rank_gd"]
    np.testing.assert_allclose(pb.runs[cols].to_numpy(), pa.runs[cols].to_numpy(), rtol=1e-7, atol=1e-9)
    assert (pb.runs.output_rank_gd == pa.runs.output_rank_gd).all()


# --------------------------------------------------------------------------- metrics
def _features(K: int, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(K, d, generator=g, dtype=torch.float64)
    y = torch.arange(K).repeat_interleave(n)
    H = torch.randn(K * n, d, generator=g, dtype=torch.float64) + means[y]
    perm = torch.randperm(K * n, generator=g)
    return H[perm], y[perm], torch.randn(K, d, generator=g, dtype=torch.float64), torch.randn(K, generator=g,
                                                                                              dtype=torch.float64)


def test_nc_metrics_t_on_device_match_cpu(device):
    H, y, W, b = _features(5, 30, 12, 0)
    ref = nc_metrics_t(H, y, 5, W=W, b=b, spectrum=True)
    got = nc_metrics_t(H.to(device), y.to(device), 5, W=W.to(device), b=b.to(device), spectrum=True)
    assert all(v.device.type == device for v in got.values())
    _close(got, ref, rtol=1e-9, atol=1e-11)


def test_streaming_nc_on_device_matches_cpu(device):
    """StreamingNC with its statistics on ``device`` (float32 features arriving in batches, float64
    accumulation) gives the CPU's metrics, train and test."""
    H, y, W, b = _features(4, 50, 300, 1)
    H32, W32, b32 = H.float(), W.float(), b.float()
    results = {}
    for dev in ("cpu", device):
        acc = StreamingNC(4, dev, tile=4096)  # small tiles: the tiled paths run too
        clf = {"h": (W32.to(dev), b32.to(dev))}
        for i in range(0, len(y), 32):
            acc.update_means({"h": H32[i:i + 32].to(dev)}, y[i:i + 32].to(dev))
        for i in range(0, len(y), 32):
            acc.update_within({"h": H32[i:i + 32].to(dev)}, y[i:i + 32].to(dev), clf)
        acc.update_test({"h": H32[:40].to(dev)}, y[:40].to(dev), clf)
        results[dev] = acc.result()
    _close(results[device], results["cpu"], rtol=1e-7, atol=1e-10)


def test_measure_network_on_device_matches_cpu(device):
    """The layer-wise metrics of a (small, random) ResNet18 in float32 — TF32 off, so the device computes what
    the CPU computes — agree with the CPU's up to float32 round-off."""
    from ncutils.data import DeviceBatches

    torch.manual_seed(0)
    model = resnet18(4, 3, True, 0.0625).eval()
    g = torch.Generator().manual_seed(1)
    y = torch.arange(4).repeat_interleave(10)
    X = torch.randn(40, 3, 32, 32, generator=g) + y.float().reshape(-1, 1, 1, 1)
    layers = ("stem", "layer2", "layer4")
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        res = {dev: measure_network(model.to(dev), DeviceBatches(X, y, 16, dev, shuffle=False),
                                    DeviceBatches(X[:12], y[:12], 16, dev, shuffle=False), 4, "mse", layers)
               for dev in ("cpu", device)}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    _close(res[device], res["cpu"], rtol=2e-3, atol=1e-5)


# --------------------------------------------------------------------------- ResNet training branches
def _data(per_class: int = 8, test_per_class: int = 2):
    """CIFAR-shaped (3×32×32) images whose class shifts their mean: ``(X, y, X_test, y_test)``, class-major."""
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(10).repeat_interleave(n)
        return torch.randn(10 * n, 3, 32, 32, generator=g) + 0.5 * (y.float() - 4.5).reshape(-1, 1, 1, 1), y

    return (*images(per_class), *images(test_per_class))


def _config(**kw) -> TrainConfig:
    # 80 images in batches of 16: every batch has the same shape (no recompilation under torch.compile)
    return TrainConfig(**{"dataset": "cifar10", "per_class": 8, "width_multiplier": 0.0625, "epochs": 2,
                          "batch_size": 16, "measure_every": 1, "layers": ("layer1", "layer4"), "lr": 0.02, **kw})


def _recording_dtypes(monkeypatch) -> dict[bool, set]:
    """Patch :func:`ncutils.nets.resnet18` so the models ``train_resnet`` builds record the dtype of ``layer4``'s
    output: ``{training mode: {dtypes}}``."""
    import ncutils.nets

    seen: dict[bool, set] = {True: set(), False: set()}
    build = ncutils.nets.resnet18

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        model.layer4.register_forward_hook(lambda m, _i, out: seen[m.training].add(out.dtype))
        return model

    monkeypatch.setattr(ncutils.nets, "resnet18", recording)
    return seen


def _finite_metrics(res) -> None:
    h = res.history
    assert np.isfinite(h.value.to_numpy()).all()
    assert set(h.layer) == {"model", "layer1", "layer4"} and sorted(h.epoch[h.metric == "nc1"].unique()) == [1, 2]


def test_train_resnet_default_precision_per_device(device):
    """Defaults unchanged: bf16 autocast and channels_last on CUDA, float32 and NCHW on the CPU."""
    cuda = device == "cuda"
    res = train_resnet(_config(epochs=1), _data(), device=device, progress=False)
    assert (res.precision, res.channels_last, res.compiled) == ("bf16" if cuda else "fp32", cuda, False)
    assert res.model.conv1.weight.is_contiguous(memory_format=torch.channels_last) == cuda


def test_train_resnet_bf16_channels_last_measures_in_float32(device, monkeypatch):
    """bf16 autocast + channels_last (CUDA's defaults, here on ``device``): the training forward passes run in
    bfloat16, the measurements in float32 (features outside autocast); the parameters stay float32 and NHWC;
    the metrics are those of a float32 measurement of the final model; the losses follow the fp32 run's."""
    from ncutils.data import DeviceBatches

    seen = _recording_dtypes(monkeypatch)
    data = _data()
    cfg = _config()
    res = train_resnet(cfg, data, device=device, precision="bf16", channels_last=True, progress=False)
    assert (res.precision, res.channels_last) == ("bf16", True)
    assert seen == {True: {torch.bfloat16}, False: {torch.float32}}
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    assert res.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    _finite_metrics(res)
    X, y, Xt, yt = data
    again = measure_network(res.model, DeviceBatches(X, y, 256, device, shuffle=False, channels_last=True),
                            DeviceBatches(Xt, yt, 256, device, shuffle=False, channels_last=True), 10, cfg.loss,
                            cfg.layers)
    for layer in ("layer1", "layer4"):
        assert res.final("nc1", layer) == pytest.approx(again[layer]["nc1"], rel=1e-6)
    fp32 = train_resnet(cfg, data, device=device, precision="fp32", channels_last=False, progress=False)
    assert fp32.precision == "fp32" and not fp32.channels_last
    loss = {r.precision: r.history.query("metric == 'running_loss' and epoch == 1").value.item() for r in (res, fp32)}
    assert loss["bf16"] == pytest.approx(loss["fp32"], rel=0.05)


def test_train_resnet_options_are_validated(device):
    with pytest.raises(ValueError, match=r"^parameter precision must be one of \('bf16', 'fp32'\), got 'fp16'$"):
        train_resnet(_config(epochs=1), _data(), device=device, precision="fp16", progress=False)
    with pytest.raises(TypeError, match=r"^parameter channels_last must be a bool"):
        train_resnet(_config(epochs=1), _data(), device=device, channels_last=1, progress=False)


def _compiler_missing() -> str | None:
    """Why inductor cannot build kernels here (no C/C++ compiler for its C++ backend or Triton's launcher)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # an older torch: inductor uses $CXX, else g++
        cxx = os.environ.get("CXX", "g++")
    else:
        try:
            cxx = get_cpp_compiler()
        except Exception as err:  # inductor raises when it finds no compiler
            return f"torch.compile (inductor) needs a C++ compiler: {type(err).__name__}: {err}"
    if shutil.which(cxx) is None:
        return f"torch.compile (inductor) needs a C++ compiler; {cxx!r} is not on PATH"
    return None


def test_train_resnet_compiled_bf16_channels_last(device):
    """The full CUDA training step — ``torch.compile`` (inductor) of the bf16/channels_last model — on ``device``
    (on the CPU: inductor's C++ backend): it trains, and its losses and metrics follow the eager run's."""
    reason = _compiler_missing()
    if reason:
        pytest.skip(reason)
    torch._dynamo.reset()
    data, cfg = _data(), _config()
    opts = dict(device=device, precision="bf16", channels_last=True, progress=False)
    compiled = train_resnet(cfg, data, compile=True, **opts)
    eager = train_resnet(cfg, data, compile=False, **opts)
    assert compiled.compiled and not eager.compiled
    _finite_metrics(compiled)
    loss = [r.history.query("metric == 'running_loss' and epoch == 1").value.item() for r in (compiled, eager)]
    assert loss[0] == pytest.approx(loss[1], rel=0.05)
    assert compiled.final("train_accuracy") == pytest.approx(eager.final("train_accuracy"), abs=0.15)
