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
# # 07 — ResNet18 on MNIST and CIFAR-10: neural collapse layer by layer
#
# **Tirer & Bruna, ICML 2022, Figs. 5 / 10; Papyan, Han & Donoho, PNAS 2020 (protocol, NC4).**
#
# The theory notebooks (01–06) predict what trained networks should show: within-class variability of the
# last features vanishes (NC1), their class means form an orthogonal frame (MSE without bias) or a simplex
# ETF (CE, or MSE with bias) (NC2), the classifier aligns with them (NC3) and acts as a nearest-class-mean
# rule (NC4), and collapse builds up *gradually across depth*. Here ResNet18 (torchvision's, with the CIFAR
# stem: 3×3 conv, stride 1, no max-pool, for both datasets; MNIST zero-padded to 32×32) is trained with SGD,
# and every metric is measured over the **whole training set** for the stem and the four stages
# (global-average-pooled; `flatten` adds the flattened maps) with two streaming passes on the device
# (`ncutils.stream.StreamingNC`: no d×d matrix). NC4 uses the test set.
#
# The outputs committed with this notebook come from its defaults, the `cpu` profile of `profiles/07_resnet.yaml`
# (real MNIST digits on 2 CPU cores): its first printed line names the profile, the last cell the hardware. The
# `paper` profiles (Tirer & Bruna's settings) are GPU runs and have not been run.

# %% tags=["parameters"]
dataset: str = "mnist"  # mnist or cifar10
loss: str = "mse"  # mse (one-hot targets, 1/2 squared error) or ce (cross-entropy)
fc_bias: bool = False  # classifier bias (Tirer and Bruna: none with MSE, one with CE); never decayed
lr: float = 0.05  # SGD learning rate
schedule: str = "thirds"  # step40 (divide by 10 every 40 epochs), thirds (at 1/3 and 2/3), constant
epochs: int = 40  # training epochs (Tirer and Bruna do not state them: open)
batch_size: int = 64  # mini-batch size
momentum: float = 0.9  # SGD momentum
wd_features: float = 0.0005  # weight decay of every backbone parameter
wd_classifier: float = 0.0005  # weight decay of the classifier weight W (the UFM's lambda_W)
per_class: int = 200  # training images per class (Papyan: 5000 for MNIST), a balanced random subset
test_per_class: int = 50  # test images per class; 0 uses the whole test split
width_multiplier: float = 0.125  # channel multiplier (1.0 is ResNet18's 64-128-256-512; 0.125 for CPU runs)
layers: list = ["stem", "layer1", "layer2", "layer3", "layer4"]  # measured layers (layer4 feeds the classifier)
flatten: bool = True  # also measure the flattened (C x H x W) feature maps
measure_every: int = 2  # measure after epoch 1, every k epochs and after the last
checkpoint_every: int = 5  # write a resumable checkpoint every k epochs
device: str = "cpu"  # auto | cpu | cuda | cuda:N
compile: bool = False  # torch.compile the training step (inductor; on CPU too)
data_root: str = ""  # folder holding MNIST/raw (or cifar-10-batches-py); empty: $NCUTILS_DATA_ROOT, else data/
fake_data: bool = False  # write and read tiny synthetic files in the dataset's real format (CI)
max_cpu_hours: float = 2.0  # refuse CPU runs estimated to take longer (use a GPU or a smaller profile)
seed: int = 0  # seed of the subset, the initialization and the batch order
results_dir: str = ""  # folder of summary.json and the checkpoint; empty: outputs/07_resnet/<profile>
figures_dir: str = "figures"  # folder of the PDF/PNG figures, relative to the repository root
profile: str = "cpu"  # name of the parameter profile (set by the runner)

# %%
import ncutils as nc
from ncutils.studies import resnet as study

run = nc.setup("07_resnet", globals())
cfg = nc.train.TrainConfig.from_params(run.params)  # the training half of the parameters
root = str(run.results_dir / "fake_data") if fake_data else run["data_root"]
data = study.resnet_data(dataset, root, per_class, test_per_class, seed, fake=fake_data)
print(f"profile {profile}: {dataset}{' (synthetic files)' if fake_data else ''}, {len(data[1])} training and "
      f"{len(data[3])} test images, {loss} loss, fc bias {fc_bias}, width x{width_multiplier}, device {run.device}")

# %% [markdown]
# ## Training with layer-wise measurements
#
# `train_resnet` checkpoints every `checkpoint_every` epochs (atomically) into `results_dir`, one file per
# configuration; re-running the notebook with the same parameters after an interruption resumes from it and ends
# with the same numbers as an uninterrupted run (a unit test kills a run to check this).

# %%
checkpoint = nc.train.checkpoint_file(run.results_dir, cfg, data)  # one file per configuration and data
result = nc.train.train_resnet(cfg, data, device=run.device, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                               compile=compile)
epoch_time = result.history.query("metric == 'epoch_time_s'").value
print(f"training {result.train_time_s:.0f} s ({epoch_time.mean():.2f} s per epoch), measurements "
      f"{result.measure_time_s:.0f} s; resumed from epoch {result.resumed_from}")
final = study.resnet_final(result)
print("NC1 per layer at the first and the last measured epoch:")
print(study.resnet_metric_table(result, "nc1").to_string(float_format="%.4g"))
print(final[["nc1_trace", "nc2_etf", "nc2_orthogonal"]].to_string(float_format="%.4g"))
fig = study.training_figure(result.history, frame="orthogonal" if loss == "mse" and not fc_bias else "etf",
                              title=f"ResNet18 on {dataset.upper()}, {loss.upper()}"
                              f"{' + bias' if fc_bias else ', no bias'} (profile {profile})")
# the paper-scale profiles reproduce TB22 Fig. 5 (MNIST) / Fig. 10 (CIFAR-10); any other run is an illustration
paper_fig = {"mnist": "tb22_fig5_", "cifar10": "tb22_fig10_"}[dataset] if width_multiplier == 1.0 else "illustration_"
nc.plot.save(fig, f"{paper_fig}resnet18_{dataset}_{loss}{'_bias' if fc_bias else ''}_{profile}", run.figures_dir);

# %% [markdown]
# What this CPU-scale run shows (width ×0.125, 200 digits per class, 40 epochs; final train accuracy 1.000,
# test accuracy 0.950), read from the tables above:
#
# - The penultimate features (`layer4`, pooled) collapse: NC1 falls from 1.65 after epoch 1 to 0.0235 after epoch
#   40 (checked: last/first = 0.014 < 1), and at the last epoch every earlier pooled layer has a larger NC1
#   (checked).
# - NC1 does **not** fall at every layer: it rises at the stem (84 → 581), stays level at `layer2` (20.7 → 22.0)
#   and at `stem_flat` (1.561 → 1.562), and falls at `layer1`, `layer3` and `layer4`. Depth orders it only from
#   `layer2` on. At this width the stem and `layer1` have 8 channels, fewer than K − 1 = 9, so their pooled
#   features cannot hold a simplex ETF or an orthogonal frame of 10 means at all.
# - The frame the MSE loss without bias selects is **not observed**: NC2 to the orthogonal frame at `layer4` is 1.04
#   (close to its value for features dominated by their global mean), NC2 to the simplex ETF of the centred means
#   is 0.40. NC3 is in the figure, not checked.
#
# Whether NC2/NC3 form deeper into the terminal phase at a larger width is a question for the `paper` profiles (GPU).

# %% [markdown]
# ## Summary

# %%
# NBVAL_CHECK_OUTPUT
checks = study.resnet_checks(result)
m = result.history.query("layer == 'model'").pivot(index="epoch", columns="metric", values="value").dropna()
summary = run.summary(checks, final_layers=final.to_dict("index"),
                      final_model=m.iloc[-1].to_dict(), train_time_s=result.train_time_s,
                      measure_time_s=result.measure_time_s, device=str(run.device), notes=run.notes)
run.write_json("summary.json", summary)
print(f"final train accuracy {m.train_accuracy.iloc[-1]:.3f}, test accuracy {m.test_accuracy.iloc[-1]:.3f}")
print(nc.report.checks_table(checks).to_string())
print("all checks passed:", summary["passed"])

# %%
print(run.environment())
