"""Uncertainty of per-option predictions: a patient-level bootstrap ensemble with percentile intervals.

Each member refits the learner on patients drawn with replacement (a patient drawn m times gets weight m on
all their rows, which equals duplicating them and costs nothing extra), so intervals reflect sampling of
patients, not of correlated decision rows. `interval_coverage` measures how often intervals hold the truth.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Self

import numpy as np
import pandas as pd
import xgboost as xgb

from models.config import IntervalConfig
from models.learners import (
    OPTION_PREFIX,
    BaseLearner,
    DRLearner,
    FitData,
    LinearLearner,
    ScoreGLM,
    SLearner,
    TLearner,
    modifier_names,
    modifier_terms,
    prepare_fit,
)
from models.propensity import ArrayLike, as_feature_frame

Kind = Literal["outcomes", "effects"]
#: inputs at least this long are predicted with a thread per bootstrap member (below it, threads cost more).
PARALLEL_MIN_ROWS = 20_000


class SharedFeatures:
    """One predict call's feature block, converted once to float32 (what xgboost uses internally) with the
    DMatrices built from it cached, so the full-data learners, every bootstrap member and every head share
    one conversion instead of each re-reading the pandas frame."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.columns: list[str] = [str(c) for c in frame.columns]
        self.values = np.ascontiguousarray(frame.to_numpy(dtype="float32", na_value=np.nan))
        #: no infinite value: linear learners may then skip their own per-call check and copy of the frame
        self.finite = not bool(np.isinf(self.values).any())
        self._cache: dict[object, xgb.DMatrix] = {}

    def __len__(self) -> int:
        return len(self.values)

    @functools.cached_property
    def values64(self) -> np.ndarray:
        """The features in float64, as the learners' own frame check reads them (option x modifier terms)."""
        return self.frame.to_numpy(dtype="float64", na_value=np.nan)

    def _dmatrix(self, values: np.ndarray) -> xgb.DMatrix:
        # one thread for small inputs (one patient): thread start-up would cost more than the conversion
        nthread = 1 if len(values) < 5000 else -1
        return xgb.DMatrix(values, missing=np.nan, nthread=nthread)

    def plain(self) -> xgb.DMatrix:
        """The features as they are (T-learner arm models, DR control and effect models)."""
        if "plain" not in self._cache:
            self._cache["plain"] = self._dmatrix(self.values)
        return self._cache["plain"]

    def stacked(self, n_arms: int, modifiers: Mapping[int, list[int]] | None = None) -> xgb.DMatrix:
        """Every row once per arm (arm-major): the features, the S-learner's option x modifier terms (`modifiers`,
        its `modifier_index_`, computed in float64 as its own design does) and its one-hot option columns — one
        matrix for every member that shares the design (a score GLM's trees in each bootstrap refit)."""
        key = (n_arms, tuple((k, tuple(cols)) for k, cols in (modifiers or {}).items()))
        if key not in self._cache:
            n = len(self.values)
            codes = np.repeat(np.arange(n_arms), n)
            parts = [np.tile(self.values, (n_arms, 1))]
            if modifiers:
                terms = modifier_terms(np.tile(self.values64, (n_arms, 1)), codes, modifiers)
                parts.append(terms.astype("float32"))
            parts.append((codes[:, None] == np.arange(n_arms)[None, :]).astype("float32"))
            self._cache[key] = self._dmatrix(np.hstack(parts))
        return self._cache[key]


def _booster_predict(model: xgb.XGBModel, dm: xgb.DMatrix) -> np.ndarray:
    """Probability (binary:logistic) or value of a fitted sklearn-API xgboost model on a prepared DMatrix."""
    return np.asarray(model.get_booster().predict(dm, validate_features=False), dtype="float64")


def shared_outcomes(learner: BaseLearner, shared: SharedFeatures) -> np.ndarray:
    """`learner.predict_outcomes(shared.frame)` computed on the shared matrices: S, T and DR learners predict
    straight from the prepared DMatrix (same numbers, no per-learner frame conversion), linear learners from the
    shared, already checked frame (a score GLM's trees from the shared design); other learners, or a learner
    fitted on other columns, take their own path."""
    if not hasattr(learner, "arms_"):
        raise RuntimeError(f"{type(learner).__name__} is not fitted: call fit(X, treatment, y) first")
    if list(learner.columns_) != shared.columns:
        return learner.predict_outcomes(shared.frame)
    arms = learner.arms_
    n, k = len(shared), len(arms)
    modifiers = getattr(learner, "modifier_index_", {}) if isinstance(learner, SLearner) else {}
    design = list(learner.model_.get_booster().feature_names or []) if isinstance(learner, SLearner) else []
    if design and design == [*shared.columns, *modifier_names(shared.columns, arms, modifiers),
                             *(f"{OPTION_PREFIX}{a}" for a in arms)]:
        # features, option x modifier terms, one-hot options: one stacked DMatrix serves every arm and member
        out = _booster_predict(learner.model_, shared.stacked(k, modifiers)).reshape(k, n).T
    elif isinstance(learner, TLearner):
        dm = shared.plain()
        out = np.column_stack([_booster_predict(learner.models_[a], dm) for a in arms]) if n else np.empty((0, k))
    elif isinstance(learner, DRLearner):
        dm = shared.plain()
        base = _booster_predict(learner.models_[learner.control], dm)
        out = np.repeat(base[:, None], k, axis=1)
        for j, arm in enumerate(arms):
            if arm != learner.control:
                out[:, j] += _booster_predict(learner.effect_models_[arm], dm)
    elif isinstance(learner, ScoreGLM) and shared.finite:
        out = learner._predict_outcomes(shared.frame, shared.values64,
                                        trees_outcomes=lambda trees: shared_outcomes(trees, shared))
    elif isinstance(learner, LinearLearner) and shared.finite:
        out = learner._predict_outcomes(shared.frame, shared.values64)
    else:
        return learner.predict_outcomes(shared.frame)
    return np.clip(out, 0.0, 1.0) if learner.outcome == "binary" else out


def bootstrap_patient_weights(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-row multiplicity of the row's patient in one bootstrap draw of patients (0 = not drawn)."""
    n_groups = int(groups.max()) + 1
    counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
    return counts[groups].astype("float64")


def _with_weights(data: FitData, weight: np.ndarray) -> FitData:
    """Rows with positive weight, carrying the new weights."""
    rows = np.flatnonzero(weight > 0)
    sub = data.rows(rows)
    return dataclasses.replace(sub, weight=weight[rows])


class BootstrapEnsemble(BaseLearner):
    """A point learner fitted on all rows plus `n_boot` members fitted on patient bootstrap samples.

    `predict_outcomes` / `predict_effects` come from the full-data fit; `predict_interval` gives per-row,
    per-arm percentile intervals of the members' predictions at `config.level`. A draw whose resample leaves
    an option without usable rows is redrawn and counted in `redrawn_` (with a warning).
    """

    def __init__(self, base: BaseLearner, config: IntervalConfig | None = None) -> None:
        super().__init__(base.config)
        self.base = base
        self.intervals = config or IntervalConfig()

    def clone(self, **config_updates: object) -> Self:
        """An unfitted ensemble around an unfitted clone of the base learner."""
        return type(self)(self.base.clone(**config_updates), self.intervals)

    def _member(self, data: FitData, b: int) -> BaseLearner:
        cfg = self.intervals
        booster = cfg.boot_booster or self.base.config.booster
        booster = booster.model_copy(update={"seed": cfg.seed + 7919 * (b + 1)})
        return self.base.clone(arms=data.arms, outcome=data.outcome, booster=booster)

    def _fit_draw(self, data: FitData, weight: np.ndarray, b: int) -> BaseLearner | str:
        """One member on one resample, or the reason it could not be fitted (e.g. an option lost its rows)."""
        try:
            return self._member(data, b).fit_prepared(_with_weights(data, weight))
        except ValueError as exc:
            return str(exc)

    def _fit(self, data: FitData) -> None:
        cfg = self.intervals
        self.point_ = self.base.clone(arms=data.arms, outcome=data.outcome).fit_prepared(data)
        rng = np.random.default_rng(cfg.seed)
        self.members_: list[BaseLearner] = []
        self.redrawn_ = 0
        drawn = 0
        # Resamples are drawn in order from one Generator, then fitted in a thread pool (XGBoost releases the
        # GIL), so the ensemble is the same for a seed whatever `n_jobs` is.
        with ThreadPoolExecutor(max_workers=cfg.n_jobs) as pool:
            while len(self.members_) < cfg.n_boot:
                need = cfg.n_boot - len(self.members_)
                if drawn + need > 3 * cfg.n_boot:
                    raise ValueError(
                        f"bootstrap: {self.redrawn_} of {drawn} patient resamples could not be fitted "
                        f"(last reason: {self.last_redraw_reason_}); intervals are not estimable"
                    )
                weights = [data.weight * bootstrap_patient_weights(data.groups, rng) for _ in range(need)]
                results = list(pool.map(self._fit_draw, [data] * need, weights, range(drawn, drawn + need)))
                drawn += need
                for result in results:
                    if isinstance(result, str):
                        self.redrawn_ += 1
                        self.last_redraw_reason_ = result
                    else:
                        self.members_.append(result)
        if self.redrawn_:
            warnings.warn(
                f"bootstrap: {self.redrawn_} resample(s) redrawn; last reason: {self.last_redraw_reason_}",
                UserWarning,
                stacklevel=3,
            )

    def _predict_outcomes(self, frame: pd.DataFrame) -> np.ndarray:
        return self.point_.predict_outcomes(frame)

    def predict_draws(self, X: pd.DataFrame | np.ndarray | SharedFeatures, kind: Kind = "outcomes") -> np.ndarray:
        """(n_boot, n, n_arms) member predictions of outcomes or effects (contrast with control).

        The input is converted once and shared by every member (pass a `SharedFeatures` to share it with other
        models too); members run in a thread pool only for large inputs with `n_jobs` > 1."""
        if kind not in ("outcomes", "effects"):
            raise ValueError(f"kind must be 'outcomes' or 'effects', got {kind!r}")
        if not isinstance(X, SharedFeatures):
            X = SharedFeatures(self._frame(X))
        elif X.columns != list(self.columns_):
            X = SharedFeatures(as_feature_frame(X.frame, columns=self.columns_))
        shared = X

        def one(member: BaseLearner) -> np.ndarray:
            out = shared_outcomes(member, shared)
            return out - out[:, [member.control_index_]] if kind == "effects" else out

        if self.intervals.n_jobs > 1 and len(shared) >= PARALLEL_MIN_ROWS and len(self.members_) > 1:
            first = one(self.members_[0])  # builds the shared DMatrix before the threads read it
            with ThreadPoolExecutor(max_workers=self.intervals.n_jobs) as pool:
                return np.stack([first, *pool.map(one, self.members_[1:])])
        return np.stack([one(m) for m in self.members_])

    def predict_interval(
        self, X: pd.DataFrame | np.ndarray, kind: Kind = "outcomes", level: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each (n, n_arms): percentile interval of the members' predictions at `level`."""
        level = self.intervals.level if level is None else level
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        draws = self.predict_draws(X, kind)
        alpha = (1 - level) / 2
        # Weibull plotting positions (p x (B + 1)): with few members the usual interpolated percentiles sit
        # inside the draws' range and under-cover (about (B - 1) x level / (B + 1)); these do not.
        lower, upper = np.quantile(draws, [alpha, 1 - alpha], axis=0, method="weibull")
        return lower, upper


def bootstrap_intervals(
    base: BaseLearner,
    X: pd.DataFrame | np.ndarray,
    treatment: ArrayLike,
    y: ArrayLike,
    *,
    config: IntervalConfig | None = None,
    groups: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    eligible: pd.DataFrame | np.ndarray | None = None,
) -> BootstrapEnsemble:
    """Convenience: wrap `base` in a bootstrap ensemble and fit it in one call."""
    data = prepare_fit(
        X, treatment, y, base.config, groups=groups, sample_weight=sample_weight, eligible=eligible
    )
    return BootstrapEnsemble(base, config).fit_prepared(data)


def interval_coverage(
    lower: np.ndarray, upper: np.ndarray, truth: np.ndarray, *, per_arm: bool = False
) -> float | np.ndarray:
    """Share of entries whose true value lies in [lower, upper]; entries with a NaN (e.g. an ineligible option
    masked out) are not counted. `per_arm=True` gives one share per column."""
    lo, hi, t = (np.asarray(a, dtype="float64") for a in (lower, upper, truth))
    if not lo.shape == hi.shape == t.shape:
        raise ValueError(
            f"interval_coverage: shapes differ: lower {lo.shape}, upper {hi.shape}, truth {t.shape}"
        )
    known = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(t)
    if (known & (lo > hi)).any():
        r = np.argwhere(known & (lo > hi))[0]
        raise ValueError(f"interval_coverage: entry {tuple(int(i) for i in r)} has lower > upper")
    inside = known & (lo <= t) & (t <= hi)
    if per_arm:
        if lo.ndim != 2:
            raise ValueError("interval_coverage: per_arm needs 2-d (rows x arms) arrays")
        with np.errstate(invalid="ignore", divide="ignore"):
            return inside.sum(axis=0) / known.sum(axis=0)
    if not known.any():
        raise ValueError("interval_coverage: no entry has a finite interval and truth")
    return float(inside.sum() / known.sum())


class CalibrationBands:
    """Per-option half-widths of the out-of-fold calibration term, a step function of the predicted risk.

    Fitted on patient-grouped out-of-fold predictions of the option actually taken (never on any truth): in
    bins of similar predicted risk, the half-width is |observed rate - mean prediction| + z x its standard
    error (patients as the unit). It is what the outcomes of similar patients who took the option cannot rule
    out about the prediction's error, a term the percentile bootstrap (variance only) misses.
    """

    def __init__(self, arms: tuple[str, ...], edges: list[np.ndarray], half: list[np.ndarray]) -> None:
        self.arms = arms
        self.edges = edges
        self.half = half

    def half_width(self, p: np.ndarray) -> np.ndarray:
        """(n, arms) half-width at each predicted probability (its option's bin)."""
        p = np.asarray(p, dtype="float64")
        out = np.empty_like(p)
        for j in range(len(self.arms)):
            b = np.searchsorted(self.edges[j], p[:, j], side="right")
            out[:, j] = self.half[j][np.clip(b, 0, len(self.half[j]) - 1)]
        return out

    def summary(self) -> dict[str, float]:
        """Mean half-width per option (for the model card and the run's metrics)."""
        return {a: float(np.mean(h)) for a, h in zip(self.arms, self.half, strict=True)}


def fit_calibration_bands(
    p_oof: np.ndarray,
    codes: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    arms: tuple[str, ...],
    *,
    level: float,
    min_bin_patients: int = 40,
    max_bins: int = 10,
) -> CalibrationBands:
    """`CalibrationBands` from (n, arms) out-of-fold (calibrated) probabilities, the option taken (codes), the
    binary outcome and patient ids: per option, equal-count bins of its factual rows with at least
    `min_bin_patients` patients each (one bin when the option has fewer)."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p_oof, codes, y = np.asarray(p_oof, dtype="float64"), np.asarray(codes), np.asarray(y, dtype="float64")
    _, patient = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    edges: list[np.ndarray] = []
    half: list[np.ndarray] = []
    for j, arm in enumerate(arms):
        rows = np.flatnonzero((codes == j) & np.isfinite(p_oof[:, j]) & np.isfinite(y))
        if not len(rows):
            raise ValueError(f"interval calibration: option {arm!r} has no out-of-fold rows (rule: every "
                             "modelled option was taken at some training decisions)")
        n_pat = len(np.unique(patient[rows]))
        n_bins = int(max(1, min(max_bins, n_pat // max(min_bin_patients, 1))))
        p = p_oof[rows, j]
        cuts = np.quantile(p, np.linspace(0, 1, n_bins + 1)[1:-1]) if n_bins > 1 else np.empty(0)
        cuts = np.unique(cuts)
        b = np.searchsorted(cuts, p, side="right")
        nb = len(cuts) + 1
        count = np.bincount(b, minlength=nb).astype("float64")
        observed = np.bincount(b, weights=y[rows], minlength=nb) / np.maximum(count, 1)
        predicted = np.bincount(b, weights=p, minlength=nb) / np.maximum(count, 1)
        # patients, not rows, are the independent unit: a patient's decisions share their unmeasured traits
        pairs = np.unique(np.column_stack([b, patient[rows]]), axis=0)
        n_eff = np.maximum(np.bincount(pairs[:, 0], minlength=nb).astype("float64"), 1.0)
        rate = np.clip(observed, 1.0 / (n_eff + 2), 1 - 1.0 / (n_eff + 2))  # no zero SE from a 0 % or 100 % bin
        se = np.sqrt(rate * (1 - rate) / n_eff)
        edges.append(cuts)
        half.append(np.abs(observed - predicted) + z * se)
    return CalibrationBands(tuple(arms), edges, half)


class PatientSpread:
    """How far the true chance of one patient spreads around the prediction for patients alike in the record, as
    far as the same patient's other decisions reveal it: a trait the record does not show (refractoriness, say)
    moves the outcomes of all of a patient's decisions together, so their out-of-fold residuals covary. `sigma_logit`
    is that trait's spread on the logit scale; `source` says which residuals showed it (`fit_patient_spread`: the
    binary outcome's; `fit_patient_spread_from_scores`: the continuous score it thresholds). Zero where a patient's
    residuals do not covary, so a record that shows everything adds nothing. `sigma_range` is the 90 % range that
    the estimate's own sampling error allows (patients as the unit); one that reaches 0 says the pairs cannot tell
    the spread from none.
    """

    def __init__(self, sigma_logit: float, n_pairs: int, source: str = "binary outcome",
                 sigma_range: tuple[float, float] | None = None) -> None:
        self.sigma_logit = sigma_logit
        self.n_pairs = n_pairs
        self.source = source
        self.sigma_range = sigma_range or (sigma_logit, sigma_logit)

    def half_width(self, p: np.ndarray, z: float) -> np.ndarray:
        """Half-width of the spread at each predicted probability (z standard deviations, p-scale)."""
        p = np.asarray(p, dtype="float64")
        return z * self.sigma_logit * p * (1.0 - p)

    def summary(self) -> dict[str, float | int | str]:
        """sigma on the logit scale and its 90 % range, the within-patient decision pairs it was estimated from,
        and from what."""
        low, high = getattr(self, "sigma_range", (self.sigma_logit, self.sigma_logit))  # older pickles lack it
        return {"sigma_logit": round(self.sigma_logit, 4), "sigma_logit_low": round(low, 4),
                "sigma_logit_high": round(high, 4), "decision_pairs": self.n_pairs, "source": self.source}


#: two-sided 90 % normal quantile, for the spread's range.
_RANGE_Z = 1.6449


def _patient_codes(groups: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer patient codes of the kept rows and their number of same-patient pairs."""
    _, patient = np.unique(np.asarray(groups).astype(str)[keep], return_inverse=True)
    n = np.bincount(patient)
    return patient, int(np.sum(n * (n - 1)) // 2)


def _within_patient_ratio(r: np.ndarray, w: np.ndarray, patient: np.ndarray) -> tuple[float, float]:
    """sum of r_i r_j / sum of w_i w_j over same-patient pairs i < j (patient: integer codes), and its standard
    error with patients as the independent unit (the linearised ratio's cluster variance)."""
    def pair_sums(v: np.ndarray) -> np.ndarray:
        total, squares = np.bincount(patient, weights=v), np.bincount(patient, weights=v * v)
        return (total**2 - squares) / 2

    shared, weight = pair_sums(r), pair_sums(w)
    ratio = float(shared.sum() / max(weight.sum(), 1e-12))
    has = weight > 0
    k = int(has.sum())
    if k < 2:
        return ratio, 0.0
    linear = shared[has] - ratio * weight[has]
    return ratio, float(np.sqrt(k / (k - 1) * np.sum(linear**2)) / weight.sum())


def fit_patient_spread(p_taken: np.ndarray, y: np.ndarray, groups: np.ndarray, *, min_pairs: int = 100
                       ) -> PatientSpread:
    """`PatientSpread` from the out-of-fold probability of the option each decision took, its binary outcome and
    the patient ids (never any truth). Residuals r = y - p of two decisions of a patient covary by about
    w1 w2 sigma² (w = p(1 - p), the delta method), so sigma² = sum over same-patient pairs of r_i r_j / sum of
    w_i w_j: the moment estimator of a random intercept's variance (as for an exchangeable working correlation,
    Liang & Zeger 1986), cut at zero. First order, it understates a wide spread (about 1.1 for a true 1.5); fewer
    than `min_pairs` pairs give sigma 0."""
    p, y = np.asarray(p_taken, dtype="float64"), np.asarray(y, dtype="float64")
    keep = np.isfinite(p) & np.isfinite(y)
    patient, n_pairs = _patient_codes(groups, keep)
    if n_pairs < min_pairs:
        return PatientSpread(0.0, n_pairs)
    variance, se = _within_patient_ratio(y[keep] - p[keep], p[keep] * (1.0 - p[keep]), patient)

    def sigma(v: float) -> float:
        return float(np.sqrt(max(v, 0.0)))

    return PatientSpread(sigma(variance), n_pairs,
                         sigma_range=(sigma(variance - _RANGE_Z * se), sigma(variance + _RANGE_Z * se)))


#: logistic standard deviations per probit unit (the logistic that best matches the normal CDF).
LOGIT_PER_PROBIT = 1.702


def fit_patient_spread_from_scores(residual: np.ndarray, groups: np.ndarray, *, min_pairs: int = 100,
                                   source: str = "score") -> PatientSpread:
    """`PatientSpread` of a binary outcome defined by a continuous score crossing a threshold (response: the Total
    Improvement Score), from the score's out-of-fold residuals. A patient-level shift u of the score (variance
    sigma_u², the residuals' within-patient covariance) on top of decision-level noise (variance s², the rest of
    the residual variance) moves the chance of crossing the threshold by u / s on the probit scale (a
    liability-threshold model), so sigma_logit = 1.702 sigma_u / s. A score shows the shared part more precisely
    than 0/1 outcomes do (about half the scatter at a 3,000-patient cohort's pairs); fewer than `min_pairs` pairs
    give sigma 0."""
    r = np.asarray(residual, dtype="float64")
    keep = np.isfinite(r)
    patient, n_pairs = _patient_codes(groups, keep)
    if n_pairs < min_pairs:
        return PatientSpread(0.0, n_pairs, source)
    r = r[keep]
    covariance, se = _within_patient_ratio(r, np.ones_like(r), patient)
    total = float(np.mean(r * r))

    def sigma(v: float) -> float:
        shared = max(v, 0.0)
        return LOGIT_PER_PROBIT * float(np.sqrt(shared / max(total - shared, 1e-12)))

    return PatientSpread(sigma(covariance), n_pairs, source,
                         (sigma(covariance - _RANGE_Z * se), sigma(covariance + _RANGE_Z * se)))


def widen_interval(
    point: np.ndarray, low: np.ndarray, high: np.ndarray, extra: np.ndarray, *, upper_bound: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Add an independent error term of half-width `extra` to the interval [low, high] around `point` on each
    side in quadrature (variance of the estimate + calibration error), kept within [0, upper_bound]."""
    below = np.sqrt(np.maximum(point - low, 0.0) ** 2 + extra**2)
    above = np.sqrt(np.maximum(high - point, 0.0) ** 2 + extra**2)
    return np.clip(point - below, 0.0, upper_bound), np.clip(point + above, 0.0, upper_bound)
