"""ncutils.metrics against exact optima, brute-force d×d formulas, invariances and bad input."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from ncutils import metrics as m
from ncutils._validate import ParameterTypeError
from ncutils.theory import frame_distance


def simplex_etf(K: int, d: int, rng) -> np.ndarray:
    """K×d rows of a simplex ETF (unit norm, cos = −1/(K−1)), randomly rotated into R^d."""
    E = np.eye(K) - 1.0 / K
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    Q = ortho_group.rvs(d, random_state=rng)[:K]  # K orthonormal rows
    return E @ Q


def orthogonal_frame(K: int, d: int, rng) -> np.ndarray:
    return ortho_group.rvs(d, random_state=rng)[:K]


def collapsed(means: np.ndarray, n: int, noise: float = 0.0, rng=None):
    K = means.shape[0]
    y = np.repeat(np.arange(K), n)
    H = means[y].copy()
    if noise:
        H += noise * rng.standard_normal(H.shape)
    return H, y


def brute_force_nc1(H, y):
    """(1/K) tr(Σ_W Σ_B^†) with d×d matrices (numpy, float64)."""
    K = y.max() + 1
    M = np.stack([H[y == k].mean(0) for k in range(K)])
    mu_G = M.mean(0)
    R = H - M[y]
    Sw = R.T @ R / len(H)
    Mc = M - mu_G
    Sb = Mc.T @ Mc / K
    return np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10, hermitian=True)) / K


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("K,d", [(2, 2), (4, 20), (10, 12)])
def test_simplex_etf_is_optimal(K, d, rng):
    H, y = collapsed(3.0 * simplex_etf(K, d, rng), n=5)
    W = 2.0 * H[::5]  # classifier ∝ means (self-duality)
    assert m.nc1(H, y) < 1e-20
    assert m.nc2(H, y, "etf") < 1e-12
    assert m.nc2_equinorm(H, y) < 1e-12
    assert m.nc2_equiangle(H, y) < 1e-12
    assert m.nc2_maxangle(H, y) < 1e-12
    assert m.nc3(H, y, W=W, frame="etf") < 1e-12
    assert m.nc4(H, y, W=W) == 0.0
    # the same ETF measured against the orthogonal frame: the known distance √(2 − 2√((K−1)/K))
    assert m.nc2(H, y, "orthogonal") == pytest.approx(frame_distance(K), rel=1e-12)


def test_frame_distance_known_value():
    assert frame_distance(4) == pytest.approx(0.5176380902, rel=1e-9)  # Tirer & Bruna 2022 setting, docs/notation.md
    A = np.eye(4) / 2.0
    B = (np.eye(4) - 0.25) / math.sqrt(3)
    assert frame_distance(4) == pytest.approx(np.linalg.norm(A - B), rel=1e-12)


@pytest.mark.parametrize("K,d", [(2, 5), (4, 20)])
def test_orthogonal_frame(K, d, rng):
    M = 1.5 * orthogonal_frame(K, d, rng)
    H, y = collapsed(M, n=4)
    W = 0.3 * M
    assert m.nc2(H, y, "orthogonal") < 1e-12
    assert m.nc3(H, y, W=W, frame="orthogonal") < 1e-12
    # centring an orthogonal frame gives a simplex ETF: NC2 to the ETF is 0 too ...
    assert m.nc2(H, y, "etf") < 1e-12
    # ... but W ∝ M (uncentred) is not ∝ M̃: NC3 (ETF) is the frame distance
    assert m.nc3(H, y, W=W, frame="etf") == pytest.approx(frame_distance(K), rel=1e-12)
    assert m.nc3_squared(H, y, W=W) == pytest.approx(frame_distance(K) ** 2, rel=1e-12)


def test_known_non_optimal_values(rng):
    # Means with unequal norms: equinorm = std/mean (unbiased) of the centred norms.
    K, d = 3, 6
    E = simplex_etf(K, d, rng)
    scales = np.array([1.0, 2.0, 3.0])
    H, y = collapsed(E * scales[:, None], n=2)
    Mc = H[::2] - H[::2].mean(0)
    norms = np.linalg.norm(Mc, axis=1)
    assert m.nc2_equinorm(H, y) == pytest.approx(norms.std(ddof=1) / norms.mean(), rel=1e-12)
    # Papyan's weights version
    assert m.nc2_equinorm_weights(E * scales[:, None]) == pytest.approx(1.0 / 2.0, rel=1e-12)  # std([1,2,3])/2
    # Two parallel classifiers: cos = 1 ⇒ maxangle |1 + 1/(K−1)| = 2 for K = 2
    Wm = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert m.nc2_maxangle_weights(Wm) == pytest.approx(2.0)
    # NC1 of a known within-class spread: d=1... K=2, means ±1, samples ±1 ± 0.5
    H1 = np.array([[-1.5], [-0.5], [0.5], [1.5]])
    y1 = np.array([0, 0, 1, 1])
    # Σ_W = 0.25, Σ_B = 1 ⇒ nc1 = (1/2)·0.25 = 0.125, nc1_trace = 0.25
    assert m.nc1(H1, y1) == pytest.approx(0.125, rel=1e-12)
    assert m.nc1_trace(H1, y1) == pytest.approx(0.25, rel=1e-12)
    # Equiangularity: centred means (1, 0), (0, 1), (−1, −1) (+ an offset removed by centring)
    # have pairwise cosines (0, −1/√2, −1/√2)
    H3 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]) + np.array([0.0, 5.0])
    cos = np.array([0.0, -1 / math.sqrt(2), -1 / math.sqrt(2)])
    assert m.nc2_equiangle(H3, np.arange(3)) == pytest.approx(cos.std(ddof=1), rel=1e-12)
    assert m.nc2_maxangle(H3, np.arange(3)) == pytest.approx(np.mean(np.abs(np.r_[cos, cos] + 0.5)), rel=1e-12)


@pytest.mark.parametrize("K,d,N", [(2, 3, 40), (4, 20, 200), (10, 64, 500), (5, 3, 60)])
def test_nc1_matches_brute_force(K, d, N, rng):
    y = np.concatenate([np.arange(K), rng.integers(0, K, N - K)])
    H = rng.standard_normal((N, d)) + 2.0 * rng.standard_normal((K, d))[y]
    assert m.nc1(H, y) == pytest.approx(brute_force_nc1(H, y), rel=1e-10, abs=1e-12)
    Sw = m.within_class_cov(H, y).numpy()
    Sb = m.between_class_cov(H, y).numpy()
    assert m.nc1_trace(H, y) == pytest.approx(np.trace(Sw) / np.trace(Sb), rel=1e-12)
    assert m.nc1(H, y) >= 0


def test_nc1_does_not_form_dxd(rng, monkeypatch):
    """Flattened-conv sizes: d = 200 000 must work without a d×d matrix (would be 320 GB)."""
    K, d, N = 3, 200_000, 30
    y = np.repeat(np.arange(K), N // K)
    H = torch.randn(N, d, dtype=torch.float64) + torch.randn(K, d, dtype=torch.float64)[y]
    v = m.nc1(H, y)
    assert 0 < v < 1e6


def test_unbalanced_and_global_mean(rng):
    K, d = 3, 4
    counts = [2, 10, 50]
    y = np.repeat(np.arange(K), counts)
    H = rng.standard_normal((len(y), d)) + 3 * rng.standard_normal((K, d))[y]
    M = m.class_means(H, y).numpy()
    for k in range(K):
        np.testing.assert_allclose(M[k], H[y == k].mean(0), rtol=1e-12)
    # μ_G = mean of class means (not the sample mean) in Σ_B
    Mc = M - M.mean(0)
    np.testing.assert_allclose(m.between_class_cov(H, y).numpy(), Mc.T @ Mc / K, rtol=1e-12)
    assert m.nc1(H, y) == pytest.approx(brute_force_nc1(H, y), rel=1e-10)


def test_invariances(rng):
    K, d, N = 4, 10, 80
    y = rng.integers(0, K, N)
    y[:K] = np.arange(K)
    H = rng.standard_normal((N, d)) + rng.standard_normal((K, d))[y]
    W = rng.standard_normal((K, d))
    Q = ortho_group.rvs(d, random_state=rng)
    perm = rng.permutation(N)
    fns = {
        "nc1": lambda H, y, W: m.nc1(H, y),
        "nc1_trace": lambda H, y, W: m.nc1_trace(H, y),
        "nc2_etf": lambda H, y, W: m.nc2(H, y, "etf"),
        "nc2_orth": lambda H, y, W: m.nc2(H, y, "orthogonal"),
        "equinorm": lambda H, y, W: m.nc2_equinorm(H, y),
        "equiangle": lambda H, y, W: m.nc2_equiangle(H, y),
        "maxangle": lambda H, y, W: m.nc2_maxangle(H, y),
        "nc3": lambda H, y, W: m.nc3(H, y, W=W),
        "nc3_orth": lambda H, y, W: m.nc3(H, y, W=W, frame="orthogonal"),
        "nc4": lambda H, y, W: m.nc4(H, y, W=W),
    }
    for name, f in fns.items():
        base = f(H, y, W)
        assert f(H[perm], y[perm], W) == pytest.approx(base, rel=1e-10, abs=1e-14), name
        assert f(H @ Q, y, W @ Q) == pytest.approx(base, rel=1e-8, abs=1e-12), name
        assert f(3.7 * H, y, 0.2 * W) == pytest.approx(base, rel=1e-10, abs=1e-14), name


def test_torch_and_numpy_agree_and_return_floats(rng):
    K, d, N = 3, 5, 30
    y = np.repeat(np.arange(K), N // K)
    H = rng.standard_normal((N, d))
    W = rng.standard_normal((K, d))
    a = m.nc_metrics(H, y, W=W)
    b = m.nc_metrics(torch.tensor(H, dtype=torch.float32), torch.tensor(y), W=torch.tensor(W))
    assert all(isinstance(v, float) for v in a.values())
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    assert m.nc1(H, y) == pytest.approx(a["nc1"], rel=1e-14)


def test_nc4_bias_and_train_means(rng):
    # one sample, two classes: nearest mean says class 0, classifier with bias says class 1
    H = np.array([[0.1, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    y = np.array([0, 0, 1])
    W = np.array([[1.0, 0.0], [-1.0, 0.0]])
    means = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert m.nc4(H, y, W=W, means=means) == 0.0
    assert m.nc4(H, y, W=W, b=np.array([0.0, 1.0]), means=means) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "H,y,exc,match",
    [
        (np.zeros((4, 2)), np.array([0, 0, 0, 0]), ValueError, r"^parameter y must hold labels of K >= 2 classes"),
        (np.zeros((4, 2)), np.array([0, 0, 2, 2]), ValueError, r"^parameter y: class\(es\) \[1\] have no samples"),
        (np.zeros((4, 2)), np.array([0, 1, 0]), ValueError, r"^y must have shape \(N,\) = \(4,\) to match H"),
        (np.zeros(4), np.array([0, 1, 0, 1]), ValueError, r"^parameter H must be a 2-D \(N, d\) array"),
        (np.array([[np.nan, 0], [0, 0]]), np.array([0, 1]), ValueError,
         r"^parameter H must be finite \(metrics need finite input\), got 1 NaN or inf values$"),
        (np.zeros((2, 2)), np.array([0.0, 1.0]), ParameterTypeError,
         r"^parameter y must be an array of integer class labels, got dtype torch.float64$"),
        (np.zeros((2, 2)), np.array([-1, 1]), ValueError, r"^parameter y must hold labels in \[0, K\), got label -1$"),
        ("features", np.array([0, 1]), ParameterTypeError,
         r"^parameter H must be a numpy array or torch tensor, got 'features' \(str\)$"),
    ],
)
def test_bad_input_raises(H, y, exc, match):
    with pytest.raises(exc, match=match) as err:
        m.nc1(H, y)
    assert type(err.value) is exc


def test_bad_frame_and_classifier_shape():
    H = np.eye(3)
    y = np.arange(3)
    with pytest.raises(ValueError, match=r"^parameter frame must be one of \('etf', 'orthogonal'\), got 'simplex'$"):
        m.nc2(H, y, frame="simplex")
    with pytest.raises(ValueError, match=r"W must have shape \(K, d\) = \(3, 3\)"):
        m.nc3(H, y, W=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"class\(es\) \[3, 4\] have no samples"):
        m.nc1(H, y, num_classes=5)
    with pytest.raises(ParameterTypeError, match=r"^parameter num_classes must be an integer in \[2, inf\), got 3.0"):
        m.nc1(H, y, num_classes=3.0)


def test_batched_cores_match_public(rng):
    S, K, d, N = 3, 4, 6, 40
    y = np.repeat(np.arange(K), N // K)
    Hs = torch.randn(S, N, d, dtype=torch.float64)
    Ws = torch.randn(S, K, d, dtype=torch.float64)
    out = m.nc_metrics_t(Hs, torch.tensor(y), K, W=Ws)
    for s in range(S):
        single = m.nc_metrics(Hs[s], y, W=Ws[s])
        for k, v in single.items():
            assert float(out[k][s]) == pytest.approx(v, rel=1e-12, abs=1e-15), k


def test_classifier_is_keyword_only_after_features_and_labels(rng):
    """Every public metric takes (H, y, …) first; the classifier W, bias b and layer A are keyword-only."""
    K, d = 3, 4
    H, y = collapsed(orthogonal_frame(K, d, rng), n=2)
    W = H[::2]
    assert m.nc3(H, y, W=W, frame="orthogonal") < 1e-12
    assert m.nc3_gram(H, y, A=W) < 1e-12
    assert m.nc4(H, y, W=W, b=np.zeros(K)) == 0.0
    assert m.normalized_margin(H, y, W=W) > 0
    assert m.nc_metrics(H, y, W=W, b=np.zeros(K))["nc3_orthogonal"] < 1e-12
    for call in (lambda: m.nc3(H, y, W), lambda: m.nc3_squared(H, y, W), lambda: m.nc4(H, y, W),
                 lambda: m.nc3_gram(H, y, W), lambda: m.normalized_margin(H, y, W), lambda: m.nc_metrics(H, y, W)):
        with pytest.raises(TypeError, match="positional argument"):
            call()


# --------------------------------------------------------------------------- degenerate inputs (issue 16)
GEOMETRY = ("nc2_etf", "nc2_orthogonal", "nc2_equinorm", "nc2_equiangle", "nc2_maxangle", "nc2_equinorm_uncentred",
            "nc3_etf", "nc3_orthogonal", "nc3_gram", "nc4")


def centred_noise(y, d, scale, rng):
    """Within-class noise of exact class mean 0 (so the class means are those given, up to round-off)."""
    R = scale * rng.standard_normal((len(y), d))
    for k in np.unique(y):
        R[y == k] -= R[y == k].mean(0)
    return R


def degenerate_case(case, rng):
    """(H (N, d), y (N,), expected nc1): inputs whose class means all coincide."""
    K, n, d = 3, 6, 5
    y = np.repeat(np.arange(K), n)
    c = 1e3 * rng.standard_normal(d)
    if case == "identical_means":  # a large common mean and within-class spread: Σ_B = 0 < Σ_W
        return c + centred_noise(y, d, 1.0, rng), y, math.inf
    if case == "all_zero":  # 0/0
        return np.zeros((K * n, d)), y, math.nan
    if case == "all_equal":  # all features equal: the all-zero case translated
        return np.tile(c, (K * n, 1)), y, math.nan
    # K = 2: class 0's features all equal the global mean, so class 1's mean is the same
    y2 = np.repeat(np.arange(2), n)
    H = np.tile(c, (2 * n, 1))
    H[y2 == 1] += centred_noise(y2[y2 == 1], d, 1.0, rng)
    return H, y2, math.inf


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("case", ["identical_means", "all_zero", "all_equal", "one_class_at_global_mean"])
def test_degenerate_inputs_never_read_as_collapse(case, rng):
    H, y, want = degenerate_case(case, rng)
    K, d = y.max() + 1, H.shape[1]
    W = rng.standard_normal((K, d))
    assert same(m.nc1(H, y), want) and same(m.nc1_trace(H, y), want)
    assert same(m.nc1(H, y, rank_tol=1e-3), want)
    for value in (m.nc2(H, y, "etf"), m.nc2(H, y, "orthogonal"), m.nc2_equinorm(H, y), m.nc2_equiangle(H, y),
                  m.nc2_maxangle(H, y), m.nc3(H, y, W=W), m.nc3(H, y, W=W, frame="orthogonal"),
                  m.nc3_squared(H, y, W=W), m.nc3_gram(H, y, A=W), m.nc4(H, y, W=W)):
        assert math.isnan(value)
    assert m.class_mean_rank(H, y) == 0
    got = m.nc_metrics(H, y, W=W)
    assert same(got["nc1"], want) and same(got["nc1_trace"], want)
    assert all(math.isnan(got[key]) for key in GEOMETRY)
    # the plain statistics keep their values
    M = m.class_means(H, y).numpy()
    assert got["mean_norm_sq"] == pytest.approx(np.mean(np.sum(M**2, 1)), rel=1e-12, abs=0)
    assert got["nc2_equinorm_weights"] == pytest.approx(m.nc2_equinorm_weights(W), rel=1e-12)


def test_degenerate_rule_in_the_batched_cores_leaves_the_other_runs_alone(rng):
    K, n, d = 3, 6, 5
    y = np.repeat(np.arange(K), n)
    normal = rng.standard_normal((K * n, d)) + 2 * rng.standard_normal((K, d))[y]
    Hs = torch.tensor(np.stack([normal, degenerate_case("identical_means", rng)[0], np.zeros((K * n, d))]))
    Ws = torch.tensor(rng.standard_normal((3, K, d)))
    yt = torch.tensor(y)
    out = m.nc_metrics_t(Hs, yt, K, W=Ws)
    single = m.nc_metrics(normal, y, W=Ws[0])
    assert all(float(out[key][0]) == pytest.approx(v, rel=1e-12) for key, v in single.items())
    assert all(math.isfinite(v) for v in single.values())
    assert out["nc1"][1] == math.inf and out["nc1_trace"][1] == math.inf
    assert out["nc1"][2].isnan() and out["nc1_trace"][2].isnan()
    assert all(bool(out[key][1:].isnan().all()) for key in GEOMETRY)
    for fn in (m.nc1_t, m.nc1_trace_t):
        v = fn(Hs, yt, K)
        assert float(v[0]) == pytest.approx(single[fn.__name__[:-2]], rel=1e-12)
        assert v[1] == math.inf and v[2].isnan()


def test_normal_and_nearly_degenerate_inputs_keep_their_formulas(rng):
    """The rule fires only at round-off: means 1e-6 apart under a common mean of norm ~1e3 keep the formulas.
    (d < K there: with d ≥ K the round-off K-th direction of the centred means passes the default pinv cut when
    the common mean is large, see the nc1 docstring.)"""
    n = 6
    for offset, spread, K, d in ((1.0, 3.0, 3, 5), (1e3, 1e-6, 4, 3)):
        y = np.repeat(np.arange(K), n)
        W = rng.standard_normal((K, d))
        H = offset * rng.standard_normal(d) + spread * rng.standard_normal((K, d))[y]
        H += 1e-3 * spread * rng.standard_normal((K * n, d))
        Ht, yt = torch.tensor(H), torch.tensor(y)
        M = m.class_means_t(Ht, yt, K)
        R = Ht - M[yt]
        tr_w, tr_b = float(R.square().sum() / (K * n)), float(m.centred_means_t(M).square().sum() / K)
        got = m.nc_metrics(H, y, W=W)
        assert all(math.isfinite(v) for v in got.values())
        assert got["nc1_trace"] == pytest.approx(tr_w / tr_b, rel=1e-12)
        assert got["nc1"] == pytest.approx(brute_force_nc1(H, y), rel=1e-5)
        assert got["nc2_etf"] == float(m.nc2_from_means_t(M, "etf")) == m.nc2(H, y)
        assert got["nc3_orthogonal"] == float(m.nc3_from_means_t(M, W=torch.tensor(W), frame="orthogonal"))
        assert got["nc4"] == float(m.nc4_t(Ht, M, W=torch.tensor(W)))


def test_one_class_at_the_global_mean_is_not_degenerate_for_three_classes(rng):
    """K = 3 with class 2's features all equal to μ_G = (μ_0 + μ_1)/2: Σ_B ≠ 0, the formulas apply."""
    n, d = 5, 4
    y = np.repeat(np.arange(3), n)
    mu = np.array([[1.0, 0, 0, 0], [-1.0, 2, 0, 0], [0.0, 1, 0, 0]])
    H = mu[y] + centred_noise(y, d, 0.1, rng)
    H[y == 2] = mu[2]
    W = rng.standard_normal((3, d))
    got = m.nc_metrics(H, y, W=W)
    assert got["nc1"] == pytest.approx(brute_force_nc1(H, y), rel=1e-9)
    Sw, Sb = m.within_class_cov(H, y).numpy(), m.between_class_cov(H, y).numpy()
    assert got["nc1_trace"] == pytest.approx(np.trace(Sw) / np.trace(Sb), rel=1e-12)
    assert all(math.isfinite(got[key]) for key in ("nc2_etf", "nc2_orthogonal", "nc3_etf", "nc3_orthogonal", "nc4"))
    assert m.class_mean_rank(H, y) == 1  # the centred means ±(1, −1, 0, 0) and 0


def test_nc4_with_given_means_that_coincide_is_nan(rng):
    H = rng.standard_normal((6, 3))
    y = np.array([0, 0, 0, 1, 1, 1])
    W = rng.standard_normal((2, 3))
    assert math.isnan(m.nc4(H, y, W=W, means=np.ones((2, 3))))
    assert 0 <= m.nc4(H, y, W=W, means=np.eye(2, 3)) <= 1


# --------------------------------------------------------------------------- rank-aware NC1 (issue 16)
def low_rank_means_data(rng, K=3, n=40, d=6, noise=1e-3):
    """Centred class means with singular values (1, 1e-5), a common offset, within-class noise ``noise``."""
    U = np.linalg.qr(np.c_[np.ones(K), rng.standard_normal((K, 2))])[0][:, 1:]  # orthonormal, ⟂ 1
    V = np.linalg.qr(rng.standard_normal((d, 2)))[0]
    means = U @ np.diag([1.0, 1e-5]) @ V.T + rng.standard_normal(d)
    y = np.repeat(np.arange(K), n)
    return means[y] + centred_noise(y, d, noise, rng), y


def by_hand_nc1(H, y, keep):
    """(1/N) Σ_i Σ_{k < keep} (v_kᵀ r_i)² / σ_k², σ_k, v_k of the centred means (numpy SVD)."""
    K = y.max() + 1
    M = np.stack([H[y == k].mean(0) for k in range(K)])
    _, S, Vt = np.linalg.svd(M - M.mean(0))
    R = H - M[y]
    return sum(np.mean((R @ Vt[k]) ** 2) / S[k] ** 2 for k in range(keep))


def test_rank_aware_nc1_drops_the_tiny_direction_of_near_low_rank_means(rng):
    H, y = low_rank_means_data(rng)
    full, ranked = m.nc1(H, y), m.nc1(H, y, rank_tol=1e-3)
    assert full > 1e3 and ranked < 1e-5  # (1e-3 / 1e-5)² dominates; (1e-3 / 1)² without it
    assert full == pytest.approx(by_hand_nc1(H, y, 2), rel=1e-6)
    assert ranked == pytest.approx(by_hand_nc1(H, y, 1), rel=1e-9)
    assert m.nc1(H, y, rank_tol=1e-7) == pytest.approx(full, rel=1e-12)  # both directions kept
    assert m.nc1(H, y, rank_tol=None) == full
    assert m.nc_metrics(H, y, rank_tol=1e-3)["nc1"] == pytest.approx(ranked, rel=1e-12)
    assert m.nc_metrics(H, y)["nc1"] == pytest.approx(full, rel=1e-12)
    batched = m.nc1_t(torch.tensor(np.stack([H, H])), torch.tensor(y), 3, rank_tol=1e-3)
    assert batched.tolist() == pytest.approx([ranked, ranked], rel=1e-12)
    assert m.class_mean_rank(H, y) == 1 and m.class_mean_rank(H, y, rank_tol=1e-7) == 2


def test_rank_tol_below_the_round_off_cut_changes_nothing(rng):
    y = np.repeat(np.arange(4), 10)
    H = rng.standard_normal((40, 7)) + rng.standard_normal((4, 7))[y]
    assert m.nc1(H, y, rank_tol=1e-300) == m.nc1(H, y)
    assert m.class_mean_rank(H, y, rank_tol=1e-300) == 3  # centred means of K = 4 classes: rank K − 1


@pytest.mark.parametrize("K,d", [(3, 5), (5, 5)])
def test_class_mean_rank_centred_and_uncentred(K, d, rng):
    H, y = collapsed(orthogonal_frame(K, d, rng), n=3)
    assert m.class_mean_rank(H, y) == K - 1  # centring an orthogonal frame gives a simplex ETF
    assert m.class_mean_rank(H, y, centred=False) == K
    # centred=False counts what class_mean_singular_values (and studies' class_mean_ranks) count
    H2, y2 = low_rank_means_data(rng)
    sv = m.class_mean_singular_values(H2, y2)
    for tol in (1e-3, 1e-7, 0.5):
        assert m.class_mean_rank(H2, y2, tol, centred=False) == int(np.sum(sv > tol * sv[0]))


@pytest.mark.parametrize("bad,exc,match", [
    (0, ValueError, r"^parameter rank_tol must be a finite number in \(0, 1\), got 0$"),
    (1.0, ValueError, r"^parameter rank_tol must be a finite number in \(0, 1\), got 1.0$"),
    (-1e-3, ValueError, r"^parameter rank_tol must be a finite number in \(0, 1\), got -0.001$"),
    (float("nan"), ValueError, r"^parameter rank_tol must be a finite number in \(0, 1\), got nan$"),
    ("1e-3", ParameterTypeError, r"^parameter rank_tol must be a finite number in \(0, 1\), got '1e-3' \(str\)$"),
    (True, ParameterTypeError, r"^parameter rank_tol must be a finite number in \(0, 1\), got True \(bool\)$"),
])
def test_bad_rank_tol_is_refused_before_any_computation(bad, exc, match):
    y = np.array([0, 1])
    for call in (lambda: m.nc1("features", y, rank_tol=bad), lambda: m.nc_metrics("features", y, rank_tol=bad),
                 lambda: m.class_mean_rank("features", y, rank_tol=bad)):
        with pytest.raises(exc, match=match) as err:
            call()
        assert type(err.value) is exc
    with pytest.raises(ParameterTypeError, match=r"^parameter rank_tol must be a finite number in \(0, 1\), got None"):
        m.class_mean_rank(np.eye(2), y, rank_tol=None)
    with pytest.raises(ParameterTypeError, match=r"^parameter centred must be a bool"):
        m.class_mean_rank(np.eye(2), y, centred=1)
