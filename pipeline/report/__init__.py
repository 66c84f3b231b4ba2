"""`escalate report`: the clinician's one-page view of a patient — the answer first (summary band), then the options,
the patient, doses against targets, trends, the reasons, safety, monitoring and the model's facts.

Read by name:
- `data`: the page as plain data (`Page`, `OptionRow`, `Summary` …) and numbers in words ('62 in 100 (52–72)').
- `load`: the model (registry alias champion, else candidate, else data/train/model/) and one patient's checked
  contract tables (Parquet read with a filter: a page never loads the whole cohort).
- `evidence`: what the page may say about this model version (horizon, intervals, validation performance).
- `clinical`: clinical rules — CTCAE v5 lab grades, dose verdicts against the drug catalogue's targets (juvenile
  per-kg / per-m² and label weight bands: configs/drugs.yaml), disease notes, stale measurements, the guideline's
  choice, reasons in clinical words (configs/clinical_rules.yaml).
- `assemble`: one patient's tables, features, predictions and SHAP explanations into a `Page`.
- `charts`: inline SVG with the geometry (`steps`, `axis_domain`) computed apart from the drawing.
- `render`: Jinja2 (autoescape) into one self-contained HTML file (pipeline/templates/).
This module is the stage entry point (`run_report`) and re-exports the names the tests and benchmarks use.
"""


from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import typer

from pipeline.report.assemble import (
    build_patient_page,
    decision_keys,
    event_lines,
    model_outputs,
    monitoring_reminders,
    option_explanations,
    option_rows,
    patient_facts,
    regimen_lines,
    safety_summary,
    simulated_training,
    trend_series,
)
from pipeline.report.charts import axis_domain, contrast_svg, icon_array_svg, steps, trends_svg, waterfall_svg
from pipeline.report.clinical import (
    disease_notes,
    dose_lines,
    guideline_option,
    lab_grade,
    lab_results,
    latest_activity,
    mosteller_bsa,
    plain_reason,
    reference_range,
)
from pipeline.report.data import (
    BANNER,
    CAVEAT,
    OKABE_ITO,
    SHAP_NOTE,
    Bar,
    LabResult,
    OptionExplanation,
    OptionRow,
    Page,
    RegimenLine,
    Reminder,
    Summary,
    TrendSeries,
    calibration_lines,
    in_100,
    points_between,
    score_range,
    signed_points,
    summarise,
)
from pipeline.report.evidence import (
    ModelEvidence,
    calibration_note,
    ineligible_text,
    load_evidence,
    performance_facts,
    pooled_calibration,
    thin_overlap_options,
)
from pipeline.report.load import (
    LoadedModel,
    _load_tables,
    check_tables,
    load_model,
    patient_findings,
    read_patient_tables,
)
from pipeline.report.render import INDEX_SCRIPT, page_file_name, render_index, render_page

__all__ = [
    "BANNER", "CAVEAT", "INDEX_SCRIPT", "OKABE_ITO", "SHAP_NOTE", "Bar", "LoadedModel", "ModelEvidence",
    "lab_results", "dose_lines", "disease_notes", "OptionExplanation", "OptionRow", "Page", "PageFailure",
    "ReportRefusal", "check_tables", "read_patient_tables", "RegimenLine", "Reminder", "TrendSeries",
    "build_patient_page", "calibration_lines", "calibration_note", "contrast_svg", "event_lines", "in_100",
    "ineligible_text", "latest_activity", "load_evidence", "load_model", "monitoring_reminders",
    "option_explanations", "option_rows", "page_file_name", "patient_facts", "patient_findings", "points_between",
    "performance_facts", "pooled_calibration", "regimen_lines", "batched_pages", "render_index", "render_page",
    "run_report", "safety_summary", "simulated_training", "score_range", "signed_points", "thin_overlap_options",
    "icon_array_svg", "steps", "axis_domain", "LabResult", "Summary", "summarise", "guideline_option", "lab_grade",
    "mosteller_bsa", "plain_reason", "reference_range", "trend_series", "trends_svg", "waterfall_svg",
]


class ReportRefusal(ValueError):
    """A page that cannot be written for a reason the user can fix (unknown patient, rejected record, a date
    after today); the CLI prints it on one line with exit status 2."""


def page_references() -> tuple[dict[str, Any], dict[str, Any]]:
    """configs/monitoring.yaml and configs/clinical_rules.yaml, each checked against the drugs and measures it names
    (a file that breaks a rule is one line naming it)."""
    from features.vocabulary import Vocabulary
    from pipeline.config import load_catalog, load_reference
    from pipeline.report import reference

    generics = load_catalog("drugs", Vocabulary.from_config).generics
    measures = tuple(load_reference("measures").get("measures") or ())  # the codes (the contract module is heavy)
    return (load_catalog("monitoring", lambda raw: reference.monitoring(raw, generics)),
            load_catalog("clinical_rules", lambda raw: reference.clinical_rules(raw, measures)))


#: `report --all` says how many pages it has written every this many pages
PROGRESS_EVERY = 100
#: `report --all` runs the model once for this many patients' pages (bounded memory: explanations are per row)
PAGES_PER_BATCH = 250


@dataclass(frozen=True)
class PageFailure:
    """A page `report --all` could not build: why, in one line. The other patients' pages are still written."""

    reason: str


def _failure(err: Exception) -> PageFailure:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return PageFailure(f"{type(err).__name__}: {first}" if first else type(err).__name__)


def batched_pages(patient_ids: Sequence[str], as_of: pd.Timestamp, tables: Mapping[str, pd.DataFrame],
                  loaded: LoadedModel, monitoring: Mapping[str, Any], evidence: ModelEvidence,
                  violations: pd.DataFrame, *, top_k: int = 3, rules: Mapping[str, Any] | None = None
                  ) -> Iterator[tuple[str, Page | PageFailure]]:
    """(patient, page) for each patient in order, as `report --all` builds them: the model runs once per batch of
    `PAGES_PER_BATCH` patients (features, predictions and explanations), and each page takes its patient's share;
    only one batch's rows are held apart from `tables` at a time. A batch the model fails on is paged patient by
    patient, so one patient's failure costs only that page: it comes as a `PageFailure` with the reason."""
    ids = {name: t["patient_id"].astype(str) for name, t in tables.items()}
    for start in range(0, len(patient_ids), PAGES_PER_BATCH):
        chunk = list(patient_ids[start:start + PAGES_PER_BATCH])
        rows = {name: t[ids[name].isin(chunk).to_numpy()].reset_index(drop=True) for name, t in tables.items()}
        own = {name: dict(tuple(t.groupby(t["patient_id"].astype(str), sort=False))) for name, t in rows.items()}
        try:
            batch = model_outputs(decision_keys(chunk, as_of), rows, loaded)
        except Exception as err:  # noqa: BLE001 - one patient's record can break the batch: each page runs alone
            typer.echo(f"the model failed on a batch of {len(chunk)} patients ({_failure(err).reason}): paging them "
                       "one by one", err=True)
            batch = None
        for pid in chunk:
            mine = {name: own[name].get(pid, t.iloc[:0]) for name, t in rows.items()}
            try:
                page = build_patient_page(pid, as_of, mine, loaded, monitoring, evidence, top_k=top_k,
                                          findings=patient_findings(violations, pid), rules=rules,
                                          outputs=None if batch is None else batch.one(pid))
            except Exception as err:  # noqa: BLE001 - the page is lost, never the run: the index says why
                yield pid, _failure(err)
            else:
                yield pid, page


def run_report(patient: str | None = None, all_patients: bool = False, as_of: date | None = None,
               data: Path = Path("data/cohort"), out: Path = Path("report.html"),
               model_dir: Path = Path("data/train/model"), top_k: int = 3, today: date | None = None) -> None:
    """Write the clinician page of one patient to the file `out` (or, with `all_patients`, one page per patient and
    an index into the folder `out`) for the decision on `as_of` (default: `today`), using only records dated
    before it; `today` (default: the current date) is the data's extraction date the records are checked
    against, so a retrospective page works for a patient with later records. One patient's page reads only
    that patient's rows. An unknown patient, one whose record has data errors or no assessment before the as-of
    date, or an as-of date after today is refused (`ReportRefusal`) before the model loads."""
    from features.build import without_record_before
    from pipeline.settings import load_settings

    if (patient is None) == (not all_patients):
        raise ReportRefusal("give either --patient ID or --all")
    the_day = today or date.today()
    when = pd.Timestamp(as_of or the_day)
    if when.date() > the_day:
        raise ReportRefusal(f"--as-of {when.date()} is after --today {the_day}: a page can only use what is "
                            "already recorded")
    if patient is not None:
        tables, violations = check_tables(read_patient_tables(data, patient), str(the_day))
        try:
            findings = patient_findings(violations, patient)
        except ValueError as err:
            raise ReportRefusal(f"--patient: {err}") from None
        if patient not in set(tables["patients"]["patient_id"].astype(str)):
            raise ReportRefusal(f"--patient: no patient {patient!r} in {data}")
    else:
        tables, violations = _load_tables(data, str(the_day))
    unrecorded = without_record_before(tables["patients"], tables["assessments"], when)
    if patient is not None and len(unrecorded):
        raise ReportRefusal(f"--patient {patient!r}: {unrecorded['message'].iloc[0]}")
    loaded = load_model(model_dir)
    evidence = load_evidence(loaded, load_settings())
    monitoring, rules = page_references()
    if patient is not None:
        page = build_patient_page(patient, when, tables, loaded, monitoring, evidence, top_k=top_k,
                                  findings=findings, rules=rules)
        html = render_page(page)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
        typer.echo(f"wrote {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    rejected = sorted(set(violations.loc[violations["severity"] == "error", "patient_id"].dropna().astype(str)))
    if rejected:
        typer.echo(f"{len(rejected)} patient(s) with data errors get no page: {', '.join(rejected[:20])}", err=True)
    blank = sorted(unrecorded["patient_id"].astype(str))
    if blank:
        typer.echo(f"{len(blank)} patient(s) with no assessment before {when.date()} get no page: "
                   f"{', '.join(blank[:20])}", err=True)
    todo = sorted(set(tables["patients"]["patient_id"].astype(str)) - set(blank))
    pages_of = batched_pages(todo, when, tables, loaded, monitoring, evidence, violations, top_k=top_k, rules=rules)
    failed: list[tuple[str, str]] = []
    for done, (pid, page) in enumerate(pages_of, start=1):
        if not isinstance(page, PageFailure):
            try:
                html = render_page(page)
            except Exception as err:  # noqa: BLE001 - as a page that fails to build: the others are still written
                page = _failure(err)
        if isinstance(page, PageFailure):
            failed.append((pid, page.reason))
            typer.echo(f"no page for {pid}: {page.reason}", err=True)
            continue
        name = page_file_name(pid)
        (out / name).write_text(html, encoding="utf-8")
        best = next((o.label for o in page.options if o.recommended), "—")
        entries.append({"patient_id": pid, "href": name, "recommended": best})
        if done % PROGRESS_EVERY == 0 and done < len(todo):  # a long run says how far it is (a count, no ids)
            typer.echo(f"{done} of {len(todo)} pages written", err=True)
    pages = len(entries)
    # a patient without a page is still found in the index, with why (the page would otherwise seem missing)
    entries += [{"patient_id": pid, "href": "", "recommended": "no page: data errors (escalate validate lists them)"}
                for pid in rejected]
    entries += [{"patient_id": pid, "href": "", "recommended": f"no page: nothing recorded before {when.date()}"}
                for pid in blank]
    entries += [{"patient_id": pid, "href": "", "recommended": f"no page: it failed ({reason})"}
                for pid, reason in failed]
    entries.sort(key=lambda e: e["patient_id"])
    (out / "index.html").write_text(
        render_index(entries, as_of=str(when.date()), model=f"{loaded.name} v{loaded.version}"), encoding="utf-8")
    typer.echo(f"wrote {pages} page{'s' if pages != 1 else ''} and {out / 'index.html'}")
    if failed:  # the run wrote what it could, and says it is not complete
        typer.echo(f"{len(failed)} page(s) failed: the index lists why", err=True)
        raise typer.Exit(1)

