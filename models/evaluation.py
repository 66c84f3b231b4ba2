"""Evaluation of escalation-response models on a patient-grouped held-out set.

Pure functions over arrays and DataFrames (no learner objects, no I/O), in four families:

- factual metrics: discrimination, calibration and accuracy of predicted probabilities against the outcome
  that was actually observed (the option actually taken);
- decision value: the doubly robust (AIPW) value of a treatment policy — "what share would respond if we
  followed the model" — with influence-function standard errors and paired differences between policies;
- simulator-only metrics, where every potential outcome is known: oracle AUROC, √PEHE, regret, coverage;
- subgroup tables and the data behind the calibration, ROC, effect-scatter and Qini plots (`models.plots`).

Conventions: options are columns of (n, arms) matrices in display order (`configs/options.yaml`), the
control ("continue current regimen") is column 0 unless told otherwise, and an option that is not eligible
for a decision has propensity 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score, roc_curve

BinStrategy = Literal["uniform", "quantile"]

# Probabilities are clipped to [eps, 1 - eps] before a log or a logit so that a confident 0 or 1 stays finite.
_PROB_EPS = 1e-15
# Newton iterations for the calibration (recalibration) logistic fit; 2 parameters converge in < 10.
_NEWTON_MAX_ITER = 100


class EvaluationInputError(ValueError):
    """Bad evaluation input: the message names the input, the offending rows, and the rule they break."""


class EvaluationConfig(BaseModel):
    """Evaluation knobs (the `evaluation` section of params.yaml)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    propensity_floor: float = Field(
        0.02, gt=0, lt=1, description="AIPW weights use max(propensity, floor) to bound extreme weights."
    )
    calibration_bins: int = Field(10, ge=2, le=1000, description="Number of bins for ECE and curves.")
    calibration_strategy: BinStrategy = Field(
        "uniform", description="uniform: equal-width probability bins; quantile: equal-count bins."
    )
    subgroup_min_n: int = Field(30, ge=1, description="Subgroups with fewer decisions get NaN metrics.")
    confidence_level: float = Field(0.95, gt=0, lt=1, description="Two-sided confidence level of CIs.")


# --------------------------------------------------------------------------------------------------------
# Input checks: every failure names the input, the first offending rows and the rule.


def _fail(name: str, mask: np.ndarray, values: np.ndarray, rule: str) -> None:
    """Raise an EvaluationInputError listing up to five offending rows of `name`."""
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        return
    shown = ", ".join(f"row {r} = {values.reshape(len(mask), -1)[r].tolist()}" for r in rows[:5])
    more = f" (and {rows.size - 5} more rows)" if rows.size > 5 else ""
    raise EvaluationInputError(f"{name}: {rows.size} row(s) break the rule '{rule}': {shown}{more}")


def _to_float(values: object, name: str, ndim: int) -> np.ndarray:
    """Convert a list/array/Series/DataFrame to a float array of the expected dimension."""
    try:
        if isinstance(values, pd.Series | pd.DataFrame | pd.Index):
            arr = values.to_numpy(dtype=float, na_value=np.nan)
        else:
            arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise EvaluationInputError(f"{name}: rule 'numeric values' broken ({exc})") from exc
    if arr.ndim != ndim:
        raise EvaluationInputError(f"{name}: rule '{ndim}-dimensional' broken (got shape {arr.shape})")
    return arr


def _vector(values: ArrayLike, name: str, *, allow_nan: bool = False) -> np.ndarray:
    """A 1-D float vector; NaN/inf rejected unless allowed."""
    arr = _to_float(values, name, 1)
    if not allow_nan:
        _fail(name, ~np.isfinite(arr), arr, "a finite number is required")
    return arr


def _binary(values: ArrayLike, name: str = "y (observed response)") -> np.ndarray:
    """A 0/1 outcome vector (booleans allowed)."""
    arr = _vector(values, name)
    _fail(name, (arr != 0) & (arr != 1), arr, "binary outcome: 0 or 1")
    return arr


def _probability(values: ArrayLike, name: str = "p (predicted probability)") -> np.ndarray:
    """A probability vector with every value in [0, 1]."""
    arr = _vector(values, name)
    _fail(name, (arr < 0) | (arr > 1), arr, "probability in [0, 1]")
    return arr


def _matrix(values: ArrayLike, name: str, n: int | None = None) -> np.ndarray:
    """An (n, arms) float matrix, one column per option."""
    arr = _to_float(values, name, 2)
    if n is not None and arr.shape[0] != n:
        raise EvaluationInputError(
            f"{name}: rule 'one row per decision' broken ({arr.shape[0]} rows, expected {n})"
        )
    return arr


def _arm_index(values: ArrayLike, name: str, n: int, arms: int) -> np.ndarray:
    """An integer option index per decision, each in [0, arms)."""
    arr = _vector(values, name)
    if arr.shape[0] != n:
        raise EvaluationInputError(
            f"{name}: rule 'one row per decision' broken ({arr.shape[0]} rows, expected {n})"
        )
    _fail(name, (arr != np.round(arr)) | (arr < 0) | (arr >= arms), arr, f"an option index in 0..{arms - 1}")
    return arr.astype(np.intp)


def _same_length(**arrays: np.ndarray) -> int:
    """The common length of the given vectors, or an error naming the mismatch."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise EvaluationInputError(f"inputs must have one row per decision; got lengths {lengths}")
    return next(iter(lengths.values()))


def _logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p clipped away from 0 and 1."""
    q = np.clip(p, _PROB_EPS, 1 - _PROB_EPS)
    return np.log(q) - np.log1p(-q)


def _z(confidence_level: float) -> float:
    """Two-sided standard-normal quantile for a confidence level (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence_level / 2)


# --------------------------------------------------------------------------------------------------------
# 1. Factual metrics


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


# --------------------------------------------------------------------------------------------------------
# 2. Decision value (doubly robust, AIPW)


@dataclass(frozen=True)
class PolicyValue:
    """Estimated mean outcome if every decision followed a policy, with its influence-function CI."""

    estimate: float
    standard_error: float
    ci_low: float
    ci_high: float
    n: int


def _summarise(contributions: np.ndarray, confidence_level: float) -> PolicyValue:
    """Mean of per-decision influence contributions, its standard error and a normal CI."""
    n = contributions.size
    est = float(contributions.mean()) if n else math.nan
    se = float(contributions.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    z = _z(confidence_level)
    return PolicyValue(estimate=est, standard_error=se, ci_low=est - z * se, ci_high=est + z * se, n=n)


def option_codes(taken: ArrayLike, options: Sequence[str], name: str = "option_taken") -> np.ndarray:
    """Map option names (e.g. `option_taken`) to column indices of the option matrices; unknown names fail."""
    values = pd.Series(taken).astype("object").to_numpy()
    lookup = {o: i for i, o in enumerate(options)}
    codes = pd.Series(values).map(lookup)
    bad = codes.isna().to_numpy()
    _fail(name, bad, values.astype(str), f"one of the options {list(options)}")
    return codes.to_numpy(dtype=np.intp)


def aipw_contributions(
    policy: ArrayLike,
    treatment: ArrayLike,
    y: ArrayLike,
    mu: ArrayLike,
    propensity: ArrayLike,
    *,
    propensity_floor: float = 0.02,
) -> np.ndarray:
    """Per-decision AIPW scores ψ_i = μ_i(d_i) + 1[a_i = d_i] (y_i − μ_i(a_i)) / max(e_i(d_i), floor).

    Their mean is the doubly robust value of policy d (unbiased if either μ or e is right) and their spread
    gives the influence-function standard error; differences of two policies' scores give paired CIs.
    """
    yy = _vector(y, "y (observed outcome)")
    n = yy.size
    mu_m = _matrix(mu, "mu (predicted outcome per option)", n)
    e = _matrix(propensity, "propensity (per option; 0 = ineligible)", n)
    if mu_m.shape != e.shape:
        raise EvaluationInputError(
            f"mu and propensity must have the same (decisions, options) shape; got {mu_m.shape} and {e.shape}"
        )
    if not 0 < propensity_floor < 1:
        raise EvaluationInputError(f"propensity_floor: rule '0 < floor < 1' broken (got {propensity_floor})")
    arms = e.shape[1]
    d = _arm_index(policy, "policy (option index per decision)", n, arms)
    a = _arm_index(treatment, "treatment (option taken per decision)", n, arms)
    bad_e = ~np.isfinite(e) | (e < 0) | (e > 1)
    _fail(
        "propensity (per option; 0 = ineligible)", bad_e.any(axis=1), e, "a probability in [0, 1] per option"
    )
    rows = np.arange(n)
    e_policy, e_taken = e[rows, d], e[rows, a]
    _fail(
        "policy (option index per decision)",
        e_policy <= 0,
        d,
        "the policy's option must be eligible (propensity > 0)",
    )
    _fail(
        "treatment (option taken per decision)",
        e_taken <= 0,
        a,
        "the option taken must be eligible (propensity > 0)",
    )
    mu_policy, mu_taken = mu_m[rows, d], mu_m[rows, a]
    missing_mu = ~np.isfinite(mu_policy) | ~np.isfinite(mu_taken)
    _fail(
        "mu (predicted outcome per option)",
        missing_mu,
        mu_m,
        "finite prediction for the policy's and the taken option",
    )
    follows = d == a
    weight = np.where(follows, 1.0 / np.maximum(e_policy, propensity_floor), 0.0)
    return mu_policy + weight * (yy - mu_taken)


def policy_value(
    policy: ArrayLike,
    treatment: ArrayLike,
    y: ArrayLike,
    mu: ArrayLike,
    propensity: ArrayLike,
    *,
    propensity_floor: float = 0.02,
    confidence_level: float = 0.95,
) -> PolicyValue:
    """Doubly robust (AIPW) value of a policy: the mean outcome had each decision followed `policy`.

    `mu` (n, arms) are predicted outcomes per option, `propensity` (n, arms) the probability each option was
    chosen (0 = ineligible), `policy`/`treatment` option indices. Propensities are floored for the weights.
    """
    psi = aipw_contributions(policy, treatment, y, mu, propensity, propensity_floor=propensity_floor)
    return _summarise(psi, confidence_level)


def observed_policy_value(y: ArrayLike, *, confidence_level: float = 0.95) -> PolicyValue:
    """Value of care as actually given: the mean observed outcome, with its standard error."""
    return _summarise(_vector(y, "y (observed outcome)"), confidence_level)


def recommended_policy(mu: ArrayLike, eligible: ArrayLike) -> np.ndarray:
    """The option with the highest predicted response among eligible options (ties: earliest in display order)."""
    mu_m = _matrix(mu, "mu (predicted outcome per option)")
    elig = _matrix(eligible, "eligible (per option)", mu_m.shape[0]).astype(bool)
    if elig.shape != mu_m.shape:
        raise EvaluationInputError(f"eligible must match mu's shape {mu_m.shape}; got {elig.shape}")
    _fail("eligible (per option)", ~elig.any(axis=1), elig, "at least one eligible option per decision")
    _fail(
        "mu (predicted outcome per option)",
        (elig & ~np.isfinite(mu_m)).any(axis=1),
        mu_m,
        "finite prediction for every eligible option",
    )
    return np.argmax(np.where(elig, mu_m, -np.inf), axis=1).astype(np.intp)


def fixed_option_policy(option: int, eligible: ArrayLike, *, control: int = 0) -> np.ndarray:
    """Policy "give `option` where eligible, otherwise the control (continue current regimen)"."""
    elig = _matrix(eligible, "eligible (per option)").astype(bool)
    if not (0 <= option < elig.shape[1] and 0 <= control < elig.shape[1]):
        raise EvaluationInputError(f"option {option} / control {control}: rule 'an option index' broken")
    fallback = ~elig[:, option]
    _fail(
        "eligible (per option)",
        fallback & ~elig[:, control],
        elig,
        "the control must be eligible when the option is not",
    )
    return np.where(fallback, control, option).astype(np.intp)


def decision_value_table(
    treatment: ArrayLike,
    y: ArrayLike,
    mu: ArrayLike,
    propensity: ArrayLike,
    options: Sequence[str],
    *,
    control: int = 0,
    eligible: ArrayLike | None = None,
    labels: Mapping[str, str] | None = None,
    config: EvaluationConfig | None = None,
) -> pd.DataFrame:
    """Doubly robust value of: the model's recommendation, care as given, and each fixed option.

    One row per policy with its value and CI, the share of decisions where it agrees with the option taken,
    and its difference from care as given with a paired (influence-function) CI. Eligibility defaults to
    propensity > 0.
    """
    cfg = config or EvaluationConfig()
    yy = _vector(y, "y (observed outcome)")
    e = _matrix(propensity, "propensity (per option; 0 = ineligible)", yy.size)
    if len(options) != e.shape[1]:
        raise EvaluationInputError(f"options: {len(options)} names for {e.shape[1]} option columns")
    elig = (e > 0) if eligible is None else _matrix(eligible, "eligible (per option)", yy.size).astype(bool)
    a = _arm_index(treatment, "treatment (option taken per decision)", yy.size, e.shape[1])
    names = dict(labels or {})
    control_label = names.get(options[control], options[control])

    policies: list[tuple[str, str, np.ndarray | None]] = [
        ("recommended", "model's recommendation", recommended_policy(mu, elig)),
        ("observed", "care as given", None),
    ]
    for k, option in enumerate(options):
        label = names.get(option, option)
        text = label if k == control else f"{label} where eligible, otherwise {control_label}"
        policies.append((f"always_{option}", text, fixed_option_policy(k, elig, control=control)))

    z = _z(cfg.confidence_level)
    n = yy.size
    rows = []
    for key, text, d in policies:
        if d is None:
            psi, agree = yy, 1.0
        else:
            psi = aipw_contributions(d, a, yy, mu, e, propensity_floor=cfg.propensity_floor)
            agree = float(np.mean(d == a)) if n else math.nan
        value = _summarise(psi, cfg.confidence_level)
        if d is None:
            diff = diff_se = math.nan
        else:
            delta = psi - yy
            diff = float(delta.mean())
            diff_se = float(delta.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        rows.append(
            {
                "policy": key,
                "description": text,
                "value": value.estimate,
                "standard_error": value.standard_error,
                "ci_low": value.ci_low,
                "ci_high": value.ci_high,
                "n": value.n,
                "share_agreeing_with_care_given": agree,
                "difference_vs_care_given": diff,
                "difference_standard_error": diff_se,
                "difference_ci_low": diff - z * diff_se,
                "difference_ci_high": diff + z * diff_se,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------
# 3. Simulator-only metrics (the truth is known)


def option_matrix(
    long: pd.DataFrame,
    value: str,
    options: Sequence[str],
    *,
    key: str = "decision_id",
    option_column: str = "option",
    table: str = "outcomes",
) -> pd.DataFrame:
    """Pivot a long decision × option table (e.g. truth/outcomes) to one row per decision, one column per option.

    Unknown options and duplicate (decision, option) rows are errors; a missing cell is NaN (e.g. ineligible).
    """
    for column in (key, option_column, value):
        if column not in long.columns:
            raise EvaluationInputError(f"{table}: column '{column}' is missing")
    unknown = ~long[option_column].isin(list(options)).to_numpy()
    _fail(
        f"{table}.{option_column}",
        unknown,
        long[option_column].astype(str).to_numpy(),
        f"one of {list(options)}",
    )
    dup = long.duplicated([key, option_column], keep="first").to_numpy()
    _fail(
        f"{table}.{key}+{option_column}",
        dup,
        long[key].astype(str).to_numpy(),
        "one row per decision and option",
    )
    wide = long.pivot(index=key, columns=option_column, values=value)
    return wide.reindex(columns=list(options))


def coverage_by_option(
    truth: ArrayLike, lower: ArrayLike, upper: ArrayLike, eligible: ArrayLike, options: Sequence[str]
) -> pd.DataFrame:
    """Per option: share of eligible decisions whose true value lies inside [lower, upper], and mean width."""
    t = _matrix(truth, "truth (per option)")
    lo = _matrix(lower, "interval lower (per option)", t.shape[0])
    hi = _matrix(upper, "interval upper (per option)", t.shape[0])
    elig = _matrix(eligible, "eligible (per option)", t.shape[0]).astype(bool)
    if not (t.shape == lo.shape == hi.shape == elig.shape) or len(options) != t.shape[1]:
        raise EvaluationInputError(
            f"truth, lower, upper, eligible and options must agree in shape; got {t.shape}, {lo.shape}, "
            f"{hi.shape}, {elig.shape}, {len(options)} options"
        )
    finite = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(t)
    _fail(
        "interval (per option)",
        (elig & ~finite).any(axis=1),
        np.column_stack([lo, hi]),
        "finite truth and bounds where eligible",
    )
    _fail(
        "interval (per option)", (elig & (lo > hi)).any(axis=1), np.column_stack([lo, hi]), "lower <= upper"
    )
    inside = (lo <= t) & (t <= hi) & elig
    n = elig.sum(axis=0)
    width = np.where(elig, hi - lo, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(
            {
                "option": list(options),
                "n_eligible": n,
                "coverage": np.where(n > 0, inside.sum(axis=0) / n, np.nan),
                "mean_interval_width": np.where(n > 0, width / n, np.nan),
            }
        )


def _effects(p: np.ndarray, control: int) -> np.ndarray:
    """Contrast of each option against the control, per decision (difference in response probability)."""
    return p - p[:, [control]]


def _effect_inputs(
    predicted: ArrayLike, true: ArrayLike, eligible: ArrayLike, options: Sequence[str], control: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked (predicted, true, usable) matrices for option-vs-control effects: usable where both the option and
    the control are eligible."""
    pp = _matrix(predicted, "predicted probability (per option)")
    pt = _matrix(true, "true probability (per option)", pp.shape[0])
    elig = _matrix(eligible, "eligible (per option)", pp.shape[0]).astype(bool)
    if not (pp.shape == pt.shape == elig.shape) or len(options) != pp.shape[1]:
        raise EvaluationInputError("predicted, true, eligible and options must agree in shape")
    return pp, pt, elig & elig[:, [control]]


def sqrt_pehe(
    predicted: ArrayLike, true: ArrayLike, eligible: ArrayLike, options: Sequence[str], *, control: int = 0
) -> pd.DataFrame:
    """√PEHE per option: root mean squared error of the predicted vs the true option-minus-control effect."""
    pp, pt, use = _effect_inputs(predicted, true, eligible, options, control)
    _fail(
        "predicted/true probability",
        (use & ~(np.isfinite(pp) & np.isfinite(pt))).any(axis=1),
        pp,
        "finite where eligible",
    )
    err2 = np.where(use, (_effects(pp, control) - _effects(pt, control)) ** 2, 0.0)
    n = use.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(n > 0, np.sqrt(err2.sum(axis=0) / n), np.nan)
        true_eff = np.where(n > 0, np.where(use, _effects(pt, control), 0).sum(axis=0) / n, np.nan)
        pred_eff = np.where(n > 0, np.where(use, _effects(pp, control), 0).sum(axis=0) / n, np.nan)
    value[control] = true_eff[control] = pred_eff[control] = np.nan
    return pd.DataFrame(
        {
            "option": list(options),
            "n_compared": n,
            "sqrt_pehe": value,
            "mean_true_effect": true_eff,
            "mean_predicted_effect": pred_eff,
        }
    )


@dataclass(frozen=True)
class Regret:
    """How much response probability the recommendations leave on the table versus the oracle-best option."""

    regret: float
    standard_error: float
    share_suboptimal: float
    oracle_value: float
    recommended_value: float
    n: int


def regret(true_p: ArrayLike, eligible: ArrayLike, recommended: ArrayLike) -> Regret:
    """Mean over decisions of (true p of the best eligible option − true p of the recommended option)."""
    pt = _matrix(true_p, "true probability (per option)")
    elig = _matrix(eligible, "eligible (per option)", pt.shape[0]).astype(bool)
    if elig.shape != pt.shape:
        raise EvaluationInputError(f"eligible must match the true probability's shape {pt.shape}")
    n, arms = pt.shape
    rec = _arm_index(recommended, "recommended (option index per decision)", n, arms)
    rows = np.arange(n)
    _fail(
        "recommended (option index per decision)",
        ~elig[rows, rec],
        rec,
        "the recommended option must be eligible",
    )
    _fail("true probability (per option)", (elig & ~np.isfinite(pt)).any(axis=1), pt, "finite where eligible")
    best = np.where(elig, pt, -np.inf).max(axis=1)
    got = pt[rows, rec]
    gap = best - got
    summary = _summarise(gap, 0.95)
    return Regret(
        regret=summary.estimate,
        standard_error=summary.standard_error,
        share_suboptimal=float(np.mean(gap > 1e-12)) if n else math.nan,
        oracle_value=float(best.mean()) if n else math.nan,
        recommended_value=float(got.mean()) if n else math.nan,
        n=n,
    )


@dataclass(frozen=True)
class SimulatorMetrics:
    """Simulator-only evaluation: a per-option table plus the decision-level regret."""

    per_option: pd.DataFrame
    regret: Regret
    sqrt_pehe_overall: float


def simulator_metrics(
    predicted_p: ArrayLike,
    true_p: ArrayLike,
    potential_response: ArrayLike,
    eligible: ArrayLike,
    recommended: ArrayLike,
    options: Sequence[str],
    *,
    control: int = 0,
    lower: ArrayLike | None = None,
    upper: ArrayLike | None = None,
) -> SimulatorMetrics:
    """Per option: model vs oracle AUROC on the realised potential response, √PEHE vs control, interval coverage.

    The oracle AUROC scores each decision by its true probability: the ceiling any model can reach given the
    outcome noise. All per-option figures use the decisions where that option is eligible. Intervals
    (`lower`/`upper`, (n, arms) bounds on the response probability) are optional.
    """
    pp = _matrix(predicted_p, "predicted probability (per option)")
    n = pp.shape[0]
    pt = _matrix(true_p, "true probability (per option)", n)
    yr = _matrix(potential_response, "potential response (per option)", n)
    elig = _matrix(eligible, "eligible (per option)", n).astype(bool)
    if not (pp.shape == pt.shape == yr.shape == elig.shape) or len(options) != pp.shape[1]:
        raise EvaluationInputError(
            "predicted, true, potential response, eligible and options must agree in shape"
        )
    rows = []
    for k, option in enumerate(options):
        m = elig[:, k]
        yk = yr[m, k]
        pred_k = _probability(pp[m, k], f"predicted probability [{option}]")
        true_k = _probability(pt[m, k], f"true probability [{option}]")
        _binary(yk, f"potential response [{option}]")
        rows.append(
            {
                "option": option,
                "n_eligible": int(m.sum()),
                "responders": int(yk.sum()),
                "auroc_model": auroc(yk, pred_k),
                "auroc_oracle": auroc(yk, true_k),
                "mean_predicted": float(pred_k.mean()) if m.any() else math.nan,
                "mean_true": float(true_k.mean()) if m.any() else math.nan,
            }
        )
    table = pd.DataFrame(rows)
    table["auroc_gap"] = table["auroc_oracle"] - table["auroc_model"]
    pehe = sqrt_pehe(pp, pt, elig, options, control=control)
    table = table.merge(pehe.drop(columns="option"), left_index=True, right_index=True)
    if (lower is None) != (upper is None):
        raise EvaluationInputError("lower and upper: give both interval bounds or neither")
    if lower is not None:
        cov = coverage_by_option(pt, lower, upper, elig, options)
        table = table.merge(cov.drop(columns=["option", "n_eligible"]), left_index=True, right_index=True)
    else:
        table["coverage"] = np.nan
        table["mean_interval_width"] = np.nan
    use = elig & elig[:, [control]]
    use[:, control] = False
    err2 = (_effects(pp, control) - _effects(pt, control))[use] ** 2
    overall = float(np.sqrt(err2.mean())) if err2.size else math.nan
    return SimulatorMetrics(per_option=table, regret=regret(pt, elig, recommended), sqrt_pehe_overall=overall)


# --------------------------------------------------------------------------------------------------------
# 4. Subgroups

_ANTIBODY_GROUPS = (
    ("anti_mda5", "anti-MDA5"),
    ("anti_synthetase", "antisynthetase"),
    ("anti_tif1g", "anti-TIF1γ"),
    ("anti_nxp2", "anti-NXP2"),
    ("anti_mi2", "anti-Mi-2"),
    ("anti_sae", "anti-SAE"),
    ("anti_srp_hmgcr", "anti-SRP/HMGCR"),
    ("antibody_negative", "antibody negative"),
)


def clinical_subgroups(patients: pd.DataFrame, *, table: str = "patients") -> pd.DataFrame:
    """Subgroup labels per patient: antibody group, ILD and juvenile vs adult, from the normalised patients table.

    A patient with several antibodies is placed by clinical priority (MDA5 first, as it drives prognosis);
    unknown ILD becomes "ILD unknown" rather than being dropped.
    """
    needed = [c for c, _ in _ANTIBODY_GROUPS] + ["ild", "diagnosis", "patient_id"]
    missing = [c for c in needed if c not in patients.columns]
    if missing:
        raise EvaluationInputError(f"{table}: column(s) {missing} missing (rule: normalised patients table)")
    group = pd.Series("no antibody recorded", index=patients.index, dtype="object")
    for column, label in reversed(_ANTIBODY_GROUPS):
        group = group.mask(patients[column].fillna(False).astype(bool), label)
    ild = patients["ild"].astype("boolean")
    ild_label = pd.Series(
        np.select(
            [ild.eq(True).fillna(False), ild.eq(False).fillna(False)], ["ILD", "no ILD"], "ILD unknown"
        ),
        index=patients.index,
    )
    age = np.where(patients["diagnosis"].eq("juvenile_dermatomyositis"), "juvenile", "adult")
    return pd.DataFrame(
        {"patient_id": patients["patient_id"], "antibody_group": group, "ild": ild_label, "age_group": age},
        index=patients.index,
    )


def subgroup_metrics(
    y: ArrayLike,
    p: ArrayLike,
    groups: pd.Series | pd.DataFrame,
    *,
    min_n: int | None = None,
    config: EvaluationConfig | None = None,
) -> pd.DataFrame:
    """Factual metrics by subgroup: one row per (subgroup variable, level) with n, events and the metrics.

    `groups` holds labels aligned by position with y/p (a Series, or a DataFrame of several subgroup
    variables). Levels with fewer than `min_n` decisions get NaN metrics; missing labels form their own level.
    """
    cfg = config or EvaluationConfig()
    limit = cfg.subgroup_min_n if min_n is None else min_n
    yy, pp = _binary(y), _probability(p)
    n = _same_length(y=yy, p=pp)
    frame = groups.to_frame() if isinstance(groups, pd.Series) else groups
    if len(frame) != n:
        raise EvaluationInputError(
            f"groups: rule 'one label per decision' broken ({len(frame)} labels, {n} decisions)"
        )
    out = []
    for variable in frame.columns:
        labels = frame[variable].astype("object").where(frame[variable].notna(), "(missing)").to_numpy()
        levels, codes = np.unique(labels.astype(str), return_inverse=True)
        for j, level in enumerate(levels):
            m = codes == j
            metrics = factual_metrics(yy[m], pp[m], cfg)
            if m.sum() < limit:
                metrics = {
                    k: (v if k in ("n", "events", "observed_rate") else math.nan) for k, v in metrics.items()
                }
            out.append(
                {"subgroup": str(variable), "level": level, **metrics, "enough_data": bool(m.sum() >= limit)}
            )
    table = pd.DataFrame(out)
    table["n"] = table["n"].astype(int)
    table["events"] = table["events"].astype(int)
    return table


# --------------------------------------------------------------------------------------------------------
# 5. Data behind the plots (long DataFrames with explicit x/y columns, ready for `dvc plots`)


def _labels_for(option: ArrayLike, n: int) -> np.ndarray:
    """Option label per row, or 'all' when no option is given."""
    if option is None:
        return np.full(n, "all", dtype=object)
    labels = pd.Series(option).astype("object").to_numpy()
    if labels.size != n:
        raise EvaluationInputError(
            f"option: rule 'one label per decision' broken ({labels.size} labels, {n} decisions)"
        )
    _fail("option", pd.isna(labels), labels.astype(str), "an option label is required")
    return labels


def calibration_curve_data(
    y: ArrayLike,
    p: ArrayLike,
    option: ArrayLike | None = None,
    *,
    n_bins: int = 10,
    strategy: BinStrategy = "uniform",
) -> pd.DataFrame:
    """Calibration curve per option: mean predicted probability (x) vs observed response rate (y) per bin."""
    yy, pp = _binary(y), _probability(p)
    n = _same_length(y=yy, p=pp)
    labels = _labels_for(option, n)
    parts = []
    for level in pd.unique(labels):
        m = labels == level
        b = _binned(yy[m], pp[m], n_bins, strategy)
        b.insert(0, "option", level)
        parts.append(b)
    columns = ["option", "bin", "n", "mean_predicted", "observed_rate"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def roc_curve_data(y: ArrayLike, p: ArrayLike, option: ArrayLike | None = None) -> pd.DataFrame:
    """ROC curve per option: false-positive rate (x) vs sensitivity (y); single-class options warn and are skipped."""
    yy, pp = _binary(y), _probability(p)
    n = _same_length(y=yy, p=pp)
    labels = _labels_for(option, n)
    parts = []
    for level in pd.unique(labels):
        m = labels == level
        if yy[m].min() == yy[m].max():
            warnings.warn(f"ROC curve for option {level!r} skipped: only one outcome class", stacklevel=2)
            continue
        fpr, tpr, thr = roc_curve(yy[m], pp[m])
        parts.append(
            pd.DataFrame(
                {
                    "option": level,
                    "false_positive_rate": fpr,
                    "true_positive_rate": tpr,
                    "threshold": np.minimum(thr, 1.0),
                }
            )
        )
    columns = ["option", "false_positive_rate", "true_positive_rate", "threshold"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def effect_scatter_data(
    predicted_p: ArrayLike,
    true_p: ArrayLike,
    eligible: ArrayLike,
    options: Sequence[str],
    *,
    control: int = 0,
) -> pd.DataFrame:
    """Predicted vs true effect (option − control, in response probability) per eligible decision and option."""
    pp, pt, use = _effect_inputs(predicted_p, true_p, eligible, options, control)
    use[:, control] = False
    r, c = np.nonzero(use.T)  # option-major order: all decisions of one option together
    return pd.DataFrame(
        {
            "option": np.asarray(options, dtype=object)[r],
            "decision": c,
            "true_effect": _effects(pt, control)[c, r],
            "predicted_effect": _effects(pp, control)[c, r],
        }
    )


def qini_curve_data(
    y: ArrayLike,
    treatment: ArrayLike,
    mu: ArrayLike,
    options: Sequence[str],
    *,
    control: int = 0,
    eligible: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
) -> pd.DataFrame:
    """Qini curve of each option vs control, ranking decisions by predicted benefit μ(option) − μ(control).

    Uses decisions that took the option or the control (and where the option is eligible). At each cut-off
    (ties kept together) the Qini is Y_T − Y_C·N_T/N_C — additional responders among the top-ranked — and
    `random` is the straight line a random ranking gives. Pass inverse-propensity `sample_weight`s for
    observational data; the unweighted curve is unbiased only for randomised choices.
    """
    yy = _vector(y, "y (observed outcome)")
    n = yy.size
    mu_m = _matrix(mu, "mu (predicted outcome per option)", n)
    if len(options) != mu_m.shape[1]:
        raise EvaluationInputError(f"options: {len(options)} names for {mu_m.shape[1]} option columns")
    a = _arm_index(treatment, "treatment (option taken per decision)", n, mu_m.shape[1])
    elig = (
        np.ones_like(mu_m, dtype=bool)
        if eligible is None
        else _matrix(eligible, "eligible (per option)", n).astype(bool)
    )
    w = np.ones(n) if sample_weight is None else _vector(sample_weight, "sample_weight")
    _same_length(y=yy, sample_weight=w)
    _fail("sample_weight", w < 0, w, "non-negative weight")
    parts = []
    for k, option in enumerate(options):
        if k == control:
            continue
        m = elig[:, k] & ((a == k) | (a == control))
        score = mu_m[m, k] - mu_m[m, control]
        _fail(
            f"mu [{option} vs control]", ~np.isfinite(score), score, "finite predicted benefit where compared"
        )
        order = np.argsort(-score, kind="stable")
        s, t, yk, wk = score[order], (a[m] == k)[order].astype(float), yy[m][order], w[m][order]
        n_t, n_c = np.cumsum(wk * t), np.cumsum(wk * (1 - t))
        y_t, y_c = np.cumsum(wk * t * yk), np.cumsum(wk * (1 - t) * yk)
        ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1] if s.size else np.zeros(0, dtype=np.intp)
        with np.errstate(invalid="ignore", divide="ignore"):
            q = y_t[ends] - np.where(n_c[ends] > 0, y_c[ends] * n_t[ends] / n_c[ends], 0.0)
        total = np.cumsum(wk)
        frac = total[ends] / total[-1] if s.size else np.zeros(0)
        q_all = q[-1] if q.size else 0.0
        parts.append(
            pd.DataFrame(
                {
                    "option": option,
                    "fraction_targeted": np.r_[0.0, frac],
                    "qini": np.r_[0.0, q],
                    "random": np.r_[0.0, frac * q_all],
                    "n_compared": int(m.sum()),
                }
            )
        )
    columns = ["option", "fraction_targeted", "qini", "random", "n_compared"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def qini_coefficients(curves: pd.DataFrame) -> pd.DataFrame:
    """Per option: area under the Qini curve minus the random line's, divided by n (additional responders per decision)."""
    rows = []
    for option, g in curves.groupby("option", sort=False):
        x = g["fraction_targeted"].to_numpy()
        gain = np.trapezoid(g["qini"].to_numpy() - g["random"].to_numpy(), x)
        n = int(g["n_compared"].iloc[0])
        rows.append({"option": option, "qini_coefficient": gain / n if n else math.nan, "n_compared": n})
    return pd.DataFrame(rows, columns=["option", "qini_coefficient", "n_compared"])
