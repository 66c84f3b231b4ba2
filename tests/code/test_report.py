"""The clinician page renderer: built from plain data, so these checks need no model and no MLflow."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest

from features.vocabulary import Vocabulary
from pipeline import report as R
from pipeline.config import load_reference
from pipeline.report import assemble as A

VOCABULARY = Vocabulary.from_config(load_reference("drugs"))
TOLERANCE = 0.1  # params.yaml features.dose_tolerance: the page judges doses as the features did

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
        interval_level=0.9,
        facts=(("sex", "female"), ("age", "48 years"), ("antibodies", "anti-MDA5")),
        activity_facts=("CDASI activity 28 0–100 (2026-09-15)",),
        safety_facts=("no infections and no cytopenias in the last 6 months",),
        events=(("2023-08-02", "serious infection", event),),
        regimen=(R.RegimenLine(drug, "IVIG", "1 g/kg intravenous every 4 weeks", "2 g/kg every 4 weeks", 0.5, "below",
                               action="raise: 1 g/kg every 4 weeks is 50 % of the lowest target dose"),
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
        labs=(R.LabResult("lymphocytes", 0.4, "×10⁹/L", "2026-10-02", 30, 3, True, "low"),
              R.LabResult("platelets", 250, "×10⁹/L", "2026-10-02", 30, 0, False, "")),
        disease_notes=("anti-MDA5: the total improvement score does not measure the lungs",),
        activity=(("CDASI activity (skin) 28 / 100 (2026-09-15, 7 weeks old)", True),),
        guideline_option="continue",
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
    assert len(svgs) == 6  # the ★'s icon array, two trend panels, two waterfalls, one contrast (continue has none)
    assert all('role="img"' in s and "aria-label=" in s for s in svgs)
    assert html.count("<title>") >= 5  # page title + one per chart
    assert html.count("Data behind the chart") == 3  # trends + one per explained option
    assert "#0072B2" in html and "#D55E00" in html  # Okabe–Ito blue / vermillion


def test_page_is_self_contained(html):
    without_ns = html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in without_ns and "https://" not in without_ns
    assert "<script" not in html and "<link" not in html
    assert "default-src 'none'" in html


def test_current_regimen_shows_dose_against_target_and_flags():
    """From the features' current-regimen rows to the page: dose as prescribed, target, share and flag."""
    current = pd.DataFrame([
        {"drug": "Privigen", "generic": "ivig", "label": "IVIG", "dose": 1.0, "dose_unit": "g/kg",
         "route": "intravenous", "interval": "every 4 weeks", "target_text": "2 g/kg every 4 weeks",
         "fraction_of_target": 0.5, "status": "below"},
        {"drug": "CellCept", "generic": "mycophenolate", "label": "mycophenolate mofetil", "dose": 1500.0,
         "dose_unit": "mg", "route": "oral", "interval": "twice daily", "target_text": "2–3 g/day",
         "fraction_of_target": 1.5, "status": "at"},
        {"drug": "Plaquenil", "generic": "hydroxychloroquine", "label": "hydroxychloroquine", "dose": None,
         "dose_unit": None, "route": None, "interval": None, "target_text": None, "fraction_of_target": None,
         "status": "no_target"},
    ])
    lines = R.regimen_lines(current)
    assert [ln.dose for ln in lines] == ["1 g/kg intravenous every 4 weeks", "1500 mg oral twice daily",
                                         "dose not recorded"]
    assert [ln.target for ln in lines] == ["2 g/kg every 4 weeks", "2–3 g/day", "—"]
    out = R.render_page(dataclasses.replace(sample_page(), regimen=lines))
    table = out[out.index('class="regimen"'):]
    rows = re.findall(r"<tr data-status=[^>]*>(.*?)</tr>", table[: table.index("</table>")], re.S)[-3:]
    assert "50 %" in rows[0] and "below target: optimise" in rows[0] and "at target" not in rows[0]
    assert "150 %" in rows[1] and "at target" in rows[1] and "below target" not in rows[1]
    assert "no target" in rows[2] and "%" not in rows[2]


def test_reasons_in_plain_words_sit_under_their_own_option(html):
    why = html[html.index('id="h-why"'):]
    cont, jak = why[why.index('aria-label="Why continue'):], why[why.index('aria-label="Why add a JAK'):]
    cont = cont[: cont.index("</section>")]
    jak = jak[: jak.index("</section>")]
    assert "latest CDASI activity = 28 score (0-100) → +9 in 100" in jak
    assert "+12 in 100 vs continue" in jak
    assert "CDASI activity = 28" not in cont and "No single fact moves this estimate" in cont


@pytest.mark.parametrize("where", ["patient_id", "drug", "event"])
def test_input_is_escaped_everywhere(where):
    page = sample_page(**{where: XSS})
    out = R.render_page(page)
    assert "<script>window.__pwned" not in out
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in out


@pytest.mark.parametrize("where", ["patient_id", "drug", "event"])
def test_bidirectional_controls_from_input_cannot_reorder_the_page(where):
    """A right-to-left override in a record (U+202E) would show `SEED-1\u202e2-gm` as 'SEED-1mg-2': replaced."""
    page = sample_page(**{where: "SEED-1\u202emg-2\u2066x\u2069"})
    for out in (R.render_page(page),
                R.render_index([{"patient_id": page.patient_id, "href": "p.html", "recommended": "add IVIG"}],
                               as_of="2026-11-01", model="m")):
        assert not any(c in out for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    assert "SEED-1\ufffdmg-2\ufffdx\ufffd" in R.render_page(page)


def test_svg_text_is_escaped():
    expl = R.OptionExplanation("x", XSS, 10, 20, (R.Bar(XSS, 10.0),), (R.Bar(XSS, 3.0),), 3.0)
    for svg in (R.waterfall_svg(expl), R.contrast_svg(expl),
                R.trends_svg([R.TrendSeries("m", XSS, XSS, ("2026-01-01", "2026-02-01"), (1.0, 2.0))])):
        assert "<script" not in svg and "&lt;script&gt;" in svg


def _drawn(svg: str) -> list[tuple[str, float, float]]:
    """The bars of a chart read back from its SVG geometry, in points: (kind, left, right) via the root's
    `data-x0` (x of 0 points) and `data-scale` (px per point)."""
    x0 = float(re.search(r'data-x0="([-\d.]+)"', svg).group(1))
    scale = float(re.search(r'data-scale="([\d.]+)"', svg).group(1))
    bars = re.findall(r'<rect class="bar" data-kind="(\w+)" x="([-\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)
    return [(k, (float(x) - x0) / scale, (float(x) + float(w) - x0) / scale) for k, x, w in bars]


def _assert_adds_up(svg: str, base: float, bars: list[float], total: float) -> None:
    """Drawn base bar from 0, each step from the running total to the next, drawn total = base + Σ steps."""
    drawn = _drawn(svg)
    assert [k for k, *_ in drawn] == ["base", *("up" if b >= 0 else "down" for b in bars), "total"]
    _, lo, hi = drawn[0]
    assert (lo, hi) == pytest.approx(tuple(sorted((0.0, base))), abs=0.01)
    running = base
    for (_kind, lo, hi), points in zip(drawn[1:-1], bars, strict=True):
        assert (lo, hi) == pytest.approx(tuple(sorted((running, running + points))), abs=0.01)
        running += points
    assert drawn[-1][1:] == pytest.approx(tuple(sorted((0.0, running))), abs=0.01)
    assert running == pytest.approx(total, abs=0.01)


def test_waterfall_steps_from_average_to_this_patient():
    """Each fact's bar starts where the running total stands; base and printed values are the page's."""
    expl = sample_page().explanations[1]  # 41 → +9 → +8 → −2 → +7 → 63
    svg = R.waterfall_svg(expl)
    assert ">41<" in svg and ">63<" in svg  # base and final values printed
    _assert_adds_up(svg, 41.0, [b.points for b in expl.bars], 63.0)


def test_waterfall_draws_a_running_total_below_zero_where_it_is():
    """continue: 3 − 8 + 2 = −3 → the second bar spans −5…3 and the axis extends below zero (no clipping)."""
    expl = R.OptionExplanation("continue", "continue", 3.0, -3.0, (R.Bar("a", -8.0), R.Bar("b", 2.0)))
    svg = R.waterfall_svg(expl)
    _assert_adds_up(svg, 3.0, [-8.0, 2.0], -3.0)
    assert min(lo for _, lo, _ in _drawn(svg)) == pytest.approx(-5.0, abs=0.01)
    assert ">−10<" in svg  # the axis is labelled below zero


def test_contrast_draws_its_labelled_base_and_adds_up_to_its_total():
    """The cyclophosphamide case: bars +28, base +15 (the option's average difference), total +43."""
    expl = R.OptionExplanation("add_cyclophosphamide", "add IV cyclophosphamide", 40.0, 60.0, (),
                               contrast=(R.Bar("CK", 20.0), R.Bar("MMT-8", 10.0), R.Bar("IVIG", -2.0)),
                               contrast_total=43.0, contrast_base=15.0)
    svg = R.contrast_svg(expl)
    _assert_adds_up(svg, 15.0, [20.0, 10.0, -2.0], 43.0)
    assert "average difference for all patients" in svg and ">+15<" in svg and ">+43<" in svg


def test_chart_geometry_adds_up_without_svg():
    layout = R.steps("start", 10.0, (R.Bar("a", -25.0), R.Bar("b", 5.0)), "end")
    assert [(s.start, s.end) for s in layout] == [(0.0, 10.0), (10.0, -15.0), (-15.0, -10.0), (0.0, -10.0)]
    assert R.axis_domain(layout, (0.0, 100.0)) == (-20, 100)


def test_bars_keep_the_total_when_small_facts_are_pooled():
    grouped = pd.DataFrame({"label": list("abcdefghij"), "points": [0.05, -0.04, 0.03, 0.02, 0.01, 0.01, -0.01,
                                                                    0.005, 0.002, 0.001]})
    bars = A._bars(grouped, 3)
    assert [b.label for b in bars] == ["a", "b", "c", "all other facts (7)"]
    assert sum(b.points for b in bars) == pytest.approx(grouped["points"].sum() * 100)
    # a fact that moves nothing (an option the GLM gives no modifier: every contrast bar 0) is no bar; the change
    # the bars do not carry is one bar of its own, so the chart still ends at the difference the table shows
    none = pd.DataFrame({"label": ["on IVIG = yes", "ild = no", "x"], "points": [0.0, 0.0, 0.0]})
    assert A._bars(none, 8) == ()
    assert [(b.label, b.points) for b in A._bars(none, 8, 1.0)] == [("not attributed to one fact", 1.0)]


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


# --- what the page says about the model comes from the model ------------------------------------------------------
def _page(**changes) -> R.Page:
    import dataclasses

    return dataclasses.replace(sample_page(), **changes)


def test_horizon_and_interval_level_come_from_the_page_not_the_template():
    out = R.render_page(_page(horizon_weeks=16, interval_level=0.8))
    note = out[out.index('id="options-note"'):]
    note = note[: note.index("</p>")]
    assert "Options at 16 weeks" in out and "at 16 weeks" in note and "80 % uncertainty interval" in note
    assert "24 weeks" not in out and "90 %" not in note


def test_thin_overlap_not_modelled_and_calibration_are_said_plainly():
    rows = list(sample_page().options)
    rows[2] = R.OptionRow(**{**rows[2].__dict__, "thin_overlap": True,
                             "calibration_note": "of patients given 60–70 in 100 in validation, 57 in 100 responded "
                                                 "(n = 47)"})
    rows.append(R.OptionRow("optimise_dose", "optimise doses to target", False,
                            ineligible_reason="not modelled: taken at 1 training decision, too few to estimate"))
    out = R.render_page(_page(options=tuple(rows), positivity_threshold=0.02))
    jak = re.search(r'data-option="add_jak_inhibitor">(.*?)</tr>', out, re.S).group(1)
    assert "thin overlap" in jak
    assert 'id="thin-overlap"' in out and "fewer than 2 in 100 patients" in out
    assert 'id="not-modelled"' in out and "not a judgement that they are unsuitable" in out
    assert "57 in 100 responded (n = 47)" in out[out.index('id="calibration-context"'):]
    plain = R.render_page(sample_page())
    assert 'id="thin-overlap"' not in plain and 'id="not-modelled"' not in plain


def test_model_facts_show_performance_or_say_there_is_none():
    perf = R.performance_facts({"response_auroc": 0.799, "response_n": 893, "n_test_patients": 578}, 0.9, 24)
    out = R.render_page(_page(performance=perf))
    facts = out[out.index('id="h-facts"'):]
    assert "response AUROC 0.80 on 893 held-out decisions of 578 patients" in facts
    assert "has not been evaluated" in R.render_page(sample_page())


def test_data_findings_are_shown_and_escaped():
    out = R.render_page(_page(data_findings=(f"{XSS} (regimens table, row 5 counted from 0)",)))
    box = out[out.index('id="data-findings"'):]
    assert "regimens table, row 5 counted from 0" in box and "<script>window.__pwned" not in out


# --- the pure helpers behind those statements -----------------------------------------------------------------------
CURVE = pd.DataFrame({"option": ["a", "a", "b", "b"], "bin": [1, 6, 1, 6], "n": [30, 10, 10, 30],
                      "mean_predicted": [0.15, 0.62, 0.17, 0.66], "observed_rate": [0.1, 0.5, 0.3, 0.7]})


def test_pooled_calibration_weights_each_bin_by_its_size():
    pooled = R.pooled_calibration(CURVE, 10)
    assert pooled["bin"].tolist() == [1, 6] and pooled["n"].tolist() == [40, 40]
    assert pooled["observed_rate"].tolist() == pytest.approx([(3 + 3) / 40, (5 + 21) / 40])
    assert pooled["lower"].tolist() == pytest.approx([0.1, 0.6]) and pooled["upper"].tolist() == pytest.approx([0.2, 0.7])
    assert R.pooled_calibration(CURVE, 10, "quantile").empty  # quantile bins do not line up across options
    with pytest.raises(ValueError, match="table calibration: missing column"):
        R.pooled_calibration(CURVE.drop(columns="n"), 10)


@pytest.mark.parametrize(
    ("p", "min_n", "text"),
    [(0.64, 20, "of patients given 60–70 in 100 in validation, 65 in 100 responded (n = 40)"),
     (0.12, 20, "of patients given 10–20 in 100 in validation, 15 in 100 responded (n = 40)"),
     (0.64, 41, ""),       # too few validation decisions in that bin to say anything
     (0.35, 20, ""),       # no validation decision in that bin
     (None, 20, "")],
)
def test_calibration_note_reads_the_bin_holding_the_estimate(p, min_n, text):
    assert R.calibration_note(p, R.pooled_calibration(CURVE, 10), min_n=min_n) == text


@pytest.mark.parametrize(("coverage", "too_narrow"), [(0.42, True), (0.88, False)])
def test_interval_coverage_below_its_level_is_said_plainly(coverage, too_narrow):
    facts = dict(R.performance_facts({"sim_interval_coverage": coverage}, 0.9, 24))
    text = facts["uncertainty intervals"]
    assert f"90 % intervals held the true chance of response for {round(100 * coverage)} %" in text
    assert ("too narrow" in text) is too_narrow


def test_the_error_of_the_differences_from_continuing_is_said_where_the_truth_measured_it():
    """No interval for '+7 vs continuing' (refitted models agree far more closely than the truth: a paired bootstrap
    held the true difference for a quarter of decisions), so its measured error is said instead."""
    facts = dict(R.performance_facts({"sim_sqrt_pehe": 0.2054}, 0.9, 24))
    assert "off by about 21 in 100" in facts["differences from continuing"]
    assert "differences from continuing" not in dict(R.performance_facts({"response_auroc": 0.8}, 0.9, 24))


def test_the_gain_over_the_guideline_list_is_signed_with_the_pages_minus():
    """Found by a review: '95 % confidence interval -9.0 to +17.8' beside '−5' elsewhere on the page."""
    gain = {"decision_value_gain_vs_guideline": 0.044, "decision_value_gain_vs_guideline_ci_low": -0.09,
            "decision_value_gain_vs_guideline_ci_high": 0.178}
    text = dict(R.performance_facts(gain, 0.9, 24))["against the guideline list"]
    assert "by +4.4 in 100 (95 % confidence interval \u22129.0 to +17.8;" in text


def test_missing_or_nan_metrics_are_left_out_not_invented():
    assert R.performance_facts({}, 0.9, 24) == ()
    facts = dict(R.performance_facts({"response_auroc": float("nan"), "safety_auroc": 0.73}, 0.9, 24))
    assert list(facts) == ["safety model"]


def test_thin_overlap_is_the_patients_own_propensity_below_the_threshold():
    pred = pd.DataFrame({"option": ["continue", "add_ivig", "add_jak_inhibitor", "add_abatacept"],
                         "eligible": [True, False, True, True], "propensity": [0.5, float("nan"), 0.01, 0.02]})
    assert R.thin_overlap_options(pred, 0.02) == {"add_jak_inhibitor"}
    assert R.thin_overlap_options(pred.drop(columns="propensity"), 0.02) == set()


@pytest.mark.parametrize(
    ("reason", "text"),
    [("already on ivig", "already on IVIG"),
     ("not modelled: taken at 1 training decision(s), too few to estimate",
      "not modelled: taken at 1 training decision, too few to estimate"),
     ("not modelled: taken at 0 training decision(s), too few to estimate",
      "not modelled: taken at 0 training decisions, too few to estimate")],
)
def test_ineligibility_reasons_read_in_clinical_words(reason, text):
    assert R.ineligible_text(reason, {"ivig": "IVIG", "rituximab": "rituximab"}) == text


def test_option_rows_carry_reason_words_and_calibration():
    pred = pd.DataFrame({"option": ["continue", "add_ivig"], "eligible": [True, False],
                         "ineligible_reason": ["", "already on ivig"], "p_response": [0.64, float("nan")],
                         "recommended": [True, False]})
    rows = R.option_rows(pred, {}, calibration=R.pooled_calibration(CURVE, 10), drug_labels={"ivig": "IVIG"})
    assert rows[0].calibration_note.startswith("of patients given 60–70 in 100") and rows[0].recommended
    assert rows[1].ineligible_reason == "already on IVIG" and rows[1].calibration_note == ""


def test_small_reasons_are_left_out_of_the_page():
    r = pd.Series({"reason_1_text": "latest HAQ = 1.4 \u2192 +5 in 100", "reason_1_contribution": 0.05,
                   "reason_2_text": "tiny \u2192 0 in 100", "reason_2_contribution": 0.001})
    assert A._reason_texts(r, "reason", 2) == ("latest HAQ = 1.4 \u2192 +5 in 100",)


def test_patient_findings_say_the_warning_in_words_and_errors_stop_the_page():
    """A clinician reads the warning, then where the export holds it (no column names or rule codes); an error names
    table, row, column and rule and writes no page."""
    v = pd.DataFrame({"table": ["regimens", "assessments", "regimens"], "row": pd.array([5, 9, None], "Int64"),
                      "patient_id": ["P1", "P2", "P1"], "column": ["dose_unit", "value", "dose_unit"],
                      "rule": ["no_body_size", "range", "check_skipped"], "severity": ["warning", "error", "warning"],
                      "message": ["no weight", "mmt8 = 99 above 80", "not checked"]})
    assert R.patient_findings(v, "P1") == ("no weight (regimens table, row 5 counted from 0)",
                                           "not checked (regimens table)")
    with pytest.raises(ValueError, match=r"table assessments, row 9, column value \(rule range\)"):
        R.patient_findings(v, "P2")
    assert R.patient_findings(v.iloc[:0], "P1") == ()


def test_latest_activity_shows_scores_against_their_scale_with_age_and_stale_mark():
    trends = sample_page().trends + (R.TrendSeries("ck", "Creatine kinase", "× upper limit of normal",
                                                    ("2026-07-15",), (4.9,)),)
    rules = {"stale_after_days": {"default": 45}}
    assert R.latest_activity(trends, pd.Timestamp("2026-10-01"), rules) == (
        ("CDASI activity (skin) 28 / 100 (2026-09-15, 2 weeks old)", False),
        ("MMT-8 muscle strength 62 / 80 (2026-09-15, 2 weeks old)", False),
        ("Creatine kinase 4.9 × upper limit of normal (2026-07-15, 3 months old)", True))


def test_evidence_uses_local_metrics_only_for_the_same_run(tmp_path):
    import json
    from types import SimpleNamespace

    from models.bundle import BundleConfig
    from pipeline.settings import settings_from

    (tmp_path / "evaluate" / "plots").mkdir(parents=True)
    (tmp_path / "evaluate" / "metrics.json").write_text(json.dumps({"response_auroc": 0.8, "response_ece": None}))
    CURVE.to_csv(tmp_path / "evaluate" / "plots" / "calibration.csv", index=False)
    loaded = R.LoadedModel(SimpleNamespace(config=BundleConfig()), "m", "local", "data/train/model", "run-a")
    params = settings_from({"labels": {"horizon_weeks": 16}, "evaluation": {"calibration_bins": 10}})

    def evidence(run_id: str | None) -> R.ModelEvidence:
        """The page's evidence when data/evaluate/run.json names `run_id` (None: evaluate wrote no run.json)."""
        run_json = tmp_path / "evaluate" / "run.json"
        run_json.unlink(missing_ok=True)
        if run_id is not None:
            run_json.write_text(json.dumps({"run_id": run_id}))
        return R.load_evidence(loaded, params, tmp_path / "evaluate", use_mlflow=False)

    same = evidence("run-a")
    assert same.horizon_weeks == 16 and same.interval_level == BundleConfig().intervals.level
    assert same.metrics == {"response_auroc": 0.8} and len(same.calibration) == 2
    # evaluated another run (the model was trained again, evaluate not yet rerun), or unknown which: not shown
    for other in (evidence("run-b"), evidence(None)):
        assert other.metrics == {} and other.calibration.empty and other.source == "not evaluated"
        assert other.subgroups.empty
    # every held-out metric (tables/headline.json) is preferred to the headline subset in metrics.json
    (tmp_path / "evaluate" / "tables").mkdir()
    (tmp_path / "evaluate" / "tables" / "headline.json").write_text(json.dumps({"response_auroc": 0.8, "response_n": 90}))
    full = evidence("run-a")
    assert full.metrics == {"response_auroc": 0.8, "response_n": 90} and full.source.endswith("headline.json")
    # the validation by clinical subgroup, from the same evaluation's tables
    SUBGROUPS.to_csv(tmp_path / "evaluate" / "tables" / "subgroups.csv", index=False)
    assert evidence("run-a").subgroups.equals(SUBGROUPS) and evidence("run-b").subgroups.empty


SUBGROUPS = pd.DataFrame({"subgroup": ["ild", "ild", "age_group", "age_group"],
                          "level": ["ILD", "no ILD", "adult", "juvenile"], "n": [164, 430, 576, 18],
                          "auroc": [0.7867, 0.8078, 0.802, np.nan], "ece": [0.0875, 0.0455, 0.0426, np.nan]})


def test_the_model_facts_say_how_it_did_for_this_patients_subgroups():
    """From the evaluation's subgroup table: the rows of this patient's ILD status and age group, in words; a
    subgroup too small to judge says so; no table, no sentence."""
    from models.response import JUVENILE_COLUMN
    from pipeline.report.assemble import _subgroups
    from pipeline.report.evidence import subgroup_fact

    child = pd.DataFrame({"patient_id": ["P1"], JUVENILE_COLUMN: [1.0], "ild": [1.0],  # the decision's feature row
                          **{f: [0.0] for f in ("anti_mda5", "anti_synthetase", "anti_tif1g", "anti_nxp2",
                                                "anti_mi2", "anti_sae", "anti_srp_hmgcr", "antibody_negative")}})
    groups = _subgroups(child)
    assert groups == {"antibody_group": "no antibody recorded", "ild": "ILD", "age_group": "juvenile"}
    assert subgroup_fact(SUBGROUPS, groups) == ("ILD (164 decisions): AUROC 0.79, calibration error 9 in 100; "
                                                "juvenile (18 decisions): too few to judge")
    assert subgroup_fact(pd.DataFrame(), groups) == ""


# --- the summary band, clinical rules, one patient's read ------------------------------------------------------
def test_summary_band_comes_first_with_the_answer_dose_actions_and_reasons(html):
    """Before the options table: the ★ option, its chance with interval, the gains over continuing and over the
    guideline's choice, its safety risk with the window, dose actions first, this patient's reasons, alerts."""
    summary = html[html.index('id="summary"'):html.index("</section>", html.index('id="summary"'))]
    assert html.index('id="summary"') < html.index('id="banner"') < html.index('id="options-table"')
    assert "add a JAK inhibitor (tofacitinib)" in summary and "62 in 100" in summary and "52–72" in summary
    assert "+21 in 100" in summary  # vs continuing
    assert "vs guideline choice (continue current regimen)" in summary and "+21 in 100" in summary
    assert "within 24 weeks" in summary and "9 in 100" in summary
    assert summary.index("First, the doses") < summary.index("What moved this estimate most")
    assert "IVIG: raise: 1 g/kg every 4 weeks is 50 %" in summary
    assert "latest CDASI activity = 28" in summary
    assert "lymphocytes 0.4" in summary and "grade 3" in summary and "disease note" in summary
    assert "platelets" not in summary  # only flagged labs
    assert "1 activity measure out of date" in summary


def test_a_drug_the_labels_advise_against_is_shown_but_never_starred_and_the_page_says_so():
    """Found by a clinical review: a ⊘ option with the highest number read 'eligible: yes' beside a footnote
    calling the ★ the highest estimate among the eligible options."""
    page = sample_page()
    advised = R.OptionRow("add_abatacept", "add abatacept", True, p_response=0.80, effect_vs_continue=0.39,
                          p_safety=0.2, advised_against=True, combination_rule="labels advise against")
    out = R.render_page(dataclasses.replace(page, options=(*page.options, advised)))
    row = re.search(r'data-option="add_abatacept">(.*?)</tr>', out, re.S).group(1)
    assert "⊘ not with current drugs" in row and "a label advises against it with the current drugs: never ★" in row
    assert "★" not in row.split("never ★")[0]
    note = out[out.index('id="options-note"'):]
    assert "eligible options that no drug label advises against with the current drugs" in note[: note.index("</p>")]


def test_summary_gives_the_starred_options_reasons_against_continuing():
    """The level's reasons (HAQ, lines of therapy) are the same for every option; what sets the ★ apart from
    continuing is its average difference and this patient's facts that move it."""
    page = sample_page()
    jak = dataclasses.replace(page.explanations[1], contrast_base=9.0)
    summary_of = lambda out: out[out.index('id="summary"'):out.index("</section>", out.index('id="summary"'))]  # noqa: E731
    summary = summary_of(R.render_page(dataclasses.replace(page, explanations=(page.explanations[0], jak))))
    contrast = summary[summary.index('id="summary-contrast"'):]
    assert "Against continuing:</strong> +9 in 100 on average for all patients" in contrast
    assert "latest CDASI activity = 28 score (0-100) → +12 in 100 vs continue" in contrast
    alone = dataclasses.replace(jak, contrast_reasons=())
    summary = summary_of(R.render_page(dataclasses.replace(page, explanations=(page.explanations[0], alone))))
    assert "and no fact of this patient changes that" in summary
    assert 'id="summary-contrast"' not in summary_of(R.render_page(page))  # no contrast explained: nothing said


def test_the_star_says_what_it_maximises_when_the_model_weighs_safety():
    page = dataclasses.replace(sample_page(), star_rule=A.star_rule(0.5))
    out = R.render_page(page)
    assert "Highest estimated chance of response less 0.5 × its risk of a serious infection or cytopenia at 24" in out
    assert "★ = highest estimated chance of response less 0.5 ×" in out
    assert A.star_rule(0.0) == "highest estimated chance of response"


def test_summary_compares_the_starred_options_safety_risk_with_continuing(html):
    summary = html[html.index('id="summary"'):html.index("</section>", html.index('id="summary"'))]
    assert 'id="safety-vs-continue">+3 vs continuing (6 in 100)' in summary


def test_the_banner_says_when_the_model_learnt_from_simulated_patients_only():
    page = sample_page()
    assert 'id="simulated-training"' not in R.render_page(page)  # unknown: said in model facts, not claimed
    simulated = R.render_page(dataclasses.replace(page, simulated_training=True))
    banner = simulated[simulated.index('id="banner"'):]
    assert "simulated patients only" in banner[: banner.index("</div>")]
    assert R.simulated_training({"sim_regret": 0.04, "response_auroc": 0.8}) is True
    assert R.simulated_training({"response_auroc": 0.8}) is False and R.simulated_training({}) is None


def test_calibration_context_names_the_options_each_validation_bin_holds_lowest_first():
    rows = (R.OptionRow("a", "option A", True, p_response=0.62, calibration_note="of patients given 60–70 …"),
            R.OptionRow("b", "option B", True, p_response=0.35, calibration_note="of patients given 30–40 …"),
            R.OptionRow("c", "option C", True, p_response=0.64, calibration_note="of patients given 60–70 …"),
            R.OptionRow("d", "option D", False))
    assert R.calibration_lines(rows) == ("option B (35): of patients given 30–40 …",
                                         "option A (62), option C (64): of patients given 60–70 …")


def test_summary_band_carries_the_recommended_options_caution_and_thin_overlap(html):
    """A label caution or thin overlap of the ★ option is said on the first screen, not only in the table."""
    summary = html[html.index('id="summary"'):html.index("</section>", html.index('id="summary"'))]
    assert "summary-caution" not in summary and "summary-overlap" not in summary
    page = sample_page()
    rule = "rituximab in the last year: B cells may still be depleted <b>"
    options = tuple(dataclasses.replace(o, combination_rule=rule, thin_overlap=True) if o.recommended else o
                    for o in page.options)
    marked = R.render_page(dataclasses.replace(page, options=options))
    summary = marked[marked.index('id="summary"'):marked.index("</section>", marked.index('id="summary"'))]
    assert "⚠ caution" in summary and "B cells may still be depleted &lt;b&gt;" in summary
    assert "thin overlap" in summary


def test_labs_are_graded_against_ctcae_v5_and_flagged_from_grade_2():
    rules = load_reference("clinical_rules")
    labs = {r["measure"]: r for r in rules["labs"]["tests"]}
    assert R.lab_grade(0.4, labs["lymphocytes"]) == (3, "low")
    assert R.lab_grade(0.9, labs["lymphocytes"]) == (1, "low")
    assert R.lab_grade(1.2, labs["lymphocytes"]) == (0, "")
    assert R.lab_grade(0.45, labs["neutrophils"]) == (4, "low")
    assert R.lab_grade(130, labs["alt"], uln=40) == (2, "high")  # > 3 × ULN
    assert R.lab_grade(130, labs["alt"], uln=20) == (3, "high")  # the row's own ULN wins
    a = pd.DataFrame({"measure": ["lymphocytes", "lymphocytes", "platelets"], "value": [1.5, 0.4, 250.0],
                      "date": pd.to_datetime(["2026-06-01", "2026-10-02", "2026-10-02"]),
                      "upper_limit_normal": [None, None, None]})
    out = R.lab_results(a, pd.Timestamp("2026-11-01"), rules)
    assert [(x.label, x.grade, x.flagged) for x in out] == [("lymphocytes", 3, True), ("platelets", 0, False)]
    assert out[0].text == "lymphocytes 0.4 ×10⁹/L (2026-10-02): grade 3 (severe), low"


def test_a_lab_outside_its_reference_range_is_never_called_normal():
    """CTCAE grades one side of each lab (creatinine only when it rises), but a low creatinine means low muscle
    mass in myositis: every lab shown says 'below / above the reference range' on its ungraded side, judged
    against the range of the patient's sex, and only a value within the range reads 'normal'."""
    from pipeline.report import page_references

    rules = page_references()[1]  # the shipped rules, as the page reads them
    labs = {r["measure"]: r for r in rules["labs"]["tests"]}
    assert R.lab_grade(38, labs["creatinine"]) == (0, "low")  # no CTCAE grade, yet not normal
    for rule in rules["labs"]["tests"]:
        for sex in ("F", "M", None):
            low, high = R.reference_range(rule, sex)
            assert R.lab_grade(low * 0.98, rule, sex=sex)[1] == "low", (rule["measure"], sex)
            assert R.lab_grade(high * 1.02, rule, sex=sex)[1] == "high", (rule["measure"], sex)
            assert R.lab_grade((low + high) / 2, rule, sex=sex) == (0, ""), (rule["measure"], sex)
    assert R.lab_grade(38, labs["creatinine"], sex="F") == (0, "low")
    assert R.lab_grade(55, labs["creatinine"], sex="M") == (0, "low") and R.lab_grade(55, labs["creatinine"],
                                                                                         sex="F") == (0, "")
    assert R.lab_grade(480, labs["platelets"]) == (0, "high") and R.lab_grade(9.1, labs["neutrophils"]) == (0, "high")
    assert R.lab_grade(200, labs["creatinine"], sex="F") == (2, "high")  # > 1.5 × the female ULN of 90
    a = pd.DataFrame({"measure": ["creatinine", "haemoglobin", "alt"], "value": [38.0, 16.2, 5.0],
                      "date": pd.to_datetime(["2026-10-02"] * 3), "upper_limit_normal": [None, None, 25.0]})
    out = R.lab_results(a, pd.Timestamp("2026-11-01"), rules, sex="F")
    assert [(x.label, x.grade, x.direction, x.flagged) for x in out] == [
        ("haemoglobin", 0, "high", False), ("ALT", 0, "low", False), ("creatinine", 0, "low", False)]
    assert out[2].text == "creatinine 38 µmol/L (2026-10-02): below the reference range 45–90 µmol/L"
    assert out[1].outside == "below the reference range 7–25 U/L"  # the laboratory's own upper limit
    html = R.render_page(dataclasses.replace(sample_page(), labs=out))
    table = html[html.index('id="labs"'):]
    table = table[:table.index("</table>")]
    assert "below the reference range 45–90 µmol/L" in table and "above the reference range 12–15.5 g/dL" in table
    assert "normal" not in table.replace("reference range", "")
    assert "creatinine" not in html[html.index('class="alerts"'):][:400]  # outside the range, but no flag


def _current(**rows: dict) -> pd.DataFrame:
    base = {"drug": None, "label": None, "dose": None, "dose_unit": "mg", "route": "oral", "interval": "daily",
            "target_text": None, "fraction_of_target": None, "status": "no_target", "intensity_mg_day": None,
            "target_low_mg_day": None, "target_high_mg_day": None}
    return pd.DataFrame([{**base, "generic": g, "label": g, "drug": g, **r} for g, r in rows.items()])


def test_dose_rules_flag_steroid_above_taper_goal_and_show_room_within_range():
    current = _current(
        prednisone={"dose": 15.0, "intensity_mg_day": 15.0},
        mycophenolate={"dose": 1000.0, "interval": "twice daily", "intensity_mg_day": 2000.0,
                       "target_low_mg_day": 2000.0, "target_high_mg_day": 3000.0, "fraction_of_target": 1.0,
                       "status": "at", "target_text": "2–3 g/day"},
        ivig={"dose": 1.0, "dose_unit": "g/kg", "intensity_mg_day": 35000 / 28, "target_low_mg_day": 70000 / 28,
              "target_high_mg_day": 70000 / 28, "fraction_of_target": 0.5, "status": "below"})
    pred, mmf, ivig = R.dose_lines(current, VOCABULARY, juvenile=False, weight_kg=70.0, bsa_m2=None,
                                   tolerance=TOLERANCE)
    assert pred.status == "above_goal" and "taper" in pred.action and "2.0× the ≤ 7.5 mg/day goal" in pred.action
    assert pred.basis == "0.214 mg/kg/day at 70 kg"
    assert ivig.basis == "0.5 g/kg a course at 70 kg"  # per course as prescribed, never '17.9 mg/kg/day'
    assert mmf.basis == ""  # a fixed-dose target: no per-kg figure
    assert mmf.status == "at" and "room up to 3 g/day" in mmf.action
    assert ivig.status == "below" and ivig.action.startswith("raise towards") and "is 50 % of the lowest" in ivig.action
    assert R.summarise(dataclasses.replace(sample_page(), regimen=(pred, mmf, ivig))).dose_actions == (
        f"prednisone: {pred.action}", f"ivig: {ivig.action}")


RTX = {"dose": 1000.0, "route": "intravenous", "interval": "days 1 and 15, every 6 months",
       "intensity_mg_day": 2000 / 182, "target_low_mg_day": 2000 / 182, "target_high_mg_day": 2000 / 182,
       "fraction_of_target": 1.0, "status": "at", "target_text": "1 g × 2, two weeks apart, every 6 months",
       "last_course_date": pd.Timestamp("2026-05-20")}


@pytest.mark.parametrize(
    ("as_of", "due", "words"),
    [
        ("2026-12-07", True, "next course overdue since 2026-11-20 (17 days) by the prescribed schedule"),  # seed case
        ("2026-11-20", True, "next course due today (2026-11-20)"),
        ("2026-11-19", True, "next course due 2026-11-20 (in 1 day)"),
        ("2026-10-23", True, "next course due 2026-11-20 (in 28 days)"),
        ("2026-10-22", False, "next course 2026-11-20 (in 29 days)"),
        ("2026-09-01", False, "next course 2026-11-20 (in 11 weeks)"),
    ],
)
def test_a_rituximab_course_due_by_its_schedule_leads_the_dose_actions(as_of, due, words):
    line, mmf = R.dose_lines(_current(rituximab=RTX, mycophenolate={"last_course_date": pd.NaT}), VOCABULARY,
                             juvenile=False, weight_kg=70.0, bsa_m2=None, tolerance=TOLERANCE,
                             as_of=pd.Timestamp(as_of))
    assert line.course_due is due and line.action.startswith(words)
    assert "a course every 6 months; the last began 2026-05-20" in line.action
    assert line.action.endswith(": re-dose if still indicated") is due  # a reminder, never an order
    assert not mmf.course_due and "course" not in mmf.action
    actions = R.summarise(dataclasses.replace(sample_page(), regimen=(line, mmf))).dose_actions
    assert actions == ((f"rituximab: {line.action}",) if due else ())
    undated = R.dose_lines(_current(rituximab=RTX), VOCABULARY, juvenile=False, weight_kg=70.0, bsa_m2=None,
                           tolerance=TOLERANCE)[0]  # no as-of date: nothing said about the schedule
    assert not undated.course_due and "course" not in undated.action


def test_a_course_due_keeps_the_dose_advice_and_follows_the_prescribed_interval():
    """Found by a review: a due course replaced a below-target dose's 'raise towards …'."""
    low = {**RTX, "dose": 500.0, "intensity_mg_day": 1000 / 182, "fraction_of_target": 0.5, "status": "below"}
    [line] = R.dose_lines(_current(rituximab=low), VOCABULARY, juvenile=False, weight_kg=70.0, bsa_m2=None,
                          tolerance=TOLERANCE, as_of=pd.Timestamp("2026-11-17"))
    assert line.course_due and line.action.startswith("next course due 2026-11-20 (in 3 days)")
    assert "; raise towards 1 g × 2" in line.action and "is 50 % of the lowest target" in line.action
    # every 9 months as prescribed: not due on the 6-monthly target's date; a single course: the target's cycle
    [nine] = R.dose_lines(_current(rituximab={**RTX, "interval": "every 9 months"}), VOCABULARY, juvenile=False,
                          weight_kg=70.0, bsa_m2=None, tolerance=TOLERANCE, as_of=pd.Timestamp("2026-12-07"))
    assert not nine.course_due
    assert "2027-02-20 (in 11 weeks) by the prescribed schedule, a course every 9 months" in nine.action
    [once] = R.dose_lines(_current(rituximab={**RTX, "interval": "days 1 and 15"}), VOCABULARY, juvenile=False,
                          weight_kg=70.0, bsa_m2=None, tolerance=TOLERANCE, as_of=pd.Timestamp("2026-12-07"))
    assert once.course_due
    assert "overdue since 2026-11-20 (17 days) by the target schedule, a course every 6 months" in once.action


def test_rituximab_every_12_months_is_advised_to_come_sooner_not_to_be_raised():
    """1 g × 2 every 12 months gives half the intensity of the target's 1 g × 2 every 6 months — the features' 50 %
    and 'below target' stand — but each course is the target's dose: the page said 'raise towards 1 g × 2 …: the
    dose now is 50 % of the lowest target'. It now says the courses are twice as far apart as the target's and when
    the next one falls by the target's schedule; half a course every 6 months is still advised to be raised."""
    yearly = {**RTX, "interval": "days 1 and 15, every 12 months", "intensity_mg_day": 2000 / 365.25,
              "fraction_of_target": 0.498, "status": "below", "last_course_record": "scheduled"}
    [line] = R.dose_lines(_current(rituximab=yearly), VOCABULARY, juvenile=False, weight_kg=70.0, bsa_m2=None,
                          tolerance=TOLERANCE, as_of=pd.Timestamp("2026-11-18"))
    assert line.status == "below" and line.fraction_of_target == pytest.approx(0.498)
    assert "raise towards" not in line.action and "the dose now is" not in line.action
    assert line.action.startswith("a course every 12 months, the target 1 g × 2, two weeks apart, every 6 months: "
                                  "50 % of the target's intensity with each course at the target dose — shorten the "
                                  "interval (by the target's schedule the next course falls 2026-11-20)")
    assert "next course 2027-05-20 (in 26 weeks) by the prescribed schedule, a course every 12 months" in line.action
    summary = R.summarise(dataclasses.replace(sample_page(), regimen=(line,))).dose_actions
    assert summary == (f"rituximab: {line.action}",)  # below target: among the dose actions, first
    half = {**RTX, "dose": 500.0, "intensity_mg_day": 1000 / 182, "fraction_of_target": 0.5, "status": "below"}
    [low] = R.dose_lines(_current(rituximab=half), VOCABULARY, juvenile=False, weight_kg=70.0, bsa_m2=None,
                         tolerance=TOLERANCE, as_of=pd.Timestamp("2026-09-01"))
    assert low.action.startswith("raise towards 1 g × 2, two weeks apart, every 6 months: the dose now is 50 %")
    # half a course a year: the course itself is below target, so the dose is what to raise
    thin = {**yearly, "dose": 500.0, "intensity_mg_day": 1000 / 365.25, "fraction_of_target": 0.25}
    [thin_line] = R.dose_lines(_current(rituximab=thin), VOCABULARY, juvenile=False, weight_kg=70.0, bsa_m2=None,
                               tolerance=TOLERANCE, as_of=pd.Timestamp("2026-09-01"))
    assert thin_line.action.startswith("raise towards 1 g × 2")


@pytest.mark.parametrize(
    ("changes", "due", "words"),
    [
        # a course only an open order's schedule dates is not said to have been given
        ({"last_course_record": "scheduled", "last_course_date": pd.Timestamp("2026-11-19")}, False,
         "the last began 2026-11-19 by the open order's schedule (no row records it: check it was given)"),
        # an order that ended well after its last course prescribes no next one
        ({"last_course_record": "stopped"}, False,
         "the order ended after the course that began 2026-05-20: no next course prescribed"),
        # weeks as written stay weeks: 24 weeks, not '6 months'
        ({"interval": "every 24 weeks"}, True, "overdue since 2026-11-04 (33 days) by the prescribed schedule, a "
                                               "course every 24 weeks"),
    ],
)
def test_a_course_reminder_says_what_the_record_does_not_show(changes, due, words):
    [line] = R.dose_lines(_current(rituximab={**RTX, "last_course_record": "given", **changes}), VOCABULARY,
                          juvenile=False, weight_kg=70.0, bsa_m2=None, tolerance=TOLERANCE,
                          as_of=pd.Timestamp("2026-12-07"))
    assert line.course_due is due and words in line.action


def test_a_juvenile_patient_is_judged_per_kg_and_per_m2_not_against_adult_doses():
    current = _current(
        methotrexate={"dose": 10.0, "interval": "weekly", "intensity_mg_day": 10 / 7, "target_low_mg_day": 15 / 7,
                      "target_high_mg_day": 25 / 7, "fraction_of_target": 10 / 15, "status": "below"},
        hydroxychloroquine={"dose": 200.0, "intensity_mg_day": 200.0, "target_low_mg_day": 200.0,
                            "target_high_mg_day": 400.0, "fraction_of_target": 1.0, "status": "at"})
    bsa = R.mosteller_bsa(30.0, 135.0)  # 1.06 m²
    mtx, hcq = R.dose_lines(current, VOCABULARY, juvenile=True, weight_kg=30.0, bsa_m2=bsa, tolerance=TOLERANCE)
    # 15 mg/m²/week × 1.06 m² = 15.9 mg/week: 10 mg/week is below; the adult band said the same for other reasons
    assert mtx.status == "below" and "per m² (1.06 m²)" in mtx.basis and "for 1.06 m²" in mtx.target
    # 200 mg/day for 30 kg = 6.7 mg/kg/day: above the juvenile 2–5 mg/kg/day (adult band said "at")
    assert hcq.status == "above" and "30 kg" in hcq.target


def test_juvenile_ivig_rituximab_and_cyclophosphamide_targets_follow_weight_and_body_surface():
    """IVIG 2 g/kg (at most 70 g a course), rituximab 575 mg/m² an infusion up to 1.5 m² (adult dose above),
    cyclophosphamide 500–1,000 mg/m² an infusion: targets said per administration for this child's size."""
    adult_rtx = {"dose": 1000.0, "dose_unit": "mg", "route": "intravenous", "interval": "days 1 and 15, every 6 months",
                 "intensity_mg_day": 2000 / 182, "target_low_mg_day": 2000 / 182, "target_high_mg_day": 2000 / 182,
                 "fraction_of_target": 1.0, "status": "at", "target_text": "1 g × 2, two weeks apart, every 6 months"}
    current = _current(
        ivig={"dose": 1.0, "dose_unit": "g/kg", "intensity_mg_day": 30000 / 28},
        rituximab=adult_rtx,
        cyclophosphamide={"dose": 750.0, "dose_unit": "mg/m2", "intensity_mg_day": 750 * 1.06 / 28})
    bsa = R.mosteller_bsa(30.0, 135.0)  # 1.06 m²
    ivig, rtx, cyc = R.dose_lines(current, VOCABULARY, juvenile=True, weight_kg=30.0, bsa_m2=bsa, tolerance=TOLERANCE)
    assert ivig.status == "below" and "60 g a course for 30 kg" in ivig.target and "is 50 % of" in ivig.action
    assert rtx.status == "above" and "610 mg an infusion for 1.06 m²" in rtx.target  # 1 g is the adult dose
    assert cyc.status == "at" and "530 mg–1.06 g an infusion for 1.06 m²" in cyc.target
    heavy = R.dose_lines(_current(ivig={"dose": 2.0, "dose_unit": "g/kg", "intensity_mg_day": 100000 / 28}),
                         VOCABULARY, juvenile=True, weight_kg=50.0, bsa_m2=None, tolerance=TOLERANCE)[0]
    assert heavy.status == "above" and "70 g a course for 50 kg" in heavy.target  # 2 g/kg × 50 kg capped at 70 g
    teen = R.dose_lines(_current(rituximab=adult_rtx), VOCABULARY, juvenile=True, weight_kg=60.0,
                        bsa_m2=1.7, tolerance=TOLERANCE)[0]
    # above 1.5 m² the adult 1 g × 2 applies, said as such (no per-m² band)
    assert teen.status == "at" and teen.target.startswith("the adult dose above 1.5 m²: 1 g × 2")
    assert "575" not in teen.target


def test_a_childs_label_banded_doses_show_the_band_that_applies():
    """Abatacept, tofacitinib: the JIA label band for this child's weight, said per infusion / per day; no weight →
    unknown with what is missing; tacrolimus: no paediatric target, the dose shown and not judged."""
    from pipeline.report.clinical import below_target_drugs

    iv = {"route": "intravenous", "interval": "every 4 weeks"}
    lines = {w: R.dose_lines(_current(
        abatacept={"dose": 250.0, **iv, "intensity_mg_day": 250 / 28},
        tofacitinib={"dose": 4.0, "interval": "twice daily", "intensity_mg_day": 8.0},
        tacrolimus={"dose": 0.06, "dose_unit": "mg/kg", "intensity_mg_day": 0.06 * 25}),
        VOCABULARY, juvenile=True, weight_kg=w, bsa_m2=None, tolerance=TOLERANCE) for w in (25.0, None)}
    aba, tofa, tac = lines[25.0]
    assert aba.status == "at" and aba.target.startswith("10 mg/kg every 4 weeks (< 75 kg) — JIA label dose")
    assert "250 mg an infusion for 25 kg" in aba.target and aba.basis == "juvenile target per kg (25 kg)"
    assert tofa.status == "at" and tofa.target.startswith("4 mg twice daily (20–40 kg)") and "8 mg/day" in tofa.target
    assert tac.status == "no_target" and "no paediatric target" in tac.target and tac.action == ""
    assert [(x.status, x.basis) for x in lines[None][:2]] == [("unknown", "juvenile target needs weight")] * 2
    heavy = R.dose_lines(_current(abatacept={"dose": 750.0, **iv, "intensity_mg_day": 750 / 28}), VOCABULARY,
                         juvenile=True, weight_kg=80.0, bsa_m2=None, tolerance=TOLERANCE)[0]
    assert heavy.status == "at" and heavy.target.startswith("the adult dose from 75 kg: 750 mg every 4 weeks (60–100 kg)")
    low = R.dose_lines(_current(abatacept={"dose": 150.0, **iv, "intensity_mg_day": 150 / 28}), VOCABULARY,
                       juvenile=True, weight_kg=25.0, bsa_m2=None, tolerance=TOLERANCE)
    assert low[0].status == "below" and below_target_drugs(low) == ("abatacept",)
    assert low[0].action == ("raise towards 10 mg/kg every 4 weeks (< 75 kg): 250 mg an infusion for 25 kg: the dose "
                             "now is 60 % of the lowest target")


def test_a_childs_reasons_name_the_juvenile_target_their_dose_fraction_is_of():
    from models.explain import with_dose_targets
    from pipeline.report.clinical import with_current_targets

    dictionary = with_dose_targets(pd.DataFrame({"feature": ["tofacitinib_dose_fraction", "ivig_dose_fraction",
                                                             "age_years"]}), VOCABULARY)
    current = pd.DataFrame({"generic": ["tofacitinib", "ivig"], "target_source": ["juvenile", "adult"],
                            "target_text": ["4 mg twice daily (20–40 kg) — JIA label dose", "2 g/kg every 4 weeks"]})
    out = with_current_targets(dictionary, current).set_index("feature")["target_text"]
    assert out["tofacitinib_dose_fraction"] == "4 mg twice daily (20–40 kg) — JIA label dose"
    assert out["ivig_dose_fraction"] == "2 g/kg every 4 weeks" and pd.isna(out["age_years"])
    # batch reasons (no patient at hand) name both targets of a drug that has a juvenile one
    assert dictionary.set_index("feature").loc["ivig_dose_fraction", "target_text"] == (
        f"{VOCABULARY.drug('ivig').text} (under 18: {VOCABULARY.drug('ivig').juvenile.text})")
    assert with_current_targets(dictionary, current.iloc[:0]).equals(dictionary)


def test_disease_notes_for_mda5_ild_and_cancer():
    rules = load_reference("clinical_rules")
    notes = R.disease_notes({"antibodies": "anti-MDA5", "ild": True, "cancer_associated": False,
                             "diagnosis": "adult_dermatomyositis"}, rules)
    assert len(notes) == 2 and "MDA5" in notes[0] and "ILD progression" in notes[1]
    assert R.disease_notes({"antibodies": "anti-Mi-2", "ild": False, "cancer_associated": "false"}, rules) == ()
    assert "oncology" in R.disease_notes({"antibodies": "", "cancer_associated": "true"}, rules)[0]


def test_reasons_in_clinical_words_with_sensible_precision():
    assert R.plain_reason("months on tocilizumab = 5.95 → +4 in 100") == "6 months on tocilizumab → +4 in 100"
    assert (R.plain_reason("change in physician global activity over 6 months = -1.2 cm (0-10) → −3 in 100")
            == "physician global activity fell by 1.2 cm (0-10) over 6 months → −3 in 100")
    assert R.plain_reason("latest CK = 4.91234 × ULN → +2 in 100") == "latest CK = 4.91 × ULN → +2 in 100"


def test_guideline_choice_is_the_first_eligible_option_in_the_configured_order():
    options = sample_page().options
    assert R.guideline_option(options, ["optimise_dose", "add_ivig", "add_jak_inhibitor"]).option == \
        "add_jak_inhibitor"
    assert R.guideline_option(options, ["add_ivig"]) is None


def test_one_patients_tables_are_read_alone_with_their_file_rows(tmp_path):
    """Parquet is read with a filter; the rows keep their numbers in the file, so findings name the same row."""
    from pipeline.io import read_contract_tables
    from tests.conftest import SEED_CASE

    full = read_contract_tables(SEED_CASE)
    extra = {name: pd.concat([t.assign(patient_id="OTHER"), t], ignore_index=True) for name, t in full.items()}
    for name, t in extra.items():
        t.to_parquet(tmp_path / f"{name}.parquet", index=False)
    one = R.read_patient_tables(tmp_path, "SEED-0001")
    for name, t in one.items():
        n = len(full[name])
        assert list(t.index) == list(range(n, 2 * n)), name
        assert set(t["patient_id"]) <= {"SEED-0001"}
    assert R.read_patient_tables(tmp_path, "NOPE")["patients"].empty


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_patient_id_with_surrounding_blanks_is_that_patient(tmp_path, fmt):
    """The contract check strips ids, so one patient's page reads the rows of " SEED-0001 " as SEED-0001's — as
    `--all` and `validate` do — from Parquet (text read dictionary-encoded) or CSV."""
    from pipeline.io import read_contract_tables
    from tests.conftest import SEED_CASE

    full = read_contract_tables(SEED_CASE)
    for name, t in full.items():
        t = t.assign(patient_id=[" SEED-0001", "SEED-0001 "] * (len(t) // 2) + ["SEED-0001"] * (len(t) % 2))
        t = pd.concat([t, t.iloc[:1].assign(patient_id="SEED-00011")], ignore_index=True)  # a prefix is no match
        if fmt == "csv":
            t.to_csv(tmp_path / f"{name}.csv", index=False)
        else:
            t.to_parquet(tmp_path / f"{name}.parquet", index=False)
    one = R.read_patient_tables(tmp_path, "SEED-0001")
    assert {name: len(t) for name, t in one.items()} == {name: len(t) for name, t in full.items()}


class _ModelLoaded(Exception):
    """Raised by a stand-in `load_model`: the page got past every refusal."""


def test_a_retrospective_page_checks_records_against_today_not_the_decision_date(tmp_path, monkeypatch):
    """as of a past decision the seed patient's later records are no error (they are dated before --today); a
    decision after today, an unknown patient and a decision before the patient's first visit are refused before
    the model loads."""
    from datetime import date

    from tests.conftest import SEED_CASE

    def loaded(*args, **kwargs):
        raise _ModelLoaded

    monkeypatch.setattr(R, "load_model", loaded)
    out = tmp_path / "p.html"
    with pytest.raises(_ModelLoaded):
        R.run_report("SEED-0001", as_of=date(2026, 3, 1), today=date(2026, 11, 25), data=SEED_CASE, out=out)
    # before the first visit (2025-11-18) the record holds nothing of this patient: no page of an average patient
    with pytest.raises(R.ReportRefusal, match=r"'SEED-0001': no assessment dated before the as-of date 2025-06-01"):
        R.run_report("SEED-0001", as_of=date(2025, 6, 1), today=date(2026, 11, 25), data=SEED_CASE, out=out)
    with pytest.raises(R.ReportRefusal, match=r"--as-of 2026-12-01 is after --today 2026-11-25"):
        R.run_report("SEED-0001", as_of=date(2026, 12, 1), today=date(2026, 11, 25), data=SEED_CASE, out=out)
    with pytest.raises(R.ReportRefusal, match=r"no patient 'NOPE'"):
        R.run_report("NOPE", as_of=date(2026, 11, 18), today=date(2026, 11, 25), data=SEED_CASE, out=out)
    with pytest.raises(R.ReportRefusal, match=r"data errors.*future"):  # records after today are errors
        R.run_report("SEED-0001", as_of=date(2026, 3, 1), today=date(2026, 3, 1), data=SEED_CASE, out=out)
    assert not out.exists()


def test_bars_are_labelled_with_the_patients_fact_by_clinical_feature_and_keep_their_points():
    """A bar and a reason about one clinical feature read alike, matched by the feature, not by its name's words:
    the 'treatment history' bar reads 'lines of therapy so far = 6' when that is the reason's fact."""
    r = pd.Series({"reason_1_feature": "CK", "reason_1_text": "latest CK = 4.9 × ULN → +2 in 100",
                   "reason_2_feature": "tocilizumab", "reason_2_text": "months on tocilizumab = 5.95 → +1 in 100",
                   "reason_3_feature": "treatment history", "reason_3_text": "lines of therapy so far = 6 → +1 in 100"})
    grouped = pd.DataFrame({"group": ["CK", "tocilizumab", "haemoglobin", "treatment history"],
                            "label": ["creatine kinase", "tocilizumab", "haemoglobin", "treatment history"],
                            "points": [0.02, 0.01, -0.01, 0.012]})
    out = A._worded(grouped, r, "reason")
    assert out["label"].tolist() == ["latest CK = 4.9 × ULN", "6 months on tocilizumab", "haemoglobin",
                                     "lines of therapy so far = 6"]
    assert out["points"].tolist() == grouped["points"].tolist()
    assert A._worded(grouped, None, "reason")["label"].tolist() == grouped["label"].tolist()


def test_safety_reasons_are_the_safety_models_own_facts_with_signed_points():
    """Each safety reason names the fact of its clinical feature that moved the risk most (as a response reason
    would), with the feature's summed points; facts under half a point are left out."""
    from models import explain as E

    columns = ("lines_of_therapy", "months_since_regimen_change", "cumulative_prednisone_g", "age_years")
    dictionary = pd.DataFrame({
        "feature": list(columns),
        "clinical_feature": ["treatment history", "treatment history", "prednisone exposure", "age"],
        "label": ["lines of therapy so far", "months on the current regimen", "cumulative prednisone", "age"],
        "unit": ["count", "months", "g", "years"]})
    X = pd.DataFrame([[6.0, 6.2, 37.6, 48.0]], columns=list(columns))
    values = np.array([[0.01, 0.03, -0.02, 0.001]])
    shap = E.Shap("safety", "continue", "probability", columns, values, np.zeros(1), values.sum(axis=1))
    explained = E.Explanations({("safety", "continue"): shap}, ("continue",), "continue", "s", 1)
    row = R.OptionRow("continue", "continue current regimen", True, p_safety=0.2)
    out = A._with_safety_reasons(row, explained, X, dictionary, row=0)
    assert out.safety_reasons == ("6 months on the current regimen raises it (+4)",
                                  "cumulative prednisone = 37.6 g lowers it (\u22122)")
    assert A._with_safety_reasons(dataclasses.replace(row, eligible=False), explained, X, dictionary, row=0).safety_reasons == ()


def test_a_gap_between_the_bars_and_the_explained_change_is_drawn_not_hidden():
    grouped = pd.DataFrame({"label": ["a", "b"], "points": [0.05, -0.02]})
    bars = A._bars(grouped, 5, total=4.0)
    assert bars[-1] == R.Bar("not attributed to one fact", pytest.approx(1.0))
    assert sum(b.points for b in bars) == pytest.approx(4.0)
    assert len(A._bars(grouped, 5, total=3.02)) == 2  # within 0.05 points: no extra bar


def test_rituximab_clock_judges_waiting_against_rims_median_time_to_improvement():
    """'Continue' carries how long the patient has waited for rituximab against RIM's 20-week median; no note when
    rituximab was never given or is over a year old."""
    import pandas as pd

    from pipeline.report.assemble import rituximab_clock

    assert "still within the usual time to respond" in rituximab_clock(pd.DataFrame({"months_since_rituximab": [2.0]}))
    assert "9 weeks ago" in rituximab_clock(pd.DataFrame({"months_since_rituximab": [2.0]}))
    assert "past the median time" in rituximab_clock(pd.DataFrame({"months_since_rituximab": [6.0]}))
    assert rituximab_clock(pd.DataFrame({"months_since_rituximab": [float("nan")]})) == ""
    assert rituximab_clock(pd.DataFrame({"months_since_rituximab": [14.0]})) == ""
    assert rituximab_clock(pd.DataFrame({"age_years": [40.0]})) == ""
    # counted from the first infusion of the last course, as RIM counted, where the current regimen has it
    current = pd.DataFrame({"generic": ["rituximab", "ivig"], "last_course_date": pd.to_datetime(["2026-05-20", None])})
    seed = rituximab_clock(pd.DataFrame({"months_since_rituximab": [6.1]}), current, pd.Timestamp("2026-12-07"))
    assert "the last course began 29 weeks ago" in seed and "past the median time" in seed
    week = rituximab_clock(pd.DataFrame({"months_since_rituximab": [0.0]}), current, pd.Timestamp("2026-05-27"))
    assert "began 1 week ago" in week


def test_the_pages_reference_files_are_checked_whole(monkeypatch):
    """Found by a probe: `reminderz:` silently dropped every monitoring reminder from the page, a misspelt
    `flag_grade` or a missing `labs:` was a KeyError, and grades in the wrong order or unknown drugs passed."""
    import copy

    from pipeline import config
    from pipeline.config import ConfigFileError, load_catalog, load_reference
    from pipeline.report import page_references, reference

    monitoring, rules = page_references()  # the shipped files pass, as written
    assert len(monitoring["reminders"]) == len(load_reference("monitoring")["reminders"])
    generics, measures = ("rituximab", "ivig"), ("neutrophils", "alt", "weight")
    typo = {"reminderz": load_reference("monitoring")["reminders"]}
    with pytest.raises(ValueError, match="reminderz"):
        reference.monitoring(typo, generics)
    with pytest.raises(ValueError, match=r"drug\(s\) \['rituxan'\] not in configs/drugs.yaml"):
        reference.monitoring({"reminders": [{"test": "t", "when": "w", "why": "y", "drugs": ["rituxan"]}]}, generics)
    lab = {"measure": "neutrophils", "label": "n", "unit": "u", "lln": 2.0, "uln": 7.5, "below": [1.0, 1.5]}
    with pytest.raises(ValueError, match=r"thresholds \[1.0, 1.5\] out of order"):
        reference.clinical_rules({"labs": {"flag_grade": 2, "tests": [lab]}}, measures)
    with pytest.raises(ValueError, match=r"measure\(s\) \['neutrophilz'\] not in configs/measures.yaml"):
        reference.clinical_rules({"labs": {"flag_grade": 2, "tests": [{**lab, "below": [1.5, 1.0],
                                                                        "measure": "neutrophilz"}]}}, measures)
    no_labs = copy.deepcopy(load_reference("clinical_rules"))
    del no_labs["labs"]
    monkeypatch.setattr(config, "load_reference", lambda _: no_labs)
    with pytest.raises(ConfigFileError, match=r"clinical_rules\.yaml: labs: Field required"):
        load_catalog("clinical_rules", lambda raw: reference.clinical_rules(raw, measures))


def test_one_patients_findings_name_the_rows_of_the_files(tmp_path):
    """Found by a probe: a page numbered the rows within the one patient's (`regimens, row 0`) while validate named
    the file's row 93; one patient's tables keep their file rows."""
    import shutil

    from pipeline.report.load import check_tables, read_patient_tables
    from tests.conftest import SEED_CASE

    data = tmp_path / "data"
    shutil.copytree(SEED_CASE, data)
    patients = pd.read_csv(data / "patients.csv", dtype=str)
    other = patients.assign(patient_id="SEED-0002")
    pd.concat([other, patients]).to_csv(data / "patients.csv", index=False)
    regimens = pd.read_csv(data / "regimens.csv", dtype=str)
    broken = regimens.copy()
    broken.loc[2, "drug"] = "no such drug"
    pd.concat([regimens.assign(patient_id="SEED-0002"), broken]).to_csv(data / "regimens.csv", index=False)
    _, findings = check_tables(read_patient_tables(data, "SEED-0001"), "2026-11-25")
    [bad] = findings[findings["rule"] == "unknown_drug"].itertuples()
    assert (bad.table, int(bad.row)) == ("regimens", len(regimens) + 2)  # the file's row, after SEED-0002's rows


def test_the_index_lists_patients_without_a_page_and_why():
    """Found by a probe: `report --all` left rejected patients out of the index, so a search found nothing."""
    out = R.render_index([{"patient_id": "P1", "href": "P1.html", "recommended": "add IVIG"},
                          {"patient_id": "<b>P2</b>", "href": "", "recommended": "no page: data errors"}],
                         as_of="2026-11-18", model="escalate-response v1")
    assert 'href="P1.html"' in out and 'href=""' not in out
    assert "&lt;b&gt;P2&lt;/b&gt;" in out and "no page: data errors" in out


@pytest.mark.parametrize(
    ("learner", "words"),
    [
        ("modifier_glm(C=0.1)", "penalised logistic regression with the published effect modifiers;"),
        ("score_glm(C=0.1, alpha=30, w=0.5)", "averaged with a regression of the total improvement score itself"),
        ("score_glm(C=0.1, alpha=30, w=0.5, trees=0.3)", "and with gradient-boosted trees fitted to that score"),
        ("s_learner", "s-learner on gradient-boosted trees"),
    ],
)
def test_model_facts_name_the_method_in_words(learner, words):
    from types import SimpleNamespace

    chosen = SimpleNamespace(learner_name=learner, config=SimpleNamespace(learner="auto"), summary={"selection": [{"candidate": learner}]})
    assert words in A._method(chosen)
    assert A._method(chosen).endswith("(cross-fitted doubly robust value)")
    assert "C=" not in A._method(chosen)  # settings are for the model card, not a clinician


def test_a_printed_difference_is_the_difference_of_the_printed_figures():
    """61.4 and 37.6 in 100 print as 61 and 38, so every difference beside them reads +23, not the unrounded +24:
    the options table, the summary's vs-continuing and vs-guideline tiles, the safety tile (8.6 and 6.4 print as 9
    and 6: +3), the explanation's heading and its contrast chart."""
    assert R.points_between(0.614, 0.376) == pytest.approx(0.23)
    assert R.points_between(0.5, None) is None and R.signed_points(R.points_between(0.5, None)) == "—"
    page = sample_page()
    cont, ivig, jak = page.options
    options = (dataclasses.replace(cont, p_response=0.376, p_safety=0.064), ivig,
               dataclasses.replace(jak, p_response=0.614, effect_vs_continue=0.238, p_safety=0.086))
    explanation = dataclasses.replace(page.explanations[1], final_points=61.4, contrast_total=23.8,
                                      contrast_shown=23.0)
    html = R.render_page(dataclasses.replace(page, options=options, explanations=(page.explanations[0], explanation)))
    row = html[html.index('data-option="add_jak_inhibitor"'):]
    assert re.search(r'data-label="vs continue" class="num">\+23<', row[:row.index("</tr>")])
    tiles = html[html.index('class="tiles"'):html.index("</dl>")]
    assert tiles.count("+23 in 100") == 2 and "+24" not in tiles  # vs continuing, vs the guideline (continue)
    assert 'id="safety-vs-continue">+3 vs continuing (6 in 100)' in tiles
    assert "61 in 100 (+23 vs continuing)" in html
    chart = str(R.contrast_svg(explanation))
    assert "compared with continuing: +23 in 100" in chart and ">+23<" in chart and "+24" not in chart


def test_the_explanations_print_the_options_tables_figures():
    """The heading above each waterfall, the waterfall's end and the difference with continuing come from the
    chance of response the options table prints, never from the explainer's own copy of it: where the two part
    (here the explainer says 43 and 67 in 100, the table 38 and 61), the page still says one thing, and the bars
    show the gap as 'not attributed to one fact' rather than reaching another figure."""
    from models import explain as E

    columns = ("lines_of_therapy", "age_years")
    dictionary = pd.DataFrame({"feature": list(columns), "clinical_feature": ["treatment history", "age"],
                               "label": ["lines of therapy so far", "age"], "unit": ["count", "years"]})
    X = pd.DataFrame([[6.0, 48.0]], columns=list(columns))

    def shap(option: str, values: list[float], base: float) -> E.Shap:
        v, b = np.array([values]), np.array([base])
        return E.Shap("response", option, "log_odds", columns, v, b, b + v.sum(axis=1),
                      E._sigmoid(b + v.sum(axis=1)), E._sigmoid(b))

    cont, jak = shap("continue", [0.2, -0.1], -0.4), shap("add_jak_inhibitor", [0.5, 0.2], 0.0)
    ex = E.Explanations({("response", "continue"): cont, ("response", "add_jak_inhibitor"): jak,
                         ("contrast", "add_jak_inhibitor"): E._contrast(jak, cont, "contrast")},
                        ("continue", "add_jak_inhibitor", "add_ivig"), "continue", "linear", 1)
    assert round(100 * float(cont.probability[0])) == 43 and round(100 * float(jak.probability[0])) == 67
    labels = {"continue": "continue current regimen", "add_jak_inhibitor": "add a JAK inhibitor (tofacitinib)"}
    shown = {"continue": 0.376, "add_jak_inhibitor": 0.614, "add_ivig": None}  # IVIG: no estimate, no explanation
    explained = A.option_explanations(ex, X, dictionary, shown, labels)
    assert [e.option for e in explained] == ["continue", "add_jak_inhibitor"]
    c, j = explained
    assert c.final_points == pytest.approx(37.6) and j.final_points == pytest.approx(61.4)
    assert j.contrast_shown == pytest.approx(23.0) and j.contrast_total == pytest.approx(23.8)
    assert j.base_points + sum(b.points for b in j.bars) == pytest.approx(61.4)
    assert j.bars[-1].label == "not attributed to one fact"
    assert j.contrast_base + sum(b.points for b in j.contrast) == pytest.approx(23.8)

    page = sample_page()
    rows = (dataclasses.replace(page.options[0], p_response=0.376), page.options[1],
            dataclasses.replace(page.options[2], p_response=0.614))
    html = R.render_page(dataclasses.replace(page, options=rows, explanations=explained))
    assert "add a JAK inhibitor (tofacitinib): 61 in 100 (+23 vs continuing)" in html
    assert "continue current regimen: 38 in 100</h3>" in html
    assert "67 in 100" not in html and "43 in 100" not in html


def test_the_prednisone_column_is_explained_where_it_is_shown():
    """The steroid-sparing column's heading is short; the table's note says what its chance is of."""
    shown = R.render_page(dataclasses.replace(sample_page(), steroid_goal=7.5))
    note = shown[shown.index('id="options-note"'):]
    assert "Prednisone column: the chance that prednisone is at or below 7.5 mg/day at 24 weeks" in note[:2000]
    assert "Prednisone column" not in R.render_page(sample_page())


def test_current_drugs_a_label_advises_against_combining_are_said_on_the_page():
    """Continuing starts nothing, so no option row flags it: the page itself says when the drugs taken now already
    break a label's combination rule, each pair once, in the summary and beside the regimen."""
    from features.vocabulary import OptionCatalog

    catalog = OptionCatalog.from_config(load_reference("options"))
    labels = {"tofacitinib": "tofacitinib (JAK inhibitor)"}
    said = catalog.current_combinations(["abatacept", "rituximab", "tofacitinib", "tocilizumab"], labels)
    assert said[0][0] == "tofacitinib (JAK inhibitor) with tocilizumab and abatacept"
    assert said[0][1].startswith("JAK inhibitor labels advise against combining with a biologic DMARD")
    assert [pair for pair, _ in said[1:]] == ["tocilizumab with abatacept and rituximab"]  # tocilizumab with
    # tofacitinib is said once, above
    # one-way rules are about which drug came later, unknown here: tofacitinib after rituximab is no finding
    assert catalog.current_combinations(["rituximab", "tofacitinib", "mycophenolate"]) == ()
    html = R.render_page(dataclasses.replace(sample_page(), regimen_cautions=said))
    summary = html[html.index('id="summary-regimen-caution"'):]
    assert summary.index("tocilizumab and abatacept; tocilizumab with abatacept and rituximab") < summary.index("</p>")
    assert f"{said[0][0]}: {said[0][1]}" in html[html.index('id="regimen-cautions"'):]
    assert 'id="regimen-cautions"' not in R.render_page(sample_page())


def test_a_change_over_months_with_nothing_recorded_in_them_is_not_called_unchanged():
    """The change features carry the last value forward, so a measure last recorded 10 months ago has a 3-month
    change of 0: the page says it was not recorded in those months; a measure recorded twice, equal, is unchanged."""
    from pipeline.report import clinical as C

    dictionary = pd.DataFrame({"feature": ["cdasi_activity_change_3m", "cdasi_activity_change_6m",
                                           "mmt8_change_3m", "cdasi_activity_days_since", "mmt8_days_since"],
                               "label": ["change in CDASI activity over 3 months",
                                         "change in CDASI activity over 6 months", "change in MMT-8 over 3 months",
                                         "days since the latest CDASI activity", "days since the latest MMT-8"]})
    X = pd.DataFrame({"cdasi_activity_change_3m": [0.0], "cdasi_activity_change_6m": [-4.0], "mmt8_change_3m": [0.0],
                      "cdasi_activity_days_since": [120.0], "mmt8_days_since": [30.0]})
    unmeasured = C.unmeasured_changes(X, dictionary, (91, 182))
    assert unmeasured == {"change in CDASI activity over 3 months"}
    assert C.plain_reason("change in CDASI activity over 3 months = 0 score (0-100) → +2 in 100", unmeasured) == \
        "CDASI activity not recorded in the last 3 months → +2 in 100"
    assert C.plain_reason("change in MMT-8 over 3 months = 0 score (0-80) → −1 in 100", unmeasured) == \
        "MMT-8 unchanged over 3 months → −1 in 100"
    assert C.plain_reason("change in CDASI activity over 3 months = 0 score (0-100) → +2 in 100") == \
        "CDASI activity unchanged over 3 months → +2 in 100"


@pytest.mark.parametrize("renamed", [False, True])
def test_the_page_reads_the_change_features_by_the_names_the_features_write(monkeypatch, renamed):
    """A CDASI last recorded 4 months before the decision: its 3-month change in the features `build_features`
    writes is 0, and the page says it was not recorded in those months — also when the features name their
    changes otherwise, since the page and the features take the name from one helper (the page once rebuilt the
    name itself, so a renamed feature would have read 'unchanged' without a word)."""
    import features.build as B
    from features.config import FeatureConfig
    from features.vocabulary import OptionCatalog
    from pipeline.report import clinical as C
    from tests.code.test_features_build import BASE_REGIMEN, normalised

    if renamed:
        monkeypatch.setattr(B, "change_feature", lambda measure, days: f"{measure}_delta_{B.window_months(days)}mo")
    tables = normalised(BASE_REGIMEN, [
        ("P1", "2025-01-01", "cdasi_activity", 20.0), ("P1", "2025-03-01", "cdasi_activity", 28.0),
        ("P1", "2025-05-01", "mmt8", 60.0), ("P1", "2025-07-01", "mmt8", 60.0),
    ])
    config = FeatureConfig()
    keys = pd.DataFrame({"patient_id": ["P1"], "as_of": [pd.Timestamp("2025-07-02")]})
    fs = B.build_features(keys, tables, VOCABULARY, OptionCatalog.from_config(load_reference("options")), config)
    three = B.change_feature("cdasi_activity", 91)
    assert (three in fs.features.columns) and ("cdasi_activity_change_3m" in fs.features.columns) != renamed
    assert fs.features[three].iloc[0] == 0 and fs.features[B.change_feature("cdasi_activity", 182)].iloc[0] == 8
    unmeasured = C.unmeasured_changes(fs.features, fs.dictionary, config.change_windows_days)
    assert unmeasured == {"change in CDASI activity over 3 months"}  # MMT-8 recorded twice, equal: unchanged


def test_a_childs_prednisone_target_names_its_figure_as_the_induction_dose():
    """SHARE's juvenile prednisone is an induction band then 'the lowest effective dose': the figure for this
    child is the induction dose, never read as the lowest effective dose."""
    [pred] = R.dose_lines(_current(prednisone={"dose": 20.0, "intensity_mg_day": 20.0}), VOCABULARY, juvenile=True,
                          weight_kg=56.0, bsa_m2=R.mosteller_bsa(56.0, 150.0), tolerance=TOLERANCE)
    assert pred.target == ("induction 1–2 mg/kg/day (at most 60 mg/day), then the lowest effective dose "
                           "(induction for 56 kg: 56 mg/day)")


def test_the_stars_difference_from_continuing_carries_the_models_error_where_it_is_known():
    """A +10 shown bare reads as certain: where validation measured how far such differences were from the truth
    (a simulated cohort), the tile says so; elsewhere nothing is claimed."""
    shown = R.render_page(dataclasses.replace(sample_page(), difference_error=0.177))
    tiles = shown[shown.index('class="tiles"'):shown.index("</dl>")]
    assert 'id="difference-error">in validation such a difference was off by about 18 in 100' in tiles
    assert 'id="difference-error"' not in R.render_page(sample_page())


def test_the_stars_chance_is_drawn_as_100_patients_like_this(html):
    """An icon array beside the headline number shows numerator and denominator at once: 62 of 100 filled."""
    tile = html[html.index('class="tiles"'):html.index("</dl>")]
    icons = tile[tile.index('<svg class="chart icons"'):tile.index("</svg>")]
    assert 'aria-label="62 in 100 patients like this respond within 24 weeks"' in icons
    assert icons.count("<rect") == 100 and icons.count(f'fill="{R.OKABE_ITO["blue"]}"') == 62
    assert "62 in 100</strong> <span class=\"ci\">patients like this (90 % interval 52–72)" in tile and "chance of response (TIS ≥ 40)" in tile
    assert str(R.icon_array_svg(None, "respond")) == ""


def test_one_patients_share_of_a_batch_is_what_the_model_said_about_that_patient():
    """`report --all` runs the model once per batch and each page takes its patient's rows (`ModelOutputs.one`,
    found by an index built once for the batch): the decision's features, its predictions renumbered as row 0, the
    patient's current drugs only (none: an empty table), its explanation row; a patient with no decision, or two,
    is refused by name."""
    from models import explain as E

    ids = ["P1", "P2", "P3", "P3"]
    features = pd.DataFrame({"patient_id": ids, "age_years": [40.0, 50.0, 60.0, 61.0]})
    pred = pd.DataFrame({"row": [0, 0, 1, 1, 2, 2, 3, 3], "option": ["continue", "add_ivig"] * 4,
                         "p_response": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]})
    current = pd.DataFrame({"patient_id": ["P2", "P1", "P2"], "generic": ["ivig", "rituximab", "prednisone"]})
    values = np.array([[1.0], [2.0], [3.0], [4.0]])
    shap = E.Shap("response", "continue", "probability", ("age_years",), values, np.zeros(4), values.sum(axis=1))
    ex = E.Explanations({("response", "continue"): shap}, ("continue",), "continue", "s", 4)
    batch = A.ModelOutputs(features, pd.DataFrame(), current, pred, features[["age_years"]], ex)
    two = batch.one("P2")
    assert two.features.to_dict("records") == [{"patient_id": "P2", "age_years": 50.0}]
    assert two.pred.to_dict("records") == [{"row": 0, "option": "continue", "p_response": 0.3},
                                           {"row": 0, "option": "add_ivig", "p_response": 0.4}]
    assert two.current["generic"].tolist() == ["ivig", "prednisone"] and two.X["age_years"].tolist() == [50.0]
    assert two.ex.get("response", "continue").values.tolist() == [[2.0]]
    assert batch.one("P1").current["generic"].tolist() == ["rituximab"]
    alone = A.ModelOutputs(features.iloc[:1], pd.DataFrame(), current.iloc[:0], pred.iloc[:2], features.iloc[:1], ex)
    assert alone.one("P1").current.columns.tolist() == ["patient_id", "generic"] and alone.one("P1").current.empty
    with pytest.raises(ValueError, match=r"0 decisions of patient 'P9' \(rule: exactly one\)"):
        batch.one("P9")
    with pytest.raises(ValueError, match=r"2 decisions of patient 'P3'"):
        batch.one("P3")
