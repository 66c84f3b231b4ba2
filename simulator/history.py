"""Treatment and visit history before the first decision point.

Course per patient: diagnosis → high-dose prednisone tapered in steps (a new regimen row per dose) plus
hydroxychloroquine for DM → a steroid-sparing agent within 3–12 months (sometimes switched) → advanced agents for
some (IVIG, rituximab, tocilizumab) → quiet disease on a stable regimen → a flare at the first decision point.
Disease is active only during induction (while the regimen still changes), so no history visit meets the
decision-point rule. Times are integer days relative to `today` (negative = past). Vectorised over patients.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import special

from simulator.config import DrugRegimens, HistoryConfig, SafetyConfig

REGIMEN_COLUMNS = ("patient", "generic", "drug", "dose", "dose_unit", "route", "interval", "start", "end")
INFECTION_DETAILS = (
    "community-acquired pneumonia, admitted",
    "cellulitis, IV antibiotics",
    "urinary sepsis, admitted",
    "influenza pneumonia, admitted",
)
OPPORTUNISTIC_DETAILS = ("Pneumocystis jirovecii pneumonia", "disseminated herpes zoster", "oesophageal candidiasis")


class History(NamedTuple):
    """The pre-decision part of a simulated record (internal integer-day representation)."""

    regimens: pd.DataFrame
    visits: pd.DataFrame  # patient, day, muscle, skin (latent)
    events: pd.DataFrame  # patient, day, event, grade, details
    diagnosis_day: np.ndarray
    first_decision_day: np.ndarray


def regimen_rows(
    patient: np.ndarray,
    generic: str,
    below: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    regimens: dict[str, DrugRegimens],
    brand_u: np.ndarray,
    rng: np.random.Generator,
    paediatric: np.ndarray | None = None,
) -> pd.DataFrame:
    """Regimen rows of one generic as records write them: the patient's usual brand, an at-target regimen or
    (where `below`) a below-target one; where `paediatric` (juvenile DM under 18) and the generic has juvenile
    regimens, the per-kg / per-m² ones (column `paediatric` marks those rows)."""
    spec = regimens.get(generic)
    if spec is None:
        raise KeyError(f"history.regimens has no entry for {generic!r}: add how records write it")
    n = len(patient)
    below = np.asarray(below, dtype=bool) & (len(spec.below_target) > 0)
    pick_at = rng.integers(0, len(spec.at_target), n)
    pick_below = rng.integers(0, max(len(spec.below_target), 1), n)
    variants = list(spec.at_target) + list(spec.below_target)
    which = np.where(below, len(spec.at_target) + pick_below, pick_at)
    child = np.zeros(n, dtype=bool)
    if paediatric is not None and spec.juvenile_at_target:
        child = np.asarray(paediatric, dtype=bool)
        if child.any():
            offset = len(variants)
            j_below = below & (len(spec.juvenile_below_target) > 0)
            j_at = rng.integers(0, len(spec.juvenile_at_target), n)
            j_low = rng.integers(0, max(len(spec.juvenile_below_target), 1), n)
            variants += list(spec.juvenile_at_target) + list(spec.juvenile_below_target)
            j_which = np.where(j_below, offset + len(spec.juvenile_at_target) + j_low, offset + j_at)
            which = np.where(child, j_which, which)
    written = np.asarray(spec.written_as, dtype=object)[(brand_u[patient] * len(spec.written_as)).astype(int)]
    return pd.DataFrame(
        {
            "patient": patient.astype(np.int64),
            "generic": generic,
            "drug": written,
            "dose": np.array([v.dose for v in variants])[which],
            "dose_unit": np.array([v.dose_unit for v in variants], dtype=object)[which],
            "route": np.array([v.route for v in variants], dtype=object)[which],
            "interval": np.array([v.interval for v in variants], dtype=object)[which],
            "start": np.asarray(start, dtype=np.int64),
            "end": np.asarray(end, dtype=float),
            "paediatric": child,
        }
    )


def _uniform(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    return rng.uniform(low, high, n)


def _prednisone(
    patients: pd.DataFrame, config: HistoryConfig, brand_u: np.ndarray, rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray]:
    """Induction dose then taper steps to a patient-specific floor; returns rows (days after diagnosis) and the
    day of the last step."""
    n = len(patients)
    weight = patients["weight"].to_numpy()
    dose0 = np.minimum(config.prednisone_max_mg, np.round(rng.uniform(config.prednisone_mg_per_kg.low, config.prednisone_mg_per_kg.high, n) * weight / 5) * 5)
    if config.prednisone_juvenile_mg_per_kg is not None:  # a child under 18: per kg of weight at diagnosis, own cap
        jr = config.prednisone_juvenile_mg_per_kg
        child = patients["juvenile"].to_numpy(bool) & (patients["age_at_diagnosis"].to_numpy() < 18)
        per_kg = rng.uniform(jr.low, jr.high, n)  # drawn only when configured (the first testbed's stream stays)
        juvenile_dose = np.minimum(config.prednisone_juvenile_max_mg, np.maximum(np.round(per_kg * weight / 2.5) * 2.5, 2.5))
        dose0 = np.where(child, juvenile_dose, dose0)
    pick = rng.integers(0, len(config.prednisone_floor_mg), n)
    if "steroid_dependence" in patients:  # the more steroid-dependent, the higher the floor (same draws consumed)
        u = special.ndtr(patients["steroid_dependence"].to_numpy(float))
        pick = np.minimum((u * len(config.prednisone_floor_mg)).astype(int), len(config.prednisone_floor_mg) - 1)
    floors = np.asarray(config.prednisone_floor_mg)[pick]
    floors = np.minimum(floors, dose0)
    factor = rng.uniform(config.prednisone_taper_factor.low, config.prednisone_taper_factor.high, n)
    steps = 12
    j = np.arange(steps)
    doses = np.maximum(floors[:, None], np.round(dose0[:, None] * factor[:, None] ** j / 2.5) * 2.5)
    doses[:, -1] = floors
    reached = doses <= floors[:, None]
    first_floor = reached.argmax(axis=1)
    keep = j[None, :] <= first_floor[:, None]
    durations = rng.uniform(config.prednisone_taper_step_days.low, config.prednisone_taper_step_days.high, (n, steps))
    start0 = rng.integers(0, 8, n)
    starts = start0[:, None] + np.concatenate([np.zeros((n, 1)), np.cumsum(np.round(durations), axis=1)[:, :-1]], axis=1)
    ends = np.concatenate([starts[:, 1:] - 1, np.full((n, 1), np.nan)], axis=1)
    ends = np.where(j[None, :] == first_floor[:, None], np.nan, ends)
    pi, ji = np.nonzero(keep)
    rows = regimen_rows(pi, "prednisone", np.zeros(len(pi), bool), starts[pi, ji], ends[pi, ji], config.regimens, brand_u, rng)
    rows["dose"] = doses[pi, ji]
    last_step = starts[np.arange(n), first_floor]
    return rows, last_step


def treatment_history(
    patients: pd.DataFrame,
    config: HistoryConfig,
    safety: SafetyConfig,
    cancer_sites: tuple[str, ...],
    years_max: float,
    brand_u: np.ndarray,
    rng: np.random.Generator,
) -> History:
    """Diagnosis date, regimen rows, visits with latent activity and background events up to the first decision."""
    n = len(patients)
    idx = np.arange(n)
    dm = patients["dermatomyositis"].to_numpy()
    parts: list[pd.DataFrame] = []
    juvenile, age0 = patients["juvenile"].to_numpy(bool), patients["age_at_diagnosis"].to_numpy(float)

    def child(p: np.ndarray, days_after_diagnosis: np.ndarray) -> np.ndarray:
        """Juvenile DM patients under 18 on that day (history days count from diagnosis)."""
        return juvenile[p] & (age0[p] + np.asarray(days_after_diagnosis, float) / 365.25 < 18)

    pred, last_taper = _prednisone(patients, config, brand_u, rng)
    parts.append(pred)
    change_days = [last_taper]

    hcq = dm & (rng.random(n) < config.hydroxychloroquine_in_dm)
    hcq_start = rng.integers(0, 31, n).astype(float)
    parts.append(regimen_rows(idx[hcq], "hydroxychloroquine", np.zeros(hcq.sum(), bool), hcq_start[hcq], np.full(hcq.sum(), np.nan), config.regimens, brand_u, rng, child(idx[hcq], hcq_start[hcq])))
    change_days.append(np.where(hcq, hcq_start, 0))

    names = list(config.conventional_mix)
    shares = np.asarray([config.conventional_mix[c] for c in names], dtype=float)
    first = rng.choice(len(names), n, p=shares / shares.sum())
    second = (first + rng.integers(1, len(names), n)) % len(names) if len(names) > 1 else first
    conv_start = np.round(rng.uniform(config.conventional_start_days.low, config.conventional_start_days.high, n))
    switch = (rng.random(n) < config.conventional_switch) & (len(names) > 1)
    switch_day = conv_start + np.round(rng.uniform(config.conventional_switch_after_days.low, config.conventional_switch_after_days.high, n))
    below_first = rng.random(n) < config.below_target_fraction
    below_second = rng.random(n) < config.below_target_fraction
    for c, name in enumerate(names):
        sel = first == c
        end = np.where(switch[sel], switch_day[sel] - 1, np.nan)
        parts.append(regimen_rows(idx[sel], name, below_first[sel], conv_start[sel], end, config.regimens, brand_u, rng, child(idx[sel], conv_start[sel])))
        sel2 = switch & (second == c)
        parts.append(regimen_rows(idx[sel2], name, below_second[sel2], switch_day[sel2], np.full(sel2.sum(), np.nan), config.regimens, brand_u, rng, child(idx[sel2], switch_day[sel2])))
    change_days += [conv_start, np.where(switch, switch_day, 0)]

    shift = config.prior_advanced_refractory_log_or * patients["refractory"].to_numpy() if "refractory" in patients else 0.0
    for generic, p in config.prior_advanced.items():
        p_i = special.expit(special.logit(p) + shift) if config.prior_advanced_refractory_log_or else p
        sel = rng.random(n) < p_i
        start = np.round(rng.uniform(config.prior_advanced_start_days.low, config.prior_advanced_start_days.high, n))
        below = rng.random(n) < config.below_target_fraction
        end = np.full(n, np.nan)
        if generic == "rituximab":
            single = rng.random(n) < config.rituximab_single_course
            end = np.where(single, start + 14, np.nan)
        parts.append(regimen_rows(idx[sel], generic, below[sel], start[sel], end[sel], config.regimens, brand_u, rng, child(idx[sel], start[sel])))
        change_days.append(np.where(sel, start, 0))
        if generic == "rituximab":
            change_days.append(np.where(sel, np.nan_to_num(end, nan=0.0), 0))

    history_end = np.max(np.vstack(change_days), axis=0)
    t1 = -np.round(rng.uniform(config.first_decision_before_today_days.low, config.first_decision_before_today_days.high, n))
    room = years_max * 365.25 - (-t1) - history_end - config.stable_before_flare_days
    gap = np.minimum(np.round(rng.exponential(config.remission_mean_days, n)), np.maximum(room, 0))
    diagnosis_day = (t1 - history_end - config.stable_before_flare_days - gap).astype(np.int64)

    regimens = pd.concat(parts, ignore_index=True)
    regimens["start"] = regimens["start"] + diagnosis_day[regimens["patient"].to_numpy()]
    regimens["end"] = regimens["end"] + diagnosis_day[regimens["patient"].to_numpy()]

    visits = _history_visits(patients, config, diagnosis_day, history_end, t1, rng)
    events = _background_events(patients, safety, cancer_sites, diagnosis_day, t1, rng)
    return History(regimens, visits, events, diagnosis_day, t1.astype(np.int64))


def _grid(start: np.ndarray, stop: np.ndarray, low: float, high: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Visit days from `start` every U(low, high) days while before `stop`: (patient index, day)."""
    n = len(start)
    span = np.maximum(stop - start, 0)
    m = int(np.ceil(span.max() / low)) + 1 if n else 1
    steps = np.round(rng.uniform(low, high, (n, m)))
    steps[:, 0] = 0
    days = start[:, None] + np.cumsum(steps, axis=1)
    keep = days < stop[:, None]
    pi, ji = np.nonzero(keep)
    return pi, days[pi, ji].astype(np.int64)


def _history_visits(
    patients: pd.DataFrame,
    config: HistoryConfig,
    diagnosis_day: np.ndarray,
    history_end: np.ndarray,
    t1: np.ndarray,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Visits from diagnosis to shortly before the first decision, with latent activity decaying from the
    presentation level to quiet disease."""
    n = len(patients)
    first = diagnosis_day + rng.integers(0, 15, n)
    active_end = diagnosis_day + history_end + config.stable_before_flare_days
    quiet_end = t1 - 30
    pa, da = _grid(first.astype(float), np.minimum(active_end, quiet_end).astype(float), config.active_visit_interval_days.low, config.active_visit_interval_days.high, rng)
    q_start = np.minimum(active_end, quiet_end)
    pb, db = _grid(q_start.astype(float), quiet_end.astype(float), config.quiet_visit_interval_days.low, config.quiet_visit_interval_days.high, rng)
    patient = np.concatenate([pa, pb])
    day = np.concatenate([da, db])
    # drop a quiet visit that would land on an active-phase day already used
    frame = pd.DataFrame({"patient": patient, "day": day}).drop_duplicates().sort_values(["patient", "day"], ignore_index=True)
    p = frame["patient"].to_numpy()
    tau = rng.uniform(config.induction_decay_days.low, config.induction_decay_days.high, n)[p]
    rest_m = rng.uniform(config.remission_muscle.low, config.remission_muscle.high, n)[p]
    rest_s = rng.uniform(config.remission_skin.low, config.remission_skin.high, n)[p]
    onset_m = np.clip(patients["refractory_muscle"].to_numpy() * rng.uniform(1.0, 1.2, n), 0, 1)[p]
    onset_s = np.clip(patients["refractory_skin"].to_numpy() * rng.uniform(1.0, 1.2, n), 0, 1)[p]
    decay = np.exp(-(frame["day"].to_numpy() - diagnosis_day[p]) / tau)
    frame["muscle"] = rest_m + (np.maximum(onset_m, rest_m) - rest_m) * decay
    frame["skin"] = rest_s + (np.maximum(onset_s, rest_s) - rest_s) * decay
    return frame


def _background_events(
    patients: pd.DataFrame,
    safety: SafetyConfig,
    cancer_sites: tuple[str, ...],
    diagnosis_day: np.ndarray,
    t1: np.ndarray,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Infections and cytopenias (grades 1–4) between diagnosis and the first decision; cancer diagnoses."""
    n = len(patients)
    years = np.maximum(t1 - diagnosis_day, 0) / 365.25
    frames = []
    for event, rate in (("serious_infection", safety.background_infection_per_year), ("cytopenia", safety.background_cytopenia_per_year)):
        count = rng.poisson(rate * years)
        p = np.repeat(np.arange(n), count)
        day = diagnosis_day[p] + np.floor(rng.random(len(p)) * np.maximum(t1[p] - 1 - diagnosis_day[p], 1)).astype(np.int64)
        if event == "cytopenia":
            g = np.asarray(safety.background_cytopenia_grades, dtype=float)
            grade = rng.choice(np.arange(1, 5), len(p), p=g / g.sum()).astype(float)
            details = np.where(rng.random(len(p)) < 0.6, "neutropenia", "lymphopenia").astype(object)
        else:
            grade = np.full(len(p), np.nan)
            details = np.asarray(INFECTION_DETAILS, dtype=object)[rng.integers(0, len(INFECTION_DETAILS), len(p))]
        frames.append(pd.DataFrame({"patient": p, "day": day, "event": event, "grade": grade, "details": details}))
    cancer = patients["cancer_associated"].to_numpy()
    p = np.flatnonzero(cancer)
    offset = rng.uniform(-365, np.minimum(730, t1[p] - diagnosis_day[p] - 1))
    frames.append(
        pd.DataFrame(
            {
                "patient": p,
                "day": (diagnosis_day[p] + np.round(offset)).astype(np.int64),
                "event": "cancer_diagnosis",
                "grade": np.nan,
                "details": np.asarray(cancer_sites, dtype=object)[rng.integers(0, len(cancer_sites), len(p))],
            }
        )
    )
    return pd.concat(frames, ignore_index=True)
