"""`escalate train`: fit the Escalate bundle on the training patients, log one MLflow run, register the pyfunc.

Reads `data/features/{features,decisions}.parquet`, the patient split and `params.yaml`; writes the bundle to
`data/train/model/` (later stages load it without MLflow), `data/train/run.json` and `data/train/overlap.json`.
A bundle byte-identical to the `candidate` version's keeps that version and run (no copy is registered).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import ROOT, load_catalog, load_options, one_thread_numerics

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.settings import Settings

FEATURES_DIR = Path("data/features")
SPLIT_DIR = Path("data/split")
TRAIN_DIR = Path("data/train")
def read_split(split_dir: Path) -> pd.DataFrame:
    """The patient split (`patient_id`, `set` in {train, test}) from the Parquet/CSV file(s) in `split_dir`."""
    import pandas as pd

    files = sorted([*Path(split_dir).glob("*.parquet"), *Path(split_dir).glob("*.csv")])
    if not files:
        raise FileNotFoundError(f"no split table (.parquet/.csv) in {split_dir}: run `escalate split` first")
    frames = [pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f, dtype=str) for f in files]
    split = pd.concat(frames, ignore_index=True)
    column = next((c for c in ("set", "split") if c in split.columns), None)
    if column is None or "patient_id" not in split.columns:
        raise ValueError(f"table split ({files[0]}): needs columns patient_id and set (rule: patient split)")
    split = split[["patient_id", column]].rename(columns={column: "set"}).drop_duplicates()
    bad = ~split["set"].isin(["train", "test"])
    if bad.any():
        r = int(bad.to_numpy().nonzero()[0][0])
        raise ValueError(f"table split: row {r}, column 'set' is {split['set'].iloc[r]!r} (rule: train or test)")
    dup = split["patient_id"].duplicated()
    if dup.any():
        r = int(dup.to_numpy().nonzero()[0][0])
        raise ValueError(f"table split: row {r}, patient in both sets (rule: one set per patient)")
    split["patient_id"] = split["patient_id"].astype(str)
    return split


def select_set(frame: pd.DataFrame, split: pd.DataFrame, which: str, table: str) -> pd.DataFrame:
    """Rows of `frame` whose patient is in set `which`; a patient missing from the split is an error."""
    sets = frame["patient_id"].astype(str).map(split.set_index("patient_id")["set"])
    if sets.isna().any():
        r = int(sets.isna().to_numpy().nonzero()[0][0])
        raise ValueError(f"table {table}: row {r}, column 'patient_id' is not in the split (rule: every patient split)")
    return frame[sets.eq(which).to_numpy()].reset_index(drop=True)


def git_revision(root: Path = ROOT) -> tuple[str, bool]:
    """(commit sha or 'unknown', whether the working tree has uncommitted changes)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return sha, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def dvc_stage_hashes(root: Path = ROOT) -> dict[str, str]:
    """`dvc.lock.<stage>` -> sha256 (16 hex) of that stage's lock entry (its deps, params and outs hashes)."""
    import hashlib
    import json

    from pipeline.config import read_yaml

    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = read_yaml(lock).get("stages") or {}
    return {
        f"dvc.lock.{name}": hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for name, entry in stages.items()
    }


def _metric_key(name: str) -> str:
    """An MLflow-safe metric key from a candidate label (`modifier_glm(C=0.1)` -> `modifier_glm_C_0.1`)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("_").replace("__", "_")


@one_thread_numerics
def run_train(
    params: Settings | Path = Path("params.yaml"),
    features_dir: Path = FEATURES_DIR,
    split_dir: Path = SPLIT_DIR,
    out_dir: Path = TRAIN_DIR,
    root: Path = ROOT,
) -> dict[str, Any]:
    """The stage: returns what it wrote to run.json (run id, model version and uri, timings)."""
    import mlflow
    import pandas as pd

    from features.vocabulary import Vocabulary
    from models.bundle import RecordedSettings, TrainingDataError, fit_escalate_model
    from models.explain import with_dose_targets
    from pipeline import registry
    from pipeline.cli_types import Refusal
    from pipeline.io import write_json
    from pipeline.settings import resolve

    started = time.perf_counter()
    settings = resolve(params)
    cfg = settings.train
    vocabulary = load_catalog("drugs", Vocabulary.from_config)
    catalog = load_options(vocabulary)
    features_path = Path(features_dir) / "features.parquet"
    decisions_path = Path(features_dir) / "decisions.parquet"
    features = pd.read_parquet(features_path)
    decisions = pd.read_parquet(decisions_path)
    split = read_split(split_dir)
    train_features = select_set(features, split, "train", "features")

    dictionary_path = Path(features_dir) / "feature_dictionary.json"
    if not dictionary_path.is_file():  # without it the model could not word a reason: say so now, not when scoring
        raise Refusal(f"{dictionary_path}: no such file; `escalate features` writes it beside features.parquet "
                      "(the model words its reasons from it)")
    dictionary = with_dose_targets(pd.read_json(dictionary_path, orient="records"), vocabulary)

    fit_started = time.perf_counter()
    recorded = RecordedSettings(features=settings.features, labels=settings.labels)  # the model carries them
    try:
        model = fit_escalate_model(train_features, decisions, catalog, cfg, dictionary=dictionary,
                                   data_settings=recorded)
    except TrainingDataError as err:  # too few decisions to model: one line before anything is written
        raise Refusal(str(err)) from None
    fit_seconds = time.perf_counter() - fit_started

    model_dir = Path(out_dir) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    bundle_path = model_dir / registry.BUNDLE_FILE
    registry.save_bundle(model, bundle_path)  # same inputs, same bytes (sets written sorted)
    write_json(model.contract.model_dump(), model_dir / "contract.json")
    # what the registered model ships beside the bundle: a change to it is a new version, which DVC must evaluate
    # (evaluate depends on this folder, so the record makes it run again even when the bundle's bytes are the same)
    code_sha = registry.code_fingerprint()
    write_json({"code_sha256": code_sha, "requirements": registry.pip_requirements()}, model_dir / "code.json")
    overlap = pd.DataFrame(model.summary["overlap"])
    write_json({"threshold": cfg.propensity.positivity_threshold, "options": overlap}, Path(out_dir) / "overlap.json")

    sha, dirty = git_revision(root)
    tags = {
        "git.revision": sha,
        "git.dirty": str(dirty).lower(),
        "stage": "train",
        "learner": model.learner_name,
        **dvc_stage_hashes(root),
    }
    for name, path in (("features", features_path), ("decisions", decisions_path)):
        tags[f"dataset.{name}.sha256"] = registry.sha256_file(path)
    for f in sorted(Path(split_dir).glob("*.parquet")):
        tags[f"dataset.split.{f.stem}.sha256"] = registry.sha256_file(f)
    tags[registry.BUNDLE_SHA_TAG] = registry.sha256_file(bundle_path)
    tags[registry.CODE_SHA_TAG] = code_sha

    registry.setup_mlflow(root)
    summary = model.summary
    kept = registry.candidate_with_bundle(tags[registry.BUNDLE_SHA_TAG], tags[registry.CODE_SHA_TAG])
    if kept is not None:  # the same bytes and code as the candidate: keep that version and its held-out metrics
        version, run_id = kept
        run_name = str(mlflow.get_run(run_id).info.run_name)
        model_uri = f"models:/{registry.MODEL_NAME}/{version}"
    else:
        run_name, run_id, model_uri, version = _log_training_run(
            model, settings, tags, fit_seconds, features_dir, out_dir, train_features, git_sha=sha)
    record = {
        "run_id": run_id,
        "run_name": run_name,
        "experiment": registry.EXPERIMENT,
        "registered_model": registry.MODEL_NAME,
        "model_version": version,
        "model_uri": model_uri,
        "alias_uri": f"models:/{registry.MODEL_NAME}@{registry.CANDIDATE}",
        "new_version": kept is None,
        "learner": model.learner_name,
        "modelled_options": summary["modelled_options"],
        "fit_seconds": round(fit_seconds, 2),
        "stage_seconds": round(time.perf_counter() - started, 2),
    }
    write_json(record, Path(out_dir) / "run.json")
    return record


def simulated_with(features_dir: Path) -> dict[str, Any]:
    """`{"simulate": settings}` that simulated the features' cohort, as `escalate simulate` recorded them and
    `escalate features` kept them in counts.json (`--patients` or `--seed` may override params.yaml); {} for data
    that were not simulated, where params.yaml's `simulate:` section says nothing about them."""
    from pipeline.io import read_json

    counts = Path(features_dir) / "counts.json"
    record = read_json(counts).get("simulation") if counts.is_file() else None
    return {"simulate": record} if isinstance(record, dict) else {}


def _log_training_run(model: Any, settings: Settings, tags: dict[str, str], fit_seconds: float, features_dir: Path,
                      out_dir: Path, train_features: pd.DataFrame, *, git_sha: str) -> tuple[str, str, str, str]:
    """Log one MLflow run (tags, params, training counts, selection table, artifacts) and register the bundle
    as the new `candidate`; returns (run name, run id, model uri, version)."""
    import mlflow
    import pandas as pd

    from pipeline import registry

    model_dir = Path(out_dir) / "model"
    run_name = f"train-{model.summary['learner']}-{git_sha[:7]}"
    summary = model.summary
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags(tags)
        mlflow.log_params(registry.flatten_params({**settings.logged_params(), **simulated_with(features_dir)}))
        mlflow.log_metrics({
            "train_decisions": float(summary["n_decisions"]),
            "train_patients": float(summary["n_patients"]),
            "train_response_rate": float(summary["response_rate"]),
            "train_fit_seconds": fit_seconds,
            **{f"train_taken_{k}": float(v) for k, v in summary["option_counts"].items()},
            # how far one patient's chance strays from patients alike (models.intervals.PatientSpread), per head,
            # with the 90 % range of the estimate
            **{f"interval_spread_{key}.{head}": float(v[key])
               for head, v in summary.get("interval_patient_spread", {}).items()
               for key in ("sigma_logit", "sigma_logit_low", "sigma_logit_high")},
        })
        mlflow.log_artifact(str(Path(features_dir) / "feature_dictionary.json"), artifact_path="features")
        mlflow.log_artifact(str(Path(out_dir) / "overlap.json"), artifact_path="train")
        if summary["selection"]:  # learner: auto — every candidate's cross-fitted doubly robust value
            mlflow.log_dict({"chosen": model.learner_name, "candidates": summary["selection"]}, "train/selection.json")
            for row in summary["selection"]:
                for name, key in (("policy_value", "selection_value"), ("dr_loss", "selection_dr_loss")):
                    if pd.notna(row.get(name)):  # a failed candidate has none (NaN)
                        mlflow.log_metric(f"{key}.{_metric_key(row['candidate'])}", row[name])
        mlflow.log_artifact(str(model_dir / "contract.json"), artifact_path="train")
        example = registry.deidentified_example(train_features, key_columns=model.contract.keys)
        model_uri, version = registry.log_and_register(model, model_dir / registry.BUNDLE_FILE, example)
    return run_name, run.info.run_id, model_uri, version
