"""Build a CLIP-format BPE vocabulary (``vocab.json`` + ``merges.txt``) from a list of texts.

``CLIPTokenizer.from_pretrained(out_dir)`` loads the result, so tests and the embedded
ShapeWorld model get a real CLIP tokenizer without downloading one. The layout follows
OpenAI's CLIP: 256 byte symbols, the same 256 with the end-of-word marker ``</w>``, one
entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>``.

>>> build_clip_vocab(["a red circle above a blue square"] * 4, "/tmp/vocab", num_merges=20)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import regex

# CLIP's pre-tokenizer pattern (lower-cased text is split into these pieces before BPE).
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe(texts: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """Learn up to ``num_merges`` merges, most frequent pair first (ties broken by the pair itself)."""
    byte_map = bytes_to_unicode()
    counts: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for piece in _PATTERN.findall(" ".join(text.lower().split())):
            symbols = [byte_map[b] for b in piece.encode("utf-8")]
            counts[tuple(symbols[:-1]) + (symbols[-1] + "</w>",)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in counts.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, n in counts.items():
            merged[_merge(word, best)] += n
        counts = merged
    return merges


def build_clip_vocab(texts: Iterable[str], out_dir: str | Path, num_merges: int = 1000) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for ``CLIPTokenizer`` into ``out_dir`` and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = train_bpe(texts, num_merges)
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in vocab_list:  # a merge can rebuild an existing symbol; keep the first id
        vocab.setdefault(token, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return out


def build_clip_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    num_merges: int = 1000,
    model_max_length: int = 77,
    pad_token: str = EOS,
):
    """Build a vocabulary (see :func:`build_clip_vocab`) and save a ready ``CLIPTokenizer`` beside it.

    ``pad_token`` is ``<|endoftext|>`` as in SD 1.x, or ``"!"`` as in SD 2.x and SDXL's second tokenizer.
    """
    from transformers import CLIPTokenizer

    out = build_clip_vocab(texts, out_dir, num_merges)
    tokenizer = CLIPTokenizer.from_pretrained(out, model_max_length=model_max_length, pad_token=pad_token)
    tokenizer.save_pretrained(out)
    return tokenizer
