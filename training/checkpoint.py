"""Checkpoints without pickle: safetensors weights + a JSON file (config, step, optimizer hyper-state).

A checkpoint is a folder `RUN/checkpoint/` holding `model.safetensors`, `optimizer.safetensors`, `state.json` and,
for a run that keeps a moving average of its weights, `ema.safetensors`. It is written into a temporary folder and
renamed into place, so a kill at any moment leaves either the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoint"
#: The weights of the epoch with the best online kNN on val (model + state, no optimiser): early stopping on val.
BEST_DIR = "checkpoint-best"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat tensors and JSON-able scalars."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, param_state in state["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    for name, value in meta["scalars"].items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any], name: str = CHECKPOINT_DIR, ema: torch.nn.Module | None = None) -> Path:
    """Atomically write model weights, optimizer moments (unless None), the weights' moving average (unless None)
    and `state` (JSON-able) to `run_dir/<name>`."""
    run_dir = Path(run_dir)
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, tmp / "model.safetensors")
    if ema is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, tmp / "ema.safetensors")
    opt_meta = None
    if optimizer is not None:
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=1))
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = run_dir / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(run_dir: Path, name: str = CHECKPOINT_DIR) -> Path | None:
    """The newest complete checkpoint folder `name` of a run (also one left as `.old` by a kill mid-rename)."""
    for folder in (name, f".{name}.old"):
        path = Path(run_dir) / folder
        if (path / "state.json").is_file() and (path / "model.safetensors").is_file():
            return path
    return None


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / "state.json").read_text())


def load_weights(checkpoint: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(Path(checkpoint) / "model.safetensors", device=str(device))


def load_checkpoint(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    ema: torch.nn.Module | None = None) -> dict[str, Any]:
    """Restore `model` (and `optimizer`, and the moving average `ema`) in place; return the saved state. Fails
    loudly on any mismatch."""
    checkpoint = Path(checkpoint)
    state = read_state(checkpoint)
    device = next(model.parameters()).device
    model.load_state_dict(load_weights(checkpoint, device), strict=True)
    if ema is not None:
        if not (checkpoint / "ema.safetensors").is_file():
            raise FileNotFoundError(f"{checkpoint}: no ema.safetensors, yet this run keeps a moving average of its "
                                    "weights; resume it with the settings it was started with")
        ema.load_state_dict(load_file(checkpoint / "ema.safetensors", device=str(device)), strict=True)
    if optimizer is not None:
        tensors = load_file(checkpoint / "optimizer.safetensors")
        _restore_optimizer(optimizer, tensors, state["optimizer"])
    return state
