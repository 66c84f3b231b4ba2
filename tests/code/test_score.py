"""Unit behaviour of the batch scoring job's pieces: chunk plans, row placement, staging, rejects, the invariant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from models.scoring import (
    REJECT_COLUMNS,
    assemble_chunk,
    check_invariant,
    clean_ids,
    n_chunks,
    part_name,
    plan_chunks,
    rejects_from_violations,
)
from pipeline.score import (
    ScoreRefusal,
    check_structure,
    input_hash,
    read_patient_ids,
    read_shard,
    stage_tables,
    table_paths,
)

OPTIONS = ("continue", "optimise_dose", "add_ivig")


@pytest.mark.parametrize("chunk_patients", [1, 3, 4, 10, 50])
def test_plan_is_sorted_complete_and_independent_of_input_order(chunk_patients: int) -> None:
    ids = [f"P{i:03d}" for i in range(10)]
    shuffled = list(np.random.default_rng(1).permutation(ids))
    plan = plan_chunks(shuffled + [" P003 ", None, ""], chunk_patients)
    planned = [pid for c in range(plan.total) for pid in plan.patients(c)]
    assert planned == ids  # cleaned, deduplicated, sorted; blanks are no patient
    assert plan.sizes().max() <= chunk_patients and plan.sizes().sum() == 10
    assert plan.total == n_chunks(10, chunk_patients) and (plan.sizes() > 0).all()
    assert (plan.ids == plan_chunks(ids, chunk_patients).ids).all()


def test_plan_orders_non_ascii_ids_by_code_point() -> None:
    ids = ["Zoë", "zoe", "Émile", "Ängström", "Z", "日本-1"]
    plan = plan_chunks(ids, 2)
    assert [p for c in range(plan.total) for p in plan.patients(c)] == sorted(ids)
    assert plan.chunk_of(pd.Series(ids)).tolist() == [sorted(ids).index(i) // 2 for i in ids]


def test_plan_from_arrow_equals_plan_from_python_values() -> None:
    """The job plans from the Parquet column (Arrow, chunked); it must plan and place rows exactly as from values."""
    values = [" b", "Zoë", None, "", "a ", "日本-1", "b", "c\t"]
    arrow = pa.chunked_array([values[:3], values[3:]], type=pa.string())
    plan = plan_chunks(values, 2)
    assert (plan_chunks(arrow, 2).ids == plan.ids).all()
    rows = ["c", " 日本-1", None, "unknown", "Zoë"]
    assert plan.chunk_of(pa.array(rows)).tolist() == plan.chunk_of(pd.Series(rows, dtype=object)).tolist()


def test_plan_of_nobody_still_has_one_chunk() -> None:
    plan = plan_chunks([], 5)
    assert len(plan) == 0 and plan.total == 1 and plan.sizes().tolist() == [0] and n_chunks(0, 5) == 1
    assert plan.chunk_of(pd.Series(["x", None], dtype=object)).tolist() == [0, 0]
    with pytest.raises(ValueError, match="at least 1"):
        plan_chunks(["a"], 0)


def test_every_row_lands_in_exactly_one_chunk() -> None:
    plan = plan_chunks(["a", "b", "c", "d"], 2)
    rows = pd.Series(["a", " d", "x-unknown", None, "c", "x-unknown"], dtype=object)
    chunk = plan.chunk_of(rows)
    assert chunk.tolist()[:2] == [0, 1] and chunk[4] == 1
    assert chunk[3] == 0  # no id: chunk 0, where the contract reports it
    assert chunk[2] == chunk[5] and 0 <= chunk[2] < 2  # an unknown patient's rows stay together
    assert (plan.chunk_of(rows) == chunk).all()  # deterministic


@pytest.mark.parametrize("bad", ["a\x00", "x" * 100_000], ids=["NUL", "100,000 characters"])
def test_an_id_the_plan_cannot_hold_is_an_input_patient_placed_by_its_hash(bad: str) -> None:
    """The plan holds ids at fixed width, which would drop a trailing NUL (merging 'a\\x00' with 'a') or widen
    every id to a broken cell's length. Such an id (the contract rejects it: identifier_nul / identifier_too_long)
    is kept apart: it still counts as an input patient, of the one chunk its rows are placed in, which rejects it;
    the run is not refused for it. In another table the same id lands in that chunk, never widening a batch."""
    plan = plan_chunks(["a", "b", bad, "c", "d", f" {bad} "], 2)
    assert len(plan) == 5 and plan.sizes().sum() == 5 and plan.ids.itemsize == 1
    [home] = [c for c in range(plan.total) if bad in list(plan.patients(c))]
    assert [pid for c in range(plan.total) for pid in plan.patients(c) if pid != bad] == ["a", "b", "c", "d"]
    chunk = plan.chunk_of(pd.Series(["d", bad, "a", f"{bad} "], dtype=object))
    assert chunk.tolist() == [1, home, 0, home]
    assert (plan_chunks(pa.chunked_array([["a", "b"], [bad, "c", "d"]]), 2).unfit == plan.unfit)


def test_clean_ids_strip_like_the_contract() -> None:
    assert clean_ids(pd.Series([" a", "b ", "", None, 7], dtype=object)).tolist() == ["a", "b", None, None, "7"]


def test_rejects_keep_errors_only_and_point_at_input_rows() -> None:
    violations = pd.DataFrame({
        "table": ["assessments", "assessments", "patients", "regimens"],
        "row": [1, 0, np.nan, 0],
        "patient_id": ["b", "a", None, "a"],
        "column": ["value", "unit", "patient_id", "dose"],
        "rule": ["unparseable_number", "unknown_unit", "missing_column", "out_of_range"],
        "severity": ["error", "warning", "error", "error"],
        "message": ["'x' is not a finite number", "odd unit", "gone", "-1 is out of range"],
    })
    out = rejects_from_violations(violations, {"assessments": np.array([40, 41]), "regimens": np.array([7])})
    assert list(out.columns) == list(REJECT_COLUMNS)
    assert "unknown_unit" not in set(out["rule"])  # a warning rejects nobody
    by_rule = out.set_index("rule")
    assert int(by_rule.loc["unparseable_number", "row"]) == 41 and int(by_rule.loc["out_of_range", "row"]) == 7
    assert pd.isna(by_rule.loc["missing_column", "row"])


def test_a_duplicate_names_its_first_copy_by_input_row() -> None:
    """Row numbers inside a message (a duplicate's first copy) are mapped back to the input like `row` itself."""
    violations = pd.DataFrame({
        "table": ["regimens"], "row": [2], "patient_id": ["a"], "column": ["*"], "rule": ["duplicate_row"],
        "severity": ["error"], "message": ["exact copy of regimens row 0 (every column equal); delete one"],
    })
    out = rejects_from_violations(violations, {"regimens": np.array([10, 11, 17])})
    assert int(out.loc[0, "row"]) == 17
    assert out.loc[0, "message"] == "exact copy of regimens row 10 (every column equal); delete one"


def _predictions(ids: list[str], options=OPTIONS) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({"row": np.repeat(np.arange(n), len(options)), "patient_id": np.repeat(ids, len(options)),
                         "decision_id": "d", "as_of": pd.Timestamp("2026-01-01"),
                         "option": np.tile(options, n), "p_response": np.linspace(0, 1, n * len(options))})


def test_assembled_chunk_has_keys_first_and_a_fixed_order() -> None:
    pred = _predictions(["b", "a"]).iloc[::-1]
    out = assemble_chunk(pred, OPTIONS)
    assert list(out.columns) == ["patient_id", "as_of", "option", "p_response"]
    assert out["patient_id"].tolist() == ["a"] * 3 + ["b"] * 3
    assert out["option"].tolist() == list(OPTIONS) * 2
    with pytest.raises(ValueError, match="column 'option'.*catalogue"):
        assemble_chunk(_predictions(["a"], ("continue", "bloodletting")), OPTIONS)
    with pytest.raises(ValueError, match="missing column"):
        assemble_chunk(_predictions(["a"]).drop(columns="option"), OPTIONS)


@pytest.mark.parametrize(
    ("scored", "rejected", "problem"),
    [
        (["a", "b"], ["c"], None),
        (["a"], ["c"], "neither scored nor rejected"),
        (["a", "b", "c"], ["c"], "both scored and rejected"),
        (["a", "b", "b"], ["c"], "exactly 3 option rows"),
        (["a", "b", "z"], ["c"], "not in the input"),
    ],
)
def test_invariant_names_each_breach(scored: list[str], rejected: list[str], problem: str | None) -> None:
    frame = pd.concat([_predictions([p]) for p in scored], ignore_index=True)
    report = check_invariant(pd.Series(["a", "b", "c"]), frame, pd.Series([*rejected, "stray"]), len(OPTIONS))
    if problem is None:
        assert report.ok and report.scored_patients == 2 and report.rejected_patients == 1
        assert report.unknown_patients == 1
    else:
        assert not report.ok and any(problem in p for p in report.problems)
        assert not any(pid in " ".join(report.problems) for pid in ("'a'", "'b'", "'c'"))


def _write_tables(folder: Path, fmt: str) -> dict[str, pd.DataFrame]:
    folder.mkdir()
    tables = {
        "patients": pd.DataFrame({"patient_id": ["p2", "p1", "p3"], "sex": ["F", "M", "F"],
                                  "birth_year": ["1970", "1980", "1990"],
                                  "diagnosis": ["adult_dermatomyositis"] * 3,
                                  "diagnosis_date": ["2020-01-01"] * 3, "antibodies": ["negative"] * 3,
                                  "ild": ["false"] * 3, "cancer_associated": ["false"] * 3}),
        "regimens": pd.DataFrame({"patient_id": ["p1", "p3", "ghost", "p1"], "drug": ["prednisone"] * 4,
                                  "dose": ["10"] * 4, "dose_unit": ["mg"] * 4, "route": ["oral"] * 4,
                                  "interval": ["daily"] * 4, "start_date": ["2021-01-01"] * 4,
                                  "end_date": [None] * 4}),
        "assessments": pd.DataFrame({"patient_id": ["p3", "p2", "p1"], "date": ["2022-01-01"] * 3,
                                     "measure": ["weight"] * 3, "value": ["70", "71", "72"], "unit": ["kg"] * 3}),
    }
    for name, frame in tables.items():
        if fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{name}.parquet", index=False)
    return tables


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_staging_puts_every_row_in_its_patients_chunk_with_its_input_row(tmp_path: Path, fmt: str) -> None:
    tables = _write_tables(tmp_path / "in", fmt)
    paths = table_paths(tmp_path / "in")
    assert paths["events"] is None  # optional table
    plan = plan_chunks(tables["patients"]["patient_id"], 2)
    counts = stage_tables(paths, plan, tmp_path / "staging")
    assert counts == {"patients": 3, "regimens": 4, "assessments": 3, "events": 0}
    for name, frame in tables.items():
        seen = []
        for chunk in range(2):
            shard, rows = read_shard(tmp_path / "staging", name, chunk)
            assert list(shard.columns) == list(frame.columns)
            assert (np.diff(rows) > 0).all()
            # each row is the input row it claims to be
            assert shard["patient_id"].tolist() == frame["patient_id"].iloc[rows].tolist()
            assert (plan.chunk_of(shard["patient_id"]) == chunk).all()
            seen.extend(rows.tolist())
        assert sorted(seen) == list(range(len(frame)))
    events, rows = read_shard(tmp_path / "staging", "events", 0)
    assert events.empty and "event" in events.columns and len(rows) == 0


@pytest.mark.parametrize("row_group_size", [1, 3])
def test_staging_reads_every_row_group_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                row_group_size: int) -> None:
    """Parquet is staged one row group at a time (and in batches within one): no row lost, every row numbered."""
    import pyarrow.parquet as pq

    import pipeline.score as score

    tables = _write_tables(tmp_path / "in", "parquet")
    paths = table_paths(tmp_path / "in")
    for name, frame in tables.items():
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in" / f"{name}.parquet",
                       row_group_size=row_group_size)
    monkeypatch.setattr(score, "BATCH_ROWS", 2)
    plan = plan_chunks(tables["patients"]["patient_id"], 2)
    assert stage_tables(paths, plan, tmp_path / "staging")["regimens"] == 4
    rows = np.sort(np.concatenate([read_shard(tmp_path / "staging", "regimens", c)[1] for c in range(2)]))
    assert rows.tolist() == [0, 1, 2, 3]
    assert pq.ParquetFile(paths["regimens"]).num_row_groups == -(-4 // row_group_size)


def test_integer_ids_with_a_missing_one_are_staged_as_the_plan_spells_them(tmp_path: Path) -> None:
    """Found by a review: with one regimen row without an id, a Parquet integer `patient_id` reached pandas as
    floats, so chunk 0's regimens read '1.0', '2.0': unknown patients, and patients 1 and 2 scored without drugs."""
    tables = _write_tables(tmp_path / "in", "parquet")
    paths = table_paths(tmp_path / "in")
    ids = {"p1": 1, "p2": 2, "p3": 3, "ghost": 99}
    for name, frame in tables.items():
        whole = frame["patient_id"].map(ids).astype("Int64")
        if name == "regimens":
            whole.iloc[2] = pd.NA  # the ghost's row: no id at all
        frame.assign(patient_id=whole).to_parquet(paths[name], index=False)
    plan = plan_chunks(read_patient_ids(paths["patients"]), 2)
    stage_tables(paths, plan, tmp_path / "staging")
    regimens, rows = read_shard(tmp_path / "staging", "regimens", 0)  # patients 1 and 2, and the id-less row
    assert rows.tolist() == [0, 2, 3]
    assert regimens["patient_id"].tolist()[::2] == ["1", "1"] and pd.isna(regimens["patient_id"].iloc[1])
    patients, _ = read_shard(tmp_path / "staging", "patients", 0)
    assert sorted(patients["patient_id"]) == ["1", "2"] == list(plan.patients(0))


def test_dictionary_columns_written_in_pieces_are_staged_as_their_values(tmp_path: Path) -> None:
    """Found by a review: a Parquet table written in two pieces, each with its own dictionary (pandas categoricals
    exported batch by batch), crashed staging (one IPC file holds one dictionary per column); a categorical id
    padded with blanks was then not trimmed. Dictionary columns are staged as plain values."""
    import pyarrow.parquet as pq

    tables = _write_tables(tmp_path / "in", "parquet")
    paths = table_paths(tmp_path / "in")
    regimens = tables["regimens"].assign(patient_id=[" p1", "p3", "ghost", "p1"])
    pieces = [pa.Table.from_pandas(piece.astype({"patient_id": "category", "drug": "category"}),
                                   preserve_index=False) for piece in (regimens.iloc[:2], regimens.iloc[2:])]
    assert pa.types.is_dictionary(pieces[0].schema.field("patient_id").type)
    with pq.ParquetWriter(paths["regimens"], pieces[0].schema) as writer:
        for piece in pieces:
            writer.write_table(piece)
    check_structure(paths)  # categorical ids are text
    plan = plan_chunks(tables["patients"]["patient_id"], 2)
    assert stage_tables(paths, plan, tmp_path / "staging")["regimens"] == 4
    shard, rows = read_shard(tmp_path / "staging", "regimens", 0)  # p1 (and p2)
    assert rows.tolist() == [0, 3] and shard["patient_id"].tolist() == [" p1", "p1"]
    assert not isinstance(shard["drug"].dtype, pd.CategoricalDtype) and shard["drug"].tolist() == ["prednisone"] * 2


def test_a_chunk_whose_staging_is_gone_fails_instead_of_scoring_without_rows(tmp_path: Path) -> None:
    """Found by a review: a second run on the same --out removed the staging when it finished, and the first run's
    remaining chunks read the missing shards as 'no rows', writing empty parts over good ones behind a manifest
    saying complete. A chunk with no rows of a table still reads as empty; a staging that is gone fails loudly."""
    import shutil

    tables = _write_tables(tmp_path / "in", "parquet")
    plan = plan_chunks(tables["patients"]["patient_id"], 1)
    stage_tables(table_paths(tmp_path / "in"), plan, tmp_path / "staging")
    events, rows = read_shard(tmp_path / "staging", "events", 0)  # the optional table is absent: no rows
    assert events.empty and len(rows) == 0
    regimens, _ = read_shard(tmp_path / "staging", "regimens", 1)  # p2 has no regimen
    assert regimens.empty
    shutil.rmtree(tmp_path / "staging")
    with pytest.raises(RuntimeError, match=r"staged input of table patients is missing .*rerun the same command"):
        read_shard(tmp_path / "staging", "patients", 0)


def test_one_output_folder_is_used_by_one_run_at_a_time(tmp_path: Path) -> None:
    """A second run on the folder a run holds is refused (flock, held for the whole run); a refused or empty run
    leaves no folder behind, and the lock is free again once the run ends."""
    from pipeline.score import WORK, run_lock

    out = tmp_path / "out"
    with run_lock(out):
        with pytest.raises(ScoreRefusal, match=r"another scoring run is using this folder now .*same command again"), \
                run_lock(out):
            pass
        (out / WORK / "run.json").write_text("{}", encoding="utf-8")  # the run got going
    with run_lock(out):  # released when the run ended
        pass
    assert (out / WORK / "run.json").is_file()
    fresh = tmp_path / "fresh"
    with run_lock(fresh):
        assert fresh.is_dir()
    assert not fresh.exists()  # nothing but the lock was written: nothing left


def test_shard_writers_reopen_an_evicted_chunk_in_a_new_file(tmp_path: Path) -> None:
    from pipeline.score import ShardWriters

    schema = pa.schema([("patient_id", pa.string()), ("_row", pa.int64())])
    writers = ShardWriters(tmp_path / "events", schema, max_open=2)
    for row, chunk in enumerate([0, 1, 2, 0, 1, 0]):  # full: the most recently used writer is closed
        writers.write(chunk, pa.RecordBatch.from_arrays([pa.array([f"p{chunk}"]), pa.array([row])], schema=schema))
    writers.close()
    assert len(list((tmp_path / "events" / "0").glob("part-*.arrow"))) == 2  # closed by chunk 1, reopened
    assert len(list((tmp_path / "events" / "2").glob("part-*.arrow"))) == 1  # stayed open throughout
    frame, rows = read_shard(tmp_path, "events", 0)
    assert rows.tolist() == [0, 3, 5] and frame["patient_id"].tolist() == ["p0"] * 3


def test_structure_and_identity_of_the_input(tmp_path: Path) -> None:
    _write_tables(tmp_path / "in", "parquet")
    paths = table_paths(tmp_path / "in")
    check_structure(paths)
    before = input_hash(paths)
    assert before == input_hash(paths)
    frame = pd.read_parquet(paths["assessments"]).drop(columns="unit")
    frame.to_parquet(paths["assessments"], index=False)
    assert input_hash(paths) != before
    with pytest.raises(ScoreRefusal, match=r"table assessments.*\['unit'\].*missing_column"):
        check_structure(paths)
    (tmp_path / "in" / "patients.parquet").unlink()
    with pytest.raises(ScoreRefusal, match="'patients' not found"):
        table_paths(tmp_path / "in")
    with pytest.raises(ScoreRefusal, match="no such folder"):
        table_paths(tmp_path / "nowhere")


def test_ids_stored_as_floats_are_refused_before_any_work(tmp_path: Path) -> None:
    """1.0 has no one spelling the contract ('1.0') and the chunk plan ('1') agree on: refused, naming the table."""
    tables = _write_tables(tmp_path / "in", "parquet")
    paths = table_paths(tmp_path / "in")
    tables["patients"].assign(patient_id=[2.0, 1.0, 3.0]).to_parquet(paths["patients"], index=False)
    with pytest.raises(ScoreRefusal, match=r"patients.parquet: column 'patient_id' is stored as double;.*\(rule: identifier_type\)$"):
        check_structure(paths)
    tables["patients"].assign(patient_id=[2, 1, 3]).to_parquet(paths["patients"], index=False)
    check_structure(paths)  # whole numbers are fine


def test_a_malformed_csv_met_while_staging_is_a_refusal_naming_file_and_line(tmp_path: Path) -> None:
    tables = _write_tables(tmp_path / "in", "csv")
    paths = table_paths(tmp_path / "in")
    with paths["regimens"].open("a", encoding="utf-8") as f:
        f.write("p1,prednisone,10,mg,oral,daily,2021-01-01,,one,too,many\n")
    plan = plan_chunks(tables["patients"]["patient_id"], 2)
    with pytest.raises(ScoreRefusal, match=r"regimens\.csv: not a well-formed CSV .*line 6.*unreadable_table"):
        stage_tables(paths, plan, tmp_path / "staging")


def test_part_names_sort_in_chunk_order() -> None:
    names = [part_name(c) for c in (0, 9, 10, 123)]
    assert names == sorted(names) and names[0] == "part-00000.parquet"


def test_invariant_from_per_part_counts_catches_a_patient_in_two_parts() -> None:
    from models.scoring import rows_per_patient

    part_a, part_b = rows_per_patient(_predictions(["a", "b"])), rows_per_patient(_predictions(["b"]))
    report = check_invariant(pd.Series(["a", "b"]), pd.concat([part_a, part_b]), pd.Series([], dtype=object), 3)
    assert not report.ok and any("exactly 3 option rows" in p for p in report.problems)
    assert check_invariant(pd.Series(["a", "b"]), part_a, pd.Series([], dtype=object), 3).ok


def test_per_chunk_reports_add_up_and_say_where_a_breach_is() -> None:
    from models.scoring import InvariantReport

    plan = plan_chunks(["a", "b", "c"], 2)  # chunk 0: a, b; chunk 1: c
    outputs = {0: _predictions(["a", "b"]), 1: _predictions(["b"])}  # b scored twice, c lost
    report = InvariantReport.combine([
        check_invariant(plan.patients(c), outputs[c], pd.Series([], dtype=object), 3).for_chunk(c)
        for c in range(plan.total)
    ])
    assert report.input_patients == 3 and report.scored_patients == 3
    assert any(p.startswith("chunk 1: 1 scored patient(s) not in the input") for p in report.problems)
    assert any(p.startswith("chunk 1: 1 input patient(s) neither scored nor rejected") for p in report.problems)
    assert "chunk 0" not in " ".join(report.problems)


def test_predict_explained_is_the_bundles_own_explained_prediction() -> None:
    """The batch job calls the bundle's `predict_frame(..., explain_top_k=k)`: one code path with the pyfunc,
    the caller's dictionary only as a fallback."""
    from models.scoring import predict_explained

    calls: list[tuple[int, object]] = []

    class Bundle:
        def predict_frame(self, features, explain_top_k=0, *, dictionary=None):
            calls.append((explain_top_k, dictionary))
            return features.assign(k=explain_top_k)

    frame = pd.DataFrame({"x": [1.0]})
    dictionary = pd.DataFrame({"feature": ["x"]})
    assert predict_explained(Bundle(), frame, dictionary, 3)["k"].tolist() == [3]
    assert predict_explained(Bundle(), frame, dictionary, 0)["k"].tolist() == [0]
    assert calls[0][0] == 3 and calls[0][1] is dictionary


def test_both_engines_import_one_chunk_module_and_it_imports_neither() -> None:
    """No import cycle: the local job and the Spark engine share `pipeline.chunks`, which imports neither."""
    import ast

    root = Path(__file__).resolve().parents[2] / "pipeline"

    def imported(name: str) -> set[str]:
        tree = ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert "pipeline.chunks" in imported("score") and "pipeline.chunks" in imported("spark_engine")
    assert "pipeline.score" not in imported("spark_engine")
    assert not {"pipeline.score", "pipeline.spark_engine"} & imported("chunks")


def test_a_patient_scored_for_only_some_options_breaks_the_invariant() -> None:
    """Every scored patient has exactly one row per option: a partly scored patient is lost rows, not a pass."""
    scored = pd.DataFrame({"patient_id": ["a", "a", "a", "b", "b"],
                           "option": ["continue", "add_ivig", "add_rituximab", "continue", "add_ivig"]})
    report = check_invariant(pd.Series(["a", "b"]), scored, pd.Series([], dtype=object), 3)
    assert not report.ok and any("exactly 3 option rows" in p for p in report.problems)
