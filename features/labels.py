"""Outcome labels of each decision from the assessments and events that followed it.

Baseline is the decision visit's core set (a missing measure carried forward from at most `carry_forward_days`
before); follow-up is the visit nearest decision + horizon within ± window and not after the patient's next
decision (a later visit measures the next option). From the pair: the ACR/EULAR Total Improvement Score, its
category, response at the configured threshold (juvenile DM thresholds for juvenile DM), CDASI activity change
and skin response, a safety event within (visit, visit + horizon], and steroid sparing (prednisone at or below
the taper goal at follow-up with no dose rise in between). No follow-up visit → the efficacy labels are missing
(and counted), never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from features.build import (
    FAR_FUTURE,
    composite,
    decompose,
    from_days,
    measure_tracks,
    pairs,
    patient_codes,
    to_days,
)
from features.config import LabelConfig
from features.decisions import visit_days, visit_measures, visit_values
from features.response import (
    DEFAULT_TIS_RULES,
    TisRules,
    improvement_category,
    response_threshold,
    total_improvement_score,
)

LABEL_COLUMNS: tuple[str, ...] = (
    "followup_date", "total_improvement_score", "improvement_category", "response", "cdasi_change",
    "skin_response", "safety_event", "steroid_sparing", "label_missing_reason",
)


def outcome_labels(
    decisions: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    config: LabelConfig | None = None,
    rules: TisRules = DEFAULT_TIS_RULES,
) -> pd.DataFrame:
    """Labels for each decision (`patient_id`, `date` = the decision visit), aligned with `decisions`' index.

    `response` and `skin_response` are 1.0 / 0.0 / NaN (missing follow-up or a missing measure); `safety_event`
    is 1.0 when a serious or opportunistic infection or a cytopenia of grade ≥ the configured grade occurred in
    (visit, visit + horizon], 0.0 when none did and the patient was followed that long, NaN otherwise.
    """
    config = config or LabelConfig()
    pid = decisions["patient_id"].astype(str).to_numpy()
    index = pd.Index(pd.unique(pid))
    codes = patient_codes(index, pid)
    day = to_days(decisions["date"])
    assessments = tables["assessments"]
    tracks = measure_tracks(assessments, index, visit_measures())
    baseline = visit_values(tracks, codes, day, config.carry_forward_days)

    # follow-up: the visit nearest decision + horizon within ± window (ties: the earlier visit)
    horizon = config.horizon_weeks * 7
    window = config.window_weeks * 7
    vc, vd = visit_days(tracks)
    vkey = composite(vc, vd)
    target = day + horizon
    lo_day = np.maximum(target - window, day + 1)
    # a visit after the patient's next decision measures the option chosen there, not this one
    next_day = next_decision_day(codes, day)
    hi_day = np.minimum(target + window, next_day)
    lo = np.searchsorted(vkey, composite(codes, lo_day), side="left")
    hi = np.searchsorted(vkey, composite(codes, hi_day + 1), side="left")
    q, pos = pairs(lo, np.maximum(hi, lo))
    fu_day = np.full(len(day), -1, dtype=np.int64)
    if len(q):
        dist = np.abs(vd[pos] - target[q])
        order = np.lexsort((vd[pos], dist, q))
        first = order[np.r_[True, q[order][1:] != q[order][:-1]]]
        fu_day[q[first]] = vd[pos[first]]
    has_fu = fu_day >= 0
    followup = visit_values(tracks, codes, np.where(has_fu, fu_day, day), config.carry_forward_days,
                            not_before=day + 1)
    followup.loc[~has_fu, :] = np.nan

    tis = total_improvement_score(baseline, followup, rules)
    score = tis["total_improvement_score"].to_numpy(float)
    patients = tables["patients"]
    juvenile_ids = set(patients.loc[patients["diagnosis"].astype(str) == "juvenile_dermatomyositis", "patient_id"].astype(str))
    juvenile = np.isin(pid, list(juvenile_ids))
    category = improvement_category(pd.Series(score), juvenile, rules)
    threshold = np.where(juvenile, response_threshold(config.response_category, True, rules),
                         response_threshold(config.response_category, False, rules))
    with np.errstate(invalid="ignore"):
        response = np.where(np.isnan(score), np.nan, (np.round(score, 9) >= threshold).astype(float))
        cdasi_change = followup["cdasi_activity"].to_numpy(float) - baseline["cdasi_activity"].to_numpy(float)
        skin = np.where(np.isnan(cdasi_change), np.nan, (cdasi_change <= -config.skin_response_drop).astype(float))

    safety = _safety_event(tables["events"], tables["assessments"], index, codes, day, horizon, has_fu, config)
    sparing = steroid_sparing(tables["regimens"], index, codes, day, np.where(has_fu, fu_day, -1),
                              config.steroid_goal_mg_day)
    no_visit = f"no follow-up visit within ±{config.window_weeks} weeks of week {config.horizon_weeks}"
    reason = np.where(
        ~has_fu,
        np.where(next_day < lo_day, f"{no_visit} before the next decision", no_visit),
        tis["missing_reason"].astype(object).to_numpy(),
    )
    reason = np.where(np.isnan(score), reason, None)
    out = pd.DataFrame(
        {
            "followup_date": from_days(np.where(has_fu, fu_day, FAR_FUTURE)),
            "total_improvement_score": score,
            "improvement_category": category.astype(object).to_numpy(),
            "response": response,
            "cdasi_change": cdasi_change,
            "skin_response": skin,
            "safety_event": safety,
            "steroid_sparing": sparing,
            "label_missing_reason": reason,
        },
        index=decisions.index,
    )
    return out


def next_decision_day(codes: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Day of each decision's next decision of the same patient (a later day; `FAR_FUTURE` for the last one)."""
    keys = np.unique(composite(codes, day))
    after = np.searchsorted(keys, composite(codes, day), side="right")
    next_code, next_day = decompose(keys[np.minimum(after, len(keys) - 1)])
    return np.where((after < len(keys)) & (next_code == codes), next_day, FAR_FUTURE)


def steroid_sparing(regimens: pd.DataFrame, index: pd.Index, codes: np.ndarray, day: np.ndarray,
                    fu_day: np.ndarray, goal_mg_day: float, rise_tolerance: float = 0.05) -> np.ndarray:
    """1 / 0 / NaN per decision: prednisone (mg/day, summed over its rows) at or below `goal_mg_day` on the
    follow-up day and never raised above the decision-day dose in between (a rise is a flare being treated);
    NaN without a follow-up visit (`fu_day` < 0). No prednisone row on a day means 0 mg/day."""
    pred = regimens[regimens["generic"].astype(str).to_numpy() == "prednisone"]
    rc = patient_codes(index, pred["patient_id"])
    keep = rc >= 0
    rows = pd.DataFrame({"code": rc[keep], "start": to_days(pred["start_date"])[keep],
                         "end": np.nan_to_num(to_days(pred["end_date"])[keep].astype(float), nan=np.inf),
                         "mg": pd.to_numeric(pred["daily_mg"], errors="coerce").to_numpy(float)[keep]})
    out = np.full(len(codes), np.nan)
    has_fu = fu_day >= 0
    if not has_fu.any():
        return out
    q = pd.DataFrame({"q": np.flatnonzero(has_fu), "code": codes[has_fu], "day": day[has_fu],
                      "fu": fu_day[has_fu]})
    m = q.merge(rows, on="code", how="left")
    mg = m["mg"].fillna(0.0).to_numpy()

    def dose_on(which: str) -> np.ndarray:
        on = (m["start"].to_numpy() <= m[which].to_numpy()) & (m[which].to_numpy() <= m["end"].to_numpy())
        return np.bincount(m["q"].to_numpy(), weights=np.where(on, mg, 0.0), minlength=len(codes))

    at_decision, at_followup = dose_on("day"), dose_on("fu")
    started_between = (m["start"].to_numpy() > m["day"].to_numpy()) & (m["start"].to_numpy() <= m["fu"].to_numpy())
    peak = np.zeros(len(codes))
    np.maximum.at(peak, m["q"].to_numpy(), np.where(started_between, mg, 0.0))
    rose = peak > at_decision * (1 + rise_tolerance) + 1e-9
    ok = (at_followup <= goal_mg_day + 1e-9) & ~rose
    out[has_fu] = ok[has_fu].astype(float)
    return out


def _safety_event(events: pd.DataFrame, assessments: pd.DataFrame, index: pd.Index, codes: np.ndarray,
                  day: np.ndarray, horizon: int, has_fu: np.ndarray, config: LabelConfig) -> np.ndarray:
    """1 / 0 / NaN: a safety event in (day, day + horizon]; 0 only when the patient was followed that long."""
    kind = events["event"].astype(str).to_numpy()
    grade = pd.to_numeric(events["grade"], errors="coerce").to_numpy(float) if "grade" in events else np.full(len(events), np.nan)
    with np.errstate(invalid="ignore"):
        serious = np.isin(kind, [e for e in config.safety_events if e != "cytopenia"]) | (
            (kind == "cytopenia") & ("cytopenia" in config.safety_events) & (grade >= config.cytopenia_min_grade)
        )
    ec = patient_codes(index, events["patient_id"])[serious]
    ed = to_days(events["date"])[serious]
    key = np.sort(composite(ec, ed))
    lo = np.searchsorted(key, composite(codes, day + 1), side="left")
    hi = np.searchsorted(key, composite(codes, day + horizon + 1), side="left")
    occurred = hi > lo
    # followed for the whole horizon: any record (assessment or event) dated at or after day + horizon
    ac = patient_codes(index, assessments["patient_id"])
    last = np.full(len(index), -np.inf)
    ok = ac >= 0
    np.maximum.at(last, ac[ok], to_days(assessments["date"])[ok].astype(float))
    followed = has_fu | (last[codes] >= day + horizon)
    return np.where(occurred, 1.0, np.where(followed, 0.0, np.nan))


def label_agreement(labels: pd.DataFrame, decisions: pd.DataFrame, truth_decisions: pd.DataFrame,
                    truth_outcomes: pd.DataFrame, response_threshold_adult: float = 40.0) -> dict[str, float]:
    """How derived labels agree with the simulator's realised potential outcome of the option actually taken,
    on decisions matched to a true decision (same patient and date) where the derived option is the true one."""
    d = decisions[["patient_id", "date", "option_taken"]].assign(
        patient_id=decisions["patient_id"].astype(str), date=pd.to_datetime(decisions["date"]).astype("datetime64[ns]"),
        tis=labels["total_improvement_score"].to_numpy(), response=labels["response"].to_numpy(),
        safety=labels["safety_event"].to_numpy(), cdasi=labels["cdasi_change"].to_numpy(),
    )
    t = truth_decisions[["decision_id", "patient_id", "date", "option_taken"]].assign(
        patient_id=truth_decisions["patient_id"].astype(str),
        date=pd.to_datetime(truth_decisions["date"]).astype("datetime64[ns]"),
    )
    m = d.merge(t, on=["patient_id", "date"], suffixes=("", "_true"))
    m = m[m["option_taken"] == m["option_taken_true"]]
    o = truth_outcomes.rename(columns={"option": "option_taken_true", "tis": "tis_true", "cdasi_change": "cdasi_true",
                                       "safety_event": "safety_true"})
    m = m.merge(o[["decision_id", "option_taken_true", "tis_true", "cdasi_true", "safety_true"]],
                on=["decision_id", "option_taken_true"], how="left")
    both = m["tis"].notna() & m["tis_true"].notna()
    diff = (m.loc[both, "tis"] - m.loc[both, "tis_true"]).abs()
    resp_true = m.loc[both, "tis_true"] >= response_threshold_adult
    resp_derived = m.loc[both, "tis"] >= response_threshold_adult
    safety_both = m["safety"].notna() & m["safety_true"].notna()
    cd_both = m["cdasi"].notna() & m["cdasi_true"].notna()
    return {
        "decisions_compared": int(len(m)),
        "tis_compared": int(both.sum()),
        "tis_exact_agreement": float((diff < 1e-6).mean()) if both.any() else float("nan"),
        "tis_mean_abs_difference": float(diff.mean()) if both.any() else float("nan"),
        "response_agreement": float((resp_true == resp_derived).mean()) if both.any() else float("nan"),
        "cdasi_change_mean_abs_difference": float((m.loc[cd_both, "cdasi"] - m.loc[cd_both, "cdasi_true"]).abs().mean())
        if cd_both.any() else float("nan"),
        "safety_agreement": float((m.loc[safety_both, "safety"] == m.loc[safety_both, "safety_true"].astype(float)).mean())
        if safety_both.any() else float("nan"),
    }
