"""Named models: a registry that other packages fill in, so the core never knows where a model lives.

>>> import daamlib.models as models
>>> sorted(models.registered())                       # doctest: +SKIP
['shapeworld', 'tiny-sd1', 'tiny-sd2', 'tiny-sdxl']
>>> models.get("tiny-sd1").source()                   # a pipeline (or a folder path)   # doctest: +SKIP

A package registers its models in its ``pyproject.toml`` (this project's own ``pyproject.toml`` registers
the embedded model and the tiny test models this way)::

    [project.entry-points."daamlib.models"]
    my_models = "my_package.models:register_models"

The entry point is a function that calls :func:`register` once per model. It is loaded the first
time a name is looked up, so importing ``daamlib`` imports no model package. ``register`` can also
be called directly (e.g. from a notebook) for a folder of one's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

GROUP = "daamlib.models"


@dataclass(frozen=True)
class Model:
    """A named model. ``source()`` returns what ``from_pretrained`` takes (a folder or Hub id) or a ready pipeline."""

    name: str
    source: Callable[[], object]
    description: str = ""
    priority: int = 0  # the available model with the highest priority is the default one
    available: Callable[[], bool] = lambda: True  # e.g. "its folder is present"


_REGISTRY: dict[str, Model] = {}
_loaded = False


def register(name: str, source: Callable[[], object], description: str = "", priority: int = 0,
             available: Callable[[], bool] | None = None) -> Model:
    """Add (or replace) the model ``name``; see :class:`Model`."""
    if not name or "/" in name:
        raise ValueError(f"a registered model name must be non-empty and contain no '/' (those are Hub ids), got {name!r}")
    model = Model(name, source, description, priority, available or (lambda: True))
    _REGISTRY[name] = model
    return model


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=GROUP):
        ep.load()()


def registered() -> dict[str, Model]:
    """Every registered model by name (entry points loaded on first use)."""
    _load_entry_points()
    return dict(_REGISTRY)


def get(name: str) -> Model | None:
    """The registered model ``name``, or None."""
    return registered().get(name)


def default() -> str:
    """The name of the available registered model with the highest priority (ties: by name)."""
    ranked = sorted((m for m in registered().values() if m.available()), key=lambda m: (-m.priority, m.name))
    if not ranked:
        raise LookupError("no model is registered; install daamlib with `pip install -e .` (its entry points register "
                          "the embedded and test models), or pass a folder or Hub id")
    return ranked[0].name
