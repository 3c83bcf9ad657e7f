"""Human ratings of word maps (paper §3.2, Fig. 3): a rating widget and the analysis of any ratings CSV.

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
import time
from dataclasses import dataclass
from pathlib import Path

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


class RatingWidget:
    """ipywidgets UI: image, the word's map over it, the prompt with the word highlighted, and seven buttons.

    Every click appends one row to ``csv_path`` at once (nothing is lost if the kernel dies)
    and moves to the next item. ``widget`` is what to display.
    """

    def __init__(self, items: list[RatingItem], csv_path: str | Path, rater: str):
        import ipywidgets as w

        if not rater.strip():
            raise ValueError("give the rater a name or id (rater='...'), so ratings from several people stay apart")
        self.items, self.csv_path, self.rater = list(items), Path(csv_path), rater
        self.position = 0
        self.prompt = w.HTML()
        self.image = w.Image(format="png")
        self.progress = w.HTML()
        self.buttons = [w.Button(description=f"{k} {v}") for k, v in SCALE.items()]
        self.buttons += [w.Button(description=label, button_style="warning") for label in UNUSABLE]
        for b, value in zip(self.buttons, list(SCALE) + list(UNUSABLE)):
            b.on_click(lambda _b, value=value: self.rate(value))
        self.widget = w.VBox([self.prompt, self.image, w.HBox(self.buttons[:5]), w.HBox(self.buttons[5:]), self.progress])
        self._show()

    @property
    def done(self) -> bool:
        return self.position >= len(self.items)

    def rate(self, value: int | str) -> None:
        """Record a rating (1–5) or an unusable label for the current item, then show the next."""
        if self.done:
            return
        item = self.items[self.position]
        rating, label = (value, SCALE[value]) if isinstance(value, int) else ("", value)
        new = not self.csv_path.exists()
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(FIELDS)
            writer.writerow([item.item_id, item.word, item.occurrence, item.pos, self.rater, rating, label,
                             f"{time.time():.0f}"])
        self.position += 1
        self._show()

    def _show(self) -> None:
        if self.done:
            self.prompt.value = "<b>All items rated. Thank you.</b>"
            self.progress.value = f"{len(self.items)} rated; saved to {html.escape(str(self.csv_path))}"
            return
        item = self.items[self.position]
        wm = item.heat_maps.word(item.word, item.occurrence)
        p = item.heat_maps.prompt
        a, b = wm.word.span
        self.prompt.value = (f"How well does the highlighted area show <b>{html.escape(item.word)}</b>?<br>"
                             f"{html.escape(p[:a])}<mark>{html.escape(p[a:b])}</mark>{html.escape(p[b:])}")
        self.image.value = _overlay_png(item.heat_maps.image, wm.normalized())
        self.progress.value = f"item {self.position + 1} of {len(self.items)}"


def _overlay_png(image, heat) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    for i, show_map in enumerate((False, True)):
        ax = fig.add_axes((0.5 * i, 0, 0.5, 1))
        if image is not None:
            ax.imshow(image)
        if show_map:
            ax.imshow(heat.numpy(), cmap="jet", alpha=0.5 if image is not None else 1.0, vmin=0, vmax=1,
                      extent=(-0.5, heat.shape[1] - 0.5, heat.shape[0] - 0.5, -0.5))
        ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def load_ratings(path: str | Path):
    """Read a ratings CSV, checking its columns and values."""
    import pandas as pd

    df = pd.read_csv(path, dtype={"item_id": str, "word": str, "pos": str, "rater": str, "label": str})
    missing = [c for c in ("item_id", "word", "pos", "rater", "rating", "label") if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; expected {', '.join(FIELDS)}")
    bad = df["rating"].notna() & ~df["rating"].isin(list(SCALE))
    if bad.any():
        raise ValueError(f"{path} has ratings outside 1–5 in rows {list(df.index[bad][:5])}")
    return df


def mean_opinion_by_pos(ratings):
    """Fig. 3: per part of speech, the mean opinion score with a 95% CI and the share rated fair–excellent."""
    import pandas as pd

    from .stats import mean_ci

    df = ratings.copy()
    if "occurrence" not in df.columns:
        df["occurrence"] = 0
    key = ["item_id", "word", "occurrence"]
    unusable = df[df["label"].isin(UNUSABLE)].groupby(key).size().index
    usable = df[~df.set_index(key).index.isin(unusable) & df["rating"].notna()]
    pairs = usable.groupby(key + ["pos"], as_index=False)["rating"].median()
    rows = []
    for pos, g in pairs.groupby("pos"):
        ci = mean_ci(g["rating"])
        rows.append({"pos": pos, "pairs": len(g), "MOS": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
                     "fair_to_excellent": float((g["rating"] >= 3).mean())})
    return pd.DataFrame(rows, columns=["pos", "pairs", "MOS", "ci_low", "ci_high", "fair_to_excellent"])
