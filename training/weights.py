"""An exported encoder's weights as a plain timm checkpoint, so it loads with timm alone (no project code).

The ONNX graph keeps most tensors of the timm ViT under their PyTorch names (``vit.blocks.0.norm1.weight``); the
linear layers' weights are anonymous transposed constants, named back by their place in the graph
(:func:`state_dict_from_onnx`). The result is checked against the ONNX graph on images before it is used or saved
(:func:`check_against_onnx`).

The shipped file is ``encoder.safetensors`` beside ``encoder.onnx``, and the card's ``timm`` entry says how to
load it::

    timm.create_model(card["timm"]["architecture"], checkpoint_path="assets/models/ijepa/encoder.safetensors",
                      **card["timm"]["kwargs"])

(a local file only: ``pretrained`` stays off, so timm never reaches for a hub; for a new head, ``reset_classifier``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import ModelConfig
from training.encoder import CARD_NAME, read_card

WEIGHTS_NAME = "encoder.safetensors"
#: The timm architecture whose defaults the card's kwargs override (ViT-Ti: width 192, 3 heads, MLP 4x).
TIMM_ARCHITECTURE = "vit_tiny_patch16_224"


def timm_kwargs(model: ModelConfig) -> dict[str, Any]:
    """The keyword arguments that make ``timm.create_model(TIMM_ARCHITECTURE, ...)`` this project's backbone
    (``training.models.backbone.create_encoder``): no class token, mean-pooled, no head."""
    return {"img_size": model.img_size, "patch_size": model.patch_size, "in_chans": model.in_chans,
            "embed_dim": model.embed_dim, "depth": model.depth, "num_heads": model.num_heads,
            "mlp_ratio": model.mlp_ratio, "class_token": False, "global_pool": "avg", "fc_norm": False,
            "num_classes": 0}


def state_dict_from_onnx(onnx_path: str | Path, depth: int, prefix: str = "vit.") -> dict[str, torch.Tensor]:
    """The timm ViT's state dict (names without ``prefix``) read out of an exported ``encoder.onnx`` (exported
    with ``last_blocks`` = 1) of ``depth`` blocks.

    Tensors the exporter kept under their names are taken as they are. Linear weights are anonymous, transposed
    constants: the graph's ``MatMul`` nodes with a constant right-hand side are, in order, each block's
    ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` (then a fine-tuned head's, which is ignored), each
    followed by the ``Add`` of its bias. The exporter merges identical constants (an untrained model's zero
    biases and unit norms), so a bias or LayerNorm parameter may stand under another name: those are read from
    the ``Add`` and ``LayerNormalization`` nodes in order (norm1, norm2 per block, then the final norm)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {name[len(prefix):]: np.array(v) for name, v in values.items() if name.startswith(prefix)}
    linears = [f"blocks.{i}.{layer}" for i in range(depth) for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in values
               and values[n.input[1]].ndim == 2 and not n.input[1].startswith(prefix) and n.input[1] != "whitening"]
    for name, node in zip(linears, matmuls):
        state[f"{name}.weight"] = values[node.input[1]].T.copy()  # x @ W^T is stored as x @ (W^T)
        add = next(n for n in consumers[node.output[0]] if n.op_type == "Add")
        state[f"{name}.bias"] = values[next(i for i in add.input if i != node.output[0])]
    norms = [f"blocks.{i}.norm{j}" for i in range(depth) for j in (1, 2)] + ["norm"]
    for name, node in zip(norms, [n for n in graph.node if n.op_type == "LayerNormalization"]):
        state[f"{name}.weight"], state[f"{name}.bias"] = values[node.input[1]], values[node.input[2]]
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def check_against_onnx(vit: torch.nn.Module, model_dir: Path, card: dict[str, Any], tolerance: float = 1e-4) -> float:
    """Max |difference| between the timm model's ``forward_features`` and the ONNX ``tokens`` on seeded random
    images; raises when it exceeds ``tolerance`` (the weights were not read back right)."""
    from training.encoder import ExportedEncoder

    size, norm = card["input_size"], card["normalisation"]
    images = torch.rand(4, card["bands"], size, size, generator=torch.Generator().manual_seed(0))
    x = (images - torch.tensor(norm["mean"]).view(1, -1, 1, 1)) / torch.tensor(norm["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        tokens = vit.eval().forward_features(x).numpy()
    _, expected = ExportedEncoder(model_dir, threads=1).run(images)
    diff = float(np.abs(tokens - expected).max())
    if diff > tolerance:
        raise RuntimeError(f"{model_dir}: the weights read out of {card['onnx']} give tokens {diff:.2e} away from "
                           f"the ONNX graph's (> {tolerance}): not saved")
    return diff


def save_timm_weights(model_dir: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``model_dir/encoder.safetensors`` (the encoder's timm weights, ``dtype``) and the card's ``timm``
    entry; returns the file. fp16 halves the file; the ONNX graph stays fp32."""
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    card = read_card(model_dir)
    model = ModelConfig(**card["model"])
    vit = _encoder_from_onnx(model_dir, card)
    state = vit.state_dict()
    path = model_dir / WEIGHTS_NAME
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, path, metadata={"format": "pt"})
    path.chmod(0o644)
    card["timm"] = {"architecture": TIMM_ARCHITECTURE, "kwargs": timm_kwargs(model), "weights": WEIGHTS_NAME,
                    "dtype": str(dtype).removeprefix("torch."),
                    "output": "forward_features = the ONNX 'tokens'; the ONNX 'embedding' is their mean minus "
                              "the card's centre (times the whitening where the card names one)"}
    (model_dir / CARD_NAME).write_text(json.dumps(card, indent=1))
    return path


def timm_encoder(model_dir: str | Path, drop_path_rate: float = 0.0) -> torch.nn.Module:
    """The exported encoder as a timm ``VisionTransformer`` (fp32): from ``encoder.safetensors`` through timm's own
    ``checkpoint_path`` loading where it is shipped (a local file; nothing is downloaded), else read out of the ONNX
    graph."""
    import timm

    model_dir = Path(model_dir)
    card = read_card(model_dir)
    if (model_dir / WEIGHTS_NAME).is_file() and "timm" in card:
        entry = card["timm"]
        return timm.create_model(entry["architecture"], drop_path_rate=drop_path_rate,
                                 checkpoint_path=str(model_dir / entry["weights"]), **entry["kwargs"]).float()
    return _encoder_from_onnx(model_dir, card, drop_path_rate)


def _encoder_from_onnx(model_dir: Path, card: dict[str, Any], drop_path_rate: float = 0.0) -> torch.nn.Module:
    """The timm ViT with the weights of ``model_dir``'s ONNX graph, checked against it."""
    from training.models.backbone import create_encoder

    if card.get("last_blocks", 1) != 1:
        raise ValueError(f"{model_dir}: reading weights back is only supported for last_blocks = 1 exports")
    model = ModelConfig(**card["model"])
    vit = create_encoder(model, drop_path_rate=drop_path_rate)
    vit.load_state_dict(state_dict_from_onnx(model_dir / card["onnx"], model.depth), strict=True)
    check_against_onnx(vit, model_dir, card)
    return vit
