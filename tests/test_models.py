"""The shared backbone, I-JEPA and MAE models."""

import torch

from training.config import load_config
from training.masks import MultiBlockMaskGenerator
from training.models import build_model, create_encoder
from training.models.mae import patchify, unpatchify


def _config(method, **kwargs):
    return load_config(None, method=method, model={"embed_dim": 48, "depth": 2, "num_heads": 2, **kwargs},
                       ijepa={"pred_dim": 32, "pred_depth": 2}, mae={"decoder_dim": 32, "decoder_depth": 1})


def test_backbone_is_timm_vit_without_class_token_and_frozen_sincos():
    encoder = create_encoder(_config("mae").model)
    assert encoder.cls_token is None and encoder.num_prefix_tokens == 0
    assert not encoder.pos_embed.requires_grad
    assert encoder(torch.randn(3, 3, 64, 64)).shape == (3, 48)


def test_any_number_of_bands():
    model = build_model(_config("mae", in_chans=6))
    loss, pred, mask = model(torch.randn(2, 6, 64, 64))
    assert pred.shape == (2, 64, 8 * 8 * 6) and torch.isfinite(loss)


def test_patchify_roundtrip_multiband():
    images = torch.randn(2, 5, 32, 48)
    patches = patchify(images, 8)
    assert patches.shape == (2, 4 * 6, 8 * 8 * 5)
    assert torch.equal(unpatchify(patches, 8, (4, 6), 5), images)


def test_mae_masks_three_quarters():
    model = build_model(_config("mae"))
    _, _, mask = model(torch.randn(4, 3, 64, 64), torch.Generator().manual_seed(0))
    assert mask.shape == (4, 64) and torch.all(mask.sum(1) == 48)


def test_ema_update_moves_target_toward_context():
    model = build_model(_config("ijepa"))
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target_encoder.parameters()]
    online = list(model.context_encoder.parameters())
    model.update_target(0.9)
    for b, t, o in zip(before, model.target_encoder.parameters(), online):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    frozen = [p.clone() for p in model.target_encoder.parameters()]
    model.update_target(1.0)  # momentum 1: unchanged
    for f, t in zip(frozen, model.target_encoder.parameters()):
        assert torch.equal(f, t)
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


def test_ijepa_loss_backpropagates_to_context_encoder_and_predictor_only():
    model = build_model(_config("ijepa"))
    masks = MultiBlockMaskGenerator(model.context_encoder.grid)(4, torch.Generator().manual_seed(0))
    loss = model(torch.randn(4, 3, 64, 64), masks)
    loss.backward()
    assert model.predictor.embed.weight.grad is not None
    assert model.context_encoder.vit.blocks[0].attn.qkv.weight.grad is not None
    assert all(p.grad is None for p in model.target_encoder.parameters())


def test_shared_context_predictor_matches_the_paper_predictor_in_its_first_block():
    # In one block a query token sees the context and its own block in both forms, so with a depth-1
    # predictor the two are the same function; deeper, the paper's context tokens also see the queries.
    from training.models.ijepa import Predictor

    torch.manual_seed(0)
    paper = Predictor((8, 8), embed_dim=48, pred_dim=32, depth=1, num_heads=2)
    shared = Predictor((8, 8), embed_dim=48, pred_dim=32, depth=1, num_heads=2, shared_context=True)
    shared.load_state_dict(paper.state_dict())
    masks = MultiBlockMaskGenerator((8, 8))(4, torch.Generator().manual_seed(0))
    context = torch.randn(4, masks.context.shape[1], 48)
    expected = paper(context, masks.context, masks.targets)
    torch.testing.assert_close(shared(context, masks.context, masks.targets), expected, rtol=1e-5, atol=1e-5)
    deep_paper = Predictor((8, 8), 48, 32, depth=2, num_heads=2)
    with torch.no_grad():
        for param in deep_paper.parameters():  # weights large enough for the second block's mixing to show
            param.normal_(0, 0.3)
    deep_shared = Predictor((8, 8), 48, 32, depth=2, num_heads=2, shared_context=True)
    deep_shared.load_state_dict(deep_paper.state_dict())
    assert not torch.allclose(deep_shared(context, masks.context, masks.targets),
                              deep_paper(context, masks.context, masks.targets), atol=1e-2)


def test_explicit_attention_is_the_same_function():
    from training.models import use_explicit_attention

    model = build_model(_config("ijepa"))
    images = torch.randn(2, 3, 64, 64)
    fused = model.target_encoder(images)
    use_explicit_attention(model)
    torch.testing.assert_close(model.target_encoder(images), fused, rtol=1e-5, atol=1e-5)
