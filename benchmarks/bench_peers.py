"""Our learners against EconML (DRLearner, XLearner) and CausalML (BaseXRegressor, BaseDRRegressor) on the same
simulated cohort, the same training rows and the same XGBoost settings (issue 4, "Peers side by side").

Run (EconML/CausalML live in the benchmark environment, never the runtime one):
`OMP_NUM_THREADS=1 python benchmarks/bench_peers.py [--data simulator|synthetic] [--patients 3000] [--seed S]
[--features-dir data/features --cohort-dir data/cohort]`.

`--data simulator` (default) simulates a cohort with `simulator.simulate_cohort` (or reads `escalate features`
output plus the cohort's `truth/` with `--features-dir`), derives decisions, point-in-time features and labels with
the project's own feature pipeline, splits patients with `params.yaml` `split:`, fits every learner on the labelled
training decisions and evaluates on the held-out decisions matched to the simulator's truth. `--data synthetic`
keeps the small synthetic multi-option cohort. Prints one table: sqrt(PEHE) of option-vs-continue effects (pooled
over eligible option rows; truth = the simulator's `p_response`), regret of the recommended option against the
oracle's best eligible option, share of suboptimal recommendations, fit seconds (fit + predicting the evaluation
rows) and fit time as a ratio to our fastest learner measured in this process; then names the best.
Peers that are not installed are reported as such and skipped.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import LabelEncoder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models import evaluation as ev  # noqa: E402
from models.config import BoosterConfig, LearnerConfig  # noqa: E402
from models.learners import make_learner  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

CONTROL = "continue"
ARMS = (
    CONTROL,
    "optimise_dose",
    "add_ivig",
    "add_rituximab",
    "add_cyclophosphamide",
    "add_abatacept",
    "add_jak_inhibitor",
)
# Synthetic mode: share of decisions taking each option (continue and dose optimisation dominate, as in practice).
SHARES = np.array([0.34, 0.2, 0.14, 0.12, 0.05, 0.07, 0.08])

# One benchmark dataset: training rows (X, t, y, groups) and evaluation rows with the true response probability
# and the eligibility of every option.
Data = dict[str, Any]
Runner = Callable[[Data], np.ndarray]


# ------------------------------------------------------------------------------------------------------------
# Data


def synthetic_cohort(n_patients: int, seed: int, n_features: int = 20) -> dict[str, Any]:
    """1-4 decisions per patient, confounded choice (sicker patients escalate), heterogeneous effects on the
    response probability, and the true response probability under every option (for PEHE and regret)."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 5, n_patients)
    groups = np.repeat(np.arange(n_patients), per)
    n = len(groups)
    X = pd.DataFrame(rng.normal(size=(n, n_features)), columns=[f"f{j}" for j in range(n_features)])
    X.iloc[:, n_features // 2 :] = (X.iloc[:, n_features // 2 :] > 0.5).astype(float)  # binary flags
    severity = X["f0"].to_numpy()
    logits = np.log(SHARES)[None, :] + np.outer(severity, np.r_[0.0, 0.2, 0.5, 0.6, 0.9, 0.4, 0.5])
    prop = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    codes = (prop.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    base = 1 / (1 + np.exp(-(-0.6 - 0.5 * severity + 0.3 * X["f1"].to_numpy())))
    f2, f3, flag = X["f2"].to_numpy(), X["f3"].to_numpy(), X[f"f{n_features - 1}"].to_numpy()
    effect = np.column_stack(
        [
            np.zeros(n),
            0.05 + 0.05 * (f2 > 0),  # optimise dose
            0.15 + 0.1 * np.tanh(severity),  # IVIG helps the sickest more
            0.12 + 0.15 * flag,  # rituximab: antibody-positive flag
            0.05 + 0.2 * (severity > 1),  # cyclophosphamide only for severe disease
            0.08 * (f3 > 0),  # abatacept
            0.1 + 0.1 * (f2 < 0),  # JAK inhibitor
        ]
    )
    truth = np.clip(base[:, None] + effect, 0.01, 0.99)
    y = (rng.random(n) < truth[np.arange(n), codes]).astype(float)
    return {"X": X, "t": np.asarray(ARMS)[codes], "y": y, "groups": groups, "truth": truth}


def synthetic_data(n_patients: int, n_eval_patients: int, seed: int) -> Data:
    """Train on one synthetic cohort, evaluate on an independent one; every option is eligible everywhere."""
    train = synthetic_cohort(n_patients, seed)
    test = synthetic_cohort(n_eval_patients, seed + 1)
    return {
        "arms": ARMS,
        "X": train["X"],
        "t": train["t"],
        "y": train["y"],
        "groups": train["groups"],
        "X_eval": test["X"],
        "truth": test["truth"],
        "eligible": np.ones_like(test["truth"], dtype=bool),
        "describe": f"synthetic: train {n_patients} patients; evaluation {n_eval_patients} patients",
    }


def simulated_training_set(n_patients: int, seed: int, settings: Settings) -> tuple[Data, pd.DataFrame, pd.DataFrame]:
    """Simulate a cohort and run the project's contract check and feature pipeline on it: (training set, truth
    decisions, truth outcomes), exactly what `escalate simulate` + `escalate features` would write."""
    from features.contract import MeasureCatalog, check
    from pipeline.config import load_reference
    from pipeline.features import build_training_set
    from pipeline.simulate import TABLES, build_inputs
    from simulator.engine import simulate_cohort

    config, vocabulary, catalog = build_inputs()
    today = str(settings.simulate.today or settings.data.today)
    cohort = simulate_cohort(n_patients, seed, config, vocabulary, catalog, today, "observational")
    measures = MeasureCatalog.from_config(load_reference("measures"))
    result = check({name: getattr(cohort, name) for name in TABLES}, vocabulary, measures, pd.Timestamp(today))
    if len(result.rejected_patients):
        print(f"  note: {len(result.rejected_patients)} simulated patient(s) rejected by the data contract")
    built = build_training_set(result.normalised, vocabulary, catalog, settings.features, settings.labels, today)
    return built, cohort.decisions, cohort.outcomes


def simulator_data(
    settings: Settings,
    n_patients: int,
    seed: int,
    features_dir: Path | None,
    cohort_dir: Path,
) -> Data:
    """Training rows (labelled decisions of the training patients) and evaluation rows (held-out decisions
    matched to the simulator's truth) from a simulated cohort, with the project's split and eligibility."""
    from features.split import patient_split
    from models.bundle import feature_columns, match_truth

    if features_dir is not None:
        decisions = pd.read_parquet(features_dir / "decisions.parquet")
        features = pd.read_parquet(features_dir / "features.parquet")
        truth_decisions = pd.read_parquet(cohort_dir / "truth" / "decisions.parquet")
        truth_outcomes = pd.read_parquet(cohort_dir / "truth" / "outcomes.parquet")
        source = f"features {features_dir}, truth {cohort_dir / 'truth'}"
    else:
        built, truth_decisions, truth_outcomes = simulated_training_set(n_patients, seed, settings)
        decisions, features = built["decisions"], built["features"]
        source = f"simulated {n_patients} patients (seed {seed})"
    if not (decisions["decision_id"].to_numpy() == features["decision_id"].to_numpy()).all():
        raise ValueError("decisions and features: rows must align one to one on decision_id (rule: same order)")
    split = patient_split(decisions["patient_id"], settings.split).to_numpy()
    arms = tuple(a for a in ARMS if a in set(decisions["option_taken"]))
    cols = feature_columns(features)
    X = features[cols].astype(float)
    y = decisions["response"].to_numpy(dtype=float)
    train = (split == "train") & np.isfinite(y)
    test = np.flatnonzero(split == "test")

    pos = match_truth(features.iloc[test], truth_decisions, decisions["date"].iloc[test])
    unmatched = int((pos < 0).sum())
    if unmatched:
        print(f"  note: {unmatched} held-out decision(s) have no simulator truth and are not evaluated")
    hit = test[pos >= 0]
    ids = truth_decisions["decision_id"].to_numpy()[pos[pos >= 0]]
    outcomes = truth_outcomes[truth_outcomes["option"].isin(arms)]
    true_p = ev.option_matrix(outcomes, "p_response", arms).reindex(ids).to_numpy(dtype=float)
    true_elig = ev.option_matrix(outcomes, "eligible", arms).reindex(ids).fillna(False).astype(bool).to_numpy()
    derived_elig = decisions.iloc[hit][[f"eligible_{a}" for a in arms]].fillna(False).astype(bool).to_numpy()
    eligible = derived_elig & true_elig & np.isfinite(true_p)
    eligible[:, 0] |= ~eligible.any(axis=1)  # continuing is always possible
    return {
        "arms": arms,
        "X": X[train].reset_index(drop=True),
        "t": decisions["option_taken"].to_numpy()[train].astype(str),
        "y": y[train],
        "groups": decisions["patient_id"].to_numpy()[train].astype(str),
        "X_eval": X.iloc[hit].reset_index(drop=True),
        "truth": np.nan_to_num(true_p, nan=0.0),
        "eligible": eligible,
        "describe": (
            f"simulator: {source}; {len(cols)} features; train {int(train.sum())} labelled decisions of "
            f"{len(np.unique(decisions['patient_id'].to_numpy()[train]))} patients; evaluation "
            f"{len(hit)} held-out decisions"
        ),
    }


# ------------------------------------------------------------------------------------------------------------
# Metrics


def summarise(name: str, effects: np.ndarray, data: Data, seconds: float) -> dict[str, object]:
    """√PEHE of option-vs-continue effects pooled over eligible option rows, and regret / suboptimal share of the
    recommendation (argmax effect among eligible options, continue = 0) against the oracle's best option."""
    truth, eligible, arms = data["truth"], data["eligible"], data["arms"]
    use = eligible & eligible[:, [0]]
    use[:, 0] = False
    err = (effects - effects[:, [0]]) - (truth - truth[:, [0]])
    recommended = np.argmax(np.where(eligible, effects - effects[:, [0]], -np.inf), axis=1)
    lost = ev.regret(truth, eligible, recommended)
    per_option = ev.sqrt_pehe(effects, truth, eligible, arms)
    return {
        "learner": name,
        "sqrt_pehe": float(np.sqrt(np.mean(err[use] ** 2))),
        "worst_option_pehe": float(np.nanmax(per_option["sqrt_pehe"])),
        "regret": lost.regret,
        "share_suboptimal": lost.share_suboptimal,
        "fit_s": seconds,
    }


# ------------------------------------------------------------------------------------------------------------
# Learners: ours and theirs, each a closure fit(data) -> (n_eval, arms) effects against continue


def ours(kind: str, booster: BoosterConfig, cv_folds: int) -> Runner:
    """Fit one of our learners on the training rows and return its effect matrix on the evaluation rows."""

    def run(data: Data) -> np.ndarray:
        model = make_learner(kind, LearnerConfig(arms=data["arms"], booster=booster, cv_folds=cv_folds))
        model.fit(data["X"], data["t"], data["y"], groups=data["groups"])
        return model.predict_effects(data["X_eval"])

    return run


def _effects_from_columns(columns: dict[str, np.ndarray], arms: tuple[str, ...], n: int) -> np.ndarray:
    """(n, arms) effect matrix from {option: effect vs control}; the control column is 0."""
    out = np.zeros((n, len(arms)))
    for j, arm in enumerate(arms[1:], start=1):
        out[:, j] = np.ravel(columns[arm])
    return out


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


def econml_dr(booster: BoosterConfig, cv_folds: int, clip: float) -> Runner:
    """EconML DRLearner: XGBoost propensity, outcome (classifier: discrete outcome) and final models, patient-
    grouped cross-fitting and the same propensity floor as ours."""
    dr_module = importlib.import_module("econml.dr")
    params = booster.xgb_params()

    def run(data: Data) -> np.ndarray:
        arms = data["arms"]
        est = dr_module.DRLearner(
            model_propensity=xgb.XGBClassifier(**params),
            model_regression=xgb.XGBClassifier(**params),
            model_final=xgb.XGBRegressor(**params),
            discrete_outcome=True,
            categories=list(arms),
            cv=GroupKFold(n_splits=cv_folds),
            min_propensity=clip,
            allow_missing=True,
            random_state=booster.seed,
        )
        est.fit(data["y"], data["t"], X=data["X"].to_numpy(), groups=data["groups"])
        Xe = data["X_eval"].to_numpy()
        return _effects_from_columns({a: est.effect(Xe, T0=arms[0], T1=a) for a in arms[1:]}, arms, len(Xe))

    return run


def econml_x(booster: BoosterConfig) -> Runner:
    """EconML XLearner with XGBoost outcome/effect regressors and an XGBoost propensity model (labels encoded)."""
    meta = importlib.import_module("econml.metalearners")
    params = booster.xgb_params()

    def run(data: Data) -> np.ndarray:
        arms = data["arms"]
        est = meta.XLearner(
            models=xgb.XGBRegressor(**params),
            propensity_model=EncodedXGBClassifier(**params),
            categories=list(arms),
            allow_missing=True,
        )
        est.fit(data["y"], data["t"], X=data["X"].to_numpy())
        Xe = data["X_eval"].to_numpy()
        return _effects_from_columns({a: est.effect(Xe, T0=arms[0], T1=a) for a in arms[1:]}, arms, len(Xe))

    return run


def pairwise_propensity(
    data: Data, booster: BoosterConfig, cv_folds: int, clip: float
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
    """CausalML BaseXRegressor / BaseDRRegressor with an XGBoost learner, given XGBoost propensities (same
    settings and floor as ours; their default elastic-net model cannot take missing values)."""
    meta = importlib.import_module("causalml.inference.meta")
    params = booster.xgb_params()

    def run(data: Data) -> np.ndarray:
        arms = data["arms"]
        p_train, p_eval = pairwise_propensity(data, booster, cv_folds, clip)
        est = getattr(meta, class_name)(learner=xgb.XGBRegressor(**params), control_name=arms[0])
        fit_kwargs = {"seed": booster.seed} if class_name == "BaseDRRegressor" else {}
        est.fit(X=data["X"].to_numpy(), treatment=np.asarray(data["t"]), y=data["y"], p=p_train, **fit_kwargs)
        Xe = data["X_eval"].to_numpy()
        tau = np.asarray(est.predict(X=Xe, p=p_eval))
        return _effects_from_columns({str(g): tau[:, i] for i, g in enumerate(est.t_groups)}, arms, len(Xe))

    return run


# ------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("simulator", "synthetic"), default="simulator")
    parser.add_argument("--patients", type=int, default=3000, help="patients simulated (or synthetic train)")
    parser.add_argument("--eval-patients", type=int, default=1000, help="synthetic mode: evaluation patients")
    parser.add_argument("--seed", type=int, default=None, help="default: params.yaml seed (synthetic: 1)")
    parser.add_argument("--features-dir", type=Path, default=None,
                        help="simulator mode: read `escalate features` output instead of simulating")
    parser.add_argument("--cohort-dir", type=Path, default=ROOT / "data/cohort",
                        help="with --features-dir: the simulated cohort whose truth/ to evaluate against")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--skip", nargs="*", default=[], help="learner names to leave out")
    args = parser.parse_args()

    from pipeline.settings import load_settings

    settings = load_settings(args.params)
    seed = int(args.seed if args.seed is not None else (settings.seed if args.data == "simulator" else 1))
    booster = settings.train.booster
    cv_folds = settings.train.cv_folds
    clip = settings.train.propensity.clip

    started = time.perf_counter()
    if args.data == "simulator":
        data = simulator_data(settings, args.patients, seed, args.features_dir, args.cohort_dir)
    else:
        data = synthetic_data(args.patients, args.eval_patients, seed)
    print(f"{data['describe']} (prepared in {time.perf_counter() - started:.1f} s)")
    print(
        f"{len(data['arms'])} options; XGBoost {booster.n_estimators} trees, depth {booster.max_depth}, "
        f"learning rate {booster.learning_rate}, {booster.n_jobs} thread(s); {cv_folds} patient-grouped folds; "
        f"propensity floor {clip}"
    )
    candidates: list[tuple[str, Callable[[], Runner]]] = [
        ("escalate T-learner", lambda: ours("t", booster, cv_folds)),
        ("escalate S-learner", lambda: ours("s", booster, cv_folds)),
        ("escalate DR-learner", lambda: ours("dr", booster, cv_folds)),
        ("escalate linear", lambda: ours("linear", booster, cv_folds)),
        ("econml DRLearner", lambda: econml_dr(booster, cv_folds, clip)),
        ("econml XLearner", lambda: econml_x(booster)),
        ("causalml BaseXRegressor", lambda: causalml_meta("BaseXRegressor", booster, cv_folds, clip)),
        ("causalml BaseDRRegressor", lambda: causalml_meta("BaseDRRegressor", booster, cv_folds, clip)),
    ]
    rows: list[dict[str, object]] = []
    for name, build in candidates:
        if name in args.skip:
            continue
        try:
            run = build()
        except ImportError as exc:
            print(f"  skipped {name}: not installed ({exc.name}); `make bench` installs the bench extra")
            continue
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                effects = run(data)
        except Exception as exc:  # a peer's API drift must not hide the other rows
            print(f"  failed {name}: {type(exc).__name__}: {exc}")
            continue
        rows.append(summarise(name, effects, data, time.perf_counter() - start))
        print(f"  done {name} in {rows[-1]['fit_s']:.1f} s", flush=True)
    table = pd.DataFrame(rows).set_index("learner")
    ours_rows = table.index.str.startswith("escalate")
    table["fit_vs_our_fastest"] = table["fit_s"] / table.loc[ours_rows, "fit_s"].min()
    continue_all = summarise("continue for everyone", np.zeros_like(data["truth"]), data, 0.0)
    print(f"\nreference: always 'continue' has regret {continue_all['regret']:.3f}\n")
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 200,
                           "display.max_columns", None):
        print(table)

    best_pehe, best_regret = table["sqrt_pehe"].idxmin(), table["regret"].idxmin()
    print(f"\nbest sqrt(PEHE): {best_pehe} ({table.loc[best_pehe, 'sqrt_pehe']:.3f}); "
          f"best regret: {best_regret} ({table.loc[best_regret, 'regret']:.3f})")
    peers = table[~ours_rows]
    if len(peers) and ours_rows.any():
        mine = table[ours_rows]
        o_best, p_best = mine["sqrt_pehe"].idxmin(), peers["sqrt_pehe"].idxmin()
        o, p = mine.loc[o_best], peers.loc[p_best]
        verdict = "at least as accurate as" if o["sqrt_pehe"] <= p["sqrt_pehe"] else "less accurate than"
        speed = "faster" if o["fit_s"] < p["fit_s"] else "slower"
        print(f"ours vs the best peer: {o_best} ({o['sqrt_pehe']:.3f}, {o['fit_s']:.1f} s) is {verdict} "
              f"{p_best} ({p['sqrt_pehe']:.3f}, {p['fit_s']:.1f} s) and {speed} ({p['fit_s'] / o['fit_s']:.1f}x)")


if __name__ == "__main__":
    main()
