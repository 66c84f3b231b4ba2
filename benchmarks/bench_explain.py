"""Explanation and page speed: one patient (all options) after the model is loaded, rendering a page, and
explanations/second for 100k decision rows against raw xgboost `pred_contribs` on the same matrix (the limit).

Run: `python benchmarks/bench_explain.py [--rows 100000]`. Prints absolute times and ratios measured in this
process (targets: one patient <= 200 ms, one page <= 1 s, throughput ratio as close to 1 as possible).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import pandas as pd
import xgboost as xgb

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from models import explain as E  # noqa: E402
from models.config import BoosterConfig, LearnerConfig
from models.learners import make_learner

ARMS = ("continue", "optimise_dose", "add_ivig", "add_rituximab", "add_cyclophosphamide", "add_abatacept",
        "add_jak_inhibitor")


def cohort(n: int, p: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame]:
    """Synthetic decisions with p features (a third binary), 7 options and a heterogeneous effect."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"f{j}" for j in range(p)])
    X.iloc[:, : p // 3] = (X.iloc[:, : p // 3] > 0).astype(float)
    t = rng.choice(ARMS, n)
    logit = X["f0"] - 0.5 * X[f"f{p - 1}"] + (t != "continue") * (0.5 + 0.5 * X["f1"])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    dictionary = pd.DataFrame({"feature": X.columns, "clinical_feature": [f"g{j // 2}" for j in range(p)],
                               "label": [f"feature {j}" for j in range(p)], "unit": "score"})
    return X, t, y, dictionary


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=60)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    booster = BoosterConfig()  # the project's defaults: 200 trees of depth 3
    X, t, y, dictionary = cohort(6000, args.features, 1)
    learner = make_learner("t", LearnerConfig(arms=ARMS, booster=booster)).fit(X, t, y)
    safety = make_learner("s", LearnerConfig(arms=ARMS, booster=booster)).fit(X, t, 1 - y)
    print(f"T-learner response + S-learner safety, {len(ARMS)} options, {booster.n_estimators} trees of depth "
          f"{booster.max_depth}, {args.features} features")

    one = X.iloc[[0]]
    t_patient = best_of(lambda: E.reasons_frame(E.explain(one, learner, safety=safety), one, dictionary, 3))
    print(f"one patient, all options (response, contrast, safety + top-3 reasons): {1000 * t_patient:.1f} ms "
          f"(target <= 200 ms: {'OK' if t_patient <= 0.2 else 'MISSED'})")

    from pipeline.report import render_page
    from tests.code.test_report import sample_page

    page = sample_page()
    render_page(page)  # template compiled once per process, like a loaded service
    t_page = best_of(lambda: render_page(page))
    print(f"render one page: {1000 * t_page:.1f} ms (target <= 1000 ms: {'OK' if t_page <= 1 else 'MISSED'})")

    big, _, _, _ = cohort(args.rows, args.features, 2)
    dm = xgb.DMatrix(big.to_numpy(np.float32), feature_names=list(big.columns))
    boosters = [learner.models_[a].get_booster() for a in ARMS]
    t_raw = best_of(lambda: [b.predict(dm, pred_contribs=True) for b in boosters], repeat=1)
    t_ours = best_of(lambda: E.explain_learner(learner, big), repeat=1)
    t_reasons = best_of(lambda: E.reasons_frame(E.Explanations(E.explain_learner(learner, big), ARMS, "continue",
                                                               "t", len(big)), big, dictionary, 3), repeat=1)
    rate = lambda s: args.rows / s  # noqa: E731
    print(f"{args.rows} rows x {len(ARMS)} options, response model:")
    print(f"  raw xgboost pred_contribs (the limit): {t_raw:.2f} s = {rate(t_raw):,.0f} rows/s")
    print(f"  models.explain (+ contrasts):          {t_ours:.2f} s = {rate(t_ours):,.0f} rows/s "
          f"-> ratio to the limit {t_raw / t_ours:.2f}")
    print(f"  + grouped top-3 reasons in words:      {t_reasons:.2f} s = {rate(t_reasons):,.0f} rows/s "
          f"-> ratio to the limit {t_raw / t_reasons:.2f}")


if __name__ == "__main__":
    main()
