"""The tile server (retrieval_app/tile_server.py) as its own process: what it serves and refuses, its caching
headers, the URLs the app hands the page, and a search through the app whose thumbnails come from it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
pytest.importorskip("gradio", reason="the app needs gradio (pip install -e '.[app]')")

from gradio_client import Client, handle_file  # noqa: E402

from retrieval_app.service import RetrievalService  # noqa: E402
from retrieval_app.testing import tiny_setup  # noqa: E402
from retrieval_app.tile_server import TileServer  # noqa: E402
from retrieval_app.ui import create_demo, launch_options, tile_roots  # noqa: E402

from test_app_client import NO_FILTERS, free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOCAL = {"host": "127.0.0.1:7860"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiles")
    archive, images, secret = base / "archive", base / "images", base / "secret.txt"
    (archive / "River one").mkdir(parents=True)
    (archive / "River one" / "tile 1.jpg").write_bytes(b"\xff\xd8jpeg bytes")
    images.mkdir()
    (images / "a.png").write_bytes(b"\x89PNG png bytes")
    secret.write_text("not for the page")
    return archive, images, secret


def test_serves_the_files_under_its_roots_and_nothing_else(roots):
    archive, images, secret = roots
    with TileServer([archive, images]) as tiles, httpx.Client() as http:
        url = tiles.url(str(archive / "River one" / "tile 1.jpg"), LOCAL)
        assert url == f"http://127.0.0.1:{tiles.port}/0/River%20one/tile%201.jpg"
        first = http.get(url)
        assert first.status_code == 200 and first.content == b"\xff\xd8jpeg bytes"
        assert first.headers["content-type"] == "image/jpeg"
        assert first.headers["cache-control"].startswith("public, max-age=")
        again = http.get(url, headers={"if-none-match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b""  # the browser's copy is still good
        png = http.get(tiles.url(str(images / "a.png"), LOCAL))
        assert png.status_code == 200 and png.content == b"\x89PNG png bytes"
        base = f"http://127.0.0.1:{tiles.port}"
        for path in ("/0/../secret.txt", "/0/%2e%2e/secret.txt", "/2/a.png", "/x/a.png", "/0/River%20one", "/0/", "/0/a%00.png",
                     "/1/missing.png"):
            assert http.get(base + path).status_code == 404, path
        assert http.post(url).status_code == 404
    assert tiles.url(str(secret), LOCAL) is None  # outside the roots: the app keeps gradio's route


def test_no_direct_url_behind_a_proxy_or_outside_a_request(roots):
    archive, images, _ = roots
    tiles = TileServer([archive, images], port=1)  # never started: url() is arithmetic
    path = str(images / "a.png")
    assert tiles.url(path, None) is None
    assert tiles.url(path, {"host": "example.org", "x-forwarded-host": "example.org"}) is None
    assert tiles.url(path, {"host": "[::1]:7860"}) == "http://[::1]:1/1/a.png"
    assert tiles.url(path, {"host": "analyst-box:7860"}) == "http://analyst-box:1/1/a.png"


def test_the_tile_server_stops_when_its_app_is_killed(roots):
    archive, _, _ = roots
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from retrieval_app.tile_server import TileServer; "
         "t = TileServer([sys.argv[1]]).__enter__(); print(t.port, flush=True); time.sleep(600)", str(archive)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    port = int(parent.stdout.readline())
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # listening
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.2)
        except OSError:
            return
    pytest.fail(f"the tile server on port {port} outlived its app")


def test_a_search_through_the_app_fetches_its_thumbnails_from_the_tile_server(tmp_path_factory):
    setup = tiny_setup(tmp_path_factory.getbasetemp())
    service = RetrievalService.open(setup.models, setup.index_dir)
    exports = tmp_path_factory.mktemp("tile-exports")
    with TileServer(tile_roots(service, exports)) as tiles:
        demo = create_demo(service, export_dir=exports, tiles=tiles)
        demo.queue(default_concurrency_limit=2)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                quiet=True, **launch_options(service))
        try:
            client = Client(url, verbose=False, download_files=False)
            tile = setup.archive / "2750" / "Forest" / "Forest_5.jpg"
            out = client.predict(handle_file(str(tile)), None, 4, *NO_FILTERS, "centre chip", api_name="/query")
            for gallery in (out[4], out[7]):
                assert len(gallery) == 4
                for item in gallery:
                    image = item["image"]["url"]
                    assert image.startswith(f"http://127.0.0.1:{tiles.port}/0/"), image
                    assert httpx.get(image).content[:2] == b"\xff\xd8"  # the archive's JPEG, as it is
            own = out[4][0]["image"]["url"]  # the query itself, first: the very file uploaded
            assert httpx.get(own).content == tile.read_bytes()
        finally:
            demo.close()
            service.close()
