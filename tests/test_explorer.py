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
