"""The compressed tier: spec by archive size, the float16 store and re-ranking, recall measured at build time,
filters, incremental rebuilds and repair on a compressed index, and `indexing info`."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from indexing.__main__ import main
from indexing.build import build
from indexing.catalog import load_vectors
from indexing.faiss_index import EXACT_SPEC, choose_spec, is_compressed, search
from indexing.search import search_vectors
from indexing.store import open_index
from indexing.testing import cached_tiny_model, write_archive
from indexing.vector_store import VectorStore, rerank, write_store

SPEC = "IVF1,RaBitQ2"  # a tiny archive forced onto the compressed tier
DEMO_SPEC = "IVF8,RaBitQ2"  # the demo archive (1,000 real tiles, shipped I-JEPA) forced onto it


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    return cached_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def demo_compressed(tmp_path_factory):
    """The demo archive indexed by the shipped I-JEPA on the compressed tier (real embeddings: the tiny random
    model's are all within 1e-5 of each other, closer than float16 can tell apart)."""
    return build("ijepa", None, tmp_path_factory.mktemp("compressed"), spec=DEMO_SPEC)


def test_spec_tiers_by_archive_size():
    assert choose_spec(9_999) == (EXACT_SPEC, 0)
    flat, _ = choose_spec(1_000_000)
    assert flat.endswith(",Flat") and not is_compressed(flat)
    for n in (2_000_000, 10_000_000, 100_000_000):
        spec, _ = choose_spec(n)
        assert is_compressed(spec) and spec.startswith("IVF")
    assert is_compressed("OPQ48_192,IVF65536_HNSW32,PQ48x4fs") and is_compressed("IVF1024,SQ8")


def test_store_round_trip_and_rerank_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    faiss.normalize_L2(x)
    ids = np.sort(rng.choice(10 ** 12, 500, replace=False)).astype(np.int64)
    store = write_store(tmp_path, "s", 500, 16, [(ids[:200], x[:200]), (ids[200:], x[200:])])
    np.testing.assert_allclose(VectorStore(tmp_path, "s").lookup(ids[::-7]), x[::-7], atol=1e-3)
    assert (store.rows_of(np.array([ids[0] + 1])) == -1).all()
    with pytest.raises(ValueError, match="increasing"):
        write_store(tmp_path, "bad", 2, 16, [(ids[1::-1][:2], x[:2])])
    q = x[:5]
    candidates = np.tile(ids[:50], (5, 1))
    candidates[:, -1] = -1  # a missing candidate never comes back
    scores, top = rerank(store, q, candidates, 3)
    exact = q @ x[:49].T  # [5, 49]
    np.testing.assert_array_equal(top, ids[:49][np.argsort(-exact, axis=1)[:, :3]])
    np.testing.assert_allclose(scores, np.sort(exact, axis=1)[:, ::-1][:, :3], atol=2e-3)


def test_compressed_build_reranks_filters_exactly_and_reports_recall(demo_compressed, capsys):
    summary = demo_compressed
    assert summary.spec == DEMO_SPEC and summary.quality["recall_at_10"] >= 0.95
    assert summary.quality["recall_by_nprobe"] and summary.quality["store_bytes"] == 1000 * (192 * 2 + 8)
    assert summary.quality["bytes_per_vector"] < 200  # codes + ids, against 776 for IVF-Flat
    opened = open_index(summary.index_dir)
    try:
        assert opened.store is not None and len(opened.store) == opened.index.ntotal == 1000
        ids, vectors = load_vectors(opened.con)
        scores, found = opened.search(vectors[:20], 5)
        exact = vectors[:20] @ vectors.T  # [20, 1000]
        np.testing.assert_allclose(scores, np.sort(exact, axis=1)[:, ::-1][:, :5], atol=2e-3)  # exact, to fp16
        assert (found[:, 0] == ids[:20]).all()
        forest = search_vectors(opened, vectors[:3], k=200, where="label = 'Forest'")
        assert all(len(rows) == 100 and {r["label"] for r in rows} == {"Forest"} for rows in forest)
    finally:
        opened.close()
    assert main(["info", "--model", "ijepa", "--index-dir", str(summary.index_dir.parent)]) == 0
    printed = capsys.readouterr().out
    assert DEMO_SPEC in printed and "float16 store" in printed and "recall@10" in printed


def test_compressed_index_rebuilds_incrementally_and_repairs_a_lost_store(model, tmp_path):
    archive = write_archive(tmp_path / "arch", per_class=20)
    first = build(model, archive, tmp_path / "index", spec=SPEC)
    for path in sorted((archive / "2750" / "River").glob("*.jpg"))[:5]:
        path.unlink()
    second = build(model, archive, tmp_path / "index", spec=SPEC)
    assert (first.vectors, second.vectors, second.removed) == (60, 55, 5)
    folder = second.index_dir
    assert sorted(p.name for p in folder.glob("index-*")) == ["index-2.f16.npy", "index-2.faiss", "index-2.ids.npy"]
    (folder / "index-2.f16.npy").unlink()  # the store is gone: opening rebuilds it from the catalogue
    opened = open_index(folder)
    try:
        assert opened.store is not None and len(opened.store) == 55
        ids, vectors = load_vectors(opened.con)
        _, found = opened.search(vectors[:4], 1)
        assert (found[:, 0] == ids[:4]).all()
    finally:
        opened.close()


def test_search_with_a_store_widens_probing_under_a_filter():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    faiss.normalize_L2(x)
    ids = np.arange(2000, dtype=np.int64)
    index = faiss.index_factory(16, "IVF16,RaBitQ2", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_with_ids(x, ids)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(Path(tmp), "s", 2000, 16, [(ids, x)])
        allowed = ids[::97]  # 21 ids spread over the lists
        _, found = search(index, x[:2], 10, 1, allowed=allowed, store=store)
        assert (found >= 0).all() and set(found.ravel()) <= set(allowed)


def test_nprobe_is_the_smallest_reaching_the_target_or_the_last_before_the_climb_stalls():
    from indexing.faiss_index import calibrate_nprobe, climb_ladder

    ladder = (8, 16, 32, 64, 128, 256)
    reaching = {8: 0.80, 16: 0.90, 32: 0.953, 64: 0.97, 128: 0.98, 256: 0.99}  # the 10 M build
    plateau = {8: 0.86, 16: 0.91, 32: 0.935, 64: 0.944, 128: 0.946, 256: 0.947}  # 100 M: 0.95 out of reach
    asked = []

    def measured(curve):
        def recall(nprobe):
            asked.append(nprobe)
            return curve[nprobe]
        return recall

    taken = climb_ladder(measured(reaching), ladder)
    assert asked == [8, 16, 32] and calibrate_nprobe(taken) == 32  # stops at the target
    asked.clear()
    taken = climb_ladder(measured(plateau), ladder)
    assert asked == [8, 16, 32, 64, 128]  # 64 -> 128 added 0.002: the climb stalled, 256 is never searched
    assert calibrate_nprobe(taken) == 64  # the last step that still paid
    assert calibrate_nprobe({8: 0.5, 16: 0.7}) == 16  # the ladder ran out: the best
    assert calibrate_nprobe({8: 0.5, 16: 0.7}, target=0.6) == 16 and calibrate_nprobe({8: 0.6}, target=0.6) == 8
