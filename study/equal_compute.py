"""How long supervised training from scratch must run to spend what pretraining + fine-tuning spent (issue 22).

    python study/equal_compute.py            # prints the FLOPs of each and the scratch run's step count

Compute is counted in training FLOPs (forward + backward, ``torch.utils.flop_counter`` on one step of each kind:
the study's I-JEPA and MAE steps, and the fine-tuning step), not in core-minutes: the pretraining ran on another
machine than the scratch runs, and a core-minute is not the same work on both (the AMD EPYC of the pretraining,
the Intel Xeon with AMX of this session). Each pretraining is counted whole — every epoch it ran, not only up to
the epoch exported (I-JEPA's best on val was 42 of 48) — plus its fine-tuning at 10 % of the labels (750 steps).
The scratch run takes the larger of the two totals (MAE's), so it is at least equal to each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EUROSAT = REPO.parent / "shared" / "data" / "eurosat-rgb"

STEPS_PER_EPOCH = 16_200 // 64  # EuroSAT train, batch 64
#: The shipped EuroSAT encoders' pretraining runs (study/pretrain.sh, BUDGET=150): method, overrides, epochs run.
PRETRAINING = {
    "ijepa": ("ijepa", ["optim.lr=0.0015", "ijepa.ema=[0.99,1.0]", "ijepa.regularizer=vicreg", "ijepa.reg_weight=0.1"],
              48),
    "mae": ("mae", ["optim.lr=0.0015"], 94),
}
FINETUNE_STEPS_10 = 750  # study/finetune.sh at 10 % of EuroSAT's labels: 30 passes of 25 steps


def pretraining_step_flops(method: str, sets: list[str]) -> int:
    from training.bench import _learner, step_flops
    from training.config import load_config, parse_assignments

    config = load_config("study_final", **parse_assignments(sets), method=method)
    raw = torch.rand(config.batch_size, config.model.in_chans, config.model.img_size, config.model.img_size)
    return step_flops(_learner(config, torch.device("cpu")), raw)


def finetuning_step_flops() -> int:
    from training.config import FinetuneConfig
    from training.finetune import Finetuner

    config = FinetuneConfig(init="random:ijepa", label_fraction=0.01, val_images=64, layer_decay=1.0)
    trainer = Finetuner(config, str(EUROSAT), REPO / "runs" / "equal-compute-probe")
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(trainer.images[:64], trainer.labels[:64])
    return counter.get_total_flops()


def main() -> None:
    finetune = finetuning_step_flops()
    print(f"fine-tuning step (batch 64): {finetune / 1e9:.2f} GFLOP")
    totals = {}
    for name, (method, sets, epochs) in PRETRAINING.items():
        step = pretraining_step_flops(method, sets)
        steps = epochs * STEPS_PER_EPOCH
        totals[name] = steps * step + FINETUNE_STEPS_10 * finetune
        print(f"{name}: {epochs} epochs x {STEPS_PER_EPOCH} steps x {step / 1e9:.2f} GFLOP + fine-tuning "
              f"{FINETUNE_STEPS_10} x {finetune / 1e9:.2f} GFLOP = {totals[name] / 1e12:.1f} TFLOP "
              f"= {totals[name] / finetune:,.0f} fine-tuning steps")
    larger = max(totals, key=totals.get)
    print(f"scratch at equal total compute: --max-steps {round(totals[larger] / finetune)} (as {larger}; "
          f"{totals[larger] / totals[min(totals, key=totals.get)]:.2f}x the other)")


if __name__ == "__main__":
    main()
