"""Capture for diffusion transformers (SD3/3.5, Flux.1, Flux.2, PixArt-Σ, Sana, Qwen-Image, Z-Image, Chroma): image→text attention, exactly.

What a map is here. In a transformer, text and image tokens meet in three ways: *joint* attention
(SD3 and the double-stream blocks of Flux and Qwen-Image: text and image tokens concatenated into one
sequence, one softmax over all of it), the *single-stream* blocks of Flux (the same, with the text already
concatenated into the hidden states), and *cross*-attention (PixArt: image queries, text keys, as in a
UNet). In every case the map of text token j at image token i, head h, is the probability the model's own
softmax gives it::

    p[h, i, j] = exp(q_i · k_j · scale − LSE_i),   LSE_i = log Σ_{every key the model attends} exp(q_i · k · scale)

normalised over *every* key (text and image together for joint attention, with the model's mask), so the
maps of joint blocks measure the share of an image token's attention that goes to each word, as the UNet's
do. They are summed over heads (or kept), per block and step, on the patch grid; Eq. 6 sums blocks,
heads and steps and upsamples once (:mod:`daamlib.kernel`); Eq. 7 is unchanged.

How it is computed without the image-to-image block. ``trace`` wraps (never replaces) each attention
module's processor, so a processor of the user's own runs as it is. While a wrapped module runs, the
attention kernel itself (``torch.nn.functional.scaled_dot_product_attention``, which diffusers' processors
and its native attention backend call) is swapped for one that also returns LSE: on a CPU
``aten._scaled_dot_product_flash_attention_for_cpu`` (the kernel SDPA runs there anyway: outputs are
bit-identical), on CUDA the memory-efficient kernel with ``compute_log_sumexp``; elsewhere the original
kernel plus LSE from a chunked pass. The only added arithmetic is ``q_img · k_txtᵀ`` and an ``exp`` for the
conditional rows and the kept text tokens: memory and time ∝ image tokens × text tokens, never image
tokens². Which rows are conditional is found by matching the transformer's text input against
``encode_prompt``'s output, so it holds for any batch layout ([uncond, cond] in SD3 and PixArt, separate
calls for Flux's ``true_cfg_scale`` and Qwen-Image).

Words and tokens. Each family declares its text *streams* in the order they sit in the transformer's
text input (SD3: CLIP's 77 then T5's ``max_sequence_length``; Flux.1 and PixArt: T5; Qwen-Image: the
language model's tokens after its chat template, whose 34-token system prefix the pipeline drops; Flux.2:
the chat-templated text, system message and all, left-padded, every position kept). The
prompt is tokenized exactly as the pipeline tokenizes it (template, special tokens, truncation), and a
word owns the tokens whose characters fall inside it. ``encoder=`` chooses the stream(s) whose tokens
are kept: ``"t5"``, ``"clip"``, ``"lm"`` or ``"all"`` (the default: every stream the model attends).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .attention import SDPA as _SDPA
from .attention import attention_with_lse, kept_probabilities
from .attention import float_mask as _float_mask
from .heatmap import stream_type  # noqa: F401 (part of this module's API)
from .trace import Trace, TraceError, UnsupportedPipelineError, _signature, check_not_traced, installed
from .words import Alignment, Word, _WORD


# -- families ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stream:
    """One text encoder's tokens in the transformer's text input, and how the pipeline tokenizes for it."""

    name: str  # "clip", "t5", "lm"
    tokenizer: str  # the pipeline's attribute (dotted: "tokenizer.tokenizer" is a processor's tokenizer)
    template: object = "{}"  # the text the pipeline gives the tokenizer, the prompt at {}: a string, the pipeline's
    # attribute holding one, or a function of (pipe, encode_prompt's arguments) that returns one (a chat template)
    drop: object = 0  # leading tokens the pipeline drops from the encoder's states: a number, the attribute holding
    # it, or a function of (pipe, encode_prompt's arguments)
    max_length: str | int = "max_sequence_length"  # encode_prompt's argument (or a fixed number)
    length: str | None = None  # its segment's length in the text input: an attribute (SD3's CLIP part); None: the rest
    encoder: str | None = None  # the text encoder attribute: None when that encoder is absent means zeros
    pads: bool = False  # the pipeline pads to max_length (left padding then shifts every position)
    special_tokens: bool = True  # the tokenizer adds its special tokens (False: the template already has them)
    lower: bool = False  # the pipeline lower-cases and strips the prompt first (PixArt, Sana: _text_preprocessing)


def _around_prompt(render) -> str:
    """A template with ``{}`` where the prompt goes: ``render(text)`` places a marker text, which is then replaced."""
    mark = "\ue000prompt\ue001"  # private-use characters: never in a prompt
    return render(mark).replace(mark, "{}")


def chat_template(pipe, args: dict | None = None) -> str:
    """The text Flux.2 [klein] gives its tokenizer: the user's message in the tokenizer's own chat template, with
    the generation prompt and thinking off (``Flux2KleinPipeline._get_qwen3_prompt_embeds``)."""
    return _user_message(pipe, thinking=False)


def _user_message(pipe, thinking: bool) -> str:
    """The prompt as the user's message in the tokenizer's chat template, generation prompt on."""
    return _around_prompt(lambda mark: pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": mark}], tokenize=False, add_generation_prompt=True, enable_thinking=thinking))


def mistral_chat_template(pipe, args: dict | None = None) -> str:
    """The text Flux.2 [dev] gives its processor: the system message and the prompt in the processor's chat
    template (``Flux2Pipeline._get_mistral_3_small_prompt_embeds``); it starts with ``<s>``, so the processor adds
    no special token."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    return _around_prompt(lambda mark: pipe.tokenizer.apply_chat_template(
        format_input([mark], system_message=pipe.system_message)[0], tokenize=False, add_generation_prompt=False))


def zimage_template(pipe, args: dict | None = None) -> str:
    """Z-Image's text: the user's message in the tokenizer's chat template, generation prompt on, thinking on
    (``ZImagePipeline._encode_prompt``); padding is removed from the states, so positions are the text's own."""
    return _user_message(pipe, thinking=True)


def sana_template(pipe, args: dict | None = None) -> str:
    """Sana's text: its complex human instruction (``complex_human_instruction``, joined by newlines) right before
    the prompt, or the prompt alone when there is none (``SanaPipeline._get_gemma_prompt_embeds``)."""
    chi = (args or {}).get("complex_human_instruction")
    return ("\n".join(chi) + "{}") if chi else "{}"


def sana_drop(pipe, args: dict | None = None) -> int:
    """Sana keeps the start token and the last ``max_sequence_length − 1`` positions of the instruction + prompt
    sequence (``select_index``): the instruction's tokens but its last are dropped."""
    chi = (args or {}).get("complex_human_instruction")
    return len(pipe.tokenizer.encode("\n".join(chi))) - 2 if chi else 0


@dataclass(frozen=True)
class Family:
    name: str
    pipelines: tuple[str, ...]
    text_first: bool  # joint sequences are [text, image] (Flux, Qwen) or [image, text] (SD3)
    streams: tuple[Stream, ...]
    packed: bool  # latents packed 2×2 into one token by the pipeline (Flux, Qwen): pixels per token = VAE × 2
    unified: int = 0  # Z-Image: per image one [image, text] sequence, each part padded to a multiple of this
    blocks: str | None = None  # only attention modules under this prefix see image and text together


T5 = Stream("t5", "tokenizer")
FAMILIES = (
    Family("sd3", ("StableDiffusion3Pipeline",), text_first=False, packed=False, streams=(
        Stream("clip", "tokenizer", max_length="tokenizer_max_length", length="tokenizer_max_length"),
        Stream("t5", "tokenizer_3", encoder="text_encoder_3"),
    )),
    Family("flux", ("FluxPipeline",), text_first=True, packed=True, streams=(Stream("t5", "tokenizer_2"),)),
    Family("chroma", ("ChromaPipeline",), text_first=True, packed=True, streams=(T5,)),
    Family("pixart", ("PixArtSigmaPipeline", "PixArtAlphaPipeline"), text_first=True, packed=False,
           streams=(Stream("t5", "tokenizer", lower=True),)),
    Family("sana", ("SanaPipeline",), text_first=True, packed=False, streams=(
        Stream("lm", "tokenizer", template=sana_template, drop=sana_drop, pads=True, lower=True),
    )),
    Family("qwen", ("QwenImagePipeline",), text_first=True, packed=True, streams=(
        Stream("lm", "tokenizer", template="prompt_template_encode", drop="prompt_template_encode_start_idx"),
    )),
    Family("flux2", ("Flux2KleinPipeline",), text_first=True, packed=True, streams=(
        Stream("lm", "tokenizer", template=chat_template, pads=True),
    )),
    Family("zimage", ("ZImagePipeline",), text_first=False, packed=False, unified=32, blocks="layers.", streams=(
        Stream("lm", "tokenizer", template=zimage_template),
    )),
    Family("flux2-dev", ("Flux2Pipeline",), text_first=True, packed=True, streams=(
        Stream("lm", "tokenizer.tokenizer", template=mistral_chat_template, pads=True, special_tokens=False),
    )),
)
ENCODERS = ("all", "clip", "t5", "lm")


def family_of(pipe) -> Family | None:
    name = type(pipe).__name__
    return next((f for f in FAMILIES if name in f.pipelines), None)


def supported_names() -> list[str]:
    return [p for f in FAMILIES for p in f.pipelines]


def pixels_per_token(pipe) -> int:
    """Image pixels per side of one image token: the VAE factor × the patch size (× 2 for packed latents)."""
    fam = family_of(pipe)
    vae = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    cfg = pipe.transformer.config
    patch = getattr(cfg, "patch_size", None) or (getattr(cfg, "all_patch_size", None) or [1])[0]  # Z-Image: its first
    patch = int(patch if isinstance(patch, int) else patch[0])
    return vae * (2 if fam is not None and fam.packed else patch)


# -- words ↔ tokens, as the pipeline tokenizes ---------------------------------------------------------
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


# -- the kernel with LSE ----------------------------------------------------------------------------------
_LOCAL = threading.local()
_PATCH_LOCK = threading.Lock()
_patched = 0


def _tapped_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    tap = getattr(_LOCAL, "tap", None)
    if tap is None or dropout_p or is_causal or enable_gqa:
        return _SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                     enable_gqa=enable_gqa)
    return tap.attend(query, key, value, attn_mask, scale)


def _patch_kernel(on: bool) -> None:
    global _patched
    with _PATCH_LOCK:
        _patched += 1 if on else -1
        F.scaled_dot_product_attention = _tapped_sdpa if _patched > 0 else _SDPA


# -- recording ---------------------------------------------------------------------------------------------
@dataclass
class DitGeneration:
    prompts: list[str | None]
    alignments: list[Alignment | None]
    cond: torch.Tensor | None  # encode_prompt's conditional text states, one row per image
    columns: list[int] | None = None  # kept positions in the transformer's text input
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    timesteps: list[float] = field(default_factory=list)
    grid: tuple[int, int] | None = None
    expected_steps: int | None = None


class _DitRecorder:
    def __init__(self, pipe, family: Family, encoder: str, keep_heads: bool, store_device, store_dtype=None,
                 store=None, replay=None):
        from .trace import check_store_dtype

        self.pipe, self.family, self.encoder = pipe, family, encoder
        self.store, self.replay = store, replay  # daamlib.replay.AttentionStore to fill / to inject
        self.keep_heads = keep_heads
        self.store_device = None if store_device is None else torch.device(store_device)
        self.store_dtype = check_store_dtype(store_dtype)
        self.generations: list[DitGeneration] = []
        self.current: DitGeneration | None = None
        self.rows: list[tuple[int, int]] | None = None  # (batch row, image) of the conditional rows in this call
        self.n_img = self.n_txt = 0
        self.columns_t: torch.Tensor | None = None

    # encode_prompt: words and the conditional text states
    def on_encode(self, args: dict, result) -> None:
        g = self.current
        if g is not None and not g.timesteps and g.cond is not None:
            return  # the negative prompt's own call (Flux / Qwen true CFG)
        prompt = args.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else [None]
        cond = result[0] if isinstance(result, tuple) else result
        if isinstance(cond, list) and cond and all(torch.is_tensor(c) for c in cond):  # Z-Image: one tensor per prompt
            cond = [c.detach() for c in cond]
        elif torch.is_tensor(cond):
            cond = cond.detach()
        else:
            cond = None
        self.current = DitGeneration(prompts, [], cond)
        self.generations.append(self.current)
        self._align(args)

    def _align(self, args: dict) -> None:
        g, pipe = self.current, self.pipe
        if any(p is None for p in g.prompts) or g.cond is None:
            g.alignments = [None] * len(g.prompts)
            return
        n_txt = _text_length(g.cond)
        streams, starts, lengths = [], [], []
        offset = 0
        for i, s in enumerate(self.family.streams):
            length = int(_attr(pipe, s.length)) if s.length else n_txt - offset
            if s.length is None and i < len(self.family.streams) - 1:
                raise AssertionError("only the last stream may take the rest of the text input")
            streams.append(s)
            starts.append(offset)
            lengths.append(length)
            offset += length
        chosen = [i for i, s in enumerate(streams) if _kept(pipe, s, self.encoder)]
        if not chosen:
            names = [s.name for s in streams]
            raise ValueError(f"encoder={self.encoder!r}: {type(pipe).__name__} has no such text encoder loaded "
                             f"(its streams: {names}); choose one of {names + ['all']}")
        per_prompt = []
        for p in g.prompts:
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
        g.columns = axis
        limit = sum(lengths[i] for i in chosen)
        g.alignments = [build_alignment(p, parts, axis, limit) for p, parts in zip(g.prompts, per_prompt)]
        for al in g.alignments:
            if al.truncated:
                warnings.warn(f"the prompt {al.prompt[:60]!r}... is longer than {type(pipe).__name__}'s text input "
                              "keeps (max_sequence_length); words past the limit were dropped and have no heat map; "
                              "shorten the prompt or raise max_sequence_length to keep them", stacklevel=4)
        if args.get("clean_caption") and hasattr(pipe, "_text_preprocessing"):
            cleaned = [pipe._text_preprocessing(p, clean_caption=True)[0] for p in g.prompts]
            if cleaned != [p.lower().strip() for p in g.prompts] and cleaned != g.prompts:
                warnings.warn("clean_caption=True changed the prompt's text before tokenization, so some words may "
                              "have lost their tokens; pass clean_caption=False (daamlib.generate does) to align "
                              "the prompt as written", stacklevel=4)

    # the transformer's forward: which rows are conditional, the grid, the step
    def on_transformer_call(self, args, kwargs) -> None:
        g = self.current
        if self.family.unified:  # Z-Image: forward(x: list, t, cap_feats: list, ...)
            ctx = kwargs.get("cap_feats", args[2] if len(args) > 2 else None)
            hidden = args[0] if args else kwargs.get("x")
        else:
            ctx = kwargs.get("encoder_hidden_states")
            hidden = args[0] if args else kwargs.get("hidden_states")
        if g is None or ctx is None or hidden is None:
            self.rows = None
            return
        self.rows = self._match_rows(ctx, g.cond)
        if not self.rows:
            return  # an unconditional call (true CFG's negative branch): not recorded
        self.n_txt = _text_length(ctx)
        grid = self._grid(hidden, kwargs)
        self.n_img = grid[0] * grid[1]
        if isinstance(hidden, list):
            hidden = hidden[0]
        g.grid = grid
        if g.columns is None:
            g.columns = list(range(self.n_txt))
        self.columns_t = torch.tensor(g.columns, device=hidden.device, dtype=torch.long)
        scheduler = getattr(self.pipe, "scheduler", None)
        if not g.timesteps and getattr(scheduler, "timesteps", None) is not None:
            g.expected_steps = len(scheduler.timesteps)
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        g.timesteps.append(t.flatten()[0].item() if torch.is_tensor(t) else float(t if t is not None else len(g.timesteps)))

    @staticmethod
    def _match_rows(ctx, cond) -> list[tuple[int, int]]:
        """(batch row, image) of the rows whose text input is one of ``encode_prompt``'s conditional outputs
        (tensors ``[B, L, D]``, or lists of ``[L_i, D]`` for Z-Image)."""
        if cond is None:
            return [(b, b) for b in range(len(ctx))]
        if isinstance(cond, list) or isinstance(ctx, list):
            ref = [c.to(ctx[0].device, ctx[0].dtype) for c in cond]
        else:
            ref = cond.to(ctx.device, ctx.dtype)
            if ref.shape[1:] != ctx.shape[1:]:
                return []
        used, rows = set(), []
        for b in range(len(ctx)):
            j = next((j for j in range(len(ref)) if j not in used and ref[j].shape == ctx[b].shape
                      and torch.equal(ref[j], ctx[b])), None)
            if j is not None:
                used.add(j)
                rows.append((b, j))
        return rows

    def _grid(self, hidden, kwargs) -> tuple[int, int]:
        cfg = self.pipe.transformer.config
        if isinstance(hidden, list):  # Z-Image: [C, frames, H, W] latents per image, patchified inside
            p = int(kwargs.get("patch_size", 2))
            return hidden[0].shape[-2] // p, hidden[0].shape[-1] // p
        if hidden.ndim == 4:  # [B, C, H, W] latents, patchified inside (SD3, PixArt)
            p = cfg.patch_size
            return hidden.shape[-2] // p, hidden.shape[-1] // p
        shapes = kwargs.get("img_shapes")
        if shapes:  # Qwen-Image: [(frames, h, w)] per image
            first = shapes[0][0] if isinstance(shapes[0], list) else shapes[0]
            return int(first[-2]), int(first[-1])
        ids = kwargs.get("img_ids")
        if ids is not None:  # Flux: (0, row, column) per token
            ids = ids.reshape(-1, ids.shape[-1])[: hidden.shape[1]]
            return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
        raise TraceError(f"cannot find the image grid of {type(self.pipe.transformer).__name__}'s input")

    # one attention call of a wrapped module
    def attend(self, tap: _Tap, q, k, v, mask, scale):
        tap.calls += 1
        rows = self.rows
        Lq, Lk = q.shape[-2], k.shape[-2]
        n_img, n_txt = self.n_img, self.n_txt
        if not rows or self.current is None:
            return _SDPA(q, k, v, attn_mask=mask, scale=scale)
        u = self.family.unified
        if u and Lq == Lk and tap.single:  # Z-Image's main blocks: per image [image, text], parts padded to u
            img, txt0, kind = slice(0, n_img), n_img + (-n_img) % u, "single"
        elif u:
            return _SDPA(q, k, v, attn_mask=mask, scale=scale)
        elif Lk == n_img + n_txt and Lq == Lk:  # joint attention: one softmax over text and image
            img = slice(n_txt, Lk) if self.family.text_first else slice(0, n_img)
            txt0 = 0 if self.family.text_first else n_img
            kind = "single" if tap.single else "joint"
        elif tap.cross and Lk == n_txt and Lq == n_img:
            img, txt0, kind = slice(0, n_img), 0, "cross"
        else:  # image self-attention (SD3.5's second attention, PixArt's attn1), IP-adapter tokens, ...
            return _SDPA(q, k, v, attn_mask=mask, scale=scale)
        tap.kind = kind
        out, lse = attention_with_lse(q, k, v, mask, scale)
        batch_rows = [r for r, _ in rows]
        b = torch.tensor(batch_rows, device=q.device)
        s = scale if scale is not None else q.shape[-1] ** -0.5
        cols = self.columns_t + txt0
        m = None
        if mask is not None:  # index only the mask's own axes (it broadcasts): never expand it to [B, H, L, L]
            m = _float_mask(mask, torch.float32)
            m = m.index_select(0, b) if m.ndim == 4 and m.shape[0] > 1 else m
            m = m[..., img, :] if m.ndim >= 2 and m.shape[-2] > 1 else m
            m = m.index_select(-1, cols).transpose(-1, -2)  # key-major, as kept_probabilities wants it
        # [Bc, H, K, N]: the conditional image rows are read in place, only the kept keys are gathered
        p = kept_probabilities(q[:, :, img], k.index_select(2, cols), lse[:, :, img], s, batch_rows, m)
        if self.store is not None or self.replay is not None:
            p = self._store_or_replay(tap.name, p.transpose(-1, -2), out, v, b, img, cols).transpose(-1, -2)
        if not self.keep_heads:
            p = p.sum(1)  # [Bc, K, N]
        h, w = self.current.grid
        p = p.reshape(*p.shape[:-1], h, w)  # [Bc, (H,) K, h, w]
        order = torch.tensor([j for _, j in rows], device=p.device)
        p = p[torch.argsort(order)]
        if self.store_dtype is not None:
            p = p.to(self.store_dtype)
        if self.store_device is not None:
            p = p.to(self.store_device, non_blocking=True)
        self.current.maps.setdefault(tap.name, []).append(p)
        return out


    def _store_or_replay(self, name: str, p, out, v, b, img, cols):
        """Keep ``p`` (``[conditional rows, heads, image tokens, kept text tokens]``) in the store, or put the
        stored one in its place: the image rows' output is rebuilt from the seed's image→text probabilities and
        the variant's own image→rest ones, rescaled to the mass the seed left over (each row still sums to 1)."""
        step = len(self.current.timesteps) - 1
        if self.store is not None:
            self.store.put(step, name, p)
            self.store.n_tokens = p.shape[-1]
        if self.replay is None or not self.replay.covers(step):
            return p
        self.replay.check_tokens(p.shape[-1])
        seed = self.replay.get(step, name, p)
        vt = v.index_select(2, cols).index_select(0, b).float()  # [Bc, H, K, D]
        o = out[:, :, img].index_select(0, b).float()  # [Bc, H, N, D]
        out[:, :, img].index_copy_(0, b, replayed_output(o, p, seed, vt).to(out.dtype))  # in place, the kernel's output
        return seed


def replayed_output(out: torch.Tensor, own: torch.Tensor, seed: torch.Tensor, v_txt: torch.Tensor) -> torch.Tensor:
    """Attention output of image queries whose probabilities over the kept text keys are replaced.

    ``out`` [..., N, D] is the model's own output, ``own`` / ``seed`` [..., N, K] its own and the seed's
    probabilities over the K kept text keys, ``v_txt`` [..., K, D] their values. The row becomes the seed's
    mass on those keys and the model's own distribution over every other key, scaled to the mass left
    (``1 − Σ seed``), so it still sums to 1: prompt-to-prompt's cross-attention injection, for joint attention.
    """
    free = 1 - own.sum(-1, keepdim=True)  # the model's own mass on every other key (image tokens, unkept text)
    left = 1 - seed.sum(-1, keepdim=True)
    rest = torch.where(free > 1e-6, (out - own @ v_txt) * (left / free.clamp_min(1e-6)), torch.zeros_like(out))
    return rest + seed @ v_txt


class _Tap:
    """Wraps one attention module's processor: while it runs, the attention kernel reports to the recorder."""

    def __init__(self, recorder: _DitRecorder, inner, name: str, single: bool, cross: bool):
        self.recorder, self.inner, self.name = recorder, inner, name
        self.single, self.cross = single, cross
        self.calls = 0
        self.kind: str | None = None

    def attend(self, q, k, v, mask, scale):
        _LOCAL.tap = None  # a kernel call inside the recording itself goes straight through
        try:
            return self.recorder.attend(self, q, k, v, mask, scale)
        finally:
            _LOCAL.tap = self

    def __call__(self, attn, *args, **kwargs):
        self.calls = 0
        outer = getattr(_LOCAL, "tap", None)
        _LOCAL.tap = self
        try:
            out = self.inner(attn, *args, **kwargs)
        finally:
            _LOCAL.tap = outer
        if self.calls == 0 and self.recorder.rows:
            raise TraceError(
                    f"{self.name}: the attention ran without torch's scaled_dot_product_attention (another attention "
                    "backend, e.g. flash-attn or sage, or a compiled model), so its probabilities cannot be recorded; "
                "use diffusers' native backend (no `attention_backend` set) while tracing")
        return out


def _tap_class(inner) -> type:
    """A subclass of _Tap whose ``__call__`` has the wrapped processor's signature (diffusers filters the
    keyword arguments it passes by that signature)."""
    import inspect

    sig = inspect.signature(type(inner).__call__)

    def __call__(self, attn, *args, **kwargs):
        return _Tap.__call__(self, attn, *args, **kwargs)

    __call__.__signature__ = sig
    return type(f"Traced{type(inner).__name__}", (_Tap,), {"__call__": __call__})


def attention_modules(transformer, family: Family | None = None) -> dict[str, object]:
    """The transformer's attention modules that can see text: joint (an added text projection, or a
    single-stream block) or cross-attention, by dotted processor path in run order. A family with ``blocks``
    (Z-Image) names where they are: every attention module under that prefix, as single-stream."""
    found = {}
    for name, m in transformer.named_modules():
        if not hasattr(type(m), "set_processor") or not hasattr(m, "processor"):
            continue
        if family is not None and family.blocks is not None:
            if name.startswith(family.blocks):
                found[f"{name}.processor"] = (m, True, False)
            continue
        joint = getattr(m, "added_kv_proj_dim", None) is not None or getattr(m, "add_k_proj", None) is not None
        single = "single" in name
        cross = bool(getattr(m, "is_cross_attention", False))
        if joint or single or cross:
            found[f"{name}.processor"] = (m, single, cross)
    return found


class DitTrace(Trace):
    """The handle :func:`trace` yields for a transformer pipeline: :class:`daamlib.trace.Trace`'s, with the token
    axis, image size and alignment a transformer's recording has."""

    _NOTHING_RECORDED = ("the pipeline was called but no image-to-text attention was recorded: the generation was "
                         "interrupted before its first step, or it was called with prompt_embeds only")

    def _alignment(self, gen, index: int, n_images: int):
        per_prompt = max(1, n_images // max(1, len(gen.prompts)))
        return gen.alignments[min(index // per_prompt, len(gen.alignments) - 1)] if gen.alignments else None

    def _maps(self, gen, index: int, alignment) -> dict:
        return {name: torch.stack([m[index] for m in steps]) for name, steps in gen.maps.items()}

    def _size(self, gen) -> tuple[int, int]:
        f = pixels_per_token(self.pipe)
        return gen.grid[0] * f, gen.grid[1] * f

    def _fit_image(self, hm) -> None:
        if hm.image is not None and hm.image.shape[:2] != hm.size:  # e.g. PixArt's resolution binning resized it
            hm.size = tuple(hm.image.shape[:2])


SUPPORTED = ("StableDiffusion3Pipeline (SD3, SD3.5)", "FluxPipeline (Flux.1)", "PixArtSigmaPipeline (PixArt-Σ)",
             "PixArtAlphaPipeline (PixArt-α)", "SanaPipeline (Sana)", "QwenImagePipeline (Qwen-Image)", "Flux2Pipeline (Flux.2 [dev])",
             "Flux2KleinPipeline (Flux.2 [klein])", "ZImagePipeline (Z-Image)",
             "ChromaPipeline (Chroma)")


@contextmanager
def trace_transformer(pipe, keep_heads: bool = False, store_device=None, encoder: str = "all",
                      store_dtype=None, store=None, replay=None) -> Iterator[DitTrace]:
    """:func:`daamlib.trace` for a diffusion-transformer pipeline (see the module's docs)."""
    family = family_of(pipe)
    transformer = getattr(pipe, "transformer", None)
    if family is None or not isinstance(transformer, torch.nn.Module):
        from .trace import SUPPORTED as ALL

        raise UnsupportedPipelineError(f"{type(pipe).__name__} is not a supported transformer pipeline; supported: "
                                       + "; ".join(ALL))
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    names = [s.name for s in family.streams]
    if encoder != "all" and encoder not in names:
        raise ValueError(f"encoder={encoder!r}: {type(pipe).__name__}'s text input holds the streams {names}; "
                         f"choose one of {names + ['all']}")
    modules = attention_modules(transformer, family)
    if not modules:
        raise UnsupportedPipelineError(f"{type(transformer).__name__} has no attention between image and text tokens")
    check_not_traced(pipe, transformer, "transformer")

    rec = _DitRecorder(pipe, family, encoder, keep_heads, store_device, store_dtype, store, replay)
    encode = pipe.encode_prompt
    signature = _signature(type(pipe).encode_prompt)

    def encode_and_note(*args, **kwargs):
        bound = signature.bind(pipe, *args, **kwargs)
        bound.apply_defaults()
        # a copy of list arguments: ZImagePipeline rewrites the prompt list in place with its chat template
        noted = {k: list(v) if isinstance(v, list) else v for k, v in bound.arguments.items()}
        result = encode(*args, **kwargs)
        rec.on_encode(noted, result)
        return result

    def tap(name, original):
        _, single, cross = modules[name]
        return _tap_class(original)(rec, original, name, single, cross)

    _patch_kernel(True)
    try:
        with installed(pipe, transformer, DitTrace(pipe, rec, list(modules)),
                       {name: m for name, (m, _, _) in modules.items()}, tap, encode_and_note,
                       rec.on_transformer_call) as handle:
            yield handle
    finally:
        _patch_kernel(False)
