"""The app's service library (no gradio): query, classify, explain, filters, uploads, exports, map.

Runs on a tiny archive with two tiny random-init models (retrieval_app.testing), indexed by the indexing
package, so it needs no real data; the same code serves the demo archive and the shipped models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from indexing.build import build
from retrieval_app.export import result_rows, to_geojson, write_csv
from retrieval_app.filters import FilterError, parse_filters
from retrieval_app.heatmap import explain_pair, token_similarity
from retrieval_app.plots import results_map
from retrieval_app.service import QueryError, RetrievalService
from retrieval_app.testing import tiny_setup, write_geotiff_archive
from retrieval_app.upload import CHIP_SIZE, UploadError, decode_query

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
GEOTIFFS = Path(__file__).resolve().parent / "data" / "geotiff" / "scenes"


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def service(setup):
    svc = RetrievalService.open(setup.models, setup.index_dir)
    yield svc
    svc.close()


@pytest.fixture(scope="session")
def card(service):
    return next(iter(service.models.values())).encoder.card


def test_a_query_finds_itself_first_in_both_models(service, setup):
    query = setup.archive / "2750" / "River" / "River_5.jpg"
    result = service.query(query, k=5)
    assert list(result.models) == ["ijepa", "mae"]
    for r in result.models.values():
        assert [h["rank"] for h in r.hits] == [1, 2, 3, 4, 5]
        assert r.hits[0]["path"] == str(query) and r.hits[0]["is_query"]
        assert r.hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert not any(h["is_query"] for h in r.hits[1:])
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert set(r.probabilities) <= {"Forest", "River", "SeaLake"}
        assert sum(r.knn.values()) == pytest.approx(1.0)
        assert r.hits[0]["also_in"] == [k for k in result.models if k != r.key]  # both found it
    assert "neighbours are shared" in result.summary()
    assert result.timings_ms["total"] > 0


def test_classify_and_example_queries(service):
    sample_id = service.examples()[0][1]
    by_example = service.query(example=sample_id, k=3)
    assert all(r.hits[0]["sample_id"] == sample_id and r.hits[0]["is_query"] for r in by_example.models.values())
    classes = service.classify(example=sample_id)
    assert set(classes) == {"ijepa", "mae"} and all(c["prediction"] for c in classes.values())
    with pytest.raises(QueryError, match="not in the catalogue"):
        service.query(example="no/such/tile.jpg")
    with pytest.raises(UploadError, match="one of the two"):
        service.query()
    with pytest.raises(QueryError, match="between 1 and"):
        service.query(example=sample_id, k=0)


def test_an_array_query_matches_the_file_query(service, setup):
    path = setup.archive / "2750" / "Forest" / "Forest_1.jpg"
    pixels = np.asarray(Image.open(path), dtype=np.float32).transpose(2, 0, 1) / 255  # [3, H, W]
    by_array, by_file = service.query(pixels, k=3), service.query(path, k=3)
    assert [h["sample_id"] for h in by_array.models["mae"].hits] == [h["sample_id"] for h in by_file.models["mae"].hits]


def test_filters_are_parameterised_and_exact(service, setup):
    query = setup.archive / "2750" / "River" / "River_5.jpg"
    result = service.query(query, k=4, filters=parse_filters(["Forest", "SeaLake"], "train"))
    for r in result.models.values():
        assert len(r.hits) == 4 and all(h["label"] in ("Forest", "SeaLake") and h["split"] == "train" for h in r.hits)
    injected = service.query(query, k=4, filters=parse_filters(["x') OR TRUE OR (label = '"]))
    assert all(r.hits == [] and "no catalogue image" in r.note for r in injected.models.values())
    no_location = service.query(query, k=4, filters=parse_filters(bbox="-75, 40, -73, 41"))
    assert all(r.hits == [] for r in no_location.models.values())  # EuroSAT-like JPEGs have no lat/lon
    with pytest.raises(FilterError, match="YYYY-MM-DD"):
        parse_filters(date_from="last tuesday")
    with pytest.raises(FilterError, match="four numbers"):
        parse_filters(bbox="1, 2, 3")
    with pytest.raises(FilterError, match="out of range"):
        parse_filters(bbox=[0, 95, 1, 96])
    assert parse_filters(bbox=[None] * 4).empty and parse_filters("", [], "", "", "").empty


def test_token_similarity_finds_moved_patches():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(16, 8)).astype(np.float32)  # [N, D] on a 4 x 4 grid
    permutation = rng.permutation(16)
    q_map, r_map, best = token_similarity(tokens, tokens[permutation], (4, 4))
    np.testing.assert_allclose(q_map, 1.0, atol=1e-5)
    np.testing.assert_allclose(r_map, 1.0, atol=1e-5)
    np.testing.assert_array_equal(permutation[best], np.arange(16))  # each patch found where it moved
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    out = explain_pair(image, tokens, image, -tokens, (4, 4), size=64)
    assert out["query"].shape == (64, 64, 3) and out["high"] < 1.0


def test_explain_gives_heat_maps_on_one_scale(service, setup):
    query = setup.archive / "2750" / "SeaLake" / "SeaLake_2.jpg"
    hit = service.query(query, k=2).models["mae"].hits[1]
    out = service.explain("mae", hit["sample_id"], query, size=128)
    assert out["query"].shape == out["result"].shape == (128, 128, 3) and out["query"].dtype == np.uint8
    assert -1 <= out["low"] <= out["mean_best"] <= out["high"] <= 1 + 1e-5
    assert out["score"] == pytest.approx(hit["score"], abs=1e-4)
    itself = service.explain("ijepa", "2750/SeaLake/SeaLake_2.jpg", query)
    assert itself["mean_best"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(QueryError, match="unknown model"):
        service.explain("dino", hit["sample_id"], query)


def test_only_archive_files_are_served(service, setup):
    assert service.allowed_paths() == [str(setup.archive.resolve())]
    rows = service.query(setup.archive / "2750" / "Forest" / "Forest_2.jpg", k=2).models["ijepa"].hits
    assert service.thumbnail("ijepa", rows[0]) == rows[0]["path"]
    with pytest.raises(QueryError, match="outside the archive"):
        service.thumbnail("ijepa", {**rows[0], "path": "/etc/passwd"})


def png_header(width: int, height: int) -> bytes:
    """An 8-bit RGB PNG that declares width x height but holds almost no pixel data (header, one tiny IDAT)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _bad_uploads(tmp_path, setup):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    good = (setup.archive / "2750" / "Forest" / "Forest_1.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 8000)).save(bomb)  # 64 Mpx in a few kB
    two_bands = tmp_path / "two_bands.tif"

    with rasterio.open(two_bands, "w", driver="GTiff", width=32, height=32, count=2, dtype="uint8") as dst:
        dst.write(np.zeros((2, 32, 32), dtype=np.uint8))
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(40_000, 40_000))  # claims 1.6 gigapixels in 60 bytes
    animated = tmp_path / "animated.gif"
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    nodata = tmp_path / "nodata.tif"
    with rasterio.open(nodata, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8", nodata=0) as dst:
        dst.write(np.zeros((3, 32, 32), dtype=np.uint8))
    return {"empty": (empty, "empty"), "text": (text, "not an image this app reads"),
            "truncated": (truncated, "could not be decoded"), "bomb": (bomb, "too large to decode safely.*64 Mpx"),
            "huge header": (huge, r"too large to decode safely \(1,600 Mpx"),
            "animated": (animated, "animated GIF with 2 frames"), "all nodata": (nodata, "no valid pixels"),
            "corrupt tiff": (GEOTIFFS / "corrupt.tif", "could not be decoded"),
            "two bands": (two_bands, "has 2 band"), "missing": (tmp_path / "nothing.jpg", "No file")}


def test_bad_uploads_get_clear_messages(service, setup, card, tmp_path, monkeypatch):
    for name, (path, message) in _bad_uploads(tmp_path, setup).items():
        with pytest.raises(UploadError, match=message):
            decode_query(path, card)
    big = tmp_path / "big.png"
    big.write_bytes((setup.archive / "2750" / "River" / "River_1.jpg").read_bytes())
    monkeypatch.setattr("retrieval_app.upload.MAX_UPLOAD_BYTES", 100)
    with pytest.raises(UploadError, match="limited to"):
        service.query(big)


def test_odd_but_valid_files_get_honest_answers(card, tmp_path):
    # 16-bit greyscale PNG: scaled by 1/65535, not clipped to white.
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.full((32, 32), 13107, dtype=np.uint16)).save(grey16)  # 0.2 of full scale
    decoded = decode_query(grey16, card)
    assert torch.allclose(decoded.image, torch.full_like(decoded.image, 0.2), atol=1e-3)
    # EXIF orientation 6 (rotate 90° clockwise to display): the query is searched upright.
    photo = tmp_path / "phone.jpg"
    stored = Image.new("RGB", (64, 32), (0, 0, 0))
    stored.paste((255, 255, 255), (0, 0, 32, 32))  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(photo, exif=exif, quality=95)
    upright = decode_query(photo, {**card, "input_size": 32}).image  # displayed 32 x 64: white on top
    assert upright[:, :12].mean() > 0.9 and upright[:, -12:].mean() < 0.1
    # Single-frame GIF, WebP and BMP are valid images.
    for suffix in ("gif", "webp", "bmp"):
        path = tmp_path / f"tile.{suffix}"
        Image.new("RGB", (32, 32), (200, 100, 50)).save(path)
        assert decode_query(path, card).kind == suffix.upper()
    # A GeoTIFF that is partly nodata is searched, with a note saying how much.
    partial = tmp_path / "partial.tif"
    with rasterio.open(partial, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8", nodata=0) as dst:
        pixels = np.full((3, 32, 32), 120, dtype=np.uint8)
        pixels[:, :8] = 0  # a quarter nodata
        dst.write(pixels)
    assert "25% of the tile is nodata" in decode_query(partial, card).note


def test_geotiffs_any_band_count_centre_chip_or_resize(card):
    six = GEOTIFFS / "s2_utm18n_uint16_6band.tif"  # 136 x 72 px, 6 bands: the RGB model takes bands 1-3
    chip = decode_query(six, card)
    assert chip.image.shape == (3, card["input_size"], card["input_size"]) and "centre chip" in chip.note
    assert chip.location is not None and -76 < chip.location[1] < -74
    whole = decode_query(six, card, large="resize whole")
    assert "resized as a whole" in whole.note and not np.allclose(whole.image, chip.image)
    small = decode_query(GEOTIFFS / "wgs84_uint8_4band.tif", card)  # 70 x 40: smaller than a chip one way
    assert "resized as a whole" in small.note and small.display.dtype == np.uint8
    fits = decode_query(GEOTIFFS / "utm18n_float32_5band.tif", card)  # 48 x 48: fits one chip, 5 bands
    assert fits.note.startswith("The GeoTIFF has 5 bands; the model takes 3: used bands 1–3. ")
    assert "17% of the tile is nodata" in fits.note  # rows 40-47 of 48


def test_exports_csv_and_geojson(service, setup, tmp_path):
    result = service.query(setup.archive / "2750" / "River" / "River_2.jpg", k=3)
    rows = result_rows(result)
    assert len(rows) == 6 and {r["model"] for r in rows} == {"ijepa", "mae"}
    text = write_csv(result, tmp_path / "r.csv").read_text().splitlines()
    assert text[0].startswith("model,rank,score,sample_id") and len(text) == 7
    collection = json.loads(json.dumps(to_geojson(result), default=str))
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 6
    assert all(f["geometry"] is None for f in collection["features"])  # no locations in this archive
    assert results_map(result) is None


@pytest.fixture(scope="module")
def geo_service(setup, tmp_path_factory):
    """One model over an archive of two GeoTIFF scenes (4 chips each, with lat/lon)."""
    base = tmp_path_factory.mktemp("geo")
    archive = write_geotiff_archive(base / "scenes")
    build(setup.models[0], archive, base / "index")
    svc = RetrievalService.open(setup.models[:1], base / "index")
    yield svc, archive
    svc.close()


def test_geotiff_archive_locations_map_bbox_and_chip_explain(geo_service, tmp_path):
    svc, archive = geo_service
    result = svc.query(archive / "scene_0.tif", k=8)
    assert f"{CHIP_SIZE} px chip" in result.query.note and result.query.location is not None
    hits = result.models["ijepa"].hits
    assert len(hits) == 8 and all(h["lat"] is not None and h["lon"] is not None for h in hits)
    image = results_map(result, lambda extent: svc.map_chips(extent.bounds()))
    assert image is not None and image.shape == (420, 640, 3)
    features = to_geojson(result)["features"]
    assert all(f["geometry"]["type"] == "Polygon" and f["properties"]["centre"] for f in features)
    west = min(h["lon"] for h in hits)
    box = parse_filters(bbox=[west - 0.01, 0, west + 0.02, 89])  # only scene_0 (scene_1 is 5 km east)
    inside = svc.query(archive / "scene_0.tif", k=8, filters=box).models["ijepa"].hits
    assert len(inside) == 4 and all(h["path"].endswith("scene_0.tif") for h in inside)
    chip = next(h for h in hits if "#r1c1" in h["sample_id"])
    out = svc.explain("ijepa", chip["sample_id"], archive / "scene_1.tif")
    assert out["result"].shape == (256, 256, 3)
    assert isinstance(svc.thumbnail("ijepa", chip), np.ndarray)  # a chip is rendered, not served as a file


def test_rowid_lookup_returns_what_search_vectors_returns(service, setup):
    from indexing.encoders import normalised
    from indexing.search import search_vectors
    from retrieval_app.filters import Filters

    model = service.models["mae"]
    opened = service._opened(model)
    image = decode_query(setup.archive / "2750" / "Forest" / "Forest_6.jpg", model.encoder.card).image
    query = normalised(model.encoder.embed(image[None]))  # [1, D]
    fast = service._search(opened, query, 7, Filters(), model.rows)
    joined = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
              for r in search_vectors(opened, query, 7)[0]]
    assert [r["sample_id"] for r in fast] == [r["sample_id"] for r in joined] and len(fast) == 7
    assert fast == joined


def test_an_upload_is_read_from_disk_once(service, setup, tmp_path, monkeypatch):
    # Sniffing, the pixel limit, decoding (once per distinct model input) and the hash all use one read.
    import builtins
    import io

    geotiff = tmp_path / "scene.tif"
    geotiff.write_bytes((GEOTIFFS / "s2_utm18n_uint16_6band.tif").read_bytes())
    jpeg = setup.archive / "2750" / "River" / "River_3.jpg"
    opened: list[str] = []
    real_open, real_rasterio_open = io.open, rasterio.open

    def counting_open(file, *args, **kwargs):
        if str(file) in (str(jpeg), str(geotiff)):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def counting_rasterio_open(fp, *args, **kwargs):
        if not isinstance(fp, io.BytesIO):
            opened.append(str(fp))
        return real_rasterio_open(fp, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(rasterio, "open", counting_rasterio_open)
    for upload in (jpeg, geotiff):
        opened.clear()
        result = service.query(upload, k=3)
        assert opened == [str(upload)], f"{upload.name} was opened {len(opened)} times: {opened}"
        assert result.models["ijepa"].hits and result.query.sha256 is not None
    assert service.query(jpeg, k=1).models["mae"].hits[0]["is_query"]  # the hash of those bytes is the catalogue's


def test_models_side_by_side_answer_as_one_after_the_other(service, setup):
    sequential = RetrievalService(list(service.models.values()), side_by_side=False)
    query = setup.archive / "2750" / "SeaLake" / "SeaLake_4.jpg"
    a, b = service.query(query, k=6), sequential.query(query, k=6)
    assert service._pool is not None and sequential._pool is None
    for key in ("ijepa", "mae"):
        assert a.models[key].hits == b.models[key].hits
        assert a.models[key].probabilities == pytest.approx(b.models[key].probabilities)
