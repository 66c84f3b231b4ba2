"""The simulator card: how hard a simulated cohort is as a test of personalised escalation, computed from truth.

Users judge the testbed from it (docs/simulator.md): the oracle's value and the regret of simple policies (always
continue, the best single option, the guideline list of `configs/options.yaml`, the clinicians' observed policy),
how often each option is the true best, the Bayes AUROC (true probability vs the realised response), how far a
naive comparison of treated groups is from the true effect before and after adjusting for what the record shows,
the spread and sign of the true effects, overlap, whether a past failure lowers the next chance of response, and
the steroid-sparing outcome (issue 17).

Pure: takes the simulated tables and returns a JSON-ready dict. The truth is read here and only here (and by
evaluation); the model never sees it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from features.guideline import guideline_choice
from features.vocabulary import OptionCatalog
from simulator.config import SimulatorConfig
from simulator.engine import SimulatedCohort
from simulator.truth import response_thresholds

#: decision-visit measures the adjustment uses (what any reader of the records sees at the decision).
ADJUST_MEASURES: tuple[str, ...] = (
    "physician_global", "patient_global", "mmt8", "haq", "extramuscular_global", "cdasi_activity", "ck",
)
#: an option needs this many decisions that took it before its adjusted effect is reported.
MIN_TAKEN = 30


def _matrix(outcomes: pd.DataFrame, decisions: pd.Index, names: tuple[str, ...], column: str) -> np.ndarray:
    """(decisions × options) matrix of one truth column, rows in `decisions` order, columns in option order."""
    wide = outcomes.pivot(index="decision_id", columns="option", values=column)
    return wide.reindex(index=decisions, columns=list(names)).to_numpy()


def _observed_features(cohort: SimulatedCohort, decisions: pd.DataFrame) -> np.ndarray:
    """What the record shows at each decision: the decision-visit core set, CDASI and CK (median-imputed, with a
    missing flag each), age, sex, ILD, diagnosis and antibody, the number of drugs taken so far and the round."""
    visit = cohort.assessments.loc[cohort.assessments["measure"].isin(ADJUST_MEASURES)].copy()
    is_mmt = visit["measure"] == "mmt8"
    visit.loc[is_mmt, "value"] = visit.loc[is_mmt, "value"] / np.where(visit.loc[is_mmt, "unit"] == "score_0_150", 150, 80)
    is_ck = visit["measure"] == "ck"
    visit.loc[is_ck, "value"] = np.log(visit.loc[is_ck, "value"] / visit.loc[is_ck, "upper_limit_normal"])
    wide = visit.pivot_table(index=["patient_id", "date"], columns="measure", values="value", aggfunc="first")
    key = pd.MultiIndex.from_arrays([decisions["patient_id"], decisions["date"]])
    at = wide.reindex(index=key, columns=list(ADJUST_MEASURES)).to_numpy(float)
    missing = np.isnan(at)
    medians = np.nanmedian(np.where(missing.all(axis=0), 0.0, at), axis=0) if len(at) else np.zeros(at.shape[1])
    at = np.where(missing, medians, at)

    pat = cohort.patients.set_index("patient_id").loc[decisions["patient_id"]]
    age = pd.DatetimeIndex(decisions["date"]).year.to_numpy() - pat["birth_year"].to_numpy()
    cats = pd.get_dummies(pat["diagnosis"].astype(str) + "|" + pat["antibodies"].astype(str).str.split(",").str[0], dtype=float)
    reg = cohort.regimens
    started = reg.merge(decisions[["decision_id", "patient_id", "date"]], on="patient_id")
    started = started.loc[started["start_date"] < started["date"]]
    n_drugs = started.groupby("decision_id")["drug"].nunique().reindex(decisions["decision_id"]).fillna(0).to_numpy()
    rnd = decisions["decision_id"].str.rsplit("-D", n=1).str[1].astype(int).to_numpy()
    x = np.column_stack([at, missing.astype(float), age, (pat["sex"] == "F").to_numpy(float), pat["ild"].to_numpy(float),
                         cats.to_numpy(), n_drugs, rnd])
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _ridge_predict(x_fit: np.ndarray, y: np.ndarray, x_all: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Ridge regression of y on x (intercept unpenalised), predicted on x_all."""
    a = np.column_stack([np.ones(len(x_fit)), x_fit])
    penalty = alpha * np.eye(a.shape[1])
    penalty[0, 0] = 0.0
    coef = np.linalg.solve(a.T @ a + penalty, a.T @ y)
    return np.column_stack([np.ones(len(x_all)), x_all]) @ coef


def _round(value: float, digits: int = 4) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def simulator_card(cohort: SimulatedCohort, config: SimulatorConfig, catalog: OptionCatalog,
                   horizon_weeks: int | None = None) -> dict[str, Any]:
    """The card of an observational cohort at `horizon_weeks` (default: the decision horizon), from its truth."""
    names = catalog.names
    control = names.index(catalog.control)
    h = int(horizon_weeks if horizon_weeks is not None else config.decisions.horizon_weeks)
    decisions = cohort.decisions.reset_index(drop=True)
    if decisions.empty:
        raise ValueError("the cohort has no decision points: no card can be computed")
    out = cohort.outcomes.loc[cohort.outcomes["horizon_weeks"] == h]
    if out.empty:
        raise ValueError(f"the truth has no outcomes at {h} weeks (horizons: {sorted(cohort.outcomes['horizon_weeks'].unique())})")
    ids = pd.Index(decisions["decision_id"])
    p = _matrix(out, ids, names, "p_response")
    eligible = _matrix(out, ids, names, "eligible").astype(bool)
    tis = _matrix(out, ids, names, "tis")
    n, k = p.shape
    rows = np.arange(n)
    taken = pd.Index(names).get_indexer(decisions["option_taken"])
    prop = decisions[[f"propensity_{o}" for o in names]].to_numpy(float)

    masked = np.where(eligible, p, -np.inf)
    best = masked.argmax(axis=1)
    oracle = float(masked.max(axis=1).mean())

    def policy(value: float, **extra: Any) -> dict[str, Any]:
        return {**extra, "value": _round(value), "regret": _round(oracle - value)}

    single = {o: float(np.where(eligible[:, j], p[:, j], p[:, control]).mean()) for j, o in enumerate(names) if j != control}
    best_single = max(single, key=lambda o: single[o])
    policies: dict[str, Any] = {
        "always_continue": policy(float(p[:, control].mean())),
        "best_single_option": policy(single[best_single], option=best_single),
        "clinicians": policy(float((prop * np.where(eligible, p, 0.0)).sum(axis=1).mean())),
    }
    if catalog.guideline:
        pick = guideline_choice(eligible, names, catalog.guideline, catalog.control)
        policies["guideline"] = policy(float(p[rows, pick].mean()), order=list(catalog.guideline))

    best_share = {
        o: {"of_decisions": _round(float(np.mean(best == j))),
            "of_eligible": _round(float(np.mean(best[eligible[:, j]] == j)) if eligible[:, j].any() else float("nan"))}
        for j, o in enumerate(names)
    }

    patients = cohort.patients.set_index("patient_id")
    juvenile_dx = {d for d, prof in config.cohort.diagnoses.items() if prof.juvenile}
    juvenile = patients.loc[decisions["patient_id"], "diagnosis"].isin(juvenile_dx).to_numpy()
    threshold = response_thresholds(juvenile, config.truth.response_category)
    realised = tis[rows, taken] >= threshold
    p_taken = p[rows, taken]
    bayes = roc_auc_score(realised, p_taken) if 0 < realised.sum() < n else float("nan")

    x = _observed_features(cohort, decisions)
    ctrl_taken = taken == control
    mu_control = _ridge_predict(x[ctrl_taken], p_taken[ctrl_taken], x) if ctrl_taken.sum() >= MIN_TAKEN else None
    confounding: dict[str, Any] = {}
    effects = p - p[:, [control]]
    for j, o in enumerate(names):
        if j == control or not eligible[:, j].any():
            continue
        sel = eligible[:, j]
        true = float(effects[sel, j].mean())
        took = taken == j
        naive = float(p_taken[took].mean() - p_taken[ctrl_taken].mean()) if took.any() and ctrl_taken.any() else float("nan")
        adjusted = float("nan")
        if mu_control is not None and took.sum() >= MIN_TAKEN:
            adjusted = float((_ridge_predict(x[took], p_taken[took], x[sel]) - mu_control[sel]).mean())
        confounding[o] = {"true_effect": _round(true), "naive_minus_true": _round(naive - true),
                          "adjusted_minus_true": _round(adjusted - true), "taken": int(took.sum())}

    cells = eligible.copy()
    cells[:, control] = False
    true_effects = effects[cells]
    overlap = {o: {"min": _round(float(prop[eligible[:, j], j].min())), "max": _round(float(prop[eligible[:, j], j].max()))}
               for j, o in enumerate(names) if eligible[:, j].any()}
    min_eligible = np.where(eligible, prop, np.inf).min(axis=1)

    return {
        "decisions": int(n),
        "patients": int(decisions["patient_id"].nunique()),
        "horizon_weeks": h,
        "oracle_value": _round(oracle),
        "policies": policies,
        "true_best_share": best_share,
        "bayes_auroc": _round(bayes),
        "confounding": confounding,
        "true_effects": {"sd": _round(float(true_effects.std())) if true_effects.size else None,
                         "share_negative": _round(float(np.mean(true_effects < 0))) if true_effects.size else None,
                         "cells": int(true_effects.size)},
        "propensity": {"options": overlap, "min_eligible_median": _round(float(np.median(min_eligible)))},
        "history": _history(decisions, p, eligible, realised, control, x, taken),
        **({"steroid_sparing": _steroid_sparing(out, ids, names, eligible, taken, best, control, prop)}
           if "p_steroid_sparing" in out.columns else {}),
    }


def _steroid_sparing(out: pd.DataFrame, ids: pd.Index, names: tuple[str, ...], eligible: np.ndarray, taken: np.ndarray,
                     best: np.ndarray, control: int, prop: np.ndarray) -> dict[str, Any]:
    """The second outcome (issue 17): mean true P(prednisone ≤ 7.5 mg/day at the horizon without a flare) under
    always continue, the clinicians and the response oracle's choice, per option over the decisions where it is
    eligible, and its Bayes AUROC (true probability of the option taken vs its realised label: the ceiling of a
    steroid-sparing model)."""
    q = _matrix(out, ids, names, "p_steroid_sparing")
    label = _matrix(out, ids, names, "steroid_sparing").astype(bool)
    rows = np.arange(len(ids))
    realised, q_taken = label[rows, taken], q[rows, taken]
    bayes = roc_auc_score(realised, q_taken) if 0 < realised.sum() < len(ids) else float("nan")
    return {
        "always_continue": _round(float(q[:, control].mean())),
        "clinicians": _round(float((prop * np.where(eligible, q, 0.0)).sum(axis=1).mean())),
        "response_oracle": _round(float(q[rows, best].mean())),
        "by_option": {o: _round(float(q[eligible[:, j], j].mean())) for j, o in enumerate(names) if eligible[:, j].any()},
        "bayes_auroc": _round(bayes),
    }


def _history(decisions: pd.DataFrame, p: np.ndarray, eligible: np.ndarray, realised: np.ndarray, control: int,
             x: np.ndarray, taken: np.ndarray) -> dict[str, Any]:
    """At a patient's next decision, after the agent added at the previous one (any option but continue) failed
    (no response) or worked:
    the mean true chance of response over the eligible new options and their mean true effect over continuing,
    raw and as the difference failure − response after adjusting for the observed features `x` (a patient who
    responded but is still active differs in activity from one who did not). History is informative when the
    adjusted difference is negative."""
    rnd = decisions["decision_id"].str.rsplit("-D", n=1).str[1].astype(int).to_numpy()
    prev_key = decisions["patient_id"].astype(str) + "-D" + (rnd - 1).astype(str)
    pos = pd.Index(decisions["decision_id"]).get_indexer(prev_key)
    has_prev = pos >= 0
    cells = eligible.copy()
    cells[:, control] = False
    count = cells.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_new = np.where(cells, p, 0.0).sum(axis=1) / count
        mean_effect = np.where(cells, p - p[:, [control]], 0.0).sum(axis=1) / count
    ok = has_prev & (count > 0) & (taken[np.where(has_prev, pos, 0)] != control)
    before = realised[np.where(has_prev, pos, 0)]
    out: dict[str, Any] = {"later_decisions": int(ok.sum())}
    for label, values in (("p", mean_new), ("effect", mean_effect)):
        fail = float(values[ok & ~before].mean()) if (ok & ~before).any() else float("nan")
        work = float(values[ok & before].mean()) if (ok & before).any() else float("nan")
        out[f"next_{label}_after_failure"] = _round(fail)
        out[f"next_{label}_after_response"] = _round(work)
        adjusted = float("nan")
        if (ok & ~before).sum() >= MIN_TAKEN and (ok & before).sum() >= MIN_TAKEN:
            design = np.column_stack([x[ok], (~before[ok]).astype(float)])
            a = np.column_stack([np.ones(len(design)), design])
            penalty = np.eye(a.shape[1])
            penalty[0, 0] = penalty[-1, -1] = 0.0
            adjusted = float(np.linalg.solve(a.T @ a + penalty, a.T @ values[ok])[-1])
        out[f"next_{label}_failure_minus_response_adjusted"] = _round(adjusted)
    return out


def card_metrics(card: dict[str, Any]) -> dict[str, Any]:
    """The few headline numbers DVC tracks as metrics (the full card sits beside the cohort)."""
    pol = card["policies"]
    gaps = [abs(c["naive_minus_true"]) for c in card["confounding"].values() if c["naive_minus_true"] is not None]
    shares = [s["of_eligible"] for o, s in card["true_best_share"].items() if s["of_eligible"] is not None and o != "continue"]
    return {
        "oracle": card["oracle_value"],
        "guideline_regret": pol.get("guideline", {}).get("regret"),
        "clinician_regret": pol["clinicians"]["regret"],
        "max_best_share": max(shares) if shares else None,
        "bayes_auroc": card["bayes_auroc"],
        "max_naive_gap": round(max(gaps), 4) if gaps else None,
        "negative_effects": card["true_effects"]["share_negative"],
    }


def dvc_metrics(card: dict[str, Any]) -> dict[str, Any]:
    """The card's headline for `dvc metrics show`, under the column names of the model's metrics so the two rows
    compare directly and the table stays narrow: `auroc` = the Bayes AUROC (no model can beat it), `regret` = the
    guideline list's regret against the oracle (what a personalised model should beat), `policy_value` = the
    oracle's value (the most any policy reaches)."""
    return {
        "auroc": card["bayes_auroc"],
        "regret": card["policies"].get("guideline", {}).get("regret"),
        "policy_value": card["oracle_value"],
    }

