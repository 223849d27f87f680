"""LP-FT (Kumar et al., ICLR 2022): fine-tuning starts from a linear probe of the frozen init, not a head near zero.

A head near zero sends random gradients into a pretrained encoder for the first steps, which can distort the
features the few labels cannot rebuild. Here the head is first fitted as the project's linear probe
(``indexing.probe.fit_linear_probe``: scikit-learn logistic regression, C = 1 fixed in advance, on standardised
features) on the frozen encoder's head input for the labelled images, unaugmented; the standardisation is folded
into the weights, so the model's first logits are the probe's.
"""

from __future__ import annotations

import numpy as np
import torch

from indexing.probe import fit_linear_probe
from training.augment import eval_transform
from training.precision import autocast


@torch.no_grad()
def head_inputs(vit: torch.nn.Module, images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor,
                precision: str, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """What ``vit.head`` sees for images [N, C, H, W] (scaled units), in eval mode: [N, D] float32 on the CPU."""
    vit.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = eval_transform(images[start:start + batch_size].to(device), size, mean, std)
        with autocast(precision, device):
            out.append(vit.forward_head(vit.forward_features(x), pre_logits=True).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def fit_probe_head(vit: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Set ``vit.head`` to the C = 1 linear probe of features [N, D] with labels [N]: every class must have an
    example (a stratified subset has at least one of each)."""
    missing = sorted(set(range(vit.head.out_features)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"--set probe_head=true: classes {missing} have no labelled image to fit the probe on; "
                         "raise --label-fraction or leave probe_head off")
    probe = fit_linear_probe(features.numpy(), labels.numpy(), np.empty((0, features.shape[1])), np.empty(0),
                             grid=(1.0,))
    weight = probe["weight"] / probe["scale"]  # ((f - mean) / scale) @ W.T + b = f @ (W / scale).T + b'
    bias = probe["bias"] - weight @ probe["mean"]
    vit.head.weight.copy_(torch.from_numpy(weight))
    vit.head.bias.copy_(torch.from_numpy(bias))
