"""Training configuration: small dataclasses whose defaults are the documentation (nanoGPT style).

A run is fully described by one `TrainConfig`. Config files are JSON objects with the same nesting
(`{"model": {"embed_dim": 384}, "ijepa": {...}}`); every key is checked against the defaults, so a typo or a
wrong type fails loudly instead of being ignored. Values not given keep the defaults below, which are the
CPU preset for EuroSAT (64 px, patch 8, width 192, depth 6) and the paper values of I-JEPA and MAE.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    """The shared ViT backbone (timm `VisionTransformer`, no class token, fixed 2-D sin-cos positions)."""

    img_size: int = 64
    patch_size: int = 8
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0


@dataclass
class IJEPAConfig:
    """I-JEPA (Assran et al., CVPR 2023), paper values: 4 target blocks of scale 0.15-0.2, aspect 0.75-1.5,
    one context block of scale 0.85-1.0 with the targets removed, EMA 0.996 -> 1.0."""

    pred_depth: int = 6
    pred_dim: int = 96
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = 4  # fewest context patches; the collator never hangs on small grids (see masks.py)
    ema: tuple[float, float] = (0.996, 1.0)
    shared_context: bool = False  # one predictor sequence per image for all targets (not the paper's; models/ijepa.py)
    regularizer: str = "none"  # anti-collapse term on the context encoder's mean-pooled embedding: sigreg, vicreg
    reg_weight: float = 0.0  # loss = smooth-L1 prediction loss + reg_weight x regularizer (0 = the paper)


@dataclass
class MAEConfig:
    """MAE (He et al., CVPR 2022): 75 % random masking, light decoder, per-patch normalised pixel loss."""

    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 4
    decoder_heads: int = 4
    norm_pix_loss: bool = True


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay; weight decay follows a cosine from start to end."""

    lr: float = 1.5e-4  # peak learning rate per 256 images; a run uses lr x batch_size / 256 (MAE's base rate;
    # I-JEPA's paper rate is 1e-3 at batch 2048 = 1.25e-4 per 256)
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: tuple[float, float] = (0.04, 0.4)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 0.0  # 0 = off


@dataclass
class DataConfig:
    """What to read and how to augment it. `stats` are per-band mean/std in scaled units; empty = measured."""

    split: str | None = "train"
    image_size: int | None = None  # resize on read; None = native size (EuroSAT: 64)
    bands: list[int] | None = None  # 1-based band indices for GeoTIFFs; None = all
    fmow_crop: str = "box"  # "box" (bounding box with context) or "whole"
    chip_size: int = 64
    crop_scale: tuple[float, float] = (0.3, 1.0)  # random resized crop, area fraction
    hflip: bool = True
    preload: bool = True  # decode the whole split into memory once (small archives like EuroSAT)
    num_workers: int = 0  # DataLoader workers when not preloading
    stats_mean: list[float] = field(default_factory=list)
    stats_std: list[float] = field(default_factory=list)


@dataclass
class MonitorConfig:
    """Online kNN monitor: frozen embeddings of a held-out subset, evaluated every `every` epochs."""

    every: int = 1  # epochs; 0 = off
    split_train: str = "train"
    split_eval: str = "val"
    n_train: int = 2000
    n_eval: int = 1000
    k: int = 20


@dataclass
class TrainConfig:
    method: str = "ijepa"  # "ijepa" or "mae"
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    log_every: int = 20  # steps
    device: str = "auto"  # "auto" = cuda if available, else cpu
    bf16: bool = True  # autocast the forward pass to bfloat16 where the device has it natively (training/precision.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    ijepa: IJEPAConfig = field(default_factory=IJEPAConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FinetuneConfig:
    """End-to-end fine-tuning of an encoder and a linear head on (part of) an archive's train labels.

    The recipe of the MAE / BEiT fine-tuning codebases (AdamW, layer-wise learning-rate decay, stochastic depth,
    label smoothing, warmup + cosine), with their 100-epoch ImageNet values replaced by ones chosen on val for
    runs of minutes (RESULTS.md, "Fine-tuning"); MixUp / CutMix (timm's ``Mixup``) are off unless set (their
    recipes' 0.8 / 1.0 were tried on val: RESULTS.md), RandAugment is left out. A labelled subset
    smaller than a few batches is visited many times: a run is at least `min_steps` steps long."""

    init: str = "random"  # registry name, exported-model folder, pretraining run folder, or random[:MODEL]
    label_fraction: float = 1.0  # stratified part of the train labels (>= 1 per class)
    label_seed: int = 0  # which stratified subset
    epochs: int = 10  # passes over the labelled subset (with a teacher: over the whole train split)
    min_steps: int = 300
    batch_size: int = 64  # at most the labelled subset's size
    seed: int = 0
    lr: float = 1e-3  # peak rate per 256 images (MAE fine-tuning's base rate 5e-4 x 2: re-derived on val)
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0  # at least 5 % of the run
    weight_decay: float = 0.05
    layer_decay: float = 0.75  # lr x layer_decay^(depth - layer): the patch embedding learns least
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    crop_scale: tuple[float, float] = (0.5, 1.0)
    hflip: bool = True
    rot90: bool = True  # random quarter turns: a scene seen from above has no up
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha) (MAE fine-tuning: 0.8); 0 = off
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha) (MAE fine-tuning: 1.0); 0 = off; with mixup, half the batches each
    evaluations: int = 10  # val accuracy measured this many times over the run (and at its end)
    val_images: int = 2000  # a fixed random subset of val for those measurements (0 = all of val)
    log_every: int = 20
    device: str = "auto"
    bf16: bool = True
    teacher: str = ""  # self-training (training/teacher.py): a classifier fine-tuned on the same labelled subset
    teacher_temperature: float = 1.0  # its probabilities softmax(logits / T) are the unlabelled images' targets
    fixmatch: float = 0.0  # FixMatch (training/fixmatch.py): weight of its loss on the unlabelled rest of train
    # (Sohn et al. 2020: 1.0); 0 = off
    fixmatch_threshold: float = 0.95  # a pseudo-label is trained on where the model's confidence reaches this share
    # of the most label smoothing lets it predict, 1 - e + e / K (FixMatch, without smoothing: 0.95)
    fixmatch_ema: float = 0.0  # the pseudo-labels come from a moving average of the weights with this momentum
    # (Semi-ViT's EMA-Teacher, Cai et al. 2022: 0.9999, a horizon of 10^4 steps, ~5 % of its ~2 * 10^5-step ImageNet
    # runs; 0.99 is 100 steps, ~8 % of a 1,200-step run); 0 = from the model being trained (FixMatch)
    fixmatch_mix: bool = False  # the strong views mixed in pairs in proportion to their confidences, towards mixed
    # pseudo-labels (Semi-ViT's probabilistic pseudo-MixUp, training/fixmatch.confidence_mix); only with fixmatch
    unlabelled_ratio: int = 2  # unlabelled images per labelled one in a step (FixMatch: 7; at 2 a step takes ~4x)
    probe_head: bool = False  # LP-FT (Kumar et al. 2022; training/probe_head.py): the head starts as the frozen init's
    # linear probe (C = 1, standardised features) on the labelled images, not near zero
    resolution: int = 0  # input size in pixels to fine-tune and classify at (0 = the init's); the init's position
    # embeddings are resampled to the new patch grid, as when the MAE / DeiT recipes fine-tune at a higher resolution
    model: ModelConfig = field(default_factory=ModelConfig)  # replaced by the init model's architecture
    stats_mean: list[float] = field(default_factory=list)  # replaced by the init model's normalisation
    stats_std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check `value` against the type of `default`; tuples come from JSON as lists."""
    if isinstance(default, bool) or isinstance(value, bool):
        if not isinstance(value, bool) or not isinstance(default, bool):
            raise TypeError(f"config key {where!r}: expected {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise TypeError(f"config key {where!r}: expected a list of {len(default)} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if default is not None and not isinstance(value, type(default)) and value is not None:
        raise TypeError(f"config key {where!r}: expected {type(default).__name__}, got {value!r}")
    return value


def apply_overrides(obj: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of dataclass `obj` with `overrides` (nested dict) applied, type-checked."""
    changes = {}
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise KeyError(f"unknown config key {where!r}; known keys: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise TypeError(f"config key {where!r} is a section: give an object, got {value!r}")
            changes[key] = apply_overrides(current, value, prefix=f"{where}.")
        else:
            changes[key] = _coerce(value, current, where)
    return dataclasses.replace(obj, **changes)


def resolve_config_path(name: str | Path) -> Path:
    """A config is a path, or the name of a preset in training/configs (with or without `.json`)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = CONFIG_DIR / (path.name if path.suffix == ".json" else f"{path.name}.json")
    if preset.is_file():
        return preset
    presets = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    raise FileNotFoundError(f"config {str(name)!r} not found: give a JSON file or one of the presets {presets}")


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the JSON file at `path` (if any), then keyword overrides (nested dicts allowed)."""
    config = TrainConfig()
    if path is not None:
        resolved = resolve_config_path(path)
        try:
            data = json.loads(resolved.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"config {resolved} is not valid JSON: {err}") from err
        config = apply_overrides(config, data)
    config = apply_overrides(config, overrides)
    if config.method not in ("ijepa", "mae"):
        raise ValueError(f"method must be 'ijepa' or 'mae', got {config.method!r}")
    from training.models.regularizers import REGULARIZERS

    if config.ijepa.regularizer not in REGULARIZERS:
        raise ValueError(f"config key 'ijepa.regularizer' must be one of {REGULARIZERS}, got {config.ijepa.regularizer!r}")
    return config


def peak_learning_rate(config: TrainConfig) -> float:
    """The run's peak learning rate: `optim.lr` (per 256 images) scaled linearly with the global batch."""
    return config.optim.lr * config.batch_size / 256


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """Command-line overrides `["ijepa.reg_weight=0.1", "bf16=false"]` -> a nested dict (values are JSON;
    a value that is not JSON is taken as a string, so `ijepa.regularizer=sigreg` works unquoted)."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {assignment!r}: write KEY=VALUE, e.g. --set optim.lr=0.002")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *sections, leaf = key.split(".")
        node = overrides
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return overrides


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a `TrainConfig` from `to_dict()` output (as stored in checkpoints)."""
    return apply_overrides(TrainConfig(), data)
