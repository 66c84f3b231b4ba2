"""OMOP CDM v5.4 as a source: a small hand-made CDM (created from the shipped CDM v5.4 DDL, with concept_ancestor and
drug_strength rows) imported through DuckDB, a folder of tables and SQLAlchemy; regimen merging, unit conversion,
the import report (unmapped records by table, concept and reason) and hostile values; the simulate → OMOP → import
round trip. PostgreSQL is tested only where ESCALATE_TEST_POSTGRES_URL names a server (the test does not exist
otherwise, so CI never skips it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from features.contract import MeasureCatalog, check, normalise
from features.omop import ImportResult, OmopMapping, import_omop, merge_exposures
from features.vocabulary import Vocabulary
from pipeline.config import load_reference
from pipeline.omop import (
    OmopSourceError,
    load_mapping,
    open_source,
    read_omop,
    run_import_omop,
    write_omop_database,
)

TODAY = "2026-11-01"
INJECTION = "x'); DROP TABLE person; --"
PRODUCT_PREDNISONE = 2_100_000_010  # a product below the prednisone ingredient in concept_ancestor
ILD_CHILD = 2_100_000_020  # an ILD subtype below 4119786


def _d(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


def fixture_tables() -> dict[str, pd.DataFrame]:
    """Four persons: 1 adult DM (ILD, cancer within 3 years, Jo-1), 2 JDM coded only by source value, 3 diabetes only
    (not in the cohort), 4 DM with an unmapped gender; hostile values throughout."""
    person = pd.DataFrame({"person_id": [1, 2, 3, 4], "gender_concept_id": [8532, 8507, 8532, 0],
                           "year_of_birth": [1970, 2012, 1960, 1980], "race_concept_id": 0,
                           "ethnicity_concept_id": 0, "person_source_value": ["A-1", "A-2", "A-3", INJECTION[:50]]})
    period = pd.DataFrame({"observation_period_id": [1, 2, 3, 4], "person_id": [1, 2, 3, 4],
                           "observation_period_start_date": [_d("2019-01-01")] * 4,
                           "observation_period_end_date": [_d(TODAY)] * 4, "period_type_concept_id": 32817})
    cond = pd.DataFrame([
        (1, 1, 80182, _d("2020-01-10"), None), (2, 1, ILD_CHILD, _d("2020-02-01"), None),
        (3, 1, 443392, _d("2021-06-01"), None), (4, 2, 0, _d("2023-05-05"), "  jdm "),
        (5, 3, 201826, _d("2020-01-01"), INJECTION), (6, 4, 80182, _d("2022-03-03"), None),
        (7, 1, 999999001, _d("2020-05-05"), None)],
        columns=["condition_occurrence_id", "person_id", "condition_concept_id", "condition_start_date",
                 "condition_source_value"]).assign(condition_type_concept_id=32817)
    drug_rows = [
        # person, concept, start, end, quantity, days_supply, sig, route, dose unit
        (1, PRODUCT_PREDNISONE, "2020-02-01", "2020-03-01", 60, 30, None, 4132161, None),   # 5 mg tablets → 10 mg/day
        (1, PRODUCT_PREDNISONE, "2020-03-10", "2020-04-08", 60, 30, None, 4132161, None),   # refill 9 days later
        (1, PRODUCT_PREDNISONE, "2020-04-09", "2020-05-08", 30, 30, None, 4132161, None),   # new dose 5 mg/day
        (1, 1314273, "2021-01-01", "2021-01-01", 1000, None, "days 1 and 15, every 6 months", 4171047, "mg"),
        (1, 1305058, "2021-02-01", "2021-05-01", -15, None, "weekly", 4132161, "mg"),      # negative quantity
        (1, 1777087, "2021-03-01", "2021-02-01", 200, None, "daily", 4132161, "mg"),       # dates out of order
        (1, 123456789, "2021-03-01", "2021-04-01", 10, 30, None, 4132161, None),           # unknown concept
        (3, 1551099, "2020-01-01", "2020-02-01", 5, None, "daily", 4132161, "mg"),         # not in the cohort
        (2, 1186087, "2023-06-01", TODAY, 125, None, "weekly", 4142048, "mg"),             # ongoing
    ]
    drug = pd.DataFrame(drug_rows, columns=["person_id", "drug_concept_id", "drug_exposure_start_date",
                                            "drug_exposure_end_date", "quantity", "days_supply", "sig",
                                            "route_concept_id", "dose_unit_source_value"])
    drug["drug_exposure_start_date"] = pd.to_datetime(drug["drug_exposure_start_date"])
    drug["drug_exposure_end_date"] = pd.to_datetime(drug["drug_exposure_end_date"])
    drug.insert(0, "drug_exposure_id", range(1, len(drug) + 1))
    drug["drug_type_concept_id"] = 32838
    meas_rows = [
        # person, concept, date, value, value concept, unit concept, range_high, source value, unit source, value text
        (1, 3007220, "2020-01-10", 1200.0, None, 8645, 200.0, None, None, None),          # CK U/L
        (1, 3016723, "2020-01-10", 1.2, None, 8840, None, None, None, None),              # creatinine mg/dL
        (1, 3000963, "2020-01-10", 120.0, None, None, None, None, "g/L", None),           # Hb g/L by source unit
        (1, 3025315, "2020-01-10", 70.0, None, 9529, None, None, None, None),             # weight kg
        (1, 3013721, "2020-01-11", None, None, 8645, 40.0, None, None, None),             # AST without a value
        (1, 3000000, "2020-01-10", 5.0, None, 8645, None, None, None, None),              # unmapped lab
        (1, 40759850, "2020-01-10", None, 9191, None, None, None, None, None),            # Jo-1 positive
        (1, 42529582, "2020-01-10", None, None, None, None, None, None, "Negative"),      # MDA5 negative (text)
        (1, 40766285, "2020-01-10", None, 4_000_999, None, None, None, None, "equivocal"),  # unreadable
        (2, 42529582, "2023-05-05", None, 9189, None, None, None, None, None),            # MDA5 negative
        (3, 3007220, "2020-01-10", 99.0, None, 8645, 200.0, None, None, None),            # not in the cohort
    ]
    meas = pd.DataFrame(meas_rows, columns=["person_id", "measurement_concept_id", "measurement_date",
                                            "value_as_number", "value_as_concept_id", "unit_concept_id",
                                            "range_high", "measurement_source_value", "unit_source_value",
                                            "value_source_value"])
    meas["measurement_date"] = pd.to_datetime(meas["measurement_date"])
    meas.insert(0, "measurement_id", range(1, len(meas) + 1))
    meas["measurement_type_concept_id"] = 32817
    obs_rows = [
        (1, 0, "2020-01-10", 4.5, None, "Physician Global Activity", "cm"),
        (1, 0, "2020-01-10", 70.0, None, "MMT-8", "score_0_80"),
        (1, 0, "2020-01-10", 0.5, None, "HAQ-DI", None),                  # default unit
        (1, 0, "2021-07-01", None, "urinary sepsis", "serious infection", None),
        (1, 0, "2021-07-02", 3.0, "neutropenia", "cytopenia", None),
        (1, 0, "2021-07-03", 1.0, None, "smoking status", None),          # unmapped, reported by source value
    ]
    obs = pd.DataFrame(obs_rows, columns=["person_id", "observation_concept_id", "observation_date",
                                          "value_as_number", "value_as_string", "observation_source_value",
                                          "unit_source_value"])
    obs["observation_date"] = pd.to_datetime(obs["observation_date"])
    obs.insert(0, "observation_id", range(1, len(obs) + 1))
    obs["observation_type_concept_id"] = 32817
    ancestor = pd.DataFrame({"ancestor_concept_id": [1551099, 1551099, 4119786, 4119786],
                             "descendant_concept_id": [1551099, PRODUCT_PREDNISONE, 4119786, ILD_CHILD],
                             "min_levels_of_separation": [0, 1, 0, 1], "max_levels_of_separation": [0, 1, 0, 1]})
    strength = pd.DataFrame({"drug_concept_id": [PRODUCT_PREDNISONE], "ingredient_concept_id": [1551099],
                             "amount_value": [5.0], "amount_unit_concept_id": [8576],
                             "valid_start_date": [_d("2000-01-01")], "valid_end_date": [_d("2099-12-31")]})
    concept = pd.DataFrame({"concept_id": [1551099, PRODUCT_PREDNISONE],
                            "concept_name": ["prednisone", "prednisone 5 MG Oral Tablet"],
                            "domain_id": "Drug", "vocabulary_id": "RxNorm", "concept_class_id": ["Ingredient",
                                                                                                 "Clinical Drug"],
                            "standard_concept": "S", "concept_code": ["8640", "x"],
                            "valid_start_date": _d("2000-01-01"), "valid_end_date": _d("2099-12-31")})
    return {"person": person, "observation_period": period, "condition_occurrence": cond, "drug_exposure": drug,
            "measurement": meas, "observation": obs, "concept": concept, "concept_ancestor": ancestor,
            "drug_strength": strength}


@pytest.fixture(scope="module")
def cdm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture as a DuckDB OMOP CDM created from the shipped v5.4 DDL."""
    path = tmp_path_factory.mktemp("omop") / "cdm.duckdb"
    write_omop_database(fixture_tables(), path)
    return path


@pytest.fixture(scope="module")
def imported(cdm: Path, tmp_path_factory: pytest.TempPathFactory) -> ImportResult:
    return run_import_omop(str(cdm), tmp_path_factory.mktemp("imported"), gap_days=30)


def _reasons(report: pd.DataFrame) -> dict[tuple[str, int, str], int]:
    return {(r.table, int(r.concept_id), r.reason): int(r.records) for r in report.itertuples()}


def _contract() -> tuple[Vocabulary, MeasureCatalog]:
    return (Vocabulary.from_config(load_reference("drugs")), MeasureCatalog.from_config(load_reference("measures")))


def test_ddl_is_the_cdm_54_tables(cdm: Path) -> None:
    """The database has the CDM v5.4 columns a real instance has, e.g. drug_exposure's 23 in the official order."""
    con = duckdb.connect(str(cdm), read_only=True)
    cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = "
                                      "'drug_exposure' ORDER BY ordinal_position").fetchall()]
    con.close()
    assert len(cols) == 23 and cols[:3] == ["drug_exposure_id", "person_id", "drug_concept_id"]
    assert cols[-1] == "dose_unit_source_value"


def test_cohort_diagnoses_and_flags(imported: ImportResult) -> None:
    p = imported.tables["patients"].set_index("patient_id")
    assert list(p.index) == ["1", "2", "4"]  # person 3 has no myositis diagnosis
    assert p.loc["1", "diagnosis"] == "adult_dermatomyositis" and p.loc["1", "sex"] == "F"
    assert p.loc["1", "diagnosis_date"] == _d("2020-01-10")
    assert bool(p.loc["1", "ild"]) and bool(p.loc["1", "cancer_associated"])  # ILD by descendant; cancer in 3 y
    assert p.loc["2", "diagnosis"] == "juvenile_dermatomyositis"  # source value '  jdm ', case and blanks ignored
    assert not p.loc["2", "ild"] and not p.loc["2", "cancer_associated"]
    assert p.loc["1", "antibodies"] == "anti-Jo-1" and p.loc["2", "antibodies"] == "negative"
    assert pd.isna(p.loc["4", "antibodies"]) and pd.isna(p.loc["4", "sex"])  # untested; unmapped gender


def test_regimens_dosed_and_merged(imported: ImportResult) -> None:
    r = imported.tables["regimens"]
    pred = r[(r["patient_id"] == "1") & (r["drug"] == "prednisone")].sort_values("start_date")
    # two 10 mg/day fills 9 days apart merge into one regimen; the 5 mg/day fill is a new one
    assert pred[["dose", "dose_unit", "interval"]].values.tolist() == [[10.0, "mg", "daily"], [5.0, "mg", "daily"]]
    assert pred["start_date"].tolist() == [_d("2020-02-01"), _d("2020-04-09")]
    assert pred["end_date"].tolist() == [_d("2020-04-08"), _d("2020-05-08")]
    rtx = r[r["drug"] == "rituximab"].iloc[0]
    assert (rtx["dose"], rtx["dose_unit"], rtx["route"], rtx["interval"]) == (1000.0, "mg", "intravenous",
                                                                              "days 1 and 15, every 6 months")
    mtx = r[r["drug"] == "methotrexate"].iloc[0]
    assert np.isnan(mtx["dose"]) and mtx["interval"] is None or pd.isna(mtx["interval"])  # never guessed
    aba = r[r["patient_id"] == "2"].iloc[0]
    assert aba["drug"] == "abatacept" and pd.isna(aba["end_date"])  # runs to the end of observation: ongoing
    assert "3" not in set(r["patient_id"])


def test_import_report_counts_every_unmapped_record(imported: ImportResult, cdm: Path) -> None:
    got = _reasons(imported.report)
    assert got[("drug_exposure", 123456789, "unmapped_concept")] == 1
    assert got[("drug_exposure", 1305058, "negative_quantity")] == 1
    assert got[("drug_exposure", 1305058, "no_dose")] == 1
    assert got[("drug_exposure", 1777087, "end_before_start")] == 1
    assert got[("measurement", 3000000, "unmapped_concept")] == 1
    assert got[("measurement", 3013721, "no_value_or_date")] == 1
    assert got[("measurement", 40766285, "unreadable_antibody_result")] == 1
    assert got[("condition_occurrence", 999999001, "unmapped_concept")] == 1
    assert got[("person", 0, "unmapped_gender")] == 1
    smoking = imported.report[imported.report["source_value"] == "smoking status"]
    assert smoking["reason"].tolist() == ["unmapped_concept"]  # concept 0: the source value names it
    # persons outside the cohort are not read: their records are neither imported nor reported
    assert not any(t == "drug_exposure" and c == 1551099 for t, c, _ in got)


def test_report_file_and_contract_validation(imported: ImportResult, tmp_path: Path, cdm: Path) -> None:
    out = tmp_path / "imp"
    run_import_omop(str(cdm), out, gap_days=30)
    report = json.loads((out / "import_report.json").read_text())
    assert report["persons_in_source"] == 4 and report["persons_imported"] == 3
    assert report["vocabulary"] == {"concept_ancestor": True, "drug_strength": True}
    named = {(r["target"], r["concept_id"]): r["concept_name"] for r in report["mapped_concepts"]}
    assert named[("prednisone", 1551099)] == "prednisone"  # the site checks each id by its name
    assert named[("rituximab", 1314273)] is None  # not in this source's concept table
    assert sum(r["records"] for r in report["records"]) == int(imported.report["records"].sum())
    vocabulary, measures = _contract()
    tables = {name: pd.read_parquet(out / f"{name}.parquet") for name in ("patients", "regimens", "assessments",
                                                                         "events")}
    result = check(tables, vocabulary, measures, TODAY)
    rules = set(zip(result.violations["table"], result.violations["rule"], strict=True))
    assert ("regimens", "end_before_start") in rules and ("regimens", "required") in rules
    assert ("patients", "required") in rules  # person 4's gender: the contract rejects, nothing is guessed
    assert "1" in set(result.rejected_patients)  # its bad regimens reject it whole, as for any contract export
    rows = normalise(tables, vocabulary, measures, TODAY)  # the rows free of errors
    a = rows["assessments"].set_index("measure")
    assert a.loc["creatinine", "value"] == pytest.approx(1.2 * 88.4)  # mg/dL → umol/L
    assert a.loc["haemoglobin", "value"] == pytest.approx(12.0)  # g/L → g/dL
    assert a.loc["ck", "upper_limit_normal"] == 200.0 and a.loc["haq", "unit"] == "score_0_3"
    e = rows["events"]
    assert e["event"].tolist() == ["serious_infection", "cytopenia"] and e["grade"].tolist()[1] == 3


def test_merge_exposures_gap_rule() -> None:
    """Same drug, dose, unit, route and schedule merge when under `gap_days` apart; a new dose ends the last one."""
    def row(start: str, end: str, dose: float = 10.0) -> dict[str, object]:
        return {"pid": 1, "drug": "prednisone", "dose": dose, "dose_unit": "mg", "route": "oral",
                "interval": "daily", "start_date": _d(start), "end_date": _d(end), "order_ok": True}

    rows = pd.DataFrame([row("2020-01-01", "2020-01-30"), row("2020-02-28", "2020-03-28"),
                         row("2020-05-01", "2020-05-30"), row("2020-05-20", "2020-06-30", dose=20.0)])
    out = merge_exposures(rows, gap_days=30)
    assert out[["start_date", "end_date", "dose"]].values.tolist() == [
        [_d("2020-01-01"), _d("2020-03-28"), 10.0],   # 29 days apart: merged
        [_d("2020-05-01"), _d("2020-05-19"), 10.0],   # 34 days after: new; ends the day before the new dose
        [_d("2020-05-20"), _d("2020-06-30"), 20.0]]
    assert len(merge_exposures(rows, gap_days=10)) == 4


def test_hostile_source_values_are_bound_not_executed(cdm: Path, tmp_path: Path) -> None:
    """A mapping whose source values are SQL is matched as text; the database is untouched."""
    mapping = load_mapping()
    dx = mapping.diagnoses[0].model_copy(update={"source_values": (INJECTION,)})
    hostile = mapping.model_copy(update={"diagnoses": (dx, *mapping.diagnoses[1:])})
    with open_source(str(cdm)) as src:
        omop = read_omop(src, hostile)
    assert 3 in set(omop["person"]["person_id"])  # person 3's condition source value is that text
    con = duckdb.connect(str(cdm), read_only=True)
    assert con.execute("SELECT count(*) FROM person").fetchone()[0] == 4
    con.close()
    with pytest.raises(OmopSourceError, match="not a plain SQL identifier"), \
            open_source(str(cdm), schema="main; DROP TABLE person"):
        pass


def test_folder_and_sqlalchemy_sources_read_the_same(cdm: Path, imported: ImportResult, tmp_path: Path) -> None:
    tables = fixture_tables()
    folder = tmp_path / "tables"
    folder.mkdir()
    for i, (name, frame) in enumerate(tables.items()):
        (frame.to_parquet(folder / f"{name}.parquet", index=False) if i % 2 else
         frame.to_csv(folder / f"{name}.csv", index=False))
    sqlite = tmp_path / "cdm.sqlite"
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{sqlite}")
    for name, frame in tables.items():
        frame.to_sql(name, engine, index=False)
    engine.dispose()
    for source in (str(folder), f"sqlite:///{sqlite}"):
        got = run_import_omop(source, tmp_path / "out", gap_days=30)
        for name, frame in imported.tables.items():
            pd.testing.assert_frame_equal(got.tables[name].astype(str), frame.astype(str), obj=f"{source} {name}")
        pd.testing.assert_frame_equal(got.report, imported.report)


def test_missing_table_and_bad_mapping_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    with pytest.raises(OmopSourceError, match="no person or condition_occurrence table"):
        run_import_omop(str(empty), tmp_path / "o")
    bad = tmp_path / "omop.yaml"
    raw = load_reference("omop")
    bad.write_text(json.dumps({**raw, "drugs": [{"drug": "ritoximab", "concept_ids": [1]}]}))
    with pytest.raises(OmopSourceError, match="'ritoximab' is not a drug"):
        load_mapping(bad)


def _contiguous_merged(regimens: pd.DataFrame) -> pd.DataFrame:
    """Normalised regimens with back-to-back rows of one drug at one dose and schedule as one row: the import's
    gap rule merges them (the same dose on every day), so the round trip compares them merged on both sides."""
    key = ["patient_id", "generic", "route", "dose", "dose_unit", "interval"]
    r = regimens.drop(columns=["row", "drug"], errors="ignore").sort_values([*key, "start_date"]).reset_index(drop=True)
    same = (r[key].astype(str) == r[key].astype(str).shift()).all(axis=1)
    touching = r["start_date"] <= r["end_date"].shift() + pd.Timedelta(days=1)
    block = (~(same & touching)).cumsum()
    ends = r.groupby(block)["end_date"].agg(lambda e: pd.NaT if e.isna().any() else e.max())
    out = r.groupby(block).first()
    out["end_date"] = ends.astype("datetime64[ns]")
    return out.reset_index(drop=True)


def test_round_trip_simulate_omop_import(tmp_path: Path) -> None:
    """simulate → OMOP (DuckDB) → import gives the same contract tables, once normalised by the contract (the drug
    as written becomes the mapped ingredient name; back-to-back rows at one dose are one regimen)."""
    from pipeline.omop import write_cohort_omop
    from pipeline.simulate import build_inputs
    from simulator.engine import simulate_cohort

    config, vocabulary, catalog = build_inputs()
    cohort = simulate_cohort(40, 11, config, vocabulary, catalog, TODAY, "observational", None)
    write_cohort_omop(cohort, tmp_path, TODAY)
    mapping = load_mapping().model_copy(update={"patient_id": "person_source_value"})
    with open_source(str(tmp_path / "cdm.duckdb")) as src:
        omop = read_omop(src, mapping)
    omop.pop("person_total")
    result = import_omop(omop, mapping, gap_days=30)
    assert result.report.empty
    measures = MeasureCatalog.from_config(load_reference("measures"))
    original = {name: getattr(cohort, name) for name in ("patients", "regimens", "assessments", "events")}
    a, b = check(original, vocabulary, measures, TODAY), check(result.tables, vocabulary, measures, TODAY)
    assert len(b.violations) == len(a.violations) == 0
    for name, sort in (("patients", ["patient_id"]), ("regimens", ["patient_id", "generic", "route", "start_date"]),
                       ("assessments", ["patient_id", "date", "measure", "value"]),
                       ("events", ["patient_id", "date", "event"])):
        x, y = a.normalised[name], b.normalised[name]
        if name == "regimens":
            x, y = _contiguous_merged(x), _contiguous_merged(y)
            # a row ending on the observation period's last day (today) is imported as ongoing (docs/omop.md):
            # running on every day up to today either way
            x["end_date"] = x["end_date"].mask(x["end_date"] >= pd.Timestamp(TODAY))
        x = x.drop(columns=["row", "drug"], errors="ignore").sort_values(sort).reset_index(drop=True)
        y = y.drop(columns=["row", "drug"], errors="ignore").sort_values(sort).reset_index(drop=True)
        pd.testing.assert_frame_equal(x, y, check_dtype=False, atol=1e-3, obj=name)


def test_cli_import_and_simulate_format_omop(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    sim = subprocess.run([sys.executable, "-m", "pipeline.cli", "simulate", "--format", "omop", "--patients", "8",
                          "--seed", "2", "--out", str(tmp_path / "sim")], capture_output=True, text=True, env=env)
    assert sim.returncode == 0, sim.stderr
    assert (tmp_path / "sim" / "cdm.duckdb").exists() and not (tmp_path / "sim" / "patients.parquet").exists()
    imp = subprocess.run([sys.executable, "-m", "pipeline.cli", "import", "omop", "--source",
                          str(tmp_path / "sim" / "cdm.duckdb"), "--out", str(tmp_path / "imp")],
                         capture_output=True, text=True, env=env)
    assert imp.returncode == 0, imp.stderr
    assert "imported 8 of 8 persons" in imp.stdout
    assert len(pd.read_parquet(tmp_path / "imp" / "patients.parquet")) == 8
    again = subprocess.run(imp.args, capture_output=True, text=True, env=env)  # an earlier import is replaced
    assert again.returncode == 0, again.stderr
    # a folder of the user's own tables (here: the simulated cohort's, with its database) is never written into:
    # the imported Parquet would shadow CSVs the contract reads after it (found by a walkthrough of the README)
    (tmp_path / "sim" / "patients.csv").write_text("patient_id\n")
    before = sorted(p.name for p in (tmp_path / "sim").iterdir())
    foreign = subprocess.run([*imp.args[:-1], str(tmp_path / "sim")], capture_output=True, text=True, env=env)
    assert foreign.returncode == 2 and "is not empty and holds no earlier import" in foreign.stderr
    assert sorted(p.name for p in (tmp_path / "sim").iterdir()) == before and "patients.parquet" not in before
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "import", "omop", "--source",
                          str(tmp_path / "nowhere.duckdb"), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no such file" in bad.stderr
    kind = subprocess.run([sys.executable, "-m", "pipeline.cli", "import", "fhir", "--source", "x", "--out",
                           str(tmp_path / "y")], capture_output=True, text=True, env=env)
    assert kind.returncode == 2 and "omop" in kind.stderr


if os.environ.get("ESCALATE_TEST_POSTGRES_URL"):  # defined only where a server is named: never a skip in CI
    def test_postgresql_source(imported: ImportResult, tmp_path: Path) -> None:
        """The fixture loaded into a fresh schema of the named PostgreSQL server imports like the DuckDB file."""
        import sqlalchemy as sa

        url = os.environ["ESCALATE_TEST_POSTGRES_URL"]
        schema = f"escalate_test_{os.getpid()}"
        engine = sa.create_engine(url)
        with engine.begin() as con:
            con.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        try:
            for name, frame in fixture_tables().items():
                frame.to_sql(name, engine, schema=schema, index=False)
            got = run_import_omop(url, tmp_path / "pg", schema=schema, gap_days=30)
            for name, frame in imported.tables.items():
                pd.testing.assert_frame_equal(got.tables[name].astype(str), frame.astype(str), obj=name)
        finally:
            with engine.begin() as con:
                con.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            engine.dispose()


def test_mapping_ships_valid() -> None:
    """configs/omop.yaml loads and every target is a name the contract accepts."""
    mapping = load_mapping()
    assert isinstance(mapping, OmopMapping)
    assert {d.diagnosis for d in mapping.diagnoses} == set(MeasureCatalog.from_config(
        load_reference("measures")).codes("diagnosis"))


def test_source_with_only_person_and_condition_tables(tmp_path: Path) -> None:
    """Optional tables (drugs, labs, vocabulary …) may be absent: the patients are still imported."""
    pd.DataFrame({"person_id": [1, 2], "gender_concept_id": [8532, 8507], "year_of_birth": [1970, 1980]}).to_csv(
        tmp_path / "person.csv", index=False)
    pd.DataFrame({"person_id": [1], "condition_concept_id": [80182], "condition_start_date": ["2020-01-01"]}).to_csv(
        tmp_path / "condition_occurrence.csv", index=False)
    result = run_import_omop(str(tmp_path), tmp_path / "out")
    assert result.tables["patients"][["patient_id", "diagnosis"]].values.tolist() == [["1", "adult_dermatomyositis"]]
    assert all(len(result.tables[t]) == 0 for t in ("regimens", "assessments", "events"))
    assert json.loads((tmp_path / "out" / "import_report.json").read_text())["vocabulary"] == {
        "concept_ancestor": False, "drug_strength": False}


def test_duckdb_schema_option(cdm: Path, imported: ImportResult, tmp_path: Path) -> None:
    """--schema reads the CDM from a named schema (sites keep vocabulary and CDM in their own schemas)."""
    db = tmp_path / "schemas.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA cdm")
    con.execute("ATTACH ? AS src (READ_ONLY)", [str(cdm)])
    for name in fixture_tables():
        con.execute(f"CREATE TABLE cdm.{name} AS SELECT * FROM src.main.{name}")
    con.close()
    got = run_import_omop(str(db), tmp_path / "out", schema="cdm", gap_days=30)
    pd.testing.assert_frame_equal(got.tables["regimens"], imported.tables["regimens"])
    with pytest.raises(OmopSourceError, match="no person or condition_occurrence table"):
        run_import_omop(str(db), tmp_path / "out2", gap_days=30)  # nothing in main


def _folder_of(tables: dict[str, pd.DataFrame], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, frame in tables.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


def test_bad_cells_are_counted_and_bad_tables_refused_never_a_traceback(tmp_path: Path) -> None:
    """Found by an adversarial probe: each of these once ended the import in a traceback or vanished unreported."""
    t = fixture_tables()
    t["person"] = pd.concat([t["person"], t["person"].iloc[[3]]], ignore_index=True)  # person 4 twice
    t["condition_occurrence"].loc[len(t["condition_occurrence"])] = (8, 77, 80182, _d("2021-01-01"), None, 32817)
    drug = t["drug_exposure"]
    first = drug.index[drug["person_id"] == 1][0]
    drug.loc[first, "drug_exposure_end_date"] = "2300-01-01"  # beyond the calendar: unreadable, then no end
    drug.loc[first, "days_supply"] = np.inf
    t["death"] = pd.DataFrame({"person_id": [1, 1], "death_date": [_d("2024-02-01"), _d("2024-01-01")],
                               "death_type_concept_id": 32817})
    obs = t["observation"]
    obs.loc[obs["observation_source_value"] == "cytopenia", "value_as_number"] = np.inf
    result = run_import_omop(str(_folder_of(t, tmp_path / "src")), tmp_path / "out")
    reasons = {(r.table, r.reason): int(r.records) for r in result.report.itertuples()}
    assert reasons[("person", "duplicate_person_id")] == 2  # neither copy used: which holds cannot be told
    assert reasons[("condition_occurrence", "person_not_in_person_table")] == 1  # person 77 is said, not dropped
    assert reasons[("drug_exposure", "unreadable_end_date")] == 1 and reasons[("drug_exposure", "no_end_date")] >= 1
    assert reasons[("death", "death_recorded_again")] == 1
    events = result.tables["events"]
    assert events.loc[events["event"] == "death", "date"].tolist() == [_d("2024-01-01")]  # the earliest
    assert events.loc[events["event"] == "cytopenia", "grade"].isna().all()  # an infinite grade is no grade
    assert "4" not in set(result.tables["patients"]["patient_id"])

    broken = fixture_tables()
    broken["person"] = broken["person"].drop(columns="year_of_birth")
    with pytest.raises(OmopSourceError, match=r"table person: required column\(s\) \['year_of_birth'\] missing"):
        run_import_omop(str(_folder_of(broken, tmp_path / "no_birth_year")), tmp_path / "o1")
    latin = _folder_of(fixture_tables(), tmp_path / "latin")
    (latin / "observation.csv").write_bytes((latin / "observation.csv").read_bytes().replace(b"neutropenia",
                                                                                            b"neutrop\xe9nie"))
    with pytest.raises(OmopSourceError, match=r"observation\.csv: cannot be read as the OMOP table observation"):
        run_import_omop(str(latin), tmp_path / "o2")


# ------------------------------------------------------------------ small extracts (found by a review helper)
PREDNISONE, METHOTREXATE, RITUXIMAB, HYDROXYCHLOROQUINE = 1551099, 1305058, 1314273, 1777087
ORAL, IV = 4132161, 4171047


def _small_cdm(drugs: list[tuple] = (), meas: list[tuple] = (), obs: list[tuple] = (), conds: list[tuple] = (),
               persons: list[tuple] | None = None, period_end: str = TODAY) -> dict[str, pd.DataFrame]:
    """A hand-built extract: person 1 (F, 1970) with dermatomyositis from 2020-01-10, observed 2019-01-01 to
    `period_end`, plus the given rows (drug: person, concept, start, end, quantity, days_supply, sig, route, dose
    unit; measurement: person, concept, date, value, value concept, unit concept, range_high, source value, unit
    source value, value source value; observation: person, concept, date, value, text, source value, unit concept,
    unit source value; condition: person, concept, start, source value)."""
    person = pd.DataFrame(persons or [(1, 8532, 1970)], columns=["person_id", "gender_concept_id", "year_of_birth"])
    person = person.assign(race_concept_id=0, ethnicity_concept_id=0)
    cond = pd.DataFrame([(1, 80182, "2020-01-10", None), *conds],
                        columns=["person_id", "condition_concept_id", "condition_start_date", "condition_source_value"])
    cond.insert(0, "condition_occurrence_id", range(1, len(cond) + 1))
    period = pd.DataFrame({"observation_period_id": range(1, len(person) + 1), "person_id": person["person_id"],
                           "observation_period_start_date": "2019-01-01", "observation_period_end_date": period_end})
    drug = pd.DataFrame(list(drugs), columns=["person_id", "drug_concept_id", "drug_exposure_start_date",
                                              "drug_exposure_end_date", "quantity", "days_supply", "sig",
                                              "route_concept_id", "dose_unit_source_value"])
    drug.insert(0, "drug_exposure_id", range(1, len(drug) + 1))
    m = pd.DataFrame(list(meas), columns=["person_id", "measurement_concept_id", "measurement_date",
                                          "value_as_number", "value_as_concept_id", "unit_concept_id", "range_high",
                                          "measurement_source_value", "unit_source_value", "value_source_value"])
    m.insert(0, "measurement_id", range(1, len(m) + 1))
    o = pd.DataFrame(list(obs), columns=["person_id", "observation_concept_id", "observation_date",
                                         "value_as_number", "value_as_string", "observation_source_value",
                                         "unit_concept_id", "unit_source_value"])
    o.insert(0, "observation_id", range(1, len(o) + 1))
    return {"person": person, "observation_period": period, "condition_occurrence": cond, "drug_exposure": drug,
            "measurement": m, "observation": o}


def _import_small(tmp_path: Path, **rows: object) -> ImportResult:
    """`_small_cdm(**rows)` as a folder of CSV files, imported as a user would."""
    return run_import_omop(str(_folder_of(_small_cdm(**rows), tmp_path / "src")), tmp_path / "out", gap_days=30)


def _regimen_rows(result: ImportResult) -> list[list[object]]:
    r = result.tables["regimens"]
    return [[row.drug, row.dose, str(row.start_date.date()),
             None if pd.isna(row.end_date) else str(row.end_date.date())] for row in r.itertuples()]


def test_a_dose_change_between_two_runs_of_one_dose_keeps_every_exposure(tmp_path: Path) -> None:
    """10 mg, then 20 mg, then 10 mg again of prednisone: three regimens, each with its recorded dates — the two
    10 mg runs are never merged across the 20 mg between them (which then cut the third exposure away)."""
    def pred(start: str, end: str, dose: int) -> tuple:
        return (1, PREDNISONE, start, end, dose, None, "daily", ORAL, "mg")

    got = _import_small(tmp_path / "a", drugs=[pred("2021-01-01", "2021-01-31", 10),
                                               pred("2021-02-01", "2021-02-14", 20),
                                               pred("2021-02-15", "2021-03-31", 10)])
    assert _regimen_rows(got) == [["prednisone", 10.0, "2021-01-01", "2021-01-31"],
                                  ["prednisone", 20.0, "2021-02-01", "2021-02-14"],
                                  ["prednisone", 10.0, "2021-02-15", "2021-03-31"]]
    # monthly 10 mg fills January to June with a 20 mg burst in March: April to June are still on 10 mg
    fills = [pred(s, e, 10) for s, e in [("2021-01-01", "2021-01-31"), ("2021-02-01", "2021-02-28"),
                                         ("2021-03-01", "2021-03-31"), ("2021-04-01", "2021-04-30"),
                                         ("2021-05-01", "2021-05-31"), ("2021-06-01", "2021-06-30")]]
    got = _import_small(tmp_path / "b", drugs=[*fills, pred("2021-03-10", "2021-03-20", 20)])
    assert _regimen_rows(got) == [["prednisone", 10.0, "2021-01-01", "2021-03-09"],  # the new dose ends it
                                  ["prednisone", 20.0, "2021-03-10", "2021-03-20"],
                                  ["prednisone", 10.0, "2021-04-01", "2021-06-30"]]
    # a single administration between two fills of one dose separates them in the same way
    rows = pd.DataFrame([{"pid": 1, "drug": "prednisone", "dose": dose, "dose_unit": "mg", "route": "oral",
                          "interval": interval, "start_date": _d(s), "end_date": _d(e), "order_ok": True}
                         for dose, interval, s, e in [(10.0, "daily", "2021-01-01", "2021-01-31"),
                                                      (50.0, "once", "2021-02-01", "2021-02-01"),
                                                      (10.0, "daily", "2021-02-02", "2021-02-28")]])
    assert merge_exposures(rows, gap_days=30)[["dose", "start_date", "end_date"]].values.tolist() == [
        [10.0, _d("2021-01-01"), _d("2021-01-31")], [50.0, _d("2021-02-01"), _d("2021-02-01")],
        [10.0, _d("2021-02-02"), _d("2021-02-28")]]


def test_an_exposure_after_the_observation_period_keeps_its_end_date(tmp_path: Path) -> None:
    """Only a regimen running at the end of the observation period is ongoing; one recorded after the period
    keeps its recorded end (never turned into 'still running') and is reported."""
    got = _import_small(tmp_path, period_end="2021-12-31", drugs=[
        (1, METHOTREXATE, "2022-01-10", "2022-02-10", 15, None, "weekly", ORAL, "mg"),     # after the period
        (1, RITUXIMAB, "2022-03-01", "2022-03-01", 1000, None, "once", IV, "mg"),          # after the period
        (1, HYDROXYCHLOROQUINE, "2021-06-01", "2022-06-30", 200, None, "daily", ORAL, "mg"),  # runs past its end
        (1, PREDNISONE, "2021-02-01", "2021-03-02", 10, None, "daily", ORAL, "mg")])       # ended within it
    assert _regimen_rows(got) == [["prednisone", 10.0, "2021-02-01", "2021-03-02"],
                                  ["hydroxychloroquine", 200.0, "2021-06-01", None],
                                  ["methotrexate", 15.0, "2022-01-10", "2022-02-10"],
                                  ["rituximab", 1000.0, "2022-03-01", "2022-03-01"]]
    after = got.report[got.report["reason"] == "after_observation_period"]
    assert dict(zip(after["concept_id"], after["records"], strict=True)) == {METHOTREXATE: 1, RITUXIMAB: 1}
    assert set(after["severity"]) == {"warning"}


def test_a_diagnosed_person_whose_id_is_not_an_integer_is_reported(tmp_path: Path) -> None:
    """person_id 'P2' (text in a CSV or a SQL table) with a dermatomyositis diagnosis cannot be imported: the
    report says so (condition_occurrence, non_integer_person_id) instead of the person silently going missing;
    ids that spell integers ('0004') are imported."""
    t = _small_cdm(persons=[(1, 8532, 1970), ("P2", 8507, 1980), ("0004", 8507, 1985)],
                   conds=[("P2", 80182, "2020-02-02", None), ("0004", 80182, "2020-03-03", None)])
    for name in ("person", "condition_occurrence", "observation_period"):
        t[name]["person_id"] = t[name]["person_id"].astype(str)
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cdm.sqlite'}")
    for name, frame in t.items():  # a text id is read as the number it spells in SQLite too ('0004' is 4)
        frame.to_sql(name, engine, index=False)
    engine.dispose()
    for source in (str(_folder_of(t, tmp_path / "csv")), f"sqlite:///{tmp_path / 'cdm.sqlite'}"):
        got = run_import_omop(source, tmp_path / "out", gap_days=30)
        assert got.tables["patients"]["patient_id"].tolist() == ["1", "4"], source
        bad = got.report[got.report["reason"] == "non_integer_person_id"]
        assert bad[["table", "concept_id", "severity", "records"]].values.tolist() == [
            ["condition_occurrence", 80182, "error", 1]], source


def test_a_number_in_a_date_column_is_an_unreadable_date(tmp_path: Path) -> None:
    """Dates exported as numbers (20210105) are unreadable dates, reported as such — never 1970-01-01."""
    t = _small_cdm(drugs=[(1, METHOTREXATE, "2021-01-05", "2021-02-03", 15, None, "weekly", ORAL, "mg")],
                   meas=[(1, 3007220, "2021-01-05", 900.0, None, 8645, 200.0, None, None, None)])
    for name, col in (("condition_occurrence", "condition_start_date"), ("drug_exposure", "drug_exposure_start_date"),
                      ("drug_exposure", "drug_exposure_end_date"), ("measurement", "measurement_date")):
        t[name][col] = pd.to_datetime(t[name][col]).dt.strftime("%Y%m%d").astype("int64")
    got = run_import_omop(str(_folder_of(t, tmp_path / "src")), tmp_path / "out", gap_days=30)
    dates = [got.tables["patients"]["diagnosis_date"], got.tables["regimens"]["start_date"],
             got.tables["assessments"]["date"]]
    assert not any((d.dt.year == 1970).any() for d in dates)
    reasons = {(r.table, r.reason): int(r.records) for r in got.report.itertuples()}
    assert reasons[("condition_occurrence", "unreadable_date")] == 1
    assert reasons[("drug_exposure", "unreadable_date")] == 1
    assert reasons[("measurement", "unreadable_date")] == 1
    assert got.tables["patients"]["diagnosis_date"].isna().all() and got.tables["regimens"].empty


def test_a_recorded_unit_the_mapping_lacks_is_reported_never_the_default(tmp_path: Path) -> None:
    """Physician global 5 in mm (unit concept 8588, not in `units:`) is never read as 5 cm, the measure's default
    unit: the row keeps an empty unit and the report names the measure's concept and the unit concept; a unit
    source value beside it is used as written."""
    got = _import_small(tmp_path, meas=[
        (1, 3025315, "2021-01-05", 154.0, None, 8739, None, None, None, None),     # weight in pounds (unmapped)
        (1, 3007220, "2021-01-06", 15.0, None, 8753, None, None, "ukat/L", None)],  # CK: unmapped, source unit
        obs=[(1, 0, "2021-07-01", 5.0, None, "physician global activity", 8588, None),   # mm, unmapped
             (1, 0, "2021-07-02", 0.5, None, "HAQ-DI", None, None)])                     # no unit: the default
    a = got.tables["assessments"].set_index("measure")
    assert pd.isna(a.loc["physician_global", "unit"]) and pd.isna(a.loc["weight", "unit"])
    assert a.loc["ck", "unit"] == "ukat/L" and a.loc["haq", "unit"] == "score_0_3"
    unit = got.report[got.report["reason"] == "unmapped_unit"]
    assert unit[["table", "concept_id", "source_value", "unit_concept_id", "records"]].astype(object).values.tolist() \
        == [["measurement", 3025315, pd.NA, 8739, 1],
            ["observation", 0, "physician global activity", 8588, 1]]
    assert "no_unit" not in set(got.report["reason"])


def test_a_cancer_condition_with_an_unreadable_date_is_reported(tmp_path: Path) -> None:
    """A cancer condition whose date cannot be read cannot say whether the myositis is cancer-associated: it is
    reported as an unreadable date, like a diagnosis, not dropped unseen."""
    got = _import_small(tmp_path, conds=[(1, 443392, "not a date", None)])
    assert not got.tables["patients"]["cancer_associated"].any()
    bad = got.report[got.report["reason"] == "unreadable_date"]
    assert bad[["table", "concept_id", "severity", "records"]].values.tolist() == [
        ["condition_occurrence", 443392, "error", 1]]


def test_a_single_dose_without_an_end_date_ends_on_its_day(tmp_path: Path) -> None:
    """A rituximab infusion ('once') recorded without an end date ends on its start day, as the report's
    no_end_date says — it is never written as an ongoing regimen."""
    got = _import_small(tmp_path, drugs=[(1, RITUXIMAB, "2021-03-01", None, 1000, None, "once", IV, "mg"),
                                         (1, METHOTREXATE, "2021-06-05", None, 15, 28, "weekly", ORAL, "mg")])
    assert _regimen_rows(got) == [["rituximab", 1000.0, "2021-03-01", "2021-03-01"],
                                  ["methotrexate", 15.0, "2021-06-05", "2021-07-02"]]
    assert _reasons(got.report)[("drug_exposure", RITUXIMAB, "no_end_date")] == 1


def test_events_deaths_and_period_ends_with_unreadable_dates_are_reported(tmp_path: Path) -> None:
    """An infection, a death or an observation period end whose date cannot be read is counted in the report
    (table, unreadable_date, error) like a diagnosis or an exposure — never an event row without a date, never
    passed over unsaid; a readable event beside them is imported."""
    t = _small_cdm(period_end="31/12/2026", obs=[(1, 0, "2021-07-01", None, "sepsis", "serious infection", None, None),
                                                 (1, 0, "July 2021", None, None, "serious infection", None, None)])
    t["death"] = pd.DataFrame({"person_id": [1], "death_date": ["20240101"], "death_type_concept_id": 32817})
    got = run_import_omop(str(_folder_of(t, tmp_path / "src")), tmp_path / "out", gap_days=30)
    events = got.tables["events"]
    assert events[["event", "date"]].values.tolist() == [["serious_infection", _d("2021-07-01")]]
    bad = got.report[got.report["reason"] == "unreadable_date"]
    assert bad[["table", "concept_id", "source_value", "severity", "records"]].astype(object).values.tolist() == [
        ["death", 0, pd.NA, "error", 1], ["observation", 0, "serious infection", "error", 1],
        ["observation_period", 0, pd.NA, "error", 1]]


def test_one_cdm_imports_to_the_same_tables_from_every_backend(tmp_path: Path) -> None:
    """One CDM whose ids are text (person_id ' 17 ' and '0004', a concept id ' 80182 ', a concept_ancestor id
    ' 2100000010 ') and whose source value has repeated blanks ('JUVENILE   dermatomyositis') imports to the same
    tables and report from a DuckDB file, a folder of CSV, a folder of Parquet and SQLite (SQLAlchemy) — each
    backend once matched such ids or text its own way, and SQLite left persons 17 and 4 out unsaid."""
    t = _small_cdm(persons=[(1, 8532, 1970), (" 17 ", 8507, 1980), ("0004", 8507, 1985), ("P2", 8532, 1990)],
                   conds=[(" 17 ", " 80182 ", "2020-02-02", None),
                          ("0004", 0, "2020-03-03", "JUVENILE   dermatomyositis"),
                          ("P2", 80182, "2020-04-04", None), ("0004", 4119786, "2020-03-03", None)],
                   drugs=[(" 17 ", PRODUCT_PREDNISONE, "2021-01-01", "2021-01-31", 10, None, "daily", ORAL, "mg"),
                          ("0004", METHOTREXATE, "2021-02-01", "2021-03-01", 15, None, "weekly", ORAL, "mg")],
                   meas=[(" 17 ", 3007220, "2021-01-05", 900.0, None, 8645, 200.0, None, None, None)],
                   obs=[("0004", 0, "2021-07-01", None, "sepsis", "serious infection", None, None)])
    t["concept_ancestor"] = pd.DataFrame({"ancestor_concept_id": ["1551099", "4119786"],
                                          "descendant_concept_id": [" 2100000010 ", "4119786"]})
    for frame in t.values():  # every id column as text, as a site's export may hold it
        for col in [c for c in frame if c == "person_id" or c.endswith("concept_id")]:
            frame[col] = frame[col].map(lambda v: None if pd.isna(v) else str(v))
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cdm.sqlite'}")
    for name, frame in t.items():
        frame.to_sql(name, engine, index=False)
    engine.dispose()
    con = duckdb.connect(str(tmp_path / "cdm.duckdb"))
    for name, frame in t.items():
        con.register("frame", frame)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
        con.unregister("frame")
    con.close()
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    for name, frame in t.items():
        frame.to_parquet(parquet / f"{name}.parquet", index=False)
    sources = [str(tmp_path / "cdm.duckdb"), str(_folder_of(t, tmp_path / "csv")), str(parquet),
               f"sqlite:///{tmp_path / 'cdm.sqlite'}"]
    got = [run_import_omop(source, tmp_path / f"out{i}", gap_days=30) for i, source in enumerate(sources)]
    p = got[0].tables["patients"]
    assert p[["patient_id", "diagnosis", "ild"]].values.tolist() == [
        ["1", "adult_dermatomyositis", False], ["17", "adult_dermatomyositis", False],
        ["4", "juvenile_dermatomyositis", True]]
    assert got[0].tables["regimens"][["patient_id", "drug"]].values.tolist() == [["17", "prednisone"],
                                                                                 ["4", "methotrexate"]]
    assert _reasons(got[0].report) == {("condition_occurrence", 80182, "non_integer_person_id"): 1}
    for source, result in zip(sources[1:], got[1:], strict=True):
        for name, frame in got[0].tables.items():
            pd.testing.assert_frame_equal(result.tables[name], frame, obj=f"{source} {name}")
        pd.testing.assert_frame_equal(result.report, got[0].report, obj=f"{source} report")


def test_a_diagnosis_of_a_non_integer_person_id_keeps_the_condition_table_types(tmp_path: Path) -> None:
    """read_omop passes the 'P2' diagnosis on to be reported with the cohort's conditions in the table's own
    types (concept ids numbers, dates dates) — never every column turned to object to append it — and once."""
    t = _small_cdm(persons=[(1, 8532, 1970), ("P2", 8507, 1980)], conds=[("P2", 80182, "2020-02-02", None)])
    t["condition_occurrence"]["person_id"] = t["condition_occurrence"]["person_id"].astype(str)
    with open_source(str(_folder_of(t, tmp_path / "src"))) as src:
        cond = read_omop(src, load_mapping())["condition_occurrence"]
    assert cond["person_id"].tolist() == ["1", "P2"]
    assert cond["condition_concept_id"].dtype == "int64"
    assert pd.api.types.is_datetime64_any_dtype(cond["condition_start_date"])


def test_what_a_person_row_lacks_is_reported_and_each_diagnosis_counted_once(tmp_path: Path) -> None:
    """A person whose year of birth cannot be read, or who has no observation period (so no regimen can be told
    to be ongoing), is named in the report at its source; a diagnosis of a person that cannot be imported is
    counted once, by that reason, even when its date is unreadable too."""
    t = _small_cdm(persons=[(1, 8532, "19x0"), (2, 8507, 1980)],
                   conds=[(2, 80182, "2020-02-02", None), ("P3", 80182, "not a date", None)],
                   drugs=[(2, METHOTREXATE, "2021-01-01", TODAY, 15, None, "weekly", ORAL, "mg")])
    t["observation_period"] = t["observation_period"].loc[t["observation_period"]["person_id"] == 1]
    got = run_import_omop(str(_folder_of(t, tmp_path / "src")), tmp_path / "out", gap_days=30)
    assert got.tables["patients"]["patient_id"].tolist() == ["1", "2"]
    assert pd.isna(got.tables["patients"]["birth_year"].iloc[0])
    assert got.tables["regimens"]["end_date"].notna().all()  # person 2 has no period: the end as recorded
    rows = got.report[["table", "reason", "severity", "records"]].values.tolist()
    assert sorted(rows) == [["condition_occurrence", "non_integer_person_id", "error", 1],
                            ["person", "no_observation_period", "warning", 1],
                            ["person", "unreadable_birth_year", "error", 1]]
