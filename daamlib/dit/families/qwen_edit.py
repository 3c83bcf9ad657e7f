"""Qwen-Image-Edit (``QwenImageEditPipeline``): Qwen-Image's transformer over ``[text, generated, reference]``: the
reference image's latent tokens follow the generated ones (``img_shapes`` gives both grids). Its text is Qwen2.5-VL's
states of a chat template that holds the reference image too: ``<|vision_start|>``, one ``<|image_pad|>`` per merged
vision patch, ``<|vision_end|>``, then the instruction. The pipeline drops the template's system prefix; the vision
tokens stay in the transformer's text input but are not words: the word axis starts after ``<|vision_end|>``."""

from __future__ import annotations

from ..registry import Family, Stream

IMAGE_PAD = "<|image_pad|>"


def vision_tokens(pipe, image) -> int:
    """How many ``<|image_pad|>`` tokens the processor puts in the text for ``image`` (merged vision patches)."""
    ip = pipe.processor.image_processor
    grid = ip(images=image, return_tensors="pt")["image_grid_thw"]
    return int(grid[0].prod()) // int(ip.merge_size) ** 2


def edit_template(pipe, args: dict | None = None) -> str:
    """The text the processor tokenizes: the pipeline's template with ``<|image_pad|>`` repeated as the processor
    repeats it for the image given to ``encode_prompt`` (``QwenImageEditPipeline._get_qwen_prompt_embeds``)."""
    image = (args or {}).get("image")
    template = pipe.prompt_template_encode
    if image is None:  # prompt_embeds given: no image in the text
        return template
    image = image[0] if isinstance(image, list) else image
    return template.replace(IMAGE_PAD, IMAGE_PAD * vision_tokens(pipe, image), 1)


FAMILY = Family("qwen-edit", ("QwenImageEditPipeline",), ("Qwen-Image-Edit",), text_first=True, packed=True,
                cfg="separate call", reference=True,
                streams=(Stream("lm", "processor.tokenizer", template=edit_template,
                                drop="prompt_template_encode_start_idx"),),
                attention=("as Qwen-Image over `[text, generated, reference]`: word maps on the generated tokens, and "
                           "the generated tokens' attention to the reference image's (`hm.reference`)"),
                text=("`lm`: the instruction's Qwen2.5-VL tokens after the reference image's vision tokens "
                      "(`<|vision_start|>`, one `<|image_pad|>` per merged patch, `<|vision_end|>`), which are "
                      "attended but are not words"),
                guidance='`true_cfg_scale`: a separate negative call')
