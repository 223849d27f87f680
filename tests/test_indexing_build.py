"""Build / search / incremental / crash-safety tests of the indexing package, on tiny generated archives."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexing.__main__ import main
from indexing.build import build
from indexing.catalog import load_vectors
from indexing.search import candidate_ids, search_image, search_vectors
from indexing.store import open_index
from indexing.testing import cached_tiny_model, write_archive, write_splits

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    return cached_tiny_model(tmp_path_factory.getbasetemp())


def snapshot(folder: Path) -> dict:
    """What must agree between two builds: rows (sample_id -> id, hash, label, split), vectors, ntotal."""
    opened = open_index(folder)
    try:
        rows = {r[0]: r[1:] for r in opened.con.execute(
            "SELECT sample_id, id, hash, label, split, width, height FROM images").fetchall()}
        ids, vectors = load_vectors(opened.con)
        return {"rows": rows, "ids": ids, "vectors": vectors, "ntotal": opened.index.ntotal,
                "spec": opened.manifest["spec"], "skipped": opened.con.execute(
                    "SELECT sample_id, reason FROM skipped ORDER BY 1").fetchall()}
    finally:
        opened.close()


def assert_same(a: dict, b: dict) -> None:
    assert a["rows"] == b["rows"]
    assert a["ntotal"] == b["ntotal"] == len(set(r[0] for r in a["rows"].values()))
    np.testing.assert_array_equal(a["ids"], b["ids"])
    np.testing.assert_allclose(a["vectors"], b["vectors"], atol=1e-5)
    assert a["skipped"] == b["skipped"]


def test_build_then_a_query_image_finds_itself_first(model, tmp_path):
    archive = write_archive(tmp_path / "arch", per_class=8)
    summary = build(model, archive, tmp_path / "index")
    assert (summary.images, summary.vectors, summary.embedded, summary.spec) == (24, 24, 24, "IDMap2,Flat")
    query = archive / "2750" / "River" / "River_5.jpg"
    rows = search_image(model, query, k=5, index_dir=tmp_path / "index")
    assert len(rows) == 5 and rows[0]["path"] == str(query) and rows[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["label"] == "River" and rows[0]["split"] == "train" and rows[0]["width"] == 64


def test_rebuild_after_adding_changing_and_deleting_files_matches_a_clean_build(model, tmp_path):
    archive = write_archive(tmp_path / "arch", per_class=8)
    build(model, archive, tmp_path / "inc")
    write_archive(archive, per_class=3, start=8)  # 9 new files
    (archive / "2750" / "Forest" / "Forest_0.jpg").unlink()
    (archive / "2750" / "SeaLake" / "SeaLake_1.jpg").unlink()
    shutil.copy(archive / "2750" / "River" / "River_2.jpg", archive / "2750" / "River" / "River_3.jpg")  # changed
    write_splits(archive)
    summary = build(model, archive, tmp_path / "inc")
    assert summary.embedded == 9  # the changed file is identical to River_2 now: stored once, nothing to embed
    assert summary.images == 24 + 9 - 2 and summary.vectors == summary.images - 1
    clean = build(model, archive, tmp_path / "clean")
    assert clean.embedded == clean.vectors
    assert_same(snapshot(tmp_path / "inc" / model.name), snapshot(tmp_path / "clean" / model.name))
    rows = search_image(model, archive / "2750" / "River" / "River_2.jpg", k=2, index_dir=tmp_path / "inc")
    assert {r["sample_id"] for r in rows} == {"2750/River/River_2.jpg", "2750/River/River_3.jpg"}
    assert rows[0]["id"] == rows[1]["id"]


def test_corrupt_file_is_skipped_and_recorded(model, tmp_path):
    archive = write_archive(tmp_path / "arch", per_class=4)
    (archive / "2750" / "Forest" / "Forest_9.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    write_splits(archive)
    summary = build(model, archive, tmp_path / "index")
    assert summary.images == 12 and len(summary.skipped) == 1 and "Forest_9.jpg" in summary.skipped[0][1]
    skipped = snapshot(tmp_path / "index" / model.name)["skipped"]
    assert skipped[0][0] == "2750/Forest/Forest_9.jpg" and skipped[0][1]


def test_filtered_search_returns_exactly_k_when_k_matches_exist(model, tmp_path):
    archive = write_archive(tmp_path / "arch", per_class=30)
    build(model, archive, tmp_path / "index", spec="IVF2,Flat", nprobe=1)
    opened = open_index(tmp_path / "index" / model.name)
    try:
        ids, vectors = load_vectors(opened.con)
        for where, k, expected in [("label = 'River'", 25, 25), ("label = 'River'", 40, 30),
                                   ("label = 'River' AND split = 'test'", 10, 7), ("split = 'nope'", 5, 0)]:
            for rows in search_vectors(opened, vectors[:4], k, where):
                assert len(rows) == expected
                assert all(r["label"] == "River" for r in rows)
                scores = [r["score"] for r in rows]
                assert scores == sorted(scores, reverse=True)
        with pytest.raises(ValueError, match="not a valid filter"):
            candidate_ids(opened.con, "no_such_column = 1")
        with pytest.raises(ValueError, match="without ';'"):
            candidate_ids(opened.con, "1 = 1; DROP TABLE images")
    finally:
        opened.close()


def test_missing_faiss_file_is_rebuilt_from_the_catalogue(model, tmp_path):
    archive = write_archive(tmp_path / "arch", per_class=4)
    build(model, archive, tmp_path / "index")
    folder = tmp_path / "index" / model.name
    before = snapshot(folder)
    next(folder.glob("index-*.faiss")).unlink()
    assert_same(snapshot(folder), before)


def _build_cmd(model: Path, archive: Path, index_dir: Path) -> list[str]:
    return [sys.executable, "-m", "indexing", "build", "--model", str(model), "--archive", str(archive),
            "--index-dir", str(index_dir), "--batch-size", "4", "--commit-every", "8"]


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_a_build_killed_at_any_stage_then_rerun_matches_a_clean_build(model, tmp_path):
    archive = write_archive(tmp_path / "arch", per_class=6)
    build(model, archive, tmp_path / "clean")
    write_archive(archive, per_class=10, start=6)  # 30 more images for the killed builds to embed
    build(model, archive, tmp_path / "clean")
    expected = snapshot(tmp_path / "clean" / model.name)

    # killed from outside while embedding, after at least one chunk was committed
    killed = tmp_path / "killed"
    v1 = tmp_path / "v1"
    write_archive(v1, per_class=6)
    build(model, v1, killed)  # a previous index (of another archive version) that must survive the kill
    proc = subprocess.Popen(_build_cmd(model, archive, killed), cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "INDEXING_TEST_BATCH_DELAY": "0.3"})
    deadline = time.time() + 60
    for line in proc.stderr:
        if "committed" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert snapshot(killed / model.name)["ntotal"] == 18  # the previous index is still published and usable
    assert _run(_build_cmd(model, archive, killed)).returncode == 0
    assert_same(snapshot(killed / model.name), expected)

    # killed by the test hook just before and just after the publishing commit
    for point in ("before-commit", "after-commit"):
        folder = tmp_path / point
        build(model, v1, folder)
        assert _run(_build_cmd(model, archive, folder), INDEXING_TEST_KILL_AT=point).returncode == -signal.SIGKILL
        assert snapshot(folder / model.name)["ntotal"] == (18 if point == "before-commit" else 48)
        assert _run(_build_cmd(model, archive, folder)).returncode == 0
        assert_same(snapshot(folder / model.name), expected)
        assert len(list((folder / model.name).glob("index-*"))) == 1


def test_cli_build_and_search_json(model, tmp_path, capsys):
    archive = write_archive(tmp_path / "arch", per_class=4)
    index_dir = tmp_path / "index"
    assert main(["build", "--model", str(model), "--archive", str(archive), "--index-dir", str(index_dir)]) == 0
    assert "12 images" in capsys.readouterr().out
    query = archive / "2750" / "Forest" / "Forest_1.jpg"
    assert main(["search", str(query), "--model", str(model), "--index-dir", str(index_dir), "-k", "3",
                 "--where", "label = 'Forest'", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and hits[0]["path"] == str(query) and {h["label"] for h in hits} == {"Forest"}
    assert set(hits[0]) >= {"id", "path", "score", "label", "split", "lat", "lon"}
    assert main(["search", str(query), "--model", str(model), "--index-dir", str(index_dir), "--where", "x = ;"]) == 1
    assert main(["build", "--model", str(model), "--archive", str(tmp_path / "missing")]) == 1


def test_mixed_archive_indexes_what_it_can_and_reports_the_rest(model, tmp_path):
    import rasterio

    archive = write_archive(tmp_path / "mixed", per_class=3)
    (archive / "splits.csv").unlink()  # class folders: every file in them is a sample
    folder = next(p for p in (archive / "2750").iterdir() if p.is_dir())
    profile = dict(driver="GTiff", width=16, height=16, count=3, dtype="uint8", nodata=0)
    with rasterio.open(folder / "rgb.tif", "w", **profile) as dst:
        dst.write(np.full((3, 16, 16), 90, dtype=np.uint8))
    with rasterio.open(folder / "empty.tif", "w", **profile) as dst:
        dst.write(np.zeros((3, 16, 16), dtype=np.uint8))
    with rasterio.open(folder / "four.tif", "w", **{**profile, "count": 4}) as dst:
        dst.write(np.full((4, 16, 16), 90, dtype=np.uint8))
    (folder / "notes.docx").write_bytes(b"PK not an image")
    result = build(model, archive, tmp_path / "index")
    reasons = {Path(path).name: reason for _, path, reason in result.skipped}
    assert reasons["empty.tif"] == "no valid pixels (every pixel is nodata)"
    assert "has 4 bands" in reasons["four.tif"] and "unknown file type '.docx'" in reasons["notes.docx"]
    opened = open_index(tmp_path / "index" / Path(model).name)
    paths = {Path(r[0]).name for r in opened.con.execute("SELECT path FROM images").fetchall()}
    opened.close()
    assert "rgb.tif" in paths and len(paths) == 3 * len(list((archive / "2750").iterdir())) + 1
