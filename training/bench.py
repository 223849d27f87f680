"""Training throughput benchmark: images/s and model FLOP utilisation (MFU) of one real training step.

MFU = (FLOPs of one step, counted by torch.utils.flop_counter) x (steps/s) / peak, where the peak is the best
dense 2048x2048 fp32 matmul measured in the same run on the same machine — the reference figures in
NOTES.md are measured the same way. The step is the training loop's own (`engine.Learner.train_step`:
augmentation, masks, forward, backward, AdamW, EMA) on a synthetic batch, so data loading is excluded
(training preloads small archives into memory).
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.config import TrainConfig
from training.engine import Learner, pick_device


def matmul_peak(size: int = 2048, repeats: int = 10, device: torch.device | None = None) -> float:
    """Best dense fp32 matmul rate, FLOP/s."""
    device = device or torch.device("cpu")
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(learner: Learner, raw: torch.Tensor) -> int:
    """FLOPs of one training step (forward + backward), counted by PyTorch's flop counter."""
    with FlopCounterMode(display=False) as counter:
        learner.train_step(raw, 0, 1000, 100)
    return counter.get_total_flops()


def run_benchmark(config: TrainConfig, steps: int = 30, warmup: int = 5, print_fn=print) -> dict[str, float]:
    """Time `steps` training steps after `warmup`; print the figures, last line
    `<method>: <images/s> img/s, MFU <fraction>`; return them."""
    device = pick_device(config.device)
    m = config.model
    torch.manual_seed(config.seed)
    channels = torch.ones(m.in_chans)
    learner = Learner(config, device, mean=channels * 0.5, std=channels * 0.25)
    raw = torch.rand(config.batch_size, m.in_chans, m.img_size, m.img_size)
    flops = step_flops(learner, raw)
    for step in range(warmup):
        learner.train_step(raw, step, 1000, 100)
    peak_before = matmul_peak(device=device)
    _sync(device)
    start = time.perf_counter()
    for step in range(steps):
        learner.train_step(raw, warmup + step, 1000, 100)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = max(peak_before, matmul_peak(device=device))
    images_per_second = steps * config.batch_size / seconds
    achieved = flops * steps / seconds
    mfu = achieved / peak
    print_fn(f"device {device}, {torch.get_num_threads()} threads, batch {config.batch_size}, "
             f"{m.img_size} px, patch {m.patch_size}, width {m.embed_dim}, depth {m.depth}")
    print_fn(f"step: {flops / 1e9:.2f} GFLOP, {seconds / steps * 1e3:.1f} ms; achieved {achieved / 1e9:.1f} GFLOP/s; "
             f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print_fn(f"{config.method}: {images_per_second:.1f} img/s, MFU {mfu:.2f}")
    return {"images_per_second": images_per_second, "mfu": mfu, "step_flops": flops, "peak_flops": peak}
