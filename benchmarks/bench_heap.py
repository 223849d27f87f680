"""A training step with glibc's malloc thresholds ÷ with the heap kept (training/heap.py), on the real step.

    python benchmarks/bench_heap.py [--data ../shared/data/aid] [--steps 6] [--rounds 2] [--set KEY=VALUE ...]

Each round runs `python -m training finetune` twice in child processes, once with ``SATJEPA_HEAP=glibc`` (glibc's own
policy) and once without (the heap kept), in alternating order, and reads the seconds of its training steps from the
run's metrics (loading, the frozen probe and the one val measurement are not counted). Default: AID at 128 px, 1 %
of the labels, FixMatch with its EMA teacher (the step that showed the problem: 60 labelled + 120 unlabelled images
with gradients a step), fp32 or bf16 as the machine has it, one thread. Prints each child's step time, its CPU
time in user and kernel space, page faults and peak memory, and the paired ratio glibc / kept (> 1: the kept heap is
faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

AID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aid"
STEP = ["--init", "mae-aid", "--label-fraction", "0.01", "--set", "lr=0.008", "--set", "fixmatch=1.0",
        "--set", "fixmatch_ema=0.99", "--set", "evaluations=1", "--set", "val_images=100"]


def timed_run(data: Path, steps: int, sets: list[str], threads: int, heap: str, out: Path) -> dict[str, float]:
    """One `python -m training finetune` child; its step seconds and resource use."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("SATJEPA_HEAP", None)
    log = out.with_suffix(".log")
    if heap == "glibc":
        env["SATJEPA_HEAP"] = "glibc"
    with log.open("w") as errors:
        child = subprocess.Popen([sys.executable, "-m", "training", "finetune", "--data", str(data), "--max-steps",
                                  str(steps), "--out", str(out), "--no-export", *STEP,
                                  *(arg for kv in sets for arg in ("--set", kv))],
                                 env=env, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource use
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"python -m training finetune failed:\n{log.read_text()[-3000:]}")
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return {"step_seconds": last["train_seconds"] / last["step"], "user": usage.ru_utime, "kernel": usage.ru_stime,
            "faults": usage.ru_minflt, "peak_gb": usage.ru_maxrss / 2**20}  # ru_maxrss in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=AID)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more fine-tuning settings")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: no archive there; pass --data (the default is ../shared/data/aid)")
    seconds: dict[str, list[float]] = {"glibc": [], "kept": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for heap in ("glibc", "kept") if round_ % 2 == 0 else ("kept", "glibc"):
                r = timed_run(args.data, args.steps, args.set, args.threads, heap, Path(tmp) / f"{heap}-{round_}")
                seconds[heap].append(r["step_seconds"])
                print(f"round {round_ + 1}, {heap:5s} heap: {r['step_seconds']:6.2f} s a step; whole child: user "
                      f"{r['user']:6.1f} s, kernel {r['kernel']:6.1f} s, {r['faults'] / 1e6:5.2f} M page faults, "
                      f"peak memory {r['peak_gb']:.1f} GB", flush=True)
    ratios = [old / new for old, new in zip(seconds["glibc"], seconds["kept"])]
    print(f"{args.steps} steps a child, {args.threads} thread(s); step time glibc / kept = "
          f"{statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
