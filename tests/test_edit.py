"""Editing pipelines traced exactly (issue 30): img2img and inpainting start part-way, at ``strength``; their maps
sum the steps actually run and equal the naive reference's, and the traced image is the untraced one."""

import pytest
import torch

from test_trace import check_against_reference

PROMPTS = ["a red circle", "a giraffe and a zebra standing in a field"]  # two lengths


def edit_pipeline(tiny, kind: str, edit: str):
    import diffusers

    base = tiny(kind)
    name = {("sd1", "img2img"): "StableDiffusionImg2ImgPipeline", ("sd1", "inpaint"): "StableDiffusionInpaintPipeline",
            ("sdxl", "img2img"): "StableDiffusionXLImg2ImgPipeline",
            ("sdxl", "inpaint"): "StableDiffusionXLInpaintPipeline"}[kind, edit]
    pipe = getattr(diffusers, name)(**base.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(edit: str, height: int, width: int) -> dict:
    g = torch.Generator().manual_seed(7)
    kw = {"image": torch.rand(1, 3, height, width, generator=g), "strength": 0.5, "num_inference_steps": 4}
    if edit == "inpaint":
        mask = torch.zeros(1, 1, height, width)
        mask[..., height // 4: height // 2, width // 4:] = 1  # the region to repaint
        kw["mask_image"] = mask
        kw["strength"] = 0.75
        kw.update(height=height, width=width)  # inpainting generates at the size asked (default: the model's)
    return kw


CASES = [(kind, edit, guidance, size) for kind in ("sd1", "sdxl") for edit in ("img2img", "inpaint")
         for guidance, size in ((5.0, (64, 96)), (1.0, (64, 64)))]


@pytest.mark.parametrize("kind, edit, guidance, size", CASES,
                         ids=[f"{k}-{e}-{'cfg' if g > 1 else 'nocfg'}-{s[0]}x{s[1]}" for k, e, g, s in CASES])
def test_an_edit_is_traced_exactly_over_the_steps_it_runs(tiny, kind, edit, guidance, size):
    pipe = edit_pipeline(tiny, kind, edit)
    kw = inputs(edit, *size)
    for index in range(2):
        tc, hm = check_against_reference(pipe, PROMPTS, seed=[0, 1], image_index=index, guidance_scale=guidance, **kw)
        run = int(kw["num_inference_steps"] * kw["strength"])
        assert hm.steps_completed == hm.steps_expected == run == len(tc.generations[-1].timesteps)
        assert hm.size == size


FLUX = [(edit, kw, per_step) for edit in ("img2img", "inpaint")
        for kw, per_step in ((dict(true_cfg_scale=4.0, negative_prompt="a photo", height=64, width=96), 2),
                             (dict(guidance_scale=3.5, height=96, width=64), 1))]


@pytest.mark.parametrize("edit, kw, per_step", FLUX,
                         ids=[f"flux-{e}-{'cfg' if p > 1 else 'nocfg'}" for e, _, p in FLUX])
def test_a_flux_edit_is_traced_exactly_over_the_steps_it_runs(edit, kw, per_step):
    """FluxImg2ImgPipeline and FluxInpaintPipeline: maps equal the naive reference (every head, block and step, in
    float64), images equal untraced ones, two prompts of different lengths, CFG (true CFG's separate call) on and off."""
    from diffusers import FluxInpaintPipeline

    from daamlib import trace
    from daamlib.testing.tiny_dit import tiny_dit_pipeline
    from test_dit import NaiveReference, call_kwargs

    pipe = tiny_dit_pipeline("flux-edit")
    if edit == "inpaint":
        pipe = FluxInpaintPipeline(**pipe.components)
        pipe.set_progress_bar_config(disable=True)
    extra = inputs(edit, kw["height"], kw["width"])
    extra.pop("num_inference_steps"), extra.pop("height", None), extra.pop("width", None)
    kw = call_kwargs("flux", num_inference_steps=4, **kw, **extra)
    prompts = list(PROMPTS)
    kw_n = {k: v for k, v in kw.items() if k != "negative_prompt"}
    neg = {"negative_prompt": [kw["negative_prompt"]] * 2} if "negative_prompt" in kw else {}
    plain = pipe(prompt=prompts, generator=torch.Generator().manual_seed(0), **kw_n, **neg).images
    with NaiveReference(pipe) as ref:
        pipe(prompt=prompts, generator=torch.Generator().manual_seed(0), **kw_n, **neg)
    with trace(pipe) as tc:
        traced = pipe(prompt=prompts, generator=torch.Generator().manual_seed(0), **kw_n, **neg).images
    assert (plain - traced).abs().max().item() <= 1e-6
    gen = tc.generations[-1]
    run = int(4 * kw["strength"])
    for i in range(2):
        hm = tc.heat_maps(i)
        assert hm.steps_completed == hm.steps_expected == run == len(gen.timesteps)
        assert hm.size == tuple(extra["image"].shape[-2:])
        theirs = ref.maps("flux", i, 2, gen.columns, gen.grid, hm.size, False, per_step)
        assert (hm.token_maps().double() - theirs).abs().max().item() <= 1e-5 * theirs.abs().max().item()


def test_daam_edit_writes_an_edit_and_its_maps(tmp_path, capsys):
    """`daam edit IMAGE PROMPT` (img2img) and with `--mask` (inpainting) on the embedded model: the image, what was
    edited, every word's map, and an experiment whose settings say which edit ran, from where, over how many steps."""
    import json

    import numpy as np
    from PIL import Image

    from daamlib import load_experiment
    from daamlib.cli import main

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[16:40, 24:72] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["edit", str(tmp_path / "in.png"), "a blue circle above a red square", "--strength", "0.5",
                 "--steps", "4", "--out", str(tmp_path / "i2i")]) == 0
    meta = json.loads((tmp_path / "i2i" / "experiment" / "meta.json").read_text())
    s = meta["settings"]
    assert (s["edit"], s["pipeline"], s["strength"], s["steps_run"], s["steps_completed"]) == (
        "img2img", "StableDiffusionImg2ImgPipeline", 0.5, 2, 2)
    assert meta["size"] == [64, 96] and (tmp_path / "i2i" / "input.png").is_file()
    assert main(["edit", str(tmp_path / "in.png"), "a blue circle", "--mask", str(tmp_path / "mask.png"),
                 "--steps", "3", "--out", str(tmp_path / "inpaint")]) == 0
    s = json.loads((tmp_path / "inpaint" / "experiment" / "meta.json").read_text())["settings"]
    assert (s["edit"], s["pipeline"], s["mask"]) == ("inpaint", "StableDiffusionInpaintPipeline",
                                                     str(tmp_path / "mask.png"))
    assert (tmp_path / "inpaint" / "mask.png").is_file() and len(list((tmp_path / "inpaint" / "words").iterdir())) == 3
    hm, _ = load_experiment(tmp_path / "inpaint" / "experiment")  # the mask as the pipeline used it, with the maps
    assert hm.edit_mask.shape == hm.size == (64, 96) and hm.edit_mask[20, 30] and not hm.edit_mask[0, 0]


@pytest.mark.parametrize("args, message", [
    (["edit", "{tmp}/none.png", "a cat"], "cannot read the image .*none.png"),
    (["edit", "{tmp}/in.png", "a cat", "--mask", "{tmp}/small.png"], "the mask .*small.png is 8×8 but the image"),
    (["edit", "{tmp}/in.png", "a cat", "--strength", "1.5"], r"--strength must be in \(0, 1\], got 1.5"),
])
def test_daam_edit_refuses_bad_inputs_before_loading_a_model(tmp_path, capsys, args, message):
    import re

    from PIL import Image

    from daamlib.cli import main

    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    Image.new("L", (8, 8)).save(tmp_path / "small.png")
    assert main([a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "o")]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_generate_keeps_an_edits_image_size(tiny):
    import daamlib

    pipe = edit_pipeline(tiny, "sd1", "inpaint")
    kw = inputs("inpaint", 64, 96)
    kw.pop("height"), kw.pop("width"), kw.pop("num_inference_steps")
    hm = daamlib.generate(pipe, "a red circle", steps=4, **kw)
    assert hm.size == (64, 96) and hm.steps_completed == hm.steps_expected == 3


KONTEXT = [(dict(guidance_scale=3.5, height=64, width=96), (64, 96), 1),  # reference as large as the output
           (dict(true_cfg_scale=4.0, negative_prompt="a photo", height=96, width=64), (64, 64), 2)]  # smaller, CFG


@pytest.mark.parametrize("kw, reference, per_step", KONTEXT, ids=["kontext-nocfg-64x96", "kontext-cfg-96x64-ref64"])
def test_a_kontext_edit_is_traced_exactly_with_where_it_looked(kw, reference, per_step):
    """FluxKontextPipeline: the reference image's tokens follow the generated ones (``[text, generated, reference]``).
    Word maps over the generated tokens equal the naive reference's (normalised over every key); ``hm.reference`` is
    the generated tokens' mean attention to each reference token, summed over heads, blocks and steps, on the
    reference's own grid; the image equals the untraced one."""
    import torch.nn.functional as F

    from daamlib import trace
    from daamlib.testing.tiny_dit import tiny_dit_pipeline
    from test_dit import NaiveReference, call_kwargs

    pipe = tiny_dit_pipeline("flux-kontext")
    image = torch.rand(1, 3, *reference, generator=torch.Generator().manual_seed(7))
    kw = call_kwargs("flux", num_inference_steps=2, image=image, _auto_resize=False,
                     max_area=kw["height"] * kw["width"], **kw)
    if "negative_prompt" in kw:
        kw["negative_prompt"] = [kw["negative_prompt"]] * 2
    plain = pipe(prompt=PROMPTS, generator=torch.Generator().manual_seed(0), **kw).images
    with NaiveReference(pipe) as ref:
        pipe(prompt=PROMPTS, generator=torch.Generator().manual_seed(0), **kw)
    with trace(pipe) as tc:
        traced = pipe(prompt=PROMPTS, generator=torch.Generator().manual_seed(0), **kw).images
    assert (plain - traced).abs().max().item() == 0
    gen = tc.generations[-1]
    size = (kw["height"], kw["width"])
    f = pipe.vae_scale_factor * 2  # pixels per token side (VAE × 2×2 packing)
    assert gen.grid == (size[0] // f, size[1] // f) and gen.reference_grid == (reference[0] // f, reference[1] // f)
    n_img, n_txt = gen.grid[0] * gen.grid[1], ref.context
    for i in range(2):
        hm = tc.heat_maps(i)
        assert hm.size == size and hm.steps_completed == 2 and hm.reference.shape == reference
        words, looked = 0, 0
        for step_calls in ref.calls[::per_step]:  # with true CFG: the conditional call of each step
            for p in step_calls:
                rows = p[i, :, n_txt:n_txt + n_img]  # the generated tokens' queries: [heads, N, every key]
                for head in rows[..., gen.columns]:
                    m = head.T.reshape(len(gen.columns), *gen.grid).float()[None]
                    words = words + F.interpolate(m, size=size, mode="bicubic", align_corners=False)[0].double()
                looked = looked + rows[..., n_txt + n_img:].sum(0).mean(0)
        words = words.clamp(min=0)
        assert (hm.token_maps().double() - words).abs().max().item() <= 1e-5 * words.max().item()
        looked = F.interpolate(looked.reshape(1, 1, *gen.reference_grid).float(), size=reference, mode="bicubic",
                               align_corners=False)[0, 0].double().clamp(min=0)
        assert (hm.reference.double() - looked).abs().max().item() <= 1e-5 * looked.max().item()


QWEN_EDIT = [("make the circle red", dict(true_cfg_scale=4.0, negative_prompt="a photo", height=64, width=96), 2),
             ("a giraffe and a zebra standing in a field", dict(true_cfg_scale=1.0, height=96, width=64), 1)]


@pytest.mark.parametrize("prompt, kw, per_step", QWEN_EDIT, ids=["qwen-edit-cfg-64x96", "qwen-edit-nocfg-96x64"])
def test_a_qwen_image_edit_is_traced_exactly_with_where_it_looked(prompt, kw, per_step):
    """QwenImageEditPipeline: the text input holds the reference image's vision tokens before the instruction; the
    word axis is the instruction's own tokens (checked against the ids the processor made), word maps and
    ``hm.reference`` equal the naive reference's, and the image equals the untraced one."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from daamlib import trace
    from daamlib.testing.tiny_dit import reference_area, tiny_dit_pipeline
    from test_dit import NaiveReference

    pipe = tiny_dit_pipeline("qwen-edit")
    image = Image.fromarray(np.random.default_rng(7).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    kw = dict(image=image, prompt=prompt, num_inference_steps=2, output_type="pt", **kw)
    seen = []
    processor = pipe.processor.__class__.__call__

    def keep_ids(self, *args, **kwargs):
        out = processor(self, *args, **kwargs)
        seen.append(out["input_ids"][0])
        return out

    pipe.processor.__class__.__call__ = keep_ids
    try:
        with reference_area(64 * 64):
            plain = pipe(generator=torch.Generator().manual_seed(0), **kw).images
            with NaiveReference(pipe) as ref:
                pipe(generator=torch.Generator().manual_seed(0), **kw)
            with trace(pipe) as tc:
                traced = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    finally:
        pipe.processor.__class__.__call__ = processor
    assert (plain - traced).abs().max().item() == 0
    gen, hm = tc.generations[-1], tc.heat_maps(0)
    f = pipe.vae_scale_factor * 2
    size = (kw["height"], kw["width"])
    assert hm.size == size and gen.grid == (size[0] // f, size[1] // f) and hm.steps_completed == 2
    ids = seen[-2 if "negative_prompt" in kw else -1][pipe.prompt_template_encode_start_idx:]  # the prompt's, then
    # the negative prompt's
    assert (ids[: gen.columns[0]] == pipe.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum() >= 1
    words = pipe.tokenizer.decode(ids[gen.columns])
    assert words == prompt and [w.text for w in hm.alignment.words] == prompt.split()
    n_img, n_ref = gen.grid[0] * gen.grid[1], gen.reference_grid[0] * gen.reference_grid[1]
    expected, looked = 0, 0
    for step_calls in ref.calls[::per_step]:  # with true CFG: the conditional call of each step
        for p in step_calls:
            n_txt = p.shape[-1] - n_img - n_ref
            rows = p[0, :, n_txt:n_txt + n_img]  # the generated tokens' queries: [heads, N, every key]
            for head in rows[..., gen.columns]:
                m = head.T.reshape(len(gen.columns), *gen.grid).float()[None]
                expected = expected + F.interpolate(m, size=size, mode="bicubic", align_corners=False)[0].double()
            looked = looked + rows[..., n_txt + n_img:].sum(0).mean(0)
    expected = expected.clamp(min=0)
    assert (hm.token_maps().double() - expected).abs().max().item() <= 1e-5 * expected.max().item()
    up = [g * f for g in gen.reference_grid]
    looked = F.interpolate(looked.reshape(1, 1, *gen.reference_grid).float(), size=up, mode="bicubic",
                           align_corners=False)[0, 0].double().clamp(min=0)
    assert hm.reference.shape == tuple(up)
    assert (hm.reference.double() - looked).abs().max().item() <= 1e-5 * looked.max().item()


def _edit_files(folder):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(folder / "scene.png")
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[16:40, 24:72] = 255
    Image.fromarray(mask).save(folder / "region.png")
    Image.new("L", (8, 8)).save(folder / "small.png")


def test_the_runner_edits_images_and_keeps_what_it_edited(tiny, tmp_path):
    """Rows with ``image`` (and ``mask``, ``strength``) are edits: paths relative to the table, the image's size
    kept, the input, inpainting's mask (as the pipeline used it) and the files' checksums recorded with the
    result; resumed, they are skipped; an input replaced since is a changed setting."""
    import csv

    import numpy as np
    from PIL import Image

    from daamlib import load_experiment
    from daamlib.runner import SettingsChangedError, run_experiments

    _edit_files(tmp_path)
    rows = [{"id": "plain", "prompt": "a red circle", "seed": 0, "steps": 2},
            {"id": "i2i", "prompt": "a blue circle", "seed": 1, "steps": 4, "image": "scene.png", "strength": 0.5},
            {"id": "paint", "prompt": "a blue circle", "seed": 2, "steps": 4, "image": "scene.png",
             "mask": "region.png"}]
    table = tmp_path / "items.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "prompt", "seed", "steps", "image", "mask", "strength"])
        w.writeheader()
        w.writerows(rows)
    pipe = tiny("sd1")
    out = tmp_path / "run"
    records = run_experiments(pipe, table, out, model_name="tiny-sd1", progress=False)
    assert [r["status"] for r in records] == ["generated"] * 3
    plain, _ = load_experiment(out / "items" / "plain")
    assert plain.edit_input is None and plain.edit_mask is None and plain.size == (64, 64)
    i2i, meta = load_experiment(out / "items" / "i2i")
    s = meta["settings"]
    assert (s["image"], s["strength"], len(s["image_sha256"]), i2i.size) == ("scene.png", 0.5, 64, (64, 96))
    assert i2i.steps_completed == 2 and i2i.edit_mask is None
    assert (i2i.edit_input == np.asarray(Image.open(tmp_path / "scene.png"))).all()
    paint, meta = load_experiment(out / "items" / "paint")
    assert paint.steps_completed == 4 and paint.edit_mask.shape == (64, 96)
    assert paint.edit_mask[20, 30] and not paint.edit_mask[5, 5] and paint.edit_mask.mean() == 24 * 48 / (64 * 96)
    assert [r["status"] for r in run_experiments(pipe, table, out, model_name="tiny-sd1", progress=False)] == \
        ["skipped"] * 3
    Image.fromarray(np.zeros((64, 96, 3), dtype=np.uint8)).save(tmp_path / "scene.png")  # replaced since
    with pytest.raises(SettingsChangedError, match="i2i: image_sha256"):
        run_experiments(pipe, table, out, model_name="tiny-sd1", progress=False)


@pytest.mark.parametrize("row, message", [
    ({"image": "none.png"}, r"cannot read the image .*none.png"),
    ({"image": "scene.png", "mask": "small.png"}, "the mask is 8×8 but the image is 96×64"),
    ({"mask": "region.png"}, "mask and strength belong to an edit"),
    ({"image": "scene.png", "strength": 1.5}, r"strength must be in \(0, 1\], got 1.5"),
])
def test_the_runner_refuses_bad_edits_before_generating(tiny, tmp_path, row, message):
    from daamlib.runner import ItemError, run_experiments

    _edit_files(tmp_path)
    import json

    table = tmp_path / "items.jsonl"
    table.write_text(json.dumps({"id": "ok", "prompt": "a cat", "seed": 0}) + "\n" +
                     json.dumps({"id": "bad", "prompt": "a cat", "seed": 0, **row}) + "\n")
    with pytest.raises(ItemError, match=message):
        run_experiments(tiny("sd1"), table, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "items" / "ok").exists()


def test_a_kontext_run_keeps_where_the_edit_looked(tmp_path, monkeypatch):
    """An instruction-editing pipeline run by the runner: the output at the size asked (not Kontext's 1024²), the
    reference map saved and loaded with the experiment; a strength for it is refused up front."""
    from diffusers.pipelines.flux import pipeline_flux_kontext

    from daamlib import load_experiment
    from daamlib.runner import ItemError, run_experiments
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    _edit_files(tmp_path)
    # Kontext resizes the reference to the nearest of its trained sizes (about 1024² px): tiny ones here
    monkeypatch.setattr(pipeline_flux_kontext, "PREFERRED_KONTEXT_RESOLUTIONS", [(64, 64), (96, 64), (64, 96)])
    pipe = tiny_dit_pipeline("flux-kontext")
    rows = [{"id": "k", "prompt": "make the circle red", "seed": 0, "steps": 2, "image": str(tmp_path / "scene.png")}]
    run_experiments(pipe, rows, tmp_path / "run", progress=False)
    hm, meta = load_experiment(tmp_path / "run" / "items" / "k")
    assert hm.size == hm.reference.shape == (64, 96) and hm.edit_input.shape == (64, 96, 3)
    assert hm.reference.min() >= 0 and "reference.safetensors" in meta["files"]
    with pytest.raises(ItemError, match="takes no strength"):
        run_experiments(pipe, [{**rows[0], "id": "k2", "strength": 0.5}], tmp_path / "run", progress=False)
