"""Write the app's offline basemap `retrieval_app/basemap/countries-110m.json` from Natural Earth (public domain).

    pip download geopandas==0.14.4 --no-deps -d /tmp/gpd     # the last release that ships naturalearth_lowres
    python study/make_basemap.py /tmp/gpd/geopandas-0.14.4-py3-none-any.whl

Natural Earth's 1:110m admin-0 countries, as packaged in geopandas' `datasets/naturalearth_lowres` (a shapefile),
are reduced to their polygon rings (lon, lat rounded to 0.01°): ~100 kB, read by :mod:`retrieval_app.plots`.
The shapefile's polygon records (type 5) are parsed with `struct` after the ESRI spec, so no GIS package is needed.
"""

from __future__ import annotations

import argparse
import json
import struct
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPEFILE = "geopandas/datasets/naturalearth_lowres/naturalearth_lowres.shp"
SOURCE = ("Natural Earth 1:110m Cultural Vectors, Admin 0 - Countries (public domain, naturalearthdata.com), "
          "as packaged in geopandas 0.14.4 datasets/naturalearth_lowres")


def polygon_rings(shp: bytes) -> list[list[list[float]]]:
    """Every ring of every polygon record of a .shp file, as [[lon, lat], ...]."""
    rings, offset = [], 100  # 100-byte file header
    while offset < len(shp):
        _, length = struct.unpack(">ii", shp[offset:offset + 8])  # record number, content length in 16-bit words
        content = shp[offset + 8:offset + 8 + 2 * length]
        offset += 8 + 2 * length
        (shape_type,) = struct.unpack("<i", content[:4])
        if shape_type != 5:  # only polygons; null shapes are skipped
            continue
        num_parts, num_points = struct.unpack("<ii", content[36:44])
        parts = list(struct.unpack(f"<{num_parts}i", content[44:44 + 4 * num_parts])) + [num_points]
        points = struct.unpack(f"<{2 * num_points}d", content[44 + 4 * num_parts:44 + 4 * num_parts + 16 * num_points])
        for start, end in zip(parts[:-1], parts[1:]):
            rings.append([[round(points[2 * i], 2), round(points[2 * i + 1], 2)] for i in range(start, end)])
    return rings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", help="geopandas-0.14.4-py3-none-any.whl")
    parser.add_argument("--out", default=str(REPO / "retrieval_app" / "basemap" / "countries-110m.json"))
    args = parser.parse_args()
    with zipfile.ZipFile(args.wheel) as wheel:
        rings = polygon_rings(wheel.read(SHAPEFILE))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"source": SOURCE, "crs": "EPSG:4326", "rings": rings}, separators=(",", ":")))
    print(f"{len(rings)} rings, {sum(map(len, rings))} points, {out.stat().st_size / 1e3:.0f} kB in {out}")


if __name__ == "__main__":
    main()
