"""Read (windows of) GeoTIFFs through rasterio into scaled float tensors, with nodata handling and geolocation.

Scaling of raw values (``scale=None`` picks the per-dtype default; an explicit ``scale`` divides every dtype):

* ``uint8``: / 255 (8-bit imagery: NAIP, Landsat browse products, ...).
* any other integer type: / 10000, the Sentinel-2 L1C/L2A reflectance convention (DN = reflectance * 10000),
  so reflectances land roughly in [0, 1] (bright clouds and snow can exceed 1).
* floating point: unchanged.

Nodata pixels (the band's nodata value, NaN, or GDAL's per-dataset / alpha mask) are set to 0 after scaling;
``nodata_fraction`` is the fraction of pixels where at least one selected band is nodata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.warp
import torch
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from .base import UnreadableImageError
from .source import Source, openable, source_path

#: Default divisor for integer types other than uint8 (Sentinel-2 reflectance * 10000).
REFLECTANCE_SCALE = 10000.0


def default_scale(dtype: str) -> float:
    """Divisor that maps raw values of ``dtype`` to roughly [0, 1] (see the module docstring)."""
    kind = np.dtype(dtype)
    if kind == np.uint8:
        return 255.0
    if np.issubdtype(kind, np.integer):
        return REFLECTANCE_SCALE
    return 1.0


class RasterCache:
    """A few open rasterio datasets per process, reopened after a fork (DataLoader workers) and on unpickling."""

    def __init__(self, max_open: int = 8) -> None:
        self.max_open = max_open
        self._open: dict[str, Any] = {}
        self._pid = os.getpid()

    def get(self, path: Path) -> Any:
        """The open ``rasterio`` dataset for ``path``; raises UnreadableImageError if it cannot be opened."""
        if self._pid != os.getpid():  # handles inherited through fork must not be shared
            self._open, self._pid = {}, os.getpid()
        key = str(path)
        src = self._open.pop(key, None)
        if src is None:
            src = open_raster(path)
            while len(self._open) >= self.max_open:
                self._open.pop(next(iter(self._open))).close()
        self._open[key] = src  # most recently used last
        return src

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_open"])


def open_raster(source: Source) -> Any:
    """``rasterio.open`` of a path or of a file's bytes (:class:`~training.data.source.FileBytes`), with failures
    reported as :class:`UnreadableImageError`."""
    try:
        return rasterio.open(openable(source))
    except (RasterioError, OSError) as err:
        raise UnreadableImageError(source_path(source), f"rasterio cannot open it ({err})") from err


def read_window(
    src: Any, bands: list[int], window: Window | None = None, scale: float | None = None
) -> tuple[torch.Tensor, float]:
    """Read ``bands`` (1-based) of ``window`` (``None`` = whole raster), scaled and with nodata set to 0.

    Returns:
        ``(image, nodata_fraction)``: image float32 [C, H, W]; nodata_fraction in [0, 1].
    """
    try:
        raw = src.read(indexes=bands, window=window)  # [C, H, W], file dtype
        invalid = _nodata_mask(src, bands, window, raw)  # [C, H, W] bool or None
    except (RasterioError, OSError) as err:
        raise UnreadableImageError(src.name, f"reading its pixels failed ({err})") from err
    divisor = scale if scale is not None else default_scale(src.dtypes[bands[0] - 1])
    image = torch.from_numpy(raw.astype(np.float32, copy=False))
    if divisor != 1.0:
        image = image / divisor
    if invalid is None:
        return image, 0.0
    image[torch.from_numpy(invalid)] = 0.0
    return image, float(invalid.any(axis=0).mean())


def nodata_fraction(src: Any, bands: list[int], window: Window | None = None) -> float:
    """Fraction of pixels of ``window`` where at least one of ``bands`` is nodata (reads the window)."""
    try:
        raw = src.read(indexes=bands, window=window)
        invalid = _nodata_mask(src, bands, window, raw)
    except (RasterioError, OSError) as err:
        raise UnreadableImageError(src.name, f"reading its pixels failed ({err})") from err
    return 0.0 if invalid is None else float(invalid.any(axis=0).mean())


def _nodata_mask(src: Any, bands: list[int], window: Window | None, raw: np.ndarray) -> np.ndarray | None:
    """Per-band invalid mask [C, H, W] (True = nodata), or None when every pixel is valid."""
    invalid = np.isnan(raw) if np.issubdtype(raw.dtype, np.floating) else None
    flags = [src.mask_flag_enums[b - 1] for b in bands]
    if all(MaskFlags.nodata in f for f in flags):
        nodata = [src.nodatavals[b - 1] for b in bands]
        hit = np.stack([raw[k] == v for k, v in enumerate(nodata)])  # NaN nodata matches nothing: isnan covers it
        invalid = hit if invalid is None else invalid | hit
    elif not all(f == [MaskFlags.all_valid] for f in flags):  # per-dataset mask or alpha band
        hit = src.read_masks(indexes=bands, window=window) == 0
        invalid = hit if invalid is None else invalid | hit
    if invalid is None or not invalid.any():
        return None
    return invalid


def centre_latlon(src: Any, col: float, row: float) -> tuple[float | None, float | None]:
    """(lat, lon) in EPSG:4326 of pixel position (col, row) — e.g. a chip centre; (None, None) without a CRS."""
    if src.crs is None:
        return None, None
    t = src.transform  # affine pixel -> CRS coordinates
    x, y = t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f
    lons, lats = rasterio.warp.transform(src.crs, "EPSG:4326", [x], [y])
    return float(lats[0]), float(lons[0])


def footprint_geojson(src: Any, window: Window) -> str | None:
    """The outline of ``window`` as a GeoJSON Polygon string in EPSG:4326 (its four corners, closed); None
    without a CRS."""
    if src.crs is None:
        return None
    corners = [(window.col_off, window.row_off), (window.col_off + window.width, window.row_off),
               (window.col_off + window.width, window.row_off + window.height),
               (window.col_off, window.row_off + window.height)]
    xs, ys = zip(*(src.transform @ corner for corner in corners))
    lons, lats = rasterio.warp.transform(src.crs, "EPSG:4326", list(xs), list(ys))
    ring = [[round(lon, 7), round(lat, 7)] for lon, lat in zip(lons, lats)]
    return json.dumps({"type": "Polygon", "coordinates": [ring + ring[:1]]})


def raster_location(src: Any) -> dict[str, Any]:
    """Where a whole raster lies, from its own georeferencing: ``lat`` / ``lon`` of its centre, its ``footprint``
    (GeoJSON Polygon) in EPSG:4326 and ``gsd`` in metres; all None without a CRS."""
    lat, lon = centre_latlon(src, src.width / 2, src.height / 2)
    return {"lat": lat, "lon": lon, "gsd": ground_sample_distance(src),
            "footprint": footprint_geojson(src, Window(0, 0, src.width, src.height))}


def ground_sample_distance(src: Any) -> float | None:
    """Pixel size in metres (x resolution), or None for geographic / unknown CRSs."""
    crs = src.crs
    if crs is None or not crs.is_projected:
        return None
    _, metres_per_unit = crs.linear_units_factor
    return float(abs(src.res[0]) * metres_per_unit)
