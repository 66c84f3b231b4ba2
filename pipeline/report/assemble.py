"""Page assembly: one patient's tables, features, predictions and explanations into a `Page`."""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.data import (
    SHAP_NOTE,
    TREND_MEASURES,
    Bar,
    OptionExplanation,
    OptionRow,
    Page,
    RegimenLine,
    Reminder,
    TrendSeries,
    _ok,
    points_between,
    signed_points,
)
from pipeline.report.evidence import (
    ModelEvidence,
    calibration_note,
    ineligible_text,
    performance_facts,
    subgroup_fact,
    thin_overlap_options,
)
from pipeline.report.load import LoadedModel


# --- assembling the page from frames ----------------------------------------------------------------------------
def _method(model: object) -> str:
    """The response learner in words, with how it was chosen."""
    name = str(getattr(model, "learner_name", model.config.learner))  # type: ignore[attr-defined]
    words = name.split("(")[0].replace("_", " ")  # the settings in brackets are the model card's, not the page's
    if name.startswith("modifier_glm"):
        words = "penalised logistic regression with the published effect modifiers"
    elif name.startswith("score_glm"):
        words = ("penalised logistic regression with the published effect modifiers, averaged with a regression of "
                 "the total improvement score itself, which carries more than whether it reached response")
        if "trees=" in name:
            words += ", and with gradient-boosted trees fitted to that score"
    elif name.startswith(("s_learner", "t_learner", "dr_learner", "x_learner")):
        words = f"{name.split('(')[0].replace('_', '-')} on gradient-boosted trees"
    chosen = bool(model.summary.get("selection"))  # type: ignore[attr-defined]
    return words + ("; chosen among candidate models by how well their recommendations would have done for the "
                    "training patients (cross-fitted doubly robust value)" if chosen else "")


#: `models.explain.CALIBRATION_NOTE` in a clinician's words for the model facts
CALIBRATED_REASONS = ("a fact's points are its SHAP value — its exact share of the model's score before "
                      "recalibration — rescaled so that the points of all facts add up to the chance shown")


#: RIM (Oddis 2013): median time to the IMACS definition of improvement after rituximab, in weeks.
RITUXIMAB_MEDIAN_WEEKS = 20.0


def rituximab_clock(X: pd.DataFrame, current: pd.DataFrame | None = None, as_of: pd.Timestamp | None = None,
                    row: int = 0) -> str:
    """'Waiting for rituximab' judged against how long the patient has waited: weeks since the last course began
    (its first infusion, as RIM counted; the current regimen's `last_course_date`, else the features' months since
    the last infusion) beside RIM's median time to improvement ("" when the patient never had rituximab or it was
    over a year ago)."""
    from features.build import RITUXIMAB
    from pipeline.report.clinical import count

    started = (current.loc[current["generic"] == RITUXIMAB, "last_course_date"].dropna()
               if current is not None and as_of is not None and "last_course_date" in current.columns
               else pd.Series(dtype="datetime64[ns]"))
    if len(started):
        weeks, since = (pd.Timestamp(as_of) - pd.Timestamp(started.max())).days / 7, " began"
    elif "months_since_rituximab" in X.columns and _ok(X["months_since_rituximab"].iloc[row]):
        weeks, since = float(X["months_since_rituximab"].iloc[row]) * 52.18 / 12, ""
    else:
        return ""
    if weeks > 52.18:
        return ""
    verdict = ("still within the usual time to respond" if weeks < RITUXIMAB_MEDIAN_WEEKS
               else "past the median time to respond")
    return (f"rituximab clock: the last course{since} {count(round(weeks), 'week')} ago; in RIM the median time to "
            f"improvement was {RITUXIMAB_MEDIAN_WEEKS:.0f} weeks — {verdict}")


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
            p_steroid_sparing=f(r, "p_steroid_sparing"), p_steroid_sparing_low=f(r, "p_steroid_sparing_low"),
            p_steroid_sparing_high=f(r, "p_steroid_sparing_high"),
            recommended=bool(r.get("recommended")) and eligible,
            thin_overlap=str(r["option"]) in (thin or set()),
            advised_against=bool(r.get("advised_against")) and eligible,
            combination_rule=str(r.get("combination_rule") or "") if eligible else "",
            calibration_note=calibration_note(f(r, "p_response"), pooled) if eligible else "",
        ))
    return tuple(rows)


def option_explanations(
    explanations: Any, X: pd.DataFrame, dictionary: pd.DataFrame, estimates: Mapping[str, float | None],
    labels: Mapping[str, str], *, row: int = 0, n_bars: int = 8, k: int = 3, unmeasured: Collection[str] = (),
    groups_of: dict[tuple[str, ...], Any] | None = None,
) -> tuple[OptionExplanation, ...]:
    """Waterfall bars (top clinical facts + 'all other facts'), contrast bars and plain-words reasons per option
    with an estimate in `estimates` (the chance of response the options table prints, by option) for one row of X,
    from `models.explain.Explanations` (`unmeasured`: see `clinical.plain_reason`). The heading's chance, the
    waterfall's end, the difference with continuing and the contrast chart's end are those estimates, never the
    explainer's own copy of them: the page has one source for each figure (the bars share the explained change;
    a gap between the two is drawn as 'not attributed to one fact'). `groups_of`: the page's cache of feature
    groups (`models.explain.cached_feature_groups`)."""
    from models import explain as E

    out = []
    # every bar's fact in words (n_bars + the option group), so a bar reads "IVIG 1 g/kg … = 50 % of target", not "IVIG"
    reasons = E.reasons_frame(explanations, X, dictionary, max(k, n_bars) + 1, groups_of=groups_of)
    reasons = reasons[reasons["row"] == row].set_index("option")
    shown = {o: float(p) for o, p in estimates.items() if _ok(p)}
    control = shown.get(explanations.control)
    for option in [o for o in explanations.arms if o in shown]:
        s = explanations.get("response", option)
        if s is None:
            continue
        r = reasons.loc[option] if option in reasons.index else None
        groups = E.cached_feature_groups(s.columns, dictionary, groups_of)
        base = float(s.probability_base[row]) * 100 if s.probability_base is not None else float(s.base[row])
        final = 100 * shown[option]
        own, bars = _split_option(_bars(_worded(E.grouped_frame(s, groups, row=row), r, "reason", unmeasured), n_bars,
                                        final - base))
        con = explanations.get("contrast", option)
        contrast: tuple[Bar, ...] = ()
        total = con_base = difference = None
        if con is not None and control is not None:
            pts = E.contrast_points(con)
            start = float(con.probability_base[row] if con.probability_base is not None else con.base[row]) * 100
            # the difference the table shows; where no fact moves the odds ratio (an option without modifiers) the
            # change from the average difference is this patient's level, a bar 'not attributed to one fact'
            total = 100 * (shown[option] - control)
            worded = _worded(E.grouped_frame(con, groups, row=row, points=pts), r, "contrast_reason", unmeasured)
            con_own, contrast = _split_option(_bars(worded, n_bars, total - start))
            con_base = start + con_own
            # the heading and the contrast chart print the difference of the two estimates as the page shows them
            difference = 100 * points_between(shown[option], control)  # type: ignore[operator]
        out.append(OptionExplanation(
            option, labels.get(option, option), base + own, final, bars, contrast, total,
            _reason_texts(r, "reason", k), _reason_texts(r, "contrast_reason", k), contrast_base=con_base,
            contrast_shown=difference))
    return tuple(out)


def _worded(grouped: pd.DataFrame, r: pd.Series | None, prefix: str, unmeasured: Collection[str] = ()
            ) -> pd.DataFrame:
    """The grouped explanation with each clinical feature labelled by this patient's fact as the option's reasons
    word it ("latest CK = 4.9 × upper limit of normal", matched by clinical feature), else by the feature's name;
    the points are unchanged, so a bar and a reason about one feature read alike."""
    from models.explain import OPTION_GROUP

    facts: dict[str, str] = {}
    i = 1
    while r is not None and f"{prefix}_{i}_feature" in r.index:
        group, text = r[f"{prefix}_{i}_feature"], r[f"{prefix}_{i}_text"]
        if isinstance(group, str) and isinstance(text, str) and group != OPTION_GROUP:
            facts.setdefault(group, _fact(text, unmeasured))
        i += 1
    return grouped.assign(label=[facts.get(g, label) for g, label in zip(grouped["group"], grouped["label"],
                                                                          strict=True)])


def _fact(reason: str, unmeasured: Collection[str] = ()) -> str:
    """The fact of a worded reason in clinical words, without its effect: 'latest CK = 4.9 × upper limit of normal
    → +2 in 100' reads 'latest CK = 4.9 × upper limit of normal'."""
    from pipeline.report.clinical import plain_reason

    return plain_reason(reason, unmeasured).split(" → ")[0]


def _split_option(bars: tuple[Bar, ...]) -> tuple[float, tuple[Bar, ...]]:
    """The S-learner's option group is no fact about the patient: its points join the chart's base (the average
    patient on this option; the option's average difference with continuing) and leave the bars."""
    from models.explain import OPTION_LABEL

    own = sum(b.points for b in bars if b.label == OPTION_LABEL)
    return own, tuple(b for b in bars if b.label != OPTION_LABEL)


def _reason_texts(r: pd.Series | None, prefix: str, k: int, min_points: float = 0.005) -> tuple[str, ...]:
    """The plain-words reasons that move the estimate by at least half a point (smaller ones are noise)."""
    if r is None:
        return ()
    from models.explain import OPTION_REASON

    out = []
    for i in range(1, k + 2):
        text, value = r.get(f"{prefix}_{i}_text"), r.get(f"{prefix}_{i}_contribution")
        if (isinstance(text, str) and not text.startswith(tuple(OPTION_REASON.values())) and _ok(value)
                and abs(float(value)) >= min_points):
            out.append(text)
    return tuple(out[:k])


def _bars(grouped: pd.DataFrame, n: int, total: float | None = None) -> tuple[Bar, ...]:
    """The n largest clinical facts by points, the rest summed into 'all other facts', so the bars add up to the
    explained change (facts under 0.05 points are no bar of their own); if `total` (points) differs from their sum
    by more than 0.05, the gap is a bar of its own ("not attributed to one fact") rather than a chart that does not
    add up."""
    g = grouped.reindex(grouped["points"].abs().sort_values(ascending=False).index)
    top = g.iloc[:n][(g["points"].iloc[:n].abs() * 100) >= 0.05]  # a fact that moves nothing is no bar
    bars = [Bar(str(lab), float(p) * 100) for lab, p in zip(top["label"], top["points"], strict=True)]
    rest = float(g["points"].sum() - top["points"].sum()) * 100
    if len(g) > len(top) and abs(rest) >= 0.05:
        bars.append(Bar(f"all other facts ({len(g) - len(top)})", rest))
    gap = (total - sum(b.points for b in bars)) if total is not None else 0.0
    if abs(gap) > 0.05:
        bars.append(Bar("not attributed to one fact", gap))
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


def safety_summary(events: pd.DataFrame, assessments: pd.DataFrame, as_of: pd.Timestamp) -> tuple[str, ...]:
    """Infections and cytopenias in the 6 months before the decision (the labs are graded apart: `clinical`)."""
    ev = events[pd.to_datetime(events["date"]) < as_of] if len(events) else events
    recent = ev[pd.to_datetime(ev["date"]) >= as_of - pd.DateOffset(months=6)] if len(ev) else ev
    n_inf = int(recent["event"].isin(["serious_infection", "opportunistic_infection"]).sum()) if len(recent) else 0
    n_cyt = int((recent["event"] == "cytopenia").sum()) if len(recent) else 0
    return (f"{n_inf or 'no'} infection{'s' if n_inf != 1 else ''} and {n_cyt or 'no'} recorded "
            f"cytopenia event{'s' if n_cyt != 1 else ''} in the 6 months before {as_of.date()}",)


def _latest(assessments: pd.DataFrame, measure: str, as_of: pd.Timestamp) -> float | None:
    """The latest numeric value of one measure dated before `as_of`, or None."""
    a = assessments[(assessments["measure"] == measure) & (pd.to_datetime(assessments["date"]) < as_of)]
    v = pd.to_numeric(a.sort_values("date")["value"], errors="coerce").dropna()
    return float(v.iloc[-1]) if len(v) else None


def _with_safety_reasons(o: OptionRow, ex: Any, X: pd.DataFrame, dictionary: pd.DataFrame, *, row: int,
                         k: int = 3, unmeasured: Collection[str] = (),
                         groups_of: dict[tuple[str, ...], Any] | None = None) -> OptionRow:
    """The option's row with the facts that move its safety risk most (points out of 100; the option group is left
    out, being no fact about the patient), each worded as this patient's fact, as the response reasons are."""
    from models import explain as E

    s = ex.get("safety", o.option) if o.eligible else None
    if s is None:
        return o
    groups = E.cached_feature_groups(s.columns, dictionary, groups_of)
    top = E.top_reasons(s.rows([row]), X.iloc[[row]], groups, k).iloc[0]
    texts = []
    for i in range(1, k + 1):
        text, points = top.get(f"reason_{i}_text"), top.get(f"reason_{i}_contribution")
        if isinstance(text, str) and _ok(points) and abs(float(points)) >= 0.005:
            texts.append(f"{_fact(text, unmeasured)} {'raises' if points > 0 else 'lowers'} it "
                         f"({signed_points(points)})")
    return replace(o, safety_reasons=tuple(texts))


def event_lines(events: pd.DataFrame, as_of: pd.Timestamp) -> tuple[tuple[str, str, str], ...]:
    if not len(events):
        return ()
    ev = events[pd.to_datetime(events["date"]) < as_of].sort_values("date", ascending=False)
    return tuple(
        (str(pd.Timestamp(r["date"]).date()), str(r["event"]).replace("_", " "),
         "" if not isinstance(r.get("details"), str) else r["details"])
        for r in ev.to_dict(orient="records")
    )



@dataclass(frozen=True, eq=False)
class ModelOutputs:
    """What the model says about a batch of decisions, one per patient: their features, current regimens and
    feature dictionary, the predictions (long; `row` = the decision's position), the checked model matrix and the
    explanations. The model runs once for the batch; `one` is one decision's share, what its page needs."""

    features: pd.DataFrame
    dictionary: pd.DataFrame
    current: pd.DataFrame
    pred: pd.DataFrame
    X: pd.DataFrame
    ex: Any  # models.explain.Explanations

    @functools.cached_property
    def _positions(self) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray], dict[str, np.ndarray]]:
        """Where each patient's decisions, each decision's predictions and each patient's current drugs sit in
        the batch (row positions, in order), found once for the batch rather than by a scan per page."""
        decisions = pd.Series(np.arange(len(self.features))).groupby(
            self.features["patient_id"].astype(str).to_numpy(), sort=False).indices
        predictions = self.pred.groupby(self.pred["row"].to_numpy(), sort=False).indices
        drugs = self.current.groupby(self.current["patient_id"].astype(str).to_numpy(), sort=False).indices
        return decisions, {int(k): v for k, v in predictions.items()}, drugs

    def one(self, patient_id: str) -> ModelOutputs:
        """The outputs of one patient's decision, as if the model had run on it alone."""
        decisions, predictions, drugs = self._positions
        none = np.empty(0, dtype=np.intp)
        at = decisions.get(patient_id, none)
        if len(at) != 1:
            raise ValueError(f"model outputs: {len(at)} decisions of patient {patient_id!r} (rule: exactly one)")
        i = int(at[0])
        pred = self.pred.iloc[predictions.get(i, none)].assign(row=0).reset_index(drop=True)
        current = self.current.iloc[drugs.get(patient_id, none)].reset_index(drop=True)
        return ModelOutputs(self.features.iloc[[i]].reset_index(drop=True), self.dictionary, current, pred,
                            self.X.iloc[[i]].reset_index(drop=True), self.ex.rows([i]))


def decision_keys(patient_ids: Sequence[str], as_of: pd.Timestamp) -> pd.DataFrame:
    """One decision per patient on `as_of`: the keys a page's features and predictions are built for."""
    return pd.DataFrame({"patient_id": list(patient_ids),
                         "decision_id": [f"{pid}@{as_of.date()}" for pid in patient_ids], "as_of": as_of})


def model_outputs(keys: pd.DataFrame, tables: Mapping[str, pd.DataFrame], loaded: LoadedModel) -> ModelOutputs:
    """Features, predictions and explanations of every decision in `keys` in one pass of the model, with the
    feature settings the model was trained with (refused when it records none), never today's params.yaml."""
    from features.build import build_features
    from features.vocabulary import Vocabulary
    from models import explain as E
    from pipeline.config import load_catalog, load_options

    vocabulary = load_catalog("drugs", Vocabulary.from_config)
    catalog = load_options(vocabulary)
    model = loaded.model
    fs = build_features(keys, tables, vocabulary, catalog, model.feature_config())
    features = fs.features.reset_index(drop=True)
    return ModelOutputs(features, E.with_dose_targets(fs.dictionary, vocabulary), fs.current_regimen,
                        model.predict_frame(features), model.contract.check(features),
                        E.explain_model(model, features))


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
    rules: Mapping[str, Any] | None = None,
    outputs: ModelOutputs | None = None,
) -> Page:
    """Everything for one patient from the normalised contract tables (all patients or only this one); every
    statement about the model (horizon, interval level, performance) comes from `evidence`, every clinical rule
    (lab grades, dose goals, disease notes) from `rules` (configs/clinical_rules.yaml). `outputs` are the model's
    for this patient's decision (`ModelOutputs.one` of a batch); without them the model runs for this page."""
    from features.build import juvenile_decisions, to_days
    from features.vocabulary import Vocabulary
    from models import explain as E
    from models.bundle import interval_meaning
    from pipeline.config import load_catalog, load_options, load_reference
    from pipeline.report import clinical as C

    rules = rules if rules is not None else load_reference("clinical_rules")
    vocabulary = load_catalog("drugs", Vocabulary.from_config)
    catalog = load_options(vocabulary)
    one = {name: t[t["patient_id"].astype(str) == patient_id].reset_index(drop=True) for name, t in tables.items()}
    if one["patients"].empty:
        raise ValueError(f"table patients: no row with patient_id {patient_id!r} (rule: a known patient)")
    keys = decision_keys([patient_id], as_of)
    model = loaded.model
    outputs = outputs if outputs is not None else model_outputs(keys, one, loaded)
    if outputs.features["patient_id"].astype(str).tolist() != [patient_id]:
        raise ValueError(f"model outputs: not the one decision of patient {patient_id!r} (rule: a page's outputs are "
                         "its patient's, ModelOutputs.one)")
    pred, X, ex, current = outputs.pred, outputs.X, outputs.ex, outputs.current
    dictionary = C.with_current_targets(outputs.dictionary, current)
    labels = {o.name: o.label for o in catalog.options}
    eligible = pred.loc[pred["eligible"].astype(bool), "option"].astype(str).tolist()
    # changes that are 0 only because nothing was recorded in their window are worded so, never "unchanged"
    unmeasured = C.unmeasured_changes(X, dictionary, model.feature_config().change_windows_days)
    difference_error = evidence.metrics.get("sim_sqrt_pehe")  # known on a simulated cohort only
    drug_labels = {d.generic: d.label for d in vocabulary.drugs}
    current_generics = current["generic"].astype(str).tolist() if len(current) else []
    proposed = [catalog.option(o).adds for o in eligible if catalog.option(o).adds]
    thin = thin_overlap_options(pred, evidence.positivity_threshold)
    options = option_rows(pred, labels, thin, calibration=evidence.calibration, drug_labels=drug_labels)
    # the explanations print the options table's chances and their differences: one source for each figure
    groups_of: dict[tuple[str, ...], Any] = {}  # each model's columns grouped once for this page's dictionary
    explanations = option_explanations(ex, X, dictionary, {o.option: o.p_response for o in options if o.eligible},
                                       labels, k=top_k, unmeasured=unmeasured, groups_of=groups_of)
    trends = trend_series(one["assessments"], as_of)
    summary = model.summary if isinstance(model.summary, dict) else {}
    cfg = model.config
    counts = summary.get("option_counts", {}) if isinstance(summary.get("option_counts"), dict) else {}
    scope = "per option" if getattr(cfg.calibration, "scope", "per_option") == "per_option" else "one map for all options"
    calibrated = (f"probabilities recalibrated to the response rates of training patients left out of each fit "
                  f"({cfg.calibration.method}, {scope})" if cfg.calibrate
                  else "probabilities not recalibrated")
    model_facts = (
        ("what it does", "estimates, for each escalation option, the chance of response at "
                         f"{evidence.horizon_weeks} weeks, the expected total improvement score and the risk of a "
                         "serious infection or severe cytopenia"),
        ("population", f"{summary.get('n_decisions', '?')} treatment decisions of {summary.get('n_patients', '?')} "
                       f"patients with refractory myositis ({TRAINING_DATA[simulated_training(evidence.metrics)]})"),
        ("outcome", f"response = ACR/EULAR 2016 total improvement score ≥ {evidence.response_threshold:g} "
                    f"(juvenile DM ≥ {evidence.juvenile_response_threshold:g}; moderate improvement) at "
                    f"{evidence.horizon_weeks} weeks"),
        ("method", f"{_method(model)}; {calibrated}"),
        ("intervals", interval_meaning(cfg)),
        ("options modelled", ", ".join(labels.get(a, a) for a in model.arms)),
        ("training decisions per option", ", ".join(f"{labels.get(o, o)} {int(counts[o])}"
                                                    for o in catalog.names if o in counts) or "not recorded"),
        ("in validation, for patients like this", subgroup_fact(evidence.subgroups, _subgroups(outputs.features))
         or "no validation by subgroup recorded"),
        ("when not to use", "patients unlike the training population; options shown greyed; any decision "
                            "without a clinician's review"),
        ("explanations", " ".join(CALIBRATED_REASONS if n == E.CALIBRATION_NOTE else n for n in ex.notes)
         or SHAP_NOTE),
    )
    patient = one["patients"].iloc[0].to_dict()
    weight, height = _latest(one["assessments"], "weight", as_of), _latest(one["assessments"], "height", as_of)
    bsa = C.mosteller_bsa(weight, height)
    juvenile = bool(juvenile_decisions(keys, to_days(keys["as_of"]), one["patients"], vocabulary)[0])  # as features do
    regimen = C.dose_lines(current, vocabulary, juvenile=juvenile, weight_kg=weight, bsa_m2=bsa,
                           tolerance=model.feature_config().dose_tolerance, as_of=as_of)
    size = ", ".join(x for x in (f"{weight:.0f} kg" if weight else "", f"{height:.0f} cm" if height else "",
                                 f"body surface {bsa:.2f} m²" if bsa else "") if x)
    body_size = (("juvenile dose targets (per kg / per m²) for " if juvenile else "") + size) if size else ""
    options = tuple(_with_safety_reasons(o, ex, X, dictionary, row=0, unmeasured=unmeasured, groups_of=groups_of)
                    for o in options)
    optimise = C.below_target_drugs(regimen)
    options = tuple(replace(o, label=f"{o.label}: {', '.join(optimise)}") if o.option == "optimise_dose" and
                    o.eligible and optimise else o for o in options)
    clock = rituximab_clock(X, current, as_of)
    options = tuple(replace(o, note=clock) if o.option == catalog.control and clock else o for o in options)
    best = next((o.option for o in options if o.recommended), None)
    adds = catalog.option(best).adds if best is not None else None
    due = tuple(r for r in monitoring_reminders(monitoring, current_generics, [adds] if adds else [], drug_labels)
                if r.drugs and (adds is None or any(drug_labels.get(adds, adds) in d for d in r.drugs)))
    guideline = C.guideline_option(options, catalog.guideline)  # configs/options.yaml's guideline list
    explanations = tuple(replace(e, reasons=tuple(C.plain_reason(r, unmeasured) for r in e.reasons),
                                 contrast_reasons=tuple(C.plain_reason(r, unmeasured) for r in e.contrast_reasons))
                         for e in explanations)
    return Page(
        patient_id=patient_id, as_of=str(as_of.date()), model_name=loaded.name, model_version=loaded.version,
        model_alias=loaded.alias, run_id=loaded.run_id, horizon_weeks=evidence.horizon_weeks,
        response_definition=f"total improvement score ≥ {evidence.threshold_for(patient):g}",
        facts=patient_facts(patient, as_of), activity_facts=(),
        activity=C.latest_activity(trends, as_of, rules),
        safety_facts=safety_summary(one["events"], one["assessments"], as_of),
        events=event_lines(one["events"], as_of), regimen=regimen, trends=trends, options=options,
        explanations=explanations, labs=C.lab_results(one["assessments"], as_of, rules, patient.get("sex")),
        disease_notes=C.disease_notes(patient, rules), guideline_option=guideline.option if guideline else None,
        body_size=body_size, monitoring_due=due,
        monitoring=monitoring_reminders(monitoring, current_generics, proposed, drug_labels),
        model_facts=model_facts, interval_level=evidence.interval_level,
        performance=performance_facts(evidence.metrics, evidence.interval_level, evidence.horizon_weeks,
                                      confidence_level=evidence.confidence_level),
        data_findings=tuple(findings), positivity_threshold=evidence.positivity_threshold, notes=ex.notes,
        steroid_goal=(model.data_settings.labels.steroid_goal_mg_day
                      if "steroid_sparing" in model.heads and model.data_settings is not None else None),
        simulated_training=simulated_training(evidence.metrics),
        star_rule=star_rule(float(getattr(model.config, "safety_weight", 0.0))),
        regimen_cautions=catalog.current_combinations(current_generics, drug_labels),
        difference_error=difference_error if _ok(difference_error) else None,
    )


def _subgroups(features: pd.DataFrame) -> dict[str, str]:
    """This decision's clinical subgroups labelled from its feature row exactly as the evaluation labels held-out
    decisions (antibody group, ILD, juvenile or adult), so each names a row of the subgroup table."""
    from models.evaluation.subgroups import subgroup_labels

    row = subgroup_labels(features).iloc[0]
    return {name: str(row[name]) for name in ("antibody_group", "ild", "age_group")}


def star_rule(safety_weight: float) -> str:
    """What the ★ maximises in words (the bundle ranks by p_response − safety_weight × p_safety)."""
    if safety_weight <= 0:
        return "highest estimated chance of response"
    return f"highest estimated chance of response less {safety_weight:g} × its risk of a serious infection or cytopenia"


#: the model facts' words for what the model learnt from (`simulated_training`)
TRAINING_DATA = {True: "a simulated, literature-calibrated cohort: no real patient's records",
                 False: "recorded patients: its evaluation had no simulator's truth",
                 None: "not evaluated, so whether real or simulated is unknown"}


def simulated_training(metrics: Mapping[str, float]) -> bool | None:
    """Whether the model learnt from a simulated cohort, as its evaluation shows: judged against the simulator's
    truth (`sim_*` metrics) or without it; None when it was not evaluated."""
    return any(key.startswith("sim_") for key in metrics) if metrics else None
