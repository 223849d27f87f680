"""Batched augmentation on tensors: random resized crop + horizontal flip as one `affine_grid` +
`grid_sample` per batch (no per-image Python work), the evaluation transform shared with export, and the eight
orientations of an overhead image (test-time averaging).

All functions take images as float [B, C, H, W] in scaled units (see training.data) and per-band statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(images - mean) / std per band; mean, std [C]."""
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    gen: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
) -> torch.Tensor:
    """images [B, C, H, W] -> [B, C, size, size]: a crop of `scale` of the area and aspect `ratio` per image,
    resized bilinearly, flipped left-right with probability 1/2 (torchvision's RandomResizedCrop, batched)."""
    batch = images.shape[0]
    u = torch.rand(batch, 5, generator=gen)  # area, log-aspect, centre x, centre y, flip
    area = scale[0] + u[:, 0] * (scale[1] - scale[0])
    log_ratio = math.log(ratio[0]) + u[:, 1] * (math.log(ratio[1]) - math.log(ratio[0]))
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the image width
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (2 * u[:, 2] - 1) * (1 - width)  # normalised coordinates in [-1, 1]
    centre_y = (2 * u[:, 3] - 1) * (1 - height)
    flip = torch.where((u[:, 4] < 0.5) & hflip, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, [batch, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def eval_transform(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Evaluation / serving input: resize to size x size (bilinear, antialiased) and normalise."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalize(images, mean, std)


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """images [B, C, H, W] -> its 8 orientations, each [B, C, H, W] (H == W): the quarter turns of the image and of
    its mirror, the dihedral group D4. A scene seen from above has no up, so a classifier fine-tuned with flips and
    quarter turns sees each as the same scene; the first view is the image itself."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral_views: needs square images, got {tuple(images.shape[-2:])}")
    return [torch.rot90(view, k, dims=(2, 3)) for view in (images, images.flip(3)) for k in range(4)]
