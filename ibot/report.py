"""The one report kit of the suite: a :class:`Page` built once and written as Markdown and as one self-contained
HTML file (every figure embedded as a base64 PNG, every text escaped, no script, nothing fetched from outside).

Used by the robustness report, the transfer leaderboard, the suite report and the demo::

    page = Page("Backbone evaluation")
    page.heading("Results")
    page.table(["harness", "metric", "value"], [["knn", "top-1", Strong("71.2")]])
    page.figure(fig, "headline", "headline metric per harness")   # a matplotlib figure (closed) or PNG bytes
    page.links([("Robustness report", "robustness/report.html")])
    page.write(out_dir)                                            # report.md, report.html, plots/headline.png
"""
from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibot.atomic import atomic_write, atomic_write_text

__all__ = ["Page", "Strong", "figure_png"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;
     padding:0 1em;line-height:1.45}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
tbody tr:nth-child(even){background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#666;font-size:0.85em}
p{max-width:70em}code{background:#f4f4f4;padding:0 .2em}
"""


class Strong(str):
    """A table cell or paragraph shown in bold (``**x**`` in Markdown, ``<b>`` in HTML)."""


def _md_escape(text: str, cell: bool = False) -> str:
    """Plain text for Markdown: ``<`` / ``>`` as entities (no raw HTML passes through), and in table cells ``|``
    escaped and newlines folded (a name must not break its table)."""
    out = str(text).replace("<", "&lt;").replace(">", "&gt;")
    if cell:
        out = out.replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    return out


def _md_href(href: str | os.PathLike[str]) -> str:
    """A link target; ``<...>`` when it holds spaces or parentheses (CommonMark)."""
    href = os.fspath(href)
    return f"<{href}>" if any(c in href for c in " ()<>") else href


def _md_text(text: str, cell: bool = False) -> str:
    escaped = _md_escape(text, cell)
    return f"**{escaped}**" if isinstance(text, Strong) and text else escaped


def _html_text(text: str) -> str:
    escaped = html.escape(str(text))
    return f"<b>{escaped}</b>" if isinstance(text, Strong) and text else escaped


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


@dataclass
class Page:
    """A report page built once and rendered twice (Markdown + self-contained HTML).

    Args:
        title: the ``<h1>`` / ``#`` title and the HTML ``<title>``.
    """

    title: str
    _md: list[str] = field(default_factory=list, repr=False)
    _html: list[str] = field(default_factory=list, repr=False)
    #: name -> PNG bytes of every figure, written to ``plots/<name>.png`` next to the Markdown file.
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading (level 2 = ``##`` / ``<h2>``)."""
        if not 1 <= level <= 6:
            raise ValueError(f"heading level must be 1-6, got {level}")
        self._md.append("#" * level + " " + _md_escape(text, cell=True))
        self._html.append(f"<h{level}>{html.escape(str(text))}</h{level}>")

    def para(self, text: str) -> None:
        """A paragraph of plain text (escaped in HTML; :class:`Strong` for bold)."""
        self._md.append(_md_text(text))
        self._html.append(f"<p>{_html_text(text)}</p>")

    def bullets(self, items: Sequence[str]) -> None:
        """A bulleted list of plain-text items."""
        if items:
            self._md.append("\n".join(f"- {_md_text(i, cell=True)}" for i in items))
            self._html.append("<ul>" + "".join(f"<li>{_html_text(i)}</li>" for i in items) + "</ul>")

    def links(self, items: Sequence[tuple[str, str | os.PathLike[str]]]) -> None:
        """A bulleted list of ``(text, href)`` links (relative paths keep the report folder movable)."""
        if items:
            self._md.append("\n".join(f"- [{_md_escape(text, cell=True)}]({_md_href(href)})" for text, href in items))
            self._html.append("<ul>" + "".join(
                f'<li><a href="{html.escape(os.fspath(href), quote=True)}">{html.escape(text)}</a></li>'
                for text, href in items) + "</ul>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]],
              groups: Sequence[tuple[str, int]] | None = None) -> None:
        """A table; cells are strings (:class:`Strong` for bold). ``groups``: an optional first header row of
        ``(label, span)`` spanning the columns (e.g. one label per data set over its protocols); the spans must add
        up to ``len(header)``. Markdown has no spanning headers: there each column's header is prefixed with its
        group (``CIFAR-10 · linear``). Nothing is written for an empty ``rows``."""
        if not rows:
            return
        width = len(header)
        bad = [i for i, r in enumerate(rows) if len(r) != width]
        if bad:
            raise ValueError(f"table rows {bad} do not have {width} cells (header {list(header)})")
        if groups is not None and sum(n for _, n in groups) != width:
            raise ValueError(f"table groups span {sum(n for _, n in groups)} columns, the header has {width}")
        md_header = list(header)
        if groups:
            labels = [g for g, n in groups for _ in range(n)]
            md_header = [f"{g} · {h}" if g and h else g or h for g, h in zip(labels, header)]
        lines = ["| " + " | ".join(_md_text(h, cell=True) for h in md_header) + " |",
                 "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(_md_text(c, cell=True) for c in r) + " |" for r in rows]
        self._md.append("\n".join(lines))
        head = ""
        if groups:
            head += "<tr>" + "".join(f'<th colspan="{n}">{html.escape(g)}</th>' if n > 1
                                     else f"<th>{html.escape(g)}</th>" for g, n in groups) + "</tr>"
        head += "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"
        body = "".join("<tr>" + "".join(f"<td>{_html_text(c)}</td>" for c in r) + "</tr>" for r in rows)
        self._html.append(f"<table><thead>{head}</thead><tbody>{body}</tbody></table>")

    def figure(self, fig: Any, name: str, caption: str) -> None:
        """A figure: a matplotlib figure (rendered, then closed) or PNG bytes; ``name`` is its file stem."""
        png = fig if isinstance(fig, (bytes, bytearray)) else figure_png(fig)
        if not png.startswith(b"\x89PNG"):
            raise ValueError(f"figure {name!r} is not a PNG")
        if not name or "/" in name or name in self.figures:
            raise ValueError(f"figure name {name!r} must be a new file stem without '/'")
        self.figures[name] = bytes(png)
        self._md.append(f"![{_md_escape(caption, cell=True)}](plots/{name}.png)")
        b64 = base64.b64encode(png).decode("ascii")
        self._html.append(f'<figure><img alt="{html.escape(caption, quote=True)}" src="data:image/png;base64,{b64}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def extend(self, other: Page, level_shift: int = 1) -> None:
        """Append another page's body (its title becomes a heading), e.g. a suite report inside the demo's page."""
        self.heading(other.title, min(6, 1 + level_shift))
        for md in other._md:
            self._md.append(("#" * level_shift + md) if md.startswith("#") else md)
        for part in other._html:
            if part.startswith("<h") and part[2].isdigit():
                level = min(6, int(part[2]) + level_shift)
                part = f"<h{level}>{part[4:-5]}</h{level}>"
            self._html.append(part)
        for name, png in other.figures.items():
            if name in self.figures:
                raise ValueError(f"figure name {name!r} used by both pages")
            self.figures[name] = png

    def markdown(self) -> str:
        """The page as Markdown (figures referenced as ``plots/<name>.png``)."""
        return f"# {_md_escape(self.title, cell=True)}\n\n" + "\n\n".join(self._md) + "\n"

    def html(self) -> str:
        """The page as one self-contained HTML document."""
        title = html.escape(self.title)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                f"<style>{CSS}</style></head><body><h1>{title}</h1>\n" + "\n".join(self._html)
                + "\n</body></html>\n")

    def write(self, out_dir: str | os.PathLike[str], stem: str = "report") -> dict[str, Path]:
        """Atomically write ``<stem>.md``, ``<stem>.html`` and ``plots/<name>.png``; return their paths
        (``md``, ``html`` and one entry per figure)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for name, png in self.figures.items():
            paths[name] = out / "plots" / f"{name}.png"
            atomic_write(paths[name], lambda fh, data=png: fh.write(data))
        paths["md"] = out / f"{stem}.md"
        paths["html"] = out / f"{stem}.html"
        atomic_write_text(paths["md"], self.markdown())
        atomic_write_text(paths["html"], self.html())
        return paths
