"""ncutils.measure: hooks on any nn.Module, pooled and flattened taps, train and test loaders, float32 copies."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ncutils as nc
from ncutils import metrics
from ncutils._validate import ParameterTypeError
from ncutils.stream import CLASSIFIER_KEYS, KEYS


class SmallCNN(nn.Module):
    """A network that is not from ncutils: conv feature maps, a pooled embedding, a linear classifier."""

    def __init__(self, K: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(8, 12), nn.ReLU())
        self.fc = nn.Linear(12, K)

    def forward(self, x):
        return self.fc(self.embed(self.pool(self.features(x))))


def _data(K=4, n=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat_interleave(n)
    X = torch.randn(K * n, 1, 10, 10, generator=g) + y[:, None, None, None].float()
    return X, y


def _by_hand(model, X):
    """The features the hooks should see, taken with a plain forward pass."""
    with torch.no_grad():
        maps = model.features(X)
        first = model.features[1](model.features[0](X))
        emb = model.embed(model.pool(maps))
        out = model.fc(emb)
    return {"features.1": first.mean((2, 3)), "features.1_flat": first.flatten(1), "features": maps.mean((2, 3)),
            "features_flat": maps.flatten(1), "embed": emb, "fc.input": emb}, out


def test_measure_matches_nc_metrics_on_the_same_features_with_shuffled_loaders():
    torch.manual_seed(0)
    model = SmallCNN().train()
    X, y = _data()
    Xt, yt = _data(n=5, seed=1)
    loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True)  # a new order in each pass
    test = DataLoader(TensorDataset(Xt, yt), batch_size=7)
    res = nc.measure(model, loader, ["features.1", "features", "embed"], num_classes=4, classifier="fc",
                     test_loader=test, flatten=True)
    assert model.training and all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    model.eval()
    feats, _ = _by_hand(model, X)
    feats_t, _ = _by_hand(model, Xt)
    assert list(res) == ["features.1", "features.1_flat", "features", "features_flat", "embed", "fc.input"]
    W, b = model.fc.weight.detach().double(), model.fc.bias.detach().double()
    for level, H in feats.items():
        clf = level == "fc.input"
        ref = metrics.nc_metrics(H.double(), y, W=W if clf else None, b=b if clf else None)
        assert set(res[level]) == {*KEYS, "ncc_accuracy_test", *((*CLASSIFIER_KEYS, "nc4_test") if clf else ())}
        for key, value in ref.items():
            assert abs(res[level][key] - value) <= 1e-6 * max(1.0, abs(value)), (level, key)
        M = metrics.class_means(H.double(), y)
        near = torch.cdist(feats_t[level].double(), M).argmin(1)
        assert res[level]["ncc_accuracy_test"] == pytest.approx(float((near == yt).double().mean()))
    assert res["fc.input"]["nc4_test"] == pytest.approx(metrics.nc4(feats_t["fc.input"].double(), yt, W=W, b=b,
                                                                    means=metrics.class_means(feats["embed"], y)))


def test_classifier_reads_a_measured_level_and_to_frame_is_long():
    torch.manual_seed(1)
    model = SmallCNN()
    X, y = _data()
    loader = [(X[i:i + 20], y[i:i + 20]) for i in range(0, len(y), 20)]  # any re-iterable of (x, y) batches
    res = nc.measure.measure(model, loader, ["embed"], num_classes=4, classifier="fc", classifier_reads="embed")
    assert list(res) == ["embed"] and "nc4" in res["embed"]
    same = nc.measure(model, loader, [], num_classes=4, classifier="fc")
    assert same["fc.input"] == res["embed"]
    frame = nc.measure.to_frame(res)
    assert list(frame.columns) == ["layer", "metric", "value"] and len(frame) == len(res["embed"])
    assert frame.set_index("metric").value["nc1"] == res["embed"]["nc1"]
    seen = []
    nc.measure(model, loader, ["features"], num_classes=4, on_output=lambda out, yy, split: seen.append(split))
    assert seen == ["train", "train", "train"]


def test_features_are_copied_in_float32_outside_autocast():
    torch.manual_seed(2)
    model = SmallCNN()
    X, y = _data()
    hooks = nc.measure.FeatureHooks(model, ["embed.1"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(X)
    assert hooks.out["embed.1"].dtype == torch.float32
    hooks.remove()
    loader = [(X, y)]
    full = nc.measure(model, loader, ["embed"], num_classes=4)["embed"]
    bf16 = nc.measure(model, loader, ["embed"], num_classes=4, autocast=torch.bfloat16)["embed"]
    assert bf16["nc1"] == pytest.approx(full["nc1"], rel=0.05) and bf16["nc1"] != full["nc1"]


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"layers": ["featurs"]}, ValueError, r"^parameter layers must name modules of the model \(as in "
                                          r"model.named_modules\(\)\), got 'featurs'; did you mean 'features'"),
    ({"layers": ["nothing_like_it"]}, ValueError, r"got 'nothing_like_it'; its modules are \['features', "),
    ({"layers": "features"}, ParameterTypeError, r"^parameter layers must be a list of module names"),
    ({"layers": []}, ValueError, r"^parameter layers must be a non-empty list of module names"),
    ({"classifier": "fcc"}, ValueError, r"^parameter classifier must name modules .*got 'fcc'; did you mean 'fc'"),
    ({"classifier": "embed.1"}, ValueError, r"^parameter classifier must name a linear module with weight \(K, d\) = "
                                            r"\(4, d\), got 'embed.1' with weight \(12, 8\)"),
    ({"classifier": "fc", "classifier_reads": "features"}, ValueError,
     r"^parameter classifiers\['features'\] must have W of shape \(K, d\) = \(4, 8\), got \(4, 12\)"),
    ({"classifier": "fc", "classifier_reads": "embed.0"}, ValueError,
     r"^parameter classifier_reads must be one of the measured levels \['features'\], got 'embed.0'"),
    ({"classifier_reads": "features"}, ValueError, r"^parameter classifier_reads needs a classifier"),
    ({"num_classes": 1}, ValueError, r"^parameter num_classes must be an integer in \[2, inf\), got 1$"),
    ({"num_classes": 3}, ValueError, r"^parameter y must hold labels in \[0, K\) = \[0, 3\), got label 3 \(pass 1, "),
    ({"pooled": False}, ValueError, r"^parameters pooled and flatten must not both be False"),
    ({"loader": [torch.zeros(2, 1, 10, 10)]}, ParameterTypeError,
     r"^parameter loader must be an iterable of \(inputs, labels\) batches \(batch 0\)"),
    ({"model": "resnet"}, ParameterTypeError, r"^parameter model must be a torch.nn.Module"),
])
def test_bad_arguments_name_the_parameter(kwargs, exc, match):
    X, y = _data()
    args = {"model": SmallCNN(), "loader": [(X, y)], "layers": ["features"], "num_classes": 4} | kwargs
    with pytest.raises(exc, match=match) as err:
        nc.measure(**args)
    assert type(err.value) is exc


def test_measure_and_stream_import_no_tables_or_plots():
    import subprocess
    import sys

    code = ("import sys, ncutils as nc; nc.measure; nc.stream; import ncutils.measure, ncutils.stream; "
            "heavy = {'pandas', 'matplotlib', 'torchmetrics', 'lightning'}; "
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
