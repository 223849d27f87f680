"""Per-class accuracy: where two models differ, class by class, and what each takes each class for.

``python -m indexing evaluate --per-class`` keeps every row's predictions on the query split (linear probe and kNN,
as the main table scores them) and adds a table: one line a class, one column a row of the main table, sorted by
how much the second row beats the first on the linear probe, so the classes that decide a comparison sit at the
two ends; below it, each row's most frequent mistakes (true class -> predicted class).
"""

from __future__ import annotations

import numpy as np

METHODS = ("linear", "kNN20")  # the main table's classifiers whose predictions are kept


def per_class_accuracy(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy [num_classes] of ``predicted`` [N] against ``labels`` [N], class by class (the recall of each true
    class); NaN for a class with no query image."""
    right = np.bincount(labels[predicted == labels], minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    return np.where(total > 0, right / np.maximum(total, 1), np.nan)


def top_confusions(labels: np.ndarray, predicted: np.ndarray, classes: list[str], most: int = 3) -> list[dict]:
    """The ``most`` most frequent mistakes, most first: ``{"true", "predicted", "images", "share"}`` (share: of the
    true class's query images)."""
    wrong = labels != predicted
    pairs, counts = np.unique(np.stack([labels[wrong], predicted[wrong]]), axis=1, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:most]
    totals = np.bincount(labels, minlength=len(classes))
    return [{"true": classes[pairs[0, i]], "predicted": classes[pairs[1, i]], "images": int(counts[i]),
             "share": float(counts[i] / totals[pairs[0, i]])} for i in order]


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
    lead over the first (largest last); each row's three most frequent mistakes underneath."""
    rows = list(report)
    counts = np.bincount(labels, minlength=len(classes))
    first, second = rows[0], rows[min(1, len(rows) - 1)]
    order = sorted(range(len(classes)), key=lambda c: (report[second]["linear"][classes[c]]
                                                       - report[first]["linear"][classes[c]], classes[c]))
    lines = [f"| class ({split} images) | " + " | ".join(f"{row} linear / kNN" for row in rows)
             + (f" | {second} − {first}, linear |" if second != first else " |"),
             "|---" * (len(rows) + 1 + (second != first)) + "|"]
    for c in order:
        name = classes[c]
        cells = [f"{100 * report[row]['linear'][name]:.1f} / {100 * report[row]['kNN20'][name]:.1f}" for row in rows]
        lead = 100 * (report[second]["linear"][name] - report[first]["linear"][name])
        lines.append(f"| {name} ({counts[c]}) | " + " | ".join(cells) + (f" | {lead:+.1f} |" if second != first
                                                                          else " |"))
    lines.append("")
    for row in rows:
        mistakes = "; ".join(f"{m['true']} → {m['predicted']} {m['images']} ({100 * m['share']:.0f} %)"
                             for m in report[row]["confusions"]["linear"])
        lines.append(f"{row}, linear probe's most frequent mistakes: {mistakes or 'none'}")
    return "\n".join(lines)
