"""The embedded ShapeWorld model, a leaf of daamlib: it imports the core, the core never imports it.

A procedural world with exact per-word ground truth, an annotator for generated images, the code
that trains a small Stable-Diffusion-layout model on the world, its quality bars, and the prompts
and ground truth the paper's studies take from it.

- :mod:`~daamlib.shapeworld.world` — ``ShapeWorld().scene(split, index)``: image, caption, word masks.
- :mod:`~daamlib.shapeworld.annotator` — ``Annotator.load().annotate(image, caption)``.
- :mod:`~daamlib.shapeworld.studies` — per-study prompts and the annotator as ground truth.
- :mod:`~daamlib.shapeworld.model` — configs and builders; :mod:`~daamlib.shapeworld.train` — the trainer.
- :mod:`~daamlib.shapeworld.clip` — ShapeWorld-CLIP, the frozen contextual text encoder of ``shapeworld-clip``.
- :mod:`~daamlib.shapeworld.probe` — per-token object/background attention ratios (training monitor).
- :mod:`~daamlib.shapeworld.quality` — the model's quality bars; :mod:`~daamlib.shapeworld.report` — its card's figures.

The model is registered as ``shapeworld`` (:mod:`daamlib.models`); its folder is ``$DAAM_SHAPEWORLD_MODEL``
or, in a checkout, ``data/models/shapeworld``. Only :mod:`~daamlib.shapeworld.world` is imported here.
"""

import os
from pathlib import Path

from .world import ONTOLOGY, SHAPES, Scene, ShapeWorld  # noqa: F401

NAME = "shapeworld"
CLIP_NAME = "shapeworld-clip"  # the same world; the UNet conditioned on a frozen ShapeWorld-CLIP (contextual states)
MMDIT_NAME = "shapeworld-mmdit"  # the same world and text encoder; an SD3-style transformer (issue 25)
_ENV = {NAME: "DAAM_SHAPEWORLD_MODEL", CLIP_NAME: "DAAM_SHAPEWORLD_CLIP_MODEL",
        MMDIT_NAME: "DAAM_SHAPEWORLD_MMDIT_MODEL"}


def model_dir(name: str = NAME) -> Path:
    """A model's folder: ``$DAAM_SHAPEWORLD_MODEL`` (``$DAAM_SHAPEWORLD_CLIP_MODEL`` for ``shapeworld-clip``,
    ``$DAAM_SHAPEWORLD_MMDIT_MODEL`` for ``shapeworld-mmdit``), else ``data/models/<name>`` of this checkout."""
    env = os.environ.get(_ENV[name])
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data" / "models" / name


def register_models() -> None:
    """The ``daamlib.models`` entry point: the embedded model (the default whenever its folder is present), its
    contextual sibling ``shapeworld-clip`` and the transformer ``shapeworld-mmdit``."""
    from .. import models

    models.register(NAME, lambda: str(model_dir()),
                    description=f"the embedded ShapeWorld model, expected at {model_dir()} (a checkout's "
                                "data/models/shapeworld, or set DAAM_SHAPEWORLD_MODEL to its folder)",
                    priority=10, available=lambda: (model_dir() / "model_index.json").is_file())
    models.register(CLIP_NAME, lambda: str(model_dir(CLIP_NAME)),
                    description=f"ShapeWorld with a frozen contextual text encoder (ShapeWorld-CLIP), expected at "
                                f"{model_dir(CLIP_NAME)} (or set DAAM_SHAPEWORLD_CLIP_MODEL to its folder)",
                    priority=5, available=lambda: (model_dir(CLIP_NAME) / "model_index.json").is_file())
    models.register(MMDIT_NAME, lambda: str(model_dir(MMDIT_NAME)),
                    description=f"ShapeWorld's SD3-style transformer on the frozen ShapeWorld-CLIP (too weak to "
                                f"test the paper: see its card), expected at {model_dir(MMDIT_NAME)} (a checkout's "
                                "data/models/shapeworld-mmdit, or set DAAM_SHAPEWORLD_MMDIT_MODEL to a folder written by "
                                "`python -m daamlib.shapeworld.train_mmdit --save-pipeline` or `--export`)",
                    priority=1, available=lambda: (model_dir(MMDIT_NAME) / "model_index.json").is_file())


def register_studies() -> None:
    """The ``daamlib.studies`` entry point: ShapeWorld's prompts and ground truth for both ShapeWorld models."""
    from ..studies import data
    from .studies import ShapeWorldStudies

    for name in (NAME, CLIP_NAME, MMDIT_NAME):
        data.register(name, ShapeWorldStudies)
