"""Behavioural tests of the evaluation toolkit: known answers on synthetic data where the truth is known."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from models import evaluation as ev
from models import plots

OPTIONS = ["continue", "optimise_dose", "add_ivig", "add_rituximab"]
LABELS = {
    "continue": "continue current regimen",
    "optimise_dose": "optimise doses to target",
    "add_ivig": "add IVIG",
    "add_rituximab": "add rituximab",
}


def expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from the very probabilities we score: perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = expit(rng.normal(-0.3, 1.5, n))
    return (rng.random(n) < p).astype(float), p


def trial(n: int, seed: int, *, confounded: bool = False) -> dict[str, np.ndarray]:
    """Synthetic decisions with heterogeneous true response probabilities per option.

    Continue is always eligible; other options are eligible with probability 0.7. Choices are uniform over
    eligible options (randomised) or, if confounded, favour IVIG for patients with high x.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    base = np.array([-0.3, 0.0, 0.6, 0.3])
    slope = np.array([0.0, 0.3, 1.2, -0.8])
    p_true = expit(base + np.outer(x, slope))
    eligible = np.column_stack([np.ones(n, bool), rng.random((n, 3)) < 0.7])
    weight = eligible.astype(float)
    if confounded:
        weight[:, 2] *= np.exp(1.5 * x)
    e = weight / weight.sum(axis=1, keepdims=True)
    a = (rng.random(n)[:, None] > np.cumsum(e, axis=1)).sum(axis=1)
    y_potential = (rng.random((n, 4)) < p_true).astype(float)
    y = y_potential[np.arange(n), a]
    return {
        "x": x,
        "p_true": p_true,
        "eligible": eligible,
        "e": e,
        "a": a,
        "y": y,
        "y_potential": y_potential,
    }


# ----------------------------------------------------------------------------------------------------------
# Factual metrics


def test_perfect_predictions_score_perfectly():
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=float)
    m = ev.factual_metrics(y, y)
    assert m["auroc"] == 1.0
    assert m["brier"] == 0.0
    assert m["log_loss"] < 1e-12
    assert m["ece"] == 0.0
    assert (m["calibration_slope"], m["calibration_intercept"]) == (1.0, 0.0)
    assert m["calibration_in_the_large"] == 0.0


def test_separating_but_timid_predictions_have_no_finite_calibration_slope():
    y = np.array([0, 0, 0, 1, 1, 1], dtype=float)
    slope, intercept = ev.calibration_slope_intercept(y, [0.4, 0.45, 0.4, 0.6, 0.55, 0.6])
    assert math.isnan(slope) and math.isnan(intercept)


def test_true_probabilities_have_slope_one_intercept_zero():
    y, p = calibrated(20_000, seed=1)
    m = ev.factual_metrics(y, p)
    assert m["calibration_slope"] == pytest.approx(1.0, abs=0.05)
    assert m["calibration_intercept"] == pytest.approx(0.0, abs=0.05)
    assert m["calibration_in_the_large"] == pytest.approx(0.0, abs=0.05)
    assert m["ece"] < 0.02
    assert 0.7 < m["auroc"] < 0.9


@pytest.mark.parametrize(
    ("stretch", "expected_slope"),
    [(2.0, 0.5), (1.5, 1 / 1.5), (0.5, 2.0)],
    ids=["over-confident x2", "over-confident x1.5", "under-confident x0.5"],
)
def test_calibration_slope_detects_over_and_under_confidence(stretch, expected_slope):
    y, p = calibrated(20_000, seed=2)
    distorted = expit(stretch * logit(p))
    slope, intercept = ev.calibration_slope_intercept(y, distorted)
    assert slope == pytest.approx(expected_slope, rel=0.1)
    assert (slope < 1) == (stretch > 1)
    # Ranking is unchanged by a monotone distortion: discrimination is identical.
    assert ev.auroc(y, distorted) == pytest.approx(ev.auroc(y, p))


def test_calibration_in_the_large_detects_underestimated_risk():
    y, p = calibrated(20_000, seed=3)
    too_low = expit(logit(p) - 1.0)
    assert ev.calibration_in_the_large(y, too_low) == pytest.approx(1.0, abs=0.06)
    assert ev.expected_calibration_error(y, too_low) > 0.1


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_small_when_calibrated_large_when_not(strategy):
    y, p = calibrated(20_000, seed=4)
    assert ev.expected_calibration_error(y, p, strategy=strategy) < 0.02
    assert ev.expected_calibration_error(y, expit(3 * logit(p)), strategy=strategy) > 0.08


def test_ece_known_answer():
    y = np.array([0, 0, 1, 1, 1, 0], dtype=float)
    p = np.array([0.1, 0.1, 0.9, 0.9, 0.55, 0.55])
    # uniform 10 bins: {0.1,0.1}: |0-0.1|; {0.55,0.55}: |0.5-0.55|; {0.9,0.9}: |1-0.9|  -> (2*.1+2*.05+2*.1)/6
    assert ev.expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.5 / 6)
    # 2 uniform bins: [0,.5): |0-.1| * 2; [.5,1]: mean p = (1.8+1.1)/4 = .725, rate .75 -> (0.2 + 4*.025)/6
    assert ev.expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.3 / 6)
    # 3 quantile bins split the three pairs.
    assert ev.expected_calibration_error(y, p, n_bins=3, strategy="quantile") == pytest.approx(0.5 / 6)


def test_single_class_outcome_gives_nan_auroc_not_an_error():
    m = ev.factual_metrics(np.zeros(5), np.array([0.1, 0.2, 0.3, 0.2, 0.1]))
    assert math.isnan(m["auroc"])
    assert math.isnan(m["calibration_slope"])
    assert m["brier"] == pytest.approx(np.mean([0.01, 0.04, 0.09, 0.04, 0.01]))
    assert m["events"] == 0 and m["n"] == 5
    assert set(m) == set(ev.FACTUAL_METRICS)


@pytest.mark.parametrize(
    ("y", "p", "fragment"),
    [
        ([0, 1, 1], [0.2, 1.2, 0.5], "row 1"),
        ([0, 1, 1], [0.2, 1.2, 0.5], "[0, 1]"),
        ([0, 2, 1], [0.2, 0.2, 0.5], "binary"),
        ([0, np.nan, 1], [0.2, 0.2, 0.5], "finite"),
        ([0, 1, 1], [0.2, 0.5], "lengths"),
        (["no", "yes", "yes"], [0.2, 0.5, 0.5], "numeric"),
    ],
)
def test_bad_input_names_row_and_rule(y, p, fragment):
    with pytest.raises(ev.EvaluationInputError, match=None) as info:
        ev.factual_metrics(y, p)
    assert fragment in str(info.value)


def test_continuous_metrics_known_answer():
    m = ev.continuous_metrics([10.0, 20.0, 30.0], [10.0, 20.0, 36.0])
    assert m["rmse"] == pytest.approx(math.sqrt(36 / 3))
    assert m["mae"] == pytest.approx(2.0)
    assert m["mean_error"] == pytest.approx(2.0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 1, allow_nan=False)), min_size=2, max_size=60),
    st.sampled_from(["uniform", "quantile"]),
)
def test_metric_ranges_and_rank_invariance(pairs, strategy):
    y = np.array([a for a, _ in pairs], dtype=float)
    p = np.array([b for _, b in pairs])
    assert 0.0 <= ev.brier_score(y, p) <= 1.0
    assert 0.0 <= ev.expected_calibration_error(y, p, strategy=strategy) <= 1.0
    a = ev.auroc(y, p)
    if y.min() == y.max():
        assert math.isnan(a)
    else:
        assert 0.0 <= a <= 1.0
        assert ev.auroc(y, np.sqrt(p)) == pytest.approx(a)  # only the ranking matters


# ----------------------------------------------------------------------------------------------------------
# Decision value (AIPW)


def test_aipw_known_answer_and_propensity_floor():
    mu = np.array([[0.2, 0.6], [0.5, 0.5], [0.1, 0.9]])
    e = np.array([[0.5, 0.5], [0.8, 0.2], [0.99, 0.01]])
    treatment, y, policy = [1, 0, 1], [1.0, 0.0, 0.0], [1, 1, 1]
    # row 0 follows: 0.6 + 0.4/0.5; row 1 does not: 0.5; row 2 follows with e=0.01 floored to 0.02: 0.9 - 0.9/0.02
    psi = ev.aipw_contributions(policy, treatment, y, mu, e, propensity_floor=0.02)
    np.testing.assert_allclose(psi, [1.4, 0.5, -44.1])
    v = ev.policy_value(policy, treatment, y, mu, e, propensity_floor=0.02)
    assert v.estimate == pytest.approx(np.mean([1.4, 0.5, -44.1]))
    assert v.standard_error == pytest.approx(np.std([1.4, 0.5, -44.1], ddof=1) / math.sqrt(3))
    assert v.ci_low == pytest.approx(v.estimate - 1.959964 * v.standard_error, rel=1e-6)
    assert v.n == 3
    lower_floor = ev.aipw_contributions(policy, treatment, y, mu, e, propensity_floor=0.005)
    assert lower_floor[2] == pytest.approx(0.9 - 0.9 / 0.01)


def test_aipw_ci_covers_true_value_on_randomised_data():
    """Over 200 simulated randomised cohorts, the 95 % CI of a deliberately wrong outcome model covers the truth."""
    covered, errors = [], []
    for seed in range(200):
        d = trial(800, seed)
        mu = np.full_like(d["p_true"], 0.5)  # wrong outcome model: the known propensities keep AIPW unbiased
        policy = ev.fixed_option_policy(2, d["eligible"])
        truth = d["p_true"][np.arange(800), policy].mean()
        v = ev.policy_value(policy, d["a"], d["y"], mu, d["e"])
        covered.append(v.ci_low <= truth <= v.ci_high)
        errors.append(v.estimate - truth)
    assert 0.90 <= np.mean(covered) <= 0.99
    assert abs(np.mean(errors)) < 0.01  # unbiased


def test_aipw_ci_shrinks_with_sample_size():
    d_small, d_large = trial(1_000, seed=11), trial(4_000, seed=12)
    se = []
    for d in (d_small, d_large):
        policy = ev.recommended_policy(d["p_true"], d["eligible"])
        se.append(ev.policy_value(policy, d["a"], d["y"], d["p_true"], d["e"]).standard_error)
    assert 0.4 < se[1] / se[0] < 0.6  # 1/sqrt(4)


def test_correct_outcome_model_rescues_wrong_propensities():
    """Double robustness: confounded choices, uniform (wrong) propensities, exact outcome model."""
    d = trial(20_000, seed=5, confounded=True)
    wrong_e = d["eligible"] / d["eligible"].sum(axis=1, keepdims=True)
    policy = ev.fixed_option_policy(2, d["eligible"])
    truth = d["p_true"][np.arange(20_000), policy].mean()
    good = ev.policy_value(policy, d["a"], d["y"], d["p_true"], wrong_e)
    naive = ev.policy_value(policy, d["a"], d["y"], np.full_like(d["p_true"], 0.5), wrong_e)
    assert abs(good.estimate - truth) < 3 * good.standard_error
    assert abs(naive.estimate - truth) > 3 * naive.standard_error  # both models wrong: biased


def test_policy_recommending_an_ineligible_option_is_rejected():
    d = trial(50, seed=6)
    policy = np.full(50, 3)
    with pytest.raises(ev.EvaluationInputError, match="policy.*must be eligible"):
        ev.policy_value(policy, d["a"], d["y"], d["p_true"], d["e"])


def test_recommended_policy_ignores_ineligible_options_and_breaks_ties_conservatively():
    mu = np.array([[0.3, 0.4, 0.9], [0.5, 0.5, 0.1], [0.2, 0.1, 0.3]])
    eligible = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(ev.recommended_policy(mu, eligible), [1, 0, 2])
    np.testing.assert_array_equal(ev.fixed_option_policy(2, eligible), [0, 2, 2])


def test_decision_value_table_compares_recommendation_with_care_given():
    d = trial(4_000, seed=7)
    table = ev.decision_value_table(d["a"], d["y"], d["p_true"], d["e"], OPTIONS, labels=LABELS)
    assert list(table["policy"]) == ["recommended", "observed"] + [f"always_{o}" for o in OPTIONS]
    observed = table.set_index("policy").loc["observed"]
    assert observed["value"] == pytest.approx(d["y"].mean())
    assert math.isnan(observed["difference_vs_care_given"])
    rec = table.set_index("policy").loc["recommended"]
    assert rec["difference_vs_care_given"] == pytest.approx(rec["value"] - observed["value"])
    # With the true response model, following it beats random care, clearly.
    assert rec["difference_ci_low"] > 0
    true_rec = d["p_true"][np.arange(4_000), ev.recommended_policy(d["p_true"], d["eligible"])].mean()
    assert rec["ci_low"] <= true_rec <= rec["ci_high"]
    # Paired CI of the difference is narrower than combining the two CIs as if independent.
    unpaired = math.hypot(rec["standard_error"], observed["standard_error"])
    assert rec["difference_standard_error"] < unpaired
    ivig = table.set_index("policy").loc["always_add_ivig"]
    assert ivig["description"] == "add IVIG where eligible, otherwise continue current regimen"
    always_continue = table.set_index("policy").loc["always_continue"]
    assert always_continue["share_agreeing_with_care_given"] == pytest.approx(np.mean(d["a"] == 0))


# ----------------------------------------------------------------------------------------------------------
# Simulator-only metrics


@pytest.fixture(scope="module")
def sim() -> dict[str, np.ndarray]:
    return trial(3_000, seed=8)


def test_oracle_policy_has_zero_regret(sim):
    oracle = ev.recommended_policy(sim["p_true"], sim["eligible"])
    r = ev.regret(sim["p_true"], sim["eligible"], oracle)
    assert r.regret == 0.0 and r.share_suboptimal == 0.0
    assert r.oracle_value == pytest.approx(r.recommended_value)


def test_regret_of_always_continue_is_the_gap_to_the_best_option(sim):
    always_continue = np.zeros(3_000, dtype=int)
    best = np.where(sim["eligible"], sim["p_true"], -np.inf).max(axis=1)
    r = ev.regret(sim["p_true"], sim["eligible"], always_continue)
    assert r.regret == pytest.approx(np.mean(best - sim["p_true"][:, 0]))
    assert r.regret > 0.05 and 0 < r.share_suboptimal <= 1


def test_simulator_metrics_for_the_true_model(sim):
    result = ev.simulator_metrics(
        sim["p_true"], sim["p_true"], sim["y_potential"], sim["eligible"],
        ev.recommended_policy(sim["p_true"], sim["eligible"]), OPTIONS,
        lower=sim["p_true"] - 0.05, upper=sim["p_true"] + 0.05,
    )  # fmt: skip
    t = result.per_option.set_index("option")
    assert list(t.index) == OPTIONS
    np.testing.assert_allclose(t["auroc_model"], t["auroc_oracle"])
    assert math.isnan(t.loc["continue", "sqrt_pehe"])
    np.testing.assert_allclose(t.loc[OPTIONS[1:], "sqrt_pehe"], 0.0, atol=1e-12)
    assert result.sqrt_pehe_overall == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(t["coverage"], 1.0)
    np.testing.assert_allclose(t["mean_interval_width"], 0.1)
    assert result.regret.regret == 0.0
    np.testing.assert_array_equal(t["n_eligible"], sim["eligible"].sum(axis=0))


def test_simulator_metrics_for_a_biased_noisy_model(sim):
    rng = np.random.default_rng(9)
    shifted = sim["p_true"].copy()
    # continue's probability (0.43 for everyone) understated: every effect vs continue overstated by 0.1
    shifted[:, 0] -= 0.1
    noisy = expit(logit(sim["p_true"]) + rng.normal(0, 1.5, sim["p_true"].shape))
    shifted_result = ev.simulator_metrics(
        shifted, sim["p_true"], sim["y_potential"], sim["eligible"], np.zeros(3_000, int), OPTIONS
    )
    t = shifted_result.per_option.set_index("option")
    np.testing.assert_allclose(t.loc[OPTIONS[1:], "sqrt_pehe"], 0.1)
    assert t["coverage"].isna().all()
    noisy_t = ev.simulator_metrics(
        noisy, sim["p_true"], sim["y_potential"], sim["eligible"], np.zeros(3_000, int), OPTIONS
    ).per_option
    assert (noisy_t["auroc_gap"] > 0).all()  # the oracle is the ceiling


def test_interval_coverage_known_answer():
    truth = np.array([[0.2, 0.5], [0.3, 0.6], [0.4, 0.7], [0.5, 0.8]])
    lower = truth - 0.1
    upper = truth + 0.1
    lower[:2, 1] += 0.15  # first two rows of option 1 miss the truth from above
    eligible = np.array([[1, 1], [1, 1], [1, 1], [1, 0]], dtype=bool)
    cov = ev.coverage_by_option(truth, lower, upper, eligible, ["continue", "add_ivig"]).set_index("option")
    assert cov.loc["continue", "coverage"] == 1.0
    assert cov.loc["add_ivig", "coverage"] == pytest.approx(1 / 3)
    assert cov.loc["add_ivig", "mean_interval_width"] == pytest.approx((0.05 + 0.05 + 0.2) / 3)
    with pytest.raises(ev.EvaluationInputError, match="lower <= upper"):
        ev.coverage_by_option(truth, upper, lower, eligible, ["continue", "add_ivig"])


def test_option_matrix_pivots_truth_and_rejects_bad_rows():
    long = pd.DataFrame(
        {
            "decision_id": ["d1", "d1", "d2", "d2"],
            "option": ["continue", "add_ivig", "add_ivig", "continue"],
            "p_response": [0.4, 0.7, 0.6, 0.3],
        }
    )
    wide = ev.option_matrix(long, "p_response", ["continue", "optimise_dose", "add_ivig"])
    assert list(wide.columns) == ["continue", "optimise_dose", "add_ivig"]
    np.testing.assert_allclose(wide.loc["d2", ["continue", "add_ivig"]], [0.3, 0.6])
    assert wide["optimise_dose"].isna().all()
    with pytest.raises(ev.EvaluationInputError, match="row 1"):
        ev.option_matrix(
            long.assign(option=["continue", "add_ivgi", "add_ivig", "continue"]), "p_response", OPTIONS
        )
    with pytest.raises(ev.EvaluationInputError, match="one row per decision and option"):
        ev.option_matrix(pd.concat([long, long.iloc[[0]]]), "p_response", OPTIONS)
    np.testing.assert_array_equal(ev.option_codes(["add_ivig", "continue"], OPTIONS), [2, 0])
    with pytest.raises(ev.EvaluationInputError, match="row 1"):
        ev.option_codes(["continue", "add_cyclophosphamide"], OPTIONS)


# ----------------------------------------------------------------------------------------------------------
# Qini


def test_qini_known_answer():
    # sorted by predicted benefit: (treated, responded), (control, no), (treated, no), (control, responded)
    mu = np.array([[0.0, 0.9], [0.0, 0.5], [0.0, 0.3], [0.0, 0.1]])
    curve = ev.qini_curve_data([1, 0, 0, 1], [1, 0, 1, 0], mu, ["continue", "add_ivig"])
    np.testing.assert_allclose(curve["fraction_targeted"], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["qini"], [0, 1, 1, 1, 0])
    np.testing.assert_allclose(curve["random"], 0.0)


def test_qini_keeps_ties_together():
    mu = np.zeros((6, 2))  # no ranking information at all
    curve = ev.qini_curve_data([1, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], mu, ["continue", "add_ivig"])
    np.testing.assert_allclose(curve["fraction_targeted"], [0, 1])
    np.testing.assert_allclose(curve["qini"], curve["random"])
    assert ev.qini_coefficients(curve)["qini_coefficient"].iloc[0] == pytest.approx(0.0)


def test_perfect_ranking_beats_random_and_reversed_ranking():
    d = trial(6_000, seed=10)
    true_effect = d["p_true"]
    curve = ev.qini_curve_data(d["y"], d["a"], true_effect, OPTIONS, eligible=d["eligible"])
    reversed_curve = ev.qini_curve_data(d["y"], d["a"], -true_effect, OPTIONS, eligible=d["eligible"])
    coef = ev.qini_coefficients(curve).set_index("option")["qini_coefficient"]
    coef_rev = ev.qini_coefficients(reversed_curve).set_index("option")["qini_coefficient"]
    assert list(coef.index) == OPTIONS[1:]
    # IVIG and rituximab have strongly heterogeneous effects: ranking by the truth clearly beats random.
    assert (coef[["add_ivig", "add_rituximab"]] > 0.01).all()
    assert (coef >= -0.005).all()
    assert (coef > coef_rev).all()
    # The end point is the overall difference in responders scaled to the treated group.
    g = curve[curve["option"] == "add_ivig"]
    m = d["eligible"][:, 2] & np.isin(d["a"], [0, 2])
    yt, yc = d["y"][m & (d["a"] == 2)], d["y"][m & (d["a"] == 0)]
    assert g["qini"].iloc[-1] == pytest.approx(yt.sum() - yc.sum() * yt.size / yc.size)


# ----------------------------------------------------------------------------------------------------------
# Subgroups


def test_subgroup_table_one_row_per_group_with_small_groups_blanked():
    y, p = calibrated(400, seed=12)
    group = pd.Series(np.where(np.arange(400) < 380, "adult", "juvenile"), name="age_group")
    group.iloc[0] = None
    table = ev.subgroup_metrics(y, p, group, min_n=30)
    assert list(table["level"]) == ["(missing)", "adult", "juvenile"]
    assert table["n"].tolist() == [1, 379, 20]
    assert table["events"].sum() == y.sum()
    adult = table.set_index("level").loc["adult"]
    assert adult["auroc"] == pytest.approx(ev.auroc(y[1:380], p[1:380]))
    juvenile = table.set_index("level").loc["juvenile"]
    assert math.isnan(juvenile["auroc"]) and not juvenile["enough_data"]
    assert juvenile["events"] == y[380:].sum()


def test_subgroup_table_for_several_variables():
    y, p = calibrated(200, seed=13)
    groups = pd.DataFrame({"ild": np.tile(["ILD", "no ILD"], 100), "age_group": "adult"})
    table = ev.subgroup_metrics(y, p, groups, min_n=10)
    assert list(zip(table["subgroup"], table["level"], strict=True)) == [
        ("ild", "ILD"), ("ild", "no ILD"), ("age_group", "adult")
    ]  # fmt: skip
    assert (table.groupby("subgroup")["n"].sum() == 200).all()


def test_clinical_subgroups_from_normalised_patients():
    flags = ["anti_mda5", "anti_tif1g", "anti_nxp2", "anti_mi2", "anti_sae", "anti_synthetase", "anti_srp_hmgcr",
             "antibody_negative"]  # fmt: skip
    patients = pd.DataFrame(False, index=range(3), columns=flags)
    patients.loc[0, ["anti_mda5", "anti_synthetase"]] = True
    patients.loc[1, "antibody_negative"] = True
    patients["patient_id"] = ["P1", "P2", "P3"]
    patients["ild"] = pd.array([True, False, None], dtype="boolean")
    patients["diagnosis"] = ["adult_dermatomyositis", "juvenile_dermatomyositis", "adult_dermatomyositis"]
    labels = ev.clinical_subgroups(patients)
    assert labels["antibody_group"].tolist() == ["anti-MDA5", "antibody negative", "no antibody recorded"]
    assert labels["ild"].tolist() == ["ILD", "no ILD", "ILD unknown"]
    assert labels["age_group"].tolist() == ["adult", "juvenile", "adult"]
    with pytest.raises(ev.EvaluationInputError, match="patients: column"):
        ev.clinical_subgroups(patients.drop(columns="ild"))


# ----------------------------------------------------------------------------------------------------------
# Plot data and figures


@pytest.fixture(scope="module")
def factual(sim) -> dict[str, object]:
    rng = np.random.default_rng(14)
    p_model = expit(logit(sim["p_true"]) + rng.normal(0, 0.5, sim["p_true"].shape))
    rows = np.arange(3_000)
    return {
        "y": sim["y"],
        "p": p_model[rows, sim["a"]],
        "option": np.asarray(OPTIONS, dtype=object)[sim["a"]],
        "p_model": p_model,
    }


def _png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def test_calibration_plot_one_line_per_option(factual):
    data = ev.calibration_curve_data(factual["y"], factual["p"], factual["option"], n_bins=5)
    assert set(data["option"]) == set(OPTIONS)
    assert data.groupby("option")["n"].sum().sum() == 3_000
    fig = plots.plot_calibration(
        data, labels=LABELS
    )  # display order and colours follow LABELS (options.yaml)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == len(OPTIONS) + 1  # + perfect-calibration diagonal
    assert ax.get_xlabel() == "Predicted probability of response"
    colours = [line.get_color() for line in ax.get_lines()[1:]]
    assert colours == list(plots.OKABE_ITO[: len(OPTIONS)])
    assert _png_bytes(fig).startswith(b"\x89PNG")


def test_roc_plot_one_line_per_option_with_auroc_in_legend(factual):
    data = ev.roc_curve_data(factual["y"], factual["p"], factual["option"])
    fig = plots.plot_roc(data, labels=LABELS)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == len(OPTIONS) + 1  # + chance diagonal
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    ivig = factual["option"] == "add_ivig"
    expected = ev.auroc(factual["y"][ivig], factual["p"][ivig])
    assert f"add IVIG (AUROC {expected:.2f})" in legend
    with pytest.warns(UserWarning, match="only one outcome class"):
        single = ev.roc_curve_data([0, 0, 1, 1, 0], [0.1, 0.2, 0.8, 0.7, 0.3], ["a", "a", "b", "b", "b"])
    assert set(single["option"]) == {"b"}


def test_effect_scatter_one_panel_per_option(sim, factual):
    data = ev.effect_scatter_data(factual["p_model"], sim["p_true"], sim["eligible"], OPTIONS)
    assert list(pd.unique(data["option"])) == OPTIONS[1:]
    assert len(data) == sim["eligible"][:, 1:].sum()
    row = data.iloc[0]
    d = int(row["decision"])
    assert row["true_effect"] == pytest.approx(sim["p_true"][d, 1] - sim["p_true"][d, 0])
    fig = plots.plot_effect_scatter(data, labels=LABELS)
    assert len(fig.axes) == len(OPTIONS) - 1
    assert [ax.get_title() for ax in fig.axes] == [
        f"{LABELS[o]} vs continue current regimen" for o in OPTIONS[1:]
    ]
    assert all(len(ax.collections) == 1 and len(ax.get_lines()) == 1 for ax in fig.axes)


def test_qini_plot_curve_and_random_baseline_per_option(sim):
    data = ev.qini_curve_data(sim["y"], sim["a"], sim["p_true"], OPTIONS, eligible=sim["eligible"])
    fig = plots.plot_qini(data, labels=LABELS)
    assert len(fig.axes) == len(OPTIONS) - 1
    for ax in fig.axes:
        assert {"ranked by the model", "random targeting"} <= {line.get_label() for line in ax.get_lines()}
        assert ax.get_ylabel() == "Additional responders"
    # An option keeps its colour in every figure, even those that leave the control out.
    ivig_panel = fig.axes[OPTIONS.index("add_ivig") - 1]
    model_line = next(line for line in ivig_panel.get_lines() if line.get_label() == "ranked by the model")
    assert model_line.get_color() == plots.option_colours(OPTIONS)["add_ivig"]
    assert ivig_panel.get_title() == "add IVIG vs continue current regimen"


def test_plot_data_reject_missing_columns():
    with pytest.raises(ValueError, match="calibration data: column"):
        plots.plot_calibration(pd.DataFrame({"option": ["continue"], "mean_predicted": [0.3]}))


def test_empty_input_gives_nan_metrics_not_an_error():
    m = ev.factual_metrics(np.zeros(0), np.zeros(0))
    assert m["n"] == 0
    assert all(math.isnan(m[k]) for k in ("auroc", "brier", "log_loss", "ece", "calibration_slope"))


def test_params_yaml_evaluation_section_is_a_valid_config():
    from pipeline.config import load_params

    cfg = ev.EvaluationConfig(**load_params()["evaluation"])
    assert 0 < cfg.propensity_floor < 0.5
    with pytest.raises(ValueError, match="calibration_strategy"):
        ev.EvaluationConfig(calibration_strategy="deciles")


def test_overall_pehe_leaves_the_control_out():
    """Continuing's effect against itself is zero by definition: averaged in, it would understate the headline
    √PEHE (found by a mutation the tests above let through)."""
    sim = trial(3_000, seed=8)
    shifted = sim["p_true"].copy()
    shifted[:, 0] -= 0.1  # every effect vs continue overstated by 0.1
    result = ev.simulator_metrics(shifted, sim["p_true"], sim["y_potential"], sim["eligible"], [0] * 3_000, OPTIONS)
    assert result.sqrt_pehe_overall == pytest.approx(0.1)
