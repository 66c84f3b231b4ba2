"""Calibration of per-option predictions: patient-grouped out-of-fold predictions, then an isotonic or Platt
(sigmoid) map fitted on the factual option's out-of-fold prediction and outcome — one map for every option
(`scope: pooled`, the default: monotone, so calibration never reorders a patient's options and cannot change the
recommendation) or one per option.

A patient's rows never straddle folds, so no calibrator sees a prediction made by a model trained on the
same patient. `mask_ineligible` blanks options a patient cannot receive, so they never get a prediction.
"""

from __future__ import annotations

import warnings
from typing import Self

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from models.config import CalibrationConfig
from models.learners import (
    BaseLearner,
    FitData,
    OutcomeLearner,
    logit,
    patient_folds,
    prepare_fit,
)
from models.propensity import ArrayLike, as_eligible_matrix


def out_of_fold_predictions(
    learner: OutcomeLearner, data: FitData, *, n_folds: int = 5, seed: int = 0
) -> np.ndarray:
    """(n, n_arms) predictions for each row from a clone of `learner` fitted on the other patients' folds."""
    oof = np.full((len(data.y), len(data.arms)), np.nan)
    folds = patient_folds(data.groups, n_folds, seed=seed)
    for train, test in folds:
        member = learner.clone(arms=data.arms, outcome=data.outcome)
        member.fit_prepared(data.rows(train))
        oof[test] = member.predict_outcomes(data.X.iloc[test])
    return oof


class PlattCalibrator:
    """Sigmoid recalibration: a logistic regression of the outcome on the logit of the predicted probability.
    A fitted slope ≤ 0 (predictions no better than chance on the out-of-fold rows) is replaced by the identity
    map, so the calibrator is always increasing and never reverses an order."""

    def fit(self, p: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> Self:
        """Fit slope and intercept on (prediction, outcome) pairs."""
        self.model_ = LogisticRegression(C=1e6, max_iter=1000)
        self.model_.fit(logit(p)[:, None], y, sample_weight=sample_weight)
        self.identity_ = bool(self.model_.coef_[0, 0] <= 0)
        return self

    def predict(self, p: np.ndarray) -> np.ndarray:
        """Recalibrated probabilities."""
        p = np.asarray(p, dtype="float64")
        if getattr(self, "identity_", False):
            return p
        return self.model_.predict_proba(logit(p)[:, None])[:, 1]


def _fit_calibrator(
    p: np.ndarray, y: np.ndarray, w: np.ndarray, method: str, outcome: str
) -> IsotonicRegression | PlattCalibrator:
    if method == "isotonic":
        bounds = {"y_min": 0.0, "y_max": 1.0} if outcome == "binary" else {}
        return IsotonicRegression(out_of_bounds="clip", **bounds).fit(p, y, sample_weight=w)
    return PlattCalibrator().fit(p, y, sample_weight=w)


def fit_arm_calibrators(
    oof: np.ndarray, data: FitData, method: str, min_rows: int, scope: str = "per_option"
) -> tuple[dict[str, IsotonicRegression | PlattCalibrator | None], list[str]]:
    """Calibrators by option, fitted on factual out-of-fold predictions: `pooled` fits one map on every
    option's factual rows and shares it; `per_option` fits one per option on the rows that took it.

    Options with fewer than `min_rows` factual rows get None (left uncalibrated) and are listed (pooled: only
    when all rows together are fewer).
    """
    if method == "sigmoid" and data.outcome != "binary":
        raise ValueError("calibration method 'sigmoid' needs a binary outcome; use 'isotonic' for a score")
    used = data.weight > 0
    if scope == "pooled":
        rows = np.flatnonzero(used)
        if len(rows) < min_rows:
            return dict.fromkeys(data.arms), list(data.arms)
        cal = _fit_calibrator(oof[rows, data.codes[rows]], data.y[rows], data.weight[rows], method, data.outcome)
        return dict.fromkeys(data.arms, cal), []
    calibrators: dict[str, IsotonicRegression | PlattCalibrator | None] = {}
    skipped: list[str] = []
    for k, arm in enumerate(data.arms):
        rows = np.flatnonzero((data.codes == k) & used)
        if len(rows) < min_rows:
            calibrators[arm] = None
            skipped.append(arm)
            continue
        calibrators[arm] = _fit_calibrator(oof[rows, k], data.y[rows], data.weight[rows], method, data.outcome)
    return calibrators, skipped


class CalibratedLearner(BaseLearner):
    """Wraps any learner: per-arm calibrators fitted on patient-grouped out-of-fold predictions, then the base
    learner refitted on all rows; predictions are the base predictions mapped through each arm's calibrator.

    After fit: `base_` (the refitted learner), `calibrators_` (arm -> calibrator or None), `oof_` (the raw
    out-of-fold predictions, for honest evaluation) and `uncalibrated_arms_`.
    """

    def __init__(self, base: BaseLearner, config: CalibrationConfig | None = None) -> None:
        super().__init__(base.config)
        self.base = base
        self.calibration = config or CalibrationConfig()

    def clone(self, **config_updates: object) -> Self:
        """An unfitted wrapper around an unfitted clone of the base learner."""
        return type(self)(self.base.clone(**config_updates), self.calibration)

    def _fit(self, data: FitData) -> None:
        cfg = self.calibration
        self.oof_ = out_of_fold_predictions(self.base, data, n_folds=cfg.n_folds, seed=cfg.seed)
        self.calibrators_, self.uncalibrated_arms_ = fit_arm_calibrators(
            self.oof_, data, cfg.method, cfg.min_rows_per_arm, getattr(cfg, "scope", "per_option")
        )
        if self.uncalibrated_arms_:
            warnings.warn(
                f"options {self.uncalibrated_arms_} have fewer than {cfg.min_rows_per_arm} rows and are "
                "left uncalibrated",
                UserWarning,
                stacklevel=3,
            )
        self.base_ = self.base.clone(arms=data.arms, outcome=data.outcome).fit_prepared(data)

    def _predict_outcomes(self, frame: pd.DataFrame) -> np.ndarray:
        raw = self.base_.predict_outcomes(frame)
        return self.calibrate(raw)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Map raw (n, n_arms) predictions through each arm's calibrator (identity where uncalibrated)."""
        out = np.asarray(raw, dtype="float64").copy()
        for k, arm in enumerate(self.arms_):
            cal = self.calibrators_[arm]
            if cal is not None:
                out[:, k] = cal.predict(out[:, k])
        return out


def calibrate_learner(
    base: BaseLearner,
    X: pd.DataFrame | np.ndarray,
    treatment: ArrayLike,
    y: ArrayLike,
    *,
    config: CalibrationConfig | None = None,
    groups: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    eligible: pd.DataFrame | np.ndarray | None = None,
) -> CalibratedLearner:
    """Convenience: wrap `base` and fit it in one call."""
    return CalibratedLearner(base, config).fit(
        X, treatment, y, groups=groups, sample_weight=sample_weight, eligible=eligible
    )


def out_of_fold_outcomes(
    learner: BaseLearner,
    X: pd.DataFrame | np.ndarray,
    treatment: ArrayLike,
    y: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    eligible: pd.DataFrame | np.ndarray | None = None,
    n_folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """(n, n_arms) patient-grouped out-of-fold predictions from raw inputs (for honest factual metrics)."""
    data = prepare_fit(
        X, treatment, y, learner.config, groups=groups, sample_weight=sample_weight, eligible=eligible
    )
    return out_of_fold_predictions(learner, data, n_folds=n_folds, seed=seed)


def mask_ineligible(
    pred: np.ndarray | pd.DataFrame, eligible: np.ndarray | pd.DataFrame
) -> np.ndarray | pd.DataFrame:
    """Predictions with NaN wherever the option is ineligible, so no ineligible option is ever shown or ranked.

    A DataFrame is masked by option name (its columns); an array by position.
    """
    if isinstance(pred, pd.DataFrame):
        elig = as_eligible_matrix(eligible, [str(c) for c in pred.columns], len(pred))
        return pred.astype("float64").where(elig)
    p = np.asarray(pred, dtype="float64")
    if isinstance(eligible, pd.DataFrame):
        raise ValueError("mask_ineligible: pass predictions as a DataFrame to mask by option name")
    e = np.asarray(eligible)
    if e.dtype != bool or e.shape != p.shape:
        raise ValueError(
            f"mask_ineligible: eligible must be a boolean array of shape {p.shape}, got {e.dtype} {e.shape}"
        )
    return np.where(e, p, np.nan)
