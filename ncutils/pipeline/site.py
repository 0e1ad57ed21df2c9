"""The gallery: every executed notebook rendered to HTML, with an index page, readable offline.

``make site`` / ``python -m ncutils site`` renders ``notebooks/NN_*.ipynb`` (the paper runs a GitHub reader
sees) and every other executed profile under ``outputs/<stem>/<profile>/`` with nbconvert, and writes
``site/index.html``: one card per run with its paper, figures, parameters, wall time, what its theory checks
found ("n/m checks pass", the worst relative error and its check), when, from which commit and with which
ncutils version it ran (``metadata.ncutils``, :func:`ncutils.pipeline.runner.run_notebook`), and thumbnails of its
figures that open the full-size PNG (files next to the pages, so nothing is fetched from the network; the
notebook pages embed their images). Every notebook page has a navigation bar (the index, the previous and next
page, every page) and renders its formulas with the KaTeX shipped in ``static/katex`` (copied next to the
pages), not with MathJax from a CDN.

Every page carries small scripts that record, once the page has loaded, how many of its images failed to
decode (``data-broken-images`` on ``<html>``) and, on notebook pages, how many formulas KaTeX rendered
(``data-katex``) and how many it could not (``data-katex-errors``), which the tests read from headless Chromium.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
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

#: The vendored KaTeX (``static/katex``), copied into the site's ``katex/`` folder.
KATEX_DIR = Path(__file__).parent / "static" / "katex"

#: Injected into every notebook page's ``<head>``: KaTeX renders ``$…$``, ``$$…$$``, ``\(…\)`` and
#: ``\[…\]`` in the page's text (not in code or preformatted output) once the page is parsed; a formula KaTeX
#: cannot parse is shown as its source, marked ``.katex-error``; an unknown command is shown in ``errorColor``.
KATEX_HEAD = r"""<link rel="stylesheet" href="katex/katex.min.css">
<script defer src="katex/katex.min.js"></script>
<script defer src="katex/contrib/auto-render.min.js"></script>
<script>
document.addEventListener("DOMContentLoaded", function () {
  if (typeof renderMathInElement !== "function") { return; }
  renderMathInElement(document.body, {
    delimiters: [
      {left: "$$", right: "$$", display: true},
      {left: "\\[", right: "\\]", display: true},
      {left: "\\(", right: "\\)", display: false},
      {left: "$", right: "$", display: false}
    ],
    ignoredTags: ["script", "noscript", "style", "textarea", "pre", "code", "option"],
    ignoredClasses: ["ncutils-nav"],
    throwOnError: false,
    errorColor: "#cc0000"
  });
});
</script>"""

#: Injected into every notebook page: after ``load``, count the formulas KaTeX rendered and its errors (formulas
#: it could not parse, unknown commands),
#: and once the fonts are settled, the KaTeX fonts that loaded and those that failed to.
KATEX_PROBE = """<script>
window.addEventListener("load", function () {
  var root = document.documentElement;
  root.setAttribute("data-katex-loaded", String(typeof window.katex === "object"));
  root.setAttribute("data-katex", String(document.querySelectorAll(".katex").length));
  var unsupported = Array.prototype.filter.call(document.querySelectorAll(".katex"), function (k) {
    return Array.prototype.some.call(k.querySelectorAll(".katex-html [style*='color']"),
      function (el) { return el.style.color === "rgb(204, 0, 0)"; });  // a formula with an unknown command
  });
  root.setAttribute("data-katex-errors",
                    String(document.querySelectorAll(".katex-error").length + unsupported.length));
  document.fonts.ready.then(function () {
    var faces = [];
    document.fonts.forEach(function (f) { if (f.family.indexOf("KaTeX") >= 0) { faces.push(f); } });
    root.setAttribute("data-katex-fonts", String(faces.filter(function (f) { return f.status === "loaded"; }).length));
    root.setAttribute("data-katex-fonts-failed",
                      String(faces.filter(function (f) { return f.status === "error"; }).length));
  });
});
</script>"""


#: what ``gallery.json`` copies from each notebook's ``metadata.ncutils`` (where recorded)
RECORD_KEYS = ("checks_passed", "checks_total", "worst_rel_err", "worst_rel_err_check", "run_date", "commit",
               "ncutils_version")


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
    record: dict[str, Any] = field(default_factory=dict)  # the notebook's ``metadata.ncutils``, as recorded

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
    record = dict(record) if isinstance(record, dict) else {}
    params = dict(nb.metadata.get("papermill", {}).get("parameters", {}) or {})
    images = [base64.b64decode(o["data"]["image/png"]) for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    profile = str(record.get("profile") or params.get("profile") or profile)
    wall = record.get("wall_time_s")
    wall = float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None
    passed = record.get("passed") if isinstance(record.get("passed"), bool) else None
    return GalleryEntry(path, path.stem, profile, title, paper, params, wall, passed, images, record)


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


def _jinja():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(loader=PackageLoader("ncutils.pipeline", "templates"), autoescape=True,
                       undefined=StrictUndefined, keep_trailing_newline=True)


def _nav(entries: list[GalleryEntry], i: int) -> str:
    """The navigation bar of the ``i``-th page: the index, the previous and next page, every page."""
    def link(e: GalleryEntry) -> dict[str, str]:
        return {"page": e.page, "stem": e.stem, "profile": e.profile, "title": e.title or e.stem}

    return _jinja().get_template("gallery_nav.html.j2").render(
        prev=link(entries[i - 1]) if i > 0 else None, next=link(entries[i + 1]) if i + 1 < len(entries) else None,
        pages=[link(e) for e in entries], current=entries[i].page)


def _render(entry: GalleryEntry, nav: str = "") -> str:
    """The notebook's page (nbconvert's lab template): ``nav`` at the top of the body, KaTeX instead of MathJax,
    and nothing loaded from the network (no require.js, no mermaid loader where there is no diagram)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nbformat.read(entry.source, as_version=4))
    nav = nav or '<nav class="ncutils-nav"><a href="index.html">&larr; ncutils gallery</a></nav>'
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)
    # offline: no require.js (only widgets need it), no MathJax from a CDN (KaTeX from katex/ renders the TeX)
    body = re.sub(r'<script[^>]*src="https?://[^"]*require[^"]*"[^>]*>\s*</script>', "", body)
    body = re.sub(r'(<!-- Load mathjax -->\s*)?<script[^>]*src="https?://[^"]*mathjax[^"]*"[^>]*>\s*</script>', "",
                  body, flags=re.IGNORECASE)
    body = re.sub(r'(<!-- MathJax configuration -->\s*)?<script type="text/x-mathjax-config">.*?</script>'
                  r"(\s*<!-- End of mathjax configuration -->)?", "", body, flags=re.DOTALL)
    if 'class="jp-Mermaid' not in body:  # the lab template's mermaid loader imports from a CDN: not needed here
        body = re.sub(r'<script type="module">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*</script>', "", body,
                      flags=re.DOTALL)
    body = body.replace("</head>", KATEX_HEAD + "\n</head>", 1)
    return body.replace("</body>", IMAGE_PROBE + KATEX_PROBE + "</body>", 1)


def _fmt_params(params: dict[str, Any]) -> str:
    if not params:
        return "the notebook's defaults"
    return ", ".join(f"{k} = {v}" for k, v in params.items() if k not in ("results_dir", "figures_dir"))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _checks_text(record: dict[str, Any]) -> str:
    """``n/m checks pass``, from ``checks_passed``/``checks_total`` or, in a notebook run before they were
    recorded, from its per-check ``checks``."""
    n, m = _number(record.get("checks_passed")), _number(record.get("checks_total"))
    if n is None or m is None:
        checks = record.get("checks")
        if not isinstance(checks, dict) or not checks:
            return "checks not recorded"
        n, m = sum(v is True for v in checks.values()), len(checks)
    return f"{n:.0f}/{m:.0f} checks pass"


def _worst_text(record: dict[str, Any]) -> str:
    """The worst relative error (2 significant digits) and the check it belongs to."""
    if "worst_rel_err" not in record and "worst_rel_err_check" not in record:
        return "not recorded"
    err, check = _number(record.get("worst_rel_err")), record.get("worst_rel_err_name") or record.get(
        "worst_rel_err_check")
    if check is None:
        return "no relative-error checks"
    value = "not finite" if err is None or not math.isfinite(err) else f"{err:#.2g}".rstrip(".")
    return f"{value} ({check})"


def _date_text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "not recorded"
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M") + " UTC"


def _card(e: GalleryEntry) -> dict[str, Any]:
    status = {True: ("pass", "all theory checks pass"), False: ("fail", "some theory checks fail"),
              None: ("none", "no checks printed")}
    r = e.record if isinstance(e.record, dict) else {}
    text = {k: str(r[k]) if isinstance(r.get(k), (str, int, float)) and r.get(k) != "" else "not recorded"
            for k in ("commit", "ncutils_version")}
    return dict(page=e.page, stem=e.stem, title=e.title or e.stem, profile=e.profile, paper=e.paper,
                status=status[e.passed][0], status_text=status[e.passed][1],
                checks=_checks_text(r), worst=_worst_text(r), run_date=_date_text(r.get("run_date")), **text,
                wall=f"{e.wall_time_s:.0f} s" if e.wall_time_s is not None else "not recorded",
                params=_fmt_params(e.parameters),
                thumbs=[f"img/{Path(e.page).stem}-{i}.png" for i in range(len(e.images))])


def _index(entries: list[GalleryEntry]) -> str:
    """The gallery's index page: one card per executed notebook (template ``templates/gallery_index.html.j2``)."""
    return _jinja().get_template("gallery_index.html.j2").render(
        cards=[_card(e) for e in entries], passed=sum(e.passed is True for e in entries), image_probe=IMAGE_PROBE)


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
        shutil.copytree(KATEX_DIR, tmp / "katex", ignore=shutil.ignore_patterns("README.md"))
        for i, e in enumerate(entries):
            (tmp / e.page).write_text(_render(e, _nav(entries, i)), encoding="utf-8")
            for i, png in enumerate(e.images):
                (tmp / "img" / f"{Path(e.page).stem}-{i}.png").write_bytes(png)
        (tmp / "index.html").write_text(_index(entries), encoding="utf-8")
        (tmp / "gallery.json").write_text(json.dumps(
            [{"notebook": e.stem, "profile": e.profile, "page": e.page, "title": e.title, "paper": e.paper,
              "parameters": e.parameters, "wall_time_s": e.wall_time_s, "passed": e.passed,
              "figures": len(e.images), **{k: e.record.get(k) for k in RECORD_KEYS if k in e.record}}
             for e in entries], indent=2, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out / "index.html"
