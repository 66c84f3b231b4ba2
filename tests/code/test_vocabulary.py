"""Drug lookup (brands, misspellings, closest names), schedule parsing, dose conversion and dose targets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.vocabulary import (
    DAYS_PER_MONTH,
    Vocabulary,
    body_surface_area,
    dose_status,
    dose_to_mg,
    parse_interval,
    parse_intervals,
)
from pipeline.config import load_reference


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    return Vocabulary.from_config(load_reference("drugs"))


@pytest.mark.parametrize(
    "written, generic",
    [
        # as the seed case's record writes them
        ("IVIG (Privigen)", "ivig"),
        ("Rituxan", "rituximab"),
        ("Actemra", "tocilizumab"),
        ("Plaquenil", "hydroxychloroquine"),
        ("CellCept", "mycophenolate"),
        ("prednisone", "prednisone"),
        # brands, abbreviations, case and blanks
        ("  ACTEMRA ", "tocilizumab"),
        ("MabThera", "rituximab"),
        ("Octagam 10%", "ivig"),
        ("Xeljanz XR", "tofacitinib"),
        ("Xeljanz XR 11 mg", "tofacitinib"),
        ("Orencia", "abatacept"),
        ("Cytoxan", "cyclophosphamide"),
        ("MTX", "methotrexate"),
        ("Imuran", "azathioprine"),
        ("Prograf", "tacrolimus"),
        ("Olumiant", "baricitinib"),
        ("Myfortic", "mycophenolate"),
        ("Solu-Medrol", "prednisone"),
        # common misspellings
        ("Plaquinil", "hydroxychloroquine"),
        ("cellcep", "mycophenolate"),
        ("toclizumab", "tocilizumab"),
        ("rituxamab", "rituximab"),
        ("cyclophosphomide", "cyclophosphamide"),
    ],
)
def test_lookup_finds_the_generic(vocabulary, written, generic):
    assert vocabulary.lookup(written) == generic


@pytest.mark.parametrize("written", ["aspirin", "tocilizumabb", "Privigenn", "", None, float("nan")])
def test_lookup_of_an_unknown_drug_is_none(vocabulary, written):
    assert vocabulary.lookup(written) is None


@pytest.mark.parametrize(
    "written, expected",
    [
        ("tocilizumabb", "tocilizumab"),
        ("Actemraa", "actemra (tocilizumab)"),
        ("Privigenn", "privigen (ivig)"),
        ("Plaqenil", "plaquenil (hydroxychloroquine)"),
        ("mycophenolat mofetil", "mycophenolate mofetil (mycophenolate)"),
    ],
)
def test_closest_names_an_unknown_drugs_nearest_known_spellings(vocabulary, written, expected):
    near = vocabulary.closest(written)
    assert expected in near
    assert 1 <= len(near) <= 3


def test_closest_has_nothing_for_a_drug_unlike_any_known(vocabulary):
    assert vocabulary.closest("zzzzqqq") == []


def test_lookup_many_matches_lookup_and_keeps_the_index(vocabulary):
    written = pd.Series(["Actemra", None, "aspirin", "Actemra", "CellCept"], index=[10, 11, 12, 13, 14])
    out = vocabulary.lookup_many(written)
    assert list(out.index) == [10, 11, 12, 13, 14]
    assert out.tolist()[0] == "tocilizumab" and out.tolist()[4] == "mycophenolate" and out.tolist()[3] == "tocilizumab"
    assert pd.isna(out[11]) and pd.isna(out[12])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("daily", (1, 1)),
        ("once daily", (1, 1)),
        ("twice daily", (2, 1)),
        ("BID", (2, 1)),
        ("three times daily", (3, 1)),
        ("weekly", (1, 7)),
        ("Weekly ", (1, 7)),
        ("every 4 weeks", (1, 28)),
        ("every two weeks", (1, 14)),
        ("every other week", (1, 14)),
        ("q4w", (1, 28)),
        ("every 10 days", (1, 10)),
        ("every 6 months", (1, 6 * DAYS_PER_MONTH)),
        ("monthly", (1, DAYS_PER_MONTH)),
        ("3 times a week", (3, 7)),
        ("once", (1, math.inf)),
        ("days 1 and 15, every 6 months", (2, 6 * DAYS_PER_MONTH)),
        ("Day 1 and day 15 every 24 weeks", (2, 168)),
        ("days 1, 8 and 15 every 28 days", (3, 28)),
    ],
)
def test_parse_interval_reads_schedules(text, expected):
    doses, days = parse_interval(text)
    assert doses == expected[0]
    assert days == pytest.approx(expected[1])


@pytest.mark.parametrize("text", ["as needed", "prn", "whenever", "every weeks", "", None, float("nan")])
def test_parse_interval_of_an_unreadable_schedule_is_none(text):
    assert parse_interval(text) is None


def test_parse_intervals_is_vectorised_with_nan_where_unreadable():
    out = parse_intervals(pd.Series(["daily", None, "as needed", "every 4 weeks"], index=[3, 4, 5, 6]))
    assert list(out.columns) == ["doses_per_cycle", "cycle_days"] and list(out.index) == [3, 4, 5, 6]
    assert out.loc[3].tolist() == [1.0, 1.0] and out.loc[6].tolist() == [1.0, 28.0]
    assert out.loc[[4, 5]].isna().all().all()


@pytest.mark.parametrize(
    "dose, unit, weight, bsa, mg",
    [
        (60, "mg", np.nan, np.nan, 60.0),
        (1, "g", np.nan, np.nan, 1000.0),
        (1, "g/kg", 70, np.nan, 70_000.0),
        (8, "mg/kg", 70, np.nan, 560.0),
        (750, "mg/m2", np.nan, 2.0, 1500.0),
        (750, "mg/m²", np.nan, 2.0, 1500.0),
        (0.75, "g/m2", np.nan, 2.0, 1500.0),
        (8, "mg/kg", np.nan, np.nan, np.nan),  # no weight: unknown, never guessed
        (8, "mg/day", 70, np.nan, np.nan),  # not a dose unit of the contract
    ],
)
def test_dose_to_mg(dose, unit, weight, bsa, mg):
    out = dose_to_mg(pd.Series([dose]), pd.Series([unit]), pd.Series([weight]), pd.Series([bsa]))
    if np.isnan(mg):
        assert np.isnan(out.iloc[0])
    else:
        assert out.iloc[0] == pytest.approx(mg)


def test_body_surface_area_is_mosteller():
    assert body_surface_area(np.array([80.0, 70.0]), np.array([180.0, 165.0])) == pytest.approx(
        [2.0, math.sqrt(70 * 165 / 3600)])


def test_target_daily_mg_follows_the_recommended_doses(vocabulary):
    generic = pd.Series(["ivig", "hydroxychloroquine", "tocilizumab", "abatacept", "abatacept", "prednisone",
                         "mycophenolate", "cyclophosphamide"])
    route = pd.Series(["intravenous", "oral", "intravenous", "intravenous", "subcutaneous", "oral", "oral",
                       "intravenous"])
    weight = pd.Series([70.0, 60.0, 120.0, 70.0, 70.0, 70.0, 70.0, 80.0])
    bsa = pd.Series([np.nan] * 7 + [2.0])
    t = vocabulary.target_daily_mg(generic, route, weight, bsa)
    assert t.loc[0, "target_low"] == pytest.approx(2000 * 70 / 28)  # IVIG 2 g/kg every 4 weeks
    assert t.loc[1, ["target_low", "target_high"]].tolist() == pytest.approx([200, 300])  # ≤ 5 mg/kg/day
    assert t.loc[2, "target_high"] == pytest.approx(800 / 28)  # at most 800 mg an infusion
    assert t.loc[3, "target_low"] == pytest.approx(750 / 28)  # IV by weight band
    assert t.loc[4, "target_low"] == pytest.approx(125 / 7)  # SC weekly
    assert np.isnan(t.loc[5, "target_low"])  # glucocorticoid: a taper goal, no target
    assert t.loc[6, ["target_low", "target_high"]].tolist() == pytest.approx([2000, 3000])
    assert t.loc[7, ["target_low", "target_high"]].tolist() == pytest.approx([1000 / 28, 2000 / 28])


def test_a_missing_weight_leaves_a_weight_based_target_missing(vocabulary):
    t = vocabulary.target_daily_mg(pd.Series(["ivig"]), pd.Series(["intravenous"]), pd.Series([np.nan]),
                                   pd.Series([np.nan]))
    assert np.isnan(t.loc[0, "target_low"]) and np.isnan(t.loc[0, "target_high"])


def judge(vocabulary: Vocabulary, rows: list[tuple], *, juvenile: bool = True) -> pd.DataFrame:
    """Targets and verdicts of (generic, route, weight kg, body surface m², dose intensity mg/day) rows, juvenile
    or adult, as the features and the clinician page judge them (tolerance 10 %, params.yaml)."""
    generic, route, weight, bsa, mg_day = (pd.Series(list(c)) for c in zip(*rows, strict=True))
    t = vocabulary.target_daily_mg(generic, route, weight.astype(float), bsa.astype(float),
                                   juvenile=np.full(len(rows), juvenile))
    t["status"] = dose_status(mg_day.astype(float).to_numpy(), t["target_low"].to_numpy(), t["target_high"].to_numpy(),
                              t["target_defined"].to_numpy(), t["induction_only"].to_numpy(), 0.1)
    return t


def test_juvenile_abatacept_follows_the_jia_label_weight_bands(vocabulary):
    """Orencia, polyarticular JIA: IV 10 mg/kg every 4 weeks below 75 kg, the adult weight bands from 75 kg; SC
    weekly 50 mg (10–25 kg), 87.5 mg (25–50 kg), 125 mg from 50 kg."""
    iv, sc = "intravenous", "subcutaneous"
    t = judge(vocabulary, [("abatacept", iv, 25.0, 0.9, 250 / 28), ("abatacept", iv, 25.0, 0.9, 150 / 28),
                           ("abatacept", iv, 80.0, 1.9, 750 / 28), ("abatacept", iv, 110.0, 2.3, 750 / 28),
                           ("abatacept", sc, 30.0, 1.0, 87.5 / 7), ("abatacept", sc, 30.0, 1.0, 125 / 7),
                           ("abatacept", sc, 60.0, 1.6, 125 / 7)])
    assert t["status"].tolist() == ["at", "below", "at", "below", "at", "above", "at"]
    assert (t["target_source"] == "juvenile").all()
    assert t.loc[0, "target_low"] == pytest.approx(250 / 28)  # 10 mg/kg × 25 kg an infusion
    assert t.loc[0, "target_text"].startswith("10 mg/kg every 4 weeks (< 75 kg) — JIA label dose")
    assert "no JDM dose published" in t.loc[0, "target_text"]
    assert t.loc[2, "target_text"].startswith("the adult dose from 75 kg: 750 mg every 4 weeks (60–100 kg)")
    assert t.loc[3, "target_low"] == pytest.approx(1000 / 28)  # > 100 kg: 1 g
    assert t.loc[4, "target_text"].startswith("87.5 mg weekly (25–50 kg)")
    assert t.loc[6, "target_text"].startswith("the adult dose from 50 kg: 125 mg weekly")


def test_juvenile_tofacitinib_and_tocilizumab_follow_the_jia_label(vocabulary):
    """Xeljanz pcJIA: 3.2 mg twice daily 10–20 kg, 4 mg 20–40 kg, the adult 5 mg from 40 kg, no dose below 10 kg;
    Actemra pJIA IV: 10 mg/kg every 4 weeks below 30 kg, the adult 8 mg/kg from 30 kg."""
    t = judge(vocabulary, [("tofacitinib", "oral", 25.0, 0.9, 8.0), ("tofacitinib", "oral", 15.0, 0.7, 6.4),
                           ("tofacitinib", "oral", 15.0, 0.7, 10.0), ("tofacitinib", "oral", 45.0, 1.4, 11.0),
                           ("tofacitinib", "oral", 8.0, 0.4, 6.4),
                           ("tocilizumab", "intravenous", 20.0, 0.8, 8 * 20 / 28),
                           ("tocilizumab", "intravenous", 40.0, 1.3, 8 * 40 / 28)])
    assert t["status"].tolist() == ["at", "at", "above", "at", "no_target", "below", "at"]
    assert t.loc[0, "target_text"].startswith("4 mg twice daily (20–40 kg) — JIA label dose")
    assert t.loc[4, "target_text"].startswith("no labelled dose below 10 kg")
    assert t.loc[5, "target_low"] == pytest.approx(10 * 20 / 28)


def test_juvenile_targets_need_the_body_size_and_some_drugs_have_none(vocabulary):
    """No weight (or no height for a per-m² target): the verdict is unknown, never a guess or a crash. Tacrolimus
    has no paediatric target (children need more per kg than adults); azathioprine keeps its adult per-kg target."""
    t = judge(vocabulary, [("abatacept", "intravenous", np.nan, np.nan, 250 / 28),
                           ("methotrexate", "oral", 30.0, np.nan, 15 / 7),
                           ("tofacitinib", "oral", np.nan, np.nan, 8.0),
                           ("tacrolimus", "oral", 30.0, 1.0, 0.06 * 30),
                           ("azathioprine", "oral", 30.0, 1.0, 60.0)])
    assert t["status"].tolist() == ["unknown", "unknown", "unknown", "no_target", "at"]
    assert t["target_needs"].tolist() == ["weight", "weight and height", "weight", "", ""]
    assert "no paediatric target" in t.loc[3, "target_text"]
    assert t.loc[4, "target_source"] == "adult"


def test_adult_rows_ignore_the_juvenile_targets(vocabulary):
    rows = [("abatacept", "intravenous", 25.0, 0.9, 250 / 28), ("tofacitinib", "oral", 25.0, 0.9, 8.0),
            ("ivig", "intravenous", np.nan, np.nan, 1000.0)]
    adult = judge(vocabulary, rows, juvenile=False)
    generic, route, weight, bsa, _ = (pd.Series(list(c)) for c in zip(*rows, strict=True))
    plain = vocabulary.target_daily_mg(generic, route, weight.astype(float), bsa.astype(float))
    pd.testing.assert_frame_equal(adult.drop(columns="status"), plain)
    assert adult["status"].tolist() == ["below", "below", "unknown"]  # 500 mg below 60 kg; 10 mg/day; no weight
    assert adult["target_text"].tolist() == [vocabulary.drug(g).text for g in generic]


def test_the_juvenile_rule_is_age_then_diagnosis(vocabulary):
    """Under 18 at the decision is juvenile whatever the diagnosis; a juvenile-onset adult is dosed as an adult;
    only where the age is unknown does the diagnosis decide."""
    assert vocabulary.is_juvenile(
        ["juvenile_dermatomyositis", "juvenile_dermatomyositis", "adult_dermatomyositis", "polymyositis",
         "juvenile_dermatomyositis", None],
        [12, 30, 17, 18, np.nan, np.nan]).tolist() == [True, False, True, False, True, False]


@pytest.mark.parametrize(("change", "message"), [
    ({"weight_bands": [{"below_kg": 50, "mg": 2}, {"below_kg": 20, "mg": 1}]}, "increasing below_kg"),
    ({"weight_bands": [{"mg": 2}, {"below_kg": 20, "mg": 1}]}, "only the last weight band"),
    ({"text": None}, "needs a `text`"),
    ({"low": 5, "high": 4}, "below low"),
])
def test_a_malformed_juvenile_target_is_refused_naming_the_drug_or_rule(change, message):
    config = load_reference("drugs")
    tofa = next(d for d in config["drugs"] if d["generic"] == "tofacitinib")
    juvenile = {**tofa["juvenile"], **change}
    if "low" in change:
        juvenile = {"basis": "mg_per_kg", "low": 5, "high": 4, "text": "x"}
    bad = {**config, "drugs": [{**d, "juvenile": juvenile} if d is tofa else d for d in config["drugs"]]}
    with pytest.raises(ValueError, match=message):
        Vocabulary.from_config(bad)
    adult_limit = {**config, "drugs": [{**d, "target": {**d["target"], "adult_from_kg": 40}} if d is tofa else d
                                       for d in config["drugs"]]}
    with pytest.raises(ValueError, match="belong to its juvenile target"):
        Vocabulary.from_config(adult_limit)


def test_plausible_limits_follow_the_drug_and_its_route(vocabulary):
    generic = pd.Series(["prednisone", "prednisone", "prednisone", "ivig", "methotrexate", None, "ivig"],
                        index=[10, 11, 12, 13, 14, 15, 16])
    route = pd.Series(["oral", "intravenous", None, "intravenous", "subcutaneous", "oral", "intrathecal"],
                      index=generic.index)
    lim = vocabulary.plausible_limits(generic, route)
    assert list(lim.index) == list(generic.index)
    assert lim.loc[10, ["mg", "mg_per_day"]].tolist() == [200, 200]  # oral prednisone
    assert lim.loc[11, ["mg", "mg_per_kg", "mg_per_day"]].tolist() == [2000, 30, 2000]  # an IV pulse
    assert lim.loc[12, "mg"] == 200  # no route: the drug's own bounds
    assert lim.loc[13, "mg_per_kg"] == 2500 and np.isnan(lim.loc[13, "mg_per_m2"])  # IVIG ≤ 2.5 g/kg
    assert lim.loc[14, "mg_per_day"] == 15  # methotrexate: 25 mg daily is the daily-for-weekly error
    assert lim.loc[15].isna().all()  # unknown drug: nothing to check (its own error says so)
    assert lim.loc[16, "mg_per_kg"] == 2500  # unknown route: the drug's bounds


def test_every_drug_has_a_plausible_range_with_a_bound():
    config = load_reference("drugs")
    assert all(d["plausible"] for d in config["drugs"])
    without = {"drugs": [{**d, "plausible": {}} if d["generic"] == "ivig" else d for d in config["drugs"]]}
    with pytest.raises(ValueError, match="needs at least one bound"):
        Vocabulary.from_config(without)
    missing = {"drugs": [{k: v for k, v in d.items() if k != "plausible"} for d in config["drugs"]]}
    with pytest.raises(ValueError, match="plausible"):
        Vocabulary.from_config(missing)
    bad_route = {"drugs": [{**d, "plausible": {"mg": 1, "routes": {"rectal": {"mg": 2}}}} for d in config["drugs"]]}
    with pytest.raises(ValueError, match="rectal"):
        Vocabulary.from_config(bad_route)


def test_label_combination_rules_block_the_options_that_create_the_clash():
    """configs/options.yaml's label rules: adding a JAK inhibitor on top of tocilizumab is advised against (never
    the ★, shown with the rule); switching tocilizumab to it is not, because tocilizumab stops; a 'caution' rule
    (recent rituximab) is shown but blocks nothing; continuing starts nothing and breaks no rule."""
    import pandas as pd

    from features.vocabulary import OptionCatalog
    from pipeline.config import load_reference

    config = load_reference("options")
    switch = {"name": "switch_tocilizumab_to_jak_inhibitor", "label": "switch tocilizumab to a JAK inhibitor",
              "kind": "switch", "stops": "tocilizumab", "adds": "tofacitinib",
              "eligible_unless_on": ["tofacitinib", "baricitinib"]}
    others = [o for o in config["options"] if o["name"] != switch["name"]]  # configured already: listed once
    catalog = OptionCatalog.from_config({**config, "options": [*others, switch]})
    on = pd.DataFrame({"tocilizumab": [True, False, False], "rituximab": [True, True, False]})
    blocked, text = catalog.combination_flags(on)
    assert blocked["add_jak_inhibitor"].tolist() == [True, False, False]
    assert "biologic DMARD" in text.loc[0, "add_jak_inhibitor"]
    assert not blocked["switch_tocilizumab_to_jak_inhibitor"].any()
    assert "rituximab in the last year" in text.loc[0, "switch_tocilizumab_to_jak_inhibitor"]  # caution only
    assert text.loc[2].eq("").all() and not blocked.loc[2].any()
    assert not blocked["continue"].any() and text["continue"].eq("").all()
    assert blocked["add_abatacept"].tolist() == [True, False, False]  # the tocilizumab label: no second biologic


def test_rituximab_started_on_a_current_jak_inhibitor_or_abatacept_is_advised_against():
    """Found by a review: rituximab added on top of a current JAK inhibitor was the ★ with a caution meant for the
    other direction. The one-way rules tell them apart: rituximab started on a JAK inhibitor or abatacept taken now
    is advised against (their labels: no concurrent biologic); a JAK inhibitor or abatacept started within a year of
    a rituximab course stays a caution (B cells may still be depleted)."""
    from features.vocabulary import OptionCatalog

    catalog = OptionCatalog.from_config(load_reference("options"))
    on = pd.DataFrame({"tofacitinib": [True, False, False], "abatacept": [False, True, False],
                       "rituximab": [False, False, True]})
    blocked, text = catalog.combination_flags(on)
    assert blocked["add_rituximab"].tolist() == [True, True, False]
    assert "such as rituximab" in text.loc[0, "add_rituximab"] and "abatacept label" in text.loc[1, "add_rituximab"]
    assert "last year" not in text.loc[0, "add_rituximab"] + text.loc[1, "add_rituximab"]
    assert not blocked.loc[2, ["add_jak_inhibitor", "add_abatacept"]].any()  # after rituximab: caution only
    assert text.loc[2, "add_jak_inhibitor"].startswith("rituximab in the last year")
    assert text.loc[2, "add_abatacept"].startswith("rituximab in the last year")


def test_optimise_doses_says_why_not_for_a_patient_on_no_drug():
    """Found by a probe: a patient on no drug was told 'every current drug is at or above its target dose'."""
    from features.vocabulary import OptionCatalog

    catalog = OptionCatalog.from_config(load_reference("options"))
    on = pd.DataFrame({"ivig": [True, False, True]})
    eligible, reason = catalog.eligibility(on, pd.Series([False, False, True]))
    assert reason["optimise_dose"].tolist() == ["every current drug is at or above its target dose",
                                                "no current drug to bring to its target dose", ""]
    assert eligible["optimise_dose"].tolist() == [False, False, True]


@pytest.mark.parametrize(("option", "key", "value", "said"), [
    ("add_ivig", "eligible_unless_on", ["ivgi"], "option 'add_ivig': eligible_unless_on names 'ivgi', "
                                                 "not a generic of the drug vocabulary (did you mean 'ivig'?)"),
    ("add_ivig", "adds", "ivgi", "option 'add_ivig': adds names 'ivgi'"),
    ("switch_tocilizumab_to_abatacept", "stops", "tocilizumub", "stops names 'tocilizumub'"),
    ("jak_inhibitor_with_biologic", "with", ["tocilizumab", "abatacet"], "combination rule "
                                                                         "'jak_inhibitor_with_biologic': with names"),
])
def test_a_drug_name_the_vocabulary_does_not_know_in_options_yaml_is_refused_naming_file_option_and_key(
        monkeypatch, option, key, value, said):
    """Found by a review: eligibility skipped an unknown name, so `eligible_unless_on: [ivgi]` made add IVIG
    eligible for patients already on IVIG, silently. configs/options.yaml's drug names are now checked at load."""
    from features.vocabulary import OptionCatalog
    from pipeline import config as C

    shipped = load_reference("options")
    entries = {"options": [dict(o) for o in shipped["options"]],
               "combination_rules": [dict(r) for r in shipped["combination_rules"]]}
    section = "options" if option.startswith(("add_", "switch_")) else "combination_rules"
    next(e for e in entries[section] if e["name"] == option)[key] = value
    typo = {**shipped, **entries}
    on_ivig = pd.DataFrame({"ivig": [True]})
    if key == "eligible_unless_on":  # what the typo did: the drug it meant no longer blocks the option
        assert OptionCatalog.from_config(typo).eligibility(on_ivig, pd.Series([False]))[0].loc[0, option]
    assert not C.load_options().eligibility(on_ivig, pd.Series([False]))[0].loc[0, "add_ivig"]  # shipped: checked
    monkeypatch.setattr(C, "load_reference", lambda name: typo if name == "options" else load_reference(name))
    with pytest.raises(C.ConfigFileError) as refused:
        C.load_options()
    assert str(refused.value).startswith(f"{C.CONFIGS / 'options.yaml'}: ") and said in str(refused.value)


def _shipped_with(name: str, path: tuple, value) -> dict:
    """configs/<name>.yaml as read, with the value at `path` (keys and list indices) replaced."""
    import copy

    raw = copy.deepcopy(load_reference(name))
    node = raw
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize(("name", "path", "value", "said"), [
    ("options", ("rituximab_active_days",), -5, "rituximab_active_days: Input should be greater than or equal to 0"),
    ("options", ("rituximab_active_days",), True, "rituximab_active_days: a number, not true/false"),
    ("options", ("options", 3, "effect_modifiers", 0, "source"), "",
     "options.3 (add_rituximab).effect_modifiers.0.source: String should have at least 1 character"),
    ("options", ("combination_rules", 0, "text"), "  ", "combination_rules.0 (jak_inhibitor_with_biologic).text"),
    ("drugs", ("drugs", 0, "target", "low"), -1, "drugs.0 (ivig).target.low: Input should be greater than 0"),
    ("simulator", ("cohort", "ild_by_antibody", "anti-MDA5"), 1.8,
     "cohort.ild_by_antibody.anti-MDA5: Input should be less than or equal to 1"),
    ("simulator", ("cohort", "adult_age_beta"), [-3.2, 3.0], "cohort.adult_age_beta.0: Input should be greater than 0"),
    ("simulator", ("history", "prior_advanced", "ivig"), 1.35, "history.prior_advanced.ivig: Input should be less"),
])
def test_a_reference_value_that_means_nothing_is_refused_naming_file_entry_and_key(name, path, value, said):
    """Found by a review: a negative rituximab window, a blank source, a negative target dose, an ILD probability of
    1.8 and a negative Beta shape were all accepted (the simulator drew from them, the page printed them)."""
    from features.vocabulary import OptionCatalog
    from pipeline.config import ConfigFileError, validated
    from simulator.config import SimulatorConfig

    parse = {"options": OptionCatalog.from_config, "drugs": Vocabulary.from_config,
             "simulator": SimulatorConfig.from_config}[name]
    validated(load_reference(name), parse, f"{name}.yaml")  # the shipped file is fine
    with pytest.raises(ConfigFileError) as refused:
        validated(_shipped_with(name, path, value), parse, f"{name}.yaml")
    assert str(refused.value).startswith(f"{name}.yaml: ") and said in str(refused.value)
