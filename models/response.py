"""The response label of a Total Improvement Score per patient: shared by training (`models.bundle`) and the
held-out evaluation (`models.evaluation`), so both call a patient a responder the same way."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

#: the feature flag of juvenile DM (its own response thresholds and its own subgroup).
JUVENILE_COLUMN = "diagnosis_juvenile_dermatomyositis"


class ResponseThresholds(Protocol):
    """What `response_of` needs from a configuration (`models.bundle.BundleConfig` has both)."""

    response_threshold: float
    juvenile_response_threshold: float


def is_juvenile(features: pd.DataFrame) -> np.ndarray:
    """Juvenile DM flag per feature row (False where the feature table has no such column or value)."""
    if JUVENILE_COLUMN not in features.columns:
        return np.zeros(len(features), dtype=bool)
    return features[JUVENILE_COLUMN].fillna(0).astype(bool).to_numpy()


def response_margin(tis: np.ndarray, features: pd.DataFrame, config: ResponseThresholds) -> np.ndarray:
    """TIS minus the response threshold of the patient's diagnosis, per row of `features` (and per option column
    when `tis` is 2-D): a response is a margin ≥ 0 (`response_of`). ACR/EULAR 2016 gives juvenile DM its own."""
    threshold = np.where(is_juvenile(features), config.juvenile_response_threshold, config.response_threshold)
    tis = np.asarray(tis, dtype=float)
    return np.round(tis, 9) - (threshold[:, None] if tis.ndim == 2 else threshold)


def response_of(tis: np.ndarray, features: pd.DataFrame, config: ResponseThresholds) -> np.ndarray:
    """Response (1/0; NaN without a score) per row of `features` (and per option column when `tis` is 2-D): TIS at
    or above the threshold of the patient's diagnosis, as the labels stage defines it."""
    margin = response_margin(tis, features, config)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(margin), np.nan, (margin >= 0).astype(float))
