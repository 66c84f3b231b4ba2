"""The evaluation settings (the `evaluation` section of params.yaml) and the error every check raises."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from features.config import Frozen

BinStrategy = Literal["uniform", "quantile"]


class EvaluationInputError(ValueError):
    """Bad evaluation input: the message names the input, the offending rows, and the rule they break."""


class EvaluationConfig(Frozen):
    """Evaluation knobs (the `evaluation` section of params.yaml)."""

    propensity_floor: float = Field(
        0.02, gt=0, lt=1, description="AIPW weights use max(propensity, floor) to bound extreme weights."
    )
    calibration_bins: int = Field(10, ge=2, le=1000, description="Number of bins for ECE and curves.")
    calibration_strategy: BinStrategy = Field(
        "uniform", description="uniform: equal-width probability bins; quantile: equal-count bins."
    )
    subgroup_min_n: int = Field(30, ge=1, description="Subgroups with fewer decisions get NaN metrics.")
    confidence_level: float = Field(0.95, gt=0, lt=1, description="Two-sided confidence level of CIs.")
