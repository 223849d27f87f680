"""A dataset over a list of image files (one sample per file or per crop box), shared by the folder, splits.csv,
fMoW and SatMAE-CSV layouts.

JPEG/PNG/GIF/WebP/BMP files are read as RGB with PIL (:func:`training.data.rgb.read_rgb`), GeoTIFFs whole
through rasterio with the scaling rules of :mod:`training.data.raster`. An archive of GeoTIFFs only (e.g.
EuroSAT-MS class folders) has the GeoTIFFs' band count; one that mixes them with other images has three bands
(RGB), and a GeoTIFF in it whose bands do not fit is skipped as unreadable, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .base import RASTER_SUFFIXES, UnreadableImageError, check_bands, resize_image
from .raster import RasterCache, nodata_fraction, open_raster, raster_location, read_window
from .rgb import Box, image_size_of, read_rgb

logger = logging.getLogger(__name__)

#: Per-sample location / time metadata, as stored in the sample dict.
GEO_KEYS = ("lat", "lon", "timestamp", "gsd", "footprint")


@dataclass(frozen=True)
class Item:
    """One sample of an :class:`ImageDataset`.

    Attributes:
        path: absolute path of the image file.
        label: index into ``classes``; -1 if unknown.
        split: split name, or None.
        id: stable unique id (path relative to the root, plus e.g. ``#box0``).
        box: crop (left, top, right, bottom) in pixels, or None for the whole image.
        geo: preset values for :data:`GEO_KEYS` (missing keys are None).
        meta_file: a metadata file read lazily by the dataset's ``meta_reader`` for :data:`GEO_KEYS`.
        error: set when the file (or its metadata) was found broken while indexing: accessing the sample
            raises it.
    """

    path: Path
    label: int
    split: str | None
    id: str
    box: Box | None = None
    geo: dict[str, Any] | None = None
    meta_file: Path | None = None
    error: UnreadableImageError | None = None


class ImageDataset(Dataset):
    """Samples read from a list of image files.

    Args:
        root: archive root (ids are relative to it).
        items: the samples, in order.
        classes: sorted class names (empty if unlabeled).
        image_size: resize outputs to image_size x image_size (bilinear, antialias); None = native size.
        bands: 1-based band indices to keep (of the RGB channels for JPEG/PNG); None = all.
        scale: divisor for GeoTIFF raw values (None = per-dtype default, see :mod:`training.data.raster`).
        meta_reader: ``f(meta_file) -> dict`` giving :data:`GEO_KEYS` for items with ``meta_file``.

    Samples are dicts with :data:`training.data.base.SAMPLE_KEYS`; ``image`` is float32 [C, H, W] in ~[0, 1];
    ``width``/``height`` are the size in pixels of the region read from the file (before ``image_size``).
    """

    def __init__(
        self,
        root: Path,
        items: Sequence[Item],
        classes: list[str],
        *,
        image_size: int | None = None,
        bands: Sequence[int] | None = None,
        scale: float | None = None,
        meta_reader: Callable[[Path], dict[str, Any]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.items = list(items)
        self.classes = list(classes)
        self.image_size = image_size
        self.scale = scale
        self.meta_reader = meta_reader
        self.unreadable = sorted({it.error.path for it in self.items if it.error is not None})
        suffixes = {it.path.suffix.lower() for it in self.items}
        self.is_raster = bool(suffixes) and suffixes <= set(RASTER_SUFFIXES)  # GeoTIFFs only
        if not self.is_raster and suffixes & set(RASTER_SUFFIXES):
            logger.info("%s mixes GeoTIFFs with other images: read as %s bands (GeoTIFFs with other bands are "
                        "skipped)", self.root, "RGB" if bands is None else list(bands))
        available = self._raster_band_count() if self.is_raster else 3
        self.bands = check_bands(bands, available, self.root)
        self.num_bands = len(self.bands)
        self._all_bands = bands is None
        self._rasters = RasterCache()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``: ``image`` float32 [C, H, W] plus the metadata of :meth:`describe`."""
        item = self.items[index]
        sample = self._base_meta(item)
        if _is_raster(item):
            src = self._open_raster(item.path)
            image, sample["nodata_fraction"] = read_window(src, self.bands, None, self.scale)
            sample["width"], sample["height"] = src.width, src.height
            _locate(sample, src)
        else:
            image, sample["width"], sample["height"] = read_rgb(item.path, item.box, self.image_size)
            if self.bands != [1, 2, 3]:
                image = image[[b - 1 for b in self.bands]]
        sample["image"] = resize_image(image, self.image_size)  # [C, H, W]
        return sample

    def describe(self, index: int) -> dict[str, Any]:
        """Metadata of sample ``index`` (all sample keys but ``image``); reads file headers, not pixels
        (except GeoTIFFs, whose pixels are read to compute ``nodata_fraction``)."""
        item = self.items[index]
        meta = self._base_meta(item)
        if _is_raster(item):
            src = self._open_raster(item.path)
            meta["width"], meta["height"] = src.width, src.height
            meta["nodata_fraction"] = nodata_fraction(src, self.bands)
            _locate(meta, src)
        elif item.box is not None:
            meta["width"], meta["height"] = item.box[2] - item.box[0], item.box[3] - item.box[1]
        else:
            meta["width"], meta["height"] = image_size_of(item.path)
        return meta

    def _base_meta(self, item: Item) -> dict[str, Any]:
        """Sample dict without image/width/height; raises for items known to be broken."""
        if item.error is not None:
            raise UnreadableImageError(item.error.path, item.error.reason)
        geo = dict.fromkeys(GEO_KEYS)
        if item.geo:
            geo.update(item.geo)
        if item.meta_file is not None and self.meta_reader is not None:
            geo.update({k: v for k, v in self.meta_reader(item.meta_file).items() if v is not None})
        return {
            "label": item.label,
            "id": item.id,
            "path": str(item.path),
            "split": item.split,
            "width": None,
            "height": None,
            "bands": self.num_bands,
            **geo,
            "nodata_fraction": 0.0,
        }

    def _open_raster(self, path: Path) -> Any:
        """The open GeoTIFF, checked to have the bands this dataset reads."""
        src = self._rasters.get(path)
        if self._all_bands and src.count != self.num_bands:
            raise UnreadableImageError(
                path, f"it has {src.count} bands but the other images of {self.root} have {self.num_bands}; pass "
                "bands=[...] (1-based indices present in every file) to read the same bands from each")
        try:
            check_bands(self.bands, src.count, path)
        except ValueError as err:
            raise UnreadableImageError(path, str(err)) from err
        return src

    def _raster_band_count(self) -> int:
        """Band count of the first readable GeoTIFF (all files must agree unless ``bands`` is given)."""
        for item in self.items:
            if item.error is None and _is_raster(item):
                try:
                    with open_raster(item.path) as src:
                        return src.count
                except UnreadableImageError as err:
                    logger.warning("%s", err)
        raise ValueError(f"No readable GeoTIFF in {self.root}: re-download the archive.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)}, classes={len(self.classes)})"


def _is_raster(item: Item) -> bool:
    return item.path.suffix.lower() in RASTER_SUFFIXES


def _locate(sample: dict[str, Any], src: Any) -> None:
    """Fill the location keys a GeoTIFF's own georeferencing gives (centre, footprint, gsd) where the archive's
    metadata left them empty."""
    for key, value in raster_location(src).items():
        if sample.get(key) is None:
            sample[key] = value
