"""Maps for an image that already exists: encode it with the pipeline's VAE, noise it at chosen timesteps, run the
denoiser once per timestep under the trace, and sum the maps of the prompt's words over those evaluations (Eq. 6's
sum, over the timesteps instead of a trajectory). Nothing is generated.

>>> hm = attribute(pipe, "scene.png", "a red circle above a blue square", timesteps=(250, 500, 750))  # doctest: +SKIP
>>> hm["circle"].heat           # [H, W] at the image's size                                         # doctest: +SKIP

The noise: ``x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε`` for UNets and PixArt (DDPM's forward process, the model's own
``alphas_cumprod``), ``x_t = (1 − σ) · x_0 + σ · ε`` with ``σ = t / 1000`` for flow-matching transformers (SD3, Flux.1,
Chroma, Sana, Qwen-Image, Flux.2, Z-Image). ``x_0`` is the VAE posterior's mean (``latent_dist.mode()``, shifted and scaled as the model's pipeline
does), so the same image gives the same ``x_0`` on every call; ``ε`` is drawn per timestep, in order, from one CPU
``torch.Generator`` seeded with ``seed``. Each evaluation is the pipeline's own call with these latents and a
one-step schedule at ``t`` (``output_type="latent"``: nothing is decoded), so the denoiser sees exactly what it
sees at ``t`` during a generation; guidance is off (only the conditional branch is mapped, so a second branch
would be wasted work), except for guidance-distilled models (Flux.1, Flux.2 [dev]), which take it as an input.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from .heatmap import HeatMaps

DEFAULT_TIMESTEPS = (250, 500, 750)  # of 1000: three noise levels, low to high (not yet chosen on val: notebook 06)
_FLUX2 = ("Flux2KleinPipeline", "Flux2Pipeline")  # 2 × 2 patches into channels, batch-norm statistics of the VAE
_FLOW = ("StableDiffusion3Pipeline", "FluxPipeline", "ChromaPipeline", "QwenImagePipeline", "SanaPipeline",
         "ZImagePipeline") + _FLUX2  # x_t = (1 − σ) x_0 + σ ε, σ = t / 1000
_PACKED = ("FluxPipeline", "ChromaPipeline")  # latents packed 2 × 2 into tokens ([B, h/2 · w/2, 4C])
_DDPM_DIT = ("PixArtSigmaPipeline", "PixArtAlphaPipeline")  # transformers on the DDPM forward process
# the guidance_scale that turns guidance off, where it is not 1 (Z-Image guides above 0); None: leave it (Qwen-Image's
# true CFG is off without a negative prompt, and its guidance_scale is for guidance-distilled checkpoints only)
_GUIDANCE_OFF = {"ZImagePipeline": 0.0, "QwenImagePipeline": None}


class AttributionError(ValueError):
    """An image, prompt or setting :func:`attribute` cannot take; the message says what to change."""


def _kind(pipe) -> str:
    """``"ddpm"`` or ``"flow"``: how ``pipe``'s model was trained to see noise, or an error naming what is supported."""
    name = type(pipe).__name__
    if getattr(pipe, "unet", None) is not None or name in _DDPM_DIT:
        return "ddpm"
    if name in _FLOW:
        return "flow"
    raise AttributionError(f"attribute() does not support {name} yet; it supports UNet pipelines (SD 1.x/2.x, SDXL, "
                           f"the embedded models), {', '.join(_DDPM_DIT + _FLOW)}")


def _checked_image(pipe, image) -> tuple[np.ndarray, torch.Tensor]:
    """The image as RGB uint8 ``[H, W, 3]`` and as the VAE's input ``[1, 3, H, W]`` in [−1, 1], its sides checked
    against the model's size multiple before any model runs."""
    from PIL import Image, UnidentifiedImageError

    from .pipeline import _rgb, model_defaults

    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        try:
            with Image.open(image) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise AttributionError(f"cannot read the image {image} ({e}); pass a PNG or JPEG file, a PIL image or "
                                   "an [H, W, 3] array") from None
    try:
        rgb = _rgb(image)
    except (TypeError, ValueError) as e:
        raise AttributionError(f"cannot use {type(image).__name__} as an image ({e}); pass a PIL image, an "
                               "[H, W, 3] uint8 array or a [3, H, W] tensor in [0, 1]") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise AttributionError(f"the image has shape {rgb.shape}; pass an RGB image ([H, W, 3])")
    m = model_defaults(pipe).size_multiple
    h, w = rgb.shape[:2]
    if h % m or w % m:
        near = tuple(max(m, round(s / m) * m) for s in (w, h))
        raise AttributionError(f"the image is {w}×{h} but {type(pipe).__name__} needs sides divisible by {m}; resize "
                               f"or crop it, e.g. to {near[0]}×{near[1]}")
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    return rgb, x


def _checked_timesteps(timesteps) -> list[float]:
    ts = [timesteps] if isinstance(timesteps, (int, float)) else list(timesteps)
    if not ts:
        raise AttributionError("timesteps is empty; give at least one, e.g. timesteps=(500,)")
    for t in ts:
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not 0 < t < 1000:
            raise AttributionError(f"timesteps must be numbers in (0, 1000) (of the 1000 training timesteps; for a "
                                   f"flow-matching model σ = t / 1000), got {t!r}")
    return [float(t) for t in ts]


def clean_latents(pipe, x: torch.Tensor) -> torch.Tensor:
    """``x_0``: the image ``x`` ``[1, 3, H, W]`` in [−1, 1] through the pipeline's VAE (the posterior's mean), shifted
    and scaled as the pipeline's own img2img does, in the denoiser's layout (Flux.1 / Chroma: packed)."""
    vae, name = pipe.vae, type(pipe).__name__
    x = x.to(vae.device, vae.dtype)
    if name in _FLUX2:  # the pipeline's own: the posterior's mode, patchified, normalised by the VAE's BN statistics
        return pipe._encode_vae_image(x, None)  # [B, 4C, h/2, w/2]: the layout its `latents` take
    if name == "QwenImagePipeline":  # a video VAE: [B, C, frames, h, w], per-channel mean and std
        z = vae.encode(x[:, :, None]).latent_dist.mode()
        c = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1).to(z)
        std = torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1).to(z)
        z = ((z - mean) / std).transpose(1, 2)  # [B, 1, C, h, w]
        return pipe._pack_latents(z, z.shape[0], c, z.shape[-2], z.shape[-1])
    out = vae.encode(x)
    z = out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latent  # Sana's DC-AE is deterministic
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = (z - shift) * vae.config.scaling_factor
    if name in _PACKED:
        b, c, h, w = z.shape
        z = pipe._pack_latents(z, b, c, h, w)
    return z


def noised(x0: torch.Tensor, noise: torch.Tensor, t: float, kind: str, scheduler) -> torch.Tensor:
    """``x_t`` from ``x_0`` and ``ε`` at timestep ``t`` (see the module's docstring)."""
    if kind == "flow":
        s = t / 1000
        return (1 - s) * x0 + s * noise
    a = scheduler.alphas_cumprod[int(round(t))].to(torch.float64)
    return (a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()).to(x0.dtype)


@contextmanager
def attribution_scheduler(pipe, kind: str):
    """While inside, ``pipe.scheduler`` is a scheduler for single steps at chosen timesteps (:func:`at_timestep`):
    for UNets and PixArt a DDPM scheduler made from the pipeline's own config (the same ``alphas_cumprod``; no input
    scaling), for flow-matching models the pipeline's own. Restored afterwards."""
    from diffusers import DDPMScheduler

    original = pipe.scheduler
    pipe.scheduler = DDPMScheduler.from_config(original.config) if kind == "ddpm" else original
    try:
        yield pipe.scheduler
    finally:
        pipe.scheduler = original


@contextmanager
def at_timestep(scheduler, t: float, kind: str):
    """While inside, ``scheduler`` runs exactly one step, at ``t``, whatever the pipeline asks of it: its own
    ``set_timesteps`` runs (its signature kept, which pipelines inspect), then the schedule is replaced."""
    import functools

    set_timesteps = scheduler.set_timesteps

    @functools.wraps(set_timesteps)
    def once(*args, **kwargs):
        set_timesteps(*args, **kwargs)
        if kind == "flow":
            scheduler.timesteps = torch.tensor([t], dtype=torch.float32)
            scheduler.sigmas = torch.tensor([t / 1000, 0.0], dtype=torch.float32)
            scheduler._step_index = scheduler._begin_index = None
        else:
            scheduler.timesteps = torch.tensor([int(round(t))], dtype=torch.long)
        scheduler.num_inference_steps = 1

    scheduler.set_timesteps = once
    try:
        yield scheduler
    finally:
        del scheduler.set_timesteps  # the instance's override: the class's method again


def attribute(pipe, image, prompt: str, concepts: list[str] | None = None, timesteps=DEFAULT_TIMESTEPS,
              seed: int = 0, keep_heads: bool = False, encoder: str | None = None, **pipe_kwargs) -> HeatMaps:
    """The :class:`HeatMaps` of ``prompt``'s words over an existing ``image`` (a path, PIL image or array): one
    denoiser evaluation per timestep (of 1000), summed. ``hm.image`` is the image, ``hm.timesteps`` the timesteps;
    the image is checked (readable, RGB, sides divisible as the model needs) and the prompt too before anything
    runs. ``concepts``: words that need not be in the prompt, mapped as :func:`daamlib.trace` maps them (OVAM's
    method on UNets, PixArt and Sana; ConceptAttention's on Flux.1, Chroma, SD3, Flux.2 and Qwen-Image, with
    ``hm.concept_outputs``):
    ``hm.concepts["grass"]``. Other keywords go to the pipeline (e.g. ``max_sequence_length``)."""
    from .concepts import check_concepts, concept_alignment
    from .dit.registry import family_of
    from .pipeline import _signature_of, cpu_threads
    from .settings import check_prompt, check_seed
    from .trace import trace

    check_prompt(prompt)
    if not isinstance(prompt, str):
        raise AttributionError("attribute() takes one prompt (a string) per image")
    kind = _kind(pipe)
    ts = _checked_timesteps(timesteps)
    seed = check_seed(seed)
    rgb, x = _checked_image(pipe, image)
    concepts = check_concepts(concepts)
    if concepts and getattr(pipe, "unet", None) is None and not _concept_attention(pipe):
        from .dit.concept_attention import concept_families

        raise AttributionError(f"concepts= maps concepts on UNets and on {concept_families()}; "
                               f"{type(pipe).__name__} has no concept method here")
    h, w = rgb.shape[:2]
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    kw = dict(height=h, width=w, output_type="latent", num_inference_steps=1, **pipe_kwargs)
    off = _GUIDANCE_OFF.get(type(pipe).__name__, 1.0)
    if off is not None and (getattr(pipe, "unet", None) is not None or family_of(pipe).cfg != "distilled"):
        kw.setdefault("guidance_scale", off)  # guidance off: the conditional branch alone is mapped
    for k in ("use_resolution_binning", "clean_caption"):  # PixArt: the size given, the prompt as written
        if k in _signature_of(pipe):
            kw.setdefault(k, False)
    generator = torch.Generator("cpu").manual_seed(seed)
    maps, alignment, concept_maps, output_maps = {}, None, {}, {}
    with cpu_threads(pipe), torch.no_grad(), attribution_scheduler(pipe, kind) as scheduler:
        x0 = clean_latents(pipe, x)
        options = {**({} if encoder is None else {"encoder": encoder}), **({"concepts": concepts} if concepts else {})}
        with trace(pipe, keep_heads=keep_heads, **options) as tc:
            for t in ts:
                noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
                with at_timestep(scheduler, t, kind):
                    latents = noised(x0, noise, t, kind, scheduler).to(denoiser.dtype)
                    pipe(prompt=prompt, latents=latents, **kw)
                one = tc.heat_maps(0)
                alignment = one.alignment
                for name, m in one.maps.items():
                    maps.setdefault(name, []).append(m)
                for name, m in (one.concepts.maps.items() if one.concepts is not None else ()):
                    concept_maps.setdefault(name, []).append(m)
                for name, m in (one.concept_outputs.maps.items() if one.concept_outputs is not None else ()):
                    output_maps.setdefault(name, []).append(m)
    hm = HeatMaps(alignment, {k: torch.cat(v) for k, v in maps.items()}, size=(h, w), image=rgb, timesteps=ts)
    hm.steps_expected = hm.evaluations_expected = len(ts)
    if concept_maps:
        hm.concepts = HeatMaps(concept_alignment(concepts), {k: torch.cat(v) for k, v in concept_maps.items()},
                               size=(h, w), image=rgb, timesteps=ts)
    if output_maps:
        hm.concept_outputs = HeatMaps(concept_alignment(concepts), {k: torch.cat(v) for k, v in output_maps.items()},
                                      size=(h, w), image=rgb, timesteps=ts)
    return hm


def _concept_attention(pipe) -> bool:
    from .dit.concept_attention import supports
    from .dit.registry import family_of

    return supports(family_of(pipe))
