"""Honest model selection without the truth: each candidate learner is fitted on K-1 folds of the training
patients and predicts every option's outcome for the held-out fold. Two criteria score these out-of-fold
predictions against cross-fitted AIPW scores, and the selection table gives both:

- `policy_value`: the doubly robust value of the candidate's recommendations (Athey & Wager 2021) — the
  estimand of a choice among many options: does acting on this model pay? It is blind to how far off the
  predicted effects are while the ranking holds (a constant positive effect scores like an accurate one when
  treating is right for almost everyone).
- `dr_loss`: the mean squared error of the candidate's out-of-fold contrasts (option minus control) against
  their doubly robust pseudo-outcomes (AIPW score of the option minus that of control, the DR-learner's target;
  Kennedy 2023). Its expectation is the contrasts' mean squared error plus a term that does not depend on the
  candidate, so lower means more accurate effects — the estimand of effect estimation (√PEHE).

`criterion="auto"` ranks by the policy value for a binary outcome (escalation: a choice among many options,
where a predicted response is worth what its ranking is worth) and by the DR-loss for a continuous outcome (a
score whose effect size is what is reported, as in IHDP). The first candidate (in the configured order,
preferred first) within `tolerance_se` standard errors of the best one wins — the one-standard-error rule: on a
few thousand decisions close candidates differ by less than their noise.

Nothing here needs counterfactual outcomes, so the same selection runs on real records. Pure: no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from models.learners import BaseLearner, FitData, Outcome, patient_folds

Criterion = Literal["auto", "policy_value", "dr_loss"]
#: what `criterion="auto"` ranks by, per outcome type (the module docstring says why).
AUTO_CRITERION: Mapping[Outcome, Literal["policy_value", "dr_loss"]] = {"binary": "policy_value",
                                                                         "continuous": "dr_loss"}


@dataclass(frozen=True)
class Selection:
    """The selection table (one row per candidate, best first) and the chosen candidate's name."""

    table: pd.DataFrame
    chosen: str


def recommend(outcomes: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Position of the best eligible option per row (ties: the first in arm order)."""
    return np.argmax(np.where(eligible, outcomes, -np.inf), axis=1)


def dr_loss_rows(outcomes: np.ndarray, scores: np.ndarray, control: int) -> np.ndarray:
    """Per row, the mean over its option-vs-control contrasts that have a pseudo-outcome (option and control
    eligible: both AIPW scores finite) of (pseudo-outcome − predicted contrast)²; NaN for a row without one.

    `outcomes` are a learner's predictions and `scores` the AIPW scores, both (n, n_arms); column `control` is
    the control option."""
    others = [k for k in range(outcomes.shape[1]) if k != control]
    pseudo = scores[:, others] - scores[:, [control]]
    effects = outcomes[:, others] - outcomes[:, [control]]
    sq = (pseudo - effects) ** 2
    valid = np.isfinite(sq)
    counts = valid.sum(axis=1)
    total = np.where(valid, sq, 0.0).sum(axis=1)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def _se(values: np.ndarray) -> float:
    """Standard error of the mean of `values` (finite values only)."""
    v = values[np.isfinite(values)]
    return float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def select_learner(
    candidates: Mapping[str, BaseLearner],
    data: FitData,
    scores: np.ndarray,
    *,
    n_folds: int,
    seed: int,
    tolerance_se: float = 1.0,
    criterion: Criterion = "auto",
) -> Selection:
    """Cross-fitted doubly robust policy value and DR-loss of each candidate on the training patients.

    `scores` (n, n_arms) are cross-fitted AIPW scores of `data` (`models.learners.cross_fitted_aipw`). Per
    candidate the table gives the policy value of its recommendations with its standard error, and the paired
    difference from the best value with that difference's SE (`difference_vs_best`, `difference_se`); the
    DR-loss of its contrasts with its SE, and the paired difference from the lowest (`dr_loss_vs_best`,
    `dr_loss_vs_best_se`); the factual log loss / Brier score of the out-of-fold predictions (how well it
    predicts, which is not how well it ranks) and fit seconds. `criterion` decides (`auto`: the policy value for
    a binary outcome, the DR-loss for a continuous one; the `criterion` column says which): the chosen candidate
    is the first in `candidates` order whose paired difference from the best is within `tolerance_se` of its SE
    (0 chooses the best). A candidate that cannot fit a fold (or does not model this outcome type) is a row with
    the reason, never dropped (`train` itself leaves out candidates made for another outcome kind beforehand).
    """
    if not candidates:
        raise ValueError("selection: no candidate learners (rule: at least one)")
    if scores.shape != (len(data.y), len(data.arms)):
        raise ValueError(f"selection: scores have shape {scores.shape}, expected {(len(data.y), len(data.arms))}")
    if criterion not in ("auto", "policy_value", "dr_loss"):
        raise ValueError(f"selection: criterion {criterion!r} (rule: one of auto, policy_value, dr_loss)")
    rule = AUTO_CRITERION[data.outcome] if criterion == "auto" else criterion
    controls = {learner.control for learner in candidates.values()}
    if len(controls) != 1 or next(iter(controls)) not in data.arms:
        raise ValueError(f"selection: candidates' control options {sorted(controls)} (rule: one control option, "
                         f"one of the arms {list(data.arms)})")
    control = data.arms.index(next(iter(controls)))
    folds = patient_folds(data.groups, n_folds, seed=seed)
    rows = np.arange(len(data.y))
    contributions: dict[str, np.ndarray] = {}
    losses: dict[str, np.ndarray] = {}
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
        losses[name] = dr_loss_rows(oof, scores, control)
        factual = np.clip(oof[rows, data.codes], 1e-6, 1 - 1e-6)
        y = data.y
        records.append({
            "candidate": name,
            "policy_value": float(np.mean(contributions[name])),
            "policy_value_se": float(np.std(contributions[name], ddof=1) / np.sqrt(len(y))),
            "dr_loss": float(np.nanmean(losses[name])) if np.isfinite(losses[name]).any() else float("nan"),
            "dr_loss_se": _se(losses[name]),
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
    table["difference_se"] = table["candidate"].map(lambda c: _se(diff[c]))
    if table["dr_loss"].notna().any():
        lowest = str(table.loc[table["dr_loss"].idxmin(), "candidate"])
        excess = {name: losses[name] - losses[lowest] for name in losses}
        table["dr_loss_vs_best"] = table["candidate"].map(lambda c: float(np.nanmean(excess[c])))
        table["dr_loss_vs_best_se"] = table["candidate"].map(lambda c: _se(excess[c]))
    else:  # no row has an option and control both eligible: no contrast to score
        table["dr_loss_vs_best"] = table["dr_loss_vs_best_se"] = np.nan
    if rule == "dr_loss" and table["dr_loss"].isna().all():
        raise ValueError("selection: criterion dr_loss, but no row has an option and the control option both "
                         "eligible (rule: a contrast needs rows where both are possible)")
    if rule == "policy_value":
        close = table["difference_vs_best"] >= -tolerance_se * table["difference_se"].fillna(0.0)
    else:
        close = table["dr_loss_vs_best"] <= tolerance_se * table["dr_loss_vs_best_se"].fillna(0.0)
    chosen = str(table.loc[close, "candidate"].iloc[0])  # the best is always close to itself
    table["criterion"] = rule
    table["chosen"] = table["candidate"] == chosen
    if failed:  # shown, never dropped: the reason in the table, no value
        table = pd.concat([table, pd.DataFrame({"candidate": list(failed), "failed": list(failed.values()),
                                                "criterion": rule, "chosen": False})], ignore_index=True)
    return Selection(table=table, chosen=chosen)
