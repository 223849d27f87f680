"""mAP@k / P@k against hand-computed values and scikit-learn, and the evaluate command on a tiny archive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from indexing.__main__ import main
from indexing.metrics import average_precision_at_k, precision_at_k, ranked_relevance, retrieval_metrics
from indexing.probe import load_head, predict
from indexing.testing import cached_tiny_model, write_archive

EUROSAT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eurosat-rgb"


def test_ap_at_k_by_hand():
    rel = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=bool)
    # query 0, R = 2: (1/1 + 2/3) / min(5, 2) ; query 1: no hit ; query 2, R = 10: (1/2 + 2/3 + 3/4 + 4/5) / 5
    expected = [(1 + 2 / 3) / 2, 0.0, (1 / 2 + 2 / 3 + 3 / 4 + 4 / 5) / 5]
    np.testing.assert_allclose(average_precision_at_k(rel, np.array([2, 3, 10]), 5), expected)
    # k = 2 cuts the list: query 0: 1/1 / min(2, 2) ; query 2: 1/2 / 2
    np.testing.assert_allclose(average_precision_at_k(rel, np.array([2, 3, 10]), 2), [0.5, 0.0, 0.25])
    np.testing.assert_allclose(precision_at_k(rel, 5), [0.4, 0.0, 0.8])
    assert average_precision_at_k(rel[:1], np.array([0]), 5)[0] == 0.0  # no relevant image at all


def test_map_equals_sklearn_average_precision_when_k_covers_the_archive():
    rng = np.random.default_rng(0)
    archive, labels = rng.normal(size=(200, 16)), rng.integers(0, 4, 200)
    queries, query_labels = rng.normal(size=(30, 16)) + 0.3, rng.integers(0, 4, 30)
    relevance = ranked_relevance(queries, query_labels, archive, labels, k=200)
    ours = average_precision_at_k(relevance, np.bincount(labels)[query_labels], 200)
    a = archive / np.linalg.norm(archive, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    theirs = [average_precision_score(labels == c, a @ v) for v, c in zip(q, query_labels)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    metrics = retrieval_metrics(queries, query_labels, archive, labels, ks=(10, 200))
    assert metrics["mAP@200"] == pytest.approx(np.mean(theirs))


def test_evaluate_cli_prints_the_table_and_saves_the_head(tmp_path_factory, tmp_path):
    model = cached_tiny_model(tmp_path_factory.getbasetemp())
    archive = write_archive(tmp_path / "arch", per_class=8)
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(model), "--archive", str(archive), "--index-dir", str(tmp_path / "ix"),
                 "--json", str(report), "--label-fractions", "0.5", "1", "--labels-per-class", "1"]) == 0
    numbers = json.loads(report.read_text())
    rows = {model.name, "random-init", "raw-pixels", "colour-histogram", "colour-histogram-hellinger"}
    assert set(numbers["rows"]) == rows
    few = numbers["label_efficiency"]  # every row also with part of the labels: 1 per class, half, all
    assert set(few) == rows and set(few[model.name]) == {"50%", "100%", "1/class"}
    assert few[model.name]["1/class"]["labelled"] == 3 and few[model.name]["1/class"]["seeds"] == 3
    assert few[model.name]["100%"]["linear"] == pytest.approx(numbers["rows"][model.name]["linear"])
    assert "min(k, R)" in numbers["definition"]
    for row in numbers["rows"].values():
        assert 0 <= row["mAP@10"] <= 1 and 0 <= row["linear"] <= 1 and 0 <= row["kNN20"] <= 1
    head = load_head(model)
    assert head["weight"].shape == (3, 48) and head["classes"] == ["Forest", "River", "SeaLake"]
    assert Path(head["archive"]).resolve() == archive.resolve()  # where its labels came from
    features = np.load(tmp_path / "ix" / model.name / f"features-{archive.name}-test.npz")
    accuracy = (predict(head, features["x"]) == features["y"]).mean()
    assert accuracy == pytest.approx(numbers["rows"][model.name]["linear"])


def test_evaluating_transfer_leaves_the_models_head_alone(tmp_path_factory, tmp_path):
    model = tmp_path / "trained-elsewhere"
    shutil.copytree(cached_tiny_model(tmp_path_factory.getbasetemp()), model)
    (model / "linear_head.npz").unlink(missing_ok=True)
    card = json.loads((model / "model_card.json").read_text())
    (model / "model_card.json").write_text(json.dumps({**card, "training_data": str(tmp_path / "other-archive")}))
    archive = write_archive(tmp_path / "arch", per_class=8)
    assert main(["evaluate", "--model", str(model), "--archive", str(archive), "--index-dir", str(tmp_path / "ix"),
                 "--no-baselines"]) == 0
    assert not (model / "linear_head.npz").exists()  # the classes of this archive are not the model's
    # a mixed corpus's model (its card lists several archives) gets its head on any one of them
    (model / "model_card.json").write_text(json.dumps({**card, "training_data": [str(tmp_path / "other-archive"),
                                                                                 str(archive)]}))
    assert main(["evaluate", "--model", str(model), "--archive", str(archive), "--index-dir", str(tmp_path / "ix"),
                 "--no-baselines"]) == 0
    assert load_head(model)["classes"] == ["Forest", "River", "SeaLake"]


@pytest.mark.skipif(not (EUROSAT / "splits.csv").is_file(), reason=f"EuroSAT not found at {EUROSAT}")
def test_eurosat_splits_are_read_with_labels():
    from training.data import open_archive

    test = open_archive(EUROSAT, "test")
    assert len(test) == 5400 and len(test.classes) == 10


def test_colour_histogram_counts_each_band():
    from indexing.evaluate import colour_histogram

    images = torch.zeros(2, 3, 4, 4)
    images[0, 0] = 1.0  # band 0 all at the top of the range -> last bin
    images[1, :, :2] = 0.5  # half the pixels of every band in the middle bin
    features = colour_histogram(images, bins=4).reshape(2, 3, 4)
    assert np.allclose(features.sum(-1), 1.0)
    assert features[0, 0, 3] == 1.0 and features[0, 1, 0] == 1.0
    assert features[1, 2, 2] == 0.5 and features[1, 2, 0] == 0.5


def test_val_queries_for_model_selection_never_read_test(tmp_path_factory, tmp_path):
    model = cached_tiny_model(tmp_path_factory.getbasetemp())
    archive = write_archive(tmp_path / "arch", per_class=8)
    report = tmp_path / "val.json"
    head_before = (model / "linear_head.npz").stat().st_mtime_ns if (model / "linear_head.npz").exists() else None
    assert main(["evaluate", "--model", str(model), "--archive", str(archive), "--index-dir", str(tmp_path / "ix"),
                 "--json", str(report), "--queries", "val", "--no-baselines"]) == 0
    numbers = json.loads(report.read_text())
    assert numbers["queries"] == "val split" and numbers["tuning"] == "none (C=1)"
    assert not list((tmp_path / "ix").rglob("features-*-test.npz"))  # the test split was not embedded
    head_after = (model / "linear_head.npz").stat().st_mtime_ns if (model / "linear_head.npz").exists() else None
    assert head_after == head_before  # no head saved from a selection run


def test_per_class_accuracy_and_mistakes_by_hand():
    from indexing.per_class import per_class_accuracy, top_confusions

    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 2, 1, 1, 0, 2])
    np.testing.assert_allclose(per_class_accuracy(labels, predicted, 4), [0.25, 1.0, 0.5, np.nan])
    mistakes = top_confusions(labels, predicted, ["a", "b", "c", "d"], most=2)
    assert mistakes[0] == {"true": "a", "predicted": "b", "images": 2, "share": 0.5}
    assert (mistakes[1]["true"], mistakes[1]["predicted"], mistakes[1]["images"]) in {("a", "c", 1), ("c", "a", 1)}
    assert top_confusions(labels, labels, ["a", "b", "c", "d"]) == []


def test_evaluate_per_class_adds_up_to_each_rows_accuracy(tmp_path_factory, tmp_path):
    model = cached_tiny_model(tmp_path_factory.getbasetemp())
    archive = write_archive(tmp_path / "arch", per_class=8)
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(model), "--archive", str(archive), "--index-dir", str(tmp_path / "ix"),
                 "--json", str(report), "--no-heads", "--per-class"]) == 0
    numbers = json.loads(report.read_text())
    by_class, rows = numbers["per_class"], numbers["rows"]
    assert set(by_class) == set(rows)
    test_labels = np.load(tmp_path / "ix" / model.name / f"features-{archive.name}-test.npz")["y"]
    counts = np.bincount(test_labels)
    for name, row in rows.items():
        for method in ("linear", "kNN20"):  # the classes' accuracies, weighted by their images, are the row's
            accuracies = np.array(list(by_class[name][method].values()))
            assert np.dot(accuracies, counts) / counts.sum() == pytest.approx(row[method])
            wrong = sum(m["images"] for m in by_class[name]["confusions"][method])
            assert wrong <= round((1 - row[method]) * counts.sum())
