"""IVF vs exact search at 100k and 1M vectors of realistic, clustered embeddings: recall@10, single-query latency
p50/p95, build time, bytes per vector. Goal: recall@10 >= 0.95 at >= 10x the speed of exact search at 1M.

    python benchmarks/bench_index.py [--features index/<model>/features-train.npz] [--sizes 100000 1000000]

The vectors are real EuroSAT embeddings (``--features``: an ``evaluate`` cache; default: 2000 EuroSAT images
embedded by a randomly initialised ViT of the default architecture) repeated with small Gaussian noise (half the
median nearest-neighbour distance), centred and L2-normalised like the index; queries are fresh noisy copies.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from indexing.faiss_index import choose_spec, recall_at, search, train_index

EUROSAT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eurosat-rgb"


def base_embeddings(features: Path | None, n: int) -> np.ndarray:
    """float32 [n, D] real embeddings: from an evaluate cache, or embedded now from EuroSAT."""
    if features is not None:
        return np.load(features)["x"][:n].astype(np.float32)
    import torch

    from bench_embed import subset_archive  # same folder (run as a script)
    from indexing.encoders import OnnxEncoder
    from training.config import load_config
    from training.data import open_archive
    from training.export import export_encoder, random_init_encoder

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, data={"stats_mean": [0.35, 0.38, 0.41], "stats_std": [0.2, 0.14, 0.12]})
        export_encoder(random_init_encoder(config, 0), config, Path(tmp) / "m", torch.rand(4, 3, 64, 64))
        dataset = open_archive(subset_archive(EUROSAT, n, Path(tmp) / "a"), None, image_size=64)
        encoder = OnnxEncoder(Path(tmp) / "m")
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        return np.concatenate([encoder.embed(images[i:i + 128]) for i in range(0, len(images), 128)])


def noisy_copies(base: np.ndarray, n: int, sigma: float, seed: int) -> np.ndarray:
    """[n, D] normalised rows: base[i % len(base)] + N(0, sigma^2), generated in chunks."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        rows = np.arange(start, min(n, start + 100_000))
        out[rows] = base[rows % len(base)] + rng.normal(0, sigma, (len(rows), base.shape[1])).astype(np.float32)
    faiss.normalize_L2(out)
    return out


def latencies(index: faiss.Index, queries: np.ndarray, k: int, nprobe: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-query latency (ms) of single-query searches and the ids found [Q, k]."""
    times, ids = [], []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query, one thread: how a server answers; OpenMP on a busy CPU only adds noise
    for q in queries:
        start = time.perf_counter()
        _, found = search(index, q[None], k, nprobe)
        times.append(1000 * (time.perf_counter() - start))
        ids.append(found[0])
    faiss.omp_set_num_threads(threads)
    return np.array(times), np.array(ids)


def run(base: np.ndarray, n: int, sigma: float, queries: int, k: int = 10) -> None:
    x = noisy_copies(base, n, sigma, seed=1)
    q = noisy_copies(base, queries, sigma, seed=2)
    ids = np.arange(n, dtype=np.int64)
    start = time.perf_counter()
    exact = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    exact.add_with_ids(x, ids)
    exact_build = time.perf_counter() - start
    _, truth = exact.search(q, k)
    exact_ms, _ = latencies(exact, q[: min(queries, 50)], k)
    exact_bytes = faiss.serialize_index(exact).nbytes / n
    print(f"\n{n:,} vectors x {x.shape[1]} d, {queries} queries, k={k}")
    print(f"  exact IDMap2,Flat: build {exact_build:6.1f} s, {exact_bytes:6.1f} B/vector, "
          f"p50 {np.percentile(exact_ms, 50):7.2f} ms, p95 {np.percentile(exact_ms, 95):7.2f} ms, recall@10 1.000")
    del exact
    spec, default_nprobe = choose_spec(n)
    start = time.perf_counter()
    index = train_index(spec, x)  # subsamples 64 vectors per list, as a build does
    train_s = time.perf_counter() - start
    index.add_with_ids(x, ids)
    build_s = time.perf_counter() - start
    ivf_bytes = faiss.serialize_index(index).nbytes / n
    nlist = faiss.extract_index_ivf(index).nlist
    print(f"  {spec}: build {build_s:6.1f} s (train {train_s:.1f} s), {ivf_bytes:6.1f} B/vector")
    for nprobe in sorted({max(1, nlist // 64), max(1, nlist // 32), default_nprobe, max(1, nlist // 8)}):
        ms, found = latencies(index, q, k, nprobe)
        mark = "  <- default" if nprobe == default_nprobe else ""
        print(f"    nprobe {nprobe:4d}: recall@10 {recall_at(found, truth):.3f}, p50 {np.percentile(ms, 50):6.2f} ms, "
              f"p95 {np.percentile(ms, 95):6.2f} ms, speed-up vs exact (p50) "
              f"{np.percentile(exact_ms, 50) / np.percentile(ms, 50):5.1f}x{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, help="an evaluate cache (features-train.npz) of real embeddings")
    parser.add_argument("--base", type=int, default=2000, help="real embeddings to start from")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    base = base_embeddings(args.features, args.base)
    base = base - base.mean(axis=0)
    faiss.normalize_L2(base)
    gram = base @ base.T
    np.fill_diagonal(gram, -np.inf)
    nn_distance = np.median(np.sqrt(np.maximum(0, 2 - 2 * gram.max(axis=1))))
    sigma = 0.5 * nn_distance / np.sqrt(base.shape[1])  # copies spread about half the NN distance
    print(f"{len(base)} real EuroSAT embeddings ({base.shape[1]} d), median NN distance {nn_distance:.3f}, "
          f"noise sigma {sigma:.4f}; {faiss.omp_get_max_threads()} threads on {os.cpu_count()} CPUs")
    for n in args.sizes:
        run(base, n, sigma, args.queries)


if __name__ == "__main__":
    main()
