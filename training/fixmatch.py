"""FixMatch (Sohn et al., NeurIPS 2020): consistency on the unlabelled rest of train, for the few-label fine-tunes.

Each step draws ``unlabelled_ratio`` × batch images from the train images the run may not read the labels of. The
model, in eval mode and without gradients, labels a weakly augmented view of each (the labelled images' crop, flip
and quarter turns); where its confidence reaches ``fixmatch_threshold`` (FixMatch: 0.95; as a share of the most
that label smoothing lets a model predict, 1 - e + e / K, which is 0.91 for 10 classes at e = 0.1, so that a
smoothed model can pass it at all), a strongly augmented view of the same crop
(torchvision's RandAugment, 2 ops at magnitude 9, then a cutout with RandomErasing, as FixMatch's RA variant) is
trained towards that hard pseudo-label, the loss weighted by ``fixmatch``. Self-training (``training.teacher``)
labels the unlabelled images once, with a separate teacher; FixMatch relabels them every step with the model being
trained and asks for the same answer under a far stronger distortion.

Labelling with the model being trained lets it confirm its own mistakes. Semi-ViT's EMA-Teacher (Cai et al.,
NeurIPS 2022), which made FixMatch-style training stable for ViTs, labels with an exponential moving average of the
weights instead (``fixmatch_ema``, timm's ``ModelEmaV3``): a smoother model that changes more slowly than the one
it teaches.

Semi-ViT also mixes the unlabelled views (``fixmatch_mix``, its probabilistic pseudo-MixUp): each strong view is
blended with a random partner's, by MixUp or CutMix, in proportion to the two confidences, towards the same blend of
their pseudo-labels; the pair is trained on where either label is confident. Its other settings are a lower
threshold (0.6 at 1 % of ImageNet) and a heavier unlabelled loss (weight 5): ``study/finetune.sh``'s ``semivit``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data.mixup import cutmix_bbox_and_lam
from timm.utils import ModelEmaV3
from torchvision.transforms import v2

from training.precision import autocast

# per image: each draws its own two ops and its own cutout (a batched call would give the whole batch the same)
STRONG = v2.Compose([v2.RandAugment(num_ops=2, magnitude=9), v2.RandomErasing(p=1.0, scale=(0.02, 0.25), value=127)])


def strong_view(images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, S, S] in scaled units -> the same, strongly augmented (draws from torch's global generator)."""
    if images.shape[1] != 3:
        raise ValueError(f"fixmatch: its strong augmentation (RandAugment) needs RGB images, these have "
                         f"{images.shape[1]} bands; set fixmatch=0 for this archive")
    as_bytes = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return torch.stack([STRONG(image) for image in as_bytes]).float() / 255


def confidence_threshold(share: float, label_smoothing: float, classes: int) -> float:
    """FixMatch's threshold as a probability: ``share`` (0.95) of the most a model trained with ``label_smoothing``
    over ``classes`` learns to predict, 1 - e + e / K (0.91 for 10 classes at e = 0.1), or no pseudo-label of a
    smoothed model would ever pass 0.95."""
    return share * (1 - label_smoothing + label_smoothing / classes)


def ema_labeller(model: torch.nn.Module, momentum: float) -> ModelEmaV3:
    """A moving average of ``model``'s weights (parameters and buffers) to label with; ``.update(model)`` after each
    optimiser step, ``.module`` is the averaged model (in eval mode, no gradients)."""
    ema = ModelEmaV3(model, decay=momentum)
    ema.module.requires_grad_(False)
    return ema


@torch.no_grad()
def pseudo_labels(model: torch.nn.Module, weak: torch.Tensor, precision: str,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's hard labels [U] for the normalised weak views [U, C, S, S], and its confidence in each [U]: only
    those whose confidence reaches the threshold are trained on."""
    model.eval()
    with autocast(precision, device):
        probabilities = model(weak).float().softmax(dim=1)
    confidence, labels = probabilities.max(dim=1)
    return labels, confidence


def confidence_mix(views: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor, classes: int,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Semi-ViT's probabilistic pseudo-MixUp. views [U, C, S, S], their pseudo-labels [U] and confidences [U] ->
    the views mixed in pairs [U, C, S, S], soft targets [U, K], and the confidence each mix is judged by [U].

    View i meets a random partner j: it keeps the share lam = p_i / (p_i + p_j) of itself, half the views by
    MixUp (a blend), half by CutMix (a box of the partner's pixels, of area ~1 - lam, lam then corrected to the
    box as clipped by the border); its target is lam one-hot(y_i) + (1 - lam) one-hot(y_j), and it counts as
    confident as the surer of the two, max(p_i, p_j). The boxes draw from numpy's global generator (timm's)."""
    partner = torch.randperm(len(views), generator=gen).to(views.device)  # [U]
    lam = confidence / (confidence + confidence[partner])  # [U]
    by_cutmix = torch.rand(len(views), generator=gen) < 0.5  # [U]
    mixed = views.clone()
    for i in range(len(views)):
        j, keep = partner[i], lam[i].item()
        if by_cutmix[i]:
            (top, bottom, left, right), keep = cutmix_bbox_and_lam(views.shape, keep, correct_lam=True)
            mixed[i, :, top:bottom, left:right] = views[j, :, top:bottom, left:right]
            lam[i] = keep
        else:
            mixed[i] = keep * views[i] + (1 - keep) * views[j]
    one_hot = F.one_hot(labels, classes).float()  # [U, K]
    targets = lam[:, None] * one_hot + (1 - lam[:, None]) * one_hot[partner]
    return mixed, targets, torch.maximum(confidence, confidence[partner])


def consistency_loss(logits: torch.Tensor, targets: torch.Tensor, confident: torch.Tensor) -> torch.Tensor:
    """FixMatch's unlabelled loss: cross-entropy of the strong views' logits [U, K] against the pseudo-labels [U]
    (or mixed soft targets [U, K]), averaged over all U (not only the confident ones), so that it grows as the
    model grows confident."""
    return (F.cross_entropy(logits.float(), targets, reduction="none") * confident).mean()
