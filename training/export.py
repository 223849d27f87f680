"""Export a run's encoder to ONNX with a JSON model card, checked against PyTorch on real images.

The exported graph is `ServingEncoder`: normalisation + the timm ViT (for I-JEPA the target encoder, as in
the paper's evaluation), returning the mean-pooled embedding and the patch tokens. The batch axis is dynamic.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.augment import eval_transform
from training.checkpoint import BEST_DIR, CHECKPOINT_DIR, find_checkpoint, load_checkpoint, read_state
from training.config import TrainConfig, config_from_dict
from training.data import SkipUnreadable, collate_skipping, open_archives
from training.encoder import CARD_NAME, ONNX_NAME, ExportedEncoder
from training.models import build_model

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4


class ServingEncoder(nn.Module):
    """images [B, C, S, S] in scaled units -> (embedding [B, E], tokens [B, N, D]).

    The embedding is the mean patch token (the paper's feature; with `last_blocks` = k > 1, the mean tokens of
    the last k blocks, each through the final LayerNorm, concatenated: E = k * D), minus `centre` (the mean
    embedding of training images, set by `fit`; zero until then), optionally times a PCA-whitening matrix also
    fitted on training images. Raw ViT embeddings share a large common component, so uncentred cosines all sit
    near 1; centring in the graph makes every index built from the export use the geometry the evaluation
    measures (which centres on the train mean; a constant shift changes none of its numbers). `tokens` are the
    last block's, for the app's patch-level explanations."""

    def __init__(self, vit: nn.Module, mean: list[float], std: list[float], last_blocks: int = 1) -> None:
        super().__init__()
        if not 1 <= last_blocks <= len(vit.blocks):
            raise ValueError(f"last_blocks must be between 1 and the depth {len(vit.blocks)}, got {last_blocks}")
        self.vit = vit
        self.last_blocks = last_blocks
        dim = vit.embed_dim * last_blocks
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.register_buffer("centre", torch.zeros(dim))
        self.register_buffer("whitening", torch.eye(dim))  # [E, E]; identity = no whitening
        self.whitened = False

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.pooled((image - self.mean) / self.std)  # [B, E], [B, N, D]
        embedding = pooled - self.centre
        if self.whitened:
            embedding = embedding @ self.whitening
        return embedding, tokens

    def pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images [B, C, S, S] -> (mean tokens of the last k blocks [B, k*D], last tokens [B, N, D])."""
        vit = self.vit
        if self.last_blocks == 1:
            tokens = vit.forward_features(x)  # [B, N, D]
            return tokens.mean(dim=1), tokens
        x = vit.norm_pre(vit.patch_embed(x) + vit.pos_embed)  # [B, N, D]
        means = []
        for index, block in enumerate(vit.blocks):
            x = block(x)
            if index >= len(vit.blocks) - self.last_blocks:
                means.append(vit.norm(x).mean(dim=1))  # [B, D]
        return torch.cat(means, dim=1), vit.norm(x)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, whiten: bool = False, eps: float = 1e-2, batch_size: int = 256) -> None:
        """centre <- mean embedding of images [B, C, S, S] (scaled units, at the input size); with `whiten`,
        whitening <- U diag(1 / sqrt(lambda + eps * lambda_max)) from the PCA of the centred embeddings (the
        regularised whitening of Jegou & Chum, ECCV 2012: eps keeps the weakest directions from dominating)."""
        self.centre.zero_()
        self.whitened = False
        pooled = torch.cat([self(images[start:start + batch_size])[0] for start in range(0, len(images), batch_size)])
        self.centre.copy_(pooled.mean(dim=0))
        if whiten:
            centred = (pooled - self.centre).double()
            eigenvalues, vectors = torch.linalg.eigh(centred.T @ centred / (len(centred) - 1))  # ascending
            eigenvalues, vectors = eigenvalues.flip(0), vectors.flip(1)
            scale = (eigenvalues.clamp_min(0) + eps * eigenvalues[0]).rsqrt()
            self.whitening.copy_((vectors * scale).float())
            self.whitened = True


class ServingClassifier(ServingEncoder):
    """A fine-tuned encoder with its linear head: images [B, C, S, S] -> (embedding [B, D], tokens [B, N, D],
    logits [B, classes]). The logits are the head on the mean token (uncentred, as trained); the embedding is
    centred on training images like every exported embedding, so the model also serves for retrieval."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled, tokens = self.pooled((image - self.mean) / self.std)  # [B, D], [B, N, D]
        return pooled - self.centre, tokens, self.vit.head(pooled)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def load_run_encoder(run_dir: str | Path, last_blocks: int = 1, best: bool = False
                     ) -> tuple[ServingEncoder, dict[str, Any]]:
    """Rebuild the serving encoder of a run from its last checkpoint (`best`: from the epoch with the best online
    kNN on val); returns (encoder in eval mode, state)."""
    checkpoint = find_checkpoint(Path(run_dir), BEST_DIR if best else CHECKPOINT_DIR)
    if checkpoint is None and best:
        raise FileNotFoundError(f"no {BEST_DIR} in {run_dir}: it is written when the online kNN monitor improves "
                                "(monitor.every > 0); export the last checkpoint instead (without --best)")
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}: train with `python -m training pretrain --out {run_dir}`")
    state = read_state(checkpoint)
    config = config_from_dict(state["config"])
    model = build_model(config)
    load_checkpoint(checkpoint, model)
    encoder = ServingEncoder(model.encoder.vit, config.data.stats_mean, config.data.stats_std, last_blocks).eval()
    return encoder, state


def _real_images(data_root: str | list[str], config: TrainConfig, count: int, split: str | None = "test"
                 ) -> torch.Tensor:
    """Up to `count` real images [B, C, H, W] (scaled units) from an archive's `split` (else its training split);
    from a mixed corpus's archives together when `data_root` lists several."""
    d = config.data
    kwargs = dict(image_size=d.image_size, bands=d.bands, fmow_crop=d.fmow_crop, chip_size=d.chip_size)
    try:
        dataset = open_archives(data_root, split=split, **kwargs)
    except ValueError:
        dataset = open_archives(data_root, split=d.split, **kwargs)
    if len(dataset) == 0:
        dataset = open_archives(data_root, split=None, **kwargs)
    picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[: count * 2].tolist()
    batch = collate_skipping([SkipUnreadable(dataset)[i] for i in picks])
    if batch["image"] is None:
        raise ValueError(f"no readable image in {data_root} for the ONNX parity check")
    return batch["image"][:count]


def export_run(run_dir: str | Path, out_dir: str | Path, check_images: int = 32, name: str | None = None,
               fit_images: int = 4000, last_blocks: int = 1, whiten: bool = False, best: bool = False
               ) -> dict[str, Any]:
    """Export the encoder of a training run (see `export_encoder`), its embeddings centred (and, with `whiten`,
    PCA-whitened) on up to `fit_images` images of its training split; `last_blocks` > 1 concatenates the mean
    tokens of the last blocks; `best` exports the epoch with the best online kNN on val. Returns the card."""
    checkpoint = find_checkpoint(Path(run_dir))
    if checkpoint is not None and "init_kind" in read_state(checkpoint):  # a `python -m training finetune` run
        from training.export_finetuned import export_finetuned_run

        return export_finetuned_run(run_dir, out_dir, check_images=check_images, name=name, fit_images=fit_images)
    encoder, state = load_run_encoder(run_dir, last_blocks, best)
    config = config_from_dict(state["config"])
    size = config.model.img_size
    unit = torch.zeros(config.model.in_chans), torch.ones(config.model.in_chans)
    train = _real_images(state["data_root"], config, fit_images, split=config.data.split)
    encoder.fit(eval_transform(train, size, *unit), whiten=whiten)
    provenance = {"training_data": state.get("data_root"), "training_split": config.data.split,
                  "epochs": round(state["epoch"], 3), "steps": state["step"],
                  "checkpoint": "best online kNN on val" if best else "last",
                  "training_precision": state.get("precision", "fp32"),
                  "training_device": state.get("device"),  # the CPU's or GPU's name; None before runs recorded it
                  # how it was trained: the method's settings (I-JEPA: masks, EMA, regulariser) and the rate
                  "objective": json.loads(json.dumps({**asdict(getattr(config, config.method)),
                                                      "lr_per_256": config.optim.lr, "batch_size": config.batch_size})),
                  "centre": {"images": len(train), "split": config.data.split,
                             "vector": [round(v, 7) for v in encoder.centre.tolist()]},
                  "whitening": ({"kind": "PCA, regularised (eps = 1e-2 of the top eigenvalue)", "images": len(train),
                                 "split": config.data.split} if whiten else None)}
    images = _real_images(state["data_root"], config, check_images)
    return export_encoder(encoder, config, out_dir, images, provenance, name=name)


def random_init_encoder(config: TrainConfig, seed: int = 0) -> ServingEncoder:
    """A randomly initialised encoder of the configured architecture (the evaluation's baseline)."""
    if not config.data.stats_mean:
        raise ValueError("random_init_encoder needs the archive's band statistics: set config.data.stats_mean/std")
    torch.manual_seed(seed)
    model = build_model(config)
    return ServingEncoder(model.encoder.vit, config.data.stats_mean, config.data.stats_std).eval()


def export_encoder(encoder: ServingEncoder, config: TrainConfig, out_dir: str | Path, check_images: torch.Tensor,
                   provenance: dict[str, Any] | None = None, name: str | None = None) -> dict[str, Any]:
    """Write `out_dir/encoder.onnx` and `out_dir/model_card.json`; raise if ONNX Runtime disagrees with
    PyTorch by more than 1e-4 on `check_images` [B, C, S, S] (real images, scaled units). Returns the card."""
    m = config.model
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, m.in_chans, m.img_size, m.img_size)
    classifier = isinstance(encoder, ServingClassifier)
    outputs = ["embedding", "tokens"] + (["logits"] if classifier else [])
    program = torch.onnx.export(encoder, (example,), input_names=["image"], output_names=outputs,
                                dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=65536)}},
                                dynamo=True, external_data=False, verbose=False)
    program.save(str(out_dir / ONNX_NAME), external_data=False)

    grid = m.img_size // m.patch_size
    card = {
        "name": name or Path(out_dir).name,
        "method": config.method,
        "onnx": ONNX_NAME,
        "input_size": m.img_size,
        "bands": m.in_chans,
        "band_indices": config.data.bands,
        "input": "float32 [batch, bands, input_size, input_size] in scaled units (uint8 / 255; see training.data)",
        "normalisation": {"mean": config.data.stats_mean, "std": config.data.stats_std, "in_graph": True},
        "embedding_dim": int(encoder.centre.numel()),
        "pooling": (("mean of patch tokens" if encoder.last_blocks == 1 else
                     f"mean patch tokens of the last {encoder.last_blocks} blocks (each layer-normed), concatenated")
                    + (" (target encoder)" if config.method == "ijepa" else "")
                    + (", centred and PCA-whitened on training images" if encoder.whitened else
                       ", centred on training images")),
        "last_blocks": encoder.last_blocks,
        "patch_size": m.patch_size,
        "token_grid": [grid, grid],
        "outputs": {"embedding": "[batch, D]", "tokens": "[batch, N, D], raster order",
                    **({"logits": "[batch, classes], the fine-tuned head (softmax gives probabilities)"}
                       if classifier else {})},
        "model": config.to_dict()["model"],
        **(provenance or {"training_data": None, "epochs": 0, "steps": 0}),
        "commit": _git_commit(),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out_dir / CARD_NAME).write_text(json.dumps(card, indent=1))

    images = eval_transform(check_images, m.img_size, torch.zeros(m.in_chans), torch.ones(m.in_chans))
    with torch.no_grad():
        expected = [t.numpy() for t in encoder(images)]
    exported = ExportedEncoder(out_dir)
    got = exported.session.run(outputs, {"image": exported.prepare(images)})
    diff = max(float(np.abs(a - b).max()) for a, b in zip(got, expected))
    card["parity"] = {"images": int(len(images)), "max_abs_diff": float(diff), "tolerance": PARITY_TOLERANCE}
    (out_dir / CARD_NAME).write_text(json.dumps(card, indent=1))
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE}) on "
                           f"{len(images)} real images: the export in {out_dir} is not trustworthy")
    log.info("exported %s: ONNX Runtime matches PyTorch on %d images (max |diff| %.1e)", out_dir, len(images), diff)
    return card
