"""Benchmark of `escalate score`: patients/second with and without explanations against the raw xgboost limit,
and whole-job scaling with peak memory per population size.

1. Predict + explain versus the limit, on one feature matrix in this process: `predict_explained(..., k=0)` and
   `(..., k=3)` against raw xgboost work on the same rows — `predict` of every booster in the model plus
   `pred_contribs` of the boosters that are explained (response and safety full-data learners). Target: the
   predict+explain part runs at >= 0.7x of that limit.
2. Scaling: the whole job (`python -m pipeline.cli score`, local engine) at each size in `--sizes`, in a fresh
   process whose peak RSS is measured; inputs are a simulated base cohort replicated under new patient ids
   (simulating 100k+ patients directly takes hours), written as Parquet in row batches.

Run: `python benchmarks/bench_score.py [--sizes 10000,100000,1000000] [--base 300] [--rows 5000]`;
`--workdir DIR` keeps the base cohort, model and replicated inputs there, and a later run reuses them.
The model uses params.yaml's `train:` settings (200 trees, 20 bootstrap refits), trained on synthetic labels.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

AS_OF, TODAY = "2026-10-01", "2026-11-01"


def boosters(model: object) -> list[tuple[str, object]]:
    """Every xgboost model reachable from the bundle's heads, with its attribute path (deduplicated)."""
    import xgboost as xgb

    found: dict[int, tuple[str, object]] = {}
    seen: set[int] = set()
    stack: list[tuple[str, object]] = [(f"heads[{k!r}]", h) for k, h in model.heads.items()]  # type: ignore[attr-defined]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen or isinstance(obj, str | bytes | int | float | np.ndarray | pd.DataFrame):
            continue
        seen.add(id(obj))
        if isinstance(obj, xgb.XGBModel):
            found.setdefault(id(obj), (path, obj))
        elif isinstance(obj, dict):
            stack.extend((f"{path}[{k!r}]", v) for k, v in obj.items())
        elif isinstance(obj, list | tuple):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(obj))
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.extend((f"{path}.{k}", v) for k, v in vars(obj).items())
    return sorted(found.values(), key=lambda t: t[0])


def raw_limit(model: object, X: pd.DataFrame) -> tuple[float, int]:
    """Seconds of raw xgboost work on X: predict with every booster, pred_contribs with the explained ones
    (full-data response and safety learners); boosters with extra option columns (S-learner) run once per arm."""
    import xgboost as xgb

    arms = len(model.arms)  # type: ignore[attr-defined]
    values = X.to_numpy(dtype="float32", na_value=np.nan)
    started = time.perf_counter()
    matrices: dict[int, xgb.DMatrix] = {}
    n_boosters = 0
    for path, m in boosters(model):
        booster = m.get_booster()
        p = booster.num_features()
        if p not in matrices:
            pad = np.zeros((len(values), max(p - values.shape[1], 0)), dtype="float32")
            matrices[p] = xgb.DMatrix(np.hstack([values, pad])[:, :p], missing=np.nan)
        repeats = arms if p > values.shape[1] else 1
        explained = ".ensemble" not in path and ("['response']" in path or "['safety']" in path)
        for _ in range(repeats):
            booster.predict(matrices[p], validate_features=False)
            if explained:
                booster.predict(matrices[p], pred_contribs=True, validate_features=False)
        n_boosters += 1
    return time.perf_counter() - started, n_boosters


def replicate(base: Path, target: Path, copies: int) -> int:
    """Write `copies` copies of the base cohort's tables under new patient ids, batch by batch (bounded memory);
    the folder appears only when complete, so a later run can reuse it.

    The copy number leads the id (`R000012-<base id>`), so the sorted ids — and hence every chunk — mix the base
    cohort's patients as the base cohort does. With the copy number last, the clones of a patient sat side by side
    and a chunk at 1M held ~3 patients x 667 clones: its rows then depend on which 3 patients they are (heaviest chunk
    954k assessment rows at 1M vs 674k at 100k), and peak memory measured the replication, not the population."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    n = 0
    for name in ("patients", "regimens", "assessments", "events"):
        table = pq.read_table(base / f"{name}.parquet")
        ids = table.column("patient_id").to_pandas().astype(str).to_numpy()
        idx = table.schema.get_field_index("patient_id")
        with pq.ParquetWriter(partial / f"{name}.parquet", table.schema) as writer:
            for c in range(copies):
                writer.write_table(table.set_column(idx, "patient_id", pa.array(np.char.add(f"R{c:06d}-", ids),
                                                                         type=table.schema.field(idx).type)))
        if name == "patients":
            n = table.num_rows * copies
    partial.rename(target)
    return n


def peak_run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB of the child, its last output line) for one command in a fresh process."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode); "
             "print((r.stdout + r.stderr)[-3000:])")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=env, cwd=ROOT)
    first, _, rest = out.stdout.partition("\n")
    wall, rss_kb, rc = first.split()
    if rc != "0":
        raise RuntimeError(f"score failed:\n{rest}")
    return float(wall), float(rss_kb) / 1024, rest.strip().splitlines()[-1] if rest.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated population sizes to scale over")
    parser.add_argument("--base", type=int, default=300, help="simulated base cohort (patients)")
    parser.add_argument("--rows", type=int, default=5000, help="rows of the predict/explain comparison")
    parser.add_argument("--chunk", type=int, default=2000, help="--chunk-patients of the scaling runs")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from features.build import build_features
    from features.contract import MeasureCatalog, check
    from models.scoring import predict_explained
    from pipeline.config import load_params, load_reference
    from pipeline.score import resolve_model
    from pipeline.simulate import build_inputs
    from pipeline.train import bundle_config
    from tests.model.test_score_job import ScoringWorld, build_world

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-score-"))
    train = bundle_config(load_params(ROOT / "params.yaml")).model_dump()
    t = time.perf_counter()
    if (work / "world" / "mlflow.db").is_file():  # --workdir of an earlier run: reuse its cohort and model
        world = ScoringWorld(data=work / "world" / "data", tracking_uri=f"sqlite:///{work / 'world' / 'mlflow.db'}",
                             model_uri="models:/escalate-response@champion", version="1")
        os.environ["MLFLOW_TRACKING_URI"] = world.tracking_uri
        print(f"reusing the base cohort and model in {work / 'world'}")
    else:
        world = build_world(work / "world", n_patients=args.base, seed=11, train=train)
        print(f"base cohort {args.base} patients + model (params.yaml train:) in {time.perf_counter() - t:.0f} s")
    model, _ = resolve_model(world.model_uri)

    # 1. predict / explain versus raw xgboost on one feature matrix
    _, vocabulary, catalog = build_inputs()
    tables = {n: pd.read_parquet(world.data / f"{n}.parquet") for n in ("patients", "regimens", "assessments", "events")}
    result = check(tables, vocabulary, MeasureCatalog.from_config(load_reference("measures")), TODAY)
    keys = pd.DataFrame({"patient_id": result.normalised["patients"]["patient_id"], "as_of": pd.Timestamp(AS_OF)})
    fs = build_features(keys, result.normalised, vocabulary, catalog)
    reps = -(-args.rows // len(fs.features))
    feats = pd.concat([fs.features] * reps, ignore_index=True).head(args.rows)
    feats["patient_id"] = [f"B{i:07d}" for i in range(len(feats))]
    X = model.contract.check(feats)
    limit_s, n_boosters = raw_limit(model, X)
    limit_s = min(limit_s, raw_limit(model, X)[0])
    t = time.perf_counter()
    predict_explained(model, feats, fs.dictionary, 0)
    predict_s = time.perf_counter() - t
    t = time.perf_counter()
    predict_explained(model, feats, fs.dictionary, 3)
    explain_s = time.perf_counter() - t
    n = len(feats)
    print(f"\n[predict/explain] {n} patients, {len(model.arms)} modelled options, {n_boosters} boosters")
    print(f"  raw xgboost predict + pred_contribs (limit): {n / limit_s:10.0f} patients/s")
    print(f"  predict_frame (no explanations):             {n / predict_s:10.0f} patients/s  "
          f"ratio to limit {limit_s / predict_s:.2f}x")
    print(f"  predict_frame + top-3 reasons per option:    {n / explain_s:10.0f} patients/s  "
          f"ratio to limit {limit_s / explain_s:.2f}x (target >= 0.7x)")

    # 2. whole-job scaling
    env = {**os.environ, "MLFLOW_TRACKING_URI": world.tracking_uri}
    print(f"\n[scaling] whole job, local engine, --chunk-patients {args.chunk}, --explain-top 3")
    print(f"  {'patients':>10} {'wall s':>9} {'patients/s':>11} {'peak RSS MiB':>13}")
    runs: list[tuple[int, float, float]] = []  # (patients, patients/s, peak RSS MiB)
    for size in [int(s) for s in args.sizes.split(",") if s]:
        copies = -(-size // args.base)
        data = work / f"population-{size}"
        if data.is_dir():  # --workdir of an earlier run: its replicated input is reused
            n_patients = pq.read_metadata(data / "patients.parquet").num_rows
        else:
            n_patients = replicate(world.data, data, copies)
        out = work / f"out-{size}"
        cmd = [sys.executable, "-m", "pipeline.cli", "score", "--data", str(data), "--as-of", AS_OF,
               "--model", world.model_uri, "--out", str(out), "--chunk-patients", str(args.chunk),
               "--explain-top", "3", "--today", TODAY, "--no-progress"]
        if out.exists():
            shutil.rmtree(out)
        wall, rss, _ = peak_run(cmd, env)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"]["input_patients"] == n_patients
        runs.append((n_patients, n_patients / wall, rss))
        print(f"  {n_patients:>10} {wall:>9.1f} {n_patients / wall:>11.0f} {rss:>13.0f}   "
              f"(stage {manifest['timings']['stage_s']:.0f} s, validate {manifest['timings']['validate_s']:.0f} s, "
              f"features {manifest['timings']['features_s']:.0f} s, predict+explain "
              f"{manifest['timings']['predict_s']:.0f} s)")
    # 1.0 = linear scaling; the smallest runs are slower per patient because of fixed start-up costs
    for (a, ra, ma), (b, rb, mb) in zip(runs[:-1], runs[1:], strict=True):
        print(f"  {a:>10} -> {b:>10} patients: throughput x{rb / ra:.2f}, peak RSS {mb - ma:+.0f} MiB")


if __name__ == "__main__":
    main()
