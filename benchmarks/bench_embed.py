"""Embedding throughput of `python -m indexing build`, end to end from image files, ÷ the encoder alone on
pre-loaded tensors (goal >= 0.9), and ONNX Runtime ÷ PyTorch eager. Prints ratios from one run.

    python benchmarks/bench_embed.py [--archive ../shared/data/eurosat-rgb] [--images 2000] [--model DIR]
    python benchmarks/bench_embed.py --engines local ray --images 5000   # + build --engine ray ÷ local (>= 0.9)

With ``--engines local ray`` the Ray build runs on a local cluster of this machine's cores, started once before
the timed rounds (as a build joining a running cluster with ``--address auto`` finds it); its start-up is
printed apart. The rounds alternate between the engines and each keeps its best, so load from elsewhere on the
machine falls on both alike.

Without --model, a randomly initialised encoder of the default architecture (ViT width 192, depth 6, 64 px,
patch 8) is exported to a temporary folder: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from indexing.build import build
from indexing.encoders import OnnxEncoder
from training.config import load_config
from training.data import open_archive
from training.export import export_encoder, random_init_encoder

EUROSAT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eurosat-rgb"


def subset_archive(archive: Path, n: int, out: Path) -> Path:
    """Copy ``n`` images of ``archive``, evenly spaced over all its splits, into class folders under ``out``."""
    dataset = open_archive(archive, None)
    for i in range(0, len(dataset), max(1, len(dataset) // n))[:n]:
        item = dataset.items[i]
        target = out / "2750" / dataset.classes[item.label] / item.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(item.path, target)
    return out


def images_per_second(fn, images: torch.Tensor, batch: int, repeats: int = 1) -> float:
    fn(images[:batch])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(images), batch):
            fn(images[i:i + batch])
    return repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=EUROSAT)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", nargs="+", choices=("local", "ray"), default=["local"])
    args = parser.parse_args()
    ray_start = None
    if "ray" in args.engines:
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = load_config(None, method="ijepa", data={"stats_mean": [0.35, 0.38, 0.41],
                                                         "stats_std": [0.2, 0.14, 0.12]})
        module = random_init_encoder(config, seed=0)
        model = args.model or tmp / "bench-model"
        if args.model is None:
            export_encoder(module, config, model, torch.rand(4, 3, 64, 64))
        archive = subset_archive(args.archive, args.images, tmp / "archive")

        encoder = OnnxEncoder(model)
        dataset = open_archive(archive, None, image_size=encoder.input_size)
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])  # [N, C, S, S], pre-loaded
        end_to_end, onnx, eager = 0.0, 0.0, 0.0
        by_engine = {engine: 0.0 for engine in args.engines}
        for round_ in range(args.rounds):  # interleaved rounds, best of each: robust to other load on the CPU
            for engine in args.engines:
                start = time.perf_counter()
                summary = build(model, archive, tmp / f"index-{engine}{round_}", batch_size=args.batch_size,
                                engine=engine)
                by_engine[engine] = max(by_engine[engine], summary.embedded / (time.perf_counter() - start))
            end_to_end = by_engine[args.engines[0]]
            onnx = max(onnx, images_per_second(encoder.embed, images, args.batch_size))
            with torch.no_grad():
                eager = max(eager, images_per_second(lambda x: module(x)[0], images, args.batch_size))

    print(f"{summary.embedded} EuroSAT images, batch {args.batch_size}, {os.cpu_count()} CPU threads, "
          f"model {encoder.card['model']['embed_dim']}-d x {encoder.card['model']['depth']} blocks")
    print(f"build end to end (hash, read, decode, embed, commit, index): {end_to_end:7.1f} images/s")
    print(f"encoder alone, ONNX Runtime, pre-loaded tensors:            {onnx:7.1f} images/s")
    print(f"encoder alone, PyTorch eager, pre-loaded tensors:           {eager:7.1f} images/s")
    print(f"ratio build / encoder alone = {end_to_end / onnx:.2f} (goal >= 0.9)")
    print(f"ratio ONNX Runtime / PyTorch eager = {onnx / eager:.2f}")
    if "ray" in by_engine and "local" in by_engine:
        print(f"build --engine ray (local cluster, {os.cpu_count()} CPUs; started in {ray_start:.1f} s, not counted): "
              f"{by_engine['ray']:7.1f} images/s; --engine local {by_engine['local']:7.1f} images/s")
        print(f"ratio ray / local = {by_engine['ray'] / by_engine['local']:.2f} (goal >= 0.9); load average "
              f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
