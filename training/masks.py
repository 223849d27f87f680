"""Masks for I-JEPA (multi-block) and MAE (random), as index tensors of patch positions.

Multi-block masks follow Assran et al. (CVPR 2023) and facebookresearch/ijepa `MaskCollator`: per batch one
target-block size and one context-block size are drawn; per image, `num_targets` target blocks and one context
block are placed at random, and the target patches are removed from the context. Block sizes are rounded as in
the reference (see `_block_size`). The official collator retries forever when fewer than `min_keep` context
patches remain, which hangs on small grids (an 8x8 grid keeps about 12 context patches). Here the retries are
bounded: after `max_tries` placements the one with the largest context is used, and the configuration is
checked up front so that the context can never be empty.

Patch positions are row-major indices into the H x W patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class BlockMasks:
    context: torch.Tensor  # [B, Nc] long, sorted patch indices seen by the context encoder
    targets: torch.Tensor  # [B, M, Nt] long, patch indices of each of the M target blocks

    def to(self, device: torch.device) -> "BlockMasks":
        return BlockMasks(self.context.to(device), self.targets.to(device))


class MultiBlockMaskGenerator:
    """Draws I-JEPA context/target masks for a batch on a `grid` = (H, W) patch grid."""

    def __init__(
        self,
        grid: tuple[int, int],
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        min_keep: int = 4,
        max_tries: int = 20,
    ) -> None:
        self.height, self.width = grid
        self.num_targets = num_targets
        self.target_scale = target_scale
        self.target_aspect = target_aspect
        self.context_scale = context_scale
        self.min_keep = min_keep
        self.max_tries = max_tries
        num_patches = self.height * self.width
        biggest_target = self._block_size(target_scale[1], target_aspect[1])
        if num_targets * biggest_target[0] * biggest_target[1] >= num_patches:
            raise ValueError(
                f"{num_targets} target blocks of up to {biggest_target} patches can cover the whole "
                f"{self.height}x{self.width} grid, leaving no context: use fewer or smaller targets, or a larger grid"
            )

    def _block_size(self, scale: float, aspect: float) -> tuple[int, int]:
        """(h, w) in patches of a block covering `scale` of the grid with aspect ratio h/w = `aspect`.

        The reference's rounding (facebookresearch/ijepa `_sample_block_size`): the area is floored to whole
        patches, the sides are rounded, and a block stays strictly inside the grid. Rounding both sides up can
        overshoot the area (4 x 3 for 10 patches), so the longer side shrinks until the block is no larger than
        the floored area: a block never covers more than `scale` of the grid."""
        area = max(1, int(scale * self.height * self.width))
        h = max(1, int(round(math.sqrt(area * aspect))))
        w = max(1, int(round(math.sqrt(area / aspect))))
        h, w = min(h, max(1, self.height - 1)), min(w, max(1, self.width - 1))
        while h * w > area:
            if h >= w:
                h -= 1
            else:
                w -= 1
        return h, w

    def _sample_size(self, scale_range, aspect_range, gen: torch.Generator) -> tuple[int, int]:
        u = torch.rand(2, generator=gen).tolist()
        scale = scale_range[0] + u[0] * (scale_range[1] - scale_range[0])
        log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
        aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
        return self._block_size(scale, aspect)

    def _corners(self, size: tuple[int, int], shape: tuple[int, ...], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random top/left corners of blocks of `size`, each of `shape`."""
        h, w = size
        top = torch.randint(0, self.height - h + 1, shape, generator=gen)
        left = torch.randint(0, self.width - w + 1, shape, generator=gen)
        return top, left

    def _block_maps(self, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Boolean maps [..., H, W] of the blocks of `size` at corners `top`, `left` (each [...])."""
        rows = torch.arange(self.height).view(-1, 1)
        cols = torch.arange(self.width).view(1, -1)
        top, left = top[..., None, None], left[..., None, None]
        return (rows >= top) & (rows < top + size[0]) & (cols >= left) & (cols < left + size[1])

    def __call__(self, batch_size: int, gen: torch.Generator) -> BlockMasks:
        target_size = self._sample_size(self.target_scale, self.target_aspect, gen)
        context_size = self._sample_size(self.context_scale, (1.0, 1.0), gen)
        b, t, m = batch_size, self.max_tries, self.num_targets
        # Every image tries `max_tries` placements at once; the first that keeps >= min_keep context
        # patches wins, else the one that keeps the most.
        target_top, target_left = self._corners(target_size, (b, t, m), gen)
        tried_targets = self._block_maps(target_top, target_left, target_size)  # [B, T, M, H, W] bool
        tried_context = self._block_maps(*self._corners(context_size, (b, t), gen), context_size)  # [B, T, H, W]
        tried_context = tried_context & ~tried_targets.any(dim=2)
        kept = tried_context.flatten(2).sum(-1)  # [B, T]
        good = kept >= self.min_keep
        choice = torch.where(good.any(1), good.float().argmax(1), kept.argmax(1))  # [B]
        rows = torch.arange(b)
        context_map = tried_context[rows, choice].flatten(1)  # [B, N] bool
        target_maps = tried_targets[rows, choice]  # [B, M, H, W] bool
        empty = context_map.sum(1) == 0  # context block inside the targets: use everything else
        context_map[empty] = ~target_maps[empty].any(1).flatten(1)
        # Every image keeps the same number of context patches so the batch stacks: a random subset of the
        # smallest size, kept in raster order (the official code keeps the first ones, biasing to the top).
        keep = int(context_map.sum(1).min())
        scores = torch.rand(context_map.shape, generator=gen).masked_fill(~context_map, 2.0)
        context_idx = scores.topk(keep, dim=1, largest=False).indices.sort(dim=1).values  # [B, Nc] long
        # Target patches of a rectangle: (top + dy) * W + (left + dx), raster order within the block.
        top, left = target_top[rows, choice], target_left[rows, choice]  # [B, M]
        dy = torch.arange(target_size[0]).view(-1, 1)
        dx = torch.arange(target_size[1]).view(1, -1)
        offsets = (dy * self.width + dx).flatten()  # [h*w]
        target_idx = (top * self.width + left)[..., None] + offsets  # [B, M, h*w] long
        return BlockMasks(context=context_idx, targets=target_idx)


def random_masking_indices(
    batch_size: int, num_patches: int, mask_ratio: float, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE masking by argsort of noise (He et al.): returns (keep [B, K], restore [B, N]) index tensors.

    `keep` are the visible patch indices; `restore` is the inverse permutation that puts the sequence
    [visible, masked] back into raster order. K = round(N * (1 - mask_ratio)), at least 1.
    """
    num_keep = max(1, int(round(num_patches * (1.0 - mask_ratio))))
    noise = torch.rand(batch_size, num_patches, generator=gen)  # [B, N]
    shuffle = noise.argsort(dim=1)  # [B, N] ascending: the first K are kept
    restore = shuffle.argsort(dim=1)  # [B, N]
    return shuffle[:, :num_keep], restore
