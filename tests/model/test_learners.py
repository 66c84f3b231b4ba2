"""Behavioural tests of the outcome learners, propensity model and bootstrap intervals on synthetic cohorts
whose true per-option outcomes are known (generated here with fixed seeds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from models.config import BoosterConfig, IntervalConfig, LearnerConfig, PropensityConfig
from models.intervals import BootstrapEnsemble, interval_coverage
from models.learners import (
    DRLearner,
    LinearLearner,
    ModifierGLM,
    OutcomeLearner,
    SLearner,
    StackedLearner,
    TLearner,
    XLearner,
    make_learner,
)
from models.propensity import PropensityModel, clip_propensity, overlap_report

ARMS4 = ("continue", "add_ivig", "add_rituximab", "add_jak_inhibitor")
# Settings for a cohort of a few thousand rows: shallow trees and large leaves resist the outcome noise.
SMALL = BoosterConfig(n_estimators=100, max_depth=2, min_child_weight=20, seed=7)
TREE_LEARNERS = (SLearner, TLearner, DRLearner, XLearner)


def cohort(
    n_patients: int,
    arms: tuple[str, ...],
    outcome: str,
    seed: int,
    *,
    effect: str = "step",
    missing: float = 0.1,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-3 decision rows per patient, confounded option choice (depends on f1), a patient-level noise shared
    by their rows, and true expected outcomes E[y | features, option] (n, n_arms).

    effect="step": option 1 adds +0.3 when f0 > 0 else 0; further options add constants (+0.1, -0.1).
    effect="linear": options add 0.1 + 0.06 f0 and the baseline is linear (a correctly specified linear model).
    """
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 4, n_patients)
    pid = np.repeat(np.array([f"P{i:05d}" for i in range(n_patients)], dtype=object), per)
    n, k = len(pid), len(arms)
    X = rng.normal(size=(n, 5))
    X[rng.random(n) < missing, 4] = np.nan  # missing measurements are allowed
    logits = np.zeros((n, k))
    logits[:, 1:] = 0.6 * X[:, [1]] * np.linspace(1, -1, k - 1)[None, :]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    codes = (p.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    eff = np.zeros((n, k))
    if effect == "step":
        base = 0.35 + 0.15 * np.tanh(X[:, 1])
        eff[:, 1] = 0.3 * (X[:, 0] > 0)
        eff[:, 2:] = np.array([0.1, -0.1])[: k - 2]
    else:
        base = 0.4 + 0.08 * X[:, 1] - 0.05 * X[:, 2]
        eff[:, 1:] = 0.1 + 0.06 * X[:, [0]]
    truth = base[:, None] + eff
    shared = np.repeat(rng.uniform(-0.1, 0.1, n_patients), per)
    factual = truth[np.arange(n), codes] + shared
    if outcome == "binary":
        y = (rng.random(n) < np.clip(factual, 0, 1)).astype(float)
    else:
        y = factual + rng.normal(0, 0.3, n)
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(5)])
    return frame, np.asarray(arms, dtype=object)[codes], y, pid, truth


def _config(arms: tuple[str, ...], **kw: object) -> LearnerConfig:
    return LearnerConfig(arms=arms, booster=SMALL, **kw)


@pytest.mark.parametrize("outcome", ["binary", "continuous"])
@pytest.mark.parametrize("arms", [ARMS4[:2], ARMS4], ids=["2arms", "4arms"])
@pytest.mark.parametrize("learner", [*TREE_LEARNERS, LinearLearner], ids=lambda c: c.__name__)
def test_learner_recovers_known_heterogeneous_effect(learner, arms, outcome):
    n_patients = 1500 if len(arms) == 2 else 2500
    X, t, y, g, _ = cohort(n_patients, arms, outcome, seed=1)
    X_new, *_, truth = cohort(600, arms, outcome, seed=2)
    true_effect = truth - truth[:, [0]]

    model = learner(_config(arms)).fit(X, t, y, groups=g)
    effect = model.predict_effects(X_new)

    assert model.arms_ == arms
    corr = np.corrcoef(effect[:, 1], true_effect[:, 1])[0, 1]
    # A linear model can at best reach ~0.8 correlation with a step; trees should get well past it.
    assert corr > (0.8 if learner in TREE_LEARNERS else 0.7)
    rmse = np.sqrt(np.mean((effect[:, 1:] - true_effect[:, 1:]) ** 2, axis=0))
    assert rmse[0] < (0.12 if outcome == "continuous" else 0.16)
    # Constant effects of the further options are recovered on average and row by row.
    for j in range(2, len(arms)):
        assert abs(effect[:, j].mean() - true_effect[:, j].mean()) < 0.06
        assert rmse[j - 1] < 0.16


@pytest.mark.parametrize("learner", [*TREE_LEARNERS, LinearLearner, ModifierGLM, StackedLearner],
                         ids=lambda c: c.__name__)
def test_outputs_shape_order_and_scale(learner):
    X, t, y, g, _ = cohort(300, ARMS4, "binary", seed=3)
    model = learner(LearnerConfig(booster=SMALL, cv_folds=3)).fit(X, t, y, groups=g)
    out, eff = model.predict_outcomes(X), model.predict_effects(X)
    assert isinstance(model, OutcomeLearner)
    assert model.outcome == "binary"
    # Default order: the control arm first, then the others alphabetically.
    assert model.arms_ == ("continue", "add_ivig", "add_jak_inhibitor", "add_rituximab")
    assert out.shape == eff.shape == (len(X), 4)
    assert ((out >= 0) & (out <= 1)).all()
    np.testing.assert_allclose(eff[:, 0], 0.0)
    np.testing.assert_allclose(eff, out - out[:, [0]])
    frame = model.predict_outcomes_frame(X)
    assert list(frame.columns) == list(model.arms_)


@pytest.mark.parametrize("learner", [SLearner, ModifierGLM, StackedLearner], ids=lambda c: c.__name__)
def test_published_effect_modifiers_let_a_learner_find_whom_an_option_suits(learner):
    """The option-1 effect is +0.3 only where f0 > 0. Told that f0 modifies option 1 (configs/options.yaml's
    `effect_modifiers`), every learner ranks option 1 first for most patients who gain from it and for few of
    those who don't; the modifier GLM without the modifier can only rank options in one fixed order."""
    arms = ARMS4[:2]
    X, t, y, g, _ = cohort(2000, arms, "binary", seed=11)
    X_new, *_, truth = cohort(800, arms, "binary", seed=12)
    gains = truth[:, 1] > truth[:, 0] + 0.1
    cfg = _config(arms, effect_modifiers={"add_ivig": ("f0",)})
    model = learner(cfg).fit(X, t, y, groups=g)
    effect = model.predict_effects(X_new)[:, 1]
    assert np.corrcoef(effect, truth[:, 1] - truth[:, 0])[0, 1] > 0.75
    assert effect[gains].mean() > effect[~gains].mean() + 0.15
    if learner is ModifierGLM:
        blind = ModifierGLM(_config(arms)).fit(X, t, y, groups=g).predict_effects(X_new)[:, 1]
        assert np.ptp(blind) < np.ptp(effect) / 3  # no modifier: almost the same effect for everyone
    with pytest.raises(ValueError, match=r"effect modifier column\(s\) \['ferritin'\] of option 'add_ivig'"):
        learner(_config(arms, effect_modifiers={"add_ivig": ("ferritin",)})).fit(X, t, y, groups=g)


@pytest.mark.parametrize("learner", [SLearner, TLearner, LinearLearner], ids=lambda c: c.__name__)
def test_numpy_and_dataframe_inputs_agree(learner):
    X, t, y, g, _ = cohort(300, ARMS4[:3], "continuous", seed=4)
    cfg = _config(ARMS4[:3])
    from_frame = learner(cfg).fit(X, t, y, groups=g).predict_outcomes(X)
    as_array = learner(cfg).fit(X.to_numpy(), list(t), y, groups=g).predict_outcomes(X.to_numpy())
    np.testing.assert_allclose(from_frame, as_array, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("learner", [*TREE_LEARNERS], ids=lambda c: c.__name__)
def test_deterministic_for_a_seed_and_seed_matters(learner):
    X, t, y, g, _ = cohort(200, ARMS4[:3], "binary", seed=5)
    cfg = _config(ARMS4[:3], cv_folds=3)
    a = learner(cfg).fit(X, t, y, groups=g).predict_outcomes(X)
    b = learner(cfg).fit(X, t, y, groups=g).predict_outcomes(X)
    np.testing.assert_array_equal(a, b)
    other = cfg.model_copy(update={"booster": SMALL.model_copy(update={"seed": 8})})
    c = learner(other).fit(X, t, y, groups=g).predict_outcomes(X)
    assert not np.array_equal(a, c)  # subsample=0.8 draws rows from the seed


def _sigmoid(m: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-m))


def test_documented_margins_reproduce_predictions_and_shap_is_additive():
    """The module docstring's recipe for each arm's margin is what downstream TreeSHAP relies on."""
    X, t, y, g, _ = cohort(400, ARMS4[:3], "binary", seed=6)
    cfg = _config(ARMS4[:3], cv_folds=3)

    s = SLearner(cfg).fit(X, t, y, groups=g)
    tl = TLearner(cfg).fit(X, t, y, groups=g)
    dr = DRLearner(cfg).fit(X, t, y, groups=g)
    s_out, t_out, dr_out = s.predict_outcomes(X), tl.predict_outcomes(X), dr.predict_outcomes(X)
    for k, arm in enumerate(cfg.arms):
        design = s.design(X, arm)
        contribs = s.model_.get_booster().predict(xgb.DMatrix(design), pred_contribs=True)
        np.testing.assert_allclose(_sigmoid(contribs.sum(axis=1)), s_out[:, k], atol=1e-5)
        np.testing.assert_allclose(
            _sigmoid(tl.models_[arm].predict(X, output_margin=True)), t_out[:, k], atol=1e-6
        )
        control = dr.models_["continue"].predict_proba(X)[:, 1]
        effect = 0.0 if arm == "continue" else dr.effect_models_[arm].predict(X)
        np.testing.assert_allclose(np.clip(control + effect, 0, 1), dr_out[:, k], atol=1e-6)


def test_dr_learner_respects_eligibility():
    X, t, y, g, _ = cohort(500, ARMS4[:3], "binary", seed=7)
    eligible = np.ones((len(X), 3), dtype=bool)
    # add_rituximab impossible for rows with f3 > 1 unless they took it.
    eligible[:, 2] = (X["f3"].to_numpy() <= 1) | (t == "add_rituximab")
    dr = DRLearner(_config(ARMS4[:3], cv_folds=3)).fit(X, t, y, groups=g, eligible=eligible)
    assert np.isnan(dr.aipw_scores_[~eligible[:, 2], 2]).all()
    assert np.isfinite(dr.aipw_scores_[eligible]).all()
    np.testing.assert_allclose(dr.propensity_[~eligible], 0.0)
    np.testing.assert_allclose(dr.propensity_.sum(axis=1), 1.0)

    taken_ineligible = eligible.copy()
    row = int(np.flatnonzero(t == "add_ivig")[0])
    taken_ineligible[row, 1] = False
    with pytest.raises(ValueError, match=rf"row {row}, column 'add_ivig' is false but that option was taken"):
        DRLearner(_config(ARMS4[:3])).fit(X, t, y, groups=g, eligible=taken_ineligible)


def test_bad_inputs_name_table_row_column_and_rule():
    X, t, y, g, _ = cohort(100, ARMS4[:2], "binary", seed=8)
    cfg = _config(ARMS4[:2])
    bad_y = y.copy()
    bad_y[5] = np.nan
    with pytest.raises(ValueError, match=r"table y: row 5 is nan \(rule: outcomes must be finite"):
        TLearner(cfg).fit(X, t, bad_y)
    with pytest.raises(ValueError, match=r"table X: column\(s\) 'sex' \(.*\) are not numeric"):
        TLearner(cfg).fit(X.assign(sex="F"), t, y)
    bad_t = t.copy()
    bad_t[3] = "add_plasma_exchange"
    with pytest.raises(ValueError, match=r"table treatment: row 3, column option is 'add_plasma_exchange'"):
        TLearner(cfg).fit(X, bad_t, y)
    with pytest.raises(ValueError, match=r"table y: row \d+ is 2.0 \(rule: a binary outcome is 0 or 1\)"):
        TLearner(cfg.model_copy(update={"outcome": "binary"})).fit(X, t, np.where(y == 1, 2.0, 0.0))
    inf = X.copy()
    inf.iloc[7, 2] = np.inf
    with pytest.raises(ValueError, match=r"table X: row 7, column 'f2' is inf"):
        TLearner(cfg).fit(inf, t, y)
    fitted = TLearner(cfg).fit(X, t, y)
    with pytest.raises(ValueError, match=r"missing \['f4'\]"):
        fitted.predict_outcomes(X.drop(columns="f4"))
    all_respond = np.where(t == "add_ivig", 1.0, y)
    with pytest.raises(ValueError, match=r"took 'add_ivig' has outcome 1 \(rule: .*responders and non-resp"):
        TLearner(cfg).fit(X, t, all_respond)
    with pytest.raises(ValueError, match="control 'continue' is not one of arms"):
        LearnerConfig(arms=("add_ivig", "add_rituximab"))
    with pytest.raises(ValueError, match="learner kind 'r'"):
        make_learner("r")


@pytest.mark.parametrize("kind", ["logistic", "xgboost"])
def test_propensity_zero_for_ineligible_and_rows_sum_to_one(kind):
    X, t, _, _, _ = cohort(600, ARMS4, "binary", seed=9)
    eligible = np.ones((len(X), 4), dtype=bool)
    eligible[:, 3] = (X["f2"].to_numpy() < 0.5) | (t == ARMS4[3])
    model = PropensityModel(ARMS4, PropensityConfig(kind=kind, booster=SMALL)).fit(X, t, eligible=eligible)
    p = model.predict_proba(X, eligible)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (p[~eligible] == 0).all()
    assert (p[eligible] > 0).all()
    # Confounding by f1 is picked up: the first "add" option is favoured as f1 rises.
    high = X["f1"].to_numpy() > 0.5
    assert p[high, 1].mean() > p[~high, 1].mean() + 0.05
    # Only continue eligible -> probability 1.
    only_control = np.zeros_like(eligible)
    only_control[:, 0] = True
    np.testing.assert_allclose(model.predict_proba(X, only_control)[:, 0], 1.0)


def test_overlap_report_flags_weak_positivity_and_clip_bounds_weights():
    arms = ["continue", "add_ivig", "add_cyclophosphamide"]
    prop = np.array([[0.5, 0.49, 0.01], [0.6, 0.39, 0.01], [0.5, 0.3, 0.2], [0.7, 0.3, 0.0]])
    eligible = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=bool)
    treatment = ["continue", "add_ivig", "add_cyclophosphamide", "continue"]
    report = overlap_report(prop, eligible, treatment, arms=arms, threshold=0.02)
    assert list(report.index) == arms
    cyc = report.loc["add_cyclophosphamide"]
    assert cyc["n_eligible"] == 3 and cyc["n_taken"] == 1
    assert cyc["min"] == pytest.approx(0.01) and cyc["max"] == pytest.approx(0.2)
    assert cyc["share_below_threshold"] == pytest.approx(2 / 3)
    assert "66.7% of eligible rows have propensity < 0.02" in cyc["warning"]
    assert report.loc["continue", "warning"] == ""
    never = overlap_report(prop, eligible, ["continue"] * 4, arms=arms)
    assert never.loc["add_ivig", "warning"].startswith("never taken")

    clipped = clip_propensity(prop, eligible, lower=0.05)
    assert clipped[0, 2] == 0.05 and clipped[3, 2] == 0.0 and clipped[2, 2] == 0.2


def test_bootstrap_intervals_cover_truth_near_nominal_when_model_is_right():
    """Percentile intervals of a correctly specified model hold the true expected outcome ~90 % of the time."""
    arms = ARMS4[:2]
    X, t, y, g, _ = cohort(800, arms, "continuous", seed=10, effect="linear", missing=0)
    X_new, *_, truth = cohort(300, arms, "continuous", seed=11, effect="linear", missing=0)
    ens = BootstrapEnsemble(LinearLearner(_config(arms)), IntervalConfig(n_boot=40, level=0.9, seed=3))
    ens.fit(X, t, y, groups=g)
    lower, upper = ens.predict_interval(X_new)
    assert lower.shape == upper.shape == truth.shape
    assert (lower <= ens.predict_outcomes(X_new) + 1e-9).mean() > 0.95
    assert 0.8 <= interval_coverage(lower, upper, truth) <= 0.99
    narrow_lo, narrow_hi = ens.predict_interval(X_new, level=0.5)
    assert (narrow_hi - narrow_lo).mean() < (upper - lower).mean()
    assert interval_coverage(narrow_lo, narrow_hi, truth) < interval_coverage(lower, upper, truth)
    e_lo, e_hi = ens.predict_interval(X_new, kind="effects")
    np.testing.assert_allclose(e_lo[:, 0], 0.0)
    true_effect = (truth - truth[:, [0]])[:, 1]
    assert 0.8 <= interval_coverage(e_lo[:, 1], e_hi[:, 1], true_effect) <= 0.97  # 0.86 at these seeds
    assert (e_hi[:, 1] - e_lo[:, 1]).mean() < 3 * np.std(true_effect)  # informative, not merely wide


def test_bootstrap_tree_ensemble_coverage_in_generous_band_and_deterministic_across_threads():
    arms = ARMS4[:2]
    X, t, y, g, _ = cohort(500, arms, "binary", seed=12)
    X_new, *_, truth = cohort(200, arms, "binary", seed=13)
    light = SMALL.model_copy(update={"n_estimators": 60})
    cfg = IntervalConfig(n_boot=12, seed=4, boot_booster=light)
    a = BootstrapEnsemble(TLearner(_config(arms)), cfg).fit(X, t, y, groups=g)
    lo, hi = a.predict_interval(X_new)
    # trees' bootstrap intervals run a little short of nominal (bias is not variance): 0.91 at these seeds
    assert 0.8 <= interval_coverage(lo, hi, truth) <= 0.97
    assert (hi - lo).mean() < 0.3  # a [0, 1] interval would cover everything and say nothing
    serial = cfg.model_copy(update={"n_jobs": 1})  # threads must not change the ensemble
    b = BootstrapEnsemble(TLearner(_config(arms)), serial).fit(X, t, y, groups=g)
    np.testing.assert_array_equal(b.predict_interval(X_new)[0], lo)
    assert len(a.members_) == 12


@pytest.mark.parametrize("modifiers", [{}, {"add_ivig": ("f0", "f4")}], ids=["plain", "modifiers"])
@pytest.mark.parametrize("outcome", ["binary", "continuous"])
@pytest.mark.parametrize("learner", [*TREE_LEARNERS, LinearLearner, ModifierGLM, StackedLearner],
                         ids=lambda c: c.__name__)
def test_shared_matrix_prediction_equals_each_learner_own_prediction(learner, outcome, modifiers):
    """The fast path (one float32 conversion / DMatrix shared by every model of a predict call) gives the
    learner's own numbers, for every learner kind with and without option x modifier terms, and a bootstrap
    ensemble's draws equal its members'."""
    from models.intervals import SharedFeatures, shared_outcomes

    arms = ARMS4[:3]
    X, t, y, g, _ = cohort(150, arms, outcome, seed=21)
    fitted = learner(_config(arms, effect_modifiers=modifiers)).fit(X, t, y, groups=g)
    frame = fitted._frame(X)
    shared = SharedFeatures(frame)
    np.testing.assert_allclose(shared_outcomes(fitted, shared), fitted.predict_outcomes(X), rtol=1e-6, atol=1e-7)
    ens = BootstrapEnsemble(learner(_config(arms, effect_modifiers=modifiers)), IntervalConfig(n_boot=3, seed=2)
                            ).fit(X, t, y, groups=g)
    draws = ens.predict_draws(shared)
    own = np.stack([m.predict_outcomes(X) for m in ens.members_])
    np.testing.assert_allclose(draws, own, rtol=1e-6, atol=1e-7)
    effects = ens.predict_draws(X.iloc[:7], kind="effects")
    np.testing.assert_allclose(effects, own[:, :7] - own[:, :7, [0]], rtol=1e-6, atol=1e-7)


def test_shared_matrix_falls_back_when_columns_differ():
    """A learner fitted on other columns (or order) than the shared block takes its own, checked path."""
    from models.intervals import SharedFeatures, shared_outcomes

    arms = ARMS4[:2]
    X, t, y, g, _ = cohort(120, arms, "binary", seed=22)
    fitted = TLearner(_config(arms)).fit(X, t, y, groups=g)
    reordered = fitted._frame(X)[list(reversed(fitted.columns_))]
    np.testing.assert_allclose(shared_outcomes(fitted, SharedFeatures(reordered)), fitted.predict_outcomes(X),
                               rtol=1e-6)
