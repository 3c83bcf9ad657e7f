"""Flux.1 img2img and inpainting (``FluxImg2ImgPipeline``, ``FluxInpaintPipeline``): Flux.1's transformer, text and
guidance, started part-way at ``strength`` from the given image's latents (inpainting keeps the unmasked latents
the image's own at every step). The maps sum the steps actually run."""

from ..registry import Family, Stream

FAMILY = Family("flux-edit", ("FluxImg2ImgPipeline", "FluxInpaintPipeline"), ("Flux.1 img2img", "Flux.1 inpainting"),
                text_first=True, packed=True, cfg="distilled", streams=(Stream("t5", "tokenizer_2"),),
                attention="as Flux.1, from the given image's noised latents: the steps from `strength` on",
                text="`t5`",
                guidance="one branch (guidance-distilled); `true_cfg_scale` adds a separate negative call")
