"""Factual metrics: discrimination, calibration and accuracy of predicted probabilities (and of a continuous
prediction such as the TIS) against the outcome actually observed under the option actually taken."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from models.evaluation.config import BinStrategy, EvaluationConfig, EvaluationInputError
from models.evaluation.inputs import _PROB_EPS, _binary, _logit, _probability, _same_length, _vector

# Newton iterations for the calibration (recalibration) logistic fit; 2 parameters converge in < 10.
_NEWTON_MAX_ITER = 100


def auroc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve (discrimination); NaN when y has a single class, where it is undefined."""
    yy, pp = _binary(y), _probability(p)
    _same_length(y=yy, p=pp)
    if yy.size == 0 or yy.min() == yy.max():
        return math.nan
    return float(roc_auc_score(yy, pp))


def brier_score(y: ArrayLike, p: ArrayLike) -> float:
    """Mean squared difference between predicted probability and the 0/1 outcome (0 is perfect)."""
    yy, pp = _binary(y), _probability(p)
    _same_length(y=yy, p=pp)
    return float(np.mean((pp - yy) ** 2)) if yy.size else math.nan


def log_loss(y: ArrayLike, p: ArrayLike) -> float:
    """Mean negative log-likelihood of the outcomes (probabilities clipped to stay finite)."""
    yy, pp = _binary(y), _probability(p)
    _same_length(y=yy, p=pp)
    if not yy.size:
        return math.nan
    q = np.clip(pp, _PROB_EPS, 1 - _PROB_EPS)
    return float(-np.mean(yy * np.log(q) + (1 - yy) * np.log1p(-q)))


def _logistic_fit(y: np.ndarray, x: np.ndarray | None, offset: np.ndarray) -> np.ndarray | None:
    """Unpenalised logistic MLE of y on [1, x] + offset by damped Newton; None when no finite MLE exists."""
    design = np.ones((y.size, 1)) if x is None else np.column_stack([np.ones_like(x), x])
    beta = np.zeros(design.shape[1])
    if x is not None:
        beta[1] = 1.0  # start at "perfectly calibrated"

    def nll(b: np.ndarray) -> float:
        eta = offset + design @ b
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta))

    current = nll(beta)
    for _ in range(_NEWTON_MAX_ITER):
        eta = offset + design @ beta
        mu = 1.0 / (1.0 + np.exp(-eta))
        w = mu * (1 - mu)
        grad = design.T @ (y - mu)
        hess = design.T @ (design * w[:, None])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        t = 1.0
        while t > 1e-10:
            trial = beta + t * step
            value = nll(trial)
            if value <= current + 1e-12:
                break
            t /= 2
        else:
            return None
        beta, previous, current = trial, current, value
        if np.max(np.abs(beta)) > 1e3:
            return None  # diverging: (quasi-)complete separation, no finite MLE
        if np.max(np.abs(t * step)) < 1e-10 or previous - current < 1e-12 * max(1.0, abs(current)):
            return beta
    return None


def calibration_slope_intercept(y: ArrayLike, p: ArrayLike) -> tuple[float, float]:
    """Slope and intercept of the unpenalised logistic recalibration y ~ a + b·logit(p) (b=1, a=0 is perfect).

    A slope below 1 means over-confident predictions (too extreme), above 1 under-confident. Returns NaN
    for both when the fit has no finite solution: a single outcome class, or predictions that separate the
    outcomes without being the outcomes themselves (p equal to the 0/1 labels gives slope 1, intercept 0).
    """
    yy, pp = _binary(y), _probability(p)
    _same_length(y=yy, p=pp)
    if yy.size < 2 or yy.min() == yy.max():
        return math.nan, math.nan
    if np.array_equal(pp, yy):
        return 1.0, 0.0  # p is the outcome itself: the identity recalibration already attains likelihood 1
    x = _logit(pp)
    if x[yy == 0].max() <= x[yy == 1].min():
        return math.nan, math.nan  # (quasi-)complete separation: the slope runs off to infinity
    beta = _logistic_fit(yy, x, np.zeros_like(yy))
    if beta is None:
        return math.nan, math.nan
    return float(beta[1]), float(beta[0])


def calibration_in_the_large(y: ArrayLike, p: ArrayLike) -> float:
    """Intercept of y ~ a + offset(logit(p)) with the slope fixed at 1: >0 means risks are underestimated overall."""
    yy, pp = _binary(y), _probability(p)
    _same_length(y=yy, p=pp)
    if yy.size < 1 or yy.min() == yy.max():
        return math.nan
    if np.array_equal(pp, yy):
        return 0.0  # p is the outcome itself: nothing to shift
    beta = _logistic_fit(yy, None, _logit(pp))
    return math.nan if beta is None else float(beta[0])


def probability_bins(p: np.ndarray, n_bins: int = 10, strategy: BinStrategy = "uniform") -> np.ndarray:
    """Bin index (0..n_bins-1) of each probability: equal-width bins on [0, 1] or equal-count (quantile) bins."""
    if n_bins < 1:
        raise EvaluationInputError(f"n_bins: rule 'at least 1 bin' broken (got {n_bins})")
    if strategy == "uniform":
        return np.minimum((p * n_bins).astype(np.intp), n_bins - 1)
    if strategy == "quantile":
        if p.size == 0:
            return np.zeros(0, dtype=np.intp)
        inner = np.quantile(p, np.linspace(0, 1, n_bins + 1)[1:-1])
        return np.searchsorted(inner, p, side="right").astype(np.intp)
    raise EvaluationInputError(f"strategy: rule 'uniform or quantile' broken (got {strategy!r})")


def _binned(y: np.ndarray, p: np.ndarray, n_bins: int, strategy: BinStrategy) -> pd.DataFrame:
    """Per non-empty bin: n, mean predicted probability and observed event rate."""
    idx = probability_bins(p, n_bins, strategy)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    keep = count > 0
    return pd.DataFrame(
        {
            "bin": np.flatnonzero(keep),
            "n": count[keep].astype(int),
            "mean_predicted": sum_p[keep] / count[keep],
            "observed_rate": sum_y[keep] / count[keep],
        }
    )


def expected_calibration_error(
    y: ArrayLike, p: ArrayLike, *, n_bins: int = 10, strategy: BinStrategy = "uniform"
) -> float:
    """Expected calibration error: bin-size-weighted mean |observed rate − mean predicted| over probability bins."""
    yy, pp = _binary(y), _probability(p)
    n = _same_length(y=yy, p=pp)
    if n == 0:
        return math.nan
    b = _binned(yy, pp, n_bins, strategy)
    return float(np.sum(b["n"] * np.abs(b["observed_rate"] - b["mean_predicted"])) / n)


def continuous_metrics(y: ArrayLike, prediction: ArrayLike) -> dict[str, float]:
    """RMSE, MAE and mean error (prediction − observed) for a continuous outcome such as the TIS."""
    yy = _vector(y, "y (observed value)")
    pp = _vector(prediction, "prediction")
    n = _same_length(y=yy, prediction=pp)
    if n == 0:
        return {"n": 0.0, "rmse": math.nan, "mae": math.nan, "mean_error": math.nan}
    err = pp - yy
    return {
        "n": float(n),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "mean_error": float(np.mean(err)),
    }


FACTUAL_METRICS = (
    "n",
    "events",
    "observed_rate",
    "mean_predicted",
    "auroc",
    "brier",
    "log_loss",
    "calibration_slope",
    "calibration_intercept",
    "calibration_in_the_large",
    "ece",
)


def factual_metrics(y: ArrayLike, p: ArrayLike, config: EvaluationConfig | None = None) -> dict[str, float]:
    """All factual metrics of predicted response probabilities against observed 0/1 responses.

    Keys are `FACTUAL_METRICS`. A single-class y gives NaN AUROC and calibration slope/intercept, not an error.
    """
    cfg = config or EvaluationConfig()
    yy, pp = _binary(y), _probability(p)
    n = _same_length(y=yy, p=pp)
    slope, intercept = calibration_slope_intercept(yy, pp)
    return {
        "n": float(n),
        "events": float(yy.sum()),
        "observed_rate": float(yy.mean()) if n else math.nan,
        "mean_predicted": float(pp.mean()) if n else math.nan,
        "auroc": auroc(yy, pp),
        "brier": brier_score(yy, pp),
        "log_loss": log_loss(yy, pp),
        "calibration_slope": slope,
        "calibration_intercept": intercept,
        "calibration_in_the_large": calibration_in_the_large(yy, pp),
        "ece": expected_calibration_error(
            yy, pp, n_bins=cfg.calibration_bins, strategy=cfg.calibration_strategy
        ),
    }
