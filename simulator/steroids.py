"""Prednisone after a decision: tapered when disease activity falls, raised when it flares (issue 17).

One rule (`configs/simulator.yaml` `prednisone:`, docs/simulator.md) serves the truth and the record: the truth
applies it to every Monte Carlo draw of the follow-up activity (`p_steroid_sparing`) and to each option's realised
draw (`steroid_sparing`); the record writes the dose changes of the option taken as prednisone regimen rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from simulator.config import PrednisoneRule


class Course(NamedTuple):
    """The prednisone course a rule gives (arrays broadcast like the activity arrays)."""

    taper: np.ndarray  # bool: activity fell enough to taper
    flare: np.ndarray  # bool: activity rose by the flare threshold
    dose: np.ndarray  # mg/day at the horizon


def activity(muscle: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """The activity the prednisone rule reads: the more active of the two latent domains."""
    return np.maximum(muscle, skin)


def review_days(horizon_days: float, rule: PrednisoneRule) -> np.ndarray:
    """Days after the decision at which a tapering clinician lowers the dose (the last review comes
    `review_before_outcome_days` before the outcome visit)."""
    last = horizon_days - rule.review_before_outcome_days
    if last < rule.first_step_days:
        return np.zeros(0, dtype=np.int64)
    return np.arange(rule.first_step_days, last + 1, rule.step_days, dtype=np.int64)


def taper_steps(dose0: np.ndarray, steps: int, rule: PrednisoneRule) -> np.ndarray:
    """Dose after each taper step (last axis = step): `large_step_mg` above `large_step_above_mg`, else `step_mg`,
    never below min(`floor_mg`, the starting dose)."""
    d = np.asarray(dose0, dtype=float)
    floor = np.minimum(rule.floor_mg, d)
    out = []
    for _ in range(steps):
        d = np.maximum(floor, d - np.where(d > rule.large_step_above_mg, rule.large_step_mg, rule.step_mg))
        out.append(d)
    return np.stack(out, axis=-1) if out else np.zeros((*d.shape, 0))


def flare_dose(dose0: np.ndarray, rule: PrednisoneRule) -> np.ndarray:
    """The dose a flare is treated with: max(`flare_min_mg`, `flare_multiplier` × dose), at most `max_mg`."""
    d = np.asarray(dose0, dtype=float)
    return np.minimum(rule.max_mg, np.maximum(d, np.maximum(rule.flare_min_mg, rule.flare_multiplier * d)))


def course(dose0: np.ndarray, a0: np.ndarray, a_h: np.ndarray, horizon_days: float, rule: PrednisoneRule,
           adjusts: bool | None = None) -> Course:
    """The rule at the horizon for activity `a0` at the decision and `a_h` at the horizon (broadcastable).

    With `adjusts` False (default: `rule.adjusts`) the dose stays; taper and flare are still judged."""
    a0 = np.asarray(a0, dtype=float)
    change = (np.asarray(a_h, dtype=float) - a0) / np.maximum(a0, rule.activity_floor)
    flare = change >= rule.flare_if_rise
    taper = change <= -rule.taper_if_fall
    d0 = np.asarray(dose0, dtype=float)  # per decision: the taper and flare doses are computed once, then broadcast
    if not (rule.adjusts if adjusts is None else adjusts):
        return Course(taper, flare, np.broadcast_to(d0, np.broadcast_shapes(d0.shape, change.shape)))
    steps = len(review_days(horizon_days, rule))
    tapered = taper_steps(d0, steps, rule)[..., -1] if steps else d0
    dose = np.where(flare, flare_dose(d0, rule), np.where(taper, tapered, d0))
    return Course(taper, flare, dose)


def steroid_sparing(c: Course, rule: PrednisoneRule) -> np.ndarray:
    """Prednisone ≤ `sparing_mg` at the horizon and no flare."""
    return (c.dose <= rule.sparing_mg + 1e-9) & ~c.flare


def dose_changes(dose0: np.ndarray, c: Course, horizon_days: float, rule: PrednisoneRule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The record's dose changes of one course per decision (1-D inputs): (decision index, days after the decision,
    new mg/day), in decision then day order; a taper writes each step that changes the dose, a flare one rise."""
    d0 = np.asarray(dose0, dtype=float)
    days = review_days(horizon_days, rule)
    rows_i: list[np.ndarray] = []
    rows_d: list[np.ndarray] = []
    rows_v: list[np.ndarray] = []
    if len(days):
        seq = taper_steps(d0, len(days), rule)
        prev = np.concatenate([d0[:, None], seq[:, :-1]], axis=1)
        i, k = np.nonzero(c.taper[:, None] & ~c.flare[:, None] & (seq < prev - 1e-9))
        rows_i.append(i)
        rows_d.append(days[k])
        rows_v.append(seq[i, k])
    up = flare_dose(d0, rule)
    i = np.flatnonzero(c.flare & (up > d0 + 1e-9))
    rows_i.append(i)
    rows_d.append(np.full(len(i), rule.flare_day, dtype=np.int64))
    rows_v.append(up[i])
    i, d, v = (np.concatenate(x) for x in (rows_i, rows_d, rows_v))
    order = np.lexsort((d, i))
    return i[order].astype(np.int64), d[order].astype(np.int64), v[order]
