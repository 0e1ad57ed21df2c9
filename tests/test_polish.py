"""Second-order polishing of GD's endpoint (ncutils.solve.newton_polish) and the polished geometry table of the
multi-layer UFM studies (issue 16: certify the limit where the objective converges but the geometry does not)."""

import numpy as np
import pytest
import torch

from ncutils import theory
from ncutils.metrics import nc_metrics_t
from ncutils.models import UFM, extended_ufm
from ncutils.solve import gradient_descent, newton_polish
from ncutils.studies._multilayer import class_mean_problem, polished_geometry

LAM = 0.005


def _nc2(model, params, level):
    lev = model.levels(params)[level]
    return nc_metrics_t(lev.H, model.labels(), model.K, W=lev.W)["nc2_orthogonal"]


@pytest.fixture(scope="module")
def linear_gd():
    """A tiny linear EUFM after 300 GD steps: f about 20% above f*, NC2 about 0.1."""
    m = extended_ufm(3, 4, 6, "linear", LAM, LAM, LAM)
    return gradient_descent(m, lr=0.5, steps=300, runs=2, init_std=0.5, seed=1, progress=False)


@pytest.fixture(scope="module")
def relu_gd():
    """A small ReLU EUFM after 4000 steps: runs 0 and 7 at f* to 1e-4 and 2e-5 but NC2(H2) 2e-2 and 9e-3."""
    m = extended_ufm(3, 5, 8, "relu", LAM, LAM, LAM)
    return gradient_descent(m, lr=0.5, steps=4000, runs=8, init_std=0.5, seed=0, progress=False)


def test_linear_eufm_polishes_to_the_optimum(linear_gd):
    m = linear_gd.model
    opt = theory.eufm_optimum(3, 4, LAM, LAM, LAM)
    assert np.all(linear_gd.final("objective") / opt.objective - 1 > 1e-2)  # GD is far from f*
    res = newton_polish(m, linear_gd.params)
    t = res.table
    assert list(t.run) == [0, 1] and t.converged.all() and (t.kinks == 0).all()
    assert (t.grad_norm_after < 1e-10).all()
    assert np.allclose(t.objective_after, opt.objective, rtol=1e-10, atol=0)
    assert float(m.objective(res.params).sub(opt.objective).abs().max()) < 1e-10 * opt.objective
    for level in ("H1", "H2"):
        assert float(_nc2(m, res.params, level).max()) < 1e-8
    # a minimum with flat directions (the rotations of the linear model), no negative curvature
    assert (t.negative == 0).all() and (t.flat > 0).all() and (t.gap > 0).all()
    assert all(len(e) == 12 for e in res.eigenvalues.values())


def test_relu_eufm_polish_certifies_the_kinked_minimum(relu_gd):
    m = relu_gd.model
    opt = theory.eufm_optimum(3, 5, LAM, LAM, LAM)
    f = relu_gd.final("objective")
    runs = [0, 7]
    assert np.all(np.abs(f[runs] / opt.objective - 1) < 2e-4)
    nc2_gd = relu_gd.final("nc2_orthogonal", "H2")[runs]
    assert np.all(nc2_gd > 5e-3)  # the objective converged, the geometry did not
    res = newton_polish(m, relu_gd.params, runs=runs, max_iter=200)
    t = res.table
    assert t.converged.all() and (t.residual_after < 1e-12).all()
    # run 0's limit sits on ReLU kinks (pre-activations exactly 0), certified by the box multipliers; run 7's is
    # a smooth minimum (the units pinned at the start are released)
    assert t.kinks[0] > 0 and bool(t.kinks_certified[0]) and t.kink_residual[0] < 1e-12
    assert np.allclose(t.objective_after, opt.objective, rtol=1e-10, atol=0)
    assert float(_nc2(m, res.params, "H2")[runs].max()) < 1e-8
    assert (t.negative == 0).all()
    # runs not polished are returned unchanged
    assert torch.equal(res.params["H1"][1], relu_gd.params["H1"][1])


def test_polished_geometry_table(relu_gd):
    opt = theory.eufm_optimum(3, 5, LAM, LAM, LAM)
    full = polished_geometry(relu_gd, opt, runs=[7], spectrum=False)
    assert full.converged.all()
    assert float(full.nc2_H2_before[0]) > 5e-3 and float(full.nc2_H2_after[0]) < 1e-8
    assert float(full.nc3_H2_after[0]) < 1e-8 and abs(float(full.rel_err_after[0])) < 1e-12
    # the class-mean reduction reaches the same geometry and objective
    means, res = polished_geometry(relu_gd, opt, runs=[7], means=True, result=True)
    assert means.converged.all() and float(means.nc2_H2_after[0]) < 1e-8
    assert float(means.objective_after[0]) == pytest.approx(float(full.objective_after[0]), rel=1e-12)
    assert res.params["H1"].shape == relu_gd.params["H1"].shape
    default = polished_geometry(relu_gd, opt, means=True, spectrum=False)
    assert set(default.run) >= {0, 7}  # the runs at f* by default


def test_class_mean_problem_objective(relu_gd):
    """The reduced model's objective at the class means equals the full objective at the collapsed point."""
    m = relu_gd.model
    reduced, p = class_mean_problem(m, relu_gd.params)
    assert reduced.n == 1 and p["H1"].shape == (8, 3, 8)
    collapsed = {**p, "H1": p["H1"][:, m.labels()]}
    assert torch.allclose(reduced.objective(p), m.objective(collapsed), rtol=1e-13, atol=0)


def test_refuses_above_max_params(linear_gd):
    with pytest.raises(ValueError, match=r"126 parameters, above max_params = 100"):
        newton_polish(linear_gd.model, linear_gd.params, max_params=100)
    with pytest.raises(ValueError, match="runs"):
        newton_polish(linear_gd.model, linear_gd.params, runs=[2])


def test_runs_are_polished_independently(linear_gd):
    m, p = linear_gd.model, linear_gd.params
    both = newton_polish(m, p, spectrum=False)
    for r in (0, 1):
        alone = newton_polish(m, {k: v[r:r + 1] for k, v in p.items()}, spectrum=False)
        for k in p:
            assert torch.equal(alone.params[k][0], both.params[k][r])
        assert alone.table.iterations[0] == both.table.iterations[r]


def test_plain_ufm_without_kinks():
    """Any FeatureModel: the plain UFM (no ReLU) polishes to its closed form."""
    m = UFM(K=3, n=4, d=5, lambda_W=LAM, lambda_H=LAM)
    gd = gradient_descent(m, lr=0.5, steps=200, runs=1, init_std=0.3, seed=0, progress=False)
    res = newton_polish(m, gd.params)
    opt = theory.ufm_mse_optimum(3, 4, LAM, LAM)
    assert bool(res.table.converged[0]) and res.table.kinks_certified[0] is None
    assert float(res.table.objective_after[0]) == pytest.approx(opt.objective, rel=1e-10)


def test_polishing_prints_no_torch_internal_warning():
    """torch's first forward-AD call (the Hessian) warns about its own torch.jit.script; a notebook's output
    must not carry that warning (with the site-packages path of the machine that ran it)."""
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('error', FutureWarning)\n"
            "from ncutils.models import extended_ufm\nfrom ncutils.solve import gradient_descent, newton_polish\n"
            "m = extended_ufm(3, 2, 4, 'linear', 0.01, 0.01, 0.01)\n"
            "gd = gradient_descent(m, lr=0.5, steps=200, runs=1, init_std=0.3, device='cpu', progress=False)\n"
            "newton_polish(m, gd.params, max_iter=5, spectrum=False)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "FutureWarning" not in out.stderr, out.stderr[-2000:]


def _limits_table():
    """Five polished runs, one of each outcome of polish_limits (levels H2, H3)."""
    import pandas as pd

    good, off = 1e-12, 1e-4
    return pd.DataFrame({
        "run": [0, 1, 2, 3, 4],
        "converged": [True, True, True, True, False],
        "kinks_certified": [True, None, True, True, True],  # None: no kink pinned (smooth)
        "objective_before": [1.0, 1.0, 1.0 + 1e-7, 1.0 + 1e-6, 1.0 + 1e-6],
        "objective_after": [1.0, 1.0, 1.0 + 5e-8, 1.0 + 6e-6, 1.0 + 1e-7],
        "rel_err_after": [0.0, 1e-12, 5e-8, 6e-6, 1e-7],
        "nc2_H2_after": [good, off, good, good, off], "nc3_H2_after": [good, good, good, off, off],
        "nc2_H3_after": [good, good, good, good, off], "nc3_H3_after": [good, good, good, good, off],
    })


def test_polish_limits_tell_every_outcome_apart():
    from ncutils.studies._multilayer import polish_limits

    lim = polish_limits(_limits_table(), ["H2", "H3"])
    assert lim.tolist() == ["DNC frame", "f*, frame off", "between f* and GD", "above GD's objective",
                            "not converged"]
    # the frame is required at every level named, and only there
    assert polish_limits(_limits_table(), ["H3"]).tolist()[1] == "DNC frame"


def test_polish_summary_is_the_worst_level_per_run():
    from ncutils.studies._multilayer import polish_summary

    t = _limits_table()
    for what in ("nc2", "nc3"):
        for lv in ("H2", "H3"):
            t[f"{what}_{lv}_before"] = 1e-3 if lv == "H2" else 2e-3
    t["rel_err_before"] = t.objective_before - 1
    s = polish_summary(t, ["H2", "H3"])
    assert list(s.index) == [0, 1, 2, 3, 4] and (s.max_nc2_before == 2e-3).all()
    assert s.max_nc2_after.tolist() == [1e-12, 1e-4, 1e-12, 1e-12, 1e-4]
    assert s.limit.tolist()[:2] == ["DNC frame", "f*, frame off"]


def test_polish_limit_checks_fail_on_another_limit_and_pass_without_one():
    from ncutils.studies._multilayer import polish_limit_checks

    t = _limits_table()
    checks = {c["id"]: c for c in polish_limit_checks(t, ["H2", "H3"], label="L=3")}
    frame, only, other = checks.values()
    assert (frame["count"], frame["total"], frame["passed"]) == (1, 5, True)
    assert (only["count"], only["total"], only["passed"]) == (1, 2, False)  # run 1: f* without the frame
    assert (other["count"], other["total"], other["passed"]) == (3, 4, False)  # run 2: between f* and GD
    # (run 4 did not converge: it is not counted)
    clean = t.drop(index=[1, 2])  # the DNC frame, a point above GD's own objective, a run not converged
    assert all(c["passed"] for c in polish_limit_checks(clean, ["H2", "H3"]))
    assert not polish_limit_checks(clean, ["H2", "H3"], required=2)[0]["passed"]
