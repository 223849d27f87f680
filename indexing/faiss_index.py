"""FAISS side of an index: choose the spec, train, add with the catalogue's ids, write atomically, search.

Vectors are L2-normalised and compared by inner product (= cosine). The spec is an index-factory string
(``"IDMap2,Flat"`` for exact search, ``"IVF<nlist>,Flat"`` otherwise) stored in the manifest with ``nprobe``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)

EXACT_BELOW = 10_000  # archives with fewer vectors use exact search
MIN_PER_LIST = 39  # FAISS warns below 39 training points per centroid
MAX_PER_LIST = 64  # training vectors per centroid beyond which IVF training subsamples
EXACT_SPEC = "IDMap2,Flat"


def choose_spec(n: int) -> tuple[str, int]:
    """``(factory string, nprobe)`` for ``n`` vectors: exact below :data:`EXACT_BELOW`, else IVF with
    nlist ~ 4 sqrt(n), bounded so that n >= 39 nlist, and nprobe = nlist / 16 (at least 8)."""
    if n < EXACT_BELOW:
        return EXACT_SPEC, 0
    nlist = max(1, min(int(4 * math.sqrt(n)), n // MIN_PER_LIST))
    return f"IVF{nlist},Flat", min(nlist, max(8, nlist // 16))


def is_ivf(spec: str) -> bool:
    return spec.upper().startswith("IVF")


def nlist_of(spec: str) -> int:
    return int(spec.split(",")[0][3:]) if is_ivf(spec) else 0


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
           allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores [Q, k], ids [Q, k])`` (id -1 = no result), optionally only among ``allowed`` ids.

    For IVF indexes, ``nprobe`` doubles until every query has ``min(k, candidates)`` results, so a filter never
    returns fewer results than exist (at ``nprobe = nlist`` the search is exhaustive).
    """
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
