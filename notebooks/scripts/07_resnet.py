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
# **Tirer & Bruna, ICML 2022, Figs. 5 / 10; Papyan, Han & Donoho, PNAS 2020 (protocol, NC4); Ji et al., ICLR 2022,
# Fig. 1 (no weight decay).**
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
# The outputs committed with this notebook come from its defaults, the `cpu` profile of `profiles/07_resnet.yaml`:
# Fig. 5's arm (i) — MSE, weight decay, no classifier bias — scaled to real MNIST digits on one CPU core (its first
# printed line names the profile, the last cell the hardware). `make figures` also runs two more CPU profiles at the
# same scale, whose notebooks go to `outputs/07_resnet/<profile>/` and whose figures to `figures/`: `cpu_ce`, Fig. 5's
# arm (ii) (cross-entropy with a bias), and `cpu_nowd`, Ji et al.'s question (cross-entropy, no weight decay at all:
# does collapse still go on after zero training error, and how fast?). The prose below is about the `cpu` run; the
# README quotes the other two. The `paper`, `mnist_ce`, `mnist_nowd` and `cifar10_*` profiles (the papers' scale)
# are GPU runs and have not been run.

# %% tags=["parameters"]
dataset: str = "mnist"  # mnist or cifar10
loss: str = "mse"  # mse (one-hot targets, 1/2 squared error) or ce (cross-entropy)
fc_bias: bool = False  # classifier bias (Tirer and Bruna: none with MSE, one with CE); never decayed
lr: float = 0.05  # SGD learning rate
schedule: str = "thirds"  # step40 (divide by 10 every 40 epochs), thirds (at 1/3 and 2/3), constant
epochs: int = 36  # training epochs (Tirer and Bruna do not state them: open)
batch_size: int = 64  # mini-batch size
momentum: float = 0.9  # SGD momentum
wd_features: float = 0.0005  # weight decay of every backbone parameter
wd_classifier: float = 0.0005  # weight decay of the classifier weight W (the UFM's lambda_W)
per_class: int = 200  # training images per class (Papyan: 5000 for MNIST), a balanced random subset
test_per_class: int = 100  # test images per class; 0 uses the whole test split
width_multiplier: float = 0.1875  # channel multiplier (1.0 is ResNet18's 64-128-256-512; 0.1875 for CPU runs)
layers: list = ["stem", "layer1", "layer2", "layer3", "layer4"]  # measured layers (layer4 feeds the classifier)
flatten: bool = True  # also measure the flattened (C x H x W) feature maps
measure_every: int = 6  # measure after epoch 1, every k epochs and after the last
checkpoint_every: int = 6  # write a resumable checkpoint every k epochs
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
print(final.filter(["nc1", "nc1_trace", "nc2_etf", "nc2_orthogonal", "nc3_etf", "nc3_orthogonal"]).to_string(
    float_format="%.4g"))  # the last measured epoch
start = study.terminal_phase(result)
print(f"zero training error from epoch {start} on" if start else "training error never reached 0")
print("terminal phase: slope of log(metric) vs log(epoch) at layer4")
print(study.collapse_rates(result).to_string(float_format="%.4g"))
fig = study.training_figure(result.history, frame="orthogonal" if loss == "mse" and not fc_bias else "etf",
                              title=f"ResNet18 on {dataset.upper()}, {loss.upper()}"
                              f"{' + bias' if fc_bias else ', no bias'}, weight decay {wd_features:g} / "
                              f"{wd_classifier:g} (profile {profile})")
nc.plot.save(fig, study.figure_name(cfg, profile), run.figures_dir);

# %% [markdown]
# What this CPU-scale run shows (profile `cpu`: width ×0.1875, 200 digits per class, 36 epochs; Fig. 5's MSE arm
# without classifier bias), read from the tables above and the summary below:
#
# - Training reaches zero error at the measurement after epoch 12 and keeps it to the end (checked at the last epoch),
#   so epochs 12–36 are the terminal phase; test accuracy ends at 0.957.
# - The penultimate features (`layer4`, pooled) collapse: NC1 falls from 4.264 after epoch 1 to 0.02213 after epoch
#   36 (checked: last/first = 0.00519 < 1). At the last epoch pooled NC1 falls with depth at every stage (stem 384.6,
#   `layer1` 24.24, `layer2` 5.141, `layer3` 2.377, `layer4` 0.02213); only the comparison with `layer4` is checked.
# - Collapse is gradual across depth but not monotone in time at every layer: pooled NC1 rises at the stem
#   (114.9 → 384.6), stays level at `layer1` (24.51 → 24.24) and falls at `layer2`, `layer3` and `layer4`; the
#   flattened maps stay level at the stem (1.469 → 1.477) and fall from `layer1` on.
# - In the terminal phase the penultimate NC1 still falls, slowly (0.03194 → 0.02213 from epoch 12 to 36, a slope of
#   −0.3291 in log NC1 against log epoch), while NC2 and NC3 barely move (slopes −0.06307 to −0.0061).
# - The frame Tirer & Bruna's UFM predicts for MSE without bias is **not observed**: NC2 to the orthogonal frame at
#   `layer4` is 1.001 and NC3 to it 0.9253. That is below the value of means dominated by their global mean (what the
#   stem to `layer3` show, 1.165–1.168) but far from 0: the global mean is still large. The centred means are nearer a
#   simplex ETF (NC2 0.2988, NC3 0.5809) but not at one either. NC4 on the test set is
#   0.012: the classifier and the nearest-class-mean rule disagree on 1.2% of the test digits.
#
# Whether NC2/NC3 form at full width, on 5 000 digits per class and over 200 epochs is the question of the `paper`
# profiles (GPU); this run does not answer it.

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
print(f"final train accuracy {m.train_accuracy.iloc[-1]:.3f}, test accuracy {m.test_accuracy.iloc[-1]:.3f}, "
      f"NC4 (test: classifier vs nearest class mean) {m.nc4_test.iloc[-1]:.3g}")
print(nc.report.checks_table(checks).to_string())
print("all checks passed:", summary["passed"])

# %%
print(run.environment())
