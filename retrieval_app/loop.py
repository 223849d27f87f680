"""The analyst's loop: start from a few examples, mark results right (✓) or wrong (✗), rank the archive again.

The loop of Earth Index, geovibes and ArcGIS "Find Similar", on the archive's stored embeddings (the catalogue's
L2-normalised float32 vectors, scored exactly and vectorised, never through the approximate index). A ranker turns
the marks into one score per archive vector:

* ``rocchio``: the query moved towards the ✓ and away from the ✗ (Rocchio 1971): q = mean(examples ∪ ✓) −
  β · mean(✗); score = cosine(q, x).
* ``logistic``: a logistic regression on the marked vectors (examples and ✓ positive, ✗ negative) plus unmarked
  archive vectors drawn at random as weak negatives (down-weighted: a few of them are positives); score = its
  decision function.
* ``nearest``: each vector's mean cosine to its 3 most similar positives minus β · its cosine to the most similar ✗
  (several prototypes: a class that looks two ways is found from both).

``simulate`` is the benchmark's analyst (``benchmarks/bench_loop.py``): every round it marks the top unmarked
results by their true label.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Weight of the ✗ marks in ``rocchio`` and ``nearest``.
BETA = 0.5
#: Random unmarked vectors used as weak negatives by ``logistic``, and their total weight relative to the marks.
WEAK_NEGATIVES = 1000
WEAK_WEIGHT = 0.3
#: The logistic regression's inverse regularisation (these three: the best of a grid on EuroSAT val,
#: ``python benchmarks/bench_loop.py --tune``).
LOGISTIC_C = 10.0


def rocchio(vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray, beta: float = BETA) -> np.ndarray:
    """Scores [N] of archive vectors [N, D] (L2-normalised) against the Rocchio query of positives [P, D] (the
    examples and the ✓) and negatives [M, D] (the ✗; M may be 0)."""
    query = positives.mean(axis=0)
    if len(negatives):
        query = query - beta * negatives.mean(axis=0)
    return vectors @ (query / max(np.linalg.norm(query), 1e-12))


def logistic(vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray, weak: int = WEAK_NEGATIVES,
             seed: int = 0, c: float = LOGISTIC_C, weak_weight: float = WEAK_WEIGHT) -> np.ndarray:
    """Scores [N]: decision function of a logistic regression (inverse regularisation ``c``) on positives and
    negatives plus ``weak`` archive vectors drawn at random as weak negatives (their total weight ``weak_weight`` x
    the positives')."""
    from sklearn.linear_model import LogisticRegression

    x, y, weights = marks_with_weak_negatives(vectors, positives, negatives, weak, weak_weight, seed)
    model = LogisticRegression(C=c, max_iter=200, class_weight="balanced").fit(x, y, sample_weight=weights)
    return vectors @ model.coef_[0] + model.intercept_[0]


def marks_with_weak_negatives(vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray,
                              weak: int = WEAK_NEGATIVES, weak_weight: float = WEAK_WEIGHT, seed: int = 0
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A classifier's training set from the marks: (x [P + M + W, D], y [P + M + W] 1 for positives, sample weights
    [P + M + W]) with ``weak`` archive vectors drawn at random as negatives of total weight ``weak_weight`` x P."""
    drawn = vectors[np.random.default_rng(seed).choice(len(vectors), size=min(weak, len(vectors)), replace=False)]
    x = np.concatenate([positives, negatives, drawn])
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives) + len(drawn))])
    weights = np.concatenate([np.ones(len(positives) + len(negatives)),
                              np.full(len(drawn), weak_weight * len(positives) / max(len(drawn), 1))])
    return x, y, weights


def nearest(vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray, beta: float = BETA, top: int = 3
            ) -> np.ndarray:
    """Scores [N]: mean cosine to the ``top`` most similar positives minus beta x cosine to the closest negative."""
    sims = vectors @ positives.T  # [N, P]
    top = min(top, sims.shape[1])
    score = -np.partition(-sims, top - 1, axis=1)[:, :top].mean(axis=1)
    if len(negatives):
        score = score - beta * (vectors @ negatives.T).max(axis=1)
    return score


Ranker = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
RANKERS: dict[str, Ranker] = {"rocchio": rocchio, "logistic": logistic, "nearest": nearest}


def ranked(scores: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best scores [N], best first, leaving out the rows in ``exclude``."""
    scores = scores.astype(np.float64, copy=True)
    scores[exclude] = -np.inf
    k = min(k, int(np.isfinite(scores).sum()))
    top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, np.int64)
    return top[np.argsort(-scores[top], kind="stable")]


def simulate(vectors: np.ndarray, labels: np.ndarray, start: int, ranker: str | Ranker, rounds: int = 3,
             marks_per_round: int = 20, page: int = 100) -> list[dict[str, float]]:
    """One simulated analyst looking for ``labels[start]``'s class from tile ``start``.

    Each round ranks the archive, shows the top ``page`` unmarked tiles and marks the top ``marks_per_round`` of
    them by their true label. Returns per round (0 = the single query), as fractions: ``precision@100`` of the
    next page of unmarked tiles (the strict measure: what the analyst is shown next), ``finds@100`` the precision of
    the first 100 finds (the confirmed ✓ first, then the ranking, the ✗ left out: what Find all keeps), and
    ``recall`` = the class found when taking as many finds as the class has members (R-precision of the finds)."""
    target = labels[start]
    members = int((labels == target).sum())
    positives, negatives, out = [start], [], []
    for round_ in range(rounds + 1):
        rank = RANKERS[ranker] if isinstance(ranker, str) else ranker
        scores = rank(vectors, vectors[positives], vectors[negatives])
        marked = np.array(positives + negatives)
        page_rows = ranked(scores, marked, page)
        finds = ranked(scores, marked, max(members - len(positives), 0))
        found = len(positives) + int((labels[finds] == target).sum())
        first_finds = min(page, len(positives)) + int((labels[page_rows[: max(page - len(positives), 0)]] == target).sum())
        out.append({"round": round_, "precision@100": float((labels[page_rows] == target).mean()),
                    "finds@100": first_finds / page, "recall": found / members})
        for row in page_rows[:marks_per_round]:
            (positives if labels[row] == target else negatives).append(int(row))
    return out
