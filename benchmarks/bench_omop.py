"""Benchmark `escalate import omop` on a simulated OMOP CDM v5.4 DuckDB database (100,000 patients by default).

Builds the database first (simulate with few Monte Carlo draws — the truth is not imported — then the OMOP writer;
not timed as part of the import), then times `run_import_omop` end to end: reading the cohort through DuckDB,
mapping, merging regimens, writing the four contract tables and the import report. Prints wall and CPU seconds
(time.process_time; DuckDB's own threads are not in it) and persons per wall second. The issue's target: under
2 minutes for 100,000 patients on 2 cores. Run on demand:
`python benchmarks/bench_omop.py [--patients N] [--db PATH (reuse or keep the database)]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb

from pipeline.omop import DB_NAME, run_import_omop, write_cohort_omop
from pipeline.settings import load_settings
from pipeline.simulate import build_inputs
from simulator.engine import simulate_cohort


def build(n: int, folder: Path) -> Path:
    """Simulate n patients and write them as an OMOP CDM database in `folder`; prints the time it took."""
    config, vocabulary, catalog = build_inputs()
    config = config.model_copy(update={"truth": config.truth.model_copy(update={"mc_draws": 10})})
    settings = load_settings()
    today = str(settings.simulate.today or settings.data.today)
    started = time.perf_counter()
    cohort = simulate_cohort(n, settings.simulate.seed, config, vocabulary, catalog, today, "observational")
    simulated = time.perf_counter()
    counts = write_cohort_omop(cohort, folder, today)
    print(f"built {n} patients in {simulated - started:.0f} s (simulate) + {time.perf_counter() - simulated:.0f} s "
          f"(OMOP writer): " + ", ".join(f"{k.split(':')[-1]} {v}" for k, v in counts.items() if ":" in k),
          flush=True)
    return folder / DB_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=None, help="OMOP DuckDB file: used if it exists, else built there")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db if args.db is not None and args.db.exists() else build(
            args.patients, args.db.parent if args.db is not None else Path(tmp))
        con = duckdb.connect(str(db), read_only=True)
        persons = con.execute("SELECT count(*) FROM person").fetchone()[0]  # type: ignore[index]
        con.close()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = run_import_omop(str(db), Path(tmp) / "imported")
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rows = {k: len(v) for k, v in result.tables.items()}
    print(f"import of {persons} persons: wall {wall:.1f} s, CPU {cpu:.1f} s, {persons / wall:,.0f} persons/s; "
          f"rows {rows}; target < 120 s wall: {'met' if wall < 120 else 'NOT met'}", flush=True)


if __name__ == "__main__":
    main()
