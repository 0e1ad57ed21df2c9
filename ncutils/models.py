"""Unconstrained-features models as objects the gradient-descent core can run.

A model owns its free parameters' initialization, objective and gradient, and
says which feature levels carry neural-collapse metrics. Every model is
*batched*: parameters carry a leading run dimension ``S`` (independent seeds, or
a grid of hyperparameters — a hyperparameter may be a float or one value per
run), so many problems run as one tensor program.

Shapes (code convention, rows are samples): features ``H (S, N, d)``, classifier
``W (S, K, d)``, bias ``b (S, K)``, labels ``y (N,)`` class-major
(``y = [0]*n + [1]*n + …``). The papers' ``H ∈ R^{d×N}`` is our ``H[s].T``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from itertools import pairwise
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ._validate import bad_value, check_choice, check_hyperparameter, check_integer, check_integers
from .metrics import class_means_t, margin_t, max_margin_distance_t
from .nets import RESNET_LAYERS, resnet18  # moved to ncutils.nets; re-exported here for one release

__all__ = ["RESNET_LAYERS", "UFM", "ClassReduced", "DeepUFM", "FeatureModel", "Level", "check_hyperparameter",
           "check_integer", "check_integers", "class_reduce", "class_reducible", "extended_ufm", "gd_rows",
           "resnet18"]

Params = dict[str, Tensor]
Hyper = float | Sequence[float]


class Level(NamedTuple):
    """One feature level: features ``(S, N, d)`` and what reads them.

    ``W``/``b``: the classifier ``(S, K, d)`` reading them (or None); ``A``: the weight
    ``(S, d_out, d)`` of a hidden layer reading them (for ``nc3_gram``); ``spectrum``:
    record the singular values of the class means.
    """

    H: Tensor
    W: Tensor | None = None
    b: Tensor | None = None
    A: Tensor | None = None
    spectrum: bool = False


Level.__new__.__module__ = __name__  # NamedTuple's generated __new__ resolves annotations here (pdoc)


@lru_cache(maxsize=32)
def _one_hot(K: int, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Class-major one-hot targets ``(Kn, K)``, cached per device and dtype (the GD loop's hot path)."""
    labels = torch.arange(K, device=device).repeat_interleave(n)
    return torch.nn.functional.one_hot(labels, K).to(dtype)


def _per_run(value: Hyper, S: int, like: Tensor) -> Tensor:
    """A hyperparameter as a tensor broadcasting against ``(S, ·, ·)`` parameters."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if t.numel() not in (1, S):
        raise ValueError(f"a per-run hyperparameter has {t.numel()} values but there are {S} runs")
    return t.expand(S).reshape(S, 1, 1)


_threshold_backward = torch.ops.aten.threshold_backward.grad_input  # ReLU backward, written in place


class _StepBuffers:
    """Preallocated work tensors of one fused GD step (one set per run count, device and dtype)."""

    def __init__(self, S: int, N: int, dims: tuple[int, ...], like: Tensor) -> None:
        def empty(*shape: int) -> Tensor:
            return torch.empty(*shape, device=like.device, dtype=like.dtype)

        L = len(dims) - 1
        self.feats = [empty(S, N, w) for w in dims[1:L]]  # H2 … HL
        self.grads = [empty(S, N, w) for w in dims[1:L]]  # ∂/∂H2 … ∂/∂HL (unscaled by 1/N)
        self.out = empty(S, N, dims[L])  # outputs − Y (MSE) or logits (CE)
        self.T = empty(S, dims[1], dims[0])  # the unscaled gradient of W1's data term
        self.factors: dict[tuple[int, float], Tensor] = {}  # 1 − lr λ per run, per (λ tuple, lr)


def _step_buffers(model: FeatureModel, S: int, dims: tuple[int, ...], like: Tensor) -> _StepBuffers:
    """The model's step buffers for ``S`` runs on ``like``'s device and dtype (built once, then reused)."""
    key = (S, like.device, like.dtype)
    cache = model.__dict__.get("_step_cache")  # not a dataclass field: no effect on eq/repr
    if cache is None or cache[0] != key:
        cache = (key, _StepBuffers(S, like.shape[-2], dims, like))  # rows of H₁: N, or K + r class-reduced
        model.__dict__["_step_cache"] = cache
    return cache[1]


def _decay(model: FeatureModel, buf: _StepBuffers, x: Tensor, lam: Hyper, lr: float) -> float:
    """Apply the weight-decay factor 1 − lr λ of ``x``: returned as a scalar (to fold into a ``baddbmm``
    ``beta``) or, for one λ per run, multiplied into ``x`` in place (then 1.0 is returned)."""
    if isinstance(lam, tuple):
        key = (id(lam), lr)
        f = buf.factors.get(key)
        if f is None:
            f = buf.factors[key] = 1 - lr * model._per_run(lam, x.shape[0], x)
        x.mul_(f)
        return 1.0
    return 1.0 - lr * lam


def _fused_step(model: FeatureModel, H1: Tensor, Ws: list[Tensor], lams: Sequence[Hyper], lam_H: Hyper,
                lr: float, relu: bool = False, ce: bool = False) -> None:
    """One in-place GD step of the L-layer model ``Y ≈ W_L σ(⋯σ(W₁H₁))`` (rows: ``H₁ (S, N, d₁)``,
    ``W_l (S, d_{l+1}, d_l)``), MSE or (L = 1) cross-entropy, weight decay ``lams`` on the W_l and
    ``lam_H`` on H₁: the arithmetic of the closed-form gradients with fewer passes and no allocation.

    The data term's 1/N and the step size go into the ``alpha`` of in-place ``baddbmm_`` updates, and
    the weight decay into their ``beta`` (θ ← (1 − lr λ)θ − (lr/N) ĝ); the forward features are kept in
    preallocated buffers and the ReLU mask is read from them (σ(z) > 0 ⟺ z > 0)."""
    L, N = len(Ws), model.N
    dims = (H1.shape[-1], *(W.shape[-2] for W in Ws))
    buf = _step_buffers(model, H1.shape[0], dims, H1)
    feats = [H1]
    for W, Hn in zip(Ws[:-1], buf.feats, strict=True):
        torch.bmm(feats[-1], W.mT, out=Hn)
        if relu:
            Hn.relu_()
        feats.append(Hn)
    Y = model.targets(H1)
    if ce:
        G = torch.softmax(torch.bmm(feats[-1], Ws[-1].mT, out=buf.out), -1).sub_(Y)
    else:
        G = torch.baddbmm(Y, feats[-1], Ws[-1].mT, beta=-1, out=buf.out)  # outputs − Y
    alpha = -lr / N
    for layer in range(L - 1, 0, -1):  # W_L … W_2 (0-based index)
        W, Gn = Ws[layer], buf.grads[layer - 1]
        torch.bmm(G, W, out=Gn)  # ∂/∂H_{layer+1}, before W changes
        W.baddbmm_(G.mT, feats[layer], beta=_decay(model, buf, W, lams[layer], lr), alpha=alpha)
        if relu:
            _threshold_backward(Gn, feats[layer], 0, grad_input=Gn)
        G = Gn
    W1 = Ws[0]
    T = torch.bmm(G.mT, H1, out=buf.T)  # before H1 changes
    H1.baddbmm_(G, W1, beta=_decay(model, buf, H1, lam_H, lr), alpha=alpha)  # before W1 changes
    beta = _decay(model, buf, W1, lams[0], lr)
    if beta != 1.0:
        W1.mul_(beta)
    W1.add_(T, alpha=alpha)


class FeatureModel(ABC):
    """Interface of a model the GD core (:func:`ncutils.solve.gradient_descent`) runs."""

    K: int
    n: int

    @property
    def N(self) -> int:
        return self.K * self.n

    def labels(self, device: torch.device | str = "cpu") -> Tensor:
        """Class-major labels ``(N,)``: n samples of class 0, then class 1, …"""
        return torch.arange(self.K, device=device).repeat_interleave(self.n)

    def targets(self, like: Tensor) -> Tensor:
        """One-hot targets ``(N, K)`` (the papers' Y ∈ R^{K×N}, transposed)."""
        return _one_hot(self.K, self.n, like.device, like.dtype)

    def _per_run(self, value: Hyper, S: int, like: Tensor) -> Tensor:
        """:func:`_per_run`, cached per model, device and dtype for per-run tuples (a grid of 10⁴
        λ values is converted once, not at every step)."""
        if isinstance(value, int | float):
            return _per_run(value, S, like)
        cache = self.__dict__.setdefault("_per_run_cache", {})  # not a dataclass field: no effect on eq/repr
        key = (id(value), S, like.device, like.dtype)
        if key not in cache:
            cache[key] = (value, _per_run(value, S, like))  # keep value alive so its id stays unique
        return cache[key][1]

    def __getstate__(self) -> dict:
        """Pickled without the fused step's work buffers (rebuilt at the first step)."""
        return {k: v for k, v in self.__dict__.items() if k != "_step_cache"}

    def runs(self) -> int | None:
        """Number of runs implied by per-run hyperparameters (None if all are scalars)."""
        sizes = {len(getattr(self, f.name)) for f in fields(self) if isinstance(getattr(self, f.name), tuple)}  # type: ignore[arg-type]
        if len(sizes) > 1:
            raise ValueError(f"per-run hyperparameters have different lengths {sorted(sizes)}")
        return sizes.pop() if sizes else None

    @abstractmethod
    def init(self, S: int, init_std: float, generator: torch.Generator, dtype: torch.dtype) -> Params:
        """Draw S independent initializations (on CPU, from ``generator``)."""

    @abstractmethod
    def objective(self, p: Params) -> Tensor:
        """Objective value per run, ``(S,)``."""

    def gradient(self, p: Params) -> Params:
        """Gradient of the objective (default: autograd; models override with closed forms)."""
        leaves = {k: v.detach().requires_grad_() for k, v in p.items()}
        with torch.enable_grad():  # the GD loop runs under no_grad
            grads = torch.autograd.grad(self.objective(leaves).sum(), list(leaves.values()))
        return dict(zip(leaves, grads, strict=True))

    def step(self, p: Params, lr: float) -> None:
        """One gradient-descent step θ ← θ − lr ∇f(θ), in place (models may fuse it for speed)."""
        g = self.gradient(p)
        for k in p:
            p[k].sub_(g[k], alpha=lr)

    def step_flops(self, S: int) -> float | None:
        """Floating-point operations of one GD step of ``S`` runs (matrix products only), or None if unknown
        (used to choose the number of threads, :func:`ncutils.device.threads_for`)."""
        return None

    @abstractmethod
    def levels(self, p: Params) -> dict[str, Level]:
        """Feature levels on which neural-collapse metrics are recorded."""

    def extras(self, p: Params) -> dict[str, Tensor]:
        """Other per-run quantities worth recording (norms, fits), each ``(S,)``."""
        return {}


@dataclass(frozen=True)
class UFM(FeatureModel):
    """The unconstrained features model with MSE or cross-entropy loss.

    MSE (Tirer & Bruna 2022, Eq. 3)::

        f(W, H, b) = 1/(2Kn) ‖W H + b 1ᵀ − Y‖²_F + (λ_W/2)‖W‖²_F + (λ_H/2)‖H‖²_F

    CE (Zhu et al. 2021, same normalization)::

        f(W, H, b) = 1/(Kn) Σ_i CE(W h_i + b, y_i) + (λ_W/2)‖W‖²_F + (λ_H/2)‖H‖²_F

    The bias (``bias=True``) is unregularized. With ``loss="ce"`` and
    λ_W = λ_H = 0 this is the unconstrained layer-peeled model (Ji et al. 2022).
    ``lambda_W``/``lambda_H`` may be one value per run.
    """

    K: int
    n: int
    d: int
    lambda_W: Hyper = 5e-3
    lambda_H: Hyper = 5e-3
    loss: Literal["mse", "ce"] = "mse"
    bias: bool = False
    name: str = field(default="ufm", compare=False)

    def __post_init__(self) -> None:
        check_integers(self, (("K", 2), ("n", 1), ("d", 1)))
        object.__setattr__(self, "lambda_W", check_hyperparameter("lambda_W", self.lambda_W))
        object.__setattr__(self, "lambda_H", check_hyperparameter("lambda_H", self.lambda_H))
        check_choice("loss", self.loss, ("mse", "ce"))
        self.runs()

    def init(self, S: int, init_std: float, generator: torch.Generator, dtype: torch.dtype) -> Params:
        p = {
            "W": init_std * torch.randn(S, self.K, self.d, generator=generator, dtype=dtype),
            "H": init_std * torch.randn(S, self.N, self.d, generator=generator, dtype=dtype),
        }
        if self.bias:
            p["b"] = torch.zeros(S, self.K, dtype=dtype)
        return p

    def _logits(self, p: Params) -> Tensor:
        Z = p["H"] @ p["W"].transpose(-1, -2)  # (S, N, K)
        return Z + p["b"].unsqueeze(-2) if self.bias else Z

    def _regularizer(self, p: Params) -> Tensor:
        S = p["W"].shape[0]
        lw = self._per_run(self.lambda_W, S, p["W"]).flatten()
        lh = self._per_run(self.lambda_H, S, p["H"]).flatten()
        return lw / 2 * p["W"].square().sum((-1, -2)) + lh / 2 * p["H"].square().sum((-1, -2))

    def objective(self, p: Params) -> Tensor:
        Z = self._logits(p)
        if self.loss == "mse":
            data = (Z - self.targets(Z)).square().sum((-1, -2)) / (2 * self.N)
        else:
            y = self.labels(Z.device)
            data = (torch.logsumexp(Z, -1) - Z[..., torch.arange(self.N, device=Z.device), y]).mean(-1)
        return data + self._regularizer(p)

    def gradient(self, p: Params) -> Params:
        """Closed-form gradient: with R = ∂(data term)/∂Z (S, N, K), ∇_W = RᵀH + λ_W W, ∇_H = R W + λ_H H."""
        Z = self._logits(p)
        if self.loss == "mse":
            R = (Z - self.targets(Z)) / self.N
        else:
            R = (torch.softmax(Z, -1) - self.targets(Z)) / self.N
        S = Z.shape[0]
        g = {
            "W": R.transpose(-1, -2) @ p["H"] + self._per_run(self.lambda_W, S, Z) * p["W"],
            "H": R @ p["W"] + self._per_run(self.lambda_H, S, Z) * p["H"],
        }
        if self.bias:
            g["b"] = R.sum(-2)
        return g

    def step(self, p: Params, lr: float) -> None:
        """Fused in-place GD step (the arithmetic of :meth:`gradient` to float round-off, fewer kernels and
        no allocation: a run of millions of steps of the layer-peeled model is dominated by per-op overhead)."""
        if self.bias:
            super().step(p, lr)
            return
        _fused_step(self, p["H"], [p["W"]], (self.lambda_W,), self.lambda_H, lr, ce=self.loss == "ce")

    def step_flops(self, S: int) -> float:
        return 6.0 * S * self.N * self.K * self.d  # W Hᵀ, Rᵀ H, R W

    def levels(self, p: Params) -> dict[str, Level]:
        return {"H": Level(p["H"], p["W"], p.get("b"))}

    def extras(self, p: Params) -> dict[str, Tensor]:
        M = class_means_t(p["H"], self.labels(p["H"].device), self.K)  # (S, K, d)
        WM = p["W"] @ M.transpose(-1, -2)  # (S, K, K): the papers' W M
        out = {
            "norm_W_sq": p["W"].square().sum((-1, -2)),
            "norm_H_sq": p["H"].square().sum((-1, -2)),
            "fit": torch.diagonal(WM, dim1=-2, dim2=-1).mean(-1),
        }
        if self.bias:
            out["bias_mean"] = p["b"].mean(-1)
            out["bias_spread"] = p["b"].amax(-1) - p["b"].amin(-1)
        if self.loss == "ce":
            out["margin"] = margin_t(p["H"], self.labels(p["H"].device), W=p["W"])
            out["normalized_margin"] = out["margin"] / ((out["norm_W_sq"] + out["norm_H_sq"]) / 2)
            if not self.bias and self.d >= self.K - 1:  # the layer-peeled model (Ji et al. 2022): its invariants
                out["maxmargin_distance"] = max_margin_distance_t(p["W"], p["H"], self.labels(p["H"].device), self.K)
                out["w_mean_norm"] = torch.linalg.vector_norm(p["W"].mean(-2), dim=-1)  # ‖(1/K)Σ_k w_k‖: CE-invariant
                out["imbalance_norm"] = torch.linalg.matrix_norm(  # ‖WᵀW − HᵀH‖_F: conserved by gradient flow
                    p["W"].transpose(-1, -2) @ p["W"] - p["H"].transpose(-1, -2) @ p["H"])
        return out


Activation = Literal["relu", "linear"]
ACTIVATIONS: tuple[str, ...] = ("relu", "linear")


@dataclass(frozen=True)
class DeepUFM(FeatureModel):
    """The L-layer unconstrained-features model with MSE loss, no biases (Súkeník et al. 2023, Eq. 1)::

        f = 1/(2N) ‖W_L σ(W_{L−1} σ(⋯ σ(W₁H₁))) − Y‖²_F + Σ_l (λ_{W_l}/2)‖W_l‖²_F + (λ_{H₁}/2)‖H₁‖²_F

    σ = ReLU or identity. ``L = 2`` is the extended UFM of Tirer & Bruna 2022 (Eq. 9;
    :func:`extended_ufm`), ``L = 1`` the plain UFM. Feature levels (rows): ``H1 (S, N, d_1)``
    free, ``H{l+1} = σ(H_l W_lᵀ) (S, N, d_{l+1})``; weights ``W{l} (S, d_{l+1}, d_l)`` with
    ``d_{L+1} = K`` (``W{L}`` is the classifier).

    Parameters
    ----------
    K, n : classes and samples per class.
    d : width of every level (an int), or the L widths ``(d_1, …, d_L)``.
    L : number of weight matrices (≥ 1).
    activation : ``"relu"`` or ``"linear"``.
    lambda_W : weight decay of W₁…W_L: one value for all layers, or L values; each value
        may itself be one value per run.
    lambda_H : weight decay of H₁ (a value, or one per run).
    """

    K: int
    n: int
    d: int | tuple[int, ...]
    L: int = 2
    activation: Activation = "relu"
    lambda_W: Hyper | tuple[Hyper, ...] = 5e-3
    lambda_H: Hyper = 5e-3
    name: str = field(default="deep_ufm", compare=False)

    def __post_init__(self) -> None:
        check_integers(self, (("K", 2), ("n", 1), ("L", 1)))
        if not isinstance(self.d, int):
            object.__setattr__(self, "d", tuple(self.d))
        widths = self.widths
        if len(widths) != self.L or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise bad_value("d", f"an integer >= 1 or a sequence of L = {self.L} such integers", self.d)
        check_choice("activation", self.activation, ACTIVATIONS)
        lw = self.lambda_W
        per_layer = [lw] * self.L if isinstance(lw, int | float) else list(lw)  # type: ignore[arg-type]
        if len(per_layer) != self.L:
            raise bad_value("lambda_W", f"one value or L = {self.L} values (one per layer)", lw)
        checked = tuple(check_hyperparameter(f"lambda_W[{i + 1}]", v) for i, v in enumerate(per_layer))
        object.__setattr__(self, "lambda_W", checked)
        object.__setattr__(self, "lambda_H", check_hyperparameter("lambda_H", self.lambda_H))
        self.runs()

    @property
    def widths(self) -> tuple[int, ...]:
        """``(d_1, …, d_L)``: the width of each feature level."""
        return (self.d,) * self.L if isinstance(self.d, int) else tuple(self.d)

    def layer_lambdas(self) -> tuple[Hyper, ...]:
        """λ_{W_1}, …, λ_{W_L} (each a value or one value per run)."""
        return self.lambda_W  # type: ignore[return-value]

    def runs(self) -> int | None:
        sizes = {len(v) for v in (*self.layer_lambdas(), self.lambda_H) if isinstance(v, tuple)}
        if len(sizes) > 1:
            raise ValueError(f"per-run hyperparameters have different lengths {sorted(sizes)}")
        return sizes.pop() if sizes else None

    def init(self, S: int, init_std: float, generator: torch.Generator, dtype: torch.dtype) -> Params:
        dims = (*self.widths, self.K)
        p = {"H1": init_std * torch.randn(S, self.N, dims[0], generator=generator, dtype=dtype)}
        for layer in range(1, self.L + 1):
            p[f"W{layer}"] = init_std * torch.randn(S, dims[layer], dims[layer - 1], generator=generator, dtype=dtype)
        return p

    def _sigma(self, Z: Tensor) -> Tensor:
        return torch.relu(Z) if self.activation == "relu" else Z

    def forward(self, p: Params) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Feature levels ``[H1, …, HL]``, pre-activations ``[H1 W1ᵀ, …]`` and outputs ``(S, N, K)``."""
        H = p["H1"]
        feats, pre = [H], []
        for layer in range(1, self.L):
            Z = H @ p[f"W{layer}"].transpose(-1, -2)
            pre.append(Z)
            H = self._sigma(Z)
            feats.append(H)
        return feats, pre, H @ p[f"W{self.L}"].transpose(-1, -2)

    def _regularizer(self, p: Params) -> Tensor:
        H1 = p["H1"]
        S = H1.shape[0]
        reg = self._per_run(self.lambda_H, S, H1).flatten() / 2 * H1.square().sum((-1, -2))
        for layer, lam in enumerate(self.layer_lambdas(), start=1):
            W = p[f"W{layer}"]
            reg = reg + self._per_run(lam, S, W).flatten() / 2 * W.square().sum((-1, -2))
        return reg

    def objective(self, p: Params) -> Tensor:
        out = self.forward(p)[2]
        return (out - self.targets(out)).square().sum((-1, -2)) / (2 * self.N) + self._regularizer(p)

    def gradient(self, p: Params) -> Params:
        """Closed-form backpropagation (rows): G_L = (out − Y)/N, ∇W_l = G_lᵀH_l + λ_l W_l,
        G_{l−1} = (G_l W_l) ⊙ σ'(Z_{l−1}), ∇H₁ = G₁W₁ + λ_{H₁}H₁."""
        feats, pre, out = self.forward(p)
        S = out.shape[0]
        G = (out - self.targets(out)) / self.N  # ∂(data term)/∂(outputs), (S, N, K)
        lams = self.layer_lambdas()
        g: Params = {}
        for layer in range(self.L, 0, -1):
            W = p[f"W{layer}"]
            g[f"W{layer}"] = G.transpose(-1, -2) @ feats[layer - 1] + self._per_run(lams[layer - 1], S, W) * W
            G = G @ W  # ∂/∂H_layer
            if layer > 1 and self.activation == "relu":
                G = G * (pre[layer - 2] > 0)
        g["H1"] = G + self._per_run(self.lambda_H, S, p["H1"]) * p["H1"]
        return {k: g[k] for k in p}

    def step(self, p: Params, lr: float) -> None:
        """Fused in-place GD step: the closed-form backpropagation of :meth:`gradient` to float round-off,
        with preallocated buffers reused across steps, weight decay and 1/N folded into the updates."""
        Ws = [p[f"W{layer}"] for layer in range(1, self.L + 1)]
        _fused_step(self, p["H1"], Ws, self.layer_lambdas(), self.lambda_H, lr, relu=self.activation == "relu")

    def step_flops(self, S: int) -> float:
        dims = (*self.widths, self.K)
        return 6.0 * S * self.N * sum(a * b for a, b in pairwise(dims))  # forward + 2 backward

    def levels(self, p: Params) -> dict[str, Level]:
        feats = self.forward(p)[0]
        out = {}
        for layer, H in enumerate(feats, start=1):
            W = p[f"W{layer}"]
            last = layer == self.L
            out[f"H{layer}"] = Level(H, W if last else None, None, None if last else W, spectrum=True)
        return out

    def extras(self, p: Params) -> dict[str, Tensor]:
        out = self.forward(p)[2]
        Z = class_means_t(out, self.labels(out.device), self.K)  # (S, K, K): row k = W_L…σ(W_1 μ_k)
        off = ~torch.eye(self.K, dtype=torch.bool, device=Z.device)
        ex = {"norm_H1_sq": p["H1"].square().sum((-1, -2)),
              "fit": torch.diagonal(Z, dim1=-2, dim2=-1).mean(-1),
              "fit_offdiag": Z[..., off].abs().amax(-1)}
        for layer in range(1, self.L + 1):
            ex[f"norm_W{layer}_sq"] = p[f"W{layer}"].square().sum((-1, -2))
        return ex


class ClassReduced(FeatureModel):
    """A linear MSE model (:class:`UFM` without bias, linear :class:`DeepUFM`) in exact class-reduced coordinates.

    Write the free features as class means plus within-class deviations, ``H₁ = E M + R`` (``E (N, K)`` one-hot,
    ``M (S, K, d₁)``, ``Eᵀ R = 0``). A GD step moves every row h_i of H₁ by the same affine map of h_i, shifted by
    its class's target; so ``R`` evolves as ``R_t = R₀ B_t`` (``B_t`` d₁ × d₁) and, with ``R₀ = V C₀`` (``V (S, N, r)``
    orthonormal columns orthogonal to ``E``, from a QR of ``R₀``), ``R_t = V C_t``. The data term and ‖H₁‖² split
    the same way (cross terms vanish as ``Eᵀ V = 0``), so GD on the ``K + r`` rows ``[√n M; C]`` with targets
    ``[√n I; 0]`` and the full problem's 1/N is GD on ``H₁`` iterate by iterate (equal to float round-off, tested):
    ``K + d₁`` rows instead of ``N = Kn``. Exact for linear models only (a ReLU acts per sample).

    Metrics (:meth:`levels`, :meth:`extras`) are read from the full features rebuilt by :meth:`expand`.
    Build one with :func:`class_reduce`.
    """

    def __init__(self, base: UFM | DeepUFM, basis: Tensor) -> None:
        self.base, self.basis = base, basis  # basis: V (S, N, r)
        self.K, self.n = base.K, base.n
        self._key = "H" if isinstance(base, UFM) else "H1"
        self._targets: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def __repr__(self) -> str:
        return f"ClassReduced({self.base!r}, r={self.basis.shape[-1]})"

    @property
    def rows(self) -> int:
        """Rows of the reduced features: K class means plus r deviation directions."""
        return self.K + self.basis.shape[-1]

    def runs(self) -> int | None:
        return self.base.runs()

    def targets(self, like: Tensor) -> Tensor:
        """Targets of the reduced rows ``(K + r, K)``: ``[√n I; 0]``."""
        key = (like.device, like.dtype)
        if key not in self._targets:  # built once per device and dtype (the GD loop's hot path)
            T = torch.zeros(self.rows, self.K, device=like.device, dtype=like.dtype)
            T[: self.K].fill_diagonal_(self.n**0.5)
            self._targets[key] = T
        return self._targets[key]

    def init(self, S: int, init_std: float, generator: torch.Generator, dtype: torch.dtype) -> Params:
        raise TypeError("a ClassReduced model starts from full parameters: use ncutils.models.class_reduce")

    def _outputs(self, p: Params) -> Tensor:
        if isinstance(self.base, UFM):
            return p["H"] @ p["W"].transpose(-1, -2)
        return self.base.forward(p)[2]

    def objective(self, p: Params) -> Tensor:
        """The full problem's objective, from the reduced rows (``(S,)``)."""
        out = self._outputs(p)
        return (out - self.targets(out)).square().sum((-1, -2)) / (2 * self.N) + self.base._regularizer(p)

    def step(self, p: Params, lr: float) -> None:
        """The base model's fused GD step on the reduced rows (same arithmetic, K + r rows instead of N)."""
        b = self.base
        if isinstance(b, UFM):
            _fused_step(self, p["H"], [p["W"]], (b.lambda_W,), b.lambda_H, lr)
        else:
            Ws = [p[f"W{layer}"] for layer in range(1, b.L + 1)]
            _fused_step(self, p["H1"], Ws, b.layer_lambdas(), b.lambda_H, lr)

    def step_flops(self, S: int) -> float:
        return self.base.step_flops(S) * self.rows / self.N

    def expand(self, p: Params) -> Params:
        """The full parameters: ``H₁ = E M + V C`` rebuilt from the reduced rows ``[√n M; C]`` ``(S, N, d₁)``."""
        H = p[self._key]
        M = H[:, : self.K] / self.n**0.5
        full = dict(p)
        full[self._key] = M.repeat_interleave(self.n, dim=1) + self.basis @ H[:, self.K:]
        return full

    def levels(self, p: Params) -> dict[str, Level]:
        return self.base.levels(self.expand(p))

    def extras(self, p: Params) -> dict[str, Tensor]:
        return self.base.extras(self.expand(p))


def class_reducible(model: FeatureModel) -> bool:
    """Whether :func:`class_reduce` applies to ``model``: a linear MSE model (UFM without bias, linear deep UFM)
    with ``K + d₁ < N`` (so the reduced rows are fewer)."""
    if type(model) is UFM:  # exactly these classes: a subclass may change the objective or the step
        ok = model.loss == "mse" and not model.bias
    elif type(model) is DeepUFM:
        ok = model.activation == "linear" or model.L == 1
    else:
        return False
    return ok and model.K + _first_width(model) < model.N


def _first_width(model: FeatureModel) -> int:
    """d₁: the width of the free features (``d`` of a :class:`UFM`, ``widths[0]`` of a :class:`DeepUFM`)."""
    return model.widths[0] if isinstance(model, DeepUFM) else model.d  # type: ignore[attr-defined]


def gd_rows(model: FeatureModel, reduce: bool = True) -> int:
    """Rows of the features that GD really runs on: ``K + d₁`` for a class-reducible model
    (:func:`class_reducible`, unless ``reduce`` is false), else ``N`` — what its step costs scale with."""
    return model.K + _first_width(model) if reduce and class_reducible(model) else model.N


def class_reduce(model: FeatureModel, p: Params) -> tuple[ClassReduced, Params] | None:
    """``(ClassReduced model, reduced parameters)`` for GD that equals GD on ``model`` from ``p`` (see
    :class:`ClassReduced`), or None where :func:`class_reducible` is false (the reduction is not exact: ReLU,
    cross-entropy, a bias; or it saves nothing)."""
    if not class_reducible(model):
        return None
    key = "H" if isinstance(model, UFM) else "H1"
    H = p[key]
    M = class_means_t(H, model.labels(H.device), model.K)  # (S, K, d₁)
    V, C = torch.linalg.qr(H - M.repeat_interleave(model.n, dim=1))  # R = V C: V (S, N, d₁), C (S, d₁, d₁)
    reduced = {k: v.clone() for k, v in p.items()}
    reduced[key] = torch.cat([M * model.n**0.5, C], dim=1)
    return ClassReduced(model, V), reduced  # type: ignore[arg-type]


def extended_ufm(K: int, n: int, d: int, activation: Activation = "relu", lambda_W1: Hyper = 5e-3,
                 lambda_W2: Hyper = 5e-3, lambda_H1: Hyper = 5e-3) -> DeepUFM:
    """The extended UFM of Tirer & Bruna 2022 (§4, Eq. 9): a :class:`DeepUFM` with L = 2::

        f = 1/(2Kn)‖W₂σ(W₁H₁) − Y‖²_F + (λ_{W₂}/2)‖W₂‖² + (λ_{W₁}/2)‖W₁‖² + (λ_{H₁}/2)‖H₁‖²
    """
    return DeepUFM(K=K, n=n, d=d, L=2, activation=activation, lambda_W=(lambda_W1, lambda_W2),
                   lambda_H=lambda_H1, name=f"eufm_{activation}")
