"""Study computations on a tiny pipeline with hand-made ground truth."""

import pytest
import torch

from daamlib.stats import iou
from daamlib.studies import adjectives, cohyponyms, pos, segmentation, syntax
from daamlib.studies.data import read_label


@pytest.fixture(scope="module")
def hm(traced):
    return traced("a giraffe and a zebra", steps=4)


def test_segmentation_rows_and_table1(hm):
    left = torch.zeros(64, 64, dtype=torch.bool)
    left[:, :32] = True
    rows = segmentation.segmentation_rows(hm, {1: left, 4: ~left}, item="x", split="gen", ablation_steps=(1, 2),
                                          foreground=torch.ones(64, 64, dtype=torch.bool))
    table = [r for r in rows if r["kind"] == "table"]
    assert {r["word"] for r in rows} == {"giraffe", "zebra"}
    assert len(table) == 2 * (3 + 5)  # two nouns × (three τ + five baselines)
    other = next(r for r in table if r["method"] == "other noun's map" and r["word"] == "giraffe")
    assert other["iou"] == pytest.approx(iou(hm["zebra"].binarize(0.4), left))  # zebra's mask on giraffe's object
    fg = next(r for r in table if r["method"] == "text-free foreground" and r["word"] == "zebra")
    assert fg["iou"] == pytest.approx(0.5)
    whole = next(r for r in table if r["method"] == "whole image")
    assert whole["iou"] == pytest.approx(0.5)
    daam = next(r for r in table if r["method"] == "DAAM" and r["tau"] == 0.4 and r["word"] == "giraffe")
    assert daam["iou"] == pytest.approx(iou(hm["giraffe"].binarize(0.4), left))
    abl = {(r["method"], r["n"]) for r in rows if r["kind"] == "ablation"}
    assert {("first n steps", 1), ("last n steps", 2), ("all", 4)} <= abl
    assert any(m.startswith("only ") for m, _ in abl)
    R = len(hm.resolutions)
    assert {("coarsest n resolutions", n) for n in range(1, R + 1)} <= abl
    full = [r["iou"] for r in rows if r["kind"] == "ablation" and r["word"] == "zebra"
            and (r["method"], r["n"]) in {("coarsest n resolutions", R), ("finest n resolutions", R), ("all", 4)}]
    assert len(full) == 3 and max(full) - min(full) < 1e-6  # every resolution = the whole map
    t1 = segmentation.table1(rows).set_index("method")
    assert t1.loc["whole image", "gen"] == pytest.approx(50.0) and t1.loc["DAAM-0.4", "n"] == 2


def test_word_at_refuses_a_missing_position(hm):
    assert hm.word_at(4).word.text == "zebra" and torch.equal(hm.word_at(4).heat, hm["zebra"].heat)
    assert hm.has_word(4) and not hm.has_word(9)
    with pytest.raises(IndexError, match="no word 9"):
        hm.word_at(9)


def box(y0, y1, x0, x1):
    m = torch.zeros(64, 64, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_word_regions_follow_the_grammar():
    words = "two red circles left of a blue square on grass".split()
    roles = {0: "numeral", 1: "colour", 2: "noun", 6: "colour", 7: "noun", 9: "background"}
    circles, square = box(0, 20, 0, 20), box(40, 60, 40, 60)
    bg = ~(circles | square)
    r = pos.word_regions(words, roles, {2: circles, 7: square}, bg)
    assert torch.equal(r[0], circles) and torch.equal(r[1], circles) and torch.equal(r[6], square)
    assert torch.equal(r[3], circles | square) and torch.equal(r[4], circles | square)  # "left of"
    assert 5 not in r and 8 not in r  # "a", "on": no region
    assert torch.equal(r[9], bg)
    # a noun the annotator did not find takes its modifiers' regions with it
    r2 = pos.word_regions(words, roles, {2: circles, 7: torch.zeros(64, 64, dtype=torch.bool)}, bg)
    assert 6 not in r2 and 7 not in r2 and 3 not in r2


def test_attribution_and_dependency_rows(hm):
    from daamlib.studies.linguistics import dependencies

    regions = {1: box(0, 32, 0, 64), 4: box(32, 64, 0, 64)}
    rows = pos.attribution_rows(hm, regions, {1: "NOUN", 4: "NOUN"}, item="x")
    assert len(rows) == 2 and all(0 <= r["mass_on_region"] <= 1 for r in rows)
    assert rows[0]["mass_on_region"] + rows[0]["mass_on_other_region"] == pytest.approx(1.0, abs=1e-5)
    table = pos.pos_table(rows)
    assert table.iloc[0]["words"] == 2 and table.iloc[0]["uniform_map"] == pytest.approx(0.5)
    deps = syntax.dependency_rows(hm, dependencies(hm.alignment), unrelated_per_prompt=1, item="x")
    rels = [r["relation"] for r in deps]
    assert "det" in rels and rels.count("unrelated") == 1
    det = next(r for r in deps if r["relation"] == "det")
    assert set(det) >= {"iou", "iod", "ioh", "head", "dependent", "item"}


def test_adjective_swap_holds_the_seed_and_varies_the_rest(tiny):
    pipe = tiny("sd1")
    out = adjectives.adjective_swap(pipe, "a {adj} circle above a square", ["yellow", "red"], seed=1, steps=2)
    assert set(out["replayed"]) == set(out["plain"]) == {"yellow", "red"}
    assert out["replayed"]["yellow"] is out["seed"]
    assert (out["replayed"]["red"].image != out["plain"]["red"].image).any()  # the layout was held, so the image differs
    assert out["plain"]["red"].prompt == "a red circle above a square"


def test_multi_word_nouns_of_the_pair_template(traced):
    """"a hot dog and a cat": the first noun is words 1–2, the second word 5; the phrase map is the
    mean of all its tokens' maps, by both the cached and the per-word path."""
    from daamlib import kernel
    from daamlib.studies.cohyponyms import pair_prompt

    prompt = pair_prompt("hot dog", "cat")
    hm = traced(prompt, steps=2)
    pa, pb = cohyponyms.pair_positions("hot dog", "cat")
    assert [hm.words[i] for i in pa] == ["hot", "dog"] and [hm.words[i] for i in pb] == ["cat"]
    phrase = hm.phrase(pa)
    tokens = hm["hot"].word.tokens + hm["dog"].word.tokens
    assert phrase.word.text == "hot dog" and phrase.word.tokens == tokens
    assert torch.allclose(phrase.heat, kernel.word_map(hm.token_maps(), tokens), atol=1e-6)
    assert torch.allclose(hm.phrase(pb).heat, hm["cat"].heat, atol=1e-6)
    with pytest.raises(IndexError, match="not in"):
        hm.phrase([7])


def test_word_starting_at_follows_the_alignment(traced):
    hm = traced("hello, a red cat", steps=2)  # the comma is a word of its own
    assert adjectives.word_starting_at(hm, len("hello, a ")).text == "red"
    assert adjectives.word_starting_at(hm, len("hello, a ")).index == 3
    with pytest.raises(IndexError, match="starts at character 2"):
        adjectives.word_starting_at(hm, 2)


@pytest.mark.parametrize("cell, label", [(1, True), (0, False), (1.0, True), ("yes", True), ("No", False),
                                         ("correct", True), ("incorrect", False), (True, True), ("", None),
                                         (float("nan"), None), (None, None)])
def test_read_label(cell, label):
    assert read_label(cell) is label


def test_read_label_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="cannot read 'maybe'"):
        read_label("maybe")


def test_adjective_run_resumes_and_refuses_other_settings(tiny, tmp_path):
    """Rows are appended per template; a re-run generates only the gallery templates again and returns the
    same rows; other settings stop with a message instead of mixing two runs' rows."""
    from daamlib.studies.data import HumanTruth

    pipe, truth = tiny("sd1"), HumanTruth()
    templates = ["a {adj} circle above a square", "a {adj} triangle next to a star"]
    colours = {"yellow": [240, 215, 40], "red": [220, 40, 40]}
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        adjectives.AdjectiveRun(pipe, templates, colours, tmp_path, truth, mask_source="truth")
    run = adjectives.AdjectiveRun(pipe, templates, colours, tmp_path, truth, mask_source="daam", steps=2, gallery=1)
    df, gallery, _ = run.rows(progress=False)
    assert len(df) == 2 and set(df.adjective) == {"red", "yellow"} and list(gallery) == [templates[0]]
    # human masks cannot list every object: the strict background falls back to the named one, and says so
    assert (df.background_share == 1).all() and set(df.background_excludes) == {"the noun"}
    assert df.hue_shift_deg.equals(df.hue_shift_deg_named) and "background" in run.settings
    again, _, _ = adjectives.AdjectiveRun(pipe, templates, colours, tmp_path, truth, mask_source="daam", steps=2,
                                          gallery=0).rows(progress=False)
    assert again.equals(df)
    with pytest.raises(ValueError, match="holds rows of another run"):
        adjectives.AdjectiveRun(pipe, templates, colours, tmp_path, truth, mask_source="daam", steps=3).rows()
    with pytest.raises(ValueError, match="exactly one {adj}"):
        adjectives.check_inputs(["a red cat"], colours, "daam", truth)


def test_adjective_run_remembers_templates_without_an_object(tiny, tmp_path, monkeypatch):
    """A template whose seed image has no object to crop is written to skipped.txt; a re-run neither generates it
    again nor forgets it was skipped."""
    import torch

    class CirclesOnly:  # a ground truth that finds the noun only when it is a circle
        has_masks, has_labels = True, False

        def noun_masks(self, record, hm):
            mask = torch.zeros(hm.size, dtype=torch.bool)
            mask[:4, :4] = True
            return {2: mask} if "circle" in record["prompt"] else {}

    pipe = tiny("sd1")
    templates = ["a {adj} circle above a square", "a {adj} triangle next to a star"]
    colours = {"yellow": [240, 215, 40], "red": [220, 40, 40]}

    def make():
        return adjectives.AdjectiveRun(pipe, templates, colours, tmp_path, CirclesOnly(), steps=2, gallery=0)

    df, _, skipped = make().rows(progress=False)
    assert skipped == [templates[1]] and set(df.template) == {templates[0]} and len(df) == 1
    assert (tmp_path / "skipped.txt").read_text() == templates[1] + "\n"
    calls = []
    monkeypatch.setattr(adjectives, "adjective_swap", lambda *a, **k: calls.append(a))
    again, _, skipped_again = make().rows(progress=False)
    assert calls == [] and again.equals(df) and skipped_again == skipped


def test_background_shift_plot_says_why_its_spread_panel_is_empty():
    import pandas as pd

    rows = pd.DataFrame({"template": ["t"] * 2, "adjective": ["red", "blue"], "hue_shift_deg": [1.0, -2.0],
                         "chroma_toward": [0.01, 0.02], "adjective_spread": [float("nan")] * 2,
                         "noun_spread": [float("nan")] * 2})
    shown = adjectives.plot_background_shift(rows, {"red": [220, 40, 40], "blue": [40, 80, 220]})
    assert any("no swap has a spread" in t.get_text() for t in shown.ax_[2].texts)


def test_sources_check_files_before_anything_runs(tmp_path):
    from daamlib.studies import data

    with pytest.raises(ValueError, match="PROMPTS_CSV is required for tiny-sd1"):
        data.open_source("tiny-sd1").items("segmentation", 2)
    with pytest.raises(FileNotFoundError, match="no labels file"):
        data.open_source("tiny-sd1", labels_csv=tmp_path / "none.csv")
    (tmp_path / "labels.csv").write_text("id,correct\na,1\nb,maybe\n")
    with pytest.raises(ValueError, match="cannot read 'maybe'"):
        data.open_source("tiny-sd1", labels_csv=tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("id,correct\na,1\nb,no\n")
    (tmp_path / "prompts.csv").write_text("id,prompt,seed\na,a cat,0\n")
    src = data.open_source("shapeworld", prompts_csv=tmp_path / "prompts.csv", labels_csv=tmp_path / "labels.csv")
    assert isinstance(src, data.FileSource)  # files given win over the registered world
    assert src.items("pos", 5) == [{"id": "a", "prompt": "a cat", "seed": 0}]
    assert src.truth.correct({"id": "b"}, None, [1]) is False and src.truth.noun_masks({"id": "a"}, None) == {}
    assert not src.truth.has_masks and src.truth.has_labels
    assert isinstance(data.open_source("shapeworld").truth, data.GroundTruth)


def test_table2_figure_plots_the_judged_delta_with_the_papers():
    """Δ = mIoD − mIoH per row, with the interval the verdicts use, the paper's Δ beside it, and no interval
    (a †) under the verdicts' minimum of prompts; the model heads the title."""
    import numpy as np
    import pandas as pd

    from daamlib.studies import paper as P

    rng = np.random.default_rng(0)
    rows = [{"item": f"{rel}{k}", "relation": rel, "iod": 0.6 + shift + rng.normal(0, 0.05), "ioh": 0.6, "iou": 0.4}
            for rel, n, shift in (("amod", 12, -0.2), ("nsubj", 3, 0.1), ("unrelated", 10, 0.0)) for k in range(n)]
    shown = syntax.plot_table2(pd.DataFrame(rows), model="tiny-sd1")
    d = shown.deltas().set_index("row")
    assert d.loc["amod", "delta"] == pytest.approx(100 * (pd.DataFrame(rows).query("relation == 'amod'").iod - 0.6).mean())
    assert d.loc["amod", "high"] < 0 and d.loc["amod", "paper"] == pytest.approx(P.TABLE2["amod"][0] - P.TABLE2["amod"][1])
    assert np.isnan(d.loc["nsubj", "low"]) and d.loc["nsubj", "n"] == 3
    assert "tiny-sd1" in shown.figure_.get_suptitle() and "†" in shown.ax_.get_title()


def test_seen_vs_unseen_compares_held_out_prompts_with_trained_ones():
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(24)]
    df = pd.DataFrame({"a": words[:12] + words[:12], "b": words[12:] + words[12:],  # each pair drawn twice
                       "held_out": [True] * 4 + [False] * 8 + [True] * 4 + [False] * 8,
                       "iou": np.r_[0.2 + 0.01 * rng.random(4), 0.5 + 0.01 * rng.random(8)].tolist() * 2,
                       "correct": ([True, False, False, False] + [True] * 8) * 2, "cohyponyms": False})
    out = cohyponyms.seen_vs_unseen(df).query("group == 'all pairs'").set_index("measure")
    acc, iou = out.loc["both nouns right (%)"], out.loc["IoU of the two maps (×100)"]
    assert acc.unseen == pytest.approx(25.0) and acc.seen == pytest.approx(100.0)
    assert iou.unseen_minus_seen == pytest.approx(-30.0, abs=1) and iou.reading == "they differ"
    assert iou.unseen_n == 4 and iou.seen_n == 8  # noun pairs, not items: a pair's two seeds are one unit

