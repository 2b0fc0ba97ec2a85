"""A one-page HTML report: metrics, learning curves, prediction panels. No JavaScript, no CDN.

Every local ``<img src>`` and ``<a href>`` a report holds is a URL relative to the report file itself,
so the report opens from any working directory and keeps working when its folder is moved or copied
together with its neighbours. :func:`image_tag` and :func:`link_tag` build such references from file
paths; :func:`write_report` checks every local reference once more when it writes the page.
"""

from __future__ import annotations

import html
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:.6em 0 1em}figcaption,.note{color:#666;font-size:.9em}
.gallery{display:flex;flex-wrap:wrap;gap:0 1.5em}.gallery figure{margin:.3em 0 .8em}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0}
pre{background:#f7f7f7;border:1px solid #eee;padding:.6em;overflow-x:auto;font-size:.85em}
.missing{color:#999}a.missing::after{content:" (not written)"}
"""

PathLike = str | os.PathLike


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p class=note>(none)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def locate(path: PathLike, report_dir: PathLike) -> str | None:
    """The absolute path of the existing file ``path`` names, or None when there is none.

    ``path`` is absolute or, like any path, relative to the working directory. For callers that wrote
    it relative to the report instead (``../pretrain/real.png``), a relative path that names nothing
    from the working directory but an existing file from ``report_dir`` is taken relative to
    ``report_dir``.
    """
    path = os.fspath(path)
    candidates = [os.path.abspath(path)]
    if not os.path.isabs(path):
        candidates.append(os.path.abspath(os.path.join(os.fspath(report_dir), path)))
    return next((c for c in candidates if os.path.exists(c)), None)


def relative_url(path: PathLike, report_dir: PathLike) -> str:
    """``path`` as a URL relative to a page in ``report_dir``: forward slashes, percent-quoted.

    Both are made absolute first (against the working directory), so either may be relative.
    """
    target, base = os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(report_dir))
    try:
        rel = os.path.relpath(target, base)
    except ValueError:  # another drive (Windows): no relative path exists
        return Path(target).as_uri()
    return quote(rel.replace(os.sep, "/"), safe="/")


def image_tag(path: PathLike, relative_to: PathLike, caption: str = "") -> str:
    """A ``<figure>`` showing the image file ``path`` in a report written into the folder ``relative_to``.

    ``path`` is absolute or relative to the working directory (see :func:`locate`); the ``src``
    written is relative to ``relative_to``. An image that does not exist is not referenced: the
    figure says "not written" instead.
    """
    found = locate(path, relative_to)
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    if found is None:
        name = html.escape(Path(path).name)
        return f"<figure><p class=missing>(image {name} not written)</p>{cap}</figure>"
    src = html.escape(relative_url(found, relative_to))
    return f'<figure><img src="{src}" alt="{html.escape(caption)}">{cap}</figure>'


def link_tag(target: PathLike, relative_to: PathLike, text: str) -> str:
    """An ``<a>`` to the file ``target`` (e.g. another run's report.html) from a report in ``relative_to``.

    ``target`` follows :func:`locate`; a target that does not exist (yet) is still linked, relative to
    the working directory, and :func:`write_report` marks it "not written" if it is still missing then.
    """
    found = locate(target, relative_to) or os.path.abspath(os.fspath(target))
    return f'<a href="{html.escape(relative_url(found, relative_to))}">{html.escape(text)}</a>'


class _Attributes(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attrs = attrs

    handle_startendtag = handle_starttag


def _attributes(tag_text: str) -> list[tuple[str, str | None]]:
    parser = _Attributes()
    parser.feed(tag_text)
    parser.close()
    return parser.attrs


def _render(tag: str, attrs: list[tuple[str, str | None]]) -> str:
    parts = [tag] + [name if value is None else f'{name}="{html.escape(value)}"' for name, value in attrs]
    return "<" + " ".join(parts) + ">"


def _local_target(url: str) -> tuple[str, str] | None:
    """(file path, '#fragment' or '') of a URL that names a local file; None for web/data/anchor URLs."""
    parts = urlsplit(url)
    if parts.scheme not in ("", "file") or (parts.scheme == "file" and parts.netloc not in ("", "localhost")):
        return None
    if not parts.path:
        return None  # "#anchor" or "?query" on the page itself
    if parts.scheme == "" and parts.netloc:
        return None  # //host/...
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return unquote(parts.path), fragment


_TAG = re.compile(r"<(img|a)\b[^>]*>", re.IGNORECASE)


def fix_local_references(body: str, report_dir: PathLike, page: PathLike | None = None) -> str:
    """Make every local ``img src``/``a href`` in ``body`` relative to ``report_dir``; mark dead ones.

    A reference that already names an existing file relative to the report stays as it is; one that
    names an existing file from the working directory (or an absolute path) is rewritten relative to
    the report; one that names nothing becomes a "not written" note (images) or a marked link with no
    target (links), so a report never shows a broken picture. ``page``, the report being written, counts
    as existing (a link to itself).
    """
    report_dir = os.path.abspath(os.fspath(report_dir))
    page = os.path.abspath(os.fspath(page)) if page is not None else None

    def exists(candidate: str) -> bool:
        return os.path.exists(candidate) or os.path.abspath(candidate) == page

    def replace(match: re.Match) -> str:
        tag = match.group(1).lower()
        key = "src" if tag == "img" else "href"
        attrs = _attributes(match.group(0))
        value = next((v for k, v in attrs if k == key), None)
        target = _local_target(value) if value else None
        if target is None:
            return match.group(0)
        path, fragment = target
        if os.path.isabs(path) or urlsplit(value).scheme == "file":
            candidates = [path]
        else:
            candidates = [os.path.join(report_dir, path), os.path.abspath(path)]
        found = next((c for c in candidates if exists(c)), None)
        if found == candidates[0] and not os.path.isabs(path):
            return match.group(0)  # already relative to the report
        if found is not None:
            url = relative_url(found, report_dir) + fragment
            return _render(tag, [(k, url if k == key else v) for k, v in attrs])
        name = html.escape(Path(path).name or path)
        if tag == "img":
            return f"<span class=missing>(image {name} not written)</span>"
        kept = [(k, v) for k, v in attrs if k not in (key, "class", "title")]
        return _render(tag, [*kept, ("class", "missing"), ("title", f"{Path(path).name} not written")])

    return _TAG.sub(replace, body)


def write_report(path: PathLike, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write ``path`` from (heading, html body) sections; local images and links end up relative to it.

    Sections may hold references built by :func:`image_tag`/:func:`link_tag` or written by hand; see
    :func:`fix_local_references` for what happens to hand-written ones.
    """
    path = Path(path)
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{fix_local_references(body, path.parent, path)}")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
