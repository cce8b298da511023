"""report.html: one self-contained file (figures embedded as base64 PNG), so it opens as it is
from the MLflow UI's artifact view, where links to sibling files would not resolve."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.banner { background: #b00020; color: white; padding: 0.8em; font-weight: bold; }
figure { display: block; margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.table-wrap { max-width: 100%; overflow-x: auto; }
figcaption { font-size: 0.8em; color: #555; }
.note { color: #555; font-size: 0.9em; }
.flow-row { display: flex; gap: 0.8em; align-items: flex-start; flex-wrap: wrap; }
.flow-box { border: 1px solid #888; padding: 0.4em 0.7em; font-size: 0.85em; min-width: 9em; }
.flow-out { border-style: dashed; } .flow-side { align-self: center; min-width: 1.5em; }
.flow-arrow { font-size: 1.3em; margin: 0.2em 4em; }
"""


@dataclass
class Section:
    heading: str
    paragraphs: Sequence[str] = ()  # plain text, escaped
    tables: Sequence[pd.DataFrame] = ()
    figures: Sequence[Path] = ()
    extra: list[str] = field(default_factory=list)  # pre-escaped HTML


def number_text(value: float) -> str:
    """3 decimals, as the console and the card give figures; a value too small for them keeps
    2 significant digits rather than reading 0.000."""
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.001 else f"{value:.2g}"


def table_html(frame: pd.DataFrame) -> str:
    """A wide table scrolls inside its own box instead of running past the page's edge."""
    table = frame.to_html(index=False, escape=True, na_rep="", border=0,
                          float_format=number_text)
    return f"<div class='table-wrap'>{table}</div>"


def display_width(path: Path) -> int | None:
    """The CSS width a figure was drawn for (its inches at 96 px each): a 5-inch square
    reliability diagram shows at 480 px, not stretched to the page's width."""
    from PIL import Image

    with Image.open(path) as image:
        dpi = image.info.get("dpi")
        return round(image.width / float(dpi[0]) * 96) if dpi and dpi[0] else None


def figure_html(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = html.escape(Path(path).name)
    width = display_width(path)
    size = f' width="{width}"' if width else ""
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{name}" data-file="{name}"'
            f"{size}><figcaption>{name}</figcaption></figure>")


def render(title: str, sections: Sequence[Section], banner: str | None = None) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body>"]
    if banner:
        parts.append(f"<div class='banner'>{html.escape(banner)}</div>")
    parts.append(f"<h1>{html.escape(title)}</h1>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts += [f"<p class='note'>{html.escape(p)}</p>" for p in section.paragraphs]
        parts += [table_html(t) for t in section.tables]
        parts += [figure_html(f) for f in section.figures]
        parts += section.extra
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, title: str, sections: Sequence[Section],
                 banner: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(title, sections, banner), encoding="utf-8")
    return path
