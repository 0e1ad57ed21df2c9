"""Closed forms (ncutils.theory) against GD, analytic gradients against autograd, the GD core."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from ncutils import theory
from ncutils._validate import ParameterTypeError
from ncutils.models import UFM
from ncutils.solve import DivergenceError, gradient_descent, record_steps


def test_spec_check_numbers():
    """Tirer & Bruna 2022, §3 setting: K=4, d=20, n=50, λ_W=λ_H=5e-3 → c = 0.141421, f* = 0.131421, ρ = 0.121421."""
    o = theory.ufm_mse_optimum(4, 50, 5e-3, 5e-3)
    assert o.c == pytest.approx(0.141421, abs=1e-6)
    assert o.objective == pytest.approx(0.131421, abs=1e-6)
    assert o.mean_norm_sq == pytest.approx(0.121421, abs=1e-6)
    assert o.fit == pytest.approx(1 - o.c)
    # λ_W‖W‖² = λ_H‖H‖²
    assert 5e-3 * o.norm_W_sq == pytest.approx(5e-3 * o.norm_H_sq)
    assert theory.ufm_objective_star(4, 50, 0.1, 0.1) == 0.5  # c ≥ 1: trivial minimizer
    assert theory.ufm_mean_norm_sq(4, 50, 0.1, 0.1) == 0.0


@pytest.mark.parametrize("loss,bias", [("mse", False), ("mse", True), ("ce", False), ("ce", True)])
def test_analytic_gradient_matches_autograd(loss, bias):
    model = UFM(K=3, n=4, d=5, lambda_W=(0.01, 0.2), lambda_H=0.03, loss=loss, bias=bias)
    p = model.init(2, 0.5, torch.Generator().manual_seed(1), torch.float64)
    if bias:
        p["b"] = torch.randn(2, 3, dtype=torch.float64)
    analytic = model.gradient(p)
    auto = super(UFM, model).gradient(p)  # FeatureModel.gradient: autograd of the objective
    for k in p:
        torch.testing.assert_close(analytic[k], auto[k], rtol=1e-12, atol=1e-14)


SMALL = dict(K=3, n=5, d=6, lambda_W=0.02, lambda_H=0.01)


@pytest.mark.parametrize("loss,bias", [("mse", False), ("mse", True), ("ce", False)])
def test_gd_reaches_closed_form(loss, bias):
    model = UFM(**SMALL, loss=loss, bias=bias)
    gd = gradient_descent(model, lr=0.5, steps=6000, record_every=6000, seed=3, device="cpu")
    args = (SMALL["K"], SMALL["n"], SMALL["lambda_W"], SMALL["lambda_H"])
    o = theory.ufm_ce_optimum(*args) if loss == "ce" else theory.ufm_mse_optimum(*args, bias=bias)
    for key, val in [("objective", o.objective), ("fit", o.fit), ("norm_W_sq", o.norm_W_sq),
                     ("norm_H_sq", o.norm_H_sq)]:
        assert gd.final(key)[0] == pytest.approx(val, rel=1e-7), key
    assert gd.final("mean_norm_sq", "H")[0] == pytest.approx(o.mean_norm_sq, rel=1e-7)
    assert gd.final("nc1", "H")[0] < 1e-12
    frame = "etf" if (bias or loss == "ce") else "orthogonal"
    assert gd.final(f"nc2_{frame}", "H")[0] < 1e-6
    assert gd.final(f"nc3_{frame}", "H")[0] < 1e-6
    if frame == "etf":  # simplex ETF, seen against the orthogonal frame
        assert gd.final("nc2_orthogonal", "H")[0] == pytest.approx(theory.frame_distance(3), rel=1e-6)
    else:  # orthogonal frame: the centred means are an ETF too, but W ∝ Mᵀ is not ∝ M̃ᵀ
        assert gd.final("nc2_etf", "H")[0] < 1e-6
        assert gd.final("nc3_etf", "H")[0] == pytest.approx(theory.frame_distance(3), rel=1e-6)
    if bias and loss == "mse":
        assert gd.final("bias_mean")[0] == pytest.approx(1 / 3, rel=1e-7)


def test_past_threshold_collapses_to_zero():
    lam = 1.2 / (3 * math.sqrt(5))  # c = 1.2
    gd = gradient_descent(UFM(K=3, n=5, d=6, lambda_W=lam, lambda_H=lam), lr=0.5, steps=3000, device="cpu")
    assert gd.final("objective")[0] == pytest.approx(0.5, rel=1e-9)
    assert gd.final("norm_H_sq")[0] < 1e-12


def test_ce_threshold_and_objective():
    # the CE optimum is non-trivial iff c < 1; past it f* = log K
    assert theory.ufm_ce_optimum(4, 50, 0.1, 0.1).objective == pytest.approx(math.log(4))
    o = theory.ufm_ce_optimum(4, 50, 5e-3, 5e-3)
    p = o.fit
    # stationarity of ℓ(p) + c p
    K, c = 4, o.c
    dl = -K * math.exp(-p * K / (K - 1)) / (1 + (K - 1) * math.exp(-p * K / (K - 1)))
    assert dl + c == pytest.approx(0.0, abs=1e-9)


def test_batched_hyperparameters_equal_separate_runs():
    lams = (0.01, 0.03)
    batched = gradient_descent(UFM(K=3, n=4, d=5, lambda_W=lams, lambda_H=0.02), lr=0.3, steps=200, seed=0,
                               device="cpu", init=None)
    init = UFM(K=3, n=4, d=5).init(2, 0.1, torch.Generator().manual_seed(0), torch.float64)
    for s, lam in enumerate(lams):
        single = gradient_descent(UFM(K=3, n=4, d=5, lambda_W=lam, lambda_H=0.02), lr=0.3, steps=200,
                                  device="cpu", init={k: v[s : s + 1] for k, v in init.items()})
        assert batched.final("objective")[s] == pytest.approx(single.final("objective")[0], rel=1e-12)


def test_divergence_names_step_size():
    with pytest.raises(DivergenceError, match=r"lr = 50"):
        gradient_descent(UFM(K=3, n=4, d=5), lr=50.0, steps=2000, device="cpu", init_std=1.0)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(lr=0.0), ValueError, r"^parameter lr must be a finite number in \(0, inf\), got 0.0$"),
    (dict(lr=-1.0), ValueError, r"^parameter lr must be a finite number in \(0, inf\), got -1.0$"),
    (dict(lr="0.1"), ParameterTypeError, r"^parameter lr must be a finite number in \(0, inf\), got '0.1' \(str\)$"),
    (dict(steps=0), ValueError, r"^parameter steps must be an integer in \[1, inf\), got 0$"),
    (dict(steps=10.0), ParameterTypeError, r"^parameter steps must be an integer in \[1, inf\), got 10.0 \(float\)$"),
    (dict(init_std=-1.0), ValueError, r"^parameter init_std must be a finite number in \[0, inf\), got -1.0$"),
    (dict(runs=0), ValueError, r"^parameter runs must be an integer in \[1, inf\), got 0$"),
    (dict(device="tpu"), ValueError, r"^parameter device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'$"),
    (dict(dtype="float16"), ValueError, r"^parameter dtype must be one of \('float64', 'float32'\), got 'float16'$"),
])
def test_gd_bad_arguments(kw, exc, match):
    args = dict(lr=0.1, steps=10, device="cpu") | kw
    with pytest.raises(exc, match=match) as err:
        gradient_descent(UFM(K=3, n=4, d=5), **args)
    assert type(err.value) is exc


@pytest.mark.parametrize("kw,exc,match", [
    (dict(K=1), ValueError, r"^parameter K must be an integer in \[2, inf\), got 1$"),
    (dict(K=2.0), ParameterTypeError, r"^parameter K must be an integer in \[2, inf\), got 2.0 \(float\)$"),
    (dict(n=0), ValueError, r"^parameter n must be an integer in \[1, inf\), got 0$"),
    (dict(lambda_W=-1e-3), ValueError, r"^parameter lambda_W must be a finite number in \[0, inf\), got -0.001$"),
    (dict(lambda_W=[0.1, float("nan")]), ValueError, r"^parameter lambda_W must be a number or a non-empty list"),
    (dict(lambda_H="0.1"), ParameterTypeError, r"^parameter lambda_H must be a number or a non-empty list"),
    (dict(loss="hinge"), ValueError, r"^parameter loss must be one of \('mse', 'ce'\), got 'hinge'$"),
])
def test_model_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match) as err:
        UFM(**(dict(K=3, n=4, d=5) | kw))
    assert type(err.value) is exc


def test_record_steps_grid():
    assert record_steps(10, every=4).tolist() == [0, 4, 8, 10]
    g = record_steps(10**6, num=20, geometric=True)
    assert g[0] == 0 and g[-1] == 10**6 and np.all(np.diff(g) > 0)
    ratios = g[3:] / g[2:-1]
    assert ratios.max() < 3.0


RESUME_SCRIPT = textwrap.dedent("""
    import sys, torch
    from ncutils.models import UFM
    from ncutils.solve import gradient_descent
    r = gradient_descent(UFM(K=4, n=20, d=10), lr=0.2, steps=60000, record_every=2000, checkpoint=sys.argv[1],
                         checkpoint_every=2000, device="cpu", progress=False)
    torch.save({"params": r.params, "history": r.history}, sys.argv[2])
""")


def test_killed_run_resumes_to_the_same_result(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    ref_ck, ref_out = tmp_path / "ref.pt", tmp_path / "ref_out.pt"
    subprocess.run([sys.executable, script, ref_ck, ref_out], check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    ck, out = tmp_path / "ck.pt", tmp_path / "out.pt"
    proc = subprocess.Popen([sys.executable, script, ck, out], env=os.environ | {"OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ck.exists() and not out.exists(), "the run should have been killed after a checkpoint"
    step_at_kill = torch.load(ck, weights_only=False)["step"]
    assert 0 < step_at_kill < 60000
    subprocess.run([sys.executable, script, ck, out], check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    a, b = torch.load(ref_out, weights_only=False), torch.load(out, weights_only=False)
    for k in a["params"]:
        torch.testing.assert_close(a["params"][k], b["params"][k], rtol=0, atol=0)
    assert a["history"].equals(b["history"])


def test_checkpoint_of_other_configuration_is_refused(tmp_path):
    ck = tmp_path / "c.pt"
    gradient_descent(UFM(K=3, n=4, d=5), lr=0.1, steps=10, device="cpu", checkpoint=ck)
    with pytest.raises(ValueError, match="different configuration"):
        gradient_descent(UFM(K=3, n=4, d=5), lr=0.2, steps=10, device="cpu", checkpoint=ck)


@pytest.mark.parametrize("args,exc,match", [
    ((1, 5, 0.01, 0.01), ValueError, r"^parameter K must be an integer in \[2, inf\), got 1$"),
    ((3, 5, 0.0, 0.01), ValueError, r"^parameter lambda_W must be a finite number in \(0, inf\), got 0.0$"),
    ((3, 5, 0.01, None), ParameterTypeError, r"^parameter lambda_H must be a finite number in \(0, inf\), got None"),
])
def test_theory_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match) as err:
        theory.ufm_mse_optimum(*args)
    assert type(err.value) is exc


def test_validation_helpers_moved_to_validate():
    """check_hyperparameter & co. live in ncutils._validate; ncutils.models re-exports them for one release."""
    from ncutils import _validate, models

    for name in ("check_hyperparameter", "check_integer", "check_integers"):
        assert getattr(models, name) is getattr(_validate, name)
    assert _validate.check_hyperparameter("lam", 0.5) == 0.5
    assert _validate.check_hyperparameter("lam", [1, 2.5]) == (1.0, 2.5)
    with pytest.raises(ValueError, match=r"^parameter lam must be a finite number in \(0, inf\), got 0$"):
        _validate.check_hyperparameter("lam", 0, strict=True)
    with pytest.raises(ValueError, match=r"^parameter lam must be a number or a non-empty list of finite numbers"):
        _validate.check_hyperparameter("lam", [])
    with pytest.raises(ParameterTypeError, match=r"^parameter lam must be a number or a non-empty list"):
        _validate.check_hyperparameter("lam", [0.1, "x"])
    with pytest.raises(ParameterTypeError, match=r"^parameter k must be an integer in \[1, inf\), got True \(bool\)$"):
        _validate.check_integer("k", True, 1)
