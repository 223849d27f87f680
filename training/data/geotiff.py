"""GeoTIFF scenes tiled into square chips (torchgeo's GridGeoSampler without overlap, in pixel space).

Each file is cut into non-overlapping ``chip_size`` x ``chip_size`` chips in row-major order from the top-left
pixel. A partial chip at the right or bottom edge is DROPPED (no padded pixels ever reach the model), so a
W x H raster gives ``(H // chip_size) * (W // chip_size)`` chips and a raster smaller than one chip gives none
(a warning says so). Chip ids are ``<file relative to root>#r<row>c<col>`` with row/col counted in chips.
Values are scaled and nodata is zeroed as described in :mod:`training.data.raster`; lat/lon is the chip centre
and footprint its outline (a GeoJSON Polygon), both reprojected to EPSG:4326; gsd is the pixel size in metres
for projected CRSs (None for geographic ones).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window
from torch.utils.data import Dataset

from .base import RASTER_SUFFIXES, UnreadableImageError, check_bands, resize_image, sample_id
from .raster import (RasterCache, centre_latlon, footprint_geojson, ground_sample_distance, nodata_fraction,
                     open_raster, read_window)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Scene:
    """One GeoTIFF: its chip grid, or the error that made it unreadable (then it counts as one sample)."""

    path: Path
    rows: int
    cols: int
    error: UnreadableImageError | None = None

    @property
    def num_samples(self) -> int:
        return 1 if self.error is not None else self.rows * self.cols


def find_geotiffs(root: Path) -> list[Path]:
    """GeoTIFFs directly inside ``root`` (not in subfolders), sorted by name."""
    return sorted(p for p in Path(root).iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)


class GeoTiffChips(Dataset):
    """Chips of a folder of GeoTIFFs (or of one GeoTIFF).

    Args:
        root: folder holding ``*.tif`` / ``*.tiff`` (not recursive), or a single GeoTIFF file.
        bands: 1-based band indices (rasterio convention); None = all bands, which requires every file to have
            the same band count.
        chip_size: chip side in pixels.
        scale: divisor of raw values; None = per-dtype default (uint8 / 255, other ints / 10000, float as is).
        image_size: resize chips to image_size x image_size (bilinear, antialias); None = chip_size.

    A file that rasterio cannot open is one sample whose access raises :class:`UnreadableImageError`
    (its path is listed in ``unreadable``).
    """

    def __init__(
        self,
        root: Path,
        *,
        bands: Sequence[int] | None = None,
        chip_size: int = 64,
        scale: float | None = None,
        image_size: int | None = None,
    ) -> None:
        if chip_size < 1:
            raise ValueError(f"chip_size must be a positive number of pixels, got {chip_size}.")
        root = Path(root).resolve()
        files = [root] if root.is_file() else find_geotiffs(root)
        self.root = root.parent if root.is_file() else root
        self.chip_size = chip_size
        self.scale = scale
        self.image_size = image_size
        self.classes: list[str] = []
        self._rasters = RasterCache()
        if not files:
            raise ValueError(f"No *.tif / *.tiff file directly in {self.root}.")
        self._scenes, self.bands = self._index(files, bands)
        self.num_bands = len(self.bands)
        self.unreadable = [s.error.path for s in self._scenes if s.error is not None]
        self._ends = np.cumsum([s.num_samples for s in self._scenes])  # sample index -> scene by bisection
        if self.unreadable:
            logger.warning("%d unreadable GeoTIFF(s) in %s: %s", len(self.unreadable), self.root, self.unreadable)

    def _index(self, files: list[Path], bands: Sequence[int] | None) -> tuple[list[_Scene], list[int]]:
        """Read every header: the chip grid of each file, and the 1-based bands to read (checked on all files)."""
        scenes: list[_Scene] = []
        counts: dict[Path, int] = {}
        for path in files:
            try:
                with open_raster(path) as src:
                    counts[path], width, height = src.count, src.width, src.height
            except UnreadableImageError as err:
                scenes.append(_Scene(path, 0, 0, err))
                continue
            rows, cols = height // self.chip_size, width // self.chip_size
            if rows * cols == 0:
                logger.warning("%s (%dx%d px) is smaller than one %d px chip: it gives no sample.",
                               path, width, height, self.chip_size)
            scenes.append(_Scene(path, rows, cols))
        if bands is None and len(set(counts.values())) > 1:
            listing = ", ".join(f"{p.name}: {n}" for p, n in counts.items())
            raise ValueError(
                f"The GeoTIFFs in {self.root} have different band counts ({listing}): pass bands=[...] "
                "(1-based indices present in every file) to pick the same bands from each."
            )
        picked = [int(b) for b in bands] if bands is not None else []
        for path, count in counts.items():
            picked = check_bands(bands, count, path)
        return scenes, picked

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Chip ``index``: ``image`` float32 [C, S, S] (S = image_size or chip_size) plus :meth:`describe` keys."""
        scene, row, col = self._locate(index)
        src = self._rasters.get(scene.path)
        sample = self._meta(scene, row, col, src)
        image, sample["nodata_fraction"] = read_window(src, self.bands, self._window(row, col), self.scale)
        sample["image"] = resize_image(image, self.image_size)  # [C, S, S]
        return sample

    def describe(self, index: int) -> dict[str, Any]:
        """Metadata of chip ``index`` (no ``image``); reads the chip's pixels only for ``nodata_fraction``."""
        scene, row, col = self._locate(index)
        src = self._rasters.get(scene.path)
        meta = self._meta(scene, row, col, src)
        meta["nodata_fraction"] = nodata_fraction(src, self.bands, self._window(row, col))
        return meta

    def chip_window(self, index: int) -> tuple[str, Window]:
        """(absolute path, rasterio Window in pixels) of chip ``index``."""
        scene, row, col = self._locate(index)
        return str(scene.path), self._window(row, col)

    def _locate(self, index: int) -> tuple[_Scene, int, int]:
        """Scene and chip (row, col) of sample ``index``; raises for unreadable scenes."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"chip index {index} out of range for {len(self)} chips")
        index %= len(self)
        k = int(np.searchsorted(self._ends, index, side="right"))
        scene = self._scenes[k]
        if scene.error is not None:
            raise UnreadableImageError(scene.error.path, scene.error.reason)
        offset = index - (int(self._ends[k - 1]) if k else 0)
        return scene, offset // scene.cols, offset % scene.cols

    def _window(self, row: int, col: int) -> Window:
        return Window(col * self.chip_size, row * self.chip_size, self.chip_size, self.chip_size)

    def _meta(self, scene: _Scene, row: int, col: int, src: Any) -> dict[str, Any]:
        half = self.chip_size / 2.0
        lat, lon = centre_latlon(src, col * self.chip_size + half, row * self.chip_size + half)
        return {
            "label": -1,
            "id": sample_id(scene.path, self.root, f"#r{row}c{col}"),
            "path": str(scene.path),
            "split": None,
            "width": self.chip_size,
            "height": self.chip_size,
            "bands": self.num_bands,
            "lat": lat,
            "lon": lon,
            "timestamp": None,
            "gsd": ground_sample_distance(src),
            "footprint": footprint_geojson(src, self._window(row, col)),
            "nodata_fraction": None,
        }

    def __repr__(self) -> str:
        return f"GeoTiffChips(root={str(self.root)!r}, files={len(self._scenes)}, chips={len(self)})"
