"""``trace`` for a transformer pipeline: which attention modules see text, the handle (:class:`DitTrace`), and the
context manager that wraps each module's processor and ``encode_prompt`` while the kernel is patched."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..trace import (Trace, TraceError, Tracer, UnsupportedPipelineError, _signature, check_not_traced, installed,
                     note_store_and_replay, supported_pipelines)
from .recorder import _DitRecorder, _patch_kernel, _tap_class
from .registry import Family, family_of, pixels_per_token, supported
from .tokens import ENCODERS


def attention_modules(transformer, family: Family | None = None) -> dict[str, object]:
    """The transformer's attention modules that can see text: joint (an added text projection, or a
    single-stream block) or cross-attention, by dotted processor path in run order. A family with ``blocks``
    (Z-Image) names where they are: every attention module under that prefix, as single-stream."""
    found = {}
    for name, m in transformer.named_modules():
        if not hasattr(type(m), "set_processor") or not hasattr(m, "processor"):
            continue
        if family is not None and family.blocks is not None:
            if name.startswith(family.blocks):
                found[f"{name}.processor"] = (m, True, False)
            continue
        joint = getattr(m, "added_kv_proj_dim", None) is not None or getattr(m, "add_k_proj", None) is not None
        single = "single" in name
        cross = bool(getattr(m, "is_cross_attention", False))
        if joint or single or cross:
            found[f"{name}.processor"] = (m, single, cross)
    return found


class DitTrace(Trace):
    """The handle :func:`trace` yields for a transformer pipeline: :class:`daamlib.trace.Trace`'s, with the token
    axis, image size and alignment a transformer's recording has."""

    _NOTHING_RECORDED = ("the pipeline was called but no image-to-text attention was recorded: the generation was "
                         "interrupted before its first step, or it was called with prompt_embeds only")

    def _alignment(self, gen, index: int, n_images: int):
        per_prompt = max(1, n_images // max(1, len(gen.prompts)))
        return gen.alignments[min(index // per_prompt, len(gen.alignments) - 1)] if gen.alignments else None

    def _maps(self, gen, index: int, alignment) -> dict:
        return {name: torch.stack([m[index] for m in steps]) for name, steps in gen.maps.items()}

    def _size(self, gen) -> tuple[int, int]:
        f = pixels_per_token(self.pipe)
        return gen.grid[0] * f, gen.grid[1] * f

    def _extras(self, hm, gen, index: int) -> None:
        """Kontext: ``hm.reference``, the generated tokens' mean attention to each reference-image token, summed over
        blocks and steps (Eq. 6's sum) and upsampled once (bicubic, clamped at 0) to the reference image's pixels.
        ConceptAttention: ``hm.concepts`` (cross-attention space) and ``hm.concept_outputs`` (output space)."""
        if gen.concept_maps:
            from ..concepts import concept_alignment
            from ..heatmap import HeatMaps

            for attr, recorded in (("concepts", gen.concept_maps), ("concept_outputs", gen.concept_output_maps)):
                if not recorded:  # cross-attention transformers have no output-space maps
                    continue
                maps = {name: torch.stack([m[index] for m in steps]) for name, steps in recorded.items()}
                setattr(hm, attr, HeatMaps(concept_alignment(self._concepts), maps, hm.size, hm.image,
                                           list(gen.timesteps)))
        if not gen.reference_maps:
            return
        import torch.nn.functional as F

        total = sum(torch.stack([m[index] for m in steps]).float().sum(0) for steps in gen.reference_maps.values())
        f = pixels_per_token(self.pipe)
        h, w = gen.reference_grid
        up = F.interpolate(total[None, None].cpu(), size=(h * f, w * f), mode="bicubic", align_corners=False)[0, 0]
        hm.reference = up.clamp(min=0)

    def _fit_image(self, hm) -> None:
        if hm.image is not None and hm.image.shape[:2] != hm.size:  # e.g. PixArt's resolution binning resized it
            hm.size = tuple(hm.image.shape[:2])


@contextmanager
def trace_transformer(pipe, keep_heads: bool = False, store_device=None, encoder: str = "all",
                      store_dtype=None, store=None, replay=None, concepts: list[str] | None = None
                      ) -> Iterator[DitTrace]:
    """:func:`daamlib.trace` for a diffusion-transformer pipeline (see the module's docs)."""
    family = family_of(pipe)
    transformer = getattr(pipe, "transformer", None)
    if family is None or not isinstance(transformer, torch.nn.Module):
        raise UnsupportedPipelineError(f"{type(pipe).__name__} is not a supported transformer pipeline; supported: "
                                       + "; ".join(supported_pipelines()))
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    names = [s.name for s in family.streams]
    if encoder != "all" and encoder not in names:
        raise ValueError(f"encoder={encoder!r}: {type(pipe).__name__}'s text input holds the streams {names}; "
                         f"choose one of {names + ['all']}")
    modules = attention_modules(transformer, family)
    if not modules:
        raise UnsupportedPipelineError(f"{type(transformer).__name__} has no attention between image and text tokens")
    check_not_traced(pipe, transformer, "transformer")
    note_store_and_replay(pipe, store, replay)
    if concepts:
        from .concept_attention import CROSS, FAMILIES

        if family.name not in FAMILIES + CROSS:
            raise TraceError(f"concepts= on diffusion transformers is implemented for Flux.1, Chroma, SD3, Flux.2, Qwen-Image and "
                             f"Z-Image "
                             f"({', '.join(FAMILIES)}: ConceptAttention's method) and PixArt and Sana (OVAM's); "
                             f"{type(pipe).__name__} is "
                             f"{family.name!r}. Map the prompt's own words, or use one of those or a UNet model")

    rec = _DitRecorder(pipe, family, encoder, keep_heads, store_device, store_dtype, store, replay)
    encode = pipe.encode_prompt
    signature = _signature(type(pipe).encode_prompt)

    def encode_and_note(*args, **kwargs):
        bound = signature.bind(pipe, *args, **kwargs)
        bound.apply_defaults()
        # a copy of list arguments: ZImagePipeline rewrites the prompt list in place with its chat template
        noted = {k: list(v) if isinstance(v, list) else v for k, v in bound.arguments.items()}
        result = encode(*args, **kwargs)
        rec.on_encode(noted, result)
        return result

    def tap(name, original):
        _, single, cross = modules[name]
        return _tap_class(original)(rec, original, name, single, cross)

    stream = None
    if concepts:  # encoded before encode_prompt is hooked: they are not a generation
        from .concept_attention import CROSS, ConceptStream, encode_cross

        if family.name in CROSS:
            rec.cross_concepts = encode_cross(pipe, family, list(concepts))
        else:
            stream = ConceptStream(pipe, rec, list(concepts))
    _patch_kernel(True)
    try:
        with installed(pipe, transformer, DitTrace(pipe, rec, list(modules)),
                       {name: m for name, (m, _, _) in modules.items()}, tap, encode_and_note,
                       rec.on_transformer_call) as handle:
            handle._concepts = list(concepts or [])
            if stream is not None:
                stream.install(transformer)  # after the recorder's hooks: it reads the rows they find
            try:
                yield handle
            finally:
                if stream is not None:
                    stream.remove()
    finally:
        _patch_kernel(False)


# -- what daamlib.trace asks of this package (registered by daamlib/dit/__init__.py) --------------------------------
def _claims(pipe) -> bool:
    return getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None


def _modules(pipe) -> dict | None:
    """The traced attention modules by name (for the runner's check before it generates)."""
    if not isinstance(getattr(pipe, "transformer", None), torch.nn.Module):
        return None
    family = family_of(pipe)
    if family is None:
        raise UnsupportedPipelineError(f"{type(pipe).__name__} is not a supported transformer pipeline; "
                                       "supported: " + "; ".join(supported_pipelines()))
    return {name: m for name, (m, _, _) in attention_modules(pipe.transformer, family).items()}


def _trace(pipe, fused: bool = True, **kwargs):
    if not fused:
        raise ValueError("fused=False applies to UNet pipelines: a transformer's joint attention would "
                         "materialise image tokens² probabilities per head; leave fused unset")
    return trace_transformer(pipe, **kwargs)


TRACER = Tracer("transformer", claims=_claims, modules=_modules, trace=_trace, supported=supported)
