"""Same deps and params, same bytes, whatever the machine's thread count: dvc.yaml promises every stage's outputs
depend only on them (`dvc repro --force` leaves dvc.lock unchanged), but a multi-threaded BLAS adds up in an order
its thread count sets, so a 2-core machine trained another bundle than a 1-core one. Large enough for OpenBLAS to
split its work (about 2,000 decisions x 140 features); marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from tests.model.synthetic_escalate import mlflow_store, write_stage_inputs

pytestmark = pytest.mark.slow

LINEAR = {"learner": "linear", "safety_learner": "linear"}
N_EXTRA = 120


def _stage_inputs(root: Path) -> dict[str, Path]:
    """The synthetic cohort with `N_EXTRA` more numeric features (what a real feature table's width makes BLAS
    split across threads), in the feature table and its dictionary."""
    paths = write_stage_inputs(root, n_patients=1000, train_overrides=LINEAR)
    features = pd.read_parquet(paths["features"] / "features.parquet")
    rng = np.random.default_rng(3)
    extra = pd.DataFrame(rng.normal(size=(len(features), N_EXTRA)), columns=[f"lab_{j}" for j in range(N_EXTRA)])
    pd.concat([features, extra], axis=1).to_parquet(paths["features"] / "features.parquet", index=False)
    dictionary = paths["features"] / "feature_dictionary.json"
    entries = json.loads(dictionary.read_text(encoding="utf-8"))
    entries += [{"feature": c, "clinical_feature": c, "label": c, "unit": ""} for c in extra.columns]
    dictionary.write_text(json.dumps(entries), encoding="utf-8")
    return paths


def _train_and_evaluate(root: Path, threads: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The train and evaluate stages as a machine whose thread pools have `threads` threads runs them: the bytes
    of their DVC outputs."""
    from pipeline.evaluate import run_evaluate
    from pipeline.train import run_train

    root.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(root))
    paths = _stage_inputs(root)
    with threadpool_limits(limits=threads):
        run_train(paths["params"], paths["features"], paths["split"], paths["train"], root)
        run_evaluate(paths["params"], paths["features"], paths["split"], paths["train"], paths["evaluate"], root)
    outputs = [*sorted((paths["train"] / "model").iterdir()), paths["train"] / "overlap.json",
               *sorted((paths["evaluate"] / "tables").iterdir()), paths["evaluate"] / "metrics.json"]
    return {str(p.relative_to(root)): p.read_bytes() for p in outputs}


def test_train_and_evaluate_write_the_same_bytes_on_one_and_on_two_threads(tmp_path, monkeypatch):
    one = _train_and_evaluate(tmp_path / "one", 1, monkeypatch)
    two = _train_and_evaluate(tmp_path / "two", 2, monkeypatch)
    assert "data/train/model/escalate_model.joblib" in one and "data/evaluate/metrics.json" in one
    assert sorted(one) == sorted(two)
    assert [name for name in one if one[name] != two[name]] == []
