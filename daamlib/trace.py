"""Capture: record cross-attention probabilities while a diffusers pipeline generates.

>>> with daamlib.trace(pipe) as tc:                                    # doctest: +SKIP
...     out = pipe("a red circle above a blue square", generator=g)
>>> heat_maps = tc.heat_maps(0, image=out.images[0])                  # doctest: +SKIP
>>> heat_maps["circle"].binarize(0.4)                                 # doctest: +SKIP

``trace`` swaps the attention processor of every cross-attention module of the UNet (the
modules themselves say so: ``attn.is_cross_attention``) for a recording one, leaves
self-attention on its fast path, and restores the original processors in ``finally``.
Processors are global state of the pipeline: one trace at a time per pipeline.

What is recorded, per UNet call (a *step*) and cross-attention layer: ``softmax(QKᵀ/√d)``
of the conditional half of the batch only, summed over heads (or kept with
``keep_heads=True``), for the prompt's tokens only (start, words, first end token), as a
float32 ``[images, tokens, h, w]`` map at the layer's own resolution. The whole batch goes through
the fused attention kernel, which also returns each query's log-sum-exp
(:mod:`daamlib.attention`); the kept probabilities are ``exp(q·k_j/√d − LSE)``
(:func:`daamlib.attention.kept_probabilities`), so the model's output is its own and nothing
``[queries × keys]``-sized is made. With a ``store`` or ``replay`` (they store or inject the conditional
probabilities), or with ``fused=False`` (cheaper on a CPU), the softmax is materialised and used instead.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from .attention import SDPA, float_mask, kept_probabilities, output_and_lse, probabilities, user_sdpa
from .words import Alignment, align_words

# processors whose arithmetic is diffusers' plain attention: trace may replace them (same image, to rounding)
REPLACEABLE_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "SlicedAttnProcessor",
                          "AttnProcessorNPU")
_MISSING = object()

SUPPORTED = (  # the UNet pipelines; each registered tracer adds its own (supported_pipelines)
    "StableDiffusionPipeline (SD 1.x, 2.x)",
    "StableDiffusionXLPipeline (SDXL)",
    "StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline (SD 1.x, 2.x editing: the steps from strength on)",
    "StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline (SDXL editing)",
    "other diffusers pipelines whose `unet` is a UNet2DConditionModel with cross-attention",
)


class TraceError(RuntimeError):
    """Misuse of a trace: nesting, an unsupported pipeline, or maps asked for before generation."""


class UnsupportedPipelineError(TraceError, TypeError):
    """The pipeline has no UNet with cross-attention to record."""


@dataclass
class Generation:
    """Everything recorded during one pipeline call."""

    prompts: list[str | None]  # one per prompt (None when called with prompt_embeds)
    alignments: list[Alignment | None]
    images_per_prompt: int
    guidance: bool  # classifier-free guidance on: the UNet batch is [uncond, cond]
    n_tokens: int | None  # token columns kept (None: unknown, all kept)
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # layer -> per step [B, (heads,) T, h, w]
    timesteps: list[float] = field(default_factory=list)
    latent_size: tuple[int, int] | None = None
    expected_steps: int | None = None  # UNet calls the scheduler planned (its timesteps), read at the first call
    concept_maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # layer -> per step [B, C, h, w]

    def conditional_rows(self, batch: int) -> tuple[int, int]:
        """The UNet batch rows ``[start, end)`` of the conditional images. The batch is chunks of one row per image:
        ``[cond]``, ``[uncond, cond]`` with classifier-free guidance, ``[cond, perturbed]`` with perturbed-attention
        guidance (PAG) and ``[uncond, cond, perturbed]`` with both: the conditional chunk is the second with
        guidance, else the first."""
        n = len(self.prompts) * self.images_per_prompt
        first = 1 if self.guidance else 0
        if n < 1 or batch % n or batch // n < first + 1:
            raise TraceError(f"the UNet batch of {batch} rows is not chunks of {n} image(s) with the conditional "
                             f"chunk {'second' if self.guidance else 'first'}; this pipeline batches guidance in a "
                             "way trace does not know")
        return first * n, (first + 1) * n
    order: int = 1  # evaluations per sampler step (the scheduler's order: 2 for Heun)


STORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_store_dtype(dtype) -> torch.dtype | None:
    """The dtype recorded maps are kept in (computed in float32 either way), or a ValueError naming the choices."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if dtype not in STORE_DTYPES:
        raise ValueError(f"store_dtype must be one of {', '.join(str(d).removeprefix('torch.') for d in STORE_DTYPES)}"
                         f" (or None: float32), got {dtype!r}")
    return None if dtype == torch.float32 else dtype


class _Recorder:
    """Shared state of one trace: the current generation and step, read by every processor."""

    def __init__(self, keep_heads: bool, store_device: torch.device | str | None, store=None, replay=None,
                 scheduler=None, store_dtype: torch.dtype | None = None, fused: bool = True):
        self.fused = fused  # False: the softmax explicitly (see trace)
        self.scheduler = scheduler  # the pipeline's, for the number of steps a generation plans
        self.keep_heads = keep_heads
        self.store_device = None if store_device is None else torch.device(store_device)
        self.store_dtype = check_store_dtype(store_dtype)
        self.store, self.replay = store, replay  # AttentionStore to fill / to inject (see replay.py)
        self.generations: list[Generation] = []
        self.current: Generation | None = None
        self._grids: dict = {}  # (latent size, queries) -> (h, w)
        self._buffers: dict = {}  # (use, shape, device) -> a float32 work tensor reused by every call of that shape
        self.concepts: list = []  # daamlib.concepts.Concept: scored against the image's queries, never attended
        self.concept_keys: dict[str, list[torch.Tensor]] = {}  # layer -> per concept [heads, n_c, d]

    def buffer(self, use: str, shape: tuple, device) -> torch.Tensor:
        """A float32 tensor for intermediate results, the same one for every call with this use and shape (calls
        run one at a time): no megabyte-sized allocation per call (see :func:`daamlib.attention.probabilities`)."""
        key = (use, tuple(shape), device)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(shape, dtype=torch.float32, device=device)
        return self._buffers[key]

    def begin(self, prompts, alignments, images_per_prompt, guidance):
        lengths = [len(a.tokens) for a in alignments if a is not None]
        n_tokens = max(lengths) if lengths and all(a is not None for a in alignments) else None
        self.current = Generation(prompts, alignments, images_per_prompt, guidance, n_tokens)
        self.generations.append(self.current)

    def on_unet_call(self, sample: torch.Tensor, timestep) -> None:
        if self.current is None:  # a pipeline that never called encode_prompt
            self.begin([None], [None], sample.shape[0], guidance=False)
        g = self.current
        t = timestep.flatten()[0].item() if torch.is_tensor(timestep) else float(timestep)
        if not g.timesteps and self.scheduler is not None:
            g.expected_steps, g.order = planned_evaluations(self.scheduler, t)
        g.latent_size = tuple(sample.shape[-2:])
        g.timesteps.append(t)

    def grid(self, n_queries: int) -> tuple[int, int]:
        """The (h, w) of a layer's query grid from its length and the latent size."""
        key = (self.current.latent_size, n_queries)
        if key not in self._grids:
            H, W = self.current.latent_size
            fits = [(math.ceil(H / 2**k), math.ceil(W / 2**k)) for k in range(8)]
            found = [hw for hw in fits if hw[0] * hw[1] == n_queries]
            if not found:
                raise TraceError(f"cannot place {n_queries} attention queries on a grid of the {H}×{W} latent")
            self._grids[key] = found[0]
        return self._grids[key]


class RecordingAttnProcessor:
    """Attention that also records the conditional cross-attention probabilities.

    By default (``fused``, no store or replay): the whole batch through the fused kernel with log-sum-exp
    (:func:`daamlib.attention.attention_with_lse`), and ``exp(q·k_j/√d − LSE)`` for the conditional
    rows' kept tokens — the output is the model's own. Otherwise every row's ``softmax(QKᵀ/√d)`` is
    materialised in float32 (:func:`daamlib.attention.probabilities`) and used for the output (images match
    untraced ones to float rounding, ≤ 1e-5; the tests check both).
    """

    def __init__(self, recorder: _Recorder, name: str):
        self.recorder = recorder
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        b = c = h = w = None
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        B, N, _ = hidden_states.shape
        T_in = encoder_hidden_states.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, T_in, B)
            attention_mask = attention_mask.view(B, attn.heads, -1, attention_mask.shape[-1])

        q, k, v = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        d = k.shape[-1] // attn.heads
        q, k, v = (x.view(B, -1, attn.heads, d).transpose(1, 2) for x in (q, k, v))  # [B, heads, N|T, d]
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        out = self.attend(q, k, v, attention_mask)
        if self.recorder.concepts:
            self._keep_concepts(attn, q)
        return self._finish(attn, out, residual, input_ndim, b, c, h, w)

    def _keep_concepts(self, attn, q) -> None:
        """OVAM's concept maps (:mod:`daamlib.concepts`): the conditional rows' queries against each concept's keys
        through this layer's key projection (computed once per layer), softmax over the concept's own keys."""
        from .concepts import concept_keys, concept_probabilities

        rec = self.recorder
        B, H, N, d = q.shape
        if self.name not in rec.concept_keys:
            rec.concept_keys[self.name] = concept_keys(attn, rec.concepts, H, d)
        b0, b1 = rec.current.conditional_rows(B)
        p = concept_probabilities(q[b0:b1], rec.concept_keys[self.name], [c.rows for c in rec.concepts], d ** -0.5)
        p = p.reshape(*p.shape[:-1], *rec.grid(N))
        if rec.store_device is not None:
            p = p.to(rec.store_device, non_blocking=True)
        rec.current.concept_maps.setdefault(self.name, []).append(p)

    def attend(self, q, k, v, attention_mask=None) -> torch.Tensor:
        """Attention of ``[B, heads, N|T, d]`` queries, keys and values (as ``AttnProcessor2_0`` computes it) that
        records the conditional rows' kept probabilities; returns the output as ``[B, N, heads·d]``."""
        gen, rec = self.recorder.current, self.recorder
        B, H, N, d = q.shape
        b0, b1 = gen.conditional_rows(B)  # the conditional images' rows; the others are never recorded
        K = gen.n_tokens or k.shape[2]
        s = d ** -0.5  # what AttnProcessor2_0's SDPA call uses
        if rec.fused and rec.store is None and rec.replay is None:
            # the whole batch through the fused kernel, which also returns log-sum-exp: the output is the model's
            # own (bit-identical on a CPU), and only the kept tokens' probabilities are computed, for the
            # conditional rows: exp(k_j·q·s − LSE), normalised over every key as the model's softmax is
            out, lse = output_and_lse(q, k, v, attention_mask, None, range(b0, b1), kept=K)  # the user's kernel's output
            mask = None
            if attention_mask is not None:  # [B, heads, 1|N, T] → the kept keys', key-major
                mask = float_mask(attention_mask, torch.float32)[b0:b1, ..., :K].transpose(-1, -2)
            # with heads kept the probabilities themselves are stored: a fresh tensor, not the reused buffer
            buf = None if rec.keep_heads else rec.buffer("kept", (b1 - b0, H, K, N), q.device)
            self._keep(kept_probabilities(q[b0:b1], k[b0:b1, :, :K], lse, s, None, mask, buf), N)
            return out.transpose(1, 2).reshape(B, N, H * d).to(q.dtype)
        # every row's softmax computed explicitly (in float32) and used for its output; the conditional rows' are
        # what a store keeps and a replay replaces. One path for both halves: on a CPU the explicit products cost
        # what the fused kernel does, and the output is written in place (no second kernel call, no copy)
        out = torch.empty(B, N, H, d, dtype=v.dtype, device=v.device)  # the layout to_out reads
        full = probabilities(q, k, s, None, attention_mask, rec.buffer("scores", (B, H, N, k.shape[2]), q.device))
        cond = full[b0:b1]  # [Bc, heads, N, T], over every key
        step = len(gen.timesteps) - 1
        if rec.store is not None:  # a copy: the buffer is written again by the next call
            rec.store.put(step, self.name, cond.to(q.dtype, copy=True))
            rec.store.n_tokens = gen.n_tokens
        if rec.replay is not None and rec.replay.covers(step):
            rec.replay.check_tokens(gen.n_tokens)
            cond = rec.replay.get(step, self.name, cond)  # the seed generation's attention
        kernel = user_sdpa()
        if kernel is not SDPA:  # the user's own kernel computes the output; the softmax above is only recorded
            if rec.replay is not None:
                raise TraceError("replay injects attention probabilities, which a patched "
                                 "scaled_dot_product_attention cannot take; restore torch's own to replay")
            out = kernel(q, k, v, attn_mask=attention_mask).transpose(1, 2)
        else:
            for r in range(B):  # straight into the output's [N, heads, d] layout
                torch.bmm((cond[r - b0] if b0 <= r < b1 else full[r]).to(v.dtype), v[r], out=out[r].transpose(0, 1))
        kept = cond[..., :K].float().transpose(-1, -2)  # [Bc, heads, K, N]: the kept tokens only
        self._keep(kept.clone() if rec.keep_heads else kept, N)  # kept heads are stored: not a view of the buffer
        return out.reshape(B, N, H * d)

    @staticmethod
    def _finish(attn, out, residual, input_ndim, b=None, c=None, h=None, w=None):
        """The rest of AttnProcessor2_0: output projection, 4-D shape, residual, rescale."""
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _keep(self, probs: torch.Tensor, n_queries: int) -> None:
        """Sum the heads (unless kept) of key-major probabilities ``[Bc, heads, T, N]`` and keep them as maps
        ``[Bc, (heads,) T, h, w]``."""
        rec = self.recorder
        p = probs if rec.keep_heads else probs.sum(1)
        h, w = rec.grid(n_queries)
        p = p.reshape(*p.shape[:-1], h, w)  # a view when the probabilities came from kept_probabilities
        if rec.store_dtype is not None:
            p = p.to(rec.store_dtype)
        if rec.store_device is not None:
            p = p.to(rec.store_device, non_blocking=True)
        rec.current.maps.setdefault(self.name, []).append(p)


def cross_attention_modules(unet) -> dict[str, object]:
    """Dotted processor names of the UNet's cross-attention modules, in the order they run."""
    found = {}
    for name, module in unet.named_modules():
        # class lookup first: a missing attribute on an nn.Module instance is slow to find out
        if hasattr(type(module), "set_processor") and getattr(module, "is_cross_attention", False):
            found[f"{name}.processor"] = module
    return found


class Trace:
    """The handle ``trace`` yields: recorded generations and the heat maps made from them."""

    def __init__(self, pipe, recorder: _Recorder, layers: list[str]):
        self.pipe = pipe
        self._rec = recorder
        self._layers = layers  # dotted processor paths of the traced cross-attention modules, in run order

    @property
    def generations(self) -> list[Generation]:
        return self._rec.generations

    @property
    def layers(self) -> list[str]:
        return list(self._layers)

    def heat_maps(self, index: int = 0, image=None, generation: int = -1):
        """Heat maps of image ``index`` of a generation (the last by default) as a :class:`HeatMaps`.

        Images are ordered as diffusers returns them: prompt 0's images, then prompt 1's, ...
        """
        from .heatmap import HeatMaps, sampler_steps

        if not self._rec.generations:
            raise TraceError("no generation was recorded yet: call the pipeline inside `with trace(pipe)` first")
        gen = self._rec.generations[generation]
        if not gen.maps:
            raise TraceError(self._NOTHING_RECORDED)
        n_images = next(iter(gen.maps.values()))[0].shape[0]
        if not -n_images <= index < n_images:
            raise IndexError(f"image index {index} out of range: this generation made {n_images} image(s)")
        index %= n_images
        alignment = self._alignment(gen, index, n_images)
        if alignment is None:
            raise TraceError(
                "the pipeline was called with prompt_embeds, so the prompt's words are unknown; "
                "pass `prompt=` to the pipeline instead"
            )
        hm = HeatMaps(alignment, self._maps(gen, index, alignment), size=self._size(gen), image=image,
                      timesteps=list(gen.timesteps))
        self._fit_image(hm)
        self._extras(hm, gen, index)
        hm.order = gen.order
        hm.evaluations_expected = gen.expected_steps
        hm.steps_expected = None if gen.expected_steps is None else sampler_steps(gen.expected_steps, gen.order)
        if gen.expected_steps and len(gen.timesteps) < gen.expected_steps:
            warnings.warn(f"the generation was interrupted: its maps sum {hm.steps_completed} of the "
                          f"{hm.steps_expected} steps it planned ({len(gen.timesteps)} of {gen.expected_steps} "
                          "denoiser evaluations; HeatMaps.steps_completed); generate again to complete them",
                          stacklevel=2)
        return hm

    # -- what differs between a UNet's trace and a transformer's (daamlib.dit.DitTrace overrides these) -----------
    _NOTHING_RECORDED = ("the pipeline was called but no cross-attention ran: the generation was interrupted "
                         "before its first step, or another pipeline sharing this UNet was called instead")

    def _alignment(self, gen, index: int, n_images: int):
        return gen.alignments[index // gen.images_per_prompt] if len(gen.alignments) > 1 else gen.alignments[0]

    def _maps(self, gen, index: int, alignment) -> dict:
        T = len(alignment.tokens)
        return {name: torch.stack([m[index] for m in steps])[..., :T, :, :] for name, steps in gen.maps.items()}

    def _size(self, gen) -> tuple[int, int]:
        return _image_size(self.pipe, gen.latent_size)

    def _fit_image(self, hm) -> None:
        """Adjust the maps' size to the image given, where a pipeline resizes its output (none for UNets)."""

    def _extras(self, hm, gen, index: int) -> None:
        """Anything a generation recorded beside the word maps: UNets' concept maps (``hm.concepts``)."""
        if gen.concept_maps:
            from .concepts import concept_alignment
            from .heatmap import HeatMaps

            maps = {name: torch.stack([m[index] for m in steps]) for name, steps in gen.concept_maps.items()}
            hm.concepts = HeatMaps(concept_alignment([c.text for c in self._rec.concepts]), maps, hm.size, hm.image,
                                   list(gen.timesteps))


def planned_evaluations(scheduler, first: float | None = None) -> tuple[int | None, int]:
    """(denoiser evaluations the scheduler will run from here, its order), read at a generation's first call, whose
    timestep is ``first``. An img2img or inpainting pipeline starts part-way, at ``strength``: it sets the scheduler's
    begin index (or, for a scheduler without one, starts at the first call's timestep) and runs only the timesteps
    from there, so those are what is planned."""
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None:
        return None, 1
    order = int(getattr(scheduler, "order", 1) or 1)
    begin = getattr(scheduler, "begin_index", None)
    if begin is None and first is not None:
        found = [i for i, t in enumerate(timesteps.tolist() if torch.is_tensor(timesteps) else list(timesteps))
                 if abs(float(t) - first) < 1e-6]
        begin = found[0] if found else 0
    return max(0, len(timesteps) - int(begin or 0)), order


def _image_size(pipe, latent_size):
    factor = getattr(pipe, "vae_scale_factor", None) or 8
    return (latent_size[0] * factor, latent_size[1] * factor)


@lru_cache(maxsize=32)
def _signature(func) -> inspect.Signature:
    return inspect.signature(func)


def _prompt_list(prompt) -> list:
    if prompt is None:
        return [None]
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}: {prompt!r}")


def replaceable_processors() -> tuple[type, ...]:
    """diffusers' own classes named in :data:`REPLACEABLE_PROCESSORS`: compared by identity, so a processor of the
    user's that reuses one of their names (or subclasses one) is not taken for diffusers' plain attention."""
    from diffusers.models import attention_processor

    return tuple(c for c in (getattr(attention_processor, n, None) for n in REPLACEABLE_PROCESSORS) if c is not None)


def _class_name(cls: type) -> str:
    module = cls.__module__
    return cls.__name__ if module.startswith("diffusers.") else f"{cls.__name__} from {module}"


def note_store_and_replay(pipe, store, replay) -> None:
    """A replay is checked against the model that recorded it, before anything runs; a store notes its model."""
    if replay is not None:
        replay.check_model(pipe)
    if store is not None:
        store.note_model(pipe)


def check_not_traced(pipe, denoiser, what: str) -> None:
    """Refuse a second trace of ``pipe``, or of its denoiser (``what``: "UNet", "transformer") through another
    pipeline that shares it."""
    if getattr(pipe, "_daam_trace", None) is not None:
        raise TraceError("this pipeline is already being traced; leave the outer `with trace(pipe)` block first")
    if getattr(denoiser, "_daam_traced", False):
        raise TraceError(f"this pipeline's {what} is already being traced through another pipeline that shares it; "
                         "trace one pipeline at a time (leave the other `with trace(...)` block first)")


@contextmanager
def installed(pipe, denoiser, handle, modules: dict, processor_for, encode_prompt, on_call):
    """Install a trace and put everything back on exit, whatever happens inside: each module of ``modules``
    (name → attention module) gets ``processor_for(name, original_processor)``, ``pipe.encode_prompt`` becomes
    ``encode_prompt`` (a user's own override is restored exactly), and ``on_call(args, kwargs)`` runs before
    every call of ``denoiser``."""
    original = {name: m.processor for name, m in modules.items()}
    own_encode = vars(pipe).get("encode_prompt", _MISSING)
    hook = denoiser.register_forward_pre_hook(lambda module, args, kwargs: on_call(args, kwargs), with_kwargs=True)
    pipe._daam_trace = handle
    denoiser._daam_traced = True
    try:
        for name, m in modules.items():
            m.set_processor(processor_for(name, original[name]))
        pipe.encode_prompt = encode_prompt
        yield handle
    finally:
        hook.remove()
        for name, m in modules.items():
            m.set_processor(original[name])
        vars(pipe).pop("_daam_trace", None)
        vars(denoiser).pop("_daam_traced", None)
        if own_encode is _MISSING:
            vars(pipe).pop("encode_prompt", None)
        else:
            pipe.encode_prompt = own_encode


# -- other denoisers: registered, never imported ------------------------------------------------------------------
@dataclass(frozen=True)
class Tracer:
    """How :func:`trace` traces pipelines whose denoiser is not a UNet. A package registers one with
    :func:`register_tracer` when it is imported (``daamlib/__init__.py`` imports :mod:`daamlib.dit`, which does), so
    this module never imports it."""

    name: str
    claims: Callable[[object], bool]  # is the pipeline of this kind (e.g. a `transformer` and no `unet`)
    modules: Callable[[object], dict | None]  # its traced modules by name; None: not of this kind after all
    # (check_supported goes on to the UNet); raises UnsupportedPipelineError naming supported_pipelines()
    trace: Callable[..., AbstractContextManager[Trace]]  # trace()'s arguments, fused included
    supported: Callable[[], list[str]]  # the pipelines it traces, for error messages


_TRACERS: dict[str, Tracer] = {}


def register_tracer(tracer: Tracer) -> None:
    """Let :func:`trace` (and :func:`check_supported`) hand the pipelines ``tracer`` claims to it."""
    _TRACERS[tracer.name] = tracer


def _tracer_for(pipe) -> Tracer | None:
    return next((t for t in _TRACERS.values() if t.claims(pipe)), None)


def supported_pipelines() -> list[str]:
    """Every pipeline :func:`trace` takes, for error messages: the UNet ones, then each registered tracer's."""
    return list(SUPPORTED) + [line for t in _TRACERS.values() for line in t.supported()]


def check_supported(pipe) -> dict:
    """The cross-attention modules of ``pipe`` by name, or an :class:`UnsupportedPipelineError` naming the supported
    pipelines."""
    unet = getattr(pipe, "unet", None)
    tracer = _tracer_for(pipe)
    found = tracer.modules(pipe) if tracer is not None else None
    if found is not None:
        return found
    modules = cross_attention_modules(unet) if isinstance(unet, torch.nn.Module) else {}
    if not modules:
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__} has no UNet with cross-attention to trace; supported: "
            + "; ".join(supported_pipelines())
        )
    return modules


@contextmanager
def trace(pipe, keep_heads: bool = False, store_device: torch.device | str | None = None,
          store=None, replay=None, encoder: str = "all", store_dtype: torch.dtype | None = None,
          fused: bool = True, concepts: list[str] | None = None) -> Iterator[Trace]:
    """Record cross-attention of ``pipe`` for every call made inside the block.

    ``store`` (a :class:`daamlib.replay.AttentionStore`) also keeps the full conditional
    probabilities for a later replay; ``replay`` injects a store's probabilities in place of
    the model's own (for the steps the store covers), holding the recorded layout fixed.
    The maps recorded during a replay are the injected ones.

    ``keep_heads`` keeps each head's map (``[images, heads, tokens, h, w]`` per step and layer)
    instead of their sum. ``store_dtype=torch.float16`` (or ``bfloat16``) keeps the maps in half the memory;
    they are computed in float32 and rounded once when stored. ``store_device="cpu"`` moves recorded maps off the accelerator as
    they are made (for long runs on a GPU).

    ``fused`` (UNets): by default the attention output comes from the fused kernel for the whole batch, so a traced
    image is bit-identical to an untraced one, and the kept probabilities are recomputed from the kernel's
    log-sum-exp (a tokens × queries product and an ``exp`` per head). ``fused=False`` computes the softmax
    explicitly and uses it for the output: images equal to float rounding (≤ 1e-5), and on a CPU, where the
    explicit softmax costs what the fused kernel does, recording costs less (README, Performance). A store or
    replay always computes it explicitly. Raises :class:`UnsupportedPipelineError` for a
    pipeline without a cross-attention UNet and :class:`TraceError` when already traced.

    Diffusion transformers (SD3/3.5, Flux.1 and .2, PixArt, Sana, Qwen-Image, Z-Image, Chroma) are traced by
    :mod:`daamlib.dit` (a registered :class:`Tracer`), with the same handle; ``encoder`` chooses the text stream
    whose tokens are kept there (``"all"``, ``"clip"``, ``"t5"``, ``"lm"``).

    ``concepts``: words or phrases that need not be in the prompt, each mapped on UNets, PixArt and Sana by OVAM's
    method (:mod:`daamlib.concepts`) and on Flux.1, Chroma, SD3, Flux.2 and Qwen-Image by ConceptAttention's (:mod:`daamlib.dit.concept_attention`; also
    ``heat_maps(i).concept_outputs``): ``heat_maps(i).concepts["grass"]``. The generation never sees them.
    """
    from .concepts import check_concepts

    concepts = check_concepts(concepts)
    tracer = _tracer_for(pipe)
    if tracer is not None:
        extra = {"concepts": concepts} if concepts else {}
        with tracer.trace(pipe, keep_heads=keep_heads, store_device=store_device, encoder=encoder,
                          store_dtype=store_dtype, store=store, replay=replay, fused=fused, **extra) as handle:
            yield handle
        return
    unet = getattr(pipe, "unet", None)
    modules = check_supported(pipe)
    if encoder != "all":
        raise ValueError(f"encoder={encoder!r} applies to transformer pipelines; a UNet's maps use the prompt's "
                         "tokens of its (first) text encoder: leave encoder unset")
    check_not_traced(pipe, unet, "UNet")
    plain = replaceable_processors()
    custom = sorted({_class_name(type(m.processor)) for m in modules.values() if type(m.processor) not in plain})
    if custom:
        raise TraceError(
            f"the cross-attention layers use processors of your own ({', '.join(custom)}); trace records by "
            "replacing them with diffusers' plain attention and would generate a different image than yours. "
            "Remove them first (pipe.unet.set_default_attn_processor(), or unload the adapter), or record "
            "your processor's probabilities yourself")

    note_store_and_replay(pipe, store, replay)
    recorder = _Recorder(keep_heads, store_device, store, replay, getattr(pipe, "scheduler", None), store_dtype, fused)
    if concepts:  # encoded before encode_prompt is hooked: they are not a generation
        from .concepts import encode_concepts

        recorder.concepts = encode_concepts(pipe, concepts)
    encode = pipe.encode_prompt
    signature = _signature(type(pipe).encode_prompt)

    def encode_and_note(*args, **kwargs):
        bound = signature.bind(pipe, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        prompts = _prompt_list(a.get("prompt"))
        tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
        alignments = [None if p is None else align_words(p, tokenizer) for p in prompts]
        for al in alignments:
            if al is not None and al.truncated:
                warnings.warn(
                    f"the prompt {al.prompt[:60]!r}... is longer than the text encoder's {al.max_length} tokens; "
                    "words past the limit were dropped and have no heat map; shorten the prompt to keep them",
                    stacklevel=3,
                )
        prompt_2 = a.get("prompt_2")
        if prompt_2 is not None and prompt_2 != a.get("prompt"):
            warnings.warn("prompt_2 differs from prompt: the maps' words are prompt's; the second text encoder's "
                          "tokens (prompt_2) are attended too but not aligned to words; leave prompt_2 unset (or equal to "
                          "prompt) for maps that account for every token", stacklevel=3)
        if a.get("prompt") is None and a.get("prompt_embeds") is not None:
            prompts = [None] * a["prompt_embeds"].shape[0]
            alignments = [None] * len(prompts)
        recorder.begin(prompts, alignments, int(a.get("num_images_per_prompt") or 1), bool(a.get("do_classifier_free_guidance")))
        return encode(*args, **kwargs)

    def on_unet_call(args, kwargs):
        recorder.on_unet_call(args[0] if args else kwargs["sample"], args[1] if len(args) > 1 else kwargs["timestep"])

    # only cross-attention is touched
    try:
        with installed(pipe, unet, Trace(pipe, recorder, list(modules)), modules,
                       lambda name, _: RecordingAttnProcessor(recorder, name), encode_and_note, on_unet_call) as handle:
            yield handle
    finally:
        recorder._buffers.clear()  # the handle outlives the block (for its maps); the work tensors need not
