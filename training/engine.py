"""The pretraining loop shared by I-JEPA and MAE: data, optimiser, schedules, checkpoints, resume, DDP.

Every random draw of a step (augmentation, masks) comes from a generator seeded by (seed, step, rank), and
every schedule is a pure function of the step, so a run resumed from a checkpoint continues exactly where the
killed run stopped. Launch with `python -m training pretrain ...`, or `torchrun --nproc-per-node N -m training
pretrain ...` for data-parallel training (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from training import schedules
from training.augment import normalize, random_resized_crop
from training.checkpoint import find_checkpoint, load_checkpoint, read_state, save_checkpoint
from training.config import TrainConfig, config_from_dict
from training.data import band_statistics, open_archive
from training.feed import BatchFeed
from training.masks import MultiBlockMaskGenerator
from training.models import build_model
from training.monitor import KnnMonitor

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: training stops rather than writing broken weights."""


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


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


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from, so no step is recorded twice."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


class Learner:
    """Model + optimiser + masks: everything one optimisation step needs, without the data or the files.

    Shared by the training loop and the benchmark, so both time exactly the same step."""

    def __init__(self, config: TrainConfig, device: torch.device, mean: torch.Tensor, std: torch.Tensor,
                 distributed: Distributed | None = None) -> None:
        self.config = config
        self.device = device
        self.mean, self.std = mean, std
        self.dist = distributed or Distributed()
        self.model = build_model(config).to(device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model.trainable_modules()), lr=config.optim.lr,
                                           betas=config.optim.betas)
        self.masks = None
        if config.method == "ijepa":
            c = config.ijepa
            self.masks = MultiBlockMaskGenerator(self.model.context_encoder.grid, c.num_targets, c.target_scale,
                                                 c.target_aspect, c.context_scale, c.min_keep)
        self.ddp_model = self.model
        if self.dist.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def set_schedules(self, step: int, total: int, steps_per_epoch: int) -> dict[str, float]:
        o = self.config.optim
        warmup = int(round(o.warmup_epochs * steps_per_epoch))
        lr = schedules.learning_rate(step, total, min(warmup, total // 2), o.lr, o.min_lr)
        wd = schedules.weight_decay(step, total, *o.weight_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd if group["apply_wd"] else 0.0
        return {"lr": lr, "wd": wd}

    def loss(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The method's loss on a normalised batch [b, C, S, S] already on the device."""
        amp = (torch.autocast("cuda", dtype=torch.bfloat16)
               if self.device.type == "cuda" and self.config.bf16 else nullcontext())
        with amp:
            if self.masks is not None:
                masks = self.masks(images.shape[0], gen)
                masks.context, masks.targets = masks.context.to(self.device), masks.targets.to(self.device)
                return self.ddp_model(images, masks)
            return self.ddp_model(images, gen)[0]

    def train_step(self, raw: torch.Tensor, step: int, total: int, steps_per_epoch: int) -> dict[str, float]:
        """One optimiser step (augment, loss, backward, AdamW, EMA) on a raw batch [b, C, H, W]."""
        c = self.config
        gen = step_generator(c.seed, step, self.dist.rank)
        images = random_resized_crop(raw, c.model.img_size, c.data.crop_scale, gen, hflip=c.data.hflip)
        images = normalize(images, self.mean, self.std).to(self.device, non_blocking=True)
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


class Trainer:
    """One pretraining run in `out_dir`. `fit()` trains to the end (or `max_steps`) and returns a summary."""

    def __init__(self, config: TrainConfig, data_root: str, out_dir: str | Path, resume: bool = False,
                 epochs: int | None = None, show_progress: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.data_root = str(data_root)
        checkpoint = find_checkpoint(self.out_dir) if resume else None
        if resume and checkpoint is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.out_dir)
        if checkpoint is not None:
            # A resumed run is the saved run: its config, not the command line's (only its length may change).
            saved = read_state(checkpoint)
            config = config_from_dict(saved["config"])
            self.max_steps = saved.get("max_steps")
        if epochs is not None:
            config.epochs = epochs
        self.config = config
        self.device = pick_device(config.device)
        self.dist = setup_distributed(self.device)
        self.show_progress = show_progress and self.dist.main
        torch.manual_seed(config.seed)

        d = config.data
        self.dataset = open_archive(data_root, split=d.split, image_size=d.image_size, bands=d.bands,
                                    fmow_crop=d.fmow_crop, chip_size=d.chip_size)
        if self.dataset.num_bands != config.model.in_chans:
            raise ValueError(f"{data_root} has {self.dataset.num_bands} bands but model.in_chans is "
                             f"{config.model.in_chans}: set model.in_chans in the config, or data.bands")
        if not d.stats_mean:
            mean, std = band_statistics(self.dataset, seed=config.seed)
            self.config.data.stats_mean, self.config.data.stats_std = list(mean), list(std)
        self.mean = torch.tensor(self.config.data.stats_mean)
        self.std = torch.tensor(self.config.data.stats_std)
        self.feed = BatchFeed(self.dataset, config.batch_size // self.dist.world, config.seed, d.preload,
                              d.num_workers, show_progress=self.show_progress)
        self.steps_per_epoch = self.feed.steps_per_epoch(self.dist.world)

        self.learner = Learner(config, self.device, self.mean, self.std, self.dist)
        self.model, self.optimizer = self.learner.model, self.learner.optimizer
        self.step = 0
        self.skipped = self.feed.skipped_on_load
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, self.model, self.optimizer)
            self.step, self.skipped = state["step"], max(self.skipped, state.get("skipped", 0))
            log.info("resumed from %s at step %d", checkpoint, self.step)
        self.monitor = None
        if config.monitor.every > 0 and self.dist.main:
            self.monitor = KnnMonitor.from_archive(data_root, config, self.mean, self.std, self.show_progress)

    def total_steps(self, max_steps: int | None) -> int:
        total = self.config.epochs * self.steps_per_epoch
        return min(total, max_steps) if max_steps else total

    def save(self, max_steps: int | None) -> None:
        if self.dist.main:
            state = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "skipped": self.skipped,
                     "config": self.config.to_dict(), "max_steps": max_steps, "method": self.config.method,
                     "data_root": self.data_root}
            save_checkpoint(self.out_dir, self.model, self.optimizer, state)
        if self.dist.world > 1:
            dist.barrier()

    def fit(self, max_steps: int | None = None) -> dict[str, Any]:
        max_steps = max_steps or getattr(self, "max_steps", None)
        total = self.total_steps(max_steps)
        metrics_path = self.out_dir / "metrics.jsonl"
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1))
            _truncate_metrics(metrics_path, self.step)
        previous = self._catch_signals()
        start_step, started = self.step, time.perf_counter()
        try:
            self._run(total, max_steps, metrics_path)
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving a checkpoint, resume with --resume", self.step)
            self.save(max_steps)
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        elapsed = time.perf_counter() - started
        return {"step": self.step, "total_steps": total, "epochs": self.step / self.steps_per_epoch,
                "seconds": elapsed, "skipped": self.skipped,
                "images_per_second": (self.step - start_step) * self.config.batch_size / max(elapsed, 1e-9)}

    def _catch_signals(self) -> dict:
        """SIGTERM / SIGINT only raise a flag: the loop stops between two steps, so the checkpoint written on
        interrupt never holds a half-applied optimiser step. A second SIGINT interrupts at once."""
        self.stop_requested = None
        if not self.dist.main or signal.getsignal(signal.SIGINT) is None:
            return {}

        def request_stop(signum, frame):
            if self.stop_requested == signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = signum

        try:
            return {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread: leave signals alone
            return {}

    def _run(self, total: int, max_steps: int | None, metrics_path: Path) -> None:
        c = self.config
        if self.step == 0 and self.monitor is not None:  # the starting point of the kNN curve
            self._log_knn(metrics_path)
        bar = tqdm(total=total, initial=self.step, unit="step", disable=not self.show_progress,
                   desc=f"{c.method} pretraining")
        window_start, window_images = time.perf_counter(), 0
        while self.step < total:
            epoch, start_batch = divmod(self.step, self.steps_per_epoch)
            for raw, n_skipped in self.feed.epoch(epoch, start_batch, self.dist.rank, self.dist.world):
                self.skipped += n_skipped
                if raw is None or len(raw) == 0:
                    continue
                record = self.learner.train_step(raw, self.step, total, self.steps_per_epoch)
                self.step += 1
                window_images += len(raw) * self.dist.world
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == total:
                    rate = window_images / (time.perf_counter() - window_start)
                    record.update(step=self.step, epoch=round(self.step / self.steps_per_epoch, 4),
                                  images_per_second=round(rate, 1))
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.1e}", img_s=f"{rate:.0f}")
                    if self.dist.main:
                        log.info("step %d/%d loss %.4f lr %.2e %.0f img/s", self.step, total, record["loss"],
                                 record["lr"], rate)
                        _append_jsonl(metrics_path, record)
                    window_start, window_images = time.perf_counter(), 0
                if self.stop_requested is not None:
                    raise KeyboardInterrupt(f"signal {self.stop_requested}")
                if self.step >= total:
                    break
            if self.step % self.steps_per_epoch == 0 or self.step >= total:
                self._end_of_epoch(metrics_path, max_steps)
        bar.close()

    def _end_of_epoch(self, metrics_path: Path, max_steps: int | None) -> None:
        epoch = self.step / self.steps_per_epoch
        every = self.config.monitor.every
        if self.monitor is not None and every > 0 and (round(epoch) % every == 0 or self.step == self.total_steps(max_steps)):
            self._log_knn(metrics_path)
        self.save(max_steps)

    def _log_knn(self, metrics_path: Path) -> None:
        epoch = self.step / self.steps_per_epoch
        accuracy = self.monitor.evaluate(self.model.encoder.vit)
        log.info("epoch %.2f: kNN accuracy %.4f on the held-out subset", epoch, accuracy)
        _append_jsonl(metrics_path, {"step": self.step, "epoch": round(epoch, 4), "knn_accuracy": accuracy})


def pretrain(config: TrainConfig, data_root: str, out_dir: str | Path, resume: bool = False,
             epochs: int | None = None, max_steps: int | None = None, show_progress: bool = True
             ) -> dict[str, Any]:
    """Train `config.method` on `data_root`, checkpointing into `out_dir`; returns a summary dict.

    With `resume`, the run continues from the checkpoint in `out_dir` with the saved config; `epochs` and
    `max_steps` (when given) change its length."""
    trainer = Trainer(config, data_root, out_dir, resume=resume, epochs=epochs, show_progress=show_progress)
    summary = trainer.fit(max_steps)
    if trainer.dist.main:
        log.info("done: %d steps (%.2f epochs) in %.0f s, %.0f img/s, %d unreadable files skipped",
                 summary["step"], summary["epochs"], summary["seconds"], summary["images_per_second"],
                 summary["skipped"])
    return summary

