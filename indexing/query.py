"""Read one query image exactly as the archive readers read a file of that kind (``training.data``): JPEG/PNG
through ``read_rgb`` (same reduced-scale JPEG decode), GeoTIFF through ``read_window``, then the same resize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.data.base import RASTER_SUFFIXES, check_bands, resize_image
from training.data.raster import open_raster, read_window
from training.data.rgb import read_rgb


def read_query_image(path: str | Path, card: dict[str, Any]) -> torch.Tensor:
    """float32 [C, S, S] in scaled units, S = the card's ``input_size``, bands = the card's ``band_indices``.

    Raises:
        FileNotFoundError: no such file. training.data.UnreadableImageError: it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"query image {path} does not exist: pass the path of a JPEG, PNG or GeoTIFF.")
    size, bands = int(card["input_size"]), card.get("band_indices")
    if path.suffix.lower() in RASTER_SUFFIXES:
        with open_raster(path) as src:
            image, _ = read_window(src, check_bands(bands, src.count, path), None, None)
    else:
        image, _, _ = read_rgb(path, None, size)
        picked = check_bands(bands, 3, path)
        if picked != [1, 2, 3]:
            image = image[[b - 1 for b in picked]]
    return resize_image(image, size)  # [C, S, S]
