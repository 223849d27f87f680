"""What study/finetune.sh's choosing modes read from a fine-tuning run folder (``python -m training finetune``)."""

from __future__ import annotations

import json
from pathlib import Path


def final_val(run: Path) -> float:
    """The run's last val accuracy in its metrics.jsonl (the run's end, not its best point: what the study compares)."""
    records = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())
    measured = [record["val_accuracy"] for record in records if "val_accuracy" in record]
    if not measured:
        raise ValueError(f"{run}/metrics.jsonl: no val accuracy yet (the run has not reached its first evaluation)")
    return measured[-1]


def exported(run: Path) -> bool:
    """Whether the run finished: its classifier and card are exported (an unfinished run is never a candidate)."""
    return (run / "export" / "model_card.json").is_file()
