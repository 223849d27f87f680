"""splits.csv and class-folder archives (tiny EuroSAT-like archive written by the ``image_archive`` fixture)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import Affine

from training.data import SAMPLE_KEYS, ImageDataset, UnreadableImageError, open_archive
from training.data.base import resize_image

CLASSES = ["Forest", "River", "SeaLake"]


def test_splits_csv_selects_rows_and_keeps_class_indices(image_archive: Path) -> None:
    sizes = {split: len(open_archive(image_archive, split)) for split in ("train", "val", "test", None)}
    assert sizes == {"train": 4, "val": 2, "test": 3, None: 9}
    train, test = open_archive(image_archive, "train"), open_archive(image_archive, "test")
    # classes come from the whole CSV: SeaLake (test only) keeps index 2 in the train split too
    assert train.classes == test.classes == CLASSES
    assert isinstance(train, ImageDataset) and train.root == image_archive.resolve() and train.num_bands == 3
    assert [train.describe(i)["label"] for i in range(len(train))] == [0, 0, 1, 1]
    assert {test.describe(i)["label"] for i in (0, 2)} == {2}
    sample = train[0]
    assert sample["id"] == "2750/Forest/Forest_1.jpg" and sample["split"] == "train"
    assert sample["path"] == str(image_archive.resolve() / "2750/Forest/Forest_1.jpg")


def test_unknown_split_is_a_clear_error(image_archive: Path) -> None:
    with pytest.raises(ValueError, match=r"split='tset'.*\['test', 'train', 'val'\]"):
        open_archive(image_archive, "tset")


def test_sample_dict_layout(image_archive: Path) -> None:
    ds = open_archive(image_archive, "train")
    sample = ds[0]
    assert set(sample) == set(SAMPLE_KEYS)
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 16, 16)
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    assert (sample["width"], sample["height"], sample["bands"]) == (16, 16, 3)
    assert sample["lat"] is sample["lon"] is sample["timestamp"] is sample["gsd"] is None
    meta = ds.describe(0)
    assert set(meta) == set(SAMPLE_KEYS) - {"image"}
    assert meta == {k: v for k, v in sample.items() if k != "image"}


def test_class_folders_behind_a_single_subfolder(image_archive: Path) -> None:
    (image_archive / "splits.csv").unlink()
    ds = open_archive(image_archive, split="train")  # split is ignored: all files
    assert len(ds) == 9 and ds.classes == CLASSES
    ids = [ds.describe(i)["id"] for i in range(6)]
    assert ids[0] == "2750/Forest/Forest_1.jpg"  # same ids as through splits.csv
    assert [ds.describe(i)["label"] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    direct = open_archive(image_archive / "2750")
    assert len(direct) == 9 and direct.describe(0)["id"] == "Forest/Forest_1.jpg"


def test_grayscale_rgba_and_palette_become_rgb(image_archive: Path) -> None:
    ds = open_archive(image_archive / "2750")
    by_id = {item.id: i for i, item in enumerate(ds.items)}
    gray = ds[by_id["Forest/Forest_3.png"]]["image"]
    rgba = ds[by_id["River/River_2.png"]]["image"]
    pal = ds[by_id["River/River_3.png"]]["image"]
    for image, rgb in ((gray, (100, 100, 100)), (rgba, (10, 20, 30)), (pal, (200, 50, 25))):
        assert image.shape == (3, 16, 16)
        assert torch.allclose(image[:, 0, 0], torch.tensor(rgb) / 255.0)


def test_image_size_and_bands(image_archive: Path) -> None:
    ds = open_archive(image_archive, "train", image_size=8, bands=[3, 1])
    full = open_archive(image_archive, "train")
    sample = ds[0]
    assert ds.num_bands == 2 and sample["image"].shape == (2, 8, 8)
    assert (sample["width"], sample["height"], sample["bands"]) == (16, 16, 2)  # region read from the file
    assert torch.equal(open_archive(image_archive, "train", bands=[3, 1])[0]["image"], full[0]["image"][[2, 0]])
    # the reduced-scale JPEG decode (draft) plus resize stays close to a full decode plus resize
    # (this image is white noise, the worst case for differing low-pass filters)
    assert (sample["image"] - resize_image(full[0]["image"][[2, 0]], 8)).abs().mean() < 0.08
    with pytest.raises(ValueError, match="between 1 and 3"):
        open_archive(image_archive, bands=[4])


def test_corrupt_and_truncated_jpegs_raise_naming_the_file(image_archive: Path) -> None:
    ds = open_archive(image_archive, "test")
    corrupt, truncated = 1, 2
    assert ds.describe(truncated)["width"] == 64  # header only: describe does not decode pixels
    for index, name in ((corrupt, "SeaLake_2.jpg"), (truncated, "SeaLake_3.jpg")):
        with pytest.raises(UnreadableImageError, match=rf"{name}.*re-download it or delete it") as info:
            ds[index]
        assert info.value.path.endswith(name) and isinstance(info.value, ValueError)
    with pytest.raises(UnreadableImageError, match="SeaLake_2.jpg"):
        ds.describe(corrupt)


def test_decompression_bomb_is_unreadable(image_archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16x16 = 256 px > 2 * 100: PIL raises the bomb error
    ds = open_archive(image_archive, "train")
    with pytest.raises(UnreadableImageError, match=r"too large to decode safely \(256 px; the limit is 100 px\)"):
        ds[0]


def test_geotiff_class_folders_read_through_rasterio(tmp_path: Path) -> None:
    for name, value in (("Forest", 1000), ("River", 2000)):
        (tmp_path / name).mkdir()
        profile = dict(driver="GTiff", width=8, height=8, count=4, dtype="uint16", crs="EPSG:32618",
                       transform=Affine(10, 0, 500000, 0, -10, 4500000))
        with rasterio.open(tmp_path / name / f"{name}_1.tif", "w", **profile) as dst:
            dst.write(np.full((4, 8, 8), value, dtype=np.uint16))
    ds = open_archive(tmp_path, bands=[1, 2, 3])
    assert ds.classes == ["Forest", "River"] and ds.num_bands == 3
    sample = ds[1]
    assert sample["image"].shape == (3, 8, 8) and torch.allclose(sample["image"], torch.full((3, 8, 8), 0.2))
    assert sample["label"] == 1 and ds.describe(1)["nodata_fraction"] == 0.0
    # A GeoTIFF in a class folder says where it is: centre, footprint (80 m square in UTM 18N) and gsd.
    lat, lon = sample["lat"], sample["lon"]
    assert 40.6 < lat < 40.7 and -75.1 < lon < -74.9 and sample["gsd"] == 10.0
    ring = json.loads(ds.describe(1)["footprint"])["coordinates"][0]
    assert len(ring) == 5 and min(x for x, _ in ring) < lon < max(x for x, _ in ring)
    with rasterio.open(tmp_path / "River" / "River_2.tif", "w", **{**profile, "count": 5}) as dst:
        dst.write(np.zeros((5, 8, 8), dtype=np.uint16))
    with pytest.raises(UnreadableImageError, match=r"River_2.tif: it has 5 bands.*pass bands="):
        open_archive(tmp_path)[2]
    # Mixed with a JPEG (and a file of an unknown type): everything readable is read, the rest says why not.
    Image.new("RGB", (8, 8), (51, 51, 51)).save(tmp_path / "River" / "River_3.jpg")
    (tmp_path / "River" / "River_4.xyz").write_bytes(b"not an image")
    mixed = open_archive(tmp_path, bands=[1, 2, 3])
    assert mixed.num_bands == 3 and len(mixed) == 5
    assert torch.allclose(mixed[3]["image"], torch.full((3, 8, 8), 0.2)) and mixed[2]["image"].shape == (3, 8, 8)
    with pytest.raises(UnreadableImageError, match=r"unknown file type '\.xyz'"):
        mixed[4]
    rgb = open_archive(tmp_path)  # no bands given: RGB, and the 4- and 5-band GeoTIFFs are skipped with reasons
    assert rgb.num_bands == 3 and rgb[3]["image"].shape == (3, 8, 8)
    with pytest.raises(UnreadableImageError, match="has 4 bands"):
        rgb[0]


def test_unrecognised_layouts(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"matches no known archive layout[\s\S]*splits.csv[\s\S]*fMoW"):
        open_archive(tmp_path)
    with pytest.raises(ValueError, match="matches no known archive layout"):
        open_archive(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_archive(tmp_path / "missing")


def test_splits_csv_without_path_column(image_archive: Path) -> None:
    shutil.copy(image_archive / "splits.csv", image_archive / "orig.csv")
    (image_archive / "splits.csv").write_text("file,label\na.jpg,x\n")
    with pytest.raises(ValueError, match="'path' column"):
        open_archive(image_archive)
