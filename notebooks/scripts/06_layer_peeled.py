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
# # 06 — The unconstrained layer-peeled model: collapse without regularization
#
# **Ji, Lu, Zhang, Deng & Su, *An unconstrained layer-peeled perspective on neural collapse*, ICLR 2022
# (Theorems 3.1–3.2, Fig. 2).**
#
# Cross-entropy over free features and classifier, **no weight decay, no bias**:
# $L(W,H)=\frac{1}{Kn}\sum_{k,i}\mathrm{CE}(Wh_{k,i},k)$ (the mean; the paper's sum only rescales time).
# The loss has no minimizer — it tends to 0 as the norms grow — but gradient flow converges *in direction* to
# KKT points of the minimum-norm separation problem
# $\min\frac12(\|W\|_F^2+\|H\|_F^2)$ s.t. $(w_k-w_j)^\top h_{k,i}\ge1$ for all $k,i$ and $j\neq k$,
# whose global minimizers are neural collapse (simplex ETF, $W\propto\tilde M^\top$), and every other
# critical point is a strict saddle. Closed form (derived, `nc.theory.ulpm_optimum`): optimal value
# $\sqrt n(K-1)$, $\|w_k\|^2=\sqrt n(K-1)/K$, $\|\mu_k\|^2=(K-1)/(K\sqrt n)$, so the normalized margin
# $\min(w_k-w_j)^\top h_{k,i}\,/\,\frac12(\|W\|^2+\|H\|^2)$ tends to $1/(\sqrt n(K-1))$.

# %% tags=["parameters"]
K: int = 4  # number of classes, at least 2
n: int = 10  # samples per class
d: int = 10  # feature dimension (the ETF needs d at least K-1)
lr: float = 0.5  # plain GD step size on the mean cross-entropy (the setting of our check run)
steps: int = 2000000  # GD steps (the approach is O(1/log t): millions are needed)
num_records: int = 60  # recorded steps, geometrically spaced between 1 and steps
init_std: float = 0.1  # std of the N(0, std^2) initialization of W and H
seeds: int = 5  # independent initializations, run as one batched program
seed: int = 0  # random seed of the first initialization and of the SLSQP starts
wd_lambda: float = 0.0005  # weight decay lambda_W and lambda_H of the contrast run
wd_steps: int = 200000  # GD steps of the weight-decay run
maxmargin_starts: int = 5  # random starts of the SLSQP max-margin solver
margin_tol: float = 0.03  # relative tolerance of GD's normalized margin vs its limit (O(1/log t) approach)
device: str = "auto"  # auto | cpu | cuda | cuda:N
dtype: str = "float64"  # float64 (theory checks) or float32
results_dir: str = ""  # folder of summary.json; empty: outputs/06_layer_peeled/<profile>
figures_dir: str = "figures"  # folder of the PDF/PNG figures, relative to the repository root
profile: str = "paper"  # name of the parameter profile (set by the runner)

# %%
import ncutils as nc
from ncutils.studies import layer_peeled as study

run = nc.setup("06_layer_peeled", globals())
opt = nc.theory.ulpm_optimum(K, n)
print(f"sqrt(n)(K-1) = {opt.value:.6f};  normalized-margin limit 1/(sqrt(n)(K-1)) = {opt.normalized_margin:.6f}")

# %% [markdown]
# ## 1. Millions of GD steps on the unregularized cross-entropy
#
# All seeds run as one batched tensor program; the step is fused (a handful of kernels), and the history is
# recorded on a geometric grid of steps, so a run of millions of steps costs little more than its arithmetic.

# %%
ulpm = nc.UFM(K=K, n=n, d=d, lambda_W=0.0, lambda_H=0.0, loss="ce")
gd = nc.gradient_descent(ulpm, lr=lr, steps=steps, runs=seeds, seed=seed, init_std=init_std, geometric=True,
                         num_records=num_records, check_every=1000, device=run.device, dtype=run.dtype)
margin = gd.history[(gd.history.metric == "normalized_margin")].groupby("step", observed=True).value.mean()
early = margin.index[margin.index >= 100][0]
print(f"GD wall time {gd.wall_time_s:.0f} s for {steps} steps x {seeds} seeds ({run.device})")
print(f"mean normalized margin: {margin[early]:.4f} at step {early}, {margin.iloc[-1]:.4f} at step {steps}"
      f" (limit {opt.normalized_margin:.4f})")
slopes = {m: study.loglog_slope(gd, m).mean() for m in ("nc1", "nc2_equiangle", "nc3_etf")}
print("slope of log(metric) vs log(log t), steps >= 1e3:", {k: round(float(v), 2) for k, v in slopes.items()})

# %% [markdown]
# ## 2. The max-margin problem solved directly
#
# SciPy's SLSQP (exact gradients and constraint Jacobians) solves the non-convex minimum-norm separation
# problem from several random starts. The landscape is benign, so every start should reach the global value.

# %%
sol = nc.ulpm.min_norm_separation(K, n, d, starts=maxmargin_starts, seed=seed)
print(sol.table.to_string(index=False, float_format="%.3g"))
print(f"best value {sol.value:.8f} vs sqrt(n)(K-1) = {opt.value:.8f}")

# %% [markdown]
# ## 3. Contrast: a little weight decay
#
# The same model with $\lambda_W=\lambda_H=$ `wd_lambda` has a finite minimizer, the regularized simplex ETF
# of Zhu et al. (2021) with closed-form norms (`nc.theory.ufm_ce_optimum`), and GD converges to it at a
# linear rate — against the logarithmic crawl without regularization. With $\lambda_W=\lambda_H$ the
# regularized ETF is balanced ($\|w_k\|^2=n\|\mu_k\|^2$), so its normalized margin is already the max-margin value.

# %%
wd = nc.gradient_descent(nc.UFM(K=K, n=n, d=d, lambda_W=wd_lambda, lambda_H=wd_lambda, loss="ce"), lr=lr,
                         steps=wd_steps, runs=seeds, seed=seed, init_std=init_std, geometric=True,
                         num_records=num_records, check_every=1000, device=run.device, dtype=run.dtype)
wd_opt = nc.theory.ufm_ce_optimum(K, n, wd_lambda, wd_lambda)
fig = study.ulpm_figure({"no regularization": gd, f"weight decay {wd_lambda:g}": wd}, opt.normalized_margin,
                          title="Unconstrained layer-peeled model: GD against log(log t)")
nc.plot.save(fig, "jlzds22_fig2_ulpm", run.figures_dir);

# %% [markdown]
# Without regularization the normalized margin creeps toward $1/(\sqrt n(K-1))$ and NC1, the Papyan
# NC2 variants and NC3 fall roughly linearly in $\log\log t$ — the $O(1/\log t)$ rate of Ji et al. — while
# $\|W\|_F$ grows like $\log t$. With weight decay the same quantities reach the ETF to rounding level in a
# fraction of the steps, and $\|W\|$ stays finite. SLSQP confirms the limit independently: its minimizers
# are simplex ETFs with value $\sqrt n(K-1)$.

# %% [markdown]
# ## Summary: GD and SLSQP vs theory

# %%
# NBVAL_CHECK_OUTPUT
checks = study.ulpm_checks(gd, opt, sol, margin_tol=margin_tol)
checks += study.ufm_checks(wd, wd_opt, run=study.best_run(wd))
checks.append(nc.report.check("weight decay: normalized margin (best seed)", wd.final("normalized_margin").max(),
                              opt.normalized_margin, 1e-4))
summary = run.summary(checks, theory=opt.as_dict(), weight_decay_theory=wd_opt.as_dict(),
                      margin=margin.to_dict(), slopes=slopes,
                      maxmargin=sol.table.to_dict("records"),
                      wall_time_s={"ulpm": gd.wall_time_s, "weight_decay": wd.wall_time_s}, notes=run.notes)
run.write_json("summary.json", summary)
print(nc.report.checks_table(checks).to_string())
print("all checks passed:", summary["passed"])

# %%
print(run.environment())
