"""`escalate features` and `escalate split`: decision points, point-in-time features, labels and the patient split.

Training mode (`escalate features`) reads the contract tables of `--data`, validates them (patients with an error
are rejected and counted, never silently dropped), derives decision points, builds features and labels, and writes
into `--out` (default `data/features/`): `decisions.parquet`, `features.parquet`, `feature_dictionary.json`,
`current_regimen.parquet` and `counts.json` (a DVC metric). When `DATA/truth/` exists (a simulated cohort), the
counts also say how well the derivation recovers the simulator's true decision points, options and outcomes, and
hold the settings that simulated it (`DATA/simulation.json`, logged by `train` as MLflow params).

Scoring mode (`escalate features --as-of DATE --out FILE`) builds one row per patient as of DATE with the same
code path, writing FILE plus `<FILE stem>_current_regimen.parquet` and `<FILE stem>_feature_dictionary.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pipeline.cli_types import Refusal
from pipeline.config import load_catalog, load_options, one_thread_numerics

if TYPE_CHECKING:
    from features.config import FeatureConfig, LabelConfig
    from pipeline.settings import Settings

FEATURES_DIR = Path("data/features")
SPLIT_DIR = Path("data/split")


def _check_named_codes(settings: Settings, vocabulary: Any, measures: Any) -> None:
    """params.yaml's lists of drug classes and events name ones the reference data knows: a typo
    (`serios_infection`) would silently change the labels or the decisions, so it is refused naming the key."""
    from pipeline.cli_types import Refusal

    classes = sorted({d.drug_class for d in vocabulary.drugs})
    events = sorted(measures.codes("event"))
    decisions = settings.features.decisions
    for key, named, known in (("features.decisions.option_ignore_classes", decisions.option_ignore_classes, classes),
                              ("features.decisions.stability_ignore_classes", decisions.stability_ignore_classes,
                               classes),
                              ("labels.safety_events", settings.labels.safety_events, events)):
        unknown = [n for n in named if n not in known]
        if unknown:
            raise Refusal(f"params.yaml: {key}: {unknown} not known (rule: one of {', '.join(known)})")


def _load(data: Path, today: str, settings: Settings) -> tuple[dict[str, Any], Any, Any, Any]:
    """Validated, normalised tables (patients with an error rejected and reported) and the reference data."""
    import pandas as pd

    from features.contract import MeasureCatalog, check
    from features.vocabulary import Vocabulary
    from pipeline.io import read_contract_tables

    vocabulary = load_catalog("drugs", Vocabulary.from_config)
    catalog = load_options(vocabulary)
    measures = load_catalog("measures", MeasureCatalog.from_config)
    _check_named_codes(settings, vocabulary, measures)
    result = check(read_contract_tables(data), vocabulary, measures, pd.Timestamp(today))
    n_errors = len(result.errors)
    if len(result.rejected_patients):
        typer.echo(f"{n_errors} contract error(s): {len(result.rejected_patients)} patient(s) rejected "
                   f"(run `escalate validate --data {data}` for the list)", err=True)
    if result.normalised["patients"].empty:
        raise typer.BadParameter(f"no valid patient left in {data} after the data contract", param_hint="--data")
    info = {"patients": int(len(result.normalised["patients"]) + len(result.rejected_patients)),
            "rejected_patients": int(len(result.rejected_patients)), "contract_errors": int(n_errors)}
    return result.normalised, vocabulary, catalog, info


def build_training_set(tables: dict[str, Any], vocabulary: Any, catalog: Any, fconfig: FeatureConfig,
                       lconfig: LabelConfig, today: str, truth_dir: Path | None = None) -> dict[str, Any]:
    """Decisions (keys, option, eligibility, labels), features, dictionary, current regimen and counts."""
    import pandas as pd

    from features.build import build_features, option_eligibility
    from features.decisions import compare_with_truth, derive_decisions
    from features.labels import label_agreement, outcome_labels
    from features.response import response_threshold

    derived = derive_decisions(tables, vocabulary, catalog, fconfig, lconfig.carry_forward_days, today)
    labels = outcome_labels(derived, tables, lconfig)
    modelled = derived["option_taken"].isin(catalog.names).to_numpy() & derived["option_window_complete"].to_numpy()
    fs = build_features(derived.loc[modelled, ["patient_id", "decision_id", "as_of"]], tables, vocabulary, catalog,
                        fconfig)
    eligibility = option_eligibility(fs, catalog, vocabulary)
    decisions = pd.concat(
        [derived[modelled].reset_index(drop=True), eligibility.reset_index(drop=True),
         labels[modelled].reset_index(drop=True)],
        axis=1,
    )
    taken = decisions["option_taken"].to_numpy()
    taken_eligible = pd.Series(False, index=decisions.index)
    for name in catalog.names:
        taken_eligible |= (taken == name) & decisions[f"eligible_{name}"].to_numpy(bool)
    counts: dict[str, Any] = {
        "decision_points": int(len(derived)),
        "decisions_written": int(len(decisions)),
        "options_taken": {str(k): int(v) for k, v in derived["option_taken"].value_counts().items()},
        "other_changes": int((derived["option_taken"] == "other").sum()),
        "option_window_incomplete": int((~derived["option_window_complete"]).sum()),
        "option_taken_not_eligible": int((~taken_eligible).sum()),
        "labels_missing": {c: int(decisions[c].isna().sum())
                           for c in ("total_improvement_score", "response", "skin_response", "safety_event")},
        "label_missing_reasons": {str(k): int(v) for k, v in
                                  decisions["label_missing_reason"].value_counts().head(10).items()},
        "features": int(fs.matrix.shape[1]),
    }
    if truth_dir is not None and (truth_dir / "decisions.parquet").is_file():
        truth = pd.read_parquet(truth_dir / "decisions.parquet")
        comparison = compare_with_truth(derived, truth)
        complete = compare_with_truth(derived[derived["option_window_complete"]], truth)
        comparison["option_accuracy_complete_windows"] = complete["option_accuracy"]
        if (truth_dir / "outcomes.parquet").is_file():
            comparison["labels"] = label_agreement(
                labels, derived, truth, pd.read_parquet(truth_dir / "outcomes.parquet"),
                response_threshold(lconfig.response_category),
            )
        counts["truth"] = comparison
    return {"decisions": decisions, "features": fs.features, "dictionary": fs.dictionary,
            "current_regimen": fs.current_regimen, "counts": counts}


@one_thread_numerics
def run_features(params: Settings | Path = Path("params.yaml"), data: Path | None = None, out: Path | None = None,
                 as_of: str | None = None, today: str | None = None) -> None:
    """The stage: training-mode outputs into `out` (default data/features), or score-mode features as of a date."""
    import pandas as pd

    from pipeline.io import read_json, write_json, write_parquet
    from pipeline.settings import resolve
    from pipeline.simulate import SIMULATION_RECORD

    settings = resolve(params)
    data = Path(data if data is not None else settings.data.dir)
    the_day = str(today or settings.data.today or pd.Timestamp.today().date().isoformat())
    if as_of is not None and str(as_of) > the_day:  # ISO dates compare as text; as score and report refuse it
        raise Refusal(f"--as-of {as_of} is in the future (today is {the_day}): features can only use what is "
                      "already recorded")
    tables, vocabulary, catalog, info = _load(data, the_day, settings)

    if as_of is not None:
        from features.build import build_features, without_record_before

        try:
            when = pd.Timestamp(as_of)
        except ValueError as err:
            raise typer.BadParameter(f"{as_of!r} is not a date (YYYY-MM-DD)", param_hint="--as-of") from err
        fconfig = settings.features
        # as the batch job and the page do: nothing recorded before the date, no row of an average patient
        unrecorded = without_record_before(tables["patients"], tables["assessments"], when)
        if len(unrecorded):
            typer.echo(f"{len(unrecorded)} patient(s) with no assessment before {when.date()} get no row "
                       f"(rule: {unrecorded['rule'].iloc[0]})", err=True)
        listed = tables["patients"]["patient_id"].astype(str)
        keys = pd.DataFrame({"patient_id": listed[~listed.isin(unrecorded["patient_id"].astype(str))].to_numpy(),
                             "as_of": when})
        fs = build_features(keys, tables, vocabulary, catalog, fconfig)
        target = Path(out or f"data/features_as_of_{when.date()}.parquet")
        write_parquet(fs.features, target)
        write_parquet(fs.current_regimen, target.with_name(f"{target.stem}_current_regimen.parquet"))
        write_json(fs.dictionary.to_dict(orient="records"), target.with_name(f"{target.stem}_feature_dictionary.json"))
        typer.echo(f"features of {len(fs.features)} patient(s) as of {when.date()} → {target}")
        return

    out_dir = Path(out or FEATURES_DIR)
    result = build_training_set(tables, vocabulary, catalog, settings.features, settings.labels, the_day,
                                data / "truth")
    counts = {**info, **result["counts"]}
    if (data / SIMULATION_RECORD).is_file():  # a simulated cohort: the settings that made it (MLflow params)
        counts["simulation"] = read_json(data / SIMULATION_RECORD)
    write_parquet(result["decisions"], out_dir / "decisions.parquet")
    write_parquet(result["features"], out_dir / "features.parquet")
    write_parquet(result["current_regimen"], out_dir / "current_regimen.parquet")
    write_json(result["dictionary"].to_dict(orient="records"), out_dir / "feature_dictionary.json")
    write_json(counts, out_dir / "counts.json", round_floats=True)
    typer.echo(f"{counts['decision_points']} decision points, {counts['decisions_written']} written "
               f"({counts['other_changes']} other, {counts['option_window_incomplete']} with the option window "
               f"past {the_day}); {counts['features']} features → {out_dir}")
    if "truth" in counts:
        t = counts["truth"]
        typer.echo(f"vs simulator truth: precision {t['precision']:.3f}, recall {t['recall']:.3f}, "
                   f"option accuracy {t['option_accuracy']:.3f}")


@one_thread_numerics
def run_split(params: Settings | Path = Path("params.yaml"), features_dir: Path = FEATURES_DIR,
              out: Path = SPLIT_DIR) -> None:
    """The stage: `out/split.parquet` (patient_id, set) from the patients of `features_dir/decisions.parquet`."""
    import pandas as pd

    from features.split import patient_split
    from pipeline.io import write_parquet
    from pipeline.settings import resolve

    sconfig = resolve(params).split
    decisions = pd.read_parquet(Path(features_dir) / "decisions.parquet", columns=["patient_id"])
    patients = pd.Series(pd.unique(decisions["patient_id"].astype(str)), name="patient_id")
    split = pd.DataFrame({"patient_id": patients, "set": patient_split(patients, sconfig).to_numpy()})
    write_parquet(split, Path(out) / "split.parquet")
    n_test = int((split["set"] == "test").sum())
    typer.echo(f"{len(split)} patients: {len(split) - n_test} train, {n_test} test → {Path(out) / 'split.parquet'}")
