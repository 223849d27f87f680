"""The pretraining loop shared by I-JEPA and MAE: data, checkpoints, metrics, resume, signals.

One step is `training.learner.Learner.train_step`, whose draws are seeded by the step and whose schedules are
pure functions of the step, so a run resumed from a checkpoint continues exactly where the killed run stopped. Launch with `python -m training pretrain ...`, or `torchrun --nproc-per-node N -m training
pretrain ...` for data-parallel training (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training.checkpoint import BEST_DIR, find_checkpoint, load_checkpoint, read_state, save_checkpoint
from training.config import TrainConfig, config_from_dict
from training.data import band_statistics, open_archives
from training.distributed import device_name, pick_device, setup_distributed
from training.feed import BatchFeed
from training.learner import Learner, NonFiniteLossError
from training.monitor import init_correlation, monitor_for

log = logging.getLogger(__name__)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from, so no step is recorded twice."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


class Trainer:
    """One pretraining run in `out_dir`. `fit()` trains to the end (or `max_steps`) and returns a summary."""

    def __init__(self, config: TrainConfig, data_root: str | Path | Sequence[str | Path], out_dir: str | Path,
                 resume: bool = False, epochs: int | None = None, show_progress: bool = True) -> None:
        self.out_dir = Path(out_dir)
        roots = [data_root] if isinstance(data_root, (str, Path)) else list(data_root)
        # one archive: its path, as before; a mixed corpus: the list of them (the checkpoint and the card say so)
        self.data_root: str | list[str] = str(roots[0]) if len(roots) == 1 else [str(r) for r in roots]
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
        self.hardware = device_name(self.device) + (f" x{self.dist.world}" if self.dist.world > 1 else "")
        self.show_progress = show_progress and self.dist.main
        torch.manual_seed(config.seed)

        d = config.data
        self.dataset = open_archives(self.data_root, split=d.split, image_size=d.image_size, bands=d.bands,
                                     fmow_crop=d.fmow_crop, chip_size=d.chip_size)
        if self.dataset.num_bands != config.model.in_chans:
            raise ValueError(f"{self.data_root} has {self.dataset.num_bands} bands but model.in_chans is "
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
        if self.dist.main:
            log.info("training in %s on %s", self.learner.precision, self.device)
        self.model, self.optimizer = self.learner.model, self.learner.optimizer
        self.step = 0
        self.skipped = self.feed.skipped_on_load
        self.train_seconds = 0.0  # time in training steps (no data loading, monitor or checkpoints), all sessions
        self.best_knn: float | None = None  # the best online kNN so far; its weights are in checkpoint-best/
        # The exported encoder's weights at initialisation (seeded, so the same on resume): the monitor
        # reports how far training has moved it.
        self.initial_encoder = {k: v.detach().clone() for k, v in self.model.encoder.vit.state_dict().items()}
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, self.model, self.optimizer)
            self.step, self.skipped = state["step"], max(self.skipped, state.get("skipped", 0))
            self.train_seconds = state.get("train_seconds", 0.0)
            self.best_knn = state.get("best_knn")
            log.info("resumed from %s at step %d", checkpoint, self.step)
        self.monitor = None
        if config.monitor.every > 0 and self.dist.main:
            self.monitor = monitor_for(self.data_root, config, self.mean, self.std, self.show_progress)
        if self.monitor is not None:
            self.monitor.precision = self.learner.precision

    def total_steps(self, max_steps: int | None) -> int:
        total = self.config.epochs * self.steps_per_epoch
        return min(total, max_steps) if max_steps else total

    def save(self, max_steps: int | None, best: bool = False) -> None:
        """Checkpoint (weights, optimiser, state); with `best`, also the weights as checkpoint-best/."""
        if self.dist.main:
            state = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "skipped": self.skipped,
                     "train_seconds": self.train_seconds, "best_knn": self.best_knn,
                     "config": self.config.to_dict(), "max_steps": max_steps, "method": self.config.method,
                     "precision": self.learner.precision, "data_root": self.data_root,
                     "device": self.hardware}
            save_checkpoint(self.out_dir, self.model, self.optimizer, state)
            if best:
                save_checkpoint(self.out_dir, self.model, None, state, name=BEST_DIR)
        self.dist.barrier()

    def fit(self, max_steps: int | None = None) -> dict[str, Any]:
        max_steps = max_steps or getattr(self, "max_steps", None)
        total = self.total_steps(max_steps)
        metrics_path = self.out_dir / "metrics.jsonl"
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1))
            truncate_metrics(metrics_path, self.step)
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
                started = time.perf_counter()
                record = self.learner.train_step(raw, self.step, total, self.steps_per_epoch)
                self.train_seconds += time.perf_counter() - started
                self.step += 1
                window_images += len(raw) * self.dist.world
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == total:
                    rate = window_images / (time.perf_counter() - window_start)
                    record.update(step=self.step, epoch=round(self.step / self.steps_per_epoch, 4),
                                  images_per_second=round(rate, 1), precision=self.learner.precision,
                                  train_seconds=round(self.train_seconds, 1), threads=torch.get_num_threads(),
                                  device=self.hardware)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.1e}", img_s=f"{rate:.0f}")
                    if self.dist.main:
                        log.info("step %d/%d loss %.4f lr %.2e %.0f img/s", self.step, total, record["loss"],
                                 record["lr"], rate)
                        append_jsonl(metrics_path, record)
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
        improved = False
        if self.monitor is not None and every > 0 and (round(epoch) % every == 0 or self.step == self.total_steps(max_steps)):
            knn = self._log_knn(metrics_path)
            improved = self.best_knn is None or knn > self.best_knn
            if improved:
                self.best_knn = knn
        self.save(max_steps, best=improved)

    def _log_knn(self, metrics_path: Path) -> float:
        """Log the monitor's record: kNN accuracy and spectrum of the exported encoder (I-JEPA: the target
        encoder), its correlation with its initial weights, and for I-JEPA the context encoder's kNN and rank.
        Returns the kNN accuracy."""
        epoch = self.step / self.steps_per_epoch
        record = {"step": self.step, "epoch": round(epoch, 4), "images_seen": self.step * self.config.batch_size,
                  "train_seconds": round(self.train_seconds, 1), "threads": torch.get_num_threads(),
                  "device": self.hardware, **self.monitor.measure(self.model.encoder.vit),
                  "init_correlation": init_correlation(self.model.encoder.vit, self.initial_encoder)}
        if self.config.method == "ijepa":
            context = self.monitor.measure(self.model.context_encoder.vit)
            record.update(knn_context=context["knn_accuracy"], effective_rank_context=context["effective_rank"])
        log.info("epoch %.2f: kNN accuracy %.4f on the held-out subset%s, effective rank %.1f, top share %.2f, "
                 "init correlation %.3f", epoch, record["knn_accuracy"],
                 f" (context encoder {record['knn_context']:.4f})" if "knn_context" in record else "",
                 record["effective_rank"], record["top_share"], record["init_correlation"])
        append_jsonl(metrics_path, {k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()})
        return record["knn_accuracy"]


def pretrain(config: TrainConfig, data_root: str | Path | Sequence[str | Path], out_dir: str | Path,
             resume: bool = False, epochs: int | None = None, max_steps: int | None = None,
             show_progress: bool = True) -> dict[str, Any]:
    """Train `config.method` on `data_root` (one archive, or several read as one corpus), checkpointing into
    `out_dir`; returns a summary dict.

    With `resume`, the run continues from the checkpoint in `out_dir` with the saved config; `epochs` and
    `max_steps` (when given) change its length."""
    trainer = Trainer(config, data_root, out_dir, resume=resume, epochs=epochs, show_progress=show_progress)
    try:
        summary = trainer.fit(max_steps)
    finally:
        trainer.dist.leave()
    if trainer.dist.main:
        log.info("done: %d steps (%.2f epochs) in %.0f s, %.0f img/s, %d unreadable files skipped",
                 summary["step"], summary["epochs"], summary["seconds"], summary["images_per_second"],
                 summary["skipped"])
    return summary

