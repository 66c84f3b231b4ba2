"""The data behind the calibration, ROC, effect-scatter and Qini plots (`models.plots`): long DataFrames with
explicit x/y columns, ready for `dvc plots`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import roc_curve

from models.evaluation.config import BinStrategy, EvaluationInputError
from models.evaluation.inputs import _arm_index, _binary, _fail, _matrix, _probability, _same_length, _vector
from models.evaluation.metrics import _binned
from models.evaluation.simulator import _effect_inputs, _effects


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
