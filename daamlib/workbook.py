"""Small helpers the notebooks share: parameter checks that fail fast, output paths, figures, results.

>>> check_params(N_PROMPTS=20, STEPS=30, THRESHOLDS=[0.3, 0.4], SEED=0)   # raises on a bad value
>>> out = output_dir("out/01_segmentation")                               # made relative to the repo
>>> save_figure(fig, "01_segmentation_tau_sweep")                         # figures/<name>.png, then closed
>>> record_results({"miou": 61.2}, "01_segmentation")                     # figures/<name>.json
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

from .pipeline import REPO_ROOT

FIGURES = REPO_ROOT / "figures"


def check_params(**params) -> None:
    """Validate notebook parameters by naming convention, before any expensive work.

    ``N_*``, ``STEPS``, ``*_PER_*``: positive integers. ``SEED``: a non-negative integer.
    ``THRESHOLD`` / ``TAU``: in [0, 1]; ``THRESHOLDS``: a non-empty list of those. ``GUIDANCE``: ≥ 0.
    ``MODEL_ID``: an alias, an existing folder, or a Hub id (``owner/name``).
    """
    from .pipeline import TINY, resolve_model

    for name, value in params.items():
        if name.startswith("N_") or name in ("STEPS",) or "_PER_" in name:
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"parameter {name} must be a positive integer, got {value!r}")
        elif name == "SEED":
            if not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"parameter SEED must be a non-negative integer, got {value!r}")
        elif name in ("THRESHOLD", "TAU"):
            _check_unit(name, value)
        elif name == "THRESHOLDS":
            if not value:
                raise ValueError("parameter THRESHOLDS must list at least one τ in [0, 1]")
            for v in value:
                _check_unit(name, v)
        elif name == "GUIDANCE":
            if not isinstance(value, numbers.Real) or value < 0:
                raise ValueError(f"parameter GUIDANCE must be a number ≥ 0 (≤ 1 turns guidance off), got {value!r}")
        elif name == "MODEL_ID":
            if not isinstance(value, str) or not value:
                raise ValueError(f"parameter MODEL_ID must be a model name, folder or Hub id, got {value!r}")
            if value in TINY:
                continue
            path = Path(resolve_model(value))
            looks_like_path = value.startswith((".", "/", "~")) or value.count("/") != 1
            if looks_like_path and not path.is_dir():
                raise ValueError(f"parameter MODEL_ID={value!r} is neither an existing folder nor a Hub id "
                                 f"(owner/name); use 'shapeworld' for the embedded model")


def _check_unit(name, v) -> None:
    if not isinstance(v, numbers.Real) or math.isnan(v) or not 0 <= v <= 1:
        raise ValueError(f"parameter {name} must be in [0, 1], got {v!r}")


def output_dir(path: str | Path) -> Path:
    """``path`` (relative paths are taken from the repository root), created."""
    p = Path(path)
    p = p if p.is_absolute() else REPO_ROOT / p
    p.mkdir(parents=True, exist_ok=True)
    return p


def save_figure(fig, name: str, figures_dir: str | Path = FIGURES, dpi: int = 150) -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` and close it (figures are files, not state)."""
    import matplotlib.pyplot as plt

    path = output_dir(figures_dir) / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def save_table(df, name: str, figures_dir: str | Path = FIGURES) -> Path:
    """Save a DataFrame as ``<figures_dir>/<name>.csv`` beside the figures."""
    path = output_dir(figures_dir) / f"{name}.csv"
    df.to_csv(path, index=False, float_format="%.4g")
    return path


def record_results(results: dict, name: str, figures_dir: str | Path = FIGURES) -> Path:
    """The headline numbers of a notebook run as ``<figures_dir>/<name>.json`` (read by the regression tests)."""
    path = output_dir(figures_dir) / f"{name}.json"
    path.write_text(json.dumps(results, indent=1, default=float, allow_nan=True))
    return path
