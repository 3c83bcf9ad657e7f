"""The recorder of a traced transformer: the attention kernel swapped for one that also returns log-sum-exp while
a wrapped module runs, the taps that wrap each attention module's processor, and the recorder they report to, which
keeps the conditional image rows' probabilities of the kept text tokens (and stores or replays them).

It knows families only through :class:`daamlib.dit.registry.Family`'s fields.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..attention import _OUTER, kept_probabilities, output_and_lse, user_sdpa
from ..attention import SDPA as _SDPA  # noqa: F401  torch's own, for benchmarks
from ..attention import float_mask as _float_mask
from ..trace import TraceError, check_store_dtype, planned_evaluations
from ..words import Alignment
from .registry import Family
from .tokens import _text_length, align_prompts


# -- the kernel with LSE ----------------------------------------------------------------------------------
_LOCAL = threading.local()
_PATCH_LOCK = threading.Lock()
_patched = 0
_BACKENDS: dict = {}  # diffusers' attention backends as registered, while wrapped (see _wrap_backend)


def _tapped_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    tap = getattr(_LOCAL, "tap", None)
    if tap is None or dropout_p or is_causal or enable_gqa:
        return user_sdpa()(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                           scale=scale, enable_gqa=enable_gqa)
    return tap.attend(query, key, value, attn_mask, scale)


_tapped_sdpa._daam_tap = True  # attention.user_sdpa looks through it to the function it replaced


def _wrap_backend(fn):
    """A diffusers attention backend (``[B, L, H, D]`` inputs) that, inside a tapped module, records beside the
    backend's own output when the backend computed it without SDPA (flash-attn, sage, flex, xformers, ...): the
    output is the backend's, the probabilities are computed from the same queries and keys."""

    def backend(query, key, value, attn_mask=None, scale=None, **kwargs):
        tap = getattr(_LOCAL, "tap", None)
        before = None if tap is None else tap.calls
        out = fn(query=query, key=key, value=value, attn_mask=attn_mask, scale=scale, **kwargs)
        if (tap is None or tap.calls != before or kwargs.get("is_causal") or kwargs.get("dropout_p")
                or kwargs.get("return_lse") or not torch.is_tensor(out)):
            return out  # recorded through the SDPA tap already (native backends), or not an attention to record
        t = (lambda x: x.transpose(1, 2))
        tap.attend(t(query), t(key), t(value), attn_mask, scale, out=t(out))
        return out

    backend._daam_wraps = fn
    return backend


def _registry():
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    except ImportError:  # an older diffusers: processors call SDPA directly
        return None
    return _AttentionBackendRegistry


def _patch_kernel(on: bool) -> None:
    """Install (or, when the last trace ends, remove) the tapped SDPA and the wrapped backends. Whatever
    ``F.scaled_dot_product_attention`` was before (the user's patch included) is what it is again afterwards, and
    what computes every output meanwhile."""
    global _patched
    with _PATCH_LOCK:
        registry = _registry()
        if on:
            _patched += 1
            if _patched == 1:
                _OUTER.append(F.scaled_dot_product_attention)
                F.scaled_dot_product_attention = _tapped_sdpa
                if registry is not None:
                    _BACKENDS.update(registry._backends)
                    registry._backends.update({name: _wrap_backend(fn) for name, fn in _BACKENDS.items()})
        else:
            _patched -= 1
            if _patched == 0:
                F.scaled_dot_product_attention = _OUTER.pop()
                if registry is not None:
                    registry._backends.update(_BACKENDS)
                    _BACKENDS.clear()


# -- recording ---------------------------------------------------------------------------------------------
@dataclass
class DitGeneration:
    prompts: list[str | None]
    alignments: list[Alignment | None]
    cond: torch.Tensor | None  # encode_prompt's conditional text states, one row per image
    columns: list[int] | None = None  # kept positions in the transformer's text input
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    timesteps: list[float] = field(default_factory=list)
    grid: tuple[int, int] | None = None
    expected_steps: int | None = None  # denoiser evaluations the scheduler planned (its timesteps)
    order: int = 1  # evaluations per sampler step (the scheduler's order: 2 for Heun)
    guidance_calls: int = 0  # calls with the prompt's text made for guidance only, not recorded
    reference_grid: tuple[int, int] | None = None  # Kontext: the reference image's token grid
    reference_maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # layer -> per step [images, h, w]
    concept_maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # ConceptAttention, cross-attention
    concept_output_maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # ... and output space


class _DitRecorder:
    def __init__(self, pipe, family: Family, encoder: str, keep_heads: bool, store_device, store_dtype=None,
                 store=None, replay=None):
        self.pipe, self.family, self.encoder = pipe, family, encoder
        self.store, self.replay = store, replay  # daamlib.replay.AttentionStore to fill / to inject
        self.keep_heads = keep_heads
        self.store_device = None if store_device is None else torch.device(store_device)
        self.store_dtype = check_store_dtype(store_dtype)
        self.generations: list[DitGeneration] = []
        self.current: DitGeneration | None = None
        self.rows: list[tuple[int, int]] | None = None  # (batch row, image) of the conditional rows in this call
        self.n_img = self.n_txt = self.n_ref = 0
        self.columns_t: torch.Tensor | None = None
        self.cross_concepts: list = []  # PixArt, Sana: daamlib.concepts.Concept in the transformer's text space
        self.cross_keys: dict[str, list[torch.Tensor]] = {}  # layer -> per concept [heads, n_c, d]
        self._latents: list[torch.Tensor] | None = None  # the last recorded call's conditional latents

    # encode_prompt: words and the conditional text states
    def on_encode(self, args: dict, result) -> None:
        g = self.current
        if g is not None and not g.timesteps and g.cond is not None:
            return  # the negative prompt's own call (Flux / Qwen true CFG)
        prompt = args.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else [None]
        cond = result[0] if isinstance(result, tuple) else result
        if isinstance(cond, list) and cond and all(torch.is_tensor(c) for c in cond):  # Z-Image: one tensor per prompt
            cond = [c.detach() for c in cond]
        elif torch.is_tensor(cond):
            cond = cond.detach()
        else:
            cond = None
        self.current = DitGeneration(prompts, [], cond)
        self.generations.append(self.current)
        columns, self.current.alignments = align_prompts(self.pipe, self.family.streams, self.encoder, prompts, cond,
                                                         args)
        if columns is not None:
            self.current.columns = columns

    # the transformer's forward: which rows are conditional, the grid, the step
    def on_transformer_call(self, args, kwargs) -> None:
        g = self.current
        if self.family.unified:  # Z-Image: forward(x: list, t, cap_feats: list, ...)
            ctx = kwargs.get("cap_feats", args[2] if len(args) > 2 else None)
            hidden = args[0] if args else kwargs.get("x")
        else:
            ctx = kwargs.get("encoder_hidden_states")
            hidden = args[0] if args else kwargs.get("hidden_states")
        if g is None or ctx is None or hidden is None:
            self.rows = None
            return
        self.rows = self._match_rows(ctx, g.cond)
        if not self.rows:
            return  # an unconditional call (true CFG's negative branch): not recorded
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        t = t.flatten()[0].item() if torch.is_tensor(t) else float(t if t is not None else len(g.timesteps))
        latents = [hidden[b].detach() for b, _ in self.rows]
        if kwargs.get("skip_layers") is not None or (g.timesteps and t == g.timesteps[-1] and self._latents is not None
                                                      and len(latents) == len(self._latents)
                                                      and all(torch.equal(a, b) for a, b in zip(latents, self._latents))):
            # a call for guidance only: SD3's skip-layer guidance (skip_layers), or true CFG's negative branch with
            # the prompt's own text (the same timestep, latents and text as the step's recorded call)
            g.guidance_calls += 1
            self.rows = None
            return
        self._latents = [x.clone() for x in latents]
        self.n_txt = _text_length(ctx)
        grid = self._grid(hidden, kwargs)
        self.n_img = grid[0] * grid[1]
        self.n_ref = 0
        if self.family.reference and not isinstance(hidden, list) and hidden.ndim == 3:
            self.n_ref = hidden.shape[1] - self.n_img  # [generated, reference] image tokens
            if self.n_ref:
                g.reference_grid = self._grid(hidden, kwargs, reference=True)
        if isinstance(hidden, list):
            hidden = hidden[0]
        g.grid = grid
        if g.columns is None:
            g.columns = list(range(self.n_txt))
        self.columns_t = torch.tensor(g.columns, device=hidden.device, dtype=torch.long)
        scheduler = getattr(self.pipe, "scheduler", None)
        if not g.timesteps and scheduler is not None:  # (Flux passes timestep / 1000: the begin index decides)
            g.expected_steps, g.order = planned_evaluations(scheduler)
        g.timesteps.append(t)

    @staticmethod
    def _match_rows(ctx, cond) -> list[tuple[int, int]]:
        """(batch row, image) of the rows whose text input is one of ``encode_prompt``'s conditional outputs
        (tensors ``[B, L, D]``, or lists of ``[L_i, D]`` for Z-Image)."""
        if cond is None:
            return [(b, b) for b in range(len(ctx))]
        if isinstance(cond, list) or isinstance(ctx, list):
            ref = [c.to(ctx[0].device, ctx[0].dtype) for c in cond]
        else:
            ref = cond.to(ctx.device, ctx.dtype)
            if ref.shape[1:] != ctx.shape[1:]:
                return []
        used, rows = set(), []
        for b in range(len(ctx)):
            j = next((j for j in range(len(ref)) if j not in used and ref[j].shape == ctx[b].shape
                      and torch.equal(ref[j], ctx[b])), None)
            if j is not None:
                used.add(j)
                rows.append((b, j))
        return rows

    def _grid(self, hidden, kwargs, reference: bool = False) -> tuple[int, int]:
        """The generated image's token grid (``reference``: the reference image's, Kontext)."""
        cfg = self.pipe.transformer.config
        if isinstance(hidden, list):  # Z-Image: [C, frames, H, W] latents per image, patchified inside
            p = int(kwargs.get("patch_size", 2))
            return hidden[0].shape[-2] // p, hidden[0].shape[-1] // p
        if hidden.ndim == 4:  # [B, C, H, W] latents, patchified inside (SD3, PixArt)
            p = cfg.patch_size
            return hidden.shape[-2] // p, hidden.shape[-1] // p
        shapes = kwargs.get("img_shapes")
        if shapes:  # Qwen-Image: [(frames, h, w)] per image; Qwen-Image-Edit: [generated, reference] per image
            first = shapes[0][int(reference)] if isinstance(shapes[0], list) else shapes[0]
            return int(first[-2]), int(first[-1])
        ids = kwargs.get("img_ids")
        if ids is not None:  # Flux: (0, row, column) per token; Kontext's reference tokens: (1, row, column)
            ids = ids.reshape(-1, ids.shape[-1])[: hidden.shape[1]]
            if self.family.reference:
                ids = ids[ids[:, 0] == (1 if reference else 0)]
            return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
        raise TraceError(f"cannot find the image grid of {type(self.pipe.transformer).__name__}'s input")

    # one attention call of a wrapped module
    def attend(self, tap: _Tap, q, k, v, mask, scale, out=None):
        """One attention call ``[B, H, L, D]`` inside ``tap``'s module: its output (``out`` when another backend
        computed it already), with the conditional image rows' probabilities of the kept text tokens recorded."""
        tap.calls += 1
        rows = self.rows
        Lq, Lk = q.shape[-2], k.shape[-2]
        n_img, n_txt, n_ref = self.n_img, self.n_txt, self.n_ref
        if out is None:
            def passthrough():
                return user_sdpa()(q, k, v, attn_mask=mask, scale=scale)
        else:
            def passthrough():
                return out
        if not rows or self.current is None:
            return passthrough()
        u = self.family.unified
        if u and Lq == Lk and tap.single:  # Z-Image's main blocks: per image [image, text], parts padded to u
            img, txt0, kind = slice(0, n_img), n_img + (-n_img) % u, "single"
        elif u:
            return passthrough()
        elif Lk == n_img + n_ref + n_txt and Lq == Lk:  # joint attention: one softmax over text and image
            img = slice(n_txt, n_txt + n_img) if self.family.text_first else slice(0, n_img)
            txt0 = 0 if self.family.text_first else n_img
            kind = "single" if tap.single else "joint"
        elif tap.cross and Lk == n_txt and Lq == n_img:
            img, txt0, kind = slice(0, n_img), 0, "cross"
        else:  # image self-attention (SD3.5's second attention, PixArt's attn1), IP-adapter tokens, ...
            return passthrough()
        tap.kind = kind
        batch_rows = [r for r, _ in rows]
        out, lse = output_and_lse(q, k, v, mask, scale, batch_rows, img, len(self.columns_t), out)
        b = torch.tensor(batch_rows, device=q.device)
        s = scale if scale is not None else q.shape[-1] ** -0.5
        cols = self.columns_t + txt0

        def key_mask(keys):  # the mask's rows of the conditional image queries, at ``keys``; key-major
            if mask is None:  # index only the mask's own axes (it broadcasts): never expand it to [B, H, L, L]
                return None
            m = _float_mask(mask, torch.float32)
            m = m.index_select(0, b) if m.ndim == 4 and m.shape[0] > 1 else m
            m = m[..., img, :] if m.ndim >= 2 and m.shape[-2] > 1 else m
            return m.index_select(-1, keys).transpose(-1, -2)  # as kept_probabilities wants it

        # [Bc, H, K, N]: the conditional image rows are read in place, only the kept keys are gathered
        p = kept_probabilities(q[:, :, img], k.index_select(2, cols), lse, s, batch_rows, key_mask(cols))
        if n_ref and kind in ("joint", "single"):  # [text, generated, reference]: the reference keys follow
            keys = torch.arange(n_txt + n_img, Lk, device=q.device)
            self._keep_reference(tap.name, q[:, :, img], k[:, :, n_txt + n_img:], lse, s, batch_rows, rows,
                                 key_mask(keys))
        if self.store is not None or self.replay is not None:
            p = self._store_or_replay(tap.name, p.transpose(-1, -2), out, v, b, img, cols).transpose(-1, -2)
        if kind == "cross" and self.cross_concepts:
            self._keep_cross_concepts(tap, q[:, :, img], s, batch_rows, rows)
        if not self.keep_heads:
            p = p.sum(1)  # [Bc, K, N]
        h, w = self.current.grid
        p = p.reshape(*p.shape[:-1], h, w)  # [Bc, (H,) K, h, w]
        order = torch.tensor([j for _, j in rows], device=p.device)
        p = p[torch.argsort(order)]
        if self.store_dtype is not None:
            p = p.to(self.store_dtype)
        if self.store_device is not None:
            p = p.to(self.store_device, non_blocking=True)
        self.current.maps.setdefault(tap.name, []).append(p)
        return out


    def _keep_cross_concepts(self, tap, q, scale, batch_rows, rows) -> None:
        """OVAM's concept maps on a cross-attention transformer (:mod:`daamlib.concepts`): the conditional image
        queries against each concept's keys through this layer's own ``to_k``, softmax over the concept's keys."""
        from ..concepts import concept_keys, concept_probabilities

        if tap.name not in self.cross_keys:
            self.cross_keys[tap.name] = concept_keys(tap.module, self.cross_concepts, q.shape[1], q.shape[-1])
        b = torch.tensor(batch_rows, device=q.device)
        p = concept_probabilities(q.index_select(0, b), self.cross_keys[tap.name],
                                  [c.rows for c in self.cross_concepts], scale)  # [Bc, C, N]
        h, w = self.current.grid
        p = p.reshape(*p.shape[:-1], h, w)[torch.argsort(torch.tensor([j for _, j in rows]))]
        if self.store_device is not None:
            p = p.to(self.store_device, non_blocking=True)
        self.current.concept_maps.setdefault(tap.name, []).append(p)

    def _keep_reference(self, name: str, q, k_ref, lse, scale, batch_rows, rows, m=None) -> None:
        """Kontext, Qwen-Image-Edit: the generated tokens' mean attention to each reference token (over the generated
        queries, summed over heads), on the reference's grid; computed in blocks of reference keys, never image ×
        image at once. ``m``: the mask at the reference keys, key-major (None: unmasked)."""
        H, N, R = q.shape[1], q.shape[2], k_ref.shape[2]
        chunk = max(1, min(R, 2**22 // max(1, H * N)))
        total = torch.empty(len(batch_rows), R, dtype=torch.float32, device=q.device)
        for a in range(0, R, chunk):
            part = kept_probabilities(q, k_ref[:, :, a:a + chunk], lse, scale, batch_rows,
                                      None if m is None else m[..., a:a + chunk, :])  # [Bc, H, chunk, N]
            total[:, a:a + chunk] = part.sum(dim=(1, 3)) / N
        h, w = self.current.reference_grid
        order = torch.tensor([j for _, j in rows], device=total.device)
        m = total.reshape(len(batch_rows), h, w)[torch.argsort(order)]
        if self.store_device is not None:
            m = m.to(self.store_device, non_blocking=True)
        self.current.reference_maps.setdefault(name, []).append(m)

    def _store_or_replay(self, name: str, p, out, v, b, img, cols):
        """Keep ``p`` (``[conditional rows, heads, image tokens, kept text tokens]``) in the store, or put the
        stored one in its place: the image rows' output is rebuilt from the seed's image→text probabilities and
        the variant's own image→rest ones, rescaled to the mass the seed left over (each row still sums to 1)."""
        step = len(self.current.timesteps) - 1
        if self.store is not None:
            self.store.put(step, name, p)
            self.store.n_tokens = p.shape[-1]
        if self.replay is None or not self.replay.covers(step):
            return p
        self.replay.check_tokens(p.shape[-1])
        seed = self.replay.get(step, name, p)
        vt = v.index_select(2, cols).index_select(0, b).float()  # [Bc, H, K, D]
        o = out[:, :, img].index_select(0, b).float()  # [Bc, H, N, D]
        out[:, :, img].index_copy_(0, b, replayed_output(o, p, seed, vt).to(out.dtype))  # in place, the kernel's output
        return seed


def replayed_output(out: torch.Tensor, own: torch.Tensor, seed: torch.Tensor, v_txt: torch.Tensor) -> torch.Tensor:
    """Attention output of image queries whose probabilities over the kept text keys are replaced.

    ``out`` [..., N, D] is the model's own output, ``own`` / ``seed`` [..., N, K] its own and the seed's
    probabilities over the K kept text keys, ``v_txt`` [..., K, D] their values. The row becomes the seed's
    mass on those keys and the model's own distribution over every other key, scaled to the mass left
    (``1 − Σ seed``), so it still sums to 1: prompt-to-prompt's cross-attention injection, for joint attention.
    """
    free = 1 - own.sum(-1, keepdim=True)  # the model's own mass on every other key (image tokens, unkept text)
    left = 1 - seed.sum(-1, keepdim=True)
    rest = torch.where(free > 1e-6, (out - own @ v_txt) * (left / free.clamp_min(1e-6)), torch.zeros_like(out))
    return rest + seed @ v_txt


class _Tap:
    """Wraps one attention module's processor: while it runs, the attention kernel reports to the recorder."""

    def __init__(self, recorder: _DitRecorder, inner, name: str, single: bool, cross: bool):
        self.recorder, self.inner, self.name = recorder, inner, name
        self.single, self.cross = single, cross
        self.calls = 0
        self.kind: str | None = None

    def attend(self, q, k, v, mask, scale, out=None):
        _LOCAL.tap = None  # a kernel call inside the recording itself goes straight through
        try:
            return self.recorder.attend(self, q, k, v, mask, scale, out)
        finally:
            _LOCAL.tap = self

    def __call__(self, attn, *args, **kwargs):
        self.calls = 0
        self.module = attn  # its projections, for concepts scored at this layer
        outer = getattr(_LOCAL, "tap", None)
        _LOCAL.tap = self
        try:
            out = self.inner(attn, *args, **kwargs)
        finally:
            _LOCAL.tap = outer
        if self.calls == 0 and self.recorder.rows:
            raise TraceError(
                f"{self.name}: the attention ran without torch's scaled_dot_product_attention or a diffusers attention "
                "backend (a processor that multiplies queries and keys itself, or a compiled model), so there are no "
                "queries and keys to record from; use a processor that calls diffusers' dispatch_attention_fn or SDPA "
                "while tracing")
        return out


def _tap_class(inner) -> type:
    """A subclass of _Tap whose ``__call__`` has the wrapped processor's signature (diffusers filters the
    keyword arguments it passes by that signature)."""
    import inspect

    sig = inspect.signature(type(inner).__call__)

    def __call__(self, attn, *args, **kwargs):
        return _Tap.__call__(self, attn, *args, **kwargs)

    __call__.__signature__ = sig
    return type(f"Traced{type(inner).__name__}", (_Tap,), {"__call__": __call__})
