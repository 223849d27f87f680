"""Few-label evaluation: how well frozen embeddings classify when only part of the train split is labelled.

For each label budget (a fraction of each class's train images, or a number of images per class) and each seed:
a stratified subset of the train labels (at least one image per class), a linear probe fitted on it and a
weighted kNN (k = min(20, labelled), cosine, exp(s / 0.07)) that votes over it alone, both scored on the query
split. The probe's C is chosen on a val subset of the same per-class size, drawn with the same seed, never on
the full val labels (a user with 2 labels per class does not have 100 more to tune on); with 100 % of the labels
C is chosen on all of val, as in the main table. The unlabelled train images are used only to centre the
features (no label is read), as a user with an unlabelled archive would.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from training.knn import knn_accuracy
from training.subsets import stratified_subset

from .probe import C_GRID, fit_linear_probe, predict

DEFAULT_SEEDS = 3


def budget_name(budget: float) -> str:
    """'1%' for a fraction 0.01, '5/class' for a per-class count 5 (given as an int)."""
    return f"{budget}/class" if isinstance(budget, int) else f"{100 * budget:g}%"


def per_class_count(labels: np.ndarray, subset: np.ndarray) -> float:
    """Mean labelled images per class of a subset (the x axis of a label-efficiency curve)."""
    return len(subset) / len(np.unique(labels))


def score_budget(features: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int, budget: float,
                 seed: int) -> dict[str, float]:
    """Linear probe and kNN accuracy (fractions) on the query split with ``budget`` of the train labels."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (features[s] for s in ("train", "val", "test"))
    everything = budget == 1.0 and not isinstance(budget, int)
    labelled = np.arange(len(y_train)) if everything else stratified_subset(y_train, budget, seed)
    tune = np.arange(len(y_val)) if everything or not len(y_val) else stratified_subset(y_val, budget, seed)
    mean = x_train.mean(axis=0, keepdims=True)  # unlabelled train images: no label read
    x_lab, y_lab = x_train[labelled], y_train[labelled]
    knn = knn_accuracy(torch.from_numpy(x_lab - mean), torch.from_numpy(y_lab), torch.from_numpy(x_test - mean),
                       torch.from_numpy(y_test), num_classes, k=20, temperature=0.07)
    grid = C_GRID if len(tune) else (1.0,)
    head = fit_linear_probe(x_lab, y_lab, x_val[tune], y_val[tune], grid=grid)
    return {"linear": float((predict(head, x_test) == y_test).mean()), "kNN20": knn, "C": head["C"],
            "labelled": int(len(labelled)), "per_class": per_class_count(y_train, labelled)}


def label_efficiency(features: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int, budgets: list[float],
                     seeds: int = DEFAULT_SEEDS) -> dict[str, dict[str, float]]:
    """{budget name: {"linear", "linear_sd", "kNN20", "kNN20_sd", "labelled", "per_class", "seeds", "C"}} of one
    model: mean and sample standard deviation over ``seeds`` draws (one draw at 100 %, which has no randomness)."""
    out = {}
    for budget in budgets:
        draws = 1 if budget == 1.0 and not isinstance(budget, int) else seeds
        runs = [score_budget(features, num_classes, budget, seed) for seed in range(draws)]
        row = {"labelled": runs[0]["labelled"], "per_class": runs[0]["per_class"], "seeds": draws,
               "C": [r["C"] for r in runs]}
        for metric in ("linear", "kNN20"):
            values = np.array([r[metric] for r in runs])
            row[metric] = float(values.mean())
            row[f"{metric}_sd"] = float(values.std(ddof=1)) if draws > 1 else 0.0
        out[budget_name(budget)] = row
    return out


def markdown_table(rows: dict[str, dict[str, dict[str, float]]], archive: str, query_split: str) -> str:
    """One row per model, one column per budget: linear / kNN in %, mean ± sd over seeds."""
    budgets = list(next(iter(rows.values())))
    first = next(iter(rows.values()))
    header = [f"{b} ({first[b]['labelled']} labels, {round(first[b]['per_class'], 1):g}/class)" for b in budgets]
    lines = ["| model | " + " | ".join(header) + " |", "|---" * (len(budgets) + 1) + "|"]
    for name, row in rows.items():
        cells = [_cell(row[b]) for b in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = max(r["seeds"] for row in rows.values() for r in row.values())
    lines.append(f"\n{archive}: linear probe / kNN20 accuracy on {query_split} with a stratified subset of the "
                 f"train labels (>= 1 per class), mean ± sd over {seeds} seeds; kNN votes over the labelled subset "
                 "only; the probe's C is chosen on a val subset of the same per-class size (all of val at 100 %); "
                 "features centred on the mean of all train images (no labels).")
    return "\n".join(lines)


def _cell(r: dict[str, float]) -> str:
    if r["seeds"] == 1:
        return f"{100 * r['linear']:.1f} / {100 * r['kNN20']:.1f}"
    return f"{100 * r['linear']:.1f}±{100 * r['linear_sd']:.1f} / {100 * r['kNN20']:.1f}±{100 * r['kNN20_sd']:.1f}"


def parse_budgets(fractions: list[float] | None, per_class: list[int] | None) -> list[float]:
    """The budgets of the command line: fractions (floats) then per-class counts (ints), each checked."""
    budgets: list[float] = []
    for f in fractions or []:
        if not (0 < f <= 1) or math.isnan(f):
            raise ValueError(f"--label-fractions takes numbers in (0, 1], got {f}")
        budgets.append(float(f))
    for n in per_class or []:
        if n < 1:
            raise ValueError(f"--labels-per-class takes counts >= 1, got {n}")
        budgets.append(int(n))
    return budgets
