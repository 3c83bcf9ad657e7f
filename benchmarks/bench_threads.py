"""How long a newcomer waits, by thread setting, on an idle machine and on one whose cores other jobs keep busy.

    python benchmarks/bench_threads.py                    # 3 runs per cell; about 15 minutes on 2 cores
    python benchmarks/bench_threads.py --runs 5 --what cli

Cells: torch threads 1, 2 and the default (no OMP_NUM_THREADS: torch takes one per core), × idle / busy (every
core running ``benchmarks/busy.py``'s matrix loop at one thread), × what is timed, each in a fresh process:

cli        ``python -m daamlib.cli "a red circle above a blue square on grass"`` on the embedded model (load, one
           traced generation at its own 30 steps, the figures written): wall time of the process
generate   inside one process after loading: ``daamlib.generate`` of that prompt (the part a notebook repeats)
notebook   ``papermill`` of ``notebooks/00_quickstart.ipynb`` at its defaults (kernel start, imports, one traced
           generation, the explorer and figures), its outputs in a temporary folder: wall time of the process

``DAAM_THREADS`` unset, so the library's default applies (small models on the CPU generate at one thread, see
README, Threads); ``--library-threads off`` sets ``DAAM_THREADS=all`` to measure torch's own settings as before.
Results: ``benchmarks/results/bench_threads.json`` (median, min, max of the runs per cell).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle above a blue square on grass"
GENERATE = ("import time, daamlib\n"
            "pipe = daamlib.load_pipeline('shapeworld')\n"
            "daamlib.generate(pipe, 'a cat', steps=2)\n"  # warm-up
            "t = time.perf_counter(); daamlib.generate(pipe, %r); print('SECONDS', time.perf_counter() - t)\n") % PROMPT


def run_once(what: str, threads: str, library: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "DAAM_THREADS")}
    if threads != "default":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    if not library:
        env["DAAM_THREADS"] = "all"
    with tempfile.TemporaryDirectory() as tmp:
        if what == "notebook":
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "papermill", "--cwd", "notebooks", "notebooks/00_quickstart.ipynb",
                            f"{tmp}/run.ipynb", "-p", "OUT_DIR", f"{tmp}/out", "--log-level", "ERROR"], env=env,
                           cwd=ROOT, check=True, capture_output=True, timeout=3600)
            return time.perf_counter() - t0
        if what == "cli":
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "daamlib.cli", PROMPT, "--out", tmp], env=env, cwd=ROOT, check=True,
                           capture_output=True, timeout=3600)
            return time.perf_counter() - t0
        out = subprocess.run([sys.executable, "-c", GENERATE], env=env, cwd=ROOT, check=True, capture_output=True,
                             text=True, timeout=3600).stdout
        return float(next(line.split()[1] for line in out.splitlines() if line.startswith("SECONDS")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--what", default="generate,cli")
    ap.add_argument("--threads", default="1,2,default")
    ap.add_argument("--loads", default="idle,busy")
    ap.add_argument("--library-threads", choices=("on", "off"), default="on")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bench_threads.json"))
    a = ap.parse_args()
    library = a.library_threads == "on"
    cells = []
    for load in a.loads.split(","):
        busy = None
        if load == "busy":
            busy = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "busy.py"), "--seconds", "7200"],
                                    start_new_session=True)
            time.sleep(3)
        try:
            for what in a.what.split(","):
                for threads in a.threads.split(","):
                    times = [run_once(what, threads, library) for _ in range(a.runs)]
                    cell = {"what": what, "threads": threads, "load": load, "median_s": statistics.median(times),
                            "min_s": min(times), "max_s": max(times), "runs": times}
                    cells.append(cell)
                    print(f"{what:8s} threads={threads:7s} {load:4s}: {cell['median_s']:.2f} s "
                          f"(min {cell['min_s']:.2f}, max {cell['max_s']:.2f}, {a.runs} runs)", flush=True)
        finally:
            if busy is not None:  # the spinners too: the whole process group
                os.killpg(busy.pid, signal.SIGTERM)
                busy.wait()
    result = {"cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "library_threads": library, "prompt": PROMPT, "model": "shapeworld (its own 30 steps)",
              "busy": "benchmarks/busy.py: one 1-thread matrix loop per core", "cells": cells}
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
