"""Clinical subgroups (antibody group, ILD, juvenile vs adult) and factual metrics by subgroup."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from models.evaluation.config import EvaluationConfig, EvaluationInputError
from models.evaluation.inputs import _binary, _probability, _same_length
from models.evaluation.metrics import factual_metrics
from models.response import is_juvenile

_ANTIBODY_GROUPS = (
    ("anti_mda5", "anti-MDA5"),
    ("anti_synthetase", "antisynthetase"),
    ("anti_tif1g", "anti-TIF1γ"),
    ("anti_nxp2", "anti-NXP2"),
    ("anti_mi2", "anti-Mi-2"),
    ("anti_sae", "anti-SAE"),
    ("anti_srp_hmgcr", "anti-SRP/HMGCR"),
    ("antibody_negative", "antibody negative"),
)


def clinical_subgroups(patients: pd.DataFrame, *, table: str = "patients") -> pd.DataFrame:
    """Subgroup labels per patient: antibody group, ILD and juvenile vs adult, from the normalised patients table.

    A patient with several antibodies is placed by clinical priority (MDA5 first, as it drives prognosis);
    unknown ILD becomes "ILD unknown" rather than being dropped.
    """
    needed = [c for c, _ in _ANTIBODY_GROUPS] + ["ild", "diagnosis", "patient_id"]
    missing = [c for c in needed if c not in patients.columns]
    if missing:
        raise EvaluationInputError(f"{table}: column(s) {missing} missing (rule: normalised patients table)")
    group = pd.Series("no antibody recorded", index=patients.index, dtype="object")
    for column, label in reversed(_ANTIBODY_GROUPS):
        group = group.mask(patients[column].fillna(False).astype(bool), label)
    ild = patients["ild"].astype("boolean")
    ild_label = pd.Series(
        np.select(
            [ild.eq(True).fillna(False), ild.eq(False).fillna(False)], ["ILD", "no ILD"], "ILD unknown"
        ),
        index=patients.index,
    )
    age = np.where(patients["diagnosis"].eq("juvenile_dermatomyositis"), "juvenile", "adult")
    return pd.DataFrame(
        {"patient_id": patients["patient_id"], "antibody_group": group, "ild": ild_label, "age_group": age},
        index=patients.index,
    )


def subgroup_metrics(
    y: ArrayLike,
    p: ArrayLike,
    groups: pd.Series | pd.DataFrame,
    *,
    min_n: int | None = None,
    config: EvaluationConfig | None = None,
) -> pd.DataFrame:
    """Factual metrics by subgroup: one row per (subgroup variable, level) with n, events and the metrics.

    `groups` holds labels aligned by position with y/p (a Series, or a DataFrame of several subgroup
    variables). Levels with fewer than `min_n` decisions get NaN metrics; missing labels form their own level.
    """
    cfg = config or EvaluationConfig()
    limit = cfg.subgroup_min_n if min_n is None else min_n
    yy, pp = _binary(y), _probability(p)
    n = _same_length(y=yy, p=pp)
    frame = groups.to_frame() if isinstance(groups, pd.Series) else groups
    out = []
    for variable, level, m in subgroup_scopes(frame, n)[1:]:  # [0] is everyone
        metrics = factual_metrics(yy[m], pp[m], cfg)
        if m.sum() < limit:
            metrics = {k: (v if k in ("n", "events", "observed_rate") else math.nan) for k, v in metrics.items()}
        out.append({"subgroup": variable, "level": level, **metrics, "enough_data": bool(m.sum() >= limit)})
    table = pd.DataFrame(out)
    table["n"] = table["n"].astype(int)
    table["events"] = table["events"].astype(int)
    return table


def subgroup_scopes(groups: pd.DataFrame | None, n: int) -> list[tuple[str, str, np.ndarray]]:
    """(subgroup, level, row mask): ("all", "all") for every decision, then each level of each subgroup variable of
    `groups` (labels aligned by position; a missing label is its own level, "(missing)")."""
    scopes = [("all", "all", np.ones(n, dtype=bool))]
    if groups is None:
        return scopes
    if len(groups) != n:
        raise EvaluationInputError(
            f"groups: rule 'one label per decision' broken ({len(groups)} labels, {n} decisions)"
        )
    for variable in groups.columns:
        labels = groups[variable].astype("object").where(groups[variable].notna(), "(missing)").to_numpy()
        labels = labels.astype(str)
        for level in np.unique(labels):
            scopes.append((str(variable), str(level), labels == level))
    return scopes


#: the feature table's antibody flags (one 0/1 column each), in `clinical_subgroups` order of lookup.
_ANTIBODY_COLUMNS = ("anti_mda5", "anti_tif1g", "anti_nxp2", "anti_mi2", "anti_sae", "anti_synthetase",
                     "anti_srp_hmgcr", "antibody_negative")


def subgroup_labels(features: pd.DataFrame) -> pd.DataFrame:
    """Antibody group, ILD and juvenile/adult per decision row, from the feature table's patient flags."""
    frame = pd.DataFrame({"patient_id": features["patient_id"].to_numpy()})
    for col in _ANTIBODY_COLUMNS:
        frame[col] = features[col].fillna(0).astype(bool).to_numpy() if col in features.columns else False
    frame["ild"] = features["ild"].astype("boolean").to_numpy() if "ild" in features.columns else pd.NA
    frame["diagnosis"] = np.where(is_juvenile(features), "juvenile_dermatomyositis", "other")
    return clinical_subgroups(frame, table="features").drop(columns="patient_id").reset_index(drop=True)
