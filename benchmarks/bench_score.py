"""Benchmark of `escalate score`: patients/second with and without explanations against the raw xgboost limit,
and whole-job scaling with peak memory per population size.

1. Predict + explain versus the limit, on one feature matrix in this process: `predict_explained(..., k=0)` and
   `(..., k=3)` against raw xgboost work on the same rows — `predict` of every booster in the model plus
   `pred_contribs` of the boosters that are explained (response and safety full-data learners). Target: the
   predict+explain part runs at >= 0.7x of that limit.
2. Scaling: the whole job (`python -m pipeline.cli score`, local engine) at each size in `--sizes`, in a fresh
   process tree (the driver and its worker processes) whose summed PSS and RSS are sampled five times a second,
   beside each process's exact peak RSS from the manifest; inputs are a simulated base cohort replicated under new
   patient ids (simulating 100k+ patients directly takes hours), written as Parquet in row batches.

Run: `python benchmarks/bench_score.py [--sizes 10000,100000,1000000] [--base 300] [--rows 5000] [--workers 1]
[--chunks-per-worker 25]`;
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


def process_tree_mib(pid: int) -> dict[int, tuple[float, float]]:
    """{process: (PSS, RSS) in MiB} of `pid` and every process below it (the driver and its workers). PSS splits
    pages shared between processes among them, so its sum is the job's real footprint; an RSS sum counts shared
    pages once per process and overstates it."""
    from tests.model.test_score_job import _descendants

    found: dict[int, tuple[float, float]] = {}
    for p in {pid, *_descendants(pid)}:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ValueError):  # ended meanwhile
            continue
        found[p] = (int(fields["Pss"].split()[0]) / 1024, int(fields["Rss"].split()[0]) / 1024)
    return found


def peak_run(cmd: list[str], env: dict[str, str], every: float = 0.2) -> tuple[float, dict[str, float]]:
    """(wall seconds, peak memory) of one command's whole process tree, sampled every `every` s: the peak of the
    summed PSS with the driver's and the largest worker's PSS at that moment, and the peak of the summed RSS."""
    started = time.perf_counter()
    peak = {"pss": 0.0, "driver_pss": 0.0, "worker_pss": 0.0, "rss": 0.0}
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        while proc.poll() is None:
            tree = process_tree_mib(proc.pid)
            pss = sum(v[0] for v in tree.values())
            if pss > peak["pss"]:
                others = [v[0] for p, v in tree.items() if p != proc.pid]
                peak |= {"pss": pss, "driver_pss": tree.get(proc.pid, (0.0, 0.0))[0],
                         "worker_pss": max(others, default=0.0)}
            peak["rss"] = max(peak["rss"], sum(v[1] for v in tree.values()))
            time.sleep(every)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"score failed (exit code {proc.returncode}):\n{err.read()[-3000:]}")
    return time.perf_counter() - started, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated population sizes to scale over")
    parser.add_argument("--base", type=int, default=300, help="simulated base cohort (patients)")
    parser.add_argument("--rows", type=int, default=5000, help="rows of the predict/explain comparison")
    parser.add_argument("--chunk", type=int, default=2000, help="--chunk-patients of the scaling runs")
    parser.add_argument("--workers", type=int, default=1, help="--workers of the scaling runs (0 = in the driver)")
    parser.add_argument("--chunks-per-worker", type=int, default=25, help="--chunks-per-worker of the scaling runs")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from features.build import build_features
    from features.contract import MeasureCatalog, check
    from models.scoring import predict_explained
    from pipeline.chunks import load_model
    from pipeline.config import load_reference
    from pipeline.settings import load_settings
    from pipeline.simulate import build_inputs
    from tests.model.test_score_job import ScoringWorld, build_world

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-score-"))
    train = load_settings(ROOT / "params.yaml").train.model_dump()
    t = time.perf_counter()
    if (work / "world" / "mlflow.db").is_file():  # --workdir of an earlier run: reuse its cohort and model
        world = ScoringWorld(data=work / "world" / "data", tracking_uri=f"sqlite:///{work / 'world' / 'mlflow.db'}",
                             model_uri="models:/escalate-response@champion", version="1")
        os.environ["MLFLOW_TRACKING_URI"] = world.tracking_uri
        print(f"reusing the base cohort and model in {work / 'world'}")
    else:
        world = build_world(work / "world", n_patients=args.base, seed=11, train=train)
        print(f"base cohort {args.base} patients + model (params.yaml train:) in {time.perf_counter() - t:.0f} s")
    model = load_model(world.model_uri, world.tracking_uri)

    # 1. predict / explain versus raw xgboost on one feature matrix
    _, vocabulary, catalog = build_inputs()
    tables = {n: pd.read_parquet(world.data / f"{n}.parquet") for n in ("patients", "regimens", "assessments", "events")}
    result = check(tables, vocabulary, MeasureCatalog.from_config(load_reference("measures")), TODAY)
    keys = pd.DataFrame({"patient_id": result.normalised["patients"]["patient_id"], "as_of": pd.Timestamp(AS_OF)})
    fs = build_features(keys, result.normalised, vocabulary, catalog, model.feature_config())
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
    print(f"\n[scaling] whole job, local engine, --chunk-patients {args.chunk}, --explain-top 3, --workers "
          f"{args.workers}, --chunks-per-worker {args.chunks_per_worker}")
    print("  peak memory, MiB: PSS summed over the process tree (driver + largest worker at that moment), RSS summed;")
    print("  exact peak RSS (VmHWM) of the driver, of the largest worker and the median over worker processes")
    print(f"  {'patients':>10} {'wall s':>8} {'patients/s':>11} {'PSS (driver+worker)':>20} {'RSS':>6} {'driver':>7} "
          f"{'worker':>7} {'median':>7}")
    runs: list[tuple[int, float, float]] = []  # (patients, patients/s, peak PSS MiB)
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
               "--explain-top", "3", "--today", TODAY, "--no-progress", "--workers", str(args.workers),
               "--chunks-per-worker", str(args.chunks_per_worker)]
        if out.exists():
            shutil.rmtree(out)
        wall, peak = peak_run(cmd, env)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"]["input_patients"] == n_patients
        runs.append((n_patients, n_patients / wall, peak["pss"]))
        t = manifest["timings"]
        split = f"({peak['driver_pss']:.0f}+{peak['worker_pss']:.0f})"
        print(f"  {n_patients:>10} {wall:>8.1f} {n_patients / wall:>11.0f} {peak['pss']:>9.0f} {split:>10} "
              f"{peak['rss']:>6.0f} {t['driver_peak_rss_mib']:>7.0f} {t['worker_peak_rss_mib'] or 0:>7.0f} "
              f"{t['worker_median_peak_rss_mib'] or 0:>7.0f}   (stage {t['stage_s']:.0f} s, validate "
              f"{t['validate_s']:.0f} s, features {t['features_s']:.0f} s, predict+explain {t['predict_s']:.0f} s; "
              f"{manifest['chunks']['processes']} worker processes)")
    # 1.0 = linear scaling; the smallest runs are slower per patient because of fixed start-up costs
    for (a, ra, ma), (b, rb, mb) in zip(runs[:-1], runs[1:], strict=True):
        print(f"  {a:>10} -> {b:>10} patients: throughput x{rb / ra:.2f}, peak PSS {mb - ma:+.0f} MiB")


if __name__ == "__main__":
    main()
