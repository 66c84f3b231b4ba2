"""The score GLM: a binary response that thresholds a score (the total improvement score) is learnt from the score
too, as one linear model whose explanations stay exact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, spearmanr

from models.calibration import CalibratedLearner
from models.config import CalibrationConfig, IntervalConfig
from models.explain import explain_learner
from models.intervals import BootstrapEnsemble
from models.learners import ModifierGLM, ScoreGLM, prepare_fit
from tests.model.test_learners import ARMS4, _config, cohort

ARMS = ARMS4[:3]
THRESHOLD = 0.45  # the response: a continuous score at or above this


def scored(n_patients: int, seed: int):
    """Decisions whose response is a noisy score at or above THRESHOLD, the signal weak beside the noise (as in
    myositis: a response is hard to foresee). Returns X, options, response, the score's margin over the threshold,
    patients and each option's true chance of response."""
    rng = np.random.default_rng(seed)
    X, t, _, g, _ = cohort(n_patients, ARMS, "continuous", seed=seed)
    f0, f1 = X["f0"].to_numpy(), X["f1"].to_numpy()
    mean = np.column_stack([0.3 * f1, 0.3 * f1 + 0.4 * (f0 > 0), 0.3 * f1 + 0.1])
    codes = pd.Index(ARMS).get_indexer(t)
    margin = mean[np.arange(len(t)), codes] + rng.normal(0, 1.0, len(t)) - THRESHOLD
    return X, t, (margin >= 0).astype(float), margin, g, norm.sf(THRESHOLD, loc=mean, scale=1.0)


def fit(learner_cls, n_patients: int = 200, seed: int = 21, **settings):
    X, t, y, margin, g, _ = scored(n_patients, seed)
    cfg = _config(ARMS, effect_modifiers={"add_ivig": ("f0",)}, linear_C=0.1, linear_alpha=30.0, **settings)
    return learner_cls(cfg).fit(X, t, y, groups=g, score=margin)


def within_option_rank(model, seed: int = 22) -> float:
    """Mean over options of the rank correlation between predicted and true chance of response (new patients)."""
    X_new, *_, p_true = scored(1500, seed)
    pred = model.predict_outcomes(X_new)
    return float(np.mean([spearmanr(pred[:, k], p_true[:, k])[0] for k in range(len(ARMS))]))


def test_the_score_ranks_patients_better_than_its_one_bit_of_response():
    """With a few hundred patients the response alone leaves the GLM's ranking noisy; the score it thresholds
    carries more: the score GLM ranks new patients closer to their true chance, more so at full weight."""
    glm = within_option_rank(fit(ModifierGLM))
    half = within_option_rank(fit(ScoreGLM, score_weight=0.5))
    full = within_option_rank(fit(ScoreGLM, score_weight=1.0))
    assert half > glm + 0.02 and full > half


def test_weight_zero_is_the_modifier_glm():
    X, *_ = scored(50, 23)
    np.testing.assert_allclose(fit(ScoreGLM, score_weight=0.0).predict_outcomes(X),
                               fit(ModifierGLM).predict_outcomes(X), atol=1e-12)


def test_one_linear_model_whose_shap_is_exact():
    model = fit(ScoreGLM)
    X, *_ = scored(60, 24)
    assert model.link_["slope"] > 0 and model.link_["score_weight"] == 0.5
    predicted = model.predict_outcomes(X)
    for (target, option), s in explain_learner(model, X).items():
        np.testing.assert_allclose(s.base + s.values.sum(axis=1), s.output, atol=1e-9)
        if target == "response":
            np.testing.assert_allclose(s.probability, predicted[:, ARMS.index(option)], atol=1e-9)


def interacting(n_patients: int, seed: int):
    """As `scored`, but IVIG's effect on the score needs two facts at once (f0 > 0 and f1 > 0): an interaction no
    listed modifier carries, which trees on the score can find."""
    rng = np.random.default_rng(seed)
    X, t, _, g, _ = cohort(n_patients, ARMS, "continuous", seed=seed)
    f0, f1 = X["f0"].to_numpy(), X["f1"].to_numpy()
    both = ((f0 > 0) & (f1 > 0)).astype(float)
    mean = np.column_stack([0.2 * f1, 0.2 * f1 + 1.2 * both - 0.3, 0.2 * f1 + 0.1])
    codes = pd.Index(ARMS).get_indexer(t)
    margin = mean[np.arange(len(t)), codes] + rng.normal(0, 0.6, len(t)) - THRESHOLD
    return X, t, (margin >= 0).astype(float), margin, g, norm.sf(THRESHOLD, loc=mean, scale=0.6)


def test_trees_on_the_score_find_an_interaction_no_modifier_names_and_stay_exactly_explained():
    X, t, y, margin, g, _ = interacting(400, 31)
    cfg = _config(ARMS, linear_C=0.1, linear_alpha=30.0)
    plain = ScoreGLM(cfg).fit(X, t, y, groups=g, score=margin)
    trees = ScoreGLM(cfg.model_copy(update={"score_trees_weight": 0.5})).fit(X, t, y, groups=g, score=margin)
    assert plain.trees_ is None and trees.trees_ is not None and trees.trees_link_["slope"] > 0
    X_new, *_, p_true = interacting(1500, 32)
    err = [float(np.sqrt(np.mean((m.predict_outcomes(X_new) - p_true) ** 2))) for m in (plain, trees)]
    assert err[1] < err[0] - 0.01, err
    predicted = trees.predict_outcomes(X_new[:80])
    for (target, option), s in explain_learner(trees, X_new[:80]).items():  # to xgboost's float32 precision
        np.testing.assert_allclose(s.base + s.values.sum(axis=1), s.output, atol=1e-6)
        if target == "response":
            np.testing.assert_allclose(s.probability, predicted[:, ARMS.index(option)], atol=1e-6)
    # the trees' design has option columns, but they are the baseline (explained against the average patient under
    # the same option), never a reason: the option's effect is not split with the facts it interacts with
    options = [i for i, c in enumerate(s.columns) if c.startswith("option__") and ":" not in c]
    assert options and np.all(s.values[:, options] == 0)
    # the trees' explainers are built once per fitted model: a refit (new trees, new reference row) is explained by
    # its own trees, still exactly
    X2, t2, y2, margin2, g2, _ = interacting(1500, 32)
    trees.fit(X2, t2, y2, groups=g2, score=margin2)
    refit = explain_learner(trees, X2[:80])[("response", ARMS[1])]
    np.testing.assert_allclose(refit.probability, trees.predict_outcomes(X2[:80])[:, 1], atol=1e-6)
    # and a booster replaced in place (the same trees object) is never explained by the old one's explainer
    import copy

    from models.explain import _reference_explainer

    first = _reference_explainer(trees.trees_, trees.trees_reference_, 1)
    assert _reference_explainer(trees.trees_, trees.trees_reference_, 1) is first
    trees.trees_.model_ = copy.deepcopy(trees.trees_.model_)
    assert _reference_explainer(trees.trees_, trees.trees_reference_, 1) is not first


def test_calibration_and_bootstrap_refits_learn_from_the_score_too():
    """Out-of-fold and bootstrap refits fit on row subsets (`FitData.rows`): each keeps its rows' scores."""
    X, t, y, margin, g, _ = scored(300, 25)
    cfg = _config(ARMS, linear_alpha=30.0)
    data = prepare_fit(X, t, y, cfg, groups=g, score=margin)
    np.testing.assert_array_equal(data.rows(np.array([3, 1])).score, margin[[3, 1]])
    calibrated = CalibratedLearner(ScoreGLM(cfg), CalibrationConfig(method="sigmoid", n_folds=2)).fit_prepared(data)
    assert calibrated.base_.link_["slope"] > 0
    ensemble = BootstrapEnsemble(ScoreGLM(cfg), IntervalConfig(n_boot=3)).fit_prepared(data)
    assert all(member.link_["slope"] > 0 for member in ensemble.members_)
    with_trees = ScoreGLM(cfg.model_copy(update={"score_trees_weight": 0.3}))
    ensemble = BootstrapEnsemble(with_trees, IntervalConfig(n_boot=2)).fit_prepared(data)
    assert all(member.trees_ is not None for member in ensemble.members_)


def test_a_score_that_contradicts_the_response_or_is_missing_is_refused():
    X, t, y, margin, g, _ = scored(40, 26)
    cfg = _config(ARMS)
    wrong = margin.copy()
    wrong[5] = -wrong[5] if wrong[5] != 0 else -1.0
    with pytest.raises(ValueError, match=r"table score: row 5 .* y = 1 exactly where"):
        ScoreGLM(cfg).fit(X, t, y, groups=g, score=wrong)
    with pytest.raises(ValueError, match="table score: the ScoreGLM learner needs a binary outcome and the score"):
        ScoreGLM(cfg).fit(X, t, y, groups=g)


def test_one_patient_leaves_no_one_out_to_learn_the_link_from_so_it_is_the_glm():
    X, t, y, margin, _, _ = scored(60, 27)
    one = np.zeros(len(y))  # every row the same patient: no patient-grouped folds
    cfg = _config(ARMS, linear_alpha=30.0)
    model = ScoreGLM(cfg).fit(X, t, y, groups=one, score=margin)
    assert model.link_["score_weight"] == 0.0
    np.testing.assert_allclose(model.predict_outcomes(X), ModifierGLM(cfg).fit(X, t, y, groups=one).predict_outcomes(X),
                               atol=1e-12)


@pytest.mark.parametrize("head", ["tis_learner", "safety_learner", "steroid_learner"])
def test_only_the_response_head_may_use_the_score_glm(head):
    from models.bundle import BundleConfig

    with pytest.raises(ValueError, match=f"{head}: score_glm learns a response from the score it thresholds"):
        BundleConfig.model_validate({head: "score_glm"})


def test_a_bootstraps_members_read_the_shared_features_and_predict_the_same_numbers(monkeypatch):
    """A page predicts one decision with a dozen bootstrap refits per head: each score GLM member (with its trees
    and option x modifier terms) and each modifier GLM member predicts from the features checked and converted once
    (`SharedFeatures`) — no per-member frame check, sklearn transform of the frame or design frame for the trees,
    most of a page's prediction time — and its numbers are exactly those of its own checked path, missing values
    (the imputer's indicators) included."""
    from sklearn.pipeline import Pipeline

    from models import learners
    from models.intervals import SharedFeatures, shared_outcomes

    X, t, y, margin, g, _ = scored(200, 27)
    assert X.isna().any().any()  # the imputer fills and flags them
    cfg = _config(ARMS, effect_modifiers={"add_ivig": ("f0", "f4")}, linear_C=0.1, linear_alpha=30.0,
                  score_trees_weight=0.4)
    data = prepare_fit(X, t, y, cfg, groups=g, score=margin)
    score = BootstrapEnsemble(ScoreGLM(cfg), IntervalConfig(n_boot=2, seed=3)).fit_prepared(data)
    glm = BootstrapEnsemble(ModifierGLM(cfg), IntervalConfig(n_boot=2, seed=3)).fit_prepared(data)
    assert all(m.trees_ is not None and m.trees_.modifier_index_ for m in score.members_)
    X_new = scored(40, 28)[0]
    own = {id(m): m.predict_outcomes(X_new) for e in (score, glm) for m in (e.point_, *e.members_)}

    def refuse(*_args, **_kwargs):
        raise AssertionError("a bootstrap member re-read the features")

    monkeypatch.setattr(Pipeline, "transform", refuse)
    monkeypatch.setattr(learners, "as_feature_frame", refuse)
    monkeypatch.setattr(learners.SLearner, "_design", refuse)
    shared = SharedFeatures(X_new)  # the checked feature block, as a bundle's predict passes it
    for e in (score, glm):
        for m in (e.point_, *e.members_):
            np.testing.assert_array_equal(shared_outcomes(m, shared), own[id(m)])
        np.testing.assert_array_equal(e.predict_draws(shared), np.stack([own[id(m)] for m in e.members_]))
