"""Small server-rendered SVG charts: one series of daily values, as bars (counts) or as a
line (rates in 0..1). No script, no style attributes (the CSP forbids inline styles): shapes
carry classes the stylesheet colours. Labels are escaped; numbers are formatted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from markupsafe import Markup, escape

WIDTH: Final = 320
HEIGHT: Final = 90
_PAD_X: Final = 4
_PAD_TOP: Final = 14
_PAD_BOTTOM: Final = 14

Point = tuple[str, float | None]  # (label, value); None: no value that day


def bars(title: str, points: Sequence[Point], unit: str = "") -> Markup:
    """A bar per point, scaled to the largest value."""
    top = max((v for _, v in points if v is not None), default=0.0) or 1.0
    step = (WIDTH - 2 * _PAD_X) / max(len(points), 1)
    shapes = []
    for i, (label, value) in enumerate(points):
        if value is None:
            continue
        h = _plot_height() * value / top
        x, y = _PAD_X + i * step, _PAD_TOP + _plot_height() - h
        tip = f"{label}: {_number(value)}{unit}"
        shapes.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}"><title>{escape(tip)}</title></rect>'
        )
    return _frame(title, points, shapes, f"max {_number(top)}{unit}")


def line(title: str, points: Sequence[Point]) -> Markup:
    """A rate per point (0..1) as a line with dots; gaps where a day has no value."""
    step = (WIDTH - 2 * _PAD_X) / max(len(points) - 1, 1)
    shapes: list[str] = []
    run: list[str] = []
    for i, (label, value) in enumerate(points):
        if value is None:
            shapes.append(_polyline(run))
            run = []
            continue
        x = _PAD_X + i * step
        y = _PAD_TOP + _plot_height() * (1 - min(max(value, 0.0), 1.0))
        run.append(f"{x:.1f},{y:.1f}")
        tip = f"{label}: {value:.1%}"
        shapes.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
            f"<title>{escape(tip)}</title></circle>"
        )
    shapes.append(_polyline(run))
    latest = next((v for _, v in reversed(points) if v is not None), None)
    return _frame(title, points, shapes, "—" if latest is None else f"last {latest:.1%}")


def _polyline(run: list[str]) -> str:
    return f'<polyline class="line" points="{" ".join(run)}"/>' if len(run) > 1 else ""


def _frame(title: str, points: Sequence[Point], shapes: list[str], note: str) -> Markup:
    first = points[0][0] if points else ""
    last = points[-1][0] if points else ""
    base = _PAD_TOP + _plot_height()
    svg = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
        f'<text class="label" x="{_PAD_X}" y="10">{escape(title)}</text>'
        f'<text class="label end" x="{WIDTH - _PAD_X}" y="10">{escape(note)}</text>'
        f'<line class="axis" x1="{_PAD_X}" y1="{base}" x2="{WIDTH - _PAD_X}" y2="{base}"/>'
        + "".join(shapes)
        + f'<text class="label" x="{_PAD_X}" y="{HEIGHT - 2}">{escape(first)}</text>'
        f'<text class="label end" x="{WIDTH - _PAD_X}" y="{HEIGHT - 2}">{escape(last)}</text>'
        "</svg>"
    )
    return Markup(svg)


def _plot_height() -> float:
    return HEIGHT - _PAD_TOP - _PAD_BOTTOM


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.2f}"
