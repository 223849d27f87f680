"""Image outputs of the UI as files named by their content, written once, atomically.

Gradio saves an image returned as an array to a cache path named by its content and rewrites that file on every
request, so two requests returning the same image (the identical "no locations" placeholder, or the same query
preview sent by two clients) rewrote a file while another request was streaming it ("Too little/much data for
declared Content-Length"; clients saw "peer closed connection"). A file path is instead copied into gradio's
cache with a temporary name and an atomic rename, and never rewritten once there. So the UI returns paths: each
image is encoded once to PNG, stored under its sha256 in this folder (written to a temporary name and renamed),
and an existing file is never rewritten.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


class ImageFiles:
    """A folder of PNG files named by content. ``path(array)`` -> the file's path (str)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="satjepa-images-"))
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, image: np.ndarray | Image.Image) -> str:
        """Store ``image`` (uint8 [H, W, 3] or a PIL image) as PNG, once; returns its path."""
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        buffer = io.BytesIO()
        pil.save(buffer, format="PNG", compress_level=1)
        data = buffer.getvalue()
        target = self.folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if not target.exists():
            fd, staging = tempfile.mkstemp(dir=self.folder, prefix=".staging-", suffix=".png")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(staging, target)
        return str(target)
