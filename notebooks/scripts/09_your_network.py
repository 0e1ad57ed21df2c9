# ---
# jupyter:
#   jupytext:
#     formats: ipynb,scripts//py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 — Neural collapse of your own network: a plain PyTorch loop and a Lightning callback
#
# **Papyan, Han & Donoho, PNAS 2020 (NC1–NC4, the nearest-class-centre rule); Galanti, György & Hutter,
# ICLR 2022 (CDNV).**
#
# Nothing here comes from ncutils but the measurement: a small CNN written below (two conv blocks, a hidden
# layer, a linear head `fc`) is trained with SGD on MNIST digits by an ordinary PyTorch loop, and after every
# `measure_every` epochs `ncutils.measure` hooks the named modules and returns, per layer, NC1, NC2, NC3 and
# NC4 (for the level the classifier reads), the nearest-class-centre (NCC) accuracy on the training and test
# digits, and the CDNV — two streaming passes over the training set, no d×d matrix. The same training is then
# run with PyTorch Lightning and `ncutils.integrations.lightning.NeuralCollapseCallback`, which logs the same
# numbers with the trainer's logger (here a CSV file).
#
# The outputs committed with this notebook come from the `paper` profile (`profiles/09_your_network.yaml`): a
# CPU run on real MNIST digits (`data_root`, or `$NCUTILS_DATA_ROOT`).

# %% tags=["parameters"]
per_class: int = 300  # training digits per class (a balanced random subset of MNIST's 60 000)
test_per_class: int = 100  # test digits per class (from MNIST's 10 000)
width: int = 16  # channels of the first conv block (the second has twice as many)
hidden: int = 64  # width of the hidden layer that the classifier fc reads (the penultimate features)
epochs: int = 5  # training epochs
batch_size: int = 64  # mini-batch size
lr: float = 0.05  # SGD learning rate
momentum: float = 0.9  # SGD momentum
weight_decay: float = 0.0005  # SGD weight decay (every parameter)
measure_every: int = 1  # measure after every k-th epoch (and after the last)
flatten: bool = True  # also measure the flattened conv feature maps (C x H x W)
min_train_accuracy: float = 0.95  # the final training accuracy the run must reach (a check)
data_root: str = ""  # folder holding MNIST/raw; empty: $NCUTILS_DATA_ROOT, else data/
fake_data: bool = False  # write and read tiny synthetic files in MNIST's real format (CI)
seed: int = 0  # seed of the subsets, the initialization and the batch order
device: str = "cpu"  # auto | cpu | cuda | cuda:N
results_dir: str = ""  # folder of summary.json and the Lightning CSV log; empty: outputs/09_your_network/<profile>
figures_dir: str = "figures"  # folder of the PDF/PNG figures, relative to the repository root
profile: str = "paper"  # name of the parameter profile (set by the runner)

# %%
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import ncutils as nc
from ncutils.studies import your_network as study

run = nc.setup("09_your_network", globals())
for hint in (".*does not have many workers.*", ".*srun.*", ".*LeafSpec.*"):  # Lightning's hints for other setups
    warnings.filterwarnings("ignore", hint)
Xtr, ytr, Xte, yte = study.digits(run)
print(f"profile {profile}: MNIST{' (synthetic files)' if fake_data else ''}, {len(ytr)} training and {len(yte)} "
      f"test digits, device {run.device}")


# %% [markdown]
# ## Your network and your training loop
#
# Any `nn.Module` will do; `ncutils.measure` only needs the names of the modules to tap, as
# `model.named_modules()` spells them. Conv feature maps are measured globally average-pooled (`block1`,
# `block2`) and, with `flatten`, flattened (`block1_flat`, `block2_flat`); `hidden` outputs the penultimate
# features, which `fc` reads (`classifier="fc", classifier_reads="hidden"` adds NC3, NC4 and the test NC4).

# %%
class SmallCNN(nn.Module):
    def __init__(self, width: int, hidden: int, num_classes: int = 10) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                    nn.MaxPool2d(2))  # 14 x 14
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width),
                                    nn.ReLU(), nn.MaxPool2d(2))  # 7 x 7
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 49, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.block2(self.block1(x))))


LAYERS = ["block1", "block2", "hidden"]
train_set, test_set = TensorDataset(Xtr, ytr), TensorDataset(Xte, yte)
measure_loader = DataLoader(train_set, batch_size=1000)  # both passes see the same digits
test_loader = DataLoader(test_set, batch_size=1000)


def train_loader() -> DataLoader:
    """Shuffled batches, a seeded permutation per epoch (``sampler.set_epoch``, which Lightning calls too: the
    Lightning run below sees the same batches; one replica, no process group needed)."""
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=seed)
    return DataLoader(train_set, batch_size=batch_size, sampler=sampler)


def measure_nc(model: nn.Module) -> dict:
    return nc.measure(model, measure_loader, LAYERS, num_classes=10, classifier="fc", classifier_reads="hidden",
                      test_loader=test_loader, flatten=flatten, device=run.device)


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        right = sum((model(x.to(run.device)).argmax(1) == y.to(run.device)).sum().item() for x, y in loader)
    return right / len(loader.dataset)


torch.manual_seed(seed)
model = SmallCNN(width, hidden).to(run.device)
initial_state = {k: v.clone() for k, v in model.state_dict().items()}
opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
records, loader, t0, t_measure = [], train_loader(), time.perf_counter(), 0.0
for epoch in range(1, epochs + 1):
    model.train()
    loader.sampler.set_epoch(epoch - 1)  # Lightning counts epochs from 0
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x.to(run.device)), y.to(run.device)).backward()
        opt.step()
    if epoch % measure_every == 0 or epoch == 1 or epoch == epochs:
        t = time.perf_counter()
        records.append({"epoch": epoch, "result": measure_nc(model)})  # {layer: {metric: value}}
        t_measure += time.perf_counter() - t
        for split, data in (("train", measure_loader), ("test", test_loader)):
            records.append({"epoch": epoch, "layer": "model", "metric": f"{split}_accuracy",
                            "value": accuracy(model, data)})
loop_time = time.perf_counter() - t0
history = study.history_frame(records)
print(f"plain loop: {epochs} epochs in {loop_time:.1f} s, of which measurements {t_measure:.1f} s")
print(study.metric_table(history, ["nc1", "cdnv", "ncc_accuracy", "ncc_accuracy_test", "nc2_etf", "nc3_etf",
                                   "nc4", "nc4_test"]).to_string(float_format="%.4g", na_rep="-"))
fig = study.figure(history, title=f"A small CNN on MNIST, plain PyTorch loop (profile {profile})")
nc.plot.save(fig, f"your_network_small_cnn_mnist_{profile}", run.figures_dir);

# %% [markdown]
# Read the table per row: NC1 and CDNV measure how far the class clusters of a layer spread relative to the
# distances between their means; NCC accuracy is the accuracy of the nearest-class-centre rule on that layer's
# features; NC4 is the fraction of digits on which the classifier `fc` and that rule disagree. The figure shows
# the same per epoch.

# %% [markdown]
# ## The same training with PyTorch Lightning
#
# The network is wrapped in a `LightningModule` (module names get the prefix `net.`), started from the same
# initial weights with the same batch order, and the callback measures the same layers every `measure_every`
# epochs and logs `nc/<layer>/<metric>` with the trainer's logger. The callback's last logged values are then
# compared with the plain loop's measurement after its last epoch: the two runs train the same network from the
# same weights on the same batches, so they end with the same final model.

# %%
import logging
import shutil

import lightning.pytorch as pl
import pandas as pd
from lightning.pytorch.loggers import CSVLogger

from ncutils.integrations.lightning import NeuralCollapseCallback

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


class LitNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN(width, hidden)
        self.net.load_state_dict(initial_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


callback = NeuralCollapseCallback([f"net.{name}" for name in LAYERS], num_classes=10, every_n_epochs=measure_every,
                                  classifier="net.fc", classifier_reads="net.hidden", loader=measure_loader,
                                  test_loader=test_loader, flatten=flatten)
shutil.rmtree(run.results_dir / "lightning", ignore_errors=True)
logger = CSVLogger(run.results_dir, name="lightning", version=0)
trainer = pl.Trainer(max_epochs=epochs, accelerator=run.device.type, devices=1, logger=logger, callbacks=[callback],
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                     log_every_n_steps=1)
lit = LitNet()
t0 = time.perf_counter()
trainer.fit(lit, train_loader())
lightning_time = time.perf_counter() - t0
log = pd.read_csv(f"{logger.log_dir}/metrics.csv")
logged = log.dropna(subset=[c for c in log.columns if c.startswith("nc/")]).iloc[-1].to_dict()
weights_diff = max((a.double() - b.double()).abs().max().item()
                   for a, b in zip(lit.net.state_dict().values(), model.state_dict().values(), strict=True))
loop_final = records[-3]["result"]  # the plain loop's measurement after its last epoch
lightning_err, lightning_values = study.logged_vs_measured(logged, loop_final, strip="net.")
print(f"Lightning: {epochs} epochs in {lightning_time:.1f} s; {sum(c.startswith('nc/') for c in log.columns)} "
      f"metrics logged at {int(log.dropna(subset=['nc/net.hidden/nc1']).shape[0])} epochs")
print(f"final weights, Lightning vs plain loop: largest difference {weights_diff:.2g}")
print(f"last logged values vs the plain loop's last measurement: largest difference {lightning_err:.2g} "
      f"(relative to max(1, |value|); {lightning_values} values; the logger stores float32)")

# %% [markdown]
# ## Summary

# %%
# NBVAL_CHECK_OUTPUT
checks = study.checks(history, "hidden", min_train_accuracy, weights_diff, lightning_err, lightning_values)
m = history.query("layer == 'model'").pivot(index="epoch", columns="metric", values="value")
summary = run.summary(checks, final_layers=study.metric_table(history, ["nc1", "cdnv", "ncc_accuracy"]).to_dict(
    "index"), final_model=m.iloc[-1].to_dict(), loop_time_s=loop_time, measure_time_s=t_measure,
    lightning_time_s=lightning_time, device=str(run.device), notes=run.notes)
run.write_json("summary.json", summary)
print(f"final train accuracy {m.train_accuracy.iloc[-1]:.3f}, test accuracy {m.test_accuracy.iloc[-1]:.3f}")
print(nc.report.checks_table(checks).to_string())
print("all checks passed:", summary["passed"])

# %%
print(run.environment())
