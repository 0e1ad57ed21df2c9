"""The low-rank SRG construction of the deep UFM (Súkeník, Lampert & Mondelli 2024): loss, parameters, GD."""

import numpy as np
import pytest
import torch

from ncutils import theory
from ncutils.models import DeepUFM
from ncutils.solve import gradient_descent


@pytest.mark.parametrize("K,L,n,lams", [(10, 4, 5, [0.004] * 4), (6, 3, 3, [0.004] * 3), (10, 2, 5, [0.004] * 2),
                                        (3, 4, 5, [0.004] * 4), (10, 4, 5, [0.002, 0.003, 0.004, 0.005])])
def test_objective_at_the_construction_is_srg_loss(K, L, n, lams):
    """(a) The DeepUFM objective at the constructed parameters equals srg_loss to 1e-10 (β optimized and β = ½)."""
    for beta in (None, 0.5):
        c = theory.srg_construction(K, n, lams, 0.004, d=K + 1, beta=beta, runs=2)
        model = DeepUFM(K=K, n=n, d=K + 1, L=L, lambda_W=tuple(lams), lambda_H=0.004)
        f = model.objective(c.params)
        assert f.shape == (2,)
        assert f[0].item() == pytest.approx(c.objective, abs=1e-10)
        assert theory.srg_loss(K, n, lams, 0.004, beta=beta) == pytest.approx(c.objective, abs=1e-10)
        feats, pre, _ = model.forward(c.params)
        ranks = tuple(int(torch.linalg.matrix_rank(h[0])) for h in feats)
        assert ranks == c.ranks
        assert int(torch.linalg.matrix_rank(pre[-1][0])) == c.pre_relu_rank <= c.r
    assert theory.srg_loss(K, n, lams, 0.004) <= theory.srg_loss(K, n, lams, 0.004, beta=0.5) + 1e-12


def test_gd_started_at_the_construction_stays_there_low_rank():
    """(b) GD from the construction (K=6, r=4, L=4): the construction sits at ReLU kinks (zeros of the incidence
    matrix), so GD oscillates by O(lr) around it — at lr 0.02 within 2e-5 (relative) of L_SRG, never lower by
    more than round-off — and keeps rank r at H1…H_{L−1}, rank K at H_L."""
    K, L, n, lam = 6, 4, 3, 0.004
    c = theory.srg_construction(K, n, [lam] * L, lam)
    model = DeepUFM(K=K, n=n, d=K, L=L, lambda_W=lam, lambda_H=lam)
    gd = gradient_descent(model, steps=3000, lr=0.02, init={k: v.clone() for k, v in c.params.items()},
                          record_every=300, dtype="float64", device="cpu", progress=False)
    f = gd.history[gd.history.metric == "objective"].value.to_numpy()
    assert f.min() >= c.objective - 1e-12
    assert f.max() <= c.objective * (1 + 2e-5)
    h = gd.history
    last = h[(h.step == h.step.max()) & h.metric.astype(str).str.startswith("sv_")]
    ranks = {str(lv): int((p.value.to_numpy() > 1e-6 * p.value.max()).sum())
             for lv, p in last.groupby("level", observed=True)}
    assert ranks == {"H1": c.r, "H2": c.r, "H3": c.r, "H4": K}


def test_srg_beats_dnc_where_the_paper_says_and_not_elsewhere():
    """(c) K=10 (r=5), n=5, all λ=0.004: L_SRG < f_DNC at L=4 and 5; DNC wins at L=2 (SRG ≥ f_DNC for every r)
    and at L=3 for these r, and for K=3 (r=3: rank r = K, nothing to gain)."""
    for L in (4, 5):
        c = theory.srg_construction(10, 5, [0.004] * L, 0.004)
        assert c.objective < c.dnc_objective and c.ratio < 0.95
    for K in (3, 6, 10, 15):
        f_dnc = theory.dufm_optimum(K, 5, [0.004] * 2, 0.004).objective
        assert theory.srg_loss(K, 5, [0.004] * 2, 0.004) >= f_dnc - 1e-12
    for K in (3, 6, 10):
        assert theory.srg_loss(K, 5, [0.004] * 3, 0.004) > theory.dufm_optimum(K, 5, [0.004] * 3, 0.004).objective
    assert theory.srg_loss(3, 5, [0.004] * 4, 0.004) > theory.dufm_optimum(3, 5, [0.004] * 4, 0.004).objective


def test_srg_bad_arguments():
    with pytest.raises(ValueError, match="r\\(r-1\\)/2"):
        theory.srg_loss(7, 5, [0.004] * 4, 0.004)
    with pytest.raises(ValueError, match="L >= 2"):
        theory.srg_loss(10, 5, [0.004], 0.004)
    with pytest.raises(ValueError, match="beta"):
        theory.srg_loss(10, 5, [0.004] * 3, 0.004, beta=0.7)
    with pytest.raises(ValueError, match="widths"):
        theory.srg_construction(10, 5, [0.004] * 3, 0.004, d=4)
    assert theory.srg_r(10) == 5 and theory.srg_r(3) == 3
    rec = theory.srg_construction(6, 3, [0.004] * 3, 0.004).as_dict()
    assert "params" not in rec and np.isfinite(rec["objective"])
