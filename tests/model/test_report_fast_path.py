"""The clinician page loads the champion without MLflow (pipeline/registry_store.py, the read-only fast path into the
local SQLite store): the same model, version, run and evidence as MLflow's loader, the same page for the seed case,
no `mlflow` module in the process, and a one-line refusal when there is no model at all."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from tests.conftest import SEED_CASE
from tests.model.synthetic_escalate import mlflow_store

ROOT = Path(__file__).resolve().parents[2]
AS_OF, TODAY = date(2026, 11, 18), date(2026, 11, 25)


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A tiny model on simulated patients' real features, registered as champion in a temporary SQLite store
    (tests/model/test_score_job.build_world), its run given params, metrics (one NaN) and evaluate's settings as
    train and evaluate log them; yields the tracking URI, the version and the run id."""
    import mlflow

    from tests.model.test_score_job import build_world

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        root = tmp_path_factory.mktemp("fastpath")
        mlflow_store(root)  # build_world's root/mlflow.db, copied already migrated (seconds saved)
        world = build_world(root)
        client = mlflow.tracking.MlflowClient(world.tracking_uri)
        run_id = client.get_model_version_by_alias("escalate-response", "champion").run_id
        client.log_param(run_id, "labels.horizon_weeks", "24")
        client.log_dict(run_id, {"confidence_level": 0.9}, "evaluate/tables/evaluation_settings.json")  # as evaluate
        for step, value in enumerate((0.61, 0.67)):  # the latest value is the one shown
            client.log_metric(run_id, "response_auroc", value, step=step)
        client.log_metric(run_id, "response_ece", math.nan)
        yield world.tracking_uri, world.version, run_id
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def _seed_page(loaded, evidence):
    from pipeline import report as R
    from pipeline.config import load_reference

    tables, violations = R.check_tables(R.read_patient_tables(SEED_CASE, "SEED-0001"), str(TODAY))
    return R.build_patient_page("SEED-0001", R.pd.Timestamp(AS_OF), tables, loaded, load_reference("monitoring"),
                                evidence, findings=R.patient_findings(violations, "SEED-0001"),
                                rules=load_reference("clinical_rules"))


def _same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


def test_fast_path_loads_the_champion_mlflow_loads_and_gives_the_same_page(champion, monkeypatch, tmp_path):
    from pipeline import registry_store as store
    from pipeline.report import load as L
    from pipeline.report.evidence import load_evidence
    from pipeline.settings import load_settings

    uri, version, run_id = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    target = store.resolve_alias(store.CHAMPION)
    assert target is not None and target.version == str(version) and target.bundle.is_file()
    fast = L.load_model(tmp_path / "no-bundle")
    slow = L._load_model_with_mlflow(tmp_path / "no-bundle")
    assert (fast.name, fast.version, fast.alias, fast.run_id) == (slow.name, slow.version, slow.alias, slow.run_id)
    assert fast.alias == "champion" and fast.run_id == run_id
    settings = load_settings()
    fast_evidence = load_evidence(fast, settings)
    monkeypatch.setenv(store.FAST_PATH_ENV, "0")  # the same evidence read through MLflow
    slow_evidence = load_evidence(slow, settings)
    assert _same_metrics(dict(fast_evidence.metrics), dict(slow_evidence.metrics)) and fast_evidence.metrics
    assert fast_evidence.source == slow_evidence.source and fast_evidence.horizon_weeks == slow_evidence.horizon_weeks
    monkeypatch.delenv(store.FAST_PATH_ENV)
    run = store.run_record(run_id)
    import mlflow

    logged = mlflow.tracking.MlflowClient(uri).get_run(run_id)
    assert run is not None and run.params == dict(logged.data.params) and run.params
    assert _same_metrics(run.metrics, dict(logged.data.metrics)) and run.metrics["response_auroc"] == 0.67
    assert math.isnan(run.metrics["response_ece"]) and fast_evidence.confidence_level == 0.9
    fast_page, slow_page = _seed_page(fast, fast_evidence), _seed_page(slow, slow_evidence)
    assert [o.option for o in fast_page.options if o.eligible]  # the seed case has eligible options
    assert fast_page.options == slow_page.options  # same predictions, intervals, safety and ★ on the seed case
    assert fast_page.explanations == slow_page.explanations
    facts = dict(fast_page.model_facts)  # the explanations' note in a clinician's words, not the batch output's
    assert "uncalibrated margin" not in facts["explanations"] and "SHAP value" in facts["explanations"]


def test_the_seed_pages_bars_and_reasons_name_the_same_facts(champion, monkeypatch, tmp_path):
    """A reason and the chart bar of the same clinical feature read alike ('lines of therapy so far = 6' in both,
    never the feature's name in one), and each heading prints its row's difference with continuing."""
    from pipeline import report as R
    from pipeline.report import load as L
    from pipeline.report.evidence import load_evidence
    from pipeline.settings import load_settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion[0])
    loaded = L.load_model(tmp_path / "no-bundle")
    page = _seed_page(loaded, load_evidence(loaded, load_settings()))
    for e in page.explanations:
        labels = {b.label for b in (*e.bars, *e.contrast)}
        for reason in (*e.reasons, *e.contrast_reasons):
            assert reason.split(" \u2192 ")[0] in labels, (e.option, reason, labels)
    assert page.explanations and any(e.reasons for e in page.explanations)
    # each option's heading prints the same difference with continuing as its row of the options table
    html = R.render_page(page)
    for e in page.explanations:
        if e.option != "continue":
            row = html[html.index(f'data-option="{e.option}"'):]
            cell = re.search(r'data-label="vs continue" class="num">([^<]+)<', row).group(1)
            assert f"{e.final_points:.0f} in 100 ({cell} vs continuing)" in html, (e.option, cell)


def test_the_fast_path_says_when_only_mlflow_can_answer(monkeypatch, tmp_path):
    from pipeline import registry_store as store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    with pytest.raises(store.StoreUnreadable, match="not a local SQLite file"):
        store.resolve_alias(store.CHAMPION)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    assert store.resolve_alias(store.CHAMPION) is None  # no store yet: an empty registry
    assert store.run_record("0123") is None
    monkeypatch.setenv(store.FAST_PATH_ENV, "0")
    with pytest.raises(store.StoreUnreadable, match="is off"):
        store.resolve_alias(store.CHAMPION)
    with pytest.raises(store.StoreUnreadable, match="not on this machine"):
        store.local_path("s3://bucket/models/m-1/artifacts")


def _report_in_subprocess(uri: str, out: Path, model_dir: Path) -> tuple[int, str, list[str]]:
    """`escalate report` for the seed patient in a fresh interpreter: exit code, output and the modules it imported."""
    argv = ["report", "--data", str(SEED_CASE), "--patient", "SEED-0001", "--as-of", str(AS_OF),
            "--today", str(TODAY), "--out", str(out), "--model-dir", str(model_dir)]
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from pipeline.cli import app\n"
        f"res = CliRunner().invoke(app, {argv!r})\n"
        "print(json.dumps({'code': res.exit_code, 'output': res.output, 'modules': sorted(sys.modules)}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return got["code"], got["output"], got["modules"]


def test_the_report_command_imports_neither_mlflow_nor_pyspark_pandas(champion, tmp_path):
    uri, version, _ = champion
    out = tmp_path / "page.html"
    code, output, modules = _report_in_subprocess(uri, out, tmp_path / "no-bundle")
    assert code == 0, output
    assert f"escalate-response v{version}" in out.read_text(encoding="utf-8")
    assert not [m for m in modules if m == "mlflow" or m.startswith("mlflow.")]
    # pandera's import of pyspark.pandas was skipped for the page, and the block on it lifted afterwards
    assert "pandera" in modules and "pyspark.pandas" not in modules


def test_no_champion_and_no_bundle_is_one_line_refusal(tmp_path):
    """An empty registry and no local bundle: one line naming what is missing and how to get it, exit 2."""
    uri = mlflow_store(tmp_path)
    code, output, modules = _report_in_subprocess(uri, tmp_path / "page.html", tmp_path / "no-bundle")
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, output
    assert "no registered model (aliases champion, candidate)" in lines[0] and "dvc repro train" in lines[0]
    assert "Traceback" not in output and not (tmp_path / "page.html").exists()
    assert "mlflow" not in modules
