#!/usr/bin/env python3
"""Write the tiny GeoTIFF fixture used by tests/test_data_geotiff.py (seeded, deterministic; rasterio + a real CRS).

Files in ``scenes/`` (pixel values are a formula of band/row/col so tests can check them by hand):

* s2_utm18n_uint16_6band.tif: 6 bands uint16, EPSG:32618, 20 m, 72 x 136 px (rows x cols), nodata 65535 in band 1
  rows 0-3, cols 0-7. Value = 1000 * band + 10 * col + row. Pixel (col 16, row 16) — the centre of the first
  32 px chip — sits exactly at UTM 18N (E 500000, N 4500000), on the zone's central meridian (lon -75).
* utm18n_float32_5band.tif: 5 bands float32, EPSG:32618, 10 m, 48 x 48 px, nodata -9999 in rows 40-47 of every
  band and one NaN pixel in band 2. Value = 0.1 * band + 0.001 * (col + row).
* wgs84_uint8_4band.tif: 4 bands uint8, EPSG:4326, 0.001 degree pixels from (lon -74.5, lat 40.8), 40 x 70 px,
  no nodata. Value = (40 * band + col + row) % 256.
* corrupt.tif: a TIFF signature followed by random bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent
ROOT = HERE / "scenes"
SEED = 0


def grid(bands: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band (1-based), row and column index arrays, each [bands, height, width]."""
    return np.meshgrid(np.arange(1, bands + 1), np.arange(height), np.arange(width), indexing="ij")


def write(path: Path, data: np.ndarray, crs: str, transform, nodata=None) -> None:
    profile = {
        "driver": "GTiff", "height": data.shape[1], "width": data.shape[2], "count": data.shape[0],
        "dtype": data.dtype.name, "crs": crs, "transform": transform, "nodata": nodata,
        "compress": "deflate", "predictor": 3 if data.dtype.kind == "f" else 2,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def main() -> None:
    rng = np.random.default_rng(SEED)
    if ROOT.exists():
        shutil.rmtree(ROOT)
    ROOT.mkdir(parents=True)

    band, row, col = grid(6, 72, 136)
    data = (1000 * band + 10 * col + row).astype(np.uint16)
    data[0, 0:4, 0:8] = 65535
    write(ROOT / "s2_utm18n_uint16_6band.tif", data, "EPSG:32618",
          from_origin(500000 - 16 * 20, 4500000 + 16 * 20, 20, 20), nodata=65535)

    band, row, col = grid(5, 48, 48)
    data = (0.1 * band + 0.001 * (col + row)).astype(np.float32)
    data[:, 40:48, :] = -9999
    data[1, 5, 5] = np.nan
    write(ROOT / "utm18n_float32_5band.tif", data, "EPSG:32618", from_origin(600000, 4400000, 10, 10),
          nodata=-9999)

    band, row, col = grid(4, 40, 70)
    data = ((40 * band + col + row) % 256).astype(np.uint8)
    write(ROOT / "wgs84_uint8_4band.tif", data, "EPSG:4326", from_origin(-74.5, 40.8, 0.001, 0.001))

    (ROOT / "corrupt.tif").write_bytes(b"II*\x00" + rng.integers(0, 256, 400, dtype=np.uint8).tobytes())


if __name__ == "__main__":
    main()
