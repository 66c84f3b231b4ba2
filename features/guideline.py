"""The guideline list's choice: the first eligible option in the configured order (`guideline` in
configs/options.yaml), the fixed comparison policy a personalised recommendation must beat.

One definition for every user: the simulator card (`simulator.card`) and the held-out evaluation
(`models.evaluation.policy`) both call `guideline_choice`, so the baselines they report are the same policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def guideline_choice(eligible: np.ndarray, options: Sequence[str], order: Sequence[str], control: str) -> np.ndarray:
    """Column index (into `options`) per decision of the first option of `order` that is eligible there, else the
    control. `eligible` is an (n, len(options)) boolean matrix; options of `order` not among `options` (e.g. not
    modelled) are skipped; an option left out of `order` is never chosen."""
    elig = np.asarray(eligible, dtype=bool)
    names = list(options)
    if elig.ndim != 2 or elig.shape[1] != len(names):
        raise ValueError(f"eligible: rule 'one column per option ({len(names)})' broken (got shape {elig.shape})")
    if control not in names:
        raise ValueError(f"control {control!r} is not one of the options {names}")
    pick = np.full(elig.shape[0], names.index(control), dtype=np.intp)
    chosen = np.zeros(elig.shape[0], dtype=bool)
    for name in order:
        if name not in names:
            continue
        j = names.index(name)
        take = ~chosen & elig[:, j]
        pick[take] = j
        chosen |= take
    return pick
