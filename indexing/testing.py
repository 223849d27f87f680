"""Tiny archives and models for the indexing tests and benchmarks (no real data, no trained weights needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY_CLASSES = ("Forest", "River", "SeaLake")
_COLOURS = {"Forest": (40, 90, 40), "River": (90, 110, 140), "SeaLake": (20, 40, 110)}


def write_archive(root: str | Path, per_class: int = 12, classes: tuple[str, ...] = TINY_CLASSES, size: int = 64,
                  seed: int = 0, start: int = 0) -> Path:
    """EuroSAT-like archive: ``root/2750/<Class>/<Class>_<n>.jpg`` plus ``splits.csv`` (half train, a quarter
    val, a quarter test per class). Classes differ in colour and texture so any encoder separates them a bit.
    ``start`` offsets the file numbers (to add files to an existing archive; splits.csv is rewritten)."""
    root = Path(root)
    rng = np.random.default_rng(seed + start)
    for c, name in enumerate(classes):
        folder = root / "2750" / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array(_COLOURS.get(name, (60 * c % 255, 80, 120)), dtype=np.float32)
        for n in range(start, start + per_class):
            yy, xx = np.mgrid[:size, :size]
            stripes = 30 * np.sin((xx * (c + 1) + yy * c) / 4.0)[..., None]
            pixels = base + stripes + rng.normal(0, 20, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{name}_{n}.jpg", quality=90)
    write_splits(root)
    return root


def write_splits(root: str | Path) -> None:
    """(Re)write ``root/splits.csv`` for every JPEG under ``root/2750`` (n % 4: 0,1 train, 2 val, 3 test)."""
    root = Path(root)
    rows = []
    for path in sorted((root / "2750").glob("*/*.jpg")):
        n = int(path.stem.rsplit("_", 1)[1])
        rows.append((path.relative_to(root).as_posix(), path.parent.name, ("train", "train", "val", "test")[n % 4]))
    with open(root / "splits.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "split"))
        writer.writerows(rows)


def tiny_config(method: str = "ijepa", img_size: int = 64):
    """A tiny ViT config (width 48, depth 2, 2 heads, patch 8) with unit band statistics."""
    from training.config import load_config

    return load_config(None, method=method,
                       model={"embed_dim": 48, "depth": 2, "num_heads": 2, "img_size": img_size, "patch_size": 8},
                       data={"stats_mean": [0.4, 0.4, 0.4], "stats_std": [0.2, 0.2, 0.2]})


def export_tiny_model(out_dir: str | Path, method: str = "ijepa", seed: int = 0) -> Path:
    """Export a randomly initialised tiny encoder to ``out_dir`` (encoder.onnx + model_card.json); ~10 s."""
    from training.export import export_encoder, random_init_encoder

    config = tiny_config(method)
    encoder = random_init_encoder(config, seed)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    export_encoder(encoder, config, out_dir, images, provenance={"training_data": None, "epochs": 0, "steps": 0},
                   name=Path(out_dir).name)
    return Path(out_dir)


def cached_tiny_model(base: str | Path, method: str = "ijepa") -> Path:
    """``export_tiny_model`` into ``base/models/tiny-<method>`` unless already there (share one per test session)."""
    out = Path(base) / "models" / f"tiny-{method}"
    if not (out / "model_card.json").is_file():
        export_tiny_model(out, method)
    return out
