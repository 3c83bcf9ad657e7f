"""Editing (issue 30): does the changed word's map cover what the edit should change?

>>> items = source.edit_items(20, seed=0)                                   # doctest: +SKIP
>>> rows = edit_rows(edit_pipe, items, strength=0.6, threshold=0.4)        # doctest: +SKIP
>>> edit_table(rows)                                                        # doctest: +SKIP

A world renders a scene and knows each object's exact region; an edit recolours one object (its colour word
swapped in the prompt) and starts from the rendered scene (img2img at ``strength``). The changed word's DAAM-τ mask
is scored (IoU) against two regions: the one the edit *should* change (the object, exactly), and the one that *did*
change (pixels that took the new colour: within :data:`NEAR` of its RGB after the edit, not before), beside the
baselines that matter: the unchanged colour word's mask on the same regions, and the whole image. Whether the edit
worked is recorded too (the share of the object that took the new colour): a map can only show where a word acted,
and a model that paints the wrong object moves the word's map there.
"""

from __future__ import annotations

import numpy as np

from ..heatmap import HeatMaps
from ..pipeline import generate
from ..stats import iou
from .paper import interval

NEAR = 60.0  # RGB distance within which a pixel has "the new colour" (the world's colours are ≥ 90 apart)


def edit_rows(pipe, items, strength: float = 0.6, threshold: float = 0.4, steps=None, guidance=None) -> list[dict]:
    """One row per item: the edit traced, the changed word's and the kept word's masks scored on the region."""
    import torch
    from PIL import Image

    rows = []
    for it in items:
        hm: HeatMaps = generate(pipe, it["prompt"], seed=it["seed"], steps=steps, guidance_scale=guidance,
                                image=Image.fromarray(it["image"]), strength=strength)
        region = torch.as_tensor(np.asarray(it["region"], bool))
        changed = hm[it["word"], it["occurrence"]].binarize(threshold)
        kept = hm[it["kept"], 0].binarize(threshold)
        rgb = np.asarray(it["rgb"], float)
        near = [np.linalg.norm(img.astype(float) - rgb, axis=-1) < NEAR for img in (it["image"], hm.image)]
        took = torch.as_tensor(near[1] & ~near[0])  # took the new colour in the edit
        whole = torch.ones_like(region)
        rows.append({"id": it["id"], "prompt": it["prompt"], "word": it["word"], "kept": it["kept"],
                     "iou_changed_word": 100 * float(iou(changed, region)),
                     "iou_kept_word": 100 * float(iou(kept, region)),
                     "iou_whole_image": 100 * float(iou(whole, region)),
                     "iou_changed_word_took": 100 * float(iou(changed, took)) if took.any() else float("nan"),
                     "iou_kept_word_took": 100 * float(iou(kept, took)) if took.any() else float("nan"),
                     "iou_whole_image_took": 100 * float(iou(whole, took)) if took.any() else float("nan"),
                     "object_recoloured": 100 * float(took[region].float().mean()),
                     "steps_run": hm.steps_completed, "heat_maps": hm, "image": it["image"],
                     "region": np.asarray(it["region"], bool), "took": took.numpy()})
    return rows


def edit_table(rows):
    """mIoU (×100) of each map on the region the edit should change and on the region that did, with its 95%
    interval over the edits, the paired difference changed word − kept word, and how often the edit worked."""
    import pandas as pd

    out = []
    for region, suffix in (("should change (the object)", ""), ("did change (took the new colour)", "_took")):
        for name, key in (("changed word's DAAM mask", "iou_changed_word"), ("kept word's DAAM mask", "iou_kept_word"),
                          ("whole image", "iou_whole_image")):
            est = interval([r[key + suffix] for r in rows], bounds=(0, 100))
            out.append({"region": region, "map": name, "mIoU": est[0], "low": est[1], "high": est[2], "n": est[3]})
        est = interval([r["iou_changed_word" + suffix] - r["iou_kept_word" + suffix] for r in rows])
        out.append({"region": region, "map": "changed − kept (paired)", "mIoU": est[0], "low": est[1], "high": est[2],
                    "n": est[3]})
    est = interval([r["object_recoloured"] for r in rows], bounds=(0, 100))
    out.append({"region": "the edit worked", "map": "share of the object that took the new colour (%)",
                "mIoU": est[0], "low": est[1], "high": est[2], "n": est[3]})
    return pd.DataFrame(out)


def summary(rows) -> dict:
    """The headline numbers 07 records."""
    table = edit_table(rows)
    return {f"{r['region']}: {r['map']}": {"mean": r["mIoU"], "low": r["low"], "high": r["high"], "n": r["n"]}
            for r in table.to_dict("records")}


class EditExamplesDisplay:
    """The scene, its edit, and the changed word's map with the region that should change outlined."""

    def __init__(self, rows, n: int = 4):
        self.rows = list(rows)[:n]

    def plot(self, model: str = ""):
        import matplotlib.pyplot as plt

        from ..heatmap import draw_overlay

        fig, axes = plt.subplots(len(self.rows), 3, figsize=(6.6, 2.3 * len(self.rows)), squeeze=False,
                                 layout="constrained")
        for ax_row, r in zip(axes, self.rows):
            wm = r["heat_maps"][r["word"]]
            ax_row[0].imshow(r["image"])
            ax_row[0].set_title("scene", fontsize=8)
            ax_row[1].imshow(r["heat_maps"].image)
            ax_row[1].set_title(r["prompt"], fontsize=6)
            draw_overlay(ax_row[2], r["heat_maps"].image, wm.normalized(), "jet", 0.5)
            ax_row[2].contour(r["region"], levels=[0.5], colors="white", linewidths=1)
            if r["took"].any():
                ax_row[2].contour(r["took"], levels=[0.5], colors="black", linewidths=1, linestyles="dashed")
            ax_row[2].set_title(f"'{r['word']}' (IoU {r['iou_changed_word']:.0f})", fontsize=8)
            for ax in ax_row:
                ax.set_axis_off()
        fig.suptitle(f"Edits traced{f' ({model})' if model else ''}: the changed word's map; white: the object to "
                     "recolour, dashed: what took the new colour", fontsize=8)
        self.figure_, self.ax_ = fig, axes
        return self


def plot_edit_examples(rows, n: int = 4, model: str = "") -> EditExamplesDisplay:
    return EditExamplesDisplay(rows, n).plot(model)


def paper_vs_here(rows):
    """The paper has no editing study; these rows judge what DAAM claims of any map (a word's map sits where the word
    acted) on edits, by the same rules: effects with their smallest size of interest, 95% intervals over the edits."""
    import math

    from . import paper

    section = "not in the paper (issue 30): an edit's changed word"
    out = []
    for region, suffix in (("the object to recolour", ""), ("what took the new colour", "_took")):
        for other, key, smallest, why in (
                ("the kept word's", "iou_kept_word", 5.0, "the changed word's map ahead of an unchanged word's by 5"),
                ("the whole image", "iou_whole_image", 2.0, "ahead of the whole image by 2, as DAAM against a baseline")):
            values = [r["iou_changed_word" + suffix] - r[key + suffix] for r in rows]
            est = paper.interval(values)
            out.append(paper.row(section, f"on {region}: changed word's mIoU − {other} (points)", math.nan, *est[:3],
                                 est[3], paper.effect(est[1], est[2], smallest, n=est[3], why=why)))
    return paper.table(out)
