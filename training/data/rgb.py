"""Decode JPEG / PNG / GIF / WebP / BMP files into float RGB tensors with PIL, failing loudly on broken files.

Truncation is detected because the pixels are loaded eagerly (``Image.LOAD_TRUNCATED_IMAGES`` stays off);
images whose header declares more than PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, ~89 Mpx)
raise :class:`ImageTooLargeError` (saying so, with the size) before any pixel is decoded. 16-bit greyscale
images are scaled by 1/65535 (full scale = 1, as 8-bit images by 1/255), never clipped to 8 bits; the EXIF
orientation of a whole image is applied (phone photos); animated GIF/WebP files are refused, naming the
frame count.
When the output will be downscaled, JPEGs are decoded at a reduced DCT scale (``Image.draft``), which makes
crops of large fMoW scenes several times cheaper without changing the result beyond resampling noise.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .base import ImageTooLargeError, UnreadableImageError, UnsupportedImageError
from .source import Source, openable, source_path

#: (left, top, right, bottom) in pixels of the full-resolution image, right/bottom exclusive.
Box = tuple[int, int, int, int]

_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
#: PIL modes of integer images wider than 8 bits (16-bit PNG / TIFF greyscale).
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _too_large(path: Path, err: Image.DecompressionBombError) -> ImageTooLargeError:
    found = _BOMB_PIXELS.search(str(err))
    return ImageTooLargeError(path, int(found.group(1)) if found else None, int(Image.MAX_IMAGE_PIXELS or 0))


def image_size_of(source: Source) -> tuple[int, int]:
    """(width, height) of an image from its header only (no pixel decoding)."""
    path = source_path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(openable(source)) as im:
                return im.size
    except Image.DecompressionBombError as err:
        raise _too_large(path, err) from err
    except _PIL_ERRORS as err:
        raise UnreadableImageError(path, f"{type(err).__name__}: {err}") from err


def read_rgb(source: Source, box: Box | None = None, out_size: int | None = None,
             max_pixels: int | None = None) -> tuple[torch.Tensor, int, int]:
    """Read an image as RGB, optionally cropped to ``box``.

    Args:
        source: the path of a JPEG / PNG / GIF / WebP / BMP, or its bytes (:class:`~training.data.source.FileBytes`)
            (any PIL mode: greyscale, 16-bit greyscale, RGBA and palette images become RGB).
        box: crop (left, top, right, bottom) in full-resolution pixels; ``None`` = whole image.
        out_size: the side the caller will resize to; lets JPEGs decode at a reduced scale that still has at
            least ``out_size`` pixels across the cropped region. ``None`` = decode at full resolution.
        max_pixels: refuse images whose header declares more pixels (a stricter limit than PIL's own).

    Returns:
        ``(image, width, height)``: ``image`` is float32 [3, h, w] in [0, 1] (h, w may be smaller than the region
        when ``out_size`` allowed a reduced decode); ``width``/``height`` are the region's full-resolution size.

    Raises:
        UnreadableImageError: the file is missing, corrupt, truncated or animated;
            ImageTooLargeError (a subclass) when it declares too many pixels to decode safely.
    """
    path = source_path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(openable(source)) as im:
                full_w, full_h = im.size
                if max_pixels is not None and full_w * full_h > max_pixels:
                    raise ImageTooLargeError(path, full_w * full_h, max_pixels)
                frames = getattr(im, "n_frames", 1)
                if frames > 1:
                    raise UnsupportedImageError(path, f"an animated {im.format} with {frames} frames; save the frame "
                                                      "to search as a PNG or JPEG")
                left, top, right, bottom = box if box is not None else (0, 0, full_w, full_h)
                if not (0 <= left < right <= full_w and 0 <= top < bottom <= full_h):
                    raise UnreadableImageError(
                        path, f"crop {box} does not fit the {full_w}x{full_h} image (does its metadata match it?)"
                    )
                if out_size is not None and im.format == "JPEG":
                    _draft(im, right - left, bottom - top, out_size)
                if im.size != (full_w, full_h):  # draft reduced the decode scale: rescale the crop box
                    sx, sy = im.size[0] / full_w, im.size[1] / full_h
                    left, top = int(left * sx), int(top * sy)
                    right, bottom = max(left + 1, round(right * sx)), max(top + 1, round(bottom * sy))
                im.load()  # decodes everything now: truncated files raise here
                if box is not None or im.size != (full_w, full_h):
                    im = im.crop((left, top, right, bottom))
                elif im.getexif().get(0x0112, 1) != 1:  # EXIF orientation of a whole image
                    im = ImageOps.exif_transpose(im)
                image = _to_tensor(im)  # [3, h, w]
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as err:
        raise _too_large(path, err) from err
    except _PIL_ERRORS as err:
        raise UnreadableImageError(path, f"{type(err).__name__}: {err}") from err
    region_w, region_h = (box[2] - box[0], box[3] - box[1]) if box is not None else (full_w, full_h)
    return image, region_w, region_h


def _to_tensor(im: Image.Image) -> torch.Tensor:
    """float32 [3, h, w] in [0, 1]: 8-bit modes / 255, 16-bit greyscale / 65535 (repeated to three bands)."""
    if im.mode in _WIDE_MODES:
        grey = torch.from_numpy(np.array(im, dtype=np.float32)).div_(65535.0).clamp_(0.0, 1.0)  # [h, w]
        return grey.expand(3, -1, -1).clone()
    if im.mode != "RGB":
        im = im.convert("RGB")
    array = np.array(im, dtype=np.uint8)  # [h, w, 3], a writable copy
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def _draft(im: Image.Image, region_w: int, region_h: int, out_size: int) -> None:
    """Ask the JPEG decoder for the smallest DCT scale (1/2, 1/4, 1/8) keeping >= out_size px across the region."""
    factor = min(region_w, region_h) / out_size  # how much smaller the output is than the region
    if factor < 2:
        return
    w, h = im.size
    im.draft("RGB", (math.ceil(w / factor), math.ceil(h / factor)))
