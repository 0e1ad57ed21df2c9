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
# Theorem 4.2, Fig. 1).**
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
# asserted at every recorded time. `flow_t_max` stops the flow while $\mathrm{tr}\Sigma_W$ is still far above
# the integrator's error floor (beyond it, rounding decides the sign of the differences).

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
# gradients and Hessian–vector products from `torch.func`), started at $H_0$ and run to a gradient norm at
# rounding level. Large β keeps $H$ near $H_0$; small β lets it collapse.

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
# ## 3. Theorem 4.2 / Fig. 1: the Jacobian near collapse
#
# At a collapsed minimizer $H_0$ (the orthogonal frame of notebook 01, randomly rotated) the minimizer is
# $H_0$ itself, and $F=\partial\,\mathrm{vec}(H^*)/\partial\,\mathrm{vec}(H_0)$ follows from implicit
# differentiation of $\nabla_H\Phi(H^*;H_0)=0$, $\Phi=\min_W f$: $F=-(\partial_H\nabla_H\Phi)^{-1}\partial_{H_0}\nabla_H\Phi$,
# both blocks exact second derivatives from `torch.func` (no finite differences). Predicted (first order in 1/β):
# $\sigma_{\max}(F_{kk})=1$, $\sigma_{\min}(F_{kk})=1-\sqrt{\lambda_H/\lambda_W}/\beta$; $F_{kk'}$ of rank 1 with
# $\sigma_{\max}=2\lambda_H(1-\sqrt{\lambda_H\lambda_W})/\beta$.

# %%
jac, spectra = study.jacobian_study(K, n, d, lambda_W, jacobian_lambda_H, beta, seed)
cols = ["lambda_H", "diag_sigma_min", "pred_diag_sigma_min", "diag_rank", "offdiag_rank", "offdiag_sigma_max",
        "pred_offdiag_sigma_max"]
print(jac[cols].to_string(index=False, float_format="%.6f"))
print("singular values of F_kk (value x multiplicity):")
for r in jac.itertuples():
    print(f"  lambda_H = {r.lambda_H:g}: {r.diag_multiplicities}")
fig = study.jacobian_spectra_figure(jac, spectra, title=f"Theorem 4.2: spectrum of F at collapse (beta = {beta:g})")
nc.plot.save(fig, "thn23_fig1_jacobian", run.figures_dir);

# %% [markdown]
# The extreme singular values sit on the predicted lines. Larger $\lambda_H$ pulls almost all singular
# values of $F_{kk}$ further below 1 — a perturbation of $H_0$ is damped more, the features stay closer to
# collapse — as the theorem says. The multiplicities show the structure behind it: $d-K$ directions
# orthogonal to the class means pass unchanged ($\sigma=1$), and the within-class directions split into
# $(n-1)(d-K)$ and $(n-1)K$ copies of two values; the rank-1 coupling between classes is $O(\lambda_H/\beta)$.

# %% [markdown]
# ## 4. Layer by layer on real MNIST features
#
# The paper's argument for depth-wise collapse: each layer is a perturbation model whose $H_0$ is the previous
# layer's output. Here $H_0$ holds the first hidden layer's features of a small ReLU MLP
# (784 → `chain_width` → `chain_width` → 10, SGD) on a balanced subset of real MNIST digits read by
# torchvision, scaled so that its mean squared row norm equals the collapsed $\|\mu_k\|^2$ of the model
# (β compares like with like); the chain applies the model `chain_layers` times.

# %%
chain, mlp_history = study.mnist_chain(
    nc.perturbation.PerturbationModel(K=10, n=chain_per_class, d=chain_width, lambda_W=lambda_W,
                                      lambda_H=lambda_H, beta=1.0),
    chain_betas, layers=chain_layers, data_root=(str(run.results_dir / "fake_data") if chain_data == "fake"
                                                 else run["data_root"]),
    per_class=chain_per_class, width=chain_width, epochs=chain_epochs, seed=seed, fake=chain_data == "fake")
print(f"MLP ({chain_data}): final training accuracy {mlp_history.train_accuracy.iloc[-1]:.3f}")
print(chain.pivot(index="layer", columns="beta", values="nc1").to_string(float_format="%.4g"))
fig = study.layerwise_chain_figure(chain, title=f"Perturbation layers on {chain_data.upper()} features")
nc.plot.save(fig, f"thn23_layerwise_chain_{chain_data}", run.figures_dir);

# %% [markdown]
# NC1 of the features falls at every layer of every chain, fastest for the smallest β: the depth-wise
# decrease of within-class variability that the paper's Fig. 2 shows for layer-wise trained MLPs, here
# produced by the model itself on a real network's features.

# %% [markdown]
# ## Summary: exact computations vs theory

# %%
# NBVAL_CHECK_OUTPUT
checks = study.flow_checks(model, flow)
checks.append(nc.report.check("Cor 3.2: betas where nc1_trace(H*) >= nc1_trace(H0)",
                              int((sweep.nc1_trace >= sweep.nc1_trace_H0).sum()), 0, 0, kind="abs"))
checks += study.jacobian_checks(jac, n, d)
checks += study.chain_checks(chain, chain_data)
summary = run.summary(checks, jacobian=jac.drop(columns="diag_multiplicities").to_dict("records"),
                      beta_sweep=sweep.to_dict("records"), chain=chain.to_dict("records"),
                      flow_nfev=flow.nfev, notes=run.notes)
run.write_json("summary.json", summary)
print(nc.report.checks_table(checks).to_string())
print("all checks passed:", summary["passed"])

# %%
print(run.environment())
