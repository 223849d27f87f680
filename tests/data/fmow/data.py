#!/usr/bin/env python3
"""Write the tiny fMoW-rgb fixture used by tests/test_data_fmow.py (run from anywhere; seeded, deterministic).

Names follow the real fMoW-rgb layout (see ../shared/data/fmow-sample/val_filelist.csv):
``{train,val}/<category>/<category>_<loc>/<category>_<loc>_<view>_{rgb,msrgb}.{jpg,json}``; the JSON keys follow
../shared/data/fmow-sample/SCHEMA.md. Contents:

* train/airport/airport_0/airport_0_0_rgb.jpg (96x80): two boxes; box 1 has ``"visible": "False"``.
* train/airport/airport_0/airport_0_0_msrgb.jpg (48x40): ``bounding_boxes`` is a single dict, at the edge.
* train/crop_field/crop_field_14/crop_field_14_0_rgb.jpg: grayscale JPEG, one box.
* train/zoo/zoo_0/zoo_0_0_msrgb.jpg: no JSON (whole image, label from the folder).
* val/airport/airport_13/airport_13_0_rgb.jpg: one box.
* val/fountain/fountain_109/fountain_109_0_rgb.jpg: corrupt JPEG (random bytes) with a valid JSON.
* val/fountain/fountain_110/fountain_110_1_msrgb.jpg: valid JPEG, truncated (invalid) JSON.
* satmae_val.csv: SatMAE-style ``category,image_path,timestamp`` listing the val images (relative paths).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE / "fmow-rgb"
SEED = 0

# A box's raw_location: a 0.01 degree square whose centroid is (lat 38.005, lon -76.995).
SQUARE = "POLYGON ((-77.0 38.0, -76.99 38.0, -76.99 38.01, -77.0 38.01, -77.0 38.0))"


def image(rng: np.random.Generator, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Smooth colour gradients plus a little noise (compresses to a few kB)."""
    yy, xx = np.mgrid[0:height, 0:width]
    channels = [(xx * rng.uniform(0.5, 2.5) + yy * rng.uniform(0.5, 2.5) + rng.integers(0, 60)) % 256 for _ in range(3)]
    array = np.stack(channels, axis=-1) + rng.normal(0, 4, (height, width, 3))
    img = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")
    return img.convert(mode)


def metadata(name: str, width: int, height: int, boxes: list[dict] | dict, timestamp: str, gsd: float) -> dict:
    """A per-image JSON with the keys of the fMoW-rgb release (values made up)."""
    return {
        "approximate_wavelengths": [661, 545, 477],
        "bounding_boxes": boxes,
        "catalog_id": "1030010004C0D400",
        "cloud_cover": 0,
        "country_code": "USA",
        "gsd": gsd,
        "img_filename": name,
        "img_height": height,
        "img_width": width,
        "mean_pixel_height": 0.55,
        "mean_pixel_width": 0.55,
        "off_nadir_angle_dbl": 17.3,
        "scan_direction": "Forward",
        "sensor_platform_name": "WORLDVIEW02",
        "sun_azimuth_dbl": 158.1,
        "sun_elevation_dbl": 41.2,
        "target_azimuth_dbl": 201.7,
        "timestamp": timestamp,
        "utm": "18S",
    }


def write_image(rng: np.random.Generator, rel: str, width: int, height: int, mode: str = "RGB") -> Path:
    path = ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    image(rng, width, height, mode).save(path, quality=75)
    return path


def write_json(path: Path, meta: dict) -> None:
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))


def main() -> None:
    rng = np.random.default_rng(SEED)
    if ROOT.exists():
        shutil.rmtree(ROOT)

    p = write_image(rng, "train/airport/airport_0/airport_0_0_rgb.jpg", 96, 80)
    write_json(p, metadata(p.name, 96, 80, [
        {"ID": 101, "box": [30, 20, 30, 40], "category": "airport", "visible": "True", "raw_location": SQUARE},
        {"ID": 102, "box": [2, 2, 10, 10], "category": "airport", "visible": "False"},
    ], "2012-04-02T10:32:22Z", 0.55))

    p = write_image(rng, "train/airport/airport_0/airport_0_0_msrgb.jpg", 48, 40)
    write_json(p, metadata(p.name, 48, 40, {"ID": 101, "box": [35, 25, 13, 15], "category": "airport",
                                            "visible": "True"}, "2012-04-02T10:32:22Z", 2.2))

    p = write_image(rng, "train/crop_field/crop_field_14/crop_field_14_0_rgb.jpg", 64, 64, mode="L")
    write_json(p, metadata(p.name, 64, 64, [{"ID": 7, "box": [0, 0, 64, 64], "category": "crop_field",
                                             "visible": "True"}], "2015-06-30T16:01:02Z", 1.1))

    write_image(rng, "train/zoo/zoo_0/zoo_0_0_msrgb.jpg", 40, 32)  # no JSON

    p = write_image(rng, "val/airport/airport_13/airport_13_0_rgb.jpg", 80, 96)
    write_json(p, metadata(p.name, 80, 96, [{"ID": 5, "box": [10, 30, 50, 40], "category": "airport",
                                             "visible": "True", "raw_location": SQUARE}],
                           "2016-11-01T15:20:00Z", 0.5))

    p = ROOT / "val/fountain/fountain_109/fountain_109_0_rgb.jpg"  # corrupt: not a JPEG at all
    p.parent.mkdir(parents=True)
    p.write_bytes(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
    write_json(p, metadata(p.name, 64, 64, [{"ID": 9, "box": [10, 10, 30, 30], "category": "fountain",
                                             "visible": "True"}], "2014-01-01T00:00:00Z", 0.6))

    p = write_image(rng, "val/fountain/fountain_110/fountain_110_1_msrgb.jpg", 40, 40)
    p.with_suffix(".json").write_text(json.dumps(metadata(p.name, 40, 40, [], "2014-01-01T00:00:00Z", 2.0))[:150])

    rows = ["category,image_path,timestamp"]
    for rel, ts in [
        ("val/airport/airport_13/airport_13_0_rgb.jpg", "2016-11-01T15:20:00Z"),
        ("val/fountain/fountain_109/fountain_109_0_rgb.jpg", "2014-01-01T00:00:00Z"),
        ("val/fountain/fountain_110/fountain_110_1_msrgb.jpg", "2014-01-01T00:00:00Z"),
    ]:
        rows.append(f"{rel.split('/')[1]},fmow-rgb/{rel},{ts}")
    (HERE / "satmae_val.csv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
