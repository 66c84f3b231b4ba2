"""Benchmark `escalate simulate`: the default cohort (3,000 patients) and a large one (100,000 by default).

First prints the full simulator card (docs/simulator.md) of the 3,000-patient cohort (`--card-seeds` for more
seeds, `--config` for another settings file, e.g. configs/simulator-easy.yaml). Then prints each run's CPU time (time.process_time: robust on a shared, loaded machine), wall time, patients per CPU
second, the share of CPU spent scoring the Monte Carlo truth, and the ratio of per-patient CPU cost to the
3,000-patient baseline measured in the same process. Run on demand:
`python benchmarks/bench_simulate.py [--large N] [--mc-draws D] [--mode observational|trial] [--config FILE]
[--card-seeds 2027,9001] [--card-only] [--anchor-seeds 7,8,18,42]`. `--anchor-seeds` prints the trial anchors
(ProDERM at 16 weeks, the abatacept trial's DOI at 24 weeks; docs/sources.md §3) for each seed, 1,200 patients and
40 draws as in tests/model/test_simulator.py, and exits.
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


#: (trial population, option, horizon, truth column, published rate) — the calibration anchors of docs/sources.md §3.
ANCHORS: tuple[tuple[str, str, int, str, float], ...] = (
    ("proderm", "continue", 16, "p_tis20", 0.44),
    ("proderm", "add_ivig", 16, "p_tis20", 0.79),
    ("proderm", "add_ivig", 16, "p_tis40", 0.68),
    ("proderm", "add_ivig", 16, "p_tis60", 0.32),
    ("abatacept_dm", "continue", 24, "p_doi", 0.50),
    ("abatacept_dm", "add_abatacept", 24, "p_doi", 0.55),
)


def anchors(seed: int, config_file: Path | None, n: int = 1200, draws: int = 40) -> None:
    """Print each trial anchor's simulated rate (mean truth over the eligible) beside the published one."""
    config, vocabulary, catalog = build_inputs(config_file)
    config = config.model_copy(update={"truth": config.truth.model_copy(update={"mc_draws": draws})})
    today = str(load_settings().simulate.today or load_settings().data.today)
    cohorts = {pop: simulate_cohort(n, seed, config, vocabulary, catalog, today, "trial", pop)
               for pop in sorted({a[0] for a in ANCHORS})}
    parts = []
    for pop, option, horizon, column, target in ANCHORS:
        o = cohorts[pop].outcomes
        value = o.loc[(o["option"] == option) & (o["horizon_weeks"] == horizon) & o["eligible"], column].mean()
        parts.append(f"{pop} {option} {column}@{horizon}wk {value:.3f} ({value - target:+.3f})")
    print(f"trial anchors, seed {seed}: " + "; ".join(parts), flush=True)


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
    parser.add_argument("--anchor-seeds", default=None, help="comma-separated trial seeds: print the anchors and exit")
    args = parser.parse_args()
    if args.anchor_seeds:
        for seed in (int(s) for s in args.anchor_seeds.split(",")):
            anchors(seed, args.config)
        return
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
