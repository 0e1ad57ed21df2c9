"""Notebook 12: a backbone + deep bias-free head on real-format digits — parameters, exact metrics on a collapsed
network, checkpoint/resume, divergence, the checks (which must fail on contradicting numbers), theory ranks."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ncutils import metrics
from ncutils.data import DeviceBatches
from ncutils.pipeline import params, runner
from ncutils.solve import DivergenceError
from ncutils.studies import deep_head as study

NB = "12_deep_head"


def _defaults(**kw):
    p = {k: v.default for k, v in params.notebook_schema(NB).items()}
    p.update({"per_class": 8, "test_per_class": 2, "width": 2, "head_width": 12, "epochs": 4, "batch_size": 16,
              "measure_every": 2, **kw})
    return p


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return study.head_data("mnist", root, 8, 2, 0, fake=True)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("bad,match", [
    ({"head_width": 5}, r"parameter head_width must be an integer in \[10, inf\), got 5"),
    ({"head_layers": 1}, r"parameter head_layers must be an integer in \[2, 12\], got 1"),
    ({"rank_tol": 1.5}, r"parameter rank_tol: must be in \(0, 1\), got 1.5"),
    ({"rank_tol": 0.0}, r"parameter rank_tol: must be in \(0, 1\), got 0.0"),
    ({"backbone": "vgg"}, r"parameter backbone must be one of \('cnn', 'resnet18'\), got 'vgg'"),
    ({"schedule": "cosine"}, r"parameter schedule must be one of \('constant', 'thirds'\)"),
    ({"weight_decay": -1e-3}, r"parameter weight_decay must be a finite number in \[0, inf\)"),
    ({"epochs": 0}, r"parameter epochs must be an integer in \[1, inf\), got 0"),
])
def test_bad_parameters_fail_before_any_compute(no_kernel, bad, match, monkeypatch):
    with pytest.raises(ValueError, match=match):
        runner.run_notebook(NB, params={**bad, "fake_data": True})
    with pytest.raises(ValueError, match=match):
        params.setup(NB, **bad, fake_data=True)


def test_train_validates_its_parameters_before_any_compute(digits, monkeypatch):
    monkeypatch.setattr(study, "make_model", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(ValueError, match=r"^parameter batch_size must be an integer in \[1, inf\), got 0$"):
        study.train_deep_head(_defaults(batch_size=0), digits, progress=False)
    with pytest.raises(ValueError, match=r"parameters \['seed'\] are missing"):
        study.train_deep_head({k: v for k, v in _defaults().items() if k != "seed"}, digits, progress=False)


def test_gpu_profiles_are_refused_on_a_cpu_and_the_cpu_profile_fits():
    for prof in ("paper", "cifar10"):  # refused for the CPU time, before the (absent) CIFAR-10 files are looked for
        p = {**runner.declared_parameters(runner.notebook_path(NB)), **runner.load_profile(NB, prof), "device": "cpu"}
        assert study.head_cpu_hours(p) > 100, prof
        with pytest.raises(ValueError, match=r"this run needs about .* CPU hours .*run it on a GPU"):
            params.setup(NB, **{**p, "fake_data": True})
    cpu = runner.declared_parameters(runner.notebook_path(NB))
    assert study.head_cpu_hours(cpu) < 5 / 60  # the BUDGET of the committed run: 5 minutes
    assert runner.committed_profile(NB) == "cpu" and runner.figure_profiles(NB) == ["cpu", "paper", "cifar10"]


# --------------------------------------------------------------------------- model and exact metrics
def test_collapsed_network_has_exact_dnc_values():
    """A head that carries one-hot inputs e_y through identity layers: every level is an orthogonal frame with
    no within-class spread, every W_l = I is aligned with its class means, the output fits exactly."""
    K, n = 10, 3
    X, y = torch.eye(K).repeat_interleave(n, 0), torch.arange(K).repeat_interleave(n)
    model = study.DeepHeadNet(nn.Identity(), K, K, 4, K)
    with torch.no_grad():
        for layer in model.head:
            layer.weight.copy_(torch.eye(K))
    res = study.measure_head(model, X, y, X, y, K=K)
    for lv in ("H1", "H2", "H3", "H4"):
        r = res[lv]
        assert r["nc1"] == 0 and r["nc1_rank"] == 0 and r["nc1_trace"] == 0
        assert r["nc2_orthogonal"] < 1e-12 and r["nc3_gram"] < 1e-12 and r["rank"] == K and r["rank_centred"] == K - 1
        assert [r[f"sv_{k}"] for k in range(1, K + 1)] == pytest.approx([1.0] * K)
    assert res["H4"]["nc3_orthogonal"] < 1e-12 and res["H4"]["nc4"] == 0 and res["H4"]["nc4_test"] == 0
    assert res["H1"]["nc2_etf"] < 1e-12  # the centred means of an orthogonal frame form a simplex ETF (SPEC §2)
    assert res["model"] == {"train_loss": 0.0, "train_accuracy": 1.0, "test_loss": 0.0, "test_accuracy": 1.0}
    # a rank-5 frame: the rank and the singular values see it
    with torch.no_grad():
        model.head[0].weight[5:] = 0
    r = study.measure_head(model, X, y, K=K)["H2"]
    assert r["rank"] == 5 and r["sv_6"] == 0


def test_measure_head_matches_the_metrics_on_the_levels(digits):
    X, y, _, _ = digits
    model = study.make_model(_defaults(), 1).eval()
    res = study.measure_head(model, X, y, K=10, rank_tol=0.05)
    with torch.no_grad():
        feats, _ = model.levels(X)
    for l, H in enumerate(feats, start=1):
        H = H.double()
        W = model.head[l - 1].weight.double()
        ref = metrics.nc_metrics(H, y, W=W if l == 4 else None)
        for key in ("nc1", "nc1_trace", "nc2_orthogonal", "nc2_etf"):
            assert res[f"H{l}"][key] == pytest.approx(ref[key], rel=1e-6), (l, key)
        assert res[f"H{l}"]["nc3_gram"] == pytest.approx(metrics.nc3_gram(H, y, A=W), rel=1e-6)
        assert res[f"H{l}"]["nc1_rank"] == pytest.approx(metrics.nc1(H, y, rank_tol=0.05), rel=1e-6)
        assert res[f"H{l}"]["rank"] == metrics.class_mean_rank(H, y, 0.05, centred=False)
    assert feats[0].shape == (80, 8) and feats[1].shape == (80, 12)  # cnn: 4·width pooled features


# --------------------------------------------------------------------------- training, resume, divergence
def _values(history):
    h = history[~history.metric.str.endswith("time_s")].reset_index(drop=True)
    return h


def test_interrupted_run_resumes_to_the_same_numbers(digits, tmp_path, monkeypatch):
    p = _defaults()
    ref = study.train_deep_head(p, digits, progress=False)
    ckpt = study.checkpoint_path(tmp_path, p, digits)
    orig, calls = DeviceBatches.epoch, []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 3:  # the third epoch: stop the run as a kill would, after two checkpoints
            raise KeyboardInterrupt
        yield from orig(self)

    monkeypatch.setattr(DeviceBatches, "epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.train_deep_head(p, digits, checkpoint=ckpt, checkpoint_every=1, progress=False)
    monkeypatch.setattr(DeviceBatches, "epoch", orig)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    resumed = study.train_deep_head(p, digits, checkpoint=ckpt, checkpoint_every=1, progress=False)
    assert resumed.resumed_from == 2
    a, b = _values(ref.history), _values(resumed.history)
    assert a[["epoch", "layer", "metric"]].equals(b[["epoch", "layer", "metric"]])
    np.testing.assert_allclose(b.value, a.value, rtol=1e-6, atol=1e-9)
    assert sorted(a.epoch[a.metric == "nc1"].unique()) == [1, 2, 4]
    again = study.train_deep_head(p, digits, checkpoint=ckpt, progress=False)  # finished: returns at once
    assert again.resumed_from == 4
    with pytest.raises(ValueError, match="written by a different configuration"):
        study.train_deep_head({**p, "lr": 0.01}, digits, checkpoint=ckpt, progress=False)
    assert study.checkpoint_path(tmp_path, {**p, "lr": 0.01}, digits) != ckpt


def test_divergence_stops_the_run(digits):
    with pytest.raises(DivergenceError, match=r"training diverged at epoch 1: mean loss .* lower lr"):
        study.train_deep_head(_defaults(lr=1e8, epochs=2), digits, progress=False)


def test_training_records_every_level_and_the_figures_draw(digits):
    res = study.train_deep_head(_defaults(schedule="thirds"), digits, progress=False)
    assert set(res.history.layer) == {"model", "H1", "H2", "H3", "H4"}
    t = study.final_table(res.history)
    assert list(t.index) == ["H1", "H2", "H3", "H4"] and (t["rank"] <= 10).all()
    s = study.spectra_table(res.history)
    assert (s[1] == 1).all() and (s.diff(axis=1).iloc[:, 1:].fillna(0) <= 1e-12).all().all()  # σ_k/σ_1, descending
    assert s.loc["H1"].notna().sum() == 8 and s.loc["H2"].notna().sum() == 10  # min(K, d) values: H1 has d = 8
    small = study.smallest_sv_table(res.history)
    assert list(small.columns) == ["H1", "H2", "H3", "H4"] and list(small.index) == [1, 2, 4]
    assert small.loc[4, "H1"] == pytest.approx(s.loc["H1", 8]) and small.loc[4, "H2"] == pytest.approx(s.loc["H2", 10])
    fig = study.training_figure(res.history, title="t")
    assert len(fig.axes) == 5  # four panels and the accuracy twin axis
    fig2 = study.spectra_figure(res.history, 0.01, 5)
    assert len(fig2.axes) == 4


# --------------------------------------------------------------------------- checks can fail
def _history(nc1_first, nc1_last, ranks, acc=1.0):
    rows = [{"epoch": e, "layer": "model", "metric": "train_accuracy", "value": acc} for e in (1, 10)]
    for i, (a, b, r) in enumerate(zip(nc1_first, nc1_last, ranks, strict=True), start=1):
        rows += [{"epoch": 1, "layer": f"H{i}", "metric": "nc1_rank", "value": a},
                 {"epoch": 10, "layer": f"H{i}", "metric": "nc1_rank", "value": b},
                 {"epoch": 1, "layer": f"H{i}", "metric": "rank", "value": 10.0},
                 {"epoch": 10, "layer": f"H{i}", "metric": "rank", "value": float(r)}]
    return pd.DataFrame(rows)


def test_checks_pass_on_agreeing_numbers_and_fail_on_contradicting_ones():
    good = study.checks(_history([1.0, 2.0, 3.0, 4.0], [0.5, 0.4, 0.3, 0.2], [10, 5, 5, 10]))
    assert [c["id"] for c in good] == ["train_accuracy", "nc1_falls_every_level", "nc1_top_over_backbone",
                                       "low_rank_hidden_levels"]
    assert all(c["passed"] for c in good)
    bad = {c["id"]: c["passed"] for c in study.checks(
        _history([1.0, 2.0, 3.0, 4.0], [0.5, 2.5, 0.3, 0.6], [10, 10, 10, 10], acc=0.8))}
    assert bad == {"train_accuracy": False, "nc1_falls_every_level": False, "nc1_top_over_backbone": False,
                   "low_rank_hidden_levels": False}
    two = study.checks(_history([1.0, 2.0], [0.5, 0.4], [10, 10]))  # L = 2: no hidden level, no rank claim
    assert [c["id"] for c in two] == ["train_accuracy", "nc1_falls_every_level", "nc1_top_over_backbone"]


def test_srg_reference_ranks():
    ref = study.srg_reference(10, 4)
    assert ref == {"r": 5, "ranks": {"H1": 5, "H2": 5, "H3": 5, "H4": 10}}
    assert study.srg_reference(6, 5)["ranks"] == {"H1": 4, "H2": 4, "H3": 4, "H4": 4, "H5": 6}
    assert study.srg_reference(4, 4) == {}
