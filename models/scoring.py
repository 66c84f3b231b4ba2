"""Pure pieces of the batch scoring job: chunk planning, per-chunk output assembly, rejects and the invariant.

The job (`pipeline/score.py`) reads files and calls these; keeping them pure makes the chunk plan, the output
layout and the "every input patient scored or rejected, none lost, none twice" check testable on small frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from features.config import Frozen
from features.contract import identifier_faults

#: patient ids as the job meets them: an Arrow column (Parquet), a pandas column (CSV, contract output) or values.
PatientIds = pa.Array | pa.ChunkedArray | pd.Series | np.ndarray | Sequence[object]
#: the columns of `rejects.parquet`: which record broke which rule (`row` is the 0-based row of the input table).
REJECT_COLUMNS: tuple[str, ...] = ("patient_id", "table", "row", "column", "rule", "message")
#: the leading columns of every scored part file (the model's prediction and reason columns follow).
LEAD_COLUMNS: tuple[str, ...] = ("patient_id", "as_of", "option")
#: fixed key of the id hash that places rows of patients missing from `patients` into a chunk (stable across runs).
_HASH_KEY = "escalate-score01"  # 16 bytes, as pandas requires


class ScoreSettings(Frozen):
    """What decides a scoring run's output (chunking and explanation depth); part of the run's identity."""

    chunk_patients: int = Field(1000, ge=1, description="patients per chunk (bounds memory per chunk)")
    explain_top_k: int = Field(3, ge=0, le=20, description="reasons per option; 0 = no explanations")


def clean_ids(ids: PatientIds) -> pd.Series:
    """Patient ids as the contract normalises them: strings stripped of blanks; empty or missing → None (vectorised)."""
    return pd.Series(_trimmed(ids).to_numpy(zero_copy_only=False), dtype=object)


def _trimmed(ids: PatientIds) -> pa.Array:
    """Ids as Arrow text stripped of blanks (Arrow's trim, which pandas' Arrow-backed `str.strip` runs for the
    contract), null for a missing or blank id. Arrow input is cleaned without a Python string per row."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        ids = pa.array(pd.Series(ids, dtype=object).astype("string"))
    text = pc.utf8_trim_whitespace(ids.cast(pa.large_string()))
    return pc.if_else(pc.equal(pc.binary_length(text), 0), pa.scalar(None, pa.large_string()), text)


def _unfit(text: pa.Array) -> np.ndarray:
    """Ids fixed-width text cannot hold (features.contract's identifier rules): one with a NUL character would lose
    a trailing NUL and merge with another id, an overlong one would widen every id of the plan to its length. The
    contract rejects such a patient; the plan only has to place and count it."""
    faults = identifier_faults(text)
    return faults["identifier_nul"] | faults["identifier_too_long"]


def _hashed_chunks(ids: pa.Array, total: int) -> np.ndarray:
    """Chunk of each id outside the sorted plan: a fixed hash of the id (stable across runs and engines), so every
    row of one such patient lands in one chunk."""
    values = ids.to_numpy(zero_copy_only=False).astype(object)
    return (pd.util.hash_array(values, hash_key=_HASH_KEY) % np.uint64(total)).astype(np.int64)


def _fixed_width(text: pa.Array) -> np.ndarray:
    """Non-null Arrow text as fixed-width UTF-8 bytes (numpy `S`): compact, and byte order is code-point order.
    Built from Arrow's offsets and data buffers one byte column at a time (memory: the result plus one column)."""
    n = len(text)
    if not n:
        return np.empty(0, dtype="S1")
    text = text.cast(pa.large_string())
    _, offsets_buf, data_buf = text.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[text.offset:text.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, dtype=np.uint8)
    lengths = np.diff(offsets)
    width = max(int(lengths.max()), 1)
    out = np.zeros((n, width), dtype=np.uint8)
    starts = offsets[:-1]
    for j in range(width):
        has = lengths > j
        out[has, j] = data[starts[has] + j]
    return out.view(f"S{width}").ravel()


@dataclass(frozen=True)
class ChunkPlan:
    """The distinct (cleaned) patient ids, sorted, cut into chunks of `chunk_patients`: chunk c holds the ids at
    sorted positions [c * chunk_patients, (c + 1) * chunk_patients).

    Ids are kept as one fixed-width UTF-8 byte array (about 20 bytes a patient), so the plan of a million patients
    stays small and a row's chunk is a binary search, not a hash table of Python strings. `unfit`: the distinct ids
    that break the contract's identifier rules (a NUL character, too long), which fixed width cannot hold: placed by
    their hash like an unknown patient's rows, and still input patients of that chunk, which rejects them.
    """

    ids: np.ndarray
    chunk_patients: int
    unfit: pa.Array = field(default_factory=lambda: pa.array([], pa.large_string()))

    def __len__(self) -> int:
        return len(self.ids) + len(self.unfit)

    @property
    def total(self) -> int:
        """How many chunks (at least one, so an empty input still writes a complete, empty output)."""
        return n_chunks(len(self.ids), self.chunk_patients)

    def patients(self, chunk: int) -> np.ndarray:
        """The patient ids (str) planned for one chunk."""
        part = self.ids[int(chunk) * self.chunk_patients:(int(chunk) + 1) * self.chunk_patients]
        ids = np.char.decode(part, "utf-8").astype(object) if len(part) else np.empty(0, dtype=object)
        if len(self.unfit):
            unfit = self.unfit.filter(pa.array(_hashed_chunks(self.unfit, self.total) == int(chunk)))
            ids = np.concatenate([ids, unfit.to_numpy(zero_copy_only=False).astype(object)])
        return ids

    def sizes(self) -> np.ndarray:
        """Planned patients per chunk (length `total`)."""
        sizes = np.bincount(np.arange(len(self.ids)) // self.chunk_patients, minlength=self.total)
        return sizes + np.bincount(_hashed_chunks(self.unfit, self.total), minlength=self.total)

    def chunk_of(self, ids: PatientIds) -> np.ndarray:
        """Chunk of each row given its patient id: the plan's chunk; rows of patients absent from the plan (they
        break the contract: unknown patient) go to a chunk chosen by a fixed hash of the id; rows without an id go
        to chunk 0. Every row lands in exactly one chunk, so nothing is silently dropped."""
        text = _trimmed(ids)
        present = text.is_valid().to_numpy(zero_copy_only=False)
        chunk = np.zeros(len(text), dtype=np.int64)
        if not present.any():
            return chunk
        text = text.filter(present)
        placed = np.zeros(len(text), dtype=np.int64)
        found = np.zeros(len(text), dtype=bool)
        # an id longer than every planned one is no planned patient: never widened to fixed width (memory); nor is
        # an unfit one (fixed width would drop its trailing NUL and match another patient)
        fits = pc.less_equal(pc.binary_length(text), self.ids.itemsize if len(self.ids) else 0)
        fits = fits.to_numpy(zero_copy_only=False) & ~_unfit(text)
        if fits.any():
            wanted = _fixed_width(text.filter(fits))
            pos = np.searchsorted(self.ids, wanted)
            hit = pos < len(self.ids)
            hit[hit] = self.ids[pos[hit]] == wanted[hit]
            rows = np.flatnonzero(fits)[hit]
            found[rows], placed[rows] = True, pos[hit] // self.chunk_patients
        if not found.all():
            placed[~found] = _hashed_chunks(text.filter(~found), self.total)
        chunk[present] = placed
        return chunk


def plan_chunks(patient_ids: PatientIds, chunk_patients: int) -> ChunkPlan:
    """Deterministic chunk plan of the distinct cleaned patient ids; the same ids give the same plan whatever
    their order in the input. Arrow input (the job's) is planned without a Python string per patient. Ids that break
    the contract's identifier rules are kept apart (`ChunkPlan.unfit`): their chunk rejects them, the run goes on."""
    if chunk_patients < 1:
        raise ValueError(f"chunk_patients={chunk_patients} (rule: at least 1 patient per chunk)")
    text = _trimmed(patient_ids)
    unfit = pa.array(_unfit(text))
    distinct = pc.unique(text.filter(pc.invert(unfit)).drop_null())
    rejected = pc.unique(text.filter(unfit))
    del text
    ordered = distinct.take(pc.array_sort_indices(distinct))  # Arrow orders text by its UTF-8 bytes, as numpy does
    return ChunkPlan(ids=_fixed_width(ordered), chunk_patients=int(chunk_patients),
                     unfit=rejected.take(pc.array_sort_indices(rejected)))


def n_chunks(n_patients: int, chunk_patients: int) -> int:
    """How many chunks a plan of `n_patients` has (at least one)."""
    return max(1, -(-int(n_patients) // int(chunk_patients)))


def part_name(chunk: int) -> str:
    """File name of one chunk's scored rows (sortable, deterministic)."""
    return f"part-{int(chunk):05d}.parquet"


def rejects_from_violations(violations: pd.DataFrame, row_map: dict[str, np.ndarray] | None = None,
                            severity: str = "error") -> pd.DataFrame:
    """Rejects rows (patient_id, table, row, column, rule, message) from contract violations of one severity
    (errors: the rejects; warnings: what a scored patient's record lacks, e.g. a per-kg dose without a weight).

    `row_map[table]` maps a row position in the chunk's table back to the row of the input table.
    """
    chosen = violations[violations["severity"] == severity] if "severity" in violations else violations
    rows = chosen["row"].to_numpy(dtype="float64", na_value=np.nan)
    messages = chosen["message"].astype(str)
    if row_map is not None and len(chosen):
        mapped = np.full(len(chosen), np.nan)
        tables = chosen["table"].to_numpy(dtype=object)
        for table, rmap in row_map.items():
            rmap = np.asarray(rmap, dtype=np.int64)
            sel = (tables == table) & ~np.isnan(rows)
            if sel.any():
                mapped[sel] = rmap[rows[sel].astype(np.int64)]
            # a message naming another row of its own table (a duplicate's first copy) names the input's row too
            same = tables == table
            messages[same] = messages[same].str.replace(
                rf"\b{table} row (\d+)", lambda m, t=table, r=rmap: f"{t} row {r[int(m.group(1))]}", regex=True)
        rows = mapped
    out = pd.DataFrame({
        "patient_id": clean_ids(chosen["patient_id"].to_numpy(dtype=object)).to_numpy(dtype=object),
        "table": chosen["table"].astype(str).to_numpy(dtype=object),
        "row": pd.array(np.where(np.isnan(rows), 0, rows).astype(np.int64), dtype="Int64"),
        "column": chosen["column"].astype(str).to_numpy(dtype=object),
        "rule": chosen["rule"].astype(str).to_numpy(dtype=object),
        "message": messages.to_numpy(dtype=object),
    })
    out.loc[np.isnan(rows), "row"] = pd.NA
    return sort_rejects(out)


def sort_rejects(rejects: pd.DataFrame) -> pd.DataFrame:
    """Rejects in a fixed order (patient, table, row, column, rule) with plain string columns."""
    out = rejects[list(REJECT_COLUMNS)].copy()
    for col in ("patient_id", "table", "column", "rule", "message"):
        out[col] = out[col].astype(object)
    key = out.assign(_pid=out["patient_id"].fillna(""), _row=out["row"].astype("Float64").fillna(-1.0))
    order = key.sort_values(["_pid", "table", "_row", "column", "rule", "message"], kind="stable").index
    return out.loc[order].reset_index(drop=True)


def assemble_chunk(predictions: pd.DataFrame, option_order: Sequence[str]) -> pd.DataFrame:
    """One chunk's output: patient_id, as_of, option first, then the model's columns, rows sorted by patient and
    catalogue option order; drops the model's positional `row` and the derived `decision_id`."""
    missing = [c for c in LEAD_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"table predictions: missing column(s) {missing} (rule: the model's output contract)")
    frame = predictions.drop(columns=[c for c in ("row", "decision_id") if c in predictions.columns])
    rest = [c for c in frame.columns if c not in LEAD_COLUMNS]
    frame = frame[[*LEAD_COLUMNS, *rest]]
    rank = {o: i for i, o in enumerate(option_order)}
    unknown = ~frame["option"].isin(list(rank))
    if unknown.any():
        r = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ValueError(f"table predictions: row {r}, column 'option' is {frame['option'].iloc[r]!r} "
                         f"(rule: one of the catalogue options {list(option_order)})")
    order = np.lexsort((frame["option"].map(rank).to_numpy(dtype=np.int64),
                        frame["patient_id"].astype(str).to_numpy()))
    out = frame.iloc[order].reset_index(drop=True)
    out["patient_id"] = out["patient_id"].astype(str).astype(object)
    out["option"] = out["option"].astype(str).astype(object)
    return out


@dataclass(frozen=True)
class InvariantReport:
    """Counts behind the end-of-run invariant; `problems` lists every breach (empty = the invariant holds)."""

    input_patients: int
    scored_patients: int
    rejected_patients: int
    unknown_patients: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def for_chunk(self, chunk: int) -> InvariantReport:
        """The same report with each problem prefixed by the chunk it was found in."""
        return replace(self, problems=tuple(f"chunk {int(chunk)}: {p}" for p in self.problems))

    @staticmethod
    def combine(reports: Sequence[InvariantReport]) -> InvariantReport:
        """One report for a whole run from its chunks' reports (each patient is planned into exactly one chunk,
        and an unknown patient's rows are always placed in the same chunk, so the counts add up)."""
        return InvariantReport(
            input_patients=sum(r.input_patients for r in reports),
            scored_patients=sum(r.scored_patients for r in reports),
            rejected_patients=sum(r.rejected_patients for r in reports),
            unknown_patients=sum(r.unknown_patients for r in reports),
            problems=tuple(p for r in reports for p in r.problems),
        )


def rows_per_patient(scored: pd.DataFrame) -> pd.Series:
    """Output rows per scored patient id (what the invariant needs from one part file; small to keep)."""
    if not len(scored):
        return pd.Series(dtype=np.int64)
    return scored.groupby(clean_ids(scored["patient_id"]).to_numpy(dtype=object), sort=False).size()


def check_invariant(
    input_ids: pd.Series | np.ndarray,
    scored: pd.DataFrame | pd.Series,
    rejected_ids: pd.Series | np.ndarray,
    n_options: int,
) -> InvariantReport:
    """Every input patient is scored or rejected, never both, never twice; every scored patient has exactly one row
    per catalogue option. `scored` is the output rows or, for big runs, the rows per patient of each part
    concatenated. Rejected ids not among the input patients (rows of unknown patients) are counted apart.

    Problems name counts, never patient identifiers (they may reach logs).
    """
    inputs = pd.Index(clean_ids(input_ids).dropna().unique())
    if isinstance(scored, pd.DataFrame):
        scored = rows_per_patient(scored)
    rows_per = scored.groupby(level=0, sort=False).sum() if len(scored) else pd.Series(dtype=np.int64)
    scored_ids = pd.Index(rows_per.index)
    rejected = pd.Index(clean_ids(rejected_ids).dropna().unique())
    problems: list[str] = []
    lost = inputs.difference(scored_ids.union(rejected))
    if len(lost):
        problems.append(f"{len(lost)} input patient(s) neither scored nor rejected")
    both = scored_ids.intersection(rejected)
    if len(both):
        problems.append(f"{len(both)} patient(s) both scored and rejected")
    wrong = rows_per[rows_per != n_options]
    if len(wrong):
        problems.append(f"{len(wrong)} scored patient(s) without exactly {n_options} option rows "
                        f"(seen {sorted(set(wrong.tolist()))[:5]} rows): scored twice or partly")
    extra = scored_ids.difference(inputs)
    if len(extra):
        problems.append(f"{len(extra)} scored patient(s) not in the input patients table (or planned in another chunk)")
    unknown = rejected.difference(inputs)
    return InvariantReport(
        input_patients=len(inputs),
        scored_patients=len(scored_ids),
        rejected_patients=len(rejected.intersection(inputs)),
        unknown_patients=len(unknown),
        problems=tuple(problems),
    )


def predict_explained(model: object, features: pd.DataFrame, dictionary: pd.DataFrame, explain_top_k: int) -> pd.DataFrame:
    """The model's long per-option table for `features`, with top-k reasons per option when `explain_top_k` > 0:
    the bundle's own `predict_frame(..., explain_top_k=k)`, the one code path the registered pyfunc and the
    clinician page use too. `dictionary` labels the reasons only when the bundle stores no dictionary."""
    return model.predict_frame(features, explain_top_k=max(int(explain_top_k), 0), dictionary=dictionary)  # type: ignore[attr-defined]
