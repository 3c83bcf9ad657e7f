"""Background-shift and map-spread measures on hand-made images."""

import numpy as np
import pytest
import torch

from daamlib.studies.adjectives import background_shift, hue_distance, spread_outside


def scene(bg_rgb):
    img = np.zeros((20, 20, 3), np.uint8)
    img[:] = bg_rgb
    img[5:15, 5:15] = (200, 30, 30)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    return img, mask


def test_hue_distance_is_circular():
    assert hue_distance(0.95, 0.05) == pytest.approx(36.0)
    assert hue_distance(0.0, 0.5) == pytest.approx(180.0)


def test_a_background_turning_blue_shifts_toward_blue_only():
    seed, mask = scene((40, 160, 40))  # green grass
    bluish, _ = scene((40, 130, 120))  # grass tinted toward blue
    same, _ = scene((40, 160, 40))
    to_blue = background_shift(seed, bluish, mask, (30, 60, 220))
    assert to_blue["hue_shift_deg"] > 20 and to_blue["toward_share"] == 1.0 and to_blue["pixel_diff"] > 0
    assert background_shift(seed, bluish, mask, (220, 200, 30))["hue_shift_deg"] < 0  # away from yellow
    assert to_blue["chroma_toward"] > 0 and background_shift(seed, bluish, mask, (220, 200, 30))["chroma_toward"] < 0
    none = background_shift(seed, same, mask, (30, 60, 220))
    assert none["hue_shift_deg"] == 0 and none["pixel_diff"] == 0 and none["chroma_toward"] == 0
    with pytest.raises(ValueError, match="no background"):
        background_shift(seed, same, np.ones((20, 20), bool), (0, 0, 255))


def test_grey_is_not_red():
    """matplotlib gives grey the hue 0 (red): a grey background turning red must count as moving
    toward red, and grey turning blue must not count as a 120° move away from red."""
    grey, mask = scene((128, 128, 128))
    reddish, _ = scene((190, 90, 90))
    bluish, _ = scene((90, 90, 190))
    red, blue = (220, 30, 30), (30, 60, 220)
    to_red = background_shift(grey, reddish, mask, red)
    assert np.isnan(to_red["hue_shift_deg"]) and to_red["coloured_pixels"] == 0  # no hue before: undefined
    assert to_red["chroma_toward"] > 0.2
    assert background_shift(grey, bluish, mask, blue)["chroma_toward"] > 0.2
    assert background_shift(grey, bluish, mask, red)["chroma_toward"] < 0
    assert background_shift(grey, grey, mask, red)["chroma_toward"] == 0


def test_spread_outside():
    _, mask = scene((0, 0, 0))
    heat = torch.zeros(20, 20)
    heat[5:15, 5:15] = 1.0
    assert spread_outside(heat, mask) == pytest.approx(0.0)
    heat[0, 0] = 100.0
    assert spread_outside(heat, mask) == pytest.approx(0.5)
