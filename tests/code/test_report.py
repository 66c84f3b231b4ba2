"""The clinician page renderer: built from plain data, so these checks need no model and no MLflow."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from pipeline import report as R
from pipeline.config import load_reference

XSS = "<script>window.__pwned=1</script>"


def sample_page(patient_id: str = "P-0042", drug: str = "IVIG (Privigen)", event: str = "pneumonia") -> R.Page:
    """A realistic page of one patient (the shape `build_patient_page` produces)."""
    explanation = R.OptionExplanation(
        option="add_jak_inhibitor", label="add a JAK inhibitor (tofacitinib)", base_points=41.0, final_points=63.0,
        bars=(R.Bar("CDASI activity", 9.0), R.Bar("anti-MDA5", 8.0), R.Bar("IVIG", -2.0),
              R.Bar("all other facts (30)", 7.0)),
        contrast=(R.Bar("CDASI activity", 12.0), R.Bar("IVIG", -3.0), R.Bar("all other facts (30)", 13.0)),
        contrast_total=22.0,
        reasons=("latest CDASI activity = 28 score (0-100) → +9 in 100",),
        contrast_reasons=("latest CDASI activity = 28 score (0-100) → +12 in 100 vs continue",),
    )
    cont = R.OptionExplanation(option="continue", label="continue current regimen", base_points=45.0,
                               final_points=41.0, bars=(R.Bar("CDASI activity", -4.0),))
    return R.Page(
        patient_id=patient_id, as_of="2026-11-01", model_name="escalate-response", model_version="7",
        model_alias="champion", run_id="0123abcd", horizon_weeks=24, response_definition="total improvement score ≥ 40",
        facts=(("sex", "female"), ("age", "48 years"), ("antibodies", "anti-MDA5")),
        activity_facts=("CDASI activity 28 0–100 (2026-09-15)",),
        safety_facts=("no infections and no cytopenias in the last 6 months",),
        events=(("2023-08-02", "serious infection", event),),
        regimen=(R.RegimenLine(drug, "IVIG", "1 g/kg intravenous every 4 weeks", "2 g/kg every 4 weeks", 0.5, "below"),
                 R.RegimenLine("CellCept", "mycophenolate mofetil", "1000 mg oral twice daily", "2–3 g/day", 1.0, "at")),
        trends=(R.TrendSeries("cdasi_activity", "CDASI activity (skin)", "0–100", ("2026-01-10", "2026-05-02",
                                                                                  "2026-09-15"), (30.0, 32.0, 28.0)),
                R.TrendSeries("mmt8", "MMT-8 muscle strength", "0–80", ("2026-01-10", "2026-09-15"), (58.0, 62.0))),
        options=(
            R.OptionRow("continue", "continue current regimen", True, p_response=0.41, p_response_low=0.33,
                        p_response_high=0.49, effect_vs_continue=0.0, expected_tis=31, expected_tis_low=24,
                        expected_tis_high=38, p_safety=0.06, p_safety_low=0.04, p_safety_high=0.09),
            R.OptionRow("add_ivig", "add IVIG", False, ineligible_reason="already on ivig"),
            R.OptionRow("add_jak_inhibitor", "add a JAK inhibitor (tofacitinib)", True, p_response=0.62,
                        p_response_low=0.52, p_response_high=0.72, effect_vs_continue=0.214, expected_tis=45,
                        p_safety=0.09, p_safety_low=0.05, p_safety_high=0.14, recommended=True),
        ),
        explanations=(cont, explanation),
        monitoring=R.monitoring_reminders(load_reference("monitoring"), ["ivig", "mycophenolate"],
                                          ["tofacitinib"], {"ivig": "IVIG", "tofacitinib": "tofacitinib"}),
        model_facts=(("population", "1,834 decisions of 800 patients"),),
    )


@pytest.fixture(scope="module")
def html() -> str:
    return R.render_page(sample_page())


def test_page_carries_banner_caveat_and_model_identity(html):
    assert R.BANNER in html
    assert "no unmeasured factor" in html
    assert "escalate-response v7" in html and "0123abcd" in html and "as of <strong>2026-11-01" in html


def test_options_table_has_one_row_per_option_with_absolute_numbers(html):
    table = html[html.index('id="options-table"'):]
    table = table[: table.index("</table>")]
    assert table.count('class="option-row') == 3
    assert "62 in 100 (52–72)" in table and "+21" in table and "9 in 100 (5–14)" in table
    assert "31 (24–38)" in table
    ineligible = re.search(r'<tr class="option-row ineligible" data-option="add_ivig">(.*?)</tr>', table, re.S)
    assert ineligible and "no: already on ivig" in ineligible.group(1)
    recommended = re.search(r'<tr class="option-row recommended" data-option="add_jak_inhibitor">', table)
    assert recommended and table.count("★") == 1


def test_every_chart_is_inline_svg_with_alt_text_and_a_data_table(html):
    svgs = re.findall(r"<svg [^>]*>", html)
    assert len(svgs) == 4  # trends, two waterfalls, one contrast (continue has none)
    assert all('role="img"' in s and "aria-label=" in s for s in svgs)
    assert html.count("<title>") >= 5  # page title + one per chart
    assert html.count("Data behind the chart") == 3  # trends + one per explained option
    assert "#0072B2" in html and "#D55E00" in html  # Okabe–Ito blue / vermillion


def test_page_is_self_contained(html):
    without_ns = html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in without_ns and "https://" not in without_ns
    assert "<script" not in html and "<link" not in html
    assert "default-src 'none'" in html


def test_current_regimen_shows_dose_against_target_and_flags(html):
    assert "1 g/kg intravenous every 4 weeks" in html and "2 g/kg every 4 weeks" in html
    assert "below target: optimise" in html and "at target" in html and "50 %" in html


def test_reasons_in_plain_words(html):
    assert "latest CDASI activity = 28 score (0-100) → +9 in 100" in html
    assert "+12 in 100 vs continue" in html


@pytest.mark.parametrize("where", ["patient_id", "drug", "event"])
def test_input_is_escaped_everywhere(where):
    page = sample_page(**{where: XSS})
    out = R.render_page(page)
    assert "<script>window.__pwned" not in out
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in out


def test_svg_text_is_escaped():
    expl = R.OptionExplanation("x", XSS, 10, 20, (R.Bar(XSS, 10.0),), (R.Bar(XSS, 3.0),), 3.0)
    for svg in (R.waterfall_svg(expl), R.contrast_svg(expl),
                R.trends_svg([R.TrendSeries("m", XSS, XSS, ("2026-01-01", "2026-02-01"), (1.0, 2.0))])):
        assert "<script" not in svg and "&lt;script&gt;" in svg


def test_waterfall_steps_from_average_to_this_patient():
    expl = sample_page().explanations[1]
    svg = R.waterfall_svg(expl)
    assert ">41<" in svg and ">63<" in svg  # base and final values printed
    assert sum(b.points for b in expl.bars) == pytest.approx(expl.final_points - expl.base_points)


def test_bars_keep_the_total_when_small_facts_are_pooled():
    grouped = pd.DataFrame({"label": list("abcdefghij"), "points": [0.05, -0.04, 0.03, 0.02, 0.01, 0.01, -0.01,
                                                                    0.005, 0.002, 0.001]})
    bars = R._bars(grouped, 3)
    assert [b.label for b in bars] == ["a", "b", "c", "all other facts (7)"]
    assert sum(b.points for b in bars) == pytest.approx(grouped["points"].sum() * 100)


@pytest.mark.parametrize(
    ("current", "proposed", "expected", "absent"),
    [
        (["ivig"], ["rituximab"], ["hepatitis B screen (HBsAg, anti-HBc)", "renal function (creatinine)"],
         ["tuberculosis screen"]),
        (["mycophenolate"], ["tofacitinib"], ["tuberculosis screen", "lipid profile", "complete blood count (CBC)"],
         ["hepatitis B screen (HBsAg, anti-HBc)"]),
        (["hydroxychloroquine", "tocilizumab"], [], ["retinal screening", "tuberculosis screen"],
         ["hepatitis B screen (HBsAg, anti-HBc)", "renal function (creatinine)"]),
    ],
)
def test_monitoring_reminders_follow_current_and_proposed_drugs(current, proposed, expected, absent):
    reminders = R.monitoring_reminders(load_reference("monitoring"), current, proposed, {})
    tests = [r.test for r in reminders]
    assert tests[0].startswith("screening for opportunistic infections")
    for e in expected:
        assert e in tests
    for a in absent:
        assert a not in tests
    flagged = {d for r in reminders for d in r.drugs if d.endswith("(proposed)")}
    assert flagged == {f"{p} (proposed)" for p in proposed}


@pytest.mark.parametrize(
    ("p", "low", "high", "text"),
    [(0.62, 0.52, 0.72, "62 in 100 (52–72)"), (0.061, None, None, "6 in 100"), (None, None, None, "—")],
)
def test_probabilities_read_as_n_in_100(p, low, high, text):
    assert R.in_100(p, low, high) == text


@pytest.mark.parametrize(("d", "text"), [(0.14, "+14"), (-0.03, "−3"), (0.001, "0"), (float("nan"), "—")])
def test_differences_are_absolute_points(d, text):
    assert R.signed_points(d) == text


def test_index_page_lists_patients_and_escapes_identifiers():
    out = R.render_index([{"patient_id": XSS, "href": R.page_file_name(XSS), "recommended": "add IVIG"}],
                         as_of="2026-11-01", model="escalate-response v7")
    assert "&lt;script&gt;window.__pwned" in out and "<script>window.__pwned" not in out
    assert 'id="q"' in out and "script-src 'sha256-" in out


@pytest.mark.parametrize("pid", ["SEED-0001", XSS, "../../etc/passwd", "ÅÄÖ 1"])
def test_page_file_names_are_safe_and_distinct(pid):
    name = R.page_file_name(pid)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+\.html", name) and "/" not in name and not name.startswith(".")
    assert name != R.page_file_name(pid + "x")
