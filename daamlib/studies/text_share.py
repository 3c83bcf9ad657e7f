"""Where a joint-attention transformer's image tokens look (issue 25): in SD3's joint softmax an image query attends
to the image and to the text at once, so a word's map is a share of a budget that the image mostly keeps for itself.

>>> shares = text_shares(pipe, "a red circle above a blue square", seed=0)       # doctest: +SKIP
>>> summarize_shares(shares)                                                     # doctest: +SKIP

For every joint block and denoising step, the conditional image queries' mean attention mass (softmax over every
key, heads averaged, image queries averaged) on four groups of keys:

* ``image``: the image tokens;
* ``prompt tokens``: the prompt's CLIP tokens, start to end (what word maps are made of);
* ``CLIP padding``: CLIP's padding after the end token;
* ``after CLIP``: T5's tokens, or, where the pipeline has no T5 (``shapeworld-mmdit``), the zero rows SD3 appends
  in their place (``max_sequence_length`` of them, identical rows that can soak up attention).

Computed from each block's own projections (``to_q``/``to_k``, the added key projection, their norms) on the
block's inputs, captured by forward hooks on the attention modules; the image is generated untraced and unchanged.
"""

from __future__ import annotations

import torch

GROUPS = ("image", "prompt tokens", "CLIP padding", "after CLIP")


def _joint_blocks(transformer):
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None or not all(hasattr(b, "attn") and getattr(b.attn, "add_k_proj", None) is not None
                                 for b in blocks):
        raise ValueError(f"text_shares measures SD3-style joint attention (StableDiffusion3Pipeline: image and text "
                         f"keys in one softmax); {type(transformer).__name__} has no such blocks")
    return blocks


def text_shares(pipe, prompt: str, seed: int = 0, steps: int | None = None, guidance: float | None = None):
    """One row per joint block and step: the mean attention mass of the conditional image queries on each of
    :data:`GROUPS` (they sum to 1). ``steps`` / ``guidance``: the model's own where None."""
    import pandas as pd

    from ..pipeline import model_defaults

    if type(pipe).__name__ != "StableDiffusion3Pipeline":
        raise ValueError(f"text_shares measures StableDiffusion3Pipeline's joint attention, not {type(pipe).__name__}")
    blocks = _joint_blocks(pipe.transformer)
    d = model_defaults(pipe)
    steps = steps or d.steps
    guidance = d.guidance if guidance is None else guidance
    clip_len = pipe.tokenizer_max_length
    n_prompt = min(len(pipe.tokenizer(prompt)["input_ids"]), clip_len)  # start, tokens, end
    after = "T5 tokens" if getattr(pipe, "text_encoder_3", None) is not None else "zero rows (no T5)"
    rows, step = [], {"i": -1}

    def on_call(module, args, kwargs):
        step["i"] += 1

    def on_attn(index):
        def hook(attn, args, kwargs, out):
            x, c = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
            cond = slice(x.shape[0] // 2, None) if guidance > 1 else slice(None)  # SD3: [negative, prompt]
            x, c = x[cond].float(), c[cond].float()
            H = attn.heads

            def heads(f, norm, y):
                y = f(y).unflatten(-1, (H, -1))
                return norm(y) if norm is not None else y

            q = heads(attn.to_q, attn.norm_q, x)  # [B, N, H, d]
            k = torch.cat([heads(attn.to_k, attn.norm_k, x), heads(attn.add_k_proj, attn.norm_added_k, c)], 1)
            p = torch.einsum("bnhd,bkhd->bhnk", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)  # [B, H, N, N + T]
            mass = p.mean(dim=(0, 1, 2))  # per key
            n = x.shape[1]
            groups = {"image": mass[:n], "prompt tokens": mass[n:n + n_prompt],
                      "CLIP padding": mass[n + n_prompt:n + clip_len], "after CLIP": mass[n + clip_len:]}
            rows.append({"block": index, "step": step["i"], **{g: float(v.sum()) for g, v in groups.items()},
                         "after CLIP is": after, "keys after CLIP": int(mass.shape[0] - n - clip_len)})
        return hook

    handles = [pipe.transformer.register_forward_pre_hook(on_call, with_kwargs=True)]
    handles += [b.attn.register_forward_hook(on_attn(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, output_type="latent", height=d.height,
                 width=d.width, generator=torch.Generator(device="cpu").manual_seed(seed))
    finally:
        for h in handles:
            h.remove()
    return pd.DataFrame(rows)


def summarize_shares(shares):
    """Per block, each group's share averaged over steps (and prompts, where rows of several are stacked)."""
    return shares.groupby("block")[list(GROUPS)].mean().reset_index()
