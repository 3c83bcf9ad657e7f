"""The embedded model's quality bars (issue 3), measured on held-out two-object prompts.

    python -m daamlib.shapeworld.quality --n 200 --out out/quality

For ``n`` two-object prompts of the *test* split (captions never seen in training), sampled
with the shipped scheduler:

* **generation**: both objects present with the right shape and, when the caption names it,
  the right colour (the annotator decides);
* **segmentation**: DAAM-τ noun masks (min–max Eq. 7, as the paper's code) against the
  annotator's masks of the nouns it found: mIoU, beside the baselines that matter — the whole
  image, the text-free foreground (every object the annotator finds, whichever noun), k-means
  colour clusters, and the other noun's DAAM-τ mask (the word-specificity control) — and the
  annotator's own ceiling (:func:`annotator_ceiling`: on the same captions' true scenes after a VAE
  round trip it finds both objects in 85.5% (95% CI 80.6–90.4) at the shipped weights);
* **adjectives**: for colour words, the share of the map's mass on the word's own object
  against the other object;
* **end-of-text share**: the end-of-text token's share of the map mass of all recorded tokens (start to end;
  padding is not recorded), a sign of a caption packed into that token by a contextual encoder.

* **missing nouns** (issue 24): can a noun's map tell that the model left the noun out? Per map statistic
  (:data:`daamlib.studies.segmentation.MAP_STATISTICS`) the medians for drawn and missing nouns and the ROC AUC
  with a 95% bootstrap interval, on the nouns the annotator is sure of; nouns it is unsure of (only an object
  below :data:`~daamlib.shapeworld.annotator.UNSURE_BELOW` could be them) are counted, not scored. Written to
  ``missing_nouns.csv`` / ``.json`` beside ``quality.json``, with the per-noun rows and a figure;
* **both objects right, with unknowns**: the bar's rule takes every shape call at face value; beside it the
  share on prompts with no unknown noun, and with unknowns counted as right and as wrong.

Generated images and maps go to ``--runs`` (default ``out/quality/<model>/runs``), so ``--out`` can be a
folder of small files (``figures/quality/<model>``).

``--compare A.json B.json`` prints two runs' summaries side by side as a Markdown table.

Nothing here feeds back into training (the rules of issue 3): the test split is only read.
Sampling settings (steps, guidance) are chosen with ``--split val`` (validation captions), never
on the test split the bars are reported on.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .world import COLOURS, SHAPES, ShapeWorld

BARS = {"both_correct_pct": 60.0, "miou_daam": 50.0, "miou_margin_over_whole": 25.0}
BASELINES = ("whole", "foreground", "clusters", "other")  # per-noun IoU keys beside "daam"


def _targets(words: list[str]) -> list[tuple[int, str, str | None, int | None]]:
    """(noun position, shape, colour or None, colour word position or None) for each noun of a caption."""
    out, colour, colour_at = [], None, None
    for i, w in enumerate(words):
        if w in COLOURS:
            colour, colour_at = w, i
        elif w in SHAPES:
            out.append((i, w, colour, colour_at))
            colour = colour_at = None
    return out


def _found(ann, targets) -> list[bool]:
    """Per noun target: is an object of its shape (and named colour) among the annotation's objects? Every shape
    call is taken at face value, however unsure (the generation bar's rule)."""
    return [any(d.shape == s and (c is None or d.colour == c) for d in ann.objects) for _, s, c, _ in targets]


def _status(ann, targets) -> list[str]:
    """Per noun target: drawn (a confident object of its shape and named colour), unknown or missing
    (:func:`~daamlib.shapeworld.annotator.noun_status` with the colour required)."""
    from .annotator import noun_status

    return [noun_status(ann.objects, s, c, require_colour=True)[0] for _, s, c, _ in targets]


def both_found(image, caption: str, annotator) -> bool:
    """The generation bar's rule: every noun of a two-object caption found with its shape and named colour."""
    targets = _targets(caption.split())
    return len(targets) == 2 and all(_found(annotator.annotate(image, caption), targets))


def annotator_ceiling(vae, n: int = 200, split: str = "test", start: int = 0, phrasing: str = "canonical") -> dict:
    """How often the annotator finds both objects of *true* two-object scenes after a VAE round trip: the best a
    generated image (always a VAE decoding) can score on the generation bar. The same scenes and captions as
    :func:`evaluate` (:func:`scenes_for`)."""
    from ..stats import mean_ci
    from .annotator import Annotator
    from .model import reconstruct_images

    annotator = Annotator.load()
    chosen = scenes_for(n, split, start, phrasing)
    scenes, captions = [s for _, s, _ in chosen], [c for _, _, c in chosen]
    images = reconstruct_images(vae, np.stack([s.image for s in scenes]))
    ok = mean_ci([100.0 * both_found(im, c, annotator) for im, c in zip(images, captions)])
    rendered = mean_ci([100.0 * both_found(s.image, c, annotator) for s, c in zip(scenes, captions)])
    return {"prompts": n, "split": split, "phrasing": phrasing, "both_found_pct": ok.mean, "ci": [ok.low, ok.high],
            "rendered_both_found_pct": rendered.mean}


def scenes_for(n: int, split: str, start: int = 0, phrasing: str = "canonical") -> list[tuple]:
    """``(index, scene, caption)`` of the ``n`` two-object scenes of ``split`` from ``start`` that ``phrasing`` (a
    family of :mod:`daamlib.shapeworld.phrasings`) says differently from the world (every scene for canonical),
    captioned in it."""
    from .phrasings import FAMILIES, applies, rephrase

    if phrasing not in FAMILIES:
        raise ValueError(f"unknown phrasing {phrasing!r}; choose one of {FAMILIES}")
    world, out, i = ShapeWorld(), [], start
    while len(out) < n:
        scene = world.scene(split, i, kind="pair")
        if phrasing == "canonical" or applies(scene, phrasing):
            out.append((i, scene, rephrase(scene, phrasing)))
        i += 1
    return out


def score(hm, caption: str, annotator, threshold: float = 0.4) -> dict:
    """One generated image: correctness, noun IoUs (DAAM and whole image), colour-word mass split."""
    from ..stats import iou, mass_on_region

    ann = annotator.annotate(hm.image, caption)
    words = caption.split()
    targets = _targets(words)
    found = _found(ann, targets)
    from ..studies.segmentation import colour_clusters

    status = _status(ann, targets)
    row = {"caption": caption, "nouns": len(targets), "both_correct": len(targets) == 2 and all(found),
           "status": status,
           "daam_iou": [], **{f"{b}_iou": [] for b in BASELINES}, "colour_own": [], "colour_other": []}
    mass = hm.token_maps().sum(dim=(1, 2))  # [tokens]
    row["eot_share"] = float(mass[-1] / mass.sum()) if hm.tokens[-1] == "<|endoftext|>" else float("nan")
    whole = torch.ones(hm.size, dtype=torch.bool)
    foreground = torch.from_numpy(~ann.background_mask)
    clusters = colour_clusters(hm.image)
    noun_masks = {pos: hm.word_at(pos).binarize(threshold) for pos, *_ in targets}
    objects = {}
    for (pos, shape, colour, colour_at), ok in zip(targets, found):
        truth = ann.noun_masks.get(pos)
        if truth is None or not truth.any():
            continue
        truth = torch.from_numpy(truth)
        objects[pos] = truth
        row["daam_iou"].append(iou(noun_masks[pos], truth))
        row["whole_iou"].append(iou(whole, truth))
        row["foreground_iou"].append(iou(foreground, truth))
        row["clusters_iou"].append(iou(clusters, truth))
        others = [m for p, m in noun_masks.items() if p != pos]
        row["other_iou"].append(float(np.mean([iou(m, truth) for m in others])) if others else float("nan"))
    if len(objects) == 2:
        (p1, m1), (p2, m2) = objects.items()
        if not (m1 & m2).any():
            for (pos, _, _, colour_at) in targets:
                if colour_at is None or pos not in objects:
                    continue
                own, other = (m1, m2) if pos == p1 else (m2, m1)
                heat = hm.word_at(colour_at).heat
                row["colour_own"].append(mass_on_region(heat, own))
                row["colour_other"].append(mass_on_region(heat, other))
    return row


def summarize(rows: list[dict]) -> dict:
    from ..stats import mean_ci

    def flat(key):
        return [v for r in rows for v in r[key]]

    daam, whole = mean_ci(flat("daam_iou")), mean_ci(flat("whole_iou"))
    own, other = np.array(flat("colour_own")), np.array(flat("colour_other"))
    both = mean_ci([100.0 * r["both_correct"] for r in rows])
    out = {
        "prompts": len(rows),
        "both_correct_pct": 100 * float(np.mean([r["both_correct"] for r in rows])),
        "both_correct_ci": [both.low, both.high],
        "nouns_scored": daam.n,
        "miou_daam": 100 * daam.mean, "miou_daam_ci": [100 * daam.low, 100 * daam.high],
        "miou_whole": 100 * whole.mean,
        **{f"miou_{b}": 100 * mean_ci(flat(f"{b}_iou")).mean for b in BASELINES[1:]},
        **{f"miou_{b}_ci": [100 * mean_ci(flat(f"{b}_iou")).low, 100 * mean_ci(flat(f"{b}_iou")).high]
           for b in BASELINES[1:]},
        "colour_words_scored": len(own),
        "colour_mass_own": float(own.mean()) if len(own) else float("nan"),
        "colour_mass_other": float(other.mean()) if len(other) else float("nan"),
        "colour_own_beats_other_pct": 100 * float((own > other).mean()) if len(own) else float("nan"),
    }
    eot = [r["eot_share"] for r in rows if "eot_share" in r and r["eot_share"] == r["eot_share"]]
    if eot:
        e = mean_ci(eot)
        out["eot_share"], out["eot_share_ci"] = e.mean, [e.low, e.high]
    out["miou_margin_over_whole"] = out["miou_daam"] - out["miou_whole"]
    if all("status" in r for r in rows):
        out.update(both_correct_with_unknowns(rows))
    out["bars"] = {
        "both objects right ≥ 60%": out["both_correct_pct"] >= BARS["both_correct_pct"],
        "DAAM-0.4 mIoU ≥ 50": out["miou_daam"] >= BARS["miou_daam"],
        "≥ 25 points above whole image": out["miou_margin_over_whole"] >= BARS["miou_margin_over_whole"],
        "colour maps favour their own object": out["colour_mass_own"] > out["colour_mass_other"],
    }
    return out


def both_correct_with_unknowns(rows: list[dict]) -> dict:
    """Both objects right (confidently drawn, shape and named colour) over two-object prompts: with prompts that
    have an unknown noun left out (``_sure``, with its 95% CI), and with unknowns counted as right and as wrong."""
    from ..stats import mean_ci

    pairs = [r["status"] for r in rows if len(r["status"]) == 2]
    sure = [all(s == "drawn" for s in st) for st in pairs if "unknown" not in st]
    right = [all(s != "missing" for s in st) for st in pairs]
    wrong = [all(s == "drawn" for s in st) for st in pairs]
    ci = mean_ci([100.0 * v for v in sure]) if sure else None
    return {"both_correct_sure_pct": ci.mean if ci else float("nan"),
            "both_correct_sure_ci": [ci.low, ci.high] if ci else [float("nan")] * 2, "prompts_sure": len(sure),
            "prompts_with_unknown": len(pairs) - len(sure),
            "nouns_unknown": sum(s == "unknown" for r in rows for s in r["status"]),
            "both_correct_unknown_as_right_pct": 100 * float(np.mean(right)) if pairs else float("nan"),
            "both_correct_unknown_as_wrong_pct": 100 * float(np.mean(wrong)) if pairs else float("nan")}


def write_missing_table(records: list[dict], annotator, out_dir: str | Path, threshold: float = 0.4,
                        figure: bool = True, model: str = ""):
    """The missing-noun table of these runs (annotator as ground truth, sure nouns only; unknowns counted):
    ``missing_nouns.csv`` and ``.json``, the per-noun rows ``noun_rows.csv`` and ``missing_nouns.png`` in ``out_dir``."""
    from ..studies.segmentation import missing_table, noun_map_rows, plot_missing
    from .studies import AnnotatorTruth

    rows = noun_map_rows(records, AnnotatorTruth(annotator), threshold)
    table = missing_table(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows.round(5).to_csv(out / "noun_rows.csv", index=False)
    table.round(4).to_csv(out / "missing_nouns.csv", index=False)
    (out / "missing_nouns.json").write_text(json.dumps(table.to_dict(orient="records"), indent=1))
    if figure and len(table):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        d = plot_missing(rows, model=model)  # its title names the model
        d.figure_.savefig(out / "missing_nouns.png", dpi=110)
        plt.close(d.figure_)
    return table


def evaluate(model: str = "shapeworld", n: int = 200, out_dir: str | Path = "out/quality", steps: int = 30,
             guidance: float = 5.0, threshold: float = 0.4, start: int = 0, device: str = "cpu",
             progress: bool = True, split: str = "test", runs_dir: str | Path | None = None,
             phrasing: str = "canonical") -> dict:
    """Generate (resumably, into ``runs_dir``, default ``out_dir/runs``) and score ``n`` two-object prompts of
    ``split`` (test: the bars; val: for choosing sampling settings); returns the summary and writes it, with the
    missing-noun table (:func:`write_missing_table`), to ``out_dir``. ``phrasing``: a family of
    :mod:`daamlib.shapeworld.phrasings`; other than canonical, the prompts are the first ``n`` scenes from ``start``
    that the family says differently (e.g. only those with a background phrase for "background first")."""
    from .. import load_experiment, load_pipeline
    from ..runner import run_experiments
    from .annotator import UNSURE_BELOW, Annotator

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' (to choose settings) or 'test' (the bars), not {split!r}")
    items = [{"id": f"q-{i:04d}", "prompt": caption, "seed": i}
             for i, _, caption in scenes_for(n, split, start, phrasing)]
    pipe = load_pipeline(model, device=device)
    runs_dir = Path(out_dir) / ("runs" if phrasing == "canonical" else "runs-" + phrasing.replace(" ", "-")) \
        if runs_dir is None else Path(runs_dir)
    records = run_experiments(pipe, items, runs_dir, defaults={"steps": steps, "guidance": guidance},
                              model_name=model, progress=progress)
    annotator = Annotator.load()
    rows = [score(load_experiment(r["path"])[0], r["prompt"], annotator, threshold) for r in records]
    summary = {"model": model, "split": split, "phrasing": phrasing, "steps": steps, "guidance": guidance, "threshold": threshold,
               "scheduler": type(pipe.scheduler).__name__, "unsure_below": UNSURE_BELOW, **summarize(rows),
               "annotator_ceiling": annotator_ceiling(copy.deepcopy(pipe.vae).float().cpu(), n, split, start, phrasing)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    table = write_missing_table(records, annotator, out_dir, threshold, model=model)
    summary["missing_nouns"] = table.to_dict(orient="records")
    (Path(out_dir) / "quality.json").write_text(json.dumps(summary, indent=1))
    with open(Path(out_dir) / "prompts.csv", "w", newline="") as f:  # per prompt, for paired comparisons
        w = csv.writer(f)
        w.writerow(["id", "seed", "prompt", "both_correct"])
        w.writerows([it["id"], it["seed"], it["prompt"], int(r["both_correct"])] for it, r in zip(items, rows))
    return summary


def paired_both_correct(a: str | Path, b: str | Path) -> dict:
    """Both objects right, run ``b`` − run ``a`` (points), paired on the prompts both ran with the same id, prompt
    and seed (each run's ``prompts.csv`` beside its ``quality.json``): the mean difference with its 95% interval."""
    from ..studies.paper import interval

    def read(path):
        with open(Path(path) / "prompts.csv", newline="") as f:
            return {(r["id"], r["seed"], r["prompt"]): 100 * int(r["both_correct"]) for r in csv.DictReader(f)}

    ra, rb = read(a), read(b)
    shared = sorted(set(ra) & set(rb))
    if not shared:
        raise ValueError(f"{a} and {b} share no prompt (same id, seed and prompt): run both on the same split")
    est = interval([rb[k] - ra[k] for k in shared])
    return {"difference": est[0], "low": est[1], "high": est[2], "n": est[3]}


def compare_table(summaries: dict[str, dict]) -> str:
    """Markdown: one row per bar, baseline and diagnostic, one column per run (name → quality.json summary)."""
    def cell(s, key, scale=1.0, digits=1):
        v, ci = s.get(key), s.get(key + "_ci") or s.get(key.removesuffix("_pct") + "_ci")
        if v is None or v != v:
            return "—"
        text = f"{v * scale:.{digits}f}"
        return text + (f" ({ci[0] * scale:.{digits}f}–{ci[1] * scale:.{digits}f})" if ci else "")

    rows = [("both objects right, % (95% CI)", "both_correct_pct", 1, 1),
            ("… prompts with an unknown noun left out", "both_correct_sure_pct", 1, 1),
            ("… unknowns counted as right", "both_correct_unknown_as_right_pct", 1, 1),
            ("… unknowns counted as wrong", "both_correct_unknown_as_wrong_pct", 1, 1),
            ("prompts with an unknown noun", "prompts_with_unknown", 1, 0),
            ("DAAM-0.4 noun mIoU", "miou_daam", 1, 1), ("whole image mIoU", "miou_whole", 1, 1),
            ("text-free foreground mIoU", "miou_foreground", 1, 1), ("k-means colour clusters mIoU", "miou_clusters", 1, 1),
            ("other noun's DAAM-0.4 mask mIoU", "miou_other", 1, 1),
            ("colour-word mass on own object", "colour_mass_own", 1, 3),
            ("colour-word mass on the other object", "colour_mass_other", 1, 3),
            ("colour own > other, %", "colour_own_beats_other_pct", 1, 0),
            ("end-of-text share of map mass", "eot_share", 1, 3)]
    names = list(summaries)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    folders = {name: s.get("_folder") for name, s in summaries.items()}
    first = names[0]
    lines.append("| prompts / nouns scored | " + " | ".join(f"{s['prompts']} / {s['nouns_scored']}" for s in summaries.values()) + " |")
    for label, key, scale, digits in rows:
        lines.append(f"| {label} | " + " | ".join(cell(s, key, scale, digits) for s in summaries.values()) + " |")
    ceil = [s.get("annotator_ceiling", {}) for s in summaries.values()]
    lines.append("| annotator ceiling (VAE round trip), % | " + " | ".join(
        f"{c['both_found_pct']:.1f} ({c['ci'][0]:.1f}–{c['ci'][1]:.1f})" if c else "—" for c in ceil) + " |")
    if all(f is not None and (Path(f) / "prompts.csv").is_file() for f in folders.values()) and len(names) > 1:
        cells = ["—"]
        for name in names[1:]:
            try:
                d = paired_both_correct(folders[first], folders[name])
                cells.append(f"{d['difference']:+.1f} ({d['low']:+.1f}–{d['high']:+.1f}), {d['n']} prompts")
            except ValueError:
                cells.append("no shared prompts")
        lines.append(f"| both objects right − {first}'s, paired, points (95% CI) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", nargs="+", metavar="QUALITY_JSON", help="print these runs side by side and exit")
    p.add_argument("--model", default="shapeworld")
    p.add_argument("--n", type=int, default=200, help="two-object prompts")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="test: the bars; val: for choosing sampling settings")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--threshold", type=float, default=0.4)
    p.add_argument("--phrasing", default="canonical",
                   help="caption family (daamlib.shapeworld.phrasings): canonical, definite, swapped, "
                        "'background first' (held out of shapeworld-mmdit's training)")
    p.add_argument("--out", default="out/quality", help="quality.json and the missing-noun table (small files)")
    p.add_argument("--runs", default=None,
                   help="generated images and maps (default: out/quality/<model>/runs, or <model>-val for --split val)")
    args = p.parse_args(argv)
    if args.compare:
        runs = {}
        for f in args.compare:
            s = {**json.loads(Path(f).read_text()), "_folder": str(Path(f).parent)}
            runs[f"{s['model']} ({Path(f).parent.name})" if s["model"] in (r.split(" (")[0] for r in runs) else s["model"]] = s
        print(compare_table(runs))
        return 0
    torch.set_num_threads(1)
    name = args.model + ("" if args.split == "test" else f"-{args.split}") + \
        ("" if args.phrasing == "canonical" else "-" + args.phrasing.replace(" ", "-"))
    runs = args.runs or Path("out/quality") / name / "runs"
    s = evaluate(args.model, args.n, args.out, args.steps, args.guidance, args.threshold, split=args.split,
                 runs_dir=runs, phrasing=args.phrasing)
    for k, v in s.items():
        if k not in ("bars", "missing_nouns"):
            print(f"{k}: {v}")
    for bar, ok in s["bars"].items():
        print(f"{'PASS' if ok else 'MISS'}  {bar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
