"""Outcome labels: follow-up visit choice, TIS and response, skin response, safety, and missing follow-up."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.config import LabelConfig
from features.labels import outcome_labels
from tests.code.test_features_build import normalised

DECISION = "2025-01-06"
ENZYME_ULN = 200.0


def visit(date: str, pga=6.0, ptga=6.0, mmt8=60.0, haq=1.5, emg=5.0, ck=1000.0, cdasi=30.0, patient="P1"):
    rows = [(patient, date, "physician_global", pga), (patient, date, "patient_global", ptga),
            (patient, date, "mmt8", mmt8), (patient, date, "haq", haq), (patient, date, "extramuscular_global", emg),
            (patient, date, "ck", ck, ENZYME_ULN), (patient, date, "cdasi_activity", cdasi)]
    return [r for r in rows if not (isinstance(r[3], float) and np.isnan(r[3]))]


def labels(assessments, events=(), patients=None, config=None, date=DECISION) -> pd.Series:
    t = normalised([], assessments, events, patients)
    decisions = pd.DataFrame({"patient_id": ["P1"], "date": [pd.Timestamp(date)]})
    return outcome_labels(decisions, t, config).iloc[0]


def week(w: float) -> str:
    return (pd.Timestamp(DECISION) + pd.Timedelta(days=round(w * 7))).strftime("%Y-%m-%d")


IMPROVED = dict(pga=3.0, ptga=4.0, mmt8=70.0, haq=1.0, emg=2.0, ck=400.0, cdasi=20.0)
# points: physician 30 % → 17.5, patient 20 % → 5, MMT-8 12.5 % → 20, HAQ 16.7 % → 7.5, extramuscular 30 % → 15,
# CK 60 % → 7.5: TIS 72.5 (major)


def test_tis_response_and_skin_response_at_week_24():
    lab = labels(visit(DECISION) + visit(week(24), **IMPROVED))
    assert lab["total_improvement_score"] == pytest.approx(72.5)
    assert lab["improvement_category"] == "major"
    assert lab["response"] == 1.0
    assert lab["cdasi_change"] == -10.0 and lab["skin_response"] == 1.0
    assert lab["followup_date"] == pd.Timestamp(week(24))
    assert lab["label_missing_reason"] is None


def test_nearest_visit_to_the_horizon_is_the_follow_up():
    lab = labels(visit(DECISION) + visit(week(19), **IMPROVED) + visit(week(25)) + visit(week(31), **IMPROVED))
    assert lab["followup_date"] == pd.Timestamp(week(25))
    assert lab["total_improvement_score"] == 0.0 and lab["response"] == 0.0


@pytest.mark.parametrize("w", [17, 31, 12])
def test_no_visit_in_the_window_leaves_labels_missing(w):
    lab = labels(visit(DECISION) + visit(week(w), **IMPROVED))
    assert np.isnan(lab["total_improvement_score"]) and np.isnan(lab["response"])
    assert pd.isna(lab["followup_date"]) and np.isnan(lab["skin_response"])
    assert "no follow-up visit" in lab["label_missing_reason"]


def test_window_and_horizon_are_configurable():
    lab = labels(visit(DECISION) + visit(week(17), **IMPROVED), config=LabelConfig(horizon_weeks=16, window_weeks=2))
    assert lab["total_improvement_score"] == pytest.approx(72.5)


@pytest.mark.parametrize(
    ("days_before", "scored"),
    [(20, True), (30, True), (31, False)],
)
def test_missing_baseline_measure_is_carried_forward_at_most_30_days(days_before, scored):
    earlier = (pd.Timestamp(DECISION) - pd.Timedelta(days=days_before)).strftime("%Y-%m-%d")
    base = visit(DECISION, haq=np.nan) + [("P1", earlier, "haq", 1.5)]
    lab = labels(base + visit(week(24), **IMPROVED))
    if scored:
        assert lab["total_improvement_score"] == pytest.approx(72.5)
    else:
        assert np.isnan(lab["total_improvement_score"])
        assert "missing baseline haq" in lab["label_missing_reason"]


def test_juvenile_thresholds_apply_to_juvenile_dm():
    # physician 20 % → 15, MMT-8 12.5 % → 20, CK 60 % → 7.5: TIS 42.5 (adult moderate, juvenile minimal)
    follow = visit(week(24), pga=4.0, mmt8=70.0, ck=400.0)
    adult = labels(visit(DECISION) + follow)
    juvenile = labels(visit(DECISION) + follow,
                      patients=[{"patient_id": "P1", "diagnosis": "juvenile_dermatomyositis"}])
    assert adult["total_improvement_score"] == juvenile["total_improvement_score"] == pytest.approx(42.5)
    assert (adult["improvement_category"], adult["response"]) == ("moderate", 1.0)
    assert (juvenile["improvement_category"], juvenile["response"]) == ("minimal", 0.0)


@pytest.mark.parametrize("juvenile", [False, True])
def test_the_model_scores_response_by_the_labels_rule(juvenile: bool):
    """Training and evaluation turn TIS into response with the labels' own thresholds (juvenile DM: 45, not 40)."""
    from models.bundle import BundleConfig
    from models.response import JUVENILE_COLUMN, response_margin, response_of

    follow = visit(week(24), pga=4.0, mmt8=70.0, ck=400.0)  # TIS 42.5: adult responder, juvenile not
    diagnosis = "juvenile_dermatomyositis" if juvenile else "adult_dermatomyositis"
    lab = labels(visit(DECISION) + follow, patients=[{"patient_id": "P1", "diagnosis": diagnosis}])
    features = pd.DataFrame({JUVENILE_COLUMN: [float(juvenile)]})
    tis = np.array([lab["total_improvement_score"]])
    assert tis[0] == pytest.approx(42.5) and lab["response"] == (0.0 if juvenile else 1.0)
    assert response_of(tis, features, BundleConfig()).tolist() == [lab["response"]]
    both = response_of(np.array([[np.nan, 42.5, 45.0]]), features, BundleConfig())  # one row, three options
    assert np.isnan(both[0, 0]) and both[0, 1:].tolist() == [0.0 if juvenile else 1.0, 1.0]
    # the score GLM learns from the margin over that threshold: a response is a margin ≥ 0
    margin = response_margin(np.array([[np.nan, 42.5, 45.0]]), features, BundleConfig())
    assert np.isnan(margin[0, 0]) and margin[0, 1:].tolist() == ([-2.5, 0.0] if juvenile else [2.5, 5.0])


@pytest.mark.parametrize(
    ("event", "day", "expected"),
    [
        (("serious_infection", None), 30, 1.0),
        (("opportunistic_infection", None), 168, 1.0),  # the last day of the horizon counts
        (("serious_infection", None), 169, 0.0),  # after the horizon
        (("serious_infection", None), 0, 0.0),  # on the decision day: before the option started
        (("cytopenia", 3), 60, 1.0),
        (("cytopenia", 2), 60, 0.0),  # grade 2 is not a serious cytopenia
        (("thromboembolism", None), 60, 0.0),  # recorded, but not part of the safety outcome
    ],
)
def test_safety_event_within_the_horizon(event, day, expected):
    date = (pd.Timestamp(DECISION) + pd.Timedelta(days=day)).strftime("%Y-%m-%d")
    lab = labels(visit(DECISION) + visit(week(24)), events=[("P1", date, event[0], event[1])])
    assert lab["safety_event"] == expected


def test_safety_is_missing_without_follow_up_unless_an_event_happened():
    assert np.isnan(labels(visit(DECISION))["safety_event"])
    lab = labels(visit(DECISION), events=[("P1", week(4), "serious_infection", None)])
    assert lab["safety_event"] == 1.0


def test_labels_align_with_the_decision_index():
    t = normalised([], visit(DECISION) + visit(week(24), **IMPROVED) + visit(DECISION, patient="P2"),
                   patients=[{"patient_id": "P1"}, {"patient_id": "P2"}])
    decisions = pd.DataFrame({"patient_id": ["P2", "P1"], "date": pd.to_datetime([DECISION, DECISION])},
                             index=[10, 20])
    out = outcome_labels(decisions, t)
    assert out.index.tolist() == [10, 20]
    assert np.isnan(out.loc[10, "total_improvement_score"])
    assert out.loc[20, "total_improvement_score"] == pytest.approx(72.5)


def _with_prednisone(regimens):
    t = normalised(regimens, visit(DECISION) + visit(week(24), **IMPROVED))
    decisions = pd.DataFrame({"patient_id": ["P1"], "date": [pd.Timestamp(DECISION)]})
    return outcome_labels(decisions, t).iloc[0]["steroid_sparing"]


@pytest.mark.parametrize(
    ("regimens", "sparing"),
    [
        # 20 mg/day tapered to 5 mg/day by the follow-up: steroid sparing
        ([("P1", "prednisone", 20, "mg", "oral", "daily", "2024-06-01", week(8)),
          ("P1", "prednisone", 5, "mg", "oral", "daily", week(8.15), None)], 1.0),
        # still at 10 mg/day: above the 7.5 mg/day goal
        ([("P1", "prednisone", 10, "mg", "oral", "daily", "2024-06-01", None)], 0.0),
        # at 5 mg/day at follow-up, but raised to 40 mg/day in between (a flare treated)
        ([("P1", "prednisone", 10, "mg", "oral", "daily", "2024-06-01", week(4)),
          ("P1", "prednisone", 40, "mg", "oral", "daily", week(4.15), week(12)),
          ("P1", "prednisone", 5, "mg", "oral", "daily", week(12.15), None)], 0.0),
        ([], 1.0),  # no prednisone at all: 0 mg/day
    ],
    ids=["tapered", "above goal", "flare in between", "none"],
)
def test_steroid_sparing_is_prednisone_at_goal_at_follow_up_without_a_rise(regimens, sparing):
    assert _with_prednisone(regimens) == sparing


def test_steroid_sparing_is_missing_without_follow_up():
    t = normalised([("P1", "prednisone", 5, "mg", "oral", "daily", "2024-06-01", None)], visit(DECISION))
    decisions = pd.DataFrame({"patient_id": ["P1"], "date": [pd.Timestamp(DECISION)]})
    assert np.isnan(outcome_labels(decisions, t).iloc[0]["steroid_sparing"])


def two_decisions(assessments, second: str) -> pd.DataFrame:
    t = normalised([], assessments)
    decisions = pd.DataFrame({"patient_id": ["P1", "P1"], "date": [pd.Timestamp(second), pd.Timestamp(DECISION)]})
    return outcome_labels(decisions, t)


def test_follow_up_is_never_after_the_next_decision():
    # the next decision at week 20 is this option's outcome visit; week 24 already measures the option chosen then
    out = two_decisions(visit(DECISION) + visit(week(20), **IMPROVED) + visit(week(24)), week(20))
    first = out.iloc[1]
    assert first["followup_date"] == pd.Timestamp(week(20))
    assert first["total_improvement_score"] == pytest.approx(72.5) and first["response"] == 1.0
    # a next decision before the window leaves the label missing, and says why
    out = two_decisions(visit(DECISION) + visit(week(12)) + visit(week(24), **IMPROVED), week(12))
    assert np.isnan(out.iloc[1]["response"])
    assert out.iloc[1]["label_missing_reason"].endswith("before the next decision")


# boundaries of the label rules: exactly at a threshold, at a window's edge, a tie


def test_tis_exactly_at_the_threshold_is_a_response():
    # physician 6->4 (20 % -> 15), MMT 60->70 (12.5 % -> 20), patient 6->5 (10 % -> 2.5), CK 1000->850 (15 % -> 2.5)
    lab = labels(visit(DECISION) + visit(week(24), pga=4.0, ptga=5.0, mmt8=70.0, ck=850.0))
    assert lab["total_improvement_score"] == 40.0
    assert lab["improvement_category"] == "moderate" and lab["response"] == 1.0


def test_cdasi_drop_of_exactly_5_is_a_skin_response():
    lab = labels(visit(DECISION) + visit(week(24), cdasi=25.0))
    assert lab["cdasi_change"] == -5.0 and lab["skin_response"] == 1.0


def test_prednisone_at_exactly_the_goal_is_steroid_sparing():
    assert _with_prednisone([("P1", "prednisone", 7.5, "mg", "oral", "daily", "2024-06-01", None)]) == 1.0


def test_a_small_prednisone_rise_in_between_is_a_rise():
    assert _with_prednisone([("P1", "prednisone", 5, "mg", "oral", "daily", "2024-06-01", week(4)),
                             ("P1", "prednisone", 7.5, "mg", "oral", "daily", week(4.15), week(12)),
                             ("P1", "prednisone", 5, "mg", "oral", "daily", week(12.15), None)]) == 0.0


@pytest.mark.parametrize("w", [18, 30])
def test_follow_up_window_edges_are_inclusive(w):
    lab = labels(visit(DECISION) + visit(week(w), **IMPROVED))
    assert lab["total_improvement_score"] == pytest.approx(72.5)


def test_equidistant_visits_take_the_earlier():
    lab = labels(visit(DECISION) + visit(week(22), **IMPROVED) + visit(week(26)))
    assert lab["followup_date"] == pd.Timestamp(week(22))
