"""How long supervised training from scratch must run to spend what pretraining + fine-tuning spent (issue 22).

    python study/equal_compute.py                 # EuroSAT: the FLOPs of each init and the scratch run's step count
    python study/equal_compute.py aid             # AID: the same for its inits (the paper's I-JEPA at 150, the others at 300)
    python study/equal_compute.py aid --as ijepa-paper   # --max-steps for one init's total instead of the largest
    python study/equal_compute.py --finetune-steps 6000  # the totals with a longer fine-tune (EuroSAT 10 %'s cells)

Compute is counted in training FLOPs (forward + backward, ``torch.utils.flop_counter`` on one step of each kind:
the study's I-JEPA and MAE steps, and the fine-tuning step), not in core-minutes: the pretraining ran on other
machines than the scratch runs (another CPU, a GPU), and a core-minute is not the same work on each. Each
pretraining is counted whole — every epoch it ran, not only up to the epoch exported (EuroSAT's tuned I-JEPA was
best on val at 42 of 48) — plus its fine-tuning at 10 % of the labels (EuroSAT 750 steps, AID 1,080). By default
the scratch run takes the largest of the totals, so it is at least equal to each.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

PAPER_IJEPA = ["optim.lr=0.000125", "ijepa.ema=[0.996,1.0]"]  # study/pretrain.sh: ijepa
TUNED_IJEPA = ["optim.lr=0.0015", "ijepa.ema=[0.99,1.0]", "ijepa.regularizer=vicreg", "ijepa.reg_weight=0.1"]
MAE = ["optim.lr=0.0015"]


@dataclass(frozen=True)
class Setup:
    """One dataset's pretraining runs (study/pretrain.sh) and the fine-tuning at 10 % that followed them."""

    archive: Path
    config: str  # the pretraining config
    steps_per_epoch: int  # train images // batch 64
    finetune_steps: int  # study/finetune.sh at 10 % of the labels
    scratch_init: str  # scratch's architecture, as finetune.sh names it
    pretraining: dict[str, tuple[str, list[str], int]]  # init -> method, overrides, epochs run


SETUPS = {
    # the shipped EuroSAT encoders (BUDGET=150); fine-tuned 30 passes of 25 steps
    "eurosat": Setup(DATA / "eurosat-rgb", "study_final", 16_200 // 64, 750, "random:ijepa",
                     {"ijepa": ("ijepa", TUNED_IJEPA, 48), "mae": ("mae", MAE, 94)}),
    # the shipped AID encoders (BUDGET=300) and the paper's I-JEPA (BUDGET=150); fine-tuned 120 passes of 9 steps
    "aid": Setup(DATA / "aid", "study_final_aid", 6_000 // 64, 1_080, "random:mae-aid",
                 {"ijepa-paper": ("ijepa", PAPER_IJEPA, 26), "ijepa-aid": ("ijepa", TUNED_IJEPA, 52),
                  "mae-aid": ("mae", MAE, 108)}),
}


def pretraining_step_flops(setup: Setup, method: str, sets: list[str]) -> int:
    from training.bench import _learner, step_flops
    from training.config import load_config, parse_assignments

    config = load_config(setup.config, **parse_assignments(sets), method=method)
    raw = torch.rand(config.batch_size, config.model.in_chans, config.model.img_size, config.model.img_size)
    return step_flops(_learner(config, torch.device("cpu")), raw)


def finetuning_step_flops(setup: Setup) -> int:
    from training.config import FinetuneConfig
    from training.finetune import Finetuner

    config = FinetuneConfig(init=setup.scratch_init, label_fraction=0.01, val_images=64, layer_decay=1.0)
    trainer = Finetuner(config, str(setup.archive), REPO / "runs" / "equal-compute-probe")
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(trainer.images[:64], trainer.targets[:64])
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default="eurosat", choices=sorted(SETUPS))
    parser.add_argument("--as", dest="init", help="the init whose total --max-steps matches (default: the largest)")
    parser.add_argument("--finetune-steps", type=int, help="the fine-tune counted in each total (default: the "
                        "dataset's short 10 %% run, EuroSAT 750 steps, AID 1,080)")
    args = parser.parse_args()
    setup = SETUPS[args.dataset]
    finetune_steps = args.finetune_steps or setup.finetune_steps
    if args.init is not None and args.init not in setup.pretraining:
        parser.error(f"--as {args.init}: not one of {args.dataset}'s inits ({', '.join(setup.pretraining)})")
    finetune = finetuning_step_flops(setup)
    print(f"fine-tuning step (batch 64): {finetune / 1e9:.2f} GFLOP")
    totals = {}
    for name, (method, sets, epochs) in setup.pretraining.items():
        step = pretraining_step_flops(setup, method, sets)
        totals[name] = epochs * setup.steps_per_epoch * step + finetune_steps * finetune
        print(f"{name}: {epochs} epochs x {setup.steps_per_epoch} steps x {step / 1e9:.2f} GFLOP + fine-tuning "
              f"{finetune_steps:,} x {finetune / 1e9:.2f} GFLOP = {totals[name] / 1e12:.1f} TFLOP "
              f"= {totals[name] / finetune:,.0f} fine-tuning steps")
    chosen = args.init or max(totals, key=totals.get)
    others = ", ".join(f"{totals[chosen] / total:.2f}x {name}'s" for name, total in totals.items() if name != chosen)
    print(f"scratch at equal total compute: --max-steps {round(totals[chosen] / finetune)} (as {chosen}; {others})")


if __name__ == "__main__":
    main()
