"""Eq. 6 and Eq. 7 on hand-made tensors: no diffusers needed."""

import math

import pytest
import torch
import torch.nn.functional as F

from daamlib import kernel


def naive(layer_maps, size):
    """Upsample every map of every step (and head) of every layer separately, then sum."""
    total = 0
    for maps in layer_maps:
        flat = maps.reshape(-1, *maps.shape[-3:])  # [steps*(heads), T, h, w]
        for m in flat:
            total = total + F.interpolate(m[None], size=size, mode="bicubic", align_corners=False)[0]
    return total.clamp(min=0)


def test_aggregate_equals_naive_upsample_then_sum():
    g = torch.Generator().manual_seed(0)
    layers = [torch.rand(3, 5, 8, 8, generator=g), torch.rand(3, 5, 4, 4, generator=g),
              torch.rand(3, 2, 5, 8, 8, generator=g), torch.rand(3, 5, 2, 3, generator=g)]
    fast = kernel.aggregate(layers, (32, 48))
    ref = naive(layers, (32, 48))
    assert fast.shape == (5, 32, 48)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


def test_upsample_is_bicubic_and_keeps_leading_axes():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = kernel.upsample(x, (8, 8))
    torch.testing.assert_close(out, F.interpolate(x, size=(8, 8), mode="bicubic", align_corners=False))


def test_aggregate_clamps_bicubic_undershoot_once():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0  # a spike: bicubic rings below zero around it
    raw = kernel.aggregate([x], (16, 16), clamp=False)
    assert raw.min() < 0
    assert kernel.aggregate([x], (16, 16)).min() == 0


def test_aggregate_rejects_empty_selection_and_mismatched_tokens():
    with pytest.raises(ValueError, match="selection is empty"):
        kernel.aggregate([], (8, 8))
    with pytest.raises(ValueError, match="number of tokens"):
        kernel.aggregate([torch.rand(1, 3, 2, 2), torch.rand(1, 4, 2, 2)], (8, 8))


def test_binarize_eq7_max_vs_minmax():
    heat = torch.tensor([[0.8, 0.9], [0.95, 1.0]])  # low contrast, as on small models
    # Eq. 7 as printed: D >= 0.5 * max -> everything
    assert kernel.binarize(heat, 0.5, mode="max").all()
    # min-max normalised first (released code): (D - .8) / .2 >= .5 -> the top two
    assert kernel.binarize(heat, 0.5, mode="minmax").tolist() == [[False, False], [True, True]]


@pytest.mark.parametrize("tau", [-0.1, 1.01, math.nan, 2])
def test_threshold_outside_unit_interval_is_refused(tau):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        kernel.binarize(torch.rand(4, 4), tau)


def test_all_zero_and_constant_maps_give_empty_masks_without_nan():
    for heat in (torch.zeros(4, 4), torch.full((4, 4), 3.0)):
        assert not kernel.binarize(heat, 0.4, mode="minmax").any()
        assert not torch.isnan(kernel.normalize(heat)).any()
    assert not kernel.binarize(torch.zeros(4, 4), 0.0, mode="max").any()


def test_nan_map_raises():
    heat = torch.rand(4, 4)
    heat[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        kernel.binarize(heat, 0.4)


def test_word_map_is_the_mean_of_its_tokens():
    maps = torch.stack([torch.full((2, 2), float(i)) for i in range(4)])
    torch.testing.assert_close(kernel.word_map(maps, [1, 3]), torch.full((2, 2), 2.0))


@pytest.mark.parametrize("h, w, H, W", [(4, 4, 8, 8), (8, 12, 64, 96), (3, 5, 17, 40), (64, 64, 512, 512), (1, 2, 4, 4)])
def test_separable_upsample_equals_torch_bicubic(h, w, H, W):
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    want = F.interpolate(x, size=(H, W), mode="bicubic", align_corners=False)
    torch.testing.assert_close(kernel.upsample(x, (H, W)), want, rtol=1e-5, atol=1e-6)
