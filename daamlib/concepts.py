"""Maps of concepts that are not words of the prompt (UNets), after OVAM (open-vocabulary attention maps): each
concept is encoded on its own by the pipeline's text encoder(s) (``<start> concept <end>``, as the pipeline encodes a
prompt), its states go through every cross-attention layer's key projection, and the image's queries of the
generation (conditional rows) are scored against those keys. The generation never sees them: its attention and
image are unchanged.

Normalisation: a softmax over the concept's own keys, its start token included: ``softmax(q·K_cᵀ/√d)`` over
``[<start>, concept tokens, <end>]``. The start token takes most of the mass wherever the concept does not fit
(as it does for a prompt's words), so an absent concept can come out absent. Never over the concepts together,
which would force every pixel to pick one. A concept's map at a layer is the mean of its tokens' probabilities,
summed over heads; over layers and steps it is summed like a word's map (Eq. 6: each layer upsampled bicubically to
the image, clamped at 0 once).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .words import Alignment, Word


class ConceptError(ValueError):
    """Concepts that cannot be mapped (empty, not text, too long for the text encoder); the message says why."""


@dataclass
class Concept:
    text: str
    states: torch.Tensor  # [n, D]: the encoder states of <start>, its tokens, <end>
    rows: list[int]  # positions of the concept's own tokens in ``states`` (not <start>, <end>)


def check_concepts(concepts) -> list[str]:
    """A list of distinct, non-empty concept strings, or a :class:`ConceptError` naming the problem."""
    if concepts is None:
        return []
    if isinstance(concepts, str):
        raise ConceptError(f"concepts must be a list of strings, e.g. ['circle', 'grass']; got the string "
                           f"{concepts!r} (split it yourself if it holds several)")
    out = []
    for c in concepts:
        if not isinstance(c, str) or not c.strip():
            raise ConceptError(f"each concept must be a non-empty string, got {c!r}")
        if c.strip() in out:
            raise ConceptError(f"the concept {c.strip()!r} is given twice")
        out.append(c.strip())
    return out


def encode_concepts(pipe, concepts: list[str]) -> list[Concept]:
    """Each concept through the pipeline's own ``encode_prompt`` (alone, no guidance): the states its UNet's
    cross-attention would see for it as a prompt, cut after its end token."""
    tok = pipe.tokenizer
    device = getattr(pipe, "_execution_device", None) or pipe.device
    out = []
    for c in concepts:
        ids = tok(c, truncation=False)["input_ids"]
        if len(ids) > tok.model_max_length:
            raise ConceptError(f"the concept {c[:40]!r} takes {len(ids)} tokens; the text encoder takes "
                               f"{tok.model_max_length}: shorten it")
        with torch.no_grad():
            states = pipe.encode_prompt(prompt=c, device=device, num_images_per_prompt=1,
                                        do_classifier_free_guidance=False)[0][0]
        out.append(Concept(c, states[: len(ids)], list(range(1, len(ids) - 1))))
    return out


def concept_alignment(concepts: list[str]) -> Alignment:
    """An :class:`Alignment` whose words are the concepts, one token row each (their maps' rows), so that a
    :class:`~daamlib.heatmap.HeatMaps` of concepts works as one of words: ``hm.concepts["grass"].heat``."""
    text = " | ".join(concepts)
    words, at = [], 0
    for i, c in enumerate(concepts):
        words.append(Word(c, i, 0, (at, at + len(c)), (i,), False))
        at += len(c) + 3
    return Alignment(text, tuple(concepts), tuple(words), len(concepts))


def concept_keys(attn, concepts: list[Concept], heads: int, head_dim: int) -> list[torch.Tensor]:
    """Each concept's keys at one cross-attention layer, ``[heads, n_c, d]``: its states through the layer's own
    ``to_k`` (after its cross norm, where it has one), then its key norm, as the layer makes the prompt's keys."""
    keys = []
    for c in concepts:
        states = c.states.to(attn.to_k.weight.device, attn.to_k.weight.dtype)[None]
        if getattr(attn, "norm_cross", None):
            states = attn.norm_encoder_hidden_states(states)
        k = attn.to_k(states).view(1, -1, heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k)
        keys.append(k[0])
    return keys


def concept_probabilities(q: torch.Tensor, keys: list[torch.Tensor], rows: list[list[int]], scale: float
                          ) -> torch.Tensor:
    """``[B, C, N]``: per concept, the mean over its tokens of ``softmax(q·K_cᵀ·scale)`` over its own keys (start
    token included), summed over heads. ``q``: ``[B, H, N, d]``; ``keys[c]``: ``[H, n_c, d]``."""
    out = []
    for k, r in zip(keys, rows):
        logits = torch.einsum("bhnd,hkd->bhkn", q.float(), k.float()) * scale  # [B, H, n_c, N]
        p = logits.softmax(dim=2)[:, :, r].mean(2)  # [B, H, N]
        out.append(p.sum(1))
    return torch.stack(out, 1)
