"""Tiny Stable Diffusion pipelines built from configs, for tests, benchmarks and demos offline.

They follow diffusers' own fast tests (``get_dummy_components``): a few million random
weights, 64×64 images in a fraction of a second per step. Their maps are noise — they prove
plumbing, not attribution — but every code path of the real architectures is there:

* ``"sd1"``: conv projections, one head size for all blocks, pads with ``<|endoftext|>``;
* ``"sd2"``: linear projections, per-block head counts, pads with ``!``;
* ``"sdxl"``: two text encoders, ``text_time`` conditioning, pads with ``!`` on the second.

The tokenizer is a real ``CLIPTokenizer`` on a BPE vocabulary built here from a small corpus,
small enough that rarer words split into several tokens.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from .vocab import build_clip_tokenizer

CORPUS = [
    "a photo of a cat sitting on a mat",
    "a dog and a cat playing in the grass",
    "a red circle above a blue square",
    "a green triangle next to a yellow star",
    "a giraffe and a zebra standing in a field",
    "a man riding a horse on the beach",
    "two birds flying over the sea at sunset",
    "a bowl of fruit on a wooden table",
    "the city skyline at night with bright lights",
    "an old car parked in front of a house",
]
KINDS = ("sd1", "sd2", "sdxl")


@lru_cache(maxsize=None)
def tokenizer_dir(pad_token: str = "<|endoftext|>", max_length: int = 77) -> Path:
    """A cached folder with the tiny CLIP tokenizer (built once per process)."""
    out = Path(tempfile.mkdtemp(prefix="daam-tiny-tokenizer-"))
    build_clip_tokenizer(CORPUS * 3, out, num_merges=120, model_max_length=max_length, pad_token=pad_token)
    return out


def _text_config(vocab_size: int, max_length: int, **kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1, hidden_size=32,
        intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=vocab_size, max_position_embeddings=max_length, **kw,
    )


def tiny_pipeline(kind: str = "sd1", seed: int = 0, max_length: int = 77, dtype=torch.float32):
    """A tiny ``StableDiffusionPipeline`` (``"sd1"``, ``"sd2"``) or ``StableDiffusionXLPipeline`` (``"sdxl"``)."""
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if kind not in KINDS:
        raise ValueError(f"unknown tiny pipeline kind {kind!r}; choose one of {KINDS}")
    pad = "<|endoftext|>" if kind == "sd1" else "!"
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir(pad, max_length))
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4, sample_size=64,
    )
    if kind == "sdxl":
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=1,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(_text_config(vocab, max_length, hidden_act="gelu", projection_dim=32))
        torch.manual_seed(seed + 1)
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(vocab, max_length, hidden_act="gelu", projection_dim=32))
        tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer_dir("!", max_length))
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                           beta_schedule="scaled_linear", timestep_spacing="leading")
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir("<|endoftext|>", max_length)),
                                         tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                         image_encoder=None, feature_extractor=None)
    else:
        torch.manual_seed(seed)
        sd2 = kind == "sd2"
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16, 16), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, norm_num_groups=2,
            attention_head_dim=(2, 4, 4) if sd2 else 2, use_linear_projection=sd2,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(_text_config(vocab, max_length, hidden_act="gelu" if sd2 else "quick_gelu"))
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
