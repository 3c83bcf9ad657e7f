"""Qwen-Image (``QwenImagePipeline``): joint attention over ``[text, image]``; Qwen2.5-VL's tokens after the chat
template's system prefix, which the pipeline drops (``prompt_template_encode_start_idx``)."""

from ..registry import Family, Stream

FAMILY = Family("qwen", ("QwenImagePipeline",), ("Qwen-Image",), text_first=True, packed=True, cfg="separate call",
                streams=(
                    Stream("lm", "tokenizer", template="prompt_template_encode",
                           drop="prompt_template_encode_start_idx"),
                ),
                attention='joint attention, `[text, image]`, text padding masked',
                text="`lm`: Qwen2.5-VL's tokens after the chat template's system prefix, which the pipeline drops",
                guidance='`true_cfg_scale`: a separate negative call')
