"""``open_archive``: one entry point that recognises the layout of an image archive and returns its dataset."""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from .base import RASTER_SUFFIXES
from .fmow import FMOW_SPLITS, open_fmow, open_satmae_csv
from .folder import SPLITS_FILE, find_class_dir, open_class_folders, open_splits_csv
from .geotiff import GeoTiffChips, find_geotiffs

logger = logging.getLogger(__name__)

LAYOUTS = """accepted layouts:
  (a) a folder with splits.csv (columns path,label,split; paths relative to the folder), e.g. EuroSAT;
  (b) class folders: <root>/<Class>/*.{jpg,jpeg,png,tif,tiff}, or <root>/<one folder>/<Class>/*.jpg (EuroSAT 2750/);
  (c) fMoW-rgb: <root>/{train,val}/<category>/<category>_<loc>/<category>_<loc>_<view>_{rgb,msrgb}.jpg (+ .json),
      or a SatMAE CSV file (category,image_path,timestamp) passed as root;
  (d) a folder of GeoTIFFs (*.tif, *.tiff directly inside it), or one GeoTIFF file, tiled into chips."""


def open_archive(
    root: str | os.PathLike,
    split: str | None = None,
    *,
    image_size: int | None = None,
    bands: Sequence[int] | None = None,
    fmow_crop: str = "box",
    chip_size: int = 64,
    scale: float | None = None,
) -> Dataset:
    """Open the image archive at ``root``, whatever its layout (see :data:`LAYOUTS`).

    Args:
        root: archive folder, SatMAE CSV file or GeoTIFF file.
        split: (a) rows of splits.csv with this split; (c) the fMoW train/val folder; None = everything.
            Ignored by class folders, SatMAE CSVs (a CSV is one split) and GeoTIFFs.
        image_size: resize every image to image_size x image_size px (bilinear, antialias); None = native size.
        bands: 1-based band indices to keep (rasterio convention); None = all (RGB for JPEG/PNG).
        fmow_crop: "box" = one sample per fMoW bounding box with context, "whole" = one per image.
        chip_size: GeoTIFF chip side in pixels.
        scale: divisor of raw GeoTIFF values; None = uint8 / 255, other integers / 10000 (Sentinel-2
            reflectance), float unchanged. JPEG/PNG are always / 255.

    Returns:
        A Dataset with ``classes``, ``num_bands``, ``root``, ``describe(i)``; samples are dicts with ``image``
        float32 [C, H, W] in ~[0, 1] and the metadata keys of :data:`training.data.base.SAMPLE_KEYS`.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no layout matches, or ``split`` / ``bands`` do not fit the archive.
    """
    path = Path(root).expanduser()
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels or None, got {image_size}.")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass the path of an image archive.\n{LAYOUTS}")
    options = {"image_size": image_size, "bands": bands, "scale": scale}
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _opened("SatMAE CSV", open_satmae_csv(path, crop=fmow_crop, **options))
        if path.suffix.lower() in RASTER_SUFFIXES:
            return _opened("GeoTIFF", GeoTiffChips(path, chip_size=chip_size, **options))
    elif (path / SPLITS_FILE).is_file():
        return _opened("splits.csv", open_splits_csv(path, split, **options))
    elif _is_fmow(path):
        return _opened("fMoW-rgb", open_fmow(path, split, crop=fmow_crop, **options))
    elif find_geotiffs(path):
        return _opened("GeoTIFF folder", GeoTiffChips(path, chip_size=chip_size, **options))
    elif (class_dir := find_class_dir(path)) is not None:
        return _opened("class folders", open_class_folders(path, class_dir, **options))
    raise ValueError(f"{path} matches no known archive layout.\n{LAYOUTS}")


class ArchiveUnion(ConcatDataset):
    """Several archives read as one corpus (a pretraining run on EuroSAT + AID, say), each at the caller's
    ``image_size``. ``classes`` are namespaced by archive (``"aid/Airport"``) and labels offset to match, so two
    archives' classes never share an index; ``root`` is the list of roots, ``describe(i)`` that of the sample's
    archive (its ``id`` prefixed with the archive's folder name)."""

    def __init__(self, archives: Sequence[Dataset]) -> None:
        super().__init__(archives)
        bands = {a.num_bands for a in archives}
        if len(bands) > 1:
            raise ValueError("the archives have different band counts ("
                             + ", ".join(f"{a.root}: {a.num_bands}" for a in archives)
                             + "): pass data.bands so that every archive gives the same bands")
        self.num_bands = bands.pop()
        self.root = [a.root for a in archives]
        self.names = [Path(a.root).name for a in archives]
        self.offsets = [sum(len(a.classes) for a in archives[:i]) for i in range(len(archives))]
        self.classes = [f"{name}/{c}" for name, a in zip(self.names, archives) for c in a.classes]

    def _locate(self, index: int) -> tuple[int, int]:
        """(archive, index within it) of sample ``index``."""
        if index < 0:
            index += len(self)
        archive = bisect.bisect_right(self.cumulative_sizes, index)
        return archive, index - (self.cumulative_sizes[archive - 1] if archive else 0)

    def _namespaced(self, archive: int, sample: dict[str, Any]) -> dict[str, Any]:
        sample = dict(sample, id=f"{self.names[archive]}/{sample['id']}")
        if sample.get("label", -1) >= 0:
            sample["label"] += self.offsets[archive]
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        archive, inner = self._locate(index)
        return self._namespaced(archive, self.datasets[archive][inner])

    def describe(self, index: int) -> dict[str, Any]:
        archive, inner = self._locate(index)
        return self._namespaced(archive, self.datasets[archive].describe(inner))


def open_archives(roots: str | os.PathLike | Sequence[str | os.PathLike], split: str | None = None,
                  **options: Any) -> Dataset:
    """One archive (:func:`open_archive`), or several as one :class:`ArchiveUnion`, every one opened with
    ``split`` and ``options``."""
    if isinstance(roots, (str, os.PathLike)):
        return open_archive(roots, split, **options)
    if len(roots) == 1:
        return open_archive(roots[0], split, **options)
    if options.get("image_size") is None:
        raise ValueError(f"{', '.join(map(str, roots))}: several archives are one corpus only at one image size: "
                         "set data.image_size (e.g. --set data.image_size=128)")
    return ArchiveUnion([open_archive(root, split, **options) for root in roots])


def _is_fmow(root: Path) -> bool:
    """True if ``root/{train,val}`` holds at least one ``<category>/<location>/*_rgb.jpg`` / ``*_msrgb.jpg``."""
    for split in FMOW_SPLITS:
        if (root / split).is_dir() and next((root / split).glob("*/*/*rgb.jpg"), None) is not None:
            return True
    return False


def _opened(layout: str, dataset: Dataset) -> Dataset:
    logger.info("opened %s as %s: %d samples, %d classes, %d bands",
                dataset.root, layout, len(dataset), len(dataset.classes), dataset.num_bands)
    return dataset
