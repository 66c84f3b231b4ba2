"""Promotion rule: `champion` moves to the candidate only when it beats the champion on held-out decision value
AND calibration; otherwise the reason is printed; the first evaluated candidate becomes champion."""

from __future__ import annotations

import math

import pytest
import yaml

from pipeline.promote import PromotionRule, promotion_decision
from tests.model.synthetic_escalate import mlflow_store

CHAMPION = {"decision_value_recommended": 0.50, "response_ece": 0.05}


@pytest.mark.parametrize(
    "candidate, rule, promote, reason",
    [
        ({"decision_value_recommended": 0.55, "response_ece": 0.04}, PromotionRule(), True, "beats the champion"),
        ({"decision_value_recommended": 0.55, "response_ece": 0.05}, PromotionRule(), True, "beats the champion"),
        ({"decision_value_recommended": 0.55, "response_ece": 0.08}, PromotionRule(), False, "worse calibrated"),
        ({"decision_value_recommended": 0.50, "response_ece": 0.01}, PromotionRule(), False,
         "decision value is not higher"),
        ({"decision_value_recommended": 0.45, "response_ece": 0.09}, PromotionRule(), False,
         "not higher and it is worse calibrated"),
        ({"decision_value_recommended": 0.52, "response_ece": 0.04},
         PromotionRule(min_decision_value_gain=0.05), False, "needs > 0.05"),
        ({"decision_value_recommended": 0.56, "response_ece": 0.06},
         PromotionRule(ece_tolerance=0.02), True, "allowed up to 0.070"),
        ({"decision_value_recommended": 0.60}, PromotionRule(), False, "run `escalate evaluate` first"),
        ({"decision_value_recommended": math.nan, "response_ece": 0.01}, PromotionRule(), False,
         "no held-out decision_value_recommended"),
    ],
    ids=["better-both", "tie-calibration", "worse-calibration", "tie-value", "worse-both", "margin-not-met",
         "within-tolerance", "not-evaluated", "nan-value"],
)
def test_promotion_rule(candidate, rule, promote, reason):
    decision = promotion_decision(candidate, CHAMPION, rule)
    assert decision.promote is promote
    assert reason in decision.reason
    assert decision.judged is ("candidate has no held-out" not in decision.reason)  # the stage fails if not judged


def test_first_evaluated_candidate_becomes_champion():
    decision = promotion_decision({"decision_value_recommended": 0.3, "response_ece": 0.2}, None)
    assert decision.promote
    assert "first evaluated candidate" in decision.reason


def test_different_evaluation_data_is_flagged():
    decision = promotion_decision({"decision_value_recommended": 0.6, "response_ece": 0.01}, CHAMPION,
                                  same_data=False)
    assert decision.promote and "different data" in decision.reason


@pytest.fixture()
def registry_store(tmp_path, monkeypatch):
    """A temporary store with a registered model whose versions point at runs carrying held-out metrics."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(tmp_path))
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline import registry

    registry.setup_mlflow(tmp_path)
    client = MlflowClient()
    client.create_registered_model(registry.MODEL_NAME)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"promote": {"min_decision_value_gain": 0.0, "ece_tolerance": 0.0}}))

    def add_version(metrics: dict[str, float], tags: dict[str, str] | None = None,
                    params: dict[str, str] | None = None) -> str:
        with mlflow.start_run() as run:
            mlflow.log_metrics(metrics)
            mlflow.log_params(params or {})
            mlflow.set_tag("dataset.features.sha256", "same")
            mlflow.set_tags(tags or {})
        version = client.create_model_version(registry.MODEL_NAME, f"runs:/{run.info.run_id}/m", run.info.run_id)
        client.set_registered_model_alias(registry.MODEL_NAME, "candidate", version.version)
        return str(version.version)

    return tmp_path, params, add_version, client


def _champion(client) -> str | None:
    from pipeline import registry

    found = registry.alias_run_id("champion")
    return None if found is None else found[0]


def test_champion_moves_only_for_a_better_candidate(registry_store):
    from typer.testing import CliRunner

    from pipeline.cli import app

    root, params, add_version, client = registry_store
    runner = CliRunner()
    first = add_version({"decision_value_recommended": 0.50, "response_ece": 0.05})
    result = runner.invoke(app, ["promote", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "promoted: no champion yet" in result.output
    assert _champion(client) == first

    worse = add_version({"decision_value_recommended": 0.60, "response_ece": 0.09})
    result = runner.invoke(app, ["promote", "--params", str(params)])
    assert "not promoted" in result.output and "worse calibrated" in result.output
    assert _champion(client) == first != worse

    better = add_version({"decision_value_recommended": 0.58, "response_ece": 0.04})
    result = runner.invoke(app, ["promote", "--params", str(params)])
    assert "promoted: candidate beats the champion" in result.output
    assert _champion(client) == better
    assert "beats the champion" in client.get_model_version("escalate-response", better).tags["promotion"]

    result = runner.invoke(app, ["promote", "--params", str(params)])
    assert "already the champion" in result.output


def test_the_champions_fitted_model_with_fixed_code_replaces_it(registry_store):
    """A fix to the shipped code or requirements (shap once missing) registers the same bundle again: it cannot
    beat itself on held-out value, yet the champion must be the one that runs; another bundle still has to win."""
    from pipeline import registry
    from pipeline.promote import run_promote

    root, params, add_version, client = registry_store
    held_out = {"decision_value_recommended": 0.50, "response_ece": 0.05}
    first = add_version(held_out, {registry.BUNDLE_SHA_TAG: "b1", registry.CODE_SHA_TAG: "c1"})
    assert run_promote(params, root).promote and _champion(client) == first
    fixed = add_version(held_out, {registry.BUNDLE_SHA_TAG: "b1", registry.CODE_SHA_TAG: "c2"})
    decision = run_promote(params, root)
    assert decision.promote and "the champion's fitted model with the code and requirements shipped now" in \
        decision.reason
    assert _champion(client) == fixed
    refit = add_version(held_out, {registry.BUNDLE_SHA_TAG: "b2", registry.CODE_SHA_TAG: "c2"})
    assert not run_promote(params, root).promote and _champion(client) == fixed != refit


def test_unevaluated_candidate_is_not_promoted(registry_store):
    from pipeline.promote import run_promote

    root, params, add_version, client = registry_store
    add_version({"train_decisions": 100.0})
    decision = run_promote(params, root)
    assert not decision.promote and not decision.judged
    assert "escalate evaluate" in decision.reason
    assert _champion(client) is None


def test_promote_stage_fails_on_an_unevaluated_candidate_and_writes_no_evidence(registry_store, tmp_path):
    """Under DVC an exit 0 with empty evidence would mark the pipeline done with nothing judged."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    root, params, add_version, client = registry_store
    add_version({"train_decisions": 100.0})
    evidence = tmp_path / "evidence.json"
    result = CliRunner().invoke(app, ["promote", "--params", str(params), "--evidence", str(evidence)])
    assert result.exit_code == 1
    assert "no held-out figures" in result.output and "escalate evaluate" in result.output
    assert not evidence.exists()
    assert _champion(client) is None


def test_a_candidate_trained_on_another_outcome_is_not_compared_with_the_champion(registry_store):
    """Found by a review: a candidate trained on major response (TIS ≥ 60) was compared with a champion trained on
    moderate response (TIS ≥ 40) by response rate and calibration, figures of different outcomes, and could replace
    it. Promote now keeps the champion, says which label setting differs, and how to move the alias on purpose."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    root, params, add_version, client = registry_store
    moderate = {"labels.response_category": "moderate", "labels.safety_events": "serious_infection,cytopenia",
                "train.response_threshold": "40.0"}
    first = add_version({"decision_value_recommended": 0.50, "response_ece": 0.05}, params=moderate)
    assert CliRunner().invoke(app, ["promote", "--params", str(params)]).exit_code == 0
    major = {**moderate, "labels.response_category": "major", "train.response_threshold": "60.0"}
    other = add_version({"decision_value_recommended": 0.70, "response_ece": 0.01}, params=major)
    result = CliRunner().invoke(app, ["promote", "--params", str(params)])
    assert result.exit_code == 0 and _champion(client) == first != other
    assert "not promoted: champion kept, not compared: the candidate was trained on another outcome" in result.output
    assert "labels.response_category: candidate 'major', champion 'moderate'" in result.output
    assert "train.response_threshold: candidate '60.0', champion '40.0'" in result.output
    assert "move alias 'champion' to the candidate explicitly" in result.output
    # another safety definition is another outcome too; the same definition is compared as before
    add_version({"decision_value_recommended": 0.70, "response_ece": 0.01},
                params={**moderate, "labels.safety_events": "serious_infection"})
    assert "labels.safety_events: candidate 'serious_infection'" in CliRunner().invoke(
        app, ["promote", "--params", str(params)]).output and _champion(client) == first
    same = add_version({"decision_value_recommended": 0.70, "response_ece": 0.01}, params=moderate)
    assert "candidate beats the champion" in CliRunner().invoke(app, ["promote", "--params", str(params)]).output
    assert _champion(client) == same
