"""Save and load one experiment: image, prompt, seed, settings and recorded maps. No pickle.

A folder holds::

    image.png           the generated image (absent if none was given)
    maps.safetensors    per layer, the recorded maps [steps, (heads,) tokens, h, w] float32
    meta.json           prompt, seed, settings, tokens, words, sizes, steps, and a SHA-256 of each file

It is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written experiment under the final name. Loading checks every file against its hash
and names the file and the fix when something is missing or damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .heatmap import HeatMaps
from .words import Alignment, Word

FORMAT = "daam-experiment/1"
MAPS, META, IMAGE = "maps.safetensors", "meta.json", "image.png"


class ExperimentError(RuntimeError):
    """An experiment folder is missing, incomplete, damaged or edited so that it no longer matches its data."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_experiment(path: str | os.PathLike, heat_maps: HeatMaps, seed: int | None = None,
                    settings: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``heat_maps`` (and its image) to the folder ``path``, atomically. Returns the path.

    Refuses to replace an existing experiment unless ``overwrite=True``.
    """
    from PIL import Image
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExperimentError(f"{path} is a file, not an experiment folder; choose another output path")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ExperimentError(f"{path} already holds an experiment; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({k: v.contiguous().cpu() for k, v in heat_maps.maps.items()}, tmp / MAPS)
        files = {MAPS: _sha256(tmp / MAPS)}
        if heat_maps.image is not None:
            Image.fromarray(heat_maps.image).save(tmp / IMAGE)
            files[IMAGE] = _sha256(tmp / IMAGE)
        a = heat_maps.alignment
        meta = {
            "format": FORMAT,
            "prompt": a.prompt,
            "seed": seed,
            "settings": settings or {},
            "tokens": list(a.tokens),
            "max_length": a.max_length,
            "words": [
                {"text": w.text, "index": w.index, "occurrence": w.occurrence, "span": list(w.span),
                 "tokens": list(w.tokens), "truncated": w.truncated}
                for w in a.words
            ],
            "size": list(heat_maps.size),
            "steps": heat_maps.steps,
            "timesteps": heat_maps.timesteps,
            "layers": {k: list(v.shape) for k, v in heat_maps.maps.items()},
            "files": files,
        }
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: Path) -> dict:
    """The checked ``meta.json`` of an experiment folder (files are not hashed: see :func:`load_experiment`)."""
    f = path / META
    if not f.is_file():
        raise ExperimentError(f"{f} is missing: {path} is not a complete experiment; re-run it to regenerate")
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExperimentError(f"{f} is not valid JSON ({e}); it was damaged or edited by hand — re-run the experiment") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExperimentError(f"{f} is not a {FORMAT} file (format={meta.get('format') if isinstance(meta, dict) else None!r}); "
                              "it was written by another tool or edited by hand — re-run the experiment")
    missing = [k for k in ("prompt", "tokens", "words", "size", "steps", "layers", "files") if k not in meta]
    if missing:
        raise ExperimentError(f"{f} lacks {missing}; it was edited by hand or written by another tool — re-run the experiment")
    return meta


def load_experiment(path: str | os.PathLike) -> tuple[HeatMaps, dict]:
    """Load a folder written by :func:`save_experiment`: ``(heat_maps, meta)``. Never unpickles anything."""
    from PIL import Image
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise ExperimentError(f"no experiment at {path}; check the path")
    if not path.is_dir():
        raise ExperimentError(f"{path} is a file, not an experiment folder; pass the folder that holds {META}")
    meta = read_meta(path)
    for name, digest in meta["files"].items():
        f = path / name
        if not f.is_file():
            raise ExperimentError(f"{f} is missing from the experiment; re-run it to regenerate")
        if _sha256(f) != digest:
            raise ExperimentError(f"{f} does not match the checksum in {META}: it is truncated, damaged or replaced; "
                                  "re-run the experiment")
    if MAPS not in meta["files"]:
        raise ExperimentError(f"{path / META} lists no {MAPS}; it was edited by hand — re-run the experiment")
    try:
        maps = load_file(path / MAPS)
    except (SafetensorError, OSError, ValueError) as e:
        raise ExperimentError(f"{path / MAPS} is not a readable safetensors file ({e}); re-run the experiment") from e
    shapes = {k: list(v.shape) for k, v in maps.items()}
    if shapes != meta["layers"]:
        raise ExperimentError(f"{path / META} describes layers {meta['layers']} but {MAPS} holds {shapes}; "
                              "the files do not belong together — re-run the experiment")
    maps = {k: maps[k] for k in meta["layers"]}  # the order the layers ran in
    try:
        words = tuple(Word(w["text"], w["index"], w["occurrence"], tuple(w["span"]), tuple(w["tokens"]), w["truncated"])
                      for w in meta["words"])
        alignment = Alignment(meta["prompt"], tuple(meta["tokens"]), words, meta.get("max_length", 77))
    except (KeyError, TypeError) as e:
        raise ExperimentError(f"{path / META} has malformed words ({e}); re-run the experiment") from e
    try:
        image = np.asarray(Image.open(path / IMAGE).convert("RGB")) if IMAGE in meta["files"] else None
    except OSError as e:  # PIL's UnidentifiedImageError is an OSError
        raise ExperimentError(f"{path / IMAGE} is not a readable image ({e}); re-run the experiment") from e
    hm = HeatMaps(alignment, maps, tuple(meta["size"]), image, meta.get("timesteps"), meta["steps"])
    return hm, meta
