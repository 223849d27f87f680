"""Per-class accuracy: where two models differ, class by class, and what each takes each class for.

``python -m indexing evaluate --per-class`` keeps every row's predictions on the query split (linear probe and kNN,
as the main table scores them) and adds a table: one line a class, one column a row of the main table, sorted by
how much the second row beats the first on the linear probe, so the classes that decide a comparison sit at the
two ends; below it, each row's most frequent mistakes (true class -> predicted class).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix

METHODS = ("linear", "kNN20")  # the main table's classifiers whose predictions are kept


def per_class_accuracy(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy [num_classes] of ``predicted`` [N] against ``labels`` [N], class by class (the recall of each true
    class); NaN for a class with no query image."""
    counts = confusion_matrix(labels, predicted, labels=range(num_classes))  # [true, predicted]
    total = counts.sum(axis=1)
    return np.where(total > 0, counts.diagonal() / np.maximum(total, 1), np.nan)


def top_confusions(labels: np.ndarray, predicted: np.ndarray, classes: list[str], most: int = 3) -> list[dict]:
    """The ``most`` most frequent mistakes, most first: ``{"true", "predicted", "images", "share"}`` (share: of the
    true class's query images)."""
    counts = confusion_matrix(labels, predicted, labels=range(len(classes)))  # [true, predicted]
    mistakes = counts - np.diag(counts.diagonal())
    order = np.argsort(-mistakes, axis=None, kind="stable")[:most]
    return [{"true": classes[t], "predicted": classes[p], "images": int(mistakes[t, p]),
             "share": float(mistakes[t, p] / counts[t].sum())}
            for t, p in zip(*np.unravel_index(order, mistakes.shape)) if mistakes[t, p] > 0]


def per_class_report(labels: np.ndarray, predictions: dict[str, dict[str, np.ndarray]],
                     classes: list[str]) -> dict[str, dict]:
    """{row: {"linear": {class: accuracy}, "kNN20": {...}, "confusions": {method: top_confusions}}} from each row's
    predictions {row: {method: predicted [N]}} on the query split's ``labels`` [N]."""
    report = {}
    for row, by_method in predictions.items():
        report[row] = {method: dict(zip(classes, per_class_accuracy(labels, by_method[method], len(classes))
                                        .tolist())) for method in METHODS}
        report[row]["confusions"] = {method: top_confusions(labels, by_method[method], classes) for method in METHODS}
    return report


def markdown_table(report: dict[str, dict], labels: np.ndarray, classes: list[str], split: str) -> str:
    """Classes as lines (query images of each), rows as columns (linear / kNN, %), sorted by the second row's linear
    lead over the first (largest last; with one row, by name); each row's three most frequent mistakes underneath."""
    rows = list(report)
    counts = np.bincount(labels, minlength=len(classes))

    def lead(name: str) -> float:  # the second row's linear lead over the first on one class, in points
        return 100 * (report[rows[1]]["linear"][name] - report[rows[0]]["linear"][name]) if len(rows) > 1 else 0.0

    header = [f"{row} linear / kNN" for row in rows] + ([f"{rows[1]} − {rows[0]}, linear"] if len(rows) > 1 else [])
    lines = [f"| class ({split} images) | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for name, count in sorted(zip(classes, counts), key=lambda item: (lead(item[0]), item[0])):
        cells = [f"{100 * report[row]['linear'][name]:.1f} / {100 * report[row]['kNN20'][name]:.1f}" for row in rows]
        cells += [f"{lead(name):+.1f}"] if len(rows) > 1 else []
        lines.append(f"| {name} ({count}) | " + " | ".join(cells) + " |")
    lines.append("")
    for row in rows:
        mistakes = "; ".join(f"{m['true']} → {m['predicted']} {m['images']} ({100 * m['share']:.0f} %)"
                             for m in report[row]["confusions"]["linear"])
        lines.append(f"{row}, linear probe's most frequent mistakes: {mistakes or 'none'}")
    return "\n".join(lines)
