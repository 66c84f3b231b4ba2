"""The clinician page as plain data (`Page` and its parts) and numbers in words ('62 in 100 (52–72)')."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
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
    status: str  # below | at | above | above_goal (a glucocorticoid above its taper goal) | no_target | unknown
    #: what to do about the dose in words ("raise: …", "taper: …", "room up to 3 g/day …"); "" when nothing
    action: str = ""
    #: how the dose was judged for this patient ("1.2 mg/kg/day at 42 kg", "juvenile target per m² (1.31 m²)")
    basis: str = ""
    #: a drug given in courses months apart (rituximab) whose next course is overdue or due within four weeks
    course_due: bool = False


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
    #: chance prednisone is at or below the taper goal at the horizon with no rise (None: not modelled)
    p_steroid_sparing: float | None = None
    p_steroid_sparing_low: float | None = None
    p_steroid_sparing_high: float | None = None
    recommended: bool = False
    thin_overlap: bool = False
    #: a product label advises against the combination this option makes (never the ★), and the rule in words
    advised_against: bool = False
    combination_rule: str = ""
    #: a clinical note under the option's name (continue: the rituximab clock)
    note: str = ""
    #: "in validation, patients given 60–70 in 100 responded 64 in 100" for this option's estimate ("" if unknown)
    calibration_note: str = ""
    #: the facts that raise or lower this option's safety risk most, in words
    safety_reasons: tuple[str, ...] = ()

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
    #: the option's average difference with continuing over all patients (the contrast chart's labelled base)
    contrast_base: float | None = None
    #: the difference with continuing as the page prints it (`points_between` of the two estimates, in points)
    contrast_shown: float | None = None


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
    #: the prednisone taper goal (mg/day) of the steroid-sparing column; None when the model has no such head
    steroid_goal: float | None = None
    notes: tuple[str, ...] = ()
    generated: str = field(default_factory=lambda: date.today().isoformat())
    #: latest safety labs graded against CTCAE v5 (flagged from grade 2)
    labs: tuple[LabResult, ...] = ()
    #: what the response measure does not cover for this patient's disease and what to watch
    disease_notes: tuple[str, ...] = ()
    #: latest disease activity with its age and whether it is stale: (text, stale)
    activity: tuple[tuple[str, bool], ...] = ()
    #: the first eligible option of configs/options.yaml's guideline list: the summary's comparison
    guideline_option: str | None = None
    #: whether the patient is judged against juvenile (per-kg / per-m²) dose targets, and the body size used
    body_size: str = ""
    #: checks due before / after starting the recommended option (the monitoring rules of its drug)
    monitoring_due: tuple[Reminder, ...] = ()
    #: whether the model learnt from a simulated cohort (its evaluation used the simulator's truth); None: unknown
    simulated_training: bool | None = None
    #: what the ★ maximises: the chance of response, less `safety_weight` × the safety risk when the model weighs it
    star_rule: str = "highest estimated chance of response"
    #: label combination rules the current drugs already break together (continuing keeps them): (the drugs,
    #: the rule's text), e.g. ("tofacitinib with abatacept", "JAK inhibitor labels advise against …")
    regimen_cautions: tuple[tuple[str, str], ...] = ()
    #: how far an option's estimated difference from continuing was from the truth in validation (root mean square,
    #: probability; known on a simulated cohort only): said beside the ★'s difference
    difference_error: float | None = None


@dataclass(frozen=True)
class LabResult:
    """The latest value of one safety lab before the decision date, graded against its CTCAE v5 thresholds."""

    label: str
    value: float
    unit: str
    date: str
    age_days: int
    grade: int  # 0 = no CTCAE grade: within the reference range, or outside it on the side CTCAE does not grade
    flagged: bool
    direction: str  # low | high (outside the reference range, graded or not) | "" (within it)
    #: the reference range the value was judged against (this patient's sex; the row's own upper limit if given)
    lln: float | None = None
    uln: float | None = None

    @property
    def outside(self) -> str:
        """An ungraded value outside the reference range in words ('below the reference range 45–90 µmol/L'), else
        '' — so a low creatinine, which CTCAE does not grade, is never shown as normal."""
        if self.grade or not self.direction:
            return ""
        side = "below" if self.direction == "low" else "above"
        known = self.lln is not None and self.uln is not None
        limits = f" {self.lln:.3g}–{self.uln:.3g} {self.unit}" if known else ""
        return f"{side} the reference range{limits}"

    @property
    def text(self) -> str:
        """'lymphocytes 0.4 ×10⁹/L (2026-10-02): grade 3 (severe), low'; 'creatinine 38 µmol/L (2026-10-02): below
        the reference range 45–90 µmol/L'."""
        judged = (f"{GRADE_WORDS[self.grade]}, {self.direction}" if self.grade
                  else self.outside or "within normal limits")
        return f"{self.label} {self.value:.3g} {self.unit} ({self.date}): {judged}"


GRADE_WORDS = {1: "grade 1 (mild)", 2: "grade 2 (moderate)", 3: "grade 3 (severe)", 4: "grade 4 (life-threatening)"}


@dataclass(frozen=True)
class Summary:
    """The band at the top of the page: the answer in ten seconds."""

    option: OptionRow | None
    guideline: OptionRow | None
    reasons: tuple[str, ...]
    dose_actions: tuple[str, ...]
    flagged_labs: tuple[LabResult, ...]
    #: the ★ option against continuing: its average difference over all patients and this patient's facts that
    #: move it (the choice's reasons, as the plain reasons above are the level's)
    contrast_base: float | None = None
    contrast_reasons: tuple[str, ...] = ()

    @property
    def vs_guideline(self) -> float | None:
        """Chance of response of the recommended option minus the guideline's choice (None when they coincide)."""
        if self.option is None or self.guideline is None or self.guideline.option == self.option.option:
            return None
        if self.option.p_response is None or self.guideline.p_response is None:
            return None
        return self.option.p_response - self.guideline.p_response


def summarise(page: Page) -> Summary:
    """The summary of a page: the ★ option, the guideline's choice, the ★ option's top reasons (the patient's
    own facts) for its level and against continuing, the dose actions (first when a dose is below target, a
    steroid above its goal or a course due), flagged labs."""
    best = next((o for o in page.options if o.recommended), None)
    guideline = next((o for o in page.options if o.option == page.guideline_option), None)
    own = next((e for e in page.explanations if best is not None and e.option == best.option), None)
    actions = tuple(f"{r.label}: {r.action}" for r in page.regimen
                    if r.status in ("below", "above_goal") or r.course_due)
    return Summary(best, guideline, own.reasons[:3] if own else (), actions,
                   tuple(lab for lab in page.labs if lab.flagged), contrast_base=own.contrast_base if own else None,
                   contrast_reasons=own.contrast_reasons[:3] if own else ())


# --- numbers as words -------------------------------------------------------------------------------------------
def _ok(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def calibration_lines(options: Sequence[OptionRow]) -> tuple[str, ...]:
    """Each validation bin that holds an option's estimate, lowest first, naming the options it holds:
    'continue current regimen (46), optimise doses (50): of patients given 40–50 in 100 …'."""
    held: dict[str, list[OptionRow]] = {}
    for o in sorted((o for o in options if o.calibration_note), key=lambda o: o.p_response or 0.0):
        held.setdefault(o.calibration_note, []).append(o)
    return tuple(", ".join(f"{o.label} ({round(100 * (o.p_response or 0.0))})" for o in rows) + f": {note}"
                 for note, rows in held.items())


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


def points_between(a: float | None, b: float | None) -> float | None:
    """a − b (probabilities) as the page prints it: the difference of the two figures in 100, each rounded first,
    so a difference always matches the numbers shown beside it (61 and 38 in 100 → +23, never +24)."""
    if not (_ok(a) and _ok(b)):
        return None
    return (round(100 * a) - round(100 * b)) / 100  # type: ignore[operator]


def score_range(x: float | None, low: float | None = None, high: float | None = None) -> str:
    if not _ok(x):
        return "—"
    text = f"{x:.0f}"
    if _ok(low) and _ok(high):
        text += f" ({low:.0f}–{high:.0f})"
    return text

