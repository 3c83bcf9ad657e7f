"""Real images and open-vocabulary concepts (issue 29), scored on exact masks.

>>> items = source.real_items(60, seed=0, split="test")                                    # doctest: +SKIP
>>> timesteps, tau, _ = choose_settings(pipe, source.real_items(40, seed=0, split="val"))   # doctest: +SKIP
>>> rows = real_image_rows(pipe, items, truth, timesteps, threshold=tau)                   # doctest: +SKIP
>>> methods_table(rows)                                                                     # doctest: +SKIP

A world renders scenes no model drew (test split: never trained on) and knows every noun's exact region. Each
render is attributed (:func:`daamlib.attribute`: its latents noised at ``timesteps``, one denoiser evaluation each)
with its caption and with a concept list: the scene's own nouns and shapes that are **not** in it. Scored per noun:

* DAAM's word map on the render, against the exact mask **and** against the annotator's mask of the render (so the
  comparison with generations below is not a change of ground truth);
* DAAM's word map on the model's own generation of the same caption, against the annotator (the only ground truth
  a generation has);
* the concept map of the noun (OVAM's method, :mod:`daamlib.concepts`), against the exact mask;
* the text-free baselines (whole image, centre blob, colour clusters of the render), against the exact mask.

Absent concepts: each concept's peak (the 99th percentile of its summed map, unnormalised) says how strongly the
image's queries matched it; the ROC AUC of present against absent concepts, and the threshold chosen on the val
split (the one that maximises balanced accuracy there), applied on test: how often an absent concept comes out
absent and a present one present.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import torch

from ..stats import iou
from .paper import interval, interval_difference
from .segmentation import auc, centre_blob, colour_clusters, whole_image

PEAK = 0.99  # the quantile of a concept's summed map that scores its presence
WORD, OVAM = "DAAM word map", "concept map (OVAM)"
CROSS, OUTPUT = "concept map (cross-attention)", "concept map (output space)"  # ConceptAttention's two spaces
OUTPUT_PEAK = "output-space peak"  # a concept row's peak of its output-space map (ConceptAttention)
BASELINES = ("whole image", "centre blob", "colour clusters")
METHODS = (WORD, OVAM, *BASELINES)  # on UNets, PixArt and Sana; joint transformers have CROSS and OUTPUT for OVAM


def concept_methods(hm) -> dict[str, str]:
    """The concept maps ``hm`` holds, by method name: the :class:`~daamlib.heatmap.HeatMaps` attribute of each.
    OVAM's (UNets, PixArt, Sana) has one space; ConceptAttention's (joint and single-stream transformers) two."""
    if getattr(hm, "concept_outputs", None) is not None:
        return {CROSS: "concepts", OUTPUT: "concept_outputs"}
    return {OVAM: "concepts"} if getattr(hm, "concepts", None) is not None else {}


def _peak(heat: torch.Tensor) -> float:
    return float(torch.quantile(heat.flatten().float(), PEAK))


def open_images(model_id: str, images_dir, size, n: int, n_val: int, seed: int, pipe):
    """(test items, val items, the annotator or None): a registered world's renders, or your folder of images and
    masks (:mod:`daamlib.studies.image_folder`) at ``size`` pixels (None: the model's default size)."""
    from ..pipeline import model_defaults
    from . import data
    from .image_folder import ImageFolder

    if images_dir is None:
        source = data.open_source(model_id)
        return source.real_items(n, seed, "test"), source.real_items(n_val, seed, "val"), source.truth
    folder = ImageFolder(images_dir, size or model_defaults(pipe).height)
    return folder.items(n, seed, "test"), folder.items(n_val, seed, "val"), None


CANDIDATE_TIMESTEPS = ((250,), (500,), (750,), (250, 500, 750))  # what choose_settings compares on val
CANDIDATE_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # τ of Eq. 7 (the paper's: 0.4)


def _thresholds(threshold, methods=()) -> dict:
    """``{"word": τ, method: τ, …}`` (one per concept method in ``methods``) from one τ for all, or a dict: its
    entries, each concept method missing from it at its ``"concept"`` entry (or the word maps')."""
    if isinstance(threshold, dict):
        out = {k: float(v) for k, v in threshold.items()}
        fallback = out.get("concept", out["word"])
        return {**{m: fallback for m in methods}, **out}
    return {"word": float(threshold), "concept": float(threshold), **{m: float(threshold) for m in methods}}


def choose_settings(pipe, val_items, candidates=CANDIDATE_TIMESTEPS, thresholds=CANDIDATE_THRESHOLDS):
    """(timesteps, ``{"word": τ, <concept method>: τ, …}``, table) chosen on the val renders against their exact
    masks: the timesteps and τ whose word maps have the highest val mIoU, and, at those timesteps, for each concept
    method the model has (:func:`concept_methods`: OVAM's, or ConceptAttention's two spaces) the τ whose maps of the
    same nouns have the highest (each kind of map at its own best τ, so none is judged at a τ that suits another's
    scale). The table holds every candidate's val mIoU. Nothing from test is seen."""
    import pandas as pd

    from ..attribute import attribute

    out = []
    for ts in candidates:
        scores: dict[tuple[str, float], tuple[list, list]] = {}
        for it in val_items:
            hm = attribute(pipe, it["image"], it["caption"], timesteps=ts, seed=it["seed"],
                           concepts=_concepts_of(it) or None)  # test's list: ConceptAttention's maps depend on it
            keep = ~torch.as_tensor(np.asarray(it["ignore"], bool)) if it.get("ignore") is not None else True
            for index, exact in it["masks"].items():
                word, exact = it["words"][index], torch.as_tensor(np.asarray(exact, bool))
                maps = {"word map": hm[word, it["words"][:index].count(word)]}
                if it["concept_of"].get(index) is not None:
                    for method, attr in concept_methods(hm).items():
                        maps[method] = getattr(hm, attr)[it["concept_of"][index]]
                for kind, m in maps.items():
                    for t in thresholds:
                        values, units = scores.setdefault((kind, t), ([], []))
                        values.append(100 * iou(m.binarize(t) & keep, exact))
                        units.append(it["id"])
        for (kind, t), (values, units) in scores.items():
            est = interval(values, units=units, bounds=(0, 100))
            out.append({"map": kind, "timesteps": ", ".join(map(str, ts)), "τ": t, "val mIoU": est[0],
                        "low": est[1], "high": est[2], "n images": est[3], "n nouns": len(values)})
    table = pd.DataFrame(out)
    words = table[table["map"] == "word map"]
    best = words.iloc[int(words["val mIoU"].to_numpy().argmax())]
    chosen_ts = next(ts for ts in candidates if ", ".join(map(str, ts)) == best["timesteps"])
    tau = {"word": float(best["τ"])}
    for method in dict.fromkeys(m for m in table["map"] if m != "word map"):
        rows = table[(table["map"] == method) & (table["timesteps"] == best["timesteps"])]
        tau[method] = float(rows.iloc[int(rows["val mIoU"].to_numpy().argmax())]["τ"])
    table["chosen"] = [ts == best["timesteps"] and t == tau["word" if m == "word map" else m]
                       for m, ts, t in zip(table["map"], table["timesteps"], table["τ"])]
    return tuple(chosen_ts), tau, table


def _concepts_of(it) -> list[str]:
    """An item's concept list, in order: its present concepts, then the absent ones (val and test alike, so that
    a ConceptAttention map, which depends on every concept in the stream, is the same map on both)."""
    return list(dict.fromkeys(list(it["concept_present"]) + list(it["concept_absent"])))


def real_image_rows(pipe, items, truth, timesteps, threshold=0.4, steps=None, guidance=None,
                    generations: bool = True) -> tuple[list[dict], list[dict]]:
    """(noun rows, concept rows). A noun row: one noun of one render, its IoUs (×100) by method and ground truth.
    A concept row: one concept of one render, present or absent, and its peak. ``truth``: the annotator
    (``annotate(image, caption)``), used on renders and generations alike. ``threshold``: τ for every map, or
    ``{"word": τ, <concept method>: τ, …}`` (:func:`choose_settings`); word maps of renders and generations share
    theirs. Joint transformers' rows hold both of ConceptAttention's spaces (:data:`CROSS`, :data:`OUTPUT`) where
    UNets' hold :data:`OVAM`."""
    from ..attribute import attribute
    from ..pipeline import generate

    nouns, concepts = [], []
    for it in items:
        image, caption = it["image"], it["caption"]
        wanted = _concepts_of(it)
        hm = attribute(pipe, image, caption, concepts=wanted, timesteps=timesteps, seed=it["seed"])
        methods = concept_methods(hm)
        tau = _thresholds(threshold, methods)
        on_render = truth.annotate(image, caption) if truth is not None else None
        gen = (generate(pipe, caption, seed=it["seed"], steps=steps, guidance_scale=guidance)
               if generations and truth is not None else None)
        on_gen = truth.annotate(gen.image, caption) if gen is not None else None
        keep = ~torch.as_tensor(np.asarray(it["ignore"], bool)) if it.get("ignore") is not None else None

        def score(m, exact):  # IoU (×100) outside the pixels no one can say are in or out (VOC's boundary band)
            m = torch.as_tensor(m).bool()
            return 100 * iou(m & keep if keep is not None else m, exact)

        shape = hm.size
        base = {"whole image": whole_image(shape), "centre blob": centre_blob(shape),
                "colour clusters": colour_clusters(image)}
        for index, exact in it["masks"].items():
            word = it["words"][index]
            exact = torch.as_tensor(np.asarray(exact, bool))
            mask = hm[word, it["words"][:index].count(word)].binarize(tau["word"])
            row = {"id": it["id"], "noun": word, "index": index, "objects": len(it["masks"]), WORD: score(mask, exact)}
            concept = it["concept_of"].get(index)
            for method, attr in methods.items():
                row[method] = (score(getattr(hm, attr)[concept].binarize(tau[method]), exact)
                               if concept is not None else math.nan)
            for name, m in base.items():
                row[name] = score(m, exact)
            annotated = on_render.noun_masks.get(index) if on_render is not None else None
            row["render vs annotator"] = (100 * iou(mask, torch.as_tensor(annotated)) if annotated is not None
                                          and on_render.present.get(index) else math.nan)
            g = on_gen.noun_masks.get(index) if on_gen is not None else None
            row["generation vs annotator"] = (100 * iou(gen[word, it["words"][:index].count(word)].binarize(tau["word"]),
                                                        torch.as_tensor(g))
                                              if g is not None and on_gen.present.get(index) else math.nan)
            nouns.append(row)
        for c in wanted:
            concepts.append({"id": it["id"], "concept": c, "present": c in it["concept_present"],
                             "peak": _peak(hm.concepts[c].heat),
                             **({OUTPUT_PEAK: _peak(hm.concept_outputs[c].heat)} if OUTPUT in methods else {})})
        it["heat_maps"] = hm
    return nouns, concepts


def methods_table(noun_rows, threshold=None):
    """mIoU (×100) of each method against the exact masks of renders, with a 95% interval clustered by image, and
    DAAM on renders against DAAM on generations, both scored by the annotator; ``threshold`` (as
    :func:`real_image_rows` took it) fills the τ column."""
    import pandas as pd

    present = _concept_methods_in(noun_rows)
    tau = _thresholds(threshold, present) if threshold is not None else {}
    tau_of = {WORD: tau.get("word", math.nan), **{m: tau.get(m, math.nan) for m in present}}

    units = [r["id"] for r in noun_rows]
    out = []
    for m in (WORD, *present, *BASELINES):
        v = [r.get(m, math.nan) for r in noun_rows]
        keep = [i for i, x in enumerate(v) if not math.isnan(x)]
        est = interval([v[i] for i in keep], units=[units[i] for i in keep], bounds=(0, 100))
        out.append({"ground truth": "exact masks (renders)", "method": m, "τ": tau_of.get(m, math.nan),
                    "mIoU": est[0], "low": est[1], "high": est[2], "n images": est[3], "n nouns": len(keep)})
    for name in ("render vs annotator", "generation vs annotator"):
        v = [(r[name], r["id"]) for r in noun_rows if not math.isnan(r[name])]
        est = interval([x for x, _ in v], units=[u for _, u in v], bounds=(0, 100))
        what = "renders" if name.startswith("render") else "the model's generations of the same captions"
        out.append({"ground truth": "the annotator", "method": f"DAAM word map on {what}", "τ": tau_of[WORD],
                    "mIoU": est[0], "low": est[1], "high": est[2], "n images": est[3], "n nouns": len(v)})
    return pd.DataFrame(out)


def differences_table(noun_rows):
    """Paired per-noun differences (points of IoU, clustered by image): concept map − word map, word map − each
    baseline; and generations − renders under the annotator (unpaired: a generation may miss a noun)."""
    import pandas as pd

    units = [r["id"] for r in noun_rows]
    out = []
    present = _concept_methods_in(noun_rows)
    pairs_of = [(m, WORD) for m in present] + ([(OUTPUT, CROSS)] if OUTPUT in present else [])
    for a, b in pairs_of + [(WORD, m) for m in BASELINES]:
        pairs = [(r[a] - r[b], u) for r, u in zip(noun_rows, units)
                 if not (math.isnan(r.get(a, math.nan)) or math.isnan(r.get(b, math.nan)))]
        est = interval([d for d, _ in pairs], units=[u for _, u in pairs])
        out.append({"difference": f"{a} − {b}", "points": est[0], "low": est[1], "high": est[2],
                    "n images": est[3], "n nouns": len(pairs), "paired": True})
    two = [(r["DAAM word map"] - r["colour clusters"], r["id"]) for r in noun_rows if r.get("objects", 0) >= 2]
    est = interval([d for d, _ in two], units=[u for _, u in two])
    out.append({"difference": "DAAM word map − colour clusters, two-object scenes (the clusters cannot tell the "
                              "objects apart)", "points": est[0], "low": est[1], "high": est[2], "n images": est[3],
                "n nouns": len(two), "paired": True})
    g = [(r["generation vs annotator"], r["id"]) for r in noun_rows if not math.isnan(r["generation vs annotator"])]
    rr = [(r["render vs annotator"], r["id"]) for r in noun_rows if not math.isnan(r["render vs annotator"])]
    est = interval_difference([x for x, _ in g], [x for x, _ in rr], [u for _, u in g], [u for _, u in rr])
    out.append({"difference": "DAAM on generations − on renders (annotator)", "points": est[0], "low": est[1],
                "high": est[2], "n images": est[3], "n nouns": len(g) + len(rr), "paired": False})
    return pd.DataFrame(out)


def _concept_methods_in(noun_rows) -> list[str]:
    """The concept methods the rows were scored with (OVAM's, or ConceptAttention's two spaces)."""
    return [m for m in (OVAM, CROSS, OUTPUT) if any(m in r for r in noun_rows)]


def choose_absence_threshold(concept_rows, key: str = "peak") -> float:
    """The peak threshold that maximises balanced accuracy (present above, absent below) on these rows (val);
    ``key``: which peak (``"peak"``: the concept map's, :data:`OUTPUT_PEAK`: ConceptAttention's output space)."""
    peaks = np.array([r[key] for r in concept_rows], float)
    present = np.array([r["present"] for r in concept_rows], bool)
    if present.all() or not present.any():
        raise ValueError("choosing the absence threshold needs present and absent concepts on val")
    candidates = np.unique(peaks)
    best, best_t = -1.0, float(candidates[0])
    for t in candidates:
        bacc = 0.5 * ((peaks[present] >= t).mean() + (peaks[~present] < t).mean())
        if bacc > best:
            best, best_t = bacc, float(t)
    return best_t


def absence_tables(test_rows, val_rows):
    """:func:`absence_table` for each peak the rows hold (the concept map's; and ConceptAttention's output space,
    whose softmax over the concepts and a null concept is its own way to say "none of these"), each at its threshold
    chosen on ``val_rows``, one table."""
    import pandas as pd

    keys = ["peak"] + ([OUTPUT_PEAK] if test_rows and OUTPUT_PEAK in test_rows[0] else [])
    tables = [absence_table(test_rows, choose_absence_threshold(val_rows, k), key=k) for k in keys]
    return pd.concat(tables, ignore_index=True)


def absence_table(test_rows, threshold: float, n_boot: int = 2000, seed: int = 0, key: str = "peak"):
    """On test: the AUC of present vs absent concepts by peak (95% bootstrap interval over images), and at the val
    threshold how often an absent concept came out absent (specificity) and a present one present (sensitivity).
    ``key``: which peak; other than the concept map's, its measures are named after it."""
    import pandas as pd

    suffix = "" if key == "peak" else f", {key}"

    rng = np.random.default_rng(seed)
    ids = sorted({r["id"] for r in test_rows})
    by_id = {i: [r for r in test_rows if r["id"] == i] for i in ids}

    def stat(rows):
        return auc([r[key] for r in rows if r["present"]], [r[key] for r in rows if not r["present"]])

    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(ids), len(ids))
        boots.append(stat([r for k in pick for r in by_id[ids[k]]]))
    out = [{"measure": f"AUC, present vs absent concepts (by peak){suffix}", "value": stat(test_rows),
            "low": float(np.nanquantile(boots, 0.025)), "high": float(np.nanquantile(boots, 0.975)),
            "n": len(test_rows)}]
    for name, present, below in (("absent concepts that came out absent (%)", False, True),
                                 ("present concepts that came out present (%)", True, False)):
        rows = [r for r in test_rows if r["present"] == present]
        v = [100.0 * ((r[key] < threshold) == below) for r in rows]
        est = interval(v, units=[r["id"] for r in rows], bounds=(0, 100))
        out.append({"measure": name + suffix, "value": est[0], "low": est[1], "high": est[2], "n": est[3]})
    out.append({"measure": f"peak threshold (chosen on val){suffix}", "value": threshold, "low": math.nan,
                "high": math.nan, "n": math.nan})
    return pd.DataFrame(out)


def summary(methods, differences, absence) -> dict:
    out = {}
    for r in methods.to_dict("records"):
        out[f"{r['ground truth']}: {r['method']}"] = {"mean": r["mIoU"], "low": r["low"], "high": r["high"],
                                                      "n": r["n images"]}
    for r in differences.to_dict("records"):
        out[r["difference"]] = {"mean": r["points"], "low": r["low"], "high": r["high"], "n": r["n images"]}
    for r in absence.to_dict("records"):
        out[r["measure"]] = {"mean": r["value"], "low": r["low"], "high": r["high"], "n": r["n"]}
    return out


def paper_vs_here(noun_rows):
    """The paper maps generated images only; these rows judge DAAM's claims on real images by the same rules as the
    other notebooks: effects with their smallest size of interest, 95% intervals clustered by image."""
    from . import paper

    section = "not in the paper (issue 29): real images"
    units = [r["id"] for r in noun_rows]
    out = []
    for b, smallest in (("whole image", 2.0), ("colour clusters", 2.0)):
        v = [(r["DAAM word map"] - r[b], u) for r, u in zip(noun_rows, units)]
        est = paper.interval([x for x, _ in v], units=[u for _, u in v])
        out.append(paper.row(section, f"DAAM word map on renders − {b} (IoU points)", math.nan, *est[:3], est[3],
                             paper.effect(est[1], est[2], smallest, n=est[3],
                                          why=f"ahead of the {b} by {smallest:g}, as DAAM against a baseline")))
    two = [(r["DAAM word map"] - r["colour clusters"], u) for r, u in zip(noun_rows, units) if r.get("objects", 0) >= 2]
    est = paper.interval([x for x, _ in two], units=[u for _, u in two])
    out.append(paper.row(section, "DAAM word map on two-object renders − colour clusters (IoU points)", math.nan,
                         *est[:3], est[3], paper.effect(est[1], est[2], 2.0, n=est[3],
                                                        why="where the text-free clusters cannot separate the objects")))
    g = [(r["generation vs annotator"], u) for r, u in zip(noun_rows, units) if not math.isnan(r["generation vs annotator"])]
    rr = [(r["render vs annotator"], u) for r, u in zip(noun_rows, units) if not math.isnan(r["render vs annotator"])]
    est = paper.interval_difference([x for x, _ in g], [x for x, _ in rr], [u for _, u in g], [u for _, u in rr])
    out.append(paper.row(section, "DAAM on the model's generations − on renders, both scored by the annotator (IoU "
                         "points)", math.nan, *est[:3], est[3],
                         paper.no_effect(est[1], est[2], 5.0, n=est[3], why="maps of an existing image as good as of "
                                                                           "the model's own (within 5 points)"),
                         groups=[len({u for _, u in g}), len({u for _, u in rr})]))
    for m in _concept_methods_in(noun_rows):
        v = [(r[m] - r[WORD], u) for r, u in zip(noun_rows, units) if not math.isnan(r.get(m, math.nan))]
        est = paper.interval([x for x, _ in v], units=[u for _, u in v])
        out.append(paper.row(section, f"{m} − DAAM word map of the same noun (IoU points)", math.nan,
                             *est[:3], est[3], paper.no_effect(est[1], est[2], 5.0, n=est[3],
                                                               why="a noun's concept map as good as its own word map "
                                                                   "(within 5 points), what swapping one for the other "
                                                                   "needs")))
    if OUTPUT in _concept_methods_in(noun_rows):  # ConceptAttention's claim: output space segments better
        v = [(r[OUTPUT] - r[CROSS], u) for r, u in zip(noun_rows, units)
             if not math.isnan(r.get(OUTPUT, math.nan) - r.get(CROSS, math.nan))]
        est = paper.interval([x for x, _ in v], units=[u for _, u in v])
        out.append(paper.row("ConceptAttention (Helbling et al. 2025)", "concept map, output space − cross-attention "
                             "space (IoU points)", math.nan, *est[:3], est[3],
                             paper.effect(est[1], est[2], 2.0, n=est[3], why="ConceptAttention's claim: its output "
                                                                            "space segments better than cross-attention")))
    return paper.table(out)


class RealExamplesDisplay:
    """Renders, their word maps and concept maps (present and absent), the exact mask outlined."""

    def __init__(self, items, n: int = 3):
        self.items = [it for it in items if "heat_maps" in it][:n]

    def plot(self, model: str = ""):
        import matplotlib.pyplot as plt

        from ..heatmap import draw_overlay

        outputs = any(getattr(it["heat_maps"], "concept_outputs", None) is not None for it in self.items)
        cols = 6 if outputs else 5  # ConceptAttention's output space beside its cross-attention maps
        fig, axes = plt.subplots(len(self.items), cols, figsize=(2.1 * cols, 2.2 * len(self.items)), squeeze=False,
                                 layout="constrained")
        for ax_row, it in zip(axes, self.items):
            hm = it["heat_maps"]
            index, exact = next(iter(it["masks"].items()))
            word = it["words"][index]
            concept = it["concept_of"].get(index)
            absent = it["concept_absent"][0] if it["concept_absent"] else None
            ax_row[0].imshow(it["image"])
            ax_row[0].set_title(textwrap.fill(it["caption"], 34), fontsize=6)
            panels = [(f"word '{word}'", hm[word, it["words"][:index].count(word)].normalized()),
                      (f"concept '{concept}'" + (", cross-attention" if outputs else ""),
                       hm.concepts[concept].normalized() if concept else None),
                      (f"concept '{concept}' (raw)", hm.concepts[concept].heat if concept else None),
                      (f"absent '{absent}' (raw)", hm.concepts[absent].heat if absent else None)]
            if outputs:
                panels.append((f"concept '{concept}', output space",
                               hm.concept_outputs[concept].normalized() if concept else None))
            heats = [hm.concepts[c].heat for c in hm.concepts.words]
            vmin, vmax = min(float(h.min()) for h in heats), max(float(h.max()) for h in heats)
            for ax, (title, m) in zip(ax_row[1:], panels):
                if m is not None:
                    raw = "raw" in title
                    draw_overlay(ax, it["image"], ((m - vmin) / (vmax - vmin)) if raw else m, "jet", 0.5)
                    ax.contour(np.asarray(exact, bool), levels=[0.5], colors="white", linewidths=1)
                ax.set_title(title, fontsize=7)
            for ax in ax_row:
                ax.set_axis_off()
        fig.suptitle(textwrap.fill(f"Renders no model drew{f' ({model})' if model else ''}: word and concept maps; "
                                   "white: the noun's exact mask; 'raw' panels share one scale per image (from the "
                                   "lowest to the highest value of all its concept maps), so an absent concept can "
                                   "look absent", 120), fontsize=7)
        self.figure_, self.ax_ = fig, axes
        return self


def plot_real_examples(items, n: int = 3, model: str = "") -> RealExamplesDisplay:
    return RealExamplesDisplay(items, n).plot(model)
