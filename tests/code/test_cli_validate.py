"""`escalate validate --data DIR`: exit codes, the printed findings and counts, and the JSON findings file."""

from __future__ import annotations

import json
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
    assert "0 events" in res.output


def test_a_bad_today_exits_2(app, seed):
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "next tuesday"])
    assert res.exit_code == 2
    assert "--today" in res.output


def test_limit_prints_fewer_findings_but_the_json_has_all(app, seed, tmp_path):
    for row in range(3):
        _edit_csv(seed / "assessments.csv", row, "unit", "furlongs")
    out = tmp_path / "v.json"
    res = runner.invoke(app, ["validate", "--data", str(seed), "--today", "2026-11-25", "--limit", "1", "--json", str(out)])
    assert res.exit_code == 1
    assert "more findings not printed" in res.output
    assert sum(v["rule"] == "unknown_unit" for v in json.loads(out.read_text())["violations"]) == 3
