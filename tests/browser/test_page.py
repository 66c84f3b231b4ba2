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
    (root / "hostile.html").write_text(R.render_page(sample_page(patient_id=XSS, drug=XSS, event=XSS)),
                                       encoding="utf-8")
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
    assert svgs.count() == 4
    for i in range(svgs.count()):
        box = svgs.nth(i).bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 30, i
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
    assert text.count("<script>window.__pwned=1</script>") >= 3  # patient id, drug as written, event details
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
