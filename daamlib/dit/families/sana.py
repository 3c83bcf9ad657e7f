"""Sana (``SanaPipeline``): cross-attention (``attn2``) to Gemma 2's tokens of the lower-cased prompt after the
complex human instruction, padding masked; the pipeline keeps the start token and the last
``max_sequence_length − 1`` positions (``select_index``). Its linear self-attention is not traced."""

from __future__ import annotations

from ..registry import Family, Stream


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


FAMILY = Family("sana", ("SanaPipeline",), ("Sana",), text_first=True, packed=False, cfg="batch", streams=(
    Stream("lm", "tokenizer", template=sana_template, drop=sana_drop, pads=True, lower=True),
),
    attention='cross-attention (`attn2`; self-attention is linear and not traced), padding masked',
    text=("`lm`: Gemma 2's tokens of the lower-cased prompt after the complex human instruction; the pipeline keeps "
          'the start token and the last `max_sequence_length − 1` positions (`select_index`), so the positions follow'
          ' that'),
    guidance='batch `[uncond, cond]`')
