"""The located demo archive (assets/located: NAIP and Landsat chips) end to end with real coordinates: catalogue
centres and footprints against rasterio's own reprojection, the bounding-box filter, the GeoJSON export and the
map (Natural Earth land + the archive's imagery)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp

from indexing.build import build
from indexing.paths import LOCATED_ARCHIVE, SHIPPED_ARCHIVES
from retrieval_app.export import to_geojson
from retrieval_app.filters import parse_filters
from retrieval_app.plots import LAND, SEA, results_map
from retrieval_app.service import RetrievalService
from retrieval_app.testing import tiny_setup

NORTH_DAKOTA = (-99.3, 46.9, -99.0, 47.1)  # the NAIP 2020 scene (min lon, min lat, max lon, max lat)
BAHAMAS = (-79.5, 23.0, -76.0, 26.0)  # the Landsat 7 scene (Andros and the Great Bahama Bank)


@pytest.fixture(scope="module")
def located(tmp_path_factory):
    setup = tiny_setup(tmp_path_factory.getbasetemp())
    index_dir = tmp_path_factory.mktemp("located-index")
    build(setup.models[0], LOCATED_ARCHIVE, index_dir)
    service = RetrievalService.open(setup.models[:1], index_dir)
    yield service
    service.close()


def inside(lon: float, lat: float, box: tuple[float, float, float, float]) -> bool:
    return box[0] <= lon <= box[2] and box[1] <= lat <= box[3]


def test_the_shipped_archive_is_small_attributed_and_georeferenced():
    assert LOCATED_ARCHIVE in [archive for archive, _ in SHIPPED_ARCHIVES.values()]
    files = sorted(LOCATED_ARCHIVE.glob("*.tif"))
    assert len(files) > 100 and sum(f.stat().st_size for f in files) < 3e6
    attribution = (LOCATED_ARCHIVE / "ATTRIBUTION.md").read_text()
    assert "public domain" in attribution and "NAIP" in attribution and "Landsat" in attribution
    with rasterio.open(files[0]) as src:
        assert src.crs is not None and src.count == 3 and src.width == src.height == 64


def test_catalogue_centres_and_footprints_are_the_chips_real_places(located):
    con = located.models["ijepa"].opened.con
    rows = con.execute("SELECT path, lat, lon, footprint FROM images").fetchall()
    assert len(rows) == len(list(LOCATED_ARCHIVE.glob("*.tif")))
    for path, lat, lon, footprint in rows:
        region = NORTH_DAKOTA if "naip" in path else BAHAMAS
        assert inside(lon, lat, region), (path, lat, lon)
        ring = json.loads(footprint)["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5
        with rasterio.open(path) as src:  # rasterio's own reprojection of the file's bounds
            west, south, east, north = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        lons, lats = [p[0] for p in ring], [p[1] for p in ring]
        assert min(lons) == pytest.approx(west, abs=1e-4) and max(lons) == pytest.approx(east, abs=1e-4)
        assert min(lats) == pytest.approx(south, abs=1e-4) and max(lats) == pytest.approx(north, abs=1e-4)
        assert min(lons) < lon < max(lons) and min(lats) < lat < max(lats)


def test_bbox_filter_geojson_and_map_with_real_coordinates(located, tmp_path):
    chip = next(LOCATED_ARCHIVE.glob("naip-2020_*.tif"))
    for region in (NORTH_DAKOTA, BAHAMAS):
        hits = located.query(chip, k=40, filters=parse_filters(bbox=list(region))).models["ijepa"].hits
        assert hits and all(inside(h["lon"], h["lat"], region) for h in hits)
        assert all(("naip" in h["path"]) == (region == NORTH_DAKOTA) for h in hits)

    result = located.query(chip, k=10, filters=parse_filters(bbox=list(NORTH_DAKOTA)))
    features = to_geojson(result)["features"]
    assert len(features) == 10
    for feature in features:
        assert feature["geometry"]["type"] == "Polygon"
        lon, lat = feature["properties"]["centre"]
        assert inside(lon, lat, NORTH_DAKOTA)
        assert all(inside(x, y, NORTH_DAKOTA) for x, y in feature["geometry"]["coordinates"][0])

    zoomed = results_map(result, lambda extent: located.map_chips(extent.bounds()))  # ~5 km: the imagery
    colours = {tuple(c) for c in zoomed.reshape(-1, 3)[::7]}
    assert len(colours) > 2000  # aerial imagery drawn, not a flat background
    landsat = next(LOCATED_ARCHIVE.glob("landsat7_*.tif"))
    result = located.query(landsat, k=100)  # 100 of 194: hits in both scenes, whatever the model
    assert {("naip" in h["path"]) for h in result.models["ijepa"].hits} == {True, False}
    wide = results_map(result, lambda extent: located.map_chips(extent.bounds()))
    pixels = wide.reshape(-1, 3)  # North Dakota to the Bahamas: Natural Earth land and sea
    assert (pixels == LAND).all(axis=1).mean() > 0.2 and (pixels == SEA).all(axis=1).mean() > 0.1


def test_the_interactive_maps_data_is_the_results_over_the_archives_chips(located, tmp_path):
    from retrieval_app.images import ImageFiles
    from retrieval_app.web_map import FILE_ROUTE, archive_tiles, map_data

    chip = next(LOCATED_ARCHIVE.glob("naip-2020_*.tif"))
    result = located.query(chip, k=10, filters=parse_filters(bbox=list(NORTH_DAKOTA)))
    images = ImageFiles(tmp_path)
    data = map_data(located, result, images, archive_tiles(located, images))
    kinds = [f["properties"]["kind"] for f in data["features"]]
    assert kinds.count("tile") == 194  # every chip of the archive, as imagery
    results = [f for f in data["features"] if f["properties"]["kind"] != "tile"]
    assert len(results) == 10 * len(result.models)
    for feature in results:
        props = feature["properties"]
        assert feature["geometry"]["type"] == "Polygon" and props["image"].startswith(FILE_ROUTE)
        assert Path(props["image"][len(FILE_ROUTE):]).is_file() and props["rank"] >= 1
        assert all(inside(x, y, NORTH_DAKOTA) for x, y in feature["geometry"]["coordinates"][0])
    scores = [f["properties"]["score"] for f in results if f["properties"]["model"] == results[0]["properties"]["model"]]
    assert scores == sorted(scores, reverse=True)
    assert Path(data["basemap"][len(FILE_ROUTE):]).is_file()
