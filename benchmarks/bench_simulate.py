"""Benchmark `escalate simulate`: the default cohort (3,000 patients) and a large one (100,000 by default).

First prints the full simulator card (docs/simulator.md) of the 3,000-patient cohort (`--card-seeds` for more
seeds, `--config` for another settings file, e.g. configs/simulator-easy.yaml). Then prints each run's CPU time (time.process_time: robust on a shared, loaded machine), wall time, patients per CPU
second, the share of CPU spent scoring the Monte Carlo truth, and the ratio of per-patient CPU cost to the
3,000-patient baseline measured in the same process. Run on demand:
`python benchmarks/bench_simulate.py [--large N] [--mc-draws D] [--mode observational|trial] [--config FILE]
[--card-seeds 2027,9001] [--card-only]`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
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


def card(n: int, seed: int, config_file: Path | None) -> None:
    """Print the full simulator card of an n-patient observational cohort."""
    from simulator.card import card_metrics, simulator_card

    config, vocabulary, catalog = build_inputs(config_file)
    settings = load_settings()
    cohort = simulate_cohort(n, seed, config, vocabulary, catalog, str(settings.simulate.today or settings.data.today))
    full = simulator_card(cohort, config, catalog)
    print(f"simulator card: {n} patients, seed {seed}, {config_file or 'configs/simulator.yaml'}")
    print(json.dumps(full, indent=1))
    print("headline:", card_metrics(full), flush=True)


def run(n: int, draws: int | None, mode: str, config_file: Path | None = None) -> float:
    """Simulate n patients (params.yaml seed and today); print timings; return CPU seconds."""
    config, vocabulary, catalog = build_inputs(config_file)
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
    parser.add_argument("--config", type=Path, default=None, help="simulator settings file")
    parser.add_argument("--card-seeds", default=None, help="comma-separated seeds (default: params seed)")
    parser.add_argument("--card-only", action="store_true", help="print the card(s) and skip the timings")
    args = parser.parse_args()
    seeds = [int(s) for s in args.card_seeds.split(",")] if args.card_seeds else [load_settings().simulate.seed]
    for seed in seeds:
        card(3000, seed, args.config)
    if args.card_only:
        return
    base = run(3000, args.mc_draws, args.mode, args.config)
    big = run(args.large, args.mc_draws, args.mode, args.config)
    print(f"per-patient CPU cost ratio ({args.large} vs 3000): {(big / args.large) / (base / 3000):.2f}")


if __name__ == "__main__":
    main()
