"""The Gaussian-process T-learner (`models.learners.GaussianProcessTLearner`, kind `gp_t`): a continuous-outcome
learner for smooth effect surfaces, with clear refusals where it must not be used."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.config import BoosterConfig, LearnerConfig
from models.learners import GaussianProcessTLearner, TLearner, make_learner

ARMS = ("control", "treated")


def smooth_cohort(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Confounded treatment, a smooth control surface and a smooth effect 1 + 0.8 sin(2 f0) (always positive):
    (features, treatment, outcome, true effect)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    treated = rng.random(n) < 1 / (1 + np.exp(-0.5 * X[:, 1]))
    tau = 1.0 + 0.8 * np.sin(2 * X[:, 0])
    y = np.exp(0.4 * X[:, 1]) + 0.5 * X[:, 2] + treated * tau + rng.normal(0, 0.5, n)
    return pd.DataFrame(X, columns=["f0", "f1", "f2"]), np.where(treated, *ARMS[::-1]), y, tau


def config() -> LearnerConfig:
    return LearnerConfig(control="control", arms=ARMS, outcome="continuous",
                         booster=BoosterConfig(n_estimators=100, max_depth=2, min_child_weight=5, seed=3))


def test_gp_t_recovers_a_smooth_effect_better_than_trees():
    """On a smooth surface with a few hundred rows per arm, the GP per arm estimates the effect more accurately
    than the XGBoost T-learner with the same data; `make_learner('gp_t')` is the same class."""
    X, t, y, _ = smooth_cohort(700, seed=5)
    X_new, _, _, tau_new = smooth_cohort(400, seed=6)
    gp = make_learner("gp_t", config()).fit(X, t, y)
    assert isinstance(gp, GaussianProcessTLearner) and gp.arms_ == ARMS
    trees = TLearner(config()).fit(X, t, y)
    err = {name: np.sqrt(np.mean((m.predict_effects(X_new)[:, 1] - tau_new) ** 2))
           for name, m in (("gp", gp), ("trees", trees))}
    assert err["gp"] < 0.9 * err["trees"]  # 0.23 vs 0.31 here (0.21-0.26 vs 0.30-0.32 on other seeds)
    assert np.corrcoef(gp.predict_effects(X_new)[:, 1], tau_new)[0, 1] > 0.85
    assert np.allclose(gp.predict_effects(X_new)[:, 0], 0.0)


def test_gp_t_takes_missing_values_and_is_deterministic():
    X, t, y, _ = smooth_cohort(300, seed=7)
    X.loc[::7, "f2"] = np.nan
    a = GaussianProcessTLearner(config()).fit(X, t, y).predict_outcomes(X)
    b = GaussianProcessTLearner(config()).fit(X, t, y).predict_outcomes(X)
    assert np.isfinite(a).all() and np.array_equal(a, b)


def test_gp_t_refuses_what_it_cannot_model():
    """A binary outcome (no SHAP for an explained response head), unequal weights (a GP fit takes none) and an
    arm too large for exact GP regression are errors naming the table and rule; it is never explainable."""
    X, t, y, _ = smooth_cohort(200, seed=8)
    binary = (y > np.median(y)).astype(float)
    with pytest.raises(ValueError, match=r"table y: a binary outcome \(rule: .*continuous outcomes only"):
        GaussianProcessTLearner(config().model_copy(update={"outcome": "binary"})).fit(X, t, binary)
    weights = np.ones(len(y))
    weights[4] = 2.0
    with pytest.raises(ValueError, match=r"table sample_weight: row 4 is 2.0 .*rule: gp_t fits unweighted"):
        GaussianProcessTLearner(config()).fit(X, t, y, sample_weight=weights)
    weights[4] = 0.0  # weight 0 leaves a row out: the same fit as without that row
    kept = np.arange(len(y)) != 4
    zero = GaussianProcessTLearner(config()).fit(X, t, y, sample_weight=weights).predict_outcomes(X)
    without = GaussianProcessTLearner(config()).fit(X[kept], t[kept], y[kept]).predict_outcomes(X)
    np.testing.assert_allclose(zero, without, rtol=1e-6, atol=1e-9)

    class Tiny(GaussianProcessTLearner):
        max_rows_per_arm = 50

    with pytest.raises(ValueError, match=r"table treatment: option '\w+' has \d+ rows \(rule: gp_t fits at most 50"):
        Tiny(config()).fit(X, t, y)
    from models.explain import explain_learner

    with pytest.raises(TypeError, match="not a fitted learner"):
        explain_learner(GaussianProcessTLearner(config()).fit(X, t, y), X)
