"""Export: ONNX encoder with a dynamic batch axis and a model card, matching PyTorch on real images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from indexing.testing import write_archive
from training.distributed import device_name
from training.encoder import ExportedEncoder
from training.engine import pretrain
from training.export import export_run, load_run_encoder
from test_training import tiny_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    archive = write_archive(root / "archive", per_class=48)
    pretrain(tiny_config("ijepa", epochs=1, monitor={"every": 0}), str(archive), root / "run", show_progress=False)
    card = export_run(root / "run", root / "exported", check_images=8)
    return root, archive, card


def test_model_card_describes_the_model(exported):
    root, archive, card = exported
    on_disk = json.loads((root / "exported" / "model_card.json").read_text())
    assert on_disk == card
    assert card["method"] == "ijepa" and card["input_size"] == 64 and card["bands"] == 3
    assert card["embedding_dim"] == 48 and card["token_grid"] == [8, 8]
    assert len(card["normalisation"]["mean"]) == 3 and card["training_data"] == str(archive)
    assert card["epochs"] == 1.0 and "target encoder" in card["pooling"]
    assert card["training_device"] == device_name(torch.device("cpu"))  # the hardware it was trained on
    objective = card["objective"]  # how it was trained: the method's settings and the rate
    assert objective["regularizer"] == "none" and objective["pred_depth"] == 2 and objective["lr_per_256"] > 0
    assert card["parity"]["max_abs_diff"] <= 1e-4
    assert card["centre"]["images"] == 72 and len(card["centre"]["vector"]) == 48  # the train split


def test_exported_embeddings_are_centred_on_the_training_images(exported):
    from training.data import open_archive
    root, archive, card = exported
    train = open_archive(archive, split="train")
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    embeddings = ExportedEncoder(root / "exported").embed(images)  # [72, 48]
    assert np.abs(embeddings.mean(axis=0)).max() < 1e-4 < np.abs(embeddings).mean()


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runtime_matches_pytorch_for_any_batch(exported, batch):
    root, _, _ = exported
    encoder, _ = load_run_encoder(root / "run")
    images = torch.rand(batch, 3, 64, 64)
    with torch.no_grad():
        expected, expected_tokens = encoder(images)
    expected = expected - torch.tensor(exported[2]["centre"]["vector"])  # the export centres embeddings
    runtime = ExportedEncoder(root / "exported")
    embedding, tokens = runtime.run(images)
    assert embedding.shape == (batch, 48) and tokens.shape == (batch, 64, 48)
    np.testing.assert_allclose(embedding, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(tokens, expected_tokens.numpy(), atol=1e-4)


def test_exported_encoder_resizes_and_checks_bands(exported):
    root, _, _ = exported
    runtime = ExportedEncoder(root / "exported")
    assert runtime.embed(torch.rand(2, 3, 100, 80)).shape == (2, 48)
    with pytest.raises(ValueError, match="takes 3 bands"):
        runtime.embed(torch.rand(1, 4, 64, 64))


def test_onnx_runtime_threads_follow_omp_num_threads_unless_given(exported, monkeypatch):
    root = exported[0]

    def intra_op_threads(**kwargs) -> int:
        return ExportedEncoder(root / "exported", **kwargs).session.get_session_options().intra_op_num_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert intra_op_threads() == 1  # e.g. an evaluation sharing the machine with a one-thread training run
    assert intra_op_threads(threads=2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert intra_op_threads() == min(os.cpu_count() or 1, 8)


def test_export_on_real_eurosat_images(shared_data, tmp_path):
    pretrain(tiny_config("mae", epochs=1, monitor={"every": 0}), str(shared_data / "eurosat-rgb"), tmp_path / "run",
             max_steps=2, show_progress=False)
    card = export_run(tmp_path / "run", tmp_path / "exported", check_images=16)
    assert card["parity"]["images"] == 16 and card["parity"]["max_abs_diff"] <= 1e-4


def test_missing_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m training pretrain"):
        export_run(tmp_path / "nothing", tmp_path / "out")


def test_last_blocks_and_whitening_are_folded_into_the_graph(exported, tmp_path):
    from training.data import open_archive
    root, archive, _ = exported
    card = export_run(root / "run", tmp_path / "whitened", check_images=8, last_blocks=2, whiten=True)
    assert card["embedding_dim"] == 96 and card["last_blocks"] == 2 and card["whitening"]["images"] == 72
    assert "last 2 blocks" in card["pooling"] and "whitened" in card["pooling"]
    assert card["parity"]["max_abs_diff"] <= 1e-4
    train = open_archive(archive, split="train")
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    embeddings = ExportedEncoder(tmp_path / "whitened").embed(images).astype(np.float64)  # [72, 96]
    # Whitened on these images: centred, uncorrelated, variances lambda / (lambda + eps lambda_max) <= 1 and the
    # strongest direction at 1 / (1 + eps).
    cov = np.cov(embeddings.T)
    assert np.abs(embeddings.mean(axis=0)).max() < 1e-3
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-3
    assert np.diag(cov).max() == pytest.approx(1 / 1.01, rel=1e-3) and np.diag(cov).max() <= 1


def test_masked_vit_on_all_patches_is_timms_forward_features():
    from training.models import MaskedViT

    vit = MaskedViT(tiny_config("mae").model).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(vit(images), vit.vit.forward_features(images))
        keep = torch.tensor([[0, 5, 9], [1, 2, 63]])
        # On a subset, the kept patches carry their own positions (not the same as the full forward).
        assert vit(images, keep).shape == (2, 3, 48)
