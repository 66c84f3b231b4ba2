"""Inline SVG charts with every text escaped, their geometry computed apart from the drawing.

`steps` lays a chart out in points (a start bar, steps that each begin where the last ended, an end bar), so a
test checks that the bars add up without parsing SVG; `waterfall_svg` (from the average patient to this one)
and `contrast_svg` (from the option's average difference with continuing to this patient's) draw that layout
on an axis that covers every running total, below zero too. Text is ≥ 13 px in a 360-px-wide viewBox, so it stays
≥ 11 px on a 360-px phone. `trends_svg` draws one small panel per measure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from pipeline.report.data import (
    DOWN,
    OKABE_ITO,
    TREND_COLOURS,
    UP,
    Bar,
    OptionExplanation,
    TrendSeries,
    signed_points,
)

#: chart width in viewBox units; the CSS lets it grow to 480 px and shrink to the screen
CHART_W = 360
# --- inline SVG charts ------------------------------------------------------------------------------------------
def _t(text: object) -> str:
    """Escaped text for SVG (markupsafe escapes & < > " ')."""
    return str(escape(str(text)))


def _svg(width: int, height: int, title: str, desc: str, body: list[str], cls: str) -> Markup:
    return Markup(
        f'<svg class="chart {cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_t(title)}">'
        f"<title>{_t(title)}</title><desc>{_t(desc)}</desc>{''.join(body)}</svg>"
    )


@dataclass(frozen=True)
class Step:
    """One drawn bar in points: from `start` to `end` (a step) or from zero (the start and end bars)."""

    label: str
    start: float
    end: float
    kind: str  # base | up | down | total


def steps(base_label: str, base: float, bars: Sequence[Bar], total_label: str) -> tuple[Step, ...]:
    """A waterfall's bars in points: the base bar (0 → base), each fact from the running total to the next, and
    the total bar (0 → base + Σ bars). The total is the drawn sum, so the chart always adds up."""
    out = [Step(base_label, 0.0, base, "base")]
    running = base
    for bar in bars:
        out.append(Step(bar.label, running, running + bar.points, "up" if bar.points >= 0 else "down"))
        running += bar.points
    out.append(Step(total_label, 0.0, running, "total"))
    return tuple(out)


def axis_domain(layout: Sequence[Step], floor: tuple[float, float]) -> tuple[float, float]:
    """The axis range: `floor` widened to every start and end of the layout (a running total below zero, too),
    rounded out to tens."""
    values = [v for s in layout for v in (s.start, s.end)] + list(floor)
    lo, hi = min(values), max(values)
    return math.floor(lo / 10) * 10, math.ceil(hi / 10) * 10


def _chart(layout: Sequence[Step], domain: tuple[float, float], *, title: str, desc: str, axis: str, cls: str,
           value_text: object) -> Markup:
    """Draw a layout: each row a label line and a bar below it, its value at the right, the zero line marked.

    The root carries `data-x0` (the x of 0 points) and `data-scale` (px per point) so a test can read the bars
    back in points; every bar is a `rect.bar` with `data-kind`."""
    left, right, row_h, top = 8, 52, 38, 34
    width = CHART_W
    plot_w = width - left - right
    lo, hi = domain
    scale = plot_w / (hi - lo)
    height = top + len(layout) * row_h + 24

    def x(points: float) -> float:
        return left + (points - lo) * scale

    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
            f'<text x="{left}" y="16" class="axis">{_t(axis)}</text>']
    step = 10 if hi - lo <= 60 else 20
    for tick in range(int(lo), int(hi) + 1, step):
        colour = "#777" if tick == 0 else "#e2e2e2"
        body.append(f'<line x1="{x(tick):.2f}" y1="{top - 6}" x2="{x(tick):.2f}" y2="{height - 20}" '
                    f'stroke="{colour}"/>')
        body.append(f'<text x="{x(tick):.2f}" y="{height - 5}" class="tick" text-anchor="middle">'
                    f'{_t(signed_points(tick / 100) if lo < 0 else tick)}</text>')
    colours = {"base": "#9a9a9a", "up": UP, "down": DOWN, "total": OKABE_ITO["black"]}
    y = top
    for s in layout:
        a, b = sorted((s.start, s.end))
        strong = " strong" if s.kind == "total" else ""
        body.append(f'<text x="{left}" y="{y + 11}" class="lab{strong}">{_t(_clip(s.label, 46))}</text>')
        body.append(f'<rect class="bar" data-kind="{s.kind}" x="{x(a):.2f}" y="{y + 16}" '
                    f'width="{max(x(b) - x(a), 0.0):.2f}" height="14" fill="{colours[s.kind]}"/>')
        if s.kind in ("up", "down") and x(b) - x(a) < 1.5:  # a step too small to see still shows where it is
            body.append(f'<line x1="{x(a):.2f}" y1="{y + 14}" x2="{x(a):.2f}" y2="{y + 32}" '
                        f'stroke="{colours[s.kind]}" stroke-width="1.5"/>')
        text = value_text(s)
        body.append(f'<text x="{width - 4}" y="{y + 28}" text-anchor="end" class="val{strong}">{_t(text)}</text>')
        y += row_h
    svg = _svg(width, height, title, desc, body, cls)
    return Markup(str(svg).replace("<svg ", f'<svg data-x0="{x(0):.4f}" data-scale="{scale:.6f}" ', 1))


def waterfall_svg(expl: OptionExplanation, *, width: int = CHART_W) -> Markup:
    """Waterfall on a chance-of-response axis (0–100, wider if a running total leaves it): from the average
    patient's estimate, each clinical fact moves the estimate (blue up, vermillion down) to this patient's."""
    layout = steps("average patient on this option", expl.base_points, expl.bars, "this patient")
    final = expl.final_points  # the estimate printed above the chart (the drawn sum leaves out facts under 0.05)

    def value(s: Step) -> str:
        if s.kind == "total":
            return f"{final:.0f}"
        return f"{s.end:.0f}" if s.kind == "base" else signed_points((s.end - s.start) / 100)

    title = f"Why the estimate for {expl.label} is {final:.0f} in 100"
    desc = "; ".join(f"{b.label}: {signed_points(b.points / 100)}" for b in expl.bars)
    return _chart(layout, axis_domain(layout, (0.0, 100.0)), title=title, cls="waterfall",
                  desc=f"Starts at {expl.base_points:.0f} for the average patient on this option. {desc}. Ends at {final:.0f}.",
                  axis="chance of response, in 100 patients like this", value_text=value)


def contrast_steps(expl: OptionExplanation) -> tuple[Step, ...]:
    """The contrast with continuing as a waterfall: from the option's average difference over all patients
    (the labelled base) through this patient's facts to this patient's difference."""
    base = expl.contrast_base if expl.contrast_base is not None else 0.0
    return steps("average difference for all patients", base, expl.contrast, "difference for this patient")


def contrast_svg(expl: OptionExplanation, *, width: int = CHART_W) -> Markup:
    """This option against continuing, in points out of 100: the base is the option's average difference with
    continuing; each fact makes it look better (blue) or worse (vermillion) for this patient."""
    layout = contrast_steps(expl)
    extent = max(abs(v) for s in layout for v in (s.start, s.end))
    domain = axis_domain(layout, (-max(extent, 5.0), max(extent, 5.0)))

    # the difference printed beside the chart (`contrast_shown`), never a drawn sum that rounds the other way
    total = expl.contrast_shown if expl.contrast_shown is not None else layout[-1].end

    def value(s: Step) -> str:
        if s.kind == "total":
            return signed_points(total / 100)
        return signed_points((s.end if s.kind == "base" else s.end - s.start) / 100)

    title = f"{expl.label} compared with continuing: {signed_points(total / 100)} in 100"
    desc = "; ".join(f"{b.label}: {signed_points(b.points / 100)}" for b in expl.contrast)
    return _chart(layout, domain, title=title, cls="contrast", value_text=value,
                  desc=f"Average difference {signed_points(layout[0].end / 100)}. {desc}. "
                       f"This patient: {signed_points(total / 100)}.",
                  axis="◀ worse than continuing · better ▶ (points in 100)")


def icon_array_svg(p: float | None, what: str, *, cell: int = 6, gap: int = 1) -> Markup:
    """An icon array of 100 patients like this one, the first round(100 p) filled: the number and its denominator
    seen at once (risk-communication practice); `what` says what a filled icon means ("respond within 24 weeks").
    Empty markup without a probability."""
    if p is None or not math.isfinite(p):
        return Markup("")
    n = int(round(100 * min(max(p, 0.0), 1.0)))
    step = cell + gap
    body = [f'<rect x="{(i % 10) * step}" y="{(i // 10) * step}" width="{cell}" height="{cell}" rx="2" '
            f'fill="{UP if i < n else "#e4e4e4"}"/>' for i in range(100)]
    title = f"{n} in 100 patients like this {what}"
    return _svg(10 * step - gap, 10 * step - gap, title, f"{n} filled squares of 100; {100 - n} empty.", body,
                "icons")


def trends_svg(series: Sequence[TrendSeries], *, panel_w: int = 240, panel_h: int = 140) -> Markup:
    """Small multiples: one SVG panel per measure with its own scale on a shared time axis, values over time with
    dated markers; the panels wrap to the screen's width (one per row on a phone)."""
    shown = [s for s in series if len(s.values)]
    if not shown:
        return _svg(panel_w, 40, "No disease-activity measures recorded", "no data",
                    ['<text x="8" y="24" class="lab">no disease-activity measures recorded</text>'], "trends")
    all_dates = sorted({d for s in shown for d in s.dates})
    t0, t1 = pd.Timestamp(all_dates[0]), pd.Timestamp(all_dates[-1])
    span = max((t1 - t0).days, 1)
    panels = []
    for i, s in enumerate(shown):
        left, right, top, bottom = 40.0, panel_w - 16.0, 40.0, panel_h - 24.0
        vals = np.asarray(s.values, dtype=float)
        lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
        pad = (hi - lo) * 0.15 or max(abs(hi) * 0.1, 1.0)
        lo, hi = lo - pad, hi + pad
        colour = TREND_COLOURS[i % len(TREND_COLOURS)]

        def px(d: str, left: float = left, right: float = right) -> float:
            return left + (right - left) * (pd.Timestamp(d) - t0).days / span

        def py(v: float, lo: float = lo, hi: float = hi, top: float = top, bottom: float = bottom) -> float:
            return bottom - (bottom - top) * (v - lo) / (hi - lo)

        body = [f'<rect x="0" y="0" width="{panel_w}" height="{panel_h}" fill="#fff"/>',
                f'<text x="6" y="15" class="lab strong">{_t(_clip(s.label, 30))}</text>',
                f'<text x="6" y="31" class="tick">{_t(s.unit)}</text>',
                f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#bbb"/>',
                f'<text x="{left - 4}" y="{top + 4}" class="tick" text-anchor="end">{hi - pad:.3g}</text>',
                f'<text x="{left - 4}" y="{bottom}" class="tick" text-anchor="end">{lo + pad:.3g}</text>',
                f'<text x="{left}" y="{bottom + 16}" class="tick">{_t(all_dates[0][:7])}</text>',
                f'<text x="{right}" y="{bottom + 16}" class="tick" text-anchor="end">{_t(all_dates[-1][:7])}</text>']
        points = " ".join(f"{px(d):.1f},{py(v):.1f}" for d, v in zip(s.dates, vals, strict=True) if not np.isnan(v))
        body.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for d, v in zip(s.dates, vals, strict=True):
            if not np.isnan(v):
                body.append(f'<circle cx="{px(d):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}">'
                            f"<title>{_t(d)}: {v:.3g}</title></circle>")
        desc = f"{s.label} ({s.unit}) from {s.values[0]:.3g} on {s.dates[0]} to {s.values[-1]:.3g} on {s.dates[-1]}"
        panels.append(str(_svg(panel_w, panel_h, f"{s.label} over time", desc, body, "trend")))
    return Markup(f'<div class="trends">{"".join(panels)}</div>')


def _clip(text: str, n: int = 42) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

