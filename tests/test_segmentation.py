"""Baselines and human-mask loading for the segmentation study."""

import numpy as np
import pytest
import torch
from PIL import Image

from daamlib.stats import mass_on_region
from daamlib.studies import segmentation as seg


def test_centre_blob_covers_the_requested_area():
    m = seg.centre_blob((200, 300), area=0.3)
    assert m.shape == (200, 300) and m[100, 150] and not m[0, 0]
    assert abs(m.float().mean().item() - 0.3) < 0.01


def test_colour_clusters_find_the_object_not_the_background():
    img = np.full((40, 40, 3), (30, 160, 40), np.uint8)  # grass
    img[10:25, 12:30] = (220, 30, 30)  # a red box
    fg = seg.colour_clusters(img, k=2)
    truth = torch.zeros(40, 40, dtype=torch.bool)
    truth[10:25, 12:30] = True
    assert torch.equal(fg, truth)


def test_mass_on_region():
    heat = torch.zeros(4, 4)
    heat[0, 0], heat[3, 3] = 3.0, 1.0
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[0, 0] = True
    assert mass_on_region(heat, region) == pytest.approx(0.75)
    assert np.isnan(mass_on_region(torch.zeros(4, 4), region))


def test_human_masks_layout(tmp_path):
    item = tmp_path / "000123"
    item.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(item / "image.png")
    m = np.zeros((8, 8), np.uint8)
    m[:4] = 255
    Image.fromarray(m).save(item / "giraffe.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[4:, :, 3] = 255  # the paper's .gt.png style: opaque = noun
    Image.fromarray(rgba).save(item / "zebra.png")
    masks = seg.load_human_masks(tmp_path)
    assert set(masks["000123"]) == {"giraffe", "zebra"}
    assert masks["000123"]["giraffe"][:4].all() and not masks["000123"]["giraffe"][4:].any()
    assert masks["000123"]["zebra"][4:].all() and not masks["000123"]["zebra"][:4].any()
    with pytest.raises(FileNotFoundError, match="<item_id>/<noun>.png"):
        seg.load_human_masks(tmp_path / "missing")


def test_human_masks_match_words_ignoring_case_and_name_the_strays(tmp_path, traced):
    hm = traced("a Giraffe and a zebra", steps=2)
    item = tmp_path / "x"
    item.mkdir()
    m = np.zeros((16, 16), np.uint8)
    m[:8] = 255
    for name in ("giraffe", "ZEBRA", "zebras"):
        Image.fromarray(m).save(item / f"{name}.png")
    gt, unmatched = seg.human_ground_truth(hm, item)
    assert sorted(gt) == [1, 4] and unmatched == ["zebras.png"]
    assert gt[1].shape == hm.size and gt[1][: hm.size[0] // 2].all() and not gt[1][hm.size[0] // 2:].any()
    assert seg.human_ground_truth(hm, tmp_path / "none") == ({}, [])
