"""The rating widget (driven by clicking its buttons) and the Fig. 3 analysis of a ratings CSV."""

import pandas as pd
import pytest

from daamlib.studies.pos import RatingItem, RatingWidget, load_ratings, mean_opinion_by_pos


@pytest.fixture(scope="module")
def hm(traced):
    return traced("a red circle above a blue square")


def test_clicking_rates_saves_each_row_at_once_and_advances(hm, tmp_path):
    items = [RatingItem("img0", hm, "circle", pos="NOUN"), RatingItem("img0", hm, "blue", pos="ADJ"),
             RatingItem("img0", hm, "above", pos="ADP")]
    csv_path = tmp_path / "ratings.csv"
    ui = RatingWidget(items, csv_path, rater="r1")
    assert "<mark>circle</mark>" in ui.prompt.value and ui.image.value[:4] == b"\x89PNG"
    ui.buttons[3].click()  # "4 good"
    assert len(load_ratings(csv_path)) == 1  # written before the next item shows
    assert "<mark>blue</mark>" in ui.prompt.value
    ui.buttons[6].click()  # "word not visible"
    ui.buttons[0].click()  # "1 bad"
    assert ui.done and "All items rated" in ui.prompt.value
    df = load_ratings(csv_path)
    assert list(df["rating"].fillna(0).astype(int)) == [4, 0, 1]
    assert list(df["label"]) == ["good", "word not visible", "bad"]
    with pytest.raises(ValueError, match="rater"):
        RatingWidget(items, csv_path, rater=" ")


def test_mos_by_pos_uses_median_of_raters_and_drops_unusable_pairs(tmp_path):
    rows = []
    for rater, scores in {"a": (5, 3, 2), "b": (4, 3, 1), "c": (4, 4, 1)}.items():
        for (item, word, pos), s in zip([("i1", "cat", "NOUN"), ("i2", "red", "ADJ"), ("i3", "two", "NUM")], scores):
            rows.append({"item_id": item, "word": word, "occurrence": 0, "pos": pos, "rater": rater,
                         "rating": s, "label": ""})
    rows.append({"item_id": "i4", "word": "dog", "occurrence": 0, "pos": "NOUN", "rater": "a", "rating": 5, "label": "good"})
    rows.append({"item_id": "i4", "word": "dog", "occurrence": 0, "pos": "NOUN", "rater": "b", "rating": None,
                 "label": "image too poor"})
    path = tmp_path / "r.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = mean_opinion_by_pos(load_ratings(path)).set_index("pos")
    assert table.loc["NOUN", "MOS"] == 4 and table.loc["NOUN", "pairs"] == 1  # i4 dropped; median(5, 4, 4)
    assert table.loc["ADJ", "MOS"] == 3 and table.loc["NUM", "MOS"] == 1
    assert table.loc["NUM", "fair_to_excellent"] == 0 and table.loc["ADJ", "fair_to_excellent"] == 1


def test_bad_ratings_csv_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame([{"item_id": "i", "word": "w", "pos": "X", "rater": "r", "rating": 9, "label": ""}]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="outside 1–5"):
        load_ratings(path)


def make_items(hm):
    return [RatingItem("img0", hm, "circle", pos="NOUN"), RatingItem("img0", hm, "blue", pos="ADJ"),
            RatingItem("img0", hm, "above", pos="ADP")]


def test_the_csv_is_the_state_resume_undo_and_rerating(hm, tmp_path):
    csv_path = tmp_path / "ratings.csv"
    ui = RatingWidget(make_items(hm), csv_path, rater="ann")
    ui.buttons[4].click()  # circle: 5
    assert "1 of 3 rated by ann" in ui.progress.value
    again = RatingWidget(make_items(hm), csv_path, rater="ann")  # e.g. after a kernel restart
    assert again.position == 1 and "<mark>blue</mark>" in again.prompt.value
    other = RatingWidget(make_items(hm), csv_path, rater="bob")  # another rater starts at item 1
    assert other.position == 0
    again.buttons[1].click()  # blue: 2
    again.undo()  # takes blue's 2 back and shows blue again
    assert again.position == 1 and len(load_ratings(csv_path)) == 1
    again.undo()  # then circle's 5
    assert again.position == 0 and not csv_path.read_text().strip().splitlines()[1:]
    again.rate(3)  # circle: 3
    again.position = 0
    again.rate(4)  # re-rating circle replaces the 3
    df = load_ratings(csv_path)
    assert len(df) == 1 and df.iloc[0]["rating"] == 4 and df.iloc[0]["rater"] == "ann"


def test_keyboard_shortcuts_rate_mark_unusable_and_undo(hm, tmp_path):
    csv_path = tmp_path / "ratings.csv"
    ui = RatingWidget(make_items(hm), csv_path, rater="ann")
    ui.keys.value = "4"  # what typing "4" into the keys box does
    ui.keys.value = "n"
    assert ui.keys.value == "" and ui.position == 2
    assert list(load_ratings(csv_path)["label"]) == ["good", "word not visible"]
    ui.keys.value = "u"
    assert ui.position == 1 and len(load_ratings(csv_path)) == 1
    ui.keys.value = "x"  # not a shortcut: nothing happens
    assert ui.position == 1


def test_one_person_one_vote_per_pair(tmp_path):
    """A rater's duplicate rows (a CSV edited or merged by hand) count once: their latest."""
    rows = [{"item_id": "i1", "word": "cat", "occurrence": 0, "pos": "NOUN", "rater": "a", "rating": 4, "label": ""},
            {"item_id": "i1", "word": "cat", "occurrence": 0, "pos": "NOUN", "rater": "a", "rating": 5, "label": ""},
            {"item_id": "i1", "word": "cat", "occurrence": 0, "pos": "NOUN", "rater": "b", "rating": 2, "label": ""}]
    path = tmp_path / "r.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    t = mean_opinion_by_pos(load_ratings(path)).set_index("pos")
    assert t.loc["NOUN", "MOS"] == 3.5 and t.loc["NOUN", "raters_per_pair"] == 2  # median(5, 2), not of (4, 5, 2)
