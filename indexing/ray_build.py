"""``build --engine ray``: read the archive as Ray tasks and embed it in an actor pool of ONNX Runtime sessions.

The plan (which samples the catalogue lacks), the chunks committed to the catalogue, the ids and the publication
are the single-process build's (:mod:`indexing.build`): only where pixels are read and embedded changes. The
driver streams results out of Ray Data and commits every ``commit_every`` samples, so a killed driver resumes
from its last chunk; a killed worker is restarted by Ray and its batch retried, so the build ends as an unbroken
one. One progress bar: the project's (Ray Data's own bars are turned off).

Resources: on CPUs, the read and the embedding of a batch ask for the same one CPU, so Ray Data fuses them into
one operator: each actor decodes its batch and embeds it (one ONNX Runtime thread), C actors on C cores, and no
pixels cross the object store (kept apart, 6,000 EuroSAT tiles built at 0.68x the single process's speed on 2
cores; fused, 0.82x: benchmarks/results-bench-embed-ray.txt). With ``gpus_per_worker`` the two
stay apart, as a cluster of CPU readers feeding GPU actors wants: read tasks ask for 0.25 CPU, each actor
0.75 CPU and that share of a GPU, and runs the model on CUDA where ONNX Runtime has it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .build import ChunkWriter, plan_missing
from .encoders import Encoder, OnnxEncoder, normalised
from .reader import read_one
from .scan import Sample

logger = logging.getLogger(__name__)

READ_CPUS, EMBED_CPUS = 0.25, 0.75  # with GPUs: reads and actors apart
FUSED_CPUS = 1.0  # CPUs only: read and embed fused, one CPU per actor
META_KEYS = ("width", "height", "bands", "lat", "lon", "gsd", "timestamp", "footprint")
_DATASETS: dict[tuple, Any] = {}  # per worker process: the archive opened once, reused by every read task


def _dataset(archive: str, image_size: int, bands: list[int] | None) -> Any:
    from training.data import open_archive

    key = (archive, image_size, tuple(bands) if bands else None)
    if key not in _DATASETS:
        _DATASETS[key] = open_archive(Path(archive), None, image_size=image_size, bands=bands)
    return _DATASETS[key]


def read_batch(batch: dict[str, np.ndarray], archive: str, image_size: int, bands: list[int] | None,
               channels: int) -> dict[str, np.ndarray]:
    """Ray task: decode the samples ``batch["index"]`` -> index, reason ("" = read), image float32
    [B, C, S, S] (zeros where unreadable) and meta (JSON of what reading told: size, location, footprint)."""
    dataset = _dataset(archive, image_size, bands)
    images = np.zeros((len(batch["index"]), channels, image_size, image_size), dtype=np.float32)
    reasons, metas = [], []
    for row, (index, sample_id) in enumerate(zip(batch["index"].tolist(), batch["sample_id"].tolist())):
        items = getattr(dataset, "items", None)
        if items is not None and items[index].id != sample_id:  # the worker sees another listing than the driver
            reasons.append(f"the archive changed while building ({sample_id} moved): rerun the build")
            metas.append("{}")
            continue
        result = read_one(dataset, index)
        if isinstance(result, str):
            reasons.append(result)
            metas.append("{}")
            continue
        images[row] = np.asarray(result["image"], dtype=np.float32)
        reasons.append("")
        metas.append(json.dumps({k: result.get(k) for k in META_KEYS}, default=str))
    return {"index": batch["index"], "reason": np.array(reasons, dtype=object), "image": images,
            "meta": np.array(metas, dtype=object)}


class Embedder:
    """Ray actor: one ONNX Runtime session (one thread; CUDA if asked and available), reused for every batch."""

    def __init__(self, model_dir: str, gpu: bool = False, kill_marker: str | None = None) -> None:
        self.encoder = OnnxEncoder(model_dir, threads=1, gpu=gpu)
        self.kill_marker, self.calls = kill_marker, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.kill_marker and self.calls == 2 and not os.path.exists(self.kill_marker):  # test hook
            Path(self.kill_marker).write_text(str(os.getpid()))
            os._exit(1)  # the worker dies mid-build: Ray must restart it and retry this batch
        ok = batch["reason"] == ""
        embeddings = np.zeros((len(ok), self.encoder.dim), dtype=np.float32)
        if ok.any():
            embeddings[ok] = normalised(self.encoder.embed(batch["image"][ok]))
        return {"index": batch["index"], "reason": batch["reason"], "meta": batch["meta"], "embedding": embeddings}


def connect_ray(address: str | None) -> None:
    """Join the cluster at ``address`` ("auto": the running one), or start a local one on this machine."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 configure_logging=True, log_to_driver=True)


def embed_missing_ray(con: Any, archive: Path, samples: list[Sample], encoder: Encoder, batch_size: int,
                      commit_every: int, name: str = "", address: str | None = None, workers: int | None = None,
                      gpus_per_worker: float = 0.0) -> tuple[int, list[tuple[str, str, str]]]:
    """:func:`indexing.build.embed_missing` on a Ray cluster: the same return value and the same chunks."""
    import ray

    if not isinstance(encoder, OnnxEncoder):
        raise ValueError("--engine ray embeds with exported ONNX models: pass --backend onnx (the default).")
    todo, have_vec = plan_missing(con, samples)
    writer = ChunkWriter(con, have_vec, commit_every)
    skipped: list[tuple[str, str, str]] = []
    if not todo:
        return 0, skipped
    connect_ray(address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the project's bar below, not Ray's too
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if workers is None:
        resources = ray.cluster_resources()
        workers = int(resources.get("GPU", 0) / gpus_per_worker) if gpus_per_worker else int(resources.get("CPU", 1))
    card = encoder.card
    order = sorted(todo)
    items = [{"index": i, "sample_id": todo[i].sample_id} for i in order]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 10_000)))
    fused = not gpus_per_worker  # same resources: Ray Data fuses read_batch into the Embedder actors
    dataset = dataset.map_batches(
        read_batch, batch_size=batch_size, num_cpus=FUSED_CPUS if fused else READ_CPUS,
        fn_kwargs={"archive": str(archive), "image_size": int(card["input_size"]),
                   "bands": card.get("band_indices"), "channels": int(card["bands"])})
    gpus = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}
    dataset = dataset.map_batches(
        Embedder, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
        num_cpus=FUSED_CPUS if fused else EMBED_CPUS, **gpus,  # Ray Data restarts dead actors, retries their batch
        fn_constructor_kwargs={"model_dir": str(encoder.model_dir), "gpu": gpus_per_worker > 0,
                               "kill_marker": os.environ.get("INDEXING_TEST_KILL_WORKER")})
    bar = tqdm(total=len(todo), desc=f"embedding {name} (ray, {workers} workers)".strip(), unit="img",
               disable=None, smoothing=0.1)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for index, reason, meta, vector in zip(batch["index"].tolist(), batch["reason"], batch["meta"],
                                               batch["embedding"]):
            sample = todo[index]
            if reason:
                logger.warning("skipping %s: %s", sample.path, reason)
                skipped.append((sample.sample_id, sample.path, str(reason)))
                continue
            writer.add(sample, json.loads(meta), vector if writer.needs_vector(sample) else None)
        bar.update(len(batch["index"]))
    writer.commit()
    bar.close()
    return writer.embedded, skipped
