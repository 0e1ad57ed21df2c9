"""What every study shares: the common parameter vocabulary, requirements and assumptions.

A study (one module per notebook, :mod:`ncutils.studies`) declares ``RULES`` only for the parameters
that are its own; every other name its notebook declares takes its rule from :data:`COMMON_RULES`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import Rule, check_floats, check_ints
from ..device import resolve_device

__all__ = ["COMMON_RULES", "Assumption", "Requirement", "Rule", "best_run", "int_list", "names", "positive_list",
           "width_at_least"]


def int_list(low: int, what: str, non_empty: bool = True) -> Callable[[Any], None]:
    """A check for a (``non_empty``) list of integers ≥ ``low`` (``what`` names them in the message)."""
    kind = "a non-empty list" if non_empty else "a list"

    def check(values: Any) -> None:
        try:
            check_ints(what, values, low, non_empty=non_empty)
        except ValueError:
            raise ValueError(f"must be {kind} of integers >= {low} ({what}), got {values!r}") from None

    return check


def positive_list(what: str) -> Callable[[Any], None]:
    """A check for a non-empty list of finite numbers > 0."""

    def check(values: Any) -> None:
        try:
            check_floats(what, values, 0.0, strict_low=True)
        except ValueError:
            raise ValueError(f"must be a non-empty list of finite numbers > 0 ({what}), got {values!r}") from None

    return check


def names(valid: tuple[str, ...], what: str) -> Callable[[Any], None]:
    """A check for a non-empty list of names from ``valid``."""

    def check(values: Any) -> None:
        bad = [v for v in values if v not in valid]
        if not values or bad:
            raise ValueError(f"must be a non-empty list of {what} from {valid}, got unknown {bad or 'empty list'}")

    return check


def _tag(value: str) -> None:
    if not value or not all(ch.isalnum() or ch in "-_" for ch in value):
        raise ValueError(f"must be a non-empty name of letters, digits, '-' or '_', got {value!r}")


NONNEG = Rule(float, low=0.0)
POSITIVE = Rule(float, low=0.0, strict_low=True)

#: The shared vocabulary: parameters that mean the same in every notebook that declares them.
COMMON_RULES: dict[str, Rule] = {
    "K": Rule(int, low=2),
    "n": Rule(int, low=1),
    "d": Rule(int, low=1),
    "lambda_W": NONNEG,
    "lambda_H": NONNEG,
    "lr": POSITIVE,
    "steps": Rule(int, low=1, high=10**9),  # 1e9 GD steps already take hours to days
    "record_every": Rule(int, low=1),
    "init_std": NONNEG,
    "seed": Rule(int, low=0),
    "seeds": Rule(int, low=1),
    "device": Rule(str, check=resolve_device),
    "dtype": Rule(str, choices=("float64", "float32")),
    "sweep_points": Rule(int, low=2),
    "sweep_steps": Rule(int, low=1, high=10**9),
    "study_steps": Rule(int, low=1, high=10**9),
    "tag": Rule(str, check=_tag),
    "data_root": Rule(str),
    "results_dir": Rule(str),
    "figures_dir": Rule(str),
    "profile": Rule(str),
}


@dataclass(frozen=True)
class Requirement:
    """A hard requirement on some parameters (``names``): ``holds(params)`` or the run fails with ``message``."""

    names: tuple[str, ...]
    holds: Callable[[dict], bool]
    message: str | Callable[[dict], str]
    machine: bool = False  # depends on this machine (dataset files, device), not only on the parameters


@dataclass(frozen=True)
class Assumption:
    """An assumption of the theorem a notebook reproduces: runs that break it go on, but say so."""

    holds: Callable[[dict], bool]
    message: str


def width_at_least(width: str, K: str) -> Requirement:
    """Every level (``width``: an int or a list of ints) must hold an orthogonal frame of ``K`` means."""
    return Requirement(
        (width, K),
        lambda p: min(p[width]) >= p[K] if isinstance(p[width], list) else p[width] >= p[K],
        f"parameter {width} must be >= {K} (every level must hold an orthogonal frame of {K} "
        "class means for the collapsed optimum to exist)",
    )


def physical_memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def feature_memory_bytes(p: dict) -> float:
    """A lower bound on what a UFM run holds: features, classifier and targets in float64, their gradients and
    the GD buffers (×4), for every batched run (``seeds``); the widest level counts (``d`` or ``width``)."""
    K, n = p.get("K", 1), p.get("n", 1)
    width = max(p.get("d", 1), p.get("width", 1), p.get("multi_width", 1))
    runs = p.get("seeds", 1)
    return 8.0 * 4 * runs * (K * n * width + K * width + K * n * K)


#: Requirements every notebook shares: what this machine can hold.
COMMON_REQUIREMENTS: list[Requirement] = [
    Requirement(("K", "n"), lambda p: feature_memory_bytes(p) <= 0.8 * physical_memory_bytes(),
                lambda p: (f"parameters K, n, d (and seeds) need about {feature_memory_bytes(p) / 2**30:.3g} GiB of "
                           f"memory; this machine has {physical_memory_bytes() / 2**30:.3g} GiB: lower them"),
                machine=True),
]


def best_run(gd: Any) -> int:
    """Index of the run with the lowest final objective (``gd``: a :class:`ncutils.solve.GDResult`)."""
    return int(np.argmin(gd.final("objective")))
