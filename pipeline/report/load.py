"""Loading: the model (registry alias or local bundle) and one patient's checked contract tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import typer

if TYPE_CHECKING:
    pass


# --- loading: model, tables, features ---------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: Any
    name: str
    version: str
    alias: str
    run_id: str


def load_model(model_dir: Path = Path("data/train/model")) -> LoadedModel:
    """The registered model by alias (champion, else candidate), else the bundle the train stage wrote."""
    try:
        import mlflow

        from pipeline import registry

        registry.setup_mlflow()
        for alias in (registry.CHAMPION, registry.CANDIDATE):
            found = registry.alias_run_id(alias)
            if found is None:
                continue
            version, run_id = found
            pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@{alias}")
            bundle = pyfunc.unwrap_python_model().model
            return LoadedModel(bundle, registry.MODEL_NAME, version, alias, run_id)
    except Exception as exc:  # noqa: BLE001 - a registry problem falls back to the local bundle, said below
        typer.echo(f"model registry not usable ({exc}); falling back to {model_dir}", err=True)
    path = Path(model_dir) / "escalate_model.joblib"
    if not path.is_file():
        raise FileNotFoundError(
            f"no registered model (aliases champion, candidate) and no bundle at {path}: run `dvc repro train`"
        )
    import joblib

    run = Path(model_dir).parent / "run.json"
    run_id = json.loads(run.read_text()).get("run_id", "unknown") if run.is_file() else "unknown"
    return LoadedModel(joblib.load(path), "escalate-response", "local", "data/train/model", str(run_id))



def _load_tables(data: Path, today: str | None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Read and check the contract tables: the normalised tables of the accepted patients and every finding
    (`table, row, patient_id, column, rule, severity, message`), so the page can show them."""
    from features.contract import MeasureCatalog, check
    from features.vocabulary import Vocabulary
    from pipeline.config import load_reference
    from pipeline.io import read_contract_tables

    raw = read_contract_tables(data)
    vocabulary = Vocabulary.from_config(load_reference("drugs"))
    measures = MeasureCatalog.from_config(load_reference("measures"))
    result = check(raw, vocabulary, measures, today)
    return result.normalised, result.violations


def patient_findings(violations: pd.DataFrame, patient_id: str) -> tuple[str, ...]:
    """This patient's data-check findings as lines naming table, row, column and rule; an error stops the page
    (a ValueError listing every error), because its record was rejected and any estimate would be wrong."""
    if violations.empty:
        return ()
    v = violations[violations["patient_id"].astype(str) == patient_id]
    lines = tuple(f"{r['severity']}: table {r['table']}, row {r['row']}, column {r['column']} "
                  f"(rule {r['rule']}): {r['message']}" for r in v.to_dict(orient="records"))
    errors = [line for line, sev in zip(lines, v["severity"], strict=True) if sev == "error"]
    if errors:
        raise ValueError(f"patient {patient_id!r} has data errors, no page written:\n" + "\n".join(errors))
    return lines

