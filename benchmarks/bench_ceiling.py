"""What the record can tell at all: the best any record-based model could do on the simulator, beside the shipped
model and the oracle (issue 14's targets on regret, per-option AUROC and interval coverage).

Run (the runtime environment is enough; `.venv-bench` works too):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ceiling.py [--seeds 2027 9001 4242]
        [--ceiling-patients 30000] [--shipped-patients 3000] [--eval-patients 3000] [--config FILE]

The simulator's true chance of response depends on latents no record shows (persistent refractoriness, the
unmeasured confounder, the draw of primary non-response; docs/simulator.md). The oracle knows them; a model of the
record can at best learn the **record ceiling** E[p(option) | features]: the true probability averaged over the
patients who look the same in the record. This benchmark estimates that ceiling per option by regressing the
simulator's *true probability* (not the binary outcome: far less noise) on the project's point-in-time features of
`--ceiling-patients` simulated patients with gradient-boosted trees (early-stopped on a patient-grouped tenth).
The truth is used here to measure the testbed, never to train the shipped model.

Per seed, on an independent evaluation cohort (seed + 1), it prints the oracle, the record ceiling (fitted on all
and on a third of the ceiling patients: if the two agree, the ceiling has converged), the shipped model (the
calibrated bundle of `escalate train`, trained on the first `--shipped-patients` patients of the ceiling cohort)
and the guideline list:

- regret against the oracle's best eligible option, and the share of the guideline list's regret it keeps;
- mean per-option AUROC on the realised potential response (the oracle's is the issue's reference), over the
  options the shipped model predicts (an option seen at fewer than `train.min_rows_per_option` training decisions
  is not modelled);
- RMSE of the probability against the truth (the ceiling's is what no record-based model can remove) and √PEHE;
- the shipped model's 90 % interval coverage of the true probability and of the record ceiling, and their width;
  for the ceiling, the 90th percentile of |truth − ceiling|: the half-width even a perfect record-based estimate
  would need to cover 90 % of the true probabilities.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_peers import (  # noqa: E402
    _mean_se,
    argmax_eligible,
    bench_data,
    command_line,
    guideline_pick,
    print_table,
    seeded_settings,
    shipped_arrays,
    simulate,
)

from models import evaluation as ev  # noqa: E402
from models.response import response_of  # noqa: E402

DEFAULT_SEEDS = (2027, 9001, 4242)
#: the ceiling's trees: deeper and longer than the shipped booster (a regression on a smooth target), early-stopped.
CEILING_BOOSTER = {"n_estimators": 1500, "max_depth": 5, "learning_rate": 0.05, "subsample": 0.8,
                   "min_child_weight": 10, "tree_method": "hist", "objective": "reg:logistic",
                   "early_stopping_rounds": 50}


def fit_ceiling(data: dict[str, Any], patients: np.ndarray, seed: int) -> list[xgb.XGBRegressor | None]:
    """One regressor per option of the true response probability on the features of the rows where the option is
    eligible, for the patients in `patients`; a tenth of them (by patient) stops the boosting."""
    pid = data["eval_features"]["patient_id"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    stop = np.isin(pid, rng.choice(patients, size=max(len(patients) // 10, 1), replace=False))
    use = np.isin(pid, patients)
    models: list[xgb.XGBRegressor | None] = []
    for k in range(len(data["arms"])):
        rows = use & data["eligible"][:, k]
        fit_rows, stop_rows = rows & ~stop, rows & stop
        if fit_rows.sum() < 50 or stop_rows.sum() < 10:
            models.append(None)
            continue
        model = xgb.XGBRegressor(**CEILING_BOOSTER, random_state=seed, n_jobs=-1)
        X = data["X_eval"]
        model.fit(X[fit_rows], data["truth"][fit_rows, k],
                  eval_set=[(X[stop_rows], data["truth"][stop_rows, k])], verbose=False)
        models.append(model)
    return models


def predict_ceiling(models: list[xgb.XGBRegressor | None], X: pd.DataFrame) -> np.ndarray:
    """(rows, options) record-ceiling probabilities; NaN for an option without a fitted ceiling."""
    return np.column_stack([m.predict(X) if m is not None else np.full(len(X), np.nan) for m in models])


def measure(name: str, p: np.ndarray, evaluation: dict[str, Any], potential: np.ndarray,
            ceiling: np.ndarray | None = None, low: np.ndarray | None = None, high: np.ndarray | None = None,
            usable: np.ndarray | None = None, choice: np.ndarray | None = None) -> dict[str, object]:
    """Regret, per-option AUROC (model and oracle), RMSE, √PEHE and — with bounds — coverage of one row. Error
    and coverage count the eligible cells the row predicts (an option the model does not model has none)."""
    truth, elig, arms = evaluation["truth"], evaluation["eligible"], list(evaluation["arms"])
    known = elig & np.isfinite(p)
    filled = np.where(known, p, 0.5)
    rec = choice if choice is not None else argmax_eligible(filled, usable if usable is not None else elig)
    sim = ev.simulator_metrics(filled, truth, potential, elig, rec, arms, control=0)
    cells = known & known[:, [0]]
    cells[:, 0] = False
    effect_error = (filled - filled[:, [0]]) - (truth - truth[:, [0]])
    row: dict[str, object] = {"row": name, "regret": sim.regret.regret,
                              "auroc": sim.per_option["auroc_model"].to_numpy(dtype=float),
                              "auroc_oracle": sim.per_option["auroc_oracle"].to_numpy(dtype=float),
                              "rmse_p": float(np.sqrt(np.mean((filled - truth)[known] ** 2))),
                              "sqrt_pehe": float(np.sqrt(np.mean(effect_error[cells] ** 2)))}
    if low is not None and high is not None:
        row["coverage_truth"] = float(((low <= truth) & (truth <= high))[known].mean())
        row["width"] = float((high - low)[known].mean())
        if ceiling is not None:
            both = known & np.isfinite(ceiling)
            row["coverage_ceiling"] = float(((low <= ceiling) & (ceiling <= high))[both].mean())
    return row


def run_seed(args: argparse.Namespace, seed: int) -> list[dict[str, object]]:
    """Every row of the table for one seed."""
    settings = seeded_settings(args.params, seed)
    started = time.perf_counter()
    big = simulate(settings, args.ceiling_patients, seed, args.config)
    test = simulate(settings, args.eval_patients, seed + 1, args.config)
    all_big, all_test = np.ones(len(big.decisions), bool), np.ones(len(test.decisions), bool)
    patients = pd.unique(big.decisions["patient_id"].astype(str))
    first = np.isin(big.decisions["patient_id"].astype(str), patients[: args.shipped_patients])
    ceiling_data = bench_data(big, first, big, all_big)   # the ceiling's rows: every decision of `big` with truth
    evaluation = bench_data(big, first, test, all_test)  # the shipped model's rows and the evaluation rows
    potential = np.nan_to_num(response_of(evaluation["true_tis"], evaluation["eval_features"], settings.train))
    print(f"seed {seed}: simulate + features {time.perf_counter() - started:.0f} s; {evaluation['describe']}",
          flush=True)

    rows = [measure("oracle (true probability)", evaluation["truth"], evaluation, potential)]
    with_truth = pd.unique(ceiling_data["eval_features"]["patient_id"].astype(str))
    for label, share in (("", 1.0), (" (a third of the patients)", 1 / 3)):
        started = time.perf_counter()
        chosen = with_truth[: int(len(with_truth) * share)]
        models = fit_ceiling(ceiling_data, chosen, seed)
        ceiling = predict_ceiling(models, evaluation["X_eval"])
        rows.append(measure(f"record ceiling{label}", ceiling, evaluation, potential))
        rows[-1].update(fit_s=time.perf_counter() - started, patients=float(len(chosen)))
        if share == 1.0:
            best_ceiling = ceiling
            gap = np.abs(evaluation["truth"] - ceiling)[evaluation["eligible"] & np.isfinite(ceiling)]
            rows[-1]["q90_abs_gap"] = float(np.quantile(gap, 0.9))

    from models.bundle import fit_escalate_model

    started = time.perf_counter()
    model = fit_escalate_model(evaluation["train_features"], evaluation["train_decisions"], evaluation["catalog"],
                               settings.train)
    out = shipped_arrays(model, evaluation)
    summary = getattr(model, "summary", {}) or {}
    print(f"  shipped model chose {summary.get('learner')} {summary.get('learner_settings') or ''}", flush=True)
    rows.append(measure("shipped model", out["p_response"], evaluation, potential,
                        best_ceiling, out["p_response_low"], out["p_response_high"], out["usable"]))
    rows[-1].update(fit_s=time.perf_counter() - started, patients=float(args.shipped_patients))
    rows.append(measure("guideline list", evaluation["truth"], evaluation, potential,
                        choice=guideline_pick(evaluation)))
    rows[-1].update(rmse_p=np.nan, sqrt_pehe=np.nan)  # a list has no probabilities: only its regret means anything
    listed = rows[-1]["regret"]
    # per-option AUROC means over the options the shipped model predicts (one seen at too few training decisions
    # is not modelled, and scoring it as a coin toss would say nothing about the model), for every row alike
    modelled = np.isfinite(out["p_response"]).any(axis=0)
    for r in rows:
        r["auroc_mean"] = float(np.nanmean(r.pop("auroc")[modelled])) if r["row"] != "guideline list" else np.nan
        r["auroc_oracle_mean"] = float(np.nanmean(r.pop("auroc_oracle")[modelled]))
        r["seed"] = seed
        r["share_of_list_regret"] = float(r["regret"]) / float(listed) if listed else np.nan
        print(f"  {r['row']}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()
                                           if isinstance(v, float) and np.isfinite(v)), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                        help="cohort seeds (never params.yaml's development seed)")
    parser.add_argument("--ceiling-patients", type=int, default=30000, help="patients the record ceiling learns from")
    parser.add_argument("--shipped-patients", type=int, default=3000,
                        help="the shipped model's training patients (the first of the ceiling cohort)")
    parser.add_argument("--eval-patients", type=int, default=3000, help="evaluation cohort (seed + 1) size")
    parser.add_argument("--config", type=Path, default=None, help="simulator settings file (default "
                        "configs/simulator.yaml), e.g. configs/simulator-easy.yaml")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    raw_seed = yaml.safe_load(args.params.read_text(encoding="utf-8")).get("seed")
    if raw_seed in args.seeds:
        parser.error(f"--seeds: {raw_seed} is params.yaml's development seed (rule: benchmark on unseen seeds)")
    frame = pd.DataFrame([r for seed in args.seeds for r in run_seed(args, seed)])
    columns = {"regret": ("regret", 3), "share_of_list_regret": ("regret / guideline list's", 2),
               "auroc_mean": ("mean per-option AUROC", 3), "auroc_oracle_mean": ("oracle's AUROC", 3),
               "rmse_p": ("RMSE of p vs truth", 3), "sqrt_pehe": ("√PEHE", 3),
               "coverage_truth": ("90 % interval covers truth", 2), "coverage_ceiling": ("covers ceiling", 2),
               "width": ("interval width", 3), "q90_abs_gap": ("90th pct |truth − ceiling|", 3),
               "patients": ("training patients", 0), "fit_s": ("fit s", 0)}
    out = []
    for name, mine in frame.groupby("row", sort=False):
        row: dict[str, object] = {"row": name}
        for key, (label, digits) in columns.items():
            values = pd.to_numeric(mine.get(key, pd.Series(dtype=float)), errors="coerce").dropna()
            row[label] = _mean_se(values, digits) if len(values) else ""
        out.append(row)
    print(f"\n{command_line()}")
    print(f"simulator: {args.config or 'configs/simulator.yaml'}; seeds {', '.join(map(str, args.seeds))}; each "
          f"evaluated on an independent cohort of {args.eval_patients} patients (seed + 1); mean ± SE over seeds")
    print_table(pd.DataFrame(out).set_index("row"))


if __name__ == "__main__":
    main()
