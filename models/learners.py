"""Outcome learners: predict each patient's outcome under every escalation option, and the contrast with control.

All learners share one interface (`OutcomeLearner`), usable outside the pipeline like EconML/CausalML
meta-learners: `fit(X, treatment, y, *, groups, sample_weight, eligible)`, `predict_outcomes(X)` (n, n_arms)
— P(response) for a binary outcome, the expected value for a continuous one — and `predict_effects(X)`,
the same minus the control-arm column. `arms_` gives the column order.

How each arm's prediction is formed from the fitted XGBoost models (for exact TreeSHAP downstream; the
"margin" is `model.predict(frame, output_margin=True)`, the logit for a binary outcome, the value otherwise):
- `SLearner`: one model `model_`; arm k's margin = margin of `model_` on `design(X, k)` (X plus one-hot
  `option__<arm>` columns with k set). TreeSHAP on `design(X, k)` is additive on that margin.
- `TLearner`: `models_[k]` fitted on rows that took k; arm k's margin = margin of `models_[k]` on X.
- `DRLearner`: `models_[control]` is the control-arm outcome model (margin as in the T-learner) and
  `effect_models_[k]` are regressors of the AIPW contrast k - control on the outcome scale (probability for
  a binary outcome). Outcome k = inverse_link(control margin) + effect_models_[k](X), clipped to [0, 1] for a
  binary outcome. Explain an option's *effect* with TreeSHAP on `effect_models_[k]` (additive on that scale).
- `LinearLearner`: no trees; a logistic/ridge model on scaled features with option x feature interactions.
- `ModifierGLM`: the same model with only the published option x effect-modifier terms (`config.effect_modifiers`,
  from configs/options.yaml): few parameters per option, so options taken a few hundred times keep stable effects.
- `XLearner`: Künzel et al.'s X-learner per option vs control (imputed effects from per-option outcome models,
  blended by the propensity); outcome k = control outcome + effect k.
- `StackedLearner`: the modifier GLM and the S-learner averaged on the logit scale (`config.stack_weight`): the
  published modifiers plus whatever the trees find.
- `ScoreGLM` (binary outcomes that threshold a score: the response, a total improvement score at or above its
  threshold): the modifier GLM averaged on the logit scale with a ridge regression of the score on the same design
  (`config.score_weight`); one linear model on that design, explained by exact linear SHAP like the GLM.
- `GaussianProcessTLearner` (continuous outcomes only): one Gaussian-process regression per option on the
  scaled features (`arm_models_`); smooth surfaces that trees approximate in steps (IHDP's exponential control
  surface). No TreeSHAP or linear SHAP: not explainable, so never a candidate for the binary response head.

Every learner that builds an option design (S, modifier GLM) adds the option x modifier terms of
`config.effect_modifiers`; `train` picks among learners by cross-fitting (`models.selection`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal, Protocol, Self, runtime_checkable

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from models.config import LearnerConfig
from models.propensity import (
    ArrayLike,
    PropensityModel,
    as_eligible_matrix,
    as_feature_frame,
    check_factual_eligible,
    clip_propensity,
    encode_treatment,
)

Outcome = Literal["binary", "continuous"]
OPTION_PREFIX = "option__"


@runtime_checkable
class OutcomeLearner(Protocol):
    """What the pipeline, calibration, intervals and explanations rely on."""

    arms_: tuple[str, ...]
    outcome: Outcome
    control: str

    def fit(
        self,
        X: pd.DataFrame | np.ndarray,
        treatment: ArrayLike,
        y: ArrayLike,
        *,
        groups: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
        eligible: pd.DataFrame | np.ndarray | None = None,
        score: ArrayLike | None = None,
    ) -> Self: ...

    def fit_prepared(self, data: FitData) -> Self: ...

    def predict_outcomes(self, X: pd.DataFrame | np.ndarray) -> np.ndarray: ...

    def predict_effects(self, X: pd.DataFrame | np.ndarray) -> np.ndarray: ...

    def clone(self, **config_updates: object) -> Self: ...


@dataclass(frozen=True)
class FitData:
    """Checked, aligned training inputs: features, option codes, outcome, patient groups, weights, eligibility,
    and optionally the score a binary outcome thresholds (its margin over the threshold: y = 1 where score ≥ 0)."""

    X: pd.DataFrame
    codes: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    weight: np.ndarray
    eligible: np.ndarray
    arms: tuple[str, ...]
    outcome: Outcome
    score: np.ndarray | None = None

    def rows(self, idx: np.ndarray) -> FitData:
        """The subset of rows `idx` (positions), with a fresh 0..m-1 index."""
        return FitData(
            X=self.X.iloc[idx].reset_index(drop=True),
            codes=self.codes[idx],
            y=self.y[idx],
            groups=self.groups[idx],
            weight=self.weight[idx],
            eligible=self.eligible[idx],
            arms=self.arms,
            outcome=self.outcome,
            score=None if self.score is None else self.score[idx],
        )


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [1e-6, 1 - 1e-6] (stacking and calibration work on this scale)."""
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def resolve_arms(treatment: ArrayLike, config: LearnerConfig) -> tuple[str, ...]:
    """Arm order: `config.arms` if set, else the control arm then the other observed options alphabetically."""
    if config.arms is not None:
        return tuple(config.arms)
    seen = sorted({str(t) for t in np.asarray(treatment, dtype=object).ravel()})
    if config.control not in seen:
        raise ValueError(
            f"table treatment: control option {config.control!r} never taken (rule: the control arm needs rows); "
            f"options seen {seen}"
        )
    return (config.control, *[a for a in seen if a != config.control])


def resolve_outcome(y: np.ndarray, config: LearnerConfig) -> Outcome:
    """Binary when `config.outcome` says so, or when 'auto' and y only holds 0 and 1."""
    is01 = np.isin(y, (0.0, 1.0))
    if config.outcome == "binary" and not is01.all():
        r = int(np.flatnonzero(~is01)[0])
        raise ValueError(f"table y: row {r} is {y[r]} (rule: a binary outcome is 0 or 1)")
    if config.outcome == "auto":
        return "binary" if is01.all() else "continuous"
    return config.outcome


def prepare_fit(
    X: pd.DataFrame | np.ndarray,
    treatment: ArrayLike,
    y: ArrayLike,
    config: LearnerConfig,
    *,
    groups: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    eligible: pd.DataFrame | np.ndarray | None = None,
    score: ArrayLike | None = None,
) -> FitData:
    """Check and align the training inputs; every error names the table, row, column and rule. `score`: the
    margin over its threshold of the score a binary `y` thresholds (`ScoreGLM` learns from it; others ignore it)."""
    frame = as_feature_frame(X)
    n = len(frame)
    t = np.asarray(treatment, dtype=object).ravel()
    if len(t) != n:
        raise ValueError(f"table treatment: {len(t)} rows but X has {n} (rule: one option per row of X)")
    try:
        yv = np.asarray(y, dtype="float64").ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"table y: not numeric ({exc}) (rule: 0/1 response or a numeric score)") from exc
    if len(yv) != n:
        raise ValueError(f"table y: {len(yv)} rows but X has {n} (rule: one outcome per row of X)")
    if not np.isfinite(yv).all():
        r = int(np.flatnonzero(~np.isfinite(yv))[0])
        raise ValueError(
            f"table y: row {r} is {yv[r]} (rule: outcomes must be finite; drop unlabelled rows first)"
        )
    arms = resolve_arms(t, config)
    codes = encode_treatment(t, arms)
    outcome = resolve_outcome(yv, config)
    if groups is None:
        g = np.arange(n)
    else:
        graw = np.asarray(groups, dtype=object).ravel()
        if len(graw) != n:
            raise ValueError(f"table groups: {len(graw)} rows but X has {n} (rule: one patient id per row)")
        g, _ = pd.factorize(pd.Series(graw, dtype=object), use_na_sentinel=True)
        if (g < 0).any():
            r = int(np.flatnonzero(g < 0)[0])
            raise ValueError(
                f"table groups: row {r}, column patient_id is missing (rule: every row has a patient)"
            )
    if sample_weight is None:
        w = np.ones(n)
    else:
        w = np.asarray(sample_weight, dtype="float64").ravel()
        if len(w) != n:
            raise ValueError(f"table sample_weight: {len(w)} rows but X has {n} (rule: one weight per row)")
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(f"table sample_weight: row {r} is {w[r]} (rule: finite and >= 0)")
    elig = as_eligible_matrix(eligible, arms, n)
    if eligible is not None:
        check_factual_eligible(codes, elig, arms)
    return FitData(frame, codes, yv, np.asarray(g), w, elig, arms, outcome, _checked_score(score, yv, outcome))


def _checked_score(score: ArrayLike | None, y: np.ndarray, outcome: Outcome) -> np.ndarray | None:
    """The score a binary outcome thresholds, checked against it: finite, and y = 1 exactly where score ≥ 0."""
    if score is None:
        return None
    s = np.asarray(score, dtype="float64").ravel()
    if len(s) != len(y):
        raise ValueError(f"table score: {len(s)} rows but X has {len(y)} (rule: one score per row of X)")
    if outcome != "binary":
        raise ValueError("table score: given for a continuous outcome (rule: a score is what a binary outcome "
                         "thresholds)")
    bad = ~np.isfinite(s) | ((s >= 0) != (y > 0.5))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"table score: row {r} is {s[r]} where y is {y[r]:g} (rule: finite, and y = 1 exactly "
                         "where the score's margin over its threshold is ≥ 0)")
    return s


def patient_folds(
    groups: ArrayLike, n_splits: int, *, seed: int, stratify: ArrayLike | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, test) row-position splits in which a patient's rows never straddle folds.

    With `stratify` (e.g. option x response) the folds keep its mix similar (`StratifiedGroupKFold`; it loops
    over patients in Python, so prefer it for small cohorts with rare options).
    """
    g, _ = pd.factorize(pd.Series(np.asarray(groups, dtype=object).ravel(), dtype=object))
    n_groups = int(g.max()) + 1 if len(g) else 0
    if n_groups < n_splits:
        raise ValueError(
            f"table groups: {n_groups} patients for {n_splits} folds (rule: at least one patient per fold)"
        )
    dummy = np.zeros((len(g), 1))
    if stratify is None:
        splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(dummy, groups=g)]
    s, _ = pd.factorize(pd.Series(np.asarray(stratify, dtype=object).ravel(), dtype=object))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in splitter.split(dummy, s, groups=g)]


def _booster(outcome: Outcome, config: LearnerConfig, seed_offset: int) -> xgb.XGBModel:
    """A fresh XGBoost classifier (binary) or squared-error regressor (continuous) from the config."""
    params = config.booster.xgb_params(seed_offset=seed_offset)
    if outcome == "binary":
        return xgb.XGBClassifier(objective="binary:logistic", **params)
    return xgb.XGBRegressor(objective="reg:squarederror", **params)


def _predict(model: xgb.XGBModel, frame: pd.DataFrame, outcome: Outcome) -> np.ndarray:
    """P(response) for a classifier, the expected value for a regressor."""
    if outcome == "binary":
        return np.asarray(model.predict_proba(frame)[:, 1], dtype="float64")
    return np.asarray(model.predict(frame), dtype="float64")


def _check_arm_rows(data: FitData, arm_index: int, *, min_rows: int = 2) -> np.ndarray:
    """Rows that took one arm; a per-arm model needs enough of them (and both outcomes when binary)."""
    rows = np.flatnonzero((data.codes == arm_index) & (data.weight > 0))
    arm = data.arms[arm_index]
    if len(rows) < min_rows:
        raise ValueError(
            f"table treatment: option {arm!r} has {len(rows)} row(s) (rule: at least {min_rows} to fit its model)"
        )
    if data.outcome == "binary":
        values = np.unique(data.y[rows])
        if len(values) < 2:
            raise ValueError(
                f"table y: every one of the {len(rows)} rows that took {arm!r} has outcome {values[0]:g} "
                "(rule: a per-option binary model needs responders and non-responders)"
            )
    return rows


def modifier_index(columns: list[str], arms: tuple[str, ...], modifiers: Mapping[str, tuple[str, ...]]
                   ) -> dict[int, list[int]]:
    """Arm position -> positions in `columns` of its effect modifiers (arms not modelled are skipped); a modifier
    that is not a feature column is an error naming it."""
    out: dict[int, list[int]] = {}
    for arm, features in modifiers.items():
        if arm not in arms or not features:
            continue
        missing = [f for f in features if f not in columns]
        if missing:
            raise ValueError(f"table X: effect modifier column(s) {missing} of option {arm!r} are not features "
                             "(rule: configs/options.yaml effect_modifiers name feature columns)")
        out[arms.index(arm)] = [columns.index(f) for f in features]
    return out


def modifier_terms(values: np.ndarray, codes: np.ndarray, index: Mapping[int, list[int]]) -> np.ndarray:
    """(n, terms) option x modifier columns: a modifier's value on rows taking its option, 0 on other rows
    (a missing value stays missing on its option's rows)."""
    blocks = [np.where((codes == k)[:, None], values[:, cols], 0.0) for k, cols in index.items()]
    return np.hstack(blocks) if blocks else np.empty((len(codes), 0))


def modifier_names(columns: list[str], arms: tuple[str, ...], index: Mapping[int, list[int]]) -> list[str]:
    """Column names of `modifier_terms`: `option__<arm>:<feature>`."""
    return [f"{OPTION_PREFIX}{arms[k]}:{columns[c]}" for k, cols in index.items() for c in cols]


def cross_fitted_aipw(data: FitData, config: LearnerConfig) -> tuple[np.ndarray, np.ndarray]:
    """(AIPW scores, propensities), both (n, n_arms), from patient-grouped cross-fitted per-option outcome
    models (a T-learner) and the propensity model: score[i, k] estimates row i's outcome under option k without
    bias when either model is right; NaN where option k is ineligible. For DR learning and policy values."""
    n, k = len(data.y), len(data.arms)
    cfg = config
    fixed = cfg.model_copy(update={"arms": data.arms, "outcome": data.outcome})
    mu = np.empty((n, k))
    prop = np.empty((n, k))
    # Shuffled GroupKFold: with hundreds of patients per fold the option mix is balanced by chance, and
    # sklearn's StratifiedGroupKFold loops over patients in Python (seconds for a few thousand).
    folds = patient_folds(data.groups, cfg.cv_folds, seed=cfg.booster.seed)
    for fold, (train, test) in enumerate(folds):
        tr = data.rows(train)
        fold_booster = cfg.booster.model_copy(update={"seed": cfg.booster.seed + 101 * (fold + 1)})
        nuisance = _NuisanceTLearner(fixed.model_copy(update={"booster": fold_booster}))
        nuisance.fit_prepared(tr)
        mu[test] = nuisance._predict_outcomes(data.X.iloc[test])
        pm = PropensityModel(data.arms, cfg.propensity).fit(
            tr.X, np.asarray(data.arms)[tr.codes], eligible=tr.eligible, sample_weight=tr.weight
        )
        prop[test] = pm.predict_proba(data.X.iloc[test], data.eligible[test])
    if data.outcome == "binary":
        mu = np.clip(mu, 0.0, 1.0)
    clipped = clip_propensity(prop, data.eligible, cfg.propensity.clip)
    taken = np.arange(n), data.codes
    scores = mu.copy()
    scores[taken] += (data.y - mu[taken]) / clipped[taken]
    scores[~data.eligible] = np.nan
    return scores, prop


class BaseLearner(ABC):
    """Shared plumbing: input checks, arm bookkeeping, effects as contrasts with the control arm, cloning."""

    #: the outcome kinds this learner models (model selection leaves a candidate out for the others)
    outcomes: tuple[str, ...] = ("binary", "continuous")

    def __init__(self, config: LearnerConfig | None = None) -> None:
        self.config = config or LearnerConfig()

    @property
    def control(self) -> str:
        """Name of the control option (effects are contrasts against it)."""
        return self.config.control

    def clone(self, **config_updates: object) -> Self:
        """An unfitted learner of the same kind; `config_updates` override config fields (e.g. fixed arms)."""
        return type(self)(self.config.model_copy(update=config_updates))

    def fit(
        self,
        X: pd.DataFrame | np.ndarray,
        treatment: ArrayLike,
        y: ArrayLike,
        *,
        groups: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
        eligible: pd.DataFrame | np.ndarray | None = None,
        score: ArrayLike | None = None,
    ) -> Self:
        """Fit on factual rows. `groups` are patient ids (used for cross-fitting); `eligible` (n, n_arms) is
        used by learners that model propensities and is otherwise only checked against the option taken;
        `score` is what a binary `y` thresholds, as its margin over the threshold (`prepare_fit`)."""
        data = prepare_fit(X, treatment, y, self.config, groups=groups, sample_weight=sample_weight,
                           eligible=eligible, score=score)
        return self.fit_prepared(data)

    def fit_prepared(self, data: FitData) -> Self:
        """Fit on already checked inputs (`prepare_fit`); wrappers use it to refit on row subsets."""
        self.arms_ = data.arms
        self.outcome: Outcome = data.outcome
        self.columns_ = list(data.X.columns)
        self.control_index_ = self.arms_.index(self.control)
        self._fit(data)
        return self

    @abstractmethod
    def _fit(self, data: FitData) -> None: ...

    @abstractmethod
    def _predict_outcomes(self, frame: pd.DataFrame) -> np.ndarray: ...

    def _frame(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        if not hasattr(self, "arms_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(X, treatment, y) first")
        return as_feature_frame(X, columns=self.columns_)

    def predict_outcomes(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """(n, n_arms) predicted outcome under each option, columns in `arms_` order."""
        out = self._predict_outcomes(self._frame(X))
        return np.clip(out, 0.0, 1.0) if self.outcome == "binary" else out

    def predict_effects(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """(n, n_arms) predicted outcome under each option minus that under the control option."""
        out = self.predict_outcomes(X)
        return out - out[:, [self.control_index_]]

    def predict_outcomes_frame(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """`predict_outcomes` as a DataFrame with one column per option (and X's index when X is a frame)."""
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame(self.predict_outcomes(X), columns=list(self.arms_), index=index)


class SLearner(BaseLearner):
    """One XGBoost model of the outcome on the features plus one-hot option columns (`option__<arm>`)."""

    def design(self, X: pd.DataFrame | np.ndarray, arm: str) -> pd.DataFrame:
        """The model input for every row of X as if option `arm` were chosen (for prediction and TreeSHAP)."""
        frame = self._frame(X)
        return self._design(frame, np.full(len(frame), self.arms_.index(arm)))

    def _design(self, frame: pd.DataFrame, codes: np.ndarray) -> pd.DataFrame:
        """Features, then the option x effect-modifier terms, then the one-hot option columns (kept last)."""
        onehot = (codes[:, None] == np.arange(len(self.arms_))[None, :]).astype("float64")
        names = [f"{OPTION_PREFIX}{a}" for a in self.arms_]
        index = getattr(self, "modifier_index_", {})
        parts = [frame]
        if index:
            terms = modifier_terms(frame.to_numpy(dtype="float64"), codes, index)
            parts.append(pd.DataFrame(terms, columns=modifier_names(self.columns_, self.arms_, index),
                                       index=frame.index))
        parts.append(pd.DataFrame(onehot, columns=names, index=frame.index))
        return pd.concat(parts, axis=1)

    def _fit(self, data: FitData) -> None:
        clash = [c for c in data.X.columns if c.startswith(OPTION_PREFIX)]
        if clash:
            raise ValueError(f"table X: column(s) {clash} use the reserved prefix {OPTION_PREFIX!r}")
        self.modifier_index_ = modifier_index(self.columns_, data.arms, self.config.effect_modifiers)
        counts = np.bincount(data.codes, minlength=len(data.arms))
        if (counts == 0).any():
            raise ValueError(
                f"table treatment: option(s) {[a for a, c in zip(data.arms, counts, strict=True) if c == 0]} "
                "have no rows (rule: every arm needs rows)"
            )
        self.model_ = _booster(data.outcome, self.config, 0)
        self.model_.fit(self._design(data.X, data.codes), data.y, sample_weight=data.weight)

    def _predict_outcomes(self, frame: pd.DataFrame) -> np.ndarray:
        n, k = len(frame), len(self.arms_)
        stacked = pd.concat([frame] * k, ignore_index=True)
        design = self._design(stacked, np.repeat(np.arange(k), n))
        return _predict(self.model_, design, self.outcome).reshape(k, n).T


class TLearner(BaseLearner):
    """One XGBoost model per option, each fitted on the rows that took it (`models_[arm]`)."""

    def _fit(self, data: FitData) -> None:
        self.models_: dict[str, xgb.XGBModel] = {arm: self._fit_arm(data, k) for k, arm in enumerate(data.arms)}

    def _fit_arm(self, data: FitData, k: int) -> xgb.XGBModel:
        """The outcome model of arm k, fitted on the rows that took it."""
        rows = _check_arm_rows(data, k)
        model = _booster(data.outcome, self.config, k)
        model.fit(data.X.iloc[rows], data.y[rows], sample_weight=data.weight[rows])
        return model

    def _predict_outcomes(self, frame: pd.DataFrame) -> np.ndarray:
        return np.column_stack([_predict(self.models_[a], frame, self.outcome) for a in self.arms_])


class _ConstantModel:
    """An outcome 'model' that predicts one value (a rare option's mean outcome in a nuisance fold)."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return np.column_stack([np.full(len(frame), 1 - self.value), np.full(len(frame), self.value)])

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return np.full(len(frame), self.value)


class _NuisanceTLearner(TLearner):
    """The T-learner of the cross-fitted AIPW nuisance: an option with too few rows in a fold, or only one outcome
    there (a rare switch with no responder among its 7 rows), gets its mean outcome (else the fold's) instead of a
    model — a fold must never stop training."""

    def _fit_arm(self, data: FitData, k: int) -> xgb.XGBModel | _ConstantModel:
        try:
            return super()._fit_arm(data, k)
        except ValueError:
            rows = np.flatnonzero((data.codes == k) & (data.weight > 0))
            if len(rows):
                return _ConstantModel(data.y[rows].mean())
            return _ConstantModel(np.average(data.y, weights=np.maximum(data.weight, 1e-12)))


class DRLearner(BaseLearner):
    """Doubly robust learner: AIPW pseudo-outcomes from patient-grouped cross-fitted outcome and propensity
    models, then one XGBoost regression per option-vs-control contrast (`effect_models_[arm]`).

    Rows where an option (or control) is ineligible carry no pseudo-outcome for that contrast. After fit,
    `aipw_scores_` (n, n_arms) holds the cross-fitted AIPW scores (NaN where ineligible) for policy evaluation
    and `propensity_` the cross-fitted propensities.
    """

    def _fit(self, data: FitData) -> None:
        cfg = self.config
        scores, self.propensity_ = cross_fitted_aipw(data, cfg)
        self.aipw_scores_ = scores
        c = self.arms_.index(self.control)
        control_rows = _check_arm_rows(data, c)
        self.models_ = {self.control: _booster(data.outcome, cfg, c)}
        self.models_[self.control].fit(
            data.X.iloc[control_rows], data.y[control_rows], sample_weight=data.weight[control_rows]
        )
        self.effect_models_: dict[str, xgb.XGBRegressor] = {}
        for j, arm in enumerate(data.arms):
            if j == c:
                continue
            rows = np.flatnonzero(data.eligible[:, j] & data.eligible[:, c] & (data.weight > 0))
            if len(rows) < 2:
                raise ValueError(
                    f"table eligible: only {len(rows)} row(s) eligible for both {arm!r} and {self.control!r} "
                    "(rule: a contrast needs rows where both options are possible)"
                )
            params = cfg.effect_booster.model_copy(update={"seed": cfg.booster.seed}).xgb_params(
                seed_offset=j
            )
            model = xgb.XGBRegressor(objective="reg:squarederror", **params)
            model.fit(data.X.iloc[rows], scores[rows, j] - scores[rows, c], sample_weight=data.weight[rows])
            self.effect_models_[arm] = model

    def _predict_outcomes(self, frame: pd.DataFrame) -> np.ndarray:
        base = _predict(self.models_[self.control], frame, self.outcome)
        out = np.repeat(base[:, None], len(self.arms_), axis=1)
        for j, arm in enumerate(self.arms_):
            if arm != self.control:
                out[:, j] += self.effect_models_[arm].predict(frame)
        return out


def _plain_preprocess(preprocess: object, width: int) -> bool:
    """Whether a linear learner's `preprocess_` is exactly the pipeline `LinearLearner._fit` builds (a NaN-median
    imputer keeping empty features, with dense missing-indicators, then a centring and scaling scaler, plain
    array output) for `width` features: `LinearLearner.standardised` may then compute it from its statistics."""
    import sklearn

    if not isinstance(preprocess, Pipeline) or [name for name, _ in preprocess.steps] != ["impute", "scale"]:
        return False
    impute, scale = preprocess.named_steps["impute"], preprocess.named_steps["scale"]
    indicator = getattr(impute, "indicator_", None)
    return (type(impute) is SimpleImputer and type(scale) is StandardScaler
            and isinstance(impute.missing_values, float) and np.isnan(impute.missing_values)
            and impute.keep_empty_features and getattr(impute, "n_features_in_", None) == width
            and impute.add_indicator == (indicator is not None)
            and (indicator is None or (indicator.features == "missing-only" and indicator.sparse in (False, "auto")))
            and scale.with_mean and scale.with_std and scale.mean_ is not None and scale.scale_ is not None
            and sklearn.get_config()["transform_output"] == "default"
            and not any(getattr(step, "_sklearn_output_config", None) for step in (preprocess, impute, scale)))


class LinearLearner(BaseLearner):
    """Baseline: regularised logistic (binary) or ridge (continuous) regression on scaled features, option
    indicators and option x feature interactions; `preprocess_` is a sklearn Pipeline (median imputer with
    missing indicators, then scaling)."""

    #: lbfgs for the wide all-interactions design (Newton's method would factor a matrix of thousands of columns)
    solver = "lbfgs"

    def _others(self) -> list[int]:
        return [j for j in range(len(self.arms_)) if j != self.control_index_]

    def _prepare(self, data: FitData) -> None:
        """Hook for subclasses that need more than the scaled features before designing (none here)."""

    def _design(self, z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        others = self._others()
        onehot = (codes[:, None] == np.asarray(others)[None, :]).astype("float64")
        inter = (onehot[:, :, None] * z[:, None, :]).reshape(len(z), -1)
        return np.hstack([z, onehot, inter])

    def arm_weights(self, arm: str) -> tuple[np.ndarray, float]:
        """(weights over the standardised design columns `z`, option offset) of one option's linear predictor:
        margin = intercept + offset + z @ weights. The offset is the option's average effect on the margin."""
        coef = np.asarray(self.model_.coef_, dtype="float64").ravel()
        d, others = self.z_width_, self._others()
        k = self.arms_.index(arm)
        if k == self.control_index_:
            return coef[:d].copy(), 0.0
        i = others.index(k)
        return coef[:d] + self._arm_interaction(coef[d + len(others):], i), float(coef[d + i])

    def _arm_interaction(self, inter: np.ndarray, i: int) -> np.ndarray:
        """The interaction weights of the i-th non-control option, over all `z` columns."""
        return inter.reshape(len(self._others()), self.z_width_)[i]

    def _fit(self, data: FitData) -> None:
        counts = np.bincount(data.codes, minlength=len(data.arms))
        if (counts == 0).any():
            raise ValueError(
                f"table treatment: option(s) {[a for a, c in zip(data.arms, counts, strict=True) if c == 0]} "
                "have no rows (rule: every arm needs rows)"
            )
        self.preprocess_ = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        z = self.preprocess_.fit_transform(data.X)
        self.z_width_ = z.shape[1]
        self._prepare(data)
        if data.outcome == "binary":
            self.model_ = LogisticRegression(C=self.config.linear_C, max_iter=5000, solver=self.solver)
        else:
            self.model_ = Ridge(alpha=self.config.linear_alpha)
        self.model_.fit(self._design(z, data.codes), data.y, sample_weight=data.weight)

    def standardised(self, frame: pd.DataFrame, values: np.ndarray | None = None) -> np.ndarray:
        """`preprocess_.transform(frame)`: the imputed, missing-indicator and scaled design columns. With `values`
        (the frame's float64 block, already checked, as `models.intervals.SharedFeatures` holds it) they come from
        the fitted statistics directly, the same numbers in the same operations — sklearn checks a frame's 160
        columns on every call, most of a page's prediction time over a dozen bootstrap members — unless the
        pipeline is not the median-imputer-then-scaler one `_fit` builds."""
        if values is None or not _plain_preprocess(self.preprocess_, values.shape[1]):
            return self.preprocess_.transform(frame)
        impute, scale = self.preprocess_.named_steps["impute"], self.preprocess_.named_steps["scale"]
        missing = np.isnan(values)
        z = np.where(missing, impute.statistics_.astype("float64"), values)
        indicator = getattr(impute, "indicator_", None)
        if indicator is not None:
            z = np.hstack((z, missing[:, indicator.features_]))
        z -= scale.mean_
        z /= scale.scale_
        return z

    def _predict_outcomes(self, frame: pd.DataFrame, values: np.ndarray | None = None) -> np.ndarray:
        z = self.standardised(frame, values)
        n, k = len(z), len(self.arms_)
        design = self._design(np.tile(z, (k, 1)), np.repeat(np.arange(k), n))
        if self.outcome == "binary":
            pred = self.model_.predict_proba(design)[:, 1]
        else:
            pred = self.model_.predict(design)
        return np.asarray(pred, dtype="float64").reshape(k, n).T


class ModifierGLM(LinearLearner):
    """Penalised logistic (binary) / ridge (continuous) regression on scaled features and option indicators,
    with option x feature terms only for each option's published effect modifiers (`config.effect_modifiers`).

    The literature names a handful of modifiers per option, so each option costs a few parameters instead of one
    per feature: with a few hundred decisions per option it still separates whom an option suits (an S-learner's
    trees shrink those differences toward the average). Without modifiers it ranks options in one fixed order."""

    #: a few hundred columns: Newton's method converges in a handful of steps (6x faster than lbfgs, same fit)
    solver = "newton-cholesky"

    def _prepare(self, data: FitData) -> None:
        self.modifier_index_ = modifier_index(self.columns_, data.arms, self.config.effect_modifiers)

    def _design(self, z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        others = self._others()
        onehot = (codes[:, None] == np.asarray(others)[None, :]).astype("float64")
        return np.hstack([z, onehot, modifier_terms(z, codes, self.modifier_index_)])

    def _arm_interaction(self, inter: np.ndarray, i: int) -> np.ndarray:
        k = self._others()[i]
        weights = np.zeros(self.z_width_)
        start = 0
        for arm, cols in self.modifier_index_.items():
            if arm == k:
                weights[cols] = inter[start:start + len(cols)]
            start += len(cols)
        return weights


class _LinearLogit:
    """A fitted log-odds model linear in a design, with what `LinearLearner` predicts and explains from."""

    def __init__(self, coef: np.ndarray, intercept: float) -> None:
        self.coef_ = np.asarray(coef, dtype="float64").reshape(1, -1)
        self.intercept_ = np.array([float(intercept)])

    def predict_proba(self, design: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(design @ self.coef_[0] + self.intercept_[0])))
        return np.column_stack([1.0 - p, p])


class ScoreGLM(ModifierGLM):
    """The modifier GLM that also learns from the score its binary outcome thresholds (`FitData.score`: the total
    improvement score's margin over the response threshold).

    A response keeps one bit of the score it thresholds: a ridge regression of the score on the GLM's design
    (`linear_alpha`) ranks patients within an option more surely. Its patient-grouped out-of-fold predictions are
    mapped to log-odds by a logistic regression of the response on them (how sharply the chance rises with the
    expected score), and the response's log-odds are the weighted mean of that and the GLM's own (`score_weight`;
    0 = the GLM alone). Both are linear in one design, so the result is one linear model with exact linear SHAP.

    With `score_trees_weight` > 0, an S-learner's gradient-boosted trees (same option x modifier terms) also regress
    the score; their out-of-fold predictions get a logistic link of their own, and that log-odds is averaged in
    with this weight (`trees_`, `trees_link_`): the interactions trees find, learnt from the score rather than its
    one bit. SHAP stays exact: the linear model's linear SHAP plus the trees' SHAP, each scaled by its weight; the
    trees' SHAP is taken against the average training patient under the same option (`trees_reference_`), so the
    option itself is the baseline, never a reason, as for the linear model.
    """

    outcomes = ("binary",)

    def _fit(self, data: FitData) -> None:
        if data.outcome != "binary" or data.score is None:
            raise ValueError(f"table score: the {type(self).__name__} learner needs a binary outcome and the score "
                             "it thresholds (rule: fit(..., score=margin over the threshold))")
        super()._fit(data)
        self.glm_ = self.model_
        design = self._design(self.preprocess_.transform(data.X), data.codes)
        self.ridge_ = Ridge(alpha=self.config.linear_alpha).fit(design, data.score, sample_weight=data.weight)
        n_folds = min(self.config.cv_folds, len(np.unique(data.groups)))
        # no left-out patients (or one outcome only) leave no link to learn: the GLM alone
        can_link = n_folds >= 2 and len(np.unique(data.y)) == 2

        def ridge_left_out(train: np.ndarray, test: np.ndarray) -> np.ndarray:
            ridge = Ridge(alpha=self.config.linear_alpha).fit(design[train], data.score[train],
                                                               sample_weight=data.weight[train])
            return ridge.predict(design[test])

        slope, offset = self._left_out_link(data, n_folds, ridge_left_out) if can_link else (0.0, 0.0)
        # a score no better than chance on the left-out patients (slope ≤ 0) is left out, never turned round
        weight = self.config.score_weight if slope > 0 else 0.0
        self.link_ = {"slope": slope, "intercept": offset, "score_weight": weight}
        glm_coef, glm_intercept = self.glm_.coef_.ravel(), float(self.glm_.intercept_[0])
        self.model_ = _LinearLogit(
            (1 - weight) * glm_coef + weight * slope * self.ridge_.coef_,
            (1 - weight) * glm_intercept + weight * (slope * float(self.ridge_.intercept_) + offset))
        self.trees_: SLearner | None = None
        self.trees_link_ = {"slope": 0.0, "intercept": 0.0, "weight": 0.0}
        if self.config.score_trees_weight > 0 and can_link:
            self._fit_trees(data, n_folds)

    def _left_out_link(self, data: FitData, n_folds: int,
                       predict_left_out: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[float, float]:
        """(slope, intercept) of the logistic regression of the response on a score model's patient-grouped
        out-of-fold predictions (`predict_left_out(train rows, test rows)`): how sharply the chance rises with the
        expected score."""
        oof = np.empty(len(data.y))
        for train, test in patient_folds(data.groups, n_folds, seed=self.config.booster.seed):
            oof[test] = predict_left_out(train, test)
        link = LogisticRegression(C=1e6, max_iter=1000).fit(oof[:, None], data.y, sample_weight=data.weight)
        return float(link.coef_[0, 0]), float(link.intercept_[0])

    def _fit_trees(self, data: FitData, n_folds: int) -> None:
        """The trees' regression of the score and its out-of-fold logistic link (left out when no better than
        chance on the left-out patients)."""
        on_score = replace(data, y=data.score, outcome="continuous", score=None)
        fixed = self.config.model_copy(update={"arms": data.arms, "outcome": "continuous"})

        def trees_left_out(train: np.ndarray, test: np.ndarray) -> np.ndarray:
            fold = SLearner(fixed).fit_prepared(on_score.rows(train))
            return fold._predict_outcomes(data.X.iloc[test])[np.arange(len(test)), data.codes[test]]

        slope, offset = self._left_out_link(data, n_folds, trees_left_out)
        if slope > 0:
            self.trees_ = SLearner(fixed).fit_prepared(on_score)
            self.trees_link_ = {"slope": slope, "intercept": offset, "weight": self.config.score_trees_weight}
            # the average patient the trees' explanations start from (column means: no one patient's record)
            self.trees_reference_ = data.X.mean(axis=0, skipna=True).to_frame().T.astype("float64")

    def _predict_outcomes(self, frame: pd.DataFrame, values: np.ndarray | None = None,
                          trees_outcomes: Callable[[SLearner], np.ndarray] | None = None) -> np.ndarray:
        """The averaged log-odds as probabilities (`values`: see `standardised`); `trees_outcomes(trees)` gives the
        trees' predictions from a matrix prepared elsewhere (`models.intervals.shared_outcomes`: one for every
        bootstrap member)."""
        p = super()._predict_outcomes(frame, values)
        trees = getattr(self, "trees_", None)  # older pickles have none
        if trees is None:
            return p
        w, slope, offset = (self.trees_link_[k] for k in ("weight", "slope", "intercept"))
        score = trees._predict_outcomes(frame) if trees_outcomes is None else trees_outcomes(trees)
        margin = (1 - w) * logit(p) + w * (slope * score + offset)
        return 1.0 / (1.0 + np.exp(-margin))


class XLearner(BaseLearner):
    """Künzel et al.'s X-learner, option by option against control: per-option outcome models (a T-learner,
    `outcome_models_`), imputed effects — y − control model on rows that took the option, option model − y on
    control rows — each regressed on the features (`effect_models_[arm]` = (on control rows, on option rows)) and
    blended by the propensity of the option vs control. Outcome k = control outcome + effect k (clipped to
    [0, 1] for a binary outcome). Good when one arm is much larger than the other."""

    def _fit(self, data: FitData) -> None:
        cfg = self.config
        fixed = cfg.model_copy(update={"arms": data.arms, "outcome": data.outcome})
        self.outcome_models_ = TLearner(fixed).fit_prepared(data)
        mu = self.outcome_models_._predict_outcomes(data.X)
        c = self.control_index_
        self.propensity_model_ = PropensityModel(data.arms, cfg.propensity).fit(
            data.X, np.asarray(data.arms)[data.codes], eligible=data.eligible, sample_weight=data.weight)
        control_rows = _check_arm_rows(data, c)
        self.effect_models_: dict[str, tuple[xgb.XGBRegressor, xgb.XGBRegressor]] = {}
        params = cfg.effect_booster.model_copy(update={"seed": cfg.booster.seed})
        for j, arm in enumerate(data.arms):
            if j == c:
                continue
            rows = _check_arm_rows(data, j)
            pair = []
            for fit_rows, imputed, offset in ((control_rows, mu[control_rows, j] - data.y[control_rows], 0),
                                              (rows, data.y[rows] - mu[rows, c], 1)):
                model = xgb.XGBRegressor(objective="reg:squarederror", **params.xgb_params(seed_offset=2 * j + offset))
                model.fit(data.X.iloc[fit_rows], imputed, sample_weight=data.weight[fit_rows])
                pair.append(model)
            self.effect_models_[arm] = (pair[0], pair[1])

    def _predict_outcomes(self, frame: pd.DataFrame) -> np.ndarray:
        c = self.control_index_
        base = _predict(self.outcome_models_.models_[self.control], frame, self.outcome)
        prop = self.propensity_model_.predict_proba(frame, np.ones((len(frame), len(self.arms_)), dtype=bool))
        out = np.repeat(base[:, None], len(self.arms_), axis=1)
        for j, arm in enumerate(self.arms_):
            if j == c:
                continue
            on_control, on_option = self.effect_models_[arm]
            g = prop[:, j] / np.maximum(prop[:, j] + prop[:, c], 1e-12)  # P(option | option or control)
            out[:, j] += g * on_control.predict(frame) + (1 - g) * on_option.predict(frame)
        return out


class StackedLearner(BaseLearner):
    """The modifier GLM and the S-learner (with the same modifier terms) averaged on the logit scale (the value
    scale for a continuous outcome), weight `config.stack_weight` on the S-learner: the published modifiers
    plus the interactions the trees find (`members_`)."""

    def _fit(self, data: FitData) -> None:
        fixed = self.config.model_copy(update={"arms": data.arms, "outcome": data.outcome})
        self.members_ = (ModifierGLM(fixed).fit_prepared(data), SLearner(fixed).fit_prepared(data))

    def _predict_outcomes(self, frame: pd.DataFrame) -> np.ndarray:
        glm, trees = (m._predict_outcomes(frame) for m in self.members_)
        w = self.config.stack_weight
        if self.outcome != "binary":
            return (1 - w) * glm + w * trees
        margin = (1 - w) * logit(glm) + w * logit(trees)
        return 1.0 / (1.0 + np.exp(-margin))


class GaussianProcessTLearner(BaseLearner):
    """A T-learner for a continuous outcome with one Gaussian-process regression per option (`arm_models_[arm]`,
    Rasmussen & Williams 2006), on features imputed (median, with missing indicators) and standardised on all
    training rows (`scaler_`). Kernel: amplitude x RBF (one length scale, starting at √features) + white noise;
    its hyperparameters maximise each arm's marginal likelihood and `normalize_y` centres and scales the arm's
    outcome, so nothing is tuned by hand. A smooth surface (IHDP's exponential control surface) is modelled
    without the steps of trees, and a small arm borrows strength from the smoothness prior.

    Limits, each a clear error: a binary outcome (use the tree or linear learners: this one has no TreeSHAP or
    linear SHAP, so it must never serve the explained response head); more than `max_rows_per_arm` rows in an
    arm (exact GP regression costs rows³ time and rows² memory); unequal positive sample weights (a GP fit takes
    none; weight-0 rows are left out)."""

    outcomes = ("continuous",)

    #: exact GP regression is cubic in rows: 3,000 rows take seconds, 10,000 would take minutes and ~1 GB.
    max_rows_per_arm = 3000

    def _fit(self, data: FitData) -> None:
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
        from threadpoolctl import threadpool_limits

        if data.outcome != "continuous":
            raise ValueError(
                "table y: a binary outcome (rule: the Gaussian-process T-learner gp_t models continuous outcomes "
                "only; it has no SHAP explanation for a response head)"
            )
        positive = data.weight[data.weight > 0]
        if len(positive) and not np.allclose(positive, positive[0]):
            r = int(np.flatnonzero((data.weight > 0) & ~np.isclose(data.weight, positive[0]))[0])
            raise ValueError(
                f"table sample_weight: row {r} is {data.weight[r]} but row weights differ (rule: gp_t fits "
                "unweighted; weights must be 0 or one common value)"
            )
        self.scaler_ = Pipeline([
            ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
            ("scale", StandardScaler()),
        ])
        used = data.weight > 0  # a weight-0 row is left out of the scaling as of the fit
        self.scaler_.fit(data.X.iloc[np.flatnonzero(used)] if isinstance(data.X, pd.DataFrame) else data.X[used])
        z = self.scaler_.transform(data.X)
        self.arm_models_: dict[str, GaussianProcessRegressor] = {}
        for k, arm in enumerate(data.arms):
            rows = _check_arm_rows(data, k, min_rows=3)
            if len(rows) > self.max_rows_per_arm:
                raise ValueError(
                    f"table treatment: option {arm!r} has {len(rows)} rows (rule: gp_t fits at most "
                    f"{self.max_rows_per_arm} per option; exact Gaussian-process regression is cubic in rows)"
                )
            kernel = ConstantKernel(1.0) * RBF(length_scale=np.sqrt(z.shape[1])) + WhiteKernel(0.1)
            model = GaussianProcessRegressor(kernel, normalize_y=True,
                                             random_state=(self.config.booster.seed + k) % (2**31 - 1))
            with threadpool_limits(limits=1, user_api="blas"):  # see `_predict_outcomes`
                self.arm_models_[arm] = model.fit(z[rows], data.y[rows])

    def _predict_outcomes(self, frame: pd.DataFrame) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        z = self.scaler_.transform(frame)
        # one BLAS thread: the matrices are a few hundred rows wide, where threads cost more than they save
        # (a GP fit took 10x longer with two threads on a busy 2-core machine)
        with threadpool_limits(limits=1, user_api="blas"):
            return np.column_stack([np.asarray(self.arm_models_[a].predict(z), dtype="float64")
                                    for a in self.arms_])


LEARNERS: Mapping[str, type[BaseLearner]] = MappingProxyType(
    {"s": SLearner, "t": TLearner, "dr": DRLearner, "linear": LinearLearner, "modifier_glm": ModifierGLM,
     "x": XLearner, "stacked": StackedLearner, "gp_t": GaussianProcessTLearner, "score_glm": ScoreGLM}
)


def make_learner(kind: str, config: LearnerConfig | None = None) -> BaseLearner:
    """A learner by short name (`LEARNERS`: 's', 't', 'dr', 'linear', 'modifier_glm', …) so `params.yaml` can
    choose one."""
    try:
        return LEARNERS[kind](config)
    except KeyError:
        raise ValueError(f"learner kind {kind!r}: expected one of {sorted(LEARNERS)}") from None
