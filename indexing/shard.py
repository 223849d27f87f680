"""``build --shard i/n`` and ``merge``: build an archive's index with many processes or machines.

1. A shared trained IVF, ``<index-dir>/<model>/trained.faiss``, is trained once (by the first shard that needs
   it, under a file lock; on many machines run one shard first) on embeddings of >= 39 * nlist samples chosen by
   content hash, i.e. a uniform random sample the same for every shard.
2. Shard i embeds the samples whose content hash falls in shard i (so duplicates stay together) into its own
   catalogue and inverted lists, ``<index-dir>/<model>/shards/<i>-of-<n>/`` (itself a crash-safe build).
3. ``merge`` checks that all n shards used the same trained IVF, joins their inverted lists into one on-disk
   index with ``faiss.contrib.ondisk.merge_ondisk`` and their catalogues into the model's catalogue, published
   like a build: files first under a new generation name, then one transaction.
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from training.data import open_archive

from .build import BuildSummary, _claim_cache, build, embed_missing
from .catalog import connect, load_vectors, read_manifest, write_manifest
from .encoders import load_encoder
from .faiss_index import MIN_PER_LIST, ivf_of, train_index, write_atomic
from .paths import index_dir_for, model_key, resolve_archive
from .scan import hash_samples, list_samples
from .store import open_index

logger = logging.getLogger(__name__)

TRAINED_NAME = "trained.faiss"
TRAIN_PER_LIST = 40  # training vectors per IVF list (>= 39)


def parse_shard(shard: str) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n."""
    match = re.fullmatch(r"(\d+)/(\d+)", shard.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f"--shard {shard!r}: give i/n with 0 <= i < n, e.g. --shard 0/4")
    return int(match[1]), int(match[2])


def shard_of(content_hash: str, n: int) -> int:
    return int(content_hash[:8], 16) % n


def build_shard(model: str | Path, shard: str, archive: str | Path | None = None,
                index_dir: str | Path | None = None, nlist: int | None = None, **options) -> BuildSummary:
    """Build shard ``i/n`` of the archive against the shared trained IVF (trained first if missing)."""
    i, n = parse_shard(shard)
    root = index_dir_for(index_dir, model)
    folder = root / "shards" / f"{i}-of-{n}"
    trained = shared_trained_ivf(model, archive, root, folder, nlist)
    nlist = faiss.extract_index_ivf(trained).nlist
    nprobe = min(nlist, max(8, nlist // 16))  # the rule of choose_spec
    return build(model, archive, out_dir=folder, sample_filter=lambda s: shard_of(s.hash, n) == i,
                 trained=trained, nprobe=nprobe, **options)


def shared_trained_ivf(model: str | Path, archive: str | Path | None, root: Path, scratch: Path,
                       nlist: int | None = None) -> faiss.Index:
    """Read ``root/trained.faiss``, or train and write it (exclusive lock: concurrent shards wait)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / TRAINED_NAME
    with open(root / "trained.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            write_atomic(_train(model, archive, scratch, nlist), path)
    return faiss.read_index(str(path))


def _train(model: str | Path, archive: str | Path | None, scratch: Path, nlist: int | None) -> faiss.Index:
    """Train an empty IVF on the 40 * nlist samples with the smallest content hashes (embedded into the
    ``scratch`` catalogue, so a killed training resumes and the shard reuses what belongs to it)."""
    encoder = load_encoder(model)
    card = encoder.card
    dataset = open_archive(resolve_archive(archive), None, image_size=int(card["input_size"]),
                           bands=card.get("band_indices"))
    con = connect(scratch)
    try:
        _claim_cache(con, encoder)
        samples, _ = list_samples(dataset)
        hash_samples(con, samples)
        distinct = {s.hash: s for s in sorted(samples, key=lambda s: (s.hash, s.sample_id))}
        nlist = nlist or max(1, min(int(4 * np.sqrt(len(distinct))), len(distinct) // MIN_PER_LIST))
        chosen = [distinct[h] for h in sorted(distinct)[: TRAIN_PER_LIST * nlist]]
        embed_missing(con, dataset, chosen, encoder, 64, 512, f"{model_key(model)} IVF training sample")
        _, vectors = load_vectors(con, "WHERE hash IN (SELECT unnest(?))", [[s.hash for s in chosen]])
    finally:
        con.close()
    return train_index(f"IVF{nlist},Flat", vectors)


def merge(model: str | Path, index_dir: str | Path | None = None) -> BuildSummary:
    """Join every ``shards/<i>-of-<n>`` of ``model`` into ``<index-dir>/<model>/`` (on-disk inverted lists).

    Raises:
        FileNotFoundError: a shard is missing or unpublished. ValueError: shards used different trained IVFs.
    """
    start = time.time()
    root = index_dir_for(index_dir, model)
    shards = _complete_shards(root)
    trained = faiss.read_index(str(root / TRAINED_NAME))
    centroids = _centroids(trained)
    manifests = []
    for folder in shards:
        opened = open_index(folder)
        manifests.append(opened.manifest)
        if not np.array_equal(_centroids(opened.index), centroids):
            opened.close()
            raise ValueError(f"{folder} was built with another trained IVF than {root / TRAINED_NAME}: "
                             "delete the shards and rebuild them all.")
        opened.close()
    encoder_identity = {m["model_sha256"] for m in manifests}
    if len(encoder_identity) != 1:
        raise ValueError(f"the shards of {root} were embedded with different exports of the model: rebuild them.")
    con = connect(root)
    try:
        generation = int(read_manifest(con).get("generation", 0)) + 1
        index_file, ivfdata = f"index-{generation}.faiss", f"index-{generation}.ivfdata"
        (root / ivfdata).unlink(missing_ok=True)
        merge_ondisk(trained, [str(f / m["index_file"]) for f, m in zip(shards, manifests)], str(root / ivfdata))
        write_atomic(trained, root / index_file)
        first = manifests[0]
        manifest = {**first, "index_file": index_file, "ivfdata": ivfdata, "generation": generation,
                    "ntotal": int(trained.ntotal), "shards": len(shards), "ondisk": True,
                    "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        _merge_catalogues(con, shards, manifest)
        counts = con.execute("SELECT count(*), count(DISTINCT id) FROM images").fetchall()[0]
        skipped = con.execute("SELECT sample_id, path, reason FROM skipped").fetchall()
    finally:
        con.close()
    for stale in root.glob("index-*"):
        if stale.name not in (index_file, ivfdata):
            stale.unlink(missing_ok=True)
    return BuildSummary(model_key(model), root, first["spec"], int(first["nprobe"]), counts[0], counts[1], 0, 0,
                        time.time() - start, skipped)


def _complete_shards(root: Path) -> list[Path]:
    folders = sorted((root / "shards").glob("*-of-*"), key=lambda p: int(p.name.split("-")[0]))
    totals = {int(p.name.split("-of-")[1]) for p in folders}
    if len(totals) != 1:
        raise FileNotFoundError(f"no shards (or shards of different splits {sorted(totals)}) in {root / 'shards'}: "
                                "build them with `python -m indexing build --shard i/n`.")
    n = totals.pop()
    missing = sorted(set(range(n)) - {int(p.name.split("-")[0]) for p in folders})
    if missing:
        raise FileNotFoundError(f"shards {missing} of {n} are missing in {root / 'shards'}: build them first.")
    return folders


def _centroids(index: faiss.Index) -> np.ndarray:
    ivf = ivf_of(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def _merge_catalogues(con, shards: list[Path], manifest: dict) -> None:
    """One transaction: the model's catalogue becomes the union of the shards' catalogues + the new manifest."""
    for k, folder in enumerate(shards):
        con.execute(f"ATTACH '{folder / 'catalog.duckdb'}' AS s{k} (READ_ONLY)")
    try:
        union = lambda table: " UNION ALL ".join(f"SELECT * FROM s{k}.{table}" for k in range(len(shards)))  # noqa
        con.execute("BEGIN")
        for table in ("images", "vectors", "sample_meta", "files"):
            con.execute(f"DELETE FROM {table}")
        con.execute(f"INSERT INTO images {union('images')}")
        con.execute(f"INSERT INTO vectors SELECT * FROM ({union('vectors')}) "
                    "WHERE hash IN (SELECT hash FROM images)")
        con.execute(f"INSERT INTO sample_meta SELECT DISTINCT * FROM ({union('sample_meta')})")
        con.execute(f"INSERT INTO files SELECT DISTINCT ON (path) * FROM ({union('files')})")
        con.execute(f"DELETE FROM skipped; INSERT INTO skipped SELECT DISTINCT * FROM ({union('skipped')})")
        con.execute("DELETE FROM cache_owner; INSERT INTO cache_owner VALUES (?)", [manifest["model_sha256"]])
        manifest["counts"] = {"images": con.execute("SELECT count(*) FROM images").fetchall()[0][0],
                              "vectors": manifest["ntotal"],
                              "skipped": con.execute("SELECT count(*) FROM skipped").fetchall()[0][0]}
        write_manifest(con, manifest)
        con.execute("COMMIT")
    finally:
        for k in range(len(shards)):
            con.execute(f"DETACH s{k}")
