"""`escalate simulate`: write a literature-calibrated simulated cohort (contract tables + truth) as Parquet.

Reads `params.yaml` (`seed`, `simulate:`, and `data.today` when `simulate.today` is null) and
`configs/{simulator,drugs,options}.yaml` (or another simulator file, `--config`: stress scenarios are files), calls
the pure `simulator.simulate_cohort`, and writes DIR/{patients,regimens,assessments,events}.parquet,
DIR/truth/{decisions,outcomes}.parquet, the settings it used
(DIR/simulation.json) and, for an observational cohort, the simulator card DIR/card.json (docs/simulator.md;
headline numbers also to `metrics`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from features.config import EARLIEST_DAY
from pipeline.config import load_catalog, load_options, one_thread_numerics, read_yaml, validated

if TYPE_CHECKING:
    from pipeline.settings import Settings

TABLES = ("patients", "regimens", "assessments", "events")
#: the settings a simulated cohort was made with, beside its tables (read by `features` into counts.json)
SIMULATION_RECORD = "simulation.json"


def build_inputs(config_file: Path | None = None) -> tuple[Any, Any, Any]:
    """The simulator's frozen configuration (`config_file`, default configs/simulator.yaml), the drug vocabulary
    and the option catalogue from `configs/`."""
    from features.vocabulary import Vocabulary
    from simulator.config import SimulatorConfig

    simulator = (load_catalog("simulator", SimulatorConfig.from_config) if config_file is None
                 else validated(read_yaml(config_file), SimulatorConfig.from_config, f"--config {config_file}"))
    vocabulary = load_catalog("drugs", Vocabulary.from_config)
    return simulator, vocabulary, load_options(vocabulary)


def write_cohort(cohort: Any, out: Path) -> dict[str, int]:
    """Write the contract tables and the truth as Parquet; returns row counts per file."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(exist_ok=True)
    counts: dict[str, int] = {}
    for name in TABLES:
        frame = getattr(cohort, name)
        frame.to_parquet(out / f"{name}.parquet", index=False)
        counts[name] = len(frame)
    for name in ("decisions", "outcomes"):
        frame = getattr(cohort, name)
        frame.to_parquet(out / "truth" / f"{name}.parquet", index=False)
        counts[f"truth/{name}"] = len(frame)
    return counts


@one_thread_numerics
def run_simulate(params: Settings | Path = Path("params.yaml"), out: Path = Path("data/cohort"),
                 patients: int | None = None, seed: int | None = None, mode: str | None = None,
                 trial_population: str | None = None, today: str | None = None, mc_draws: int | None = None,
                 config_file: Path | None = None, metrics: Path | None = None, fmt: str = "contract") -> None:
    """The stage: simulate the cohort (arguments left None come from the settings) and write it to `out`, with
    the simulator card (observational mode) as `out`/card.json and its headline numbers in `metrics`. `fmt`
    "omop" writes the contract tables as an OMOP CDM v5.4 DuckDB database, `out`/cdm.duckdb (pipeline/omop.py)."""
    from pipeline.io import write_json
    from pipeline.settings import resolve
    from simulator.engine import simulate_cohort

    settings = resolve(params)
    section = settings.simulate
    n = int(patients if patients is not None else section.patients)
    s = int(seed if seed is not None else section.seed)
    m = str(mode if mode is not None else section.mode)
    if m not in ("observational", "trial"):
        raise typer.BadParameter(f"--mode must be observational or trial, got {m!r}", param_hint="--mode")
    day = str(today if today is not None else section.today or settings.data.today or "")
    if not day:
        raise typer.BadParameter("the cohort needs a today: set simulate.today or data.today in params.yaml",
                                 param_hint="--today")
    config, vocabulary, catalog = build_inputs(config_file)  # a file that breaks a rule: ConfigFileError, one line
    if mc_draws is not None:
        config = config.model_copy(update={"truth": config.truth.model_copy(update={"mc_draws": mc_draws})})
    started = time.perf_counter()
    if trial_population is not None and trial_population not in config.trial.populations:
        known = ", ".join(config.trial.populations)
        raise typer.BadParameter(f"unknown trial population {trial_population!r}; configured: {known}", param_hint="--trial-population")
    cohort = simulate_cohort(n, s, config, vocabulary, catalog, day, m, trial_population)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    born = int(cohort.patients["birth_year"].min()) if len(cohort.patients) else EARLIEST_DAY.year
    if born < EARLIEST_DAY.year:  # the contract would reject those patients: write nothing
        later = int(day[:4]) + EARLIEST_DAY.year - born
        raise typer.BadParameter(f"with today {day} the oldest simulated patient is born in {born}, before the data "
                                 f"contract's earliest birth year {EARLIEST_DAY.year}: choose a today in {later} or "
                                 "later", param_hint="--today")
    if fmt == "omop":
        from pipeline.omop import write_cohort_omop

        counts = write_cohort_omop(cohort, out, day)
    else:
        counts = write_cohort(cohort, out)
    # what made these tables, for the training run's MLflow params (`--patients` may override params.yaml); an
    # OMOP database keeps it beside cdm.duckdb (`import omop` writes recorded-data tables: not carried over)
    record = {"patients": n, "mode": m, "today": day, "seed": s,
              "config": str(config_file) if config_file is not None else "configs/simulator.yaml",
              "mc_draws": int(config.truth.mc_draws)}
    if m == "trial":
        record["trial_population"] = trial_population or config.trial.default_population
    write_json(record, out / SIMULATION_RECORD)
    what = f"trial: {trial_population or config.trial.default_population}" if m == "trial" else m
    typer.echo(f"simulated {n} patients ({what}, seed {s}, today {day}) in {elapsed:.1f} s → {out}")
    for name, count in counts.items():
        typer.echo(f"  {name}: {count} rows")
    if m == "observational":
        from simulator.card import card_metrics, dvc_metrics, simulator_card

        card = simulator_card(cohort, config, catalog)
        write_json(card, out / "card.json")
        headline = card_metrics(card)
        if metrics is not None:
            write_json(dvc_metrics(card), metrics, round_floats=True)
        typer.echo("  card: " + ", ".join(f"{k} {v}" for k, v in headline.items()))
