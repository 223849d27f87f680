"""Mixed precision: bf16 autocast only where native, the same loss as fp32 on a real batch, recorded in the run."""

from __future__ import annotations

import json

import pytest
import torch

from training import precision
from training.config import load_config
from training.learner import Learner, step_generator
from training.precision import BF16, FP32, training_precision

CPU = torch.device("cpu")


def test_fp32_when_asked_or_when_bf16_is_not_native(monkeypatch):
    assert training_precision(False, CPU) == FP32
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert training_precision(True, CPU) == FP32
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert training_precision(True, CPU) == BF16


def test_cpu_detection_agrees_with_cpuinfo():
    flags = precision._cpu_flags()
    if not flags:
        pytest.skip("/proc/cpuinfo has no flags line on this system")
    assert precision.native_bf16(CPU) == bool({"avx512_bf16", "amx_bf16"} & flags)


def _losses(method: str, images: torch.Tensor, steps: int = 4) -> tuple[list[float], list[float]]:
    """Losses of the same weights on the same crops and masks, fp32 and under bf16 autocast."""
    config = load_config(None, method=method, bf16=False)
    torch.manual_seed(0)
    learner = Learner(config, CPU, images.mean((0, 2, 3)), images.std((0, 2, 3)))
    fp32, bf16 = [], []
    for step in range(steps):
        for precision_, out in ((FP32, fp32), (BF16, bf16)):
            learner.precision = precision_
            gen = step_generator(0, step, 0)  # the same crops and masks for both
            with torch.no_grad():
                out.append(learner.loss(learner.augment(images, gen), gen).item())
    return fp32, bf16


@pytest.mark.parametrize("method", ["ijepa", "mae"])
def test_bf16_loss_matches_fp32_on_a_real_batch(method, shared_data):
    from training.data import open_archive

    dataset = open_archive(shared_data / "eurosat-rgb", split="train")
    images = torch.stack([dataset[i]["image"] for i in range(0, 6400, 100)])  # [64, 3, 64, 64]
    fp32, bf16 = _losses(method, images)
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 0.2 % per op); through 6 blocks the loss of the
    # untrained CPU preset moves by under 1 % (measured 0.1-0.4 %). A dtype bug (wrong cast, an op left in
    # bf16 that needs fp32) moves it by far more.
    for a, b in zip(fp32, bf16):
        assert b == pytest.approx(a, rel=0.01), (fp32, bf16)
    assert fp32 != bf16  # autocast really ran in bf16


def test_run_records_its_precision(tmp_path):
    from indexing.testing import write_archive
    from training.engine import pretrain

    archive = write_archive(tmp_path / "scenes", per_class=16)
    config = load_config(None, method="mae", batch_size=8, epochs=1, log_every=1, bf16=False,
                         model={"embed_dim": 32, "depth": 1, "num_heads": 2},
                         mae={"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}, monitor={"every": 0})
    pretrain(config, str(archive), tmp_path / "run", show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["precision"] == FP32 for r in records if "loss" in r)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["precision"] == FP32


def test_the_benchmark_runs_without_native_bf16_and_says_its_bf16_peak_is_emulated(monkeypatch):
    """`python -m training bench` on a CPU without native bf16 (a 2-core AMD EPYC with AVX2 only crashed it):
    the fp32 peak for MFU, and the bf16 peak measured small and said to be emulated."""
    from training import bench

    monkeypatch.setattr(bench, "native_bf16", lambda device: False)
    config = load_config(None, method="mae", bf16=False, batch_size=4)
    lines: list[str] = []
    result = bench.run_benchmark(config, steps=1, warmup=0, print_fn=lines.append)
    [peaks] = [line for line in lines if line.startswith("matmul")]
    assert "fp32" in peaks and "bf16" in peaks and "emulated" in peaks
    assert result["peak_flops"] > 0 and result["bf16_peak_flops"] is None
