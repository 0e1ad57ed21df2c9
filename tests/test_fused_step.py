"""The fused in-place GD steps (``UFM.step``, ``DeepUFM.step``) against θ − lr ∇f(θ) from the closed-form gradient."""

import pickle

import pytest
import torch

from ncutils.models import UFM, DeepUFM
from ncutils.solve import gradient_descent


def _max_rel_gap(model, S, steps=300, lr=0.3, std=0.5):
    """Largest ‖p − q‖_max / ‖q‖_max after ``steps`` fused steps p and reference steps q = q − lr ∇f(q)."""
    p = model.init(S, std, torch.Generator().manual_seed(0), torch.float64)
    q = {k: v.clone() for k, v in p.items()}
    for _ in range(steps):
        model.step(p, lr)
        g = model.gradient(q)
        q = {k: q[k] - lr * g[k] for k in q}
    assert list(p) == list(q) and all(bool(torch.isfinite(v).all()) and v.abs().max() > 1e-3 for v in q.values())
    return max(float((p[k] - q[k]).abs().max() / q[k].abs().max()) for k in p)


@pytest.mark.parametrize("L", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("activation", ["relu", "linear"])
@pytest.mark.parametrize("lams", ["scalar", "per_run", "zero"])
def test_deep_ufm_step_is_gradient_descent(L, activation, lams):
    if lams == "zero" and L > 3:
        pytest.skip("without weight decay deep linear GD drifts along its flat directions (and into subnormals)")
    lambda_W, lambda_H = {"scalar": (5e-3, 4e-3),
                          "per_run": ([(0.01, 0.02, 0.0)] * (L - 1) + [0.004], (0.03, 0.0, 0.05)),
                          "zero": (0.0, 0.0)}[lams]
    model = DeepUFM(K=3, n=4, d=tuple(range(5, 5 + L)), L=L, activation=activation, lambda_W=lambda_W,
                    lambda_H=lambda_H)
    assert _max_rel_gap(model, 3, lr=0.3 if L < 4 else 0.1) < 1e-13


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("lambda_W", [5e-3, (0.01, 0.05)])
def test_ufm_step_is_gradient_descent(loss, lambda_W):
    assert _max_rel_gap(UFM(K=3, n=4, d=5, lambda_W=lambda_W, lambda_H=0.02, loss=loss), 2) < 1e-13


def test_step_buffers_follow_the_run_count_and_dtype():
    """The cached buffers are rebuilt for another S or dtype, and a pickled model carries none."""
    model = DeepUFM(K=3, n=4, d=6, L=3)
    for S, dt in ((2, torch.float64), (5, torch.float64), (2, torch.float32)):
        p = model.init(S, 0.5, torch.Generator().manual_seed(1), dt)
        q = {k: v.clone() for k, v in p.items()}
        model.step(p, 0.1)
        g = model.gradient(q)
        for k in p:
            torch.testing.assert_close(p[k], q[k] - 0.1 * g[k])
    assert "_step_cache" in model.__dict__
    clone = pickle.loads(pickle.dumps(model))
    assert clone == model and "_step_cache" not in clone.__dict__


def test_gd_with_fused_step_matches_the_generic_step():
    """A whole gradient_descent run (recording included) agrees with the generic step to round-off."""
    class Generic(DeepUFM):
        step = DeepUFM.__mro__[1].step  # FeatureModel.step: p −= lr · gradient(p)

    kw = dict(K=3, n=5, d=8, L=3, activation="relu", lambda_W=4e-3, lambda_H=4e-3)
    args = dict(lr=0.3, steps=400, runs=3, record_every=100, init_std=0.4, device="cpu", progress=False)
    fused, generic = gradient_descent(DeepUFM(**kw), **args), gradient_descent(Generic(**kw), **args)
    for k in fused.params:
        torch.testing.assert_close(fused.params[k], generic.params[k], rtol=1e-12, atol=1e-14)
    assert fused.final("objective") == pytest.approx(generic.final("objective"), rel=1e-12)


def test_threads_context_restores_the_callers_setting():
    from ncutils.solve import threads

    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match=r"^parameter threads must be an integer in \[1, inf\), got 0$"), threads(0):
        pass


def test_notebook_ufm_sizes_run_on_one_thread():
    """The notebooks' UFMs (01, 02, 03, 04, 08 at paper settings, all seeds in one program) get one thread;
    gradient_descent sets it for the loop only and restores the caller's count."""
    from ncutils.device import GD_THREAD_FLOPS, threads_for
    from ncutils.models import extended_ufm
    from ncutils.phase import auto_chunk

    paper = [(UFM(K=4, n=50, d=20), 1), (UFM(K=4, n=50, d=20, loss="ce"), 1),
             (extended_ufm(4, 50, 20, "linear"), 5), (extended_ufm(4, 50, 20, "relu"), 10),
             (extended_ufm(5, 100, 20, "relu"), 5), *((DeepUFM(K=2, n=50, d=20, L=L), 10) for L in (2, 3, 4, 5)),
             (DeepUFM(K=10, n=5, d=30, L=4), 10), (DeepUFM(K=10, n=5, d=60, L=4), 10),
             *((m, auto_chunk(m, 98, torch.device("cpu"), torch.float64))  # 08: cache-sized chunks of 98 runs
               for m in (UFM(K=4, n=50, d=20), extended_ufm(4, 50, 20, "linear"), DeepUFM(K=4, n=50, d=20, L=3)))]
    for model, S in paper:
        assert model.step_flops(S) < GD_THREAD_FLOPS and threads_for(model.step_flops(S), 2) == 1
    assert threads_for(None, 2) == 2 and threads_for(10 * GD_THREAD_FLOPS, 2) == 2

    seen = []

    class Spy(DeepUFM):
        def step(self, p, lr):
            seen.append(torch.get_num_threads())

    model = Spy(K=2, n=5, d=4, L=2)
    before = torch.get_num_threads()
    gradient_descent(model, lr=0.1, steps=3, device="cpu", progress=False)
    assert seen == [1, 1, 1] and torch.get_num_threads() == before
    gradient_descent(model, lr=0.1, steps=2, device="cpu", progress=False, threads=before)
    assert seen[3:] == [before, before]
    with pytest.raises(ValueError, match="parameter threads"):
        gradient_descent(model, lr=0.1, steps=2, device="cpu", threads=0)


def test_gd_flushes_subnormals_on_the_cpu_only_while_it_runs():
    """Subnormal floats (below 2.2e-308) slow x86 arithmetic many times; GD toward collapse meets them. The loop
    flushes them to zero and restores the default (off) after."""
    from ncutils.solve import flush_subnormals

    x = torch.tensor(1e-300, dtype=torch.float64)
    assert float(x * 1e-10) > 0  # torch's default: subnormals kept
    with flush_subnormals():
        assert float(x * 1e-10) == 0.0
    assert float(x * 1e-10) > 0
    with flush_subnormals(False):
        assert float(x * 1e-10) > 0

    seen = []

    class Spy(DeepUFM):
        def step(self, p, lr):
            seen.append(float(x * 1e-10))

    gradient_descent(Spy(K=2, n=5, d=4, L=2), lr=0.1, steps=2, device="cpu", progress=False)
    assert seen == [0.0, 0.0] and float(x * 1e-10) > 0
