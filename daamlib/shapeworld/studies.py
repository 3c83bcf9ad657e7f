"""ShapeWorld as a source for the paper's studies: its prompts per study, and its annotator as ground truth.

Registered for the model ``shapeworld`` (:func:`daamlib.studies.data.open_source`), so the notebooks
ask for items and masks without knowing which model they run on.

>>> source = ShapeWorldStudies()
>>> source.items("syntax", n=2)[0]["id"]
'syn-0000'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..heatmap import HeatMaps
from ..studies.data import Source
from .world import (BACKGROUND_PHRASES, BACKGROUND_WORDS, COLOURS, HELD_OUT_COLOUR_SHAPE, NUMERALS, ONTOLOGY, PATTERNS,
                    PLURAL, SHAPES, SIZES, ShapeWorld)

_ROLES = {**{s: "noun" for s in (*SHAPES, *PLURAL.values())}, **{c: "colour" for c in COLOURS},
          **{s: "size" for s in SIZES}, **{p: "pattern" for p in PATTERNS},
          **{n: "numeral" for n in NUMERALS.values()}, **{b: "background" for b in BACKGROUND_WORDS}}


def caption_roles(caption: str) -> dict[int, str]:
    """Word position → role (noun, colour, size, pattern, numeral, background) of a ShapeWorld caption's words;
    the same as the rendered scene's ``roles`` (a test checks it), so a caption alone is enough."""
    return {i: _ROLES[w] for i, w in enumerate(caption.split()) if w in _ROLES}


class AnnotatorTruth:
    """The annotator as ground truth: it segments each generated image and matches the caption's nouns
    (and their colour words) to the objects it finds. Annotations are cached per image."""

    has_masks = True
    has_labels = True

    def __init__(self, annotator=None):
        from .annotator import Annotator

        self.annotator = annotator or Annotator.load()
        self._cache: dict = {}

    def annotate(self, image: np.ndarray, caption: str):
        key = (caption, image.tobytes())
        if key not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = self.annotator.annotate(image, caption)
        return self._cache[key]

    def noun_masks(self, record: Mapping, hm: HeatMaps) -> dict[int, torch.Tensor]:
        ann = self.annotate(hm.image, record["prompt"])
        return {i: torch.from_numpy(m) for i, m in ann.noun_masks.items() if m.any()}

    def correct(self, record: Mapping, hm: HeatMaps, nouns: Sequence[int]) -> bool:
        present = self.annotate(hm.image, record["prompt"]).present
        return all(bool(present.get(i)) for i in nouns)

    def regions(self, record: Mapping, hm: HeatMaps) -> dict[int, torch.Tensor]:
        from ..studies.pos import word_regions

        caption = record["prompt"]
        ann = self.annotate(hm.image, caption)
        return word_regions(caption.split(), caption_roles(caption), ann.noun_masks, ann.background_mask)


    def foreground(self, record: Mapping, hm: HeatMaps) -> torch.Tensor:
        return torch.from_numpy(~self.annotate(hm.image, record["prompt"]).background_mask)

    def nouns(self, record: Mapping, hm: HeatMaps) -> list[int]:
        return [i for i, r in caption_roles(record["prompt"]).items() if r == "noun"]


class ShapeWorldStudies(Source):
    """Prompts for each study from the world's held-out splits (never train), and :class:`AnnotatorTruth`."""

    def __init__(self, world: ShapeWorld | None = None):
        self.world = world or ShapeWorld()
        self._truth = None

    @property
    def truth(self) -> AnnotatorTruth:  # loaded on first use: the annotator's weights are read from disk
        if self._truth is None:
            self._truth = AnnotatorTruth()
        return self._truth

    def items(self, study: str, n: int, seed: int = 0) -> list[dict]:
        """``segmentation``: n test (``Gen``) and n unreal (``Unreal``) scenes, and n validation scenes (``val``, for
        choosing τ away from the reported splits); ``pos``: test scenes from index 1000; ``syntax``: two-object test
        scenes from index 2000. Item i has seed ``seed + i``."""
        w = self.world
        if study == "segmentation":
            return [{"id": f"{label.lower()}-{i:04d}", "prompt": w.scene(split, i).caption, "seed": seed + i,
                     "split": label} for label, split in (("Gen", "test"), ("Unreal", "unreal"), ("val", "val"))
                    for i in range(n)]
        if study == "pos":
            return [{"id": f"pos-{i:04d}", "prompt": w.scene("test", 1000 + i).caption, "seed": seed + i}
                    for i in range(n)]
        if study == "syntax":
            return [{"id": f"syn-{i:04d}", "prompt": w.scene("test", 2000 + i, kind="pair").caption, "seed": seed + i}
                    for i in range(n)]
        raise ValueError(f"ShapeWorld makes items for segmentation, pos and syntax, not {study!r} "
                         "(cohyponym pairs come from the ontology, adjective prompts from adjective_prompts)")

    def ontology(self) -> dict[str, tuple[str, ...]]:
        return ONTOLOGY

    def adjective_prompts(self, n: int, seed: int = 0) -> tuple[list[str], dict[str, list[int]]]:
        """``n`` templates "a {adj} <shape> <background phrase>" (shapes never held out with a colour, so that
        every colour swap stays in the seen combinations' shapes) and the world's colours as adjectives."""
        rng = np.random.default_rng(seed)
        backgrounds = list(BACKGROUND_PHRASES.values())
        shapes = [s for s in SHAPES if not any(s == h for _, h in HELD_OUT_COLOUR_SHAPE)]
        templates = [f"a {{adj}} {shapes[rng.integers(len(shapes))]} {backgrounds[i % len(backgrounds)]}"
                     for i in range(n)]
        return templates, {k: list(v) for k, v in COLOURS.items()}
