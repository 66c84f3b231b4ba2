"""Rendering: the page and the index as self-contained HTML (Jinja2 autoescape, inline CSS and SVG)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from pipeline.report.charts import contrast_svg, icon_array_svg, trends_svg, waterfall_svg
from pipeline.report.data import (
    BANNER,
    CAVEAT,
    SHAP_NOTE,
    TEMPLATES,
    Page,
    calibration_lines,
    in_100,
    points_between,
    score_range,
    signed_points,
    summarise,
)

# --- rendering --------------------------------------------------------------------------------------------------
#: bidirectional embedding, override and isolate controls: in a record's text they would show it in another order
#: than stored (a reversed dose, an identifier that reads as another), so every output shows U+FFFD instead.
_BIDI_CONTROLS = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"), "\ufffd")


def _without_bidi_controls(value: Any) -> Any:
    """Jinja's finalize: every printed value, SVG and escaped text alike, without bidirectional controls."""
    if isinstance(value, Markup):
        return Markup(str.translate(value, _BIDI_CONTROLS))
    return value.translate(_BIDI_CONTROLS) if isinstance(value, str) else value


@functools.cache
def _environment() -> Any:
    """The one Jinja environment of this process: it compiles each template once (a page is otherwise mostly
    template compilation), and its templates and filters never change while the process runs."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every value from the record is escaped; SVG text is escaped when built
        finalize=_without_bidi_controls,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(in_100=in_100, points_between=points_between, signed_points=signed_points,
                       score_range=score_range, calibration_lines=calibration_lines)
    return env


@functools.cache
def _page_css() -> Markup:
    """The pages' and the index's inline style sheet, read once per process (`report --all` renders thousands)."""
    return Markup((TEMPLATES / "page.css").read_text(encoding="utf-8"))


def render_page(page: Page) -> str:
    """The self-contained HTML of one patient's page (inline CSS and SVG, no script, no network)."""
    env = _environment()
    summary = summarise(page)
    best = summary.option
    charts = {
        "trends": trends_svg(page.trends),
        "icons": icon_array_svg(best.p_response if best else None, f"respond within {page.horizon_weeks} weeks"),
        "waterfalls": {e.option: waterfall_svg(e) for e in page.explanations},
        "contrasts": {e.option: contrast_svg(e) for e in page.explanations if e.contrast},
    }
    css = _page_css()
    return env.get_template("patient.html.j2").render(page=page, charts=charts, css=css, banner=BANNER,
                                                      caveat=CAVEAT, shap_note=SHAP_NOTE, summary=summary)


def render_index(entries: Sequence[Mapping[str, str]], *, as_of: str, model: str) -> str:
    """The static site's index: a searchable list of patient identifiers linking to each page (no data beyond
    the identifier and the recommended option)."""
    import base64
    import hashlib

    env = _environment()
    css = _page_css()
    digest = base64.b64encode(hashlib.sha256(INDEX_SCRIPT.encode()).digest()).decode()
    return env.get_template("index.html.j2").render(entries=entries, as_of=as_of, model=model, css=css,
                                                     banner=BANNER, script=Markup(INDEX_SCRIPT), script_hash=digest)


#: the index page's only script: filters the patient list by the identifier typed (reads the DOM's text only).
INDEX_SCRIPT = (
    "document.getElementById('q').addEventListener('input',function(){var q=this.value.trim().toLowerCase();"
    "document.querySelectorAll('#patients tbody tr').forEach(function(r){r.hidden=q!==''&&"
    "r.cells[0].textContent.toLowerCase().indexOf(q)<0;});});"
)



def page_file_name(patient_id: str) -> str:
    """A safe file name for a patient's page (identifiers may hold any character)."""
    import hashlib
    import re

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", patient_id)[:60].strip("._") or "patient"
    return f"{stem}-{hashlib.sha1(patient_id.encode()).hexdigest()[:8]}.html"
