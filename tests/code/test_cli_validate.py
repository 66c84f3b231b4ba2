"""`escalate validate --data DIR`: exit codes, the printed findings and counts, and the JSON findings file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from tests.conftest import SEED_CASE

SEED_DIR = SEED_CASE
runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The `escalate` CLI, as a user runs it."""
    from pipeline.cli import app as escalate

    return escalate


@pytest.fixture()
def seed(tmp_path: Path) -> Path:
    d = tmp_path / "seed"
    shutil.copytree(SEED_DIR, d)
    for p in d.iterdir():
        p.chmod(0o644)
    return d


def _edit_csv(path: Path, row: int, column: str, value: str) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[row, column] = value
    df.to_csv(path, index=False)


def test_the_seed_case_passes_with_its_warning(app, seed, tmp_path):
    out = tmp_path / "out" / "validation.json"
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-25", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "0 error(s), 1 warning(s)" in res.output
    assert "no_body_size" in res.output
    report = json.loads(out.read_text())
    assert report["summary"]["errors"] == 0 and report["summary"]["warnings"] == 1
    assert report["summary"]["rows"] == {"patients": 1, "regimens": 9, "assessments": 97, "events": 1}
    assert report["today"] == "2026-11-25"
    [finding] = report["violations"]
    assert finding == {
        "table": "regimens", "row": 5, "patient_id": "SEED-0001", "column": "dose_unit", "rule": "no_body_size",
        "severity": "warning", "message": finding["message"],
    }


def test_the_summary_counts_ids_missing_from_the_patients_table_apart(app, seed):
    """Found by a walkthrough: a regimen of an unknown patient made it '2 of 1 patient(s) have an error'."""
    import pandas as pd

    regimens = pd.read_csv(seed / "regimens.csv", dtype=str, keep_default_na=False)
    extra = regimens.iloc[[0]].assign(patient_id="P9")
    pd.concat([regimens, extra]).to_csv(seed / "regimens.csv", index=False)
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-25"], env={"COLUMNS": "200"})
    assert res.exit_code == 1, res.output
    assert "0 of 1 patient(s) have an error (+1 id(s) not in the patients table)" in res.output


def test_the_summary_counts_a_duplicated_patient_row_as_one_patient(app, seed):
    """Found by a review: a patient listed twice made it '1 of 2 patient(s)'; the rows are counted apart."""
    import pandas as pd

    patients = pd.read_csv(seed / "patients.csv", dtype=str, keep_default_na=False)
    pd.concat([patients, patients]).to_csv(seed / "patients.csv", index=False)
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-25"], env={"COLUMNS": "200"})
    assert res.exit_code == 1, res.output
    assert "in the rows of patients 2," in res.output and "1 of 1 patient(s) have an error" in res.output


def test_ids_stored_as_floats_fail_validate_as_they_fail_score(app, seed, tmp_path):
    """Found by a walkthrough: Parquet ids stored as 1.0 passed validate with 0 errors while score refused them."""
    import pandas as pd

    patients = pd.read_csv(seed / "patients.csv", dtype=str)
    patients.assign(patient_id=[1.0]).to_parquet(seed / "patients.parquet", index=False)
    (seed / "patients.csv").unlink()
    res, report = _validate(app, seed, tmp_path)
    assert res.exit_code == 1, res.output
    [error] = [v for v in report["violations"] if v["severity"] == "error"]
    assert error["table"] == "patients" and error["rule"] == "identifier_type"  # the narrower rule, as score names it
    assert "'patient_id' is stored as double; store identifiers as text" in error["message"]


def test_a_list_column_fails_validate_and_score_naming_table_column_and_rule(app, seed, tmp_path):
    """Found by a review: antibodies stored as list<string> crashed validate and score with a bare TypeError
    (unhashable type). Both now name the file, the column and the rule."""
    import pandas as pd

    from pipeline.score import ScoreRefusal, check_structure, table_paths

    patients = pd.read_csv(seed / "patients.csv", dtype=str)
    patients.assign(antibodies=[["anti-Jo-1", "anti-Ro52"]]).to_parquet(seed / "patients.parquet", index=False)
    (seed / "patients.csv").unlink()
    res, report = _validate(app, seed, tmp_path)
    assert res.exit_code == 1, res.output
    [error] = [v for v in report["violations"] if v["severity"] == "error"]
    assert error["table"] == "patients" and error["rule"] == "nested_column"
    assert "column(s) 'antibodies' (list<element: string>) hold lists or records" in error["message"]
    with pytest.raises(ScoreRefusal, match=r"patients\.parquet: column\(s\) 'antibodies' .*\(rule: nested_column\)$"):
        check_structure(table_paths(seed))


def test_errors_exit_1_and_every_one_is_printed_and_written(app, seed, tmp_path):
    _edit_csv(seed / "regimens.csv", 5, "drug", "Privigenn")
    _edit_csv(seed / "assessments.csv", 2, "value", "95")
    _edit_csv(seed / "patients.csv", 0, "sex", "X")
    out = tmp_path / "validation.json"
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-25", "--json", str(out)])
    assert res.exit_code == 1, res.output
    assert "3 error(s)" in res.output and "1 of 1 patient(s) have an error" in res.output
    for text in ("unknown_drug", "out_of_range", "unknown_category", "Privigenn"):
        assert text in res.output
    report = json.loads(out.read_text())
    found = {(v["table"], v["row"], v["column"], v["rule"]) for v in report["violations"] if v["severity"] == "error"}
    assert found == {("regimens", 5, "drug", "unknown_drug"), ("assessments", 2, "value", "out_of_range"),
                     ("patients", 0, "sex", "unknown_category")}
    assert report["rejected_patients"] == ["SEED-0001"]


def test_the_dvc_stage_records_the_errors_and_goes_on_while_by_hand_they_stop_the_run(app, seed, tmp_path):
    """`dvc repro` on real data must not stop at the first patient with an error: later stages reject that patient
    and count it (README, docs/data-contract.md). The stage's own command line exits 0 with every finding written;
    the same check by hand still exits 1, and going on without a findings file is refused."""
    import shlex

    import yaml

    from pipeline.config import ROOT

    _edit_csv(seed / "regimens.csv", 5, "drug", "Privigenn")
    out = tmp_path / "validation.json"
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["validate"]["cmd"]
    given = {"${data.dir}": str(seed), "${data.today}": "2026-11-25", "data/validation.json": str(out)}
    escalate, *args = shlex.split(cmd)
    assert escalate == "escalate"
    res = runner.invoke(app, [given.get(a, a) for a in args])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["summary"]["errors"] == 1 and report["rejected_patients"] == ["SEED-0001"]
    assert [(v["table"], v["row"], v["rule"]) for v in report["violations"] if v["severity"] == "error"] == [
        ("regimens", 5, "unknown_drug")]
    by_hand = [a for a in args if a != "--exit-zero"]
    assert runner.invoke(app, [given.get(a, a) for a in by_hand]).exit_code == 1
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-25", "--exit-zero"])
    assert res.exit_code == 2 and "--json" in res.output


def test_today_before_the_last_visit_makes_dates_in_the_future(app, seed):
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-01"])
    assert res.exit_code == 1
    assert "date_in_future" in res.output


def test_a_missing_column_is_reported_with_no_row(app, seed, tmp_path):
    df = pd.read_csv(seed / "events.csv", dtype=str).drop(columns="event")
    df.to_csv(seed / "events.csv", index=False)
    out = tmp_path / "v.json"
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-25", "--json", str(out)])
    assert res.exit_code == 1
    [missing] = [v for v in json.loads(out.read_text())["violations"] if v["rule"] == "missing_column"]
    assert missing["table"] == "events" and missing["column"] == "event" and missing["row"] is None


def test_a_missing_table_exits_2_naming_it(app, seed):
    (seed / "regimens.csv").unlink()
    res = runner.invoke(app, ["validate", "--data", str(seed)])
    assert res.exit_code == 2
    assert "regimens" in res.output


def test_events_may_be_absent(app, seed):
    (seed / "events.csv").unlink()
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-25"])
    assert res.exit_code == 0, res.output
    assert "events 0" in res.output


def test_a_bad_today_exits_2(app, seed):
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "next tuesday"])
    assert res.exit_code == 2
    assert "--today" in res.output


def _validate(app, seed: Path, tmp_path: Path, *extra: str) -> tuple[object, dict]:
    out = tmp_path / "v.json"
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-25", "--json", str(out), *extra])
    return res, json.loads(out.read_text())


def test_a_summary_per_rule_and_the_first_findings_instead_of_every_line(app, seed, tmp_path):
    df = pd.read_csv(seed / "assessments.csv", dtype=str, keep_default_na=False)
    df.loc[:24, "unit"] = "furlongs"
    df.to_csv(seed / "assessments.csv", index=False)
    res, report = _validate(app, seed, tmp_path)
    assert res.exit_code == 1
    # counts per (severity, table, rule), then a first page of 20 findings; the JSON keeps all 25
    assert "first 20 of 26 finding(s)" in res.output and res.output.count("'furlongs'") == 20
    assert "rows count from 0" in " ".join(res.output.split())  # a data manager counting lines is told how
    assert re.search(r"error\s+│ assessments\s+│ unknown_unit\s+│\s+25 │\s+1 │", res.output), res.output
    assert sum(v["rule"] == "unknown_unit" for v in report["violations"]) == 25
    assert {"severity": "error", "table": "assessments", "rule": "unknown_unit", "findings": 25,
            "patients": 1} in report["summary"]["counts"]
    res, _ = _validate(app, seed, tmp_path, "--limit", "1")
    assert "first 1 of 26 finding(s)" in res.output and res.output.count("'furlongs'") == 1
    res, _ = _validate(app, seed, tmp_path, "--limit", "0")
    assert "all 26 finding(s)" in res.output and res.output.count("'furlongs'") == 25


def test_a_semicolon_csv_with_a_bom_is_one_finding_with_its_cause_not_a_cascade(app, seed, tmp_path):
    patients = pd.read_csv(seed / "patients.csv", dtype=str, keep_default_na=False)
    (seed / "patients.csv").write_bytes(b"\xef\xbb\xbf" + patients.to_csv(index=False, sep=";").encode())
    res, report = _validate(app, seed, tmp_path)
    assert res.exit_code == 1, res.output
    [finding] = [v for v in report["violations"] if v["severity"] == "error"]
    assert finding["table"] == "patients" and finding["rule"] == "unreadable_table" and finding["row"] is None
    assert "patients.csv" in finding["message"] and "';' (semicolon)" in finding["message"]
    # no unknown_patient on every other row: those checks say they were skipped, once per table
    assert {v["rule"] for v in report["violations"]} == {"unreadable_table", "check_skipped", "no_body_size"}
    assert {v["table"] for v in report["violations"] if v["rule"] == "check_skipped"} == {
        "regimens", "assessments", "events"}
    assert report["summary"]["broken_tables"] == ["patients"] and report["summary"]["rows"]["patients"] is None
    assert "of 1 patient(s) have an error" not in res.output
    assert "the patients table(s) cannot be used" in res.output and report["rejected_patients"] == ["SEED-0001"]


def test_a_utf8_bom_alone_is_read_silently(app, seed, tmp_path):
    (seed / "patients.csv").write_bytes(b"\xef\xbb\xbf" + (seed / "patients.csv").read_bytes())
    res, report = _validate(app, seed, tmp_path)
    assert res.exit_code == 0, res.output
    assert report["summary"]["errors"] == 0


def test_a_latin1_file_names_the_encoding_and_the_line(app, seed, tmp_path):
    text = (seed / "regimens.csv").read_text().replace("Plaquenil", "Plaquénil")
    (seed / "regimens.csv").write_bytes(text.encode("latin-1"))
    res, report = _validate(app, seed, tmp_path)
    assert res.exit_code == 1
    [finding] = [v for v in report["violations"] if v["severity"] == "error"]
    assert finding["rule"] == "unreadable_table" and finding["table"] == "regimens"
    for text in ("regimens.csv", "not UTF-8", "line 5", "Latin-1", "'é'"):
        assert text in finding["message"]


def test_a_misspelt_header_gets_a_did_you_mean_hint(app, seed, tmp_path):
    df = pd.read_csv(seed / "regimens.csv", dtype=str, keep_default_na=False)
    df.rename(columns={"patient_id": "patinet_id", "dose_unit": "Dose Unit"}).to_csv(seed / "regimens.csv",
                                                                                   index=False)
    res, report = _validate(app, seed, tmp_path)
    assert res.exit_code == 1
    hints = {v["column"]: v["message"] for v in report["violations"] if v["rule"] == "missing_column"}
    assert "did you mean 'patinet_id'?" in hints["patient_id"]
    assert "did you mean 'Dose Unit'?" in hints["dose_unit"]
    assert "0 of 1 patient(s) have an error" not in res.output and "regimens table(s) cannot be used" in res.output


def test_an_exact_duplicate_regimen_row_is_an_error_naming_both_rows(app, seed, tmp_path):
    df = pd.read_csv(seed / "regimens.csv", dtype=str, keep_default_na=False)
    pd.concat([df, df.iloc[[3]]]).to_csv(seed / "regimens.csv", index=False)
    res, report = _validate(app, seed, tmp_path)
    assert res.exit_code == 1
    [dup] = [v for v in report["violations"] if v["rule"] == "duplicate_row"]
    assert (dup["table"], dup["row"], dup["severity"]) == ("regimens", 9, "error")
    assert "regimens row 3" in dup["message"]


def test_a_1e9_prednisone_dose_is_an_error_with_the_plausible_range(app, seed, tmp_path):
    _edit_csv(seed / "regimens.csv", 2, "dose", "1e9")
    res, report = _validate(app, seed, tmp_path)
    assert res.exit_code == 1
    [finding] = [v for v in report["violations"] if v["severity"] == "error"]
    assert (finding["table"], finding["row"], finding["column"], finding["rule"]) == (
        "regimens", 2, "dose", "implausible_dose")
    assert "1e+09 mg" in finding["message"] and "prednisone" in finding["message"]
    assert "0–200 mg" in finding["message"]
    assert report["rejected_patients"] == ["SEED-0001"]


def test_the_stages_refuse_an_unreadable_file_in_one_line(app, seed, tmp_path):
    (seed / "events.csv").write_bytes((seed / "events.csv").read_bytes().replace(b",", b"\t"))
    res = runner.invoke(app, ["features", "--data", str(seed), "--as-of", "2026-11-18", "--today", "2026-11-25",
                              "--out", str(tmp_path / "f.parquet")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("escalate features: error: ") and res.output.count("\n") == 1
    assert "events.csv: fields are separated by tabs, not commas" in res.output
    # every unreadable file is named by each stage, not only the first (score and report stopped at regimens)
    (seed / "regimens.csv").write_text("")
    for args in (["features", "--data", str(seed), "--out", str(tmp_path / "features")],
                 ["score", "--data", str(seed), "--as-of", "2026-11-18", "--out", str(tmp_path / "scores")],
                 ["report", "--data", str(seed), "--patient", "SEED-0001", "--out", str(tmp_path / "p.html")]):
        res = runner.invoke(app, args, env={"COLUMNS": "400"})
        assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
        assert "regimens.csv: the file is empty" in res.output and "events.csv: fields are separated by tabs" in res.output


def test_cells_that_look_like_console_markup_are_printed_as_written(app, seed, tmp_path):
    """A drug spelled '[/x]' once crashed validate (rich read it as a closing tag) and a cell wrapped in
    '[link=…]' was shown without it: text from the input is printed verbatim (patient ids are not printed at all)."""
    _edit_csv(seed / "regimens.csv", 2, "drug", "[/x]")
    _edit_csv(seed / "regimens.csv", 3, "dose_unit", "[bold]mg[/bold]")
    _edit_csv(seed / "regimens.csv", 4, "patient_id", "[bold]SEED-0001[/bold]")
    res, report = _validate(app, seed, tmp_path)
    assert res.exit_code == 1
    assert "unknown drug '[/x]'" in res.output
    assert "unknown dose unit '[bold]mg[/bold]'" in res.output
    assert "SEED-0001" not in res.output
    assert {v["rule"] for v in report["violations"]} >= {"unknown_drug", "unknown_dose_unit", "unknown_patient"}


def test_validate_help_states_the_default_limit_it_uses(app):
    """The help is built without importing the stage (fast), so it names the default itself: it must be the one."""
    from pipeline.validate import DEFAULT_LIMIT

    res = runner.invoke(app, ["validate", "--help"], env={"COLUMNS": "200"})
    assert f"default: {DEFAULT_LIMIT};" in res.output


def test_the_console_names_no_patient_the_json_report_does(app, seed, tmp_path):
    """Found by a review: the findings table printed a patient column with each finding's id, and a message about
    the patient_id column quoted it; validate is a DVC stage, so the ids went into `dvc repro` and CI logs. The
    console locates findings by table and row only; the JSON report keeps the ids."""
    patients = pd.read_csv(seed / "patients.csv", dtype=str, keep_default_na=False)
    pd.concat([patients, patients]).to_csv(seed / "patients.csv", index=False)  # duplicate_patient quotes the id
    regimens = pd.read_csv(seed / "regimens.csv", dtype=str, keep_default_na=False)
    long_nul = "SECRET-PATIENT-" + "0" * 40 + "\x00"  # a message cutting the id short must not quote the rest
    pd.concat([regimens, regimens.iloc[[0]].assign(patient_id="P-UNKNOWN-9"),
               regimens.iloc[[0]].assign(patient_id=long_nul)]).to_parquet(seed / "regimens.parquet", index=False)
    (seed / "regimens.csv").unlink()
    out = tmp_path / "validation.json"
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-25", "--json", str(out),
                              "--limit", "0"])
    assert res.exit_code == 1, res.output
    assert "SEED-0001" not in res.output and "P-UNKNOWN-9" not in res.output and "SECRET" not in res.output
    assert "duplicate_patient" in res.output and "unknown_patient" in res.output  # the findings are still shown
    assert "identifier_nul" in res.output and "at character 56" in res.output
    assert "<patient id: see the JSON report>" in res.output
    found = {(v["rule"], v["patient_id"]) for v in json.loads(out.read_text())["violations"]}
    assert {("duplicate_patient", "SEED-0001"), ("unknown_patient", "P-UNKNOWN-9")} <= found
