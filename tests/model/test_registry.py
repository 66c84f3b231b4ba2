"""The registered pyfunc (`models:/escalate-response@candidate`) gives the same table as the in-memory bundle,
carries a signature and a de-identified input example, and the tracking store defaults to the repository."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from tests.model.synthetic_escalate import make_truth, mlflow_store, write_stage_inputs

LINEAR = {"learner": "linear", "safety_learner": "linear"}
#: a feature no training patient has a value of (in the default cohort: the dose of a drug nobody takes)
NEVER_SEEN = "baricitinib_dose_fraction"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny `escalate train` run against a temporary SQLite store."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_store(root))
        paths = write_stage_inputs(root, n_patients=120, with_truth=False, train_overrides=LINEAR,
                                   all_missing=(NEVER_SEEN,), flags_as_numbers=True)
        from pipeline.train import run_train

        record = run_train(paths["params"], paths["features"], paths["split"], paths["train"], root)
        yield root, paths, record


def test_registered_pyfunc_by_alias_matches_the_bundle(trained):
    from pipeline import registry

    root, paths, record = trained
    features = pd.read_parquet(paths["features"] / "features.parquet").head(25)
    bundle = joblib.load(paths["train"] / "model" / registry.BUNDLE_FILE)
    expected = bundle.predict_frame(features, explain_top_k=bundle.explain_top_k)
    pyfunc = registry.load_by_alias("candidate")
    got = pyfunc.predict(features)
    assert bundle.explain_top_k == 3 and "reason_3_text" in got.columns  # the default output carries reasons
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected) == 25 * len(bundle.catalog.names)
    numeric = expected.select_dtypes("number").columns
    np.testing.assert_allclose(got[numeric].to_numpy(float), expected[numeric].to_numpy(float), equal_nan=True)
    for col in ("decision_id", "option", "eligible", "ineligible_reason", "recommended"):
        assert got[col].tolist() == expected[col].tolist()


def test_a_row_without_its_key_is_refused_naming_it(trained):
    """Found by a review: a row with no patient_id (or decision_id, or as_of) was scored, its output joinable to
    nobody; now the row and the key are named, through the registered model too."""
    from pipeline import registry

    root, paths, _ = trained
    features = pd.read_parquet(paths["features"] / "features.parquet").head(5)
    bundle = joblib.load(paths["train"] / "model" / registry.BUNDLE_FILE)
    for key, blank in (("patient_id", None), ("decision_id", "  "), ("as_of", pd.NaT)):
        broken = features.copy()
        broken[key] = broken[key].astype(object)
        broken.loc[3, key] = blank
        with pytest.raises(ValueError, match=rf"table features: row 3, column '{key}' is empty \(rule: a key"):
            bundle.predict_frame(broken, explain_top_k=0)


def test_pyfunc_explain_top_k_param_sets_the_reasons_and_matches_model_reasons(trained):
    from models.explain import model_reasons
    from pipeline import registry

    _, paths, _ = trained
    features = pd.read_parquet(paths["features"] / "features.parquet").head(6)
    bundle = joblib.load(paths["train"] / "model" / registry.BUNDLE_FILE)
    pyfunc = registry.load_by_alias("candidate")
    one = pyfunc.predict(features, params={"explain_top_k": 1})
    assert "reason_1_text" in one.columns and "reason_2_text" not in one.columns
    none = pyfunc.predict(features, params={"explain_top_k": 0})
    assert not any(c.startswith("reason_") for c in none.columns)
    # the reasons are exactly models.explain.model_reasons with the dictionary stored at train time
    reasons = model_reasons(bundle, features, bundle.dictionary, 1)
    merged = one[["row", "option", "reason_1_text", "reason_1_contribution"]].merge(
        reasons, on=["row", "option"], suffixes=("", "_direct"))
    assert merged["reason_1_text"].fillna("").tolist() == merged["reason_1_text_direct"].fillna("").tolist()
    np.testing.assert_allclose(merged["reason_1_contribution"].to_numpy(float),
                               merged["reason_1_contribution_direct"].to_numpy(float), equal_nan=True)
    eligible = one["eligible"].astype(bool).to_numpy()
    assert one.loc[eligible, "reason_1_text"].notna().all()
    assert one.loc[~eligible, "reason_1_text"].isna().all()
    # the dose-target text of the dictionary reached the bundle
    assert "target_text" in bundle.dictionary.columns


def test_signature_declares_the_explain_param(trained):
    import mlflow

    info = mlflow.models.get_model_info("models:/escalate-response@candidate")
    params = {p.name: p for p in info.signature.params.params}
    assert params["explain_top_k"].default == 3
    assert "reason_1_text" in info.signature.outputs.input_names()


@pytest.mark.parametrize("params, expected", [
    (None, 3), ({}, 3), ({"explain_top_k": 0}, 0), ({"explain_top_k": np.int64(5)}, 5), ({"explain_top_k": "2"}, 2),
])
def test_explain_top_k_param(params, expected):
    from pipeline.registry import explain_top_k_param

    assert explain_top_k_param(params, 3) == expected


@pytest.mark.parametrize("bad", [-1, 1.5, "three", None])
def test_explain_top_k_param_rejects_bad_values(bad):
    from pipeline.registry import explain_top_k_param

    with pytest.raises(ValueError, match="explain_top_k"):
        explain_top_k_param({"explain_top_k": bad}, 3)


def test_logging_and_loading_raise_no_type_hint_warning(trained, recwarn):
    from pipeline import registry

    _, paths, _ = trained
    bundle = joblib.load(paths["train"] / "model" / registry.BUNDLE_FILE)
    example = registry.deidentified_example(pd.read_parquet(paths["features"] / "features.parquet"),
                                            key_columns=bundle.contract.keys)
    import mlflow

    with mlflow.start_run():
        registry.log_and_register(bundle, paths["train"] / "model" / registry.BUNDLE_FILE, example, alias="test")
    registry.load_by_alias("test").predict(example)
    assert not [w for w in recwarn if "Add type hints" in str(w.message)]


def test_alias_candidate_points_at_the_run_that_trained(trained):
    from mlflow.tracking import MlflowClient

    from pipeline import registry

    _, paths, record = trained
    version = MlflowClient().get_model_version_by_alias(registry.MODEL_NAME, "candidate")
    assert str(version.version) == record["model_version"]
    assert version.run_id == record["run_id"]
    on_disk = json.loads((paths["train"] / "run.json").read_text())
    assert on_disk["run_id"] == record["run_id"]
    assert on_disk["alias_uri"] == "models:/escalate-response@candidate"


def test_training_again_to_the_same_bytes_keeps_the_candidate_version(trained):
    """DVC skips `evaluate` when the model it depends on is unchanged: a retrain to the same bytes must keep the
    version evaluate judged (and its held-out metrics) instead of registering a copy nothing evaluates."""
    from mlflow.tracking import MlflowClient

    from pipeline import registry
    from pipeline.train import run_train

    root, paths, record = trained
    assert record["new_version"] is True
    client = MlflowClient()
    versions = {v.version for v in client.search_model_versions(f"name='{registry.MODEL_NAME}'")}
    again = run_train(paths["params"], paths["features"], paths["split"], paths["train"], root)
    assert again["new_version"] is False
    assert (again["model_version"], again["run_id"]) == (record["model_version"], record["run_id"])
    assert {v.version for v in client.search_model_versions(f"name='{registry.MODEL_NAME}'")} == versions
    run = client.get_run(record["run_id"]).data
    assert run.metrics["interval_spread_sigma_logit.response"] >= 0  # the interval's patient-spread term, logged
    assert (run.metrics["interval_spread_sigma_logit_low.response"] <= run.metrics["interval_spread_sigma_logit.response"]
            <= run.metrics["interval_spread_sigma_logit_high.response"])  # and the range of that estimate
    tags = run.tags
    assert tags[registry.BUNDLE_SHA_TAG] == registry.sha256_file(paths["train"] / "model" / registry.BUNDLE_FILE)


def test_the_same_bundle_with_other_code_or_requirements_is_a_new_version(tmp_path, monkeypatch):
    """Found by a review: a model whose explanations needed shap was kept as the version registered before shap
    was a requirement, because only the bundle's bytes were compared; the code and requirements it ships count."""
    import mlflow

    from pipeline import registry
    from pipeline.train import run_train

    previous = mlflow.get_tracking_uri()  # the module's store, for the tests after this one
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(tmp_path))
    paths = write_stage_inputs(tmp_path, n_patients=120, with_truth=False, train_overrides=LINEAR)

    def train() -> dict:
        return run_train(paths["params"], paths["features"], paths["split"], paths["train"], tmp_path)

    try:
        first = train()
        assert train()["new_version"] is False  # same bundle, same code: kept
        monkeypatch.setattr(registry, "code_fingerprint", lambda: "0" * 64)  # e.g. a requirement added
        changed = train()
        assert changed["new_version"] is True and changed["model_version"] != first["model_version"]
        assert registry.alias_run_id(registry.CANDIDATE) == (changed["model_version"], changed["run_id"])
    finally:
        mlflow.set_tracking_uri(previous)


def test_evaluate_refuses_to_judge_a_model_its_run_file_does_not_name(trained, tmp_path):
    """run.json is no DVC output: when DVC restores an earlier model from its cache without running train, the file
    still names the later run, and evaluate must not log one model's held-out metrics onto another's run."""
    import shutil

    import typer

    from pipeline import registry
    from pipeline.evaluate import run_evaluate

    root, paths, record = trained
    bundle = paths["train"] / "model" / registry.BUNDLE_FILE
    assert registry.run_holds_bundle(record["run_id"], bundle)
    restored = tmp_path / "train"
    shutil.copytree(paths["train"], restored)
    other = joblib.load(bundle)
    other.summary["restored"] = True  # another model: other bytes
    joblib.dump(other, restored / "model" / registry.BUNDLE_FILE)
    assert not registry.run_holds_bundle(record["run_id"], restored / "model" / registry.BUNDLE_FILE)
    with pytest.raises(typer.BadParameter, match=r"names run .* another model .*`dvc repro --force --single-item train`"):
        run_evaluate(paths["params"], paths["features"], paths["split"], restored, tmp_path / "evaluate", root)
    assert not (tmp_path / "evaluate").exists()  # refused before writing anything


def test_evaluate_refuses_broken_train_outputs_and_foreign_features_on_one_line(trained, tmp_path):
    """Found by a probe: a truncated bundle, a run.json without a run id, a run the tracking store does not hold,
    and features built with other settings than the model's all ended in tracebacks deep inside evaluate."""
    import shutil

    from pipeline import registry
    from pipeline.cli_types import Refusal
    from pipeline.evaluate import run_evaluate

    root, paths, record = trained

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(paths["train"], target)
        return target

    def evaluate(train_dir: Path, features: Path = paths["features"]) -> None:
        run_evaluate(paths["params"], features, paths["split"], train_dir, tmp_path / "evaluate", root)

    truncated = copy("truncated")
    bundle = truncated / "model" / registry.BUNDLE_FILE
    bundle.write_bytes(bundle.read_bytes()[:1000])
    with pytest.raises(Refusal, match=r"escalate_model.joblib: not a model bundle this code can read"):
        evaluate(truncated)
    for i, (text, rule) in enumerate((("{}", "holds no run_id"), ("[]", "holds no run_id"), ("{run", "not valid JSON"))):
        broken = copy(f"run-{i}")
        (broken / "run.json").write_text(text)
        with pytest.raises(Refusal, match=rf"run.json: {rule}"):
            evaluate(broken)
    foreign = copy("foreign")
    (foreign / "run.json").write_text(json.dumps({**record, "run_id": "0" * 32}))
    with pytest.raises(Refusal, match=r"training run 0{32} is not in the tracking store"):
        evaluate(foreign)
    narrow = tmp_path / "features"
    shutil.copytree(paths["features"], narrow)
    table = pd.read_parquet(narrow / "features.parquet")
    table.drop(columns=[c for c in table.columns if c.startswith("physician_global")]).to_parquet(
        narrow / "features.parquet", index=False)
    with pytest.raises(Refusal, match=r"features.parquet does not fit this model .*missing column"):
        evaluate(paths["train"], narrow)
    assert not (tmp_path / "evaluate").exists()  # refused before writing anything


def test_train_refuses_features_without_their_dictionary_before_fitting(trained, tmp_path):
    """Without feature_dictionary.json the model trained silently and could word no reason: scoring with reasons
    failed far from the cause."""
    import shutil

    from pipeline.cli_types import Refusal
    from pipeline.train import run_train

    root, paths, _ = trained
    bare = tmp_path / "features"
    shutil.copytree(paths["features"], bare)
    (bare / "feature_dictionary.json").unlink()
    with pytest.raises(Refusal, match=r"feature_dictionary.json: no such file; `escalate features` writes it"):
        run_train(paths["params"], bare, paths["split"], tmp_path / "train", root)
    assert not (tmp_path / "train").exists()


def test_signature_and_input_example_are_logged(trained):
    import mlflow

    from pipeline import registry

    _, paths, _ = trained
    info = mlflow.models.get_model_info("models:/escalate-response@candidate")
    assert info.signature is not None
    inputs = info.signature.inputs.input_names()
    outputs = info.signature.outputs.input_names()
    assert {"physician_global", "on_ivig", "any_below_target"} <= set(inputs)
    for col in ("option", "eligible", "p_response", "p_response_low", "p_response_high", "expected_tis",
                "p_safety", "effect_vs_continue", "rank", "recommended"):
        assert col in outputs
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    example = json.loads((local / "input_example.json").read_text())
    text = json.dumps(example)
    real_ids = pd.read_parquet(paths["features"] / "features.parquet")["patient_id"].unique()
    assert not any(pid in text for pid in real_ids)
    assert "example-patient-1" in text
    requirements = (local / "requirements.txt").read_text().split()
    assert any(r.startswith("xgboost-cpu==") for r in requirements)
    assert not any(r.startswith("xgboost==") for r in requirements)
    assert registry.BUNDLE_FILE in {p.name for p in (local / "artifacts").iterdir()}


def test_bundle_on_disk_loads_without_mlflow(trained):
    from pipeline import registry

    _, paths, record = trained
    bundle = joblib.load(paths["train"] / "model" / registry.BUNDLE_FILE)
    assert tuple(record["modelled_options"]) == bundle.arms
    contract = json.loads((paths["train"] / "model" / "contract.json").read_text())
    assert contract["eligibility_source"] == "features"
    assert "patient_id" not in contract["columns"]


def test_default_store_is_the_repository_sqlite_file(monkeypatch, tmp_path):
    from pipeline import registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert registry.tracking_uri(tmp_path) == "http://mlflow.example:5000"


def test_experiment_artifacts_live_under_the_repository(trained):
    from mlflow.tracking import MlflowClient

    root, _, _ = trained
    experiment = MlflowClient().get_experiment_by_name("escalate")
    assert experiment.artifact_location == (root / "mlruns").resolve().as_uri()


@pytest.mark.parametrize("nested, flat", [
    ({"train": {"booster": {"max_depth": 3}}, "seed": 1}, {"train.booster.max_depth": "3", "seed": "1"}),
    ({"a": {}}, {}),
])
def test_flatten_params(nested, flat):
    from pipeline.registry import flatten_params

    assert flatten_params(nested) == flat


def test_a_bundle_saved_before_juvenile_thresholds_loads_with_the_rule_it_was_trained_with():
    """Older registered bundles used one response threshold for every diagnosis; unpickling says so instead of
    failing (or silently claiming the juvenile DM threshold)."""
    import pickle

    from models.bundle import BundleConfig, EscalateModel

    stale = BundleConfig(response_threshold=35.0)
    del stale.__dict__["juvenile_response_threshold"]  # what a bundle pickled by the earlier code holds
    model = EscalateModel.__new__(EscalateModel)
    model.__setstate__({"config": stale, "arms": ("continue",)})
    assert model.config.juvenile_response_threshold == 35.0 and model.arms == ("continue",)
    current = EscalateModel.__new__(EscalateModel)
    current.__setstate__({"config": BundleConfig(juvenile_response_threshold=47.0)})
    assert pickle.loads(pickle.dumps(current)).config.juvenile_response_threshold == 47.0


def test_a_bundle_saved_before_the_patient_spread_still_says_what_its_interval_means():
    """A champion registered by the earlier code has neither the setting nor the term: its page states the interval
    it really gives (no spread) instead of failing."""
    from models.bundle import BundleConfig, IntervalCalibrationConfig, interval_meaning

    stale = BundleConfig(interval_calibration=IntervalCalibrationConfig())
    del stale.interval_calibration.__dict__["patient_spread"]  # what a bundle pickled by the earlier code holds
    meaning = interval_meaning(stale)
    assert "out-of-fold" in meaning and "other decisions" not in meaning


def test_registered_model_is_code_plus_artifacts_and_records_its_settings(trained):
    """Models-from-code: the model holds its code file, the pure packages it imports (never `pipeline`), the bundle
    artifact and no cloudpickled class; its metadata records the feature columns and the feature and label
    settings it was trained with, equal to the bundle's own."""
    import mlflow
    import yaml

    from pipeline import registry

    _, paths, _ = trained
    info = mlflow.models.get_model_info("models:/escalate-response@candidate")
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert {p.name for p in (local / "code").iterdir()} == {"models", "features"}
    assert not list(local.rglob("python_model.pkl")) and not list(local.rglob("__pycache__"))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert (local / flavor["model_code_path"]).read_text() == registry.MODEL_CODE.read_text()
    bundle = joblib.load(paths["train"] / "model" / registry.BUNDLE_FILE)
    meta = info.metadata["escalate"]
    assert meta["feature_columns"] == list(bundle.contract.columns)
    assert meta["settings"] == bundle.data_settings.model_dump(mode="json")
    assert meta["settings"]["labels"]["response_category"] == "moderate"
    assert bundle.feature_config().change_windows_days == (91, 182)


def test_a_model_without_recorded_settings_refuses_to_say_which_features_it_needs():
    from models.bundle import BundleConfig, EscalateModel

    model = EscalateModel.__new__(EscalateModel)
    model.__setstate__({"config": BundleConfig()})  # as a bundle pickled before settings were recorded
    assert model.data_settings is None
    with pytest.raises(ValueError, match="records no feature settings"):
        model.feature_config()


def test_recorded_label_category_must_give_the_models_response_thresholds():
    from features.config import FeatureConfig, LabelConfig
    from models.bundle import BundleConfig, RecordedSettings

    settings = RecordedSettings(features=FeatureConfig(), labels=LabelConfig(response_category="major"))
    with pytest.raises(ValueError, match="response_threshold=40 but labels.response_category 'major' means 60"):
        settings.check_thresholds(BundleConfig())
    settings.check_thresholds(BundleConfig(response_threshold=60, juvenile_response_threshold=70))


def test_artifacts_go_beside_a_local_store_and_to_a_servers_own_store(tmp_path):
    """Found by a probe: every experiment put its artifacts in the code checkout's mlruns, even for a tracking
    server (whose clients would then keep the artifacts on their own disks)."""
    from pipeline.registry import local_artifact_location

    assert local_artifact_location(f"sqlite:///{tmp_path}/mlflow.db") == (tmp_path / "mlruns").as_uri()
    assert local_artifact_location("http://tracking.example:5000") is None
    assert local_artifact_location("postgresql://mlflow@db/mlflow") is None


def test_evaluate_refuses_the_simulator_truth_of_another_cohort(trained, tmp_path):
    """Found by a newcomer's walkthrough: params.yaml's data.dir named another cohort, whose truth shares the patient
    ids, and evaluate wrote regret 0 and coverage 1 into the model card and MLflow. The truth must be the cohort's
    the features were built from: its decisions found by patient and visit, taking the same options."""

    import typer
    import yaml

    from pipeline.evaluate import run_evaluate

    root, paths, _ = trained
    other = tmp_path / "other-cohort" / "truth"
    other.mkdir(parents=True)
    truth, outcomes = make_truth(pd.read_parquet(paths["features"] / "features.parquet"),
                                 pd.read_parquet(paths["features"] / "decisions.parquet"))
    options = truth["option_taken"].astype(str)
    truth["option_taken"] = np.roll(options.to_numpy(), 7)  # the same patients and visits, other choices
    assert (truth["option_taken"] != options).mean() > 0.3
    truth.to_parquet(other / "decisions.parquet", index=False)
    outcomes.to_parquet(other / "outcomes.parquet", index=False)
    params = yaml.safe_load(paths["params"].read_text(encoding="utf-8"))
    params["data"]["dir"] = str(other.parent)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(typer.BadParameter, match=r"truth in .* is not of the cohort .*took the same option"):
        run_evaluate(tmp_path / "params.yaml", paths["features"], paths["split"], paths["train"],
                     tmp_path / "evaluate", root, log_to_mlflow=False)
    assert not (tmp_path / "evaluate").exists()  # refused before writing anything


def test_the_page_labels_figures_with_the_evaluation_settings_evaluate_used(trained, tmp_path):
    """Found by a review: after `evaluation.confidence_level: 0.8` and `calibration_bins: 5` the page still said
    "95 % confidence interval" and drew 10-bin edges, read from train's MLflow params (train does not declare
    `evaluation:`, so they were stale). Evaluate now records the settings it used; the page reads them there."""
    import mlflow
    import yaml

    from pipeline.evaluate import run_evaluate
    from pipeline.registry_store import BUNDLE_FILE
    from pipeline.report import LoadedModel, load_evidence
    from pipeline.settings import load_settings
    from pipeline.trained import load_bundle

    root, paths, record = trained
    params = yaml.safe_load(paths["params"].read_text(encoding="utf-8"))
    params["evaluation"] = {"confidence_level": 0.8, "calibration_bins": 5}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    run_evaluate(tmp_path / "params.yaml", paths["features"], paths["split"], paths["train"], tmp_path / "evaluate",
                 root, log_to_mlflow=False)
    (tmp_path / "evaluate" / "run.json").write_text(json.dumps({"run_id": record["run_id"]}))
    model = load_bundle(paths["train"] / "model" / BUNDLE_FILE)
    loaded = LoadedModel(model, "m", "local", str(paths["train"] / "model"), record["run_id"])
    evidence = load_evidence(loaded, load_settings(paths["params"]), tmp_path / "evaluate", use_mlflow=False)
    assert evidence.confidence_level == 0.8 and evidence.metrics
    assert not evidence.calibration.empty and set(evidence.calibration["upper"] * 5) <= {1, 2, 3, 4, 5}
    assert "evaluation.confidence_level" not in mlflow.get_run(record["run_id"]).data.params  # never stale there


def _strict_json(text: str) -> object:
    """`text` read as strict JSON does: a bare NaN or Infinity is an error, as in browsers and most REST clients."""
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_feature_is_required_and_the_serving_example_is_json_a_server_answers(trained):
    """Found by a review: a feature no training patient had a value of was optional in the signature (a request
    could leave it out), and the model's example files held bare `NaN`, which strict JSON parsers reject."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server
    from mlflow.types import DataType

    from pipeline import registry

    _, paths, _ = trained
    info = mlflow.models.get_model_info("models:/escalate-response@candidate")
    specs = {spec.name: spec for spec in info.signature.inputs.inputs}
    assert [name for name, spec in specs.items() if not spec.required] == []
    assert specs[NEVER_SEEN].type == DataType.double and specs["on_ivig"].type == DataType.double
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    _strict_json((local / "input_example.json").read_text())
    serving = _strict_json((local / "serving_input_example.json").read_text())
    columns, rows = serving["dataframe_split"]["columns"], serving["dataframe_split"]["data"]
    assert [row[columns.index(NEVER_SEEN)] for row in rows] == [None] * len(rows)  # null, not NaN
    model = mlflow.pyfunc.load_model(info.model_uri)
    schema = model.metadata.get_input_schema()
    example = scoring_server.infer_and_parse_data(serving, schema)
    bundle = joblib.load(paths["train"] / "model" / registry.BUNDLE_FILE)
    expected = bundle.predict_frame(example, explain_top_k=bundle.explain_top_k)
    got = model.predict(example)
    # the JSON a REST client posts to `mlflow models serve`, handled by the server's own request code
    response = scoring_server.invocations(json.dumps(serving), "application/json", model, schema)
    assert response.status == 200
    served = pd.DataFrame(json.loads(response.response)["predictions"])  # MLflow writes NaN for "no estimate"
    for table in (got, served):
        assert table["option"].tolist() == expected["option"].tolist()
        np.testing.assert_allclose(table["p_response"].to_numpy(float), expected["p_response"].to_numpy(float),
                                   equal_nan=True)
    with pytest.raises(MlflowException, match=rf"missing inputs \['{NEVER_SEEN}'\]"):
        model.predict(example.drop(columns=NEVER_SEEN))


def test_a_yes_no_feature_takes_0_or_1_or_json_false_or_true_and_nothing_else(trained):
    """Asked by a review: may a REST client send JSON true/false for a yes/no feature (a 0/1 number in the signature)?
    It may: MLflow's server reads them as 1/0 and the answer equals sending 0/1. Any other value of a yes/no feature
    (2, 0.5) is refused naming row, column and rule, served or not: it was scored as no patient can be. A Python
    caller sends numbers too: MLflow's schema check refuses a pandas bool column for it, naming the column."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    info = mlflow.models.get_model_info("models:/escalate-response@candidate")
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    serving = json.loads((local / "serving_input_example.json").read_text())
    columns = serving["dataframe_split"]["columns"]
    model = mlflow.pyfunc.load_model(info.model_uri)
    schema = model.metadata.get_input_schema()

    def request(values: dict[str, list]) -> dict:
        rows = [list(row) for row in serving["dataframe_split"]["data"]]
        for name, column in values.items():
            for row, value in zip(rows, column, strict=True):
                row[columns.index(name)] = value
        return {"dataframe_split": {"columns": columns, "data": rows}}

    def served(payload: dict) -> pd.DataFrame:
        response = scoring_server.invocations(json.dumps(payload), "application/json", model, schema)
        assert response.status == 200, response.response
        return pd.DataFrame(json.loads(response.response)["predictions"])

    yes_no = {"ild": [1, 0, 1, 0, 1], "on_ivig": [0, 1, 0, 0, 1], "anti_mda5": [1, 1, 0, 0, 0]}
    numbers = served(request(yes_no))
    booleans = served(request({name: [bool(v) for v in column] for name, column in yes_no.items()}))
    pd.testing.assert_frame_equal(booleans, numbers)
    frame = scoring_server.infer_and_parse_data(request(yes_no), schema)
    for value in (2.0, 0.5):
        with pytest.raises(ValueError, match=rf"table features: row 3, column 'ild' is {value:g} \(rule: a yes/no "
                                             r"feature is 0 or 1; JSON false/true are read as 0/1\)"):
            model.predict(frame.assign(ild=[1.0, 0.0, 1.0, value, 1.0]))
        with pytest.raises(MlflowException) as served_error:  # the server answers 400 with the model's message
            served(request({"ild": [1, 0, 1, value, 1]}))
        assert f"column 'ild' is {value:g} (rule: a yes/no feature" in json.dumps(served_error.value.json_kwargs)
    with pytest.raises(MlflowException, match=r"column ild\. Can not safely convert bool to float64"):
        model.predict(frame.assign(ild=frame["ild"].astype(bool)))
