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
bit-identical), on CUDA the memory-efficient kernel with ``compute_log_sumexp``. Where the user's attention is not
that kernel (a patched SDPA, SDPA's kernels restricted, another diffusers backend, whose registered functions are
wrapped while tracing), or no fused kernel returns LSE (CUDA with a mask), the user's attention computes the output
and LSE is computed beside it for the conditional image rows only (:func:`daamlib.attention.output_and_lse`). The only added arithmetic is ``q_img · k_txtᵀ`` and an ``exp`` for the
conditional rows and the kept text tokens: memory and time ∝ image tokens × text tokens, never image
tokens². Which rows are conditional is found by matching the transformer's text input against
``encode_prompt``'s output, so it holds for any batch layout ([uncond, cond] in SD3 and PixArt, separate
calls for Flux's ``true_cfg_scale`` and Qwen-Image). A call made only for guidance is not recorded: SD3's skip-layer
guidance (``skip_layers``), and a negative branch whose text is the prompt's own (the step's timestep, latents and
text again).

Words and tokens. Each family declares its text *streams* in the order they sit in the transformer's
text input (SD3: CLIP's 77 then T5's ``max_sequence_length``; Flux.1 and PixArt: T5; Qwen-Image: the
language model's tokens after its chat template, whose 34-token system prefix the pipeline drops; Flux.2:
the chat-templated text, system message and all, left-padded, every position kept). The
prompt is tokenized exactly as the pipeline tokenizes it (template, special tokens, truncation), and a
word owns the tokens whose characters fall inside it. ``encoder=`` chooses the stream(s) whose tokens
are kept: ``"t5"``, ``"clip"``, ``"lm"`` or ``"all"`` (the default: every stream the model attends).

Layout. ``registry`` declares what a family is (:class:`Family`, :class:`Stream`) and maps pipeline class names
to the family modules (``families/<name>.py``, one per family, imported lazily); ``tokens`` tokenizes and aligns;
``recorder`` patches the kernel and records; ``tracer`` wraps a pipeline. Importing this package registers its
:class:`daamlib.trace.Tracer`, so :func:`daamlib.trace` takes transformer pipelines without importing this package.
"""

from __future__ import annotations

import importlib

from ..heatmap import stream_type
from ..trace import register_tracer
from .recorder import _SDPA, DitGeneration, _DitRecorder, _Tap, replayed_output
from .registry import FAMILY_MODULES, Family, Stream, families, family_of, pixels_per_token, supported, supported_names
from .tokens import ENCODERS, StreamTokens, align_prompts, build_alignment, stream_tokens, token_count
from .tracer import TRACER, DitTrace, attention_modules, trace_transformer

__all__ = [
    "trace_transformer", "DitTrace", "DitGeneration", "attention_modules", "replayed_output",
    "Family", "Stream", "FAMILY_MODULES", "families", "family_of", "supported", "supported_names", "pixels_per_token",
    "ENCODERS", "StreamTokens", "stream_tokens", "token_count", "build_alignment", "align_prompts", "stream_type",
    "chat_template", "mistral_chat_template", "zimage_template", "sana_template", "sana_drop",
]

register_tracer(TRACER)  # daamlib.trace hands it transformer pipelines; it never imports this package

# a family's own template helpers, importable from here without importing every family (PEP 562)
_FAMILY_HELPERS = {"chat_template": "flux2", "mistral_chat_template": "flux2_dev", "zimage_template": "zimage",
                   "sana_template": "sana", "sana_drop": "sana"}


def __getattr__(name: str):
    if name in _FAMILY_HELPERS:
        return getattr(importlib.import_module(f"{__name__}.families.{_FAMILY_HELPERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
