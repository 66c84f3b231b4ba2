"""The `escalate` CLI as a user meets it: pipeline order, a help that imports nothing heavy, strict dates, the same
`--data` everywhere, and every refusal on one line with exit status 2 before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import COMMANDS, app
from tests.conftest import SEED_CASE

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_ORDER = ["simulate", "import", "validate", "features", "split", "train", "evaluate", "explain", "promote",
                  "report", "score"]
runner = CliRunner()
# pandera imports pyspark.pandas when the spark extra is installed; its pandas-3 notice is not about this code.


def refused(args: list[str], code: int = 2) -> str:
    """Run `escalate ARGS`, check it is refused with `code` on exactly one line and no traceback; the line."""
    res = runner.invoke(app, args)
    lines = res.output.strip().splitlines()
    assert res.exit_code == code, res.output
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, (AssertionError, TypeError, KeyError))
    return lines[0]


def _run_help(argv_list: list[list[str]]) -> tuple[list[str], list[str]]:
    """In a fresh interpreter: the help texts of `escalate ARGV` for each ARGV, and every module imported."""
    code = (
        "import io, json, sys, contextlib\n"
        "from pipeline.cli import app\n"
        "texts = []\n"
        f"for argv in {argv_list!r}:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            app(argv, prog_name='escalate')\n"
        "        except SystemExit as e:\n"
        "            assert e.code in (0, None), e.code\n"
        "    texts.append(buf.getvalue())\n"
        "print(json.dumps({'texts': texts, 'modules': sorted(sys.modules)}))\n"
    )
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["texts"], out["modules"]


def test_help_lists_the_commands_in_pipeline_order_and_imports_no_stage_module():
    assert list(COMMANDS) == PIPELINE_ORDER
    [text], modules = _run_help([["--help"]])
    listed = [line.strip(" │|").split()[0] for line in text.splitlines()
              if line.strip(" │|").split() and line.strip(" │|").split()[0] in COMMANDS]
    assert listed == PIPELINE_ORDER, text
    assert "pandas" not in modules and "numpy" not in modules
    # config: stdlib + yaml, and cli_types (typer) for its refusal of a malformed YAML file
    assert sorted(m for m in modules if m.startswith("pipeline.")) == ["pipeline.cli", "pipeline.cli_types",
                                                                       "pipeline.config"]


def test_every_command_help_imports_neither_pandas_nor_its_stage_module():
    texts, modules = _run_help([[name, "--help"] for name in PIPELINE_ORDER])
    for name, text in zip(PIPELINE_ORDER, texts, strict=True):
        assert f"escalate {name}" in text, text
    assert "pandas" not in modules and "numpy" not in modules
    assert {m for m in modules if m.startswith("pipeline.")} == {"pipeline.cli", "pipeline.cli_types",
                                                                  "pipeline.commands", "pipeline.config"}


DATE_OPTIONS = [  # (arguments before the date, the date option); every other required option given
    (["simulate", "--out", "{tmp}/cohort"], "--today"),
    (["validate", "--data", "{seed}"], "--today"),
    (["features", "--data", "{seed}"], "--today"),
    (["features", "--data", "{seed}", "--out", "{tmp}/f.parquet"], "--as-of"),
    (["report", "--data", "{seed}", "--patient", "SEED-0001", "--out", "{tmp}/p.html"], "--as-of"),
    (["score", "--data", "{seed}", "--out", "{tmp}/scores"], "--as-of"),
    (["score", "--data", "{seed}", "--out", "{tmp}/scores", "--as-of", "2026-11-18"], "--today"),
]


def _fill(args: list[str], tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, seed=SEED_CASE) for a in args]


@pytest.mark.parametrize("value", ["01/11/2026", "18.11.2026", "2026-13-01", "2026-02-30", "20261118", "tomorrow",
                                   "1899-12-31", "2262-01-01"])
@pytest.mark.parametrize(("args", "option"), DATE_OPTIONS, ids=[f"{a[0]}{o}" for a, o in DATE_OPTIONS])
def test_every_date_option_takes_only_yyyy_mm_dd(args, option, value, tmp_path):
    line = refused([*_fill(args, tmp_path), option, value])
    assert line.startswith(f"escalate {args[0]}: error:") and option in line and repr(value) in line
    assert "YYYY-MM-DD" in line or "not a calendar date" in line or "the days the data contract reads" in line
    assert not any(tmp_path.iterdir()), "a refused run wrote something"


@pytest.mark.parametrize("name", ["simulate", "validate", "features", "report", "score"])
def test_date_options_show_the_format_as_metavar(name):
    res = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "YYYY-MM-DD" in res.output


@pytest.mark.parametrize("command", [
    ["validate"], ["features"], ["report", "--patient", "SEED-0001", "--out", "{tmp}/p.html"],
    ["score", "--as-of", "2026-11-18", "--out", "{tmp}/scores"],
])
def test_a_missing_data_folder_is_refused_naming_data(command, tmp_path):
    line = refused([*_fill(command, tmp_path), "--data", str(tmp_path / "nowhere")])
    assert "--data" in line and "nowhere does not exist" in line


def test_validate_takes_data_as_an_option_not_an_argument():
    line = refused(["validate", str(SEED_CASE)])
    assert "--data" in line or "unexpected extra argument" in line.lower()


UNWRITABLE = [  # (arguments, the output option, a folder output?)
    (["simulate"], "--out", True),
    (["validate", "--data", "{seed}"], "--json", False),
    (["features", "--data", "{seed}"], "--out", True),
    (["features", "--data", "{seed}", "--as-of", "2026-11-18"], "--out", False),
    (["split", "--features-dir", "{tmp}"], "--out", True),
    (["train", "--features-dir", "{tmp}", "--split-dir", "{tmp}"], "--out-dir", True),
    (["evaluate", "--features-dir", "{tmp}", "--split-dir", "{tmp}", "--train-dir", "{tmp}"], "--out-dir", True),
    (["explain", "--model-dir", "{tmp}"], "--out", True),
    (["promote"], "--out", False),
    (["report", "--data", "{seed}", "--patient", "SEED-0001"], "--out", False),
    (["report", "--data", "{seed}", "--all"], "--out", True),
    (["score", "--data", "{seed}", "--as-of", "2026-11-18"], "--out", True),
]


@pytest.mark.parametrize(("args", "option", "folder"), UNWRITABLE, ids=[f"{a[0]}{o}" for a, o, _ in UNWRITABLE])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(args, option, folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = refused([*_fill(args, tmp_path), option, str(blocker / "sub" / "out")])
    assert option in line and "a-file is a file" in line
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


FILE_OUTPUTS = [  # (arguments, an option that names one file)
    (["simulate", "--out", "{tmp}/cohort"], "--metrics"),
    (["validate", "--data", "{seed}"], "--json"),
    (["features", "--data", "{seed}", "--as-of", "2026-11-18"], "--out"),
    (["promote"], "--out"),
    (["promote"], "--evidence"),
    (["report", "--data", "{seed}", "--patient", "SEED-0001", "--as-of", "2026-11-18"], "--out"),
]


@pytest.mark.parametrize(("args", "option"), FILE_OUTPUTS, ids=[f"{a[0]}{o}" for a, o in FILE_OUTPUTS])
def test_a_folder_given_for_a_file_output_is_refused_and_left_alone(args, option, tmp_path):
    """Found by a review: `features --as-of D --out new/` and `report --out new/` wrote a *file* named `new` (the
    trailing '/' that makes `score --out DIR/` a folder was dropped). A path ending in '/', or an existing folder,
    where one file is written is refused before any work, and nothing is created or replaced."""
    line = refused([*_fill(args, tmp_path), option, f"{tmp_path}/new/"])
    assert option in line and f"{tmp_path}/new/ names a folder (it ends in '/'), not a file" in line
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "page.html").write_text("earlier")
    for given in (kept, f"{kept}/"):
        line = refused([*_fill(args, tmp_path), option, str(given)])
        assert option in line and f"{given}" in line and "folder" in line and "not a file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert [p.name for p in kept.iterdir()] == ["page.html"] and (kept / "page.html").read_text() == "earlier"


def test_a_folder_output_may_end_in_a_slash(tmp_path):
    """`score --out DIR/` (as in the README) is the folder DIR; the same spelling for a file output is refused."""
    from pipeline.cli_types import output_problem, require_writable

    assert require_writable(f"{tmp_path}/scores/", "--out", folder=True) == tmp_path / "scores"
    assert output_problem(f"{tmp_path}/scores/", folder=False) is not None
    assert output_problem(tmp_path / "scores", folder=False) is None  # a Path carries no trailing '/'


@pytest.mark.parametrize(("args", "flags"), [(["report"], ["--all", "--help"]),
                                             (["score"], ["--progress / --no-progress", "--help"])])
def test_help_shows_a_flag_without_a_value_type(args, flags):
    """Found by a review: typer's Rich help showed every on/off flag as `--all <bool>`, as if it took a value; the
    plain help (`rich_markup_mode=None`) lists a flag alone and an option with its value's type."""
    res = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output
    lines = [line.strip() for line in res.output.splitlines()]
    for flag in flags:
        assert any(line.startswith(f"{flag}  ") for line in lines), res.output
    assert any(line.startswith("--data <path>") for line in lines), res.output


def test_a_read_only_output_folder_is_refused(read_only_folder):
    line = refused(["score", "--data", str(SEED_CASE), "--as-of", "2026-11-18", "--out",
                    str(read_only_folder / "s")])
    assert "--out" in line and "not writable" in line


def test_report_needs_exactly_one_of_patient_or_all(tmp_path):
    line = refused(["report", "--data", str(SEED_CASE), "--out", str(tmp_path / "p.html")])
    assert "--patient" in line and "--all" in line


def test_an_unknown_command_suggests_the_nearest():
    line = refused(["valdate"])
    assert "No such command 'valdate'" in line and "'validate'" in line


def test_escalate_alone_prints_the_help():
    res = runner.invoke(app, [])
    assert res.exit_code == 2 and "Commands" in res.output and "score" in res.output


def test_a_misspelt_settings_key_is_refused_on_one_line_before_any_work(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text().replace("\nsplit:", "\nsplitt:", 1))
    line = refused(["split", "--features-dir", str(tmp_path), "--out", str(tmp_path / "split"),
                    "--params", str(params)])
    assert "splitt" in line
    assert not (tmp_path / "split").exists()


def test_score_maps_a_refusal_to_exit_2_and_nothing_scored_to_exit_1(tmp_path, monkeypatch):
    from pipeline import score

    def refuse(*args, **kwargs):
        raise score.ScoreRefusal("--model models:/nope@champion: cannot load this model")

    monkeypatch.setattr(score, "run_score", refuse)
    args = ["score", "--data", str(SEED_CASE), "--as-of", "2026-11-18", "--out", str(tmp_path / "s")]
    line = refused(args)
    assert line == "escalate score: error: --model models:/nope@champion: cannot load this model"

    seen = {}

    def nothing_scored(data, as_of, model, out, **kwargs):
        seen.update(as_of=as_of, today=kwargs["today"])
        counts = {"input_patients": 3, "scored_patients": 0, "rejected_patients": 3, "unknown_patients": 0}
        return {"counts": counts, "model_uri": model, "model_version": "1", "as_of": as_of,
                "timings": {"total_s": 0.1}}

    monkeypatch.setattr(score, "run_score", nothing_scored)
    line = refused([*args, "--today", "2026-11-25"], code=1)
    assert "no patient scored" in line and "all 3 rejected" in line
    assert seen == {"as_of": "2026-11-18", "today": "2026-11-25"}

    def nobody_listed(data, as_of, model, out, **kwargs):  # an empty patients table: no "all 0 rejected"
        counts = {"input_patients": 0, "scored_patients": 0, "rejected_patients": 0, "unknown_patients": 30}
        return {"counts": counts, "model_uri": model, "model_version": "1", "as_of": as_of, "timings": {"total_s": 0.1}}

    monkeypatch.setattr(score, "run_score", nobody_listed)
    line = refused(args, code=1)
    assert "the patients table lists nobody (30 patient(s) not in it have rows)" in line and "all 0" not in line


@pytest.mark.parametrize("broken", [False, True], ids=["unknown-patient", "patient-with-data-errors"])
def test_report_refuses_a_patient_it_cannot_page_before_loading_the_model(broken, tmp_path, monkeypatch):
    import shutil

    import pandas as pd

    from pipeline import report

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a refused page")

    monkeypatch.setattr(report, "load_model", no_model)
    data = tmp_path / "seed"
    shutil.copytree(SEED_CASE, data)
    if broken:
        patients = pd.read_csv(data / "patients.csv", dtype=str, keep_default_na=False)
        patients.loc[0, "sex"] = "X"
        patients.to_csv(data / "patients.csv", index=False)
    patient = "SEED-0001" if broken else "NOPE-1"
    line = refused(["report", "--data", str(data), "--patient", patient, "--as-of", "2026-11-18",
                    "--out", str(tmp_path / "page.html")])
    assert "--patient" in line and repr(patient) in line
    assert ("data errors" in line and "unknown_category" in line) if broken else "no patient" in line
    assert not (tmp_path / "page.html").exists()


def test_a_stage_run_before_its_inputs_exist_is_refused_naming_the_missing_file(tmp_path):
    line = refused(["split", "--features-dir", str(tmp_path), "--out", str(tmp_path / "split")])
    assert line.startswith("escalate split: error:") and "decisions.parquet: no such file" in line
    assert line.endswith("(`escalate features` writes it: run it first, or point the option at its output)")


def test_a_folder_given_for_an_input_file_is_one_line(tmp_path):
    """`explain --dictionary data/features` once ended in IsADirectoryError's traceback."""
    from pipeline.cli_types import Refusal
    from pipeline.commands import _inputs_present

    with pytest.raises(Refusal, match=rf"{tmp_path}: a folder where a file is expected"), _inputs_present():
        tmp_path.open().read()


def test_simulate_refuses_a_folder_of_other_files(tmp_path):
    """Found by a probe: `simulate --out` into an export of real contract CSVs wrote Parquet beside them, which the
    stages then read instead of the real tables. A folder with a simulated cohort (its truth/) is rewritten."""
    import shutil

    from tests.conftest import SEED_CASE

    real = tmp_path / "export"
    shutil.copytree(SEED_CASE, real)
    line = refused(["simulate", "--out", str(real), "--patients", "5"])
    assert "is not empty and holds no simulated cohort" in line
    assert sorted(p.name for p in real.iterdir()) == sorted(p.name for p in SEED_CASE.iterdir())  # untouched


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a folder no one can write)")
def test_an_output_where_no_file_can_be_created_is_refused_before_any_work():
    """`os.access` says yes to root everywhere: `--out /proc/x` once failed after the work (a fitted model lost,
    a registry already updated). A real file created and removed at once tells."""
    from pipeline.cli_types import output_problem

    assert "cannot be created: /proc is not writable" in output_problem(Path("/proc/escalate-x"), folder=True)
    assert "cannot be created" in output_problem(Path("/proc/escalate-x/evidence.json"), folder=False)


def test_features_from_a_folder_without_the_contract_tables_is_one_line(tmp_path):
    """Found by a newcomer: `features --data` of an empty folder (or of simulate's OMOP output) ended in a traceback
    while validate, score and report refused it on one line."""
    (tmp_path / "empty").mkdir()
    for extra in ([], ["--as-of", "2026-10-01"]):
        line = refused(["features", "--data", str(tmp_path / "empty"), "--today", "2026-11-01", *extra,
                        "--out", str(tmp_path / ("f.parquet" if extra else "f"))])
        assert line.startswith("escalate features: error: contract table 'patients' not found in "), line


def test_features_refuse_an_as_of_after_today_as_score_and_report_do(tmp_path):
    (tmp_path / "cohort").mkdir()
    line = refused(["features", "--data", str(tmp_path / "cohort"), "--today", "2026-11-01", "--as-of", "2026-12-01",
                    "--out", str(tmp_path / "f.parquet")])
    assert "--as-of 2026-12-01 is in the future (today is 2026-11-01)" in line


def test_validate_refuses_a_folder_without_the_contract_tables_on_stderr_like_every_command(tmp_path):
    res = runner.invoke(app, ["validate", "--data", str(tmp_path), "--today", "2026-11-01"])
    assert res.exit_code == 2 and res.stdout == "", res.output
    assert res.stderr.strip() == (f"escalate validate: error: cannot read contract tables: contract table 'patients' "
                                  f"not found in {tmp_path}: expected patients.parquet or patients.csv")


def test_score_takes_reasons_per_option_under_reports_name_too(tmp_path, monkeypatch):
    """`report --top-k N` and `score --explain-top N` set the same thing: score accepts both names."""
    from pipeline import score

    seen = {}

    def nothing_scored(data, as_of, model, out, **kwargs):
        seen["top"] = kwargs["settings"].explain_top_k
        counts = {"input_patients": 1, "scored_patients": 0, "rejected_patients": 1, "unknown_patients": 0}
        return {"counts": counts, "model_uri": model, "model_version": "1", "as_of": as_of, "timings": {"total_s": 0.1}}

    monkeypatch.setattr(score, "run_score", nothing_scored)
    base = ["score", "--data", str(SEED_CASE), "--as-of", "2026-11-18", "--today", "2026-11-25"]
    for i, name in enumerate(("--explain-top", "--top-k")):
        refused([*base, "--out", str(tmp_path / f"s{i}"), name, "5"], code=1)
        assert seen["top"] == 5, name
