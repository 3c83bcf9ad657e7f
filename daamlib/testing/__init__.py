"""Test fixtures that ship with the package: tiny random-weight pipelines built from configs
(:mod:`~daamlib.testing.tiny`) and the small CLIP vocabulary they tokenize with (:mod:`~daamlib.testing.vocab`).

They are registered as the models ``tiny-sd1``, ``tiny-sd2`` and ``tiny-sdxl`` (:mod:`daamlib.models`).
"""

KINDS = {"tiny-sd1": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}


def register_models() -> None:
    """The ``daamlib.models`` entry point: register the tiny pipelines by name."""
    from .. import models

    for name, kind in KINDS.items():
        def build(kind=kind):
            from .tiny import tiny_pipeline

            return tiny_pipeline(kind)

        models.register(name, build, description=f"tiny random-weight {kind.upper()} pipeline for tests", priority=-1)
