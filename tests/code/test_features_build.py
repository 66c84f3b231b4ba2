"""Point-in-time features: doses versus targets, the regimen cut-off, look-back windows, the dictionary.

`normalised(...)` builds small normalised contract tables by hand (the shape docs/architecture.md defines), so
each rule is tested on a record a clinician can read; the seed case goes through the real data contract.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.build import FeatureSet, build_features, option_eligibility
from features.config import FeatureConfig
from features.vocabulary import OptionCatalog, Vocabulary, dose_to_mg, parse_intervals
from pipeline.config import load_reference
from tests.conftest import SEED_CASE

SEED = SEED_CASE
VOCABULARY = Vocabulary.from_config(load_reference("drugs"))
CATALOG = OptionCatalog.from_config(load_reference("options"))

ANTIBODY_FLAGS = ("anti_mda5", "anti_tif1g", "anti_nxp2", "anti_mi2", "anti_sae", "anti_synthetase",
                  "anti_srp_hmgcr", "antibody_negative")


def normalised(
    regimens: list[tuple] = (),
    assessments: list[tuple] = (),
    events: list[tuple] = (),
    patients: list[dict] | None = None,
    weight_kg: float = 70.0,
) -> dict[str, pd.DataFrame]:
    """Normalised tables from compact records.

    regimens: (patient, drug as written, dose, unit, route, interval, start, end or None);
    assessments: (patient, date, measure, value[, upper limit]) in canonical units (mmt8 on the 0-80 scale);
    events: (patient, date, event, grade or None). Weight-based doses resolve with `weight_kg`.
    """
    pats = pd.DataFrame(patients or [{"patient_id": "P1"}])
    defaults = {"sex": "F", "birth_year": 1970, "diagnosis": "adult_dermatomyositis", "diagnosis_date": "2018-01-01",
                "antibodies": "negative", "ild": False, "cancer_associated": False}
    for col, value in defaults.items():
        if col not in pats:
            pats[col] = value
    for flag in ANTIBODY_FLAGS:
        pats[flag] = pats[flag].astype(bool) if flag in pats else False
    pats["diagnosis_date"] = pd.to_datetime(pats["diagnosis_date"])
    pats.insert(1, "row", range(len(pats)))

    reg = pd.DataFrame(list(regimens), columns=["patient_id", "drug", "dose", "dose_unit", "route", "interval",
                                                "start_date", "end_date"])
    reg["generic"] = VOCABULARY.lookup_many(reg["drug"])
    reg["drug_class"] = reg["generic"].map({d.generic: d.drug_class for d in VOCABULARY.drugs}).astype(object)
    reg = pd.concat([reg, parse_intervals(reg["interval"])], axis=1)
    w = pd.Series(weight_kg, index=reg.index)
    reg["dose_mg"] = dose_to_mg(reg["dose"].astype(float), reg["dose_unit"], w, np.sqrt(w * 170 / 3600))
    reg["daily_mg"] = reg["dose_mg"] * reg["doses_per_cycle"] / reg["cycle_days"]
    reg["start_date"] = pd.to_datetime(reg["start_date"])
    reg["end_date"] = pd.to_datetime(reg["end_date"])
    reg.insert(1, "row", range(len(reg)))

    rows = [tuple(a) + (np.nan,) * (5 - len(a)) for a in assessments]
    ass = pd.DataFrame(rows, columns=["patient_id", "date", "measure", "value", "upper_limit_normal"])
    ass["date"] = pd.to_datetime(ass["date"])
    ass["value"] = ass["value"].astype(float)
    ass["upper_limit_normal"] = ass["upper_limit_normal"].astype(float)
    ass["unit"] = ""
    ass["scale_max"] = np.where(ass["measure"] == "mmt8", 80.0, np.nan)
    ass.insert(1, "row", range(len(ass)))

    ev = pd.DataFrame(list(events), columns=["patient_id", "date", "event", "grade"])
    ev["date"] = pd.to_datetime(ev["date"])
    ev["grade"] = ev["grade"].astype(float)
    ev["details"] = ""
    ev.insert(1, "row", range(len(ev)))
    return {"patients": pats, "regimens": reg, "assessments": ass, "events": ev}


def features_at(tables: dict[str, pd.DataFrame], *dates: str, config: FeatureConfig | None = None) -> FeatureSet:
    keys = pd.DataFrame({"patient_id": "P1", "as_of": pd.to_datetime(list(dates))})
    return build_features(keys, tables, VOCABULARY, CATALOG, config)


@pytest.fixture(scope="module")
def seed_tables() -> dict[str, pd.DataFrame]:
    from features.contract import MeasureCatalog, check
    from pipeline.io import read_contract_tables

    result = check(read_contract_tables(SEED), VOCABULARY, MeasureCatalog.from_config(load_reference("measures")),
                   "2026-11-25")
    assert result.ok, result.errors
    return result.normalised


@pytest.fixture(scope="module")
def seed_features(seed_tables) -> FeatureSet:
    keys = pd.DataFrame({"patient_id": ["SEED-0001"], "as_of": [pd.Timestamp("2026-11-18")]})
    return build_features(keys, seed_tables, VOCABULARY, CATALOG)


# --- the seed case: the dose check the clinical recommendation makes ------------------------------------------
@pytest.mark.parametrize(
    ("generic", "fraction", "status"),
    [
        ("ivig", 0.5, "below"),  # 1 g/kg every 4 weeks = half of 2 g/kg
        ("mycophenolate", 1.0, "at"),  # 2 g/day, low end of 2-3 g/day
        ("hydroxychloroquine", 1.0, "at"),  # 200 mg/day at 70 kg (≤ 5 mg/kg/day)
        ("tocilizumab", 1.0, "at"),  # 8 mg/kg every 4 weeks
        ("rituximab", 1.0, "at"),  # 1 g × 2 in May/June: still active
    ],
)
def test_seed_case_doses_versus_targets(seed_features, generic, fraction, status):
    side = seed_features.current_regimen.set_index("generic")
    assert side.loc[generic, "fraction_of_target"] == pytest.approx(fraction, abs=0.01)
    assert side.loc[generic, "status"] == status
    assert side.loc[generic, "target_text"] == VOCABULARY.drug(generic).text
    f = seed_features.features.iloc[0]
    assert f[f"{generic}_dose_fraction"] == pytest.approx(fraction, abs=0.01)
    assert f[f"{generic}_below_target"] == float(status == "below")


def test_seed_case_regimen_summary(seed_features):
    f = seed_features.features.iloc[0]
    assert f["prednisone_mg_day"] == 15.0
    assert f["prednisone_mg_kg_day"] == pytest.approx(15 / 70)
    assert f["prednisone_above_taper_goal"] == 1.0
    assert f["n_immunosuppressants"] == 3.0  # rituximab, tocilizumab, mycophenolate
    assert f["n_current_drugs"] == 6.0
    assert f["months_since_rituximab"] == pytest.approx((pd.Timestamp("2026-11-17") - pd.Timestamp("2026-06-03")).days / 30.4375)
    assert f["months_since_regimen_change"] == pytest.approx(181 / 30.4375)  # the combination since 20 May
    assert f["lines_of_therapy"] == 6.0  # methotrexate, HCQ, MMF, IVIG, rituximab, tocilizumab
    assert f["serious_infections_12m"] == 0.0


def test_seed_case_eligible_options(seed_features):
    e = option_eligibility(seed_features, CATALOG, VOCABULARY).iloc[0]
    eligible = [o for o in CATALOG.names if e[f"eligible_{o}"]]
    assert eligible == ["continue", "optimise_dose", "add_cyclophosphamide", "add_abatacept", "add_jak_inhibitor",
                        "switch_tocilizumab_to_jak_inhibitor", "switch_tocilizumab_to_abatacept",
                        "switch_mycophenolate_to_cyclophosphamide", "switch_mycophenolate_to_tacrolimus"]
    assert e["ineligible_reason_add_ivig"] == "already on ivig"
    assert e["ineligible_reason_add_rituximab"] == "already on rituximab"


# --- the regimen cut-off -------------------------------------------------------------------------------------
BASE_REGIMEN = [("P1", "CellCept", 1000, "mg", "oral", "twice daily", "2024-01-01", None)]


@pytest.mark.parametrize(
    ("start", "end", "as_of", "current"),
    [
        ("2025-06-01", None, "2025-06-02", False),  # started on the decision visit's day: part of the decision
        ("2025-05-31", None, "2025-06-02", True),  # started the day before the visit
        ("2025-01-01", "2025-06-01", "2025-06-02", True),  # ends on the visit day: still taken at the visit
        ("2025-01-01", "2025-05-31", "2025-06-02", False),  # stopped before the visit
    ],
)
def test_regimen_cut_off(start, end, as_of, current):
    t = normalised(BASE_REGIMEN + [("P1", "Privigen", 2, "g/kg", "intravenous", "every 4 weeks", start, end)])
    f = features_at(t, as_of).features.iloc[0]
    assert f["on_ivig"] == float(current)
    assert f["on_mycophenolate"] == 1.0


@pytest.mark.parametrize("orders", [
    [("Orencia", 750, "mg", "intravenous", "every 4 weeks"), ("Orencia", 125, "mg", "subcutaneous", "weekly")],
    [("Rituxan", 1000, "mg", "intravenous", "days 1 and 15, every 6 months"),
     ("Rituxan", 500, "mg", "intravenous", "every 6 months")],
])
def test_end_dates_after_the_decision_never_change_its_features(orders):
    """Two orders of one drug started the same day and running at the decision: which one the features read as
    the latest (its route sets abatacept's target; rituximab's course intensity) is decided by what was known at
    the decision, never by their end dates, recorded later."""
    def features(ends):
        rows = [("P1", *order, "2025-03-01", end) for order, end in zip(orders, ends, strict=True)]
        return features_at(normalised(BASE_REGIMEN + rows, [("P1", "2025-01-10", "weight", 70.0)]),
                           "2025-06-02").matrix

    before = features(["2025-09-01", "2025-10-01"])
    for ends in (["2025-12-01", "2025-10-01"], [None, "2025-10-01"], ["2025-10-01", "2025-09-01"]):
        pd.testing.assert_frame_equal(features(ends), before)


def test_dose_fraction_uses_weight_measured_before_as_of():
    regimen = BASE_REGIMEN + [("P1", "IVIG", 140, "g", "intravenous", "every 4 weeks", "2024-06-01", None)]
    t = normalised(regimen, [("P1", "2025-01-10", "weight", 70.0), ("P1", "2025-06-10", "weight", 140.0)])
    early, late = features_at(t, "2025-06-01", "2025-07-01").features["ivig_dose_fraction"]
    assert early == pytest.approx(1.0)  # 140 g at 70 kg = 2 g/kg
    assert late == pytest.approx(0.5)  # the later 140 kg weight halves the per-kg dose
    no_weight = features_at(normalised(regimen), "2025-06-01").features.iloc[0]
    assert np.isnan(no_weight["ivig_dose_fraction"]) and no_weight["weight_observed"] == 0.0


@pytest.mark.parametrize(("days_after", "active"), [(200, True), (364, True), (400, False)])
def test_rituximab_counts_as_current_while_active(days_after, active):
    t = normalised(BASE_REGIMEN + [("P1", "Rituxan", 1000, "mg", "intravenous", "days 1 and 15, every 6 months",
                                    "2024-06-01", "2024-06-15")])
    as_of = (pd.Timestamp("2024-06-15") + pd.Timedelta(days=days_after + 1)).strftime("%Y-%m-%d")
    fs = features_at(t, as_of)
    assert fs.features.iloc[0]["on_rituximab"] == float(active)
    assert fs.features.iloc[0]["months_since_rituximab"] == pytest.approx(days_after / 30.4375)
    e = option_eligibility(fs, CATALOG, VOCABULARY).iloc[0]
    assert e["eligible_add_rituximab"] == (not active)


@pytest.mark.parametrize(
    ("rows", "as_of", "last_course"),
    [
        ([("2024-06-01", "2024-06-15")], "2024-12-20", "2024-06-01"),  # one course: its first infusion
        # one row spanning three 6-monthly courses: the third began 2025-06-01, the last before the row's end
        ([("2024-06-01", "2025-06-14")], "2025-09-01", "2025-06-01"),
        # ongoing: as of 2024-12-02 the next course (2024-12-01) is the decision's (test_regimen_cut_off) …
        ([("2024-06-01", None)], "2024-12-02", "2024-06-01"),
        ([("2024-06-01", None)], "2024-12-03", "2024-12-01"),  # … a day later it is history
        # a re-dose row started on the visit day (as of 2024-12-02) is part of the decision, not yet given …
        ([("2024-06-01", "2024-06-15"), ("2024-12-01", "2024-12-15")], "2024-12-02", "2024-06-01"),
        ([("2024-06-01", "2024-06-15"), ("2024-12-01", "2024-12-15")], "2024-12-03", "2024-12-01"),  # … then it is
        # one row per infusion: the course began at the first
        ([("2024-06-01", "2024-06-01"), ("2024-06-15", "2024-06-15")], "2024-10-01", "2024-06-01"),
        ([("2024-06-01", "2024-06-01"), ("2024-06-15", "2024-06-15"), ("2024-12-01", "2024-12-01"),
          ("2024-12-15", "2024-12-15")], "2025-03-01", "2024-12-01"),
    ],
)
def test_the_latest_rituximab_course_start_is_known_before_the_decision(rows, as_of, last_course):
    regimen = [("P1", "Rituxan", 1000, "mg", "intravenous", "days 1 and 15, every 6 months", start, end)
               for start, end in rows]
    side = features_at(normalised(BASE_REGIMEN + regimen), as_of).current_regimen.set_index("generic")
    assert side.loc["rituximab", "last_course_date"] == pd.Timestamp(last_course)
    # only an open order's later dates are 'scheduled' (no row records them as given)
    scheduled = rows[-1][1] is None and last_course != rows[-1][0]
    assert side.loc["rituximab", "last_course_record"] == ("scheduled" if scheduled else "given")
    assert pd.isna(side.loc["mycophenolate", "last_course_date"])  # a daily drug has no courses


@pytest.mark.parametrize(
    ("interval", "start", "end", "as_of", "last_course", "record"),
    [
        # infusions every 2 weeks within one row are one course, from its start (not its last infusion)
        ("every 2 weeks", "2026-05-20", "2026-06-03", "2026-08-01", "2026-05-20", "given"),
        # a 6-monthly order that ended 7 weeks after its last course (2025-01-10) was stopped: none further
        ("every 6 months", "2022-01-10", "2025-03-01", "2025-06-01", "2025-01-10", "stopped"),
    ],
)
def test_a_rituximab_row_tells_one_course_from_a_stopped_order(interval, start, end, as_of, last_course, record):
    regimen = [("P1", "Rituxan", 1000, "mg", "intravenous", interval, start, end)]
    side = features_at(normalised(BASE_REGIMEN + regimen), as_of).current_regimen.set_index("generic")
    assert side.loc["rituximab", "last_course_date"] == pd.Timestamp(last_course)
    assert side.loc["rituximab", "last_course_record"] == record


@pytest.mark.parametrize(
    ("rows", "fraction"),
    [
        ([("days 1 and 15, every 6 months", "2024-06-01", "2024-06-15")], 1.0),  # the course as one row
        ([("once", "2024-06-01", "2024-06-01"), ("once", "2024-06-15", "2024-06-15")], 1.0),  # a row per infusion
        # a row per infusion, each with the courses' interval (an open order too)
        ([("every 6 months", "2024-06-01", "2024-06-01"), ("every 6 months", "2024-06-15", "2024-06-15")], 1.0),
        ([("every 6 months", "2024-06-01", None), ("every 6 months", "2024-06-15", None)], 1.0),
        ([("every 2 weeks", "2024-06-01", "2024-06-15")], 1.0),  # the two infusions as a two-weekly row
        ([("once", "2024-06-01", "2024-06-01")], 0.5),  # half a course
        ([("once", "2023-12-01", "2023-12-01"), ("once", "2024-06-01", "2024-06-01")], 0.5),  # one a course
        ([("now and then", "2024-06-01", "2024-06-01"), ("once", "2024-06-15", "2024-06-15")], None),  # unreadable
        # a raised dose: the new order's course replaces the old order's, begun days before (not added to it) ...
        ([("days 1 and 15, every 6 months", "2023-09-01", "2024-03-05", 500),
          ("days 1 and 15, every 6 months", "2024-03-06", None)], 1.0),
        # ... also when the new course is written a row per infusion
        ([("days 1 and 15, every 6 months", "2023-09-01", "2024-03-05", 500), ("once", "2024-03-06", "2024-03-06"),
          ("once", "2024-03-20", "2024-03-20")], 1.0),
    ],
)
def test_a_rituximab_course_is_judged_whole_however_the_record_splits_it(rows, fraction):
    """The dose of the latest course (every infusion within six weeks of its first) over the courses' interval, else
    the target's 6 months: a row per infusion is not "below target" where the course row would not be."""
    regimen = [("P1", "Rituxan", dose[0] if dose else 1000, "mg", "intravenous", interval, start, end)
               for interval, start, end, *dose in rows]
    fs = features_at(normalised(BASE_REGIMEN + regimen), "2024-07-01")
    f = fs.features.iloc[0]
    if fraction is None:
        assert np.isnan(f["rituximab_dose_fraction"]) and f["rituximab_below_target"] == 0.0
    else:
        assert f["rituximab_dose_fraction"] == pytest.approx(fraction, rel=0.01)
        assert f["rituximab_below_target"] == float(fraction < 1)
    assert f["rituximab_above_target"] == 0.0


@pytest.mark.parametrize(
    ("interval", "end", "dose", "as_of", "fraction"),
    [
        ("once", "2024-06-01", 1000, "2024-06-10", 1.0),  # the first infusion given, the second not yet due
        ("once", "2024-06-01", 500, "2024-06-10", 0.5),  # judged by its dose per infusion
        ("once", "2024-06-01", 1000, "2024-06-25", 0.5),  # three weeks on, no second infusion: half a course
        ("every 2 weeks", None, 1000, "2024-06-10", 1.0),  # an open two-weekly order before its second infusion
        ("days 1 and 15, every 6 months", None, 1000, "2024-06-10", 1.0),  # the course as one row, as before
    ],
)
def test_a_rituximab_course_still_being_given_is_not_read_as_half_a_course(interval, end, dose, as_of, fraction):
    """A course whose second infusion is not yet due (day 15, a week's grace) counts at least the target's two
    infusions: a page between the infusions of a course written a row per infusion does not flag "below target"."""
    regimen = [("P1", "Rituxan", dose, "mg", "intravenous", interval, "2024-06-01", end)]
    f = features_at(normalised(BASE_REGIMEN + regimen), as_of).features.iloc[0]
    assert f["rituximab_dose_fraction"] == pytest.approx(fraction, rel=0.01)
    assert f["rituximab_below_target"] == float(fraction < 1)


def test_prednisone_taper_cumulative_dose_and_continuity():
    t = normalised([
        ("P1", "prednisone", 60, "mg", "oral", "daily", "2025-01-01", "2025-01-10"),
        ("P1", "prednisolone", 20, "mg", "oral", "daily", "2025-01-11", None),
    ], [("P1", "2025-01-01", "weight", 80.0)])
    f = features_at(t, "2025-01-21").features.iloc[0]
    assert f["prednisone_mg_day"] == 20.0
    assert f["prednisone_mg_kg_day"] == pytest.approx(0.25)
    assert f["cumulative_prednisone_g"] == pytest.approx((60 * 10 + 20 * 9) / 1000)  # to the cut-off day
    assert f["prednisone_months_on"] == pytest.approx(19 / 30.4375)  # one continuous exposure


# --- disease activity, safety ------------------------------------------------------------------------------------
def test_disease_activity_windows_and_missingness():
    t = normalised(BASE_REGIMEN, [
        ("P1", "2024-03-01", "physician_global", 8.0),
        ("P1", "2025-01-01", "physician_global", 3.0),
        ("P1", "2025-04-01", "physician_global", 5.0),
        ("P1", "2025-07-01", "physician_global", 6.0),
        ("P1", "2025-07-01", "ck", 1000.0, 200.0),
        ("P1", "2025-07-01", "aldolase", 15.0, 7.5),
        ("P1", "2025-07-01", "mmt8", 60.0),
    ])
    f = features_at(t, "2025-07-02").features.iloc[0]
    assert f["physician_global_latest"] == 6.0
    assert f["physician_global_change_3m"] == pytest.approx(1.0)  # vs the value on 2025-04-01
    assert f["physician_global_change_6m"] == pytest.approx(3.0)  # vs 2025-01-01
    assert f["physician_global_worst_12m"] == 6.0  # the 8.0 of March 2024 is older than 12 months
    assert f["enzyme_max_x_uln"] == pytest.approx(5.0) and f["ck_x_uln"] == pytest.approx(5.0)
    assert f["mmt8_latest"] == pytest.approx(75.0)  # % of the 0-80 scale
    assert f["haq_observed"] == 0.0 and np.isnan(f["haq_latest"])
    assert f["physician_global_days_since"] == 1.0


def test_safety_event_counts_by_window_and_grade():
    t = normalised(BASE_REGIMEN, events=[
        ("P1", "2025-05-01", "serious_infection", None),
        ("P1", "2024-10-01", "serious_infection", None),
        ("P1", "2025-05-01", "cytopenia", 2),
        ("P1", "2025-06-01", "cytopenia", 3),
        ("P1", "2025-07-02", "opportunistic_infection", None),  # on the as-of date: not yet known
    ])
    f = features_at(t, "2025-07-02").features.iloc[0]
    assert (f["serious_infections_6m"], f["serious_infections_12m"]) == (1.0, 2.0)
    assert f["severe_cytopenias_12m"] == 1.0
    assert f["opportunistic_infections_12m"] == 0.0


def test_patient_features():
    t = normalised(BASE_REGIMEN, patients=[{"patient_id": "P1", "birth_year": 1980, "diagnosis_date": "2020-07-02",
                                            "anti_mda5": True, "ild": True,
                                            "diagnosis": "juvenile_dermatomyositis"}])
    f = features_at(t, "2025-07-02").features.iloc[0]
    assert f["age_years"] == 45.0
    assert f["disease_duration_years"] == pytest.approx(1826 / 365.25)
    assert (f["anti_mda5"], f["anti_tif1g"], f["ild"]) == (1.0, 0.0, 1.0)
    assert f["diagnosis_juvenile_dermatomyositis"] == 1.0 and f["diagnosis_adult_dermatomyositis"] == 0.0


# --- juvenile dose targets ----------------------------------------------------------------------------------------
CHILD = {"patient_id": "P1", "birth_year": 2015, "diagnosis": "juvenile_dermatomyositis", "diagnosis_date": "2023-01-01"}


def child_tables(regimens: list[tuple], weight: float = 25.0, height: float = 125.0, weighed: str = "2025-05-01",
                 patient: dict | None = None) -> dict[str, pd.DataFrame]:
    """A 10-year-old with juvenile DM weighed (and measured) on `weighed`."""
    return normalised(regimens, [("P1", weighed, "weight", weight), ("P1", weighed, "height", height)],
                      patients=[patient or CHILD], weight_kg=weight)


@pytest.mark.parametrize(("dose", "fraction"), [(250, 1.0), (150, 0.6)])
def test_a_child_on_abatacept_is_judged_against_the_jia_label_dose(dose, fraction):
    """25 kg: 10 mg/kg = 250 mg an infusion is at target, 150 mg below it (the adult band, 500 mg below 60 kg,
    would call both below) — and only the shortfall opens "optimise doses"."""
    regimen = [("P1", "Orencia", dose, "mg", "intravenous", "every 4 weeks", "2025-01-01", None)]
    fs = features_at(child_tables(regimen), "2025-06-01")
    f = fs.features.iloc[0]
    short = float(dose == 150)
    assert (f["abatacept_below_target"], f["any_below_target"]) == (short, short)
    assert f["abatacept_dose_fraction"] == pytest.approx(fraction)
    side = fs.current_regimen.set_index("generic").loc["abatacept"]
    assert side["target_source"] == "juvenile" and bool(side["juvenile"]) and side["weight_kg"] == 25.0
    assert side["target_text"].startswith("10 mg/kg every 4 weeks (< 75 kg) — JIA label dose")
    assert bool(option_eligibility(fs, CATALOG, VOCABULARY).iloc[0]["eligible_optimise_dose"]) == bool(short)
    adult = features_at(normalised(regimen, [("P1", "2025-05-01", "weight", 25.0)]), "2025-06-01").features.iloc[0]
    assert adult["abatacept_below_target"] == 1.0  # an adult of 25 kg: the adult 500 mg band


def test_a_childs_weight_counts_only_when_recorded_before_the_decision():
    """Point in time: a weight measured after the decision is not used; without one the verdict is unknown
    (no flag, no fraction), never a guess or a crash."""
    t = child_tables([("P1", "Xeljanz", 4, "mg", "oral", "twice daily", "2025-01-01", None)], weighed="2025-06-10")
    fs = features_at(t, "2025-06-01", "2025-07-01")
    early, late = fs.features.iloc[0], fs.features.iloc[1]
    assert np.isnan(early["tofacitinib_dose_fraction"]) and early["tofacitinib_below_target"] == 0.0
    assert early["tofacitinib_above_target"] == 0.0 and early["any_below_target"] == 0.0
    assert late["tofacitinib_dose_fraction"] == pytest.approx(1.0)  # 4 mg twice daily at 20–40 kg
    side = fs.current_regimen
    assert side["status"].tolist() == ["unknown", "at"]


def test_a_teenager_is_juvenile_by_age_whatever_the_diagnosis():
    """16 years old with adult DM coded: tofacitinib XR 11 mg daily is above the 4 mg twice daily of 20–40 kg."""
    teen = {**CHILD, "birth_year": 2009, "diagnosis": "adult_dermatomyositis"}
    t = child_tables([("P1", "Xeljanz XR", 11, "mg", "oral", "daily", "2025-01-01", None)], weight=35.0,
                     height=150.0, patient=teen)
    f = features_at(t, "2025-06-01").features.iloc[0]
    assert f["age_years"] == 16.0 and f["tofacitinib_above_target"] == 1.0


def test_the_page_gives_a_childs_doses_the_features_verdict():
    """Same drug, dose and weight: the clinician page's verdict equals the features' flags for every drug."""
    from pipeline.report.clinical import dose_lines, mosteller_bsa

    start = "2025-01-01"
    regimens = [("P1", "Orencia", 150, "mg", "intravenous", "every 4 weeks", start, None),
                ("P1", "Xeljanz", 4, "mg", "oral", "twice daily", start, None),
                ("P1", "methotrexate", 10, "mg", "subcutaneous", "weekly", start, None),
                ("P1", "CellCept", 600, "mg", "oral", "twice daily", start, None),
                ("P1", "Plaquenil", 200, "mg", "oral", "daily", start, None),
                ("P1", "Privigen", 1, "g/kg", "intravenous", "every 4 weeks", start, None),
                ("P1", "Actemra", 8, "mg/kg", "intravenous", "every 4 weeks", start, None),
                ("P1", "prednisolone", 30, "mg", "oral", "daily", start, None)]
    config = FeatureConfig()
    fs = features_at(child_tables(regimens), "2025-06-01", config=config)
    f = fs.features.iloc[0]
    lines = dose_lines(fs.current_regimen, VOCABULARY, juvenile=True, weight_kg=25.0,
                       bsa_m2=mosteller_bsa(25.0, 125.0), tolerance=config.dose_tolerance)
    verdict = dict(zip(fs.current_regimen["generic"], (line.status for line in lines), strict=True))
    assert verdict == {"abatacept": "below", "tofacitinib": "at", "methotrexate": "below", "mycophenolate": "at",
                       "hydroxychloroquine": "above", "ivig": "below", "tocilizumab": "below",
                       "prednisone": "above_goal"}  # 1.2 mg/kg: within induction, above the taper goal
    for generic, status in verdict.items():
        if VOCABULARY.drug(generic).target.has_target:
            assert f[f"{generic}_below_target"] == float(status == "below"), generic
            assert f[f"{generic}_above_target"] == float(status == "above"), generic
    assert f["n_drugs_below_target"] == 4.0
    assert dict(zip(fs.current_regimen["generic"], fs.current_regimen["status"], strict=True))["prednisone"] == \
        "no_target"


def test_juvenile_targets_change_only_juvenile_decisions():
    """An adult's features are the same with or without the juvenile targets in the catalogue; a child's change."""
    config = load_reference("drugs")
    adult_only = Vocabulary.from_config(
        {**config, "drugs": [{k: v for k, v in d.items() if k != "juvenile"} for d in config["drugs"]]})
    regimens = [(pid, drug, dose, unit, route, interval, "2025-01-01", None) for pid in ("A", "C") for
                drug, dose, unit, route, interval in [("Orencia", 250, "mg", "intravenous", "every 4 weeks"),
                                                      ("Xeljanz XR", 11, "mg", "oral", "daily"),
                                                      ("methotrexate", 15, "mg", "oral", "weekly"),
                                                      ("Actemra", 8, "mg/kg", "intravenous", "every 4 weeks")]]
    measures = [(pid, "2025-05-01", m, v) for pid, w in (("A", 25.0), ("C", 25.0))
                for m, v in (("weight", w), ("height", 125.0))]
    t = normalised(regimens, measures, patients=[{"patient_id": "A", "birth_year": 1970},
                                                 {**CHILD, "patient_id": "C"}], weight_kg=25.0)
    keys = pd.DataFrame({"patient_id": ["A", "C"], "as_of": pd.to_datetime(["2025-06-01"] * 2)})
    new, old = (build_features(keys, t, v, CATALOG).matrix for v in (VOCABULARY, adult_only))
    pd.testing.assert_series_equal(new.iloc[0], old.iloc[0])
    flags = [c for c in new.columns if c.endswith(("_below_target", "_above_target", "_dose_fraction"))]
    assert (new.loc[1, flags].fillna(-1) != old.loc[1, flags].fillna(-1)).any()
    assert (new.loc[1, "abatacept_below_target"], old.loc[1, "abatacept_below_target"]) == (0.0, 1.0)


# --- shape of the output -------------------------------------------------------------------------------------------
def test_matrix_is_numeric_and_dictionary_covers_every_feature(seed_features):
    matrix = seed_features.matrix
    assert all(dtype == np.float64 for dtype in matrix.dtypes)
    d = seed_features.dictionary
    assert list(d["feature"]) == list(matrix.columns)
    assert d["feature"].is_unique
    assert set(d["family"]) == {"current_regimen", "dose_optimisation", "disease_activity", "patient", "safety"}
    assert d[["label", "unit", "description", "clinical_feature"]].ne("").all().all()
    assert list(seed_features.features.columns[:3]) == ["patient_id", "decision_id", "as_of"]


def test_scoring_mode_one_row_per_patient_same_dictionary(seed_tables, seed_features):
    keys = pd.DataFrame({"patient_id": ["SEED-0001"], "as_of": [pd.Timestamp("2026-11-18")], "decision_id": ["d1"]})
    fs = build_features(keys, seed_tables, VOCABULARY, CATALOG)
    pd.testing.assert_frame_equal(fs.matrix, seed_features.matrix)
    assert fs.features["decision_id"].tolist() == ["d1"]
    assert seed_features.features["decision_id"].tolist() == ["SEED-0001@2026-11-18"]


def test_unknown_patient_and_missing_date_are_clear_errors(seed_tables):
    keys = pd.DataFrame({"patient_id": ["NOPE"], "as_of": [pd.Timestamp("2026-01-01")]})
    with pytest.raises(ValueError, match=r"keys row 0 column 'patient_id'.*known_patient"):
        build_features(keys, seed_tables, VOCABULARY, CATALOG)
    keys = pd.DataFrame({"patient_id": ["SEED-0001"], "as_of": [pd.NaT]})
    with pytest.raises(ValueError, match=r"keys row 0 column 'as_of'.*required_value"):
        build_features(keys, seed_tables, VOCABULARY, CATALOG)


def test_many_patients_match_one_at_a_time(seed_tables):
    """The vectorised builder gives each patient the features it would get alone (no cross-patient bleed)."""
    t2 = {name: df.assign(patient_id="SEED-0002") for name, df in seed_tables.items()}
    t2["assessments"] = t2["assessments"].assign(value=t2["assessments"]["value"] * 0.9)
    both = {name: pd.concat([seed_tables[name], t2[name]], ignore_index=True) for name in seed_tables}
    keys = pd.DataFrame({"patient_id": ["SEED-0002", "SEED-0001"], "as_of": pd.to_datetime(["2026-09-01", "2026-11-18"])})
    together = build_features(keys, both, VOCABULARY, CATALOG).matrix
    for i in range(2):
        alone = build_features(keys.iloc[[i]], both, VOCABULARY, CATALOG).matrix
        pd.testing.assert_frame_equal(together.iloc[[i]].reset_index(drop=True), alone)


def test_flag_labels_read_plainly_with_yes_and_no(seed_features):
    """A flag's label is a state: a reason reads 'label = yes/no', so a negated label would read as a double
    negative ('antibody negative = no'); each description says what 'yes' means."""
    d = seed_features.dictionary
    flags = d[d["unit"] == "0/1"]
    negated = flags[flags["label"].str.contains(r"\b(?:negative|not|no|without)\b", regex=True)]
    assert negated.empty, negated["label"].tolist()
    row = d.set_index("feature").loc["antibody_negative"]
    assert row["label"] == "seronegative" and "no myositis" in row["description"]


# boundaries and units the clinical numbers depend on (each caught a mutant the tests above let through)


def test_mmt8_on_the_0_150_scale_is_a_percent_of_150():
    t = normalised(BASE_REGIMEN, [("P1", "2025-07-01", "mmt8", 120.0)])
    t["assessments"]["scale_max"] = 150.0
    f = features_at(t, "2025-07-02").features.iloc[0]
    assert f["mmt8_latest"] == pytest.approx(80.0)


def test_ck_multiple_uses_its_own_upper_limit():
    t = normalised(BASE_REGIMEN, [("P1", "2025-07-01", "ck", 1000.0, 250.0)])
    f = features_at(t, "2025-07-02").features.iloc[0]
    assert f["ck_x_uln"] == pytest.approx(4.0) and f["enzyme_max_x_uln"] == pytest.approx(4.0)


def test_most_abnormal_enzyme_need_not_be_ck():
    t = normalised(BASE_REGIMEN, [("P1", "2025-07-01", "ck", 1000.0, 200.0),
                                  ("P1", "2025-07-01", "aldolase", 45.0, 7.5)])
    f = features_at(t, "2025-07-02").features.iloc[0]
    assert f["enzyme_max_x_uln"] == pytest.approx(6.0)


def test_weight_on_the_as_of_day_is_not_known():
    t = normalised(BASE_REGIMEN, [("P1", "2025-01-10", "weight", 70.0), ("P1", "2025-07-02", "weight", 90.0)])
    assert features_at(t, "2025-07-02").features.iloc[0]["weight_kg"] == 70.0


def test_diagnosis_after_the_decision_gives_no_duration():
    t = normalised(BASE_REGIMEN, patients=[{"patient_id": "P1", "diagnosis_date": "2025-09-01"}])
    assert np.isnan(features_at(t, "2025-07-02").features.iloc[0]["disease_duration_years"])


def test_prednisone_at_the_taper_goal_is_not_above_it():
    t = normalised(BASE_REGIMEN + [("P1", "prednisone", 7.5, "mg", "oral", "daily", "2025-01-01", None)])
    f = features_at(t, "2025-07-02").features.iloc[0]
    assert f["prednisone_mg_day"] == 7.5 and f["prednisone_above_taper_goal"] == 0.0


def test_worst_window_is_365_days():
    t = normalised(BASE_REGIMEN, [("P1", "2024-07-01", "physician_global", 8.0),
                                  ("P1", "2025-07-01", "physician_global", 3.0)])
    assert features_at(t, "2025-07-02").features.iloc[0]["physician_global_worst_12m"] == 3.0  # 366 days: out
    t = normalised(BASE_REGIMEN, [("P1", "2024-07-02", "physician_global", 8.0),
                                  ("P1", "2025-07-01", "physician_global", 3.0)])
    assert features_at(t, "2025-07-02").features.iloc[0]["physician_global_worst_12m"] == 8.0
