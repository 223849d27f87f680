"""The shared backbone: timm's `VisionTransformer` with no class token, fixed 2-D sin-cos positions and
mean-pooled patch tokens, plus a forward pass over a subset of patches (for masked pretraining).

The attention, blocks and patch embedding are timm's own; this file only composes them (see STYLE.md).
"""

from __future__ import annotations

import torch
from timm.layers import Attention, build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from training.config import ModelConfig


def sincos_pos_embed(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings, [1, H*W, dim], raster order."""
    return build_sincos2d_pos_embed(list(grid), dim=dim).unsqueeze(0)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select tokens: x [B, N, D], index [B, K] long -> [B, K, D]."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def init_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights, zero biases, unit LayerNorms (as the reference implementations)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def use_explicit_attention(model: nn.Module, explicit: bool = True) -> None:
    """Make every timm `Attention` in `model` compute softmax(q k^T / sqrt(d)) v with plain matmuls instead of
    `F.scaled_dot_product_attention`. Same function, same weights; on this project's CPU path the explicit form
    is faster at these short sequences (<= 64 tokens): PyTorch's CPU flash-attention kernel runs its bf16
    backward ~4x slower than fp32 (`python -m training bench --profile` shows it), and even in fp32 the
    explicit form wins by ~10 %. CUDA keeps the fused kernel. `explicit=False` restores the fused kernel."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused_attn = not explicit


def create_encoder(config: ModelConfig, drop_path_rate: float = 0.0) -> VisionTransformer:
    """timm ViT: no class token, frozen sin-cos positions, final norm on tokens, mean-pooled, no head.

    `encoder(images [B, C, H, W]) -> [B, D]` is the image embedding used for retrieval and evaluation.
    `drop_path_rate` (stochastic depth, linearly increasing over the blocks) is for fine-tuning.
    """
    vit = VisionTransformer(
        img_size=config.img_size,
        patch_size=config.patch_size,
        in_chans=config.in_chans,
        num_classes=0,
        global_pool="avg",
        fc_norm=False,  # keep the LayerNorm on every token (I-JEPA targets are token features)
        class_token=False,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        drop_path_rate=drop_path_rate,
    )
    vit.pos_embed.data.copy_(sincos_pos_embed(vit.patch_embed.grid_size, config.embed_dim))
    vit.pos_embed.requires_grad_(False)
    return vit


class MaskedViT(nn.Module):
    """A timm ViT that can run on a subset of its patches.

    forward(images [B, C, H, W], keep [B, K] | None) -> tokens [B, K, D] (all N patches when keep is None),
    after the final norm. `self.vit` is the plain timm model, exported as is for serving.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.vit = create_encoder(config)
        self.grid = tuple(self.vit.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        vit = self.vit
        x = vit.patch_embed(images) + vit.pos_embed  # [B, N, D]
        if keep is not None:
            x = gather_tokens(x, keep)  # [B, K, D]
        x = vit.blocks(vit.norm_pre(x))
        return vit.norm(x)
