"""Test fixtures that ship with the package: tiny random-weight pipelines built from configs
(:mod:`~daamlib.testing.tiny`, :mod:`~daamlib.testing.tiny_dit` for diffusion transformers) and the small
vocabularies they tokenize with (:mod:`~daamlib.testing.vocab`).

They are registered as the models ``tiny-sd1``, ``tiny-sd2``, ``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux`` and
``tiny-pixart``, ``tiny-sana``, ``tiny-qwen``, ``tiny-flux2``, ``tiny-flux2-dev``, ``tiny-chroma``, ``tiny-zimage`` (:mod:`daamlib.models`).
"""

KINDS = {"tiny-sd1": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}
DIT_KINDS = {"tiny-sd3": "sd3", "tiny-flux": "flux", "tiny-pixart": "pixart", "tiny-sana": "sana", "tiny-qwen": "qwen", "tiny-flux2": "flux2", "tiny-flux2-dev": "flux2-dev", "tiny-chroma": "chroma", "tiny-zimage": "zimage", "tiny-flux-edit": "flux-edit",
             "tiny-flux-kontext": "flux-kontext", "tiny-qwen-edit": "qwen-edit"}


def register_models() -> None:
    """The ``daamlib.models`` entry point: register the tiny pipelines by name."""
    from .. import models

    for name, kind in KINDS.items():
        def build(kind=kind):
            from .tiny import tiny_pipeline

            return tiny_pipeline(kind)

        models.register(name, build, description=f"tiny random-weight {kind.upper()} pipeline for tests", priority=-1)

    for name, kind in DIT_KINDS.items():
        def build_dit(kind=kind):
            from .tiny_dit import tiny_dit_pipeline

            return tiny_dit_pipeline(kind)

        models.register(name, build_dit, description=f"tiny random-weight {kind} transformer pipeline for tests",
                        priority=-1)
