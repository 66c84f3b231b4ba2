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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import typer
from markupsafe import Markup, escape

if TYPE_CHECKING:
    from pipeline.settings import Settings

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
    #: "in validation, patients given 60–70 in 100 responded 64 in 100" for this option's estimate ("" if unknown)
    calibration_note: str = ""

    @property
    def not_modelled(self) -> bool:
        """Too few training decisions took this option for the model to estimate it (the bundle's reason)."""
        return self.ineligible_reason.startswith("not modelled")


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
    #: the level of the uncertainty intervals the model reports (the bundle's `intervals.level`, e.g. 0.9)
    interval_level: float
    #: performance and calibration of this model version in validation, as (what, figure in words)
    performance: tuple[tuple[str, str], ...] = ()
    #: findings of the data checks on this patient's record (warnings; errors stop the page)
    data_findings: tuple[str, ...] = ()
    #: propensity below which an option's overlap is thin (the bundle's positivity threshold)
    positivity_threshold: float | None = None
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


# --- what this model version does and how it did in validation --------------------------------------------------
@dataclass(frozen=True)
class ModelEvidence:
    """What the page may say about the model: the labels' horizon, the interval level, the response threshold and
    the positivity threshold it was trained with, its validation metrics and pooled calibration bins."""

    horizon_weeks: int
    interval_level: float
    response_threshold: float
    juvenile_response_threshold: float
    positivity_threshold: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    #: pooled calibration bins: bin, lower, upper, n, mean_predicted, observed_rate (empty when unknown)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    source: str = "unknown"

    def threshold_for(self, patient: Mapping[str, Any]) -> float:
        """The response threshold of this patient's diagnosis (juvenile DM has its own)."""
        juvenile = str(patient.get("diagnosis")) == "juvenile_dermatomyositis"
        return self.juvenile_response_threshold if juvenile else self.response_threshold


def pooled_calibration(curve: pd.DataFrame, n_bins: int, strategy: str = "uniform") -> pd.DataFrame:
    """Pool the per-option calibration curve (evaluate's plots/calibration.csv) over options, bin by bin.

    Only equal-width bins line up across options; with quantile bins there is no common edge, so nothing is
    returned rather than a misleading figure."""
    columns = ["bin", "lower", "upper", "n", "mean_predicted", "observed_rate"]
    if strategy != "uniform" or curve.empty:
        return pd.DataFrame(columns=columns)
    missing = {"bin", "n", "mean_predicted", "observed_rate"} - set(curve.columns)
    if missing:
        raise ValueError(f"table calibration: missing column(s) {sorted(missing)} (rule: evaluate's curve layout)")
    c = curve.assign(events=curve["n"] * curve["observed_rate"], sum_p=curve["n"] * curve["mean_predicted"])
    g = c.groupby("bin", as_index=False)[["n", "events", "sum_p"]].sum()
    g = g[g["n"] > 0]
    return pd.DataFrame({
        "bin": g["bin"].astype(int), "lower": g["bin"] / n_bins, "upper": (g["bin"] + 1) / n_bins,
        "n": g["n"].astype(int), "mean_predicted": g["sum_p"] / g["n"], "observed_rate": g["events"] / g["n"],
    })[columns].reset_index(drop=True)


def calibration_note(p: float | None, pooled: pd.DataFrame, *, min_n: int = 20) -> str:
    """'of patients given 60–70 in 100 in validation, 64 in 100 responded (n = 120)' for the bin holding p;
    empty when p is unknown or the bin held fewer than `min_n` validation decisions (too few to say)."""
    if not _ok(p) or pooled.empty:
        return ""
    hit = pooled[(pooled["lower"] <= p) & ((p < pooled["upper"]) | ((pooled["upper"] >= 1.0) & (p <= 1.0)))]
    if hit.empty or int(hit["n"].iloc[0]) < min_n:
        return ""
    r = hit.iloc[0]
    return (f"of patients given {round(100 * r['lower'])}–{round(100 * r['upper'])} in 100 in validation, "
            f"{round(100 * r['observed_rate'])} in 100 responded (n = {int(r['n'])})")


def performance_facts(metrics: Mapping[str, float], interval_level: float, horizon_weeks: int
                      ) -> tuple[tuple[str, str], ...]:
    """The model-facts lines on performance in words, from evaluate's headline metrics; a missing metric is
    left out, never invented. Interval coverage well below its level is said plainly."""
    m = {k: float(v) for k, v in metrics.items() if v is not None and _ok(float(v))}
    out: list[tuple[str, str]] = []
    if "response_auroc" in m:
        n = f" on {int(m['response_n'])} held-out decisions" if "response_n" in m else ""
        pts = f" of {int(m['n_test_patients'])} patients" if "n_test_patients" in m else ""
        out.append(("discrimination", f"response AUROC {m['response_auroc']:.2f}{n}{pts} (0.5 = chance, 1 = perfect)"))
    if "response_calibration_slope" in m and "response_calibration_intercept" in m:
        text = (f"calibration slope {m['response_calibration_slope']:.2f} and intercept "
                f"{m['response_calibration_intercept']:+.2f} (ideal 1 and 0)")
        if "response_ece" in m:
            text += f"; estimates were off by {100 * m['response_ece']:.1f} in 100 on average (ECE)"
        out.append(("calibration", text))
    if "sim_interval_coverage" in m:
        cov, level = m["sim_interval_coverage"], interval_level
        text = (f"on the simulated cohort the {round(100 * level)} % intervals held the true chance of response for "
                f"{round(100 * cov)} % of held-out decisions")
        if cov < level - 0.1:
            text += (": they are too narrow — read them as the spread between refitted models, not as the full "
                     "uncertainty")
        out.append(("uncertainty intervals", text))
    if "sim_recommended_value" in m and "sim_oracle_value" in m:
        out.append(("recommendations", f"on the simulated cohort, following the ★ option gave a response within "
                                       f"{horizon_weeks} weeks in {round(100 * m['sim_recommended_value'])} in 100 "
                                       f"patients, against {round(100 * m['sim_oracle_value'])} in 100 if the truly "
                                       "best option had always been chosen"))
    if "safety_auroc" in m:
        out.append(("safety model", f"AUROC {m['safety_auroc']:.2f} for a serious infection or severe cytopenia"))
    return tuple(out)


def thin_overlap_options(pred: pd.DataFrame, threshold: float) -> set[str]:
    """Eligible options that patients like this one were rarely given: the model's propensity (the estimated
    chance that a clinician picks the option for these features) is below the positivity threshold, so the
    estimate leans on extrapolation from dissimilar patients."""
    if "propensity" not in pred.columns:
        return set()
    prop = pd.to_numeric(pred["propensity"], errors="coerce")
    thin = pred["eligible"].astype(bool) & prop.notna() & (prop < threshold)
    return set(pred.loc[thin, "option"].astype(str))


def ineligible_text(reason: str, drug_labels: Mapping[str, str]) -> str:
    """The bundle's ineligibility reason in a clinician's words: drug labels, not generic codes; plain plurals."""
    import re

    text = re.sub(r"\b([a-z_]+)\b", lambda m: drug_labels.get(m.group(1), m.group(1)), reason) if reason else ""
    text = re.sub(r"\b1 training decision\(s\)", "1 training decision", text)
    return text.replace("decision(s)", "decisions")


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
    def text(value: Any, default: str) -> str:  # a missing cell is None or NaN, never the word "nan"
        return value if isinstance(value, str) and value else default

    lines = []
    for row in current.to_dict(orient="records"):
        frac = row.get("fraction_of_target")
        generic = text(row.get("generic"), "unknown drug")
        lines.append(RegimenLine(
            drug=text(row.get("drug"), generic),
            label=text(row.get("label"), generic),
            dose=_fmt_dose(row),
            target=text(row.get("target_text"), "—"),
            fraction_of_target=float(frac) if _ok(frac) else None,
            status=text(row.get("status"), "unknown"),
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


def option_rows(pred: pd.DataFrame, labels: Mapping[str, str], thin: set[str] | None = None, *,
                calibration: pd.DataFrame | None = None, drug_labels: Mapping[str, str] | None = None
                ) -> tuple[OptionRow, ...]:
    """One table row per option from one patient's `predict_frame` rows, with the validation calibration of the
    bin each estimate falls in and the ineligibility reason in words."""
    rows = []
    pooled = calibration if calibration is not None else pd.DataFrame()

    def f(r: Mapping[str, Any], key: str) -> float | None:
        v = r.get(key)
        return float(v) if _ok(v) else None

    for r in pred.to_dict(orient="records"):
        eligible = bool(r["eligible"])
        reason = r.get("ineligible_reason")
        rows.append(OptionRow(
            option=str(r["option"]), label=labels.get(str(r["option"]), str(r["option"])), eligible=eligible,
            ineligible_reason=ineligible_text(str(reason), drug_labels or {})
            if isinstance(reason, str) and not eligible else "",
            p_response=f(r, "p_response"), p_response_low=f(r, "p_response_low"),
            p_response_high=f(r, "p_response_high"), effect_vs_continue=f(r, "effect_vs_continue"),
            expected_tis=f(r, "expected_tis"), expected_tis_low=f(r, "expected_tis_low"),
            expected_tis_high=f(r, "expected_tis_high"), p_safety=f(r, "p_safety"),
            p_safety_low=f(r, "p_safety_low"), p_safety_high=f(r, "p_safety_high"),
            recommended=bool(r.get("recommended")) and eligible,
            thin_overlap=str(r["option"]) in (thin or set()),
            calibration_note=calibration_note(f(r, "p_response"), pooled) if eligible else "",
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
    """The latest value of each measure with its scale and date: 'MMT-8 muscle strength 63 / 80 (2026-11-17)'."""
    import re

    out = []
    for s in trends:
        if not s.values:
            continue
        scale = re.fullmatch(r"0[–-](\d+(?:\.\d+)?)", s.unit)
        value = f"{s.values[-1]:.3g}" + (f" / {scale.group(1)}" if scale else f" {s.unit}")
        out.append(f"{s.label} {value} ({s.dates[-1]})")
    return tuple(out)


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


def build_patient_page(
    patient_id: str,
    as_of: pd.Timestamp,
    tables: Mapping[str, pd.DataFrame],
    loaded: LoadedModel,
    monitoring: Mapping[str, Any],
    evidence: ModelEvidence,
    *,
    top_k: int = 3,
    findings: Sequence[str] = (),
) -> Page:
    """Everything for one patient from the normalised contract tables (all patients or only this one); every
    statement about the model (horizon, interval level, performance) comes from `evidence`."""
    from features.build import build_features
    from features.vocabulary import OptionCatalog, Vocabulary
    from models import explain as E
    from models.bundle import interval_meaning
    from pipeline.config import load_reference

    vocabulary = Vocabulary.from_config(load_reference("drugs"))
    catalog = OptionCatalog.from_config(load_reference("options"))
    one = {name: t[t["patient_id"].astype(str) == patient_id].reset_index(drop=True) for name, t in tables.items()}
    if one["patients"].empty:
        raise ValueError(f"table patients: no row with patient_id {patient_id!r} (rule: a known patient)")
    keys = pd.DataFrame({"patient_id": [patient_id], "decision_id": [f"{patient_id}@{as_of.date()}"],
                         "as_of": [as_of]})
    model = loaded.model
    # the feature settings the model was trained with (refused when it records none), never today's params.yaml
    fs = build_features(keys, one, vocabulary, catalog, model.feature_config())
    features, dictionary, current = fs.features, fs.dictionary, fs.current_regimen
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
    thin = thin_overlap_options(pred, evidence.positivity_threshold)
    trends = trend_series(one["assessments"], as_of)
    summary = model.summary if isinstance(model.summary, dict) else {}
    cfg = model.config
    counts = summary.get("option_counts", {}) if isinstance(summary.get("option_counts"), dict) else {}
    calibrated = (f"probabilities recalibrated per option ({cfg.calibration.method})" if cfg.calibrate
                  else "probabilities not recalibrated")
    model_facts = (
        ("what it does", "estimates, for each escalation option, the chance of response within "
                         f"{evidence.horizon_weeks} weeks, the expected total improvement score and the risk of a "
                         "serious infection or severe cytopenia"),
        ("population", f"{summary.get('n_decisions', '?')} treatment decisions of {summary.get('n_patients', '?')} "
                       "patients with refractory myositis (simulated, literature-calibrated cohort by default)"),
        ("outcome", f"response = ACR/EULAR 2016 total improvement score ≥ {evidence.response_threshold:g} "
                    f"(juvenile DM ≥ {evidence.juvenile_response_threshold:g}; moderate improvement) at "
                    f"{evidence.horizon_weeks} weeks"),
        ("method", f"{cfg.learner.replace('_', '-')} on gradient-boosted trees; {calibrated}"),
        ("intervals", interval_meaning(cfg)),
        ("options modelled", ", ".join(labels.get(a, a) for a in model.arms)),
        ("training decisions per option", ", ".join(f"{labels.get(o, o)} {int(counts[o])}"
                                                    for o in catalog.names if o in counts) or "not recorded"),
        ("when not to use", "patients unlike the training population; options shown greyed; any decision "
                            "without a clinician's review"),
        ("explanations", " ".join(ex.notes) or SHAP_NOTE),
    )
    patient = one["patients"].iloc[0].to_dict()
    return Page(
        patient_id=patient_id, as_of=str(as_of.date()), model_name=loaded.name, model_version=loaded.version,
        model_alias=loaded.alias, run_id=loaded.run_id, horizon_weeks=evidence.horizon_weeks,
        response_definition=f"total improvement score ≥ {evidence.threshold_for(patient):g}",
        facts=patient_facts(patient, as_of), activity_facts=latest_activity(trends),
        safety_facts=safety_summary(one["events"], one["assessments"], as_of),
        events=event_lines(one["events"], as_of), regimen=regimen_lines(current), trends=trends,
        options=option_rows(pred, labels, thin, calibration=evidence.calibration, drug_labels=drug_labels),
        explanations=explanations,
        monitoring=monitoring_reminders(monitoring, current_generics, proposed, drug_labels),
        model_facts=model_facts, interval_level=evidence.interval_level,
        performance=performance_facts(evidence.metrics, evidence.interval_level, evidence.horizon_weeks),
        data_findings=tuple(findings), positivity_threshold=evidence.positivity_threshold, notes=ex.notes,
    )


def _load_tables(data: Path, today: str | None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Read and check the contract tables: the normalised tables of the accepted patients and every finding
    (`table, row, patient_id, column, rule, severity, message`), so the page can show them."""
    from features.contract import MeasureCatalog, check
    from features.vocabulary import Vocabulary
    from pipeline.config import load_reference
    from pipeline.io import read_contract_tables

    raw = read_contract_tables(data)
    vocabulary = Vocabulary.from_config(load_reference("drugs"))
    measures = MeasureCatalog.from_config(load_reference("measures"))
    result = check(raw, vocabulary, measures, today)
    return result.normalised, result.violations


def patient_findings(violations: pd.DataFrame, patient_id: str) -> tuple[str, ...]:
    """This patient's data-check findings as lines naming table, row, column and rule; an error stops the page
    (a ValueError listing every error), because its record was rejected and any estimate would be wrong."""
    if violations.empty:
        return ()
    v = violations[violations["patient_id"].astype(str) == patient_id]
    lines = tuple(f"{r['severity']}: table {r['table']}, row {r['row']}, column {r['column']} "
                  f"(rule {r['rule']}): {r['message']}" for r in v.to_dict(orient="records"))
    errors = [line for line, sev in zip(lines, v["severity"], strict=True) if sev == "error"]
    if errors:
        raise ValueError(f"patient {patient_id!r} has data errors, no page written:\n" + "\n".join(errors))
    return lines


def load_evidence(loaded: LoadedModel, settings: Settings, evaluate_dir: Path = Path("data/evaluate"),
                  train_dir: Path = Path("data/train"), *, use_mlflow: bool = True) -> ModelEvidence:
    """What the page may say about this model version: the horizon and calibration settings it was trained and
    evaluated with (its MLflow run's params, else the settings), its validation metrics and calibration curve
    (the run's metrics and `evaluate/` artefacts, else data/evaluate/ when data/train/run.json names the same
    run). Metrics of another run are never shown."""
    cfg = loaded.model.config
    run_params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    curve = pd.DataFrame()
    source = "not evaluated"
    if use_mlflow and loaded.run_id not in ("", "unknown"):
        try:
            import mlflow
            from mlflow.tracking import MlflowClient

            from pipeline import registry

            registry.setup_mlflow()
            run = MlflowClient().get_run(loaded.run_id)
            run_params, metrics = dict(run.data.params), dict(run.data.metrics)
            if "response_auroc" in metrics:
                source = f"MLflow run {loaded.run_id}"
            try:
                path = mlflow.artifacts.download_artifacts(run_id=loaded.run_id,
                                                           artifact_path="evaluate/plots/calibration.csv")
                curve = pd.read_csv(path)
            except Exception:  # noqa: BLE001 - no logged curve: the local one below, if it is this run's
                pass
        except Exception as exc:  # noqa: BLE001 - say why the registry's figures are missing, then fall back
            typer.echo(f"MLflow run {loaded.run_id} not readable ({exc}); using {evaluate_dir}", err=True)
    run_json = Path(train_dir) / "run.json"
    same_run = run_json.is_file() and json.loads(run_json.read_text()).get("run_id") == loaded.run_id
    # every held-out metric is in tables/headline.json; metrics.json holds the headline ones only
    local = next((p for p in (Path(evaluate_dir) / "tables" / "headline.json", Path(evaluate_dir) / "metrics.json")
                  if p.is_file()), None)
    if same_run and "response_auroc" not in metrics and local is not None:
        metrics = {k: v for k, v in json.loads(local.read_text()).items() if v is not None}
        source = str(local)
    if same_run and curve.empty and (Path(evaluate_dir) / "plots" / "calibration.csv").is_file():
        curve = pd.read_csv(Path(evaluate_dir) / "plots" / "calibration.csv")
    recorded = getattr(loaded.model, "data_settings", None)  # the label settings the model was trained with
    horizon = (recorded.labels.horizon_weeks if recorded is not None
               else run_params.get("labels.horizon_weeks", settings.labels.horizon_weeks))
    n_bins = int(run_params.get("evaluation.calibration_bins", settings.evaluation.calibration_bins))
    strategy = str(run_params.get("evaluation.calibration_strategy", settings.evaluation.calibration_strategy))
    return ModelEvidence(
        horizon_weeks=int(float(horizon)), interval_level=float(cfg.intervals.level),
        response_threshold=float(cfg.response_threshold),
        juvenile_response_threshold=float(cfg.juvenile_response_threshold),
        positivity_threshold=float(cfg.propensity.positivity_threshold),
        metrics=metrics, calibration=pooled_calibration(curve, n_bins, strategy), source=source,
    )


def run_report(patient: str | None = None, all_patients: bool = False, as_of: date | None = None,
               data: Path = Path("data/cohort"), out: Path = Path("report.html"),
               model_dir: Path = Path("data/train/model"), top_k: int = 3) -> None:
    """Write the clinician page of one patient to the file `out` (or, with `all_patients`, one page per patient and
    an index into the folder `out`) as of `as_of` (default: today). An unknown patient, or one whose record has
    data errors, is refused before the model loads."""
    from pipeline.config import load_reference
    from pipeline.settings import load_settings

    if (patient is None) == (not all_patients):
        raise typer.BadParameter("give either --patient ID or --all")
    when = pd.Timestamp(as_of or date.today())
    tables, violations = _load_tables(data, str(when.date()))
    if patient is not None:
        try:
            findings = patient_findings(violations, patient)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--patient") from None
        if patient not in set(tables["patients"]["patient_id"].astype(str)):
            raise typer.BadParameter(f"no patient {patient!r} in {data}", param_hint="--patient")
    loaded = load_model(model_dir)
    evidence = load_evidence(loaded, load_settings())
    monitoring = load_reference("monitoring")
    if patient is not None:
        page = build_patient_page(patient, when, tables, loaded, monitoring, evidence, top_k=top_k,
                                  findings=findings)
        html = render_page(page)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
        typer.echo(f"wrote {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    rejected = sorted(set(violations.loc[violations["severity"] == "error", "patient_id"].dropna().astype(str)))
    if rejected:
        typer.echo(f"{len(rejected)} patient(s) with data errors get no page: {', '.join(rejected[:20])}", err=True)
    for pid in sorted(tables["patients"]["patient_id"].astype(str).unique()):
        page = build_patient_page(pid, when, tables, loaded, monitoring, evidence, top_k=top_k,
                                  findings=patient_findings(violations, pid))
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
