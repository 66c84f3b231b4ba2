"""Unit tests: patient-grouped folds, out-of-fold calibration, ineligible masking and interval coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.calibration import (
    CalibratedLearner,
    mask_ineligible,
    out_of_fold_outcomes,
)
from models.config import CalibrationConfig, LearnerConfig
from models.evaluation import expected_calibration_error
from models.intervals import fit_calibration_bands, interval_coverage
from models.learners import LinearLearner, patient_folds

ARMS = ("continue", "add_ivig")


def miscalibrated_cohort(
    n_patients: int, seed: int
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Steep true risk sigmoid(3 f0 + option): a heavily regularised linear model is badly underconfident."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 3, n_patients)
    g = np.repeat(np.arange(n_patients), per)
    X = pd.DataFrame(rng.normal(size=(len(g), 3)), columns=["f0", "f1", "f2"])
    t = np.where(rng.random(len(g)) < 0.5, *ARMS)
    p = 1 / (1 + np.exp(-(3 * X["f0"].to_numpy() + 0.5 * (t == "add_ivig"))))
    y = (rng.random(len(g)) < p).astype(float)
    return X, t, y, g


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=6, max_size=40),
    n_splits=st.integers(2, 5),
    stratified=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_patient_folds_never_split_a_patient_and_cover_every_row_once(sizes, n_splits, stratified, seed):
    groups = np.repeat([f"P{i}" for i in range(len(sizes))], sizes)
    stratify = np.arange(len(groups)) % 2 if stratified else None
    if len(sizes) < n_splits:
        with pytest.raises(ValueError, match=r"patients for \d folds"):
            patient_folds(groups, n_splits, seed=seed, stratify=stratify)
        return
    folds = patient_folds(groups, n_splits, seed=seed, stratify=stratify)
    assert len(folds) == n_splits
    tested = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(groups)))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == len(groups)


class _Spy(LinearLearner):
    """Records the patients each clone was trained on and the patients it then predicts for."""

    log: list[set] = []

    def fit_prepared(self, data):
        _Spy.log.append(set(data.groups.tolist()))
        return super().fit_prepared(data)


def test_out_of_fold_predictions_come_from_models_that_never_saw_the_patient():
    X, t, y, g = miscalibrated_cohort(200, seed=1)
    _Spy.log = []
    oof = out_of_fold_outcomes(_Spy(LearnerConfig(arms=ARMS)), X, t, y, groups=g, n_folds=4, seed=3)
    assert oof.shape == (len(X), 2) and np.isfinite(oof).all()
    assert len(_Spy.log) == 4
    codes = pd.factorize(pd.Series(g, dtype=object))[0]
    # Every patient is absent from exactly one training fold: the one that predicted them.
    absent = [sum(c not in seen for seen in _Spy.log) for c in np.unique(codes)]
    assert set(absent) == {1}
    in_sample = LinearLearner(LearnerConfig(arms=ARMS)).fit(X, t, y, groups=g).predict_outcomes(X)
    assert not np.allclose(oof, in_sample)


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_calibration_lowers_ece_of_a_miscalibrated_model(method):
    X, t, y, g = miscalibrated_cohort(1500, seed=2)
    X_new, t_new, y_new, _ = miscalibrated_cohort(1500, seed=3)
    base_cfg = LearnerConfig(arms=ARMS, linear_C=0.002)  # shrinks every prediction towards the mean
    raw = LinearLearner(base_cfg).fit(X, t, y, groups=g)
    cal = CalibratedLearner(LinearLearner(base_cfg), CalibrationConfig(method=method, n_folds=4)).fit(
        X, t, y, groups=g
    )
    taken = np.arange(len(X_new)), pd.Index(ARMS).get_indexer(t_new)
    ece_raw = expected_calibration_error(y_new, raw.predict_outcomes(X_new)[taken])
    ece_cal = expected_calibration_error(y_new, cal.predict_outcomes(X_new)[taken])
    assert ece_raw > 0.08  # the base really is miscalibrated
    assert ece_cal < ece_raw / 2
    assert cal.oof_.shape == (len(X), 2)
    assert set(cal.calibrators_) == set(ARMS) and cal.uncalibrated_arms_ == []
    again = CalibratedLearner(LinearLearner(base_cfg), CalibrationConfig(method=method, n_folds=4))
    np.testing.assert_array_equal(
        again.fit(X, t, y, groups=g).predict_outcomes(X_new), cal.predict_outcomes(X_new)
    )


def test_rare_arm_left_uncalibrated_with_a_warning_and_sigmoid_needs_binary():
    X, t, y, g = miscalibrated_cohort(400, seed=4)
    t = t.copy()
    rare = np.flatnonzero(t == "add_ivig")[10:]
    t[rare] = "continue"
    with pytest.warns(UserWarning, match=r"\['add_ivig'\] have fewer than 30 rows"):
        cal = CalibratedLearner(LinearLearner(LearnerConfig(arms=ARMS)),
                                CalibrationConfig(n_folds=2, scope="per_option"))
        cal.fit(X, t, y, groups=g)
    assert cal.calibrators_["add_ivig"] is None and cal.calibrators_["continue"] is not None
    np.testing.assert_allclose(cal.predict_outcomes(X)[:, 1], cal.base_.predict_outcomes(X)[:, 1])
    with pytest.raises(ValueError, match="'sigmoid' needs a binary outcome"):
        CalibratedLearner(LinearLearner(LearnerConfig(arms=ARMS)), CalibrationConfig(method="sigmoid")).fit(
            X, t, y + np.linspace(0, 1, len(y)), groups=g
        )


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_pooled_calibration_never_reorders_a_patients_options(method):
    """The default scope fits one increasing map for every option: the calibrated probabilities rank the options
    exactly as the model does, so calibration cannot change a recommendation (per-option maps can)."""
    X, t, y, g = miscalibrated_cohort(1500, seed=5)
    base_cfg = LearnerConfig(arms=ARMS, linear_C=0.002)
    cal = CalibratedLearner(LinearLearner(base_cfg), CalibrationConfig(method=method, n_folds=3)).fit(
        X, t, y, groups=g)
    raw, shown = cal.base_.predict_outcomes(X), cal.predict_outcomes(X)
    assert len({id(c) for c in cal.calibrators_.values()}) == 1 and cal.uncalibrated_arms_ == []
    assert not np.allclose(raw, shown)  # it does recalibrate
    differ = ~np.isclose(raw[:, 0], raw[:, 1])
    if method == "sigmoid":  # strictly increasing: the order is kept wherever the model's order is strict
        assert (np.argmax(raw, axis=1) == np.argmax(shown, axis=1))[differ].all()
    else:  # isotonic is non-decreasing: it may tie two options, never swap them
        assert (np.sign(raw[:, 1] - raw[:, 0]) * np.sign(shown[:, 1] - shown[:, 0]) >= 0).all()


def test_mask_ineligible_blanks_by_position_and_by_option_name():
    pred = np.array([[0.2, 0.5, 0.7], [0.3, 0.4, 0.1]])
    eligible = np.array([[True, False, True], [True, True, False]])
    masked = mask_ineligible(pred, eligible)
    assert np.isnan(masked[0, 1]) and np.isnan(masked[1, 2])
    assert masked[0, 2] == 0.7 and np.isfinite(masked).sum() == 4
    frame = pd.DataFrame(pred, columns=["continue", "add_ivig", "add_rituximab"], index=["d1", "d2"])
    elig_frame = pd.DataFrame(eligible[:, ::-1], columns=["add_rituximab", "add_ivig", "continue"])
    by_name = mask_ineligible(frame, elig_frame)
    assert list(by_name.index) == ["d1", "d2"]
    np.testing.assert_array_equal(by_name.to_numpy(), masked)
    with pytest.raises(ValueError, match="boolean array of shape"):
        mask_ineligible(pred, eligible.astype(int))


@pytest.mark.parametrize(
    ("lower", "upper", "truth", "expected"),
    [
        ([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.0, 1.0, 1.5], 0.75),  # bounds are inclusive
        ([0.1, np.nan, 0.1], [0.2, 0.2, 0.2], [0.15, 0.15, 0.3], 0.5),  # a masked entry is not counted
        ([0.1, 0.1], [0.2, 0.2], [np.nan, 0.15], 1.0),
    ],
)
def test_interval_coverage_counts_truth_inside_known_intervals(lower, upper, truth, expected):
    assert interval_coverage(np.array(lower), np.array(upper), np.array(truth)) == pytest.approx(expected)


def test_interval_coverage_per_arm_and_errors():
    lower = np.zeros((4, 2))
    upper = np.ones((4, 2))
    truth = np.array([[0.5, 2.0], [0.5, 0.5], [2.0, 0.5], [0.5, np.nan]])
    np.testing.assert_allclose(interval_coverage(lower, upper, truth, per_arm=True), [0.75, 2 / 3])
    with pytest.raises(ValueError, match="shapes differ"):
        interval_coverage(lower, upper, truth[:3])
    with pytest.raises(ValueError, match=r"entry \(0, 0\) has lower > upper"):
        interval_coverage(upper, lower, truth)
    with pytest.raises(ValueError, match="no entry has a finite interval"):
        interval_coverage(lower, upper, np.full((4, 2), np.nan))


def _binary_rows(n_patients: int, seed: int, rows_per: int = 2):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), rows_per).astype(str)
    p_true = rng.uniform(0.1, 0.9, len(groups))
    y = (rng.random(len(groups)) < p_true).astype(float)
    codes = rng.integers(0, 2, len(groups))
    return p_true, y, codes, groups


def test_calibration_bands_grow_with_out_of_fold_bias_and_shrink_with_data():
    """Calibrated predictions get about z x SE; biased ones get the bias on top; more patients, narrower."""
    from models.intervals import fit_calibration_bands

    p_true, y, codes, groups = _binary_rows(2000, 1)
    oof = np.column_stack([p_true, p_true])
    honest = fit_calibration_bands(oof, codes, y, groups, ("continue", "add_ivig"), level=0.9)
    biased = fit_calibration_bands(np.column_stack([p_true, np.clip(p_true - 0.15, 0, 1)]), codes, y, groups,
                                   ("continue", "add_ivig"), level=0.9)
    h_honest, h_biased = honest.summary(), biased.summary()
    assert h_honest["continue"] == pytest.approx(h_biased["continue"])
    assert h_biased["add_ivig"] > h_honest["add_ivig"] + 0.1
    assert 0.05 < h_honest["add_ivig"] < 0.2  # ~1.645 x sqrt(0.2 / 100 patients) plus noise in the bias
    p_small, y_small, c_small, g_small = _binary_rows(200, 2)
    small = fit_calibration_bands(np.column_stack([p_small, p_small]), c_small, y_small, g_small,
                                  ("continue", "add_ivig"), level=0.9)
    assert small.summary()["add_ivig"] > h_honest["add_ivig"]
    narrow = fit_calibration_bands(oof, codes, y, groups, ("continue", "add_ivig"), level=0.5)
    assert narrow.summary()["add_ivig"] < h_honest["add_ivig"]
    half = honest.half_width(np.array([[0.2, 0.8], [0.5, 0.5]]))
    assert half.shape == (2, 2) and (half > 0).all()


def test_calibration_bands_count_patients_not_rows():
    """Ten rows of one patient are not ten independent outcomes: bins use patients for the standard error."""
    from models.intervals import fit_calibration_bands

    p_true, y, codes, groups = _binary_rows(300, 3, rows_per=1)
    few = fit_calibration_bands(np.column_stack([p_true, p_true]), codes, y, groups, ("a", "b"), level=0.9)
    repeated = fit_calibration_bands(np.column_stack([np.repeat(p_true, 5)] * 2), np.repeat(codes, 5),
                                     np.repeat(y, 5), np.repeat(groups, 5), ("a", "b"), level=0.9)
    assert repeated.summary()["b"] == pytest.approx(few.summary()["b"], rel=0.35)


def test_calibration_bands_refuse_an_option_never_taken():
    from models.intervals import fit_calibration_bands

    p_true, y, _, groups = _binary_rows(50, 4)
    with pytest.raises(ValueError, match="'add_ivig' has no out-of-fold rows"):
        fit_calibration_bands(np.column_stack([p_true, p_true]), np.zeros(len(y), int), y, groups,
                              ("continue", "add_ivig"), level=0.9)


def _random_intercept_rows(n_patients: int, sigma: float, seed: int, decisions: int = 3):
    """Decisions of patients with an unrecorded trait u ~ N(0, sigma²) on the logit scale, and the chance a model
    of the record can know: the population average over u at the recorded x."""
    from scipy.special import expit

    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), decisions)
    x = rng.normal(size=len(groups))
    u = np.repeat(rng.normal(0.0, sigma, n_patients), decisions)
    y = (rng.random(len(groups)) < expit(-0.3 + 0.8 * x + u)).astype(float)
    nodes = np.random.default_rng(0).normal(0.0, sigma, 400)
    p_record = expit(-0.3 + 0.8 * x[:, None] + nodes[None, :]).mean(axis=1)
    return p_record, y, groups


@pytest.mark.parametrize(("sigma", "low", "high"), [(0.0, 0.0, 0.25), (0.8, 0.6, 0.95), (1.5, 0.95, 1.5)])
def test_patient_spread_recovers_the_unrecorded_traits_spread(sigma, low, high):
    """The same patient's decisions move together by a trait the record lacks: the within-patient covariance of
    residuals around what the record can know gives its spread (the delta method's first order understates a
    wide one: about 1.1 for 1.5); without such a trait it is about zero."""
    from models.intervals import fit_patient_spread

    p, y, groups = _random_intercept_rows(3000, sigma, seed=11)
    spread = fit_patient_spread(p, y, groups)
    assert low <= spread.sigma_logit <= high
    assert spread.n_pairs == 3000 * 3


def test_patient_spread_needs_pairs_of_one_patients_decisions():
    """One decision per patient shows nothing of a patient's own trait; too few pairs are too noisy to tell."""
    from models.intervals import fit_patient_spread

    p, y, _ = _random_intercept_rows(300, 1.5, seed=12)
    alone = fit_patient_spread(p, y, np.arange(len(y)))
    assert (alone.sigma_logit, alone.n_pairs) == (0.0, 0)
    few = fit_patient_spread(p[:60], y[:60], np.repeat(np.arange(20), 3), min_pairs=100)
    assert (few.sigma_logit, few.n_pairs) == (0.0, 60)
    with_gaps = fit_patient_spread(np.r_[p[:300], np.nan], np.r_[y[:300], 1.0], np.r_[np.repeat(np.arange(100), 3), 0])
    assert with_gaps.n_pairs == 300  # a row without a prediction is no pair


def _scores_with_a_patient_shift(n_patients: int, shift_sd: float, noise_sd: float, seed: int, decisions: int = 3):
    """A score (TIS-like) = what the record predicts + a patient-level shift + decision-level noise."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), decisions)
    expected = rng.uniform(10, 60, len(groups))
    score = expected + np.repeat(rng.normal(0, shift_sd, n_patients), decisions) + rng.normal(0, noise_sd, len(groups))
    return score, expected, groups


@pytest.mark.parametrize("shift_sd", [0.0, 5.0, 10.0])
def test_patient_spread_from_scores_is_the_liability_threshold_spread(shift_sd):
    """A patient shift of the score moves the chance of crossing a threshold by shift / noise on the probit
    scale: sigma_logit = 1.702 x shift_sd / noise_sd, recovered from the residuals alone."""
    from models.intervals import fit_patient_spread_from_scores

    score, expected, groups = _scores_with_a_patient_shift(2000, shift_sd, 18.0, seed=21)
    spread = fit_patient_spread_from_scores(score - expected, groups, source="total_improvement_score")
    assert spread.sigma_logit == pytest.approx(1.702 * shift_sd / 18.0, abs=0.08)
    assert spread.summary()["source"] == "total_improvement_score" and spread.n_pairs == 6000


def test_the_score_and_the_binary_outcome_tell_the_same_spread_the_score_more_steadily():
    """Response = score over a threshold: both estimators target the same spread; at a moderate spread and about a
    thousand pairs (a 3,000-patient cohort's), the score's estimates scatter about half as much over draws."""
    from scipy.stats import norm

    from models.intervals import fit_patient_spread, fit_patient_spread_from_scores

    by_score, by_outcome = [], []
    for seed in range(20):
        score, expected, groups = _scores_with_a_patient_shift(1000, 6.0, 18.0, seed=seed, decisions=2)
        y = (score >= 40).astype(float)
        p_record = norm.cdf((expected - 40) / np.hypot(6.0, 18.0))  # what a model of the record can know
        by_score.append(fit_patient_spread_from_scores(score - expected, groups).sigma_logit)
        by_outcome.append(fit_patient_spread(p_record, y, groups).sigma_logit)
    assert np.mean(by_score) == pytest.approx(1.702 * 6 / 18, abs=0.1)
    assert np.mean(by_outcome) == pytest.approx(1.702 * 6 / 18, abs=0.1)
    assert np.std(by_score) * 1.5 < np.std(by_outcome)


def test_the_spreads_range_holds_the_true_spread_and_reaches_zero_without_one():
    """The model card gives the spread with the 90 % range its sampling error allows (patients as the unit): over
    draws it holds the true spread about 90 % of the time, and where no trait is shared it reaches 0 — the pairs
    cannot tell the spread from none, and a reader can see that."""
    from models.intervals import fit_patient_spread, fit_patient_spread_from_scores

    held, reaches_zero = [], []
    for seed in range(40):
        score, expected, groups = _scores_with_a_patient_shift(1000, 6.0, 18.0, seed=seed, decisions=2)
        low, high = fit_patient_spread_from_scores(score - expected, groups).sigma_range
        held.append(low <= 1.702 * 6 / 18 <= high)
        score, expected, groups = _scores_with_a_patient_shift(1000, 0.0, 18.0, seed=seed, decisions=2)
        reaches_zero.append(fit_patient_spread_from_scores(score - expected, groups).sigma_range[0] == 0.0)
    assert 0.78 <= np.mean(held) <= 1.0
    assert np.mean(reaches_zero) >= 0.85
    p, y, groups = _random_intercept_rows(3000, 0.8, seed=11)
    spread = fit_patient_spread(p, y, groups)
    low, high = spread.sigma_range
    assert 0 < low < spread.sigma_logit < high
    assert spread.summary()["sigma_logit_low"] == round(low, 4)


def test_patient_spread_from_scores_needs_pairs():
    from models.intervals import fit_patient_spread_from_scores

    score, expected, _ = _scores_with_a_patient_shift(50, 10.0, 18.0, seed=3)
    alone = fit_patient_spread_from_scores(score - expected, np.arange(len(score)))
    assert (alone.sigma_logit, alone.n_pairs) == (0.0, 0)


def test_patient_spread_half_width_is_widest_at_even_odds():
    from models.intervals import PatientSpread

    half = PatientSpread(1.0, 500).half_width(np.array([[0.0, 0.1, 0.5, 0.9, 1.0]]), z=1.645)
    np.testing.assert_allclose(half, [[0.0, 1.645 * 0.09, 1.645 * 0.25, 1.645 * 0.09, 0.0]])


@pytest.mark.parametrize("extra", [0.0, 0.05, 0.3])
def test_widen_interval_adds_the_term_in_quadrature_within_0_1(extra):
    from models.intervals import widen_interval

    point = np.array([[0.5, 0.02, 0.97]])
    low, high = point - np.array([[0.04, 0.01, 0.03]]), point + np.array([[0.03, 0.02, 0.01]])
    lo, hi = widen_interval(point, low, high, np.full_like(point, extra))
    assert (lo <= low + 1e-12).all() and (hi >= high - 1e-12).all()
    assert (lo >= 0).all() and (hi <= 1).all() and (lo <= point).all() and (point <= hi).all()
    np.testing.assert_allclose(point[0, 0] - lo[0, 0], np.hypot(0.04, extra))
    np.testing.assert_allclose(hi[0, 0] - point[0, 0], np.hypot(0.03, extra))


def test_a_calibration_band_of_an_unbiased_bin_is_the_two_sided_quantile_times_its_se():
    """100 patients, p = 0.5, half respond: no bias, SE sqrt(0.25 / 100) = 0.05, so a 90 % band is 1.645 x 0.05 (a
    one-sided quantile, 1.28, would make every interval too narrow)."""
    n = 100
    bands = fit_calibration_bands(np.full((n, 1), 0.5), np.zeros(n, int), np.r_[np.ones(50), np.zeros(50)],
                                  np.arange(n), ("continue",), level=0.9, min_bin_patients=1000)
    assert bands.half[0][0] == pytest.approx(1.6449 * 0.05, rel=1e-3)
