"""Val accuracy of a FixMatch run's labelling average beside the model it taught, measured from its last checkpoint.

    python study/ema_val.py RUN [RUN ...]

RUN: a ``python -m training finetune`` folder trained with ``--set fixmatch_ema=...``. Runs since that setting log
``ema_val_accuracy`` at every val measurement; this measures it again from the checkpoint (both models on the run's
own val subset), for runs started before, and prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.checkpoint import find_checkpoint, read_state
from training.config import FinetuneConfig, apply_overrides
from training.finetune import Finetuner


def measure(run: Path) -> tuple[int, float, float]:
    """(step, the model's val accuracy, the labelling average's) at the run's last checkpoint."""
    checkpoint = find_checkpoint(run)
    if checkpoint is None:
        raise SystemExit(f"{run}: no checkpoint; name a folder that `python -m training finetune --out` wrote")
    state = read_state(checkpoint)
    config = apply_overrides(FinetuneConfig(), state["config"])
    if not config.fixmatch_ema:
        raise SystemExit(f"{run}: trained without --set fixmatch_ema=..., so it keeps no labelling average")
    trainer = Finetuner(config, state["data_root"], run, resume=True)
    if trainer.val is None:
        raise SystemExit(f"{run}: its archive has no val split to measure on")
    return trainer.step, trainer.accuracy(*trainer.val), trainer.accuracy(*trainer.val, model=trainer.ema.module)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    args = parser.parse_args()
    print("| run | step | val, the model | val, its labelling average |")
    print("|---|---|---|---|")
    for run in args.runs:
        step, model, average = measure(run)
        print(f"| {run.name} | {step} | {model:.4f} | {average:.4f} |")


if __name__ == "__main__":
    main()
