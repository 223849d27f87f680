"""The DuckDB catalogue of one model's index: images, their embeddings, and the manifest naming the FAISS file.

Tables (``catalog.duckdb``):

* ``vectors(id, hash, embedding)``: one row per distinct content hash, the L2-normalised float32 embedding as a
  BLOB. ``id`` is the FAISS id, derived from the hash (:func:`id_of_hash`), so identical images share one row
  and one FAISS vector, and every build, shard or rerun gives the same ids. Also the embedding cache: the FAISS
  file can always be rebuilt from it without re-embedding.
* ``sample_meta(sample_id, hash, width, height, bands, lat, lon, timestamp, gsd, footprint)``: what reading the
  pixels told us, cached per sample and content. ``lat``/``lon`` is the sample's centre and ``footprint`` its
  outline (a GeoJSON Polygon string), both in WGS84, where the file is georeferenced.
* ``files(path, size, mtime_ns, sha256)``: file hashes, so unchanged files are not re-read to be hashed.
* ``images``: the PUBLISHED catalogue, one row per sample (path + region), joined to ``vectors`` by ``id``.
* ``skipped(sample_id, path, reason)``: samples of the last build that could not be read, with the reason.
* ``cache_owner(identity)``: the encoder (sha256 of its ONNX file) the cached embeddings come from.
* ``manifest(key, value)``: JSON values; ``index_file``, ``generation``, ``ntotal``, ``spec``, ``nprobe``,
  ``card``, ``model_sha256``, ``archive``, ``built_at``, ``counts``.

``images``, ``skipped`` and ``manifest`` change only together, in one transaction, after the FAISS file they
name has been written in full (see :mod:`indexing.build`); ``vectors`` / ``sample_meta`` / ``files`` only grow
during a build (committed in chunks, so a killed build resumes) and are pruned at publication.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

logger = logging.getLogger(__name__)

CATALOG_NAME = "catalog.duckdb"

SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (id BIGINT PRIMARY KEY, hash VARCHAR NOT NULL UNIQUE, embedding BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sample_meta (
    sample_id VARCHAR NOT NULL, hash VARCHAR NOT NULL, width INTEGER, height INTEGER, bands INTEGER,
    lat DOUBLE, lon DOUBLE, timestamp VARCHAR, gsd DOUBLE, footprint VARCHAR, PRIMARY KEY (sample_id, hash));
CREATE TABLE IF NOT EXISTS files (path VARCHAR PRIMARY KEY, size BIGINT, mtime_ns BIGINT, sha256 VARCHAR);
CREATE TABLE IF NOT EXISTS images (
    sample_id VARCHAR PRIMARY KEY, id BIGINT NOT NULL, path VARCHAR NOT NULL, hash VARCHAR NOT NULL,
    label VARCHAR, label_index INTEGER, split VARCHAR, width INTEGER, height INTEGER, bands INTEGER,
    lat DOUBLE, lon DOUBLE, timestamp VARCHAR, gsd DOUBLE, footprint VARCHAR);
CREATE TABLE IF NOT EXISTS skipped (sample_id VARCHAR, path VARCHAR, reason VARCHAR);
CREATE TABLE IF NOT EXISTS manifest (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS cache_owner (identity VARCHAR);
ALTER TABLE sample_meta ADD COLUMN IF NOT EXISTS footprint VARCHAR;  -- catalogues built before footprints
ALTER TABLE images ADD COLUMN IF NOT EXISTS footprint VARCHAR;
"""

#: Columns a ``--where`` clause may use.
IMAGE_COLUMNS = ("sample_id", "id", "path", "hash", "label", "label_index", "split", "width", "height", "bands",
                 "lat", "lon", "timestamp", "gsd", "footprint")


def id_of_hash(content_hash: str) -> int:
    """FAISS id of a content hash (hex): its first 63 bits, a positive int64 (collisions are checked on insert)."""
    return int(content_hash[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (content hashes of images, identities of models)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def region_hash(file_sha256: str, region: str | None) -> str:
    """Content hash of a sample: the file's sha256, or for a crop/chip the sha256 of file hash + region."""
    if not region:
        return file_sha256
    return hashlib.sha256(f"{file_sha256}#{region}".encode()).hexdigest()


def connect(index_dir: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed, unless read-only) ``index_dir/catalog.duckdb`` with the schema in place.

    Raises:
        FileNotFoundError: read-only and no catalogue exists (build the index first).
        RuntimeError: the catalogue is locked by a running build.
    """
    path = Path(index_dir) / CATALOG_NAME
    if read_only and not path.is_file():
        raise FileNotFoundError(f"no catalogue at {path}: build the index first with `python -m indexing build`.")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as err:
        raise RuntimeError(f"cannot open {path} ({err}): is a build of this index running? Wait for it.") from err
    if not read_only:
        con.execute(SCHEMA)
    return con


def read_manifest(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The manifest as a dict (empty before the first publication)."""
    return {key: json.loads(value) for key, value in con.execute("SELECT key, value FROM manifest").fetchall()}


def write_manifest(con: duckdb.DuckDBPyConnection, values: dict[str, Any]) -> None:
    """Replace the manifest (call inside the publishing transaction)."""
    con.execute("DELETE FROM manifest")
    frame = {"key": np.array(list(values), dtype=object),
             "value": np.array([json.dumps(v) for v in values.values()], dtype=object)}
    con.execute("INSERT INTO manifest SELECT key, value FROM frame")


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: dict[str, np.ndarray]) -> None:
    """Insert a dict of equal-length numpy columns (object arrays for strings/BLOBs, NaN = NULL for floats)."""
    if not frame or len(next(iter(frame.values()))) == 0:
        return
    columns = ", ".join(frame)
    con.register("_frame", frame)
    try:
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _frame")
    finally:
        con.unregister("_frame")


def column(values: list[Any], kind: str) -> np.ndarray:
    """A numpy column for :func:`insert_frame`: kind "str"/"blob" (object, None = NULL), "int", "float"."""
    if kind in ("str", "blob"):
        return np.array(values, dtype=object)
    if kind == "int":
        return np.array(values, dtype=np.int64)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def load_vectors(con: duckdb.DuckDBPyConnection, where: str = "", params: list[Any] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64 [N], embeddings float32 [N, D])`` of ``vectors`` (optionally filtered), ordered by id."""
    rows = con.execute(f"SELECT id, embedding FROM vectors {where} ORDER BY id", params or []).fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    if not rows:
        return ids, np.zeros((0, 0), dtype=np.float32)
    data = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
    return ids, data.reshape(len(rows), -1)
