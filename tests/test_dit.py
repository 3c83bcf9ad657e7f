"""Diffusion transformers (SD3, Flux.1, PixArt-Σ, Qwen-Image, Flux.2 [klein]): the maps against a naive reference, images unchanged, words
aligned as each pipeline tokenizes, guidance as each pipeline batches it."""

import math

import pytest
import torch
import torch.nn.functional as F

from daamlib import TraceError, UnsupportedPipelineError, generate, trace
from daamlib.kernel import aggregate

PROMPTS = ("a red cat and a blue dog", "two birds flying over the sea at sunset")  # a tuple: never rewritten


@pytest.fixture(scope="module")
def dit():
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = tiny_dit_pipeline(kind)
        return cache[kind]

    return get


def call_kwargs(kind, **kw):
    kw.setdefault("num_inference_steps", 2)
    kw.setdefault("output_type", "pt")
    if kind != "sd3":  # Flux.2 [dev]'s system message takes 36 tokens of the tiny tokenizer
        kw.setdefault("max_sequence_length", {"flux2-dev": 64, "zimage": 40}.get(kind, 24))
    if kind == "zimage":  # ZImagePipeline defaults to 1024² whatever the model; the tiny RoPE covers 64 px
        kw.setdefault("height", 64)
        kw.setdefault("width", 64)
    if kind in ("pixart", "sana"):
        kw.update(use_resolution_binning=False, clean_caption=False)
    return kw


class NaiveReference:
    """Every attention call inside the transformer, materialised: softmax(QKᵀ·scale + mask) over every key, in
    float64, every head kept. The model's own output is returned unchanged, so the trajectory is the plain one."""

    def __init__(self, pipe):
        self.pipe, self.calls, self.skips, self.inside = pipe, [], [], False

    def __enter__(self):
        original = F.scaled_dot_product_attention
        self.original = original

        def naive(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            q, k, v = query, key, value
            if self.inside:
                s = scale if scale is not None else q.shape[-1] ** -0.5
                logits = (q.double() @ k.double().transpose(-1, -2)) * s
                if attn_mask is not None:
                    m = attn_mask if attn_mask.dtype != torch.bool else torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(~attn_mask, -math.inf)
                    logits = logits + m.double()
                self.calls[-1].append(logits.softmax(-1))
            return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                            enable_gqa=enable_gqa)

        def pre(module, args, kwargs):
            self.inside = True
            self.calls.append([])
            self.skips.append(kwargs.get("skip_layers") is not None)
            self.context = kwargs["encoder_hidden_states"].shape[1] if "encoder_hidden_states" in kwargs else None

        def post(module, args, kwargs, out):
            self.inside = False

        F.scaled_dot_product_attention = naive
        self.hooks = [self.pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True),
                      self.pipe.transformer.register_forward_hook(post, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self.original
        for h in self.hooks:
            h.remove()

    def maps(self, kind, image_index, n_images, columns, grid, size, cfg, calls_per_step=1):
        """Σ over steps, blocks and heads of every head's bicubic upsampling: [tokens, H, W], clamped at 0 once.
        Skip-layer guidance's calls (the transformer given ``skip_layers``) are left out."""
        h, w = grid
        n_img = h * w
        total = None
        calls = [c for c, skip in zip(self.calls, self.skips) if not skip]
        for step_calls in calls[::calls_per_step]:  # with true CFG: the conditional call of each step
            for p in step_calls:
                B, H, Lq, Lk = p.shape
                row = (B // 2 if cfg else 0) + image_index
                T = Lk - n_img if Lq == Lk else Lk
                if kind == "zimage":  # per image [image, text], each padded to a multiple of 32
                    start = n_img + (-n_img) % 32
                    if Lk <= start:  # the image-only and text-only refiner blocks
                        continue
                    probs = p[row, :, :n_img][..., [start + c for c in columns]]
                    for head in probs:
                        m = head.T.reshape(len(columns), h, w).float()[None]
                        up = F.interpolate(m, size=size, mode="bicubic", align_corners=False)[0].double()
                        total = up if total is None else total + up
                    continue
                if Lq == Lk and Lk == n_img:  # image self-attention
                    continue
                if Lq == Lk:  # joint
                    img, txt = (slice(T, Lk), slice(0, T)) if kind != "sd3" else (slice(0, n_img), slice(n_img, Lk))
                else:  # cross
                    img, txt = slice(0, Lq), slice(0, Lk)
                probs = p[row, :, img, txt][..., columns]  # [H, N, K]
                for head in probs:
                    m = head.T.reshape(len(columns), h, w).float()[None]
                    up = F.interpolate(m, size=size, mode="bicubic", align_corners=False)[0].double()
                    total = up if total is None else total + up
        return total.clamp(min=0)


CASES = [  # kind, prompts, call kwargs, CFG batch layout, calls per step
    ("sd3", PROMPTS, dict(guidance_scale=5.0, height=64, width=96), True, 1),
    ("sd3", PROMPTS[:1], dict(guidance_scale=1.0, height=96, width=64), False, 1),
    ("flux", PROMPTS, dict(guidance_scale=3.5, height=64, width=96), False, 1),
    ("flux", PROMPTS[:1], dict(true_cfg_scale=4.0, negative_prompt="a photo", height=64, width=64), False, 2),
    ("pixart", PROMPTS, dict(guidance_scale=4.5, height=96, width=64), True, 1),
    ("pixart", PROMPTS[:1], dict(guidance_scale=1.0, height=64, width=64), False, 1),
    ("sana", PROMPTS, dict(guidance_scale=4.5, height=64, width=96), True, 1),  # instruction prefix, padding masked
    ("sana", PROMPTS[:1], dict(guidance_scale=1.0, height=96, width=64, complex_human_instruction=None), False, 1),
    ("qwen", PROMPTS, dict(height=64, width=96), False, 1),  # two lengths: the text padding is masked
    ("qwen", PROMPTS[:1], dict(true_cfg_scale=4.0, negative_prompt="a photo", height=96, width=64), False, 2),
    ("flux2", PROMPTS, dict(guidance_scale=4.0, height=64, width=96), False, 2),  # CFG: a separate negative call
    ("flux2", PROMPTS[:1], dict(guidance_scale=1.0, height=64, width=64), False, 1),
    ("flux2-dev", PROMPTS, dict(guidance_scale=4.0, height=64, width=96), False, 1),  # guidance-distilled: one branch
    ("flux2-dev", PROMPTS[:1], dict(guidance_scale=1.0, height=96, width=64), False, 1),
    ("chroma", PROMPTS, dict(guidance_scale=4.0, height=64, width=96), False, 2),  # T5 mask, separate negative call
    ("chroma", PROMPTS[:1], dict(guidance_scale=1.0, height=96, width=64), False, 1),
    ("zimage", PROMPTS, dict(guidance_scale=3.0, height=64, width=96), False, 1),  # CFG: [cond…, uncond…] lists
    ("zimage", PROMPTS[:1], dict(guidance_scale=0.0, height=96, width=64), False, 1),
]


@pytest.mark.parametrize("kind, prompts, kw, cfg, per_step", CASES,
                         ids=[f"{c[0]}-{'cfg' if c[3] or c[4] > 1 else 'nocfg'}-{len(c[1])}p" for c in CASES])
def test_maps_equal_a_naive_reference_and_images_are_unchanged(dit, kind, prompts, kw, cfg, per_step):
    pipe = dit(kind)
    kw = call_kwargs(kind, **kw)
    # list(prompts): ZImagePipeline rewrites a prompt list in place
    plain = pipe(prompt=list(prompts), generator=torch.Generator().manual_seed(0), **kw).images
    with NaiveReference(pipe) as ref:
        pipe(prompt=list(prompts), generator=torch.Generator().manual_seed(0), **kw)
    with trace(pipe) as tc:
        traced = pipe(prompt=list(prompts), generator=torch.Generator().manual_seed(0), **kw).images
    assert (plain - traced).abs().max().item() <= 1e-6  # the kernel's own output is used: identical here
    gen = tc.generations[-1]
    assert len(gen.timesteps) == 2
    for i in range(len(prompts)):
        hm = tc.heat_maps(i)
        assert hm.size == (kw["height"], kw["width"])
        ours = hm.token_maps().double()
        theirs = ref.maps(kind, i, len(prompts), gen.columns, gen.grid, hm.size, cfg, per_step)
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() <= 1e-5 * theirs.abs().max().item()


GUIDANCE_ONLY = [  # kind, call kwargs, reference calls per recorded step
    ("sd3", dict(guidance_scale=5.0, skip_guidance_layers=[1], skip_layer_guidance_start=0.0,
                 skip_layer_guidance_stop=0.6, num_inference_steps=4), 1),  # SD3.5's recommended guidance
    ("flux", dict(true_cfg_scale=4.0, negative_prompt=PROMPTS[0]), 2),  # the negative branch with the prompt's text
    ("qwen", dict(true_cfg_scale=4.0, negative_prompt=PROMPTS[0]), 2),
]


@pytest.mark.parametrize("kind, kw, per_step", GUIDANCE_ONLY, ids=[c[0] for c in GUIDANCE_ONLY])
def test_calls_made_only_for_guidance_are_not_recorded(dit, kind, kw, per_step):
    """Skip-layer guidance and true CFG's negative branch see the prompt's own text but are guidance: every sampler
    step is recorded once, and the maps equal the reference's conditional calls."""
    pipe = dit(kind)
    kw = call_kwargs(kind, height=64, width=64, **kw)
    with NaiveReference(pipe) as ref:
        pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw)
    with trace(pipe) as tc:
        pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw)
    gen, hm = tc.generations[-1], tc.heat_maps(0)
    steps = kw["num_inference_steps"]
    assert hm.steps_completed == hm.steps_expected == steps and len(gen.timesteps) == steps
    assert len(set(gen.timesteps)) == steps and gen.guidance_calls > 0
    theirs = ref.maps(kind, 0, 1, gen.columns, gen.grid, hm.size, kind == "sd3", per_step)
    ours = hm.token_maps().double()
    assert (ours - theirs).abs().max().item() <= 1e-5 * theirs.abs().max().item()


def test_a_second_order_scheduler_records_both_evaluations_of_a_step(dit):
    """Heun's flow-matching scheduler evaluates twice at a repeated timestep ([1000, 667, 667, 334, 334, 1, 1] for 4
    steps): both are real and recorded, each with its timestep; steps_completed counts sampler steps."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    pipe = dit("sd3")
    saved = pipe.scheduler
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(saved.config)
    try:
        kw = call_kwargs("sd3", guidance_scale=5.0, num_inference_steps=4, height=64, width=64)
        with NaiveReference(pipe) as ref:
            pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw)
        with trace(pipe) as tc:
            pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw)
    finally:
        pipe.scheduler = saved
    gen, hm = tc.generations[-1], tc.heat_maps(0)
    assert gen.timesteps == [1000.0, 667.0, 667.0, 334.0, 334.0, 1.0, 1.0] and gen.guidance_calls == 0
    assert hm.steps_completed == hm.steps_expected == 4 and hm.order == 2 and len(hm.steps) == 7
    theirs = ref.maps("sd3", 0, 1, gen.columns, gen.grid, hm.size, True)
    assert (hm.token_maps().double() - theirs).abs().max().item() <= 1e-5 * theirs.abs().max().item()


def test_sampler_steps_of_first_and_second_order_schedulers():
    from daamlib.heatmap import sampler_steps

    assert sampler_steps(4) == 4 and sampler_steps(7, 2) == 4 and sampler_steps(7, 2, expected=7) == 4
    assert sampler_steps(3, 2, expected=7) == 1 and sampler_steps(4, 2, expected=7) == 2  # interrupted: whole steps


@pytest.mark.parametrize("kind", ["sd3", "flux", "pixart", "sana", "qwen", "flux2", "flux2-dev", "chroma", "zimage"])
def test_probabilities_are_normalised_over_every_key(dit, kind):
    """Per head, a joint block's text probabilities sum to less than 1 (image keys take the rest); a cross-attention
    block's (PixArt) sum to 1 over the text input, of which the kept tokens are the unpadded part."""
    pipe = dit(kind)
    with trace(pipe, keep_heads=True) as tc:
        pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **call_kwargs(kind, guidance_scale=1.0))
    for name, steps in tc.generations[-1].maps.items():
        total = steps[0][0].sum(1)  # [heads, h, w]: Σ over kept text tokens
        assert (total > 0).all() and (total <= 1 + 1e-5).all()
        if kind == "pixart":  # padding is masked: the kept tokens (prompt and </s>) take everything
            assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
        else:
            assert total.max() < 0.999


def test_words_align_with_each_stream_as_the_pipeline_tokenizes(dit):
    pipe = dit("sd3")
    prompt = PROMPTS[0]
    hm = {enc: generate(pipe, prompt, steps=1, encoder=enc) for enc in ("all", "clip", "t5")}
    t5_ids = pipe.tokenizer_3(prompt).input_ids  # [pieces..., </s>]: no start token
    t5 = pipe.tokenizer_3.convert_ids_to_tokens(t5_ids)
    clip = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(prompt).input_ids)  # [<|startoftext|>, ..., <|endoftext|>]
    assert hm["t5"].tokens == t5 and hm["clip"].tokens == clip
    assert hm["all"].tokens == [f"clip:{t}" for t in clip] + [f"t5:{t}" for t in t5]
    # the CLIP part sits at the start of SD3's text input, T5's after its 77 positions
    assert tc_columns(pipe, prompt, "t5")[0] == 77 and tc_columns(pipe, prompt, "clip")[0] == 0
    dog = hm["all"].alignment.find("dog")
    assert [hm["all"].tokens[i].split(":")[0] for i in dog.tokens].count("clip") >= 1
    enc = pipe.tokenizer_3(prompt, return_offsets_mapping=True)
    a, b = prompt.index("dog"), prompt.index("dog") + 3
    assert set(hm["t5"].alignment.find("dog").tokens) == {i for i, (x, y) in enumerate(enc["offset_mapping"])
                                                         if y > x and x < b and y > a}
    # the word map is the mean of its tokens' maps, in both streams
    all_maps = hm["all"].token_maps()
    assert torch.allclose(hm["all"]["dog"].heat, all_maps[list(dog.tokens)].mean(0), atol=1e-6)


def tc_columns(pipe, prompt, encoder):
    with trace(pipe, encoder=encoder) as tc:
        pipe(prompt, num_inference_steps=1, output_type="pt")
    return tc.generations[-1].columns


def test_pixart_t5_padding_and_truncation(dit):
    pipe = dit("pixart")
    long = " ".join(["cat"] * 30) + " zebra"
    with pytest.warns(UserWarning, match="longer than PixArtSigmaPipeline's text input keeps"):
        with trace(pipe) as tc:
            pipe(long, generator=torch.Generator().manual_seed(0), **call_kwargs("pixart", max_sequence_length=16))
    hm = tc.heat_maps(0)
    assert len(hm.tokens) == 16 and hm.tokens[-1] == "</s>"  # truncated as the pipeline truncates, </s> kept
    with pytest.raises(KeyError, match="lies past the text encoder's limit"):
        hm["zebra"]


def test_generate_cli_names_and_settings(dit):
    from daamlib import load_pipeline
    from daamlib.pipeline import resolve_settings, size_multiple

    pipe = load_pipeline("tiny-flux")
    assert size_multiple(pipe) == 8 and resolve_settings(pipe)["height"] == 64
    hm = generate(pipe, "a cat", steps=1, height=64, width=96)
    assert hm.size == (64, 96) and hm.image.shape == (64, 96, 3)
    assert [w.text for w in hm.alignment.words] == ["a", "cat"]


def test_keep_heads_select_and_stream_types(dit):
    from daamlib.dit import stream_type

    pipe = dit("flux")
    hm = generate(pipe, "a cat and a dog", steps=2, keep_heads=True)
    assert hm.heads_kept and {stream_type(n) for n in hm.layers} == {"double", "single"}
    single = hm.select(layers="single_transformer_blocks.*")
    assert single.layers == ["single_transformer_blocks.0.attn.processor"]
    per_head = [aggregate(hm.select(heads=[i]).maps.values(), hm.size, clamp=False) for i in (0, 1)]
    assert torch.allclose(per_head[0] + per_head[1], aggregate(hm.maps.values(), hm.size, clamp=False), atol=1e-6)
    assert [stream_type(n) for n in dit("pixart").transformer.attn_processors if "attn2" in n] == ["cross", "cross"]


def _by_hand(query, key, value, attn_mask=None, scale=None, **kw):
    """Attention multiplied out by hand, in diffusers' [B, L, H, D] layout: no kernel function anywhere."""
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    return ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1).matmul(v).transpose(1, 2)


def test_a_processor_that_bypasses_every_kernel_is_refused(dit):
    """A processor computing attention with neither SDPA nor a diffusers backend leaves nothing to tap: refused."""
    import diffusers.models.transformers.transformer_flux as flux_module

    pipe = dit("flux")
    block = pipe.transformer.transformer_blocks[0].attn
    original = block.processor

    class ByHand(type(original)):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
            saved = flux_module.dispatch_attention_fn
            flux_module.dispatch_attention_fn = _by_hand
            try:
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
            finally:
                flux_module.dispatch_attention_fn = saved

    block.set_processor(ByHand())
    try:
        with pytest.raises(TraceError, match="ran without torch's scaled_dot_product_attention or a diffusers"):
            generate(pipe, "a cat", steps=1)
    finally:
        block.set_processor(original)
    assert type(block.processor) is type(original) and F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"


def test_fused_false_is_refused_for_a_transformer(dit):
    with pytest.raises(ValueError, match="fused=False applies to UNet pipelines"):
        with trace(dit("flux"), fused=False):
            pass


def test_every_family_module_is_registered_and_resolves_from_its_pipeline_names():
    """One family, one file: the lazy mapping names exactly the modules in daamlib/dit/families (none left
    unregistered), each pipeline class name resolves to the family whose module declares it, and each family has
    its tiny test model."""
    import pkgutil

    import daamlib.dit.families
    from daamlib.dit.registry import CFG_LAYOUTS, FAMILY_MODULES, Family, family_of, load_family
    from daamlib.testing.tiny_dit import KINDS

    assert {m.name for m in pkgutil.iter_modules(daamlib.dit.families.__path__)} == set(FAMILY_MODULES)
    names = []
    for module, pipelines in FAMILY_MODULES.items():
        family = load_family(module)
        assert isinstance(family, Family) and family.pipelines == pipelines, module
        assert family.cfg in CFG_LAYOUTS and len(family.models) == len(pipelines), module
        for name in pipelines:
            assert family_of(type(name, (), {})()) is family
        names.append(family.name)
    assert sorted(names) == sorted(KINDS) and len(set(names)) == len(names)
    assert family_of(type("OtherPipeline", (), {})()) is None


def test_the_core_imports_no_family_until_one_is_traced():
    """daamlib.trace never imports the transformer package, and importing daamlib imports no family module."""
    import subprocess
    import sys

    code = ("import sys, daamlib\n"
            "print(sorted(m for m in sys.modules if m.startswith('daamlib.dit.families.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
    import ast
    import importlib
    from pathlib import Path

    core = importlib.import_module("daamlib.trace")  # the module (daamlib.trace is the function)
    tree = ast.parse(Path(core.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m == "dit" or m.startswith(("dit.", "daamlib.dit"))], imported


def test_unsupported_transformer_pipeline_names_the_supported_set():
    class OtherPipeline:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(UnsupportedPipelineError, match=r"OtherPipeline is not a supported transformer pipeline; "
                                                       r"supported: StableDiffusionPipeline.*StableDiffusion3Pipeline.*FluxPipeline.*PixArtSigma"):
        with trace(OtherPipeline()):
            pass


def test_kernel_is_restored_and_encode_prompt_too(dit):
    pipe = dit("sd3")
    before = F.scaled_dot_product_attention
    with pytest.raises(RuntimeError, match="boom"):
        with trace(pipe):
            raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is before and "encode_prompt" not in vars(pipe)
    assert all(not type(p).__name__.startswith("Traced") for p in pipe.transformer.attn_processors.values())


def test_select_by_block_depth_and_stream_type(dit):
    hm = generate(dit("flux"), "a cat and a dog", steps=2)
    assert hm.select(streams="single").layers == ["single_transformer_blocks.0.attn.processor"]
    assert hm.select(streams=["double"]).layers == ["transformer_blocks.0.attn.processor"]
    assert hm.select(blocks=[1]).layers == hm.select(streams="single").layers  # depth: the order blocks run in
    assert hm.select(blocks=slice(0, 1)).layers == ["transformer_blocks.0.attn.processor"]
    with pytest.raises(KeyError, match=r"no layer of stream type \['cross'\]; this model's are: \['double', 'single'\]"):
        hm.select(streams="cross")
    with pytest.raises(IndexError, match="blocks \\[5\\] out of range: 2 layers recorded"):
        hm.select(blocks=[5])


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux", "tiny-pixart", "tiny-sana", "tiny-qwen", "tiny-flux2",
                                   "tiny-flux2-dev", "tiny-chroma", "tiny-zimage"])
def test_cli_saves_and_loads_transformer_experiments(model, tmp_path):
    from daamlib import load_experiment
    from daamlib.cli import main

    out = tmp_path / model
    assert main(["a red cat and a blue dog", "--model", model, "--steps", "2", "--width", "96", "--out", str(out)]) == 0
    hm, meta = load_experiment(out / "experiment")
    assert hm.size == (64, 96) and meta["settings"]["steps"] == 2 and meta["settings"]["dtype"] == "float32"
    assert hm["dog"].heat.shape == (64, 96) and (out / "words").is_dir()
    assert sorted(hm.layers) == sorted(meta["layers"])


def test_runner_on_a_transformer(dit, tmp_path):
    from daamlib.runner import load_results, run_experiments

    items = [{"id": "a", "prompt": "a cat", "seed": 0, "steps": 1},
             {"id": "b", "prompt": "a dog and a bird", "seed": 1, "steps": 2, "height": 64, "width": 96}]
    records = run_experiments(dit("sd3"), items, tmp_path / "run", model_name="tiny-sd3", progress=False)
    assert [r["status"] for r in records] == ["generated"] * 2
    assert [r["settings"]["width"] for r in load_results(tmp_path / "run", items)] == [64, 96]
    assert [r["status"] for r in run_experiments(dit("sd3"), items, tmp_path / "run", model_name="tiny-sd3",
                                                 progress=False)] == ["skipped"] * 2


def test_qwen_words_skip_the_chat_template_the_pipeline_drops(dit):
    """QwenImagePipeline drops its system prefix (prompt_template_encode_start_idx tokens) from the language model's
    states; the prompt's tokens follow, then the template's suffix (not words). Positions follow the pipeline's
    code even when the number dropped is not the prefix's length."""
    from daamlib.testing.tiny_dit import QWEN_TEMPLATE

    pipe = dit("qwen")
    prefix = len(pipe.tokenizer(QWEN_TEMPLATE.split("{}")[0]).input_ids)
    ids = pipe.tokenizer(QWEN_TEMPLATE.format(PROMPTS[0])).input_ids
    for drop in (prefix, 34):
        pipe.prompt_template_encode_start_idx = drop
        try:
            with trace(pipe) as tc:
                pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), **call_kwargs("qwen", num_inference_steps=1, max_sequence_length=64))
        finally:
            pipe.prompt_template_encode_start_idx = prefix
        hm, cols = tc.heat_maps(0), tc.generations[-1].columns
        assert cols[0] == prefix - drop  # the first prompt token's place in the states
        assert hm.tokens == pipe.tokenizer.convert_ids_to_tokens([ids[c + drop] for c in cols])
        assert "".join(hm.tokens).replace("Ġ", " ") == PROMPTS[0]  # the prompt, no template token kept


def test_flux2_klein_words_sit_after_the_chat_templates_user_prefix(dit):
    """Flux.2 [klein] keeps every token of its chat-templated text (nothing dropped, padded to max_length on the
    right): the prompt's tokens sit after the template's user prefix."""
    from daamlib.dit import chat_template

    pipe = dit("flux2")
    text = chat_template(pipe).replace("{}", PROMPTS[0])
    ids = pipe.tokenizer(text).input_ids
    with trace(pipe) as tc:
        pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **call_kwargs("flux2", guidance_scale=1.0))
    cols = tc.generations[-1].columns
    prefix = len(pipe.tokenizer(chat_template(pipe).split("{}")[0]).input_ids)
    assert cols[0] == prefix and tc.heat_maps(0).tokens == pipe.tokenizer.convert_ids_to_tokens([ids[c] for c in cols])


def test_flux2_dev_words_sit_after_the_system_message_in_left_padded_input(dit):
    """Flux.2 [dev] renders the system message and the prompt with its processor's chat template (which starts with
    <s>, so no special token is added), pads on the left to max_sequence_length and keeps every position: the
    prompt's tokens sit at the end, before [/INST], wherever the padding puts them."""
    from daamlib.dit import mistral_chat_template

    pipe = dit("flux2-dev")
    tok = pipe.tokenizer.tokenizer
    for prompt in PROMPTS:
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        ids = pipe.tokenizer.apply_chat_template(format_input([prompt], system_message=pipe.system_message),
                                                 tokenize=True, return_dict=True, padding="max_length",
                                                 truncation=True, max_length=64)["input_ids"][0]
        assert tok.convert_ids_to_tokens(ids[:1]) == ["<pad>"] and ids.count(tok.bos_token_id) == 1
        with trace(pipe) as tc:
            pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **call_kwargs("flux2-dev", num_inference_steps=1))
        cols = tc.generations[-1].columns
        assert tc.heat_maps(0).tokens == tok.convert_ids_to_tokens([ids[c] for c in cols])
        assert tok.convert_ids_to_tokens(ids[cols[-1] + 1:]) == ["[/INST]"]
        assert "".join(tc.heat_maps(0).tokens).replace("Ġ", " ") == prompt
    assert mistral_chat_template(pipe).startswith("<s>[SYSTEM_PROMPT]")


@pytest.mark.parametrize("kind", ["sd2", "flux"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_store_dtype_halves_the_maps_and_keeps_them_close(tiny, dit, tmp_path, kind, dtype, tolerance):
    from daamlib import load_experiment, save_experiment

    pipe = tiny(kind) if kind == "sd2" else dit(kind)
    full = generate(pipe, PROMPTS[0], seed=1, steps=2)
    half = generate(pipe, PROMPTS[0], seed=1, steps=2, store_dtype=dtype)
    assert {m.dtype for m in half.maps.values()} == {dtype}
    nbytes = lambda hm: sum(m.numel() * m.element_size() for m in hm.maps.values())  # noqa: E731
    assert 2 * nbytes(half) == nbytes(full)
    a, b = full.token_maps(), half.token_maps()
    assert b.dtype == torch.float32 and (a - b).abs().max() <= tolerance * a.abs().max()  # rounding once, per map
    hm, _ = load_experiment(save_experiment(tmp_path / "e", half))
    assert {m.dtype for m in hm.maps.values()} == {dtype} and torch.equal(hm.token_maps(), b)
    with pytest.raises(ValueError, match="store_dtype must be one of float32, float16, bfloat16"):
        generate(pipe, PROMPTS[0], steps=1, store_dtype=torch.int8)


@pytest.mark.parametrize("kept", [3, 5], ids=["joint-3-of-5-text-keys", "cross-every-key"])
def test_replayed_output_equals_a_materialised_row_swap(kept):
    """Replay on a transformer: image rows take the seed's probabilities on the kept text keys and their own on
    every other key, rescaled to the mass left. Checked against the full matrix, built and multiplied in float64."""
    from daamlib.dit import replayed_output

    g = torch.Generator().manual_seed(0)
    n_img, n_txt, d = 6, 5, 4
    n_keys = n_txt + (n_img if kept == 3 else 0)  # joint: text and image keys; cross: the text keys only
    q = torch.randn(2, n_img, d, generator=g, dtype=torch.float64)
    k = torch.randn(2, n_keys, d, generator=g, dtype=torch.float64)
    v = torch.randn(2, n_keys, d, generator=g, dtype=torch.float64)
    own = (q @ k.transpose(-1, -2)).softmax(-1)  # [2, N, L]
    seed = torch.randn(2, n_img, n_keys, generator=g, dtype=torch.float64).softmax(-1)
    cols = torch.arange(kept)
    want = own.clone()
    free, left = 1 - own[..., cols].sum(-1, keepdim=True), 1 - seed[..., cols].sum(-1, keepdim=True)
    others = torch.ones(n_keys, dtype=torch.bool)
    others[cols] = False
    want[..., others] = own[..., others] * left / free if kept < n_keys else 0
    want[..., cols] = seed[..., cols]
    assert torch.allclose(want.sum(-1), torch.ones(2, n_img, dtype=torch.float64))
    got = replayed_output(own @ v, own[..., cols], seed[..., cols], v[:, cols])
    assert (got - want @ v).abs().max().item() < 1e-12


@pytest.mark.parametrize("kind", ["sd3", "flux", "pixart", "qwen", "zimage"])
def test_replay_holds_the_seed_attention_on_transformers(dit, kind):
    from daamlib.replay import AttentionStore, ReplayError

    pipe = dit(kind)
    kw = call_kwargs(kind, height=64, width=64, guidance_scale=4.0 if kind != "qwen" else 1.0)
    run = lambda prompt, **t: generate(pipe, prompt, seed=0, steps=2, **{k: v for k, v in kw.items()  # noqa: E731
                                        if k in ("height", "width", "guidance_scale")}, **t)
    store = AttentionStore()
    seed = run("a red cat on a mat", store=store)
    assert len(store) == 2 * len(seed.layers) and store.n_tokens == seed.token_maps().shape[0]
    again = run("a red cat on a mat", replay=store)  # its own attention injected: the same image
    assert (again.image.astype(float) - seed.image.astype(float)).__abs__().max() <= 1
    for word in ("blue", "green", "pink", "small", "big", "old"):  # one of as many tokens as "red" in this tokenizer
        try:
            swapped = run(f"a {word} cat on a mat", replay=store)
            break
        except ReplayError:
            continue
    plain = run(f"a {word} cat on a mat")
    assert torch.allclose(swapped.token_maps(), seed.token_maps(), atol=1e-5)  # the maps are the injected ones
    assert not torch.allclose(plain.token_maps(), seed.token_maps(), atol=1e-3)
    assert (plain.image != swapped.image).any()
    with pytest.raises(ReplayError, match="tokens"):
        run("a dark blue and very red cat on a mat", replay=store)


def test_adjectives_of_another_token_count_are_refused_before_generating(dit, tmp_path, monkeypatch):
    from daamlib.replay import ReplayError, token_count
    from daamlib.studies.adjectives import AdjectiveRun

    pipe = dit("flux")
    assert token_count(pipe, "a red dog") == 9 and token_count(pipe, "a blue dog") == 10  # the tiny T5 splits "blue"
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(ReplayError, match="'a red dog': 9; 'a blue dog': 10"):
        AdjectiveRun(pipe, ["a {adj} dog"], {"red": [200, 30, 30], "blue": [30, 30, 200]}, tmp_path, None, "daam")


@pytest.mark.parametrize("chi", [True, False], ids=["instruction", "no-instruction"])
def test_sana_words_follow_its_instruction_prefix_and_select_index(dit, chi):
    """SanaPipeline lower-cases and strips the prompt, puts its complex human instruction right before it, pads on
    the right, then keeps the start token and the last max_sequence_length − 1 positions (select_index). The kept
    columns must hold exactly the prompt's tokens of that sequence; the words keep the prompt's own characters."""
    import inspect

    pipe = dit("sana")
    prompt, M = "  A Red cat and a blue dog", 24
    default = inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default
    instruction = "\n".join(default) if chi else ""
    n_chi = len(pipe.tokenizer.encode(instruction)) if chi else 0
    ids = pipe.tokenizer(instruction + prompt.lower().strip(), padding="max_length", truncation=True,
                         max_length=n_chi + M - 2 if chi else M).input_ids
    kept = [ids[i] for i in [0] + list(range(-M + 1, 0))]  # select_index
    with trace(pipe) as tc:
        pipe(prompt=prompt, generator=torch.Generator().manual_seed(0),
             **call_kwargs("sana", num_inference_steps=1, guidance_scale=1.0, max_sequence_length=M,
                           **({} if chi else {"complex_human_instruction": None})))
    hm, cols = tc.heat_maps(0), tc.generations[-1].columns
    assert list(hm.tokens) == pipe.tokenizer.convert_ids_to_tokens([kept[c] for c in cols])
    assert list(hm.words) == prompt.split()  # the prompt as written: "A", "Red", ...


def test_pixart_aligns_the_lowercased_stripped_prompt_it_encodes(dit):
    pipe = dit("pixart")
    prompt = "  A Red cat"
    ids = pipe.tokenizer(prompt.lower().strip(), padding="max_length", max_length=24, truncation=True).input_ids
    with trace(pipe) as tc:
        pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **call_kwargs("pixart", num_inference_steps=1))
    hm, cols = tc.heat_maps(0), tc.generations[-1].columns
    assert list(hm.tokens) == pipe.tokenizer.convert_ids_to_tokens([ids[c] for c in cols])
    assert list(hm.words) == ["A", "Red", "cat"]


def test_zimage_words_are_the_chat_templated_prompts_unpadded_tokens(dit):
    """ZImagePipeline keeps only the unpadded tokens of the chat-templated text (thinking on), per prompt a list;
    its main blocks see one [image, text] sequence per image, each part padded to a multiple of 32."""
    from daamlib.dit import zimage_template

    pipe = dit("zimage")
    with trace(pipe) as tc:
        pipe(prompt=list(PROMPTS), generator=torch.Generator().manual_seed(0),
             **call_kwargs("zimage", num_inference_steps=1, guidance_scale=0.0))
    cols = tc.generations[-1].columns
    assert [tc.heat_maps(i).prompt for i in range(2)] == list(PROMPTS)  # not the pipeline's rewritten list
    for i, prompt in enumerate(PROMPTS):
        ids = pipe.tokenizer(zimage_template(pipe).replace("{}", prompt)).input_ids
        hm = tc.heat_maps(i)
        own = [c for c, t in zip(cols, hm.tokens) if t != "<pad>"]  # the other prompt's places are labelled <pad>
        assert [t for t in hm.tokens if t != "<pad>"] == pipe.tokenizer.convert_ids_to_tokens([ids[c] for c in own])
        assert own[0] == len(pipe.tokenizer(zimage_template(pipe).split("{}")[0]).input_ids)
        assert list(hm.words) == prompt.split()
    assert sorted(tc.generations[-1].maps) == ["layers.0.attention.processor", "layers.1.attention.processor"]


def _double_precision_sdpa(calls):
    """A user's own kernel (as people plug one in): SDPA in float64, counted."""
    torch_sdpa = F.scaled_dot_product_attention

    def mine(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        calls.append(query.shape)
        m = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.double()
        return torch_sdpa(query.double(), key.double(), value.double(), attn_mask=m, dropout_p=dropout_p,
                          is_causal=is_causal, scale=scale).to(query.dtype)

    return mine


@pytest.mark.parametrize("kind", ["sd3", "flux", "chroma"])
def test_a_users_patched_sdpa_computes_the_output_and_stays_installed(dit, kind):
    """The user's kernel computes every output while tracing (the image is the one it makes untraced), is called as
    often as untraced, and is in place afterwards; the maps (LSE computed beside it) equal the naive reference's."""
    pipe = dit(kind)
    kw = call_kwargs(kind, guidance_scale=4.0, height=64, width=64)
    saved, calls = F.scaled_dot_product_attention, []
    mine = F.scaled_dot_product_attention = _double_precision_sdpa(calls)
    try:
        plain = pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
        untraced_calls = len(calls)
        with NaiveReference(pipe) as ref:  # on top of the user's kernel: the same trajectory
            pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw)
        with trace(pipe) as tc:
            traced = pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
        assert F.scaled_dot_product_attention is mine
    finally:
        F.scaled_dot_product_attention = saved
    assert untraced_calls > 0 and len(calls) == 3 * untraced_calls
    assert torch.equal(plain, traced)
    gen, hm = tc.generations[-1], tc.heat_maps(0)
    theirs = ref.maps(kind, 0, 1, gen.columns, gen.grid, hm.size, kind == "sd3", 2 if kind == "chroma" else 1)
    assert (hm.token_maps().double() - theirs).abs().max().item() <= 1e-5 * theirs.abs().max().item()


@pytest.mark.parametrize("backend", ["_native_math", "flex"])
def test_a_diffusers_attention_backend_computes_the_output_and_the_maps_are_recorded_beside(dit, backend):
    """``set_attention_backend``: the chosen backend makes the image (flex never calls SDPA; _native_math restricts
    SDPA to its math kernel); the probabilities are computed beside it and equal the default backend's maps."""
    import warnings

    pipe = dit("flux")
    kw = call_kwargs("flux", guidance_scale=3.5, height=64, width=64)
    with trace(pipe) as tc:
        pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw)
    default = tc.heat_maps(0).token_maps()
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend  # set_attention_backend sets it too; reset does not restore it
    pipe.transformer.set_attention_backend(backend)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flex attention without torch.compile warns that it is slow
            plain = pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
            with trace(pipe) as tc:
                traced = pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **kw).images
    finally:
        pipe.transformer.reset_attention_backend()
        _AttentionBackendRegistry._active_backend = active
    assert torch.equal(plain, traced)
    torch.testing.assert_close(tc.heat_maps(0).token_maps(), default, rtol=1e-4, atol=1e-5 * default.abs().max().item())

    assert not any(hasattr(fn, "_daam_wraps") for fn in _AttentionBackendRegistry._backends.values())
