"""Word ↔ token alignment from the tokenizer's offsets, with a real CLIPTokenizer built offline."""

import pytest
from transformers import CLIPTokenizer

from daamlib.testing.tiny import tokenizer_dir
from daamlib.words import AmbiguousWordError, WordNotFoundError, align_words


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.from_pretrained(tokenizer_dir())


def test_tokens_match_what_the_text_encoder_sees(tok):
    prompt = "A giraffe, and a zebra!"
    al = align_words(prompt, tok)
    ids = tok(prompt, truncation=True, max_length=tok.model_max_length).input_ids
    assert list(al.tokens) == tok.convert_ids_to_tokens(ids)


def test_multi_token_word_owns_all_its_tokens(tok):
    al = align_words("a giraffe and a zebra", tok)
    zebra = al.find("zebra")
    assert len(zebra.tokens) == 2  # the tiny BPE splits it: z + ebra</w>
    assert "".join(al.tokens[i] for i in zebra.tokens).replace("</w>", "") == "zebra"


def test_punctuation_is_its_own_word_and_not_part_of_the_noun(tok):
    al = align_words("A giraffe, and a zebra!", tok)
    assert [w.text for w in al.words] == ["A", "giraffe", ",", "and", "a", "zebra", "!"]
    g = al.find("giraffe")
    assert [al.tokens[i] for i in g.tokens] == ["giraffe</w>"]
    assert al.tokens[al.find(",").tokens[0]] == ",</w>"


def test_case_and_whitespace(tok):
    prompt = "A   GIRAFFE\tand a Zebra"
    al = align_words(prompt, tok)
    g = al.find("giraffe")
    assert prompt[slice(*g.span)] == "GIRAFFE"
    assert al.find("ZEBRA").text == "Zebra"


def test_repeated_word_needs_an_occurrence(tok):
    al = align_words("a cat and a dog", tok)
    with pytest.raises(AmbiguousWordError, match="occurs 2 times.*occurrence=0..1"):
        al.find("a")
    first, second = al.find("a", 0), al.find("a", 1)
    assert first.tokens == (1,) and second.tokens == (4,)
    with pytest.raises(WordNotFoundError, match="out of range"):
        al.find("a", 2)


def test_missing_word_lists_the_prompts_words(tok):
    al = align_words("a giraffe and a cat", tok)
    with pytest.raises(WordNotFoundError, match="'zebra' is not in the prompt 'a giraffe and a cat'; words are: a, giraffe, and, a, cat"):
        al.find("zebra")


def test_words_past_the_encoder_limit_are_truncated_with_a_clear_error(tok):
    prompt = " ".join(["cat"] * 80) + " zebra"
    al = align_words(prompt, tok)
    assert al.truncated and len(al.tokens) == tok.model_max_length
    with pytest.raises(WordNotFoundError, match="past the text encoder's limit of 77 tokens"):
        al.find("zebra")
    assert al.find("cat", 74).tokens == (75,)  # the last word that fits


def test_non_string_prompt_and_word(tok):
    with pytest.raises(TypeError, match="must be a string"):
        align_words(["a cat"], tok)
    with pytest.raises(TypeError, match="must be a string"):
        align_words("a cat", tok).find(3)
