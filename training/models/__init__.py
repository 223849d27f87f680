"""Models: one shared timm ViT backbone, and the I-JEPA and MAE pretraining wrappers around it."""

from training.models.backbone import MaskedViT, create_encoder, gather_tokens, sincos_pos_embed
from training.models.ijepa import IJEPA
from training.models.mae import MAE

__all__ = ["IJEPA", "MAE", "MaskedViT", "create_encoder", "gather_tokens", "sincos_pos_embed", "build_model"]


def build_model(config):
    """The pretraining model for `config.method` ("ijepa" or "mae"), built from a `TrainConfig`."""
    if config.method == "ijepa":
        return IJEPA(config.model, config.ijepa)
    if config.method == "mae":
        return MAE(config.model, config.mae)
    raise ValueError(f"unknown method {config.method!r}: use 'ijepa' or 'mae'")
