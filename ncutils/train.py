"""Training real networks whose features the theory notebooks analyse.

:func:`train_mlp` trains a small fully connected ReLU network with SGD on a
tensor dataset (full tensors in memory, shuffled mini-batches, deterministic
from ``seed``); :func:`mlp_features` returns the features of every hidden layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm import tqdm

from .device import is_quiet

__all__ = ["MLPResult", "mlp_features", "train_mlp"]


@dataclass
class MLPResult:
    """A trained MLP (``nn.Sequential`` of Linear/ReLU pairs + a linear classifier) and its per-epoch history."""

    model: nn.Sequential
    history: pd.DataFrame


def _mlp(d_in: int, widths: Sequence[int], K: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    prev = d_in
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, K))
    return nn.Sequential(*layers)


def train_mlp(X: Tensor, y: Tensor, widths: Sequence[int], *, epochs: int, lr: float = 0.05,
              batch_size: int = 64, momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
              progress: bool | None = None) -> MLPResult:
    """Train a ReLU MLP ``X (N, …) → widths → K`` with cross-entropy, SGD with momentum, on the CPU.

    Returns the model (eval mode) and a table of epoch, loss and training accuracy.
    """
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty list of integers >= 1, got {widths!r}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    K = int(y.max()) + 1
    torch.manual_seed(seed)
    model = _mlp(X[0].numel(), widths, K)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    show = (not is_quiet()) if progress is None else progress
    for epoch in tqdm(range(1, epochs + 1), desc="MLP", disable=not show):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if not torch.isfinite(torch.tensor(total)):
            raise RuntimeError(f"MLP training diverged at epoch {epoch} (loss {total}); lower lr = {lr}")
        model.eval()
        with torch.no_grad():
            acc = float((model(X).argmax(-1) == y).float().mean())
        rows.append({"epoch": epoch, "loss": total / len(y), "train_accuracy": acc})
    return MLPResult(model.eval(), pd.DataFrame(rows))


@torch.no_grad()
def mlp_features(model: nn.Sequential, X: Tensor) -> list[Tensor]:
    """Post-ReLU features of every hidden layer of a :func:`train_mlp` model, each ``(N, width)`` float64."""
    feats, h = [], X
    for layer in model:
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            feats.append(h.to(torch.float64))
    return feats
