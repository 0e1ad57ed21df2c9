"""Perturbation model (Tirer, Huang & Niles-Weed 2023), layer-peeled model (Ji et al. 2022), data loading,
and the small MLP."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ncutils import metrics, theory
from ncutils._validate import ParameterTypeError
from ncutils.data import DatasetNotFoundError, balanced_subset, load_dataset, write_fake_mnist
from ncutils.models import UFM
from ncutils.paths import repo_root
from ncutils.perturbation import PerturbationModel, jacobian_blocks, layerwise_chain, monotonicity_checks
from ncutils.pipeline import runner
from ncutils.solve import gradient_descent
from ncutils.studies import layer_peeled as layer_peeled_study
from ncutils.studies import perturbation as perturbation_study
from ncutils.train import mlp_features, train_mlp
from ncutils.ulpm import min_norm_separation

SQRT2 = math.sqrt(2)


def _random(shape, seed=0, std=1.0):
    return std * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- perturbation model
def test_normalization_maps_to_tirer_bruna():
    """THN 2023, Eq. 3: their f (β-free) equals TB's f with λ'_W = λ_W/K, λ'_H = λ_H/(Kn) — and c = √(λ_Hλ_W)."""
    K, n, d, lw, lh = 3, 4, 5, 0.7, 0.3
    m = PerturbationModel(K=K, n=n, d=d, lambda_W=lw, lambda_H=lh)
    W, H = _random((K, d), 1), _random((K * n, d), 2)
    lw_tb, lh_tb = m.ufm_lambdas()
    assert (lw_tb, lh_tb) == (lw / K, lh / (K * n))
    ufm = UFM(K=K, n=n, d=d, lambda_W=lw_tb, lambda_H=lh_tb)
    assert float(m.objective(W, H)) == pytest.approx(float(ufm.objective({"W": W[None], "H": H[None]})[0]), rel=1e-14)
    assert theory.ufm_threshold(K, n, lw_tb, lh_tb) == pytest.approx(math.sqrt(lw * lh), rel=1e-14)
    # the β term: (β/(2Kn))‖H − H₀‖²
    H0 = _random((K * n, d), 3)
    mb = PerturbationModel(K=K, n=n, d=d, lambda_W=lw, lambda_H=lh, beta=2.5)
    extra = float(mb.objective(W, H, H0) - mb.objective(W, H))
    assert extra == pytest.approx(2.5 / (2 * K * n) * float((H - H0).square().sum()), rel=1e-12)


def test_central_path_and_flow_velocity():
    m = PerturbationModel(K=3, n=4, d=6, lambda_W=0.8, lambda_H=0.1)
    H = _random((12, 6), 4)
    W = m.central_W(H).requires_grad_()
    (gW,) = torch.autograd.grad(m.objective(W, H), W)
    assert float(gW.abs().max()) < 1e-14  # W*(H) minimizes f over W
    Hg = H.clone().requires_grad_()
    (gH,) = torch.autograd.grad(m.reduced_objective(Hg), Hg)  # total derivative through W*(H)
    torch.testing.assert_close(m.flow_velocity(H), -m.N * gH, rtol=1e-10, atol=1e-13)


def test_collapsed_minimizer_is_stationary_and_optimal():
    m = PerturbationModel(K=4, n=10, d=10, lambda_W=SQRT2, lambda_H=0.2, beta=100.0)
    W, H = m.collapsed_minimizer(seed=3)
    assert float(torch.func.grad(m.reduced_objective)(H).abs().max()) < 1e-14
    torch.testing.assert_close(W, m.central_W(H), rtol=1e-12, atol=1e-14)
    lw, lh = m.ufm_lambdas()
    assert float(m.objective(W, H)) == pytest.approx(theory.ufm_objective_star(4, 10, lw, lh), rel=1e-13)
    star = m.minimize(H)  # a collapsed minimizer is its own perturbation minimizer
    assert float((star.H - H).abs().max()) < 1e-12 and star.converged


def test_implicit_jacobian_matches_finite_differences():
    m = PerturbationModel(K=2, n=2, d=3, lambda_W=0.9, lambda_H=0.3, beta=2.0)
    H0 = _random((4, 3), 5)
    star = m.minimize(H0)
    assert star.grad_norm < 1e-10
    F = m.jacobian(H0, star.H)
    eps, fd = 1e-5, torch.zeros(12, 12)
    for j in range(12):
        e = torch.zeros(12, dtype=torch.float64)
        e[j] = eps
        plus = m.minimize(H0 + e.reshape(4, 3)).H.reshape(-1)
        minus = m.minimize(H0 - e.reshape(4, 3)).H.reshape(-1)
        fd[:, j] = (plus - minus) / (2 * eps)
    torch.testing.assert_close(F, fd.double(), rtol=0, atol=1e-7)


def test_theorem_4_1_closed_form_and_first_order_formula():
    """THN 2023, Thm 4.1: Kn∇²L in closed form (Kronecker products) is the autograd Hessian; the exact Jacobian is
    (I + A/β)⁻¹; Eq. 5's F₁ = I − A/β is off by A²/β², i.e. the error falls like β⁻² (slope 2 in 1/β)."""
    m = PerturbationModel(K=3, n=2, d=4, lambda_W=0.9, lambda_H=0.3, beta=5.0)
    H0 = _random((6, 4), 11)
    star = m.minimize(H0)
    A = m.reduced_hessian(star.H)
    hess = torch.func.hessian(lambda h: m.reduced_objective(h.reshape(6, 4)))(star.H.reshape(-1)) * m.N
    torch.testing.assert_close(A, hess, rtol=0, atol=1e-12)
    F = m.jacobian(H0, star.H)
    torch.testing.assert_close(F, torch.linalg.inv(torch.eye(24, dtype=torch.float64) + A / m.beta), rtol=0,
                               atol=1e-12)
    table = perturbation_study.first_order_study(m, {"random": H0}, [30.0, 300.0, 3000.0])
    assert (table.resolvent_err < 1e-12).all() and table.converged.all()
    np.testing.assert_allclose(table.scaled_err, table.norm_A2 / table.norm_F, rtol=0.05)  # the A²/β² term
    checks = perturbation_study.first_order_checks(table)
    assert [c["passed"] for c in checks] == [True, True]
    assert abs(checks[1]["gd"] - 2.0) < 0.02
    assert not perturbation_study.first_order_checks(table, order=1.0)[1]["passed"]  # first order is not enough
    with pytest.raises(ValueError, match="H must have shape"):
        m.reduced_hessian(H0[:5])


def test_theorem_4_2_is_exact_for_eq_5_and_lambda_W_raises_the_spectrum():
    """Thm 4.2's σ values hold to rounding for Eq. 5's F₁; larger λ_W raises σ_min(F_kk), lowers no σ_i(F_kk)
    and lowers σ_max(F_kk') (the paper: contrary to increasing λ_H)."""
    table, spectra = perturbation_study.jacobian_lambda_W_study(4, 10, 10, [0.5, 2.0], 0.2, 100.0)
    checks = perturbation_study.jacobian_checks(table, 10, 10, vary="lambda_W")
    assert all(c["passed"] for c in checks) and checks[0]["name"] == "lambda_W=0.5: sigma_max(F_kk)"
    direction = perturbation_study.direction_checks(table, spectra, "lambda_W")
    assert [c["passed"] for c in direction] == [True, True, True]
    moves = perturbation_study.spectrum_moves(spectra)
    assert moves.decrease.tolist() == [0] and moves.increase.iloc[0] > 0
    swapped = {0.5: spectra[2.0], 2.0: spectra[0.5]}
    assert not perturbation_study.direction_checks(table.iloc[::-1].assign(lambda_W=[0.5, 2.0]), swapped,
                                                   "lambda_W")[1]["passed"]


@pytest.mark.parametrize("lambda_H,sigma_min", [(0.05, 0.99812), (0.2, 0.99624), (0.5, 0.99405)])
def test_theorem_4_2_spectrum(lambda_H, sigma_min):
    """THN 2023, Thm 4.2 (their Fig. 1 setting): K=4, d=10, n=10, λ_W=√2, β=100."""
    m = PerturbationModel(K=4, n=10, d=10, lambda_W=SQRT2, lambda_H=lambda_H, beta=100.0)
    _, H0 = m.collapsed_minimizer(seed=0)
    blocks = jacobian_blocks(m.jacobian(H0, H0), 4, 10, 10)
    diag, off = blocks[blocks.diagonal], blocks[~blocks.diagonal]
    pred = theory.perturbation_jacobian(SQRT2, lambda_H, 100.0)
    assert abs(diag.sigma_min.min() - pred.diag_sigma_min) <= 1e-4
    assert abs(diag.sigma_min.min() - sigma_min) <= 1e-4  # rounded reference values
    assert diag.sigma_max.max() == pytest.approx(1.0, abs=1e-12)
    assert (diag["rank"] == 100).all() and (off["rank"] == 1).all()
    assert off.sigma_max.max() == pytest.approx(pred.offdiag_sigma_max, rel=0.01)
    assert diag.multiplicities.iloc[0].startswith("1x6")  # d − K directions pass unchanged


def test_theorem_3_1_flow_and_the_check_can_fail():
    m = PerturbationModel(K=3, n=5, d=6, lambda_W=1.0, lambda_H=0.3)
    flow = m.flow(_random((15, 6), 6), t_max=40.0, num=40)
    assert monotonicity_checks(flow.table).holds.all()
    lw, lh = m.ufm_lambdas()
    assert flow.table.L.iloc[-1] == pytest.approx(theory.ufm_objective_star(3, 5, lw, lh), rel=1e-6)
    bad = flow.table.copy()
    bad.loc[5, "nc1_trace"] = bad.loc[4, "nc1_trace"]  # a plateau violates "strictly decreases"
    bad.loc[7, "scaled_tr_Sigma_W"] = 2 * bad.loc[6, "scaled_tr_Sigma_W"]
    res = monotonicity_checks(bad).set_index("claim")
    assert res.violations.tolist() == [1, 1, 0]


def test_corollary_3_2_minimizer_is_more_collapsed():
    m = PerturbationModel(K=3, n=5, d=6, lambda_W=1.0, lambda_H=0.3)
    H0 = _random((15, 6), 7)
    y = m.labels()
    for beta in (0.01, 1.0, 100.0):
        from dataclasses import replace

        r = replace(m, beta=beta).minimize(H0)
        assert r.converged
        assert metrics.nc1_trace(r.H, y) < metrics.nc1_trace(H0, y)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"beta": 0.0}, ValueError, r"^parameter beta must be a finite number in \(0, inf\), got 0.0$"),
        ({"beta": -1.0}, ValueError, r"^parameter beta must be a finite number in \(0, inf\), got -1.0$"),
        ({"beta": "1"}, ParameterTypeError,
         r"^parameter beta must be a finite number in \(0, inf\), got '1' \(str\)$"),
        ({"lambda_W": 0.0}, ValueError, r"^parameter lambda_W must be a finite number in \(0, inf\), got 0.0$"),
        ({"lambda_H": float("nan")}, ValueError,
         r"^parameter lambda_H must be a finite number in \[0, inf\), got nan$"),
        ({"K": 1}, ValueError, r"^parameter K must be an integer in \[2, inf\), got 1$"),
    ],
)
def test_bad_model_parameters(kwargs, exc, match):
    with pytest.raises(exc, match=match) as err:
        PerturbationModel(**{"K": 2, "n": 2, "d": 3, "lambda_W": 1.0, "lambda_H": 0.1, **kwargs})
    assert type(err.value) is exc


def test_bad_H0():
    m = PerturbationModel(K=2, n=2, d=3, lambda_W=1.0, lambda_H=0.1)
    with pytest.raises(ValueError, match=r"H0 must have shape \(N, d\) = \(4, 3\).*got \(3, 4\)"):
        m.minimize(torch.zeros(3, 4))
    H0 = torch.zeros(4, 3, dtype=torch.float64)
    H0[1, 2] = float("nan")
    with pytest.raises(ValueError, match="H0 must be finite; it has 1 NaN/inf entries"):
        m.flow(H0, 1.0)
    with pytest.raises(ValueError, match=r"^parameter t_max must be a finite number in \(0, inf\), got -1.0$"):
        m.flow(torch.ones(4, 3), -1.0)


def test_layerwise_chain_reduces_nc1():
    m = PerturbationModel(K=3, n=6, d=8, lambda_W=1.0, lambda_H=0.2, beta=1.0)
    H0 = _random((18, 8), 8) + torch.eye(3, 8, dtype=torch.float64).repeat_interleave(6, 0)
    Hs, table = layerwise_chain(H0, m, 3)
    assert len(Hs) == 4 and (np.diff(table.nc1) < 0).all() and (np.diff(table.nc1_trace) < 0).all()
    assert table.converged.all()


# --------------------------------------------------------------------------- notebook 05 bad parameters
@pytest.mark.parametrize(
    "bad,match",
    [
        ({"beta": 0.0}, r"parameter beta must be a finite number in \(0, inf\), got 0.0"),
        ({"beta": -5.0}, r"parameter beta must be a finite number in \(0, inf\)"),
        ({"d": 4}, r"parameter d must be > K"),
        ({"jacobian_lambda_H": [0.1, 1.0]}, r"lambda_W \* jacobian_lambda_H must all be < 1"),
        ({"chain_data": "cifar"}, r"parameter chain_data must be one of \('mnist', 'fake'\)"),
        ({"beta_min": 10.0, "beta_max": 1.0}, "beta_min must be < beta_max"),
        ({"h0_file": "no/such/file.npy"}, r"parameter h0_file: file .* does not exist"),
    ],
)
def test_bad_parameters_of_notebook_05(no_kernel, bad, match, monkeypatch):
    with pytest.raises(ValueError, match=match):
        runner.run_notebook("05", params=bad)


def test_bad_H0_file_of_notebook_05(no_kernel, tmp_path, monkeypatch):
    nan = np.ones((40, 10))
    nan[3, 3] = np.inf
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "shape.npy", np.ones((40, 9)))
    with pytest.raises(ValueError, match=r"h0_file: H0 in .*nan.npy must be finite; it has 1 NaN/inf"):
        runner.run_notebook("05", params={"h0_file": str(tmp_path / "nan.npy")})
    with pytest.raises(ValueError, match=r"h0_file must hold an array of shape \(K n, d\).*'d': 10"):
        runner.run_notebook("05", params={"h0_file": str(tmp_path / "shape.npy")})


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"steps": 0}, r"parameter steps must be an integer in \[1, 1e\+09\]"),
        ({"wd_lambda": 0.0}, r"parameter wd_lambda must be a finite number in \(0, inf\)"),
        ({"num_records": 1}, r"parameter num_records must be an integer in \[2, inf\)"),
        ({"maxmargin_starts": 0}, r"parameter maxmargin_starts must be an integer in \[1, inf\)"),
    ],
)
def test_bad_parameters_of_notebook_06(no_kernel, bad, match, monkeypatch):
    with pytest.raises(ValueError, match=match):
        runner.run_notebook("06", params=bad)


# --------------------------------------------------------------------------- layer-peeled model
def _etf(K, n, d, w_sq, mu_sq, seed=0):
    Q = torch.linalg.qr(_random((d, K), seed))[0]
    E = (torch.eye(K, dtype=torch.float64) - 1.0 / K) * math.sqrt(K / (K - 1))  # unit-norm simplex
    M = E @ Q.T
    return math.sqrt(w_sq) * M, math.sqrt(mu_sq) * M.repeat_interleave(n, 0)


def test_ulpm_closed_form_on_an_etf():
    K, n, d = 4, 10, 10
    opt = theory.ulpm_optimum(K, n)
    assert opt.value == pytest.approx(math.sqrt(10) * 3) and opt.normalized_margin == pytest.approx(0.105409, abs=1e-6)
    W, H = _etf(K, n, d, opt.norm_w_sq, opt.mean_norm_sq)
    y = torch.arange(K).repeat_interleave(n)
    assert 0.5 * float(W.square().sum() + H.square().sum()) == pytest.approx(opt.value, rel=1e-12)
    assert float(metrics.margin_t(H, y, W=W)) == pytest.approx(1.0, rel=1e-12)  # feasible and tight
    assert metrics.normalized_margin(H, y, W=W) == pytest.approx(opt.normalized_margin, rel=1e-12)
    assert metrics.normalized_margin(3 * H, y, W=3 * W) == pytest.approx(opt.normalized_margin, rel=1e-12)
    # an unbalanced ETF (same directions, ‖w‖² ≠ n‖μ‖²) has a smaller normalized margin
    W2, H2 = _etf(K, n, d, 4 * opt.norm_w_sq, opt.mean_norm_sq / 4)
    assert metrics.normalized_margin(H2, y, W=W2) < opt.normalized_margin


def test_min_norm_separation_reaches_the_etf():
    sol = min_norm_separation(3, 2, 4, starts=3, seed=1)
    opt = theory.ulpm_optimum(3, 2)
    assert sol.value == pytest.approx(opt.value, rel=1e-7)
    assert sol.min_margin == pytest.approx(1.0, abs=1e-7)
    assert sol.metrics["nc1"] < 1e-10 and sol.metrics["nc2_etf"] < 1e-6 and sol.metrics["nc3_etf"] < 1e-6
    assert len(sol.table) == 3


@pytest.mark.parametrize("loss,lw,lh", [("ce", 0.0, 0.0), ("ce", 1e-3, 2e-3), ("mse", 5e-3, 5e-3),
                                        ("mse", (1e-3, 0.2), (0.3, 4e-3)), ("ce", (0.0, 0.1), 2e-3)])
def test_fused_step_equals_gradient_step(loss, lw, lh):
    m = UFM(K=3, n=4, d=5, lambda_W=lw, lambda_H=lh, loss=loss)
    p = m.init(2, 0.3, torch.Generator().manual_seed(0), torch.float64)
    q = {k: v.clone() for k, v in p.items()}
    m.step(p, 0.4)
    g = m.gradient(q)
    for k in q:
        torch.testing.assert_close(p[k], q[k] - 0.4 * g[k], rtol=1e-13, atol=1e-15)


def test_ulpm_gradient_descent_margin_rises_toward_its_limit():
    m = UFM(K=4, n=10, d=10, lambda_W=0.0, lambda_H=0.0, loss="ce")
    gd = gradient_descent(m, lr=0.5, steps=3000, runs=2, seed=0, init_std=0.1, geometric=True, num_records=20,
                          progress=False)
    h = gd.history[gd.history.metric == "normalized_margin"].pivot(index="step", columns="run", values="value")
    limit = theory.ulpm_optimum(4, 10).normalized_margin
    assert (h.iloc[-1] > 0.09).all() and (h.to_numpy() < limit).all()
    assert (np.diff(h.loc[h.index >= 200].to_numpy(), axis=0) > 0).all()  # monotone once separable


def test_max_margin_distance_zero_on_rotated_etf_and_known_off_it():
    K, n, d = 4, 3, 6
    opt = theory.ulpm_optimum(K, n)
    W, H = _etf(K, n, d, opt.norm_w_sq, opt.mean_norm_sq)
    Q = torch.linalg.qr(_random((d, d), 5))[0]
    y = torch.arange(K).repeat_interleave(n)
    assert metrics.max_margin_distance(7 * W @ Q, 7 * H @ Q, y) < 1e-7  # any scale, any rotation
    # W doubled: cos = 3/√10 between unit stacks (‖W‖² = ‖H‖² at the optimum), distance √(2 − 6/√10)
    assert metrics.max_margin_distance(2 * W, H, y) == pytest.approx(math.sqrt(2 - 6 / math.sqrt(10)), rel=1e-10)
    # a common shift of the rows of W (invisible to the CE) moves the direction off the max-margin set
    shift = torch.zeros(d, dtype=torch.float64)
    shift[-1] = 1.0
    assert metrics.max_margin_distance(W + shift, H, y) > 0.1
    with pytest.raises(ValueError, match="balanced classes"):
        metrics.max_margin_distance(W, H[:-1], y[:-1])


def test_ulpm_gradient_descent_keeps_its_invariants_and_respects_the_floor():
    """CE ignores a common shift of the w_k (w̄ exact under GD); WᵀW − HᵀH is conserved by the flow."""
    m = UFM(K=4, n=10, d=10, lambda_W=0.0, lambda_H=0.0, loss="ce")
    gd = gradient_descent(m, lr=0.5, steps=3000, runs=2, seed=0, init_std=0.1, geometric=True, num_records=20,
                          progress=False)
    w = layer_peeled_study.metric_table(gd, "w_mean_norm")
    np.testing.assert_allclose(w.iloc[-1], w.iloc[0], rtol=1e-12)
    c = layer_peeled_study.metric_table(gd, "imbalance_norm")
    np.testing.assert_allclose(c.iloc[-1], c.loc[c.index >= 100].iloc[0], rtol=1e-3)
    dist = layer_peeled_study.metric_table(gd, "maxmargin_distance")
    assert (dist >= layer_peeled_study.w_mean_floor(gd)).to_numpy().all()
    assert (dist.iloc[-1] < dist.loc[dist.index >= 100].iloc[0]).all()
    names = {c["id"] for c in layer_peeled_study.ulpm_rate_checks(gd, t_min=300)}
    assert "invariant_imbalance" in names


def test_loglog_slope_window_recovers_two_rates():
    """A metric (log t)^(−2) before step 1e4 and (log t)^(−1/2) after: each window sees its own rate."""
    from types import SimpleNamespace

    steps = np.unique(np.geomspace(10, 1e7, 80).astype(int))
    L, L0 = np.log(steps), np.log(1e4)
    value = np.where(steps < 1e4, L**-2.0 * L0**1.5, L**-0.5)
    rows = [{"step": s, "run": 0, "level": "model", "metric": "maxmargin_distance", "value": v}
            for s, v in zip(steps, value, strict=True)]
    gd = SimpleNamespace(history=pd.DataFrame(rows))
    np.testing.assert_allclose(layer_peeled_study.loglog_slope(gd, "maxmargin_distance", "model", 1e4), [-0.5],
                               rtol=1e-10)
    np.testing.assert_allclose(layer_peeled_study.loglog_slope(gd, "maxmargin_distance", "model", 20, 9e3), [-2.0],
                               rtol=1e-10)


# --------------------------------------------------------------------------- data and the MLP
def test_fake_mnist_round_trip_through_torchvision(tmp_path):
    write_fake_mnist(tmp_path, per_class=7, test_per_class=3)
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    X, y = load_dataset("mnist", tmp_path)
    assert X.shape == (70, 1, 28, 28) and X.dtype == torch.float32
    assert (y == torch.arange(10).repeat_interleave(7)).all()  # class-major
    Xs, ys = load_dataset("mnist", tmp_path, per_class=4, seed=1)
    assert Xs.shape[0] == 40 and (torch.bincount(ys) == 4).all()
    Xt, _ = load_dataset("mnist", tmp_path, train=False)
    assert Xt.shape[0] == 30
    with pytest.raises(ValueError, match="per_class = 8 but class 0 has only 7 samples"):
        load_dataset("mnist", tmp_path, per_class=8)


def test_missing_dataset_gives_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"mnist not found: looked for train-images-idx3-ubyte.*"
                                                   r"MNIST/raw; pass download=True .* DATA_ROOT"):
        load_dataset("mnist", tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"^parameter dataset must be one of \('mnist', 'cifar10'\), got 'svhn'$"):
        load_dataset("svhn", tmp_path)
    with pytest.raises(ValueError, match=r"^parameter per_class must be an integer in \[1, inf\), got 0$"):
        balanced_subset(torch.zeros(3, dtype=torch.int64), 0, 1)
    with pytest.raises(ParameterTypeError,
                       match=r"^parameter per_class must be an integer in \[1, inf\), got 2.0 \(float\)$"):
        balanced_subset(torch.zeros(3, dtype=torch.int64), 2.0, 1)


def test_real_mnist_subset_when_present():
    root = repo_root().parent / "shared" / "data"
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real MNIST subset not present at {root} (only on the development machines)")
    X, _ = load_dataset("mnist", root, per_class=20)
    assert X.shape == (200, 1, 28, 28) and abs(float(X.mean())) < 0.3


def test_train_mlp_learns_fake_digits_deterministically(tmp_path):
    write_fake_mnist(tmp_path, per_class=20)
    X, y = load_dataset("mnist", tmp_path)
    a = train_mlp(X, y, [16, 16], epochs=10, seed=0, progress=False)
    b = train_mlp(X, y, [16, 16], epochs=10, seed=0, progress=False)
    pd.testing.assert_frame_equal(a.history, b.history)
    assert a.history.train_accuracy.iloc[-1] >= 0.95
    feats = mlp_features(a.model, X)
    assert [f.shape for f in feats] == [(200, 16), (200, 16)] and all((f >= 0).all() for f in feats)
    with pytest.raises(ValueError, match=r"^parameter widths must be a non-empty list of integers >= 1, got \[\]$"):
        train_mlp(X, y, [], epochs=1)
    with pytest.raises(ParameterTypeError,
                       match=r"^parameter widths must be a non-empty list of integers >= 1, got 16"):
        train_mlp(X, y, 16, epochs=1)


def test_notebook_05_without_mnist_stops_before_any_compute(no_kernel, tmp_path, monkeypatch):
    monkeypatch.delenv("NCUTILS_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match=r"parameter data_root: mnist not found: looked for train-images-idx3-ubyte"
                                         r".* in .*/empty/MNIST/raw; .*make figures DATA_ROOT="):
        runner.run_notebook("05", params={"data_root": str(tmp_path / "empty")})
    monkeypatch.setenv("NCUTILS_DATA_ROOT", str(tmp_path / "nothing"))  # make figures DATA_ROOT=… is passed on
    with pytest.raises(ValueError, match=r"nothing/MNIST/raw"):
        runner.run_notebook("05")


# --------------------------------------------------------------------------- experiment helpers of 05 / 06
def test_jacobian_study_and_checks_fail_on_wrong_numbers():

    table, spectra = perturbation_study.jacobian_study(4, 10, 10, SQRT2, [0.2], 100.0)
    assert set(spectra) == {0.2} and len(spectra[0.2]) == 100
    assert all(c["passed"] for c in perturbation_study.jacobian_checks(table, 10, 10))
    bad = table.assign(diag_sigma_min=table.diag_sigma_min - 2e-4, offdiag_rank=2)
    failed = [c["name"] for c in perturbation_study.jacobian_checks(bad, 10, 10) if not c["passed"]]
    assert failed == ["lambda_H=0.2: sigma_min(F_kk)", "lambda_H=0.2: rank(F_kk'), k != k'"]


def test_chain_and_beta_sweep_checks():

    chain = pd.DataFrame({"beta": 1.0, "layer": [0, 1, 2], "nc1": [1.0, 0.5, 0.6], "nc1_trace": [1.0, 0.5, 0.2]})
    res = {c["name"].split(": ")[1].split(" (")[0]: c["passed"] for c in perturbation_study.chain_checks(chain, "fake")}
    assert res == {"layers where nc1 does not decrease": False, "layers where nc1_trace does not decrease": True}
    m = PerturbationModel(K=3, n=4, d=5, lambda_W=1.0, lambda_H=0.3)
    sweep = perturbation_study.beta_sweep(m, _random((12, 5), 9), [0.1, 10.0])
    assert (sweep.nc1_trace < sweep.nc1_trace_H0).all() and sweep.converged.all()
    assert sweep.nc1_trace.iloc[0] < sweep.nc1_trace.iloc[1]  # more freedom (small beta), more collapse


def test_loglog_slope_recovers_a_known_rate():
    from types import SimpleNamespace

    steps = np.unique(np.geomspace(10, 1e6, 40).astype(int))
    rows = [{"step": s, "run": r, "level": "H", "metric": "nc1", "value": (r + 1) * np.log(s) ** -2.0}
            for s in steps for r in range(2)]
    slopes = layer_peeled_study.loglog_slope(SimpleNamespace(history=pd.DataFrame(rows)), "nc1", t_min=100)
    np.testing.assert_allclose(slopes, [-2.0, -2.0], rtol=1e-10)
