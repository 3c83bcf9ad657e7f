"""Stable Diffusion 3 and 3.5 (``StableDiffusion3Pipeline``): joint attention over ``[image, text]``; the text input
is CLIP's 77 positions (both CLIP encoders' states side by side) then T5's ``max_sequence_length``."""

from ..registry import Family, Stream

FAMILY = Family(
    "sd3", ("StableDiffusion3Pipeline",), ("SD3, SD3.5",), text_first=False, packed=False, cfg="batch", streams=(
        Stream("clip", "tokenizer", max_length="tokenizer_max_length", length="tokenizer_max_length"),
        Stream("t5", "tokenizer_3", encoder="text_encoder_3"),
    ),
    attention='joint attention, `[image, text]`',
    text='`clip` (77) then `t5` (`max_sequence_length`); default `all`',
    guidance='batch `[uncond, cond]`')
