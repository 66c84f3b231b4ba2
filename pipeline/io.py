"""Reading the contract tables and writing stage outputs atomically (a killed stage never leaves half a file)."""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import CONTRACT_COLUMNS, CONTRACT_TABLES
from features.vocabulary import repeated
from pipeline.cli_types import Refusal

#: tables that may be absent from an export (then read as an empty table with the contract's columns).
OPTIONAL_TABLES: frozenset[str] = frozenset({"events"})


class TableReadError(Refusal, ValueError):
    """A contract table file that cannot be read as the contract says; the message names the file, the likely
    cause (wrong separator, not UTF-8, UTF-16, truncated Parquet, ...) and ends with the rule broken (`rule`:
    unreadable_table unless a narrower one). A refusal: on the CLI one line, exit 2."""

    def __init__(self, message: str, rule: str | None = "unreadable_table") -> None:
        self.cause, self.rule = message, rule
        super().__init__(f"{message} (rule: {rule})" if rule else message)

    @classmethod
    def joined(cls, messages: Iterable[str], separator: str = "; ") -> TableReadError:
        """One error for several files, each message with its own rule."""
        return cls(separator.join(messages), rule=None)


#: bytes read to sniff a file's encoding and header; CSV files are also scanned in full for invalid UTF-8.
_SNIFF_BYTES = 1 << 16
_PARQUET_MAGIC = b"PAR1"


def check_readable(path: Path) -> list[str]:
    """The column names of one contract table file, after checking what makes a file unreadable (cheap: Parquet
    magic bytes and footer; for CSV the encoding of the whole file and the header's separator).

    Raises `TableReadError` naming the file and the likely cause. A UTF-8 byte-order mark is accepted silently.
    """
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise TableReadError(f"{path}: contract tables are .parquet or .csv, not {path.suffix or 'no extension'}")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
            f.seek(max(0, size - 4))
            tail = f.read(4)
    except OSError as err:
        raise TableReadError(f"{path}: cannot be opened ({err.strerror or err})") from err
    if size == 0:
        raise TableReadError(f"{path}: the file is empty (no header row)")
    names = _parquet_columns(path, head, tail) if path.suffix == ".parquet" else _csv_columns(path, head)
    twice = repeated(names)
    if twice:  # a reader would keep one of them, or rename the other, and its values would go unchecked
        raise TableReadError(f"{path}: column(s) {twice} appear more than once in the header; keep one of each",
                             rule="duplicate_column")
    return names


def _parquet_columns(path: Path, head: bytes, tail: bytes) -> list[str]:
    import pyarrow.parquet as pq

    if not head.startswith(_PARQUET_MAGIC):
        looks = " (it starts like text: a CSV named .parquet?)" if _looks_like_text(head) else ""
        raise TableReadError(f"{path}: not a Parquet file, it does not start with the Parquet magic bytes{looks}")
    if tail != _PARQUET_MAGIC:
        raise TableReadError(f"{path}: truncated Parquet file, the footer is missing (an interrupted copy or "
                             "export?); export the table again")
    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError subclasses with its own wording
        raise TableReadError(f"{path}: cannot be read as Parquet ({err}); export the table again") from err
    _check_id_type(path, schema)
    _check_scalar_columns(path, schema)
    return list(schema.names)


def _check_scalar_columns(path: Path, schema: Any) -> None:
    """Every Parquet column holds one value per cell: a list, record or map cell (antibodies as list<string>) has
    no spelling the contract's rules read, so the table is refused, naming the columns."""
    import pyarrow as pa

    def nested(kind: Any) -> bool:
        return pa.types.is_nested(kind) or pa.types.is_dictionary(kind) and nested(kind.value_type)

    found = [f"{f.name!r} ({f.type})" for f in schema if nested(f.type)]
    if found:
        raise TableReadError(f"{path}: column(s) {', '.join(found)} hold lists or records, not one value per cell; "
                             "store each as text, a number or a date (several antibodies as one text cell "
                             "separated by ';')", rule="nested_column")


def _check_id_type(path: Path, schema: Any) -> None:
    """A Parquet `patient_id` stored as text or whole numbers: ids stored as floating point (1.0) or dates have no
    one spelling every reader (contract, chunk plan, page) would agree on, so the table is refused."""
    import pyarrow as pa

    if "patient_id" not in schema.names:
        return
    kind = schema.field("patient_id").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
            or pa.types.is_null(kind) or pa.types.is_dictionary(kind) and pa.types.is_string(kind.value_type)):
        raise TableReadError(f"{path}: column 'patient_id' is stored as {kind}; store identifiers as text or whole "
                             "numbers", rule="identifier_type")


def _looks_like_text(head: bytes) -> bool:
    return b"\x00" not in head[:512] and all(b >= 9 for b in head[:512])


def _csv_columns(path: Path, head: bytes) -> list[str]:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head[:512]:
        raise TableReadError(f"{path}: the file is UTF-16 encoded (e.g. Excel's 'Unicode Text'), not UTF-8; "
                             "save it as 'CSV UTF-8 (comma delimited)'")
    _check_utf8(path)
    text = head.decode("utf-8", errors="ignore").removeprefix("\ufeff")
    header = text.splitlines()[0] if text.splitlines() else ""
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    wrong = max((";", "\t"), key=lambda sep: counts[sep])
    if counts[wrong] > counts[","]:
        name = "';' (semicolon)" if wrong == ";" else "tabs"
        raise TableReadError(
            f"{path}: fields are separated by {name}, not commas: the header splits into {counts[wrong] + 1} "
            f"columns at {name} and {counts[','] + 1} at commas; export it comma-separated with '.' as the decimal "
            "point (a ';'-separated export often writes decimal commas too)")
    import csv

    return next(csv.reader([header])) if header else []


def _check_utf8(path: Path) -> None:
    """Scan the whole file for invalid UTF-8, so the error names the line and the likely encoding."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                bad = chunk[err.start:err.start + 1]
                line += chunk[:err.start].count(b"\n")
                raise TableReadError(
                    f"{path}: not UTF-8: byte 0x{bad.hex().upper()} on line {line} (byte {offset + err.start}) "
                    f"cannot be decoded; it looks like Latin-1 / Windows-1252 (where it reads "
                    f"{bad.decode('cp1252', errors='replace')!r}); save the file as UTF-8") from None
            offset += len(chunk)
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise TableReadError(f"{path}: not UTF-8: the file ends inside a multi-byte character (truncated?); "
                                 "save the file as UTF-8") from None


def read_table(path: Path) -> pd.DataFrame:
    """One table as written: Parquet with its own types, CSV with every cell a string (only empty cells missing).

    Raises `TableReadError` naming the file and the likely cause when it cannot be read (see `check_readable`).
    """
    path = Path(path)
    check_readable(path)
    with _read_errors(path):
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, **CSV_AS_TEXT)


#: `pandas.read_csv` options reading every cell as written, as a string (only empty cells missing).
CSV_AS_TEXT: dict[str, Any] = {"dtype": str, "keep_default_na": False, "na_values": [""], "encoding": "utf-8-sig"}


def read_csv_text(path: Path, chunksize: int) -> Iterator[pd.DataFrame]:
    """A CSV table in frames of `chunksize` rows, every cell a string (`CSV_AS_TEXT`); a malformed file is a
    `TableReadError` naming the file and the line, whenever the reader meets it."""
    with _read_errors(path):
        yield from pd.read_csv(path, chunksize=chunksize, **CSV_AS_TEXT)


@contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """A table the reader cannot parse as a `TableReadError` naming the file and the likely cause."""
    try:
        yield
    except pd.errors.ParserError as err:
        raise TableReadError(f"{path}: not a well-formed CSV ({str(err).strip()}); a value containing a comma or a line break "
                             "must be quoted") from err
    except (OSError, ValueError) as err:
        raise TableReadError(f"{path}: cannot be read ({err})") from err


def table_paths(directory: Path) -> dict[str, Path | None]:
    """The file of each contract table in a folder: `<name>.parquet` preferred, else `<name>.csv`; None for an
    absent optional table. A missing folder or required table is a `FileNotFoundError` naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"contract table folder {directory} does not exist")
    paths: dict[str, Path | None] = {}
    for name in CONTRACT_TABLES:
        candidates = [directory / f"{name}.parquet", directory / f"{name}.csv"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None and name not in OPTIONAL_TABLES:
            raise FileNotFoundError(
                f"contract table {name!r} not found in {directory}: expected {name}.parquet or {name}.csv")
        paths[name] = found
    return paths


def load_contract_tables(directory: Path) -> tuple[dict[str, pd.DataFrame], dict[str, TableReadError]]:
    """The contract tables of a folder that can be read, and for each one that cannot, why (for
    `features.contract.check(..., unreadable=...)`: reported once with its rule, never cascading into other
    tables).

    An absent `events` table (no adverse events exported) is an empty table with the contract's columns.
    """
    tables: dict[str, pd.DataFrame] = {}
    unreadable: dict[str, TableReadError] = {}
    for name, path in table_paths(directory).items():
        if path is None:
            tables[name] = pd.DataFrame({c.name: pd.Series(dtype=object) for c in CONTRACT_COLUMNS[name]})
            continue
        try:
            tables[name] = read_table(path)
        except TableReadError as err:
            unreadable[name] = err
    return tables, unreadable


def read_contract_tables(directory: Path) -> dict[str, pd.DataFrame]:
    """The four contract tables of a folder: `<name>.parquet` preferred, else `<name>.csv`.

    A missing table is an error naming it, except `events` (no adverse events exported): an empty table. A file
    that cannot be read is a `TableReadError` naming every such file and its likely cause.
    """
    tables, unreadable = load_contract_tables(directory)
    if unreadable:
        raise TableReadError.joined(map(str, unreadable.values()), "\n")
    return tables


def _umask() -> int:
    """The process's file-creation mask (read by setting it, then put back: done once, at import)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file next to `path` that replaces it only when the block finishes without error, with the
    permissions writing `path` in place would leave: an existing file's own, else the umask's for a new file
    (mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(df: pd.DataFrame, path: Path, schema: Any = None) -> None:
    """Write a frame to Parquet atomically (temp file + os.replace); with `schema` (a `pyarrow.Schema`) the file
    has exactly that schema instead of the one Arrow infers from this frame's values."""
    with atomic_path(Path(path)) as tmp:
        if schema is None:
            df.to_parquet(tmp, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), tmp)


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


#: decimals of metrics and plot/metric tables: the 5th decimal differs between CPUs, the 4th survives.
METRIC_DIGITS = 4


def rounded(obj: Any, digits: int = METRIC_DIGITS) -> Any:
    """`obj` with every float (also inside mappings, sequences and frames) rounded to `digits` decimals
    (signed zeros made plain)."""
    if isinstance(obj, pd.DataFrame):
        floats = obj.select_dtypes("floating").columns
        return obj.assign(**{str(c): obj[c].round(digits) + 0.0 for c in floats}) if len(floats) else obj
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(rounded(v, digits) for v in obj)
    if isinstance(obj, float | np.floating) and math.isfinite(obj):
        return round(float(obj), digits) + 0.0  # + 0.0: no "-0.0" where another CPU gets "0.0"
    return obj


def read_json(path: Path) -> Any:
    """A JSON file written by `write_json` (UTF-8)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(obj: Any, path: Path, *, round_floats: bool = False) -> None:
    """Write JSON atomically (temp file + os.replace); frames, numpy values and NaN are made plain first.

    `round_floats`: floats at `METRIC_DIGITS` decimals (metrics: same bytes on another CPU)."""
    plain = to_jsonable(obj)
    text = json.dumps(rounded(plain) if round_floats else plain, indent=2, ensure_ascii=False, allow_nan=False)
    write_text(text + "\n", path)


def write_text(text: str, path: Path) -> None:
    """Write a text file atomically (temp file + os.replace)."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a table as CSV atomically with floats at `METRIC_DIGITS` decimals (plot and metric tables)."""
    with atomic_path(Path(path)) as tmp:
        rounded(frame).to_csv(tmp, index=False)
