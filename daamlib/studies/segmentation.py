"""§3.1, Table 1 and Fig. 11: DAAM's Eq. 7 masks as noun segmentations, scored by mIoU beside baselines.

>>> scores = score_items(records, source.truth, thresholds=(0.3, 0.4, 0.5))      # doctest: +SKIP
>>> table1(scores)                                                               # doctest: +SKIP
>>> plot_tau_sweep(scores).figure_                                               # doctest: +SKIP

Baselines that need no training and no text, so any gap to DAAM is the prompt's doing:

* ``whole_image``: every pixel (the floor any method must beat);
* ``centre_blob``: a centred ellipse covering a fixed share of the image (photographers' prior);
* ``colour_clusters``: k-means on the image's own colours; the cluster that owns most of the
  border is background, the rest is foreground. It cannot tell two objects apart, which is
  exactly what DAAM adds.

Human masks for Stable Diffusion images are read from a folder in this layout::

    masks/<item_id>/image.png           the generated image
    masks/<item_id>/<noun>.png          one mask per present noun: white (or opaque alpha) = noun

(a noun with no PNG is treated as absent from the image and skipped, as in the paper). File
names match the prompt's words case-insensitively and mark the word's first occurrence;
:func:`human_ground_truth` names the files that match no word instead of dropping them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..heatmap import SCALE_NOTE, HeatMaps
from ..stats import as_mask, iou

BASELINES = ("whole image", "centre blob", "colour clusters", "text-free foreground", "other noun's map")
SWEEP = tuple(float(t) for t in np.round(np.linspace(0, 1, 11), 2))
VAL = "val"  # the split on which τ is chosen (never reported in Table 1)


def whole_image(shape: tuple[int, int]) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.bool)


def centre_blob(shape: tuple[int, int], area: float = 0.3) -> torch.Tensor:
    """A centred ellipse with the image's aspect ratio covering ``area`` of it."""
    h, w = shape
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    r = np.sqrt(4 * area / np.pi)  # π r² / 4 of the [-1, 1]² square = area
    return (x**2 + y**2) <= r**2


def colour_clusters(image: np.ndarray, k: int = 3, iters: int = 10, seed: int = 0) -> torch.Tensor:
    """Foreground by k-means on colour (see module docs). ``image``: uint8 ``[H, W, 3]``."""
    px = image.reshape(-1, 3).astype(np.float32)
    rng = np.random.default_rng(seed)
    centres = px[rng.choice(len(px), size=k, replace=False)]
    for _ in range(iters):
        label = ((px[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (label == j).any():
                centres[j] = px[label == j].mean(0)
    label = label.reshape(image.shape[:2])
    border = np.concatenate([label[0], label[-1], label[:, 0], label[:, -1]])
    background = np.bincount(border, minlength=k).argmax()
    return torch.from_numpy(label != background)


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask PNG: alpha channel if it has one (the paper's ``.gt.png``), else pixels brighter than half."""
    from PIL import Image

    im = Image.open(path)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.NEAREST)
    arr = np.asarray(im)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return torch.from_numpy(arr[..., 3] >= 128)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(-1)
    return torch.from_numpy(arr >= 128)


def load_human_masks(folder: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{item_id: {noun: mask}}`` from the documented layout (see module docs)."""
    folder = check_mask_folder(folder)
    out = {}
    for item in sorted(p for p in folder.iterdir() if p.is_dir()):
        masks = {p.stem: read_mask(p) for p in _mask_files(item)}
        if masks:
            out[item.name] = masks
    return out


def check_mask_folder(folder: str | Path) -> Path:
    """``folder`` as a Path, or a FileNotFoundError that says which layout is expected."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no human-mask folder at {folder}; expected {folder}/<item_id>/<noun>.png "
                                "beside each image.png (see daamlib.studies.segmentation)")
    return folder


def _mask_files(item_folder: Path) -> list[Path]:
    """One item's mask PNGs: every PNG but the image itself."""
    return [p for p in sorted(item_folder.glob("*.png")) if p.name != "image.png"]


def human_ground_truth(hm, item_folder: str | Path) -> tuple[dict[int, torch.Tensor], list[str]]:
    """The human masks of one item matched to the prompt's words: ``({word index: mask}, unmatched)``.

    ``<noun>.png`` matches the first word whose text equals ``noun`` ignoring case; masks are read
    at the image's size. ``unmatched`` lists the files that name no word of the prompt (a typo, a
    plural), so the caller can say so rather than score fewer nouns in silence.
    """
    folder = Path(item_folder)
    if not folder.is_dir():
        return {}, []
    first = {}
    for w in hm.alignment.words:
        first.setdefault(w.text.lower(), w)
    gt, unmatched = {}, []
    for f in _mask_files(folder):
        w = first.get(f.stem.lower())
        if w is None or w.truncated:
            unmatched.append(f.name)
            continue
        gt[w.index] = read_mask(f, hm.size)
    return gt, unmatched



def segmentation_rows(hm: HeatMaps, gt: Mapping[int, object], thresholds=(0.3, 0.4, 0.5), sweep=SWEEP,
                      ablation_tau: float = 0.4, ablation_steps=(1, 2, 5, 10, 20), foreground=None,
                      **info) -> list[dict]:
    """IoU rows for Table 1, the τ sweep and the Fig. 11 ablation, for every word with a ground-truth mask.

    ``gt``: word position → boolean mask at image size. ``info`` (e.g. ``item``, ``split``) is
    copied into every row. Row ``kind``: ``table`` (method × τ, and the baselines: whole image, centre blob,
    colour clusters, the text-free ``foreground`` (every object, whichever noun; when given), and the other
    nouns' DAAM-``ablation_tau`` masks — the word-specificity control), ``sweep`` (DAAM, both Eq. 7
    modes, τ from 0 to 1), ``ablation`` (DAAM-``ablation_tau`` on the first/last n steps, the coarsest/finest
    n layer resolutions — or, for a transformer's one resolution, the shallowest/deepest n block groups
    (:func:`layer_groups`) — and each group alone: ``group`` its place coarse→fine / shallow→deep, and
    ``grid_h`` × ``grid_w`` for a resolution, typed, beside its label).
    """
    rows = []
    size = hm.size
    base = {"whole image": whole_image(size), "centre blob": centre_blob(size)}
    if hm.image is not None:
        base["colour clusters"] = colour_clusters(hm.image)
    if foreground is not None:
        base["text-free foreground"] = as_mask(foreground)
    others = {j: hm.word_at(j).binarize(ablation_tau) for j in gt if hm.has_word(j)}
    S = len(hm.steps)
    views = {("all", S, None): hm}
    for n in sorted({min(n, S) for n in ablation_steps} | {S}):
        views[("first n steps", n, None)] = hm.select(steps=range(n))
        views[("last n steps", n, None)] = hm.select(steps=range(S - n, S))
    groups, (low, high) = layer_groups(hm)
    R = len(groups)
    for n in range(1, R + 1):  # the paper's layer ablation: resolutions c ≤ c* and c ≥ c* (or block depth)
        views[(low, n, None)] = hm.select(layers=[name for _, names in groups[:n] for name in names])
        views[(high, n, None)] = hm.select(layers=[name for _, names in groups[R - n:] for name in names])
    for order, (label, names) in enumerate(groups):
        views[(f"only {label}", S, order)] = hm.select(layers=names)
    for index, truth in gt.items():
        if not hm.has_word(index):
            continue
        truth = as_mask(truth)
        wm = hm.word_at(index)
        row = {**info, "word": wm.word.text, "word_index": index}
        for t in thresholds:
            rows.append({**row, "kind": "table", "method": "DAAM", "tau": t, "iou": iou(wm.binarize(t), truth)})
        for name, m in base.items():
            rows.append({**row, "kind": "table", "method": name, "tau": None, "iou": iou(m, truth)})
        if len(others) > 1:  # the other nouns' maps on this noun's object: high would mean maps are not word-specific
            other = float(np.nanmean([iou(m, truth) for j, m in others.items() if j != index]))
            rows.append({**row, "kind": "table", "method": "other noun's map", "tau": ablation_tau, "iou": other})
        for mode in ("minmax", "max"):
            for t in sweep:
                rows.append({**row, "kind": "sweep", "method": f"DAAM ({mode})", "tau": float(t),
                             "iou": iou(wm.binarize(float(t), mode), truth)})
        for (what, n, order), view in views.items():
            vm = view.word_at(index)
            grid = view.resolutions[0] if order is not None and len(view.resolutions) == 1 else None
            rows.append({**row, "kind": "ablation", "method": what, "n": n, "tau": ablation_tau,
                         "group": order, "grid_h": grid[0] if grid else None, "grid_w": grid[1] if grid else None,
                         "iou": iou(vm.binarize(ablation_tau), truth)})
    return rows


DEPTH_GROUPS = 4


def layer_groups(hm) -> tuple[list[tuple[str, list[str]]], tuple[str, str]]:
    """The layer groups of Fig. 11's ablation, coarse to fine, and the names of the two cumulative curves.

    A UNet's layers group by resolution (``"16×16"``: every layer at that grid), as in the paper. A transformer
    has one resolution (its patch grid), so its blocks group by depth instead: up to four contiguous runs of
    the blocks in the order they run (``"blocks 1–5"``), shallow to deep."""
    if len(hm.resolutions) > 1:
        coarse_to_fine = sorted(hm.resolutions, key=lambda r: r[0] * r[1])
        groups = [(f"{r[0]}×{r[1]}", [n for n in hm.layers if hm.resolution(n) == r]) for r in coarse_to_fine]
        return groups, ("coarsest n resolutions", "finest n resolutions")
    layers = hm.layers
    k = min(DEPTH_GROUPS, len(layers))
    bounds = [round(i * len(layers) / k) for i in range(k + 1)]
    groups = [(f"blocks {a + 1}–{b}" if b - a > 1 else f"block {b}", layers[a:b]) for a, b in zip(bounds, bounds[1:])]
    return groups, ("shallowest n block groups", "deepest n block groups")


def _cumulative(abl) -> tuple[str, str, str]:
    """The ablation's two cumulative curves and what they count, by resolution or by depth."""
    if (abl.method == "coarsest n resolutions").any():
        return "coarsest n resolutions", "finest n resolutions", "layer resolutions"
    return "shallowest n block groups", "deepest n block groups", "block groups (by depth)"


def score_items(records: Sequence[Mapping], truth, thresholds=(0.3, 0.4, 0.5)):
    """Every finished item of a run scored against ``truth`` (a :class:`~daamlib.studies.data.GroundTruth`):
    one DataFrame of :func:`segmentation_rows` (``item`` and ``split`` from the record). Empty when the
    ground truth has no masks."""
    import pandas as pd

    from ..io import load_experiment

    rows = []
    if truth.has_masks:
        for rec in records:
            hm, _ = load_experiment(rec["path"])
            rows += segmentation_rows(hm, truth.noun_masks(rec, hm), thresholds, foreground=truth.foreground(rec, hm),
                                      item=rec["id"], split=rec["info"]["split"])
    return pd.DataFrame(rows)


def table1(scores, thresholds=(0.3, 0.4, 0.5)):
    """Table 1 analogue: mIoU (×100) per method (DAAM-τ and baselines) and split, with n (nouns)."""
    import pandas as pd

    df = pd.DataFrame(scores)
    if df.empty:
        return pd.DataFrame()
    df = df[(df["kind"] == "table") & (df["split"] != VAL)].copy()  # the val split chooses τ; it is not reported
    df["method"] = [f"DAAM-{t}" if m == "DAAM" else m for m, t in zip(df["method"], df["tau"])]
    order = [f"DAAM-{t}" for t in thresholds] + list(BASELINES)
    out = (100 * df.pivot_table(index="method", columns="split", values="iou", aggfunc="mean")).reindex(order)
    out["n"] = df.groupby("method").size().reindex(order)
    return out.dropna(how="all", subset=[c for c in out.columns if c != "n"]).reset_index()


def reported(scores):
    """The rows of the reported splits (the ``val`` split only chooses τ)."""
    return scores[scores["split"] != VAL] if "split" in scores else scores


def sweep_curves(scores):
    """mIoU (×100) per split, Eq. 7 mode and τ: columns ``split, method, tau, iou``."""
    scores = reported(scores)
    return scores[scores.kind == "sweep"].groupby(["split", "method", "tau"])["iou"].mean().mul(100).reset_index()


def ablation_curves(scores) -> dict:
    """Fig. 11's numbers: mIoU (×100) by n for the first / last n steps and the coarsest / finest n resolutions,
    and by single resolution (``all`` first, then finest to coarsest), each a ``{n or label: mIoU}``."""
    scores = reported(scores)
    abl = scores[scores.kind == "ablation"]

    def curve(method):
        g = abl[abl.method == method].groupby("n")["iou"].mean().mul(100)
        return g.set_axis(g.index.astype(int))

    low, high, _ = _cumulative(abl)
    single = abl[abl.group.notna() | (abl.method == "all")]
    # "all" first, then finest to coarsest resolution (a UNet) or shallow to deep (a transformer)
    by_depth = low.startswith("shallowest")
    key = single.group.map(lambda g: -np.inf if np.isnan(g) else (g if by_depth else -g))
    order = single.assign(key=key).groupby("method")["key"].first().sort_values().index
    res = single.groupby("method")["iou"].mean().mul(100).reindex(order)
    return {"first": curve("first n steps"), "last": curve("last n steps"),
            "coarsest": curve(low), "finest": curve(high), "resolution": res}


def _nouns(scores) -> int:
    scores = reported(scores)
    return int(((scores.kind == "table") & (scores.method == "whole image")).sum())


class TauSweepDisplay:
    """The τ sweep: mIoU against τ for both Eq. 7 modes and each split (95% t bands over nouns),
    beside the whole-image baseline."""

    def __init__(self, scores):
        self.scores = scores

    @classmethod
    def from_scores(cls, scores) -> TauSweepDisplay:
        return cls(scores)

    def plot(self, ax=None) -> TauSweepDisplay:
        import matplotlib.pyplot as plt
        import seaborn as sns

        from .style import ci_kwargs, theme

        sc = reported(self.scores)
        sweep = sc[sc.kind == "sweep"].assign(mIoU=lambda d: 100 * d.iou)
        whole = 100 * sc.query("kind == 'table' and method == 'whole image'")["iou"].mean()
        with theme():
            if ax is None:
                _, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
            sns.lineplot(data=sweep, x="tau", y="mIoU", hue="method", style="split", markers=True, markersize=4,
                         ax=ax, **ci_kwargs())
            ax.axhline(whole, color="gray", ls="--", lw=1, label="whole image")
            ax.set_xlabel("τ"); ax.set_ylabel("mIoU"); ax.set_ylim(bottom=0); ax.legend(fontsize=8)
            ax.set_title(f"τ sweep: n = {_nouns(sc)} nouns (bands: 95% t interval)", fontsize=9)
        self.ax_, self.figure_ = ax, ax.figure
        return self


def plot_tau_sweep(scores, ax=None, model: str = "") -> TauSweepDisplay:
    from .style import name_model

    return name_model(TauSweepDisplay.from_scores(scores).plot(ax), model)


class AblationDisplay:
    """Fig. 11 analogue in three panels, from the nouns' rows (95% t intervals): first / last n steps,
    coarsest / finest n resolutions, one resolution alone."""

    def __init__(self, scores):
        self.scores = scores

    @classmethod
    def from_scores(cls, scores) -> AblationDisplay:
        return cls(scores)

    def plot(self, ax=None) -> AblationDisplay:
        """``ax``: three axes, or None for a new figure."""
        import matplotlib.pyplot as plt
        import seaborn as sns

        from .style import ci_kwargs, theme

        abl = reported(self.scores)
        abl = abl[abl.kind == "ablation"].assign(mIoU=lambda d: 100 * d.iou)
        steps = int(abl.loc[abl.method == "all", "n"].max())
        order = list(ablation_curves(self.scores)["resolution"].index)
        single = abl[abl.method.isin(order)]
        low, high, what = _cumulative(abl)
        n_res = int(abl.loc[abl.method == low, "n"].max())
        with theme():
            if ax is None:
                _, ax = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [3, 2, 2]}, layout="constrained")
            for a, methods in ((ax[0], ["first n steps", "last n steps"]),
                               (ax[1], [low, high])):
                sns.lineplot(data=abl[abl.method.isin(methods)], x="n", y="mIoU", hue="method", hue_order=methods,
                             marker="o", ax=a, **ci_kwargs())
                a.set_ylabel("mIoU (DAAM-0.4)"); a.set_ylim(bottom=0); a.legend(fontsize=8, title=None)
            ax[0].set_xlabel(f"n (of {steps} steps)"); ax[0].xaxis.get_major_locator().set_params(integer=True)
            ax[1].set_xlabel(f"n (of {n_res} {what})"); ax[1].set_xticks(range(1, n_res + 1))
            sns.barplot(data=single, x="method", y="mIoU", order=order, color="tab:blue", ax=ax[2], **ci_kwargs())
            ax[2].set_xlabel(""); ax[2].set_ylabel("mIoU (DAAM-0.4)")
            ax[2].tick_params(axis="x", rotation=30)
            fig = ax[0].figure
            fig.suptitle(f"Fig. 11 analogue, n = {_nouns(self.scores)} nouns, 95% t interval: time steps (left) and "
                         f"{what} (middle: cumulative from either end; right: one at a time)", fontsize=9)
        self.ax_, self.figure_ = ax, fig
        return self


def plot_ablation(scores, ax=None, model: str = "") -> AblationDisplay:
    from .style import name_model

    return name_model(AblationDisplay.from_scores(scores).plot(ax), model)


class GalleryDisplay:
    """Rows of image, ground truth, DAAM map and DAAM-τ mask (with its IoU) for the first scored noun of some items."""

    def __init__(self, rows: list[tuple[Mapping, HeatMaps, int, torch.Tensor, float]], threshold: float = 0.4):
        self.rows, self.threshold = rows, threshold

    @classmethod
    def from_scores(cls, scores, records, truth, n: int = 6, threshold: float = 0.4) -> GalleryDisplay:
        from ..io import load_experiment

        shown = reported(scores).query("kind == 'table' and method == 'DAAM' and tau == @threshold") \
            .drop_duplicates("item").head(n)
        by_id = {r["id"]: r for r in records}
        rows = []
        for _, s in shown.iterrows():
            rec = by_id[s["item"]]
            hm, _ = load_experiment(rec["path"])
            rows.append((rec, hm, int(s["word_index"]), truth.noun_masks(rec, hm)[s["word_index"]], s["iou"]))
        return cls(rows, threshold)

    def plot(self, ax=None) -> GalleryDisplay:
        """``ax``: a ``[rows, 4]`` array of axes, or None for a new figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(len(self.rows), 4, figsize=(8, 2.2 * len(self.rows) + 0.4), squeeze=False,
                                 layout="constrained")
        for row_axes, (rec, hm, index, truth, score) in zip(ax, self.rows):
            wm = hm.word_at(index)
            w = wm.word
            row_axes[0].imshow(hm.image); row_axes[0].set_title(textwrap.fill(rec["prompt"], 28), fontsize=8)
            row_axes[1].imshow(truth, cmap="gray"); row_axes[1].set_title(f"truth: {w.text}", fontsize=8)
            wm.plot(ax=row_axes[2], title=f"DAAM: {w.text}"); row_axes[2].title.set_fontsize(8)
            wm.plot(ax=row_axes[3], threshold=self.threshold, title=f"IoU {score:.2f}"); row_axes[3].title.set_fontsize(8)
            for a in row_axes:
                a.set_axis_off()
        ax[0][0].figure.suptitle(f"image, ground truth, DAAM map, DAAM-{self.threshold} mask\n{SCALE_NOTE}", fontsize=8)
        self.ax_, self.figure_ = ax, ax[0][0].figure
        return self


def plot_gallery(scores, records, truth, n: int = 6, ax=None, model: str = "") -> GalleryDisplay:
    from .style import name_model

    return name_model(GalleryDisplay.from_scores(scores, records, truth, n).plot(ax), model)


def results(model: str, records, scores, table) -> dict:
    """The headline numbers 01 records: Table 1, nouns scored, the best τ per split and mode, Fig. 11's curves."""
    out = {"model": model, "images": len(records)}
    if len(scores):
        t = table.set_index("method")
        sweep = sweep_curves(scores)
        out.update({
            "table1": {m: {c: round(float(t.loc[m, c]), 2) for c in t.columns if c != "n"} for m in t.index},
            "nouns": int(t.loc["whole image", "n"]),
            "best_tau_sweep": sweep.loc[sweep.groupby(["split", "method"])["iou"].idxmax(),
                                        ["split", "method", "tau", "iou"]].round(2).to_dict("records"),
            "ablation": {k: v.round(1).to_dict() for k, v in ablation_curves(scores).items()},
        })
    return out


def noun_scores(hm: HeatMaps, truth, threshold: float = 0.4, record: Mapping | None = None) -> dict:
    """For one image, per noun the ground truth finds: the share of its map's mass on its object
    (``noun_mass_on_object``) and the IoU of its Eq. 7 mask (``noun_mask_iou``), keyed by word; ``{}`` without masks."""
    from ..stats import mass_on_region

    if not truth.has_masks:
        return {}
    masks = truth.noun_masks(record or {"id": "", "prompt": hm.prompt}, hm)
    return {"noun_mass_on_object": {hm.word_at(i).word.text: round(mass_on_region(hm.word_at(i).heat, m), 3)
                                    for i, m in masks.items()},
            "noun_mask_iou": {hm.word_at(i).word.text: round(iou(hm.word_at(i).binarize(threshold), m), 3)
                              for i, m in masks.items()}}


# -- τ chosen away from the reported splits ---------------------------------------------------------------------
def choose_tau(scores, mode: str = "DAAM (minmax)", n_boot: int = 2000, seed: int = 0) -> dict:
    """The τ of the sweep with the best mIoU on the ``val`` split (nouns never reported), with a bootstrap interval
    of that choice over val images (an image's nouns go together), and the mIoU it gives on each reported split
    (95% interval over images); ``n``: val images."""
    from .paper import interval

    sw = scores[(scores.kind == "sweep") & (scores.method == mode)]
    val = sw[sw.split == VAL]
    if val.empty:
        return {"tau": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0, "splits": {}}
    wide = val.pivot_table(index=["item", "word_index"], columns="tau", values="iou")  # nouns × τ
    taus = wide.columns.to_numpy(dtype=float)
    best = float(taus[np.nanargmax(wide.mean().to_numpy())])
    rng = np.random.default_rng(seed)
    images = wide.index.get_level_values("item")
    rows_of = [np.flatnonzero(images == u) for u in images.unique()]
    picks = [taus[np.nanargmax(wide.iloc[np.concatenate([rows_of[j] for j in rng.integers(0, len(rows_of),
                                                                                         len(rows_of))])]
                               .mean().to_numpy())] for _ in range(n_boot)]
    splits = {}
    for split, g in sw[(sw.split != VAL) & np.isclose(sw.tau, best)].groupby("split"):
        m, lo, hi, n = interval(100 * g["iou"].to_numpy(), g["item"])
        splits[split] = {"miou": m, "low": lo, "high": hi, "n": n}
    return {"tau": best, "low": float(np.quantile(picks, 0.025)), "high": float(np.quantile(picks, 0.975)),
            "n": len(rows_of), "splits": splits}


# -- a finding the paper does not report: can a map say that its noun is missing? --------------------------------
MAP_STATISTICS = {"mask share": "share of the image DAAM-0.4 selects",
                  "peak / mean": "the map's maximum over its mean",
                  "entropy": "entropy of the map as a distribution over pixels (0 = one pixel, 1 = uniform)",
                  "mass on objects": "share of the map's mass on the image's objects (any noun's)"}


def noun_map_rows(records: Sequence[Mapping], truth, threshold: float = 0.4):
    """One row per noun of every prompt, drawn or not (as the ground truth says), with simple statistics of its
    map (:data:`MAP_STATISTICS`). ``drawn``: the ground truth found the noun; ``unknown``: it could not say
    (a ground truth with an ``unknown(record, hm)`` method, such as the ShapeWorld annotator when it is unsure of
    an object; else always False). Empty when the ground truth cannot say which nouns were left out."""
    import pandas as pd

    from ..io import load_experiment
    from ..stats import mass_on_region

    rows = []
    for rec in records:
        hm, _ = load_experiment(rec["path"])
        nouns = truth.nouns(rec, hm)
        if nouns is None:
            return pd.DataFrame()
        drawn, fg = truth.noun_masks(rec, hm), truth.foreground(rec, hm)
        unknown = set(truth.unknown(rec, hm)) if hasattr(truth, "unknown") else set()
        for i in nouns:
            if not hm.has_word(i):
                continue
            heat = hm.word_at(i).heat.clamp(min=0).double()
            p = heat / heat.sum() if heat.sum() > 0 else torch.full_like(heat, 1 / heat.numel())
            entropy = float(-(p[p > 0] * p[p > 0].log()).sum() / np.log(p.numel()))
            rows.append({"item": rec["id"], "split": rec["info"].get("split"), "word": hm.word_at(i).word.text,
                         "word_index": i, "drawn": i in drawn, "unknown": i in unknown and i not in drawn,
                         "mask share": float(hm.word_at(i).binarize(threshold).float().mean()),
                         "peak / mean": float(heat.max() / heat.mean()) if heat.mean() > 0 else float("nan"),
                         "entropy": entropy,
                         "mass on objects": mass_on_region(heat.float(), fg) if fg is not None else float("nan")})
    return pd.DataFrame(rows)


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative (ties: ½)."""
    x, y = np.asarray(positive, float), np.asarray(negative, float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if not len(x) or not len(y):
        return float("nan")
    return float(((x[:, None] > y[None]).sum() + 0.5 * (x[:, None] == y[None]).sum()) / (len(x) * len(y)))


def missing_table(noun_rows, n_boot: int = 2000, seed: int = 0):
    """Per map statistic: its median for drawn and for missing nouns, and the ROC AUC of telling drawn from
    missing by it (0.5: no better than chance; either side of it separates) with a 95% bootstrap interval.
    Only nouns the ground truth is sure of count; ``n_unknown`` says how many were left out (rows whose
    ``unknown`` column is True)."""
    import pandas as pd

    if noun_rows is None or not len(noun_rows):
        return pd.DataFrame()
    rng = np.random.default_rng(seed)
    unknown = _unknown(noun_rows)
    d, m = noun_rows[noun_rows.drawn & ~unknown], noun_rows[~noun_rows.drawn & ~unknown]
    out = []
    for stat, meaning in MAP_STATISTICS.items():
        x, y = d[stat].to_numpy(float), m[stat].to_numpy(float)
        boots = [auc(x[rng.integers(0, len(x), len(x))], y[rng.integers(0, len(y), len(y))])
                 for _ in range(n_boot)] if len(x) > 1 and len(y) > 1 else [float("nan")]
        out.append({"statistic": stat, "meaning": meaning, "median_drawn": float(np.nanmedian(x)) if len(x) else np.nan,
                    "median_missing": float(np.nanmedian(y)) if len(y) else np.nan, "auc": auc(x, y),
                    "low": float(np.nanquantile(boots, 0.025)), "high": float(np.nanquantile(boots, 0.975)),
                    "n_drawn": len(x), "n_missing": len(y), "n_unknown": int(unknown.sum())})
    return pd.DataFrame(out)


def _unknown(noun_rows):
    """The rows' ``unknown`` column as bools (all False when there is none: a ground truth that is always sure)."""
    if "unknown" in noun_rows:
        return noun_rows["unknown"].fillna(False).astype(bool)
    return noun_rows["drawn"] & False


class MissingDisplay:
    """Each map statistic for drawn and for missing nouns (box and points), with its ROC AUC in the title; nouns
    the ground truth is unsure of are left out, and their number is in the figure's title."""

    def __init__(self, noun_rows, table):
        self.rows, self.table = noun_rows, table

    def plot(self, ax=None) -> MissingDisplay:
        """``ax``: one axis per statistic, or None for a new figure."""
        import matplotlib.pyplot as plt
        import seaborn as sns

        from .style import theme

        rows = self.rows[~_unknown(self.rows)].assign(noun=lambda d: d.drawn.map({True: "drawn", False: "missing"}))
        n_unknown = int(self.table.n_unknown.iloc[0]) if "n_unknown" in self.table and len(self.table) else 0
        with theme():
            if ax is None:
                _, ax = plt.subplots(1, len(MAP_STATISTICS), figsize=(3.2 * len(MAP_STATISTICS), 3.4), layout="constrained")
            for a, (_, t) in zip(ax, self.table.iterrows()):
                sns.boxplot(data=rows, x="noun", y=t.statistic, order=["drawn", "missing"], hue="noun", legend=False,
                            showfliers=False, width=0.5, ax=a)
                sns.stripplot(data=rows, x="noun", y=t.statistic, order=["drawn", "missing"], color="k", size=2,
                              alpha=0.5, ax=a)
                a.set_xticks([0, 1], [f"drawn\nn={t.n_drawn}", f"missing\nn={t.n_missing}"]); a.set_xlabel("")
                a.set_title(f"AUC {t.auc:.2f} [{t.low:.2f}, {t.high:.2f}]", fontsize=8)
            fig = ax[0].figure
            fig.suptitle("Can a noun's map say that the noun is missing? (ROC AUC with 95% bootstrap interval; "
                         "0.5 = chance" + (f"; {n_unknown} nouns the ground truth was unsure of left out)" if n_unknown
                                           else ")"), fontsize=9)
        self.ax_, self.figure_ = ax, fig
        return self


def plot_missing(noun_rows, ax=None, model: str = "") -> MissingDisplay:
    from .style import name_model

    return name_model(MissingDisplay(noun_rows, missing_table(noun_rows)).plot(ax), model)


# -- paper vs here ---------------------------------------------------------------------------------------------
SPLITS = {"Gen": "coco-gen", "Unreal": "unreal-gen"}


def _paired(scores, split: str, a: tuple[str, float | None], b: tuple[str, float | None], units: bool = False):
    """Per noun of ``split``: IoU of method ``a`` minus method ``b`` (×100), over nouns scored by both; with
    ``units``, also each noun's image (``(differences, items)``), the unit an interval resamples."""
    t = scores[(scores.kind == "table") & (scores.split == split)]

    def one(method, tau):
        g = t[(t.method == method) & ((t.tau == tau) if tau is not None else t.tau.isna())]
        return g.set_index(["item", "word_index"])["iou"]

    x, y = one(*a), one(*b)
    both = x.index.intersection(y.index)
    d = 100 * (x.loc[both] - y.loc[both]).to_numpy()
    return (d, both.get_level_values("item")) if units else d


def paper_vs_here(scores, comparable: bool = False) -> object:
    """§3.1's claims against this run: Table 1's DAAM-τ and whole-image mIoU (values: judged only when
    ``comparable``, i.e. SD on the paper's kind of prompts and masks), DAAM against the whole image and the
    unsupervised baselines (directions, with a smallest effect of interest), the best τ (chosen on val, never on
    the reported splits), and Fig. 11's "every step and layer helps". Intervals resample the images (``item``):
    an image's nouns are not independent. See :mod:`daamlib.studies.paper` for the rules."""
    from . import paper as P

    rows = []
    if scores is None or not len(scores):
        return P.table([P.row("§3.1", "Table 1: DAAM noun masks vs human masks", np.nan,
                              untestable="no ground-truth masks were given (MASKS_DIR)")])
    miou, gap, base, abl_m = P.MARGINS["miou"], P.MARGINS["miou-gap"], P.MARGINS["baseline"], P.MARGINS["ablation"]
    for split, key in SPLITS.items():
        t = scores[(scores.kind == "table") & (scores.split == split)]
        if t.empty:
            continue
        for method, tau, name in ((("DAAM", 0.3, "daam-0.3")), ("DAAM", 0.4, "daam-0.4"), ("DAAM", 0.5, "daam-0.5"),
                                  ("whole image", None, "whole image")):
            g = t[(t.method == method) & ((t.tau == tau) if tau is not None else t.tau.isna())]
            ref = P.PAPER[f"table1.{name}.{key}"]
            m, lo, hi, n = P.interval(100 * g["iou"].to_numpy(), g["item"])
            rows.append(P.row(ref.source, f"{split}: {name.upper() if 'daam' in name else name} mIoU", ref.value,
                              m, lo, hi, n, P.value(ref.value, lo, hi, miou.value, n, comparable, miou.why)))
        paper_gap = P.PAPER[f"table1.daam-0.4.{key}"].value - P.PAPER[f"table1.whole image.{key}"].value
        m, lo, hi, n = P.interval(*_paired(scores, split, ("DAAM", 0.4), ("whole image", None), units=True))
        rows.append(P.row("§3.1, Table 1 rows 5, 9", f"{split}: DAAM-0.4 − whole image (points)", paper_gap, m, lo, hi,
                          n, P.effect(lo, hi, gap.value, 1, n, paper_gap if comparable else np.nan, miou.value,
                                      gap.why)))
        stego = P.PAPER[f"table1.daam-0.4.{key}"].value - P.PAPER[f"table1.stego.{key}"].value
        for baseline in ("colour clusters", "text-free foreground"):
            m, lo, hi, n = P.interval(*_paired(scores, split, ("DAAM", 0.4), (baseline, None), units=True))
            rows.append(P.row("§3.1: DAAM beats the unsupervised baselines (vs STEGO, rows 7, 9)",
                              f"{split}: DAAM-0.4 − {baseline} (points)", stego, m, lo, hi, n,
                              P.effect(lo, hi, base.value, 1, n, why=base.why)))
    choice = choose_tau(scores)
    ref = P.PAPER["table1.best-tau"]
    tol = P.MARGINS["tau"]
    if choice["n"]:
        rows.append(P.row(ref.source, "best τ (chosen on val images' nouns; interval: bootstrap of that choice over images)", ref.value,
                          choice["tau"], choice["low"], choice["high"], choice["n"],
                          P.value(ref.value, choice["low"], choice["high"], tol.value, choice["n"], comparable,
                                  tol.why)))
    else:
        rows.append(P.row(ref.source, "best τ", ref.value, untestable="no val split to choose τ on (add split=val rows)"))
    ref = P.PAPER["fig11.all-steps-and-layers"]
    abl = reported(scores)
    abl = abl[abl.kind == "ablation"]
    if len(abl):
        S = int(abl.loc[abl.method == "all", "n"].max())
        key = abl.set_index(["item", "word_index"])
        all_ = key[key.method == "all"]["iou"]

        def ablation_row(claim, sel):
            d = (100 * (all_ - key[sel]["iou"])).dropna()
            m, lo, hi, n = P.interval(d.to_numpy(), d.index.get_level_values("item"))
            return P.row(ref.source, claim, ref.value, m, lo, hi, n, P.effect(lo, hi, abl_m.value, 1, n, why=abl_m.why))

        for what, sel in (("the last step alone", (key.method == "last n steps") & (key.n == 1)),
                          ("the first step alone", (key.method == "first n steps") & (key.n == 1))):
            rows.append(ablation_row(f"all {S} steps − {what} (points)", sel))
        for method in sorted(abl[abl.group.notna()].method.unique() if "group" in abl else []):
            label = method.replace("only ", "")
            label = f"all blocks − {label} alone" if label.startswith("block") else f"all layers − {label} layers alone"
            rows.append(ablation_row(f"{label} (points)", key.method == method))
    return P.table(rows)


def quickstart_paper_vs_here(noun_iou: Mapping[str, float]):
    """Notebook 00's one image against Table 1: its nouns' DAAM-τ mask IoU beside the paper's mIoU — shown, but
    one image is too few nouns for an interval, so the verdict points to notebook 01."""
    from . import paper as P

    ref = P.PAPER["table1.daam-0.4.coco-gen"]
    vals = [100 * v for v in noun_iou.values()]
    here = float(np.mean(vals)) if vals else float("nan")
    return P.table([P.row(ref.source, "this image's nouns: DAAM-0.4 mask IoU", ref.value, here, n=len(vals),
                          untestable="one image: too few nouns for an interval; notebook 01 tests Table 1 on many")])
