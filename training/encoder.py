"""Loading an exported encoder for serving: the model card says how, ONNX Runtime runs it.

An exported model is a folder with `encoder.onnx` and `model_card.json`. The ONNX graph takes images in
scaled units (uint8 / 255, see training.data) already resized to the card's `input_size`, normalises them
itself, and returns the mean-pooled embedding [B, D] and the patch tokens [B, N, D].
Everything else in the project (indexer, evaluation, app) loads models through `ExportedEncoder`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.augment import dihedral_views

CARD_NAME = "model_card.json"
ONNX_NAME = "encoder.onnx"


def read_card(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CARD_NAME} in {model_dir}: export a run with `python -m training export RUN --out DIR`")
    return json.loads(path.read_text())


def default_threads() -> int:
    """ONNX Runtime's intra-op threads when none are given: ``OMP_NUM_THREADS`` where set (the one knob that PyTorch,
    FAISS and BLAS already follow; ONNX Runtime ignores it), else one per core, at most 8."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return min(os.cpu_count() or 1, 8)


class ExportedEncoder:
    """An exported encoder run by ONNX Runtime. `embed(images)` -> [B, D] float32 numpy.
    ``threads``: intra-op threads (None: :func:`default_threads`); ``gpu``: run on CUDA where this ONNX Runtime
    build has it (onnxruntime-gpu), else on the CPU."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, gpu: bool = False) -> None:
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.card = read_card(model_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.model_dir / self.card["onnx"]), options, providers=providers)
        self.input_size = int(self.card["input_size"])
        self.bands = int(self.card["bands"])
        self.dim = int(self.card["embedding_dim"])
        self.name = self.card.get("name", self.model_dir.name)

    def prepare(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """images [B, C, H, W] in scaled units -> float32 [B, C, S, S] at the card's input size."""
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.shape[1] != self.bands:
            raise ValueError(f"model {self.name!r} takes {self.bands} bands, the image has {x.shape[1]}")
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return x.contiguous().numpy()

    def run(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (embeddings [B, D], patch tokens [B, N, D]), float32."""
        embedding, tokens = self.session.run(["embedding", "tokens"], {"image": self.prepare(images)})
        return embedding, tokens

    def embed(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Mean-pooled embeddings [B, D] (not normalised)."""
        return self.session.run(["embedding"], {"image": self.prepare(images)})[0]

    @property
    def classes(self) -> list[str] | None:
        """The class names of a fine-tuned classifier (card ``task: classification``), else None."""
        return list(self.card["classes"]) if self.card.get("task") == "classification" else None

    def logits(self, images: torch.Tensor | np.ndarray, d4: bool = False) -> np.ndarray:
        """A fine-tuned classifier's logits [B, classes] (softmax gives probabilities). ``d4``: averaged over the
        image's 8 orientations: the log of the mean of their probabilities, at 8 times the cost."""
        return self.embed_and_logits(images, d4)[1]

    def orientation_probabilities(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """A fine-tuned classifier's probabilities [8, B, classes] for each of the image's 8 orientations (quarter
        turns and mirror, ``augment.dihedral_views``; the first is the image as it is)."""
        _, logits = self.oriented(images)
        return torch.softmax(torch.from_numpy(logits), -1).numpy()

    def embed_and_logits(self, images: torch.Tensor | np.ndarray, d4: bool = False
                         ) -> tuple[np.ndarray, np.ndarray]:
        """A fine-tuned classifier's (embeddings [B, D], logits [B, classes]) from one run of the graph; ``d4``: the
        logits averaged over the image's 8 orientations (as :meth:`logits`), the embedding still the image's as it
        is (what an index holds), from the same eight runs."""
        if self.classes is None:
            raise ValueError(f"model {self.name!r} is an encoder, not a fine-tuned classifier: it has no logits "
                             "(fine-tune it with `python -m training finetune --init ...`)")
        if not d4:
            embedding, logits = self.session.run(["embedding", "logits"], {"image": self.prepare(images)})
            return embedding, logits
        embeddings, logits = self.oriented(images)
        probabilities = torch.softmax(torch.from_numpy(logits), -1).numpy()
        return embeddings[0], np.log(probabilities.mean(0))

    def oriented(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The image's 8 orientations (``augment.dihedral_views``; view 0 is the image as it is) through the graph
        one after the other: (embeddings [8, B, D], a fine-tuned classifier's logits [8, B, classes] or None)."""
        x = torch.from_numpy(self.prepare(images))  # [B, C, S, S]: resized first, so that every view is square
        if self.classes is None:
            return np.stack([self.embed(view) for view in dihedral_views(x)]), None
        outputs = [self.embed_and_logits(view) for view in dihedral_views(x)]
        return np.stack([embedding for embedding, _ in outputs]), np.stack([logits for _, logits in outputs])
