"""What checking a finished item costs: the runner and ``load_results`` compare every file with its SHA-256 on every
resume and load. Measured per item on a run folder, beside the generation it protects.

    python benchmarks/bench_verify.py                               # a fresh 20-item run of the embedded model
    python benchmarks/bench_verify.py --run out/01_segmentation/runs   # an existing run folder

Per item, median and min–max over the run's items (page cache warm, as on a resume right after a run; a cold disk
reads at its own speed), at one thread:

cheap      ``check_files(full=False)``: headers only (the check before this round)
checksums  ``check_files(full=True)``: every file hashed (the default now)
deep       ``check_files(full=True, deep=True)``: also loaded as ``load_experiment`` does (``--verify``)

The generation each item took comes from the run's own manifest (``seconds``). For GPU models the checksum cost
is projected from the maps' size at the measured SHA-256 rate, against the traced generation times measured on an
H200 (``benchmarks/results/bench_trace_cuda_h200.json``, 10 steps). Results go to
``benchmarks/results/bench_verify.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def make_run(folder: Path, n: int) -> Path:
    from daamlib.runner import run_experiments

    items = [{"id": f"i{k}", "prompt": "a red circle above a blue square on grass", "seed": k} for k in range(n)]
    run_experiments("shapeworld", items, folder, progress=False, shard=(0, 1), device="cpu")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="an existing run folder (default: a fresh run of the embedded model)")
    ap.add_argument("--items", type=int, default=20)
    a = ap.parse_args()
    import torch

    from daamlib.io import check_files

    torch.set_num_threads(1)
    tmp = None
    if a.run:
        run = Path(a.run)
    else:
        tmp = tempfile.TemporaryDirectory()
        run = make_run(Path(tmp.name) / "run", a.items)
    folders = sorted(p for p in (run / "items").iterdir() if p.is_dir() and not p.name.startswith("."))
    times = {"cheap": [], "checksums": [], "deep": []}
    sizes, gen = [], []
    for f in folders:
        sizes.append(sum(x.stat().st_size for x in f.iterdir()) / 1e6)
        rec = run / "manifest" / f"{f.name}.json"
        if rec.is_file():
            s = json.loads(rec.read_text()).get("seconds")
            if s:
                gen.append(s)
        for name, kw in (("cheap", {}), ("checksums", {"full": True}), ("deep", {"full": True, "deep": True})):
            t0 = time.perf_counter()
            assert check_files(f, **kw) == [], f
            times[name].append(time.perf_counter() - t0)
    buf = os.urandom(64 << 20)
    t0 = time.perf_counter()
    hashlib.sha256(buf).hexdigest()
    rate = 64 * 1.048576 / (time.perf_counter() - t0)  # MB/s
    result = {"run": str(run) if a.run else f"fresh: {a.items} items of the embedded model (shapeworld), CPU",
              "threads": 1, "machine": platform.processor() or platform.machine(),
              "item_MB": stats(sizes), "ms_per_item": {k: stats([x * 1e3 for x in v]) for k, v in times.items()},
              "sha256_MB_per_s": rate}
    if gen:
        result["generation_s"] = stats(gen)
        result["checksums_pct_of_generation"] = 100 * statistics.median(times["checksums"]) / statistics.median(gen)
    h200 = json.loads((ROOT / "benchmarks/results/bench_trace_cuda_h200.json").read_text())
    result["projected_gpu"] = [
        {"model": g["model"], "steps": g["steps"], "maps_MB": g["stored_MB"], "traced_s_h200": g["traced_s"]["median"],
         "checksum_ms": 1e3 * g["stored_MB"] / rate,
         "pct_of_generation": 100 * g["stored_MB"] / rate / g["traced_s"]["median"]}
        for g in h200["generation"]]
    m = result["ms_per_item"]
    print(f"items: {len(folders)} of {statistics.median(sizes):.2f} MB (median)")
    for k in times:
        print(f"{k:10s} {m[k]['median']:.2f} ms per item (min {m[k]['min']:.2f}, max {m[k]['max']:.2f})")
    if gen:
        print(f"generation {statistics.median(gen):.2f} s per item: checksums are "
              f"{result['checksums_pct_of_generation']:.2f}% of it")
    print(f"SHA-256: {rate:.0f} MB/s")
    for g in result["projected_gpu"]:
        print(f"projected {g['model']} ({g['steps']} steps, {g['maps_MB']:.1f} MB of maps): {g['checksum_ms']:.1f} ms, "
              f"{g['pct_of_generation']:.1f}% of its traced generation on an H200")
    out = ROOT / "benchmarks" / "results" / "bench_verify.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
