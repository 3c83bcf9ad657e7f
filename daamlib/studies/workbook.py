"""Small helpers the notebooks share: parameter checks that fail fast, output paths, figures, results.

>>> check_params(N_PROMPTS=20, STEPS=30, THRESHOLDS=[0.3, 0.4], SEED=0)   # raises on a bad value
>>> out = output_dir("../out/01_segmentation")                            # created
>>> FIGURES_DIR = figures_dir(None, "../out/01_segmentation")              # ../out/01_segmentation/figures
>>> save_figure(display, "01_segmentation_tau_sweep", FIGURES_DIR)         # <dir>/<name>.png, then closed
>>> record_results({"miou": 61.2}, "01_segmentation", "../figures")        # <dir>/<name>.json

Relative paths are taken from the current folder, which is ``notebooks/`` for a notebook opened in
JupyterLab (``make lab``) and for ``make figures`` (papermill ``--cwd notebooks``); the parameter cells say
``"../out/..."`` accordingly, and ``make figures`` passes ``FIGURES_DIR="../figures"``. Nothing here knows where the
repository is.
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
    # no "Software: matplotlib x.y" in the PNG: the same picture from another matplotlib is the same file
    fig.savefig(output_dir(figures_dir) / f"{name}.png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return fig


def save_table(df, name: str, figures_dir: str | Path):
    """Save a DataFrame as ``<figures_dir>/<name>.csv`` beside the figures."""
    path = output_dir(figures_dir) / f"{name}.csv"
    df.to_csv(path, index=False, float_format="%.4g")
    return df


def record_results(results: dict, name: str, figures_dir: str | Path, run: dict | None = None) -> dict:
    """The headline numbers of a notebook run as ``<figures_dir>/<name>.json`` (read by the regression tests),
    with ``run`` (:func:`provenance`: parameters, model, weights, versions) when given."""
    if run is not None:
        results = {**results, "run": run}
    path = output_dir(figures_dir) / f"{name}.json"
    text = json.dumps(results, indent=1, default=float, allow_nan=True)
    if not _same_but_versions(path, text):  # new package versions alone do not rewrite a result
        path.write_text(text)
    return results


def _same_but_versions(path: Path, text: str) -> bool:
    """Whether the JSON file at ``path`` holds ``text`` but for the package versions of its provenance."""
    try:
        old, new = json.loads(path.read_text()), json.loads(text)
    except (OSError, ValueError):
        return False
    for d in (old, new):
        if isinstance(d.get("run"), dict):
            d["run"] = {k: v for k, v in d["run"].items() if k != "versions"}
    return json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True)


def model_quality(model) -> dict | None:
    """A model's own val-split quality record: ``quality_val.json`` in its folder, or None where it has none (a Hub
    id, the UNets, a user's folder). ``model``: a loaded pipeline (its ``name_or_path``), a registered name or a
    folder. The studies pass it to :func:`daamlib.studies.paper.gate`."""
    from .. import models

    if isinstance(model, (str, Path)):
        entry = models.get(str(model))
        model = entry.source() if entry is not None else model
    folder = model if isinstance(model, (str, Path)) else getattr(model, "name_or_path", None)
    path = Path(folder) / "quality_val.json" if folder else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def gated(pv, model):
    """A paper-vs-here table with :func:`daamlib.studies.paper.gate` applied for ``model`` (its :func:`model_quality`):
    no verdicts from a model that draws too poorly to test the paper."""
    from .paper import gate

    return gate(pv, model_quality(model))


def figures_dir(figures: str | Path | None, out_dir: str | Path) -> Path:
    """Where this run's figures, tables and results go: ``figures`` when given, else ``<out_dir>/figures``. The
    notebooks' ``FIGURES_DIR`` is None, so JupyterLab, papermill and the tests write under ``out/``; only ``make
    figures`` passes ``"../figures"`` and refreshes the tracked ``figures/``."""
    return Path(figures) if figures is not None else Path(out_dir) / "figures"


def provenance(namespace: dict, pipe=None) -> dict:
    """What produced a result: the notebook's parameters (its UPPER_CASE names), the model's name and weights
    fingerprint, and the versions of the packages that computed it."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    params = {}
    for k, v in namespace.items():
        if k.isupper() and not k.startswith("_"):
            try:
                params[k] = json.loads(json.dumps(v))
            except (TypeError, ValueError):
                params[k] = repr(v)
    versions = {"python": platform.python_version()}
    for pkg in ("daamlib", "torch", "diffusers", "transformers", "numpy", "scipy", "pandas", "matplotlib", "seaborn",
                "spacy"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    out = {"parameters": params, "model": params.get("MODEL_ID"), "versions": versions}
    if pipe is not None:
        from ..pipeline import weights_fingerprint

        out["weights"] = weights_fingerprint(pipe)
    return out
