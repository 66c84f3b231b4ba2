"""Input checks shared by the evaluation modules: every failure names the input, the first offending rows and the
rule they break (`EvaluationInputError`)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from models.evaluation.config import EvaluationInputError

# Probabilities are clipped to [eps, 1 - eps] before a log or a logit so that a confident 0 or 1 stays finite.
_PROB_EPS = 1e-15


def _fail(name: str, mask: np.ndarray, values: np.ndarray, rule: str) -> None:
    """Raise an EvaluationInputError listing up to five offending rows of `name`."""
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        return
    shown = ", ".join(f"row {r} = {values.reshape(len(mask), -1)[r].tolist()}" for r in rows[:5])
    more = f" (and {rows.size - 5} more rows)" if rows.size > 5 else ""
    raise EvaluationInputError(f"{name}: {rows.size} row(s) break the rule '{rule}': {shown}{more}")


def _to_float(values: object, name: str, ndim: int) -> np.ndarray:
    """Convert a list/array/Series/DataFrame to a float array of the expected dimension."""
    try:
        if isinstance(values, pd.Series | pd.DataFrame | pd.Index):
            arr = values.to_numpy(dtype=float, na_value=np.nan)
        else:
            arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise EvaluationInputError(f"{name}: rule 'numeric values' broken ({exc})") from exc
    if arr.ndim != ndim:
        raise EvaluationInputError(f"{name}: rule '{ndim}-dimensional' broken (got shape {arr.shape})")
    return arr


def _vector(values: ArrayLike, name: str, *, allow_nan: bool = False) -> np.ndarray:
    """A 1-D float vector; NaN/inf rejected unless allowed."""
    arr = _to_float(values, name, 1)
    if not allow_nan:
        _fail(name, ~np.isfinite(arr), arr, "a finite number is required")
    return arr


def _binary(values: ArrayLike, name: str = "y (observed response)") -> np.ndarray:
    """A 0/1 outcome vector (booleans allowed)."""
    arr = _vector(values, name)
    _fail(name, (arr != 0) & (arr != 1), arr, "binary outcome: 0 or 1")
    return arr


def _probability(values: ArrayLike, name: str = "p (predicted probability)") -> np.ndarray:
    """A probability vector with every value in [0, 1]."""
    arr = _vector(values, name)
    _fail(name, (arr < 0) | (arr > 1), arr, "probability in [0, 1]")
    return arr


def _matrix(values: ArrayLike, name: str, n: int | None = None) -> np.ndarray:
    """An (n, arms) float matrix, one column per option."""
    arr = _to_float(values, name, 2)
    if n is not None and arr.shape[0] != n:
        raise EvaluationInputError(
            f"{name}: rule 'one row per decision' broken ({arr.shape[0]} rows, expected {n})"
        )
    return arr


def _arm_index(values: ArrayLike, name: str, n: int, arms: int) -> np.ndarray:
    """An integer option index per decision, each in [0, arms)."""
    arr = _vector(values, name)
    if arr.shape[0] != n:
        raise EvaluationInputError(
            f"{name}: rule 'one row per decision' broken ({arr.shape[0]} rows, expected {n})"
        )
    _fail(name, (arr != np.round(arr)) | (arr < 0) | (arr >= arms), arr, f"an option index in 0..{arms - 1}")
    return arr.astype(np.intp)


def _same_length(**arrays: np.ndarray) -> int:
    """The common length of the given vectors, or an error naming the mismatch."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise EvaluationInputError(f"inputs must have one row per decision; got lengths {lengths}")
    return next(iter(lengths.values()))


def _logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p clipped away from 0 and 1."""
    q = np.clip(p, _PROB_EPS, 1 - _PROB_EPS)
    return np.log(q) - np.log1p(-q)


def _z(confidence_level: float) -> float:
    """Two-sided standard-normal quantile for a confidence level (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence_level / 2)
