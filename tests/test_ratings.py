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


HEADER = "item_id,word,occurrence,pos,rater,rating,label,timestamp"
GOOD_ROW = 'img0,circle,0,NOUN,r1,4,good,2026-12-07T10:00:00'


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text file"),
    (f"{HEADER}\nimg0,caf\xe9,0,NOUN,r1,4,good,x\n".encode("latin-1"), "not UTF-8.*CSV UTF-8"),
    (f"{HEADER}\n{GOOD_ROW}\nimg0,blue,0,ADJ,r1".encode(), "line 3: 5 fields where the header has 8.*cut off"),
    (b"id,score\n1,2\n", "lacks the columns"),
], ids=["empty", "binary", "latin-1", "truncated", "foreign"])
def test_a_damaged_ratings_file_is_named_and_never_rewritten(hm, tmp_path, content, message):
    path = tmp_path / "ratings.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"ratings file {path}.*{message}" if content else message):
        load_ratings(path)
    with pytest.raises(ValueError, match=message):
        RatingWidget(make_items(hm), path, rater="r1")
    assert path.read_bytes() == content  # untouched


def test_a_ratings_file_saved_again_by_a_spreadsheet_is_read(hm, tmp_path):
    """Excel's "CSV UTF-8": a byte-order mark, CRLF line ends, every field quoted."""
    path = tmp_path / "ratings.csv"
    quoted = ",".join(f'"{f}"' for f in GOOD_ROW.split(","))
    path.write_bytes(b"\xef\xbb\xbf" + f"{HEADER}\r\n{quoted}\r\n".encode())
    df = load_ratings(path)
    assert list(df["item_id"]) == ["img0"] and list(df["rating"]) == [4]
    ui = RatingWidget(make_items(hm), path, rater="r1")
    assert ui.position == 1 and ("r1", "img0", "circle", "0") in ui.rated()  # resumes after the rated item
    ui.buttons[2].click()
    assert list(load_ratings(path)["word"]) == ["circle", "blue"]
