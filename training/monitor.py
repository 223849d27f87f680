"""Online kNN monitor: how well the current encoder's frozen embeddings classify a held-out subset.

The I-JEPA loss alone says little about representation quality (it can fall to ~0.01 while features stay
poor), so training logs this accuracy next to the loss every few epochs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from training.augment import eval_transform
from training.config import TrainConfig
from training.data import open_archive
from training.feed import preload
from training.knn import knn_accuracy
from training.precision import autocast

log = logging.getLogger(__name__)


def _subset(dataset, n: int, seed: int):
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.utils.data.Subset(dataset, idx.tolist())


class KnnMonitor:
    """Holds a fixed labelled subset of two splits in memory; `evaluate(encoder)` returns kNN accuracy.
    `precision`: "bf16" embeds under autocast (set by the trainer to its training precision), else fp32."""

    precision = "fp32"

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], held_out: tuple[torch.Tensor, torch.Tensor],
                 num_classes: int, config: TrainConfig, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.train, self.held_out = train, held_out
        self.num_classes = num_classes
        self.config = config
        self.mean, self.std = mean, std

    @classmethod
    def from_archive(cls, root: str, config: TrainConfig, mean: torch.Tensor, std: torch.Tensor,
                     show_progress: bool = True) -> "KnnMonitor | None":
        """Build from the archive's train/val splits; None (monitor off) when the archive has no labels."""
        m, d = config.monitor, config.data
        kwargs = dict(image_size=d.image_size, bands=d.bands, fmow_crop=d.fmow_crop, chip_size=d.chip_size)
        train_set = open_archive(root, split=m.split_train, **kwargs)
        if not train_set.classes:
            log.info("kNN monitor off: %s has no class labels", root)
            return None
        num_classes = len(train_set.classes)
        try:
            eval_set = open_archive(root, split=m.split_eval, **kwargs)
        except ValueError:
            eval_set = train_set
        if len(eval_set) == len(train_set) and eval_set.describe(0)["id"] == train_set.describe(0)["id"]:
            # No separate split: two disjoint random subsets of the same archive.
            order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(1))
            half = len(order) // 2
            eval_set = torch.utils.data.Subset(train_set, order[half:][: m.n_eval].tolist())
            train_set = torch.utils.data.Subset(train_set, order[:half][: m.n_train].tolist())
        else:
            train_set, eval_set = _subset(train_set, m.n_train, 1), _subset(eval_set, m.n_eval, 2)
        train = preload(train_set, desc="kNN monitor (train)", show_progress=show_progress)[:2]
        held_out = preload(eval_set, desc="kNN monitor (held out)", show_progress=show_progress)[:2]
        return cls(train, held_out, num_classes, config, mean, std)

    @torch.no_grad()
    def embed(self, encoder: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """encoder: timm ViT (mean-pooled) -> embeddings [N, D]."""
        device = next(encoder.parameters()).device
        was_training = encoder.training
        encoder.eval()
        out = []
        for start in range(0, len(images), batch_size):
            x = eval_transform(images[start:start + batch_size], self.config.model.img_size, self.mean, self.std)
            with autocast(self.precision, device):  # as in training: bf16 where native (2.3x on this CPU)
                out.append(encoder(x.to(device)).float().cpu())
        encoder.train(was_training)
        return torch.cat(out)

    def evaluate(self, encoder: torch.nn.Module) -> float:
        """kNN top-1 accuracy (fraction) of held-out images against the train subset."""
        return self.measure(encoder)["knn_accuracy"]

    def measure(self, encoder: torch.nn.Module) -> dict[str, float]:
        """kNN accuracy, and the spectrum of the held-out embeddings (centred on the train mean): effective
        rank (exp of the entropy of the normalised eigenvalues; Roy & Vetterli 2007) and the share of the
        variance on the top principal direction — a collapsed embedding has a rank near 1 and a share near 1."""
        train = self.embed(encoder, self.train[0])
        held_out = self.embed(encoder, self.held_out[0])
        mean = train.mean(dim=0, keepdim=True)  # centre on the train mean, as the study's evaluation does
        accuracy = knn_accuracy(train - mean, self.train[1], held_out - mean, self.held_out[1], self.num_classes,
                                k=self.config.monitor.k)
        return {"knn_accuracy": accuracy, **spectrum(held_out - mean)}


class MonitorUnion:
    """The monitor of a run on several archives: one :class:`KnnMonitor` per labelled archive. `measure` gives
    each archive's numbers suffixed with its folder name (`knn_accuracy_aid`) and their mean under the plain keys,
    so the best checkpoint follows the mean kNN accuracy over the archives."""

    def __init__(self, monitors: dict[str, KnnMonitor]) -> None:
        self.monitors = monitors

    @property
    def precision(self) -> str:
        return next(iter(self.monitors.values())).precision

    @precision.setter
    def precision(self, value: str) -> None:
        for monitor in self.monitors.values():
            monitor.precision = value

    def measure(self, encoder: torch.nn.Module) -> dict[str, float]:
        each = {name: monitor.measure(encoder) for name, monitor in self.monitors.items()}
        keys = next(iter(each.values())).keys()
        record = {key: sum(m[key] for m in each.values()) / len(each) for key in keys}
        record.update({f"{key}_{name}": m[key] for name, m in each.items() for key in keys})
        return record


def monitor_for(data_root: str | Sequence[str], config: TrainConfig, mean: torch.Tensor, std: torch.Tensor,
                show_progress: bool = True) -> KnnMonitor | MonitorUnion | None:
    """The kNN monitor of a run on one archive (:meth:`KnnMonitor.from_archive`) or on several (a
    :class:`MonitorUnion` of those with labels); None when none has labels."""
    if isinstance(data_root, str):
        return KnnMonitor.from_archive(data_root, config, mean, std, show_progress)
    monitors = {Path(root).name: KnnMonitor.from_archive(root, config, mean, std, show_progress) for root in data_root}
    monitors = {name: monitor for name, monitor in monitors.items() if monitor is not None}
    return MonitorUnion(monitors) if monitors else None


def variance_shares(centred: torch.Tensor) -> torch.Tensor:
    """Share of the variance on each principal direction of embeddings [N, D] (already centred), descending."""
    eigenvalues = torch.linalg.svdvals(centred.double()) ** 2
    return eigenvalues / eigenvalues.sum()


def spectrum(centred: torch.Tensor) -> dict[str, float]:
    """Effective rank and top-component share of embeddings [N, D] (already centred)."""
    p = variance_shares(centred)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return {"effective_rank": float(entropy.exp()), "top_share": float(p[0])}


def init_correlation(encoder: torch.nn.Module, initial: dict[str, torch.Tensor]) -> float:
    """Mean Pearson correlation of the encoder's weight matrices with their values at initialisation: 1 = has
    not moved; a fully trained encoder keeps little of its random start (the first study's I-JEPA: 0.94-0.98)."""
    correlations = []
    for name, param in encoder.state_dict().items():
        if param.ndim >= 2 and name in initial and "pos_embed" not in name:  # the positions are fixed
            a, b = param.detach().flatten().double(), initial[name].flatten().double()
            correlations.append(torch.corrcoef(torch.stack([a, b]))[0, 1])
    return float(torch.stack(correlations).mean())
