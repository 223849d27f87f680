"""Export of a fine-tuning run (``python -m training export RUN`` on a ``finetune`` run folder): an ONNX classifier.

The graph is :class:`training.export.ServingClassifier` (outputs ``embedding``, ``tokens`` and ``logits``), so the
rest of the project uses it both as an encoder (retrieval, kNN) and as a classifier; the card says ``task:
classification`` with the classes, the label fraction and the model it was fine-tuned from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.augment import eval_transform
from training.checkpoint import find_checkpoint, load_checkpoint, read_state
from training.config import FinetuneConfig, apply_overrides, load_config
from training.export import ServingClassifier, _real_images, export_encoder
from training.models.backbone import create_encoder


def export_finetuned_run(run_dir: str | Path, out_dir: str | Path, check_images: int = 32, name: str | None = None,
                         fit_images: int = 4000) -> dict[str, Any]:
    """Write ``out_dir/encoder.onnx`` (embedding, tokens, logits) and its card; returns the card."""
    checkpoint = find_checkpoint(Path(run_dir))
    state = read_state(checkpoint)
    config = apply_overrides(FinetuneConfig(), state["config"])
    vit = create_encoder(config.model)
    vit.reset_classifier(len(state["classes"]))
    load_checkpoint(checkpoint, vit)
    classifier = ServingClassifier(vit, config.stats_mean, config.stats_std).eval()
    # The export's config: architecture and normalisation (what export_encoder and the card read).
    export_config = load_config(None, method="mae", model=config.model.__dict__,
                                data={"stats_mean": config.stats_mean, "stats_std": config.stats_std})
    size, unit = config.model.img_size, (torch.zeros(config.model.in_chans), torch.ones(config.model.in_chans))
    train = _real_images(state["data_root"], export_config, fit_images, split="train")
    classifier.fit(eval_transform(train, size, *unit))
    provenance = {
        "method": "finetuned", "task": "classification", "classes": state["classes"],
        "pooling": "mean of patch tokens of the fine-tuned encoder, centred on training images; logits = the "
                   "fine-tuned linear head on the uncentred mean",
        "training_data": state["data_root"], "training_split": "train",
        "label_fraction": config.label_fraction, "label_seed": config.label_seed, "labelled_images": state["labelled"],
        "init": state["init"], "init_kind": state["init_kind"],
        **{k: state[k] for k in ("init_model", "init_method", "init_training_data") if k in state},
        "train_images": state.get("train_images", state["labelled"]), "teacher": config.teacher or None,
        **({"unlabelled_images": state["unlabelled_images"]} if "unlabelled_images" in state else {}),  # FixMatch's
        "steps": state["step"],
        "epochs": round(state["step"] * config.batch_size / max(1, state.get("train_images", state["labelled"])), 2),
        "checkpoint": "last", "val_accuracy": state.get("best_val"),
        "training_precision": state.get("precision"), "training_device": state.get("device"),
        "train_seconds": round(state.get("train_seconds", 0.0), 1),
        "finetune": {k: v for k, v in config.to_dict().items() if k not in ("model", "stats_mean", "stats_std")},
        "centre": {"images": len(train), "split": "train",
                   "vector": [round(v, 7) for v in classifier.centre.tolist()]},
        "whitening": None,
    }
    images = _real_images(state["data_root"], export_config, check_images)
    return export_encoder(classifier, export_config, out_dir, images, provenance, name=name)
