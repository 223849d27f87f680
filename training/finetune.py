"""``python -m training finetune``: an encoder and a linear head trained end to end on (part of) the train labels.

The recipe follows the MAE and BEiT fine-tuning code (He et al. 2022; Bao et al. 2022): AdamW with layer-wise
learning-rate decay (timm's ``param_groups_layer_decay``), stochastic depth, label smoothing, warmup then cosine,
random resized crops and flips (plus quarter turns: overhead imagery has no up), and optionally MixUp / CutMix
(timm's ``Mixup``). Its values are re-derived on val
for runs of minutes (``training.config.FinetuneConfig``). ``--init`` is a shipped model (its timm weights), an
exported model, a pretraining run, or ``random[:MODEL]`` (supervised from scratch, with MODEL's architecture and
normalisation): the same loop serves the self-supervised inits and the supervised baseline. ``--set teacher=RUN``
self-trains (``training.teacher``): the other train images join the labelled ones, with RUN's predictions as targets;
``--set fixmatch=1`` learns from them by consistency instead (``training.fixmatch``; ``--set fixmatch_ema=0.99`` takes
its pseudo-labels from a moving average of the weights, ``--set fixmatch_mix=true`` mixes its strong views in pairs).

A run folder holds ``checkpoint/`` (safetensors, atomic; ``--resume`` continues exactly: every draw is seeded by
the step), ``config.json`` and ``metrics.jsonl`` (loss, lr, images/s; val accuracy ``evaluations`` times).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training import schedules
from training.augment import eval_transform, normalize, random_resized_crop
from training.checkpoint import find_checkpoint, load_checkpoint, read_state, save_checkpoint
from training.config import FinetuneConfig, ModelConfig, apply_overrides
from training.data import band_statistics, open_archive
from training.distributed import device_name, pick_device
from training.engine import append_jsonl, truncate_metrics
from training.feed import epoch_order, preload
from training.fixmatch import (confidence_mix, confidence_threshold, consistency_loss, ema_labeller, pseudo_labels,
                               strong_view)
from training.learner import NonFiniteLossError, step_generator
from training.models.backbone import create_encoder, use_explicit_attention
from training.precision import autocast, training_precision
from training.probe_head import fit_probe_head, head_inputs
from training.subsets import stratified_subset
from training.teacher import with_soft_targets

log = logging.getLogger(__name__)


def resolve_init(init: str) -> tuple[str, Path | None]:
    """``("random", model dir or None)``, ``("model", exported-model dir)`` or ``("run", run dir)`` for ``--init``."""
    from indexing.paths import resolve_model

    kind, _, like = init.partition(":")
    if kind == "random":
        return "random", resolve_model(like) if like else None
    if find_checkpoint(Path(init)) is not None:
        return "run", Path(init)
    try:
        return "model", resolve_model(init)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--init {init!r}: not a pretraining run folder (no checkpoint/) either. {err} "
                                "Or --init random[:MODEL] for supervised training from scratch.") from None


def build_encoder(config: FinetuneConfig, data_root: str) -> tuple[torch.nn.Module, FinetuneConfig, dict]:
    """The initial timm ViT (no head yet), the config with the init's architecture and normalisation filled in,
    and a description of the init for the card."""
    from training.encoder import read_card
    from training.export import load_run_encoder
    from training.weights import timm_encoder

    kind, source = resolve_init(config.init)
    described: dict[str, Any] = {"init": config.init, "init_kind": kind}
    if source is not None and kind != "run":
        card = read_card(source)
        model, norm = ModelConfig(**card["model"]), card["normalisation"]
        config = apply_overrides(config, {"model": model.__dict__, "stats_mean": norm["mean"], "stats_std": norm["std"]})
        described.update(init_model=card.get("name"), init_method=card.get("method"), init_training_data=card.get(
            "training_data"), init_exported_at=card.get("exported_at"))
    if kind == "run":
        serving, state = load_run_encoder(source)
        run_config = state["config"]
        config = apply_overrides(config, {"model": run_config["model"], "stats_mean": run_config["data"]["stats_mean"],
                                          "stats_std": run_config["data"]["stats_std"]})
        vit = create_encoder(config.model, drop_path_rate=config.drop_path)
        vit.load_state_dict(serving.vit.state_dict())
        described.update(init_method=state.get("method"), init_training_data=state.get("data_root"),
                         init_steps=state.get("step"))
    elif kind == "model":
        vit = timm_encoder(source, drop_path_rate=config.drop_path)
    else:
        torch.manual_seed(config.seed)
        vit = create_encoder(config.model, drop_path_rate=config.drop_path)
        if not config.stats_mean:
            dataset = open_archive(data_root, "train", image_size=config.model.img_size)
            mean, std = band_statistics(dataset, seed=config.seed)
            config = apply_overrides(config, {"stats_mean": list(mean), "stats_std": list(std)})
    vit, config = at_resolution(vit, config)
    vit.pos_embed.requires_grad_(False)  # fixed sin-cos positions, as in pretraining
    return vit, config, described


def at_resolution(vit: torch.nn.Module, config: FinetuneConfig) -> tuple[torch.nn.Module, FinetuneConfig]:
    """The encoder and config at ``config.resolution`` pixels: the same patch size on a larger (or smaller) grid,
    its position embeddings resampled bicubically by timm (``set_input_size``). Images are then read, cropped,
    evaluated and exported at that size."""
    size, model = config.resolution, config.model
    if not size or size == model.img_size:
        return vit, config
    if size % model.patch_size:
        nearest = model.patch_size * max(1, round(size / model.patch_size))
        raise ValueError(f"--set resolution={size}: the init's patches are {model.patch_size} pixels, so the size "
                         f"must be a multiple of {model.patch_size} (e.g. {nearest})")
    vit.set_input_size(img_size=(size, size))
    return vit, apply_overrides(config, {"model": {"img_size": size}})


@dataclass
class TrainSplit:
    """The train split as a run sees it, decoded (scaled units)."""

    images: torch.Tensor  # [N, C, S, S]: the labelled subset (with a teacher, then every other train image)
    targets: torch.Tensor  # the labels [N]; with a teacher [N, K]: one-hot labels, then its probabilities
    classes: list[str]
    skipped: int  # unreadable files
    labelled: int
    unlabelled: torch.Tensor | None = None  # fixmatch: every other train image [U, C, S, S]
    unlabelled_truth: torch.Tensor | None = None  # their labels [U]: never trained on, only to log pseudo-label accuracy


def train_split(data_root: str, config: FinetuneConfig) -> TrainSplit:
    """The labelled subset of the train split, and with a teacher or fixmatch the rest of it, unlabelled."""
    dataset = open_archive(data_root, "train", image_size=config.model.img_size)
    if not dataset.classes:
        raise ValueError(f"{data_root} has no class labels: fine-tuning needs a labelled train split "
                         "(class folders or splits.csv with a label column)")
    labels = np.array([item.label for item in dataset.items])
    picks = stratified_subset(labels, config.label_fraction, config.label_seed)
    images, y, skipped = preload(torch.utils.data.Subset(dataset, picks.tolist()), desc="labelled train")
    classes = list(dataset.classes)
    if not (config.teacher or config.fixmatch):
        return TrainSplit(images, y, classes, skipped, len(y))
    others = np.setdiff1d(np.arange(len(dataset)), picks)
    if len(others) == 0:
        uses = "--set teacher=..." if config.teacher else "--set fixmatch=..."
        raise ValueError(f"{uses}: every train image of {data_root} is labelled at label fraction "
                         f"{config.label_fraction}; there is nothing unlabelled to learn from")
    unlabelled, truth, skipped_unlabelled = preload(torch.utils.data.Subset(dataset, others.tolist()),
                                                    desc="unlabelled train")
    skipped += skipped_unlabelled
    if config.fixmatch:
        return TrainSplit(images, y, classes, skipped, len(y), unlabelled, truth)
    all_images, targets = with_soft_targets(config, images, y, unlabelled, classes)
    return TrainSplit(all_images, targets, classes, skipped, len(y))


def val_split(data_root: str, config: FinetuneConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A fixed random subset of val (``val_images``; all of it at 0), decoded; None if the archive has no val."""
    try:
        dataset = open_archive(data_root, "val", image_size=config.model.img_size)
    except ValueError:
        return None
    if len(dataset) == 0:
        return None
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1))
    order = order[: config.val_images] if config.val_images else order
    images, labels, _ = preload(torch.utils.data.Subset(dataset, order.tolist()), desc="val")
    return images, labels


def quarter_turns(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image [C, S, S] of images [B, C, S, S] turned by a random multiple of 90 degrees."""
    turns = torch.randint(0, 4, (images.shape[0],), generator=gen)
    out = images.clone()
    for k in (1, 2, 3):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(images[chosen], k, dims=(2, 3))
    return out


class Finetuner:
    """One fine-tuning run in ``out_dir``; ``fit()`` trains to the end and returns a summary."""

    def __init__(self, config: FinetuneConfig, data_root: str, out_dir: str | Path, resume: bool = False) -> None:
        from timm.optim import create_optimizer_v2

        self.out_dir, self.data_root = Path(out_dir), str(data_root)
        checkpoint = find_checkpoint(self.out_dir) if resume else None
        if resume and checkpoint is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.out_dir)
        if checkpoint is not None:  # a resumed run is the saved run
            config = apply_overrides(FinetuneConfig(), read_state(checkpoint)["config"])
        self.device = pick_device(config.device)
        self.precision = training_precision(config.bf16, self.device)
        vit, self.config, self.init = build_encoder(config, data_root)
        c = self.config
        if (c.mixup or c.cutmix) and (c.teacher or c.fixmatch):
            raise ValueError("--set mixup / cutmix with --set teacher=... or fixmatch=...: mixing is not supported "
                             "beside the unlabelled images' targets; set mixup=0 cutmix=0, or drop the other")
        if c.teacher and c.fixmatch:
            raise ValueError("--set teacher=... and fixmatch=...: two ways of using the unlabelled images; pick one")
        if c.fixmatch_mix and not c.fixmatch:
            raise ValueError("--set fixmatch_mix=true mixes FixMatch's strong views: only with --set fixmatch=...")
        if c.fixmatch_ema and not (c.fixmatch and 0 < c.fixmatch_ema < 1):
            raise ValueError(f"--set fixmatch_ema={c.fixmatch_ema}: the momentum of FixMatch's labelling average, "
                             "between 0 and 1 (e.g. 0.99), and only with --set fixmatch=...")
        split = train_split(data_root, c)
        self.images, self.targets, self.classes, self.skipped, self.labelled = (
            split.images, split.targets, split.classes, split.skipped, split.labelled)
        self.unlabelled, self.unlabelled_truth = split.unlabelled, split.unlabelled_truth
        self.val = val_split(data_root, c)
        torch.manual_seed(c.seed)  # the head's initial weights are a function of the config alone
        vit.reset_classifier(len(self.classes))
        torch.nn.init.trunc_normal_(vit.head.weight, std=2e-5)  # as MAE's fine-tuning: start near zero
        torch.nn.init.zeros_(vit.head.bias)
        self.model = vit.to(self.device)
        if self.device.type == "cpu":
            use_explicit_attention(self.model)
        self.batch_size = min(c.batch_size, len(self.targets))
        self.mixer = self._mixer()
        if self.mixer is not None:
            self.batch_size -= self.batch_size % 2  # a batch is mixed with itself reversed: pairs
        self.threshold = confidence_threshold(c.fixmatch_threshold, c.label_smoothing, len(self.classes))
        self.steps_per_epoch = len(self.targets) // self.batch_size
        self.total = max(c.epochs * self.steps_per_epoch, c.min_steps)
        self.peak_lr = c.lr * self.batch_size / 256
        self.optimizer = create_optimizer_v2(self.model, "adamw", lr=self.peak_lr, weight_decay=c.weight_decay,
                                             layer_decay=c.layer_decay, betas=(0.9, 0.999), foreach=True)
        self.mean = torch.tensor(c.stats_mean, device=self.device)
        self.std = torch.tensor(c.stats_std, device=self.device)
        self.step, self.train_seconds, self.best_val = 0, 0.0, None
        if c.probe_head and checkpoint is None:  # a resumed run's head is in its checkpoint
            self._fit_probe_head()
        self.ema = ema_labeller(self.model, c.fixmatch_ema) if c.fixmatch_ema else None
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, self.model, self.optimizer, ema=self.ema)
            self.step, self.train_seconds = state["step"], state["train_seconds"]
            self.best_val = state.get("best_val")
            log.info("resumed from %s at step %d", checkpoint, self.step)
        taught = f" + {len(self.targets) - self.labelled} taught by {c.teacher}" if c.teacher else ""
        if self.unlabelled is not None:
            taught = (f" + {len(self.unlabelled)} unlabelled (FixMatch: {c.unlabelled_ratio} per labelled image a step, "
                      f"threshold {self.threshold:.3f}, weight {c.fixmatch}{', mixed in pairs' if c.fixmatch_mix else ''})")
        log.info("fine-tuning %s on %d labelled images (%s of train, %d classes)%s, %d steps of %d, %s on %s",
                 c.init, self.labelled, f"{100 * c.label_fraction:g}%", len(self.classes), taught, self.total,
                 self.batch_size, self.precision, self.device)

    def _fit_probe_head(self) -> None:
        """LP-FT: the head set to the frozen init's linear probe on the labelled images (training/probe_head.py)."""
        labels = self.targets[: self.labelled]
        labels = labels.argmax(1) if labels.ndim == 2 else labels  # a teacher's split holds one-hot labels first
        features = head_inputs(self.model, self.images[: self.labelled], self.config.model.img_size, self.mean,
                               self.std, self.precision, self.device)  # [labelled, D]
        fit_probe_head(self.model, features, labels)
        log.info("head: the frozen init's linear probe on %d labelled images (LP-FT)", self.labelled)

    def _mixer(self):
        """timm's MixUp / CutMix (soft targets, label smoothing folded in), or None when both are off."""
        from timm.data import Mixup

        c = self.config
        if not (c.mixup or c.cutmix):
            return None
        return Mixup(mixup_alpha=c.mixup, cutmix_alpha=c.cutmix, label_smoothing=c.label_smoothing,
                     num_classes=len(self.classes))

    def eval_steps(self) -> set[int]:
        """The steps after which val accuracy is measured (and a checkpoint written)."""
        n = max(1, self.config.evaluations)
        return {round(self.total * (i + 1) / n) for i in range(n)}

    def lr_at(self, step: int) -> float:
        c = self.config
        warmup = max(int(round(c.warmup_epochs * self.steps_per_epoch)), self.total // 20)
        return schedules.learning_rate(step, self.total, min(warmup, self.total // 2), self.peak_lr, c.min_lr)

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """One AdamW step on a raw batch [b, C, S, S] (scaled units) with labels [b] or soft targets [b, K]."""
        c = self.config
        gen = step_generator(c.seed, self.step, 0)
        # stochastic depth and the strong views (FixMatch) draw from the global generator
        torch.manual_seed(c.seed * 1_000_003 + self.step)
        x = normalize(self.weak_view(images, gen), self.mean, self.std)
        targets, smoothing = targets.to(self.device), c.label_smoothing
        if self.mixer is not None:
            np.random.seed((c.seed * 1_000_003 + self.step) % 2**32)  # timm draws from numpy's global generator
            x, targets = self.mixer(x, targets)  # targets [b] -> [b, K], already smoothed
            smoothing = 0.0
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        record: dict[str, float] = {"lr": lr}
        labelled = len(x)
        if self.unlabelled is not None:  # FixMatch: the strong views join the batch, towards confident pseudo-labels
            picked = torch.randperm(len(self.unlabelled), generator=gen)[: c.unlabelled_ratio * labelled]
            weak = self.weak_view(self.unlabelled[picked], gen)
            labeller = self.model if self.ema is None else self.ema.module
            pseudo, confidence = pseudo_labels(labeller, normalize(weak, self.mean, self.std), self.precision,
                                               self.device)
            confident = confidence >= self.threshold
            right = (pseudo.cpu() == self.unlabelled_truth[picked])[confident.cpu()]  # logged, never trained on
            record.update(confident=round(confident.float().mean().item(), 4),
                          pseudo_accuracy=round(right.float().mean().item(), 4) if len(right) else None)
            strong = normalize(strong_view(weak.cpu()).to(self.device), self.mean, self.std)
            if c.fixmatch_mix:  # Semi-ViT's pseudo-MixUp: the views mixed in pairs, towards mixed pseudo-labels
                np.random.seed((c.seed * 1_000_003 + self.step) % 2**32)  # timm's CutMix boxes draw from numpy
                strong, pseudo, confidence = confidence_mix(strong, pseudo, confidence, len(self.classes), gen)
                confident = confidence >= self.threshold  # a pair is trained on where either label is confident
            x = torch.cat([x, strong])
        self.model.train()
        with autocast(self.precision, self.device):
            logits = self.model(x)
        loss = F.cross_entropy(logits[:labelled].float(), targets, label_smoothing=smoothing)
        if self.unlabelled is not None:
            unlabelled_loss = consistency_loss(logits[labelled:], pseudo, confident)
            record.update(labelled_loss=loss.item(), unlabelled_loss=unlabelled_loss.item())
            loss = loss + c.fixmatch * unlabelled_loss
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at step {self.step} (lr {lr:.2e}): fine-tuning "
                                     "stopped. Lower --set lr=..., or resume from the last checkpoint")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return {"loss": loss.item(), **record}

    def weak_view(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """images [b, C, H, W] -> [b, C, S, S] on the device, scaled units: a random resized crop, a left-right flip
        and a quarter turn (as configured): the labelled images' augmentation, and FixMatch's weak view."""
        c = self.config
        x = random_resized_crop(images.to(self.device), c.model.img_size, c.crop_scale, gen, hflip=c.hflip)
        return quarter_turns(x, gen) if c.rot90 else x

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256,
                 model: torch.nn.Module | None = None) -> float:
        """Top-1 accuracy (fraction) of the current model (or ``model``) on images [N, C, H, W] (scaled units)."""
        model = self.model if model is None else model
        model.eval()
        correct = 0
        for start in range(0, len(images), batch_size):
            x = eval_transform(images[start:start + batch_size].to(self.device), self.config.model.img_size,
                               self.mean, self.std)
            with autocast(self.precision, self.device):
                correct += (model(x).argmax(1).cpu() == labels[start:start + batch_size]).sum().item()
        return correct / len(images)

    def save(self) -> None:
        state = {"step": self.step, "total_steps": self.total, "train_seconds": self.train_seconds,
                 "best_val": self.best_val, "config": self.config.to_dict(), "classes": self.classes,
                 "labelled": self.labelled, "train_images": len(self.targets), "skipped": self.skipped,
                 **({"unlabelled_images": len(self.unlabelled)} if self.unlabelled is not None else {}),
                 "data_root": self.data_root, "precision": self.precision, "device": device_name(self.device), **self.init}
        save_checkpoint(self.out_dir, self.model, self.optimizer, state, ema=self.ema)

    def fit(self) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1))
        metrics = self.out_dir / "metrics.jsonl"
        truncate_metrics(metrics, self.step)
        stop: list[int] = []
        previous = {}
        try:
            previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum))
                        for s in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread
            pass
        evals = self.eval_steps()
        bar = tqdm(total=self.total, initial=self.step, unit="step", desc="fine-tuning", disable=None)
        try:
            while self.step < self.total:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                order = epoch_order(len(self.targets), self.config.seed, epoch)[: self.steps_per_epoch * self.batch_size]
                for first in range(start * self.batch_size, len(order), self.batch_size):
                    batch = order[first:first + self.batch_size]
                    began = time.perf_counter()
                    record = self.train_step(self.images[batch], self.targets[batch])
                    seconds = time.perf_counter() - began
                    self.train_seconds += seconds
                    self.step += 1
                    bar.update(1)
                    if self.step % self.config.log_every == 0 or self.step in evals:
                        record.update(step=self.step, epoch=round(self.step / self.steps_per_epoch, 3),
                                      images_per_second=round(self.batch_size / seconds, 1),
                                      train_seconds=round(self.train_seconds, 1), threads=torch.get_num_threads(),
                                      precision=self.precision, device=device_name(self.device))
                        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}")
                        append_jsonl(metrics, record)
                    if self.step in evals:
                        self._evaluate(metrics)
                    if stop:
                        log.warning("stopped at step %d by signal %d: checkpoint saved, continue with --resume",
                                    self.step, stop[0])
                        self.save()
                        raise KeyboardInterrupt
                    if self.step >= self.total:
                        break
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return {"step": self.step, "total_steps": self.total, "val_accuracy": self.best_val,
                "train_seconds": self.train_seconds}

    def _evaluate(self, metrics: Path) -> None:
        record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3),
                  "train_seconds": round(self.train_seconds, 1), "threads": torch.get_num_threads()}
        if self.val is not None:
            record["val_accuracy"] = round(self.accuracy(*self.val), 5)
            if self.ema is not None:  # the labelling average, logged beside the model it teaches (never chosen here)
                record["ema_val_accuracy"] = round(self.accuracy(*self.val, model=self.ema.module), 5)
            self.best_val = record["val_accuracy"]  # the last measurement: runs are judged at their end
            log.info("step %d/%d: val accuracy %.4f", self.step, self.total, record["val_accuracy"])
        append_jsonl(metrics, record)
        self.save()


def finetune(config: FinetuneConfig, data_root: str, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Fine-tune ``config.init`` on ``data_root``'s labelled train split into ``out_dir``; returns a summary."""
    trainer = Finetuner(config, data_root, out_dir, resume=resume)
    summary = trainer.fit()
    log.info("done: %d steps in %.0f s of training, val accuracy %s", summary["step"], summary["train_seconds"],
             summary["val_accuracy"])
    return summary
