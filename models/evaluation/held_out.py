"""The held-out evaluation behind `escalate evaluate`: the bundle's factual metrics, decision values, subgroups and
plot data on the test patients, and — with the simulator's truth — the simulator-only metrics."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from models.evaluation.config import EvaluationConfig
from models.evaluation.curves import (
    calibration_curve_data,
    effect_scatter_data,
    qini_curve_data,
    roc_curve_data,
)
from models.evaluation.metrics import continuous_metrics, factual_metrics
from models.evaluation.policy import (
    baseline_choices,
    baseline_descriptions,
    baseline_table,
    best_single_option,
    decision_value_table,
)
from models.evaluation.simulator import baseline_regret_table, match_truth, option_matrix, simulator_metrics
from models.evaluation.subgroups import subgroup_labels, subgroup_metrics
from models.response import response_of

if TYPE_CHECKING:
    from models.bundle import EscalateModel


@dataclass
class HeldOutEvaluation:
    """Everything `escalate evaluate` writes: headline metrics (flat), tables and plot data."""

    headline: dict[str, float]
    factual: pd.DataFrame
    decision_values: pd.DataFrame
    subgroups: pd.DataFrame
    plot_data: dict[str, pd.DataFrame]
    simulator: pd.DataFrame | None = None
    counts: dict[str, int] = field(default_factory=dict)
    #: the model's recommendation beside each baseline, overall and by subgroup (`policy.baseline_table`, with the
    #: regret columns of `simulator.baseline_regret_table` when the simulator's truth is given)
    baselines: pd.DataFrame = field(default_factory=pd.DataFrame)


def evaluate_bundle(
    model: EscalateModel,
    features: pd.DataFrame,
    decisions: pd.DataFrame,
    config: object | None = None,
    truth_decisions: pd.DataFrame | None = None,
    truth_outcomes: pd.DataFrame | None = None,
) -> HeldOutEvaluation:
    """Evaluate the bundle on held-out decisions: factual metrics per outcome, the doubly robust decision value
    of the recommendation vs care as given and each fixed option, subgroups, plot data, and — when the
    simulator's truth is given — oracle AUROC, √PEHE, regret and interval coverage. Rows whose option taken is
    not modelled, or whose label is missing, are counted in `counts`, not silently dropped."""
    cfg = config if config is not None else EvaluationConfig()
    features = features.reset_index(drop=True)
    label_cols = ["decision_id", "option_taken", "total_improvement_score", "safety_event"]
    label_cols += [c for c in ("date", "steroid_sparing") if c in decisions.columns]
    labels = features[["decision_id"]].merge(decisions[label_cols], on="decision_id", how="left",
                                             validate="one_to_one")
    arms = list(model.arms)
    control = arms.index(model.catalog.control)
    eligible_frame, _ = model.eligibility(features)
    elig = eligible_frame[arms].to_numpy(dtype=bool)
    pred = model.predict_arrays(features)
    prop = model.propensity_matrix(features, eligible_frame)
    taken_names = labels["option_taken"].astype(str).to_numpy()
    codes = pd.Index(arms).get_indexer(taken_names)
    modelled = codes >= 0
    rows = np.arange(len(features))
    taken_ok = modelled & elig[rows, np.maximum(codes, 0)]
    tis = pd.to_numeric(labels["total_improvement_score"], errors="coerce").to_numpy(dtype=float)
    safety = pd.to_numeric(labels["safety_event"], errors="coerce").to_numpy(dtype=float)
    response = response_of(tis, features, model.config)
    counts = {
        "test_decisions": len(features),
        "test_patients": int(features["patient_id"].nunique()),
        "option_not_modelled": int((~modelled).sum()),
        "option_taken_ineligible": int((modelled & ~taken_ok).sum()),
        "response_unlabelled": int((taken_ok & np.isnan(response)).sum()),
        "safety_unlabelled": int((taken_ok & np.isnan(safety)).sum()),
    }

    def factual(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        use = taken_ok & np.isfinite(values)
        return use, np.flatnonzero(use)

    use_r, idx_r = factual(response)
    p_taken = pred["p_response"][idx_r, codes[idx_r]]
    y_r = response[idx_r]
    use_s, idx_s = factual(safety)
    s_taken = pred["p_safety"][idx_s, codes[idx_s]]
    _, idx_t = factual(tis)
    tis_metrics = continuous_metrics(tis[idx_t], pred["expected_tis"][idx_t, codes[idx_t]])
    resp_metrics = factual_metrics(y_r, p_taken, cfg)
    safety_metrics = factual_metrics(safety[idx_s], s_taken, cfg)
    factual_rows = [{"outcome": "response", **resp_metrics}, {"outcome": "safety", **safety_metrics},
                    {"outcome": "tis", **{k: v for k, v in tis_metrics.items()}}]
    sparing_metrics: dict[str, float] = {}
    if "steroid_sparing" in labels.columns and np.isfinite(pred["p_steroid_sparing"]).any():
        sparing = pd.to_numeric(labels["steroid_sparing"], errors="coerce").to_numpy(dtype=float)
        _, idx_g = factual(sparing)
        counts["steroid_sparing_unlabelled"] = int((taken_ok & np.isnan(sparing)).sum())
        sparing_metrics = factual_metrics(sparing[idx_g], pred["p_steroid_sparing"][idx_g, codes[idx_g]], cfg)
        factual_rows.append({"outcome": "steroid_sparing", **sparing_metrics})
    for j, arm in enumerate(arms):
        m = codes[idx_r] == j
        if m.sum() >= 2:
            factual_rows.append({"outcome": "response", "option": arm, **factual_metrics(y_r[m], p_taken[m], cfg)})
    factual_table = pd.DataFrame(factual_rows)

    # what the model may recommend: eligible options no label combination rule advises against (predict_frame)
    blocked = model.combination_flags(features)[0][:, [list(model.catalog.names).index(a) for a in arms]]
    allowed = ~blocked
    allowed[:, control] = True
    mu = np.where(elig, pred["p_response"], np.nan)[idx_r]
    e = np.where(elig, prop, 0.0)[idx_r]
    labels_map = {o.name: o.label for o in model.catalog.options}
    dv = decision_value_table(codes[idx_r], y_r, mu, e, arms, control=control, eligible=elig[idx_r],
                              allowed=allowed[idx_r], labels=labels_map, config=cfg)
    groups = subgroup_labels(features).iloc[idx_r].reset_index(drop=True)
    subgroups = subgroup_metrics(y_r, p_taken, groups, config=cfg)

    option_of = np.asarray(arms, dtype=object)[codes[idx_r]]
    weight = 1.0 / np.maximum(e[np.arange(len(idx_r)), codes[idx_r]], cfg.propensity_floor)
    plot_data = {
        "calibration": calibration_curve_data(y_r, p_taken, option_of, n_bins=cfg.calibration_bins,
                                                 strategy=cfg.calibration_strategy),
        "roc": _quiet(roc_curve_data, y_r, p_taken, option_of),
        "qini": qini_curve_data(y_r, codes[idx_r], np.nan_to_num(mu, nan=0.0), arms, control=control,
                                   eligible=elig[idx_r], sample_weight=weight),
    }
    headline: dict[str, float] = {
        "n_test_decisions": float(len(features)),
        "n_test_patients": float(counts["test_patients"]),
        "response_n": resp_metrics["n"],
        "response_auroc": resp_metrics["auroc"],
        "response_brier": resp_metrics["brier"],
        "response_log_loss": resp_metrics["log_loss"],
        "response_calibration_slope": resp_metrics["calibration_slope"],
        "response_calibration_intercept": resp_metrics["calibration_intercept"],
        "response_ece": resp_metrics["ece"],
        "tis_rmse": tis_metrics["rmse"],
        "safety_auroc": safety_metrics["auroc"],
        "safety_brier": safety_metrics["brier"],
        **({"steroid_sparing_auroc": sparing_metrics["auroc"], "steroid_sparing_brier": sparing_metrics["brier"],
            "steroid_sparing_ece": sparing_metrics["ece"]} if sparing_metrics else {}),
    }
    by_policy = dv.set_index("policy")
    rec, obs = by_policy.loc["recommended"], by_policy.loc["observed"]
    fixed = by_policy[by_policy.index.str.startswith("always_")]
    headline.update({
        "decision_value_recommended": float(rec["value"]),
        "decision_value_recommended_ci_low": float(rec["ci_low"]),
        "decision_value_recommended_ci_high": float(rec["ci_high"]),
        "decision_value_observed": float(obs["value"]),
        "decision_value_gain_vs_observed": float(rec["difference_vs_care_given"]),
        "decision_value_gain_ci_low": float(rec["difference_ci_low"]),
        "decision_value_gain_ci_high": float(rec["difference_ci_high"]),
        "decision_value_best_fixed": float(fixed["value"].max()) if len(fixed) else float("nan"),
    })

    # baselines: the same policies scored by AIPW on the labelled decisions and, with the truth, by regret
    guideline = model.catalog.guideline
    best = best_single_option(codes[idx_r], y_r, mu, e, elig[idx_r], control=control,
                              propensity_floor=cfg.propensity_floor)
    choices = baseline_choices(mu, elig[idx_r], arms, control=control, guideline=guideline, best_single=best,
                               allowed=allowed[idx_r])
    baselines = baseline_table(codes[idx_r], y_r, mu, e, choices, groups=groups, config=cfg,
                               descriptions=baseline_descriptions(arms, control=control, best_single=best,
                                                                  labels=labels_map))
    headline.update(_baseline_headline(baselines))

    simulator = None
    if truth_decisions is not None and truth_outcomes is not None:
        simulator, sim_headline, sim_plots, matched, regrets = _simulator_evaluation(
            model, features, truth_decisions, truth_outcomes, pred, elig, arms, control,
            labels["date"] if "date" in labels.columns else None, taken=codes, best_single=best, config=cfg,
            allowed=allowed)
        headline.update(sim_headline)
        plot_data.update(sim_plots)
        counts["truth_matched"] = matched
        if len(regrets):
            baselines = _beside(baselines, regrets, ["subgroup", "level", "policy"])
    return HeldOutEvaluation(headline=headline, factual=factual_table, decision_values=dv, subgroups=subgroups,
                             plot_data=plot_data, simulator=simulator, counts=counts, baselines=baselines)


def _beside(left: pd.DataFrame, right: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`right`'s columns beside `left`'s rows (left's order kept); rows only `right` has are appended, not lost."""
    merged = left.merge(right, on=keys, how="left", validate="one_to_one")
    only_right = right.merge(left[keys], on=keys, how="left", indicator=True)
    extra = only_right[only_right["_merge"] == "left_only"].drop(columns="_merge")
    return pd.concat([merged, extra], ignore_index=True) if len(extra) else merged


def _baseline_headline(baselines: pd.DataFrame) -> dict[str, float]:
    """The overall AIPW value of each baseline and the model's gain over the guideline list, for headline.json."""
    return _overall_headline(
        baselines, "value",
        {"guideline": "decision_value_guideline", "best_single_option": "decision_value_best_single",
         "always_continue": "decision_value_always_continue"},
        {"decision_value_gain_vs_guideline": "difference_vs_guideline",
         "decision_value_gain_vs_guideline_ci_low": "difference_ci_low",
         "decision_value_gain_vs_guideline_ci_high": "difference_ci_high"})


def _overall_headline(table: pd.DataFrame, column: str, policies: dict[str, str],
                      vs_guideline: dict[str, str]) -> dict[str, float]:
    """Headline entries from a baseline table's overall rows: `column` of each policy in `policies` (policy ->
    headline key), and the model's comparison with the guideline list (headline key -> column of the model's
    row) when the list was scored. The AIPW values and the simulator's regrets share this shape."""
    overall = table[table["subgroup"] == "all"].set_index("policy")
    out = {key: float(overall.loc[policy, column]) for policy, key in policies.items() if policy in overall.index}
    if "guideline" in overall.index:
        out.update({key: float(overall.loc["recommended", col]) for key, col in vs_guideline.items()})
    return out


def _quiet(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call `fn` with its per-option "only one class" warnings silenced (the option is simply absent)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def _simulator_evaluation(
    model: EscalateModel,
    features: pd.DataFrame,
    truth_decisions: pd.DataFrame,
    truth_outcomes: pd.DataFrame,
    pred: dict[str, np.ndarray],
    elig: np.ndarray,
    arms: list[str],
    control: int,
    visit_date: pd.Series | None = None,
    *,
    taken: np.ndarray,
    best_single: int,
    config: EvaluationConfig,
    allowed: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict[str, float], dict[str, pd.DataFrame], int, pd.DataFrame]:
    """Per-option oracle AUROC, √PEHE, interval coverage and regret on the decisions matched to the truth, and the
    regret of each baseline (`taken`: option index taken per feature row, -1 if not modelled; `allowed`: per
    feature row, the options the model may recommend — the oracle may pick any eligible one)."""
    pos = match_truth(features, truth_decisions, visit_date)
    hit = np.flatnonzero(pos >= 0)
    if not len(hit):  # no derived decision matches a true one: nothing to compare, say so in the counts
        return pd.DataFrame(columns=["option"]), {"sim_matched_decisions": 0.0}, {}, 0, pd.DataFrame()
    truth_ids = truth_decisions["decision_id"].to_numpy()[pos[hit]]
    outcomes = truth_outcomes[truth_outcomes["option"].isin(arms)]
    true_p = option_matrix(outcomes, "p_response", arms).reindex(truth_ids).to_numpy(dtype=float)
    true_tis = option_matrix(outcomes, "tis", arms).reindex(truth_ids).to_numpy(dtype=float)
    true_elig = option_matrix(outcomes, "eligible", arms).reindex(truth_ids)
    both = elig[hit] & true_elig.fillna(False).astype(bool).to_numpy() & np.isfinite(true_p)
    both[:, control] = both[:, control] | ~both.any(axis=1)  # continue is always possible
    potential = np.nan_to_num(response_of(true_tis, features.iloc[hit], model.config), nan=0.0)
    p = np.where(both, pred["p_response"][hit], np.nan)
    may = both & (allowed[hit] if allowed is not None else True)
    rec = np.argmax(np.where(may, p, -np.inf), axis=1)
    sim = simulator_metrics(
        np.nan_to_num(p, nan=0.5), np.nan_to_num(true_p, nan=0.5), potential, both, rec, arms, control=control,
        lower=np.where(both, pred["p_response_low"][hit], 0.0), upper=np.where(both, pred["p_response_high"][hit], 1.0))
    table = sim.per_option
    n_eligible = table["n_eligible"].to_numpy(dtype=float)
    coverage = float(np.nansum(table["coverage"].to_numpy(dtype=float) * n_eligible) / max(n_eligible.sum(), 1.0))
    headline = {
        "sim_matched_decisions": float(len(hit)),
        "sim_sqrt_pehe": sim.sqrt_pehe_overall,
        "sim_regret": sim.regret.regret,
        "sim_share_suboptimal": sim.regret.share_suboptimal,
        "sim_oracle_value": sim.regret.oracle_value,
        "sim_recommended_value": sim.regret.recommended_value,
        "sim_interval_coverage": float(coverage),
        "sim_auroc_model_mean": float(np.nanmean(table["auroc_model"])),
        "sim_auroc_oracle_mean": float(np.nanmean(table["auroc_oracle"])),
    }
    if "p_steroid_sparing" in outcomes.columns and np.isfinite(pred["p_steroid_sparing"]).any():
        # the steroid-sparing head against its truth: calibration-free error and interval coverage
        true_g = option_matrix(outcomes, "p_steroid_sparing", arms).reindex(truth_ids).to_numpy(dtype=float)
        known = both & np.isfinite(true_g)
        g, lo, hi = (pred[f"p_steroid_sparing{x}"][hit] for x in ("", "_low", "_high"))
        if known.any():
            headline["sim_steroid_sparing_rmse"] = float(np.sqrt(np.mean((g - true_g)[known] ** 2)))
            headline["sim_steroid_sparing_coverage"] = float(np.mean(((lo <= true_g) & (true_g <= hi))[known]))
    plots = {"effect_scatter": effect_scatter_data(np.nan_to_num(p, nan=0.0), np.nan_to_num(true_p, nan=0.0),
                                                      both, arms, control=control)}
    # every baseline against the same truth and eligibility as the model's regret above (care as given may have
    # taken an option outside it: scored where its true chance is known)
    choices: dict[str, np.ndarray] = dict(baseline_choices(
        p, both, arms, control=control, guideline=model.catalog.guideline, best_single=best_single,
        allowed=None if allowed is None else allowed[hit]))
    choices["observed"] = taken[hit]
    scored_p = np.where(both, np.nan_to_num(true_p, nan=0.5), true_p)
    regrets = baseline_regret_table(scored_p, both, choices, groups=subgroup_labels(features.iloc[hit]),
                                    min_n=config.subgroup_min_n, confidence_level=config.confidence_level)
    headline.update(_overall_headline(
        regrets, "regret",
        {"guideline": "sim_guideline_regret", "best_single_option": "sim_best_single_regret",
         "always_continue": "sim_always_continue_regret", "observed": "sim_observed_regret"},
        {"sim_regret_vs_guideline": "regret_vs_guideline",
         "sim_regret_vs_guideline_ci_low": "regret_vs_guideline_ci_low",
         "sim_regret_vs_guideline_ci_high": "regret_vs_guideline_ci_high"}))
    return table, headline, plots, len(hit), regrets
