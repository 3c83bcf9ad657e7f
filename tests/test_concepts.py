"""Concept maps on UNets (issue 29), after OVAM: concepts need not be in the prompt; their maps equal an independent
computation from the layers' own queries and keys, and the generation never sees them."""

import pytest
import torch
import torch.nn.functional as F

from conftest import run
from daamlib import TraceError, trace
from daamlib.concepts import ConceptError
from daamlib.trace import cross_attention_modules

CONCEPTS = ["grass", "red circle", "zebra"]


def naive_concept_maps(pipe, prompt, concepts, size, cfg=True, **kw):
    """Σ over layers, steps and heads of each layer's bicubic upsampling of softmax(q·K_cᵀ/√d) over the concept's own
    keys ([<start>, tokens, <end>], from encode_prompt of the concept alone), averaged over the concept's tokens;
    q from the layer's own to_q of its (normed) input, in float64, captured by forward hooks on diffusers' modules."""
    tok = pipe.tokenizer
    states = {}
    for c in concepts:
        n = len(tok(c)["input_ids"])
        states[c] = (pipe.encode_prompt(prompt=c, device="cpu", num_images_per_prompt=1,
                                       do_classifier_free_guidance=False)[0][0, :n].double(), n)
    total = {c: 0 for c in concepts}
    mods = cross_attention_modules(pipe.unet)

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        if x.ndim == 4:
            x = x.flatten(2).transpose(1, 2)
        if module.group_norm is not None:
            x = module.group_norm(x.transpose(1, 2)).transpose(1, 2)
        B, N, _ = x.shape
        H = module.heads
        rows = slice(B // 2, B) if cfg else slice(0, B)
        q = module.to_q(x[rows]).double()
        d = q.shape[-1] // H
        q = q.view(-1, N, H, d).transpose(1, 2)  # [Bc, H, N, d]
        h = w = int(N ** 0.5)
        for c, (s, n) in states.items():
            k = (module.to_k(s.float()).double()).view(n, H, d).transpose(0, 1)  # [H, n, d]
            p = torch.einsum("bhnd,hkd->bhkn", q, k).mul(d ** -0.5).softmax(2)[:, :, 1:n - 1].mean(2)  # [Bc, H, N]
            for head in range(H):
                m = p[0, head].reshape(1, 1, h, w).float()
                total[c] = total[c] + F.interpolate(m, size=size, mode="bicubic", align_corners=False)[0, 0].double()

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in mods.values()]
    try:
        with torch.no_grad():
            images = run(pipe, prompt, **kw)
    finally:
        for h in handles:
            h.remove()
    return {c: t.clamp(min=0) for c, t in total.items()}, images


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_concept_maps_equal_an_independent_computation_and_the_image_is_unchanged(tiny, kind):
    pipe = tiny(kind)
    plain = run(pipe, "a cat and a dog")
    with trace(pipe, concepts=CONCEPTS) as tc:
        traced = run(pipe, "a cat and a dog")
    assert torch.equal(plain, traced)  # the concepts were never attended
    hm = tc.heat_maps(0)
    assert hm.concepts.words == CONCEPTS and hm.concepts.size == hm.size
    want, _ = naive_concept_maps(pipe, "a cat and a dog", CONCEPTS, hm.size)
    for c in CONCEPTS:
        got = hm.concepts[c].heat.double()
        assert (got - want[c]).abs().max().item() <= 1e-5 * want[c].max().item(), c


def test_concepts_through_generate_and_attribute_and_their_selection(tiny):
    import numpy as np

    import daamlib
    from daamlib.attribute import attribute

    pipe = tiny("sd1")
    hm = daamlib.generate(pipe, "a red circle", steps=3, concepts=["grass", "circle"])
    assert len(hm.concepts.steps) == 3 and hm.concepts["grass"].heat.shape == hm.size
    first = hm.select(steps=[0])
    assert len(first.concepts.steps) == 1
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    hm = attribute(pipe, image, "a red circle", concepts=["grass"], timesteps=(300, 600))
    assert len(hm.concepts.steps) == 2 and torch.isfinite(hm.concepts["grass"].heat).all()


@pytest.mark.parametrize("concepts, message", [
    ("grass sky", "concepts must be a list of strings"),
    (["grass", " "], "each concept must be a non-empty string"),
    (["grass", "grass"], "the concept 'grass' is given twice"),
])
def test_bad_concepts_are_refused(tiny, concepts, message):
    with pytest.raises(ConceptError, match=message):
        with trace(tiny("sd1"), concepts=concepts):
            pass


def test_concepts_on_a_transformer_without_concept_attention_are_refused():
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    with pytest.raises(TraceError, match="implemented for Flux.1, Chroma, SD3, Flux.2, Qwen-Image and Z-Image .*"
                                         "QwenImageEditPipeline is 'qwen-edit'"):
        with trace(tiny_dit_pipeline("qwen-edit"), concepts=["grass"]):
            pass


def two_block_flux(kind: str = "flux"):
    """Tiny Flux.1 (or Chroma) with two double-stream blocks, so that the concept stream's residual update is
    carried."""
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    base = tiny_dit_pipeline(kind)
    torch.manual_seed(1)
    transformer = type(base.transformer).from_config({**base.transformer.config, "num_layers": 2})
    pipe = type(base)(**{**base.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def traced_under(pipe, prompts, kw, concepts, register):
    """The pipeline untraced, then traced with ``concepts`` while the hooks ``register()`` installs (it returns
    their handles) record; they are removed afterwards. (untraced images, traced images, trace)."""
    # (copies: ZImagePipeline rewrites a prompt list in place with its chat template)
    plain = pipe(prompt=list(prompts), generator=torch.Generator().manual_seed(0), **kw).images
    handles = register()
    try:
        with trace(pipe, concepts=concepts) as tc:
            traced = pipe(prompt=list(prompts), generator=torch.Generator().manual_seed(0), **kw).images
    finally:
        for h in handles:
            h.remove()
    return plain, traced, tc


def run_with_block_inputs(pipe, prompts, kw, concepts):
    """:func:`traced_under` keeping every call's transformer keywords, each joint block's keywords and its attention
    module's image output: (untraced, traced images, calls, trace)."""
    calls = []  # per transformer call: its keywords and, per block, the block's keywords and image attention output

    def on_call(module, args, kwargs):
        calls.append({"kwargs": dict(kwargs), "blocks": []})

    def on_block(block, args, kwargs):
        calls[-1]["blocks"].append(dict(kwargs))

    def on_attn(module, args, kwargs, out):
        calls[-1]["blocks"][-1]["attn_out"] = out[0]

    def register():
        t = pipe.transformer
        handles = [t.register_forward_pre_hook(on_call, with_kwargs=True)]
        for b in t.transformer_blocks:
            handles += [b.register_forward_pre_hook(on_block, with_kwargs=True),
                        b.attn.register_forward_hook(on_attn, with_kwargs=True)]
        return handles

    plain, traced, tc = traced_under(pipe, prompts, kw, concepts, register)
    return plain, traced, calls, tc


@pytest.mark.parametrize("kind", ["flux", "chroma"])
def test_flux_concept_attention_equals_the_blocks_own_text_path_and_leaves_the_image_alone(kind):
    """ConceptAttention on Flux.1, re-derived with diffusers' own code: the concept stream (each concept's T5 tokens
    and </s>, then a null concept's </s>, through the context embedder) is run through each double-stream block's
    own forward as its text stream, with the generation's image input, temb and [concepts, image] rotary positions;
    the block's own attention module gives the concept outputs. Cross-attention maps: the image queries against the
    concept keys (softmax over the concept stream); output-space maps: the real image outputs · the concept outputs,
    softmax over concepts and null. Maps equal, image bit-identical, two prompts, two blocks, two steps."""
    pipe = two_block_flux(kind)
    concepts = ["circle", "sky blue"]
    prompts = ["a red circle", "a giraffe and a zebra"]
    kw = dict(num_inference_steps=2, output_type="pt", max_sequence_length=24, height=64, width=96,
              guidance_scale=3.5 if kind == "flux" else 1.0)  # Chroma: no negative call
    plain, traced, calls, tc = run_with_block_inputs(pipe, prompts, kw, concepts)
    t = pipe.transformer
    assert torch.equal(plain, traced)
    # the concept stream, as the pipeline's T5 encodes each concept alone
    tok, parts, rows, at = getattr(pipe, "tokenizer_2", None) or pipe.tokenizer, [], [], 0
    for c in concepts + [""]:
        n = len(tok(c)["input_ids"])
        e = pipe._get_t5_prompt_embeds(prompt=c, max_sequence_length=n, device="cpu")
        parts.append((e[0] if isinstance(e, tuple) else e)[0])
        rows.append(list(range(at, at + n - 1)) or [at])
        at += n
    states = torch.cat(parts)
    gen = tc.generations[-1]
    h, w = gen.grid
    for image in range(2):
        want = {"cross": 0, "out": 0}
        for call in calls:
            ids = call["kwargs"]["img_ids"]
            rope = t.pos_embed(torch.cat([torch.zeros(len(states), ids.shape[-1]), ids]))
            c = t.context_embedder(states)[None]
            for block, bk in zip(t.transformer_blocks, call["blocks"]):
                img, temb = bk["hidden_states"][image:image + 1], bk["temb"][image:image + 1]
                emb_img, emb_txt = (temb[:, :6], temb[:, 6:]) if kind == "chroma" else (temb, temb)
                norm_img = block.norm1(img, emb=emb_img)[0]
                norm_c = block.norm1_context(c, emb=emb_txt)[0]
                _, c_out = block.attn(hidden_states=norm_img, encoder_hidden_states=norm_c, image_rotary_emb=rope)
                dots = torch.einsum("nd,cd->cn", bk["attn_out"][image].double(), c_out[0].double())
                add_block_maps(want, rotary_cross(block.attn, norm_img, norm_c, rope), dots, rows, len(concepts),
                               (h, w), (64, 96))
                c = block(hidden_states=img, encoder_hidden_states=c, temb=temb, image_rotary_emb=rope)[0]
        assert_concept_maps(tc.heat_maps(image), want, concepts)


def test_flux_concepts_through_attribute_saved_and_loaded(tmp_path):
    """Flux.1 concept maps of an existing image, both spaces, saved with the experiment and loaded back."""
    import numpy as np

    from daamlib import load_experiment, save_experiment
    from daamlib.attribute import attribute

    pipe = two_block_flux()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    hm = attribute(pipe, image, "a red circle", concepts=["circle", "grass"], timesteps=(300, 600),
                   max_sequence_length=24)
    assert len(hm.concepts.steps) == len(hm.concept_outputs.steps) == 2 and len(hm.concepts.layers) == 2
    # softmax shares over concepts and null: at most 1 per block and timestep (bicubic may overshoot a little)
    assert (hm.concept_outputs.token_maps().sum(0) <= 2 * 2 * 1.05).all()
    save_experiment(tmp_path / "e", hm, seed=0)
    back, _ = load_experiment(tmp_path / "e")
    for attr in ("concepts", "concept_outputs"):
        for c in ("circle", "grass"):
            assert torch.equal(getattr(back, attr)[c].heat, getattr(hm, attr)[c].heat)
    assert back.select(steps=[1]).concept_outputs is not None


def test_sd3_concept_attention_equals_the_blocks_own_text_path_with_guidance_in_the_batch():
    """ConceptAttention on SD3 (joint blocks, no rotary positions, CFG batch [uncond, cond]), re-derived as for
    Flux.1: each concept encoded by SD3's encode_prompt and cut to its CLIP and T5 tokens, run through each joint
    block's own forward as its text stream on the conditional rows; the last block (context_pre_only) gives a
    cross-attention map and no output-space one. Image bit-identical."""
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    pipe = tiny_dit_pipeline("sd3")
    concepts = ["circle", "sky blue"]
    prompts = ["a red circle", "a giraffe and a zebra"]
    kw = dict(num_inference_steps=2, output_type="pt", height=64, width=96, guidance_scale=5.0)
    plain, traced, calls, tc = run_with_block_inputs(pipe, prompts, kw, concepts)
    t = pipe.transformer
    assert torch.equal(plain, traced)
    parts, rows, at = [], [], 0
    for c in concepts + [""]:
        n_clip, n_t5 = len(pipe.tokenizer(c)["input_ids"]), len(pipe.tokenizer_3(c)["input_ids"])
        e = pipe.encode_prompt(prompt=c, prompt_2=c, prompt_3=c, device="cpu", do_classifier_free_guidance=False,
                               max_sequence_length=n_t5)[0][0]
        kept = torch.cat([e[:n_clip], e[77:77 + n_t5]])
        own = list(range(1, n_clip - 1)) + list(range(n_clip, n_clip + n_t5 - 1))
        rows.append([at + r for r in own] if c else list(range(at, at + len(kept))))
        parts.append(kept)
        at += len(kept)
    states = torch.cat(parts)
    h, w = tc.generations[-1].grid
    n = len(concepts)
    for image in range(2):
        row = 2 + image  # the conditional half of [uncond, cond]
        want = {"cross": {}, "out": {}}
        for call in calls:
            c = t.context_embedder(states)[None]
            for i, (block, bk) in enumerate(zip(t.transformer_blocks, call["blocks"])):
                img, temb = bk["hidden_states"][row:row + 1], bk["temb"][row:row + 1]
                norm_img = block.norm1(img, emb=temb)[0]
                norm_c = block.norm1_context(c, temb) if block.context_pre_only else block.norm1_context(c, emb=temb)[0]
                attn = block.attn
                q = attn.to_q(norm_img).unflatten(-1, (attn.heads, -1))
                k = attn.add_k_proj(norm_c).unflatten(-1, (attn.heads, -1))
                q = attn.norm_q(q) if attn.norm_q is not None else q
                k = attn.norm_added_k(k) if attn.norm_added_k is not None else k
                p = torch.einsum("bnhd,bchd->bhnc", q.double(), k.double()).mul(q.shape[-1] ** -0.5).softmax(-1)
                p = p.sum(1)[0]
                maps = {"cross": torch.stack([p[:, r].sum(-1) for r in rows])[:n]}
                if not block.context_pre_only:
                    _, c_out = attn(hidden_states=norm_img, encoder_hidden_states=norm_c)
                    dots = torch.einsum("nd,cd->cn", bk["attn_out"][row].double(), c_out[0].double())
                    maps["out"] = torch.stack([dots[r].mean(0) for r in rows]).softmax(0)[:n]
                    c = block(hidden_states=img, encoder_hidden_states=c, temb=temb)[0]
                for space, m in maps.items():
                    up = F.interpolate(m.reshape(1, n, h, w).float(), size=(64, 96), mode="bicubic",
                                       align_corners=False)[0].double()
                    want[space][i] = want[space].get(i, 0) + up
        hm = tc.heat_maps(image)
        for got, space in ((hm.concepts, "cross"), (hm.concept_outputs, "out")):
            total = sum(want[space].values()).clamp(min=0)
            for j, name in enumerate(concepts):
                diff = (got[name].heat.double() - total[j]).abs().max().item()
                assert diff <= 1e-5 * total[j].max().item(), (space, name, diff)


@pytest.mark.parametrize("kind", ["pixart", "sana"])
def test_cross_attention_transformer_concepts_equal_an_independent_computation(kind):
    """PixArt and Sana (cross-attention to the text): OVAM's concept maps, re-derived in float64 from each attn2
    module's own input and projections: the concept encoded alone (lower-cased, Sana without its instruction),
    through the caption projection (and Sana's caption norm), softmax over its tokens and the sink token (T5's
    </s>, Gemma's <bos>), on the conditional half of the CFG batch. Image bit-identical."""
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    pipe = tiny_dit_pipeline(kind)
    concepts = ["circle", "sky blue"]
    kw = dict(num_inference_steps=2, output_type="pt", height=64, width=64, guidance_scale=4.0, max_sequence_length=24,
              use_resolution_binning=False, clean_caption=False)
    prompts = ["a red circle", "a giraffe and a zebra"]
    seen = []
    mods = [m for n, m in pipe.transformer.named_modules() if n.endswith("attn2")]
    plain, traced, tc = traced_under(pipe, prompts, kw, concepts, lambda: [m.register_forward_pre_hook(
        lambda m, a, k: seen.append((m, (a[0] if a else k["hidden_states"]))), with_kwargs=True) for m in mods])
    assert torch.equal(plain, traced) and len(seen) == 2 * len(mods)
    t = pipe.transformer
    keys_in = {}
    for c in concepts:
        n = len(pipe.tokenizer(c)["input_ids"])
        extra = {"complex_human_instruction": None} if kind == "sana" else {}
        e = pipe.encode_prompt(prompt=c, do_classifier_free_guidance=False, device="cpu", clean_caption=False,
                               max_sequence_length=n, **extra)[0][0, :n]
        e = t.caption_projection(e)
        e = t.caption_norm(e) if kind == "sana" else e
        keys_in[c] = (e, list(range(1, n)) if kind == "sana" else list(range(n - 1)))
    h = w = 64 // (pipe.vae_scale_factor * t.config.patch_size)
    for image in range(2):
        want = {c: 0 for c in concepts}
        for m, x in seen:
            x = x[2 + image]  # the conditional half of [uncond, cond]
            q = m.to_q(x).double().view(x.shape[0], m.heads, -1)  # [N, H, d]
            for c, (e, rows) in keys_in.items():
                k = m.to_k(e).double().view(e.shape[0], m.heads, -1)
                p = torch.einsum("nhd,khd->hkn", q, k).mul(q.shape[-1] ** -0.5).softmax(1)[:, rows].mean(1)  # [H, N]
                up = F.interpolate(p.sum(0).reshape(1, 1, h, w).float(), size=(64, 64), mode="bicubic",
                                   align_corners=False)[0, 0].double()
                want[c] = want[c] + up
        hm = tc.heat_maps(image)
        for c in concepts:
            got, exp = hm.concepts[c].heat.double(), want[c].clamp(min=0)
            assert (got - exp).abs().max().item() <= 1e-5 * exp.max().item(), c


def test_kontext_concepts_are_mapped_on_the_generated_tokens_only():
    """Flux.1 Kontext's image sequence is [generated, reference]: the concept stream attends to both, as the text
    does, and the concept maps cover the generated image's grid; the image is unchanged."""
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    pipe = tiny_dit_pipeline("flux-kontext")
    reference = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kw = dict(image=reference, num_inference_steps=2, output_type="pt", max_sequence_length=24, height=64, width=96,
              _auto_resize=False, max_area=64 * 96)
    plain, traced, tc = traced_under(pipe, "make the circle red", kw, ["circle", "grass"], list)
    hm = tc.heat_maps(0)
    assert torch.equal(plain, traced) and hm.reference.shape == (64, 64)
    for space in (hm.concepts, hm.concept_outputs):
        assert space.size == hm.size == (64, 96) and space["grass"].heat.shape == (64, 96)
        assert torch.isfinite(space.token_maps()).all()


def chat_concepts(pipe, concepts, template, tok, drop=0, special_tokens=True):
    """Each concept (then the null concept) encoded as the pipeline encodes a prompt, at its templated length less
    the dropped prefix (no padding): the stacked states and each one's map rows (its own tokens; the null's: all)."""
    from daamlib.dit.registry import family_of
    from daamlib.dit.tokens import stream_tokens

    stream = family_of(pipe).streams[0]
    parts, rows, at = [], [], 0
    for c in concepts + [""]:
        n = len(tok(template.replace("{}", c), add_special_tokens=special_tokens)["input_ids"]) - drop
        parts.append(pipe.encode_prompt(prompt=c, device="cpu", max_sequence_length=n)[0][0])
        rows.append([at + r for r in (stream_tokens(pipe, stream, c, None, {}).positions if c else range(n))])
        at += n
    return torch.cat(parts), rows


def rotary_cross(attn, norm_img, norm_c, rope):
    """``[N, concept-stream tokens]``: the image's queries (with their rotary positions after the concept stream's)
    against the concept keys, softmax over the concept stream, heads summed, in float64."""
    from diffusers.models.embeddings import apply_rotary_emb

    q = attn.norm_q(attn.to_q(norm_img).unflatten(-1, (attn.heads, -1)))
    k = attn.norm_added_k(attn.add_k_proj(norm_c).unflatten(-1, (attn.heads, -1)))
    q = apply_rotary_emb(torch.cat([torch.zeros_like(k), q], 1), rope, sequence_dim=1)[:, k.shape[1]:]
    k = apply_rotary_emb(torch.cat([k, torch.zeros_like(q)], 1), rope, sequence_dim=1)[:, : k.shape[1]]
    p = torch.einsum("bnhd,bchd->bhnc", q.double(), k.double()).mul(attn.head_dim ** -0.5).softmax(-1)
    return p.sum(1)[0]


def add_block_maps(want, p, dots, rows, n_c, grid, size):
    """One block's concept maps, added to ``want``: cross-attention (``p``: [N, concept-stream tokens], each
    concept's rows summed) and output space (``dots``: [concept-stream tokens, N], each concept's rows averaged,
    softmax over concepts and null), each upsampled to ``size``."""
    maps = {"cross": torch.stack([p[:, r].sum(-1) for r in rows])[:n_c],
            "out": torch.stack([dots[r].mean(0) for r in rows]).softmax(0)[:n_c]}
    for space, m in maps.items():
        want[space] = want[space] + F.interpolate(m.reshape(1, n_c, *grid).float(), size=size, mode="bicubic",
                                                  align_corners=False)[0].double()


def assert_concept_maps(hm, want, concepts):
    for got, space in ((hm.concepts, "cross"), (hm.concept_outputs, "out")):
        for j, name in enumerate(concepts):
            exp = want[space][j].clamp(min=0)
            assert (got[name].heat.double() - exp).abs().max().item() <= 1e-5 * exp.max().item(), (space, name)


@pytest.mark.parametrize("kind", ["flux2", "flux2-dev"])
def test_flux2_concept_attention_equals_the_blocks_own_text_path(kind):
    """Flux.2 [klein] and [dev]: the concept stream (each concept in the pipeline's chat template at its exact
    length, then the null concept's) run through each double-stream block's own forward as its text stream, with
    the blocks' shared text modulation and the text positions the pipeline gives text; maps equal, image unchanged."""
    from diffusers.models.transformers.transformer_flux2 import Flux2Modulation

    from daamlib.dit.registry import family_of

    pipe = two_block_flux(kind)
    concepts = ["circle", "sky blue"]
    kw = dict(num_inference_steps=2, output_type="pt", max_sequence_length={"flux2": 24, "flux2-dev": 64}[kind],
              height=64, width=96, **({"guidance_scale": 1.0} if kind == "flux2" else {}))  # klein: no negative call
    plain, traced, calls, tc = run_with_block_inputs(pipe, ["a red circle", "a giraffe and a zebra"], kw, concepts)
    assert torch.equal(plain, traced)
    stream = family_of(pipe).streams[0]
    tok = pipe.tokenizer.tokenizer if kind == "flux2-dev" else pipe.tokenizer
    states, rows = chat_concepts(pipe, concepts, stream.template(pipe, {}), tok, special_tokens=stream.special_tokens)
    t = pipe.transformer
    h, w = tc.generations[-1].grid
    n_c = len(concepts)
    for image in range(2):
        want = {"cross": 0, "out": 0}
        for call in calls:
            ids = call["kwargs"]["img_ids"]
            ids = ids[0] if ids.ndim == 3 else ids
            (tcos, tsin), (icos, isin) = t.pos_embed(pipe._prepare_text_ids(states[None])[0]), t.pos_embed(ids)
            rope = (torch.cat([tcos, icos]), torch.cat([tsin, isin]))
            c = t.context_embedder(states)[None]
            for block, bk in zip(t.transformer_blocks, call["blocks"]):
                img = bk["hidden_states"][image:image + 1]
                mods = [m[image:image + 1] if m.shape[0] > 1 else m for m in (bk["temb_mod_img"], bk["temb_mod_txt"])]
                (shift, scale, _), _ = Flux2Modulation.split(mods[0], 2)
                (c_shift, c_scale, _), _ = Flux2Modulation.split(mods[1], 2)
                norm_img = (1 + scale) * block.norm1(img) + shift
                norm_c = (1 + c_scale) * block.norm1_context(c) + c_shift
                _, c_out = block.attn(hidden_states=norm_img, encoder_hidden_states=norm_c, image_rotary_emb=rope)
                dots = torch.einsum("nd,cd->cn", bk["attn_out"][image].double(), c_out[0].double())
                add_block_maps(want, rotary_cross(block.attn, norm_img, norm_c, rope), dots, rows, n_c, (h, w), (64, 96))
                c = block(hidden_states=img, encoder_hidden_states=c, temb_mod_img=mods[0], temb_mod_txt=mods[1],
                          image_rotary_emb=rope)[0]
        assert_concept_maps(tc.heat_maps(image), want, concepts)


def test_qwen_image_concept_attention_equals_the_blocks_own_text_path():
    """Qwen-Image: the concept stream (each concept in the chat template after the dropped prefix, at its exact
    length, then the null concept's) through the text input layers and each block's own forward as its text
    stream, with text rotary positions for the concept stream's length; maps equal, image unchanged."""
    from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    pipe = tiny_dit_pipeline("qwen")
    concepts = ["circle", "sky blue"]
    kw = dict(num_inference_steps=2, output_type="pt", max_sequence_length=24, height=64, width=96)
    plain, traced, calls, tc = run_with_block_inputs(pipe, ["a red circle", "a giraffe and a zebra"], kw, concepts)
    assert torch.equal(plain, traced)
    states, rows = chat_concepts(pipe, concepts, pipe.prompt_template_encode, pipe.tokenizer,
                                 drop=pipe.prompt_template_encode_start_idx)
    t = pipe.transformer
    h, w = tc.generations[-1].grid
    n_c = len(concepts)
    for image in range(2):
        want = {"cross": 0, "out": 0}
        for call in calls:
            img_freqs, txt_freqs = t.pos_embed(call["kwargs"]["img_shapes"], max_txt_seq_len=len(states), device="cpu")
            c = t.txt_in(t.txt_norm(states))[None]
            for block, bk in zip(t.transformer_blocks, call["blocks"]):
                img, temb = bk["hidden_states"][image:image + 1], bk["temb"][image:image + 1]
                norm_img = block._modulate(block.img_norm1(img), block.img_mod(temb).chunk(2, dim=-1)[0])[0]
                norm_c = block._modulate(block.txt_norm1(c), block.txt_mod(temb).chunk(2, dim=-1)[0])[0]
                _, c_out = block.attn(hidden_states=norm_img, encoder_hidden_states=norm_c,
                                      image_rotary_emb=(img_freqs, txt_freqs))
                attn = block.attn
                q = apply_rotary_emb_qwen(attn.norm_q(attn.to_q(norm_img).unflatten(-1, (attn.heads, -1))), img_freqs,
                                          use_real=False)
                k = apply_rotary_emb_qwen(attn.norm_added_k(attn.add_k_proj(norm_c).unflatten(-1, (attn.heads, -1))),
                                          txt_freqs, use_real=False)
                p = torch.einsum("bnhd,bchd->bhnc", q.double(), k.double()).mul(q.shape[-1] ** -0.5).softmax(-1)
                dots = torch.einsum("nd,cd->cn", bk["attn_out"][image].double(), c_out[0].double())
                add_block_maps(want, p.sum(1)[0], dots, rows, n_c, (h, w), (64, 96))
                c = block(hidden_states=img, encoder_hidden_states=c, encoder_hidden_states_mask=None, temb=temb,
                          image_rotary_emb=(img_freqs, txt_freqs))[0]
        assert_concept_maps(tc.heat_maps(image), want, concepts)


def test_zimage_concept_attention_equals_its_own_blocks_run_on_the_concept_stream():
    """Z-Image's main blocks are single-stream (image and text share every weight): each concept is made a caption
    by the model's own code (``patchify_and_embed``'s padding and positions, the caption embedder, the pad token, the
    text-only refiner), then each main block's own forward runs on [the generation's image part, concept stream]
    with its modulation, and the concept rows of that run are the stream's next state (the image rows, which would
    see the concepts, are discarded). Maps: the image's queries against the concept keys (softmax over the stream)
    and the real image outputs · that run's concept outputs. Guidance on: the conditional and unconditional
    sequences differ in length, so the batch is padded and masked; image unchanged."""
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    pipe = tiny_dit_pipeline("zimage")
    concepts = ["circle", "sky blue"]
    prompts = ["a red circle", "a giraffe and a zebra standing in the tall grass of a wide plain under a clear blue "
               "sky at noon, with a few white clouds"]  # two caption lengths after padding: 32 and 64
    kw = dict(num_inference_steps=2, output_type="pt", height=64, width=96, max_sequence_length=128)
    t = pipe.transformer
    calls = []

    def on_block(block, args, kwargs):
        calls[-1].append({"args": args})

    def on_attn(module, args, kwargs, out):
        calls[-1][-1].update(attn_in=args[0], attn_out=out)

    def register():
        handles = [t.register_forward_pre_hook(lambda m, a, k: calls.append([]), with_kwargs=True)]
        for layer in t.layers:
            handles += [layer.register_forward_pre_hook(on_block, with_kwargs=True),
                        layer.attention.register_forward_hook(on_attn, with_kwargs=True)]
        return handles

    plain, traced, tc = traced_under(pipe, prompts, kw, concepts, register)
    assert torch.equal(plain, traced)
    assert all(call[0]["args"][1] is not None for call in calls)  # the batch is padded: a key mask
    # each concept (then the null concept) as the model takes a caption
    from daamlib.dit.registry import family_of

    stream = family_of(pipe).streams[0]
    template = stream.template(pipe, {})
    feats, freqs, rows, at = [], [], [], 0
    for c in concepts + [""]:
        n = len(pipe.tokenizer(template.replace("{}", c))["input_ids"])
        states = pipe.encode_prompt(prompt=c, device="cpu", do_classifier_free_guidance=False,
                                    max_sequence_length=n)[0][0]
        assert len(states) == n
        _, (cap,), _, _, (pos,), _, (pad,) = t.patchify_and_embed([torch.zeros(4, 1, 4, 4)], [states], 2, 1)
        x = torch.where(pad[:, None], t.cap_pad_token, t.cap_embedder(cap))[None]
        f = t.rope_embedder(pos)[None, : len(cap)]  # the model keeps as many positions as rows (_prepare_sequence)
        for layer in t.context_refiner:
            x = layer(x, None, f)
        feats.append(x)
        freqs.append(f)
        from daamlib.dit.tokens import stream_tokens

        own = stream_tokens(pipe, stream, c, None, {}).positions if c else range(n)
        rows.append([at + r for r in own])
        at += x.shape[1]
    c0, c_freqs = torch.cat(feats, 1), torch.cat(freqs, 1)
    h, w = tc.generations[-1].grid
    n_x = h * w + (-(h * w)) % 32
    n_c = len(concepts)
    for image in range(2):
        want = {"cross": 0, "out": 0}
        for call in calls:
            c = c0
            for layer, bk in zip(t.layers, call):
                x, f, adaln = (bk["args"][i][image:image + 1] for i in (0, 2, 3))
                seen = {}
                hook = layer.attention.register_forward_hook(lambda m, a, k, o: seen.update(i=a[0], o=o),
                                                             with_kwargs=True)
                try:
                    c = layer(torch.cat([x[:, :n_x], c], 1), None, torch.cat([f[:, :n_x], c_freqs], 1), adaln)[:, n_x:]
                finally:
                    hook.remove()
                attn = layer.attention
                q = attn.norm_q(attn.to_q(bk["attn_in"][image:image + 1, : h * w]).unflatten(-1, (attn.heads, -1)))
                k = attn.norm_k(attn.to_k(seen["i"][:, n_x:]).unflatten(-1, (attn.heads, -1)))
                q = torch.view_as_real(torch.view_as_complex(q.double().unflatten(-1, (-1, 2)))
                                       * f[:, : h * w, None].to(torch.complex128)).flatten(3)
                k = torch.view_as_real(torch.view_as_complex(k.double().unflatten(-1, (-1, 2)))
                                       * c_freqs[:, :, None].to(torch.complex128)).flatten(3)
                p = torch.einsum("bnhd,bchd->bhnc", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
                dots = torch.einsum("nd,cd->cn", bk["attn_out"][image, : h * w].double(), seen["o"][0, n_x:].double())
                add_block_maps(want, p.sum(1)[0], dots, rows, n_c, (h, w), (64, 96))
        assert_concept_maps(tc.heat_maps(image), want, concepts)
