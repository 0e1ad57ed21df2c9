"""Notebook 11 (Tirer, Huang & Niles-Weed 2023, Fig. 3): the weight-decay variants, their trainings, the
comparisons against the seed spread, the checks (which fail on contradicting numbers), resume, bad parameters."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ncutils.pipeline import runner
from ncutils.studies import weight_decay as study
from ncutils.train import TrainConfig

TIMES = ("train_time_s", "measure_time_s", "resumed_from")


def _params(**kw) -> dict:
    p = {"dataset": "mnist", "losses": ["mse", "ce"], "variants": list(study.VARIANTS), "wd": 5e-4, "seeds": 2,
         "baseline_seeds": 2, "lr": 0.05, "schedule": "thirds", "epochs": 3, "batch_size": 16, "momentum": 0.9,
         "per_class": 6, "test_per_class": 2, "width_multiplier": 0.0625, "fake_data": True, "data_root": "", "seed": 0}
    return p | kw


# --------------------------------------------------------------------------- configurations and predictions
def test_trainings_cover_every_arm_variant_and_seed_with_the_paper_decays():
    runs = study.trainings(_params(seed=3))
    assert len(runs) == 2 * 4 * 2 and len({r.config.fingerprint() for r in runs}) == 16
    assert [r.seed for r in runs[:8]] == [3] * 8 and [r.seed for r in runs[8:]] == [4] * 8  # whole seeds first
    by = {(r.loss, r.variant, r.seed): r.config for r in runs}
    assert (by["mse", "features_x2", 3].wd_features, by["mse", "features_x2", 3].wd_classifier) == (1e-3, 5e-4)
    assert (by["ce", "classifier_x2", 4].wd_features, by["ce", "classifier_x2", 4].wd_classifier) == (5e-4, 1e-3)
    assert (by["ce", "features_0", 3].wd_features, by["ce", "features_0", 3].wd_classifier) == (0.0, 5e-4)
    assert (by["mse", "baseline", 4].wd_features, by["mse", "baseline", 4].wd_classifier) == (5e-4, 5e-4)
    assert not by["mse", "baseline", 3].fc_bias and by["ce", "baseline", 3].fc_bias
    one = study.trainings(_params(seeds=1, baseline_seeds=3, losses=["ce"]))
    assert [(r.variant, r.seed) for r in one] == [(v, 0) for v in study.VARIANTS] + [("baseline", 1), ("baseline", 2)]
    assert study.n_trainings(_params(seeds=1, baseline_seeds=3)) == 2 * 6 == 2 * len(one)
    cfg = by["mse", "baseline", 3]
    assert cfg.layers == ("layer4",) and cfg.measured_epochs() == [1, 3] and cfg.seed == 3 and cfg.per_class == 6


def test_prediction_table_follows_theorem_4_2():
    t = study.prediction_table(list(study.VARIANTS), 5e-4)
    ratio = t["contraction √(λ_H/λ_W) / baseline's"]
    np.testing.assert_allclose(ratio.to_numpy(), [1.0, math.sqrt(2), 1 / math.sqrt(2), 0.0])
    assert list(t["predicted NC1 vs baseline"]) == ["-", "lower", "higher", "higher"]
    assert t.loc["features_0", "wd_features (λ_H)"] == 0.0 and t.loc["classifier_x2", "wd_classifier (λ_W)"] == 1e-3


def test_decay_horizon_by_hand():
    # 16 steps per epoch; 5 epochs each at lr 0.05, 0.005, 0.0005; momentum 0.9 multiplies the step by 10
    cpu = {"lr": 0.05, "schedule": "thirds", "epochs": 15, "batch_size": 64, "momentum": 0.9, "per_class": 100,
           "wd": 5e-4}
    assert study.decay_horizon(cpu) == pytest.approx(5e-4 * 16 * 5 * 0.0555 / 0.1, rel=1e-12)
    # the paper's: 391 steps per epoch, 40 epochs at each of 0.05, 0.005, ..., 5e-6
    assert study.decay_horizon(study.PAPER_SETTINGS) == pytest.approx(5e-4 * 391 * 40 * 0.055555 / 0.1, rel=1e-12)


def test_cifar10_profile_is_the_papers_setting_and_refused_on_a_cpu(no_kernel, monkeypatch):
    prof = runner.load_profile("11", "cifar10")
    assert {k: prof.get(k, v) for k, v in study.PAPER_SETTINGS.items()} == study.PAPER_SETTINGS
    assert prof["width_multiplier"] == 1.0 and runner.figure_profiles("11") == ["cpu", "cifar10"]
    with pytest.raises(ValueError, match=r"these 18 trainings need about 3\.33e\+03 CPU hours .*run them on a GPU"):
        runner.run_notebook("11", profile="cifar10", params={"device": "cpu"})


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"variants": ["features_x2", "features_0"]}, r"parameter variants must include 'baseline'"),
        ({"variants": ["baseline", "lambda_x3"]}, r"parameter variants: must be a non-empty list of distinct "
                                                  r"weight-decay variants from .* got unknown \['lambda_x3'\]"),
        ({"variants": ["baseline", "baseline"]}, r"parameter variants: .* got repeated names"),
        ({"losses": ["hinge"]}, r"parameter losses: must be a non-empty list of distinct losses from \('mse', 'ce'\)"),
        ({"losses": []}, r"parameter losses: .* got an empty list"),
        ({"baseline_seeds": 1}, r"parameter baseline_seeds must be >= 2 \(the seed spread decides"),
        ({"seeds": 0}, r"parameter seeds must be an integer in \[1, inf\), got 0"),
        ({"wd": 0.0}, r"parameter wd must be a finite number in \(0, inf\), got 0.0"),
        ({"torch_threads": -1}, r"parameter torch_threads must be an integer in \[0, inf\), got -1"),
        ({"schedule": "cosine"}, r"parameter schedule must be one of \('step40', 'thirds', 'constant'\)"),
        ({"data_root": "no/such/folder"}, r"parameter data_root: mnist not found"),
        ({"fake_data": True, "per_class": 1000, "epochs": 100}, r"trainings need about .* CPU hours"),
    ],
)
def test_bad_parameters_are_refused_before_any_compute(no_kernel, bad, match, monkeypatch):
    monkeypatch.delenv("NCUTILS_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match=match):
        runner.run_notebook("11", params=bad)


# --------------------------------------------------------------------------- comparisons and checks
def _table(nc1: dict[str, tuple[float, float]], acc: float = 1.0) -> pd.DataFrame:
    """A runs table: NC1 per variant and seed (NC1~ = NC1 / 10, NC2 = NC1 / 100), both arms alike."""
    rows = []
    for loss in ("mse", "ce"):
        for variant, vals in nc1.items():
            for seed, v in enumerate(vals):
                rows.append({"loss": loss, "variant": variant, "seed": seed, "nc1": v, "nc1_trace": v / 10,
                             "nc2": v / 100, "nc1_epoch1": 2.0, "train_accuracy": acc})
    return pd.DataFrame(rows)


GOOD = {"baseline": (0.10, 0.12), "features_x2": (0.03, 0.035), "classifier_x2": (0.15, 0.16),
        "features_0": (0.5, 0.6)}


def test_comparisons_are_log_ratios_of_geometric_means_against_the_seed_spread():
    c = study.comparisons(_table(GOOD)).set_index(["loss", "variant", "metric"])
    r = c.loc["mse", "features_x2", "nc1"]
    assert r.delta == pytest.approx(0.5 * (math.log10(0.03 * 0.035) - math.log10(0.10 * 0.12)))
    assert r.spread == pytest.approx(math.log10(1.2))  # the baseline's range is the larger
    assert r.resolved and r.observed == "lower" and r.agrees
    n2 = c.loc["ce", "classifier_x2", "nc2"]  # NC2 on its plain scale
    assert n2.delta == pytest.approx(0.00155 - 0.0011) and n2.spread == pytest.approx(0.0002)
    assert n2.predicted == "higher" and n2.observed == "higher"
    f = study.feature_vs_classifier(_table(GOOD)).set_index(["loss", "metric"]).loc["mse", "nc1"]
    assert f.features_x2 == pytest.approx(abs(r.delta)) and f.features_more


def test_checks_pass_on_the_predicted_numbers_and_fail_on_contradicting_ones():
    good = study.weight_decay_checks(_table(GOOD))
    assert len(good) == 2 + 2 * 3 + 2 and all(c["passed"] for c in good)
    assert any("mse features_x2: nc1 lower than baseline" in c["name"].lower() and "— observed" in c["name"]
               for c in good)
    # contradicting: feature decay doubled raises NC1 (resolved, wrong way); zeroed within the seed spread;
    # the classifier's doubling then moves NC1 more than the features'; one training short of the terminal phase
    bad = dict(GOOD, features_x2=(0.13, 0.14), features_0=(0.09, 0.13), classifier_x2=(0.4, 0.45))
    table = _table(bad)
    table.loc[0, "train_accuracy"] = 0.99
    table.loc[1, "nc1_epoch1"] = 0.01
    checks = {c["id"]: c for c in study.weight_decay_checks(table)}
    failed = sorted(k for k, c in checks.items() if not c["passed"])
    assert failed == sorted(["terminal_phase_trainings", "penultimate_nc1_fell",
                             "mse_features_x2_nc1_lower_resolved", "ce_features_x2_nc1_lower_resolved",
                             "mse_features_0_nc1_higher_resolved", "ce_features_0_nc1_higher_resolved",
                             "mse_features_move_nc1_more", "ce_features_move_nc1_more"])
    assert "not observed" in checks["mse_features_0_nc1_higher_resolved"]["name"]
    assert checks["terminal_phase_trainings"]["count"] == 15
    c = study.comparisons(table).set_index(["loss", "variant", "metric"]).loc["mse", "features_0", "nc1"]
    assert not c.resolved and c.observed == "within spread"


def test_without_both_doublings_there_is_no_feature_vs_classifier_claim():
    table = _table({k: GOOD[k] for k in ("baseline", "features_0")})
    assert study.feature_vs_classifier(table).empty
    assert [c["id"] for c in study.weight_decay_checks(table)][2:] == ["mse_features_0_nc1_higher_resolved",
                                                                       "ce_features_0_nc1_higher_resolved"]


# --------------------------------------------------------------------------- training, resume, figure
def test_interrupted_trainings_resume_to_the_same_numbers(tmp_path, monkeypatch):
    import ncutils.train as train_module

    p = _params(losses=["mse", "ce"], variants=["baseline", "features_0"], seeds=2)
    data = study.weight_decay_data(p, fake_root=tmp_path / "data")
    runs = study.trainings(p)[:3]
    threads = torch.get_num_threads()
    ref = study.train_all(runs, data, device="cpu", folder=tmp_path / "ref", checkpoint_every=1, progress=False)
    assert torch.get_num_threads() == threads  # restored after the trainings' 1 thread
    assert (ref.resumed_from == 0).all() and list(ref.variant) == ["baseline", "features_0", "baseline"]

    epochs, orig = [0], train_module.DeviceBatches.epoch

    def interrupted(self):
        if self.shuffle:  # a training epoch, not a measurement pass
            epochs[0] += 1
            if epochs[0] == 6:  # the second training's third (last) epoch
                raise KeyboardInterrupt
        yield from orig(self)

    monkeypatch.setattr(train_module.DeviceBatches, "epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.train_all(runs, data, device="cpu", folder=tmp_path / "run", checkpoint_every=1, progress=False)
    monkeypatch.setattr(train_module.DeviceBatches, "epoch", orig)
    resumed = study.train_all(runs, data, device="cpu", folder=tmp_path / "run", checkpoint_every=1, progress=False)
    assert list(resumed.resumed_from) == [3, 2, 0]
    a, b = ref.drop(columns=list(TIMES)), resumed.drop(columns=list(TIMES))
    assert list(a.columns) == list(b.columns)
    for col in a.columns:
        if a[col].dtype.kind == "f":
            np.testing.assert_allclose(b[col], a[col], rtol=1e-6, atol=1e-9, err_msg=col)
        else:
            assert list(a[col]) == list(b[col]), col
    assert len(list((tmp_path / "run").glob("checkpoint-*.pt"))) == 3  # one file per configuration


def test_fake_cifar10_path_trains_and_draws(tmp_path):
    import matplotlib.pyplot as plt

    p = _params(dataset="cifar10", losses=["ce"], variants=["baseline", "classifier_x2"], epochs=2, per_class=4)
    data = study.weight_decay_data(p, fake_root=tmp_path / "data")
    assert data[0].shape == (40, 3, 32, 32)
    table = study.train_all(study.trainings(p), data, device="cpu", folder=tmp_path, progress=False)
    assert len(table) == 4 and set(table.loss) == {"ce"} and (table.nc2 == table.nc2_etf).all()
    assert np.isfinite(table[["nc1", "nc1_trace", "nc2", "train_accuracy"]].to_numpy()).all()
    fig = study.variant_figure(table, title="fake CIFAR-10")
    assert len(fig.axes) == 3 and fig.axes[0].get_yscale() == "log" and fig.axes[2].get_yscale() == "linear"
    plt.close(fig)


def test_final_row_refuses_a_diverged_training():
    from types import SimpleNamespace

    rows = [{"epoch": e, "layer": "layer4", "metric": k, "value": math.nan if e == 3 else 1.0}
            for e in (1, 3) for k in ("nc1", "nc1_trace", "nc2_etf", "nc2_orthogonal", "nc3_etf", "nc3_orthogonal")]
    rows += [{"epoch": 3, "layer": "model", "metric": "train_loss", "value": 0.1}]
    res = SimpleNamespace(history=pd.DataFrame(rows), train_time_s=1.0, measure_time_s=1.0, resumed_from=0)
    t = study.Training("mse", "baseline", 0, TrainConfig())
    with pytest.raises(RuntimeError, match=r"training mse/baseline/seed 0 ended with non-finite \['nc1', 'nc1_trace', "
                                           r"'nc2'\]: it diverged"):
        study.final_row(t, res)
