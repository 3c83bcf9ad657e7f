"""Resumable experiment runs: one experiment folder per item of a table, sharded with accelerate.

    python -m daamlib.runner items.csv --model tiny-sd1 --out runs/demo [--overwrite]
    accelerate launch --num_processes 4 -m daamlib.runner items.csv --model stabilityai/stable-diffusion-2-base --out runs/sd2

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
import csv
import difflib
import json
import math
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .io import META, ExperimentError, _read_meta

SETTINGS = ("steps", "guidance", "height", "width", "negative_prompt")
ALIASES = {"num_inference_steps": "steps", "guidance_scale": "guidance"}  # diffusers' names, accepted too
REQUIRED = ("id", "prompt", "seed")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ITEMS, MANIFEST, LOG, LOCKS = "items", "manifest", "log", ".locks"


class ItemError(ValueError):
    """A row of the item table is unusable (bad id, prompt, seed or setting); the message names the row."""


class SettingsChangedError(ExperimentError):
    """A finished item would be generated with other settings; pass ``overwrite=True`` to replace it."""


@dataclass(frozen=True)
class Item:
    """One row of the table: what to generate and where."""

    id: str  # folder name under items/
    prompt: str
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)  # steps, guidance, height, width, negative_prompt; None: default
    info: dict[str, Any] = field(default_factory=dict)  # other columns: kept in the manifest, not used to generate


# -- reading and checking the table --------------------------------------------------------------
def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _plain(v):
    """numpy / pandas scalars → Python ones, so that JSON and comparisons behave."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


def _as_int(v, name: str, minimum: int) -> int:
    v = _plain(v)
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if int(v) < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {int(v)}")
    return int(v)


def _as_float(v, name: str) -> float:
    v = _plain(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if isinstance(v, bool) or not math.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return f


def _check_setting(name: str, v):
    if name == "steps":
        return _as_int(v, "steps", 1)
    if name in ("height", "width"):
        return _as_int(v, name, 8)
    if name == "guidance":
        return _as_float(v, "guidance")
    if not isinstance(v, str):
        raise ValueError(f"{name} must be a string, got {type(v).__name__} {v!r}")
    return v


def check_id(item_id) -> str:
    """``item_id`` as a safe folder name, or a ValueError that says which characters are allowed."""
    item_id = _plain(item_id)
    if isinstance(item_id, float) and item_id.is_integer():
        item_id = int(item_id)
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not _SAFE_ID.fullmatch(item_id):
        raise ValueError(f"id {item_id!r} is not a safe folder name; use 1–100 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit (e.g. 'cat-001')")
    return item_id


def _rows(items) -> list[dict]:
    """A list of dicts from a path (.csv, .jsonl, .json), a DataFrame, or an iterable of dicts / Items."""
    if isinstance(items, (str, os.PathLike)):
        path = Path(items)
        if not path.is_file():
            raise FileNotFoundError(f"item table {path} does not exist; pass a .csv, .jsonl or .json file "
                                    "with columns id, prompt, seed")
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise ItemError(f"{path} holds a JSON {type(rows).__name__}; it must be a list of items (dicts)")
            return rows
        raise ItemError(f"cannot read an item table from {path.name}; use .csv, .jsonl or .json")
    if hasattr(items, "to_dict"):  # a pandas DataFrame
        return items.to_dict("records")
    rows = []
    for r in items:
        if isinstance(r, Item):
            r = {"id": r.id, "prompt": r.prompt, "seed": r.seed, **r.settings, **r.info}
        if not isinstance(r, Mapping):
            raise ItemError(f"each item must be a dict with id, prompt and seed, got {type(r).__name__} {r!r}")
        rows.append(dict(r))
    return rows


def read_items(items, defaults: Mapping[str, Any] | None = None) -> list[Item]:
    """Check a table of items and return them as :class:`Item` s, or raise one :class:`ItemError` listing every bad row.

    ``defaults`` gives settings for rows that leave them empty (``{"steps": 30}``).
    """
    from .pipeline import check_prompt

    known = set(REQUIRED) | set(SETTINGS) | set(ALIASES)
    base = {}
    for k, v in (defaults or {}).items():
        k = ALIASES.get(k, k)
        if k not in SETTINGS:
            raise ItemError(f"unknown default setting {k!r}; settings are: {', '.join(SETTINGS)}")
        if not _missing(v):
            base[k] = _check_setting(k, v)

    out: list[Item] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    rows = _rows(items)
    if not rows:
        raise ItemError("the item table is empty; give at least one row with id, prompt and seed")
    for n, row in enumerate(rows):
        where = f"row {n}" + (f" (id {row['id']!r})" if "id" in row and not _missing(row["id"]) else "")
        try:
            # a blank prompt is present but empty: check_prompt below says so
            absent = [c for c in REQUIRED
                      if c not in row or _missing(row[c]) and not (c == "prompt" and isinstance(row[c], str))]
            if absent:
                raise ValueError(f"no {', '.join(map(repr, absent))}; every row needs id, prompt and seed")
            for col in row:
                if col not in known:
                    near = difflib.get_close_matches(col, sorted(known), n=1, cutoff=0.8)
                    if near:
                        raise ValueError(f"unknown column {col!r}: did you mean {near[0]!r}? Rename it "
                                         f"(settings are: {', '.join(SETTINGS)})")
            item_id = check_id(row["id"])
            prompt = row["prompt"]
            try:
                check_prompt(prompt)
            except (TypeError, ValueError) as e:
                raise ValueError(str(e)) from None
            if not isinstance(prompt, str):
                raise ValueError(f"prompt must be one string per row, got {type(prompt).__name__} {prompt!r}")
            seed = _as_int(row["seed"], "seed", 0)
            settings = dict.fromkeys(SETTINGS)
            settings.update(base)
            for col, v in row.items():
                col = ALIASES.get(col, col)
                if col in SETTINGS and not _missing(v):
                    settings[col] = _check_setting(col, v)
            info = {c: None if _missing(v) and not isinstance(v, str) else _plain(v) for c, v in row.items() if c not in known}
            try:
                json.dumps(info, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ValueError(f"the other columns must hold plain values (text, numbers) for the manifest: {e}") from None
            other = seen.get(item_id.lower())
            if other is not None:
                raise ValueError(f"id {item_id!r} is used again (first by {other}); ids name folders, so they must be "
                                 "unique (also ignoring case)")
            seen[item_id.lower()] = f"row {n}"
            out.append(Item(item_id, prompt, seed, settings, info))
        except ValueError as e:
            errors.append(f"{where}: {e}")
    if errors:
        shown = "\n  ".join(errors[:10]) + (f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else "")
        raise ItemError(f"{len(errors)} bad row(s) in the item table; fix them and run again:\n  {shown}")
    return out


# -- the output folder -----------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)
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
    line = json.dumps({"event": event, "time": _now(), "host": socket.gethostname(), "pid": os.getpid(), **extra})
    with open(out / LOG / f"{item_id}.jsonl", "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _wanted(item: Item, run_settings: Mapping[str, Any]) -> dict:
    """What an item's output depends on, as JSON would return it: compared with a finished item's meta.json."""
    return json.loads(json.dumps({"prompt": item.prompt, "seed": item.seed, "settings": {**item.settings, **run_settings}}))


def _differences(have: Mapping, want: Mapping) -> dict[str, tuple]:
    diffs = {}
    for k in ("prompt", "seed"):
        if have.get(k) != want[k]:
            diffs[k] = (have.get(k), want[k])
    old, new = have.get("settings") or {}, want["settings"]
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            diffs[k] = (old.get(k), new.get(k))
    return diffs


def _describe(diffs: Mapping[str, tuple]) -> str:
    return ", ".join(f"{k}: {a!r} → {b!r}" for k, a, b in ((k, *v) for k, v in diffs.items()))


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"{out} is a file, not an output folder; choose another --out / out_dir")
    for sub in (ITEMS, MANIFEST, LOG, LOCKS):
        (out / sub).mkdir(parents=True, exist_ok=True)


def _check_finished(out: Path, items: Iterable[Item], run_settings: Mapping[str, Any]) -> None:
    """Refuse, before generating anything, when a finished item's settings differ from the table's."""
    problems = []
    for item in items:
        folder = out / ITEMS / item.id
        if not folder.is_dir():
            continue
        try:
            meta = _read_meta(folder)
        except ExperimentError as e:
            problems.append(f"{item.id}: {e}")
            continue
        diffs = _differences(meta, _wanted(item, run_settings))
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
    """The manifest record of an item (None if absent), checked against the item's meta.json."""
    f = out / MANIFEST / f"{item_id}.json"
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text())
        if not isinstance(rec, dict) or rec.get("id") != item_id:
            raise ValueError(f"it describes id {rec.get('id') if isinstance(rec, dict) else None!r}")
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise ExperimentError(f"{f} is unreadable ({e}); it was damaged or edited by hand — delete it and run again: "
                              f"it is rebuilt from {ITEMS}/{item_id}/{META}") from e
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
                    progress: bool = True) -> list[dict]:
    """Generate every item of ``items`` not yet finished in ``out_dir``; return one record per item of this process.

    ``pipe_or_model_id``: a loaded pipeline, or anything :func:`daamlib.load_pipeline` takes (then
    ``device``, ``dtype`` and ``scheduler`` are used to load it; ``device`` defaults to accelerate's).
    ``items``: a path (.csv/.jsonl/.json), a DataFrame or dicts with ``id, prompt, seed`` and settings
    (see :func:`read_items`). ``model_name`` is what the model is recorded as (default: the id
    given, or the pipeline's ``name_or_path``); with the scheduler and dtype it is part of every
    item's settings. ``shard=(index, count)`` overrides accelerate's process index and count.

    Each record is the manifest record plus ``status`` (``"generated"``, ``"regenerated"``,
    ``"skipped"`` when already finished, ``"busy"`` when another process holds the item) and
    ``path`` (the experiment folder, for :func:`daamlib.load_experiment`).
    """
    from tqdm.auto import tqdm

    from .io import save_experiment
    from .pipeline import generate, load_pipeline, weights_fingerprint

    out = Path(out_dir)
    table = read_items(items, defaults)  # the whole table, so every process refuses the same bad input
    index, count = shard if shard is not None else _shard()
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in 0..{count - 1}")
    _check_out_dir(out)
    if isinstance(pipe_or_model_id, (str, os.PathLike)):
        model_name = model_name or str(pipe_or_model_id)
        pipe = load_pipeline(str(pipe_or_model_id), device=device or _default_device(), dtype=dtype, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)  # the item bar is enough
    else:
        pipe = pipe_or_model_id
        model_name = model_name or getattr(pipe, "name_or_path", None) or type(pipe).__name__
    unet = getattr(pipe, "unet", None)  # none: the first generation says which pipelines are supported
    run_settings = {"model": model_name, "weights": weights_fingerprint(pipe),
                    "scheduler": type(getattr(pipe, "scheduler", None)).__name__,
                    "dtype": str(getattr(unet, "dtype", None)).removeprefix("torch.")}
    if not overwrite:
        _check_finished(out, table, run_settings)

    mine = table[index::count]
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
            if folder.is_dir():
                try:
                    meta = _read_meta(folder)
                    diffs = _differences(meta, want)
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
                s = item.settings
                hm = generate(pipe, item.prompt, seed=item.seed, steps=s["steps"], guidance_scale=s["guidance"],
                              height=s["height"], width=s["width"], negative_prompt=s["negative_prompt"])
                save_experiment(folder, hm, seed=item.seed, settings=want["settings"], overwrite=status == "regenerated")
            except BaseException as e:
                _log(out, item.id, "failed", error=f"{type(e).__name__}: {e}", **who)
                raise
            seconds = round(time.perf_counter() - t0, 3)
            rec = _record(item, _read_meta(folder), finished=_now(), seconds=seconds,
                          host=socket.gethostname(), device=str(getattr(pipe, "device", None)), **who)
            _write_json_atomic(out / MANIFEST / f"{item.id}.json", rec)
            _log(out, item.id, "done", seconds=seconds, **who)
            results.append({**rec, "status": status, "path": str(folder)})
        bar.set_postfix_str(item.id, refresh=False)
    return results


def load_results(out_dir: str | os.PathLike, items=None) -> list[dict]:
    """The manifest records of a run (each with ``path`` to its experiment folder), checked against the folders.

    Without ``items``: every finished item, sorted by id. With ``items`` (the run's table): those
    items in table order, or an :class:`ExperimentError` naming the ones not finished yet.
    """
    out = Path(out_dir)
    if not (out / MANIFEST).is_dir():
        raise ExperimentError(f"{out} holds no {MANIFEST}/ folder: it is not the output of daamlib.runner; check the path")
    if items is None:
        ids = sorted(p.stem for p in (out / MANIFEST).glob("*.json") if not p.name.startswith("."))
    else:
        ids = [item.id for item in read_items(items)]
        missing = [i for i in ids if not (out / MANIFEST / f"{i}.json").is_file()]
        if missing:
            raise ExperimentError(f"{len(missing)} of {len(ids)} items are not finished in {out}: "
                                  f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; "
                                  "run the runner again to finish them")
    records = []
    for i in ids:
        folder = out / ITEMS / i
        if not folder.is_dir():
            raise ExperimentError(f"{MANIFEST}/{i}.json has no experiment folder {folder}; it was removed — "
                                  "run the runner again to regenerate it")
        records.append({**_read_record(out, i, _read_meta(folder)), "path": str(folder)})
    return records


# -- command line ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .pipeline import SCHEDULERS, TINY

    p = argparse.ArgumentParser(
        prog="python -m daamlib.runner",
        description="Generate every item of a table (id, prompt, seed, settings) into its own experiment folder; "
                    "resumable, and sharded across processes under `accelerate launch --num_processes N`.")
    p.add_argument("items", help="item table: .csv, .jsonl or .json with columns id, prompt, seed [, steps, guidance, "
                                 "height, width, negative_prompt, any other columns kept as info]")
    p.add_argument("--out", required=True, help="output folder (shared by all processes)")
    p.add_argument("--model", default=None, help=f"Hub id, local folder, 'shapeworld' (default when present) or {', '.join(TINY)}")
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
                                  progress=not args.no_progress)
    except (ItemError, ExperimentError, FileNotFoundError, OSError) as e:
        print(f"daamlib.runner: error: {e}", file=sys.stderr)
        return 2
    counts = {s: sum(r["status"] == s for r in records) for s in ("generated", "regenerated", "skipped", "busy")}
    index, count = _shard()
    print(f"process {index + 1}/{count}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" → {args.out}")
    if count > 1:
        from accelerate import PartialState

        PartialState().destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
