"""The torchmetrics metric and the Lightning callback (the torchmetrics and lightning extras)."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ncutils as nc
from ncutils.stream import StreamingNC


def _data(K=4, n=30, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat_interleave(n)
    X = torch.randn(K * n, d, generator=g) + 2 * torch.randn(K, d, generator=g)[y]
    return X, y


# --------------------------------------------------------------------------- torchmetrics
def test_torchmetrics_metric_equals_streaming_nc():
    pytest.importorskip("torchmetrics")
    from ncutils.integrations.torchmetrics import NeuralCollapse

    X, y = _data()
    H = {"h": X, "relu": X.relu()}
    W, b = torch.randn(4, 12, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    ref = StreamingNC(4)
    metric = NeuralCollapse(4, {"h": 12, "relu": 12})
    for i in range(0, len(y), 25):
        batch = {k: v[i:i + 25] for k, v in H.items()}
        ref.update_means(batch, y[i:i + 25])
        metric.update(batch, y[i:i + 25])
    metric.finalize_means()
    for i in range(0, len(y), 25):
        batch = {k: v[i:i + 25] for k, v in H.items()}
        ref.update_within(batch, y[i:i + 25], {"h": (W, b)})
        metric.update(batch, y[i:i + 25], {"h": (W, b)})
    got, want = metric.compute(), ref.result()
    assert got == want and "nc4" in got["h"] and "nc4" not in got["relu"]
    # reset starts over; the errors say what to do
    metric.reset()
    with pytest.raises(RuntimeError, match=r"^compute\(\) needs both passes: call finalize_means\(\)"), \
            pytest.warns(UserWarning, match="called before the ``update`` method"):
        metric.compute()
    with pytest.raises(ValueError, match=r"^parameter features_by_layer must hold the levels of dims \['h', 'relu'\]"):
        metric.update({"h": X}, y)
    with pytest.raises(ValueError, match=r"^parameter feats\['h'\] must have d = 12 features per row as in the "
                                         r"earlier batches, got 11 \(pass 1, batch 0\)"):
        metric.update({"h": X[:, :11], "relu": X}, y)
    with pytest.raises(RuntimeError, match="has no per-batch value"):
        metric(H, y)


def _tm_worker(rank: int, world: int, port: int, path: str) -> None:
    import torch.distributed as dist

    from ncutils.integrations.torchmetrics import NeuralCollapse

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        X, y = _data()
        W = torch.randn(4, 12, generator=torch.Generator().manual_seed(3))
        part = slice(0, 50) if rank == 0 else slice(50, None)
        metric = NeuralCollapse(4, {"h": 12})
        metric.update({"h": X[part]}, y[part])
        metric.finalize_means()
        metric.update({"h": X[part]}, y[part], {"h": (W, None)})
        torch.save(metric.compute(), f"{path}/tm{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_torchmetrics_metric_syncs_over_ddp_with_gloo(tmp_path):
    pytest.importorskip("torchmetrics")
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_tm_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    X, y = _data()
    W = torch.randn(4, 12, generator=torch.Generator().manual_seed(3))
    ref = StreamingNC(4)
    ref.update_means({"h": X}, y)
    ref.update_within({"h": X}, y, {"h": (W, None)})
    want = ref.result()["h"]
    for rank in (0, 1):
        got = torch.load(tmp_path / f"tm{rank}.pt", weights_only=False)["h"]
        assert max(abs(got[k] - v) for k, v in want.items()) <= 1e-10


# --------------------------------------------------------------------------- Lightning
def test_lightning_callback_logs_what_measure_gives_on_the_final_model(tmp_path):
    pytest.importorskip("lightning")
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from ncutils.integrations.lightning import NeuralCollapseCallback

    class TinyMLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.body(x))

        def training_step(self, batch, _idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    X, y = _data()
    train = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True)
    model = TinyMLP()
    cb = NeuralCollapseCallback(["body.1", "body.3"], num_classes=4, classifier="fc", every_n_epochs=1)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, logger=CSVLogger(tmp_path),
                         callbacks=[cb])
    trainer.fit(model, train)
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("nc/body.1/nc1")]
    assert [int(r["epoch"]) for r in logged] == [0, 1]
    final = nc.measure(model, DataLoader(TensorDataset(X, y), batch_size=32), ["body.1", "body.3"], num_classes=4,
                       classifier="fc")
    assert cb.last_epoch == 2 and set(final) == {"body.1", "body.3", "fc.input"}
    for level, vals in final.items():
        for k, v in vals.items():
            assert float(logged[-1][f"nc/{level}/{k}"]) == pytest.approx(v, rel=1e-6, abs=1e-7), (level, k)
            assert cb.last[level][k] == pytest.approx(v, rel=1e-12, abs=1e-14)
    assert float(logged[0]["nc/fc.input/nc1"]) != float(logged[-1]["nc/fc.input/nc1"])  # the model changed
    with pytest.raises(ValueError, match=r"^parameter every_n_epochs must be an integer in \[1, inf\), got 0$"):
        NeuralCollapseCallback(["body.1"], num_classes=4, every_n_epochs=0)
