"""Open a published index: the catalogue (read-only), the FAISS file its manifest names and, for a compressed
index, the float16 store it re-ranks on (indexing.vector_store), checked together; :meth:`OpenIndex.search`.

If the FAISS file or the store is missing or its size disagrees with the manifest, it is rebuilt from the
embeddings in the catalogue (no re-embedding) and a warning says so. Indexes are read with plain ``faiss.read_index``:
opening a merged on-disk index with ``IO_FLAG_MMAP`` crashed FAISS 1.15 on CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import faiss

import numpy as np

from .catalog import connect, load_vectors, read_manifest
from .faiss_index import EXACT_SPEC, build_index, is_ivf, nlist_of, search, write_atomic
from .vector_store import VectorStore, write_store

logger = logging.getLogger(__name__)


@dataclass
class OpenIndex:
    """A published index: ``con`` (read-only catalogue), ``index`` (FAISS), ``manifest`` (dict)."""

    folder: Path
    con: duckdb.DuckDBPyConnection
    index: faiss.Index
    manifest: dict[str, Any]
    store: VectorStore | None = None  # a compressed index's float16 vectors (None: the index holds them)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores [Q, k], ids [Q, k])`` of L2-normalised ``queries`` [Q, D] at the manifest's
        nprobe, only among ``allowed`` ids if given; a compressed index's candidates re-ranked exactly."""
        return search(self.index, queries, k, int(self.manifest.get("nprobe", 0)), allowed, self.store)

    def close(self) -> None:
        self.con.close()


def open_index(folder: str | Path) -> OpenIndex:
    """Open ``folder`` (``<index-dir>/<model>``), repairing the FAISS file from the catalogue if needed.

    Raises:
        FileNotFoundError: nothing has been published there yet.
    """
    folder = Path(folder)
    con = connect(folder, read_only=True)
    manifest = read_manifest(con)
    if not manifest:
        con.close()
        raise FileNotFoundError(f"{folder} has no published index yet: run `python -m indexing build` first.")
    path = folder / manifest["index_file"]
    try:
        index = faiss.read_index(str(path)) if path.is_file() else None
    except RuntimeError as err:  # truncated or corrupt file
        logger.warning("cannot read %s (%s)", path, err)
        index = None
    store = _open_store(folder, manifest)
    if index is None or index.ntotal != manifest["ntotal"] or (manifest.get("store") and store is None):
        found = "missing" if index is None else f"{index.ntotal} vectors"
        logger.warning("%s is %s (store %s) but the catalogue says %d: rebuilding it from the stored embeddings",
                       path, found, "missing" if store is None else "present", manifest["ntotal"])
        index, store = rebuild_from_catalog(con, manifest, folder)
        write_atomic(index, path)
    return OpenIndex(folder, con, index, manifest, store)


def _open_store(folder: Path, manifest: dict[str, Any]) -> VectorStore | None:
    if not manifest.get("store"):
        return None
    try:
        store = VectorStore(folder, manifest["store"])
    except (OSError, ValueError) as err:
        logger.warning("cannot read the vector store %s of %s (%s)", manifest["store"], folder, err)
        return None
    return store if len(store) == manifest["ntotal"] else None


def rebuild_from_catalog(con: duckdb.DuckDBPyConnection, manifest: dict[str, Any], folder: Path
                         ) -> tuple[faiss.Index, VectorStore | None]:
    """The FAISS index of the published images (and a compressed index's store), rebuilt from the ``vectors``
    table with the manifest's spec (an on-disk merged index is rebuilt in memory)."""
    ids, vectors = load_vectors(con, "WHERE hash IN (SELECT hash FROM images)")
    spec = manifest["spec"]
    if is_ivf(spec) and len(ids) < 39 * nlist_of(spec):
        spec = EXACT_SPEC
    store = write_store(folder, manifest["store"], len(ids), vectors.shape[1], [(ids, vectors)]) \
        if manifest.get("store") else None
    return build_index(spec, int(manifest.get("nprobe", 0)), ids, vectors), store
