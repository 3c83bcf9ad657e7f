"""Overlap statistics on hand-made masks."""

import math

import numpy as np
import pytest
import torch

from daamlib import stats
from daamlib.studies import cohyponyms, syntax


def masks():
    head = torch.zeros(4, 4, dtype=torch.bool)
    head[:2, :] = True  # 8 pixels
    dep = torch.zeros(4, 4, dtype=torch.bool)
    dep[1, :2] = True  # 2 pixels, both inside head
    return head, dep


def test_iou_iod_ioh_on_hand_made_masks():
    head, dep = masks()
    assert stats.iou(head, dep) == pytest.approx(2 / 8)
    assert stats.iod(head, dep) == pytest.approx(1.0)  # the dependent lies inside the head
    assert stats.ioh(head, dep) == pytest.approx(2 / 8)
    assert stats.intersection(head, dep) == 2


def test_accepts_numpy_and_checks_shapes():
    head, dep = masks()
    assert stats.iou(head.numpy(), dep.numpy()) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="differ in shape"):
        stats.iou(head, dep[:2])


def test_empty_denominators_are_nan_not_errors():
    empty = torch.zeros(3, 3, dtype=torch.bool)
    assert math.isnan(stats.iou(empty, empty))
    assert math.isnan(stats.iod(torch.ones(3, 3), empty))
    assert math.isnan(stats.ioh(empty, torch.ones(3, 3)))


def test_mean_ci_matches_t_interval_and_skips_nan():
    from scipy import stats as st

    x = np.array([0.2, 0.4, 0.5, 0.9, math.nan])
    ci = stats.mean_ci(x)
    lo, hi = st.t.interval(0.95, 3, loc=np.mean(x[:4]), scale=st.sem(x[:4]))
    assert ci.n == 4
    assert ci.mean == pytest.approx(0.5)
    assert (ci.low, ci.high) == pytest.approx((lo, hi))
    assert stats.mean_ci([]).n == 0


def test_relation_table_marks_dominance_only_when_large_and_significant():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(60):  # "amod": the head contains the dependent -> IoD high, IoH low
        rows.append({"relation": "amod", "iod": rng.uniform(0.8, 1.0), "ioh": rng.uniform(0.3, 0.5), "iou": 0.4})
        rows.append({"relation": "det", "iod": (x := rng.uniform(0.4, 0.6)), "ioh": x + rng.normal(0, 0.01), "iou": 0.3})
    table = syntax.relation_table(rows).set_index("relation")
    assert table.loc["amod", "dominant"] == "head" and table.loc["amod", "p"] < 1e-6
    assert table.loc["amod", "delta"] == pytest.approx(table.loc["amod", "mIoD"] - table.loc["amod", "mIoH"])
    assert table.loc["amod", "mIoD"] == pytest.approx(90, abs=3)
    assert table.loc["det", "dominant"] == "" and table.loc["det", "n"] == 60


def test_fisher_and_overlap_bins():
    odds, p = cohyponyms.fisher_exact(61, 100, 52, 100)
    assert odds > 1 and 0 < p < 1
    assert cohyponyms.fisher_exact(50, 50, 0, 50)[1] < 1e-20
    assert [cohyponyms.overlap_bin(v) for v in (0.1, 0.4, 0.5, 0.6, 0.9)] == ["low", "low", "mid", "high", "high"]
    assert cohyponyms.overlap_bin(float("nan")) is None  # not "mid"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_maps_on_the_gpu_meet_masks_on_the_cpu():
    from daamlib.stats import mass_on_region

    a = torch.zeros(4, 4, dtype=torch.bool, device="cuda")
    a[:2] = True
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[1:3] = True
    assert stats.iou(a, b) == pytest.approx(1 / 3)
    assert stats.iod(a, b) == pytest.approx(0.5) and stats.ioh(a, b) == pytest.approx(0.5)
    assert mass_on_region(a.float(), b) == pytest.approx(0.5)
