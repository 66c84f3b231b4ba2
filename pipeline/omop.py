"""`escalate import omop` and `escalate simulate --format omop`: OMOP CDM v5.4 databases in and out.

A source is a DuckDB file (the embedded default; also `duckdb:///path`), a folder of OMOP tables as Parquet or CSV
(`person.parquet` or `person.csv`, …, read through DuckDB), or any SQLAlchemy URL (PostgreSQL, the usual OMOP host;
its driver must be installed). Only the cohort's records are read: persons with a condition in one of the mapping's
diagnoses. Every query is built from this module's constant table and column names with the user's values (concept
ids, source values, file paths) as bound parameters — never string-built from user input. The pure mapping is
`features/omop.py`; the mapping itself `configs/omop.yaml`; the tables written are the OMOP CDM v5.4 DDL in
`configs/omop-cdm-5.4.sql`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import typer

from pipeline.cli_types import Refusal
from pipeline.config import CONFIGS, load_catalog, load_reference, read_yaml, validated
from pipeline.io import write_json

if TYPE_CHECKING:
    from features.omop import ImportResult, OmopMapping

DDL = CONFIGS / "omop-cdm-5.4.sql"
REQUIRED = ("person", "condition_occurrence")
#: columns CDM v5.4 declares NOT NULL that the importer cannot do without, per table it reads: a table lacking one
#: is refused (naming it) instead of read as empty.
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "person": ("person_id", "gender_concept_id", "year_of_birth"),
    "observation_period": ("person_id", "observation_period_end_date"),
    "condition_occurrence": ("person_id", "condition_concept_id", "condition_start_date"),
    "drug_exposure": ("person_id", "drug_concept_id", "drug_exposure_start_date"),
    "measurement": ("person_id", "measurement_concept_id", "measurement_date"),
    "observation": ("person_id", "observation_concept_id", "observation_date"),
    "death": ("person_id", "death_date"),
}
DB_NAME = "cdm.duckdb"
_DUCK_NUMBERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class OmopSourceError(Refusal, ValueError):
    """The OMOP source cannot be opened or lacks a required table (one line, exit 2)."""


def load_mapping(path: Path | None = None) -> OmopMapping:
    """The mapping from `configs/omop.yaml` (or `path`), checked against the contract's vocabularies."""

    from features.contract import MeasureCatalog
    from features.omop import OmopMapping, mapping_problems
    from features.vocabulary import Vocabulary

    raw = load_reference("omop") if path is None else read_yaml(path)
    where = path or CONFIGS / "omop.yaml"
    mapping = validated(raw, OmopMapping.from_config, str(where))
    problems = mapping_problems(mapping, load_catalog("drugs", Vocabulary.from_config),
                                load_catalog("measures", MeasureCatalog.from_config))
    if problems:
        raise OmopSourceError(f"{where}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                                            else ""))
    return mapping


# ----------------------------------------------------------------------------------------------------- sources
class _DuckSource:
    """A DuckDB database file, or a folder of Parquet/CSV tables read through an in-memory DuckDB."""

    def __init__(self, path: Path, schema: str | None, folder: bool) -> None:
        import duckdb

        self.folder = folder
        self.path = path
        self.schema = schema or "main"
        try:
            self.con = duckdb.connect() if folder else duckdb.connect(str(path), read_only=True)
        except duckdb.Error as err:
            raise OmopSourceError(f"--source {path}: not a readable DuckDB database ({_first_line(err)})") from None
        self.files: dict[str, tuple[Path, str]] = {}
        if folder:
            for f in sorted(path.iterdir()):
                stem, suffix = f.stem.lower(), f.suffix.lower()
                if suffix in (".parquet", ".csv") and (stem not in self.files or suffix == ".parquet"):
                    self.files[stem] = (f, suffix)

    def columns(self, table: str) -> list[str] | None:
        """The table's column names (lower case), None when the table is absent."""
        if self.folder:
            if table not in self.files:
                return None
            rel, params = self._relation(table)
            with self._named(table):
                return [c.lower() for c in self.con.execute(f"SELECT * FROM {rel} LIMIT 0", params).df().columns]
        rows = self.con.execute("SELECT column_name FROM information_schema.columns WHERE lower(table_schema) = "
                                "lower(?) AND lower(table_name) = ? ORDER BY ordinal_position",
                                [self.schema, table]).fetchall()
        return [r[0].lower() for r in rows] or None

    def _relation(self, table: str) -> tuple[str, list[Any]]:
        if self.folder:
            path, suffix = self.files[table]
            fn = "read_parquet(?)" if suffix == ".parquet" else "read_csv(?, header = true)"
            return fn, [str(path)]
        return f'"{self.schema}"."{table}"', []

    def read(self, table: str, columns: Sequence[str], where: str = "", params: Sequence[Any] = ()) -> pd.DataFrame:
        """`SELECT columns FROM table [WHERE …]`: identifiers are this module's constants, values are bound."""
        rel, rel_params = self._relation(table)
        cols = ", ".join(f'"{c}"' for c in columns)
        with self._named(table):
            return self.con.execute(f"SELECT {cols} FROM {rel} {where}", [*rel_params, *params]).df()

    @contextmanager
    def _named(self, table: str) -> Iterator[None]:
        """A DuckDB error reading `table` (an unreadable file, a type it cannot compare) as one line naming it."""
        import duckdb

        try:
            yield
        except duckdb.Error as err:
            where = self.files[table][0] if self.folder and table in self.files else f"{self.path}: table {table}"
            raise OmopSourceError(f"{where}: cannot be read as the OMOP table {table} ({_first_line(err)}); "
                                  "export it again (UTF-8 CSV or Parquet, CDM v5.4 column types)") from None

    def numeric(self, table: str, column: str) -> bool:
        """Whether the column holds numbers (an integer, decimal or floating type), compared with ids as numbers."""
        rel, params = self._relation(table)
        with self._named(table):
            kind = str(self.con.execute(f'SELECT "{column}" FROM {rel} LIMIT 0', params).description[0][1])
        return kind.upper() in _DUCK_NUMBERS or kind.upper().startswith("DECIMAL")

    def distinct(self, table: str, column: str) -> list[Any]:
        """The column's distinct values, as text (what `where`'s text test compares)."""
        rel, params = self._relation(table)
        with self._named(table):
            rows = self.con.execute(f'SELECT DISTINCT CAST("{column}" AS VARCHAR) FROM {rel} '
                                    f'WHERE "{column}" IS NOT NULL', params).fetchall()
        return [r[0] for r in rows]

    def where(self, table: str, columns: Sequence[str], tests: Sequence[tuple[str, Sequence[Any], bool]]
              ) -> pd.DataFrame:
        """Rows where any test holds: (column, values, by_number) is a numeric `column IN values`, else the
        column as text IN values (values `distinct` gave); one bound list per test."""
        parts = [f'"{c}" IN (SELECT UNNEST(?::BIGINT[]))' if by_number
                 else f'CAST("{c}" AS VARCHAR) IN (SELECT UNNEST(?::VARCHAR[]))' for c, _, by_number in tests]
        return self.read(table, columns, "WHERE " + " OR ".join(parts), [list(v) for _, v, _ in tests])

    def close(self) -> None:
        self.con.close()


class _SqlSource:
    """Any SQLAlchemy URL; reads with SQLAlchemy Core (quoted identifiers, bound parameters)."""

    def __init__(self, url: str, schema: str | None) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.schema = schema
        self.types: dict[str, dict[str, Any]] = {}
        try:
            self.engine = sa.create_engine(url)
            self.inspector = sa.inspect(self.engine)
        except Exception as err:  # noqa: BLE001 - any driver or connection error is one line for the user
            safe = _safe_url(url)
            raise OmopSourceError(f"--source {safe}: cannot connect ({_first_line(err)})") from None

    def columns(self, table: str) -> list[str] | None:
        try:
            found = self.inspector.get_columns(table, schema=self.schema)
        except self.sa.exc.NoSuchTableError:
            return None
        self.types[table] = {c["name"].lower(): c["type"] for c in found}
        return list(self.types[table]) or None

    def numeric(self, table: str, column: str) -> bool:
        """Whether the column is declared as numbers (integer, numeric, floating), compared with ids as numbers."""
        return isinstance(self.types[table].get(column), self.sa.types.Numeric | self.sa.types.Integer)

    def distinct(self, table: str, column: str) -> list[Any]:
        """The column's distinct values as the driver returns them (what `where`'s text test compares)."""
        sa = self.sa
        t = sa.table(table, sa.column(column), schema=self.schema)
        query = sa.select(t.c[column]).distinct().where(t.c[column].is_not(None))
        try:
            with self.engine.connect() as con:
                return [r[0] for r in con.execute(query)]
        except sa.exc.SQLAlchemyError as err:
            raise OmopSourceError(f"table {table}: cannot be read as the OMOP table ({_first_line(err)})") from None

    def where(self, table: str, columns: Sequence[str], tests: Sequence[tuple[str, Sequence[Any], bool]]
              ) -> pd.DataFrame:
        """Rows where any (column, values, by_number) test holds: `column IN values`, bound (values as numbers,
        or as `distinct` returned them)."""
        conditions = [lambda t, c=c, v=v: t.c[c].in_(list(v)) for c, v, _ in tests]
        return self.read(table, columns, conditions, known=[c for c, _, _ in tests])

    def read(self, table: str, columns: Sequence[str], conditions: Sequence[Any] = (),
             known: Sequence[str] = ()) -> pd.DataFrame:
        """`SELECT columns FROM table [WHERE any condition]` in SQLAlchemy Core; `known`: the table's columns."""
        sa = self.sa
        t = sa.table(table, *(sa.column(c) for c in dict.fromkeys([*columns, *known])), schema=self.schema)
        query = sa.select(*(t.c[c] for c in columns))
        if conditions:
            query = query.where(sa.or_(*[cond(t) for cond in conditions]) if len(conditions) > 1 else conditions[0](t))
        try:
            with self.engine.connect() as con:
                return pd.read_sql(query, con)
        except sa.exc.SQLAlchemyError as err:  # e.g. an id column of text compared with numbers: one line
            raise OmopSourceError(f"table {table}: cannot be read as the OMOP table ({_first_line(err)}); check its "
                                  "column types against CDM v5.4") from None

    def close(self) -> None:
        self.engine.dispose()


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _safe_url(url: str) -> str:
    """The URL without its password, for messages and the import report."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: a path
        return url


@contextmanager
def open_source(source: str, schema: str | None = None) -> Iterator[_DuckSource | _SqlSource]:
    """Open a DuckDB file, a folder of tables or a SQLAlchemy URL (see the module docstring)."""
    if schema is not None and not _IDENTIFIER.fullmatch(schema):
        raise OmopSourceError(f"--schema {schema!r}: not a plain SQL identifier (letters, digits, _)")
    src: _DuckSource | _SqlSource
    if source.startswith("duckdb:///"):
        src = _DuckSource(Path(source.removeprefix("duckdb:///")), schema, folder=False)
    elif "://" in source:
        src = _SqlSource(source, schema)
    else:
        path = Path(source)
        if not path.exists():
            raise OmopSourceError(f"--source {source}: no such file or folder")
        src = _DuckSource(path, schema, folder=path.is_dir())
    try:
        yield src
    finally:
        src.close()


def read_omop(src: _DuckSource | _SqlSource, mapping: OmopMapping) -> dict[str, pd.DataFrame | None]:
    """The cohort's OMOP records: persons with a mapped diagnosis and all their records in the tables the
    importer uses; `concept_ancestor` and `drug_strength` restricted to the mapping's concepts (None if absent)."""
    from features.omop import OMOP_COLUMNS, VOCABULARY_COLUMNS, integer_ids

    present = {t: src.columns(t) for t in (*OMOP_COLUMNS, *VOCABULARY_COLUMNS)}
    missing = [t for t in REQUIRED if present[t] is None]
    if missing:
        raise OmopSourceError(f"the OMOP source has no {' or '.join(missing)} table (schema: "
                              f"{getattr(src, 'schema', None) or 'default'})")
    for table, needed in KEY_COLUMNS.items():
        have = present.get(table)
        lacking = [c for c in needed if have is not None and c not in have]
        if lacking:
            hint = "; it looks ';'-separated: export it comma-separated" if any(";" in c for c in have or ()) else ""
            raise OmopSourceError(f"table {table}: required column(s) {lacking} missing (rule: missing_column; "
                                  f"CDM v5.4 declares them NOT NULL){hint}")
    out: dict[str, pd.DataFrame | None] = {}
    mapped = [int(c) for d in mapping.diagnoses for c in d.concept_ids]
    ancestors = sorted({int(c) for group in (mapping.drugs, mapping.diagnoses, mapping.measures, mapping.antibodies,
                                             mapping.events, (mapping.ild, mapping.cancer))
                        for cs in group for c in cs.concept_ids})
    if present["concept_ancestor"] is not None and mapping.include_descendants:
        out["concept_ancestor"] = _read(src, "concept_ancestor", present,
                                        [("ancestor_concept_id", ancestors, "BIGINT")])
        ca = out["concept_ancestor"]
        d = integer_ids(ca["descendant_concept_id"])[integer_ids(ca["ancestor_concept_id"]).isin(mapped)]
        mapped = sorted({*mapped, *(int(x) for x in d.dropna())})
    else:
        out["concept_ancestor"] = None
    values = sorted({v for d in mapping.diagnoses for v in d.source_values})
    source_concepts = sorted({int(c) for d in mapping.diagnoses for c in (*d.source_concept_ids, *d.concept_ids)})
    diagnosed = [("condition_concept_id", mapped, "BIGINT"), ("condition_source_concept_id", source_concepts, "BIGINT"),
                 ("condition_source_value", values, "VARCHAR")]
    dx = _read(src, "condition_occurrence", present, diagnosed)
    cohort = sorted({int(p) for p in integer_ids(dx["person_id"]).dropna()})
    for table in OMOP_COLUMNS:
        if present[table] is None:
            out[table] = None
            continue
        # conditions: the cohort's, and the diagnoses of a person id that is not an integer ('P2'), to be
        # reported (every diagnosis of an integer id is a cohort person's): one query, the table's own types
        extra = diagnosed if table == "condition_occurrence" else []
        out[table] = _read(src, table, present, [("person_id", cohort, "BIGINT"), *extra])
    if present["person"] is not None:  # the persons' count for the report, not their records
        out["person_total"] = _count_rows(src, "person")  # type: ignore[assignment]
    named = sorted({int(c) for group in (mapping.drugs, mapping.diagnoses, mapping.measures, mapping.antibodies,
                                         mapping.events, (mapping.ild, mapping.cancer))
                    for cs in group for c in (*cs.concept_ids, *cs.source_concept_ids)})
    out["concept"] = (_read(src, "concept", present, [("concept_id", named, "BIGINT")])
                      if present["concept"] is not None else None)
    if present["concept"] is not None:  # an empty vocabulary (a simulated CDM) is said apart from absent concepts
        out["concept_total"] = _count_rows(src, "concept")  # type: ignore[assignment]
    ingredients = sorted({int(c) for d in mapping.drugs for c in d.concept_ids})
    out["drug_strength"] = (_read(src, "drug_strength", present, [("ingredient_concept_id", ingredients, "BIGINT")])
                            if present["drug_strength"] is not None else None)
    return out


def _count_rows(src: _DuckSource | _SqlSource, table: str) -> int:
    if isinstance(src, _DuckSource):
        rel, params = src._relation(table)
        return int(src.con.execute(f"SELECT count(*) FROM {rel}", params).fetchone()[0])  # type: ignore[index]
    sa = src.sa
    with src.engine.connect() as con:
        return int(con.execute(sa.select(sa.func.count()).select_from(sa.table(table, schema=src.schema))).scalar())


def _read(src: _DuckSource | _SqlSource, table: str, present: dict[str, list[str] | None],
          any_of: Sequence[tuple[str, Sequence[Any], str]], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows of `table` where any (column, values, kind) test holds; the importer's columns that the table has
    (the others come back empty). The rows are those the importer itself would match, from every backend: a
    numeric column is compared as numbers; ids in any other column (text ' 17 ', '0004') and `VARCHAR` source
    values (case, surrounding and repeated blanks ignored) are read the importer's way (`integer_ids`,
    `norm_text`) from the column's distinct values, and the values that match are bound as they are stored."""
    from features.omop import OMOP_COLUMNS, VOCABULARY_COLUMNS, integer_ids, norm_text

    wanted = list(columns or OMOP_COLUMNS.get(table) or VOCABULARY_COLUMNS[table])
    have = [c for c in wanted if c in (present[table] or [])]
    tests: list[tuple[str, Sequence[Any], bool]] = []
    for c, v, k in any_of:
        if c not in (present[table] or []) or not len(v):
            continue
        if k == "BIGINT" and src.numeric(table, c):
            tests.append((c, v, True))
            continue
        stored = pd.Series(src.distinct(table, c), dtype=object)
        if k == "BIGINT":
            match = integer_ids(stored).isin([int(x) for x in v])
        else:
            match = norm_text(stored).isin(set(norm_text(pd.Series(list(v), dtype=object))))
        if match.any():
            tests.append((c, stored[match.to_numpy(dtype=bool, na_value=False)].tolist(), False))
    frame = src.where(table, have, tests) if tests else pd.DataFrame({c: pd.Series(dtype="object") for c in have})
    frame.columns = [c.lower() for c in frame.columns]
    for c in wanted:
        if c not in frame:
            frame[c] = pd.Series(pd.NA, index=frame.index, dtype="object")
    return frame[wanted]


# ------------------------------------------------------------------------------------------------------ import
def run_import_omop(source: str, out: Path, mapping_path: Path | None = None, schema: str | None = None,
                    gap_days: int = 30) -> ImportResult:
    """The command: read the OMOP source, map it, write DIR/{patients,regimens,assessments,events}.parquet and
    DIR/import_report.json (every unmapped record counted by table, concept and reason)."""
    from features.omop import import_omop, mapped_concepts

    mapping = load_mapping(mapping_path)
    started = time.perf_counter()
    with open_source(source, schema) as src:
        omop = read_omop(src, mapping)
    read_s = time.perf_counter() - started
    total = int(omop.pop("person_total") or 0)  # type: ignore[arg-type]
    vocabulary_rows = omop.pop("concept_total", None)
    result = import_omop(omop, mapping, gap_days)
    names = mapped_concepts(mapping, omop.get("concept"))
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in result.tables.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    by_reason = result.report.groupby(["table", "reason", "severity"])["records"].sum().reset_index()
    write_json({
        "source": _safe_url(source), "persons_in_source": total, "persons_imported": result.persons_imported,
        "gap_days": gap_days,
        "vocabulary": {"concept_ancestor": omop.get("concept_ancestor") is not None,
                       "drug_strength": omop.get("drug_strength") is not None},
        "rows_written": {k: len(v) for k, v in result.tables.items()},
        "records_by_reason": by_reason.to_dict(orient="records"),
        "records": result.report.to_dict(orient="records"),
        "mapped_concepts": names.to_dict(orient="records"),
    }, out / "import_report.json")
    elapsed = time.perf_counter() - started
    typer.echo(f"imported {result.persons_imported} of {total} persons (those with a mapped myositis diagnosis) "
               f"in {elapsed:.1f} s (reading {read_s:.1f} s) → {out}")
    for name, frame in result.tables.items():
        typer.echo(f"  {name}: {len(frame)} rows")
    if len(by_reason):
        typer.echo("records not mapped or imported with a gap (table, reason, severity: records):")
        for row in by_reason.itertuples(index=False):
            typer.echo(f"  {row.table}, {row.reason}, {row.severity}: {row.records}")
    if omop.get("concept") is not None and vocabulary_rows == 0:  # e.g. simulate --format omop's CDM
        typer.echo("the source's concept table is empty: the mapping's concept ids could not be checked by name")
    elif omop.get("concept") is not None:
        absent = int(names["concept_name"].isna().sum())
        typer.echo(f"{len(names) - absent} of {len(names)} mapped concept ids found in the source's concept table "
                   f"(check their names in the report{'; ' + str(absent) + ' absent' if absent else ''})")
    typer.echo(f"every record by concept: {out / 'import_report.json'}; next: escalate validate --data {out}")
    return result


# ------------------------------------------------------------------------------------------------------- write
def write_omop_database(tables: dict[str, pd.DataFrame], path: Path) -> dict[str, int]:
    """Create an OMOP CDM v5.4 DuckDB database at `path` from the official DDL (configs/omop-cdm-5.4.sql) and
    insert `tables` (columns left out are NULL); the vocabulary tables are created empty. Row counts per table."""
    import duckdb

    if path.exists():
        path.unlink()
    counts: dict[str, int] = {}
    con = duckdb.connect(str(path))
    try:
        con.execute(DDL.read_text())
        for name, frame in tables.items():
            cols = ", ".join(f'"{c}"' for c in frame.columns)
            con.register("escalate_frame", frame)
            con.execute(f'INSERT INTO "{name}" ({cols}) SELECT {cols} FROM escalate_frame')
            con.unregister("escalate_frame")
            counts[name] = len(frame)
    finally:
        con.close()
    return counts


def write_cohort_omop(cohort: Any, out: Path, today: str, mapping_path: Path | None = None) -> dict[str, int]:
    """The simulated cohort as an OMOP database, DIR/cdm.duckdb, plus the truth as Parquet (DIR/truth/)."""
    from features.omop import contract_to_omop
    from features.vocabulary import Vocabulary

    mapping = load_mapping(mapping_path)
    tables = {name: getattr(cohort, name) for name in ("patients", "regimens", "assessments", "events")}
    omop = contract_to_omop(tables, mapping, load_catalog("drugs", Vocabulary.from_config), today)
    out.mkdir(parents=True, exist_ok=True)
    counts = {f"{DB_NAME}:{k}": v for k, v in write_omop_database(omop, out / DB_NAME).items()}
    (out / "truth").mkdir(exist_ok=True)
    for name in ("decisions", "outcomes"):
        frame = getattr(cohort, name)
        frame.to_parquet(out / "truth" / f"{name}.parquet", index=False)
        counts[f"truth/{name}"] = len(frame)
    return counts
