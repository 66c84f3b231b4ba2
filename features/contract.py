"""The data contract: check the four raw tables a record system exports and normalise them for every later stage.

`validate` lists every violation (never just the first) as a row naming table, row, column and rule;
`normalise` returns the normalised tables of docs/architecture.md for the rows free of errors; `reject_patients`
lets a caller drop whole patients with an error; `check` does all three in one call. Per-column rules (presence,
emptiness, types, ranges, code lists) are pandera schemas validated lazily; rules that span columns or tables
(units per measure, dates against birth and today, unknown patients, weight-based doses) are vectorised checks.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
from pydantic import Field

from features.config import EARLIEST_DAY, LATEST_DAY, Frozen
from features.vocabulary import DOSE_UNITS, Vocabulary, alias_index, body_surface_area, parse_intervals

CONTRACT_TABLES: tuple[str, ...] = ("patients", "regimens", "assessments", "events")

VIOLATION_COLUMNS: tuple[str, ...] = ("table", "row", "patient_id", "column", "rule", "severity", "message")

Severity = Literal["error", "warning"]
Kind = Literal[
    "id", "text", "date", "number", "integer", "sex", "diagnosis", "antibodies", "boolean", "drug", "dose_unit",
    "route", "interval", "measure", "unit", "event",
]

#: canonical spelling of each accepted dose unit (the keys of `vocabulary.DOSE_UNITS`, "²" written "2").
CANONICAL_DOSE_UNITS: dict[str, str] = {k: k.replace("²", "2") for k in DOSE_UNITS}


# --- reference data ----------------------------------------------------------------------------------------------
class UnitScale(Frozen):
    """A unit with its own range (MMT-8 is scored 0–80 or 0–150; the unit says which)."""

    min: float | None = None
    max: float | None = None
    scale_max: float | None = None


class Measure(Frozen):
    """One assessment measure: canonical unit, accepted units (value × factor → canonical), range."""

    label: str
    canonical: str
    units: dict[str, float]
    scales: dict[str, UnitScale] = Field(default_factory=dict)
    min: float | None = None
    max: float | None = None
    enzyme: bool = False
    aliases: tuple[str, ...] = ()


class Antibody(Frozen):
    flag: str
    aliases: tuple[str, ...] = ()


class MeasureCatalog(Frozen):
    """Measures, units, conversions and the code lists (with aliases) of `configs/measures.yaml`."""

    measures: dict[str, Measure]
    unit_aliases: dict[str, str] = Field(default_factory=dict)
    sex: dict[str, tuple[str, ...]]
    diagnosis: dict[str, tuple[str, ...]]
    antibodies: dict[str, Antibody]
    routes: dict[str, tuple[str, ...]]
    events: dict[str, tuple[str, ...]]
    booleans: dict[str, tuple[str, ...]]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MeasureCatalog:
        return cls.model_validate(dict(config))

    def model_post_init(self, __context: Any) -> None:
        indexes: dict[str, dict[str, Any]] = {
            "sex": _alias_index(self.sex),
            "diagnosis": _alias_index(self.diagnosis),
            "route": _alias_index(self.routes),
            "event": _alias_index(self.events),
            "measure": _alias_index({code: m.aliases for code, m in self.measures.items()}),
            "antibody": _alias_index({code: a.aliases for code, a in self.antibodies.items()}),
            "boolean": {k: v == "true" for k, v in _alias_index(self.booleans).items()},
        }
        object.__setattr__(self, "_indexes", indexes)
        object.__setattr__(self, "_unit_table", self._build_unit_table())

    def index(self, kind: str) -> dict[str, Any]:
        """Alias key (lower case, single blanks) → code for one code list: sex, diagnosis, route, event, ..."""
        return self._indexes[kind]  # type: ignore[attr-defined]

    def codes(self, kind: str) -> tuple[str, ...]:
        """The canonical codes of one code list, in configuration order."""
        source = {"sex": self.sex, "diagnosis": self.diagnosis, "route": self.routes, "event": self.events,
                  "measure": self.measures, "antibody": self.antibodies, "boolean": self.booleans}[kind]
        return tuple(source)

    @property
    def antibody_flags(self) -> tuple[str, ...]:
        """The normalised boolean antibody columns, in configuration order (no duplicates)."""
        return tuple(dict.fromkeys(a.flag for a in self.antibodies.values()))

    def unit_table(self) -> pd.DataFrame:
        """One row per (measure, accepted unit spelling): factor to canonical, range, output unit, scale_max."""
        return self._unit_table.copy()  # type: ignore[attr-defined]

    def _build_unit_table(self) -> pd.DataFrame:
        rows = []
        alias_to_unit: dict[str, list[str]] = {}
        for alias, unit in self.unit_aliases.items():
            alias_to_unit.setdefault(_unit_key(unit), []).append(_unit_key(alias))
        for code, m in self.measures.items():
            for unit, factor in m.units.items():
                scale = m.scales.get(unit)
                lo = scale.min if scale and scale.min is not None else m.min
                hi = scale.max if scale and scale.max is not None else m.max
                out_unit = unit if scale is not None else m.canonical
                for key in {_unit_key(unit), *alias_to_unit.get(_unit_key(unit), [])}:
                    rows.append({
                        "measure": code, "unit_key": key, "factor": float(factor),
                        "lo": np.nan if lo is None else float(lo), "hi": np.nan if hi is None else float(hi),
                        "out_unit": out_unit, "scale_max": scale.scale_max if scale and scale.scale_max else np.nan,
                        "enzyme": m.enzyme,
                    })
        return pd.DataFrame(rows)


def _key(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text).strip().lower())


def _unit_key(text: Any) -> str:
    return re.sub(r"\s+", "", str(text).strip().lower())


def _alias_index(codes: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    return alias_index(codes, _key)


# --- the columns of each table -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnSpec:
    """One contract column: its kind of value, whether the column must exist and whether a value may be empty."""

    name: str
    kind: Kind
    required: bool = True
    nullable: bool = False
    description: str = ""


CONTRACT_COLUMNS: dict[str, tuple[ColumnSpec, ...]] = {
    "patients": (
        ColumnSpec("patient_id", "id", description="identifier, unique in patients"),
        ColumnSpec("sex", "sex", description="F or M"),
        ColumnSpec("birth_year", "integer", description="four-digit year"),
        ColumnSpec("diagnosis", "diagnosis", description="diagnosis code"),
        ColumnSpec("diagnosis_date", "date", description="date of diagnosis"),
        ColumnSpec("antibodies", "antibodies", nullable=True, description="';'-separated antibodies; empty = not tested"),
        ColumnSpec("ild", "boolean", description="interstitial lung disease"),
        ColumnSpec("cancer_associated", "boolean", description="cancer-associated myositis"),
    ),
    "regimens": (
        ColumnSpec("patient_id", "id"),
        ColumnSpec("drug", "drug", description="as written: generic, brand, abbreviation"),
        ColumnSpec("dose", "number", description="dose per administration, > 0"),
        ColumnSpec("dose_unit", "dose_unit", description="mg, g, mg/kg, g/kg, mg/m2, g/m2"),
        ColumnSpec("route", "route", description="oral, intravenous, subcutaneous"),
        ColumnSpec("interval", "interval", description="schedule text"),
        ColumnSpec("start_date", "date"),
        ColumnSpec("end_date", "date", nullable=True, description="empty = ongoing"),
    ),
    "assessments": (
        ColumnSpec("patient_id", "id"),
        ColumnSpec("date", "date"),
        ColumnSpec("measure", "measure"),
        ColumnSpec("value", "number"),
        ColumnSpec("unit", "unit"),
        ColumnSpec("upper_limit_normal", "number", required=False, nullable=True,
                   description="required for muscle enzymes, same unit as the value"),
    ),
    "events": (
        ColumnSpec("patient_id", "id"),
        ColumnSpec("date", "date"),
        ColumnSpec("event", "event"),
        ColumnSpec("grade", "integer", required=False, nullable=True, description="1–4; required for cytopenia"),
        ColumnSpec("details", "text", required=False, nullable=True),
    ),
}

#: numeric ranges of single columns (inclusive unless the bound is marked exclusive); birth_year's upper bound is
#: the year of `today`.
_RANGES: dict[tuple[str, str], tuple[float | None, float | None, bool]] = {
    ("patients", "birth_year"): (EARLIEST_DAY.year, None, True),
    ("regimens", "dose"): (0, None, False),
    ("assessments", "upper_limit_normal"): (1, 100_000, True),  # U/L: no enzyme's limit of normal is below 1
    ("events", "grade"): (1, 4, True),
}

_CATEGORY_KINDS = {"sex": "sex", "diagnosis": "diagnosis", "route": "route", "event": "event",
                   "measure": "measure", "boolean": "boolean"}

#: normalised output columns (the shapes of docs/architecture.md "Normalised tables").
NORMALISED_COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": ("patient_id", "row", "sex", "birth_year", "diagnosis", "diagnosis_date", "antibodies", "ild",
                 "cancer_associated"),
    "regimens": ("patient_id", "row", "drug", "generic", "drug_class", "route", "dose", "dose_unit", "interval",
                 "doses_per_cycle", "cycle_days", "dose_mg", "daily_mg", "start_date", "end_date"),
    "assessments": ("patient_id", "row", "date", "measure", "value", "unit", "upper_limit_normal", "scale_max"),
    "events": ("patient_id", "row", "date", "event", "grade", "details"),
}


#: the longest patient id the contract accepts: an export's identifiers are short, a longer one is a broken cell
#: (and `escalate score` plans every id at the longest one's width).
MAX_ID_CHARS = 256


def identifier_faults(ids: pyarrow.Array) -> dict[str, np.ndarray]:
    """Which ids (Arrow text, trimmed) break an identifier rule, per rule: `identifier_nul` (a NUL character, which
    fixed-width text drops, merging two ids) and `identifier_too_long` (over `MAX_ID_CHARS` characters). Arrow in,
    so `escalate score` checks a million ids without a Python string each; a missing id breaks neither."""
    ids = ids.cast(pyarrow.large_string())
    nul = pc.fill_null(pc.match_substring(ids, "\x00"), False)
    long = pc.fill_null(pc.greater(pc.utf8_length(ids), MAX_ID_CHARS), False)
    return {"identifier_nul": nul.to_numpy(zero_copy_only=False),
            "identifier_too_long": long.to_numpy(zero_copy_only=False)}


def _id_fails(s: pd.Series, rule: str) -> pd.Series:
    """`identifier_faults` of one rule for a contract column, checked once per distinct id."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    bad = identifier_faults(pyarrow.array(pd.Series(uniques, dtype=object).astype("string")))[rule]
    return pd.Series(np.append(bad, False)[codes], index=s.index)


# --- parsing helpers (shared by the pandera checks and the normalisation) ---------------------------------------
def _blank_to_na(s: pd.Series) -> pd.Series:
    """Strings stripped; empty or blank strings become missing (a CSV cell of spaces is an empty cell). Categorical
    (Parquet dictionary) text is text: stripped the same way."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    if isinstance(s.dtype, pd.StringDtype):
        t = s.str.strip()
        return t.where(t != "", np.nan)
    if pd.api.types.is_object_dtype(s.dtype):
        return _map_unique(s, lambda v: (v.strip() or np.nan) if isinstance(v, str) else v)
    return s


def _map_unique(s: pd.Series, func: Callable[[Any], Any]) -> pd.Series:
    """`func` applied once per distinct non-missing value (exports repeat the same few spellings)."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)  # missing → -1 → the trailing NaN below
    mapped = np.array([*(func(u) for u in uniques), np.nan], dtype=object)
    return pd.Series(mapped[codes], index=s.index, name=s.name)  # dtype inferred, as Series.map does


#: the calendar a datetime64[ns] holds (a typo like 2300-01-01 is unreadable, never an overflow).
DATE_RANGE = (pd.Timestamp("1678-01-01"), pd.Timestamp(LATEST_DAY))


#: a written date: YYYY-MM-DD, then optionally a time part (with or without an offset), which is dropped.
_ISO_DAY = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s?(?:Z|[+-]\d{2}:?\d{2})?)?")


def _iso_day(value: Any) -> str | None:
    """The YYYY-MM-DD of a written date or a date object; None for anything else (numbers are not dates: an
    integer would otherwise be read as nanoseconds since 1970, and 20260101 is not the contract's spelling)."""
    if isinstance(value, str):
        found = _ISO_DAY.fullmatch(value.strip())
        return found.group(1) if found else None
    if isinstance(value, date):
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    return None


def parse_dates(s: pd.Series) -> pd.Series:
    """ISO dates (YYYY-MM-DD; a time part, offset included, is dropped: the day as written) or DATE/DATETIME
    values → datetime64[ns] calendar dates; NaT where unreadable — a number (20210105) included, never read as
    nanoseconds since 1970 — or outside `DATE_RANGE` (for the caller to count, never an overflow)."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_localize(None)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        out = s
    else:
        out = pd.to_datetime(_map_unique(s, _iso_day), errors="coerce", format="%Y-%m-%d")
    return within_calendar(out)


def within_calendar(dates: pd.Series) -> pd.Series:
    """Datetimes (any unit, naive) → datetime64[ns] days, NaT outside `DATE_RANGE`."""
    days = dates.dt.normalize()
    return days.where((days >= DATE_RANGE[0]) & (days <= DATE_RANGE[1])).astype("datetime64[ns]")


def parse_numbers(s: pd.Series) -> pd.Series:
    """Numbers as written (strings or numeric) → float64; NaN where unreadable or infinite (no measurement is).
    Booleans are not numbers."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return pd.Series(np.nan, index=s.index)
    x = s.astype("float64") if pd.api.types.is_numeric_dtype(s.dtype) else pd.to_numeric(s, errors="coerce")
    x = x.astype("float64")
    return x.where(np.isfinite(x))


def map_codes(s: pd.Series, index: Mapping[str, Any]) -> pd.Series:
    """Values → codes through an alias index (case-insensitive); NaN where missing or unknown."""
    return _map_unique(s, lambda u: index.get(_key(u), np.nan))


def _split_antibodies(s: pd.Series) -> pd.DataFrame:
    """One row per written antibody: columns `row` (index of s) and `token` (stripped text)."""
    tokens = s.dropna().astype(str).str.split(r"[;,]").explode().str.strip()
    tokens = tokens[tokens != ""]
    return pd.DataFrame({"row": tokens.index.to_numpy(), "token": tokens.to_numpy(dtype=object)})


# --- pandera schemas ---------------------------------------------------------------------------------------------
def contract_schema(
    table: str, vocabulary: Vocabulary, measures: MeasureCatalog, today: pd.Timestamp | None = None
) -> pa.DataFrameSchema:
    """The pandera schema of one raw table: column presence, empty values, types, single-column ranges, codes.

    Check names are the violation rule names; run it with `lazy=True` to collect every failure.
    """
    columns = {}
    for spec in CONTRACT_COLUMNS[table]:
        checks = _column_checks(table, spec, vocabulary, measures, today)
        columns[spec.name] = pa.Column(
            dtype=None,
            nullable=spec.nullable,
            required=spec.required,
            unique=(table == "patients" and spec.name == "patient_id"),
            report_duplicates="all",
            checks=checks,
        )
    return pa.DataFrameSchema(columns, name=table, coerce=False, strict=False)


def _passes(fails: Callable[[pd.Series], pd.Series], name: str) -> pa.Check:
    """A pandera check from a 'which values fail' function; missing values pass (emptiness is its own rule)."""
    return pa.Check(lambda s: ~(fails(s) & s.notna()), name=name, ignore_na=False)


def _column_checks(
    table: str, spec: ColumnSpec, vocabulary: Vocabulary, measures: MeasureCatalog, today: pd.Timestamp | None
) -> list[pa.Check]:
    kind = spec.kind
    checks: list[pa.Check] = []
    if kind == "date":
        checks.append(_passes(lambda s: parse_dates(s).isna(), "unparseable_date"))
    elif kind in ("number", "integer"):
        if kind == "integer":
            checks.append(_passes(lambda s: ~_is_whole(parse_numbers(s)), "unparseable_number"))
        else:
            checks.append(_passes(lambda s: parse_numbers(s).isna(), "unparseable_number"))
        bounds = _range(table, spec.name, today)
        if bounds is not None:
            checks.append(_passes(lambda s, b=bounds: _outside(parse_numbers(s), *b), "out_of_range"))
    elif kind in _CATEGORY_KINDS:
        index = measures.index(_CATEGORY_KINDS[kind])
        checks.append(_passes(lambda s, ix=index: map_codes(s, ix).isna(), "unknown_category"))
    elif kind == "antibodies":
        index = measures.index("antibody")

        def unknown_antibody(s: pd.Series) -> pd.Series:
            tokens = _split_antibodies(s)
            bad = tokens.loc[map_codes(tokens["token"], index).isna(), "row"]
            return pd.Series(s.index.isin(bad), index=s.index)

        checks.append(_passes(unknown_antibody, "unknown_category"))
    elif kind == "drug":
        checks.append(_passes(lambda s: vocabulary.lookup_many(s).isna(), "unknown_drug"))
    elif kind == "dose_unit":
        checks.append(_passes(lambda s: map_codes(s, _DOSE_UNIT_INDEX).isna(), "unknown_dose_unit"))
    elif kind == "interval":
        checks.append(_passes(lambda s: parse_intervals(s.astype("object"))["cycle_days"].isna(),
                              "unreadable_interval"))
    elif kind == "id":
        checks.extend(_passes(lambda s, r=rule: _id_fails(s, r), rule)
                      for rule in ("identifier_nul", "identifier_too_long"))
    return checks


_DOSE_UNIT_INDEX = {_key(k): v for k, v in CANONICAL_DOSE_UNITS.items()}


def _is_whole(x: pd.Series) -> pd.Series:
    return x.notna() & (np.floor(x) == x)


def _range(table: str, column: str, today: pd.Timestamp | None) -> tuple[float | None, float | None, bool] | None:
    bounds = _RANGES.get((table, column))
    if bounds is None:
        return None
    lo, hi, lo_inclusive = bounds
    if (table, column) == ("patients", "birth_year") and today is not None:
        hi = float(today.year)
    return lo, hi, lo_inclusive


def _outside(x: pd.Series, lo: float | None, hi: float | None, lo_inclusive: bool = True) -> pd.Series:
    bad = pd.Series(False, index=x.index)
    if lo is not None:
        bad |= (x < lo) if lo_inclusive else (x <= lo)
    if hi is not None:
        bad |= x > hi
    return bad.fillna(False).astype(bool)


# --- validation --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Analysis:
    """Parsed tables (row = position in the input) and every violation found."""

    parsed: dict[str, pd.DataFrame]
    violations: pd.DataFrame
    broken_tables: frozenset[str]


def validate(
    tables: Mapping[str, pd.DataFrame],
    vocabulary: Vocabulary,
    measures: MeasureCatalog,
    today: date | pd.Timestamp | str | None,
    unreadable: Mapping[str, str | Exception] | None = None,
) -> pd.DataFrame:
    """Every violation of the contract as one row: `table, row, patient_id, column, rule, severity, message`.

    `row` is the 0-based row of the input table (missing for a whole-table finding such as a missing column).
    `unreadable`: table → why its file could not be read (one finding, rule `unreadable_table` unless the reason
    carries a narrower `rule`, as `pipeline.io.TableReadError` does; the table may be absent).
    """
    return _analyse(tables, vocabulary, measures, today, unreadable).violations


def _analyse(
    tables: Mapping[str, pd.DataFrame],
    vocabulary: Vocabulary,
    measures: MeasureCatalog,
    today: date | pd.Timestamp | str | None,
    unreadable: Mapping[str, str | Exception] | None = None,
) -> _Analysis:
    today_ts = None if today is None else pd.Timestamp(today).normalize()
    unreadable = dict(unreadable or {})
    missing_tables = [t for t in CONTRACT_TABLES if t not in tables and t not in unreadable]
    if missing_tables:
        raise KeyError(f"contract tables missing: {', '.join(missing_tables)} (expected {', '.join(CONTRACT_TABLES)})")
    # an unreadable table is one finding and an empty table: nothing in it can cascade into row findings
    raw = {t: _prepare(tables[t]) if t not in unreadable else _empty_table(t) for t in CONTRACT_TABLES}
    found: list[pd.DataFrame | None] = [_unreadable_findings(unreadable)]
    broken: set[str] = {t for t in unreadable if t in CONTRACT_TABLES}
    for t in CONTRACT_TABLES:
        schema = contract_schema(t, vocabulary, measures, today_ts)
        cases = _schema_failures(schema, raw[t])
        found.append(_describe_failures(t, cases, raw[t], vocabulary, measures, today_ts))
        missing = {c for c in cases.loc[cases["rule"] == "missing_column", "column"]}
        if any(spec.required and spec.name in missing for spec in CONTRACT_COLUMNS[t]):
            broken.add(t)
        if t in _DUPLICATE_SEVERITY and t not in broken:
            found.append(_duplicate_rows(t, raw[t]))
    parsed = {t: _parse_table(t, raw[t], vocabulary, measures) for t in CONTRACT_TABLES}
    found.extend(_cross_checks(parsed, raw, measures, today_ts, broken))
    violations = _assemble(found)
    # dose in mg needs body size from valid assessments only, so it comes after the row errors are known
    parsed["regimens"], body_size = _resolve_doses(parsed, violations, broken)
    violations = _assemble([violations, body_size, _implausible_doses(parsed["regimens"], vocabulary)])
    return _Analysis(parsed=parsed, violations=violations, broken_tables=frozenset(broken))


def _empty_table(table: str) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series(dtype=object) for c in CONTRACT_COLUMNS[table]})


def _unreadable_findings(unreadable: Mapping[str, str | Exception]) -> pd.DataFrame | None:
    """One whole-table finding per file that could not be read, with its cause and rule."""
    if not unreadable:
        return None
    return pd.DataFrame({
        "table": list(unreadable), "row": pd.array([pd.NA] * len(unreadable), dtype="Int64"),
        "patient_id": None, "column": None,
        "rule": [getattr(why, "rule", None) or "unreadable_table" for why in unreadable.values()],
        "severity": "error",
        "message": [f"the {t} table cannot be read: {getattr(why, 'cause', why)}" for t, why in unreadable.items()],
    })


#: exact duplicate rows: a repeated regimen double-counts its dose (summed per drug), so it is an error; a
#: repeated assessment changes no value (same-day values are averaged), so it is a warning.
_DUPLICATE_SEVERITY: dict[str, Severity] = {"regimens": "error", "assessments": "warning"}


def _duplicate_rows(table: str, raw: pd.DataFrame) -> pd.DataFrame | None:
    """Each row that repeats an earlier row in every column, naming the first copy."""
    if raw.empty or raw.columns.empty:
        return None
    try:
        dup = raw.duplicated(keep="first")
    except TypeError:  # unhashable cells (a Parquet list column): not a contract column, nothing to compare
        return None
    if not dup.any():
        return None
    first = raw.groupby(list(raw.columns), dropna=False, sort=False).ngroup()
    first_row = pd.Series(raw.index, index=raw.index).groupby(first).transform("min")
    frame = pd.DataFrame({"row": raw.index.to_numpy(), "first": first_row.to_numpy(),
                          "patient_id": _patient_at(raw, pd.Series(raw.index))}, index=raw.index)
    why = "double-counts its dose" if table == "regimens" else "is counted twice"
    return _finding(table, frame, dup, "*", "duplicate_row",
                    lambda f: f"exact copy of {table} row " + f["first"].astype(str)
                    + f" (every column equal); a repeated record {why}: delete one",
                    severity=_DUPLICATE_SEVERITY[table])


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Positional index (= the violation's `row`), stripped strings, blanks as missing."""
    out = df.reset_index(drop=True).copy()
    for c in out.columns:
        out[c] = _blank_to_na(out[c])
    return out


def _schema_failures(schema: pa.DataFrameSchema, df: pd.DataFrame) -> pd.DataFrame:
    """Run the schema lazily; pandera's failure cases as `rule, column, row, value`."""
    empty = pd.DataFrame({"rule": pd.Series(dtype=object), "column": pd.Series(dtype=object),
                          "row": pd.Series(dtype="Int64"), "value": pd.Series(dtype=object)})
    try:
        schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        fc = err.failure_cases
    else:
        return empty
    rule = fc["check"].astype(str).replace({
        "column_in_dataframe": "missing_column", "not_nullable": "required", "field_uniqueness": "duplicate_patient",
    })
    is_missing_column = rule == "missing_column"
    column = fc["column"].astype(object).where(~is_missing_column, fc["failure_case"])
    out = pd.DataFrame({
        "rule": rule.to_numpy(dtype=object),
        "column": column.to_numpy(dtype=object),
        "row": pd.to_numeric(fc["index"], errors="coerce").astype("Int64").to_numpy(),
        "value": fc["failure_case"].astype(object).to_numpy(),
    })
    # pandera also reports a missing value as not unique; emptiness is already its own finding
    out = out[~((out["rule"] == "duplicate_patient") & out["value"].isna())]
    return out.drop_duplicates(subset=["rule", "column", "row"]).reset_index(drop=True)


def _describe_failures(
    table: str,
    cases: pd.DataFrame,
    raw: pd.DataFrame,
    vocabulary: Vocabulary,
    measures: MeasureCatalog,
    today: pd.Timestamp | None,
) -> pd.DataFrame | None:
    """Violation rows with a clinician-readable message for each pandera failure case."""
    if cases.empty:
        return None
    messages = []
    closest_cache: dict[str, str] = {}
    unexpected = [str(c) for c in raw.columns if (table, str(c)) not in _KIND_OF]
    for rule, column, value in zip(cases["rule"], cases["column"], cases["value"], strict=True):
        if rule == "missing_column":
            hint = near_miss(str(value), unexpected)
            messages.append(f"required column {value!r} is missing from the {table} table"
                            + (f"; did you mean {hint!r}? (rename it to {value!r})" if hint else ""))
            continue
        messages.append(_message(table, rule, column, value, vocabulary, measures, today, closest_cache))
    row = cases["row"]
    patient = _patient_at(raw, row)
    return pd.DataFrame({
        "table": table, "row": row.to_numpy(), "patient_id": patient, "column": cases["column"].to_numpy(),
        "rule": cases["rule"].to_numpy(), "severity": "error", "message": messages,
    })


def near_miss(name: str, candidates: list[str]) -> str | None:
    """The candidate column a missing column was most likely written as: equal but for case, blanks, '-' or '_',
    else the closest spelling (difflib), else None. For a `did you mean …?` hint."""
    def squash(text: str) -> str:
        return re.sub(r"[\s_\-.]+", "", text.strip().lower())

    same = [c for c in candidates if squash(c) == squash(name)]
    if same:
        return same[0]
    by_key = {squash(c): c for c in candidates}
    close = difflib.get_close_matches(squash(name), list(by_key), n=1, cutoff=0.75)
    return by_key[close[0]] if close else None


def _patient_at(raw: pd.DataFrame, rows: pd.Series) -> np.ndarray:
    if "patient_id" not in raw.columns:
        return np.full(len(rows), None, dtype=object)
    ids = raw["patient_id"].astype("object").to_numpy()
    r = rows.to_numpy(dtype="float64", na_value=np.nan)
    ok = ~np.isnan(r)
    out = np.full(len(rows), None, dtype=object)
    out[ok] = [None if pd.isna(v) else str(v) for v in ids[r[ok].astype(int)]]
    return out


_KIND_OF = {(t, s.name): s.kind for t, specs in CONTRACT_COLUMNS.items() for s in specs}


def _message(
    table: str,
    rule: str,
    column: str,
    value: Any,
    vocabulary: Vocabulary,
    measures: MeasureCatalog,
    today: pd.Timestamp | None,
    closest_cache: dict[str, str],
) -> str:
    kind = _KIND_OF.get((table, column), "text")
    if rule == "required":
        return f"{column} is empty; every {table} row needs one"
    if rule == "identifier_nul":  # the id itself is not quoted: the console (DVC and CI logs) names no patient
        return (f"{column} contains a NUL character (\\x00) at character {str(value).index(chr(0)) + 1}; an "
                "identifier is text without NUL characters")
    if rule == "identifier_too_long":
        return (f"{column} is {len(str(value))} characters long; an identifier has at most {MAX_ID_CHARS} characters "
                "(a longer one is a broken cell)")
    if rule == "duplicate_patient":
        return f"patient_id {value!r} appears more than once in patients; each patient needs exactly one row"
    if rule == "unparseable_date":
        return f"{value!r} is not a readable calendar date; write dates as YYYY-MM-DD, e.g. 2024-03-01"
    if rule == "unparseable_number":
        expected = "a whole number" if kind == "integer" else "a finite number"
        return f"{value!r} is not {expected}"
    if rule == "out_of_range":
        lo, hi, lo_inclusive = _range(table, column, today) or (None, None, True)
        lower = f"≥ {lo:g}" if lo_inclusive else f"> {lo:g}"
        bound = lower if hi is None else f"between {lo:g} and {hi:g}"
        return f"{value!r} is out of range: {column} must be {bound}"
    if rule == "unknown_drug":
        key = str(value)
        if key not in closest_cache:
            near = vocabulary.closest(key)
            closest_cache[key] = f"closest known: {', '.join(near)}" if near else "no similar known drug"
        return (f"unknown drug {value!r}; {closest_cache[key]} "
                "(add the spelling to the drug's aliases in configs/drugs.yaml if it is right)")
    if rule == "unknown_dose_unit":
        return f"unknown dose unit {value!r}; expected one of {', '.join(dict.fromkeys(CANONICAL_DOSE_UNITS.values()))}"
    if rule == "unreadable_interval":
        return (f"unreadable interval {value!r}; write e.g. 'daily', 'twice daily', 'weekly', 'every 4 weeks', "
                "'every 6 months', 'once' or 'days 1 and 15, every 6 months'")
    if rule == "unknown_category":
        if kind == "antibodies":
            index = measures.index("antibody")
            unknown = [t for t in _split_antibodies(pd.Series([value]))["token"] if _key(t) not in index]
            return (f"unknown antibody {', '.join(map(repr, unknown))}; expected one or more of "
                    f"{', '.join(measures.codes('antibody'))} separated by ';'")
        list_kind = _CATEGORY_KINDS.get(kind, kind)
        codes = ("true", "false") if list_kind == "boolean" else measures.codes(list_kind)
        return f"unknown {column} {value!r}; expected one of {', '.join(codes)} (or a configured alias)"
    return f"{column}: {rule} ({value!r})"


def _parse_table(table: str, raw: pd.DataFrame, vocabulary: Vocabulary, measures: MeasureCatalog) -> pd.DataFrame:
    """Typed, coded columns of one table (NaN/NaT where a value is missing or unreadable); `row` = input row."""
    out = pd.DataFrame({"row": np.arange(len(raw), dtype="int64")}, index=raw.index)
    for spec in CONTRACT_COLUMNS[table]:
        s = raw[spec.name] if spec.name in raw.columns else pd.Series(np.nan, index=raw.index, dtype=object)
        kind = spec.kind
        if kind == "date":
            out[spec.name] = parse_dates(s)
        elif kind in ("number", "integer"):
            out[spec.name] = parse_numbers(s)
        elif kind in _CATEGORY_KINDS:
            out[spec.name] = map_codes(s, measures.index(_CATEGORY_KINDS[kind]))
        elif kind == "id":
            out[spec.name] = _map_unique(s, str)
        elif kind == "dose_unit":
            out[spec.name] = map_codes(s, _DOSE_UNIT_INDEX)
        else:
            out[spec.name] = s.astype("object")
    if table == "patients":
        out = out.join(_antibody_flags(out["antibodies"], measures))
    elif table == "regimens":
        generic = vocabulary.lookup_many(out["drug"])
        classes = {d.generic: d.drug_class for d in vocabulary.drugs}
        out["generic"] = generic
        out["drug_class"] = generic.map(classes)
        out = out.join(parse_intervals(out["interval"]))
    elif table == "assessments":
        # unit aliases point to an accepted unit; resolve them to that unit's key
        alias_keys = {_unit_key(a): _unit_key(u) for a, u in measures.unit_aliases.items()}
        unit = raw["unit"] if "unit" in raw.columns else pd.Series(np.nan, index=raw.index, dtype=object)
        out["unit_key"] = _map_unique(unit, lambda v: alias_keys.get(_unit_key(v), _unit_key(v)))
        units = measures.unit_table()
        out = out.reset_index().merge(units, on=["measure", "unit_key"], how="left").set_index("index")
        out.index.name = None
        out["canonical_value"] = out["value"] * out["factor"]
        out["canonical_uln"] = out["upper_limit_normal"] * out["factor"]
    return out


def _antibody_flags(antibodies: pd.Series, measures: MeasureCatalog) -> pd.DataFrame:
    """Canonical antibody list and one boolean column per antibody group (docs/architecture.md)."""
    tokens = _split_antibodies(antibodies)
    tokens["code"] = map_codes(tokens["token"], measures.index("antibody"))
    tokens = tokens.dropna(subset=["code"]).drop_duplicates(subset=["row", "code"])
    tokens["flag"] = tokens["code"].map({c: a.flag for c, a in measures.antibodies.items()})
    flags = pd.DataFrame(False, index=antibodies.index, columns=list(measures.antibody_flags))
    if not tokens.empty:
        wide = pd.crosstab(tokens["row"], tokens["flag"]).gt(0)
        wide = wide.reindex(index=antibodies.index, columns=flags.columns, fill_value=False)
        flags = wide.fillna(False).astype(bool)
    canonical = tokens.groupby("row")["code"].agg(";".join)
    out = flags.copy()
    out["antibodies_canonical"] = canonical.reindex(antibodies.index)
    return out


def _finding(
    table: str, frame: pd.DataFrame, mask: pd.Series, column: str, rule: str,
    message: Callable[[pd.DataFrame], pd.Series] | str, severity: Severity = "error",
) -> pd.DataFrame | None:
    """Violation rows for the rows of `frame` where `mask` holds; the message is built for those rows only."""
    mask = mask.fillna(False).astype(bool)
    if not mask.to_numpy().any():
        return None
    sel = frame[mask]
    msg = message if isinstance(message, str) else np.asarray(message(sel), dtype=object)
    return pd.DataFrame({
        "table": table, "row": sel["row"].astype("Int64").to_numpy(),
        "patient_id": sel["patient_id"].to_numpy(dtype=object), "column": column, "rule": rule,
        "severity": severity, "message": msg,
    })


def _fmt_dates(d: pd.Series) -> pd.Series:
    return d.dt.strftime("%Y-%m-%d").astype(object)


def _fmt_numbers(x: pd.Series) -> pd.Series:
    return x.map(lambda v: "" if pd.isna(v) else f"{v:g}").astype(object)


def _cross_checks(
    parsed: dict[str, pd.DataFrame],
    raw: dict[str, pd.DataFrame],
    measures: MeasureCatalog,
    today: pd.Timestamp | None,
    broken: set[str],
) -> list[pd.DataFrame | None]:
    """Rules spanning columns or tables: units per measure, enzyme ULN, dates vs birth / today, end vs start,
    unknown patients, cytopenia grade, contradictory antibodies. Checks against an unusable patients table are
    skipped with one warning per table instead of a finding on every row."""
    out: list[pd.DataFrame | None] = []
    patients = parsed["patients"]
    ids_usable = "patients" not in broken or "patient_id" in raw["patients"].columns and not raw["patients"].empty
    births_usable = ids_usable and ("patients" not in broken or "birth_year" in raw["patients"].columns)
    known_ids = set(patients["patient_id"].dropna())
    birth = patients.dropna(subset=["patient_id"]).drop_duplicates("patient_id").set_index("patient_id")["birth_year"]

    # antibodies: 'negative' together with a positive antibody
    positive = patients[[f for f in measures.antibody_flags if f != "antibody_negative"]].any(axis=1)
    if "antibody_negative" in patients.columns:
        out.append(_finding("patients", patients, positive & patients["antibody_negative"], "antibodies",
                            "conflicting_values", "antibodies lists 'negative' together with a positive antibody"))

    a = parsed["assessments"].assign(
        raw_unit=raw["assessments"]["unit"] if "unit" in raw["assessments"].columns else np.nan)
    unit_known = a["factor"].notna()
    accepted = {code: ", ".join(m.units) for code, m in measures.measures.items()}
    out.append(_finding(
        "assessments", a, a["measure"].notna() & a["raw_unit"].notna() & ~unit_known, "unit", "unknown_unit",
        lambda f: ("unit " + f["raw_unit"].astype(str).map(repr) + " is not a unit of " + f["measure"].astype(str)
                   + " (accepted: " + f["measure"].map(accepted).astype(str) + ")")))

    def range_message(f: pd.DataFrame) -> pd.Series:
        written = _fmt_numbers(f["value"]) + " " + f["raw_unit"].astype(str)
        as_canonical = _fmt_numbers(f["canonical_value"]) + " " + f["out_unit"].astype(str)
        shown = written.where(f["factor"] == 1.0, written + " (= " + as_canonical + ")")
        return (f["measure"].astype(str) + " " + shown + " is outside the instrument's range "
                + _fmt_numbers(f["lo"]) + "–" + _fmt_numbers(f["hi"]) + " " + f["out_unit"].astype(str))

    outside = unit_known & ((a["canonical_value"] < a["lo"]) | (a["canonical_value"] > a["hi"]))
    out.append(_finding("assessments", a, outside, "value", "out_of_range", range_message))
    enzyme = a["enzyme"].fillna(False).astype(bool)
    uln_raw_missing = (raw["assessments"]["upper_limit_normal"].isna() if "upper_limit_normal"
                       in raw["assessments"].columns else pd.Series(True, index=a.index))
    out.append(_finding(
        "assessments", a, enzyme & uln_raw_missing, "upper_limit_normal", "missing_upper_limit_normal",
        lambda f: f["measure"].astype(str) + " needs its upper_limit_normal (the laboratory's reference limit)"))

    r = parsed["regimens"]
    out.append(_finding("regimens", r, r["end_date"] < r["start_date"], "end_date", "end_before_start",
                        lambda f: "end_date " + _fmt_dates(f["end_date"]) + " is before start_date "
                        + _fmt_dates(f["start_date"])))

    e = parsed["events"]
    raw_grade = raw["events"]["grade"] if "grade" in raw["events"].columns else pd.Series(np.nan, index=e.index)
    out.append(_finding("events", e, (e["event"] == "cytopenia") & raw_grade.isna(),
                        "grade", "missing_grade", "a cytopenia needs its grade (1–4)"))

    date_columns = {"patients": ["diagnosis_date"], "regimens": ["start_date", "end_date"],
                    "assessments": ["date"], "events": ["date"]}
    for table, cols in date_columns.items():
        frame = parsed[table].assign(birth_year_of_patient=parsed[table]["patient_id"].map(birth))
        if table != "patients" and not ids_usable:
            out.append(_skipped(table, "patient_id", "unknown_patient, date_before_birth",
                                "the patients table is unusable (see its error)", frame))
        elif table != "patients":
            out.append(_finding(table, frame, frame["patient_id"].notna() & ~frame["patient_id"].isin(known_ids),
                                "patient_id", "unknown_patient",
                                lambda f: "patient_id " + f["patient_id"].astype(str).map(repr)
                                + " is not in the patients table"))
            if not births_usable:
                out.append(_skipped(table, "birth_year", "date_before_birth",
                                    "the patients table has no birth_year column (see its error)", frame))
        for col in cols:
            d = frame[col]
            if births_usable:
                out.append(_finding(table, frame, d.dt.year < frame["birth_year_of_patient"], col,
                                    "date_before_birth", lambda f, c=col: c + " " + _fmt_dates(f[c])
                                    + " is before the birth year " + _fmt_numbers(f["birth_year_of_patient"])))
            # needs nothing from the patients table: checked whatever state that table is in
            if today is not None:
                out.append(_finding(table, frame, d > today, col, "date_in_future",
                                    lambda f, c=col: c + " " + _fmt_dates(f[c])
                                    + f" is after today ({today:%Y-%m-%d})"))
    return out


def _skipped(table: str, column: str, rules: str, because: str, frame: pd.DataFrame) -> pd.DataFrame | None:
    """One warning that the rules `rules` were not applied to `table` because another table is unusable."""
    if frame.empty:
        return None
    return pd.DataFrame({"table": [table], "row": pd.array([pd.NA], dtype="Int64"), "patient_id": [None],
                         "column": [column], "rule": ["check_skipped"], "severity": ["warning"],
                         "message": [f"{rules} not checked for the {len(frame)} {table} row(s): {because}"]})


def _resolve_doses(
    parsed: dict[str, pd.DataFrame], violations: pd.DataFrame, broken: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`dose_mg` and `daily_mg` of each regimen row, using the weight and height measured nearest on or before
    its start date (valid assessments only); a weight-based dose without body size is a warning."""
    r = parsed["regimens"].copy()
    a = parsed["assessments"]
    bad_assessments = _error_rows(violations, "assessments")
    valid = a[~a["row"].isin(bad_assessments)] if "assessments" not in broken else a.iloc[:0]
    basis = r["dose_unit"].map({CANONICAL_DOSE_UNITS[k]: v[1] for k, v in DOSE_UNITS.items()})
    factor = r["dose_unit"].map({CANONICAL_DOSE_UNITS[k]: v[0] for k, v in DOSE_UNITS.items()}).astype(float)
    r["weight_kg"] = _nearest_before(r, valid, "weight")
    r["height_cm"] = _nearest_before(r, valid, "height")
    bsa = pd.Series(body_surface_area(r["weight_kg"], r["height_cm"]), index=r.index)
    scale = np.select([basis == "mg", basis == "mg_per_kg", basis == "mg_per_m2"],
                      [np.ones(len(r)), r["weight_kg"].to_numpy(float), bsa.to_numpy(float)], default=np.nan)
    r["dose_mg"] = r["dose"].to_numpy(float) * factor.to_numpy(float) * scale
    r["daily_mg"] = r["dose_mg"] * r["doses_per_cycle"] / r["cycle_days"]
    r["dose_basis"] = basis
    r["dose_in_basis"] = r["dose"].to_numpy(float) * factor.to_numpy(float)
    no_weight = basis.isin(["mg_per_kg", "mg_per_m2"]) & r["weight_kg"].isna() & r["start_date"].notna()
    no_height = (basis == "mg_per_m2") & r["weight_kg"].notna() & r["height_cm"].isna() & r["start_date"].notna()
    if "assessments" in broken:  # no body size at all: one note, not a warning on every weight-based dose
        per_body = r[basis.isin(["mg_per_kg", "mg_per_m2"])]
        return r, _assemble([_skipped("regimens", "dose_unit", "dose_mg of doses per kg or m² (no_body_size)",
                                      "the assessments table is unusable, so no weight or height is known",
                                      per_body)])
    warnings = _assemble([
        _finding("regimens", r, no_weight, "dose_unit", "no_body_size",
                 lambda f: f["drug"].astype(str) + " dosed per " + f["dose_unit"].astype(str).str.split("/").str[-1]
                 + " from " + _fmt_dates(f["start_date"]) + ": no weight measured on or before that start, so its "
                 "dose in mg is unknown until a weight is recorded", severity="warning"),
        _finding("regimens", r, no_height, "dose_unit", "no_body_size",
                 lambda f: f["drug"].astype(str) + " dosed per m2 from " + _fmt_dates(f["start_date"])
                 + ": no height measured on or before that start, so its dose in mg is unknown until a height is "
                 "recorded", severity="warning"),
    ])
    return r, warnings


#: the order plausible-dose bounds are tried in (the written value first) and how each reads in a message.
_LIMIT_LABELS: dict[str, str] = {"mg_per_kg": "mg/kg per administration", "mg_per_m2": "mg/m² per administration",
                                 "mg": "mg per administration", "mg_per_day": "mg/day"}


#: the bound a dose written in this unit is compared with as written (no conversion to show).
_BOUND_OF_UNIT: dict[str, str] = {"mg": "mg", "mg/kg": "mg_per_kg", "mg/m2": "mg_per_m2"}


def _implausible_doses(r: pd.DataFrame, vocabulary: Vocabulary) -> pd.DataFrame | None:
    """Regimen rows whose dose is beyond the drug's plausible range (configs/drugs.yaml `plausible`): an entry
    error, never a dose to compute with. One finding per row, naming the first bound it exceeds."""
    if r.empty:
        return None
    limits = vocabulary.plausible_limits(r["generic"], r["route"])
    values = {"mg_per_kg": r["dose_in_basis"].where(r["dose_basis"] == "mg_per_kg"),
              "mg_per_m2": r["dose_in_basis"].where(r["dose_basis"] == "mg_per_m2"),
              "mg": r["dose_mg"], "mg_per_day": r["daily_mg"]}
    bound = pd.Series(None, index=r.index, dtype=object)
    value = pd.Series(np.nan, index=r.index)
    limit = pd.Series(np.nan, index=r.index)
    for b in _LIMIT_LABELS:
        over = bound.isna() & (values[b] > limits[b]).fillna(False)
        bound[over], value[over], limit[over] = b, values[b][over], limits[b][over]
    frame = r.assign(_bound=bound, _value=value, _limit=limit)

    def message(f: pd.DataFrame) -> pd.Series:
        written = _fmt_numbers(f["dose"]) + " " + f["dose_unit"].astype(str) + " " + f["interval"].astype(str)
        label = f["_bound"].map(_LIMIT_LABELS)
        as_written = f["dose_unit"].astype(str).map(_BOUND_OF_UNIT) == f["_bound"]
        compared = (" = " + _fmt_numbers(f["_value"]) + " " + label.str.split(" ").str[0]).where(~as_written, "")
        return ("dose " + written + " of " + f["generic"].astype(str) + " (" + f["route"].astype(str) + ")"
                + compared + " is outside the plausible range 0–" + _fmt_numbers(f["_limit"]) + " " + label
                + " (configs/drugs.yaml: an entry error such as a wrong unit or a slipped decimal?)")

    return _finding("regimens", frame, bound.notna(), "dose", "implausible_dose", message)


def _nearest_before(regimens: pd.DataFrame, assessments: pd.DataFrame, measure: str) -> pd.Series:
    """The canonical value of `measure` measured nearest on or before each regimen's start date (merge_asof)."""
    left = regimens.loc[regimens["start_date"].notna() & regimens["patient_id"].notna(),
                        ["patient_id", "start_date"]].reset_index()
    right = assessments.loc[(assessments["measure"] == measure) & assessments["canonical_value"].notna()
                            & assessments["date"].notna(), ["patient_id", "date", "canonical_value", "row"]]
    if left.empty or right.empty:
        return pd.Series(np.nan, index=regimens.index, dtype=float)
    # two records on one date count as their mean (the same answer whatever the input order)
    right = right.groupby(["patient_id", "date"], as_index=False)["canonical_value"].mean()
    merged = pd.merge_asof(
        left.sort_values("start_date"), right.sort_values("date"),
        left_on="start_date", right_on="date", by="patient_id", direction="backward", allow_exact_matches=True,
    )
    return merged.set_index("index")["canonical_value"].reindex(regimens.index).astype(float)


def _empty_violations() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="Int64" if c == "row" else object) for c in VIOLATION_COLUMNS})


def _assemble(parts: list[pd.DataFrame | None]) -> pd.DataFrame:
    parts = [p for p in parts if p is not None and len(p)]
    if not parts:
        return _empty_violations()
    v = pd.concat(parts, ignore_index=True)
    v["row"] = v["row"].astype("Int64")
    v = v[list(VIOLATION_COLUMNS)].astype({c: object for c in VIOLATION_COLUMNS if c != "row"})
    order = {t: i for i, t in enumerate(CONTRACT_TABLES)}
    v = v.assign(_t=v["table"].map(order)).sort_values(["_t", "row", "column", "rule"], na_position="first",
                                                       kind="stable")
    return v.drop(columns="_t").reset_index(drop=True)


def _error_rows(violations: pd.DataFrame, table: str) -> pd.Index:
    v = violations[(violations["table"] == table) & (violations["severity"] == "error") & violations["row"].notna()]
    return pd.Index(v["row"].astype("int64").unique())


# --- normalisation -----------------------------------------------------------------------------------------------
def normalise(
    tables: Mapping[str, pd.DataFrame],
    vocabulary: Vocabulary,
    measures: MeasureCatalog,
    today: date | pd.Timestamp | str | None = None,
    unreadable: Mapping[str, str | Exception] | None = None,
) -> dict[str, pd.DataFrame]:
    """The normalised tables (docs/architecture.md) of the rows free of errors; `row` = the input row.

    Without `today` the after-today rule is not applied. A table with a missing required column comes back empty.
    """
    return _normalised(_analyse(tables, vocabulary, measures, today, unreadable), measures)


def _normalised(analysis: _Analysis, measures: MeasureCatalog) -> dict[str, pd.DataFrame]:
    out: dict[str, pd.DataFrame] = {}
    for table in CONTRACT_TABLES:
        p = analysis.parsed[table]
        keep = ~p["row"].isin(_error_rows(analysis.violations, table))
        if table in analysis.broken_tables:
            keep &= False
        out[table] = _shape(table, p[keep], measures)
    return out


def _shape(table: str, p: pd.DataFrame, measures: MeasureCatalog) -> pd.DataFrame:
    """Select, rename and type the normalised columns; rows sorted by patient, date and input row."""
    if table == "patients":
        df = p.assign(antibodies=p["antibodies_canonical"], birth_year=p["birth_year"].astype("int64"),
                      ild=p["ild"].astype(bool), cancer_associated=p["cancer_associated"].astype(bool))
        cols = [*NORMALISED_COLUMNS[table], *measures.antibody_flags]
        df = df[cols].astype({f: bool for f in measures.antibody_flags})
        keys = ["patient_id", "row"]
    elif table == "regimens":
        df = p[list(NORMALISED_COLUMNS[table])]
        keys = ["patient_id", "start_date", "row"]
    elif table == "assessments":
        df = p.assign(value=p["canonical_value"], unit=p["out_unit"], upper_limit_normal=p["canonical_uln"])
        df = df[list(NORMALISED_COLUMNS[table])]
        keys = ["patient_id", "date", "measure", "row"]
    else:
        df = p.assign(grade=p["grade"].astype(float))[list(NORMALISED_COLUMNS[table])]
        keys = ["patient_id", "date", "row"]
    df = df.sort_values(keys, kind="stable").reset_index(drop=True)
    text = [c for c in df.columns if c in {"patient_id", "sex", "diagnosis", "antibodies", "drug", "generic",
                                           "drug_class", "route", "dose_unit", "interval", "measure", "unit",
                                           "event", "details"}]
    df = df.astype({c: object for c in text})
    df["row"] = df["row"].astype("int64")
    return df


# --- whole patients ----------------------------------------------------------------------------------------------
def reject_patients(
    tables: Mapping[str, pd.DataFrame], violations: pd.DataFrame
) -> tuple[dict[str, pd.DataFrame], pd.Index]:
    """Drop every row of each patient with at least one error (in any table); returns the tables and the ids."""
    errors = violations[(violations["severity"] == "error") & violations["patient_id"].notna()]
    rejected = pd.Index(sorted(errors["patient_id"].astype(str).unique()), name="patient_id", dtype=object)
    kept = {
        name: df[~df["patient_id"].astype(object).isin(rejected)].reset_index(drop=True)
        if "patient_id" in df.columns else df
        for name, df in tables.items()
    }
    return kept, rejected


class ContractError(ValueError):
    """Raised by `ContractResult.raise_for_errors` when the tables break the contract."""


@dataclass(frozen=True)
class ContractResult:
    """What `check` returns: normalised tables of the accepted patients, every violation, the rejected ids."""

    normalised: dict[str, pd.DataFrame]
    violations: pd.DataFrame
    rejected_patients: pd.Index
    #: tables unusable as a whole (unreadable, or a required column missing): every patient is rejected
    broken_tables: frozenset[str] = frozenset()

    @property
    def errors(self) -> pd.DataFrame:
        return self.violations[self.violations["severity"] == "error"]

    @property
    def warnings(self) -> pd.DataFrame:
        return self.violations[self.violations["severity"] == "warning"]

    @property
    def ok(self) -> bool:
        return self.errors.empty

    def raise_for_errors(self, limit: int = 20) -> None:
        """Raise a `ContractError` listing the first `limit` errors (table, row, column, rule, message)."""
        if self.ok:
            return
        lines = [format_violation(v) for v in self.errors.head(limit).itertuples(index=False)]
        more = len(self.errors) - limit
        tail = [f"... and {more} more"] if more > 0 else []
        raise ContractError(f"{len(self.errors)} contract error(s):\n" + "\n".join([*lines, *tail]))


def format_violation(v: Any) -> str:
    """One violation as a line: `table row N (patient P), column C [rule]: message`."""
    row = "" if pd.isna(v.row) else f" row {int(v.row)}"
    patient = "" if v.patient_id is None or pd.isna(v.patient_id) else f" (patient {v.patient_id})"
    column = "" if v.column is None or pd.isna(v.column) else f", column {v.column}"
    return f"{v.table}{row}{patient}{column} [{v.rule}]: {v.message}"


def check(
    tables: Mapping[str, pd.DataFrame],
    vocabulary: Vocabulary,
    measures: MeasureCatalog,
    today: date | pd.Timestamp | str | None,
    unreadable: Mapping[str, str | Exception] | None = None,
) -> ContractResult:
    """Validate, normalise and drop every patient with an error, in one call (the pipeline's entry point).

    When a table is unusable as a whole (`broken_tables`), every patient is rejected: each one's record is
    incomplete, and a patient is used whole or not at all."""
    analysis = _analyse(tables, vocabulary, measures, today, unreadable)
    violations = analysis.violations
    if analysis.broken_tables:
        ids = pd.concat([p["patient_id"] for p in analysis.parsed.values() if "patient_id" in p.columns])
        everyone = pd.DataFrame({"patient_id": ids.dropna().astype(str).unique(), "severity": "error"})
        violations = pd.concat([violations[["patient_id", "severity"]], everyone], ignore_index=True)
    normalised, rejected = reject_patients(_normalised(analysis, measures), violations)
    return ContractResult(normalised=normalised, violations=analysis.violations, rejected_patients=rejected,
                          broken_tables=analysis.broken_tables)
