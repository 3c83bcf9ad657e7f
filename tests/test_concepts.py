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


def test_concepts_on_a_transformer_are_refused_for_now():
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    with pytest.raises(TraceError, match="concepts= maps concepts on UNets only for now; FluxPipeline"):
        with trace(tiny_dit_pipeline("flux"), concepts=["grass"]):
            pass
