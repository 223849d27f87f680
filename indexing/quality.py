"""What an index costs and how well it answers, measured when it is built and kept in its manifest.

``quality`` in the manifest: ``recall_at_10`` (against exact search, on a seeded sample of the archive's own
vectors, each held out of its own answer), ``recall_by_nprobe`` where nprobe was calibrated, ``queries``,
``index_bytes`` / ``bytes_per_vector`` (the FAISS file: what RAM holds once it is read) and ``store_bytes`` (the
float16 vectors on disk a compressed index re-ranks on). ``python -m indexing info`` prints them.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .faiss_index import (EXACT_SPEC, NPROBE_LADDER, RECALL_TARGET, STALL_GAIN, calibrate_nprobe, ivf_of,
                          sample_recall)
from .vector_store import VectorStore

SAMPLE_QUERIES = 300


def measure_quality(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray, store: VectorStore | None,
                    spec: str, nprobe: int, calibrate: bool) -> dict[str, Any]:
    """The ``quality`` entry of a new index of ``vectors`` [N, D] under ``ids`` [N]. With ``calibrate`` (no
    nprobe given) a compressed index gets the smallest nprobe of the ladder whose recall@10 reaches
    :data:`RECALL_TARGET`; otherwise recall is measured at ``nprobe``."""
    quality: dict[str, Any] = {"queries": min(SAMPLE_QUERIES, len(ids))}
    if spec == EXACT_SPEC or ivf_of(index) is None:
        return {**quality, "recall_at_10": 1.0, "nprobe": 0, "how": "exact search"}
    nlist = ivf_of(index).nlist
    if calibrate and store is not None:
        ladder = tuple(p for p in NPROBE_LADDER if p < nlist) + (nlist,)
        recalls = sample_recall(index, ids, vectors, ladder, store, SAMPLE_QUERIES, calibrate=True)
        nprobe = calibrate_nprobe(recalls)
        quality["recall_by_nprobe"] = {str(p): round(r, 4) for p, r in recalls.items()}
        quality["how"] = (f"nprobe: the smallest reaching recall@10 >= {RECALL_TARGET}, or the last before doubling "
                          f"it gained < {STALL_GAIN}")
        recall = recalls[nprobe]
    else:
        recall = sample_recall(index, ids, vectors, (nprobe,), store, SAMPLE_QUERIES)[nprobe]
    if store is not None:
        quality["store_bytes"] = store.nbytes
    return {**quality, "recall_at_10": round(recall, 4), "nprobe": int(nprobe)}


def describe_quality(quality: dict[str, Any]) -> str:
    """One line: bytes per vector, RAM, the store on disk, recall@10."""
    parts = []
    if "bytes_per_vector" in quality:
        parts.append(f"{quality['bytes_per_vector']:.1f} B/vector in RAM ({quality['index_bytes'] / 2 ** 20:.1f} MiB)")
    if "store_bytes" in quality:
        parts.append(f"float16 store for re-ranking {quality['store_bytes'] / 2 ** 20:.1f} MiB on disk")
    recall = f"recall@10 {quality['recall_at_10']:.3f}"
    recall += " (exact search)" if quality.get("how") == "exact search" else (
        f" at nprobe {quality['nprobe']} against exact search, {quality['queries']} of its own vectors as queries")
    return "; ".join(parts + [recall])
