"""Shards built separately and merged give the same index as one build."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.__main__ import main
from indexing.build import build
from indexing.catalog import load_vectors
from indexing.search import search_vectors
from indexing.shard import parse_shard
from indexing.store import open_index
from indexing.testing import cached_tiny_model, write_archive


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    return cached_tiny_model(tmp_path_factory.getbasetemp())


def test_shards_then_merge_match_a_single_build(model, tmp_path):
    archive = write_archive(tmp_path / "arch", per_class=40)
    single = build(model, archive, tmp_path / "single")
    for shard in ("0/2", "1/2"):
        assert main(["build", "--model", str(model), "--archive", str(archive), "--index-dir",
                     str(tmp_path / "sharded"), "--shard", shard]) == 0
    assert main(["merge", "--model", str(model), "--index-dir", str(tmp_path / "sharded")]) == 0
    one, merged = open_index(tmp_path / "single" / model.name), open_index(tmp_path / "sharded" / model.name)
    try:
        assert merged.manifest["ondisk"] and merged.manifest["spec"].startswith("IVF")
        assert merged.index.ntotal == one.index.ntotal == single.vectors == 120
        query = "SELECT sample_id, id, hash, label, split, width FROM images ORDER BY sample_id"
        assert one.con.execute(query).fetchall() == merged.con.execute(query).fetchall()
        ids, vectors = load_vectors(one.con)
        merged_ids, merged_vectors = load_vectors(merged.con)
        np.testing.assert_array_equal(ids, merged_ids)
        np.testing.assert_allclose(vectors, merged_vectors, atol=1e-5)
        # nprobe = nlist here, so the merged IVF is exhaustive: the same results as exact search
        for where in (None, "label = 'SeaLake'"):
            expected = search_vectors(one, vectors[::7], 10, where)
            got = search_vectors(merged, vectors[::7], 10, where)
            assert [[r["sample_id"] for r in rows] for rows in got] == [[r["sample_id"] for r in rows]
                                                                          for rows in expected]
            assert got[0][0]["score"] == pytest.approx(1.0, abs=1e-4)
    finally:
        one.close()
        merged.close()


def test_parse_shard_rejects_nonsense():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "a/b", "1"):
        with pytest.raises(ValueError, match="i/n"):
            parse_shard(bad)
