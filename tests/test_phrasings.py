"""Caption phrasings (issue 25): each family says the same scene, in whole tokens of the frozen ShapeWorld-CLIP;
the held-out family never reaches training."""

import pytest

from daamlib.shapeworld import phrasings as P
from daamlib.shapeworld.world import ShapeWorld

SCENES = ShapeWorld().scenes("train", 0, 400)


def test_every_family_keeps_the_words_and_uses_whole_tokens():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained("data/models/shapeworld-clip/clip/tokenizer")
    for s in SCENES:
        for f in P.FAMILIES:
            cap = P.rephrase(s, f)
            assert all(len(tok(w, add_special_tokens=False)["input_ids"]) == 1 for w in cap.split()), cap
            content = sorted(w for w in cap.split() if w not in ("a", "an", "the"))
            if f != "swapped":  # same words, maybe reordered; swapped inverts the relation word
                assert content == sorted(w for w in s.words if w not in ("a", "an", "the")), (s.caption, cap)
            assert len(tok(cap)["input_ids"]) <= tok.model_max_length


def test_families_on_known_captions():
    pair = next(s for s in SCENES if s.kind == "pair" and s.relation == "above" and s.background in ("grass", "sand"))
    first, rel, second, bg = P.parts(pair)
    assert rel == ["above"] and bg == ["on", pair.background] and " ".join(first + rel + second + bg) == pair.caption
    assert P.rephrase(pair, "swapped") == " ".join(second + ["below"] + first + bg)
    assert P.rephrase(pair, "background first") == " ".join(bg + first + rel + second)
    assert P.rephrase(pair, "definite").split()[0] == "the"
    inside = next(s for s in SCENES if s.relation == "inside")
    assert not P.applies(inside, "swapped")  # "contains" is no token: left as it is
    count = next(s for s in SCENES if s.kind == "count")
    assert all(P.rephrase(count, f) == count.caption for f in ("definite", "swapped"))  # a numeral is no article
    with pytest.raises(ValueError, match="unknown phrasing"):
        P.rephrase(pair, "passive")


def test_training_captions_are_drawn_from_the_trained_families_only():
    images, captions = P.render_train_phrased(0, 0, 200)
    assert len(images) == len(captions) == 200
    families = [P.family_of(0, i) for i in range(200)]
    assert set(families) == set(P.TRAINED) and P.HELD_OUT not in P.TRAINED
    assert captions == [P.rephrase(s, f) for s, f in zip(ShapeWorld(seed=0).scenes("train", 0, 200), families)]
    assert not any(c.split()[0] in ("on", "in") for c in captions)  # no caption leads with its background
    assert P.render_train_phrased(0, 50, 60)[1] == captions[50:60]  # the same in any chunking (workers)


def test_quality_prompts_of_a_phrasing_are_the_scenes_it_rephrases():
    """quality --phrasing: the first n two-object scenes the family says differently, captioned in it; the
    annotator's ceiling is taken on those same scenes and captions."""
    from daamlib.shapeworld.quality import scenes_for

    canonical = scenes_for(5, "val")
    assert [i for i, _, _ in canonical] == list(range(5)) and all(c == s.caption for _, s, c in canonical)
    held = scenes_for(5, "val", phrasing=P.HELD_OUT)
    assert all(P.applies(s, P.HELD_OUT) and c == P.rephrase(s, P.HELD_OUT) for _, s, c in held)
    world = ShapeWorld()
    skipped = [i for i in range(held[-1][0]) if i not in [j for j, _, _ in held]]
    assert all(not P.applies(world.scene("val", i, kind="pair"), P.HELD_OUT) for i in skipped)
    with pytest.raises(ValueError, match="unknown phrasing"):
        scenes_for(1, "val", phrasing="passive")
