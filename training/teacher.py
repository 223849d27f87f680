"""Self-training: a fine-tuned classifier (the teacher) labels the train images whose labels the run may not read.

The few-label fine-tunes see only their labelled subset, yet the archive's other train images are there, unlabelled.
SimCLRv2's third step (Chen et al., NeurIPS 2020: "big self-supervised models are strong semi-supervised
learners") and Noisy Student (Xie et al., CVPR 2020) use them: a model fine-tuned on the labels predicts every
unlabelled image once, clean; a student is then trained on all of them, the labelled images with their labels and
the others with the teacher's probabilities as soft targets, through the student's usual augmentations. The labels
a student reads are exactly its teacher's labelled subset (the same fraction and draw, checked on the card): the
teacher's predictions are the only thing the other images contribute.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from training.config import FinetuneConfig
from training.encoder import ExportedEncoder, read_card

log = logging.getLogger(__name__)


def resolve_teacher(teacher: str) -> Path:
    """The exported classifier named by ``--set teacher=...``: a registry name, an exported folder, or a fine-tuning
    run folder (its ``export/``)."""
    from indexing.paths import resolve_model

    path = Path(teacher)
    if (path / "export" / "model_card.json").is_file():
        return path / "export"
    try:
        return resolve_model(teacher)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"teacher {teacher!r}: not a fine-tuning run with an export/ either. {err}") from None


def check_teacher(card: dict, config: FinetuneConfig, classes: list[str], where: Path) -> None:
    """The teacher must be a classifier of these classes fine-tuned on exactly the student's labelled subset, or
    the student would learn from labels it is not allowed to read."""
    if card.get("task") != "classification":
        raise ValueError(f"teacher {where}: its card has no `task: classification` — a teacher is a fine-tuned "
                         "classifier (`python -m training finetune ...`), not an encoder")
    if list(card["classes"]) != list(classes):
        raise ValueError(f"teacher {where}: its classes {card['classes']} are not the archive's {classes}")
    for key in ("label_fraction", "label_seed"):
        if card.get(key) != getattr(config, key):
            raise ValueError(f"teacher {where}: its card's {key} is {card.get(key)!r}, the student's "
                             f"{getattr(config, key)!r}: a teacher must have seen exactly the student's labels "
                             f"(fine-tune one with --label-fraction {config.label_fraction} "
                             f"--label-seed {config.label_seed})")


@torch.no_grad()
def soft_targets(teacher_dir: Path, images: torch.Tensor, temperature: float, batch_size: int = 256) -> torch.Tensor:
    """The teacher's class probabilities [N, K] for images [N, C, S, S] (scaled units), softmax(logits / T)."""
    teacher = ExportedEncoder(teacher_dir, threads=torch.get_num_threads())
    logits = np.concatenate([teacher.logits(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    return torch.softmax(torch.from_numpy(logits).float() / temperature, dim=1)


def with_soft_targets(config: FinetuneConfig, labelled: torch.Tensor, labels: torch.Tensor, unlabelled: torch.Tensor,
                      classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [L + U, C, S, S], targets [L + U, K]): the labelled images [L, ...] with their labels [L] one-hot,
    then the unlabelled ones [U, ...] with the teacher's probabilities (their own labels are never read)."""
    where = resolve_teacher(config.teacher)
    check_teacher(read_card(where), config, classes, where)
    predicted = soft_targets(where, unlabelled, config.teacher_temperature)
    log.info("teacher %s: soft targets for %d unlabelled train images (mean top probability %.3f) beside %d "
             "labelled", where, len(unlabelled), predicted.max(1).values.mean().item(), len(labelled))
    one_hot = torch.nn.functional.one_hot(labels, len(classes)).float()
    return torch.cat([labelled, unlabelled]), torch.cat([one_hot, predicted])
