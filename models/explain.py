"""SHAP explanations of every per-option prediction, grouped into the clinical features a clinician reads.

Three explanations per row and option, each exactly additive on the scale the model computes:
- `response`: the response model's output for that option (log-odds margin for tree/linear learners;
  the probability for the DR learner, whose arms are control probability + a probability-scale effect);
- `safety`: the same for the safety model;
- `contrast`: the option against the control option ("continue"): SHAP(arm) - SHAP(control) for S/T/linear
  learners (additive on the margin difference), TreeSHAP of the effect model for the DR learner.

Trees use xgboost's native exact TreeSHAP (`pred_contribs=True`); the linear baseline uses exact linear SHAP,
coef x (z - mean z) on its standardised design. Contributions are converted to probability points by
sharing the probability change (final, possibly calibrated, probability at x minus the probability at the base
value) in proportion to each feature's margin contribution, so the points add up to the shown probability too.
SHAP says which facts moved this model's prediction; it is not a causal effect of the facts.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import xgboost as xgb

from features.vocabulary import Vocabulary

Target = Literal["response", "safety", "contrast", "safety_contrast"]
Scale = Literal["log_odds", "probability", "value"]

#: the S-learner's option columns (`models.learners.OPTION_PREFIX`) group into one pseudo-feature.
OPTION_PREFIX = "option__"
OPTION_GROUP = "option_chosen"
OPTION_LABEL = "the option itself"
#: how a reason names the S-learner's option group: its share against the average over options (a prediction's
#: reasons) or, in a contrast with continuing, for a patient like the average one.
OPTION_REASON = {"reason": "the option itself, against the average over all options",
                 "contrast_reason": "the option itself, for a patient like the average one"}
#: how an explanation says what it explains (shown next to the numbers on the page and in the batch output).
CALIBRATION_NOTE = (
    "SHAP values explain the model's uncalibrated margin exactly; the probability points share the calibrated "
    "probability change in proportion to them, so they add up to the probability shown."
)


# --- exact SHAP of one model ------------------------------------------------------------------------------------
def tree_shap(
    model: xgb.XGBModel | xgb.Booster, X: pd.DataFrame | xgb.DMatrix
) -> tuple[np.ndarray, np.ndarray]:
    """Exact TreeSHAP via xgboost's native `pred_contribs`: (values (n, p) float64, base (n,)) in margin space.

    base + values.sum(1) equals `predict(X, output_margin=True)` (the log-odds for a binary classifier).
    """
    booster = model.get_booster() if isinstance(model, xgb.XGBModel) else model
    dm = X if isinstance(X, xgb.DMatrix) else _dmatrix(X)
    contribs = np.asarray(booster.predict(dm, pred_contribs=True, validate_features=False), dtype="float64")
    if contribs.ndim != 2:
        raise ValueError(
            f"model: pred_contribs returned shape {contribs.shape} (rule: one output per row; multi-class "
            "models are not supported)"
        )
    return contribs[:, :-1], contribs[:, -1]


def _dmatrix(frame: pd.DataFrame) -> xgb.DMatrix:
    """A DMatrix of a numeric feature frame (float32 as xgboost uses internally, NaN = missing)."""
    values = np.ascontiguousarray(frame.to_numpy(dtype="float32", na_value=np.nan))
    # small inputs (one patient): a single thread avoids thread start-up costing more than the work
    nthread = 1 if len(values) < 5000 else -1
    return xgb.DMatrix(values, feature_names=[str(c) for c in frame.columns], missing=np.nan, nthread=nthread)


def linear_shap(
    weights: np.ndarray, intercept: float, z: np.ndarray, z_mean: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact SHAP of a linear model w.z + b with independent features: w_j (z_j - E z_j); base = b + w.E z."""
    w = np.asarray(weights, dtype="float64").ravel()
    zm = np.zeros_like(w) if z_mean is None else np.asarray(z_mean, dtype="float64").ravel()
    values = w[None, :] * (np.asarray(z, dtype="float64") - zm[None, :])
    base = np.full(len(values), float(intercept) + float(w @ zm))
    return values, base


# --- explanations of a learner ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shap:
    """One explained output for every row: `base + values.sum(1) == output` on `scale`.

    `probability` is the probability shown to the user (after calibration when a calibrator was given) and
    `probability_base` the same function at the base value; both None for a continuous outcome.
    """

    target: str
    option: str
    scale: Scale
    columns: tuple[str, ...]
    values: np.ndarray
    base: np.ndarray
    output: np.ndarray
    probability: np.ndarray | None = None
    probability_base: np.ndarray | None = None
    note: str = ""

    def rows(self, index: Sequence[int] | np.ndarray) -> Shap:
        """The same explanation of the rows at `index` only (positions, in that order)."""
        idx = np.asarray(index)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):  # a boolean mask is no list of positions
            raise ValueError("explanation rows: give row positions (integers), not a mask (rule: positions)")
        idx = idx.astype(np.int64)

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return replace(self, values=self.values[idx], base=self.base[idx], output=self.output[idx],
                       probability=pick(self.probability), probability_base=pick(self.probability_base))

    def points(self) -> np.ndarray:
        """Contributions in probability units (fractions: 0.06 = 6 in 100) that add up to
        probability - probability_base; the values themselves on a probability or value scale."""
        if self.probability is None or self.probability_base is None:
            return self.values
        dm = self.output - self.base
        dp = self.probability - self.probability_base
        small = np.abs(dm) <= 1e-9
        if self.scale == "log_odds":
            p_mid = _sigmoid((self.output + self.base) / 2)
            fallback = p_mid * (1 - p_mid)
        else:
            fallback = np.ones_like(dm)
        slope = np.where(small, fallback, dp / np.where(small, 1.0, dm))
        return self.values * slope[:, None]


@dataclass(frozen=True)
class Explanations:
    """Every explanation of a batch of rows, keyed by (target, option); `arms` in the learner's order."""

    items: dict[tuple[str, str], Shap]
    arms: tuple[str, ...]
    control: str
    learner: str
    n_rows: int
    notes: tuple[str, ...] = field(default=())

    def get(self, target: str, option: str) -> Shap | None:
        return self.items.get((target, option))

    def rows(self, index: Sequence[int] | np.ndarray) -> Explanations:
        """The same explanations of the rows at `index` only, in that order (one page's share of a batch)."""
        return replace(self, items={key: s.rows(index) for key, s in self.items.items()}, n_rows=len(index))


Calibrator = Callable[[str, np.ndarray], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype="float64")))


def learner_kind(learner: object) -> str:
    """'s', 't', 'dr' or 'linear' from the fitted attributes described in `models.learners`."""
    if hasattr(learner, "effect_models_"):
        return "dr"
    if hasattr(learner, "models_"):
        return "t"
    if hasattr(learner, "preprocess_"):
        return "linear"
    if hasattr(learner, "model_") and hasattr(learner, "design"):
        return "s"
    raise TypeError(
        f"{type(learner).__name__}: not a fitted learner from models.learners (rule: fit it first; S, T, DR "
        "and linear learners are explainable)"
    )


def explain_learner(
    learner: object,
    X: pd.DataFrame,
    *,
    target: Literal["response", "safety"] = "response",
    options: Sequence[str] | None = None,
    calibrator: Calibrator | None = None,
    contrasts: bool = True,
) -> dict[tuple[str, str], Shap]:
    """Exact SHAP of a fitted learner's prediction for each option (and, with `contrasts`, of each option
    against the learner's control option), keyed by (target or f"{target}_contrast" -> "contrast", option).

    `calibrator(option, p)` maps raw probabilities to the calibrated ones the user sees; SHAP still explains
    the raw margin exactly, and `Shap.points()` shares the calibrated change.
    """
    if hasattr(learner, "base_") and hasattr(learner, "calibrators_"):  # models.calibration.CalibratedLearner
        calibrator = calibrator or _arm_calibrator(learner.calibrators_)  # type: ignore[attr-defined]
        learner = learner.base_  # type: ignore[attr-defined]
    kind = learner_kind(learner)
    arms: tuple[str, ...] = tuple(learner.arms_)  # type: ignore[attr-defined]
    control: str = learner.control  # type: ignore[attr-defined]
    wanted = list(arms if options is None else options)
    unknown = [o for o in wanted if o not in arms]
    if unknown:
        raise ValueError(
            f"options {unknown}: not arms of the {target} learner {list(arms)} (rule: explain fitted arms)"
        )
    frame = learner._frame(X)  # type: ignore[attr-defined]  # checks columns against those seen at fit
    binary = learner.outcome == "binary"  # type: ignore[attr-defined]
    contrast_name = "contrast" if target == "response" else f"{target}_contrast"
    need = list(dict.fromkeys([*wanted, control])) if contrasts else wanted
    out: dict[tuple[str, str], Shap] = {}

    def finish(
        option: str, columns: Sequence[str], values: np.ndarray, base: np.ndarray, scale: Scale
    ) -> Shap:
        output = base + values.sum(axis=1)
        prob = prob_base = None
        note = ""
        if binary:
            if scale == "log_odds":
                prob, prob_base = _sigmoid(output), _sigmoid(base)
            else:  # DR arms: control probability + effect, clipped to [0, 1] as the learner predicts
                prob, prob_base = np.clip(output, 0.0, 1.0), np.clip(base, 0.0, 1.0)
            if calibrator is not None:
                prob, prob_base = calibrator(option, prob), calibrator(option, prob_base)
                note = CALIBRATION_NOTE
        return Shap(target, option, scale, tuple(columns), values, base, output, prob, prob_base, note)

    if kind in ("t", "s"):
        if kind == "t":
            dm = _dmatrix(frame)
            raw = {a: tree_shap(learner.models_[a], dm) for a in need}  # type: ignore[attr-defined]
            columns = list(frame.columns)
        else:
            # every arm's design stacked into one matrix: one TreeSHAP call instead of one per option
            n = len(frame)
            codes = np.repeat(np.asarray([arms.index(a) for a in need]), n)
            design = learner._design(pd.concat([frame] * len(need), ignore_index=True), codes)  # type: ignore[attr-defined]
            v_all, b_all = tree_shap(learner.model_, design)  # type: ignore[attr-defined]
            raw = {a: (v_all[i * n : (i + 1) * n], b_all[i * n : (i + 1) * n]) for i, a in enumerate(need)}
            columns = list(design.columns)
        scale: Scale = "log_odds" if binary else "value"
        for a in wanted:
            out[(target, a)] = finish(a, columns, raw[a][0], raw[a][1], scale)
        if contrasts:
            ctrl = out.get((target, control)) or finish(control, columns, *raw[control], scale)
            for a in wanted:
                if a != control:
                    out[(contrast_name, a)] = _contrast(out[(target, a)], ctrl, contrast_name)
    elif kind == "linear":
        columns = list(frame.columns)
        scale = "log_odds" if binary else "value"
        z = learner.preprocess_.transform(frame)  # type: ignore[attr-defined]  # one design for every option
        parts = {a: _linear_arm_shap(learner, frame, a, z) for a in need}
        if getattr(learner, "trees_", None) is not None:  # a score GLM with trees on the score
            columns, parts = _with_score_trees(learner, frame, need, parts)
        shaps = {a: finish(a, columns, *parts[a], scale) for a in need}
        for a in wanted:
            out[(target, a)] = shaps[a]
        if contrasts:
            for a in wanted:
                if a != control:
                    out[(contrast_name, a)] = _contrast(shaps[a], shaps[control], contrast_name)
    else:  # doubly robust: control outcome model + per-option effect models on the outcome scale
        dm = _dmatrix(frame)
        columns = list(frame.columns)
        v_c, b_c = tree_shap(learner.models_[control], dm)  # type: ignore[attr-defined]
        if binary:
            ctrl = finish(control, columns, v_c, b_c, "log_odds")
            ctrl_points = Shap(
                target,
                control,
                "log_odds",
                ctrl.columns,
                v_c,
                b_c,
                ctrl.output,
                _sigmoid(ctrl.output),
                _sigmoid(b_c),
            ).points()
            ctrl_prob_base = _sigmoid(b_c)
        else:
            ctrl = finish(control, columns, v_c, b_c, "value")
            ctrl_points, ctrl_prob_base = v_c, b_c
        effects = {a: tree_shap(learner.effect_models_[a], dm) for a in need if a != control}  # type: ignore[attr-defined]
        for a in wanted:
            if a == control:
                out[(target, a)] = ctrl
                continue
            v_e, b_e = effects[a]
            # arm = P(control) + effect: probability points of the control model plus the effect's SHAP.
            out[(target, a)] = finish(
                a, columns, ctrl_points + v_e, ctrl_prob_base + b_e, "probability" if binary else "value"
            )
            if contrasts:
                out[(contrast_name, a)] = Shap(
                    contrast_name,
                    a,
                    "probability" if binary else "value",
                    tuple(columns),
                    v_e,
                    b_e,
                    b_e + v_e.sum(axis=1),
                )
    return out


def _arm_calibrator(calibrators: dict[str, object]) -> Calibrator:
    """A `Calibrator` from a CalibratedLearner's per-arm calibrators (None = left uncalibrated)."""

    def calibrate(option: str, p: np.ndarray) -> np.ndarray:
        cal = calibrators.get(option)
        return p if cal is None else np.asarray(cal.predict(np.asarray(p, dtype="float64")), dtype="float64")

    return calibrate


def _contrast(arm: Shap, control: Shap, name: str) -> Shap:
    """SHAP(arm) - SHAP(control): exactly additive on the margin difference; probabilities as differences."""
    prob = prob_base = None
    if arm.probability is not None and control.probability is not None:
        prob = arm.probability - control.probability
        prob_base = arm.probability_base - control.probability_base  # type: ignore[operator]
    return Shap(
        name,
        arm.option,
        arm.scale,
        arm.columns,
        arm.values - control.values,
        arm.base - control.base,
        arm.output - control.output,
        prob,
        prob_base,
        arm.note,
    )


def contrast_points(contrast: Shap) -> np.ndarray:
    """Probability points of a contrast: the probability difference shared in proportion to the margin
    contributions (a contrast's probabilities are differences, so `Shap.points` cannot use a sigmoid slope)."""
    if contrast.scale != "log_odds" or contrast.probability is None:
        return contrast.values
    dm = contrast.output - contrast.base
    dp = contrast.probability - contrast.probability_base  # type: ignore[operator]
    small = np.abs(dm) < 1e-9
    slope = np.where(small, 0.25, dp / np.where(small, 1.0, dm))
    return contrast.values * slope[:, None]


def _with_score_trees(learner: object, frame: pd.DataFrame, arms: Sequence[str],
                      linear: dict[str, tuple[np.ndarray, np.ndarray]]
                      ) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """SHAP of a score GLM whose log-odds average the linear model's (weight 1 − w) with the linked trees' (w ×
    (slope × trees + intercept)): SHAP is linear in the model, so each option's values are the weighted sum of the
    linear SHAP (on the feature columns) and the trees' SHAP (on their design: features, option x modifier terms,
    options), over the trees' design columns.

    The trees are explained against the average training patient under the same option (interventional TreeSHAP
    with that one reference row): their option columns are equal on both sides and get nothing, so the baseline
    holds the option's effect for the average patient and the reasons are this patient's facts — as the linear
    model's intercept and option offset are its baseline. (Path-dependent TreeSHAP would give the option columns
    half of every interaction the trees found, and the page would show it as the average effect.)"""
    trees = learner.trees_  # type: ignore[attr-defined]
    link = learner.trees_link_  # type: ignore[attr-defined]
    reference = learner.trees_reference_  # type: ignore[attr-defined]
    w, slope, intercept = float(link["weight"]), float(link["slope"]), float(link["intercept"])
    p = frame.shape[1]
    out = {}
    columns: list[str] = []
    for a in arms:
        k = trees.arms_.index(a)
        design = trees._design(frame, np.full(len(frame), k)).astype("float64")
        explainer = _reference_explainer(trees, reference, k)
        tree_values = np.asarray(explainer.shap_values(design), dtype="float64")
        values = w * slope * tree_values
        values[:, :p] += (1 - w) * linear[a][0]
        base = (1 - w) * linear[a][1] + w * (slope * float(np.ravel(explainer.expected_value)[0]) + intercept)
        out[a] = (values, base)
        columns = list(design.columns)
    return columns, out


#: fitted trees -> (their booster, the reference frame, {option index: interventional explainer}); weak, so a model
#: that is gone takes its explainers with it. shap parses the whole booster on every TreeExplainer it builds (most of
#: a page's time and of a batch's per-chunk cost), and the explainer depends only on the booster and the reference.
_REFERENCE_EXPLAINERS: weakref.WeakKeyDictionary[object, tuple[object, pd.DataFrame, dict[int, object]]] = (
    weakref.WeakKeyDictionary())


def _reference_explainer(trees: object, reference: pd.DataFrame, k: int) -> Any:
    """The interventional TreeExplainer of fitted S-learner `trees` against the one `reference` row under option
    index `k`, built once per booster, reference and option (a refit, even in place, gets new ones)."""
    import shap

    booster = trees.model_  # type: ignore[attr-defined]
    cached = _REFERENCE_EXPLAINERS.get(trees)
    if cached is None or cached[0] is not booster or cached[1] is not reference:
        cached = (booster, reference, {})
        _REFERENCE_EXPLAINERS[trees] = cached
    explainers = cached[2]
    if k not in explainers:
        background = trees._design(reference, np.full(1, k)).astype("float64")  # type: ignore[attr-defined]
        explainers[k] = shap.TreeExplainer(booster, data=background, feature_perturbation="interventional")
    return explainers[k]


def _linear_arm_shap(learner: object, frame: pd.DataFrame, arm: str, z: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Exact linear SHAP of a linear learner (`LinearLearner`, `ModifierGLM`) for one option, mapped back from
    its standardised design `z` (features plus missing-indicators: `preprocess_.transform(frame)`, computed once
    for all options by the caller) to the original feature columns."""
    if z is None:
        z = learner.preprocess_.transform(frame)  # type: ignore[attr-defined]
    intercept = float(np.ravel(learner.model_.intercept_)[0])  # type: ignore[attr-defined]
    d = z.shape[1]
    w, offset = learner.arm_weights(arm)  # type: ignore[attr-defined]
    # StandardScaler centres the training design, so E[z] = 0: the base value is the intercept + the option's
    # average effect (its offset), and every contribution is one of this patient's facts.
    values_z, base = linear_shap(w, intercept + offset, z)
    p = frame.shape[1]
    values = values_z[:, :p].copy()
    imputer = learner.preprocess_.named_steps["impute"]  # type: ignore[attr-defined]
    indicator = getattr(imputer, "indicator_", None)
    if indicator is not None and d > p:
        np.add.at(values.T, np.asarray(indicator.features_), values_z[:, p:].T)
    return values, base


def explain(
    X: pd.DataFrame,
    response: object,
    *,
    safety: object | None = None,
    options: Sequence[str] | None = None,
    response_calibrator: Calibrator | None = None,
    safety_calibrator: Calibrator | None = None,
) -> Explanations:
    """Every explanation the page and the batch job show: response, contrast vs control, safety (and its
    contrast) for each option; `options` defaults to the response learner's arms."""
    arms = tuple(response.arms_)  # type: ignore[attr-defined]
    opts = list(arms if options is None else options)
    items = explain_learner(response, X, target="response", options=opts, calibrator=response_calibrator)
    notes = {s.note for s in items.values() if s.note}
    if safety is not None:
        s_arms = set(safety.arms_)  # type: ignore[attr-defined]
        s_items = explain_learner(
            safety, X, target="safety", options=[o for o in opts if o in s_arms], calibrator=safety_calibrator
        )
        items.update(s_items)
        notes |= {s.note for s in s_items.values() if s.note}
    return Explanations(
        items,
        arms,
        str(response.control),
        learner_kind(getattr(response, "base_", response)),
        len(X),  # type: ignore[attr-defined]
        tuple(sorted(notes)),
    )


# --- clinical grouping and plain-words reasons ------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureGroups:
    """Model columns grouped into clinical features: `membership` (p, g) 0/1, group names and labels, and
    each column's label and unit for the patient-value text."""

    columns: tuple[str, ...]
    groups: tuple[str, ...]
    group_labels: tuple[str, ...]
    membership: np.ndarray
    column_labels: tuple[str, ...]
    column_units: tuple[str, ...]
    column_group: np.ndarray

    def group(self, values: np.ndarray) -> np.ndarray:
        """(n, p) per-column contributions -> (n, g) per clinical feature (sums, so additivity is kept)."""
        return np.asarray(values, dtype="float64") @ self.membership

    @cached_property
    def member_table(self) -> np.ndarray:
        """(groups, largest group size) member column indices in column order, padded with -1."""
        counts = np.bincount(self.column_group, minlength=len(self.groups))
        table = np.full((len(self.groups), max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
        by_group = np.argsort(self.column_group, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(len(by_group)) - np.repeat(starts, counts)
        table[self.column_group[by_group], slot] = by_group
        return table

    @cached_property
    def is_option_group(self) -> np.ndarray:
        """(groups,) True for the S-learner's option pseudo-feature."""
        return np.asarray([g == OPTION_GROUP for g in self.groups], dtype=bool)

    @cached_property
    def column_formats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per column, computed once: unit format kind (int8), the text after the number and the text before
        it ("latest CDASI activity = "): the templates every worded reason is filled from."""
        kinds, suffixes = _unit_formats(self.column_units)
        prefixes = np.asarray([f"{label} = " for label in self.column_labels] or [""], dtype=object)
        return kinds, suffixes, prefixes[: len(self.column_labels)]


DICTIONARY_COLUMNS = ("feature", "clinical_feature", "label", "unit")


def feature_groups(columns: Sequence[str], dictionary: pd.DataFrame) -> FeatureGroups:
    """Group model columns by the dictionary's `clinical_feature`; S-learner option columns form one group.

    A model column missing from the dictionary is an error naming it (every reason must read clinically).
    """
    missing_cols = [c for c in DICTIONARY_COLUMNS if c not in dictionary.columns]
    if missing_cols:
        raise ValueError(
            f"table feature_dictionary: missing column(s) {missing_cols} (rule: {list(DICTIONARY_COLUMNS)})"
        )
    dup = dictionary["feature"][dictionary["feature"].duplicated()]
    if len(dup):
        raise ValueError(
            f"table feature_dictionary: row {int(dup.index[0])}, column feature: {dup.iloc[0]!r} appears twice "
            "(rule: one entry per feature)"
        )
    d = dictionary.set_index("feature")
    model_cols = [str(c) for c in columns]
    # an S-learner's option x effect-modifier term (`option__<arm>:<feature>`) is a fact of the patient: it
    # counts toward its feature, never toward the option itself
    cols = [c.split(":", 1)[1] if c.startswith(OPTION_PREFIX) and ":" in c else c for c in model_cols]
    unknown = [c for c in cols if c not in d.index and not c.startswith(OPTION_PREFIX)]
    if unknown:
        raise ValueError(
            f"table feature_dictionary: no entry for model column(s) {unknown[:10]}"
            f"{' and more' if len(unknown) > 10 else ''} (rule: every model feature has a clinical label)"
        )
    group_of: list[str] = []
    labels: list[str] = []
    units: list[str] = []
    # only the fields wording needs, column by column (a row-wise to_dict of the long descriptions costs more than
    # everything else here: a page groups once per option and target)
    fields = [f for f in ("clinical_feature", "label", "unit", "target_text") if f in d.columns]
    records = {feature: dict(zip(fields, values, strict=True))
               for feature, *values in zip(d.index.tolist(), *(d[f].tolist() for f in fields), strict=True)}
    for c in cols:
        if c.startswith(OPTION_PREFIX):
            group_of.append(OPTION_GROUP)
            labels.append(c[len(OPTION_PREFIX) :].replace("_", " "))
            units.append("flag")
        else:
            row = records[c]
            cf = row["clinical_feature"]
            group_of.append(str(cf) if isinstance(cf, str) and cf else c)
            label = str(row["label"]) if isinstance(row["label"], str) and row["label"] else c
            unit = str(row["unit"]) if isinstance(row["unit"], str) else ""
            if "fraction" in unit:  # "IVIG dose as a fraction of target" -> "IVIG dose = 50 % of target (...)"
                label = label.replace(" as a fraction of target", "")
                target = row.get("target_text")
                if isinstance(target, str) and target:
                    unit = f"{unit} {target}"
            labels.append(label)
            units.append(unit)
    groups = tuple(dict.fromkeys(group_of))
    index = {g: i for i, g in enumerate(groups)}
    col_group = np.array([index[g] for g in group_of], dtype=np.int64)
    membership = np.zeros((len(cols), len(groups)))
    membership[np.arange(len(cols)), col_group] = 1.0
    group_labels = []
    for g in groups:
        if g == OPTION_GROUP:
            group_labels.append(OPTION_LABEL)
        elif g in records and isinstance(records[g]["label"], str):
            group_labels.append(str(records[g]["label"]))
        else:
            group_labels.append(g.replace("_", " "))
    return FeatureGroups(
        tuple(model_cols), groups, tuple(group_labels), membership, tuple(labels), tuple(units), col_group
    )


#: units that mark a yes/no indicator (compared lower-case).
FLAG_UNITS = frozenset({"0/1", "flag", "yes/no", "boolean", "bool", "indicator"})
_PLAIN, _FLAG, _FRACTION = 0, 1, 2


def _unit_format(unit: str) -> tuple[int, str]:
    """How a value in `unit` is worded: (kind, text after the number). Fractions of target read as '%'
    ('fraction of target' -> '% of target'), flags as yes/no, anything else as number + ' ' + unit."""
    lower = unit.lower()
    if "fraction" in lower:
        return _FRACTION, " " + unit.replace("fraction of", "% of").replace("fraction", "%")
    if lower in FLAG_UNITS:
        return _FLAG, ""
    # a count reads as the bare number ("lines of therapy so far = 6", never "= 6 count"), with what it counts
    # where the unit says ("count (days with an event)" → "1 (days with an event)")
    if lower.startswith("count (") and unit.endswith(")"):
        return _PLAIN, " " + unit[len("count "):]
    return _PLAIN, "" if lower in ("", "count") else " " + unit


def _unit_formats(units: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: the format kind (int8) and the suffix (object) from `_unit_format`."""
    pairs = [_unit_format(u) for u in units]
    kinds = np.fromiter((k for k, _ in pairs), dtype=np.int8, count=len(pairs))
    return kinds, np.asarray([s for _, s in pairs] or [""], dtype=object)[: len(pairs)]


def _format_unique(x: np.ndarray, template: str) -> np.ndarray:
    """`template % value` for every value, formatting each distinct value once (object array)."""
    if len(x) == 0:
        return np.empty(0, dtype=object)
    uniq, inverse = np.unique(x, return_inverse=True)
    return np.asarray([template % u for u in uniq.tolist()], dtype=object)[inverse.ravel()]


def _value_text(v: np.ndarray, kind: np.ndarray, suffix: np.ndarray) -> np.ndarray:
    """Patient values as words from each cell's unit format (kind, suffix): see `format_value`."""
    out = np.empty(len(v), dtype=object)
    missing = np.isnan(v)
    out[missing] = "not recorded"
    flag = (kind == _FLAG) & ~missing
    out[flag] = np.where(v[flag] > 0.5, "yes", "no")
    for mask, integer in (((kind == _FRACTION) & ~missing, True), ((kind == _PLAIN) & ~missing, False)):
        if mask.any():
            number = _fmt(v[mask] * 100 if integer else v[mask], integer=integer)
            out[mask] = [a + b for a, b in zip(number.tolist(), suffix[mask].tolist(), strict=True)]
    return out


def format_value(values: np.ndarray, units: np.ndarray) -> np.ndarray:
    """The patient's value as a clinician reads it: fractions of target as %, flags as yes/no, missing as
    'not recorded', numbers to 3 significant figures with their unit."""
    v = np.asarray(values, dtype="float64")
    u = np.asarray(units, dtype=object).astype(str)
    distinct, inverse = np.unique(u, return_inverse=True)
    kinds, suffixes = _unit_formats(distinct.tolist())
    return _value_text(v, kinds[inverse.ravel()], suffixes[inverse.ravel()])


def _fmt(v: np.ndarray, *, integer: bool = False) -> np.ndarray:
    """Numbers for reading (object array of str): integers without decimals, else up to 3 significant figures;
    each distinct number is formatted once."""
    if integer:
        return _format_unique(np.round(v).astype(np.int64), "%d")
    r = np.where(np.abs(v) >= 100, np.round(v), np.round(v, 1))
    whole = np.isclose(r, np.round(r))
    out = np.empty(len(v), dtype=object)
    out[whole] = _format_unique(np.round(r[whole]).astype(np.int64), "%d")
    out[~whole] = _format_unique(v[~whole], "%.3g")
    return out


def format_points(points: np.ndarray) -> np.ndarray:
    """Probability points as '+6 in 100' / '−6 in 100' (a true minus sign); '<1 in 100' when it rounds to 0."""
    x = np.asarray(points, dtype="float64")
    p = np.round(x * 100).astype(np.int64)
    body = _format_unique(np.abs(p), "%d in 100")
    signed = np.where(p > 0, "+", "\u2212").astype(object) + body
    tiny = np.where(x >= 0, "+<1 in 100", "\u2212<1 in 100")
    return np.where(p == 0, tiny, signed)


def grouped_frame(
    shap: Shap, groups: FeatureGroups, *, row: int, points: np.ndarray | None = None
) -> pd.DataFrame:
    """One row's explanation per clinical feature, largest |contribution| first: group, label, contribution
    (on the model's scale), points (probability points) — what a waterfall draws."""
    if tuple(shap.columns) != groups.columns:
        raise ValueError("explanation and feature groups cover different model columns (rule: same model)")
    pts = shap.points() if points is None else points
    contrib = groups.group(shap.values[row : row + 1])[0]
    pgroup = groups.group(pts[row : row + 1])[0]
    frame = pd.DataFrame(
        {"group": groups.groups, "label": groups.group_labels, "contribution": contrib, "points": pgroup}
    )
    order = np.argsort(-np.abs(contrib), kind="stable")
    return frame.iloc[order].reset_index(drop=True)


def _top_k(grouped: np.ndarray, k: int) -> np.ndarray:
    """(n, k) column indices of the k largest |values| per row, largest first; ties go to the lower index and
    NaN comes last, exactly as a stable argsort of -|values| (k argmax passes: O(n g k), no full sort)."""
    key = np.abs(grouped)
    key[np.isnan(key)] = -1.0
    rows = np.arange(len(key))
    order = np.empty((len(key), k), dtype=np.int64)
    for i in range(k):
        order[:, i] = j = key.argmax(axis=1)
        key[rows, j] = -2.0
    return order


def _choose(
    shap: Shap, groups: FeatureGroups, k: int, points: np.ndarray | None, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-k reasons of every row as numbers, before any wording: (n, k) clinical-feature (group) index,
    the member column whose value is shown, and the group's contribution (probability points or the outcome's
    units). Grouped SHAP is one product with the 0/1 membership matrix; `values` are the rows' feature values
    (`_feature_values`)."""
    pts = shap.points() if points is None else points
    grouped = groups.group(pts)
    # the S-learner's option group is the option's average effect, no fact of this patient: never a reason
    grouped = np.where(groups.is_option_group[None, :], 0.0, grouped)
    order = _top_k(grouped, min(k, int((~groups.is_option_group).sum()) or grouped.shape[1]))
    contrib = np.take_along_axis(grouped, order, axis=1)
    # Within a group, the member column that moved the prediction most gives the value shown (first on ties), a
    # recorded one before any that is not: "on abatacept = no", never "months on abatacept = not recorded".
    col_pts = np.abs(pts)
    recorded = np.zeros(pts.shape, dtype=bool)
    recorded[:, : values.shape[1]] = np.isfinite(values)
    head = float(np.nanmax(col_pts, initial=0.0)) + 1.0  # a recorded member outranks every unrecorded one
    rank = np.where(np.isnan(col_pts), 0.0, col_pts) + head * recorded
    rows = np.arange(len(pts))
    table = groups.member_table  # (g, largest group size), padded with -1
    best = np.empty_like(order)
    for i in range(order.shape[1]):
        cand = table[order[:, i]]
        moved = np.where(cand >= 0, rank[rows[:, None], np.maximum(cand, 0)], -1.0)
        best[:, i] = cand[rows, np.argmax(moved, axis=1)]
    return order, best, contrib


def _effect_tails(contrib: np.ndarray, probability_scale: bool, suffix: str) -> np.ndarray:
    """' → +6 in 100' (`format_points`; ' → +1.2' in the outcome's own units) plus `suffix`, per cell (object);
    each distinct effect is worded once."""
    flat = np.asarray(contrib, dtype="float64").ravel()
    arrow = " \u2192 "
    if not probability_scale:
        return _format_unique(flat, f"{arrow}%+.3g{suffix.replace('%', '%%')}")
    p = np.round(flat * 100).astype(np.int64)
    uniq, inverse = np.unique(p, return_inverse=True)
    words = [
        f"{arrow}{'+' if positive else chr(0x2212)}{size} in 100{suffix}"
        for positive, size in zip((uniq > 0).tolist(), np.abs(uniq).tolist(), strict=True)
    ]
    out = np.asarray(words, dtype=object)[inverse.ravel()]
    zero = p == 0
    out[zero] = np.where(flat[zero] >= 0, f"{arrow}+<1 in 100{suffix}", f"{arrow}\u2212<1 in 100{suffix}")
    return out


def _facts(values: np.ndarray, groups: FeatureGroups, cells: np.ndarray) -> np.ndarray:
    """'latest CDASI activity = 28 score (0-100)' for flat cell ids (row * columns + column), each distinct
    cell worded once (object array aligned with `cells`)."""
    uniq, inverse = np.unique(cells, return_inverse=True)
    p = len(groups.columns)
    rows, cols = np.divmod(uniq, p)
    if values.shape[1]:
        v = values[rows, np.minimum(cols, values.shape[1] - 1)]
        v[cols >= values.shape[1]] = np.nan  # option columns (not in X)
    else:
        v = np.full(len(uniq), np.nan)
    kinds, suffixes, prefixes = groups.column_formats
    text = _value_text(v, kinds[cols], suffixes[cols])
    words = [a + b for a, b in zip(prefixes[cols].tolist(), text.tolist(), strict=True)]
    return np.asarray(words, dtype=object)[inverse.ravel()]


def _reason_texts(facts: np.ndarray, tails: np.ndarray, is_option: np.ndarray, prefix: str) -> np.ndarray:
    """Fact + effect per cell; the S-learner's option group (only when a model has nothing else) is worded as
    `OPTION_REASON[prefix]`."""
    facts = np.where(is_option, OPTION_REASON.get(prefix, OPTION_LABEL), facts)
    return np.asarray([a + b for a, b in zip(facts.tolist(), tails.tolist(), strict=True)], dtype=object)


def _feature_values(X: pd.DataFrame, groups: FeatureGroups) -> np.ndarray:
    """X's model feature columns (the S-learner's option columns come last and are not in X) as float64."""
    m = _n_feature_cols(groups)
    if not m:
        return np.empty((len(X), 0))
    return X[list(groups.columns[:m])].to_numpy(dtype="float64", na_value=np.nan)


def top_reasons(
    shap: Shap,
    X: pd.DataFrame,
    groups: FeatureGroups,
    k: int,
    *,
    points: np.ndarray | None = None,
    prefix: str = "reason",
    suffix: str = "",
) -> pd.DataFrame:
    """The k clinical features that moved this prediction most, per row (vectorised over rows):
    `{prefix}_{i}_feature`, `{prefix}_{i}_text` ("CDASI activity = 28 → −6 in 100") and
    `{prefix}_{i}_contribution` (probability points as a fraction, or the outcome's own units)."""
    n = len(X)
    if shap.values.shape[0] != n:
        raise ValueError(f"explanation has {shap.values.shape[0]} rows but X has {n} (rule: same rows)")
    values = _feature_values(X, groups)
    order, best, contrib = _choose(shap, groups, k, points, values)
    k_eff = order.shape[1]
    cells = (np.arange(n)[:, None] * len(groups.columns) + best).ravel()
    is_option = groups.is_option_group[order].ravel()
    tails = _effect_tails(contrib, shap.scale in ("log_odds", "probability"), suffix)
    text = _reason_texts(_facts(values, groups, cells), tails, is_option, prefix)
    text = text.reshape(n, k_eff)
    names = np.asarray(groups.groups, dtype=object)[order]
    out: dict[str, np.ndarray] = {}
    for i in range(k_eff):
        out[f"{prefix}_{i + 1}_feature"] = names[:, i]
        out[f"{prefix}_{i + 1}_text"] = text[:, i]
        out[f"{prefix}_{i + 1}_contribution"] = contrib[:, i]
    return pd.DataFrame(out, index=X.index)


def _n_feature_cols(groups: FeatureGroups) -> int:
    """Columns that are features of X (the S-learner's option columns come last and are not in X)."""
    return sum(1 for c in groups.columns if not c.startswith(OPTION_PREFIX)) or 0


def reason_columns(k: int, prefix: str = "reason") -> list[str]:
    """The structured reason columns for top-k reasons, in output order."""
    return [f"{prefix}_{i}_{part}" for i in range(1, k + 1) for part in ("feature", "text", "contribution")]


def cached_feature_groups(columns: tuple[str, ...], dictionary: pd.DataFrame,
                          groups_of: dict[tuple[str, ...], FeatureGroups] | None = None) -> FeatureGroups:
    """`feature_groups` of a model's columns, kept in `groups_of` (a cache for one `dictionary`, e.g. one page's)
    so each model's grouping is built once, not once per option and target."""
    if groups_of is None:
        return feature_groups(columns, dictionary)
    if columns not in groups_of:
        groups_of[columns] = feature_groups(columns, dictionary)
    return groups_of[columns]


def reasons_frame(
    explanations: Explanations,
    X: pd.DataFrame,
    dictionary: pd.DataFrame,
    k: int = 3,
    *,
    eligible: pd.DataFrame | np.ndarray | None = None,
    groups_of: dict[tuple[str, ...], FeatureGroups] | None = None,
) -> pd.DataFrame:
    """Top-k reasons for every row x option, long (row, option, reason_i_*, contrast_reason_i_*): what the
    bundle's `predict_frame(..., explain_top_k=k)` appends so the batch job and the page show the same numbers.
    `groups_of`: a caller's cache of feature groups for `dictionary` (`cached_feature_groups`).

    `row` is the 0-based position in X; rows in X order, options in the explanations' arm order. Ineligible
    options (per `eligible`, columns = options) get empty reasons (None / NaN); the control option has no
    contrast reasons (NaN). Reasons are chosen as indices for every option first, then each distinct
    (row, column) fact is worded once for all options and targets.
    """
    if k < 1:
        raise ValueError(f"explain_top_k={k} (rule: at least 1)")
    options = [o for o in explanations.arms if ("response", o) in explanations.items]
    n, n_opt = len(X), len(options)
    elig = _eligible_matrix(eligible, options, n)
    groups_of = {} if groups_of is None else groups_of
    values_of: dict[tuple[str, ...], np.ndarray] = {}
    versus = f" vs {explanations.control.replace('_', ' ')}"

    # 1. choose: indices and numbers for every (option, target), no strings yet
    chosen = []  # (option index, column prefix, groups, order, best, contrib, tails)
    for j, option in enumerate(options):
        resp = explanations.items[("response", option)]
        con = explanations.get("contrast", option)
        targets = [("reason", resp, None, "")]
        if con is not None:
            targets.append(("contrast_reason", con, contrast_points(con), versus))
        for prefix, shap, points, suffix in targets:
            if shap.values.shape[0] != n:
                raise ValueError(f"explanation has {shap.values.shape[0]} rows but X has {n} (rule: same rows)")
            groups = cached_feature_groups(shap.columns, dictionary, groups_of)
            if shap.columns not in values_of:
                values_of[shap.columns] = _feature_values(X, groups)
            order, best, contrib = _choose(shap, groups, k, points, values_of[shap.columns])
            tails = _effect_tails(contrib, shap.scale in ("log_odds", "probability"), suffix)
            chosen.append((j, prefix, groups, order, best, contrib, tails))

    # 2. word each distinct (row, column) fact once per model column set
    facts: dict[tuple[str, ...], np.ndarray] = {}
    for columns, groups in groups_of.items():
        mine = [c for c in chosen if c[2] is groups]
        if mine:
            cells = np.concatenate(
                [(np.arange(n)[:, None] * len(columns) + c[4]).ravel() for c in mine]
            )
            facts[columns] = _facts(values_of[columns], groups, cells)

    # 3. fill (n, options) grids per output column, raveled row-major: rows in X order, options in arm order
    grids: dict[str, np.ndarray] = {}
    for name in [*reason_columns(k), *reason_columns(k, "contrast_reason")]:
        dtype = "float64" if name.endswith("_contribution") else object
        grids[name] = np.full((n, n_opt), np.nan, dtype=dtype)
    offsets = dict.fromkeys(facts, 0)
    produced: dict[str, set[int]] = {name: set() for name in grids}
    for j, prefix, groups, order, _best, contrib, tails in chosen:
        size = order.size
        start = offsets[groups.columns]
        offsets[groups.columns] = start + size
        fact = facts[groups.columns][start : start + size]
        is_option = groups.is_option_group[order].ravel()
        text = _reason_texts(fact, tails, is_option, prefix).reshape(order.shape)
        names = np.asarray(groups.groups, dtype=object)[order]
        for i in range(order.shape[1]):
            grids[f"{prefix}_{i + 1}_feature"][:, j] = names[:, i]
            grids[f"{prefix}_{i + 1}_text"][:, j] = text[:, i]
            grids[f"{prefix}_{i + 1}_contribution"][:, j] = contrib[:, i]
            for part in ("feature", "text"):
                produced[f"{prefix}_{i + 1}_{part}"].add(j)
    ineligible = ~elig
    out: dict[str, pd.Series | np.ndarray] = {
        "row": np.repeat(np.arange(n, dtype=np.int64), n_opt),
        "option": pd.Series(np.tile(np.asarray(options, dtype=object), n), dtype="str"),
    }
    masked = ineligible.any(axis=0)
    for name, grid in grids.items():
        if grid.dtype != object:
            grid[ineligible] = np.nan
            out[name] = grid.ravel()
            continue
        grid[ineligible] = None
        # dtypes as a concat of per-option frames gives: text where every option filled every row, all-NaN
        # floats where none did (k above the number of clinical features), else object with None/NaN gaps
        if not masked.any() and len(produced[name]) == n_opt:
            out[name] = pd.Series(grid.ravel(), dtype="str")
        elif not masked.any() and not produced[name]:
            out[name] = np.full(n * n_opt, np.nan)
        else:
            out[name] = pd.Series(grid.ravel(), dtype=object)
    return pd.DataFrame(out)


def _eligible_matrix(eligible: pd.DataFrame | np.ndarray | None, options: list[str], n: int) -> np.ndarray:
    """Boolean (n, options) eligibility; all True when not given."""
    if eligible is None:
        return np.ones((n, len(options)), dtype=bool)
    if isinstance(eligible, pd.DataFrame):
        missing = [o for o in options if o not in eligible.columns]
        if missing:
            raise ValueError(
                f"table eligible: missing option column(s) {missing} (rule: one column per option)"
            )
        m = eligible[options].to_numpy(dtype=bool)
    else:
        m = np.asarray(eligible, dtype=bool)
    if m.shape != (n, len(options)):
        raise ValueError(
            f"table eligible: shape {m.shape}, expected {(n, len(options))} (rule: rows x options)"
        )
    return m


def mean_abs_shap(shap: Shap, groups: FeatureGroups) -> pd.DataFrame:
    """Global importance of one explanation: mean |SHAP| per clinical feature (model scale), largest first."""
    grouped = groups.group(shap.values)
    frame = pd.DataFrame(
        {
            "clinical_feature": groups.groups,
            "label": groups.group_labels,
            "mean_abs_shap": np.abs(grouped).mean(axis=0),
            "target": shap.target,
            "option": shap.option,
            "scale": shap.scale,
        }
    )
    return frame.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)


def with_dose_targets(dictionary: pd.DataFrame, vocabulary: Vocabulary) -> pd.DataFrame:
    """The dictionary plus a `target_text` column naming each drug's target on its dose-fraction feature
    ("IVIG dose = 50 % of target 2 g/kg every 4 weeks"). A drug with a juvenile target names both, because a
    child's fraction is of the juvenile one (the page names the one used: `pipeline.report.clinical`)."""
    out = dictionary.copy()
    texts = {f"{d.generic}_dose_fraction": d.text if d.juvenile is None or d.juvenile.text is None
             else f"{d.text} (under {vocabulary.juvenile_age:g}: {d.juvenile.text})" for d in vocabulary.drugs}
    out["target_text"] = out["feature"].map(texts)
    return out


# --- the deployable bundle (models.bundle.EscalateModel) ----------------------------------------------------------
def explain_model(model: object, features: pd.DataFrame) -> Explanations:
    """Response (+ contrast vs continue) and safety explanations of an `EscalateModel` for each modelled option,
    using the same calibrated heads as `predict_frame`."""
    X = model.contract.check(features.reset_index(drop=True))  # type: ignore[attr-defined]
    heads = model.heads  # type: ignore[attr-defined]
    return explain(X, heads["response"].learner, safety=heads["safety"].learner if "safety" in heads else None)


def model_reasons(
    model: object,
    features: pd.DataFrame,
    dictionary: pd.DataFrame,
    k: int = 3,
    *,
    explanations: Explanations | None = None,
) -> pd.DataFrame:
    """Top-k reasons (row, option, reason_i_*, contrast_reason_i_*) for every row x catalogue option of an
    `EscalateModel`, aligned with `predict_frame(features)` (merge on row and option); ineligible or
    unmodelled options get empty reasons."""
    features = features.reset_index(drop=True)
    X = model.contract.check(features)  # type: ignore[attr-defined]
    ex = explanations or explain_model(model, features)
    eligible, _ = model.eligibility(features)  # type: ignore[attr-defined]
    options = [o for o in ex.arms if ("response", o) in ex.items]
    reasons = reasons_frame(ex, X, dictionary, k, eligible=eligible[options])
    catalogue = list(model.catalog.names)  # type: ignore[attr-defined]
    grid = pd.DataFrame({"row": np.repeat(np.arange(len(features)), len(catalogue)),
                         "option": np.tile(np.asarray(catalogue, dtype=object), len(features))})
    return grid.merge(reasons, on=["row", "option"], how="left", validate="one_to_one")
