"""Honest model selection without the truth: each candidate learner is fitted on K-1 folds of the training
patients and recommends for the held-out fold; its recommendations are valued with cross-fitted AIPW scores
(the doubly robust policy value, Athey & Wager 2021). The first candidate (in the configured order, simplest
first) whose value is within `tolerance_se` standard errors of the best one's wins — the one-standard-error
rule: on a few thousand decisions the values of close candidates differ by less than their noise.

Nothing here needs counterfactual outcomes, so the same selection runs on real records. Pure: no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.learners import BaseLearner, FitData, patient_folds


@dataclass(frozen=True)
class Selection:
    """The selection table (one row per candidate, best first) and the chosen candidate's name."""

    table: pd.DataFrame
    chosen: str


def recommend(outcomes: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Position of the best eligible option per row (ties: the first in arm order)."""
    return np.argmax(np.where(eligible, outcomes, -np.inf), axis=1)


def select_learner(
    candidates: Mapping[str, BaseLearner],
    data: FitData,
    scores: np.ndarray,
    *,
    n_folds: int,
    seed: int,
    tolerance_se: float = 1.0,
) -> Selection:
    """Cross-fitted doubly robust policy value of each candidate's recommendation on the training patients.

    `scores` (n, n_arms) are cross-fitted AIPW scores of `data` (`models.learners.cross_fitted_aipw`). Per
    candidate the table gives the policy value with its standard error, the difference from the best candidate
    with the standard error of that paired difference (the chosen candidate is the first in `candidates` order
    whose difference is at least −`tolerance_se` of its SE; 0 chooses the best), the factual log loss / Brier score of the out-of-fold
    predictions (how well it predicts, which is not how well it ranks) and fit seconds.
    """
    if not candidates:
        raise ValueError("selection: no candidate learners (rule: at least one)")
    if scores.shape != (len(data.y), len(data.arms)):
        raise ValueError(f"selection: scores have shape {scores.shape}, expected {(len(data.y), len(data.arms))}")
    folds = patient_folds(data.groups, n_folds, seed=seed)
    rows = np.arange(len(data.y))
    contributions: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    records = []
    for name, learner in candidates.items():
        started = time.perf_counter()
        oof = np.full((len(data.y), len(data.arms)), np.nan)
        try:
            for train, test in folds:
                member = learner.clone(arms=data.arms, outcome=data.outcome).fit_prepared(data.rows(train))
                oof[test] = member.predict_outcomes(data.X.iloc[test])
        except ValueError as exc:  # e.g. a per-option model with one outcome in a fold: this candidate cannot run
            failed[name] = str(exc)
            continue
        rec = recommend(oof, data.eligible)
        contributions[name] = scores[rows, rec]
        factual = np.clip(oof[rows, data.codes], 1e-6, 1 - 1e-6)
        y = data.y
        records.append({
            "candidate": name,
            "policy_value": float(np.mean(contributions[name])),
            "policy_value_se": float(np.std(contributions[name], ddof=1) / np.sqrt(len(y))),
            "factual_log_loss": float(-np.mean(y * np.log(factual) + (1 - y) * np.log(1 - factual)))
            if data.outcome == "binary" else float("nan"),
            "factual_brier": float(np.mean((oof[rows, data.codes] - y) ** 2)),
            "fit_seconds": round(time.perf_counter() - started, 2),
        })
    if not records:
        raise ValueError(f"selection: every candidate failed ({failed}) (rule: at least one must fit on every fold)")
    table = pd.DataFrame(records)
    best = str(table.loc[table["policy_value"].idxmax(), "candidate"])
    diff = {name: contributions[name] - contributions[best] for name in contributions}
    table["difference_vs_best"] = table["candidate"].map(lambda c: float(np.mean(diff[c])))
    table["difference_se"] = table["candidate"].map(
        lambda c: float(np.std(diff[c], ddof=1) / np.sqrt(len(diff[c]))))
    close = table["difference_vs_best"] >= -tolerance_se * table["difference_se"]
    chosen = str(table.loc[close, "candidate"].iloc[0])  # the best is always close to itself
    table["chosen"] = table["candidate"] == chosen
    if failed:  # shown, never dropped: the reason in the table, no value
        table = pd.concat([table, pd.DataFrame({"candidate": list(failed), "failed": list(failed.values()),
                                                "chosen": False})], ignore_index=True)
    return Selection(table=table, chosen=chosen)
