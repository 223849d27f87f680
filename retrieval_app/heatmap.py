"""Why this match: patch-to-patch similarity of two images' ViT tokens, drawn over the images.

For query tokens Q [N, D] and result tokens R [N, D] (raster order on the card's ``token_grid`` [h, w]) the
cosine matrix S = norm(Q) norm(R)^T [N, N] is computed; each query patch's heat is its best match anywhere in
the result (max over a row), each result patch's heat its best match in the query (max over a column). This is
the max-similarity matching of ColBERT-style late interaction / patch-level retrieval explanations, with no
gradients and no extra model. Drawing uses numpy and PIL only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Anchor colours of a perceptually ordered dark-blue -> teal -> yellow map (viridis-like), low to high.
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def token_similarity(query_tokens: np.ndarray, result_tokens: np.ndarray, grid: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-match maps of two token sets.

    Args:
        query_tokens, result_tokens: float [N, D], N = h * w patches in raster order.
        grid: (h, w) token grid.

    Returns:
        ``(query_map [h, w], result_map [h, w], best [N])``: cosine of each query patch to its best result patch
        and vice versa, and for each query patch the index of that best result patch.
    """
    h, w = grid
    if query_tokens.shape != result_tokens.shape or query_tokens.shape[0] != h * w:
        raise ValueError(f"token shapes {query_tokens.shape} / {result_tokens.shape} do not fit the grid {grid}")
    q = query_tokens / np.maximum(np.linalg.norm(query_tokens, axis=1, keepdims=True), 1e-12)  # [N, D]
    r = result_tokens / np.maximum(np.linalg.norm(result_tokens, axis=1, keepdims=True), 1e-12)  # [N, D]
    sim = q @ r.T  # [N, N] query patch x result patch
    return sim.max(axis=1).reshape(h, w), sim.max(axis=0).reshape(h, w), sim.argmax(axis=1)


def colormap(values: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] colours of ``values`` in [0, 1] (clipped) on the viridis-like ramp."""
    x = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (x - lo)[..., None]
    return (_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, lo: float, hi: float, size: int = 256, alpha: float = 0.55
            ) -> np.ndarray:
    """uint8 [size, size, 3]: ``image`` uint8 [H, W, 3] resized to ``size`` and blended with ``heat`` [h, w]
    mapped from [lo, hi] to colours, upsampled bilinearly (patch borders stay soft)."""
    base = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), dtype=np.float32)
    scaled = (heat - lo) / max(hi - lo, 1e-6)  # [h, w] in [0, 1]
    smooth = Image.fromarray(scaled.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
    colours = colormap(np.asarray(smooth)).astype(np.float32)  # [size, size, 3]
    return (base * (1 - alpha) + colours * alpha + 0.5).clip(0, 255).astype(np.uint8)


def explain_pair(query_image: np.ndarray, query_tokens: np.ndarray, result_image: np.ndarray,
                 result_tokens: np.ndarray, grid: tuple[int, int], size: int = 256) -> dict:
    """Both overlays on one shared colour scale.

    Returns ``{"query": uint8 [size, size, 3], "result": uint8 [size, size, 3], "low", "high", "mean_best"}``:
    the cosine range shown and the mean best-match cosine over query patches.
    """
    q_map, r_map, _ = token_similarity(query_tokens, result_tokens, grid)
    lo, hi = float(min(q_map.min(), r_map.min())), float(max(q_map.max(), r_map.max()))
    return {"query": overlay(query_image, q_map, lo, hi, size), "result": overlay(result_image, r_map, lo, hi, size),
            "low": lo, "high": hi, "mean_best": float(q_map.mean())}
