"""Build the located demo archive `assets/located/`: 64 px RGB GeoTIFF chips of two public rasters, georeferenced.

    python study/make_located_demo.py [--geotiff ../shared/data/geotiff] [--out assets/located]

EuroSAT tiles carry no coordinates; these chips do (each keeps its CRS and transform), so the app's map, bounding
box filter and GeoJSON export show real places. Chips are cut on a grid from the top-left pixel (as the indexer
cuts large GeoTIFFs), those with any nodata pixel are left out (the Landsat scene's rotated edges), and each is
written to one flat folder (the indexer's GeoTIFF-folder layout) as a JPEG-compressed GeoTIFF (quality 90) to keep the archive small. Deterministic: no randomness.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window, transform as window_transform

REPO = Path(__file__).resolve().parents[1]
CHIP = 64

#: file in ../shared/data/geotiff -> (chip name prefix, RGB band indices, what it is, licence)
SOURCES = {
    "naip_rgbn_20200831.tif": ("naip-2020", (1, 2, 3),
                               "NAIP 2020 aerial imagery (USDA Farm Service Agency), 5 m, UTM 14N", "public domain"),
    "landsat7_RGB.byte.tif": ("landsat7", (1, 2, 3),
                              "Landsat 7 RGB (USGS), resampled to 300 m, UTM 18N (rasterio's test scene)", "CC0"),
}

ATTRIBUTION = """# Located demo archive: GeoTIFF chips of NAIP and Landsat 7

{count} chips of {chip} × {chip} px RGB, each a GeoTIFF with its own CRS and transform, so the catalogue holds its
centre and footprint in WGS84. One flat folder of GeoTIFFs (the indexer's GeoTIFF-folder layout). Made by
`python study/make_located_demo.py` from the rasters in the project's shared data (`geotiff/`); chips with any
nodata pixel are left out; JPEG-compressed (quality 90).

| files | chips | source | licence |
|---|---|---|---|
{rows}

* NAIP: U.S. Department of Agriculture, Farm Service Agency, National Agriculture Imagery Program — public domain.
* Landsat 7: courtesy of the U.S. Geological Survey — public domain; the file is rasterio's test scene
  (`RGB.byte.tif`, distributed by the rasterio project under CC0).
* No labels: these are not scene-classification tiles. The app's predicted class comes from the model's head.
"""


def chip_windows(width: int, height: int) -> list[tuple[int, int, Window]]:
    """(row, col, window) of every whole chip, row-major from the top-left pixel (partial edge chips dropped)."""
    return [(r, c, Window(c * CHIP, r * CHIP, CHIP, CHIP)) for r in range(height // CHIP) for c in range(width // CHIP)]


def write_chips(source: Path, out: Path, prefix: str, bands: tuple[int, ...]) -> int:
    """Write the nodata-free chips of ``source`` to ``out/<prefix>_r<row>c<col>.tif``; returns how many."""
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with rasterio.open(source) as src:
        for row, col, window in chip_windows(src.width, src.height):
            pixels = src.read(list(bands), window=window)  # uint8 [3, CHIP, CHIP]
            valid = src.read_masks(list(bands), window=window)  # 0 where nodata
            if (valid == 0).any():
                continue
            profile = {"driver": "GTiff", "width": CHIP, "height": CHIP, "count": len(bands), "dtype": "uint8",
                       "crs": src.crs, "transform": window_transform(window, src.transform),
                       "compress": "jpeg", "jpeg_quality": 90, "photometric": "ycbcr", "interleave": "pixel"}
            with rasterio.open(out / f"{prefix}_r{row:02d}c{col:02d}.tif", "w", **profile) as chip:
                chip.write(np.ascontiguousarray(pixels))
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geotiff", default=str(REPO.parent / "shared" / "data" / "geotiff"))
    parser.add_argument("--out", default=str(REPO / "assets" / "located"))
    args = parser.parse_args()
    out, rows, total = Path(args.out), [], 0
    for name, (prefix, bands, what, licence) in SOURCES.items():
        count = write_chips(Path(args.geotiff) / name, out, prefix, bands)
        rows.append(f"| `{prefix}_*.tif` | {count} | {what} (`{name}`) | {licence} |")
        total += count
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(count=total, chip=CHIP, rows="\n".join(rows)))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{total} chips, {size / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
