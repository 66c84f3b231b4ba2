"""The registered Escalate model's code (MLflow models-from-code): MLflow copies this file into the model and runs
it wherever the model is loaded or served, with the model's own copy of the pure packages `models` and `features`
(its `code_paths`) on the path. It reads the fitted bundle from the model's `bundle` artifact and predicts with it.

It imports only mlflow, pandas and those packages, never `pipeline`, so `models:/escalate-response@champion` loads
in an environment built from the model's requirements.txt alone, without this repository.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd


class EscalatePyfunc(mlflow.pyfunc.PythonModel):
    """A features frame in, the long per-option table out (`models.bundle.EscalateModel.predict_frame`), with the
    top-K reasons per option (`params={"explain_top_k": K}`; default the bundle's configured K)."""

    def load_context(self, context: Any) -> None:
        """Load the joblib bundle logged as the `bundle` artifact."""
        import joblib

        self.model = joblib.load(context.artifacts["bundle"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """One row per input row x option with reasons. `pd.DataFrame` is a type hint MLflow accepts without
        inferring a schema from it (the signature comes from the logged input example), and it stops MLflow's
        "Add type hints" warning."""
        from models.bundle import explain_top_k_param

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.model.predict_frame(frame, explain_top_k=explain_top_k_param(params, self.model.explain_top_k))


mlflow.models.set_model(EscalatePyfunc())
