"""Attention replay: hold a generation's layout fixed while one word of the prompt changes.

As in prompt-to-prompt (Hertz et al., 2022), which the paper uses for §5.2: generate a seed
prompt while keeping its full cross-attention probabilities, then generate a variant prompt
(one adjective swapped) with the seed's probabilities injected in place of the variant's own.
The variant's *values* (what each token says) flow through the seed's *attention* (where
each token acts), so objects stay where they were and only what the changed word carries
can change. Everything stays in memory.

>>> store = AttentionStore()                                                  # doctest: +SKIP
>>> with trace(pipe, store=store) as tc:                                      # doctest: +SKIP
...     seed_image = pipe("a red circle on grass", generator=g(0)).images[0]
>>> with trace(pipe, replay=store) as tc2:                                    # doctest: +SKIP
...     variant = pipe("a blue circle on grass", generator=g(0)).images[0]

Memory: per step and cross-attention layer, ``images × heads × h·w × 77`` values in the
model's dtype (SD 2-base at 512×512: ≈ 55 MB per step in float32). ``device="cpu"`` keeps
them off the accelerator.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ReplayError(RuntimeError):
    """A replay does not match the generation it is injected into."""


def token_count(pipe, prompt: str, encoder: str = "all") -> int:
    """The number of token columns a trace of ``pipe`` keeps for ``prompt``: a replay needs the same number in the
    seed and the variant. From the tokenizer(s) only; nothing runs."""
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
        from .dit import token_count as transformer_count

        return transformer_count(pipe, prompt, encoder)
    from .words import align_words

    return len(align_words(prompt, getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2")).tokens)


def check_same_tokens(pipe, prompts: Iterable[str]) -> None:
    """Refuse, before anything is generated, prompts that cannot be replayed onto each other (different token counts)."""
    counts = {p: token_count(pipe, p) for p in prompts}
    if len(set(counts.values())) > 1:
        raise ReplayError("these prompts would be replayed onto each other but tokenize to different lengths for "
                          f"{type(pipe).__name__}: " + "; ".join(f"{p!r}: {n}" for p, n in counts.items())
                          + ". Choose words of the same token count (a colour that is one token in this tokenizer)")


def model_signature(pipe) -> tuple[str, str]:
    """(denoiser class, first 12 hex digits of its config's SHA-256): what a replay must match."""
    import hashlib
    import json

    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    config = json.dumps(dict(getattr(denoiser, "config", {}) or {}), sort_keys=True, default=str)
    return type(denoiser).__name__, hashlib.sha256(config.encode()).hexdigest()[:12]


class AttentionStore:
    """Full conditional cross-attention probabilities ``[images, heads, queries, keys]`` per (step, layer).

    ``steps`` limits which steps are kept and *replayed* (positions 0, 1, … of the denoising loop; all
    when None): prompt-to-prompt replays the early steps, which fix the layout, and lets the
    last ones refine detail freely.
    """

    def __init__(self, device: str | torch.device | None = None, steps: Iterable[int] | None = None):
        self.device = None if device is None else torch.device(device)
        self.steps = None if steps is None else set(steps)
        self.probs: dict[tuple[int, str], torch.Tensor] = {}
        self.n_tokens: int | None = None  # tokens of the prompt that was recorded (start … end)
        self.model: tuple[str, str] | None = None  # (denoiser class, config digest) of the pipeline that recorded it

    def note_model(self, pipe) -> None:
        """Remember which model records into this store (``trace(pipe, store=...)`` calls it)."""
        self.model = model_signature(pipe)

    def check_model(self, pipe) -> None:
        """Refuse, before anything is generated, to replay onto another model than the one that recorded: its
        layers, heads and grids would not line up, and the errors that follow would blame the prompt or steps."""
        mine = model_signature(pipe)
        if self.model is not None and mine != self.model:
            raise ReplayError(f"this store was recorded with another model ({self.model[0]}, config {self.model[1]}) "
                              f"than this pipeline's ({mine[0]}, config {mine[1]}); replay onto the model that "
                              "recorded it, or record the seed prompt again with this one")

    def __len__(self) -> int:
        return len(self.probs)

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.probs.values())

    def put(self, step: int, layer: str, probs: torch.Tensor) -> None:
        if not self.covers(step):  # never replayed: not kept
            return
        self.probs[step, layer] = probs.detach() if self.device is None else probs.detach().to(self.device)

    def covers(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    def check_tokens(self, n_tokens: int | None) -> None:
        """Token i of the variant receives token i's attention, so both prompts must tokenize to the same length."""
        if self.n_tokens is not None and n_tokens is not None and n_tokens != self.n_tokens:
            raise ReplayError(f"the recorded prompt has {self.n_tokens} tokens and this one {n_tokens}, so their words "
                              "would not line up; swap in a word of the same token count (check tokenizer.tokenize)")

    def get(self, step: int, layer: str, like: torch.Tensor) -> torch.Tensor:
        """The stored probabilities for (step, layer), checked against the shape they replace."""
        try:
            p = self.probs[step, layer]
        except KeyError:
            raise ReplayError(f"nothing recorded for step {step} at {layer}: replay with the same number of "
                              "steps, size and scheduler as the recorded generation") from None
        if p.shape != like.shape:
            raise ReplayError(f"recorded attention {tuple(p.shape)} does not fit this generation's "
                              f"{tuple(like.shape)} at {layer}: use the same image size and number of images")
        return p.to(device=like.device, dtype=like.dtype)
