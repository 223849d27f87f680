"""Training over archives with a few broken files, and per-band statistics.

``SkipUnreadable`` turns :class:`UnreadableImageError` into ``None`` samples; ``collate_skipping`` (the
DataLoader's ``collate_fn``) drops them and reports how many it dropped in the batch itself, so the count works
in worker processes without shared state: the training loop sums ``batch["n_skipped"]``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .base import UnreadableImageError

logger = logging.getLogger(__name__)


class SkipUnreadable(Dataset):
    """Wraps a dataset so that unreadable samples come back as ``None`` instead of raising.

    A warning is logged the first time each file fails in a process (each DataLoader worker logs its own).
    ``classes``, ``num_bands``, ``root``, ``describe`` and any other attribute are those of the wrapped dataset.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            return self.dataset[index]
        except UnreadableImageError as err:
            if err.path not in self._warned:
                self._warned.add(err.path)
                logger.warning("skipping unreadable sample %d: %s", index, err)
            return None

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "_warned"):  # not set yet (e.g. while unpickling): avoid infinite recursion
            raise AttributeError(name)
        if name.startswith("__"):  # e.g. Subset.__getitems__, which DataLoader would call, bypassing the skip
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_skipping(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Batch the non-None samples.

    Returns:
        ``{"image": float32 [B, C, H, W], "label": int64 [B], "id": list[str], "n_skipped": int}`` where
        ``n_skipped`` counts the None entries. If every sample was None, ``image`` and ``label`` are None and
        ``id`` is empty: skip such a batch (after adding its ``n_skipped``).

    Raises:
        ValueError: the images have different shapes (pass ``image_size`` to ``open_archive``).
    """
    kept = [s for s in samples if s is not None]
    n_skipped = len(samples) - len(kept)
    if not kept:
        return {"image": None, "label": None, "id": [], "n_skipped": n_skipped}
    shapes = {tuple(s["image"].shape) for s in kept}
    if len(shapes) > 1:
        raise ValueError(
            f"Cannot batch images of different shapes {sorted(shapes)}: pass image_size=... to open_archive "
            "so every sample is resized to the same size."
        )
    return {
        "image": torch.stack([s["image"] for s in kept]),  # [B, C, H, W]
        "label": torch.tensor([s["label"] for s in kept], dtype=torch.int64),  # [B]
        "id": [s["id"] for s in kept],
        "n_skipped": n_skipped,
    }


def band_statistics(dataset: Dataset, max_samples: int = 2000, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of ``dataset`` images, over a random subset of samples.

    Args:
        dataset: yields dicts with ``image`` float [C, H, W] (or None, as SkipUnreadable does).
        max_samples: at most this many samples, drawn without replacement with ``numpy`` seed ``seed``.
        seed: makes the subset reproducible.

    Returns:
        ``(mean, std)``: lists of C floats in the dataset's scaled units (population std over all pixels).
        Unreadable samples are skipped; nodata pixels count as their value 0, as the model sees them.

    Raises:
        ValueError: the dataset is empty or no sampled image could be read.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("band_statistics needs a non-empty dataset.")
    picked = np.sort(np.random.default_rng(seed).choice(n, size=min(max_samples, n), replace=False))
    total = total_sq = None
    pixels, skipped = 0, 0
    for index in tqdm(picked.tolist(), desc="band statistics", leave=False, disable=None):
        try:
            sample = dataset[index]
        except UnreadableImageError as err:
            logger.warning("band_statistics: skipping %s", err)
            sample = None
        if sample is None:
            skipped += 1
            continue
        image = sample["image"].to(torch.float64).flatten(1)  # [C, H*W]
        sums, sq = image.sum(dim=1), (image * image).sum(dim=1)
        total, total_sq = (sums, sq) if total is None else (total + sums, total_sq + sq)
        pixels += image.shape[1]
    if total is None:
        raise ValueError(f"band_statistics could not read any of the {len(picked)} sampled images.")
    if skipped:
        logger.info("band_statistics: %d of %d sampled images were unreadable", skipped, len(picked))
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp_min(0.0).sqrt()
    return mean.tolist(), std.tolist()
