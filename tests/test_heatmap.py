"""Result objects: indexing, binarisation, plotting without global pyplot state."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from daamlib.words import AmbiguousWordError, WordNotFoundError  # noqa: E402


@pytest.fixture(scope="module")
def hm(traced):
    return traced("a giraffe and a zebra")


def test_index_by_word_occurrence_and_token(hm):
    assert hm.words == ["a", "giraffe", "and", "a", "zebra"]
    assert hm["giraffe"].heat.shape == (64, 64)
    torch.testing.assert_close(hm["a", 1].heat, hm.token(4).heat)
    torch.testing.assert_close(hm[2].heat, hm["giraffe"].heat)  # token 2 is the one-token word giraffe
    torch.testing.assert_close(hm["zebra"].heat, hm.token_maps()[[5, 6]].mean(0))
    with pytest.raises(AmbiguousWordError):
        hm["a"]
    with pytest.raises(WordNotFoundError, match="words are: a, giraffe, and, a, zebra"):
        hm["cat"]
    with pytest.raises(IndexError, match="out of range"):
        hm[99]
    assert [w.word.text for w in hm] == hm.words and len(hm) == 5


def test_single_word_path_equals_the_all_tokens_path(hm):
    from daamlib.heatmap import HeatMaps

    fresh = HeatMaps(hm.alignment, hm.maps, hm.size)  # nothing cached yet
    lone = fresh["zebra"].heat
    assert fresh._token_maps is None
    torch.testing.assert_close(lone, hm.token_maps()[[5, 6]].mean(0), rtol=1e-5, atol=1e-7)


def test_binarize_and_threshold_check(hm):
    m = hm["giraffe"].binarize(0.4)
    assert m.dtype == torch.bool and m.shape == (64, 64) and 0 < m.sum() < 64 * 64
    assert hm["giraffe"].binarize(0.0).all()
    assert hm["giraffe"].binarize(0.9).sum() < m.sum()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hm["giraffe"].binarize(1.5)


def test_plot_on_given_axes_touches_no_global_state(hm):
    fig, ax = plt.subplots()
    n = len(plt.get_fignums())
    out = hm["giraffe"].plot(ax=ax, threshold=0.4)
    assert out.ax_ is ax and out.figure_ is fig
    assert len(plt.get_fignums()) == n and plt.gca() is ax
    assert len(ax.images) == 1  # the image inside its mask
    hm["giraffe"].plot(ax=ax)
    assert len(ax.images) == 3  # + image and heat overlay
    grid = hm.plot()
    assert grid.figure_ is grid.ax_[0].figure
    assert len([a for a in grid.figure_.axes if a.images]) == 6  # image + 5 words
    plt.close("all")


def test_keys_items_word_at_and_to(traced):
    hm = traced("a cat and a dog", steps=2)
    assert hm.keys() == [("a", 0), "cat", "and", ("a", 1), "dog"]
    for key, wm in hm.items():
        assert torch.equal(hm[key].heat, wm.heat)
    assert hm.word_at(3).word.occurrence == 1 and torch.equal(hm.word_at(3).heat, hm["a", 1].heat)
    moved = hm.to("cpu")
    assert moved is not hm and moved.layers == hm.layers and moved.steps == hm.steps
    assert torch.equal(moved["dog"].heat, hm["dog"].heat) and moved.image is hm.image
