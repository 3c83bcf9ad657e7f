"""Attention replay (prompt-to-prompt style) on tiny pipelines."""

import pytest
import torch

from conftest import run
from daamlib import trace
from daamlib.replay import AttentionStore, ReplayError


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_replaying_a_prompt_onto_itself_reproduces_the_image(tiny, guidance):
    pipe = tiny("sd1")
    store = AttentionStore()
    with trace(pipe, store=store) as tc:
        seed_image = run(pipe, "a red circle above a blue square", guidance_scale=guidance)
    assert len(store) == 2 * len(tc.layers) and store.nbytes > 0
    with trace(pipe, replay=store) as tc2:
        again = run(pipe, "a red circle above a blue square", guidance_scale=guidance)
    assert (again - seed_image).abs().max() <= 1e-5
    torch.testing.assert_close(tc2.heat_maps(0).token_maps(), tc.heat_maps(0).token_maps(), rtol=1e-5, atol=1e-6)


def test_replay_holds_attention_but_the_changed_word_still_acts(tiny):
    pipe = tiny("sd2")
    store = AttentionStore()
    with trace(pipe, store=store) as tc:
        seed_image = run(pipe, "a red circle above a blue square", seed=3)
    assert len(pipe.tokenizer.tokenize("yellow")) == len(pipe.tokenizer.tokenize("red"))  # words line up
    plain_variant = run(pipe, "a yellow circle above a blue square", seed=3)
    with trace(pipe, replay=store) as tc2:
        replayed = run(pipe, "a yellow circle above a blue square", seed=3)
    assert (replayed - seed_image).abs().max() > 1e-4  # the new word's values changed the image
    assert (replayed - plain_variant).abs().max() > 1e-4  # and the injected attention changed it too
    # the variant's maps are the seed's attention
    torch.testing.assert_close(tc2.heat_maps(0).token_maps(), tc.heat_maps(0).token_maps(), rtol=1e-5, atol=1e-6)


def test_partial_replay_only_covers_the_chosen_steps(tiny):
    pipe = tiny("sd1")
    full, early = AttentionStore(), AttentionStore(steps=[0])
    with trace(pipe, store=full):
        run(pipe, "a red circle", num_inference_steps=3)
    early.probs = full.probs
    with trace(pipe, replay=full):
        a = run(pipe, "a yellow circle", num_inference_steps=3)
    with trace(pipe, replay=early):
        b = run(pipe, "a yellow circle", num_inference_steps=3)
    assert (a - b).abs().max() > 1e-5
    kept = AttentionStore(steps=[0])
    with trace(pipe, store=kept):
        run(pipe, "a red circle", num_inference_steps=3)
    assert {s for s, _ in kept.probs} == {0} and len(kept) == len(full) // 3  # the other steps are not kept


def test_replay_into_a_prompt_of_another_token_length_is_refused(tiny):
    pipe = tiny("sd1")
    store = AttentionStore()
    with trace(pipe, store=store):
        run(pipe, "a red circle")
    assert len(pipe.tokenizer.tokenize("green")) != len(pipe.tokenizer.tokenize("red"))
    with pytest.raises(ReplayError, match="same token count"):
        with trace(pipe, replay=store):
            run(pipe, "a green circle")


def test_replay_into_a_different_size_is_refused(tiny):
    pipe = tiny("sd1")
    store = AttentionStore()
    with trace(pipe, store=store):
        run(pipe, "a red circle")
    with pytest.raises(ReplayError, match="same image size"):
        with trace(pipe, replay=store):
            run(pipe, "a red circle", height=32, width=32)
    with pytest.raises(ReplayError, match="same number of steps"):
        with trace(pipe, replay=store):
            run(pipe, "a red circle", num_inference_steps=3)


def test_replay_onto_another_model_is_refused_before_generating_and_says_so(tiny):
    """A store recorded with SD-1 replayed onto SD-2: the error names the models, not the prompt length or steps."""
    store = AttentionStore()
    with trace(tiny("sd1"), store=store):
        run(tiny("sd1"), "a red circle above a blue square")
    other = tiny("sd2")
    calls = []
    hook = other.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ReplayError, match=r"recorded with another model \(UNet2DConditionModel, config \w+\) "
                                              r"than this pipeline's \(UNet2DConditionModel, config \w+\)"):
            with trace(other, replay=store):
                run(other, "a red circle above a blue square")
    finally:
        hook.remove()
    assert not calls


def test_an_empty_prompt_plots_without_a_crash(tiny):
    import matplotlib

    matplotlib.use("Agg")
    pipe = tiny("sd1")
    with trace(pipe) as tc:
        out = pipe("", num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0))
    hm = tc.heat_maps(0)
    assert hm.words == []
    display = hm.plot()
    assert display.figure_._suptitle.get_text() == "(empty prompt)"
    tc.heat_maps(0, image=out.images[0]).plot()  # the image and the note
    import matplotlib.pyplot as plt

    plt.close("all")
