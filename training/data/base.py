"""Shared pieces of the image readers: the error type, the sample-dict layout and resizing.

Every reader in this package returns torchgeo-style sample dicts (``{"image": float [C, H, W], "label": ...}``)
with the keys listed in :data:`SAMPLE_KEYS`; ``describe(i)`` returns the same keys except ``"image"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

#: Keys of every sample dict (``describe`` returns all but ``"image"``).
SAMPLE_KEYS = (
    "image",
    "label",
    "id",
    "path",
    "split",
    "width",
    "height",
    "bands",
    "lat",
    "lon",
    "timestamp",
    "gsd",
    "footprint",  # GeoJSON Polygon string (EPSG:4326) of the sample's outline, or None
    "nodata_fraction",
)

#: File suffixes (lower case) read as images by the folder and CSV layouts (GIF and WebP: single frames only).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
#: File suffixes (lower case) read through rasterio rather than PIL.
RASTER_SUFFIXES = (".tif", ".tiff")


class UnreadableImageError(ValueError):
    """An image or its metadata file is corrupt, truncated, missing or otherwise unreadable.

    Attributes:
        path: the offending file.
        reason: what went wrong, in words.
    """

    advice = ("The file is corrupt, truncated or not an image: re-download it or delete it (wrap the dataset in "
              "SkipUnreadable to skip such files).")

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"Cannot read {self.path}: {reason}. {self.advice}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the two-argument constructor working when DataLoader workers pickle the error.
        return (type(self), (self.path, self.reason))


class UnsupportedImageError(UnreadableImageError):
    """A valid image of a kind the readers do not take (e.g. an animated GIF); ``reason`` says what to do."""

    advice = "The file is a valid image, but not one the readers take: convert it as the reason says."


class ImageTooLargeError(UnreadableImageError):
    """An image whose header declares more pixels than can be decoded safely (a decompression bomb, or just huge).

    Attributes:
        pixels: the declared width x height (None when the header does not say).
        limit: the largest pixel count decoded.
    """

    advice = "Crop or downsample it first (SkipUnreadable skips such files in a dataset)."

    def __init__(self, path: str | os.PathLike, pixels: int | None, limit: int) -> None:
        self.pixels, self.limit = pixels, limit
        size = _pixel_count(pixels) if pixels else "more pixels than the limit"
        super().__init__(path, f"too large to decode safely ({size}; the limit is {_pixel_count(limit)})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.pixels, self.limit))


def _pixel_count(pixels: int) -> str:
    return f"{pixels / 1e6:,.0f} Mpx" if pixels >= 1_000_000 else f"{pixels:,} px"


def sample_id(path: Path, root: Path, suffix: str = "") -> str:
    """Stable id of a sample: ``path`` relative to ``root`` (POSIX slashes) plus an optional suffix like ``#box0``.

    Falls back to the absolute path when ``path`` is not under ``root`` (e.g. absolute paths in a CSV).
    """
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    return rel + suffix


def resize_image(image: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize ``image`` [C, H, W] to [C, size, size] (bilinear, antialiased); ``None`` returns it unchanged.

    The aspect ratio is not kept: non-square inputs are stretched, as in the usual ``Resize((s, s))``.
    """
    if size is None or (image.shape[-2] == size and image.shape[-1] == size):
        return image
    out = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0]  # [C, size, size]


def check_bands(bands: list[int] | tuple[int, ...] | None, available: int, path: str | os.PathLike) -> list[int]:
    """Validate 1-based band indices against the ``available`` band count of ``path``; ``None`` = all bands."""
    if bands is None:
        return list(range(1, available + 1))
    picked = [int(b) for b in bands]
    if not picked or any(b < 1 or b > available for b in picked):
        raise ValueError(
            f"bands={list(bands)} does not fit {path}, which has {available} band(s): "
            f"pass 1-based band indices between 1 and {available} (rasterio convention)."
        )
    return picked
