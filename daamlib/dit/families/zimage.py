"""Z-Image (``ZImagePipeline``): its main blocks (``layers.``) see one sequence per image, ``[image, text]``, each
part padded to a multiple of 32; Qwen3's unpadded tokens of the chat-templated prompt (thinking on), one tensor per
prompt; guidance as a list ``[cond…, uncond…]`` in one call. The refiner blocks are not traced."""

from __future__ import annotations

from ..registry import Family, Stream
from ..tokens import user_message


def zimage_template(pipe, args: dict | None = None) -> str:
    """Z-Image's text: the user's message in the tokenizer's chat template, generation prompt on, thinking on
    (``ZImagePipeline._encode_prompt``); padding is removed from the states, so positions are the text's own."""
    return user_message(pipe, thinking=True)


FAMILY = Family("zimage", ("ZImagePipeline",), ("Z-Image",), text_first=False, packed=False, cfg="list", unified=32,
                blocks="layers.", streams=(Stream("lm", "tokenizer", template=zimage_template),),
                attention=('its main blocks: one sequence per image, `[image, text]`, each part padded to a multiple '
                           'of 32 (the padding attended); the image-only and text-only refiner blocks are not traced'),
                text="`lm`: Qwen3's unpadded tokens of the chat-templated prompt (thinking on), one tensor per prompt",
                guidance='a list `[cond…, uncond…]` in one call')
