"""The Spark engine (local[2]) gives exactly the local engine's output on the same data and model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("pyspark")

from models.scoring import ScoreSettings  # noqa: E402
from pipeline.score import MANIFEST, REJECTS, WARNINGS, run_score  # noqa: E402
from tests.model.test_score_job import AS_OF, TODAY, _broken_copy, build_world  # noqa: E402

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    w = build_world(tmp_path_factory.mktemp("spark-world"), n_patients=30, seed=5)
    yield w
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def test_spark_and_local_engines_write_identical_output(world, tmp_path: Path) -> None:
    data, bad_patient, _ = _broken_copy(world, tmp_path / "data")
    settings = ScoreSettings(chunk_patients=5, explain_top_k=2)
    local = run_score(data, AS_OF, world.model_uri, tmp_path / "local", settings=settings, today=TODAY,
                      progress=False)
    spark = run_score(data, AS_OF, world.model_uri, tmp_path / "spark", settings=settings, today=TODAY,
                      progress=False, engine="spark", master="local[2]")
    assert spark["engine"] == "spark" and local["engine"] == "local"
    assert spark["counts"] == local["counts"] and spark["counts"]["rejected_patients"] == 2
    names = sorted(p.name for p in (tmp_path / "local").glob("*.parquet"))
    assert {REJECTS, WARNINGS} <= set(names) and len(names) == local["chunks"]["total"] + 2
    assert names == sorted(p.name for p in (tmp_path / "spark").glob("*.parquet"))
    for name in names:
        a, b = tmp_path / "local" / name, tmp_path / "spark" / name
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
        assert a.read_bytes() == b.read_bytes(), name
    rejects = pd.read_parquet(tmp_path / "spark" / REJECTS)
    assert bad_patient in set(rejects["patient_id"])
    assert (tmp_path / "spark" / MANIFEST).is_file()


def test_workers_are_refused_on_spark(world, tmp_path: Path) -> None:
    """Spark's parallelism is its executors': asking for local worker processes too is refused before any work."""
    from pipeline.score import ScoreRefusal

    with pytest.raises(ScoreRefusal, match="--workers is for the local engine"):
        run_score(world.data, AS_OF, world.model_uri, tmp_path / "out", today=TODAY, progress=False,
                  engine="spark", workers=2)
    # found by a review: --chunks-per-worker was silently ignored with --engine spark
    with pytest.raises(ScoreRefusal, match="--chunks-per-worker is for the local engine"):
        run_score(world.data, AS_OF, world.model_uri, tmp_path / "out", today=TODAY, progress=False,
                  engine="spark", chunks_per_worker=5)
    assert not (tmp_path / "out").exists()


def test_a_callers_session_gets_its_settings_back_and_reads_the_parts(world, tmp_path: Path) -> None:
    """Found by a review: scoring on the caller's own session (a notebook's, or spark-submit's) changed its
    shuffle partitions and adaptive coalescing for good. They are the caller's again after the run; and that
    session reads the run's parts as one table (as_of was nanoseconds, which Spark cannot read)."""
    from pipeline.spark_engine import spark_session

    keys = ("spark.sql.shuffle.partitions", "spark.sql.adaptive.coalescePartitions.enabled")
    spark, created = spark_session("local[2]", progress=False)
    try:
        assert created
        spark.conf.set("spark.sql.shuffle.partitions", "7")
        before = {k: spark.conf.get(k, None) for k in keys}
        manifest = run_score(world.data, AS_OF, world.model_uri, tmp_path / "out", today=TODAY, progress=False,
                             engine="spark", settings=ScoreSettings(chunk_patients=10, explain_top_k=1))
        assert {k: spark.conf.get(k, None) for k in keys} == before == dict(zip(keys, ("7", None), strict=True))
        parts = spark.read.parquet(str(tmp_path / "out" / "part-*.parquet"))
        assert parts.count() == manifest["counts"]["output_rows"] > 0
        assert parts.select("patient_id").distinct().count() == manifest["counts"]["scored_patients"]
    finally:
        spark.stop()


def test_the_spark_workers_library_notice_is_silenced(world, tmp_path: Path) -> None:
    """Found by a review: docs/batch-scoring.md says the engine silences PySpark's notice that it does not fully
    support pandas 3, but every Spark Python worker printed it (raised while importing the scoring code, before
    any filter of ours): the workers of a session the engine creates now start with the filter."""
    import subprocess

    env = {**os.environ, "MLFLOW_TRACKING_URI": world.tracking_uri}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "score", "--data", str(world.data), "--as-of", AS_OF, "--today", TODAY,
         "--model", world.model_uri, "--out", str(tmp_path / "out"), "--engine", "spark", "--master", "local[1]",
         "--chunk-patients", "10", "--explain-top", "1", "--no-progress"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "does not yet fully support pandas" not in done.stderr


def test_no_progress_keeps_sparks_console_progress_bar_off() -> None:
    """`--no-progress` reaches Spark: a session the engine creates shows no console progress."""
    from pipeline.spark_engine import spark_session

    spark, created = spark_session("local[1]", progress=False)
    try:
        assert created
        assert spark.sparkContext.getConf().get("spark.ui.showConsoleProgress") == "false"
    finally:
        spark.stop()


def test_a_master_spark_cannot_use_is_one_line_and_master_without_spark_is_refused(world, tmp_path: Path) -> None:
    """Found by a probe: a bad --master ended in a 100-line Java/py4j traceback, and --master with the local
    engine was silently ignored."""
    from pipeline.score import ScoreRefusal

    with pytest.raises(ScoreRefusal, match=r"--master local\[abc\]: Spark could not start a session"):
        run_score(world.data, AS_OF, world.model_uri, tmp_path / "spark", today=TODAY, progress=False,
                  engine="spark", master="local[abc]")
    with pytest.raises(ScoreRefusal, match="--master is for the spark engine"):
        run_score(world.data, AS_OF, world.model_uri, tmp_path / "local", today=TODAY, progress=False,
                  master="local[2]")
    assert not (tmp_path / "local").exists()
