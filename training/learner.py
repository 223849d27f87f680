"""One optimisation step of I-JEPA or MAE: the model, its optimiser, masks, schedules and precision.

Shared by the training loop (`training.engine`) and the benchmark (`training.bench`), so both time exactly the
same step. Every random draw of a step (augmentation, masks) comes from a generator seeded by (seed, step,
rank) and every schedule is a pure function of the step, so a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from training import schedules
from training.augment import normalize, random_resized_crop
from training.config import TrainConfig, peak_learning_rate
from training.distributed import Distributed
from training.masks import MultiBlockMaskGenerator
from training.models import build_model, use_explicit_attention
from training.precision import autocast, training_precision


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: training stops rather than writing broken weights."""


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator for every random draw of one step on one rank."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + rank)


def param_groups(modules: list[torch.nn.Module]) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases, norms and tokens get none (as both reference codebases)."""
    decay, no_decay = [], []
    for module in modules:
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 or name.endswith("token") else decay).append(param)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


class Learner:
    """Model + optimiser + masks: everything one optimisation step needs, without the data or the files.

    `precision` is "bf16" (autocast of the forward pass; fp32 master weights, gradients and AdamW moments) when
    the config asks for it and the device computes bf16 natively (`training.precision`), else "fp32"."""

    def __init__(self, config: TrainConfig, device: torch.device, mean: torch.Tensor, std: torch.Tensor,
                 distributed: Distributed | None = None) -> None:
        self.config = config
        self.device = device
        self.mean, self.std = mean.to(device), std.to(device)  # [C] each
        self.dist = distributed or Distributed()
        self.precision = training_precision(config.bf16, device)
        torch.manual_seed(config.seed)  # the initial weights are a function of the config alone
        self.model = build_model(config).to(device)
        if device.type == "cpu":
            use_explicit_attention(self.model)
        self.optimizer = torch.optim.AdamW(param_groups(self.model.trainable_modules()), lr=peak_learning_rate(config),
                                           betas=config.optim.betas, foreach=True)
        self.masks = None
        if config.method == "ijepa":
            c = config.ijepa
            self.masks = MultiBlockMaskGenerator(self.model.context_encoder.grid, c.num_targets, c.target_scale,
                                                 c.target_aspect, c.context_scale, c.min_keep)
        self.ddp_model = self.model
        if self.dist.in_group:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def set_schedules(self, step: int, total: int, steps_per_epoch: int) -> dict[str, float]:
        o = self.config.optim
        warmup = int(round(o.warmup_epochs * steps_per_epoch))
        lr = schedules.learning_rate(step, total, min(warmup, total // 2), peak_learning_rate(self.config), o.min_lr)
        wd = schedules.weight_decay(step, total, *o.weight_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd if group["apply_wd"] else 0.0
        return {"lr": lr, "wd": wd}

    def loss(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The method's loss (fp32 scalar) on a normalised batch [b, C, S, S] already on the device."""
        with autocast(self.precision, self.device):
            if self.masks is not None:
                masks = self.masks(images.shape[0], gen).to(self.device)
                loss = self.ddp_model(images, masks, gen)
            else:
                loss = self.ddp_model(images, gen)[0]
        return loss.float()

    def augment(self, raw: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random resized crops of a raw batch [b, C, H, W], normalised, on the device: [b, C, S, S]. The batch
        moves first (at its stored size), so a GPU resamples it."""
        c = self.config
        raw = raw.to(self.device, non_blocking=True)
        images = random_resized_crop(raw, c.model.img_size, c.data.crop_scale, gen, hflip=c.data.hflip)
        return normalize(images, self.mean, self.std)

    def train_step(self, raw: torch.Tensor, step: int, total: int, steps_per_epoch: int) -> dict[str, float]:
        """One optimiser step (augment, loss, backward, AdamW, EMA) on a raw batch [b, C, H, W]."""
        c = self.config
        gen = step_generator(c.seed, step, self.dist.rank)
        images = self.augment(raw, gen)
        hyper = self.set_schedules(step, total, steps_per_epoch)
        loss = self.loss(images, gen)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {step} (lr {hyper['lr']:.2e}): training stopped. Lower "
                f"optim.lr, set optim.grad_clip, or check the data's statistics; resume from the last checkpoint")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip)
        self.optimizer.step()
        if c.method == "ijepa":
            self.model.update_target(schedules.ema_momentum(step, total, *c.ijepa.ema))
        return {"loss": loss.item(), **hyper}
