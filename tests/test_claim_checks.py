"""The claim checks of notebooks 03/04 (issue 16) on synthetic tables: each passes on the numbers it states and
fails on numbers that contradict it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ncutils.studies import _multilayer as ml
from ncutils.studies import deep_ufm as deep_ufm_study
from ncutils.studies import relu_eufm as relu_eufm_study


def _passed(checks):
    return [c["passed"] for c in checks]


def test_depth_contrast_checks():
    rows = []
    for run, (relu0, lin0, lin1) in enumerate([(0.2, 1.9, 0.008), (0.3, 1.6, 0.0079)]):
        rows += [{"model": "ReLU", "step": 1000, "run": run, "ratio": relu0},
                 {"model": "linear", "step": 1000, "run": run, "ratio": lin0},
                 {"model": "linear", "step": 5000, "run": run, "ratio": lin1}]
    ratios = pd.DataFrame(rows)
    checks = ml.depth_contrast_checks(ratios)
    assert _passed(checks) == [True, True] and [c["count"] for c in checks] == [2, 2]
    assert "step 1000" in checks[0]["name"] and "step 5000" in checks[1]["name"]
    worse = ratios.copy()
    worse.loc[(worse.model == "ReLU") & (worse.run == 1), "ratio"] = 2.0  # ReLU ratio above the linear one
    worse.loc[(worse.model == "linear") & (worse.step == 5000) & (worse.run == 0), "ratio"] = 0.9  # TB22's ≈
    assert _passed(ml.depth_contrast_checks(worse)) == [False, False]


def test_sweep_interior_checks():
    sweep = pd.DataFrame({"ratio": [0.5, 0.8, 0.9, 1.05, 1.3],
                          "objective_gd": [0.2, 0.4, 0.5, 0.5, 0.5],
                          "objective_theory": [0.2, 0.4, 0.45, 0.5, 0.5],
                          "objective_metastable": [0.2, 0.4, 0.45, 0.52, float("nan")]})
    assert _passed(relu_eufm_study.sweep_interior_checks(sweep, 0.8)) == [True, True, True]
    assert _passed(relu_eufm_study.sweep_interior_checks(sweep, 0.9)) == [False, True, True]  # 0.9 missed f*
    landed = sweep.assign(objective_gd=[0.2, 0.4, 0.5, 0.52, 0.5])  # the best seed on the metastable branch
    assert _passed(relu_eufm_study.sweep_interior_checks(landed, 0.8)) == [True, False, False]


def test_polish_and_rank_aware_checks():
    table = pd.DataFrame({"converged": [True, True], "kinks_certified": [True, True], "rel_err_after": [0.0, 1e-12],
                          "nc2_H2_after": [1e-12, 1e-10], "nc3_H2_after": [1e-12, 1e-10]})
    assert _passed(ml.polish_checks(table, "H2")) == [True, True]
    assert _passed(ml.polish_checks(table.assign(nc2_H2_after=[1e-12, 1e-4]), "H2")) == [True, False]
    assert _passed(ml.polish_checks(table.assign(kinks_certified=[True, False]), "H2")) == [False, False]
    seeds = pd.DataFrame({"run": [0, 1, 2], "status": ["below f*", "below f*", "at f*"], "min_rank": [3, 4, 4]})
    nc1 = pd.DataFrame({"run": [0, 0, 1, 1, 2], "level": ["H1", "H2", "H1", "H2", "H1"],
                        "nc1_rank": [1e-6, 1e-5, 1e-6, 0.5, 0.9], "nc1_trace": [1e-7, 1e-7, 1e-7, 1e-7, 0.9]})
    checks = deep_ufm_study.rank_aware_checks(nc1, seeds)
    assert [(c["count"], c["total"]) for c in checks] == [(1, 2), (2, 2)]  # run 2 (at f*) is not counted
    assert _passed(checks) == [False, True]  # every run below f_DNC is required
    low = deep_ufm_study.rank_aware_checks(nc1, seeds, K=4)[2]
    assert (low["count"], low["total"], low["passed"]) == (1, 2, False)  # run 1 has full rank 4
    assert deep_ufm_study.rank_aware_checks(nc1, seeds.assign(min_rank=[3, 3, 4]), K=4)[2]["passed"]


def test_monotone_objective_check():
    from ncutils.models import UFM
    from ncutils.solve import gradient_descent

    gd = gradient_descent(UFM(K=3, n=4, d=5), lr=0.1, steps=200, runs=2, record_every=20, progress=False)
    ok = ml.monotone_objective_check(gd, label="UFM")
    assert (ok["count"], ok["total"], ok["passed"], ok["id"]) == (2, 2, True, "ufm_objective_monotone")
    h = gd.history.copy()
    i = h.index[(h.metric == "objective") & (h.run == 1) & (h.step == 100)]
    h.loc[i, "value"] *= 1.5  # a recorded rise in run 1
    gd.history = h
    bad = ml.monotone_objective_check(gd)
    assert (bad["count"], bad["passed"]) == (1, False)


def test_metastable_checks():
    meta, gd = relu_eufm_study.metastable_start(3, 4, 6, 1.08, lr=0.3, steps=3000, seeds=2, noise=1e-2, device="cpu")
    assert _passed(relu_eufm_study.metastable_checks(meta, gd, 1.08)) == [True, True]
    wrong = dataclasses.replace(meta, objective=meta.objective * 1.01)  # a branch value GD did not return to
    assert _passed(relu_eufm_study.metastable_checks(wrong, gd, 1.08))[0] is False


def test_continued_descent_from_a_relu_endpoint():
    from ncutils import theory
    from ncutils.models import DeepUFM
    from ncutils.solve import gradient_descent

    m = DeepUFM(K=2, n=4, d=4, L=3, activation="relu", lambda_W=0.004, lambda_H=0.004)
    opt = theory.dufm_optimum(2, 4, [0.004] * 3, 0.004)
    gd = gradient_descent(m, lr=0.5, steps=3000, runs=3, init_std=0.5, seed=0, progress=False)
    t = ml.continued_descent(gd, opt, [0, 2], steps=3000, lr=0.5, records=3)
    assert list(t.columns) == ["run", "step", "rel_err", "max_nc2"] and sorted(set(t.run)) == [0, 2]
    assert sorted(set(t.step)) == [0, 1000, 2000, 3000]
    start = t[t.step == 0].set_index("run")
    np.testing.assert_allclose(start.rel_err.to_numpy(), gd.final("objective")[[0, 2]] / opt.objective - 1,
                               rtol=1e-12)  # step 0 is gd's endpoint
    assert ml.continued_descent(gd, opt, [], steps=10, lr=0.5).empty
    fake = pd.DataFrame({"run": [0, 0, 2, 2], "step": [0, 9, 0, 9], "rel_err": [1e-3, 1e-4, 1e-3, 1e-4],
                         "max_nc2": [1e-2, 1e-3, 1e-2, 2e-2]})  # run 2's NC2 rises
    c = ml.continued_descent_check(fake, label="L=3")
    assert (c["count"], c["total"], c["passed"]) == (1, 2, False)
    assert ml.continued_descent_check(fake[fake.run == 0])["passed"]
