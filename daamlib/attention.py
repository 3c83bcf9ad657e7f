"""Attention with its log-sum-exp: the model's own output from a fused kernel, and LSE to recover probabilities.

``attention_with_lse(q, k, v)`` returns SDPA's output and, per query, ``LSE = log Σ_keys exp(q·k·scale + mask)``,
from which any probability is ``exp(q·k_j·scale + mask_j − LSE)``: the recorders compute it for the kept text
tokens only (:func:`kept_probabilities`), so the full ``[queries, keys]`` matrix is never materialised.
Where a fused kernel returns LSE (CPU: ``aten._scaled_dot_product_flash_attention_for_cpu``, the kernel SDPA itself runs there, so the output is
bit-identical; CUDA: the memory-efficient kernel with ``compute_log_sumexp``) it is used, after a one-time check
per device and dtype that its LSE matches an explicit one on a few queries; otherwise SDPA plus a chunked pass.

The recorders ask :func:`output_and_lse` instead: the output computed the way the user set attention up, and LSE for
the recorded rows and queries only. Where that way is torch's own SDPA running the fused kernel above, one call
gives both; where the user patched ``F.scaled_dot_product_attention``, restricted SDPA's kernels
(``torch.nn.attention.sdpa_kernel``, diffusers' ``_native_math`` backend), chose another backend, or a mask keeps the
CUDA kernel from returning LSE, the user's kernel computes the output and LSE is computed beside it
(:func:`lse_beside`), in blocks of queries no larger than the kept probabilities themselves: memory ∝ image × text.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

SDPA = F.scaled_dot_product_attention  # the original, whatever a trace swaps in
_OUTER: list = []  # while a transformer trace patches F.scaled_dot_product_attention: what it replaced (the user's)
_CHECKED: dict[tuple, bool] = {}  # (device type, dtype) -> the fused kernel's LSE checked good


def float_mask(mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    """An SDPA mask as an additive float mask (a boolean mask's False → −inf)."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _explicit_lse(q, k, fmask, scale, chunk: int = 1024) -> torch.Tensor:
    s = scale if scale is not None else q.shape[-1] ** -0.5
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    kt = k.float().transpose(-1, -2) * s
    for a in range(0, q.shape[-2], chunk):
        scores = q[..., a:a + chunk, :].float() @ kt
        if fmask is not None:
            scores = scores + (fmask[..., a:a + chunk, :] if fmask.shape[-2] > 1 else fmask).float()
        lse[..., a:a + chunk] = scores.logsumexp(-1)
    return lse


def _fused(q, k, v, fmask, scale):
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        # the overload itself, not the packet: 4 µs less per call to resolve
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(q, k, v, 0.0, False,
                                                                                  attn_mask=fmask, scale=scale)
    if q.device.type == "cuda" and fmask is None:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False,
                                                                          scale=scale)[:2]
        return out, lse[..., : q.shape[-2]]
    return None


def attention_with_lse(q, k, v, mask=None, scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(SDPA output, LSE over keys)`` for ``[B, H, L, D]`` inputs (LSE ``[B, H, L]``, float32)."""
    fused = _fused_checked(q, k, v, mask, scale)
    if fused is not None:
        return fused[0], fused[1].float()
    return SDPA(q, k, v, attn_mask=mask, scale=scale), _explicit_lse(q, k, float_mask(mask, q.dtype), scale)


def _fused_checked(q, k, v, mask, scale):
    """The fused kernel's ``(output, LSE)``, or None where there is none or its LSE failed the one-time check."""
    fmask = float_mask(mask, q.dtype)
    key = (q.device.type, q.dtype, fmask is None)
    if _CHECKED.get(key, True):
        try:
            fused = _fused(q, k, v, fmask, scale)
        except RuntimeError:
            fused = None
        if fused is not None:
            out, lse = fused
            if key not in _CHECKED:  # once: the kernel's LSE must be the natural log-sum-exp of these scores
                n = min(8, q.shape[-2])
                ref = _explicit_lse(q[..., :n, :], k, None if fmask is None else fmask[..., :n, :]
                                    if fmask.shape[-2] > 1 else fmask, scale)
                ok = torch.allclose(lse[..., :n].float(), ref, rtol=1e-2, atol=1e-2)
                _CHECKED[key] = ok
                if not ok:
                    warnings.warn(f"the fused attention kernel's log-sum-exp on {q.device.type} ({q.dtype}) does not "
                                  "match an explicit one; recording falls back to SDPA plus an explicit pass (slower, "
                                  "same maps)", stacklevel=3)
            if _CHECKED[key]:
                return out, lse
    return None


def user_sdpa():
    """The SDPA function the user's code would call now: ``F.scaled_dot_product_attention``, or, while a transformer
    trace has patched it, what that patch replaced."""
    f = F.scaled_dot_product_attention
    return _OUTER[-1] if _OUTER and getattr(f, "_daam_tap", False) else f


def user_kernel(q) -> object | None:
    """None when the user's attention for ``q`` is torch's own SDPA free to run the fused kernel
    :func:`attention_with_lse` uses (so its output is the model's own); otherwise the function that computes it
    (a patched SDPA, or SDPA with its kernels restricted)."""
    f = user_sdpa()
    if f is not SDPA:
        return f
    if q.device.type == "cpu":
        return None if torch.backends.cuda.flash_sdp_enabled() else SDPA  # SDPA's CPU choice: flash, else math
    if q.device.type == "cuda":
        return None if torch.backends.cuda.mem_efficient_sdp_enabled() else SDPA
    return None


def lse_beside(q, k, mask, scale, rows, queries=slice(None), kept: int = 0, chunk: int | None = None) -> torch.Tensor:
    """Log-sum-exp over every key of the batch ``rows``' ``queries`` (a slice), ``[len(rows), H, Nq]`` float32,
    computed explicitly in blocks of ``chunk`` queries, by default as many as keep a block's scores no larger than
    the kept probabilities ``[H, kept, Nq]`` (or 16 MiB, whichever is larger): memory ∝ image × text. ``mask``: an
    SDPA mask of the whole batch (it broadcasts)."""
    s = scale if scale is not None else q.shape[-1] ** -0.5
    fmask = float_mask(mask, torch.float32)
    if fmask is not None and fmask.ndim == 2:  # diffusers' [B, keys] padding mask
        fmask = fmask[:, None, None, :]
    H, L = q.shape[1], k.shape[-2]
    qs = q[:, :, queries]
    Nq = qs.shape[-2]
    chunk = chunk or max(1, min(Nq, max(H * kept * Nq, 2**22) // max(1, H * L)))
    lse = torch.empty(len(rows), H, Nq, dtype=torch.float32, device=q.device)
    work = torch.empty(H * min(chunk, Nq) * L, dtype=torch.float32, device=q.device)  # one block's scores, reused
    for i, r in enumerate(rows):
        kt = k[r].float().transpose(-1, -2)  # [H, D, L]: a view when the keys are float32
        m = None
        if fmask is not None:
            m = fmask[r if fmask.shape[0] > 1 else 0]
            if m.shape[-2] > 1:
                m = m[..., queries, :]
        for a in range(0, Nq, chunk):
            n = min(chunk, Nq - a)
            scores = work[: H * n * L].view(H, n, L)
            torch.matmul(qs[r, :, a:a + n].float() * s, kt, out=scores)
            if m is not None:
                scores += m[..., a:a + n, :] if m.shape[-2] > 1 else m
            top = scores.amax(-1, keepdim=True)
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a row with every key masked
            lse[i, :, a:a + n] = scores.sub_(top).exp_().sum(-1).log_() + top.squeeze(-1)
    return lse


def output_and_lse(q, k, v, mask=None, scale=None, rows=None, queries=slice(None), kept: int = 0,
                   out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention output of the whole batch, computed as the user's attention computes it, and LSE of the batch
    ``rows``' ``queries`` only (``[len(rows), H, Nq]``). ``out``: the output already computed by the user's
    attention (another backend): only LSE is computed, beside it."""
    rows = list(range(q.shape[0])) if rows is None else list(rows)
    if out is None:
        kernel = user_kernel(q)
        if kernel is None:
            fused = _fused_checked(q, k, v, mask, scale)
            if fused is not None:
                o, lse = fused
                index = torch.tensor(rows, device=lse.device)
                return o, lse.index_select(0, index)[:, :, queries].float()
            kernel = SDPA
        out = kernel(q, k, v, attn_mask=mask, scale=scale)
    return out, lse_beside(q, k, mask, scale, rows, queries, kept)


def kept_probabilities(q, k, lse, scale: float, rows=None, mask=None, out=None) -> torch.Tensor:
    """``exp(k_j·q·scale + mask − LSE)``: the attention probabilities of the kept keys ``k`` ``[B, H, K, D]``
    from queries ``q`` ``[B, H, N, D]`` with their log-sum-exp over *every* key ``lse`` ``[len(rows), H, N]`` (one
    per row of ``rows``, in that order), for the batch ``rows`` (all by default). Returns ``[rows, H, K, N]`` float32, key-major: each kept token's row of
    queries is its map, in the layout maps are stored in, so no transpose follows.

    One ``baddbmm`` per row computes ``scale·k·qᵀ − LSE`` into the output, then ``exp_`` in place. The key-major
    ``K × N`` product is also the faster one: on SD 2-base's largest layer (5 heads × 1,024 queries, 15 kept
    tokens, one CPU thread) 0.16 ms against 0.38 ms for the query-major ``N × K`` product. ``q`` and ``k`` may
    be strided views (heads split off the hidden axis): the GEMM reads them in place. ``mask`` (additive, float)
    must already be key-major: it broadcasts to ``[rows, H, K, N]``. ``out``: a float32 buffer of that shape to
    write into (see :func:`probabilities`).
    """
    rows = range(q.shape[0]) if rows is None else rows
    B, H, N, K = len(rows), q.shape[1], q.shape[2], k.shape[2]
    out = torch.empty(B, H, K, N, dtype=torch.float32, device=q.device) if out is None else out
    for i, r in enumerate(rows):
        torch.baddbmm(lse[i].float().unsqueeze(-2), k[r].float(), q[r].float().transpose(-1, -2), beta=-1,
                      alpha=scale, out=out[i])
    if mask is not None:
        out += mask
    return out.exp_()


def probabilities(q, k, scale: float, rows=None, mask=None, out=None) -> torch.Tensor:
    """``softmax(q·kᵀ·scale + mask)`` over every key, explicitly, for the batch ``rows`` (all by default):
    ``[rows, H, N, T]`` float32 from ``[B, H, N, D]`` queries and ``[B, H, T, D]`` keys (strided views are read
    in place). ``mask`` is an SDPA mask of the whole batch, ``[B, H|1, N|1, T]``, boolean or additive.

    ``out``: a float32 buffer of that shape, reused from call to call. On a CPU a fresh megabyte-sized tensor
    often costs page faults (the allocator returns large blocks to the system): at SD 2-base's largest layer
    the median call took 2.2 ms with a reused buffer against 3.2 ms with fresh ones (fastest calls equal).
    """
    rows = range(q.shape[0]) if rows is None else rows
    B, H, N, T = len(rows), q.shape[1], q.shape[2], k.shape[2]
    scores = torch.empty(B, H, N, T, dtype=torch.float32, device=q.device) if out is None else out
    fmask = float_mask(mask, torch.float32)
    for i, r in enumerate(rows):
        kt = (k[r].float() * scale).transpose(-1, -2)  # the scale on the small operand: no pass over the scores
        if fmask is None:
            torch.bmm(q[r].float(), kt, out=scores[i])
        else:
            torch.baddbmm(fmask[r if fmask.shape[0] > 1 else 0], q[r].float(), kt, out=scores[i])
    return torch.softmax(scores, -1, out=scores)
