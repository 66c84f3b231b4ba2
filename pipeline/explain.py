"""`escalate explain`: global SHAP summaries of the trained model, per option, as DVC plots and in MLflow.

For a seeded sample of decision rows it explains every modelled option (response, contrast vs continue, safety)
with `models.explain`, then writes the mean |SHAP| per clinical feature (`mean_abs_shap.csv`, a DVC bar plot),
a bar and a beeswarm plot per option (PNG), and logs them to the training run in MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pipeline.config import one_thread_numerics

if TYPE_CHECKING:
    from pipeline.settings import Settings

FEATURES = Path("data/features/features.parquet")
DICTIONARY = Path("data/features/feature_dictionary.json")
MODEL_DIR = Path("data/train/model")
OUT = Path("data/explain")


@one_thread_numerics
def run_explain(params: Settings | Path = Path("params.yaml"), features: Path = FEATURES,
                dictionary: Path = DICTIONARY, model_dir: Path = MODEL_DIR, out: Path = OUT, sample: int = 2000,
                seed: int | None = None, mlflow_log: bool = True) -> None:
    """The stage: explain a seeded sample of rows (seed None: the settings' seed) and write the summaries."""
    import numpy as np
    import pandas as pd

    from features.vocabulary import Vocabulary
    from models import explain as E
    from pipeline.config import load_catalog
    from pipeline.io import write_csv, write_json
    from pipeline.registry_store import BUNDLE_FILE
    from pipeline.settings import resolve
    from pipeline.trained import check_features_fit, load_bundle

    seed = resolve(params).seed if seed is None else seed
    started = time.perf_counter()
    model = load_bundle(Path(model_dir) / BUNDLE_FILE)
    frame = pd.read_parquet(features)
    check_features_fit(model, frame.head(1), features)
    dict_frame = E.with_dose_targets(pd.read_json(dictionary, orient="records"),
                                     load_catalog("drugs", Vocabulary.from_config))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(frame), size=min(sample, len(frame)), replace=False))
    frame = frame.iloc[rows].reset_index(drop=True)
    X = model.contract.check(frame)
    ex = E.explain_model(model, frame)
    tables = []
    plots = Path(out) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for (target, option), s in ex.items.items():
        groups = E.feature_groups(s.columns, dict_frame)
        tables.append(E.mean_abs_shap(s, groups))
        if target in ("response", "contrast"):
            _plots(s, groups, X, plots / f"{target}_{option}", seed)
    table = pd.concat(tables, ignore_index=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_csv(table, Path(out) / "mean_abs_shap.csv")
    # no timing in the DVC output (same inputs, same bytes): it is printed instead
    summary = {"rows_explained": len(frame), "options": list(ex.arms), "learner": ex.learner, "seed": seed,
               "notes": list(ex.notes)}
    write_json(summary, Path(out) / "summary.json")
    if mlflow_log:
        _log(Path(out), model_dir)
    typer.echo(f"explained {len(frame)} rows x {len(ex.arms)} options in "
               f"{time.perf_counter() - started:.1f} s -> {out}")


def _plots(shap_values: object, groups: object, X: object, stem: Path, seed: int) -> None:
    """Bar (mean |SHAP| per clinical feature) and beeswarm (per model column, coloured by value) plots; the
    beeswarm's jitter is seeded, so the same inputs give the same PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import shap

    s, g = shap_values, groups
    grouped = g.group(s.values)  # type: ignore[attr-defined]
    imp = np.abs(grouped).mean(axis=0)
    order = np.argsort(imp)[-15:]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(order) + 1.2))
    ax.barh([g.group_labels[i] for i in order], imp[order], color="#0072B2")  # type: ignore[attr-defined]
    ax.set_xlabel(f"mean |SHAP| ({s.scale.replace('_', ' ')})")  # type: ignore[attr-defined]
    ax.set_title(f"{s.target}: {s.option.replace('_', ' ')}")  # type: ignore[attr-defined]
    fig.tight_layout()
    fig.savefig(f"{stem}_bar.png", dpi=110)
    plt.close(fig)
    n_cols = len(X.columns)  # type: ignore[attr-defined]
    explanation = shap.Explanation(
        values=s.values[:, :n_cols], base_values=s.base,  # type: ignore[attr-defined]
        data=X.to_numpy(dtype=float), feature_names=list(g.column_labels[:n_cols]),  # type: ignore[attr-defined]
    )
    # shap's beeswarm jitters the dots with numpy's global RNG (it takes no generator): seed it for this plot
    # only and restore the caller's state afterwards
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        shap.plots.beeswarm(explanation, max_display=15, show=False)
    finally:
        np.random.set_state(state)
    plt.gcf().set_size_inches(8, 6)
    plt.title(f"{s.target}: {s.option.replace('_', ' ')}")  # type: ignore[attr-defined]
    plt.tight_layout()
    plt.savefig(f"{stem}_beeswarm.png", dpi=110)
    plt.close("all")


def _log(out: Path, model_dir: Path) -> None:
    """Log the summaries into the training run (from data/train/run.json) or a new `explain` run."""
    import mlflow

    from pipeline import registry
    from pipeline.io import read_json

    registry.setup_mlflow()
    run_file = Path(model_dir).parent / "run.json"
    run_id = read_json(run_file).get("run_id") if run_file.is_file() else None
    if run_id and not registry.run_holds_bundle(run_id, Path(model_dir) / registry.BUNDLE_FILE):
        run_id = None  # run.json names the run of another model (restored by DVC): a run of its own instead
    with mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name="explain"):
        mlflow.log_artifact(str(out / "mean_abs_shap.csv"), artifact_path="explain")
        mlflow.log_artifact(str(out / "summary.json"), artifact_path="explain")
        mlflow.log_artifacts(str(out / "plots"), artifact_path="explain/plots")
