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
# # 05 — The perturbation model: neural collapse layer by layer
#
# **Tirer, Huang & Niles-Weed, *Perturbation analysis of neural collapse*, ICML 2023 (Theorem 3.1, Corollary 3.2,
# Theorem 4.1 with its Eq. 5, Theorem 4.2, Fig. 1).** Sections 1–3 reproduce these statements by exact computation;
# section 4 is an illustration, not a reproduction (the paper's Figs. 2–3 train networks on CIFAR-10; not done here).
#
# The model keeps the features close to given ones $H_0$ (a layer's input):
# $f(W,H;H_0)=\frac{1}{2Kn}\|WH-Y\|_F^2+\frac{\lambda_W}{2K}\|W\|_F^2+\frac{\lambda_H}{2Kn}\|H\|_F^2+\frac{\beta}{2Kn}\|H-H_0\|_F^2$.
# This is the paper's normalization: with $\beta=0$ it is Tirer & Bruna's UFM (notebook 01) with
# $\lambda'_W=\lambda_W/K$, $\lambda'_H=\lambda_H/(Kn)$, so $c=\sqrt{\lambda_H\lambda_W}$ (`nc.theory.perturbation_to_ufm`;
# a unit test checks the two objectives agree). Minimizing over $W$ gives the central path
# $W^*(H)=YH^\top(HH^\top+n\lambda_W I)^{-1}$ and $L(H)=f(W^*(H),H)$ without the β term.
#
# Every number below comes from an exact computation (an ODE integrator, a Newton-type solver, implicit
# differentiation) and is printed next to the theorem's prediction.

# %% tags=["parameters"]
K: int = 4  # number of classes, at least 2
n: int = 10  # samples per class
d: int = 10  # feature dimension; Theorem 4.2 assumes d greater than K
lambda_W: float = 1.4142135623730951  # classifier weight decay (paper normalization), sqrt(2) as in Fig. 1
lambda_H: float = 0.2  # feature weight decay (paper normalization) of the flow and the beta sweep
beta: float = 100.0  # proximity weight of the Jacobian study (Fig. 1: 100), positive
jacobian_lambda_H: list = [0.05, 0.2, 0.5]  # lambda_H values of the Jacobian study (Fig. 1)
jacobian_lambda_W: list = [0.5, 1.0, 2.0, 4.0]  # lambda_W values of the Jacobian study, lambda_H fixed
first_order_beta_min: float = 10.0  # smallest beta of the Eq. 5 vs exact Jacobian comparison
first_order_beta_max: float = 10000.0  # largest beta of that comparison
first_order_points: int = 7  # number of beta values (geometric grid), at least 3
h0_std: float = 1.0  # std of the random non-collapsed H0 of the flow and the beta sweep
h0_file: str = ""  # optional .npy of shape (K n, d), class-major rows, used as H0 instead of the random draw
flow_t_max: float = 50.0  # end time of the gradient flow
flow_records: int = 100  # recorded times (geometric grid) of the flow
beta_min: float = 0.001  # smallest beta of the Corollary 3.2 sweep
beta_max: float = 10000.0  # largest beta of the sweep
beta_points: int = 15  # number of beta values (geometric grid)
chain_data: str = "mnist"  # mnist (torchvision files under data_root) or fake (synthetic files, for CI)
data_root: str = ""  # folder holding MNIST/raw (or cifar-10-batches-py); empty: $NCUTILS_DATA_ROOT, else data/
chain_per_class: int = 50  # MNIST digits per class of the layer-wise chain
chain_width: int = 64  # width of the two hidden layers of the MLP that produces H0
chain_epochs: int = 10  # SGD epochs of the MLP
chain_layers: int = 5  # number of perturbation layers in the chain
chain_betas: list = [1.0, 10.0, 100.0]  # beta values of the chain
seed: int = 0  # random seed (H0, rotation of the collapsed minimizer, MLP)
results_dir: str = ""  # folder of summary.json; empty: outputs/05_perturbation/<profile>
figures_dir: str = "figures"  # folder of the PDF/PNG figures, relative to the repository root
profile: str = "paper"  # name of the parameter profile (set by the runner)

# %%
import numpy as np

import ncutils as nc
from ncutils.studies import perturbation as study

run = nc.setup("05_perturbation", globals())
model = nc.perturbation.PerturbationModel(K=K, n=n, d=d, lambda_W=lambda_W, lambda_H=lambda_H, beta=beta)
H0 = (model.check_H0(np.load(nc.paths.resolve_path(h0_file))) if h0_file
      else study.random_features(K, n, d, h0_std, seed))
print("Tirer & Bruna lambdas (lambda_W', lambda_H') =", model.ufm_lambdas(), " c = sqrt(lambda_H lambda_W) =",
      round(float(np.sqrt(lambda_H * lambda_W)), 6))

# %% [markdown]
# ## 1. Theorem 3.1: the gradient flow on the central path
#
# Along $\frac{dH}{dt}=-Kn\nabla L(H)=-W^{*\top}(W^*H-Y)-\lambda_H H$ (with $W^*=W^*(H)$), for
# $\lambda_W>0$ and $\Sigma_W(H_0)\neq0$: $\mathrm{tr}\Sigma_W/\mathrm{tr}\Sigma_B$ strictly decreases,
# $e^{2\lambda_H t}\mathrm{tr}\Sigma_W$ decreases and $e^{2\lambda_H t}\mathrm{tr}\Sigma_B$ strictly increases.
# The flow is integrated by SciPy's DOP853 (explicit Runge–Kutta of order 8, adaptive steps, rtol 1e-11,
# atol 1e-13) from a random non-collapsed $H_0$ and sampled on a geometric time grid; the three claims are
# asserted at every recorded time. `flow_t_max` is chosen (by us) to stop the flow while $\mathrm{tr}\Sigma_W$ is
# still far above the integrator's error floor (beyond it, rounding decides the sign of the differences); the
# floor is not printed here.

# %%
flow = model.flow(H0, flow_t_max, num=flow_records)
mono = nc.perturbation.monotonicity_checks(flow.table)
print(f"DOP853 (rtol {flow.rtol:g}, atol {flow.atol:g}): {flow.nfev} evaluations of dH/dt, i.e. about "
      f"{flow.nfev // 12} adaptive steps of 12 stages to t = {flow_t_max:g}; recorded times: {len(flow.times)}")
print(mono[["claim", "steps", "violations", "holds"]].to_string(index=False))
assert mono.holds.all(), "Theorem 3.1 violated along the flow"
fig = study.flow_figure(flow.table, title="Theorem 3.1 along the gradient flow of L(H)")
nc.plot.save(fig, "thn23_thm31_flow", run.figures_dir);

# %% [markdown]
# All three monotonicity claims hold at every recorded time. The flow ends at a collapsed minimizer:
# $L(H_T)$ reaches $f^*=c-c^2/2$ of Tirer & Bruna's UFM (checked in the summary), the exact counterpart of
# the mapping of normalizations above.

# %% [markdown]
# ## 2. Corollary 3.2: the minimizer is more collapsed than $H_0$
#
# For each β the minimizer $H_{1/\beta}$ of $f(\cdot;H_0)$ is computed with SciPy's `trust-ncg` (exact
# gradients and Hessian–vector products from `torch.func`), started at $H_0$ and run until the solver reports
# convergence (the table's `converged` column). Large β keeps $H$ near $H_0$; small β lets it collapse.

# %%
betas = np.geomspace(beta_min, beta_max, beta_points)
sweep = study.beta_sweep(model, H0, betas)
print(sweep[["beta", "nc1_trace", "nc1_trace_H0", "converged"]].to_string(index=False, float_format="%.4g"))
fig = study.beta_sweep_figure(sweep, title="Cor. 3.2: nc1_trace of the minimizer vs β")
nc.plot.save(fig, "thn23_cor32_beta_sweep", run.figures_dir);

# %% [markdown]
# nc1_trace of the minimizer is below that of $H_0$ for every β, and approaches it from below as
# $\beta\to\infty$ ($H_{1/\beta}\to H_0$): one layer of the model always reduces within-class variability
# relative to between-class variability, by more the more freedom (1/β) the layer has.

# %% [markdown]
# ## 3. Theorem 4.1: the Jacobian $\partial H^*/\partial H_0$ and its first-order formula (Eq. 5)
#
# Let $H^*$ minimize $f(\cdot;H_0)$ and $A=Kn\nabla^2L(H^*)$, the Hessian of the central-path objective (in the
# paper's column-stacked $\mathrm{vec}(H)$; by Theorem 4.1 the Schur complement
# $\lambda_H I+I_{nK}\otimes W^{*\top}W^*-Z^*$ of $f$'s Hessian in $(W,H)$). Theorem 4.1: to first order in
# $\delta H_0$, $\mathrm{vec}(\delta H)=F\,\mathrm{vec}(\delta H_0)$ with $F=(I+A/\beta)^{-1}$; for
# $\beta\gg\max(1,\lambda_H)$, Eq. 5 replaces it by $F_1=I-A/\beta$, with an error $O(\beta^{-2})$. Here
# $F$ comes from implicit differentiation with `torch.func` (automatic second derivatives) and $A$ from the
# Kronecker-product formula (`PerturbationModel.reduced_hessian`), two independent routes. Since
# $F-F_1=(A/\beta)^2(I+A/\beta)^{-1}$, the relative error $\|F-F_1\|_2/\|F\|_2$ should fall like $\beta^{-2}$:
# the check fits the slope of its logarithm against $\log(1/\beta)$ and compares it with 2, within
# $\max\|A\|_2/\beta$ over the grid (the relative size of the next term $A^3/\beta^3$, which bends the slope at
# the smallest β). Two $H_0$: a collapsed minimizer (the setting of Theorem 4.2, where $H^*=H_0$) and the random
# $H_0$ of sections 1–2.

# %%
first_order = study.first_order_study(
    model, {"collapsed": model.collapsed_minimizer(seed)[1], "random": H0},
    np.geomspace(first_order_beta_min, first_order_beta_max, first_order_points))
print(first_order[["H0", "beta", "rel_err", "scaled_err", "norm_A", "norm_A2", "resolvent_err"]].to_string(
    index=False, float_format="%.4g"))
first_order_checks = study.first_order_checks(first_order)
for c in first_order_checks:
    print(f"{c['name']}: {c['gd']:.4g} (theory {c['theory']:g}, tolerance {c['tol']:.3g})")
fig = study.first_order_figure(first_order, title="Theorem 4.1: Eq. 5 vs the exact Jacobian")
nc.plot.save(fig, "thn23_thm41_first_order", run.figures_dir);

# %% [markdown]
# For both $H_0$ the implicit-differentiation $F$ equals $(I+A/\beta)^{-1}$ to rounding (largest entry deviation
# about 2e-15, checked below 1e-10), so the closed-form $A$ is the Hessian that autograd differentiates. The error
# of Eq. 5 falls as predicted: the fitted slopes are 1.996 (collapsed $H_0$) and 1.998 (random $H_0$), within
# 0.0043 and 0.0020 of 2 (tolerances 0.038 and 0.027), and $\beta^2$ times the error tends to $\|A^2\|_2/\|F\|_2$
# (0.1414 and 0.0695 at β = 1e4), the leading term of $(A/\beta)^2(I+A/\beta)^{-1}$. At β = 100 Eq. 5 is off by
# 1.4e-5 (collapsed) in spectral norm — the size of the gap between the exact $\sigma_{\min}(F_{kk})$ and
# Theorem 4.2's value in the next section.

# %% [markdown]
# ## 4. Theorem 4.2 / Fig. 1: the Jacobian near collapse, λ_H and λ_W
#
# At a collapsed minimizer $H_0$ (the orthogonal frame of notebook 01, randomly rotated) the minimizer is
# $H_0$ itself. Theorem 4.2 analyses the blocks of Eq. 5's $F_1$: $\sigma_{\max}(F_{kk})=1$,
# $\sigma_{\min}(F_{kk})=1-\sqrt{\lambda_H/\lambda_W}/\beta$; $F_{kk'}$ of rank 1 with
# $\sigma_{\max}=2\lambda_H(1-\sqrt{\lambda_H\lambda_W})/\beta$. These values are checked on $F_1$ (where they
# should hold to rounding) and on the exact $F$ (where they hold up to the $O(\beta^{-2})$ of section 3).
# The paper's reading (§4): increasing $\lambda_H$ decreases the singular values of the intra-class blocks
# $F_{kk}$ (almost all of them, their Fig. 1) — perturbations of $H_0$ are damped more, the minimizer is closer
# to collapse — "contrary to increasing $\lambda_W$"; and $\lambda_W$ lowers the inter-class "crosstalk"
# $\sigma_{\max}(F_{kk'})$. Stated precisely for the formulas above, at fixed β: $\sigma_{\min}(F_{kk})$
# decreases in $\lambda_H$ and increases in $\lambda_W$, and $\sigma_{\max}(F_{kk'})$ decreases in
# $\lambda_W$. The λ_H sweep is Fig. 1 (λ_W = √2); the λ_W sweep fixes λ_H = `lambda_H`, same β. The direction
# checks compare consecutive values of the varied λ; the table of moves counts, index by index, the sorted
# singular values of $F_{kk}$ that decrease, stay (within 1e-9) or increase.

# %%
jac, spectra = study.jacobian_study(K, n, d, lambda_W, jacobian_lambda_H, beta, seed)
jac_W, spectra_W = study.jacobian_lambda_W_study(K, n, d, jacobian_lambda_W, lambda_H, beta, seed)
cols = ["diag_sigma_min", "first_order_diag_sigma_min", "pred_diag_sigma_min", "diag_rank", "offdiag_rank",
        "offdiag_sigma_max", "pred_offdiag_sigma_max"]
for name, table, sv in (("lambda_H", jac, spectra), ("lambda_W", jac_W, spectra_W)):
    print(f"--- {name} varied")
    print(table[[name, *cols]].to_string(index=False, float_format="%.6f"))
    print("singular values of F_kk (value x multiplicity):")
    for r in table.itertuples():
        print(f"  {name} = {getattr(r, name):g}: {r.diag_multiplicities}")
    print("moves of the sorted singular values of F_kk between consecutive values:")
    print(study.spectrum_moves(sv).to_string(index=False))
fig = study.jacobian_spectra_figure(jac, spectra, title=f"Theorem 4.2: spectrum of F at collapse (beta = {beta:g})",
                                    lambda_W_table=jac_W, lambda_W_spectra=spectra_W)
nc.plot.save(fig, "thn23_fig1_jacobian", run.figures_dir);

# %% [markdown]
# The extreme singular values sit on the predicted lines: Theorem 4.2's values hold on $F_1$ to rounding (checked
# to 1e-12 relative) and on the exact $F$ to within 3.5e-6–4.0e-5 for $\sigma_{\min}(F_{kk})$ (checked to 1e-4) and
# 0.08–0.54 % for $\sigma_{\max}(F_{kk'})$ (checked to 1 %) over both sweeps. The multiplicities show the structure:
# $d-K$ directions orthogonal to the class means pass unchanged ($\sigma=1$), $(n-1)(d-K)$ within-class
# directions share the value $1/(1+\lambda_H/\beta)$, and the remaining $nK$ lie in the span of the class means.
#
# *λ_H.* $\sigma_{\min}(F_{kk})$ decreases at both steps (checked). Of the 100 sorted singular values, 94
# decrease from λ_H = 0.05 to 0.2 and 91 from 0.2 to 0.5; 6 stay at 1; 3 increase at the second step
# (the triple 0.998134 → 0.998414): "almost all", as the paper says, not all.
#
# *λ_W.* $\sigma_{\min}(F_{kk})$ increases at all three steps, no singular value of $F_{kk}$ decreases, and
# $\sigma_{\max}(F_{kk'})$ decreases (all checked): larger λ_W leaves the minimizer further from collapse within a
# class, and reduces the inter-class coupling. The effect is confined to the span of the class means: the
# $n(d-K)=60$ values at 1 and at $1/(1+\lambda_H/\beta)$ do not depend on λ_W, and 40–43 of the 100 sorted values
# increase per step (57–60 unchanged; the count moves because the triple crosses the block of 54).

# %% [markdown]
# ## 5. Illustration (not a reproduction): Corollary 3.2 iterated on MNIST features
#
# The paper's argument for depth-wise collapse: each layer is a perturbation model whose $H_0$ is the previous
# layer's output. This section only iterates Corollary 3.2: each step replaces $H_l$ by the minimizer of
# $f(\cdot;H_l)$, which the corollary (and section 2) makes less variable within classes, so the decrease of NC1 is
# built into the construction. It illustrates the argument on real features; it does not reproduce the paper's
# Fig. 2, where hidden layers of an MLP are trained one at a time on CIFAR-10. Here $H_0$ holds the first hidden
# layer's features of a small ReLU MLP (784 → `chain_width` → `chain_width` → 10, SGD) on a balanced subset of
# real MNIST digits read by
# torchvision, scaled (in code, not printed) so that its mean squared row norm equals the collapsed $\|\mu_k\|^2$
# of the model (β compares like with like); the chain applies the model `chain_layers` times.

# %%
chain, mlp_history = study.mnist_chain(
    nc.perturbation.PerturbationModel(K=10, n=chain_per_class, d=chain_width, lambda_W=lambda_W,
                                      lambda_H=lambda_H, beta=1.0),
    chain_betas, layers=chain_layers, data_root=(str(run.results_dir / "fake_data") if chain_data == "fake"
                                                 else run["data_root"]),
    per_class=chain_per_class, width=chain_width, epochs=chain_epochs, seed=seed, fake=chain_data == "fake")
print(f"MLP ({chain_data}): final training accuracy {mlp_history.train_accuracy.iloc[-1]:.3f}")
print(chain.pivot(index="layer", columns="beta", values="nc1").to_string(float_format="%.4g"))
fig = study.layerwise_chain_figure(
    chain, title=f"Illustration, not a reproduction: Cor. 3.2 iterated on {chain_data.upper()} features")
nc.plot.save(fig, f"thn23_layerwise_chain_{chain_data}", run.figures_dir);

# %% [markdown]
# NC1 and nc1_trace fall at every layer of every chain (checked). With the paper profile (5 layers) NC1 ends at
# 0.0127, 0.568 and 0.945 of its $H_0$ value for β = 1, 10 and 100: more freedom (smaller β), more collapse. This
# is the qualitative picture of the paper's Fig. 2 (NC1 falls as layer-wise trained layers are added), produced
# here by the model itself rather than by training; it is an illustration, not evidence for Fig. 2.

# %% [markdown]
# ## Summary: exact computations vs theory

# %%
# NBVAL_CHECK_OUTPUT
checks = study.flow_checks(model, flow)
checks.append(nc.report.check("Cor 3.2: betas where nc1_trace(H*) >= nc1_trace(H0)",
                              int((sweep.nc1_trace >= sweep.nc1_trace_H0).sum()), 0, 0, kind="abs"))
checks += first_order_checks
checks += study.jacobian_checks(jac, n, d)
checks += study.direction_checks(jac, spectra, "lambda_H")
checks += study.jacobian_checks(jac_W, n, d, vary="lambda_W")
checks += study.direction_checks(jac_W, spectra_W, "lambda_W")
checks += study.chain_checks(chain, chain_data)
summary = run.summary(checks, jacobian=jac.drop(columns="diag_multiplicities").to_dict("records"),
                      jacobian_lambda_W=jac_W.drop(columns="diag_multiplicities").to_dict("records"),
                      first_order=first_order.to_dict("records"),
                      beta_sweep=sweep.to_dict("records"), chain=chain.to_dict("records"),
                      flow_nfev=flow.nfev, notes=run.notes)
run.write_json("summary.json", summary)
print(nc.report.checks_table(checks).to_string())
print("all checks passed:", summary["passed"])

# %%
print(run.environment())
