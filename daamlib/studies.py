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


def segmentation_rows(hm: HeatMaps, gt: dict[int, object], thresholds=(0.3, 0.4, 0.5),
                      sweep=tuple(np.round(np.linspace(0, 1, 11), 2)), ablation_tau: float = 0.4,
                      ablation_steps=(1, 2, 5, 10, 20), **info) -> list[dict]:
    """IoU rows for Table 1, the τ sweep and the Fig. 11 ablation, for every word with a ground-truth mask.

    ``gt``: word position → boolean mask at image size. ``info`` (e.g. ``item``, ``split``) is
    copied into every row. Row ``kind``: ``table`` (method × τ), ``sweep`` (DAAM, both Eq. 7
    modes, τ from 0 to 1), ``ablation`` (DAAM-``ablation_tau`` on first/last n steps, single resolutions).
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
