"""GD-versus-theory checks: one record per closed-form quantity, a rounded table, summary.json."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FLOOR", "check", "check_id", "checks_table", "count_check", "seeds_table", "summary"]

_ID = re.compile(r"^[a-z0-9][a-z0-9_.=-]*$")

FLOOR = 1e-8


def _order(e: float) -> str:
    """An error as its order of magnitude (``<1e-3``), ``<1e-08`` below :data:`FLOOR`."""
    e = abs(e)
    if not math.isfinite(e):
        return str(e)
    return f"<{FLOOR:.0e}" if e < FLOOR else f"<1e{math.floor(math.log10(e)) + 1}"


def _value(e: float) -> str:
    """An error or a small metric with two significant digits (``1.9e-02``); ``<1e-08`` below :data:`FLOOR`
    (round-off, whose digits differ between BLAS builds)."""
    if not math.isfinite(e):
        return str(e)
    return "0" if e == 0 else f"<{FLOOR:.0e}" if abs(e) < FLOOR else f"{e:.1e}"


def check_id(label: str) -> str:
    """The default stable id of a check: its label in lower case, every run of other characters as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def check(name: str, gd: float, theory: float, tol: float, kind: str = "rel", *, id: str | None = None,
          ) -> dict[str, Any]:
    """Compare a GD value with its theoretical prediction.

    ``name`` is the display label; ``id`` the stable key of the check in ``summary.json`` and sweep tables
    (default :func:`check_id` of the label — pass one explicitly when the label holds numbers that depend
    on the run, such as the worst point of a sweep).

    ``kind="rel"``: error |gd − theory| / |theory| (theory ≠ 0); ``kind="abs"``:
    |gd − theory| (for quantities predicted to be 0, such as NC1). ``passed`` is
    ``error <= tol`` (False for non-finite values). ``kind="below"``: the claim is that GD goes
    *below* the theory value (e.g. a loss below f_DNC); error (gd − theory)/|theory|, passed iff
    it is < −tol.
    """
    gd, theory = float(gd), float(theory)
    key = check_id(name) if id is None else id
    if not _ID.match(key):
        raise ValueError(f"parameter id must be lower-case letters, digits and _ . = -, got {key!r}")
    if kind not in ("rel", "abs", "below"):
        raise ValueError(f"parameter kind must be one of ('rel', 'abs', 'below'), got {kind!r}")
    if kind in ("rel", "below") and theory == 0:
        raise ValueError(f"check {name!r}: a relative error needs a non-zero theory value; use kind='abs'")
    if kind == "below":
        err = (gd - theory) / abs(theory)
        passed = math.isfinite(err) and err < -tol
        return {"id": key, "name": name, "gd": gd, "theory": theory, "rel_diff": err, "kind": kind, "tol": tol,
                "passed": passed}
    err = abs(gd - theory) / (abs(theory) if kind == "rel" else 1.0)
    passed = math.isfinite(err) and err <= tol
    return {"id": key, "name": name, "gd": gd, "theory": theory, "rel_err" if kind == "rel" else "abs_err": err,
            "kind": kind, "tol": tol, "passed": passed}


def checks_table(checks: list[dict[str, Any]], digits: int = 4) -> pd.DataFrame:
    """A rounded table (for printing; nbval-stable): values to ``digits`` significant digits, the measured
    error with two significant digits next to its tolerance, and how much of the tolerance it uses
    (``error / tol``; a check passes when that is ≤ 1, for ``below`` checks when the difference is < −tol).
    Count checks (:func:`count_check`) print ``count/total`` and the required count.
    Anything below ``FLOOR`` = 1e-8 prints as ``<1e-08``: such values are round-off,
    and their digits differ between BLAS builds."""

    def sig(x: float) -> str:
        return "0" if x == 0 else f"<{FLOOR:.0e}" if abs(x) < FLOOR else f"{x:.{digits}g}"

    import pandas as pd

    rows = []
    for c in checks:
        if c["kind"] == "count":
            rows.append({"quantity": c["name"], "GD": f"{c['count']}/{c['total']}", "theory": "",
                         "error": f"need >= {c['required']}", "tol": "", "used": "",
                         "ok": "PASS" if c["passed"] else "FAIL"})
            continue
        if c["kind"] == "below":
            err = c["rel_diff"]
            error = f"below {err:+.1e}"
        else:
            err = c.get("rel_err", c.get("abs_err"))
            error = f"{c['kind']} {_value(err)}"
        used = 0.0 if err == 0 else abs(err) / c["tol"] if c["tol"] > 0 and math.isfinite(err) else math.inf
        rows.append({"quantity": c["name"], "GD": sig(c["gd"]), "theory": sig(c["theory"]),
                     "error": error, "tol": f"{c['tol']:g}",
                     "used": "-" if c["kind"] == "below" else ("<0.01" if used < 0.01 else f"{used:.2f}"),
                     "ok": "PASS" if c["passed"] else "FAIL"})
    return pd.DataFrame(rows).set_index("quantity")


def seeds_table(table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """A printable, nbval-stable version of a seed table (``ncutils.studies._multilayer.seed_table``): objective
    to ``digits`` digits, the relative error and every metric column (``max_nc1``, ``nc1_H1``, ``nc2_H2``, …)
    with two significant digits (values below ``FLOOR`` as ``<1e-08``)."""

    import pandas as pd

    out = pd.DataFrame({"run": table.run, "objective": [f"{x:.{digits}g}" for x in table.objective],
                        "rel_err": [_value(x) for x in table.rel_err], "status": table.status,
                        "min rank": table.min_rank})
    for col in table.columns:
        if col.startswith("nc") or col == "max_nc1":
            out[col.replace("_", " ", 1) if col.startswith("nc") else "max NC1"] = [_value(x) for x in table[col]]
    return out.set_index("run")


def count_check(name: str, count: int, total: int, required: int, *, id: str | None = None) -> dict[str, Any]:
    """A claim about how many runs (seeds) show a property: ``count`` of ``total`` did, and the check passes
    iff ``count >= required`` (e.g. "8/10 seeds: NC2(H2) < 1e-3", required 1 when the claim is that GD can
    reach it, ``total`` when the claim is that every seed does)."""
    count, total, required = int(count), int(total), int(required)
    if not 0 <= count <= total:
        raise ValueError(f"parameter count must be in [0, total={total}], got {count}")
    if not 0 <= required <= total:
        raise ValueError(f"parameter required must be in [0, total={total}], got {required}")
    key = check_id(name) if id is None else id
    if not _ID.match(key):
        raise ValueError(f"parameter id must be lower-case letters, digits and _ . = -, got {key!r}")
    return {"id": key, "name": name, "count": count, "total": total, "required": required, "kind": "count",
            "gd": count / total if total else math.nan, "theory": 1.0, "tol": 0.0, "passed": count >= required}


def summary(params: dict[str, Any], checks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The machine-readable summary: ``{"params", "checks", "passed", **extra}``; check ids must be unique."""
    ids = [c.get("id") for c in checks]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"parameter checks holds duplicate ids {dup}: pass id= to check() to tell them apart")
    return {"params": params, "checks": checks, "passed": all(c["passed"] for c in checks), **extra}
