"""An automatic annotator for ShapeWorld images: objects, their masks, shapes and colours.

It plays the part of the paper's human annotators on generated images. Pixels are segmented by
colour (nearest object-palette colour, unless a border pixel — the background — is nearer), grouped
into connected components per colour, and each component's shape is read by a small CNN trained on
the annotator's own segmentations of rendered *train* scenes (never on generated images, never on
the diffusion model). Given the caption, :meth:`Annotator.annotate` says of each noun whether it is
drawn, missing or unknown, and returns a mask per drawn noun.

Each object's :attr:`Detection.confidence` is the CNN's probability of its shape call; below
:data:`UNSURE_BELOW` the annotator is *unsure* of the object, as a human annotator may be of a misdrawn
shape, and a noun that only unsure objects could be is *unknown* rather than missing.

>>> ann = Annotator.load()          # doctest: +SKIP
>>> a = ann.annotate(image, "a red circle above a blue square")   # doctest: +SKIP
>>> a.noun_masks[2].sum(), a.status   # word index 2 = "circle"; {2: "drawn", 5: "unknown"}   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .model import reconstruct_images
from .world import COLOURS, PATTERN_SHADE, PLURAL, SHAPES, SIZE, ShapeWorld

WEIGHTS = Path(__file__).with_name("annotator_shape_cnn.safetensors")
_COLOUR_NAMES = list(COLOURS)
_PAL = np.array([COLOURS[c] for c in _COLOUR_NAMES] + [tuple(PATTERN_SHADE * v for v in COLOURS[c]) for c in _COLOUR_NAMES],
                np.float32)  # [12, 3]: full colours, then pattern shades
_PAL_CLASS = np.array(list(range(len(_COLOUR_NAMES))) * 2)
_SINGULAR = {p: s for s, p in PLURAL.items()}
CROP = 32  # classifier input side
# Colour fit: 1 when the median pixel of a blob is within FIT_NEAR of its palette colour (full or pattern shade),
# 0 beyond FIT_FAR, linear between. On VAE reconstructions of 300 val scenes real objects' median distance is
# 13 (75% below 18); blobs that are no object (soft edges taken for another colour) 47 (75% above 36).
FIT_NEAR, FIT_FAR = 25.0, 45.0
# An object whose confidence is below this is "unsure". Chosen on 500 *val* scenes (never test), rendered and
# VAE-reconstructed, by :func:`choose_threshold`'s rule; the numbers are in the model card's "Annotator: sure,
# unsure" section (`python -m daamlib.shapeworld.annotator --validate 0 --choose-threshold 500 --vae ...`).
UNSURE_BELOW = 0.93
# An unsure object could be a noun of the shape s when the CNN gives s at least this (and the colour is the noun's):
# on VAE reconstructions of 500 val scenes 97% of unsure real objects give their true shape ≥ 0.02 (94% ≥ 0.05),
# and 98% of them have their true colour.
COULD_BE = 0.02
DRAWN, MISSING, UNKNOWN = "drawn", "missing", "unknown"


@dataclass
class Detection:
    colour: str
    shape: str
    mask: np.ndarray  # bool [H, W]
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    shape_prob: float  # the CNN's probability of ``shape``
    colour_fit: float = 1.0  # 1: the blob's pixels are its palette colour; 0: far from it (see FIT_NEAR, FIT_FAR)
    confidence: float | None = None  # how sure the call is, in [0, 1]; None: shape_prob × colour_fit
    shape_probs: dict[str, float] | None = None  # the CNN's probability of every shape; None: {shape: shape_prob}

    def __post_init__(self):
        if self.confidence is None:
            self.confidence = self.shape_prob * self.colour_fit
        if self.shape_probs is None:
            self.shape_probs = {self.shape: self.shape_prob}

    def sure(self, threshold: float | None = None) -> bool:
        """Is the shape call confident (confidence ≥ ``threshold``, default :data:`UNSURE_BELOW`)?"""
        return self.confidence >= (UNSURE_BELOW if threshold is None else threshold)


def noun_status(objects: list[Detection], shape: str, colour: str | None = None, require_colour: bool = False,
                threshold: float | None = None) -> tuple[str, list[Detection]]:
    """One caption noun against the detected objects: ``(status, the confident objects that are it)``.

    *drawn*: a confident object of the noun's shape (of its colour, when ``require_colour`` and a colour is
    named; otherwise objects of the named colour are preferred). *unknown*: none, but an unsure object could be
    it — of the named colour (if one is named) and with a CNN probability ≥ :data:`COULD_BE` for the noun's shape.
    *missing*: neither.
    """
    sure = [d for d in objects if d.sure(threshold)]
    cands = [d for d in sure if d.shape == shape]
    if colour is not None and (require_colour or any(d.colour == colour for d in cands)):
        cands = [d for d in cands if d.colour == colour]
    if cands:
        return DRAWN, cands
    if any(not d.sure(threshold) and (colour is None or d.colour == colour) and d.shape_probs.get(shape, 0.0) >= COULD_BE
           for d in objects):
        return UNKNOWN, []
    return MISSING, []


@dataclass
class Annotation:
    objects: list[Detection]
    background_mask: np.ndarray  # bool [H, W]
    words: list[str] = field(default_factory=list)
    noun_masks: dict[int, np.ndarray] = field(default_factory=dict)  # word index → union of confident matches
    status: dict[int, str] = field(default_factory=dict)  # word index of each noun → DRAWN, MISSING or UNKNOWN
    counts: dict[int, int] = field(default_factory=dict)  # word index of each noun → confident objects matched

    @property
    def present(self) -> dict[int, bool]:
        """Word index of each noun → confidently drawn? (False for missing *and* unknown nouns.)"""
        return {i: s == DRAWN for i, s in self.status.items()}

    @property
    def unknown(self) -> list[int]:
        """Word indices of the nouns only unsure objects could be."""
        return [i for i, s in self.status.items() if s == UNKNOWN]


# ----------------------------------------------------------------------------------------------
# Segmentation


def _dist2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)] between RGB rows (via the matrix product: fast)."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0)


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(_dist2(a, b))


def segment(image: np.ndarray, max_dist: float = 90.0, min_pixels: int = 12) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
    """Colour components of an RGB uint8 image: ``([(colour, mask)], background_mask)``."""
    img = image.astype(np.float32).reshape(-1, 3)
    H, W = image.shape[:2]
    d_pal = _dist(img, _PAL)  # [HW, 12]
    cls = _PAL_CLASS[d_pal.argmin(1)]
    d_obj = d_pal.min(1)
    # background reference: the 2-pixel frame, minus pixels that look like an object colour
    frame = np.zeros((H, W), bool)
    frame[:2], frame[-2:], frame[:, :2], frame[:, -2:] = True, True, True, True
    ref = image[frame].astype(np.float32)
    d_ref_pal = _dist(ref, _PAL[: len(_COLOUR_NAMES)]).min(1)
    keep = d_ref_pal > 45
    if keep.sum() >= 20:
        ref = ref[keep]
    ref = ref[:: max(1, len(ref) // 128)]
    d_bg = np.sqrt(_dist2(img, ref).min(1))  # [HW]
    obj = (d_obj < d_bg) & (d_obj < max_dist)
    obj = obj.reshape(H, W)
    cls = cls.reshape(H, W)
    comps: list[tuple[str, np.ndarray]] = []
    st = np.ones((3, 3), bool)
    for c in range(len(_COLOUR_NAMES)):
        m = obj & (cls == c)
        if m.sum() < min_pixels:
            continue
        # close 1–2 px gaps left by stripes/dots that were taken for background
        m = ndimage.binary_closing(np.pad(m, 2), structure=st)[2:-2, 2:-2]
        lab, n = ndimage.label(m, structure=st)
        for k in range(1, n + 1):
            mk = lab == k
            if mk.sum() >= min_pixels:
                comps.append((_COLOUR_NAMES[c], mk))
    # a pixel claimed by two colours after closing goes to the colour it is nearest to
    if len(comps) > 1:
        stack = np.stack([m for _, m in comps])
        over = stack.sum(0) > 1
        if over.any():
            raw = [obj & (cls == _COLOUR_NAMES.index(c)) for c, _ in comps]
            for i, (c, m) in enumerate(comps):
                comps[i] = (c, m & (~over | raw[i]))
    fg = np.zeros((H, W), bool)
    for _, m in comps:
        fg |= m
    return comps, ~fg


def colour_fit(image: np.ndarray, mask: np.ndarray, colour: str) -> float:
    """How well a blob's pixels fit its colour: 1 when their median distance to the colour (full or pattern shade,
    whichever is nearer per pixel) is ≤ FIT_NEAR, 0 when ≥ FIT_FAR, linear between."""
    k = _COLOUR_NAMES.index(colour)
    d = _dist(image[mask].astype(np.float32), _PAL[[k, k + len(_COLOUR_NAMES)]]).min(1)
    return float(np.clip((FIT_FAR - np.median(d)) / (FIT_FAR - FIT_NEAR), 0.0, 1.0))


def shape_input(mask: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Classifier input for one object mask: holes covered by other objects are filled (the object
    behind an "inside" object is whole), the box is padded to a square and resized to 32×32."""
    filled = ndimage.binary_fill_holes(mask)
    m = mask | (filled & others)
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = m[y0:y1, x0:x1].astype(np.float32)
    h, w = crop.shape
    s = max(h, w)
    sq = np.zeros((s, s), np.float32)
    sq[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = crop
    t = torch.from_numpy(sq)[None, None]
    out = torch.nn.functional.interpolate(t, size=(CROP, CROP), mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy()


class ShapeCNN(torch.nn.Module):
    """32×32 mask → logits over :data:`SHAPES` (~60k parameters). The extra input is the mask's size."""

    def __init__(self, n: int = len(SHAPES)):
        super().__init__()
        c = torch.nn.Conv2d
        self.f = torch.nn.Sequential(
            c(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 16
            c(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 8
            c(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 4
        )
        self.head = torch.nn.Sequential(torch.nn.Linear(64 * 16 + 1, 64), torch.nn.ReLU(), torch.nn.Linear(64, n))

    def forward(self, x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:  # x [B, 1, 32, 32], size [B]
        h = self.f(x).flatten(1)
        return self.head(torch.cat([h, size[:, None] / SIZE], 1))


def _features(comps: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    allm = np.zeros((SIZE, SIZE), bool)
    for _, m in comps:
        allm |= m
    xs, sizes = [], []
    for _, m in comps:
        xs.append(shape_input(m, allm & ~m))
        ys, xx = np.nonzero(m)
        sizes.append(max(ys.max() - ys.min(), xx.max() - xx.min()) + 1)
    return np.array(xs, np.float32).reshape(-1, CROP, CROP), np.array(sizes, np.float32)


def _match(gt_masks: list[np.ndarray], det_masks: list[np.ndarray]) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU: [(gt index, det index, iou)] with iou > 0."""
    pairs = []
    for i, g in enumerate(gt_masks):
        for j, d in enumerate(det_masks):
            inter = (g & d).sum()
            if inter:
                pairs.append(((inter / (g | d).sum()), i, j))
    pairs.sort(reverse=True)
    used_g, used_d, out = set(), set(), []
    for iou, i, j in pairs:
        if i not in used_g and j not in used_d:
            used_g.add(i), used_d.add(j)
            out.append((i, j, float(iou)))
    return out


class Annotator:
    def __init__(self, model: ShapeCNN):
        self.model = model.eval()

    @classmethod
    def load(cls, path: str | Path = WEIGHTS) -> "Annotator":
        from safetensors.torch import load_file

        if not Path(path).exists():
            raise FileNotFoundError(f"{path} not found; train it with `python -m daamlib.shapeworld.annotator --train`")
        m = ShapeCNN()
        m.load_state_dict(load_file(str(path)))
        return cls(m)

    @classmethod
    def train(cls, n_scenes: int = 6000, epochs: int = 12, seed: int = 0, vae_path: str | Path | None = None,
              log=print) -> "Annotator":
        """Fit the shape CNN on the annotator's own segmentations of rendered train-split scenes.

        With ``vae_path`` (an ``AutoencoderKL`` folder) every scene is also passed through the VAE and
        its reconstruction added: generated images look like VAE decodings (softer corners), not like
        renderings. Labels always come from the world, never from the diffusion model.
        """
        world = ShapeWorld(seed=seed)
        vae = None
        if vae_path is not None:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(str(vae_path)).eval()
        X, S, Y = [], [], []
        scenes = [world.scene("train", 2_000_000 + i) for i in range(n_scenes)]  # beyond the diffusion pool's indices
        images = [[sc.image for sc in scenes]]
        if vae is not None:
            images.append(list(reconstruct_images(vae, np.stack(images[0]))))
        for imgs in images:
            for sc, im in zip(scenes, imgs):
                comps, _ = segment(im)
                if not comps:
                    continue
                x, s = _features(comps)
                for gi, dj, iou in _match([o.mask for o in sc.objects], [m for _, m in comps]):
                    if iou > 0.5:
                        X.append(x[dj]), S.append(s[dj]), Y.append(SHAPES.index(sc.objects[gi].shape))
        X, S, Y = torch.tensor(np.array(X))[:, None], torch.tensor(np.array(S)), torch.tensor(Y)
        log(f"shape classifier: {len(Y)} training masks from {n_scenes} scenes")
        torch.manual_seed(seed)
        m = ShapeCNN()
        opt = torch.optim.AdamW(m.parameters(), 2e-3, weight_decay=1e-4)
        n = len(Y)
        for ep in range(epochs):
            perm = torch.randperm(n)
            tot, correct = 0.0, 0
            for a in range(0, n, 128):
                b = perm[a : a + 128]
                logits = m(X[b], S[b])
                loss = torch.nn.functional.cross_entropy(logits, Y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += loss.item() * len(b)
                correct += (logits.argmax(1) == Y[b]).sum().item()
            for g in opt.param_groups:
                g["lr"] *= 0.8
            log(f"epoch {ep}: loss {tot / n:.4f} acc {correct / n:.4f}")
        return cls(m)

    def save(self, path: str | Path = WEIGHTS) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(path))

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> tuple[list[Detection], np.ndarray]:
        """Objects of an RGB uint8 [64, 64, 3] image and the background mask."""
        comps, bg = segment(image)
        if not comps:
            return [], bg
        x, s = _features(comps)
        p = torch.softmax(self.model(torch.from_numpy(x)[:, None], torch.from_numpy(s)), 1).numpy()
        dets = []
        for (colour, m), pk in zip(comps, p):
            ys, xs = np.nonzero(m)
            dets.append(Detection(colour, SHAPES[int(pk.argmax())], m,
                                  (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), float(pk.max()),
                                  colour_fit(image, m, colour), shape_probs=dict(zip(SHAPES, map(float, pk)))))
        return dets, bg

    def annotate(self, image: np.ndarray, caption: str | None = None) -> Annotation:
        """Detect objects; with a caption, match each noun (and its colour adjective) to them."""
        dets, bg = self.detect(image)
        ann = Annotation(objects=dets, background_mask=bg)
        if caption is None:
            return ann
        words = caption.split()
        ann.words = words
        colour = None
        for i, w in enumerate(words):
            if w in COLOURS:
                colour = w
                continue
            shape = w if w in SHAPES else _SINGULAR.get(w)
            if shape is None:
                continue
            status, cands = noun_status(dets, shape, colour)
            m = np.zeros(image.shape[:2], bool)
            for d in cands:
                m |= d.mask
            ann.noun_masks[i], ann.status[i], ann.counts[i] = m, status, len(cands)
            colour = None
        return ann


def validate(annotator: Annotator, n: int = 1000, split: str = "test", seed: int = 0, vae=None) -> dict:
    """Mask IoU (missed objects count 0), shape and colour accuracy on rendered scenes of ``split``
    (with ``vae``: on their VAE reconstructions, the best a generated image can look)."""
    world = ShapeWorld(seed=seed)
    ious, shape_ok, colour_ok, found = [], [], [], 0
    n_obj = 0
    confusion: dict[tuple[str, str], int] = {}
    scenes = [world.scene(split, i) for i in range(n)]
    images = np.stack([sc.image for sc in scenes])
    if vae is not None:
        images = reconstruct_images(vae, images)
    for sc, image in zip(scenes, images):
        dets, _ = annotator.detect(image)
        matches = {gi: (dj, iou) for gi, dj, iou in _match([o.mask for o in sc.objects], [d.mask for d in dets])}
        for gi, o in enumerate(sc.objects):
            n_obj += 1
            if gi not in matches or matches[gi][1] < 0.5:
                ious.append(matches.get(gi, (None, 0.0))[1])
                shape_ok.append(False), colour_ok.append(False)
                continue
            dj, iou = matches[gi]
            found += 1
            ious.append(iou)
            shape_ok.append(dets[dj].shape == o.shape)
            colour_ok.append(dets[dj].colour == o.colour)
            if dets[dj].shape != o.shape:
                confusion[(o.shape, dets[dj].shape)] = confusion.get((o.shape, dets[dj].shape), 0) + 1
    return {"scenes": n, "objects": n_obj, "split": split, "images": "vae reconstructions" if vae is not None else "rendered", "found": found / n_obj, "mean_iou": float(np.mean(ious)),
            "shape_acc": float(np.mean(shape_ok)), "colour_acc": float(np.mean(colour_ok)),
            "top_confusions": sorted(((v, f"{a}->{b}") for (a, b), v in confusion.items()), reverse=True)[:8]}


def detection_outcomes(annotator: Annotator, n: int = 500, split: str = "val", seed: int = 0, vae=None) -> dict:
    """Every detection on ``n`` rendered scenes of ``split`` (with ``vae``: on their VAE reconstructions):
    ``{"confidence": [N], "right": [N], "real": [N]}``; real = matched to a true object (IoU ≥ 0.5), right = real
    and of its shape and colour (blobs that are no object count as wrong). ``"objects"``: the true objects."""
    world = ShapeWorld(seed=seed)
    scenes = [world.scene(split, i) for i in range(n)]
    images = np.stack([sc.image for sc in scenes])
    if vae is not None:
        images = reconstruct_images(vae, images)
    conf, right, real, n_obj = [], [], [], 0
    for sc, image in zip(scenes, images):
        dets, _ = annotator.detect(image)
        n_obj += len(sc.objects)
        ok, hit = [False] * len(dets), [False] * len(dets)
        for gi, dj, iou in _match([o.mask for o in sc.objects], [d.mask for d in dets]):
            o, d = sc.objects[gi], dets[dj]
            hit[dj] = iou >= 0.5
            ok[dj] = hit[dj] and d.shape == o.shape and d.colour == o.colour
        conf += [d.confidence for d in dets]
        right += ok
        real += hit
    return {"confidence": np.array(conf, float), "right": np.array(right, bool), "real": np.array(real, bool),
            "objects": n_obj}


def threshold_sweep(outcomes: dict, grid: np.ndarray | None = None) -> list[dict]:
    """Per threshold t: the share of real objects whose call is sure (confidence ≥ t) and the share of sure calls
    that are right (:func:`detection_outcomes`)."""
    grid = np.round(np.arange(0.0, 1.0, 0.01), 2) if grid is None else grid
    c, right, real = outcomes["confidence"], outcomes["right"], outcomes["real"]
    rows = []
    for t in grid:
        sure = c >= t
        rows.append({"threshold": float(t), "real_sure": float(sure[real].mean()) if real.any() else float("nan"),
                     "accuracy_sure": float(right[sure].mean()) if sure.any() else float("nan"),
                     "calls_sure": int(sure.sum()), "calls": len(c)})
    return rows


def choose_threshold(rendered: dict, reconstructed: dict | None = None, min_accuracy: float = 0.99,
                     min_sure: float = 0.95) -> dict:
    """The rule for :data:`UNSURE_BELOW`: the lowest threshold at which sure calls are ≥ ``min_accuracy`` right on
    rendered val scenes *and* on their VAE reconstructions (what generated images look like), while ≥ ``min_sure``
    of the rendered scenes' real objects stay sure. ``threshold`` is None when no threshold meets all three."""
    sweeps = {"rendered": threshold_sweep(rendered)}
    if reconstructed is not None:
        sweeps["vae reconstructions"] = threshold_sweep(reconstructed)
    pick = None
    for k, r in enumerate(sweeps["rendered"]):
        if r["real_sure"] >= min_sure and all(sw[k]["accuracy_sure"] >= min_accuracy for sw in sweeps.values()):
            pick = k
            break
    return {"threshold": None if pick is None else sweeps["rendered"][pick]["threshold"],
            "rule": f"lowest t with sure calls ≥ {min_accuracy:.0%} right on every image set and ≥ {min_sure:.0%} of "
                    "rendered objects sure",
            "at_threshold": {name: sw[pick] for name, sw in sweeps.items()} if pick is not None else None,
            "sweeps": sweeps}


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m daamlib.shapeworld.annotator")
    ap.add_argument("--train", action="store_true", help="fit and save the shape CNN")
    ap.add_argument("--scenes", type=int, default=6000)
    ap.add_argument("--validate", type=int, default=1000, help="test-split scenes to validate on (0: skip)")
    ap.add_argument("--vae", default=None, help="an AutoencoderKL folder: also train/validate on its reconstructions")
    ap.add_argument("--out", default=None, help="write the validation figures to this JSON")
    ap.add_argument("--choose-threshold", type=int, default=0, metavar="N",
                    help="val scenes (and, with --vae, their reconstructions) to choose UNSURE_BELOW on (0: skip)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ann = Annotator.train(a.scenes, vae_path=a.vae) if a.train else Annotator.load()
    if a.train:
        ann.save()
    if a.validate:
        res = {"rendered": validate(ann, a.validate)}
        if a.vae:
            from diffusers import AutoencoderKL

            res["vae_reconstructions"] = validate(ann, a.validate, vae=AutoencoderKL.from_pretrained(a.vae).eval())
        print(json.dumps(res, indent=1))
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=1))
    if a.choose_threshold:
        vae = None
        if a.vae:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(a.vae).eval()
        ch = choose_threshold(detection_outcomes(ann, a.choose_threshold, "val"),
                              detection_outcomes(ann, a.choose_threshold, "val", vae=vae) if vae is not None else None)
        print(json.dumps({k: v for k, v in ch.items() if k != "sweeps"}, indent=1), f"(UNSURE_BELOW is {UNSURE_BELOW})")
