"""The notebook steps in ncutils.experiments: threshold sweep and GD-vs-theory checks."""

import numpy as np
import pytest

from ncutils import theory
from ncutils.models import UFM
from ncutils.solve import gradient_descent
from ncutils.studies import ufm_mse as experiments


def test_threshold_sweep_matches_theory_on_both_sides():
    df = experiments.ufm_threshold_sweep(3, 5, 6, [0.3, 0.7, 1.3], lr=0.5, steps=4000, init_std=0.1, seed=0,
                                         device="cpu")
    np.testing.assert_allclose(df.objective_gd, [theory.ufm_objective_star(3, 5, lam, lam) for lam in df["lambda"]],
                               rtol=1e-8)
    np.testing.assert_allclose(df.c, [theory.ufm_threshold(3, 5, lam, lam) for lam in df["lambda"]], rtol=1e-12)
    assert df.mean_norm_sq_gd.iloc[-1] < 1e-12  # past c = 1 the features vanish
    assert df.mean_norm_sq_gd.iloc[0] == pytest.approx((1 - 0.3) / np.sqrt(5), rel=1e-8)
    c = experiments.sweep_check(df)
    assert c["passed"] and "worst of 3" in c["name"]
    with pytest.raises(ValueError, match="c_values"):
        experiments.ufm_threshold_sweep(3, 5, 6, [], lr=0.5, steps=10, init_std=0.1, seed=0)


def test_ufm_checks_pass_at_optimum_and_fail_off_it():
    model = UFM(K=3, n=5, d=6, lambda_W=0.02, lambda_H=0.01, bias=True)
    opt = theory.ufm_mse_optimum(3, 5, 0.02, 0.01, bias=True)
    done = experiments.ufm_checks(gradient_descent(model, lr=0.5, steps=6000, device="cpu"), opt)
    assert all(c["passed"] for c in done), [c for c in done if not c["passed"]]
    assert any(c["name"].endswith("bias b_k") for c in done)
    early = experiments.ufm_checks(gradient_descent(model, lr=0.5, steps=20, device="cpu"), opt)
    assert not all(c["passed"] for c in early)
