"""Models: one shared timm ViT backbone, and the I-JEPA and MAE pretraining wrappers around it."""

from training.models.backbone import (MaskedViT, create_encoder, gather_tokens, init_weights, sincos_pos_embed,
                                      use_explicit_attention)
from training.models.ijepa import IJEPA
from training.models.mae import MAE

__all__ = ["IJEPA", "MAE", "MaskedViT", "build_model", "create_encoder", "gather_tokens", "init_weights",
           "sincos_pos_embed", "use_explicit_attention"]


def build_model(config):
    """The pretraining model for `config.method` ("ijepa" or "mae"), built from a `TrainConfig`."""
    if config.method == "ijepa":
        return IJEPA(config.model, config.ijepa)
    if config.method == "mae":
        return MAE(config.model, config.mae)
    raise ValueError(f"unknown method {config.method!r}: use 'ijepa' or 'mae'")
