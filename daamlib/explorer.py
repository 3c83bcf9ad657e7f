"""An interactive heat-map explorer for Jupyter (ipywidgets), working on a finished trace.

>>> from daamlib.explorer import Explorer     # doctest: +SKIP
>>> Explorer(heat_maps).widget                # display it in a notebook   # doctest: +SKIP

Choose a word, move τ, restrict time steps and layer resolutions, switch between the soft
map (with the Eq. 7 mask at τ outlined in white, and a colour scale) and the mask itself: the
overlay is recomputed from the recorded maps (post-hoc selection), never by generating again. The state is plain attributes, so tests drive the
widgets by setting their ``value`` and read ``explorer.heat`` / ``explorer.mask``.
"""

from __future__ import annotations

import torch

from .heatmap import PANELS_WITH_COLORBAR, HeatMaps, overlay_png


class Explorer:
    """Widgets around one :class:`HeatMaps`: word, τ, step range, resolutions, view."""

    def __init__(self, heat_maps: HeatMaps, word: str | None = None, threshold: float = 0.4, mode: str = "minmax"):
        import ipywidgets as w

        self.heat_maps = heat_maps
        words = [(f"{x.text} #{x.index}", (x.text, x.occurrence)) for x in heat_maps.alignment.words if not x.truncated]
        if not words:
            raise ValueError("the heat maps have no words to explore")
        start = next((v for label, v in words if word is not None and v[0].lower() == word.lower()), words[0][1])
        n_steps = len(heat_maps.steps)
        res_labels = [f"{h}×{w_}" for h, w_ in heat_maps.resolutions]
        self.word = w.Dropdown(options=words, value=start, description="word")
        self.threshold = w.FloatSlider(value=threshold, min=0.0, max=1.0, step=0.05, description="τ")
        self.steps = w.IntRangeSlider(value=(0, n_steps - 1), min=0, max=max(n_steps - 1, 0), description="steps")
        self.resolutions = w.SelectMultiple(options=list(zip(res_labels, heat_maps.resolutions)),
                                            value=tuple(heat_maps.resolutions), description="layers", rows=4)
        self.view = w.ToggleButtons(options=["heat map", "mask"], value="heat map", description="show")
        self.mode = w.ToggleButtons(options=["minmax", "max"], value=mode, description="Eq. 7")
        self.status = w.HTML()
        self.image = w.Image(format="png")
        self.widget = w.VBox([w.HBox([self.word, self.view, self.mode]),
                              w.HBox([self.threshold, self.steps]), self.resolutions, self.image, self.status])
        self._cache: dict = {}
        for control in (self.word, self.threshold, self.steps, self.resolutions, self.view, self.mode):
            control.observe(lambda _change: self.update(), names="value")
        self.update()

    def selection(self) -> HeatMaps:
        """The heat maps restricted to the chosen steps and resolutions (cached per choice)."""
        lo, hi = self.steps.value
        key = (lo, hi, tuple(self.resolutions.value))
        if key not in self._cache:
            self._cache[key] = self.heat_maps.select(steps=range(lo, hi + 1), resolutions=list(self.resolutions.value))
        return self._cache[key]

    def update(self) -> None:
        """Recompute the overlay from the widgets' current values."""
        if not self.resolutions.value:
            self.status.value = "<b>choose at least one layer resolution</b>"
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
        self.status.value = (f"{text!r}: steps {lo}–{hi}, {len(self.resolutions.value)} resolution(s), "
                             f"mask covers {100 * self.mask.float().mean():.1f}% of the image")

    def _render(self, shown: torch.Tensor, outline: torch.Tensor | None = None) -> bytes:
        h, w = shown.shape[-2:]
        side = 3.2  # inches (at 100 dpi) on the image's longer side; the colour bar is added to the width
        size = (side * min(1.0, w / h) / PANELS_WITH_COLORBAR, side * min(1.0, h / w))
        self.image.width = round(100 * size[0])  # shown at its own size, not stretched to the page
        return overlay_png([(self.heat_maps.image, shown, outline)], size=size, colorbar=True)
