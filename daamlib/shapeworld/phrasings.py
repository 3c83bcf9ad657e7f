"""Caption phrasings of one scene (issue 25): the world writes every caption one way ("a red circle above a blue
square on grass"); a model trained on that one grammar may have learnt the template, not the words. These
families say the same scene in other word orders and articles, in words the frozen ShapeWorld-CLIP has as whole
tokens (its vocabulary is 711 tokens: "with" or "background" would be split into letters), so that a model can be
trained on some and evaluated on one it never saw.

* ``canonical``: the world's caption.
* ``definite``: every article "the" ("the red circle above the blue square on grass").
* ``swapped``: a two-object caption from its other object, the relation inverted ("a blue square below a red
  circle on grass"); "inside" has no inverse in the vocabulary ("contains" is not a token), so it stays.
* ``background first``: the background phrase leads ("on grass a red circle above a blue square"); held out of
  training (:data:`HELD_OUT`).

A family that does not apply to a scene (no second object, no background phrase) leaves its caption as it is.
Colour words stay before their nouns in every family, which the annotator's caption parse needs.
"""

from __future__ import annotations

import numpy as np

from .world import BACKGROUND_PHRASES

FAMILIES = ("canonical", "definite", "swapped", "background first")
TRAINED = ("canonical", "definite", "swapped")
HELD_OUT = "background first"
INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of", "next to": "next to",
           "touching": "touching", "overlapping": "overlapping", "and": "and"}


def parts(scene) -> tuple[list[str], list[str], list[str], list[str]]:
    """(first noun phrase, relation words, second noun phrase, background words) of a scene's caption; the last
    three are empty where the scene has none (one object, a count, a plain background)."""
    words = list(scene.words)
    background = BACKGROUND_PHRASES.get(scene.background, "").split()
    if background and words[-len(background):] == background:
        words = words[: -len(background)]
    else:
        background = []
    if scene.kind != "pair" or scene.relation is None:
        return words, [], [], background
    first_noun = min(i for i, r in scene.roles.items() if r == "noun")
    rel = scene.relation.split()
    if words[first_noun + 1: first_noun + 1 + len(rel)] != rel:
        raise ValueError(f"cannot find the relation {scene.relation!r} after the first noun in {scene.caption!r}")
    return words[: first_noun + 1], rel, words[first_noun + 1 + len(rel):], background


def applies(scene, family: str) -> bool:
    """Whether ``family`` says this scene differently from the world's caption."""
    return rephrase(scene, family) != scene.caption


def rephrase(scene, family: str) -> str:
    """The scene's caption in ``family`` (one of :data:`FAMILIES`)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown phrasing {family!r}; choose one of {FAMILIES}")
    first, rel, second, background = parts(scene)
    if family == "definite":
        heads = (0, len(first) + len(rel))  # where each noun phrase starts (a count's numeral is no article)
        words = ["the" if w in ("a", "an") and i in heads else w for i, w in enumerate(first + rel + second)]
        return " ".join(words + background)
    if family == "swapped" and rel and " ".join(rel) in INVERSE:
        return " ".join(_with_article(second) + INVERSE[" ".join(rel)].split() + _with_article(first) + background)
    if family == "background first" and background:
        return " ".join(background + first + rel + second)
    return scene.caption


def _with_article(np_words: list[str]) -> list[str]:
    """A noun phrase at the head of a caption or after a relation keeps its own article ("a"/"an" as its next
    word needs)."""
    if np_words and np_words[0] in ("a", "an"):
        return ["an" if np_words[1][0] in "aeiou" else "a"] + np_words[1:]
    return np_words


def family_of(seed: int, index: int, families=TRAINED) -> str:
    """The phrasing a training scene is captioned in: drawn once per scene from ``families``, the same on every run
    and in every worker."""
    return families[int(np.random.default_rng([seed, index, 25]).integers(len(families)))]


def render_train_phrased(seed: int, start: int, stop: int):
    """:func:`daamlib.shapeworld.train.render_train` with each scene's caption in its drawn trained phrasing."""
    from .world import ShapeWorld

    scenes = ShapeWorld(seed=seed).scenes("train", start, stop - start)
    return (np.stack([s.image for s in scenes]),
            [rephrase(s, family_of(seed, start + i)) for i, s in enumerate(scenes)])
