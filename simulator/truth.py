"""True response probabilities by Monte Carlo over outcome noise, scored with the project's response criteria.

For each decision and option the follow-up core set is drawn `mc_draws` times (noise shared across options:
common random numbers) and scored against the observed baseline with `features.response`, so the truth uses the
exact same TIS / DOI definitions as the labels computed later from observed data.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from features.response import (
    DEFAULT_DOI_RULES,
    DEFAULT_TIS_RULES,
    TisRules,
    doi_arrays,
    response_threshold,
    tis_arrays,
)
from simulator.measures import CORE_MEASURES, ENZYMES


class PairScores(NamedTuple):
    """TIS and DOI of baseline/follow-up pairs, shaped like the follow-up arrays."""

    tis: np.ndarray
    doi: np.ndarray  # float: 1.0 met, 0.0 not met, NaN undetermined


def score_pairs(
    baseline: dict[str, np.ndarray],
    followup: dict[str, np.ndarray],
    mmt8_scale: np.ndarray,
    uln: dict[str, np.ndarray],
) -> PairScores:
    """Score per-decision baselines (vectors) against follow-ups of shape (decisions, ...) with the ACR/EULAR TIS
    and the IMACS DOI, through the `features.response` kernels (the simulator's values are valid by construction,
    so the frame validation of the public functions is skipped; the arithmetic is the same code)."""
    shape = followup["physician_global"].shape
    extra = (1,) * (len(shape) - 1)

    def column(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=float).reshape((-1, *extra))

    scale = column(mmt8_scale)
    names = (*CORE_MEASURES, *ENZYMES)
    b = {m: column(baseline[m]) for m in names} | {f"{e}_uln": column(uln[e]) for e in ENZYMES}
    f = {m: np.asarray(followup[m], dtype=float) for m in names}
    b["mmt8_scale"] = f["mmt8_scale"] = scale
    tis = np.broadcast_to(tis_arrays(b, f, DEFAULT_TIS_RULES).total, shape)
    met, undetermined = doi_arrays(b, f, DEFAULT_DOI_RULES)
    doi = np.where(undetermined, np.nan, met.astype(float))
    return PairScores(tis, np.broadcast_to(doi, shape))


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
