"""Inline SVG for report.html, by hand: numpy has no plotting and the report must stay one
self-contained file (no scripts, no external fonts or images). Every text goes through `esc`.
"""

from __future__ import annotations

import math
from html import escape
from typing import Iterable, Sequence

FONT = "Helvetica, Arial, sans-serif"  # system fonts only: nothing is fetched


def esc(text: object) -> str:
    return escape(str(text), quote=True)


def num(v: float) -> str:
    """Coordinates with 2 decimals: enough for a screen, keeps the page small."""
    return f"{v:.2f}".rstrip("0").rstrip(".") if math.isfinite(v) else "0"


def line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#000", width: float = 1.0,
         dash: str | None = None, cls: str | None = None, attrs: dict[str, str] | None = None,
         title: str | None = None) -> str:
    extra = "".join(f" {k}='{esc(v)}'" for k, v in (attrs or {}).items())
    d = f" stroke-dasharray='{dash}'" if dash else ""
    c = f" class='{esc(cls)}'" if cls else ""
    body = f"<title>{esc(title)}</title>" if title else ""
    return (f"<line x1='{num(x1)}' y1='{num(y1)}' x2='{num(x2)}' y2='{num(y2)}' stroke='{stroke}' "
            f"stroke-width='{num(width)}'{d}{c}{extra}>{body}</line>")


def polyline(points: Iterable[tuple[float, float]], stroke: str, width: float = 1.5, fill: str = "none",
             dash: str | None = None, opacity: float | None = None) -> str:
    pts = " ".join(f"{num(x)},{num(y)}" for x, y in points)
    d = f" stroke-dasharray='{dash}'" if dash else ""
    o = f" fill-opacity='{num(opacity)}'" if opacity is not None else ""
    return f"<polyline points='{pts}' fill='{fill}'{o} stroke='{stroke}' stroke-width='{num(width)}'{d}/>"


def text(x: float, y: float, s: str, size: int = 12, anchor: str = "start", fill: str = "#222",
         weight: str | None = None, rotate: float | None = None) -> str:
    w = f" font-weight='{weight}'" if weight else ""
    r = f" transform='rotate({num(rotate)} {num(x)} {num(y)})'" if rotate is not None else ""
    return (f"<text x='{num(x)}' y='{num(y)}' font-size='{size}' text-anchor='{anchor}' fill='{fill}'{w}{r}>"
            f"{esc(s)}</text>")


def rect(x: float, y: float, w: float, h: float, fill: str = "none", stroke: str | None = None) -> str:
    s = f" stroke='{stroke}'" if stroke else ""
    return f"<rect x='{num(x)}' y='{num(y)}' width='{num(w)}' height='{num(h)}' fill='{fill}'{s}/>"


def svg(width: int, height: int, body: Sequence[str], label: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img' aria-label='{esc(label)}' "
            f"font-family='{esc(FONT)}'>{''.join(body)}</svg>")


def nice_step(span: float, ticks: int = 8) -> float:
    """A 1-2-2.5-5 step giving about `ticks` ticks over `span`."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    mag: float = 10 ** math.floor(math.log10(raw))  # (int ** int is Any to mypy: a negative power is a float)
    for f in (1, 2, 2.5, 5, 10):
        if f * mag >= raw:
            return f * mag
    return 10 * mag
