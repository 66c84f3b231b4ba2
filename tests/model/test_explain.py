"""Behaviour of the SHAP explanations: exact, additive, grouped into clinical features, in plain words."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import shap
import xgboost as xgb

from models import explain as E
from models.calibration import CalibratedLearner
from models.config import BoosterConfig, CalibrationConfig, LearnerConfig
from models.learners import make_learner

ARMS = ("continue", "add_ivig", "add_jak_inhibitor")


def _cohort(n: int = 400, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame]:
    """Synthetic decisions with a known structure: active skin disease lowers response, IVIG helps,
    a JAK inhibitor helps mainly anti-MDA5 patients; one-hot diagnosis, missing MMT-8, IVIG dose fraction."""
    rng = np.random.default_rng(seed)
    juvenile = rng.random(n) < 0.3
    X = pd.DataFrame(
        {
            "cdasi_activity_latest": rng.uniform(0, 60, n),
            "mmt8_latest": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(40, 100, n)),
            "ivig_dose_fraction": rng.uniform(0.2, 1.2, n),
            "diagnosis_adult_dermatomyositis": (~juvenile).astype(float),
            "diagnosis_juvenile_dermatomyositis": juvenile.astype(float),
            "anti_mda5": (rng.random(n) < 0.4).astype(float),
        }
    )
    t = rng.choice(ARMS, n)
    logit = (
        -0.3
        - 0.05 * (X["cdasi_activity_latest"] - 30)
        + (t == "add_ivig") * 1.0
        + (t == "add_jak_inhibitor") * (3.0 * X["anti_mda5"] - 0.5)
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    dictionary = pd.DataFrame(
        {
            "feature": list(X.columns),
            "family": ["disease_activity", "disease_activity", "dose_optimisation", "patient", "patient", "patient"],
            "clinical_feature": ["CDASI activity", "MMT-8 muscle strength", "IVIG", "diagnosis", "diagnosis",
                                 "myositis antibodies"],
            "label": ["latest CDASI activity", "latest MMT-8", "IVIG dose as a fraction of target",
                      "adult dermatomyositis", "juvenile dermatomyositis", "anti-MDA5"],
            "unit": ["score (0-100)", "% of scale maximum", "fraction of target", "0/1", "0/1", "0/1"],
            "description": [""] * 6,
            "target_text": [None, None, "2 g/kg every 4 weeks", None, None, None],
        }
    )
    return X, t, y, dictionary


CFG = LearnerConfig(arms=ARMS, booster=BoosterConfig(n_estimators=30, max_depth=3, n_jobs=1), cv_folds=2)


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame]:
    return _cohort()


@pytest.fixture(scope="module")
def fitted(cohort) -> dict[str, object]:
    X, t, y, _ = cohort
    groups = np.arange(len(X)) // 2
    return {kind: make_learner(kind, CFG).fit(X, t, y, groups=groups) for kind in ("t", "s", "dr", "linear")}


@pytest.mark.parametrize("kind", ["t", "s", "dr", "linear"])
def test_every_explained_row_is_additive_and_matches_the_prediction(kind, fitted, cohort):
    X = cohort[0]
    learner = fitted[kind]
    ex = E.explain(X, learner, safety=learner)
    predicted = learner.predict_outcomes(X)
    assert {tg for tg, _ in ex.items} == {"response", "contrast", "safety", "safety_contrast"}
    for (target, option), s in ex.items.items():
        # base value + sum of contributions = the model's output, for every row
        np.testing.assert_allclose(s.base + s.values.sum(axis=1), s.output, atol=1e-4)
        if target == "response":
            # ... and that output is the prediction the learner makes (margin -> probability)
            np.testing.assert_allclose(s.probability, predicted[:, ARMS.index(option)], atol=1e-5)
            # probability points add up to the shown probability too
            np.testing.assert_allclose(s.probability_base + s.points().sum(axis=1), s.probability, atol=1e-9)
    for option in ARMS[1:]:
        con = ex.get("contrast", option)
        j = ARMS.index(option)
        shown_effect = predicted[:, j] - predicted[:, 0]
        if con.scale == "log_odds":
            np.testing.assert_allclose(con.probability, shown_effect, atol=1e-5)
            continue
        # DR: the contrast explains the option's own effect model (probability scale) ...
        np.testing.assert_allclose(con.output, learner.effect_models_[option].predict(X), atol=1e-5)
        # ... which is the shown difference wherever neither probability was clipped to [0, 1]
        raw = learner._predict_outcomes(learner._frame(X))
        inside = ((raw[:, [0, j]] > 0) & (raw[:, [0, j]] < 1)).all(axis=1)
        assert inside.mean() > 0.5
        np.testing.assert_allclose(con.output[inside], shown_effect[inside], atol=1e-5)


@pytest.mark.parametrize("kind", ["t", "s"])
def test_contrast_is_additive_on_the_margin_difference(kind, fitted, cohort):
    X = cohort[0]
    learner = fitted[kind]
    ex = E.explain(X, learner)
    for option in ARMS[1:]:
        if kind == "t":
            margin = learner.models_[option].predict(X, output_margin=True) - learner.models_["continue"].predict(
                X, output_margin=True)
        else:
            margin = learner.model_.predict(learner.design(X, option), output_margin=True) - learner.model_.predict(
                learner.design(X, "continue"), output_margin=True)
        con = ex.get("contrast", option)
        np.testing.assert_allclose(con.base + con.values.sum(axis=1), margin, atol=1e-4)


def test_native_tree_shap_agrees_with_shap_tree_explainer(fitted, cohort):
    X = cohort[0]
    model = fitted["t"].models_["add_jak_inhibitor"]
    values, base = E.tree_shap(model, X)
    reference = shap.TreeExplainer(model).shap_values(X)
    np.testing.assert_allclose(values, reference, atol=1e-5)
    margin = model.predict(X, output_margin=True)
    np.testing.assert_allclose(base + values.sum(axis=1), margin, atol=1e-4)


def test_dr_contrast_is_the_effect_models_tree_shap(fitted, cohort):
    X = cohort[0]
    dr = fitted["dr"]
    con = E.explain(X, dr).get("contrast", "add_ivig")
    assert con.scale == "probability"
    np.testing.assert_allclose(con.output, dr.effect_models_["add_ivig"].predict(X), atol=1e-5)


def test_linear_shap_is_exact_coefficient_times_centred_value():
    z = np.array([[1.0, -2.0], [0.5, 0.0]])
    values, base = E.linear_shap(np.array([2.0, 3.0]), 1.0, z, z_mean=np.array([0.5, -1.0]))
    np.testing.assert_allclose(values, [[1.0, -3.0], [0.0, 3.0]])
    np.testing.assert_allclose(base, [1.0 + 1.0 - 3.0] * 2)
    np.testing.assert_allclose(base + values.sum(1), z @ [2.0, 3.0] + 1.0)


def test_calibrated_learner_explains_margin_and_calibrated_probability(cohort):
    X, t, y, _ = cohort
    base = make_learner("t", CFG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cal = CalibratedLearner(base, CalibrationConfig(n_folds=3)).fit(X, t, y, groups=np.arange(len(X)) // 2)
    ex = E.explain(X, cal)
    predicted = cal.predict_outcomes(X)
    for option in ARMS:
        s = ex.get("response", option)
        np.testing.assert_allclose(s.base + s.values.sum(1), cal.base_.models_[option].predict(
            X, output_margin=True), atol=1e-4)  # SHAP: the uncalibrated margin, exactly
        np.testing.assert_allclose(s.probability, predicted[:, ARMS.index(option)], atol=1e-5)
        np.testing.assert_allclose(s.probability_base + s.points().sum(1), s.probability, atol=1e-9)
        assert "uncalibrated margin" in s.note
    assert any("uncalibrated margin" in n for n in ex.notes)


def test_groups_one_hot_columns_into_their_clinical_feature(fitted, cohort):
    X, _, _, dictionary = cohort
    ex = E.explain(X, fitted["t"])
    s = ex.get("response", "continue")
    groups = E.feature_groups(s.columns, dictionary)
    assert groups.groups.count("diagnosis") == 1
    grouped = groups.group(s.values)
    assert grouped.shape == (len(X), 5)
    np.testing.assert_allclose(grouped.sum(1), s.values.sum(1), atol=1e-9)  # grouping keeps additivity
    diag = groups.groups.index("diagnosis")
    np.testing.assert_allclose(grouped[:, diag], s.values[:, 3] + s.values[:, 4])


def test_reasons_read_like_a_clinician_with_value_unit_and_points(fitted, cohort):
    X, _, _, dictionary = cohort
    ex = E.explain(X, fitted["t"])
    reasons = E.reasons_frame(ex, X, dictionary, k=3)
    assert len(reasons) == len(X) * len(ARMS)
    assert list(reasons.columns[:2]) == ["row", "option"]
    assert set(E.reason_columns(3)) <= set(reasons.columns)
    ivig_texts = reasons.filter(like="_text").stack()
    ivig_texts = ivig_texts[ivig_texts.str.startswith("IVIG dose =")]
    assert len(ivig_texts)
    assert ivig_texts.str.contains(r"^IVIG dose = \d+ % of target 2 g/kg every 4 weeks → [+−]", regex=True).all()
    cdasi = reasons.filter(like="_text").stack()
    cdasi = cdasi[cdasi.str.startswith("latest CDASI activity")]
    assert cdasi.str.contains(r"= [\d.]+ score \(0-100\) → [+−]", regex=True).all()
    # the contributions shown are the probability points of the grouped SHAP values, largest first
    row0 = reasons[(reasons.row == 0) & (reasons.option == "add_ivig")].iloc[0]
    pts = E.FeatureGroups.group(E.feature_groups(ex.get("response", "add_ivig").columns, dictionary),
                                ex.get("response", "add_ivig").points()[:1])[0]
    assert row0["reason_1_contribution"] == pytest.approx(pts[np.argmax(np.abs(pts))])
    assert abs(row0["reason_1_contribution"]) >= abs(row0["reason_2_contribution"]) >= abs(row0["reason_3_contribution"])
    # continue has no contrast with itself
    assert reasons.loc[reasons.option == "continue", "contrast_reason_1_text"].isna().all()
    assert reasons.loc[reasons.option == "add_ivig", "contrast_reason_1_text"].str.endswith("vs continue").all()


def test_contrast_reasons_find_the_known_effect_modifier(fitted, cohort):
    """A JAK inhibitor helps anti-MDA5 patients (by construction): that is the top reason it beats continuing."""
    X, _, _, dictionary = cohort
    for kind in ("t", "linear"):  # (a small S-learner shrinks interactions with the option toward zero)
        reasons = E.reasons_frame(E.explain(X, fitted[kind]), X, dictionary, k=1)
        jak = reasons[reasons.option == "add_jak_inhibitor"]
        top = (jak["contrast_reason_1_feature"] == "myositis antibodies").to_numpy()
        assert top.mean() > 0.8, (kind, top.mean())
        mda5 = X["anti_mda5"].to_numpy()[jak["row"].to_numpy()] == 1
        contribution = jak["contrast_reason_1_contribution"].to_numpy()
        assert (contribution[top & mda5] > 0).mean() > 0.85, kind  # anti-MDA5 positive: a reason for the JAK
        assert (contribution[top & ~mda5] < 0).mean() > 0.85, kind  # negative: a reason against it


def test_ineligible_options_have_no_reasons(fitted, cohort):
    X, _, _, dictionary = cohort
    eligible = pd.DataFrame({o: True for o in ARMS}, index=X.index)
    eligible.loc[::2, "add_ivig"] = False
    reasons = E.reasons_frame(E.explain(X, fitted["t"]), X, dictionary, k=2, eligible=eligible)
    ivig = reasons[reasons.option == "add_ivig"].set_index("row")
    assert ivig.loc[::2, "reason_1_text"].isna().all() and ivig.loc[::2, "reason_1_contribution"].isna().all()
    assert ivig.loc[1::2, "reason_1_text"].notna().all()


def test_dictionary_gaps_are_clear_errors(fitted, cohort):
    X, _, _, dictionary = cohort
    ex = E.explain(X, fitted["t"])
    with pytest.raises(ValueError, match=r"no entry for model column\(s\) \['anti_mda5'\]"):
        E.reasons_frame(ex, X, dictionary[dictionary.feature != "anti_mda5"], k=2)
    with pytest.raises(ValueError, match="missing column"):
        E.reasons_frame(ex, X, dictionary.drop(columns="clinical_feature"), k=2)
    with pytest.raises(ValueError, match="not arms"):
        E.explain_learner(fitted["t"], X, options=["add_rituximab"])


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0.55, "fraction of target 2 g/kg every 4 weeks", "55 % of target 2 g/kg every 4 weeks"),
        (1.0, "0/1", "yes"),
        (0.0, "0/1", "no"),
        (np.nan, "cm (0-10)", "not recorded"),
        (28.0, "score (0-100)", "28 score (0-100)"),
        (6.25, "cm (0-10)", "6.25 cm (0-10)"),
        (1450.0, "U/L", "1450 U/L"),
        (6.0, "count", "6"),
        (1.0, "count (days with an event)", "1 (days with an event)"),
    ],
)
def test_values_are_formatted_as_clinicians_read_them(value, unit, text):
    assert E.format_value(np.array([value]), np.array([unit], dtype=object))[0] == text


@pytest.mark.parametrize(("points", "text"), [(0.06, "+6 in 100"), (-0.14, "−14 in 100"), (0.003, "+<1 in 100")])
def test_points_are_absolute_in_100(points, text):
    assert E.format_points(np.array([points]))[0] == text


def test_bundle_reasons_align_with_predict_frame():
    from models.bundle import BundleConfig, fit_escalate_model
    from models.config import IntervalConfig
    from tests.model.synthetic_escalate import catalog, make_cohort

    features, decisions, _ = make_cohort(n_patients=80)
    cfg = BundleConfig(booster=BoosterConfig(n_estimators=10, max_depth=2, n_jobs=1), intervals=IntervalConfig(n_boot=2),
                       calibration=CalibrationConfig(n_folds=2), cv_folds=2, min_rows_per_option=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fit_escalate_model(features, decisions, catalog(), cfg)
    cols = list(model.contract.columns)
    dictionary = pd.DataFrame({"feature": cols, "clinical_feature": cols, "label": cols, "unit": ""})
    head = features.head(5)
    pred = model.predict_frame(head)
    reasons = E.model_reasons(model, head, dictionary, k=2)
    merged = pred.merge(reasons, on=["row", "option"], how="left", validate="one_to_one")
    assert len(merged) == len(pred)
    assert merged.loc[merged.eligible, "reason_1_text"].notna().all()
    assert merged.loc[~merged.eligible, "reason_1_text"].isna().all()
    ex = E.explain_model(model, head)
    for option in model.arms:
        s = ex.get("response", option)
        shown = pred.loc[pred.option == option, "p_response"].to_numpy()
        ok = ~np.isnan(shown)
        np.testing.assert_allclose((s.probability_base + s.points().sum(1))[ok], shown[ok], atol=1e-6)


def test_tree_shap_rejects_multiclass_models():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=60)})
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(X, np.arange(60) % 3)
    with pytest.raises(ValueError, match="multi-class"):
        E.tree_shap(model, X)


def test_the_s_learners_option_group_is_never_a_reason(fitted, cohort):
    """The S-learner's option columns are the option's average effect, not a fact of this patient: they never
    appear among the reasons, in the batch output and the page alike, even when every reason is asked for."""
    X, _, _, dictionary = cohort
    reasons = E.reasons_frame(E.explain(X, fitted["s"]), X, dictionary, k=len(X.columns) + 1)
    for prefix in ("reason", "contrast_reason"):
        named = reasons.filter(regex=f"^{prefix}_\\d+_feature$").to_numpy()
        assert named.size and not (named == E.OPTION_GROUP).any()
        texts = reasons.filter(regex=f"^{prefix}_\\d+_text$").to_numpy().ravel()
        assert not any(str(t).startswith("the option itself") for t in texts)


@pytest.mark.parametrize("kind", ["t", "s", "dr", "linear"])
def test_batch_reasons_are_the_per_option_reasons(kind, fitted, cohort):
    """The batch table (facts worded once for all options) says, row by row, exactly what each option's own
    explanation says: no fact is attached to another row, option or target."""
    X, _, _, dictionary = cohort
    ex = E.explain(X, fitted[kind], safety=fitted["s"])
    eligible = np.ones((len(X), len(ARMS)), dtype=bool)
    eligible[1::3, 2] = False
    reasons = E.reasons_frame(ex, X, dictionary, k=2, eligible=eligible)
    for j, option in enumerate(ARMS):
        mine = reasons[reasons.option == option].set_index("row")
        resp = ex.get("response", option)
        alone = E.top_reasons(resp, X, E.feature_groups(resp.columns, dictionary), 2)
        on = eligible[:, j]
        pd.testing.assert_frame_equal(
            mine.loc[on, alone.columns], alone[on].rename_axis("row"), check_dtype=False
        )
        assert mine.loc[~on, [*E.reason_columns(2), *E.reason_columns(2, "contrast_reason")]].isna().all().all()
        con = ex.get("contrast", option)
        if con is not None:
            alone_c = E.top_reasons(con, X, E.feature_groups(con.columns, dictionary), 2,
                                    points=E.contrast_points(con), prefix="contrast_reason", suffix=" vs continue")
            pd.testing.assert_frame_equal(
                mine.loc[on, alone_c.columns], alone_c[on].rename_axis("row"), check_dtype=False
            )


def _hand_shap(values: np.ndarray, columns: tuple[str, ...], scale: str = "value") -> E.Shap:
    base = np.zeros(len(values))
    return E.Shap("response", "add_ivig", scale, columns, values, base, values.sum(axis=1))


def test_reasons_rank_by_size_ties_to_the_earlier_feature_and_show_the_member_that_moved_most():
    columns = ("cdasi", "mmt8", "ck_latest", "ck_slope", "anti_mda5")
    dictionary = pd.DataFrame({
        "feature": list(columns),
        "clinical_feature": ["CDASI", "MMT-8", "CK", "CK", "antibodies"],
        "label": ["CDASI activity", "MMT-8", "latest CK", "CK slope", "anti-MDA5"],
        "unit": ["score (0-100)", "score (0-150)", "U/L", "U/L per month", "0/1"],
    })
    groups = E.feature_groups(columns, dictionary)
    X = pd.DataFrame([[28.0, 120.0, 1450.0, -3.5, 1.0], [12.0, np.nan, 300.0, 20.0, 0.0]], columns=list(columns))
    values = np.array([
        [0.5, -0.5, 0.1, -0.3, 0.0],  # CDASI and MMT-8 tie at |0.5|: CDASI (earlier) first; CK nets -0.2
        [0.0, 1.5, 0.05, 0.2, -0.25],  # CK (+0.25) and anti-MDA5 (-0.25) tie: CK (earlier) first
    ])
    out = E.top_reasons(_hand_shap(values, columns), X, groups, 4)
    assert out.loc[0, ["reason_1_feature", "reason_2_feature", "reason_3_feature", "reason_4_feature"]].tolist() == [
        "CDASI", "MMT-8", "CK", "antibodies"]
    assert out.loc[0, "reason_3_text"] == "CK slope = -3.5 U/L per month → -0.2"  # slope moved CK most
    assert out.loc[0, "reason_4_text"] == "anti-MDA5 = yes → +0"
    assert out.loc[1, ["reason_1_feature", "reason_2_feature", "reason_3_feature", "reason_4_feature"]].tolist() == [
        "MMT-8", "CK", "antibodies", "CDASI"]
    assert out.loc[1, "reason_1_text"] == "MMT-8 = not recorded → +1.5"
    assert out.loc[1, "reason_2_text"] == "CK slope = 20 U/L per month → +0.25"
    assert out.loc[1, "reason_3_text"] == "anti-MDA5 = no → -0.25"
    assert out.loc[1, "reason_4_contribution"] == 0.0


def test_a_reason_shows_a_recorded_fact_of_its_feature_before_a_missing_one():
    """Trees split on a missing value (months on abatacept for a patient not on it): the reason names the recorded
    fact of the same feature ("on abatacept = no"), and only a feature with nothing recorded reads 'not recorded'."""
    columns = ("on_abatacept", "abatacept_months_on", "cdasi_latest", "cdasi_days_since")
    dictionary = pd.DataFrame({
        "feature": list(columns),
        "clinical_feature": ["abatacept", "abatacept", "CDASI", "CDASI"],
        "label": ["on abatacept", "months on abatacept", "latest CDASI", "days since CDASI"],
        "unit": ["0/1", "months", "score (0-100)", "days"],
    })
    groups = E.feature_groups(columns, dictionary)
    X = pd.DataFrame([[0.0, np.nan, 20.0, 30.0], [1.0, 4.0, np.nan, np.nan]], columns=list(columns))
    values = np.array([[0.01, 0.06, 0.0, 0.02], [0.0, 0.01, 0.03, 0.0]])
    out = E.top_reasons(_hand_shap(values, columns), X, groups, 2)
    assert out.loc[0, "reason_1_text"] == "on abatacept = no → +0.07"   # the group's sum, the recorded member
    assert out.loc[0, "reason_2_text"] == "days since CDASI = 30 days → +0.02"
    assert out.loc[1, "reason_1_text"] == "latest CDASI = not recorded → +0.03"  # nothing of CDASI is recorded

def test_values_in_one_call_are_each_worded_by_their_own_unit():
    values = np.array([0.55, 1.0, 0.0, np.nan, 28.0, 6.25, 1450.0, 28.0, 0.55])
    units = np.array(["fraction of target", "0/1", "0/1", "cm (0-10)", "score (0-100)", "cm (0-10)", "U/L", "",
                      "U/L"], dtype=object)
    assert E.format_value(values, units).tolist() == [
        "55 % of target", "yes", "no", "not recorded", "28 score (0-100)", "6.25 cm (0-10)", "1450 U/L", "28",
        "0.55 U/L"]


def test_explanations_of_some_rows_are_those_rows_explanations(fitted, cohort):
    """`Explanations.rows` (one page's share of a batch) keeps every target and option, each row's numbers as
    they were, in the order asked."""
    model, X = fitted["s"], cohort[0]
    ex = E.explain(X, model)
    part = ex.rows([3, 0])
    assert part.n_rows == 2 and part.items.keys() == ex.items.keys() and part.arms == ex.arms
    for key, s in ex.items.items():
        got = part.items[key]
        np.testing.assert_array_equal(got.values, s.values[[3, 0]])
        np.testing.assert_array_equal(got.output, s.output[[3, 0]])
        np.testing.assert_array_equal(got.base, s.base[[3, 0]])
        if s.probability is not None:
            np.testing.assert_array_equal(got.probability, s.probability[[3, 0]])
    with pytest.raises(ValueError, match="not a mask"):
        ex.rows(np.arange(len(X)) < 2)
