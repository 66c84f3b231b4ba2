"""One clinician page on the full cohort: time and peak memory of `escalate report --patient` (issue 15, item 7:
a page for one patient reads only that patient, ≤ 3 s and ≤ 400 MB on the 3,000-patient cohort).

Run: `python benchmarks/bench_report.py [--data data/cohort] [--patients SIM-000001 SIM-000004 …] [--as-of D]
[--today T] [--repeat 3] [--pycache /tmp/escalate-pyc] [--cli-only]` after `dvc repro` (needs the cohort and a
trained model: registry champion or data/train/model/). `--all N` instead times N pages as `report --all` builds
them, the model run once per batch of patients, against the model run for each page (pages per second and ratio).

First the whole command twice per patient, alternately: reading the registry without MLflow (the page's path now,
pipeline/registry_store.py) and through MLflow (`ESCALATE_REGISTRY_FAST_PATH=0`, the path before), with the ratio of
the two — on a shared machine compare the ratio, not only the seconds. `--pycache DIR` gives the measured commands a
bytecode cache (an environment with PYTHONDONTWRITEBYTECODE=1 and no `__pycache__` compiles every imported module
from source in every process, seconds of the total).

Each measurement runs in a fresh process so peak RSS is that page's own. Prints, per patient: the stages in this
process — reading and checking the patient's rows (Parquet, only that patient's rows kept), building the page
(features, predictions, SHAP), rendering — with the model already loaded (what a page server pays per request), the
peak RSS of a process that did only that (model from the registry; and from the local bundle with no MLflow in the
process), and the whole CLI run (interpreter start, imports and model loading included) with its peak
RSS; then the whole-cohort read the page used to do, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the child process: loads the model first (not timed), then times one page's stages and reports peak RSS (KB)
CHILD = r"""
import json, resource, sys, time
from datetime import date
from pathlib import Path
import pandas as pd
from pipeline.config import load_reference, quiet_library_notices
quiet_library_notices()
from pipeline import report as R
from pipeline.settings import load_settings
data, patient, as_of, today, whole = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1"
if sys.argv[6] == "1":  # the local bundle, no MLflow in the process
    import joblib
    loaded = R.LoadedModel(joblib.load("data/train/model/escalate_model.joblib"), "escalate-response", "local",
                           "data/train/model", json.loads(Path("data/train/run.json").read_text())["run_id"])
    evidence = R.load_evidence(loaded, load_settings(), use_mlflow=False)
else:
    loaded = R.load_model()
    evidence = R.load_evidence(loaded, load_settings())
monitoring, rules = load_reference("monitoring"), load_reference("clinical_rules")
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
raw = R.read_patient_tables(data, patient) if not whole else None
if whole:
    tables, violations = R.check_tables(__import__("pipeline.io", fromlist=["x"]).read_contract_tables(data), today)
else:
    tables, violations = R.check_tables(raw, today)
t1 = time.perf_counter()
page = R.build_patient_page(patient, pd.Timestamp(as_of), tables, loaded, monitoring, evidence,
                            findings=R.patient_findings(violations, patient), rules=rules)
t2 = time.perf_counter()
html = R.render_page(page)
t3 = time.perf_counter()
print(json.dumps({"read_check_s": t1 - t0, "build_s": t2 - t1, "render_s": t3 - t2, "page_s": t3 - t0,
                  "rss_before_mb": rss0 / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "bytes": len(html)}))
"""


def child(data: Path, patient: str, as_of: str, today: str, whole: bool = False, bundle: bool = False
          ) -> dict[str, float]:
    """One page's stage timings in a fresh process (model loaded before the clock starts: from the registry, or
    with `bundle` from data/train/model/ with no MLflow in the process)."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(data), patient, as_of, today, "1" if whole else "0",
                          "1" if bundle else "0"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_env(pycache: Path | None, mlflow: bool = False) -> dict[str, str]:
    """The environment of a measured process: with `pycache`, Python's bytecode cache in that folder (what any
    installed environment has; this one may set PYTHONDONTWRITEBYTECODE, and then every import compiles from
    source); with `mlflow`, the registry read through MLflow (`ESCALATE_REGISTRY_FAST_PATH=0`, the old path)."""
    env = dict(os.environ)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    if mlflow:
        env["ESCALATE_REGISTRY_FAST_PATH"] = "0"
    return env


def cli(data: Path, patient: str, as_of: str, today: str, env: dict[str, str] | None = None
        ) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, that process's own via wait4) of the whole `escalate report` command."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(Path(sys.executable).parent / "escalate"), "report", "--data", str(data),
                                 "--patient", patient, "--as-of", as_of, "--today", today, "--out", f"{tmp}/p.html"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"escalate report --patient {patient} failed with exit status {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024


def all_pages(data: Path, n: int, as_of: str, today: str) -> None:
    """`report --all`'s pages for its first n patients, built as it builds them (`pipeline.report.batched_pages`: the
    model once per batch) and, as the baseline, with the model run for each page alone; the pages must be identical.
    Prints pages/s of both and the ratio (model loaded and tables read before either clock)."""
    import pandas as pd

    from features.build import without_record_before
    from pipeline import report as R
    from pipeline.settings import load_settings

    when = pd.Timestamp(as_of)
    tables, violations = R._load_tables(data, today)
    loaded = R.load_model()
    evidence = R.load_evidence(loaded, load_settings())
    monitoring, rules = R.page_references()
    blank = set(without_record_before(tables["patients"], tables["assessments"], when)["patient_id"].astype(str))
    ids = sorted(set(tables["patients"]["patient_id"].astype(str)) - blank)[:n]  # as --all chooses them
    t0 = time.perf_counter()
    alone = [R.render_page(R.build_patient_page(pid, when, tables, loaded, monitoring, evidence, rules=rules,
                                                findings=R.patient_findings(violations, pid))) for pid in ids]
    t1 = time.perf_counter()
    batched = [R.render_page(page) for _, page in R.batched_pages(ids, when, tables, loaded, monitoring, evidence,
                                                                  violations, rules=rules)]
    t2 = time.perf_counter()
    same = sum(a == b for a, b in zip(alone, batched, strict=True))
    print(f"{len(ids)} pages as of {as_of} ({same} identical both ways), batches of {R.PAGES_PER_BATCH}")
    print(f"model run per page (before): {len(ids) / (t1 - t0):.2f} pages/s; once per batch (report --all now): "
          f"{len(ids) / (t2 - t1):.2f} pages/s; ratio {(t1 - t0) / (t2 - t1):.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "cohort")
    ap.add_argument("--patients", nargs="+", default=["SIM-000001", "SIM-000004", "SIM-000052"])
    ap.add_argument("--as-of", default="2026-06-01")
    ap.add_argument("--today", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--pycache", type=Path, default=None,
                    help="a folder for Python's bytecode cache in the measured CLI runs (warmed by one untimed run); "
                         "default: the environment as it is")
    ap.add_argument("--cli-only", action="store_true", help="only the whole-command rows (no stage split)")
    ap.add_argument("--all", type=int, default=0, metavar="N",
                    help="instead: N pages as `report --all` builds them (the model once per batch) against one "
                         "model run per page, in this process")
    args = ap.parse_args()
    if args.all:
        all_pages(args.data, args.all, args.as_of, args.today)
        return
    import pandas as pd

    n = len(pd.read_parquet(args.data / "patients.parquet", columns=["patient_id"]))
    bytecode = ("cached in " + str(args.pycache) if args.pycache is not None
                else "not cached (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE")
                else "as the environment has it")
    print(f"cohort {args.data}: {n} patients; as of {args.as_of}, today {args.today}; bytecode {bytecode}")
    fast_env, mlflow_env = child_env(args.pycache), child_env(args.pycache, mlflow=True)
    if args.pycache is not None:  # one untimed run of each path fills the cache
        for env in (mlflow_env, fast_env):
            cli(args.data, args.patients[0], args.as_of, args.today, env)
    print("the whole command, registry read without MLflow (now) and through MLflow (before), run alternately in "
          "this shell so both see the same machine load; ratio = now / before")
    print(f"{'patient':<12} {'CLI s':>6} {'CLI peak MB':>11} {'MLflow CLI s':>12} {'MLflow peak MB':>14} "
          f"{'time ratio':>10} {'RSS ratio':>9}")
    for pid in args.patients:
        for _ in range(args.repeat):
            s0, mb0 = cli(args.data, pid, args.as_of, args.today, mlflow_env)
            s, mb = cli(args.data, pid, args.as_of, args.today, fast_env)
            print(f"{pid:<12} {s:>6.2f} {mb:>11.0f} {s0:>12.2f} {mb0:>14.0f} {s / s0:>10.2f} {mb / mb0:>9.2f}")
    if args.cli_only:
        return
    print(f"{'patient':<12} {'read+check s':>12} {'build s':>8} {'render s':>8} {'page s':>7} {'page peak MB':>12} "
          f"{'no-MLflow peak MB':>17}")
    for pid in args.patients:
        for _ in range(args.repeat):
            r = child(args.data, pid, args.as_of, args.today)
            local = child(args.data, pid, args.as_of, args.today, bundle=True)
            print(f"{pid:<12} {r['read_check_s']:>12.2f} {r['build_s']:>8.2f} {r['render_s']:>8.2f} "
                  f"{r['page_s']:>7.2f} {r['peak_rss_mb']:>12.0f} {local['peak_rss_mb']:>17.0f}")
    r = child(args.data, args.patients[0], args.as_of, args.today, whole=True)
    print(f"for comparison, reading and checking the whole cohort for {args.patients[0]}: "
          f"{r['read_check_s']:.2f} s, page {r['page_s']:.2f} s, peak {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
