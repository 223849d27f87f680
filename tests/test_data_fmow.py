"""fMoW-rgb roots and SatMAE CSVs, on the committed fixture of tests/data/fmow/data.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.data import (
    SAMPLE_KEYS,
    UnreadableImageError,
    box_with_context,
    context_multiplier,
    open_archive,
)
from training.data.fmow import wkt_centroid

FIXTURE = Path(__file__).resolve().parent / "data" / "fmow"
ROOT = FIXTURE / "fmow-rgb"
CLASSES = ["airport", "crop_field", "fountain", "zoo"]
BOX_IDS = [
    "train/airport/airport_0/airport_0_0_msrgb.jpg#box0",
    "train/airport/airport_0/airport_0_0_rgb.jpg#box0",
    "train/crop_field/crop_field_14/crop_field_14_0_rgb.jpg#box0",
    "train/zoo/zoo_0/zoo_0_0_msrgb.jpg",
    "val/airport/airport_13/airport_13_0_rgb.jpg#box0",
    "val/fountain/fountain_109/fountain_109_0_rgb.jpg#box0",
    "val/fountain/fountain_110/fountain_110_1_msrgb.jpg",
]


def ids(ds) -> list[str]:
    return [item.id for item in ds.items]


def test_layout_split_and_classes() -> None:
    ds = open_archive(ROOT)
    assert ds.classes == CLASSES and ds.num_bands == 3 and ds.root == ROOT
    assert ids(ds) == BOX_IDS
    train, val = open_archive(ROOT, "train"), open_archive(ROOT, "val")
    assert ids(train) == BOX_IDS[:4] and ids(val) == BOX_IDS[4:]
    assert train.classes == val.classes == CLASSES  # zoo is train-only, fountain val-only: same indices
    assert [train.describe(i)["label"] for i in range(4)] == [0, 0, 1, 3]
    assert val.describe(0)["split"] == "val" and val.describe(0)["label"] == 0
    with pytest.raises(ValueError, match="train.*val"):
        open_archive(ROOT, "test")
    with pytest.raises(ValueError, match="fmow_crop='tight'"):
        open_archive(ROOT, fmow_crop="tight")


def test_box_crop_with_context_matches_the_baseline_rule() -> None:
    ds = open_archive(ROOT, "train")
    # airport_0_0_rgb (96x80), box [30, 20, 30, 40]: width ratio 0.31 -> x0.3 context, height 0.5 -> x0.15
    # buffers int(30 * 0.3 / 2) = 4 and int(40 * 0.15 / 2) = 3 -> region (26, 17, 64, 63)
    assert ds.items[1].box == (26, 17, 64, 63)
    crop = ds[1]
    whole = open_archive(ROOT, "train", fmow_crop="whole")[1]
    assert crop["image"].shape == (3, 46, 38) and (crop["width"], crop["height"]) == (38, 46)
    assert torch.equal(crop["image"], whole["image"][:, 17:63, 26:64])
    # the invisible box ("visible": "False") of the same image gives no sample
    assert "train/airport/airport_0/airport_0_0_rgb.jpg#box1" not in ids(ds)


def test_single_dict_bounding_boxes_clipped_to_the_image() -> None:
    ds = open_archive(ROOT, "train")
    # airport_0_0_msrgb (48x40), box [35, 25, 13, 15] given as a dict: buffers 3 and 2, clipped at 48 and 40
    left, top, right, bottom = ds.items[0].box
    assert (left, top, right, bottom) == (32, 23, 48, 40)
    assert ds[0]["image"].shape == (3, bottom - top, right - left)


def test_context_helpers() -> None:
    ratios = [0.9, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05]
    assert [context_multiplier(r) for r in ratios] == [0.15, 0.15, 0.2, 0.2, 0.3, 0.3, 0.5, 0.5, 1, 1, 2]
    assert box_with_context([10, 10, 2, 30], 100, 100) is None  # <= 2 px: skipped like the baseline
    # a 5 px box in a 100 px image gets 2x context: 5 px on each side
    assert box_with_context([50, 50, 5, 5], 100, 100) == (45, 45, 60, 60)


def test_image_without_json_and_grayscale_jpeg() -> None:
    ds = open_archive(ROOT, "train")
    zoo = ds[3]
    assert zoo["id"] == "train/zoo/zoo_0/zoo_0_0_msrgb.jpg" and zoo["label"] == CLASSES.index("zoo")
    assert zoo["image"].shape == (3, 32, 40) and zoo["lat"] is None and zoo["timestamp"] is None
    gray = ds[2]  # crop_field JPEG is grayscale on disk
    assert gray["image"].shape == (3, 64, 64) and torch.equal(gray["image"][0], gray["image"][2])


def test_metadata_from_json() -> None:
    ds = open_archive(ROOT, "train")
    meta = ds.describe(1)
    assert set(meta) == set(SAMPLE_KEYS) - {"image"}
    # raw_location square (-77 .. -76.99, 38 .. 38.01): centroid by hand
    assert meta["lat"] == pytest.approx(38.005, abs=1e-9) and meta["lon"] == pytest.approx(-76.995, abs=1e-9)
    assert meta["timestamp"] == "2012-04-02T10:32:22Z" and meta["gsd"] == 0.55
    assert ds.describe(0)["lat"] is None  # only "utm": not enough for a location
    assert wkt_centroid("POLYGON ((0 0, 2 0, 0 2, 0 0))") == pytest.approx((2 / 3, 2 / 3))
    assert wkt_centroid("not wkt") == (None, None)


def test_whole_image_mode() -> None:
    ds = open_archive(ROOT, "train", fmow_crop="whole")
    assert ids(ds) == [i.split("#")[0] for i in BOX_IDS[:4]]
    sample = ds[1]
    assert sample["image"].shape == (3, 80, 96) and (sample["width"], sample["height"]) == (96, 80)
    assert sample["lat"] == pytest.approx(38.005) and sample["gsd"] == 0.55  # read lazily from the JSON
    resized = open_archive(ROOT, "train", fmow_crop="whole", image_size=24)[1]
    assert resized["image"].shape == (3, 24, 24)


def test_reduced_jpeg_decode_is_close_to_full_decode() -> None:
    small = open_archive(ROOT, "train", image_size=16)[2]["image"]  # 64x64 region: decoded at 1/4 scale
    full = open_archive(ROOT, "train")[2]["image"]
    reference = torch.nn.functional.interpolate(full[None], size=(16, 16), mode="bilinear", antialias=True)[0]
    assert small.shape == (3, 16, 16) and (small - reference).abs().mean() < 0.03


def test_corrupt_jpeg_and_bad_json_raise_naming_the_file() -> None:
    ds = open_archive(ROOT, "val")
    assert ds.unreadable == [str(ROOT / "val/fountain/fountain_110/fountain_110_1_msrgb.json")]
    with pytest.raises(UnreadableImageError, match=r"fountain_109_0_rgb\.jpg.*re-download"):
        ds[1]
    with pytest.raises(UnreadableImageError, match=r"fountain_110_1_msrgb\.json.*invalid fMoW metadata JSON"):
        ds[2]
    with pytest.raises(UnreadableImageError, match=r"fountain_110_1_msrgb\.json"):
        ds.describe(2)
    whole = open_archive(ROOT, "val", fmow_crop="whole")  # JSON read lazily: the error comes on access
    with pytest.raises(UnreadableImageError, match=r"fountain_110_1_msrgb\.json"):
        whole[2]


def test_satmae_csv() -> None:
    ds = open_archive(FIXTURE / "satmae_val.csv")
    assert ds.classes == ["airport", "fountain"] and ds.root == FIXTURE
    assert ids(ds) == ["fmow-rgb/" + i for i in BOX_IDS[4:]]
    sample = ds[0]
    assert sample["split"] == "val" and sample["label"] == 0 and sample["timestamp"] == "2016-11-01T15:20:00Z"
    assert sample["image"].shape == (3, 48, 56)
    whole = open_archive(FIXTURE / "satmae_val.csv", fmow_crop="whole")
    assert whole[0]["image"].shape == (3, 96, 80)


def test_satmae_csv_with_absolute_paths(tmp_path: Path) -> None:
    image = ROOT / "val/airport/airport_13/airport_13_0_rgb.jpg"
    csv_path = tmp_path / "val_62classes.csv"
    csv_path.write_text(f"category,image_path,timestamp\nairport,{image},2016-11-01T15:20:00Z\n")
    ds = open_archive(csv_path, fmow_crop="whole")
    assert len(ds) == 1 and ds[0]["path"] == str(image) and ds[0]["id"] == image.as_posix()
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="category,image_path,timestamp"):
        open_archive(tmp_path / "other.csv")
