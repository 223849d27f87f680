"""The embeddings a compressed index was built from, kept on disk as float16 and memory-mapped.

A compressed (product-quantised) index answers from codes of ~24 bytes per vector; its top candidates are then
re-scored exactly against these float16 copies (:func:`rerank`), so recall stays close to exact search while
RAM holds only the codes. The same files are what a rebuild (a new spec, a retrained IVF) reads, streaming, at
sizes where the catalogue cannot hold float32 embeddings (100 M x 192 x 4 bytes = 77 GB).

Two ``.npy`` files, written once per published generation beside the FAISS file:

* ``<name>.ids.npy``: int64 [N], the FAISS ids in increasing order (8 bytes per vector);
* ``<name>.f16.npy``: float16 [N, D], row i the L2-normalised embedding of ``ids[i]`` (2 D bytes per vector).

Only the rows a query needs are paged in, so resident memory stays small however large the files are; the maps
are advised ``MADV_RANDOM`` (a re-rank reads ~300 scattered rows: the kernel's read-ahead around each would map,
and read from disk, ~30x more than is used).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np


class VectorStore:
    """Read-only, memory-mapped ``(ids [N] sorted, vectors float16 [N, D])``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.ids_path, self.vectors_path = store_paths(folder, name)
        self.ids = np.load(self.ids_path, mmap_mode="r")  # int64 [N]
        self.vectors = np.load(self.vectors_path, mmap_mode="r")  # float16 [N, D]
        for array in (self.ids, self.vectors):
            mapped = getattr(array, "_mmap", None)
            if mapped is not None and hasattr(mmap, "MADV_RANDOM"):
                mapped.madvise(mmap.MADV_RANDOM)
        if len(self.ids) != len(self.vectors):
            raise ValueError(f"{self.ids_path} has {len(self.ids)} ids but {self.vectors_path} {len(self.vectors)} "
                             "rows: the store is damaged; rebuild the index with `python -m indexing build`.")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.vectors.nbytes)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row positions int64 [M] of ``ids`` [M]; -1 where an id is not stored."""
        rows = np.searchsorted(self.ids, ids)
        rows = np.minimum(rows, len(self.ids) - 1)
        return np.where(self.ids[rows] == ids, rows, -1)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """float32 [M, D] embeddings of ``ids`` [M] (every id must be stored)."""
        rows = self.rows_of(ids)
        if (rows < 0).any():
            raise KeyError(f"{int((rows < 0).sum())} ids are not in {self.ids_path}")
        order = np.argsort(rows)  # read the file in increasing offsets
        out = np.empty((len(ids), self.vectors.shape[1]), dtype=np.float32)
        out[order] = self.vectors[rows[order]]
        return out

    def batches(self, batch: int = 1 << 20) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """``(ids [B], float32 vectors [B, D])`` in id order, ``batch`` at a time (for rebuilds)."""
        for start in range(0, len(self.ids), batch):
            yield np.asarray(self.ids[start:start + batch]), self.vectors[start:start + batch].astype(np.float32)


def store_paths(folder: Path, name: str) -> tuple[Path, Path]:
    return Path(folder) / f"{name}.ids.npy", Path(folder) / f"{name}.f16.npy"


def write_store(folder: Path, name: str, n: int, dim: int,
                batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> VectorStore:
    """Write ``n`` vectors given as ``(ids [B], vectors [B, D])`` batches in increasing id order, streaming
    (never all in RAM), each file via a temporary name, fsync and ``os.replace``.

    Raises:
        ValueError: ids not strictly increasing, or not ``n`` of them in all.
    """
    ids_path, vectors_path = store_paths(folder, name)
    tmp_ids, tmp_vectors = (p.with_name(p.name + ".tmp") for p in (ids_path, vectors_path))
    ids_out = np.lib.format.open_memmap(tmp_ids, mode="w+", dtype=np.int64, shape=(n,))
    vectors_out = np.lib.format.open_memmap(tmp_vectors, mode="w+", dtype=np.float16, shape=(n, dim))
    at, last = 0, None
    for ids, vectors in batches:
        if len(ids) == 0:
            continue
        if (np.diff(ids) <= 0).any() or (last is not None and ids[0] <= last):
            raise ValueError("write_store: ids must come in strictly increasing order")
        ids_out[at:at + len(ids)] = ids
        vectors_out[at:at + len(ids)] = vectors
        at, last = at + len(ids), int(ids[-1])
    if at != n:
        raise ValueError(f"write_store: expected {n} vectors, got {at}")
    for array, tmp, final in ((ids_out, tmp_ids, ids_path), (vectors_out, tmp_vectors, vectors_path)):
        array.flush()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        del array
        os.replace(tmp, final)
    return VectorStore(folder, name)


def rerank(store: VectorStore, queries: np.ndarray, candidate_ids: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` ``(scores [Q, k], ids [Q, k])`` among ``candidate_ids`` [Q, K] (-1 = none), re-scored
    as inner products of ``queries`` float32 [Q, D] with the stored vectors."""
    q, width = candidate_ids.shape
    scores = np.full((q, width), -np.inf, dtype=np.float32)
    found = candidate_ids >= 0
    if found.any():
        vectors = store.lookup(candidate_ids[found])  # [M, D]
        rows = np.nonzero(found)[0]
        scores[found] = np.einsum("md,md->m", vectors, queries[rows])
    k = min(k, width)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # [Q, k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    top_ids = np.where(np.isfinite(top_scores), np.take_along_axis(candidate_ids, top, axis=1), -1)
    return top_scores, top_ids
