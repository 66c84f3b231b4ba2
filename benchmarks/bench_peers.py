"""Our learners against EconML (DRLearner, XLearner) and CausalML (BaseXRegressor, BaseDRRegressor) on the same
synthetic multi-option cohort with known effects and the same XGBoost settings.

Run: `python benchmarks/bench_peers.py [--patients 3000] [--seed 1]` (after `make bench`, which installs the
optional `bench` extra). Peers that are not installed are reported as such and skipped. Prints one table:
sqrt(PEHE) of option-vs-continue effects (mean over options), regret of the recommended option (true response
probability lost against the best option), share of rows whose recommendation is not the best, fit seconds,
and fit time as a ratio to our T-learner measured in this process.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.config import BoosterConfig, LearnerConfig  # noqa: E402
from models.learners import make_learner  # noqa: E402

ARMS = (
    "continue",
    "optimise_dose",
    "add_ivig",
    "add_rituximab",
    "add_cyclophosphamide",
    "add_abatacept",
    "add_jak_inhibitor",
)
# Share of decisions taking each option (continue and dose optimisation dominate, as in practice).
SHARES = np.array([0.34, 0.2, 0.14, 0.12, 0.05, 0.07, 0.08])


def cohort(n_patients: int, seed: int, n_features: int = 20) -> dict[str, np.ndarray | pd.DataFrame]:
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


def summarise(name: str, effects: np.ndarray, truth: np.ndarray, seconds: float) -> dict[str, object]:
    """sqrt(PEHE) over the non-control options, regret and suboptimal share of argmax-effect recommendations."""
    true_effect = truth - truth[:, [0]]
    pehe = np.sqrt(np.mean((effects[:, 1:] - true_effect[:, 1:]) ** 2, axis=0))
    rows = np.arange(len(truth))
    recommended = effects.argmax(axis=1)
    gap = truth.max(axis=1) - truth[rows, recommended]
    return {
        "learner": name,
        "sqrt_pehe": float(pehe.mean()),
        "regret": float(gap.mean()),
        "share_suboptimal": float(np.mean(gap > 1e-12)),
        "fit_s": seconds,
    }


def ours(kind: str, booster: BoosterConfig) -> Callable[[dict, pd.DataFrame], np.ndarray]:
    """Fit one of our learners and return its effect matrix on the evaluation rows."""

    def run(train: dict, X_eval: pd.DataFrame) -> np.ndarray:
        model = make_learner(kind, LearnerConfig(arms=ARMS, booster=booster))
        model.fit(train["X"], train["t"], train["y"], groups=train["groups"])
        return model.predict_effects(X_eval)

    return run


def _effects_from_columns(columns: dict[str, np.ndarray], n: int) -> np.ndarray:
    out = np.zeros((n, len(ARMS)))
    for j, arm in enumerate(ARMS[1:], start=1):
        out[:, j] = columns[arm]
    return out


def econml_dr(booster: BoosterConfig) -> Callable[[dict, pd.DataFrame], np.ndarray]:
    """EconML DRLearner: XGBoost propensity, outcome (classifier: discrete outcome) and final models."""
    dr_module = importlib.import_module("econml.dr")
    params = booster.xgb_params()

    def run(train: dict, X_eval: pd.DataFrame) -> np.ndarray:
        from sklearn.model_selection import GroupKFold

        est = dr_module.DRLearner(
            model_propensity=xgb.XGBClassifier(**params),
            model_regression=xgb.XGBClassifier(**params),
            model_final=xgb.XGBRegressor(**params),
            discrete_outcome=True,
            categories=list(ARMS),
            cv=GroupKFold(n_splits=5),
            random_state=booster.seed,
        )
        est.fit(train["y"], train["t"], X=train["X"].to_numpy(), groups=train["groups"])
        Xe = X_eval.to_numpy()
        return _effects_from_columns(
            {a: np.ravel(est.effect(Xe, T0=ARMS[0], T1=a)) for a in ARMS[1:]}, len(Xe)
        )

    return run


def econml_x(booster: BoosterConfig) -> Callable[[dict, pd.DataFrame], np.ndarray]:
    """EconML XLearner with XGBoost outcome/effect regressors and an XGBoost propensity model."""
    meta = importlib.import_module("econml.metalearners")
    params = booster.xgb_params()

    def run(train: dict, X_eval: pd.DataFrame) -> np.ndarray:
        est = meta.XLearner(
            models=xgb.XGBRegressor(**params),
            propensity_model=xgb.XGBClassifier(**params),
            categories=list(ARMS),
        )
        est.fit(train["y"], train["t"], X=train["X"].to_numpy())
        Xe = X_eval.to_numpy()
        return _effects_from_columns(
            {a: np.ravel(est.effect(Xe, T0=ARMS[0], T1=a)) for a in ARMS[1:]}, len(Xe)
        )

    return run


def causalml_meta(class_name: str, booster: BoosterConfig) -> Callable[[dict, pd.DataFrame], np.ndarray]:
    """CausalML BaseXRegressor / BaseDRRegressor with an XGBoost learner (their default propensity model)."""
    meta = importlib.import_module("causalml.inference.meta")
    params = booster.xgb_params()

    def run(train: dict, X_eval: pd.DataFrame) -> np.ndarray:
        est = getattr(meta, class_name)(learner=xgb.XGBRegressor(**params), control_name=ARMS[0])
        est.fit(X=train["X"].to_numpy(), treatment=train["t"], y=train["y"])
        tau = np.asarray(est.predict(X=X_eval.to_numpy()))
        groups = [str(g) for g in est.t_groups]
        return _effects_from_columns({g: tau[:, i] for i, g in enumerate(groups)}, len(X_eval))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3000)
    parser.add_argument("--eval-patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    train = cohort(args.patients, args.seed)
    test = cohort(args.eval_patients, args.seed + 1)
    booster = BoosterConfig()  # the same XGBoost settings for every library
    print(
        f"train: {args.patients} patients, {len(train['y'])} decisions; evaluation: {len(test['y'])} decisions; "
        f"{len(ARMS)} options; XGBoost {booster.n_estimators} trees, depth {booster.max_depth}, "
        f"learning rate {booster.learning_rate}, {booster.n_jobs} thread(s)"
    )
    candidates: list[tuple[str, Callable[[], Callable[[dict, pd.DataFrame], np.ndarray]]]] = [
        ("escalate T-learner", lambda: ours("t", booster)),
        ("escalate S-learner", lambda: ours("s", booster)),
        ("escalate DR-learner", lambda: ours("dr", booster)),
        ("escalate linear", lambda: ours("linear", booster)),
        ("econml DRLearner", lambda: econml_dr(booster)),
        ("econml XLearner", lambda: econml_x(booster)),
        ("causalml BaseXRegressor", lambda: causalml_meta("BaseXRegressor", booster)),
        ("causalml BaseDRRegressor", lambda: causalml_meta("BaseDRRegressor", booster)),
    ]
    rows: list[dict[str, object]] = []
    for name, build in candidates:
        try:
            run = build()
        except ImportError as exc:
            print(f"  skipped {name}: not installed ({exc.name}); `make bench` installs the bench extra")
            continue
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                effects = run(train, test["X"])
        except Exception as exc:  # a peer's API drift must not hide the other rows
            print(f"  failed {name}: {type(exc).__name__}: {exc}")
            continue
        rows.append(summarise(name, effects, test["truth"], time.perf_counter() - start))
        print(f"  done {name} in {rows[-1]['fit_s']:.1f} s", flush=True)
    table = pd.DataFrame(rows).set_index("learner")
    reference = table.loc["escalate T-learner", "fit_s"] if "escalate T-learner" in table.index else np.nan
    table["fit_vs_our_T"] = table["fit_s"] / reference
    oracle = summarise("continue for everyone", np.zeros_like(test["truth"]), test["truth"], 0.0)
    print(f"\nreference: always 'continue' has regret {oracle['regret']:.3f}\n")
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 140):
        print(table)


if __name__ == "__main__":
    main()
