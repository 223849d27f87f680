"""Validate and decode an uploaded query tile for one model card, with messages a user can act on.

An upload is read from disk once (:func:`read_upload`, size checked first) into a
:class:`~training.data.source.FileBytes`; everything after works on those bytes: the format is sniffed from them
(JPEG, PNG, TIFF, GIF, WebP, BMP signatures), never trusted by file name; the pixel count (the decompression-bomb
guard) is checked from the header before any pixel is decoded; the content hash is theirs. Decoding is the archive
readers' own: JPEG/PNG through :func:`indexing.query.read_query_image` (``training.data.rgb.read_rgb``), GeoTIFF
through ``training.data.raster`` (``open_raster`` / ``read_window``), so a query is read exactly like an archive
image. A GeoTIFF larger than one archive chip is either cut to its centre chip (default: same ground resolution
as the indexed chips) or resized as a whole; :attr:`QueryImage.note` says which.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from indexing.query import read_query_image
from training.data import UnreadableImageError, open_archive
from training.data.base import (RASTER_SUFFIXES, ImageTooLargeError, UnsupportedImageError, check_bands,
                                resize_image)
from training.data.raster import centre_latlon, open_raster, read_window
from training.data.source import FileBytes

#: Largest upload accepted, in bytes, refused in the app's words by :func:`read_upload`.
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: gradio's own ``max_file_size``, a guard for the server's disk far above the limit: a file between the two gets
#: the app's message (which file, the limit, what to do), not gradio's.
UPLOAD_HARD_CAP = 8 * MAX_UPLOAD_BYTES
#: Largest image accepted, in pixels (width x height), checked from the header before decoding.
MAX_PIXELS = 40_000_000
#: GeoTIFF chip side of the indexed archives (``open_archive``'s default, used by ``indexing.build``).
CHIP_SIZE = int(inspect.signature(open_archive).parameters["chip_size"].default)
#: What to do with a GeoTIFF larger than one chip.
LARGE_MODES = ("centre chip", "resize whole")

_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
               b"II+\x00": "TIFF", b"MM\x00+": "TIFF", b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP"}
FORMATS = "JPEG, PNG, GeoTIFF, or a single-frame GIF, WebP or BMP"


class UploadError(ValueError):
    """An upload that cannot be used as a query; ``str(err)`` is the message shown to the user."""


@dataclass
class QueryImage:
    """A decoded query: ``image`` float32 [C, S, S] in scaled units for the model, ``display`` uint8 [S, S, 3]
    for people, ``kind`` (JPEG/PNG/TIFF), ``source_size`` (width, height, bands), a ``note`` ('' if none) and
    the centre ``location`` (lat, lon) of a georeferenced GeoTIFF; the file it came from (``source``), when one."""

    image: torch.Tensor
    display: np.ndarray
    kind: str
    source_size: tuple[int, int, int]
    note: str = ""
    location: tuple[float, float] | None = None  # (lat, lon) of the centre, EPSG:4326, when known
    source: FileBytes | None = field(default=None, repr=False)  # the upload's bytes, read once

    @property
    def sha256(self) -> str | None:
        """The catalogue's hash of a whole-file sample, to recognise the query among the hits (hashed once, and
        only when asked: archive thumbnails decoded here never need it)."""
        return self.source.sha256 if self.source is not None else None


def read_upload(path: str | Path) -> FileBytes:
    """The uploaded file's bytes, read once, after checking that it exists, is not empty and not too large.

    Raises:
        UploadError: missing, empty or larger than :data:`MAX_UPLOAD_BYTES`.
    """
    path = Path(path)
    if not path.is_file():
        raise UploadError("No file was uploaded: choose a JPEG, PNG or GeoTIFF tile (or pick an example).")
    size = path.stat().st_size
    if size == 0:
        raise UploadError("The uploaded file is empty (0 bytes): upload a JPEG, PNG or GeoTIFF tile.")
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{path.name} is {size / 1e6:.1f} MB; a query tile is limited to {MAX_UPLOAD_BYTES / 1e6:.1f} "
                          "MB. Crop the scene to the area of interest, or index the whole scene as an archive "
                          "(`python -m indexing build --archive FOLDER --model ijepa`) and search its chips.")
    return FileBytes.read(path)


def sniff(upload: FileBytes) -> str:
    """``"JPEG"``, ``"PNG"``, ``"TIFF"``, ``"GIF"``, ``"WEBP"`` or ``"BMP"`` from the first bytes of the upload.

    Raises:
        UploadError: not one of those formats.
    """
    head = upload.data[:12]
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    for signature, kind in _SIGNATURES.items():
        if head.startswith(signature):
            return kind
    raise UploadError(f"{upload.path.name} is not an image this app reads ({FORMATS}; its first bytes are "
                      f"{head[:4]!r}). Upload an image tile.")


def decode_query(upload: str | Path | FileBytes, card: dict[str, Any], large: str = LARGE_MODES[0]) -> QueryImage:
    """Decode an upload (its path, or its bytes from :func:`read_upload`) for a model with model card ``card``
    (``input_size``, ``band_indices``).

    Args:
        large: a GeoTIFF larger than one chip (:data:`CHIP_SIZE` px): ``"centre chip"`` or ``"resize whole"``.

    Raises:
        UploadError: with a message for the user (format, size, pixel limit, band count, corrupt file).
    """
    if large not in LARGE_MODES:
        raise UploadError(f"Large-GeoTIFF mode {large!r} is unknown: choose one of {', '.join(LARGE_MODES)}.")
    if not isinstance(upload, FileBytes):
        upload = read_upload(upload)
    kind = sniff(upload)
    try:
        decoded = _decode_geotiff(upload, card, large) if kind == "TIFF" else _decode_pil(upload, card, kind)
    except ImageTooLargeError as err:
        raise UploadError(f"{upload.path.name} is {err.reason}: crop or downsample it first.") from err
    except UnsupportedImageError as err:
        raise UploadError(f"{upload.path.name} is {err.reason}.") from err
    except UnreadableImageError as err:
        raise UploadError(f"{upload.path.name} could not be decoded ({err.reason}): the file is corrupt, truncated "
                          "or not an image. Upload it again or choose another tile.") from err
    decoded.source = upload
    return decoded


def _decode_pil(upload: FileBytes, card: dict[str, Any], kind: str) -> QueryImage:
    name = upload.path.name
    if upload.path.suffix.lower() in RASTER_SUFFIXES:
        raise UploadError(f"{name} is named like a GeoTIFF but is a {kind}: rename it to .{kind.lower()}.")
    bands = card.get("band_indices")
    if bands is not None and any(int(b) > 3 for b in bands):
        raise UploadError(f"This model takes bands {list(bands)} ({len(bands)} bands) but a {kind} has 3 (RGB): "
                          "upload a GeoTIFF with those bands.")
    image, (width, height) = read_query_image(upload, card, MAX_PIXELS)  # [C, S, S]
    if image.shape[0] != int(card["bands"]):
        raise UploadError(f"This model takes {card['bands']} bands but a {kind} has {image.shape[0]}: upload a "
                          f"GeoTIFF with {card['bands']} bands.")
    return QueryImage(image, to_display(image, stretch=False), kind, (width, height, 3))


def _decode_geotiff(upload: FileBytes, card: dict[str, Any], large: str) -> QueryImage:
    size, path = int(card["input_size"]), upload.path
    with open_raster(upload) as src:
        width, height, count = src.width, src.height, src.count
        if width * height > MAX_PIXELS:
            raise ImageTooLargeError(path, width * height, MAX_PIXELS)
        bands, note = _pick_bands(card, count, path.name)
        window = None
        if max(width, height) > CHIP_SIZE:
            if large == "centre chip" and min(width, height) >= CHIP_SIZE:
                col, row = (width - CHIP_SIZE) // 2, (height - CHIP_SIZE) // 2
                window = Window(col, row, CHIP_SIZE, CHIP_SIZE)
                note += (f"The GeoTIFF is {width}×{height} px, larger than one {CHIP_SIZE} px chip of the archive: "
                         f"searched its centre chip (columns {col}–{col + CHIP_SIZE - 1}, rows {row}–"
                         f"{row + CHIP_SIZE - 1}). Choose 'resize whole' to search the whole scene shrunk instead.")
            else:
                note += (f"The GeoTIFF is {width}×{height} px: resized as a whole to {size}×{size} px "
                         f"(its ground resolution is now coarser than the archive's chips).")
        image, nodata = read_window(src, bands, window, None)  # [C, h, w]
        if nodata >= 1.0:
            raise UploadError(f"{path.name} has no valid pixels{' in its centre chip' if window else ''}: every "
                              "pixel is nodata, so there is nothing to search. Upload a tile with image data.")
        if nodata > 0:
            note += (f"{nodata:.0%} of the tile is nodata (shown black; those pixels are zero for the model, "
                     "so its matches lean on the rest). ")
        centre = (width / 2, height / 2) if window is None else (window.col_off + CHIP_SIZE / 2,
                                                                 window.row_off + CHIP_SIZE / 2)
        lat, lon = centre_latlon(src, *centre)
    image = resize_image(image, size)  # [C, S, S]
    location = (lat, lon) if lat is not None else None
    return QueryImage(image, to_display(image, stretch=True), "TIFF", (width, height, count), note, location)


def _pick_bands(card: dict[str, Any], count: int, name: str) -> tuple[list[int], str]:
    """1-based bands of a ``count``-band GeoTIFF for the model, and a note when a choice was made."""
    wanted, needed = card.get("band_indices"), int(card["bands"])
    if wanted is None:  # the card names no bands: the model takes the first `needed`
        if count < needed:
            raise UploadError(f"{name} has {count} band(s) but this model takes {needed}: upload a GeoTIFF with "
                              f"at least {needed} bands.")
        note = f"The GeoTIFF has {count} bands; the model takes {needed}: used bands 1–{needed}. " \
            if count > needed else ""
        return list(range(1, needed + 1)), note
    try:
        return check_bands(wanted, count, name), ""
    except ValueError:
        raise UploadError(f"{name} has {count} band(s) but this model takes bands {list(wanted)} (1-based): "
                          "upload a GeoTIFF with those bands.") from None


def to_display(image: torch.Tensor, stretch: bool) -> np.ndarray:
    """uint8 [H, W, 3] of a scaled image [C, H, W]: the first three bands (a single band as grey), clipped to
    [0, 1], or for rasters stretched between the 2nd and 98th percentile (reflectances are dark otherwise)."""
    x = image.detach().float().numpy()
    x = np.repeat(x[:1], 3, axis=0) if x.shape[0] < 3 else x[:3]  # [3, H, W]
    if stretch:
        lo, hi = np.percentile(x, 2), np.percentile(x, 98)
        x = (x - lo) / max(hi - lo, 1e-6)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)

