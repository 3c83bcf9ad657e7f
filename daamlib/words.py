"""Word ↔ token alignment, taken from the tokenizer's own character offsets.

A *word* is a run of letters or digits (with inner apostrophes, "cat's"), or a run of
punctuation. Each word owns the tokens whose character spans fall inside it, so a word the
BPE splits ("zebra" → "z", "ebra</w>") owns several tokens, and punctuation glued to a word
("giraffe,") is a word of its own. Positions count the start token, as the text encoder sees
them: token 0 is ``<|startoftext|>``.

>>> words = align_words("A giraffe, and a zebra", tokenizer)  # doctest: +SKIP
>>> [(w.text, w.tokens) for w in words]                         # doctest: +SKIP
[('A', (1,)), ('giraffe', (2,)), (',', (3,)), ('and', (4,)), ('a', (5,)), ('zebra', (6, 7))]
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

_WORD = regex.compile(r"[\p{L}\p{N}]+(?:'[\p{L}\p{N}]+)*|[^\s\p{L}\p{N}]+")


class WordNotFoundError(KeyError):
    """A requested word is not in the prompt (or only in its truncated tail)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AmbiguousWordError(KeyError):
    """A word occurs more than once and no occurrence was chosen."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Word:
    """One word of a prompt: its text, character span, and token positions (start token = 0)."""

    text: str
    index: int  # position among the prompt's words
    occurrence: int  # 0 for the first time this (lower-cased) word appears, 1 for the second, ...
    span: tuple[int, int]  # characters [start, end) in the prompt
    tokens: tuple[int, ...]  # token positions, counting <|startoftext|> as 0; empty if truncated
    truncated: bool = False  # the text encoder never saw this word (prompt over its length limit)


@dataclass(frozen=True)
class Alignment:
    """Tokens and words of one prompt as a given tokenizer sees them."""

    prompt: str
    tokens: tuple[str, ...]  # kept tokens: start, prompt tokens (possibly truncated), first end token
    words: tuple[Word, ...]
    max_length: int  # the text encoder's limit, start and end tokens included

    @property
    def truncated(self) -> bool:
        return any(w.truncated for w in self.words)

    def find(self, word: str, occurrence: int | None = None) -> Word:
        """The word ``word`` (case-insensitive); ``occurrence`` picks among repeats (0-based)."""
        if not isinstance(word, str):
            raise TypeError(f"a word must be a string, got {type(word).__name__} {word!r}")
        matches = [w for w in self.words if w.text.lower() == word.strip().lower()]
        listing = ", ".join(w.text for w in self.words)
        if not matches:
            hint = " (it is more than one word: look them up one at a time)" if len(_WORD.findall(word)) > 1 else ""
            raise WordNotFoundError(f"{word!r} is not in the prompt {self.prompt!r}{hint}; words are: {listing}")
        if occurrence is None:
            if len(matches) > 1:
                raise AmbiguousWordError(
                    f"{word!r} occurs {len(matches)} times in {self.prompt!r}; choose one with "
                    f"occurrence=0..{len(matches) - 1} (e.g. heat_maps[{word!r}, 1] for the second)"
                )
            occurrence = 0
        if not 0 <= occurrence < len(matches):
            raise WordNotFoundError(
                f"{word!r} occurs {len(matches)} time(s) in {self.prompt!r}; occurrence={occurrence} is out of range, "
                f"use occurrence=0..{len(matches) - 1}"
            )
        found = matches[occurrence]
        if found.truncated:
            raise WordNotFoundError(
                f"{word!r} (character {found.span[0]}) lies past the text encoder's limit of {self.max_length} tokens, "
                f"so the model never saw it and it has no map; shorten the prompt {self.prompt[:40]!r}..."
            )
        return found


def align_words(prompt: str, tokenizer) -> Alignment:
    """Align ``prompt``'s words with the tokens ``tokenizer`` makes of it (needs a fast tokenizer's offsets)."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a string, got {type(prompt).__name__} {prompt!r}")
    max_length = tokenizer.model_max_length
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} gives no character offsets; load a fast tokenizer")
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    kept = max(0, min(len(ids), max_length - 2))  # room for the start and end tokens
    tokens = (
        [tokenizer.bos_token]
        + tokenizer.convert_ids_to_tokens(ids[:kept])
        + [tokenizer.eos_token]
    )
    words: list[Word] = []
    seen: dict[str, int] = {}
    for m in _WORD.finditer(prompt):
        start, end = m.span()
        positions = tuple(i + 1 for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a)
        if not positions:  # characters the tokenizer drops (e.g. control characters)
            continue
        key = m.group().lower()
        occ = seen.get(key, 0)
        seen[key] = occ + 1
        truncated = positions[-1] > kept
        words.append(
            Word(m.group(), len(words), occ, (start, end), () if truncated else positions, truncated)
        )
    return Alignment(prompt, tuple(tokens), tuple(words), max_length)
