"""The embedded ShapeWorld model: a procedural world with exact per-word ground truth, an annotator
for generated images, and the code that trains a small Stable-Diffusion-layout model on the world.

- :mod:`daamlib.shapeworld.world` — ``ShapeWorld().scene(split, index)``: image, caption, word masks.
- :mod:`daamlib.shapeworld.annotator` — ``Annotator.load().annotate(image, caption)``.
- :mod:`daamlib.shapeworld.model` — configs and builders; :mod:`~daamlib.shapeworld.train` — the CLI.
- :mod:`daamlib.shapeworld.probe` — per-token object/background attention ratios (training monitor).

Only :mod:`~daamlib.shapeworld.world` is imported here; the rest pull in torch/diffusers on use.
"""

from .world import ONTOLOGY, SHAPES, Scene, ShapeWorld  # noqa: F401
