"""FAISS side of an index: choose the spec, train, add with the catalogue's ids, write atomically, search.

Vectors are L2-normalised and compared by inner product (= cosine). The spec is an index-factory string stored
in the manifest with ``nprobe``, chosen by archive size (:func:`choose_spec`):

* below 10k vectors, exact search (``"IDMap2,Flat"``, 4 D + 16 bytes per vector);
* while the float32 vectors take at most 1 GiB (~1.3 M at D = 192), ``"IVF<nlist>,Flat"`` (4 D + 8 bytes);
* above, a compressed ``"IVF<nlist>,RaBitQ2"``: 2-bit RaBitQ codes of the residuals (D / 4 bytes + 2 floats +
  the id, ~70 bytes at D = 192), whose top ``30 k`` candidates are re-scored exactly on the float16 vectors
  kept on disk (:mod:`indexing.vector_store`), so recall stays high while RAM holds only the codes. Measured
  against 4-bit fast-scan PQ (``PQ48x4fs``, ``PQ96x4fsr``, ``OPQ48``), SQ4 and 1- / 3-bit RaBitQ on real +
  synthetic embeddings (``benchmarks/bench_scale.py --compare-codes 2e5``): PQ re-ranked reached 0.60-0.91
  recall@10 on these whitened embeddings, RaBitQ2 re-ranked 0.96-0.98 at 2x PQ48's bytes.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import faiss
import numpy as np

from .vector_store import VectorStore, rerank

logger = logging.getLogger(__name__)

EXACT_BELOW = 10_000  # archives with fewer vectors use exact search
MIN_PER_LIST = 39  # FAISS warns below 39 training points per centroid
MAX_PER_LIST = 64  # training vectors per centroid beyond which IVF training subsamples
EXACT_SPEC = "IDMap2,Flat"
FLAT_MAX_BYTES = 1 << 30  # IVF-Flat while its float32 vectors take at most this; compressed codes above
COMPRESSED_CODES = "RaBitQ2"  # the codes of the compressed tier (see the module docstring)
RERANK_FACTOR = 30  # a compressed index re-scores k x this candidates exactly on the stored vectors (10: recall
# 0.945-0.962 at nprobe 16-64 on 1 M real + synthetic vectors, 30: 0.962-0.986, for 0.2 ms more per query; an
# ad-hoc check re-ranking on float32, before the store was float16)
RECALL_TARGET = 0.95  # a compressed index's default nprobe: the smallest reaching this recall@10 at build time
NPROBE_LADDER = (8, 16, 32, 64, 128, 256)
STALL_GAIN = 0.005  # ... or, where the climb stalls first (doubling nprobe adds less recall@10 than this: the
# re-rank depth, not nprobe, bounds recall there), the nprobe before the stall. At 100 M vectors the target was
# out of reach: 0.944 / 0.946 / 0.947 at nprobe 64 / 128 / 256, each doubling ~1.8x the latency.


def choose_spec(n: int, dim: int = 192) -> tuple[str, int]:
    """``(factory string, nprobe)`` for ``n`` vectors of ``dim``: exact below :data:`EXACT_BELOW`; IVF-Flat
    with nlist ~ 4 sqrt(n) (n >= 39 nlist) and nprobe = nlist / 16 (at least 8) while the vectors fit in
    :data:`FLAT_MAX_BYTES`; above, IVF with nlist the power of two nearest sqrt(n) over 2-bit RaBitQ codes,
    nprobe 32 (the build then calibrates it: :func:`calibrate_nprobe`)."""
    if n < EXACT_BELOW:
        return EXACT_SPEC, 0
    if n * dim * 4 <= FLAT_MAX_BYTES:
        nlist = max(1, min(int(4 * math.sqrt(n)), n // MIN_PER_LIST))
        return f"IVF{nlist},Flat", min(nlist, max(8, nlist // 16))
    nlist = min(1 << 16, 2 ** round(math.log2(math.sqrt(n))))
    return f"IVF{nlist},{COMPRESSED_CODES}", 32


def is_ivf(spec: str) -> bool:
    return spec.upper().startswith(("IVF", "OPQ", "PCA"))


def is_compressed(spec: str) -> bool:
    """Whether ``spec`` stores lossy codes (PQ, scalar quantisers, RaBitQ) rather than the vectors."""
    return bool(re.search(r"PQ\d|SQ\d|RaBitQ|LSH", spec, re.IGNORECASE))


def nlist_of(spec: str) -> int:
    match = re.search(r"IVF(\d+)", spec)
    return int(match[1]) if match else 0


def train_index(spec: str, train: np.ndarray) -> faiss.Index:
    """An empty index of ``spec`` (inner product), trained on ``train`` float32 [N, D] when it needs training.

    Raises:
        ValueError: fewer than 39 training vectors per IVF list.
    """
    index = faiss.index_factory(train.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        nlist = nlist_of(spec)
        if len(train) < MIN_PER_LIST * nlist:
            raise ValueError(f"{spec} needs >= {MIN_PER_LIST * nlist} training vectors ({MIN_PER_LIST} per list), "
                             f"got {len(train)}: choose a smaller nlist or the exact spec {EXACT_SPEC!r}.")
        if len(train) > MAX_PER_LIST * nlist:  # more does not help k-means; a seeded subset keeps builds repeatable
            pick = np.sort(np.random.default_rng(0).choice(len(train), MAX_PER_LIST * nlist, replace=False))
            train = train[pick]
        logger.info("training %s on %d vectors", spec, len(train))
        index.train(np.ascontiguousarray(train, dtype=np.float32))
    return index


def build_index(spec: str, nprobe: int, ids: np.ndarray, vectors: np.ndarray, trained: faiss.Index | None = None
                ) -> faiss.Index:
    """Index of ``vectors`` float32 [N, D] under ``ids`` int64 [N] (trained on them unless ``trained`` given)."""
    index = faiss.clone_index(trained) if trained is not None else train_index(spec, vectors)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, np.int64))
    set_nprobe(index, nprobe)
    return index


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF part of ``index``, or None for flat / IDMap indexes."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    ivf = ivf_of(index)
    if nprobe > 0 and ivf is not None:
        ivf.nprobe = nprobe


def write_atomic(index: faiss.Index, path: Path) -> None:
    """Write ``index`` to ``path`` via a temporary file, fsync and ``os.replace``: readers see old or new."""
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def search(index: faiss.Index, queries: np.ndarray, k: int, nprobe: int = 0,
           allowed: np.ndarray | None = None, store: VectorStore | None = None,
           rerank_factor: int = RERANK_FACTOR) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores [Q, k], ids [Q, k])`` (id -1 = no result), optionally only among ``allowed`` ids.

    For IVF indexes, ``nprobe`` doubles until every query has ``min(k, candidates)`` results, so a filter never
    returns fewer results than exist (at ``nprobe = nlist`` the search is exhaustive). With a ``store`` (a
    compressed index), ``k * rerank_factor`` candidates come from the codes and are re-scored exactly on the
    stored vectors; the scores returned are then exact inner products.
    """
    if store is not None:
        _, candidates = search(index, queries, k * rerank_factor, nprobe, allowed)
        return rerank(store, np.ascontiguousarray(queries, dtype=np.float32), candidates, k)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64)) if allowed is not None else None
    available = index.ntotal if allowed is None else len(allowed)
    want = min(k, available)
    ivf = ivf_of(index)
    probe = nprobe or (ivf.nprobe if ivf is not None else 0)
    while True:
        if ivf is not None:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=probe)
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        scores, ids = index.search(queries, k, params=params)
        if ivf is None or probe >= ivf.nlist or ((ids >= 0).sum(axis=1) >= want).all():
            return scores, ids
        probe = min(ivf.nlist, probe * 2)


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Ids (row positions) int64 [Q, k] of the exact top-``k`` inner products (brute force, FAISS BLAS)."""
    _, rows = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(vectors, np.float32), k,
                        metric=faiss.METRIC_INNER_PRODUCT)
    return rows


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` [Q, k] present in the same row of ``found`` [Q, >= k]."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def sample_recall(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray, nprobes: tuple[int, ...],
                  store: VectorStore | None = None, queries: int = 300, k: int = 10, seed: int = 0,
                  calibrate: bool = False) -> dict[int, float]:
    """recall@``k`` of ``index`` against exact search, per nprobe (in the order given; with ``calibrate``, up the
    ladder only as far as :func:`climb_ladder` goes), for a seeded sample of its own vectors as queries (each
    query's own vector left out of both answers, so it is held out of what is scored). The exact answers are
    computed once for all nprobes."""
    pick = np.sort(np.random.default_rng(seed).choice(len(ids), min(queries, len(ids)), replace=False))
    probe = vectors[pick]
    truth_rows = exact_neighbours(probe, vectors, k + 1)
    truth = [[i for i in ids[r] if i != ids[q]][:k] for q, r in zip(pick, truth_rows)]

    def recall(nprobe: int) -> float:
        _, found = search(index, probe, k + 1, nprobe, store=store)
        found = [[i for i in row if i != ids[q]][:k] for q, row in zip(pick, found.tolist())]
        return recall_at(np.array(found), np.array(truth))

    if calibrate:
        return climb_ladder(recall, nprobes)
    return {nprobe: recall(nprobe) for nprobe in nprobes}


def climb_ladder(recall: Callable[[int], float], ladder: Sequence[int], target: float = RECALL_TARGET,
                 stall: float = STALL_GAIN) -> dict[int, float]:
    """``recall(nprobe)`` up the ``ladder`` until it reaches ``target`` or stalls (a step adds less than
    ``stall``); {nprobe: recall} of the steps taken. :func:`calibrate_nprobe` then picks from them."""
    recalls: dict[int, float] = {}
    for nprobe in ladder:
        recalls[nprobe] = recall(nprobe)
        if recalls[nprobe] >= target or _stalled(recalls, stall):
            break
    return recalls


def _stalled(recalls: dict[int, float], stall: float) -> bool:
    steps = sorted(recalls)
    return len(steps) >= 2 and recalls[steps[-1]] - recalls[steps[-2]] < stall


def calibrate_nprobe(recalls: dict[int, float], target: float = RECALL_TARGET, stall: float = STALL_GAIN) -> int:
    """The smallest nprobe whose recall reaches ``target``; where the climb stalls before it (the next step adds
    less than ``stall``), the nprobe before the stall; else the one with the best recall."""
    steps = sorted(recalls)
    for i, nprobe in enumerate(steps):
        if recalls[nprobe] >= target:
            return nprobe
        if i + 1 < len(steps) and recalls[steps[i + 1]] - recalls[nprobe] < stall:
            return nprobe
    return max(recalls, key=lambda n: (recalls[n], -n))
