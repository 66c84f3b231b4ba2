"""Enrolment of an emulated trial on measured values: a screening visit, the trial's inclusion criteria, and the
baseline visit that follows it (configs/simulator.yaml `trial.populations.*.screening`; docs/simulator.md).

Trials enrol on what they measure. Each visit's latent activity is the patient's level plus a visit-to-visit
fluctuation; a patient seen at a flare is more likely to pass the criteria, the flare persists into the baseline
visit a few weeks later and is gone by the outcome visit, so every arm regresses toward the level.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import NamedTuple

import numpy as np
import pandas as pd

from simulator.body import BodySize
from simulator.config import HistoryConfig, MeasurementConfig, TrialExpectation, TrialHistory, TrialScreening
from simulator.history import History
from simulator.measures import ENZYMES, NOISE_COLUMNS, STEPS_PER_UNIT, latent_to_measures, round_to_steps


class Enrolment(NamedTuple):
    """The enrolled patients and their activity: the level the follow-up starts from, the baseline visit's
    (level + the screening flare that carried over), the screening visit's measures and its weeks before baseline."""

    patients: pd.DataFrame
    level_muscle: np.ndarray
    level_skin: np.ndarray
    baseline_muscle: np.ndarray
    baseline_skin: np.ndarray
    screening: dict[str, np.ndarray]
    weeks_before: np.ndarray
    screened: int


def meets_criteria(measures: dict[str, np.ndarray], mmt8_scale: np.ndarray, uln: dict[str, np.ndarray],
                   rules: TrialScreening) -> np.ndarray:
    """Whether each screened patient meets the inclusion criteria on measured values: MMT-8 ≤ `mmt8_max` and at
    least `min_items` of MMT-8 ≤ `mmt8_item_max`, physician global, patient global, HAQ, any measured enzyme ×
    ULN, extramuscular global at or above its threshold (MMT-8 limits scaled from `rules.mmt8_scale`)."""
    per_unit = np.asarray(mmt8_scale, dtype=float) / rules.mmt8_scale
    mmt = measures["mmt8"]
    with np.errstate(invalid="ignore"):
        ratios = np.stack([measures[e] / uln[e] for e in ENZYMES])
        enzyme = np.nanmax(np.where(np.isnan(ratios), -np.inf, ratios), axis=0) >= rules.enzyme_uln_ratio_min
        items = (
            (mmt <= rules.mmt8_item_max * per_unit).astype(int)
            + (measures["physician_global"] >= rules.physician_global_min_cm)
            + (measures["patient_global"] >= rules.patient_global_min_cm)
            + (measures["haq"] >= rules.haq_min)
            + enzyme
            + (measures["extramuscular_global"] >= rules.extramuscular_global_min_cm)
        )
        return (mmt <= rules.mmt8_max * per_unit) & (items >= rules.min_items)


def enrol(
    n: int,
    sample: Callable[[int], pd.DataFrame],
    rules: TrialScreening,
    latent_sd: float,
    measurement: MeasurementConfig,
    rng: np.random.Generator,
) -> Enrolment:
    """Screen candidates from `sample(k)` (patients of the trial's diagnosis at their own activity level) in
    batches until `n` meet the criteria; the first `n` who do are enrolled, numbered SIM-000001… in order.

    A candidate's screening activity is level + `latent_sd`·e (e ~ N(0, 1) per tissue), measured with the usual
    noise on the trial's MMT-8 scale; the baseline visit Δ ~ U(`weeks_before_baseline`) weeks later has level +
    `latent_sd`·(ρ·e + √(1 − ρ²)·e′), ρ = exp(−Δ / `flare_decay_weeks`). Raises if too few pass."""
    parts: list[tuple[pd.DataFrame, np.ndarray, dict[str, np.ndarray]]] = []
    enrolled = screened = 0
    while enrolled < n:
        if screened >= rules.max_candidates_per_patient * n:
            raise ValueError(
                f"trial screening enrolled {enrolled} of {n} patients after {screened} candidates: the inclusion "
                "criteria (trial.populations.*.screening) are too strict for the diagnosis's activity"
            )
        batch = max(2 * (n - enrolled), 64)
        cand = sample(batch)
        cand["mmt8_scale"] = rules.mmt8_scale
        e = rng.standard_normal((2, batch))
        m = np.clip(cand["refractory_muscle"].to_numpy() + latent_sd * e[0], 0, 1)
        s = np.clip(cand["refractory_skin"].to_numpy() + latent_sd * e[1], 0, 1)
        z = rng.standard_normal((len(NOISE_COLUMNS), batch))
        seen = latent_to_measures(m, s, cand["ild"].to_numpy(), cand["mmt8_scale"].to_numpy(), cand, z, measurement)
        uln = {x: cand[f"{x}_uln"].to_numpy() for x in ENZYMES}
        ok = np.flatnonzero(meets_criteria(seen, cand["mmt8_scale"].to_numpy(), uln, rules))[: n - enrolled]
        parts.append((cand.iloc[ok], e[:, ok], {k: v[ok] for k, v in seen.items()}))
        enrolled += len(ok)
        screened += batch
    patients = pd.concat([p for p, _, _ in parts], ignore_index=True)
    patients["patient_id"] = [f"SIM-{i + 1:06d}" for i in range(n)]
    flare = np.concatenate([f for _, f, _ in parts], axis=1)
    screening = {k: np.concatenate([v[k] for _, _, v in parts]) for k in parts[0][2]}
    weeks = rng.uniform(rules.weeks_before_baseline.low, rules.weeks_before_baseline.high, n)
    rho = np.exp(-weeks / rules.flare_decay_weeks)
    carried = rho * flare + np.sqrt(1 - rho**2) * rng.standard_normal((2, n))
    level_m, level_s = patients["refractory_muscle"].to_numpy().copy(), patients["refractory_skin"].to_numpy().copy()
    base_m = np.clip(level_m + latent_sd * carried[0], 0, 1)
    base_s = np.clip(level_s + latent_sd * carried[1], 0, 1)
    patients["refractory_muscle"], patients["refractory_skin"] = base_m, base_s
    return Enrolment(patients, level_m, level_s, base_m, base_s, screening, weeks, screened)


def expect(follow: dict[str, np.ndarray], expectation: TrialExpectation) -> dict[str, np.ndarray]:
    """A trial's follow-up measures with the expectation (placebo) response: each of `expectation.measures` (the
    assessor's and the patient's ratings) × (1 − `expectation.relative`), re-rounded to its resolution; the other
    measures unchanged. The same in every arm (blinded ratings); `follow` is not modified (with `relative` 0 it is
    returned as it is, so a configuration without the response draws and writes exactly what it did before)."""
    if expectation.relative == 0:
        return follow
    out = dict(follow)
    for m in expectation.measures:
        out[m] = round_to_steps(follow[m] * (1 - expectation.relative), STEPS_PER_UNIT[m])
    return out


#: `history_counts` key prefix of the days since an advanced agent's last exposure (a trial's washout reads it).
SINCE = "days_since_"


def history_counts(hist: History, n: int, config: HistoryConfig) -> dict[str, np.ndarray]:
    """Per patient, what the record shows before the baseline visit: distinct prior advanced agents
    (`config.prior_advanced`), distinct steroid-sparing agents (`config.conventional_mix`), the prednisone dose the
    induction taper stopped at (mg/day), the years from diagnosis to the baseline visit and, per advanced agent,
    the days since its last exposure ended (`SINCE + agent`: 0 while ongoing, infinite if never given)."""
    reg = hist.regimens
    patient, generic = reg["patient"].to_numpy(), reg["generic"].to_numpy()

    def distinct(generics: Collection[str]) -> np.ndarray:
        sel = np.isin(generic, list(generics))
        pairs = pd.DataFrame({"p": patient[sel], "g": generic[sel]}).drop_duplicates()
        return np.bincount(pairs["p"].to_numpy(np.int64), minlength=n)

    pred = reg.loc[generic == "prednisone", ["patient", "start", "dose"]].sort_values(["patient", "start"])
    floor = np.zeros(n)
    last = pred.groupby("patient", sort=True).tail(1)
    floor[last["patient"].to_numpy(np.int64)] = last["dose"].to_numpy(float)
    since: dict[str, np.ndarray] = {}
    for agent in config.prior_advanced:
        rows = reg.loc[generic == agent, ["patient", "end"]]
        ended = rows["end"].to_numpy(float)
        who = rows["patient"].to_numpy(np.int64)
        last_end = np.where(np.isnan(ended), hist.first_decision_day[who], ended)  # ongoing: exposed until baseline
        latest = np.full(n, -np.inf)
        np.maximum.at(latest, who, last_end)
        since[SINCE + agent] = np.maximum(hist.first_decision_day - latest, 0.0)
    return {
        **since,
        "prior_advanced": distinct(config.prior_advanced),
        "conventional": distinct(config.conventional_mix),
        "prednisone_mg": floor,
        "years": (hist.first_decision_day - hist.diagnosis_day) / 365.25,
    }


def meets_history(counts: dict[str, np.ndarray], rules: TrialHistory) -> np.ndarray:
    """Whether each candidate's treatment history (`history_counts`) meets the trial's criteria (`TrialHistory`)."""
    adv, pred = counts["prior_advanced"], counts["prednisone_mg"]
    ok = (adv >= rules.min_prior_advanced) & (counts["conventional"] >= rules.min_conventional)
    ok &= (pred >= rules.min_prednisone_mg) & (counts["years"] >= rules.min_years_since_diagnosis)
    if rules.max_prior_advanced is not None:
        ok &= adv <= rules.max_prior_advanced
    if rules.max_prednisone_mg is not None:
        ok &= pred <= rules.max_prednisone_mg
    for agent, days in rules.washout_days.items():
        if SINCE + agent not in counts:
            tracked = sorted(k.removeprefix(SINCE) for k in counts if k.startswith(SINCE))
            raise ValueError(f"trial history washout_days: {agent!r} is not a prior advanced agent the history tracks "
                             f"(history.prior_advanced: {tracked})")
        ok &= counts[SINCE + agent] > days
    return ok


def subset_history(hist: History, keep: np.ndarray, n: int) -> History:
    """The history of the candidates at positions `keep` (of `n`), renumbered 0… in that order."""
    pos = np.full(n, -1, dtype=np.int64)
    pos[keep] = np.arange(len(keep))

    def take(frame: pd.DataFrame) -> pd.DataFrame:
        new = pos[frame["patient"].to_numpy(np.int64)]
        out = frame.loc[new >= 0].copy()
        out["patient"] = new[new >= 0]
        return out.reset_index(drop=True)

    return History(take(hist.regimens), take(hist.visits), take(hist.events), hist.diagnosis_day[keep],
                   hist.first_decision_day[keep])


def subset_enrolment(enrolment: Enrolment, keep: np.ndarray, patients: pd.DataFrame) -> Enrolment:
    """A screened enrolment restricted to the candidates at positions `keep` (their rows are `patients`)."""
    return enrolment._replace(
        patients=patients,
        level_muscle=enrolment.level_muscle[keep],
        level_skin=enrolment.level_skin[keep],
        baseline_muscle=enrolment.baseline_muscle[keep],
        baseline_skin=enrolment.baseline_skin[keep],
        screening={k: v[keep] for k, v in enrolment.screening.items()},
        weeks_before=enrolment.weeks_before[keep],
    )


def subset_body(trajectory: BodySize, keep: np.ndarray) -> BodySize:
    """Body-size trajectories of the candidates at positions `keep`."""
    return trajectory._replace(**{f: getattr(trajectory, f)[keep] for f in trajectory._fields if f != "config"})
