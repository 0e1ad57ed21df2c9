"""The claims rule, enforced: every number a notebook's results prose quotes is one its own outputs print.

A notebook's markdown after its first code cell (the results prose; the intro before it states the papers'
settings and derivations) may quote a decimal number (``0.0235``, ``1.2e-7``, ``11.7%``) only when the executed
notebook prints a number that rounds to it at the precision quoted (sign aside; ``x%`` matches x/100 too).
Not counted: formulas (``$…$``), references (``Thm 4.2``, ``Fig. 3``, ``Eq. 5``, ``§4``, versions). A number
from another profile's run, a derived ratio or a rounded-up digit that no output shows fails here: quote what
is printed, or print it (and check it) first. Runs on the committed notebooks (no execution).
"""

from __future__ import annotations

import math
import re

import nbformat
import pytest

from ncutils.paths import repo_root

NOTEBOOKS = sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: A decimal number in prose: 0.0235, −3.6, 1.2e-7, 4.9e−16 (no leading digit run glued to a word or a dot).
PROSE_NUMBER = re.compile(r"(?<![\w.^/])([−-]?\d+\.\d+(?:[eE][−-]?\d+)?)(?![\w.]*\d)(\s*%)?")
#: Numbers in printed output, any format.
PRINTED_NUMBER = re.compile(r"[-−]?\d+(?:\.\d*)?(?:[eE][-+−]?\d+)?")
REFERENCE = re.compile(r"(?:Thm|Theorem|Cor|Corollary|Fig|Figs|Figure|Eq|Eqs|Equation|§|Section|Sec|Lemma|Table|"
                       r"Appendix|App|Prop|Proposition|Def|Definition|Remark|Alg|Algorithm|version|v)\.?\s*$")
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`\n]*`", re.S)


def printed_numbers(nb: nbformat.NotebookNode) -> list[float]:
    out: list[float] = []
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = o.get("text") or o.get("data", {}).get("text/plain") or o.get("data", {}).get("text/html") or ""
            for s in PRINTED_NUMBER.findall("".join(text)):
                try:
                    out.append(abs(float(s.replace("−", "-"))))
                except ValueError:
                    pass
    return out


def quoted_numbers(nb: nbformat.NotebookNode) -> list[tuple[int, str, float, float]]:
    """(cell index, as written, value, half a unit of its last digit) of every decimal the results prose quotes."""
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown" or i < first_code:
            continue
        text = MATH.sub(" ", cell.source)
        for m in PROSE_NUMBER.finditer(text):
            if REFERENCE.search(text[max(0, m.start() - 14):m.start()]):
                continue
            s = m.group(1).replace("−", "-")
            mantissa, _, exp = s.lower().partition("e")
            half = 0.5 * 10.0 ** (-len(mantissa.split(".")[1]) + (int(exp) if exp else 0))
            value = abs(float(s))
            found.append((i, m.group(0).strip(), value / 100 if m.group(2) else value, half / 100 if m.group(2)
                          else half))
    return found


def unmatched(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    printed = printed_numbers(nb)
    return [(i, s) for i, s, x, half in quoted_numbers(nb)
            if not any(math.isclose(v, x, rel_tol=0, abs_tol=half * 1.0001) for v in printed)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_number_the_results_prose_quotes_is_printed_by_the_notebook(path):
    bad = unmatched(nbformat.read(path, as_version=4))
    assert not bad, (f"{path.name}: the prose quotes numbers that no output of the notebook prints "
                     f"(cell index, number): {bad}")


def test_the_rule_finds_an_invented_or_rounded_up_number():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("Intro: the paper uses lr 0.5."),  # before the first code cell: not counted
        nbformat.v4.new_code_cell("print(...)", outputs=[nbformat.v4.new_output(
            "stream", name="stdout",
            text="NC1 0.023456, slope -0.517, err 1.2e-07, L 0.120436 vs 0.136396, srg_vs_dnc -0.117012\n")]),
        nbformat.v4.new_markdown_cell(
            "NC1 ends at 0.0235 (slope −0.52; Thm 4.2, Fig. 3.5), error 1.2e-7, $x = 0.75$, `tol 0.3`, "
            "11.7% below; the GD run 0.0231 and a rate 2.5 are not printed."),
    ])
    assert unmatched(nb) == [(2, "0.0231"), (2, "2.5")]
