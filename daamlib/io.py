"""Save and load one experiment: image, prompt, seed, settings and recorded maps. No pickle.

A folder holds::

    image.png           the generated image (absent if none was given)
    maps.safetensors    per layer, the recorded maps [steps, (heads,) tokens, h, w] float32
    input.png           an edit's input image (img2img, inpainting, Kontext, Qwen-Image-Edit)
    mask.png            inpainting's mask as the pipeline used it (white: repainted), at the image's size
    reference.safetensors  Kontext, Qwen-Image-Edit: where the edit looked (``hm.reference``), on the input's pixels
    concepts.safetensors   concept maps (``trace(concepts=...)``), per layer [steps, concepts, h, w]; meta lists them
    meta.json           prompt, seed, settings, tokens, words, sizes, steps, and a SHA-256 of each file

It is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written experiment under the final name. Loading checks every file against its hash
and names the file and the fix when something is missing or damaged.
"""

from __future__ import annotations

import errno
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
INPUT, MASK, REFERENCE = "input.png", "mask.png", "reference.safetensors"  # an edit's, beside what it became
CONCEPTS = "concepts.safetensors"  # concept maps (daamlib.concepts); output-space ones under OUTPUTS + layer
OUTPUTS = "outputs:"
PNGS, TENSORS = (IMAGE, INPUT, MASK), (MAPS, REFERENCE, CONCEPTS)
META_SUM = "meta.sha256"  # the SHA-256 of meta.json: an edited meta.json (swapped tokens, another size) is caught
MAX_SIDE = 16384  # the largest image side an experiment may describe (pixels)
MAX_CELL = 64  # the most pixels one map cell may span per side (Flux.2: a VAE factor of 16 × packing 2 = 32)


class ExperimentError(RuntimeError):
    """An experiment folder is missing, incomplete, damaged or edited so that it no longer matches its data."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except PermissionError as e:
        raise _read_error(e, path) from None
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data to the disk (folders: their entries), where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def save_experiment(path: str | os.PathLike, heat_maps: HeatMaps, seed: int | None = None,
                    settings: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``heat_maps`` (and its image) to the folder ``path``, atomically. Returns the path.

    Refuses to replace an existing experiment unless ``overwrite=True``. Every file and the temporary folder
    are fsynced before the rename that publishes the experiment, and the parent folder after it, so that after a
    power loss an experiment is either absent or complete.
    """
    from PIL import Image
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExperimentError(f"{path} is a file, not an experiment folder; choose another output path")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ExperimentError(f"{path} already holds an experiment; pass overwrite=True to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as e:
        raise _write_error(e, path) from None
    try:
        try:
            save_file({k: v.contiguous().cpu() for k, v in heat_maps.maps.items()}, tmp / MAPS)
        except SafetensorError as e:  # safetensors reports OS errors (a full disk) as its own, with the OS's text
            raise _write_error(OSError(errno.ENOSPC if "StorageFull" in str(e) or "No space" in str(e) else errno.EIO,
                                       str(e)), path / MAPS) from None
        os.chmod(tmp / MAPS, _FILE_MODE)  # safetensors creates it 0600; the other files get the umask's mode
        files = {MAPS: _sha256(tmp / MAPS)}
        if heat_maps.image is not None:
            Image.fromarray(heat_maps.image).save(tmp / IMAGE)
            files[IMAGE] = _sha256(tmp / IMAGE)
        edit = getattr(heat_maps, "edit_input", None), getattr(heat_maps, "edit_mask", None)
        for name, array in zip((INPUT, MASK), edit):
            if array is not None:
                Image.fromarray(array if array.dtype == np.uint8 else array.astype(np.uint8) * 255).save(tmp / name)
                files[name] = _sha256(tmp / name)
        concepts, outputs = getattr(heat_maps, "concepts", None), getattr(heat_maps, "concept_outputs", None)
        if concepts is not None:
            kept = {k: v.float().contiguous().cpu() for k, v in concepts.maps.items()}
            if outputs is not None:  # Flux.1's output-space maps beside them
                kept.update({OUTPUTS + k: v.float().contiguous().cpu() for k, v in outputs.maps.items()})
            save_file(kept, tmp / CONCEPTS)
            os.chmod(tmp / CONCEPTS, _FILE_MODE)
            files[CONCEPTS] = _sha256(tmp / CONCEPTS)
        if getattr(heat_maps, "reference", None) is not None:
            save_file({"reference": heat_maps.reference.float().contiguous().cpu()}, tmp / REFERENCE)
            os.chmod(tmp / REFERENCE, _FILE_MODE)
            files[REFERENCE] = _sha256(tmp / REFERENCE)
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
            "order": getattr(heat_maps, "order", 1),  # denoiser evaluations per sampler step (2: Heun)
            "layers": {k: list(v.shape) for k, v in heat_maps.maps.items()},
            "files": files,
            **({"concepts": list(concepts.words)} if concepts is not None else {}),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1))
        (tmp / META_SUM).write_text(_sha256(tmp / META) + "\n")
        for f in (*files, META, META_SUM):
            _fsync(tmp / f)
        _fsync(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()  # what open() gives a new file here: the mode every file of an experiment gets


def _write_error(e: OSError, path: Path) -> ExperimentError:
    """A one-line error for a failed write, naming the file and the fix; nothing already saved is touched."""
    where = getattr(e, "filename", None) or path
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ExperimentError(f"no space left to write {where}: free some space (or choose an output folder on "
                               "another disk) and run again; experiments already saved are complete and kept")
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExperimentError(f"cannot write {where}: {e.strerror or e} — the folder is read-only or belongs to "
                               "another user; choose an output folder you can write to")
    return ExperimentError(f"could not write {where}: {e.strerror or e}; nothing was saved under that name")


def _read_error(e: OSError, f: Path) -> ExperimentError:
    if isinstance(e, PermissionError):
        return ExperimentError(f"cannot read {f}: permission denied — it belongs to another user; ask them to "
                               "`chmod -R a+rX` the run folder, or copy it")
    return ExperimentError(f"cannot read {f}: {e.strerror or e}")


def check_files(path: str | os.PathLike, full: bool = False, deep: bool = False) -> list[str]:
    """What is wrong with the files of the experiment folder ``path`` (an empty list: nothing found).

    The cheap check (default) reads no data: ``meta.json`` must be readable, every file it lists present, the
    safetensors file as long as its own header says, the PNG complete (signature and closing ``IEND`` chunk).
    It catches truncated, emptied and deleted files in microseconds per item. ``full=True`` also compares every
    file's SHA-256 with ``meta.json`` (reads everything: catches bit flips and replaced files; the runner and
    :func:`daamlib.runner.load_results` always do, at about 0.6 ms per MB). ``deep=True`` (``--verify``) also loads
    the experiment as :func:`load_experiment` does: maps parsed and their shapes compared with meta.json, the image
    decoded.
    """
    import struct

    path = Path(path)
    try:
        meta = read_meta(path)
    except ExperimentError as e:
        return [str(e)]
    files = meta.get("files")
    if not isinstance(files, dict):
        return [f"{path / META} has no valid file list"]
    problems = []
    for name, digest in files.items():
        f = path / name
        if name not in PNGS + TENSORS or not f.is_file():
            problems.append(f"{name} is missing" if name in PNGS + TENSORS else
                            f"{name!r} is not a file of an experiment")
            continue
        size = f.stat().st_size
        try:
            fh = open(f, "rb")
        except OSError as e:
            problems.append(str(_read_error(e, f)))
            continue
        with fh:
            if name in TENSORS:
                head = fh.read(8)
                n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
                try:
                    header = json.loads(fh.read(n)) if 0 < n < size else None
                    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                except (ValueError, KeyError, TypeError, AttributeError):
                    header = None
                if header is None or size != 8 + n + end:
                    problems.append(f"{name} is truncated or damaged ({size} bytes)")
                    continue
            else:
                sig = fh.read(8)
                fh.seek(max(0, size - 12))
                if sig != b"\x89PNG\r\n\x1a\n" or fh.read(12)[4:8] != b"IEND":
                    problems.append(f"{name} is truncated or damaged ({size} bytes)")
                    continue
        try:
            if full and _sha256(f) != digest:
                problems.append(f"{name} does not match its checksum in {META}")
        except ExperimentError as e:
            problems.append(str(e))
    if deep and not problems:
        try:
            load_experiment(path)
        except ExperimentError as e:
            problems.append(str(e))
    return problems


def read_meta(path: Path) -> dict:
    """The checked ``meta.json`` of an experiment folder: its checksum (``meta.sha256``, where the experiment has
    one) and a schema with bounds (:func:`check_meta`). Data files are not hashed here: see :func:`load_experiment`."""
    f = path / META
    if not f.is_file():
        raise ExperimentError(f"{f} is missing: {path} is not a complete experiment; re-run it to regenerate")
    sum_file = path / META_SUM
    try:
        if sum_file.is_file() and sum_file.read_text(errors="replace").strip() != _sha256(f):
            raise ExperimentError(f"{f} does not match its checksum in {META_SUM}: it was edited or damaged, so its "
                                  "words, sizes and file list cannot be trusted — re-run the experiment")
        text = f.read_text()
    except OSError as e:
        raise _read_error(e, getattr(e, "filename", None) or f) from None
    except UnicodeDecodeError as e:
        raise ExperimentError(f"{f} is not valid JSON ({type(e).__name__}); it was damaged or edited by hand — "
                              "re-run the experiment") from e
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ExperimentError(f"{f} is not valid JSON ({type(e).__name__}); it was damaged or edited by hand — "
                              "re-run the experiment") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExperimentError(f"{f} is not a {FORMAT} file (format={meta.get('format') if isinstance(meta, dict) else None!r}); "
                              "it was written by another tool or edited by hand — re-run the experiment")
    missing = [k for k in ("prompt", "tokens", "words", "size", "steps", "layers", "files") if k not in meta]
    if missing:
        raise ExperimentError(f"{f} lacks {missing}; it was edited by hand or written by another tool — re-run the experiment")
    problem = check_meta(meta)
    if problem:
        raise ExperimentError(f"{f}: {problem}; it was edited by hand or written by another tool — re-run the experiment")
    return meta


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_meta(meta: dict) -> str | None:
    """What is wrong with a meta.json's fields (None: nothing): types, and bounds that follow from the stored maps
    (size within :data:`MAX_SIDE` and at least every layer's grid, token positions within the tokens, words that are
    the prompt's own text, one step per recorded map) and a file list confined to the experiment's own files."""
    prompt, tokens, words, size = meta["prompt"], meta["tokens"], meta["words"], meta["size"]
    if not isinstance(prompt, str) or not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return "field 'prompt' or 'tokens' has the wrong type"
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 1 <= v <= MAX_SIDE for v in size)):
        return f"field 'size' must be [height, width] with sides from 1 to {MAX_SIDE}, got {str(size)[:60]}"
    concepts = meta.get("concepts")
    if concepts is not None and (not isinstance(concepts, list) or not concepts
                                 or not all(isinstance(c, str) and c.strip() for c in concepts)):
        return f"field 'concepts' must be a list of concept strings, got {str(concepts)[:60]}"
    files = meta["files"]
    if (concepts is not None) != (isinstance(files, dict) and CONCEPTS in files):
        return f"field 'concepts' and the file {CONCEPTS} must come together"
    if not isinstance(files, dict) or not set(files) <= set(PNGS + TENSORS) or MAPS not in files or \
            not all(isinstance(v, str) and len(v) == 64 for v in files.values()):
        return (f"field 'files' must map {MAPS} (and {', '.join(PNGS + TENSORS[1:])}) to SHA-256 digests, got "
                f"{str(files)[:80]}")
    steps, layers = meta["steps"], meta["layers"]
    if not isinstance(steps, list) or not all(_is_int(v) for v in steps):
        return "field 'steps' must be a list of step indices"
    timesteps = meta.get("timesteps") or []
    if not isinstance(timesteps, list) or (timesteps and len(timesteps) != len(steps)):
        return "field 'timesteps' must be empty or hold one time step per step"
    if not (_is_int(meta.get("order", 1)) and 1 <= meta.get("order", 1) <= 8):
        return "field 'order' must be the scheduler's order, an integer from 1 to 8"
    if not isinstance(layers, dict) or not layers:
        return "field 'layers' must name the recorded layers and their shapes"
    for name, shape in layers.items():
        if not (isinstance(shape, list) and len(shape) in (4, 5) and all(_is_int(v) and v >= 1 for v in shape)):
            return f"layer {str(name)[:60]!r} has a malformed shape {str(shape)[:60]}"
        if shape[0] != len(steps) or shape[-3] != len(tokens) or shape[-2] > size[0] or shape[-1] > size[1]:
            return (f"layer {str(name)[:60]!r} of shape {shape} does not fit {len(steps)} steps, {len(tokens)} tokens "
                    f"and an image of {size[0]}×{size[1]}")
    grid = (max(shape[-2] for shape in layers.values()), max(shape[-1] for shape in layers.values()))
    cell = (size[0] / grid[0], size[1] / grid[1])
    if not all(1 <= c <= MAX_CELL for c in cell) or max(cell) > 1.5 * min(cell):
        return (f"size {size[0]}×{size[1]} does not fit maps whose finest grid is {grid[0]}×{grid[1]} (one map cell "
                f"would be {cell[0]:.3g}×{cell[1]:.3g} pixels; models make square cells of 8 to {MAX_CELL // 2})")
    if not isinstance(words, list):
        return "field 'words' must be a list"
    for w in words:
        try:
            a, b = w["span"]
            ok = (isinstance(w["text"], str) and 0 <= a <= b <= len(prompt) and prompt[a:b] == w["text"]
                  and all(_is_int(t) and 0 <= t < len(tokens) for t in w["tokens"])
                  and isinstance(w["truncated"], bool) and _is_int(w["index"]) and _is_int(w["occurrence"]))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            return f"word {str(w)[:80]} is not a word of the prompt with token positions among its tokens"
        if _spells(w["text"], [tokens[t] for t in w["tokens"]]) is False:
            return (f"word {w['text']!r} is not spelled by its tokens {[tokens[t] for t in w['tokens']]}: the tokens "
                    "and words do not belong together")
    return None


_MARKS = ("</w>", "Ġ", "▁", "##", "Ċ")  # word-boundary marks of CLIP, byte-level BPE, SentencePiece and WordPiece


def _spells(word: str, tokens: list[str]) -> bool | None:
    """Whether the letters and digits of ``word`` appear in its tokens' text, in each text stream the tokens come from
    (``clip:``, ``t5:``, ``lm:`` prefixes); None when that cannot be told: non-ASCII text (byte-level tokens do not
    spell it), an unknown-token marker, or a word without tokens."""
    if not tokens or any(t.split(":", 1)[-1] in _UNKNOWN for t in tokens):
        return None
    streams: dict[str, str] = {}
    for t in tokens:
        stream, _, text = t.partition(":") if t.split(":", 1)[0] in _STREAMS and ":" in t else ("", "", t)
        streams[stream] = streams.get(stream, "") + text
    letters = "".join(c for c in word.lower() if c.isalnum())
    verdicts = []
    for text in streams.values():
        for m in _MARKS:
            text = text.replace(m, "")
        if not (word.isascii() and text.isascii()):
            return None
        verdicts.append(not letters or letters in "".join(c for c in text.lower() if c.isalnum()))
    return all(verdicts)


_STREAMS = ("clip", "t5", "lm")  # the stream prefixes of a transformer's tokens (daamlib.dit.tokens)
_UNKNOWN = ("<unk>", "[UNK]", "<|unk|>")


def _read_png(path: Path, name: str, meta: dict, mode: str, same_size: bool) -> np.ndarray:
    """An experiment's image file as an array in ``mode``; with ``same_size``, refused unless it is the maps' size
    (read from the header before any pixel is decoded)."""
    from PIL import Image

    try:
        with Image.open(path / name) as im:
            if same_size and im.size != (meta["size"][1], meta["size"][0]):
                raise ExperimentError(f"{path / name} is {im.size[0]}×{im.size[1]} but the maps are "
                                      f"{meta['size'][1]}×{meta['size'][0]}; re-run the experiment")
            return np.asarray(im.convert(mode))
    except (OSError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise ExperimentError(f"{path / name} is not a readable image ({e}); re-run the experiment") from e


def _load_extras(path: Path, meta: dict, hm: HeatMaps) -> None:
    """The files beside the maps (already checked against their checksums): an edit's input, inpainting's mask (at
    the maps' size) and the reference map; concept maps."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if INPUT in meta["files"]:  # an edit's input: any size (Kontext's reference need not be the output's)
        hm.edit_input = _read_png(path, INPUT, meta, "RGB", same_size=False)
    if MASK in meta["files"]:
        hm.edit_mask = _read_png(path, MASK, meta, "L", same_size=True) > 127
    if CONCEPTS in meta["files"]:
        from .concepts import concept_alignment

        try:
            maps = load_file(path / CONCEPTS)
        except (SafetensorError, OSError, ValueError) as e:
            raise ExperimentError(f"{path / CONCEPTS} is not a readable safetensors file ({e}); re-run the "
                                  "experiment") from e
        if any(v.ndim != 4 or v.shape[1] != len(meta["concepts"]) or v.shape[0] != len(hm.steps)
               for v in maps.values()):
            raise ExperimentError(f"{path / CONCEPTS} does not hold [steps, concepts, h, w] maps for the "
                                  f"{len(meta['concepts'])} concepts of {META}; re-run the experiment")
        alignment = concept_alignment(meta["concepts"])
        cross = {k: v for k, v in maps.items() if not k.startswith(OUTPUTS)}
        outputs = {k[len(OUTPUTS):]: v for k, v in maps.items() if k.startswith(OUTPUTS)}
        hm.concepts = HeatMaps(alignment, cross, hm.size, hm.image, hm.timesteps, hm.steps)
        if outputs:
            hm.concept_outputs = HeatMaps(alignment, outputs, hm.size, hm.image, hm.timesteps, hm.steps)
    if REFERENCE in meta["files"]:
        try:
            hm.reference = load_file(path / REFERENCE)["reference"]
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise ExperimentError(f"{path / REFERENCE} is not a readable reference map ({e}); re-run the "
                                  "experiment") from e


def load_experiment(path: str | os.PathLike) -> tuple[HeatMaps, dict]:
    """Load a folder written by :func:`save_experiment`: ``(heat_maps, meta)``. Never unpickles anything."""
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
                                  "re-run the experiment (in a runner's output folder, run the runner again: it "
                                  "regenerates damaged items)")
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
    image = None
    if IMAGE in meta["files"]:
        image = _read_png(path, IMAGE, meta, "RGB", same_size=True)
    hm = HeatMaps(alignment, maps, tuple(meta["size"]), image, meta.get("timesteps"), meta["steps"])
    hm.order = meta.get("order", 1)
    _load_extras(path, meta, hm)
    return hm, meta
