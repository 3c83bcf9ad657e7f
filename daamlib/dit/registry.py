"""The traced transformer families: what each declares (:class:`Family`), and the lazy mapping from a pipeline's
class name to the module that declares its family.

As transformers' auto mappings do, :data:`FAMILY_MODULES` names modules, not objects: the family of a pipeline is
imported the first time a pipeline of it is traced, so nothing here (nor the recorder) imports every family.
Adding a family is one file in ``daamlib/dit/families/`` whose ``FAMILY`` is a :class:`Family`, one line here,
and one test (``tests/test_dit.py``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Stream:
    """One text encoder's tokens in the transformer's text input, and how the pipeline tokenizes for it."""

    name: str  # "clip", "t5", "lm"
    tokenizer: str  # the pipeline's attribute (dotted: "tokenizer.tokenizer" is a processor's tokenizer)
    template: object = "{}"  # the text the pipeline gives the tokenizer, the prompt at {}: a string, the pipeline's
    # attribute holding one, or a function of (pipe, encode_prompt's arguments) that returns one (a chat template)
    drop: object = 0  # leading tokens the pipeline drops from the encoder's states: a number, the attribute holding
    # it, or a function of (pipe, encode_prompt's arguments)
    max_length: str | int = "max_sequence_length"  # encode_prompt's argument (or a fixed number)
    length: str | None = None  # its segment's length in the text input: an attribute (SD3's CLIP part); None: the rest
    encoder: str | None = None  # the text encoder attribute: None when that encoder is absent means zeros
    pads: bool = False  # the pipeline pads to max_length (left padding then shifts every position)
    special_tokens: bool = True  # the tokenizer adds its special tokens (False: the template already has them)
    lower: bool = False  # the pipeline lower-cases and strips the prompt first (PixArt, Sana: _text_preprocessing)


# family module (daamlib/dit/families/<name>.py) → the pipeline class names it traces, in the order error
# messages list them
FAMILY_MODULES: dict[str, tuple[str, ...]] = {
    "sd3": ("StableDiffusion3Pipeline",),
    "flux": ("FluxPipeline",),
    "chroma": ("ChromaPipeline",),
    "pixart": ("PixArtSigmaPipeline", "PixArtAlphaPipeline"),
    "sana": ("SanaPipeline",),
    "qwen": ("QwenImagePipeline",),
    "flux2": ("Flux2KleinPipeline",),
    "zimage": ("ZImagePipeline",),
    "flux2_dev": ("Flux2Pipeline",),
    "flux_edit": ("FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    "flux_kontext": ("FluxKontextPipeline",),
    "qwen_edit": ("QwenImageEditPipeline",),
}
CFG_LAYOUTS = ("batch", "separate call", "distilled", "list")


@dataclass(frozen=True)
class Family:
    """What the recorder needs to know about one family of transformer pipelines."""

    name: str
    pipelines: tuple[str, ...]  # the diffusers pipeline classes
    models: tuple[str, ...]  # the models of each pipeline, for people (("SD3, SD3.5",))
    text_first: bool  # joint sequences are [text, image] (Flux, Qwen) or [image, text] (SD3)
    streams: tuple[Stream, ...]  # the text input's segments, in order (daamlib.dit.tokens)
    packed: bool  # latents packed 2×2 into one token by the pipeline (Flux, Qwen): pixels per token = VAE × 2
    cfg: str  # how the pipeline does classifier-free guidance (one of CFG_LAYOUTS): "batch" [uncond, cond], a
    # "separate call" for the negative prompt, guidance-"distilled" (one branch), or a "list" [cond…, uncond…]; the
    # recorder needs no branch on it (it finds the conditional rows by matching encode_prompt's output)
    unified: int = 0  # Z-Image: per image one [image, text] sequence, each part padded to a multiple of this
    blocks: str | None = None  # only attention modules under this prefix see image and text together
    reference: bool = False  # the image sequence is [generated, reference image] (Flux Kontext): word maps over the
    # generated tokens, normalised over every key; the reference's share of their attention is kept as its own map
    # for people (README's family table is generated from these: python -m daamlib.docs)
    attention: str = ""  # how text meets image
    text: str = ""  # the text streams and how the prompt is tokenized for them (encoder=)
    guidance: str = ""  # classifier-free guidance as the pipeline does it

    def supported(self) -> list[str]:
        """The family's lines in an error's list of supported pipelines."""
        return [f"{p} ({m})" for p, m in zip(self.pipelines, self.models)]


_MODULE_OF = {p: module for module, pipelines in FAMILY_MODULES.items() for p in pipelines}


@lru_cache(maxsize=None)
def load_family(module: str) -> Family:
    """The ``FAMILY`` that ``daamlib/dit/families/<module>.py`` declares."""
    return importlib.import_module(f"{__package__}.families.{module}").FAMILY


def family_of(pipe) -> Family | None:
    """The family of ``pipe`` by its class name, or None when no family traces it."""
    module = _MODULE_OF.get(type(pipe).__name__)
    return None if module is None else load_family(module)


def families() -> list[Family]:
    """Every registered family (this imports each family's module)."""
    return [load_family(m) for m in FAMILY_MODULES]


def supported_names() -> list[str]:
    return list(_MODULE_OF)


def supported() -> list[str]:
    """Every traced transformer pipeline, with its models: ``"StableDiffusion3Pipeline (SD3, SD3.5)"``, ..."""
    return [line for f in families() for line in f.supported()]


def pixels_per_token(pipe) -> int:
    """Image pixels per side of one image token: the VAE factor × the patch size (× 2 for packed latents)."""
    fam = family_of(pipe)
    vae = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    cfg = pipe.transformer.config
    patch = getattr(cfg, "patch_size", None) or (getattr(cfg, "all_patch_size", None) or [1])[0]  # Z-Image: its first
    patch = int(patch if isinstance(patch, int) else patch[0])
    return vae * (2 if fam is not None and fam.packed else patch)
