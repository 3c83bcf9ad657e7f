"""The paper's numbers and the verdicts of the paper-vs-here tables, on hand-made numbers."""

import math

import numpy as np
import pandas as pd
import pytest

from daamlib.studies import paper as P


def test_numbers_come_with_their_source():
    assert P.PAPER["table1.daam-0.4.coco-gen"].value == 60.7 and "Table 1, row 9" in P.PAPER["table1.daam-0.4.coco-gen"].source
    assert P.TABLE2["amod"] == (62.4, 77.6, 51.1, "dependent") and P.TABLE2["obj"][3] == "head"
    assert P.PAPER["5.1.accuracy.cohyponyms"].value == 52.0


def test_bootstrap_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(1).normal(10, 2, 200)
    m, lo, hi, n = P.bootstrap(x)
    assert (m, lo, hi, n) == P.bootstrap(x) and lo < 10 < hi and n == 200
    assert P.bootstrap([1.0, float("nan")])[3] == 1 and math.isnan(P.bootstrap([])[0])
    d, lo, hi, n = P.bootstrap_difference(x + 5, x)
    assert d == pytest.approx(5) and lo < 5 < hi and n == 400


@pytest.mark.parametrize("paper, interval, sign, verdict", [
    (10, (8, 12), 1, P.REPRODUCES), (10, (2, 4), 1, P.DIRECTION), (10, (-1, 4), 1, P.NOT), (10, (-4, -2), 1, P.NOT),
    (-10, (-12, -8), -1, P.REPRODUCES), (float("nan"), (1, 2), 1, P.REPRODUCES), (float("nan"), (-2, 1), 1, P.NOT),
])
def test_effect_verdicts(paper, interval, sign, verdict):
    lo, hi = interval
    assert P.verdict_effect(paper, (lo + hi) / 2, lo, hi, sign)[0] == verdict


def test_value_and_no_effect_verdicts_and_rows():
    assert P.verdict_value(60.7, 33, 30, 36)[0] == P.NOT and P.verdict_value(35, 33, 30, 36)[0] == P.REPRODUCES
    assert P.verdict_none(1.0, 0.5, -2, 3)[0] == P.REPRODUCES and P.verdict_none(1.0, 5, 2, 8)[0] == P.NOT
    t = P.table([P.row("§x", "a", 1.0, 1.0, 0.5, 1.5, 10), P.row("§y", "b", 2.0, untestable="no labels"),
                 P.row("§z", "c", 3.0, n=0), P.row("§w", "d", 1.0, 1.0, 0.9, 1.1, n=4)])
    assert list(t.columns) == P.COLUMNS
    assert list(t.verdict) == [P.REPRODUCES, P.UNTESTABLE, P.UNTESTABLE, P.UNTESTABLE]
    assert "fewer than 5" in t.reason[3]


def test_table2_rows_say_which_map_dominates():
    from daamlib.studies.syntax import paper_vs_here

    rng = np.random.default_rng(0)
    rows = [{"relation": "amod", "iod": 0.5 + 0.02 * rng.random(), "ioh": 0.7 + 0.02 * rng.random(), "iou": 0.4}
            for _ in range(30)]
    rows += [{"relation": "unrelated", "iod": 0.5 + 0.1 * rng.random(), "ioh": 0.5 + 0.1 * rng.random(), "iou": 0.3}
             for _ in range(30)]
    rows += [{"relation": "spacy:prep", "iod": 0.9, "ioh": 0.1, "iou": 0.1}] * 5  # not one of the ten: left out
    t = paper_vs_here(pd.DataFrame(rows)).set_index("claim")
    amod = t.loc["amod: mIoD − mIoH (dependent dominance in the paper)"]
    assert amod.verdict in (P.REPRODUCES, P.DIRECTION) and amod.here < 0
    assert t.loc["unrelated: mIoD − mIoH (no dominance in the paper)"].verdict == P.REPRODUCES
    assert t.loc["all head–dependent pairs: mIoD − mIoH (no dominance in the paper)"].n == 30
    assert t.loc["obj: mIoD − mIoH (head dominance in the paper)"].verdict == P.UNTESTABLE


def test_missing_noun_auc():
    from daamlib.studies.segmentation import auc, missing_table

    assert auc([3, 4], [1, 2]) == 1.0 and auc([1, 2], [3, 4]) == 0.0 and auc([1, 1], [1, 1]) == 0.5
    rows = pd.DataFrame({"drawn": [True] * 20 + [False] * 20, "mask share": list(np.linspace(0.1, 0.2, 20)) * 2,
                         "peak / mean": [5.0] * 20 + [2.0] * 20, "entropy": 0.5, "mass on objects": 0.3})
    t = missing_table(rows).set_index("statistic")
    assert t.loc["peak / mean", "auc"] == 1.0 and t.loc["mask share", "auc"] == pytest.approx(0.5)
    assert t.loc["mask share", "low"] < 0.5 < t.loc["mask share", "high"]
