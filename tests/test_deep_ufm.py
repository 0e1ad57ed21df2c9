"""Multi-layer UFMs (extended / deep UFM): closed forms, gradient, GD against theory, new metrics."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.stats import ortho_group

from ncutils import metrics as m
from ncutils import report, theory
from ncutils._validate import ParameterTypeError
from ncutils.models import UFM, DeepUFM, FeatureModel, extended_ufm
from ncutils.solve import gradient_descent
from ncutils.studies import deep_ufm as deep_ufm_study
from ncutils.studies import linear_eufm as linear_eufm_study
from ncutils.studies import relu_eufm as relu_eufm_study


def test_spec_check_numbers_eufm():
    """EUFM (Tirer & Bruna 2022, §4), derived closed form: K=4, n=20, d=20, all λ=0.005 → f* = 0.079931,
    M₂ᵀM₂ = 0.3415 I, ‖μ₁‖² = 0.1307."""
    o = theory.eufm_optimum(4, 20, 0.005, 0.005, 0.005)
    assert o.objective == pytest.approx(0.079931, abs=1e-6)
    assert o.mean_norm_sq[1] == pytest.approx(0.3415, abs=1e-4)
    assert o.mean_norm_sq[0] == pytest.approx(0.1307, abs=1e-4)
    assert o.collapsed and o.L == 2 and o.m == 3
    # balancedness: λ_{H₁}‖H₁‖² = λ_{W_l}‖W_l‖² = K T
    assert 0.005 * o.norm_H_sq == pytest.approx(4 * o.T)
    assert all(0.005 * w == pytest.approx(4 * o.T) for w in o.norm_W_sq)


@pytest.mark.parametrize("L,f", [(2, 0.0437697), (3, 0.0423176), (4, 0.0435800)])
def test_spec_check_numbers_dufm(L, f):
    """Deep UFM (Súkeník, Mondelli & Lampert 2023), derived f_DNC:
    K=2, n=50, all λ=0.004 → f_DNC = 0.0437697 (L=2), 0.0423176 (L=3), 0.0435800 (L=4)."""
    assert theory.dufm_optimum(2, 50, [0.004] * L, 0.004).objective == pytest.approx(f, abs=5e-7)


def test_one_layer_is_the_plain_ufm():
    d = theory.dufm_optimum(4, 50, [0.003], 0.005)
    u = theory.ufm_mse_optimum(4, 50, 0.003, 0.005)
    assert d.objective == pytest.approx(u.objective, rel=1e-13)
    assert d.s == pytest.approx(u.fit, rel=1e-13)
    assert d.mean_norm_sq[0] == pytest.approx(u.mean_norm_sq, rel=1e-13)
    assert d.norm_W_sq[0] == pytest.approx(u.norm_W_sq, rel=1e-13)
    assert theory.dufm_threshold(2) == 1.0


@pytest.mark.parametrize("m_", [3, 4, 5, 6])
def test_fit_is_the_global_minimizer_of_g(m_):
    """dufm_fit agrees with a brute-force grid + bounded scalar minimization of g on [0, 1]."""
    for A in np.linspace(0.05, 1.2, 13) * theory.dufm_threshold(m_):
        K = 3
        q = 2 * A / (K * m_)
        s = theory.dufm_fit(K, q, m_)
        grid = np.linspace(0, 1, 20001)
        g = [theory.dufm_collapsed_objective(x, K, q, m_) for x in grid]
        best = grid[int(np.argmin(g))]
        res = minimize_scalar(theory.dufm_collapsed_objective, args=(K, q, m_),
                              bounds=(max(best - 1e-3, 0), min(best + 1e-3, 1)), method="bounded",
                              options={"xatol": 1e-12})
        ref = res.x if res.fun < 0.5 else 0.0
        assert s == pytest.approx(ref, abs=1e-6)
        assert theory.dufm_collapsed_objective(s, K, q, m_) <= min(g) + 1e-12


@pytest.mark.parametrize("m_", [3, 4, 5])
def test_threshold_is_a_discontinuous_jump(m_):
    K = 2
    q_star = 2 * theory.dufm_threshold(m_) / (K * m_)
    below = theory.dufm_fit(K, q_star * (1 - 1e-9), m_)
    above = theory.dufm_fit(K, q_star * (1 + 1e-9), m_)
    assert below == pytest.approx((m_ - 2) / (m_ - 1), abs=1e-3)  # s jumps from (m−2)/(m−1) ...
    assert above == 0.0  # ... to 0
    # at the threshold g(s*) = g(0) = 1/2
    assert theory.dufm_collapsed_objective((m_ - 2) / (m_ - 1), K, q_star, m_) == pytest.approx(0.5, rel=1e-12)
    assert theory.eufm_threshold() == pytest.approx(2 * theory.dufm_threshold(3) / 3, rel=1e-14)  # K q ≤ 2^{−4/3}


@pytest.mark.parametrize("kw,exc,match", [
    (dict(lambda_H=-1.0), ValueError, r"^parameter lambda_H must be a finite number in \(0, inf\), got -1.0$"),
    (dict(lambda_W=[0.1, 0.0]), ValueError,
     r"^parameter lambda_W must be a non-empty list of finite numbers in \(0, inf\), got \[0.1, 0.0\]$"),
    (dict(lambda_W=[]), ValueError, r"^parameter lambda_W must be a non-empty list of finite numbers"),
    (dict(lambda_W=0.01), ParameterTypeError,
     r"^parameter lambda_W must be a non-empty list of finite numbers in \(0, inf\) \(one weight decay per layer\), "
     r"got 0.01 \(float\)$"),
    (dict(n=0), ValueError, r"^parameter n must be an integer in \[1, inf\), got 0$"),
    (dict(K=1), ValueError, r"^parameter K must be an integer in \[2, inf\), got 1$"),
    (dict(branch="local"), ValueError, r"^parameter branch must be one of \('global', 'collapsed'\), got 'local'$"),
])
def test_theory_bad_arguments(kw, exc, match):
    args = dict(K=3, n=5, lambda_W=[0.01, 0.01], lambda_H=0.01) | kw
    with pytest.raises(exc, match=match) as err:
        theory.dufm_optimum(**args)
    assert type(err.value) is exc


def test_theory_float_for_layer_decays_is_a_clear_type_error():
    """A float where the per-layer decays belong (e.g. the UFM's argument habit) names lambda_W, for both
    dufm_optimum and dufm_q (positional, in the order of ufm_mse_optimum: K, n, lambda_W, lambda_H)."""
    for call in (lambda: theory.dufm_optimum(3, 5, 0.01, 0.01), lambda: theory.dufm_q(5, 0.01, 0.01)):
        with pytest.raises(ParameterTypeError, match=r"^parameter lambda_W must be a non-empty list of .* "
                                                     r"\(one weight decay per layer\), got 0.01 \(float\)$"):
            call()
    # the argument order of ufm_mse_optimum: the decays first, then lambda_H
    o = theory.dufm_optimum(3, 5, [0.01, 0.02], 0.03)
    assert o.q == pytest.approx((5 * 0.03 * 0.01 * 0.02) ** (1 / 3), rel=1e-14)
    assert theory.dufm_q(5, [0.01, 0.02], 0.03) == pytest.approx(o.q, rel=1e-15)


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_backprop_matches_autograd(activation):
    model = DeepUFM(K=3, n=4, d=(5, 6, 7), L=3, activation=activation, lambda_W=(0.01, (0.02, 0.03), 0.04),
                    lambda_H=(0.03, 0.05))
    p = model.init(2, 0.7, torch.Generator().manual_seed(0), torch.float64)
    analytic = model.gradient(p)
    auto = FeatureModel.gradient(model, p)
    assert list(analytic) == list(p)
    for k in p:
        torch.testing.assert_close(analytic[k], auto[k], rtol=1e-12, atol=1e-14)


def test_one_layer_deep_ufm_is_the_ufm():
    deep = DeepUFM(K=3, n=4, d=5, L=1, lambda_W=0.02, lambda_H=0.01)
    ufm = UFM(K=3, n=4, d=5, lambda_W=0.02, lambda_H=0.01)
    p = deep.init(2, 0.5, torch.Generator().manual_seed(0), torch.float64)
    q = {"W": p["W1"], "H": p["H1"]}
    torch.testing.assert_close(deep.objective(p), ufm.objective(q), rtol=1e-14, atol=0)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(L=0), ValueError, r"^parameter L must be an integer in \[1, inf\), got 0$"),
    (dict(activation="tanh"), ValueError, r"^parameter activation must be one of \('relu', 'linear'\), got 'tanh'$"),
    (dict(lambda_W=-0.1), ValueError, r"^parameter lambda_W\[1\] must be a finite number in \[0, inf\), got -0.1$"),
    (dict(lambda_W=(0.1, 0.1, 0.1)), ValueError,
     r"^parameter lambda_W must be one value or L = 2 values \(one per layer\), got \(0.1, 0.1, 0.1\)$"),
    (dict(lambda_H=float("nan")), ValueError, r"^parameter lambda_H must be a finite number in \[0, inf\), got nan$"),
    (dict(d=(5,)), ValueError, r"^parameter d must be an integer >= 1 or a sequence of L = 2 such integers"),
    (dict(lambda_W=((0.1, 0.2), (0.1, 0.2, 0.3))), ValueError, "per-run hyperparameters have different lengths"),
])
def test_model_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match) as err:
        DeepUFM(**(dict(K=3, n=4, d=5, L=2) | kw))
    assert type(err.value) is exc


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_gd_reaches_the_eufm_closed_form(activation):
    """GD (float64) on a small extended UFM lands on eufm_optimum: f*, norms of every level and weight."""
    K, n, d, lw1, lw2, lh = 3, 5, 8, 0.01, 0.02, 0.015
    model = extended_ufm(K, n, d, activation, lw1, lw2, lh)
    gd = gradient_descent(model, lr=0.5, steps=30000, runs=4, init_std=0.3, record_every=30000, seed=1,
                          device="cpu", progress=False)
    o = theory.eufm_optimum(K, n, lw1, lw2, lh)
    best = int(np.argmin(gd.final("objective")))
    assert gd.final("objective")[best] == pytest.approx(o.objective, rel=1e-8)
    assert gd.final("fit")[best] == pytest.approx(o.s, rel=1e-5)
    assert gd.final("norm_H1_sq")[best] == pytest.approx(o.norm_H_sq, rel=1e-5)
    for layer in (1, 2):
        assert gd.final(f"norm_W{layer}_sq")[best] == pytest.approx(o.norm_W_sq[layer - 1], rel=1e-5)
        assert gd.final("mean_norm_sq", f"H{layer}")[best] == pytest.approx(o.mean_norm_sq[layer - 1], rel=1e-5)
        assert gd.final("nc1", f"H{layer}")[best] < 1e-12
    assert gd.final("nc2_orthogonal", "H2")[best] < 1e-3
    assert gd.final("nc3_orthogonal", "H2")[best] < 1e-3
    if activation == "linear":  # both levels are orthogonal frames at once
        assert gd.final("nc2_orthogonal", "H1")[best] < 1e-3


def test_past_the_eufm_threshold_gd_goes_to_zero():
    K, n = 3, 5
    lam = 1.2 * theory.eufm_threshold() / (K * n ** (1 / 3))  # all λ equal: K q = K n^{1/3} λ = 1.2·2^{−4/3}
    o = theory.eufm_optimum(K, n, lam, lam, lam)
    assert not o.collapsed and o.objective == 0.5
    gd = gradient_descent(extended_ufm(K, n, 6, "linear", lam, lam, lam), lr=0.5, steps=5000, runs=2,
                          init_std=0.3, device="cpu", progress=False)
    assert np.all(gd.final("objective") < 0.5 + 1e-9)
    assert np.all(gd.final("objective") > 0.5 - 1e-9)


def test_nc3_gram_and_spectrum():
    rng = np.random.default_rng(0)
    K, d, n = 4, 9, 3
    Mo = ortho_group.rvs(d, random_state=rng)[:K] * 2.0  # orthogonal frame, (K, d)
    y = np.repeat(np.arange(K), n)
    H = Mo[y]
    # a layer whose row space carries the means' Gram: A = Q M with Q orthonormal columns
    Q = ortho_group.rvs(6, random_state=rng)[:, :K]
    A = 0.7 * Q @ Mo
    assert m.nc3_gram(H, y, A=A) < 1e-12
    assert m.nc3_gram(H, y, A=3.0 * Mo) < 1e-12  # a classifier W ∝ Mᵀ
    assert m.nc3_gram(H, y, A=rng.standard_normal((6, d))) > 0.3
    # brute force on a random layer
    B = rng.standard_normal((5, d))
    P, G = B.T @ B, Mo.T @ Mo
    ref = np.linalg.norm(P / np.linalg.norm(P) - G / np.linalg.norm(G))
    assert m.nc3_gram(H, y, A=B) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match=r"A must have shape \(d_out, d\) with d = 9"):
        m.nc3_gram(H, y, A=B[:, :4])
    sv = m.class_mean_singular_values(H, y)
    np.testing.assert_allclose(sv, [2.0] * K, rtol=1e-12)
    low = Mo.copy()
    low[3] = low[0]  # rank 3
    sv = m.class_mean_singular_values(low[y], y)
    assert sv[2] > 1 and sv[3] < 1e-12
    # the batched metrics carry them per level
    out = m.nc_metrics_t(torch.as_tensor(H), torch.as_tensor(y), K, A=torch.as_tensor(A), spectrum=True)
    assert float(out["nc3_gram"]) < 1e-12 and math.isclose(float(out["sv_1"]), 2.0, rel_tol=1e-12)


def test_deep_ufm_levels_record_every_layer():
    model = DeepUFM(K=2, n=3, d=4, L=3)
    gd = gradient_descent(model, lr=0.1, steps=5, runs=2, device="cpu", progress=False)
    levels = set(gd.history.level.astype(str))
    assert levels == {"model", "H1", "H2", "H3"}
    h = gd.history
    assert {"nc3_gram", "sv_1", "sv_2"} <= set(h[h.level == "H1"].metric.astype(str))
    assert {"nc3_orthogonal", "nc4", "nc3_gram"} <= set(h[h.level == "H3"].metric.astype(str))


def test_metastable_collapsed_branch():
    K, m_ = 3, 3
    q_star = 2 * theory.dufm_threshold(m_) / (K * m_)
    s_meta = theory.dufm_fit(K, 1.05 * q_star, m_, branch="collapsed")
    assert s_meta > 0 and theory.dufm_fit(K, 1.05 * q_star, m_) == 0.0
    assert theory.dufm_collapsed_objective(s_meta, K, 1.05 * q_star, m_) > 0.5  # a local, not global, minimum
    assert theory.dufm_fit(K, 3 * q_star, m_, branch="collapsed") == 0.0  # the branch has disappeared
    # the same branch as a whole optimum: all λ = x with K q = 1.05 · 2^{−4/3}, i.e. q = n^{1/3} x
    n = 4
    x = 1.05 * q_star / n ** (1 / 3)
    meta = theory.dufm_optimum(K, n, [x, x], x, branch="collapsed")
    assert meta.collapsed and meta.s == pytest.approx(s_meta, rel=1e-12) and meta.objective > 0.5
    assert x * meta.norm_H_sq == pytest.approx(K * meta.T) and meta.mean_norm_sq[0] == pytest.approx(meta.T / (n * x))
    assert not theory.dufm_optimum(K, n, [x, x], x).collapsed
    with pytest.raises(ValueError, match=r"^parameter branch must be one of \('global', 'collapsed'\)"):
        theory.dufm_fit(K, q_star, m_, branch="local")


def test_threshold_sweep_lands_on_theory():
    df = relu_eufm_study.dufm_threshold_sweep(3, 3, 6, [0.3, 2.0], L=2, activation="linear", lr=0.5, steps=4000,
                                              init_std=0.4,
                                 device="cpu")
    assert df.objective_rel_err[0] < 1e-8
    assert df.objective_gd[1] == pytest.approx(0.5, abs=1e-8)
    assert np.isnan(df.objective_metastable[1])
    assert all(c["passed"] for c in relu_eufm_study.dufm_sweep_checks(df))
    bad = df.assign(objective_gd=df.objective_theory * 0.9)  # GD below the global optimum: impossible
    assert not relu_eufm_study.dufm_sweep_checks(bad)[0]["passed"]
    # K q = ratio · 2^{−4/3} with all λ equal
    assert 3 * theory.dufm_q(3, [df["lambda"][0]] * 2, df["lambda"][0]) == pytest.approx(0.3 * theory.eufm_threshold())


def test_init_scale_study_is_batched_rescaled_draws():
    model = extended_ufm(3, 2, 4, "relu", 0.01, 0.01, 0.01)
    gd, table = linear_eufm_study.init_scale_study(model, [0.1, 1.0], seeds=2, lr=0.1, steps=3, seed=5, device="cpu")
    assert table.init_std.tolist() == [0.1, 0.1, 1.0, 1.0] and table.seed.tolist() == [0, 1, 0, 1]
    base = model.init(2, 1.0, torch.Generator().manual_seed(5), torch.float64)
    ref = gradient_descent(model, lr=0.1, steps=3, runs=1, device="cpu",
                           init={k: 1.0 * v[1:2] for k, v in base.items()})
    assert gd.final("objective")[3] == pytest.approx(ref.final("objective")[0], rel=1e-13)
    with pytest.raises(ValueError, match="scales must be"):
        linear_eufm_study.init_scale_study(model, [0.0], seeds=1, lr=0.1, steps=1)


def test_seed_table_ranks_and_level_ratio():
    model = extended_ufm(3, 4, 6, "linear", 0.01, 0.01, 0.01)
    gd = gradient_descent(model, lr=0.5, steps=6000, runs=2, init_std=0.3, record_every=500, device="cpu")
    opt = theory.eufm_optimum(3, 4, 0.01, 0.01, 0.01)
    t = deep_ufm_study.seed_table(gd, opt)
    assert t.status.tolist() == ["at f*", "at f*"] and t.min_rank.tolist() == [3, 3]
    ranks = deep_ufm_study.class_mean_ranks(gd)
    assert set(ranks.level) == {"H1", "H2"} and (ranks["rank"] == 3).all()
    assert np.allclose(ranks.groupby(["run", "level"]).sv_rel.max(), 1.0)
    ratio = linear_eufm_study.level_ratio(gd, "nc1", "H2", "H1")
    assert len(ratio) >= 3 and (ratio > 0).all() and ratio.index[0] == 0
    cos = relu_eufm_study.mean_gram_cosines(gd)
    assert len(cos) == 2 * 2 * 3 and cos.cosine.abs().max() < 1e-6  # both levels orthogonal frames (linear)
    checks = deep_ufm_study.deep_ufm_checks(gd, opt, label="t")
    assert all(c["passed"] for c in checks), [c for c in checks if not c["passed"]]
    # per-seed geometry: every level's NC1, NC2 (orthogonal), NC3, and counts of the seeds at f* that show them
    assert {"nc1_H1", "nc2_H1", "nc3_H1", "nc1_H2", "nc2_H2", "nc3_H2"} <= set(t.columns)
    np.testing.assert_array_equal(t.nc2_H2, gd.final("nc2_orthogonal", "H2"))
    np.testing.assert_array_equal(t.nc3_H1, gd.final("nc3_gram", "H1"))
    np.testing.assert_array_equal(t.nc3_H2, gd.final("nc3_orthogonal", "H2"))
    counts = deep_ufm_study.seed_geometry_checks(gd, t, label="t")
    assert [(c["count"], c["total"]) for c in counts] == [(2, 2)] * 7 and all(c["passed"] for c in counts)
    strict = deep_ufm_study.seed_geometry_checks(gd, t, frame_tol=1e-300, zero_tol=1e-300, required=2)
    assert [c["count"] for c in strict] == [2, 0, 0, 0, 0, 0, 0] and not any(c["passed"] for c in strict[1:])
    shown = report.seeds_table(t)
    assert {"nc1 H1", "nc2 H2", "nc3 H2", "max NC1", "rel_err"} <= set(shown.columns)



def test_gd_reaches_f_dnc_for_a_binary_deep_ufm():
    """K = 2, L = 3 ReLU deep UFM: GD lands on dufm_optimum (f_DNC, every norm) with DNC at every post-ReLU level."""
    K, n, d, L, lam = 2, 5, 6, 3, 0.01
    gd = gradient_descent(DeepUFM(K=K, n=n, d=d, L=L, lambda_W=lam, lambda_H=lam), lr=0.5, steps=20000, runs=3,
                          init_std=d**-0.5, record_every=20000, seed=2, device="cpu", progress=False)
    o = theory.dufm_optimum(K, n, [lam] * L, lam)
    checks = deep_ufm_study.deep_ufm_checks(gd, o)  # the tolerances: 1e-4 relative, NC1 1e-6, NC2/NC3 1e-3
    assert all(c["passed"] for c in checks), [c for c in checks if not c["passed"]]
    assert len([c for c in checks if "NC2" in c["name"]]) == L - 1  # H2 … HL, not the pre-ReLU H1


def test_collapsed_params_sit_at_the_closed_form_and_the_metastable_branch_is_a_local_minimum():
    from ncutils.studies import _multilayer as ml

    for L, act, K in [(2, "relu", 4), (3, "relu", 2), (2, "linear", 3)]:
        model = DeepUFM(K=K, n=5, d=8, L=L, activation=act, lambda_W=0.01, lambda_H=0.01)
        opt = theory.dufm_optimum(K, 5, [0.01] * L, 0.01)
        p = ml.collapsed_params(model, opt, runs=2)
        np.testing.assert_allclose(model.objective(p).numpy(), opt.objective, rtol=1e-12)
    meta, gd = relu_eufm_study.metastable_start(3, 4, 6, 1.08, lr=0.3, steps=4000, seeds=2, noise=1e-2,
                                                device="cpu")
    assert meta.objective > 0.5  # a local, not the global, minimum (f(0) = 1/2)
    np.testing.assert_allclose(gd.final("objective"), meta.objective, rtol=1e-8)
    with pytest.raises(ValueError, match="past the end of the collapsed branch"):
        relu_eufm_study.metastable_start(3, 4, 6, 1.5, lr=0.3, steps=10, device="cpu")


def test_sweep_branches_rank_aware_nc1_and_depth_ratios():
    from ncutils.studies import _multilayer as ml

    sweep = pd.DataFrame({"objective_gd": [0.1, 0.52, 0.5, 0.7], "objective_theory": [0.1, 0.5, 0.5, 0.5],
                          "objective_metastable": [0.1, 0.52, 0.52, np.nan]})
    assert relu_eufm_study.sweep_branches(sweep).tolist() == ["global", "metastable", "global", "other"]
    model = extended_ufm(3, 4, 6, "linear", 0.01, 0.01, 0.01)
    gd = gradient_descent(model, lr=0.5, steps=3000, runs=2, init_std=0.3, record_every=300, device="cpu",
                          progress=False)
    ra = ml.rank_aware_nc1(gd)
    np.testing.assert_allclose(ra[ra.level == "H2"].nc1, gd.final("nc1", "H2"), rtol=1e-9)
    assert (ra["rank"] == 2).all() and (ra.nc1_rank == ra.nc1).all()  # full-rank centred means: the same cut
    r = ml.depth_ratios({"lin": gd})
    assert set(r.columns) == {"model", "step", "run", "ratio"} and (r.ratio > 0).all()
    t = ml.depth_ratio_table(r)
    assert t.loc["lin"]["seeds"].max() <= 2
    assert ml.product_alignment(gd).shape == (2,) and ml.product_alignment(gd).max() < 1e-3


def test_small_k_table_and_checks_can_fail():
    """The appendix setting (K = 3, 4, 5 at L = 4): one row per K; the checks pass only when the best loss is at
    f_DNC and all seeds but one reach it with full-rank class means."""
    study = deep_ufm_study
    m = DeepUFM(K=3, n=3, d=6, L=4, activation="relu", lambda_W=0.004, lambda_H=0.004)
    short = gradient_descent(m, lr=0.5, runs=3, steps=10, record_every=10, init_std=0.3, device="cpu",
                                progress=False)
    table = study.small_k_table({3: short}, 3, 0.004, 0.004)
    assert list(table.index) == [3] and table.loc[3, "seeds"] == 3 and table.loc[3, "L"] == 4
    assert table.loc[3, "f_DNC"] == pytest.approx(theory.dufm_optimum(3, 3, [0.004] * 4, 0.004).objective)
    assert table.loc[3, "at_f_DNC"] == 0
    assert table.loc[3, "L_SRG"] == pytest.approx(theory.srg_loss(3, 3, [0.004] * 4, 0.004))
    checks = study.small_k_checks(table)
    assert [c["passed"] for c in checks] == [False, False]  # 10 steps: nowhere near f_DNC
    good = table.copy()
    good.loc[3, ["best", "at_full_rank"]] = [good.loc[3, "f_DNC"], 2]
    assert [c["passed"] for c in study.small_k_checks(good)] == [True, True]
    good.loc[3, "best"] = good.loc[3, "f_DNC"] * 0.9  # a lower (low-rank) solution: not "= f_DNC"
    assert not study.small_k_checks(good)[0]["passed"]
