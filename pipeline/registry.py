"""MLflow plumbing: the tracking store, the `escalate` experiment, the pyfunc wrapper and the model registry.

The default store is a SQLite file in the repository (`sqlite:///<repo>/mlflow.db`, absolute so stages run from
any directory, e.g. `dvc exp run --temp`), with artifacts under `<repo>/mlruns`; `MLFLOW_TRACKING_URI` points
at a real server instead. The model is registered as `escalate-response`; each training run sets the alias
`candidate`, and `escalate promote` moves `champion`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import joblib
import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipeline.config import ROOT, tracking_uri

EXPERIMENT = "escalate"
MODEL_NAME = "escalate-response"
CANDIDATE = "candidate"
CHAMPION = "champion"
BUNDLE_FILE = "escalate_model.joblib"
#: the pyfunc's inference parameter: top-K reasons per option in its output (0 = predictions only).
EXPLAIN_PARAM = "explain_top_k"

#: distributions the pyfunc needs at load time (pinned to what is installed; `xgboost-cpu` under its own name).
RUNTIME_DISTRIBUTIONS: tuple[str, ...] = (
    "mlflow",
    "xgboost-cpu",
    "scikit-learn",
    "pandas",
    "numpy",
    "scipy",
    "pyarrow",
    "pydantic",
    "joblib",
    "cloudpickle",
)


def setup_mlflow(root: Path = ROOT, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store and make sure the experiment exists (artifacts under `<root>/mlruns`);
    returns the experiment id."""
    mlflow.set_tracking_uri(tracking_uri(root))
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        artifact_location = (Path(root).resolve() / "mlruns").as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
    else:
        experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def pip_requirements(distributions: Iterable[str] = RUNTIME_DISTRIBUTIONS) -> list[str]:
    """Explicit `name==version` pins of the installed runtime distributions (skips any not installed), so
    MLflow does not spend seconds inferring them nor record `xgboost` for `xgboost-cpu`."""
    pins: list[str] = []
    for name in distributions:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


class EscalatePyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around `models.bundle.EscalateModel`: a features frame in, the long per-option table out,
    with the top-K reasons per option (`params={"explain_top_k": K}`; default the bundle's configured K)."""

    def load_context(self, context: Any) -> None:
        """Load the joblib bundle logged as the `bundle` artifact."""
        self.model = joblib.load(context.artifacts["bundle"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """One row per input row x option with reasons (see `EscalateModel.predict_frame`). `pd.DataFrame` is a
        type hint MLflow accepts without inferring a schema from it: the signature comes from the logged
        input example, and the hint stops MLflow's "Add type hints" warning."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.model.predict_frame(frame, explain_top_k=explain_top_k_param(params, self.model.explain_top_k))


def explain_top_k_param(params: Mapping[str, Any] | None, default: int) -> int:
    """The `explain_top_k` inference parameter as a non-negative int (MLflow passes params through the
    signature, which may deliver numpy or string scalars); a bad value is an error naming the rule."""
    value = (params or {}).get(EXPLAIN_PARAM, default)
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"params {EXPLAIN_PARAM}={value!r} (rule: an integer number of reasons, 0 = none)") from None
    if k < 0 or k != float(value):
        raise ValueError(f"params {EXPLAIN_PARAM}={value!r} (rule: an integer number of reasons, 0 = none)")
    return k


def deidentified_example(features: pd.DataFrame, n_rows: int = 5, key_columns: Iterable[str] = ()) -> pd.DataFrame:
    """A synthetic input example built from aggregates only, for the model's input example (a text artifact anyone
    can read): row i holds each feature's i-th evenly spaced quantile over all rows (no single patient's record),
    identifiers are synthetic (`example-patient-1`, ...) and dates a fixed synthetic date. Integer features are
    written as floats so the signature accepts missing values at inference."""
    n = max(1, min(n_rows, len(features)))
    keys = [c for c in key_columns if c in features.columns]
    example = features.head(n).copy().reset_index(drop=True)
    quantiles = [0.5] if n == 1 else [i / (n - 1) for i in range(n)]
    for col in example.columns:
        if col in keys:
            continue
        values = features[col]
        if pd.api.types.is_bool_dtype(values):
            example[col] = bool(values.mean() >= 0.5)
        elif pd.api.types.is_numeric_dtype(values):
            example[col] = values.astype(float).quantile(quantiles, interpolation="nearest").to_numpy()
    for col in keys:
        if pd.api.types.is_datetime64_any_dtype(example[col]):
            example[col] = pd.Series(pd.Timestamp("1900-01-01"), index=example.index).astype(example[col].dtype)
        else:
            stem = col.removesuffix("_id")
            example[col] = [f"example-{stem}-{i + 1}" for i in range(n)]
    return example


def log_and_register(
    model: Any,
    bundle_path: Path,
    example_input: pd.DataFrame,
    *,
    name: str = MODEL_NAME,
    alias: str = CANDIDATE,
) -> tuple[str, str]:
    """Log the bundle as a pyfunc in the active run, register it under `name` and point `alias` at the new
    version; returns (model uri by version, version)."""
    k = int(model.explain_top_k)
    example_output = model.predict_frame(example_input, explain_top_k=k)
    signature = infer_signature(example_input, example_output, params={EXPLAIN_PARAM: k})
    info = mlflow.pyfunc.log_model(
        name="escalate_model",
        python_model=EscalatePyfunc(),
        artifacts={"bundle": str(bundle_path)},
        signature=signature,
        input_example=example_input,
        pip_requirements=pip_requirements(),
    )
    registered = mlflow.register_model(info.model_uri, name)
    client = MlflowClient()
    client.set_registered_model_alias(name, alias, registered.version)
    return f"models:/{name}/{registered.version}", str(registered.version)


def load_by_alias(alias: str = CANDIDATE, name: str = MODEL_NAME) -> mlflow.pyfunc.PyFuncModel:
    """The registered pyfunc the alias points at (`models:/escalate-response@candidate`)."""
    return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")


def alias_run_id(alias: str, name: str = MODEL_NAME) -> tuple[str, str] | None:
    """(version, run id) of the version an alias points at, or None when the alias (or model) does not exist."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return str(version.version), str(version.run_id)


def set_alias(alias: str, version: str, name: str = MODEL_NAME) -> None:
    """Point `alias` at `version` of the registered model."""
    MlflowClient().set_registered_model_alias(name, alias, version)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (dataset hashes tagged on every run)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def flatten_params(sections: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"booster": {"max_depth": 3}}}` -> `{"train.booster.max_depth": "3"}` for `mlflow.log_params`."""
    flat: dict[str, str] = {}
    for key, value in sections.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat
