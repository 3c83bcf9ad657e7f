"""The ipywidgets explorer, driven without a browser by setting widget values."""

import pytest
import torch

from daamlib.explorer import Explorer


@pytest.fixture(scope="module")
def hm(traced):
    return traced("a giraffe and a zebra", steps=4)


def test_explorer_follows_its_widgets_without_regenerating(hm):
    ex = Explorer(hm, word="zebra")
    torch.testing.assert_close(ex.heat, hm["zebra"].heat)
    first_png = ex.image.value
    assert first_png[:4] == b"\x89PNG"

    ex.word.value = ("a", 1)  # the second "a"
    torch.testing.assert_close(ex.heat, hm["a", 1].heat)

    ex.threshold.value = 0.8
    assert torch.equal(ex.mask, hm["a", 1].binarize(0.8))
    ex.mode.value = "max"
    assert torch.equal(ex.mask, hm["a", 1].binarize(0.8, mode="max"))

    ex.steps.value = (2, 3)  # the last two steps only
    torch.testing.assert_close(ex.heat, hm.select(steps=[2, 3])["a", 1].heat)

    coarse = min(hm.resolutions, key=lambda r: r[0])
    ex.resolutions.value = (coarse,)
    torch.testing.assert_close(ex.heat, hm.select(steps=[2, 3], resolutions=[coarse])["a", 1].heat)

    ex.view.value = "mask"
    assert ex.image.value != first_png
    assert "steps 2–3" in ex.status.value

    ex.resolutions.value = ()
    assert "at least one" in ex.status.value


def test_tau_changes_the_heat_map_picture_and_non_square_images_keep_their_shape(traced):
    """In the heat-map view τ moves the outlined Eq. 7 mask, so the picture changes; a 64×96 image renders
    at its own aspect ratio, with a colour scale beside it."""
    from io import BytesIO

    from PIL import Image

    hm = traced("a giraffe and a zebra", steps=4)
    ex = Explorer(hm, word="zebra", threshold=0.2)
    before = ex.image.value
    ex.threshold.value = 0.7
    assert ex.view.value == "heat map" and ex.image.value != before

    from daamlib.heatmap import HeatMaps

    wide = HeatMaps(hm.alignment, {k: torch.nn.functional.interpolate(v, size=(v.shape[-2], v.shape[-1] * 3 // 2))
                                   for k, v in hm.maps.items()}, (64, 96), image=torch.rand(3, 64, 96))
    png = Image.open(BytesIO(Explorer(wide).image.value))
    w, h = png.size
    assert 1.5 < w / h < 1.9  # 3:2 image plus the colour bar


def test_a_transformers_layers_are_chosen_by_block():
    """A transformer's blocks share one patch grid, so the explorer offers them by depth, as hm.select(blocks=)."""
    import daamlib
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    hm = daamlib.generate(tiny_dit_pipeline("flux"), "a cat and a dog", steps=2, max_sequence_length=24)
    ex = Explorer(hm, word="dog")
    assert ex.by_block and ex.resolutions is None
    assert [label for label, _ in ex.blocks.options] == ["block 1", "block 2"]
    torch.testing.assert_close(ex.heat, hm["dog"].heat)
    ex.blocks.value = (1,)
    torch.testing.assert_close(ex.heat, hm.select(blocks=[1])["dog"].heat)
    assert "1 block(s)" in ex.status.value
    ex.blocks.value = ()
    assert "at least one layer block" in ex.status.value
