"""Hyper-parameter sweep on val, driven by the online kNN (never by the loss, never on test).

    python study/sweep.py run [--only NAME ...] [--parallel 2]    # train the runs still missing (resumable)
    python study/sweep.py report                                   # table of every run -> study/sweep.md

Each run is `python -m training pretrain` on the EuroSAT train split with the `study_sweep` preset plus the
run's overrides (`--set`), for the same number of epochs, one thread each, `parallel` at a time; a run
killed midway continues with --resume on the next `run`. Selection reads the kNN of the exported encoder
(I-JEPA: the target encoder) on 2,000 val images against 4,000 train images, after the last epoch. The
metrics of every run are copied into study/sweep/<name>.jsonl, so the table survives the run folders.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "study" / "sweep"
DATA = os.environ.get("DATA", str(REPO.parent / "shared" / "data" / "eurosat-rgb"))
RUNS = Path(os.environ.get("SWEEP_RUNS", REPO / "runs" / "sweep"))
EPOCHS = 3
BATCH = 64  # the study_sweep preset's batch


class Run(NamedTuple):
    method: str
    overrides: dict  # `--set` keys; optim.lr is per 256 images (x 64 / 256 at batch 64)
    epochs: int = EPOCHS  # fewer for the costlier grids (the report's "train min" column gives each run's cost)


PAPER_IJEPA = {"optim.lr": 1.25e-4, "ijepa.ema": [0.996, 1.0]}  # 1e-3 at batch 2048, EMA 0.996 -> 1
PAPER_MAE = {"optim.lr": 1.5e-4}  # MAE's base rate
MOVING_IJEPA = {"optim.lr": 1.5e-3, "ijepa.ema": [0.99, 1.0]}  # a rate and EMA that move the encoder in 3 epochs
TUNED_MAE = {"optim.lr": 1.5e-3}
TUNED_IJEPA = {**MOVING_IJEPA, "ijepa.regularizer": "vicreg", "ijepa.reg_weight": 0.1}  # the sweep's winner
# Patch 4 on 64 px: a 16 x 16 grid, 4x the tokens of patch 8. One epoch, the fewest the trainer runs, already
# costs 2-3x three epochs at patch 8 (measured: MAE 7x, I-JEPA ~4x slower per image), so these runs had more compute.
GRID_16 = {"model.patch_size": 4}
SWEEP: dict[str, Run] = {
    "ijepa-paper": Run("ijepa", PAPER_IJEPA),
    "ijepa-lr4e-3-ema.99": Run("ijepa", {"optim.lr": 4e-3, "ijepa.ema": [0.99, 1.0]}),
    "ijepa-lr1.5e-3-ema.99": Run("ijepa", MOVING_IJEPA),
    "ijepa-lr1.5e-3-ema.99-vicreg1": Run("ijepa", {**MOVING_IJEPA, "ijepa.regularizer": "vicreg", "ijepa.reg_weight": 1.0}),
    "ijepa-lr1.5e-3-ema.99-vicreg.3": Run("ijepa", {**MOVING_IJEPA, "ijepa.regularizer": "vicreg", "ijepa.reg_weight": 0.3}),
    "ijepa-lr1.5e-3-ema.99-vicreg.1": Run("ijepa", TUNED_IJEPA),
    "ijepa-lr1.5e-3-ema.99-sigreg.1": Run("ijepa", {**MOVING_IJEPA, "ijepa.regularizer": "sigreg", "ijepa.reg_weight": 0.1}),
    "ijepa-lr1.5e-3-ema.99-sigreg.1-shared": Run("ijepa", {**MOVING_IJEPA, "ijepa.regularizer": "sigreg",
                                                           "ijepa.reg_weight": 0.1, "ijepa.shared_context": True}),
    "ijepa-lr1.5e-3-ema.99-patch4": Run("ijepa", {**MOVING_IJEPA, **GRID_16}, epochs=1),
    # the mask scales, on the tuned I-JEPA (VICReg 0.1): 4 target blocks of 10-15 % (paper: 15-20 %). Larger ones
    # (25-35 %) are refused on the 8 x 8 grid: 4 blocks of up to 5 x 4 patches can leave no context (masks.py).
    "ijepa-vicreg.1-targets.1-.15": Run("ijepa", {**TUNED_IJEPA, "ijepa.target_scale": [0.1, 0.15]}),
    "mae-paper": Run("mae", PAPER_MAE),
    "mae-lr4e-3": Run("mae", {"optim.lr": 4e-3}),
    "mae-lr1.5e-3": Run("mae", TUNED_MAE),
    "mae-lr5e-4": Run("mae", {"optim.lr": 5e-4}),
    "mae-lr1.5e-3-mask.6": Run("mae", {**TUNED_MAE, "mae.mask_ratio": 0.6}),
    "mae-lr1.5e-3-mask.9": Run("mae", {**TUNED_MAE, "mae.mask_ratio": 0.9}),
    "mae-lr1.5e-3-dec2": Run("mae", {**TUNED_MAE, "mae.decoder_depth": 2}),
    "mae-lr1.5e-3-pix": Run("mae", {**TUNED_MAE, "mae.norm_pix_loss": False}),
    "mae-lr1.5e-3-patch4": Run("mae", {**TUNED_MAE, **GRID_16}, epochs=1),
    # bf16 check: the same run as mae-lr1.5e-3 in fp32 (every other run trains in bf16 on this CPU)
    "mae-lr1.5e-3-fp32": Run("mae", {**TUNED_MAE, "bf16": False}),
}


def command(name: str) -> list[str]:
    run = SWEEP[name]
    out = RUNS / name
    cmd = [sys.executable, "-m", "training", "pretrain", "--method", run.method, "--data", DATA, "--config",
           "study_sweep", "--out", str(out), "--epochs", str(run.epochs)]
    if (out / "checkpoint").is_dir():
        return cmd + ["--resume"]
    for key, value in run.overrides.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    return cmd


def finished(name: str) -> bool:
    state = RUNS / name / "checkpoint" / "state.json"
    return state.is_file() and json.loads(state.read_text())["epoch"] >= SWEEP[name].epochs


def train(name: str) -> str:
    if not finished(name):
        RUNS.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs on a 2-core machine: one thread each
        started = time.time()
        with open(RUNS / f"{name}.log", "a") as log:
            code = subprocess.call(command(name), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            return f"{name}: failed (exit {code}), see {RUNS / name}.log"
        print(f"{name}: done in {(time.time() - started) / 60:.1f} min", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RUNS / name / "metrics.jsonl", RESULTS / f"{name}.jsonl")
    return f"{name}: ok"


def report() -> str:
    rows = ["| run | method | overrides | kNN val (exported) | best kNN (epoch) | kNN context | eff. rank | "
            "top share | init corr. | img/s (1 thread) | train min (1 thread) |", "|" + "---|" * 11]
    for name, run in SWEEP.items():
        path = RESULTS / f"{name}.jsonl"
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines()]
        knn = [r for r in records if "knn_accuracy" in r]
        steps = [r for r in records if "images_per_second" in r]
        last, best = knn[-1], max(knn, key=lambda r: r["knn_accuracy"])
        speed = sorted(r["images_per_second"] for r in steps)[len(steps) // 2] if steps else float("nan")
        minutes = steps[-1]["step"] * BATCH / speed / 60 if steps else float("nan")  # at the median speed
        context = f"{100 * last['knn_context']:.1f}" if "knn_context" in last else "—"
        settings = ", ".join(f"{k}={v}" for k, v in run.overrides.items())
        rows.append(f"| {name} | {run.method} | {settings} | {100 * last['knn_accuracy']:.1f} (ep {last['epoch']:.0f}) | "
                    f"{100 * best['knn_accuracy']:.1f} ({best['epoch']:.0f}) | {context} | "
                    f"{last.get('effective_rank', float('nan')):.1f} | {last.get('top_share', float('nan')):.2f} | "
                    f"{last.get('init_correlation', float('nan')):.2f} | {speed:.0f} | {minutes:.1f} |")
    table = "\n".join(rows)
    (REPO / "study" / "sweep.md").write_text(
        f"# Sweep on EuroSAT val ({EPOCHS} epochs each, 1 on the patch-4 grid; `python study/sweep.py run`, then "
        f"`report`)\n\n{table}\n")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "report"])
    parser.add_argument("--only", nargs="*", help="run names (default: all)")
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    if args.action == "report":
        print(report())
        return 0
    ijepa = [name for name, run in SWEEP.items() if run.method == "ijepa"]
    mae = [name for name, run in SWEEP.items() if run.method == "mae"]
    # Alternate the methods, so that partial results cover both.
    interleaved = [name for pair in itertools.zip_longest(ijepa, mae) for name in pair if name is not None]
    names = args.only or interleaved
    unknown = set(names) - set(SWEEP)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}; known: {list(SWEEP)}")
    with ThreadPoolExecutor(args.parallel) as pool:
        for line in pool.map(train, names):
            print(line, flush=True)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
