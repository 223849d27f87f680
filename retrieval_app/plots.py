"""An offline map of the results: a lat/lon scatter drawn with PIL (no tile server, no network).

Points are coloured per model; the query's own location (a GeoTIFF upload) is a black cross. The extent is
the points' bounding box plus a margin, with an equirectangular aspect (longitude scaled by cos(latitude)).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .service import QueryResult

#: Marker colours per model position (first model, second model, ...).
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def locations(result: QueryResult) -> dict[str, list[tuple[float, float]]]:
    """``{model key: [(lat, lon), ...]}`` of the hits with a known location."""
    return {key: [(h["lat"], h["lon"]) for h in r.hits if h.get("lat") is not None and h.get("lon") is not None]
            for key, r in result.models.items()}


def scatter_map(result: QueryResult, width: int = 640, height: int = 400) -> np.ndarray | None:
    """uint8 [height, width, 3] lat/lon scatter of the hits (and the query's location), or None when no hit
    has a location (e.g. EuroSAT JPEGs)."""
    points = locations(result)
    every = [p for pts in points.values() for p in pts] + ([result.query.location] if result.query.location else [])
    if not any(points.values()):
        return None
    lats, lons = [p[0] for p in every], [p[1] for p in every]
    mid = math.cos(math.radians(sum(lats) / len(lats)))
    span = max(max(lats) - min(lats), (max(lons) - min(lons)) * mid, 1e-4) * 1.2
    c_lat, c_lon = (max(lats) + min(lats)) / 2, (max(lons) + min(lons)) / 2
    scale = min(width - 80, height - 60) / span  # pixels per degree of latitude

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return width / 2 + (lon - c_lon) * mid * scale, height / 2 - (lat - c_lat) * scale

    im = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(im)
    for frac in (0.0, 0.5, 1.0):  # a few graticule labels
        lat = c_lat + (frac - 0.5) * span
        lon = c_lon + (frac - 0.5) * span / mid
        y, x = xy(lat, c_lon)[1], xy(c_lat, lon)[0]
        draw.line([(0, y), (width, y)], fill=(225, 225, 225))
        draw.line([(x, 0), (x, height)], fill=(225, 225, 225))
        draw.text((4, y + 2), f"{lat:.4f}°", fill=(120, 120, 120))
        draw.text((x + 2, height - 14), f"{lon:.4f}°", fill=(120, 120, 120))
    for m, (key, pts) in enumerate(points.items()):
        colour, offset = COLOURS[m % len(COLOURS)], 3 * m  # offset: identical points of two models stay visible
        for lat, lon in pts:
            x, y = xy(lat, lon)
            draw.ellipse([x - 6 + offset, y - 6, x + 6 + offset, y + 6], outline=colour, width=3)
        draw.rectangle([10, 10 + 18 * m, 22, 22 + 18 * m], fill=colour)
        draw.text((28, 10 + 18 * m), f"{result.models[key].display} ({len(pts)})", fill=(40, 40, 40))
    if result.query.location:
        x, y = xy(*result.query.location)
        draw.line([(x - 8, y - 8), (x + 8, y + 8)], fill=(0, 0, 0), width=3)
        draw.line([(x - 8, y + 8), (x + 8, y - 8)], fill=(0, 0, 0), width=3)
    return np.asarray(im)
