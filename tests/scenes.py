"""A small synthetic scene archive for tests that need many labelled images (EuroSAT layout + splits.csv).

Each class has its own colour and stripe orientation, with seeded noise, so a model can learn something
from it in a few steps. Real imagery lives in ../shared/data; this is for tests that must run without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("Cropland", "Forest", "Water")
SPLIT_SIZES = {"train": 24, "val": 6, "test": 6}


def scene(class_index: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One [size, size, 3] uint8 tile of class `class_index`."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = class_index * np.pi / len(CLASSES) + rng.uniform(-0.2, 0.2)
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) / rng.uniform(2.0, 4.0))
    colour = np.array([[60, 140, 60], [30, 90, 30], [40, 60, 140]][class_index % 3], dtype=np.float32)
    image = colour + 40 * stripes[..., None] + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_scene_archive(root: Path, split_sizes: dict[str, int] | None = None, size: int = 64, seed: int = 0) -> Path:
    """Write `root/2750/<Class>/<Class>_<n>.jpg` and `root/splits.csv`; returns root."""
    rng = np.random.default_rng(seed)
    rows = ["path,label,split"]
    for class_index, name in enumerate(CLASSES):
        folder = root / "2750" / name
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        for split, count in (split_sizes or SPLIT_SIZES).items():
            for _ in range(count):
                n += 1
                path = folder / f"{name}_{n}.jpg"
                Image.fromarray(scene(class_index, rng, size)).save(path, quality=92)
                rows.append(f"2750/{name}/{path.name},{name},{split}")
    (root / "splits.csv").write_text("\n".join(rows) + "\n")
    return root
