"""``build --engine ray`` on a real local Ray cluster (``ray.init(num_cpus=2)``): the same ids, vectors and
catalogue rows as the single-process build; a worker killed mid-build, and a driver killed then rerun, end
exactly as an unbroken build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is the `ray` extra: pip install -e \".[ray]\"")

from indexing.build import build  # noqa: E402
from indexing.testing import cached_tiny_model, write_archive  # noqa: E402
from test_indexing_build import assert_same, snapshot  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return cached_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = write_archive(tmp_path_factory.mktemp("ray") / "arch", per_class=14)
    river = root / "2750" / "River"
    (river / "River_0.jpg").write_bytes(b"not a jpeg")  # one bad file: skipped the same way by both engines
    (river / "River_13.jpg").write_bytes((root / "2750" / "Forest" / "Forest_3.jpg").read_bytes())  # a duplicate
    return root


@pytest.fixture(scope="module")
def expected(model, archive, tmp_path_factory):
    folder = tmp_path_factory.mktemp("local")
    build(model, archive, folder, batch_size=8, commit_every=16)
    return snapshot(folder / model.name)


def test_ray_build_matches_the_single_process_build(cluster, model, archive, expected, tmp_path):
    summary = build(model, archive, tmp_path, batch_size=8, commit_every=16, engine="ray")
    assert summary.images == 41 and summary.vectors == 40 and len(summary.skipped) == 1
    assert_same(snapshot(tmp_path / model.name), expected)


def test_a_worker_killed_mid_build_is_restarted_and_the_build_ends_as_an_unbroken_one(
        cluster, model, archive, expected, tmp_path, monkeypatch):
    marker = tmp_path / "killed-worker.pid"
    monkeypatch.setenv("INDEXING_TEST_KILL_WORKER", str(marker))
    build(model, archive, tmp_path / "index", batch_size=8, commit_every=16, engine="ray", workers=2)
    assert marker.is_file()  # a worker did die (os._exit on its second batch)
    assert_same(snapshot(tmp_path / "index" / model.name), expected)


def test_a_killed_ray_build_reruns_to_the_unbroken_result(model, archive, expected, tmp_path):
    cmd = [sys.executable, "-m", "indexing", "build", "--engine", "ray", "--model", str(model), "--archive",
           str(archive), "--index-dir", str(tmp_path), "--batch-size", "8", "--commit-every", "16"]
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    killed = subprocess.run(cmd, cwd=REPO, env={**env, "INDEXING_TEST_KILL_AT": "before-commit"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "embedded 0 new" in rerun.stdout  # every chunk of the killed run was kept
    assert_same(snapshot(tmp_path / model.name), expected)
