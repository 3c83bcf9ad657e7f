"""The paper's numbers, typed once, with where they come from; and the rules that set a result beside them.

>>> PAPER["table1.daam-0.4.coco-gen"].value, PAPER["table1.daam-0.4.coco-gen"].source
(60.7, 'Table 1, row 9 (mIoU∞, COCO-Gen)')
>>> value(60.7, 30.1, 36.0, tolerance=5.0).verdict
'does not reproduce'
>>> no_effect(-0.2, 19.6, margin=10.0).verdict
'inconclusive'

Every notebook ends with a *paper vs here* table (:func:`table`): one row per claim of the paper that the
notebook can test, with the paper's number, this run's number, its 95% interval, n (independent units: prompts,
templates or images, never the pairs made from them), a verdict, the rule that decided it, its margin and its α,
and the reason. The same rules judge every model, the embedded ones and a user's SDXL alike; each is a small
pure function below:

* :func:`value` — a number the paper reports: *reproduces* if the interval lies inside the paper's value ±
  a stated tolerance, *does not reproduce* if the two are disjoint, else *inconclusive*; where the quantity is
  not the paper's (ShapeWorld mIoU against SD 2 on COCO) the row says *not comparable*, and the study judges
  the direction in a row of its own (e.g. DAAM − baseline, with :func:`effect`);
* :func:`no_effect` — an absence the paper reports (Table 2's "no dominance", |Δ| ≤ 10): *reproduces* if the
  interval lies inside ± the margin (equivalence: two one-sided tests, each at α = 0.025 with a 95% interval),
  *does not reproduce* if it lies wholly beyond it, else *inconclusive* — an interval that merely holds 0 is
  absence of evidence, not evidence of absence;
* :func:`effect` — an effect the paper shows (with or without a number): *reproduces* only if the interval
  excludes the smallest effect of interest stated beside the row (not merely 0), *does not reproduce* if it
  lies wholly below that size, else *inconclusive*; *direction only* when the effect is there but the paper's
  comparable number lies outside tolerance.

Inconclusive rows say, in their reason, about how many units a decisive run would need:
n · (half-width / distance to the margin)², from this run's spread. A mean's interval is a t interval whose
standard error is the jackknife over the independent units (:func:`interval`: Student's t when every item is its
own unit; Welch's for two groups); other statistics get a BCa bootstrap over units. Fewer than :data:`FEW` units
give no verdict. ``python benchmarks/interval_coverage.py`` (1,000 samples a cell) measured a nominal 95%
percentile bootstrap covering 81–83% at n = 5 and 90–91% at n = 10 (normal and mIoU-like data), the t interval
92–95% at n = 5 and 94–95% at n = 10, and 0/1 accuracies 84% at n = 5 and 96% at n = 10 either way; very skewed
data (lognormal) under-covers at every n up to 30 (84–87%). Pairs made from prompts and treated as independent
covered 83–84%; the same intervals resampling prompts covered 95%.
Numbers are mIoU-style percentages unless the unit says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

REPRODUCES, DIRECTION, INCONCLUSIVE, NOT, NOT_COMPARABLE, UNTESTABLE = (
    "reproduces", "direction only", "inconclusive", "does not reproduce", "not comparable",
    "cannot be tested on this model")
VERDICTS = (REPRODUCES, DIRECTION, INCONCLUSIVE, NOT, NOT_COMPARABLE, UNTESTABLE)
COLUMNS = ["section", "claim", "paper", "here", "low", "high", "n", "verdict", "rule", "margin", "alpha", "reason"]
LEVEL = 0.95  # every interval; each one-sided decision it makes is at α = (1 − LEVEL) / 2
ALPHA = round((1 - LEVEL) / 2, 6)
FEW = 10  # fewer independent units than this: no verdict (see the module docs for the coverage measured)


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


# -- margins: how close is "the paper's value", how small an effect is "none" -------------------------------
@dataclass(frozen=True)
class Margin:
    value: float
    why: str


MARGINS: dict[str, Margin] = {
    # tolerance of a value: |here − paper| within it counts as the paper's value
    "miou": Margin(5.0, "±5 mIoU points: Table 1's DAAM-0.3/0.4/0.5 rows differ by up to 5.3"),
    "tau": Margin(0.1, "±0.1: one step of the τ sweep"),
    "accuracy": Margin(10.0, "±10 points of accuracy"),
    "mos": Margin(0.5, "±0.5 on the 1–5 opinion scale (half a category)"),
    # Table 2: "dominance" is Δ > 10 points, so "no dominance" is |Δ| ≤ 10 (the paper's own threshold)
    "dominance": Margin(10.0, "|Δ| ≤ 10 points: the paper's own dominance threshold (Table 2)"),
    # smallest effects of interest
    "miou-gap": Margin(5.0, "a difference of at least 5 mIoU points"),
    "baseline": Margin(2.0, "DAAM ahead by at least 2 mIoU points (the paper's lead over STEGO: 7.1 Gen, 3.8 Unreal)"),
    "ablation": Margin(1.0, "\"helps\": the full sum at least 1 mIoU point above the part"),
    "accuracy-gap": Margin(5.0, "a difference of at least 5 points of accuracy"),
    "chroma": Margin(1.0, "a background chroma shift of at least 1 (×100) toward the adjective"),
    "hue": Margin(1.0, "a background hue shift of at least 1° toward the adjective"),
    "spread": Margin(1.0, "at least 1 point more of the map's mass outside the object"),
    "share": Margin(5.0, "±5 points of share"),
}


# -- intervals ---------------------------------------------------------------------------------------
class Estimate(NamedTuple):
    value: float
    low: float
    high: float
    n: int  # independent units (prompts, templates, images) behind the interval


def _units(values, units) -> tuple[np.ndarray, np.ndarray]:
    """The values (NaNs dropped) and, per value, the index of its independent unit."""
    x = np.asarray(values, dtype=float).ravel()
    u = np.arange(len(x)) if units is None else np.asarray(units, dtype=object).ravel()
    if len(u) != len(x):
        raise ValueError(f"units has {len(u)} entries for {len(x)} values: give one unit per value")
    keep = ~np.isnan(x)
    x, u = x[keep], u[keep]
    _, inverse = np.unique(np.asarray([str(v) for v in u], dtype=object), return_inverse=True)
    return x, inverse.astype(np.int64).ravel()


def _resampler(x: np.ndarray, unit: np.ndarray, stat: Callable | None, n_boot: int, rng):
    """``(estimate, bootstrap replicates, jackknife values)`` of ``stat`` over units; ``stat=None`` is the
    mean of every value (each unit weighted by its values), with its jackknife only (its interval is a t interval:
    no replicates), computed without a Python loop."""
    k = int(unit.max()) + 1 if len(unit) else 0
    if stat is None:
        sums, counts = np.bincount(unit, weights=x, minlength=k), np.bincount(unit, minlength=k).astype(float)
        jack = (sums.sum() - sums) / np.maximum(counts.sum() - counts, 1e-300)
        return float(sums.sum() / counts.sum()), np.empty(0), jack
    members = [x[unit == j] for j in range(k)]
    est = float(stat(x))
    boots = np.array([stat(np.concatenate([members[j] for j in rng.integers(0, k, k)])) for _ in range(n_boot)])
    jack = np.array([stat(np.concatenate(members[:j] + members[j + 1:])) for j in range(k)])
    return est, boots, jack


def _bca(est: float, boots: np.ndarray, jack: np.ndarray, level: float) -> tuple[float, float]:
    """BCa limits (Efron 1987) from the replicates and the jackknife values."""
    from scipy.stats import norm

    boots = boots[np.isfinite(boots)]
    if len(boots) == 0 or np.ptp(boots) == 0:
        return est, est
    B = len(boots)
    p = (np.sum(boots < est) + 0.5 * np.sum(boots == est)) / B
    z0 = norm.ppf(min(max(p, 1 / (B + 1)), B / (B + 1)))
    d = jack.mean() - jack
    den = 6 * (d ** 2).sum() ** 1.5
    a = float((d ** 3).sum() / den) if den > 0 else 0.0
    out = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        z = z0 + norm.ppf(q)
        out.append(float(np.quantile(boots, norm.cdf(z0 + z / (1 - a * z)))))
    return out[0], out[1]


def _jackknife_t(est: float, jack: np.ndarray) -> tuple[float, float]:
    """The jackknife variance of an estimate from its leave-one-unit-out values, ``(variance, units)``; for a plain
    mean it is exactly s²/n, so the interval below is Student's t."""
    k = len(jack)
    return float((k - 1) / k * ((jack - jack.mean()) ** 2).sum()), k


def interval(values: Sequence[float], units: Sequence | None = None, stat: Callable | None = None,
             n_boot: int = 2000, seed: int = 0, level: float = LEVEL,
             bounds: tuple[float, float] | None = None) -> Estimate:
    """``(estimate, low, high, n units)``: the mean of the values, NaNs dropped, with its t interval on k − 1
    degrees of freedom and the jackknife standard error over the independent ``units`` (one label per value: the
    prompt or template a pair or swap was made from; None: every value is its own unit, and this is Student's t).
    Any other ``stat`` (a median, an AUC) gets a BCa bootstrap interval resampling the units, seeded. ``bounds``:
    the values' range (e.g. ``(0, 100)`` for a share in %), which the interval is clipped to."""
    from scipy.stats import t as student

    x, unit = _units(values, units)
    k = int(unit.max()) + 1 if len(unit) else 0
    if k == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    if k == 1:
        return Estimate(float(x.mean() if stat is None else stat(x)), math.nan, math.nan, 1)
    est, boots, jack = _resampler(x, unit, stat, n_boot, np.random.default_rng(seed))
    if stat is not None:
        return Estimate(est, *_bca(est, boots, jack, level), k)
    var, _ = _jackknife_t(est, jack)
    half = float(student.ppf((1 + level) / 2, k - 1) * math.sqrt(var))
    low, high = est - half, est + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(est, low, high, k)


def interval_difference(a: Sequence[float], b: Sequence[float], units_a: Sequence | None = None,
                        units_b: Sequence | None = None, level: float = LEVEL) -> Estimate:
    """``mean(a) − mean(b)`` of two independent groups with Welch's t interval, each group's standard error the
    jackknife over its own units; n = both groups' units."""
    from scipy.stats import t as student

    (x, ux), (y, uy) = _units(a, units_a), _units(b, units_b)
    ka = int(ux.max()) + 1 if len(ux) else 0
    kb = int(uy.max()) + 1 if len(uy) else 0
    if ka == 0 or kb == 0:
        return Estimate(math.nan, math.nan, math.nan, ka + kb)
    if ka < 2 or kb < 2:
        return Estimate(float(x.mean() - y.mean()), math.nan, math.nan, ka + kb)
    (ea, _, ja), (eb, _, jb) = _resampler(x, ux, None, 0, None), _resampler(y, uy, None, 0, None)
    (va, _), (vb, _) = _jackknife_t(ea, ja), _jackknife_t(eb, jb)
    est, se2 = ea - eb, va + vb
    if se2 == 0:
        return Estimate(est, est, est, ka + kb)
    df = se2 ** 2 / (va ** 2 / (ka - 1) + vb ** 2 / (kb - 1))
    half = float(student.ppf((1 + level) / 2, df) * math.sqrt(se2))
    return Estimate(est, est - half, est + half, ka + kb)


# -- verdicts ----------------------------------------------------------------------------------------
class Verdict(NamedTuple):
    verdict: str
    reason: str
    rule: str = ""
    margin: float = math.nan
    alpha: float = math.nan


def needed_n(n: int, low: float, high: float, distance: float) -> str:
    """The reason's tail for an inconclusive row: about n·(half-width / distance)² units would decide it, where
    ``distance`` is how far the estimate lies from the margin the interval must clear (the width shrinks as
    1/√n)."""
    half = (high - low) / 2
    if not n or not distance > 1e-9 * max(1.0, abs(half)):
        return "the estimate lies on the margin: no run size is likely to decide it"
    return f"a decisive run would need about {math.ceil(n * (half / distance) ** 2):,} units (now {n})"


def _nan(*xs: float) -> bool:
    return any(map(math.isnan, xs))


def value(paper: float, low: float, high: float, tolerance: float, n: int = 0, comparable: bool = True,
          why: str = "") -> Verdict:
    """A number the paper reports: reproduces if the interval lies inside paper ± tolerance, does not if the
    two are disjoint, inconclusive otherwise; *not comparable* where the quantity is not the paper's."""
    rule = f"value ± {tolerance:g}" + (f" ({why})" if why else "")
    if not comparable:
        return Verdict(NOT_COMPARABLE, "this run's quantity is not the paper's (another model, other prompts and "
                       "ground truth): see the direction rows", "not comparable", tolerance)
    if _nan(paper, low, high):
        return Verdict(INCONCLUSIVE, "too few units for an interval", rule, tolerance, ALPHA)
    lo_band, hi_band = paper - tolerance, paper + tolerance
    if lo_band <= low and high <= hi_band:
        return Verdict(REPRODUCES, f"the 95% interval lies inside {paper:g} ± {tolerance:g} (equivalence, TOST)",
                       rule, tolerance, ALPHA)
    if high < lo_band or low > hi_band:
        return Verdict(NOT, f"the 95% interval [{low:.3g}, {high:.3g}] lies wholly {'below' if high < lo_band else 'above'}"
                       f" {paper:g} ± {tolerance:g}", rule, tolerance, ALPHA)
    here = (low + high) / 2
    return Verdict(INCONCLUSIVE, f"the 95% interval [{low:.3g}, {high:.3g}] straddles an edge of {paper:g} ± "
                   f"{tolerance:g}; " + needed_n(n, low, high, abs(tolerance - abs(here - paper))),
                   rule, tolerance, ALPHA)


def no_effect(low: float, high: float, margin: float, n: int = 0, why: str = "") -> Verdict:
    """An absence of effect the paper reports: reproduces if the interval lies inside ±margin (equivalence,
    TOST), does not if it lies wholly beyond it, inconclusive otherwise (an interval holding 0 is not enough)."""
    rule = f"equivalence |Δ| ≤ {margin:g}" + (f" ({why})" if why else "")
    if _nan(low, high):
        return Verdict(INCONCLUSIVE, "too few units for an interval", rule, margin, ALPHA)
    if -margin <= low and high <= margin:
        return Verdict(REPRODUCES, f"no effect: the 95% interval lies inside ±{margin:g} (TOST, each side "
                       f"α = {ALPHA:g})", rule, margin, ALPHA)
    if low > margin or high < -margin:
        return Verdict(NOT, f"an effect beyond ±{margin:g} where the paper has none (interval [{low:.3g}, {high:.3g}])",
                       rule, margin, ALPHA)
    here = (low + high) / 2
    return Verdict(INCONCLUSIVE, f"the 95% interval [{low:.3g}, {high:.3g}] crosses ±{margin:g}; "
                   + needed_n(n, low, high, abs(margin - abs(here))), rule, margin, ALPHA)


def effect(low: float, high: float, smallest: float, sign: int = 1, n: int = 0, paper: float = math.nan,
           tolerance: float = math.nan, why: str = "") -> Verdict:
    """An effect the paper shows in direction ``sign`` (> 0: the first is larger): reproduces only if the
    interval excludes the smallest effect of interest on that side, does not if it lies wholly short of it,
    inconclusive otherwise; *direction only* if the paper's comparable number lies outside tolerance."""
    rule = f"effect ≥ {smallest:g}" + (f" ({why})" if why else "")
    if _nan(low, high):
        return Verdict(INCONCLUSIVE, "too few units for an interval", rule, smallest, ALPHA)
    lo, hi = (low, high) if sign > 0 else (-high, -low)  # in the paper's direction
    if lo >= smallest:
        if not _nan(paper, tolerance):
            p = sign * paper
            if hi < p - tolerance or lo > p + tolerance:
                return Verdict(DIRECTION, f"the effect is there (95% interval beyond {smallest:g}) but its size is "
                               f"not the paper's {paper:+g} ± {tolerance:g}", rule, smallest, ALPHA)
        return Verdict(REPRODUCES, f"the 95% interval lies beyond the smallest effect of interest ({smallest:g}) on the "
                       "paper's side", rule, smallest, ALPHA)
    if hi < smallest:
        way = "goes the other way" if hi < 0 else "is smaller than the smallest of interest"
        return Verdict(NOT, f"the effect {way}: the 95% interval [{low:.3g}, {high:.3g}] lies wholly short of "
                       f"{sign * smallest:+g}", rule, smallest, ALPHA)
    here = (lo + hi) / 2
    return Verdict(INCONCLUSIVE, f"the 95% interval [{low:.3g}, {high:.3g}] holds {sign * smallest:+g}; "
                   + needed_n(n, lo, hi, abs(here - smallest)), rule, smallest, ALPHA)


def row(section: str, claim: str, paper: float, here: float = math.nan, low: float = math.nan,
        high: float = math.nan, n: int = 0, verdict: Verdict | tuple | None = None, untestable: str = "",
        groups: Sequence[int] | None = None) -> dict:
    """One row of a paper-vs-here table; ``untestable`` (a reason) marks a claim this model cannot test.
    Fewer than :data:`FEW` units get no verdict, whatever the rule would say — for a difference of two groups,
    fewer than that in either group (``groups``: each group's units)."""
    few = min(groups) if groups is not None and len(groups) else n
    if untestable:
        verdict = Verdict(UNTESTABLE, untestable)
    elif not n:
        verdict = Verdict(UNTESTABLE, "no items of this kind in this run")
    elif few < FEW and (verdict is None or verdict[0] != NOT_COMPARABLE):
        rule = Verdict(*verdict) if verdict is not None else Verdict("", "")
        where = "here" if few == n else "in the smaller group"
        verdict = Verdict(UNTESTABLE, f"only {few} unit(s) {where}, fewer than {FEW}: too few for a verdict "
                          f"(a 95% interval covers far less than 95% at this n)", rule.rule, rule.margin)
    if verdict is None:
        raise ValueError(f"row {claim!r}: say which rule decides it (value, no_effect, effect) or why it is untestable")
    v = Verdict(*verdict)
    return {"section": section, "claim": claim, "paper": paper, "here": here, "low": low, "high": high, "n": int(n),
            "verdict": v.verdict, "rule": v.rule, "margin": v.margin, "alpha": v.alpha, "reason": v.reason}


GATE = 60.0  # % of val prompts with both objects drawn right, below which a model is too weak to test (issue 25)
TOO_WEAK = "model too weak to test"


def gate(pv, quality: dict | None, bar: float = GATE):
    """Withhold every verdict of a paper-vs-here table from a model that draws too poorly to test the paper.

    ``quality`` is the model's own val-split quality record (``quality.json`` of
    ``python -m daamlib.shapeworld.quality --split val``, shipped as ``quality_val.json`` in the model's folder; see
    :func:`daamlib.studies.workbook.model_quality`), or None for a model without one, whose table is returned as it
    is. Where both objects are right in under ``bar`` % of val prompts, each row keeps its number, interval and n,
    its verdict becomes :data:`UNTESTABLE` and its reason says why and what the rule alone would have said. A model
    that drops or misdraws a noun in most images makes every map of that noun a map of something else.

    >>> pv = table([row("§3.1", "DAAM beats the whole image", float("nan"), 20.0, 15.0, 25.0, 50,
    ...                 effect(15.0, 25.0, 2.0, n=50))])
    >>> weak = {"split": "val", "prompts": 100, "both_correct_pct": 2.0, "both_correct_ci": [0.0, 4.8]}
    >>> gate(pv, weak).loc[0, "verdict"]
    'cannot be tested on this model'
    """
    if not quality:
        return pv
    pct = float(quality["both_correct_pct"])
    if pct >= bar:
        return pv
    lo, hi = quality.get("both_correct_ci", (math.nan, math.nan))
    why = (f"{TOO_WEAK}: both objects right in {pct:.1f}% ({lo:.1f}–{hi:.1f}) of {quality.get('prompts', '?')} "
           f"{quality.get('split', 'val')} prompts, under the {bar:g}% gate")
    out = pv.copy()
    for i, r in out.iterrows():
        alone = f"; the rule alone: {r['verdict']}" if r["verdict"] != UNTESTABLE else f"; {r['reason']}"
        out.at[i, "reason"] = why + alone
        out.at[i, "verdict"] = UNTESTABLE
    return out


def table(rows: Sequence[dict]):
    """The paper-vs-here DataFrame (columns :data:`COLUMNS`)."""
    import pandas as pd

    return pd.DataFrame(list(rows), columns=COLUMNS)


def count_verdicts(tables) -> dict[str, dict[str, int]]:
    """Verdicts per rule over several paper-vs-here tables: ``{rule family: {verdict: count}}``."""
    import pandas as pd

    t = pd.concat([pd.DataFrame(x) for x in tables], ignore_index=True)
    family = t["rule"].fillna("").str.extract(r"^(value|equivalence|effect|not comparable)", expand=False).fillna("none")
    return {f: g["verdict"].value_counts().to_dict() for f, g in t.groupby(family)}
