"""The train stage's outputs as the later stages read them: the fitted bundle, `run.json`, and whether a feature
table fits the bundle. Anything unreadable or mismatched is one line naming the file and what to run (a
`Refusal`), never a traceback from the unpickler, the JSON parser or the feature contract deep inside a stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.cli_types import Refusal

RETRAIN = "run `dvc repro --force --single-item train`, then `dvc repro`"


def load_bundle(path: Path) -> Any:
    """The bundle `escalate train` wrote at `path`."""
    import joblib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        return joblib.load(path)
    except Exception as err:  # noqa: BLE001 - unpickling fails in many ways (truncated, other code): one line
        raise Refusal(f"{path}: not a model bundle this code can read ({type(err).__name__}: "
                      f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no detail'}); {RETRAIN}") from None


def read_run(path: Path) -> dict[str, Any]:
    """`run.json` of the train stage: an object with the training run's `run_id`."""
    from pipeline.io import read_json  # (pipeline.io pulls in pandera: not at import time)

    path = Path(path)
    try:
        run = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Refusal(f"{path}: not valid JSON ({err}); {RETRAIN}") from None
    if not isinstance(run, dict) or not isinstance(run.get("run_id"), str):
        raise Refusal(f"{path}: holds no run_id of a training run (rule: the object train writes); {RETRAIN}")
    return run


def check_features_fit(model: Any, features: Any, where: Path | str) -> Any:
    """The model's feature block of `features` (its contract's check); a table built with other feature settings
    than the model's is one line naming both."""
    try:
        return model.contract.check(features)
    except ValueError as err:
        raise Refusal(f"{where} does not fit this model ({' '.join(str(err).split())}): the features were built with "
                      "other settings than the model was trained on; rebuild them with the model's settings or "
                      f"retrain ({RETRAIN})") from None
