"""Tracing's end-to-end cost on a GPU, measured without distortion: whole generations, no per-call synchronisation.

    python benchmarks/bench_gpu.py --device cuda --models sd2-512,sdxl-1024,shapeworld --runs 5 --steps 20 \\
        --json benchmarks/results/bench_gpu.json
    python benchmarks/bench_gpu.py --device cpu --models tiny --runs 3 --steps 2 --json out/bench_gpu_cpu.json

Each generation is timed as one call: on CUDA between two CUDA events recorded around ``pipe(...)`` (the
only synchronisation is reading the second event after the call), on a CPU with ``perf_counter``. Three arms:
plain; traced (``with trace(pipe)`` included, building word maps not: that is timed apart); and traced with
``fused=False`` (the softmax explicitly: the cheaper path on a CPU, unmeasured on a GPU).
They run in rotating order, after one warm-up of each. Reported per model: the median of each arm, the ratio
of medians, and the spread of the per-pair ratios (min–max), so a ratio is never read without its noise.
Models: ``sd2-512`` (SD 2-base architecture, float16 on CUDA), ``sdxl-1024``
(SDXL-base architecture, float16 on CUDA), random weights from their configs (``benchmarks/models.py``),
``shapeworld`` (the embedded model, float32) and ``tiny`` (tiny SD-2, for checking the script on a CPU).
``--store-dtype float16`` records the maps in half precision (see ``daamlib.trace``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daamlib  # noqa: E402

PROMPT = "a giraffe and a zebra standing in a field of grass"  # 11 words
PROMPTS = {"shapeworld": "a red circle above a blue square"}  # words of the embedded model's world
SIZES = {"sd2-512": 512, "sdxl-1024": 1024, "shapeworld": 64, "tiny": 64}


def load(model: str, device: str):
    half = torch.float16 if device.startswith("cuda") else torch.float32
    if model == "sd2-512":
        from models import sd2_base

        pipe = sd2_base().to(device, half)
    elif model == "sdxl-1024":
        from models import sdxl_base

        pipe = sdxl_base().to(device, half)
    elif model == "tiny":
        pipe = daamlib.load_pipeline("tiny-sd2", device=device)
    else:
        pipe = daamlib.load_pipeline(model, device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Clock:
    """Times one call: CUDA events on a GPU (one synchronisation, after the call), perf_counter on a CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def bench_model(model: str, device: str, steps: int, runs: int, store_dtype) -> dict:
    pipe = load(model, device)
    size = SIZES[model]
    clock = Clock(device)
    kwargs = dict(num_inference_steps=steps, height=size, width=size, output_type="latent" if size > 64 else "pt")
    prompt = PROMPTS.get(model, PROMPT)
    traces = []

    def plain():
        pipe(prompt, generator=torch.Generator("cpu").manual_seed(0), **kwargs)

    def traced(fused=True):
        with daamlib.trace(pipe, store_dtype=store_dtype, fused=fused) as tc:
            pipe(prompt, generator=torch.Generator("cpu").manual_seed(0), **kwargs)
        traces.append(tc)

    arms = {"plain": plain, "traced": traced, "traced_unfused": lambda: traced(fused=False)}
    for fn in arms.values():  # warm-up (kernels, allocator)
        clock(fn)
    times = {k: [] for k in arms}
    names = list(arms)
    for r in range(runs):  # the order rotates, so no arm always follows the same one
        for arm in names[r % 3:] + names[:r % 3]:
            times[arm].append(clock(arms[arm]))
    hm = traces[-1].heat_maps(0)
    maps_s = clock(lambda: [w.heat for w in daamlib.HeatMaps(hm.alignment, hm.maps, hm.size)])
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"model": model, "size": size, "steps": steps, "runs": runs, "device": device,
           "dtype": str(pipe.unet.dtype).removeprefix("torch."), "store_dtype": str(store_dtype).removeprefix("torch."),
           "prompt": prompt, "plain_s": times["plain"], "plain_median_s": med["plain"], "all_word_maps_s": maps_s,
           "stored_MB": sum(m.numel() * m.element_size() for m in hm.maps.values()) / 1e6}
    for arm, tag in (("traced", ""), ("traced_unfused", "_unfused")):  # tag: trace(fused=False)
        pairs = [t / p for p, t in zip(times["plain"], times[arm])]
        out.update({f"{arm}_s": times[arm], f"{arm}_median_s": med[arm], f"ratio{tag}_median": med[arm] / med["plain"],
                    f"ratio{tag}_pairs_min": min(pairs), f"ratio{tag}_pairs_max": max(pairs)})
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sd2-512,sdxl-1024,shapeworld")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=5, help="generations per arm, after one warm-up each")
    p.add_argument("--store-dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--json", default="benchmarks/results/bench_gpu.json")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here; run with --device cpu to check the script")
    store_dtype = getattr(torch, args.store_dtype)
    results = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "device": args.device,
                           "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
               "command": " ".join(["python", "benchmarks/bench_gpu.py"] + (argv if argv is not None else sys.argv[1:])),
               "models": []}
    for model in args.models.split(","):
        r = bench_model(model, args.device, args.steps, args.runs, store_dtype)
        results["models"].append(r)
        print(f"{model} {r['size']}² {r['steps']} steps ({r['dtype']}, maps {r['store_dtype']}): plain "
              f"{r['plain_median_s']:.3f} s, traced {r['traced_median_s']:.3f} s, ratio {r['ratio_median']:.3f} "
              f"(pairs {r['ratio_pairs_min']:.3f}–{r['ratio_pairs_max']:.3f}); "
              f"fused=False {r['ratio_unfused_median']:.3f} "
              f"(pairs {r['ratio_unfused_pairs_min']:.3f}–{r['ratio_unfused_pairs_max']:.3f}); "
              f"all word maps {r['all_word_maps_s']:.3f} s; "
              f"maps kept {r['stored_MB']:.1f} MB", flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
