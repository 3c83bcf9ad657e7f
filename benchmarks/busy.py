"""Make the machine's cores busy, as other jobs sharing it do: one process per core, each multiplying matrices at
one thread until killed (or for --seconds). Used by bench_threads.py; run it by hand to repeat a measurement.

    python benchmarks/busy.py --seconds 600 &      # then measure, then: kill %1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import time


def spin(seconds: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a spinner just dies (the parent's handler is for the parent)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    import torch

    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a = torch.tanh(a @ a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=os.cpu_count(), help="processes (default: one per core)")
    ap.add_argument("--seconds", type=float, default=3600)
    a = ap.parse_args()
    procs = [mp.Process(target=spin, args=(a.seconds,), daemon=True) for _ in range(a.procs)]

    def stop(*_):  # killed: take the spinners along (daemon children outlive a parent killed by a signal)
        for p in procs:
            p.terminate()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
