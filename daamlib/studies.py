"""The computations behind the notebooks, one function per study, so notebooks stay thin and tested.

Each function takes finished heat maps (``HeatMaps``) and ground truth given as plain masks,
so the same code scores the embedded model (ground truth from its annotator) and Stable
Diffusion (ground truth from human masks or labels).
"""

from __future__ import annotations

import numpy as np
import torch

from . import segmentation as seg
from .heatmap import HeatMaps
from .stats import iou

BASELINES = ("whole image", "centre blob", "colour clusters")


def _mask(m) -> torch.Tensor:
    return m if torch.is_tensor(m) else torch.from_numpy(np.asarray(m, dtype=bool))


def word_at(hm: HeatMaps, index: int):
    """The :class:`Word` at word position ``index`` of the prompt (None if it was truncated)."""
    for w in hm.alignment.words:
        if w.index == index:
            return None if w.truncated else w
    raise IndexError(f"the prompt {hm.prompt!r} has no word {index}")


def pair_positions(a: str, b: str) -> tuple[list[int], list[int]]:
    """Word positions of the two nouns in the §5.1 template "a(n) <a> and a(n) <b>" (see
    :func:`daamlib.ontology.pair_prompt`); a noun of several words ("hot dog") spans several."""
    na, nb = len(a.split()), len(b.split())
    return list(range(1, 1 + na)), list(range(3 + na, 3 + na + nb))


_TRUE, _FALSE = {"1", "true", "yes", "y", "correct"}, {"0", "false", "no", "n", "incorrect"}


def read_label(value) -> bool | None:
    """A human yes/no label from a CSV cell: 1/0, true/false, yes/no, correct/incorrect (any case);
    empty is None (not labelled). Anything else raises, rather than being read as True."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text.endswith(".0"):  # pandas reads a 0/1 column with blanks as floats
        text = text[:-2]
    if text == "":
        return None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"cannot read {value!r} as a label: write 1/0, true/false, yes/no or correct/incorrect")


def word_starting_at(hm: HeatMaps, char: int):
    """The :class:`Word` whose text starts at character ``char`` of the prompt (e.g. where a
    template's ``{adj}`` was filled in), by the alignment's own word split, punctuation included."""
    for w in hm.alignment.words:
        if w.span[0] == char:
            return w
    raise IndexError(f"no word of {hm.prompt!r} starts at character {char}")


def segmentation_rows(hm: HeatMaps, gt: dict[int, object], thresholds=(0.3, 0.4, 0.5),
                      sweep=tuple(np.round(np.linspace(0, 1, 11), 2)), ablation_tau: float = 0.4,
                      ablation_steps=(1, 2, 5, 10, 20), **info) -> list[dict]:
    """IoU rows for Table 1, the τ sweep and the Fig. 11 ablation, for every word with a ground-truth mask.

    ``gt``: word position → boolean mask at image size. ``info`` (e.g. ``item``, ``split``) is
    copied into every row. Row ``kind``: ``table`` (method × τ), ``sweep`` (DAAM, both Eq. 7
    modes, τ from 0 to 1), ``ablation`` (DAAM-``ablation_tau`` on the first/last n steps, the coarsest/finest
    n layer resolutions, and each resolution alone).
    """
    rows = []
    size = hm.size
    base = {"whole image": seg.whole_image(size), "centre blob": seg.centre_blob(size)}
    if hm.image is not None:
        base["colour clusters"] = seg.colour_clusters(hm.image)
    S = len(hm.steps)
    views = {("all", S): hm}
    for n in sorted({min(n, S) for n in ablation_steps} | {S}):
        views[("first n steps", n)] = hm.select(steps=range(n))
        views[("last n steps", n)] = hm.select(steps=range(S - n, S))
    coarse_to_fine = sorted(hm.resolutions, key=lambda r: r[0] * r[1])
    R = len(coarse_to_fine)
    for n in range(1, R + 1):  # the paper's layer ablation: resolutions c ≤ c* and c ≥ c*
        views[("coarsest n resolutions", n)] = hm.select(resolutions=coarse_to_fine[:n])
        views[("finest n resolutions", n)] = hm.select(resolutions=coarse_to_fine[R - n:])
    for r in hm.resolutions:
        views[(f"only {r[0]}×{r[1]}", S)] = hm.select(resolutions=[r])
    for index, truth in gt.items():
        w = word_at(hm, index)
        if w is None:
            continue
        truth = _mask(truth)
        row = {**info, "word": w.text, "word_index": index}
        wm = hm.word(w.text, w.occurrence)
        for t in thresholds:
            rows.append({**row, "kind": "table", "method": "DAAM", "tau": t, "iou": iou(wm.binarize(t), truth)})
        for name, m in base.items():
            rows.append({**row, "kind": "table", "method": name, "tau": None, "iou": iou(m, truth)})
        for mode in ("minmax", "max"):
            for t in sweep:
                rows.append({**row, "kind": "sweep", "method": f"DAAM ({mode})", "tau": float(t),
                             "iou": iou(wm.binarize(float(t), mode), truth)})
        for (what, n), view in views.items():
            vm = view.word(w.text, w.occurrence)
            rows.append({**row, "kind": "ablation", "method": what, "n": n, "tau": ablation_tau,
                         "iou": iou(vm.binarize(ablation_tau), truth)})
    return rows


def table1(rows, thresholds=(0.3, 0.4, 0.5)):
    """Table 1 analogue: mIoU (×100) per method (DAAM-τ and baselines) and split."""
    import pandas as pd

    df = pd.DataFrame([r for r in rows if r["kind"] == "table"])
    df["method"] = [f"DAAM-{t}" if m == "DAAM" else m for m, t in zip(df["method"], df["tau"])]
    order = [f"DAAM-{t}" for t in thresholds] + list(BASELINES)
    out = (100 * df.pivot_table(index="method", columns="split", values="iou", aggfunc="mean")).reindex(order)
    out["n"] = df.groupby("method").size().reindex(order)
    return out.reset_index()


# -- §3.2: attribution by part of speech ------------------------------------------------------------------
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
    masks = {i: _mask(m) for i, m in noun_masks.items()}
    out: dict[int, torch.Tensor] = {}
    for i, role in roles.items():
        if role == "noun":
            m = masks.get(i)
        elif role == "background":
            m = None if background_mask is None else _mask(background_mask)
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
        w = word_at(hm, i)
        if w is None:
            continue
        others = [m for j, m in regions.items() if j != i and not torch.equal(m, region)]
        heat = hm.word(w.text, w.occurrence).heat
        other = others[rng.integers(len(others))] if others else None
        rows.append({**info, "word": w.text, "word_index": i, "pos": pos.get(i, "X"),
                     "mass_on_region": seg.mass_on_region(heat, region),
                     "mass_on_other_region": seg.mass_on_region(heat, other) if other is not None else float("nan"),
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

    from .stats import mean_ci

    df = pd.DataFrame(rows)
    out = []
    for pos, g in df.groupby("pos"):
        own, other = mean_ci(g["mass_on_region"]), mean_ci(g["mass_on_other_region"])
        out.append({"pos": pos, "words": len(g), "mass_on_own_region": own.mean, "ci_low": own.low,
                    "ci_high": own.high, "mass_on_random_region": other.mean,
                    "uniform_map": float(g["region_share"].mean()),
                    "lift_own": float((g["mass_on_region"] / g["region_share"]).mean()),
                    "lift_random": float((g["mass_on_other_region"] / g["other_region_share"]).mean())})
    return pd.DataFrame(out).sort_values("words", ascending=False)


# -- §4: head–dependent overlap ---------------------------------------------------------------------------
def dependency_rows(hm: HeatMaps, arcs, threshold: float = 0.4, unrelated_per_prompt: int = 2, seed: int = 0,
                    **info) -> list[dict]:
    """IoU, IoD, IoH of the binarised maps of every head–dependent arc (``linguistics.dependencies``),
    plus up to ``unrelated_per_prompt`` word pairs joined by no arc (relation ``unrelated``)."""
    from .stats import pair_overlap

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
    idx = sorted(masks)
    pairs = [(a, b) for a in idx for b in idx if a != b and (a, b) not in linked]
    for k in rng.permutation(len(pairs))[:unrelated_per_prompt]:
        a, b = pairs[k]
        rows.append({**info, "relation": "unrelated", "head": hm.alignment.words[a].text,
                     "dependent": hm.alignment.words[b].text, "head_index": a, "dependent_index": b,
                     **pair_overlap(masks[a], masks[b])})
    return rows


# -- §5.2: adjectives with the layout held fixed -----------------------------------------------------------
def adjective_swap(pipe, template: str, adjectives: list[str], seed: int = 0, **generate_kwargs) -> dict:
    """Generate ``template.format(adj=adjectives[0])`` while keeping its attention, then every other
    adjective twice: replayed onto the seed's attention (layout fixed) and plainly (its own maps).

    Returns ``{"seed": HeatMaps, "replayed": {adj: uint8 image}, "plain": {adj: HeatMaps}}``;
    ``replayed[adjectives[0]]`` is the seed image itself.
    """
    from .pipeline import generate
    from .replay import AttentionStore

    store = AttentionStore()
    first = generate(pipe, template.format(adj=adjectives[0]), seed=seed, store=store, **generate_kwargs)
    replayed, plain = {adjectives[0]: first.image}, {adjectives[0]: first}
    for adj in adjectives[1:]:
        prompt = template.format(adj=adj)
        replayed[adj] = generate(pipe, prompt, seed=seed, replay=store, **generate_kwargs).image
        plain[adj] = generate(pipe, prompt, seed=seed, **generate_kwargs)
    return {"seed": first, "replayed": replayed, "plain": plain}
