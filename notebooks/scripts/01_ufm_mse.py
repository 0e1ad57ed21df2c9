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
# # 01 — The unconstrained features model with MSE loss
#
# **Tirer & Bruna, *Extended unconstrained features model for exploring deep neural collapse*, ICML 2022, §3 (Theorem 3.1, Fig. 1).**
#
# Claim: in the bias-free UFM with MSE loss and weight decay,
# $f(W,H)=\frac{1}{2Kn}\|WH-Y\|_F^2+\frac{\lambda_W}{2}\|W\|_F^2+\frac{\lambda_H}{2}\|H\|_F^2$,
# every global minimizer is collapsed (NC1) onto an **orthogonal frame** ($W M \propto M^\top M \propto I_K$) when
# $c = K\sqrt{n\lambda_H\lambda_W} < 1$, and is $(0,0)$ when $c \ge 1$. With an unregularized bias the
# means form a **simplex ETF** instead, as they do for the cross-entropy UFM.
#
# This notebook runs plain gradient descent (GD) and prints, next to each GD value, the closed-form
# prediction from `ncutils.theory` and the relative error.

# %% tags=["parameters"]
K: int = 4  # number of classes, at least 2
d: int = 20  # feature dimension; Theorem 3.1 assumes d at least K
n: int = 50  # samples per class
lambda_W: float = 0.005  # weight decay of the classifier W, non-negative
lambda_H: float = 0.005  # weight decay of the features H, non-negative
lr: float = 0.1  # plain GD step size (paper slides: 0.1)
steps: int = 40000  # GD steps for each model
record_every: int = 200  # record objective and metrics every k steps
init_std: float = 0.1  # std of the N(0, std^2) initialization of W and H
seed: int = 0  # random seed of the initialization
device: str = "auto"  # auto | cpu | cuda | cuda:N
dtype: str = "float64"  # float64 (theory checks) or float32
sweep_points: int = 15  # number of c values in the threshold sweep
sweep_c_max: float = 1.5  # largest threshold value c in the sweep
sweep_steps: int = 40000  # GD steps at every point of the sweep
results_dir: str = ""  # folder of summary.json; empty: outputs/01_ufm_mse/<profile>
figures_dir: str = "figures"  # folder of the PDF/PNG figures, relative to the repository root
profile: str = "paper"  # name of the parameter profile (set by the runner)

# %%
import numpy as np

import ncutils as nc
from ncutils.studies import ufm_mse as study

run = nc.setup("01_ufm_mse", globals())
gd_args = dict(lr=lr, steps=steps, record_every=record_every, init_std=init_std, seed=seed,
               device=run.device, dtype=run.dtype)
print(f"c = K sqrt(n lambda_H lambda_W) = {nc.theory.ufm_threshold(K, n, lambda_W, lambda_H):.4f}")

# %% [markdown]
# ## 1. Bias-free MSE: collapse to an orthogonal frame (Theorem 3.1)
#
# Theorem 3.1 predicts NC1, $M^\top M\propto I$ (NC2 to the **orthogonal** frame → 0) and $W\propto M^\top$
# (NC3, orthogonal version → 0). Centring an orthogonal frame gives a simplex ETF, so the ETF-NC2 of the
# centred means goes to 0 as well (drawn in the figure, not checked); what tells the geometries apart is that $W$ is aligned with the
# *uncentred* means: the ETF-NC3 stays at $\sqrt{2-2\sqrt{(K-1)/K}}$ (0.5176 for $K=4$). The closed forms (derived in `nc.theory`, see its docstrings):
# $f^*=c-c^2/2$, $\|\mu_k\|^2=\rho=(1-c)\sqrt{\lambda_W/(n\lambda_H)}$, $WM=(1-c)I$.
#
# *Derivation.* At a collapsed point with output means $s\,I$ the data term is $(s-1)^2/2$; with class-mean norm
# $a$ and classifier gain $s/a$ the regularizer is $\tfrac K2(n\lambda_Ha^2+\lambda_W s^2/a^2)\ge K\sqrt{n\lambda_H
# \lambda_W}\,s=c\,s$ (AM–GM, equality iff $n\lambda_Ha^2=\lambda_Ws^2/a^2$, i.e. $a^2=s\sqrt{\lambda_W/(n\lambda_H)}$).
# Minimizing $(s-1)^2/2+cs$ gives $s=1-c$ for $c<1$ (else $s=0$), hence $f^*=c-c^2/2$ and $\rho=a^2$ above.

# %%
ufm = nc.UFM(K=K, n=n, d=d, lambda_W=lambda_W, lambda_H=lambda_H, loss="mse", bias=False)
gd = nc.gradient_descent(ufm, **gd_args)
opt = nc.theory.ufm_mse_optimum(K, n, lambda_W, lambda_H)
fig = nc.plot.nc_panels({"MSE, no bias": gd}, theory={"MSE, no bias": opt.objective},
                        title="Bias-free MSE UFM: GD vs Theorem 3.1")
nc.plot.save(fig, "tb22_thm31_ufm_mse", run.figures_dir);

# %% [markdown]
# The objective meets the dashed $f^*$ line, NC1 and the orthogonal-frame NC2/NC3 fall below $10^{-8}$
# (summary table), and the ETF-NC3 levels off at the frame distance: the bias-free MSE geometry is an
# orthogonal frame with $W\propto M^\top$, not a simplex ETF (only the *centred* means form one).

# %% [markdown]
# ## 2. With an unregularized bias: a simplex ETF; and the cross-entropy contrast
#
# With a bias, $b^*=1/K$, the global mean vanishes and $M^\top M=\rho(I-\mathbf{1}\mathbf{1}^\top/K)$:
# the means form a simplex ETF and $f^*=\frac{K-1}{K}(c-c^2/2)$. The L2-regularized cross-entropy UFM
# (Zhu et al. 2021) has simplex-ETF minimizers with or without bias; its $f^*$ has a closed form too
# (`nc.theory.ufm_ce_optimum`).

# %%
models = {
    "MSE, no bias": (gd, opt),
    "MSE + bias": (nc.gradient_descent(nc.UFM(K=K, n=n, d=d, lambda_W=lambda_W, lambda_H=lambda_H, bias=True),
                                       **gd_args),
                   nc.theory.ufm_mse_optimum(K, n, lambda_W, lambda_H, bias=True)),
    "CE, no bias": (nc.gradient_descent(nc.UFM(K=K, n=n, d=d, lambda_W=lambda_W, lambda_H=lambda_H, loss="ce"),
                                        **gd_args),
                    nc.theory.ufm_ce_optimum(K, n, lambda_W, lambda_H)),
}
fig = nc.plot.nc_panels({k: r for k, (r, _) in models.items()}, theory={k: o.objective for k, (_, o) in models.items()},
                        title="MSE without / with bias vs cross-entropy")
nc.plot.save(fig, "tb22_ufm_bias_vs_ce", run.figures_dir);

# %% [markdown]
# Adding the bias moves the MSE minimizer from the orthogonal frame to the simplex ETF (NC2 to the
# ETF → 0, to the orthogonal frame → 0.5176), exactly the geometry cross-entropy reaches without any bias.

# %% [markdown]
# ## 3. Across the threshold $c=1$
#
# With $\lambda_W=\lambda_H=\lambda$, sweeping $\lambda$ moves $c=K\sqrt{n}\,\lambda$ across 1: the mean norm
# $\rho=(1-c)/\sqrt n$ falls linearly to 0 and stays there, and $f$ saturates at $1/2$ (the theory; GD's $f$ is
# checked at the worst point, its ρ is drawn in the figure). All points run as one
# batched GD program.

# %%
sweep = study.ufm_threshold_sweep(K, n, d, np.linspace(0.1, sweep_c_max, sweep_points), lr=lr,
                                           steps=sweep_steps, init_std=init_std, seed=seed,
                                           device=run.device, dtype=run.dtype)
fig = study.threshold_sweep_figure(sweep, title="Bias-free MSE UFM across the threshold c = 1")
nc.plot.save(fig, "tb22_thm31_threshold_sweep", run.figures_dir);

# %% [markdown]
# GD lands on the theory curve on both sides of the threshold (its $f$ checked at the worst point); in the figure
# the norm of the features goes to 0 past $c=1$ (`summary.json`: ρ = 4e-4 at $c=1$, where the curvature of the
# problem vanishes and GD slows down, and ≤ 1e-15 beyond).

# %% [markdown]
# ## Summary: GD vs theory
#
# Relative errors for the closed-form quantities, absolute errors for quantities the theorem sends to 0.

# %%
# NBVAL_CHECK_OUTPUT
checks = [c for r, o in models.values() for c in study.ufm_checks(r, o)]
checks.append(study.sweep_check(sweep))
summary = run.summary(checks, sweep=sweep.to_dict("records"),
                      wall_time_s={k: r.wall_time_s for k, (r, _) in models.items()}, notes=run.notes)
run.write_json("summary.json", summary)
print(nc.report.checks_table(checks).to_string())
print("all checks passed:", summary["passed"])

# %%
print(run.environment())
