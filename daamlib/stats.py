"""Overlap statistics of binary maps (paper §3.1 and §4), map mass on a region, and confidence intervals.

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


def as_mask(x) -> torch.Tensor:
    """A mask (tensor, array or nested lists) as a bool tensor; tensors keep their device."""
    t = torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x
    return t.bool()


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masks as bool tensors of one shape, on ``a``'s device (maps traced on a GPU meet masks read on the CPU)."""
    a, b = as_mask(a), as_mask(b)
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


def mass_on_region(heat: torch.Tensor, region) -> float:
    """Share of a soft map's mass that falls inside ``region`` (NaN for an all-zero map); the region moves
    to the map's device (maps traced on a GPU meet masks read on the CPU)."""
    region = as_mask(region)
    total = float(heat.clamp(min=0).sum())
    return float((heat.clamp(min=0) * region.to(heat.device).float()).sum()) / total if total > 0 else float("nan")
