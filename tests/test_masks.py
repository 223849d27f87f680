"""I-JEPA multi-block masks and MAE random masks."""

import math

import pytest
import torch

from training.masks import MultiBlockMaskGenerator, random_masking_indices


def _blocks(grid=(14, 14), **kwargs):
    return MultiBlockMaskGenerator(grid, **kwargs)


def _bbox(indices: torch.Tensor, width: int) -> tuple[int, int, int]:
    rows, cols = indices // width, indices % width
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    return h, w, len(indices)


def test_counts_and_shapes_on_paper_grid():
    gen = torch.Generator().manual_seed(0)
    masks = _blocks()(32, gen)
    assert masks.targets.shape[:2] == (32, 4)
    assert masks.context.shape[0] == 32 and masks.context.shape[1] >= 4


def test_target_blocks_are_rectangles_with_paper_scale_and_aspect():
    grid = (16, 16)
    gen = torch.Generator().manual_seed(1)
    generator = _blocks(grid)
    for _ in range(20):
        masks = generator(4, gen)
        for blocks in masks.targets:
            for block in blocks:
                h, w, n = _bbox(block, grid[1])
                assert n == h * w  # a full rectangle
                # Rounding to whole patches lowers the area a little; it never exceeds the scale.
                assert 0.15 * 256 * 0.8 <= n <= int(0.2 * 256)
                assert 0.75 / 1.5 <= h / w <= 1.5 * 1.5


def test_context_and_targets_are_disjoint():
    gen = torch.Generator().manual_seed(2)
    masks = _blocks()(16, gen)
    for context, blocks in zip(masks.context, masks.targets):
        assert not set(context.tolist()) & set(blocks.flatten().tolist())
        assert len(set(context.tolist())) == len(context)  # no repeats
        assert torch.all(context[1:] > context[:-1])  # raster order


def test_context_scale_without_targets_is_close_to_context_block():
    # With tiny targets, the context is the context block (85-100 % of the grid) minus a few patches.
    gen = torch.Generator().manual_seed(3)
    masks = _blocks((16, 16), num_targets=1, target_scale=(0.01, 0.01))(8, gen)
    assert 0.85 * 256 * 0.9 - 2 <= masks.context.shape[1] <= 256


def test_deterministic_for_a_seed():
    a = _blocks()(8, torch.Generator().manual_seed(7))
    b = _blocks()(8, torch.Generator().manual_seed(7))
    c = _blocks()(8, torch.Generator().manual_seed(8))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (torch.equal(a.context, c.context) and torch.equal(a.targets, c.targets))


@pytest.mark.timeout(20)
def test_small_grid_with_paper_min_keep_never_hangs():
    # The official collator loops forever here (8x8 grid, min_keep 10): ours must return, with a context.
    generator = _blocks((8, 8), min_keep=10)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        masks = generator(64, gen)
        assert masks.context.shape[1] >= 1
        for context, blocks in zip(masks.context, masks.targets):
            assert not set(context.tolist()) & set(blocks.flatten().tolist())


def test_small_grid_follows_the_reference_rounding():
    # 8x8 grid: targets of floor(0.15..0.2 * 64) = 9..12 patches at most (never 16), a context block strictly
    # inside the grid (at most 7x7, as facebookresearch/ijepa), so at most 49 patches of context.
    generator = _blocks((8, 8))
    gen = torch.Generator().manual_seed(4)
    for _ in range(50):
        masks = generator(16, gen)
        assert 4 <= masks.targets.shape[2] <= 12
        assert masks.context.shape[1] <= 49


def test_impossible_configuration_is_refused():
    with pytest.raises(ValueError, match="leaving no context"):
        _blocks((4, 4), num_targets=4, target_scale=(0.3, 0.3))


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_mae_mask_ratio(ratio):
    keep, restore = random_masking_indices(16, 64, ratio, torch.Generator().manual_seed(0))
    assert keep.shape == (16, round(64 * (1 - ratio)))
    for row_keep, row_restore in zip(keep, restore):
        assert len(set(row_keep.tolist())) == keep.shape[1]
        assert sorted(row_restore.tolist()) == list(range(64))  # a permutation
    # Masked fraction is exactly the ratio (up to rounding).
    assert math.isclose(1 - keep.shape[1] / 64, ratio, abs_tol=1 / 64)
