"""The item table of an experiment run: read it from a file, a DataFrame or dicts, and check every row.

>>> read_items([{"id": "cat-0", "prompt": "a cat", "seed": 0, "steps": 30, "split": "Gen"}])   # doctest: +SKIP
[Item(id='cat-0', prompt='a cat', seed=0, settings={'steps': 30, ...}, info={'split': 'Gen'})]

One row per item: ``id`` (a safe folder name), ``prompt``, ``seed`` and, optionally, the settings
``steps``, ``guidance``, ``height``, ``width``, ``negative_prompt`` (diffusers' names
``num_inference_steps`` and ``guidance_scale`` are accepted too), and for an edit ``image`` (a path, relative to
the table's folder), ``mask`` (inpainting: white is repainted) and ``strength``. Other columns are kept as ``info``.
Every bad row is reported at once, before anything is generated (:class:`ItemError`).
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the checks of single values live with the settings object, below every module that needs them
from .settings import _plain, check_prompt, check_seed, check_setting

SETTINGS = ("steps", "guidance", "height", "width", "negative_prompt", "image", "mask", "strength")
EDIT = ("image", "mask", "strength")  # an edit's: the image to edit (a path), inpainting's mask (a path), strength
ALIASES = {"num_inference_steps": "steps", "guidance_scale": "guidance", "mask_image": "mask"}  # diffusers' names
REQUIRED = ("id", "prompt", "seed")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ItemError(ValueError):
    """A row of the item table is unusable (bad id, prompt, seed or setting); the message names the row."""


@dataclass(frozen=True)
class Item:
    """One row of the table: what to generate and where."""

    id: str  # folder name under items/
    prompt: str
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)  # steps, guidance, height, width, negative_prompt; None: default
    info: dict[str, Any] = field(default_factory=dict)  # other columns: kept in the manifest, not used to generate


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


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


def _read_csv(path: Path) -> list[dict]:
    """CSV rows as dicts; a UTF-8 byte-order mark (Excel's "CSV UTF-8") is fine; a row with more fields than the
    header (an unquoted comma in a prompt) is an error naming its line."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row:
                raise ItemError(f"{path}, line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} fields but "
                                f"the header has {len(reader.fieldnames)} ({', '.join(reader.fieldnames)}); a prompt "
                                'with a comma must be in double quotes: 1,"a cat, and a dog",0')
            rows.append(row)
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ItemError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}); each line must be one "
                            'object such as {"id": "cat-0", "prompt": "a cat", "seed": 0}') from None
    return rows


def _rows(items) -> list[dict]:
    """A list of dicts from a path (.csv, .jsonl, .json), a DataFrame, or an iterable of dicts / Items."""
    if isinstance(items, (str, os.PathLike)):
        path = Path(items)
        if not path.is_file():
            raise FileNotFoundError(f"item table {path} does not exist; pass a .csv, .jsonl or .json file "
                                    "with columns id, prompt, seed")
        try:
            if path.suffix == ".csv":
                return _read_csv(path)
            if path.suffix == ".jsonl":
                return _read_jsonl(path)
            if path.suffix == ".json":
                try:
                    rows = json.loads(path.read_text(encoding="utf-8-sig"))
                except json.JSONDecodeError as e:
                    raise ItemError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}); the file must hold a list of "
                                    'objects such as [{"id": "cat-0", "prompt": "a cat", "seed": 0}]') from None
                if not isinstance(rows, list):
                    raise ItemError(f"{path} holds a JSON {type(rows).__name__}; it must be a list of items (dicts)")
                return rows
        except UnicodeDecodeError as e:
            line = path.read_bytes()[: e.start].count(b"\n") + 1
            raise ItemError(f"{path}, line {line}: byte 0x{e.object[e.start]:02x} is not UTF-8 (the file is in another "
                            "encoding, e.g. Latin-1 or Windows-1252); save it as UTF-8 (in Excel: \"CSV UTF-8\") and "
                            "run again") from None
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
    known = set(REQUIRED) | set(SETTINGS) | set(ALIASES)
    base = {}
    for k, v in (defaults or {}).items():
        k = ALIASES.get(k, k)
        if k not in SETTINGS:
            raise ItemError(f"unknown default setting {k!r}; settings are: {', '.join(SETTINGS)}")
        if not _missing(v):
            try:
                base[k] = check_setting(k, v)
            except ValueError as e:
                raise ItemError(f"the default {e} (--{k.replace('_', '-')} / defaults={{{k!r}: ...}})") from None

    out: list[Item] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    rows = _rows(items)
    if not rows:
        raise ItemError("the item table is empty; give at least one row with id, prompt and seed")
    for n, row in enumerate(rows):
        if not isinstance(row, Mapping):
            errors.append(f"row {n}: must be an object with id, prompt and seed, got {type(row).__name__} {row!r:.60}")
            continue
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
            seed = check_seed(row["seed"])
            settings = dict.fromkeys(SETTINGS)
            settings.update(base)
            for col, v in row.items():
                col = ALIASES.get(col, col)
                if col in SETTINGS and not _missing(v):
                    settings[col] = check_setting(col, v)
            if settings["image"] is None and (settings["mask"] is not None or settings["strength"] is not None):
                raise ValueError("mask and strength belong to an edit: give the image to edit in the image column")
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
