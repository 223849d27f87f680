"""Image readers for training and indexing: EuroSAT-style folders / splits.csv, fMoW-rgb, GeoTIFF chips.

Start with :func:`open_archive`, which recognises the layout; every dataset returns torchgeo-style dicts
``{"image": float32 [C, H, W], "label": int, "id": str, ...}`` and has ``classes``, ``num_bands``, ``root`` and
``describe(i)``.
"""

from .archive import LAYOUTS, ArchiveUnion, open_archive, open_archives
from .base import SAMPLE_KEYS, UnreadableImageError
from .fmow import box_with_context, context_multiplier
from .geotiff import GeoTiffChips
from .images import ImageDataset
from .robust import SkipUnreadable, band_statistics, collate_skipping

__all__ = [
    "LAYOUTS",
    "ArchiveUnion",
    "SAMPLE_KEYS",
    "GeoTiffChips",
    "ImageDataset",
    "SkipUnreadable",
    "UnreadableImageError",
    "band_statistics",
    "box_with_context",
    "collate_skipping",
    "context_multiplier",
    "open_archive",
    "open_archives",
]
