"""Notebook 10: an MLP trained layer by layer (Tirer, Huang & Niles-Weed 2023, Fig. 2) — data, training, the
per-layer measurements, checkpoint/resume, the checks (which must be able to fail) and the parameters."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ncutils import metrics
from ncutils._validate import ParameterTypeError
from ncutils.pipeline import runner
from ncutils.solve import DivergenceError
from ncutils.studies import layerwise_mlp as study
from ncutils.studies.layerwise_mlp import LayerwiseConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Synthetic MNIST files in the real IDX format, read back flattened: 12 training and 3 test digits per class."""
    root = tmp_path_factory.mktemp("data")
    return study.layerwise_data("mnist", root, per_class=12, test_per_class=3, fake=True)


def _cfg(**kw) -> LayerwiseConfig:
    return LayerwiseConfig(**{"depth": 3, "width": 16, "epochs": 4, "batch_size": 16, "per_class": 12,
                              "test_per_class": 3, **kw})


# --------------------------------------------------------------------------- data and measurement
def test_data_are_flattened_balanced_and_normalized(tiny):
    X, y, Xt, yt = tiny
    assert X.shape == (120, 784) and X.dtype == torch.float32 and Xt.shape == (30, 784)
    assert (torch.bincount(y) == 12).all() and (torch.bincount(yt) == 3).all()
    assert abs(float(X.mean())) < 2.0  # normalized with MNIST's mean/std


def test_measure_level_equals_the_in_memory_metrics():
    g = torch.Generator().manual_seed(0)
    K, n, d = 4, 30, 12
    H = (torch.randn(K * n, d, generator=g) + 2 * torch.randn(K, d, generator=g).repeat_interleave(n, 0)).relu()
    y = torch.arange(K).repeat_interleave(n)
    clf = torch.nn.Linear(d, K)
    res = study.measure_level(H, y, H[:40], y[:40], clf, "mse", K, batch=7)
    assert res["nc1"] == pytest.approx(metrics.nc1(H.double(), y), rel=1e-9)
    assert res["nc1_trace"] == pytest.approx(metrics.nc1_trace(H.double(), y), rel=1e-9)
    with torch.no_grad():
        out = clf(H)
        mse = 0.5 * (out - torch.nn.functional.one_hot(y, K)).square().sum(1).mean()
    assert res["train_accuracy"] == pytest.approx(float((out.argmax(1) == y).float().mean()))
    assert res["test_accuracy"] == pytest.approx(float((out[:40].argmax(1) == y[:40]).float().mean()))
    assert res["train_loss"] == pytest.approx(float(mse), rel=1e-5)
    assert {"nc3_etf", "nc4", "nc4_test", "ncc_accuracy_test"} <= set(res)
    bare = study.measure_level(H, y, K=K)  # the input: no classifier, no test set
    assert "train_accuracy" not in bare and bare["nc1"] == pytest.approx(res["nc1"], rel=1e-12)


# --------------------------------------------------------------------------- training
def test_training_freezes_each_layer_and_measures_the_deepest_features(tiny):
    X, y, _, _ = tiny
    cfg = _cfg(loss="ce", fc_bias=True, epochs=12)
    res = study.train_layerwise(cfg, tiny, progress=False)
    t = study.layer_table(res.history)
    assert list(t.index) == [0, 1, 2, 3] and len(res.layers) == len(res.classifiers) == 3
    assert math.isnan(t.train_accuracy.loc[0]) and t.train_accuracy.loc[3] > 0.5  # chance: 0.1
    assert t.nc1.loc[0] == pytest.approx(metrics.nc1(X.double(), y), rel=1e-9)  # the input is layer 0
    H = X
    for k, layer in enumerate(res.layers, start=1):  # the recorded numbers are those of the frozen network
        with torch.no_grad():
            H = torch.relu(layer(H))
        assert t.nc1.loc[k] == pytest.approx(metrics.nc1(H.double(), y), rel=1e-6)
        assert t.nc1_trace.loc[k] == pytest.approx(metrics.nc1_trace(H.double(), y), rel=1e-6)
        with torch.no_grad():
            acc = float((res.classifiers[k - 1](H).argmax(1) == y).float().mean())
        assert t.train_accuracy.loc[k] == pytest.approx(acc)
    assert res.layers[1].in_features == res.layers[1].out_features == 16 and res.classifiers[0].bias is not None
    assert cfg.milestones() == [4, 8] and _cfg().milestones() == [1, 2]
    assert LayerwiseConfig(epochs=20).milestones() == [6, 13]


def test_an_interrupted_run_resumes_at_the_next_layer_with_the_same_numbers(tiny, tmp_path, monkeypatch):
    cfg = _cfg()
    ref = study.train_layerwise(cfg, tiny, checkpoint=tmp_path / "ref.pt", progress=False)
    ckpt = study.checkpoint_path(tmp_path, cfg, tiny)
    real = study._train_stage

    def interrupted(F, y, cfg, layer, K, tick):
        if layer == 3:
            raise KeyboardInterrupt  # as if the kernel were interrupted while the third layer trains
        return real(F, y, cfg, layer, K, tick)

    monkeypatch.setattr(study, "_train_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.train_layerwise(cfg, tiny, checkpoint=ckpt, progress=False)
    assert len(torch.load(ckpt, weights_only=True)["layers"]) == 2
    monkeypatch.setattr(study, "_train_stage", real)
    resumed = study.train_layerwise(cfg, tiny, checkpoint=ckpt, progress=False)
    assert resumed.resumed_from == 2 and ref.resumed_from == 0
    a, b = (r.history[~r.history.metric.str.endswith("time_s")].reset_index(drop=True) for r in (ref, resumed))
    assert a[["layer", "metric"]].equals(b[["layer", "metric"]])
    np.testing.assert_array_equal(b.value.to_numpy(), a.value.to_numpy())  # identical, not merely close
    for p, q in zip(ref.layers[2].parameters(), resumed.layers[2].parameters(), strict=True):
        assert torch.equal(p, q)
    # a finished checkpoint returns at once; another configuration or a damaged file is refused
    assert study.train_layerwise(cfg, tiny, checkpoint=ckpt, progress=False).resumed_from == 3
    with pytest.raises(ValueError, match="written by a different configuration"):
        study.train_layerwise(_cfg(lr=0.01), tiny, checkpoint=ckpt, progress=False)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot be read .* delete it to start the run afresh"):
        study.train_layerwise(cfg, tiny, checkpoint=ckpt, progress=False)


def test_divergence_stops_the_run_with_a_message(tiny):
    with pytest.raises(DivergenceError, match=r"layer 1 diverged at epoch \d+: mean training loss .*; lower lr"):
        study.train_layerwise(_cfg(lr=1e6, momentum=0.0), tiny, progress=False)


# --------------------------------------------------------------------------- checks
def _history(nc1: list[float], nc1_trace: list[float], acc: float = 1.0) -> pd.DataFrame:
    rows = []
    for k, (a, b) in enumerate(zip(nc1, nc1_trace, strict=True)):
        rows += [{"layer": k, "metric": "nc1", "value": a}, {"layer": k, "metric": "nc1_trace", "value": b}]
        if k:
            rows.append({"layer": k, "metric": "train_accuracy", "value": acc})
    return pd.DataFrame(rows)


def test_checks_pass_on_falling_variability_and_fail_on_contradicting_numbers():
    good = study.layerwise_checks(_history([9.0, 4.0, 2.0, 1.0], [3.0, 2.0, 1.5, 1.0]), 0.99)
    assert [c["id"] for c in good] == ["nc1_falls_at_every_added_layer", "nc1_last_over_first_below_1",
                                       "nc1_trace_falls_at_every_added_layer", "nc1_trace_last_over_first_below_1",
                                       "final_train_accuracy_reached"]
    assert all(c["passed"] for c in good)
    assert good[0]["count"] == good[0]["total"] == 2  # layers 2 and 3 added; the input (layer 0) is no layer
    # NC1 rises at layer 3, NC1~ ends above layer 1, the last stage does not fit its data
    bad = study.layerwise_checks(_history([0.1, 4.0, 2.0, 3.0], [3.0, 1.0, 0.5, 1.2]), 0.99)
    bad += study.layerwise_checks(_history([9.0, 4.0, 2.0, 1.0], [3.0, 2.0, 1.5, 1.0], acc=0.9), 0.99)[-1:]
    assert [c["passed"] for c in bad] == [False, True, False, False, True, False]
    assert bad[0]["count"] == 1 and bad[3]["gd"] == pytest.approx(1.2)
    # a non-finite value never counts as falling, and makes the ratio fail
    nan = study.layerwise_checks(_history([9.0, 4.0, math.nan, 1.0], [3.0, 2.0, 1.5, math.inf]), 0.99)
    assert nan[0]["count"] == 0 and not nan[0]["passed"] and not nan[3]["passed"]


def test_figure_has_the_papers_panels():
    fig = study.layerwise_figure(_history([9.0, 4.0, 2.0, 1.0], [3.0, 2.0, 1.5, 1.0]), title="t")
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["NC1 = tr(Σ_W Σ_B†)/K", "NC1~ = tr Σ_W / tr Σ_B", "accuracy of each stage"]
    assert axes[0].get_yscale() == axes[1].get_yscale() == "log"
    import matplotlib.pyplot as plt

    plt.close(fig)


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"dataset": "svhn"}, ValueError, r"^parameter dataset must be one of \('mnist', 'cifar10'\), got 'svhn'$"),
        ({"depth": 1}, ValueError, r"^parameter depth must be an integer in \[2, 100\], got 1$"),
        ({"width": 4}, ValueError, r"^parameter width must be an integer in \[10, inf\), got 4$"),
        ({"loss": "hinge"}, ValueError, r"^parameter loss must be one of \('mse', 'ce'\), got 'hinge'$"),
        ({"lr": 0.0}, ValueError, r"^parameter lr must be a finite number in \(0, inf\), got 0.0$"),
        ({"momentum": 1.5}, ValueError, r"^parameter momentum must be a finite number in \[0, 1\], got 1.5$"),
        ({"epochs": 2.0}, ParameterTypeError, r"^parameter epochs must be an integer in \[1, inf\), got 2.0"),
        ({"fc_bias": 1}, ParameterTypeError, r"^parameter fc_bias must be a bool"),
    ],
)
def test_bad_config(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LayerwiseConfig(**kwargs)


def test_config_from_params_and_fingerprint():
    params = {"dataset": "mnist", "depth": 4, "width": 64, "lr": 0.1, "seed": 2, "device": "cpu", "profile": "x",
              "min_train_accuracy": 0.5}
    cfg = LayerwiseConfig.from_params(params)
    assert (cfg.depth, cfg.width, cfg.lr, cfg.seed, cfg.epochs) == (4, 64, 0.1, 2, 60)
    assert cfg.fingerprint() == LayerwiseConfig.from_params(params).fingerprint()
    assert cfg.fingerprint() != LayerwiseConfig.from_params({**params, "width": 65}).fingerprint()


def test_the_cpu_hours_guard_refuses_the_paper_scale_and_admits_the_cpu_profile():
    cpu = {**runner.declared_parameters(runner.notebook_path("10")), **runner.load_profile("10", "cpu")}
    paper = {**cpu, **runner.load_profile("10", "cifar10")}
    assert study.layerwise_cpu_hours(cpu) < 0.05 < cpu["max_cpu_hours"] < study.layerwise_cpu_hours(paper)
    # forward + backward of a 784-256-10 stage: 6 × (784·256 + 256·10) per sample and epoch, plus 2 forward passes
    one = {**cpu, "depth": 1, "epochs": 1, "per_class": 1}
    assert study.layerwise_flops(one) == pytest.approx(10 * (6 + 4) * (784 * 256 + 2560))


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"depth": 1}, r"parameter depth must be an integer in \[2, 100\], got 1"),
        ({"width": 5}, r"parameter width must be an integer in \[10, inf\), got 5"),
        ({"data_root": "no/such/folder"}, r"parameter data_root: mnist not found: looked for train-images-idx3-ubyte"),
        ({"dataset": "cifar10", "per_class": 5000, "width": 1024, "epochs": 100, "device": "cpu"},
         r"this run needs about \d+(\.\d+)? CPU hours .* run it on a GPU \(device cuda\)"),
    ],
)
def test_bad_parameters_of_notebook_10_are_refused_before_any_kernel_starts(no_kernel, bad, match, monkeypatch):
    monkeypatch.delenv("NCUTILS_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match=match):
        runner.run_notebook("10", params=bad)
