"""The paper's numbers, typed once, with where they come from; and how a notebook's result is set beside them.

>>> PAPER["table1.daam-0.4.coco-gen"].value, PAPER["table1.daam-0.4.coco-gen"].source
(60.7, 'Table 1, row 9 (mIoU∞, COCO-Gen)')
>>> verdict_value(60.7, 33.0, 30.1, 36.0)[0]
'does not reproduce'

Every notebook ends with a *paper vs here* table (:func:`table`): one row per claim of the paper that the
notebook can test, with the paper's number, this run's number and its 95% interval, n, and a verdict —
``reproduces`` (the paper's number lies in this run's interval, or its claim holds and its number does too),
``direction only`` (the effect goes the paper's way, clearly, but its size differs), ``does not reproduce``
(no clear effect, or one the other way), or ``cannot be tested on this model`` — with the reason.
Numbers are mIoU-style percentages unless the unit says otherwise. The paper's values are for Stable
Diffusion 2.0-base on COCO prompts; on the embedded ShapeWorld model absolute values are not expected
to match, so most verdicts there are about directions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

REPRODUCES, DIRECTION, NOT, UNTESTABLE = ("reproduces", "direction only", "does not reproduce",
                                          "cannot be tested on this model")
COLUMNS = ["section", "claim", "paper", "here", "low", "high", "n", "verdict", "reason"]
FEW = 5  # fewer items than this: no verdict (as the figures mark such categories †)


@dataclass(frozen=True)
class PaperNumber:
    value: float
    source: str  # table / figure / section, as printed
    unit: str = "mIoU × 100"


# §3.1, Table 1 (mIoU∞: no class restriction, as DAAM's own vocabulary is open); Stable Diffusion 2.0-base, 30 DPM steps
_T1 = {"daam-0.3": (8, 59.1, 58.9), "daam-0.4": (9, 60.7, 58.3), "daam-0.5": (10, 55.4, 52.5),
       "whole image": (5, 21.1, 19.3), "stego": (7, 53.6, 54.5), "picie": (6, 25.2, 27.8)}
PAPER: dict[str, PaperNumber] = {}
for _k, (_row, _gen, _unreal) in _T1.items():
    PAPER[f"table1.{_k}.coco-gen"] = PaperNumber(_gen, f"Table 1, row {_row} (mIoU∞, COCO-Gen)")
    PAPER[f"table1.{_k}.unreal-gen"] = PaperNumber(_unreal, f"Table 1, row {_row} (mIoU∞, Unreal-Gen)")
PAPER.update({
    "table1.best-tau": PaperNumber(0.4, "§3.1: \"0.4 works best on all splits\"", "τ"),
    "fig11.all-steps-and-layers": PaperNumber(float("nan"), "Appendix A.1, Fig. 11: \"all time steps and layers "
                                              "contribute positively\" (plotted, no number)"),
    # §3.2, Fig. 3: mean opinion scores (1 bad … 5 excellent), read from the text
    "fig3.mos.good": PaperNumber(4.0, "§3.2, Fig. 3: ADJ, VERB, NOUN, PROPN \"close to or slightly above good\"", "MOS"),
    "fig3.mos.fair": PaperNumber(3.0, "§3.2, Fig. 3: NUM and ADV \"closer to fair\"", "MOS"),
    "fig3.fair-to-excellent": PaperNumber(90.0, "§3.2, Fig. 3 bottom: > 90% fair–excellent (> 80% NUM, ADV)", "%"),
})
# §4, Table 2: mIoD, mIoH, mIoU (× 100) and which map dominates (Δ > 10 points at p < 0.01)
TABLE2 = {
    "unrelated": (65.1, 66.1, 47.5, ""), "all head–dependent pairs": (62.3, 62.0, 43.4, ""),
    "compound": (71.3, 71.5, 51.1, ""), "punct": (68.2, 70.0, 49.5, ""), "nconj:and": (58.0, 56.1, 38.2, ""),
    "det": (54.8, 52.2, 35.0, ""), "case": (51.7, 58.1, 36.9, ""), "acl": (67.4, 79.3, 55.4, "dependent"),
    "nsubj": (76.4, 63.9, 52.2, "head"), "amod": (62.4, 77.6, 51.1, "dependent"), "nmod:of": (73.5, 57.9, 47.5, "head"),
    "obj": (75.6, 46.3, 55.4, "head"),
}
PAPER.update({
    # §5.1: generation accuracy (%), mIoU of the two nouns' maps, accuracy by overlap bin
    "5.1.accuracy.non-cohyponyms": PaperNumber(61.0, "§5.1: non-cohyponym accuracy 61%", "%"),
    "5.1.accuracy.cohyponyms": PaperNumber(52.0, "§5.1: cohyponym accuracy 52% (exact test, 99% level)", "%"),
    "5.1.miou.cohyponyms": PaperNumber(46.7, "§5.1: mIoU of the two maps, cohyponyms"),
    "5.1.miou.non-cohyponyms": PaperNumber(22.9, "§5.1: mIoU of the two maps, non-cohyponyms"),
    "5.1.accuracy.low-overlap": PaperNumber(74.6, "§5.1, Fig. 6: accuracy with low overlap 71.7–77.5% (midpoint)", "%"),
    "5.1.accuracy.high-overlap": PaperNumber(22.9, "§5.1, Fig. 6: accuracy with high overlap 9.8–36% (midpoint)", "%"),
    # §5.2: qualitative only
    "5.2.background-shift": PaperNumber(float("nan"), "§5.2, Fig. 9: the background gains the adjective's colour "
                                        "(shown, not measured)", "°"),
    "5.2.adjective-spread": PaperNumber(float("nan"), "§5.2, Fig. 8: the adjective's map \"attends broadly\" "
                                        "(shown, not measured)", "% of map mass outside the object"),
})


# -- intervals ---------------------------------------------------------------------------------------
def bootstrap(values: Sequence[float], stat: Callable = np.mean, n_boot: int = 2000, seed: int = 0,
              level: float = 0.95) -> tuple[float, float, float, int]:
    """``(stat, low, high, n)``: the statistic of the values (NaNs dropped) and its percentile bootstrap interval."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    est = float(stat(x))
    if n == 1:
        return est, math.nan, math.nan, 1
    rng = np.random.default_rng(seed)
    boots = np.array([stat(x[rng.integers(0, n, n)]) for _ in range(n_boot)], dtype=float)
    a = (1 - level) / 2
    return est, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)), n


def bootstrap_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float, int]:
    """``mean(a) − mean(b)`` of two independent samples with its percentile bootstrap interval; n = both sizes."""
    x, y = (np.asarray(v, dtype=float) for v in (a, b))
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if len(x) < 2 or len(y) < 2:
        return (float(x.mean() - y.mean()) if len(x) and len(y) else math.nan), math.nan, math.nan, len(x) + len(y)
    rng = np.random.default_rng(seed)
    boots = np.array([x[rng.integers(0, len(x), len(x))].mean() - y[rng.integers(0, len(y), len(y))].mean()
                      for _ in range(n_boot)])
    q = (1 - level) / 2
    return float(x.mean() - y.mean()), float(np.quantile(boots, q)), float(np.quantile(boots, 1 - q)), len(x) + len(y)


# -- verdicts ----------------------------------------------------------------------------------------
def verdict_value(paper: float, here: float, low: float, high: float) -> tuple[str, str]:
    """A number: reproduces when the paper's value lies in this run's interval."""
    if any(map(math.isnan, (paper, here, low, high))):
        return NOT, "too few items for an interval"
    if low <= paper <= high:
        return REPRODUCES, "the paper's value lies in the 95% interval"
    return NOT, f"the paper's {paper:.4g} lies {'above' if paper > high else 'below'} the interval [{low:.3g}, {high:.3g}]"


def verdict_effect(paper: float, here: float, low: float, high: float, sign: int = 1) -> tuple[str, str]:
    """An effect (a difference the paper reports with sign ``sign``, > 0 meaning "the first is larger"):
    ``reproduces`` when the interval excludes 0 on the paper's side and holds the paper's size (or the paper gave
    no size), ``direction only`` when it excludes 0 on that side only, ``does not reproduce`` otherwise."""
    if any(map(math.isnan, (here, low, high))):
        return NOT, "too few items for an interval"
    if (low > 0 and sign > 0) or (high < 0 and sign < 0):
        if math.isnan(paper):
            return REPRODUCES, "the effect is clear (95% interval excludes 0); the paper shows it without a number"
        if low <= paper <= high:
            return REPRODUCES, "the effect is clear (95% interval excludes 0) and of the paper's size"
        return DIRECTION, f"the effect goes the paper's way but its size differs (paper {paper:+.3g})"
    if (high < 0 and sign > 0) or (low > 0 and sign < 0):
        return NOT, "the effect goes the other way (95% interval excludes 0)"
    return NOT, "no clear effect: the 95% interval includes 0"


def verdict_none(paper: float, here: float, low: float, high: float) -> tuple[str, str]:
    """An absence of effect the paper reports (e.g. no dominance, Δ ≤ 1): reproduces when the interval holds 0."""
    if any(map(math.isnan, (here, low, high))):
        return NOT, "too few items for an interval"
    if low <= 0 <= high:
        return REPRODUCES, "no clear effect, as in the paper (95% interval includes 0)"
    return NOT, f"a clear effect where the paper has none ({here:+.3g}, interval [{low:.3g}, {high:.3g}])"


def row(section: str, claim: str, paper: float, here: float = math.nan, low: float = math.nan,
        high: float = math.nan, n: int = 0, verdict: tuple[str, str] | None = None, untestable: str = "") -> dict:
    """One row of a paper-vs-here table; ``untestable`` (a reason) marks a claim this model cannot test."""
    if untestable:
        verdict = (UNTESTABLE, untestable)
    elif not n:
        verdict = (UNTESTABLE, "no items of this kind in this run")
    elif n < FEW:
        verdict = (UNTESTABLE, f"only {n} item(s) here, fewer than {FEW}: too few for a verdict")
    v, reason = verdict or verdict_value(paper, here, low, high)
    return {"section": section, "claim": claim, "paper": paper, "here": here, "low": low, "high": high, "n": int(n),
            "verdict": v, "reason": reason}


def table(rows: Sequence[dict]):
    """The paper-vs-here DataFrame (columns :data:`COLUMNS`)."""
    import pandas as pd

    return pd.DataFrame(list(rows), columns=COLUMNS)
