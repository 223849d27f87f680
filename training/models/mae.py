"""MAE: reconstruct the pixels of randomly masked patches (He et al., CVPR 2022; facebookresearch/mae).

`forward(images) -> (loss, pred, mask)` chains `forward_encoder`, `forward_decoder` and `forward_loss`.
Patchify works for any number of bands.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from training.config import MAEConfig, ModelConfig
from training.masks import random_masking_indices
from training.models.backbone import MaskedViT, gather_tokens, init_weights, sincos_pos_embed


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images [B, C, H, W] -> patches [B, N, p*p*C] (raster order; pixel-major, band-minor)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)  # [B, C, h, p, w, p]
    x = x.permute(0, 2, 4, 3, 5, 1)  # [B, h, w, p, p, C]
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """patches [B, N, p*p*C] -> images [B, C, H, W]; the inverse of `patchify`."""
    b = patches.shape[0]
    p = patch_size
    x = patches.reshape(b, grid[0], grid[1], p, p, channels)  # [B, h, w, p, p, C]
    x = x.permute(0, 5, 1, 3, 2, 4)  # [B, C, h, p, w, p]
    return x.reshape(b, channels, grid[0] * p, grid[1] * p)


class MAE(nn.Module):
    def __init__(self, model: ModelConfig, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_size = model.patch_size
        self.encoder = MaskedViT(model)
        grid = self.encoder.grid
        self.decoder_embed = nn.Linear(model.embed_dim, config.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(grid, config.decoder_dim), persistent=False)
        self.decoder_blocks = nn.Sequential(
            *[Block(config.decoder_dim, config.decoder_heads, model.mlp_ratio, qkv_bias=True)
              for _ in range(config.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(config.decoder_dim)
        self.decoder_pred = nn.Linear(config.decoder_dim, model.patch_size ** 2 * model.in_chans)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def trainable_modules(self) -> list[nn.Module]:
        return [self]

    def forward_encoder(self, images: torch.Tensor, gen: torch.Generator | None = None):
        """images [B, C, H, W] -> (latent [B, K, D], mask [B, N] with 1 = masked, restore [B, N])."""
        keep, restore = random_masking_indices(images.shape[0], self.encoder.num_patches, self.config.mask_ratio, gen)
        keep, restore = keep.to(images.device), restore.to(images.device)
        latent = self.encoder(images, keep)  # [B, K, D]
        mask = torch.ones(restore.shape, device=images.device)  # [B, N]
        mask[:, : keep.shape[1]] = 0
        mask = torch.gather(mask, 1, restore)  # raster order
        return latent, mask, restore

    def forward_decoder(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """latent [B, K, D], restore [B, N] -> predicted pixels [B, N, p*p*C]."""
        x = self.decoder_embed(latent)  # [B, K, Dd]
        batch, num_keep, dim = x.shape
        masked = self.mask_token.expand(batch, restore.shape[1] - num_keep, dim)  # [B, N-K, Dd]
        x = gather_tokens(torch.cat([x, masked], dim=1), restore)  # [B, N, Dd], raster order
        x = self.decoder_blocks(x + self.decoder_pos_embed)
        return self.decoder_pred(self.decoder_norm(x))  # [B, N, p*p*C]

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked patches, per-patch normalised targets if `norm_pix_loss`."""
        target = patchify(images, self.patch_size)  # [B, N, p*p*C]
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # [B, N]
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor, gen: torch.Generator | None = None):
        latent, mask, restore = self.forward_encoder(images, gen)
        pred = self.forward_decoder(latent, restore)
        return self.forward_loss(images, pred, mask), pred, mask
