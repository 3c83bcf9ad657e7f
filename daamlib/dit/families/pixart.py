"""PixArt-Σ and -α (``PixArtSigmaPipeline``, ``PixArtAlphaPipeline``): cross-attention (``attn2``) to T5's tokens
of the lower-cased, stripped prompt, padding masked."""

from ..registry import Family, Stream

FAMILY = Family("pixart", ("PixArtSigmaPipeline", "PixArtAlphaPipeline"), ("PixArt-Σ", "PixArt-α"), text_first=True,
                packed=False, cfg="batch", streams=(Stream("t5", "tokenizer", lower=True),),
                attention='cross-attention (`attn2`), T5 padding masked',
                text=("`t5`, of the lower-cased, stripped prompt (as the pipeline encodes it; words keep the prompt's"
                      ' characters)'),
                guidance='batch `[uncond, cond]`')
