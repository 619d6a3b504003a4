"""The HTML building blocks of the report pages (the run page of :mod:`.page` and the comparison
page of :mod:`.comparison`): escaping, tables, figures, sections, the page shell with its inline
CSS, and the atomic writing of a page with its PNGs.

Pages are self-contained: the CSS is inline and nothing is loaded but the PNGs next to the page
(the machines that read it may be offline).
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure as MplFigure

from spectrumkd import __version__
from spectrumkd.io import atomic_write_bytes, atomic_write_text
from spectrumkd.report import figures

PAGE = "index.html"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1100px; padding: 1.5rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem;
     margin-top: 2.2rem; }
.meta { color: #666; font-size: 0.9rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9rem; color: #444; margin-top: 0.3rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.55rem; text-align: right; }
th { background: #f4f6f8; } td.l, th.l { text-align: left; }
.missing { background: #fff8e5; border-left: 4px solid #f0ad4e; padding: 0.4rem 0.8rem;
           margin: 0.6rem 0; font-size: 0.9rem; }
.missing ul { margin: 0.2rem 0; padding-left: 1.2rem; }
.ok { color: #2e7d32; } .warn { color: #b26a00; }
details { margin: 0.5rem 0; } summary { cursor: pointer; color: #336; }
"""


@dataclass(frozen=True)
class RenderedFigure:
    """A rendered figure for the page: file name, PNG bytes, alt text and one-line caption."""

    name: str
    png: bytes
    alt: str
    caption: str


def escape(value: Any) -> str:
    """``value`` as text safe inside HTML elements and attribute values."""
    return html.escape(str(value), quote=True)


def format_value(value: Any) -> str:
    """Numbers compactly (4 significant digits, integers whole); other values as text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value)


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A table of ``rows`` (all their keys, in first-seen order, unless ``columns``); the first
    column is left-aligned, as it names the row."""
    if not rows:
        return ""
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    head = "".join(
        f'<th class="{"l" if i == 0 else ""}">{escape(c)}</th>' for i, c in enumerate(columns)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"l" if i == 0 else ""}">{escape(format_value(row.get(c)))}</td>'
            for i, c in enumerate(columns)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def missing_notes(notes: Iterable[str]) -> str:
    """The "missing or incomplete" box a section shows instead of failing (empty: nothing)."""
    items = "".join(f"<li>{escape(n)}</li>" for n in notes)
    return (
        f'<div class="missing"><strong>Missing or incomplete</strong><ul>{items}</ul></div>'
        if items
        else ""
    )


def figure_html(figure: RenderedFigure) -> str:
    """A figure element for a PNG written beside the page."""
    return (
        f'<figure><img src="{escape(figure.name)}" alt="{escape(figure.alt)}">'
        f"<figcaption>{escape(figure.caption)}</figcaption></figure>"
    )


def render_figure(name: str, figure: MplFigure, alt: str, caption: str) -> RenderedFigure:
    """``figure`` as PNG bytes under ``name``; the Matplotlib figure is cleared afterwards."""
    try:
        return RenderedFigure(name, figures.png_bytes(figure), alt, caption)
    finally:
        figure.clear()  # the Figure holds its arrays until collected; free them now


def safe_name(text: str) -> str:
    """``text`` as a file-name or anchor part (word characters, dots and dashes only)."""
    return re.sub(r"[^\w.-]+", "_", text) or "metric"


def set_label(entry: Any) -> str:
    """How an evaluation set is named on a page: its label, else its folder name."""
    return entry.label if entry.label and entry.label != entry.name else entry.name


def html_section(
    title: str, parts: list[str], rendered: list[RenderedFigure], notes: list[str]
) -> str:
    """A titled section: its figures, then ``parts`` (HTML), then the notes on what is missing
    (or "nothing to show")."""
    body = "".join(figure_html(f) for f in rendered) + "".join(parts) + missing_notes(notes)
    if not body:
        body = missing_notes(["nothing to show"])
    anchor = safe_name(title.lower())
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def html_document(title: str, meta_before: str, meta_after: str, body: str) -> str:
    """A self-contained page: ``title`` (escaped here), a meta line of escaped HTML around
    "generated <time> by spectrumkd <version>", then ``body`` (HTML)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="meta">{meta_before}generated {escape(stamp)} by spectrumkd {escape(__version__)}'
        f"{meta_after}</p>{body}</body></html>\n"
    )


def write_page(out: Path, page: str, rendered: list[RenderedFigure], own_png: re.Pattern) -> Path:
    """Write the figures and ``out/index.html``, then remove the PNGs of this kind of page
    (named as ``own_png`` matches) that the new page no longer shows; returns the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    for figure in rendered:
        atomic_write_bytes(out / figure.name, figure.png)
    atomic_write_text(out / PAGE, page)
    # Only now that the new page is in place: the previous page may still have shown these.
    written = {f.name for f in rendered}
    for old in out.glob("*.png"):
        if own_png.match(old.name) and old.name not in written:
            old.unlink(missing_ok=True)
    return out / PAGE
