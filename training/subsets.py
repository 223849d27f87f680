"""Stratified label subsets: the few-label settings of the label-efficiency study (fine-tuning, probes)."""

from __future__ import annotations

import numpy as np


def stratified_subset(labels: np.ndarray, budget: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified random subset of ``labels`` [N]: per class ``budget`` images (an int) or
    ``round(budget * count)`` of them (a float in (0, 1]); at least one per class, at most all of it."""
    if isinstance(budget, float) and not 0 < budget <= 1:
        raise ValueError(f"a label fraction must be in (0, 1], got {budget}")
    if isinstance(budget, int) and budget < 1:
        raise ValueError(f"labels per class must be >= 1, got {budget}")
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = budget if isinstance(budget, int) else round(budget * len(members))
        picks.append(rng.choice(members, size=min(max(1, n), len(members)), replace=False))
    return np.sort(np.concatenate(picks))
