"""Memory of a masked transformer call's recording where no fused kernel returns LSE (CUDA with a mask: Chroma
always, Z-Image with CFG), emulated on the CPU: the fallback a CUDA run takes, forced here.

    python benchmarks/bench_masked_lse.py                      # 4,096 image + 512 text tokens, 24 heads of 64, CFG
    python benchmarks/bench_masked_lse.py --image 1024 --runs 3

One attention call at Flux/Chroma-dev's 1024² shapes (a batch of 2: the unconditional and conditional rows, 24 heads,
4,096 image + 512 text tokens, head dim 64, a boolean padding mask, ``kept`` prompt tokens recorded), each arm in a
fresh process. Peak RSS above the inputs (``ru_maxrss``) is what the call added:

plain    SDPA for the output alone (what an untraced call adds: the floor)
before   SDPA for the output, then LSE by an explicit pass over every batch row and query in blocks of 1,024 queries
         (the path up to this round: ``attention._explicit_lse``)
after    SDPA for the output, then LSE for the conditional row's image queries only (``attention.lse_beside``), in
         blocks no larger than the kept probabilities
kept     the kept probabilities themselves, [heads, kept, image] float32 per conditional row (what recording keeps)

On CUDA the same arithmetic allocates the same tensors (in float32); ``max_memory_allocated`` there would count
them the same way. Results go to ``benchmarks/results/bench_masked_lse.json``.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(arm: str, image: int, text: int, heads: int, kept: int) -> dict:
    import time

    import torch

    sys.path.insert(0, str(ROOT))
    from daamlib import attention as A

    torch.manual_seed(0)
    L, D = image + text, 64
    q, k, v = (torch.randn(2, heads, L, D) for _ in range(3))
    mask = torch.ones(2, 1, 1, L, dtype=torch.bool)
    mask[..., image + kept + 8:] = False  # the text padding past the prompt
    A.SDPA(q[:, :, :8], k, v, attn_mask=mask)  # load the kernels before the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = A.SDPA(q, k, v, attn_mask=mask)
    lse = torch.empty(0)
    if arm == "before":
        lse = A._explicit_lse(q, k, A.float_mask(mask, q.dtype), None)
    elif arm == "after":
        lse = A.lse_beside(q, k, mask, None, [1], slice(0, image), kept)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out_mib = out.numel() * 4 / 2**20
    return {"arm": arm, "added_mib": (peak - base) / 1024, "output_mib": out_mib, "lse_shape": list(lse.shape),
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=int, default=4096)
    ap.add_argument("--text", type=int, default=512)
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--kept", type=int, default=77)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.arm:
        print(json.dumps(one(a.arm, a.image, a.text, a.heads, a.kept)))
        return
    rows = {}
    for arm in ("plain", "before", "after"):
        runs = []
        for _ in range(a.runs):
            cmd = [sys.executable, __file__, "--arm", arm, "--image", str(a.image), "--text", str(a.text),
                   "--heads", str(a.heads), "--kept", str(a.kept)]
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            runs.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                                  env=env).stdout.strip().splitlines()[-1]))
        added = [r["added_mib"] for r in runs]
        rows[arm] = {"added_mib_median": statistics.median(added), "added_mib_min": min(added),
                     "added_mib_max": max(added), "output_mib": runs[0]["output_mib"],
                     "seconds_median": statistics.median(r["seconds"] for r in runs), "runs": len(runs)}
        print(f"{arm:7s} +{rows[arm]['added_mib_median']:.0f} MiB (min {min(added):.0f}, max {max(added):.0f}; "
              f"the output alone {runs[0]['output_mib']:.0f} MiB), {rows[arm]['seconds_median']:.2f} s")
    kept_mib = a.heads * a.kept * a.image * 4 / 2**20
    print(f"kept probabilities of one conditional row: {kept_mib:.0f} MiB")
    result = {"shapes": {"batch": 2, "heads": a.heads, "image": a.image, "text": a.text, "head_dim": 64,
                         "kept": a.kept, "mask": "bool [2, 1, 1, keys]"},
              "threads": int(os.environ.get("OMP_NUM_THREADS", "1")), "machine": platform.processor() or platform.machine(),
              "emulates": "the CUDA fallback for masked calls, on the CPU", "kept_mib": kept_mib, **rows}
    out = ROOT / "benchmarks" / "results" / "bench_masked_lse.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
