"""Read one query image exactly as the archive readers read a file of that kind (``training.data``): JPEG/PNG
through ``read_rgb`` (same reduced-scale JPEG decode), GeoTIFF through ``read_window``, then the same resize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.data.base import RASTER_SUFFIXES, check_bands, resize_image
from training.data.raster import open_raster, read_window
from training.data.rgb import read_rgb
from training.data.source import FileBytes, Source, source_path


def read_query_image(source: str | Source, card: dict[str, Any], max_pixels: int | None = None
                     ) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(image, (width, height))``: float32 [C, S, S] in scaled units, S = the card's ``input_size``, bands = the
    card's ``band_indices``, and the file's own size in pixels.

    Args:
        source: a path, or the file's bytes already read (:class:`training.data.source.FileBytes`; the app's
            uploads), decoded by the same reader either way.
        max_pixels: refuse a JPEG/PNG declaring more pixels (checked from the header, before decoding).

    Raises:
        FileNotFoundError: no such file. training.data.UnreadableImageError: it cannot be decoded
            (ImageTooLargeError: more than ``max_pixels``).
    """
    path = source_path(source)
    if not isinstance(source, FileBytes):
        source = path
        if not path.is_file():
            raise FileNotFoundError(f"query image {path} does not exist: pass the path of a JPEG, PNG or GeoTIFF.")
    size, bands = int(card["input_size"]), card.get("band_indices")
    if path.suffix.lower() in RASTER_SUFFIXES:
        with open_raster(source) as src:
            image, _ = read_window(src, check_bands(bands, src.count, path), None, None)
            width, height = src.width, src.height
    else:
        image, width, height = read_rgb(source, None, size, max_pixels)
        picked = check_bands(bands, 3, path)
        if picked != [1, 2, 3]:
            image = image[[b - 1 for b in picked]]
    return resize_image(image, size), (width, height)  # [C, S, S]
