"""Study computations on a tiny pipeline with hand-made ground truth."""

import pytest
import torch

from conftest import run
from daamlib import studies, trace


@pytest.fixture(scope="module")
def hm(tiny):
    pipe = tiny("sd1")
    with trace(pipe) as tc:
        images = run(pipe, "a giraffe and a zebra", num_inference_steps=4)
    return tc.heat_maps(0, image=images[0])


def test_segmentation_rows_and_table1(hm):
    left = torch.zeros(64, 64, dtype=torch.bool)
    left[:, :32] = True
    rows = studies.segmentation_rows(hm, {1: left, 4: ~left}, item="x", split="gen", ablation_steps=(1, 2))
    table = [r for r in rows if r["kind"] == "table"]
    assert {r["word"] for r in rows} == {"giraffe", "zebra"}
    assert len(table) == 2 * (3 + 3)  # two nouns × (three τ + three baselines)
    whole = next(r for r in table if r["method"] == "whole image")
    assert whole["iou"] == pytest.approx(0.5)
    daam = next(r for r in table if r["method"] == "DAAM" and r["tau"] == 0.4 and r["word"] == "giraffe")
    assert daam["iou"] == pytest.approx(studies.iou(hm["giraffe"].binarize(0.4), left))
    abl = {(r["method"], r["n"]) for r in rows if r["kind"] == "ablation"}
    assert {("first n steps", 1), ("last n steps", 2), ("all", 4)} <= abl
    assert any(m.startswith("only ") for m, _ in abl)
    t1 = studies.table1(rows).set_index("method")
    assert t1.loc["whole image", "gen"] == pytest.approx(50.0) and t1.loc["DAAM-0.4", "n"] == 2


def test_word_at_refuses_a_missing_position(hm):
    assert studies.word_at(hm, 4).text == "zebra"
    with pytest.raises(IndexError, match="no word 9"):
        studies.word_at(hm, 9)
