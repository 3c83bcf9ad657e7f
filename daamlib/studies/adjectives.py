"""§5.2, Fig. 8 and Fig. 9: adjectival entanglement — does a colour word leak into the background?

>>> run = AdjectiveRun(pipe, templates, adjectives, "out/05", truth, mask_source="truth")   # doctest: +SKIP
>>> df, gallery, skipped = run.rows()          # resumable: finished templates are read back   # doctest: +SKIP
>>> plot_background_shift(df, adjectives).figure_                 # doctest: +SKIP

With the layout held fixed by attention replay (``daamlib.replay``), the seed image and a
variant differ only where the swapped adjective acts. Outside the object those changes are
entanglement: the paper shows, e.g., a "blue car" turning the street blue.

The background is the image minus *every* object the ground truth detects in the seed or the
variant (:meth:`GroundTruth.objects`), not only the noun's: a misdrawn object in the adjective's
colour (a blue hexagon for "a blue square") is the adjective acting on an object, not on the
background. The older measure, outside the named object only, is kept in columns ending ``_named``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import rgb_to_hsv

from ..heatmap import SCALE_NOTE, HeatMaps
from ..stats import mass_on_region

MASK_SOURCES = ("truth", "daam")


def _hsv(image) -> np.ndarray:
    return rgb_to_hsv(np.asarray(image, dtype=np.float32)[..., :3] / 255.0)


def hue_distance(h1, h2) -> np.ndarray:
    """Circular hue distance in degrees (hues in [0, 1))."""
    d = np.abs(np.asarray(h1) - np.asarray(h2)) % 1.0
    return 360.0 * np.minimum(d, 1.0 - d)


def background_shift(seed_image, variant_image, object_mask, target_rgb, min_saturation: float = 0.15) -> dict:
    """How the background (outside ``object_mask``) moved from the seed image to the variant.

    * ``hue_shift_deg``: mean decrease of the hue distance to ``target_rgb`` (the adjective's
      colour) over background pixels coloured in *both* images (saturation ≥ ``min_saturation``);
      positive = the background's hue moved toward the adjective's colour. A grey pixel has no
      hue (matplotlib calls it 0°, red), so it is left out here; NaN when no pixel qualifies.
    * ``toward_share``: share of those pixels whose hue moved toward the target (NaN when none).
    * ``chroma_toward``: mean over *all* background pixels of the change of the pixel's chroma
      vector (HSV chroma ``s·v`` at angle hue) projected on the target's hue direction, in [−1, 1]:
      also counts grey turning coloured (grey → blue is toward blue, grey → red toward red).
    * ``pixel_diff``: mean absolute RGB difference in [0, 1] over all background pixels.
    * ``saturation_gain``: mean saturation change of the background.
    * ``coloured_pixels``: how many pixels ``hue_shift_deg`` averages over.
    """
    bg = ~np.asarray(object_mask, dtype=bool)
    if not bg.any():
        raise ValueError("the object mask covers the whole image: there is no background to measure")
    a, b = _hsv(seed_image), _hsv(variant_image)
    target = rgb_to_hsv(np.asarray(target_rgb, dtype=np.float32)[None, None, :3] / 255.0)[0, 0, 0]
    coloured = bg & (a[..., 1] >= min_saturation) & (b[..., 1] >= min_saturation)
    moved = hue_distance(a[..., 0], target) - hue_distance(b[..., 0], target)

    def chroma(hsv):
        c, angle = hsv[..., 1] * hsv[..., 2], 2 * np.pi * hsv[..., 0]
        return np.stack([c * np.cos(angle), c * np.sin(angle)], -1)

    toward = np.array([np.cos(2 * np.pi * target), np.sin(2 * np.pi * target)])
    diff = np.abs(np.asarray(seed_image, np.float32) - np.asarray(variant_image, np.float32))[..., :3] / 255.0
    return {
        "hue_shift_deg": float(moved[coloured].mean()) if coloured.any() else float("nan"),
        "toward_share": float((moved[coloured] > 0).mean()) if coloured.any() else float("nan"),
        "chroma_toward": float(((chroma(b) - chroma(a)) @ toward)[bg].mean()),
        "pixel_diff": float(diff[bg].mean()),
        "saturation_gain": float((b[..., 1] - a[..., 1])[bg].mean()),
        "coloured_pixels": int(coloured.sum()),
        "background_pixels": int(bg.sum()),
    }


def spread_outside(heat: torch.Tensor, object_mask) -> float:
    """Share of a soft map's mass outside the object (0: all on the object; 1: all elsewhere)."""
    region = torch.as_tensor(np.asarray(object_mask, dtype=bool))
    return 1.0 - mass_on_region(heat, region)


def adjective_swap(pipe, template: str, adjectives: list[str], seed: int = 0, **generate_kwargs) -> dict:
    """Generate ``template.format(adj=adjectives[0])`` while keeping its attention, then every other
    adjective twice: replayed onto the seed's attention (layout fixed) and plainly (its own maps).

    Returns ``{"seed": HeatMaps, "replayed": {adj: HeatMaps}, "plain": {adj: HeatMaps}}``;
    ``replayed[adjectives[0]]`` is the seed generation itself (a replayed generation's maps are the injected ones).
    """
    from ..pipeline import generate
    from ..replay import AttentionStore

    store = AttentionStore()
    first = generate(pipe, template.format(adj=adjectives[0]), seed=seed, store=store, **generate_kwargs)
    replayed, plain = {adjectives[0]: first}, {adjectives[0]: first}
    for adj in adjectives[1:]:
        prompt = template.format(adj=adj)
        replayed[adj] = generate(pipe, prompt, seed=seed, replay=store, **generate_kwargs)
        plain[adj] = generate(pipe, prompt, seed=seed, **generate_kwargs)
    return {"seed": first, "replayed": replayed, "plain": plain}


def word_starting_at(hm: HeatMaps, char: int):
    """The :class:`~daamlib.words.Word` whose text starts at character ``char`` of the prompt (e.g. where a
    template's ``{adj}`` was filled in), by the alignment's own word split, punctuation included."""
    for w in hm.alignment.words:
        if w.span[0] == char:
            return w
    raise IndexError(f"no word of {hm.prompt!r} starts at character {char}")


def template_swaps(templates, adjectives) -> dict[str, list[str]]:
    """``{template: the adjectives it swaps among}``: ``templates`` as given when a dict, else every adjective for
    every template."""
    if isinstance(templates, Mapping):
        return {t: list(adjs) for t, adjs in templates.items()}
    return {t: list(adjectives) for t in templates}


def check_inputs(templates, adjectives, mask_source: str, truth) -> None:
    """Refuse, before any generation, templates without exactly one ``{adj}`` (a list, or a dict ``{template:
    its adjectives}`` with two or more known adjectives each), no adjectives, or a mask source that cannot be used
    (``"truth"`` needs ground-truth masks)."""
    if mask_source not in MASK_SOURCES:
        raise ValueError(f"MASK_SOURCE must be one of {MASK_SOURCES}, got {mask_source!r}")
    if mask_source == "truth" and not truth.has_masks:
        raise ValueError("MASK_SOURCE='truth' needs ground-truth masks, and this model has none (no registered world); "
                         "use MASK_SOURCE='daam' (the noun's own DAAM-0.4 mask)")
    bad = [t for t in templates or () if not isinstance(t, str) or t.count("{adj}") != 1]
    if isinstance(templates, Mapping) and adjectives:
        bad += [t for t, adjs in templates.items() if len(adjs) < 2 or not set(adjs) <= set(adjectives)]
    if not templates or bad or not adjectives:
        raise ValueError("give TEMPLATES, each with exactly one {adj}" + (f" (not: {bad})" if bad else "")
                         + ", and ADJECTIVES as {word: [r, g, b]}; a registered world makes both when they are None")


def choose_prompts(templates, adjectives, source, n: int, seed: int = 0, mask_source: str = "truth", truth=None):
    """The templates and adjectives to use: those given, else the ones the model's world makes (``n`` templates);
    checked with :func:`check_inputs`."""
    made = source.adjective_prompts(n, seed) if templates is None or adjectives is None else None
    if made is not None:
        templates, adjectives = templates or made[0], adjectives or made[1]
    check_inputs(templates, adjectives, mask_source, truth if truth is not None else source.truth)
    return (dict(templates) if isinstance(templates, Mapping) else list(templates)), dict(adjectives)


class AdjectiveRun:
    """§5.2 over many templates, resumable: each template's rows are appended to ``out_dir/rows.jsonl`` when it is
    done (a template whose seed image has no object to crop, in ``skipped.txt``), and a re-run skips templates
    already in either, provided the settings and weights are the same
    (``rows.settings.json``; otherwise it stops and says what differs, never mixing two runs' rows).

    ``mask_source``: ``"truth"`` crops the noun's object as the ground truth finds it (also where the variant's
    object lies if it moved), or ``"daam"``: the noun's own DAAM-0.4 mask. The background measured (the main
    columns) also leaves out every other object the ground truth detects in the seed or the variant
    (:meth:`object_region` with ``seed``), then ``grow`` px around it all, so soft edges do not count; where the
    ground truth cannot list objects (human masks) only the noun's object is left out, and the rows say so
    (``background_excludes``). Columns ending ``_named``: the same measures outside the noun's object only.
    ``templates``: a list, or ``{template: the adjectives it swaps among}``. ``gallery``: how many templates keep
    their generations for Fig. 8–9.
    """

    def __init__(self, pipe, templates: Sequence[str] | Mapping[str, Sequence[str]],
                 adjectives: Mapping[str, Sequence[int]], out_dir, truth,
                 mask_source: str = "truth", seed: int = 0, steps: int | None = None, guidance: float | None = None,
                 model: str = "", gallery: int = 2, grow: int = 2):
        from ..pipeline import resolve_sampling, weights_fingerprint

        check_inputs(templates, adjectives, mask_source, truth)
        from ..replay import check_same_tokens

        self.swaps = template_swaps(templates, adjectives)
        for template, adjs in self.swaps.items():  # each seed's attention is replayed onto its variants: same tokens
            check_same_tokens(pipe, [template.format(adj=adj) for adj in adjs])
        self.pipe, self.templates, self.adjectives, self.truth = pipe, list(self.swaps), dict(adjectives), truth
        self._objects = getattr(truth, "objects", None)  # optional on a GroundTruth
        self._warned = False
        self.mask_source, self.seed, self.gallery, self.grow = mask_source, seed, gallery, grow
        self.steps, self.guidance = resolve_sampling(pipe, steps, guidance).values()
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        # finished rows are reused only under the same settings and weights: never mix two runs' rows
        self.settings = json.loads(json.dumps({
            "model": model, "weights": weights_fingerprint(pipe), "steps": self.steps, "guidance": self.guidance,
            "seed": seed, "mask_source": mask_source, "adjectives": self.adjectives,
            "background": "every object detected, seed and variant", "grow": grow}))

    def object_mask(self, hm: HeatMaps, noun_index: int) -> torch.Tensor:
        """The noun's object in this image: the ground truth's mask (empty if not found), or its DAAM-0.4 mask."""
        if self.mask_source == "truth":
            found = self.truth.noun_masks({"id": "", "prompt": hm.prompt}, hm).get(noun_index)
            return found if found is not None else torch.zeros(hm.size, dtype=torch.bool)
        return hm.word_at(noun_index).binarize(0.4)

    def every_object(self, hm: HeatMaps) -> np.ndarray | None:
        """Every object the ground truth detects in this image, or None when it cannot say (told once)."""
        found = self._objects({"id": "", "prompt": hm.prompt}, hm) if self._objects is not None else None
        if found is None and not self._warned:
            self._warned = True
            print("the ground truth cannot list every object in an image: the background leaves out only the "
                  "noun's object (rows: background_excludes='the noun')")
        return None if found is None else np.asarray(found, dtype=bool)

    def object_region(self, obj: torch.Tensor, variant: HeatMaps, noun_index: int,
                      seed: HeatMaps | None = None) -> np.ndarray:
        """What does not count as background in a seed–variant pair: the noun's object ``obj`` (and, with
        ``mask_source="truth"``, where it lies in the variant); with ``seed``, also every object detected in the
        seed or the variant (the strict background, see the class docs); grown by ``grow`` px."""
        from scipy.ndimage import binary_dilation

        covered = obj.numpy().copy()
        if self.mask_source == "truth":
            moved = self.truth.noun_masks({"id": "", "prompt": variant.prompt}, variant).get(noun_index)
            if moved is not None:
                covered |= moved.numpy()
        for hm in (seed, variant) if seed is not None else ():
            found = self.every_object(hm)
            if found is not None:
                covered |= found
        return binary_dilation(covered, iterations=self.grow) if self.grow else covered

    def _done(self) -> tuple[list[dict], list[str]]:
        """The rows already written and the templates already skipped, if the settings are this run's."""
        done_path, skipped_path = self.out / "rows.jsonl", self.out / "skipped.txt"
        settings_path = self.out / "rows.settings.json"
        if done_path.exists() or skipped_path.exists():
            before = json.loads(settings_path.read_text()) if settings_path.exists() else None
            if before != self.settings:
                raise ValueError(f"{done_path} holds rows of another run (settings {before} ≠ now {self.settings}); "
                                 "choose another OUT_DIR, or delete that file (and skipped.txt) to recompute them")
            return ([json.loads(line) for line in done_path.read_text().splitlines()] if done_path.exists() else [],
                    skipped_path.read_text().splitlines() if skipped_path.exists() else [])
        settings_path.write_text(json.dumps(self.settings, indent=1))
        return [], []

    def template_rows(self, template: str, res: dict, order: list[str], obj: torch.Tensor, noun_pos: int,
                      adj_pos: int) -> list[dict]:
        """One row per swapped adjective: the background shift (replayed) and the map spread (plain)."""
        rows = []
        for adj in order[1:]:
            plain = res["plain"][adj]  # its own layout: its own object mask for the spread
            plain_obj = self.object_mask(plain, noun_pos)
            spread_ok = bool(plain_obj.any()) and not bool(plain_obj.all())
            variant = res["replayed"][adj]
            named = self.object_region(obj, variant, noun_pos)
            strict = self.object_region(obj, variant, noun_pos, seed=res["seed"])
            shift = background_shift(res["seed"].image, variant.image, named, self.adjectives[adj])
            rows.append({"template": template, "seed_adjective": order[0], "adjective": adj,
                         **(background_shift(res["seed"].image, variant.image, strict, self.adjectives[adj])
                            if not strict.all() else {k: float("nan") for k in shift}),
                         **{f"{k}_named": v for k, v in shift.items()},
                         "background_share": float((~strict).sum() / max(1, (~named).sum())),  # of the named one
                         "background_excludes": "every object" if self.every_object(variant) is not None
                                                else "the noun",
                         "adjective_spread": spread_outside(plain.word_at(adj_pos).heat, plain_obj.numpy())
                                             if spread_ok else float("nan"),
                         "noun_spread": spread_outside(plain.word_at(noun_pos).heat, plain_obj.numpy())
                                        if spread_ok else float("nan"),
                         "object_share": float(obj.float().mean())})
        return rows

    def rows(self, progress: bool = True):
        """Generate what is not finished; return ``(rows DataFrame, gallery, skipped templates)``. The first
        ``gallery`` templates are generated again when finished, to draw Fig. 8–9 (``{template: (order, res, obj,
        adjective position)}``)."""
        import pandas as pd
        from tqdm.auto import tqdm

        done, skipped = self._done()  # skipped: templates whose seed had no object (done, with no rows)
        finished = {r["template"] for r in done} | set(skipped)
        gallery = {}
        for k, template in enumerate(tqdm(self.templates, desc="templates", disable=not progress)):
            if template in finished and k >= self.gallery:
                continue
            adjs = self.swaps[template]
            order = adjs[k % len(adjs):] + adjs[:k % len(adjs)]  # rotate which adjective seeds the layout
            res = adjective_swap(self.pipe, template, order, seed=self.seed + k, steps=self.steps,
                                 guidance_scale=self.guidance)
            adj_pos = word_starting_at(res["seed"], len(template.split("{adj}")[0])).index
            noun_pos = adj_pos + 1  # the word after the adjective
            obj = self.object_mask(res["seed"], noun_pos)
            if k < self.gallery:  # with the region each swap's background is measured outside of
                regions = {adj: self.object_region(obj, res["replayed"][adj], noun_pos, seed=res["seed"])
                           for adj in order}
                gallery[template] = (order, res, obj, adj_pos, regions)
            if template in finished:
                continue
            if not obj.any() or obj.all():
                skipped.append(template)  # no object found (or nothing else): nothing to crop
                with open(self.out / "skipped.txt", "a") as f:
                    f.write(template + "\n")
                continue
            rows = self.template_rows(template, res, order, obj, noun_pos, adj_pos)
            with open(self.out / "rows.jsonl", "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            done += rows
        df = pd.DataFrame(done)
        if df.empty:
            raise RuntimeError("no seed image had its object found, so no background can be cropped: "
                               "raise N_PROMPTS, or check the model's samples (notebook 00)")
        return df, gallery, skipped


def per_adjective(df):
    """Per adjective: mean hue shift, share of pixels moved toward, chroma shift, pixel difference (outside every
    object), the same hue and chroma shifts outside the named object only (``_named``), the strict background's
    share of that one, map spreads (means skip NaN: no hue to compare on grey backgrounds, or no object found in a
    plain image), n."""
    named = {f"{c}_named": (f"{c}_named", "mean") for c in ("hue_shift_deg", "chroma_toward") if f"{c}_named" in df}
    share = {"background_share": ("background_share", "mean")} if "background_share" in df else {}
    return df.groupby("adjective").agg(hue_shift_deg=("hue_shift_deg", "mean"), toward_share=("toward_share", "mean"),
                                       chroma_toward=("chroma_toward", "mean"), pixel_diff=("pixel_diff", "mean"),
                                       **named, **share,
                                       adjective_spread=("adjective_spread", "mean"), noun_spread=("noun_spread", "mean"),
                                       n=("template", "size"), n_hue=("hue_shift_deg", "count")).reset_index()


REPLAY_NOTE = ("replay holds the seed's cross-attention probabilities on the prompt's tokens fixed, hence the layout; "
               "not self-attention, colour or shape details (objects may move)")


class RowsDisplay:
    """Fig. 8–9 analogue for one template: the seed's adjective map and what is cropped out of the seed (left),
    then each replayed variant (top) and its background as measured — outside the region
    :meth:`AdjectiveRun.object_region` gives for that swap (every object detected in the seed or the variant, and
    a margin) — saturation doubled (bottom)."""

    def __init__(self, template: str, order: list[str], res: dict, obj: torch.Tensor, adj_pos: int,
                 regions: Mapping[str, np.ndarray] | None = None, model: str = ""):
        self.template, self.order, self.res, self.obj, self.adj_pos = template, order, res, obj, adj_pos
        self.regions, self.model = regions or {}, model

    def plot(self, ax=None) -> RowsDisplay:
        """``ax``: a ``[2, variants + 1]`` array of axes, or None for a new figure."""
        import matplotlib.pyplot as plt
        from matplotlib.colors import hsv_to_rgb

        order, res, obj = self.order, self.res, self.obj
        if ax is None:
            _, ax = plt.subplots(2, len(order) + 1, figsize=(1.9 * (len(order) + 1), 4.6), squeeze=False,
                                 layout="constrained")
        res["seed"].word_at(self.adj_pos).plot(ax=ax[0, 0], title=f"map: {order[0]}")
        ax[1, 0].imshow(self.regions.get(order[0], obj), cmap="gray", vmin=0, vmax=1)
        ax[1, 0].set_title("cropped: objects\n(seed, + margin)", fontsize=8)
        for ax_top, ax_bot, adj in zip(ax[0, 1:], ax[1, 1:], order):
            img = res["replayed"][adj].image
            ax_top.imshow(img); ax_top.set_title(adj + (" (seed)" if adj == order[0] else ""), fontsize=8)
            region = np.asarray(self.regions.get(adj, obj.numpy()), dtype=bool)
            bg = img.astype(float) * (~region)[..., None]
            hsv = rgb_to_hsv(bg / 255); hsv[..., 1] = np.clip(hsv[..., 1] * 2, 0, 1)  # saturated for visibility
            ax_bot.imshow(hsv_to_rgb(hsv))
            ax_bot.set_title(f"background: {100 * (~region).mean():.0f}% of image", fontsize=7)
        for a in ax.ravel():
            a.set_axis_off()
        fig = ax[0, 0].figure
        fig.suptitle((f"{self.model}: " if self.model else "") + self.template.format(adj="⟨adj⟩")
                     + "\n" + REPLAY_NOTE + "\nbottom: the background as measured, outside every object detected "
                     "in the seed or the variant (saturation ×2). " + SCALE_NOTE, fontsize=7)
        self.ax_, self.figure_ = ax, fig
        return self


def plot_rows(template: str, order, res, obj, adj_pos, regions=None, ax=None, model: str = "") -> RowsDisplay:
    return RowsDisplay(template, order, res, obj, adj_pos, regions, model).plot(ax)


class BackgroundShiftDisplay:
    """Per adjective, from the rows (one per template and swapped adjective), each a mean with its 95% t
    interval: hue shift of coloured background pixels (degrees), chroma shift of all background pixels (×100),
    both outside every detected object (bars in the adjective's colour; ``×``: the mean outside the named object
    only, when the rows have it), and the map spread of the adjective beside the noun's. The shift axes are
    symmetric about zero, so that the sign and size read at a glance."""

    def __init__(self, rows, adjectives: Mapping[str, Sequence[int]], model: str = ""):
        self.rows, self.adjectives, self.model = rows, adjectives, model

    def plot(self, ax=None) -> BackgroundShiftDisplay:
        """``ax``: three axes, or None for a new figure."""
        import matplotlib.pyplot as plt
        import seaborn as sns

        from .style import ci_kwargs, label_counts, theme

        df = self.rows.assign(chroma=lambda d: 100 * d.chroma_toward)
        if "chroma_toward_named" in df:
            df = df.assign(chroma_named=lambda d: 100 * d.chroma_toward_named)
        order = sorted(df.adjective.unique())
        colours = {a: np.array(self.adjectives[a]) / 255 for a in order}
        spread = df.melt(id_vars="adjective", value_vars=["adjective_spread", "noun_spread"], var_name="word",
                         value_name="outside").assign(outside=lambda d: 100 * d.outside,
                                                      word=lambda d: d.word.str.replace("_spread", ""))
        with theme():
            if ax is None:
                _, ax = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
            for a, y, label, title, floor in (
                    (ax[0], "hue_shift_deg", "hue shift toward the adjective (degrees)",
                     "hue: coloured background pixels", 2.0),
                    (ax[1], "chroma", "chroma shift toward the adjective (×100)",
                     "chroma (0–100): all background pixels, grey included", 1.0)):
                sns.barplot(data=df, x="adjective", y=y, order=order, hue="adjective", palette=colours, legend=False,
                            ax=a, **ci_kwargs())
                if f"{y}_named" in df:
                    named = df.groupby("adjective")[f"{y}_named"].mean().reindex(order)
                    a.scatter(range(len(order)), named, marker="x", color="k", zorder=3, s=25,
                              label="outside the named object only")
                    a.legend(fontsize=7, loc="upper right")
                reach = max([floor] + [abs(v) for v in a.get_ylim()])  # symmetric, at least ±floor
                a.set_ylim(-1.1 * reach, 1.1 * reach)
                a.axhline(0, color="k", lw=0.8); a.set_ylabel(label, fontsize=8); a.set_title(title, fontsize=8)
                a.set_xlabel("")
                label_counts(a, df[y].notna().groupby(df.adjective).sum().to_dict())
            sns.barplot(data=spread, x="adjective", y="outside", order=order, hue="word", hue_order=["adjective", "noun"],
                        palette=["0.35", "lightgray"], ax=ax[2], **ci_kwargs(bounds=(0, 100)))
            ax[2].set_ylabel("% of map mass outside the object", fontsize=8); ax[2].set_xlabel("")
            ax[2].set_ylim(0, 100); ax[2].legend(fontsize=8, title=None)
            label_counts(ax[2], df.adjective_spread.notna().groupby(df.adjective).sum().to_dict())
            if df.adjective_spread.notna().sum() == 0:  # an empty panel must say why it is empty
                ax[2].legend().remove()
                ax[2].text(0.5, 0.5, "no swap has a spread:\nthe ground truth found the noun's object\nin none of "
                           "the plain (unreplayed) variants", ha="center", va="center", fontsize=8,
                           transform=ax[2].transAxes)
            fig = ax[0].figure
            share = (f"; the background is {100 * df.background_share.mean():.0f}% of the named-object one"
                     if "background_share" in df else "")
            fig.suptitle((f"{self.model}: " if self.model else "")
                         + f"background shift with the layout held by replay, outside every detected object{share}\n"
                         f"{df.template.nunique()} templates, {len(df)} swaps, 95% t interval (n: rows with a value; "
                         "positive = toward the swapped adjective's colour)", fontsize=8)
        self.ax_, self.figure_ = ax, fig
        return self


def plot_background_shift(rows, adjectives, ax=None, model: str = "") -> BackgroundShiftDisplay:
    return BackgroundShiftDisplay(rows, adjectives, model).plot(ax)


def results(model: str, templates: Sequence[str], df, per_adj, mask_source: str) -> dict:
    """The headline numbers 05 records."""
    return {"model": model, "templates": len(templates), "templates_scored": int(df.template.nunique()),
            "rows": len(df), "mask_source": mask_source,
            "per_adjective": per_adj.set_index("adjective").round(4).to_dict("index"),
            "mean_hue_shift_deg": float(df.hue_shift_deg.mean()), "mean_chroma_toward": float(df.chroma_toward.mean()),
            **{f"mean_{c}_named": float(df[f"{c}_named"].mean()) for c in ("hue_shift_deg", "chroma_toward")
               if f"{c}_named" in df},
            **({"background_share": float(df.background_share.mean())} if "background_share" in df else {}),
            "mean_pixel_diff": float(df.pixel_diff.mean()),
            "adjective_spread": float(df.adjective_spread.mean()), "noun_spread": float(df.noun_spread.mean())}


def paper_vs_here(df):
    """§5.2's claims (shown in the paper, not measured) against this run: the background moves toward the swapped
    adjective's colour (hue and chroma), and the adjective's map spreads beyond its object more than the noun's.
    The paper gives no number, so each needs a smallest effect of interest (:data:`paper.MARGINS`), not merely an
    interval beyond 0; intervals resample the templates (a template's swaps share its seed image)."""
    from . import paper as P

    rows = []
    ref = P.PAPER["5.2.background-shift"]
    for col, claim, margin in (
            ("hue_shift_deg", "background hue moves toward the adjective's colour (°)", P.MARGINS["hue"]),
            ("chroma_toward", "background chroma moves toward the adjective's colour (×100)", P.MARGINS["chroma"])):
        scale = 100 if col == "chroma_toward" else 1
        m, lo, hi, n = P.interval(scale * df[col].to_numpy(float), df["template"])
        rows.append(P.row(ref.source, claim + f"; {df[col].notna().sum()} swaps", ref.value, m, lo, hi, n,
                          P.effect(lo, hi, margin.value, 1, n, why=margin.why)))
    ref, margin = P.PAPER["5.2.adjective-spread"], P.MARGINS["spread"]
    d = 100 * (df["adjective_spread"] - df["noun_spread"]).to_numpy(float)
    m, lo, hi, n = P.interval(d, df["template"])
    rows.append(P.row(ref.source, f"adjective's map mass outside the object − the noun's (points); "
                      f"{int((~np.isnan(d)).sum())} swaps", ref.value, m, lo, hi, n,
                      P.effect(lo, hi, margin.value, 1, n, why=margin.why)))
    return P.table(rows)
