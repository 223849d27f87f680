"""What study/ reads from a fine-tuning run folder (``python -m training finetune``): finetune.sh's choosing modes
its final val and whether it exported, pseudo_labels.py a FixMatch run's logged pseudo-labels."""

from __future__ import annotations

import json
from pathlib import Path


def records(run: Path) -> list[dict]:
    """The run's metrics.jsonl, one dict a line: training steps (loss, lr, FixMatch's logged pseudo-label counts) and
    val measurements."""
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run}: not a fine-tuning run folder (no metrics.jsonl); name a folder that "
                                "`python -m training finetune --out` wrote")
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def final_val(run: Path) -> float:
    """The run's last val accuracy in its metrics.jsonl (the run's end, not its best point: what the study compares)."""
    measured = [record["val_accuracy"] for record in records(run) if "val_accuracy" in record]
    if not measured:
        raise ValueError(f"{run}/metrics.jsonl: no val accuracy yet (the run has not reached its first evaluation)")
    return measured[-1]


def exported(run: Path) -> bool:
    """Whether the run finished: its classifier and card are exported (an unfinished run is never a candidate)."""
    return (run / "export" / "model_card.json").is_file()


def pseudo_label_quality(run: Path, parts: int = 4) -> list[tuple[float, float | None]]:
    """A FixMatch run's logged pseudo-labels, per part of its steps so far (``parts`` equal stretches, in order):
    (confident share, accuracy of the confident ones). Each logged step is one batch of unlabelled images with
    their true train labels, never trained on; the accuracy is weighted by each step's confident share (None where
    no image of the stretch passed the threshold)."""
    logged = [r for r in records(run) if "confident" in r]
    if not logged:
        raise ValueError(f"{run}/metrics.jsonl: no pseudo-labels logged (not a FixMatch run: --set fixmatch=...)")
    total = max(r["step"] for r in logged)
    quality = []
    for part in range(parts):
        steps = [r for r in logged if part * total / parts < r["step"] <= (part + 1) * total / parts]
        confident = sum(r["confident"] for r in steps)
        right = sum(r["confident"] * r["pseudo_accuracy"] for r in steps if r["pseudo_accuracy"] is not None)
        quality.append((confident / len(steps) if steps else float("nan"), right / confident if confident else None))
    return quality
