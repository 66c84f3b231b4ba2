"""A read-only fast path into the local MLflow store, without importing MLflow (about 3 s and 80 MB a process).

The store `pipeline.registry` writes is a SQLite file (`sqlite:///<repo>/mlflow.db`) with artifacts under
`<repo>/mlruns`. A one-patient page only needs to know which model version an alias points at, where that version's
files are, and the params and metrics of its training run; this module reads exactly that with `sqlite3` (opened
read-only) and the model's `MLmodel` file with `yaml`:

    alias -> registered_model_aliases.version -> model_versions.(run_id, storage_location) -> MLmodel
          -> flavors.python_function.artifacts.bundle.path (the joblib bundle `registry.log_model` logged)

It never writes. Whenever it cannot answer the way MLflow would — the tracking or registry URI is not a local SQLite
file, workspaces are on, the schema is not the one expected, a location is not a `file:` URI, the model is not the
one `registry.log_model` writes — it raises `StoreUnreadable` and the caller asks MLflow itself. A store file that
does not exist yet is an empty registry (MLflow would create it empty).

The registered model's name, its aliases and the bundle's file name live here, so light readers need not import
`pipeline.registry` (which imports MLflow); `pipeline.registry` re-exports them.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from pipeline.config import ROOT, read_yaml, tracking_uri

MODEL_NAME = "escalate-response"
#: the fitted bundle's file name, in the train stage's model folder and among a registered version's artifacts.
BUNDLE_FILE = "escalate_model.joblib"
CANDIDATE = "candidate"
CHAMPION = "champion"
#: the name under which `registry.log_model` logs the fitted bundle (an artifact of the pyfunc)
BUNDLE_ARTIFACT = "bundle"
#: set to 0 to always go through MLflow (a baseline for benchmarks/bench_report.py, or a store this misreads)
FAST_PATH_ENV = "ESCALATE_REGISTRY_FAST_PATH"
#: MLflow's stage of a deleted model version (mlflow.entities.model_registry.model_version_stages)
_DELETED_STAGE = "Deleted_Internal"
#: MLflow's workspace when workspaces are off (mlflow.utils.workspace_utils.DEFAULT_WORKSPACE_NAME)
_DEFAULT_WORKSPACE = "default"


class StoreUnreadable(RuntimeError):
    """The fast path cannot answer as MLflow would (not a local SQLite store, unexpected layout): ask MLflow."""


@dataclass(frozen=True)
class AliasTarget:
    """The registered model version an alias points at, and its files on this machine."""

    name: str
    alias: str
    version: str
    run_id: str
    model_dir: Path
    bundle: Path


@dataclass(frozen=True)
class RunRecord:
    """A run's params (strings, as logged), latest metrics (NaN where MLflow stored NaN) and artifact folder."""

    run_id: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifact_dir: Path | None = None


def store_path(root: Path = ROOT) -> Path:
    """The SQLite file of the tracking store (`MLFLOW_TRACKING_URI`, else the repository's `mlflow.db`); raises
    `StoreUnreadable` when the store is not a local SQLite file, the registry lives elsewhere or the fast path is
    switched off (`ESCALATE_REGISTRY_FAST_PATH=0`)."""
    if os.environ.get(FAST_PATH_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        raise StoreUnreadable(f"{FAST_PATH_ENV} is off")
    uri = tracking_uri(root)
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI", "").strip()
    if registry_uri and registry_uri != uri:
        raise StoreUnreadable(f"the model registry is {registry_uri}, not the tracking store")
    if os.environ.get("MLFLOW_WORKSPACE", "").strip() or os.environ.get(
            "MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in ("1", "true", "yes"):
        raise StoreUnreadable("MLflow workspaces are on")
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or "?" in uri:
        raise StoreUnreadable(f"the tracking store {uri} is not a local SQLite file")
    return Path(uri.removeprefix(prefix))


def local_path(uri: str) -> Path:
    """The folder of a `file:` artifact URI (or a plain path); `StoreUnreadable` for a remote one (s3:, http: …)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme == "":
        return Path(uri)
    raise StoreUnreadable(f"artifacts at {uri} are not on this machine")


@contextmanager
def _read_only(db: Path) -> Iterator[sqlite3.Connection | None]:
    """The store opened read-only (None when the file does not exist: an empty registry); a SQLite error, e.g. a
    table or column of another MLflow schema, becomes `StoreUnreadable`."""
    if not db.is_file():
        yield None
        return
    try:
        with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)) as con:
            yield con
    except sqlite3.Error as err:
        raise StoreUnreadable(f"{db}: {err}") from err


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}


def resolve_alias(alias: str, name: str = MODEL_NAME, root: Path = ROOT) -> AliasTarget | None:
    """The version `alias` points at with its model folder and bundle file, or None when the registered model or
    the alias does not exist (as `MlflowClient.get_model_version_by_alias` raising RESOURCE_DOES_NOT_EXIST).
    Raises `StoreUnreadable` when only MLflow can tell (see the module docstring)."""
    with _read_only(store_path(root)) as con:
        if con is None:
            return None
        where = "a.name = ? AND a.alias = ?"
        args: tuple[str, ...] = (name, alias)
        if "workspace" in _columns(con, "registered_model_aliases"):
            where += " AND a.workspace = ? AND v.workspace = a.workspace"
            args += (_DEFAULT_WORKSPACE,)
        rows = con.execute(
            "SELECT v.version, v.run_id, v.storage_location, v.source, v.current_stage "
            "FROM registered_model_aliases a JOIN model_versions v ON v.name = a.name AND v.version = a.version "
            f"WHERE {where}", args).fetchall()
    if not rows:
        return None
    if len(rows) > 1:
        raise StoreUnreadable(f"alias {alias!r} of {name!r} matches {len(rows)} versions")
    version, run_id, storage, source, stage = rows[0]
    if stage == _DELETED_STAGE:
        return None
    model_dir = local_path(storage or source or "")
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise StoreUnreadable(f"{mlmodel} is missing")
    artifacts = (read_yaml(mlmodel).get("flavors", {}).get("python_function", {}) or {}).get("artifacts") or {}
    relative = (artifacts.get(BUNDLE_ARTIFACT) or {}).get("path")
    if not relative:
        raise StoreUnreadable(f"{mlmodel}: no {BUNDLE_ARTIFACT!r} artifact (not a model registry.log_model wrote)")
    bundle = model_dir / relative
    if not bundle.is_file():
        raise StoreUnreadable(f"{bundle} is missing")
    return AliasTarget(name, alias, str(version), str(run_id or ""), model_dir, bundle)


def run_record(run_id: str, root: Path = ROOT) -> RunRecord | None:
    """A training run's params, latest metrics and local artifact folder, as `MlflowClient.get_run` gives them;
    None when the run is not in the store (MLflow's get_run would raise); `StoreUnreadable` when only MLflow can
    read it."""
    with _read_only(store_path(root)) as con:
        found = None if con is None else con.execute(
            "SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        if con is None or found is None:
            return None
        params = dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
        metrics = {str(key): math.nan if is_nan else float(value) for key, value, is_nan in con.execute(
            "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,))}
    artifact_dir = local_path(found[0]) if found[0] else None
    return RunRecord(run_id, {str(k): str(v) for k, v in params.items()}, metrics, artifact_dir)
