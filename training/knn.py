"""Weighted kNN classification on L2-normalised embeddings (Wu et al. 2018; DINO's `knn_classifier`):
each of the k nearest training embeddings votes for its class with weight exp(cosine / temperature)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores [Q, num_classes] (rows sum to 1) for queries [Q, D] against train [N, D], labels [N]."""
    train = F.normalize(train.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sims, idx = (q @ train.T).topk(k, dim=1)  # [q, k]
        weights = (sims / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes).scatter_add_(1, train_labels[idx], weights)
        scores.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(scores)


def knn_accuracy(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy (fraction) of `knn_predict`."""
    predicted = knn_predict(train, train_labels, queries, num_classes, k, temperature).argmax(dim=1)
    return (predicted == query_labels).float().mean().item()
