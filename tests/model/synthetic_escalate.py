"""A small synthetic cohort in the shape the feature stage writes (`features.parquet`, `decisions.parquet`,
the patient split), with a known structure: more active disease lowers the chance of response, IVIG and
rituximab help, and options already on the regimen are ineligible. Shared by the model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from features.vocabulary import OptionCatalog
from pipeline.config import load_reference

GENERICS = ("ivig", "rituximab", "cyclophosphamide", "abatacept", "tofacitinib", "baricitinib", "mycophenolate")
#: drugs the switch options stop or add (drawn from their own stream, so the cohort above is unchanged)
SWITCH_GENERICS = ("tocilizumab", "tacrolimus")
EFFECT = {  # log-odds of response added by each option
    "continue": 0.0,
    "optimise_dose": 0.3,
    "add_ivig": 1.2,
    "add_rituximab": 0.8,
    "add_cyclophosphamide": 0.5,
    "add_abatacept": 0.1,
    "add_jak_inhibitor": 0.9,
    "switch_tocilizumab_to_jak_inhibitor": 0.9,
    "switch_tocilizumab_to_abatacept": 0.1,
    "switch_mycophenolate_to_cyclophosphamide": 0.3,
    "switch_mycophenolate_to_tacrolimus": 0.2,
}


def catalog() -> OptionCatalog:
    """The project's option catalogue (configs/options.yaml)."""
    return OptionCatalog.from_config(load_reference("options"))


def make_cohort(n_patients: int = 240, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(features, decisions, split) for `n_patients` patients with 1-3 decisions each."""
    rng = np.random.default_rng(seed)
    cat = catalog()
    per = rng.integers(1, 4, n_patients)
    pid = np.repeat([f"P{i:05d}" for i in range(n_patients)], per)
    n = len(pid)
    visit = np.concatenate([np.arange(k) for k in per])
    as_of = pd.Timestamp("2022-01-01") + pd.to_timedelta(visit * 200 + rng.integers(0, 60, n), unit="D")
    birth_year = np.repeat(rng.integers(1950, 2005, n_patients), per)
    f = pd.DataFrame({
        "patient_id": pid,
        "decision_id": [f"{p}@{d:%Y-%m-%d}" for p, d in zip(pid, as_of, strict=True)],
        "as_of": as_of.astype("datetime64[ns]"),
    })
    f["physician_global"] = rng.uniform(2, 9, n)
    f["cdasi_activity"] = rng.uniform(5, 45, n)
    f["mmt8_percent"] = rng.uniform(50, 100, n)
    f["age_years"] = (as_of.year - birth_year).astype(float)
    f["anti_mda5"] = rng.random(n) < 0.15
    f["ild"] = rng.random(n) < 0.3
    f["diagnosis_juvenile_dermatomyositis"] = rng.random(n) < 0.1
    for g in GENERICS:
        f[f"on_{g}"] = (rng.random(n) < 0.25).astype(float)
    f["any_below_target"] = rng.random(n) < 0.5
    f.loc[rng.random(n) < 0.05, "cdasi_activity"] = np.nan  # missing measurements happen
    # the published effect modifiers configs/options.yaml names (their own draws: the cohort above is unchanged)
    extra = np.random.default_rng(seed + 1)
    f["cdasi_activity_latest"], f["mmt8_latest"] = f["cdasi_activity"], f["mmt8_percent"]
    f["cdasi_damage_latest"] = extra.integers(0, 12, n).astype(float)
    for flag, share in (("anti_synthetase", 0.15), ("anti_mi2", 0.1), ("antibody_negative", 0.2),
                        ("diagnosis_polymyositis", 0.1), ("diagnosis_immune_mediated_necrotising_myopathy", 0.05)):
        f[flag] = extra.random(n) < share
    f["diagnosis_adult_dermatomyositis"] = ~(f["diagnosis_juvenile_dermatomyositis"] | f["diagnosis_polymyositis"]
                                             | f["diagnosis_immune_mediated_necrotising_myopathy"])
    for g in SWITCH_GENERICS:
        f[f"on_{g}"] = (extra.random(n) < 0.15).astype(float)
    on = (*GENERICS, *SWITCH_GENERICS)
    eligible, reason = cat.eligibility(f[[f"on_{g}" for g in on]].set_axis(on, axis=1) > 0,
                                       f["any_below_target"])
    # clinicians choose among eligible options; abatacept is rarely chosen (too rare to model)
    weights = np.where(eligible.to_numpy(), 1.0, 0.0)
    weights[:, list(cat.names).index("continue")] = 2.0
    weights[:, list(cat.names).index("add_abatacept")] *= 0.02
    weights /= weights.sum(axis=1, keepdims=True)
    choice = (weights.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    option = np.asarray(cat.names)[choice]
    activity = (f["physician_global"] - 5) / 2 + (f["cdasi_activity"].fillna(25) - 25) / 15
    logit = 0.2 - 0.9 * activity + np.vectorize(EFFECT.get)(option)
    p = 1 / (1 + np.exp(-logit))
    tis = np.clip(60 * p + rng.normal(0, 12, n), 0, 100)
    tis[rng.random(n) < 0.05] = np.nan  # missed follow-up visit: no label
    safety = (rng.random(n) < 0.08 + 0.06 * (option != "continue")).astype(float)
    d = f[["patient_id", "decision_id", "as_of"]].copy()
    d["option_taken"] = option
    for name in cat.names:
        d[f"eligible_{name}"] = eligible[name].to_numpy()
        d[f"ineligible_reason_{name}"] = reason[name].to_numpy()
    d["total_improvement_score"] = tis
    d["response"] = (tis >= 40).astype(float)
    d.loc[np.isnan(tis), "response"] = np.nan
    d["safety_event"] = safety
    d["cdasi_change"] = rng.normal(-3, 4, n)
    pats = pd.unique(pid)
    test = set(pats[rng.random(len(pats)) < 0.25])
    split = pd.DataFrame({"patient_id": pats, "split": ["test" if p in test else "train" for p in pats]})
    return f, d, split


def birth_years(features: pd.DataFrame) -> set[int]:
    """The birth years behind the synthetic ages (for the privacy test)."""
    return set((features["as_of"].dt.year - features["age_years"]).astype(int))


TINY_TRAIN = {
    "learner": "t_learner",
    "safety_learner": "s_learner",
    "response_threshold": 40,
    "min_rows_per_option": 20,
    "booster": {"n_estimators": 25, "max_depth": 2, "learning_rate": 0.2, "n_jobs": 1},
    "calibration": {"method": "sigmoid", "n_folds": 2, "min_rows_per_arm": 20},
    "intervals": {"n_boot": 3, "level": 0.9},
}


def write_stage_inputs(root: Path, n_patients: int = 160, seed: int = 7, with_truth: bool = True,
                       train_overrides: dict | None = None, all_missing: tuple[str, ...] = (),
                       flags_as_numbers: bool = False) -> dict[str, Path]:
    """Write what `escalate features`/`split`/`simulate` would (features, decisions, split, optional truth)
    and a tiny params.yaml under `root`; returns the paths the stages take. `all_missing` adds features no patient
    has a value of (as `baricitinib_dose_fraction` when no patient of the cohort takes baricitinib);
    `flags_as_numbers` writes the yes/no features as 0/1 numbers, as `escalate features` does (else true/false)."""
    import yaml

    features, decisions, split = make_cohort(n_patients, seed)
    for name in all_missing:
        features[name] = np.nan
    flags = [c for c in features.columns if c.startswith("on_") or features[c].dtype == bool]
    if flags_as_numbers:
        features[flags] = features[flags].astype(float)
    paths = {"root": root, "features": root / "data/features", "split": root / "data/split",
             "train": root / "data/train", "evaluate": root / "data/evaluate", "cohort": root / "data/cohort"}
    for key in ("features", "split"):
        paths[key].mkdir(parents=True, exist_ok=True)
    features.to_parquet(paths["features"] / "features.parquet", index=False)
    decisions.to_parquet(paths["features"] / "decisions.parquet", index=False)
    # one entry per feature column, as `escalate features` writes it (the bundle labels its reasons from it)
    import json

    entries = [{"feature": c, "clinical_feature": c, "label": c.replace("_", " "),
                "unit": "0/1" if c in flags else ""}
               for c in features.columns if c not in ("patient_id", "decision_id", "as_of")]
    (paths["features"] / "feature_dictionary.json").write_text(json.dumps(entries), encoding="utf-8")
    split.rename(columns={"split": "set"}).to_parquet(paths["split"] / "split.parquet", index=False)
    if with_truth:
        truth = paths["cohort"] / "truth"
        truth.mkdir(parents=True, exist_ok=True)
        td, to = make_truth(features, decisions, seed)
        td.to_parquet(truth / "decisions.parquet", index=False)
        to.to_parquet(truth / "outcomes.parquet", index=False)
    params = {"seed": 11, "data": {"dir": str(paths["cohort"])}, "train": {**TINY_TRAIN, **(train_overrides or {})},
              "evaluation": {"propensity_floor": 0.02, "subgroup_min_n": 5}, "promote": {}}
    paths["params"] = root / "params.yaml"
    paths["params"].write_text(yaml.safe_dump(params), encoding="utf-8")
    return paths


def make_truth(features: pd.DataFrame, decisions: pd.DataFrame, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The simulator's truth tables for the synthetic cohort (true P(response) under every option)."""
    rng = np.random.default_rng(seed + 1)
    cat = catalog()
    n = len(features)
    td = pd.DataFrame({"decision_id": [f"T{i}" for i in range(n)], "patient_id": features["patient_id"],
                       "date": features["as_of"], "option_taken": decisions["option_taken"]})
    activity = (features["physician_global"] - 5) / 2 + (features["cdasi_activity"].fillna(25) - 25) / 15
    rows = []
    for name in cat.names:
        p = 1 / (1 + np.exp(-(0.2 - 0.9 * activity + EFFECT[name])))
        tis = np.clip(60 * p + rng.normal(0, 12, n), 0, 100)
        p_response = norm.cdf((60 * p - 40) / 12)  # P(TIS >= 40) with TIS = 60 p + N(0, 12²)
        rows.append(pd.DataFrame({"decision_id": td["decision_id"], "option": name,
                                  "eligible": decisions[f"eligible_{name}"].to_numpy(), "horizon_weeks": 24,
                                  "p_response": p_response, "tis": tis, "p_safety": 0.1, "safety_event": 0}))
    return td, pd.concat(rows, ignore_index=True)


def mlflow_store(root: Path) -> str:
    """A tracking URI for a fresh SQLite store under `root`, copied from a migrated template (creating the
    MLflow schema costs seconds of fsync-heavy migrations; the copy costs milliseconds)."""
    import fcntl
    import shutil
    import tempfile

    import mlflow

    template = Path(tempfile.gettempdir()) / f"escalate-mlflow-template-{mlflow.__version__}.db"
    with (template.with_suffix(".lock")).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers build the template once
        if not template.is_file():
            from mlflow.tracking import MlflowClient

            building = template.with_suffix(".building")
            building.unlink(missing_ok=True)
            MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments()
            building.replace(template)
    shutil.copyfile(template, root / "mlflow.db")
    return f"sqlite:///{root / 'mlflow.db'}"
