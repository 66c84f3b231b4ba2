"""Reading the contract tables and writing stage outputs atomically (a killed stage never leaves half a file)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import CONTRACT_COLUMNS, CONTRACT_TABLES

#: tables that may be absent from an export (then read as an empty table with the contract's columns).
OPTIONAL_TABLES: frozenset[str] = frozenset({"events"})


def read_table(path: Path) -> pd.DataFrame:
    """One table as written: Parquet with its own types, CSV with every cell a string (only empty cells missing)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    raise ValueError(f"{path}: contract tables are .parquet or .csv, not {path.suffix or 'no extension'}")


def read_contract_tables(directory: Path) -> dict[str, pd.DataFrame]:
    """The four contract tables of a folder: `<name>.parquet` preferred, else `<name>.csv`.

    A missing table is an error naming it, except `events` (no adverse events exported): an empty table.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"contract table folder {directory} does not exist")
    tables: dict[str, pd.DataFrame] = {}
    for name in CONTRACT_TABLES:
        candidates = [directory / f"{name}.parquet", directory / f"{name}.csv"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None:
            tables[name] = read_table(found)
        elif name in OPTIONAL_TABLES:
            tables[name] = pd.DataFrame({c.name: pd.Series(dtype=object) for c in CONTRACT_COLUMNS[name]})
        else:
            raise FileNotFoundError(
                f"contract table {name!r} not found in {directory}: expected {name}.parquet or {name}.csv"
            )
    return tables


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file next to `path` that replaces it only when the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write a frame to Parquet atomically (temp file + os.replace)."""
    with atomic_path(Path(path)) as tmp:
        df.to_parquet(tmp, index=False)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: frames as lists of records, NaN/NaT/NA as null, numpy scalars as Python numbers."""
    if isinstance(obj, pd.DataFrame):
        return [to_jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, pd.Series | pd.Index):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or obj is pd.NaT or obj is pd.NA:
        return None
    if isinstance(obj, pd.Timestamp | datetime | date):
        return obj.isoformat()
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return None if math.isnan(obj) or math.isinf(obj) else float(obj)
    return obj


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (temp file + os.replace); frames, numpy values and NaN are made plain first."""
    text = json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
