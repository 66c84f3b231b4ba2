"""True response probabilities by Monte Carlo over outcome noise, scored with the project's response criteria.

For each decision and option the follow-up core set is drawn `mc_draws` times (noise shared across options:
common random numbers) and scored against the observed baseline with `features.response`, so the truth uses the
exact same TIS / DOI definitions as the labels computed later from observed data.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from features.response import (
    DEFAULT_DOI_RULES,
    DEFAULT_TIS_RULES,
    TisRules,
    imacs_doi,
    response_threshold,
    total_improvement_score,
)
from simulator.measures import CORE_MEASURES, ENZYMES


class PairScores(NamedTuple):
    """TIS and DOI of baseline/follow-up pairs, shaped like the follow-up arrays."""

    tis: np.ndarray
    doi: np.ndarray  # float: 1.0 met, 0.0 not met, NaN undetermined


def visit_frame(values: dict[str, np.ndarray], mmt8_scale: np.ndarray, uln: dict[str, np.ndarray]) -> pd.DataFrame:
    """A wide core set frame (the `features.response` input) from flat arrays of equal length."""
    frame = {m: values[m] for m in CORE_MEASURES}
    frame["mmt8_scale"] = mmt8_scale
    for enzyme in ENZYMES:
        frame[enzyme] = values[enzyme]
        frame[f"{enzyme}_uln"] = uln[enzyme]
    return pd.DataFrame(frame)


def score_pairs(
    baseline: dict[str, np.ndarray],
    followup: dict[str, np.ndarray],
    mmt8_scale: np.ndarray,
    uln: dict[str, np.ndarray],
) -> PairScores:
    """Score per-decision baselines (vectors) against follow-ups of shape (decisions, ...) with the ACR/EULAR TIS
    and the IMACS DOI."""
    shape = followup["physician_global"].shape
    reps = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    flat_base = {k: np.repeat(v, reps) for k, v in baseline.items()}
    flat_follow = {k: np.broadcast_to(v, shape).reshape(-1) for k, v in followup.items()}
    scale = np.repeat(mmt8_scale, reps)
    ulns = {k: np.repeat(v, reps) for k, v in uln.items()}
    b = visit_frame(flat_base, scale, ulns)
    f = visit_frame(flat_follow, scale, ulns)
    tis = total_improvement_score(b, f, DEFAULT_TIS_RULES)["total_improvement_score"].to_numpy(float)
    doi = imacs_doi(b, f, DEFAULT_DOI_RULES).to_numpy(dtype=float, na_value=np.nan)
    return PairScores(tis.reshape(shape), doi.reshape(shape))


class Probabilities(NamedTuple):
    """Monte Carlo probabilities per decision × option."""

    p_tis20: np.ndarray
    p_tis40: np.ndarray
    p_tis60: np.ndarray
    p_response: np.ndarray
    p_doi: np.ndarray


def response_thresholds(juvenile: np.ndarray, category: str, rules: TisRules = DEFAULT_TIS_RULES) -> np.ndarray:
    """The TIS a patient must reach for the configured response category (juvenile DM thresholds differ)."""
    adult = response_threshold(category, juvenile=False, rules=rules)
    young = response_threshold(category, juvenile=True, rules=rules)
    return np.where(juvenile, young, adult)


def probabilities_from_draws(scores: PairScores, threshold: np.ndarray) -> Probabilities:
    """Reduce scored draws (draws on the last axis, rows first) to probabilities; `threshold` is per row."""
    tis = scores.tis
    threshold = np.asarray(threshold).reshape((-1,) + (1,) * (tis.ndim - 1))
    with np.errstate(invalid="ignore"):
        return Probabilities(
            p_tis20=np.mean(tis >= 20, axis=-1),
            p_tis40=np.mean(tis >= 40, axis=-1),
            p_tis60=np.mean(tis >= 60, axis=-1),
            p_response=np.mean(tis >= threshold, axis=-1),
            p_doi=np.nanmean(scores.doi, axis=-1),
        )
