"""An interactive heat-map explorer for Jupyter (ipywidgets), working on a finished trace.

>>> from daamlib.explorer import Explorer     # doctest: +SKIP
>>> Explorer(heat_maps).widget                # display it in a notebook   # doctest: +SKIP

Choose a word, move τ, restrict time steps and layers (a UNet's by resolution; a transformer's, whose blocks
share one patch grid, block by block, in the order they run), switch between the soft
map (with the Eq. 7 mask at τ outlined in white, and a colour scale) and the mask itself: the
overlay is recomputed from the recorded maps (post-hoc selection), never by generating again. The state is plain attributes, so tests drive the
widgets by setting their ``value`` and read ``explorer.heat`` / ``explorer.mask``.
"""

from __future__ import annotations

import torch

from .heatmap import PANELS_WITH_COLORBAR, HeatMaps, overlay_png


class Explorer:
    """Widgets around one :class:`HeatMaps`: word, τ, step range, layers, view. ``layers`` is ``resolutions``
    (a UNet: several grids) or ``blocks`` (a transformer: one grid, so depth is what tells its layers apart); the
    other of the two is None."""

    def __init__(self, heat_maps: HeatMaps, word: str | None = None, threshold: float = 0.4, mode: str = "minmax"):
        import ipywidgets as w

        self.heat_maps = heat_maps
        words = [(f"{x.text} #{x.index}", (x.text, x.occurrence)) for x in heat_maps.alignment.words if not x.truncated]
        if not words:
            raise ValueError("the heat maps have no words to explore")
        start = next((v for label, v in words if word is not None and v[0].lower() == word.lower()), words[0][1])
        n_steps = len(heat_maps.steps)
        self.word = w.Dropdown(options=words, value=start, description="word")
        self.threshold = w.FloatSlider(value=threshold, min=0.0, max=1.0, step=0.05, description="τ")
        self.steps = w.IntRangeSlider(value=(0, n_steps - 1), min=0, max=max(n_steps - 1, 0), description="steps")
        self.by_block = len(heat_maps.resolutions) == 1 and len(heat_maps.layers) > 1
        if self.by_block:
            n = len(heat_maps.layers)
            self.blocks, self.resolutions = w.SelectMultiple(
                options=[(f"block {i + 1}", i) for i in range(n)], value=tuple(range(n)), description="blocks",
                rows=min(n, 8)), None
        else:
            res_labels = [f"{h}×{w_}" for h, w_ in heat_maps.resolutions]
            self.blocks, self.resolutions = None, w.SelectMultiple(
                options=list(zip(res_labels, heat_maps.resolutions)), value=tuple(heat_maps.resolutions),
                description="layers", rows=4)
        self.layers = self.blocks if self.by_block else self.resolutions
        self.view = w.ToggleButtons(options=["heat map", "mask"], value="heat map", description="show")
        self.mode = w.ToggleButtons(options=["minmax", "max"], value=mode, description="Eq. 7")
        self.status = w.HTML()
        self.image = w.Image(format="png")
        self.widget = w.VBox([w.HBox([self.word, self.view, self.mode]),
                              w.HBox([self.threshold, self.steps]), self.layers, self.image, self.status])
        self._cache: dict = {}
        for control in (self.word, self.threshold, self.steps, self.layers, self.view, self.mode):
            control.observe(lambda _change: self.update(), names="value")
        self.update()

    def selection(self) -> HeatMaps:
        """The heat maps restricted to the chosen steps and layers (cached per choice)."""
        lo, hi = self.steps.value
        key = (lo, hi, tuple(self.layers.value))
        if key not in self._cache:
            chosen = {"blocks" if self.by_block else "resolutions": list(self.layers.value)}
            self._cache[key] = self.heat_maps.select(steps=range(lo, hi + 1), **chosen)
        return self._cache[key]

    def update(self) -> None:
        """Recompute the overlay from the widgets' current values."""
        kind = "block" if self.by_block else "resolution"
        if not self.layers.value:
            self.status.value = f"<b>choose at least one layer {kind}</b>"
            return
        text, occurrence = self.word.value
        wm = self.selection().word(text, occurrence)
        self.heat = wm.heat
        self.mask = wm.binarize(self.threshold.value, self.mode.value)
        if self.view.value == "mask":
            self.image.value = self._render(self.mask.float())
        else:  # the soft map, with the Eq. 7 mask at τ outlined: moving τ moves the outline
            self.image.value = self._render(wm.normalized(self.mode.value), outline=self.mask)
        lo, hi = self.steps.value
        self.status.value = (f"{text!r}: steps {lo}–{hi}, {len(self.layers.value)} {kind}(s), "
                             f"mask covers {100 * self.mask.float().mean():.1f}% of the image")

    def _render(self, shown: torch.Tensor, outline: torch.Tensor | None = None) -> bytes:
        h, w = shown.shape[-2:]
        side = 3.2  # inches (at 100 dpi) on the image's longer side; the colour bar is added to the width
        size = (side * min(1.0, w / h) / PANELS_WITH_COLORBAR, side * min(1.0, h / w))
        self.image.width = round(100 * size[0])  # shown at its own size, not stretched to the page
        return overlay_png([(self.heat_maps.image, shown, outline)], size=size, colorbar=True)
