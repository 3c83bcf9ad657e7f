"""Segmentation scoring (paper §3.1, Table 1): unsupervised baselines, human masks, mIoU tables.

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

from pathlib import Path

import numpy as np
import torch


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


def mass_on_region(heat: torch.Tensor, region: torch.Tensor) -> float:
    """Share of a soft map's mass that falls inside ``region`` (NaN for an all-zero map)."""
    total = float(heat.clamp(min=0).sum())
    return float((heat.clamp(min=0) * region.to(heat.device).float()).sum()) / total if total > 0 else float("nan")


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
                                "beside each image.png (see daamlib.segmentation)")
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
