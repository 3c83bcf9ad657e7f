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


GRASS, YELLOW, RED = (40, 160, 40), (240, 215, 40), (220, 40, 40)


class StrayTruth:
    """Ground truth for hand-made 32×32 images: the noun (word 2) is the square at [4:12, 4:12]; the objects are
    every pixel not grass."""

    has_masks, has_labels = True, False

    def noun_masks(self, record, hm):
        m = torch.zeros(32, 32, dtype=torch.bool)
        m[4:12, 4:12] = True
        return {2: m}

    def objects(self, record, hm):
        return torch.from_numpy(np.abs(hm.image.astype(int) - GRASS).sum(-1) > 60)


def test_a_stray_object_in_the_adjectives_colour_moves_only_the_named_background(tiny, tmp_path):
    """"a red square": the seed's square is yellow, the variant's red, and the variant also has a misdrawn red
    blob elsewhere. Outside the named square the background turns red; outside every object it does not move."""
    from types import SimpleNamespace

    from daamlib.studies.adjectives import AdjectiveRun

    seed_img = np.zeros((32, 32, 3), np.uint8)
    seed_img[:] = GRASS
    seed_img[4:12, 4:12] = YELLOW
    variant_img = seed_img.copy()
    variant_img[4:12, 4:12] = RED
    variant_img[20:28, 18:26] = RED  # the stray object, in the adjective's colour
    seed = SimpleNamespace(prompt="a yellow square", image=seed_img)
    variant = SimpleNamespace(prompt="a red square", image=variant_img)
    run = AdjectiveRun(tiny("sd1"), ["a {adj} circle above a square"], {"yellow": YELLOW, "red": RED}, tmp_path,
                       StrayTruth(), mask_source="truth", steps=2, grow=1)
    obj = StrayTruth().noun_masks(None, None)[2]
    named = run.object_region(obj, variant, 2)
    strict = run.object_region(obj, variant, 2, seed=seed)
    assert not named[22, 20] and strict[22, 20] and strict[4:12, 4:12].all()
    old, new = background_shift(seed_img, variant_img, named, RED), background_shift(seed_img, variant_img, strict, RED)
    assert old["chroma_toward"] > 0.01 and old["hue_shift_deg"] > 1
    assert new["chroma_toward"] == 0 and new["hue_shift_deg"] == 0 and new["pixel_diff"] == 0
    assert run.settings["background"].startswith("every object")

