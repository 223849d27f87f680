"""Retrieval metrics: P@k and mAP@k with AP@k normalised by min(k, R) (the definition used across the project).

AP@k = (1 / min(k, R)) * sum_{i <= k} P@i * rel_i, where rel_i = 1 if the i-th result has the query's class,
P@i = (relevant among the first i) / i and R = number of archive images of the query's class. mAP@k is the mean
over queries (queries with R = 0 count as 0). When k covers the whole archive this is the usual average precision
(scikit-learn's ``average_precision_score`` on the query's similarity scores, without ties).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFINITION = ("AP@k = (1/min(k, R)) * sum_{i<=k} P@i * rel_i, R = relevant (same-class) images in the archive; "
              "mAP@k = mean over queries; P@k = relevant among the top k / k")


def average_precision_at_k(relevance: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k [Q] from ranked relevance [Q, >= k] (bool/0-1, best first) and R [Q]."""
    rel = np.asarray(relevance, dtype=np.float64)[:, :k]  # [Q, k]
    precision = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)  # P@i, [Q, k]
    denominator = np.minimum(k, np.asarray(n_relevant, dtype=np.float64))
    return np.where(denominator > 0, (precision * rel).sum(axis=1) / np.maximum(denominator, 1), 0.0)


def precision_at_k(relevance: np.ndarray, k: int) -> np.ndarray:
    """P@k [Q] from ranked relevance [Q, >= k]."""
    return np.asarray(relevance, dtype=np.float64)[:, :k].sum(axis=1) / k


@torch.no_grad()
def ranked_relevance(queries: np.ndarray, query_labels: np.ndarray, archive: np.ndarray,
                     archive_labels: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Relevance bool [Q, k] of each query's top-k archive images by cosine similarity (queries [Q, D],
    archive [N, D], any scale: rows are L2-normalised here)."""
    a = F.normalize(torch.as_tensor(archive, dtype=torch.float32), dim=1)  # [N, D]
    a_labels = torch.as_tensor(archive_labels)
    k = min(k, a.shape[0])
    out = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(torch.as_tensor(queries[start:start + chunk], dtype=torch.float32), dim=1)  # [q, D]
        top = (q @ a.T).topk(k, dim=1).indices  # [q, k]
        out.append((a_labels[top] == torch.as_tensor(query_labels[start:start + chunk])[:, None]).numpy())
    return np.concatenate(out)


def retrieval_metrics(queries: np.ndarray, query_labels: np.ndarray, archive: np.ndarray,
                      archive_labels: np.ndarray, ks: tuple[int, ...] = (10, 20, 100)) -> dict[str, float]:
    """``{"mAP@k": ..., "P@k": ...}`` for each k in ``ks`` (fractions in [0, 1]); relevant = same label."""
    relevance = ranked_relevance(queries, query_labels, archive, archive_labels, max(ks))
    counts = np.bincount(np.asarray(archive_labels), minlength=int(max(query_labels.max(), archive_labels.max())) + 1)
    n_relevant = counts[np.asarray(query_labels)]
    out = {}
    for k in ks:
        out[f"mAP@{k}"] = float(average_precision_at_k(relevance, n_relevant, k).mean())
        out[f"P@{k}"] = float(precision_at_k(relevance, k).mean())
    return out
