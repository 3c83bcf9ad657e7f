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
    p = kept_probabilities(q, k[:, :, :K], lse, scale, rows, kept_mask)
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
