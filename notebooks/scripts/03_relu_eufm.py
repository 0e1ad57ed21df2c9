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
# # 03 — The extended UFM with a ReLU layer
#
# **Tirer & Bruna, *Extended unconstrained features model for exploring deep neural collapse*, ICML 2022, §4 (Figs. 4 and 9).**
#
# Model: $f=\frac{1}{2Kn}\|W_2\,\sigma(W_1H_1)-Y\|_F^2+\frac{\lambda_{W_2}}{2}\|W_2\|_F^2+\frac{\lambda_{W_1}}{2}\|W_1\|_F^2+\frac{\lambda_{H_1}}{2}\|H_1\|_F^2$,
# $\sigma=$ ReLU, levels $H_1$ and $H_2=\sigma(W_1H_1)$, no bias, MSE.
#
# Claim (paper): the deepest features $H_2$ collapse to a **non-negative orthogonal frame** — the structured
# collapse appears only at the last level, as in real networks. The closed forms of the collapsed branch are those
# of the linear model (derived in `nc.theory.eufm_optimum`): $f^*=\min_s(s-1)^2/2+\tfrac{3K}{2}q\,s^{2/3}$, non-zero iff
# $Kq\le2^{-4/3}$, where the minimizing $s$ jumps from $1/2$ to $0$. The Gram of $H_1$'s means is *not* determined
# at the optimum (equal norms, arbitrary non-positive off-diagonals): NC1 → 0 at both levels, NC2($H_1$) does not.

# %% tags=["parameters"]
K: int = 4  # number of classes, at least 2
d: int = 20  # width of H1 and H2; at least K
n: int = 50  # samples per class
lambda_W1: float = 0.005  # weight decay of the hidden layer W1, positive
lambda_W2: float = 0.005  # weight decay of the classifier W2, positive
lambda_H1: float = 0.005  # weight decay of the free features H1, positive
lr: float = 0.1  # plain GD step size (paper slides: 0.1)
steps: int = 200000  # GD steps
record_every: int = 1000  # record objective and metrics every k steps
seeds: int = 10  # independent initializations, run as one batched tensor program
init_std: float = 0.5  # std of the N(0, std^2) initialization of H1, W1, W2
studies: bool = True  # run the initialization study and the threshold sweep (sections 3 and 4)
init_scales: list = [0.01, 0.1, 0.2236, 0.5]  # initialization stds compared in the stall study
study_steps: int = 50000  # GD steps of the initialization study
sweep_points: int = 15  # points of the sweep across the existence threshold
sweep_ratio_max: float = 1.4  # largest K q / 2^(-4/3) of the sweep
sweep_steps: int = 50000  # GD steps at every point of the sweep
sweep_seeds: int = 4  # seeds per sweep point (the best one is compared with the global optimum)
sweep_reach_max: float = 0.8  # sweep points at or below this ratio must reach the global f* (checked)
metastable_ratio: float = 1.1  # K q / 2^(-4/3) where GD starts next to the metastable collapsed branch (< 1.19)
polish: bool = True  # Newton-polish the seeds at f* (class-mean problem) to certify the limit of their geometry
seed: int = 0  # random seed of the initializations
device: str = "auto"  # auto | cpu | cuda | cuda:N
dtype: str = "float64"  # float64 (theory checks) or float32
tag: str = "fig4"  # name of this setting in figure file names
results_dir: str = ""  # folder of summary.json; empty: outputs/03_relu_eufm/<profile>
figures_dir: str = "figures"  # folder of the PDF/PNG figures, relative to the repository root
profile: str = "paper"  # name of the parameter profile (set by the runner)

# %%
import numpy as np

import ncutils as nc
from ncutils.studies import relu_eufm as study

run = nc.setup("03_relu_eufm", globals())
opt = nc.theory.eufm_optimum(K, n, lambda_W1, lambda_W2, lambda_H1)
gd_args = dict(lr=lr, steps=steps, runs=seeds, record_every=record_every, init_std=init_std, seed=seed,
               device=run.device, dtype=run.dtype)
print(f"q = {opt.q:.6g}, K q = {K * opt.q:.4f} (collapse needs K q <= 2^(-4/3) = {nc.theory.eufm_threshold():.4f})")
print(f"theory: f* = {opt.objective:.6f}, s = {opt.s:.6f}, ||mu_1||^2 = {opt.mean_norm_sq[0]:.4f}, "
      f"||mu_2||^2 = {opt.mean_norm_sq[1]:.4f}")

# %% [markdown]
# ## 1. Linear vs ReLU, side by side
#
# Both models from the same `seeds` initializations (each a batched program). Thin lines are seeds, colours are
# levels. NC3 is $W_2$ vs $M_2$ for the classifier and the row-space alignment `nc3_gram` of $W_1$ with $H_1$'s means.

# %%
relu = nc.extended_ufm(K, n, d, "relu", lambda_W1, lambda_W2, lambda_H1)
linear = nc.extended_ufm(K, n, d, "linear", lambda_W1, lambda_W2, lambda_H1)
gd_relu = nc.gradient_descent(relu, desc="ReLU EUFM", **gd_args)
gd_lin = nc.gradient_descent(linear, desc="linear EUFM", **gd_args)
results = {"linear": gd_lin, "ReLU": gd_relu}
fig = nc.plot.level_panels(results, theory={k: opt.objective for k in results},
                           title=f"Extended UFM, linear vs ReLU (K={K}, d={d}, n={n})")
nc.plot.save(fig, f"tb22_{tag}_linear_vs_relu", run.figures_dir);

# %% [markdown]
# ### The depth contrast: NC1($H_2$) / NC1($H_1$) along GD, linear vs ReLU
#
# Tirer & Bruna contrast the two models by how much more collapsed the deeper level is, and state for the linear
# model that NC1($H_2$) ≈ NC1($H_1$) along GD. The ratio is measured below for every seed of both runs above (the
# same initializations); steps where either NC1 is at round-off ($<10^{-20}$) are left out. NC1 is unchanged when
# $W_1$ is a scaled orthogonal map, so the linear ratio is 1 exactly for such a $W_1$; from the random
# initializations used here it is not. The product $W_2W_1$ is the end-to-end linear classifier of $H_1$; Thm
# 4.1's level-1 statement for the linear model is $W_2W_1\propto M_1^\top$, measured as its NC3 against $H_1$'s
# means (for ReLU the theory says nothing about it).

# %%
ratios = study.depth_ratios(results)
fig = study.depth_ratios_figure(ratios, title=f"Depth contrast (K={K}, d={d}, n={n}): NC1(H2)/NC1(H1)")
nc.plot.save(fig, f"tb22_{tag}_depth_contrast", run.figures_dir)
depth = study.depth_ratio_table(ratios)
print(depth.to_string(float_format="{:.3g}".format))
align = {label: study.product_alignment(r) for label, r in results.items()}
for label, a in align.items():
    print(f"{label}: NC3 of W2 W1 vs M1 per seed: " + " ".join(f"{x:.1e}" for x in a))
depth_checks = study.depth_contrast_checks(ratios)

# %% [markdown]
# At the paper settings (10 seeds): at step 1000 the ReLU ratio is 0.09–0.31 (median 0.21) and the linear one
# 1.6–2.2 (median 1.9) — the ReLU model's deeper level collapses first, for every seed (checked). By step 10 000
# the linear ratio is 0.0076–0.0079 for every seed: NC1($H_2$) ≈ NC1($H_1$) is **not observed** for the linear model
# here (checked at step 15 000, the last step where every linear seed is above round-off: all below 0.1). The linear
# $W_2W_1$ is aligned with $M_1^\top$ to round-off (5e-14 to 7e-14, every seed; a count check in the summary); the ReLU
# $W_2W_1$ is not (3e-5 to 8e-3).
#
# With ReLU, the seeds that reach $f^*$ (8/10 at the paper settings) have NC1 below $10^{-8}$ at both levels; after GD
# their $H_2$ is $7\cdot10^{-5}$ to $5\cdot10^{-3}$ from the orthogonal frame (3/8 below $10^{-3}$) and below
# $10^{-8}$ after polishing (below). $H_1$'s NC2 to the orthogonal frame levels off at a seed-dependent value
# instead of going to 0.
#
# ## 2. The Gram of $H_1$'s means is not fixed
#
# Pairwise cosines of the class means at the end of GD, one dot per seed and pair: at $H_2$ all are within 0.005 of
# 0 (a non-negative orthogonal frame, up to GD's residual); at $H_1$ they range from −0.61 to +0.003 (non-positive up
# to that residual) and differ from seed to seed (paper settings; the table below).

# %%
cos = study.mean_gram_cosines(gd_relu)
fig = study.gram_cosines_figure(cos, title="ReLU EUFM: cos(mu_k, mu_k') per seed")
nc.plot.save(fig, f"tb22_{tag}_relu_gram", run.figures_dir)
print(cos.groupby("level").cosine.agg(["min", "max"]).to_string(float_format="{:.3f}".format))

# %% [markdown]
# ### Certifying the limit: the seeds at $f^*$, polished
#
# At the paper settings most seeds reach $f^*$ to a relative error ≤ 5e-6 while their $H_2$ is still
# $7\cdot10^{-5}$ to $5\cdot10^{-3}$ from the orthogonal frame (the seed table in the summary). Is the frame the limit GD is approaching, or do these seeds sit at other minimizers
# with the same $f^*$? Each seed at $f^*$ is polished by a damped Newton iteration on the class-mean problem
# (every sample at its class mean, which GD's NC1 at round-off allows; `nc.solve.newton_polish`): ReLU
# pre-activations that GD drives to 0 are held on their kink and certified by the sign of their multipliers, and the
# Hessian on that face counts the flat directions.

# %%
if polish:
    polished = study.polished_geometry(gd_relu, opt, means=True)
    print(polished[["run", "grad_norm_before", "grad_norm_after", "nc2_H2_before", "nc2_H2_after",
                    "nc3_H2_before", "nc3_H2_after", "kinks", "kinks_certified", "flat", "gap", "iterations"]]
          .to_string(index=False, float_format="{:.1e}".format))

# %% [markdown]
# At the paper settings all 8 seeds at $f^*$ polish to a critical point with $f=f^*$ (relative 1e-10), their kinks
# certified, and NC2/NC3 at $H_2$ below $10^{-8}$ (both checked; $4.9\cdot10^{-16}$ to $3.5\cdot10^{-10}$ from
# $6.7\cdot10^{-5}$ to $4.8\cdot10^{-3}$ after GD): the orthogonal frame is the limit GD approaches, slowly. The
# Hessian on the face has 87–91 flat directions, separated from the rest by a gap of $3.5\cdot10^{-6}$ to
# $5\cdot10^{-3}$: $f$ is flat to second order along them, which is our reading of why GD's geometry converges so
# slowly.

# %% [markdown]
# ## 3. Initialization scale: stalls and partial solutions
#
# From a tiny initialization GD stays at $H=0$ ($f=1/2$), a strict local minimum for three factors (the data term
# is cubic there, the regularizer quadratic). At the larger scales some seeds stop above $f^*$ (the table below
# counts the seeds at $f^*$ per scale and gives the worst relative error); our reading, not measured here, is that
# they stop at *partial* solutions where some pre-activations are dead (their ReLU gradient is 0). All scales × seeds
# run as one batched program.

# %%
if studies:
    init_run, scales = study.init_scale_study(relu, init_scales, seeds=seeds, lr=lr, steps=study_steps,
                                                    seed=seed, device=run.device, dtype=run.dtype,
                                                    record_every=record_every)
    scales["rel_err"] = init_run.final("objective") / opt.objective - 1
    scales["reached"] = scales.rel_err.abs() <= 1e-3
    fig = study.init_scales_figure(init_run, scales, opt.objective,
                              title="ReLU EUFM: final objective vs initialization scale")
    nc.plot.save(fig, f"tb22_{tag}_relu_init", run.figures_dir)
    print(scales.groupby("init_std").agg(at_f_star=("reached", "sum"), worst_rel_err=("rel_err", "max"))
          .to_string(float_format="{:.1e}".format))

# %% [markdown]
# ## 4. Across the existence threshold: a discontinuous jump
#
# All three λ equal; the sweep moves $Kq$ across $2^{-4/3}$ (x-axis: $Kq/2^{-4/3}$); every point runs
# `sweep_seeds` seeds, all points and seeds one batched program, and the best seed of each point is shown (single
# ReLU runs can stop at partial solutions; the table counts the seeds that reached the global value). The global optimum jumps from $s=1/2$ to $0$ at the threshold; past it the collapsed branch
# survives as a *local* minimum (dotted) up to $Kq/2^{-4/3}\approx1.19$. Where GD places the transition, and
# whether it ever lands on that branch, is read off the table below (the `branch` column: where the best seed
# ended); a second experiment starts GD next to the branch to show that it is a local minimum.

# %%
if studies:
    ratios = np.linspace(0.2, sweep_ratio_max, sweep_points)
    sweep = study.dufm_threshold_sweep(K, n, d, ratios, L=2, activation="relu", lr=lr, steps=sweep_steps,
                                                init_std=init_std, seeds=sweep_seeds, seed=seed, device=run.device,
                                                dtype=run.dtype)
    fig = study.dufm_threshold_sweep_figure(sweep, level_label="H2", title="ReLU EUFM across K q = 2^(-4/3)")
    nc.plot.save(fig, f"tb22_{tag}_relu_threshold", run.figures_dir)
    sweep["branch"] = study.sweep_branches(sweep)
    print(sweep[["ratio", "objective_gd", "objective_theory", "objective_metastable", "seeds_at_theory",
                 "branch"]].to_string(float_format="{:.5f}".format))
    meta, gd_meta = study.metastable_start(K, n, d, metastable_ratio, lr=lr, steps=sweep_steps, seeds=sweep_seeds,
                                           noise=1e-2, seed=seed, device=run.device, dtype=run.dtype)
    print(f"start next to the collapsed branch at ratio {metastable_ratio:g} (1% noise): branch f = "
          f"{meta.objective:.6f} (global f = 0.5); GD ends at f = "
          + " ".join(f"{x:.6f}" for x in gd_meta.final("objective")))

# %% [markdown]
# At the paper settings GD's best seed reaches the global optimum at every ratio up to 0.8 (checked) but not at
# 0.886 and 0.971, just below the threshold, where it ends above $f^*$ (0.4887 vs 0.4549) and at $f=1/2$ (vs
# 0.4891): from these initializations GD makes the jump to $H=0$ *before* the theory's threshold. Past the
# threshold it always ends at the global $f=1/2$ and never on the metastable branch (checked) — yet the branch is
# a local minimum: started next to it (1% noise), GD returns to it (checked in the summary).

# %% [markdown]
# ## Summary: GD vs theory
#
# Checks on the best seed of each model (the seed table shows how many seeds got to $f^*$ and where the others
# stopped); NC2/NC3 are checked at $H_2$ for ReLU (where the theory predicts the frame) and at both levels for the
# linear model; the `n/m` rows count how many of the seeds at $f^*$ show each property (the seed table lists every
# seed's NC1, NC2, NC3 per level), and each row shows its measured error next to the tolerance. The sweep is checked where the theory is unambiguous for GD: its best seed is never below the
# global $f^*$, it reaches the collapsed optimum at the smallest ratio and $f=1/2$ at the largest; in its interior,
# every point up to `sweep_reach_max` reaches $f^*$, every point past the threshold ends at $f=1/2$, no point lands
# on the metastable branch, and GD started next to that branch returns to it.

# %%
# NBVAL_CHECK_OUTPUT
checks = study.deep_ufm_checks(gd_relu, opt, label="ReLU")
checks += study.deep_ufm_checks(gd_lin, opt, label="linear")
seeds_relu, seeds_lin = study.seed_table(gd_relu, opt), study.seed_table(gd_lin, opt)
checks += study.seed_geometry_checks(gd_relu, seeds_relu, label="ReLU")
checks += study.seed_geometry_checks(gd_lin, seeds_lin, label="linear")
checks += depth_checks
if polish:
    checks += study.polish_checks(polished, "H2", label="ReLU")
extra = {}
if studies:
    checks += study.dufm_sweep_checks(sweep)
    checks += study.sweep_interior_checks(sweep, sweep_reach_max)
    checks += study.metastable_checks(meta, gd_meta, metastable_ratio)
    extra = dict(init_study=scales.to_dict("records"), sweep=sweep.to_dict("records"),
                 metastable_start=dict(ratio=metastable_ratio, objective_branch=meta.objective,
                                       objective_gd=gd_meta.final("objective").tolist()))
summary = run.summary(checks, theory=opt.as_dict(), seeds=seeds_relu.to_dict("records"),
                      depth_ratios=depth.reset_index().to_dict("records"),
                      product_alignment={k: v.tolist() for k, v in align.items()},
                      polished=polished.to_dict("records") if polish else None,
                      seeds_linear=seeds_lin.to_dict("records"),
                      gram_cosines=cos.to_dict("records"), **extra,
                      wall_time_s={"relu": gd_relu.wall_time_s, "linear": gd_lin.wall_time_s},
                      notes=run.notes)
run.write_json("summary.json", summary)
print(nc.report.checks_table(checks).to_string())
print("ReLU seeds:\n" + nc.report.seeds_table(seeds_relu).to_string())
print("linear seeds:\n" + nc.report.seeds_table(seeds_lin).to_string())
print("all checks passed:", summary["passed"])

# %%
print(run.environment())
