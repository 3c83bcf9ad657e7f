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


def test_interval_is_students_t_and_resamples_units():
    from scipy import stats

    x = np.random.default_rng(1).normal(10, 2, 200)
    m, lo, hi, n = P.interval(x)
    half = stats.t.ppf(0.975, 199) * x.std(ddof=1) / np.sqrt(200)
    assert (m, n) == (pytest.approx(x.mean()), 200) and lo == pytest.approx(m - half) and hi == pytest.approx(m + half)
    assert P.interval([1.0, float("nan")])[3] == 1 and math.isnan(P.interval([])[0])
    # 10 prompts, 20 pairs each, the pairs of a prompt alike: the interval is as wide as 10 units make it
    prompt = np.repeat(np.arange(10), 20)
    y = np.repeat(np.random.default_rng(2).normal(0, 1, 10), 20) + np.random.default_rng(3).normal(0, 0.01, 200)
    pairs, prompts = P.interval(y), P.interval(y, prompt)
    assert prompts.n == 10 and (prompts.high - prompts.low) > 3 * (pairs.high - pairs.low)
    d = P.interval_difference(x + 5, x)
    assert d.value == pytest.approx(5) and d.low < 5 < d.high and d.n == 400
    # another statistic: a seeded BCa bootstrap over the units
    assert P.interval(x, stat=np.median) == P.interval(x, stat=np.median) and P.interval(x, stat=np.median).low < 10


@pytest.mark.parametrize("interval, verdict", [
    ((58, 62), P.REPRODUCES), ((30, 36), P.NOT), ((70, 80), P.NOT), ((50, 60), P.INCONCLUSIVE),
    ((20, 100), P.INCONCLUSIVE),  # holds the paper's value, but far too wide to say it is that value
])
def test_value_rule(interval, verdict):
    v = P.value(60.7, *interval, tolerance=5.0, n=40)
    assert v.verdict == verdict and v.rule.startswith("value ± 5") and v.alpha == 0.025
    if verdict == P.INCONCLUSIVE:
        assert "would need about" in v.reason


def test_value_rule_says_not_comparable_for_another_quantity():
    v = P.value(60.7, 58, 62, 5.0, n=40, comparable=False)
    assert v.verdict == P.NOT_COMPARABLE and "direction" in v.reason


@pytest.mark.parametrize("interval, verdict", [
    ((-4, 6), P.REPRODUCES), ((12, 20), P.NOT), ((-30, -11), P.NOT),
    ((-0.2, 19.6), P.INCONCLUSIVE),  # 03's nconj:and: holds 0, but crosses the 10-point margin
    ((-13.5, 15.6), P.INCONCLUSIVE),
])
def test_no_effect_rule_is_an_equivalence_test(interval, verdict):
    v = P.no_effect(*interval, margin=10.0, n=5)
    assert v.verdict == verdict and v.margin == 10.0 and "equivalence" in v.rule


@pytest.mark.parametrize("interval, smallest, sign, paper, verdict", [
    ((1.2, 2.4), 1, 1, float("nan"), P.REPRODUCES),     # beyond the smallest effect of interest
    ((0.03, 0.48), 1, 1, float("nan"), P.NOT),          # clearly above 0, clearly below 1: not the paper's effect
    ((-0.42, -0.08), 1, 1, float("nan"), P.NOT),        # the other way
    ((0.5, 1.5), 1, 1, float("nan"), P.INCONCLUSIVE),   # holds 1
    ((-17.0, -12.0), 10, -1, float("nan"), P.REPRODUCES),  # an effect the paper gives as negative
    ((-17.0, -3.9), 10, -1, float("nan"), P.INCONCLUSIVE),
    ((30.0, 35.0), 5, 1, 10.0, P.DIRECTION),            # there, but not the paper's size (a comparable number)
    ((8.0, 12.0), 5, 1, 10.0, P.REPRODUCES),
])
def test_effect_rule_needs_the_smallest_effect_of_interest(interval, smallest, sign, paper, verdict):
    v = P.effect(*interval, smallest=smallest, sign=sign, n=20, paper=paper, tolerance=5.0)
    assert v.verdict == verdict, v


def test_needed_n_grows_as_the_estimate_nears_the_margin():
    near, far = P.needed_n(20, 0, 4, 0.5), P.needed_n(20, 0, 4, 2.0)
    assert "would need about 20 units (now 20)" in far and "about 320 units" in near  # n·(half-width/distance)²
    assert "no run size" in P.needed_n(20, 0, 4, 0.0)


def test_rows_carry_their_rule_and_need_enough_units():
    t = P.table([P.row("§x", "a", 1.0, 1.0, 0.5, 1.5, 10, P.no_effect(0.5, 1.5, 10.0, 10)),
                 P.row("§y", "b", 2.0, untestable="no labels"), P.row("§z", "c", 3.0, n=0),
                 P.row("§w", "d", 1.0, 1.0, 0.9, 1.1, 9, P.no_effect(0.9, 1.1, 10.0, 9))])
    assert list(t.columns) == P.COLUMNS
    assert list(t.verdict) == [P.REPRODUCES, P.UNTESTABLE, P.UNTESTABLE, P.UNTESTABLE]
    assert "fewer than 10" in t.reason[3] and t.rule[0].startswith("equivalence") and t.alpha[0] == 0.025
    with pytest.raises(ValueError, match="which rule"):
        P.row("§v", "e", 1.0, 1.0, 0.5, 1.5, 20)
    pair = P.row("§d", "difference", 1.0, 5.0, 3.0, 7.0, 30, P.effect(3.0, 7.0, 1.0, 1, 30), groups=(24, 6))
    assert pair["verdict"] == P.UNTESTABLE and "smaller group" in pair["reason"]
    counts = P.count_verdicts([t])
    assert counts["equivalence"] == {P.REPRODUCES: 1, P.UNTESTABLE: 1}


def test_table2_rows_say_which_map_dominates():
    from daamlib.studies.syntax import paper_vs_here

    rng = np.random.default_rng(0)
    rows = [{"relation": "amod", "iod": 0.5 + 0.02 * rng.random(), "ioh": 0.7 + 0.02 * rng.random(), "iou": 0.4,
             "item": f"p{i % 15}"} for i in range(30)]
    rows += [{"relation": "unrelated", "iod": 0.5 + 0.1 * rng.random(), "ioh": 0.5 + 0.1 * rng.random(), "iou": 0.3,
              "item": f"p{i % 15}"} for i in range(30)]
    rows += [{"relation": "spacy:prep", "iod": 0.9, "ioh": 0.1, "iou": 0.1}] * 5  # not one of the ten: left out
    t = paper_vs_here(pd.DataFrame(rows)).set_index("claim")
    amod = t.loc["amod: mIoD − mIoH (dependent dominance in the paper); 30 pairs"]
    assert amod.verdict == P.REPRODUCES and amod.here < -10 and amod.n == 15  # 15 prompts, not 30 pairs
    assert t.loc["unrelated: mIoD − mIoH (no dominance in the paper); 30 pairs"].verdict == P.REPRODUCES
    assert t.loc["all head–dependent pairs: mIoD − mIoH (no dominance in the paper); 30 pairs"].n == 15
    assert t.loc["unrelated: mIoU"].verdict == P.NOT_COMPARABLE
    assert t.loc["obj: mIoD − mIoH (head dominance in the paper)"].verdict == P.UNTESTABLE


def test_missing_noun_auc():
    from daamlib.studies.segmentation import auc, missing_table

    assert auc([3, 4], [1, 2]) == 1.0 and auc([1, 2], [3, 4]) == 0.0 and auc([1, 1], [1, 1]) == 0.5
    rows = pd.DataFrame({"drawn": [True] * 20 + [False] * 20, "mask share": list(np.linspace(0.1, 0.2, 20)) * 2,
                         "peak / mean": [5.0] * 20 + [2.0] * 20, "entropy": 0.5, "mass on objects": 0.3})
    t = missing_table(rows).set_index("statistic")
    assert t.loc["peak / mean", "auc"] == 1.0 and t.loc["mask share", "auc"] == pytest.approx(0.5)
    assert t.loc["mask share", "low"] < 0.5 < t.loc["mask share", "high"]


def test_a_model_under_its_val_gate_gets_no_verdicts(tmp_path, monkeypatch):
    import json

    from daamlib.studies.workbook import model_quality

    effect = P.effect(15.0, 25.0, 2.0, n=50)
    pv = P.table([P.row("§3.1", "DAAM − whole image", math.nan, 20.0, 15.0, 25.0, 50, effect),
                  P.row("§5.1", "none here", math.nan, n=0)])
    weak = {"split": "val", "prompts": 100, "both_correct_pct": 12.0, "both_correct_ci": [5.6, 18.4]}
    gated = P.gate(pv, weak)
    assert (gated.verdict == P.UNTESTABLE).all() and gated.here.tolist()[:1] == [20.0] and gated.n.tolist() == [50, 0]
    assert gated.reason[0].startswith("model too weak to test: both objects right in 12.0% (5.6–18.4) of 100 val")
    assert gated.reason[0].endswith("the rule alone: reproduces")
    assert gated.reason[1].endswith("no items of this kind in this run")
    assert P.gate(pv, {**weak, "both_correct_pct": 60.0}).equals(pv) and P.gate(pv, None) is pv
    # read from the model's folder; a folder without the record, or a Hub id, is not gated
    (tmp_path / "quality_val.json").write_text(json.dumps(weak))
    assert model_quality(str(tmp_path))["both_correct_pct"] == 12.0
    assert model_quality(str(tmp_path / "elsewhere")) is None and model_quality("org/some-hub-model") is None
    monkeypatch.setenv("DAAM_SHAPEWORLD_MMDIT_MODEL", str(tmp_path))
    assert model_quality("shapeworld-mmdit") == weak
    # a loaded pipeline: its folder (name_or_path); one built in memory has none
    assert model_quality(type("Pipe", (), {"name_or_path": str(tmp_path)})()) == weak
    assert model_quality(object()) is None
