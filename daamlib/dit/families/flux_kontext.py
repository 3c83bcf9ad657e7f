"""Flux.1 Kontext (``FluxKontextPipeline``): instruction editing. The reference image's latent tokens are appended to
the generated image's (``[text, generated, reference]``, the reference's ids carrying 1 in their first axis): they
are keys and queries of every block. Word maps are taken over the generated image's tokens only, normalised over every
key (text, generated and reference tokens); the generated tokens' attention to each reference token is kept as a map
on the reference's grid (``HeatMaps.reference``: where the edit looked)."""

from ..registry import Family, Stream

FAMILY = Family("flux-kontext", ("FluxKontextPipeline",), ("Flux.1 Kontext",), text_first=True, packed=True,
                cfg="distilled", streams=(Stream("t5", "tokenizer_2"),), reference=True,
                attention=("as Flux.1 over `[text, generated, reference]`: word maps on the generated tokens, and the "
                           "generated tokens' attention to the reference image's (`hm.reference`)"),
                text="`t5`",
                guidance="one branch (guidance-distilled); `true_cfg_scale` adds a separate negative call")
