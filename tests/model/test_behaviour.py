"""Behaviour a clinician relies on from the deployed bundle (`EscalateModel.predict_frame`): ineligible options
never get a number, probabilities are probabilities, intervals hold the estimate, exactly one eligible option
is recommended, more active disease does not raise the predicted response to continuing, bad input is named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.bundle import BundleConfig, EscalateModel, fit_escalate_model, interval_meaning, spread_estimates
from tests.model.synthetic_escalate import catalog, make_cohort

PRED = [
    "p_response", "p_response_low", "p_response_high", "expected_tis", "expected_tis_low", "expected_tis_high",
    "p_safety", "p_safety_low", "p_safety_high", "effect_vs_continue", "propensity", "rank",
]


def small_config(learner: str = "t_learner", **extra: object) -> BundleConfig:
    return BundleConfig.model_validate({
        "learner": learner,
        "safety_learner": "s_learner" if learner != "linear" else "linear",
        "min_rows_per_option": 20,
        "booster": {"n_estimators": 20, "max_depth": 2, "learning_rate": 0.3, "n_jobs": 1},
        "calibration": {"method": "sigmoid", "n_folds": 2, "min_rows_per_arm": 20},
        "intervals": {"n_boot": 3, "level": 0.9},
        **extra,
    })


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return make_cohort(180, seed=3)


@pytest.fixture(scope="module")
def model(cohort) -> EscalateModel:
    features, decisions, _ = cohort
    return fit_escalate_model(features, decisions, catalog(), small_config())


@pytest.fixture(scope="module")
def predictions(model, cohort) -> pd.DataFrame:
    return model.predict_frame(cohort[0])


def test_one_row_per_decision_and_option(predictions, cohort):
    features = cohort[0]
    assert len(predictions) == len(features) * len(catalog().names)
    counts = predictions.groupby("decision_id")["option"].nunique()
    assert (counts == len(catalog().names)).all()
    assert list(predictions["option"].iloc[: len(catalog().names)]) == list(catalog().names)


def test_ineligible_options_never_get_a_number(predictions):
    ineligible = predictions[~predictions["eligible"]]
    assert len(ineligible) > 0
    assert ineligible[PRED].isna().all().all()
    assert not ineligible["recommended"].any()
    assert (ineligible["ineligible_reason"].str.len() > 0).all()
    eligible = predictions[predictions["eligible"]]
    assert eligible[[c for c in PRED if c != "propensity"]].notna().all().all()
    assert (eligible["ineligible_reason"] == "").all()


def test_options_already_on_the_regimen_are_ineligible(predictions, cohort):
    features = cohort[0].reset_index(drop=True)
    on_ivig = features["decision_id"][features["on_ivig"] > 0]
    rows = predictions[predictions["decision_id"].isin(on_ivig) & (predictions["option"] == "add_ivig")]
    assert len(rows) == len(on_ivig) > 0
    assert not rows["eligible"].any()
    assert rows["ineligible_reason"].str.contains("already on ivig").all()
    jak = predictions[predictions["decision_id"].isin(features["decision_id"][features["on_baricitinib"] > 0])
                      & (predictions["option"] == "add_jak_inhibitor")]
    assert not jak["eligible"].any()


def test_rarely_taken_option_is_not_modelled_and_says_so(model, predictions):
    assert "add_abatacept" not in model.arms
    rows = predictions[predictions["option"] == "add_abatacept"]
    assert not rows["eligible"].any()
    assert rows["ineligible_reason"].str.startswith("not modelled").all()
    assert rows["p_response"].isna().all()


@pytest.mark.parametrize("name", ["p_response", "p_safety"])
def test_probabilities_are_probabilities(predictions, name):
    values = predictions[[name, f"{name}_low", f"{name}_high"]].dropna().to_numpy()
    assert len(values) > 0
    assert ((values >= 0) & (values <= 1)).all()


@pytest.mark.parametrize("name", ["p_response", "expected_tis", "p_safety"])
def test_intervals_contain_the_point_estimate(predictions, name):
    rows = predictions[predictions["eligible"]]
    assert (rows[f"{name}_low"] <= rows[name]).all()
    assert (rows[name] <= rows[f"{name}_high"]).all()
    assert (rows[f"{name}_high"] - rows[f"{name}_low"]).mean() > 0  # the bootstrap gives real width


def test_exactly_one_recommendation_the_best_eligible_option_a_label_allows(predictions):
    """One recommendation per decision: the eligible option with the highest chance of response among those no
    label combination rule advises against; an option a label advises against is shown with the rule, never ★."""
    per_decision = predictions.groupby("decision_id", sort=False)
    assert (per_decision["recommended"].sum() == 1).all()
    allowed = predictions["eligible"] & ~predictions["advised_against"]
    assert predictions["advised_against"].any()  # the synthetic cohort has patients on tocilizumab
    assert (predictions.loc[predictions["advised_against"], "combination_rule"].str.len() > 0).all()
    assert not (predictions["recommended"] & predictions["advised_against"]).any()
    best = predictions.loc[allowed].groupby("decision_id")["p_response"].max()
    chosen = predictions[predictions["recommended"]].set_index("decision_id")["p_response"]
    np.testing.assert_allclose(chosen.loc[best.index].to_numpy(), best.to_numpy())
    assert (predictions.loc[predictions["recommended"], "rank"] == 1).all()


def test_effect_is_the_difference_from_continue(predictions):
    cont = predictions[predictions["option"] == "continue"].set_index("decision_id")["p_response"]
    rows = predictions[predictions["eligible"]]
    expected = rows["p_response"].to_numpy() - cont.loc[rows["decision_id"]].to_numpy()
    np.testing.assert_allclose(rows["effect_vs_continue"].to_numpy(), expected)


def test_more_active_disease_does_not_raise_predicted_response_to_continue(model, cohort):
    features = cohort[0]
    worse = features.copy()
    worse["physician_global"] = np.minimum(worse["physician_global"] + 2.0, 10.0)
    worse["cdasi_activity"] = np.minimum(worse["cdasi_activity"] + 10.0, 100.0)
    base = model.predict_frame(features)
    more = model.predict_frame(worse)
    cont = base["option"] == "continue"
    delta = more.loc[cont, "p_response"].to_numpy() - base.loc[cont, "p_response"].to_numpy()
    assert delta.mean() < 0  # lower on average
    assert (delta <= 1e-9).mean() >= 0.8  # and for the large majority of decisions


def test_prediction_does_not_depend_on_row_order_or_batch(model, cohort):
    features = cohort[0]
    full = model.predict_frame(features).set_index(["decision_id", "option"])
    part = model.predict_frame(features.iloc[::-1].head(7)).set_index(["decision_id", "option"])
    cols = ["p_response", "p_response_low", "expected_tis", "p_safety", "rank"]
    pd.testing.assert_frame_equal(part[cols], full.loc[part.index, cols])


def test_same_seed_same_model(cohort):
    features, decisions, _ = cohort
    features = features[features["patient_id"] < "P00120"]
    a = fit_escalate_model(features, decisions, catalog(), small_config("linear")).predict_frame(features)
    b = fit_escalate_model(features, decisions, catalog(), small_config("linear")).predict_frame(features)
    pd.testing.assert_frame_equal(a, b)


def test_the_score_glm_learns_the_response_from_the_total_improvement_score(cohort):
    """`score_glm` fits the response on its TIS margin over the patient's threshold as well; the TIS head, which
    it cannot fit (a score is not a response), is the modifier GLM its score regression is."""
    features, decisions, _ = cohort
    model = fit_escalate_model(features, decisions, catalog(), small_config("score_glm"))
    learner = model.heads["response"].learner.base_
    assert type(learner).__name__ == "ScoreGLM" and learner.link_["slope"] > 0
    assert type(model.heads["tis"].learner).__name__ == "ModifierGLM"
    predictions = model.predict_frame(features)
    shown = predictions["p_response"].dropna()  # ineligible options get no number
    assert len(shown) > len(predictions) / 4 and shown.between(0, 1).all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.drop(columns=["physician_global"]), "missing column(s) ['physician_global']"),
        (lambda f: f.assign(physician_global=f["physician_global"].astype(str)), "column 'physician_global'"),
        (lambda f: f.assign(cdasi_activity=np.where(np.arange(len(f)) == 2, np.inf, f["cdasi_activity"])),
         "row 2, column 'cdasi_activity'"),
        (lambda f: f.assign(on_ivig=np.where(np.arange(len(f)) == 1, np.nan, f["on_ivig"])),
         "row 1, column 'on_ivig'"),
        (lambda f: f.drop(columns=["any_below_target"]), "missing column 'any_below_target'"),
    ],
    ids=["missing-feature", "text-feature", "infinite-value", "missing-flag", "missing-below-target"],
)
def test_bad_input_is_named(model, cohort, mutate, message):
    features = mutate(cohort[0].head(5).copy())
    with pytest.raises(ValueError, match="table features") as err:
        model.predict_frame(features)
    assert message in str(err.value)
    assert "rule" in str(err.value)


def test_training_labels_must_cover_every_feature_row(cohort):
    features, decisions, _ = cohort
    with pytest.raises(ValueError, match="has no row in decisions"):
        fit_escalate_model(features, decisions.iloc[5:], catalog(), small_config("linear"))


def test_an_option_taken_against_the_eligibility_rules_is_kept_and_counted(cohort):
    """A clinician's choice the rules call ineligible (a dose raised that the record shows at target) happened, so
    it was possible: the decision trains the model with that option eligible there, and the summary counts it."""
    features, decisions, _ = cohort
    bad = decisions.copy()
    rows = np.flatnonzero(features["on_ivig"].to_numpy() > 0)[:2]
    bad.loc[rows, "option_taken"] = "add_ivig"
    model = fit_escalate_model(features, bad, catalog(), small_config("linear"))
    assert model.summary["rows_taken_against_eligibility_rules"] == 2
    assert model.summary["option_counts"]["add_ivig"] == int((bad["option_taken"] == "add_ivig").sum())
    # at prediction the rules still decide: the patient already on IVIG cannot be offered "add IVIG"
    pred = model.predict_frame(features.iloc[rows])
    assert not pred.loc[pred["option"] == "add_ivig", "eligible"].any()


def test_unlabelled_decisions_are_counted_not_hidden(model, cohort):
    decisions = cohort[1]
    modelled = decisions["option_taken"].isin(model.arms)
    assert model.summary["unlabelled_rows"]["response"] == int(
        (modelled & decisions["total_improvement_score"].isna()).sum()) > 0
    assert model.summary["rows_unmodelled_option"] == int((~modelled).sum())


def test_changes_outside_the_catalogue_are_counted_and_left_out(cohort):
    features, decisions, _ = cohort
    features = features[features["patient_id"] < "P00120"]
    other = decisions.copy()
    other.loc[other.index[:3], "option_taken"] = "other"
    model = fit_escalate_model(features, other, catalog(), small_config("linear"))
    assert model.summary["rows_option_outside_catalogue"] == 3
    assert "other" not in model.arms
    out = model.predict_frame(features.head(3))
    assert set(out["option"]) == set(catalog().names)


def _dictionary(features: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in features.columns if c not in ("patient_id", "decision_id", "as_of")]
    return pd.DataFrame({"feature": cols, "clinical_feature": cols, "label": [c.replace("_", " ") for c in cols],
                         "unit": ""})


@pytest.fixture(scope="module")
def explained_model(cohort) -> EscalateModel:
    features, decisions, _ = cohort
    return fit_escalate_model(features, decisions, catalog(), small_config("s_learner"),
                              dictionary=_dictionary(features))


def test_predictions_carry_reasons_for_eligible_options_only(explained_model, cohort):
    features = cohort[0].head(9)
    plain = explained_model.predict_frame(features)
    out = explained_model.predict_frame(features, explain_top_k=2)
    assert explained_model.explain_top_k == 3
    pd.testing.assert_frame_equal(out[plain.columns], plain)  # reasons are added, predictions unchanged
    assert {"reason_2_text", "reason_2_contribution", "contrast_reason_1_text"} <= set(out.columns)
    assert "reason_3_text" not in out.columns
    eligible = out["eligible"].astype(bool)
    assert out.loc[eligible, "reason_1_text"].notna().all()
    assert out.loc[~eligible, ["reason_1_text", "contrast_reason_1_text"]].isna().all().all()
    treated = eligible & (out["option"] != "continue")
    assert out.loc[treated, "contrast_reason_1_text"].str.endswith("vs continue").all()
    assert out.loc[out["option"] == "continue", "contrast_reason_1_text"].isna().all()
    # reasons of one patient do not depend on the batch it is explained in
    alone = explained_model.predict_frame(features.iloc[[4]], explain_top_k=2)
    batch = out[out["row"] == 4].reset_index(drop=True)
    assert alone["reason_1_text"].tolist() == batch["reason_1_text"].tolist()


def test_reasons_without_any_dictionary_are_refused(model, cohort):
    assert model.explain_top_k == 0  # no dictionary stored: the registered default is predictions only
    with pytest.raises(ValueError, match="feature dictionary"):
        model.predict_frame(cohort[0].head(2), explain_top_k=2)
    with pytest.raises(ValueError, match="explain_top_k"):
        model.predict_frame(cohort[0].head(2), explain_top_k=-1)


def test_training_refuses_a_dictionary_missing_a_feature(cohort):
    features, decisions, _ = cohort
    partial = _dictionary(features).iloc[1:]
    with pytest.raises(ValueError, match="feature_dictionary"):
        fit_escalate_model(features, decisions, catalog(), small_config("linear"), dictionary=partial)


def test_no_rows_in_no_rows_out_with_reason_columns(explained_model, cohort):
    out = explained_model.predict_frame(cohort[0].head(0), explain_top_k=1)
    assert len(out) == 0 and "reason_1_text" in out.columns


def _binary_intervals_contain(wider: EscalateModel, narrower: EscalateModel, features: pd.DataFrame
                              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Both models' predictions, after asserting the same response and safety points with the first model's
    intervals containing the second's."""
    a, b = wider.predict_arrays(features), narrower.predict_arrays(features)
    for name in ("p_response", "p_safety"):
        np.testing.assert_allclose(a[name], b[name])
        assert (a[f"{name}_low"] <= b[f"{name}_low"] + 1e-12).all()
        assert (a[f"{name}_high"] >= b[f"{name}_high"] - 1e-12).all()
    return a, b


def test_interval_calibration_term_widens_binary_intervals_only(cohort):
    """The out-of-fold calibration term widens response and safety intervals (never narrows them), keeps them in
    [0, 1] around the same point estimates, and leaves TIS intervals as the bootstrap gives them."""
    features, decisions, _ = cohort
    with_term = fit_escalate_model(features, decisions, catalog(), small_config())
    without = fit_escalate_model(features, decisions, catalog(),
                                 small_config(interval_calibration={"enabled": False}))
    a, b = _binary_intervals_contain(with_term, without, features)
    for name in ("p_response", "p_safety"):
        assert ((a[f"{name}_high"] - a[f"{name}_low"]).mean() > (b[f"{name}_high"] - b[f"{name}_low"]).mean())
        assert (a[f"{name}_low"] >= 0).all() and (a[f"{name}_high"] <= 1).all()
    np.testing.assert_allclose(a["expected_tis_low"], b["expected_tis_low"])
    assert with_term.heads["tis"].bands is None and with_term.heads["response"].bands is not None


def test_the_model_says_what_its_interval_means(model):
    meaning = model.summary["interval_meaning"]
    assert "90 %" in meaning and "refits on patients drawn with replacement" in meaning
    assert "out-of-fold" in meaning and "unmeasured confounding" in meaning
    assert "the same patients' other decisions" in meaning  # this patient's own, unrecorded chance: as far as seen
    bands = model.summary["interval_calibration"]
    assert set(bands) == {"response", "safety"} and all(v > 0 for v in bands["response"].values())
    spread = model.summary["interval_patient_spread"]
    assert set(spread) == {"response", "safety"} and spread["response"]["decision_pairs"] > 0
    # the response is the TIS over a threshold: its spread comes from the TIS residuals, the others' from 0/1
    assert (spread["response"]["source"], spread["safety"]["source"]) == ("total_improvement_score", "binary outcome")
    words = spread_estimates(model.summary)  # the model card's line
    assert "response σ" in words and "total improvement score residuals" in words and "safety σ" in words
    r = spread["response"]  # with the range its sampling error allows, so a reader sees whether it is told from 0
    assert r["sigma_logit_low"] <= r["sigma_logit"] <= r["sigma_logit_high"]
    assert f"(90 % range {r['sigma_logit_low']:.2f}–{r['sigma_logit_high']:.2f})" in words
    assert spread_estimates({}) == ""
    without = interval_meaning(small_config(interval_calibration={"patient_spread": False}))
    assert "patients who look like this one in the record" in without  # not this patient's own, unrecorded chance


def test_the_patient_spread_widens_binary_intervals_only(cohort):
    """The spread term adds to the calibration term in quadrature: same point estimates, intervals at least as
    wide for response and safety, TIS untouched."""
    features, decisions, _ = cohort
    cfg = small_config(interval_calibration={"min_decision_pairs": 1})
    with_spread = fit_escalate_model(features, decisions, catalog(), cfg)
    without = fit_escalate_model(features, decisions, catalog(),
                                 small_config(interval_calibration={"patient_spread": False}))
    a, b = _binary_intervals_contain(with_spread, without, features)
    np.testing.assert_allclose(a["expected_tis_high"], b["expected_tis_high"])
    assert without.heads["response"].spread is None and with_spread.heads["tis"].spread is None


def test_steroid_sparing_is_a_head_with_intervals_when_the_labels_have_it(cohort, model):
    """With a `steroid_sparing` label the bundle predicts, per option, the chance that prednisone is at the taper
    goal at the horizon with an interval; a label with one class only, or none, leaves the head out — said in the
    summary, NaN in the output, nothing else changes."""
    features, decisions, _ = cohort
    rng = np.random.default_rng(5)
    labelled = decisions.assign(steroid_sparing=np.where(rng.random(len(decisions)) < 0.1, np.nan,
                                                         (rng.random(len(decisions)) < 0.4).astype(float)))
    fitted = fit_escalate_model(features, labelled, catalog(), small_config())
    out = fitted.predict_frame(features)
    eligible = out[out["eligible"]]
    assert eligible["p_steroid_sparing"].between(0, 1).all()
    assert (eligible["p_steroid_sparing_low"] <= eligible["p_steroid_sparing"]).all()
    assert (eligible["p_steroid_sparing"] <= eligible["p_steroid_sparing_high"]).all()
    one_class = fit_escalate_model(features, decisions.assign(steroid_sparing=0.0), catalog(), small_config())
    assert "steroid_sparing" in one_class.summary["heads_not_fitted"]
    assert one_class.predict_frame(features)["p_steroid_sparing"].isna().all()
    assert model.predict_frame(features)["p_steroid_sparing"].isna().all()  # trained without the label


def test_too_few_decisions_of_any_option_but_continue_is_a_clear_refusal_before_any_fit(cohort):
    """A 60-patient cohort once crashed train (a read-only array, then a pydantic dump): with nothing to compare
    with continuing, the refusal names the table, the counts and the rule."""
    from models.bundle import TrainingDataError

    features, decisions, _ = cohort
    counts = decisions["option_taken"].value_counts()
    others = int(counts.drop(catalog().control).max())
    only_control = small_config(min_rows_per_option=others + 1)
    assert counts[catalog().control] > others  # the synthetic cohort continues most often
    with pytest.raises(TrainingDataError, match=r"table decisions: no option but 'continue' is taken at "
                                                rf"min_rows_per_option={others + 1} decisions \(others: "):
        fit_escalate_model(features, decisions, catalog(), only_control)


def test_the_expected_tis_and_its_interval_stay_on_the_scores_0_to_100_scale(model, cohort):
    """Found by a probe: a regression head extrapolates (a page showed 87 (32–168), and −12521 for a CK of
    4,999,999); the Total Improvement Score has 0–100 points, and so does every prediction of it."""
    features = cohort[0].head(50).copy()
    numeric = [c for c in model.contract.columns if pd.api.types.is_numeric_dtype(features[c])]
    features[numeric] = features[numeric] * 1e4  # far outside anything seen in training
    out = model.predict_arrays(features)
    for key in ("expected_tis", "expected_tis_low", "expected_tis_high"):
        finite = out[key][np.isfinite(out[key])]
        assert len(finite) and finite.min() >= 0.0 and finite.max() <= 100.0, key
