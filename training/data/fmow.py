"""fMoW-rgb (Christie et al., "Functional Map of the World", CVPR 2018) and SatMAE-style fMoW CSVs.

Layout: ``{train,val}/<category>/<category>_<loc>/<category>_<loc>_<view>_{rgb,msrgb}.{jpg,json}``. Both the
``rgb`` (pan-sharpened) and ``msrgb`` products are samples when present. SatMAE CSVs have the header
``category,image_path,timestamp`` (image_path absolute or relative to the CSV's folder).

``crop="box"`` follows fMoW/baseline ``dataFunctions.py``: every bounding box becomes one sample, enlarged by a
context factor that grows as the box gets smaller relative to the image (0.15 ... 2.0, see
:func:`context_multiplier`), then clipped to the image; boxes of <= 2 px are skipped as in the baseline. Two
deliberate differences: the width ratio divides by the image width (the baseline divides by the number of rows,
a known slip), and boxes whose ``visible`` is ``"False"`` are skipped (the object is not visible in that view).
An image without JSON (or a JSON without ``bounding_boxes``) gives one whole-image sample labelled by its
category folder. ``crop="whole"``: one whole-image sample per file.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any

from .base import UnreadableImageError, sample_id
from .images import ImageDataset, Item
from .rgb import Box, image_size_of

logger = logging.getLogger(__name__)

FMOW_SPLITS = ("train", "val")
CROP_MODES = ("box", "whole")
SATMAE_COLUMNS = ("category", "image_path")
_RING = re.compile(r"\(([^()]+)\)")  # innermost parenthesised coordinate list of a WKT geometry


def context_multiplier(ratio: float) -> float:
    """fMoW baseline context factor for a box side that is ``ratio`` of the image side."""
    for threshold, mult in ((0.5, 0.15), (0.4, 0.2), (0.3, 0.3), (0.2, 0.5), (0.1, 1.0)):
        if ratio >= threshold:
            return mult
    return 2.0


def box_with_context(box: list[float], width: int, height: int) -> Box | None:
    """Crop region (left, top, right, bottom) for an fMoW ``box`` [x, y, w, h] in an image of width x height px.

    The box grows by ``side * context_multiplier(side / image_side) / 2`` on each side and is clipped to the
    image. Returns None for boxes of <= 2 px or boxes entirely outside the image.
    """
    x, y, w, h = (int(round(float(v))) for v in box)
    if w <= 2 or h <= 2:
        return None
    w_buffer = int(w * context_multiplier(w / width) / 2.0)
    h_buffer = int(h * context_multiplier(h / height) / 2.0)
    left, top = max(0, x - w_buffer), max(0, y - h_buffer)
    right, bottom = min(width, x + w + w_buffer), min(height, y + h + h_buffer)
    if left >= right or top >= bottom:
        return None
    return left, top, right, bottom


def read_fmow_json(path: Path) -> dict[str, Any]:
    """Parse an fMoW per-image JSON; raises UnreadableImageError naming the file if it is not a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableImageError(path, f"invalid fMoW metadata JSON ({err})") from err
    if not isinstance(meta, dict):
        raise UnreadableImageError(path, "invalid fMoW metadata JSON (top level is not an object)")
    return meta


def bounding_boxes(meta: dict[str, Any], path: Path) -> list[dict[str, Any]] | None:
    """The ``bounding_boxes`` of a parsed JSON as a list (a single dict is wrapped); None if the key is absent."""
    boxes = meta.get("bounding_boxes")
    if boxes is None:
        return None
    boxes = [boxes] if isinstance(boxes, dict) else boxes
    for bb in boxes:
        box = bb.get("box") if isinstance(bb, dict) else None
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise UnreadableImageError(path, f"malformed bounding box {bb!r} (expected 'box': [x, y, w, h])")
    return boxes


def is_visible(bb: dict[str, Any]) -> bool:
    """fMoW stores ``visible`` as the strings "True"/"False" (absent in test): absent counts as visible."""
    value = bb.get("visible", True)
    if isinstance(value, str):
        return value.strip().lower() != "false"
    return bool(value)


def wkt_centroid(wkt: Any) -> tuple[float | None, float | None]:
    """(lat, lon) centroid of the first ring of a WKT polygon in lon/lat order; (None, None) if unparsable."""
    match = _RING.search(wkt) if isinstance(wkt, str) else None
    if match is None:
        return None, None
    try:
        pts = [tuple(float(v) for v in p.split()[:2]) for p in match.group(1).split(",")]
    except ValueError:
        return None, None
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    if not pts or any(len(p) != 2 for p in pts):
        return None, None
    ox, oy = pts[0]  # shoelace relative to the first vertex, for precision with small polygons
    rel = [(x - ox, y - oy) for x, y in pts]
    area2 = cx = cy = 0.0  # twice the signed area and the area-weighted centroid sums
    for (x0, y0), (x1, y1) in zip(rel, rel[1:] + rel[:1]):
        cross = x0 * y1 - x1 * y0
        area2, cx, cy = area2 + cross, cx + (x0 + x1) * cross, cy + (y0 + y1) * cross
    if abs(area2) < 1e-18:  # degenerate ring: mean of the vertices
        return sum(p[1] for p in pts) / len(pts), sum(p[0] for p in pts) / len(pts)
    return oy + cy / (3.0 * area2), ox + cx / (3.0 * area2)


def geo_from_json(meta: dict[str, Any], bb: dict[str, Any] | None = None) -> dict[str, Any]:
    """lat/lon (box's ``raw_location``, else the image's, else the first box's), timestamp and gsd of an image."""
    boxes = meta.get("bounding_boxes")
    first = boxes if isinstance(boxes, dict) else (boxes[0] if isinstance(boxes, list) and boxes else None)
    for source in (bb, meta, first):
        lat, lon = wkt_centroid(source.get("raw_location")) if isinstance(source, dict) else (None, None)
        if lat is not None:
            break
    gsd = meta.get("gsd")
    timestamp = meta.get("timestamp")
    return {
        "lat": lat,
        "lon": lon,
        "timestamp": str(timestamp) if timestamp else None,
        "gsd": float(gsd) if isinstance(gsd, (int, float)) else None,
    }


def geo_from_json_file(path: Path) -> dict[str, Any]:
    """:func:`geo_from_json` of a JSON file (the lazy ``meta_reader`` of whole-image fMoW datasets)."""
    return geo_from_json(read_fmow_json(path))


def open_fmow(root: Path, split: str | None = None, crop: str = "box", **options: Any) -> ImageDataset:
    """fMoW-rgb dataset of ``root/{train,val}``; ``split`` picks one folder (None = both).

    ``classes`` are the category folders of train and val together, so indices agree across splits.
    ``options`` go to :class:`ImageDataset` (image_size, bands).
    """
    root = Path(root).resolve()
    _check_crop(crop)
    if split is not None and split not in FMOW_SPLITS:
        raise ValueError(f"split={split!r} is not an fMoW-rgb split of {root}: use one of {FMOW_SPLITS} or None.")
    split_dirs = [root / s for s in ([split] if split else FMOW_SPLITS) if (root / s).is_dir()]
    if split is not None and not split_dirs:
        raise ValueError(f"{root / split} does not exist: this fMoW-rgb copy has no {split!r} split.")
    classes = sorted({d.name for s in FMOW_SPLITS if (root / s).is_dir() for d in (root / s).iterdir() if d.is_dir()})
    items: list[Item] = []
    for split_dir in split_dirs:
        for label, category in enumerate(classes):
            for image in sorted((split_dir / category).glob("*/*.jpg")):
                items += _image_items(image, root, label, split_dir.name, crop, {})
    return _dataset(root, items, classes, crop, options)


def open_satmae_csv(csv_path: Path, crop: str = "box", **options: Any) -> ImageDataset:
    """Dataset of a SatMAE fMoW CSV (``category,image_path,timestamp``); root = the CSV's folder.

    The split of a row is the fMoW split folder of its path (``<split>/<category>/<loc>/<file>``), else None.
    """
    csv_path = Path(csv_path).resolve()
    _check_crop(crop)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if not set(SATMAE_COLUMNS) <= columns:
        raise ValueError(f"{csv_path} is not a SatMAE CSV: expected the header category,image_path,timestamp.")
    root = csv_path.parent
    classes = sorted({row["category"] for row in rows if row["category"]})
    index = {name: i for i, name in enumerate(classes)}
    items: list[Item] = []
    for row in rows:
        image = Path(row["image_path"])
        image = image if image.is_absolute() else root / image
        split = image.parts[-4] if len(image.parts) >= 4 and image.parts[-4] in (*FMOW_SPLITS, "test") else None
        preset = {"timestamp": row.get("timestamp") or None}
        items += _image_items(image, root, index.get(row["category"], -1), split, crop, preset)
    return _dataset(root, items, classes, crop, options)


def _dataset(root: Path, items: list[Item], classes: list[str], crop: str, options: dict) -> ImageDataset:
    reader = geo_from_json_file if crop == "whole" else None
    dataset = ImageDataset(root, items, classes, meta_reader=reader, **options)
    if dataset.unreadable:
        logger.warning("%d unreadable fMoW file(s) under %s, e.g. %s", len(dataset.unreadable), root,
                       dataset.unreadable[0])
    return dataset


def _image_items(image: Path, root: Path, label: int, split: str | None, crop: str, preset: dict) -> list[Item]:
    """The samples of one fMoW image: one per usable box (``crop="box"``) or the whole image."""
    json_path = image.with_suffix(".json")
    base_id = sample_id(image, root)
    has_json = json_path.is_file()
    if crop == "whole" or not has_json:
        return [Item(image, label, split, base_id, geo=preset, meta_file=json_path if has_json else None)]
    try:
        meta = read_fmow_json(json_path)
        boxes = bounding_boxes(meta, json_path)
        if boxes is None:
            return [Item(image, label, split, base_id, geo={**preset, **_non_null(geo_from_json(meta))})]
        width, height = _image_dims(meta, image)
    except UnreadableImageError as err:
        return [Item(image, label, split, base_id, geo=preset, error=err)]
    items = []
    for k, bb in enumerate(boxes):
        region = box_with_context(bb["box"], width, height) if is_visible(bb) else None
        if region is None:
            logger.debug("skipping box %d of %s (invisible, tiny or outside the image)", k, json_path)
            continue
        geo = {**preset, **_non_null(geo_from_json(meta, bb))}
        items.append(Item(image, label, split, f"{base_id}#box{k}", box=region, geo=geo))
    return items


def _image_dims(meta: dict[str, Any], image: Path) -> tuple[int, int]:
    """(width, height) of ``image`` from its JSON (img_width/img_height), else from the JPEG header."""
    width, height = meta.get("img_width"), meta.get("img_height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    return image_size_of(image)


def _non_null(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _check_crop(crop: str) -> None:
    if crop not in CROP_MODES:
        raise ValueError(f"fmow_crop={crop!r} is not supported: use one of {CROP_MODES}.")
