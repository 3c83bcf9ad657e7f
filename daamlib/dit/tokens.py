"""Words ↔ tokens, as the pipeline tokenizes: the text *streams* a family's transformer input holds, a prompt's
tokens in each (template, special tokens, truncation, padding as the pipeline does them), and the alignment of the
prompt's words to the kept positions of the text input.

A word owns the tokens whose characters fall inside it. ``encoder=`` chooses the stream(s) whose tokens are kept:
``"t5"``, ``"clip"``, ``"lm"`` or ``"all"`` (every stream the model attends).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from ..words import Alignment, Word, _WORD
from .registry import Stream, family_of

ENCODERS = ("all", "clip", "t5", "lm")


# -- chat templates: the helpers families' templates share ----------------------------------------------------
def around_prompt(render) -> str:
    """A template with ``{}`` where the prompt goes: ``render(text)`` places a marker text, which is then replaced."""
    mark = "\ue000prompt\ue001"  # private-use characters: never in a prompt
    return render(mark).replace(mark, "{}")


def user_message(pipe, thinking: bool) -> str:
    """The prompt as the user's message in the tokenizer's chat template, generation prompt on."""
    return around_prompt(lambda mark: pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": mark}], tokenize=False, add_generation_prompt=True, enable_thinking=thinking))


# -- tokens of one stream ----------------------------------------------------------------------------------
def _attr(pipe, value):
    return getattr(pipe, value) if isinstance(value, str) else value


@dataclass
class StreamTokens:
    """One prompt's tokens in one stream: labels and character spans of the kept tokens, their positions in
    the stream's segment, and the words the tokenizer dropped (truncation)."""

    labels: list[str]
    positions: list[int]
    spans: list[tuple[int, int] | None]  # in prompt characters; None for special tokens
    dropped_from: int | None  # first prompt character past the truncation, if any


def stream_tokens(pipe, stream: Stream, prompt: str, max_length: int | None, args: dict | None = None) -> StreamTokens:
    tok = pipe
    for part in stream.tokenizer.split("."):
        tok = getattr(tok, part)
    if not getattr(tok, "is_fast", False):
        raise TypeError(f"{type(pipe).__name__}.{stream.tokenizer} ({type(tok).__name__}) gives no character "
                        "offsets; load the pipeline with a fast tokenizer")
    template = (stream.template(pipe, args) if callable(stream.template)
                else _attr(pipe, stream.template) if stream.template != "{}" else "{}")
    drop = int((stream.drop(pipe, args) if callable(stream.drop) else _attr(pipe, stream.drop)) or 0)
    at = template.index("{}")
    moved = 0  # characters of the prompt before the text the tokenizer sees (stripped leading spaces)
    if stream.lower and len(prompt.strip().lower()) == len(prompt.strip()):
        moved = len(prompt) - len(prompt.lstrip())
        prompt = prompt.strip().lower()
    text = template[:at] + prompt + template[at + 2:]
    limit = None if max_length is None else max_length + drop
    enc = tok(text, return_offsets_mapping=True, truncation=limit is not None, max_length=limit,
              add_special_tokens=stream.special_tokens)
    offsets = enc["offset_mapping"]
    ids = enc["input_ids"]
    labels = tok.convert_ids_to_tokens(ids)
    end = at + len(prompt)
    inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > at]
    if not inside:
        return StreamTokens([], [], [], 0)
    first, last = inside[0], inside[-1]
    if first > 0 and offsets[first - 1] == (0, 0) and ids[first - 1] in tok.all_special_ids:
        first -= 1  # a start token (CLIP's <|startoftext|>)
    if last + 1 < len(ids) and offsets[last + 1] == (0, 0) and ids[last + 1] in tok.all_special_ids:
        last += 1  # the end token (T5's </s>, CLIP's <|endoftext|>)
    keep = [i for i in range(first, last + 1) if i >= drop]
    shift = (limit - len(ids)) if stream.pads and limit is not None and tok.padding_side == "left" else 0
    spans = []
    for i in keep:
        a, b = offsets[i]
        spans.append((max(a, at) - at + moved, min(b, end) - at + moved) if b > a and a < end and b > at else None)
    covered = max((offsets[i][1] for i in inside), default=at)
    dropped = None if covered >= end or not text[covered:end].strip() else covered - at + moved
    return StreamTokens([labels[i] for i in keep], [i - drop + shift for i in keep], spans, dropped)


def _text_length(text) -> int:
    """Text positions of a transformer's text input: ``[B, L, D]``, or the longest of Z-Image's ``[L_i, D]`` list."""
    return max(len(c) for c in text) if isinstance(text, list) else text.shape[1]


def _kept(pipe, stream: Stream, encoder: str) -> bool:
    """Does ``encoder=`` keep this stream's tokens (and is its text encoder loaded)?"""
    return ((encoder == "all" or stream.name == encoder)
            and (stream.encoder is None or getattr(pipe, stream.encoder, None) is not None))


def _max_length(pipe, stream: Stream, args: dict) -> int | None:
    """The stream's token limit: a fixed number, or encode_prompt's argument (else the pipeline's attribute)."""
    ml = stream.max_length if isinstance(stream.max_length, int) else args.get(stream.max_length,
                                                                               getattr(pipe, stream.max_length, None))
    return None if ml is None else int(ml)


def token_count(pipe, prompt: str, encoder: str = "all") -> int:
    """Text tokens a trace keeps for ``prompt`` alone (the token axis of its maps, its store and its replay),
    from the tokenizers only: nothing runs."""
    n = 0
    for s in family_of(pipe).streams:
        if _kept(pipe, s, encoder):
            pos = stream_tokens(pipe, s, prompt, _max_length(pipe, s, {}), {}).positions
            n += max(pos) - min(pos) + 1 if pos else 0
    return n


def build_alignment(prompt: str, parts: list[tuple[str, StreamTokens, int]], axis: list[int],
                    max_length: int) -> Alignment:
    """An :class:`Alignment` whose token axis is ``axis`` (positions in the transformer's text input) and whose
    words own every kept token of theirs, in every chosen stream. ``parts``: (stream name, tokens, segment start)."""
    where = {pos: i for i, pos in enumerate(axis)}
    labels = ["<pad>"] * len(axis)
    spans: list[tuple[int, tuple[int, int] | None]] = []
    dropped = [st.dropped_from for _, st, _ in parts if st.dropped_from is not None]
    for name, st, start in parts:
        for label, pos, span in zip(st.labels, st.positions, st.spans):
            i = where[start + pos]
            labels[i] = label if len(parts) == 1 else f"{name}:{label}"
            spans.append((i, span))
    words: list[Word] = []
    seen: dict[str, int] = {}
    for m in _WORD.finditer(prompt):
        a, b = m.span()
        own = tuple(sorted({i for i, s in spans if s is not None and s[0] < b and s[1] > a}))
        truncated = not own and any(d <= a for d in dropped)
        if not own and not truncated:
            continue  # characters the tokenizer drops
        key = m.group().lower()
        occ = seen.get(key, 0)
        seen[key] = occ + 1
        words.append(Word(m.group(), len(words), occ, (a, b), own, truncated))
    return Alignment(prompt, tuple(labels), tuple(words), max_length)


def align_prompts(pipe, streams: tuple[Stream, ...], encoder: str, prompts: list[str | None], cond, args: dict
                  ) -> tuple[list[int] | None, list[Alignment | None]]:
    """The kept positions of the text input (the maps' token axis) and each prompt's alignment to them, for
    ``encode_prompt``'s arguments ``args`` and conditional output ``cond``; (None, [None, ...]) when a prompt is
    unknown (``prompt_embeds`` only)."""
    if any(p is None for p in prompts) or cond is None:
        return None, [None] * len(prompts)
    n_txt = _text_length(cond)
    starts, lengths = [], []
    offset = 0
    for i, s in enumerate(streams):
        length = int(_attr(pipe, s.length)) if s.length else n_txt - offset
        if s.length is None and i < len(streams) - 1:
            raise AssertionError("only the last stream may take the rest of the text input")
        starts.append(offset)
        lengths.append(length)
        offset += length
    chosen = [i for i, s in enumerate(streams) if _kept(pipe, s, encoder)]
    if not chosen:
        names = [s.name for s in streams]
        raise ValueError(f"encoder={encoder!r}: {type(pipe).__name__} has no such text encoder loaded "
                         f"(its streams: {names}); choose one of {names + ['all']}")
    per_prompt = []
    for p in prompts:
        parts = []
        for i in chosen:
            s = streams[i]
            st = stream_tokens(pipe, s, p, _max_length(pipe, s, args), args)
            st.positions = [q for q in st.positions if q < lengths[i]]
            st.labels, st.spans = st.labels[: len(st.positions)], st.spans[: len(st.positions)]
            parts.append((s.name, st, starts[i]))
        per_prompt.append(parts)
    axis = []
    for k, i in enumerate(chosen):
        pos = [starts[i] + q for parts in per_prompt for q in parts[k][1].positions]
        if pos:
            axis.extend(range(min(pos), max(pos) + 1))
    limit = sum(lengths[i] for i in chosen)
    alignments = [build_alignment(p, parts, axis, limit) for p, parts in zip(prompts, per_prompt)]
    for al in alignments:
        if al.truncated:
            warnings.warn(f"the prompt {al.prompt[:60]!r}... is longer than {type(pipe).__name__}'s text input "
                          "keeps (max_sequence_length); words past the limit were dropped and have no heat map; "
                          "shorten the prompt or raise max_sequence_length to keep them", stacklevel=4)
    if args.get("clean_caption") and hasattr(pipe, "_text_preprocessing"):
        cleaned = [pipe._text_preprocessing(p, clean_caption=True)[0] for p in prompts]
        if cleaned != [p.lower().strip() for p in prompts] and cleaned != prompts:
            warnings.warn("clean_caption=True changed the prompt's text before tokenization, so some words may "
                          "have lost their tokens; pass clean_caption=False (daamlib.generate does) to align "
                          "the prompt as written", stacklevel=4)
    return axis, alignments
