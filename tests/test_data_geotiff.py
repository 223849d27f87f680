"""GeoTIFF chips, on the committed fixture of tests/data/geotiff/data.py (values are formulas of band/row/col)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from training.data import SAMPLE_KEYS, GeoTiffChips, UnreadableImageError, open_archive

SCENES = Path(__file__).resolve().parent / "data" / "geotiff" / "scenes"
S2 = SCENES / "s2_utm18n_uint16_6band.tif"  # 72 x 136 px, 6 bands, uint16, nodata 65535
FLOAT = SCENES / "utm18n_float32_5band.tif"  # 48 x 48 px, 5 bands, float32, nodata -9999 + one NaN
WGS84 = SCENES / "wgs84_uint8_4band.tif"  # 40 x 70 px, 4 bands, uint8, EPSG:4326


def utm_northing_on_central_meridian(lat_deg: float) -> float:
    """k0 * meridian arc length (WGS84), i.e. the UTM northing of a point on the central meridian."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    e4, e6, phi = e2 * e2, e2 * e2 * e2, math.radians(lat_deg)
    arc = a * ((1 - e2 / 4 - 3 * e4 / 64 - 5 * e6 / 256) * phi
               - (3 * e2 / 8 + 3 * e4 / 32 + 45 * e6 / 1024) * math.sin(2 * phi)
               + (15 * e4 / 256 + 45 * e6 / 1024) * math.sin(4 * phi)
               - (35 * e6 / 3072) * math.sin(6 * phi))
    return k0 * arc


def test_folder_layout_needs_bands_when_band_counts_differ() -> None:
    with pytest.raises(ValueError, match=r"different band counts.*bands=\[\.\.\.\]"):
        open_archive(SCENES)
    ds = open_archive(SCENES, bands=[1, 2, 3, 4], chip_size=32)
    assert isinstance(ds, GeoTiffChips) and ds.num_bands == 4 and ds.classes == [] and ds.root == SCENES
    # corrupt.tif (1 placeholder) + s2 2x4 + float 1x1 + wgs84 1x2 chips
    assert len(ds) == 1 + 8 + 1 + 2
    assert ds.unreadable == [str(SCENES / "corrupt.tif")]
    with pytest.raises(UnreadableImageError, match=r"corrupt\.tif.*re-download it or delete it"):
        ds[0]
    with pytest.raises(ValueError, match="between 1 and 4"):
        open_archive(SCENES, bands=[5])


def test_chip_count_ids_and_partial_chips_dropped() -> None:
    ds = open_archive(S2, chip_size=32)
    assert len(ds) == (72 // 32) * (136 // 32) == 8
    assert [ds.describe(i)["id"] for i in (0, 3, 4, 7)] == [
        "s2_utm18n_uint16_6band.tif#r0c0", "s2_utm18n_uint16_6band.tif#r0c3",
        "s2_utm18n_uint16_6band.tif#r1c0", "s2_utm18n_uint16_6band.tif#r1c3",
    ]
    assert len(open_archive(S2)) == 2  # default 64 px chips: 1 x 2, the partial edge chips are dropped
    path, window = ds.chip_window(6)
    assert path == str(S2) and (window.col_off, window.row_off, window.width, window.height) == (64, 32, 32, 32)


def test_uint16_scaling_and_band_selection() -> None:
    ds = open_archive(S2, chip_size=32)
    sample = ds[6]  # chip r1c2: rows 32-63, cols 64-95
    assert set(sample) == set(SAMPLE_KEYS)
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (6, 32, 32)
    # band 2 at chip pixel (row 5, col 7) = raster (row 37, col 71): 2000 + 710 + 37 = 2747 -> / 10000
    assert sample["image"][1, 5, 7].item() == pytest.approx(0.2747, abs=1e-6)
    picked = open_archive(S2, chip_size=32, bands=[3, 1])[6]["image"]
    assert picked.shape == (2, 32, 32) and torch.equal(picked, sample["image"][[2, 0]])
    assert sample["bands"] == 6 and open_archive(S2, bands=[3, 1]).num_bands == 2
    rescaled = open_archive(S2, chip_size=32, scale=1000.0)[6]["image"]
    assert rescaled[1, 5, 7].item() == pytest.approx(2.747, abs=1e-5)


def test_nodata_is_zeroed_and_reported() -> None:
    ds = open_archive(S2, chip_size=32)
    sample = ds[0]
    assert torch.all(sample["image"][0, 0:4, 0:8] == 0.0)  # 65535 in band 1 -> 0
    assert sample["image"][1, 0, 0].item() == pytest.approx(0.2, abs=1e-6)  # band 2 there is valid
    assert sample["nodata_fraction"] == ds.describe(0)["nodata_fraction"] == pytest.approx(32 / 1024)
    assert ds[1]["nodata_fraction"] == 0.0


def test_float32_as_is_with_nodata_and_nan() -> None:
    ds = open_archive(FLOAT, chip_size=16)
    assert len(ds) == 9 and ds.num_bands == 5
    first = ds[0]["image"]
    assert first[0, 3, 4].item() == pytest.approx(0.1 + 0.007, abs=1e-6)  # float: unchanged
    assert first[1, 5, 5].item() == 0.0 and ds[0]["nodata_fraction"] == pytest.approx(1 / 256)  # the NaN
    bottom = ds[6]  # chip r2c0: rows 32-47, rows 40-47 are -9999
    assert bottom["nodata_fraction"] == pytest.approx(0.5)
    assert torch.all(bottom["image"][:, 8:, :] == 0.0) and not torch.isnan(bottom["image"]).any()


def test_uint8_scaling_lat_lon_in_wgs84() -> None:
    ds = open_archive(WGS84, chip_size=32)
    sample = ds[1]  # chip r0c1: cols 32-63
    assert sample["image"][0, 0, 0].item() == pytest.approx((40 + 32) / 255, abs=1e-6)
    # centre pixel (col 48, row 16) of 0.001 degree pixels from (-74.5, 40.8)
    assert sample["lon"] == pytest.approx(-74.5 + 48 * 0.001, abs=1e-9)
    assert sample["lat"] == pytest.approx(40.8 - 16 * 0.001, abs=1e-9)
    assert sample["gsd"] is None and sample["label"] == -1 and sample["split"] is None
    assert sample["timestamp"] is None


def test_lat_lon_of_a_utm_chip_centre() -> None:
    meta = open_archive(S2, chip_size=32).describe(0)
    # the centre of chip r0c0 is (E 500000, N 4500000) in UTM 18N: on the central meridian -75
    assert meta["lon"] == pytest.approx(-75.0, abs=1e-9)
    assert utm_northing_on_central_meridian(meta["lat"]) == pytest.approx(4_500_000.0, abs=0.01)
    assert 40.6 < meta["lat"] < 40.7 and meta["gsd"] == 20.0
    assert (meta["width"], meta["height"], meta["bands"]) == (32, 32, 6) and "image" not in meta


def test_image_size_resizes_chips() -> None:
    sample = open_archive(S2, chip_size=32, image_size=16)[2]
    assert sample["image"].shape == (6, 16, 16) and (sample["width"], sample["height"]) == (32, 32)


def test_single_corrupt_file_raises_on_access() -> None:
    ds = open_archive(SCENES / "corrupt.tif")
    assert len(ds) == 1
    with pytest.raises(UnreadableImageError, match=r"corrupt\.tif"):
        ds.describe(0)
