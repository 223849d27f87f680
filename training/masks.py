"""Masks for I-JEPA (multi-block) and MAE (random), as index tensors of patch positions.

Multi-block masks follow Assran et al. (CVPR 2023) and facebookresearch/ijepa `MaskCollator`: per batch one
target-block size and one context-block size are drawn; per image, `num_targets` target blocks and one context
block are placed at random, and the target patches are removed from the context. The official collator retries
forever when fewer than `min_keep` context patches remain, which hangs on small grids (an 8x8 grid keeps about
12 context patches). Here the retries are bounded: after `max_tries` placements the one with the largest
context is used, and the configuration is checked up front so that the context can never be empty.

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
        """(h, w) in patches of a block covering `scale` of the grid with aspect ratio h/w = `aspect`."""
        area = scale * self.height * self.width
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        return max(1, min(h, self.height)), max(1, min(w, self.width))

    def _sample_size(self, scale_range, aspect_range, gen: torch.Generator) -> tuple[int, int]:
        u = torch.rand(2, generator=gen).tolist()
        scale = scale_range[0] + u[0] * (scale_range[1] - scale_range[0])
        log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
        aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
        return self._block_size(scale, aspect)

    def _place(self, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
        """A block of `size` at a random position, as a boolean [H, W] map."""
        h, w = size
        top = int(torch.randint(0, self.height - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, self.width - w + 1, (1,), generator=gen))
        block = torch.zeros(self.height, self.width, dtype=torch.bool)
        block[top : top + h, left : left + w] = True
        return block

    def _one_image(self, target_size, context_size, gen) -> tuple[torch.Tensor, list[torch.Tensor]]:
        best_context, best_targets = None, None
        for _ in range(self.max_tries):
            targets = [self._place(target_size, gen) for _ in range(self.num_targets)]
            context = self._place(context_size, gen)
            for target in targets:
                context &= ~target
            if best_context is None or context.sum() > best_context.sum():
                best_context, best_targets = context, targets
            if best_context.sum() >= self.min_keep:
                break
        if best_context.sum() == 0:  # context block fell inside the targets: use everything else
            best_context = ~torch.stack(best_targets).any(0)
        return best_context.flatten().nonzero().squeeze(1), [t.flatten().nonzero().squeeze(1) for t in best_targets]

    def __call__(self, batch_size: int, gen: torch.Generator) -> BlockMasks:
        target_size = self._sample_size(self.target_scale, self.target_aspect, gen)
        context_size = self._sample_size(self.context_scale, (1.0, 1.0), gen)
        contexts, targets = [], []
        for _ in range(batch_size):
            context, blocks = self._one_image(target_size, context_size, gen)
            contexts.append(context)
            targets.append(torch.stack(blocks))  # [M, h*w]
        # Every image keeps the same number of context patches so the batch stacks: a random subset of the
        # smallest size, kept in raster order (the official code keeps the first ones, biasing to the top).
        keep = min(len(c) for c in contexts)
        contexts = [c[torch.randperm(len(c), generator=gen)[:keep].sort().values] for c in contexts]
        return BlockMasks(context=torch.stack(contexts), targets=torch.stack(targets))


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
