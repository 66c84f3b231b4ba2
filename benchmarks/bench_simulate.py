"""Benchmark `escalate simulate`: patients per second for the default cohort (3,000) and 100,000 patients.

Prints each run's wall time, patients/s and the ratio of per-patient cost to the 3,000-patient baseline measured
in the same process. Run on demand: `python benchmarks/bench_simulate.py [--large N] [--mc-draws D]`.
"""

from __future__ import annotations

import argparse
import time

from pipeline.config import load_params
from pipeline.simulate import build_inputs
from simulator.engine import simulate_cohort


def run(n: int, draws: int | None) -> float:
    """Simulate n patients (observational mode, params.yaml seed and today); return seconds."""
    config, vocabulary, catalog = build_inputs()
    if draws is not None:
        config = config.model_copy(update={"truth": config.truth.model_copy(update={"mc_draws": draws})})
    params = load_params()
    started = time.perf_counter()
    cohort = simulate_cohort(n, int(params["seed"]), config, vocabulary, catalog, params["simulate"]["today"])
    elapsed = time.perf_counter() - started
    print(
        f"{n:>7} patients: {elapsed:7.1f} s, {n / elapsed:8.0f} patients/s, "
        f"{len(cohort.decisions)} decisions, {len(cohort.assessments)} assessment rows"
    )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--mc-draws", type=int, default=None)
    args = parser.parse_args()
    base = run(3000, args.mc_draws)
    big = run(args.large, args.mc_draws)
    print(f"per-patient cost ratio ({args.large} vs 3000): {(big / args.large) / (base / 3000):.2f}")


if __name__ == "__main__":
    main()
