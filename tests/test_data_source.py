"""One reader for paths and for bytes already in memory (the app's uploads): the same pixels either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.raster import open_raster, read_window
from training.data.rgb import image_size_of, read_rgb
from training.data.base import ImageTooLargeError, UnreadableImageError
from training.data.source import FileBytes

GEOTIFF = Path(__file__).resolve().parent / "data" / "geotiff" / "scenes" / "s2_utm18n_uint16_6band.tif"


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    jpeg, png16 = tmp_path / "a.jpg", tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)).save(jpeg, quality=90)
    Image.fromarray(rng.integers(0, 65536, (40, 50), dtype=np.uint16)).save(png16)
    return jpeg, png16


def test_bytes_and_paths_decode_to_the_same_pixels(images):
    for path in images:
        from_path, w, h = read_rgb(path, None, 32)
        from_bytes, wb, hb = read_rgb(FileBytes.read(path), None, 32)
        assert torch.equal(from_path, from_bytes) and (w, h) == (wb, hb) == image_size_of(FileBytes.read(path))
    with open_raster(GEOTIFF) as a, open_raster(FileBytes.read(GEOTIFF)) as b:
        pixels_a, nodata_a = read_window(a, [1, 2, 3])
        pixels_b, nodata_b = read_window(b, [1, 2, 3])
        assert (a.crs, a.transform) == (b.crs, b.transform)
    assert torch.equal(pixels_a, pixels_b) and nodata_a == nodata_b


def test_errors_name_the_file_not_the_memory_copy(images, tmp_path):
    jpeg, _ = images
    with pytest.raises(ImageTooLargeError, match=r"a\.jpg: too large to decode safely \(7,680 px; the limit is 1,000"):
        read_rgb(FileBytes.read(jpeg), max_pixels=1000)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(UnreadableImageError, match="broken.tif"):
        open_raster(FileBytes.read(broken))
    assert FileBytes.read(jpeg).sha256 == __import__("hashlib").sha256(jpeg.read_bytes()).hexdigest()
