"""The `escalate` subcommands: parse and check options, refuse bad runs, call the stage's `run_*`, print a summary.

Standard library and typer only at the top: a command's help and its refusals (bad dates, a missing `--data`, an
unwritable `--out`, broken settings) come before the stage module and the scientific stack are imported.
`pipeline.cli` maps each command name to its function here and imports this module only when a command runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli_types import (
    DATE_METAVAR,
    Refusal,
    iso_date_option,
    require_dir,
    require_own_folder,
    require_writable,
)

if TYPE_CHECKING:
    from pipeline.settings import Settings

PARAMS = Path("params.yaml")
FEATURES_DIR = Path("data/features")
SPLIT_DIR = Path("data/split")
TRAIN_DIR = Path("data/train")

# The options several commands share, spelled once.
ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml to read the settings from")]
DataOption = Annotated[Path, typer.Option("--data", help="folder of contract tables (patients, regimens, "
                                                         "assessments[, events] as .parquet or .csv)")]
TodayOption = Annotated[date | None, typer.Option("--today", parser=iso_date_option, metavar=DATE_METAVAR,
                                                  help="the data's extraction date: no record may be dated after "
                                                       "it")]
FeaturesDirOption = Annotated[Path, typer.Option("--features-dir", help="folder written by `escalate features`")]
SplitDirOption = Annotated[Path, typer.Option("--split-dir", help="folder written by `escalate split`")]
TrainDirOption = Annotated[Path, typer.Option("--train-dir", help="folder written by `escalate train`")]


def _settings(params: Path) -> Settings:
    """The validated settings of `params`, loaded before any stage work; a broken file is refused on one line."""
    from pipeline.settings import SettingsError, load_settings

    try:
        return load_settings(params)
    except SettingsError as err:
        raise Refusal(str(err)) from None


#: the stage that writes each file a later stage reads: a missing one names the command to run
WRITTEN_BY = {"features.parquet": "features", "decisions.parquet": "features", "feature_dictionary.json": "features",
              "split.parquet": "split", "escalate_model.joblib": "train", "contract.json": "train"}


@contextmanager
def _inputs_present() -> Iterator[None]:
    """A missing input file (an earlier stage not run, a wrong folder), or a folder given for a file, is refused on
    one line, not a traceback; a file an earlier stage writes names that stage."""
    try:
        yield
    except FileNotFoundError as err:
        text = str(err.filename or err)
        bare_path = err.filename is not None or " " not in text.strip()  # pyarrow raises the path alone
        stage = WRITTEN_BY.get(Path(text.strip()).name) if bare_path else None
        hint = f" (`escalate {stage}` writes it: run it first, or point the option at its output)" if stage else ""
        raise Refusal(f"{text}: no such file{hint}" if bare_path else text) from None
    except IsADirectoryError as err:  # e.g. --dictionary given a folder
        raise Refusal(f"{err.filename or err}: a folder where a file is expected") from None


def _iso(day: date | None) -> str | None:
    """`YYYY-MM-DD` of an already checked date (the stages take dates as text)."""
    return None if day is None else day.isoformat()


def simulate_command(
    out: Annotated[Path, typer.Option("--out", help="folder to write the cohort to")] = Path("data/cohort"),
    patients: Annotated[int | None, typer.Option("--patients", min=1, help="number of patients (default: "
                                                 "params simulate.patients)")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=2**32 - 1,
                                             help="random seed (default: params seed)")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="observational | trial (default: params "
                                             "simulate.mode)")] = None,
    trial_population: Annotated[str | None, typer.Option("--trial-population", help="trial mode: the emulated "
                                                         "trial's population from configs/simulator.yaml "
                                                         "trial.populations (default: trial.default_population)")]
    = None,
    today: Annotated[date | None, typer.Option("--today", parser=iso_date_option, metavar=DATE_METAVAR,
                                               help="the cohort's today (default: params simulate.today, else "
                                                    "data.today)")] = None,
    mc_draws: Annotated[int | None, typer.Option("--mc-draws", min=10, help="Monte Carlo draws per true "
                                                 "probability (default: configs/simulator.yaml)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="simulator settings file (default: "
                                                "configs/simulator.yaml; configs/simulator-easy.yaml is the "
                                                "first, easy testbed)")] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", metavar="<file>", help="write the simulator card's "
                                                "headline numbers here as JSON (the full card is OUT/card.json)")]
    = None,
    fmt: Annotated[str, typer.Option("--format", help="contract: the four contract tables as Parquet; omop: an "
                                     "OMOP CDM v5.4 DuckDB database, OUT/cdm.duckdb (docs/omop.md)")] = "contract",
    params: ParamsOption = PARAMS,
) -> None:
    """Simulate a refractory-myositis cohort with decision points and the true outcome of every option."""
    if mode is not None and mode not in ("observational", "trial"):
        raise typer.BadParameter(f"{mode!r} is not one of observational, trial", param_hint="--mode")
    if fmt not in ("contract", "omop"):
        raise typer.BadParameter(f"{fmt!r} is not one of contract, omop", param_hint="--format")
    if config is not None and not config.is_file():
        raise Refusal(f"--config {config}: no such file (a simulator settings file like configs/simulator.yaml)")
    require_writable(out, "--out", folder=True)
    require_own_folder(out, "--out", "truth", "simulated cohort")  # a simulated cohort always has its truth/
    metrics_path = None if metrics is None else require_writable(metrics, "--metrics", folder=False)
    settings = _settings(params)
    from pipeline.simulate import run_simulate

    run_simulate(settings, out=out, patients=patients, seed=seed, mode=mode, trial_population=trial_population,
                 today=_iso(today), mc_draws=mc_draws, config_file=config, metrics=metrics_path, fmt=fmt)


def import_command(
    kind: Annotated[str, typer.Argument(help="the source's data model: omop (OMOP CDM v5.4)", metavar="omop")],
    source: Annotated[str, typer.Option("--source", help="a DuckDB file, a folder of OMOP tables (.parquet/.csv) "
                                        "or a SQLAlchemy URL, e.g. postgresql://user@host/db")],
    out: Annotated[Path, typer.Option("--out", help="folder to write the four contract tables and "
                                      "import_report.json to")],
    schema: Annotated[str | None, typer.Option("--schema", help="the CDM schema (default: main for DuckDB, the "
                                               "connection's default otherwise)")] = None,
    mapping: Annotated[Path | None, typer.Option("--mapping", help="the concept mapping (default: "
                                                 "configs/omop.yaml)")] = None,
    gap_days: Annotated[int | None, typer.Option("--gap-days", min=0, help="merge exposures of one drug and dose "
                                                 "less than this many days apart (default: params "
                                                 "omop.gap_days)")] = None,
    params: ParamsOption = PARAMS,
) -> None:
    """Import an OMOP CDM v5.4 database as the four contract tables, with an import report (docs/omop.md)."""
    if kind != "omop":
        raise typer.BadParameter(f"{kind!r}: the only importable source is omop", param_hint="KIND")
    if "://" not in source and not Path(source).exists():
        raise Refusal(f"--source {source}: no such file or folder (a DuckDB file, a folder of OMOP tables or a "
                      "SQLAlchemy URL)")
    if mapping is not None and not mapping.is_file():
        raise Refusal(f"--mapping {mapping}: no such file (a mapping like configs/omop.yaml)")
    require_writable(out, "--out", folder=True)
    require_own_folder(out, "--out", "import_report.json", "earlier import")  # e.g. real CSVs, or the source itself
    if gap_days is None:
        gap_days = _settings(params).omop.gap_days
    from pipeline.omop import run_import_omop

    run_import_omop(source, out, mapping_path=mapping, schema=schema, gap_days=gap_days)


def validate_command(
    data: DataOption,
    today: Annotated[date | None, typer.Option("--today", parser=iso_date_option, metavar=DATE_METAVAR,
                                               help="the data's extraction date: no record may be dated after "
                                                    "it (default: the current date)")] = None,
    json_path: Annotated[str | None, typer.Option("--json", metavar="<file>", help="write the findings here as JSON")]
    = None,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="print at most this many findings (0 = all; "
                                              "default: 20; --json has every one)")] = None,
    exit_zero: Annotated[bool, typer.Option("--exit-zero", help="exit 0 even when there are errors, once every "
                                            "finding is in --json (the DVC stage: the later stages reject the "
                                            "patients with an error and count them)")] = False,
) -> None:
    """Check contract tables against the data contract (docs/data-contract.md) and list every violation.

    Exit status: 0 no error (warnings are fine), 1 the contract is broken (0 with --exit-zero), 2 the run is
    refused."""
    require_dir(data, "--data")
    if exit_zero and json_path is None:  # errors that stop nothing must be kept somewhere
        raise typer.BadParameter("needs --json <file>: the findings of a run that goes on despite errors are kept "
                                 "there", param_hint="--exit-zero")
    json_file = None if json_path is None else require_writable(json_path, "--json", folder=False)
    from pipeline.validate import run_validate

    run_validate(data, today=today, json_path=json_file, exit_zero=exit_zero,
                 **({} if limit is None else {"limit": limit}))


def features_command(
    data: Annotated[Path | None, typer.Option("--data", help="folder of contract tables (default: params "
                                                             "data.dir)")] = None,
    out: Annotated[str | None, typer.Option("--out", metavar="<path>", help="training mode: output folder (default "
                                                                         "data/features); with --as-of: the "
                                                                         "features file")]
    = None,
    as_of: Annotated[date | None, typer.Option("--as-of", parser=iso_date_option, metavar=DATE_METAVAR,
                                               help="scoring mode: one row per patient with data dated before "
                                                    "this date")] = None,
    today: Annotated[date | None, typer.Option("--today", parser=iso_date_option, metavar=DATE_METAVAR,
                                               help="the data's extraction date (default: params data.today)")]
    = None,
    params: ParamsOption = PARAMS,
) -> None:
    """Derive decision points, point-in-time features and outcome labels (or score-mode features as of a date)."""
    if data is not None:
        require_dir(data, "--data")
    out_path = None if out is None else require_writable(out, "--out", folder=as_of is None)
    settings = _settings(params)
    if data is None:
        require_dir(settings.data.dir, "--data (params data.dir)")
    from pipeline.features import run_features

    with _inputs_present():  # a folder without the contract tables is one line, not a traceback
        run_features(settings, data=data, out=out_path, as_of=_iso(as_of), today=_iso(today))


def split_command(
    features_dir: FeaturesDirOption = FEATURES_DIR,
    out: Annotated[Path, typer.Option("--out", help="folder for split.parquet")] = SPLIT_DIR,
    params: ParamsOption = PARAMS,
) -> None:
    """Split patients into train and test (by patient id hash with the seed): `split.parquet` (patient_id, set)."""
    require_dir(features_dir, "--features-dir")
    require_writable(out, "--out", folder=True)
    settings = _settings(params)
    from pipeline.features import run_split

    with _inputs_present():
        run_split(settings, features_dir=features_dir, out=out)


def train_command(
    params: ParamsOption = PARAMS,
    features_dir: FeaturesDirOption = FEATURES_DIR,
    split_dir: SplitDirOption = SPLIT_DIR,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="where the bundle, run.json and overlap.json go")]
    = TRAIN_DIR,
) -> None:
    """Fit the response, TIS and safety models on the training patients; log and register them in MLflow."""
    require_dir(features_dir, "--features-dir")
    require_dir(split_dir, "--split-dir")
    require_writable(out_dir, "--out-dir", folder=True)
    settings = _settings(params)
    from pipeline.train import run_train

    with _inputs_present():
        record = run_train(settings, features_dir=features_dir, split_dir=split_dir, out_dir=out_dir)
    registered = (f"registered {record['model_uri']} (alias candidate), run {record['run_id']}"
                  if record["new_version"] else
                  f"the same bytes as {record['model_uri']} (alias candidate, run {record['run_id']}): kept that "
                  "version and its held-out metrics, nothing new registered")
    typer.echo(f"trained {record['learner']} on options {', '.join(record['modelled_options'])} in "
               f"{record['fit_seconds']} s; {registered}")


def evaluate_command(
    params: ParamsOption = PARAMS,
    features_dir: FeaturesDirOption = FEATURES_DIR,
    split_dir: SplitDirOption = SPLIT_DIR,
    train_dir: TrainDirOption = TRAIN_DIR,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="metrics, tables, plots and the model card")]
    = Path("data/evaluate"),
) -> None:
    """Evaluate the trained model on the held-out patients and log the results to its MLflow run.

    On a simulated cohort the simulator's truth (`truth/` in params data.dir) is read too, and refused when it is
    not of the cohort the features were built from."""
    for folder, option in ((features_dir, "--features-dir"), (split_dir, "--split-dir"), (train_dir, "--train-dir")):
        require_dir(folder, option)
    require_writable(out_dir, "--out-dir", folder=True)
    settings = _settings(params)
    from pipeline.evaluate import run_evaluate

    with _inputs_present():
        metrics = run_evaluate(settings, features_dir=features_dir, split_dir=split_dir, train_dir=train_dir,
                               out_dir=out_dir)
    keys = ("response_auroc", "response_ece", "decision_value_recommended", "decision_value_observed",
            "sim_sqrt_pehe", "sim_regret")
    typer.echo(", ".join(f"{k} {metrics[k]:.3f}" for k in keys if metrics.get(k) is not None))


def explain_command(
    features: Annotated[Path, typer.Option("--features", help="feature table the model was trained on")]
    = FEATURES_DIR / "features.parquet",
    dictionary: Annotated[Path, typer.Option("--dictionary", help="feature dictionary (JSON records)")]
    = FEATURES_DIR / "feature_dictionary.json",
    model_dir: Annotated[Path, typer.Option("--model-dir", help="folder with escalate_model.joblib")]
    = TRAIN_DIR / "model",
    out: Annotated[Path, typer.Option("--out", help="output folder (DVC plots)")] = Path("data/explain"),
    sample: Annotated[int, typer.Option("--sample", min=1, help="decision rows explained (seeded sample)")] = 2000,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=2**32 - 1,
                                             help="sampling seed (default: params seed)")] = None,
    mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="log the summaries to MLflow")] = True,
    params: ParamsOption = PARAMS,
) -> None:
    """Global explanation summaries per option: mean |SHAP| table, bar and beeswarm plots."""
    require_dir(model_dir, "--model-dir")
    require_writable(out, "--out", folder=True)
    settings = _settings(params)
    from pipeline.explain import run_explain

    with _inputs_present():
        run_explain(settings, features=features, dictionary=dictionary, model_dir=model_dir, out=out,
                    sample=sample, seed=seed, mlflow_log=mlflow_log)


def promote_command(
    params: ParamsOption = PARAMS,
    out: Annotated[str | None, typer.Option("--out", metavar="<file>", help="write the decision and the champion's "
                                                                         "version here as JSON (registry state: not "
                                                                         "a DVC output)")] = None,
    evidence: Annotated[str | None, typer.Option("--evidence", metavar="<file>", help="write the rule and the "
                                                 "candidate's judged figures here as JSON (same inputs, same bytes: "
                                                 "the DVC output)")] = None,
) -> None:
    """Move alias `champion` to the candidate if it beats the champion on held-out decision value and calibration."""
    out_file, evidence_file = (None if path is None else require_writable(path, option, folder=False)
                               for path, option in ((out, "--out"), (evidence, "--evidence")))
    settings = _settings(params)
    from pipeline.io import write_json
    from pipeline.promote import registry_champion_version, run_promote

    decision = run_promote(settings)
    typer.echo(f"{'promoted' if decision.promote else 'not promoted'}: {decision.reason}")
    if out_file is not None:
        write_json({"promoted": decision.promote, "reason": decision.reason,
                    "champion_version": registry_champion_version()}, out_file)
    if not decision.judged:
        # never record an unjudged candidate as the stage's output: DVC would call the pipeline done
        typer.echo("error: the candidate has no held-out figures, so it cannot be judged; evaluate it first "
                   "(`escalate evaluate`, or under DVC `dvc repro --force --single-item evaluate`, then `dvc repro`)",
                   err=True)
        raise typer.Exit(1)
    if evidence_file is not None:
        write_json(decision.evidence, evidence_file)


def report_command(
    patient: Annotated[str | None, typer.Option("--patient", help="patient identifier (omit with --all)")] = None,
    all_patients: Annotated[bool, typer.Option("--all", help="one page per patient plus a searchable index")]
    = False,
    as_of: Annotated[date | None, typer.Option("--as-of", parser=iso_date_option, metavar=DATE_METAVAR,
                                               help="the decision's date: only records dated before it are used "
                                                    "(default: --today)")] = None,
    data: DataOption = Path("data/cohort"),
    out: Annotated[str, typer.Option("--out", metavar="<path>", help="FILE.html for one patient, a folder with "
                                                                   "--all")] = "report.html",
    model_dir: Annotated[Path, typer.Option("--model-dir", help="fallback bundle folder")] = TRAIN_DIR / "model",
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=20, help="reasons in words per option")] = 3,
    today: TodayOption = None,
) -> None:
    """Write the clinician page of one patient (or of every patient with --all and an index page).

    `--as-of` is the decision date, `--today` the data's extraction date (default: the current date), as for
    `score`: a page as of a past decision works for a patient with later records. Exit status 1: some
    --all pages failed (the others are written; the index says why), 2: refused."""
    if (patient is None) == (not all_patients):
        raise typer.BadParameter("give either --patient ID or --all", param_hint="--patient/--all")
    require_dir(data, "--data")
    out_path = require_writable(out, "--out", folder=all_patients)
    from pipeline.report import ReportRefusal, run_report

    try:
        with _inputs_present():
            run_report(patient, all_patients=all_patients, as_of=as_of, data=data, out=out_path, model_dir=model_dir,
                       top_k=top_k, today=today)
    except ReportRefusal as err:
        raise Refusal(str(err)) from None


def score_command(
    data: DataOption,
    as_of: Annotated[date, typer.Option("--as-of", parser=iso_date_option, metavar=DATE_METAVAR,
                                        help="score as of this date; only data dated before it is used")],
    out: Annotated[Path, typer.Option("--out", help="output folder (part-*.parquet, rejects.parquet, "
                                                    "manifest.json); rerun the same command to resume")],
    model: Annotated[str, typer.Option("--model", help="MLflow model URI")] = "models:/escalate-response@champion",
    engine: Annotated[str, typer.Option("--engine", help="local | spark")] = "local",
    chunk_patients: Annotated[int, typer.Option("--chunk-patients", min=1, help="patients per chunk")] = 1000,
    explain_top: Annotated[int, typer.Option("--explain-top", "--top-k", min=0, max=20,
                                             help="reasons per option (0 = no explanations; --top-k as `report` "
                                                  "names it)")] = 3,
    today: Annotated[date | None, typer.Option("--today", parser=iso_date_option, metavar=DATE_METAVAR,
                                               help="the data's extraction date (default: the current date; "
                                                    "resuming a run: the day it started with)")]
    = None,
    master: Annotated[str | None, typer.Option("--master", help="Spark master (default: SPARK_REMOTE / Spark "
                                                               "config / local[*])")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="local engine: worker processes scoring "
                                                "chunks in parallel (default 1; 0 = in this process)")] = None,
    chunks_per_worker: Annotated[int | None, typer.Option("--chunks-per-worker", min=1, help="local engine: chunks "
                                                          "a worker scores before a fresh one replaces it (bounds "
                                                          "memory; default 25)")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
) -> None:
    """Score every patient of a data folder as of a date: per-option predictions with reasons, rejects, manifest.

    Exit status: 0 patients were scored, 1 none was (every one rejected), 2 the run is refused."""
    if engine not in ("local", "spark"):
        raise typer.BadParameter(f"{engine!r} is not one of local, spark", param_hint="--engine")
    require_dir(data, "--data")
    require_writable(out, "--out", folder=True)
    from models.scoring import ScoreSettings
    from pipeline.score import ScoreRefusal, run_score

    try:
        manifest = run_score(data, as_of.isoformat(), model, out, engine=engine, today=_iso(today), master=master,
                             workers=workers, chunks_per_worker=chunks_per_worker, progress=progress,
                             settings=ScoreSettings(chunk_patients=chunk_patients, explain_top_k=explain_top))
    except ScoreRefusal as err:
        raise Refusal(str(err)) from None
    c = manifest["counts"]
    if not c["scored_patients"]:
        why = (f"all {c['input_patients']} rejected" if c["input_patients"] else
               f"the patients table lists nobody ({c['unknown_patients']} patient(s) not in it have rows)")
        typer.echo(f"escalate score: error: no patient scored: {why} (reasons in {out / 'rejects.parquet'})", err=True)
        raise typer.Exit(1)
    warned = f", {c['warning_rows']} data warning(s) in warnings.parquet" if c.get("warning_rows") else ""
    if c.get("rows_without_patient_id"):  # rejected rows no patient can be rejected for: said, never silent
        warned = f", {c['rows_without_patient_id']} row(s) without a patient id in rejects.parquet" + warned
    typer.echo(f"scored {c['scored_patients']} patient(s), rejected {c['rejected_patients']} "
               f"(+{c['unknown_patients']} unknown{warned}) of {c['input_patients']} with model "
               f"{manifest['model_uri']} (version {manifest['model_version']}) as of {manifest['as_of']} in "
               f"{manifest['timings']['total_s']} s → {out}")
