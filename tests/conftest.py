"""Shared pytest fixtures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

#: ../shared/data beside the repository: real imagery for the real-data tests (absent on a fresh clone).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: Committed fixtures made by tests/data/<name>/data.py.
FIXTURES = Path(__file__).resolve().parent / "data"
#: The study's scripts (study/*.py: run as scripts, not a package).
STUDY = Path(__file__).resolve().parents[1] / "study"


@pytest.fixture(scope="session")
def study_script():
    """A loader of the study's scripts as modules: ``study_script("standing")`` is study/standing.py."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"study_{name}", STUDY / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when the folder is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found: real-data tests need the shared data folder beside the repo")
    return SHARED_DATA


def _write_image_archive(root: Path) -> Path:
    """A tiny EuroSAT-like archive written with PIL: ``root/2750/<Class>/*`` plus ``root/splits.csv``.

    Forest: 2 RGB JPEGs (16x16) and a grayscale PNG (value 100); River: an RGB JPEG, an RGBA PNG (10, 20, 30, 0)
    and a palette PNG (palette colour 0 = (200, 50, 25)); SeaLake: an RGB JPEG, a corrupt JPEG (random bytes) and
    a truncated JPEG (64x64, cut to 60 % of its bytes). SeaLake only appears in the test split.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = root / "2750"

    def rgb(name: str, size: int = 16) -> None:
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(path, quality=90)

    rgb("Forest/Forest_1.jpg")
    rgb("Forest/Forest_2.jpg")
    Image.new("L", (16, 16), 100).save(base / "Forest/Forest_3.png")
    rgb("River/River_1.jpg")
    Image.new("RGBA", (16, 16), (10, 20, 30, 0)).save(base / "River/River_2.png")
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([200, 50, 25] + [0, 0, 0] * 255)
    palette.save(base / "River/River_3.png")
    rgb("SeaLake/SeaLake_1.jpg")
    (base / "SeaLake/SeaLake_2.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    rgb("SeaLake/SeaLake_3.jpg", size=64)
    truncated = base / "SeaLake/SeaLake_3.jpg"
    truncated.write_bytes(truncated.read_bytes()[: int(truncated.stat().st_size * 0.6)])

    splits = {"Forest_1": "train", "Forest_2": "val", "Forest_3": "train", "River_1": "train", "River_2": "val",
              "River_3": "train", "SeaLake_1": "test", "SeaLake_2": "test", "SeaLake_3": "test"}
    rows = ["path,label,split"]
    for path in sorted(base.rglob("*.*")):
        rows.append(f"{path.relative_to(root).as_posix()},{path.parent.name},{splits[path.stem]}")
    (root / "splits.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def image_archive(tmp_path: Path) -> Path:
    """Root of a tiny EuroSAT-like archive with splits.csv (see :func:`_write_image_archive`)."""
    return _write_image_archive(tmp_path / "eurosat")
