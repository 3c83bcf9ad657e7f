"""The fused kernel's log-sum-exp and the kept probabilities computed from it, against an explicit softmax."""

import pytest
import torch

from daamlib.attention import attention_with_lse, float_mask, kept_probabilities, probabilities


def heads_split(B, L, H, D, gen):
    """``[B, H, L, D]`` as the processors make it: a strided view of ``[B, L, H·D]``."""
    return torch.randn(B, L, H * D, generator=gen).view(B, L, H, D).transpose(1, 2)


@pytest.mark.parametrize("mask_kind", [None, "float", "bool"])
def test_kept_probabilities_equal_an_explicit_softmax_over_every_key(mask_kind):
    gen = torch.Generator().manual_seed(0)
    B, H, N, T, D, K = 3, 4, 36, 20, 8, 7
    q, k, v = heads_split(B, N, H, D, gen), heads_split(B, T, H, D, gen), heads_split(B, T, H, D, gen)
    mask = None
    if mask_kind == "float":  # broadcast over heads and queries, as diffusers' padding masks are
        mask = torch.where(torch.rand(B, 1, 1, T, generator=gen) < 0.3, -1e4, 0.0)
    elif mask_kind == "bool":
        mask = torch.rand(B, 1, 1, T, generator=gen) > 0.3
        mask[..., 0] = True  # every row attends to something
    scale = D ** -0.5
    out, lse = attention_with_lse(q, k, v, mask)
    scores = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + float_mask(mask, torch.float32)
    full = scores.softmax(-1)  # [B, H, N, T]
    torch.testing.assert_close(out, full @ v, rtol=1e-5, atol=1e-5)

    torch.testing.assert_close(probabilities(q, k, scale, mask=mask), full, rtol=1e-5, atol=1e-6)
    rows = [2, 0]
    torch.testing.assert_close(probabilities(q, k, scale, rows, mask), full[rows], rtol=1e-5, atol=1e-6)
    kept_mask = None if mask is None else float_mask(mask, torch.float32)[rows][..., :K].transpose(-1, -2)
    p = kept_probabilities(q, k[:, :, :K], lse[rows], scale, rows, kept_mask)
    assert p.shape == (2, H, K, N) and p.dtype == torch.float32 and p.is_contiguous()
    torch.testing.assert_close(p, full[rows][..., :K].transpose(-1, -2), rtol=1e-5, atol=1e-6)
    # all rows by default
    torch.testing.assert_close(kept_probabilities(q, k[:, :, :K], lse, scale, mask=None if mask is None else
                                                  float_mask(mask, torch.float32)[..., :K].transpose(-1, -2)),
                               full[..., :K].transpose(-1, -2), rtol=1e-5, atol=1e-6)


def test_kept_probabilities_of_half_precision_inputs_are_computed_in_float32():
    gen = torch.Generator().manual_seed(1)
    q, k = heads_split(1, 16, 2, 8, gen), heads_split(1, 5, 2, 8, gen)
    lse = ((q @ k.transpose(-1, -2)) * 8 ** -0.5).logsumexp(-1)
    p = kept_probabilities(q.bfloat16(), k.bfloat16(), lse, 8 ** -0.5)
    assert p.dtype == torch.float32
    torch.testing.assert_close(p.sum(2), torch.ones(1, 2, 16), rtol=0.05, atol=0.05)  # every key kept: rows sum to 1


@pytest.mark.parametrize("mask_kind", [None, "bool2d", "float4d"])
def test_lse_beside_equals_the_full_lse_of_the_chosen_rows_and_queries(mask_kind):
    """LSE computed beside another kernel's output, block by block, for some rows and a slice of queries only."""
    from daamlib.attention import lse_beside

    gen = torch.Generator().manual_seed(2)
    B, H, L, D = 3, 2, 40, 8
    q, k = heads_split(B, L, H, D, gen), heads_split(B, L, H, D, gen)
    mask = None
    if mask_kind == "bool2d":  # diffusers' [B, keys] padding mask
        mask = torch.rand(B, L, generator=gen) > 0.3
        mask[:, 0] = True
    elif mask_kind == "float4d":
        mask = torch.where(torch.rand(B, 1, L, L, generator=gen) < 0.3, -1e4, 0.0)
    full_mask = None if mask is None else float_mask(mask if mask.ndim == 4 else mask[:, None, None, :], torch.float32)
    scores = (q @ k.transpose(-1, -2)) * D ** -0.5 + (0 if full_mask is None else full_mask)
    lse = scores.logsumexp(-1)  # [B, H, L]
    rows, queries = [2, 1], slice(10, 33)
    for chunk in (None, 1, 7):
        got = lse_beside(q, k, mask, None, rows, queries, kept=5, chunk=chunk)
        torch.testing.assert_close(got, lse[rows][:, :, queries], rtol=1e-5, atol=1e-5)


def test_output_and_lse_without_a_fused_lse_computes_only_the_recorded_rows(monkeypatch):
    """Where no fused kernel returns LSE (CUDA with a mask: Chroma, Z-Image with CFG), the output is SDPA's and LSE is
    computed for the recorded rows and queries only."""
    import daamlib.attention as A

    gen = torch.Generator().manual_seed(3)
    q, k, v = heads_split(2, 24, 2, 8, gen), heads_split(2, 24, 2, 8, gen), heads_split(2, 24, 2, 8, gen)
    mask = torch.ones(2, 1, 1, 24, dtype=torch.bool)
    mask[0, ..., -5:] = False
    monkeypatch.setattr(A, "_fused", lambda *a: None)  # as on CUDA with a mask
    out, lse = A.output_and_lse(q, k, v, mask, None, rows=[1], queries=slice(0, 16), kept=3)
    torch.testing.assert_close(out, A.SDPA(q, k, v, attn_mask=mask))
    full = ((q @ k.transpose(-1, -2)) * 8 ** -0.5 + float_mask(mask, torch.float32)).logsumexp(-1)
    assert lse.shape == (1, 2, 16)
    torch.testing.assert_close(lse, full[[1]][:, :, :16], rtol=1e-5, atol=1e-5)
