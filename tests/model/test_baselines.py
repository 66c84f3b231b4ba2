"""The model's recommendation beside its baselines (issue 14 item 5): the guideline list, the best single option,
always continue and care as given, scored by the doubly robust value and — with the simulator's truth — by regret,
overall and by subgroup."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.guideline import guideline_choice
from models import evaluation as ev
from models.evaluation.policy import BASELINES
from tests.model.synthetic_escalate import catalog, make_cohort, make_truth

OPTIONS = ["continue", "optimise_dose", "add_ivig", "add_rituximab", "add_jak_inhibitor"]


def test_guideline_list_picks_the_first_eligible_option_in_the_configured_order():
    """Per decision the guideline list gives the first option of its order that is eligible there — not the first
    in display order — skips options it does not know (e.g. not modelled) and falls back to continue."""
    order = ["add_rituximab", "add_ivig", "add_cyclophosphamide", "optimise_dose"]
    eligible = np.array([
        [1, 1, 1, 1, 1],  # rituximab first in the order, though IVIG comes first in display order
        [1, 1, 1, 0, 1],  # on rituximab already: IVIG
        [1, 1, 0, 0, 1],  # neither: optimise dose (cyclophosphamide is not an option here), never the JAK
        [1, 0, 0, 0, 1],  # nothing of the order is eligible: continue
    ], dtype=bool)
    choice = guideline_choice(eligible, OPTIONS, order, "continue")
    assert [OPTIONS[c] for c in choice] == ["add_rituximab", "add_ivig", "optimise_dose", "continue"]
    with pytest.raises(ValueError, match="one column per option"):
        guideline_choice(eligible[:, :3], OPTIONS, order, "continue")


def test_the_configured_guideline_order_drives_the_evaluation_baseline():
    """The baseline the evaluation scores is configs/options.yaml's list: IVIG first wherever it is eligible."""
    cat = catalog()
    names = list(cat.names)
    eligible = np.ones((3, len(names)), dtype=bool)
    eligible[1, names.index("add_ivig")] = False
    mu = np.full(eligible.shape, 0.3)
    choices = ev.baseline_choices(mu, eligible, names, control=names.index(cat.control), guideline=cat.guideline,
                                  best_single=names.index("add_rituximab"))
    picked = [names[c] for c in choices["guideline"]]
    assert picked[0] == picked[2] == cat.guideline[0] == "add_ivig"
    assert picked[1] == next(g for g in cat.guideline if g != "add_ivig")
    assert [names[c] for c in choices["always_continue"]] == ["continue"] * 3


def _observational(n: int, seed: int) -> dict[str, np.ndarray]:
    """Decisions with a known outcome model: an option taken at random among the eligible, response drawn."""
    rng = np.random.default_rng(seed)
    k = len(OPTIONS)
    eligible = rng.random((n, k)) < 0.7
    eligible[:, 0] = True
    mu = np.clip(0.3 + 0.1 * np.arange(k) + rng.normal(0, 0.05, (n, k)), 0.05, 0.95)
    e = eligible / eligible.sum(axis=1, keepdims=True)
    taken = (e.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    y = (rng.random(n) < mu[np.arange(n), taken]).astype(float)
    return {"eligible": eligible, "mu": np.where(eligible, mu, np.nan), "e": e, "taken": taken, "y": y}


def test_baseline_table_has_a_row_per_baseline_overall_and_per_subgroup_with_nan_for_small_subgroups():
    d = _observational(160, seed=5)
    n = len(d["y"])
    groups = pd.DataFrame({"ild": np.where(np.arange(n) < 12, "ILD", "no ILD"),  # 12 ILD decisions: too few
                           "age_group": np.where(np.arange(n) % 2 == 0, "adult", "juvenile")})
    best = ev.best_single_option(d["taken"], d["y"], d["mu"], d["e"], d["eligible"])
    choices = ev.baseline_choices(d["mu"], d["eligible"], OPTIONS, control=0, best_single=best,
                                  guideline=["add_ivig", "add_rituximab", "optimise_dose"])
    table = ev.baseline_table(d["taken"], d["y"], d["mu"], d["e"], choices, groups=groups,
                              config=ev.EvaluationConfig(subgroup_min_n=30))
    scopes = [("all", "all"), ("ild", "ILD"), ("ild", "no ILD"), ("age_group", "adult"), ("age_group", "juvenile")]
    assert list(table.groupby(["subgroup", "level"], sort=False).size().index) == scopes
    for scope in scopes:
        rows = table[(table["subgroup"] == scope[0]) & (table["level"] == scope[1])]
        assert list(rows["policy"]) == list(BASELINES)
    small = table[table["level"] == "ILD"]
    assert (small["n"] == 12).all() and not small["enough_data"].any()
    assert small[["value", "ci_low", "ci_high", "difference_vs_guideline"]].isna().all().all()
    overall = table[table["subgroup"] == "all"].set_index("policy")
    assert overall["value"].notna().all() and (overall["n"] == n).all()
    assert overall.loc["observed", "value"] == pytest.approx(d["y"].mean())  # care as given: the mean outcome
    assert math.isnan(overall.loc["guideline", "difference_vs_guideline"])
    # the difference is paired: the policy's value minus the guideline list's, with a CI around it
    gain = overall.loc["recommended"]
    assert gain["difference_vs_guideline"] == pytest.approx(gain["value"] - overall.loc["guideline", "value"])
    assert gain["difference_ci_low"] < gain["difference_vs_guideline"] < gain["difference_ci_high"]


def test_the_best_single_option_is_the_fixed_option_with_the_best_doubly_robust_value():
    d = _observational(300, seed=9)
    best = ev.best_single_option(d["taken"], d["y"], d["mu"], d["e"], d["eligible"])
    values = [ev.policy_value(ev.fixed_option_policy(k, d["eligible"]), d["taken"], d["y"], d["mu"], d["e"]).estimate
              for k in range(1, len(OPTIONS))]
    assert best == 1 + int(np.argmax(values))


def test_regret_of_every_baseline_is_scored_against_the_same_truth():
    """Known truth: continue is never best, so always-continue has the largest regret; a policy that picks the
    truly best option has none; care given with an option outside the comparison is left out, not scored."""
    true_p = np.array([[0.2, 0.5, 0.6], [0.1, 0.4, 0.3], [0.3, 0.2, 0.35]])
    eligible = np.ones_like(true_p, dtype=bool)
    choices = {"recommended": np.array([2, 1, 2]), "guideline": np.array([1, 1, 1]),
               "always_continue": np.array([0, 0, 0]), "observed": np.array([1, -1, 0])}
    table = ev.baseline_regret_table(true_p, eligible, choices, min_n=1).set_index("policy")
    assert table.loc["recommended", "regret"] == pytest.approx(0.0)
    assert table.loc["guideline", "regret"] == pytest.approx((0.1 + 0.0 + 0.15) / 3)
    assert table.loc["always_continue", "regret"] == pytest.approx((0.4 + 0.3 + 0.05) / 3)
    assert table.loc["observed", "n_truth"] == 2 and table.loc["observed", "regret"] == pytest.approx((0.1 + 0.05) / 2)
    assert table.loc["recommended", "regret_vs_guideline"] == pytest.approx(-0.25 / 3)


@pytest.fixture(scope="module")
def held_out() -> tuple[ev.HeldOutEvaluation, tuple]:
    """A linear bundle trained on the synthetic cohort's training patients, evaluated on its test patients with
    the truth."""
    from models.bundle import BundleConfig, fit_escalate_model

    features, decisions, split = make_cohort(200, seed=4)
    truth_decisions, truth_outcomes = make_truth(features, decisions, seed=4)
    train = features["patient_id"].isin(split.loc[split["split"] == "train", "patient_id"])
    config = BundleConfig(learner="linear", safety_learner="linear", response_threshold=40, min_rows_per_option=15,
                          intervals={"n_boot": 2}, calibrate=False)
    model = fit_escalate_model(features[train].reset_index(drop=True), decisions, catalog(), config)
    test = features[~train].reset_index(drop=True)
    result = ev.evaluate_bundle(model, test, decisions, ev.EvaluationConfig(subgroup_min_n=20), truth_decisions,
                                truth_outcomes)
    return result, (model, test, decisions)


def test_on_a_simulated_cohort_always_continue_loses_more_than_the_guideline_list(held_out):
    """Options help in this cohort and the guideline list starts with the strongest (IVIG): against the truth,
    always continuing leaves more response on the table than the guideline list, and the model's regret in the
    baseline table is the headline regret (one truth, one eligibility)."""
    result, _ = held_out
    b = result.baselines
    overall = b[b["subgroup"] == "all"].set_index("policy")
    assert overall.loc["always_continue", "regret"] > overall.loc["guideline", "regret"] + 0.05
    assert overall.loc["recommended", "regret"] == pytest.approx(result.headline["sim_regret"])
    h = result.headline
    assert h["sim_guideline_regret"] == pytest.approx(overall.loc["guideline", "regret"])
    assert h["sim_always_continue_regret"] == pytest.approx(overall.loc["always_continue", "regret"])
    assert h["sim_regret_vs_guideline"] == pytest.approx(h["sim_regret"] - h["sim_guideline_regret"])
    assert h["decision_value_gain_vs_guideline"] == pytest.approx(
        h["decision_value_recommended"] - h["decision_value_guideline"])
    # by subgroup: every clinical subgroup variable is there, every level keeps a row for every baseline
    assert {"antibody_group", "ild", "age_group"} <= set(b["subgroup"])
    assert list(b["policy"][: len(BASELINES)]) == list(BASELINES) and (b["subgroup"][: len(BASELINES)] == "all").all()
    assert (b.groupby(["subgroup", "level"]).size() == len(BASELINES)).all()
    small = b[(b["subgroup"] != "all") & (b["n"] < 20)]
    assert len(small) and small["value"].isna().all() and small["regret"].isna().all()


GAIN = {"decision_value_gain_vs_guideline": 0.034, "decision_value_gain_vs_guideline_ci_low": -0.012,
        "decision_value_gain_vs_guideline_ci_high": 0.08, "response_n": 412, "sim_regret": 0.021,
        "sim_guideline_regret": 0.055, "sim_regret_vs_guideline": -0.034, "sim_regret_vs_guideline_ci_low": -0.041,
        "sim_regret_vs_guideline_ci_high": -0.027}


def test_the_model_card_says_how_much_the_model_gains_over_the_guideline_list():
    from models.model_card import guideline_gain

    text = guideline_gain(GAIN, ["add IVIG", "add rituximab"], 0.9)
    assert text.startswith("Against the guideline list (add IVIG > add rituximab: the first eligible option)")
    assert "by +3.4 points in 100 (90 % CI -1.2 to +8.0) on 412 held-out decisions" in text
    assert "its regret was 0.021 against the guideline list's 0.055 (difference -0.034, 90 % CI -0.041 to -0.027)" \
        in text
    without_truth = guideline_gain({k: v for k, v in GAIN.items() if not k.startswith("sim_")}, [])
    assert "regret" not in without_truth and without_truth.endswith("held-out decisions.")
    assert guideline_gain({"sim_regret": 0.02}, []) is None  # no guideline comparison: nothing invented


def test_the_clinician_page_model_facts_give_the_gain_over_the_guideline_list():
    from pipeline.report import performance_facts

    facts = dict(performance_facts(GAIN, 0.9, 24, confidence_level=0.95))
    text = facts["against the guideline list"]
    assert "changed the response rate of held-out patients by +3.4 in 100 (95 % confidence interval \u22121.2 to +8.0" \
        in text
    assert "fell short of the truly best option by 2.1 in 100, the guideline list by 5.5 in 100" in text
    assert "against the guideline list" not in dict(performance_facts({"response_auroc": 0.7}, 0.9, 24))


def test_without_the_truth_the_baselines_have_values_but_no_regret(held_out):
    """Real records have no truth: the same baseline rows with their doubly robust values, no regret invented, and
    the model card still says how the model compares with the guideline list."""
    from models.model_card import guideline_gain

    with_truth, (model, test, decisions) = held_out
    result = ev.evaluate_bundle(model, test, decisions, ev.EvaluationConfig(subgroup_min_n=20))
    b = result.baselines
    assert not [c for c in b.columns if c.startswith("regret") or c == "n_truth"]
    keys = ["subgroup", "level", "policy", "value", "difference_vs_guideline"]
    pd.testing.assert_frame_equal(b[keys], with_truth.baselines[keys])
    assert not [k for k in result.headline if k.startswith("sim_")]
    text = guideline_gain(result.headline, ["add IVIG"])
    assert "doubly robust response rate" in text and "regret" not in text
