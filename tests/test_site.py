"""The HTML gallery: built from the executed notebooks, opened in headless Chromium (skipped, with the reason
shown, where no Chromium is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ncutils.pipeline.runner import list_notebooks
from ncutils.pipeline.site import build_site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000", "--dump-dom"]


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
    assert not re.search(r'<script[^>]*src="https?://[^"]*require', (site / entries[0]["page"]).read_text())


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


def _image_counts(dom: str) -> tuple[int, int]:
    m = re.search(r'<html[^>]*data-images="(\d+)"[^>]*data-broken-images="(\d+)"', dom)
    assert m, f"the page's image probe did not run: {dom[:300]!r}"
    return int(m.group(1)), int(m.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium); "
                                              "the gallery was built but not opened in a browser")
def test_gallery_opens_in_headless_chromium_and_every_image_resolves(site, tmp_path):
    pages = [site / "index.html", *sorted(p for p in site.glob("*.html") if p.name != "index.html")]
    for page in pages:
        images, broken = _image_counts(_dom(page, tmp_path / "chromium"))
        assert broken == 0, f"{page.name}: {broken} of {images} images did not load"
        assert images >= 1, page.name
    # the probe can fail: a thumbnail removed from the gallery is reported as broken
    victim = sorted((site / "img").glob("*.png"))[0]
    victim.rename(victim.with_suffix(".gone"))
    try:
        assert _image_counts(_dom(site / "index.html", tmp_path / "chromium"))[1] == 1
    finally:
        victim.with_suffix(".gone").rename(victim)
