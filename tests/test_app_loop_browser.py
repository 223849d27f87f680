"""The analyst's loop in a real browser (Playwright + Debian's chromium, headless, offline) on the located archive
(assets/located, NAIP + Landsat chips): upload a chip, mark two results ✓ and one ✗, search again, set a
threshold, find all, export the finds as GeoJSON, save the session and load it back, and search from a place
(lat, lon); what the page shows is checked at each step."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium: `apt-get install -y chromium` (.ci/run does it)", allow_module_level=True)
pytest.importorskip("gradio", reason="the app needs gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the playwright package")

from indexing.build import build  # noqa: E402
from indexing.paths import LOCATED_ARCHIVE  # noqa: E402
from retrieval_app.service import RetrievalService  # noqa: E402
from retrieval_app.testing import tiny_setup  # noqa: E402
from retrieval_app.ui import create_demo, launch_options  # noqa: E402

from test_app_browser import CHROMIUM_ARGS  # noqa: E402

K = 8


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    setup = tiny_setup(tmp_path_factory.getbasetemp())
    index_dir = tmp_path_factory.mktemp("loop-index")
    for model in setup.models:
        build(model, LOCATED_ARCHIVE, index_dir)
    service = RetrievalService.open(setup.models, index_dir)
    demo = create_demo({"Located": service}, export_dir=tmp_path_factory.mktemp("loop-exports"))
    demo.queue(default_concurrency_limit=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                            **launch_options(service))
    yield url
    demo.close()
    service.close()


def _download(page, element_id: str, into: Path) -> Path:
    """The file behind a gr.File output's link, fetched as the browser would."""
    link = page.locator(f"#{element_id} a").first
    link.wait_for()
    response = page.request.get(link.get_attribute("href"))
    assert response.ok
    path = into / f"{element_id}.json"
    path.write_bytes(response.body())
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_whole_loop_in_a_browser(app, tmp_path):
    url = app
    chip = sorted(LOCATED_ARCHIVE.glob("naip-2020_*.tif"))[20]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.locator("#upload input[type=file]").set_input_files(str(chip))
            page.locator("#query-view img").wait_for()
            page.get_by_label("k (neighbours per model)").first.fill(str(K))
            page.locator("#search").click()
            page.locator("#gallery-ijepa img").nth(K - 1).wait_for()
            marks = page.locator("#marks")
            page.wait_for_function("() => document.querySelector('#marks').innerText.includes('upload naip-2020')")
            assert "✓ right** (0)" in marks.inner_html() or "(0)" in marks.inner_text()

            # Mark two results right and one wrong.
            page.locator("#click-mode").get_by_label("mark ✓ right").check()
            for n in (1, 2):
                page.locator("#gallery-ijepa img").nth(n).click()
                page.wait_for_function(f"() => document.querySelector('#marks').innerText.includes('✓ right ({n})')")
            page.locator("#click-mode").get_by_label("mark ✗ wrong").check()
            page.locator("#gallery-ijepa img").nth(3).click()
            page.wait_for_function("() => document.querySelector('#marks').innerText.includes('✗ wrong (1)')")
            marked = [line for line in marks.inner_text().splitlines() if "✓" in line or "✗" in line]
            assert len(marked) == 2 and marked[0].count("naip-2020_") == 2 and marked[1].count("naip-2020_") == 1

            # Search again: the status says so, and the galleries are refilled.
            page.locator("#search-marks").click()
            page.get_by_text("Searched with 3 example(s) and ✓, 1 ✗").first.wait_for()
            page.locator("#gallery-ijepa img").nth(K - 1).wait_for()

            # A threshold: its count shows as it is set; Find all lists the finds and maps them.
            number = page.locator("#threshold-ijepa input[type=number]")
            low = float(number.get_attribute("min"))
            number.fill(f"{low:.4f}")
            number.press("Enter")
            page.wait_for_function("() => document.querySelector('#counts').innerText.includes('tiles score')")
            page.locator("#find-all").click()
            page.wait_for_function("() => document.querySelector('#finds-summary').innerText.includes('finds')")
            summary = page.locator("#finds-summary").inner_text()
            count = int(summary.split("ijepa: ")[1].split(" finds")[0].replace(",", ""))
            assert count >= K and page.locator("#finds tbody tr").count() > 0
            page.wait_for_function("() => document.querySelector('#result-map img').naturalHeight === 420")

            # Export: touching finds merged into polygons, each with its tiles.
            page.locator("#export-finds").click()
            finds = json.loads(_download(page, "finds-file", tmp_path).read_text())
            tiles = [t for f in finds["features"] if f["properties"]["model"] == "ijepa" for t in f["properties"]["tiles"]]
            assert len(tiles) == count and len([f for f in finds["features"] if f["properties"]["model"] == "ijepa"]) < count

            # Save the session, load it back: the marks are restored.
            page.locator("#save-session").click()
            saved = _download(page, "session-file", tmp_path)
            session = json.loads(saved.read_text())
            assert len(session["positives"]) == 2 and len(session["negatives"]) == 1 and session["uploads"]
            page.locator("#load-session input[type=file]").set_input_files(str(saved))
            page.get_by_text("Loaded session-file.json: 1 example(s), 2 ✓, 1 ✗.").first.wait_for()

            # A place: the archive tile there becomes the query.
            page.locator("#place textarea, #place input").first.fill("47.03, -99.15")
            page.locator("#search-place").click()
            page.wait_for_function("() => document.querySelector('#marks').innerText.includes('Examples** (1)') || "
                                   "document.querySelector('#marks').innerText.includes('Examples (1)')")
            page.locator("#gallery-ijepa img").nth(K - 1).wait_for()
            assert "naip-2020_" in page.locator("#marks").inner_text()
            page.screenshot(path=str(tmp_path / "loop.png"), full_page=True)
        finally:
            browser.close()
    if os.environ.get("SATJEPA_LOOP_SCREENSHOT"):
        import shutil

        shutil.copy(tmp_path / "loop.png", os.environ["SATJEPA_LOOP_SCREENSHOT"])
