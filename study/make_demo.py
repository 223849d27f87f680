"""Build the embedded demo archive `assets/demo/`: 100 EuroSAT test-split tiles per class, with labels and licence.

    python study/make_demo.py [--eurosat ../shared/data/eurosat-rgb] [--per-class 100]

The tiles are copied byte for byte (no re-encoding); the pick is seeded, so the archive is reproducible.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ATTRIBUTION = """# Demo archive: EuroSAT RGB (subset)

{count} tiles ({per_class} per class) from the **test split** of EuroSAT RGB, as fixed by `splits.csv` of this
project's shared data, copied unchanged. Made by `python study/make_demo.py` (seeded pick).

* Dataset: EuroSAT — Helber, Bischke, Dengel, Borth, "EuroSAT: A Novel Dataset and Deep Learning Benchmark
  for Land Use and Land Cover Classification", IEEE JSTARS 12(7), 2019. Licence: MIT (see `LICENSE`).
* Imagery: contains modified Copernicus Sentinel-2 data.
* `splits.csv` lists every tile: `path,label,split` (split is `test`: no tile here was seen in training).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eurosat", default=str(REPO.parent / "shared" / "data" / "eurosat-rgb"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--out", default=str(REPO / "assets" / "demo"))
    args = parser.parse_args()
    source, out = Path(args.eurosat), Path(args.out)
    with open(source / "splits.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    by_class = defaultdict(list)
    for row in rows:
        by_class[row["label"]].append(row)
    rng = random.Random(0)
    picked = []
    for label in sorted(by_class):
        picked += sorted(rng.sample(by_class[label], args.per_class), key=lambda r: r["path"])
    shutil.rmtree(out, ignore_errors=True)
    for row in picked:
        target = out / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / row["path"], target)
    with open(out / "splits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("path", "label", "split")} for r in picked)
    shutil.copyfile(source / "LICENSE", out / "LICENSE")
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(count=len(picked), per_class=args.per_class))
    print(f"wrote {len(picked)} tiles of {len(by_class)} classes to {out}")


if __name__ == "__main__":
    main()
