"""Decision value: the doubly robust (AIPW) value of a treatment policy — "what share would respond if every
decision followed it" — with influence-function standard errors, paired differences between policies, and the
policies compared: the model's recommendation, care as given and each fixed option."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from features.guideline import guideline_choice
from models.evaluation.config import EvaluationConfig, EvaluationInputError
from models.evaluation.inputs import _arm_index, _fail, _matrix, _vector, _z
from models.evaluation.subgroups import subgroup_scopes


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
    allowed: ArrayLike | None = None,
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
        ("recommended", "model's recommendation",
         recommended_policy(mu, elig if allowed is None else elig & _matrix(allowed, "allowed", yy.size).astype(bool))),
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
# Baselines: the model's recommendation beside the policies it must beat, overall and by subgroup.

#: the policies of the baseline table, in the order they are shown (the model's first, then the guideline list).
BASELINES: tuple[str, ...] = ("recommended", "guideline", "best_single_option", "always_continue", "observed")


def best_single_option(
    treatment: ArrayLike,
    y: ArrayLike,
    mu: ArrayLike,
    propensity: ArrayLike,
    eligible: ArrayLike,
    *,
    control: int = 0,
    propensity_floor: float = 0.02,
) -> int:
    """The fixed option ("give it where eligible, otherwise the control") with the highest doubly robust value on
    these decisions, control excluded (the control itself when it is the only option). Chosen on the decisions it
    is then scored on: an optimistic baseline."""
    elig = _matrix(eligible, "eligible (per option)").astype(bool)
    values = {}
    for k in range(elig.shape[1]):
        if k == control:
            continue
        d = fixed_option_policy(k, elig, control=control)
        values[k] = float(
            aipw_contributions(d, treatment, y, mu, propensity, propensity_floor=propensity_floor).mean()
        )
    if not values:
        return control
    return max(values, key=lambda k: (values[k], -k))  # ties: earliest in display order


def baseline_choices(
    mu: ArrayLike,
    eligible: ArrayLike,
    options: Sequence[str],
    *,
    control: int,
    guideline: Sequence[str],
    best_single: int,
    allowed: ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """Option index per decision for the model's recommendation and each fixed baseline (`BASELINES` less the
    observed policy): the guideline list (first eligible option in the configured order), the best single
    option and always continue. `allowed` (default: eligible) are the options the model may recommend (a label
    combination rule can forbid an eligible one)."""
    elig = _matrix(eligible, "eligible (per option)").astype(bool)
    may = elig if allowed is None else elig & _matrix(allowed, "allowed (per option)").astype(bool)
    choices = {"recommended": recommended_policy(mu, may)}
    if guideline:  # no configured list: no guideline baseline (rather than "always continue" under its name)
        choices["guideline"] = guideline_choice(may, options, guideline, options[control])  # labels bind it too
    choices["best_single_option"] = fixed_option_policy(best_single, elig, control=control)
    choices["always_continue"] = fixed_option_policy(control, elig, control=control)
    return choices


def baseline_descriptions(
    options: Sequence[str], *, control: int, best_single: int, labels: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What each baseline policy is, in words for the tables and the model card."""
    names = dict(labels or {})
    control_label = names.get(options[control], options[control])
    best = names.get(options[best_single], options[best_single])
    return {
        "recommended": "model's recommendation",
        "guideline": "guideline list: first eligible option in the configured order",
        "best_single_option": f"best single option ({best} where eligible, otherwise {control_label}; "
        "chosen on the held-out decisions)",
        "always_continue": f"always {control_label}",
        "observed": "care as given",
    }


def baseline_table(
    treatment: ArrayLike,
    y: ArrayLike,
    mu: ArrayLike,
    propensity: ArrayLike,
    choices: Mapping[str, np.ndarray],
    *,
    groups: pd.DataFrame | None = None,
    descriptions: Mapping[str, str] | None = None,
    config: EvaluationConfig | None = None,
) -> pd.DataFrame:
    """Doubly robust value of the model's recommendation and each baseline, overall and by subgroup.

    One row per (subgroup, level, policy): n, value with its CI, and the paired difference from the guideline
    list with its CI (positive: the policy responds more often than the guideline list). `choices` maps policy
    names to option indices (`baseline_choices`); the observed policy (care as given, value = mean outcome) is
    added. Levels with fewer than `subgroup_min_n` decisions keep their row and n but get NaN values.
    """
    cfg = config or EvaluationConfig()
    yy = _vector(y, "y (observed outcome)")
    n = yy.size
    psi = {
        key: aipw_contributions(d, treatment, yy, mu, propensity, propensity_floor=cfg.propensity_floor)
        for key, d in choices.items()
    }
    psi["observed"] = yy
    reference = psi.get("guideline")
    words = dict(descriptions or {})
    rows = []
    for subgroup, level, m in subgroup_scopes(groups, n):
        size = int(m.sum())
        enough = size >= cfg.subgroup_min_n or subgroup == "all"
        for key in [k for k in BASELINES if k in psi] + [k for k in psi if k not in BASELINES]:
            value = _summarise(psi[key][m], cfg.confidence_level)
            if reference is not None and key != "guideline":
                diff = _summarise(psi[key][m] - reference[m], cfg.confidence_level)
                d_est, d_low, d_high = diff.estimate, diff.ci_low, diff.ci_high
            else:
                d_est = d_low = d_high = math.nan
            row = {
                "subgroup": subgroup,
                "level": level,
                "policy": key,
                "description": words.get(key, key),
                "n": size,
                "value": value.estimate,
                "ci_low": value.ci_low,
                "ci_high": value.ci_high,
                "difference_vs_guideline": d_est,
                "difference_ci_low": d_low,
                "difference_ci_high": d_high,
                "enough_data": enough,
            }
            if not enough:
                row.update({k: math.nan for k in ("value", "ci_low", "ci_high", "difference_vs_guideline",
                                                  "difference_ci_low", "difference_ci_high")})
            rows.append(row)
    return pd.DataFrame(rows)
