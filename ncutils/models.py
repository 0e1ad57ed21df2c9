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

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .metrics import class_means_t

__all__ = ["UFM", "FeatureModel", "Level", "check_hyperparameter"]

Params = dict[str, Tensor]
Hyper = float | Sequence[float]


class Level(NamedTuple):
    """One feature level: features ``(S, N, d)`` and the classifier that reads them (or None)."""

    H: Tensor
    W: Tensor | None = None
    b: Tensor | None = None


def check_hyperparameter(name: str, value: Hyper, low: float = 0.0, strict: bool = False) -> Hyper:
    """Validate a scalar-or-per-run hyperparameter: finite and ≥ ``low`` (> if ``strict``)."""
    vals = [value] if isinstance(value, int | float) else list(value)
    if not vals:
        raise ValueError(f"{name} must be a number or a non-empty sequence of numbers")
    for v in vals:
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise ValueError(f"{name} must be a number, got {v!r}")
        ok = math.isfinite(v) and (v > low if strict else v >= low)
        if not ok:
            rng = f"({low}, inf)" if strict else f"[{low}, inf)"
            raise ValueError(f"{name} must be finite and in {rng}, got {v}")
    return value if isinstance(value, int | float) else tuple(float(v) for v in vals)


def _per_run(value: Hyper, S: int, like: Tensor) -> Tensor:
    """A hyperparameter as a tensor broadcasting against ``(S, ·, ·)`` parameters."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if t.numel() not in (1, S):
        raise ValueError(f"a per-run hyperparameter has {t.numel()} values but there are {S} runs")
    return t.expand(S).reshape(S, 1, 1)


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
        return torch.nn.functional.one_hot(self.labels(like.device), self.K).to(like.dtype)

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
        grads = torch.autograd.grad(self.objective(leaves).sum(), list(leaves.values()))
        return dict(zip(leaves, grads, strict=True))

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
        for key, low in (("K", 2), ("n", 1), ("d", 1)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {v!r}")
        object.__setattr__(self, "lambda_W", check_hyperparameter("lambda_W", self.lambda_W))
        object.__setattr__(self, "lambda_H", check_hyperparameter("lambda_H", self.lambda_H))
        if self.loss not in ("mse", "ce"):
            raise ValueError(f"loss must be one of ('mse', 'ce'), got {self.loss!r}")
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
        lw = _per_run(self.lambda_W, S, p["W"]).flatten()
        lh = _per_run(self.lambda_H, S, p["H"]).flatten()
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
            "W": R.transpose(-1, -2) @ p["H"] + _per_run(self.lambda_W, S, Z) * p["W"],
            "H": R @ p["W"] + _per_run(self.lambda_H, S, Z) * p["H"],
        }
        if self.bias:
            g["b"] = R.sum(-2)
        return g

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
        return out
