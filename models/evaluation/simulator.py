"""Simulator-only metrics, where every potential outcome is known (the simulator's truth, never used in
training): oracle AUROC, √PEHE, regret and interval coverage per option, and the truth tables' pivot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from models.evaluation.config import EvaluationInputError
from models.evaluation.inputs import _arm_index, _binary, _fail, _matrix, _probability, _vector
from models.evaluation.metrics import auroc
from models.evaluation.policy import _summarise
from models.evaluation.subgroups import subgroup_scopes


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


def regret_gaps(true_p: ArrayLike, eligible: ArrayLike, choice: ArrayLike) -> np.ndarray:
    """Per decision: true p of the best eligible option − true p of the option `choice` picks; NaN where `choice`
    is -1 (no comparable option, e.g. care given with an option that is not modelled) or its true p is unknown.
    Unlike `regret`, the chosen option need not be eligible (care as given may break the rules)."""
    pt = _matrix(true_p, "true probability (per option)")
    n, arms = pt.shape
    elig = _matrix(eligible, "eligible (per option)", n).astype(bool)
    c = _vector(choice, "choice (option index per decision; -1 = none)")
    if c.size != n:
        raise EvaluationInputError(f"choice: rule 'one row per decision' broken ({c.size} rows, expected {n})")
    _fail("choice (option index per decision; -1 = none)", (c != np.round(c)) | (c < -1) | (c >= arms), c,
          f"an option index in 0..{arms - 1}, or -1")
    idx = c.astype(np.intp)
    best = np.where(elig & np.isfinite(pt), pt, -np.inf).max(axis=1)
    got = np.where(idx >= 0, pt[np.arange(n), np.maximum(idx, 0)], np.nan)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(best) & np.isfinite(got), best - got, np.nan)


def baseline_regret_table(
    true_p: ArrayLike,
    eligible: ArrayLike,
    choices: Mapping[str, ArrayLike],
    *,
    groups: pd.DataFrame | None = None,
    min_n: int = 30,
    confidence_level: float = 0.95,
) -> pd.DataFrame:
    """Regret against the oracle of the model's recommendation and each baseline, overall and by subgroup.

    One row per (subgroup, level, policy): `n_truth` decisions scored, the mean regret with its CI, and the paired
    difference from the guideline list's regret (negative: less regret than the guideline list) with its CI.
    Every policy is scored against the same truth and eligibility. Levels with fewer than `min_n` decisions keep
    their row and n but get NaN values.
    """
    pt = _matrix(true_p, "true probability (per option)")
    gaps = {key: regret_gaps(pt, eligible, d) for key, d in choices.items()}
    reference = gaps.get("guideline")
    rows = []
    for subgroup, level, m in subgroup_scopes(groups, pt.shape[0]):
        for key, gap in gaps.items():
            g = gap[m]
            ok = np.isfinite(g)
            size = int(ok.sum())
            enough = size >= min_n or subgroup == "all"
            value = _summarise(g[ok], confidence_level)
            if reference is not None and key != "guideline":
                r = reference[m]
                both = ok & np.isfinite(r)
                diff = _summarise(g[both] - r[both], confidence_level)
                d = (diff.estimate, diff.ci_low, diff.ci_high)
            else:
                d = (math.nan, math.nan, math.nan)
            row = {"subgroup": subgroup, "level": level, "policy": key, "n_truth": size, "regret": value.estimate,
                   "regret_ci_low": value.ci_low, "regret_ci_high": value.ci_high, "regret_vs_guideline": d[0],
                   "regret_vs_guideline_ci_low": d[1], "regret_vs_guideline_ci_high": d[2]}
            if not enough:
                row.update({k: math.nan for k in row if k.startswith("regret")})
            rows.append(row)
    return pd.DataFrame(rows)


def truth_agreement(features: pd.DataFrame, decisions: pd.DataFrame, truth_decisions: pd.DataFrame
                    ) -> tuple[float, float]:
    """(share of the feature rows' decisions found in the truth by patient and visit date, share of those whose
    option taken agrees): the truth of the cohort the features were built from matches nearly all of them (0.98 and
    1.0 on the default cohort); another cohort's truth, with the same patient ids, does not."""
    visit = decisions.set_index("decision_id").reindex(features["decision_id"].to_numpy())
    pos = match_truth(features, truth_decisions, pd.Series(visit["date"].to_numpy()) if "date" in visit else None)
    hit = pos >= 0
    if not hit.any():
        return 0.0, float("nan")
    same = truth_decisions["option_taken"].astype(str).to_numpy()[pos[hit]] == \
        visit["option_taken"].astype(str).to_numpy()[hit]
    return float(hit.mean()), float(same.mean())


def match_truth(features: pd.DataFrame, truth_decisions: pd.DataFrame, visit_date: pd.Series | None = None
                ) -> np.ndarray:
    """Position in `truth_decisions` of each feature row's decision (same patient and visit date), -1 if none.
    `visit_date` is the decision visit (the decisions table's `date`); without it `as_of` is used."""
    need = [c for c in ("decision_id", "patient_id", "date") if c not in truth_decisions.columns]
    if need:
        raise ValueError(f"table truth/decisions: missing column(s) {need} (rule: simulator truth contract)")
    key_t = truth_decisions["patient_id"].astype(str) + "|" + pd.to_datetime(truth_decisions["date"]).dt.strftime(
        "%Y-%m-%d")
    dates = pd.Series(pd.to_datetime(visit_date if visit_date is not None else features["as_of"]).to_numpy())
    key_f = features["patient_id"].astype(str).reset_index(drop=True) + "|" + dates.dt.strftime("%Y-%m-%d")
    first = ~key_t.duplicated().to_numpy()  # a visit with two truth rows: the first is the decision
    positions = np.flatnonzero(first)
    found = pd.Index(key_t.to_numpy()[first]).get_indexer(key_f)
    return np.where(found >= 0, positions[np.maximum(found, 0)], -1)
