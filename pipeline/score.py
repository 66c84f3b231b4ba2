"""`escalate score`: score every patient of a folder of contract tables as of a date, with reasons, resumably.

Steps: refuse bad runs before any heavy work, from the registry and the model's metadata without loading the model
(strict dates, unwritable or foreign output folder, unknown model, a model whose recorded feature settings do not
build its feature contract) →
plan chunks of N patients (sorted ids) → stage the input tables once into per-chunk Arrow IPC shards (streamed in
record batches, so memory does not grow with the input) → for each chunk not already done, in a worker process
(replaced every N chunks, so memory cannot pile up over a long run), in this process, or as a Spark task: validate,
reject broken patients, build as-of features with the model's own feature settings, predict + explain with the
registered pyfunc (`pipeline.chunks`, shared by both engines), write
`part-<chunk>.parquet` atomically → `rejects.parquet`, the invariant check, `manifest.json`. Patient identifiers
never reach logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.contract import CONTRACT_COLUMNS, CONTRACT_TABLES, near_miss
from models.scoring import ChunkPlan, PatientIds, ScoreSettings, part_name
from pipeline.chunks import (  # noqa: F401 - read_shard and ScoreRefusal are part of this module's interface
    WORK,
    ChunkTask,
    ModelFacts,
    ScoreRefusal,
    describe_model,
    peak_rss_mib,
    read_shard,
    release_memory,
    score_chunk,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    Done = Callable[[dict[str, Any]], dict[str, Any]]  # told each chunk's summary as it finishes

RUN_FILE = "run.json"
LOCK_FILE = "lock"  # in `_work/`: held (flock) by the run using the output folder
MANIFEST = "manifest.json"
REJECTS = "rejects.parquet"
WARNINGS = "warnings.parquet"
BATCH_ROWS = 262_144  # rows per record batch while staging (bounds staging memory)
CHUNKS_PER_WORKER = 25  # chunks a worker process scores before a fresh one replaces it


# --- inputs -----------------------------------------------------------------------------------------------------
def table_paths(directory: Path) -> dict[str, Path | None]:
    """`<name>.parquet` (preferred) or `<name>.csv` per contract table; None for an absent optional table."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ScoreRefusal(f"--data {directory}: no such folder of contract tables")
    found: dict[str, Path | None] = {}
    for name in CONTRACT_TABLES:
        path = next((p for p in (directory / f"{name}.parquet", directory / f"{name}.csv") if p.is_file()), None)
        if path is None and name != "events":
            raise ScoreRefusal(f"--data {directory}: contract table {name!r} not found "
                               f"(expected {name}.parquet or {name}.csv)")
        found[name] = path
    return found


def input_hash(paths: dict[str, Path | None]) -> str:
    """sha256 over the tables' names and bytes: the identity of the input (a changed file is a different run)."""
    digest = hashlib.sha256()
    for name, path in sorted(paths.items()):
        digest.update(name.encode())
        if path is None:
            continue
        digest.update(path.suffix.encode())
        with path.open("rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def _columns_of(path: Path) -> list[str]:
    """The header of one table, after the checks that name an unreadable file and its likely cause
    (`pipeline.io.check_readable`); a refusal otherwise."""
    from pipeline.io import TableReadError, check_readable

    try:
        return check_readable(path)
    except TableReadError as err:
        raise ScoreRefusal(str(err)) from None


def check_structure(paths: dict[str, Path | None]) -> None:
    """Every table can be read (`pipeline.io.check_readable`: separator, encoding, truncated Parquet, ids stored
    as floats) and has every required contract column: either breaks all patients, so the run is refused, naming
    every such table and its rule, instead of rejecting everyone."""
    from pipeline.io import TableReadError, check_readable

    problems: list[str] = []
    for name, path in paths.items():
        if path is None:
            continue
        try:
            have = check_readable(path)
        except TableReadError as err:
            problems.append(str(err))
            continue
        missing = [c.name for c in CONTRACT_COLUMNS[name] if c.required and c.name not in have]
        if missing:
            unexpected = [c for c in have if c not in {s.name for s in CONTRACT_COLUMNS[name]}]
            hints = [f"did you mean {h!r} for {m!r}?" for m in missing if (h := near_miss(m, unexpected))]
            problems.append(f"table {name} ({path.name}): required column(s) {missing} missing (rule: "
                            "missing_column); every patient would be rejected"
                            + (f"; {' '.join(hints)}" if hints else ""))
    if problems:
        raise ScoreRefusal("; ".join(problems))


def _batches(path: Path) -> Any:
    """Record batches of one table: Parquet batches as stored; CSV read as text (only empty cells missing).

    Parquet is read one row group at a time: one `iter_batches` over a whole file of many row groups keeps
    allocating (pyarrow 25: +0.6 MB a batch, 400 MB over a 303M-row table; cf. apache/arrow#39808), while a
    reader per row group stays flat."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            yield from parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group])
        return
    from pipeline.io import TableReadError, read_csv_text

    names = _columns_of(path)
    schema = pa.schema([(n, pa.string()) for n in names])
    try:
        for frame in read_csv_text(path, chunksize=BATCH_ROWS):
            yield pa.RecordBatch.from_pandas(frame.astype(object), schema=schema, preserve_index=False)
    except TableReadError as err:
        raise ScoreRefusal(str(err)) from None


def read_patient_ids(path: Path) -> PatientIds:
    """The raw `patient_id` column of the patients table (the population to score): Arrow from Parquet, so a
    million ids are planned without a Python string each; a pandas Series from CSV."""
    import pandas as pd
    import pyarrow.parquet as pq

    from pipeline.io import CSV_AS_TEXT

    if path.suffix == ".parquet":
        return pq.read_table(path, columns=["patient_id"]).column(0)
    return pd.read_csv(path, usecols=["patient_id"], **CSV_AS_TEXT)["patient_id"]


class ShardWriters:
    """Append-only Arrow IPC shard files, one open writer per chunk, at most `max_open` open at once. When full,
    the most recently used writer is closed (a later batch of its chunk starts the next file of its folder): each
    input batch visits the chunks in order, a cycle for which least-recently-used would close every file every time.

    Written synchronously from the calling thread: the reading side concatenates the files of a folder, so the
    staging needs no dataset writer pulling a Python generator from its own threads (which was seen to deadlock).
    """

    def __init__(self, root: Path, schema: Any, max_open: int = 256) -> None:
        import pyarrow as pa

        self.root, self.schema, self.max_open = Path(root), schema, max_open
        self.options = pa.ipc.IpcWriteOptions(compression="lz4")
        self.open: dict[int, Any] = {}  # chunk → writer, most recently used last
        self.files: dict[int, int] = {}  # chunk → files started

    def write(self, chunk: int, batch: Any) -> None:
        import pyarrow as pa

        writer = self.open.pop(chunk, None)
        if writer is None:
            if len(self.open) >= self.max_open:
                self.open.popitem()[1].close()
            n = self.files.get(chunk, 0)
            self.files[chunk] = n + 1
            folder = self.root / str(chunk)
            folder.mkdir(parents=True, exist_ok=True)
            writer = pa.ipc.new_file(folder / f"part-{n}.arrow", self.schema, options=self.options)
        writer.write_batch(batch)
        self.open[chunk] = writer

    def close(self) -> None:
        for writer in self.open.values():
            writer.close()
        self.open.clear()


def _open_file_budget(wanted: int) -> int:
    """How many shard files may stay open: one per chunk when the open-file limit allows (raising the soft limit
    up to the hard one), else what the limit leaves (the chunks beyond it then start a new file per batch)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + 128  # headroom for the interpreter, libraries and the input files
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    limit = wanted if soft == resource.RLIM_INFINITY else soft - 128
    return max(16, min(wanted, limit))


def plain_batch(batch: Any) -> Any:
    """A record batch as the chunks read it: dictionary (categorical) columns decoded to their values (the pieces
    of one table may carry their own dictionaries, which one shard file cannot hold), and `patient_id` as text,
    spelled as the chunk plan reads it (`1`; an integer column with a missing id would reach pandas as floats,
    `1.0`, and its patients' rows be lost)."""
    import pyarrow as pa

    columns = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns]
    if "patient_id" in batch.schema.names:
        at = batch.schema.get_field_index("patient_id")
        if not pa.types.is_string(columns[at].type):
            columns[at] = columns[at].cast(pa.string())
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def stage_tables(paths: dict[str, Path | None], plan: ChunkPlan, staging: Path) -> dict[str, int]:
    """Write each table once into `staging/<table>/<chunk>/` shards with the input row number `_row`, streaming
    record batches as the chunks read them (`plain_batch`); returns rows per table.

    Shards are Arrow IPC files, not Parquet: a Parquet writer keeps every row group's metadata until its file
    closes, and with one open file per chunk that metadata grows with chunks x batches (quadratic in the
    population); IPC keeps nothing per batch, so staging memory is bounded by the batch size.
    """
    import numpy as np
    import pyarrow as pa

    counts: dict[str, int] = {}
    for name, path in paths.items():
        target = staging / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)  # present even for a table without rows: its absence means staging is gone
        counts[name] = 0
        if path is None:
            continue
        writers: ShardWriters | None = None
        try:
            for batch in map(plain_batch, _batches(path)):
                if writers is None:
                    schema = batch.schema.remove_metadata().append(pa.field("_row", pa.int64()))
                    writers = ShardWriters(target, schema, max_open=_open_file_budget(plan.total))
                if not batch.num_rows:
                    continue
                chunk = plan.chunk_of(batch.column(batch.schema.get_field_index("patient_id")))
                rows = np.arange(counts[name], counts[name] + batch.num_rows, dtype=np.int64)
                counts[name] += batch.num_rows
                order = np.argsort(chunk, kind="stable")  # rows of a chunk together, in input order
                tagged = pa.RecordBatch.from_arrays([*batch.columns, pa.array(rows)], schema=writers.schema)
                tagged = tagged.take(pa.array(order))
                ordered = chunk[order]
                starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
                for start, stop in zip(starts, [*starts[1:], len(ordered)], strict=True):
                    writers.write(int(ordered[start]), tagged.slice(start, stop - start))
        finally:
            if writers is not None:
                writers.close()
    return counts


# --- the model ----------------------------------------------------------------------------------------------------
def check_feature_contract(model_columns: Sequence[str], feature_columns: list[str]) -> list[str]:
    """Refuse when the feature builder does not produce every column the model was trained on; returns the
    builder's columns the model does not use (reported in the manifest)."""
    wanted = list(model_columns)
    missing = [c for c in wanted if c not in feature_columns]
    if missing:
        raise ScoreRefusal(
            f"the model's feature contract does not match the data's features: {len(missing)} column(s) the model "
            f"needs are not built ({missing[:8]}{' …' if len(missing) > 8 else ''}); retrain on the current "
            "feature code or score with the matching model version"
        )
    keys = {"patient_id", "decision_id", "as_of"}
    return [c for c in feature_columns if c not in wanted and c not in keys]


# --- where chunks are scored: this process, worker processes, or Spark -----------------------------------------------
class ChunkRunner:
    """Where a run's chunks are scored. This one: in this process, one after another (`--workers 0`)."""

    workers: int | None = 0
    chunks_per_worker: int | None = None

    def __enter__(self) -> ChunkRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def score(self, task: ChunkTask, todo: list[int], done: Done) -> list[dict[str, Any]]:
        return [done(score_chunk(task, chunk)) for chunk in todo]


class SparkChunks(ChunkRunner):
    """The Spark engine: the driver checks the model here; the chunks run as Spark tasks (pipeline.spark_engine)."""

    workers = None  # Spark's executors

    def __init__(self, master: str | None, progress: bool = True) -> None:
        self.master, self.progress = master, progress

    def score(self, task: ChunkTask, todo: list[int], done: Done) -> list[dict[str, Any]]:
        from pipeline.spark_engine import run_chunks_spark

        return [done(summary) for summary in run_chunks_spark(task, todo, master=self.master,
                                                              progress=self.progress)]


class WorkerPool(ChunkRunner):
    """Chunks scored in `workers` worker processes; the driver never loads the model. Every `workers x
    chunks_per_worker` chunks the workers are replaced by fresh ones, so memory a long run's allocator does not hand
    back cannot pile up: the footprint is bounded by construction, whatever the population. (Replaced by
    generations, not `max_tasks_per_child`, which deadlocks a queued backlog on Python 3.11-3.13: cpython#115634.)

    Workers are spawned, not forked from a server that imported the code once: Python's reference counts soon copy
    such shared pages anyway, and the server itself then held ~190 MB more than it saved (a fresh worker costs ~7 s
    of imports and model load instead of ~2 s: ~10 % of 25 chunks of 2,000 patients)."""

    def __init__(self, workers: int, chunks_per_worker: int) -> None:
        self.workers, self.chunks_per_worker = workers, chunks_per_worker
        self.executor: Any = None

    def __exit__(self, *exc: object) -> None:
        self._retire()

    def _pool(self) -> Any:
        if self.executor is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("spawn")
            self.executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker,
                                                initargs=(os.getpid(),))
        return self.executor

    def _retire(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    @staticmethod
    def _result(future: Any) -> Any:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result()
        except BrokenProcessPool as err:
            raise RuntimeError("a scoring worker process ended abruptly: killed, out of memory (try a smaller "
                               "--chunk-patients), or it could not start (a script calling run_score must do so "
                               "under `if __name__ == '__main__':`). The chunks finished so far are kept: the same "
                               "command resumes the run") from err

    def score(self, task: ChunkTask, todo: list[int], done: Done) -> list[dict[str, Any]]:
        from concurrent.futures import as_completed

        summaries: list[dict[str, Any]] = []
        generation = self.workers * self.chunks_per_worker
        for start in range(0, len(todo), generation):
            try:
                futures = [self._pool().submit(score_chunk, task, c) for c in todo[start:start + generation]]
                summaries.extend(done(self._result(f)) for f in as_completed(futures))
            finally:
                self._retire()  # this generation's workers exit (or, on failure, the queued chunks are dropped)
        return summaries


def _start_worker(driver: int) -> None:
    """A worker process starts: Ctrl-C is left to the driver (which lets running chunks finish), and the worker ends
    the moment the driver does, so a killed run leaves no worker behind writing parts beside the run that resumes it."""
    import signal
    import threading

    from pipeline.config import quiet_library_notices

    quiet_library_notices()  # a spawned process starts with the default warning filters
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(driver,), name="escalate-driver-watch", daemon=True).start()


def _exit_with(pid: int) -> None:
    """Block until process `pid` ends, then end this process (a pidfd on Linux >= 5.3; else a check every 0.5 s)."""
    import select

    try:
        select.select([os.pidfd_open(pid)], [], [])
    except ProcessLookupError:  # it has ended already
        pass
    except (AttributeError, OSError):  # no pidfd here
        while _alive(pid):
            time.sleep(0.5)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def strict_date(option: str, value: str | date) -> date:
    """A calendar date written exactly YYYY-MM-DD (`pipeline.cli_types.parse_iso_date`), else a refusal naming
    the option."""
    from pipeline.cli_types import parse_iso_date

    try:
        return parse_iso_date(value, option)
    except ValueError as err:
        raise ScoreRefusal(str(err)) from None


def check_out(out: Path) -> None:
    """Refuse an output folder that cannot be written (a file in the way, or no permission) before any work."""
    from pipeline.cli_types import output_problem

    problem = output_problem(out, folder=True)
    if problem is not None:
        raise ScoreRefusal(f"--out {problem}")


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold `out/_work/lock` exclusively (`fcntl.flock`) for the whole run; refuse while another run holds it. Two
    runs on one folder (the same command started again to resume while the first still runs) would otherwise
    overwrite each other's parts, and the first to finish removes the staging the other still reads. The system
    drops the lock when the process ends, even killed. A `_work` this run created and left holding only the lock
    (a refusal) is removed again, so a refused run leaves the folder as it was."""
    import fcntl

    work = out / WORK
    created = [d for d in (out, work) if not d.exists()]
    work.mkdir(parents=True, exist_ok=True)
    path = work / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ScoreRefusal(f"--out {out}: another scoring run is using this folder now (it holds {path}); wait "
                               "for it to end, then run the same command again: it resumes an unfinished run and "
                               "leaves a finished one as it is") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # removed by the run that held it before (its clean-up below): lock the file now there
    try:
        yield
    finally:
        try:
            if created and [p.name for p in work.iterdir()] == [LOCK_FILE]:
                path.unlink()
                for folder in reversed(created):
                    with contextlib.suppress(OSError):  # only if nothing else is in it
                        folder.rmdir()
        finally:
            os.close(fd)


def _holds_something(out: Path) -> bool:
    """Whether `out` holds anything besides the lock of the run now starting."""
    return any(p.name != WORK or not p.is_dir() or any(q.name != LOCK_FILE for q in p.iterdir())
               for p in out.iterdir())


def run_day(out: Path) -> date | None:
    """The `--today` of the run `out` holds, if any: the same command without `--today` resumes that run on a later
    day with the day it started with (the contract's date rules and the manifest are one run's), never a mix."""
    from pipeline.io import read_json

    try:
        return date.fromisoformat(read_json(out / WORK / RUN_FILE)["identity"]["today"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_resumable(out: Path, identity: dict[str, Any]) -> None:
    """A non-empty `out` must hold an unfinished or finished run of this very job (same input, dates, model version,
    settings): the same command resumes it; anything else is refused untouched."""
    from pipeline.io import read_json

    run_file = out / WORK / RUN_FILE
    if out.is_dir() and _holds_something(out):
        if not run_file.is_file():
            raise ScoreRefusal(f"--out {out} is not empty and holds no scoring run: choose an empty folder")
        previous = read_json(run_file)
        if previous.get("identity") != identity:
            diff = sorted(k for k in identity if previous.get("identity", {}).get(k) != identity[k])
            day = previous.get("identity", {}).get("today") if "today" in diff else None
            resume = f"; to resume it, pass --today {day} (the day it started with)" if day else ""
            raise ScoreRefusal(f"--out {out} holds a different run (differs in: {', '.join(diff)}); use another "
                               f"folder or delete it to start over{resume}")


def model_feature_columns(facts: ModelFacts) -> list[str]:
    """Refuse a model whose recorded feature settings do not build its feature contract (checked on an empty
    population, so no data is read); returns the built columns the model does not use."""
    import pandas as pd

    from features.build import build_features
    from features.config import FeatureConfig
    from features.contract import NORMALISED_COLUMNS
    from features.vocabulary import Vocabulary
    from pipeline.config import load_catalog, load_options

    try:
        fconfig = FeatureConfig.model_validate(facts.feature_config)
    except ValueError as err:
        raise ScoreRefusal(f"--model {facts.uri}: its recorded feature settings are not valid here "
                           f"({str(err).splitlines()[0]}); retrain it with `escalate train`") from err
    empty_tables = {k: pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
                    for k, cols in NORMALISED_COLUMNS.items()}
    empty_keys = pd.DataFrame({"patient_id": pd.Series(dtype=str), "as_of": pd.Series(dtype="datetime64[ns]")})
    vocabulary = load_catalog("drugs", Vocabulary.from_config)
    built = build_features(empty_keys, empty_tables, vocabulary, load_options(vocabulary), fconfig)
    return check_feature_contract(facts.columns, list(built.features.columns))


# --- the job --------------------------------------------------------------------------------------------------------
def run_score(
    data: Path,
    as_of: str | date,
    model_uri: str,
    out: Path,
    *,
    engine: str = "local",
    settings: ScoreSettings | None = None,
    today: str | date | None = None,
    master: str | None = None,
    workers: int | None = None,
    chunks_per_worker: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole job; returns the manifest (`nothing_scored` is true when no patient could be scored). Raises
    `ScoreRefusal` for a run it will not do before any heavy work: bad options or dates, an unwritable or foreign
    `out`, missing tables or columns, an unknown model or one whose recorded feature settings do not build its
    feature contract (all from the registry and the model's metadata; no model is loaded until the chunks run).

    Local engine: chunks are scored in `workers` worker processes (default 1) replaced every `chunks_per_worker`
    chunks each (default 25), or in this process with `workers=0`. Spark: chunks are Spark tasks (`master`)."""
    from pipeline.config import tracking_uri

    started = time.perf_counter()
    settings = settings or ScoreSettings()
    if engine not in ("local", "spark"):
        raise ScoreRefusal(f"--engine {engine!r}: choose local or spark")
    if engine == "local" and master is not None:
        raise ScoreRefusal("--master is for the spark engine (add --engine spark); the local engine would ignore it")
    if engine == "spark":
        import importlib.util

        if importlib.util.find_spec("pyspark") is None:
            raise ScoreRefusal("--engine spark needs PySpark: install the spark extra (pip install -e '.[spark]')")
        if workers is not None:
            raise ScoreRefusal("--workers is for the local engine: Spark's parallelism is its executors' cores")
        if chunks_per_worker is not None:
            raise ScoreRefusal("--chunks-per-worker is for the local engine's worker processes: Spark runs each "
                               "chunk as a task of its own executors")
    if (workers is not None and workers < 0) or (chunks_per_worker is not None and chunks_per_worker < 1):
        raise ScoreRefusal("--workers must be >= 0 and --chunks-per-worker >= 1")
    out = Path(out).absolute()
    the_day = strict_date("--today", today) if today is not None else run_day(out) or date.today()
    when = strict_date("--as-of", as_of)
    if when > the_day:
        raise ScoreRefusal(f"--as-of {when} is in the future (today is {the_day}): a prediction "
                           "can only use what is already recorded")
    check_out(out)
    paths = table_paths(Path(data))
    check_structure(paths)
    store = tracking_uri()
    facts = describe_model(model_uri, store)  # registry + metadata only: refuses an unknown model in milliseconds
    unused = model_feature_columns(facts)
    task = ChunkTask(staging=str(out / WORK / "staging"), out=str(out), model_uri=facts.uri, tracking_uri=store,
                     as_of=str(when), today=str(the_day), settings=settings, feature_config=facts.feature_config)
    digest = input_hash(paths)
    identity = {"input_hash": digest, "as_of": task.as_of, "today": task.today, "model_uri": model_uri,
                "model_version": facts.version, "settings": settings.model_dump(),
                "feature_config": facts.feature_config}
    with run_lock(out):
        check_resumable(out, identity)
        if engine == "spark":
            runner: ChunkRunner = SparkChunks(master, progress)
        elif workers == 0:
            runner = ChunkRunner()
        else:
            runner = WorkerPool(workers or 1, chunks_per_worker or CHUNKS_PER_WORKER)
        with runner:
            return _job(task, paths, out, runner, engine, progress, started,
                        model_uri=model_uri, version=facts.version, identity=identity, unused=unused)


def _job(task: ChunkTask, paths: dict[str, Path | None], out: Path, runner: ChunkRunner, engine: str,
         progress: bool, started: float, *, model_uri: str, version: str | None, identity: dict[str, Any],
         unused: list[str]) -> dict[str, Any]:
    """Plan, stage, score every chunk not done, check the invariant, finish; the manifest."""
    from tqdm import tqdm

    from models.scoring import plan_chunks
    from pipeline.io import read_json, write_json

    digest = identity["input_hash"]
    options = list(task.references()[2].names)
    run_file = out / WORK / RUN_FILE

    # planning and staging (redone unless a finished staging of this very input exists)
    plan = plan_chunks(read_patient_ids(paths["patients"]), task.settings.chunk_patients)
    release_memory()
    total = plan.total
    for stale in out.rglob(".*.tmp") if out.exists() else ():  # half-written files of a killed run
        stale.unlink()
    todo = [c for c in range(total) if not (out / part_name(c)).is_file()]
    staged_marker = out / WORK / "staged.json"
    if not todo and (out / MANIFEST).is_file():  # a finished run started again: its manifest stands as written
        _remove_staging(task, staged_marker)  # left only by a run stopped between its manifest and this cleanup
        return dict(read_json(out / MANIFEST))
    t_stage = time.perf_counter()
    if staged_marker.is_file():
        rows = read_json(staged_marker)["rows"]
    else:
        fresh = not run_file.is_file()
        write_json({"identity": identity}, run_file)
        try:
            rows = stage_tables(paths, plan, Path(task.staging))
        except BaseException:  # e.g. a row the header check cannot see: --out is left as it was, so the fixed input
            # runs (the run's identity was written for the parts to come; none exists yet; `run_lock` removes the
            # `_work` folder it created)
            shutil.rmtree(Path(task.staging), ignore_errors=True)
            if fresh:
                run_file.unlink(missing_ok=True)
            raise
        write_json({"rows": rows}, staged_marker)
        release_memory()
    stage_s = time.perf_counter() - t_stage

    sizes = plan.sizes()
    t_chunks = time.perf_counter()
    with tqdm(total=int(sizes.sum()), initial=int(sizes.sum() - sizes[todo].sum()), unit="patient",
              unit_scale=True, disable=not progress, desc="scoring", dynamic_ncols=True) as bar:
        def done(summary: dict[str, Any]) -> dict[str, Any]:
            bar.update(int(sizes[summary["chunk"]]))
            return summary

        summaries = runner.score(task, todo, done)
    chunks_s = time.perf_counter() - t_chunks

    report, reject_rows, warning_rows, output_rows, nobody_rows = _finish(out, plan, len(options))
    if not report.ok:
        raise RuntimeError("scoring invariant broken: " + "; ".join(report.problems))
    timing_keys = ("read_s", "validate_s", "features_s", "predict_s", "write_s")
    manifest = {
        "model_uri": model_uri, "model_version": version, "as_of": task.as_of, "today": task.today,
        "input_hash": digest, "engine": engine, "settings": task.settings.model_dump(),
        "counts": {"input_patients": report.input_patients, "scored_patients": report.scored_patients,
                   "rejected_patients": report.rejected_patients, "unknown_patients": report.unknown_patients,
                   "rows_without_patient_id": nobody_rows,
                   "reject_rows": reject_rows, "warning_rows": warning_rows, "output_rows": output_rows,
                   "input_rows": rows},
        "chunks": {"total": total, "run_now": len(todo), "resumed": total - len(todo), "workers": runner.workers,
                   "chunks_per_worker": runner.chunks_per_worker, "processes": len({s["pid"] for s in summaries})},
        "options": options,
        "unused_feature_columns": unused,
        "invariant": "every input patient scored or rejected, none lost, none twice: ok",
        #: true when not one patient was scored (all rejected, or none in the input): the job failed its purpose.
        "nothing_scored": report.scored_patients == 0,
        "timings": {"total_s": round(time.perf_counter() - started, 3), "stage_s": round(stage_s, 3),
                    "chunks_s": round(chunks_s, 3), **{k: round(sum(s[k] for s in summaries), 3) for k in timing_keys},
                    "patients_per_second": round(sum(s["patients"] for s in summaries) / chunks_s, 1)
                    if summaries and chunks_s > 0 else None,
                    "driver_peak_rss_mib": peak_rss_mib(),
                    **_worker_peaks(summaries)},
    }
    write_json(manifest, out / MANIFEST)  # the run is finished: only now is its staging no longer needed
    _remove_staging(task, staged_marker)
    return manifest


def _remove_staging(task: ChunkTask, staged_marker: Path) -> None:
    """Delete a finished run's staged copy of the input (patient data) and its marker."""
    shutil.rmtree(Path(task.staging), ignore_errors=True)
    staged_marker.unlink(missing_ok=True)


def _finish(out: Path, plan: ChunkPlan, n_options: int) -> tuple[Any, int, int, int, int]:
    """Chunk by chunk (memory bounded by a chunk): check the invariant against each chunk's planned patients and
    append its rejects to `rejects.parquet` and its scored patients' warnings to `warnings.parquet` (chunk order,
    sorted within a chunk). Returns (the invariant report of the whole run, reject rows, warning rows, output
    rows, input rows rejected without a patient id — no patient can be rejected for them, so they are counted
    apart: distinct (table, row), however many rules each broke)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.scoring import REJECT_COLUMNS, InvariantReport, check_invariant, clean_ids, rows_per_patient
    from pipeline.io import atomic_path

    reports: list[InvariantReport] = []
    reject_rows = warning_rows = output_rows = nobody_rows = 0
    schema = pa.schema([(c, pa.int64() if c == "row" else pa.string()) for c in REJECT_COLUMNS])
    with atomic_path(out / REJECTS) as tmp, pq.ParquetWriter(tmp, schema) as writer, \
            atomic_path(out / WARNINGS) as tmp_warnings, pq.ParquetWriter(tmp_warnings, schema) as warned:
        for chunk in range(plan.total):
            rejects = pd.read_parquet(out / WORK / "rejects" / f"rejects-{chunk:05d}.parquet")
            writer.write_table(pa.Table.from_pandas(rejects, schema=schema, preserve_index=False))
            warnings = pd.read_parquet(out / WORK / "warnings" / f"warnings-{chunk:05d}.parquet")
            warned.write_table(pa.Table.from_pandas(warnings, schema=schema, preserve_index=False))
            warning_rows += len(warnings)
            scored = rows_per_patient(pd.read_parquet(out / part_name(chunk), columns=["patient_id"]))
            report = check_invariant(plan.patients(chunk), scored, rejects["patient_id"], n_options)
            reports.append(report.for_chunk(chunk))
            reject_rows += len(rejects)
            nobody = clean_ids(rejects["patient_id"]).isna().to_numpy()  # as the invariant reads ids
            nobody_rows += len(rejects.loc[nobody, ["table", "row"]].drop_duplicates())
            output_rows += int(scored.sum())
    return InvariantReport.combine(reports), reject_rows, warning_rows, output_rows, nobody_rows


def _worker_peaks(summaries: list[dict[str, Any]]) -> dict[str, float | None]:
    """Peak resident memory of the worker processes: the largest, and the median over processes (a long run has
    more processes, so its largest is the maximum of more draws)."""
    import statistics

    per_process: dict[int, float] = {}
    for s in summaries:
        per_process[s["pid"]] = max(per_process.get(s["pid"], 0.0), s["peak_rss_mib"])
    peaks = list(per_process.values())
    return {"worker_peak_rss_mib": max(peaks) if peaks else None,
            "worker_median_peak_rss_mib": statistics.median(peaks) if peaks else None}

