"""Generation settings, checked once where a request enters (:func:`daamlib.generate`, the runner, the ``daam``
command) and passed down as one frozen object.

>>> asked = GenerationSettings.checked(seed=0, steps=30, height=768)          # before any model loads
>>> model = ModelDefaults("StableDiffusionPipeline", size_multiple=8, height=512, width=512, steps=50, guidance=7.5)
>>> used = asked.for_model(model)                                             # once it is loaded
>>> used.sampling()
{'steps': 30, 'guidance': 7.5, 'height': 768, 'width': 512}

Two halves: what the model imposes (:class:`ModelDefaults`, plain values read once from a loaded pipeline by
:func:`daamlib.pipeline.model_defaults`) and what was asked (:class:`GenerationSettings`). The checks of single
values need no model, so a bad value is refused before a model loads. This module imports nothing from daamlib:
every other module may import it, and none needs to import back up for a check.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from dataclasses import dataclass, replace
from typing import Any

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; pandas and most JSON readers take signed 64-bit integers
SIZE_MULTIPLE = 8  # every supported pipeline needs sides divisible by 8 (some by more: ModelDefaults.size_multiple)
MAX_SIDE = 16384  # pixels: as daamlib.io refuses larger experiments
SAMPLING = ("steps", "guidance", "height", "width")  # what a model may give defaults for


# -- single values, no model needed ------------------------------------------------------------------
def _plain(v):
    """numpy / pandas scalars → Python ones, so that JSON and comparisons behave."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


def _as_int(v, name: str, minimum: int, maximum: int | None = None) -> int:
    v = _plain(v)
    if isinstance(v, str):  # exactly: "9007199254740993" stays itself ("3.0" and "1e3" are whole numbers too)
        try:
            v = int(v.strip())
        except ValueError:
            try:
                d = Decimal(v.strip())
            except InvalidOperation:
                raise ValueError(f"{name} must be an integer, got {v!r}") from None
            if not d.is_finite() or d != d.to_integral_value():
                raise ValueError(f"{name} must be an integer, got {v!r}") from None
            v = int(d)
    elif isinstance(v, float) and v.is_integer() and abs(v) >= 2**53:
        raise ValueError(f"{name} {v:.0f} came as a float of 2⁵³ or more, where floats skip integers, so it may not be the "
                         "number written; give it as an integer or as text (e.g. read the table with dtype=str)")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if int(v) < minimum or (maximum is not None and int(v) > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
        raise ValueError(f"{name} must be an integer {bound}, got {int(v)}")
    return int(v)


def _as_float(v, name: str) -> float:
    v = _plain(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if isinstance(v, bool) or not math.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return f


def check_seed(v) -> int:
    """A seed as an integer in 0..2⁶³−1, or a ValueError naming the value and the range."""
    return _as_int(v, "seed", 0, MAX_SEED)


def check_setting(name: str, v):
    """One setting (``steps``, ``guidance``, ``height``, ``width``, ``negative_prompt``; an edit's ``image``,
    ``mask`` (paths) and ``strength``) checked and normalised,
    or a ValueError naming the value and the valid range; what the model itself needs is checked once it is
    loaded (:meth:`GenerationSettings.for_model`)."""
    if name == "steps":
        return _as_int(v, "steps", 1, 10_000)
    if name in ("height", "width"):
        side = _as_int(v, name, SIZE_MULTIPLE, MAX_SIDE)
        if side % SIZE_MULTIPLE:
            near = max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)
            raise ValueError(f"{name} must be a multiple of {SIZE_MULTIPLE} (the models' latent factor), got {side}; "
                             f"use e.g. {near}")
        return side
    if name == "guidance":
        return _as_float(v, "guidance")
    if name == "strength":  # an edit's: how far from its image it starts
        f = _as_float(v, "strength")
        if not 0 < f <= 1:
            raise ValueError(f"strength must be in (0, 1], got {f}")
        return f
    if not isinstance(v, str):
        raise ValueError(f"{name} must be a string, got {type(v).__name__} {v!r}")
    return v


def check_prompt(prompt) -> list[str]:
    """The prompt(s) as a list, or a clear error for an empty or non-string prompt."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompt must be a string or a non-empty list of strings, got {type(prompt).__name__}: {prompt!r}")
    for p in prompts:
        if not p.strip():
            raise ValueError("the prompt is empty; DAAM attributes pixels to the prompt's words, so give it at least one word")
    return list(prompts)


# -- the model's half and the request's half ---------------------------------------------------------
@dataclass(frozen=True)
class ModelDefaults:
    """What a loaded model imposes on a generation, as plain values (:func:`daamlib.pipeline.model_defaults`)."""

    name: str  # the pipeline class, for messages
    size_multiple: int = SIZE_MULTIPLE  # height and width must be divisible by it: VAE factor (× patch size)
    height: int = 512  # pixels, when none is asked
    width: int = 512
    steps: int | None = None  # the model's own (sampling.json), else the pipeline's; None: neither has one
    guidance: float | None = None
    scheduler: str | None = None  # sampling.json's scheduler (load_pipeline applies it)
    pixels_per_token: int | None = None  # transformers: image pixels per side of one image token; None for UNets


@dataclass(frozen=True)
class GenerationSettings:
    """Everything a generation is asked to use, each value checked. ``None``: the model's default
    (:meth:`for_model` fills it in) or, for the last three, the pipeline's / trace's own."""

    seed: int = 0  # drives a CPU torch.Generator
    steps: int | None = None  # denoising steps
    guidance: float | None = None  # classifier-free guidance scale
    height: int | None = None  # pixels
    width: int | None = None
    negative_prompt: str | list[str] | None = None
    encoder: str | None = None  # transformers: the text stream whose tokens get maps (checked by the trace)
    store_dtype: Any = None  # the dtype maps are kept in (checked by the trace)

    @classmethod
    def checked(cls, *, seed=0, steps=None, guidance=None, height=None, width=None, negative_prompt=None,
                encoder=None, store_dtype=None) -> GenerationSettings:
        """The values asked, each checked without a model (:func:`check_seed`, :func:`check_setting`)."""
        seed = check_seed(seed)
        given = {k: check_setting(k, v) for k, v in zip(SAMPLING, (steps, guidance, height, width)) if v is not None}
        return cls(seed=seed, **given, negative_prompt=negative_prompt, encoder=encoder, store_dtype=store_dtype)

    def for_model(self, model: ModelDefaults) -> GenerationSettings:
        """These settings with what is left at None taken from ``model`` (a side given alone is paired with the
        model's other), checked against it; a ValueError names a value the model cannot take and the fix."""
        filled = {k: getattr(model, k) if getattr(self, k) is None else getattr(self, k) for k in SAMPLING}
        filled = {k: None if v is None else check_setting(k, v) for k, v in filled.items()}
        m = model.size_multiple
        for k in ("height", "width"):
            if filled[k] % m:
                raise ValueError(f"{k} must be a multiple of {m} for {model.name} (its VAE factor × patch size), "
                                 f"got {filled[k]}; use e.g. {max(m, round(filled[k] / m) * m)}")
        return replace(self, **filled)

    def sampling(self) -> dict:
        """``{"steps", "guidance", "height", "width"}``: what a run records of these settings."""
        return {k: getattr(self, k) for k in SAMPLING}

    def pipeline_kwargs(self) -> dict:
        """The keywords a diffusers pipeline takes for these settings; those left at None are left out."""
        kw = dict(num_inference_steps=self.steps, guidance_scale=self.guidance, height=self.height, width=self.width,
                  negative_prompt=self.negative_prompt)
        return {k: v for k, v in kw.items() if v is not None}
