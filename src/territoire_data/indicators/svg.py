"""Server-rendered SVG: a choropleth of a division and a time series with its target line.

Drawn on the server so the pages need no script and no map library, work in an `<iframe>` on a city's website and
print well. Each drawing is `role="img"` with a text name; the pages always give the same figures as a table.
Colours come with words and a pattern-free legend of ranges; status is never told by colour alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

# A sequential palette (light to dark blue-green), dark enough at the top end for white outlines to show.
PALETTE = ("#edf8e9", "#bae4b3", "#74c476", "#31a354", "#006d2c")
PALETTE_DOWN = ("#fee5d9", "#fcae91", "#fb6a4a", "#de2d26", "#a50f15")  # for indicators where less is better
NO_DATA = "#d9d9d9"


@dataclass(frozen=True)
class Shape:
    code: str
    name: str
    path: str  # SVG path data, already projected (see portal.shapes)
    value: float | None


@dataclass(frozen=True)
class Legend:
    limits: tuple[float, ...]  # upper limits of each class but the last
    colours: tuple[str, ...]

    def colour(self, value: float | None) -> str:
        if value is None:
            return NO_DATA
        for limit, colour in zip(self.limits, self.colours, strict=False):
            if value < limit:
                return colour
        return self.colours[len(self.limits)] if len(self.limits) < len(self.colours) else self.colours[-1]


def fmt(value: float | None, decimals: int = 1) -> str:
    """French number formatting: thin space thousands, comma decimals."""
    if value is None:
        return "—"
    text = f"{value:,.{decimals}f}".replace(",", "\u202f").replace(".", ",")
    return text


def legend_for(values: list[float], thresholds: list[float], *, lower_is_better: bool) -> Legend:
    """Classes from the definition's thresholds, or quantiles of the values (at most 5 classes)."""
    colours = PALETTE_DOWN if lower_is_better else PALETTE
    if thresholds:
        limits = tuple(thresholds[: len(colours) - 1])
    else:
        distinct = sorted(set(values))
        if len(distinct) <= 1:
            limits = ()
        else:
            count = min(len(colours), len(distinct))
            picks = {distinct[min(len(distinct) - 1, math.ceil(i * len(distinct) / count))] for i in range(1, count)}
            limits = tuple(sorted(picks))
    return Legend(limits, colours[: len(limits) + 1])


def legend_labels(legend: Legend, decimals: int) -> list[tuple[str, str]]:
    """(colour, label) rows of the legend, then the no-data swatch."""
    rows = []
    bounds = [None, *legend.limits, None]
    for i, colour in enumerate(legend.colours):
        low, high = bounds[i], bounds[i + 1]
        if low is None and high is None:
            label = "toutes valeurs"
        elif low is None:
            label = f"moins de {fmt(high, decimals)}"
        elif high is None:
            label = f"{fmt(low, decimals)} et plus"
        else:
            label = f"de {fmt(low, decimals)} à moins de {fmt(high, decimals)}"
        rows.append((colour, label))
    rows.append((NO_DATA, "pas de donnée"))
    return rows


def choropleth(
    shapes: list[Shape], view_box: tuple[float, float, float, float], legend: Legend, *, title: str, unit: str,
    decimals: int, label_id: str,
) -> Markup:  # fmt: skip
    """The map: one path per unit, filled by class, with a tooltip (<title>) naming the unit and its value."""
    x, y, w, h = view_box
    stroke = max(w, h) / 600
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="choropleth" viewBox="{x:.5f} {y:.5f} {w:.5f} {h:.5f}" '
        f'role="img" aria-labelledby="{escape(label_id)}" preserveAspectRatio="xMidYMid meet">',
        f'<title id="{escape(label_id)}">{escape(title)}</title>',
    ]
    for shape in shapes:
        value = f"{fmt(shape.value, decimals)} {unit}" if shape.value is not None else "pas de donnée"
        parts.append(
            f'<path d="{escape(shape.path)}" fill="{legend.colour(shape.value)}" stroke="#ffffff" '
            f'stroke-width="{stroke:.6f}" data-code="{escape(shape.code)}">'
            f"<title>{escape(shape.name)} : {escape(value)}</title></path>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text and attribute value above went through escape()


def series_chart(
    points: list[tuple[datetime, float | None]],
    labels: list[str],
    *,
    target: float | None,
    target_label: str,
    title: str,
    unit: str,
    decimals: int,
    label_id: str,
) -> Markup:
    """A line of the values over periods, the target as a dashed line, axes labelled in text."""
    width, height = 640.0, 260.0
    left, right, top, bottom = 64.0, 16.0, 16.0, 40.0
    known = [v for _, v in points if v is not None]
    if not known:
        return Markup("")
    candidates = [*known, *([target] if target is not None else [])]
    low, high = min(0.0, min(candidates)), max(candidates)
    if high == low:
        high = low + 1
    span = high - low
    n = len(points)

    def px(i: int) -> float:
        return left + (width - left - right) * (i / max(1, n - 1))

    def py(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - low) / span)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="series" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-labelledby="{escape(label_id)}">',
        f'<title id="{escape(label_id)}">{escape(title)}</title>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#4a4a4a"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#4a4a4a"/>',
    ]
    for tick in (low, low + span / 2, high):
        parts.append(
            f'<text x="{left - 6}" y="{py(tick) + 4:.1f}" text-anchor="end" font-size="11" fill="#1b1b1b">'
            f"{escape(fmt(tick, decimals))}</text>"
        )
    step = max(1, n // 6)
    for i in range(0, n, step):
        parts.append(
            f'<text x="{px(i):.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11" fill="#1b1b1b">'
            f"{escape(labels[i])}</text>"
        )
    if target is not None:
        parts.append(
            f'<line x1="{left}" y1="{py(target):.1f}" x2="{width - right}" y2="{py(target):.1f}" stroke="#a50f15" '
            f'stroke-width="2" stroke-dasharray="6 4"/>'
            f'<text x="{width - right}" y="{py(target) - 5:.1f}" text-anchor="end" font-size="11" fill="#a50f15">'
            f"{escape(target_label)}</text>"
        )
    segment: list[str] = []
    for i, (_, v) in enumerate(points):
        if v is None:
            if len(segment) > 1:
                parts.append(f'<polyline points="{" ".join(segment)}" fill="none" stroke="#00449e" stroke-width="2"/>')
            segment = []
            continue
        segment.append(f"{px(i):.1f},{py(v):.1f}")
        parts.append(
            f'<circle cx="{px(i):.1f}" cy="{py(v):.1f}" r="3" fill="#00449e">'
            f"<title>{escape(labels[i])} : {escape(fmt(v, decimals))} {escape(unit)}</title></circle>"
        )
    if len(segment) > 1:
        parts.append(f'<polyline points="{" ".join(segment)}" fill="none" stroke="#00449e" stroke-width="2"/>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text and attribute value above went through escape()
