"""The build plan: every sample of an archive with its content hash, found without decoding pixels.

A sample is a file, an fMoW box of a file or a GeoTIFF chip. Its content hash is the file's sha256 (reused from
the catalogue's ``files`` table while size and mtime are unchanged), combined with the region for crops/chips.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from torch.utils.data import Dataset
from tqdm import tqdm

from training.data import GeoTiffChips, UnreadableImageError
from training.data.base import sample_id as make_sample_id

from .catalog import column, insert_frame, region_hash, sha256_file

logger = logging.getLogger(__name__)

FILES_COMMIT_EVERY = 5000


@dataclass
class Sample:
    """One sample of the plan: ``index`` into the dataset, its stable ``sample_id`` and content ``hash``."""

    index: int
    sample_id: str
    path: str
    region: str | None
    label: int
    split: str | None
    hash: str = ""


def list_samples(dataset: Dataset) -> tuple[list[Sample], list[tuple[str, str, str]]]:
    """Samples of ``dataset`` (an ``open_archive`` result) without reading pixels, and ``(sample_id, path,
    reason)`` for those already known to be unreadable."""
    samples, skipped = [], []
    if hasattr(dataset, "items"):  # ImageDataset: folder, splits.csv, fMoW, SatMAE CSV
        for i, item in enumerate(dataset.items):
            if item.error is not None:
                skipped.append((item.id, str(item.path), item.error.reason))
                continue
            region = f"box{list(item.box)}" if item.box is not None else None
            samples.append(Sample(i, item.id, str(item.path), region, item.label, item.split))
    elif isinstance(dataset, GeoTiffChips):
        for i in range(len(dataset)):
            try:
                path, window = dataset.chip_window(i)
            except UnreadableImageError as err:
                skipped.append((Path(err.path).name, err.path, err.reason))
                continue
            row, col = int(window.row_off) // dataset.chip_size, int(window.col_off) // dataset.chip_size
            chip = make_sample_id(Path(path), dataset.root, f"#r{row}c{col}")
            samples.append(Sample(i, chip, path, f"r{row}c{col}s{dataset.chip_size}", -1, None))
    else:
        for i in range(len(dataset)):
            meta = dataset.describe(i)
            samples.append(Sample(i, meta["id"], meta["path"], None, meta["label"], meta["split"]))
    return samples, skipped


def hash_samples(con: duckdb.DuckDBPyConnection, samples: list[Sample]) -> list[tuple[str, str, str]]:
    """Fill ``sample.hash`` for every sample; returns ``(sample_id, path, reason)`` of unreadable files (their
    samples are removed from ``samples`` in place). New file hashes are committed to ``files`` in chunks."""
    known = {p: (s, m, h) for p, s, m, h in con.execute("SELECT path, size, mtime_ns, sha256 FROM files").fetchall()}
    file_hash: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    fresh: list[tuple[str, int, int, str]] = []
    for sample in tqdm(samples, desc="hashing", unit="sample", disable=None, leave=False):
        path = sample.path
        if path not in file_hash:
            try:
                st = os.stat(path)
                cached = known.get(path)
                if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
                    file_hash[path] = cached[2]
                else:
                    file_hash[path] = sha256_file(path)
                    fresh.append((path, st.st_size, st.st_mtime_ns, file_hash[path]))
            except OSError as err:
                file_hash[path], errors[path] = None, f"cannot read the file ({err})"
            if len(fresh) >= FILES_COMMIT_EVERY:
                _save_files(con, fresh)
                fresh = []
        if file_hash[path] is not None:
            sample.hash = region_hash(file_hash[path], sample.region)
    _save_files(con, fresh)
    skipped = [(s.sample_id, s.path, errors[s.path]) for s in samples if not s.hash]
    samples[:] = [s for s in samples if s.hash]
    return skipped


def _save_files(con: duckdb.DuckDBPyConnection, rows: list[tuple[str, int, int, str]]) -> None:
    if not rows:
        return
    frame: dict[str, Any] = {
        "path": column([r[0] for r in rows], "str"), "size": column([r[1] for r in rows], "int"),
        "mtime_ns": column([r[2] for r in rows], "int"), "sha256": column([r[3] for r in rows], "str"),
    }
    con.execute("BEGIN")
    con.register("_paths", {"path": frame["path"]})
    con.execute("DELETE FROM files WHERE path IN (SELECT path FROM _paths)")
    con.unregister("_paths")
    insert_frame(con, "files", frame)
    con.execute("COMMIT")
