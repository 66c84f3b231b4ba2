"""Loading: the model (registry alias or local bundle) and one patient's checked contract tables."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import typer


# --- loading: model, tables, features ---------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: Any
    name: str
    version: str
    alias: str
    run_id: str


def load_model(model_dir: Path = Path("data/train/model")) -> LoadedModel:
    """The registered model by alias (champion, else candidate), else the bundle the train stage wrote.

    The registry is read first through the read-only fast path (`pipeline.registry_store`: the local SQLite store
    and the version's `bundle` artifact, unpickled with joblib, no MLflow import — the same object MLflow's loader
    unwraps); only when that path cannot answer (a remote store, another layout) is MLflow asked."""
    from pipeline import registry_store as store
    from pipeline.trained import load_bundle

    try:
        for alias in (store.CHAMPION, store.CANDIDATE):
            target = store.resolve_alias(alias)
            if target is None:
                continue
            try:
                bundle = load_bundle(target.bundle)
            except Exception as exc:  # noqa: BLE001 - e.g. a bundle pickled by other code: MLflow's loader decides
                raise store.StoreUnreadable(f"{target.bundle} not loadable here ({exc})") from exc
            return LoadedModel(bundle, target.name, target.version, alias, target.run_id)
    except store.StoreUnreadable:
        return _load_model_with_mlflow(model_dir)
    return _load_local_bundle(model_dir)


def _load_model_with_mlflow(model_dir: Path) -> LoadedModel:
    """`load_model` through MLflow (any tracking store): champion, else candidate, else the local bundle."""
    try:
        import mlflow

        from pipeline import registry

        registry.setup_mlflow()
        for alias in (registry.CHAMPION, registry.CANDIDATE):
            found = registry.alias_run_id(alias)
            if found is None:
                continue
            version, run_id = found
            pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@{alias}")
            bundle = pyfunc.unwrap_python_model().model
            return LoadedModel(bundle, registry.MODEL_NAME, version, alias, run_id)
    except Exception as exc:  # noqa: BLE001 - a registry problem falls back to the local bundle, said below
        typer.echo(f"model registry not usable ({exc}); falling back to {model_dir}", err=True)
    return _load_local_bundle(model_dir)


def _load_local_bundle(model_dir: Path) -> LoadedModel:
    """The bundle the train stage wrote to `model_dir` (no registered model); FileNotFoundError when absent."""
    from pipeline import registry_store as store
    from pipeline.cli_types import Refusal
    from pipeline.trained import load_bundle, read_run

    path = Path(model_dir) / store.BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no registered model (aliases champion, candidate) and no bundle at {path}: run `dvc repro train`"
        )
    run = Path(model_dir).parent / "run.json"
    try:
        run_id = read_run(run)["run_id"] if run.is_file() else "unknown"
    except Refusal:  # only shown on the page: a broken run.json does not stop it
        run_id = "unknown"
    return LoadedModel(load_bundle(path), store.MODEL_NAME, "local", str(model_dir), str(run_id))


@contextmanager
def _without_pyspark_pandas() -> Iterator[None]:
    """While pandera is first imported, its import of `pyspark.pandas` fails (pandera then goes on without it).

    pandera imports `pyspark.pandas` whenever PySpark is installed, only so that pyspark's patch of pandas comes
    first — 0.1 s, 10 MB and a pandas-3 FutureWarning in every page process, which never uses Spark. The block
    is lifted on leaving, so a later `import pyspark.pandas` in the same process works as usual."""
    if "pandera" in sys.modules or "pyspark.pandas" in sys.modules:
        yield
        return
    sys.modules["pyspark.pandas"] = None  # type: ignore[assignment] - None in sys.modules makes an import fail
    try:
        yield
    finally:
        if "pyspark.pandas" in sys.modules and sys.modules["pyspark.pandas"] is None:
            del sys.modules["pyspark.pandas"]


def _read_patient_rows(path: Path, patient_id: str) -> pd.DataFrame:
    """One patient's rows of one contract table file, indexed by their row in the file (so a finding names the
    same row as a whole-table check). Parquet: the `patient_id` column is read to find the rows, then only the
    row groups holding them, one column at a time, keeping those rows (memory stays near one column of one row
    group, never the whole table). CSV has no such layout and is read whole, then filtered."""
    from pipeline.io import check_readable, read_table

    path = Path(path)
    if path.suffix != ".parquet":
        t = read_table(path)
        # ids compared as the contract check normalises them: surrounding blanks are no part of an id
        return t[t["patient_id"].astype(str).str.strip() == patient_id] if "patient_id" in t.columns else t.iloc[:0]
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = check_readable(path)
    if "patient_id" not in columns:
        return read_table(path).iloc[:0]  # the contract check names the missing column
    try:
        schema = pq.read_schema(path)
        # text columns are read dictionary-encoded (as Parquet stores them): decoding a whole column's strings to
        # keep a few hundred rows cost most of the read; only the kept rows are decoded, back to the file's type
        text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        pf = pq.ParquetFile(path, read_dictionary=text)
        ids = pf.read(columns=["patient_id"]).column(0)
        if pa.types.is_dictionary(ids.type):  # ids stripped as the contract check does ("P1 " is P1)
            ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
            codes = pc.indices_nonzero(pc.equal(pc.utf8_trim_whitespace(ids.dictionary), patient_id))
            match = pc.is_in(ids.indices, value_set=pc.cast(codes, ids.indices.type))
        else:
            match = pc.equal(pc.utf8_trim_whitespace(pc.cast(ids, pa.string())), patient_id)
        rows = np.flatnonzero(pc.fill_null(match, False).to_numpy(zero_copy_only=False))
        del ids, match
        starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
        groups = sorted(set(np.searchsorted(starts, rows, side="right") - 1))
        arrays = []
        for name in schema.names:  # one column at a time, only the row groups that hold the patient
            parts = []
            for g in groups:
                col = pf.read_row_group(g, columns=[name]).column(0)
                local = rows[(rows >= starts[g]) & (rows < starts[g + 1])] - starts[g]
                parts.append(col.take(pa.array(local)))
            kept = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for p in parts for c in p.chunks]
            arrays.append(pa.chunked_array([c.cast(schema.field(name).type) for c in kept],
                                           type=schema.field(name).type))
        one = pa.Table.from_arrays(arrays, schema=schema).to_pandas()
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: cannot be read ({err})") from err
    one.index = pd.Index(rows)
    return one


def read_patient_tables(data: Path, patient_id: str) -> dict[str, pd.DataFrame]:
    """The four contract tables of one patient only (an absent `events` table is empty), rows numbered as in
    the files: a page for one patient never loads the whole cohort."""
    with _without_pyspark_pandas():
        from pipeline.io import CONTRACT_COLUMNS, TableReadError, table_paths

    out: dict[str, pd.DataFrame] = {}
    unreadable: list[str] = []  # every file that cannot be read is named, not only the first
    for name, path in table_paths(Path(data)).items():
        try:
            out[name] = (pd.DataFrame({c.name: pd.Series(dtype=object) for c in CONTRACT_COLUMNS[name]})
                         if path is None else _read_patient_rows(path, patient_id))
        except TableReadError as err:
            unreadable.append(str(err))
    if unreadable:
        raise TableReadError.joined(unreadable)
    return out


def check_tables(raw: dict[str, pd.DataFrame], today: str | None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The contract check of some tables: the normalised tables of the accepted patients and every finding."""
    with _without_pyspark_pandas():
        from features.contract import MeasureCatalog, check
    from features.vocabulary import Vocabulary
    from pipeline.config import load_catalog

    vocabulary = load_catalog("drugs", Vocabulary.from_config)
    measures = load_catalog("measures", MeasureCatalog.from_config)
    result = check(raw, vocabulary, measures, today)
    return result.normalised, _rows_as_in_files(result.violations, raw)


def _rows_as_in_files(violations: pd.DataFrame, raw: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Findings with `row` the row of the file: one patient's tables keep their file rows as index, while the
    check numbers the rows it was given (a page once said `regimens, row 0` where validate says row 93)."""
    out = violations.copy()
    for table, frame in raw.items():
        at = (out["table"] == table) & out["row"].notna()
        if at.any():
            out.loc[at, "row"] = frame.index.to_numpy()[out.loc[at, "row"].astype(int).to_numpy()]
    return out


def _load_tables(data: Path, today: str | None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Read and check the contract tables: the normalised tables of the accepted patients and every finding
    (`table, row, patient_id, column, rule, severity, message`), so the page can show them."""
    with _without_pyspark_pandas():
        from pipeline.io import read_contract_tables

    return check_tables(read_contract_tables(data), today)


def patient_findings(violations: pd.DataFrame, patient_id: str) -> tuple[str, ...]:
    """This patient's data-check warnings as page lines: the finding in words, then the table and row where whoever
    fixes the export finds it. An error stops the page (a ValueError naming table, row, column and rule), because
    the record was rejected and any estimate would be wrong."""
    if violations.empty:
        return ()
    v = violations[violations["patient_id"].astype(str) == patient_id]
    records = v.to_dict(orient="records")
    errors = [f"table {r['table']}, row {r['row']}, column {r['column']} (rule {r['rule']}): {r['message']}"
              for r in records if r["severity"] == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValueError(f"patient {patient_id!r} has data errors, no page written: {errors[0]}{more}")
    return tuple(f"{r['message']} ({r['table']} table"
                 + ("" if pd.isna(r["row"]) else f", row {r['row']} counted from 0") + ")" for r in records)

