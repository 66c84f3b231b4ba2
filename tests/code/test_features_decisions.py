"""Decision points and the option taken, read from raw regimen history and visits."""

from __future__ import annotations

import pandas as pd
import pytest

from features.config import ActivityRule, DecisionConfig, FeatureConfig
from features.decisions import active_disease, compare_with_truth, derive_decisions
from tests.code.test_features_build import CATALOG, VOCABULARY, normalised

STABLE = [
    ("P1", "CellCept", 1000, "mg", "oral", "daily", "2024-01-01", None),  # 1 g/day: below the 2 g target
    ("P1", "prednisone", 10, "mg", "oral", "daily", "2024-01-01", None),
]
VISIT = "2025-03-03"


def active_visit(date: str = VISIT, pga: float = 5.0, patient: str = "P1") -> list[tuple]:
    return [(patient, date, "physician_global", pga), (patient, date, "cdasi_activity", 10.0),
            (patient, date, "mmt8", 78.0)]


def derive(regimens, assessments, config: FeatureConfig | None = None) -> pd.DataFrame:
    return derive_decisions(normalised(regimens, assessments), VOCABULARY, CATALOG, config)


def row(drug, dose, unit, interval, start, end=None, route="oral"):
    return ("P1", drug, dose, unit, route, interval, start, end)


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ([], "continue"),
        ([row("Privigen", 2, "g/kg", "every 4 weeks", VISIT, route="intravenous")], "add_ivig"),
        ([row("Rituxan", 1000, "mg", "days 1 and 15, every 6 months", "2025-03-20", route="intravenous")],
         "add_rituximab"),
        ([row("Cytoxan", 750, "mg/m2", "every 4 weeks", "2025-03-10", route="intravenous")], "add_cyclophosphamide"),
        ([row("Orencia", 125, "mg", "weekly", "2025-03-10", route="subcutaneous")], "add_abatacept"),
        ([row("Xeljanz XR", 11, "mg", "daily", "2025-04-02")], "add_jak_inhibitor"),  # the 30th day still counts
        ([row("Olumiant", 4, "mg", "daily", "2025-03-10")], "add_jak_inhibitor"),  # baricitinib is a JAK inhibitor
        ([row("Xeljanz XR", 11, "mg", "daily", "2025-04-03")], "continue"),  # day 31: outside the window
        # a steroid taper alongside is routine care, not an option
        ([("P1", "prednisone", 7.5, "mg", "oral", "daily", "2025-03-10", None)], "continue"),
        ([("P1", "CellCept", 1000, "mg", "oral", "twice daily", "2025-03-10", None)], "optimise_dose"),
        ([("P1", "CellCept", 500, "mg", "oral", "daily", "2025-03-10", None)], "other"),  # a dose reduction
        ([row("Actemra", 8, "mg/kg", "every 4 weeks", "2025-03-10", route="intravenous")], "other"),  # not an option
        ([row("Privigen", 2, "g/kg", "every 4 weeks", VISIT, route="intravenous"),
          row("Orencia", 125, "mg", "weekly", VISIT, route="subcutaneous")], "other"),  # two adds at once
    ],
)
def test_option_taken_from_changes_in_the_window(changes, option):
    regimens = list(STABLE)
    for c in changes:
        if c[1] == "CellCept":  # a dose change ends the old row the day before the new one starts
            regimens[0] = (*STABLE[0][:7], (pd.Timestamp(c[6]) - pd.Timedelta(days=1)).strftime("%Y-%m-%d"))
        if c[1] == "prednisone":
            regimens[1] = (*STABLE[1][:7], (pd.Timestamp(c[6]) - pd.Timedelta(days=1)).strftime("%Y-%m-%d"))
    d = derive(regimens + changes, active_visit() + [("P1", "2025-01-01", "weight", 70.0),
                                                      ("P1", "2025-01-01", "height", 170.0)])
    assert d["date"].tolist() == [pd.Timestamp(VISIT)]
    assert d["option_taken"].tolist() == [option]
    assert d["as_of"].tolist() == [pd.Timestamp(VISIT) + pd.Timedelta(days=1)]


def test_stopping_a_drug_is_other():
    regimens = [(*STABLE[0][:7], "2025-03-15"), STABLE[1]]
    d = derive(regimens, active_visit())
    assert d["option_taken"].tolist() == ["other"]
    assert d["option_changes"].tolist() == ["stop mycophenolate"]


@pytest.mark.parametrize(
    ("regimens", "assessments", "expected"),
    [
        (STABLE, active_visit(pga=1.0), 0),  # inactive: physician global 1 cm, CDASI 10, MMT-8 97 %
        (STABLE, active_visit(pga=1.0) + [("P1", VISIT, "cdasi_activity", 20.0)], 1),  # CDASI ≥ 14 alone
        # a regimen change 60 days before the visit: not yet 3 months stable
        (STABLE + [row("methotrexate", 15, "mg", "weekly", "2025-01-02")], active_visit(), 0),
        # a steroid taper step 60 days before is routine care: the regimen still counts as stable
        ([STABLE[0], (*STABLE[1][:7], "2025-01-01"), row("prednisone", 5, "mg", "daily", "2025-01-02")],
         active_visit(), 1),
        ([row("prednisone", 10, "mg", "daily", "2024-01-01")], active_visit(), 0),  # steroids only: not refractory
        (STABLE, active_visit() + active_visit("2025-06-02"), 1),  # 91 days later: within the 140-day gap
        (STABLE, active_visit() + active_visit("2025-08-01"), 2),
    ],
)
def test_decision_point_rule(regimens, assessments, expected):
    assert len(derive(regimens, assessments)) == expected


def test_a_steroid_taper_breaks_stability_only_when_configured_to():
    taper = [STABLE[0], (*STABLE[1][:7], "2025-01-01"), row("prednisone", 5, "mg", "daily", "2025-01-02")]
    strict = FeatureConfig(decisions=DecisionConfig(stability_ignore_classes=()))
    assert len(derive(taper, active_visit())) == 1
    assert len(derive(taper, active_visit(), strict)) == 0


def test_activity_rule_is_configurable():
    visits = pd.DataFrame({"physician_global": [1.0, 3.0, 1.0], "cdasi_activity": [20.0, 0.0, 0.0],
                           "mmt8": [80.0, 80.0, 60.0], "mmt8_scale": [80.0, 80.0, 80.0]})
    assert active_disease(visits, FeatureConfig()).tolist() == [True, True, True]
    only_pga = FeatureConfig(decisions=DecisionConfig(activity=ActivityRule(cdasi_activity_min=None,
                                                                            mmt8_below_percent=None)))
    assert active_disease(visits, only_pga).tolist() == [False, True, False]


def test_decisions_do_not_depend_on_row_order():
    regimens = STABLE + [row("Privigen", 2, "g/kg", "every 4 weeks", VISIT, route="intravenous")]
    assessments = active_visit() + active_visit("2025-09-01") + [("P1", "2025-01-01", "weight", 70.0)]
    a = derive(regimens, assessments)
    b = derive(regimens[::-1], assessments[::-1])
    pd.testing.assert_frame_equal(a, b)


def test_compare_with_truth_precision_recall_and_option_accuracy():
    derived = pd.DataFrame({"patient_id": ["A", "A", "B"], "date": pd.to_datetime(["2025-01-01", "2025-07-01", "2025-02-01"]),
                            "option_taken": ["add_ivig", "continue", "other"]})
    truth = pd.DataFrame({"patient_id": ["A", "B", "C", "C"],
                          "date": pd.to_datetime(["2025-01-01", "2025-02-01", "2025-01-01", "2025-09-01"]),
                          "option_taken": ["add_ivig", "optimise_dose", "continue", "continue"]})
    r = compare_with_truth(derived, truth)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 4)
    assert r["option_accuracy"] == pytest.approx(1 / 2)
    assert r["option_confusion"] == {"add_ivig": {"add_ivig": 1}, "optimise_dose": {"other": 1}}


@pytest.mark.parametrize(("dose", "option"), [(500, "continue"), (1000, "optimise_dose")])
def test_rituximab_new_course_while_active_is_a_redose_or_an_increase(dose, option):
    course = ("P1", "MabThera", 500, "mg", "intravenous", "days 1 and 15, every 6 months")
    regimens = STABLE + [(*course, "2024-09-01", "2025-03-09"),
                         ("P1", "MabThera", dose, "mg", "intravenous", "days 1 and 15, every 6 months",
                          "2025-03-10", None)]
    d = derive(regimens, active_visit())
    assert d["option_taken"].tolist() == [option]


@pytest.mark.parametrize(
    ("new_rows", "option"),
    [
        # the next course written one row per infusion, at the same dose: a re-dose (before: "reduce rituximab")
        ([(1000, "once", "2025-03-10", "2025-03-10"), (1000, "once", "2025-03-24", "2025-03-24")], "continue"),
        ([(1000, "every 2 weeks", "2025-03-10", "2025-03-24")], "continue"),
        # the same two infusions at twice the dose: the dose raised
        ([(2000, "once", "2025-03-10", "2025-03-10"), (2000, "once", "2025-03-24", "2025-03-24")], "optimise_dose"),
    ],
)
def test_a_rituximab_course_written_per_infusion_is_compared_as_a_course(new_rows, option):
    """The option taken compares the new course with the current one as wholes, however each is written."""
    regimens = STABLE + [("P1", "MabThera", 1000, "mg", "intravenous", "days 1 and 15, every 6 months", "2024-09-01",
                          "2025-03-09")]
    regimens += [("P1", "MabThera", dose, "mg", "intravenous", interval, start, end)
                 for dose, interval, start, end in new_rows]
    assert derive(regimens, active_visit())["option_taken"].tolist() == [option]


def test_option_window_past_today_is_flagged():
    d = derive_decisions(normalised(STABLE, active_visit() + active_visit("2025-09-01")), VOCABULARY, CATALOG,
                         today="2025-09-20")
    assert d["option_window_complete"].tolist() == [True, False]


SWITCH = {"name": "switch_mycophenolate_to_tacrolimus", "label": "switch mycophenolate to tacrolimus",
          "kind": "switch", "stops": "mycophenolate", "adds": "tacrolimus", "eligible_unless_on": ["tacrolimus"]}


def _catalog_with_switch():
    from features.vocabulary import OptionCatalog

    shipped = CATALOG.model_dump(exclude_none=True)  # configs/options.yaml may list the switch already: once here
    others = [o for o in shipped["options"] if o["name"] != SWITCH["name"]]
    return OptionCatalog.from_config({**shipped, "options": [*others, SWITCH]})


@pytest.mark.parametrize(
    ("start", "option"),
    [(("P1", "Prograf", 2, "mg", "oral", "twice daily", "2025-03-10", None), "switch_mycophenolate_to_tacrolimus"),
     (("P1", "Xeljanz XR", 11, "mg", "oral", "daily", "2025-03-10", None), "other")],  # no such switch configured
    ids=["configured switch", "stop and an unrelated start"],
)
def test_a_stop_and_a_start_in_the_window_is_the_switch_that_names_both(start, option):
    """Stopping mycophenolate and starting tacrolimus at one decision is the configured switch, not 'other';
    a stop with a start no switch names stays 'other'."""
    regimens = [(*STABLE[0][:7], "2025-03-15"), STABLE[1], start]
    d = derive_decisions(normalised(regimens, active_visit()), VOCABULARY, _catalog_with_switch())
    assert d["option_taken"].tolist() == [option]


def test_a_switch_is_eligible_only_while_its_drug_is_current():
    catalog = _catalog_with_switch()
    on = pd.DataFrame({"mycophenolate": [True, False, True], "tacrolimus": [False, False, True]})
    eligible, reason = catalog.eligibility(on, pd.Series([False, False, False]))
    name = SWITCH["name"]
    assert eligible[name].tolist() == [True, False, False]
    assert reason[name].tolist() == ["", "not on mycophenolate", "already on tacrolimus"]
    with pytest.raises(ValueError, match="a switch names the drug it stops and the one it adds"):
        type(catalog).from_config({"options": [{**SWITCH, "stops": None}]})
