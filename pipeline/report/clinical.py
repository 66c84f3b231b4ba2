"""Clinical rules of the page: lab grades (CTCAE v5), dose goals and juvenile targets, disease notes, stale
measurements, the guideline's choice and reasons in clinical words. Pure functions of one patient's frames,
`configs/clinical_rules.yaml` and the drug catalogue (configs/drugs.yaml: targets, juvenile targets, taper goals),
passed in: no file I/O, so every rule is tested on small frames."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.report.data import LabResult, OptionRow, RegimenLine, TrendSeries, _ok

if TYPE_CHECKING:
    from features.vocabulary import Vocabulary


# --- laboratory grades ------------------------------------------------------------------------------------------
def reference_range(rule: Mapping[str, Any], sex: str | None = None, uln: float | None = None) -> tuple[float, float]:
    """A lab's reference range (lower, upper) for this patient: the rule's range for the recorded sex (`by_sex`),
    else its own; the row's upper limit of normal, when the laboratory reported one, replaces the upper limit."""
    limits = {"lln": rule["lln"], "uln": rule["uln"], **rule.get("by_sex", {}).get(str(sex), {})}
    high = uln if uln is not None and _ok(uln) and uln > 0 else float(limits["uln"])
    return float(limits["lln"]), float(high)


def lab_grade(value: float, rule: Mapping[str, Any], uln: float | None = None, *, sex: str | None = None
              ) -> tuple[int, str]:
    """CTCAE grade (0–4) of one value on the lab's graded side — below the lower limit (`below` thresholds) or
    above the upper one (`above_x_uln` multiples of the row's ULN, else the rule's) — and its direction: 'low' or
    'high' whenever it is outside the reference range (`reference_range`), graded or not (a low creatinine has no
    CTCAE grade, yet is not normal), else ''."""
    low, high = reference_range(rule, sex, uln)
    if "below" in rule and value < low:
        return 1 + sum(value < float(t) for t in rule["below"]), "low"
    if "above_x_uln" in rule and value > high:
        return 1 + sum(value > float(t) * high for t in rule["above_x_uln"]), "high"
    return 0, "low" if value < low else "high" if value > high else ""


def lab_results(assessments: pd.DataFrame, as_of: pd.Timestamp, rules: Mapping[str, Any], sex: str | None = None
                ) -> tuple[LabResult, ...]:
    """The latest value of each lab in `rules['labs']` dated before `as_of`, graded against the reference range
    of the patient's `sex` (F, M); flagged from `flag_grade`."""
    cfg = rules["labs"]
    a = assessments[pd.to_datetime(assessments["date"]) < as_of]
    out = []
    for rule in cfg["tests"]:
        m = a[a["measure"] == rule["measure"]].sort_values("date")
        m = m[pd.to_numeric(m["value"], errors="coerce").notna()]
        if m.empty:
            continue
        last = m.iloc[-1]
        value = float(last["value"])
        uln = pd.to_numeric(pd.Series([last.get("upper_limit_normal")]), errors="coerce").iloc[0]
        row_uln = None if pd.isna(uln) else float(uln)
        grade, direction = lab_grade(value, rule, row_uln, sex=sex)
        low, high = reference_range(rule, sex, row_uln)
        when = pd.Timestamp(last["date"])
        out.append(LabResult(rule["label"], value, rule["unit"], str(when.date()), int((as_of - when).days), grade,
                             grade >= int(cfg["flag_grade"]), direction, low, high))
    return tuple(out)


# --- doses ------------------------------------------------------------------------------------------------------
def _mg(mg_day: float) -> str:
    """A daily intensity in the unit a prescriber reads: '7.5 mg/day', '2.5 g/day'."""
    return f"{mg_day / 1000:.3g} g/day" if mg_day >= 1000 else f"{mg_day:.3g} mg/day"


def _per_cycle(mg_day: float, cycle_days: float, doses_per_cycle: float = 1, per_dose: str = "a dose") -> str:
    """A daily intensity over the rule's cycle as a prescriber doses it: '23.7 mg/week' for a weekly drug, one
    administration for a cycle longer than a week ('609 mg an infusion', '60 g a course'), else per day."""
    if int(cycle_days) == 7:
        return f"{mg_day * 7:.3g} mg/week"
    if cycle_days > 7:
        mg = mg_day * cycle_days / max(float(doses_per_cycle), 1.0)
        return ((f"{mg / 1000:.3g} g" if mg >= 1000 else f"{mg:.3g} mg") + f" {per_dose}").rstrip()
    return _mg(mg_day)


def _per(mg_day: float, basis: str, weight: float | None, bsa: float | None, cycle_days: float = 1) -> str:
    """The intensity per kg or per m² over the rule's cycle ('12 mg/m²/week'), or '' without the body size."""
    size = weight if basis == "mg_per_kg" else bsa
    if size is None or not _ok(size) or size <= 0:
        return ""
    per = "kg" if basis == "mg_per_kg" else "m²"
    period = {1: "day", 7: "week"}.get(int(cycle_days), f"{cycle_days:g} days")
    return f"{mg_day * cycle_days / size:.3g} mg/{per}/{period}"


def _dosed_by_weight(drug: Any) -> bool:
    """Whether a dose per kg means something for this drug: its target is per kg, capped per kg (hydroxychloroquine)
    or a glucocorticoid's (mg/kg/day induction). A fixed dose (rituximab 1 g) per kg would be noise."""
    t = drug.target
    return t.basis == "mg_per_kg" or t.daily_cap_mg_per_kg is not None or t.taper_goal_mg_per_day is not None


def _per_kg_dose(mg_day: float, weight: float, cycle_days: float, doses_per_cycle: float = 1,
                 per_dose: str = "a dose") -> str:
    """The dose per kg as it is prescribed: per day, per week, or per administration of a longer cycle ('1 g/kg a
    course', '8 mg/kg an infusion')."""
    if int(cycle_days) == 7:
        return f"{mg_day * 7 / weight:.3g} mg/kg/week"
    if cycle_days > 7:
        mg = mg_day * cycle_days / max(float(doses_per_cycle), 1.0) / weight
        return (f"{mg / 1000:.3g} g/kg" if mg >= 100 else f"{mg:.3g} mg/kg") + f" {per_dose}"  # IVIG in g/kg
    return f"{mg_day / weight:.3g} mg/kg/day"


def mosteller_bsa(weight_kg: float | None, height_cm: float | None) -> float | None:
    """Body surface area (m²) by Mosteller, as the features compute it (`body_surface_area`); None without both."""
    from features.vocabulary import body_surface_area

    if not (_ok(weight_kg) and _ok(height_cm)) or weight_kg <= 0 or height_cm <= 0:  # type: ignore[operator]
        return None
    return float(body_surface_area(np.array([weight_kg]), np.array([height_cm]))[0])


def dose_lines(current: pd.DataFrame, vocabulary: Vocabulary, *, juvenile: bool, weight_kg: float | None,
               bsa_m2: float | None, tolerance: float, as_of: pd.Timestamp | None = None) -> tuple[RegimenLine, ...]:
    """Every current drug against its goal, with the action a prescriber takes: raise a dose below target, taper a
    glucocorticoid above its taper goal, the room left within a target range, and — as of `as_of` — when the next
    course of a drug given in courses (rituximab) is due (`next_course`). A juvenile patient's doses are judged
    against the drugs' juvenile targets (configs/drugs.yaml `juvenile`: per kg, per m², or the weight band that
    applies) for this weight and body surface, by the same function and verdict as the features' dose flags
    (`Vocabulary.target_daily_mg`, `dose_status`) with the features' `tolerance`; adults keep the features' verdict."""
    from features.vocabulary import dose_status
    from pipeline.report.assemble import regimen_lines

    tol = float(tolerance)
    taper = {d.generic: float(d.target.taper_goal_mg_per_day) for d in vocabulary.drugs
             if d.target.taper_goal_mg_per_day is not None}
    n = len(current)
    juv = None
    if juvenile and n:
        route = current["route"] if "route" in current.columns else pd.Series([None] * n, index=current.index)
        juv = vocabulary.target_daily_mg(
            current["generic"].astype(object), route.astype(object),
            pd.Series([weight_kg if _ok(weight_kg) else np.nan] * n, index=current.index, dtype=float),
            pd.Series([bsa_m2 if _ok(bsa_m2) else np.nan] * n, index=current.index, dtype=float),
            juvenile=np.ones(n, dtype=bool))
        mg_day = pd.to_numeric(current["intensity_mg_day"], errors="coerce").to_numpy(float)
        juv["status"] = dose_status(mg_day, juv["target_low"].to_numpy(float), juv["target_high"].to_numpy(float),
                                    juv["target_defined"].to_numpy(bool), juv["induction_only"].to_numpy(bool), tol)
    out = []
    for i, (line, row) in enumerate(zip(regimen_lines(current), current.to_dict(orient="records"), strict=True)):
        generic = str(row.get("generic"))
        mg = float(row["intensity_mg_day"]) if _ok(row.get("intensity_mg_day")) else None
        low = float(row["target_low_mg_day"]) if _ok(row.get("target_low_mg_day")) else None
        high = float(row["target_high_mg_day"]) if _ok(row.get("target_high_mg_day")) else None
        target, status, frac, basis = line.target, line.status, line.fraction_of_target, ""
        aim = target  # the target as an action names it (a juvenile target without its source note)
        drug = vocabulary.drug(generic) if generic in vocabulary.generics else None
        cycle = ((drug.target.cycle_days, drug.target.doses_per_cycle, drug.target.per_dose or "a dose") if drug
                 else (1,))
        if juv is not None and juv["target_source"].iloc[i] == "juvenile":
            target, status, basis, low, high, frac = _juvenile_line(juv.iloc[i], mg, weight_kg, bsa_m2, tol)
            note = str(juv["target_text"].iloc[i]).partition(" — ")[2]  # the source note ("JIA label dose …")
            aim = target.replace(f" — {note}", "") if note else target
            cycle = (float(juv["target_cycle_days"].iloc[i]), float(juv["target_doses_per_cycle"].iloc[i]),
                     str(juv["target_per_dose"].iloc[i] or "a dose"))
        action = ""
        if generic in taper and mg is not None and mg > taper[generic] * (1 + tol):
            status = "above_goal"
            action = (f"taper: {_mg(mg)} is {mg / taper[generic]:.1f}× the ≤ {taper[generic]:g} mg/day goal"
                      + (" (Pneumocystis risk rises above 10 mg/day)" if mg > 10 else ""))
        elif status == "below" and low is not None and mg is not None:
            action = (spaced_courses(row, cycle, low, aim, tol)
                      or f"raise towards {aim}: the dose now is {round(100 * mg / low)} % of the lowest target")
        elif status == "above" and high is not None and mg is not None:
            action = f"above target ({aim}): {round(100 * mg / high)} % of the highest; check for toxicity"
        elif status == "at" and mg is not None and high is not None and high > mg * (1 + tol):
            action = (f"room up to {_per_cycle(high, *cycle)} within the target range "
                      f"(now {_per_cycle(mg, *cycle)})")
        elif status == "at":
            action = "at target"
        elif generic in taper and mg is not None:
            action = f"at or below the ≤ {taper[generic]:g} mg/day taper goal"
        if mg is not None and _ok(weight_kg) and weight_kg > 0 and not basis and drug is not None \
                and _dosed_by_weight(drug):  # type: ignore[operator]
            basis = f"{_per_kg_dose(mg, float(weight_kg), *cycle)} at {weight_kg:.0f} kg"  # type: ignore[arg-type]
        course, due = next_course(row.get("last_course_date"), row.get("last_course_record"), row.get("interval"),
                                  cycle[0], as_of)
        if course and due:  # first: what is due now, then anything about the dose itself
            action = course if action in ("", "at target") else f"{course}; {action}"
        elif course:  # "at target" is the row's flag already
            action = f"{action}; {course}" if action not in ("", "at target") else course
        out.append(replace(line, target=target, status=status, fraction_of_target=frac, action=action, basis=basis,
                           course_due=due))
    return tuple(out)


#: how soon a next course counts as due on the page (it then leads "First, the doses")
COURSE_DUE_WITHIN_DAYS = 28


def count(n: int, unit: str) -> str:
    """'1 day', '3 weeks'."""
    return f"{n} {unit}" + ("s" if n != 1 else "")


def course_schedule(last: pd.Timestamp, cycle_days: float, *, exact: bool) -> tuple[pd.Timestamp, str]:
    """The day a course `cycle_days` after `last` falls due and the interval in words ('6 months'): whole months
    as a prescriber writes them — exactly for an interval as written (`exact`), within 5 % for a target's days
    (182 days reads as 6 months) — else weeks or days."""
    months = cycle_days / 30.4375
    whole_months = cycle_days >= 56 and abs(months - round(months)) < (1e-6 if exact else 0.05)
    due = last + (pd.DateOffset(months=round(months)) if whole_months else pd.Timedelta(days=round(cycle_days)))
    days = round(cycle_days)
    every = (count(round(months), "month") if whole_months
             else count(days // 7, "week") if days % 7 == 0 else count(days, "day"))
    return due, every


def spaced_courses(row: Mapping[str, Any], target: tuple[Any, ...], low_mg_day: float, aim: str, tol: float) -> str:
    """The advice for a drug given in courses whose dose per course is at target but whose courses are further
    apart than the target's (rituximab 1 g × 2 every 12 months against every 6): its intensity is below target
    because of the interval, so the advice is to shorten the interval — with the day the next course falls by
    the target's schedule — never to raise a dose that is already the target's. '' when that is not the case
    (`target`: the target's cycle days and doses per cycle; `low_mg_day`: its lowest intensity)."""
    from features.vocabulary import parse_intervals

    mg, target_days = row.get("intensity_mg_day"), float(target[0])
    days = float(parse_intervals(pd.Series([row.get("interval")], dtype=object))["cycle_days"].iloc[0])
    if not (_ok(mg) and np.isfinite(days) and target_days >= 28 and days > target_days * (1 + tol)):
        return ""
    if float(mg) * days < low_mg_day * target_days * (1 - tol):  # less than a target course each time: the dose
        return ""
    every = course_schedule(pd.Timestamp(0), days, exact=True)[1]
    text = (f"a course every {every}, the target {aim}: {round(100 * float(mg) / low_mg_day)} % of the target's "
            "intensity with each course at the target dose — shorten the interval")
    last = row.get("last_course_date")
    if last is not None and not pd.isna(last) and row.get("last_course_record") != "stopped":
        due = course_schedule(pd.Timestamp(last), target_days, exact=False)[0]
        text += f" (by the target's schedule the next course falls {due.date()})"
    return text


def next_course(last_course: Any, record: Any, interval: Any, target_cycle_days: float,
                as_of: pd.Timestamp | None) -> tuple[str, bool]:
    """When the next course of a drug given in courses is due — the latest course's start plus the prescribed
    interval (`interval` as written, e.g. 'days 1 and 15, every 6 months'), else the target's cycle — in words, and
    whether that is past or within `COURSE_DUE_WITHIN_DAYS`: ('next course overdue since 2026-11-20 (17 days) by
    the prescribed schedule, a course every 6 months; the last began 2026-05-20: re-dose if still indicated', True).
    `record` (the features' `last_course_record`): a course only an ongoing order's schedule dates ('scheduled') is
    said to be unrecorded; an order that ended after its last course ('stopped') prescribes no next one. ('', False)
    without a course date, an as-of date, or a cycle of at least four weeks."""
    from features.vocabulary import parse_intervals

    if as_of is None or last_course is None or pd.isna(last_course):
        return "", False
    last = pd.Timestamp(last_course)
    if record == "stopped":
        return f"the order ended after the course that began {last.date()}: no next course prescribed", False
    prescribed = float(parse_intervals(pd.Series([interval], dtype=object))["cycle_days"].iloc[0])
    by, cycle = (("prescribed", prescribed) if np.isfinite(prescribed) and prescribed >= 28
                 else ("target", float(target_cycle_days)) if _ok(target_cycle_days) else ("", np.nan))
    if not cycle >= 28:
        return "", False
    due, every = course_schedule(last, cycle, exact=by == "prescribed")
    days = (due - pd.Timestamp(as_of)).days
    span = count(abs(days), "day") if abs(days) < 42 else count(round(abs(days) / 7), "week")
    when = (f"overdue since {due.date()} ({span})" if days < 0 else f"due today ({due.date()})" if days == 0
            else f"due {due.date()} (in {span})" if days <= COURSE_DUE_WITHIN_DAYS else f"{due.date()} (in {span})")
    unrecorded = (" by the open order's schedule (no row records it: check it was given)" if record == "scheduled"
                  else "")
    soon = days <= COURSE_DUE_WITHIN_DAYS
    text = f"next course {when} by the {by} schedule, a course every {every}; the last began {last.date()}{unrecorded}"
    return (text + ": re-dose if still indicated" if soon else text), soon


def _juvenile_line(t: pd.Series, mg: float | None, weight_kg: float | None, bsa_m2: float | None, tol: float
                   ) -> tuple[str, str, str, float | None, float | None, float | None]:
    """(target words, status, basis, low, high, fraction) of one dose judged against its juvenile target (`t`: a
    row of `Vocabulary.target_daily_mg` plus its `status`): the band in the prescriber's unit for this child's
    size ('15.9–21.2 mg/week for 1.06 m²')."""
    status = str(t["status"])
    text = str(t["target_text"])
    if t["target_needs"]:
        return text, status, f"juvenile target needs {t['target_needs']}", None, None, None
    if not bool(t["target_defined"]) or not _ok(t["target_low"]):
        return text, status, "juvenile: no target", None, None, None
    low, high = float(t["target_low"]), float(t["target_high"])
    frac = mg / low if mg is not None and status not in ("no_target", "unknown") and low > 0 else None
    what = (f"{bsa_m2:.2f} m²" if t["target_by"] == "weight and height" and _ok(bsa_m2)
            else f"{weight_kg:.0f} kg" if t["target_by"] == "weight" and _ok(weight_kg) else "")
    if not what:  # a fixed dose (the adult dose above 1.5 m²): its words say it all
        return text, status, "juvenile target", low, high, frac
    days, doses = float(t["target_cycle_days"]), float(t["target_doses_per_cycle"])
    word = str(t["target_per_dose"] or "a dose")
    span = (f"{_per_cycle(low, days, doses, '')}–{_per_cycle(high, days, doses, word)}"
            if high > low * (1 + tol) else _per_cycle(low, days, doses, word))
    unit = {"mg_per_kg": "per kg", "mg_per_m2": "per m²"}.get(str(t["target_basis"]), "by weight band")
    # an induction band ('induction 1–2 mg/kg/day …, then the lowest effective dose') names the induction dose
    sized = f" (induction for {what}: {span})" if bool(t.get("induction_only", False)) else f": {span} for {what}"
    return f"{text}{sized}", status, f"juvenile target {unit} ({what})", low, high, frac


def with_current_targets(dictionary: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """The feature dictionary with this patient's targets: a current drug the features judged against a target
    (side table `target_source`: adult or juvenile) gets that target's words (`target_text`) on its dose-fraction
    feature, so a reason ('tofacitinib dose = 138 % of target …') names the one target its fraction is of."""
    if current.empty or "target_source" not in current.columns or "target_text" not in dictionary.columns:
        return dictionary
    judged = current[current["target_source"].astype(str).isin(["adult", "juvenile"])]
    texts = {f"{g}_dose_fraction": t for g, t in zip(judged["generic"], judged["target_text"], strict=True)}
    out = dictionary.copy()
    hit = out["feature"].isin(list(texts))
    out.loc[hit, "target_text"] = out.loc[hit, "feature"].map(texts)
    return out


def below_target_drugs(lines: Sequence[RegimenLine]) -> tuple[str, ...]:
    """The drugs whose dose is below target: what 'optimise doses' would raise."""
    return tuple(line.label for line in lines if line.status == "below")


# --- disease notes and stale measurements -----------------------------------------------------------------------
def _yes(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def disease_notes(patient: Mapping[str, Any], rules: Mapping[str, Any]) -> tuple[str, ...]:
    """The notes of `rules['disease_notes']` whose `when` matches this patient (antibody substring, ILD, cancer,
    diagnosis): what the response measure does not cover and what to watch."""
    out = []
    antibodies = str(patient.get("antibodies") or "").upper()
    for rule in rules.get("disease_notes", []):
        cond = rule["when"]
        hit = (("antibody" in cond and str(cond["antibody"]).upper() in antibodies)
               or ("ild" in cond and _yes(patient.get("ild")) == bool(cond["ild"]) and bool(cond["ild"]))
               or ("cancer_associated" in cond and _yes(patient.get("cancer_associated")) and cond["cancer_associated"])
               or ("diagnosis" in cond and str(patient.get("diagnosis")) == cond["diagnosis"]))
        if hit:
            out.append(" ".join(str(rule["note"]).split()))
    return tuple(out)


def stale_days(rules: Mapping[str, Any], measure: str) -> int:
    """How old a measurement may be before the page marks it stale."""
    cfg = rules.get("stale_after_days", {})
    return int(cfg.get(measure, cfg.get("default", 45)))


def latest_activity(trends: Sequence[TrendSeries], as_of: pd.Timestamp, rules: Mapping[str, Any]
                    ) -> tuple[tuple[str, bool], ...]:
    """The latest value of each measure with its scale, date and age, and whether it is stale:
    ('MMT-8 muscle strength 63 / 80 (2026-09-17, 2 months old)', True)."""
    out = []
    for s in trends:
        if not s.values:
            continue
        scale = re.fullmatch(r"0[–-](\d+(?:\.\d+)?)", s.unit)
        value = f"{s.values[-1]:.3g}" + (f" / {scale.group(1)}" if scale else f" {s.unit}")
        age = int((as_of - pd.Timestamp(s.dates[-1])).days)
        stale = age > stale_days(rules, s.measure)
        out.append((f"{s.label} {value} ({s.dates[-1]}, {age_words(age)} old)", stale))
    return tuple(out)


def age_words(days: int) -> str:
    """'3 days', '5 weeks', '2 months', '1.5 years': an age a reader takes in at a glance."""
    if days < 14:
        return f"{days} day{'s' if days != 1 else ''}"
    if days < 61:
        return f"{round(days / 7)} weeks"
    if days < 548:
        return f"{round(days / 30.44)} months"
    return f"{days / 365.25:.1f} years"


# --- options: guideline choice, reasons in words ----------------------------------------------------------------
def unmeasured_changes(X: pd.DataFrame, dictionary: pd.DataFrame, windows_days: Sequence[int], row: int = 0
                       ) -> frozenset[str]:
    """The labels of the change features ('change in CDASI activity over 3 months') that are 0 in `row` only
    because nothing was recorded within their window (the latest value is at least the window old): the feature
    carries the last value forward, a page must not call that 'unchanged'. `windows_days` are the feature
    settings' change windows; the features are found by the names `features.build` gives them."""
    from features.build import DISEASE_MEASURES, change_feature, days_since_feature

    labels = dict(zip(dictionary["feature"], dictionary["label"], strict=True))
    out = set()
    for measure, *_ in DISEASE_MEASURES:
        since = days_since_feature(measure)
        for window in windows_days:
            feature = change_feature(measure, window)
            if feature in labels and feature in X.columns and since in X.columns \
                    and X[feature].iloc[row] == 0 and X[since].iloc[row] >= window:
                out.add(labels[feature])
    return frozenset(out)


def guideline_option(options: Sequence[OptionRow], order: Sequence[str]) -> OptionRow | None:
    """The first eligible, modelled option in the guideline order (configs/options.yaml `guideline`) that no label
    combination rule advises against — a clinician following the list obeys the labels too — else None."""
    by_name = {o.option: o for o in options if o.eligible and o.p_response is not None and not o.advised_against}
    return next((by_name[name] for name in order if name in by_name), None)


_NUMBER = re.compile(r"(?<![\w.])(\d+\.\d{2,})(?![\d])")
_CHANGE = re.compile(r"^change in (?P<what>.+?) over (?P<span>\d+ months?) = (?P<sign>[−-]?)(?P<value>[\d.]+) ?"
                     r"(?P<unit>[^→]*?) (?P<arrow>→.*)$")
_MONTHS_ON = re.compile(r"^months on (?P<drug>.+?) = (?P<value>[\d.]+)(?: months)? (?P<arrow>→.*)$")


def plain_reason(text: str, unmeasured: Collection[str] = ()) -> str:
    """A model reason in clinical words with sensible precision: changes say their direction ('physician global
    activity rose by 1.2 cm (0-10) over 6 months'), time on a drug in whole months, other numbers 3 figures. A
    change in `unmeasured` ('change in CDASI activity over 3 months': nothing recorded in those months, so the
    last value was carried forward) reads 'CDASI activity not recorded in the last 3 months', never 'unchanged'."""
    text = _NUMBER.sub(lambda m: f"{float(m.group(1)):.3g}", text)
    m = _CHANGE.match(text)
    if m:
        v = float(m["value"])
        if v == 0 and f"change in {m['what']} over {m['span']}" in unmeasured:
            return f"{m['what']} not recorded in the last {m['span']} {m['arrow']}"
        verb = "unchanged" if v == 0 else ("fell by" if m["sign"] else "rose by")
        amount = "" if v == 0 else f" {v:.2g} {m['unit'].strip()}".rstrip()
        return f"{m['what']} {verb}{amount} over {m['span']} {m['arrow']}"
    m = _MONTHS_ON.match(text)
    if m:
        v = float(m["value"])
        months = "less than 1 month" if v < 1 else f"{v:.0f} month{'s' if round(v) != 1 else ''}"
        return f"{months} on {m['drug']} {m['arrow']}"
    return text
