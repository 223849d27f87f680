"""An offline map of the results, drawn with PIL: no web map tiles, no network.

Layers, bottom to top: sea; land from Natural Earth's 1:110m countries (public domain; ``basemap/`` holds the
rings, made by ``study/make_basemap.py``); the archive's own chips in view, faded (its imagery is the detailed
basemap where 1:110m shows nothing); each hit's footprint outlined in its model's colour with its rank (a circle
where only the centre is known); the query's location as a black cross. Equirectangular projection (longitude
scaled by the cosine of the middle latitude); the extent is the hits (and query) plus a margin.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .service import QueryResult, Ring, footprint_ring

#: Outline colours per model position (first model, second model, ...).
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))
SEA, LAND, BORDER = (214, 230, 242), (240, 236, 226), (170, 160, 150)
BASEMAP = Path(__file__).resolve().parent / "basemap" / "countries-110m.json"
MIN_SPAN_DEG = 0.005  # ~500 m: one chip never fills the whole map
MIN_OUTLINE_PX = 8  # footprints narrower than this are drawn as circles


@dataclass(frozen=True)
class Extent:
    """The map's window: centre, latitude span in degrees, and the size in pixels."""

    lat: float
    lon: float
    span: float
    width: int
    height: int

    @property
    def _cos(self) -> float:
        return math.cos(math.radians(self.lat))

    @property
    def scale(self) -> float:
        """Pixels per degree of latitude."""
        return min(self.width - 40, self.height - 40) / self.span

    def xy(self, lon: float, lat: float) -> tuple[float, float]:
        return (self.width / 2 + (lon - self.lon) * self._cos * self.scale,
                self.height / 2 - (lat - self.lat) * self.scale)

    def bounds(self) -> tuple[float, float, float, float]:
        """(min_lon, min_lat, max_lon, max_lat) of the whole image."""
        half_lat = self.height / 2 / self.scale
        half_lon = self.width / 2 / (self.scale * self._cos)
        return self.lon - half_lon, self.lat - half_lat, self.lon + half_lon, self.lat + half_lat


def extent_of(result: QueryResult, width: int = 640, height: int = 420) -> Extent | None:
    """The window around every located hit (and the query), or None when no hit has a location."""
    lons, lats = [], []
    for r in result.models.values():
        for hit in r.hits:
            ring = footprint_ring(hit)
            if ring:
                lons += [p[0] for p in ring]
                lats += [p[1] for p in ring]
            elif hit.get("lat") is not None and hit.get("lon") is not None:
                lons.append(hit["lon"])
                lats.append(hit["lat"])
    if not lats:
        return None
    if result.query.location:
        lats.append(result.query.location[0])
        lons.append(result.query.location[1])
    lat, lon = (max(lats) + min(lats)) / 2, (max(lons) + min(lons)) / 2
    cos = math.cos(math.radians(lat))
    span = max(max(lats) - min(lats), (max(lons) - min(lons)) * cos * (height - 40) / (width - 40), MIN_SPAN_DEG)
    return Extent(lat, lon, span * 1.15, width, height)


@cache
def land_rings() -> tuple[tuple[tuple[float, float], ...], ...]:
    """Natural Earth 1:110m country rings (loaded once)."""
    return tuple(tuple(map(tuple, ring)) for ring in json.loads(BASEMAP.read_text())["rings"])


def results_map(result: QueryResult, context: Callable[[Extent], Sequence[tuple[Ring, np.ndarray]]] | None = None,
                width: int = 640, height: int = 420) -> np.ndarray | None:
    """uint8 [height, width, 3]: the map of ``result``'s located hits, or None when none has a location.

    ``context(extent)`` returns the archive chips to draw as imagery: ``(footprint ring, uint8 [H, W, 3])``."""
    extent = extent_of(result, width, height)
    if extent is None:
        return None
    im = Image.new("RGB", (width, height), SEA)
    draw = ImageDraw.Draw(im)
    _draw_land(draw, extent)
    for ring, pixels in context(extent) if context else ():
        _paste(im, extent, ring, pixels)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=12)
    for m, r in enumerate(result.models.values()):
        colour, width_px = COLOURS[m % len(COLOURS)], max(1, 4 - 2 * m)  # the second model's outline inside
        for hit in r.hits:
            ring = footprint_ring(hit)
            points = [extent.xy(*p) for p in ring] if ring else []
            if points and max(p[0] for p in points) - min(p[0] for p in points) >= MIN_OUTLINE_PX:
                draw.line(points + points[:1], fill=colour, width=width_px)
                x, y = min(p[0] for p in points), min(p[1] for p in points)
            elif hit.get("lat") is not None:  # no footprint, or too small to see at this scale: a circle
                x, y = extent.xy(hit["lon"], hit["lat"])
                draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=colour, width=3)
            else:
                continue
            if m == 0:
                draw.text((x + 2, y + 1), str(hit["rank"]), fill=colour, font=font, stroke_width=2,
                          stroke_fill=(255, 255, 255))
        draw.rectangle([10, 10 + 18 * m, 22, 22 + 18 * m], fill=colour)
        located = sum(1 for h in r.hits if h.get("lat") is not None)
        draw.text((28, 10 + 18 * m), f"{r.display}: {located} located" + (", numbered by rank" if m == 0 else ""),
                  fill=(30, 30, 30), font=font, stroke_width=2, stroke_fill=(255, 255, 255))
    if result.query.location:
        x, y = extent.xy(result.query.location[1], result.query.location[0])
        draw.line([(x - 8, y - 8), (x + 8, y + 8)], fill=(0, 0, 0), width=3)
        draw.line([(x - 8, y + 8), (x + 8, y - 8)], fill=(0, 0, 0), width=3)
    _draw_scale(draw, extent, font)
    return np.asarray(im)


def _draw_land(draw: ImageDraw.ImageDraw, extent: Extent) -> None:
    min_lon, min_lat, max_lon, max_lat = extent.bounds()
    for ring in land_rings():
        lons, lats = [p[0] for p in ring], [p[1] for p in ring]
        if max(lons) < min_lon or min(lons) > max_lon or max(lats) < min_lat or min(lats) > max_lat:
            continue
        draw.polygon([extent.xy(lon, lat) for lon, lat in ring], fill=LAND, outline=BORDER)


def _paste(im: Image.Image, extent: Extent, ring: Ring, pixels: np.ndarray) -> None:
    """Draw a chip's pixels into its footprint's bounding box, faded towards white."""
    points = [extent.xy(*p) for p in ring]
    left, top = int(min(p[0] for p in points)), int(min(p[1] for p in points))
    right, bottom = int(math.ceil(max(p[0] for p in points))), int(math.ceil(max(p[1] for p in points)))
    if right - left < 2 or bottom - top < 2 or right < 0 or bottom < 0 or left > im.width or top > im.height:
        return
    chip = Image.fromarray(pixels).convert("RGB").resize((right - left, bottom - top), Image.BILINEAR)
    faded = Image.blend(chip, Image.new("RGB", chip.size, (255, 255, 255)), 0.3)
    im.paste(faded, (left, top))


def _draw_scale(draw: ImageDraw.ImageDraw, extent: Extent, font: Any) -> None:
    """A scale bar (a round number of metres or kilometres) in the bottom-left corner."""
    metres_per_px = 111_320 / extent.scale
    target = metres_per_px * extent.width / 5
    nice = max(10 ** math.floor(math.log10(target)) * f for f in (1, 2, 5)
               if 10 ** math.floor(math.log10(target)) * f <= target)
    length = nice / metres_per_px
    y = extent.height - 14
    draw.line([(10, y), (10 + length, y)], fill=(30, 30, 30), width=3)
    text = f"{nice / 1000:g} km" if nice >= 1000 else f"{nice:g} m"
    draw.text((14 + length, y - 7), text + " · basemap: Natural Earth 1:110m; imagery: the archive's chips",
              fill=(30, 30, 30), font=font, stroke_width=2, stroke_fill=(255, 255, 255))
