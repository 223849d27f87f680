"""Every API endpoint of the app through ``gradio_client``, bad inputs included, against a live local server."""

from __future__ import annotations

import os
import socket

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
gr = pytest.importorskip("gradio", reason="the app needs gradio (pip install -e '.[app]')")
gradio_client = pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from retrieval_app.__main__ import _parser  # noqa: E402
from retrieval_app.service import RetrievalService  # noqa: E402
from retrieval_app.testing import tiny_setup  # noqa: E402
from retrieval_app.ui import create_demo, launch_options  # noqa: E402

from test_app_service import GEOTIFFS, _bad_uploads  # noqa: E402

NO_FILTERS = ([], [], "", "", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    setup = tiny_setup(tmp_path_factory.getbasetemp())
    service = RetrievalService.open(setup.models, setup.index_dir)
    demo = create_demo(service, export_dir=tmp_path_factory.mktemp("exports"))
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_options(service))
    yield url, Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads"))), setup
    demo.close()
    service.close()


def test_every_action_has_a_named_endpoint(app):
    _, client, _ = app
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/query", "/classify", "/explain", "/export", "/examples"} <= set(endpoints)


def test_query_returns_both_models_side_by_side(app):
    _, client, setup = app
    tile = setup.archive / "2750" / "Forest" / "Forest_5.jpg"
    out = client.predict(handle_file(str(tile)), None, 4, *NO_FILTERS, "centre chip", api_name="/query")
    status, query_image, probe_a, knn_a, gallery_a, probe_b, knn_b, gallery_b, result_map, csv, geojson, _, _, \
        map_data = out
    assert map_data in ({}, None)  # an unlocated archive: nothing for the interactive map
    assert "I-JEPA" in status and "MAE" in status and os.path.isfile(query_image)
    for probe, knn, gallery in ((probe_a, knn_a, gallery_a), (probe_b, knn_b, gallery_b)):
        assert probe["label"] in ("Forest", "River", "SeaLake") and knn["label"]
        assert len(gallery) == 4 and gallery[0]["caption"].startswith("Forest · ")
        assert "(the query itself) · #1 1.000" in gallery[0]["caption"]
    assert os.path.isfile(result_map) and csv is None and geojson is None  # exports: written when asked (/export)


def test_filters_classify_examples_export_and_explain(app):
    _, client, setup = app
    examples = client.predict(api_name="/examples")
    sample_id = examples[0][1]
    out = client.predict(None, sample_id, 3, ["River"], ["train"], "", "", "", "centre chip", api_name="/query")
    assert all("River · train" in item["caption"] for item in out[4] + out[7])
    classes = client.predict(None, sample_id, "centre chip", api_name="/classify")
    assert set(classes) == {"ijepa", "mae"} and classes["mae"]["prediction"]
    csv, geojson = client.predict(None, sample_id, 3, *NO_FILTERS, "centre chip", api_name="/export")
    assert len(open(csv).read().splitlines()) == 7 and geojson.endswith(".geojson")
    heat_query, heat_result, text = client.predict(None, sample_id, "mae", sample_id, "centre chip",
                                                   api_name="/explain")
    assert os.path.isfile(heat_query) and os.path.isfile(heat_result) and "cosine" in text
    geotiff = client.predict(handle_file(str(GEOTIFFS / "s2_utm18n_uint16_6band.tif")), None, 3, *NO_FILTERS,
                             "centre chip", api_name="/query")
    assert "centre chip" in geotiff[0] and "used bands 1–3" in geotiff[0]


def test_bad_inputs_get_messages_and_the_server_keeps_serving(app, tmp_path):
    _, client, setup = app
    for name, (path, message) in _bad_uploads(tmp_path, setup).items():
        if name == "missing":
            continue
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(path)), None, 3, *NO_FILTERS, "centre chip", api_name="/query")
    with pytest.raises(AppError, match="one of the two"):
        client.predict(None, None, 3, *NO_FILTERS, "centre chip", api_name="/query")
    with pytest.raises(AppError, match="YYYY-MM-DD"):
        client.predict(None, "2750/Forest/Forest_1.jpg", 3, [], [], "yesterday", "", "", "centre chip",
                       api_name="/query")
    with pytest.raises(AppError, match="not in the catalogue"):
        client.predict(None, "../../etc/passwd", "mae", "2750/Forest/Forest_1.jpg", "centre chip",
                       api_name="/explain")
    with pytest.raises(AppError, match="Choose a result"):
        client.predict(None, "2750/Forest/Forest_1.jpg", "mae", None, "centre chip", api_name="/explain")
    assert client.predict(None, "2750/Forest/Forest_1.jpg", "centre chip", api_name="/classify")["ijepa"]


def test_an_upload_just_over_the_limit_is_refused_in_the_apps_words(app, tmp_path):
    from retrieval_app.upload import MAX_UPLOAD_BYTES

    _, client, setup = app
    big = tmp_path / "whole-scene.tif"  # a real tile padded past the limit by one byte
    tile = (setup.archive / "2750" / "Forest" / "Forest_5.jpg").read_bytes()
    big.write_bytes(tile + bytes(MAX_UPLOAD_BYTES + 1 - len(tile)))
    with pytest.raises(AppError) as refused:
        client.predict(handle_file(str(big)), None, 4, *NO_FILTERS, "centre chip", api_name="/query")
    message = str(refused.value)
    assert "whole-scene.tif is 33.6 MB" in message and "limited to 33.6 MB" in message  # which file, the limit
    assert "Crop" in message and "python -m indexing build" in message  # what to do
    assert "maximum" not in message and "bytes" not in message  # not gradio's own words
    out = client.predict(handle_file(str(setup.archive / "2750" / "Forest" / "Forest_5.jpg")), None, 2, *NO_FILTERS,
                         "centre chip", api_name="/query")
    assert "I-JEPA" in out[0]  # the server keeps serving


def test_the_whole_loop_through_the_api(app):
    _, client, setup = app
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/loop_start", "/loop_place", "/loop_mark", "/loop_search", "/loop_find_all", "/loop_load"} <= set(endpoints)
    session = client.predict("2750/Forest/Forest_1.jpg", "rocchio", api_name="/loop_start")
    first = client.predict(session, 6, api_name="/loop_search")
    assert set(first) == {"ijepa", "mae"} and len(first["ijepa"]) == 6
    right, wrong = first["ijepa"][0]["sample_id"], first["ijepa"][1]["sample_id"]
    session = client.predict(session, right, "✓", api_name="/loop_mark")
    session = client.predict(session, wrong, "✗", api_name="/loop_mark")
    assert [m["sample_id"] for m in session["positives"]] == [right] and session["negatives"][0]["sample_id"] == wrong
    again = client.predict(session, 6, api_name="/loop_search")
    assert {right, wrong}.isdisjoint(h["sample_id"] for h in again["ijepa"])  # marked: not shown again
    found = client.predict(session, None, 5, api_name="/loop_find_all")
    assert found["finds"]["mae"]["count"] == 5 and found["geojson"]["type"] == "FeatureCollection"
    assert right in {h["sample_id"] for h in found["finds"]["ijepa"]["hits"]}  # a ✓ is a find
    checked = client.predict(session, api_name="/loop_load")
    assert checked["missing"] == [] and checked["session"]["positives"] == session["positives"]
    with pytest.raises(AppError, match="verdict"):
        client.predict(session, right, "maybe", api_name="/loop_mark")
    with pytest.raises(AppError, match="no coordinates"):
        client.predict(47.0, -99.1, api_name="/loop_place")  # the tiny archive is not located


def test_only_the_archive_is_served_and_localhost_is_the_default(app):
    import httpx

    url, _, setup = app
    inside = setup.archive / "2750" / "River" / "River_1.jpg"
    assert httpx.get(f"{url}gradio_api/file={inside}").status_code == 200
    for outside in ("/etc/passwd", str(setup.index_dir / "ijepa" / "catalog.duckdb"), str(setup.models[0])):
        assert httpx.get(f"{url}gradio_api/file={outside}").status_code == 403
    args = _parser().parse_args([])
    assert args.host == "127.0.0.1" and args.models is None  # each archive's own models (models.json)


def test_an_archive_names_its_default_models(tmp_path):
    from indexing.paths import DEMO_ARCHIVE, LOCATED_ARCHIVE
    from retrieval_app.service import archive_models

    assert archive_models(LOCATED_ARCHIVE) == ["ijepa-aid", "mae-aid"]  # aerial chips: the AID-trained encoders
    assert archive_models(DEMO_ARCHIVE) == ["ijepa", "mae"] == archive_models(None)  # no models.json
    (tmp_path / "models.json").write_text('{"models": "mae"}')
    with pytest.raises(ValueError, match="models.json.*non-empty list"):
        archive_models(tmp_path)
    (tmp_path / "models.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON object"):
        archive_models(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_concurrent_clients_downloading_every_file_see_no_errors(app, tmp_path):
    # 8 clients send the same tile at once, so they get byte-identical images (query preview, map placeholder):
    # the case where gradio rewrote a shared cache file while another request streamed it.
    from concurrent.futures import ThreadPoolExecutor

    url, _, setup = app
    tile = setup.archive / "2750" / "River" / "River_1.jpg"

    def client_session(i: int) -> list[str]:
        client = Client(url, verbose=False, download_files=str(tmp_path / f"client{i}"))
        errors = []
        for _ in range(4):
            try:
                out = client.predict(handle_file(str(tile)), None, 5, *NO_FILTERS, "centre chip", api_name="/query")
                files = [out[1], out[8]] + [item["image"] for item in out[4] + out[7]]  # preview, map, galleries
                errors += [f"empty download {f}" for f in files if os.path.getsize(f) == 0]
            except Exception as err:  # every failure counts, whatever its type
                errors.append(repr(err))
        return errors

    with ThreadPoolExecutor(8) as pool:
        errors = [e for found in pool.map(client_session, range(8)) for e in found]
    assert errors == []


def test_a_search_as_the_page_makes_it_and_its_files_cached(app):
    """The page's own protocol (upload, the event stream, the output's files six at a time): every file is
    served, with a Cache-Control max-age; the same search again asks the server for none of them."""
    import httpx

    from retrieval_app.http_cache import MAX_AGE
    from retrieval_app.page_client import PageClient, file_urls

    url, _, setup = app
    tile = setup.archive / "2750" / "River" / "River_3.jpg"
    inputs = [None, 4, *NO_FILTERS, "centre chip", "archive"]  # the page sends every input
    tab = PageClient(url, cache=True)
    try:
        first = tab.search(tile, inputs)
        assert first.n_files == 1 + 4 + 4 + 1  # the preview, both galleries, the picture map
        again = tab.search(tile, inputs)
        assert again.n_files == first.n_files and again.fetched == 0  # all reused from the cache
        data = tab.run("query", [tab.upload(tile), *inputs])
    finally:
        tab.close()
    urls = file_urls(data)
    assert first.fetched == len(set(urls)) < len(urls)  # each distinct file once (the galleries share tiles)
    served = httpx.get(urls[0])
    assert served.status_code == 200 and served.headers["cache-control"] == f"public, max-age={MAX_AGE}"
    assert "cache-control" not in httpx.get(url.rstrip("/") + "/config").headers  # only the file route
