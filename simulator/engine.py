"""The cohort simulator: patients → history → decision points with potential outcomes → contract tables + truth.

`simulate_cohort` is pure: it takes the frozen configuration, the drug vocabulary, the option catalogue, a seed and
`today`, and returns DataFrames. It loops only over decision rounds (at most `decisions.max_decisions`);
everything inside a round is vectorised over patients.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy import special

from features.vocabulary import OptionCatalog, Vocabulary, body_surface_area, dose_to_mg, parse_intervals
from simulator.body import BodySize, birth_year, body_size, paediatric, size_at
from simulator.cohort import sample_patients
from simulator.config import SAFETY_EVENTS, DrugRegimens, SimulatorConfig
from simulator.effects import (
    DecisionState,
    OptionEffects,
    choose,
    interruption_risk,
    option_effects,
    policy_features,
    propensities,
    safety_risk,
    subgroups,
)
from simulator.history import INFECTION_DETAILS, OPPORTUNISTIC_DETAILS, regimen_rows, treatment_history
from simulator.measures import (
    CORE_MEASURES,
    ENZYMES,
    NOISE_COLUMNS,
    SAFETY_LABS,
    TRAIT_COLUMNS,
    UNITS,
    is_active,
    latent_to_measures,
    safety_labs,
)
from simulator.steroids import activity, course, dose_changes, steroid_sparing
from simulator.trial import (
    Enrolment,
    enrol,
    expect,
    history_counts,
    meets_history,
    subset_body,
    subset_enrolment,
    subset_history,
)
from simulator.truth import Probabilities, probabilities_from_draws, response_thresholds, score_pairs

Mode = Literal["observational", "trial"]
#: measures of a visit in export order (wide working frame → long contract table).
VISIT_MEASURES: tuple[str, ...] = (
    *CORE_MEASURES,
    *ENZYMES,
    "cdasi_activity",
    "cdasi_damage",
    "weight",
    "height",
    *SAFETY_LABS,
)
BELOW_TARGET_TOLERANCE = 0.1


class SimulatedCohort(NamedTuple):
    """The four contract tables (raw export format) and the simulator's truth."""

    patients: pd.DataFrame
    regimens: pd.DataFrame
    assessments: pd.DataFrame
    events: pd.DataFrame
    decisions: pd.DataFrame
    outcomes: pd.DataFrame


# ----------------------------------------------------------------------------------------------------------------
# regimen state


def annotate_rows(
    rows: pd.DataFrame,
    patients: pd.DataFrame,
    vocabulary: Vocabulary,
    body: BodySize | None = None,
    regimens: dict[str, DrugRegimens] | None = None,
) -> pd.DataFrame:
    """Add daily intensity (mg/day) and the shortfall below target (1 − dose/target low; 0 at target) to rows.

    With `body`, a per-kg / per-m² dose uses the size on the row's start day (else the constant size). A
    paediatric row (juvenile DM under 18) is judged against the lowest juvenile at-target dose of `regimens`,
    in the dose's own unit, so a child's dose is never "below" an adult target."""
    p = rows["patient"].to_numpy()
    if body is None:
        w, h = patients["weight"].to_numpy()[p], patients["height"].to_numpy()[p]
    else:
        w, h = size_at(body, p, rows["start"].to_numpy(float))
    weight = pd.Series(w, index=rows.index)
    bsa = pd.Series(body_surface_area(w, h), index=rows.index)
    daily = _daily_mg(rows, weight, bsa)
    target = vocabulary.target_daily_mg(rows["generic"], rows["route"], weight, bsa)["target_low"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = daily < (1 - BELOW_TARGET_TOLERANCE) * target
        shortfall = np.where(below, 1 - daily / target, 0.0)
    child = rows["paediatric"].fillna(False).to_numpy(bool) if "paediatric" in rows else np.zeros(len(rows), bool)
    if child.any() and regimens:
        gen = rows["generic"].to_numpy(object)
        lowest = {g: min(v.dose for v in r.juvenile_at_target) for g, r in regimens.items() if r.juvenile_at_target}
        at = np.array([lowest.get(g, np.nan) for g in gen], dtype=float)
        dose = rows["dose"].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            child_short = np.where(dose < (1 - BELOW_TARGET_TOLERANCE) * at, 1 - dose / at, 0.0)
        shortfall = np.where(child & ~np.isnan(at), child_short, shortfall)
    shortfall = np.nan_to_num(shortfall)
    out = rows.copy()
    if body is not None and regimens:
        out, changed = juvenile_doses(out, shortfall, w, bsa.to_numpy(float), paediatric(body, p, rows["start"].to_numpy(float)), regimens)
        if changed.any():  # the intensity of the dose as now written (the shortfall stays the drawn intent)
            daily[changed] = _daily_mg(out.loc[changed], weight[changed], bsa[changed])
    out["daily_mg"] = daily
    out["shortfall"] = shortfall
    return out


def _daily_mg(rows: pd.DataFrame, weight: pd.Series, bsa: pd.Series) -> np.ndarray:
    """Dose intensity (mg/day) of regimen rows as written: the dose per administration in mg × administrations a
    day (NaN where the unit, the body size it needs or the interval is unreadable)."""
    schedule = parse_intervals(rows["interval"])
    dose_mg = dose_to_mg(rows["dose"], rows["dose_unit"], weight, bsa)
    return (dose_mg * schedule["doses_per_cycle"] / schedule["cycle_days"]).to_numpy(float, copy=True)


def juvenile_doses(
    rows: pd.DataFrame,
    shortfall: np.ndarray,
    weight: np.ndarray,
    bsa: np.ndarray,
    child: np.ndarray,
    regimens: dict[str, DrugRegimens],
) -> tuple[pd.DataFrame, np.ndarray]:
    """A child's regimen rows (`child`: juvenile DM under 18 on the start day) as the paediatric labels dose them
    for the child's size on that day (configs/simulator.yaml `juvenile_by_weight`, `juvenile_max_mg_per_day`;
    docs/sources.md §4): an at-target row (`shortfall` 0) of a child lighter than a weight band's limit takes that
    band's regimen, of a child above `juvenile_adult_above_m2` the adult one; a row whose target intensity
    (intensity / (1 − shortfall)) exceeds the cap is scaled down to it and written as a fixed dose, so a
    below-target row keeps its fraction of the target. Returns the rows (a copy where changed) and the mask of
    changed rows. Reads only the simulator's own configuration: the features judge
    the result against configs/drugs.yaml independently."""
    changed = np.zeros(len(rows), dtype=bool)
    gen = rows["generic"].to_numpy(object)
    cols = ["dose", "dose_unit", "route", "interval"]
    for generic, spec in regimens.items():
        sel = child & (gen == generic)
        if not sel.any() or (not spec.juvenile_by_weight and spec.juvenile_max_mg_per_day is None
                             and spec.juvenile_adult_above_m2 is None):
            continue
        if not changed.any():
            rows = rows.copy()
        at = sel & (shortfall == 0)
        banded = np.zeros(len(rows), dtype=bool)
        if spec.juvenile_adult_above_m2 is not None:  # a large child: the adult dose
            m = at & (bsa > spec.juvenile_adult_above_m2)
            if m.any():
                adult = spec.at_target[0]
                rows.loc[m, cols] = [adult.dose, adult.dose_unit, adult.route, adult.interval]
                banded |= m
        for band in reversed(spec.juvenile_by_weight):  # lightest band last: it wins
            m = at & (weight < (band.below_kg if band.below_kg is not None else np.inf))
            if m.any():
                rows.loc[m, cols] = [band.dose, band.dose_unit, band.route, band.interval]
                banded |= m
        changed |= banded
        if spec.juvenile_max_mg_per_day is None:
            continue
        sub = rows.loc[sel]
        mg = dose_to_mg(sub["dose"], sub["dose_unit"], pd.Series(weight[sel], index=sub.index),
                        pd.Series(bsa[sel], index=sub.index)).to_numpy(float)
        sched = parse_intervals(sub["interval"])
        daily = mg * (sched["doses_per_cycle"] / sched["cycle_days"]).to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = np.minimum(1.0, spec.juvenile_max_mg_per_day * (1 - shortfall[sel]) / daily)
        cap = np.nan_to_num(factor, nan=1.0) < 1.0
        if not cap.any():
            continue
        in_g = sub["dose_unit"].astype(str).str.lower().str.startswith("g").to_numpy()
        mass = mg * factor
        dose = np.where(in_g, np.round(mass / 500) / 2, np.where(mass >= 10, np.round(mass / 2.5) * 2.5, np.round(mass, 1)))
        hit = np.flatnonzero(sel)[cap]
        rows.loc[rows.index[hit], "dose"] = dose[cap]
        rows.loc[rows.index[hit], "dose_unit"] = np.where(in_g[cap], "g", "mg")
        changed[hit] = True
    return rows, changed


def regimen_state(
    rows: pd.DataFrame, patient: np.ndarray, day: np.ndarray, generics: tuple[str, ...], rituximab_active_days: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Per decision (patient, day): on each generic, days since it started, shortfall below target, prednisone mg/day.

    A row counts if it started on or before the day and has not ended; rituximab counts for
    `rituximab_active_days` after its last infusion row ends.
    """
    n, g = len(patient), len(generics)
    position = np.full(int(rows["patient"].max()) + 1 if len(rows) else 1, -1)
    position[patient] = np.arange(n)
    rp = rows["patient"].to_numpy()
    pos = position[np.minimum(rp, len(position) - 1)]
    keep = (rp < len(position)) & (pos >= 0)
    sub = rows.loc[keep]
    pos = pos[keep]
    t = day[pos]
    start = sub["start"].to_numpy(float)
    end = sub["end"].to_numpy(float)
    gen = sub["generic"].to_numpy(object)
    gidx = pd.Index(generics).get_indexer(gen)
    started = start <= t
    open_ = started & (np.isnan(end) | (end >= t))
    ritux = gen == "rituximab"
    on_row = open_ | (ritux & started & (end >= t - rituximab_active_days))
    on = np.zeros((n, g), bool)
    ok = on_row & (gidx >= 0)
    on[pos[ok], gidx[ok]] = True
    first = np.full((n, g), np.inf)
    ok_s = started & (gidx >= 0)
    np.minimum.at(first, (pos[ok_s], gidx[ok_s]), start[ok_s])
    days_on = np.where(on, day[:, None] - first, np.nan)
    short = np.zeros((n, g))
    ok_o = open_ & (gidx >= 0)
    np.maximum.at(short, (pos[ok_o], gidx[ok_o]), sub["shortfall"].to_numpy(float)[ok_o])
    pred = np.zeros(n)
    is_pred = open_ & (gen == "prednisone")
    np.maximum.at(pred, pos[is_pred], sub["daily_mg"].to_numpy(float)[is_pred])
    cols = list(generics)
    return pd.DataFrame(on, columns=cols), pd.DataFrame(days_on, columns=cols), pd.DataFrame(short, columns=cols), pred


# ----------------------------------------------------------------------------------------------------------------
# visits


def _missing(values: dict[str, np.ndarray], names: tuple[str, ...], rate: float, rng: np.random.Generator) -> None:
    """Blank each named measure independently with probability `rate` (in place)."""
    for name in names:
        if rate > 0 and name in values:
            drop = rng.random(values[name].shape) < rate
            values[name] = np.where(drop, np.nan, values[name])


def _visit_batch(
    patient: np.ndarray,
    day: np.ndarray,
    measures: dict[str, np.ndarray],
    patients: pd.DataFrame,
    config: SimulatorConfig,
    rng: np.random.Generator,
    routine: bool,
    rng2: np.random.Generator,
    outcome: bool = False,
    body: tuple[BodySize, np.random.Generator] | None = None,
) -> pd.DataFrame:
    """A wide visit frame: latent-driven measures plus weight, CDASI damage and safety labs, with missingness.

    Routine visits miss core measures at `core_missing`, outcome visits at `core_missing_outcome`; both record CDASI
    at `cdasi_recorded` of visits (drawn from `rng2`, so the first testbed's stream is untouched). A first
    decision visit (the flare) is complete. With `body` (the size trajectories and their own random stream) weight
    and height are the size on the visit day, weight with visit-to-visit noise; else the constant size."""
    values = {k: np.asarray(v, dtype=float).copy() for k, v in measures.items()}
    values["cdasi_damage"] = patients["cdasi_damage"].to_numpy()[patient]
    if body is None:
        values["weight"] = patients["weight"].to_numpy()[patient]
        values["height"] = patients["height"].to_numpy()[patient]
    else:
        trajectory, rng_body = body
        w, h = size_at(trajectory, patient, day)
        noise = trajectory.config.weight_visit_sd_kg * rng_body.standard_normal(len(patient))
        values["weight"] = np.round(np.maximum(w + noise, 1.0), 1)
        values["height"] = np.round(h)
    female = patients["sex"].to_numpy()[patient] == "F"
    values.update(safety_labs(len(patient), female, rng))
    if routine:
        _missing(values, CORE_MEASURES, config.measurement.core_missing, rng)
    if outcome:
        _missing(values, CORE_MEASURES, config.measurement.core_missing_outcome, rng2)
    if (routine or outcome) and config.measurement.cdasi_recorded < 1:
        unrecorded = rng2.random(len(patient)) >= config.measurement.cdasi_recorded
        for name in ("cdasi_activity", "cdasi_damage"):
            values[name] = np.where(unrecorded, np.nan, values[name])
    _missing(values, ("cdasi_damage", *SAFETY_LABS), config.measurement.other_missing, rng)
    frame = pd.DataFrame({"patient": patient.astype(np.int64), "day": day.astype(np.int64)})
    for name in VISIT_MEASURES:
        frame[name] = values.get(name, np.full(len(patient), np.nan))
    return frame


def _weigh_in(patient: np.ndarray, day: np.ndarray, body: BodySize, rng_body: np.random.Generator) -> pd.DataFrame:
    """A visit frame with only weight (with visit noise) and height: the measurements taken at diagnosis."""
    w, h = size_at(body, patient, day)
    frame = pd.DataFrame({"patient": patient.astype(np.int64), "day": day.astype(np.int64)})
    for name in VISIT_MEASURES:
        frame[name] = np.nan
    frame["weight"] = np.round(np.maximum(w + body.config.weight_visit_sd_kg * rng_body.standard_normal(len(patient)), 1.0), 1)
    frame["height"] = np.round(h)
    return frame


def _traits(patients: pd.DataFrame, patient: np.ndarray) -> pd.DataFrame:
    return patients.iloc[patient].reset_index(drop=True)


def _measures_at(
    patients: pd.DataFrame, patient: np.ndarray, muscle: np.ndarray, skin: np.ndarray, config: SimulatorConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Noisy measures for one visit per entry (fresh noise)."""
    sub = _traits(patients, patient)
    z = rng.standard_normal((len(NOISE_COLUMNS), len(patient)))
    return latent_to_measures(muscle, skin, sub["ild"].to_numpy(), sub["mmt8_scale"].to_numpy(), sub, z, config.measurement)


# ----------------------------------------------------------------------------------------------------------------
# the simulation


def simulate_cohort(
    n_patients: int,
    seed: int,
    config: SimulatorConfig,
    vocabulary: Vocabulary,
    catalog: OptionCatalog,
    today: str | np.datetime64 | pd.Timestamp,
    mode: Mode = "observational",
    trial_population: str | None = None,
) -> SimulatedCohort:
    """Simulate `n_patients` refractory myositis records up to `today` with decision points, the option a
    simulated clinician took, and the true potential outcome of every option (deterministic for a seed).

    In trial mode `trial_population` names the emulated trial (configs/simulator.yaml trial.populations; default
    trial.default_population); it is ignored in observational mode."""
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    if mode not in ("observational", "trial"):
        raise ValueError(f"mode must be 'observational' or 'trial', got {mode!r}")
    unknown = [o.adds for o in catalog.options if o.kind in ("add", "switch") and o.adds not in config.history.regimens]
    if unknown:
        raise ValueError(f"configs/simulator.yaml history.regimens lacks how records write: {', '.join(unknown)}")
    trial = mode == "trial"
    population = config.trial.population(trial_population)
    rng = np.random.default_rng(seed)
    today_d = np.datetime64(pd.Timestamp(today).date(), "D")
    cfg = config
    if trial and population.background_scale != 1.0:
        bg = cfg.effects.background
        scaled = type(bg).model_validate(
            bg.model_dump() | {"muscle": bg.muscle * population.background_scale, "skin": bg.skin * population.background_scale}
        )
        cfg = cfg.model_copy(update={"effects": cfg.effects.model_copy(update={"background": scaled})})
    dec = cfg.decisions
    # a trial that enrols by treatment history draws more candidates, then keeps the first n whose history qualifies
    n_draw = n_patients
    if trial and population.history is not None:  # (at least 256, so a small trial still finds its few)
        n_draw = max(n_patients * population.history.candidates_per_patient, 256)

    enrolment: Enrolment | None = None
    if trial and population.screening is not None:  # enrolled on measured values at a screening visit
        enrolment = enrol(
            n_draw,
            lambda k: sample_patients(k, cfg.cohort, cfg.measurement, rng, population.diagnosis),
            population.screening,
            cfg.effects.latent_sd,
            cfg.measurement,
            np.random.default_rng([seed, 19]),
        )
        patients = enrolment.patients
    else:
        patients = sample_patients(n_draw, cfg.cohort, cfg.measurement, rng, population.diagnosis if trial else None)
    if trial and enrolment is None:
        u = rng.random((2, n_draw))
        patients["refractory_muscle"] = np.maximum(patients["refractory_muscle"], population.min_muscle + 0.3 * u[0])
        patients["refractory_skin"] = np.maximum(patients["refractory_skin"], population.min_skin + 0.3 * u[1])
    # the v2 mechanisms draw from their own stream, so a configuration without them reproduces the first testbed
    rng2 = np.random.default_rng([seed, 13])
    patients["refractory"] = rng2.standard_normal(n_draw)  # persistent refractoriness (no record shows it)
    option_latent = rng2.standard_normal((n_draw, len(catalog.options)))  # per-patient, per-option response
    refractory_all = patients["refractory"].to_numpy().copy()  # deepens after a failed decision (gain per failure)
    # body size over time (v2 `body:`): its own random stream; the size at diagnosis doses induction prednisone
    trajectory: BodySize | None = None
    rng_body = np.random.default_rng([seed, 14])
    rng_pred = np.random.default_rng([seed, 17])  # prednisone rows (issue 17): their own stream
    rng_harm = np.random.default_rng([seed, 23])  # the adverse event behind an interruption: its own stream
    if cfg.body.changes:
        trajectory = body_size(patients, np.zeros(n_draw), cfg.body, rng_body)
        w0, h0 = size_at(trajectory, np.arange(n_draw), np.zeros(n_draw))
        patients["weight"], patients["height"] = np.round(w0, 1), np.round(h0)
        patients["bsa"] = body_surface_area(patients["weight"], patients["height"])
    if cfg.history.prednisone_floor_refractory_corr:  # steroid dependence (v2.2): its own stream
        c = cfg.history.prednisone_floor_refractory_corr
        e = np.random.default_rng([seed, 29]).standard_normal(n_draw)
        patients["steroid_dependence"] = c * patients["refractory"].to_numpy() + np.sqrt(1 - c**2) * e
    brand_u = rng.random(n_draw)
    hist = treatment_history(
        patients, cfg.history, cfg.safety, cfg.cohort.cancer_sites, cfg.cohort.years_since_diagnosis_max, brand_u, rng
    )
    if trial and population.history is not None:  # the trial's criteria on the treatment history the record shows
        chosen = np.flatnonzero(meets_history(history_counts(hist, n_draw, cfg.history), population.history))[:n_patients]
        if len(chosen) < n_patients:
            raise ValueError(
                f"trial history criteria (trial.populations.*.history) enrolled {len(chosen)} of {n_patients} patients "
                f"from {n_draw} candidates: relax them or raise candidates_per_patient"
            )
        patients = patients.iloc[chosen].reset_index(drop=True)
        patients["patient_id"] = [f"SIM-{i + 1:06d}" for i in range(n_patients)]
        option_latent, refractory_all, brand_u = option_latent[chosen], refractory_all[chosen], brand_u[chosen]
        hist = subset_history(hist, chosen, n_draw)
        trajectory = None if trajectory is None else subset_body(trajectory, chosen)
        enrolment = None if enrolment is None else subset_enrolment(enrolment, chosen, patients)
    if trajectory is not None:
        trajectory = trajectory._replace(diagnosis_day=hist.diagnosis_day.astype(float))
    body = None if trajectory is None else (trajectory, rng_body)
    rows = annotate_rows(hist.regimens, patients, vocabulary, trajectory, cfg.history.regimens)
    events = [hist.events]

    hv = hist.visits
    hp = hv["patient"].to_numpy()
    visits = [
        _visit_batch(hp, hv["day"].to_numpy(), _measures_at(patients, hp, hv["muscle"].to_numpy(), hv["skin"].to_numpy(), cfg, rng), patients, cfg, rng, True, rng2, body=body)
    ]
    if trajectory is not None:  # weighed and measured on the day of diagnosis, before any per-kg / per-m² dose
        visits.append(_weigh_in(np.arange(n_patients), hist.diagnosis_day.astype(np.int64), trajectory, rng_body))
    if enrolment is not None:  # the trial's screening visit, Δ weeks before the baseline (decision) visit
        screen_day = hist.first_decision_day.astype(np.int64) - np.round(7 * enrolment.weeks_before).astype(np.int64)
        visits.append(_visit_batch(np.arange(n_patients), screen_day, enrolment.screening, patients, cfg, rng, routine=False,
                                   rng2=rng2, body=body))

    generics = vocabulary.generics
    option_names = catalog.names
    n_opt = len(option_names)
    control = option_names.index(catalog.control)
    horizons = tuple(sorted(population.horizons_weeks)) if trial else (dec.horizon_weeks,)
    main_h = max(horizons)
    juvenile_all = patients["juvenile"].to_numpy(bool)
    age_at_dx = patients["age_at_diagnosis"].to_numpy()
    first_infection = np.full(n_patients, np.inf)
    ev0 = hist.events
    inf_rows = ev0["event"].isin(["serious_infection", "opportunistic_infection"]).to_numpy()
    np.minimum.at(first_infection, ev0["patient"].to_numpy()[inf_rows], ev0["day"].to_numpy(float)[inf_rows])

    # round 0: the first decision visit (the flare)
    idx = np.arange(n_patients)
    t = hist.first_decision_day.astype(np.int64)
    m0 = patients["refractory_muscle"].to_numpy().copy()
    s0 = patients["refractory_skin"].to_numpy().copy()
    # the activity the follow-up starts from: the decision visit's, except in a screened trial, whose baseline
    # visit still carries part of the screening flare (the level has none: regression to the mean)
    level_m, level_s = (m0, s0) if enrolment is None else (enrolment.level_muscle, enrolment.level_skin)
    base = _measures_at(patients, idx, m0, s0, cfg, rng)
    decision_frames: list[pd.DataFrame] = []
    outcome_frames: list[pd.DataFrame] = []
    max_rounds = dec.max_decisions if not trial else 1
    # outcome visits with record gaps stay as recorded when they become the next decision visit (v2; without gaps
    # the decision visit is re-drawn as in the first testbed, whose random stream this keeps)
    record_gaps = cfg.measurement.core_missing_outcome > 0 or cfg.measurement.cdasi_recorded < 1

    for k in range(max_rounds):
        if len(idx) == 0:
            break
        n = len(idx)
        sub = _traits(patients, idx)
        if k == 0 or not record_gaps:  # with record gaps a later decision visit is the outcome visit as recorded
            visits.append(_visit_batch(idx, t, base, patients, cfg, rng, routine=False, rng2=rng2, body=body))
        on, days_on, short, pred = regimen_state(rows, idx, t, generics, catalog.rituximab_active_days)
        any_below = (short.to_numpy() > 0).any(axis=1)
        eligible_df, _ = catalog.eligibility(on, pd.Series(any_below))
        eligible = eligible_df[list(option_names)].to_numpy(bool)
        state = DecisionState(
            on_drug=on,
            days_on=days_on,
            shortfall=short,
            prednisone_mg=pred,
            muscle=m0,
            skin=s0,
            age=age_at_dx[idx] + (t - hist.diagnosis_day[idx]) / 365.25,
            prior_infection=first_infection[idx] < t,
            physician_global=np.nan_to_num(base["physician_global"], nan=5.0),
        )
        groups = subgroups(sub, state, cfg.effects)
        scale = sub["mmt8_scale"].to_numpy()
        ild = sub["ild"].to_numpy()
        uln = {e: sub[f"{e}_uln"].to_numpy() for e in ENZYMES}
        threshold = response_thresholds(juvenile_all[idx], cfg.truth.response_category)
        eps = rng.standard_normal((n, 4))  # latent follow-up noise + responsiveness, shared by options and horizons
        # an option with no new effect here (a drug already taken, nothing below target) is the control arm exactly
        lat = option_latent[idx]
        if cfg.effects.drug_specific_weight:
            nil = option_effects(catalog, state, groups, main_h, cfg.effects)
            lat = np.where(~nil.changes(), lat[:, [control]], lat)
        rho, rho_new = _responsiveness_pair(eps[:, 2:3], _responder_z(eps[:, 3:4], refractory_all[idx][:, None], lat, cfg), cfg)
        rho, rho_new = (_refractory_scale(refractory_all[idx][:, None], cfg) * v for v in (rho, rho_new))
        p_interrupt = interruption_risk(catalog, state, cfg.effects)
        harmed = rng2.random((n, 1)) < p_interrupt if p_interrupt.any() else None
        # the adverse event that would stop each option's added drug, and the chance it is a safety event
        harm_kind, harm_safety_share = _harm_events(catalog, cfg, rng_harm.random((n, 1)))
        harm_safety = None if harmed is None else harmed & np.isin(harm_kind, SAFETY_EVENTS)
        u_safety = rng.random(n)
        tis_at: dict[int, np.ndarray] = {}
        realised: dict[int, dict[str, np.ndarray]] = {}
        effects_at: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        safety_at: dict[int, np.ndarray] = {}
        latent_taken_inputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        per_h: list[pd.DataFrame] = []
        for h in horizons:
            eff = option_effects(catalog, state, groups, h, cfg.effects)
            dm, ds = eff.delta(rho, cfg.effects.max_effect, rho_new, harmed, cfg.effects.harm.flare)
            effects_at[h] = (dm, ds)
            sd = cfg.effects.latent_sd
            mf = np.clip(level_m[:, None] * (1 - dm) + sd * eps[:, :1], 0, 1)
            sf = np.clip(level_s[:, None] * (1 - ds) + sd * eps[:, 1:2], 0, 1)
            z = rng.standard_normal((len(NOISE_COLUMNS), n, 1))
            follow = latent_to_measures(mf, sf, ild, scale, sub, z, cfg.measurement)
            if trial:  # the trial's blinded ratings carry the expectation (placebo) response, every arm
                follow = expect(follow, cfg.trial.expectation)
            realised[h] = follow
            latent_taken_inputs[h] = (mf, sf)
            scores = score_pairs(base, follow, scale, uln)
            tis_at[h] = scores.tis
            latents = (refractory_all[idx], option_latent[idx], p_interrupt)
            probs, p_sparing = _monte_carlo(m0, s0, eff, ild, scale, sub, base, uln, threshold, control, cfg, rng, latents,
                                            rng2, (pred, 7.0 * h), (level_m, level_s), trial)
            sparing = steroid_sparing(course(pred[:, None], activity(m0, s0)[:, None], activity(mf, sf), 7.0 * h, cfg.prednisone),
                                      cfg.prednisone)
            p_safe = safety_risk(catalog, state, ild, h, cfg.safety)
            safety_at[h] = p_safe
            # the safety outcome also happens when the adverse event that interrupts an added drug is one
            p_safety = 1 - (1 - p_safe) * (1 - p_interrupt * harm_safety_share)
            safety_event = u_safety[:, None] < p_safe if harm_safety is None else (u_safety[:, None] < p_safe) | harm_safety
            per_h.append(
                pd.DataFrame(
                    {
                        "decision": np.repeat(np.arange(n), n_opt),
                        "option": np.tile(np.asarray(option_names, dtype=object), n),
                        "eligible": eligible.reshape(-1),
                        "horizon_weeks": h,
                        "p_response": probs.p_response.reshape(-1),
                        "p_tis20": probs.p_tis20.reshape(-1),
                        "p_tis40": probs.p_tis40.reshape(-1),
                        "p_tis60": probs.p_tis60.reshape(-1),
                        "p_doi": probs.p_doi.reshape(-1),
                        "tis": scores.tis.reshape(-1),
                        "cdasi_change": (follow["cdasi_activity"] - base["cdasi_activity"][:, None]).reshape(-1),
                        "p_safety": p_safety.reshape(-1),
                        "safety_event": safety_event.reshape(-1),
                        "p_steroid_sparing": p_sparing.reshape(-1),
                        "steroid_sparing": sparing.reshape(-1),
                    }
                )
            )

        if trial:
            prop = np.where(eligible, 1.0 / eligible.sum(axis=1, keepdims=True), 0.0)
        else:
            feats = policy_features(state, groups, any_below, refractory_all[idx])
            prop = propensities(catalog, eligible, feats, cfg.policy)
        taken = choose(prop, rng)
        pid = patients["patient_id"].to_numpy()[idx]
        decision_ids = np.char.add(np.char.add(pid.astype(str), "-D"), str(k + 1))
        dframe = pd.DataFrame({"decision_id": decision_ids, "patient_id": pid, "day": t, "option_taken": np.asarray(option_names, dtype=object)[taken]})
        for j, name in enumerate(option_names):
            dframe[f"propensity_{name}"] = prop[:, j]
        decision_frames.append(dframe)
        for frame in per_h:
            frame.insert(0, "decision_id", decision_ids[frame.pop("decision").to_numpy()])
            outcome_frames.append(frame)

        # ---- what is observed after the decision
        delay_cfg = cfg.trial.start_delay_days if trial else cfg.policy.start_delay_days
        change_day = t + np.round(rng.uniform(delay_cfg.low, delay_cfg.high, n)).astype(np.int64)
        rows = _apply_options(rows, catalog, taken, idx, change_day, short, cfg, patients, vocabulary, brand_u, rng, trajectory)
        if harmed is not None:
            stopped = harmed[np.arange(n), taken]
            rows, stop_day = _stop_harmed(rows, catalog, taken, idx, change_day, stopped, rng2)
            if stop_day is not None:  # the adverse event that stopped it, in the events table, up to a week before
                kind = harm_kind[np.arange(n), taken]
                day = np.maximum(stop_day - rng_harm.integers(0, 8, n), change_day + 1)
                hit = stopped & (kind != "")
                harm_ev = _event_rows(idx[hit], day[hit], kind[hit], rng_harm)
        p_lost: float | np.ndarray = dec.loss_to_follow_up
        if dec.loss_if_no_response_log_or:  # missing not at random: those whom the option failed leave more often
            no_response = tis_at[main_h][np.arange(n), taken] < threshold
            p_lost = special.expit(special.logit(dec.loss_to_follow_up) + dec.loss_if_no_response_log_or * no_response)
        lost = rng.random(n) < p_lost
        loss_day = t + rng.integers(14, 151, n)
        window = dec.outcome_window_days
        outcome_day = t + 7 * main_h + rng.integers(-window, window + 1, n)
        if cfg.prednisone.adjusts:  # the taken option's prednisone course, as the record writes it
            mf_t, sf_t = (v[np.arange(n), taken] for v in latent_taken_inputs[main_h])
            taken_course = course(pred, activity(m0, s0), activity(mf_t, sf_t), 7.0 * main_h, cfg.prednisone)
            last_day = np.where(lost, np.minimum(loss_day, outcome_day), outcome_day)
            rows = _adjust_prednisone(rows, idx, t, pred, taken_course, last_day, 7.0 * main_h, cfg, patients, vocabulary,
                                      brand_u, rng_pred, trajectory)
        last_interim = dec.interim_last_day if not trial else 7 * min(horizons) - cfg.trial.visit_window_days - 21
        pi, di = _interim_days(t, last_interim, dec.interim_visit_days.low, dec.interim_visit_days.high, rng)
        dm_t, ds_t = (arr[np.arange(n), taken] for arr in effects_at[main_h])
        frac = (1 - np.exp(-(di - t[pi]) / 42.0)) / (1 - np.exp(-7 * main_h / 42.0))
        im = np.clip(m0[pi] * (1 - dm_t[pi] * frac) + cfg.effects.latent_sd * frac * eps[pi, 0], 0, 1)
        is_ = np.clip(s0[pi] * (1 - ds_t[pi] * frac) + cfg.effects.latent_sd * frac * eps[pi, 1], 0, 1)
        if level_m is not m0:  # a screened trial: from the baseline visit's activity toward level × (1 − δ)
            im = np.clip(m0[pi] + frac * (level_m[pi] * (1 - dm_t[pi]) - m0[pi]) + cfg.effects.latent_sd * frac * eps[pi, 0], 0, 1)
            is_ = np.clip(s0[pi] + frac * (level_s[pi] * (1 - ds_t[pi]) - s0[pi]) + cfg.effects.latent_sd * frac * eps[pi, 1], 0, 1)
        seen = ~lost[pi] | (di <= loss_day[pi])
        gi = idx[pi][seen]
        if len(gi):
            visits.append(_visit_batch(gi, di[seen], _measures_at(patients, gi, im[seen], is_[seen], cfg, rng), patients, cfg, rng, True, rng2, body=body))
        if trial:
            for h in horizons[:-1]:
                hd = t + 7 * h + rng.integers(-cfg.trial.visit_window_days, cfg.trial.visit_window_days + 1, n)
                keep = ~lost
                vals = {m: v[np.arange(n), taken][keep] for m, v in realised[h].items()}
                visits.append(_visit_batch(idx[keep], hd[keep], vals, patients, cfg, rng, routine=True, rng2=rng2, body=body))
        keep = ~lost
        out_vals = {m: v[np.arange(n), taken] for m, v in realised[main_h].items()}
        # an active outcome visit (judged on the full examination) is the next decision point; its record may miss
        # measures (measurement.core_missing_outcome, cdasi_recorded)
        out_visit = _visit_batch(idx[keep], outcome_day[keep], {m: v[keep] for m, v in out_vals.items()}, patients, cfg, rng,
                                 routine=False, rng2=rng2, outcome=True, body=body)
        visits.append(out_visit)

        # realised safety events under the option taken (and IVIG thrombo-embolism)
        event_taken = u_safety < safety_at[main_h][np.arange(n), taken]
        ev = _safety_events(idx, t, event_taken, main_h, cfg, rng)
        if harmed is not None and stop_day is not None:
            ev = pd.concat([ev, harm_ev], ignore_index=True)
        if "add_ivig" in option_names:
            te = (taken == option_names.index("add_ivig")) & (rng.random(n) < _ivig_thromboembolism_beside_harm(cfg))
            te_day = change_day + rng.integers(7, 7 * main_h - 14, n) - 6  # after the first infusion, in the horizon
            ev = pd.concat([ev, pd.DataFrame({"patient": idx[te], "day": te_day[te], "event": "thromboembolism", "grade": np.nan, "details": "deep vein thrombosis"})], ignore_index=True)
        pos = np.full(n_patients, -1)
        pos[idx] = np.arange(n)
        ev_pos = pos[ev["patient"].to_numpy()]
        seen_ev = ~(lost[ev_pos] & (ev["day"].to_numpy() > loss_day[ev_pos]))
        ev = ev.loc[seen_ev]
        events.append(ev)
        inf = ev["event"].isin(["serious_infection", "opportunistic_infection"]).to_numpy()
        np.minimum.at(first_infection, ev["patient"].to_numpy()[inf], ev["day"].to_numpy(float)[inf])

        # damage accrues while disease stays active: a decision whose option brought no response leaves the patient
        # more refractory at the next one (effects.refractory_gain_per_failure)
        if cfg.effects.refractory_gain_per_failure:
            failed = tis_at[main_h][np.arange(n), taken] < threshold
            refractory_all[idx[failed]] += cfg.effects.refractory_gain_per_failure

        # ---- next round: the outcome visit is the next decision point if disease is still active
        # the clinician judges activity on the full examination (a measure missing from the record was still seen)
        active = is_active(
            out_vals["physician_global"][keep],
            out_vals["cdasi_activity"][keep],
            out_vals["mmt8"][keep],
            scale[keep],
            dec.physician_global_min_cm,
            dec.cdasi_activity_min,
            dec.mmt8_below_fraction,
        )
        cont_local = np.flatnonzero(keep)[active & (outcome_day[keep] <= 0)]
        mf_taken, sf_taken = latent_taken_inputs[main_h]
        next_base = {m: out_vals[m][cont_local] for m in out_vals}
        idx, t = idx[cont_local], outcome_day[cont_local]
        m0, s0 = mf_taken[cont_local, taken[cont_local]], sf_taken[cont_local, taken[cont_local]]
        level_m, level_s = m0, s0
        base = next_base
        # the next round re-appends this visit as its decision visit: drop it from the outcome batch
        if len(cont_local) and not record_gaps:
            drop = pd.MultiIndex.from_arrays([idx, t])
            ov = visits[-1]
            visits[-1] = ov.loc[~pd.MultiIndex.from_arrays([ov["patient"], ov["day"]]).isin(drop)]

    return _export(patients, hist, rows, visits, events, decision_frames, outcome_frames, today_d, trajectory is not None)


def _responsiveness(z: np.ndarray, cfg: SimulatorConfig) -> np.ndarray:
    """Log-normal effect multiplier with mean 1 from standard normals."""
    sd = cfg.effects.responsiveness_log_sd
    return np.exp(sd * z - sd**2 / 2)


def _responder(z: np.ndarray, cfg: SimulatorConfig) -> np.ndarray:
    """1.0 for a draw that responds to a newly started treatment, 0.0 for a primary non-responder."""
    return (z >= special.ndtri(cfg.effects.non_responder_fraction)).astype(float)  # Φ(z) ≥ fraction, no Φ per draw


def _responder_z(z: np.ndarray, patient: np.ndarray, option: np.ndarray, cfg: SimulatorConfig) -> np.ndarray:
    """The standard normal behind each arm's (non-)responder draw: a fresh draw mixed with the patient's persistent
    refractoriness (`effects.refractory_weight` of the variance, shared by every arm and decision), then with the
    patient's latent for that option (`effects.drug_specific_weight`). It stays N(0, 1): the marginal rate of
    primary non-response is unchanged, only who fails (again) changes."""
    w, wd = cfg.effects.refractory_weight, cfg.effects.drug_specific_weight
    z_patient = z if w == 0 else np.sqrt(1 - w) * z - np.sqrt(w) * patient  # refractory (high latent): responds less
    return z_patient if wd == 0 else np.sqrt(1 - wd) * z_patient + np.sqrt(wd) * option


def _refractory_scale(patient: np.ndarray, cfg: SimulatorConfig) -> np.ndarray | float:
    """Multiplier (mean 1 over patients) on every effect a responder gets: refractory patients improve less under
    every option, decision after decision (`effects.refractory_effect_log_sd`; 1.0 when 0)."""
    k = cfg.effects.refractory_effect_log_sd
    return 1.0 if k == 0 else np.exp(-k * patient - k**2 / 2)


def _responsiveness_pair(z_rho: np.ndarray, z_responder: np.ndarray, cfg: SimulatorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per draw: the multiplier on what every arm gets (background, still-accruing drugs) and the one on the
    option's new effect. A primary non-responder gets no new effect and keeps `non_responder_background` of the
    background: the most refractory patients also settle least on placebo."""
    rho = _responsiveness(z_rho, cfg)
    responder = _responder(z_responder, cfg)
    keep = cfg.effects.non_responder_background
    return rho * (responder + (1.0 - responder) * keep), rho * responder


def _monte_carlo(m0, s0, eff, ild, scale, sub, base, uln, threshold, control: int, cfg: SimulatorConfig,
                 rng: np.random.Generator, latents: tuple[np.ndarray, np.ndarray, np.ndarray], rng2: np.random.Generator,
                 steroid: tuple[np.ndarray, float], level: tuple[np.ndarray, np.ndarray] | None = None,
                 trial: bool = False) -> tuple[Probabilities, np.ndarray]:
    """True probabilities per decision × option from `mc_draws` noise draws shared across options, in chunks,
    and the chance of steroid sparing (`steroid` = prednisone mg/day at the decision, horizon in days: the
    prednisone rule of `simulator.steroids` on every draw; it uses no extra random numbers).

    `level` = the (muscle, skin) activity the follow-up starts from (default: the decision visit's, m0 and s0).
    `trial`: the follow-up ratings carry the trial's expectation response (`trial.expectation`), as realised ones do.
    `latents` = (the patient's refractoriness, their per-option latent, the chance of an interruption) per decision:
    the truth is the chance of response given what the simulator knows of the patient, over everything else.

    An option whose new effect is nil at a decision (an add of a drug already taken, optimise with nothing below
    target) has exactly the control arm's draws (common random numbers), so it is scored once, as the control.
    """
    n, n_opt = eff.new_muscle.shape
    draws = cfg.truth.mc_draws
    needed = eff.changes()
    needed[:, control] = True
    out = {f: np.full((n, n_opt), np.nan) for f in Probabilities._fields}
    sparing = np.full((n, n_opt), np.nan)
    pred, horizon_days = steroid
    a0 = activity(m0, s0)
    per_chunk = max(1, cfg.truth.chunk_rows // (n_opt * draws))
    traits = {c: sub[c].to_numpy() for c in TRAIT_COLUMNS}
    refractory, option_latent, interrupt = latents
    lm, ls = (m0, s0) if level is None else level
    for lo in range(0, n, per_chunk):
        hi = min(n, lo + per_chunk)
        eps = rng.standard_normal((4, hi - lo, draws))  # latent muscle, skin, responsiveness, responder
        z = rng.standard_normal((len(NOISE_COLUMNS), hi - lo, draws))
        pi, oj = np.nonzero(needed[lo:hi])
        gi = pi + lo
        stops = (None, None) if eff.stop_muscle is None or eff.stop_skin is None else (eff.stop_muscle[gi, oj][:, None], eff.stop_skin[gi, oj][:, None])
        part = OptionEffects(eff.keep_muscle[gi], eff.keep_skin[gi], eff.new_muscle[gi, oj][:, None], eff.new_skin[gi, oj][:, None], *stops)
        rho, rho_new = _responsiveness_pair(eps[2][pi], _responder_z(eps[3][pi], refractory[gi, None], option_latent[gi, oj][:, None], cfg), cfg)
        rho, rho_new = (_refractory_scale(refractory[gi, None], cfg) * v for v in (rho, rho_new))
        harmed = None
        if interrupt.any():
            harmed = rng2.random((hi - lo, draws))[pi] < interrupt[gi, oj][:, None]
        dm, ds = part.delta(rho, cfg.effects.max_effect, rho_new, harmed, cfg.effects.harm.flare)
        mf = np.clip(lm[gi, None] * (1 - dm) + cfg.effects.latent_sd * eps[0][pi], 0, 1)
        sf = np.clip(ls[gi, None] * (1 - ds) + cfg.effects.latent_sd * eps[1][pi], 0, 1)
        chunk_traits = {c: v[gi] for c, v in traits.items()}
        follow = latent_to_measures(mf, sf, ild[gi], scale[gi], chunk_traits, z[:, pi], cfg.measurement)
        if trial:
            follow = expect(follow, cfg.trial.expectation)
        scores = score_pairs({k: v[gi] for k, v in base.items()}, follow, scale[gi], {k: v[gi] for k, v in uln.items()})
        probs = probabilities_from_draws(scores, threshold[gi])
        for f in Probabilities._fields:
            out[f][gi, oj] = getattr(probs, f)
        c = course(pred[gi, None], a0[gi, None], activity(mf, sf), horizon_days, cfg.prednisone)
        sparing[gi, oj] = steroid_sparing(c, cfg.prednisone).mean(axis=-1)
    for f in Probabilities._fields:
        out[f] = np.where(needed, out[f], out[f][:, [control]])
    return Probabilities(**out), np.where(needed, sparing, sparing[:, [control]])


def _interim_days(t: np.ndarray, last: int, low: float, high: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Routine visits after a decision, every U(low, high) days up to `last` days after it: (row index, day)."""
    n = len(t)
    m = int(np.ceil(last / low)) + 1
    offs = np.cumsum(np.round(rng.uniform(low, high, (n, m))), axis=1)
    keep = offs <= last
    pi, ji = np.nonzero(keep)
    return pi, (t[pi] + offs[pi, ji]).astype(np.int64)


def _apply_options(rows, catalog, taken, idx, change_day, short, cfg, patients, vocabulary, brand_u, rng,
                   body: BodySize | None = None) -> pd.DataFrame:
    """Regimen changes of the options taken: add a drug at its start dose, switch (end the stopped drug's current
    rows the day before the change and start the other as an add does), or raise below-target doses to target.
    A child (juvenile DM under 18 on the change day) gets the drug's juvenile regimen, per kg or m², instead."""
    new_parts = []
    rows = rows.copy()
    for j, opt in enumerate(catalog.options):
        sel = taken == j
        if not sel.any() or opt.kind == "continue":
            continue
        if opt.kind in ("add", "switch"):
            p = idx[sel]
            if opt.kind == "switch":
                rows = _end_current(rows, p, change_day[sel], str(opt.stops))
            child = paediatric(body, p, change_day[sel])
            added = regimen_rows(p, opt.adds, np.zeros(len(p), bool), change_day[sel], np.full(len(p), np.nan), cfg.history.regimens, brand_u, rng, child)
            if opt.start_dose is not None:
                adult = ~added["paediatric"].to_numpy(bool)
                added.loc[adult, "dose"] = opt.start_dose.dose
                added.loc[adult, "dose_unit"] = opt.start_dose.dose_unit
                added.loc[adult, "route"] = opt.start_dose.route
                added.loc[adult, "interval"] = opt.start_dose.interval
            new_parts.append(added)
        elif opt.kind == "optimise":
            p = idx[sel]
            day = np.zeros(len(brand_u), dtype=np.int64)
            chosen = np.zeros(len(brand_u), dtype=bool)
            day[p] = change_day[sel]
            chosen[p] = True
            rp = rows["patient"].to_numpy()
            d = day[rp]
            end = rows["end"].to_numpy(float)
            target_rows = chosen[rp] & (rows["shortfall"].to_numpy() > 0) & (rows["start"].to_numpy() <= d) & (np.isnan(end) | (end >= d))
            old = rows.loc[target_rows]
            rows.loc[target_rows, "end"] = (d[target_rows] - 1).astype(float)
            for generic, grp in old.groupby("generic", sort=True):
                gp = grp["patient"].to_numpy()
                fixed = regimen_rows(gp, str(generic), np.zeros(len(grp), bool), day[gp], np.full(len(grp), np.nan), cfg.history.regimens, brand_u, rng, paediatric(body, gp, day[gp]))
                fixed["drug"] = grp["drug"].to_numpy()
                new_parts.append(fixed)
    if new_parts:
        rows = pd.concat([rows, annotate_rows(pd.concat(new_parts, ignore_index=True), patients, vocabulary, body, cfg.history.regimens)], ignore_index=True)
    return rows


def _end_current(rows: pd.DataFrame, patient: np.ndarray, day: np.ndarray, generic: str) -> pd.DataFrame:
    """End each patient's rows of `generic` that are current on their `day` on the day before (in place on `rows`,
    which the caller owns): the record shows the stop."""
    if not len(patient):
        return rows
    on_day = np.full(int(max(rows["patient"].max(), patient.max())) + 1, np.nan)
    on_day[patient] = day
    d = on_day[rows["patient"].to_numpy()]
    end = rows["end"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        hit = (~np.isnan(d) & (rows["generic"].to_numpy() == generic) & (rows["start"].to_numpy() < d)
               & (np.isnan(end) | (end >= d)))
    rows.loc[hit, "end"] = (d[hit] - 1).astype(float)
    return rows


def _adjust_prednisone(rows, idx, t, pred, taken_course, last_day, horizon_days: float, cfg: SimulatorConfig, patients,
                       vocabulary, brand_u, rng: np.random.Generator, body: BodySize | None) -> pd.DataFrame:
    """Write the prednisone course of the option taken as regimen rows: each taper step or the flare rise starts a
    row (mg/day) and ends the one before; a change on or after `last_day` (the outcome visit, or loss to follow-up)
    is not written."""
    i, d, v = dose_changes(pred, taken_course, horizon_days, cfg.prednisone)
    day = t[i] + d
    keep = day < last_day[i]
    i, day, v = i[keep], day[keep], v[keep]
    if not len(i):
        return rows
    start_of = np.r_[True, i[1:] != i[:-1]]  # each decision's first change ends its current prednisone rows
    rows = _end_current(rows.copy(), idx[i[start_of]], day[start_of], "prednisone")
    nxt = np.r_[day[1:], 0]
    same = np.r_[i[1:] == i[:-1], False]
    end = np.where(same, nxt - 1, np.nan)
    new = regimen_rows(idx[i], "prednisone", np.zeros(len(i), bool), day, end, cfg.history.regimens, brand_u, rng)
    new["dose"] = v
    return pd.concat([rows, annotate_rows(new, patients, vocabulary, body, cfg.history.regimens)], ignore_index=True)


def _ivig_thromboembolism_beside_harm(cfg: SimulatorConfig) -> float:
    """P(a thrombo-embolism on IVIG that did not stop it): `safety.ivig_thromboembolism` is the rate among all
    IVIG-treated patients, and the interruptions for a thrombo-embolism (`effects.harm`) already give part of it."""
    harm = cfg.effects.harm
    mix = harm.events.get("ivig", cfg.safety.event_mix)
    stopped = harm.interruption.get("ivig", 0.0) * mix.get("thromboembolism", 0.0) / sum(mix.values())
    return max(0.0, 1.0 - (1.0 - cfg.safety.ivig_thromboembolism) / (1.0 - stopped))


def _harm_events(catalog: OptionCatalog, cfg: SimulatorConfig, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per decision × option: the adverse event that would interrupt the option's added drug (an events-table code;
    "" for an option that adds nothing), drawn from `effects.harm.events` (else `safety.event_mix`) with one
    uniform per decision `u` (n, 1); and per option the share of that mix that is a safety event (SAFETY_EVENTS)."""
    n = len(u)
    kind = np.full((n, len(catalog.options)), "", dtype=object)
    share = np.zeros(len(catalog.options))
    for j, opt in enumerate(catalog.options):
        if opt.kind not in ("add", "switch") or opt.adds not in cfg.effects.harm.interruption:
            continue
        mix = cfg.effects.harm.events.get(str(opt.adds), cfg.safety.event_mix)
        names = np.asarray(list(mix), dtype=object)
        w = np.asarray([mix[k] for k in names], dtype=float)
        edges = np.cumsum(w) / w.sum()
        kind[:, j] = names[np.minimum(np.searchsorted(edges, u[:, 0], side="right"), len(names) - 1)]
        share[j] = w[np.isin(names, SAFETY_EVENTS)].sum() / w.sum()
    return kind, share


def _stop_harmed(rows, catalog, taken, idx, change_day, stopped,
                 rng2: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray | None]:
    """End the regimen row of an added drug that an adverse event stopped (2–16 weeks after it started), so the
    record shows the interruption (the drug's row ends early) as a real record would; also the stop day of each
    decision (None when nothing stopped)."""
    if not stopped.any():
        return rows, None
    adds = np.asarray([o.adds or "" for o in catalog.options], dtype=object)[taken]
    stop_day = change_day + rng2.integers(14, 113, len(taken))
    key = pd.MultiIndex.from_arrays([idx[stopped], change_day[stopped], adds[stopped]])
    at = pd.MultiIndex.from_arrays([rows["patient"].to_numpy(), rows["start"].to_numpy().astype(np.int64), rows["generic"].to_numpy()])
    hit = at.isin(key)
    if hit.any():
        position = pd.Series(stop_day[stopped], index=key).groupby(level=[0, 1, 2]).first()
        rows = rows.copy()
        rows.loc[hit, "end"] = position.reindex(at[hit]).to_numpy(float)
    return rows, stop_day


def _safety_events(idx, t, event, horizon_weeks, cfg: SimulatorConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Serious infection / opportunistic infection / grade 3–4 cytopenia rows for realised safety events."""
    p = idx[event]
    n = len(p)
    mix = cfg.safety.event_mix
    kinds = np.asarray(list(mix), dtype=object)
    w = np.asarray([mix[k] for k in kinds], dtype=float)
    kind = kinds[rng.choice(len(kinds), n, p=w / w.sum())] if n else np.array([], dtype=object)
    day = t[event] + rng.integers(1, max(2, 7 * horizon_weeks - 14), n)
    return _event_rows(p, day, kind, rng)


def _event_rows(p: np.ndarray, day: np.ndarray, kind: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Events-table rows (patient, day, event, grade, details) for events of the given kinds: a cytopenia is grade
    3–4 neutropenia or thrombocytopenia, an infection gets a typical description."""
    n = len(p)
    grade = np.where(kind == "cytopenia", rng.integers(3, 5, n), np.nan)
    details = np.where(
        kind == "cytopenia",
        np.where(rng.random(n) < 0.7, "neutropenia", "thrombocytopenia"),
        np.where(
            kind == "opportunistic_infection",
            np.asarray(OPPORTUNISTIC_DETAILS, dtype=object)[rng.integers(0, len(OPPORTUNISTIC_DETAILS), n)],
            np.asarray(INFECTION_DETAILS, dtype=object)[rng.integers(0, len(INFECTION_DETAILS), n)],
        ),
    )
    details = np.where(kind == "thromboembolism", "deep vein thrombosis", details)
    details = np.where(kind == "infusion_reaction", "infusion-related reaction, infusion stopped", details)
    return pd.DataFrame({"patient": p, "day": day, "event": kind, "grade": grade, "details": details})


# ----------------------------------------------------------------------------------------------------------------
# export to the contract


def _dates(today: np.datetime64, days: np.ndarray) -> np.ndarray:
    return (today + np.asarray(days, dtype="float64").astype("int64").astype("timedelta64[D]")).astype("datetime64[ns]")


def _export(patients, hist, rows, visits, events, decision_frames, outcome_frames, today, growing: bool = False) -> SimulatedCohort:
    """Contract tables (nothing dated after today) and truth tables. Height is recorded at each patient's first
    visit and, when body size changes (`growing`), at every visit of a juvenile DM patient."""
    pid = patients["patient_id"].to_numpy()
    dx_dates = _dates(today, hist.diagnosis_day)
    patient_table = pd.DataFrame(
        {
            "patient_id": pid,
            "sex": patients["sex"].to_numpy(),
            "birth_year": birth_year(pd.DatetimeIndex(dx_dates), patients["age_at_diagnosis"].to_numpy()),
            "diagnosis": patients["diagnosis"].to_numpy(),
            "diagnosis_date": dx_dates,
            "antibodies": patients["antibodies"].to_numpy(),
            "ild": patients["ild"].to_numpy(bool),
            "cancer_associated": patients["cancer_associated"].to_numpy(bool),
        }
    )

    rows = rows.loc[rows["start"].to_numpy() <= 0].sort_values(["patient", "start", "generic"], kind="stable")
    end = rows["end"].to_numpy(float)
    end = np.where(end > 0, np.nan, end)
    end_dates = np.where(np.isnan(end), np.datetime64("NaT", "ns"), _dates(today, np.nan_to_num(end)))
    regimens = pd.DataFrame(
        {
            "patient_id": pid[rows["patient"].to_numpy()],
            "drug": rows["drug"].to_numpy(),
            "dose": rows["dose"].to_numpy(float),
            "dose_unit": rows["dose_unit"].to_numpy(),
            "route": rows["route"].to_numpy(),
            "interval": rows["interval"].to_numpy(),
            "start_date": _dates(today, rows["start"].to_numpy()),
            "end_date": end_dates.astype("datetime64[ns]"),
        }
    )

    wide = pd.concat(visits, ignore_index=True)
    wide = wide.loc[wide["day"].to_numpy() <= 0].sort_values(["patient", "day"], kind="stable").drop_duplicates(["patient", "day"])
    first_visit = ~wide["patient"].duplicated()
    every = patients["juvenile"].to_numpy(bool)[wide["patient"].to_numpy()] & growing
    wide["height"] = np.where(first_visit | every, wide["height"].to_numpy(float), np.nan)
    assessments = _long_assessments(wide, patients, pid, today)

    ev = pd.concat(events, ignore_index=True)
    ev = ev.loc[ev["day"].to_numpy() <= 0].sort_values(["patient", "day"], kind="stable")
    event_table = pd.DataFrame(
        {
            "patient_id": pid[ev["patient"].to_numpy()],
            "date": _dates(today, ev["day"].to_numpy()),
            "event": ev["event"].to_numpy(),
            "grade": pd.array(ev["grade"].to_numpy(float), dtype="Int64"),
            "details": ev["details"].to_numpy(),
        }
    )

    decisions = pd.concat(decision_frames, ignore_index=True)
    decisions.insert(2, "date", _dates(today, decisions.pop("day").to_numpy()))
    decisions = decisions.sort_values(["patient_id", "date"], ignore_index=True)
    outcomes = pd.concat(outcome_frames, ignore_index=True)
    outcomes["horizon_weeks"] = outcomes["horizon_weeks"].astype(np.int64)
    outcomes["eligible"] = outcomes["eligible"].astype(bool)
    outcomes["safety_event"] = outcomes["safety_event"].astype(bool)
    outcomes["steroid_sparing"] = outcomes["steroid_sparing"].astype(bool)
    order = pd.Index(decisions["decision_id"]).get_indexer(outcomes["decision_id"])
    outcomes = outcomes.iloc[np.lexsort((outcomes["horizon_weeks"].to_numpy(), order))].reset_index(drop=True)
    return SimulatedCohort(
        patient_table, regimens.reset_index(drop=True), assessments, event_table.reset_index(drop=True), decisions, outcomes
    )


def _long_assessments(wide: pd.DataFrame, patients: pd.DataFrame, pid: np.ndarray, today: np.datetime64) -> pd.DataFrame:
    """Melt the wide visit frame into the long contract table (measure, value, unit, upper limit of normal)."""
    names = list(VISIT_MEASURES)
    values = wide[names].to_numpy(float)
    n_v, n_m = values.shape
    flat = values.reshape(-1)
    keep = ~np.isnan(flat)
    vis = np.repeat(np.arange(n_v), n_m)[keep]
    meas = np.tile(np.arange(n_m), n_v)[keep]
    p = wide["patient"].to_numpy()[vis]
    scale = patients["mmt8_scale"].to_numpy()[p]
    units = np.asarray([UNITS.get(m, "") for m in names], dtype=object)[meas]
    is_mmt = meas == names.index("mmt8")
    units = np.where(is_mmt, np.where(scale == 150, "score_0_150", "score_0_80"), units)
    uln = np.full(len(meas), np.nan)
    for enzyme in ENZYMES:
        sel = meas == names.index(enzyme)
        uln[sel] = patients[f"{enzyme}_uln"].to_numpy()[p[sel]]
    return pd.DataFrame(
        {
            "patient_id": pid[p],
            "date": _dates(today, wide["day"].to_numpy()[vis]),
            "measure": np.asarray(names, dtype=object)[meas],
            "value": flat[keep],
            "unit": units,
            "upper_limit_normal": uln,
        }
    )
