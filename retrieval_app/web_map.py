"""The data of the page's interactive map (static/map.js, Leaflet): one GeoJSON FeatureCollection per search.

Features: the archive's tiles as context (their footprints and chips, where the archive is small enough to draw
them all), and per model the results or finds with their rank, score, label and image. Images are URLs of files
the app already serves (archive JPEG / PNG files, or the content-named PNGs of :mod:`retrieval_app.images`), so
the map needs nothing from the internet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .images import ImageFiles
from .service import QueryResult, RetrievalService, footprint_ring

STATIC_DIR = Path(__file__).resolve().parent / "static"
BASEMAP = Path(__file__).resolve().parent / "basemap" / "countries-110m.json"
FILE_ROUTE = "/gradio_api/file="
MAX_FEATURES_PER_MODEL = 500
WORLD = (-180.0, -90.0, 180.0, 90.0)


def file_url(path: str | Path) -> str:
    """The URL under which gradio serves an allowed file."""
    return FILE_ROUTE + str(path)


def head_html() -> str:
    """What the page's <head> loads: Leaflet (bundled, with its licence in static/leaflet) and the map code."""
    css, js, ours = (file_url(STATIC_DIR / p) for p in ("leaflet/leaflet.css", "leaflet/leaflet.js", "map.js"))
    return f'<link rel="stylesheet" href="{css}"><script src="{js}"></script><script src="{ours}"></script>'


MAP_HTML = ('<div id="leaflet-map" style="height: 440px; border-radius: 6px;" '
            'title="Click to search from the tile there; Draw a box to set the bounding-box filter"></div>')


def _geometry(row: dict[str, Any]) -> dict[str, Any] | None:
    ring = footprint_ring(row)
    if ring:
        return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}
    if row.get("lat") is not None and row.get("lon") is not None:
        return {"type": "Point", "coordinates": [row["lon"], row["lat"]]}
    return None


def archive_tiles(service: RetrievalService, images: ImageFiles) -> list[dict[str, Any]]:
    """The archive's chips as ``tile`` features (footprint + image URL), or none when there are too many to draw.
    The same for every query of one archive: compute once and pass to :func:`map_data` (each chip's PNG is
    encoded to be named by its content, ~1 ms a chip)."""
    return [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
             "properties": {"kind": "tile", "image": file_url(images.path(pixels)), "sample_id": ""}}
            for ring, pixels in service.map_chips(WORLD)]


def map_data(service: RetrievalService, result: QueryResult, images: ImageFiles, tiles: list[dict[str, Any]],
             kind: str = "result") -> dict[str, Any] | None:
    """The FeatureCollection of ``result`` (kind ``"result"`` or ``"find"``) over the archive's ``tiles``
    (:func:`archive_tiles`), or None when nothing is located."""
    features = []
    for key, r in result.models.items():
        for hit in r.hits[:MAX_FEATURES_PER_MODEL]:
            geometry = _geometry(hit)
            if geometry is None:
                continue
            thumbnail = service.thumbnail(key, hit)
            image = thumbnail if isinstance(thumbnail, str) else images.path(thumbnail)
            features.append({"type": "Feature", "geometry": geometry, "properties": {
                "kind": "query" if hit.get("is_query") else kind, "model": r.display, "rank": hit.get("rank"),
                "score": round(float(hit["score"]), 4), "label": hit.get("label"), "sample_id": hit["sample_id"],
                "image": file_url(image)}})
    if not features:
        return None
    return {"type": "FeatureCollection", "features": tiles + features, "basemap": file_url(BASEMAP)}
