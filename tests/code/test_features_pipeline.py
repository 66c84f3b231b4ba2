"""`escalate features` / `escalate split` end to end: the seed case and a small simulated cohort with truth."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import SEED_CASE

SEED = SEED_CASE
runner = CliRunner()


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_seed_case_training_mode_counts_every_decision(tmp_path):
    out = tmp_path / "features"
    invoke("features", "--data", str(SEED), "--today", "2026-11-25", "--out", str(out))
    counts = json.loads((out / "counts.json").read_text())
    # 2025-11-18 continue; 2026-05-19 rituximab + tocilizumab (other); 2026-11-17: window runs past "today"
    assert counts["decision_points"] == 3
    assert counts["options_taken"] == {"continue": 2, "other": 1}
    assert (counts["other_changes"], counts["option_window_incomplete"], counts["decisions_written"]) == (1, 1, 1)
    decisions = pd.read_parquet(out / "decisions.parquet")
    features = pd.read_parquet(out / "features.parquet")
    assert decisions["decision_id"].tolist() == features["decision_id"].tolist() == ["SEED-0001:2025-11-18"]
    assert decisions["total_improvement_score"].tolist() == [0.0]  # no improvement by May 2026
    assert {"eligible_add_ivig", "ineligible_reason_add_ivig"} <= set(decisions.columns)
    dictionary = pd.DataFrame(json.loads((out / "feature_dictionary.json").read_text()))
    assert set(dictionary["feature"]) == set(features.columns) - {"patient_id", "decision_id", "as_of"}
    current = pd.read_parquet(out / "current_regimen.parquet")
    assert set(current["generic"]) == {"hydroxychloroquine", "mycophenolate", "ivig", "prednisone"}

    invoke("split", "--features-dir", str(out), "--out", str(tmp_path / "split"))
    split = pd.read_parquet(tmp_path / "split" / "split.parquet")
    assert split["patient_id"].tolist() == ["SEED-0001"] and split["set"].isin(["train", "test"]).all()


def test_scoring_mode_one_row_per_patient(tmp_path):
    target = tmp_path / "today.parquet"
    invoke("features", "--data", str(SEED), "--today", "2026-11-25", "--as-of", "2026-11-18", "--out", str(target))
    f = pd.read_parquet(target)
    assert len(f) == 1 and f["ivig_dose_fraction"].iloc[0] == pytest.approx(0.5)
    assert (tmp_path / "today_feature_dictionary.json").is_file()
    current = pd.read_parquet(tmp_path / "today_current_regimen.parquet")
    assert current.set_index("generic").loc["ivig", "status"] == "below"
    # before the first visit (2025-11-18) nothing is recorded: no row of an average patient, as in scoring
    early = tmp_path / "early.parquet"
    invoke("features", "--data", str(SEED), "--today", "2026-11-25", "--as-of", "2025-06-01", "--out", str(early))
    assert pd.read_parquet(early).empty


@pytest.mark.slow
def test_simulated_cohort_derivation_recovers_the_truth(tmp_path):
    cohort = tmp_path / "cohort"
    invoke("simulate", "--patients", "120", "--seed", "7", "--mc-draws", "10", "--out", str(cohort))
    out = tmp_path / "features"
    invoke("features", "--data", str(cohort), "--out", str(out), "--today", "2026-11-01")
    truth = json.loads((out / "counts.json").read_text())["truth"]
    assert truth["precision"] >= 0.95 and truth["recall"] >= 0.95
    assert truth["option_accuracy_complete_windows"] >= 0.95
    # the default simulator (v2) leaves core measures out of some outcome visits; the label then scores what the
    # record holds (a carried-forward value), the truth the full examination: exact agreement on most, not all
    assert truth["labels"]["tis_exact_agreement"] >= 0.93
    assert truth["labels"]["response_agreement"] >= 0.95
    # the training run's MLflow params say what simulated this cohort (120 patients, seed 7), not params.yaml's 3000
    from pipeline.train import simulated_with

    assert simulated_with(out)["simulate"] == {"patients": 120, "mode": "observational", "today": "2026-11-01",
                                               "seed": 7, "config": "configs/simulator.yaml", "mc_draws": 10}


def test_features_of_data_that_were_not_simulated_carry_no_simulation_settings(tmp_path):
    from pipeline.train import simulated_with

    invoke("features", "--data", str(SEED), "--today", "2026-11-25", "--out", str(tmp_path / "f"))
    assert "simulation" not in json.loads((tmp_path / "f" / "counts.json").read_text())
    assert simulated_with(tmp_path / "f") == {}  # params.yaml's simulate: section says nothing about these data


def test_a_typo_in_a_list_of_events_or_drug_classes_is_refused_naming_the_key(tmp_path):
    """Found by a probe: `safety_events: [serios_infection, …]` silently dropped most safety events, and
    `option_ignore_classes: [glucocorticoidz]` turned steroid tapers into decisions."""
    from pipeline.cli_types import Refusal
    from pipeline.features import run_features
    from pipeline.settings import load_settings

    settings = load_settings()
    typo = settings.model_copy(update={"labels": settings.labels.model_copy(
        update={"safety_events": ("serios_infection", "cytopenia")})})
    with pytest.raises(Refusal, match=r"labels.safety_events: \['serios_infection'\] not known .*serious_infection"):
        run_features(typo, data=SEED, out=tmp_path / "f", today="2026-11-25")
    decisions = settings.features.decisions.model_copy(update={"option_ignore_classes": ("glucocorticoidz",)})
    typo = settings.model_copy(update={"features": settings.features.model_copy(update={"decisions": decisions})})
    with pytest.raises(Refusal, match=r"option_ignore_classes: \['glucocorticoidz'\] not known"):
        run_features(typo, data=SEED, out=tmp_path / "f", today="2026-11-25")
