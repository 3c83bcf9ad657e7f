"""How much does tracing cost? Prints tables and writes JSON.

    python benchmarks/bench_trace.py                       # tiny, shapeworld, SD 2-base 256×256 on CPU
    python benchmarks/bench_trace.py --models sd2-512 --runs 5
    python benchmarks/bench_trace.py --device cuda --models sd2-512,tiny

Sections (each in the JSON under its name):

generation   wall time with and without ``trace`` (interleaved, order alternating), median and
             min–max, and their ratio; plus the *added work measured directly*: time inside the
             cross-attention processors traced minus untraced (each call timed; the same wrapper in
             both runs) plus turning the trace into every word's map.
memory       extra peak memory of a traced generation (RSS on CPU, max_memory_allocated on CUDA),
             each run in a fresh subprocess, against the bytes of the stored maps.
latency      one word's map, all words' maps and an 11-value τ sweep from a finished trace with
             SD 2-base's 512×512 layer shapes (30 steps, 10 words).
scaling      added work and map latency as prompt length, image size and step count grow.
batch        8 prompts in one traced call against 8 traced calls: images per minute, and the
             largest difference between each image's maps in the two runs.
floor        recording's added work measured call by call, beside what it must cost at least. The attention
             inputs (q, k, v, mask) of every cross-attention call of one denoising step are captured from a
             traced generation; on each, the plain attention (SDPA, as AttnProcessor2_0 runs it), the default
             recorder (``fused``) and ``fused=False`` run in rotating order ``--repeats`` times; a call's added
             work is the median of its paired differences with plain. Summed over the step's calls × steps,
             plus turning a finished trace into every word's map, it is the *added work*. From the same inputs,
             with generic torch ops: the *floor* = summing the kept conditional probabilities over heads, every
             call, + one bicubic upsample per resolution; the *explicit-softmax floor* = the floor + what computing
             the conditional half's QKᵀ, softmax and PV explicitly costs over the fused kernel on that half
             (never below 0); the *log-sum-exp floor* = the floor + the kept probabilities from the fused
             kernel's LSE (a tokens × queries product and an exp per head), the arithmetic the default
             recorder cannot skip while keeping the model's own output. Each added work is printed as a
             multiple of each floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daamlib  # noqa: E402
from daamlib.trace import cross_attention_modules  # noqa: E402

PROMPT10 = "a giraffe and a zebra standing in a field of grass"  # 11 words (the name is historical)
DEFAULT_SIZES = {"tiny": 64, "shapeworld": 64, "sd2-256": 256, "sd2-512": 512}


def load(model: str, device: str):
    if model.startswith("sd2-"):
        from models import sd2_base

        pipe = sd2_base()
    elif model == "tiny":
        pipe = daamlib.load_pipeline("tiny-sd2")
    else:
        pipe = daamlib.load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class Timed:
    """Wraps an attention processor and adds the seconds spent in it to a shared counter."""

    def __init__(self, inner, counter: list, sync):
        self.inner, self.counter, self.sync = inner, counter, sync

    def __call__(self, *args, **kwargs):
        self.sync()
        t = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.sync()
        self.counter[0] += time.perf_counter() - t
        return out


def time_cross_attention(pipe, sync) -> list:
    """Wrap the current cross-attention processors with timers; returns the counter [seconds]."""
    counter = [0.0]
    procs = pipe.unet.attn_processors
    cross = cross_attention_modules(pipe.unet)
    pipe.unet.set_attn_processor({k: Timed(v, counter, sync) if k in cross else v for k, v in procs.items()})
    return counter


def one_run(pipe, prompt, size, steps, traced: bool, sync, seed=0) -> dict:
    original = pipe.unet.attn_processors
    gen = torch.Generator("cpu").manual_seed(seed)
    kwargs = dict(num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, generator=gen, output_type="pt")
    sync()
    t0 = time.perf_counter()
    if traced:
        with daamlib.trace(pipe) as tc:
            counter = time_cross_attention(pipe, sync)
            pipe(prompt, **kwargs)
        t1 = time.perf_counter()
        hm = tc.heat_maps(0)
        maps = [w.heat for w in hm]  # every word's map at image size (Eq. 6)
        sync()
        t2 = time.perf_counter()
        stored = sum(m.numel() * m.element_size() for m in hm.maps.values())
    else:
        counter = time_cross_attention(pipe, sync)
        try:
            pipe(prompt, **kwargs)
        finally:
            pipe.unet.set_attn_processor(dict(original))
        t1 = t2 = time.perf_counter()
        stored, maps = 0, []
    return {"total": t2 - t0, "generate": t1 - t0, "cross_attention": counter[0], "maps": t2 - t1,
            "stored_bytes": stored, "n_maps": len(maps)}


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def bench_generation(pipe, model, size, steps, runs, prompt, sync) -> dict:
    one_run(pipe, prompt, size, 1, True, sync)  # warm-up, both paths
    one_run(pipe, prompt, size, 1, False, sync)
    plain, traced = [], []
    for r in range(runs):
        for kind in ((False, True) if r % 2 == 0 else (True, False)):
            (traced if kind else plain).append(one_run(pipe, prompt, size, steps, kind, sync))
    p_total = [x["total"] for x in plain]
    t_total = [x["total"] for x in traced]
    p_attn = [x["cross_attention"] for x in plain]
    t_attn = [x["cross_attention"] for x in traced]
    maps = [x["maps"] for x in traced]
    recording = statistics.median(t_attn) - statistics.median(p_attn)
    return {
        "model": model, "size": size, "steps": steps, "prompt_words": len(prompt.split()),
        "plain_s": summary(p_total), "traced_s": summary(t_total),
        "ratio_median": statistics.median(t_total) / statistics.median(p_total),
        "noise_pct": 100 * (max(p_total) - min(p_total)) / statistics.median(p_total),
        "cross_attention_plain_s": summary(p_attn), "cross_attention_traced_s": summary(t_attn),
        "added_recording_s": recording, "added_maps_s": statistics.median(maps),
        "added_total_s": recording + statistics.median(maps),
        "stored_MB": traced[0]["stored_bytes"] / 1e6,
    }


def memory_child(model, size, steps, traced, device):
    """Run in a fresh process: one generation, print peak memory and stored bytes as JSON."""
    pipe = load(model, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = one_run(pipe, PROMPT10, size, steps, traced, sync)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"peak_bytes": peak, "rss_before_generation": before, "stored_bytes": r["stored_bytes"]}))


def bench_memory(model, size, steps, device) -> dict:
    out = {}
    for traced in (False, True):
        cmd = [sys.executable, __file__, "--memory-child", model, str(size), str(steps), str(int(traced)), "--device", device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out["traced" if traced else "plain"] = json.loads(res.stdout.strip().splitlines()[-1])
    extra = out["traced"]["peak_bytes"] - out["plain"]["peak_bytes"]
    stored = out["traced"]["stored_bytes"]
    return {"model": model, "size": size, "steps": steps, "plain_peak_MB": out["plain"]["peak_bytes"] / 1e6,
            "traced_peak_MB": out["traced"]["peak_bytes"] / 1e6, "extra_MB": extra / 1e6, "stored_MB": stored / 1e6,
            "extra_beyond_maps_pct_of_plain": 100 * (extra - stored) / out["plain"]["peak_bytes"]}


def synthetic_heat_maps(grids, size, steps=30, words=10, device="cpu"):
    """A finished trace's worth of maps with given layer grids [(h, w), ...] (values random)."""
    from transformers import CLIPTokenizer

    from daamlib.testing.tiny import tokenizer_dir

    tok = CLIPTokenizer.from_pretrained(tokenizer_dir())
    prompt = " ".join(["cat"] * words)
    al = daamlib.align_words(prompt, tok)
    g = torch.Generator().manual_seed(0)
    maps = {f"layer{i}": torch.rand(steps, len(al.tokens), h, w, generator=g).to(device) for i, (h, w) in enumerate(grids)}
    return daamlib.HeatMaps(al, maps, size)


def time_it(fn, repeats=7, sync=lambda: None):
    ts = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


SD2_GRIDS_512 = [(64, 64)] * 5 + [(32, 32)] * 5 + [(16, 16)] * 5 + [(8, 8)]


def bench_latency(size=512, grids=SD2_GRIDS_512, steps=30, words=10, device="cpu", sync=lambda: None) -> dict:
    hm = synthetic_heat_maps(grids, (size, size), steps, words, device)

    def one_word():
        h = daamlib.HeatMaps(hm.alignment, hm.maps, hm.size)  # nothing cached
        return h.word("cat", 0).heat

    def all_words():
        h = daamlib.HeatMaps(hm.alignment, hm.maps, hm.size)
        return [w.heat for w in h]

    def sweep_api():
        w = hm.word("cat", 0)
        return [w.binarize(i / 10) for i in range(11)]

    one = time_it(one_word, sync=sync)
    return {"size": size, "steps": steps, "words": words, "layers": len(grids),
            "one_word_ms": 1e3 * one, "all_words_ms": 1e3 * time_it(all_words, sync=sync),
            "tau_sweep_11_ms": 1e3 * time_it(sweep_api, sync=sync),
            "stored_MB": sum(m.numel() * 4 for m in hm.maps.values()) / 1e6}


def bench_batch(pipe, model, size, steps, n=8, sync=lambda: None) -> dict:
    prompts = [f"a {c} {s}" for c, s in zip(["red", "blue", "green", "yellow"] * 2,
                                           ["circle", "square", "triangle", "star", "hexagon", "circle", "square", "star"])][:n]
    kwargs = dict(num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="pt")
    seeds = list(range(n))
    t = time.perf_counter()
    singles = []
    for p, s in zip(prompts, seeds):
        with daamlib.trace(pipe) as tc:
            pipe(p, generator=torch.Generator().manual_seed(s), **kwargs)
        singles.append(tc.heat_maps(0).token_maps())
    sync()
    t_single = time.perf_counter() - t
    t = time.perf_counter()
    with daamlib.trace(pipe) as tc:
        pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], **kwargs)
    batch = [tc.heat_maps(i).token_maps() for i in range(n)]
    sync()
    t_batch = time.perf_counter() - t
    rel = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(batch, singles))
    return {"model": model, "size": size, "steps": steps, "images": n,
            "separate_images_per_min": 60 * n / t_single, "batched_images_per_min": 60 * n / t_batch,
            "gain": t_single / t_batch, "max_rel_diff_maps": rel}


def bench_scaling(pipe, model, size, sync, runs=3) -> list[dict]:
    rows = []
    base_words = "a red circle above a blue square next to a green triangle on grass".split()
    for n_words in (2, 6, 14):
        prompt = " ".join((base_words * 3)[:n_words])
        r = bench_generation(pipe, model, size, 4, runs, prompt, sync)
        rows.append({"vary": "prompt_words", "value": n_words, "added_ms": 1e3 * r["added_total_s"],
                     "plain_s": r["plain_s"]["median"], "stored_MB": r["stored_MB"]})
    for steps in (2, 8, 16):
        r = bench_generation(pipe, model, size, steps, runs, PROMPT10, sync)
        rows.append({"vary": "steps", "value": steps, "added_ms": 1e3 * r["added_total_s"],
                     "plain_s": r["plain_s"]["median"], "stored_MB": r["stored_MB"]})
    for s in (size, 2 * size, 4 * size):
        r = bench_generation(pipe, model, s, 4, runs, PROMPT10, sync)
        rows.append({"vary": "image_size", "value": s, "added_ms": 1e3 * r["added_total_s"],
                     "plain_s": r["plain_s"]["median"], "stored_MB": r["stored_MB"]})
    for s in (256, 512, 1024):
        lat = bench_latency(size=s)
        rows.append({"vary": "map_size (SD2 layers, 30 steps)", "value": s, "one_word_ms": lat["one_word_ms"],
                     "all_words_ms": lat["all_words_ms"], "tau_sweep_11_ms": lat["tau_sweep_11_ms"]})
    return rows


def capture_calls(pipe, prompt, size) -> tuple[list[dict], object]:
    """The attention inputs of every cross-attention call of one traced denoising step: per call the layer, its
    query grid and clones of q, k, v ([B, heads, N|T, d], strided as the processor makes them) and the mask;
    and the trace, whose generation state the timed recorders copy."""
    from daamlib.trace import RecordingAttnProcessor

    calls: list[dict] = []
    attend = RecordingAttnProcessor.attend

    def capturing(self, q, k, v, attention_mask=None):
        if len(self.recorder.current.timesteps) == 1:
            calls.append({"layer": self.name, "q": q.clone(), "k": k.clone(), "v": v.clone(),
                          "mask": None if attention_mask is None else attention_mask.clone()})
        return attend(self, q, k, v, attention_mask)

    RecordingAttnProcessor.attend = capturing
    try:
        with daamlib.trace(pipe) as tc:
            pipe(prompt, num_inference_steps=1, guidance_scale=7.5, height=size, width=size, output_type="pt",
                 generator=torch.Generator().manual_seed(0))
    finally:
        RecordingAttnProcessor.attend = attend
    return calls, tc


def paired_times(fns: dict, repeats: int, sync) -> dict:
    """Each function ``repeats`` times, in rotating order; per function its times, and per function but the first
    the median and min of its paired differences with the first (same repetition)."""
    names = list(fns)
    times: dict = {n: [] for n in names}
    for n in names:  # warm-up
        fns[n]()
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            sync()
            t = time.perf_counter()
            fns[n]()
            sync()
            times[n].append(time.perf_counter() - t)
    base = times[names[0]]
    return {n: {"median": statistics.median(times[n]), "min": min(times[n]),
                "added_median": statistics.median(a - b for a, b in zip(times[n], base)),
                "added_min": min(times[n]) - min(base)} for n in names}


def recorder_like(g, fused: bool):
    """A recorder in the state of generation ``g`` (its latent size and steps), for timing processors on captured
    calls outside a pipeline call."""
    from daamlib.trace import _Recorder

    rec = _Recorder(False, None, fused=fused)
    rec.begin(g.prompts, g.alignments, g.images_per_prompt, g.guidance)
    rec.current.latent_size, rec.current.timesteps = g.latent_size, list(g.timesteps)
    return rec


def attention_arms(call: dict, recorders: dict) -> dict:
    """Closures over one captured call: ``plain`` (what AttnProcessor2_0 computes between its projections), then one
    per recorder (name → recorder), each recording the call and dropping the map it kept."""
    import torch.nn.functional as F

    from daamlib.trace import RecordingAttnProcessor

    q, k, v, mask = call["q"], call["k"], call["v"], call["mask"]
    B, H, N, d = q.shape

    def plain():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, N, H * d)

    def recording(rec):
        p = RecordingAttnProcessor(rec, call["layer"])

        def run():
            p.attend(q, k, v, mask)
            rec.current.maps.clear()
        return run

    return {"plain": plain, **{name: recording(rec) for name, rec in recorders.items()}}


def bench_floor(pipe, model, size, steps, prompt, sync, repeats=40) -> dict:
    """Recording's added work, measured call by call on the model's own attention inputs, beside the floor, the
    explicit-softmax floor and the log-sum-exp floor computed from the same inputs (see the module docs)."""
    import torch.nn.functional as F

    from daamlib.kernel import upsample_sum

    calls, tc = capture_calls(pipe, prompt, size)
    g = tc.generations[-1]
    K = g.n_tokens
    recorders = {"fused": recorder_like(g, True), "explicit": recorder_like(g, False)}
    per_call, rows = [], {}
    for c in calls:
        q, k, v = c["q"], c["k"], c["v"]
        B, H, N, d = q.shape
        b0 = B // 2 if g.guidance else 0
        s = d ** -0.5
        qc, kc, vc = q[b0:], k[b0:], v[b0:]
        probs = torch.rand(B - b0, H, K, N, device=q.device)
        t = paired_times(attention_arms(c, recorders), repeats, sync)
        # the floors' parts, generic torch on the same conditional rows (not daamlib's code)
        f = paired_times({
            "fused_half": lambda: F.scaled_dot_product_attention(qc, kc, vc),
            "explicit_half": lambda: torch.softmax((qc @ kc.transpose(-1, -2)) * s, -1) @ vc,
            "lse_probs": lambda: torch.exp(kc[:, :, :K] @ qc.transpose(-1, -2) * s),
            "head_sum": lambda: probs.sum(1),
        }, repeats, sync)
        per_call.append({
            "layer": c["layer"], "queries": N, "heads": H, "keys": k.shape[2],
            "plain_ms": 1e3 * t["plain"]["median"],
            **{f"{kind}_added_ms": 1e3 * t[kind]["added_median"] for kind in ("fused", "explicit")},
            **{f"{kind}_added_min_ms": 1e3 * t[kind]["added_min"] for kind in ("fused", "explicit")},
            "head_sum_ms": 1e3 * f["head_sum"]["median"],
            # paired with the first function, the fused half
            "explicit_minus_fused_ms": 1e3 * max(0.0, f["explicit_half"]["added_median"]),
            "lse_probs_ms": 1e3 * f["lse_probs"]["median"],
        })
        key = (N, H, k.shape[2])
        rows.setdefault(key, []).append(per_call[-1])
    # the maps: a finished trace of `steps` steps to every word's map, against one upsample per resolution
    with daamlib.trace(pipe) as tc:
        pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="pt",
             generator=torch.Generator().manual_seed(0))
    grids = sorted({tuple(m.shape[-2:]) for steps_ in tc.generations[-1].maps.values() for m in steps_[:1]})
    maps = [torch.rand(K, gh, gw, device=pipe.device) for gh, gw in grids]
    m = paired_times({"upsample": lambda: upsample_sum(maps, (size, size)),
                      "all_word_maps": lambda: [w.heat for w in tc.heat_maps(0)]}, repeats, sync)

    def total(key):  # a denoising step's calls, times the steps
        return steps * sum(c[key] for c in per_call)

    upsample, word_maps = 1e3 * m["upsample"]["median"], 1e3 * m["all_word_maps"]["median"]
    floor = total("head_sum_ms") + upsample
    out = {"model": model, "size": size, "steps": steps, "kept_tokens": K, "calls": steps * len(per_call),
           "head_sum_ms": total("head_sum_ms"), "upsample_ms": upsample, "floor_ms": floor,
           "explicit_minus_fused_ms": total("explicit_minus_fused_ms"),
           "explicit_floor_ms": floor + total("explicit_minus_fused_ms"),
           "lse_probs_ms": total("lse_probs_ms"), "lse_floor_ms": floor + total("lse_probs_ms"),
           "word_maps_ms": word_maps,
           "fused_recording_ms": total("fused_added_ms"), "explicit_recording_ms": total("explicit_added_ms"),
           "fused_recording_min_ms": total("fused_added_min_ms"),
           "explicit_recording_min_ms": total("explicit_added_min_ms"),
           "plain_attention_ms": total("plain_ms")}
    for kind in ("fused", "explicit"):
        added = out[f"{kind}_recording_ms"] + word_maps
        out[f"{kind}_added_ms"] = added
        out[f"{kind}_multiple_of_floor"] = added / floor
        out[f"{kind}_multiple_of_explicit_floor"] = added / out["explicit_floor_ms"]
    out["fused_multiple_of_lse_floor"] = out["fused_added_ms"] / out["lse_floor_ms"]
    out["shapes"] = [{"queries": N, "heads": H, "keys": T, "calls_per_step": len(cs),
                      **{k: statistics.median(c[k] for c in cs) for k in cs[0] if k.endswith("_ms")}}
                     for (N, H, T), cs in sorted(rows.items(), reverse=True)]
    return out


def print_table(title, rows):
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(f"\n## {title}")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            if isinstance(v, dict):
                v = f"{v['median']:.3f} [{v['min']:.3f}–{v['max']:.3f}]"
            elif isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(str(v))
        print("| " + " | ".join(cells) + " |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,shapeworld,sd2-256", help="comma list of tiny, shapeworld, sd2-256, sd2-512")
    p.add_argument("--runs", type=int, default=5, help="timed runs per arm (≥5 for the README table)")
    p.add_argument("--repeats", type=int, default=40, help="floor: timed repetitions of each captured call")
    p.add_argument("--steps", type=int, default=3, help="denoising steps per generation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (1 gives the steadiest figures)")
    p.add_argument("--sections", default="generation,floor,memory,latency,batch,scaling")
    p.add_argument("--json", default="benchmarks/results/bench_trace.json", help="where to write the results")
    p.add_argument("--memory-child", nargs=4, metavar=("MODEL", "SIZE", "STEPS", "TRACED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        m, s, st, tr = args.memory_child
        memory_child(m, int(s), int(st), bool(int(tr)), args.device)
        return
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sections = args.sections.split(",")
    models = [m for m in args.models.split(",") if m != "shapeworld" or daamlib.default_model() == "shapeworld"]
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "device": args.device}, "args": vars(args)}
    for section in ("generation", "memory", "batch", "scaling", "floor"):
        results[section] = []
    for model in models:
        size = DEFAULT_SIZES.get(model, 64)
        pipe = load(model, args.device) if {"generation", "batch", "scaling", "floor"} & set(sections) else None
        if "generation" in sections:
            r = bench_generation(pipe, model, size, args.steps, args.runs, PROMPT10, sync)
            results["generation"].append(r)
            print_table(f"generation: {model}", [r])
        if "floor" in sections:
            fl = bench_floor(pipe, model, size, args.steps, PROMPT10, sync, repeats=args.repeats)
            results["floor"].append(fl)
            print_table(f"floor: {model}", [{k: v for k, v in fl.items() if k != "shapes"}])
            print_table(f"per call shape (ms, medians): {model}", fl["shapes"])
        if "batch" in sections and not model.startswith("sd2"):
            r = bench_batch(pipe, model, size, args.steps, sync=sync)
            results["batch"].append(r)
            print_table(f"batch: {model}", [r])
        if "scaling" in sections and model == "tiny":
            results["scaling"] = bench_scaling(pipe, model, size, sync)
            print_table("scaling (tiny model)", results["scaling"])
        del pipe
        if "memory" in sections:
            r = bench_memory(model, size, args.steps, args.device)
            results["memory"].append(r)
            print_table(f"memory: {model}", [r])
    if "latency" in sections:
        results["latency"] = bench_latency(device=args.device, sync=sync)
        print_table("latency from a finished trace (SD 2-base layer shapes, 512×512, 30 steps, 10 words)",
                    [results["latency"]])
    from models import sdxl_unet_grid

    grid = sdxl_unet_grid()
    results["storage_formula"] = {
        "sd2_512_30steps_12tokens_MB": 4 * 30 * 12 * sum(h * w for h, w in SD2_GRIDS_512) / 1e6,
        "sdxl_1024_50steps_12tokens_MB": 4 * 50 * 12 * sum(grid) / 1e6, "sdxl_layers": len(grid),
    }
    print_table("stored maps (bytes = 4 × steps × tokens × Σ h·w)", [results["storage_formula"]])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
