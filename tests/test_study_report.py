"""study/report.py reads a run's compute from its metrics: each stretch at the thread count that ran it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[1] / "study" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("study_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_resumed_with_more_threads_counts_each_stretch_at_its_own(report, tmp_path):
    # 120 s on one thread, then resumed on two for 60 s more: 120 + 2 * 60 = 240 core-seconds, not 2 * 180
    records = [
        {"step": 0, "train_seconds": 0.0, "threads": 1, "knn_accuracy": 0.5},
        {"step": 50, "loss": 1.0, "train_seconds": 120.0, "threads": 1},
        {"step": 50, "train_seconds": 120.0, "threads": 1, "knn_accuracy": 0.6},
        {"step": 100, "loss": 0.9, "train_seconds": 180.0, "threads": 2},
        {"step": 100, "train_seconds": 180.0, "threads": 2, "knn_accuracy": 0.7},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    losses, knn = report.read_metrics(path)
    assert [r["core_minutes"] for r in knn] == pytest.approx([0.0, 2.0, 4.0])
    assert [r["core_minutes"] for r in losses] == pytest.approx([2.0, 4.0])
