"""Recording before and after issue 17's changes, timed in one run on the same captured calls (paired, as the
``floor`` section of bench_trace.py times them). "Before" is the recorder of commit 3108efd, its no-store path
copied here verbatim (query-major kept logits, ``exp(logits − LSE)``, head sum, transpose copy), and that
commit's ``upsample_sum`` and ``word_map``; "after" is the current one.

    python benchmarks/before_after.py --models tiny,sd2-256 --json benchmarks/results/bench_before_after.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_trace import PROMPT10, attention_arms, capture_calls, load, paired_times, recorder_like  # noqa: E402

import daamlib  # noqa: E402
from daamlib import kernel  # noqa: E402
from daamlib.attention import attention_with_lse  # noqa: E402


def before_attend(rec, name, q, k, v, b0, K):
    """Commit 3108efd's no-store recording path, verbatim but for its projections (which are unchanged)."""
    B, H, N, d = q.shape
    s = d ** -0.5
    out, lse = attention_with_lse(q, k, v, None)
    logits = q[b0:].float() @ (k[b0:, :, :K].float() * s).transpose(-1, -2)  # [Bc, heads, N, K]
    probs = torch.exp(logits - lse[b0:].unsqueeze(-1))
    p, T = probs.sum(1), probs.shape[-1]
    h, w = rec.grid(N)
    p = p.transpose(-1, -2).reshape(*p.shape[:-2], T, h, w)
    rec.current.maps.setdefault(name, []).append(p)
    return out.transpose(1, 2).reshape(B, -1, H * d).to(q.dtype)


def before_upsample_sum(maps, size):
    """Commit 3108efd's upsample_sum: the height product on [Σh, T·W], then a transpose copy."""
    H, W = size
    T = maps[0].shape[0]
    dev = str(maps[0].device)
    along_w = [(m.float().reshape(-1, m.shape[-1]) @ kernel._interpolation_matrix(m.shape[-1], W, dev).T)
               .reshape(T, m.shape[-2], W) for m in maps]
    stacked = torch.cat(along_w, dim=1).transpose(0, 1).reshape(-1, T * W)
    a_h = torch.cat([kernel._interpolation_matrix(m.shape[-2], H, dev) for m in maps], dim=1)
    return (a_h @ stacked).reshape(H, T, W).transpose(0, 1).contiguous()


def before_word_map(token_maps, positions):
    idx = list(positions)
    return token_maps[idx].mean(0)


def run(model, size, steps, repeats):
    pipe = load(model, "cpu")
    calls, tc = capture_calls(pipe, PROMPT10, size)
    g = tc.generations[-1]
    recs = {"before": recorder_like(g, True), "after": recorder_like(g, True), "after_explicit": recorder_like(g, False)}
    added = {"before": 0.0, "after": 0.0, "after_explicit": 0.0}
    for c in calls:
        q, k, v = c["q"], c["k"], c["v"]
        b0 = q.shape[0] // 2
        arms = attention_arms(c, {"after": recs["after"], "after_explicit": recs["after_explicit"]})

        def before():
            before_attend(recs["before"], c["layer"], q, k, v, b0, g.n_tokens)
            recs["before"].current.maps.clear()

        t = paired_times({"plain": arms.pop("plain"), "before": before, **arms}, repeats, lambda: None)
        for kind in added:
            added[kind] += steps * 1e3 * t[kind]["added_median"]
    with daamlib.trace(pipe) as tc:
        pipe(PROMPT10, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="pt",
             generator=torch.Generator().manual_seed(0))
    now = (kernel.upsample_sum, kernel.word_map)

    def maps_before():
        kernel.upsample_sum, kernel.word_map = before_upsample_sum, before_word_map
        try:
            return [w.heat for w in tc.heat_maps(0)]
        finally:
            kernel.upsample_sum, kernel.word_map = now

    m = paired_times({"after": lambda: [w.heat for w in tc.heat_maps(0)], "before": maps_before}, repeats,
                     lambda: None)
    assert all(torch.equal(a, b) for a, b in zip(maps_before(), [w.heat for w in tc.heat_maps(0)]))
    return {"model": model, "size": size, "steps": steps, "calls": steps * len(calls),
            "recording_before_ms": added["before"], "recording_after_ms": added["after"],
            "recording_after_fused_false_ms": added["after_explicit"],
            "word_maps_before_ms": 1e3 * m["before"]["median"], "word_maps_after_ms": 1e3 * m["after"]["median"],
            "word_maps_bit_identical": True}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,sd2-256")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--json", default="benchmarks/results/bench_before_after.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sizes = {"tiny": 64, "sd2-256": 256, "sd2-512": 512}
    rows = [run(m, sizes[m], args.steps, args.repeats) for m in args.models.split(",")]
    for r in rows:
        print(r)
    Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
