"""I-JEPA: predict the target encoder's features of masked blocks from a context block (Assran et al.,
CVPR 2023; facebookresearch/ijepa). The model owns its loss: `forward(images, masks) -> loss`.

Context encoder and EMA target encoder are the shared `MaskedViT`; the predictor is a narrow ViT made of
timm `Block`s: project down, add positions, append one mask token per target patch, run the blocks, keep
the tail, project up.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from training.config import IJEPAConfig, ModelConfig
from training.masks import BlockMasks
from training.models.backbone import MaskedViT, gather_tokens, sincos_pos_embed


def init_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights, zero biases, unit LayerNorms (as the reference implementations)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Predictor(nn.Module):
    """Narrow ViT predicting target-block features from context tokens."""

    def __init__(self, grid: tuple[int, int], embed_dim: int, pred_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.embed = nn.Linear(embed_dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim))
        self.register_buffer("pos_embed", sincos_pos_embed(grid, pred_dim), persistent=False)  # [1, N, Dp]
        self.blocks = nn.Sequential(*[Block(pred_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(pred_dim)
        self.proj = nn.Linear(pred_dim, embed_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """context [B, Nc, D], context_idx [B, Nc], target_idx [B, M, Nt] -> predictions [B*M, Nt, D]."""
        batch, num_targets, num_target_patches = target_idx.shape
        num_context = context.shape[1]
        pos = self.pos_embed.expand(batch, -1, -1)  # [B, N, Dp]
        x = self.embed(context) + gather_tokens(pos, context_idx)  # [B, Nc, Dp]
        x = x.repeat_interleave(num_targets, dim=0)  # [B*M, Nc, Dp]
        queries = gather_tokens(pos, target_idx.flatten(1))  # [B, M*Nt, Dp]
        queries = queries.reshape(batch * num_targets, num_target_patches, -1) + self.mask_token  # [B*M, Nt, Dp]
        x = self.blocks(torch.cat([x, queries], dim=1))  # [B*M, Nc+Nt, Dp]
        return self.proj(self.norm(x[:, num_context:]))  # [B*M, Nt, D]


class IJEPA(nn.Module):
    """Context encoder + EMA target encoder + predictor. `encoder` (for export) is the target encoder."""

    def __init__(self, model: ModelConfig, config: IJEPAConfig) -> None:
        super().__init__()
        self.config = config
        self.context_encoder = MaskedViT(model)
        self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False)
        self.predictor = Predictor(self.context_encoder.grid, model.embed_dim, config.pred_dim,
                                   config.pred_depth, model.num_heads, model.mlp_ratio)

    @property
    def encoder(self) -> MaskedViT:
        """The encoder used for evaluation and export: the target encoder, as in the paper."""
        return self.target_encoder

    def trainable_modules(self) -> list[nn.Module]:
        return [self.context_encoder, self.predictor]

    def forward(self, images: torch.Tensor, masks: BlockMasks) -> torch.Tensor:
        """images [B, C, H, W] -> smooth-L1 loss between predicted and layer-normed target features."""
        batch, num_targets, num_target_patches = masks.targets.shape
        with torch.no_grad():
            features = self.target_encoder(images)  # [B, N, D]
            features = F.layer_norm(features, features.shape[-1:])
            targets = gather_tokens(features, masks.targets.flatten(1))  # [B, M*Nt, D]
            targets = targets.reshape(batch * num_targets, num_target_patches, -1)  # [B*M, Nt, D]
        context = self.context_encoder(images, masks.context)  # [B, Nc, D]
        predictions = self.predictor(context, masks.context, masks.targets)  # [B*M, Nt, D]
        return F.smooth_l1_loss(predictions, targets)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA: target <- momentum * target + (1 - momentum) * context."""
        target = [p for p in self.target_encoder.parameters() if p.dtype.is_floating_point]
        online = [p for p in self.context_encoder.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(target, online, 1.0 - momentum)
