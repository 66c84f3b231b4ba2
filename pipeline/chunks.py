"""One chunk of `escalate score`, the work both engines share: the local engine's worker processes
(`pipeline.score`) and the Spark engine's tasks (`pipeline.spark_engine`) import it; it imports neither.

A chunk task reads its staged shard of the contract tables, validates it, rejects broken patients, builds the as-of
features with the feature settings the model was trained with, predicts and explains with the registered pyfunc
(loaded once per process), and writes its rejects and `part-<chunk>.parquet` atomically. Also here: what the driver
learns about the model cheaply (version from the registry, settings and feature columns from the model's
metadata) before any process loads it, and the refusal the job raises.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.contract import CONTRACT_COLUMNS, CONTRACT_TABLES
from models.scoring import ScoreSettings, part_name

if TYPE_CHECKING:
    import pandas as pd

WORK = "_work"  # inside the output folder: run identity, staged shards, per-chunk rejects


class ScoreRefusal(RuntimeError):
    """A run refused before any work: the message says what is wrong and how to fix it."""


def release_memory() -> None:
    """Hand memory freed by the last phase back to the OS (collected cycles, Arrow's pool, glibc's heap), so it does
    not stay in the footprint of the next: planning a million patients otherwise left ~130 MB resident for the whole
    run, and a chunk's frames caught in reference cycles waited for the next full collection."""
    import contextlib
    import ctypes
    import gc
    import sys

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB: Linux's VmHWM (`ru_maxrss` of a process started by a big
    one also counts its parent's pages from before `exec`), else `ru_maxrss` (macOS reports bytes, others kB)."""
    import resource
    import sys

    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def read_shard(staging: Path, table: str, chunk: int) -> tuple[pd.DataFrame, Any]:
    """One chunk's rows of one table in input order, and their input row numbers. A chunk without a folder has no
    rows of the table; a table without one means the staging is gone (removed by another run on the same output
    folder that finished), which fails the chunk instead of scoring its patients without their rows."""
    import pandas as pd
    import pyarrow.dataset as ds

    if not (staging / table).is_dir():
        raise RuntimeError(f"the staged input of table {table} is missing ({staging / table}): another run on the "
                           "same output folder removed it; rerun the same command to resume")
    folder = staging / table / str(int(chunk))
    if not folder.is_dir():
        empty = pd.DataFrame({c.name: pd.Series(dtype=object) for c in CONTRACT_COLUMNS[table]})
        return empty, empty.index.to_numpy()
    frame = ds.dataset(sorted(folder.glob("part-*.arrow")), format="ipc").to_table().to_pandas()
    frame = frame.sort_values("_row", kind="stable").reset_index(drop=True)
    rows = frame.pop("_row").to_numpy()
    return frame, rows


def part_schema(frame: pd.DataFrame) -> Any:
    """The Arrow schema of a part file from each column's kind alone: text as string, flags as bool, dates as
    timestamp[us], other numbers as float64. Inferred from values, an all-rejected chunk's empty columns were
    null-typed, text switched between string and large_string and dates were nanoseconds (unreadable by Spark),
    so the parts of one run could not be read as one table."""
    import pyarrow as pa
    from pandas.api import types

    def kind(dtype: Any) -> Any:
        if types.is_bool_dtype(dtype):
            return pa.bool_()
        if types.is_datetime64_any_dtype(dtype):
            return pa.timestamp("us")
        return pa.float64() if types.is_numeric_dtype(dtype) else pa.string()

    return pa.schema([(str(name), kind(dtype)) for name, dtype in frame.dtypes.items()])


# --- the model: cheap facts first (driver), the heavy load once per process (workers) ---------------------------
@dataclass(frozen=True)
class ModelFacts:
    """What the driver checks before any work, from the registry and the model's metadata (no model loaded): the URI
    every chunk loads (pinned to the registered version), that version, the feature columns the model was trained on
    and the feature settings it recorded."""

    uri: str
    version: str | None
    columns: tuple[str, ...]
    feature_config: dict[str, Any]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def resolve_version(uri: str) -> str | None:
    """The registered version a `models:/<name>@<alias>` or `models:/<name>/<version>` URI names (one registry call,
    no download), None for other URIs; refuses an unknown name, alias or version in one line."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not uri.startswith("models:/"):
        return None
    ref = uri.removeprefix("models:/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return str(MlflowClient().get_model_version_by_alias(name, alias).version)
        parts = ref.split("/")
        if len(parts) == 2 and parts[1].isdigit():
            return str(MlflowClient().get_model_version(parts[0], parts[1]).version)
        return None
    except MlflowException as err:
        raise ScoreRefusal(f"--model {uri}: cannot load this model ({_first_line(err)}); check the name, version "
                           "or alias in the registry") from err


def pinned_uri(uri: str, version: str | None) -> str:
    """`models:/<name>@<alias>` as `models:/<name>/<version>`: every chunk of a run, in any process and on any
    engine, loads the version the run checked and records, even if the alias moves meanwhile."""
    if version is None or not uri.startswith("models:/") or "@" not in uri:
        return uri
    return f"models:/{uri.removeprefix('models:/').split('@', 1)[0]}/{version}"


def describe_model(uri: str, store: str) -> ModelFacts:
    """Version, feature columns and feature settings of the model at `uri` in tracking store `store`, from the
    registry and the model's `MLmodel` metadata only (milliseconds, not the model load); refuses an unknown model,
    a model that is not an Escalate model, and one that records no feature settings."""
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(store)
    version = resolve_version(uri)
    pinned = pinned_uri(uri, version)
    try:
        info = mlflow.models.get_model_info(pinned)
    except (MlflowException, OSError, ValueError) as err:
        raise ScoreRefusal(f"--model {uri}: cannot load this model ({_first_line(err)}); check the name, version "
                           f"or alias in the registry at {store}") from err
    meta = (info.metadata or {}).get("escalate")
    if not isinstance(meta, dict) or "feature_columns" not in meta:
        raise ScoreRefusal(f"--model {uri}: not an Escalate model (its metadata has no feature contract); register "
                           "one with `escalate train`")
    settings = meta.get("settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("features"), dict):
        raise ScoreRefusal(f"--model {uri}: the model records no feature settings, so scoring cannot build the "
                           "features it was trained on; retrain it with `escalate train`")
    return ModelFacts(pinned, version, tuple(meta["feature_columns"]), dict(settings["features"]))


def load_model(uri: str, store: str) -> Any:
    """The `EscalateModel` inside the registered pyfunc at `uri` (the heavy step: seconds to a minute)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(store)
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError, ValueError) as err:
        raise ScoreRefusal(f"--model {uri}: cannot load this model ({_first_line(err)}); check the name, version "
                           f"or alias in the registry at {store}") from err
    inner = pyfunc.unwrap_python_model()
    model = getattr(inner, "model", inner)
    if not hasattr(model, "predict_frame"):
        raise ScoreRefusal(f"--model {uri}: not an Escalate model (no predict_frame); register one with "
                           "`escalate train`")
    return model


# --- one chunk ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkTask:
    """Everything a worker needs to score one chunk (picklable: shipped to worker processes and Spark executors).
    `feature_config` is the model's recorded feature settings (a `features.config.FeatureConfig` as a dict)."""

    staging: str
    out: str
    model_uri: str
    tracking_uri: str
    as_of: str
    today: str
    settings: ScoreSettings
    feature_config: dict[str, Any] = field(default_factory=dict)

    def references(self) -> tuple[Any, Any, Any, Any]:
        """(vocabulary, measures, option catalogue, feature config) from configs/ and the model's settings."""
        from features.config import FeatureConfig
        from features.contract import MeasureCatalog
        from features.vocabulary import Vocabulary
        from pipeline.config import load_catalog, load_options

        vocabulary = load_catalog("drugs", Vocabulary.from_config)
        return (vocabulary,
                load_catalog("measures", MeasureCatalog.from_config),
                load_options(vocabulary),
                FeatureConfig.model_validate(self.feature_config))

    def run(self, chunk: int, model: Any, refs: tuple[Any, Any, Any, Any]) -> dict[str, Any]:
        """Validate, reject, build features, predict + explain one chunk; write its rejects and part atomically
        (the part last: its presence marks the chunk done). Returns counts and timings (no identifiers)."""
        summary = self._score(chunk, model, refs)
        release_memory()  # a chunk's frames are gone: keep the footprint at one chunk's, run after run
        return summary

    def _score(self, chunk: int, model: Any, refs: tuple[Any, Any, Any, Any]) -> dict[str, Any]:
        import pandas as pd

        from features.build import build_features, without_record_before
        from features.contract import check
        from models.scoring import assemble_chunk, predict_explained, rejects_from_violations
        from pipeline.io import write_parquet

        vocabulary, measures, catalog, fconfig = refs
        t0 = time.perf_counter()
        staging = Path(self.staging)
        tables: dict[str, pd.DataFrame] = {}
        row_map = {}
        for name in CONTRACT_TABLES:
            tables[name], row_map[name] = read_shard(staging, name, chunk)
        t1 = time.perf_counter()
        result = check(tables, vocabulary, measures, pd.Timestamp(self.today))
        as_of = pd.Timestamp(self.as_of)
        patients = result.normalised["patients"]
        unrecorded = without_record_before(patients, result.normalised["assessments"], as_of)
        patients = patients[~patients["patient_id"].isin(unrecorded["patient_id"])]
        rejects = rejects_from_violations(pd.concat([result.violations, unrecorded], ignore_index=True), row_map)
        warnings = rejects_from_violations(result.violations, row_map, severity="warning")
        warnings = warnings[warnings["patient_id"].isin(patients["patient_id"])]  # of the scored patients
        t2 = time.perf_counter()
        keys = pd.DataFrame({"patient_id": patients["patient_id"].astype(str).to_numpy(), "as_of": as_of})
        fs = build_features(keys, result.normalised, vocabulary, catalog, fconfig)
        t3 = time.perf_counter()
        preds = predict_explained(model, fs.features, fs.dictionary, self.settings.explain_top_k)
        scored = assemble_chunk(preds, list(catalog.names))
        t4 = time.perf_counter()
        out = Path(self.out)
        write_parquet(rejects, out / WORK / "rejects" / f"rejects-{int(chunk):05d}.parquet")
        write_parquet(warnings, out / WORK / "warnings" / f"warnings-{int(chunk):05d}.parquet")
        write_parquet(scored, out / part_name(chunk), schema=part_schema(scored))
        t5 = time.perf_counter()
        return {"chunk": int(chunk), "patients": int(len(tables["patients"])), "scored": int(len(keys)),
                "rejected": int(rejects["patient_id"].dropna().nunique()), "rows": int(len(scored)),
                "read_s": t1 - t0, "validate_s": t2 - t1, "features_s": t3 - t2, "predict_s": t4 - t3,
                "write_s": t5 - t4, "pid": os.getpid(), "peak_rss_mib": peak_rss_mib()}


#: the model and reference data of this process, keyed by (tracking URI, model URI): loaded once, reused by
#: every chunk the process scores (a worker process, a Spark Python worker, or the driver with `--workers 0`).
_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}


def _load(task: ChunkTask) -> tuple[Any, Any]:
    """Load the task's model (its URI is pinned by the driver) and references into this process's cache; the
    model's own recorded feature settings must be the ones the driver read from its metadata."""
    model = load_model(task.model_uri, task.tracking_uri)
    recorded = model.feature_config().model_dump(mode="json")
    if recorded != task.feature_config:
        raise ScoreRefusal(f"--model {task.model_uri}: the feature settings in the model's bundle differ from its "
                           "metadata; re-register it with `escalate train`")
    entry = (model, task.references())
    _LOADED.clear()  # one model per process
    _LOADED[(task.tracking_uri, task.model_uri)] = entry
    return entry


def score_chunk(task: ChunkTask, chunk: int) -> dict[str, Any]:
    """Score one chunk with this process's copy of the task's model (loaded on first use)."""
    model, refs = _LOADED.get((task.tracking_uri, task.model_uri)) or _load(task)
    return task.run(chunk, model, refs)
