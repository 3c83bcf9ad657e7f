"""Capture on tiny SD-1, SD-2 and SDXL pipelines: unchanged images, maps equal to a naive reference."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor

from conftest import run
from daamlib import TraceError, UnsupportedPipelineError, trace
from daamlib.trace import cross_attention_modules

KINDS = ["sd1", "sd2", "sdxl"]


class NaiveRecorder:
    """An independent reference: diffusers' classic AttnProcessor with every cross-attention
    probability kept (all heads, all 77 tokens, both CFG halves), upsampled map by map."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __enter__(self):
        self.original = self.pipe.unet.attn_processors
        mods = cross_attention_modules(self.pipe.unet)
        self.pipe.unet.set_attn_processor({**self.original, **{n: AttnProcessor() for n in mods}})
        for name, m in mods.items():
            def scores(q, k, mask=None, _m=m, _name=name):
                p = type(_m).get_attention_scores(_m, q, k, mask)
                self.calls.append((_name, p.detach().clone()))
                return p
            m.get_attention_scores = scores
        self.mods = mods
        return self

    def __exit__(self, *exc):
        for m in self.mods.values():
            del m.get_attention_scores
        self.pipe.unet.set_attn_processor(dict(self.original))

    def token_maps(self, image_index, n_images, cfg, n_tokens, latent, size, heads_of, chunk=None):
        """``chunk``: (the conditional chunk, chunks in the batch), for batches other than [uncond, cond] or [cond]."""
        total = 0
        for name, p in self.calls:
            heads = heads_of[name]
            B = p.shape[0] // heads
            p = p.reshape(B, heads, *p.shape[1:])  # [B, heads, N, 77]
            if chunk is not None:
                n = B // chunk[1]
                cond = p[chunk[0] * n:(chunk[0] + 1) * n]
            else:
                cond = p[B // 2:] if cfg else p
            assert cond.shape[0] == n_images
            N = p.shape[2]
            h, w = next((math.ceil(latent[0] / 2**k), math.ceil(latent[1] / 2**k)) for k in range(8)
                        if math.ceil(latent[0] / 2**k) * math.ceil(latent[1] / 2**k) == N)
            for head in range(heads):
                m = cond[image_index, head, :, :n_tokens].T.reshape(n_tokens, h, w)
                total = total + F.interpolate(m[None], size=size, mode="bicubic", align_corners=False)[0]
        return total.clamp(min=0)


def reference(pipe, prompt, seed=0, image_index=0, **kw):
    with NaiveRecorder(pipe) as rec:
        images = run(pipe, prompt, seed=seed, **kw)
    return rec, images


def heads_of(pipe):
    return {n: m.heads for n, m in cross_attention_modules(pipe.unet).items()}


def check_against_reference(pipe, prompt, seed=0, image_index=0, fused=True, **kw):
    rec, ref_images = reference(pipe, prompt, seed, **kw)
    with trace(pipe, fused=fused) as tc:
        images = run(pipe, prompt, seed=seed, **kw)
    # the trace must not change the image
    assert (images - ref_images).abs().max() <= 1e-5
    hm = tc.heat_maps(image_index)
    n_images = images.shape[0]
    cfg = kw.get("guidance_scale", 5.0) > 1
    latent = tc.generations[-1].latent_size
    want = rec.token_maps(image_index, n_images, cfg, len(hm.tokens), latent, hm.size, heads_of(pipe))
    got = hm.token_maps()
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    return tc, hm


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_maps_equal_naive_reference_and_image_unchanged(tiny, kind, fused):
    tc, hm = check_against_reference(tiny(kind), "a giraffe and a zebra", fused=fused)
    assert hm.tokens[0] == "<|startoftext|>" and hm.tokens[-1] == "<|endoftext|>"
    assert hm.size == (64, 64)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_guidance_off_records_the_whole_batch(tiny, kind, fused):
    tc, hm = check_against_reference(tiny(kind), "a red circle", guidance_scale=1.0, fused=fused)
    assert not tc.generations[-1].guidance


def test_several_images_per_prompt_and_negative_prompt(tiny):
    pipe = tiny("sd2")
    for i in range(3):
        check_against_reference(pipe, "a photo of a cat", image_index=i, num_images_per_prompt=3,
                                negative_prompt="a blurry dog")


def test_list_of_prompts_of_different_lengths(tiny):
    pipe = tiny("sd1")
    prompts = ["a cat", "a giraffe and a zebra standing in a field"]
    for i, p in enumerate(prompts):
        tc, hm = check_against_reference(pipe, prompts, image_index=i)
        assert hm.prompt == p
        assert len(hm.tokens) == len(pipe.tokenizer(p).input_ids)


def test_batched_maps_equal_single_prompt_runs(tiny):
    pipe = tiny("sd1")
    prompts = ["a cat", "a red circle above a blue square"]
    with trace(pipe) as tc:
        batch = run(pipe, prompts, seed=[1, 2])
    for i, (p, s) in enumerate(zip(prompts, [1, 2])):
        with trace(pipe) as single:
            image = run(pipe, p, seed=s)
        assert (batch[i] - image[0]).abs().max() <= 1e-5
        torch.testing.assert_close(tc.heat_maps(i).token_maps(), single.heat_maps(0).token_maps(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sd2", "sdxl"])
def test_non_square_latents(tiny, kind):
    # the tiny VAE downsamples by 2: a 128×192 image has 64×96 latents
    tc, hm = check_against_reference(tiny(kind), "a bird over the sea", height=128, width=192)
    assert hm.size == (128, 192)
    assert hm["bird"].heat.shape == (128, 192)
    assert tc.generations[-1].latent_size == (64, 96)


def test_keep_heads_sums_to_the_head_summed_record(tiny):
    pipe = tiny("sd2")
    with trace(pipe, keep_heads=True) as tc:
        run(pipe, "a cat")
    with trace(pipe) as tc2:
        run(pipe, "a cat")
    hm, hm2 = tc.heat_maps(0), tc2.heat_maps(0)
    assert hm.heads_kept and not hm2.heads_kept
    for name in hm.layers:
        torch.testing.assert_close(hm.maps[name].sum(1), hm2.maps[name], rtol=1e-5, atol=1e-6)
    one_head = hm.select(heads=[0])
    assert all(m.shape[1] == 1 for m in one_head.maps.values())


def test_storage_is_per_step_and_layer_at_native_resolution(tiny):
    pipe = tiny("sd1")
    with trace(pipe) as tc:
        run(pipe, "a cat", num_inference_steps=3)
    hm = tc.heat_maps(0)
    assert len(hm.layers) == len(cross_attention_modules(pipe.unet))
    for name, m in hm.maps.items():
        assert m.dtype == torch.float32
        assert m.shape[:2] == (3, len(hm.tokens))  # steps, tokens (start, a, cat, end)
    assert sorted({m.shape[-1] for m in hm.maps.values()}) == [8, 16, 32]
    assert len(hm.timesteps) == 3 and hm.timesteps[0] > hm.timesteps[-1]


def test_post_hoc_selection_equals_aggregating_the_subset(tiny):
    pipe = tiny("sd1")
    with trace(pipe) as tc:
        run(pipe, "a cat", num_inference_steps=4)
    hm = tc.heat_maps(0)
    from daamlib.kernel import aggregate

    first = hm.select(steps=range(2))
    torch.testing.assert_close(first.token_maps(), aggregate([m[:2] for m in hm.maps.values()], hm.size))
    assert first.steps == [0, 1]
    last = hm.select(steps=slice(-1, None))
    assert last.steps == [3]
    coarse = hm.select(resolutions=[8])
    assert coarse.resolutions == [(8, 8)]
    by_name = hm.select(layers="*up_blocks*")
    assert by_name.layers and all("up_blocks" in n for n in by_name.layers)
    with pytest.raises(KeyError, match="no layer has resolution"):
        hm.select(resolutions=[3])
    with pytest.raises(IndexError, match="out of range"):
        hm.select(steps=[7])
    with pytest.raises(ValueError, match="keep_heads=True"):
        hm.select(heads=[0])


def test_processors_restored_after_an_exception_and_next_trace_works(tiny):
    pipe = tiny("sd1")
    before = pipe.unet.attn_processors
    with pytest.raises(RuntimeError, match="boom"):
        with trace(pipe):
            during = pipe.unet.attn_processors
            raise RuntimeError("boom")
    after = pipe.unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    assert "encode_prompt" not in vars(pipe) and not hasattr(pipe, "_daam_trace")
    # self-attention stayed on its fast path during the trace; cross-attention was swapped
    cross = set(cross_attention_modules(pipe.unet))
    assert all(during[k] is before[k] for k in before if k not in cross)
    assert all(type(during[k]).__name__ == "RecordingAttnProcessor" for k in cross)
    with trace(pipe) as tc:
        run(pipe, "a cat")
    assert tc.heat_maps(0)["cat"].heat.shape == (64, 64)


def test_generation_error_inside_trace_restores(tiny):
    pipe = tiny("sd1")
    before = pipe.unet.attn_processors
    def fail(*args):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C after the first step

    with pytest.raises(KeyboardInterrupt):
        with trace(pipe):
            run(pipe, "a cat", callback_on_step_end=fail)
    assert all(pipe.unet.attn_processors[k] is before[k] for k in before)


def test_nested_trace_is_refused(tiny):
    pipe = tiny("sd1")
    with trace(pipe):
        with pytest.raises(TraceError, match="already being traced"):
            with trace(pipe):
                pass
    with trace(pipe):  # and the outer one cleaned up
        pass


def test_heat_maps_before_generation_and_unsupported_pipeline(tiny):
    with trace(tiny("sd1")) as tc:
        with pytest.raises(TraceError, match="no generation was recorded yet"):
            tc.heat_maps(0)

    class NotAPipeline:
        unet = torch.nn.Linear(2, 2)

    with pytest.raises(UnsupportedPipelineError, match="StableDiffusionPipeline"):
        with trace(NotAPipeline()):
            pass


def test_long_prompt_warns_at_generation(tiny):
    pipe = tiny("sd1")
    prompt = " ".join(["cat"] * 80) + " zebra"
    with trace(pipe) as tc, pytest.warns(UserWarning, match="longer than the text encoder"):
        run(pipe, prompt, num_inference_steps=1)
    hm = tc.heat_maps(0)
    assert len(hm.tokens) == 77
    with pytest.raises(KeyError, match="limit of 77 tokens"):
        hm["zebra"]


def test_from_pretrained_round_trip_loads_and_traces(tiny, tmp_path):
    from daamlib import generate, load_pipeline

    pipe = tiny("sd2")
    pipe.save_pretrained(tmp_path / "m")
    loaded = load_pipeline(str(tmp_path / "m"))
    a = run(pipe, "a cat")
    b = run(loaded, "a cat")
    assert (a - b).abs().max() <= 1e-5
    hm = generate(loaded, "a cat", seed=0, steps=2)
    assert hm.words == ["a", "cat"] and hm.image.shape == (64, 64, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_traced_image_equals_untraced_default_attention(tiny, kind):
    pipe = tiny(kind)  # default processors: AttnProcessor2_0 (fused SDPA)
    plain = run(pipe, ["a cat", "a red circle above a blue square"], seed=[0, 1], num_inference_steps=4)
    for fused in (True, False):
        with trace(pipe, fused=fused) as tc:
            traced = run(pipe, ["a cat", "a red circle above a blue square"], seed=[0, 1], num_inference_steps=4)
        assert (plain - traced).abs().max() <= 1e-5
        assert not tc._rec._buffers  # the work tensors are freed with the block, the maps kept
        maps = tc.heat_maps(1).token_maps()
        if fused:
            fused_maps = maps
    torch.testing.assert_close(maps, fused_maps, rtol=1e-5, atol=1e-5 * fused_maps.abs().max().item())



def _own_processor_named_as_diffusers():
    from diffusers.models.attention_processor import AttnProcessor2_0

    class AttnProcessor2_0(AttnProcessor2_0):  # noqa: F811  the user's own, under diffusers' name
        def __call__(self, attn, hidden_states, *args, **kwargs):
            return super().__call__(attn, hidden_states, *args, **kwargs) * 1.5

    return AttnProcessor2_0


def _reweighting():
    from diffusers.models.attention_processor import AttnProcessor2_0

    class Reweighting(AttnProcessor2_0):
        pass

    return Reweighting


@pytest.mark.parametrize("make, name", [(_reweighting, "Reweighting from test_trace"),
                                        (_own_processor_named_as_diffusers, "AttnProcessor2_0 from test_trace")])
def test_a_users_own_processor_is_refused_not_bypassed(tiny, make, name):
    """Tracing replaces cross-attention processors; with a processor of the user's own that would silently
    generate another image, so trace refuses and names it — by class, not by name: one that reuses diffusers'
    class name is the user's too."""
    from daamlib import TraceError, trace

    own = make()
    pipe = tiny("sd1")
    before = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor({k: own() for k in before})
    try:
        with pytest.raises(TraceError, match=rf"processors of your own \({name}\).*set_default_attn_processor"):
            with trace(pipe):
                pass
        assert all(type(p) is own for p in pipe.unet.attn_processors.values())  # untouched
    finally:
        pipe.unet.set_attn_processor(before)


def test_encode_prompt_override_is_restored_and_shared_unets_refused(tiny):
    from daamlib import TraceError, trace

    pipe = tiny("sd1")
    calls = []
    original = pipe.encode_prompt

    def mine(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    pipe.encode_prompt = mine
    try:
        with trace(pipe):
            pipe("a cat", num_inference_steps=1, output_type="pt")
        assert calls and pipe.encode_prompt is mine  # called through, and put back exactly
    finally:
        del pipe.encode_prompt
    twin = type(pipe)(**pipe.components)  # a second pipeline around the same UNet
    with trace(pipe):
        with pytest.raises(TraceError, match="UNet is already being traced through another pipeline"):
            with trace(twin):
                pass


def test_an_interrupted_generation_says_so(tiny):
    from daamlib import trace

    pipe = tiny("sd1")

    def stop_after_two(p, step, timestep, kwargs):
        if step == 1:
            p._interrupt = True
        return kwargs

    with trace(pipe) as tc:
        out = pipe("a cat", num_inference_steps=5, output_type="pt", callback_on_step_end=stop_after_two)
    with pytest.warns(UserWarning, match="interrupted: its maps sum 2 of the 5 steps"):
        hm = tc.heat_maps(0, image=out.images[0])
    assert hm.steps_completed == 2 and hm.steps_expected == 5


def test_sdxl_prompt_2_that_differs_is_flagged(tiny):
    from daamlib import trace

    pipe = tiny("sdxl")
    with trace(pipe):
        with pytest.warns(UserWarning, match="prompt_2 differs from prompt"):
            pipe("a cat", prompt_2="a dog", num_inference_steps=1, output_type="pt")


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_traced_images_are_bit_identical_on_a_cpu(tiny, kind):
    """Without a store or replay, the recorder runs the model's own fused kernel for the whole batch (and reads the
    probabilities from its log-sum-exp): the traced image is the untraced one, bit for bit, CFG on and off."""
    from daamlib import trace

    pipe = tiny(kind)
    for guidance in (1.0, 7.5):
        plain = run(pipe, ["a cat", "a red circle above a blue square"], seed=[0, 1], guidance_scale=guidance)
        with trace(pipe):
            traced = run(pipe, ["a cat", "a red circle above a blue square"], seed=[0, 1], guidance_scale=guidance)
        assert torch.equal(plain, traced)


def test_a_users_patched_sdpa_computes_cross_attention_too(tiny):
    """A user who plugged in their own kernel by patching F.scaled_dot_product_attention: it computes the traced
    cross-attention as it does untraced (the same image, the same number of calls), fused or not, and the maps from
    LSE computed beside it equal the explicit softmax's (fused=False)."""
    import torch.nn.functional as F

    from daamlib import trace

    pipe = tiny("sd1")
    torch_sdpa, calls = F.scaled_dot_product_attention, []

    def mine(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        calls.append(1)
        return torch_sdpa(query.double(), key.double(), value.double(), attn_mask=attn_mask, scale=scale).to(query.dtype)

    F.scaled_dot_product_attention = mine
    maps = {}
    try:
        plain = run(pipe, "a red circle above a blue square")
        untraced_calls = len(calls)
        for fused in (True, False):
            with trace(pipe, fused=fused) as tc:
                traced = run(pipe, "a red circle above a blue square")
            assert torch.equal(plain, traced)
            maps[fused] = tc.heat_maps(0).token_maps()
        assert F.scaled_dot_product_attention is mine
    finally:
        F.scaled_dot_product_attention = torch_sdpa
    assert untraced_calls > 0 and len(calls) == 3 * untraced_calls
    torch.testing.assert_close(maps[True], maps[False], rtol=1e-4, atol=1e-5 * maps[False].abs().max().item())


@pytest.mark.parametrize("guidance, chunk", [(5.0, (1, 3)), (1.0, (0, 2))], ids=["cfg+pag", "pag"])
def test_perturbed_attention_guidance_records_the_conditional_chunk_only(tiny, guidance, chunk):
    """PAG batches [uncond, cond, perturbed] (or [cond, perturbed] without CFG): only the conditional chunk is
    recorded, and the maps equal the naive reference's for it; the image is unchanged."""
    from diffusers import StableDiffusionPAGPipeline

    from daamlib import trace

    base = tiny("sd1")
    pipe = StableDiffusionPAGPipeline(**base.components, pag_applied_layers=["mid"])
    pipe.set_progress_bar_config(disable=True)
    kw = dict(guidance_scale=guidance, pag_scale=3.0)
    rec, ref_images = reference(pipe, ["a cat", "a red circle above a blue square"], seed=[0, 1], **kw)
    with trace(pipe) as tc:
        images = run(pipe, ["a cat", "a red circle above a blue square"], seed=[0, 1], **kw)
    assert (images - ref_images).abs().max() <= 1e-5
    for i in range(2):
        hm = tc.heat_maps(i)
        want = rec.token_maps(i, 2, guidance > 1, len(hm.tokens), tc.generations[-1].latent_size, hm.size,
                              heads_of(pipe), chunk)
        torch.testing.assert_close(hm.token_maps(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
