"""Frozen configuration objects for the outcome learners, propensity model, calibration and intervals.

They are built at the edge (`pipeline/config.py` reads the `learner:` section of `params.yaml`) and passed
into the pure code in `models/`; every random draw is seeded from `seed`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from features.config import Frozen, Seed


class BoosterConfig(Frozen):
    """XGBoost hyper-parameters shared by every tree model; modest defaults keep TreeSHAP affordable
    (its cost grows with trees x leaves x depth^2)."""

    n_estimators: int = Field(200, ge=1, le=5000)
    max_depth: int = Field(3, ge=1, le=12)
    learning_rate: float = Field(0.05, gt=0, le=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(1.0, gt=0, le=1)
    min_child_weight: float = Field(5.0, ge=0)
    reg_lambda: float = Field(1.0, ge=0)
    tree_method: Literal["hist", "approx", "exact"] = "hist"
    n_jobs: int = Field(1, ge=1, description="threads per model; 1 is fastest for small data on shared cores")
    seed: Seed = 20261125

    def xgb_params(self, *, seed_offset: int = 0) -> dict[str, object]:
        """Keyword arguments for `xgboost.XGBClassifier/XGBRegressor`; `seed_offset` varies the seed per model."""
        return {
            "n_estimators": self.n_estimators,
            "max_depth": self.max_depth,
            "learning_rate": self.learning_rate,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "reg_lambda": self.reg_lambda,
            "tree_method": self.tree_method,
            "n_jobs": self.n_jobs,
            "random_state": (self.seed + seed_offset) % (2**31 - 1),
        }


class PropensityConfig(Frozen):
    """Multinomial model of which eligible option was taken; `positivity_threshold` flags weak overlap and
    `clip` is the floor applied to the taken option's propensity before inverse weighting (AIPW)."""

    kind: Literal["logistic", "xgboost"] = "logistic"
    C: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic model")
    booster: BoosterConfig = BoosterConfig(n_estimators=100, max_depth=3)
    positivity_threshold: float = Field(0.02, gt=0, lt=1)
    clip: float = Field(0.02, gt=0, lt=1)


class LearnerConfig(Frozen):
    """What every outcome learner needs: the arm order, the control arm, the outcome type and the booster.

    `arms` fixes the column order of predictions (default: the control arm, then the other observed options
    alphabetically); `outcome="auto"` means binary when y only holds 0/1.
    """

    control: str = "continue"
    arms: tuple[str, ...] | None = None
    outcome: Literal["auto", "binary", "continuous"] = "auto"
    booster: BoosterConfig = BoosterConfig()
    # DR learner: the final-stage regressors of the AIPW contrasts. AIPW pseudo-outcomes are noisy (1/propensity
    # weights), so this stage is deliberately smoother than the outcome models; its seed follows `booster.seed`.
    effect_booster: BoosterConfig = BoosterConfig(n_estimators=60, max_depth=2, min_child_weight=50)
    # DR learner: patient-grouped cross-fitting folds for the nuisance models and the propensity model.
    cv_folds: int = Field(5, ge=2, le=20)
    propensity: PropensityConfig = PropensityConfig()
    # Linear baseline and modifier GLM: inverse L2 strength (logistic) / ridge penalty (continuous).
    linear_C: float = Field(1.0, gt=0)
    linear_alpha: float = Field(1.0, gt=0)
    # Published effect modifiers, option -> feature columns (configs/options.yaml): option x modifier terms.
    effect_modifiers: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # Stacked learner: weight of the S-learner's logit beside the modifier GLM's (0 = GLM only, 1 = S only).
    stack_weight: float = Field(0.5, ge=0, le=1)
    # Score GLM: weight of the log-odds learnt from the thresholded score beside the modifier GLM's (0 = GLM only).
    score_weight: float = Field(0.5, ge=0, le=1)
    # Score GLM: weight of the log-odds of gradient-boosted trees' regression of the score beside the linear model's
    # (0 = none): the interactions the trees find, learnt from the score rather than its one bit.
    score_trees_weight: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _control_in_arms(self) -> LearnerConfig:
        if self.arms is not None:
            if len(self.arms) < 2:
                raise ValueError(f"arms: need at least two options, got {list(self.arms)}")
            if len(set(self.arms)) != len(self.arms):
                raise ValueError(f"arms: duplicated option names in {list(self.arms)}")
            if self.control not in self.arms:
                raise ValueError(f"control {self.control!r} is not one of arms {list(self.arms)}")
        return self


class CalibrationConfig(Frozen):
    """Recalibration fitted on patient-grouped out-of-fold predictions of the factual option: one map for all
    options (`pooled`, monotone, so it never reorders a patient's options) or one per option."""

    method: Literal["isotonic", "sigmoid"] = "isotonic"
    scope: Literal["pooled", "per_option"] = "pooled"
    n_folds: int = Field(5, ge=2, le=20)
    min_rows_per_arm: int = Field(30, ge=2, description="arms with fewer factual rows stay uncalibrated")
    seed: Seed = 20261125


class IntervalConfig(Frozen):
    """Patient-level bootstrap ensemble: `n_boot` refits on patients drawn with replacement; percentile
    intervals at `level`. `boot_booster` optionally lightens each refit (fewer trees) to bound the cost."""

    n_boot: int = Field(30, ge=2, le=2000)
    level: float = Field(0.9, gt=0, lt=1)
    seed: Seed = 20261125
    boot_booster: BoosterConfig | None = None
    # Members fitted/predicted in parallel threads (results do not depend on it). 1 by default: on a busy
    # 2-core machine (CI runs two test workers) extra threads measured no faster.
    n_jobs: int = Field(1, ge=1)
