"""The HTML gallery: built from the executed notebooks, opened in headless Chromium (skipped, with the reason
shown, where no Chromium is installed)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from ncutils.pipeline.runner import list_notebooks
from ncutils.pipeline.site import build_site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# no network: every host name fails to resolve, so a page that needs a CDN shows it
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000", "--dump-dom"]
#: a script, stylesheet or module loaded from the network
REMOTE = re.compile(r"""<script\b[^>]*\ssrc=["']?(https?:)?//|<link\b[^>]*\shref=["']?(https?:)?//"""
                    r"""|@import\s+(url\()?["']?(https?:)?//|\bimport\(\s*["'](https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.mktemp("gallery") / "site").parent


def test_index_lists_every_executed_notebook_with_its_metadata(site):
    entries = json.loads((site / "gallery.json").read_text())
    stems = {e["notebook"] for e in entries}
    assert stems == {p.stem for p in list_notebooks()}  # every committed notebook is executed
    index = (site / "index.html").read_text()
    for e in entries:
        assert (site / e["page"]).is_file() and f'href="{e["page"]}"' in index
        assert e["passed"] in (True, False) and e["paper"] and e["title"]
        assert e["figures"] >= 1
    assert "wall time" in index and "all theory checks pass" in index
    assert re.search(r'<span class="checks">\d+/\d+ checks pass</span>', index) and "worst relative error" in index
    for thumb in re.findall(r'<a href="([^"]+)"[^>]*><img src="([^"]+)"', index):  # thumbnails open the figure
        assert thumb[0] == thumb[1] and thumb[0].startswith("img/") and (site / thumb[0]).is_file()
    assert not re.search(r'<script[^>]*src="https?://[^"]*require', (site / entries[0]["page"]).read_text())


def test_no_page_loads_a_script_or_stylesheet_from_the_network_and_katex_ships_with_the_site(site):
    for page in site.glob("*.html"):
        text = page.read_text()
        assert not REMOTE.search(text), f"{page.name}: {REMOTE.search(text).group(0)!r}"
        assert "mathjax" not in text.lower(), page.name
        if page.name != "index.html":
            assert 'href="katex/katex.min.css"' in text and 'src="katex/katex.min.js"' in text
            assert 'src="katex/contrib/auto-render.min.js"' in text
    for name in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js", "LICENSE"):
        assert (site / "katex" / name).is_file(), name
    fonts = {p.name for p in (site / "katex" / "fonts").iterdir()}
    assert "KaTeX_Main-Regular.woff2" in fonts and all(f.endswith(".woff2") for f in fonts)
    css = (site / "katex" / "katex.min.css").read_text()
    assert all((site / "katex" / f).is_file() for f in re.findall(r"url\((fonts/[^)]+\.woff2)\)", css))


def _nav_links(page: str) -> tuple[str, dict[str, str], list[str]]:
    """A page's navigation bar: its markup, its rel= links (index, prev, next) and the list of every page."""
    m = re.search(r'<nav class="ncutils-nav".*?</nav>', page, re.DOTALL)
    assert m, "no navigation bar"
    nav = m.group(0)
    rels = {rel: href for href, rel in re.findall(r'<a href="([^"]+)" rel="(\w+)"', nav)}
    listed = re.findall(r'<li><a href="([^"]+)"', nav)
    return nav, rels, listed


def test_every_notebook_page_links_to_the_index_its_neighbours_and_every_page(site):
    pages = [e["page"] for e in json.loads((site / "gallery.json").read_text())]
    assert len(pages) >= 2
    for i, name in enumerate(pages):
        text = (site / name).read_text()
        nav, rels, listed = _nav_links(text)
        assert text.index(nav) < text.index('class="jp-Cell '), "the bar comes before the notebook"
        assert rels.get("index") == "index.html"
        assert rels.get("prev") == (pages[i - 1] if i > 0 else None), name
        assert rels.get("next") == (pages[i + 1] if i + 1 < len(pages) else None), name
        assert listed == pages
        assert f'href="{name}" title="' in nav and 'aria-current="page"' in nav
        for href in re.findall(r'href="([^"#]+)"', nav):
            assert (site / href).is_file(), f"{name}: {href} is not in the site"
        entry = json.loads((site / "gallery.json").read_text())[i]
        assert f"{entry['notebook']} <span" in nav and entry["profile"] in nav  # stem + profile


def test_a_card_shows_what_the_checks_found_and_where_the_run_came_from():
    from ncutils.pipeline.site import GalleryEntry, _index

    record = {"profile": "small", "wall_time_s": 12.0, "passed": False, "checks": {"f": True, "big": False},
              "checks_passed": 3, "checks_total": 5, "worst_rel_err": 0.30412, "worst_rel_err_check": "big",
              "worst_rel_err_name": "big <one>", "run_date": "2025-03-04T05:06:07+00:00", "commit": "abc1234-dirty",
              "ncutils_version": "0.2.0"}
    e = GalleryEntry(Path("x.ipynb"), "09_x", "small", "T", "P", {}, 12.0, False, [b"png", b"png"], record)
    index = _index([e])
    assert '<span class="checks">3/5 checks pass</span>' in index
    assert '<span class="worst">0.30 (big &lt;one&gt;)</span>' in index
    assert "2025-03-04 05:06 UTC" in index and ">abc1234-dirty<" in index and ">0.2.0<" in index
    assert '<a href="img/09_x.small-1.png" title="figure 2, full size"><img src="img/09_x.small-1.png"' in index
    assert '<h2><a href="09_x.small.html">T</a>' in index
    small = dict(record, worst_rel_err=3.14159e-5, worst_rel_err_name=None, run_date="2025-03-04T07:06:07+02:00")
    index = _index([GalleryEntry(Path("x.ipynb"), "09_x", "small", "T", "P", {}, 1.0, True, [], small)])
    assert '<span class="worst">3.1e-05 (big)</span>' in index and "2025-03-04 05:06 UTC" in index

    def card(r):
        return _index([GalleryEntry(Path("x"), "x", "p", "T", "P", {}, 1.0, True, [], r)])

    assert "not finite (big &lt;one&gt;)" in card(dict(record, worst_rel_err=None))
    none = dict(record, worst_rel_err=None, worst_rel_err_check=None, worst_rel_err_name=None)
    assert "no relative-error checks" in card(none)


@pytest.mark.parametrize("record", [
    {}, {"profile": "paper", "wall_time_s": 3.0, "passed": True},  # notebooks run before these were recorded
    {"checks": {"a": True, "b": False, "c": True}},
    {"checks": ["a"], "checks_passed": "x", "worst_rel_err": "big", "run_date": 5, "commit": None,
     "ncutils_version": ["0.1"], "passed": "yes", "wall_time_s": "slow"},  # malformed: shown, not fatal
    {"run_date": "last tuesday", "worst_rel_err_check": "a"},
])
def test_a_card_of_an_older_or_odd_record_says_not_recorded_and_never_crashes(tmp_path, record):
    from nbformat.v4 import new_markdown_cell, new_notebook

    from ncutils.pipeline.site import _entry, _index

    nb = new_notebook(cells=[new_markdown_cell("# 98 — Old\n\n**A, B, 2020**")])
    nb.metadata["ncutils"] = record
    path = tmp_path / "98_old.ipynb"
    nbformat.write(nb, path)
    index = _index([_entry(path, "paper")])
    assert "not recorded" in index and index.count("<section") == 1
    if record.get("checks") == {"a": True, "b": False, "c": True}:
        assert "2/3 checks pass" in index  # from the per-check record of an older run
    if record.get("run_date") == "last tuesday":
        assert "last tuesday" in index and "not finite (a)" in index


def test_index_escapes_notebook_text():
    from ncutils.pipeline.site import GalleryEntry, _index

    evil = GalleryEntry(Path("x.ipynb"), "09_x", "small", "UFM <script>alert(1)</script>", "A & B",
                        {"loss": "<b>mse</b>", "results_dir": "hidden"}, None, False, [b"png"])
    index = _index([evil])
    assert "<script>alert" not in index and "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "A &amp; B" in index and "loss = &lt;b&gt;mse&lt;/b&gt;" in index and "hidden" not in index
    assert 'class="card fail"' in index and "some theory checks fail" in index and "not recorded" in index
    assert 'href="09_x.small.html"' in index and 'src="img/09_x.small-0.png"' in index
    assert index.count("<section") == 1 and "1 executed notebooks; 0 pass" in index


def _dom(page: Path, profile: Path) -> str:
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    return out.stdout


def _katex_counts(dom: str) -> tuple[int, int, int, int]:
    """Formulas KaTeX rendered and could not render, KaTeX fonts that loaded and that failed (the page's probe)."""
    html = re.search(r"<html[^>]*>", dom)
    attrs = dict(re.findall(r'(data-katex[\w-]*)="([^"]*)"', html.group(0) if html else ""))
    assert "data-katex" in attrs and "data-katex-fonts" in attrs, f"the page's KaTeX probe did not run: {dom[:300]!r}"
    return (int(attrs["data-katex"]), int(attrs["data-katex-errors"]), int(attrs["data-katex-fonts"]),
            int(attrs["data-katex-fonts-failed"]))


def _has_formulas(notebook: Path) -> bool:
    nb = nbformat.read(notebook, as_version=4)
    return any(re.search(r"\$[^$\n]+\$", c.source) for c in nb.cells if c.cell_type == "markdown")


def _image_counts(dom: str) -> tuple[int, int]:
    m = re.search(r'<html[^>]*data-images="(\d+)"[^>]*data-broken-images="(\d+)"', dom)
    assert m, f"the page's image probe did not run: {dom[:300]!r}"
    return int(m.group(1)), int(m.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium); "
                                              "the gallery was built but not opened in a browser")
def test_gallery_opens_in_headless_chromium_and_every_image_resolves(site, tmp_path):
    pages = [site / "index.html", *sorted(p for p in site.glob("*.html") if p.name != "index.html")]
    sources = {e["page"]: e["notebook"] for e in json.loads((site / "gallery.json").read_text())}
    for page in pages:
        dom = _dom(page, tmp_path / "chromium")
        images, broken = _image_counts(dom)
        assert broken == 0, f"{page.name}: {broken} of {images} images did not load"
        assert images >= 1, page.name
        if page.name == "index.html":
            continue
        rendered, errors, fonts, font_errors = _katex_counts(dom)  # offline: KaTeX and its fonts from katex/
        assert errors == 0 and font_errors == 0, f"{page.name}: {errors} formulas, {font_errors} fonts failed"
        if _has_formulas(next(p for p in list_notebooks() if p.stem == sources[page.name])):
            assert rendered >= 1 and fonts >= 1, f"{page.name}: {rendered} formulas rendered, {fonts} fonts"
    assert any(_has_formulas(p) for p in list_notebooks())
    # the probe can fail: a thumbnail removed from the gallery is reported as broken
    victim = sorted((site / "img").glob("*.png"))[0]
    victim.rename(victim.with_suffix(".gone"))
    try:
        assert _image_counts(_dom(site / "index.html", tmp_path / "chromium"))[1] == 1
    finally:
        victim.with_suffix(".gone").rename(victim)


def _synthetic_notebook(path: Path) -> Path:
    """A notebook with every delimiter KaTeX renders here, a formula it cannot parse, TeX-like text in a
    code output (left alone) and a figure."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    fig, _ = plt.subplots(figsize=(1, 1))
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    md = ("# 99 — Formulas\n\n**Someone, A paper, 2024**\n\nInline $\\Sigma_W$, display $$\\frac{1}{K}$$, "
          "in brackets \\\\(c_k\\\\), unknown $\\notamacro x$, wrong $x^2^3$.")
    outputs = [new_output("stream", name="stdout", text="$x$ \\(y\\) stays text\n"),
               new_output("display_data", data={"text/html": "<p>\\(h_i\\) and \\[g\\]</p>"}),
               new_output("display_data", data={"text/latex": "$$\\alpha$$"}),
               new_output("display_data", data={"image/png": base64.b64encode(png.getvalue()).decode()})]
    nb = new_notebook(cells=[new_markdown_cell(md), new_code_cell("show()", outputs=outputs)])
    nb.metadata["ncutils"] = {"profile": "paper", "wall_time_s": 1.0, "passed": True, "checks": {"a": True},
                              "checks_passed": 1, "checks_total": 1, "worst_rel_err": 0.01, "worst_rel_err_check": "a",
                              "run_date": "2025-01-02T03:04:05+00:00", "commit": "abc1234", "ncutils_version": "0.2.0"}
    nbformat.write(nb, path)
    return path


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
def test_formulas_render_offline_with_the_vendored_katex_and_errors_are_counted(tmp_path, monkeypatch):
    from ncutils.pipeline import site as site_module

    entries = [site_module._entry(_synthetic_notebook(tmp_path / f"9{i}_formulas.ipynb"), "paper") for i in (8, 9)]
    monkeypatch.setattr(site_module, "gallery_entries", lambda: entries)
    out = build_site(tmp_path / "site").parent
    page = out / "99_formulas.html"
    listed = json.loads((out / "gallery.json").read_text())[1]
    assert listed["commit"] == "abc1234" and listed["checks_passed"] == listed["checks_total"] == 1
    assert listed["worst_rel_err"] == 0.01 and listed["run_date"].startswith("2025-01-02")
    assert "1/1 checks pass" in (out / "index.html").read_text()
    assert not REMOTE.search(page.read_text())
    rendered, errors, fonts, font_errors = _katex_counts(_dom(page, tmp_path / "chromium"))
    # $…$, $$…$$, \\(…\\) in markdown (nbconvert writes it as $…$), \\(…\\) and \\[…\\] in HTML, $$…$$ in LaTeX
    assert (rendered, errors) == (7, 2) and fonts >= 1 and font_errors == 0  # 6 right, \\notamacro, x^2^3
    _, rels, listed = _nav_links(page.read_text())
    assert rels == {"index": "index.html", "prev": "98_formulas.html"} and listed == ["98_formulas.html", page.name]
    # the probe can fail: without the site's katex/ folder nothing renders (and nothing is fetched instead)
    shutil.rmtree(out / "katex")
    assert _katex_counts(_dom(page, tmp_path / "chromium"))[:2] == (0, 0)
