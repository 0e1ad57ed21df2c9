"""StreamingNC: agreement with the in-memory metrics, validation, merge, state dicts, DDP all-reduce (gloo)."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from ncutils import metrics
from ncutils._validate import ParameterTypeError
from ncutils.stream import CLASSIFIER_KEYS, KEYS, StreamingNC


def _data(K=5, n=40, d=30, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(K, d, generator=g, dtype=torch.float64)
    H = torch.randn(K * n, d, generator=g, dtype=torch.float64) + means.repeat_interleave(n, 0)
    y = torch.arange(K).repeat_interleave(n)
    perm = torch.randperm(K * n, generator=g)
    W, b = torch.randn(K, d, generator=g, dtype=torch.float64), torch.randn(K, generator=g, dtype=torch.float64)
    return H[perm], y[perm], W, b


def _run(acc, H, y, W=None, b=None, batch=32, lo=0, hi=None, passes=(1, 2), Ht=None, yt=None):
    hi = len(y) if hi is None else hi
    clf = None if W is None else {"h": (W, b)}
    if 1 in passes:
        for i in range(lo, hi, batch):
            acc.update_means({"h": H[i:min(i + batch, hi)]}, y[i:min(i + batch, hi)])
    if 2 in passes:
        for i in range(lo, hi, batch):
            acc.update_within({"h": H[i:min(i + batch, hi)]}, y[i:min(i + batch, hi)], clf)
    if Ht is not None:
        for i in range(0, len(yt), batch):
            acc.update_test({"h": Ht[i:i + batch]}, yt[i:i + batch], clf)
    return acc


def _reference(H, y, K, W=None, b=None, Ht=None, yt=None):
    """nc_metrics, plus the NCC accuracy and the CDNV by their definitions (brute force, float64)."""
    ref = metrics.nc_metrics(H, y, W=W, b=b)
    M = metrics.class_means(H, y)
    nearest = torch.stack([(H - M[k]).square().sum(1) for k in range(K)], 1).argmin(1)
    ref["ncc_accuracy"] = float((nearest == y).double().mean())
    var = torch.stack([(H[y == k] - M[k]).square().sum(1).mean() for k in range(K)])
    ref["cdnv"] = float(np.mean([float((var[k] + var[j]) / (2 * (M[k] - M[j]).square().sum()))
                                 for k, j in itertools.permutations(range(K), 2)]))
    if Ht is not None:
        near_t = torch.stack([(Ht - M[k]).square().sum(1) for k in range(K)], 1).argmin(1)
        ref["ncc_accuracy_test"] = float((near_t == yt).double().mean())
        if W is not None:
            ref["nc4_test"] = metrics.nc4(Ht, yt, W=W, b=b, means=M)
    return ref


@pytest.mark.parametrize("K,d,tile", [(5, 30, 2**22), (5, 30, 7), (23, 400, 50), (2, 3, 1)])
def test_every_key_agrees_with_the_in_memory_metrics(K, d, tile):
    H, y, W, b = _data(K=K, d=d, n=30, seed=K * d)
    Ht, yt, _, _ = _data(K=K, d=d, n=8, seed=K * d + 1)
    got = _run(StreamingNC(K, tile=tile), H.float(), y, W, b, Ht=Ht, yt=yt).result()["h"]
    ref = _reference(H.float().double(), y, K, W, b, Ht.double(), yt)
    assert set(got) == {*KEYS, *CLASSIFIER_KEYS, "ncc_accuracy_test", "nc4_test"} == set(ref)
    for key, value in ref.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), (key, got[key], value)
    assert 0.5 < got["ncc_accuracy"] <= 1.0 and got["cdnv"] > 0


def test_nc3_gram_is_small_for_a_classifier_aligned_with_the_means_and_tiles_agree():
    H, y, _, _ = _data(K=12, d=50, spread=5.0)
    M = metrics.class_means(H, y)
    untiled = _run(StreamingNC(12), H, y, 2 * M, None).result()["h"]
    tiled = _run(StreamingNC(12, tile=5), H, y, 2 * M, None).result()["h"]
    assert untiled["nc3_gram"] < 1e-6 and untiled["nc3_orthogonal"] < 1e-12
    for key in untiled:
        assert tiled[key] == pytest.approx(untiled[key], rel=1e-12, abs=1e-12), key


def test_numpy_input_gives_the_tensor_result():
    H, y, W, b = _data()
    a = _run(StreamingNC(5), H, y, W, b).result()
    c = _run(StreamingNC(5), H.numpy(), y.numpy(), W.numpy(), b.numpy()).result()
    assert a == c


def _bad_pass1(acc, H, y):
    acc.update_means({"h": H[:10], "g": H[:10]}, y[:10])
    acc.update_means({"h": H[10:20]}, y[10:20])


def _bad_pass2_classifier(acc, H, y, W, b):
    acc.update_means({"h": H}, y)
    acc.update_within({"h": H[:10]}, y[:10], {"h": (W, b)})
    acc.update_within({"h": H[10:20]}, y[10:20])


@pytest.mark.parametrize("case,exc,match", [
    ("level_missing", ValueError, r"^parameter feats must hold the levels of the first batch, \['h', 'g'\], in every "
                                  r"batch, got no level 'g' \(pass 1, batch 1\)"),
    ("level_new", ValueError, r"got a new level 'g' \(pass 1, batch 1\)"),
    ("classifier_some_batches", ValueError, r"^parameter classifiers must give the same levels in every batch after "
                                            r"pass 1 \(\['h'\] in the first\), got \[\] \(pass 2, batch 1\)"),
    ("classifier_changes", ValueError, r"^parameter classifiers\['h'\] must be the same \(W, b\) in every batch "
                                       r"after pass 1, got a different one \(pass 2, batch 1\)"),
    ("label_K", ValueError, r"^parameter y must hold labels in \[0, K\) = \[0, 5\), got label 5 \(pass 1, batch 1\)$"),
    ("label_negative", ValueError, r"^parameter y must hold labels in \[0, K\) = \[0, 5\), got label -1 \(pass 1, "),
    ("d_changes", ValueError, r"^parameter feats\['h'\] must have d = 30 features per row as in the earlier batches, "
                              r"got 29 \(pass 1, batch 1\)$"),
    ("d_changes_pass2", ValueError, r"^parameter feats\['h'\] must have d = 30 .*got 31 \(pass 2, batch 0\)$"),
    ("nan", ValueError, r"^parameter feats\['h'\] must be finite, got 2 NaN or inf values \(pass 1, batch 1\)$"),
    ("float_labels", ParameterTypeError, r"^parameter y must be integer class labels, got dtype torch.float32 "
                                         r"\(pass 1, batch 0\)$"),
    ("rows", ValueError, r"^parameter feats\['h'\] must have shape \(B, d\) or \(B, …\) with B = 10 rows, one per "
                         r"label, got shape \(9, 30\) \(pass 1, batch 0\)$"),
    ("one_dim", ValueError, r"^parameter feats\['h'\] must have shape \(B, d\) .*got shape \(10,\)"),
    ("feats_type", ParameterTypeError, r"^parameter feats must be a non-empty mapping"),
    ("feats_list", ParameterTypeError, r"^parameter feats\['h'\] must be a numpy array or torch tensor \(pass 1, "
                                       r"batch 0\), got 'abc'"),
    ("W_shape", ValueError, r"^parameter classifiers\['h'\] must have W of shape \(K, d\) = \(5, 30\), got \(4, 30\)"),
    ("b_shape", ValueError, r"^parameter classifiers\['h'\] must have b of shape \(K,\) = \(5,\), got \(4,\)"),
    ("classifier_level", ValueError, r"^parameter classifiers must name levels of feats \['h'\], got 'x'"),
    ("labels_differ", ValueError, r"^level 'h': the class means of pass 2 differ from those of pass 1 \(class \d: by "
                                  r".* of its RMS feature norm > drift_tol = 0.0001\); pass 2 must see the same"),
    ("counts_differ", ValueError, r"^the labels of pass 2 differ from those of pass 1: class counts "),
    ("pass2_short", RuntimeError, r"^pass 2 saw 100 samples but pass 1 saw 200$"),
    ("no_pass1", RuntimeError, r"^no batches were added in pass 1"),
    ("empty_class", ValueError, r"class\(es\) \[4\] have no samples"),
    ("means_after_pass2", RuntimeError, r"update_means after the means were finalized"),
    ("K", ValueError, r"^parameter K must be an integer in \[2, inf\), got 1$"),
])
def test_bad_input_names_the_parameter_level_and_batch(case, exc, match):
    H, y, W, b = _data(K=5, d=30)
    Hf = H.float()
    acc = StreamingNC(5)
    with pytest.raises(exc, match=match) as err:
        if case == "level_missing":
            _bad_pass1(acc, Hf, y)
        elif case == "level_new":
            acc.update_means({"h": Hf[:10]}, y[:10])
            acc.update_means({"h": Hf[10:20], "g": Hf[10:20]}, y[10:20])
        elif case == "classifier_some_batches":
            _bad_pass2_classifier(acc, Hf, y, W, b)
        elif case == "classifier_changes":
            acc.update_means({"h": Hf}, y)
            acc.update_within({"h": Hf[:10]}, y[:10], {"h": (W, b)})
            acc.update_within({"h": Hf[10:20]}, y[10:20], {"h": (W, 2 * b)})
        elif case in ("label_K", "label_negative"):
            acc.update_means({"h": Hf[:10]}, y[:10])
            acc.update_means({"h": Hf[10:12]}, torch.tensor([0, 5 if case == "label_K" else -1]))
        elif case == "d_changes":
            acc.update_means({"h": Hf[:10]}, y[:10])
            acc.update_means({"h": Hf[10:20, :29]}, y[10:20])
        elif case == "d_changes_pass2":
            acc.update_means({"h": Hf}, y)
            acc.update_within({"h": torch.zeros(10, 31)}, y[:10])
        elif case == "nan":
            acc.update_means({"h": Hf[:10]}, y[:10])
            bad = Hf[10:20].clone()
            bad[3, 4], bad[5, 6] = float("nan"), float("inf")
            acc.update_means({"h": bad}, y[10:20])
        elif case == "float_labels":
            acc.update_means({"h": Hf[:10]}, y[:10].float())
        elif case == "rows":
            acc.update_means({"h": Hf[:9]}, y[:10])
        elif case == "one_dim":
            acc.update_means({"h": Hf[:10, 0]}, y[:10])
        elif case == "feats_type":
            acc.update_means([Hf[:10]], y[:10])
        elif case == "feats_list":
            acc.update_means({"h": "abc"}, y[:10])
        elif case in ("W_shape", "b_shape", "classifier_level"):
            acc.update_means({"h": Hf}, y)
            clf = {"W_shape": {"h": (W[:4], b)}, "b_shape": {"h": (W, b[:4])}, "classifier_level": {"x": (W, b)}}
            acc.update_within({"h": Hf[:10]}, y[:10], clf[case])
        elif case == "labels_differ":  # the same class counts, the labels of pass 2 shuffled
            acc.update_means({"h": Hf}, y)
            acc.update_within({"h": Hf}, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))])
            acc.result()
        elif case == "counts_differ":
            acc.update_means({"h": Hf}, y)
            y2 = y.clone()
            y2[y2 == 0] = 1
            acc.update_within({"h": Hf}, y2)
            acc.result()
        elif case == "pass2_short":
            acc.update_means({"h": Hf}, y)
            acc.update_within({"h": Hf[:100]}, y[:100])
            acc.result()
        elif case == "no_pass1":
            acc.result()
        elif case == "empty_class":
            acc.update_means({"h": Hf[y < 4]}, y[y < 4])
            acc.update_within({"h": Hf[y < 4]}, y[y < 4])
        elif case == "means_after_pass2":
            acc.update_means({"h": Hf}, y)
            acc.update_within({"h": Hf[:10]}, y[:10])
            acc.update_means({"h": Hf[:10]}, y[:10])
        elif case == "K":
            StreamingNC(1)
    assert type(err.value) is exc


def test_a_model_in_train_mode_between_the_passes_is_caught_but_tiny_noise_is_not():
    H, y, _, _ = _data()
    acc = StreamingNC(5)
    acc.update_means({"h": H}, y)
    acc.update_within({"h": H * (1 + 1e-7 * torch.randn_like(H))}, y)  # float32-level nondeterminism: accepted
    assert acc.result()["h"]["nc1"] > 0
    acc = StreamingNC(5)
    acc.update_means({"h": H}, y)
    torch.manual_seed(0)
    acc.update_within({"h": torch.nn.functional.dropout(H, 0.5)}, y)  # dropout left on
    with pytest.raises(ValueError, match="the class means of pass 2 differ"):
        acc.result()


def test_merge_of_two_halves_equals_one_pass():
    H, y, W, b = _data(K=6, n=50, d=20)
    Ht, yt, _, _ = _data(K=6, n=5, d=20, seed=9)
    one = _run(StreamingNC(6), H, y, W, b, Ht=Ht, yt=yt).result()
    half = len(y) // 2
    a = _run(StreamingNC(6), H, y, passes=(1,), hi=half)
    c = _run(StreamingNC(6), H, y, passes=(1,), lo=half)
    a.merge(c)
    c.load_state_dict(a.state_dict())  # both use the class means of all the data in pass 2
    _run(a, H, y, W, b, passes=(2,), hi=half, Ht=Ht[:13], yt=yt[:13])
    _run(c, H, y, W, b, passes=(2,), lo=half, Ht=Ht[13:], yt=yt[13:])
    merged = a.merge(c).result()
    assert merged.keys() == one.keys() and merged["h"].keys() == one["h"].keys()
    diff = max(abs(merged["h"][k] - v) for k, v in one["h"].items())
    assert diff <= 1e-12, diff
    assert a.batches == [10, 10, 2]  # pass 1: 5 + 5 batches; pass 2: 5 + 5; test: 1 + 1
    # merging pass 2 of accumulators with other class means is refused, as is mixing passes
    other = _run(StreamingNC(6), H, y, passes=(1, 2), lo=half)
    with pytest.raises(ValueError, match=r"^parameter other must have the pass-1 statistics of this accumulator"):
        a.merge(other)
    with pytest.raises(ValueError, match=r"^parameter other must be in the same pass as this accumulator \('within'\), "
                                         r"got 'means'"):
        a.merge(StreamingNC(6))
    with pytest.raises(ValueError, match=r"^parameter other must have K = 6 classes, got K = 3"):
        a.merge(StreamingNC(3))
    with pytest.raises(ParameterTypeError, match=r"^parameter other must be a StreamingNC"):
        a.merge({"h": 1})


def test_state_dict_round_trip_through_torch_save_and_reset():
    H, y, W, b = _data()
    ref = _run(StreamingNC(5), H, y, W, b).result()
    acc = _run(StreamingNC(5), H, y, passes=(1,))
    acc.update_within({"h": H[:64]}, y[:64], {"h": (W, b)})
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    buf.seek(0)
    restored = StreamingNC(5).load_state_dict(torch.load(buf, weights_only=False))
    for i in range(64, len(y), 32):
        restored.update_within({"h": H[i:i + 32]}, y[i:i + 32], {"h": (W, b)})
    assert restored.result() == ref
    state = acc.state_dict()
    acc.update_within({"h": H[64:]}, y[64:], {"h": (W, b)})
    assert state["counts_within"].sum() == 64  # a copy, not a view
    # a fresh state, then the metrics of another data set
    acc.reset()
    assert acc.phase == "means" and acc.levels == {} and acc.batches == [0, 0, 0]
    H2, y2, _, _ = _data(seed=5)
    assert _run(acc, H2, y2).result()["h"]["nc1"] == pytest.approx(metrics.nc1(H2, y2), rel=1e-10)
    with pytest.raises(ValueError, match=r"^parameter state must have K = 3 classes, got K = 5$"):
        StreamingNC(3).load_state_dict(state)


# --------------------------------------------------------------------------- DDP (gloo, 2 CPU processes)
def _ddp_worker(rank: int, world: int, port: int, path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        H, y, W, b = _data(K=6, n=50, d=20)
        Ht, yt, _, _ = _data(K=6, n=5, d=20, seed=9)
        # an uneven split: rank 0 gets the first 120 samples, rank 1 the other 180
        lo, hi = (0, 120) if rank == 0 else (120, len(y))
        acc = StreamingNC(6)
        _run(acc, H, y, passes=(1,), lo=lo, hi=hi)
        acc.all_reduce()
        tlo, thi = (0, 10) if rank == 0 else (10, len(yt))
        _run(acc, H, y, W, b, passes=(2,), lo=lo, hi=hi, Ht=Ht[tlo:thi], yt=yt[tlo:thi])
        acc.all_reduce()
        out = {"result": acc.result()}
        try:
            acc.all_reduce()
        except RuntimeError as err:
            out["twice"] = str(err)
        torch.save(out, f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_all_reduce_with_gloo_matches_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    H, y, W, b = _data(K=6, n=50, d=20)
    Ht, yt, _, _ = _data(K=6, n=5, d=20, seed=9)
    one = _run(StreamingNC(6), H, y, W, b, Ht=Ht, yt=yt).result()["h"]
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        got = out["result"]["h"]
        assert got.keys() == one.keys()
        diff = max(abs(got[k] - v) for k, v in one.items())
        assert diff <= 1e-10, (rank, diff)
        assert out["twice"].startswith("all_reduce() after all_reduce() of the 'within' statistics")


def test_all_reduce_without_a_process_group_says_so():
    acc = StreamingNC(3)
    with pytest.raises(RuntimeError, match=r"needs an initialized torch.distributed process group"):
        acc.all_reduce()


# --------------------------------------------------------------------------- degenerate inputs, rank_tol (issue 16)
def _degenerate(case):
    """Features (N, d) whose class means all coincide, labels, and the expected nc1."""
    g = torch.Generator().manual_seed(3)
    K, n, d = 3, 20, 6
    y = torch.arange(K).repeat_interleave(n)
    c = 1e3 * torch.randn(d, generator=g, dtype=torch.float64)
    noise = torch.randn(K * n, d, generator=g, dtype=torch.float64)
    for k in range(K):
        noise[y == k] -= noise[y == k].mean(0)
    if case == "identical_means":
        return c + noise, y, float("inf")
    if case == "all_zero":
        return torch.zeros(K * n, d, dtype=torch.float64), y, float("nan")
    y2 = torch.arange(2).repeat_interleave(n)  # K = 2, class 0 at the global mean
    H = c.repeat(2 * n, 1)
    H[y2 == 1] += noise[:n]
    return H, y2, float("inf")


@pytest.mark.parametrize("case", ["identical_means", "all_zero", "one_class_at_global_mean"])
def test_degenerate_inputs_give_the_in_memory_inf_and_nan(case):
    H, y, want = _degenerate(case)
    K = int(y.max()) + 1
    g = torch.Generator().manual_seed(4)
    W, b = torch.randn(K, H.shape[1], generator=g, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    got = _run(StreamingNC(K), H, y, W, b, batch=7, Ht=H[:9], yt=y[:9]).result()["h"]
    ref = metrics.nc_metrics(H, y, W=W, b=b)
    for key, value in ref.items():
        assert (np.isnan(value) and np.isnan(got[key])) or got[key] == pytest.approx(value, rel=1e-9), key
    for key in ("nc1", "nc1_trace", "cdnv"):
        assert got[key] == want or (np.isnan(want) and np.isnan(got[key])), key
    nan_keys = {*KEYS, *CLASSIFIER_KEYS, "ncc_accuracy_test", "nc4_test"} - {"nc1", "nc1_trace", "cdnv",
                                                                           *metrics.PLAIN_KEYS}
    assert all(np.isnan(got[key]) for key in nan_keys)
    assert got["mean_norm_sq"] == pytest.approx(ref["mean_norm_sq"], rel=1e-12, abs=0)


def test_rank_tol_agrees_with_the_in_memory_rank_aware_nc1_and_travels_with_the_state():
    g = torch.Generator().manual_seed(5)
    K, n, d = 3, 40, 8
    U = torch.linalg.qr(torch.cat([torch.ones(K, 1, dtype=torch.float64),
                                   torch.randn(K, 2, generator=g, dtype=torch.float64)], 1))[0][:, 1:]
    V = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))[0]
    means = U @ torch.diag(torch.tensor([1.0, 1e-5], dtype=torch.float64)) @ V.T + torch.randn(d, generator=g)
    y = torch.arange(K).repeat_interleave(n)
    noise = 1e-3 * torch.randn(K * n, d, generator=g, dtype=torch.float64)
    for k in range(K):  # exact class means 0: the sample means keep the singular values (1, 1e-5)
        noise[y == k] -= noise[y == k].mean(0)
    H = means[y] + noise
    ranked = _run(StreamingNC(K, rank_tol=1e-3), H, y).result()["h"]
    full = _run(StreamingNC(K), H, y).result()["h"]
    assert ranked["nc1"] == pytest.approx(metrics.nc1(H, y, rank_tol=1e-3), rel=1e-9)
    assert full["nc1"] == pytest.approx(metrics.nc1(H, y), rel=1e-9)
    assert ranked["nc1"] < 1e-4 < 1e2 < full["nc1"]
    assert {k: v for k, v in ranked.items() if k != "nc1"} == {k: v for k, v in full.items() if k != "nc1"}
    # the setting travels with the state and must match where sums are combined
    acc = _run(StreamingNC(K, rank_tol=1e-3), H, y, passes=(1,))
    state = acc.state_dict()
    assert state["rank_tol"] == 1e-3
    restored = _run(StreamingNC(K, rank_tol=1e-3).load_state_dict(state), H, y, passes=(2,)).result()["h"]
    assert restored == ranked
    with pytest.raises(ValueError, match=r"^parameter state must have rank_tol = None as this accumulator, got 0.001"):
        StreamingNC(K).load_state_dict(state)
    with pytest.raises(ValueError, match=r"^parameter other must have rank_tol = 0.001 as this accumulator, got None"):
        acc.merge(_run(StreamingNC(K), H, y, passes=(1,)))
    legacy = StreamingNC(K).state_dict()
    del legacy["rank_tol"]  # a state saved before rank_tol existed loads into the default accumulator
    StreamingNC(K).load_state_dict(legacy)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (1, ValueError), (2.0, ValueError), ("0.1", ParameterTypeError)])
def test_bad_rank_tol_names_the_parameter_and_the_range(bad, exc):
    with pytest.raises(exc, match=r"^parameter rank_tol must be a finite number in \(0, 1\), got ") as err:
        StreamingNC(3, rank_tol=bad)
    assert type(err.value) is exc
