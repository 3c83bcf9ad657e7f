"""Small helpers the notebooks share: parameter checks that fail fast, output paths, figures, results.

>>> check_params(N_PROMPTS=20, STEPS=30, THRESHOLDS=[0.3, 0.4], SEED=0)   # raises on a bad value
>>> out = output_dir("../out/01_segmentation")                            # created
>>> save_figure(display, "01_segmentation_tau_sweep", "../figures")        # <dir>/<name>.png, then closed
>>> record_results({"miou": 61.2}, "01_segmentation", "../figures")        # <dir>/<name>.json

Relative paths are taken from the current folder, which is ``notebooks/`` for a notebook opened in
JupyterLab and for ``make figures`` (papermill ``--cwd notebooks``); the parameter cells say
``"../figures"`` and ``"../out/..."`` accordingly. Nothing here knows where the repository is.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path



def check_params(**params) -> None:
    """Validate notebook parameters by naming convention, before any expensive work.

    ``N_*``, ``STEPS``, ``*_PER_*``: positive integers (``STEPS`` may be None: the model's own).
    ``SEED``: a non-negative integer. ``THRESHOLD`` / ``TAU``: in [0, 1]; ``THRESHOLDS``: a non-empty
    list of those. ``GUIDANCE``: ≥ 0, or None (the model's own). ``MODEL_ID``: a registered name
    (:mod:`daamlib.models`), an existing folder, or a Hub id (``owner/name``).
    """
    from .. import models

    for name, value in params.items():
        if name in ("STEPS", "GUIDANCE") and value is None:
            continue
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
            if models.get(value) is not None:
                continue
            looks_like_path = value.startswith((".", "/", "~")) or value.count("/") != 1
            if looks_like_path and not Path(value).is_dir():
                names = ", ".join(sorted(models.registered()))
                raise ValueError(f"parameter MODEL_ID={value!r} is neither a registered model ({names}), an existing "
                                 "folder nor a Hub id (owner/name)")


def _check_unit(name, v) -> None:
    if not isinstance(v, numbers.Real) or math.isnan(v) or not 0 <= v <= 1:
        raise ValueError(f"parameter {name} must be in [0, 1], got {v!r}")


def output_dir(path: str | Path) -> Path:
    """``path`` (relative paths are taken from the current folder), created."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def save_figure(figure, name: str, figures_dir: str | Path, dpi: int = 150):
    """Save a figure (or a Display object's ``figure_``) as ``<figures_dir>/<name>.png``, close it (figures are
    files, not pyplot state) and return it, so that a notebook cell ending with this call still shows it."""
    import matplotlib.pyplot as plt

    fig = getattr(figure, "figure_", figure)
    fig.savefig(output_dir(figures_dir) / f"{name}.png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return fig


def save_table(df, name: str, figures_dir: str | Path):
    """Save a DataFrame as ``<figures_dir>/<name>.csv`` beside the figures."""
    path = output_dir(figures_dir) / f"{name}.csv"
    df.to_csv(path, index=False, float_format="%.4g")
    return df


def record_results(results: dict, name: str, figures_dir: str | Path) -> dict:
    """The headline numbers of a notebook run as ``<figures_dir>/<name>.json`` (read by the regression tests)."""
    path = output_dir(figures_dir) / f"{name}.json"
    path.write_text(json.dumps(results, indent=1, default=float, allow_nan=True))
    return results
