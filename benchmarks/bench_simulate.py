"""Benchmark `escalate simulate`: the default cohort (3,000 patients) and a large one (100,000 by default).

Prints each run's CPU time (time.process_time: robust on a shared, loaded machine), wall time, patients per CPU
second, the share of CPU spent scoring the Monte Carlo truth, and the ratio of per-patient CPU cost to the
3,000-patient baseline measured in the same process. Run on demand:
`python benchmarks/bench_simulate.py [--large N] [--mc-draws D] [--mode observational|trial]`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import simulator.engine as engine
from pipeline.settings import load_settings
from pipeline.simulate import build_inputs
from simulator.engine import simulate_cohort


class _ScoringClock:
    """Wraps the engine's `score_pairs` to add up the CPU seconds spent scoring TIS / DOI."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._inner = engine.score_pairs

    def __call__(self, *args: Any) -> Any:
        started = time.process_time()
        try:
            return self._inner(*args)
        finally:
            self.seconds += time.process_time() - started


def run(n: int, draws: int | None, mode: str) -> float:
    """Simulate n patients (params.yaml seed and today); print timings; return CPU seconds."""
    config, vocabulary, catalog = build_inputs()
    if draws is not None:
        config = config.model_copy(update={"truth": config.truth.model_copy(update={"mc_draws": draws})})
    settings = load_settings()
    clock = _ScoringClock()
    engine.score_pairs = clock
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        cohort = simulate_cohort(n, settings.simulate.seed, config, vocabulary, catalog,
                                 str(settings.simulate.today or settings.data.today), mode)  # type: ignore[arg-type]
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        engine.score_pairs = clock._inner
    print(
        f"{n:>7} patients ({mode}, {config.truth.mc_draws} draws): CPU {cpu:7.1f} s, wall {wall:7.1f} s, "
        f"{n / cpu:7.0f} patients/CPU-s, scoring {clock.seconds / cpu:4.0%} of CPU, "
        f"{len(cohort.decisions)} decisions, {len(cohort.assessments)} assessment rows",
        flush=True,
    )
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--mc-draws", type=int, default=None)
    parser.add_argument("--mode", choices=("observational", "trial"), default="observational")
    args = parser.parse_args()
    base = run(3000, args.mc_draws, args.mode)
    big = run(args.large, args.mc_draws, args.mode)
    print(f"per-patient CPU cost ratio ({args.large} vs 3000): {(big / args.large) / (base / 3000):.2f}")


if __name__ == "__main__":
    main()
