"""Datasets through :mod:`torchvision.datasets`: balanced, normalized, class-major tensors.

``load_dataset("mnist", root)`` reads (or, with ``download=True``, fetches) the
standard files with torchvision's own loader, so a copy that torchvision can
read works here too. A missing copy gives :class:`DatasetNotFoundError` naming
the folder that was searched and how to get the files.

For tests and offline CI, :func:`write_fake_mnist` writes small files in MNIST's
real on-disk format (IDX, the standard file names) that the same torchvision
path reads.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .paths import resolve_path

__all__ = ["DATASETS", "Dataset", "DatasetNotFoundError", "balanced_subset", "load_dataset", "write_fake_mnist"]

#: Supported datasets: name → (torchvision class name, classes, per-channel mean, per-channel std).
DATASETS: dict[str, tuple[str, int, tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ("MNIST", 10, (0.1307,), (0.3081,)),
}
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not under the data root (and could not be downloaded)."""


class Dataset(NamedTuple):
    """Images ``X (N, C, H, W)`` float32, normalized; labels ``y (N,)`` int64, class-major."""

    X: Tensor
    y: Tensor


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {name!r}")
    return name


def _not_found(name: str, folder: Path, reason: str | None = None) -> str:
    where = folder / DATASETS[name][0] / "raw"
    how = (f"download=True could not fetch them ({reason})" if reason else
           "pass download=True (needs internet), or point the data root at an existing copy "
           "(make figures DATA_ROOT=/path/to/data)")
    return f"{name} not found: looked for {', '.join(_MNIST_FILES)} in {where}; {how}"


def missing_files(name: str, root: str | os.PathLike[str] = "data") -> str | None:
    """None when ``name``'s files are under ``root`` (relative: to the repository root), else the message
    :func:`load_dataset` would raise — so a run can stop before any compute."""
    folder = resolve_path(root)
    raw = folder / DATASETS[_check_name(name)][0] / "raw"
    return None if all((raw / f).is_file() for f in _MNIST_FILES) else _not_found(name, folder)


def balanced_subset(y: Tensor, per_class: int, num_classes: int, seed: int = 0) -> Tensor:
    """Indices of ``per_class`` random samples of every class, class-major (class 0 first), ``(K·per_class,)``."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be an integer >= 1, got {per_class!r}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(num_classes):
        idx = torch.nonzero(y == k).flatten()
        if len(idx) < per_class:
            raise ValueError(f"per_class = {per_class} but class {k} has only {len(idx)} samples")
        out.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]].sort().values)
    return torch.cat(out)


def load_dataset(name: str, root: str | os.PathLike[str] = "data", train: bool = True, per_class: int | None = None,
                 download: bool = False, seed: int = 0) -> Dataset:
    """Load ``name`` (``"mnist"``) from ``root`` via torchvision, normalized with the usual mean/std.

    ``per_class``: a balanced random subset (``seed``) in class-major order; default: all samples,
    sorted class-major (stable). ``download``: let torchvision fetch missing files.
    Relative roots are resolved against the repository root.

    Raises :class:`DatasetNotFoundError` (missing files, no network) and ``ValueError`` (bad arguments).
    """
    import torchvision

    cls_name, K, mean, std = DATASETS[_check_name(name)]
    folder = resolve_path(root)
    cls = getattr(torchvision.datasets, cls_name)
    try:
        ds = cls(root=str(folder), train=train, download=download)
    except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found"; urllib: no network
        reason = str(err).splitlines()[0] if download else None
        raise DatasetNotFoundError(_not_found(name, folder, reason)) from None
    X = ds.data
    X = torch.as_tensor(np.asarray(X)) if not isinstance(X, Tensor) else X
    X = X.to(torch.float32).div_(255.0)
    X = X.unsqueeze(1) if X.ndim == 3 else X.permute(0, 3, 1, 2)
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    idx = balanced_subset(y, per_class, K, seed) if per_class is not None else torch.argsort(y, stable=True)
    X, y = X[idx], y[idx]
    m = torch.tensor(mean).reshape(1, -1, 1, 1)
    s = torch.tensor(std).reshape(1, -1, 1, 1)
    return Dataset((X - m) / s, y)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file (the MNIST format): magic 0x0000_08_<ndim>, big-endian sizes, uint8 data; written atomically."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    os.replace(tmp, path)


def write_fake_mnist(root: str | os.PathLike[str], per_class: int = 20, test_per_class: int = 5, seed: int = 0,
                     noise: float = 60.0) -> Path:
    """Write a tiny MNIST look-alike in the real on-disk layout ``root/MNIST/raw/*-idx?-ubyte``.

    Each class is a fixed random stroke pattern plus pixel noise (std ``noise`` grey levels), so
    networks can learn it; labels are shuffled within the file like the real data. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    templates = np.zeros((10, 28, 28))
    for k in range(10):
        for _ in range(3):  # three random strokes per class
            r0, c0 = rng.integers(6, 22, 2)
            dr, dc = rng.normal(size=2)
            for t in np.linspace(-6, 6, 40):
                r, c = int(np.clip(r0 + t * dr, 0, 27)), int(np.clip(c0 + t * dc, 0, 27))
                templates[k, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = 255.0
    for prefix, count in (("train", per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), count))
        images = templates[labels] + rng.normal(0, noise, (len(labels), 28, 28))
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", np.clip(images, 0, 255).round().astype(np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return Path(root)
