"""§3.2, Fig. 3 and Fig. 4: which parts of speech DAAM attributes well.

Two measures. People's ratings (the paper's): a rating widget that saves to CSV, and Fig. 3 from any
ratings CSV. And, where the ground truth says which region each word refers to (the embedded
world), an automatic measure, labelled as such: the share of a word's map mass on its own region,
against another word's region and a uniform map.

>>> items = rating_items(maps, tags, per_pos=40, seed=0)                  # doctest: +SKIP
>>> RatingWidget(items, "ratings.csv", rater="ann").widget               # doctest: +SKIP
>>> plot_ratings(mean_opinion_by_pos(load_ratings("ratings.csv")))       # doctest: +SKIP

The ratings CSV

The CSV has one row per judgement::

    item_id,word,occurrence,pos,rater,rating,label,timestamp

``rating`` is the paper's five-point scale, 1 (bad) … 5 (excellent), empty when the rater chose
``image too poor`` or ``word not visible`` (then ``label`` says which). Word–image pairs any
rater called unusable are dropped, as the paper dropped pairs deemed too abstract; each
remaining pair scores the median of its raters (paper: three raters, median).
"""

from __future__ import annotations

import csv
import html
import io
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..heatmap import SCALE_NOTE, HeatMaps, overlay_png
from ..stats import as_mask, mass_on_region, mean_ci

SCALE = {1: "bad", 2: "poor", 3: "fair", 4: "good", 5: "excellent"}
UNUSABLE = ("image too poor", "word not visible")
FIELDS = ("item_id", "word", "occurrence", "pos", "rater", "rating", "label", "timestamp")


@dataclass
class RatingItem:
    """One word of one generated image to rate."""

    item_id: str
    heat_maps: object  # daamlib.HeatMaps
    word: str
    occurrence: int = 0
    pos: str = ""


KEYS = {**{str(k): k for k in SCALE}, "p": UNUSABLE[0], "n": UNUSABLE[1]}  # keyboard shortcuts; "u" undoes


def _key(row) -> tuple[str, str, str, str]:
    """What one judgement is about, as read back from the CSV: (rater, item, word, occurrence)."""
    return (str(row["rater"]), str(row["item_id"]), str(row["word"]), str(row["occurrence"]))


class RatingWidget:
    """ipywidgets UI: the image, the word's map over it, the prompt with the word highlighted, the paper's
    five-point scale and two ways out, undo, progress, and keyboard shortcuts (type into the ``keys`` box:
    ``1``–``5``, ``p`` image too poor, ``n`` word not visible, ``u`` undo).

    The CSV is the state, written at every click (nothing is lost if the kernel dies): one row per
    (rater, item, word, occurrence), so re-rating replaces the earlier row and the rater's last row is what
    undo removes. A widget made again for the same rater resumes at their first unrated item. Several
    raters may share one CSV: every write re-reads it under a lock and replaces it atomically.
    ``widget`` is what to display.
    """

    def __init__(self, items: Sequence[RatingItem], csv_path: str | Path, rater: str):
        import ipywidgets as w

        if not isinstance(rater, str) or not rater.strip():
            raise ValueError("give the rater a name or id (rater='...'), so ratings from several people stay apart")
        self.items, self.csv_path, self.rater = list(items), Path(csv_path), rater.strip()
        if self.csv_path.exists():
            load_ratings(self.csv_path)  # a damaged or foreign CSV fails now, before anyone rates
        self.prompt = w.HTML()
        self.image = w.Image(format="png", width=640)  # the PNG's own size, not stretched to the page
        self.progress = w.HTML()
        self.buttons = [w.Button(description=f"{k} {v}") for k, v in SCALE.items()]
        self.buttons += [w.Button(description=label, button_style="warning") for label in UNUSABLE]
        for b, value in zip(self.buttons, list(SCALE) + list(UNUSABLE)):
            b.on_click(lambda _b, value=value: self.rate(value))
        self.undo_button = w.Button(description="undo last", icon="undo")
        self.undo_button.on_click(lambda _b: self.undo())
        self.keys = w.Text(placeholder="keys: 1–5 · p image too poor · n word not visible · u undo",
                           description="keys", continuous_update=True, layout=w.Layout(width="420px"))
        self.keys.observe(self._on_key, names="value")
        self.widget = w.VBox([self.prompt, self.image, w.HBox(self.buttons[:5]),
                              w.HBox(self.buttons[5:] + [self.undo_button]), self.keys, self.progress])
        self.position = self._first_unrated()
        self._show()

    # -- the CSV ------------------------------------------------------------------------------
    def _item_key(self, item: RatingItem) -> tuple[str, str, str, str]:
        return (self.rater, str(item.item_id), str(item.word), str(item.occurrence))

    def _read(self) -> list[dict]:
        if not self.csv_path.exists():
            return []
        return list(csv.DictReader(io.StringIO(ratings_text(self.csv_path), newline="")))

    def _update(self, change) -> list[dict]:
        """Re-read the CSV under a lock, apply ``change(rows) -> rows``, and replace the file atomically."""
        import os
        import uuid

        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.csv_path.with_name(self.csv_path.name + ".lock"), "w") as lock:
            try:
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_EX)
            except ImportError:  # no flock (Windows): one rater per CSV
                pass
            rows = change(self._read())
            tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp-{uuid.uuid4().hex[:8]}")
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, FIELDS)
                writer.writeheader()
                writer.writerows({k: r.get(k, "") for k in FIELDS} for r in rows)
            os.replace(tmp, self.csv_path)
        return rows

    def rated(self) -> set[tuple[str, str, str, str]]:
        """The (rater, item, word, occurrence) keys this rater has rated, read from the CSV."""
        return {_key(r) for r in self._read() if str(r["rater"]) == self.rater}

    def _first_unrated(self) -> int:
        done = self.rated()
        return next((i for i, it in enumerate(self.items) if self._item_key(it) not in done), len(self.items))

    # -- actions ------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.position >= len(self.items)

    def rate(self, value: int | str) -> None:
        """Record a rating (1–5) or an unusable label for the current item (replacing this rater's earlier
        one), then show the next item this rater has not rated."""
        if self.done:
            return
        item = self.items[self.position]
        rating, label = (value, SCALE[value]) if isinstance(value, int) else ("", value)
        row = {"item_id": item.item_id, "word": item.word, "occurrence": item.occurrence, "pos": item.pos,
               "rater": self.rater, "rating": rating, "label": label, "timestamp": f"{time.time():.0f}"}
        key = self._item_key(item)
        self._update(lambda rows: [r for r in rows if _key(r) != key] + [row])  # the last row is the latest
        self.position = self._first_unrated()
        self._show()

    def undo(self) -> None:
        """Remove this rater's latest rating and show that item again (nothing to undo: nothing happens)."""
        removed: list[dict] = []

        def drop_last(rows):
            mine = [i for i, r in enumerate(rows) if str(r["rater"]) == self.rater]
            if mine:
                removed.append(rows.pop(mine[-1]))
            return rows

        self._update(drop_last)
        if removed:
            key = _key(removed[0])
            self.position = next((i for i, it in enumerate(self.items) if self._item_key(it) == key), self.position)
        self._show()

    def _on_key(self, change) -> None:
        text = change["new"]
        if not text:
            return
        self.keys.value = ""  # one key, one action
        key = text[-1].lower()
        if key == "u":
            self.undo()
        elif key in KEYS:
            self.rate(KEYS[key])

    def _show(self) -> None:
        n_done = len(self.rated() & {self._item_key(it) for it in self.items})
        if self.done:
            self.prompt.value = "<b>All items rated. Thank you.</b>"
            self.progress.value = (f"{n_done} of {len(self.items)} rated by {html.escape(self.rater)}; "
                                   f"saved to {html.escape(str(self.csv_path))}")
            return
        item = self.items[self.position]
        wm = item.heat_maps.word(item.word, item.occurrence)
        p = item.heat_maps.prompt
        a, b = wm.word.span
        self.prompt.value = (f"How well does the highlighted area show <b>{html.escape(item.word)}</b>?<br>"
                             f"{html.escape(p[:a])}<mark>{html.escape(p[a:b])}</mark>{html.escape(p[b:])}")
        image = item.heat_maps.image
        self.image.value = overlay_png([(image, None), (image, wm.normalized())], size=(6.4, 3.2), colorbar=True)
        self.progress.value = (f"item {self.position + 1} of {len(self.items)} · {n_done} of {len(self.items)} "
                               f"rated by {html.escape(self.rater)}")


class RatingsFileError(ValueError):
    """A ratings CSV that cannot be read as one: empty, not text, not UTF-8, without the columns, or cut off."""


REQUIRED_COLUMNS = ("item_id", "word", "pos", "rater", "rating", "label")


def ratings_text(path: str | Path) -> str:
    """The text of the ratings CSV at ``path``, checked before anything reads or rewrites it: UTF-8 (a byte-order
    mark and CRLF line ends, as spreadsheets save it, are fine), the columns present, every row whole. Anything else
    is a :class:`RatingsFileError` naming the file and what to do; nothing is rewritten."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RatingsFileError(f"cannot read the ratings file {path}: {e.strerror or e}") from None
    fix = "restore it from a backup, or move it aside to start a new ratings file"
    if not data.strip():
        raise RatingsFileError(f"the ratings file {path} is empty ({len(data)} bytes): {fix}")
    if b"\x00" in data:
        raise RatingsFileError(f"the ratings file {path} is not a text file (NUL bytes at byte {data.index(0)}): {fix}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RatingsFileError(f"the ratings file {path} is not UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                               "a spreadsheet saved it in another encoding: save it again as 'CSV UTF-8'") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise RatingsFileError(f"the ratings file {path} lacks the columns {missing} (its header: {header[:8]}); "
                                   f"expected {', '.join(FIELDS)}")
        for row in reader:
            if row and len(row) != len(header):
                raise RatingsFileError(
                    f"the ratings file {path}, line {reader.line_num}: {len(row)} fields where the header has "
                    f"{len(header)}; the row was cut off (a crash or a full disk while saving) or edited: fix or remove "
                    "that line (nothing was rewritten)")
    except csv.Error as e:
        raise RatingsFileError(f"the ratings file {path}, line {reader.line_num}: not valid CSV ({e})") from None
    return text


def load_ratings(path: str | Path):
    """Read a ratings CSV, checking its file (:func:`ratings_text`), columns and values."""
    import pandas as pd

    text = ratings_text(path)
    df = pd.read_csv(io.StringIO(text), dtype={"item_id": str, "word": str, "pos": str, "rater": str, "label": str})
    rating = pd.to_numeric(df["rating"], errors="coerce")
    bad = (df["rating"].notna() & rating.isna()) | (rating.notna() & ~rating.isin(list(SCALE)))
    if bad.any():
        raise RatingsFileError(f"the ratings file {path} has ratings outside 1–5 in rows {list(df.index[bad][:5])}")
    df["rating"] = rating
    return df


def mean_opinion_by_pos(ratings):
    """Fig. 3: per part of speech, the mean opinion score with a 95% CI and the share rated fair–excellent,
    counting raters, not rows (see :func:`rating_pairs`)."""
    return summarize_pairs(rating_pairs(ratings))


def rating_pairs(ratings):
    """One row per usable word–image pair: the median of its raters' ratings (``rating``) and how many raters
    (``raters``). One judgement per rater and pair counts (a rater's latest row, should a CSV hold several);
    pairs any rater called unusable are dropped."""
    df = ratings.copy()
    if "occurrence" not in df.columns:
        df["occurrence"] = 0
    key = ["item_id", "word", "occurrence"]
    df = df.drop_duplicates(key + ["rater"], keep="last")  # one person, one vote per pair
    unusable = df[df["label"].isin(UNUSABLE)].groupby(key).size().index
    usable = df[~df.set_index(key).index.isin(unusable) & df["rating"].notna()]
    return usable.groupby(key + ["pos"], as_index=False).agg(rating=("rating", "median"), raters=("rater", "nunique"))


def summarize_pairs(pairs):
    """Fig. 3's table from :func:`rating_pairs`: per part of speech, pairs, the mean raters per pair, MOS with
    its 95% CI, and the share of pairs rated fair to excellent."""
    import pandas as pd

    rows = []
    for pos, g in pairs.groupby("pos"):
        ci = mean_ci(g["rating"])
        rows.append({"pos": pos, "pairs": len(g), "raters_per_pair": float(g["raters"].mean()), "MOS": ci.mean,
                     "ci_low": ci.low, "ci_high": ci.high, "fair_to_excellent": float((g["rating"] >= 3).mean())})
    return pd.DataFrame(rows, columns=["pos", "pairs", "raters_per_pair", "MOS", "ci_low", "ci_high", "fair_to_excellent"])


FUNCTION_WORDS = {"a", "an", "the"}


def word_regions(words: list[str], roles: dict[int, str], noun_masks: dict[int, object],
                 background_mask=None) -> dict[int, torch.Tensor]:
    """The image region each word refers to, from the objects found for its nouns.

    ``roles``: word position → ``noun`` / ``colour`` / ``size`` / ``pattern`` / ``numeral`` /
    ``background``. A noun → its object(s); a modifier or numeral → the object(s) of the next
    noun; a background word → the background; a relation word between two nouns ("above",
    "left of", "and", …) → both nouns' objects. Words whose region is empty are left out.
    """
    nouns = sorted(i for i, r in roles.items() if r == "noun")
    masks = {i: as_mask(m) for i, m in noun_masks.items()}
    out: dict[int, torch.Tensor] = {}
    for i, role in roles.items():
        if role == "noun":
            m = masks.get(i)
        elif role == "background":
            m = None if background_mask is None else as_mask(background_mask)
        else:
            m = masks.get(next((n for n in nouns if n > i), -1))
        if m is not None and m.any():
            out[i] = m
    for a, b in zip(nouns, nouns[1:]):
        if a in out and b in out:
            for i in range(a + 1, b):
                if i not in roles and words[i].lower() not in FUNCTION_WORDS:
                    out[i] = out[a] | out[b]
    return out


def attribution_rows(hm: HeatMaps, regions: dict[int, torch.Tensor], pos: dict[int, str], seed: int = 0,
                     **info) -> list[dict]:
    """For each word with a region: the share of its map's mass on its own region, and on another
    word's region of the same image chosen at random (the baseline). ``pos``: position → POS tag."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, region in regions.items():
        if not hm.has_word(i):
            continue
        wm = hm.word_at(i)
        others = [m for j, m in regions.items() if j != i and not torch.equal(m, region)]
        heat = wm.heat
        other = others[rng.integers(len(others))] if others else None
        rows.append({**info, "word": wm.word.text, "word_index": i, "pos": pos.get(i, "X"),
                     "mass_on_region": mass_on_region(heat, region),
                     "mass_on_other_region": mass_on_region(heat, other) if other is not None else float("nan"),
                     "region_share": float(region.float().mean()),
                     "other_region_share": float(other.float().mean()) if other is not None else float("nan")})
    return rows


def pos_table(rows):
    """Per part of speech: words, mean share of map mass on the word's own region (95% CI), on a random
    other region, and the share of the image the regions cover (what a uniform map would score).

    Regions differ in size (a background is most of the image, a colour's object a tenth of it), so
    the fair comparison is the *lift*: mass on a region ÷ the region's share of the image (1 = no
    better than a uniform map), for the own region (``lift_own``) and the random one (``lift_random``),
    averaged over words.
    """
    import pandas as pd


    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame()
    out = []
    for pos, g in df.groupby("pos"):
        own, other = mean_ci(g["mass_on_region"]), mean_ci(g["mass_on_other_region"])
        out.append({"pos": pos, "words": len(g), "mass_on_own_region": own.mean, "ci_low": own.low,
                    "ci_high": own.high, "mass_on_random_region": other.mean,
                    "uniform_map": float(g["region_share"].mean()),
                    "lift_own": float((g["mass_on_region"] / g["region_share"]).mean()),
                    "lift_random": float((g["mass_on_other_region"] / g["other_region_share"]).mean())})
    return pd.DataFrame(out).sort_values("words", ascending=False)



def tag_maps(maps: Mapping[str, HeatMaps], nlp=None) -> dict[str, dict[int, str]]:
    """spaCy's universal POS tag of every word of every item: ``{item id: {word position: tag}}``."""
    from .linguistics import tag_words

    return {k: {w.index: pos for w, pos in tag_words(hm.alignment, nlp)} for k, hm in maps.items()}


def rating_items(maps: Mapping[str, HeatMaps], tags: Mapping[str, Mapping[int, str]], per_pos: int,
                 seed: int = 0, skip=("DET", "PUNCT", "X")) -> list[RatingItem]:
    """Up to ``per_pos`` words per part of speech to rate, drawn at random (function words and punctuation
    left out), grouped by part of speech in the order each first appears in the draw."""
    rng = np.random.default_rng(seed)
    pool = [(k, w, tags[k].get(w.index, "X")) for k, hm in maps.items() for w in hm.alignment.words
            if not w.truncated and tags[k].get(w.index) not in skip]
    by_pos: dict[str, list[RatingItem]] = {}
    for k, w, pos in (pool[i] for i in rng.permutation(len(pool))):
        by_pos.setdefault(pos, [])
        if len(by_pos[pos]) < per_pos:
            by_pos[pos].append(RatingItem(k, maps[k], w.text, w.occurrence, pos))
    return [it for group in by_pos.values() for it in group]


def automatic_rows(records: Sequence[Mapping], maps: Mapping[str, HeatMaps], tags, truth, seed: int = 0):
    """:func:`attribution_rows` of every item as one DataFrame (one row per word with a region), with the
    regions ``truth`` gives; empty without a ground truth that knows them."""
    import pandas as pd

    rows = []
    for r in records:
        hm = maps[r["id"]]
        rows += attribution_rows(hm, truth.regions(r, hm), tags[r["id"]], seed=seed, item=r["id"])
    return pd.DataFrame(rows)


def _by_count(values) -> list:
    """Categories, most frequent first (ties: by name)."""
    import pandas as pd

    counts = pd.Series(values).value_counts()
    return sorted(counts.index, key=lambda k: (-counts[k], k))


class RatingsDisplay:
    """Fig. 3 from the rated pairs (:func:`rating_pairs`, one row per word–image pair): mean opinion score per
    part of speech and the share rated fair to excellent, each with a 95% t interval over pairs."""

    def __init__(self, pairs):
        self.pairs = pairs

    def plot(self, ax=None) -> RatingsDisplay:
        """``ax``: two axes (top, bottom), or None for a new figure."""
        import matplotlib.pyplot as plt
        import seaborn as sns

        from .style import ci_kwargs, few_note, label_counts, theme

        pairs = self.pairs.assign(fair=lambda d: 100.0 * (d.rating >= 3))
        order = _by_count(pairs["pos"])
        counts = pairs["pos"].value_counts().to_dict()
        with theme():
            if ax is None:
                _, ax = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True, layout="constrained")
            sns.barplot(data=pairs, x="pos", y="rating", order=order, ax=ax[0], **ci_kwargs(bounds=(1, 5)))
            ax[0].set_ylabel("mean opinion score"); ax[0].set_ylim(1, 5); ax[0].set_xlabel("")
            sns.barplot(data=pairs, x="pos", y="fair", order=order, ax=ax[1], **ci_kwargs(bounds=(0, 100)))
            ax[1].set_ylabel("% fair–excellent"); ax[1].set_ylim(0, 100); ax[1].set_xlabel("")
            label_counts(ax[1], counts)
            ax[0].set_title(f"Fig. 3: {len(pairs)} rated pairs, 95% t interval. {few_note(counts)}", fontsize=8)
        self.ax_, self.figure_ = ax, ax[0].figure
        return self


def plot_ratings(pairs, ax=None, model: str = "") -> RatingsDisplay:
    from .style import name_model

    return name_model(RatingsDisplay(pairs).plot(ax), model)


class AutomaticDisplay:
    """The automatic measure per part of speech, from the word rows (:func:`attribution_rows`): map mass on the
    word's own region, on another word's region and on a uniform map (left), and the lift over a uniform map
    (right), each a mean over words with its 95% t interval."""

    def __init__(self, rows):
        import pandas as pd

        self.rows = pd.DataFrame(rows)

    def plot(self, ax=None) -> AutomaticDisplay:
        """``ax``: two axes, or None for a new figure."""
        import matplotlib.pyplot as plt
        import seaborn as sns

        from .style import ci_kwargs, few_note, label_counts, theme

        r = self.rows
        order = _by_count(r["pos"])
        counts = r["pos"].value_counts().to_dict()
        mass = r.assign(**{"own region": 100 * r.mass_on_region, "another word's region": 100 * r.mass_on_other_region,
                           "uniform map": 100 * r.region_share}) \
            .melt(id_vars="pos", value_vars=["own region", "another word's region", "uniform map"], var_name="measure",
                  value_name="percent")
        lift = r.assign(**{"own region": r.mass_on_region / r.region_share,
                           "another word's region": r.mass_on_other_region / r.other_region_share}) \
            .melt(id_vars="pos", value_vars=["own region", "another word's region"], var_name="measure",
                  value_name="lift")
        with theme():
            if ax is None:
                _, ax = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
            a, a2 = ax
            sns.barplot(data=mass, x="pos", y="percent", hue="measure", order=order, ax=a, **ci_kwargs())
            a.set_ylabel("% of the word's map mass"); a.set_ylim(0, 100); a.set_xlabel(""); a.legend(fontsize=8)
            a.set_title("automatic attribution measure (ground-truth regions, not human ratings)", fontsize=9)
            sns.barplot(data=lift, x="pos", y="lift", hue="measure", order=order, ax=a2, **ci_kwargs())
            a2.axhline(1, color="k", lw=0.8, ls="--"); a2.set_ylabel("lift: mass ÷ region share"); a2.set_xlabel("")
            a2.legend(fontsize=8)
            a2.set_title("1 = no better than a uniform map (regions differ in size)", fontsize=9)
            for axis in ax:
                label_counts(axis, counts)
            note = few_note(counts)
            fig = a.figure
            fig.suptitle(f"{len(r)} words, 95% t interval" + (f". {note}" if note else ""), fontsize=8)
        self.ax_, self.figure_ = ax, fig
        return self


def plot_automatic(rows, ax=None, model: str = "") -> AutomaticDisplay:
    from .style import name_model

    return name_model(AutomaticDisplay(rows).plot(ax), model)


class ExamplesDisplay:
    """Fig. 4 analogue: the first rating item of each part of speech (up to ``n``), its map over the image."""

    def __init__(self, items: Sequence[RatingItem], n: int = 6):
        first: dict[str, RatingItem] = {}
        for it in items:
            first.setdefault(it.pos, it)
        self.examples = list(first.values())[:n]

    def plot(self, ax=None) -> ExamplesDisplay:
        import matplotlib.pyplot as plt

        ex = self.examples
        if ax is None:
            _, ax = plt.subplots(1, len(ex), figsize=(2.6 * len(ex), 3.6), squeeze=False, layout="constrained")
        for a, it in zip(ax[0], ex):
            it.heat_maps.word(it.word, it.occurrence).plot(ax=a, title=f"{it.pos}: {it.word}")
            a.text(0.5, -0.04, textwrap.fill(it.heat_maps.prompt, 26), transform=a.transAxes, ha="center", va="top",
                   fontsize=8)
        ax[0][0].figure.suptitle(f"Fig. 4 analogue: one word per part of speech. {SCALE_NOTE}", fontsize=8)
        self.ax_, self.figure_ = ax, ax[0][0].figure
        return self


def plot_examples(items: Sequence[RatingItem], n: int = 6, ax=None, model: str = "") -> ExamplesDisplay:
    from .style import name_model

    return name_model(ExamplesDisplay(items, n).plot(ax), model)


def count_tags(tags: Mapping[str, Mapping[int, str]]):
    """Words per part of speech over all items (a Series named ``words``, most frequent first)."""
    import pandas as pd

    return pd.Series([p for t in tags.values() for p in t.values()]).value_counts().rename("words")


def read_ratings(path: str | Path):
    """The rated pairs (:func:`rating_pairs`) of the ratings CSV at ``path``, or None when there is none yet."""
    return rating_pairs(load_ratings(path)) if Path(path).is_file() else None


def results(model: str, records, tags, auto=None, mos=None) -> dict:
    """The headline numbers 02 records: words per POS, the automatic measure and the ratings (when there are any)."""
    out = {"model": model, "images": len(records), "words_by_pos": count_tags(tags).to_dict()}
    if auto is not None and len(auto):
        cols = ["words", "mass_on_own_region", "mass_on_random_region", "uniform_map", "lift_own", "lift_random"]
        out["automatic"] = auto.set_index("pos")[cols].round(4).to_dict("index")
    if mos is not None:
        out["ratings"] = mos.set_index("pos").round(3).to_dict("index")
    return out


GOOD_POS, FAIR_POS = ("ADJ", "VERB", "NOUN", "PROPN"), ("NUM", "ADV")


def paper_vs_here(pairs=None):
    """§3.2's claims against this run's ratings (:func:`rating_pairs`): ADJ, VERB, NOUN, PROPN rated about "good"
    (4), NUM and ADV about "fair" (3) (values ± half a category), and > 90% (NUM, ADV > 80%) rated fair to
    excellent (at least the paper's share, less 5 points). Intervals resample the images (``item_id``). Without
    ratings every row says so: the automatic measure is not the paper's and stands in for none of them."""
    from . import paper as P

    rows = []
    mos, share = P.MARGINS["mos"], P.MARGINS["share"]
    for group, key in ((GOOD_POS, "fig3.mos.good"), (FAIR_POS, "fig3.mos.fair")):
        ref = P.PAPER[key]
        for pos in group:
            if pairs is None:
                rows.append(P.row(ref.source, f"{pos}: mean opinion score", ref.value,
                                  untestable="no human ratings yet (RATINGS_CSV); none are invented"))
                continue
            g = pairs[pairs.pos == pos]
            m, lo, hi, n = P.interval(g["rating"].to_numpy(float), g["item_id"])
            rows.append(P.row(ref.source, f"{pos}: mean opinion score", ref.value, m, lo, hi, n,
                              P.value(ref.value, lo, hi, mos.value, n, why=mos.why)))
    ref = P.PAPER["fig3.fair-to-excellent"]
    for pos in GOOD_POS + FAIR_POS:
        paper = 80.0 if pos in FAIR_POS else ref.value
        if pairs is None:
            rows.append(P.row(ref.source, f"{pos}: % rated fair–excellent (at least)", paper,
                              untestable="no human ratings yet (RATINGS_CSV); none are invented"))
            continue
        g = pairs[pairs.pos == pos]
        m, lo, hi, n = P.interval(100.0 * (g["rating"].to_numpy(float) >= 3), g["item_id"], bounds=(0, 100))
        verdict = P.effect(lo - paper, hi - paper, -share.value, 1, n,
                           why=f"at least the paper's {paper:g}%, less 5 points")
        rows.append(P.row(ref.source, f"{pos}: % rated fair–excellent (at least)", paper, m, lo, hi, n, verdict))
    return P.table(rows)
