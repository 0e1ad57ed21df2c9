"""The gallery: every executed notebook rendered to HTML, with an index page, readable offline.

``make site`` / ``python -m ncutils site`` renders ``notebooks/NN_*.ipynb`` (the paper runs a GitHub reader
sees) and every other executed profile under ``outputs/<stem>/<profile>/`` with nbconvert, and writes
``site/index.html``: one card per run with its paper, figures, parameters, wall time, the pass/fail of its
theory checks and thumbnails of its figures (PNG files next to the pages, so nothing is fetched from the
network; the notebook pages embed their images). Every page carries a small script that records, once the
page has loaded, how many of its images failed to decode (``data-broken-images`` on ``<html>``), which the
tests read from headless Chromium.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from ..paths import _umask, repo_root, resolve_path
from .runner import figure_profiles, list_notebooks

__all__ = ["GalleryEntry", "build_site", "gallery_entries"]

#: Injected into every page: after ``load``, count images that did not resolve or decode.
IMAGE_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.documentElement.setAttribute("data-images", String(imgs.length));
  document.documentElement.setAttribute("data-broken-images", String(broken.length));
  document.documentElement.setAttribute("data-broken-sources",
    JSON.stringify(broken.map(function (i) { return i.getAttribute("src").slice(0, 80); })));
});
</script>"""


@dataclass
class GalleryEntry:
    """One executed notebook: where it is, what it reproduces, how it ran."""

    source: Path
    stem: str
    profile: str
    title: str
    paper: str
    parameters: dict[str, Any]
    wall_time_s: float | None
    passed: bool | None
    images: list[bytes] = field(default_factory=list)

    @property
    def page(self) -> str:
        return f"{self.stem}.html" if self.profile == "paper" else f"{self.stem}.{self.profile}.html"


def _markdown_header(nb: Any) -> tuple[str, str]:
    """Title (the first ``#`` line) and the paper line (the first bold paragraph) of a notebook."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = cell.source.splitlines()
            title = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")), "")
            paper = " ".join(cell.source.split("**")[1].split()) if cell.source.count("**") >= 2 else ""
            return title, paper.replace("*", "")
    return "", ""


def _entry(path: Path, profile: str) -> GalleryEntry:
    nb = nbformat.read(path, as_version=4)
    title, paper = _markdown_header(nb)
    record = nb.metadata.get("ncutils", {})
    params = dict(nb.metadata.get("papermill", {}).get("parameters", {}) or {})
    images = [base64.b64decode(o["data"]["image/png"]) for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    profile = record.get("profile") or params.get("profile") or profile
    return GalleryEntry(path, path.stem, profile, title, paper, params,
                        record.get("wall_time_s"), record.get("passed"), images)


def gallery_entries() -> list[GalleryEntry]:
    """Every executed notebook: ``notebooks/NN_*.ipynb`` (its paper run; a notebook never executed is left
    out) and ``outputs/<stem>/<profile>/<stem>.ipynb`` of every other profile ``make figures`` ran."""
    entries: list[GalleryEntry] = []
    for path in list_notebooks():
        nb = nbformat.read(path, as_version=4)
        if any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
            entries.append(_entry(path, "paper"))
        for other in sorted((repo_root() / "outputs" / path.stem).glob(f"*/{path.stem}.ipynb")):
            entry = _entry(other, other.parent.name)
            if other.parent.name in figure_profiles(path) and entry.page not in {e.page for e in entries}:
                entries.append(entry)  # (the committed notebook may itself be a non-paper profile's run, as 07's)
    return entries


def _render(entry: GalleryEntry) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nbformat.read(entry.source, as_version=4))
    back = '<p style="margin:1em 2em"><a href="index.html">&larr; ncutils gallery</a></p>'
    body = re.sub(r"(<body[^>]*>)", r"\1" + back, body, count=1)
    # offline: no require.js (only widgets need it); MathJax loads asynchronously where there is a network
    # and the TeX source stays readable where there is none
    body = re.sub(r'<script[^>]*src="https://[^"]*require[^"]*"[^>]*></script>', "", body)
    body = re.sub(r'<script(?=[^>]*src="https://[^"]*mathjax)', "<script async", body)
    return body.replace("</body>", IMAGE_PROBE + "</body>", 1)


def _fmt_params(params: dict[str, Any]) -> str:
    if not params:
        return "the notebook's defaults"
    return ", ".join(f"{k} = {v}" for k, v in params.items() if k not in ("results_dir", "figures_dir"))


def _index(entries: list[GalleryEntry]) -> str:
    """The gallery's index page: one card per executed notebook (template ``templates/gallery_index.html.j2``)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("ncutils.pipeline", "templates"), autoescape=True, undefined=StrictUndefined,
                      keep_trailing_newline=True)
    status = {True: ("pass", "all theory checks pass"), False: ("fail", "some theory checks fail"),
              None: ("none", "no checks printed")}
    cards = [dict(page=e.page, stem=e.stem, title=e.title or e.stem, profile=e.profile, paper=e.paper,
                  status=status[e.passed][0], status_text=status[e.passed][1],
                  wall=f"{e.wall_time_s:.0f} s" if e.wall_time_s is not None else "not recorded",
                  params=_fmt_params(e.parameters),
                  thumbs=[f"img/{Path(e.page).stem}-{i}.png" for i in range(len(e.images))]) for e in entries]
    return env.get_template("gallery_index.html.j2").render(
        cards=cards, passed=sum(e.passed is True for e in entries), image_probe=IMAGE_PROBE)


def build_site(output: str | os.PathLike[str] = "site") -> Path:
    """Render the gallery into ``output`` (relative paths under the repository root); returns ``index.html``.

    The folder is built next to ``output`` and swapped in at the end, so a failed build leaves the last
    gallery intact. Raises ``ValueError`` when no notebook has been executed.
    """
    entries = gallery_entries()
    if not entries:
        raise ValueError("no executed notebook to render: run make figures first")
    out = resolve_path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700: the gallery is for collaborators too
    try:
        (tmp / "img").mkdir()
        for e in entries:
            (tmp / e.page).write_text(_render(e), encoding="utf-8")
            for i, png in enumerate(e.images):
                (tmp / "img" / f"{Path(e.page).stem}-{i}.png").write_bytes(png)
        (tmp / "index.html").write_text(_index(entries), encoding="utf-8")
        (tmp / "gallery.json").write_text(json.dumps(
            [{"notebook": e.stem, "profile": e.profile, "page": e.page, "title": e.title, "paper": e.paper,
              "parameters": e.parameters, "wall_time_s": e.wall_time_s, "passed": e.passed,
              "figures": len(e.images)} for e in entries], indent=2, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out / "index.html"
