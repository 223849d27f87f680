"""Index size, build time, memory, recall and latency at 1 M, 10 M and 100 M vectors on this machine.

    python benchmarks/bench_scale.py --sizes 1e6 1e7          # ~25 min on 2 cores
    python benchmarks/bench_scale.py --sizes 1e8 --serve-nprobe 64 128   # ~1.5 h, 39 GB disk, 23 GB peak RSS

The vectors (benchmarks/scale_vectors.py): every real embedding we can make with one model (``mae-aid``: EuroSAT
and AID train + val, the located chips, random crops of the GeoTIFF scenes), then a synthetic extension drawn from
Gaussians fitted to them (clearly not real tiles), generated block by block, never all in RAM. Queries are real
and held out (EuroSAT and AID test): 400 calibrate the compressed index's nprobe (the build's rule: the smallest
reaching recall@10 >= 0.95), 1,000 others are scored. Exact top-10 over all n vectors is computed streaming.

Rows per size (each built and served in its own process, so peak RSS is that row's alone):

* ``compressed``: the spec ``indexing`` chooses at this size (IVF + 2-bit RaBitQ codes) with its top
  ``30 k`` candidates re-scored on the float16 vectors memory-mapped from disk (indexing.vector_store), and the
  same codes without re-ranking;
* ``ivf-flat``: today's ``IVF<nlist>,Flat`` in RAM (the same coarse centroids, so one k-means serves both);
* ``ivf-flat on disk``: the same lists merged into an ``OnDiskInvertedLists`` file (``indexing merge``'s layout)
  and memory-mapped, served warm and cold (its pages dropped from the page cache first).

Printed per row: build seconds, bytes per vector in RAM (codes + ids) and on disk, RSS while serving, peak RSS of
the build, recall@10 against exact search, p50 / p95 latency with 1 and 8 clients.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_vectors import BLOCK, REPO, RealVectors, ScaleVectors, SyntheticExtension, real_vectors  # noqa: E402

from indexing.faiss_index import (  # noqa: E402
    COMPRESSED_CODES, NPROBE_LADDER, RERANK_FACTOR, calibrate_nprobe, choose_spec, climb_ladder, is_compressed,
    nlist_of, recall_at, search)
from indexing.vector_store import VectorStore, write_store  # noqa: E402

K = 10
CALIBRATION_QUERIES = 400


# ----------------------------------------------------------------------------------------------- the data, cached
def prepared(workdir: Path, model: str) -> tuple[RealVectors, SyntheticExtension]:
    """The real vectors and the fitted extension, from ``index/_scale/real-<model>.npz`` (made once: embedding
    the crops and fitting take a few minutes)."""
    path = REPO / "index" / "_scale" / f"real-{model}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        real = real_vectors(model, queries_per_archive=(1000 + CALIBRATION_QUERIES) // 2)
        synthetic = SyntheticExtension(real)
        np.savez(path, base=real.base, queries=real.queries, sources=np.array(real.query_source),
                 means=np.array(synthetic.means), factors=np.array(synthetic.factors), weights=synthetic.weights)
    with np.load(path) as data:
        real = RealVectors(data["base"], [], data["queries"], list(data["sources"]))
        synthetic = SyntheticExtension.from_parts(data["means"], data["factors"], data["weights"])
    return real, synthetic


def query_split(real: RealVectors) -> tuple[np.ndarray, np.ndarray]:
    """(calibration queries [400, D], scored queries [Q, D]): alternate rows, so both mix EuroSAT and AID."""
    order = np.random.default_rng(1).permutation(len(real.queries))
    return real.queries[order[:CALIBRATION_QUERIES]], real.queries[order[CALIBRATION_QUERIES:]]


def ground_truth(workdir: Path, vectors: ScaleVectors, calibration: np.ndarray, queries: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-K ids of the calibration [400, K] and scored [Q, K] queries, from one pass over the n vectors
    (generating a block costs more than scoring it), cached in ``workdir``."""
    paths = workdir / f"truth-calibration-{vectors.n}.npy", workdir / f"truth-{vectors.n}.npy"
    if not all(path.is_file() for path in paths):
        ids = vectors.exact_top(np.concatenate([calibration, queries]), K)[1]
        np.save(paths[0], ids[:len(calibration)])
        np.save(paths[1], ids[len(calibration):])
    return np.load(paths[0]), np.load(paths[1])


def coarse_centroids(workdir: Path, vectors: ScaleVectors, nlist: int) -> tuple[np.ndarray, float]:
    """Spherical k-means centroids [nlist, D] on 64 * nlist rows (as ``train_index`` subsamples), cached."""
    path = workdir / f"centroids-{vectors.n}-{nlist}.npy"
    if not path.is_file():
        start = time.perf_counter()
        kmeans = faiss.Kmeans(vectors.dim, nlist, niter=20, spherical=True, seed=1, max_points_per_centroid=64)
        kmeans.train(vectors.training_sample(64 * nlist))
        np.save(path, kmeans.centroids)
        (workdir / f"centroids-{vectors.n}-{nlist}.seconds").write_text(f"{time.perf_counter() - start:.1f}")
    return np.load(path), float((workdir / f"centroids-{vectors.n}-{nlist}.seconds").read_text())


# ----------------------------------------------------------------------------------------------- one row, one process
def rss_mb(kind: str = "VmRSS") -> float:
    """This process's resident memory in MB: ``VmRSS`` (all), ``RssAnon`` (its own allocations: the index) or
    ``RssFile`` (pages of memory-mapped files: the store's, reclaimable page cache)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(kind)) / 1024


def peak_rss_mb() -> float:
    """This process's peak RSS since exec (VmHWM: ru_maxrss would include the parent's before the fork)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def with_centroids(spec: str, centroids: np.ndarray) -> faiss.Index:
    """An empty ``spec`` index whose coarse quantizer already holds ``centroids`` (training then fits only the
    codes: FAISS skips k-means when the quantizer has nlist centroids)."""
    index = faiss.index_factory(centroids.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).quantizer.add(centroids)
    return index


def build_row(args: argparse.Namespace) -> dict:
    """Build one row's index (and store) from the generated blocks; returns its build figures."""
    workdir, n = Path(args.workdir), int(args.size)
    real, synthetic = prepared(workdir, args.model)
    vectors = ScaleVectors(n, real, synthetic)
    spec = args.spec
    centroids, kmeans_s = coarse_centroids(workdir, vectors, nlist_of(spec))
    start = time.perf_counter()
    index = with_centroids(spec, centroids)
    index.train(vectors.training_sample(64 * nlist_of(spec)))
    if args.row == "ivf-flat on disk":  # shards of 1 M rows, merged into one on-disk file as `indexing merge` does
        from faiss.contrib.ondisk import merge_ondisk

        shards = []
        for b, (ids, x) in enumerate(vectors.blocks()):
            shard = faiss.clone_index(index)
            shard.add_with_ids(x, ids)
            shards.append(str(workdir / f"{args.name}.shard{b}.faiss"))
            faiss.write_index(shard, shards[-1])
            del shard
        merge_ondisk(index, shards, str(workdir / f"{args.name}.ivfdata"))
        for path in shards:
            os.unlink(path)
    else:
        for ids, x in vectors.blocks():
            index.add_with_ids(x, ids)
    faiss.write_index(index, str(workdir / f"{args.name}.faiss"))
    seconds = time.perf_counter() - start + kmeans_s
    store_s = 0.0
    if args.row == "compressed":
        start = time.perf_counter()
        write_store(workdir, args.name, n, vectors.dim, vectors.blocks())
        store_s = time.perf_counter() - start
    return {"build_s": seconds, "kmeans_s": kmeans_s, "store_s": store_s, "build_peak_rss_mb": peak_rss_mb()}


def latencies(index: faiss.Index, store: VectorStore | None, queries: np.ndarray, nprobe: int, clients: int
              ) -> np.ndarray:
    """Per-query latency (ms) of single-query searches from ``clients`` threads at once."""
    def one(q: np.ndarray) -> float:
        start = time.perf_counter()
        search(index, q[None], K, nprobe, store=store)
        return 1000 * (time.perf_counter() - start)

    with ThreadPoolExecutor(clients) as pool:
        return np.array(list(pool.map(one, queries)))


def serve_row(args: argparse.Namespace) -> dict:
    """Load one row's index as a server would and measure RSS, recall and latency."""
    workdir, n = Path(args.workdir), int(args.size)
    real, _ = prepared(workdir, args.model)
    calibration, queries = query_split(real)
    truth = np.load(workdir / f"truth-{n}.npy")
    calibration_truth = np.load(workdir / f"truth-calibration-{n}.npy")
    faiss.omp_set_num_threads(1)  # one query, one thread: clients are the parallelism
    path = workdir / f"{args.name}.faiss"
    if args.cold:  # drop the file's pages from the page cache: the first queries read the disk
        for p in (path, workdir / f"{args.name}.ivfdata", *workdir.glob(f"{args.name}.*.npy")):
            if p.is_file():
                with open(p, "rb") as f:
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    before, before_file = rss_mb("RssAnon"), rss_mb("RssFile")
    index = faiss.read_index(str(path))
    store = VectorStore(workdir, args.name) if args.rerank else None
    loaded = rss_mb("RssAnon") - before
    out: dict = {"index_rss_mb": loaded, "file_bytes_per_vector": path.stat().st_size / n}
    if (workdir / f"{args.name}.ivfdata").is_file():
        out["disk_bytes_per_vector"] = (workdir / f"{args.name}.ivfdata").stat().st_size / n
    if store is not None:
        out["disk_bytes_per_vector"] = store.nbytes / n
    if args.cold:
        ms = latencies(index, store, queries[:200], int(args.nprobe or 32), 1)
        out.update(nprobe=int(args.nprobe or 32), p50_1=float(np.percentile(ms, 50)),
                   p95_1=float(np.percentile(ms, 95)), serving_rss_mb=rss_mb("RssAnon") - before,
                   serving_file_mb=rss_mb("RssFile") - before_file)
        return out
    nprobe = args.nprobe
    if not nprobe:  # the build's rule, on the calibration queries
        def recall(probe: int) -> float:
            return recall_at(search(index, calibration, K, probe, store=store)[1], calibration_truth)

        recalls = climb_ladder(recall, NPROBE_LADDER)
        nprobe = calibrate_nprobe(recalls)
        out["calibration"] = recalls
    _, found = search(index, queries, K, nprobe, store=store)
    out.update(nprobe=int(nprobe), recall=recall_at(found, truth))
    for clients in (1, 8):
        ms = latencies(index, store, queries, nprobe, clients)
        out[f"p50_{clients}"], out[f"p95_{clients}"] = float(np.percentile(ms, 50)), float(np.percentile(ms, 95))
    out["serving_rss_mb"] = rss_mb("RssAnon") - before
    out["serving_file_mb"] = rss_mb("RssFile") - before_file
    return out


# ----------------------------------------------------------------------------------------------- the table
def child(phase: str, **options) -> dict:
    argv = [sys.executable, __file__, "--phase", phase] + [
        item for key, value in options.items() if value not in (None, False)
        for item in ([f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)]))]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows_for(n: int, dim: int, max_flat_gb: float, only: list[str] | None = None) -> list[tuple[str, str, bool]]:
    """(row, spec, rerank) for size n: the compressed spec, and today's IVF-Flat where its vectors fit."""
    spec, _ = choose_spec(n, dim)
    if not is_compressed(spec):  # below the compressed tier: compare at the tier's spec anyway
        spec = f"IVF{2 ** round(np.log2(np.sqrt(n)))},{COMPRESSED_CODES}"
    flat = f"IVF{nlist_of(spec)},Flat"
    rows = [("compressed", spec, True)]
    if n * (4 * dim + 8) <= max_flat_gb * 2 ** 30:
        rows += [("ivf-flat", flat, False), ("ivf-flat on disk", flat, False)]
    return [r for r in rows if not only or r[0] in only]


def fmt(value: float | None, width: int, spec: str) -> str:
    return f"{value:{width}{spec}}" if value is not None else " " * (width - 1) + "-"


def run_size(workdir: Path, model: str, n: int, max_flat_gb: float, only: list[str] | None = None,
             serve_nprobe: list[int] | None = None) -> list[str]:
    real, synthetic = prepared(workdir, model)
    vectors = ScaleVectors(n, real, synthetic)
    calibration, queries = query_split(real)
    start = time.perf_counter()
    ground_truth(workdir, vectors, calibration, queries)
    print(f"[{n:,}] exact top-{K} of {len(queries) + len(calibration)} real queries over {n:,} vectors "
          f"({vectors.real_rows:,} real, {n - vectors.real_rows:,} synthetic): {time.perf_counter() - start:.0f} s",
          flush=True)
    lines = []
    for row, spec, rerank in rows_for(n, vectors.dim, max_flat_gb, only):
        name = f"{row.replace(' ', '-')}-{n}"
        built = child("build", workdir=workdir, model=model, size=n, spec=spec, row=row, name=name)
        variants = [("", rerank, None)] + ([(" no re-rank", False, None)] if rerank else [])
        variants += [(f", nprobe {probe}", True, probe) for probe in (serve_nprobe or []) if rerank]
        for suffix, use_store, nprobe in variants:
            served = child("serve", workdir=workdir, model=model, size=n, name=name, rerank=use_store, nprobe=nprobe)
            lines.append(table_line(n, f"{row}{suffix}", spec, built, served))
            print(lines[-1], flush=True)
            if "calibration" in served:  # the build's rule: how recall@10 grew along the nprobe ladder
                print(f"{'':>11} {'':<26} calibration recall@10 by nprobe: " + ", ".join(
                    f"{probe}: {recall:.3f}" for probe, recall in served["calibration"].items()), flush=True)
            if row == "ivf-flat on disk":
                cold = child("serve", workdir=workdir, model=model, size=n, name=name, cold=True,
                             nprobe=served["nprobe"])
                lines.append(table_line(n, f"{row}, cold", spec, built, cold))
                print(lines[-1], flush=True)
        for path in workdir.glob(f"{name}.*"):
            path.unlink()
    return lines


HEADER = (f"{'size':>11} {'row':<26} {'spec':<20} {'build s':>8} {'RAM B/vec':>9} {'disk B/vec':>10} "
          f"{'anon MB':>8} {'mapped MB':>9} {'build peak MB':>13} {'nprobe':>6} {'recall@10':>9} "
          f"{'p50 1c ms':>9} {'p95 1c':>7} {'p50 8c ms':>9} {'p95 8c':>7}")


def table_line(n: int, row: str, spec: str, built: dict, served: dict) -> str:
    ram = served["file_bytes_per_vector"]  # the .faiss file is what RAM holds (on disk: only the centroids)
    return (f"{n:>11,} {row:<26} {spec:<20} {built['build_s'] + built['store_s']:8.0f} {ram:9.1f} "
            f"{fmt(served.get('disk_bytes_per_vector'), 10, '.1f')} {served['serving_rss_mb']:8.0f} "
            f"{served.get('serving_file_mb', 0):9.0f} "
            f"{built['build_peak_rss_mb']:13.0f} {served['nprobe']:6d} {fmt(served.get('recall'), 9, '.3f')} "
            f"{served['p50_1']:9.2f} {served['p95_1']:7.2f} {fmt(served.get('p50_8'), 9, '.2f')} "
            f"{fmt(served.get('p95_8'), 7, '.2f')}")


CODES = ("IVF512,Flat", "IVF512,PQ48x4fs", "IVF512,PQ96x4fsr", "OPQ48_192,IVF512,PQ48x4fs", "IVF512,SQ4",
         "IVF512,RaBitQ", "IVF512,RaBitQ2", "IVF512,RaBitQ3")


def compare_codes(workdir: Path, model: str, n: int) -> None:
    """How the compressed tier's codes were chosen: each candidate spec on the first ``n`` rows, its bytes per
    vector and recall@10 from the codes alone and re-ranked (``RERANK_FACTOR`` x k on float16 copies), at
    nprobe 16 and 64, for 1,000 real held-out queries."""
    real, synthetic = prepared(workdir, model)
    vectors = ScaleVectors(n, real, synthetic)
    _, queries = query_split(real)
    x = np.concatenate([b for _, b in vectors.blocks()])
    ids = np.arange(len(x), dtype=np.int64)
    _, truth = faiss.knn(queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)
    store = write_store(workdir, f"codes-{n}", n, x.shape[1], [(ids, x)])
    print(f"\n[codes] {n:,} vectors, {len(queries)} real queries, re-rank {RERANK_FACTOR} x k on float16")
    print(f"{'spec':<28} {'B/vector':>8} {'train+add s':>11}   recall@10 codes / re-ranked: nprobe 16, 64")
    for spec in CODES:
        start = time.perf_counter()
        index = faiss.index_factory(x.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        index.train(x[np.random.default_rng(0).choice(n, min(n, 64 * 512), replace=False)])
        index.add_with_ids(x, ids)
        seconds = time.perf_counter() - start
        cells = []
        for nprobe in (16, 64):
            _, codes = search(index, queries, K, nprobe)
            _, ranked = search(index, queries, K, nprobe, store=store)
            cells.append(f"{recall_at(codes, truth):.3f} / {recall_at(ranked, truth):.3f}")
        print(f"{spec:<28} {faiss.serialize_index(index).nbytes / n:8.1f} {seconds:11.1f}   {',   '.join(cells)}",
              flush=True)
    for path in workdir.glob(f"codes-{n}.*"):
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--model", default="mae-aid", help="the model whose real embeddings seed the vectors")
    parser.add_argument("--workdir", help="where indexes are written (default: a temporary folder; needs ~2.3 KB "
                                          "per vector at 10 M for the IVF-Flat rows)")
    parser.add_argument("--max-flat-gb", type=float, default=12.0, help="IVF-Flat rows only while they fit this")
    parser.add_argument("--rows", nargs="+", choices=("compressed", "ivf-flat", "ivf-flat on disk"),
                        help="only these rows (default: all that fit)")
    parser.add_argument("--serve-nprobe", type=int, nargs="+", metavar="NPROBE",
                        help="also serve the compressed index (re-ranked) at these nprobe, beside the build's choice")
    parser.add_argument("--compare-codes", type=float, metavar="N",
                        help="instead: the candidate codes for the compressed tier on N vectors (e.g. 2e5)")
    parser.add_argument("--phase", choices=("build", "serve"), help=argparse.SUPPRESS)
    for hidden in ("size", "spec", "row", "name", "nprobe"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    parser.add_argument("--rerank", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        args.nprobe = int(args.nprobe) if args.nprobe else None
        print(json.dumps((build_row if args.phase == "build" else serve_row)(args)))
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="satjepa-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(f"machine: {os.uname().machine}, {os.cpu_count()} CPUs, load average {load:.1f} at start; faiss "
          f"{faiss.__version__}; vectors from {args.model}; blocks of {BLOCK:,}; re-rank {RERANK_FACTOR} x k; "
          f"workdir {workdir}", flush=True)
    if args.compare_codes:
        compare_codes(workdir, args.model, int(args.compare_codes))
        return
    lines = []
    for n in args.sizes:
        lines += run_size(workdir, args.model, int(n), args.max_flat_gb, args.rows, args.serve_nprobe)
    print("\n" + HEADER)
    print("\n".join(lines))
    print(f"load average at end {os.getloadavg()[0]:.1f}; RAM B/vec = the FAISS file (codes, ids, centroids; what "
          "read_index holds), disk B/vec = the memory-mapped float16 store (compressed) or inverted lists (on disk); "
          "anon MB = the server's own memory after loading and querying (RssAnon), mapped MB = pages of memory-mapped "
          "files it touched (RssFile: reclaimable page cache)")


if __name__ == "__main__":
    main()
