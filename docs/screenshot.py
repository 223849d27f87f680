"""Screenshots of the running app for the READMEs: `python docs/screenshot.py [URL] [TILE]` -> docs/app.png and
docs/loop.png.

Start the app first (`python -m retrieval_app`); this drives Debian's chromium with Playwright, picks the located
archive, uploads one of its NAIP chips (or TILE), waits for both models' results, a "why this match" heat map and
the map of the results, and saves the page (app.png); then it marks two MAE results ✓ and one ✗, searches again
with the marks, finds all above the thresholds and saves the page again (loop.png).
"""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from retrieval_app.testing import mark_in_page

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7860/"
    tile = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "assets/located/naip-2020_r04c06.tif"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.locator("#archive input").click()
        page.get_by_role("option", name="Located").click()
        page.locator("#upload input[type=file]").set_input_files(str(tile))
        page.get_by_text(tile.name).first.wait_for()
        page.locator("#search").click()
        for key in ("ijepa", "mae"):
            page.locator(f"#gallery-{key} img").nth(4).wait_for()
        page.locator("#gallery-mae img").nth(1).click()
        page.locator("#heat-result img").wait_for()
        page.wait_for_function("() => document.querySelector('#result-map img')?.naturalHeight === 420")
        page.wait_for_timeout(1500)  # let the page's JavaScript finish drawing
        page.screenshot(path=str(REPO / "docs" / "app.png"), full_page=True)
        mark_in_page(page, "mae", right=(1, 2), wrong=(4,))
        page.locator("#search-marks").click()
        page.get_by_text("marked tiles are not shown again").first.wait_for()
        page.locator("#find-all").click()
        page.wait_for_function("() => document.querySelector('#finds-summary').innerText.includes('finds')")
        page.wait_for_timeout(1500)
        page.locator("#loop").screenshot(path=str(REPO / "docs" / "loop.png"))
        browser.close()
    print(REPO / "docs" / "app.png", REPO / "docs" / "loop.png")


if __name__ == "__main__":
    main()
