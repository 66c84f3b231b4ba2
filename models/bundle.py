"""The deployable Escalate model: feature contract, eligibility, response / TIS / safety learners, calibration,
bootstrap intervals and the recommendation, behind one `predict_frame(features)` call.

`fit_escalate_model` trains it from the feature table and the decision labels, recording the feature and label
settings it was trained with (`RecordedSettings`); the registered MLflow model (`pipeline/pyfunc_model.py`) only
unpickles it and calls `predict_frame`, so the batch job, the clinician page and the evaluation all get the same
numbers. Pure: no I/O, no MLflow, randomness from seeds.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from features.config import FeatureConfig, Frozen, LabelConfig, Seed
from features.response import response_threshold
from features.vocabulary import OptionCatalog
from models.calibration import CalibratedLearner, out_of_fold_outcomes, out_of_fold_predictions
from models.config import BoosterConfig, CalibrationConfig, IntervalConfig, LearnerConfig, PropensityConfig
from models.intervals import (
    BootstrapEnsemble,
    CalibrationBands,
    PatientSpread,
    SharedFeatures,
    fit_calibration_bands,
    fit_patient_spread,
    fit_patient_spread_from_scores,
    shared_outcomes,
    widen_interval,
)
from models.learners import LEARNERS, BaseLearner, make_learner, prepare_fit
from models.propensity import PropensityModel, overlap_report
from models.response import response_margin, response_of

LearnerKind = Literal["s_learner", "t_learner", "dr_learner", "linear", "modifier_glm", "score_glm", "x_learner",
                      "stacked", "gp_t_learner"]
_KIND = {"s_learner": "s", "t_learner": "t", "dr_learner": "dr", "linear": "linear", "modifier_glm": "modifier_glm",
         "score_glm": "score_glm", "x_learner": "x", "stacked": "stacked", "gp_t_learner": "gp_t"}
#: `train.learner: auto` — the response learner is chosen among `train.selection.candidates` (`models.selection`).
AUTO = "auto"
#: identifier / date columns carried through to the output, never used as features.
KEY_COLUMNS: tuple[str, ...] = ("patient_id", "decision_id", "as_of")
ELIGIBLE_PREFIX = "eligible_"
REASON_PREFIX = "ineligible_reason_"
#: the registered model's inference parameter: top-K reasons per option in its output (0 = predictions only).
EXPLAIN_PARAM = "explain_top_k"


class EligibilityColumns(Frozen):
    """Which feature columns carry eligibility: `on_<generic>` flags and the "a drug is below target" flag."""

    on_prefix: str = "on_"
    below_target: str = "any_below_target"


class IntervalCalibrationConfig(Frozen):
    """Widening of binary heads' intervals by the out-of-fold calibration term (`models.intervals.
    CalibrationBands`: the bootstrap alone reflects variance, not the trees' bias) and, with `patient_spread`, by
    how far one patient's chance strays from that of patients alike (`models.intervals.PatientSpread`)."""

    enabled: bool = True
    min_bin_patients: int = Field(40, ge=5, description="patients per risk bin (fewer: wider, noisier bins)")
    max_bins: int = Field(10, ge=1, le=50)
    patient_spread: bool = Field(True, description="also widen by the spread of the true chance that the residuals "
                                 "of a patient's own decisions reveal (`models.intervals.PatientSpread`)")
    min_decision_pairs: int = Field(100, ge=1, description="fewer same-patient decision pairs: no spread term")


class LearnerCandidate(Frozen):
    """One learner and its settings that `train.learner: auto` may choose."""

    learner: LearnerKind
    linear_C: float | None = Field(None, gt=0, description="modifier GLM / linear: inverse L2 strength")
    linear_alpha: float | None = Field(None, gt=0, description="score GLM: ridge penalty of the score regression")
    score_weight: float | None = Field(None, ge=0, le=1, description="score GLM: weight of the score's log-odds")
    score_trees_weight: float | None = Field(None, ge=0, le=1,
                                             description="score GLM: weight of the trees on the score's log-odds")
    stack_weight: float | None = Field(None, ge=0, le=1, description="stacked: weight of the S-learner")

    @property
    def name(self) -> str:
        """A readable label, e.g. `modifier_glm(C=1)`."""
        short = {"linear_C": "C", "linear_alpha": "alpha", "score_weight": "w", "score_trees_weight": "trees",
                 "stack_weight": "w"}
        settings = [f"{short[k]}={v:g}" for k, v in self.updates().items()]
        return f"{self.learner}({', '.join(settings)})" if settings else self.learner

    def updates(self) -> dict[str, object]:
        """The `LearnerConfig` fields this candidate sets."""
        fields = ("linear_C", "linear_alpha", "score_weight", "score_trees_weight", "stack_weight")
        return {k: getattr(self, k) for k in fields if getattr(self, k) is not None}


class TrainingDataError(ValueError):
    """The training decisions cannot support a model (too few decisions of the control or of any other option):
    the message names the table, the counts and the rule."""


class SelectionConfig(Frozen):
    """Candidates for `learner: auto`, preferred first, compared by the cross-fitted doubly robust value of their
    recommendations on the training patients (`models.selection`); `folds` patient-grouped folds; the first
    candidate within `tolerance_se` standard errors of the best wins (one-standard-error rule)."""

    candidates: tuple[LearnerCandidate, ...] = (
        LearnerCandidate(learner="modifier_glm", linear_C=0.1),
        LearnerCandidate(learner="modifier_glm", linear_C=1.0),
        LearnerCandidate(learner="s_learner"),
    )
    folds: int = Field(5, ge=2, le=20)
    tolerance_se: float = Field(1.0, ge=0)
    #: auto: the doubly robust policy value for a binary outcome, the DR-loss of the contrasts for a continuous one
    criterion: Literal["auto", "policy_value", "dr_loss"] = "auto"


class BundleConfig(Frozen):
    """Training settings of the whole model (the `train:` section of params.yaml)."""

    learner: LearnerKind | Literal["auto"] = "t_learner"
    selection: SelectionConfig = SelectionConfig()
    safety_learner: LearnerKind = "s_learner"
    #: steroid sparing (prednisone ≤ the taper goal at the horizon without a rise): pooled like safety
    steroid_learner: LearnerKind = "s_learner"
    tis_learner: LearnerKind | None = None  # None: the response's learner (the modifier GLM for `score_glm`)
    booster: BoosterConfig = BoosterConfig()
    propensity: PropensityConfig = PropensityConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    calibrate: bool = True
    intervals: IntervalConfig = IntervalConfig()
    interval_calibration: IntervalCalibrationConfig = IntervalCalibrationConfig()
    #: response = TIS at or above this (adult / juvenile DM thresholds of the `labels:` response category).
    response_threshold: float = Field(40.0, gt=0, le=100)
    juvenile_response_threshold: float = Field(45.0, gt=0, le=100)
    cv_folds: int = Field(5, ge=2, le=20)
    #: an option taken at fewer training decisions than this is not modelled (reported, never predicted).
    min_rows_per_option: int = Field(20, ge=2)
    #: recommendation utility = p_response − safety_weight × p_safety (0: rank by response alone).
    safety_weight: float = Field(0.0, ge=0)
    eligibility: EligibilityColumns = EligibilityColumns()
    #: reasons per option in the registered model's default output (pyfunc `params={"explain_top_k": K}`).
    explain_top_k: int = Field(3, ge=0, le=20)
    seed: Seed = 20261125

    @model_validator(mode="after")
    def _a_score_learner_only_for_the_response(self) -> BundleConfig:
        """The score GLM learns the response from the TIS it thresholds: no other head has such a score."""
        for name in ("tis_learner", "safety_learner", "steroid_learner"):
            if getattr(self, name) == "score_glm":
                raise ValueError(f"{name}: score_glm learns a response from the score it thresholds; only the "
                                 "response head has one (rule: score_glm for `learner` or a selection candidate)")
        return self

    @model_validator(mode="after")
    def _a_candidate_for_the_response(self) -> BundleConfig:
        """`learner: auto` picks the binary response head's learner among `selection.candidates`: at least one must
        model a binary outcome, said when params.yaml is read instead of after the training data is loaded."""
        if self.learner == "auto" and not any(
                "binary" in LEARNERS[_KIND[c.learner]].outcomes for c in self.selection.candidates):
            raise ValueError(f"selection.candidates {[c.name for c in self.selection.candidates]}: none models a "
                             "binary outcome (rule: at least one for the response; gp_t_learner is for continuous "
                             "outcomes)")
        return self


class RecordedSettings(Frozen):
    """The feature and label settings a model was trained with, recorded in it: scoring and the clinician page
    build features with these, never with whatever params.yaml says on the day they run."""

    features: FeatureConfig
    labels: LabelConfig

    def check_thresholds(self, config: BundleConfig) -> None:
        """The model's response thresholds are the labels' response category's (one definition of response)."""
        for juvenile, have in ((False, config.response_threshold), (True, config.juvenile_response_threshold)):
            want = response_threshold(self.labels.response_category, juvenile=juvenile)
            if float(have) != float(want):
                which = "juvenile_response_threshold" if juvenile else "response_threshold"
                raise ValueError(f"train.{which}={have:g} but labels.response_category "
                                 f"{self.labels.response_category!r} means {want:g} (rule: one definition of response)")


def explain_top_k_param(params: dict[str, object] | None, default: int) -> int:
    """The `explain_top_k` inference parameter as a non-negative int (MLflow passes params through the
    signature, which may deliver numpy or string scalars); a bad value is an error naming the rule."""
    value = (params or {}).get(EXPLAIN_PARAM, default)
    try:
        k = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"params {EXPLAIN_PARAM}={value!r} (rule: an integer number of reasons, 0 = none)") from None
    if k < 0 or k != float(value):  # type: ignore[arg-type]
        raise ValueError(f"params {EXPLAIN_PARAM}={value!r} (rule: an integer number of reasons, 0 = none)")
    return k


class FeatureContract(Frozen):
    """The feature columns (in model order) and their dtypes at fit; predict checks input against it."""

    keys: tuple[str, ...]
    columns: tuple[str, ...]
    dtypes: tuple[str, ...]
    eligibility_source: Literal["features", "columns"]

    def check(self, features: pd.DataFrame, table: str = "features") -> pd.DataFrame:
        """The feature block as float64 in model order; every violation names table, row, column and rule."""
        missing = [c for c in self.columns if c not in features.columns]
        if missing:
            raise ValueError(
                f"table {table}: missing column(s) {missing[:10]}{' …' if len(missing) > 10 else ''} "
                "(rule: the feature contract of the trained model)"
            )
        for key in (k for k in self.keys if k in features.columns):  # an output row must be joinable to its input
            given = features[key]
            blank = given.isna().to_numpy()
            if given.dtype == object or pd.api.types.is_string_dtype(given.dtype):  # a blank text id is none
                blank = blank | given.astype(str).str.strip().eq("").to_numpy()
            if blank.any():
                raise ValueError(f"table {table}: row {int(np.flatnonzero(blank)[0])}, column {key!r} is empty "
                                 f"(rule: a key names every row); {int(blank.sum())} row(s) in all")
        block = features[list(self.columns)]
        dtypes = block.dtypes.to_numpy()
        bad = [
            c
            for c, dt in zip(self.columns, dtypes, strict=True)
            if not (pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt))
        ]
        if bad:
            col = bad[0]
            values = pd.to_numeric(block[col], errors="coerce")
            rows = np.flatnonzero(values.isna().to_numpy() & block[col].notna().to_numpy())
            where = f"row {int(rows[0])}, " if len(rows) else ""
            raise ValueError(
                f"table {table}: {where}column {col!r} has dtype {block[col].dtype} "
                f"(rule: numeric, trained as {self.dtypes[self.columns.index(col)]})"
            )
        # one vectorised conversion of the whole block (pandas converts per dtype block, not per column)
        values = np.asarray(block.to_numpy(dtype="float64", na_value=np.nan), dtype="float64")
        inf = np.isinf(values)
        if inf.any():
            r, c = np.argwhere(inf)[0]
            raise ValueError(
                f"table {table}: row {int(r)}, column {self.columns[c]!r} is {values[r, c]} "
                f"(rule: features must be finite or NaN); {int(inf.sum())} infinite value(s) in all"
            )
        return pd.DataFrame(values, columns=list(self.columns))


class Head:
    """One outcome (response, TIS or safety): the full-data learner (a `CalibratedLearner` for a binary
    outcome) and a patient bootstrap ensemble for intervals; `predict` gives point, low and high (n, arms)."""

    def __init__(
        self,
        learner: BaseLearner,
        ensemble: BootstrapEnsemble | None,
        level: float,
        bands: CalibrationBands | None = None,
        spread: PatientSpread | None = None,
    ) -> None:
        self.learner = learner
        self.ensemble = ensemble
        self.level = level
        self.bands = bands
        self.spread = spread

    def predict(self, X: pd.DataFrame | SharedFeatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point estimate (full-data learner) and the percentile interval of the bootstrap members (mapped
        through the same calibration), widened where needed so it always contains the point estimate, and —
        for a binary head with `bands` — widened in quadrature by the out-of-fold calibration term and the
        patients' own spread (`spread`).

        Pass a `SharedFeatures` to share one float32 conversion / DMatrix with the other heads."""
        shared = X if isinstance(X, SharedFeatures) else SharedFeatures(X)
        learner = self.learner
        if isinstance(learner, CalibratedLearner):
            point = np.clip(learner.calibrate(shared_outcomes(learner.base_, shared)), 0.0, 1.0)
        else:
            point = shared_outcomes(learner, shared)
        if self.ensemble is None:
            low, high = point.copy(), point.copy()
        else:
            draws = self.ensemble.predict_draws(shared)
            if isinstance(learner, CalibratedLearner):  # every member through the calibrators, one call per arm
                b, n, k = draws.shape
                draws = learner.calibrate(draws.reshape(b * n, k)).reshape(b, n, k)
            alpha = (1 - self.level) / 2
            # Weibull plotting positions: with a dozen members interpolated percentiles sit inside the draws
            low, high = np.quantile(draws, [alpha, 1 - alpha], axis=0, method="weibull")
            low, high = np.minimum(low, point), np.maximum(high, point)
        bands, spread = getattr(self, "bands", None), getattr(self, "spread", None)  # older pickles lack them
        if bands is not None or spread is not None:
            extra = bands.half_width(point) if bands is not None else np.zeros_like(point)
            if spread is not None:
                extra = np.hypot(extra, spread.half_width(point, NormalDist().inv_cdf(0.5 + self.level / 2)))
            low, high = widen_interval(point, low, high, extra)
        return point, low, high


def interval_meaning(config: BundleConfig) -> str:
    """What a per-option interval means, in words for the model card and the clinician page."""
    level = round(100 * config.intervals.level)
    text = (f"{level} % interval of the estimated chance: the spread of {config.intervals.n_boot} refits on "
            "patients drawn with replacement (sampling uncertainty)")
    if config.interval_calibration.enabled:
        text += (", widened by how far the out-of-fold predictions of patients with a similar predicted chance "
                 "who took that option missed their observed response rate (plus that rate's uncertainty)")
    rare = "for an option rarely given to patients like this one it can still be too narrow."
    # a model pickled before the spread term has a config without the field (and heads without a spread)
    if config.interval_calibration.enabled and getattr(config.interval_calibration, "patient_spread", False):
        return text + (", and by how far the chance of one patient strays from that of patients alike in the record, as "
                       "the outcomes of the same patients' other decisions show it (a trait the record does not show "
                       "moves all of a patient's outcomes together). It does not cover unmeasured confounding, and "
                       + rare)
    return text + (". It is the uncertainty of the chance among patients who look like this one in the record, not "
                   "of what the record cannot show about this patient; it does not cover unmeasured confounding or "
                   "the model's own misfit, and " + rare)


def _spread_range(spread: dict[str, object]) -> str:
    """' (90 % range a–b)' of a spread summary; '' for a model fitted before the range was kept."""
    if "sigma_logit_low" not in spread:
        return ""
    return f" (90 % range {spread['sigma_logit_low']:.2f}–{spread['sigma_logit_high']:.2f})"


def spread_estimates(summary: dict[str, object]) -> str:
    """The patient spreads a fitted model estimated, in words for its model card ("" when it has none)."""
    spreads = summary.get("interval_patient_spread") or {}
    parts = [f"{head} σ {v['sigma_logit']:.2f} on the logit scale{_spread_range(v)} from {v['decision_pairs']} "
             f"same-patient pairs ({str(v.get('source', 'binary outcome')).replace('_', ' ')} residuals)"
             for head, v in spreads.items()]  # type: ignore[union-attr]
    return f" Patient spread estimated: {'; '.join(parts)}." if parts else ""


class EscalateModel:
    """The fitted bundle. `predict_frame(features)` returns one row per input row x option."""

    def __init__(
        self,
        *,
        config: BundleConfig,
        catalog: OptionCatalog,
        contract: FeatureContract,
        arms: tuple[str, ...],
        heads: dict[str, Head],
        propensity: PropensityModel,
        summary: dict[str, object],
        dictionary: pd.DataFrame | None = None,
        data_settings: RecordedSettings | None = None,
    ) -> None:
        self.config = config
        #: the feature and label settings it was trained with (None: not recorded; such a model cannot be scored).
        self.data_settings = data_settings
        #: the feature dictionary with dose targets (`models.explain.with_dose_targets`): labels for the reasons.
        self.dictionary = dictionary
        self.catalog = catalog
        self.contract = contract
        self.arms = arms
        self.heads = heads
        self.propensity = propensity
        self.summary = summary

    def __setstate__(self, state: dict[str, object]) -> None:
        """Unpickle, upgrading the config of a bundle saved before a setting existed: such a bundle was trained
        with one response threshold for every diagnosis, which is what its config then says."""
        config = state["config"]
        if "juvenile_response_threshold" not in vars(config):
            fields = {k: v for k, v in vars(config).items() if k in BundleConfig.model_fields}
            state["config"] = BundleConfig.model_validate(
                {**fields, "juvenile_response_threshold": fields["response_threshold"]})
        state.setdefault("data_settings", None)  # saved before settings were recorded
        self.__dict__.update(state)

    @property
    def learner_name(self) -> str:
        """The response learner as fitted: the chosen candidate when `learner: auto` (e.g. `modifier_glm(C=0.1)`)."""
        chosen = self.summary.get("learner")
        if chosen is None:
            return str(self.config.learner)
        settings = self.summary.get("learner_settings") or {}
        return LearnerCandidate(learner=chosen, **settings).name  # type: ignore[arg-type]

    def feature_config(self) -> FeatureConfig:
        """The feature settings the model was trained with; a model that recorded none cannot say which features
        it needs, so this refuses instead of guessing (an error naming the rule)."""
        if self.data_settings is None:
            raise ValueError("the model records no feature settings (rule: features are built with the settings "
                             "the model was trained with); retrain it with `escalate train`")
        return self.data_settings.features

    # --- eligibility ---------------------------------------------------------------------------------------
    def eligibility(self, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(eligible, reason) frames, one column per catalogue option; options not modelled are ineligible."""
        return eligibility_frames(
            features,
            self.catalog,
            self.config.eligibility,
            self.contract.eligibility_source,
            self.arms,
            self.summary.get("option_counts", {}),
        )  # type: ignore[arg-type]

    def combination_flags(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(advised against, rule text), (n, catalogue options): the label combination rules each option would
        break with the patient's current drugs (`OptionCatalog.combination_flags`; none without `on_` flags)."""
        n, k = len(features), len(self.catalog.names)
        prefix = self.config.eligibility.on_prefix
        on_cols = [c for c in features.columns if c.startswith(prefix)]
        rules = getattr(self.catalog, "combination_rules", ())
        if not rules or not on_cols or not n:
            return np.zeros((n, k), dtype=bool), np.full((n, k), "", dtype=object)
        on = features[on_cols].rename(columns=lambda c: c[len(prefix):]).fillna(0).astype(bool)
        blocked, text = self.catalog.combination_flags(on.reset_index(drop=True))
        names = list(self.catalog.names)
        return blocked[names].to_numpy(dtype=bool), text[names].to_numpy(dtype=object)

    def propensity_matrix(
        self, features: pd.DataFrame, eligible: pd.DataFrame | None = None, *, X: pd.DataFrame | None = None
    ) -> np.ndarray:
        """(n, arms) P(clinician picks option | features), 0 where ineligible (for AIPW and overlap)."""
        X = self.contract.check(features) if X is None else X
        elig = (eligible if eligible is not None else self.eligibility(features)[0])[list(self.arms)]
        return self.propensity.predict_proba(X, elig.to_numpy(dtype=bool))

    def predict_arrays(self, features: pd.DataFrame, *, X: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
        """Raw (n, arms) arrays per output (`p_response`, `p_response_low`, …) in `self.arms` order, before
        eligibility masking: for evaluation code that needs matrices. The features are converted once and
        shared by every head and bootstrap member (`X`: the already checked feature block, if at hand)."""
        shared = SharedFeatures(self.contract.check(features) if X is None else X)
        out: dict[str, np.ndarray] = {}
        for head, name in HEAD_OUTPUTS.items():
            if head not in self.heads:  # a model trained without that label (e.g. before steroid sparing existed)
                nan = np.full((len(shared), len(self.arms)), np.nan)
                out[name], out[f"{name}_low"], out[f"{name}_high"] = nan, nan.copy(), nan.copy()
                continue
            point, low, high = self.heads[head].predict(shared)
            if head in SCORE_RANGE:  # a regression can leave the score's scale; no patient can
                point, low, high = (np.clip(a, *SCORE_RANGE[head]) for a in (point, low, high))
            out[name], out[f"{name}_low"], out[f"{name}_high"] = point, low, high
        return out

    @property
    def explain_top_k(self) -> int:
        """Reasons per option the registered model returns by default: `train.explain_top_k` when the bundle
        stores a feature dictionary to word them with, else 0 (a caller may still pass one to `predict_frame`)."""
        if getattr(self, "dictionary", None) is None:
            return 0
        return int(getattr(self.config, "explain_top_k", 0))

    def check_yes_no(self, X: pd.DataFrame, table: str = "features") -> None:
        """Refuse a yes/no feature (its stored dictionary unit a flag unit, e.g. '0/1') holding anything but 0, 1 or
        nothing: a 2 or 0.5 would be scored as no patient can be. JSON true/false reach the model as 1/0."""
        from models.explain import FLAG_UNITS

        d = getattr(self, "dictionary", None)
        if d is None or "unit" not in d.columns:  # a bundle without a dictionary says no feature's unit
            return
        flags = set(d.loc[d["unit"].astype(str).str.strip().str.lower().isin(FLAG_UNITS), "feature"])
        cols = [i for i, c in enumerate(X.columns) if c in flags]
        values = X.to_numpy()[:, cols]
        bad = ~(np.isnan(values) | (values == 0) | (values == 1))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(
                f"table {table}: row {int(r)}, column {X.columns[cols[c]]!r} is {values[r, c]:g} (rule: a yes/no "
                f"feature is 0 or 1; JSON false/true are read as 0/1); {int(bad.sum())} value(s) in all"
            )

    def predict_frame(
        self, features: pd.DataFrame, explain_top_k: int = 0, *, dictionary: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Long table, one row per input row x catalogue option: eligibility and reason, P(response),
        expected TIS and P(safety event) with intervals, effect vs continue, rank and the recommendation.
        Ineligible (or unmodelled) options get NaN predictions and rank.

        With `explain_top_k` = K > 0 the top-K reasons per option (`reason_i_*`, `contrast_reason_i_*`, from
        `models.explain.model_reasons`) are merged on (row, option), labelled with the bundle's own feature
        dictionary (`dictionary` is used only when the bundle stores none)."""
        if explain_top_k < 0:
            raise ValueError(f"explain_top_k={explain_top_k} (rule: 0 = no reasons, or at least 1)")
        features = features.reset_index(drop=True)
        n = len(features)
        options = list(self.catalog.names)
        k = len(options)
        eligible, reason = self.eligibility(features)
        X = self.contract.check(features) if n else None
        if X is not None:
            self.check_yes_no(X)
        arrays = self.predict_arrays(features, X=X) if n else {}
        elig = eligible[options].to_numpy(dtype=bool)
        col_of = np.asarray([options.index(a) for a in self.arms])
        full: dict[str, np.ndarray] = {}
        for name, values in arrays.items():
            m = np.full((n, k), np.nan)
            m[:, col_of] = values
            full[name] = np.where(elig, m, np.nan)
        if not n:
            full = {name: np.empty((0, k)) for name in _PRED_COLUMNS}
        control = options.index(self.catalog.control)
        p = full["p_response"]
        effect = p - p[:, [control]]
        blocked, rule_text = self.combination_flags(features)
        utility = p - self.config.safety_weight * np.nan_to_num(full["p_safety"], nan=0.0)
        # rank 1 = best eligible option a label allows; options a label advises against rank after every other
        # eligible one (shown, never recommended); ties keep catalogue order (stable sort)
        utility = np.where(elig, np.where(blocked, utility - 1e6, utility), -np.inf)
        order = np.argsort(-utility, axis=1, kind="stable")
        rank = np.empty((n, k))
        rank[np.arange(n)[:, None], order] = np.arange(1, k + 1)[None, :]
        rank = np.where(elig, rank, np.nan)
        prop = np.full((n, k), np.nan)
        if n:
            pm = self.propensity_matrix(features, eligible, X=X)
            prop[:, col_of] = np.where(elig[:, col_of], pm, np.nan)
        out = pd.DataFrame({"row": np.repeat(np.arange(n), k)})
        for key in self.contract.keys:
            if key in features.columns:
                out[key] = np.repeat(features[key].to_numpy(), k)
        out["option"] = np.tile(np.asarray(options, dtype=object), n)
        out["eligible"] = elig.ravel()
        out["ineligible_reason"] = reason[options].to_numpy(dtype=object).ravel()
        out["advised_against"] = (blocked & elig).ravel()
        out["combination_rule"] = rule_text.ravel()
        for name in _PRED_COLUMNS:
            out[name] = full[name].ravel()
        out["effect_vs_continue"] = effect.ravel()
        out["propensity"] = prop.ravel()
        out["rank"] = rank.ravel()
        out["recommended"] = ((rank == 1) & ~blocked).ravel()
        if explain_top_k:
            out = self._with_reasons(out, features, X, explain_top_k, dictionary)
        return out

    def _with_reasons(
        self,
        out: pd.DataFrame,
        features: pd.DataFrame,
        X: pd.DataFrame | None,
        k: int,
        dictionary: pd.DataFrame | None,
    ) -> pd.DataFrame:
        """`out` with the top-k reason columns of every (row, option) merged in (typed, empty when no rows)."""
        from models import explain as E

        stored = getattr(self, "dictionary", None)
        labels = stored if stored is not None else dictionary
        if labels is None:
            raise ValueError(
                "explain_top_k > 0 but the model stores no feature dictionary and none was given "
                "(rule: reasons are labelled from the feature dictionary; train with one)"
            )
        if not len(features):
            for col in [*E.reason_columns(k), *E.reason_columns(k, "contrast_reason")]:
                out[col] = pd.Series(dtype="float64" if col.endswith("_contribution") else object)
            return out
        heads = self.heads
        ex = E.explain(X, heads["response"].learner, safety=heads["safety"].learner if "safety" in heads else None)
        reasons = E.model_reasons(self, features, labels, k, explanations=ex)
        return out.merge(reasons, on=["row", "option"], how="left", validate="one_to_one")


#: head -> its prediction column in `predict_frame` (with `_low` / `_high` interval columns).
HEAD_OUTPUTS = {"response": "p_response", "tis": "expected_tis", "safety": "p_safety",
                "steroid_sparing": "p_steroid_sparing"}
#: the scale of a head's score (the Total Improvement Score is 0–100 points): predictions and intervals stay on it.
SCORE_RANGE = {"tis": (0.0, 100.0)}
_PRED_COLUMNS = (
    "p_response",
    "p_response_low",
    "p_response_high",
    "expected_tis",
    "expected_tis_low",
    "expected_tis_high",
    "p_safety",
    "p_safety_low",
    "p_safety_high",
    "p_steroid_sparing",
    "p_steroid_sparing_low",
    "p_steroid_sparing_high",
)


def eligibility_frames(
    features: pd.DataFrame,
    catalog: OptionCatalog,
    columns: EligibilityColumns,
    source: Literal["features", "columns"],
    arms: Sequence[str] | None = None,
    option_counts: dict[str, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Eligibility per catalogue option: derived with `OptionCatalog.eligibility` from the `on_<generic>` and
    below-target flags (source "features"), or read from `eligible_<option>` columns (source "columns").
    With `arms`, options outside it are ineligible with the reason "not modelled"."""
    features = features.reset_index(drop=True)
    if source == "features":
        on_cols = [c for c in features.columns if c.startswith(columns.on_prefix)]
        if columns.below_target not in features.columns:
            raise ValueError(
                f"table features: missing column {columns.below_target!r} (rule: eligibility needs the "
                "below-target flag)"
            )
        on = features[on_cols].rename(columns=lambda c: c[len(columns.on_prefix) :])
        _check_flags(on, "features", prefix=columns.on_prefix)
        below = features[columns.below_target]
        _check_flags(below.to_frame(), "features")
        eligible, reason = catalog.eligibility(on.astype(bool), below.astype(bool))
    else:
        names = list(catalog.names)
        cols = [f"{ELIGIBLE_PREFIX}{o}" for o in names]
        missing = [c for c in cols if c not in features.columns]
        if missing:
            raise ValueError(
                f"table features: missing column(s) {missing} (rule: one eligibility flag per option)"
            )
        flags = features[cols]
        _check_flags(flags, "features")
        eligible = flags.astype(bool).set_axis(names, axis=1)
        reason_cols = [f"{REASON_PREFIX}{o}" for o in names]
        if all(c in features.columns for c in reason_cols):
            reason = features[reason_cols].fillna("").astype(str).set_axis(names, axis=1)
            reason = reason.where(~eligible, "")
        else:
            reason = pd.DataFrame(np.where(eligible, "", "ineligible"), columns=names, index=features.index)
    if arms is not None:
        counts = option_counts or {}
        for option in catalog.names:
            if option not in arms:
                eligible[option] = False
                reason[option] = (
                    f"not modelled: taken at {counts.get(option, 0)} training decision(s), too few to estimate"
                )
    return eligible, reason


def _check_flags(frame: pd.DataFrame, table: str, prefix: str = "") -> None:
    """Boolean flags must be true/false (or 0/1) with no missing values."""
    for col in frame.columns:
        s = frame[col]
        ok = s.isin([True, False, 0, 1]) & s.notna()
        if not ok.all():
            r = int(np.flatnonzero(~ok.to_numpy())[0])
            raise ValueError(
                f"table {table}: row {r}, column {prefix + str(col)!r} is {s.iloc[r]!r} (rule: a true/false flag)"
            )


def eligibility_source(
    features: pd.DataFrame, catalog: OptionCatalog, columns: EligibilityColumns
) -> Literal["features", "columns"]:
    """ "features" when the feature table carries every flag the catalogue's rules read, else "columns"."""
    needed = {g for o in catalog.options for g in (*o.eligible_unless_on, *([o.stops] if o.stops else []))}
    has_on = all(f"{columns.on_prefix}{g}" in features.columns for g in needed)
    if has_on and columns.below_target in features.columns:
        return "features"
    return "columns"


def feature_columns(features: pd.DataFrame, catalog: OptionCatalog | None = None) -> list[str]:
    """The model's feature columns: every numeric / boolean column except keys, eligibility and reason columns."""
    skip = set(KEY_COLUMNS)
    cols = []
    for c in features.columns:
        if c in skip or c.startswith(ELIGIBLE_PREFIX) or c.startswith(REASON_PREFIX):
            continue
        if pd.api.types.is_numeric_dtype(features[c]) or pd.api.types.is_bool_dtype(features[c]):
            cols.append(str(c))
    return cols


def _learner_config(cfg: BundleConfig, outcome: Literal["binary", "continuous"], arms: tuple[str, ...],
                    seed_offset: int, updates: dict[str, object] | None = None) -> LearnerConfig:
    """The learners' settings for one head: the bundle's booster (seeded per head), folds and propensity model,
    plus `updates` (effect modifiers, a selected candidate's settings)."""
    booster = cfg.booster.model_copy(update={"seed": cfg.seed + seed_offset})
    return LearnerConfig(control=arms[0], arms=arms, outcome=outcome, booster=booster, cv_folds=cfg.cv_folds,
                         propensity=cfg.propensity, **(updates or {}))  # type: ignore[arg-type]


def select_response_learner(
    cfg: BundleConfig, lcfg: LearnerConfig, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, groups: np.ndarray,
    eligible: np.ndarray, score: np.ndarray | None = None,
) -> tuple[LearnerCandidate, pd.DataFrame]:
    """`learner: auto`: the candidate whose recommendations have the highest cross-fitted doubly robust value on
    the training patients, and the selection table (`models.selection`). `score`: what `y` thresholds."""
    from models.learners import cross_fitted_aipw
    from models.selection import select_learner

    # a candidate made for another outcome kind (gp_t: continuous only) is not one for this head
    by_name = {c.name: c for c in cfg.selection.candidates if lcfg.outcome in LEARNERS[_KIND[c.learner]].outcomes}
    if not by_name:
        raise ValueError(f"train.selection.candidates: none models a {lcfg.outcome} outcome (rule: at least one)")
    data = prepare_fit(X, t, y, lcfg, groups=groups, eligible=eligible, score=score)
    scores, _ = cross_fitted_aipw(data, lcfg.model_copy(update={"cv_folds": cfg.selection.folds}))
    learners = {name: make_learner(_KIND[c.learner], lcfg.model_copy(update=c.updates())) for name, c in by_name.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes of penalised fits on a fold
        selection = select_learner(learners, data, scores, n_folds=cfg.selection.folds, seed=cfg.seed,
                                   tolerance_se=cfg.selection.tolerance_se, criterion=cfg.selection.criterion)
    return by_name[selection.chosen], selection.table


def _fit_head(
    kind: str,
    cfg: BundleConfig,
    lcfg: LearnerConfig,
    X: pd.DataFrame,
    t: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    eligible: np.ndarray,
    seed_offset: int,
    spread_from_outcomes: bool = True,
    score: np.ndarray | None = None,
) -> Head:
    """Fit one outcome head: full-data learner, calibration (binary) and bootstrap ensemble; a binary head's
    patient spread from its 0/1 residuals unless `spread_from_outcomes` is off (the response's comes from the TIS,
    `_score_spread`). `score`: what a binary `y` thresholds, for learners that learn from it (`ScoreGLM`)."""
    outcome = lcfg.outcome
    arms = tuple(lcfg.arms or ())
    data = prepare_fit(X, t, y, lcfg, groups=groups, eligible=eligible, score=score)
    learner: BaseLearner = make_learner(_KIND[kind], lcfg)
    if outcome == "binary" and cfg.calibrate:
        learner = CalibratedLearner(learner, cfg.calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small options left uncalibrated: listed in summary
        learner.fit_prepared(data)
        ensemble = None
        if cfg.intervals.n_boot > 0:
            icfg = cfg.intervals.model_copy(update={"seed": cfg.intervals.seed + seed_offset})
            ensemble = BootstrapEnsemble(make_learner(_KIND[kind], lcfg), icfg).fit_prepared(data)
        bands, spread = None, None
        if outcome == "binary" and cfg.interval_calibration.enabled:
            if isinstance(learner, CalibratedLearner):
                p_oof = learner.calibrate(learner.oof_)  # the out-of-fold rows the calibrators were fitted on
            else:
                p_oof = out_of_fold_predictions(make_learner(_KIND[kind], lcfg), data,
                                                n_folds=cfg.calibration.n_folds, seed=cfg.calibration.seed)
            ic = cfg.interval_calibration
            codes = pd.Index(arms).get_indexer(t)
            bands = fit_calibration_bands(
                np.clip(p_oof, 0.0, 1.0), codes, y, groups, arms,
                level=cfg.intervals.level, min_bin_patients=ic.min_bin_patients, max_bins=ic.max_bins)
            if ic.patient_spread and spread_from_outcomes:
                taken = np.clip(p_oof[np.arange(len(codes)), codes], 0.0, 1.0)
                spread = fit_patient_spread(taken, y, groups, min_pairs=ic.min_decision_pairs)
    return Head(learner, ensemble, cfg.intervals.level, bands, spread)


def _score_spread(kind: str, cfg: BundleConfig, lcfg: LearnerConfig, X: pd.DataFrame, t: np.ndarray,
                  score: np.ndarray, groups: np.ndarray, eligible: np.ndarray) -> PatientSpread:
    """The response's patient spread from the out-of-fold residuals of the score it thresholds (the TIS head's
    learner, cross-fitted by patient): steadier than from the 0/1 responses (it replaces that estimate)."""
    oof = out_of_fold_outcomes(make_learner(_KIND[kind], lcfg), X, t, score, groups=groups, eligible=eligible,
                               n_folds=cfg.calibration.n_folds, seed=cfg.calibration.seed)
    codes = pd.Index(tuple(lcfg.arms or ())).get_indexer(t)
    return fit_patient_spread_from_scores(score - oof[np.arange(len(codes)), codes], groups,
                                          min_pairs=cfg.interval_calibration.min_decision_pairs,
                                          source="total_improvement_score")


def fit_escalate_model(
    features: pd.DataFrame,
    decisions: pd.DataFrame,
    catalog: OptionCatalog,
    config: BundleConfig | None = None,
    dictionary: pd.DataFrame | None = None,
    data_settings: RecordedSettings | None = None,
) -> EscalateModel:
    """Train the bundle on training-patient decisions.

    `data_settings`: the feature and label settings `features` and `decisions` were built with, recorded in the
    bundle (scoring refuses a model without them); its response category must give the config's thresholds.

    `dictionary`: the feature dictionary (with dose targets, `models.explain.with_dose_targets`) stored in the
    bundle so its predictions carry reasons in clinical words.

    `features`: keys `patient_id, decision_id, as_of` + numeric features (+ `on_<generic>` and the below-target
    flag for eligibility). `decisions`: `decision_id, option_taken, eligible_<option>,
    total_improvement_score, safety_event`. Rows with a missing label are left out of that head's fit and
    counted in `summary`; options taken too rarely are not modelled (reported, predicted as ineligible).
    """
    cfg = config or BundleConfig()
    if data_settings is not None:
        data_settings.check_thresholds(cfg)
    for table, frame, need in (
        ("features", features, ("patient_id", "decision_id")),
        ("decisions", decisions, ("decision_id", "option_taken", "total_improvement_score", "safety_event")),
    ):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ValueError(f"table {table}: missing column(s) {missing} (rule: training input contract)")
    dup = features["decision_id"].duplicated()
    if dup.any():
        r = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(
            f"table features: row {r}, column 'decision_id' is repeated (rule: one row per decision)"
        )
    features = features.reset_index(drop=True)
    label_cols = ["decision_id", "option_taken", "total_improvement_score", "safety_event"]
    label_cols += ["steroid_sparing"] if "steroid_sparing" in decisions.columns else []  # older feature tables lack it
    label_cols += [c for c in decisions.columns if c.startswith(ELIGIBLE_PREFIX)]
    merged = features[["decision_id"]].merge(
        decisions[label_cols], on="decision_id", how="left", validate="one_to_one", indicator=True
    )
    unmatched = merged["_merge"] != "both"
    if unmatched.any():
        r = int(np.flatnonzero(unmatched.to_numpy())[0])
        raise ValueError(
            f"table features: row {r}, column 'decision_id' has no row in decisions "
            f"(rule: every feature row has labels); {int(unmatched.sum())} such row(s)"
        )
    missing_option = merged["option_taken"].isna()
    if missing_option.any():
        r = int(np.flatnonzero(missing_option.to_numpy())[0])
        raise ValueError(
            f"table decisions: row for decision {merged['decision_id'].iloc[r]!r}, column 'option_taken' is "
            f"missing (rule: one of {list(catalog.names)}, or 'other' for a change outside the catalogue)"
        )

    source = eligibility_source(features, catalog, cfg.eligibility)
    cols = feature_columns(features)
    contract = FeatureContract(
        keys=tuple(k for k in KEY_COLUMNS if k in features.columns),
        columns=tuple(cols),
        dtypes=tuple(str(features[c].dtype) for c in cols),
        eligibility_source=source,
    )
    if source == "columns":  # eligibility is then part of the input contract: take it from decisions
        elig_input = pd.concat([features, merged.drop(columns=["decision_id", "_merge"])], axis=1)
    else:
        elig_input = features
    eligible_all, _ = eligibility_frames(elig_input, catalog, cfg.eligibility, source)
    if dictionary is not None:  # fail at train time, not at the first explained prediction
        from models.explain import feature_groups

        feature_groups(contract.columns, dictionary.reset_index(drop=True))
    X = contract.check(features)
    taken = merged["option_taken"].astype(str).to_numpy()
    counts = pd.Series(taken).value_counts()
    option_counts = {o: int(counts.get(o, 0)) for o in catalog.names}
    control = catalog.control
    arms = tuple(o for o in catalog.names if option_counts[o] >= cfg.min_rows_per_option or o == control)
    if option_counts[control] < cfg.min_rows_per_option:
        raise TrainingDataError(
            f"table decisions: control option {control!r} taken at {option_counts[control]} decision(s) "
            f"(rule: at least min_rows_per_option={cfg.min_rows_per_option})"
        )
    if len(arms) < 2:
        taken_most = ", ".join(f"{o} {int(n)}" for o, n in sorted(option_counts.items(), key=lambda kv: -kv[1])
                               if o != control and n > 0) or "none"
        raise TrainingDataError(
            f"table decisions: no option but {control!r} is taken at min_rows_per_option="
            f"{cfg.min_rows_per_option} decisions (others: {taken_most}); there is nothing to compare with "
            "continuing: train on more patients or lower train.min_rows_per_option")
    in_arms = np.isin(taken, arms)
    elig = eligible_all[list(arms)].to_numpy(dtype=bool, copy=True)  # written below (a one-column view is read-only)
    taken_codes = pd.Index(arms).get_indexer(taken)
    taken_ok = elig[np.arange(len(taken)), np.maximum(taken_codes, 0)] | ~in_arms
    # What a clinician did was possible: an option taken against the eligibility rules (a dose raised that the
    # record shows at target, the weight on file being older) is eligible at that decision, and counted.
    against_rules = np.flatnonzero(~taken_ok)
    elig[against_rules, taken_codes[against_rules]] = True
    groups = features["patient_id"].astype(str).to_numpy()
    tis = pd.to_numeric(merged["total_improvement_score"], errors="coerce").to_numpy(dtype=float)
    safety = pd.to_numeric(merged["safety_event"], errors="coerce").to_numpy(dtype=float)
    response = response_of(tis, features, cfg)
    margin = response_margin(tis, features, cfg)  # what the response thresholds, for learners that learn from it
    sparing = (pd.to_numeric(merged["steroid_sparing"], errors="coerce").to_numpy(dtype=float)
               if "steroid_sparing" in merged.columns else None)

    heads: dict[str, Head] = {}
    labelled: dict[str, int] = {}
    modifiers = {"effect_modifiers": {a: f for a, f in catalog.effect_modifiers().items() if a in arms}}
    response_kind: str = cfg.learner
    response_updates: dict[str, object] = dict(modifiers)
    selection_table = None
    if cfg.learner == AUTO:
        rows = np.flatnonzero(in_arms & np.isfinite(response))
        chosen, selection_table = select_response_learner(
            cfg, _learner_config(cfg, "binary", arms, 100, modifiers), X.iloc[rows].reset_index(drop=True),
            taken[rows], response[rows], groups[rows], elig[rows], margin[rows])
        response_kind = chosen.learner
        response_updates.update(chosen.updates())
    # the TIS head: the response's learner where it can model a score, else the modifier GLM with the chosen
    # candidate's settings (for the score GLM: a ridge of the TIS with its penalty, fitted on its own)
    tis_kind = cfg.tis_learner or (response_kind if "continuous" in LEARNERS[_KIND[response_kind]].outcomes
                                   else "modifier_glm")
    # (head, learner kind, outcome, labels, seed offset, learner settings, optional: too few labels leave it out)
    specs = (
        ("response", response_kind, "binary", response, 1, response_updates, False),
        ("tis", tis_kind, "continuous", tis, 2, response_updates if cfg.tis_learner is None else modifiers, False),
        ("safety", cfg.safety_learner, "binary", safety, 3, {}, False),
        *((("steroid_sparing", cfg.steroid_learner, "binary", sparing, 4, {}, True),) if sparing is not None else ()),
    )
    not_fitted: dict[str, str] = {}
    ic = cfg.interval_calibration
    for name, kind, outcome, y, offset, updates, optional in specs:
        rows = in_arms & np.isfinite(y)
        labelled[name] = int(rows.sum())
        idx = np.flatnonzero(rows)
        if optional and (len(idx) < cfg.min_rows_per_option or len(np.unique(y[idx])) < 2):
            # an optional outcome: too few labels, or one class only, leaves it out (said in the summary)
            not_fitted[name] = f"{len(idx)} labelled decision(s), outcomes {sorted(set(y[idx].tolist()))}"
            continue
        lcfg = _learner_config(cfg, outcome, arms, 100 * offset, updates)  # type: ignore[arg-type]
        inputs = (X.iloc[idx].reset_index(drop=True), taken[idx], y[idx], groups[idx], elig[idx])
        heads[name] = _fit_head(kind, cfg, lcfg, *inputs, seed_offset=100 * offset,
                                spread_from_outcomes=name != "response",
                                score=margin[idx] if name == "response" else None)
        if name == "tis" and "response" in heads and ic.enabled and ic.patient_spread:
            heads["response"].spread = _score_spread(kind, cfg, lcfg, *inputs)  # response = TIS over a threshold
    fit_rows = np.flatnonzero(in_arms)
    propensity = PropensityModel(arms, cfg.propensity).fit(
        X.iloc[fit_rows].reset_index(drop=True), taken[fit_rows], eligible=elig[fit_rows]
    )
    prop = propensity.predict_proba(X.iloc[fit_rows].reset_index(drop=True), elig[fit_rows])
    overlap = overlap_report(
        prop, elig[fit_rows], taken[fit_rows], arms=list(arms), threshold=cfg.propensity.positivity_threshold
    )
    summary: dict[str, object] = {
        "n_decisions": len(features),
        "n_patients": int(pd.Series(groups).nunique()),
        "learner": response_kind,
        "learner_settings": {k: v for k, v in response_updates.items() if k != "effect_modifiers"},
        "effect_modifiers": modifiers["effect_modifiers"],
        # the selection table without its timings: same inputs, same bytes
        "selection": [] if selection_table is None
        else selection_table.drop(columns="fit_seconds").round(4).to_dict(orient="records"),
        "option_counts": option_counts,
        "modelled_options": list(arms),
        "rows_unmodelled_option": int((~in_arms).sum()),
        "rows_option_outside_catalogue": int((~np.isin(taken, catalog.names)).sum()),
        "rows_taken_against_eligibility_rules": int(len(against_rules)),
        "labelled_rows": labelled,
        "heads_not_fitted": not_fitted,
        "unlabelled_rows": {k: int(in_arms.sum()) - v for k, v in labelled.items()},
        "response_rate": float(np.nanmean(response[in_arms])) if in_arms.any() else float("nan"),
        "eligibility_source": source,
        "interval_meaning": interval_meaning(cfg),
        "interval_calibration": {name: heads[name].bands.summary() for name in heads  # type: ignore[union-attr]
                                 if heads[name].bands is not None},
        "interval_patient_spread": {name: heads[name].spread.summary() for name in heads  # type: ignore[union-attr]
                                    if heads[name].spread is not None},
        "overlap": overlap.reset_index().to_dict(orient="records"),
    }
    return EscalateModel(
        config=cfg,
        catalog=catalog,
        contract=contract,
        arms=arms,
        heads=heads,
        propensity=propensity,
        summary=summary,
        dictionary=None if dictionary is None else dictionary.reset_index(drop=True),
        data_settings=data_settings,
    )

