"""Flux.1 (``FluxPipeline``): joint (double-stream) and single-stream blocks over ``[text, image]``, T5's tokens,
latents packed 2×2; guidance-distilled (``true_cfg_scale`` adds a separate negative call)."""

from ..registry import Family, Stream

FAMILY = Family("flux", ("FluxPipeline",), ("Flux.1",), text_first=True, packed=True, cfg="distilled",
                streams=(Stream("t5", "tokenizer_2"),),
                attention='joint (double-stream) and single-stream blocks, `[text, image]`',
                text='`t5`',
                guidance='one branch (guidance-distilled); `true_cfg_scale` adds a separate negative call')
