"""Result objects: the heat maps of one generated image, and of one word.

>>> hm = tc.heat_maps(0, image=out.images[0])        # doctest: +SKIP
>>> hm.words                                          # doctest: +SKIP
['a', 'red', 'circle', 'above', 'a', 'blue', 'square']
>>> hm["circle"].binarize(0.4)                        # Eq. 7, [H, W] bool   # doctest: +SKIP
>>> hm["a", 1]                                        # second "a"           # doctest: +SKIP
>>> hm.select(steps=range(0, 10), resolutions=[8])    # post-hoc, no regeneration  # doctest: +SKIP
>>> hm["circle"].plot(ax=ax)                          # doctest: +SKIP
>>> hm.word_at(2), list(hm.keys())[:3], hm.to("cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from . import kernel
from .words import Alignment, Word, WordNotFoundError


def _as_image_array(image) -> np.ndarray | None:
    """PIL image, ``[H, W, 3]`` array in [0, 1] or [0, 255], or ``[3, H, W]`` tensor → uint8 ``[H, W, 3]``."""
    if image is None:
        return None
    if torch.is_tensor(image):
        image = image.detach().cpu().float()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * 255 if arr.max() <= 1.0 else arr, 0, 255).round().astype(np.uint8)
    return arr


def draw_overlay(ax, image: np.ndarray | None, shown=None, cmap: str = "jet", alpha: float = 0.5, outline=None):
    """The one overlay renderer (word plots, the explorer, the rating widget): ``shown`` (an ``[H, W]`` map
    already in [0, 1], or None for the image alone) over ``image`` (uint8 ``[H, W, 3]``, or None; shown in grey
    under a map, so that the map's colours never mix with red or blue objects), and
    ``outline`` (an ``[H, W]`` bool mask, e.g. Eq. 7 at τ) drawn as a white contour. Returns the map's
    ``AxesImage`` (for a colour bar), or None."""
    def numpy(x):
        return x.detach().cpu().numpy() if torch.is_tensor(x) else x

    shown, drawn = numpy(shown), None
    if image is not None:
        if shown is not None and image.ndim == 3:  # the map over a grey image: readable on red and blue objects
            ax.imshow(image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32),
                      cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image)
        if shown is not None:
            drawn = ax.imshow(shown, cmap=cmap, alpha=alpha, vmin=0, vmax=1,
                              extent=(-0.5, shown.shape[1] - 0.5, shown.shape[0] - 0.5, -0.5))
    elif shown is not None:
        drawn = ax.imshow(shown, cmap=cmap, vmin=0, vmax=1)
    if outline is not None:
        m = numpy(outline).astype(float)
        if 0 < m.sum() < m.size:  # an empty or full mask has no edge to draw
            ax.contour(m, levels=[0.5], colors="white", linewidths=1.2)
    ax.set_axis_off()
    return drawn


SCALE_NOTE = "maps: each word's map min–max normalised, jet scale (blue 0 → red 1) over the image in grey"
PANELS_WITH_COLORBAR = 0.82  # share of an overlay PNG's width its panels take when a colour bar is drawn


def overlay_png(panels: list[tuple], size: tuple[float, float] = (3.2, 3.2), cmap: str = "jet", alpha: float = 0.5,
                colorbar: bool = False) -> bytes:
    """PNG bytes of :func:`draw_overlay` panels side by side (``[(image, shown[, outline]), ...]``), drawn without
    pyplot, so widgets redraw without touching global figure state. ``colorbar`` adds the map's scale (0 = least,
    1 = most attention of this map) at the right."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    n = len(panels)
    width = PANELS_WITH_COLORBAR if colorbar else 1.0
    drawn = None
    for i, (image, shown, *outline) in enumerate(panels):
        ax = fig.add_axes((width * i / n, 0, width / n, 1))
        drawn = draw_overlay(ax, image, shown, cmap, alpha if image is not None else 1.0,
                             outline[0] if outline else None) or drawn
    if colorbar and drawn is not None:
        cax = fig.add_axes((PANELS_WITH_COLORBAR + 0.03, 0.1, 0.035, 0.8))  # labels fit in what is left
        fig.colorbar(drawn, cax=cax, ticks=[0, 0.5, 1]).ax.tick_params(labelsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


STREAM_TYPES = ("double", "single", "cross")


def stream_type(layer: str) -> str:
    """A recorded layer's kind from its name: ``"single"`` (Flux's single-stream blocks), ``"cross"``
    (cross-attention: every UNet layer, PixArt's ``attn2``) or ``"double"`` (double-stream blocks — SD3's, Flux's,
    Qwen-Image's: text and image tokens with their own weights, in one softmax)."""
    if "single" in layer:
        return "single"
    if ".attn2." in layer or "attentions." in layer:
        return "cross"
    return "double"


class HeatMapsDisplay:
    """A figure of several heat maps, as scikit-learn's Display objects: ``figure_`` and ``ax_`` (the axes)."""

    def __init__(self, heat_maps: HeatMaps, words: list[WordHeatMap]):
        self.heat_maps, self.words = heat_maps, words

    def plot(self, threshold: float | None = None, mode: str = "minmax", ncols: int | None = None, fig=None,
             **kwargs) -> HeatMapsDisplay:
        """A grid: the image, then one overlay per word (a new figure unless ``fig`` is given)."""
        import matplotlib.pyplot as plt

        hm, items = self.heat_maps, self.words
        n = max(1, len(items) + (hm.image is not None))  # an empty prompt without its image: one empty panel
        ncols = ncols or min(n, 6)
        nrows = -(-n // ncols)
        if fig is None:
            fig = plt.figure(figsize=(2.2 * ncols, 2.5 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        k = 0
        if hm.image is not None:
            axes[0].imshow(hm.image)
            axes[0].set_title("image")
            k = 1
        for ax, item in zip(axes[k:], items):
            item.plot(ax=ax, threshold=threshold, mode=mode, **kwargs)
        for ax in axes:
            ax.set_axis_off()
        overlays = [ax.images[-1] for ax in axes[k:] if ax.images]  # each word's map (drawn last on its axis)
        if threshold is None and overlays:
            fig.colorbar(overlays[-1], ax=list(axes), shrink=0.6, ticks=[0, 0.5, 1], label="map (min–max)")
        if not items:  # the start and end tokens are not words: nothing to overlay
            axes[-1].text(0.5, 0.5, "no words to map:\nthe prompt is empty", ha="center", va="center",
                          transform=axes[-1].transAxes, fontsize=8)
        title = hm.prompt if hm.prompt.strip() else "(empty prompt)"
        fig.suptitle(title + (f"  (τ = {threshold})" if threshold is not None else ""), fontsize=9)
        self.ax_, self.figure_ = axes, fig
        return self


class WordHeatMap:
    """The soft map of one word at image size, with Eq. 7 and an overlay plot.

    Attributes: ``word`` (a :class:`Word`), ``heat`` (``[H, W]`` float32 tensor), ``image``
    (uint8 ``[H, W, 3]`` or None), ``prompt``.
    """

    def __init__(self, word: Word, heat: torch.Tensor, image: np.ndarray | None, prompt: str):
        self.word = word
        self.heat = heat
        self.image = image
        self.prompt = prompt
        self._normalized: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"WordHeatMap({self.word.text!r}, {tuple(self.heat.shape)}, max={self.heat.max().item():.4g})"

    def normalized(self, mode: str = "minmax") -> torch.Tensor:
        """The map rescaled to [0, 1] (``"minmax"``: by its range; ``"max"``: by its maximum). Cached."""
        if mode not in self._normalized:
            self._normalized[mode] = kernel.normalize(self.heat, mode)
        return self._normalized[mode]

    def binarize(self, threshold: float = 0.4, mode: str = "minmax") -> torch.Tensor:
        """Eq. 7 at ``τ = threshold``: ``mode="max"`` thresholds ``D ≥ τ·max D`` as printed in the paper;
        ``mode="minmax"`` (default) thresholds the min–max-normalised map, as the paper's released code does.
        A τ sweep normalises once (the normalised map is cached)."""
        return kernel.binarize_normalized(self.normalized(mode), threshold)

    def plot(self, ax=None, threshold: float | None = None, mode: str = "minmax", cmap: str = "jet",
             alpha: float = 0.5, title: str | bool = True, colorbar: bool = False):
        """Overlay the (normalised) map on the image, or, with ``threshold``, show the image inside its Eq. 7 mask.

        Draws on ``ax`` (a new figure only when None); ``colorbar`` adds the map's scale beside it; sets
        ``ax_`` and ``figure_``; returns ``self``.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(3, 3))
        if threshold is not None:  # Fig. 2 E: the image inside the mask, dimmed outside
            mask = self.binarize(threshold, mode).numpy()
            if self.image is not None and self.image.shape[:2] == mask.shape:
                ax.imshow((self.image * (0.2 + 0.8 * mask[..., None])).astype(np.uint8))
            else:
                ax.imshow(mask, cmap="gray", vmin=0, vmax=1)
        else:
            drawn = draw_overlay(ax, self.image, self.normalized(mode), cmap, alpha)
            if colorbar:
                ax.figure.colorbar(drawn, ax=ax, fraction=0.046, pad=0.04, ticks=[0, 0.5, 1])
        ax.set_axis_off()
        if title:
            ax.set_title(title if isinstance(title, str) else self.word.text)
        self.ax_, self.figure_ = ax, ax.figure
        return self


def sampler_steps(evaluations: int, order: int = 1, expected: int | None = None) -> int:
    """Sampler steps that ``evaluations`` denoiser calls complete, for a scheduler of this ``order`` (evaluations per
    step). A second-order scheduler (Heun) runs ``2n − 1`` evaluations for ``n`` steps, its last step being first-order
    only: a finished run (``evaluations == expected``, or ``expected`` unknown) counts ⌈evaluations / order⌉, an
    interrupted one only its whole steps, ⌊evaluations / order⌋."""
    if order <= 1:
        return evaluations
    finished = expected is None or evaluations >= expected
    return -(-evaluations // order) if finished else evaluations // order


class HeatMaps:
    """All heat maps of one generated image, indexable by word, ``(word, occurrence)`` or token position.

    ``maps`` holds, per layer (diffusers' dotted processor path), the recorded maps
    ``[steps, tokens, h, w]`` (or ``[steps, heads, tokens, h, w]`` when heads were kept) at the
    layer's own resolution. ``size`` is the image size (H, W) that Eq. 6 upsamples to.
    Aggregation is computed once, on first use, and cached.
    """

    def __init__(self, alignment: Alignment, maps: dict[str, torch.Tensor], size: tuple[int, int],
                 image=None, timesteps: list[float] | None = None, steps: list[int] | None = None):
        self.alignment = alignment
        self.maps = maps
        self.size = tuple(size)
        self.image = _as_image_array(image)
        n_steps = next(iter(maps.values())).shape[0] if maps else 0
        self.steps = list(range(n_steps)) if steps is None else list(steps)  # original step indices kept
        self.timesteps = list(timesteps) if timesteps is not None else []
        self.steps_expected: int | None = None  # the sampler steps the generation planned, when the trace knew them
        self.evaluations_expected: int | None = None  # the denoiser evaluations it planned (order × steps, about)
        self.order = 1  # denoiser evaluations per sampler step (2 for Heun's scheduler; each is recorded)
        self.reference: torch.Tensor | None = None  # Kontext, Qwen-Image-Edit: where the edit looked, [H, W] of the input
        self.edit_input: np.ndarray | None = None  # an edit's input image, RGB uint8 as given (img2img, inpainting, ...)
        self.edit_mask: np.ndarray | None = None  # inpainting's mask as the pipeline used it, bool [H, W] (True: repainted)
        self.concepts: HeatMaps | None = None  # trace(concepts=[...]): one "word" per concept (daamlib.concepts)
        self.concept_outputs: HeatMaps | None = None  # Flux.1: ConceptAttention's output-space maps
        self._token_maps: torch.Tensor | None = None

    # -- description -------------------------------------------------------------------------
    @property
    def prompt(self) -> str:
        return self.alignment.prompt

    @property
    def words(self) -> list[str]:
        return [w.text for w in self.alignment.words if not w.truncated]

    @property
    def tokens(self) -> list[str]:
        return list(self.alignment.tokens)

    @property
    def steps_completed(self) -> int:
        """Sampler steps whose maps were recorded (fewer than :attr:`steps_expected` when interrupted). With a
        second-order scheduler (Heun) each step evaluates the denoiser twice (the last step once) and both
        evaluations are recorded, each with its timestep: :attr:`steps` and :attr:`timesteps` list evaluations."""
        return sampler_steps(len(self.steps), self.order, self.evaluations_expected)

    @property
    def layers(self) -> list[str]:
        return list(self.maps)

    @property
    def heads_kept(self) -> bool:
        return bool(self.maps) and next(iter(self.maps.values())).ndim == 5

    def resolution(self, layer: str) -> tuple[int, int]:
        """The (h, w) query grid of ``layer``."""
        return tuple(self.maps[layer].shape[-2:])

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """Distinct layer resolutions, finest first."""
        return sorted({self.resolution(n) for n in self.maps}, key=lambda r: -r[0] * r[1])

    def __repr__(self) -> str:
        return (f"HeatMaps({self.prompt!r}, {len(self.words)} words, {len(self.steps)} steps, "
                f"{len(self.maps)} layers, size={self.size})")

    # -- Eq. 6 ------------------------------------------------------------------------------
    def token_maps(self) -> torch.Tensor:
        """Eq. 6 for every kept token: ``[tokens, H, W]`` float32 (cached)."""
        if self._token_maps is None:
            self._token_maps = kernel.aggregate(self.maps.values(), self.size)
        return self._token_maps

    def word(self, word: str, occurrence: int | None = None) -> WordHeatMap:
        """The map of ``word`` (mean of its tokens' maps); ``occurrence`` picks among repeats."""
        return self._map_of(self.alignment.find(word, occurrence))

    def _map_of(self, w: Word) -> WordHeatMap:
        """The mean of ``w``'s tokens' maps."""
        if self._token_maps is not None:
            return WordHeatMap(w, kernel.word_map(self._token_maps, w.tokens), self.image, self.prompt)
        # one word: upsample only its own tokens, not all of them (same result as the cached path)
        idx = list(w.tokens)
        own = kernel.aggregate([m[..., idx, :, :] for m in self.maps.values()], self.size)
        return WordHeatMap(w, own.mean(0), self.image, self.prompt)

    def word_at(self, index: int) -> WordHeatMap:
        """The map of the word at word position ``index`` (0 is the prompt's first word)."""
        by_index = {w.index: w for w in self.alignment.words}
        if index not in by_index:
            raise IndexError(f"the prompt {self.prompt!r} has no word {index} ({len(by_index)} words)")
        w = by_index[index]
        if w.truncated:
            raise WordNotFoundError(f"word {index} ({w.text!r}) was cut off: the text encoder never saw it")
        return self._map_of(w)

    def has_word(self, index: int) -> bool:
        """True when word position ``index`` exists and was seen by the text encoder (not truncated)."""
        return any(w.index == index and not w.truncated for w in self.alignment.words)

    def keys(self) -> list[str | tuple[str, int]]:
        """Every word's key, in prompt order: its text, or ``(text, occurrence)`` for a repeated word."""
        words = [w for w in self.alignment.words if not w.truncated]
        count: dict[str, int] = {}
        for w in words:
            count[w.text.lower()] = count.get(w.text.lower(), 0) + 1
        return [(w.text, w.occurrence) if count[w.text.lower()] > 1 else w.text for w in words]

    def items(self) -> list[tuple[str | tuple[str, int], WordHeatMap]]:
        """``(key, map)`` for every word, in prompt order (``self[key]`` is the same map)."""
        return list(zip(self.keys(), self))

    def to(self, device: str | torch.device) -> HeatMaps:
        """A copy with the recorded maps on ``device`` (e.g. ``"cpu"`` after tracing on a GPU)."""
        out = HeatMaps(self.alignment, {k: v.to(device) for k, v in self.maps.items()}, self.size, None,
                       self.timesteps or None, self.steps)
        out.steps_expected, out.evaluations_expected = self.steps_expected, self.evaluations_expected
        out.concepts = None if self.concepts is None else self.concepts.to(device)
        out.concept_outputs = None if self.concept_outputs is None else self.concept_outputs.to(device)
        return self._carry(out, reference=None if self.reference is None else self.reference.to(device))

    def _carry(self, out: HeatMaps, reference=None) -> HeatMaps:
        """``out`` with this generation's image and edit inputs; ``reference`` only where it still holds (it sums
        every block and step, so a selection of some drops it)."""
        out.image, out.order = self.image, self.order
        out.edit_input, out.edit_mask, out.reference = self.edit_input, self.edit_mask, reference
        return out

    def phrase(self, indices: Iterable[int]) -> WordHeatMap:
        """The map of several words taken as one (e.g. the noun "hot dog"), by word position: the mean
        of all their tokens' maps, as for a word of several tokens."""
        idx = sorted(set(int(i) for i in indices))
        by_index = {w.index: w for w in self.alignment.words}
        missing = [i for i in idx if i not in by_index]
        if not idx or missing:
            raise IndexError(f"word positions {missing or idx} are not in {self.prompt!r} ({len(by_index)} words)")
        words = [by_index[i] for i in idx]
        if any(w.truncated for w in words):
            raise WordNotFoundError(f"{' '.join(w.text for w in words)!r} was cut off: the text encoder never saw it")
        tokens = tuple(t for w in words for t in w.tokens)
        span = (words[0].span[0], words[-1].span[1])
        return self._map_of(Word(" ".join(w.text for w in words), idx[0], 0, span, tokens))

    def token(self, position: int) -> WordHeatMap:
        """The map of the token at ``position`` (0 is the start token)."""
        n = len(self.alignment.tokens)
        if not -n <= position < n:
            raise IndexError(f"token position {position} out of range: {n} tokens kept ({self.tokens})")
        position %= n
        w = Word(self.alignment.tokens[position], -1, 0, (0, 0), (position,))
        return WordHeatMap(w, self.token_maps()[position], self.image, self.prompt)

    def __getitem__(self, key) -> WordHeatMap:
        if isinstance(key, tuple):
            return self.word(*key)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return self.token(int(key))
        return self.word(key)

    def __iter__(self) -> Iterator[WordHeatMap]:
        """Every word's map, in prompt order."""
        maps = self.token_maps()
        for w in self.alignment.words:
            if not w.truncated:
                yield WordHeatMap(w, kernel.word_map(maps, w.tokens), self.image, self.prompt)

    def __len__(self) -> int:
        return len(self.words)

    # -- post-hoc selection ----------------------------------------------------------------
    def select(self, steps: Iterable[int] | slice | None = None, layers: Iterable[str] | str | None = None,
               resolutions: Iterable[int | tuple[int, int]] | None = None,
               heads: Iterable[int] | None = None, blocks: Iterable[int] | slice | None = None,
               streams: Iterable[str] | str | None = None) -> HeatMaps:
        """A new :class:`HeatMaps` restricted to some steps, layers, resolutions, heads, blocks or stream types.

        ``steps``: positions in this object's step list (a range, list or slice; 0 is the
        first denoising step). ``layers``: names or shell patterns (``"*up_blocks.1*"``).
        ``resolutions``: grid heights (``8``) or (h, w) pairs. ``heads``: head indices, only
        when recorded with ``keep_heads=True``. ``blocks``: positions in :attr:`layers` (the recorded
        layers in the order they run: a transformer's depth). ``streams``: ``"double"``, ``"single"`` or
        ``"cross"`` (:func:`stream_type`). Nothing is regenerated.
        """
        names = list(self.maps)
        if blocks is not None:
            order = self.layers
            picked = order[blocks] if isinstance(blocks, slice) else [order[i] for i in blocks if -len(order) <= i < len(order)]
            bad = [] if isinstance(blocks, slice) else [i for i in blocks if not -len(order) <= i < len(order)]
            if bad or not picked:
                raise IndexError(f"blocks {bad or blocks} out of range: {len(order)} layers recorded")
            names = [n for n in names if n in picked]
        if streams is not None:
            kinds = [streams] if isinstance(streams, str) else list(streams)
            unknown = sorted(set(kinds) - set(STREAM_TYPES))
            if unknown:
                raise ValueError(f"unknown stream types {unknown}; choose from {STREAM_TYPES}")
            names = [n for n in names if stream_type(n) in kinds]
            if not names:
                raise KeyError(f"no layer of stream type {kinds}; this model's are: "
                               f"{sorted({stream_type(n) for n in self.maps})}")
        if layers is not None:
            patterns = [layers] if isinstance(layers, str) else list(layers)
            names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
            if not names:
                raise KeyError(f"no layer matches {patterns}; layers are: {list(self.maps)}")
        if resolutions is not None:
            wanted = list(resolutions)
            names = [n for n in names
                     if any(r == self.resolution(n) or r == self.resolution(n)[0] for r in wanted)]
            if not names:
                raise KeyError(f"no layer has resolution {wanted}; resolutions are: {self.resolutions}")
        idx = list(range(len(self.steps)))
        if steps is not None:
            idx = idx[steps] if isinstance(steps, slice) else list(steps)
            bad = [i for i in idx if not 0 <= i < len(self.steps)]
            if bad or not idx:
                raise IndexError(f"steps {bad or idx} out of range: {len(self.steps)} steps recorded")
        maps = {}
        for n in names:
            m = self.maps[n][idx]
            if heads is not None:
                if m.ndim != 5:
                    raise ValueError("heads were summed while recording; trace with keep_heads=True to select heads")
                m = m[:, list(heads)]
            maps[n] = m
        timesteps = [self.timesteps[i] for i in idx] if self.timesteps else None
        out = HeatMaps(self.alignment, maps, self.size, None, timesteps, [self.steps[i] for i in idx])
        self._carry(out)
        for attr in ("concepts", "concept_outputs"):  # the same steps and layers of the concepts' maps
            c = getattr(self, attr)
            if c is not None and heads is None and any(n in c.maps for n in names):
                setattr(out, attr, c.select(steps=idx, layers=[n for n in names if n in c.maps]))
        return out

    # -- plotting ---------------------------------------------------------------------------
    def plot(self, words: Iterable[str] | None = None, threshold: float | None = None, mode: str = "minmax",
             ncols: int | None = None, fig=None, **kwargs) -> HeatMapsDisplay:
        """A grid: the image, then one overlay per word (or the Eq. 7 masks at ``threshold``).
        Returns a :class:`HeatMapsDisplay` (``.figure_``, ``.ax_``); a new figure unless ``fig`` is given."""
        items = list(self) if words is None else [self[w] for w in words]
        return HeatMapsDisplay(self, items).plot(threshold=threshold, mode=mode, ncols=ncols, fig=fig, **kwargs)
