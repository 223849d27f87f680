"""SkipUnreadable, collate_skipping (in a real multi-worker DataLoader) and band_statistics."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from training.data import SkipUnreadable, UnreadableImageError, band_statistics, collate_skipping, open_archive

S2 = Path(__file__).resolve().parent / "data" / "geotiff" / "scenes" / "s2_utm18n_uint16_6band.tif"


def test_skip_unreadable_returns_none_and_warns_once(image_archive: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = SkipUnreadable(open_archive(image_archive, "test"))
    assert ds.classes == ["Forest", "River", "SeaLake"] and ds.num_bands == 3 and len(ds) == 3
    assert ds.describe(0)["id"] == "2750/SeaLake/SeaLake_1.jpg"
    with caplog.at_level(logging.WARNING, logger="training.data.robust"):
        assert ds[0] is not None and ds[1] is None and ds[1] is None and ds[2] is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "training.data.robust"]
    assert len(warnings) == 2 and "SeaLake_2.jpg" in warnings[0] and "SeaLake_3.jpg" in warnings[1]
    clone = pickle.loads(pickle.dumps(ds))  # spawn-started workers pickle the dataset
    assert clone[1] is None and len(clone) == 3
    chips = pickle.loads(pickle.dumps(open_archive(S2.parent, bands=[1, 2, 3, 4], chip_size=32)))
    assert chips[1]["image"].shape == (4, 32, 32)
    with pytest.raises(UnreadableImageError, match="corrupt.tif"):
        chips[0]
    err = pickle.loads(pickle.dumps(UnreadableImageError("/x.jpg", "broken")))
    assert err.path == "/x.jpg" and err.reason == "broken"


def test_collate_skipping() -> None:
    a = {"image": torch.zeros(3, 4, 4), "label": 1, "id": "a"}
    b = {"image": torch.ones(3, 4, 4), "label": 2, "id": "b"}
    batch = collate_skipping([a, None, b, None])
    assert batch["image"].shape == (2, 3, 4, 4) and batch["image"].dtype == torch.float32
    assert batch["label"].tolist() == [1, 2] and batch["label"].dtype == torch.int64
    assert batch["id"] == ["a", "b"] and batch["n_skipped"] == 2
    assert collate_skipping([None, None]) == {"image": None, "label": None, "id": [], "n_skipped": 2}
    with pytest.raises(ValueError, match="image_size"):
        collate_skipping([a, {"image": torch.ones(3, 5, 5), "label": 0, "id": "c"}])


def test_dataloader_with_two_workers_counts_skips(image_archive: Path) -> None:
    ds = SkipUnreadable(open_archive(image_archive, image_size=16))  # 9 files, 2 broken
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_skipping)
    batches = list(loader)
    assert sum(b["n_skipped"] for b in batches) == 2
    ids = [i for b in batches for i in b["id"]]
    assert len(ids) == 7 and not any("SeaLake_2" in i or "SeaLake_3" in i for i in ids)
    images = torch.cat([b["image"] for b in batches if b["image"] is not None])
    assert images.shape == (7, 3, 16, 16)


def test_band_statistics_matches_a_direct_computation() -> None:
    ds = open_archive(S2, chip_size=32)
    mean, std = band_statistics(ds, max_samples=100)  # all 8 chips
    stacked = torch.stack([ds[i]["image"] for i in range(len(ds))]).double()  # [8, 6, 32, 32]
    expected_mean = stacked.mean(dim=(0, 2, 3))
    expected_std = stacked.std(dim=(0, 2, 3), unbiased=False)
    assert len(mean) == len(std) == 6
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), expected_mean, atol=1e-6)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), expected_std, atol=1e-6)
    subset = band_statistics(ds, max_samples=3, seed=1)
    assert subset == band_statistics(ds, max_samples=3, seed=1) and subset != (mean, std)


def test_band_statistics_skips_unreadable(image_archive: Path) -> None:
    mean, std = band_statistics(open_archive(image_archive, "test"))  # 1 readable of 3
    single = open_archive(image_archive, "test")[0]["image"].double()
    assert mean == pytest.approx(single.mean(dim=(1, 2)).tolist(), abs=1e-6)
    assert std == pytest.approx(single.std(dim=(1, 2), unbiased=False).tolist(), abs=1e-6)
    broken = torch.utils.data.Subset(open_archive(image_archive, "test"), [1, 2])
    with pytest.raises(ValueError, match="could not read any"):
        band_statistics(broken)
