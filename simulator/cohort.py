"""Simulated patients: sex, diagnosis, antibodies, ILD, cancer association, body size and disease phenotype.

Prevalences follow EuroMyositis and the antibody associations of docs/sources.md §5; every figure is a
setting in configs/simulator.yaml. Vectorised over patients.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

from simulator.config import CohortConfig, MeasurementConfig
from simulator.measures import measurement_traits

DM_DIAGNOSES = ("adult_dermatomyositis", "juvenile_dermatomyositis", "amyopathic_dermatomyositis")
PM_IMNM_DIAGNOSES = ("polymyositis", "immune_mediated_necrotising_myopathy", "antisynthetase_syndrome")
SYNTHETASE_ANTIBODIES = ("anti-Jo-1", "anti-PL-7", "anti-PL-12", "anti-EJ", "anti-OJ")


def sample_patients(
    n: int,
    config: CohortConfig,
    measurement: MeasurementConfig,
    rng: np.random.Generator,
    only_diagnosis: str | None = None,
) -> pd.DataFrame:
    """One row per patient with contract attributes (sex, diagnosis, antibodies, ILD, cancer) plus simulator
    traits (refractory muscle/skin activity, weight, height, MMT-8 scale, enzyme panel)."""
    names = list(config.diagnoses)
    if only_diagnosis is not None:
        if only_diagnosis not in config.diagnoses:
            raise ValueError(f"trial diagnosis {only_diagnosis!r} is not configured; known: {', '.join(names)}")
        diagnosis = np.full(n, only_diagnosis, dtype=object)
    else:
        shares = np.array([config.diagnoses[d].share for d in names], dtype=float)
        diagnosis = np.asarray(names, dtype=object)[rng.choice(len(names), n, p=shares / shares.sum())]
    female = rng.random(n) < config.female_fraction

    antibody = np.full(n, "negative", dtype=object)
    ild_p = np.zeros(n)
    cancer_p = np.zeros(n)
    juvenile = np.zeros(n, dtype=bool)
    muscle = np.zeros(n)
    skin = np.zeros(n)
    u_ab = rng.random(n)
    u_m, u_s = rng.random(n), rng.random(n)
    for name, profile in config.diagnoses.items():
        sel = diagnosis == name
        if not sel.any():
            continue
        edges = np.cumsum(list(profile.antibodies.values()))
        labels = np.asarray([*profile.antibodies, "negative"], dtype=object)
        antibody[sel] = labels[np.searchsorted(edges, u_ab[sel], side="right")]
        ild_p[sel] = profile.ild
        cancer_p[sel] = profile.cancer
        juvenile[sel] = profile.juvenile
        muscle[sel] = profile.muscle.low + u_m[sel] * (profile.muscle.high - profile.muscle.low)
        skin[sel] = profile.skin.low + u_s[sel] * (profile.skin.high - profile.skin.low)
    for ab, p in config.ild_by_antibody.items():
        ild_p[antibody == ab] = p
    ild = rng.random(n) < ild_p
    for ab, p in config.cancer_by_antibody.items():
        cancer_p[(antibody == ab) & ~juvenile] = p
    cancer_p = cancer_p * np.where(female, 1.0, config.cancer_male_rr) * np.where(ild, config.cancer_ild_rr, 1.0)
    cancer = rng.random(n) < np.clip(cancer_p, 0, 1)

    age_rng = np.where(juvenile, 0, 1)
    lows = np.array([config.juvenile_age_at_diagnosis.low, config.adult_age_at_diagnosis.low])[age_rng]
    highs = np.array([config.juvenile_age_at_diagnosis.high, config.adult_age_at_diagnosis.high])[age_rng]
    if config.age_shape == "uniform":
        age_at_diagnosis = rng.uniform(lows, highs)
    else:  # a single-peaked Beta(a, b) over the range (same number of draws: the inverse CDF of a uniform)
        a = np.where(juvenile, config.juvenile_age_beta[0], config.adult_age_beta[0])
        b = np.where(juvenile, config.juvenile_age_beta[1], config.adult_age_beta[1])
        age_at_diagnosis = lows + (highs - lows) * special.betaincinv(a, b, rng.uniform(0.0, 1.0, n))
    sex = np.where(female, "F", "M")
    w_low = np.where(female, config.weight_kg["F"].low, config.weight_kg["M"].low)
    w_high = np.where(female, config.weight_kg["F"].high, config.weight_kg["M"].high)
    h_low = np.where(female, config.height_cm["F"].low, config.height_cm["M"].low)
    h_high = np.where(female, config.height_cm["F"].high, config.height_cm["M"].high)
    weight = np.round(rng.uniform(w_low, w_high), 1)
    height = np.round(rng.uniform(h_low, h_high))
    adult_weight, adult_height = weight, height  # the grown-up size (simulator.body scales children from it)
    # juvenile DM: smaller at diagnosis; the simulator keeps body size constant (grown-up by the decision era
    # for most), so scale by a modest factor only for the youngest
    child = juvenile & (age_at_diagnosis < 12)
    weight = np.where(child, np.round(weight * 0.7, 1), weight)
    height = np.where(child, np.round(height * 0.9), height)

    pm_imnm = np.isin(diagnosis, PM_IMNM_DIAGNOSES)
    imnm = diagnosis == "immune_mediated_necrotising_myopathy"
    traits = measurement_traits(n, juvenile, np.where(imnm, 1.3, 1.0), measurement, rng)
    frame = pd.DataFrame(
        {
            "patient_id": [f"SIM-{i + 1:06d}" for i in range(n)],
            "sex": sex,
            "diagnosis": diagnosis.astype(str),
            "antibodies": antibody.astype(str),
            "ild": ild,
            "cancer_associated": cancer,
            "age_at_diagnosis": age_at_diagnosis,
            "juvenile": juvenile,
            "dermatomyositis": np.isin(diagnosis, DM_DIAGNOSES),
            "pm_imnm": pm_imnm,
            "anti_mda5": antibody == "anti-MDA5",
            "anti_synthetase": np.isin(antibody, SYNTHETASE_ANTIBODIES) | (diagnosis == "antisynthetase_syndrome"),
            "anti_mi2": antibody == "anti-Mi-2",
            "antibody_negative": antibody == "negative",
            "refractory_muscle": muscle,
            "refractory_skin": skin,
            "weight": weight,
            "height": height,
            "bsa": np.sqrt(weight * height / 3600.0),
            "adult_weight": adult_weight,
            "adult_height": adult_height,
            "mmt8_scale": np.where(rng.random(n) < config.mmt8_150_fraction, 150.0, 80.0),
        }
    )
    return pd.concat([frame, traits], axis=1)
