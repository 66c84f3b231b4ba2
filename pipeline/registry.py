"""MLflow plumbing: the tracking store, the `escalate` experiment, the pyfunc wrapper and the model registry.

The default store is a SQLite file in the repository (`sqlite:///<repo>/mlflow.db`, absolute so stages run from
any directory, e.g. `dvc exp run --temp`), with artifacts under `<repo>/mlruns`; `MLFLOW_TRACKING_URI` points
at a real server instead. The model is registered as `escalate-response`; each training run sets the alias
`candidate`, and `escalate promote` moves `champion`.

The registered model is self-contained (MLflow models-from-code): its code is `pipeline/pyfunc_model.py`, the pure
packages it imports (`models`, `features`) travel in it as `code_paths`, the fitted bundle is its `bundle` artifact,
its requirements are pinned, and its metadata records the feature columns and the feature and label settings it was
trained with (read by `escalate score` before loading it).

`pipeline.registry_store` reads the same local store read-only without importing MLflow (alias -> version -> bundle
file, a run's params and metrics) for the clinician page; it falls back to this module whenever the store is not a
local SQLite file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

from models.bundle import EXPLAIN_PARAM, explain_top_k_param  # noqa: F401 - part of this module's interface
from pipeline.cli_types import Refusal
from pipeline.config import ROOT, quiet_library_notices, tracking_uri
from pipeline.registry_store import BUNDLE_FILE, CANDIDATE, CHAMPION, MODEL_NAME  # noqa: F401 - there: no MLflow import

EXPERIMENT = "escalate"
#: the training run's tag holding the sha256 of the bundle it registered (same inputs give the same bytes).
BUNDLE_SHA_TAG = "model.bundle.sha256"
#: and of what the registered model ships beside it (`code_fingerprint`): its code and its requirements.
CODE_SHA_TAG = "model.code.sha256"
#: the registered model's code file and the pure packages shipped with it (what that file imports).
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
CODE_PACKAGES: tuple[str, ...] = ("models", "features")

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
    "shap",  # the trees of a score GLM (the default learner) are explained with shap's TreeExplainer
)


def setup_mlflow(root: Path = ROOT, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store and make sure the experiment exists (artifacts beside a local SQLite store, in
    its folder's `mlruns`; a tracking server keeps its own artifact store); returns the experiment id."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in stage output
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (creating tables, validating) are noise
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        experiment_id = client.create_experiment(experiment, artifact_location=local_artifact_location(uri))
    else:
        experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def local_artifact_location(uri: str) -> str | None:
    """`<folder of the SQLite file>/mlruns` for a local SQLite store (the repository's by default); None — the
    server's own artifact store — for anything else (a remote server must not write into this checkout)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri.removeprefix(prefix)).resolve().parent / "mlruns").as_uri()


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


def save_bundle(model: Any, path: Path) -> None:
    """Write the fitted bundle (joblib format, read back with `joblib.load`) so that two fits on the same inputs give
    the same bytes in any process: every set is written sorted. Pydantic models pickle their
    `__pydantic_fields_set__`, a set of names whose order follows the per-process string hash seed, which alone made
    the bundle's bytes differ between two `dvc repro -f` runs with identical metrics."""
    from joblib.numpy_pickle import NumpyPickler

    class SortedSetPickler(NumpyPickler):  # the pure-Python pickler, so reducer_override sees sets too
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) in (set, frozenset):
                try:
                    return type(obj), (sorted(obj),)
                except TypeError:  # unorderable members: pickled as they come
                    return NotImplemented
            return NotImplemented

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("wb") as fh:
        SortedSetPickler(fh, protocol=None).dump(model)


def model_metadata(model: Any) -> dict[str, Any]:
    """What the registered model says about itself in its `MLmodel` file, readable without loading it: the feature
    columns of its contract and the feature and label settings it was trained with (None when not recorded)."""
    settings = getattr(model, "data_settings", None)
    return {"escalate": {"feature_columns": list(model.contract.columns),
                         "settings": None if settings is None else settings.model_dump(mode="json")}}


def required_inputs(inputs: Schema) -> Schema:
    """The input schema with every column required: MLflow infers a column that is all missing in the example (a
    feature no training patient had, such as a drug none was on) as optional, so a request could leave it out."""
    return Schema([ColSpec(spec.type, spec.name, required=True) for spec in inputs.inputs])


def json_example(example: pd.DataFrame) -> pd.DataFrame:
    """The input example with each missing value None in an object column, so that MLflow writes JSON `null`: its
    own NaN-to-None step leaves a float column's NaN under pandas 3, and the example files then held bare `NaN`,
    which is no JSON (strict parsers and REST clients reject it). The signature is inferred from `example`."""
    out = example.copy()
    for col in out.columns:
        missing = out[col].isna()
        if missing.any():
            out[col] = out[col].astype(object).where(~missing, None)
    return out


def log_model(model: Any, bundle_path: Path, example_input: pd.DataFrame, name: str = "escalate_model") -> Any:
    """Log the fitted bundle as a self-contained models-from-code pyfunc in the active run (code, pure packages,
    bundle artifact, pinned requirements, signature, input example, metadata); returns MLflow's ModelInfo."""
    import warnings

    k = int(model.explain_top_k)
    example_output = model.predict_frame(example_input, explain_top_k=k)
    # output integers (`row`) described as doubles: MLflow hints about integer columns otherwise (outputs are not
    # enforced against the schema, so nothing changes for a caller)
    ints = [c for c in example_output.columns if pd.api.types.is_integer_dtype(example_output[c])]
    inferred = infer_signature(example_input, example_output.astype(dict.fromkeys(ints, "float64")),
                               params={EXPLAIN_PARAM: k})
    signature = ModelSignature(required_inputs(inferred.inputs), inferred.outputs, inferred.params)
    with warnings.catch_warnings():
        quiet_library_notices()  # MLflow's optional PySpark import and its input-example check warn from inside
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={"bundle": str(bundle_path)},
            code_paths=[str(ROOT / package) for package in CODE_PACKAGES],
            signature=signature,
            input_example=json_example(example_input),
            pip_requirements=pip_requirements(),
            metadata=model_metadata(model),
        )


def log_and_register(
    model: Any,
    bundle_path: Path,
    example_input: pd.DataFrame,
    *,
    name: str = MODEL_NAME,
    alias: str = CANDIDATE,
) -> tuple[str, str]:
    """Log the bundle as a pyfunc in the active run (`log_model`), register it under `name` and point `alias` at
    the new version; returns (model uri by version, version)."""
    info = log_model(model, bundle_path, example_input)
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


def code_fingerprint() -> str:
    """sha256 of what the registered model ships besides its bundle: the sources of its code packages and its
    pyfunc file, and its pinned requirements. A change to any of them (an explanation's wording, a missing
    requirement) is a new model version even when the bundle's bytes are the same."""
    digest = hashlib.sha256()
    files = sorted(p for package in CODE_PACKAGES for p in (ROOT / package).rglob("*.py")) + [MODEL_CODE]
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\n".join(pip_requirements()).encode())
    return digest.hexdigest()


def candidate_with_bundle(sha256: str, code_sha256: str | None = None, name: str = MODEL_NAME
                          ) -> tuple[str, str] | None:
    """(version, run id) of the `candidate` version when its bundle has exactly these bytes (run tag
    `BUNDLE_SHA_TAG`) and, when `code_sha256` is given, it ships the same code and requirements (`CODE_SHA_TAG`),
    else None. Training again to the same model keeps that version, which `evaluate` already judged: DVC skips
    `evaluate` when the model it depends on is unchanged, so a copy would never be evaluated."""
    found = alias_run_id(CANDIDATE, name)
    if found is None:
        return None
    try:
        tags = MlflowClient().get_run(found[1]).data.tags
    except mlflow.exceptions.MlflowException:  # the version's run was deleted from the store
        return None
    same_code = code_sha256 is None or tags.get(CODE_SHA_TAG) == code_sha256
    return found if tags.get(BUNDLE_SHA_TAG) == sha256 and same_code else None


def run_holds_bundle(run_id: str, bundle_path: Path) -> bool:
    """Whether training run `run_id` registered exactly the bundle at `bundle_path` (run tag `BUNDLE_SHA_TAG`).
    `data/train/run.json` is no DVC output: when DVC restores an earlier model from its cache without running
    `train`, the file still names the later run, and held-out metrics logged there would describe another model.
    True for a run logged before the tag existed (nothing to compare)."""
    try:
        tag = MlflowClient().get_run(run_id).data.tags.get(BUNDLE_SHA_TAG)
    except mlflow.exceptions.MlflowException as err:  # another tracking store than the one train logged to
        raise Refusal(f"training run {run_id} is not in the tracking store {mlflow.get_tracking_uri()} "
                      f"({str(err).strip().splitlines()[0]}): set MLFLOW_TRACKING_URI to the store train used, or "
                      "run `dvc repro --force --single-item train`") from None
    return tag is None or tag == sha256_file(bundle_path)


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
