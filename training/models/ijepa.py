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
from training.models.backbone import MaskedViT, gather_tokens, init_weights, sincos_pos_embed
from training.models.regularizers import regularizer


def shared_context_mask(num_context: int, num_targets: int, num_target_patches: int,
                        device: torch.device) -> torch.Tensor:
    """Attention mask [L, L] bool (True = may attend), L = Nc + M*Nt, for one predictor sequence holding the
    context tokens followed by the M target blocks' queries: context tokens see the context; a target's
    queries see the context and their own block."""
    block = torch.arange(num_context + num_targets * num_target_patches, device=device)
    block = torch.where(block < num_context, -1, (block - num_context) // num_target_patches)  # [L], -1 = context
    return (block.view(1, -1) == -1) | (block.view(-1, 1) == block.view(1, -1))


class Predictor(nn.Module):
    """Narrow ViT predicting target-block features from context tokens.

    `shared_context=False` is the paper's predictor: one sequence per target block, the context repeated M
    times, every token attending to every other. `shared_context=True` puts all M blocks of an image into one
    sequence with `shared_context_mask`: the queries of a block see exactly what they see in the paper (the
    context and their own block), the context is computed once instead of M times, and its tokens no longer
    attend to the queries — fewer FLOPs, a different (not equivalent) function."""

    def __init__(self, grid: tuple[int, int], embed_dim: int, pred_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, shared_context: bool = False) -> None:
        super().__init__()
        self.shared_context = shared_context
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
        queries = gather_tokens(pos, target_idx.flatten(1)) + self.mask_token  # [B, M*Nt, Dp]
        if self.shared_context:
            mask = shared_context_mask(num_context, num_targets, num_target_patches, x.device)  # [L, L]
            x = torch.cat([x, queries], dim=1)  # [B, Nc+M*Nt, Dp]
            for block in self.blocks:
                x = block(x, attn_mask=mask)
            x = x[:, num_context:].reshape(batch * num_targets, num_target_patches, -1)  # [B*M, Nt, Dp]
        else:
            x = x.repeat_interleave(num_targets, dim=0)  # [B*M, Nc, Dp]
            queries = queries.reshape(batch * num_targets, num_target_patches, -1)  # [B*M, Nt, Dp]
            x = self.blocks(torch.cat([x, queries], dim=1))[:, num_context:]  # [B*M, Nt, Dp]
        return self.proj(self.norm(x))  # [B*M, Nt, D]


class IJEPA(nn.Module):
    """Context encoder + EMA target encoder + predictor. `encoder` (for export) is the target encoder."""

    def __init__(self, model: ModelConfig, config: IJEPAConfig) -> None:
        super().__init__()
        self.config = config
        self.context_encoder = MaskedViT(model)
        self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False)
        self.predictor = Predictor(self.context_encoder.grid, model.embed_dim, config.pred_dim,
                                   config.pred_depth, model.num_heads, model.mlp_ratio, config.shared_context)

    @property
    def encoder(self) -> MaskedViT:
        """The encoder used for evaluation and export: the target encoder, as in the paper."""
        return self.target_encoder

    def trainable_modules(self) -> list[nn.Module]:
        return [self.context_encoder, self.predictor]

    def forward(self, images: torch.Tensor, masks: BlockMasks, gen: torch.Generator | None = None) -> torch.Tensor:
        """images [B, C, H, W] -> smooth-L1 loss between predicted and layer-normed target features, plus
        `reg_weight` x the anti-collapse regularizer on the context's mean-pooled embedding (if configured;
        `gen` draws its random directions)."""
        batch, num_targets, num_target_patches = masks.targets.shape
        with torch.no_grad():
            features = self.target_encoder(images)  # [B, N, D]
            features = F.layer_norm(features, features.shape[-1:])
            targets = gather_tokens(features, masks.targets.flatten(1))  # [B, M*Nt, D]
            targets = targets.reshape(batch * num_targets, num_target_patches, -1)  # [B*M, Nt, D]
        context = self.context_encoder(images, masks.context)  # [B, Nc, D]
        predictions = self.predictor(context, masks.context, masks.targets)  # [B*M, Nt, D]
        loss = F.smooth_l1_loss(predictions.float(), targets.float())
        if self.config.reg_weight > 0 and self.config.regularizer != "none":
            loss = loss + self.config.reg_weight * regularizer(self.config.regularizer, context.mean(dim=1), gen)
        return loss

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA: target <- momentum * target + (1 - momentum) * context."""
        target = [p for p in self.target_encoder.parameters() if p.dtype.is_floating_point]
        online = [p for p in self.context_encoder.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(target, online, 1.0 - momentum)
