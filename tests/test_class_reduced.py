"""GD in the class-reduced coordinates of a linear MSE model (``ncutils.models.ClassReduced``) is GD on the full
features, iterate by iterate; it applies exactly where it is exact and is refused (or skipped) elsewhere."""

import numpy as np
import pytest
import torch

from ncutils.models import UFM, ClassReduced, DeepUFM, class_reduce, class_reducible, extended_ufm, gd_rows
from ncutils.solve import gradient_descent

MODELS = {
    "ufm_per_run": UFM(K=4, n=20, d=10, lambda_W=(5e-3, 1e-2, 2e-3), lambda_H=(5e-3, 1e-3, 2e-2)),
    "eufm_linear": extended_ufm(3, 15, 8, "linear", 5e-3, 4e-3, 6e-3),
    "dufm_widths": DeepUFM(K=3, n=12, d=(9, 7, 5), L=3, activation="linear", lambda_W=(4e-3, 5e-3, 3e-3),
                           lambda_H=(4e-3, 2e-3, 8e-3)),
}


def _history_gap(a, b):
    """Largest relative gap between two GD histories over entries above round-off (|value| > 1e-10)."""
    m = a.history.merge(b.history, on=["step", "run", "level", "metric"])
    assert len(m) == len(a.history) == len(b.history)
    big = m[m.value_x.abs() > 1e-10]
    return float(((big.value_x - big.value_y).abs() / big.value_x.abs()).max())


@pytest.mark.parametrize("name", list(MODELS))
def test_reduced_gd_has_the_iterates_and_records_of_full_gd(name):
    model = MODELS[name]
    run = dict(lr=0.3, steps=1500, runs=3, record_every=500, init_std=0.4, seed=2, device="cpu", progress=False)
    full = gradient_descent(model, reduce=False, **run)
    red = gradient_descent(model, reduce=True, **run)
    for k, v in full.params.items():
        assert red.params[k].shape == v.shape
        assert float((red.params[k] - v).abs().max() / v.abs().max()) < 1e-11, k
    assert _history_gap(full, red) < 1e-8
    assert full.final("objective").max() < 0.9 * full.history.query("step == 0 and metric == 'objective'").value.max()
    auto = gradient_descent(model, **run)  # the default reduces wherever it is exact
    assert all(torch.equal(auto.params[k], red.params[k]) for k in red.params)


def test_reduced_objective_and_rows_equal_the_full_ones():
    model = MODELS["dufm_widths"]
    p = model.init(3, 0.5, torch.Generator().manual_seed(0), torch.float64)
    rm, rp = class_reduce(model, p)
    assert isinstance(rm, ClassReduced) and rp["H1"].shape == (3, 3 + 9, 9) and rm.rows == 12
    torch.testing.assert_close(rm.objective(rp), model.objective(p), rtol=1e-13, atol=0)
    torch.testing.assert_close(rm.expand(rp)["H1"], p["H1"], rtol=0, atol=1e-13)
    assert torch.equal(rp["W2"], p["W2"]) and rp["W2"] is not p["W2"]
    assert rm.step_flops(3) == pytest.approx(model.step_flops(3) * 12 / 36)
    assert gd_rows(model) == rm.rows == 12 and gd_rows(model, reduce=False) == model.N == 36
    with pytest.raises(TypeError, match="class_reduce"):
        rm.init(1, 0.1, torch.Generator(), torch.float64)


@pytest.mark.parametrize("model", [UFM(K=3, n=20, d=6, loss="ce"), UFM(K=3, n=20, d=6, bias=True),
                                   DeepUFM(K=3, n=20, d=6, L=2, activation="relu"),
                                   UFM(K=3, n=3, d=6)])  # ReLU, CE, bias: not exact; K + d ≥ N: nothing saved
def test_reduction_is_refused_where_it_is_not_exact_or_saves_nothing(model):
    assert not class_reducible(model) and gd_rows(model) == model.N
    assert class_reduce(model, model.init(2, 0.1, torch.Generator().manual_seed(0), torch.float64)) is None
    with pytest.raises(ValueError, match="parameter reduce=True needs a linear MSE model"):
        gradient_descent(model, lr=0.1, steps=2, runs=2, device="cpu", reduce=True)
    r = gradient_descent(model, lr=0.1, steps=2, runs=2, device="cpu", progress=False)  # default: the full model
    assert r.params["H" if isinstance(model, UFM) else "H1"].shape[1] == model.N


def test_subclasses_are_never_reduced():
    class Custom(DeepUFM):  # may change the objective or the step: the reduction does not know
        pass

    assert class_reducible(DeepUFM(K=2, n=10, d=4, L=2, activation="linear"))
    assert not class_reducible(Custom(K=2, n=10, d=4, L=2, activation="linear"))


def test_a_reduced_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    model = MODELS["eufm_linear"]
    run = dict(lr=0.3, steps=600, runs=2, record_every=100, init_std=0.4, device="cpu", progress=False)
    ref = gradient_descent(model, **run)
    ckpt = tmp_path / "gd.pt"
    calls = []
    step = ClassReduced.step

    def stop_at_250(self, p, lr):  # a kill after the checkpoint at step 200
        calls.append(1)
        if len(calls) > 250:
            raise KeyboardInterrupt
        step(self, p, lr)

    ClassReduced.step = stop_at_250
    try:
        with pytest.raises(KeyboardInterrupt):
            gradient_descent(model, checkpoint=ckpt, checkpoint_every=200, **run)
    finally:
        ClassReduced.step = step
    assert torch.load(ckpt, weights_only=True)["step"] == 200
    resumed = gradient_descent(model, checkpoint=ckpt, checkpoint_every=200, **run)
    assert all(torch.equal(resumed.params[k], ref.params[k]) for k in ref.params)
    np.testing.assert_array_equal(resumed.final("nc1", "H2"), ref.final("nc1", "H2"))
    with pytest.raises(ValueError, match="checkpoint"):  # a full run is another configuration
        gradient_descent(model, checkpoint=ckpt, reduce=False, **run)
