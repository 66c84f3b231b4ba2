"""Patient-level train/test split: a patient's decisions never straddle the two sets.

Each patient id is hashed with a key derived from the seed, so the assignment is reproducible, independent of row
order, and stable when patients are added (an existing patient never changes set).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from features.config import SplitConfig


def patient_split(patient_ids: pd.Series, config: SplitConfig | None = None) -> pd.Series:
    """'train' or 'test' for each row, decided by its patient id alone (test with probability `test_fraction`)."""
    config = config or SplitConfig()
    ids = patient_ids.astype(str)
    uniques = pd.Index(pd.unique(ids))
    hash_key = hashlib.blake2b(str(config.seed).encode(), digest_size=8).hexdigest()  # 16 characters
    h = pd.util.hash_array(uniques.to_numpy(dtype=object), hash_key=hash_key, categorize=False)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
    test = u < config.test_fraction
    labels = np.where(test, "test", "train").astype(object)
    return pd.Series(labels[uniques.get_indexer(ids)], index=patient_ids.index, name="set")
