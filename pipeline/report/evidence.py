"""What the page may say about this model version: horizon, interval level, validation performance and calibration."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import typer

from pipeline.report.data import _ok
from pipeline.report.load import LoadedModel
from pipeline.settings import EVALUATION_SETTINGS_FILE

if TYPE_CHECKING:
    from pipeline.settings import Settings


# --- what this model version does and how it did in validation --------------------------------------------------
@dataclass(frozen=True)
class ModelEvidence:
    """What the page may say about the model: the labels' horizon, the interval level, the response threshold and
    the positivity threshold it was trained with, its validation metrics and pooled calibration bins."""

    horizon_weeks: int
    interval_level: float
    response_threshold: float
    juvenile_response_threshold: float
    positivity_threshold: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    #: pooled calibration bins: bin, lower, upper, n, mean_predicted, observed_rate (empty when unknown)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    source: str = "unknown"
    #: the two-sided level of the evaluation's confidence intervals (params.yaml `evaluation.confidence_level`)
    confidence_level: float = 0.95
    #: validation metrics by clinical subgroup (evaluate's tables/subgroups.csv; empty when unknown)
    subgroups: pd.DataFrame = field(default_factory=pd.DataFrame)

    def threshold_for(self, patient: Mapping[str, Any]) -> float:
        """The response threshold of this patient's diagnosis (juvenile DM has its own)."""
        juvenile = str(patient.get("diagnosis")) == "juvenile_dermatomyositis"
        return self.juvenile_response_threshold if juvenile else self.response_threshold


def _signed(x: float, decimals: int = 1) -> str:
    """'+1.8' / '−9.0': a signed number with the typographic minus the rest of the page uses."""
    return f"{x:+.{decimals}f}".replace("-", "\u2212")


def pooled_calibration(curve: pd.DataFrame, n_bins: int, strategy: str = "uniform") -> pd.DataFrame:
    """Pool the per-option calibration curve (evaluate's plots/calibration.csv) over options, bin by bin.

    Only equal-width bins line up across options; with quantile bins there is no common edge, so nothing is
    returned rather than a misleading figure."""
    columns = ["bin", "lower", "upper", "n", "mean_predicted", "observed_rate"]
    if strategy != "uniform" or curve.empty:
        return pd.DataFrame(columns=columns)
    missing = {"bin", "n", "mean_predicted", "observed_rate"} - set(curve.columns)
    if missing:
        raise ValueError(f"table calibration: missing column(s) {sorted(missing)} (rule: evaluate's curve layout)")
    c = curve.assign(events=curve["n"] * curve["observed_rate"], sum_p=curve["n"] * curve["mean_predicted"])
    g = c.groupby("bin", as_index=False)[["n", "events", "sum_p"]].sum()
    g = g[g["n"] > 0]
    return pd.DataFrame({
        "bin": g["bin"].astype(int), "lower": g["bin"] / n_bins, "upper": (g["bin"] + 1) / n_bins,
        "n": g["n"].astype(int), "mean_predicted": g["sum_p"] / g["n"], "observed_rate": g["events"] / g["n"],
    })[columns].reset_index(drop=True)


def calibration_note(p: float | None, pooled: pd.DataFrame, *, min_n: int = 20) -> str:
    """'of patients given 60–70 in 100 in validation, 64 in 100 responded (n = 120)' for the bin holding p;
    empty when p is unknown or the bin held fewer than `min_n` validation decisions (too few to say)."""
    if not _ok(p) or pooled.empty:
        return ""
    hit = pooled[(pooled["lower"] <= p) & ((p < pooled["upper"]) | ((pooled["upper"] >= 1.0) & (p <= 1.0)))]
    if hit.empty or int(hit["n"].iloc[0]) < min_n:
        return ""
    r = hit.iloc[0]
    return (f"of patients given {round(100 * r['lower'])}–{round(100 * r['upper'])} in 100 in validation, "
            f"{round(100 * r['observed_rate'])} in 100 responded (n = {int(r['n'])})")


def performance_facts(metrics: Mapping[str, float], interval_level: float, horizon_weeks: int, *,
                      confidence_level: float = 0.95) -> tuple[tuple[str, str], ...]:
    """The model-facts lines on performance in words, from evaluate's headline metrics; a missing metric is
    left out, never invented. Interval coverage well below its level is said plainly."""
    m = {k: float(v) for k, v in metrics.items() if v is not None and _ok(float(v))}
    out: list[tuple[str, str]] = []
    if "response_auroc" in m:
        n = f" on {int(m['response_n'])} held-out decisions" if "response_n" in m else ""
        pts = f" of {int(m['n_test_patients'])} patients" if "n_test_patients" in m else ""
        out.append(("discrimination", f"response AUROC {m['response_auroc']:.2f}{n}{pts} (0.5 = chance, 1 = perfect)"))
    if "response_calibration_slope" in m and "response_calibration_intercept" in m:
        text = (f"calibration slope {m['response_calibration_slope']:.2f} and intercept "
                f"{_signed(m['response_calibration_intercept'], 2)} (ideal 1 and 0)")
        if "response_ece" in m:
            text += f"; estimates were off by {100 * m['response_ece']:.1f} in 100 on average (expected calibration error)"
        out.append(("calibration", text))
    if "sim_interval_coverage" in m:
        cov, level = m["sim_interval_coverage"], interval_level
        text = (f"on the simulated cohort the {round(100 * level)} % intervals held the true chance of response for "
                f"{round(100 * cov)} % of held-out decisions")
        if cov < level - 0.1:
            text += (": they are too narrow — read them as the spread between refitted models, not as the full "
                     "uncertainty")
        out.append(("uncertainty intervals", text))
    if "sim_sqrt_pehe" in m:  # why the page gives the differences no interval (docs/benchmarks.md)
        out.append(("differences from continuing", f"on the simulated cohort an option's estimated difference from "
                                                   f"continuing was off by about {round(100 * m['sim_sqrt_pehe'])} in "
                                                   "100 (root mean square against the truth): a smaller difference is "
                                                   "within the model's error. It has no interval: refitted models "
                                                   "agree on it far more closely than the truth does"))
    if "sim_recommended_value" in m and "sim_oracle_value" in m:
        out.append(("recommendations", f"on the simulated cohort, following the ★ option gave a response within "
                                       f"{horizon_weeks} weeks in {round(100 * m['sim_recommended_value'])} in 100 "
                                       f"patients, against {round(100 * m['sim_oracle_value'])} in 100 if the truly "
                                       "best option had always been chosen"))
    if "decision_value_gain_vs_guideline" in m:
        text = (f"following the ★ option instead of the guideline list's choice changed the response rate of "
                f"held-out patients by {_signed(100 * m['decision_value_gain_vs_guideline'])} in 100")
        if "decision_value_gain_vs_guideline_ci_low" in m and "decision_value_gain_vs_guideline_ci_high" in m:
            text += (f" ({round(100 * confidence_level)} % confidence interval "
                     f"{_signed(100 * m['decision_value_gain_vs_guideline_ci_low'])} to "
                     f"{_signed(100 * m['decision_value_gain_vs_guideline_ci_high'])}; doubly robust estimate)")
        if "sim_regret" in m and "sim_guideline_regret" in m:
            text += (f"; on the simulated cohort the ★ option fell short of the truly best option by "
                     f"{100 * m['sim_regret']:.1f} in 100, the guideline list by {100 * m['sim_guideline_regret']:.1f}"
                     " in 100")
        out.append(("against the guideline list", text))
    if "safety_auroc" in m:
        out.append(("safety model", f"AUROC {m['safety_auroc']:.2f} for a serious infection or severe cytopenia"))
    return tuple(out)


def thin_overlap_options(pred: pd.DataFrame, threshold: float) -> set[str]:
    """Eligible options that patients like this one were rarely given: the model's propensity (the estimated
    chance that a clinician picks the option for these features) is below the positivity threshold, so the
    estimate leans on extrapolation from dissimilar patients."""
    if "propensity" not in pred.columns:
        return set()
    prop = pd.to_numeric(pred["propensity"], errors="coerce")
    thin = pred["eligible"].astype(bool) & prop.notna() & (prop < threshold)
    return set(pred.loc[thin, "option"].astype(str))


def ineligible_text(reason: str, drug_labels: Mapping[str, str]) -> str:
    """The bundle's ineligibility reason in a clinician's words: drug labels, not generic codes; plain plurals."""
    import re

    text = re.sub(r"\b([a-z_]+)\b", lambda m: drug_labels.get(m.group(1), m.group(1)), reason) if reason else ""
    text = re.sub(r"\b1 training decision\(s\)", "1 training decision", text)
    return text.replace("decision(s)", "decisions")



def _names_run(path: Path, run_id: str) -> bool:
    """Whether the run.json at `path` exists, is readable and names `run_id`."""
    from pipeline.cli_types import Refusal
    from pipeline.trained import read_run

    try:
        return read_run(path)["run_id"] == run_id
    except (OSError, Refusal):
        return False


#: evaluate's artefacts the page reads, by name: their paths in data/evaluate/ and under the run's `evaluate/`
#: (the evaluation settings those figures were computed with among them)
ARTIFACTS = {"calibration": "plots/calibration.csv", "subgroups": "tables/subgroups.csv",
             "evaluation": EVALUATION_SETTINGS_FILE}


def _read_artifact(path: Path | str) -> Any:
    """One of evaluate's `ARTIFACTS`: a CSV as a DataFrame, a JSON file as what it holds."""
    if str(path).endswith(".json"):
        from pipeline.io import read_json

        return read_json(Path(path))
    return pd.read_csv(path)


def subgroup_fact(subgroups: pd.DataFrame, groups: Mapping[str, str]) -> str:
    """How the model did in validation for this patient's clinical subgroups (`groups`: subgroup → level, as
    `models.evaluation.clinical_subgroups` labels them), e.g. 'ILD (164 decisions): AUROC 0.79, calibration error 9
    in 100; juvenile (18 decisions): too few to judge'; '' when the evaluation has no subgroup table."""
    if subgroups.empty or not {"subgroup", "level", "n"} <= set(subgroups.columns):
        return ""
    parts = []
    for subgroup, level in groups.items():
        row = subgroups[(subgroups["subgroup"] == subgroup) & (subgroups["level"].astype(str) == str(level))]
        if row.empty:
            continue
        r = row.iloc[0]
        n = int(r["n"])
        if not _ok(r.get("auroc")):
            parts.append(f"{level} ({n:,} decisions): too few to judge")
            continue
        ece = f", calibration error {round(100 * float(r['ece']))} in 100" if _ok(r.get("ece")) else ""
        parts.append(f"{level} ({n:,} decisions): AUROC {float(r['auroc']):.2f}{ece}")
    return "; ".join(parts)


def load_evidence(loaded: LoadedModel, settings: Settings, evaluate_dir: Path = Path("data/evaluate"), *,
                  use_mlflow: bool = True) -> ModelEvidence:
    """What the page may say about this model version: the horizon it was trained with (its recorded settings),
    the evaluation settings its figures were computed with (evaluate's tables/evaluation_settings.json, from the
    same place as the figures; params.yaml's when it was not evaluated), its validation metrics and calibration curve
    (the run's metrics and `evaluate/` artefacts, else data/evaluate/ when its run.json names the same run: a
    model trained again but not yet evaluated is not described by the last evaluation). Metrics of another run
    are never shown. The run is read from the local store without MLflow (`pipeline.registry_store.run_record`)
    when it can be, else through MLflow; `use_mlflow=False` reads neither."""
    cfg = loaded.model.config
    run_params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    tables: dict[str, Any] = {}  # ARTIFACTS found: the run's, else the local ones of the same run
    source = "not evaluated"
    if use_mlflow and loaded.run_id not in ("", "unknown"):
        from pipeline import registry_store as store

        try:  # the read-only fast path: the local store's run record and artifact folder, no MLflow import
            record = store.run_record(loaded.run_id)
            use_mlflow = False
            if record is None:
                typer.echo(f"MLflow run {loaded.run_id} not in the store; using {evaluate_dir}", err=True)
            else:
                run_params, metrics = record.params, record.metrics
                if "response_auroc" in metrics:
                    source = f"MLflow run {loaded.run_id}"
                for name, path in ARTIFACTS.items():
                    logged = None if record.artifact_dir is None else record.artifact_dir / "evaluate" / path
                    if logged is not None and logged.is_file():
                        tables[name] = _read_artifact(logged)
        except store.StoreUnreadable:
            pass  # MLflow below
    if use_mlflow and loaded.run_id not in ("", "unknown"):
        try:
            import mlflow
            from mlflow.tracking import MlflowClient

            from pipeline import registry

            registry.setup_mlflow()
            run = MlflowClient().get_run(loaded.run_id)
            run_params, metrics = dict(run.data.params), dict(run.data.metrics)
            if "response_auroc" in metrics:
                source = f"MLflow run {loaded.run_id}"
            for name, path in ARTIFACTS.items():
                with contextlib.suppress(Exception):  # not logged: the local one below, if it is this run's
                    tables[name] = _read_artifact(mlflow.artifacts.download_artifacts(
                        run_id=loaded.run_id, artifact_path=f"evaluate/{path}"))
        except Exception as exc:  # noqa: BLE001 - say why the registry's figures are missing, then fall back
            typer.echo(f"MLflow run {loaded.run_id} not readable ({exc}); using {evaluate_dir}", err=True)
    same_run = _names_run(Path(evaluate_dir) / "run.json", loaded.run_id)
    # every held-out metric is in tables/headline.json; metrics.json holds the headline ones only
    local = next((p for p in (Path(evaluate_dir) / "tables" / "headline.json", Path(evaluate_dir) / "metrics.json")
                  if p.is_file()), None)
    if same_run and "response_auroc" not in metrics and local is not None:
        from pipeline.io import read_json

        metrics = {k: v for k, v in read_json(local).items() if v is not None}
        source = str(local)
    for name, path in ARTIFACTS.items():
        if same_run and name not in tables and (Path(evaluate_dir) / path).is_file():
            tables[name] = _read_artifact(Path(evaluate_dir) / path)
    curve = tables.get("calibration", pd.DataFrame())
    recorded = getattr(loaded.model, "data_settings", None)  # the label settings the model was trained with
    horizon = (recorded.labels.horizon_weeks if recorded is not None
               else run_params.get("labels.horizon_weeks", settings.labels.horizon_weeks))
    # the settings evaluate computed these figures with (params.yaml may have changed since; train's run never
    # held them); a run not evaluated has no figures they could describe, so params.yaml's stand in
    used = tables.get("evaluation")
    evaluation = used if isinstance(used, Mapping) else settings.evaluation.model_dump()
    n_bins = int(evaluation.get("calibration_bins", settings.evaluation.calibration_bins))
    strategy = str(evaluation.get("calibration_strategy", settings.evaluation.calibration_strategy))
    return ModelEvidence(
        horizon_weeks=int(float(horizon)), interval_level=float(cfg.intervals.level),
        response_threshold=float(cfg.response_threshold),
        juvenile_response_threshold=float(cfg.juvenile_response_threshold),
        positivity_threshold=float(cfg.propensity.positivity_threshold),
        metrics=metrics, calibration=pooled_calibration(curve, n_bins, strategy), source=source,
        confidence_level=float(evaluation.get("confidence_level", settings.evaluation.confidence_level)),
        subgroups=tables.get("subgroups", pd.DataFrame()),
    )

