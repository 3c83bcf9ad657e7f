"""§4, Table 2 and Fig. 5: do a head's and its dependent's maps overlap, and which one contains the other?

For every dependency arc of a prompt (spaCy, mapped to the paper's relations in
:mod:`daamlib.studies.linguistics`), the Eq. 7 maps of head and dependent are compared by IoU,
IoD (intersection over the dependent) and IoH (over the head); a Wilcoxon signed-rank test gives
the p-value of mIoD ≠ mIoH per relation. As §4 builds Table 2, "all head–dependent pairs" are the
arcs of the ten relations only (spaCy's other arcs, such as ``prep`` or ``aux``, are kept in the pair
rows as ``spacy:<label>`` but left out), and the unrelated-pair baseline draws pairs of words joined
by no arc among the prompt's content words (no punctuation, no determiners).

>>> pairs = pair_rows(records, threshold=0.4, seed=0)       # doctest: +SKIP
>>> table2(pairs)                                            # doctest: +SKIP
>>> plot_examples(pairs, records).figure_                    # doctest: +SKIP
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

from ..heatmap import SCALE_NOTE, HeatMaps
from ..stats import pair_overlap
from .linguistics import RELATIONS


def dependency_rows(hm: HeatMaps, arcs, threshold: float = 0.4, unrelated_per_prompt: int = 2, seed: int = 0,
                    content: set[int] | None = None, **info) -> list[dict]:
    """IoU, IoD, IoH of the binarised maps of every head–dependent arc (``linguistics.dependencies``),
    plus up to ``unrelated_per_prompt`` word pairs joined by no arc (relation ``unrelated``), drawn among the word
    positions in ``content`` when given (e.g. no punctuation or determiners)."""
    masks = {w.index: hm.word(w.text, w.occurrence).binarize(threshold)
             for w in hm.alignment.words if not w.truncated}
    rows, linked = [], set()
    for arc in arcs:
        h, d = arc.head.index, arc.dependent.index
        if h in masks and d in masks:
            linked |= {(h, d), (d, h)}
            rows.append({**info, "relation": arc.relation, "head": arc.head.text, "dependent": arc.dependent.text,
                         "head_index": h, "dependent_index": d, **pair_overlap(masks[h], masks[d])})
    rng = np.random.default_rng(seed)
    idx = sorted(i for i in masks if content is None or i in content)
    pairs = [(a, b) for a in idx for b in idx if a != b and (a, b) not in linked]
    for k in rng.permutation(len(pairs))[:unrelated_per_prompt]:
        a, b = pairs[k]
        rows.append({**info, "relation": "unrelated", "head": hm.alignment.words[a].text,
                     "dependent": hm.alignment.words[b].text, "head_index": a, "dependent_index": b,
                     **pair_overlap(masks[a], masks[b])})
    return rows


def paired_p_value(a, b) -> float:
    """Two-sided Wilcoxon signed-rank p-value for paired samples ``a`` vs ``b`` (NaN pairs dropped)."""
    from scipy import stats as st

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.allclose(x, y):
        return math.nan if len(x) < 2 else 1.0
    return float(st.wilcoxon(x, y).pvalue)


def relation_table(rows, alpha: float = 0.01, dominance: float = 10.0):
    """Table 2: per relation, n, mIoD, mIoH, Δ = |mIoD − mIoH|, mIoU (all ×100), the paired p of mIoD ≠ mIoH,
    and which map dominates (``head`` when mIoD > mIoH by more than ``dominance`` points at p < ``alpha``).

    ``rows``: dicts or a DataFrame with columns ``relation``, ``iou``, ``iod``, ``ioh``. A pair whose IoD
    or IoH is undefined (an empty mask) is left out of every column, so n, the means, Δ and p all
    describe the same pairs; ``excluded`` counts those left out.
    """
    import pandas as pd

    df = pd.DataFrame(rows)
    out = []
    for rel, g_all in df.groupby("relation", sort=False):
        g = g_all[g_all["iod"].notna() & g_all["ioh"].notna()]
        m_iod, m_ioh = 100 * g["iod"].mean(), 100 * g["ioh"].mean()
        p = paired_p_value(g["iod"], g["ioh"])
        delta = abs(m_iod - m_ioh)
        dominant = ("head" if m_iod > m_ioh else "dependent") if delta > dominance and p < alpha else ""
        out.append({"relation": rel, "n": len(g), "mIoD": m_iod, "mIoH": m_ioh, "delta": delta,
                    "mIoU": 100 * g["iou"].mean(), "p": p, "dominant": dominant, "excluded": len(g_all) - len(g)})
    return pd.DataFrame(out)


def pair_rows(records: Sequence[Mapping], threshold: float = 0.4, seed: int = 0, nlp=None):
    """:func:`dependency_rows` of every finished item, parsed with spaCy: one DataFrame (column ``item``)."""
    import pandas as pd

    from ..io import load_experiment
    from .linguistics import dependencies, load_spacy, tag_words

    nlp = nlp or load_spacy()
    rows = []
    for r in records:
        hm, _ = load_experiment(r["path"])
        content = {w.index for w, pos in tag_words(hm.alignment, nlp) if pos not in FUNCTION_POS}
        rows += dependency_rows(hm, dependencies(hm.alignment, nlp), threshold, seed=seed, content=content,
                                item=r["id"])
    return pd.DataFrame(rows)


FUNCTION_POS = ("PUNCT", "DET")  # never drawn into unrelated pairs


def table2(pairs):
    """Table 2 analogue: unrelated pairs, all head–dependent pairs (the ten relations), then the paper's relations
    that occur, most frequent first (see :func:`relation_table` for the columns)."""
    import pandas as pd

    arcs = pairs[pairs.relation.isin(RELATIONS)]
    return pd.concat([
        relation_table(pairs[pairs.relation == "unrelated"]),
        relation_table(arcs.assign(relation="all head–dependent pairs")),
        relation_table(arcs[arcs.relation.isin(RELATIONS)]).sort_values("n", ascending=False),
    ], ignore_index=True)


def table2_groups(pairs) -> dict:
    """Table 2's rows as groups of pairs whose IoD and IoH are defined: ``unrelated``, ``all head–dependent pairs``
    (the ten relations), then each of the ten relations, the most frequent first (empty ones included)."""
    ok = pairs[pairs["iod"].notna() & pairs["ioh"].notna()]
    arcs = ok[ok.relation.isin(RELATIONS)]
    counts = arcs.relation.value_counts()
    return {"unrelated": ok[ok.relation == "unrelated"], "all head–dependent pairs": arcs,
            **{r: arcs[arcs.relation == r] for r in sorted(RELATIONS, key=lambda r: -counts.get(r, 0))}}


def prompt_units(g):
    """The independent unit of each pair: the prompt it comes from (``item``), or None when the rows lack it."""
    return g["item"] if "item" in g else None


class Table2Display:
    """Table 2 as a chart, from the pair rows: per row of :func:`table2`, Δ = mIoD − mIoH (×100) — the quantity
    :func:`paper_vs_here` judges — as this run's mean with its 95% interval over prompts (the same interval as the
    verdicts), beside the paper's Δ; the shaded band is the paper's "no dominance" (|Δ| ≤ 10). Rows with fewer
    prompts than the verdicts need (:data:`~daamlib.studies.style.FEW`) are marked ``†`` and drawn without an
    interval (pairs whose IoD or IoH is undefined are left out, as in the table)."""

    def __init__(self, pairs):
        self.pairs = pairs

    def deltas(self):
        """One row per Table 2 row that occurs: ``row, pairs, n`` (prompts, the interval's units; pairs when the rows
        have no ``item``), ``delta, low, high`` (×100; no interval when n < ``FEW``) and ``paper`` (the paper's Δ,
        NaN for a relation it does not list), in the chart's order."""
        import pandas as pd

        from . import paper as P
        from .style import FEW

        rows = []
        for name, g in table2_groups(self.pairs).items():
            if not len(g):
                continue
            m, lo, hi, n = P.interval(100 * (g["iod"] - g["ioh"]).to_numpy(), prompt_units(g))
            paper = P.TABLE2.get(name)
            rows.append({"row": name, "pairs": len(g), "n": n, "delta": m, "low": lo if n >= FEW else math.nan,
                         "high": hi if n >= FEW else math.nan,
                         "paper": paper[0] - paper[1] if paper else math.nan})
        return pd.DataFrame(rows)

    def plot(self, ax=None) -> Table2Display:
        import matplotlib.pyplot as plt

        from . import paper as P
        from .style import few_note, label_counts, theme

        d = self.deltas()
        x = np.arange(len(d))
        band = P.MARGINS["dominance"].value
        with theme():
            if ax is None:
                _, ax = plt.subplots(figsize=(1.0 * len(d) + 2.5, 3.8), layout="constrained")
            ax.axhspan(-band, band, color="0.92", zorder=0, label=f"no dominance (|Δ| ≤ {band:g}, the paper's)")
            ax.axhline(0, color="k", lw=0.8)
            err = np.array([d.delta - d.low, d.high - d.delta])
            ax.errorbar(x - 0.12, d.delta, yerr=np.nan_to_num(err), fmt="o", color="C0", capsize=3,
                        label="here: mean, 95% interval over prompts")
            ax.scatter(x + 0.12, d.paper, marker="D", color="C3", zorder=3, label="paper (SD 2.0-base, COCO)")
            ax.set_xticks(x, d.row)
            label_counts(ax, dict(zip(d.row, d.n)))
            plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=7)
            reach = max(band * 1.5, np.nanmax(np.abs(np.r_[d.low, d.high, d.delta, d.paper])) * 1.1)
            ax.set_ylim(-reach, reach)
            ax.set_xlabel(""); ax.set_ylabel("Δ = mIoD − mIoH (×100)")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            note = few_note(dict(zip(d.row, d.n)))
            ax.set_title("Table 2 analogue: Δ > 0 means the head's map contains the dependent's, Δ < 0 the reverse"
                         + (f"\n{note}" if note else ""), fontsize=8)
        self.ax_, self.figure_ = ax, ax.figure
        return self


def plot_table2(pairs, ax=None, model: str = "") -> Table2Display:
    from .style import name_model

    return name_model(Table2Display(pairs).plot(ax), model)


class ExamplesDisplay:
    """Fig. 5 analogue: one pair per relation (each from another prompt where possible): image, head map,
    dependent map, the map that contains the other (IoD vs IoH) marked ★."""

    def __init__(self, rows: list[tuple[Mapping, HeatMaps]]):
        self.rows = rows

    @classmethod
    def from_pairs(cls, pairs, records: Sequence[Mapping], n: int = 5) -> ExamplesDisplay:
        import pandas as pd

        from ..io import load_experiment

        arcs = pairs[pairs.relation.isin(RELATIONS)]
        show, used = [], set()
        for _rel, g in arcs.groupby("relation", sort=False):
            fresh = g[~g["item"].isin(used)]
            pick = (fresh if len(fresh) else g).iloc[0]
            used.add(pick["item"])
            show.append(pick)
        by_id = {r["id"]: r for r in records}
        return cls([(p, load_experiment(by_id[p["item"]]["path"])[0]) for _, p in pd.DataFrame(show).head(n).iterrows()])

    def plot(self, ax=None) -> ExamplesDisplay:
        """``ax``: a ``[rows, 3]`` array of axes, or None for a new figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(len(self.rows), 3, figsize=(7.5, 2.5 * len(self.rows) + 0.5), squeeze=False,
                                 layout="constrained")
        for row_axes, (p, hm) in zip(ax, self.rows):
            row_axes[0].imshow(hm.image); row_axes[0].set_title(textwrap.fill(hm.prompt, 30), fontsize=8)
            for a, role in ((row_axes[1], "head"), (row_axes[2], "dependent")):
                wm = hm.word_at(int(p[f"{role}_index"]))
                dominant = "head" if p["iod"] > p["ioh"] else "dependent" if p["iod"] < p["ioh"] else None  # ties, NaN: none
                mark = " ★" if dominant == role else ""
                wm.plot(ax=a)
                a.set_title(f"{p['relation']} {role}: {wm.word.text}{mark}", fontsize=8)
            for a in row_axes:
                a.set_axis_off()
        fig = ax[0][0].figure
        fig.suptitle(f"★ = the map that contains the other (IoD vs IoH)\n{SCALE_NOTE}", fontsize=8)
        self.ax_, self.figure_ = ax, fig
        return self


def plot_examples(pairs, records: Sequence[Mapping], n: int = 5, ax=None, model: str = "") -> ExamplesDisplay:
    from .style import name_model

    return name_model(ExamplesDisplay.from_pairs(pairs, records, n).plot(ax), model)


def results(model: str, records, pairs, table) -> dict:
    """The headline numbers 03 records."""
    cols = ["n", "mIoD", "mIoH", "delta", "mIoU", "p", "dominant"]
    return {"model": model, "images": len(records), "pairs": len(pairs),
            "table2": table.set_index("relation")[cols].round(4).to_dict("index")}


def paper_vs_here(pairs, comparable: bool = False):
    """§4's claims (Table 2) against this run: which map dominates for each relation (Δ = mIoD − mIoH beyond the
    paper's 10 points), or that none does (|Δ| ≤ 10, by equivalence), and the baselines' overlap; each a mean
    over pairs with its 95% interval over the *prompts* the pairs come from (column ``item``; pairs of one
    prompt are not independent). ``comparable``: this run's prompts and masks are the paper's kind (SD on
    COCO), so its mIoU values are judged against the paper's numbers, not only its directions."""
    from . import paper as P

    groups = table2_groups(pairs)
    dom, miou, gap = P.MARGINS["dominance"], P.MARGINS["miou"], P.MARGINS["miou-gap"]

    rows = []
    for name, (p_iod, p_ioh, p_iou, dominant) in P.TABLE2.items():
        g = groups.get(name)
        src = f"§4, Table 2: {name}"
        claim = f"{name}: mIoD − mIoH ({dominant or 'no'} dominance in the paper)"
        if g is None or not len(g):
            rows.append(P.row(src, claim, p_iod - p_ioh, untestable=f"no {name} pairs in these prompts"))
            continue
        m, lo, hi, n = P.interval(100 * (g["iod"] - g["ioh"]).to_numpy(), prompt_units(g))
        if dominant:
            sign = 1 if dominant == "head" else -1
            verdict = P.effect(lo, hi, dom.value, sign, n, why=dom.why)
        else:
            verdict = P.no_effect(lo, hi, dom.value, n, why=dom.why)
        rows.append(P.row(src, claim + f"; {len(g)} pairs", p_iod - p_ioh, m, lo, hi, n, verdict))
        if name in ("unrelated", "all head–dependent pairs"):
            m, lo, hi, n = P.interval(100 * g["iou"].to_numpy(), prompt_units(g))
            rows.append(P.row(src, f"{name}: mIoU", p_iou, m, lo, hi, n,
                              P.value(p_iou, lo, hi, miou.value, n, comparable, miou.why)))
    nconj, all_ = groups["nconj:and"], groups["all head–dependent pairs"]
    others = all_[all_.relation != "nconj:and"]
    src = "§4: nconj:and maps overlap less than other pairs (38 vs 43 mIoU)"
    claim = "mIoU of the other pairs − of nconj:and, within a prompt (points)"
    if len(nconj) and len(others) and "item" in nconj:
        # the two kinds of pair come from the same prompts: compare them within each prompt that has both
        per_prompt = (others.groupby("item")["iou"].mean() - nconj.groupby("item")["iou"].mean()).dropna()
        m, lo, hi, n = P.interval(100 * per_prompt.to_numpy())
        rows.append(P.row(src, claim, 43.4 - 38.2, m, lo, hi, n, P.effect(lo, hi, gap.value, 1, n, why=gap.why)))
    else:
        rows.append(P.row(src, claim, 43.4 - 38.2, untestable="no nconj:and pairs in these prompts"))
    return P.table(rows)
