"""Schedules as pure functions of the step, so a resumed run needs no scheduler state (as in MAE)."""

from __future__ import annotations

import math


def cosine(start: float, end: float, progress: float) -> float:
    """Cosine interpolation from `start` (progress 0) to `end` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float, minimum: float) -> float:
    """Linear warmup from 0 to `peak` over `warmup_steps`, then cosine decay to `minimum`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return cosine(peak, minimum, (step - warmup_steps) / max(1, total_steps - warmup_steps))


def weight_decay(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine from `start` to `end` over the run (I-JEPA: 0.04 -> 0.4)."""
    return cosine(start, end, step / max(1, total_steps))


def ema_momentum(step: int, total_steps: int, start: float, end: float) -> float:
    """Linear from `start` to `end` over the run (I-JEPA: 0.996 -> 1.0)."""
    return start + (end - start) * min(step / max(1, total_steps), 1.0)
