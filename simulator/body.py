"""Body size over time: weight and height at any day of a simulated record (`body:` in configs/simulator.yaml).

Adults keep their height; their weight rises by a per-patient glucocorticoid gain over the first weeks of induction
and then plateaus. Children (juvenile DM) grow along standard age formulae scaled to their own adult size. Doses
written per kg or m² are converted with the size on the day a regimen row starts, as the contract's feature code
does with the weight measured on or before that day.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from simulator.config import BodyConfig

ADULT_AGE = 18.0


class BodySize(NamedTuple):
    """Per patient: adult weight (kg) and height (cm), age at diagnosis, diagnosis day, steroid gain (fraction)."""

    adult_weight: np.ndarray
    adult_height: np.ndarray
    age_at_diagnosis: np.ndarray
    diagnosis_day: np.ndarray
    gain: np.ndarray
    juvenile: np.ndarray
    config: BodyConfig


def child_reference(age: np.ndarray, config: BodyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Reference weight (kg) and height (cm) at `age` (years): APLS weight 2·age + 8 (1–5 y), 3·age + 7 (6–12 y),
    Weech height 6·age + 77 (2–12 y), then linear to the reference adult at 18; adult from 18 on."""
    a = np.clip(np.asarray(age, dtype=float), 1.0, ADULT_AGE)
    w12, h12 = 3 * 12 + 7, 6 * 12 + 77
    teen = (a - 12) / (ADULT_AGE - 12)
    weight = np.where(a < 6, 2 * a + 8, np.where(a < 12, 3 * a + 7, w12 + teen * (config.reference_adult_kg - w12)))
    height = np.where(a < 12, 6 * a + 77, h12 + teen * (config.reference_adult_cm - h12))
    return weight, height


def body_size(patients: pd.DataFrame, diagnosis_day: np.ndarray, config: BodyConfig, rng: np.random.Generator) -> BodySize:
    """Each patient's body-size trajectory; `patients` carries `adult_weight`, `adult_height`, `age_at_diagnosis`,
    `juvenile` (simulator.cohort.sample_patients)."""
    n = len(patients)
    gain = config.steroid_gain_mean + config.steroid_gain_sd * rng.standard_normal(n)
    return BodySize(
        patients["adult_weight"].to_numpy(float),
        patients["adult_height"].to_numpy(float),
        patients["age_at_diagnosis"].to_numpy(float),
        np.asarray(diagnosis_day, dtype=float),
        gain,
        patients["juvenile"].to_numpy(bool),
        config,
    )


def age_at(body: BodySize, patient: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Age in years of each `patient` on `day` (integer days relative to today)."""
    return body.age_at_diagnosis[patient] + (np.asarray(day, dtype=float) - body.diagnosis_day[patient]) / 365.25


def birth_year(diagnosis_dates: pd.DatetimeIndex, age_at_diagnosis: np.ndarray) -> np.ndarray:
    """The recorded year of birth: the diagnosis date (as a fractional year) minus the age at diagnosis. The
    diagnosis year minus whole years of age would put a patient born late in a year a year late, and their age at a
    decision (decision year − birth year, as the features compute it) up to two years off the age dosed by."""
    dx = diagnosis_dates.year.to_numpy() + (diagnosis_dates.day_of_year.to_numpy() - 1) / 365.25
    return np.floor(dx - np.asarray(age_at_diagnosis, dtype=float)).astype(np.int64)


def paediatric(body: BodySize | None, patient: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Juvenile DM patients still under 18 on `day` (dosed per kg or m²)."""
    if body is None:
        return np.zeros(len(patient), dtype=bool)
    return body.juvenile[patient] & (age_at(body, patient, day) < ADULT_AGE)


def size_at(body: BodySize, patient: np.ndarray, day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True weight (kg) and height (cm) of each `patient` on `day` (no measurement noise)."""
    cfg = body.config
    age = age_at(body, patient, day)
    ref_w, ref_h = child_reference(age, cfg)
    scale_w = np.where(age < ADULT_AGE, ref_w / cfg.reference_adult_kg, 1.0)
    scale_h = np.where(age < ADULT_AGE, ref_h / cfg.reference_adult_cm, 1.0)
    weeks = np.maximum(np.asarray(day, dtype=float) - body.diagnosis_day[patient], 0.0) / 7.0
    steroid = 1.0 + body.gain[patient] * np.minimum(weeks / cfg.steroid_gain_weeks, 1.0)
    return body.adult_weight[patient] * scale_w * steroid, body.adult_height[patient] * scale_h

