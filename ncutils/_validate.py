"""One way to check an argument: ``TypeError`` for a wrong type, ``ValueError`` for a bad value.

Every message has one format, ``parameter <name> must be <what is valid>, got <value>`` (plus
``(<type>)`` for a wrong type), so a user reads the same sentence from ``nc.setup``, the command line,
a model's constructor and a metric. :class:`Rule` describes one parameter (type, range, choices, an
extra check); the ``check_*`` functions are the shortcuts the library's own functions use.

:class:`ParameterTypeError` is both a ``TypeError`` and a ``ValueError``: code that catches
``ValueError`` for every bad argument (the runner, sweeps) keeps working.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ParameterTypeError", "Rule", "bad_type", "bad_value", "check_bool", "check_choice", "check_float",
           "check_floats", "check_hyperparameter", "check_int", "check_integer", "check_integers", "check_ints",
           "describe_range"]


class ParameterTypeError(TypeError, ValueError):
    """An argument of the wrong type (a ``TypeError``; also a ``ValueError`` for callers that catch that)."""


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a finite number", bool: "a bool (true/false)", str: "a string", list: "a list"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, f"a {k.__name__}") for k in kind)
    return names.get(kind, f"a {kind.__name__}")


def describe_range(low: float | None, high: float | None, strict_low: bool = False, strict_high: bool = False) -> str:
    """``[0, inf)``, ``(0, 1]`` …: the interval of valid values."""
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    left = "(" if strict_low or low is None else "["
    right = ")" if strict_high or high is None else "]"
    return f"{left}{lo}, {hi}{right}"


def _bad_type(name: str, what: str, value: Any) -> ParameterTypeError:
    return ParameterTypeError(f"parameter {name} must be {what}, got {value!r} ({type(value).__name__})")


def _bad_value(name: str, what: str, value: Any) -> ValueError:
    return ValueError(f"parameter {name} must be {what}, got {value!r}")


def bad_type(name: str, what: str, value: Any) -> ParameterTypeError:
    """The error for an argument of the wrong type: ``parameter <name> must be <what>, got <value> (<type>)``
    (for checks the ``check_*`` shortcuts do not cover: arrays, tensors, files)."""
    return _bad_type(name, what, value)


def bad_value(name: str, what: str, value: Any) -> ValueError:
    """The error for an argument with a bad value: ``parameter <name> must be <what>, got <value>``."""
    return _bad_value(name, what, value)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an integer in ``[low, high]`` (bools refused)."""
    what = "an integer" + (f" in {describe_range(low, high)}" if low is not None or high is not None else "")
    if isinstance(value, bool):
        raise _bad_type(name, what, value)
    try:
        value = operator.index(value)  # int, numpy integers, integer 0-d tensors
    except TypeError:
        raise _bad_type(name, what, value) from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise _bad_value(name, what, value)
    return value


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                strict_low: bool = False, strict_high: bool = False) -> float:
    """``float(value)`` if it is a finite real number in the interval (bools refused)."""
    what = f"a finite number in {describe_range(low, high, strict_low, strict_high)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        if hasattr(value, "__float__") and not isinstance(value, bool | str) and getattr(value, "ndim", 0) == 0:
            value = float(value)
        else:
            raise _bad_type(name, what, value)
    v = float(value)
    bad = not math.isfinite(v)
    bad |= low is not None and (v <= low if strict_low else v < low)
    bad |= high is not None and (v >= high if strict_high else v > high)
    if bad:
        raise _bad_value(name, what, value)
    return v


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise _bad_type(name, "a bool (true/false)", value)
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in tuple(choices):
        raise _bad_value(name, f"one of {tuple(choices)}", value)
    return value


def check_ints(name: str, values: Any, low: int | None = None, *, non_empty: bool = True) -> list[int]:
    """A list of integers ≥ ``low``."""
    what = "a non-empty list of integers" + (f" >= {low}" if low is not None else "")
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise _bad_type(name, what, values)
    if non_empty and not values:
        raise _bad_value(name, what, values)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _bad_type(name, what, values)
        if low is not None and v < low:
            raise _bad_value(name, what, values)
        out.append(v)
    return out


def check_floats(name: str, values: Any, low: float | None = None, *, strict_low: bool = False,
                 scalar_ok: bool = False) -> float | tuple[float, ...]:
    """A non-empty list of finite numbers in ``[low, inf)`` (``(low, inf)`` if ``strict_low``); with
    ``scalar_ok`` a single number is returned as a float (a per-run hyperparameter: one value or one per run)."""
    rng = describe_range(low, None, strict_low)
    if scalar_ok and (isinstance(values, int | float) and not isinstance(values, bool)):
        return check_float(name, values, low, strict_low=strict_low)
    what = f"a {'number or a ' if scalar_ok else ''}non-empty list of finite numbers in {rng}"
    if isinstance(values, str | bytes | bool) or not isinstance(values, Sequence):
        if hasattr(values, "tolist"):  # numpy arrays, tensors
            values = values.tolist()
            values = values if isinstance(values, list) else [values]
        else:
            raise _bad_type(name, what, values)
    if not values:
        raise _bad_value(name, what, values)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _bad_type(name, what, values)
        if not math.isfinite(v) or (low is not None and (v <= low if strict_low else v < low)):
            raise _bad_value(name, what, values)
    return tuple(float(v) for v in values)


def check_hyperparameter(name: str, value: Any, low: float = 0.0, strict: bool = False) -> Any:
    """A scalar-or-per-run hyperparameter: a finite number ≥ ``low`` (> if ``strict``), or a non-empty
    sequence of such numbers (one per run). A number is returned as given, a sequence as a tuple of floats."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        check_float(name, value, low, strict_low=strict)
        return value
    return check_floats(name, value, low, strict_low=strict, scalar_ok=True)


def check_integer(name: str, value: Any, low: int) -> int:
    """``value`` if it is an integer ≥ ``low`` (bools refused): :func:`check_int` with no upper bound."""
    return check_int(name, value, low)


def check_integers(obj: object, spec: tuple[tuple[str, int], ...]) -> None:
    """:func:`check_integer` on every attribute ``name`` of ``obj`` with its lower bound: ``((name, low), …)``."""
    for key, low in spec:
        check_integer(key, getattr(obj, key), low)


@dataclass(frozen=True)
class Rule:
    """Type and valid range of one parameter: ``validate(name, value)`` returns it checked (ints become
    floats where a float is expected) or raises ``ParameterTypeError`` / ``ValueError`` naming it."""

    kind: type
    low: float | None = None
    high: float | None = None
    strict_low: bool = False
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], object] | None = None
    doc: str = ""

    def describe(self) -> str:
        if self.choices:
            return f"one of {self.choices}"
        if self.low is None and self.high is None:
            return _type_name(self.kind)
        return f"{_type_name(self.kind)} in {describe_range(self.low, self.high, self.strict_low)}"

    def validate(self, name: str, value: Any) -> Any:
        is_bool = isinstance(value, bool)
        ok_type = is_bool if self.kind is bool else isinstance(value, self.kind) and not is_bool
        if self.kind is float and isinstance(value, int) and not is_bool:
            value, ok_type = float(value), True
        if not ok_type:
            raise _bad_type(name, self.describe(), value)
        if self.kind in (int, float):
            bad = not math.isfinite(value)
            bad |= self.low is not None and (value <= self.low if self.strict_low else value < self.low)
            bad |= self.high is not None and value > self.high
            if bad:
                raise _bad_value(name, self.describe(), value)
        if self.choices is not None and value not in self.choices:
            raise _bad_value(name, self.describe(), value)
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as err:
                text = str(err)
                prefixed = text.startswith(f"parameter {name} ")
                raise ValueError(text if prefixed else f"parameter {name}: {text}") from None
        return value
