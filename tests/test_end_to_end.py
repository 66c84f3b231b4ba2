"""End to end: the real `dvc repro` on a tiny simulated cohort, in a fresh copy of the repository.

This is what a newcomer's `make repro` does, shrunk: every stage runs through the `escalate` CLI exactly as
`dvc.yaml` says, MLflow logs to a throw-away SQLite store, and a second `dvc repro` has nothing to do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

TINY = {
    "simulate": {"patients": 400},
    "train": {"booster": {"n_estimators": 40}, "min_rows_per_option": 15,
              "intervals": {"n_boot": 3, "boot_booster": {"n_estimators": 20}}},
}


def _copy_repository(dest: Path) -> None:
    """Copy the files git would hand a newcomer (tracked + untracked-not-ignored), then make it a git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.is_file() or rel.startswith(("data/", "dvc.lock")):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    env = {**os.environ, "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@localhost",
           "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@localhost"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "e2e"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env, capture_output=True)


def _deep_update(base: dict, patch: dict) -> dict:
    for key, value in patch.items():
        base[key] = _deep_update(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("escalate-e2e")
    _copy_repository(dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(_deep_update(params, TINY), sort_keys=False))
    return dest


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}", "MPLBACKEND": "Agg"}
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def test_dvc_repro_runs_every_stage_and_is_then_up_to_date(repo: Path) -> None:
    _dvc(repo, "repro")
    for table in ("patients", "regimens", "assessments", "events"):
        assert (repo / "data/cohort" / f"{table}.parquet").is_file()
    findings = json.loads((repo / "data/validation.json").read_text())
    assert findings["summary"]["errors"] == 0

    counts = json.loads((repo / "data/features/counts.json").read_text())
    assert counts["truth"]["recall"] > 0.9
    metrics = json.loads((repo / "data/evaluate/metrics.json").read_text())
    for key in ("response_auroc", "response_ece", "decision_value_recommended", "sim_sqrt_pehe", "sim_regret"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    assert (repo / "data/evaluate/model_card.md").read_text().count("not validated for clinical use")
    assert (repo / "data/explain/mean_abs_shap.csv").is_file()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("escalate-response", "champion")
    assert client.get_model_version_by_alias("escalate-response", "candidate").version == champion.version

    shown = _dvc(repo, "metrics", "show")
    assert "response_auroc" in shown.stdout

    again = _dvc(repo, "repro")
    assert "didn't change" in again.stdout or "up to date" in again.stdout

    # Reproducible: forcing the model stages again on the same data gives identical metrics.
    _dvc(repo, "repro", "--force", "--single-item", "train")
    _dvc(repo, "repro", "--force", "--single-item", "evaluate")
    assert json.loads((repo / "data/evaluate/metrics.json").read_text()) == metrics
