"""End-to-end query latency of the app's service: decode -> both models' embeddings -> search -> catalogue rows.

    python benchmarks/bench_app.py [--queries 200] [--vectors 1000000] [--clients 8]

Settings: (1) the demo index (the shipped models on assets/demo when built, else a tiny stand-in archive with
two random-init tiny models, and it says so); (2) a synthetic 1M-vector index per model: the models' own
archive embeddings plus Gaussian noise (clustered like real embeddings), IVF as ``indexing`` would choose it for
1M vectors, with a 1M-row DuckDB catalogue whose paths point at real archive files; (3) the 1M index with
``--clients`` threads querying at once. Prints p50 / p95 per setting (milliseconds per query). Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def percentiles(samples_ms: list[float]) -> str:
    q = np.percentile(samples_ms, [50, 95])
    return f"p50 {q[0]:6.1f} ms   p95 {q[1]:6.1f} ms   (n={len(samples_ms)})"


def run(service, queries: list[Path], n: int, clients: int = 1) -> tuple[list[float], float]:
    """Latencies (ms) of ``n`` queries spread over ``clients`` threads, and the wall time (s)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.perf_counter()
        service.query(queries[i % len(queries)], k=10)
        with lock:
            latencies.append((time.perf_counter() - start) * 1e3)

    for i in range(min(5, n)):  # warm-up: sessions, cursors, caches
        service.query(queries[i % len(queries)], k=10)
    start = time.perf_counter()
    if clients == 1:
        for i in range(n):
            one(i)
    else:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(n)))
    return latencies, time.perf_counter() - start


def demo_service(work: Path):
    """The shipped setup when its assets and indexes exist, else the tiny stand-in; (service, queries, label)."""
    from indexing.paths import DEMO_ARCHIVE, MODELS_DIR
    from retrieval_app.service import RetrievalService, build_missing

    if all((MODELS_DIR / m / "model_card.json").is_file() for m in ("ijepa", "mae")) and DEMO_ARCHIVE.exists():
        build_missing(["ijepa", "mae"])
        service = RetrievalService.open(["ijepa", "mae"])
        label = "demo archive, shipped models"
    else:
        from retrieval_app.testing import tiny_setup

        setup = tiny_setup(work, per_class=40)
        service = RetrievalService.open(setup.models, setup.index_dir)
        label = "tiny stand-in (assets/models not there yet): 120 JPEGs, two random-init tiny ViTs"
    queries = [Path(r[0]) for r in service.models[next(iter(service.models))].opened.con.execute(
        "SELECT path FROM images WHERE sample_id NOT LIKE '%#%' ORDER BY sample_id").fetchall()]
    return service, queries, label


def million_service(service, n_vectors: int, work: Path, seed: int = 0, lookup: bool = True):
    """A copy of ``service`` whose models search a synthetic ``n_vectors`` IVF index with an n-row catalogue."""
    import faiss

    from indexing.catalog import load_vectors
    from indexing import faiss_index
    from indexing.faiss_index import build_index, choose_spec, train_index
    from retrieval_app.service import RetrievalService, RowLookup

    rng = np.random.default_rng(seed)
    models = []
    catalogue = duckdb.connect(str(work / "million.duckdb"))
    paths = [r[0] for r in next(iter(service.models.values())).opened.con.execute(
        "SELECT path FROM images ORDER BY sample_id").fetchall()]
    ids = np.random.default_rng(seed + 1).choice(2**62, size=n_vectors, replace=False).astype(np.int64)
    catalogue.register("_rows", {"id": ids, "n": np.arange(n_vectors)})
    catalogue.register("_paths", {"p": np.array(paths, dtype=object), "n": np.arange(len(paths))})
    catalogue.execute(f"""CREATE OR REPLACE TABLE images AS SELECT
        'synthetic/' || r.n AS sample_id, r.id, p.p AS path, md5(r.n::VARCHAR) AS hash,
        ['Forest','River','SeaLake','Industrial','Pasture'][1 + r.n % 5] AS label, r.n % 5 AS label_index,
        CASE WHEN r.n % 4 = 3 THEN 'test' ELSE 'train' END AS split, 64 AS width, 64 AS height, 3 AS bands,
        NULL::DOUBLE AS lat, NULL::DOUBLE AS lon, NULL::VARCHAR AS timestamp, NULL::DOUBLE AS gsd
        FROM _rows r JOIN _paths p ON p.n = r.n % {len(paths)}""")
    spec, nprobe = choose_spec(n_vectors)
    for model in service.models.values():
        cached = work / f"million-{model.key}-{n_vectors}.faiss"
        if cached.is_file():  # a rerun with the same --work reuses the built index
            index = faiss.read_index(str(cached))
            faiss_index.set_nprobe(index, nprobe)
        else:
            _, base = load_vectors(model.opened.con)  # [M, D] the model's real archive embeddings
            start = time.perf_counter()
            noisy = base[rng.integers(0, len(base), n_vectors)]
            noisy += rng.normal(0, 0.05, noisy.shape).astype(np.float32)  # [n, D] clusters around real ones
            faiss.normalize_L2(noisy)
            nlist = int(spec.split(",")[0][3:])
            trained = train_index(spec, noisy[rng.choice(n_vectors, min(n_vectors, 39 * nlist), replace=False)])
            index = build_index(spec, nprobe, ids, noisy, trained)
            faiss.write_index(index, str(cached))
            print(f"  built {spec} nprobe {nprobe} for {model.key} ({n_vectors} x {noisy.shape[1]}) in "
                  f"{time.perf_counter() - start:.0f} s")
            del noisy
        manifest = {**model.opened.manifest, "nprobe": nprobe, "spec": spec, "ntotal": n_vectors}
        opened = replace(model.opened, con=catalogue, index=index, manifest=manifest)
        models.append(replace(model, opened=opened, rows=RowLookup(catalogue) if lookup else None))
    return RetrievalService(models), f"{n_vectors:,} vectors per model, {spec}, nprobe {nprobe}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--work", help="scratch folder (default: a new temporary folder)")
    args = parser.parse_args()
    import faiss

    from retrieval_app.service import RetrievalService

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-app-"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start; faiss {faiss.__version__}, duckdb {duckdb.__version__}")
    service, queries, label = demo_service(work)
    print(f"[demo] {label}")
    latencies, _ = run(service, queries, args.queries)
    print(f"[demo] 1 client : {percentiles(latencies)}")
    faiss_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # building: use every core
    big, big_label = million_service(service, args.vectors, work)
    faiss.omp_set_num_threads(faiss_threads)
    print(f"[1M] {big_label}")
    latencies, _ = run(big, queries, args.queries)
    print(f"[1M] 1 client : {percentiles(latencies)}")
    joined = RetrievalService([replace(m, rows=None) for m in big.models.values()])
    latencies, _ = run(joined, queries, max(20, args.queries // 4))
    print(f"[1M] 1 client, rows by indexing.search_vectors' join instead of the rowid lookup: {percentiles(latencies)}")
    latencies, wall = run(big, queries, args.queries, args.clients)
    print(f"[1M] {args.clients} clients: {percentiles(latencies)}   throughput {len(latencies) / wall:.1f} queries/s")
    stages = {k: statistics.median(r.timings_ms[k] for r in big.query(queries[0], k=10).models.values())
              for k in ("embed", "search")}
    print(f"[1M] stages of one query, per model: embed {stages['embed']:.1f} ms, search + catalogue "
          f"{stages['search']:.1f} ms; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
