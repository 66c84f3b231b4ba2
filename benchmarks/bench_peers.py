"""The shipped model, our learners and peer libraries on the same simulated cohorts, over several seeds (issue 14:
"benchmarks that would convince a sceptic").

Run (EconML/CausalML live in the benchmark environment `.venv-bench`, never the runtime one; `make bench` builds it):

    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/bench_peers.py [--seeds 2027 9001 4242] [--patients 3000]
        [--config configs/simulator-easy.yaml] [--skip NAME ...] [--only NAME ...]
    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/bench_peers.py --learning-curve [--sizes 1000 3000 10000 30000]
        [--eval-patients 3000] [--seeds ...]

Each seed simulates a cohort with `simulator.simulate_cohort` (observational mode; `--config` for another simulator
settings file), runs the project's data contract check and feature pipeline on it, splits patients with params.yaml
`split:` (its seed = the bench seed) and evaluates on the held-out decisions matched to the simulator's truth.
Rows:

- `shipped model`: `models.bundle.fit_escalate_model` with params.yaml `train:` (seeds = the bench seed) — the
  calibrated bundle `escalate train` registers; its recommendation is what it ranks by (argmax of `p_response`
  over the options it and the evaluation call eligible), fit time = the whole bundle (three heads, calibration,
  bootstrap intervals, propensity);
- `escalate <kind>`: every learner of `models.learners.LEARNERS` for a binary outcome through
  `make_learner(kind, LearnerConfig)`, recommending the argmax of its predicted effect vs continue among eligible options;
- peers: EconML CausalForestDML, DRLearner and XLearner; CausalML BaseSClassifier, BaseTClassifier,
  BaseXClassifier and BaseDRLearner — a peer that raises, is not installed or predicts NaN is a row "failed: why";
- baselines: the guideline list (`OptionCatalog.guideline`, configs/options.yaml: first eligible option in that
  order) and always continue.

Same tuning budget: every tree model, ours and the peers' nuisance/outcome/effect models, uses params.yaml
`train.booster` (printed); patient-grouped cross-fitting uses `train.cv_folds` folds and propensities the same
floor `train.propensity.clip`. The causal forest's own forest keeps EconML's defaults (100 honest trees).

Metrics (mean ± standard error over seeds): regret against the oracle's best eligible option (true response
probability), √PEHE of option-vs-continue effects (pooled over eligible option cells), share of suboptimal
recommendations, fit seconds (fit + predicting the evaluation rows) and fit time as a ratio to the fastest of our
learners measured in the same process on the same seed.

`--learning-curve`: regret of the shipped model and the guideline list, and the shipped model's mean per-option AUROC
beside the oracle's, against the number of training patients
(`--sizes`); each seed trains on a cohort of that many patients (all of them) and is evaluated on the same
independent cohort of `--eval-patients` patients (simulated with seed + 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
import yaml
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.impute import SimpleImputer
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import LabelEncoder

warnings.filterwarnings("ignore", category=FutureWarning, module="pyspark")  # imported by a peer, unused here
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models import evaluation as ev  # noqa: E402
from models.config import BoosterConfig, LearnerConfig  # noqa: E402
from models.learners import LEARNERS, make_learner  # noqa: E402
from models.response import response_margin, response_of  # noqa: E402
from pipeline.settings import Settings, settings_from  # noqa: E402

#: seeds never used in development (params.yaml's seed is the development seed and is refused).
DEFAULT_SEEDS = (2027, 9001, 4242)
METRICS = ("regret", "sqrt_pehe", "share_suboptimal", "fit_s", "fit_vs_fastest")


# ------------------------------------------------------------------------------------------------------------
# Data


def seeded_settings(params: Path, seed: int) -> Settings:
    """params.yaml with its top-level seed replaced by `seed` (so every derived seed — split, boosters,
    calibration, bootstrap — follows the bench seed)."""
    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    return settings_from({**raw, "seed": int(seed)}, source=f"{params} (seed {seed})")


@dataclass
class Cohort:
    """A simulated cohort after the project's contract check and feature pipeline, with the simulator's truth."""

    features: pd.DataFrame
    decisions: pd.DataFrame
    truth_decisions: pd.DataFrame
    truth_outcomes: pd.DataFrame
    catalog: Any
    n_patients: int
    seed: int


def simulate(settings: Settings, n_patients: int, seed: int, config_file: Path | None) -> Cohort:
    """Simulate `n_patients` and build decisions and point-in-time features exactly as `escalate simulate` +
    `escalate features` would."""
    from features.contract import MeasureCatalog, check
    from pipeline.config import load_reference
    from pipeline.features import build_training_set
    from pipeline.simulate import TABLES, build_inputs
    from simulator.engine import simulate_cohort

    config, vocabulary, catalog = build_inputs(config_file)
    today = str(settings.simulate.today or settings.data.today)
    cohort = simulate_cohort(n_patients, seed, config, vocabulary, catalog, today, "observational")
    measures = MeasureCatalog.from_config(load_reference("measures"))
    result = check({name: getattr(cohort, name) for name in TABLES}, vocabulary, measures, pd.Timestamp(today))
    if len(result.rejected_patients):
        print(f"  note: {len(result.rejected_patients)} simulated patient(s) rejected by the data contract")
    built = build_training_set(result.normalised, vocabulary, catalog, settings.features, settings.labels, today)
    decisions, features = built["decisions"].reset_index(drop=True), built["features"].reset_index(drop=True)
    if not (decisions["decision_id"].to_numpy() == features["decision_id"].to_numpy()).all():
        raise ValueError("decisions and features: rows must align one to one on decision_id (rule: same order)")
    return Cohort(features, decisions, cohort.decisions, cohort.outcomes, catalog, n_patients, seed)


def bench_data(train: Cohort, train_rows: np.ndarray, test: Cohort, test_rows: np.ndarray) -> dict[str, Any]:
    """Training rows (labelled decisions of `train_rows`) and evaluation rows (decisions of `test_rows` matched to
    the simulator's truth), with the options of the catalogue in display order (continue first)."""
    from models.bundle import feature_columns

    catalog = train.catalog
    arms = tuple(a for a in catalog.names if a in set(train.decisions["option_taken"]))
    if arms[0] != catalog.control:
        raise ValueError(f"options: control {catalog.control!r} must come first and be taken (rule: control arm)")
    cols = feature_columns(train.features)
    y_all = train.decisions["response"].to_numpy(dtype=float)
    taken_all = np.asarray(train.decisions["option_taken"].astype(str), dtype=str)  # '<U' (EconML rejects object)
    fit = train_rows & np.isfinite(y_all) & np.isin(taken_all, arms)
    taken = taken_all[fit]
    codes = pd.Index(arms).get_indexer(taken)
    elig_train = train.decisions.loc[fit, [f"eligible_{a}" for a in arms]].fillna(False).astype(bool).to_numpy()
    elig_train[np.arange(len(codes)), codes] = True  # what was done was possible (as fit_escalate_model does)
    elig_train[:, 0] = True

    idx = np.flatnonzero(test_rows)
    pos = ev.match_truth(test.features.iloc[idx], test.truth_decisions, test.decisions["date"].iloc[idx])
    unmatched = int((pos < 0).sum())
    hit = idx[pos >= 0]
    ids = test.truth_decisions["decision_id"].to_numpy()[pos[pos >= 0]]
    outcomes = test.truth_outcomes[test.truth_outcomes["option"].isin(arms)]
    true_p = ev.option_matrix(outcomes, "p_response", arms).reindex(ids).to_numpy(dtype=float)
    true_tis = ev.option_matrix(outcomes, "tis", arms).reindex(ids).to_numpy(dtype=float)
    true_elig = ev.option_matrix(outcomes, "eligible", arms).reindex(ids).fillna(False).astype(bool).to_numpy()
    derived = test.decisions.iloc[hit][[f"eligible_{a}" for a in arms]].fillna(False).astype(bool).to_numpy()
    eligible = derived & true_elig & np.isfinite(true_p)
    eligible[:, 0] = True  # continuing is always possible
    n_train_patients = int(pd.Series(train.decisions["patient_id"].to_numpy()[fit]).nunique())
    return {
        "arms": arms,
        "guideline": tuple(catalog.guideline),
        "catalog": catalog,
        "train_features": train.features.loc[train_rows].reset_index(drop=True),
        "train_decisions": train.decisions.loc[train_rows].reset_index(drop=True),
        "X": train.features.loc[fit, cols].astype(float).reset_index(drop=True),
        "t": taken,
        "y": y_all[fit],
        "tis": train.decisions["total_improvement_score"].to_numpy(dtype=float)[fit],
        "groups": train.decisions["patient_id"].to_numpy()[fit].astype(str),
        "eligible_train": elig_train,
        "eval_features": test.features.iloc[hit].reset_index(drop=True),
        "X_eval": test.features.iloc[hit][cols].astype(float).reset_index(drop=True),
        "truth": np.nan_to_num(true_p, nan=0.0),
        "true_tis": true_tis,
        "eligible": eligible,
        "describe": (
            f"{len(cols)} features; train {len(taken)} labelled decisions of {n_train_patients} patients; "
            f"evaluation {len(hit)} decisions with truth"
            + (f" ({unmatched} without truth left out)" if unmatched else "")
        ),
    }


# ------------------------------------------------------------------------------------------------------------
# Metrics and policies


def scores(name: str, effects: np.ndarray | None, recommended: np.ndarray, data: dict[str, Any],
           seconds: float) -> dict[str, object]:
    """√PEHE of option-vs-continue effects pooled over eligible option cells (None: a policy without effects),
    regret and share suboptimal of `recommended` (option index per evaluation row) against the oracle."""
    truth, eligible = data["truth"], data["eligible"]
    lost = ev.regret(truth, eligible, recommended)
    pehe = float("nan")
    if effects is not None:
        use = eligible.copy()
        use[:, 0] = False
        err = (effects - effects[:, [0]]) - (truth - truth[:, [0]])
        pehe = float(np.sqrt(np.mean(err[use] ** 2)))
    return {"learner": name, "status": "ok", "regret": lost.regret, "sqrt_pehe": pehe,
            "share_suboptimal": lost.share_suboptimal, "fit_s": seconds}


def argmax_eligible(values: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Recommendation: the eligible option with the highest value (ties: earliest in display order)."""
    return ev.recommended_policy(np.where(eligible, values, -np.inf), eligible)


def guideline_pick(data: dict[str, Any]) -> np.ndarray:
    """The guideline list's pick per evaluation row: `features.guideline.guideline_choice`, the one definition the
    simulator card and `escalate evaluate` use (first eligible option in configs/options.yaml's order)."""
    from features.guideline import guideline_choice

    arms = list(data["arms"])
    return np.asarray(guideline_choice(data["eligible"], arms, data["guideline"], arms[0]), dtype=np.intp)


# ------------------------------------------------------------------------------------------------------------
# Runners: each fit(data) -> (effects or None, recommended option index per evaluation row)

Runner = Callable[[dict[str, Any]], tuple[np.ndarray | None, np.ndarray]]


def shipped(settings: Settings) -> Runner:
    """The calibrated bundle exactly as `escalate train` fits it, ranking by its p_response."""
    from models.bundle import fit_escalate_model

    def run(data: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray]:
        model = fit_escalate_model(data["train_features"], data["train_decisions"], data["catalog"], settings.train)
        summary = getattr(model, "summary", {}) or {}
        chosen = summary.get("learner")
        knobs = summary.get("learner_settings") or {}
        run.setting = (f"{chosen}" + (f"({', '.join(f'{k}={v}' for k, v in knobs.items())})" if knobs else "")
                       if chosen else "")  # type: ignore[attr-defined]
        out = shipped_arrays(model, data)
        run.p_response = out["p_response"]  # type: ignore[attr-defined]  # NaN where an option is not modelled
        return np.nan_to_num(out["p_response"], nan=0.0), argmax_eligible(out["p_response"], out["usable"])

    return run


def mean_option_auroc(p: np.ndarray, data: dict[str, Any], settings: Settings) -> tuple[float, float]:
    """Mean per-option AUROC of `p` and of the oracle (the true probability) against each eligible row's response
    under that option (the simulator's potential outcome), over the options `p` predicts."""
    potential = response_of(data["true_tis"], data["eval_features"], settings.train)
    model, oracle = [], []
    for k in np.flatnonzero(np.isfinite(p).any(axis=0)):
        rows = data["eligible"][:, k] & np.isfinite(p[:, k]) & np.isfinite(potential[:, k])  # cells with a truth
        model.append(ev.auroc(potential[rows, k], p[rows, k]))
        oracle.append(ev.auroc(potential[rows, k], data["truth"][rows, k]))
    return float(np.nanmean(model)), float(np.nanmean(oracle))


def shipped_arrays(model: Any, data: dict[str, Any]) -> dict[str, np.ndarray]:
    """A fitted bundle's `p_response` and its interval bounds on the evaluation rows in `data["arms"]` order (NaN
    for an option the bundle does not model), and `usable`: eligible for the evaluation and for the bundle."""
    arms = data["arms"]
    pred = model.predict_arrays(data["eval_features"])
    own_elig = model.eligibility(data["eval_features"])[0]
    cols = [list(model.arms).index(a) if a in model.arms else -1 for a in arms]
    out = {name: np.column_stack([pred[name][:, j] if j >= 0 else np.full(len(own_elig), np.nan) for j in cols])
           for name in ("p_response", "p_response_low", "p_response_high")}
    modelled = np.array([a in model.arms for a in arms])
    own = own_elig.reindex(columns=list(arms), fill_value=False).to_numpy(dtype=bool) & modelled[None, :]
    usable = data["eligible"] & own
    usable[:, 0] = True
    return {**out, "usable": usable}


def learner_config(settings: Settings, data: dict[str, Any]) -> LearnerConfig:
    """The learner settings the bundle's response head uses: params.yaml's booster, folds and propensity, and the
    options' published effect modifiers from configs/options.yaml (where this version has them)."""
    extra: dict[str, object] = {}
    modifiers = getattr(data["catalog"], "effect_modifiers", None)
    if "effect_modifiers" in LearnerConfig.model_fields and callable(modifiers):
        extra["effect_modifiers"] = modifiers()
    train = settings.train
    return LearnerConfig(control=data["arms"][0], arms=data["arms"], outcome="binary", booster=train.booster,
                         cv_folds=train.cv_folds, propensity=train.propensity, **extra)


def ours(kind: str, settings: Settings) -> Runner:
    """One of our learners by kind, fitted on the training rows (with their eligibility)."""

    def run(data: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray]:
        model = make_learner(kind, learner_config(settings, data))
        # the score GLM learns from what the response thresholds (the TIS margin); the others take none
        score = response_margin(data["tis"], data["X"], settings.train) if kind == "score_glm" else None
        model.fit(data["X"], data["t"], data["y"], groups=data["groups"], eligible=data["eligible_train"],
                  score=score)
        effects = model.predict_effects(data["X_eval"])
        return effects, argmax_eligible(effects, data["eligible"])

    return run


def _from_columns(columns: dict[str, np.ndarray], data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(n, arms) effect matrix from {option: effect vs control} (control column 0) and its recommendation."""
    arms = data["arms"]
    out = np.zeros((len(data["X_eval"]), len(arms)))
    for j, arm in enumerate(arms[1:], start=1):
        out[:, j] = np.ravel(columns[arm])
    return out, argmax_eligible(out, data["eligible"])


class EncodedXGBClassifier(ClassifierMixin, BaseEstimator):
    """XGBClassifier that accepts any class labels (XGBoost insists on 0..K-1): EconML's XLearner fits its
    per-option propensity model on rows labelled {0, k}, which a bare XGBClassifier rejects."""

    def __init__(self, **params: object) -> None:
        self.params = params

    def get_params(self, deep: bool = True) -> dict[str, object]:
        return dict(self.params)

    def set_params(self, **params: object) -> EncodedXGBClassifier:
        self.params.update(params)
        return self

    def fit(self, X: np.ndarray, y: np.ndarray, **kwargs: object) -> EncodedXGBClassifier:
        self.encoder_ = LabelEncoder().fit(np.ravel(y))
        self.classes_ = self.encoder_.classes_
        self.model_ = xgb.XGBClassifier(**self.params).fit(X, self.encoder_.transform(np.ravel(y)), **kwargs)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def econml_forest(booster: BoosterConfig, cv_folds: int) -> Runner:
    """EconML CausalForestDML: XGBoost outcome (classifier) and treatment (multinomial) nuisance models with
    patient-grouped cross-fitting; the forest's X is median-imputed (it takes no missing values)."""
    dml = importlib.import_module("econml.dml")
    params = booster.xgb_params()

    def run(data: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray]:
        arms = data["arms"]
        imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(data["X"])
        est = dml.CausalForestDML(
            model_y=xgb.XGBClassifier(**params), model_t=EncodedXGBClassifier(**params),
            discrete_outcome=True, discrete_treatment=True, categories=list(arms),
            cv=GroupKFold(n_splits=cv_folds), n_jobs=1, random_state=booster.seed,
        )
        est.fit(data["y"], data["t"], X=imputer.transform(data["X"]), groups=data["groups"])
        Xe = imputer.transform(data["X_eval"])
        return _from_columns({a: est.effect(Xe, T0=arms[0], T1=a) for a in arms[1:]}, data)

    return run


def econml_dr(booster: BoosterConfig, cv_folds: int, clip: float) -> Runner:
    """EconML DRLearner: XGBoost propensity, outcome (classifier: discrete outcome) and final models, patient-
    grouped cross-fitting and the same propensity floor as ours."""
    dr_module = importlib.import_module("econml.dr")
    params = booster.xgb_params()

    def run(data: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray]:
        arms = data["arms"]
        est = dr_module.DRLearner(
            model_propensity=xgb.XGBClassifier(**params), model_regression=xgb.XGBClassifier(**params),
            model_final=xgb.XGBRegressor(**params), discrete_outcome=True, categories=list(arms),
            cv=GroupKFold(n_splits=cv_folds), min_propensity=clip, allow_missing=True, random_state=booster.seed,
        )
        est.fit(data["y"], data["t"], X=data["X"].to_numpy(), groups=data["groups"])
        Xe = data["X_eval"].to_numpy()
        return _from_columns({a: est.effect(Xe, T0=arms[0], T1=a) for a in arms[1:]}, data)

    return run


def econml_x(booster: BoosterConfig) -> Runner:
    """EconML XLearner with XGBoost outcome/effect regressors and an XGBoost propensity model (labels encoded)."""
    meta = importlib.import_module("econml.metalearners")
    params = booster.xgb_params()

    def run(data: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray]:
        arms = data["arms"]
        est = meta.XLearner(models=xgb.XGBRegressor(**params), propensity_model=EncodedXGBClassifier(**params),
                            categories=list(arms), allow_missing=True)
        est.fit(data["y"], data["t"], X=data["X"].to_numpy())
        Xe = data["X_eval"].to_numpy()
        return _from_columns({a: est.effect(Xe, T0=arms[0], T1=a) for a in arms[1:]}, data)

    return run


def pairwise_propensity(
    data: dict[str, Any], booster: BoosterConfig, cv_folds: int, clip: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """CausalML's propensity of each option against continue, P(T = option | X, T in {option, continue}), from one
    multinomial XGBoost: out-of-fold (patient-grouped) on the training rows, full fit on the evaluation rows;
    clipped to [clip, 1 - clip] like our DR learner (CausalML's default keeps 1e-3, whose 1/p weights explode)."""
    arms = data["arms"]
    codes = pd.Categorical(data["t"], categories=list(arms)).codes
    X, Xe = data["X"].to_numpy(), data["X_eval"].to_numpy()
    oof = np.zeros((len(X), len(arms)))
    for fit_idx, out_idx in GroupKFold(n_splits=cv_folds).split(X, codes, data["groups"]):
        model = xgb.XGBClassifier(**booster.xgb_params()).fit(X[fit_idx], codes[fit_idx])
        oof[out_idx] = model.predict_proba(X[out_idx])
    full = xgb.XGBClassifier(**booster.xgb_params()).fit(X, codes).predict_proba(Xe)

    def pair(p: np.ndarray) -> dict[str, np.ndarray]:
        return {a: np.clip(p[:, j] / (p[:, j] + p[:, 0]), clip, 1 - clip) for j, a in enumerate(arms) if j}

    return pair(oof), pair(full)


def causalml_meta(class_name: str, booster: BoosterConfig, cv_folds: int, clip: float) -> Runner:
    """CausalML's meta-learners with XGBoost: BaseS/TClassifier (XGBClassifier), BaseXClassifier (XGBClassifier
    outcome, XGBRegressor effect models) and BaseDRLearner (XGBRegressor), given XGBoost propensities where they
    use one (same settings and floor as ours; their default elastic-net model cannot take missing values)."""
    meta = importlib.import_module("causalml.inference.meta")
    params = booster.xgb_params()
    needs_p = class_name in ("BaseXClassifier", "BaseDRLearner")

    def run(data: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray]:
        arms = data["arms"]
        cls = getattr(meta, class_name)
        if class_name == "BaseXClassifier":
            est = cls(outcome_learner=xgb.XGBClassifier(**params), effect_learner=xgb.XGBRegressor(**params),
                      control_name=arms[0])
        elif class_name == "BaseDRLearner":
            est = cls(learner=xgb.XGBRegressor(**params), control_name=arms[0])
        else:
            est = cls(learner=xgb.XGBClassifier(**params), control_name=arms[0])
        p_train, p_eval = pairwise_propensity(data, booster, cv_folds, clip) if needs_p else (None, None)
        fit_kwargs: dict[str, object] = {"seed": booster.seed} if class_name == "BaseDRLearner" else {}
        X, t = data["X"].to_numpy(), np.asarray(data["t"])
        est.fit(X=X, treatment=t, y=data["y"], p=p_train, **fit_kwargs)
        Xe = data["X_eval"].to_numpy()
        predict_kwargs: dict[str, object] = {"p": p_eval} if needs_p else {}
        tau = np.asarray(est.predict(X=Xe, verbose=False, **predict_kwargs))
        return _from_columns({str(g): tau[:, i] for i, g in enumerate(est.t_groups)}, data)

    return run


#: booster settings tried for each peer (the first K, K = the shipped model's number of selection candidates):
#: params.yaml's booster, then a smoother and a more flexible one.
PEER_GRID: tuple[tuple[str, dict[str, object]], ...] = (
    ("params", {}),
    ("smooth", {"max_depth": 2, "min_child_weight": 20.0}),
    ("flexible", {"max_depth": 5, "n_estimators": 100}),
    ("slow", {"learning_rate": 0.035, "n_estimators": 300}),
    ("stumps", {"max_depth": 1, "n_estimators": 300}),
    ("shrunk", {"reg_lambda": 10.0, "min_child_weight": 10.0}),
)

Grid = list[tuple[str, Callable[[], Runner]]]


def selection_size(settings: Settings) -> int:
    """K: how many settings the shipped model chooses among by cross-fitting on the training patients (1 when it
    names one learner)."""
    selection = getattr(settings.train, "selection", None)
    if settings.train.learner != "auto" or selection is None:
        return 1
    return max(1, len(getattr(selection, "candidates", ()) or ()))


def peer_boosters(settings: Settings, k: int) -> list[tuple[str, BoosterConfig]]:
    """The first `k` points of PEER_GRID as booster settings (params.yaml's booster updated)."""
    if not 1 <= k <= len(PEER_GRID):
        raise ValueError(f"--peer-grid: {k} (rule: 1 to {len(PEER_GRID)})")
    base = settings.train.booster
    return [(label, base.model_copy(update=update)) for label, update in PEER_GRID[:k]]


def candidates(settings: Settings, k: int) -> list[tuple[str, Grid]]:
    """Every row of the table, in order: the shipped model, our learners, the peers (each peer with `k` booster
    settings, the best of which on the evaluation truth is reported)."""
    cv_folds, clip = settings.train.cv_folds, settings.train.propensity.clip
    grid = peer_boosters(settings, k)
    rows: list[tuple[str, Grid]] = [
        (f"shipped model ({settings.train.learner}, calibrated)", [("", lambda: shipped(settings))])]
    rows += [(f"escalate {kind}", [("", lambda kind=kind: ours(kind, settings))]) for kind in LEARNERS
             if "binary" in LEARNERS[kind].outcomes]  # response is binary: gp_t (continuous only) is no peer here
    rows += [("econml CausalForestDML", [(g, lambda b=b: econml_forest(b, cv_folds)) for g, b in grid]),
             ("econml DRLearner", [(g, lambda b=b: econml_dr(b, cv_folds, clip)) for g, b in grid]),
             ("econml XLearner", [(g, lambda b=b: econml_x(b)) for g, b in grid])]
    rows += [(f"causalml {c}", [(g, lambda c=c, b=b: causalml_meta(c, b, cv_folds, clip)) for g, b in grid])
             for c in ("BaseSClassifier", "BaseTClassifier", "BaseXClassifier", "BaseDRLearner")]
    return rows


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:120]}"


def run_point(name: str, build: Callable[[], Runner], data: dict[str, Any]) -> dict[str, object]:
    """Fit one candidate at one setting and score it; any failure (not installed, an exception, non-finite
    output) is a row with status 'failed: why' — never dropped."""
    try:
        runner = build()
    except ImportError as exc:
        return {"learner": name, "status": f"failed: not installed ({exc.name}); `make bench-env` installs the bench extra"}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            effects, recommended = runner(data)
        seconds = time.perf_counter() - start
        if effects is not None and not np.isfinite(effects[data["eligible"]]).all():
            return {"learner": name, "status": "failed: non-finite effect at an eligible option", "fit_s": seconds}
        row = scores(name, effects, recommended, data, seconds)
        if getattr(runner, "setting", ""):
            row["setting"] = runner.setting  # type: ignore[attr-defined]
        return row
    except Exception as exc:  # a peer's API drift must not hide the other rows
        return {"learner": name, "status": f"failed: {_short(exc)}", "fit_s": time.perf_counter() - start}


def run_one(name: str, grid: Grid, data: dict[str, Any]) -> dict[str, object]:
    """Every setting of `grid`; the row is the setting with the lowest regret on the evaluation truth (a choice
    only the peers get), fit seconds = all settings together (the tuning budget spent)."""
    points = [(label, run_point(name, build, data)) for label, build in grid]
    ok = [(label, r) for label, r in points if r["status"] == "ok"]
    total = float(sum(float(r.get("fit_s", 0.0)) for _, r in points))
    if not ok:
        return {**points[0][1], "fit_s": total}
    label, best = min(ok, key=lambda p: float(p[1]["regret"]))
    row = {**best, "fit_s": total}
    if len(grid) > 1:
        row["setting"] = label
    failed = [f"{lab} {r['status']}" for lab, r in points if r["status"] != "ok"]
    if failed:
        row["note"] = "; ".join(failed)
    return row


def baselines(data: dict[str, Any]) -> list[dict[str, object]]:
    """The guideline list and always continue, scored on the same evaluation rows (no fit)."""
    rows = []
    try:
        rows.append({**scores("guideline list", None, guideline_pick(data), data, 0.0),
                     "learner": "guideline list (baseline)"})
    except Exception as exc:
        rows.append({"learner": "guideline list (baseline)", "status": f"failed: {_short(exc)}"})
    rows.append({**scores("always continue", None, np.zeros(len(data["truth"]), dtype=np.intp), data, 0.0),
                 "learner": "always continue (baseline)"})
    for row in rows:
        row["fit_s"] = float("nan")
    return rows


# ------------------------------------------------------------------------------------------------------------
# Tables


def _mean_se(values: pd.Series, digits: int) -> str:
    """'mean ± standard error' over seeds ('' without values; the value alone for one seed)."""
    if not len(values):
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    se = values.std(ddof=1) / np.sqrt(len(values))
    return f"{values.mean():.{digits}f} ± {se:.{digits}f}"


def summarise_seeds(rows: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per learner: 'mean ± SE' over seeds for every metric (over the seeds where it ran) and a status
    that names every failure."""
    out = []
    for name in order:
        mine = rows[rows["learner"] == name]
        ok = mine[mine["status"] == "ok"]
        row: dict[str, object] = {"learner": name, "seeds": f"{len(ok)}/{len(mine)}"}
        for metric in METRICS:
            values = pd.to_numeric(ok.get(metric, pd.Series(dtype=float)), errors="coerce").dropna()
            row[metric] = _mean_se(values, 1 if metric in ("fit_s", "fit_vs_fastest") else 3)
        settings_used = [str(v) for v in ok.get("setting", pd.Series(dtype=object)).dropna() if str(v)]
        row["chosen setting"] = ", ".join(settings_used)
        notes = mine.assign(status=[st if st != "ok" else (nt if isinstance(nt, str) and nt else "ok")
                                    for st, nt in zip(mine["status"], mine.get("note", pd.Series(
                                        [None] * len(mine), index=mine.index)), strict=True)])
        failed = notes[notes["status"] != "ok"]
        row["status"] = "ok" if failed.empty else "; ".join(
            f"{status} (seed {', '.join(map(str, seeds))})"
            for status, seeds in failed.groupby("status", sort=False)["seed"])
        out.append(row)
    table = pd.DataFrame(out).set_index("learner")
    return table.rename(columns={"sqrt_pehe": "√PEHE", "share_suboptimal": "suboptimal", "fit_s": "fit s",
                                 "fit_vs_fastest": "× fastest ours"})


def print_table(table: pd.DataFrame) -> None:
    """A Markdown table (index columns first), ready to paste into docs/benchmarks.md."""
    flat = table.reset_index()
    cells = [[str(c) for c in flat.columns]] + [["" if pd.isna(v) else str(v) for v in row]
                                                for row in flat.itertuples(index=False)]
    print("| " + " | ".join(cells[0]) + " |")
    print("|" + "|".join("---" for _ in cells[0]) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(row) + " |")


def command_line() -> str:
    """The command that produced the table (with the thread setting that matters for timings)."""
    omp = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={omp} " if omp else ""
    return prefix + "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def budget_note(settings: Settings, k: int) -> str:
    """What "the same tuning budget" means in this run, printed above the table."""
    b = settings.train.booster
    own = (f"The shipped model chooses its response learner among K = {selection_size(settings)} candidates by "
           f"cross-fitting on the training patients (no truth)" if selection_size(settings) > 1
           else f"The shipped model uses one learner ({settings.train.learner})")
    grid = "; ".join(f"{label}: {', '.join(f'{key}={v}' for key, v in update.items()) or 'as params.yaml'}"
                     for label, update in PEER_GRID[:k])
    return (f"same budget: every XGBoost model (ours, the shipped model's heads, the peers' nuisance/outcome/effect "
            f"models) starts from params.yaml train.booster = {b.n_estimators} trees, depth {b.max_depth}, "
            f"learning rate {b.learning_rate}, subsample {b.subsample}, min_child_weight {b.min_child_weight}, "
            f"{b.n_jobs} thread(s); {settings.train.cv_folds} patient-grouped folds; propensity floor "
            f"{settings.train.propensity.clip}. {own}; each peer gets K = {k} booster settings ({grid}) and is "
            f"reported at the one with the lowest regret on the evaluation truth — a choice that favours the peers; "
            f"its fit seconds are all K fits together. Our single learners run at params.yaml's settings. The "
            f"causal forest's own forest keeps EconML's defaults.")


# ------------------------------------------------------------------------------------------------------------


def peers_main(args: argparse.Namespace) -> None:
    """The peers table: every candidate on every seed, then mean ± SE."""
    rows: list[dict[str, object]] = []
    order: list[str] = []
    first = seeded_settings(args.params, args.seeds[0])
    k = args.peer_grid if args.peer_grid is not None else selection_size(first)
    for seed in args.seeds:
        settings = seeded_settings(args.params, seed)
        started = time.perf_counter()
        cohort = simulate(settings, args.patients, seed, args.config)
        from features.split import patient_split

        test = (patient_split(cohort.decisions["patient_id"], settings.split) == "test").to_numpy()
        data = bench_data(cohort, ~test, cohort, test)
        print(f"seed {seed}: {args.patients} patients; {data['describe']} "
              f"(prepared in {time.perf_counter() - started:.0f} s)", flush=True)
        seed_rows = []
        for name, grid in candidates(settings, k):
            short = name.split(" (")[0]
            if (args.only and not {name, short} & set(args.only)) or {name, short} & set(args.skip):
                continue
            row = run_one(name, grid, data)
            seed_rows.append(row)
            print(f"  {name}: {row['status']}" + (f" ({row['fit_s']:.1f} s)" if "fit_s" in row else ""), flush=True)
        ours_ok = [r["fit_s"] for r in seed_rows
                   if r["status"] == "ok" and str(r["learner"]).startswith(("escalate", "shipped"))]
        fastest = min(ours_ok) if ours_ok else float("nan")
        for r in seed_rows:
            r["fit_vs_fastest"] = r.get("fit_s", float("nan")) / fastest if r["status"] == "ok" else float("nan")
        seed_rows += baselines(data)
        for r in seed_rows:
            r["seed"] = seed
            if r["learner"] not in order:
                order.append(str(r["learner"]))
        rows += seed_rows
    table = summarise_seeds(pd.DataFrame(rows), order)
    print(f"\n{command_line()}")
    print(f"simulator: {args.config or 'configs/simulator.yaml'}; {args.patients} patients per seed, seeds "
          f"{', '.join(map(str, args.seeds))}; mean ± SE over seeds")
    print(budget_note(first, k))
    print_table(table)
    frame = pd.DataFrame(rows)
    ok = frame[frame["status"] == "ok"].groupby("learner")["regret"].mean()
    fitted = ok[~ok.index.str.contains("baseline")]
    if len(fitted):
        best = fitted.idxmin()
        print(f"\nlowest mean regret: {best} ({fitted[best]:.3f})"
              + (f"; guideline list {ok['guideline list (baseline)']:.3f}" if "guideline list (baseline)" in ok else ""))


def curve_main(args: argparse.Namespace) -> None:
    """Regret of the shipped model and the guideline list, and its per-option AUROC, against training patients."""
    rows: list[dict[str, object]] = []
    for seed in args.seeds:
        settings = seeded_settings(args.params, seed)
        started = time.perf_counter()
        evaluation = simulate(settings, args.eval_patients, seed + 1, args.config)
        every = np.ones(len(evaluation.decisions), dtype=bool)
        print(f"seed {seed}: evaluation cohort {args.eval_patients} patients (seed {seed + 1}) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        for size in args.sizes:
            started = time.perf_counter()
            train = simulate(settings, size, seed, args.config)
            data = bench_data(train, np.ones(len(train.decisions), dtype=bool), evaluation, every)
            prepared = time.perf_counter() - started
            name = f"shipped model ({settings.train.learner}, calibrated)"
            runner = shipped(settings)
            row = run_one(name, [("", lambda r=runner: r)], data)
            if row["status"] == "ok":
                p = runner.p_response  # type: ignore[attr-defined]
                row["auroc"], row["auroc_oracle"] = mean_option_auroc(p, data, settings)
            base = baselines(data)[0]
            n_labelled = len(data["y"])
            for r in (row, base):
                rows.append({**r, "seed": seed, "patients": size, "labelled": n_labelled, "prepare_s": prepared})
            print(f"  {size} patients: {data['describe']}; simulate + features {prepared:.0f} s, fit "
                  f"{row.get('fit_s', float('nan')):.0f} s; regret {row.get('regret', float('nan')):.3f} "
                  f"(guideline {base.get('regret', float('nan')):.3f}), mean per-option AUROC "
                  f"{row.get('auroc', float('nan')):.3f} (oracle {row.get('auroc_oracle', float('nan')):.3f}) "
                  f"{row['status']} {row.get('setting', '')}",
                  flush=True)
    frame = pd.DataFrame(rows)
    out = []
    for size, mine in frame.groupby("patients", sort=False):
        row: dict[str, object] = {"training patients (simulated)": size,
                                  "labelled training decisions": f"{mine['labelled'].mean():.0f}"}
        for learner, label in ((name, "shipped model regret"), ("guideline list (baseline)", "guideline list regret")):
            got = mine[(mine["learner"] == learner) & (mine["status"] == "ok")]
            values = pd.to_numeric(got.get("regret", pd.Series(dtype=float)), errors="coerce").dropna()
            row[label] = _mean_se(values, 3)
        got = mine[(mine["learner"] == name) & (mine["status"] == "ok")]
        for column, label in (("auroc", "shipped mean per-option AUROC"), ("auroc_oracle", "oracle's AUROC")):
            row[label] = _mean_se(pd.to_numeric(got.get(column, pd.Series(dtype=float)), errors="coerce").dropna(), 3)
        fit = pd.to_numeric(mine.loc[mine["learner"] == name, "fit_s"], errors="coerce").dropna()
        row["shipped fit s"] = f"{fit.mean():.0f}" if len(fit) else ""
        picks = mine.loc[mine["learner"] == name, "setting"] if "setting" in mine else pd.Series(dtype=object)
        row["chosen learner (per seed)"] = ", ".join(str(v) for v in picks.dropna())
        row["simulate + features s"] = f"{mine['prepare_s'].mean():.0f}"
        row["runs ok"] = f"{int((mine['status'] == 'ok').sum())}/{len(mine)}"
        failures = sorted(set(mine.loc[mine["status"] != "ok", "status"].astype(str)))
        row["status"] = "ok" if not failures else "; ".join(failures)
        out.append(row)
    print(f"\n{command_line()}")
    print(f"simulator: {args.config or 'configs/simulator.yaml'}; learning curve on seeds "
          f"{', '.join(map(str, args.seeds))}, evaluated on an independent cohort of {args.eval_patients} patients "
          f"per seed (seed + 1); regret mean ± SE over seeds; seconds are means per seed")
    print_table(pd.DataFrame(out).set_index("training patients (simulated)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                        help="cohort seeds (never params.yaml's development seed)")
    parser.add_argument("--patients", type=int, default=3000, help="patients simulated per seed (peers table)")
    parser.add_argument("--config", type=Path, default=None, help="simulator settings file (default "
                        "configs/simulator.yaml), e.g. configs/simulator-easy.yaml")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--skip", nargs="*", default=[], help="row names to leave out")
    parser.add_argument("--only", nargs="*", default=[], help="run only these row names (baselines always run)")
    parser.add_argument("--peer-grid", type=int, default=None,
                        help=f"booster settings per peer (1-{len(PEER_GRID)}; default: as many as the shipped model's "
                             "selection candidates)")
    parser.add_argument("--learning-curve", action="store_true",
                        help="regret of the shipped model and the guideline list vs training patients")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 30000],
                        help="learning curve: training patients")
    parser.add_argument("--eval-patients", type=int, default=3000, help="learning curve: evaluation cohort size")
    args = parser.parse_args()
    raw_seed = yaml.safe_load(args.params.read_text(encoding="utf-8")).get("seed")
    if raw_seed in args.seeds:
        parser.error(f"--seeds: {raw_seed} is params.yaml's development seed (rule: benchmark on unseen seeds)")
    (curve_main if args.learning_curve else peers_main)(args)


if __name__ == "__main__":
    main()
