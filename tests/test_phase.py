"""Batched phase diagrams (ncutils.phase) and the spinodal of the deep UFM."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ncutils import UFM, gradient_descent, phase, theory
from ncutils._validate import ParameterTypeError


@pytest.mark.parametrize("kind,L", [("ufm", 1), ("eufm", 2), ("dufm", 3), ("dufm", 4)])
def test_boundary_curve_sits_at_ratio_one(kind, L):
    lw = np.array([0.003, 0.02, 0.07])
    for which, key in (("threshold", "ratio"), ("spinodal", "spinodal_ratio")):
        lh = phase.phase_boundary(kind, 4, 50, lw, L=L, which=which)
        for w, h in zip(lw, lh, strict=True):
            t = phase.phase_theory(kind, 4, 50, w, h, L=L)
            target = 1.0 if which == "threshold" else t["spinodal_ratio"]
            assert t["ratio"] == pytest.approx(target, rel=1e-12), key
    if kind == "ufm":  # c = K sqrt(n lambda_H lambda_W) = 1
        lh = phase.phase_boundary(kind, 4, 50, lw)
        assert 4 * np.sqrt(50 * lh * lw) == pytest.approx(np.ones(3), rel=1e-12)
    if kind == "eufm":  # K q = 2^(-4/3)
        q = (50 * phase.phase_boundary(kind, 4, 50, lw) * lw**2) ** (1 / 3)
        assert 4 * q == pytest.approx(np.full(3, 2 ** (-4 / 3)), rel=1e-12)


@pytest.mark.parametrize("m", [3, 4, 6])
def test_spinodal_is_where_the_collapsed_branch_disappears(m):
    K = 4
    q = 2 * theory.dufm_spinodal(m) / (K * m)
    assert theory.dufm_fit(K, q * (1 - 1e-7), m, branch="collapsed") > 0.1
    assert theory.dufm_fit(K, q * (1 + 1e-7), m, branch="collapsed") == 0.0
    assert theory.dufm_spinodal(m) > theory.dufm_threshold(m)  # a metastable window exists for m >= 3
    assert theory.dufm_spinodal(2) == theory.dufm_threshold(2) == 1.0


def test_ufm_phase_diagram_matches_theory_and_does_not_depend_on_chunks():
    lam = phase.grid(0.005, 0.5, 4)
    kw = dict(seeds=2, lr=0.5, steps=4000, init_std=0.1, seed=3, device="cpu", progress=False)
    whole = phase.phase_diagram("ufm", 3, 4, 5, lam, lam, **kw)
    chunked = phase.phase_diagram("ufm", 3, 4, 5, lam, lam, chunk=5, **kw)
    assert whole.chunks == 1 and chunked.chunks == 7 and whole.problems == 32
    np.testing.assert_allclose(chunked.runs.objective_gd, whole.runs.objective_gd, rtol=1e-12, atol=0)
    table = phase.phase_table(whole)
    assert len(table) == 16 and (table.seeds_at_theory == 2).sum() >= 12
    off = table[(table.ratio - 1).abs() > 0.15]
    assert (off.collapsed_gd == off.collapsed_theory).all()
    assert off.objective_rel_err.max() < 1e-8
    assert (table.collapsed_theory == (table.ratio < 1)).all() and table.collapsed_theory.any() \
        and not table.collapsed_theory.all()
    checks = phase.phase_checks(table, tol=1e-8)
    assert all(c["passed"] for c in checks)
    # the check can fail: a wrong theory value at one point
    bad = table.copy()
    bad.loc[off.index[0], "objective_rel_err"] = 0.5
    assert not phase.phase_checks(bad, tol=1e-8)[1]["passed"]


def test_auto_chunk_is_cache_sized_on_cpu_and_everything_on_gpu():
    full = UFM(4, 50, 20, loss="ce")  # not class-reducible: GD runs on all N = 200 rows
    assert phase.auto_chunk(full, 10_000, torch.device("cpu"), torch.float64) == 64  # the measured optimum
    assert phase.auto_chunk(full, 10_000, torch.device("cpu"), torch.float32) == 128
    ufm = UFM(4, 50, 20)  # MSE without bias: GD runs on K + d = 24 class-reduced rows, so 8x more runs fit
    assert phase.auto_chunk(ufm, 10_000, torch.device("cpu"), torch.float64) == 476
    assert phase.auto_chunk(ufm, 10, torch.device("cpu"), torch.float64) == 10
    assert phase.auto_chunk(ufm, 10_000, torch.device("cuda"), torch.float64) == 10_000
    deep = phase.phase_model("dufm", 4, 50, 20, 0.01, 0.01, L=3, activation="relu")
    assert 1 <= phase.auto_chunk(deep, 10_000, torch.device("cpu"), torch.float64) < 64
    linear = phase.phase_model("dufm", 4, 50, 20, 0.01, 0.01, L=3)
    assert phase.auto_chunk(linear, 10_000, torch.device("cpu"), torch.float64) == 193
    r = phase.phase_diagram("ufm", 3, 4, 5, [0.01, 0.1], [0.01], lr=0.1, steps=2, init_std=0.1, device="cpu",
                            progress=False)
    assert r.chunk == 2 and r.chunks == 1


def test_dufm_runs_report_lower_rank_critical_points():
    lam = np.array([0.02])
    r = phase.phase_diagram("dufm", 3, 5, 6, lam, lam, seeds=3, L=3, lr=0.3, steps=3000, init_std=0.3,
                            device="cpu", progress=False)
    assert r.runs.output_rank_gd.between(0, 3).all() and r.L == 3
    table = phase.phase_table(r)
    assert {"ratio", "spinodal_ratio", "output_rank_gd", "objective_rel_err"} <= set(table.columns)
    assert table.spinodal_ratio.iloc[0] == pytest.approx(theory.dufm_spinodal(4) / theory.dufm_threshold(4))


def test_batched_equals_a_python_loop_and_is_faster():
    lam = phase.grid(0.005, 0.1, 8)
    lw, lh = (tuple(g.ravel().tolist()) for g in np.meshgrid(lam, lam, indexing="ij"))
    init = UFM(4, 10, 8).init(64, 0.3, torch.Generator().manual_seed(0), torch.float64)
    kw = dict(lr=0.3, steps=100, record_every=100, progress=False, device="cpu")
    t0 = time.perf_counter()
    batched = gradient_descent(UFM(4, 10, 8, lw, lh), init=init, **kw).final("objective")
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop = [gradient_descent(UFM(4, 10, 8, lw[i], lh[i]), init={k: v[i:i + 1] for k, v in init.items()},
                             **kw).final("objective")[0] for i in range(64)]
    t_loop = time.perf_counter() - t0
    np.testing.assert_allclose(batched, loop, rtol=1e-12)
    assert t_batched < t_loop, (t_batched, t_loop)


def _diagram(**kw):
    args = dict(kind="ufm", K=3, n=4, d=5, lambda_W=[0.1], lambda_H=[0.1], lr=0.1, steps=1, init_std=0.1)
    return lambda: phase.phase_diagram(**{**args, **kw})


@pytest.mark.parametrize("call,exc,message", [
    (_diagram(kind="cnn"), ValueError, r"^parameter kind must be one of \('ufm', 'eufm', 'dufm'\), got 'cnn'$"),
    (_diagram(lambda_W=[]), ValueError,
     r"^parameter lambda_W must be a non-empty 1-D list of finite numbers in \(0, inf\), got \[\]$"),
    (_diagram(lambda_H=[-1.0]), ValueError,
     r"^parameter lambda_H must be a non-empty 1-D list of finite numbers in \(0, inf\), got \[-1.0\]$"),
    (_diagram(kind="dufm", L=1), ValueError, r"^parameter L must be an integer in \[2, inf\), got 1$"),
    (_diagram(chunk=0), ValueError, r"^parameter chunk must be an integer in \[1, inf\), got 0$"),
    (_diagram(seeds=0), ValueError, r"^parameter seeds must be an integer in \[1, inf\), got 0$"),
    (_diagram(seeds=1.5), ParameterTypeError,
     r"^parameter seeds must be an integer in \[1, inf\), got 1.5 \(float\)$"),
    (lambda: phase.phase_boundary("ufm", 3, 4, [0.1], which="edge"), ValueError,
     r"^parameter which must be one of \('threshold', 'spinodal'\), got 'edge'$"),
    (lambda: phase.grid(0.1, 0.01, 3), ValueError,
     r"^parameter high must be a finite number in \[0.1, inf\), got 0.01$"),
    (lambda: phase.grid(0.0, 0.01, 3), ValueError, r"^parameter low must be a finite number in \(0, inf\), got 0.0$"),
])
def test_bad_input_is_named(call, exc, message):
    with pytest.raises(exc, match=message) as err:
        call()
    assert type(err.value) is exc


def test_a_lower_rank_partial_solution_is_not_counted_as_collapsed():
    lam = np.array([0.01])
    r = phase.phase_diagram("ufm", 3, 4, 5, lam, lam, seeds=1, lr=0.3, steps=3000, init_std=0.3, device="cpu",
                            progress=False)
    t = phase.phase_table(r)
    assert t.collapsed_theory.iloc[0] and t.collapsed_gd.iloc[0] and not t.partial_gd.iloc[0]
    r.runs.loc[:, "output_rank_gd"] = 1  # the same fit with one class at 0: a partial (rank-1) critical point
    t = phase.phase_table(r)
    assert t.fit_gd.iloc[0] > 0.01 and not t.collapsed_gd.iloc[0] and t.partial_gd.iloc[0]
    far = t.assign(ratio=0.1)
    assert not phase.phase_checks(far, tol=1.0)[0]["passed"]  # GD's phase ≠ the theory's
