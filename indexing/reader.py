"""Read samples of a dataset in batches on a background thread, so decoding overlaps with embedding.

PIL and rasterio release the GIL while decoding and ONNX Runtime while running, so one reader thread is enough
to hide reading behind the encoder on a small CPU; unreadable samples come back as their error, never raise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torch.utils.data import Dataset

from training.data import UnreadableImageError

#: Errors a reader may raise for one bad file; anything else is a bug and propagates.
READ_ERRORS = (UnreadableImageError, OSError, ValueError, RuntimeError)


def read_one(dataset: Dataset, index: int) -> dict[str, Any] | str:
    """``dataset[index]``, or the reason (text) it could not be read or should not be indexed (no valid pixel:
    a GeoTIFF or chip that is all nodata would be searched as a black tile)."""
    try:
        sample = dataset[index]
    except READ_ERRORS as err:
        return err.reason if isinstance(err, UnreadableImageError) else f"{type(err).__name__}: {err}"
    if (sample.get("nodata_fraction") or 0.0) >= 1.0:
        return "no valid pixels (every pixel is nodata)"
    return sample


def iter_batches(dataset: Dataset, indices: Sequence[int], batch_size: int
                 ) -> Iterator[list[tuple[int, dict[str, Any] | str]]]:
    """Yield ``[(index, sample dict or reason), ...]`` for consecutive batches of ``indices``; the next batch is
    read while the caller works on the current one."""
    chunks = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
    if not chunks:
        return

    def read(chunk: list[int]) -> list[tuple[int, dict[str, Any] | str]]:
        return [(i, read_one(dataset, i)) for i in chunk]

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, chunks[0])
        for nxt in chunks[1:]:
            batch = pending.result()
            pending = pool.submit(read, nxt)
            yield batch
        yield pending.result()
