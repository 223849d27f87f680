"""The encoders an index can be built with: an exported ONNX model (default) or, as an option, PyTorch eager.

Both expose ``card`` (the model card dict), ``identity`` (what makes cached embeddings valid) and
``embed(images [B, C, H, W] scaled) -> float32 [B, D]``; :func:`normalised` makes the rows unit-length.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from training.encoder import ExportedEncoder

from .catalog import sha256_file
from .paths import resolve_model

BACKENDS = ("onnx", "torch")


class Encoder(Protocol):
    card: dict[str, Any]
    identity: str

    def embed(self, images: torch.Tensor | np.ndarray) -> np.ndarray: ...


class OnnxEncoder(ExportedEncoder):
    """:class:`training.encoder.ExportedEncoder` plus ``identity`` = sha256 of the ONNX file."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, gpu: bool = False) -> None:
        super().__init__(model_dir, threads, gpu)
        self.identity = sha256_file(self.model_dir / self.card["onnx"])


class TorchEncoder:
    """The serving encoder of a training run (``training.export.load_run_encoder``) run in PyTorch eager mode."""

    def __init__(self, run_dir: str | Path) -> None:
        from training.export import load_run_encoder

        self.module, state = load_run_encoder(run_dir)
        model = state["config"]["model"]
        self.card = {"name": Path(run_dir).name, "method": state["config"]["method"], "backend": "torch",
                     "input_size": model["img_size"], "bands": model["in_chans"],
                     "band_indices": state["config"]["data"]["bands"], "embedding_dim": model["embed_dim"],
                     "model": model, "steps": state.get("step")}
        self.input_size, self.bands, self.dim = model["img_size"], model["in_chans"], model["embed_dim"]
        self.identity = "torch:" + hashlib.sha256(json.dumps(self.card, sort_keys=True).encode()).hexdigest()

    @torch.no_grad()
    def embed(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Mean-pooled embeddings [B, D] (not normalised) of images [B, C, S, S] in scaled units."""
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = torch.nn.functional.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        return self.module(x)[0].numpy()


def load_encoder(model: str | Path, backend: str = "onnx") -> Encoder:
    """An encoder for ``model`` (registry name or exported-model folder; for ``torch``, a training run folder)."""
    if backend == "onnx":
        return OnnxEncoder(resolve_model(model))
    if backend == "torch":
        return TorchEncoder(model)
    raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS}")


def normalised(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32 [B, D]); all-zero rows stay zero."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
