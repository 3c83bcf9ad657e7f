"""A blind check of the annotator on *generated* images: a person labels objects by eye, then the annotator is scored.

    python -m daamlib.shapeworld.label_check grids out/quality/shapeworld/runs out/quality/shapeworld-clip/runs
    # a person fills out/label_check/labels.csv (columns object,label) from the grids alone
    python -m daamlib.shapeworld.label_check score

``grids`` finds blobs with the annotator's colour segmentation only (:func:`~daamlib.shapeworld.annotator.segment`),
samples them evenly from each runs folder, and draws numbered, enlarged crops (a box around the blob) on labelling
grids — no shape call, no prompt. The annotator's calls go to a hidden ``key.json`` that the labeller never sees.
Valid labels: the world's :data:`~daamlib.shapeworld.world.SHAPES`, ``unsure`` and ``not an object``.

``score`` reads the labels and the key: the annotator's accuracy on its sure calls, how many it called unsure
(unknown), accuracy with those counted as right and as wrong, and how many of the person's ``unsure`` it was
unsure of too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .world import SHAPES

OUT = Path("out/label_check")
UNSURE, NOT_AN_OBJECT = "unsure", "not an object"
LABELS = (*SHAPES, UNSURE, NOT_AN_OBJECT)


def generated_images(runs: str | Path) -> list[tuple[str, Path]]:
    """(item id, image path) of every finished item of a runner folder (one with a manifest record)."""
    runs = Path(runs)
    return [(m.stem, runs / "items" / m.stem / "image.png") for m in sorted((runs / "manifest").glob("*.json"))
            if (runs / "items" / m.stem / "image.png").exists()]


def sample_objects(runs_dirs: list[str | Path], n_objects: int = 180, seed: int = 0, annotator=None) -> list[dict]:
    """``n_objects`` blobs, as evenly as possible from each runs folder, in random order, numbered 1…n: the key
    (``id``, ``source``, ``item``, ``image``, ``bbox`` x0 y0 x1 y1, and the annotator's ``shape``, ``colour``,
    ``confidence``, ``shape_prob``, ``colour_fit``, ``sure``)."""
    from PIL import Image

    from .annotator import Annotator

    annotator = annotator or Annotator.load()
    rng = np.random.default_rng(seed)
    per = [n_objects // len(runs_dirs) + (k < n_objects % len(runs_dirs)) for k in range(len(runs_dirs))]
    chosen = []
    for runs, want in zip(runs_dirs, per):
        images = generated_images(runs)
        if not images:
            raise FileNotFoundError(f"no finished items in {runs}; generate some with daamlib.shapeworld.quality")
        pool = []
        for item, path in [images[i] for i in rng.permutation(len(images))]:
            dets, _ = annotator.detect(np.asarray(Image.open(path).convert("RGB")))
            pool += [(item, path, d) for d in dets]
            if len(pool) >= 2 * want:
                break
        for k in rng.permutation(len(pool))[:want]:
            item, path, d = pool[k]
            chosen.append({"source": str(runs), "item": item, "image": str(path), "bbox": list(d.bbox),
                           "shape": d.shape, "colour": d.colour, "confidence": round(d.confidence, 4),
                           "shape_prob": round(d.shape_prob, 4), "colour_fit": round(d.colour_fit, 4),
                           "sure": bool(d.sure())})
    chosen = [chosen[k] for k in rng.permutation(len(chosen))]
    for i, o in enumerate(chosen, 1):
        o["id"] = i
    return chosen


def draw_grids(objects: list[dict], out_dir: str | Path, per_grid: int = 30, margin: int = 6) -> list[Path]:
    """Labelling grids (6 columns): each object's crop (bbox plus ``margin`` px of context), enlarged, with a cyan
    box around the blob and its number. Nothing else: no shape call, no prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for g in range(0, len(objects), per_grid):
        chunk = objects[g : g + per_grid]
        rows = -(-len(chunk) // 6)
        fig, axes = plt.subplots(rows, 6, figsize=(6 * 2.0, rows * 2.15))
        for ax in np.ravel(axes):
            ax.axis("off")
        for ax, o in zip(np.ravel(axes), chunk):
            im = np.asarray(Image.open(o["image"]).convert("RGB"))
            x0, y0, x1, y1 = o["bbox"]
            H, W = im.shape[:2]
            cx0, cy0, cx1, cy1 = max(0, x0 - margin), max(0, y0 - margin), min(W, x1 + margin), min(H, y1 + margin)
            ax.imshow(im[cy0:cy1, cx0:cx1], interpolation="nearest")
            ax.add_patch(plt.Rectangle((x0 - cx0 - 1.5, y0 - cy0 - 1.5), x1 - x0 + 2, y1 - y0 + 2, fill=False, ec="cyan",
                                       lw=1))  # one pixel outside the blob: its edge stays visible
            ax.set_title(f"{o['id']}", fontsize=12, fontweight="bold")
        fig.tight_layout()
        path = out / f"grid_{g // per_grid + 1:02d}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def make(runs_dirs: list[str | Path], out_dir: str | Path = OUT, n_objects: int = 180, per_grid: int = 30,
         seed: int = 0) -> list[Path]:
    """Sample, draw the grids into ``out_dir/grids``, write the hidden ``key.json`` and then ``GRIDS_READY``."""
    out = Path(out_dir)
    objects = sample_objects(runs_dirs, n_objects, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "key.json").write_text(json.dumps({str(o["id"]): o for o in objects}, indent=1))
    paths = draw_grids(objects, out / "grids", per_grid)
    (out / "GRIDS_READY").write_text(
        "Label every numbered object in these grids by eye (the blob inside the cyan box), one row per object,\n"
        f"into {out / 'labels.csv'} with the header `object,label`; objects are numbered 1 to {len(objects)}.\n\n"
        "grids:\n" + "".join(f"  {p}\n" for p in paths) + "\nvalid labels:\n" + "".join(f"  {x}\n" for x in LABELS))
    return paths


def score(labels: dict[str, str], key: dict[str, dict]) -> dict:
    """The annotator against a person's labels (object id → label; key: object id → the annotator's call).

    Objects the person labelled ``unsure`` are left out of every accuracy and reported on their own. Of the rest
    (a shape or ``not an object``), a call is right when it is the person's shape (a shape call on ``not an
    object`` is wrong); *sure* calls are those at or above the threshold the key was made with."""
    bad = sorted({v for v in labels.values() if v not in LABELS})
    if bad:
        raise ValueError(f"labels {bad} are not valid; use one of: {', '.join(LABELS)}")
    missing = sorted(set(labels) - set(key), key=str)
    if missing:
        raise ValueError(f"objects {missing[:10]} are labelled but not in the key")
    judged = [(key[k], v) for k, v in labels.items() if v != UNSURE]
    sure = [(o, v) for o, v in judged if o["sure"]]
    right_sure = sum(o["shape"] == v for o, v in sure)
    n_unknown = len(judged) - len(sure)
    human_unsure = [key[k] for k, v in labels.items() if v == UNSURE]
    by_label = {x: sum(v == x for v in labels.values()) for x in LABELS if any(v == x for v in labels.values())}

    def pct(a, b):
        return 100.0 * a / b if b else float("nan")

    return {"labelled": len(labels), "in_key": len(key), "by_label": by_label, "judged": len(judged),
            "sure": len(sure), "unknown": n_unknown, "unknown_pct": pct(n_unknown, len(judged)),
            "accuracy_sure_pct": pct(right_sure, len(sure)),
            "accuracy_unknown_as_right_pct": pct(right_sure + n_unknown, len(judged)),
            "accuracy_unknown_as_wrong_pct": pct(right_sure, len(judged)),
            "accuracy_all_calls_pct": pct(sum(o["shape"] == v for o, v in judged), len(judged)),
            "shapes": sum(v in SHAPES for _, v in judged), "shapes_sure": sum(v in SHAPES for _, v in sure),
            "accuracy_sure_on_shapes_pct": pct(sum(o["shape"] == v for o, v in sure), sum(v in SHAPES for _, v in sure)),
            "not_an_object": sum(v == NOT_AN_OBJECT for _, v in judged),
            "not_an_object_called_unknown": sum(v == NOT_AN_OBJECT and not o["sure"] for o, v in judged),
            "human_unsure": len(human_unsure), "human_unsure_called_unknown": sum(not o["sure"] for o in human_unsure),
            "wrong_sure_calls": sorted(f"{o['shape']}->{v}" for o, v in sure if o["shape"] != v),
            "by_source": {src: {"judged": sum(str(o.get("source")) == src for o, _ in judged),
                                "sure": sum(str(o.get("source")) == src for o, _ in sure),
                                "accuracy_sure_pct": pct(sum(str(o.get("source")) == src and o["shape"] == v for o, v in sure),
                                                         sum(str(o.get("source")) == src for o, _ in sure))}
                          for src in sorted({str(o.get("source")) for o, _ in judged})}}


def read_labels(path: str | Path) -> dict[str, str]:
    """``object,label`` CSV → {object id: label}; labels lower-cased and stripped, blank rows skipped."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"object", "label"} <= set(rows[0]):
        raise ValueError(f"{path} needs the columns object,label; it has {', '.join(rows[0])}")
    return {str(r["object"]).strip(): r["label"].strip().lower() for r in rows if (r.get("label") or "").strip()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grids", help="draw the labelling grids and the hidden key")
    g.add_argument("runs", nargs="+", help="runner folders of generated images (e.g. out/quality/<model>/runs)")
    g.add_argument("--n", type=int, default=180, help="objects in all")
    g.add_argument("--per-grid", type=int, default=30)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=str(OUT))
    s = sub.add_parser("score", help="score the annotator against labels.csv")
    s.add_argument("--out", default=str(OUT), help="folder with key.json and labels.csv")
    s.add_argument("--json", default=None, help="also write the score to this JSON")
    a = p.parse_args(argv)
    if a.cmd == "grids":
        import torch

        torch.set_num_threads(1)
        for path in make(a.runs, a.out, a.n, a.per_grid, a.seed):
            print(path)
        return 0
    out = Path(a.out)
    res = score(read_labels(out / "labels.csv"), json.loads((out / "key.json").read_text()))
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
