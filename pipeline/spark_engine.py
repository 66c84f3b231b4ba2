"""The Spark engine of `escalate score --engine spark`: the same chunks, the same pure code, on a Spark cluster.

Each chunk of patients is one group of `groupBy("chunk").applyInPandas(...)`: the task reads its staged shard of the
contract tables, validates it, builds the as-of features of that patient group and scores them with the registered
pyfunc (loaded once per Python worker by URI: a grouped pandas UDF equivalent to `mlflow.pyfunc.spark_udf`, which
cannot return several option rows per input row), then writes `part-<chunk>.parquet` atomically exactly as the
local engine does. Spark moves only chunk ids and per-chunk counts; the output folder (and its `_work/staging`)
must therefore be on storage every executor sees (local disk for `local[*]`, a shared mount on a cluster).

The session comes from the standard Spark configuration: `--master`, else `SPARK_REMOTE` (Spark Connect) or
`spark.master` from spark-defaults / `spark-submit`, else `local[*]`. Only this module imports pyspark.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from pipeline.chunks import ChunkTask, score_chunk
from pipeline.config import library_notices_env, quiet_library_notices

#: per-chunk summary columns returned by the tasks (counts and timings, never patient identifiers).
SUMMARY_SCHEMA = (
    "chunk long, patients long, scored long, rejected long, rows long, "
    "read_s double, validate_s double, features_s double, predict_s double, write_s double, pid long, "
    "peak_rss_mib double"
)
_SUMMARY_COLUMNS = [part.split()[0] for part in SUMMARY_SCHEMA.split(", ")]


def spark_session(master: str | None = None, progress: bool = True) -> tuple[Any, bool]:
    """(session, created): `master` when given, else the standard configuration (SPARK_REMOTE, spark.master),
    else `local[*]`. Workers run this interpreter unless PYSPARK_PYTHON says otherwise; without `progress` a
    session created here shows no console progress bar (`spark.ui.showConsoleProgress`), and its Python workers
    ignore the library notices (`spark.executorEnv.PYTHONWARNINGS`)."""
    quiet_library_notices()
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active, False
    builder = SparkSession.builder.appName("escalate-score")
    if master:
        builder = builder.master(master)
    elif not os.environ.get("SPARK_REMOTE") and not os.environ.get("MASTER"):
        from pyspark import SparkConf

        if not SparkConf().contains("spark.master"):
            builder = builder.master("local[*]")
    builder = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
    builder = builder.config("spark.ui.showConsoleProgress", "true" if progress else "false")
    # filters do not cross processes: the Python workers import pandera (hence pyspark.pandas) before any filter
    builder = builder.config("spark.executorEnv.PYTHONWARNINGS", library_notices_env())
    try:
        return builder.getOrCreate(), active is None
    except Exception as err:  # noqa: BLE001 - py4j / JVM errors of a bad master URL: one line, before any chunk
        from pipeline.chunks import ScoreRefusal

        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ScoreRefusal(f"--master {master or '(Spark configuration)'}: Spark could not start a session ({first})"
                           ) from None


def score_groups(task: ChunkTask) -> Any:
    """The grouped-map function for one task: a frame of chunk ids in, one summary row per chunk out."""
    import pandas as pd

    def score_group(frame: pd.DataFrame) -> pd.DataFrame:
        quiet_library_notices()
        rows = [score_chunk(task, int(chunk)) for chunk in frame["chunk"].to_numpy()]
        return pd.DataFrame(rows, columns=_SUMMARY_COLUMNS)

    return score_group


def run_chunks_spark(task: ChunkTask, todo: list[int], master: str | None = None,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Score the chunks `todo` on Spark (one applyInPandas group per chunk); returns the per-chunk summaries.
    `progress=False` (`--no-progress`) keeps Spark's console progress bar off."""
    if not todo:
        return []
    import pandas as pd

    spark, created = spark_session(master, progress)
    # one shuffle partition per chunk (capped): chunk ids are tiny, so adaptive coalescing would otherwise fold
    # every chunk into one task and lose the parallelism. Set for this job only: a session the caller owns gets
    # its own settings back.
    ours = {"spark.sql.adaptive.coalescePartitions.enabled": "false",
            "spark.sql.shuffle.partitions": str(max(1, min(len(todo), 2000)))}
    theirs = {key: spark.conf.get(key, None) for key in ours}
    try:
        for key, value in ours.items():
            spark.conf.set(key, value)
        chunks = spark.createDataFrame(pd.DataFrame({"chunk": pd.Series(todo, dtype="int64")}))
        result = chunks.groupBy("chunk").applyInPandas(score_groups(task), schema=SUMMARY_SCHEMA).collect()
    finally:
        if created:
            spark.stop()
        else:
            for key, value in theirs.items():
                if value is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, value)
    return sorted((row.asDict() for row in result), key=lambda r: r["chunk"])
