"""Contract checks: every kind of violation is found where it is, valid rows survive, units are converted,
doses resolved with the body size measured before the start date, and input order never matters."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.contract import (
    CONTRACT_COLUMNS,
    CONTRACT_TABLES,
    NORMALISED_COLUMNS,
    VIOLATION_COLUMNS,
    ContractError,
    MeasureCatalog,
    check,
    normalise,
    reject_patients,
    validate,
)
from features.vocabulary import Vocabulary
from pipeline.config import ROOT, load_reference
from pipeline.io import read_contract_tables, write_parquet
from tests.conftest import SEED_CASE

SEED_DIR = SEED_CASE
TODAY = "2026-11-25"


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    return Vocabulary.from_config(load_reference("drugs"))


@pytest.fixture(scope="module")
def measures() -> MeasureCatalog:
    return MeasureCatalog.from_config(load_reference("measures"))


def _frame(header: str, *rows: tuple) -> pd.DataFrame:
    """A table as a CSV export reads: every cell a string, empty cells missing."""
    cols = header.split(",")
    data = [[None if v in ("", None) else str(v) for v in r] for r in rows]
    return pd.DataFrame(data, columns=cols, dtype=object)


def valid_tables() -> dict[str, pd.DataFrame]:
    """Two patients with every table and every kind of column, free of any violation."""
    return {
        "patients": _frame(
            "patient_id,sex,birth_year,diagnosis,diagnosis_date,antibodies,ild,cancer_associated",
            ("P1", "F", "1970", "adult_dermatomyositis", "2020-01-10", "anti-Jo-1", "true", "false"),
            ("P2", "M", "1985", "polymyositis", "2021-02-01", "negative", "false", "false"),
        ),
        "regimens": _frame(
            "patient_id,drug,dose,dose_unit,route,interval,start_date,end_date",
            ("P1", "prednisone", "20", "mg", "oral", "daily", "2020-02-01", ""),
            ("P1", "IVIG (Privigen)", "2", "g/kg", "intravenous", "every 4 weeks", "2021-01-01", ""),
            ("P2", "methotrexate", "15", "mg", "subcutaneous", "weekly", "2021-03-01", "2022-03-01"),
            ("P2", "Cytoxan", "750", "mg/m2", "intravenous", "every 4 weeks", "2022-04-01", "2022-10-01"),
        ),
        "assessments": _frame(
            "patient_id,date,measure,value,unit,upper_limit_normal",
            ("P1", "2020-12-01", "weight", "70", "kg", ""),          # 0
            ("P1", "2021-06-01", "physician_global", "5", "cm", ""),  # 1
            ("P1", "2021-06-01", "mmt8", "60", "score_0_80", ""),     # 2
            ("P1", "2021-06-01", "ck", "900", "U/L", "200"),          # 3
            ("P1", "2021-06-01", "haq", "1.0", "score_0_3", ""),      # 4
            ("P1", "2021-06-01", "cdasi_activity", "20", "score", ""),  # 5
            ("P2", "2022-03-15", "weight", "80", "kg", ""),           # 6
            ("P2", "2022-03-15", "height", "180", "cm", ""),          # 7
            ("P2", "2022-03-15", "haemoglobin", "12", "g/dL", ""),    # 8
            ("P2", "2022-03-15", "creatinine", "70", "umol/L", ""),   # 9
        ),
        "events": _frame(
            "patient_id,date,event,grade,details",
            ("P1", "2021-07-01", "cytopenia", "3", "neutrophils 0.8"),
            ("P2", "2022-05-01", "serious_infection", "", "pneumonia"),
        ),
    }


def _found(violations: pd.DataFrame) -> set[tuple]:
    return {
        (r.table, None if pd.isna(r.row) else int(r.row), r.column, r.rule, r.severity)
        for r in violations.itertuples(index=False)
    }


def _set(table: str, row: int, column: str | list[str], value: str | list[str] | None) -> Callable[[dict], None]:
    def edit(t: dict[str, pd.DataFrame]) -> None:
        t[table].loc[row, column] = value
    return edit


def _drop_column(table: str, column: str) -> Callable[[dict], None]:
    def edit(t: dict[str, pd.DataFrame]) -> None:
        t[table] = t[table].drop(columns=column)
    return edit


def _append_copy(table: str, row: int) -> Callable[[dict], None]:
    def edit(t: dict[str, pd.DataFrame]) -> None:
        t[table] = pd.concat([t[table], t[table].iloc[[row]]], ignore_index=True)
    return edit


E, W = "error", "warning"
BROKEN = {
    "missing column": (_drop_column("patients", "sex"), {("patients", None, "sex", "missing_column", E)}),
    "missing required value": (_set("patients", 1, "diagnosis", None), {("patients", 1, "diagnosis", "required", E)}),
    "blank cell is empty": (_set("regimens", 2, "route", "   "), {("regimens", 2, "route", "required", E)}),
    "unparseable date": (_set("regimens", 0, "start_date", "01/02/2020"),
                         {("regimens", 0, "start_date", "unparseable_date", E)}),
    "unparseable number": (_set("assessments", 1, "value", "five"),
                           {("assessments", 1, "value", "unparseable_number", E)}),
    # a typo's year no datetime64[ns] holds, and an infinite lab value: a rejected row, never a crash or a feature
    "date beyond the calendar": (_set("regimens", 0, "end_date", "2300-01-01"),
                                 {("regimens", 0, "end_date", "unparseable_date", E)}),
    "infinite number": (_set("assessments", 1, "value", "Infinity"),
                        {("assessments", 1, "value", "unparseable_number", E)}),
    "birth year not whole": (_set("patients", 0, "birth_year", "1970.5"),
                             {("patients", 0, "birth_year", "unparseable_number", E)}),
    "unknown sex": (_set("patients", 0, "sex", "X"), {("patients", 0, "sex", "unknown_category", E)}),
    "unknown diagnosis": (_set("patients", 1, "diagnosis", "lupus"),
                          {("patients", 1, "diagnosis", "unknown_category", E)}),
    "unknown antibody": (_set("patients", 0, "antibodies", "anti-Jo-1; anti-XYZ"),
                         {("patients", 0, "antibodies", "unknown_category", E)}),
    "negative with a positive antibody": (_set("patients", 1, "antibodies", "negative;anti-MDA5"),
                                          {("patients", 1, "antibodies", "conflicting_values", E)}),
    "unknown boolean": (_set("patients", 0, "ild", "maybe"), {("patients", 0, "ild", "unknown_category", E)}),
    "unknown measure": (_set("assessments", 5, "measure", "grip_strength"),
                        {("assessments", 5, "measure", "unknown_category", E)}),
    "unknown unit": (_set("assessments", 4, "unit", "cm"), {("assessments", 4, "unit", "unknown_unit", E)}),
    "unknown route": (_set("regimens", 0, "route", "intrathecal"), {("regimens", 0, "route", "unknown_category", E)}),
    "unknown event": (_set("events", 1, "event", "headache"), {("events", 1, "event", "unknown_category", E)}),
    "unknown drug": (_set("regimens", 2, "drug", "Actemraa"), {("regimens", 2, "drug", "unknown_drug", E)}),
    "unknown dose unit": (_set("regimens", 0, "dose_unit", "mg/day"),
                          {("regimens", 0, "dose_unit", "unknown_dose_unit", E)}),
    "unreadable interval": (_set("regimens", 0, "interval", "as needed"),
                            {("regimens", 0, "interval", "unreadable_interval", E)}),
    "MMT-8 95 on the 80 scale": (_set("assessments", 2, "value", "95"),
                                 {("assessments", 2, "value", "out_of_range", E)}),
    "physician global 12 cm": (_set("assessments", 1, "value", "12"),
                               {("assessments", 1, "value", "out_of_range", E)}),
    "CDASI activity 120": (_set("assessments", 5, "value", "120"), {("assessments", 5, "value", "out_of_range", E)}),
    "HAQ 3.5": (_set("assessments", 4, "value", "3.5"), {("assessments", 4, "value", "out_of_range", E)}),
    "negative lab": (_set("assessments", 8, "value", "-1"), {("assessments", 8, "value", "out_of_range", E)}),
    # finite cells whose ratio to the limit of normal would be infinite: entry-error screens
    "CK 1e308": (_set("assessments", 3, "value", "1e308"), {("assessments", 3, "value", "out_of_range", E)}),
    "limit of normal 1e-300": (_set("assessments", 3, "upper_limit_normal", "1e-300"),
                               {("assessments", 3, "upper_limit_normal", "out_of_range", E)}),
    "grade 5": (_set("events", 0, "grade", "5"), {("events", 0, "grade", "out_of_range", E)}),
    "zero dose": (_set("regimens", 0, "dose", "0"), {("regimens", 0, "dose", "out_of_range", E)}),
    "birth year 1850": (_set("patients", 1, "birth_year", "1850"), {("patients", 1, "birth_year", "out_of_range", E)}),
    "zero upper limit of normal": (_set("assessments", 3, "upper_limit_normal", "0"),
                                   {("assessments", 3, "upper_limit_normal", "out_of_range", E)}),
    "enzyme without ULN": (_set("assessments", 3, "upper_limit_normal", None),
                           {("assessments", 3, "upper_limit_normal", "missing_upper_limit_normal", E)}),
    "date before the birth year": (_set("assessments", 5, "date", "1969-12-31"),
                                   {("assessments", 5, "date", "date_before_birth", E)}),
    "date after today": (_set("events", 1, "date", "2027-01-01"), {("events", 1, "date", "date_in_future", E)}),
    "end before start": (_set("regimens", 2, "end_date", "2021-02-28"),
                         {("regimens", 2, "end_date", "end_before_start", E)}),
    "duplicate patient": (_append_copy("patients", 0), {("patients", 0, "patient_id", "duplicate_patient", E),
                                                         ("patients", 2, "patient_id", "duplicate_patient", E)}),
    "patient not in patients": (_set("events", 1, "patient_id", "P9"),
                                {("events", 1, "patient_id", "unknown_patient", E)}),
    # ids `escalate score` cannot plan: contract errors on the row, so the patient is rejected like any other
    "patient id with a NUL": (_set("events", 1, "patient_id", "P2\x00"),
                              {("events", 1, "patient_id", "identifier_nul", E),
                               ("events", 1, "patient_id", "unknown_patient", E)}),
    "patient id of 257 characters": (_set("regimens", 0, "patient_id", "P" * 257),
                                     {("regimens", 0, "patient_id", "identifier_too_long", E),
                                      ("regimens", 0, "patient_id", "unknown_patient", E)}),
    "cytopenia without grade": (_set("events", 0, "grade", None), {("events", 0, "grade", "missing_grade", E)}),
    "prednisone 1e9 mg": (_set("regimens", 0, "dose", "1e9"), {("regimens", 0, "dose", "implausible_dose", E)}),
    "IVIG 20 g/kg": (_set("regimens", 1, "dose", "20"), {("regimens", 1, "dose", "implausible_dose", E)}),
    "methotrexate 25 mg daily (for weekly)": (_set("regimens", 2, ["dose", "interval"], ["25", "daily"]),
                                              {("regimens", 2, "dose", "implausible_dose", E)}),
    "cyclophosphamide 7500 mg/m2": (_set("regimens", 3, "dose", "7500"),
                                    {("regimens", 3, "dose", "implausible_dose", E)}),
    "duplicate regimen row": (_append_copy("regimens", 2), {("regimens", 4, "*", "duplicate_row", E)}),
    "duplicate assessment row": (_append_copy("assessments", 4), {("assessments", 10, "*", "duplicate_row", W)}),
    "mg/kg dose before any weight": (_set("regimens", 1, "start_date", "2020-06-01"),
                                     {("regimens", 1, "dose_unit", "no_body_size", W)}),
    "mg/m2 dose without height": (_set("assessments", 7, "date", "2022-05-01"),
                                  {("regimens", 3, "dose_unit", "no_body_size", W)}),
}


def test_the_valid_tables_are_valid(vocabulary, measures):
    v = validate(valid_tables(), vocabulary, measures, TODAY)
    assert v.empty, v.to_string()
    assert list(v.columns) == list(VIOLATION_COLUMNS)


@pytest.mark.parametrize("edit, expected", BROKEN.values(), ids=BROKEN.keys())
def test_each_violation_is_found_exactly_where_it_is(vocabulary, measures, edit, expected):
    tables = valid_tables()
    edit(tables)
    v = validate(tables, vocabulary, measures, TODAY)
    assert _found(v) == expected, v.to_string()
    # the finding points back at the record: patient, a message that says what is wrong
    for r in v.itertuples(index=False):
        assert r.message and isinstance(r.message, str)
        if r.row is not pd.NA and r.table != "patients" or r.rule == "duplicate_patient":
            assert r.patient_id == str(tables[r.table].loc[int(r.row), "patient_id"])


def test_unknown_drug_message_names_the_closest_known_drugs(vocabulary, measures):
    tables = valid_tables()
    tables["regimens"].loc[2, "drug"] = "Actemraa"
    msg = validate(tables, vocabulary, measures, TODAY)["message"].iloc[0]
    assert "Actemraa" in msg and "actemra (tocilizumab)" in msg


def test_an_implausible_dose_names_the_value_the_drug_and_the_range(vocabulary, measures):
    tables = valid_tables()
    tables["regimens"].loc[0, "dose"] = "1e9"
    result = check(tables, vocabulary, measures, TODAY)
    [msg] = result.violations["message"]
    assert "1e+09 mg" in msg and "prednisone (oral)" in msg and "0–200 mg per administration" in msg
    # the patient is rejected whole; the other is untouched
    assert list(result.rejected_patients) == ["P1"] and set(result.normalised["regimens"]["patient_id"]) == {"P2"}


def test_a_per_kg_dose_is_checked_as_written_and_in_mg_at_the_measured_weight(vocabulary, measures):
    tables = valid_tables()
    tables["regimens"].loc[1, ["drug", "dose", "dose_unit"]] = ["tocilizumab", "12", "mg/kg"]  # 12 mg/kg: allowed
    assert validate(tables, vocabulary, measures, TODAY).empty
    tables["assessments"].loc[0, "value"] = "150"  # 12 mg/kg at 150 kg = 1800 mg, beyond 1600 mg an infusion
    [msg] = validate(tables, vocabulary, measures, TODAY)["message"]
    assert "12 mg/kg every 4 weeks of tocilizumab (intravenous) = 1800 mg" in msg and "0–1600 mg" in msg


def test_an_intravenous_glucocorticoid_pulse_is_plausible_but_not_as_an_oral_dose(vocabulary, measures):
    tables = valid_tables()
    tables["regimens"].loc[0, ["drug", "dose", "route", "end_date"]] = [
        "Solu-Medrol", "1000", "intravenous", "2020-02-03"]
    assert validate(tables, vocabulary, measures, TODAY).empty
    tables["regimens"].loc[0, "route"] = "oral"
    assert _found(validate(tables, vocabulary, measures, TODAY)) == {("regimens", 0, "dose", "implausible_dose", E)}


def test_a_duplicate_row_names_its_first_copy_and_differs_from_a_near_copy(vocabulary, measures):
    tables = valid_tables()
    _append_copy("regimens", 2)(tables)
    _append_copy("regimens", 2)(tables)
    near = tables["regimens"].iloc[[0]].assign(dose="25")
    tables["regimens"] = pd.concat([tables["regimens"], near], ignore_index=True)
    v = validate(tables, vocabulary, measures, TODAY)
    assert _found(v) == {("regimens", 4, "*", "duplicate_row", E), ("regimens", 5, "*", "duplicate_row", E)}
    assert all("regimens row 2" in m for m in v["message"])


@pytest.mark.parametrize("written", ["patinet_id", "Patient_ID", " patient id "])
def test_a_missing_column_written_almost_right_gets_a_hint(vocabulary, measures, written):
    tables = valid_tables()
    tables["events"] = tables["events"].rename(columns={"patient_id": written})
    [msg] = validate(tables, vocabulary, measures, TODAY)["message"]
    assert f"did you mean {written!r}?" in msg and "rename it to 'patient_id'" in msg


def test_a_missing_column_with_nothing_like_it_gets_no_hint(vocabulary, measures):
    tables = valid_tables()
    tables["events"] = tables["events"].drop(columns="event").assign(colour="red")
    [msg] = validate(tables, vocabulary, measures, TODAY)["message"]
    assert msg == "required column 'event' is missing from the events table"


def test_an_unreadable_patients_table_is_one_finding_and_no_cascade(vocabulary, measures):
    tables = valid_tables()
    del tables["patients"]
    result = check(tables, vocabulary, measures, TODAY, unreadable={"patients": "patients.csv: not UTF-8"})
    found = _found(result.violations)
    assert ("patients", None, None, "unreadable_table", E) in found
    assert not {f for f in found if f[3] in ("unknown_patient", "date_before_birth")}
    assert {f for f in found if f[3] == "check_skipped"} == {
        (t, None, "patient_id", "check_skipped", W) for t in ("regimens", "assessments", "events")}
    # every patient seen in the other tables is rejected: none is used without their patients row
    assert list(result.rejected_patients) == ["P1", "P2"] and result.broken_tables == {"patients"}
    with pytest.raises(ContractError, match=re.escape("patients [unreadable_table]: the patients table cannot")):
        result.raise_for_errors()


@pytest.mark.parametrize("break_patients", ["unreadable", "no patient_id", "no birth_year"])
def test_a_date_after_today_is_found_whatever_state_the_patients_table_is_in(vocabulary, measures,
                                                                              break_patients):
    tables = valid_tables()
    tables["events"].loc[1, "date"] = "2027-01-01"
    unreadable = {}
    if break_patients == "unreadable":
        del tables["patients"]
        unreadable = {"patients": "patients.csv: not UTF-8"}
    else:
        tables["patients"] = tables["patients"].drop(columns=break_patients.removeprefix("no "))
    found = _found(validate(tables, vocabulary, measures, TODAY, unreadable=unreadable))
    assert ("events", 1, "date", "date_in_future", E) in found
    # what was not checked is said, once per table, and the after-today rule is not among it
    skipped = {f[:2] for f in found if f[3] == "check_skipped"}
    assert skipped == {(t, None) for t in ("regimens", "assessments", "events")}
    if break_patients == "no birth_year":
        assert not {f for f in found if f[3] == "date_before_birth"}


def test_a_patient_whose_id_breaks_the_identifier_rules_is_rejected_on_every_row(vocabulary, measures):
    """A NUL character or an id over 256 characters: each row carrying it is an error naming table, row and rule,
    and the patient is rejected whole (as validate, features and score all read the contract); 256 is fine."""
    tables = valid_tables()
    nul, long_id, longest = "P\x002", "Q" * 257, "R" * 256
    for t in tables.values():
        t["patient_id"] = t["patient_id"].replace({"P1": longest, "P2": nul})
    result = check(tables, vocabulary, measures, TODAY)
    assert list(result.rejected_patients) == [nul]
    found = {(f[0], f[1], f[3]) for f in _found(result.violations) if f[4] == E}
    assert found == {(t, r, "identifier_nul") for t in tables
                     for r in tables[t].index[tables[t]["patient_id"] == nul]}
    assert set(result.normalised["patients"]["patient_id"]) == {longest}
    tables["patients"].loc[0, "patient_id"] = long_id
    [msg] = validate(tables, vocabulary, measures, TODAY).query("rule == 'identifier_too_long'")["message"]
    assert msg.startswith("patient_id is 257 characters long") and "at most 256" in msg


def test_an_unreadable_assessments_table_gives_no_body_size_warning_per_row(vocabulary, measures):
    tables = valid_tables()
    del tables["assessments"]
    v = validate(tables, vocabulary, measures, TODAY, unreadable={"assessments": "assessments.parquet: truncated"})
    assert _found(v) == {("assessments", None, None, "unreadable_table", E),
                         ("regimens", None, "dose_unit", "check_skipped", W)}


def test_out_of_range_message_gives_the_range_and_the_written_value(vocabulary, measures):
    tables = valid_tables()
    tables["assessments"].loc[1, ["value", "unit"]] = ["120", "mm"]
    v = validate(tables, vocabulary, measures, TODAY)
    assert _found(v) == {("assessments", 1, "value", "out_of_range", E)}
    assert "120 mm" in v["message"].iloc[0] and "12 cm" in v["message"].iloc[0] and "0–10" in v["message"].iloc[0]


def test_every_violation_is_listed_not_just_the_first(vocabulary, measures):
    tables = valid_tables()
    edits = [BROKEN[k][0] for k in ("unknown sex", "unknown drug", "unreadable interval", "HAQ 3.5",
                                     "enzyme without ULN", "date after today", "cytopenia without grade",
                                     "unparseable number")]
    for edit in edits:
        edit(tables)
    tables["assessments"].loc[2, "value"] = "95"  # a second violation in the same table
    v = validate(tables, vocabulary, measures, TODAY)
    expected = set().union(*(BROKEN[k][1] for k in ("unknown sex", "unknown drug", "unreadable interval",
                                                    "HAQ 3.5", "enzyme without ULN", "date after today",
                                                    "cytopenia without grade", "unparseable number")))
    expected |= {("assessments", 2, "value", "out_of_range", E)}
    assert _found(v) == expected


def test_two_violations_in_one_row_are_both_listed(vocabulary, measures):
    tables = valid_tables()
    tables["regimens"].loc[0, ["drug", "interval"]] = ["Foo", "sometimes"]
    assert _found(validate(tables, vocabulary, measures, TODAY)) == {
        ("regimens", 0, "drug", "unknown_drug", E), ("regimens", 0, "interval", "unreadable_interval", E)}


def test_normalise_keeps_the_valid_rows_of_a_flawed_input(vocabulary, measures):
    tables = valid_tables()
    tables["regimens"].loc[2, "drug"] = "Foo"
    tables["assessments"].loc[4, "value"] = "3.5"
    out = normalise(tables, vocabulary, measures, TODAY)
    assert sorted(out["regimens"]["row"]) == [0, 1, 3]
    assert sorted(out["assessments"]["row"]) == [r for r in range(10) if r != 4]
    assert len(out["patients"]) == 2 and len(out["events"]) == 2


def test_normalised_tables_have_the_documented_shape(vocabulary, measures):
    out = normalise(valid_tables(), vocabulary, measures, TODAY)
    assert set(out) == set(CONTRACT_TABLES)
    for table, cols in NORMALISED_COLUMNS.items():
        assert list(out[table].columns[: len(cols)]) == list(cols)
    p = out["patients"].set_index("patient_id")
    assert p.loc["P1", "anti_synthetase"] and not p.loc["P1", "antibody_negative"]
    assert p.loc["P2", "antibody_negative"] and not p.loc["P2", "anti_synthetase"]
    assert p["birth_year"].dtype == np.int64 and p["ild"].dtype == bool
    for table, col in [("patients", "diagnosis_date"), ("regimens", "start_date"), ("regimens", "end_date"),
                       ("assessments", "date"), ("events", "date")]:
        assert out[table][col].dtype == "datetime64[ns]"
    r = out["regimens"].set_index("row")
    assert r.loc[2, "generic"] == "methotrexate" and r.loc[1, "generic"] == "ivig" and r.loc[3, "drug"] == "Cytoxan"
    assert r.loc[3, "generic"] == "cyclophosphamide" and r.loc[3, "drug_class"] == "alkylating"
    assert pd.isna(r.loc[0, "end_date"])
    assert r.loc[2, "daily_mg"] == pytest.approx(15 / 7)
    a = out["assessments"].set_index("row")
    assert a.loc[2, "scale_max"] == 80 and math.isnan(a.loc[1, "scale_max"])
    assert out["events"].set_index("row").loc[0, "grade"] == 3


def test_dose_uses_the_body_size_measured_nearest_on_or_before_the_start(vocabulary, measures):
    tables = valid_tables()
    extra = _frame("patient_id,date,measure,value,unit,upper_limit_normal",
                   ("P1", "2021-01-01", "weight", "75", "kg", ""),   # on the start date: used
                   ("P1", "2021-01-02", "weight", "90", "kg", ""))   # after it: never used (no leakage)
    tables["assessments"] = pd.concat([tables["assessments"], extra], ignore_index=True)
    r = normalise(tables, vocabulary, measures, TODAY)["regimens"].set_index("row")
    assert r.loc[1, "dose_mg"] == pytest.approx(2000 * 75)
    assert r.loc[1, "daily_mg"] == pytest.approx(2000 * 75 / 28)
    # cyclophosphamide 750 mg/m² at 80 kg and 180 cm: BSA = sqrt(80 × 180 / 3600) = 2 m²
    assert r.loc[3, "dose_mg"] == pytest.approx(1500)
    assert r.loc[0, "dose_mg"] == 20 and r.loc[0, "daily_mg"] == 20


def test_weight_based_dose_without_weight_is_kept_with_missing_dose(vocabulary, measures):
    tables = valid_tables()
    tables["regimens"].loc[1, "start_date"] = "2020-06-01"
    result = check(tables, vocabulary, measures, TODAY)
    assert result.ok and result.rejected_patients.empty
    r = result.normalised["regimens"].set_index("row")
    assert 1 in r.index and math.isnan(r.loc[1, "dose_mg"]) and math.isnan(r.loc[1, "daily_mg"])


def test_a_weight_with_an_error_is_not_used_for_a_dose(vocabulary, measures):
    tables = valid_tables()
    tables["assessments"].loc[0, "unit"] = "stone"
    v = validate(tables, vocabulary, measures, TODAY)
    assert _found(v) == {("assessments", 0, "unit", "unknown_unit", E),
                         ("regimens", 1, "dose_unit", "no_body_size", W)}


CONVERSIONS = [
    ("physician_global", "55", "mm", 5.5, "cm"),
    ("patient_global", "7", "CM", 7.0, "cm"),
    ("haemoglobin", "129", "g/L", 12.9, "g/dL"),
    ("creatinine", "0.8", "mg/dL", 0.8 * 88.4, "umol/L"),
    ("creatinine", "70", "µmol/L", 70.0, "umol/L"),
    ("weight", "154", "lb", 154 * 0.45359237, "kg"),
    ("height", "1.8", "m", 180.0, "cm"),
    ("platelets", "242000", "/uL", 242.0, "10^9/L"),
    ("platelets", "250000", "cells/uL", 250.0, "10^9/L"),  # as neutrophils and lymphocytes take it
    ("neutrophils", "4.1", "x10^9/L", 4.1, "10^9/L"),
    ("alt", "24", "IU/L", 24.0, "U/L"),
    ("mmt8", "120", "score_0_150", 120.0, "score_0_150"),
]


@pytest.fixture(scope="module")
def converted(vocabulary, measures):
    """One check over the valid tables plus one assessment row per conversion case (rows 10, 11, ...)."""
    tables = valid_tables()
    extra = _frame("patient_id,date,measure,value,unit,upper_limit_normal",
                   *[("P2", "2022-03-16", m, v, u, "35" if m == "alt" else "") for m, v, u, _, _ in CONVERSIONS])
    tables["assessments"] = pd.concat([tables["assessments"], extra], ignore_index=True)
    return check(tables, vocabulary, measures, TODAY)


@pytest.mark.parametrize("case", range(len(CONVERSIONS)), ids=[f"{c[0]} {c[2]}" for c in CONVERSIONS])
def test_units_are_converted_to_the_canonical_unit(converted, case):
    measure, _, _, canonical_value, canonical_unit = CONVERSIONS[case]
    assert converted.violations.empty, converted.violations.to_string()
    row = converted.normalised["assessments"].set_index("row").loc[10 + case]
    assert row["measure"] == measure
    assert row["value"] == pytest.approx(canonical_value) and row["unit"] == canonical_unit
    if measure == "mmt8":
        assert row["scale_max"] == 150


def test_enzyme_upper_limit_normal_is_kept(vocabulary, measures):
    a = normalise(valid_tables(), vocabulary, measures, TODAY)["assessments"].set_index("row")
    assert a.loc[3, "upper_limit_normal"] == 200 and a.loc[3, "unit"] == "U/L"


ALIASES = [
    ("diagnosis", "DM", "adult_dermatomyositis"),
    ("diagnosis", "adult DM", "adult_dermatomyositis"),
    ("diagnosis", "JDM", "juvenile_dermatomyositis"),
    ("diagnosis", "IMNM", "immune_mediated_necrotising_myopathy"),
    ("diagnosis", "Antisynthetase syndrome", "antisynthetase_syndrome"),
    ("sex", "female", "F"),
    ("sex", "m", "M"),
    ("ild", "Yes", True),
    ("antibodies", "anti-TIF1γ", "anti-TIF1g"),
    ("antibodies", "anti-TIF1g", "anti-TIF1g"),
    ("antibodies", "TIF1-gamma", "anti-TIF1g"),
    ("antibodies", "Jo-1", "anti-Jo-1"),
    ("antibodies", "anti-MDA5 ; PL-7", "anti-MDA5;anti-PL-7"),
    ("antibodies", "MDA5; Ro52", None),  # Ro52 is not a contract antibody: an error naming it
]


def _extra_patients(column: str, values: list[str]) -> pd.DataFrame:
    """Valid patients P3, P4, ... differing from P1 only in `column`."""
    base = valid_tables()["patients"].iloc[[0] * len(values)].reset_index(drop=True)
    base["patient_id"] = [f"P{3 + i}" for i in range(len(values))]
    base[column] = values
    return base


@pytest.fixture(scope="module")
def aliased(vocabulary, measures):
    """One check over patients rows 2, 3, ...: one per alias case."""
    tables = valid_tables()
    extra = pd.concat([_extra_patients(c, [w]) for c, w, _ in ALIASES], ignore_index=True)
    extra["patient_id"] = [f"P{3 + i}" for i in range(len(extra))]
    tables["patients"] = pd.concat([tables["patients"], extra], ignore_index=True)
    return check(tables, vocabulary, measures, TODAY)


@pytest.mark.parametrize("case", range(len(ALIASES)), ids=[f"{c[0]} {c[1]}" for c in ALIASES])
def test_code_aliases_are_accepted(aliased, case):
    column, _, code = ALIASES[case]
    row = 2 + case
    found = {f for f in _found(aliased.violations) if f[1] == row}
    if code is None:
        assert found == {("patients", row, column, "unknown_category", E)}
        assert "'Ro52'" in aliased.violations.set_index("row").loc[row, "message"]
        return
    assert not found
    assert aliased.normalised["patients"].set_index("row").loc[row, column] == code


ANTIBODY_FLAGS = [
    ("anti-TIF1γ", {"anti_tif1g"}),
    ("anti-Jo-1;anti-PL-12", {"anti_synthetase"}),
    ("anti-SRP", {"anti_srp_hmgcr"}),
    ("HMGCR;anti-MDA5", {"anti_srp_hmgcr", "anti_mda5"}),
    ("anti-NXP2;anti-SAE;anti-Mi-2", {"anti_nxp2", "anti_sae", "anti_mi2"}),
    ("negative", {"antibody_negative"}),
    (None, set()),  # not tested
]


@pytest.fixture(scope="module")
def flagged(vocabulary, measures) -> pd.DataFrame:
    tables = valid_tables()
    tables["patients"] = pd.concat(
        [tables["patients"], _extra_patients("antibodies", [a for a, _ in ANTIBODY_FLAGS])], ignore_index=True)
    out = check(tables, vocabulary, measures, TODAY)
    assert out.violations.empty, out.violations.to_string()
    return out.normalised["patients"].set_index("row")


@pytest.mark.parametrize("case", range(len(ANTIBODY_FLAGS)), ids=[str(a) for a, _ in ANTIBODY_FLAGS])
def test_antibody_flags(flagged, measures, case):
    flags = ANTIBODY_FLAGS[case][1]
    on = {f for f in measures.antibody_flags if flagged.loc[2 + case, f]}
    assert on == flags


def test_reject_patients_drops_every_row_of_a_patient_with_an_error(vocabulary, measures):
    tables = valid_tables()
    tables["assessments"].loc[4, "value"] = "3.5"  # P1
    v = validate(tables, vocabulary, measures, TODAY)
    kept, rejected = reject_patients(normalise(tables, vocabulary, measures, TODAY), v)
    assert list(rejected) == ["P1"]
    for name in CONTRACT_TABLES:
        assert set(kept[name]["patient_id"]) == {"P2"}
    # the library alone never drops P1's valid rows
    assert "P1" in set(normalise(tables, vocabulary, measures, TODAY)["regimens"]["patient_id"])


def test_warnings_do_not_reject_a_patient(vocabulary, measures):
    tables = valid_tables()
    tables["regimens"].loc[1, "start_date"] = "2020-06-01"
    result = check(tables, vocabulary, measures, TODAY)
    assert len(result.warnings) == 1 and result.rejected_patients.empty
    result.raise_for_errors()  # nothing to raise


def test_check_raises_with_table_row_column_and_rule(vocabulary, measures):
    tables = valid_tables()
    tables["regimens"].loc[2, "drug"] = "Foo"
    result = check(tables, vocabulary, measures, TODAY)
    assert list(result.rejected_patients) == ["P2"]
    assert set(result.normalised["regimens"]["patient_id"]) == {"P1"}
    with pytest.raises(ContractError, match=re.escape("regimens row 2 (patient P2), column drug [unknown_drug]")):
        result.raise_for_errors()


def test_a_missing_required_column_empties_that_table_and_rejects_every_patient(vocabulary, measures):
    tables = valid_tables()
    tables["regimens"] = tables["regimens"].drop(columns=["dose", "route"])
    out = check(tables, vocabulary, measures, TODAY)
    assert _found(out.violations) == {("regimens", None, "dose", "missing_column", E),
                                      ("regimens", None, "route", "missing_column", E)}
    assert out.normalised["regimens"].empty and list(out.normalised["regimens"].columns)[:3] == [
        "patient_id", "row", "drug"]
    # no patient is used without their regimens: all are rejected, and counted
    assert out.broken_tables == {"regimens"} and list(out.rejected_patients) == ["P1", "P2"]
    assert all(out.normalised[t].empty for t in CONTRACT_TABLES)
    # the library alone keeps the other tables' rows
    assert len(normalise(tables, vocabulary, measures, TODAY)["assessments"]) == 10


def test_optional_columns_may_be_absent(vocabulary, measures):
    tables = valid_tables()
    tables["events"] = tables["events"].drop(columns=["grade", "details"]).iloc[[1]]
    assert validate(tables, vocabulary, measures, TODAY).empty


def test_the_seed_case_validates_without_errors(vocabulary, measures):
    tables = read_contract_tables(SEED_DIR)
    result = check(tables, vocabulary, measures, TODAY)
    assert result.errors.empty, result.errors.to_string()
    # IVIG started in 2024, before the first recorded weight: a warning, the row kept without dose_mg
    assert _found(result.warnings) == {("regimens", 5, "dose_unit", "no_body_size", W)}
    # the finding names the drug as written, so the page's data check says which dose it is about
    assert result.warnings["message"].iloc[0].startswith(
        "IVIG (Privigen) dosed per kg from 2024-01-10: no weight measured on or before that start")
    r = result.normalised["regimens"].set_index("generic")
    assert r.loc["tocilizumab", "dose_mg"] == pytest.approx(8 * 70)  # weight 70 kg on 2026-05-19
    assert r.loc["mycophenolate", "daily_mg"] == pytest.approx(2000)
    assert r.loc["hydroxychloroquine", "daily_mg"] == pytest.approx(200)
    assert r.loc["rituximab", "doses_per_cycle"] == 2
    assert len(result.normalised["assessments"]) == len(tables["assessments"])
    assert result.normalised["patients"].loc[0, "anti_tif1g"]


def test_categorical_text_is_trimmed_like_plain_text(vocabulary, measures):
    """Found by a review: a categorical (Parquet dictionary) `patient_id` written ' P1 ' was not stripped as the
    same text is, so P1's regimens belonged to an unknown patient ' P1 ' and P1 was rejected."""
    tables = valid_tables()
    for name in ("patients", "regimens"):
        ids = tables[name]["patient_id"].where(tables[name]["patient_id"] != "P1", " P1 ")
        tables[name] = tables[name].assign(patient_id=ids.astype("category"))
    tables["patients"]["sex"] = tables["patients"]["sex"].astype("category")
    result = check(tables, vocabulary, measures, TODAY)
    plain = check(valid_tables(), vocabulary, measures, TODAY)
    assert result.violations.empty
    for name in CONTRACT_TABLES:
        pd.testing.assert_frame_equal(result.normalised[name], plain.normalised[name], check_dtype=False)


def test_parquet_with_its_own_types_normalises_like_csv(vocabulary, measures, tmp_path: Path):
    csv = read_contract_tables(SEED_DIR)
    typed = {
        "patients": csv["patients"].assign(birth_year=lambda d: d["birth_year"].astype(int),
                                           diagnosis_date=lambda d: pd.to_datetime(d["diagnosis_date"]),
                                           ild=False, cancer_associated=False),
        "regimens": csv["regimens"].assign(dose=lambda d: d["dose"].astype(float),
                                           start_date=lambda d: pd.to_datetime(d["start_date"]),
                                           end_date=lambda d: pd.to_datetime(d["end_date"])),
        "assessments": csv["assessments"].assign(date=lambda d: pd.to_datetime(d["date"]),
                                                 value=lambda d: d["value"].astype(float),
                                                 upper_limit_normal=lambda d: d["upper_limit_normal"].astype(float)),
    }
    for name, df in typed.items():
        write_parquet(df, tmp_path / f"{name}.parquet")
    (tmp_path / "regimens.csv").write_text("not read: parquet is preferred\n")
    from_parquet = read_contract_tables(tmp_path)
    assert from_parquet["events"].empty  # events may be absent
    a = check(from_parquet, vocabulary, measures, TODAY)
    b = check({**csv, "events": from_parquet["events"]}, vocabulary, measures, TODAY)
    assert a.errors.empty
    for name in CONTRACT_TABLES:
        pd.testing.assert_frame_equal(a.normalised[name], b.normalised[name], check_dtype=False)


def _seed_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    for f in SEED_DIR.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


UNREADABLE = {
    "semicolons and a BOM": (lambda b: b"\xef\xbb\xbf" + b.replace(b",", b";"), "patients.csv",
                             ["separated by ';' (semicolon), not commas", "decimal"]),
    "tabs": (lambda b: b.replace(b",", b"\t"), "patients.csv", ["separated by tabs, not commas"]),
    "latin-1": (lambda b: b.decode().replace("adult_dermatomyositis", "dermatomyosité").encode("latin-1"),
                "patients.csv", ["not UTF-8: byte 0xE9 on line 2", "Latin-1", "'é'"]),
    "UTF-16": (lambda b: b.decode().encode("utf-16"), "patients.csv", ["UTF-16", "CSV UTF-8"]),
    "empty": (lambda b: b"", "patients.csv", ["the file is empty"]),
    "ragged rows": (lambda b: b + b"SEED-0002,F,1970,DM,2020-01-01,,false,false,extra,cells\n", "patients.csv",
                    ["not a well-formed CSV", "must be quoted"]),
    "a column twice": (lambda b: b.replace(b"cancer_associated", b"cancer_associated,ild", 1), "patients.csv",
                       ["['ild'] appear more than once", "duplicate_column"]),
}


@pytest.mark.parametrize("name", UNREADABLE, ids=UNREADABLE)
def test_an_unreadable_csv_names_the_file_and_the_likely_cause(tmp_path, name):
    from pipeline.io import TableReadError, load_contract_tables

    damage, file, expected = UNREADABLE[name]
    folder = _seed_copy(tmp_path)
    (folder / file).write_bytes(damage((folder / file).read_bytes()))
    with pytest.raises(TableReadError) as err:
        read_contract_tables(folder)
    assert str(folder / file) in str(err.value)
    for text in expected:
        assert text in str(err.value), str(err.value)
    tables, unreadable = load_contract_tables(folder)
    assert set(unreadable) == {"patients"} and set(tables) == {"regimens", "assessments", "events"}
    # every message ends with the rule broken, the narrower one where there is one
    rule = "duplicate_column" if name == "a column twice" else "unreadable_table"
    assert unreadable["patients"].rule == rule and str(err.value).endswith(f"(rule: {rule})")


def test_a_utf8_bom_is_stripped_silently(tmp_path):
    folder = _seed_copy(tmp_path)
    (folder / "patients.csv").write_bytes(b"\xef\xbb\xbf" + (folder / "patients.csv").read_bytes())
    assert list(read_contract_tables(folder)["patients"].columns)[0] == "patient_id"


def test_a_truncated_or_fake_parquet_file_is_named(tmp_path):
    from pipeline.io import TableReadError

    folder = _seed_copy(tmp_path)
    write_parquet(read_contract_tables(SEED_DIR)["regimens"], folder / "regimens.parquet")
    whole = (folder / "regimens.parquet").read_bytes()
    (folder / "regimens.parquet").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TableReadError, match="regimens.parquet: truncated Parquet file, the footer is missing"):
        read_contract_tables(folder)
    (folder / "regimens.parquet").write_bytes((folder / "regimens.csv").read_bytes())
    with pytest.raises(TableReadError, match=r"not a Parquet file.*a CSV named \.parquet\?"):
        read_contract_tables(folder)


def test_every_unreadable_file_is_named_at_once(tmp_path):
    from pipeline.io import TableReadError

    folder = _seed_copy(tmp_path)
    for name in ("patients.csv", "events.csv"):
        (folder / name).write_bytes((folder / name).read_bytes().replace(b",", b";"))
    with pytest.raises(TableReadError) as err:
        read_contract_tables(folder)
    assert "patients.csv" in str(err.value) and "events.csv" in str(err.value)


def test_every_table_must_be_given(vocabulary, measures):
    tables = valid_tables()
    del tables["assessments"]
    with pytest.raises(KeyError, match="assessments"):
        validate(tables, vocabulary, measures, TODAY)


def test_the_documented_contract_names_every_column_and_rule():
    doc = (ROOT / "docs" / "data-contract.md").read_text(encoding="utf-8")
    for table, specs in CONTRACT_COLUMNS.items():
        assert f"`{table}`" in doc
        for spec in specs:
            assert f"`{spec.name}`" in doc, spec.name
    rules = {r for case in BROKEN.values() for (_, _, _, r, _) in case[1]} | {"unreadable_table", "check_skipped"}
    for rule in rules:
        assert f"`{rule}`" in doc, rule


# --- order never matters -----------------------------------------------------------------------------------------
def _flawed_tables() -> dict[str, pd.DataFrame]:
    """Valid tables plus flawed rows and same-day duplicates, so dropping and tie-breaking are exercised too."""
    t = valid_tables()
    t["regimens"].loc[2, "interval"] = "whenever"
    t["assessments"].loc[10] = ["P1", "2020-12-01", "weight", "74", "kg", ""]  # same day as row 0
    t["assessments"].loc[11] = ["P2", "2022-03-15", "haq", "9", "score_0_3", ""]
    t["assessments"].loc[12] = ["P9", "2022-03-15", "haq", "1", "score_0_3", ""]
    t["events"].loc[2] = ["P1", "2021-07-01", "cytopenia", "", ""]
    return t


def _permute(t: dict[str, pd.DataFrame], perms: dict[str, list[int]]) -> dict[str, pd.DataFrame]:
    return {k: t[k].iloc[perms[k]].reset_index(drop=True) for k in t}


def _in_original_rows(out: dict[str, pd.DataFrame], perms: dict[str, list[int]]) -> dict[str, pd.DataFrame]:
    """Map each `row` back to the unpermuted input, then sort by every column."""
    mapped = {}
    for k, df in out.items():
        df = df.assign(row=np.asarray(perms[k], dtype="int64")[df["row"].to_numpy()])
        mapped[k] = df.sort_values("row").reset_index(drop=True)
    return mapped


_BASE = _flawed_tables()


@pytest.fixture(scope="module")
def expected_normalised(vocabulary, measures) -> dict[str, pd.DataFrame]:
    identity = {k: list(range(len(df))) for k, df in _BASE.items()}
    return _in_original_rows(normalise(_BASE, vocabulary, measures, TODAY), identity)


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_row_order_never_changes_the_normalised_output(vocabulary, measures, expected_normalised, data):
    perms = {k: data.draw(st.permutations(list(range(len(df)))), label=k) for k, df in _BASE.items()}
    expected = expected_normalised
    got = _in_original_rows(normalise(_permute(_BASE, perms), vocabulary, measures, TODAY), perms)
    for k in CONTRACT_TABLES:
        pd.testing.assert_frame_equal(got[k], expected[k])
    # the P1 IVIG dose uses the mean of the two weights recorded on 2020-12-01, whatever their order
    r = got["regimens"].set_index("row")
    assert r.loc[1, "dose_mg"] == pytest.approx(2000 * 72)


def test_score_refuses_an_unreadable_or_misspelt_table_before_any_work(tmp_path):
    from pipeline.score import ScoreRefusal, check_structure, table_paths

    folder = _seed_copy(tmp_path)
    regimens = pd.read_csv(folder / "regimens.csv", dtype=str, keep_default_na=False)
    regimens.rename(columns={"patient_id": "patinet_id"}).to_csv(folder / "regimens.csv", index=False)
    with pytest.raises(ScoreRefusal, match=r"\['patient_id'\] missing.*did you mean 'patinet_id' for 'patient_id'"):
        check_structure(table_paths(folder))
    (folder / "regimens.csv").write_bytes(b"\xef\xbb\xbf" + regimens.to_csv(index=False, sep=";").encode())
    with pytest.raises(ScoreRefusal, match=r"regimens\.csv: fields are separated by ';' \(semicolon\)"):
        check_structure(table_paths(folder))


def test_a_date_is_the_day_as_written_whatever_its_time_or_offset_and_nothing_else():
    """A time part is dropped, offsets included (mixed offsets in one column once crashed the parser), so the day
    is the one written; compact or other spellings are unreadable, as the contract says (YYYY-MM-DD only)."""
    from features.contract import parse_dates

    written = pd.Series(["2026-01-01T10:00+14:00", "2026-01-02T23:30:05.1-05:00", "2026-01-03 10:00:00",
                         " 2026-01-04 ", "20260105", "2026-01-06 afternoon", "06/01/2026", None])
    days = [None if pd.isna(d) else str(d.date()) for d in parse_dates(written)]
    assert days == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", None, None, None, None]
