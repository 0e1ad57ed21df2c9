"""Datasets through :mod:`torchvision.datasets`: balanced, normalized, class-major tensors.

``load_dataset("mnist" | "cifar10", root)`` reads (or, with ``download=True``, fetches)
the standard files with torchvision's own loaders, so any copy torchvision can read
works here too. A missing copy gives :class:`DatasetNotFoundError` naming the folder
that was searched and how to get the files. No augmentation.

For tests and offline CI, :func:`write_fake_mnist` and :func:`write_fake_cifar10` write
small files in the datasets' real on-disk formats (MNIST IDX; CIFAR-10's pickled
``data_batch_*``) that the same torchvision code reads. (CIFAR-10's loader also checks
the published MD5 sums, which fake files cannot match: ``verify=False`` skips only that.)

:class:`DeviceBatches` keeps a whole training set on the device as one tensor and
shuffles and batches it there (no DataLoader workers).
"""

from __future__ import annotations

import math
import os
import pickle
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._validate import check_choice, check_integer
from .paths import atomic_path, resolve_path

__all__ = ["DATASETS", "FILES", "Dataset", "DatasetFormatError", "DatasetNotFoundError", "DeviceBatches",
           "balanced_subset", "check_idx_pair", "load_dataset", "missing_files", "write_fake_cifar10",
           "write_fake_mnist"]

#: Supported datasets: name → (torchvision class name, classes, per-channel mean, per-channel std).
DATASETS: dict[str, tuple[str, int, tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ("MNIST", 10, (0.1307,), (0.3081,)),
    "cifar10": ("CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
#: The files torchvision reads, relative to the data root.
FILES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(f"MNIST/raw/{f}" for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    "cifar10": tuple(f"cifar-10-batches-py/{f}" for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                                                          "batches.meta")),
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not under the data root (and could not be downloaded)."""


class Dataset(NamedTuple):
    """Images ``X (N, C, H, W)`` float32, normalized; labels ``y (N,)`` int64, class-major."""

    X: Tensor
    y: Tensor


Dataset.__new__.__module__ = __name__  # NamedTuple's generated __new__ resolves annotations here (pdoc)


def _check_name(name: str) -> str:
    return check_choice("dataset", name, tuple(DATASETS))


def _not_found(name: str, folder: Path, reason: str | None = None) -> str:
    how = (f"download=True could not fetch them ({reason})" if reason else
           "pass download=True (needs internet), or point the data root at an existing copy "
           "(make figures DATA_ROOT=/path/to/data)")
    sub = Path(FILES[name][0]).parent
    files = ", ".join(Path(f).name for f in FILES[name])
    return f"{name} not found: looked for {files} in {folder / sub}; {how}"


def missing_files(name: str, root: str | os.PathLike[str] = "data") -> str | None:
    """None when ``name``'s files are under ``root`` (relative: to the repository root), else the message
    :func:`load_dataset` would raise — so a run can stop before any compute."""
    folder = resolve_path(root)
    ok = all((folder / f).is_file() for f in FILES[_check_name(name)])
    return None if ok else _not_found(name, folder)


def balanced_subset(y: Tensor, per_class: int, num_classes: int, seed: int = 0) -> Tensor:
    """Indices of ``per_class`` random samples of every class, class-major (class 0 first), ``(K·per_class,)``."""
    check_integer("per_class", per_class, 1)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(num_classes):
        idx = torch.nonzero(y == k).flatten()
        if len(idx) < per_class:
            raise ValueError(f"per_class = {per_class} but class {k} has only {len(idx)} samples")
        out.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]].sort().values)
    return torch.cat(out)


class DatasetFormatError(ValueError):
    """A dataset file is there but is not what its name says (bad magic number, size, or label values)."""


def check_idx_pair(images: Path, labels: Path, K: int = 10) -> int:
    """Check an MNIST IDX image file and its label file before torchvision reads them: magic numbers
    (0x00000803 / 0x00000801), dimensions against the file sizes, the same sample count, labels in
    ``[0, K)``. Returns the sample count; raises :class:`DatasetFormatError` naming the file and the remedy."""
    remedy = "replace it with the published file (or pass download=True where there is internet)"

    def header(path: Path, magic: int, ndim: int) -> tuple[int, ...]:
        raw = path.read_bytes()[: 4 + 4 * ndim]
        if len(raw) < 4 + 4 * ndim:
            size = path.stat().st_size
            raise DatasetFormatError(f"{path} is {size} bytes, too short for an IDX header; {remedy}")
        got, *dims = struct.unpack(f">{1 + ndim}I", raw)
        if got != magic:
            raise DatasetFormatError(f"{path}: magic number 0x{got:08x}, expected 0x{magic:08x} (IDX "
                                     f"{'labels' if ndim == 1 else 'images'}); {remedy}")
        expected = 4 + 4 * ndim + math.prod(dims)
        if path.stat().st_size != expected:
            raise DatasetFormatError(f"{path} is {path.stat().st_size} bytes but its header {tuple(dims)} needs "
                                     f"{expected}: truncated or padded; {remedy}")
        return tuple(dims)

    (n_img, *_) = header(images, 0x00000803, 3)
    (n_lab,) = header(labels, 0x00000801, 1)
    if n_img != n_lab:
        raise DatasetFormatError(f"{images} holds {n_img} images but {labels} {n_lab} labels; {remedy}")
    values = np.frombuffer(labels.read_bytes()[8:], dtype=np.uint8)
    bad = np.flatnonzero(values >= K)
    if bad.size:
        raise DatasetFormatError(f"{labels}: label {int(values[bad[0]])} at sample {int(bad[0])} is not a class "
                                 f"in [0, {K}) ({bad.size} such labels); {remedy}")
    return n_img


def _torchvision_class(name: str, verify: bool) -> type:
    import torchvision

    cls = getattr(torchvision.datasets, DATASETS[name][0])
    if verify or name != "cifar10":
        return cls
    # the same torchvision reader, without the published MD5 sums (which only the real files match)
    return type("CIFAR10Unverified", (cls,), {"train_list": [[f, None] for f, _ in cls.train_list],
                                              "test_list": [[f, None] for f, _ in cls.test_list],
                                              "meta": {**cls.meta, "md5": None}})


def load_dataset(name: str, root: str | os.PathLike[str] = "data", train: bool = True, per_class: int | None = None,
                 download: bool = False, seed: int = 0, pad_to: int | None = None, verify: bool = True) -> Dataset:
    """Load ``name`` (``"mnist"``, ``"cifar10"``) from ``root`` via torchvision, normalized with the usual mean/std.

    ``per_class``: a balanced random subset (``seed``) in class-major order; default: all samples,
    sorted class-major (stable). ``download``: let torchvision fetch missing files. ``pad_to``: zero-pad
    (after normalization: with the background value) to this size, e.g. MNIST 28 → 32 for the CIFAR
    stem. ``verify``: CIFAR-10's MD5 check (False only for test files). Relative roots are resolved
    against the repository root.

    Raises :class:`DatasetNotFoundError` (missing files, no network) and ``ValueError`` (bad arguments).
    """
    _, K, mean, std = DATASETS[_check_name(name)]
    if pad_to is not None:
        check_integer("pad_to", pad_to, 1)
    folder = resolve_path(root)
    cls = _torchvision_class(name, verify)
    if name == "mnist" and missing_files(name, folder) is None:
        prefix = "train" if train else "t10k"
        raw = folder / "MNIST" / "raw"
        check_idx_pair(raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte", K)
    try:
        ds = cls(root=str(folder), train=train, download=download)
    except (RuntimeError, OSError, AssertionError, ValueError) as err:  # torchvision's refusals; no network
        first = str(err).splitlines()[0]
        if missing_files(name, folder) is None:  # the files are there but torchvision refused them
            raise DatasetNotFoundError(f"{name} files under {folder} could not be read ({first}): corrupted, or "
                                       "not the published files (verify=False skips the MD5 check)") from None
        raise DatasetNotFoundError(_not_found(name, folder, first if download else None)) from None
    X = ds.data
    X = torch.as_tensor(np.asarray(X)) if not isinstance(X, Tensor) else X
    X = X.to(torch.float32).div_(255.0)
    X = X.unsqueeze(1) if X.ndim == 3 else X.permute(0, 3, 1, 2)
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    idx = balanced_subset(y, per_class, K, seed) if per_class is not None else torch.argsort(y, stable=True)
    X, y = X[idx], y[idx]
    m = torch.tensor(mean).reshape(1, -1, 1, 1)
    s = torch.tensor(std).reshape(1, -1, 1, 1)
    X = (X - m) / s
    if pad_to is not None and pad_to > X.shape[-1]:
        p0 = (pad_to - X.shape[-1]) // 2
        p1 = pad_to - X.shape[-1] - p0
        X = torch.nn.functional.pad(X, (p0, p1, p0, p1), value=0.0) + torch.nn.functional.pad(
            torch.zeros_like(X), (p0, p1, p0, p1), value=1.0) * (-m / s)
    return Dataset(X.contiguous(), y)


class DeviceBatches:
    """A dataset held on ``device`` as one tensor, reshuffled every epoch from a seeded generator.

    ``X (N, …)``, ``y (N,)``; ``epoch()`` yields ``(X_batch, y_batch)`` views in a fresh random order
    (the permutation is drawn on the CPU generator, so a run is identical on CPU and GPU); its
    state is ``generator.get_state()`` (checkpointed by the trainer). ``channels_last`` stores images
    in NHWC memory order (faster convolutions on GPU).
    """

    def __init__(self, X: Tensor, y: Tensor, batch_size: int, device: torch.device | str = "cpu", seed: int = 0,
                 channels_last: bool = False, shuffle: bool = True) -> None:
        check_integer("batch_size", batch_size, 1)
        self.X = X.to(device, non_blocking=True)
        if channels_last and self.X.ndim == 4:
            self.X = self.X.contiguous(memory_format=torch.channels_last)
        self.y = y.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def epoch(self):
        order = (torch.randperm(len(self.y), generator=self.generator) if self.shuffle
                 else torch.arange(len(self.y))).to(self.y.device)
        for idx in order.split(self.batch_size):
            yield self.X[idx], self.y[idx]


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file (the MNIST format): magic 0x0000_08_<ndim>, big-endian sizes, uint8 data; written atomically."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with atomic_path(path) as tmp:
        tmp.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


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


def write_fake_cifar10(root: str | os.PathLike[str], per_class: int = 10, test_per_class: int = 5, seed: int = 0,
                       noise: float = 50.0) -> Path:
    """Write a tiny CIFAR-10 look-alike in the real layout ``root/cifar-10-batches-py/{data_batch_1..5,
    test_batch, batches.meta}`` (pickled dicts with ``data`` uint8 (n, 3072) and ``labels``).

    Each class is a fixed random colour pattern plus noise; ``per_class`` training images per class are
    spread over the five batches. Read it with ``load_dataset("cifar10", root, verify=False)``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    templates = rng.uniform(0, 255, (10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)  # blocky 32×32

    def dump(name: str, obj: dict) -> None:
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(pickle.dumps(obj))

    def images(count: int) -> tuple[np.ndarray, list[int]]:
        labels = rng.permutation(np.repeat(np.arange(10), count))
        data = templates[labels] + rng.normal(0, noise, (len(labels), 3, 32, 32))
        return np.clip(data, 0, 255).round().astype(np.uint8).reshape(len(labels), 3072), labels.tolist()

    data, labels = images(per_class)
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        dump(f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": data[part],
                                 "labels": [labels[j] for j in part]})
    data, labels = images(test_per_class)
    dump("test_batch", {"batch_label": "testing batch 1 of 1", "data": data, "labels": labels})
    dump("batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                          "ship", "truck"], "num_cases_per_batch": 10000, "num_vis": 3072})
    return Path(root)
