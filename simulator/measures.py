"""Latent muscle and skin activity → the IMACS core set, CDASI and safety labs, as a record would hold them.

Every measure is a noisy, rounded function of two latent activities in [0, 1] (muscle m, skin s) and a few
patient traits, so one latent trajectory drives all measures coherently. Noise comes in as standard normals so
that potential outcomes of different options can share it (common random numbers).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from simulator.config import MeasurementConfig

#: the core set measures scored on a VAS or index (ENZYMES follow), in the column order of the noise array.
CORE_MEASURES: tuple[str, ...] = ("physician_global", "patient_global", "mmt8", "haq", "extramuscular_global")
ENZYMES: tuple[str, ...] = ("ck", "aldolase", "ast", "alt", "ldh")
#: steps per unit each rating is recorded in (0.1 on the 0–10 globals, 1/8 on the HAQ-DI, whole CDASI points):
#: what `latent_to_measures` and the trial emulation's expected improvement round to (`round_to_steps`).
STEPS_PER_UNIT: dict[str, int] = {"physician_global": 10, "patient_global": 10, "extramuscular_global": 10, "haq": 8,
                                  "cdasi_activity": 1}
#: measures driven by latent activity, in the column order of the noise array `z`.
NOISE_COLUMNS: tuple[str, ...] = (*CORE_MEASURES, *ENZYMES, "cdasi_activity")
#: the per-patient traits `latent_to_measures` reads (see `measurement_traits`).
TRAIT_COLUMNS: tuple[str, ...] = (
    "patient_global_offset",
    "haq_offset",
    *(f"{e}_{what}" for e in ENZYMES for what in ("gain", "uln", "measured")),
)
SAFETY_LABS: tuple[str, ...] = ("neutrophils", "lymphocytes", "platelets", "haemoglobin", "creatinine")

#: the canonical unit each measure is exported with (mmt8 gets score_0_80 or score_0_150 per patient).
UNITS: dict[str, str] = {
    "physician_global": "cm",
    "patient_global": "cm",
    "haq": "score_0_3",
    "extramuscular_global": "cm",
    **dict.fromkeys(ENZYMES, "U/L"),
    "cdasi_activity": "score",
    "cdasi_damage": "score",
    "weight": "kg",
    "height": "cm",
    "neutrophils": "10^9/L",
    "lymphocytes": "10^9/L",
    "platelets": "10^9/L",
    "haemoglobin": "g/dL",
    "creatinine": "umol/L",
}


def measurement_traits(
    n: int, juvenile: np.ndarray, muscle_gain_scale: np.ndarray, config: MeasurementConfig, rng: np.random.Generator
) -> pd.DataFrame:
    """Per-patient measurement traits: MMT-8 scale, global offsets, enzyme panel, gains and ULNs, CDASI damage."""
    del juvenile  # same instruments for juvenile DM in this simulator
    traits: dict[str, np.ndarray] = {
        "patient_global_offset": rng.uniform(config.patient_global_offset.low, config.patient_global_offset.high, n),
        "haq_offset": rng.uniform(config.haq_offset.low, config.haq_offset.high, n),
        "cdasi_damage": np.round(rng.uniform(config.cdasi_damage.low, config.cdasi_damage.high, n)),
    }
    for enzyme in ENZYMES:
        gain = config.enzyme_gain.get(enzyme)
        low, high = (gain.low, gain.high) if gain else (1.0, 2.0)
        traits[f"{enzyme}_gain"] = rng.uniform(low, high, n) * muscle_gain_scale
        ulns = np.asarray(config.enzyme_uln.get(enzyme, (100.0,)), dtype=float)
        traits[f"{enzyme}_uln"] = ulns[rng.integers(0, len(ulns), n)]
        traits[f"{enzyme}_measured"] = rng.random(n) < config.enzyme_measured.get(enzyme, 1.0)
    return pd.DataFrame(traits)


def _col(values: np.ndarray, ndim: int) -> np.ndarray:
    """A per-patient vector shaped to broadcast against arrays of `ndim` dimensions (patients first)."""
    return np.asarray(values).reshape((-1,) + (1,) * (ndim - 1))


def latent_to_measures(
    muscle: np.ndarray,
    skin: np.ndarray,
    ild: np.ndarray,
    mmt8_scale: np.ndarray,
    traits: pd.DataFrame | Mapping[str, np.ndarray],
    z: np.ndarray,
    config: MeasurementConfig,
) -> dict[str, np.ndarray]:
    """Rounded core set, enzymes and CDASI activity for latent (muscle, skin) of any shape (patients first).

    `z` holds standard normals with a leading axis of len(NOISE_COLUMNS) (one contiguous block per measure)
    followed by a shape that broadcasts against `muscle`; per-patient inputs are vectors. Unmeasured enzymes of a
    patient's panel come back NaN. `traits` holds the TRAIT_COLUMNS per patient (a frame or a mapping of arrays).
    """
    nd = muscle.ndim
    m, s = np.clip(muscle, 0, 1), np.clip(skin, 0, 1)
    ild_x = _col(np.asarray(ild, dtype=float), nd)
    scale = _col(mmt8_scale, nd)
    zc = dict(zip(NOISE_COLUMNS, z, strict=True))
    out: dict[str, np.ndarray] = {}
    wm, ws = config.physician_global
    out["physician_global"] = _rounded(10 * (wm * m + ws * s) + config.physician_global_sd * zc["physician_global"], 10,
                                       "physician_global")
    wm, ws = config.patient_global
    pg = 10 * (wm * m + ws * s) + _col(np.asarray(traits["patient_global_offset"]), nd)
    pg += config.patient_global_sd * zc["patient_global"]
    out["patient_global"] = _rounded(pg, 10, "patient_global")
    mmt = scale * (1 - config.mmt8_loss_at_full_activity * m) + config.mmt8_sd_fraction * scale * zc["mmt8"]
    out["mmt8"] = np.round(np.clip(mmt, 0, scale))
    hm, hs = config.haq
    haq = _col(np.asarray(traits["haq_offset"]), nd) + hm * m + hs * s + config.haq_sd * zc["haq"]
    out["haq"] = _rounded(haq, 3, "haq")
    em, es, ei = config.extramuscular_global
    emg = 10 * (em * m + es * s + ei * ild_x) + config.extramuscular_global_sd * zc["extramuscular_global"]
    out["extramuscular_global"] = _rounded(emg, 10, "extramuscular_global")
    for enzyme in ENZYMES:
        gain = _col(np.asarray(traits[f"{enzyme}_gain"]), nd)
        uln = _col(np.asarray(traits[f"{enzyme}_uln"]), nd)
        value = gain * m + config.enzyme_log_sd * zc[enzyme]
        np.exp(value, out=value)
        value *= config.enzyme_ratio_at_rest
        value *= uln
        decimals = 1 if enzyme == "aldolase" else 0
        value = np.round(value, decimals, out=value)
        np.maximum(value, 10.0**-decimals, out=value)
        measured = _col(np.asarray(traits[f"{enzyme}_measured"]), nd)
        np.copyto(value, np.nan, where=~measured)
        out[enzyme] = value
    cd = config.cdasi_activity_at_full * s + config.cdasi_activity_sd * zc["cdasi_activity"]
    out["cdasi_activity"] = _rounded(cd, 100, "cdasi_activity")
    return out


def round_to_steps(values: np.ndarray, steps: int) -> np.ndarray:
    """Round to the nearest 1 / `steps`, in place (values is a fresh float temporary)."""
    values *= steps
    np.rint(values, out=values)
    values /= steps
    return values


def _rounded(values: np.ndarray, high: float, measure: str) -> np.ndarray:
    """Clip to [0, high] and round to the measure's recording steps (`STEPS_PER_UNIT`), in place (values is a
    fresh temporary)."""
    np.clip(values, 0, high, out=values)
    return round_to_steps(values, STEPS_PER_UNIT[measure])


def is_active(
    physician_global: np.ndarray,
    cdasi_activity: np.ndarray,
    mmt8: np.ndarray,
    mmt8_scale: np.ndarray,
    pga_min: float,
    cdasi_min: float,
    mmt8_below_fraction: float,
) -> np.ndarray:
    """Active disease at a visit: physician global ≥ 2 cm, CDASI activity ≥ 14, or MMT-8 < 90 % of its scale."""
    with np.errstate(invalid="ignore"):
        return (physician_global >= pga_min) | (cdasi_activity >= cdasi_min) | (mmt8 < mmt8_below_fraction * mmt8_scale)


def safety_labs(n: int, female: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Routine safety labs (CBC, creatinine) with realistic spread."""
    return {
        "neutrophils": np.round(np.clip(rng.normal(4.2, 1.2, n), 0.4, None), 1),
        "lymphocytes": np.round(np.clip(rng.normal(1.4, 0.5, n), 0.1, None), 1),
        "platelets": np.round(np.clip(rng.normal(250, 60, n), 20, None)),
        "haemoglobin": np.round(np.clip(rng.normal(np.where(female, 12.8, 14.2), 1.1), 6, None), 1),
        "creatinine": np.round(np.clip(rng.normal(np.where(female, 65, 80), 14), 25, None)),
    }
