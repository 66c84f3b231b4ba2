"""Inline SVG charts (waterfall, contrast, trends) with every text escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from markupsafe import Markup, escape

if TYPE_CHECKING:
    pass
from pipeline.report.data import (
    DOWN,
    OKABE_ITO,
    TREND_COLOURS,
    UP,
    OptionExplanation,
    TrendSeries,
    signed_points,
)


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


def waterfall_svg(expl: OptionExplanation, *, width: int = 640) -> Markup:
    """Horizontal waterfall on a 0–100 axis: from the average patient's estimate, each clinical fact moves the
    estimate (blue up, vermillion down) to this patient's estimate."""
    label_w, right_w, row_h, top = 250, 60, 20, 26
    plot_w = width - label_w - right_w
    rows = len(expl.bars) + 2
    height = top + rows * row_h + 24

    def x(points: float) -> float:
        return label_w + plot_w * min(max(points, 0.0), 100.0) / 100.0

    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for tick in range(0, 101, 20):
        body.append(f'<line x1="{x(tick):.1f}" y1="{top - 6}" x2="{x(tick):.1f}" y2="{height - 22}" stroke="#ddd"/>')
        body.append(f'<text x="{x(tick):.1f}" y="{height - 8}" class="tick" text-anchor="middle">{tick}</text>')
    y = top
    body.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" class="lab">average patient</text>')
    body.append(f'<rect x="{x(0):.1f}" y="{y + 4}" width="{x(expl.base_points) - x(0):.1f}" height="{row_h - 8}" '
                f'fill="#bbb"/><text x="{width - right_w + 6}" y="{y + 14}" class="val">{expl.base_points:.0f}</text>')
    running = expl.base_points
    for bar in expl.bars:
        y += row_h
        start, end = running, running + bar.points
        lo, hi = sorted((start, end))
        colour = UP if bar.points >= 0 else DOWN
        w = max(x(hi) - x(lo), 1.5)
        sign = "+" if bar.points >= 0 else "\u2212"
        body.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" class="lab">{_t(_clip(bar.label))}</text>')
        body.append(f'<rect x="{x(lo):.1f}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{colour}"/>')
        body.append(f'<text x="{width - right_w + 6}" y="{y + 14}" class="val">{sign}{abs(bar.points):.0f}</text>')
        running = end
    y += row_h
    body.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" class="lab strong">this patient</text>')
    body.append(f'<rect x="{x(0):.1f}" y="{y + 4}" width="{x(expl.final_points) - x(0):.1f}" height="{row_h - 8}" '
                f'fill="{OKABE_ITO["black"]}"/><text x="{width - right_w + 6}" y="{y + 14}" '
                f'class="val strong">{expl.final_points:.0f}</text>')
    body.append(f'<text x="{label_w}" y="14" class="axis">chance of response, in 100 patients like this</text>')
    title = f"Why the estimate for {expl.label} is {expl.final_points:.0f} in 100"
    desc = "; ".join(f"{b.label}: {b.points:+.0f}" for b in expl.bars)
    return _svg(width, height, title, f"Starts at {expl.base_points:.0f} for the average patient. {desc}",
                body, "waterfall")


def contrast_svg(expl: OptionExplanation, *, width: int = 640) -> Markup:
    """Diverging bars centred on zero: which facts make this option look better (blue) or worse (vermillion)
    than continuing the current regimen, in points out of 100."""
    label_w, right_w, row_h, top = 250, 60, 20, 26
    bars = list(expl.contrast)
    plot_w = width - label_w - right_w
    height = top + (len(bars) + 1) * row_h + 10
    extent = max([abs(b.points) for b in bars] + [abs(expl.contrast_total or 0.0), 5.0])
    mid = label_w + plot_w / 2

    def x(points: float) -> float:
        return mid + (plot_w / 2) * points / extent

    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
            f'<line x1="{mid:.1f}" y1="{top - 4}" x2="{mid:.1f}" y2="{height - 6}" stroke="#888"/>',
            f'<text x="{label_w}" y="14" class="axis">worse than continuing  ◀  ▶  better than continuing '
            f'(points out of 100)</text>']
    y = top - row_h
    for bar in bars:
        y += row_h
        lo, hi = sorted((0.0, bar.points))
        colour = UP if bar.points >= 0 else DOWN
        sign = "+" if bar.points >= 0 else "\u2212"
        body.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" class="lab">{_t(_clip(bar.label))}</text>')
        body.append(f'<rect x="{x(lo):.1f}" y="{y + 4}" width="{max(x(hi) - x(lo), 1.5):.1f}" '
                    f'height="{row_h - 8}" fill="{colour}"/>')
        body.append(f'<text x="{width - right_w + 6}" y="{y + 14}" class="val">{sign}{abs(bar.points):.0f}</text>')
    y += row_h
    total = expl.contrast_total or 0.0
    body.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" class="lab strong">difference</text>')
    lo, hi = sorted((0.0, total))
    body.append(f'<rect x="{x(lo):.1f}" y="{y + 4}" width="{max(x(hi) - x(lo), 1.5):.1f}" height="{row_h - 8}" '
                f'fill="{OKABE_ITO["black"]}"/><text x="{width - right_w + 6}" y="{y + 14}" class="val strong">'
                f'{signed_points(total / 100)}</text>')
    title = f"{expl.label} compared with continuing: {signed_points(total / 100)} in 100"
    desc = "; ".join(f"{b.label}: {b.points:+.0f}" for b in bars)
    return _svg(width, height, title, desc, body, "contrast")


def trends_svg(series: Sequence[TrendSeries], *, panel_w: int = 240, panel_h: int = 132, columns: int = 4) -> Markup:
    """Small multiples, one panel per measure with its own scale: values over time with dated markers."""
    shown = [s for s in series if len(s.values)]
    if not shown:
        return _svg(panel_w, 40, "No disease-activity measures recorded", "no data",
                    ['<text x="8" y="24" class="lab">no disease-activity measures recorded</text>'], "trends")
    all_dates = sorted({d for s in shown for d in s.dates})
    t0, t1 = pd.Timestamp(all_dates[0]), pd.Timestamp(all_dates[-1])
    span = max((t1 - t0).days, 1)
    rows = math.ceil(len(shown) / columns)
    width, height = columns * panel_w, rows * panel_h
    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for i, s in enumerate(shown):
        ox, oy = (i % columns) * panel_w, (i // columns) * panel_h
        left, right, top, bottom = ox + 36, ox + panel_w - 14, oy + 34, oy + panel_h - 22
        vals = np.asarray(s.values, dtype=float)
        lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
        pad = (hi - lo) * 0.15 or max(abs(hi) * 0.1, 1.0)
        lo, hi = lo - pad, hi + pad
        colour = TREND_COLOURS[i % len(TREND_COLOURS)]

        def px(d: str, left: float = left, right: float = right) -> float:
            return left + (right - left) * (pd.Timestamp(d) - t0).days / span

        def py(v: float, lo: float = lo, hi: float = hi, top: float = top, bottom: float = bottom) -> float:
            return bottom - (bottom - top) * (v - lo) / (hi - lo)

        body.append(f'<text x="{ox + 6}" y="{oy + 13}" class="lab strong">{_t(s.label)}</text>')
        body.append(f'<text x="{ox + 6}" y="{oy + 26}" class="tick">{_t(s.unit)}</text>')
        body.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#bbb"/>')
        body.append(f'<text x="{left - 4}" y="{top + 4}" class="tick" text-anchor="end">{hi - pad:.3g}</text>')
        body.append(f'<text x="{left - 4}" y="{bottom}" class="tick" text-anchor="end">{lo + pad:.3g}</text>')
        body.append(f'<text x="{left}" y="{bottom + 14}" class="tick">{_t(all_dates[0][:7])}</text>')
        body.append(f'<text x="{right}" y="{bottom + 14}" class="tick" text-anchor="end">{_t(all_dates[-1][:7])}</text>')
        points = " ".join(f"{px(d):.1f},{py(v):.1f}" for d, v in zip(s.dates, vals, strict=True) if not np.isnan(v))
        body.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for d, v in zip(s.dates, vals, strict=True):
            if not np.isnan(v):
                body.append(f'<circle cx="{px(d):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}">'
                            f"<title>{_t(d)}: {v:.3g}</title></circle>")
    title = "Disease activity over time: " + ", ".join(s.label for s in shown)
    desc = "; ".join(f"{s.label} from {s.values[0]:.3g} to {s.values[-1]:.3g}" for s in shown)
    return _svg(width, height, title, desc, body, "trends")


def _clip(text: str, n: int = 42) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

