"""Open a published index: the catalogue (read-only) and the FAISS file its manifest names, checked together.

If the FAISS file is missing or its ``ntotal`` disagrees with the manifest, it is rebuilt from the embeddings in
the catalogue (no re-embedding) and a warning says so. Indexes are read with plain ``faiss.read_index``:
opening a merged on-disk index with ``IO_FLAG_MMAP`` crashed FAISS 1.15 on CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import faiss

from .catalog import connect, load_vectors, read_manifest
from .faiss_index import build_index, is_ivf, write_atomic

logger = logging.getLogger(__name__)


@dataclass
class OpenIndex:
    """A published index: ``con`` (read-only catalogue), ``index`` (FAISS), ``manifest`` (dict)."""

    folder: Path
    con: duckdb.DuckDBPyConnection
    index: faiss.Index
    manifest: dict[str, Any]

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
    if index is None or index.ntotal != manifest["ntotal"]:
        found = "missing" if index is None else f"{index.ntotal} vectors"
        logger.warning("%s is %s but the catalogue says %d: rebuilding it from the stored embeddings",
                       path, found, manifest["ntotal"])
        index = rebuild_from_catalog(con, manifest)
        write_atomic(index, path)
    return OpenIndex(folder, con, index, manifest)


def rebuild_from_catalog(con: duckdb.DuckDBPyConnection, manifest: dict[str, Any]) -> faiss.Index:
    """The FAISS index of the published images, rebuilt from the ``vectors`` table with the manifest's spec
    (an on-disk merged index is rebuilt in memory)."""
    ids, vectors = load_vectors(con, "WHERE hash IN (SELECT hash FROM images)")
    spec = manifest["spec"]
    if is_ivf(spec) and len(ids) < 39 * int(spec.split(",")[0][3:]):
        spec = "IDMap2,Flat"
    return build_index(spec, int(manifest.get("nprobe", 0)), ids, vectors)
