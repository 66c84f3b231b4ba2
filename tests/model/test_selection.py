"""Model selection without the truth (`models.selection`): the cross-fitted doubly robust value of each
candidate's recommendations picks the learner that personalises, on a cohort whose truth is known here."""

from __future__ import annotations

import numpy as np
import pytest

from models.config import BoosterConfig, LearnerConfig
from models.learners import ModifierGLM, cross_fitted_aipw, prepare_fit
from models.selection import recommend, select_learner
from tests.model.test_learners import ARMS4, cohort

SMALL = BoosterConfig(n_estimators=60, max_depth=2, min_child_weight=20, seed=3)


def test_selection_prefers_the_candidate_whose_recommendations_are_worth_more():
    """Option 1 adds 0.3 only where f0 > 0, option 2 adds 0.1 for everyone. A candidate told that f0 modifies
    option 1 recommends it where it helps and option 2 elsewhere; a blind one recommends one option for
    everyone. The selection (no truth) chooses the first, and its table says by how much, with standard errors."""
    arms = ARMS4
    X, t, y, g, truth = cohort(2500, arms, "binary", seed=21)
    cfg = LearnerConfig(arms=arms, booster=SMALL, cv_folds=3, outcome="binary")
    data = prepare_fit(X, t, y, cfg, groups=g)
    scores, propensity = cross_fitted_aipw(data, cfg)
    assert scores.shape == propensity.shape == (len(X), len(arms))
    candidates = {
        "knows f0": ModifierGLM(cfg.model_copy(update={"effect_modifiers": {"add_ivig": ("f0",)}})),
        "blind": ModifierGLM(cfg),
    }
    selection = select_learner(candidates, data, scores, n_folds=3, seed=1)
    table = selection.table.set_index("candidate")
    assert selection.chosen == "knows f0" and table.loc["knows f0", "chosen"]
    assert table.loc["knows f0", "policy_value"] > table.loc["blind", "policy_value"]
    assert table.loc["blind", "difference_vs_best"] < 0 < table.loc["blind", "difference_se"]
    assert {"policy_value_se", "factual_log_loss", "factual_brier", "fit_seconds"} <= set(table.columns)
    # the chosen learner's recommendations are really better against the truth the selection never saw
    fitted = {name: c.clone().fit_prepared(data) for name, c in candidates.items()}
    value = {name: truth[np.arange(len(X)), recommend(m.predict_outcomes(X), np.ones_like(truth, bool))].mean()
             for name, m in fitted.items()}
    assert value["knows f0"] > value["blind"]


def test_one_standard_error_rule_keeps_the_simpler_candidate_unless_another_is_clearly_better():
    """Candidates are listed simplest first: the first whose value is within `tolerance_se` standard errors of
    the best wins; with tolerance 0 the best wins outright."""
    X, t, y, g, _ = cohort(1500, ARMS4, "binary", seed=23)
    cfg = LearnerConfig(arms=ARMS4, booster=SMALL, cv_folds=3, outcome="binary")
    data = prepare_fit(X, t, y, cfg, groups=g)
    scores, _ = cross_fitted_aipw(data, cfg)
    knows = ModifierGLM(cfg.model_copy(update={"effect_modifiers": {"add_ivig": ("f0",)}}))
    same = {"first": knows, "second": knows.clone()}  # equal values: the first listed wins
    assert select_learner(same, data, scores, n_folds=3, seed=1).chosen == "first"
    blind_first = {"blind": ModifierGLM(cfg), "knows f0": knows}
    table = select_learner(blind_first, data, scores, n_folds=3, seed=1, tolerance_se=0.0).table
    gap = -table.set_index("candidate").loc["blind", "difference_vs_best"]
    se = table.set_index("candidate").loc["blind", "difference_se"]
    lenient = select_learner(blind_first, data, scores, n_folds=3, seed=1, tolerance_se=1.01 * gap / se)
    assert lenient.chosen == "blind"  # within the tolerance: the simpler, first-listed candidate
    strict = select_learner(blind_first, data, scores, n_folds=3, seed=1, tolerance_se=0.99 * gap / se)
    assert strict.chosen == "knows f0"


def test_selection_refuses_what_it_cannot_compare():
    X, t, y, g, _ = cohort(200, ARMS4[:2], "binary", seed=22)
    cfg = LearnerConfig(arms=ARMS4[:2], booster=SMALL, cv_folds=3, outcome="binary")
    data = prepare_fit(X, t, y, cfg, groups=g)
    with pytest.raises(ValueError, match="no candidate learners"):
        select_learner({}, data, np.zeros((len(X), 2)), n_folds=3, seed=1)
    with pytest.raises(ValueError, match=r"scores have shape \(3, 2\)"):
        select_learner({"glm": ModifierGLM(cfg)}, data, np.zeros((3, 2)), n_folds=3, seed=1)


def test_the_model_card_shows_the_selection_table():
    """The learner selection goes into the model card: every candidate with its cross-fitted value, and the one
    chosen; a fixed learner gets no such section."""
    import pandas as pd

    from models.model_card import ModelCardInputs, build_model_card

    table = pd.DataFrame({"candidate": ["modifier_glm(C=0.1)", "s_learner"], "policy_value": [0.51, 0.48],
                          "policy_value_se": [0.04, 0.04], "difference_vs_best": [0.0, -0.03],
                          "difference_se": [0.0, 0.02], "factual_log_loss": [0.57, 0.56], "chosen": [True, False]})
    base = dict(model_name="escalate", learner="modifier_glm(C=0.1)", response_threshold=40,
                juvenile_response_threshold=45, data_source="simulated", n_train_patients=10, n_train_decisions=20,
                n_test_patients=5, n_test_decisions=9, options=[("continue", "continue")], eligibility_rules={},
                headline={"response_auroc": 0.7})
    card = build_model_card(ModelCardInputs(**base, selection=table))
    assert "How the learner was chosen" in card
    assert "| modifier_glm(C=0.1) | 0.510 | 0.040 | 0.000 | 0.000 | 0.570 | True |" in card
    assert "How the learner was chosen" not in build_model_card(ModelCardInputs(**base))
    # the card states the recommendation rule as the bundle ranks: label rules first, the safety weight where set
    rule = "highest predicted probability of response among those no drug label advises against"
    assert rule in card and "safety risk" not in card
    weighted = build_model_card(ModelCardInputs(**base, safety_weight=0.5))
    assert "highest predicted probability of response less 0.5 × its predicted safety risk among those" in weighted


def test_the_model_card_states_the_outcome_the_model_was_trained_on():
    """Found by a review: the card always said "TIS ≥ 40 … moderate improvement" and "grade ≥ 3 cytopenia", whatever
    labels the model was trained with. It now words them from the model's recorded label settings."""
    from features.config import LabelConfig
    from models.model_card import ModelCardInputs, build_model_card

    labels = LabelConfig(response_category="major", horizon_weeks=16, cytopenia_min_grade=4,
                         safety_events=("serious_infection", "cytopenia"))
    card = build_model_card(ModelCardInputs(
        model_name="escalate", learner="linear", response_threshold=60, juvenile_response_threshold=70,
        data_source="simulated", n_train_patients=10, n_train_decisions=20, n_test_patients=5, n_test_decisions=9,
        options=[("continue", "continue")], eligibility_rules={}, headline={}, labels=labels))
    assert "(TIS) ≥ 60 (juvenile DM ≥ 70; major improvement) at 16 weeks" in card
    assert "safety: serious infection or grade ≥ 4 cytopenia within the horizon" in card
    assert "the risk of serious infection or grade ≥ 4 cytopenia" in card
    assert "moderate" not in card and "grade ≥ 3" not in card


def test_a_rare_option_with_one_outcome_in_a_fold_never_stops_selection():
    """A rare option (a switch taken at a handful of decisions, all non-responders) leaves the nuisance fold
    without a model for it: it gets its mean outcome instead, the AIPW scores stay finite, and a candidate that
    cannot fit such a fold is a row saying why — never a crash, never dropped."""
    from models.learners import TLearner

    X, t, y, g, _ = cohort(900, ARMS4, "binary", seed=24)
    t, y = t.copy(), y.copy()
    rare = np.flatnonzero(t == "add_jak_inhibitor")
    t[rare[6:]] = "continue"  # six decisions took it...
    y[rare[:6]] = 0.0  # ...and none responded
    cfg = LearnerConfig(arms=ARMS4, booster=SMALL, cv_folds=3, outcome="binary")
    data = prepare_fit(X, t, y, cfg, groups=g)
    scores, _ = cross_fitted_aipw(data, cfg)
    assert np.isfinite(scores[data.eligible]).all()
    selection = select_learner({"glm": ModifierGLM(cfg), "t": TLearner(cfg)}, data, scores, n_folds=3, seed=1)
    table = selection.table.set_index("candidate")
    assert selection.chosen == "glm"
    assert "has outcome 0" in table.loc["t", "failed"] and not table.loc["t", "chosen"]
    assert np.isnan(table.loc["t", "policy_value"])


def test_a_continuous_outcome_is_selected_by_the_dr_loss_of_its_effects():
    """Treating helps every patient (effect 1 + 0.8 sin(2 f0) > 0), so a model with one effect for everyone
    recommends as well as one that gets each patient's effect right: the policy value cannot tell them apart and
    keeps the simpler, first-listed one. The DR-loss of the contrasts can: for a continuous outcome (`auto`) it
    chooses the Gaussian-process T-learner, whose effects really are closer to the truth it never saw."""
    from models.learners import GaussianProcessTLearner
    from tests.model.test_learner_gp import config, smooth_cohort

    X, t, y, tau = smooth_cohort(600, seed=31)
    cfg = config()
    data = prepare_fit(X, t, y, cfg)
    scores, _ = cross_fitted_aipw(data, cfg.model_copy(update={"cv_folds": 3}))
    candidates = {"one effect": ModifierGLM(cfg), "gp_t": GaussianProcessTLearner(cfg)}
    auto = select_learner(candidates, data, scores, n_folds=3, seed=1)
    table = auto.table.set_index("candidate")
    assert auto.chosen == "gp_t" and set(table["criterion"]) == {"dr_loss"}
    assert table.loc["one effect", "dr_loss_vs_best"] > 2 * table.loc["one effect", "dr_loss_vs_best_se"] > 0
    assert table.loc["gp_t", "dr_loss_vs_best"] == 0.0
    by_value = select_learner(candidates, data, scores, n_folds=3, seed=1, criterion="policy_value")
    assert by_value.chosen == "one effect" and set(by_value.table["criterion"]) == {"policy_value"}
    pehe = {name: np.sqrt(np.mean((c.clone().fit_prepared(data).predict_effects(X)[:, 1] - tau) ** 2))
            for name, c in candidates.items()}
    assert pehe["gp_t"] < 0.6 * pehe["one effect"]


def test_a_binary_outcome_keeps_the_policy_value_and_shows_the_dr_loss():
    """For the escalation decision (binary, several options) `auto` still ranks by the policy value — the same
    choice as before the DR-loss existed — and the table adds every candidate's DR-loss beside it. A learner for
    continuous outcomes only is a row saying so; an unknown criterion is refused."""
    from models.learners import GaussianProcessTLearner

    X, t, y, g, _ = cohort(1500, ARMS4, "binary", seed=23)
    cfg = LearnerConfig(arms=ARMS4, booster=SMALL, cv_folds=3, outcome="binary")
    data = prepare_fit(X, t, y, cfg, groups=g)
    scores, _ = cross_fitted_aipw(data, cfg)
    candidates = {"blind": ModifierGLM(cfg),
                  "knows f0": ModifierGLM(cfg.model_copy(update={"effect_modifiers": {"add_ivig": ("f0",)}})),
                  "gp_t": GaussianProcessTLearner(cfg)}
    auto = select_learner(candidates, data, scores, n_folds=3, seed=1, tolerance_se=0.0)
    by_value = select_learner(candidates, data, scores, n_folds=3, seed=1, tolerance_se=0.0,
                              criterion="policy_value")
    assert auto.chosen == by_value.chosen == "knows f0"
    table = auto.table.set_index("candidate")
    assert set(table["criterion"]) == {"policy_value"}
    assert (table.loc[["blind", "knows f0"], "dr_loss"] > 0).all()
    assert table.loc["blind", "dr_loss"] > table.loc["knows f0", "dr_loss"]
    assert "continuous outcomes only" in table.loc["gp_t", "failed"] and not table.loc["gp_t", "chosen"]
    with pytest.raises(ValueError, match=r"criterion 'pehe' \(rule: one of auto, policy_value, dr_loss\)"):
        select_learner(candidates, data, scores, n_folds=3, seed=1, criterion="pehe")  # type: ignore[arg-type]


def test_train_leaves_out_candidates_made_for_another_outcome_kind():
    """`learner: auto` in train: a continuous-only candidate (gp_t) is not a row of a binary head's selection, and a
    candidate list with none for the head's outcome is refused by name."""
    from models.bundle import BundleConfig, LearnerCandidate, SelectionConfig, select_response_learner

    X, t, y, g, _ = cohort(600, ARMS4, "binary", seed=5)
    glm, gp = LearnerCandidate(learner="modifier_glm", linear_C=1.0), LearnerCandidate(learner="gp_t_learner")
    cfg = BundleConfig(selection=SelectionConfig(candidates=(glm, gp), folds=3), booster=SMALL)
    lcfg = LearnerConfig(arms=ARMS4, booster=SMALL, cv_folds=3, outcome="binary")
    elig = np.ones((len(y), len(ARMS4)), dtype=bool)
    chosen, table = select_response_learner(cfg, lcfg, X, t, y, g, elig)
    assert chosen == glm and table["candidate"].tolist() == [glm.name]
    only_gp = cfg.model_copy(update={"selection": SelectionConfig(candidates=(gp,), folds=3)})
    with pytest.raises(ValueError, match="train.selection.candidates: none models a binary outcome"):
        select_response_learner(only_gp, lcfg, X, t, y, g, elig)
