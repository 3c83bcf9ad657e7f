"""daamlib: DAAM (Diffusion Attentive Attribution Maps) for diffusers pipelines.

>>> import daamlib
>>> pipe = daamlib.load_pipeline("shapeworld")                         # doctest: +SKIP
>>> hm = daamlib.generate(pipe, "a red circle above a blue square")     # doctest: +SKIP
>>> hm["circle"].binarize(0.4)                                           # doctest: +SKIP

The core: ``trace`` (capture), ``kernel`` (Eq. 6–7), ``words`` (alignment), ``heatmap``
(result objects, overlays), ``replay``, ``stats`` (IoU/IoD/IoH), ``io`` (experiments), ``items`` and
``runner`` (resumable runs), ``models`` (named models), ``pipeline`` (loading, generate), ``attribute`` (maps of an
image that exists), ``concepts`` (maps of words not in the prompt), ``explorer``,
``cli``; ``testing`` holds the tiny test pipelines. The paper's studies are in ``daamlib.studies`` and
the embedded model in ``daamlib.shapeworld``; the core imports neither. Nothing heavy is imported here.
"""

from .attribute import AttributionError, attribute
from .heatmap import HeatMaps, WordHeatMap
from .io import ExperimentError, load_experiment, save_experiment
from .kernel import aggregate, binarize
from .pipeline import default_model, edit_pipeline, generate, load_pipeline
from .stats import iod, ioh, iou, mean_ci
from .trace import Trace, TraceError, UnsupportedPipelineError, trace
from . import dit  # noqa: F401, E402 (registers the transformer tracer with trace, which never imports it)
from .words import AmbiguousWordError, WordNotFoundError, align_words

__all__ = [
    "trace", "Trace", "TraceError", "UnsupportedPipelineError",
    "HeatMaps", "WordHeatMap", "aggregate", "binarize",
    "align_words", "WordNotFoundError", "AmbiguousWordError",
    "iou", "iod", "ioh", "mean_ci",
    "save_experiment", "load_experiment", "ExperimentError",
    "generate", "edit_pipeline", "load_pipeline", "default_model", "attribute", "AttributionError",
]
__version__ = "0.1.0"
