"""Configs and builders of the embedded ShapeWorld text-to-image model (Stable Diffusion layout, scaled down).

64×64 RGB images ↔ 16×16×4 latents (``AutoencoderKL``, 4× downsampling); a 0-layer ``CLIPTextModel``
(word + position embeddings + final layer norm, so every token's state is its own word: the
caption cannot be packed into the end-of-text token); a ``UNet2DConditionModel`` with cross-attention
at 16×16, 8×8 and 4×4. The exported folder loads with ``StableDiffusionPipeline.from_pretrained``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .world import all_words


@dataclass
class ModelConfig:
    text_hidden: int = 128  # CLIP text width = UNet cross_attention_dim
    text_layers: int = 0  # 0: context-free token states (a 2-layer causal encoder hid the caption in EOS)
    max_length: int = 24  # tokens incl. BOS/EOS; the longest caption is 17
    pad_token: str = "!"  # SD 2.x pads with "!" (id 0), not with <|endoftext|>
    unet_channels: tuple[int, ...] = (32, 64, 128)  # at 16×16, 8×8, 4×4
    unet_layers_per_block: int = 1
    unet_heads: int = 4  # diffusers' `attention_head_dim` of UNet2DConditionModel is the number of heads
    unet_groups: int = 8  # GroupNorm groups; 32 groups of 32 channels would be per-channel instance norm
    vae_channels: tuple[int, ...] = (16, 32, 64)  # 3 blocks → 2 downsamplings → 64×64 to 16×16
    vae_groups: int = 1  # per-group normalisation of few channels erased absolute colour (hue shifts)
    latent_channels: int = 4
    # SD's noise schedule
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer(out_dir: str | Path, cfg: ModelConfig):
    """A CLIP-format BPE over the world's words; every world word is exactly one token."""
    from ..testing.vocab import build_clip_tokenizer

    words = all_words()
    texts = [" ".join(words)] * 4
    tok = build_clip_tokenizer(texts, out_dir, num_merges=5000, model_max_length=cfg.max_length,
                               pad_token=cfg.pad_token)
    for w in words:
        ids = tok(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"world word {w!r} is {len(ids)} tokens; raise num_merges")
    return tok


def build_text_encoder(cfg: ModelConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    tc = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=4,
        max_position_embeddings=cfg.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(tc)


def build_vae(cfg: ModelConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_groups,
        sample_size=64,
    )


def build_unet(cfg: ModelConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        layers_per_block=cfg.unet_layers_per_block,
        block_out_channels=tuple(cfg.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.unet_heads,
        norm_num_groups=cfg.unet_groups,
    )


def scheduler_kwargs(cfg: ModelConfig) -> dict:
    return dict(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                beta_schedule=cfg.beta_schedule, prediction_type="epsilon")


def build_train_scheduler(cfg: ModelConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**scheduler_kwargs(cfg))


def build_sample_scheduler(cfg: ModelConfig):
    """The shipped scheduler: DDIM on the training betas (SD's settings)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**scheduler_kwargs(cfg), clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def make_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def images_to_tensor(images_uint8) -> torch.Tensor:
    """uint8 [B, H, W, 3] (numpy or tensor) → float [B, 3, H, W] in [−1, 1], the VAE's input range."""
    return torch.as_tensor(images_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """The inverse of :func:`images_to_tensor`: float [B, 3, H, W] in [−1, 1] → uint8 [B, H, W, 3] (clipped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode_images(vae, images_uint8, sample: bool = False, generator=None) -> torch.Tensor:
    """uint8 [B, H, W, 3] (numpy or tensor) → scaled latents [B, 4, h, w]."""
    dist = vae.encode(images_to_tensor(images_uint8)).latent_dist
    z = dist.sample(generator) if sample else dist.mean
    return z * vae.config.scaling_factor


@torch.no_grad()
def reconstruct_images(vae, images_uint8, batch: int = 64) -> np.ndarray:
    """uint8 [N, H, W, 3] → VAE encode (posterior mean) → decode → uint8 [N, H, W, 3]: what the VAE
    keeps of an image, the best a generated image can look."""
    out = []
    for a in range(0, len(images_uint8), batch):
        r = vae.decode(vae.encode(images_to_tensor(images_uint8[a : a + batch])).latent_dist.mean).sample
        out.append(tensor_to_images(r))
    return np.concatenate(out)
