"""GD-versus-theory checks: one record per closed-form quantity, a rounded table, summary.json."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

__all__ = ["FLOOR", "check", "checks_table", "summary"]

FLOOR = 1e-8


def check(name: str, gd: float, theory: float, tol: float, kind: str = "rel") -> dict[str, Any]:
    """Compare a GD value with its theoretical prediction.

    ``kind="rel"``: error |gd − theory| / |theory| (theory ≠ 0); ``kind="abs"``:
    |gd − theory| (for quantities predicted to be 0, such as NC1). ``passed`` is
    ``error <= tol`` (False for non-finite values).
    """
    gd, theory = float(gd), float(theory)
    if kind not in ("rel", "abs"):
        raise ValueError(f"kind must be 'rel' or 'abs', got {kind!r}")
    if kind == "rel" and theory == 0:
        raise ValueError(f"check {name!r}: a relative error needs a non-zero theory value; use kind='abs'")
    err = abs(gd - theory) / (abs(theory) if kind == "rel" else 1.0)
    passed = math.isfinite(err) and err <= tol
    return {"name": name, "gd": gd, "theory": theory, "rel_err" if kind == "rel" else "abs_err": err,
            "kind": kind, "tol": tol, "passed": passed}


def checks_table(checks: list[dict[str, Any]], digits: int = 4) -> pd.DataFrame:
    """A rounded table (for printing; nbval-stable): values to ``digits`` significant
    digits, errors as their order of magnitude, pass/fail against the tolerance.
    Anything below ``FLOOR`` = 1e-8 prints as ``<1e-08``: such values are round-off,
    and their digits differ between BLAS builds."""

    def sig(x: float) -> str:
        return "0" if x == 0 else f"<{FLOOR:.0e}" if abs(x) < FLOOR else f"{x:.{digits}g}"

    def order(e: float) -> str:
        if not math.isfinite(e):
            return str(e)
        return f"<{FLOOR:.0e}" if e < FLOOR else f"<1e{math.floor(math.log10(e)) + 1}"

    rows = []
    for c in checks:
        err = c.get("rel_err", c.get("abs_err"))
        rows.append({"quantity": c["name"], "GD": sig(c["gd"]), "theory": sig(c["theory"]),
                     "error": f"{c['kind']} {order(err)}", "tol": f"{c['tol']:g}",
                     "ok": "PASS" if c["passed"] else "FAIL"})
    return pd.DataFrame(rows).set_index("quantity")


def summary(params: dict[str, Any], checks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The machine-readable summary: ``{"params", "checks", "passed", **extra}``."""
    return {"params": params, "checks": checks, "passed": all(c["passed"] for c in checks), **extra}
