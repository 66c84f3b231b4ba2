"""`escalate evaluate`: held-out evaluation of the trained bundle, logged to the training run in MLflow.

Writes `data/evaluate/metrics.json` (the headline metrics for `dvc metrics show`), `tables/` (every metric in
`headline.json`, factual metrics, decision value, the model beside its baselines overall and by subgroup,
subgroups, simulator metrics, row counts, the evaluation settings used), `plots/` (CSV data of the calibration,
ROC, Qini and — with the simulator's truth — effect-scatter plots), `figures/` (the same as PNG) and
`model_card.md`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import ROOT, load_reference, one_thread_numerics
from pipeline.settings import EVALUATION_SETTINGS_FILE
from pipeline.train import FEATURES_DIR, SPLIT_DIR, TRAIN_DIR, read_split, select_set

if TYPE_CHECKING:
    from pipeline.settings import Settings

EVALUATE_DIR = Path("data/evaluate")
PLOTS = {  # plot data name -> (csv, png, models.plots function)
    "calibration": ("calibration.csv", "calibration.png", "plot_calibration"),
    "roc": ("roc.csv", "roc.png", "plot_roc"),
    "qini": ("qini.csv", "qini.png", "plot_qini"),
    "effect_scatter": ("effect_scatter.csv", "effect_scatter.png", "plot_effect_scatter"),
}
PLOT_COLUMNS = {
    "calibration": ["option", "bin", "n", "mean_predicted", "observed_rate"],
    "roc": ["option", "false_positive_rate", "true_positive_rate", "threshold"],
    "qini": ["option", "fraction_targeted", "qini", "random", "n_compared"],
    "effect_scatter": ["option", "decision", "true_effect", "predicted_effect"],
}


#: metrics.json: short name -> held-out metric, few and short so `dvc metrics show` fits 120 columns (DVC prints
#: one column per key). Every metric, under its full name, is in tables/headline.json, MLflow and the model card
#: (the response rate under the care given is there too: it does not change with the model).
HEADLINE: dict[str, str] = {
    "auroc": "response_auroc",                # response (TIS at or above the threshold) AUROC
    "ece": "response_ece",                    # its expected calibration error
    "tis_rmse": "tis_rmse",
    "safety_auroc": "safety_auroc",           # serious infection or grade >= 3 cytopenia
    "policy_value": "decision_value_recommended",  # doubly robust response rate if everyone got the recommendation
    "pehe": "sim_sqrt_pehe",                  # simulator only: sqrt PEHE of option-vs-continue effects
    "regret": "sim_regret",                   # simulator only: regret against the oracle
    "coverage": "sim_interval_coverage",      # simulator only: coverage of the true chance by the intervals
}


def truth_dir(data_dir: Path, root: Path = ROOT) -> Path | None:
    """`<data.dir>/truth` when the simulator wrote it (evaluation only), else None."""
    folder = Path(data_dir) / "truth"
    if not folder.is_absolute() and not folder.exists():
        folder = Path(root) / folder
    ok = (folder / "decisions.parquet").is_file() and (folder / "outcomes.parquet").is_file()
    return folder if ok else None


#: the least share of held-out decisions found in the truth, and of those the least share taking the same option,
#: for the truth to be the features' cohort's (its own truth: 0.98 and 1.0 on the default cohort)
TRUTH_MIN_MATCHED, TRUTH_MIN_SAME_OPTION = 0.5, 0.95


def check_truth_belongs(test: Any, decisions: Any, truth_decisions: Any, truth: Path, features_dir: Path) -> None:
    """Refuse the simulator's truth of another cohort (params.yaml `data.dir` not the cohort `--features-dir` was
    built from): its metrics would be computed against outcomes of other patients with the same ids."""
    import typer

    from models.evaluation.simulator import truth_agreement

    matched, same = truth_agreement(test, decisions, truth_decisions)
    if matched < TRUTH_MIN_MATCHED or not same >= TRUTH_MIN_SAME_OPTION:
        raise typer.BadParameter(
            f"the simulator truth in {truth} is not of the cohort {features_dir} was built from: "
            f"{matched:.0%} of its held-out decisions are found in it by patient and visit date"
            + (f", and {same:.0%} of those took the same option" if matched else "")
            + " (rule: the truth of the same cohort, at least "
            f"{TRUTH_MIN_MATCHED:.0%} found and {TRUTH_MIN_SAME_OPTION:.0%} agreeing); point params.yaml data.dir "
            "(or --params) at the cohort the features came from")


@one_thread_numerics
def run_evaluate(
    params: Settings | Path = Path("params.yaml"),
    features_dir: Path = FEATURES_DIR,
    split_dir: Path = SPLIT_DIR,
    train_dir: Path = TRAIN_DIR,
    out_dir: Path = EVALUATE_DIR,
    root: Path = ROOT,
    log_to_mlflow: bool = True,
) -> dict[str, float]:
    """The stage: returns every held-out metric (rounded as written to tables/headline.json) and its seconds."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import typer

    from models import plots
    from models.bundle import interval_meaning, spread_estimates
    from models.evaluation import evaluate_bundle
    from models.model_card import ModelCardInputs, build_model_card
    from pipeline import registry
    from pipeline.io import rounded, write_csv, write_json, write_text
    from pipeline.settings import resolve
    from pipeline.train import git_revision
    from pipeline.trained import check_features_fit, load_bundle, read_run

    started = time.perf_counter()
    settings = resolve(params)
    cfg = settings.evaluation
    bundle_path = Path(train_dir) / "model" / registry.BUNDLE_FILE
    model = load_bundle(bundle_path)
    run = read_run(Path(train_dir) / "run.json")
    if log_to_mlflow:
        registry.setup_mlflow(root)
        if not registry.run_holds_bundle(run["run_id"], bundle_path):
            raise typer.BadParameter(
                f"{Path(train_dir) / 'run.json'} names run {run['run_id']}, which registered another model than "
                f"{bundle_path} (DVC restored this one from its cache without running train): run `dvc repro --force "
                "--single-item train`, then `dvc repro`")
    features = pd.read_parquet(Path(features_dir) / "features.parquet")
    decisions = pd.read_parquet(Path(features_dir) / "decisions.parquet")
    split = read_split(split_dir)
    test = select_set(features, split, "test", "features")
    check_features_fit(model, test, Path(features_dir) / "features.parquet")
    truth = truth_dir(settings.data.dir, root)
    truth_decisions = pd.read_parquet(truth / "decisions.parquet") if truth else None
    truth_outcomes = pd.read_parquet(truth / "outcomes.parquet") if truth else None
    if truth_decisions is not None:
        check_truth_belongs(test, decisions, truth_decisions, truth, features_dir)

    result = evaluate_bundle(model, test, decisions, cfg, truth_decisions, truth_outcomes)
    out = Path(out_dir)
    tables, plot_dir, figures = out / "tables", out / "plots", out / "figures"
    for folder in (tables, plot_dir, figures):
        folder.mkdir(parents=True, exist_ok=True)
    write_csv(result.factual, tables / "factual.csv")
    write_csv(result.decision_values, tables / "decision_value.csv")
    write_csv(result.subgroups, tables / "subgroups.csv")
    write_csv(result.baselines, tables / "baselines.csv")  # model vs guideline list, best single, continue, care
    simulator = result.simulator if result.simulator is not None else pd.DataFrame(columns=["option"])
    write_csv(simulator, tables / "simulator.csv")  # header only without the simulator's truth
    write_json(result.counts, tables / "counts.json")
    write_json(result.headline, tables / "headline.json", round_floats=True)  # every held-out metric
    write_json(cfg.model_dump(mode="json"), out / EVALUATION_SETTINGS_FILE)
    labels = {o.name: o.label for o in model.catalog.options}
    for name, (csv, png, fn) in PLOTS.items():
        data = result.plot_data.get(name, pd.DataFrame(columns=PLOT_COLUMNS[name]))
        write_csv(data, plot_dir / csv)  # always written, so DVC's declared plots exist
        if len(data):
            fig = getattr(plots, fn)(data, labels=labels)
            fig.savefig(figures / png, dpi=110, bbox_inches="tight")
            plt.close(fig)

    n_train = model.summary
    overlap = pd.DataFrame(n_train["overlap"])
    warnings_ = {r["option"]: r["warning"] for r in overlap.to_dict(orient="records") if r.get("warning")}
    catalog = load_reference("options")
    rules = {
        o["name"]: ("always" if o["kind"] == "continue" else
                    "when a current drug is below its target dose" if o["kind"] == "optimise" else
                    f"unless already on {', '.join(o.get('eligible_unless_on', []))}")
        for o in catalog["options"]
    }
    dv_cols = ["policy", "description", "value", "ci_low", "ci_high", "difference_vs_care_given",
               "difference_ci_low", "difference_ci_high"]
    sub_cols = ["subgroup", "level", "n", "events", "auroc", "brier", "calibration_slope", "ece"]
    sim_cols = ["option", "n_eligible", "auroc_model", "auroc_oracle", "sqrt_pehe", "coverage",
                "mean_interval_width"]
    headline = rounded(result.headline)
    # The DVC copy names neither the registry version nor the code revision (new on every run: same inputs,
    # same bytes); the registered version's description carries both.
    inputs = ModelCardInputs(
        model_name=registry.MODEL_NAME,
        learner=model.learner_name,
        selection=pd.DataFrame(model.summary["selection"]) if model.summary.get("selection") else None,
        response_threshold=model.config.response_threshold,
        juvenile_response_threshold=model.config.juvenile_response_threshold,
        interval_meaning=interval_meaning(model.config) + spread_estimates(model.summary),
        horizon_weeks=settings.labels.horizon_weeks,
        labels=model.data_settings.labels if model.data_settings is not None else None,  # what it was trained on
        data_source="literature-calibrated simulated cohort" if truth else f"contract tables in {settings.data.dir}",
        n_train_patients=int(n_train["n_patients"]),
        n_train_decisions=int(n_train["n_decisions"]),
        n_test_patients=result.counts["test_patients"],
        n_test_decisions=result.counts["test_decisions"],
        options=[(o.name, o.label) for o in model.catalog.options],
        eligibility_rules=rules,
        headline=headline,
        decision_values=result.decision_values[[c for c in dv_cols if c in result.decision_values.columns]],
        subgroups=result.subgroups[[c for c in sub_cols if c in result.subgroups.columns]],
        simulator=None if result.simulator is None else result.simulator[
            [c for c in sim_cols if c in result.simulator.columns]],
        baselines=result.baselines,
        guideline=[g for g in model.catalog.guideline if g in model.arms],
        safety_weight=float(model.config.safety_weight),
        confidence_level=cfg.confidence_level,
        overlap_warnings=warnings_,
        modelled_options=list(model.arms),
    )
    write_text(build_model_card(inputs), out / "model_card.md")
    write_json({short: headline[k] for short, k in HEADLINE.items() if k in headline}, out / "metrics.json",
               round_floats=True)

    if log_to_mlflow:
        import mlflow

        with mlflow.start_run(run_id=run["run_id"]):
            mlflow.log_metrics({k: v for k, v in result.headline.items() if v == v})
            if result.simulator is not None:
                for rec in result.simulator.to_dict(orient="records"):
                    for key in ("auroc_model", "auroc_oracle", "sqrt_pehe", "coverage"):
                        value = rec.get(key)
                        if value is not None and value == value:
                            mlflow.log_metric(f"sim_{key}.{rec['option']}", float(value))
            mlflow.log_artifacts(str(out), artifact_path="evaluate")
            mlflow.set_tag("evaluated", "true")
        version = run.get("model_version")
        if version:
            from mlflow.tracking import MlflowClient

            card = build_model_card(inputs.model_copy(update={"model_version": str(version),
                                                              "git_revision": git_revision(root)[0][:12]}))
            MlflowClient().update_model_version(registry.MODEL_NAME, str(version), description=card[:5000])
    # which run these files judge (untracked, like data/train/run.json): the page shows them for that run only
    write_json({"run_id": run["run_id"], "model_uri": run.get("model_uri")}, out / "run.json")
    return {**headline, "evaluate_seconds": round(time.perf_counter() - started, 2)}
