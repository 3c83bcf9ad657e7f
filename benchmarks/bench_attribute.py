"""What mapping an existing image costs, and what concepts add: ``daamlib.attribute`` beside the denoiser calls it
makes, on the embedded model (and any other model given: a UNet or a traced transformer) at one thread.

    python benchmarks/bench_attribute.py                          # the embedded model, 64×64, 10 repeats
    python benchmarks/bench_attribute.py --model tiny-sd2 --repeats 5
    python benchmarks/bench_attribute.py --model out/models/mmdit # a ShapeWorld MMDiT folder (ConceptAttention)

Per call, median and min–max over the repeats:

denoiser    one untraced evaluation of the UNet or transformer on exactly the inputs attribute gave it (the floor of
            one timestep)
attribute   ``attribute(..., timesteps=(t,))``: VAE encoding, the text encoder, one traced evaluation
concepts    the same with ``concepts=[5 words]`` (each encoded once per call, scored at every layer)

Memory: the maps kept per call (words and concepts, float32) and the largest transient a concept adds at one layer
(``[rows, heads, concept tokens, image queries]`` float32 logits). Results go to
``benchmarks/results/bench_attribute.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONCEPTS = ["circle", "square", "heart", "grass", "sky"]


def stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapeworld")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bench_attribute.json"))
    a = ap.parse_args(argv)
    import numpy as np
    import torch

    import daamlib
    from daamlib.attribute import attribute
    from daamlib.pipeline import model_defaults
    from daamlib.trace import cross_attention_modules

    torch.set_num_threads(1)
    pipe = daamlib.load_pipeline(a.model)
    pipe.set_progress_bar_config(disable=True)
    size = model_defaults(pipe).height
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    prompt = "a red circle above a blue square on grass"
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    given = {}  # the denoiser's inputs in attribute's own call, replayed untraced as the floor
    hook = denoiser.register_forward_pre_hook(lambda m, args, kw: given.update(args=args, kw=kw), with_kwargs=True)
    try:
        attribute(pipe, image, prompt, timesteps=(500,))
    finally:
        hook.remove()
    times = {"denoiser": [], "attribute": [], "concepts": []}
    hm = hc = None
    for _ in range(a.repeats + 1):  # the first round warms up
        t0 = time.perf_counter()
        with torch.no_grad():
            denoiser(*given["args"], **given["kw"])
        t1 = time.perf_counter()
        hm = attribute(pipe, image, prompt, timesteps=(500,))
        t2 = time.perf_counter()
        hc = attribute(pipe, image, prompt, concepts=CONCEPTS, timesteps=(500,))
        t3 = time.perf_counter()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[k].append(v)
    times = {k: stats([1e3 * x for x in v[1:]]) for k, v in times.items()}
    word_bytes = sum(m.numel() * 4 for m in hm.maps.values())
    concept_bytes = sum(m.numel() * 4 for space in (hc.concepts, hc.concept_outputs) if space is not None
                        for m in space.maps.values())  # (ConceptAttention keeps both its spaces)
    from daamlib.dit.concept_attention import CROSS
    from daamlib.dit.registry import family_of

    family = family_of(pipe) if getattr(pipe, "unet", None) is None else None
    grid = next(iter(hc.concepts.maps.values())).shape[-2:]
    heads = max(getattr(m, "heads", 0) for m in denoiser.modules())
    if family is None or family.name in CROSS:  # OVAM: one concept's keys at a time, [heads, its tokens, queries]
        longest = max(len(pipe.tokenizer(c)["input_ids"]) for c in CONCEPTS)
        if family is None:
            mods = cross_attention_modules(pipe.unet)
            transient = max(m.heads * longest * n * 4 for n, m in (
                ((v.shape[-2] * v.shape[-1]), mods[k]) for k, v in hc.concepts.maps.items()))
        else:
            transient = heads * longest * grid[0] * grid[1] * 4
    else:  # ConceptAttention: the image queries' logits against the whole concept stream, [heads, tokens, queries]
        from daamlib.dit.concept_attention import ConceptStream

        class _Rec:  # what ConceptStream reads of a recorder to encode the concepts
            pass

        _Rec.family = family
        stream = ConceptStream(pipe, _Rec(), CONCEPTS)
        tokens = (sum(len(p) + (-len(p)) % family.unified for p in stream.parts) if stream.zimage
                  else len(stream.states))  # (Z-Image: each concept padded as a caption)
        transient = heads * tokens * grid[0] * grid[1] * 4
    result = {"model": a.model, "image": f"{size}×{size}", "threads": 1, "load": os.getloadavg()[0],
              "machine": platform.processor() or platform.machine(), "concepts": len(CONCEPTS),
              "ms_per_call": times, "maps_kB_per_timestep": {"words": word_bytes / 1e3, "concepts": concept_bytes / 1e3},
              "concept_transient_kB_per_layer": transient / 1e3}
    m = times
    print(f"{a.model} at {size}×{size}, 1 thread, load {result['load']:.2f}")
    for k in m:
        print(f"{k:10s} {m[k]['median']:.1f} ms per timestep (min {m[k]['min']:.1f}, max {m[k]['max']:.1f})")
    print(f"maps kept per timestep: words {word_bytes / 1e3:.1f} kB, {len(CONCEPTS)} concepts {concept_bytes / 1e3:.1f}"
          f" kB; the concepts' largest transient: {transient / 1e3:.1f} kB at one layer (OVAM: one concept's; "
          "ConceptAttention: the whole concept stream's)")
    out = Path(a.json)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
