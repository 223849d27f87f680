"""Feeding batches to the training loop.

Small archives (EuroSAT: 16,200 tiles of 64 px) are decoded once into one tensor (`preload`), so the two CPU
cores do model work instead of JPEG decoding; large ones (fMoW) stream through a DataLoader with workers.
Either way an epoch visits a seeded permutation of the samples, so a resumed run can start in the middle of
an epoch and see exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.data import SkipUnreadable, collate_skipping

log = logging.getLogger(__name__)


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded sample permutation of one epoch, [num_samples] long."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def preload(dataset: Dataset, num_workers: int = 0, batch_size: int = 256, desc: str = "decoding",
            show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode every readable sample: (images [N, C, H, W] float32, labels [N] long, number skipped)."""
    loader = DataLoader(SkipUnreadable(dataset), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_skipping)
    images, labels, skipped = [], [], 0
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not show_progress, leave=False):
        skipped += batch["n_skipped"]
        if batch["image"] is not None:
            images.append(batch["image"])
            labels.append(batch["label"])
    if not images:
        raise ValueError(f"no readable image in {getattr(dataset, 'root', dataset)}: check the --data path")
    if skipped:
        log.warning("%d unreadable files were skipped while decoding (see the warnings above)", skipped)
    return torch.cat(images), torch.cat(labels), skipped


class BatchFeed:
    """Yields the batches of one epoch, from a preloaded tensor or by streaming a dataset.

    `epoch(epoch, start_batch, rank, world)` -> iterator of (images [b, C, H, W], n_skipped); each rank takes
    every world-th sample of the epoch's permutation, so ranks see disjoint data.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, preloaded: bool, num_workers: int = 0,
                 show_progress: bool = True) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.images = None
        self.skipped_on_load = 0
        if preloaded:
            self.images, _, self.skipped_on_load = preload(dataset, num_workers, show_progress=show_progress)
        self.num_samples = len(self.images) if self.images is not None else len(dataset)

    def steps_per_epoch(self, world: int = 1) -> int:
        steps = self.num_samples // (self.batch_size * world)
        if steps == 0:
            raise ValueError(f"{self.num_samples} images are fewer than one batch of {self.batch_size * world}:"
                             " lower --batch-size (config batch_size) or add data")
        return steps

    def epoch(self, epoch: int, start_batch: int = 0, rank: int = 0, world: int = 1
              ) -> Iterator[tuple[torch.Tensor | None, int]]:
        steps = self.steps_per_epoch(world)
        order = epoch_order(self.num_samples, self.seed, epoch)[rank::world][: steps * self.batch_size]
        order = order[start_batch * self.batch_size:]
        if self.images is not None:
            for start in range(0, len(order), self.batch_size):
                yield self.images[order[start:start + self.batch_size]], 0
            return
        loader = DataLoader(SkipUnreadable(self.dataset), batch_size=self.batch_size, sampler=order.tolist(),
                            num_workers=self.num_workers, collate_fn=collate_skipping,
                            persistent_workers=False, drop_last=False)
        for batch in loader:
            yield batch["image"], batch["n_skipped"]
