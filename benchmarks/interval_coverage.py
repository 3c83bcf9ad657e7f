"""How often a nominal 95% interval of a mean holds the true mean, by n: the percentile bootstrap, the BCa
bootstrap the verdicts use (:func:`daamlib.studies.paper.interval`) and Student's t, on the shapes of data the
studies produce (a mIoU-like bounded score, a skewed difference, a 0/1 accuracy, a normal one).

    python benchmarks/interval_coverage.py --reps 1000 --json benchmarks/results/interval_coverage.json

It is the evidence behind ``paper.FEW`` (no verdict below it): pick the n at which coverage comes near 95%.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from daamlib.studies import paper as P  # noqa: E402

# name → (sampler(rng, n), true mean)
SHAPES = {
    "normal": (lambda r, n: r.normal(0, 1, n), 0.0),
    "mIoU-like, beta(2, 5)": (lambda r, n: r.beta(2, 5, n), 2 / 7),
    "skewed difference, lognormal − 1": (lambda r, n: r.lognormal(0, 1, n) - 1, np.exp(0.5) - 1),
    "accuracy, Bernoulli(0.3)": (lambda r, n: (r.random(n) < 0.3).astype(float), 0.3),
}


def percentile(x, n_boot=2000, seed=0):
    rng = np.random.default_rng(seed)
    b = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1)
    return np.quantile(b, 0.025), np.quantile(b, 0.975)


def student(x):
    h = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean() - h, x.mean() + h


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--ns", default="5,8,10,15,20,30")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    ns = [int(v) for v in a.ns.split(",")]
    out = {"reps": a.reps, "level": 0.95, "coverage": {}}
    print(f"coverage of a nominal 95% interval of the mean, {a.reps} samples per cell")
    print(f"{'shape':36s} {'n':>3s} {'percentile':>10s} {'BCa':>6s} {'t':>6s} {'paper.interval':>14s}")
    for name, (draw, mu) in SHAPES.items():
        for n in ns:
            rng = np.random.default_rng(n)
            hits = {"percentile": 0, "bca": 0, "t": 0, "ours": 0}
            for rep in range(a.reps):
                x = draw(rng, n)
                if np.ptp(x) == 0:  # every value equal: no interval can be made (all methods miss alike)
                    continue
                for k, (lo, hi) in (("percentile", percentile(x, seed=rep)), ("t", student(x)),
                                    ("bca", P.interval(x, stat=np.mean, seed=rep)[1:3]),
                                    ("ours", P.interval(x)[1:3])):
                    hits[k] += lo <= mu <= hi
            cov = {k: v / a.reps for k, v in hits.items()}
            out["coverage"].setdefault(name, {})[n] = cov
            print(f"{name:36s} {n:3d} {cov['percentile']:10.3f} {cov['bca']:6.3f} {cov['t']:6.3f} {cov['ours']:14.3f}")
    print("\nclustered: k prompts, 3 pairs each, half the variance between prompts (as 03's pairs, 05's swaps)")
    print(f"{'k prompts':>9s} {'pairs as units':>14s} {'prompts as units':>16s}")
    for k in ns:
        rng = np.random.default_rng(100 + k)
        naive = clustered = 0
        for rep in range(a.reps):
            x = np.repeat(rng.normal(0, 1, k), 3) + rng.normal(0, 1, 3 * k)
            units = np.repeat(np.arange(k), 3)
            naive += P.interval(x)[1] <= 0 <= P.interval(x)[2]
            lo, hi = P.interval(x, units)[1:3]
            clustered += lo <= 0 <= hi
        out.setdefault("clustered", {})[k] = {"pairs_as_units": naive / a.reps, "prompts_as_units": clustered / a.reps}
        print(f"{k:9d} {naive / a.reps:14.3f} {clustered / a.reps:16.3f}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
