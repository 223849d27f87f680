"""End to end in a real browser: Playwright drives Debian's chromium (headless, no network) against the app on
a free localhost port. The query page: upload a tile, wait for both models' results, check them, open a match heat map; then
switch to the located archive (assets/located), search with a NAIP chip and wait for the map, check that the
unlabelled archive shows no empty kNN panels and that the galleries fit their results; save a screenshot
(to the test's tmp dir, and to $SATJEPA_APP_SCREENSHOT when set). The analyst's loop: see the last test."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
from retrieval_app.testing import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium: `apt-get install -y chromium` (.ci/run does it)", allow_module_level=True)
pytest.importorskip("gradio", reason="the app needs gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the playwright package")

from indexing.build import build  # noqa: E402
from indexing.paths import LOCATED_ARCHIVE  # noqa: E402
from retrieval_app.service import RetrievalService  # noqa: E402
from retrieval_app.testing import mark_in_page, search_in_page, tiny_setup  # noqa: E402
from retrieval_app.tile_server import TileServer  # noqa: E402
from retrieval_app.ui import create_demo, launch_options, tile_roots  # noqa: E402

K = 6
LOCATED = "Located: NAIP + Landsat chips"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    setup, _ = _located(tmp_path_factory)
    # The located archive is served with other models, as the shipped one is (its models.json): the tiny models
    # under the AID models' names, so the page must fill its slots with them.
    aid_models = []
    for model in setup.models:
        aid_models.append(tmp_path_factory.getbasetemp() / "aid-named" / f"{model.name}-aid")
        shutil.copytree(model, aid_models[-1], dirs_exist_ok=True)
    located_index = tmp_path_factory.mktemp("located-aid-index")
    for model in aid_models:
        build(model, LOCATED_ARCHIVE, located_index)
    services = {"Tiny EuroSAT-like": RetrievalService.open(setup.models, setup.index_dir),
                LOCATED: RetrievalService.open(aid_models, located_index)}
    with _launch(services, tmp_path_factory.mktemp("exports")) as url:
        yield url, setup
    for service in services.values():
        service.close()


def _located(tmp_path_factory):
    """The tiny models (one setup per session) and their indexes of the located archive."""
    setup = tiny_setup(tmp_path_factory.getbasetemp())
    index_dir = tmp_path_factory.mktemp("located-index")
    for model in setup.models:
        build(model, LOCATED_ARCHIVE, index_dir)
    return setup, index_dir


@contextlib.contextmanager
def _launch(services, export_dir):
    """The app over ``services`` on a free localhost port, its thumbnails from a tile server as
    ``python -m retrieval_app`` runs it; yields the page's url."""
    with TileServer(tile_roots(services, export_dir)) as tiles:
        demo = create_demo(services, export_dir=export_dir, tiles=tiles)
        demo.queue(default_concurrency_limit=2)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                                **launch_options(services))
        try:
            yield url
        finally:
            demo.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_upload_a_tile_and_see_both_models(app, tmp_path):
    url, setup = app
    tile = setup.archive / "2750" / "SeaLake" / "SeaLake_6.jpg"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            search_in_page(page, url, tile, K)
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
            # The thumbnails come from the tile server (another port, not gradio's file route), and are drawn.
            page.wait_for_function("() => [...document.querySelectorAll('#gallery-ijepa img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            sources = page.locator("#gallery-ijepa img").evaluate_all("els => els.map(e => e.currentSrc)")
            assert all("/gradio_api/file=" not in src and not src.startswith(url) for src in sources), sources
            assert page.locator("#knn-ijepa").is_visible() and page.locator("#knn-mae").is_visible()  # labelled
            status = page.locator("#status").inner_text()
            assert "I-JEPA" in status and "MAE" in status and "neighbours are shared" in status
            assert "Linear probes" in status and "kNN votes" in status and "cosine similarity" in status
            # Heat maps are made on demand: none after the search, then a click on a result explains it.
            page.wait_for_timeout(500)
            assert page.locator("#heat-query img").count() == 0
            page.locator("#gallery-ijepa img").nth(0).click()
            page.locator("#heat-query img").wait_for()
            page.locator("#heat-result img").wait_for()
            assert "embedding cosine" in page.content()
            page.locator("#gallery-mae img").nth(1).click()  # "why this match" for the second MAE result
            page.get_by_text("MAE, result 2750/").first.wait_for()  # the explanation switched to MAE
            natural = "img => [img.naturalWidth, img.naturalHeight]"
            # JPEGs carry no locations: the interactive map stays empty, the picture says so.
            page.wait_for_function("() => document.getElementById('leaflet-map').dataset.results === '0'")
            page.get_by_text("The map as a picture (for reports)").click()
            page.wait_for_function("() => { const i = document.querySelector('#result-map img'); "
                                   "return i && i.complete && i.naturalWidth > 0; }")  # drawn once it is opened
            assert page.locator("#result-map img").evaluate(natural) == [640, 120]

            # The located archive: a NAIP chip's neighbours on a map of real places.
            page.locator("#archive input").click()
            page.get_by_role("option", name=LOCATED).click()
            chip = next(LOCATED_ARCHIVE.glob("naip-2020_*.tif"))
            page.locator("#upload").get_by_label("Clear").click()  # the previous tile's upload
            page.locator("#upload input[type=file]").set_input_files(str(chip))
            page.locator("#search").click()
            located = re.compile(r"#\d+ [\d.]+.* · (47\.0|2[345]\.)\d+, -(99|7[6-9])\.\d+$")  # NAIP or Landsat
            captions = page.locator("#gallery-ijepa .caption-label", has_text=located)  # the new results
            captions.nth(K - 1).wait_for()
            assert captions.count() == K
            # The interactive map shows the results, and so does the picture (its accordion left open above).
            page.wait_for_function(f"() => +document.getElementById('leaflet-map').dataset.results >= {K}")
            page.wait_for_function("() => { const i = document.querySelector('#result-map img'); "
                                   "return i && i.naturalHeight === 420; }")
            assert page.locator("#result-map img").evaluate(natural) == [640, 420]  # the map is drawn
            # This archive's own models fill the two slots, and the page says which (and which classes).
            assert "(ijepa-aid)" in page.locator("#title-ijepa").inner_text()
            assert "(mae-aid)" in page.locator("#title-mae").inner_text()
            assert "linear probe (3 classes)" in page.locator("#status").inner_text()  # which head, which classes
            page.locator("#gallery-mae img").nth(1).click()
            page.get_by_text("(mae-aid)**, result").or_(page.get_by_text("(mae-aid), result")).first.wait_for()
            # No labels here: no empty kNN panels, and the status says why there is no vote.
            assert "no labels to vote with" in page.locator("#status").inner_text()
            for key in ("ijepa", "mae"):
                assert not page.locator(f"#knn-{key}").is_visible()
                # Each gallery is as tall as its rows of results (no blank area under them).
                box = page.locator(f"#gallery-{key}").bounding_box()
                last = page.locator(f"#gallery-{key} img").nth(K - 1).bounding_box()
                assert box["y"] + box["height"] - (last["y"] + last["height"]) < 40
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("SATJEPA_APP_SCREENSHOT"):
        shutil.copy(shot, os.environ["SATJEPA_APP_SCREENSHOT"])


# The analyst's loop on the located archive: upload a chip, mark two results ✓ and one ✗, search again, set a
# threshold, find all, export the finds as GeoJSON, save the session and load it back, search from a place.

LOOP_K = 8


@pytest.fixture(scope="module")
def loop_app(tmp_path_factory):
    setup, index_dir = _located(tmp_path_factory)
    service = RetrievalService.open(setup.models, index_dir)
    with _launch({"Located": service}, tmp_path_factory.mktemp("loop-exports")) as url:
        yield url
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
def test_the_whole_loop_in_a_browser(loop_app, tmp_path):
    url = loop_app
    chip = sorted(LOCATED_ARCHIVE.glob("naip-2020_*.tif"))[20]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            search_in_page(page, url, chip, LOOP_K)
            page.locator("#gallery-ijepa img").nth(LOOP_K - 1).wait_for()
            marks = page.locator("#marks")
            page.wait_for_function("() => document.querySelector('#marks').innerText.includes('upload naip-2020')")
            assert "✓ right** (0)" in marks.inner_html() or "(0)" in marks.inner_text()

            # Mark two results right and one wrong.
            mark_in_page(page, "ijepa", right=(1, 2), wrong=(3,))
            marked = [line for line in marks.inner_text().splitlines() if "✓" in line or "✗" in line]
            assert len(marked) == 2 and marked[0].count("naip-2020_") == 2 and marked[1].count("naip-2020_") == 1

            # Search again: the status says so, and the galleries are refilled.
            page.locator("#search-marks").click()
            page.get_by_text("Searched with 3 example(s) and ✓, 1 ✗").first.wait_for()
            page.locator("#gallery-ijepa img").nth(LOOP_K - 1).wait_for()

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
            assert count >= LOOP_K and page.locator("#finds tbody tr").count() > 0
            # The interactive map (Leaflet, bundled) shows the finds over the archive's own chips.
            page.wait_for_function(f"() => +document.getElementById('leaflet-map').dataset.results >= {count}")
            assert page.evaluate("() => typeof L") == "object"
            assert page.locator("#leaflet-map img.leaflet-image-layer").count() > count  # chips under the finds
            # Draw a box on the map: it becomes the bounding-box filter.
            page.locator("#leaflet-map").scroll_into_view_if_needed()
            map_box = page.locator("#leaflet-map").bounding_box()
            page.locator("#map-draw-box").click()
            x0, y0 = map_box["x"] + map_box["width"] * 0.35, map_box["y"] + map_box["height"] * 0.35
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move(x0 + 80, y0 + 60, steps=5)
            page.mouse.up()  # the filter accordion opens and the box fills in
            page.wait_for_function("() => { const f = document.querySelector('#bbox textarea, #bbox input'); "
                                   "return f && f.value.split(',').length === 4; }")
            drawn = page.locator("#bbox textarea, #bbox input").first.input_value()
            min_lon, min_lat, max_lon, max_lat = (float(v) for v in drawn.split(","))
            assert min_lon < max_lon and min_lat < max_lat and -180 <= min_lon and max_lat <= 90
            page.locator("#bbox textarea, #bbox input").first.fill("")

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
            shown = page.evaluate("() => +(document.getElementById('leaflet-map').dataset.shown || 0)")
            page.locator("#place textarea, #place input").first.fill("47.03, -99.15")
            page.locator("#search-place").click()
            page.wait_for_function("() => document.querySelector('#marks').innerText.includes('Examples** (1)') || "
                                   "document.querySelector('#marks').innerText.includes('Examples (1)')")
            page.locator("#gallery-ijepa img").nth(LOOP_K - 1).wait_for()
            assert "naip-2020_" in page.locator("#marks").inner_text()

            # A click on the map: the tile there becomes the query (its place filled in, the galleries redrawn).
            # First the map must show this search and have settled (on a loaded machine it lags the galleries).
            page.wait_for_function(f"""() => {{
                const map = document.getElementById('leaflet-map');
                if (+(map.dataset.shown || 0) <= {shown}) return false;
                const [west, south, east, north] = map.dataset.view.split(',').map(Number);
                return west < -99.15 && -99.15 < east && south < 47.03 && 47.03 < north; }}""")
            page.locator("#leaflet-map").scroll_into_view_if_needed()
            map_box = page.locator("#leaflet-map").bounding_box()
            page.mouse.click(map_box["x"] + map_box["width"] * 0.62, map_box["y"] + map_box["height"] * 0.55)
            place = page.locator("#place textarea, #place input").first
            page.wait_for_function("() => !(document.querySelector('#place textarea') || "
                                   "document.querySelector('#place input')).value.startsWith('47.03, -99.15')")
            lat, lon = (float(v) for v in place.input_value().split(","))
            page.get_by_text(f"The archive tile at ({lat:.4f}, {lon:.4f})").first.wait_for()
            page.locator("#gallery-ijepa img").nth(LOOP_K - 1).wait_for()
            page.screenshot(path=str(tmp_path / "loop.png"), full_page=True)
        finally:
            browser.close()
    if os.environ.get("SATJEPA_LOOP_SCREENSHOT"):
        shutil.copy(tmp_path / "loop.png", os.environ["SATJEPA_LOOP_SCREENSHOT"])
