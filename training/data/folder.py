"""Class-per-folder archives and archives described by a ``splits.csv`` (EuroSAT as shipped in ../shared/data).

* ``splits.csv`` with columns ``path,label,split`` (``path`` relative to the root; ``label`` and ``split`` may be
  missing or empty: label -1 / split None). ``classes`` are the sorted labels of the WHOLE file, so label indices
  are identical for every split.
* Class folders: ``root/<Class>/**/*.{jpg,jpeg,png,tif,tiff}`` (like torchvision's ImageFolder), or a root with a
  single subfolder that holds the class folders (EuroSAT's ``2750/``). Ids stay relative to ``root``, so EuroSAT
  ids are the same through either layout (``2750/Forest/Forest_1.jpg``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import IMAGE_SUFFIXES, UnreadableImageError, sample_id
from .images import ImageDataset, Item

SPLITS_FILE = "splits.csv"


def open_splits_csv(root: Path, split: str | None = None, **options: Any) -> ImageDataset:
    """Dataset of the rows of ``root/splits.csv`` whose ``split`` column equals ``split`` (None = all rows).

    ``options`` go to :class:`ImageDataset` (image_size, bands, scale).
    """
    root = Path(root).resolve()
    csv_path = root / SPLITS_FILE
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
        columns = set(rows[0]) if rows else set()
    if "path" not in columns:
        raise ValueError(f"{csv_path} needs a header with a 'path' column (path,label,split); found {sorted(columns)}.")
    classes = sorted({row["label"] for row in rows if row.get("label")})
    if split is not None:
        available = sorted({row.get("split") or "" for row in rows} - {""})
        if split not in available:
            raise ValueError(f"split={split!r} is not in {csv_path}: choose one of {available} or None for all rows.")
        rows = [row for row in rows if row.get("split") == split]
    index = {name: i for i, name in enumerate(classes)}
    items = []
    for row in rows:
        path = root / row["path"]
        items.append(Item(path, index.get(row.get("label") or "", -1), row.get("split") or None, sample_id(path, root),
                          error=_unknown_type(path)))
    return ImageDataset(root, items, classes, **options)


def find_class_dir(root: Path) -> Path | None:
    """The folder holding the class folders: ``root``, or its only subfolder when that one holds no image itself
    but class folders (EuroSAT's ``2750/``); None if there are no class folders."""
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) == 1 and not _has_image(subdirs[0], recursive=False) and _class_folders(subdirs[0]):
        return subdirs[0]
    return root if _class_folders(root) else None


def open_class_folders(root: Path, class_dir: Path | None = None, **options: Any) -> ImageDataset:
    """Dataset of ``class_dir/<Class>/**/<image>`` (``class_dir`` defaults to :func:`find_class_dir`)."""
    root = Path(root).resolve()
    class_dir = Path(class_dir).resolve() if class_dir is not None else find_class_dir(root)
    if class_dir is None:
        raise ValueError(f"{root} has no class folders (<Class>/<image>.jpg): see open_archive for the layouts.")
    folders = _class_folders(class_dir)
    classes = [d.name for d in folders]
    items = [
        Item(path, label, None, sample_id(path, root), error=_unknown_type(path))
        for label, folder in enumerate(folders)
        for path in _images_under(folder)
    ]
    return ImageDataset(root, items, classes, **options)


#: Files that accompany images (GDAL statistics / overviews / masks, metadata) and are not samples themselves.
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk", ".json", ".xml", ".txt", ".csv", ".md")


def _unknown_type(path: Path) -> UnreadableImageError | None:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return None
    return UnreadableImageError(path, f"unknown file type {path.suffix.lower() or '(no suffix)'!r}: the readers know "
                                      f"{', '.join(IMAGE_SUFFIXES)}")


def _class_folders(parent: Path) -> list[Path]:
    """Sorted subfolders of ``parent`` that contain at least one image file (at any depth)."""
    return sorted(
        (d for d in parent.iterdir() if d.is_dir() and not d.name.startswith(".") and _has_image(d)),
        key=lambda d: d.name,
    )


def _has_image(folder: Path, recursive: bool = True) -> bool:
    return next(_iter_images(folder, recursive), None) is not None


def _iter_images(folder: Path, recursive: bool = True) -> Iterator[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return (p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    """Every file under ``folder`` a reader should see: images, and files of unknown types (reported as
    unreadable, never silently ignored); hidden files and GIS sidecar files are left out."""
    files = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if not p.name.lower().endswith(SIDECAR_SUFFIXES))
