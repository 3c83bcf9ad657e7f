"""The look of the statistical figures, set in one place: a seaborn theme and how intervals are drawn.

>>> with theme():                                     # doctest: +SKIP
...     sns.barplot(data=rows, x="pos", y="mass", errorbar=ERRORBAR, seed=SEED, ax=ax)

Statistical figures (bars, points, lines over items) are drawn with seaborn from item-level rows, so
every interval is computed from the items themselves: the 95% t interval of the mean that the verdicts use
(:func:`daamlib.studies.paper.interval`; deterministic, so figures are byte-identical run to run). A figure's
interval treats every item as its own unit; the paper-vs-here tables resample the independent units (prompts,
templates), so theirs can be wider. Heat-map overlays stay plain matplotlib (:func:`daamlib.heatmap.draw_overlay`).
Categories with fewer than :data:`FEW` items (the verdicts' minimum) are marked ``†`` and drawn without an interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager

THEME = {"style": "whitegrid", "context": "notebook", "font_scale": 0.8, "palette": "colorblind"}
N_BOOT = 2000
SEED = 0  # bootstrap seed, for any figure that still asks seaborn for a bootstrap
FEW = 10  # fewer items than this: the category is marked, not trusted (paper.FEW: no verdict below it)


def t_interval(values, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """The 95% t interval of the mean of ``values`` (seaborn's ``errorbar`` callable), clipped to ``bounds``;
    none (NaN: seaborn draws nothing) for fewer than :data:`FEW` values, where it would cover far less than 95%."""
    import numpy as np

    from .paper import interval

    if np.count_nonzero(~np.isnan(np.asarray(values, dtype=float))) < FEW:
        return float("nan"), float("nan")
    return tuple(interval(values, bounds=bounds)[1:3])


ERRORBAR = t_interval


@contextmanager
def theme():
    """Draw inside the project's seaborn theme, without changing pyplot's global state afterwards."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    with plt.rc_context(), sns.axes_style(THEME["style"]), \
            sns.plotting_context(THEME["context"], font_scale=THEME["font_scale"]), sns.color_palette(THEME["palette"]):
        yield


def ci_kwargs(bounds: tuple[float, float] | None = None) -> dict:
    """Keyword arguments every seaborn call here takes: the interval, clipped to the values' possible range
    ``bounds`` (e.g. ``(0, 100)`` for an accuracy in %), and a seed for seaborn's own bootstrap."""
    from functools import partial

    return {"errorbar": partial(t_interval, bounds=bounds) if bounds else ERRORBAR, "n_boot": N_BOOT, "seed": SEED}


def with_n(label: str, n: int) -> str:
    """A category label with its item count, marked ``†`` when there are fewer than :data:`FEW` items."""
    return f"{label}\nn={n}" + ("†" if n < FEW else "")


def label_counts(ax, counts: Mapping[str, int], axis: str = "x") -> None:
    """Rewrite the categorical tick labels of ``ax`` as :func:`with_n` labels (order as drawn)."""
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    labels = [with_n(t.get_text(), int(counts.get(t.get_text(), 0))) for t in ticks]
    positions = ax.get_xticks() if axis == "x" else ax.get_yticks()
    (ax.set_xticks if axis == "x" else ax.set_yticks)(positions, labels)


def few_note(counts: Mapping[str, int]) -> str:
    """A caption line for the categories marked ``†`` (empty when there are none)."""
    few = [k for k, n in counts.items() if n < FEW]
    return f"† fewer than {FEW} items: {', '.join(map(str, few))} (read as anecdotes; no interval drawn)" if few else ""


def name_model(display, model: str = ""):
    """Head ``display``'s figure title with the model that made the data (``model: title``; a title is made when
    there is none) and return the display, so that every study figure says which model it shows."""
    if model:
        fig = display.figure_
        old = fig.get_suptitle()
        fig.suptitle(f"{model}: {old}" if old else f"model: {model}", fontsize=8)
    return display
