"""Overlap statistics of binary maps (paper §3.1 and §4), with confidence intervals.

For a head map H and a dependent map D (boolean, same shape):

* ``iou(a, b)`` = |a ∧ b| / |a ∨ b|
* ``iod(head, dep)`` = |H ∧ D| / |D|  — intersection over the dependent
* ``ioh(head, dep)`` = |H ∧ D| / |H|  — intersection over the head

An empty denominator gives NaN (the ratio is undefined); ``mean_ci`` skips NaNs and says
how many it used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def _bool(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x
    return t.bool()


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masks as bool tensors of one shape, on ``a``'s device (maps traced on a GPU meet masks read on the CPU)."""
    a, b = _bool(a), _bool(b)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}; resize one to the other first")
    return a, b.to(a.device)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    den = float(den)
    return float(num) / den if den > 0 else math.nan


def intersection(a, b) -> int:
    a, b = _pair(a, b)
    return int((a & b).sum())


def iou(a, b) -> float:
    """Intersection over union; NaN when both masks are empty."""
    a, b = _pair(a, b)
    return _ratio((a & b).sum(), (a | b).sum())


def iod(head, dependent) -> float:
    """Intersection over the dependent's area; NaN when the dependent is empty."""
    h, d = _pair(head, dependent)
    return _ratio((h & d).sum(), d.sum())


def ioh(head, dependent) -> float:
    """Intersection over the head's area; NaN when the head is empty."""
    h, d = _pair(head, dependent)
    return _ratio((h & d).sum(), h.sum())


@dataclass(frozen=True)
class MeanCI:
    """A mean with a two-sided confidence interval (Student t on the values used)."""

    mean: float
    low: float
    high: float
    n: int  # values used (NaNs skipped)
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.half_width:.2g} (n={self.n}, {self.level:.0%} CI)"


def mean_ci(values, level: float = 0.95) -> MeanCI:
    """Mean and ``level`` confidence interval of ``values``, NaNs skipped."""
    from scipy import stats as st

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, level)
    m = float(x.mean())
    if n == 1:
        return MeanCI(m, math.nan, math.nan, 1, level)
    half = float(st.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return MeanCI(m, m - half, m + half, n, level)


def pair_overlap(head, dependent) -> dict[str, float]:
    """IoU, IoD and IoH of a head map and a dependent map (booleans of the same shape)."""
    return {"iou": iou(head, dependent), "iod": iod(head, dependent), "ioh": ioh(head, dependent)}


def paired_p_value(a, b) -> float:
    """Two-sided Wilcoxon signed-rank p-value for paired samples ``a`` vs ``b`` (NaN pairs dropped)."""
    from scipy import stats as st

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.allclose(x, y):
        return math.nan if len(x) < 2 else 1.0
    return float(st.wilcoxon(x, y).pvalue)


def relation_table(rows, alpha: float = 0.01, dominance: float = 10.0):
    """Table 2: per relation, n, mIoD, mIoH, Δ = |mIoD − mIoH|, mIoU (all ×100), the paired p of mIoD ≠ mIoH,
    and which map dominates (``head`` when mIoD > mIoH by more than ``dominance`` points at p < ``alpha``).

    ``rows``: dicts or a DataFrame with columns ``relation``, ``iou``, ``iod``, ``ioh``. A pair whose IoD
    or IoH is undefined (an empty mask) is left out of every column, so n, the means, Δ and p all
    describe the same pairs; ``excluded`` counts those left out.
    """
    import pandas as pd

    df = pd.DataFrame(rows)
    out = []
    for rel, g_all in df.groupby("relation", sort=False):
        g = g_all[g_all["iod"].notna() & g_all["ioh"].notna()]
        m_iod, m_ioh = 100 * g["iod"].mean(), 100 * g["ioh"].mean()
        p = paired_p_value(g["iod"], g["ioh"])
        delta = abs(m_iod - m_ioh)
        dominant = ("head" if m_iod > m_ioh else "dependent") if delta > dominance and p < alpha else ""
        out.append({"relation": rel, "n": len(g), "mIoD": m_iod, "mIoH": m_ioh, "delta": delta,
                    "mIoU": 100 * g["iou"].mean(), "p": p, "dominant": dominant, "excluded": len(g_all) - len(g)})
    return pd.DataFrame(out)


def fisher_exact(successes_a: int, total_a: int, successes_b: int, total_b: int) -> tuple[float, float]:
    """Fisher's exact test on two proportions: ``(odds ratio, two-sided p)``."""
    from scipy import stats as st

    res = st.fisher_exact([[successes_a, total_a - successes_a], [successes_b, total_b - successes_b]])
    return float(res.statistic), float(res.pvalue)


def overlap_bin(value: float, cuts: tuple[float, float] = (0.4, 0.6)) -> str | None:
    """The paper's §5.1 overlap bins: ``low`` (≤ 0.4), ``mid`` (0.4–0.6), ``high`` (≥ 0.6); None for a
    NaN overlap (both masks empty), which belongs to no bin."""
    if value != value:
        return None
    if value <= cuts[0]:
        return "low"
    return "high" if value >= cuts[1] else "mid"
