"""Maps of an existing image (issue 29, part 1): ``attribute`` noises the image's VAE latents at each timestep and
runs the denoiser once per timestep. Checked against an independent computation: the denoiser's input is the
documented ``x_t`` and timestep, and on a UNet the maps equal the naive reference of direct UNet calls."""

import numpy as np
import pytest
import torch

from daamlib.attribute import AttributionError, attribute

IMAGE = np.random.default_rng(3).integers(0, 255, (64, 96, 3), dtype=np.uint8)
TIMESTEPS = (300, 700)


def pipeline(tiny, kind):
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    return tiny(kind) if kind in ("sd1", "sd2", "sdxl") else tiny_dit_pipeline(kind)


def x0_by_hand(pipe, kind):
    """The image's clean latents, computed here: the VAE posterior's mean, shifted and scaled, packed for Flux."""
    x = torch.from_numpy(IMAGE).permute(2, 0, 1)[None].float() / 127.5 - 1
    if kind in ("flux2", "flux2-dev"):  # diffusers' own image encoding for Flux.2 (patchified, BN-normalised)
        return pipe._encode_vae_image(x, None)
    if kind == "qwen":  # as QwenImageImg2ImgPipeline encodes (with the posterior's mode), then its packing
        cfg = pipe.vae.config
        z = pipe.vae.encode(x[:, :, None]).latent_dist.mode()  # [1, C, 1, h, w]
        z = (z - torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)) * (1 / torch.tensor(cfg.latents_std).view(
            1, -1, 1, 1, 1))
        z = z.transpose(1, 2)
        return pipe._pack_latents(z, 1, z.shape[2], z.shape[-2], z.shape[-1])
    out = pipe.vae.encode(x)
    z = out.latent if kind == "sana" else out.latent_dist.mode()
    z = (z - (getattr(pipe.vae.config, "shift_factor", None) or 0.0)) * pipe.vae.config.scaling_factor
    if kind in ("flux", "chroma"):  # 2 × 2 patches of the latent → one token: [B, h/2 · w/2, 4C]
        b, c, h, w = z.shape
        z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    return z


KINDS = ["sd1", "sdxl", "pixart", "sd3", "flux", "chroma", "qwen", "sana", "zimage", "flux2", "flux2-dev"]
FLOW = ("sd3", "flux", "chroma", "qwen", "sana", "zimage", "flux2", "flux2-dev")
LENGTH = {"flux": 24, "chroma": 24, "pixart": 24, "qwen": 24, "sana": 24, "flux2": 24, "zimage": 40, "flux2-dev": 64}


@pytest.mark.parametrize("kind", KINDS)
def test_the_denoiser_sees_the_noised_image_at_each_timestep(tiny, kind):
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (UNets, PixArt; the model's alphas_cumprod) or (1−σ) x_0 + σ ε with σ = t/1000
    (SD3, Flux, Chroma), ε drawn in order from one generator seeded with ``seed``; one call per timestep, with
    the conditional branch only (guidance off, except Flux's distilled guidance, an input)."""
    pipe = pipeline(tiny, kind)
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    seen = []

    def keep(module, args, kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states", kwargs.get("x")))
        t = args[1] if len(args) > 1 else kwargs.get("timestep", kwargs.get("t"))
        x = torch.stack([v[:, 0] for v in x]) if isinstance(x, list) else x  # Z-Image: [C, frames, H, W] per image
        seen.append((x.detach().clone(), torch.as_tensor(t).flatten()[0].item()))

    handle = denoiser.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        kw = {"max_sequence_length": LENGTH[kind]} if kind in LENGTH else {}
        hm = attribute(pipe, IMAGE, "a red circle", timesteps=TIMESTEPS, seed=5, **kw)
    finally:
        handle.remove()
    assert len(seen) == len(TIMESTEPS) and hm.timesteps == list(TIMESTEPS) and len(hm.steps) == 2
    x0 = x0_by_hand(pipe, kind)
    g = torch.Generator().manual_seed(5)
    flow = kind in FLOW
    alphas = pipe.scheduler.alphas_cumprod if not flow else None
    for (x, t_seen), t in zip(seen, TIMESTEPS):
        eps = torch.randn(x0.shape, generator=g)
        if flow:  # what each transformer is given as its timestep: σ, σ·1000, or Z-Image's 1 − σ
            want = (1 - t / 1000) * x0 + t / 1000 * eps
            t_want = {"sd3": t, "sana": t, "zimage": 1 - t / 1000}.get(kind, t / 1000)
            if kind in ("flux2", "flux2-dev"):  # the pipeline packs Flux.2's [B, C, h, w] latents into tokens
                want = pipe._pack_latents(want)
        else:
            a = alphas[t].double()
            want, t_want = (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float(), t
        assert x.shape[0] == 1  # one branch: nothing but the conditional row
        torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)
        assert abs(t_seen - t_want) < 1e-4
    assert hm.size == (64, 96) and (hm.image == IMAGE).all()
    assert torch.isfinite(hm.token_maps()).all() and hm.token_maps().min() >= 0


def test_unet_maps_equal_the_naive_reference_of_direct_unet_calls(tiny):
    """On tiny SD-1, independent of the pipeline's loop: the UNet called directly on x_t with the prompt's
    embeddings, every cross-attention probability kept by diffusers' classic processor, summed over timesteps."""
    from test_trace import NaiveRecorder, heads_of

    pipe = tiny("sd1")
    hm = attribute(pipe, IMAGE, "a red circle", timesteps=TIMESTEPS, seed=2)
    x0 = x0_by_hand(pipe, "sd1")
    g = torch.Generator().manual_seed(2)
    embeds, _ = pipe.encode_prompt("a red circle", "cpu", 1, False)
    with NaiveRecorder(pipe) as rec, torch.no_grad():
        for t in TIMESTEPS:
            eps = torch.randn(x0.shape, generator=g)
            a = pipe.scheduler.alphas_cumprod[t].double()
            xt = (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()
            pipe.unet(xt, t, encoder_hidden_states=embeds)
    want = rec.token_maps(0, 1, False, len(hm.tokens), tuple(x0.shape[-2:]), hm.size, heads_of(pipe))
    got = hm.token_maps()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_transformer_maps_equal_the_naive_reference(tiny, kind):
    """SD3 and Flux.1: the pipeline's own call on the hand-made x_t under the naive reference (every head, block
    and call in float64) equals attribute's maps."""
    from daamlib import trace
    from daamlib.attribute import at_timestep
    from test_dit import NaiveReference

    pipe = pipeline(tiny, kind)
    kw = {"max_sequence_length": 24} if kind == "flux" else {}
    hm = attribute(pipe, IMAGE, "a red circle", timesteps=TIMESTEPS, seed=1, **kw)
    call = dict(prompt="a red circle", height=64, width=96, output_type="latent", num_inference_steps=1, **kw)
    if kind == "sd3":
        call["guidance_scale"] = 1.0
    x0 = x0_by_hand(pipe, kind)
    g = torch.Generator().manual_seed(1)
    with NaiveReference(pipe) as ref:
        for t in TIMESTEPS:
            eps = torch.randn(x0.shape, generator=g)
            with at_timestep(pipe.scheduler, t, "flow"):
                pipe(latents=(1 - t / 1000) * x0 + t / 1000 * eps, **call)
    with trace(pipe) as tc, at_timestep(pipe.scheduler, 500, "flow"):  # the kept text columns and the grid
        pipe(latents=x0, **call)
    gen = tc.generations[-1]
    want = ref.maps(kind, 0, 1, gen.columns, gen.grid, hm.size, False)
    got = hm.token_maps().double()
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


@pytest.mark.parametrize("image, timesteps, message", [
    (np.zeros((60, 96, 3), dtype=np.uint8), (500,), r"the image is 96×60 but StableDiffusionPipeline needs sides "
                                                    r"divisible by 8; resize or crop it, e\.g\. to 96×64"),
    (np.zeros((64, 64), dtype=np.uint8), (500,), r"pass an RGB image"),
    ("/nonexistent/scene.png", (500,), "cannot read the image /nonexistent/scene.png"),
    (IMAGE, (0,), r"timesteps must be numbers in \(0, 1000\)"),
    (IMAGE, (), "timesteps is empty"),
])
def test_bad_input_is_refused_before_anything_runs(tiny, image, timesteps, message):
    pipe = tiny("sd1")
    calls = []
    handle = pipe.vae.register_forward_pre_hook(lambda *a: calls.append(1))
    encode = pipe.vae.encode
    pipe.vae.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    try:
        with pytest.raises(AttributionError, match=message):
            attribute(pipe, image, "a red circle", timesteps=timesteps)
    finally:
        handle.remove()
        del pipe.vae.encode
    assert not calls


def test_an_unsupported_pipeline_names_the_supported_ones(tiny):
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    with pytest.raises(AttributionError, match="does not support FluxKontextPipeline yet; it supports UNet pipelines"):
        attribute(tiny_dit_pipeline("flux-kontext"), IMAGE, "a red circle")


def test_daam_attribute_writes_a_rendered_scene_and_its_maps(tmp_path):
    """`daam attribute` on the embedded model and a ShapeWorld render (a picture no model drew): the image, every
    word's map, an experiment that loads, with the timesteps and noise recorded."""
    import json

    from PIL import Image

    from daamlib import load_experiment
    from daamlib.cli import main
    from daamlib.shapeworld.world import ShapeWorld

    scene = ShapeWorld().scene("test", 0, kind="pair")  # a test-split render: never trained on
    image = scene.image
    Image.fromarray(image).save(tmp_path / "scene.png")
    assert main(["attribute", str(tmp_path / "scene.png"), "--prompt", scene.caption, "--timesteps", "400,600",
                 "--concepts", "grass,circle", "--out", str(tmp_path / "a")]) == 0
    meta = json.loads((tmp_path / "a" / "experiment" / "meta.json").read_text())
    assert meta["settings"]["attribute"] and meta["settings"]["timesteps"] == [400.0, 600.0]
    hm, _ = load_experiment(tmp_path / "a" / "experiment")
    assert hm.size == image.shape[:2] and (hm.image == image).all() and len(hm.steps) == 2
    assert len(list((tmp_path / "a" / "words").iterdir())) == len(hm) == len(scene.words)
    assert hm.concepts.words == ["grass", "circle"] and len(hm.concepts.steps) == 2  # saved and loaded with the maps
    assert len(list((tmp_path / "a" / "concepts").iterdir())) == 2 and (tmp_path / "a" / "concepts_grid.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["{tmp}/none.png", "--prompt", "a cat"], "cannot read the image .*none.png"),
    (["{tmp}/odd.png", "--prompt", "a cat"], r"the image is 60×60 but .* needs sides divisible by 8"),
    (["{tmp}/ok.png", "--prompt", "a cat", "--timesteps", "500,x"], "--timesteps must be comma-separated numbers"),
    (["{tmp}/ok.png", "--prompt", "a cat", "--timesteps", "1500"], r"timesteps must be numbers in \(0, 1000\)"),
    (["{tmp}/ok.png", "--prompt", "a cat", "--concepts", "grass,,sky"], "each concept must be a non-empty string"),
])
def test_daam_attribute_refuses_bad_input_with_the_fix(tmp_path, capsys, args, message):
    import re

    from PIL import Image

    from daamlib.cli import main

    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    Image.new("RGB", (60, 60)).save(tmp_path / "odd.png")
    assert main(["attribute"] + [a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "o")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o" / "experiment").exists()


def test_the_absence_threshold_is_chosen_on_val_and_scored_on_test():
    """Balanced accuracy picks the threshold between present and absent peaks on val; on test it says how often an
    absent concept came out absent, with an interval over images."""
    from daamlib.studies.real_images import absence_table, choose_absence_threshold

    val = [{"id": f"v{i}", "concept": "c", "present": p, "peak": x}
           for i, (p, x) in enumerate([(True, 5.0), (True, 6.0), (False, 1.0), (False, 2.0), (True, 4.0)])]
    t = choose_absence_threshold(val)
    assert 2.0 < t <= 4.0
    test = [{"id": f"t{i // 2}", "concept": "c", "present": i % 2 == 0, "peak": float(i % 2 == 0) * 5 + (i % 3)}
            for i in range(20)]
    table = absence_table(test, t, n_boot=200).set_index("measure")
    assert table.loc["absent concepts that came out absent (%)", "value"] == 100 * sum(
        r["peak"] < t for r in test if not r["present"]) / 10
    assert 0 <= table.loc["AUC, present vs absent concepts (by peak)", "value"] <= 1
    with pytest.raises(ValueError, match="needs present and absent concepts"):
        choose_absence_threshold([r for r in val if r["present"]])
    # ConceptAttention's rows carry an output-space peak too: its own threshold on val, its own rows on test
    from daamlib.studies.real_images import OUTPUT_PEAK, absence_tables

    for rows in (val, test):
        for r in rows:
            r[OUTPUT_PEAK] = 10 - r["peak"] if r["id"].startswith("v") else r["peak"] / 2
    both = absence_tables(test, val).set_index("measure")
    assert both.loc["peak threshold (chosen on val)", "value"] == t
    t_out = choose_absence_threshold(val, OUTPUT_PEAK)
    assert both.loc[f"peak threshold (chosen on val), {OUTPUT_PEAK}", "value"] == t_out
    assert both.loc[f"absent concepts that came out absent (%), {OUTPUT_PEAK}", "value"] == 100 * sum(
        r[OUTPUT_PEAK] < t_out for r in test if not r["present"]) / 10


@pytest.mark.parametrize("model", ["shapeworld", "shapeworld-clip"])
def test_daam_attribute_on_a_picture_drawn_by_other_means_with_each_embedded_model(tmp_path, model):
    """A picture no world rendered (drawn with PIL: a red disc and a blue box on white), on both embedded models:
    the maps are written and load, and the circle's map is heavier on the disc than on the box."""
    from PIL import Image, ImageDraw

    from daamlib import load_experiment
    from daamlib.cli import main

    im = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(im)
    draw.ellipse((6, 20, 26, 40), fill=(220, 30, 30))
    draw.rectangle((38, 22, 56, 40), fill=(30, 60, 220))
    im.save(tmp_path / "drawn.png")
    assert main(["attribute", str(tmp_path / "drawn.png"), "--prompt", "a red circle left of a blue square",
                 "--model", model, "--timesteps", "250", "--out", str(tmp_path / model)]) == 0
    hm, meta = load_experiment(tmp_path / model / "experiment")
    assert meta["settings"]["model"] == model and hm.size == (64, 64)
    heat = hm["circle"].heat
    assert heat[20:40, 6:26].mean() > heat[22:40, 38:56].mean()


@pytest.mark.parametrize("kind", FLOW + ("pixart",))
def test_concepts_on_every_transformer_family_through_attribute(tiny, kind):
    """Every traced text-to-image transformer maps concepts of an existing image (their exactness is tested per
    family in tests/test_concepts.py): one map per concept and timestep, finite and non-negative; joint and
    single-stream families in both spaces."""
    pipe = pipeline(tiny, kind)
    kw = {"max_sequence_length": LENGTH[kind]} if kind in LENGTH else {}
    hm = attribute(pipe, IMAGE, "a red circle", concepts=["circle", "grass"], timesteps=(250, 750), seed=0, **kw)
    spaces = [hm.concepts] + ([hm.concept_outputs] if kind not in ("pixart", "sana") else [])  # OVAM's: one space
    for maps in spaces:
        assert maps.words == ["circle", "grass"] and len(maps.steps) == 2 and maps.size == (64, 96)
        assert all(torch.isfinite(maps[c].heat).all() and maps[c].heat.min() >= 0 and maps[c].heat.max() > 0
                   for c in ("circle", "grass"))
