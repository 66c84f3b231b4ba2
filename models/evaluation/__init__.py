"""Evaluation of escalation-response models on a patient-grouped held-out set.

Pure functions over arrays and DataFrames (no I/O), one module per family — read them by name:

- `metrics`: factual metrics — discrimination, calibration and accuracy of predicted probabilities against the
  outcome actually observed (the option actually taken), and RMSE/MAE for a continuous outcome;
- `policy`: decision value — the doubly robust (AIPW) value of a treatment policy ("what share would respond if
  we followed it") with influence-function CIs and paired differences, and the policies compared;
- `simulator`: simulator-only metrics, where every potential outcome is known — oracle AUROC, √PEHE, regret,
  interval coverage — and matching derived decisions to the simulator's truth;
- `subgroups`: clinical subgroups (antibody, ILD, juvenile vs adult) and metrics by subgroup;
- `curves`: the data behind the calibration, ROC, effect-scatter and Qini plots (`models.plots` draws them);
- `held_out`: `evaluate_bundle`, the whole held-out evaluation of the deployable bundle behind `escalate evaluate`;
- `config` / `inputs`: the `evaluation` settings of params.yaml, and the input checks every module shares.

Conventions: options are columns of (n, arms) matrices in display order (`configs/options.yaml`), the
control ("continue current regimen") is column 0 unless told otherwise, and an option that is not eligible
for a decision has propensity 0. This package's namespace re-exports the public API of every module.
"""

from models.evaluation.config import BinStrategy, EvaluationConfig, EvaluationInputError
from models.evaluation.curves import (
    calibration_curve_data,
    effect_scatter_data,
    qini_coefficients,
    qini_curve_data,
    roc_curve_data,
)
from models.evaluation.held_out import HeldOutEvaluation, evaluate_bundle
from models.evaluation.metrics import (
    FACTUAL_METRICS,
    auroc,
    brier_score,
    calibration_in_the_large,
    calibration_slope_intercept,
    continuous_metrics,
    expected_calibration_error,
    factual_metrics,
    log_loss,
    probability_bins,
)
from models.evaluation.policy import (
    BASELINES,
    PolicyValue,
    aipw_contributions,
    baseline_choices,
    baseline_descriptions,
    baseline_table,
    best_single_option,
    decision_value_table,
    fixed_option_policy,
    observed_policy_value,
    option_codes,
    policy_value,
    recommended_policy,
)
from models.evaluation.simulator import (
    Regret,
    SimulatorMetrics,
    baseline_regret_table,
    coverage_by_option,
    match_truth,
    option_matrix,
    regret,
    regret_gaps,
    simulator_metrics,
    sqrt_pehe,
)
from models.evaluation.subgroups import clinical_subgroups, subgroup_labels, subgroup_metrics, subgroup_scopes

__all__ = [
    "BASELINES",
    "FACTUAL_METRICS",
    "BinStrategy",
    "EvaluationConfig",
    "EvaluationInputError",
    "HeldOutEvaluation",
    "PolicyValue",
    "Regret",
    "SimulatorMetrics",
    "aipw_contributions",
    "auroc",
    "baseline_choices",
    "baseline_descriptions",
    "baseline_regret_table",
    "baseline_table",
    "best_single_option",
    "brier_score",
    "calibration_curve_data",
    "calibration_in_the_large",
    "calibration_slope_intercept",
    "clinical_subgroups",
    "continuous_metrics",
    "coverage_by_option",
    "decision_value_table",
    "effect_scatter_data",
    "evaluate_bundle",
    "expected_calibration_error",
    "factual_metrics",
    "fixed_option_policy",
    "log_loss",
    "match_truth",
    "observed_policy_value",
    "option_codes",
    "option_matrix",
    "policy_value",
    "probability_bins",
    "qini_coefficients",
    "qini_curve_data",
    "recommended_policy",
    "regret",
    "roc_curve_data",
    "simulator_metrics",
    "regret_gaps",
    "sqrt_pehe",
    "subgroup_labels",
    "subgroup_metrics",
    "subgroup_scopes",
]
