"""Flux.2 [klein] (``Flux2KleinPipeline``): double- and single-stream blocks over ``[text, image]``; Qwen3's tokens
of the chat-templated prompt, padding attended (as the pipeline does); a separate negative call for guidance."""

from __future__ import annotations

from ..registry import Family, Stream
from ..tokens import user_message


def chat_template(pipe, args: dict | None = None) -> str:
    """The text Flux.2 [klein] gives its tokenizer: the user's message in the tokenizer's own chat template, with
    the generation prompt and thinking off (``Flux2KleinPipeline._get_qwen3_prompt_embeds``)."""
    return user_message(pipe, thinking=False)


FAMILY = Family("flux2", ("Flux2KleinPipeline",), ("Flux.2 [klein]",), text_first=True, packed=True,
                cfg="separate call", streams=(Stream("lm", "tokenizer", template=chat_template, pads=True),),
                attention=('double- and single-stream blocks, `[text, image]`, padding attended (unmasked, as the '
                           'pipeline does)'),
                text=("`lm`: Qwen3's tokens of the chat-templated text (nothing dropped; the prompt follows the "
                      "template's user prefix)"),
                guidance='a separate negative call')
