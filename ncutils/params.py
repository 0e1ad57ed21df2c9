"""Notebook parameters: one vocabulary, one validator, one ``setup`` call.

Every notebook's ``parameters`` cell uses names from :data:`RULES` (the shared
vocabulary ``K, n, d, lambda_W, lambda_H, lr, steps, init_std, seed, device`` …).
:func:`validate` checks names, types and ranges before any compute and is used
both by the runner (before a kernel starts) and by :func:`setup` (first cell
after the parameters, so JupyterLab users get the same errors).
"""

from __future__ import annotations

import math
import platform
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import DATASETS, missing_files
from .device import resolve_device, resolve_dtype
from .models import RESNET_LAYERS
from .paths import resolve_path, write_json
from .train import LOSSES, SCHEDULES

__all__ = ["ASSUMPTIONS", "REQUIREMENTS", "RULES", "Requirement", "Rule", "Run", "check_requirements", "setup",
           "validate"]


@dataclass(frozen=True)
class Rule:
    """Type and valid range of one parameter."""

    kind: type
    low: float | None = None
    high: float | None = None
    strict_low: bool = False
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], object] | None = None

    def describe(self) -> str:
        if self.choices:
            return f"one of {self.choices}"
        if self.low is None and self.high is None:
            return f"a {self.kind.__name__}"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        bracket = "(" if self.strict_low else "["
        return f"a {self.kind.__name__} in {bracket}{lo}, {hi}{']' if self.high is not None else ')'}"

    def validate(self, name: str, value: Any) -> Any:
        is_bool = isinstance(value, bool)
        ok_type = is_bool if self.kind is bool else isinstance(value, self.kind) and not is_bool
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok_type = float(value), True
        if not ok_type:
            raise ValueError(f"parameter {name} must be {self.describe()}, got {value!r} ({type(value).__name__})")
        if self.kind in (int, float):
            bad = not math.isfinite(value)
            bad |= self.low is not None and (value <= self.low if self.strict_low else value < self.low)
            bad |= self.high is not None and value > self.high
            if bad:
                raise ValueError(f"parameter {name} must be {self.describe()}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"parameter {name} must be {self.describe()}, got {value!r}")
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as err:
                raise ValueError(f"parameter {name}: {err}") from None
        return value


def _int_list(low: int, what: str) -> Callable[[Any], None]:
    def check(values: Any) -> None:
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
            raise ValueError(f"must be a non-empty list of integers >= {low} ({what}), got {values!r}")
    return check


def _positive_list(what: str) -> Callable[[Any], None]:
    def check(values: Any) -> None:
        ok = bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                                  and v > 0 for v in values)
        if not ok:
            raise ValueError(f"must be a non-empty list of finite numbers > 0 ({what}), got {values!r}")
    return check


def _names(valid: tuple[str, ...], what: str) -> Callable[[Any], None]:
    def check(values: Any) -> None:
        bad = [v for v in values if v not in valid]
        if not values or bad:
            raise ValueError(f"must be a non-empty list of {what} from {valid}, got unknown {bad or 'empty list'}")
    return check


def _tag(value: str) -> None:
    if not value or not all(ch.isalnum() or ch in "-_" for ch in value):
        raise ValueError(f"must be a non-empty name of letters, digits, '-' or '_', got {value!r}")


def _h0_file(value: str) -> None:
    """An optional H₀ file: empty, or a readable .npy holding a 2-D array of finite numbers."""
    if not value:
        return
    path = resolve_path(value)
    if not path.is_file():
        raise ValueError(f"file {path} does not exist (expected a .npy array of shape (K n, d))")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path} as a .npy array: {err}") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path} must hold a 2-D numeric (K n, d) array, got shape {arr.shape} ({arr.dtype})")
    if not np.isfinite(arr).all():
        raise ValueError(f"H0 in {path} must be finite; it has {int((~np.isfinite(arr)).sum())} NaN/inf entries")


def _h0_shape(p: dict) -> bool:
    return not p["h0_file"] or np.load(resolve_path(p["h0_file"]), mmap_mode="r").shape == (p["K"] * p["n"], p["d"])


_nonneg = Rule(float, low=0.0)
_positive = Rule(float, low=0.0, strict_low=True)
RULES: dict[str, Rule] = {
    "K": Rule(int, low=2),
    "n": Rule(int, low=1),
    "d": Rule(int, low=1),
    "lambda_W": _nonneg,
    "lambda_H": _nonneg,
    "lr": Rule(float, low=0.0, strict_low=True),
    "steps": Rule(int, low=1),
    "record_every": Rule(int, low=1),
    "init_std": _nonneg,
    "seed": Rule(int, low=0),
    "device": Rule(str, check=resolve_device),
    "dtype": Rule(str, choices=("float64", "float32")),
    "sweep_points": Rule(int, low=2),
    "sweep_c_max": Rule(float, low=0.0, strict_low=True),
    "sweep_steps": Rule(int, low=1),
    "results_dir": Rule(str),
    "figures_dir": Rule(str),
    "profile": Rule(str),
    # multi-layer UFMs (notebooks 02–04)
    "lambda_W1": _positive,
    "lambda_W2": _positive,
    "lambda_H1": _positive,
    "activation": Rule(str, choices=("relu", "linear")),
    "seeds": Rule(int, low=1),
    "studies": Rule(bool),
    "stall_init_std": _positive,
    "init_scales": Rule(list, check=_positive_list("initialization stds")),
    "sweep_ratio_max": _positive,
    "sweep_seeds": Rule(int, low=1),
    "tag": Rule(str, check=_tag),
    "width": Rule(int, low=1),
    "depths": Rule(list, check=_int_list(1, "depths L")),
    "multi_K": Rule(int, low=2),
    "multi_n": Rule(int, low=1),
    "multi_width": Rule(int, low=1),
    "multi_L": Rule(int, low=1),
    "multi_steps": Rule(int, low=1),
    "multi_init_std": _positive,
    "width_study": Rule(list, check=_int_list(1, "widths")),
    "lambda_study": Rule(list, check=_positive_list("weight decays")),
    "study_steps": Rule(int, low=1),
    # perturbation model (notebook 05)
    "beta": _positive,
    "jacobian_lambda_H": Rule(list, check=_positive_list("lambda_H values of the Jacobian study")),
    "h0_std": _positive,
    "h0_file": Rule(str, check=_h0_file),
    "flow_t_max": _positive,
    "flow_records": Rule(int, low=2),
    "beta_min": _positive,
    "beta_max": _positive,
    "beta_points": Rule(int, low=2),
    "chain_data": Rule(str, choices=("mnist", "fake")),
    "data_root": Rule(str),
    "chain_per_class": Rule(int, low=2),
    "chain_width": Rule(int, low=11),
    "chain_epochs": Rule(int, low=1),
    "chain_layers": Rule(int, low=1),
    "chain_betas": Rule(list, check=_positive_list("beta values of the layer-wise chain")),
    # layer-peeled model (notebook 06)
    "num_records": Rule(int, low=2),
    "wd_lambda": _positive,
    "wd_steps": Rule(int, low=1),
    "maxmargin_starts": Rule(int, low=1),
    "margin_tol": _positive,
    # ResNet18 on real data (notebook 07)
    "dataset": Rule(str, choices=tuple(DATASETS)),
    "loss": Rule(str, choices=LOSSES),
    "fc_bias": Rule(bool),
    "schedule": Rule(str, choices=SCHEDULES),
    "epochs": Rule(int, low=1),
    "batch_size": Rule(int, low=1),
    "momentum": _nonneg,
    "wd_features": _nonneg,
    "wd_classifier": _nonneg,
    "per_class": Rule(int, low=1),
    "test_per_class": Rule(int, low=0),
    "layers": Rule(list, check=_names(RESNET_LAYERS, "ResNet18 layers")),
    "flatten": Rule(bool),
    "measure_every": Rule(int, low=1),
    "checkpoint_every": Rule(int, low=1),
    "compile": Rule(bool),
    "fake_data": Rule(bool),
    "width_multiplier": _positive,
    "max_cpu_hours": _positive,
    # phase diagrams (notebook 08)
    "lambda_min": _positive,
    "lambda_max": _positive,
    "grid_points": Rule(int, low=2),
    "dufm_L": Rule(int, low=2),
    "eufm_activation": Rule(str, choices=("relu", "linear")),
    "dufm_activation": Rule(str, choices=("relu", "linear")),
    "chunk": Rule(int, low=0),
    "band": Rule(float, low=0.0),
    "tol": _positive,
    "min_fraction": Rule(float, low=0.0, high=1.0),
}

#: Assumptions of the theorem a notebook reproduces: (holds?, message). Runs go on, but say so.
ASSUMPTIONS: dict[str, list[tuple[Callable[[dict], bool], str]]] = {
    "01_ufm_mse": [
        (lambda p: p["d"] >= p["K"],
         "d < K: Tirer & Bruna's Theorem 3.1 assumes d >= K (an orthogonal frame of K means needs "
         "K dimensions); the run goes on but the closed forms need not apply"),
    ],
}


@dataclass(frozen=True)
class Requirement:
    """A hard requirement on some parameters (``names``): ``holds(params)`` or the run fails with ``message``."""

    names: tuple[str, ...]
    holds: Callable[[dict], bool]
    message: str | Callable[[dict], str]
    machine: bool = False  # depends on this machine (dataset files, device), not only on the parameters


def _width_at_least_K(width: str, K: str) -> Requirement:
    return Requirement((width, K), lambda p: min(p[width]) >= p[K] if isinstance(p[width], list) else p[width] >= p[K],
                       f"parameter {width} must be >= {K} (every level must hold an orthogonal frame of {K} "
                       "class means for the collapsed optimum to exist)")


#: Hard requirements of a notebook's theory: a run whose parameters break one fails before any compute.
REQUIREMENTS: dict[str, list[Requirement]] = {
    "02_linear_eufm": [_width_at_least_K("d", "K")],
    "03_relu_eufm": [_width_at_least_K("d", "K")],
    "04_deep_ufm": [_width_at_least_K("width", "K"), _width_at_least_K("multi_width", "multi_K"),
                    _width_at_least_K("width_study", "multi_K")],
    "05_perturbation": [
        Requirement(("d", "K"), lambda p: p["d"] > p["K"], "parameter d must be > K (Theorem 4.2 assumes d > K)"),
        Requirement(("lambda_W",), lambda p: p["lambda_W"] > 0,
                    "parameter lambda_W must be > 0 (the central path W*(H) needs it)"),
        Requirement(("lambda_W", "lambda_H"), lambda p: p["lambda_W"] * p["lambda_H"] < 1,
                    "parameters lambda_W * lambda_H must be < 1 (else the minimizer is H = 0: nothing collapses)"),
        Requirement(("lambda_W", "jacobian_lambda_H"),
                    lambda p: all(p["lambda_W"] * v < 1 for v in p["jacobian_lambda_H"]),
                    "parameters lambda_W * jacobian_lambda_H must all be < 1 (Theorem 4.2 needs a collapsed H0)"),
        Requirement(("beta_min", "beta_max"), lambda p: p["beta_min"] < p["beta_max"],
                    "parameter beta_min must be < beta_max"),
        Requirement(("h0_file", "K", "n", "d"), _h0_shape,
                    "parameter h0_file must hold an array of shape (K n, d), rows class-major"),
        Requirement(("chain_data", "data_root"),
                    lambda p: p["chain_data"] != "mnist" or missing_files("mnist", p["data_root"]) is None,
                    lambda p: f"parameter data_root: {missing_files('mnist', p['data_root'])}", machine=True),
    ],
    "08_phase_diagrams": [
        _width_at_least_K("d", "K"),
        Requirement(("lambda_min", "lambda_max"), lambda p: p["lambda_min"] < p["lambda_max"],
                    "parameter lambda_min must be < lambda_max"),
    ],
    "07_resnet": [
        Requirement(("dataset", "data_root", "fake_data"),
                    lambda p: p["fake_data"] or missing_files(p["dataset"], p["data_root"]) is None,
                    lambda p: f"parameter data_root: {missing_files(p['dataset'], p['data_root'])}", machine=True),
        Requirement(("device", "width_multiplier", "per_class", "epochs", "max_cpu_hours"),
                    lambda p: resolve_device(p["device"]).type != "cpu" or _resnet_cpu_hours(p) <= p["max_cpu_hours"],
                    lambda p: (f"this run needs about {_resnet_cpu_hours(p):.3g} CPU hours (ResNet18 training ≈ 3.3 "
                               "GFLOP per 32×32 image at width 1, assumed 50 GFLOP/s): run it on a GPU (device "
                               "cuda), lower width_multiplier/per_class/epochs (profile cpu), or raise max_cpu_hours"),
                    machine=True),
    ],
}


def _resnet_cpu_hours(p: dict) -> float:
    """Rough CPU time of a ResNet18 run: 3 × 1.11 GFLOP per image and epoch at width 1 (∝ width²), 50 GFLOP/s."""
    images = p["per_class"] * 10 * p["epochs"]
    return 3 * 1.11e9 * p["width_multiplier"] ** 2 * images / 50e9 / 3600


def check_requirements(notebook: str, params: dict[str, Any], machine: bool = True) -> None:
    """Raise ``ValueError`` for the first :data:`REQUIREMENTS` entry of ``notebook`` that ``params`` break
    (requirements on parameters that are not given are skipped; ``machine=False`` skips those that depend on
    this machine: dataset files, the device)."""
    for req in REQUIREMENTS.get(notebook, []):
        if req.machine and not machine:
            continue
        if not all(name in params for name in req.names):
            continue
        if not req.holds(params):
            message = req.message(params) if callable(req.message) else req.message
            raise ValueError(f"{message}; got {({name: params[name] for name in req.names})}")


def validate(params: dict[str, Any], declared: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check names, types and ranges; return the validated parameters.

    ``declared``: the notebook's own parameter names (from its ``parameters``
    cell); a name outside it is rejected, listing the valid names.
    """
    valid = set(RULES) if declared is None else set(declared)
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; valid parameters are {sorted(valid)}")
    out = {}
    for name, value in params.items():
        rule = RULES.get(name)
        out[name] = rule.validate(name, value) if rule is not None else value
    return out


@dataclass
class Run:
    """What a notebook needs after :func:`setup`: validated parameters, device, folders."""

    notebook: str
    params: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    results_dir: Path
    figures_dir: Path
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON into the results folder, atomically."""
        return write_json(self.results_dir / name, obj, default=float)

    def environment(self) -> dict[str, str]:
        """Versions of python, torch, ncutils and the device (for the closing cell)."""
        from . import __version__

        dev = str(self.device)
        if self.device.type == "cuda":
            dev += f" ({torch.cuda.get_device_name(self.device)})"
        return {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "ncutils": __version__, "device": dev}


def setup(notebook: str, **params: Any) -> Run:
    """Validate every parameter, seed all generators, pick the device, create the folders.

    Raises ``ValueError`` naming the parameter and its valid range. Prints a note
    (and keeps it in ``Run.notes``) for each theorem assumption the parameters break.
    ``results_dir`` defaults to ``outputs/<notebook>/<profile>`` under the repository
    root; relative folders are resolved against the repository root, never the cwd.
    """
    p = validate(params)
    check_requirements(notebook, p)
    seed = p.get("seed", 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = resolve_device(p.get("device", "auto"))
    dtype = resolve_dtype(p.get("dtype", "float64"))
    results = p.get("results_dir") or f"outputs/{notebook}/{p.get('profile', 'default')}"
    run = Run(notebook, p, device, dtype, resolve_path(results), resolve_path(p.get("figures_dir", "figures")))
    run.results_dir.mkdir(parents=True, exist_ok=True)
    run.figures_dir.mkdir(parents=True, exist_ok=True)
    for holds, message in ASSUMPTIONS.get(notebook, []):
        try:
            broken = not holds(p)
        except KeyError:  # the assumption involves a parameter this call does not set
            broken = False
        if broken:
            run.notes.append(message)
            print("NOTE:", message)
    return run
