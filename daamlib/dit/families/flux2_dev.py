"""Flux.2 [dev] (``Flux2Pipeline``): double- and single-stream blocks over ``[text, image]``; Mistral Small 3.1's
tokens of the processor's chat template (system message, then ``[INST]`` prompt ``[/INST]``), left padding
attended; guidance-distilled."""

from __future__ import annotations

from ..registry import Family, Stream
from ..tokens import around_prompt


def mistral_chat_template(pipe, args: dict | None = None) -> str:
    """The text Flux.2 [dev] gives its processor: the system message and the prompt in the processor's chat
    template (``Flux2Pipeline._get_mistral_3_small_prompt_embeds``); it starts with ``<s>``, so the processor adds
    no special token."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    return around_prompt(lambda mark: pipe.tokenizer.apply_chat_template(
        format_input([mark], system_message=pipe.system_message)[0], tokenize=False, add_generation_prompt=False))


FAMILY = Family("flux2-dev", ("Flux2Pipeline",), ("Flux.2 [dev]",), text_first=True, packed=True, cfg="distilled",
                streams=(
                    Stream("lm", "tokenizer.tokenizer", template=mistral_chat_template, pads=True,
                           special_tokens=False),
                ),
                attention=('double- and single-stream blocks, `[text, image]`, left padding attended (unmasked, as '
                           'the pipeline does)'),
                text=("`lm`: Mistral Small 3.1's tokens of the processor's chat template (system message, then "
                      '`[INST]` prompt `[/INST]`; nothing dropped)'),
                guidance='guidance-distilled: one branch')
