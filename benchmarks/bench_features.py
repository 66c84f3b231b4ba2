"""Benchmark: point-in-time feature building for 10k, 50k and 100k simulated patients versus a per-patient loop.

Cohorts come from the simulator in chunks of 10k patients (seed + chunk; ids prefixed per chunk so they stay
distinct), each normalised once by the data contract and cached as Parquet (default /tmp/escalate_bench_features)
so reruns skip simulation. For each size the script times decision derivation, the feature builder (decisions per
second; peak traced memory in a second, traced pass) and the labels. Speed-up and scaling ratios use process CPU
seconds (wall seconds are printed too) so other load on a shared machine does not distort them. The baseline, in the same run, is the
straightforward implementation: loop over patients, select that patient's rows, build its features — timed on a
sample of patients from the first chunk and compared per decision (its output is checked equal to the vectorised
one). Targets: ≥ 20× faster than the loop; 100k takes ≤ 11× the time of 10k.

    python benchmarks/bench_features.py [--sizes 10000 50000 100000] [--loop-patients 300] [--cache DIR]
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.build import build_features  # noqa: E402
from features.contract import MeasureCatalog, normalise  # noqa: E402
from features.decisions import derive_decisions  # noqa: E402
from features.labels import outcome_labels  # noqa: E402
from features.vocabulary import OptionCatalog, Vocabulary  # noqa: E402
from pipeline.config import load_reference  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402

CHUNK = 10_000
TABLES = ("patients", "regimens", "assessments", "events")
TEXT = {"patients": ("patient_id",), "regimens": ("patient_id", "drug", "generic", "drug_class", "route",
                                                   "dose_unit", "interval"),
        "assessments": ("patient_id", "measure", "unit"), "events": ("patient_id", "event", "details")}


def chunk_tables(i: int, seed: int, today: str, cache: Path, vocabulary, catalog, measures) -> dict[str, pd.DataFrame]:
    """Normalised tables of simulated chunk i (cached); text columns as categories to keep 100k in memory."""
    folder = cache / f"chunk{i:02d}_seed{seed + i}"
    if not (folder / "assessments.parquet").is_file():
        from simulator.config import SimulatorConfig
        from simulator.engine import simulate_cohort

        config = SimulatorConfig.from_config(load_reference("simulator"))
        config = config.model_copy(update={"truth": config.truth.model_copy(update={"mc_draws": 10})})
        t0 = time.perf_counter()
        cohort = simulate_cohort(CHUNK, seed + i, config, vocabulary, catalog, today)
        t1 = time.perf_counter()
        raw = {name: getattr(cohort, name) for name in TABLES}
        for df in raw.values():
            df["patient_id"] = f"C{i:02d}-" + df["patient_id"].astype(str)
        tables = normalise(raw, vocabulary, measures, today)
        print(f"  chunk {i}: simulated {CHUNK} patients in {t1 - t0:.1f} s, normalised in "
              f"{time.perf_counter() - t1:.1f} s", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        for name, df in tables.items():
            df.to_parquet(folder / f"{name}.parquet", index=False)
    out = {}
    for name in TABLES:
        df = pd.read_parquet(folder / f"{name}.parquet")
        for col in TEXT[name]:
            if col in df.columns:
                df[col] = df[col].astype("category")
        out[name] = df
    return out


def concat(chunks: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    out = {}
    for name in TABLES:
        frames = [c[name] for c in chunks]
        df = pd.concat(frames, ignore_index=True)
        for col in TEXT[name]:
            if col in df.columns:
                df[col] = df[col].astype("category")
        out[name] = df
    return out


def loop_baseline(tables, decisions, vocabulary, catalog, n_patients: int) -> tuple[float, int, pd.DataFrame]:
    """The straightforward implementation: one patient at a time, building that patient's features."""
    patients = pd.unique(decisions["patient_id"])[:n_patients]
    keys = decisions.loc[decisions["patient_id"].isin(patients), ["patient_id", "decision_id", "as_of"]]
    # each patient's rows are selected before the clock starts: the loop is charged for building only
    per_patient = {
        name: {pid: g for pid, g in df[df["patient_id"].isin(patients)].groupby("patient_id", observed=True)}
        for name, df in tables.items()
    }
    empty = {name: df.iloc[:0] for name, df in tables.items()}
    t0 = time.process_time()
    parts = []
    for pid in patients:
        mine = {name: per_patient[name].get(pid, empty[name]) for name in tables}
        parts.append(build_features(keys[keys["patient_id"] == pid], mine, vocabulary, catalog).matrix)
    elapsed = time.process_time() - t0
    return elapsed, len(keys), pd.concat(parts, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--loop-patients", type=int, default=300)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/escalate_bench_features"))
    args = parser.parse_args()
    if any(s % CHUNK for s in args.sizes):
        parser.error(f"sizes must be multiples of {CHUNK}")

    settings = load_settings(ROOT / "params.yaml")
    seed, today = settings.seed, str(settings.data.today or "2026-11-01")
    vocabulary = Vocabulary.from_config(load_reference("drugs"))
    catalog = OptionCatalog.from_config(load_reference("options"))
    measures = MeasureCatalog.from_config(load_reference("measures"))
    n_chunks = max(args.sizes) // CHUNK
    print(f"cohort: {n_chunks} chunk(s) of {CHUNK} simulated patients (cache {args.cache})", flush=True)
    chunks = [chunk_tables(i, seed, today, args.cache, vocabulary, catalog, measures) for i in range(n_chunks)]

    rows = []
    base_rate = None
    for size in sorted(args.sizes):
        tables = concat(chunks[: size // CHUNK])
        gc.collect()
        t0 = time.perf_counter()
        decisions = derive_decisions(tables, vocabulary, catalog, today=today)
        t1 = time.perf_counter()
        keys = decisions[["patient_id", "decision_id", "as_of"]]
        c1 = time.process_time()
        fs = build_features(keys, tables, vocabulary, catalog)
        c2 = time.process_time()
        t2 = time.perf_counter()
        outcome_labels(decisions, tables)
        t3 = time.perf_counter()
        del fs
        gc.collect()
        tracemalloc.start()
        build_features(keys, tables, vocabulary, catalog)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append({"patients": size, "assessment_rows": len(tables["assessments"]), "decisions": len(decisions),
                     "derive_s": t1 - t0, "features_s": t2 - t1, "features_cpu_s": c2 - c1, "labels_s": t3 - t2,
                     "decisions_per_s": len(decisions) / (t2 - t1), "features_peak_mib": peak / 2**20})
        print(f"  {size:>7} patients: {len(decisions)} decisions; derive {t1 - t0:.1f} s, features {t2 - t1:.1f} s "
              f"({len(decisions) / (t2 - t1):,.0f} decisions/s, peak {peak / 2**20:,.0f} MiB traced), "
              f"labels {t3 - t2:.1f} s", flush=True)
        if base_rate is None:  # the loop baseline on the first (smallest) cohort, same process
            loop_s, loop_n, loop_matrix = loop_baseline(tables, decisions, vocabulary, catalog, args.loop_patients)
            sample = decisions["patient_id"].isin(pd.unique(decisions["patient_id"])[: args.loop_patients])
            vec = build_features(decisions.loc[sample, ["patient_id", "decision_id", "as_of"]], tables,
                                 vocabulary, catalog).matrix
            pd.testing.assert_frame_equal(vec.reset_index(drop=True), loop_matrix, check_exact=False, rtol=1e-9)
            base_rate = loop_n / loop_s
            print(f"  per-patient loop: {loop_n} decisions of {args.loop_patients} patients in {loop_s:.1f} CPU s "
                  f"({base_rate:,.1f} decisions/CPU s); output identical to the vectorised builder", flush=True)
        del tables, decisions, keys
        gc.collect()

    table = pd.DataFrame(rows)
    # CPU seconds are compared (the loop and the ratios), so other load on a shared machine does not skew them
    table["speedup_vs_loop"] = table["decisions"] / table["features_cpu_s"] / base_rate
    first = table.iloc[0]
    table["time_ratio_vs_smallest"] = table["features_cpu_s"] / first["features_cpu_s"]
    table["size_ratio"] = table["patients"] / first["patients"]
    pd.set_option("display.width", 200)
    print()
    print(table.round(2).to_string(index=False))
    print(f"\nmax RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    print(f"speed-up vs the per-patient loop at {int(first['patients'])} patients: {first['speedup_vs_loop']:.0f}× "
          f"in CPU time (target ≥ 20×)")
    if len(table) > 1:
        last = table.iloc[-1]
        print(f"{int(last['patients'])} patients took {last['time_ratio_vs_smallest']:.1f}× the CPU time of "
              f"{int(first['patients'])} for {last['size_ratio']:.0f}× the patients (target ≤ 11× for 10×)")


if __name__ == "__main__":
    main()
