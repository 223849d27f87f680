"""A tiny, complete app setup for tests, the benchmark and screenshots: two random-init tiny models (I-JEPA and
MAE, with linear heads), a tiny EuroSAT-like archive and both indexes, built with the indexing package."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexing.build import build
from indexing.probe import HEAD_NAME, fit_linear_probe, save_head
from indexing.testing import cached_tiny_model, export_tiny_model, write_archive
from training.data import open_archive
from training.encoder import ExportedEncoder


@dataclass
class TinySetup:
    """Paths of a tiny setup: ``models`` (exported-model folders), ``archive`` and ``index_dir``."""

    models: list[Path]
    archive: Path
    index_dir: Path


def tiny_setup(base: str | Path, per_class: int = 8) -> TinySetup:
    """Make (once; reused when ``base`` already holds it) two tiny models with heads (``base/app-models/{ijepa,
    mae}``), an archive of 3 classes x ``per_class`` JPEGs (``base/app-archive``) and both indexes
    (``base/app-index``); the I-JEPA export is shared with ``indexing.testing.cached_tiny_model(base)``."""
    base = Path(base)
    archive = base / "app-archive"
    if not (archive / "splits.csv").is_file():
        write_archive(archive, per_class=per_class)
    models = []
    for method, seed in (("ijepa", 0), ("mae", 1)):  # different seeds: the two models must differ
        model = base / "app-models" / method
        if not (model / HEAD_NAME).is_file():
            if seed == 0:  # share the indexing tests' cached export; our copy holds the head
                shutil.copytree(cached_tiny_model(base, method), model, dirs_exist_ok=True)
            else:
                export_tiny_model(model, method, seed)
            fit_head(model, archive)
        models.append(model)
    index_dir = base / "app-index"
    for model in models:
        if not (index_dir / model.name / "catalog.duckdb").is_file():
            build(model, archive, index_dir)
    return TinySetup(models, archive, index_dir)


def fit_head(model_dir: Path, archive: Path) -> Path:
    """Fit and save the linear-probe head of ``model_dir`` on the archive (train split; val for C)."""
    encoder = ExportedEncoder(model_dir, threads=1)
    features = {}
    for split in ("train", "val"):
        dataset = open_archive(archive, split, image_size=encoder.input_size)
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])  # [N, C, S, S]
        labels = np.array([dataset[i]["label"] for i in range(len(dataset))], dtype=np.int64)
        features[split] = (encoder.embed(images), labels)
    head = fit_linear_probe(*features["train"], *features["val"], grid=(1.0,))
    return save_head(head, list(dataset.classes), model_dir, encoder.card)


def write_geotiff_archive(root: str | Path, files: int = 2, size: int = 128, seed: int = 0) -> Path:
    """``files`` 3-band uint8 GeoTIFFs (EPSG:32618, 10 m pixels, 5 km apart, ``size`` px square) in ``root``:
    ``(size // 64)**2`` chips each, every chip with a lat/lon."""
    import rasterio
    from rasterio.transform import from_origin

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for n in range(files):
        base = rng.integers(30, 200, 3)[:, None, None]
        data = np.clip(base + rng.normal(0, 25, (3, size, size)), 0, 255).astype(np.uint8)  # [3, H, W]
        profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8",
                   "crs": "EPSG:32618", "transform": from_origin(500000 + 5000 * n, 4500000, 10, 10)}
        with rasterio.open(root / f"scene_{n}.tif", "w", **profile) as dst:
            dst.write(data)
    return root


def mark_in_page(page: Any, gallery: str, right: Sequence[int], wrong: Sequence[int]) -> None:
    """In a Playwright ``page`` of the app: mark the results at positions ``right`` ✓ and ``wrong`` ✗ in model
    ``gallery``'s gallery by clicking them, waiting for the marks panel to count each (tests and screenshots)."""
    for verdict, label, rows in (("✓ right", "mark ✓ right", right), ("✗ wrong", "mark ✗ wrong", wrong)):
        page.locator("#click-mode").get_by_label(label).check()
        for n, row in enumerate(rows, 1):
            page.locator(f"#gallery-{gallery} img").nth(row).click()
            page.wait_for_function(f"() => document.querySelector('#marks').innerText.includes('{verdict} ({n})')")


#: Debian's chromium, driven by Playwright (tests and benchmarks), with the flags a headless container needs.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def search_in_page(page: Any, url: str, tile: str | Path, k: int) -> None:
    """Open the app at ``url`` in a Playwright ``page``, upload ``tile``, ask for ``k`` neighbours and search."""
    page.set_default_timeout(60_000)
    page.goto(url)
    page.locator("#upload input[type=file]").set_input_files(str(tile))
    page.locator("#query-view img").wait_for()  # the upload is shown as the models see it, at once
    page.locator("#upload").scroll_into_view_if_needed()
    page.get_by_label("k (neighbours per model)").first.fill(str(k))
    page.locator("#search").click()
