"""End to end in a real browser: Playwright drives Debian's chromium (headless, no network) against the app on
a free localhost port: upload a tile, wait for both models' results, check them, open a match heat map and save
a screenshot (to the test's tmp dir, and to $SATJEPA_APP_SCREENSHOT when set, e.g. docs/app.png)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium: `apt-get install -y chromium` (.ci/run does it)", allow_module_level=True)
pytest.importorskip("gradio", reason="the app needs gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the playwright package")

from retrieval_app.service import RetrievalService  # noqa: E402
from retrieval_app.testing import tiny_setup  # noqa: E402
from retrieval_app.ui import create_demo, launch_options  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
K = 6


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    setup = tiny_setup(tmp_path_factory.getbasetemp())
    service = RetrievalService.open(setup.models, setup.index_dir)
    demo = create_demo(service)
    demo.queue(default_concurrency_limit=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                            **launch_options(service))
    yield url, setup
    demo.close()
    service.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_upload_a_tile_and_see_both_models(app, tmp_path):
    url, setup = app
    tile = setup.archive / "2750" / "SeaLake" / "SeaLake_6.jpg"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.locator("#upload input[type=file]").set_input_files(str(tile))
            page.locator("#query-view img").wait_for()  # the upload is shown as the models see it, at once
            page.locator("#upload").scroll_into_view_if_needed()
            page.get_by_label("k (neighbours per model)").first.fill(str(K))
            page.locator("#search").click()
            tops = []
            for key in ("ijepa", "mae"):
                images = page.locator(f"#gallery-{key} img")
                images.nth(K - 1).wait_for()
                assert images.count() == K
                captions = page.locator(f"#gallery-{key} .caption-label")
                assert captions.count() == K
                first = captions.first.inner_text()
                assert first.startswith("SeaLake · ") and "(the query itself)" in first
                # Every caption is shown whole (wrapped, not cut): no element's text overflows its box.
                assert captions.evaluate_all("els => els.every(e => e.scrollWidth <= e.clientWidth + 1)")
                tops.append(page.locator(f"#gallery-{key}").bounding_box()["y"])
            assert abs(tops[0] - tops[1]) < 2  # the two galleries side by side, aligned
            status = page.locator("#status").inner_text()
            assert "I-JEPA" in status and "MAE" in status and "neighbours are shared" in status
            assert "Linear probes" in status and "kNN votes" in status and "cosine similarity" in status
            # The first result is explained right after the query, without a click.
            page.locator("#heat-query img").wait_for()
            page.locator("#heat-result img").wait_for()
            assert "embedding cosine" in page.content()
            page.locator("#gallery-mae img").nth(1).click()  # "why this match" for the second MAE result
            page.get_by_text("MAE, result 2750/").first.wait_for()  # the explanation switched to MAE
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("SATJEPA_APP_SCREENSHOT"):
        shutil.copy(shot, os.environ["SATJEPA_APP_SCREENSHOT"])
