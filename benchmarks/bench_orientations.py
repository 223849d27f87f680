"""What averaging a fine-tuned classifier's class probabilities over the tile's 8 orientations costs a search in the
app's service (its own head's, or those of the probe re-fitted on its embeddings where one beat the head on val,
as beside the shipped two since 2026-12-07: the same 8 runs of the graph either way).

    python benchmarks/bench_orientations.py [--queries 60] [--chunk 5]

For each shipped fine-tuned classifier with its index (``mae-ft`` on the demo archive, ``mae-aid-ft`` on the located
one; built with ``python -m indexing build`` first where missing), two services over the same index: the class from
the tile as it is ("plain", the app's default) and averaged over its 8 orientations ("8 views", the app's
``--orientations``). They take turns in chunks of ``--chunk`` queries on the same archive tiles, so a busy machine
slows both alike. Printed: the whole
query (decode -> embed + head -> search -> catalogue rows) and its embed stage, p50 / p95, and what the 8 views add;
then the graph run on the 8 views one after the other (as served) against one batch of 8, interleaved. Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from bench_app import percentiles  # benchmarks/bench_app.py, beside this file: "p50 … ms   p95 … ms   (n=…)"

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parents[1]
CLASSIFIERS = {"mae-ft": (REPO / "assets" / "demo", REPO / "index"),
               "mae-aid-ft": (REPO / "assets" / "located", REPO / "index" / "located")}


def bench(model: str, archive: Path, index_dir: Path, queries: int, chunk: int) -> None:
    from retrieval_app.service import RetrievalService

    services = {"plain": RetrievalService.open([model], index_dir, orientations=False),
                "8 views": RetrievalService.open([model], index_dir, orientations=True)}
    try:
        con = services["plain"].catalogue(model)
        examples = [row[0] for row in con.execute(
            "SELECT sample_id FROM images ORDER BY hash LIMIT ?", [queries]).fetchall()]  # [queries] archive tiles
        total: dict[str, list[float]] = {name: [] for name in services}
        embed: dict[str, list[float]] = {name: [] for name in services}
        changed = 0
        for name, service in services.items():  # warm-up: sessions, caches, the first FAISS search
            service.query(example=examples[0], k=10)
        for start in range(0, len(examples), chunk):
            predictions = {}
            for name, service in services.items():
                for example in examples[start:start + chunk]:
                    result = service.query(example=example, k=10)
                    total[name].append(result.timings_ms["total"])
                    embed[name].append(result.models[model].timings_ms["embed"])
                    predictions.setdefault(name, []).append(result.models[model].prediction)
            changed += sum(a != b for a, b in zip(predictions["plain"], predictions["8 views"]))
        print(f"[{model}] {archive.relative_to(REPO)}, input {services['plain'].models[model].encoder.input_size} px")
        for name in services:
            print(f"[{model}] {name:8s} whole query: {percentiles(total[name])};  "
                  f"embed + head: {percentiles(embed[name])}")
        added = statistics.median(total["8 views"]) - statistics.median(total["plain"])
        ratio = statistics.median(embed["8 views"]) / statistics.median(embed["plain"])
        print(f"[{model}] 8 views add {added:.1f} ms to the median query (embed + head {ratio:.1f}x); "
              f"the predicted class changed on {changed} of {len(examples)} tiles")
        one_by_one_or_batched(services["plain"].models[model].encoder, queries)
    finally:
        for service in services.values():
            service.close()


def one_by_one_or_batched(encoder, rounds: int) -> None:
    """The 8 views of a tile through the graph one after the other (as served) or as one batch [8, C, S, S]."""
    import torch

    from training.augment import dihedral_views

    size = encoder.input_size
    tile = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))  # [1, C, S, S]
    views = [view.numpy() for view in dihedral_views(tile)]  # 8 x [1, C, S, S]
    batch = np.concatenate(views)  # [8, C, S, S]
    outputs = ["embedding", "logits"]
    ways = {"one by one": lambda: [encoder.session.run(outputs, {"image": view}) for view in views],
            "one batch": lambda: encoder.session.run(outputs, {"image": batch})}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, run in ways.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    print(f"[{encoder.name}] the 8 views one by one: {percentiles(times['one by one'])};  as one batch: "
          f"{percentiles(times['one batch'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--chunk", type=int, default=5)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; ONNX Runtime one thread per model")
    for model, (archive, index_dir) in CLASSIFIERS.items():
        if not (index_dir / model).is_dir():
            raise SystemExit(f"no index of {model} in {index_dir}: build it first with `python -m indexing build "
                             f"--model {model} --archive {archive.relative_to(REPO)} --index-dir "
                             f"{index_dir.relative_to(REPO)}`")
        bench(model, archive, index_dir, args.queries, args.chunk)


if __name__ == "__main__":
    main()
