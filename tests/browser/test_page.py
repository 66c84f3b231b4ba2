"""The clinician page in a real browser: Debian's headless Chromium driven by Playwright over a local server."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import report as R
from tests.code.test_report import XSS, sample_page

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium "
                       "(`make browser` installs it with apt-get)"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The sample page, a page carrying <script> in its inputs, and an index, served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("site")
    (root / "page.html").write_text(R.render_page(sample_page()), encoding="utf-8")
    (root / "hostile.html").write_text(R.render_page(hostile_page()), encoding="utf-8")
    entries = [{"patient_id": pid, "href": "page.html", "recommended": "add IVIG"} for pid in ("P-0042", "P-0777", XSS)]
    (root / "index.html").write_text(R.render_index(entries, as_of="2026-11-01", model="m v1"), encoding="utf-8")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        pass


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    return page, errors


def test_page_renders_without_errors_with_every_plot_and_option(browser, site):
    base, _ = site
    page, errors = _open(browser, f"{base}/page.html")
    assert errors == []
    banner = page.locator("#banner")
    assert banner.is_visible() and R.BANNER.upper() in banner.inner_text().upper()
    svgs = page.locator("svg.chart")
    assert svgs.count() == 6  # the ★'s icon array, two trend panels, two waterfalls, one contrast
    for i in range(svgs.count()):
        box = svgs.nth(i).bounding_box()
        icons = "icons" in (svgs.nth(i).get_attribute("class") or "")  # 100 small squares beside the number
        assert box is not None and box["width"] > (60 if icons else 100) and box["height"] > 30, i
        assert svgs.nth(i).get_attribute("aria-label")
    rows = page.locator("#options-table tbody tr")
    assert rows.count() == len(sample_page().options)
    assert page.locator("#options-table tr.ineligible").count() == 1
    assert "★" in page.locator("#options-table tr.recommended").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "clinician-page.png"), full_page=True)
    page.close()


def test_script_in_inputs_is_shown_as_text_and_never_runs(browser, site):
    base, _ = site
    page, errors = _open(browser, f"{base}/hostile.html")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    text = page.locator("body").inner_text()
    assert text.count("<script>window.__pwned=1</script>") >= 8  # every free-text field shown as text
    assert page.locator("script").count() == 0
    assert errors == []
    page.close()


def test_index_finds_a_patient_by_identifier(browser, site):
    base, _ = site
    page, errors = _open(browser, f"{base}/index.html")
    page.fill("#q", "0777")
    visible = [r for r in page.locator("#patients tbody tr").all() if r.is_visible()]
    assert [r.inner_text().split("\t")[0].strip() for r in visible] == ["P-0777"]
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert errors == []
    page.close()


def hostile_page() -> R.Page:
    """The sample page with a script in every free-text field a record or the model can put on the page."""
    import dataclasses

    page = sample_page(patient_id=XSS, drug=XSS, event=XSS)
    e = page.explanations[1]
    return dataclasses.replace(
        page,
        facts=(*page.facts, ("antibodies", XSS)),
        activity=((XSS, True),),
        data_findings=(XSS,),
        disease_notes=(XSS,),
        labs=(R.LabResult(XSS, 0.4, XSS, "2026-10-02", 30, 3, True, "low"),),
        regimen=tuple(dataclasses.replace(r, action=XSS, basis=XSS) for r in page.regimen),
        options=tuple(dataclasses.replace(o, label=XSS if o.recommended else o.label, safety_reasons=(XSS,))
                      for o in page.options),
        explanations=(page.explanations[0], dataclasses.replace(e, reasons=(XSS,), contrast_reasons=(XSS,),
                                                                 bars=(R.Bar(XSS, 5.0),))),
    )


# --- layout at the widths clinicians use, and print -------------------------------------------------------------
VIEWPORTS = {"phone-360": (360, 740), "phone-390": (390, 844), "desktop-1280": (1280, 900)}

#: JavaScript reading every chart's bars back from the SVG geometry, in points (see charts.py's data-x0/scale)
DRAWN = """() => Array.from(document.querySelectorAll('svg.waterfall, svg.contrast')).map(svg => {
  const x0 = parseFloat(svg.dataset.x0), k = parseFloat(svg.dataset.scale);
  return Array.from(svg.querySelectorAll('rect.bar')).map(r => {
    const x = parseFloat(r.getAttribute('x')), w = parseFloat(r.getAttribute('width'));
    return [r.dataset.kind, (x - x0) / k, (x + w - x0) / k];
  });
})"""

#: the smallest rendered size of any chart text, in CSS px (font size × the SVG's scale on screen)
MIN_CHART_FONT = """() => Math.min(...Array.from(document.querySelectorAll('svg.chart text')).map(t =>
  parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a))"""


def _layout(browser, url: str, size: tuple[int, int], media: str = "screen"):
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.emulate_media(media=media)
    page.goto(url, wait_until="load")
    return page, errors


@pytest.mark.parametrize("name", list(VIEWPORTS))
def test_no_sideways_scroll_and_the_answer_on_the_first_screen(browser, site, name):
    base, _ = site
    width, height = VIEWPORTS[name]
    page, errors = _layout(browser, f"{base}/page.html", (width, height))
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    summary = page.locator("#summary")
    box = summary.bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height, box
    assert "★" in summary.inner_text() and "62 in 100" in summary.inner_text()
    assert page.evaluate(MIN_CHART_FONT) >= 11
    if width < 640:  # the options table is a stack of cards: every cell on screen, labelled
        cells = page.locator("#options-table tr.recommended td")
        for i in range(cells.count()):
            b = cells.nth(i).bounding_box()
            assert b is not None and b["x"] >= 0 and b["x"] + b["width"] <= width
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"clinician-page-{name}.png"))
    assert errors == []
    page.close()


def test_print_fits_a4_portrait_with_the_summary_and_options_on_page_one(browser, site, tmp_path):
    base, _ = site
    a4 = (794, 1123)  # A4 at 96 dpi
    page, errors = _layout(browser, f"{base}/page.html", a4, media="print")
    assert page.evaluate("document.documentElement.scrollWidth") <= a4[0]
    margin = 12 / 25.4 * 96  # the 12 mm @page margin
    bottom = page.locator("#options-table").bounding_box()
    assert bottom is not None and bottom["y"] + bottom["height"] <= a4[1] - 2 * margin
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "clinician-page-print.png"))
    pdf = page.pdf(path=str(tmp_path / "page.pdf"), format="A4", prefer_css_page_size=True)
    assert pdf[:4] == b"%PDF"
    assert errors == []
    page.close()


@pytest.mark.parametrize("name", ["phone-360", "desktop-1280"])
def test_every_chart_adds_up_as_drawn(browser, site, name):
    """Read in the browser from the SVG geometry: base from 0, each step from the running total, total = the
    running total at the end — for the sample's waterfalls and its contrast."""
    base, _ = site
    page, _ = _layout(browser, f"{base}/page.html", VIEWPORTS[name])
    charts = page.evaluate(DRAWN)
    assert len(charts) == 3
    for bars in charts:
        kinds = [k for k, *_ in bars]
        assert kinds[0] == "base" and kinds[-1] == "total"
        running = bars[0][2] if bars[0][1] == pytest.approx(0, abs=0.01) else bars[0][1]
        for kind, lo, hi in bars[1:-1]:
            start, end = (lo, hi) if kind == "up" else (hi, lo)
            assert start == pytest.approx(running, abs=0.01)
            running = end
        total_lo, total_hi = bars[-1][1:]
        assert (total_hi if total_lo == pytest.approx(0, abs=0.01) else total_lo) == pytest.approx(running, abs=0.01)
    page.close()
