"""The registered model is self-contained and its bytes are reproducible.

- `models:/escalate-response@champion` loads in a fresh virtual environment built only from the model's own
  requirements.txt, run from a folder outside the repository with no PYTHONPATH, and predicts what the model
  predicts in this process; `mlflow models serve` from that environment answers a REST request the same way.
- Two fits on the same inputs, in processes with different string hash seeds, write the same bundle bytes.

Slow: builds a virtual environment (uv, from its cache when it can) and starts a model server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.model.synthetic_escalate import mlflow_store, write_stage_inputs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL_URI = "models:/escalate-response@champion"
NUMERIC = ("p_response", "p_response_low", "p_response_high", "expected_tis", "p_safety", "effect_vs_continue",
           "rank")
# what the fresh environment runs: load by alias, predict, and say where the model's packages were imported from
LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(pd.read_parquet(sys.argv[2])).to_parquet(sys.argv[3])
import models, features
print(json.dumps({"pipeline_imported": "pipeline" in sys.modules, "models": models.__file__,
                  "features": features.__file__}))
"""


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).is_file():
        if os.environ.get("CI"):
            pytest.fail("uv is needed to build the fresh environment (it is in the dev requirements)")
        pytest.skip("uv not installed")
    return found


def _clean_env(tracking_uri: str, bin_dir: Path) -> dict[str, str]:
    """This process's environment without anything pointing at the repository or its venv, with the fresh
    environment activated (its bin folder first on PATH: `mlflow models serve` starts its `uvicorn`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))]
    env["PATH"] = os.pathsep.join([str(bin_dir), *path])
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return env


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory):
    """A small model trained by `escalate train`'s code and moved to champion in a temporary SQLite store."""
    root = tmp_path_factory.mktemp("portable")
    with pytest.MonkeyPatch.context() as mp:
        uri = mlflow_store(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        # the shipped default's kind (params.yaml's first candidate): its trees on the score are explained with
        # shap's TreeExplainer, so shap must travel in the model's requirements (a T-learner's TreeSHAP does not)
        paths = write_stage_inputs(root, n_patients=120, with_truth=False,
                                   train_overrides={"learner": "auto", "selection": {"folds": 2, "candidates": [
                                       {"learner": "score_glm", "score_trees_weight": 0.3}]}})
        from pipeline import registry
        from pipeline.train import run_train

        record = run_train(paths["params"], paths["features"], paths["split"], paths["train"], root)
        registry.set_alias(registry.CHAMPION, record["model_version"])
        features = pd.read_parquet(paths["features"] / "features.parquet").head(12)
        expected = registry.load_by_alias(registry.CHAMPION).predict(features)
        yield root, uri, features, expected


@pytest.fixture(scope="module")
def fresh_env(registered, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with only the model's requirements.txt installed (offline from uv's cache when it
    holds them, else from the index); returns its bin folder."""
    import mlflow

    root, uri, _, _ = registered
    local = Path(mlflow.artifacts.download_artifacts(MODEL_URI, tracking_uri=uri))
    requirements = local / "requirements.txt"
    assert "escalate" not in requirements.read_text(encoding="utf-8")  # the project is not a requirement
    env_dir = tmp_path_factory.mktemp("fresh") / "env"
    uv = _uv()
    subprocess.run([uv, "venv", "-q", str(env_dir), "--python", sys.executable], check=True, timeout=120)
    install = [uv, "pip", "install", "-q", "--python", str(env_dir / "bin" / "python"), "-r", str(requirements)]
    if subprocess.run([*install, "--offline"], capture_output=True, timeout=600).returncode:
        subprocess.run(install, check=True, timeout=600)
    return env_dir / "bin"


def _assert_same_predictions(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(got) == len(expected)
    assert got["option"].tolist() == expected["option"].tolist()
    assert got["eligible"].astype(bool).tolist() == expected["eligible"].astype(bool).tolist()
    for col in NUMERIC:
        np.testing.assert_allclose(got[col].to_numpy(float), expected[col].to_numpy(float), rtol=1e-9, atol=1e-12,
                                   equal_nan=True, err_msg=col)


def test_loads_by_alias_in_a_fresh_environment_without_the_repository(registered, fresh_env, tmp_path):
    root, uri, features, expected = registered
    assert "reason_1_text" in expected.columns  # the default output explains, so explanations travel too
    features.to_parquet(tmp_path / "features.parquet")
    run = subprocess.run(
        [str(fresh_env / "python"), "-c", LOAD_AND_PREDICT, MODEL_URI, str(tmp_path / "features.parquet"),
         str(tmp_path / "predictions.parquet")],
        cwd=tmp_path, env=_clean_env(uri, fresh_env), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    where = json.loads(run.stdout.strip().splitlines()[-1])
    assert not where["pipeline_imported"]
    for package in ("models", "features"):  # imported from the model's own code copy, not the repository
        assert not where[package].startswith(str(ROOT)), where[package]
    got = pd.read_parquet(tmp_path / "predictions.parquet")
    assert list(got.columns) == list(expected.columns)
    _assert_same_predictions(got, expected)
    assert got["reason_1_text"].fillna("").tolist() == expected["reason_1_text"].fillna("").tolist()
    assert "cloudpickle" not in run.stderr.lower() and "Downloading artifacts" not in run.stderr


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - a loopback URL built here
        return resp.status, resp.read()


def test_mlflow_models_serve_answers_a_rest_request(registered, fresh_env, tmp_path):
    _, uri, features, expected = registered
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(fresh_env / "mlflow"), "models", "serve", "-m", MODEL_URI, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path, env=_clean_env(uri, fresh_env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"the server exited: {(tmp_path / 'serve.log').read_text()[-3000:]}")
            try:
                if _request(f"{base}/ping", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer on {base}/ping in 180 s: {(tmp_path / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        # 15 significant digits (pandas' default is 10, which moves a score GLM's tails by 1e-8 relative)
        split = json.loads(features.to_json(orient="split", date_format="iso", index=False, double_precision=15))
        body = json.dumps({"dataframe_split": split}).encode()
        status, answer = _request(f"{base}/invocations", body, timeout=120)
        assert status == 200
        got = pd.DataFrame(json.loads(answer)["predictions"])
        _assert_same_predictions(got, expected)
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """End the server and its workers (its own process group), however the test went."""
    import signal

    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:  # the group is gone already
            break
        try:
            server.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    server.poll()


FIT_AND_SAVE = """
import sys
sys.path.insert(0, sys.argv[2])
from models.bundle import BundleConfig, fit_escalate_model
from pipeline.registry import save_bundle, sha256_file
from tests.model.synthetic_escalate import catalog, make_cohort
features, decisions, _ = make_cohort(160, 7)
cfg = BundleConfig.model_validate({"learner": "t_learner", "min_rows_per_option": 10,
    "booster": {"n_estimators": 10, "max_depth": 2, "n_jobs": 1},
    "calibration": {"n_folds": 2, "min_rows_per_arm": 10},
    "intervals": {"n_boot": 2, "boot_booster": {"n_estimators": 5, "max_depth": 2, "n_jobs": 1}}})
save_bundle(fit_escalate_model(features, decisions, catalog(), cfg), sys.argv[1])
print(sha256_file(sys.argv[1]))
"""


def test_two_fits_on_the_same_inputs_write_the_same_bytes(tmp_path):
    """Each fit in its own process with its own string hash seed (as two `dvc repro -f` runs are)."""
    digests = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", FIT_AND_SAVE, str(tmp_path / f"bundle-{seed}.joblib"), str(ROOT)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        digests.append(run.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1]
    assert (tmp_path / "bundle-1.joblib").read_bytes() == (tmp_path / "bundle-2.joblib").read_bytes()
