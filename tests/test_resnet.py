"""ResNet18 on real-format data: datasets, the model, streaming metrics, training, resume (notebook 07)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ncutils import metrics
from ncutils._validate import ParameterTypeError
from ncutils.data import DatasetNotFoundError, DeviceBatches, load_dataset, write_fake_cifar10, write_fake_mnist
from ncutils.nets import RESNET_LAYERS, FeatureTaps, resnet18
from ncutils.pipeline import runner
from ncutils.solve import DivergenceError
from ncutils.stream import StreamingNC
from ncutils.studies import resnet as resnet_study
from ncutils.train import TrainConfig, measure_network, train_epoch, train_resnet

KEYS = ("nc1", "nc1_trace", "nc2_etf", "nc2_orthogonal", "nc2_equinorm", "nc2_equiangle", "nc2_maxangle",
        "mean_norm_sq")


# --------------------------------------------------------------------------- data
def test_fake_cifar10_round_trip_through_torchvision(tmp_path):
    write_fake_cifar10(tmp_path, per_class=6, test_per_class=2)
    X, y = load_dataset("cifar10", tmp_path, verify=False)
    assert X.shape == (60, 3, 32, 32) and (y == torch.arange(10).repeat_interleave(6)).all()
    assert X.mean((0, 2, 3)).abs().max() < 1.5
    Xt, yt = load_dataset("cifar10", tmp_path, train=False, verify=False)
    assert Xt.shape == (20, 3, 32, 32) and (torch.bincount(yt) == 2).all()
    # torchvision's MD5 check refuses files that are not the published ones, with a clear message
    with pytest.raises(DatasetNotFoundError, match=r"cifar10 files under .* could not be read \(Dataset not found "
                                                   r"or corrupted.*verify=False skips the MD5 check"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"cifar10 not found: looked for data_batch_1, .*batches.meta in "
                                                   r".*nothing/cifar-10-batches-py; pass download=True"):
        load_dataset("cifar10", tmp_path / "nothing")


def test_mnist_padded_to_32_with_the_background_value(tmp_path):
    write_fake_mnist(tmp_path, per_class=3)
    X, _ = load_dataset("mnist", tmp_path, pad_to=32)
    X28, _ = load_dataset("mnist", tmp_path)
    assert X.shape == (30, 1, 32, 32)
    torch.testing.assert_close(X[:, :, 2:30, 2:30], X28)
    assert torch.allclose(X[:, :, 0, :], torch.tensor(-0.1307 / 0.3081))


def test_device_batches_shuffle_deterministically_and_cover_everything():
    X, y = torch.arange(50.0).reshape(50, 1), torch.arange(50) % 5
    a, b = DeviceBatches(X, y, 16, seed=3), DeviceBatches(X, y, 16, seed=3)
    ea, eb = [t.clone() for t, _ in a.epoch()], [t.clone() for t, _ in b.epoch()]
    assert len(ea) == len(a) == 4 and all(torch.equal(s, t) for s, t in zip(ea, eb, strict=True))
    assert sorted(torch.cat(ea).flatten().tolist()) == list(range(50))
    assert not torch.equal(torch.cat(ea), torch.cat([t for t, _ in a.epoch()]))  # a new order every epoch
    with pytest.raises(ValueError, match=r"^parameter batch_size must be an integer in \[1, inf\), got 0$"):
        DeviceBatches(X, y, 0)


# --------------------------------------------------------------------------- model
def test_train_epoch_returns_the_sample_mean_loss_and_stops_on_divergence():
    torch.manual_seed(0)
    X, y = torch.randn(10, 3), torch.arange(10) % 2
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=0.0)  # lr 0: every batch sees the same w, so the mean is checkable
    batches = [(X[:4], y[:4]), (X[4:], y[4:])]  # unequal batches: weighted by their sizes

    def loss_of(xb, yb):
        return ((xb @ w + 1.0 - yb) ** 2).mean()

    mean, seconds = train_epoch(loss_of, batches, opt, epoch=1, lr=0.0, device=torch.device("cpu"))
    assert mean == pytest.approx(float(((1.0 - y) ** 2).float().mean())) and seconds >= 0
    assert w.grad is not None and torch.count_nonzero(w.grad) > 0
    with pytest.raises(DivergenceError, match=r"training diverged at epoch 7: mean loss nan with lr = 0.5; lower lr"):
        train_epoch(lambda xb, yb: loss_of(xb, yb) * float("nan"), batches, opt, epoch=7, lr=0.5,
                    device=torch.device("cpu"))


def test_resnet18_cifar_stem_and_width():
    m = resnet18(10, 3, True, 1.0)
    assert sum(p.numel() for p in m.parameters()) == 11_173_962  # ResNet18 with the CIFAR stem, 10 classes
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and isinstance(m.maxpool, torch.nn.Identity)
    small = resnet18(10, 1, False, 0.125)
    assert small.fc.bias is None and small.fc.in_features == 64 and small.conv1.in_channels == 1
    taps = FeatureTaps(small, ("stem", "layer1", "layer4"), flatten=True)
    out = small(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)
    assert taps.out["layer1_flat"].shape == (2, 8 * 32 * 32)  # stride-1 stem keeps 32×32
    assert taps.out["layer4"].shape == (2, 64)
    with pytest.raises(ValueError, match=r"^parameter width must be a finite number in \(0, inf\), got 0$"):
        resnet18(width=0)
    with pytest.raises(ParameterTypeError, match=r"^parameter num_classes must be an integer in \[2, inf\), got '10'"):
        resnet18(num_classes="10")


# --------------------------------------------------------------------------- streaming metrics
@pytest.mark.parametrize("d,batch", [(40, 32), (3000, 64)])
def test_streaming_metrics_match_in_memory(d, batch):
    g = torch.Generator().manual_seed(d)
    K, n = 5, 40
    means = 3 * torch.randn(K, d, generator=g, dtype=torch.float64)
    H = torch.randn(K * n, d, generator=g, dtype=torch.float64) + means.repeat_interleave(n, 0)
    y = torch.arange(K).repeat_interleave(n)
    perm = torch.randperm(K * n, generator=g)
    H, y = H[perm].float(), y[perm]  # network features arrive in float32, shuffled
    W, b = torch.randn(K, d, generator=g), torch.randn(K, generator=g)
    acc = StreamingNC(K)
    for i in range(0, len(y), batch):
        acc.update_means({"h": H[i:i + batch]}, y[i:i + batch])
    for i in range(0, len(y), batch):
        acc.update_within({"h": H[i:i + batch]}, y[i:i + batch], {"h": (W, b)})
    got = acc.result()["h"]
    ref = metrics.nc_metrics(H.double(), y, W=W.double(), b=b.double())
    for key in (*KEYS, "nc3_etf", "nc3_orthogonal", "nc4"):
        assert abs(got[key] - ref[key]) <= 1e-6 * max(1.0, abs(ref[key])), key
    with pytest.raises(RuntimeError, match="update_means after the means were finalized"):
        acc.update_means({"h": H[:4]}, y[:4])


def test_streaming_metrics_refuse_incomplete_passes():
    acc = StreamingNC(3)
    H, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    acc.update_means({"h": H}, y)
    acc.update_within({"h": H[:3]}, y[:3])
    with pytest.raises(RuntimeError, match="pass 2 saw 3 samples but pass 1 saw 6"):
        acc.result()
    bad = StreamingNC(3)
    bad.update_means({"h": H[:2]}, y[:2])
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no samples"):
        bad.result()


def test_measure_network_matches_in_memory_metrics():
    torch.manual_seed(0)
    model = resnet18(4, 1, True, 0.0625).eval()
    X, y = torch.randn(48, 1, 32, 32), torch.arange(4).repeat_interleave(12)
    res = measure_network(model, DeviceBatches(X, y, 10, shuffle=False), DeviceBatches(X, y, 7, shuffle=False), 4,
                          "ce", ("stem", "layer2", "layer4"), flatten=True)
    taps = FeatureTaps(model, ("stem", "layer2", "layer4"), flatten=True)
    with torch.no_grad():
        out = model(X)
    for name in ("stem", "stem_flat", "layer2", "layer4"):
        ref = metrics.nc_metrics(taps.out[name].double(), y, W=model.fc.weight.double() if name == "layer4" else None,
                                 b=model.fc.bias.double() if name == "layer4" else None)
        for key in KEYS + (("nc3_etf", "nc4") if name == "layer4" else ()):
            assert abs(res[name][key] - ref[key]) <= 1e-6 * max(1.0, abs(ref[key])), (name, key)
    assert res["model"]["train_accuracy"] == pytest.approx(float((out.argmax(1) == y).float().mean()))
    assert res["model"]["train_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(out, y)), rel=1e-5)


# --------------------------------------------------------------------------- training and resume
def _tiny(tmp_path, **kw):
    write_fake_mnist(tmp_path / "data", per_class=8, test_per_class=2)
    X, y = load_dataset("mnist", tmp_path / "data", pad_to=32)
    Xt, yt = load_dataset("mnist", tmp_path / "data", train=False, pad_to=32)
    cfg = TrainConfig(per_class=8, width_multiplier=0.0625, epochs=4, batch_size=16, measure_every=2, flatten=False,
                      layers=("layer1", "layer4"), **kw)
    return cfg, (X, y, Xt, yt)


_CHILD = """
import sys, torch
torch.set_num_threads(1)
from ncutils.data import load_dataset
from ncutils.train import TrainConfig, train_resnet
root, ckpt = sys.argv[1], sys.argv[2]
X, y = load_dataset("mnist", root + "/data", pad_to=32)
Xt, yt = load_dataset("mnist", root + "/data", train=False, pad_to=32)
cfg = TrainConfig(per_class=8, width_multiplier=0.0625, epochs=4, batch_size=16, measure_every=2, flatten=False,
                  layers=("layer1", "layer4"))
import ncutils.train as t
orig = t.DeviceBatches.epoch
def slow_epoch(self):  # make each epoch last long enough to be killed in the middle of the run
    import time
    time.sleep(0.5)
    yield from orig(self)
t.DeviceBatches.epoch = slow_epoch
train_resnet(cfg, (X, y, Xt, yt), checkpoint=ckpt, checkpoint_every=1, progress=False)
"""


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg, data = _tiny(tmp_path)
        ref = train_resnet(cfg, data, checkpoint=tmp_path / "ref.pt", progress=False)
        ckpt = tmp_path / "killed.pt"
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), str(ckpt)],
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 120
        while time.time() < deadline:
            if ckpt.exists() and torch.load(ckpt, weights_only=False)["epoch"] >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = torch.load(ckpt, weights_only=False)
        assert 2 <= state["epoch"] < cfg.epochs, "the run was not killed in the middle"
        resumed = train_resnet(cfg, data, checkpoint=ckpt, progress=False)
        assert resumed.resumed_from == state["epoch"]
    finally:
        torch.set_num_threads(threads)
    a = ref.history[~ref.history.metric.str.endswith("time_s")].reset_index(drop=True)
    b = resumed.history[~resumed.history.metric.str.endswith("time_s")].reset_index(drop=True)
    assert a[["epoch", "layer", "metric"]].equals(b[["epoch", "layer", "metric"]])
    np.testing.assert_allclose(b.value, a.value, rtol=1e-6, atol=1e-9)
    # a finished checkpoint returns at once; another configuration is refused
    again = train_resnet(cfg, data, checkpoint=ckpt, progress=False)
    assert again.resumed_from == cfg.epochs
    with pytest.raises(ValueError, match="written by a different configuration"):
        train_resnet(TrainConfig(**{**cfg.__dict__, "lr": 0.01}), data, checkpoint=ckpt, progress=False)


def test_training_learns_and_records_every_layer(tmp_path):
    cfg, data = _tiny(tmp_path, loss="ce", fc_bias=True, schedule="thirds")
    res = train_resnet(cfg, data, progress=False)
    h = res.history
    assert sorted(h.epoch[h.metric == "nc1"].unique()) == [1, 2, 4]
    assert set(h.layer.unique()) == {"model", "layer1", "layer4"}
    assert res.final("train_accuracy") > 0.5 and res.final("nc4_test") <= 1
    assert cfg.milestones() == [1, 2] and TrainConfig(epochs=100).milestones() == [40, 80]


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"dataset": "svhn"}, ValueError, r"^parameter dataset must be one of \('mnist', 'cifar10'\), got 'svhn'$"),
        ({"loss": "hinge"}, ValueError, r"^parameter loss must be one of \('mse', 'ce'\), got 'hinge'$"),
        ({"batch_size": 0}, ValueError, r"^parameter batch_size must be an integer in \[1, inf\), got 0$"),
        ({"batch_size": 64.0}, ParameterTypeError,
         r"^parameter batch_size must be an integer in \[1, inf\), got 64.0 \(float\)$"),
        ({"layers": ("layer5",)}, ValueError,
         r"^parameter layers: must be a non-empty list of ResNet18 layers from "
         r"\('stem', 'layer1', 'layer2', 'layer3', 'layer4'\), got unknown \['layer5'\]$"),
        ({"layers": ()}, ValueError, r"^parameter layers: must be a non-empty list of ResNet18 layers .*got none$"),
        ({"schedule": "cosine"}, ValueError, r"^parameter schedule must be one of \('step40', 'thirds', 'constant'\)"),
        ({"lr": 0.0}, ValueError, r"^parameter lr must be a finite number in \(0, inf\), got 0.0$"),
        ({"width_multiplier": -1}, ValueError,
         r"^parameter width_multiplier must be a finite number in \(0, inf\), got -1.0$"),
        ({"momentum": -0.1}, ValueError, r"^parameter momentum must be a finite number in \[0, inf\), got -0.1$"),
        ({"fc_bias": 1}, ParameterTypeError, r"^parameter fc_bias must be a bool \(true/false\), got 1 \(int\)$"),
    ],
)
def test_bad_train_config(kwargs, exc, match):
    with pytest.raises(exc, match=match) as err:
        TrainConfig(**kwargs)
    assert type(err.value) is exc


def test_train_config_rules_from_params_and_fingerprint():
    import dataclasses
    import hashlib

    from ncutils._validate import Rule

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert list(TrainConfig.RULES) == names and all(isinstance(r, Rule) and r.doc for r in TrainConfig.RULES.values())
    assert TrainConfig.RULES["layers"].validate("layers", ["layer4"]) == ["layer4"]
    # notebook 07's parameters, with keys that are not training settings
    params = {"dataset": "mnist", "loss": "ce", "fc_bias": True, "lr": 0.05, "schedule": "thirds", "epochs": 40,
              "batch_size": 64, "momentum": 0.9, "wd_features": 5e-4, "wd_classifier": 5e-4, "per_class": 200,
              "test_per_class": 50, "width_multiplier": 0.125, "layers": ["layer1", "layer4"], "flatten": True,
              "measure_every": 2, "seed": 3, "device": "cpu", "data_root": "data", "results_dir": "",
              "checkpoint_every": 5, "compile": False, "profile": "cpu"}
    cfg = TrainConfig.from_params(params)
    assert cfg.width_multiplier == 0.125 and cfg.layers == ("layer1", "layer4") and cfg.seed == 3 and cfg.loss == "ce"
    assert cfg == TrainConfig(**{k: v for k, v in params.items() if k in names} | {"layers": ("layer1", "layer4")})
    assert TrainConfig.from_params({"epochs": 7}) == TrainConfig(epochs=7)
    with pytest.raises(ValueError, match=r"^parameter epochs must be an integer in \[1, inf\), got 0$"):
        TrainConfig.from_params(params | {"epochs": 0})
    # the fingerprint: same meaning as before the rename (the repr with the field named width)
    old_repr = repr(cfg).replace("width_multiplier=", "width=")
    assert cfg.fingerprint() == hashlib.sha256(old_repr.encode()).hexdigest()
    assert cfg.fingerprint() == TrainConfig.from_params(params).fingerprint()
    assert cfg.fingerprint() != dataclasses.replace(cfg, width_multiplier=0.25).fingerprint()


def test_nets_module_and_old_names():
    from ncutils import models, nets

    assert models.resnet18 is nets.resnet18 and models.RESNET_LAYERS is nets.RESNET_LAYERS == RESNET_LAYERS
    assert RESNET_LAYERS == ("stem", "layer1", "layer2", "layer3", "layer4")


# --------------------------------------------------------------------------- notebook 07 parameters
@pytest.mark.parametrize(
    "bad,match",
    [
        ({"dataset": "svhn"}, r"parameter dataset must be one of \('mnist', 'cifar10'\), got 'svhn'"),
        ({"loss": "hinge"}, r"parameter loss must be one of \('mse', 'ce'\), got 'hinge'"),
        ({"batch_size": 0}, r"parameter batch_size must be an integer in \[1, inf\), got 0"),
        ({"layers": ["layer1", "fc7"]}, r"parameter layers: must be a non-empty list of ResNet18 layers from "
                                        r"\('stem', 'layer1', 'layer2', 'layer3', 'layer4'\), got unknown \['fc7'\]"),
        ({"data_root": "no/such/folder"}, r"parameter data_root: mnist not found: looked for train-images-idx3-ubyte"),
        ({"fake_data": True, "device": "cpu", "per_class": 5000, "width_multiplier": 1.0, "epochs": 200},
         r"needs about 185 CPU hours .* run it on a GPU \(device cuda\)"),
    ],
)
def test_bad_parameters_of_notebook_07(no_kernel, bad, match, monkeypatch):
    monkeypatch.delenv("NCUTILS_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match=match):
        runner.run_notebook("07", params=bad)


def test_resnet_checks_and_tables_order_layers_by_depth():
    from types import SimpleNamespace

    import pandas as pd

    nc1 = {"stem": [3.0, 3.0], "layer1": [2.0, 1.0], "layer4": [1.0, 0.1], "layer1_flat": [1.0, 0.5]}
    rows = [{"epoch": e, "layer": layer, "metric": "nc1", "value": v[i]}
            for layer, v in nc1.items() for i, e in enumerate((1, 10))]
    good = SimpleNamespace(history=pd.DataFrame(rows))
    assert all(c["passed"] for c in resnet_study.resnet_checks(good))
    assert list(resnet_study.resnet_metric_table(good).index) == ["stem", "layer1", "layer1_flat", "layer4"]
    assert list(resnet_study.resnet_final(good).index) == ["stem", "layer1", "layer1_flat", "layer4"]
    worse = pd.DataFrame(rows)
    worse.loc[(worse.layer == "layer4") & (worse.epoch == 10), "value"] = 2.5  # grew, and above layer1
    checks = resnet_study.resnet_checks(SimpleNamespace(history=worse))
    assert [c["passed"] for c in checks] == [False, False]


def test_terminal_phase_rates_and_the_no_weight_decay_check():
    """Ji et al.'s claim is checked only without weight decay; it fails when NC1 stops falling after zero error."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from ncutils.train import TrainConfig

    epochs = [1, 5, 10, 20, 40]
    acc = [0.6, 1.0, 1.0, 1.0, 1.0]
    nc1 = [5.0, 1.0, 0.5, 0.25, 0.125]  # halves per doubling of the epoch: slope -1 from epoch 5 on
    rows = [{"epoch": e, "layer": "model", "metric": "train_accuracy", "value": a}
            for e, a in zip(epochs, acc, strict=True)]
    rows += [{"epoch": e, "layer": layer, "metric": "nc1", "value": v * (1 if layer == "layer4" else 3)}
             for layer in ("stem", "layer4") for e, v in zip(epochs, nc1, strict=True)]
    no_wd = TrainConfig(wd_features=0.0, wd_classifier=0.0)
    run = SimpleNamespace(history=pd.DataFrame(rows), config=no_wd)
    assert resnet_study.terminal_phase(run) == 5
    rates = resnet_study.collapse_rates(run, metrics=("nc1",))
    assert rates.loc["nc1", "points"] == 4 and rates.loc["nc1", "from_epoch"] == 5
    assert np.isclose(rates.loc["nc1", "slope_vs_log_epoch"], -1.0)
    checks = {c["id"]: c for c in resnet_study.resnet_checks(run)}
    assert checks["training_error_at_the_last_epoch"]["passed"]
    assert checks["no_weight_decay_terminal_nc1_falls"]["passed"]
    assert np.isclose(checks["no_weight_decay_terminal_nc1_falls"]["gd"], 0.125)
    flat = pd.DataFrame(rows)
    flat.loc[(flat.layer == "layer4") & (flat.epoch > 5), "value"] = 1.2  # grows after zero error
    bad = {c["id"]: c for c in resnet_study.resnet_checks(SimpleNamespace(history=flat, config=no_wd))}
    assert not bad["no_weight_decay_terminal_nc1_falls"]["passed"]
    with_wd = {c["id"] for c in resnet_study.resnet_checks(SimpleNamespace(history=flat, config=TrainConfig()))}
    assert "no_weight_decay_terminal_nc1_falls" not in with_wd  # the claim is Ji et al.'s, without weight decay
    never = pd.DataFrame(rows).assign(value=lambda d: d.value.where(d.metric != "train_accuracy", 0.9))
    assert resnet_study.terminal_phase(SimpleNamespace(history=never)) is None
    assert resnet_study.collapse_rates(SimpleNamespace(history=never)).empty
    assert not {c["id"]: c for c in resnet_study.resnet_checks(SimpleNamespace(history=never, config=no_wd))}[
        "no_weight_decay_terminal_nc1_falls"]["passed"]


@pytest.mark.parametrize("profile", ["cifar10_mse", "mnist_nowd", "cpu_ce"])
def test_every_profile_of_07_trains_on_fake_files_of_its_dataset(profile, tmp_path):
    """The GPU profiles (Fig. 10 on CIFAR-10, Ji et al. at paper scale) and the CPU arms run their own configuration —
    dataset, loss, bias, weight decays, schedule — on tiny synthetic files in the dataset's real format, shrunk only
    in size (subset, width, epochs), and name their figure after the paper figure they follow."""
    prof = runner.load_profile("07_resnet", profile)
    small = {"per_class": 3, "test_per_class": 2, "width_multiplier": 0.0625, "epochs": 2, "batch_size": 10,
             "measure_every": 1}
    cfg = TrainConfig.from_params({**prof, **small})
    assert {k: getattr(cfg, k) for k in prof if hasattr(cfg, k) and k not in small} == \
        {k: v for k, v in prof.items() if hasattr(cfg, k) and k not in small}
    data = resnet_study.resnet_data(cfg.dataset, str(tmp_path), cfg.per_class, cfg.test_per_class, fake=True)
    assert data[0].shape[1:] == ((3, 32, 32) if cfg.dataset == "cifar10" else (1, 32, 32))
    res = train_resnet(cfg, data, progress=False)
    assert res.history.query("metric == 'nc1' and layer == 'layer4'").value.notna().all()
    name = resnet_study.figure_name(cfg, profile)
    assert name.startswith("jlzds22_fig1_" if "nowd" in profile else
                           "tb22_fig10_" if cfg.dataset == "cifar10" else "tb22_fig5_") and name.endswith(profile)
