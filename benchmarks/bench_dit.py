"""What tracing costs on a diffusion transformer: SD3-medium's architecture at 256², random weights, CPU.

    python benchmarks/bench_dit.py                         # SD3-medium MMDiT, 256×256, 1 step, 5 runs per arm
    python benchmarks/bench_dit.py --model tiny-flux --runs 10
    python benchmarks/bench_dit.py --device cuda --size 1024 --steps 4

The transformer is SD3-medium's (24 joint blocks, 24 heads of 64, patch 2, 2.0 B parameters) built from
its config. Its text encoders are stand-ins: CLIP-L/G-shaped and T5-shaped encoders of one layer each (the
real T5-XXL alone is 19 GB in float32, and cannot be downloaded here). They produce text inputs of the real
widths and lengths (77 CLIP + 256 T5 positions, 4,096 channels), which is all the transformer — and the
trace — sees; only the text encoding itself is cheaper than with the real encoders, and tracing never
touches it. Sections, each in the JSON:

generation   wall time with and without ``trace`` (interleaved, order alternating), median and min–max,
             their ratio, and the added work measured directly: time inside the attention modules traced
             minus untraced (each call timed with the same wrapper in both runs) plus turning the trace
             into every word's map.
memory       peak memory (RSS; max_memory_allocated on CUDA) of one generation with and without tracing,
             each in a fresh process, beside the bytes of the maps kept.
calls        every attention call timed where it runs, inside whole generations (interleaved, order alternating):
             plain SDPA against the traced call (the kernel with LSE, and the recording), per call and summed per
             generation — whether the per-generation added work is the per-call work × calls, or more.
kernel       one joint-attention call at the model's shapes (SD3-medium at 256²: 2 × 24 heads × (256 image + 333
             text) tokens × 64, K = 49 kept text tokens), alone: plain SDPA against the traced path (the kernel
             with LSE + recording), median of many calls, interleaved — the per-call cost without a whole
             generation's run-to-run noise.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import daamlib
from daamlib.dit import attention_modules

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trace import Timed  # noqa: E402 (the same timing wrapper as the UNet benchmark)

PROMPT10 = "a giraffe and a zebra standing in a field of grass"  # 11 words (the name is historical)


def sd3_medium(seed: int = 0):
    """SD3-medium's transformer from its config (random weights), with one-layer stand-in text encoders."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel
    from transformers import T5TokenizerFast

    from daamlib.testing.tiny import tokenizer_dir
    from daamlib.testing.tiny_dit import t5_tokenizer_dir

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                        attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                        caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                        pos_embed_max_size=192).eval()
    clip = CLIPTokenizer.from_pretrained(tokenizer_dir("<|endoftext|>", 77))
    encoders = []
    for width in (768, 1280):  # CLIP-L and CLIP-G widths: their concatenation is SD3's 2,048
        cfg = CLIPTextConfig(vocab_size=len(clip), hidden_size=width, intermediate_size=width, num_hidden_layers=1,
                             num_attention_heads=width // 64, max_position_embeddings=77, projection_dim=width,
                             bos_token_id=len(clip) - 2, eos_token_id=len(clip) - 1, pad_token_id=1)
        encoders.append(CLIPTextModelWithProjection(cfg).eval())
    t5_tok = T5TokenizerFast.from_pretrained(t5_tokenizer_dir())
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=4096, d_ff=1024, d_kv=64, num_heads=64, num_layers=1,
                                 feed_forward_proj="relu", pad_token_id=0, eos_token_id=1)).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(sample_size=256, in_channels=3, out_channels=3, block_out_channels=(4, 4, 4, 4),
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        layers_per_block=1, latent_channels=16, norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305)  # SD3's factor 8, tiny
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                    text_encoder=encoders[0], tokenizer=clip, text_encoder_2=encoders[1],
                                    tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_dir("!", 77)),
                                    text_encoder_3=t5, tokenizer_3=t5_tok)
    assert pipe.vae_scale_factor == 8  # a 256² image is a 32² latent: 16² = 256 image tokens, as in SD3
    return pipe


def load(model: str, device: str):
    pipe = sd3_medium() if model == "sd3-medium" else daamlib.load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def timed(inner, counter, sync) -> Timed:
    """A Timed around ``inner`` whose ``__call__`` shows ``inner``'s signature (diffusers filters keywords by it)."""
    import inspect

    def __call__(self, attn, *args, **kwargs):
        return Timed.__call__(self, attn, *args, **kwargs)

    __call__.__signature__ = inspect.signature(type(inner).__call__)
    return type(f"Timed{type(inner).__name__}", (Timed,), {"__call__": __call__})(inner, counter, sync)


def one_run(pipe, size, steps, traced: bool, sync, seed=0) -> dict:
    modules = attention_modules(pipe.transformer)
    original = {name: m.processor for name, (m, _, _) in modules.items()}
    counter = [0.0]
    for name, (m, _, _) in modules.items():
        m.set_processor(timed(original[name], counter, sync))
    gen = torch.Generator("cpu").manual_seed(seed)
    kwargs = dict(num_inference_steps=steps, height=size, width=size, generator=gen, output_type="pt")
    try:
        sync()
        t0 = time.perf_counter()
        if traced:
            with daamlib.trace(pipe) as tc:
                pipe(PROMPT10, **kwargs)
            t1 = time.perf_counter()
            hm = tc.heat_maps(0)
            maps = [w.heat for w in hm]
            sync()
            t2 = time.perf_counter()
            stored = sum(m.numel() * m.element_size() for m in hm.maps.values())
        else:
            pipe(PROMPT10, **kwargs)
            t1 = t2 = time.perf_counter()
            stored, maps = 0, []
    finally:
        for name, (m, _, _) in modules.items():
            m.set_processor(original[name])
    return {"total": t2 - t0, "generate": t1 - t0, "attention": counter[0], "maps": t2 - t1, "stored_bytes": stored,
            "n_maps": len(maps)}


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def bench_generation(pipe, model, size, steps, runs, sync) -> dict:
    one_run(pipe, size, 1, True, sync)  # warm-up, both paths
    one_run(pipe, size, 1, False, sync)
    plain, traced = [], []
    for r in range(runs):
        for kind in ((False, True) if r % 2 == 0 else (True, False)):
            (traced if kind else plain).append(one_run(pipe, size, steps, kind, sync))
    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    recording = med(traced, "attention") - med(plain, "attention")
    return {"model": model, "size": size, "steps": steps, "prompt_words": len(PROMPT10.split()),
            "plain_s": summary([x["total"] for x in plain]), "traced_s": summary([x["total"] for x in traced]),
            "ratio_median": med(traced, "total") / med(plain, "total"),
            "attention_plain_s": summary([x["attention"] for x in plain]),
            "attention_traced_s": summary([x["attention"] for x in traced]),
            "added_recording_s": recording, "added_maps_s": med(traced, "maps"),
            "added_total_s": recording + med(traced, "maps"), "stored_MB": traced[0]["stored_bytes"] / 1e6}


def memory_child(model, size, steps, traced, device):
    pipe = load(model, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    r = one_run(pipe, size, steps, traced, sync)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"peak_bytes": peak, "stored_bytes": r["stored_bytes"]}))


def bench_memory(model, size, steps, device) -> dict:
    out = {}
    for traced in (False, True):
        cmd = [sys.executable, __file__, "--memory-child", model, str(size), str(steps), str(int(traced)),
               "--device", device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out["traced" if traced else "plain"] = json.loads(res.stdout.strip().splitlines()[-1])
    extra = out["traced"]["peak_bytes"] - out["plain"]["peak_bytes"]
    return {"model": model, "size": size, "steps": steps, "plain_peak_MB": out["plain"]["peak_bytes"] / 1e6,
            "traced_peak_MB": out["traced"]["peak_bytes"] / 1e6, "extra_MB": extra / 1e6,
            "stored_MB": out["traced"]["stored_bytes"] / 1e6}


def bench_calls(pipe, model, size, steps, runs, sync) -> dict:
    """Every attention call of ``runs`` plain and ``runs`` traced generations, timed in situ: plain runs time
    torch's SDPA as diffusers' processors call it; traced runs time the recorder's whole call (its kernel with
    log-sum-exp, timed too, and the recording). Only the calls that see image and text together are compared
    (the text encoders' own SDPA calls are told apart by count: the last ``calls`` of a plain run are excluded)."""
    import torch.nn.functional as F

    from daamlib.dit import recorder as R

    times = {"sdpa": [], "attend": [], "kernel": []}
    sdpa, attend, kernel = F.scaled_dot_product_attention, R._DitRecorder.attend, R.output_and_lse

    def timer(name, fn):
        def run(*a, **k):
            sync()
            t = time.perf_counter()
            out = fn(*a, **k)
            sync()
            times[name].append(time.perf_counter() - t)
            return out
        return run

    def generate(traced):
        for v in times.values():
            v.clear()
        gen = torch.Generator("cpu").manual_seed(0)
        kwargs = dict(num_inference_steps=steps, height=size, width=size, generator=gen, output_type="latent")
        t0 = time.perf_counter()
        if traced:
            R._DitRecorder.attend, R.output_and_lse = timer("attend", attend), timer("kernel", kernel)
            try:
                with daamlib.trace(pipe) as tc:
                    pipe(PROMPT10, **kwargs)
            finally:
                R._DitRecorder.attend, R.output_and_lse = attend, kernel
            return {"total": time.perf_counter() - t0, "calls": list(times["attend"]), "kernel": list(times["kernel"]),
                    "n": len(times["attend"]), "tc": tc}
        F.scaled_dot_product_attention = timer("sdpa", sdpa)
        try:
            pipe(PROMPT10, **kwargs)
        finally:
            F.scaled_dot_product_attention = sdpa
        return {"total": time.perf_counter() - t0, "calls": list(times["sdpa"])}

    generate(True), generate(False)  # warm-up
    plain, traced = [], []
    for r in range(runs):
        for kind in ((False, True) if r % 2 == 0 else (True, False)):
            (traced if kind else plain).append(generate(kind))
    n = traced[0]["n"]  # the calls that see image and text together, per generation
    for x in plain:  # the transformer's calls are the largest: the text encoders' attention is tiny
        x["calls"] = sorted(x["calls"])[-n:]
    med = statistics.median
    per_call = {"plain_ms": 1e3 * med([c for x in plain for c in x["calls"]]),
                "traced_ms": 1e3 * med([c for x in traced for c in x["calls"]]),
                "traced_kernel_ms": 1e3 * med([c for x in traced for c in x["kernel"]])}
    sums_p, sums_t = [sum(x["calls"]) for x in plain], [sum(x["calls"]) for x in traced]
    tot_p, tot_t = [x["total"] for x in plain], [x["total"] for x in traced]
    return {"model": model, "size": size, "steps": steps, "runs": runs, "calls_per_generation": n,
            "per_call": {**per_call, "added_ms": per_call["traced_ms"] - per_call["plain_ms"],
                         "kernel_added_ms": per_call["traced_kernel_ms"] - per_call["plain_ms"]},
            "per_generation": {
                "calls_plain_s": summary(sums_p), "calls_traced_s": summary(sums_t),
                "calls_added_ms": 1e3 * (med(sums_t) - med(sums_p)),
                "calls_added_paired_ms": [1e3 * (t - p) for t, p in zip(sums_t, sums_p)],
                "per_call_added_x_calls_ms": n * (per_call["traced_ms"] - per_call["plain_ms"]),
                "total_plain_s": summary(tot_p), "total_traced_s": summary(tot_t),
                "total_added_ms": 1e3 * (med(tot_t) - med(tot_p)),
                "outside_calls_added_ms": 1e3 * ((med(tot_t) - med(sums_t)) - (med(tot_p) - med(sums_p)))}}


def bench_kernel(device="cpu", n_img=256, n_txt=333, heads=24, dim=64, kept=49, blocks=24, repeats=40) -> dict:
    """Plain SDPA against the traced path for one joint-attention call (CFG batch of 2, image first as in SD3)."""
    from daamlib.dit import _SDPA, _DitRecorder, _Tap, family_of

    class Stub:  # just enough pipeline for the recorder
        pass

    pipe = Stub()
    L = n_img + n_txt
    q, k, v = (torch.randn(2, heads, L, dim, device=device) for _ in range(3))
    rec = _DitRecorder(pipe, family_of(type("StableDiffusion3Pipeline", (), {})()), "all", False, None)
    from daamlib.dit import DitGeneration

    side = int(round(n_img ** 0.5))
    rec.current = DitGeneration(["x"], [None], None, columns=list(range(kept)), grid=(side, side))
    rec.rows, rec.n_img, rec.n_txt = [(1, 0)], n_img, n_txt
    rec.columns_t = torch.arange(kept, device=device)
    tap = _Tap(rec, None, "block", single=False, cross=False)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    plain, traced = [], []
    for r in range(repeats):
        for kind in ((0, 1) if r % 2 == 0 else (1, 0)):
            sync()
            t = time.perf_counter()
            if kind:
                tap.attend(q, k, v, None, None)
            else:
                _SDPA(q, k, v)
            sync()
            (traced if kind else plain).append(time.perf_counter() - t)
        rec.current.maps.clear()
    p, t = statistics.median(plain), statistics.median(traced)
    return {"shape": [2, heads, L, dim], "kept_tokens": kept, "plain_ms": 1000 * p, "traced_ms": 1000 * t,
            "added_ms_per_call": 1000 * (t - p), "ratio": t / p, "blocks": blocks,
            "added_ms_per_step": 1000 * (t - p) * blocks, "repeats": repeats}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sd3-medium", help="sd3-medium (built from its config) or a registered name")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sections", default="generation,memory,kernel")
    p.add_argument("--json", default="benchmarks/results/bench_dit_cpu.json")
    p.add_argument("--memory-child", nargs=4, metavar=("MODEL", "SIZE", "STEPS", "TRACED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.memory_child:
        m, size, steps, traced = args.memory_child
        return memory_child(m, int(size), int(steps), bool(int(traced)), args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sections = args.sections.split(",")
    results = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                           "device": args.device}}
    if "generation" in sections:
        t = time.perf_counter()
        pipe = load(args.model, args.device)
        n = sum(x.numel() for x in pipe.transformer.parameters())
        print(f"built {args.model} ({n / 1e9:.2f} B transformer parameters) in {time.perf_counter() - t:.0f} s", flush=True)
        g = bench_generation(pipe, args.model, args.size, args.steps, args.runs, sync)
        g["transformer_params"], g["command"] = n, " ".join(sys.argv)
        results["generation"] = g
        print(f"{args.model} {args.size}² {args.steps} step(s), {args.runs} runs per arm: plain "
              f"{g['plain_s']['median']:.2f} s ({g['plain_s']['min']:.2f}–{g['plain_s']['max']:.2f}), traced "
              f"{g['traced_s']['median']:.2f} s ({g['traced_s']['min']:.2f}–{g['traced_s']['max']:.2f}), ratio "
              f"{g['ratio_median']:.3f}; attention modules {g['attention_plain_s']['median']:.3f} → "
              f"{g['attention_traced_s']['median']:.3f} s; added recording {1000 * g['added_recording_s']:.1f} ms + "
              f"maps {1000 * g['added_maps_s']:.1f} ms; maps kept {g['stored_MB']:.2f} MB", flush=True)
        del pipe
    if "memory" in sections:
        m = bench_memory(args.model, args.size, args.steps, args.device)
        m["command"] = " ".join(sys.argv)
        results["memory"] = m
        print(f"peak memory: plain {m['plain_peak_MB']:.0f} MB, traced {m['traced_peak_MB']:.0f} MB "
              f"(+{m['extra_MB']:.1f} MB; maps kept {m['stored_MB']:.2f} MB)", flush=True)
    if "calls" in sections:
        pipe = load(args.model, args.device)
        c = bench_calls(pipe, args.model, args.size, args.steps, args.runs, sync)
        c["command"] = " ".join(sys.argv)
        results["calls"] = c
        pc, pg = c["per_call"], c["per_generation"]
        print(f"in situ, {c['calls_per_generation']} calls per generation, {args.runs} runs per arm: per call plain "
              f"{pc['plain_ms']:.2f} ms, traced {pc['traced_ms']:.2f} ms (kernel with LSE {pc['traced_kernel_ms']:.2f}); "
              f"calls per generation +{pg['calls_added_ms']:.1f} ms (per call × calls: "
              f"+{pg['per_call_added_x_calls_ms']:.1f} ms); whole generation {pg['total_added_ms']:+.0f} ms "
              f"(plain {pg['total_plain_s']['min']:.2f}–{pg['total_plain_s']['max']:.2f} s); outside the calls "
              f"{pg['outside_calls_added_ms']:+.0f} ms", flush=True)
        del pipe
    if "kernel" in sections:
        k = bench_kernel(args.device)
        k["command"] = " ".join(sys.argv)
        results["kernel"] = k
        print(f"one joint-attention call {k['shape']}: plain {k['plain_ms']:.2f} ms, traced {k['traced_ms']:.2f} ms "
              f"(+{k['added_ms_per_call']:.2f} ms, ×{k['ratio']:.3f}); × {k['blocks']} blocks = "
              f"+{k['added_ms_per_step']:.0f} ms per step", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    if old.get("machine") == results["machine"]:  # sections run separately on the same machine: keep the others
        results = {**old, **results}
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
