"""``python -m indexing build``: embed an archive into a FAISS index + DuckDB catalogue, incrementally and
crash-safely.

Crash safety: embeddings are committed to the catalogue's ``vectors`` cache in chunks while the published
``images`` / ``manifest`` stay untouched; only at the end is the new FAISS file written under a new generation
name (temporary file, fsync, ``os.replace``), and then ONE DuckDB transaction swaps ``images``, ``skipped`` and
the manifest that names the new file. A kill before that commit leaves the previous manifest pointing at the
previous, untouched file; a kill after it leaves the new pair. A rerun re-embeds only what was not committed,
and ids are derived from content hashes, so it ends exactly where an uninterrupted build ends.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import torch
from tqdm import tqdm

from training.data import open_archive

from .catalog import column, connect, id_of_hash, insert_frame, load_vectors, read_manifest, write_manifest
from .encoders import Encoder, load_encoder, normalised
from .faiss_index import EXACT_SPEC, build_index, choose_spec, is_compressed, write_atomic
from .quality import describe_quality, measure_quality
from .vector_store import store_paths, write_store
from .reader import iter_batches
from .scan import Sample, hash_samples, list_samples
from .paths import index_dir_for, model_key, resolve_archive

logger = logging.getLogger(__name__)


@dataclass
class BuildSummary:
    """What a build did; ``skipped`` holds ``(sample_id, path, reason)``."""

    model: str
    index_dir: Path
    spec: str
    nprobe: int
    images: int
    vectors: int
    embedded: int
    removed: int
    seconds: float
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)  # the manifest's "quality" (indexing.quality)

    def report(self) -> str:
        lines = [f"{self.model}: {self.images} images ({self.vectors} distinct) in {self.index_dir}, "
                 f"index {self.spec}" + (f" nprobe {self.nprobe}" if self.nprobe else " (exact search)"),
                 f"  embedded {self.embedded} new, removed {self.removed}, skipped {len(self.skipped)}, "
                 f"{self.seconds:.1f} s"]
        if self.quality:
            lines.append("  " + describe_quality(self.quality))
        lines += [f"  skipped {path}: {reason}" for _, path, reason in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (table `skipped` in the catalogue)")
        return "\n".join(lines)


def build(model: str | Path, archive: str | Path | None = None, index_dir: str | Path | None = None, *,
          spec: str | None = None, nprobe: int | None = None, batch_size: int = 64, commit_every: int = 512,
          backend: str = "onnx", out_dir: Path | None = None, sample_filter: Any = None,
          trained: Any = None, engine: str = "local", address: str | None = None,
          workers: int | None = None, gpus_per_worker: float = 0.0) -> BuildSummary:
    """Build or update the index of ``archive`` for ``model`` in ``<index_dir>/<model>/``.

    Args:
        model: registry name or exported-model folder (a training run folder with ``backend="torch"``).
        archive: any layout ``training.data.open_archive`` reads; None = the demo archive.
        spec / nprobe: FAISS factory string and nprobe; None = :func:`indexing.faiss_index.choose_spec`.
        commit_every: embeddings per committed chunk (what a killed build can lose).
        engine: ``"local"`` (this process: a reader thread and ONNX Runtime) or ``"ray"`` (read as Ray tasks,
            embedded by an actor pool of ONNX Runtime sessions on the cluster at ``address``, ``workers``
            actors with ``gpus_per_worker`` GPUs each: :mod:`indexing.ray_build`); both commit the same chunks.
        out_dir / sample_filter / trained: used by :mod:`indexing.shard` (another folder, a subset of samples,
            a shared trained IVF).

    Returns:
        A :class:`BuildSummary`; the index is published, or the previous one kept if anything failed.
    """
    start = time.time()
    encoder = load_encoder(model, backend)
    out = Path(out_dir) if out_dir is not None else index_dir_for(index_dir, model)
    archive_path = resolve_archive(archive)
    con = connect(out)
    try:
        _claim_cache(con, encoder)
        card = encoder.card
        dataset = open_archive(archive_path, None, image_size=int(card["input_size"]), bands=card.get("band_indices"))
        samples, skipped = list_samples(dataset)
        skipped += hash_samples(con, samples)
        if sample_filter is not None:
            samples = [s for s in samples if sample_filter(s)]
        if engine == "ray":
            from .ray_build import embed_missing_ray

            embedded, read_skips = embed_missing_ray(con, archive_path, samples, encoder, batch_size, commit_every,
                                                     model_key(model), address, workers, gpus_per_worker)
        elif engine == "local":
            embedded, read_skips = embed_missing(con, dataset, samples, encoder, batch_size, commit_every,
                                                 model_key(model))
        else:
            raise ValueError(f"unknown engine {engine!r}: choose local or ray")
        bad = {sid for sid, _, _ in read_skips}
        samples = [s for s in samples if s.sample_id not in bad]
        before = con.execute("SELECT count(*) FROM vectors").fetchall()[0][0]
        manifest = publish(con, out, samples, skipped + read_skips, dataset.classes, encoder, spec, nprobe,
                           archive_path, model_key(model), trained)
    finally:
        con.close()
    n_vectors = manifest["ntotal"]
    return BuildSummary(model_key(model), out, manifest["spec"], manifest["nprobe"], manifest["counts"]["images"],
                        n_vectors, embedded, max(0, before - n_vectors), time.time() - start, skipped + read_skips,
                        manifest.get("quality", {}))


def _claim_cache(con: duckdb.DuckDBPyConnection, encoder: Encoder) -> None:
    """Drop cached embeddings made by another encoder (the model was re-exported)."""
    owner = next(iter(con.execute("SELECT identity FROM cache_owner").fetchall()), None)
    if owner is not None and owner[0] == encoder.identity:
        return
    if owner is not None:
        logger.warning("the model changed since the last build (%s...): re-embedding everything", owner[0][:12])
    con.execute("BEGIN")
    con.execute("DELETE FROM vectors; DELETE FROM sample_meta; DELETE FROM cache_owner")
    con.execute("INSERT INTO cache_owner VALUES (?)", [encoder.identity])
    con.execute("COMMIT")


def plan_missing(con: duckdb.DuckDBPyConnection, samples: list[Sample]) -> tuple[dict[int, Sample], set[str]]:
    """``(samples the catalogue lacks, by dataset index; content hashes already embedded)``."""
    have_meta = set(con.execute("SELECT sample_id, hash FROM sample_meta").fetchall())
    have_vec = {h for (h,) in con.execute("SELECT hash FROM vectors").fetchall()}
    todo = {s.index: s for s in samples if (s.sample_id, s.hash) not in have_meta}
    logger.info("%d samples, %d already embedded, %d to read", len(samples), len(samples) - len(todo), len(todo))
    return todo, have_vec


class ChunkWriter:
    """Collects what was read and embedded and commits it every ``commit_every`` samples, one transaction per
    chunk (what a killed build can lose); an embedding whose content hash is already stored is not stored twice."""

    def __init__(self, con: duckdb.DuckDBPyConnection, have_vec: set[str], commit_every: int) -> None:
        self.con, self.have_vec, self.commit_every = con, have_vec, commit_every
        self.vec_rows: list[tuple[str, np.ndarray]] = []
        self.meta_rows: list[tuple[Sample, dict[str, Any]]] = []
        self.embedded = 0

    def needs_vector(self, sample: Sample) -> bool:
        return sample.hash not in self.have_vec

    def add(self, sample: Sample, meta: dict[str, Any], vector: np.ndarray | None) -> None:
        """One read sample, its metadata and (if its content is new) its L2-normalised embedding [D]."""
        self.meta_rows.append((sample, meta))
        if vector is not None and sample.hash not in self.have_vec:
            self.have_vec.add(sample.hash)
            self.vec_rows.append((sample.hash, vector))
            self.embedded += 1
        if len(self.meta_rows) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        _commit_chunk(self.con, self.vec_rows, self.meta_rows)
        self.vec_rows, self.meta_rows = [], []


def embed_missing(con: duckdb.DuckDBPyConnection, dataset: Any, samples: list[Sample], encoder: Encoder,
                  batch_size: int, commit_every: int, name: str = "") -> tuple[int, list[tuple[str, str, str]]]:
    """Read and embed the samples the catalogue lacks in this process, committing every ``commit_every``.

    Returns ``(number of new embeddings, [(sample_id, path, reason)] of samples that could not be read)``.
    """
    todo, have_vec = plan_missing(con, samples)
    writer = ChunkWriter(con, have_vec, commit_every)
    skipped: list[tuple[str, str, str]] = []
    delay = float(os.environ.get("INDEXING_TEST_BATCH_DELAY", "0"))  # test hook: slows a build to kill it
    bar = tqdm(total=len(todo), desc=f"embedding {name}".strip(), unit="img", disable=None, smoothing=0.1)
    for batch in iter_batches(dataset, sorted(todo), batch_size):
        read, new = [], {}  # new: content hash -> image of the samples whose embedding is not stored yet
        for index, result in batch:
            sample = todo[index]
            if isinstance(result, str):
                logger.warning("skipping %s: %s", sample.path, result)
                skipped.append((sample.sample_id, sample.path, result))
                continue
            read.append((sample, result))
            if writer.needs_vector(sample):
                new.setdefault(sample.hash, result["image"])
        vectors = dict(zip(new, normalised(encoder.embed(torch.stack(list(new.values())))))) if new else {}
        for sample, result in read:
            writer.add(sample, result, vectors.get(sample.hash))
        bar.update(len(batch))
        if delay:
            time.sleep(delay)
    writer.commit()
    bar.close()
    return writer.embedded, skipped


def _commit_chunk(con: duckdb.DuckDBPyConnection, vec_rows: list[tuple[str, np.ndarray]],
                  meta_rows: list[tuple[Sample, dict[str, Any]]]) -> None:
    """One transaction: new embeddings (``vectors``) and the metadata read with the pixels (``sample_meta``)."""
    if not meta_rows:
        return
    con.execute("BEGIN")
    insert_frame(con, "vectors", {
        "id": column([id_of_hash(h) for h, _ in vec_rows], "int"), "hash": column([h for h, _ in vec_rows], "str"),
        "embedding": column([v.astype(np.float32).tobytes() for _, v in vec_rows], "blob")})
    metas = [m for _, m in meta_rows]
    insert_frame(con, "sample_meta", {
        "sample_id": column([s.sample_id for s, _ in meta_rows], "str"),
        "hash": column([s.hash for s, _ in meta_rows], "str"),
        **{key: column([m.get(key) for m in metas], "float") for key in ("width", "height", "bands", "lat", "lon",
                                                                          "gsd")},
        "timestamp": column([None if m.get("timestamp") is None else str(m["timestamp"]) for m in metas], "str"),
        "footprint": column([m.get("footprint") for m in metas], "str")})
    con.execute("COMMIT")
    total = con.execute("SELECT count(*) FROM sample_meta").fetchall()[0][0]
    logger.info("committed %d samples (%d new embeddings); %d in the catalogue", len(meta_rows), len(vec_rows), total)


def publish(con: duckdb.DuckDBPyConnection, out: Path, samples: list[Sample], skipped: list[tuple[str, str, str]],
            classes: list[str], encoder: Encoder, spec: str | None, nprobe: int | None, archive: Path, name: str,
            trained: Any = None) -> dict[str, Any]:
    """Write the FAISS file of ``samples`` (and, for a compressed spec, the float16 store its answers are
    re-ranked on), measure its recall, and swap it in with the catalogue rows in one transaction.

    Returns the published manifest.
    """
    frame = {
        "sample_id": column([s.sample_id for s in samples], "str"), "path": column([s.path for s in samples], "str"),
        "hash": column([s.hash for s in samples], "str"),
        "label": column([classes[s.label] if 0 <= s.label < len(classes) else None for s in samples], "str"),
        "label_index": column([s.label for s in samples], "int"), "split": column([s.split for s in samples], "str"),
    }
    con.register("_plan", frame)
    con.execute("""CREATE OR REPLACE TEMP TABLE new_images AS
        SELECT p.sample_id, v.id, p.path, p.hash, p.label, p.label_index, p.split, m.width, m.height, m.bands,
               m.lat, m.lon, m.timestamp, m.gsd, m.footprint
        FROM _plan p JOIN sample_meta m ON m.sample_id = p.sample_id AND m.hash = p.hash
        JOIN vectors v ON v.hash = p.hash ORDER BY p.sample_id""")
    con.unregister("_plan")
    ids, vectors = load_vectors(con, "WHERE hash IN (SELECT hash FROM new_images)")
    if len(ids) == 0:
        raise ValueError(f"no readable image in {archive} ({len(skipped)} skipped): nothing to index.")
    calibrate = nprobe is None
    if trained is not None:
        spec, nprobe, calibrate = _spec_of(trained), nprobe or 0, False
    elif spec is None:
        spec, default_nprobe = choose_spec(len(ids), vectors.shape[1])
        nprobe = nprobe if nprobe is not None else default_nprobe
        if spec == EXACT_SPEC:
            logger.info("%d vectors: small archive, exact search (%s)", len(ids), spec)
    index = build_index(spec, nprobe or 0, ids, vectors, trained)
    previous = read_manifest(con)
    generation = int(previous.get("generation", 0)) + 1
    index_file = f"index-{generation}.faiss"
    store = None
    if is_compressed(spec):  # the vectors its candidates are re-ranked on (and rebuilt from), float16 on disk
        store = write_store(out, f"index-{generation}", len(ids), vectors.shape[1], [(ids, vectors)])
    quality = measure_quality(index, ids, vectors, store, spec, nprobe or 0, calibrate)
    nprobe = quality["nprobe"]
    write_atomic(index, out / index_file)
    quality["index_bytes"] = (out / index_file).stat().st_size
    quality["bytes_per_vector"] = quality["index_bytes"] / max(1, index.ntotal)
    _test_kill_point("before-commit")
    n_images = con.execute("SELECT count(*) FROM new_images").fetchall()[0][0]
    manifest = {
        "index_file": index_file, "generation": generation, "ntotal": int(index.ntotal), "spec": spec,
        "nprobe": int(nprobe or 0), "metric": "inner product of L2-normalised embeddings (cosine)",
        **({"store": f"index-{generation}"} if store is not None else {}), "quality": quality,
        "dim": int(vectors.shape[1]), "model": name, "model_sha256": encoder.identity, "card": encoder.card,
        "archive": str(archive), "classes": list(classes),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {"images": int(n_images), "vectors": int(index.ntotal), "skipped": len(skipped)},
    }
    con.execute("BEGIN")
    con.execute("DELETE FROM images; INSERT INTO images SELECT * FROM new_images")
    con.execute("DELETE FROM skipped")
    insert_frame(con, "skipped", {k: column([row[i] for row in skipped], "str")
                                  for i, k in enumerate(("sample_id", "path", "reason"))})
    write_manifest(con, manifest)
    con.execute("DELETE FROM vectors WHERE hash NOT IN (SELECT hash FROM images)")
    con.execute("DELETE FROM sample_meta m WHERE NOT EXISTS "
                "(SELECT 1 FROM images i WHERE i.sample_id = m.sample_id AND i.hash = m.hash)")
    con.execute("DELETE FROM files WHERE path NOT IN (SELECT path FROM images)")
    con.execute("COMMIT")
    con.execute("DROP TABLE new_images")
    con.execute("CHECKPOINT")
    _test_kill_point("after-commit")
    keep = {index_file, *(p.name for p in store_paths(out, f"index-{generation}"))}
    for stale in out.glob("index-*"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    return manifest


def _spec_of(index: Any) -> str:
    import faiss

    return f"IVF{faiss.extract_index_ivf(index).nlist},Flat"


def _test_kill_point(point: str) -> None:
    """Test hook: SIGKILL this process at ``point`` when ``INDEXING_TEST_KILL_AT`` names it."""
    if os.environ.get("INDEXING_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
