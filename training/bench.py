"""Training throughput benchmark: images/s and model FLOP utilisation (MFU) of one real training step.

MFU = (FLOPs of one step, counted by torch.utils.flop_counter) x (steps/s) / peak, where the peak is the best
dense 2048x2048 matmul measured in the same run on the same machine: fp32 (as the reference figures in
NOTES.md) and, where the device has it natively, bf16. The step is the training loop's own
(`learner.Learner.train_step`: augmentation, masks, forward, backward, AdamW, EMA) on a synthetic batch, so
data loading is excluded (training preloads small archives into memory).

`compare=True` also times the step as it was before mixed precision and the CPU attention change (fp32,
PyTorch's fused attention kernel, the paper's one-sequence-per-target predictor), interleaved with the
configured step in the same process, and prints the paired ratio. `profile=True` prints where the time of the
configured step goes (torch.profiler, operators by self time).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.config import TrainConfig
from training.distributed import pick_device
from training.learner import Learner
from training.models import use_explicit_attention
from training.precision import native_bf16


def matmul_peak(size: int = 2048, repeats: int = 10, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> float:
    """Best dense matmul rate of `dtype`, FLOP/s."""
    device = device or torch.device("cpu")
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
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


def previous_step(config: TrainConfig, device: torch.device) -> Learner:
    """The step as it was before (fp32, fused attention, the paper's per-target predictor sequences)."""
    old = dataclasses.replace(config, bf16=False, ijepa=dataclasses.replace(config.ijepa, shared_context=False))
    learner = _learner(old, device)
    use_explicit_attention(learner.model, explicit=False)
    return learner


def _learner(config: TrainConfig, device: torch.device) -> Learner:
    torch.manual_seed(config.seed)
    channels = torch.ones(config.model.in_chans)
    return Learner(config, device, mean=channels * 0.5, std=channels * 0.25)


def _time_steps(learner: Learner, raw: torch.Tensor, first_step: int, steps: int) -> float:
    """Seconds for `steps` training steps."""
    _sync(learner.device)
    start = time.perf_counter()
    for step in range(first_step, first_step + steps):
        learner.train_step(raw, step % 1000, 1000, 100)
    _sync(learner.device)
    return time.perf_counter() - start


def _profile(learner: Learner, raw: torch.Tensor, print_fn) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if learner.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        _time_steps(learner, raw, 500, 5)
    print_fn(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def run_benchmark(config: TrainConfig, steps: int = 30, warmup: int = 5, compare: bool = False,
                  rounds: int = 3, profile: bool = False, print_fn=print) -> dict[str, float]:
    """Time `steps` training steps after `warmup` (with `compare`: `rounds` interleaved rounds of `steps`
    each, previous and configured step alternating); print the figures, last line
    `<method>: <images/s> img/s, MFU <fraction>` (MFU of the fp32 peak); return them."""
    device = pick_device(config.device)
    m = config.model
    learner = _learner(config, device)
    raw = torch.rand(config.batch_size, m.in_chans, m.img_size, m.img_size)
    learners = {"new": learner, **({"previous": previous_step(config, device)} if compare else {})}
    flops = {name: step_flops(each, raw) for name, each in learners.items()}
    for each in learners.values():
        _time_steps(each, raw, 0, warmup)
    has_bf16 = native_bf16(device)
    peaks = [matmul_peak(device=device)]
    bf16_peaks = [matmul_peak(device=device, dtype=torch.bfloat16)] if has_bf16 else []
    seconds: dict[str, list[float]] = {name: [] for name in learners}
    for round_ in range(rounds if compare else 1):
        order = list(learners) if round_ % 2 == 0 else list(reversed(learners))
        for name in order:
            seconds[name].append(_time_steps(learners[name], raw, warmup + round_ * steps, steps))
    peaks.append(matmul_peak(device=device))
    peak = max(peaks)
    # where bf16 is not native it is emulated (~1 % of fp32): measured once and small, shown, never used for MFU
    emulated = {} if has_bf16 else dict(size=512, repeats=2)
    bf16_peaks.append(matmul_peak(device=device, dtype=torch.bfloat16, **emulated))
    bf16_peak = max(bf16_peaks)
    rate = {name: steps * config.batch_size / statistics.median(s) for name, s in seconds.items()}

    print_fn(f"device {device}, {torch.get_num_threads()} threads, batch {config.batch_size}, "
             f"{m.img_size} px, patch {m.patch_size}, width {m.embed_dim}, depth {m.depth}; "
             f"precision {learner.precision}")
    print_fn(f"matmul 2048^2 peak: fp32 {peak / 1e9:.1f} GFLOP/s"
             + f", bf16 {bf16_peak / 1e9:.1f} GFLOP/s"
             + ("" if has_bf16 else " (emulated, at 512^2: no native bf16 here, so training runs in fp32)"))
    images_per_second = rate["new"]
    achieved = flops["new"] * images_per_second / config.batch_size
    mfu = achieved / peak
    print_fn(f"step: {flops['new'] / 1e9:.2f} GFLOP, {config.batch_size / images_per_second * 1e3:.1f} ms; "
             f"achieved {achieved / 1e9:.1f} GFLOP/s"
             + (f"; MFU of the bf16 peak {achieved / bf16_peak:.2f}" if has_bf16 else ""))
    result = {"images_per_second": images_per_second, "mfu": mfu, "step_flops": flops["new"], "peak_flops": peak,
              "bf16_peak_flops": bf16_peak if has_bf16 else None}
    if compare:
        ratios = [old / new for new, old in zip(seconds["new"], seconds["previous"])]
        old_mfu = flops["previous"] * rate["previous"] / config.batch_size / peak
        print_fn(f"previous step (fp32, fused attention, per-target predictor): {rate['previous']:.1f} img/s, "
                 f"{flops['previous'] / 1e9:.2f} GFLOP, MFU {old_mfu:.2f}")
        print_fn(f"new / previous: {statistics.median(ratios):.2f}x (rounds: "
                 + ", ".join(f"{r:.2f}" for r in ratios) + ")")
        result.update(previous_images_per_second=rate["previous"], ratio=statistics.median(ratios))
    if profile:
        _profile(learner, raw, print_fn)
    print_fn(f"{config.method}: {images_per_second:.1f} img/s, MFU {mfu:.2f}")
    return result
