"""End-to-end behaviour of `escalate score` on a tiny simulated cohort with a tiny model registered in a temporary
SQLite MLflow store: every patient scored or rejected (none lost, none twice), broken rows in rejects.parquet,
refusals before any work, and a killed run that resumes to the same output as an uninterrupted one.\n\nEnd to end (a\nsimulated cohort, a trained and registered model, a CLI subprocess): marked slow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.scoring import REJECT_COLUMNS, ScoreSettings, check_invariant
from pipeline.score import MANIFEST, REJECTS, WARNINGS, WORK, ScoreRefusal, run_score

pytestmark = pytest.mark.slow

TODAY = "2026-11-01"
AS_OF = "2026-10-01"
ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "learner": "t_learner",
    "safety_learner": "s_learner",
    "min_rows_per_option": 15,
    "booster": {"n_estimators": 20, "max_depth": 2, "learning_rate": 0.3, "n_jobs": 1},
    "calibration": {"method": "sigmoid", "n_folds": 2, "min_rows_per_arm": 15},
    "intervals": {"n_boot": 2, "level": 0.9, "boot_booster": {"n_estimators": 10, "max_depth": 2, "n_jobs": 1}},
    "seed": 5,
}


@dataclass(frozen=True)
class ScoringWorld:
    """A folder of contract tables, a tracking store with a registered model, and the URIs to use."""

    data: Path
    tracking_uri: str
    model_uri: str
    version: str


def build_world(root: Path, n_patients: int = 30, seed: int = 5, train: dict | None = None,
                feature_config: object | None = None) -> ScoringWorld:
    """Simulate `n_patients`, train a tiny (or `train`-configured) Escalate model on their features at three past dates (labels drawn from
    a known rule), register it as `escalate-response@champion` in `root/mlflow.db`."""
    import joblib
    import mlflow

    from features.build import build_features, option_eligibility
    from features.config import FeatureConfig, LabelConfig
    from features.contract import MeasureCatalog, check
    from models.bundle import BundleConfig, RecordedSettings, fit_escalate_model
    from pipeline import registry
    from pipeline.config import load_reference
    from pipeline.simulate import build_inputs
    from simulator.engine import simulate_cohort

    cfg, vocabulary, catalog = build_inputs()
    cohort = simulate_cohort(n_patients, seed, cfg, vocabulary, catalog, TODAY, "observational")
    data = root / "data"
    data.mkdir(parents=True)
    tables = {}
    for name in ("patients", "regimens", "assessments", "events"):
        tables[name] = getattr(cohort, name)
        tables[name].to_parquet(data / f"{name}.parquet", index=False)
    result = check(tables, vocabulary, MeasureCatalog.from_config(load_reference("measures")), TODAY)
    ids = result.normalised["patients"]["patient_id"].astype(str)
    dates = pd.to_datetime(["2025-03-01", "2025-09-01", "2026-03-01", "2026-06-01"])
    keys = pd.DataFrame({"patient_id": np.repeat(ids.to_numpy(), len(dates)),
                         "as_of": np.tile(dates.to_numpy(), len(ids))})
    fconfig = feature_config or FeatureConfig()
    built = build_features(keys, result.normalised, vocabulary, catalog, fconfig)
    features = built.features
    eligible = option_eligibility(built, catalog, vocabulary)
    rng = np.random.default_rng(seed)
    n = len(features)
    names = np.asarray(catalog.names)
    wish = np.where(rng.random(n) < 0.4, "continue", np.where(rng.random(n) < 0.5, "add_ivig", "optimise_dose"))
    allowed = np.array([eligible[f"eligible_{o}"].iloc[i] for i, o in enumerate(wish)], dtype=bool)
    taken = np.where(allowed, wish, "continue")
    activity = np.nan_to_num(features["physician_global_latest"].to_numpy(), nan=5.0)
    tis = np.clip(38 - 3 * (activity - 5) + 5 * (taken == "add_ivig") + rng.normal(0, 20, n), 0, 100)
    decisions = pd.DataFrame({"decision_id": features["decision_id"], "option_taken": taken,
                              "total_improvement_score": tis,
                              "safety_event": (rng.random(n) < 0.1).astype(float)})
    assert set(taken) <= set(names)
    model = fit_escalate_model(features, decisions, catalog, BundleConfig.model_validate(train or TINY),
                               data_settings=RecordedSettings(features=fconfig, labels=LabelConfig()))

    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    registry.setup_mlflow(root)
    bundle = root / "bundle" / registry.BUNDLE_FILE
    bundle.parent.mkdir()
    joblib.dump(model, bundle)
    with mlflow.start_run():
        example = registry.deidentified_example(features, key_columns=model.contract.keys)
        _, version = registry.log_and_register(model, bundle, example, alias=registry.CHAMPION)
    return ScoringWorld(data=data, tracking_uri=uri, model_uri=f"models:/{registry.MODEL_NAME}@champion",
                        version=version)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ScoringWorld:
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    w = build_world(tmp_path_factory.mktemp("score-world"))
    yield w
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


CHUNK = 10


def _score(world: ScoringWorld, data: Path, out: Path, **kw) -> dict:
    settings = ScoreSettings(chunk_patients=kw.pop("chunk_patients", CHUNK),
                             explain_top_k=kw.pop("explain_top_k", 2))
    return run_score(data, kw.pop("as_of", AS_OF), kw.pop("model_uri", world.model_uri), out, settings=settings,
                     today=kw.pop("today", TODAY), progress=False, **kw)


@pytest.fixture(scope="module")
def reference(world: ScoringWorld, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted run on the clean cohort (output folder, manifest), shared by the tests that read it."""
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, _score(world, world.data, out)


def read_output(out: Path) -> pd.DataFrame:
    """Every part file of an output folder, in chunk order."""
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))], ignore_index=True)


def _broken_copy(world: ScoringWorld, target: Path) -> tuple[Path, str, int]:
    """The cohort with assessments as CSV with one value made unreadable and one row repeated (a warning: last
    row), one regimen without a patient id and one of an unknown patient (the last two rows), and one patient
    (last row of patients) with nothing recorded."""
    target.mkdir()
    for f in world.data.glob("*.parquet"):
        if f.stem != "assessments":
            (target / f.name).write_bytes(f.read_bytes())
    assessments = pd.read_parquet(world.data / "assessments.parquet")  # exported as CSV: text cells
    assessments["value"] = assessments["value"].astype(str)
    row = 17
    assessments.loc[row, "value"] = "twelve"
    repeated = assessments[assessments["patient_id"] != assessments.loc[row, "patient_id"]].iloc[[0]]
    pd.concat([assessments, repeated], ignore_index=True).to_csv(target / "assessments.csv", index=False)
    regimens = pd.read_parquet(target / "regimens.parquet")
    stray = regimens.iloc[[0]].assign(patient_id="NOT-A-PATIENT")
    nobody = regimens.iloc[[1]].assign(patient_id="  ")  # a row whose patient nobody can tell
    pd.concat([regimens, nobody, stray], ignore_index=True).to_parquet(target / "regimens.parquet", index=False)
    patients = pd.read_parquet(target / "patients.parquet")
    blank = patients.iloc[[0]].assign(patient_id="NOTHING-RECORDED")
    pd.concat([patients, blank], ignore_index=True).to_parquet(target / "patients.parquet", index=False)
    return target, str(assessments.loc[row, "patient_id"]), row


def test_every_patient_scored_once_with_every_option_and_reasons(world: ScoringWorld, reference) -> None:
    out, manifest = reference
    scored = read_output(out)
    patients = pd.read_parquet(world.data / "patients.parquet")
    rejects = pd.read_parquet(out / REJECTS)
    n_options = len(manifest["options"])
    report = check_invariant(patients["patient_id"], scored, rejects["patient_id"], n_options)
    assert report.ok, report.problems
    assert report.scored_patients + report.rejected_patients == len(patients)
    assert manifest["counts"]["input_patients"] == len(patients)
    assert manifest["chunks"]["total"] == -(-len(patients) // CHUNK)
    assert manifest["model_version"] == world.version and manifest["as_of"] == AS_OF
    assert manifest["timings"]["worker_peak_rss_mib"] > 100  # a worker holds at least the model and pandas
    assert manifest["timings"]["driver_peak_rss_mib"] > 50
    assert (manifest["chunks"]["workers"], manifest["chunks"]["processes"]) == (1, 1)  # the default: one worker
    assert len(list(out.glob("part-*.parquet"))) == manifest["chunks"]["total"]
    assert list(scored.columns[:3]) == ["patient_id", "as_of", "option"]
    assert (scored["as_of"] == pd.Timestamp(AS_OF)).all()
    elig = scored[scored["eligible"]]
    assert elig["p_response"].between(0, 1).all()
    assert (elig["p_response_low"] <= elig["p_response"] + 1e-12).all()
    assert (elig["p_response"] <= elig["p_response_high"] + 1e-12).all()
    assert scored.loc[~scored["eligible"], "p_response"].isna().all()
    assert (scored.groupby("patient_id")["recommended"].sum() == 1).all()
    assert elig["reason_1_text"].notna().all() and "reason_2_feature" in scored.columns
    assert "reason_3_text" not in scored.columns
    assert not (out / WORK / "staging").exists()
    assert manifest["nothing_scored"] is False
    text = (out / MANIFEST).read_text(encoding="utf-8")
    assert not any(pid in text for pid in patients["patient_id"])  # no identifiers in the manifest


def test_broken_rows_reject_their_patient_and_name_the_record(world: ScoringWorld, tmp_path: Path) -> None:
    data, bad_patient, bad_row = _broken_copy(world, tmp_path / "broken")
    out = tmp_path / "out"
    manifest = _score(world, data, out)
    rejects = pd.read_parquet(out / REJECTS)
    assert list(rejects.columns) == list(REJECT_COLUMNS)
    hit = rejects[rejects["patient_id"] == bad_patient]
    assert len(hit) >= 1
    first = hit.iloc[0]
    assert (first["table"], int(first["row"]), first["column"]) == ("assessments", bad_row, "value")
    assert "twelve" in first["message"] and first["rule"]
    stray = rejects[rejects["patient_id"] == "NOT-A-PATIENT"]
    assert (stray["table"] == "regimens").all() and len(stray) == 1
    assert int(stray["row"].iloc[0]) == len(pd.read_parquet(data / "regimens.parquet")) - 1
    # nothing recorded before the as-of date: every feature would be imputed — rejected, not scored as average
    blank = rejects[rejects["patient_id"] == "NOTHING-RECORDED"]
    assert blank[["table", "column", "rule"]].values.tolist() == [["patients", "patient_id", "no_record_before_as_of"]]
    assert int(blank["row"].iloc[0]) == len(pd.read_parquet(data / "patients.parquet")) - 1
    scored = read_output(out)
    assert {bad_patient, "NOTHING-RECORDED"}.isdisjoint(scored["patient_id"])
    assert manifest["counts"]["rejected_patients"] == 2 and manifest["counts"]["unknown_patients"] == 1
    # a row without a patient id is rejected on its own and counted apart: no patient to reject, never silent
    nobody = rejects[rejects["patient_id"].isna()]
    assert nobody[["table", "column"]].values.tolist() == [["regimens", "patient_id"]]
    assert int(nobody["row"].iloc[0]) == len(pd.read_parquet(data / "regimens.parquet")) - 2
    assert manifest["counts"]["rows_without_patient_id"] == 1
    assert manifest["counts"]["scored_patients"] == manifest["counts"]["input_patients"] - 2
    # a scored patient's warning is kept beside the output, pointing at its input row
    warnings = pd.read_parquet(out / WARNINGS)
    assert list(warnings.columns) == list(REJECT_COLUMNS) and len(warnings) == manifest["counts"]["warning_rows"]
    repeat = warnings[warnings["rule"] == "duplicate_row"]
    n_assessments = len(pd.read_csv(data / "assessments.csv"))
    assert repeat[["table", "row"]].values.tolist() == [["assessments", n_assessments - 1]]
    assert set(warnings["patient_id"]) <= set(scored["patient_id"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model_uri": "models:/escalate-response@no-such-alias"}, "cannot load this model"),
        ({"model_uri": "models:/no-such-model/3"}, "cannot load this model"),
        ({"model_uri": "models:/escalate-response/999"}, "cannot load this model"),
        ({"as_of": "2026-12-24"}, "in the future"),
        ({"as_of": "01/10/2026"}, "not a date in the form YYYY-MM-DD"),
        ({"as_of": "2026-13-01"}, "not a calendar date"),
        ({"today": "01.11.2026"}, "--today '01.11.2026' is not a date"),
        ({"workers": -1}, "--workers must be"),
    ],
)
def test_refuses_before_any_work(world: ScoringWorld, tmp_path: Path, change: dict, match: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ScoreRefusal, match=match):
        _score(world, world.data, out, **change)
    assert not out.exists()


def test_a_malformed_csv_row_is_refused_and_leaves_the_output_folder_reusable(world: ScoringWorld,
                                                                               tmp_path: Path) -> None:
    """A row with one cell too many is found only while staging, after the header check: the refusal names the
    line, and --out is left as it was, so the same command runs once the file is mended."""
    data = tmp_path / "data"
    data.mkdir()
    for f in world.data.glob("*.parquet"):
        (data / f.name).write_bytes(f.read_bytes())
    regimens = pd.read_parquet(data / "regimens.parquet")
    (data / "regimens.parquet").unlink()
    regimens.to_csv(data / "regimens.csv", index=False)
    lines = (data / "regimens.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    mended = "".join(lines)
    lines[4] = lines[4].rstrip("\n") + ",extra\n"
    (data / "regimens.csv").write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(ScoreRefusal, match=r"regimens\.csv.*line 5.*unreadable_table"):
        _score(world, data, out)
    assert not out.exists() or not any(out.iterdir())
    (data / "regimens.csv").write_text(mended, encoding="utf-8")
    manifest = _score(world, data, out)
    assert manifest["counts"]["scored_patients"] + manifest["counts"]["rejected_patients"] == \
        manifest["counts"]["input_patients"] > 0


def test_a_crash_while_staging_leaves_the_output_folder_reusable(world: ScoringWorld, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review: an error other than a refusal while staging (Arrow's, on a table exported in pieces with
    their own dictionaries) left _work/run.json behind, so the same command on the mended input was refused as
    'a different run'. A first run that fails while staging leaves --out as it was, whatever the error."""
    import pipeline.score as score

    data = tmp_path / "data"
    shutil.copytree(world.data, data)

    def crash(*_: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(score, "stage_tables", crash)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        _score(world, data, out, workers=0)
    assert not out.exists()
    monkeypatch.undo()
    patients = pd.read_parquet(data / "patients.parquet")
    patients.iloc[::-1].to_parquet(data / "patients.parquet", index=False)  # the mended input: another file
    manifest = _score(world, data, out, workers=0)
    assert manifest["counts"]["scored_patients"] + manifest["counts"]["rejected_patients"] == len(patients)


def _register_variant(tmp_path: Path, name: str, extra_columns: tuple[str, ...] = (), **changes: object) -> str:
    """The champion's bundle with attributes changed (and `extra_columns` claimed in its metadata's feature
    contract), logged as a new model in the same store; its URI."""
    import joblib
    import mlflow

    from pipeline import registry

    model = registry.load_by_alias(registry.CHAMPION).unwrap_python_model().model
    for key, value in changes.items():
        setattr(model, key, value)
    bundle = tmp_path / name / registry.BUNDLE_FILE
    bundle.parent.mkdir()
    joblib.dump(model, bundle)
    example = pd.DataFrame(np.ones((1, len(model.contract.columns))), columns=list(model.contract.columns))
    recorded = registry.model_metadata(model)
    recorded["escalate"]["feature_columns"] += list(extra_columns)
    with mlflow.start_run(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "model_metadata", lambda _: recorded)
        return registry.log_model(model, bundle, example, name=name).model_uri


def test_refuses_a_model_whose_feature_contract_does_not_match(world: ScoringWorld, tmp_path: Path) -> None:

    uri = _register_variant(tmp_path, "skewed", extra_columns=("ck_velocity_per_day",))
    out = tmp_path / "out"
    with pytest.raises(ScoreRefusal, match="ck_velocity_per_day"):
        _score(world, world.data, out, model_uri=uri)
    assert not out.exists()


def test_scores_with_the_models_feature_settings_not_params(world: ScoringWorld, tmp_path: Path) -> None:
    """Settings recorded in the model decide the features: settings that cannot build its columns (a 30-day
    change window instead of the trained 91 days) are refused, and so is a model that recorded none."""
    from features.config import LabelConfig
    from models.bundle import RecordedSettings
    from pipeline import registry

    model = registry.load_by_alias(registry.CHAMPION).unwrap_python_model().model
    assert model.data_settings is not None and model.feature_config().change_windows_days == (91, 182)
    drifted = model.data_settings.features.model_copy(update={"change_windows_days": (30, 182)})
    uri = _register_variant(tmp_path, "drifted",
                            data_settings=RecordedSettings(features=drifted, labels=LabelConfig()))
    with pytest.raises(ScoreRefusal, match="feature contract does not match"):
        _score(world, world.data, tmp_path / "out", model_uri=uri)
    bare = _register_variant(tmp_path, "bare", data_settings=None)
    with pytest.raises(ScoreRefusal, match="records no feature settings"):
        _score(world, world.data, tmp_path / "out", model_uri=bare)
    assert not (tmp_path / "out").exists()


def test_refusals_come_before_the_model_is_loaded(world: ScoringWorld, reference, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad alias, an --out in the way or of another run are refused from the registry and the model's metadata
    alone: no process loads the model (which takes ~a minute for the real one)."""
    import mlflow

    def no_load(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded before a refusal")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", no_load)
    with pytest.raises(ScoreRefusal, match="no-such-alias"):
        _score(world, world.data, tmp_path / "a", model_uri="models:/escalate-response@no-such-alias", workers=0)
    blocker = tmp_path / "file.txt"
    blocker.write_text("in the way", encoding="utf-8")
    with pytest.raises(ScoreRefusal, match="is a file"):
        _score(world, world.data, blocker / "out", workers=0)
    with pytest.raises(ScoreRefusal, match="is a file"):
        _score(world, world.data, blocker, workers=0)
    with pytest.raises(ScoreRefusal, match="different run"):
        _score(world, world.data, reference[0], as_of="2026-09-01", workers=0)


def test_refuses_an_output_folder_without_write_permission(world: ScoringWorld, read_only_folder: Path) -> None:
    with pytest.raises(ScoreRefusal, match="not writable"):
        _score(world, world.data, read_only_folder / "out", workers=0)


def test_a_run_where_every_patient_is_rejected_says_nothing_was_scored(world: ScoringWorld, tmp_path: Path) -> None:
    data = tmp_path / "all-bad"
    data.mkdir()
    for f in world.data.glob("*.parquet"):
        (data / f.name).write_bytes(f.read_bytes())
    patients = pd.read_parquet(world.data / "patients.parquet").astype({"sex": object})
    patients["sex"] = "X"
    patients.to_parquet(data / "patients.parquet", index=False)
    manifest = _score(world, data, tmp_path / "out", workers=0)
    assert manifest["nothing_scored"] is True
    assert manifest["counts"]["scored_patients"] == 0
    assert manifest["counts"]["rejected_patients"] == len(patients)


def test_the_parts_of_a_run_read_as_one_table(world: ScoringWorld, tmp_path: Path) -> None:
    """Found by a review: a chunk whose patients were all rejected wrote null-typed columns, text columns switched
    between string and large_string, and as_of was written in nanoseconds (Spark cannot read it), so the parts of
    one run could not be read as one table. Every part now has one fixed schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    shutil.copytree(world.data, data)
    patients = pd.read_parquet(data / "patients.parquet").astype({"sex": object})
    first = patients["patient_id"].astype(str).str.strip().min()
    patients.loc[patients["patient_id"] == first, "sex"] = "X"  # chunk 0's only patient: rejected
    patients.to_parquet(data / "patients.parquet", index=False)
    out = tmp_path / "out"
    manifest = _score(world, data, out, chunk_patients=1, workers=0)
    assert manifest["counts"]["rejected_patients"] == 1
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == len(patients) and pq.ParquetFile(parts[0]).metadata.num_rows == 0
    schemas = {pq.read_schema(p).remove_metadata() for p in parts}
    assert len(schemas) == 1
    schema = schemas.pop()
    assert schema.field("as_of").type == pa.timestamp("us") and schema.field("patient_id").type == pa.string()
    whole = pd.read_parquet(parts)
    assert len(whole) == manifest["counts"]["output_rows"] and first not in set(whole["patient_id"])
    assert (whole["as_of"] == pd.Timestamp(AS_OF)).all()


def test_an_id_with_a_nul_or_of_300_characters_rejects_that_patient_not_the_run(world: ScoringWorld,
                                                                               tmp_path: Path) -> None:
    """Such ids break the contract's identifier rules (validate and features reject the patient too); one of them
    must not block a population: the patient is rejected whole into rejects.parquet naming table, row and rule,
    counted as an input and a rejected patient, and everyone else is scored."""
    data = tmp_path / "bad-ids"
    data.mkdir()
    patients = pd.read_parquet(world.data / "patients.parquet")
    first, second = patients["patient_id"].iloc[3], patients["patient_id"].iloc[7]
    renamed = {first: f"{first}\x00", second: "L" * 300}
    for f in world.data.glob("*.parquet"):
        table = pd.read_parquet(f)
        table["patient_id"] = table["patient_id"].replace(renamed)
        table.to_parquet(data / f.name, index=False)
    out = tmp_path / "out"
    manifest = _score(world, data, out, workers=0)
    counts = manifest["counts"]
    assert (counts["input_patients"], counts["rejected_patients"], counts["unknown_patients"]) == (
        len(patients), 2, 0)
    assert counts["scored_patients"] == len(patients) - 2
    rejects = pd.read_parquet(out / REJECTS)
    for pid, rule in zip(renamed.values(), ("identifier_nul", "identifier_too_long"), strict=True):
        own = rejects[rejects["patient_id"] == pid]
        assert set(own["rule"]) == {rule} and set(own["column"]) == {"patient_id"}
        row = int(np.flatnonzero(pd.read_parquet(data / "patients.parquet")["patient_id"] == pid)[0])
        assert ["patients", row] in own[["table", "row"]].values.tolist()
    scored = read_output(out)
    assert set(renamed.values()).isdisjoint(scored["patient_id"]) and first not in set(scored["patient_id"])
    assert scored["patient_id"].nunique() == len(patients) - 2


def test_refuses_an_output_folder_of_another_run(world: ScoringWorld, reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ScoreRefusal, match="different run.*as_of"):
        _score(world, world.data, out, as_of="2026-09-01")
    with pytest.raises(ScoreRefusal, match="different run.*settings"):
        _score(world, world.data, out, chunk_patients=5)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ScoreRefusal, match="not empty"):
        _score(world, world.data, foreign)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    again = _score(world, world.data, out)  # the same command on a finished run: nothing left to do
    assert again == json.loads((out / MANIFEST).read_text(encoding="utf-8")) == reference[1]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # not even the manifest
    # a run stopped between writing its manifest and removing its staged copy of the input (patient data): the
    # same command removes it, and the manifest stands
    (out / "_work" / "staging" / "patients").mkdir(parents=True)
    (out / "_work" / "staging" / "patients" / "0.arrow").write_bytes(b"patient rows")
    (out / "_work" / "staged.json").write_text('{"rows": {}}', encoding="utf-8")
    assert _score(world, world.data, out) == reference[1]
    assert not (out / "_work" / "staging").exists() and not (out / "_work" / "staged.json").exists()


def test_a_run_resumes_with_the_day_it_started_with(world: ScoringWorld, reference, tmp_path: Path) -> None:
    """Found by a review: resuming with another --today (the same command without --today, run the next day) was
    accepted, so one output mixed two days' contract rules (a record dated between them rejected a patient in one
    chunk only) under a manifest naming the second day; and rerunning a finished run rewrote its manifest's today
    and timings. --today is part of the run's identity: another one is refused saying which day resumes it, the
    command without --today resumes with the run's own day, and a finished run's manifest stands."""
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    (out / MANIFEST).unlink()
    (out / "part-00001.parquet").unlink()  # killed before its second chunk
    with pytest.raises(ScoreRefusal, match=rf"differs in: today\); .*pass --today {TODAY} \(the day it started"):
        _score(world, world.data, out, today="2026-12-01")
    resumed = _score(world, world.data, out, today=None, workers=0)  # no --today: the day the run started with
    assert resumed["today"] == TODAY and resumed["chunks"]["run_now"] == 1
    assert (out / "part-00001.parquet").read_bytes() == (reference[0] / "part-00001.parquet").read_bytes()
    written = (out / MANIFEST).read_bytes()
    assert _score(world, world.data, out, today=None, workers=0) == json.loads(written)
    assert (out / MANIFEST).read_bytes() == written


def test_a_second_run_on_a_folder_in_use_is_refused_and_touches_nothing(world: ScoringWorld, reference,
                                                                       tmp_path: Path) -> None:
    """Found by a review: the same command started again on an --out whose run was still going (as 'rerun to
    resume' invites) scored beside it, and the first to finish removed the staging the other still read: 25 of
    60 patients lost behind a manifest saying complete. The folder is now held by one run at a time."""
    from pipeline.score import run_lock

    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    (out / MANIFEST).unlink()
    (out / "part-00001.parquet").unlink()  # a run not finished yet
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with run_lock(out):  # that run, still going
        with pytest.raises(ScoreRefusal, match="another scoring run is using this folder now"):
            _score(world, world.data, out, workers=0)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    resumed = _score(world, world.data, out, workers=0)  # once it has ended, the same command resumes
    assert resumed["chunks"]["run_now"] == 1 and resumed["counts"] == reference[1]["counts"]


@pytest.mark.parametrize(("workers", "chunks_per_worker"), [(0, 25), (1, 1), (2, 1)])
def test_where_chunks_run_does_not_change_the_output(world: ScoringWorld, reference, tmp_path: Path,
                                                    workers: int, chunks_per_worker: int) -> None:
    """In this process, one worker replaced after every chunk, or two in parallel: the same bytes as the default
    run; and fresh workers take over every `workers x chunks_per_worker` chunks (what bounds their memory)."""
    whole, whole_manifest = reference
    out = tmp_path / "out"
    manifest = _score(world, world.data, out, workers=workers, chunks_per_worker=chunks_per_worker)
    generations = -(-manifest["chunks"]["total"] // max(workers * chunks_per_worker, 1))
    if workers == 0:
        assert manifest["chunks"]["processes"] == 1 and manifest["chunks"]["chunks_per_worker"] is None
    elif workers == 1:
        assert manifest["chunks"]["processes"] == generations  # one chunk, one process
    else:
        assert manifest["chunks"]["processes"] >= generations
    names = sorted(p.name for p in whole.glob("*.parquet"))
    assert names == sorted(p.name for p in out.glob("*.parquet"))
    for name in names:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert manifest["counts"] == whole_manifest["counts"]


def _command(world: ScoringWorld, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "score", "--data", str(world.data), "--as-of", AS_OF,
            "--model", world.model_uri, "--out", str(out), "--chunk-patients", str(CHUNK), "--explain-top", "2",
            "--today", TODAY, "--no-progress"]


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc (Linux)")
def test_killed_run_resumes_to_the_same_output(world: ScoringWorld, reference, tmp_path: Path) -> None:
    """SIGKILL the CLI once its first chunk is written (plus a half-written temp file, as a kill mid-write
    leaves), rerun the same job: the output equals the uninterrupted reference byte for byte."""
    whole, whole_manifest = reference
    env = {**os.environ, "MLFLOW_TRACKING_URI": world.tracking_uri}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(world, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(killed.glob("part-*.parquet")):
        if proc.poll() is not None:
            pytest.fail(f"score exited before its first chunk: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    workers = _descendants(proc.pid)
    assert workers, "the local engine scores in worker processes by default"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10  # the workers end with the run: none goes on writing parts
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)]
    n_before = len(list(killed.glob("part-*.parquet")))
    assert 1 <= n_before < whole_manifest["chunks"]["total"] and not (killed / MANIFEST).exists()
    (killed / ".part-00002.parquet.half.tmp").write_bytes(b"PAR1 half a file")

    resumed = _score(world, world.data, killed)
    assert resumed["chunks"]["resumed"] == n_before
    assert resumed["chunks"]["run_now"] == whole_manifest["chunks"]["total"] - n_before
    a, b = dict(resumed), dict(whole_manifest)
    for key in ("timings", "chunks"):
        a.pop(key), b.pop(key)
    assert a == b
    names = sorted(p.name for p in whole.glob("*.parquet"))
    assert names == sorted(p.name for p in killed.glob("*.parquet"))
    for name in names:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    assert not list(killed.rglob("*.tmp"))
