"""Mixed precision: bfloat16 autocast where the processor computes in bfloat16 natively, fp32 elsewhere.

Weights, gradients and optimiser moments stay fp32 (master weights); only the forward pass runs under
`torch.autocast`, whose backward follows the forward's dtypes. bf16 pays off only with native support: on a
CPU without AVX512-BF16 or AMX, bf16 matmuls are emulated and slower than fp32.

Detection: CUDA asks the driver (`torch.cuda.is_bf16_supported`); a CPU asks PyTorch's own CPU feature probe
(`torch.cpu._is_avx512_bf16_supported`, `_is_amx_tile_supported`, the checks oneDNN dispatches on), read from
/proc/cpuinfo's `avx512_bf16` / `amx_bf16` flags when that probe is missing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

BF16 = "bf16"
FP32 = "fp32"


def cpuinfo_values(key: str) -> list[str]:
    """The values of `key` ("flags", "model name", ...) in /proc/cpuinfo, one per processor; [] where it is absent."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if ":" in line and line.split(":", 1)[0].strip() == key]


def _cpu_flags() -> set[str]:
    return {flag for flags in cpuinfo_values("flags") for flag in flags.split()}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matmuls in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is not None for probe in probes):
        return any(probe() for probe in probes)
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def training_precision(bf16: bool, device: torch.device) -> str:
    """"bf16" when asked for (config `bf16`) and native on `device`, else "fp32"."""
    return BF16 if bf16 and native_bf16(device) else FP32


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's context: bf16 autocast, or nothing for fp32."""
    if precision == BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
