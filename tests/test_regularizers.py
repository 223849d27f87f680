"""Anti-collapse regularisers: small on an isotropic Gaussian, large on a collapsed embedding, differentiable."""

import torch

from training.config import load_config
from training.masks import MultiBlockMaskGenerator
from training.models import build_model
from training.models.regularizers import sigreg, vicreg


def test_sigreg_separates_gaussian_from_collapsed():
    gen = torch.Generator().manual_seed(0)
    gaussian = torch.randn(512, 64, generator=gen)
    collapsed = torch.randn(512, 1, generator=gen) * torch.ones(1, 64)  # every dimension the same
    shrunk = 0.1 * gaussian  # isotropic but far from unit scale
    g = sigreg(gaussian, torch.Generator().manual_seed(1))
    assert g < 2.0  # ~ the statistic's null value
    assert sigreg(collapsed, torch.Generator().manual_seed(1)) > 10 * g
    assert sigreg(shrunk, torch.Generator().manual_seed(1)) > 10 * g


def test_vicreg_is_zero_for_whitened_and_positive_for_collapsed():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4096, 16, generator=gen)
    z = (z - z.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # exactly whitened
    assert vicreg(z) < 1e-3
    assert vicreg(torch.randn(4096, 1, generator=gen).repeat(1, 16) * 0.1) > 0.5


def test_ijepa_regularizer_adds_to_the_loss_and_reaches_the_context_encoder():
    masks = MultiBlockMaskGenerator((8, 8))(8, torch.Generator().manual_seed(0))
    images = torch.randn(8, 3, 64, 64)
    small = {"embed_dim": 48, "depth": 2, "num_heads": 2}
    losses = {}
    for name, weight in (("none", 0.0), ("sigreg", 0.5), ("vicreg", 0.5)):
        config = load_config(None, method="ijepa", model=small, ijepa={"pred_dim": 32, "pred_depth": 1,
                                                                       "regularizer": name, "reg_weight": weight})
        torch.manual_seed(0)
        model = build_model(config)
        loss = model(images, masks, torch.Generator().manual_seed(2))
        loss.backward()
        losses[name] = loss.item()
        assert model.context_encoder.vit.blocks[0].mlp.fc1.weight.grad is not None
    assert losses["sigreg"] > losses["none"] and losses["vicreg"] > losses["none"]
