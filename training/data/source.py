"""A file read into memory once, so that everything done with it (sniffing its format, checking its size,
decoding, hashing) sees the same bytes, and the disk or upload is touched once.

The readers (:func:`training.data.rgb.read_rgb`, :func:`training.data.raster.open_raster`) take either a path,
as the archive datasets pass it, or a :class:`FileBytes`, as the app passes an upload: same decoder, same
pixels, one reader for both.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path


@dataclass
class FileBytes:
    """The bytes of a file and the path they came from (for messages and the suffix)."""

    path: Path
    data: bytes = field(repr=False)

    @classmethod
    def read(cls, path: str | Path) -> FileBytes:
        path = Path(path)
        return cls(path, path.read_bytes())

    def stream(self) -> io.BytesIO:
        """A fresh binary stream over the bytes (PIL and rasterio both open file objects)."""
        return io.BytesIO(self.data)

    @cached_property
    def sha256(self) -> str:
        """Hex sha256 of the bytes (computed on first use, once): the catalogue's ``hash`` of a whole-file sample
        (``indexing.catalog.sha256_file``)."""
        return hashlib.sha256(self.data).hexdigest()


#: What the readers accept: a path on disk or a file already in memory.
Source = Path | FileBytes


def source_path(source: Source | str) -> Path:
    """The path of a source, for messages and suffixes."""
    return source.path if isinstance(source, FileBytes) else Path(source)


def openable(source: Source | str) -> Path | io.BytesIO:
    """What PIL's ``Image.open`` / ``rasterio.open`` take for ``source``: the path itself, or a byte stream."""
    return source.stream() if isinstance(source, FileBytes) else Path(source)
