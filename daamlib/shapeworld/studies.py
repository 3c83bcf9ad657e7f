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

    def correct(self, record: Mapping, hm: HeatMaps, nouns: Sequence[int]) -> bool | None:
        """All these nouns confidently drawn? None when any of them is unknown (only an object the annotator is
        unsure of could be it), as a human annotator would leave the item unlabelled."""
        status = self.annotate(hm.image, record["prompt"]).status
        if any(status.get(i) == "unknown" for i in nouns):
            return None
        return all(status.get(i) == "drawn" for i in nouns)

    def unknown(self, record: Mapping, hm: HeatMaps) -> list[int]:
        """Word positions of the nouns the annotator cannot call drawn or missing (only unsure objects could be
        them); :meth:`noun_masks` leaves them out, :meth:`correct` is None on them."""
        return self.annotate(hm.image, record["prompt"]).unknown

    def regions(self, record: Mapping, hm: HeatMaps) -> dict[int, torch.Tensor]:
        from ..studies.pos import word_regions

        caption = record["prompt"]
        ann = self.annotate(hm.image, caption)
        return word_regions(caption.split(), caption_roles(caption), ann.noun_masks, ann.background_mask)


    def foreground(self, record: Mapping, hm: HeatMaps) -> torch.Tensor:
        return torch.from_numpy(~self.annotate(hm.image, record["prompt"]).background_mask)

    def nouns(self, record: Mapping, hm: HeatMaps) -> list[int]:
        return [i for i, r in caption_roles(record["prompt"]).items() if r == "noun"]

    def objects(self, record: Mapping, hm: HeatMaps) -> torch.Tensor:
        """Every object the annotator detects, named by the prompt or not (a misdrawn one too): their union."""
        union = np.zeros(hm.image.shape[:2], bool)
        for d in self.annotate(hm.image, record["prompt"]).objects:
            union |= d.mask
        return torch.from_numpy(union)


def held_out(caption: str) -> bool:
    """Is this caption string outside the train split (``ShapeWorld.split_of_caption``: val or test by its
    hash), so that the embedded model never saw it as a training caption?"""
    return ShapeWorld.split_of_caption(caption) != "train"


# What :meth:`ShapeWorldStudies.adjective_prompts` builds templates from: the world's own grammar, with the words
# before the colour (size, pattern) and a background phrase or none.
_ADJ_PREFIXES = tuple(f"{s}{p}" for s in ("", "small ", "large ") for p in ("", "striped ", "dotted "))
_ADJ_SUFFIXES = ("", *(f" {b}" for b in BACKGROUND_PHRASES.values()))


class ShapeWorldStudies(Source):
    """Prompts for each study whose caption strings the embedded model never trained on, and
    :class:`AnnotatorTruth`.

    Held out means outside the train split by the caption's hash (:func:`held_out`: val or test), or in the
    unreal split (colour–shape and shape–shape combinations no train scene shows). ``items``: segmentation from
    test, unreal and val scenes; pos and syntax from test scenes. ``pair_items`` (§5.1): held-out "a X and a Y"
    prompts only — the world can make 20 (3 of them cohyponym pairs), fewer than asked beyond that.
    ``adjective_prompts`` (§5.2): templates whose every swap is held out, each with its own adjectives — the
    world can make 65 (75 swaps). The model did train on longer captions that contain a held-out one ("a ring
    and a star on grass"), and on every word.
    """

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

    def edit_items(self, n: int, seed: int = 0) -> list[dict]:
        """Recolouring edits of n two-object test scenes (from index 3000) whose objects both carry a colour word: the
        first object's colour word is swapped for another colour (never one that makes a held-out colour–shape pair),
        its article fixed. Each item: ``id``, ``seed``, ``image`` (the rendered scene, uint8), ``source`` (its caption),
        ``prompt`` (the edited caption), ``word`` and ``occurrence`` (the new colour word), ``kept`` (the other
        object's colour word, unchanged), ``region`` (the recoloured object's exact mask, what should change) and
        ``rgb`` (the new colour as the world paints it)."""
        from .world import COLOURS, HELD_OUT_COLOUR_SHAPE, _article

        items, index = [], 3000
        while len(items) < n:
            scene = self.world.scene("test", index, kind="pair")
            index += 1
            colours = [i for i, role in sorted(scene.roles.items()) if role == "colour"]
            if len(colours) != 2 or any(i not in scene.masks for i in colours):
                continue
            first, other = colours
            shape = scene.words[first + 1] if scene.roles.get(first + 1) == "noun" else scene.objects[0].shape
            old = scene.words[first]
            choices = [c for c in COLOURS if c not in (old, scene.words[other]) and (c, shape) not in HELD_OUT_COLOUR_SHAPE]
            new = choices[(index + seed) % len(choices)]
            words = list(scene.words)
            words[first] = new
            if first > 0 and words[first - 1] in ("a", "an"):
                words[first - 1] = _article(new)
            items.append({"id": f"edit-{len(items):04d}", "seed": seed + len(items), "image": scene.image,
                          "source": scene.caption, "prompt": " ".join(words), "word": new,
                          "occurrence": words[:first].count(new), "kept": scene.words[other],
                          "region": scene.masks[first], "rgb": COLOURS[new]})
        return items

    def real_items(self, n: int, seed: int = 0, split: str = "test") -> list[dict]:
        """Renders for attribution (issue 29): n one- and two-object scenes of ``split`` (test: never trained on;
        val: for choosing settings), from index 4000. Each item: ``id``, ``seed``, ``image``, ``caption``, ``words``,
        ``masks`` (noun word index → exact mask), ``concept_present`` (the scene's nouns), ``concept_absent`` (two
        shapes of the world that are not in the scene, seeded) and ``concept_of`` (noun index → its concept)."""
        import numpy as np

        from .world import SHAPES

        rng = np.random.default_rng([seed, 0 if split == "test" else 1])
        items, index = [], 4000
        while len(items) < n:
            scene = self.world.scene(split, index, kind=("single", "pair")[index % 2])
            index += 1
            nouns = [i for i, role in sorted(scene.roles.items()) if role == "noun" and i in scene.masks]
            if not nouns or any(scene.words[i] not in SHAPES for i in nouns):
                continue
            present = list(dict.fromkeys(scene.words[i] for i in nouns))
            others = [s for s in SHAPES if s not in present]
            absent = [others[k] for k in rng.choice(len(others), size=2, replace=False)]
            items.append({"id": f"{split}-{len(items):04d}", "seed": seed + len(items), "image": scene.image,
                          "caption": scene.caption, "words": list(scene.words),
                          "masks": {i: scene.masks[i] for i in nouns}, "concept_present": present,
                          "concept_absent": absent, "concept_of": {i: scene.words[i] for i in nouns}})
        return items

    def ontology(self) -> dict[str, tuple[str, ...]]:
        return ONTOLOGY

    def adjective_templates(self) -> dict[str, list[str]]:
        """Every held-out §5.2 template the world's grammar makes: "a [size] [pattern] {adj} <shape> [background
        phrase]" with the colours whose prompt is held out (:func:`held_out`), kept when two or more are — a seed
        and a swap. Left out: colour–shape pairs the world never shows (the unreal split's) and, without a word
        before the colour, colours that take "an" ("a orange" is not the world's grammar). 65 templates."""
        out = {}
        for shape in SHAPES:
            for prefix in _ADJ_PREFIXES:
                for suffix in _ADJ_SUFFIXES:
                    template = f"a {prefix}{{adj}} {shape}{suffix}"
                    adjs = [c for c in COLOURS if (c, shape) not in HELD_OUT_COLOUR_SHAPE
                            and (prefix or c[0] not in "aeiou") and held_out(template.format(adj=c))]
                    if len(adjs) >= 2:
                        out[template] = adjs
        return out

    def adjective_prompts(self, n: int, seed: int = 0) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
        """``n`` of :meth:`adjective_templates` drawn by ``seed`` (all of them, fewer than ``n``, when ``n`` is
        larger), as ``{template: its adjectives}``, and the world's colours as ``{adjective: [r, g, b]}``. Every
        prompt a template makes with its adjectives is outside the train split."""
        made = self.adjective_templates()
        keys = list(made)
        picked = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))[:n]]
        return {t: made[t] for t in picked}, {k: list(v) for k, v in COLOURS.items()}

    def pair_items(self, n: int, ontology: Mapping[str, tuple[str, ...]], seed: int = 0,
                   captions: str = "all") -> list[dict]:
        """§5.1's "a(n) X and a(n) Y" items from the world's own ontology, each marked ``held_out`` (:func:`held_out`:
        a caption outside the train split). ``captions``: ``"held-out"`` keeps only those — the world makes just 20
        (3 of them cohyponym pairs), too few for §5.1 — ``"seen"`` only train captions, ``"all"`` (notebook 04's
        default) both: every one of the 182 ordered pairs, so :func:`daamlib.studies.cohyponyms.seen_vs_unseen`
        can measure whether training on a caption changes the measures. Cohyponym and other pairs alternate while
        both last, in an order drawn by ``seed``; for a larger ``n`` all the kind asked for are returned. Another
        ontology (e.g. COCO) gets :func:`daamlib.studies.cohyponyms.pair_items` unchanged."""
        from ..studies.cohyponyms import are_cohyponyms, pair_items, pair_prompt

        if captions not in ("held-out", "seen", "all"):
            raise ValueError(f"captions is 'held-out', 'seen' or 'all', not {captions!r}")
        if dict(ontology) != dict(ONTOLOGY):
            return pair_items(n, ontology, seed)
        words = [w for ws in ontology.values() for w in ws]
        keep = {"held-out": (True,), "seen": (False,), "all": (True, False)}[captions]
        pairs = [(a, b) for a in words for b in words if a != b and held_out(pair_prompt(a, b)) in keep]
        rng = np.random.default_rng(seed)
        co = [pairs[i] for i in rng.permutation(len(pairs)) if are_cohyponyms(*pairs[i], ontology)]
        non = [pairs[i] for i in rng.permutation(len(pairs)) if not are_cohyponyms(*pairs[i], ontology)]
        mixed = [p for k in range(max(len(co), len(non))) for p in (co[k:k + 1] + non[k:k + 1])][:n]
        return [{"id": f"pair-{i:04d}", "prompt": pair_prompt(a, b), "seed": seed + i, "a": a, "b": b,
                 "cohyponyms": are_cohyponyms(a, b, ontology), "held_out": held_out(pair_prompt(a, b))}
                for i, (a, b) in enumerate(mixed)]
