"""`escalate validate DIR`: check a folder of contract tables, print every violation, write them as JSON.

Exit code 0 when there is no error (warnings alone are fine), 1 when the contract is broken, 2 when the folder
cannot be read. DVC runs it with an explicit `--json data/validation.json`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer


def validate_command(
    directory: Annotated[Path, typer.Argument(help="folder with patients, regimens, assessments[, events] "
                                                   "as .parquet or .csv")],
    today: Annotated[str | None, typer.Option("--today", help="the data's 'today' (YYYY-MM-DD): no record may "
                                                             "be dated after it; default: the current date")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the findings here as JSON")] = None,
    limit: Annotated[int, typer.Option("--limit", help="print at most this many findings (0 = all)")] = 0,
) -> None:
    """Check contract tables against the data contract (docs/data-contract.md) and list every violation."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from features.contract import MeasureCatalog, check
    from features.vocabulary import Vocabulary
    from pipeline.config import load_reference
    from pipeline.io import read_contract_tables, write_json

    console = Console(width=200)
    try:
        the_day = pd.Timestamp(today or date.today().isoformat()).normalize()
    except ValueError as err:
        console.print(f"[red]--today {today!r} is not a date (YYYY-MM-DD): {err}[/red]")
        raise typer.Exit(2) from err
    try:
        tables = read_contract_tables(directory)
    except (FileNotFoundError, ValueError, OSError) as err:
        console.print(f"[red]cannot read contract tables: {err}[/red]")
        raise typer.Exit(2) from err

    vocabulary = Vocabulary.from_config(load_reference("drugs"))
    measures = MeasureCatalog.from_config(load_reference("measures"))
    result = check(tables, vocabulary, measures, the_day)
    v = result.violations
    n_errors, n_warnings = len(result.errors), len(result.warnings)

    if len(v):
        shown = v if limit <= 0 else v.head(limit)
        grid = Table(title=f"contract violations in {directory}", show_lines=False)
        for col in ("severity", "table", "row", "patient", "column", "rule", "message"):
            grid.add_column(col, overflow="fold")
        for r in shown.itertuples(index=False):
            style = "red" if r.severity == "error" else "yellow"
            grid.add_row(f"[{style}]{r.severity}[/{style}]", r.table, "" if pd.isna(r.row) else str(int(r.row)),
                         "" if r.patient_id is None or pd.isna(r.patient_id) else str(r.patient_id),
                         str(r.column), r.rule, str(r.message))
        console.print(grid)
        if len(shown) < len(v):
            console.print(f"... {len(v) - len(shown)} more findings not printed (see the JSON)")

    counts = {name: len(df) for name, df in tables.items()}
    n_patients = counts["patients"]
    console.print(
        f"{n_errors} error(s), {n_warnings} warning(s) in "
        + ", ".join(f"{n} {name}" for name, n in counts.items())
        + f"; {len(result.rejected_patients)} of {n_patients} patient(s) have an error"
    )
    if json_path is not None:
        write_json({
            "directory": str(directory),
            "today": the_day.date().isoformat(),
            "summary": {"errors": n_errors, "warnings": n_warnings, "rows": counts,
                        "patients": n_patients, "rejected_patients": len(result.rejected_patients)},
            "rejected_patients": list(result.rejected_patients),
            "violations": v,
        }, json_path)
        console.print(f"findings written to {json_path}")
    if n_errors:
        raise typer.Exit(1)
