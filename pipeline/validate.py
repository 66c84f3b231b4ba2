"""`escalate validate --data DIR`: check a folder of contract tables, print every violation, write them as JSON.

Exit code 0 when there is no error (warnings alone are fine), 1 when the contract is broken, 2 when the folder
cannot be read. DVC runs it with an explicit `--json data/validation.json`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import typer

from pipeline.cli_types import Refusal

#: findings printed by default (the JSON file always has every one).
DEFAULT_LIMIT = 20


def run_validate(directory: Path, today: date | None = None, json_path: Path | None = None,
                 limit: int = DEFAULT_LIMIT, exit_zero: bool = False) -> None:
    """Check contract tables against the data contract (docs/data-contract.md): print the counts per (severity,
    table, rule) and the first `limit` findings (0 = all), write every finding to `json_path`; `today` (default:
    the current date) is the data's extraction date. A file that cannot be read is one finding with its cause.
    Errors exit 1 unless `exit_zero` (the DVC stage: later stages reject those patients, so the run goes on)."""
    import pandas as pd
    from rich.console import Console
    from rich.markup import escape

    from features.contract import MeasureCatalog, check
    from features.vocabulary import Vocabulary
    from pipeline.config import load_catalog
    from pipeline.io import load_contract_tables, write_json

    console = Console(width=200)
    the_day = pd.Timestamp(today or date.today())
    try:
        tables, unreadable = load_contract_tables(directory)
    except (FileNotFoundError, OSError) as err:  # a refusal: one line on stderr, exit 2, as every command's
        raise Refusal(f"cannot read contract tables: {err}") from None

    vocabulary = load_catalog("drugs", Vocabulary.from_config)
    measures = load_catalog("measures", MeasureCatalog.from_config)
    result = check(tables, vocabulary, measures, the_day, unreadable=unreadable)
    v = result.violations
    counts = finding_counts(v)
    if len(v):
        console.print(_counts_table(counts, directory))
        console.print(_findings_table(v, limit))
    rows = {name: (None if name in unreadable else len(tables[name])) for name in tables.keys() | unreadable.keys()}
    rows = {name: rows[name] for name in ("patients", "regimens", "assessments", "events") if name in rows}
    patients = tables.get("patients")
    listed = (set(patients["patient_id"].dropna().astype(str)) if patients is not None and "patient_id" in patients
              else None)
    console.print(escape(summary_line(result, rows, listed)), soft_wrap=True)
    if json_path is not None:
        write_json({
            "directory": str(directory),
            "today": the_day.date().isoformat(),
            "summary": {"errors": len(result.errors), "warnings": len(result.warnings), "rows": rows,
                        "patients": rows["patients"], "rejected_patients": len(result.rejected_patients),
                        "broken_tables": sorted(result.broken_tables), "counts": counts},
            "rejected_patients": list(result.rejected_patients),
            "violations": v,
        }, json_path)
        console.print(escape(f"all {len(v)} finding(s) written to {json_path}"))
    if len(result.errors) and not exit_zero:
        raise typer.Exit(1)


def finding_counts(violations: Any) -> Any:
    """Findings per (severity, table, rule), errors first, with how many distinct patients each touches."""
    import pandas as pd

    if violations.empty:
        return pd.DataFrame(columns=["severity", "table", "rule", "findings", "patients"])
    grouped = violations.groupby(["severity", "table", "rule"], sort=False)
    out = grouped.agg(findings=("rule", "size"), patients=("patient_id", "nunique")).reset_index()
    order = {"error": 0, "warning": 1}
    return (out.assign(_s=out["severity"].map(order)).sort_values(["_s", "findings"], ascending=[True, False],
                                                                   kind="stable")
            .drop(columns="_s").reset_index(drop=True))


def summary_line(result: Any, rows: dict[str, int | None], listed: set[str] | None = None) -> str:
    """One line: errors, warnings, rows per table and how many of the patients (`listed`: the ids of the patients
    table) are rejected, or why all are; ids of other tables missing from the patients table are counted apart, as
    `score` does."""
    shown = ", ".join(f"{name} {n}" if n is not None else f"{name} unreadable" for name, n in rows.items())
    line = f"{len(result.errors)} error(s), {len(result.warnings)} warning(s) in the rows of {shown}; "
    # patients, not rows of the patients table (a duplicated row is one patient)
    n_patients = len(listed) if listed is not None else rows.get("patients")
    if result.broken_tables:
        tables = ", ".join(t for t in rows if t in result.broken_tables)
        total = f"all {n_patients}" if n_patients is not None else f"all {len(result.rejected_patients)} known"
        return line + (f"the {tables} table(s) cannot be used (structural error above), so {total} patient(s) "
                       "are rejected")
    rejected = [str(p) for p in result.rejected_patients]
    unknown = 0 if listed is None else sum(p not in listed for p in rejected)
    extra = f" (+{unknown} id(s) not in the patients table)" if unknown else ""
    return line + f"{len(rejected) - unknown} of {n_patients} patient(s) have an error{extra}"


def _counts_table(counts: Any, directory: Path) -> Any:
    from rich.markup import escape
    from rich.table import Table

    grid = Table(title=escape(f"contract findings in {directory}, per rule"))
    for col, justify in (("severity", "left"), ("table", "left"), ("rule", "left"), ("findings", "right"),
                         ("patients", "right")):
        grid.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in counts.itertuples(index=False):
        style = "red" if r.severity == "error" else "yellow"
        grid.add_row(f"[{style}]{r.severity}[/{style}]", escape(r.table), escape(r.rule), str(r.findings),
                     str(r.patients))
    return grid


#: what the console prints in place of a patient identifier a message quotes (the JSON report keeps it).
WITHHELD_ID = "<patient id: see the JSON report>"


def console_message(message: str, patient_id: Any) -> str:
    """A finding's message for the console (DVC and CI logs keep it): the finding's own patient identifier, which
    a message about the patient_id column quotes ('patient_id 'P7' appears more than once'), is withheld; table
    and row locate the finding, and the JSON report names the patient."""
    import pandas as pd

    if patient_id is None or pd.isna(patient_id) or str(patient_id) == "":
        return message
    for quoted in dict.fromkeys((repr(str(patient_id)), repr(patient_id))):
        message = message.replace(quoted, WITHHELD_ID)
    return message


def _findings_table(v: Any, limit: int) -> Any:
    """The first `limit` findings (whole-table ones first: they explain the rest; then errors, then warnings), or
    all when `limit` is 0, without patient identifiers: the console ends up in DVC and CI logs (no patient
    identifier in logs), so the JSON report alone names them. Text from the input (columns, messages quoting cells)
    is escaped: printed as written, never read as console markup."""
    import pandas as pd
    from rich.markup import escape
    from rich.table import Table

    first = v.assign(_whole=v["row"].isna(), _error=v["severity"] == "error")
    first = first.sort_values(["_whole", "_error"], ascending=False, kind="stable")
    shown = first if limit <= 0 else first.head(limit)
    title = (f"all {len(v)} finding(s)" if len(shown) == len(v)
             else f"first {len(shown)} of {len(v)} finding(s) (--limit 0 prints all; the JSON has every one)")
    title += "; rows count from 0, the first data row of a file (a CSV's line 2)"
    grid = Table(title=title)
    for col in ("severity", "table", "row", "column", "rule", "message"):
        grid.add_column(col, overflow="fold")
    for r in shown.itertuples(index=False):
        style = "red" if r.severity == "error" else "yellow"
        grid.add_row(f"[{style}]{r.severity}[/{style}]", escape(r.table), "" if pd.isna(r.row) else str(int(r.row)),
                     "" if r.column is None or pd.isna(r.column) else escape(str(r.column)), escape(r.rule),
                     escape(console_message(str(r.message), r.patient_id)))
    return grid
