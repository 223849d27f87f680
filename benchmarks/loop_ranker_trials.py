"""Rankers tried for the analyst's loop beside the shipped ``logistic``, on val only (never the loop benchmark's
EuroSAT test or AID train):

    python benchmarks/loop_ranker_trials.py [--models ijepa mae mae-aid] [--starts 8]

Each trial is scored with the same starting tiles as ``logistic`` (``--starts`` per class, seeded) and the
simulated analyst of ``benchmarks/bench_loop.py`` (3 rounds, 20 marks a round); printed: finds P@k and next-page
P@k after round 3 (k = 100 on EuroSAT val, 50 on AID val, whose classes have ~67 scenes), and each trial's paired
difference from ``logistic`` ± its standard error over the starts. The trials:

* ``diffusion kK aA``: the logistic's probabilities smoothed over the archive's K-nearest-neighbour graph
  (f = A · S f + (1 − A) · f0, S the symmetrically normalised graph; Zhou et al. 2004), K 10 / 20, A 0.5 / 0.8;
* ``logistic, standardised`` / ``whitened``: the same ranker on the archive's vectors standardised per dimension
  or PCA-whitened first (statistics of the archive, no labels);
* ``svm re-rank``: an RBF support-vector machine on the same marks and weak negatives, re-ranking the logistic's top
  2,000;
* ``blend wW``: z-scored logistic + W × z-scored ``nearest``.

The vectors: each model's ONNX embedding of the val split (``python -m indexing evaluate``'s cache in
``index/<model>/``, made here if absent), L2-normalised as the catalogue stores them. Not a test.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
from scipy import sparse

from retrieval_app.loop import logistic, marks_with_weak_negatives, nearest, simulate

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
#: model -> the archive whose val split it is tried on
ARCHIVE_OF = {"ijepa": "eurosat-rgb", "mae": "eurosat-rgb", "mae-aid": "aid", "ijepa-aid": "aid"}


def val_vectors(model: str) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [N, D] L2-normalised, labels [N]) of the val split of the model's archive: ``indexing evaluate``'s
    cached features (``index/<model>/``), embedded once if absent."""
    from indexing.encoders import OnnxEncoder
    from indexing.evaluate import split_features

    encoder = OnnxEncoder(REPO / "assets" / "models" / model)
    x, y, _ = split_features(SHARED / ARCHIVE_OF[model], "val", REPO / "index" / model,
                             encoder.embed, {"name": model, "model": encoder.identity}, encoder.input_size,
                             encoder.card.get("band_indices"))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def normalised_graph(x: np.ndarray, k: int) -> sparse.csr_matrix:
    """D^-1/2 W D^-1/2 of the symmetric k-nearest-neighbour graph of x [N, D] (cosine weights, clipped at 0)."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    neighbours = np.argpartition(-sims, k, axis=1)[:, :k]
    weights = np.take_along_axis(sims, neighbours, axis=1).clip(0)
    n = len(x)
    w = sparse.csr_matrix((weights.ravel(), (np.repeat(np.arange(n), k), neighbours.ravel())), shape=(n, n))
    w = w.maximum(w.T)
    degree = np.asarray(w.sum(axis=1)).ravel()
    scale = sparse.diags(1 / np.sqrt(np.maximum(degree, 1e-12)))
    return scale @ w @ scale


def diffusion(graph: sparse.csr_matrix, alpha: float, vectors, positives, negatives, steps: int = 20):
    f0 = 1 / (1 + np.exp(-logistic(vectors, positives, negatives)))
    f = f0
    for _ in range(steps):
        f = alpha * (graph @ f) + (1 - alpha) * f0
    return f


def svm_rerank(vectors, positives, negatives, top: int = 2000):
    from sklearn.svm import SVC

    base = logistic(vectors, positives, negatives)
    candidates = np.argpartition(-base, min(top, len(base) - 1))[:top]
    x, y, w = marks_with_weak_negatives(vectors, positives, negatives)
    svm = SVC(C=10.0, kernel="rbf", class_weight="balanced").fit(x, y, sample_weight=w)
    scores = base.copy()  # [N] the rest stay in the logistic's order, below every re-ranked candidate
    rescored = svm.decision_function(vectors[candidates])
    scores[candidates] = rescored - rescored.min() + base.max() + 1
    return scores


def blend(weight: float, vectors, positives, negatives):
    def z(s):
        return (s - s.mean()) / s.std()
    return z(logistic(vectors, positives, negatives)) + weight * z(nearest(vectors, positives, negatives))


def standardised(x: np.ndarray) -> np.ndarray:
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def whitened(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0)
    values, vecs = np.linalg.eigh(np.cov(centred.T))
    z = centred @ vecs / np.sqrt(values + 1e-6 * values.max())
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def last_round(vectors, labels, starts, ranker, page) -> np.ndarray:
    """[starts, 2] finds P@page and next-page P@page after round 3."""
    runs = [simulate(vectors, labels, s, ranker, page=page)[-1] for s in starts]
    return np.array([[r["finds@100"], r["precision@100"]] for r in runs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ijepa", "mae", "mae-aid"], choices=list(ARCHIVE_OF))
    parser.add_argument("--starts", type=int, default=8, help="starting tiles per class")
    args = parser.parse_args()
    print("| model (val) | ranker | finds P@k | Δ vs logistic | next page P@k | Δ vs logistic |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        x, y = val_vectors(model)
        page = 50 if ARCHIVE_OF[model] == "aid" else 100
        rng = np.random.default_rng(11)
        starts = [int(s) for c in np.unique(y) for s in rng.choice(np.flatnonzero(y == c), args.starts, replace=False)]
        trials = {"logistic": (x, logistic)}
        for k in (10, 20):
            graph = normalised_graph(x, k)
            for alpha in (0.5, 0.8):
                trials[f"diffusion k{k} a{alpha}"] = (x, functools.partial(diffusion, graph, alpha))
        trials["logistic, standardised"] = (standardised(x), logistic)
        trials["logistic, whitened"] = (whitened(x), logistic)
        trials["svm re-rank"] = (x, svm_rerank)
        for weight in (0.5, 1.0):
            trials[f"blend w{weight}"] = (x, functools.partial(blend, weight))
        base = None
        for name, (vectors, ranker) in trials.items():
            scores = last_round(vectors, y, starts, ranker, page)
            base = scores if base is None else base
            delta = scores - base
            se = delta.std(axis=0, ddof=1) / np.sqrt(len(delta)) if name != "logistic" else np.zeros(2)
            cells = [f"{scores[:, i].mean():.3f} | {delta[:, i].mean():+.3f} ± {se[i]:.3f}" for i in (0, 1)]
            print(f"| {model} (k={page}) | {name} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
