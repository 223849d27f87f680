"""The analyst's loop, simulated: how much do ✓ / ✗ marks help each model and ranker find every tile of a class?

    python benchmarks/bench_loop.py [--starts 5] [--rounds 3] [--marks 20] [--scale 1000000] [--evaluate-cache index]
                                    [--archives NAME ...] [--models MODEL ...]

Archives indexed as a user would (``indexing.build`` into ``index/bench-loop/<model>/``, incremental): the EuroSAT
test split (5,400 tiles, 540 per class; models ``ijepa``, ``mae`` and the fine-tuned classifier ``mae-ft``) and
AID's train split (6,000 scenes, 200 per class; ``ijepa-aid``, ``mae-aid``), each as the catalogue's split filter
over its whole archive, read from ../shared/data (never shipped); and AID's val + test (4,000 scenes, ~133 per
class) for the AID classifier ``mae-aid-ft`` beside ``mae-aid`` (its fine-tuning saw AID train). A fine-tuned
model was trained on these very classes: its rows show what class-aware embeddings give the loop, not how it finds
a kind of scene no label named. For every class, ``--starts`` random tiles of it start a search (seeded); each round
the analyst marks the top ``--marks`` unmarked results by their true label (``retrieval_app.loop.simulate``).
Printed per archive, model and ranker, after each round (0 = the single query): precision@100 of the next page of
unmarked results (strict: what the analyst is shown next), precision of the first 100 finds (the ✓ first, then
the ranking, the ✗ left out: what Find all keeps) and recall = the part of the class found when taking as many
finds as it has tiles. Then the time of one round (ranker + top-100 of the archive) at ``--scale`` vectors: the
archive's vectors repeated with Gaussian noise (a labelled synthetic extension, only for timing). Goals (issue 19):
precision@100 >= 0.95 on EuroSAT and >= 0.80 on AID after 3 rounds for the better model; a round at 1M <= 1 s.
Not a test.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from indexing.build import build
from indexing.catalog import load_vectors
from indexing.store import open_index
from retrieval_app.loop import RANKERS, ranked, simulate

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
#: name -> (archive, its splits searched, the models). The self-supervised encoders on the issue's archives; the
#: shipped fine-tuned classifiers (their embeddings) only on splits their fine-tuning never saw: ``mae-ft`` was
#: tuned on EuroSAT train, ``mae-aid-ft`` on AID train (val chose between two runs), so AID's own row for them is
#: val + test beside ``mae-aid`` on the same scenes.
ARCHIVES = {"EuroSAT test": (SHARED / "eurosat-rgb", ("test",), ("ijepa", "mae", "mae-ft")),
            "AID train": (SHARED / "aid", ("train",), ("ijepa-aid", "mae-aid")),
            "AID val + test": (SHARED / "aid", ("val", "test"), ("mae-aid", "mae-aid-ft"))}


def cached_vectors(model: str, archive: Path, splits: tuple[str, ...], cache: Path
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """The same vectors from ``python -m indexing evaluate``'s cache (``<cache>/<model>/features-<archive>-<split>.npz``
    per split: the same ONNX embeddings that ``build`` stores, before its L2 normalisation), or None when not
    cached."""
    paths = [cache / model / f"features-{archive.name}-{split}.npz" for split in splits]
    if not all(path.is_file() for path in paths):
        return None
    xs, ys = [], []
    for path in paths:
        with np.load(path) as data:
            xs.append(data["x"].astype(np.float32))
            ys.append(data["y"])
    x = np.concatenate(xs)  # [N, D] the splits one after the other
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.concatenate(ys)


def archive_vectors(model: str, archive: Path, splits: tuple[str, ...], index_dir: Path
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 [N, D] L2-normalised, label indices [N]) of some splits of an indexed archive."""
    folder = index_dir / model
    if not (folder / "catalog.duckdb").is_file():
        print(f"indexing {archive} with {model} (once) ...", flush=True)
        build(model, archive, index_dir)
    opened = open_index(folder)
    try:
        ids, vectors = load_vectors(opened.con, "WHERE hash IN (SELECT hash FROM images)")
        rows = opened.con.execute("SELECT id, label FROM images WHERE list_contains(?, split) ORDER BY id",
                                  [list(splits)]).fetchall()
    finally:
        opened.close()
    wanted = np.searchsorted(ids, np.array([r[0] for r in rows], dtype=np.int64))
    names = sorted({r[1] for r in rows})
    return vectors[wanted], np.array([names.index(r[1]) for r in rows])


MEASURES = ("precision@100", "finds@100", "recall")


def loop_table(vectors: np.ndarray, labels: np.ndarray, starts: int, rounds: int, marks: int, seed: int = 0
               ) -> dict[str, np.ndarray]:
    """{ranker: [3, rounds + 1] mean (precision@100, finds@100, recall)} over ``starts`` seeded starts per class."""
    rng = np.random.default_rng(seed)
    chosen = [int(s) for c in np.unique(labels) for s in rng.choice(np.flatnonzero(labels == c), starts, replace=False)]
    out = {}
    for ranker in RANKERS:
        runs = [simulate(vectors, labels, s, ranker, rounds=rounds, marks_per_round=marks) for s in chosen]
        out[ranker] = np.array([[[r[m] for m in MEASURES] for r in run] for run in runs]).mean(axis=0).T
    return out


def tune_logistic(cache: Path, starts: int = 3) -> None:
    """The logistic ranker's settings on EuroSAT *val* (never the benchmark's test split): finds P@100 and next
    page P@100 after 3 rounds, per model, for a small grid of C, weak negatives and their weight."""
    import functools
    import itertools

    archive = ARCHIVES["EuroSAT test"][0]
    data = {m: cached_vectors(m, archive, ("val",), cache) for m in ("ijepa", "mae")}
    print("| C | weak negatives | weak weight | " + " | ".join(f"{m} finds / next page" for m in data) + " |")
    print("|---" * (3 + len(data)) + "|")
    for c, weak, weight in itertools.product((1.0, 10.0, 100.0), (1000, 5000), (0.3, 1.0)):
        ranker = functools.partial(RANKERS["logistic"], c=c, weak=weak, weak_weight=weight)
        cells = []
        for vectors, labels in data.values():
            rng = np.random.default_rng(1)
            chosen = [int(s) for k in np.unique(labels)
                      for s in rng.choice(np.flatnonzero(labels == k), starts, replace=False)]
            last = [simulate(vectors, labels, s, ranker)[-1] for s in chosen]
            cells.append(f"{np.mean([r['finds@100'] for r in last]):.3f} / "
                         f"{np.mean([r['precision@100'] for r in last]):.3f}")
        print(f"| {c:g} | {weak} | {weight} | " + " | ".join(cells) + " |", flush=True)


def round_time(vectors: np.ndarray, scale: int, marks: int, rounds: int = 3, repeats: int = 3) -> dict[str, float]:
    """Median seconds of one round (ranker over ``scale`` vectors + top 100) with the marks of round ``rounds``."""
    rng = np.random.default_rng(0)
    reps = -(-scale // len(vectors))
    big = np.concatenate([vectors + rng.normal(0, 0.02, vectors.shape).astype(np.float32) for _ in range(reps)])[:scale]
    big /= np.linalg.norm(big, axis=1, keepdims=True)
    positives = big[rng.choice(scale, 1 + marks * rounds // 2, replace=False)]
    negatives = big[rng.choice(scale, marks * rounds // 2, replace=False)]
    marked = rng.choice(scale, len(positives) + len(negatives), replace=False)
    times = {}
    for ranker, rank in RANKERS.items():
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            ranked(rank(big, positives, negatives), marked, 100)
            seconds.append(time.perf_counter() - started)
        times[ranker] = float(np.median(seconds))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5, help="random starting tiles per class")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--marks", type=int, default=20, help="results marked per round")
    parser.add_argument("--scale", type=int, default=1_000_000, help="vectors for the round timing")
    parser.add_argument("--archives", nargs="+", choices=list(ARCHIVES), default=list(ARCHIVES))
    parser.add_argument("--models", nargs="+", help="only these of each archive's models")
    parser.add_argument("--index-dir", type=Path, default=REPO / "index" / "bench-loop")
    parser.add_argument("--evaluate-cache", type=Path, metavar="DIR",
                        help="read the embeddings `python -m indexing evaluate` cached in DIR (e.g. index/) instead "
                             "of building the archives' indexes (the same vectors, without the build's minutes)")
    parser.add_argument("--tune", action="store_true",
                        help="only the logistic ranker's grid on EuroSAT val (needs --evaluate-cache)")
    args = parser.parse_args()
    if args.tune:
        tune_logistic(args.evaluate_cache or REPO / "index")
        return
    print(f"{platform.processor() or platform.machine()}; {args.starts} starts per class, {args.marks} marks a round")
    rounds = range(args.rounds + 1)
    print("| archive | model | ranker | next page P@100, rounds " + "→".join(map(str, rounds))
          + " | finds P@100 | recall |")
    print("|---" * 6 + "|")
    sample = None
    for name in args.archives:
        archive, splits, models = ARCHIVES[name]
        if not archive.is_dir():
            print(f"| {name} | skipped: {archive} not found |")
            continue
        for model in (m for m in models if not args.models or m in args.models):
            cached = cached_vectors(model, archive, splits, args.evaluate_cache) if args.evaluate_cache else None
            vectors, labels = cached or archive_vectors(model, archive, splits, args.index_dir / Path(archive).name)
            sample = vectors if sample is None else sample
            for ranker, table in loop_table(vectors, labels, args.starts, args.rounds, args.marks).items():
                cells = [" → ".join(f"{v:.2f}" for v in row) for row in table]
                print(f"| {name} | {model} | {ranker} | " + " | ".join(cells) + " |", flush=True)
    if sample is not None:
        times = round_time(sample, args.scale, args.marks, args.rounds)
        print(f"\none round at {args.scale:,} vectors (ranker + top 100, marks of round {args.rounds}): "
              + ", ".join(f"{r} {1e3 * t:.0f} ms" for r, t in times.items()))


if __name__ == "__main__":
    main()
