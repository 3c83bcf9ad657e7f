"""Your own images and masks for notebook 06 (issue 29): a folder in one of two layouts, read into the items
:func:`daamlib.studies.real_images.real_image_rows` scores.

One folder per image (the human-mask layout of :mod:`daamlib.studies.segmentation`)::

    IMAGES_DIR/<name>/image.png (or .jpg)   the image
    IMAGES_DIR/<name>/<class>.png           one mask per class in it: white (or opaque alpha) = the class
    IMAGES_DIR/<name>/caption.txt           optional: a caption that names every class (else one is made)

PASCAL VOC (its ``VOCdevkit/VOC2012`` folder, or any folder laid out the same)::

    IMAGES_DIR/JPEGImages/<name>.jpg
    IMAGES_DIR/SegmentationClass/<name>.png  palette indices: 1–20 the classes of :data:`VOC_CLASSES`, 0 background,
                                             255 the boundary band, which no one can say is in or out: left out of
                                             every IoU (neither a hit nor a miss)

Each image is cropped to its centre square and resized to ``size`` (masks by nearest neighbour). Captions made here
read "a photo of a X and a Y" (the classes in it, in vocabulary order); a class of two words is mapped by its last
word ("potted plant" → "plant"), its concept is the whole name. Absent concepts: two classes of the folder's
vocabulary that are not in the image, seeded. Val and test are split by a hash of the image's name (one in five
is val), so the same image is always on the same side.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
               "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor")
IMAGE_NAMES = ("image.png", "image.jpg", "image.jpeg")
VOID = 255  # VOC's boundary label


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def split_of(name: str) -> str:
    """``val`` for one image name in five (by CRC-32), ``test`` for the rest."""
    return "val" if zlib.crc32(name.encode()) % 5 == 0 else "test"


def _square(im, size: int, resample):
    from PIL import Image

    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return im.crop(box).resize((size, size), resample if resample is not None else Image.BILINEAR)


class ImageFolder:
    """Images with exact masks from ``folder`` (see the module's docs for the two layouts), at ``size`` pixels."""

    def __init__(self, folder: str | Path, size: int):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"no image folder at {folder}; expected <name>/image.png with <class>.png masks "
                                    "beside it, or PASCAL VOC's JPEGImages/ and SegmentationClass/")
        if not isinstance(size, int) or size < 8 or size % 8:
            raise ValueError(f"size must be a multiple of 8 (the model's latent factor), got {size!r}")
        self.size = size
        self.voc = (self.folder / "SegmentationClass").is_dir() and (self.folder / "JPEGImages").is_dir()
        if self.voc:
            self.names = sorted(p.stem for p in (self.folder / "SegmentationClass").glob("*.png"))
            self.vocabulary = list(VOC_CLASSES)
        else:
            self.names = sorted(p.name for p in self.folder.iterdir() if p.is_dir()
                                and any((p / n).is_file() for n in IMAGE_NAMES))
            self.vocabulary = sorted({m.stem for n in self.names for m in (self.folder / n).glob("*.png")
                                      if m.name not in IMAGE_NAMES})
        if not self.names:
            raise ValueError(f"{folder} holds no image in either layout: <name>/image.png with <class>.png masks, or "
                             "JPEGImages/<name>.jpg with SegmentationClass/<name>.png")

    def _read(self, name: str) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None, str | None]:
        """(image, class → mask, the void band or None, the folder's caption or None), at ``size``."""
        from PIL import Image

        if self.voc:
            with Image.open(self.folder / "JPEGImages" / f"{name}.jpg") as im:
                image = np.asarray(_square(im.convert("RGB"), self.size, None))
            with Image.open(self.folder / "SegmentationClass" / f"{name}.png") as im:
                labels = np.asarray(_square(im, self.size, Image.NEAREST))  # palette indices
            masks = {VOC_CLASSES[k - 1]: labels == k for k in np.unique(labels) if 1 <= k <= len(VOC_CLASSES)}
            return image, masks, labels == VOID, None
        folder = self.folder / name
        path = next(folder / n for n in IMAGE_NAMES if (folder / n).is_file())
        with Image.open(path) as im:
            image = np.asarray(_square(im.convert("RGB"), self.size, None))
        masks = {}
        for m in sorted(folder.glob("*.png")):
            if m.name in IMAGE_NAMES:
                continue
            with Image.open(m) as im:
                arr = np.asarray(_square(im, self.size, Image.NEAREST))
            arr = arr[..., 3] if arr.ndim == 3 and arr.shape[2] == 4 else (arr[..., :3].mean(-1) if arr.ndim == 3 else arr)
            if (arr >= 128).any():
                masks[m.stem] = arr >= 128
        caption = (folder / "caption.txt").read_text().strip() if (folder / "caption.txt").is_file() else None
        return image, masks, None, caption

    def items(self, n: int, seed: int = 0, split: str = "test") -> list[dict]:
        """Up to ``n`` items of ``split`` in the layout :func:`~daamlib.studies.real_images.real_image_rows` takes."""
        rng = np.random.default_rng([seed, 0 if split == "test" else 1])
        out = []
        for name in (nm for nm in self.names if split_of(nm) == split):
            if len(out) == n:
                break
            image, masks, void, caption = self._read(name)
            if not masks:
                continue
            classes = [c for c in self.vocabulary if c in masks]
            nouns = {c: c.split()[-1] for c in classes}
            if caption is None:
                caption = "a photo of " + " and ".join(f"{_article(c)} {c}" for c in classes)
            words = caption.split()
            index_of, concept_of, kept = {}, {}, {}
            lowered = [w.strip(".,;:!?").lower() for w in words]
            for c in classes:
                if nouns[c].lower() not in lowered:
                    raise ValueError(f"{self.folder / name}/caption.txt does not name {c!r} (as {nouns[c]!r}); name "
                                     "every masked class in the caption, or delete caption.txt to have one made")
                i = lowered.index(nouns[c].lower())
                kept[i], concept_of[i] = masks[c], c
            others = [c for c in self.vocabulary if c not in masks]
            absent = [others[k] for k in rng.choice(len(others), size=min(2, len(others)), replace=False)]
            out.append({"id": f"{split}-{name}", "seed": seed + len(out), "image": image, "caption": caption,
                        "words": [w.strip(".,;:!?") for w in words], "masks": kept, "ignore": void,
                        "concept_present": classes, "concept_absent": absent, "concept_of": concept_of})
        if not out:
            raise ValueError(f"{self.folder} has no {split} image with a mask (one name in five is val, by hash); "
                             "add images, or lower N_VAL / N_IMAGES")
        return out
