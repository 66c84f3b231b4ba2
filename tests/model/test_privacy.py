"""After a tiny train + evaluate run, no patient identifier or birth year appears in any MLflow param, tag,
metric name, run name, registered-model text or text artifact (only aggregate tables and plots leave)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.model.synthetic_escalate import birth_years, mlflow_store, write_stage_inputs

REPO = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = {".json", ".md", ".csv", ".txt", ".yaml", ".yml", ".py", ".html", ""}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Train and evaluate on the synthetic cohort (with simulator truth) against a temporary store."""
    root = tmp_path_factory.mktemp("privacy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_store(root))
        paths = write_stage_inputs(root, n_patients=120, with_truth=True,
                                   train_overrides={"learner": "linear", "safety_learner": "linear"})
        from pipeline.evaluate import run_evaluate
        from pipeline.train import run_train

        record = run_train(paths["params"], paths["features"], paths["split"], paths["train"], root)
        metrics = run_evaluate(paths["params"], paths["features"], paths["split"], paths["train"],
                               paths["evaluate"], root)
        features = pd.read_parquet(paths["features"] / "features.parquet")
        yield root, record, metrics, features


def _identifiers(features: pd.DataFrame) -> tuple[set[str], set[str]]:
    ids = set(features["patient_id"].astype(str)) | set(features["decision_id"].astype(str))
    return ids, {str(y) for y in birth_years(features)}


def _leaks(text: str, ids: set[str], years: set[str]) -> list[str]:
    found = [i for i in ids if i in text]
    # whole 4-digit numbers: not parts of decimals, nor of hex ids such as MLflow's "m-0b16…6d1969d"
    tokens = set(re.findall(r"(?<![\w.])\d{4}(?![\w.])", text))
    found += sorted(tokens & years)
    if "birth_year" in text:
        found.append("birth_year")
    return found


def test_run_metadata_has_no_identifiers(logged):
    from mlflow.tracking import MlflowClient

    _, record, _, features = logged
    ids, years = _identifiers(features)
    run = MlflowClient().get_run(record["run_id"])
    # MLflow holds full precision; the stage's outputs are rounded to 4 decimals (same bytes on another CPU)
    assert run.data.metrics["response_auroc"] == pytest.approx(logged[2]["response_auroc"], abs=5e-5)
    texts = {
        "run name": run.info.run_name,
        "params": " ".join(f"{k}={v}" for k, v in run.data.params.items()),
        "tags": " ".join(f"{k}={v}" for k, v in run.data.tags.items() if k != "mlflow.log-model.history"),
        "metric names": " ".join(run.data.metrics),
    }
    for where, text in texts.items():
        assert _leaks(text, ids, years) == [], where
    assert run.info.run_name.startswith("train-linear-")


def test_registered_model_text_has_no_identifiers(logged):
    from mlflow.tracking import MlflowClient

    _, record, _, features = logged
    ids, years = _identifiers(features)
    version = MlflowClient().get_model_version("escalate-response", record["model_version"])
    assert "not validated for clinical use" in version.description
    text = version.description + " ".join(f"{k}={v}" for k, v in version.tags.items())
    assert _leaks(text, ids, years) == []


def test_text_artifacts_have_no_identifiers(logged):
    root, record, _, features = logged
    ids, years = _identifiers(features)
    run_dirs = [p for p in (root / "mlruns").rglob("*") if p.is_dir() and record["run_id"] in p.name]
    models = [p for p in (root / "mlruns").rglob("models") if p.is_dir()]
    files = [f for d in run_dirs + models for f in d.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES]
    # the model ships the project's own source (models-from-code): exact copies of repository files, no data
    shipped = [f for f in files if "code" in f.relative_to(root / "mlruns").parts]
    assert shipped and all(f.suffix == ".py" for f in shipped)
    for f in shipped:
        rel = Path(*f.parts[f.parts.index("code") + 1:])
        assert f.read_bytes() == (REPO / rel).read_bytes(), rel
    files = [f for f in files if f not in shipped]
    names = {f.name for f in files}
    assert {"model_card.md", "metrics.json", "decision_value.csv", "input_example.json", "MLmodel"} <= names
    for f in files:
        assert _leaks(f.read_text(encoding="utf-8", errors="replace"), ids, years) == [], f


def test_the_check_would_catch_a_leak(logged):
    _, _, _, features = logged
    ids, years = _identifiers(features)
    pid = sorted(ids)[0]
    assert _leaks(f"row of {pid}", ids, years) == [pid]
    year = sorted(years)[0]
    assert _leaks(f"born {year}, ratio 0.{year}1", ids, years) == [year]


def test_evaluate_wrote_outputs_for_dvc(logged):
    root, _, metrics, _ = logged
    out = root / "data/evaluate"
    for name in ("metrics.json", "model_card.md", "plots/calibration.csv", "plots/roc.csv", "plots/qini.csv",
                 "plots/effect_scatter.csv", "tables/decision_value.csv", "tables/subgroups.csv",
                 "tables/simulator.csv", "tables/factual.csv", "figures/calibration.png", "figures/qini.png"):
        assert (out / name).is_file(), name
    # the headline coverage is the per-option coverage weighted by eligible decisions (its quality on a real
    # cohort is checked in tests/test_end_to_end.py; 120 synthetic patients say little about it)
    sim = pd.read_csv(out / "tables/simulator.csv").dropna(subset=["coverage"])
    weighted = (sim["coverage"] * sim["n_eligible"]).sum() / sim["n_eligible"].sum()
    assert metrics["sim_interval_coverage"] == pytest.approx(weighted, abs=1e-3)
    assert metrics["sim_matched_decisions"] == metrics["n_test_decisions"]
    card = (out / "model_card.md").read_text()
    for heading in ("Intended use", "Data and population", "Outcome", "Options and eligibility",
                    "Performance on held-out patients", "Limitations"):
        assert f"## {heading}" in card
    assert "no unmeasured confounding" in card
    assert "TIS) ≥ 40" in card
    flat = json.loads(Path(out / "metrics.json").read_text())
    assert all(v is None or isinstance(v, int | float) for v in flat.values())  # flat, for `dvc metrics show`
    assert {"auroc", "ece", "policy_value", "pehe", "regret"} <= set(flat)  # the headline few, short for the terminal
    full = json.loads(Path(out / "tables/headline.json").read_text())
    assert {"response_auroc", "response_ece", "decision_value_recommended", "sim_sqrt_pehe", "sim_regret"} <= set(full)
