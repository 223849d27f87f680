"""Devices and data-parallel process groups (torchrun: gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from training.precision import cpuinfo_values


@dataclass
class Distributed:
    """This process's place in data-parallel training; `in_group`: launched by torchrun and joined to its process
    group (also at world size 1, so one GPU runs the same NCCL + DistributedDataParallel path as eight)."""

    rank: int = 0
    world: int = 1
    in_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def leave(self) -> None:
        """Leave the process group at the end of training (NCCL warns of leaked resources otherwise)."""
        if self.in_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: torch.device) -> Distributed:
    """Join the process group when launched by torchrun (which sets LOCAL_RANK), whatever its size."""
    if "LOCAL_RANK" not in os.environ:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size(), in_group=True)


def pick_device(name: str) -> torch.device:
    """"auto" = cuda if available, else cpu; under torchrun each process takes its LOCAL_RANK's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def device_name(device: torch.device) -> str:
    """The hardware a run trains on, for its metrics: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return next(iter(cpuinfo_values("model name")), device.type)
