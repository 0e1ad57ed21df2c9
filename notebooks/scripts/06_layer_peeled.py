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
#
# **What rate to expect (derived here; the paper states no rate).** For linear logistic regression the direction
# converges like $O(1/\log t)$ (Soudry et al. 2018), which would give slope $-1$ of $\log(\text{metric})$
# against $\log\log t$. The ULPM is different, because of two invariants of its gradient dynamics:
#
# * **the classifier mean $\bar w=\frac1K\sum_k w_k$ never moves** — adding a vector to every $w_k$ leaves all logit
#   differences, hence the CE, unchanged, so the gradient rows of $W$ sum to zero (exactly, also for GD);
# * **$W^\top W-H^\top H$ is conserved by gradient flow** (with $G=\partial L/\partial(HW^\top)$,
#   $\dot W=-G^\top H$, $\dot H=-GW$ give the same derivative for both Grams; GD adds $O(\eta^2)$ per step).
#
# The loss behaves like $(K-1)e^{-u}$ with $u=\gamma R$ the smallest margin, $R=\frac12\|\theta\|^2$, $\gamma$ the
# normalized margin; $\dot R=-\langle\theta,\nabla L\rangle$ and 2-homogeneity give $\dot u\approx2(K-1)\gamma\,u\,e^{-u}$,
# so $u\approx\log t$: $\frac12\|\theta\|^2$ grows like $\log t$ with slope $(1+1/u)/\gamma\to\sqrt n(K-1)$ — the
# *norm* $\|\theta\|$ grows like $\sqrt{\log t}$. Every max-margin point has $\bar w=0$, and the map
# $(W,H)\mapsto\bar w$ is (up to $\sqrt K$) an orthogonal projection, so the distance of $\theta/\|\theta\|$ to the
# max-margin set (best rotation) is at least $\sqrt K\|\bar w(0)\|/\|\theta(t)\|\propto(\log t)^{-1/2}$ — and the
# feature content outside the collapse span is held the same way by the conserved Gram difference. Predictions:
# slope $-1/2$ for the max-margin distance and for NC3 (linear in $\bar w/\|W\|$); the centred feature-side
# quantities do not see $\bar w$, and are only bounded by the distance: at least as fast as slope $-1/2$ for the
# cosines (linear) and $-1$ for NC1 (quadratic).

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
slope_tol: float = 0.1  # absolute tolerance of the slopes of log(metric) vs log(log t) (ours: see the derivation)
growth_tol: float = 0.03  # relative tolerance of the slope of |theta|^2/2 vs log t (ours: see the derivation)
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
late = steps / 20  # the late window of the rate fits: the last 1.3 decades of steps
slopes = {f"{lev}:{m}": study.loglog_slope(gd, m, lev, t_min=late) for lev, m in (
    ("model", "maxmargin_distance"), ("H", "nc3_etf"), ("H", "nc1"), ("H", "nc2_equinorm"), ("H", "nc2_equiangle"),
    ("H", "nc2_equinorm_weights"), ("H", "nc2_equiangle_weights"), ("H", "nc2_maxangle_weights"))}
print(f"slope of log(metric) vs log(log t), steps >= {late:g} (mean over seeds [min, max]):")
for key, v in slopes.items():
    print(f"  {key:28s} {v.mean():+.2f}  [{v.min():+.2f}, {v.max():+.2f}]")
growth, growth_pred = study.norm_growth_slope(gd, late)
print(f"slope of |theta|^2/2 vs log t: {growth.mean():.3f} (predicted (1+1/u)sqrt(n)(K-1) = {growth_pred:.3f}, "
      f"asymptotic {opt.value:.3f})")
dist, floor = study.metric_table(gd, "maxmargin_distance"), study.w_mean_floor(gd)
print(f"distance of theta/|theta| to the max-margin set at step {steps}: {dist.iloc[-1].mean():.4f} "
      f"(cosine {1 - dist.iloc[-1].mean() ** 2 / 2:.5f}); floor sqrt(K)|w_mean|/|theta| {floor.iloc[-1].mean():.4f}; "
      f"at step {early}: {dist.loc[early].mean():.4f}")

# %% [markdown]
# ## 2. The max-margin problem solved directly
#
# SciPy's SLSQP (exact gradients and constraint Jacobians) solves the non-convex minimum-norm separation
# problem from several random starts (the table below reports each start's value and SciPy's `success` flag, which
# is False for start 0 at the paper settings although its value matches the others).

# %%
sol = nc.ulpm.min_norm_separation(K, n, d, starts=maxmargin_starts, seed=seed)
print(sol.table.to_string(index=False, float_format="%.3g"))
print(f"best value {sol.value:.8f} vs sqrt(n)(K-1) = {opt.value:.8f}")

# %% [markdown]
# ## 3. Contrast: a little weight decay
#
# The same model with $\lambda_W=\lambda_H=$ `wd_lambda` has a finite minimizer, the regularized simplex ETF
# of Zhu et al. (2021) with closed-form norms (`nc.theory.ufm_ce_optimum`), and GD converges to it (the figure's
# bottom row; its rate is not fitted here) — against the logarithmic crawl without regularization. With $\lambda_W=\lambda_H$ the
# regularized ETF is balanced ($\|w_k\|^2=n\|\mu_k\|^2$), so its normalized margin is already the max-margin value.

# %%
wd = nc.gradient_descent(nc.UFM(K=K, n=n, d=d, lambda_W=wd_lambda, lambda_H=wd_lambda, loss="ce"), lr=lr,
                         steps=wd_steps, runs=seeds, seed=seed, init_std=init_std, geometric=True,
                         num_records=num_records, check_every=1000, device=run.device, dtype=run.dtype)
wd_opt = nc.theory.ufm_ce_optimum(K, n, wd_lambda, wd_lambda)
fig = study.ulpm_figure(gd, wd, opt.normalized_margin, wd_label=f"weight decay {wd_lambda:g}",
                        title="Unconstrained layer-peeled model: GD without (top) and with (bottom) weight decay")
nc.plot.save(fig, "jlzds22_fig2_ulpm", run.figures_dir);

# %% [markdown]
# Top row, no regularization, against $\log\log t$ (fits over the late steps, $t \ge 10^5$, checks named
# in the summary):
#
# * **Direction.** The distance of $\theta/\|\theta\|$ to the max-margin set falls from 0.236 (step 107) to 0.094
#   (cosine 0.9956) at $2\cdot10^6$ steps, with slope $-0.52$ (*rate: slope of log maxmargin_distance*, predicted
#   $-1/2$), and stays above the floor $\sqrt K\|\bar w\|/\|\theta\|$ (0.019 at the end) at every record of every
#   seed (*floor*). NC3 falls with slope $-0.50$ (*rate: slope of log nc3_etf*). The $O(1/\log t)$ rate of linear
#   models (slope $-1$) is **not observed** for these quantities; the $(\log t)^{-1/2}$ rate derived above is.
# * **Invariants.** $\|\bar w\|$ is unchanged to round-off over $2\cdot10^6$ steps, and $\|W^\top W-H^\top H\|_F$
#   changes by $8\cdot10^{-5}$ (relative) after step 107 (*invariant* checks; GD's $O(\eta^2)$ drift happens
#   while the gradients are large).
# * **Norm.** $\frac12\|\theta\|^2$ grows linearly in $\log t$ with slope 10.23 against the predicted
#   $(1+1/u)\sqrt n(K-1)=10.15$ (*growth*); the asymptotic slope $\sqrt n(K-1)=9.49$ is not reached at these $t$.
# * **Features.** The centred feature-side quantities, blind to $\bar w$, fall much faster than the distance bounds
#   them: NC1 slope $-4.18$ (bound $-1$), equiangle $-3.13$ (bound $-1/2$; *at least as fast* checks); the
#   equinorm of the means has slope $-2.59$ (observation, seeds $-3.66$ to $-2.06$).
# * **Classifier** (Ji et al.'s Fig. 2, observations): the equinorm of $\|w_k\|$ falls with slope $-0.54$ (seeds
#   $-0.98$ to $-0.23$), the equiangle of the $w_k$ with $-1.23$ ($-2.29$ to $-0.70$) and the max-angle with $-1.06$
#   ($-2.26$ to $-0.66$): slower than the feature side and spread over seeds. Only the equinorm is near the
#   $(\log t)^{-1/2}$ rate that $\bar w$ (which enters these metrics linearly) allows; a common classifier-side rate
#   is not observed.
#
# Bottom row, weight decay, against the GD step: the same quantities reach the regularized ETF (below 1e-6, the
# *CE* checks) within $2\cdot10^5$ steps; $\frac12\|\theta\|^2$ stays bounded (the figure).
# SLSQP confirms the limit independently: its minimizers are simplex ETFs with value $\sqrt n(K-1)$, at distance 0 from the closed form
# after the best rotation (*SLSQP* checks).

# %% [markdown]
# ## Summary: GD and SLSQP vs theory

# %%
# NBVAL_CHECK_OUTPUT
checks = study.ulpm_checks(gd, opt, sol, margin_tol=margin_tol)
checks += study.ulpm_rate_checks(gd, t_min=late, slope_tol=slope_tol, growth_tol=growth_tol)
checks += study.ufm_checks(wd, wd_opt, run=study.best_run(wd))
checks.append(nc.report.check("weight decay: normalized margin (best seed)", wd.final("normalized_margin").max(),
                              opt.normalized_margin, 1e-4))
summary = run.summary(checks, theory=opt.as_dict(), weight_decay_theory=wd_opt.as_dict(),
                      margin=margin.to_dict(), slopes={k: v.tolist() for k, v in slopes.items()},
                      norm_growth={"slope": growth.tolist(), "predicted": growth_pred},
                      maxmargin_distance={"final": dist.iloc[-1].tolist(), "floor": floor.iloc[-1].tolist()},
                      maxmargin=sol.table.to_dict("records"),
                      wall_time_s={"ulpm": gd.wall_time_s, "weight_decay": wd.wall_time_s}, notes=run.notes)
run.write_json("summary.json", summary)
print(nc.report.checks_table(checks).to_string())
print("all checks passed:", summary["passed"])

# %%
print(run.environment())
