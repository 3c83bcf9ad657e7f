"""Where SD3's image queries look (issue 25): the shares of the joint softmax by key group, checked against the exact
tracer's maps and against a block whose keys are all equal."""

import pytest
import torch

import daamlib
from daamlib.pipeline import model_defaults
from daamlib.studies.text_share import GROUPS, summarize_shares, text_shares
from daamlib.testing.tiny_dit import tiny_dit_pipeline

PROMPT = "a red circle"


def test_prompt_token_mass_equals_the_tracers_maps():
    """The tracer keeps each prompt token's probability, heads summed, per block and step; its mean over the image
    queries, summed over the CLIP tokens start to end, over the heads, is the prompt tokens' share."""
    pipe = tiny_dit_pipeline("sd3")
    shares = text_shares(pipe, PROMPT, seed=3, steps=2, guidance=5.0)
    hm = daamlib.generate(pipe, PROMPT, seed=3, steps=2, guidance_scale=5.0)
    n_clip = sum(t.startswith("clip:") for t in hm.tokens)
    heads = pipe.transformer.transformer_blocks[0].attn.heads
    assert len(shares) == 2 * 2 and (shares[list(GROUPS)].sum(1) - 1).abs().max() < 1e-5
    assert set(shares["after CLIP is"]) == {"T5 tokens"} and set(shares["keys after CLIP"]) == {256}
    for r in shares.to_dict("records"):
        maps = hm.maps[f"transformer_blocks.{r['block']}.attn.processor"][r["step"]]  # [tokens, h, w]
        want = maps[:n_clip].mean(dim=(1, 2)).sum().item() / heads
        assert r["prompt tokens"] == pytest.approx(want, rel=1e-4)
    table = summarize_shares(shares)
    assert list(table["block"]) == [0, 1]


def test_equal_keys_share_by_count():
    """With every key projection zero, every logit is 0: each group's share is its number of keys over all keys
    (image tokens, CLIP's start-to-end tokens, its padding, T5's rows)."""
    pipe = tiny_dit_pipeline("sd3")
    with torch.no_grad():
        for b in pipe.transformer.transformer_blocks:
            for lin in (b.attn.to_k, b.attn.add_k_proj):
                lin.weight.zero_()
                lin.bias.zero_()
    shares = text_shares(pipe, PROMPT, steps=1, guidance=1.0)
    d = model_defaults(pipe)
    n_img = (d.height // d.pixels_per_token) * (d.width // d.pixels_per_token)
    clip_len, n_prompt = pipe.tokenizer_max_length, len(pipe.tokenizer(PROMPT)["input_ids"])
    for r in shares.to_dict("records"):
        total = n_img + clip_len + r["keys after CLIP"]
        assert r["image"] == pytest.approx(n_img / total, rel=1e-5)
        assert r["prompt tokens"] == pytest.approx(n_prompt / total, rel=1e-5)
        assert r["CLIP padding"] == pytest.approx((clip_len - n_prompt) / total, rel=1e-5)
        assert r["after CLIP"] == pytest.approx(r["keys after CLIP"] / total, rel=1e-5)


def test_only_joint_attention_is_measured():
    with pytest.raises(ValueError, match="StableDiffusion3Pipeline's joint attention"):
        text_shares(tiny_dit_pipeline("flux"), PROMPT)
