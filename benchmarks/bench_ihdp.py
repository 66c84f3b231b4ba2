"""IHDP (Hill 2011, response surface B) through the project's learner API: out-of-sample √PEHE of every learner
kind in `models.learners.LEARNERS` that models a continuous outcome (issue 14, "an IHDP benchmark").

Run (EconML ships the IHDP covariates and surface B; it lives in the benchmark environment, `make bench`):

    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/bench_ihdp.py [--realisations 1000] [--kinds s t ...]

Realisations 0..N-1 are the reported ones; develop settings on others (`--first 5000`), never on these.

Realisation r is `econml.data.dgps.ihdp_surface_B(random_state=r)` (747 children, 25 covariates plus EconML's
intercept column, binary treatment, continuous outcome; the file is inside the EconML package, nothing is
downloaded). Each realisation is split 90/10 at random (seed r); every learner is fitted on the 90 % with
`make_learner(kind, LearnerConfig(control="0", outcome="continuous", booster=params.yaml train.booster, ...))`
and `.fit(X, treatment, y)`, and √PEHE = root mean squared error of `.predict_effects(X)` against the true
effect on the held-out 10 %. Prints one table: mean ± standard error and median of √PEHE over realisations,
fit seconds per realisation and fit time as a ratio to the fastest kind (same process). A kind that fails is a
row "failed: why".
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.config import LearnerConfig  # noqa: E402
from models.learners import LEARNERS, make_learner  # noqa: E402

CONTROL, TREATED = "0", "1"


def realisation(r: int, test_fraction: float) -> dict[str, np.ndarray]:
    """IHDP surface B realisation `r`, split at random (seed r) into training and held-out rows."""
    dgps = importlib.import_module("econml.data.dgps")
    y, t, X, tau = dgps.ihdp_surface_B(random_state=r)
    n = len(y)
    perm = np.random.default_rng(r).permutation(n)
    n_test = int(round(test_fraction * n))
    test, train = perm[:n_test], perm[n_test:]
    arm = np.where(np.asarray(t).ravel() > 0.5, TREATED, CONTROL).astype(str)
    X = np.asarray(X, dtype=float)
    return {"X": X[train], "t": arm[train], "y": np.asarray(y, dtype=float).ravel()[train],
            "X_test": X[test], "tau_test": np.asarray(tau, dtype=float).ravel()[test]}


#: the pseudo-kind of `train.learner: auto`: the learner `escalate train` would select on these training rows.
AUTO = "auto"


def selected(train: object, config: LearnerConfig, data: dict[str, np.ndarray]) -> tuple[str, LearnerConfig]:
    """`train.learner: auto`: the candidate `models.bundle.select_response_learner` chooses on the training rows
    (no truth: for this continuous outcome `models.selection` ranks by the DR-loss of the cross-fitted contrasts
    unless `train.selection.criterion` says otherwise) as (kind, its LearnerConfig)."""
    bundle = importlib.import_module("models.bundle")
    select = getattr(bundle, "select_response_learner", None)
    if select is None:
        raise RuntimeError("this version's models.bundle has no select_response_learner (no `learner: auto`)")
    n = len(data["y"])
    chosen, _ = select(train, config, data["X"], data["t"], data["y"], np.arange(n), np.ones((n, 2), dtype=bool))
    return default_kind(chosen.learner), config.model_copy(update=chosen.updates())


def pehe(kind: str, config: LearnerConfig, data: dict[str, np.ndarray], train: object = None) -> float:
    """Fit one learner kind on the training rows (`auto`: the one the shipped selection picks there); √PEHE of
    its treated-vs-control effect on the held-out rows."""
    if kind == AUTO:
        kind, config = selected(train, config, data)
        data["chosen"] = kind  # type: ignore[assignment]
    model = make_learner(kind, config)
    model.fit(data["X"], data["t"], data["y"])
    effect = np.asarray(model.predict_effects(data["X_test"]))[:, list(model.arms_).index(TREATED)]
    if not np.isfinite(effect).all():
        raise ValueError("non-finite predicted effect")
    return float(np.sqrt(np.mean((effect - data["tau_test"]) ** 2)))


def default_kind(learner: str) -> str:
    """params.yaml's `train.learner` as a `LEARNERS` key ('s_learner' -> 's')."""
    return learner if learner in LEARNERS else learner.removesuffix("_learner")


def command_line() -> str:
    omp = os.environ.get("OMP_NUM_THREADS")
    return (f"OMP_NUM_THREADS={omp} " if omp else "") + "python " + shlex.join(
        [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realisations", type=int, default=1000, help="IHDP surface B realisations (N of them)")
    parser.add_argument("--first", type=int, default=0, help="first realisation (default 0, the reported ones; "
                        "develop on others, e.g. 5000)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="held-out share of each realisation")
    parser.add_argument("--kinds", nargs="+", default=None,
                        help="learner kinds (default: every LEARNERS key for a continuous outcome, and 'auto' — the "
                        "learner train's selection picks on each realisation — when params.yaml says auto)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    if args.realisations < 2:
        parser.error("--realisations: at least 2 (a standard error needs two)")
    if args.first < 0:
        parser.error("--first: a realisation number is at least 0")

    from pipeline.settings import load_settings

    settings = load_settings(args.params)
    train = settings.train
    # IHDP's outcome is continuous: the learners made for a binary one (the score GLM) are no row here
    continuous = [k for k in LEARNERS if "continuous" in LEARNERS[k].outcomes]
    kinds = list(args.kinds or [*continuous, *([AUTO] if train.learner == AUTO else [])])
    unknown = [k for k in kinds if k not in LEARNERS and k != AUTO]
    if unknown:
        parser.error(f"--kinds: unknown {unknown}; known {sorted(LEARNERS)}")
    config = LearnerConfig(control=CONTROL, arms=(CONTROL, TREATED), outcome="continuous", booster=train.booster,
                           cv_folds=train.cv_folds, propensity=train.propensity)
    values: dict[str, list[float]] = {k: [] for k in kinds}
    seconds = dict.fromkeys(kinds, 0.0)
    failed: dict[str, str] = {}
    chosen: Counter[str] = Counter()  # auto: which kind the selection picked, per realisation
    started = time.perf_counter()
    for i, r in enumerate(range(args.first, args.first + args.realisations)):
        data = realisation(r, args.test_fraction)
        for kind in kinds:
            if kind in failed:
                continue
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    values[kind].append(pehe(kind, config, data, train))
                if kind == AUTO:
                    chosen[str(data.pop("chosen"))] += 1
            except Exception as exc:  # one kind's failure must not hide the others
                failed[kind] = f"failed at realisation {r}: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
            seconds[kind] += time.perf_counter() - start
        if (i + 1) % max(1, args.realisations // 10) == 0:
            print(f"  {i + 1}/{args.realisations} realisations ({time.perf_counter() - started:.0f} s)", flush=True)

    fastest = min((seconds[k] for k in kinds if k not in failed), default=float("nan"))
    default = default_kind(train.learner)
    b = train.booster
    print(f"\n{command_line()}")
    print(f"IHDP surface B (EconML {importlib.import_module('econml').__version__}), {args.realisations} "
          f"realisations ({args.first}..{args.first + args.realisations - 1}), {1 - args.test_fraction:.0%}/{args.test_fraction:.0%} split each; out-of-sample √PEHE; "
          f"XGBoost {b.n_estimators} trees, depth {b.max_depth}, learning rate {b.learning_rate} (params.yaml "
          f"train.booster), {train.cv_folds} folds")
    print("| learner kind | realisations | √PEHE mean ± SE | √PEHE median | fit s per realisation | × fastest | status |")
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        v = np.asarray(values[kind])
        name = f"{kind} (params.yaml default)" if kind == default else kind
        if kind in failed:
            print(f"| {name} | {len(v)} |  |  |  |  | {failed[kind]} |")
            continue
        se = v.std(ddof=1) / np.sqrt(len(v))
        per = seconds[kind] / len(v)
        status = "ok" if kind != AUTO else "ok; chose " + ", ".join(f"{k} {n}×" for k, n in chosen.most_common())
        print(f"| {name} | {len(v)} | {v.mean():.2f} ± {se:.2f} | {np.median(v):.2f} | {per:.2f} | "
              f"{seconds[kind] / fastest:.1f} | {status} |")
    ok = {k: float(np.mean(values[k])) for k in kinds if k not in failed}
    if ok:
        best = min(ok, key=ok.__getitem__)
        print(f"\nlowest mean √PEHE: {best} ({ok[best]:.2f})"
              + (f"; params.yaml default {default}: {ok[default]:.2f}" if default in ok else ""))


if __name__ == "__main__":
    main()
