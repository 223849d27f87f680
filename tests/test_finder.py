"""The analyst's loop: rankers on vectors, the simulated analyst, and the Finder over real indexes (tiny models
on a tiny archive; the located archive for the merged-polygon export)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexing.build import build
from indexing.paths import LOCATED_ARCHIVE
from retrieval_app.filters import parse_filters
from retrieval_app.finder import Finder, SessionError, finds_geojson
from retrieval_app.loop import RANKERS, ranked, simulate
from retrieval_app.service import QueryError, RetrievalService
from retrieval_app.testing import tiny_setup


def _clusters(seed=0, per_class=200, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim))
    labels = np.repeat(np.arange(4), per_class)
    x = centres[labels] + 0.9 * rng.normal(size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize("ranker", sorted(RANKERS))
def test_marks_improve_every_ranker(ranker):
    vectors, labels = _clusters()
    runs = [simulate(vectors, labels, start, ranker, rounds=3) for start in (0, 250, 500, 750)]
    precision = np.array([[r["precision@100"] for r in run] for run in runs]).mean(axis=0)
    recall = np.array([[r["recall"] for r in run] for run in runs]).mean(axis=0)
    assert precision[3] > precision[0] and recall[3] > recall[0]  # the marks help
    assert 0 < recall[0] <= recall[3] <= 1


def test_ranked_leaves_out_the_excluded_rows_and_sorts():
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert ranked(scores, np.array([1]), 2).tolist() == [3, 2]
    assert ranked(scores, np.array([0, 1, 2, 3]), 5).tolist() == []


@pytest.fixture(scope="module")
def finder(tmp_path_factory):
    setup = tiny_setup(tmp_path_factory.getbasetemp())
    service = RetrievalService.open(setup.models, setup.index_dir)
    yield Finder(service), setup
    service.close()


def test_search_with_marks_excludes_the_marked_and_respects_filters(finder):
    finder, setup = finder
    session = finder.new_session(["2750/Forest/Forest_1.jpg"])
    first = finder.search("ijepa", session, k=5)
    assert len(first) == 5 and all(h["sample_id"] != "2750/Forest/Forest_1.jpg" for h in first)
    session.positives.append(finder.mark(first[0]["sample_id"]))
    session.negatives.append(finder.mark(first[1]["sample_id"]))
    again = {h["sample_id"] for h in finder.search("ijepa", session, k=10)}
    assert first[0]["sample_id"] not in again and first[1]["sample_id"] not in again  # marked: not shown again
    only_test = finder.search("mae", session, k=30, filters=parse_filters([], ["test"], "", "", ""))
    assert only_test and all(h["split"] == "test" for h in only_test)  # exact: only the allowed tiles


def test_find_all_counts_what_the_threshold_keeps(finder):
    finder, _ = finder
    session = finder.new_session(["2750/River/River_1.jpg"], ranker="rocchio")
    scores = np.sort(finder.scores("ijepa", session))[::-1]
    threshold = float(scores[9])
    found = finder.find_all("ijepa", session, threshold=threshold)
    assert found["count"] == len(found["hits"]) == 10 == finder.counts_above("ijepa", session, [threshold])[0]
    assert all(h["score"] >= threshold - 1e-6 for h in found["hits"])
    wrong = found["hits"][-1]["sample_id"]
    session.negatives.append(finder.mark(wrong))  # the ✗ moves the query: scores change
    again = finder.find_all("ijepa", session, threshold=threshold)
    assert wrong not in {h["sample_id"] for h in again["hits"]}  # a ✗ is never a find
    assert again["count"] == finder.counts_above("ijepa", session, [threshold])[0]
    assert len(finder.find_all("mae", session, top_n=4)["hits"]) == 4
    with pytest.raises(QueryError, match="threshold"):
        finder.find_all("ijepa", session)


def test_a_session_file_round_trips_and_reports_what_is_gone(finder, tmp_path):
    finder, _ = finder
    session = finder.new_session(["2750/Forest/Forest_1.jpg"], ranker="nearest", filters={"splits": ["train"]})
    session.positives.append(finder.mark("2750/Forest/Forest_2.jpg"))
    session.negatives.append(finder.mark("2750/River/River_2.jpg"))
    path = tmp_path / "session.json"
    path.write_text(session.to_json())
    loaded, missing = finder.load(path)
    assert loaded == session and missing == []
    data = json.loads(path.read_text())
    data["positives"].append({**data["positives"][0], "sample_id": "2750/Forest/gone.jpg", "file": "gone.jpg"})
    data["negatives"][0]["hash"] = "0" * 64  # the file changed since
    path.write_text(json.dumps(data))
    loaded, missing = finder.load(path)
    assert len(loaded.positives) == 1 and loaded.negatives == []
    assert any("gone.jpg" in m and "no longer" in m for m in missing) and any("changed" in m for m in missing)
    for broken, message in (("{not json", "not a readable JSON"), ('{"format": "x"}', "not a satjepa"),
                            (json.dumps({**data, "archive": "/elsewhere"}), "saved from the archive /elsewhere"),
                            (json.dumps({**data, "examples": [{"sample": 1}]}), "malformed"),
                            (json.dumps({**data, "ranker": "magic"}), "unknown ranker")):
        path.write_text(broken)
        with pytest.raises(SessionError, match=message):
            finder.load(path)


def test_an_upload_is_an_example_under_every_model(finder):
    finder, setup = finder
    tile = setup.archive / "2750" / "SeaLake" / "SeaLake_1.jpg"
    example = finder.upload_example(tile)
    assert set(example["vectors"]) == {"ijepa", "mae"} and example["name"] == "SeaLake_1.jpg"
    session = finder.new_session(uploads=[example])
    hits = finder.search("ijepa", session, k=3)
    assert hits[0]["sample_id"] == "2750/SeaLake/SeaLake_1.jpg"  # the upload's own archive copy comes first
    with pytest.raises(QueryError, match="at least one example"):
        finder.search("ijepa", finder.new_session())


def test_touching_finds_merge_into_polygons_with_their_tiles(tmp_path_factory):
    setup = tiny_setup(tmp_path_factory.getbasetemp())
    index_dir = tmp_path_factory.mktemp("located-finds")
    build(setup.models[0], LOCATED_ARCHIVE, index_dir)
    service = RetrievalService.open(setup.models[:1], index_dir)
    try:
        finder = Finder(service)
        start = next(s for s, in service.catalogue("ijepa").execute(
            "SELECT sample_id FROM images WHERE path LIKE '%naip-2020_r05c05%'").fetchall())
        session = finder.new_session([start])
        found = finder.find_all("ijepa", session, top_n=40)
        collection = finds_geojson({"ijepa": found})
        tiles = [t for f in collection["features"] for t in f["properties"]["tiles"]]
        assert sorted(tiles) == sorted(h["sample_id"] for h in found["hits"])  # every find in one polygon
        assert len(collection["features"]) < 40  # neighbouring chips merged
        for feature in collection["features"]:
            assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
            assert feature["properties"]["model"] == "ijepa" and feature["properties"]["best_score"] <= 1.0 + 1e-6
    finally:
        service.close()
