"""`escalate report`: the clinician's one-page view of a patient — options, reasons, regimen, trends, monitoring.

The page is rendered from a plain data structure (`Page`), so the renderer is testable without MLflow; `build_page`
assembles that structure from one patient's contract tables, as-of features, the model's per-option predictions
and their SHAP explanations; the CLI loads the registered model (alias champion, else candidate, else the
bundle in data/train/model/). Plots are inline SVG built here with every text escaped; Jinja2 autoescapes the rest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from markupsafe import Markup, escape

TEMPLATES = Path(__file__).resolve().parent / "templates"
BANNER = "Decision support — not validated for clinical use"
CAVEAT = (
    "The per-option figures are estimates from observational data: they assume that no unmeasured factor "
    "influenced both the treatment chosen and the response, and that every option shown is plausible for "
    "patients like this one. They are not a substitute for clinical judgement."
)
SHAP_NOTE = (
    "The reasons show which facts in the record moved this model's estimate up or down (SHAP values), in points "
    "out of 100. They describe the model, not proof that a fact causes the response."
)
#: Okabe–Ito colour-blind-safe palette.
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
}
UP, DOWN = OKABE_ITO["blue"], OKABE_ITO["vermillion"]
#: disease-activity measures drawn on the trends plot: (measure, label, unit, higher is better).
TREND_MEASURES: tuple[tuple[str, str, str, bool], ...] = (
    ("physician_global", "Physician global activity", "cm (0–10)", False),
    ("patient_global", "Patient global activity", "cm (0–10)", False),
    ("extramuscular_global", "Extramuscular global activity", "cm (0–10)", False),
    ("mmt8", "MMT-8 muscle strength", "score", True),
    ("haq", "HAQ disability index", "0–3", False),
    ("cdasi_activity", "CDASI activity (skin)", "0–100", False),
    ("ck", "Creatine kinase", "× upper limit of normal", False),
)
TREND_COLOURS = (OKABE_ITO["blue"], OKABE_ITO["orange"], OKABE_ITO["green"], OKABE_ITO["vermillion"],
                 OKABE_ITO["purple"], OKABE_ITO["sky"], OKABE_ITO["black"])


# --- the page as plain data -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegimenLine:
    """One current drug: as written, its dose and schedule, the target and where the dose stands."""

    drug: str
    label: str
    dose: str
    target: str
    fraction_of_target: float | None
    status: str  # below | at | above | no_target | unknown


@dataclass(frozen=True)
class TrendSeries:
    measure: str
    label: str
    unit: str
    dates: tuple[str, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class Bar:
    """One bar of a waterfall / contrast chart: a clinical fact and its contribution in points out of 100."""

    label: str
    points: float


@dataclass(frozen=True)
class OptionRow:
    option: str
    label: str
    eligible: bool
    ineligible_reason: str = ""
    p_response: float | None = None
    p_response_low: float | None = None
    p_response_high: float | None = None
    effect_vs_continue: float | None = None
    expected_tis: float | None = None
    expected_tis_low: float | None = None
    expected_tis_high: float | None = None
    p_safety: float | None = None
    p_safety_low: float | None = None
    p_safety_high: float | None = None
    recommended: bool = False
    thin_overlap: bool = False


@dataclass(frozen=True)
class OptionExplanation:
    """Why the model estimates what it does for one option: waterfall from the average patient to this one,
    the contrast with continuing, and the top reasons in words."""

    option: str
    label: str
    base_points: float
    final_points: float
    bars: tuple[Bar, ...]
    contrast: tuple[Bar, ...] = ()
    contrast_total: float | None = None
    reasons: tuple[str, ...] = ()
    contrast_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reminder:
    test: str
    when: str
    why: str
    drugs: tuple[str, ...]
    proposed_only: bool = False


@dataclass(frozen=True)
class Page:
    """Everything the clinician page shows, for one patient only."""

    patient_id: str
    as_of: str
    model_name: str
    model_version: str
    model_alias: str
    run_id: str
    horizon_weeks: int
    response_definition: str
    facts: tuple[tuple[str, str], ...]
    activity_facts: tuple[str, ...]
    safety_facts: tuple[str, ...]
    events: tuple[tuple[str, str, str], ...]
    regimen: tuple[RegimenLine, ...]
    trends: tuple[TrendSeries, ...]
    options: tuple[OptionRow, ...]
    explanations: tuple[OptionExplanation, ...]
    monitoring: tuple[Reminder, ...]
    model_facts: tuple[tuple[str, str], ...]
    notes: tuple[str, ...] = ()
    generated: str = field(default_factory=lambda: date.today().isoformat())


# --- numbers as words -------------------------------------------------------------------------------------------
def _ok(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def in_100(p: float | None, low: float | None = None, high: float | None = None) -> str:
    """'62 in 100 (52–72)': a probability with its interval, on the same denominator everywhere."""
    if not _ok(p):
        return "—"
    text = f"{round(100 * p)} in 100"  # type: ignore[operator]
    if _ok(low) and _ok(high):
        text += f" ({round(100 * low)}–{round(100 * high)})"  # type: ignore[operator]
    return text


def signed_points(d: float | None) -> str:
    """'+14' / '−3' absolute points out of 100 (never relative); '0' when it rounds to nothing."""
    if not _ok(d):
        return "—"
    v = round(100 * d)  # type: ignore[operator]
    return f"+{v}" if v > 0 else (f"\u2212{abs(v)}" if v < 0 else "0")


def score_range(x: float | None, low: float | None = None, high: float | None = None) -> str:
    if not _ok(x):
        return "—"
    text = f"{x:.0f}"
    if _ok(low) and _ok(high):
        text += f" ({low:.0f}–{high:.0f})"
    return text


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


# --- rendering --------------------------------------------------------------------------------------------------
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every value from the record is escaped; SVG text is escaped when built
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(in_100=in_100, signed_points=signed_points, score_range=score_range)
    return env


def render_page(page: Page) -> str:
    """The self-contained HTML of one patient's page (inline CSS and SVG, no script, no network)."""
    env = _environment()
    charts = {
        "trends": trends_svg(page.trends),
        "waterfalls": {e.option: waterfall_svg(e) for e in page.explanations},
        "contrasts": {e.option: contrast_svg(e) for e in page.explanations if e.contrast},
    }
    css = (TEMPLATES / "page.css").read_text(encoding="utf-8")
    return env.get_template("patient.html.j2").render(page=page, charts=charts, css=Markup(css), banner=BANNER,
                                                      caveat=CAVEAT, shap_note=SHAP_NOTE)


def render_index(entries: Sequence[Mapping[str, str]], *, as_of: str, model: str) -> str:
    """The static site's index: a searchable list of patient identifiers linking to each page (no data beyond
    the identifier and the recommended option)."""
    import base64
    import hashlib

    env = _environment()
    css = (TEMPLATES / "page.css").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(INDEX_SCRIPT.encode()).digest()).decode()
    return env.get_template("index.html.j2").render(entries=entries, as_of=as_of, model=model, css=Markup(css),
                                                     banner=BANNER, script=Markup(INDEX_SCRIPT), script_hash=digest)


#: the index page's only script: filters the patient list by the identifier typed (reads the DOM's text only).
INDEX_SCRIPT = (
    "document.getElementById('q').addEventListener('input',function(){var q=this.value.trim().toLowerCase();"
    "document.querySelectorAll('#patients tbody tr').forEach(function(r){r.hidden=q!==''&&"
    "r.cells[0].textContent.toLowerCase().indexOf(q)<0;});});"
)


# --- assembling the page from frames ----------------------------------------------------------------------------
def monitoring_reminders(config: Mapping[str, Any], current: Sequence[str], proposed: Sequence[str],
                         labels: Mapping[str, str]) -> tuple[Reminder, ...]:
    """Reminders for the current drugs and the proposed additions (from configs/monitoring.yaml), each naming
    the drugs that call for it; the 'always' reminders first."""
    cur, prop = set(current), set(proposed) - set(current)
    out = [Reminder(r["test"], r["when"], r["why"], ()) for r in config.get("always", [])]
    for r in config.get("reminders", []):
        drugs = [d for d in r.get("drugs", []) if d in cur or d in prop]
        if drugs:
            names = tuple(labels.get(d, d) + (" (proposed)" if d in prop else "") for d in drugs)
            out.append(Reminder(r["test"], r["when"], r["why"], names, proposed_only=not (set(drugs) & cur)))
    return tuple(out)


def _fmt_dose(row: Mapping[str, Any]) -> str:
    dose = row.get("dose")
    parts = []
    if _ok(dose):
        parts.append(f"{float(dose):g} {row.get('dose_unit') or ''}".strip())
    for key in ("route", "interval"):
        if isinstance(row.get(key), str) and row.get(key):
            parts.append(str(row[key]))
    return " ".join(parts) or "dose not recorded"


def regimen_lines(current: pd.DataFrame) -> tuple[RegimenLine, ...]:
    """The current regimen (features' current_regimen rows of one patient) as page lines."""
    lines = []
    for row in current.to_dict(orient="records"):
        frac = row.get("fraction_of_target")
        lines.append(RegimenLine(
            drug=str(row.get("drug") or row.get("generic")),
            label=str(row.get("label") or row.get("generic")),
            dose=_fmt_dose(row),
            target=str(row.get("target_text") or "—"),
            fraction_of_target=float(frac) if _ok(frac) else None,
            status=str(row.get("status") or "unknown"),
        ))
    return tuple(lines)


def trend_series(assessments: pd.DataFrame, as_of: pd.Timestamp) -> tuple[TrendSeries, ...]:
    """Core set measures and CDASI of one patient before the as-of date (CK as a multiple of its ULN)."""
    a = assessments[pd.to_datetime(assessments["date"]) < as_of]
    out = []
    for measure, label, unit, _ in TREND_MEASURES:
        m = a[a["measure"] == measure].sort_values("date")
        if m.empty:
            continue
        values = pd.to_numeric(m["value"], errors="coerce").to_numpy(float)
        if measure == "ck" and "upper_limit_normal" in m:
            values = values / pd.to_numeric(m["upper_limit_normal"], errors="coerce").to_numpy(float)
        if measure == "mmt8" and "scale_max" in m and m["scale_max"].notna().any():
            unit = f"0–{int(m['scale_max'].dropna().iloc[-1])}"
        dates = tuple(pd.to_datetime(m["date"]).dt.strftime("%Y-%m-%d"))
        out.append(TrendSeries(measure, label, unit, dates, tuple(float(v) for v in values)))
    return tuple(out)


def option_rows(pred: pd.DataFrame, labels: Mapping[str, str], thin: set[str] | None = None) -> tuple[OptionRow, ...]:
    """One table row per option from one patient's `predict_frame` rows."""
    rows = []

    def f(r: Mapping[str, Any], key: str) -> float | None:
        v = r.get(key)
        return float(v) if _ok(v) else None

    for r in pred.to_dict(orient="records"):
        eligible = bool(r["eligible"])
        reason = r.get("ineligible_reason")
        rows.append(OptionRow(
            option=str(r["option"]), label=labels.get(str(r["option"]), str(r["option"])), eligible=eligible,
            ineligible_reason=str(reason) if isinstance(reason, str) and not eligible else "",
            p_response=f(r, "p_response"), p_response_low=f(r, "p_response_low"),
            p_response_high=f(r, "p_response_high"), effect_vs_continue=f(r, "effect_vs_continue"),
            expected_tis=f(r, "expected_tis"), expected_tis_low=f(r, "expected_tis_low"),
            expected_tis_high=f(r, "expected_tis_high"), p_safety=f(r, "p_safety"),
            p_safety_low=f(r, "p_safety_low"), p_safety_high=f(r, "p_safety_high"),
            recommended=bool(r.get("recommended")) and eligible,
            thin_overlap=str(r["option"]) in (thin or set()),
        ))
    return tuple(rows)


def option_explanations(
    explanations: Any, X: pd.DataFrame, dictionary: pd.DataFrame, eligible: Sequence[str],
    labels: Mapping[str, str], *, row: int = 0, n_bars: int = 8, k: int = 3,
) -> tuple[OptionExplanation, ...]:
    """Waterfall bars (top clinical facts + 'all other facts'), contrast bars and plain-words reasons per eligible
    option for one row of X, from `models.explain.Explanations`."""
    from models import explain as E

    out = []
    reasons = E.reasons_frame(explanations, X, dictionary, k)
    reasons = reasons[reasons["row"] == row].set_index("option")
    for option in [o for o in explanations.arms if o in eligible]:
        s = explanations.get("response", option)
        if s is None:
            continue
        groups = E.feature_groups(s.columns, dictionary)
        grouped = E.grouped_frame(s, groups, row=row)
        bars = _bars(grouped, n_bars)
        base = float(s.probability_base[row]) * 100 if s.probability_base is not None else float(s.base[row])
        final = float(s.probability[row]) * 100 if s.probability is not None else float(s.output[row])
        con = explanations.get("contrast", option)
        contrast: tuple[Bar, ...] = ()
        total = None
        if con is not None:
            cg = E.grouped_frame(con, groups, row=row, points=E.contrast_points(con))
            contrast = _bars(cg, n_bars)
            total = float(E.contrast_points(con)[row].sum() + (con.probability_base[row] if con.probability_base
                                                               is not None else con.base[row])) * 100
        r = reasons.loc[option] if option in reasons.index else None
        texts = _reason_texts(r, "reason", k)
        ctexts = _reason_texts(r, "contrast_reason", k)
        out.append(OptionExplanation(option, labels.get(option, option), base, final, bars, contrast, total,
                                     texts, ctexts))
    return tuple(out)


def _reason_texts(r: pd.Series | None, prefix: str, k: int, min_points: float = 0.005) -> tuple[str, ...]:
    """The plain-words reasons that move the estimate by at least half a point (smaller ones are noise)."""
    if r is None:
        return ()
    out = []
    for i in range(1, k + 1):
        text, value = r.get(f"{prefix}_{i}_text"), r.get(f"{prefix}_{i}_contribution")
        if isinstance(text, str) and _ok(value) and abs(float(value)) >= min_points:
            out.append(text)
    return tuple(out)


def _bars(grouped: pd.DataFrame, n: int) -> tuple[Bar, ...]:
    """The n largest clinical facts by points, the rest summed into 'all other facts' (keeps the total exact)."""
    g = grouped.reindex(grouped["points"].abs().sort_values(ascending=False).index)
    top, rest = g.iloc[:n], g.iloc[n:]
    bars = [Bar(str(lab), float(p) * 100) for lab, p in zip(top["label"], top["points"], strict=True)]
    if len(rest):
        bars.append(Bar(f"all other facts ({len(rest)})", float(rest["points"].sum()) * 100))
    return tuple(bars)


def patient_facts(patient: Mapping[str, Any], as_of: pd.Timestamp) -> tuple[tuple[str, str], ...]:
    """Key facts of the patients row (normalised): sex, age, diagnosis, antibodies, ILD, cancer, duration."""
    facts: list[tuple[str, str]] = []
    if patient.get("sex"):
        facts.append(("sex", {"F": "female", "M": "male"}.get(str(patient["sex"]), str(patient["sex"]))))
    if _ok(patient.get("birth_year")):
        facts.append(("age", f"{as_of.year - int(patient['birth_year'])} years"))
    if patient.get("diagnosis"):
        facts.append(("diagnosis", str(patient["diagnosis"]).replace("_", " ")))
    dd = pd.to_datetime(patient.get("diagnosis_date"), errors="coerce")
    if pd.notna(dd):
        facts.append(("disease duration", f"{(as_of - dd).days / 365.25:.1f} years (since {dd.date()})"))
    if patient.get("antibodies"):
        facts.append(("antibodies", str(patient["antibodies"])))
    for key, label in (("ild", "interstitial lung disease"), ("cancer_associated", "cancer-associated")):
        if key in patient and patient[key] is not None and not (isinstance(patient[key], float)
                                                                and math.isnan(patient[key])):
            facts.append((label, "yes" if str(patient[key]).lower() in ("true", "1", "yes") else "no"))
    return tuple(facts)


def latest_activity(trends: Sequence[TrendSeries]) -> tuple[str, ...]:
    return tuple(f"{s.label} {s.values[-1]:.3g} {s.unit} ({s.dates[-1]})" for s in trends if s.values)


def safety_summary(events: pd.DataFrame, assessments: pd.DataFrame, as_of: pd.Timestamp) -> tuple[str, ...]:
    """Infections and cytopenias in the last 6 months and the latest safety laboratory values."""
    ev = events[pd.to_datetime(events["date"]) < as_of] if len(events) else events
    recent = ev[pd.to_datetime(ev["date"]) >= as_of - pd.DateOffset(months=6)] if len(ev) else ev
    out = []
    n_inf = int(recent["event"].isin(["serious_infection", "opportunistic_infection"]).sum()) if len(recent) else 0
    n_cyt = int((recent["event"] == "cytopenia").sum()) if len(recent) else 0
    out.append(f"{n_inf or 'no'} infection{'s' if n_inf != 1 else ''} and {n_cyt or 'no'} "
               f"cytopenia{'s' if n_cyt != 1 else ''} in the last 6 months")
    a = assessments[pd.to_datetime(assessments["date"]) < as_of]
    for measure, label, unit in (("neutrophils", "neutrophils", "×10⁹/L"), ("lymphocytes", "lymphocytes", "×10⁹/L"),
                                 ("platelets", "platelets", "×10⁹/L"), ("alt", "ALT", "U/L"),
                                 ("creatinine", "creatinine", "µmol/L")):
        m = a[a["measure"] == measure].sort_values("date")
        if len(m):
            out.append(f"{label} {float(m['value'].iloc[-1]):.3g} {unit} ({pd.Timestamp(m['date'].iloc[-1]).date()})")
    return tuple(out)


def event_lines(events: pd.DataFrame, as_of: pd.Timestamp) -> tuple[tuple[str, str, str], ...]:
    if not len(events):
        return ()
    ev = events[pd.to_datetime(events["date"]) < as_of].sort_values("date", ascending=False)
    return tuple(
        (str(pd.Timestamp(r["date"]).date()), str(r["event"]).replace("_", " "),
         "" if not isinstance(r.get("details"), str) else r["details"])
        for r in ev.to_dict(orient="records")
    )


# --- loading: model, tables, features ---------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: Any
    name: str
    version: str
    alias: str
    run_id: str


def load_model(model_dir: Path = Path("data/train/model")) -> LoadedModel:
    """The registered model by alias (champion, else candidate), else the bundle the train stage wrote."""
    try:
        import mlflow

        from pipeline import registry

        registry.setup_mlflow()
        for alias in (registry.CHAMPION, registry.CANDIDATE):
            found = registry.alias_run_id(alias)
            if found is None:
                continue
            version, run_id = found
            pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@{alias}")
            bundle = pyfunc.unwrap_python_model().model
            return LoadedModel(bundle, registry.MODEL_NAME, version, alias, run_id)
    except Exception as exc:  # noqa: BLE001 - a registry problem falls back to the local bundle, said below
        typer.echo(f"model registry not usable ({exc}); falling back to {model_dir}", err=True)
    path = Path(model_dir) / "escalate_model.joblib"
    if not path.is_file():
        raise FileNotFoundError(
            f"no registered model (aliases champion, candidate) and no bundle at {path}: run `dvc repro train`"
        )
    import joblib

    run = Path(model_dir).parent / "run.json"
    run_id = json.loads(run.read_text()).get("run_id", "unknown") if run.is_file() else "unknown"
    return LoadedModel(joblib.load(path), "escalate-response", "local", "data/train/model", str(run_id))


def _as_of(value: str | None, tables: Mapping[str, pd.DataFrame]) -> pd.Timestamp:
    if value:
        return pd.Timestamp(value).normalize()
    return (pd.Timestamp.today().normalize())


def build_patient_page(
    patient_id: str,
    as_of: pd.Timestamp,
    tables: Mapping[str, pd.DataFrame],
    loaded: LoadedModel,
    monitoring: Mapping[str, Any],
    *,
    top_k: int = 3,
) -> Page:
    """Everything for one patient from the normalised contract tables (all patients or only this one)."""
    from features.build import build_features
    from features.vocabulary import OptionCatalog, Vocabulary
    from models import explain as E
    from pipeline.config import load_reference

    vocabulary = Vocabulary.from_config(load_reference("drugs"))
    catalog = OptionCatalog.from_config(load_reference("options"))
    one = {name: t[t["patient_id"].astype(str) == patient_id].reset_index(drop=True) for name, t in tables.items()}
    if one["patients"].empty:
        raise ValueError(f"table patients: no row with patient_id {patient_id!r} (rule: a known patient)")
    keys = pd.DataFrame({"patient_id": [patient_id], "decision_id": [f"{patient_id}@{as_of.date()}"],
                         "as_of": [as_of]})
    fs = build_features(keys, one, vocabulary, catalog)
    features, dictionary, current = fs.features, fs.dictionary, fs.current_regimen
    model = loaded.model
    pred = model.predict_frame(features)
    X = model.contract.check(features)
    ex = E.explain_model(model, features)
    dictionary = E.with_dose_targets(dictionary, vocabulary)
    labels = {o.name: o.label for o in catalog.options}
    eligible = pred.loc[pred["eligible"].astype(bool), "option"].astype(str).tolist()
    explanations = option_explanations(ex, X, dictionary, eligible, labels, k=top_k)
    drug_labels = {d.generic: d.label for d in vocabulary.drugs}
    current_generics = current["generic"].astype(str).tolist() if len(current) else []
    proposed = [catalog.option(o).adds for o in eligible if catalog.option(o).adds]
    thin = {str(r["option"]) for r in model.summary.get("overlap", []) if r.get("positivity_warning")} \
        if isinstance(model.summary, dict) else set()
    trends = trend_series(one["assessments"], as_of)
    summary = model.summary if isinstance(model.summary, dict) else {}
    cfg = model.config
    model_facts = (
        ("what it does", "estimates, for each escalation option, the chance of response, the expected total "
                         "improvement score and the risk of a serious infection or severe cytopenia"),
        ("population", f"{summary.get('n_decisions', '?')} treatment decisions of {summary.get('n_patients', '?')} "
                       "patients with refractory myositis (simulated, literature-calibrated cohort by default)"),
        ("outcome", f"response = ACR/EULAR 2016 total improvement score ≥ {cfg.response_threshold:g} "
                    "(moderate improvement) at the follow-up horizon"),
        ("method", f"{cfg.learner.replace('_', '-')} on gradient-boosted trees; calibrated: {cfg.calibrate}; "
                   f"{int(cfg.intervals.level * 100)} % intervals from a patient bootstrap "
                   f"({cfg.intervals.n_boot} refits)"),
        ("options modelled", ", ".join(labels.get(a, a) for a in model.arms)),
        ("when not to use", "patients unlike the training population; options shown greyed; any decision "
                            "without a clinician's review"),
        ("explanations", " ".join(ex.notes) or SHAP_NOTE),
    )
    patient = one["patients"].iloc[0].to_dict()
    return Page(
        patient_id=patient_id, as_of=str(as_of.date()), model_name=loaded.name, model_version=loaded.version,
        model_alias=loaded.alias, run_id=loaded.run_id, horizon_weeks=24,
        response_definition=f"total improvement score ≥ {cfg.response_threshold:g}",
        facts=patient_facts(patient, as_of), activity_facts=latest_activity(trends),
        safety_facts=safety_summary(one["events"], one["assessments"], as_of),
        events=event_lines(one["events"], as_of), regimen=regimen_lines(current), trends=trends,
        options=option_rows(pred, labels, thin), explanations=explanations,
        monitoring=monitoring_reminders(monitoring, current_generics, proposed, drug_labels),
        model_facts=model_facts, notes=ex.notes,
    )


def _load_tables(data: Path, today: str | None) -> dict[str, pd.DataFrame]:
    """Read, validate and normalise the contract tables; patients with errors are reported, not dropped silently."""
    from features.contract import MeasureCatalog, normalise
    from features.vocabulary import Vocabulary
    from pipeline.config import load_reference
    from pipeline.io import read_contract_tables

    raw = read_contract_tables(data)
    vocabulary = Vocabulary.from_config(load_reference("drugs"))
    measures = MeasureCatalog.from_config(load_reference("measures"))
    return normalise(raw, vocabulary, measures, today)


def report_command(
    patient: Annotated[str | None, typer.Option(help="patient identifier (omit with --all)")] = None,
    all_patients: Annotated[bool, typer.Option("--all", help="one page per patient plus a searchable index")] = False,
    as_of: Annotated[str | None, typer.Option(help="as-of date YYYY-MM-DD (default: today)")] = None,
    data: Annotated[Path, typer.Option(help="folder of contract tables (Parquet or CSV)")] = Path("data/cohort"),
    out: Annotated[Path, typer.Option(help="FILE.html for one patient, a folder with --all")] = Path("report.html"),
    model_dir: Annotated[Path, typer.Option(help="fallback bundle folder")] = Path("data/train/model"),
    top_k: Annotated[int, typer.Option(help="reasons in words per option")] = 3,
) -> None:
    """Write the clinician page of one patient (or of every patient with --all and an index page)."""
    from pipeline.config import load_reference

    if (patient is None) == (not all_patients):
        raise typer.BadParameter("give either --patient ID or --all")
    when = _as_of(as_of, {})
    tables = _load_tables(data, str(when.date()))
    loaded = load_model(model_dir)
    monitoring = load_reference("monitoring")
    if patient is not None:
        html = render_page(build_patient_page(patient, when, tables, loaded, monitoring, top_k=top_k))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
        typer.echo(f"wrote {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for pid in sorted(tables["patients"]["patient_id"].astype(str).unique()):
        page = build_patient_page(pid, when, tables, loaded, monitoring, top_k=top_k)
        name = page_file_name(pid)
        (out / name).write_text(render_page(page), encoding="utf-8")
        best = next((o.label for o in page.options if o.recommended), "—")
        entries.append({"patient_id": pid, "href": name, "recommended": best})
    (out / "index.html").write_text(
        render_index(entries, as_of=str(when.date()), model=f"{loaded.name} v{loaded.version}"), encoding="utf-8")
    typer.echo(f"wrote {len(entries)} pages and {out / 'index.html'}")


def page_file_name(patient_id: str) -> str:
    """A safe file name for a patient's page (identifiers may hold any character)."""
    import hashlib
    import re

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", patient_id)[:60].strip("._") or "patient"
    return f"{stem}-{hashlib.sha1(patient_id.encode()).hexdigest()[:8]}.html"
