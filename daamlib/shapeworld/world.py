"""ShapeWorld: procedural 64×64 scenes with captions and an exact ground-truth mask for every word.

A scene is a background (a plain colour, or a texture the caption names: grass, sand, water, sky)
and one to three flat shapes. Captions come from a small grammar::

    a red circle above a blue square on grass
    two green triangles
    a large striped hexagon next to a yellow star in the sky

Each word that denotes a region gets a mask: a noun → its object(s), a colour/size/pattern adjective
→ the object it modifies, a numeral → the objects it counts, a background word → the background.
Function words (``a``, ``above``, ``left``, ``of``, ``the`` …) get none.

Everything is deterministic from ``(seed, split, index)``: ``ShapeWorld().scene("train", 17)`` is
the same scene on every machine. Splits partition captions by hash (train never sees a val or test
caption string) and the *unreal* split holds the colour–shape and shape–shape combinations that
never occur in train, val or test (the analogue of the paper's Unreal-Gen).

>>> world = ShapeWorld()
>>> s = world.scene("val", 0)
>>> s.image.shape, s.image.dtype
((64, 64, 3), dtype('uint8'))
>>> all(m.shape == (64, 64) for m in s.masks.values())
True
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # image side, pixels
SS = 4  # supersampling factor for anti-aliased shape edges

# hypernym → shapes (cohyponyms share a hypernym). What the images themselves carry: the *round* shapes share a
# curved outline (circle, ellipse, semicircle, ring), the *polygons* straight edges and convex corners (square,
# triangle, pentagon, hexagon), the *pointed* ones sharp tips (star, diamond, arrow); the *symbols* (heart, cross,
# crescent) share nothing visual, only the name. Captions never say the family: ShapeWorld-CLIP
# (daamlib.shapeworld.clip) learns it from training captions that name it (``a red polygon``), made from these
# scenes, so no scene changes. Changing this order would change every scene (SHAPES is drawn from it).
ONTOLOGY: dict[str, tuple[str, ...]] = {
    "polygon": ("square", "triangle", "pentagon", "hexagon"),
    "round": ("circle", "ellipse", "semicircle", "ring"),
    "pointed": ("star", "diamond", "arrow"),
    "symbol": ("heart", "cross", "crescent"),
}
SHAPES: tuple[str, ...] = tuple(s for group in ONTOLOGY.values() for s in group)
HYPERNYM: dict[str, str] = {s: h for h, group in ONTOLOGY.items() for s in group}
PLURAL: dict[str, str] = {s: s + ("es" if s.endswith(("ss", "x")) or s == "cross" else "s") for s in SHAPES}
PLURAL["ellipse"] = "ellipses"

# Object colours, chosen far apart from each other and from the background textures below.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (30, 200, 80),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
PATTERN_SHADE = 0.55  # stripes and dots are the object's colour times this
SIZES = ("small", "large")
PATTERNS = ("striped", "dotted")
NUMERALS = {2: "two", 3: "three"}
RELATIONS = ("above", "below", "left of", "right of", "next to", "inside", "touching", "overlapping", "and")
# textured backgrounds are named in the caption; plain ones are not
BACKGROUND_PHRASES = {"grass": "on grass", "sand": "on sand", "water": "on water", "sky": "in the sky"}
PLAIN_BACKGROUNDS = {"gray": (128, 128, 128), "white": (225, 225, 220), "dark": (50, 50, 55)}
BACKGROUND_WORDS = tuple(BACKGROUND_PHRASES)

# Held out of train/val/test: the "unreal" split is made of scenes containing at least one of them.
HELD_OUT_COLOUR_SHAPE: tuple[tuple[str, str], ...] = (
    ("blue", "heart"),
    ("yellow", "hexagon"),
    ("green", "star"),
    ("red", "ellipse"),
    ("purple", "arrow"),
    ("orange", "cross"),
)
HELD_OUT_SHAPE_PAIRS: tuple[tuple[str, str], ...] = (
    ("square", "star"),
    ("circle", "cross"),
    ("triangle", "crescent"),
    ("hexagon", "heart"),
)

SPLITS = ("train", "val", "test", "unreal")
_SPLIT_ID = {"train": 0, "val": 1, "test": 2, "unreal": 3}
_HASH_MOD = 20  # crc32(caption) % 20: 0 → test, 1 → val, otherwise train
CONTAINERS = ("square", "circle", "hexagon", "pentagon")  # shapes another can sit "inside"

# Shape aspect (width, height) relative to the size s; others are s × s.
_ASPECT = {"ellipse": (1.3, 0.75), "diamond": (0.8, 1.2), "semicircle": (1.3, 0.65), "arrow": (1.25, 0.8)}
# size ranges (pixels) by size word; None = no size word
_SIZE_RANGE = {"small": (14, 17), None: (19, 26), "large": (29, 36)}
_PAIR_LARGE = (27, 30)  # "large" in two-object scenes, so that two fit


def all_words() -> list[str]:
    """Every word a ShapeWorld caption can contain (the tokenizer must make each one token)."""
    words = set(SHAPES) | set(PLURAL.values()) | set(COLOURS) | set(SIZES) | set(PATTERNS)
    words |= set(NUMERALS.values()) | set(BACKGROUND_WORDS) | {"a", "an", "on", "in", "the"}
    for rel in RELATIONS:
        words |= set(rel.split())
    return sorted(words)


@dataclass
class Obj:
    """One object of a scene. ``bbox`` is ``(x0, y0, x1, y1)`` in pixels, exclusive end."""

    shape: str
    colour: str
    size: str | None = None  # size word used in the caption (None: unmarked, medium)
    pattern: str | None = None
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    mask: np.ndarray | None = field(default=None, repr=False)  # visible pixels, bool [H, W]


@dataclass
class Scene:
    """A rendered scene. ``masks[i]`` is the ground-truth region of ``words[i]`` (bool [H, W])."""

    image: np.ndarray  # uint8 [H, W, 3]
    caption: str
    words: list[str]
    masks: dict[int, np.ndarray]
    objects: list[Obj]
    background: str  # grass | sand | water | sky | gray | white | dark
    background_mask: np.ndarray  # bool [H, W], pixels covered by no object
    kind: str  # single | count | pair
    relation: str | None
    split: str
    index: int
    roles: dict[int, str] = field(default_factory=dict)  # word index → noun/colour/size/pattern/numeral/background

    def word_mask(self, word: str) -> np.ndarray:
        """The mask of the first occurrence of ``word``."""
        for i, w in enumerate(self.words):
            if w == word and i in self.masks:
                return self.masks[i]
        raise KeyError(f"{word!r} has no mask in {self.caption!r}; words with masks: "
                       + ", ".join(self.words[i] for i in sorted(self.masks)))


# ----------------------------------------------------------------------------------------------
# Shape rasterisation: each shape is drawn in its own box at SS× resolution, then box-filtered.


def _regular(n: int, w: float, h: float, phase: float) -> list[tuple[float, float]]:
    a = phase + 2 * np.pi * np.arange(n) / n
    return list(zip(w / 2 + w / 2 * np.cos(a), h / 2 + h / 2 * np.sin(a)))


def _draw(shape: str, w: int, h: int) -> np.ndarray:
    """Coverage in [0, 1] of ``shape`` filling a ``w × h`` pixel box, float32 [h, w]."""
    W, H = w * SS, h * SS
    img = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(img)
    e = 0.5  # keep edges inside the box
    if shape == "square":
        d.rectangle([e, e, W - 1 - e, H - 1 - e], fill=255)
    elif shape == "triangle":
        d.polygon([(W / 2, e), (W - e, H - e), (e, H - e)], fill=255)
    elif shape == "pentagon":
        pts = _regular(5, W, H * 1.1, -np.pi / 2)
        d.polygon([(x, y) for x, y in pts], fill=255)
    elif shape == "hexagon":
        d.polygon(_regular(6, W, H, 0.0), fill=255)
    elif shape in ("circle", "ellipse"):
        d.ellipse([e, e, W - e, H - e], fill=255)
    elif shape == "semicircle":
        d.pieslice([e, e, W - e, 2 * H - e], 180, 360, fill=255)
    elif shape == "ring":
        d.ellipse([e, e, W - e, H - e], fill=255)
        t = 0.26 * W
        d.ellipse([t, t, W - t, H - t], fill=0)
    elif shape == "star":
        a = -np.pi / 2 + np.pi * np.arange(10) / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        d.polygon(list(zip(W / 2 + W / 2 * r * np.cos(a), H * 0.55 + H * 0.55 * r * np.sin(a))), fill=255)
    elif shape == "diamond":
        d.polygon([(W / 2, e), (W - e, H / 2), (W / 2, H - e), (e, H / 2)], fill=255)
    elif shape == "arrow":
        s0, s1, hx = 0.3 * H, 0.7 * H, 0.5 * W
        d.polygon([(e, s0), (hx, s0), (hx, e), (W - e, H / 2), (hx, H - e), (hx, s1), (e, s1)], fill=255)
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 60)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        x = (x - x.min()) / (x.max() - x.min()) * (W - 2 * e) + e
        y = (y - y.min()) / (y.max() - y.min()) * (H - 2 * e) + e
        d.polygon(list(zip(x, y)), fill=255)
    elif shape == "cross":
        a0, a1 = 0.32, 0.68
        d.rectangle([a0 * W, e, a1 * W, H - e], fill=255)
        d.rectangle([e, a0 * H, W - e, a1 * H], fill=255)
    elif shape == "crescent":
        d.ellipse([e, e, W - e, H - e], fill=255)
        d.ellipse([0.38 * W, -0.05 * H, 1.25 * W, 1.05 * H], fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes are: {', '.join(SHAPES)}")
    a = np.asarray(img, dtype=np.float32).reshape(h, SS, w, SS).mean(axis=(1, 3)) / 255.0
    return a


_SHAPE_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


def shape_coverage(shape: str, w: int, h: int) -> np.ndarray:
    """Cached :func:`_draw` (a few hundred distinct boxes exist)."""
    key = (shape, w, h)
    a = _SHAPE_CACHE.get(key)
    if a is None:
        a = _SHAPE_CACHE[key] = _draw(shape, w, h)
    return a


def shape_box(shape: str, s: int) -> tuple[int, int]:
    aw, ah = _ASPECT.get(shape, (1.0, 1.0))
    return max(6, int(round(s * aw))), max(6, int(round(s * ah)))


# ----------------------------------------------------------------------------------------------
# Backgrounds


def _background(name: str, rng: np.random.Generator) -> np.ndarray:
    """Float32 [H, W, 3] in 0..255."""
    H = W = SIZE
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    if name in PLAIN_BACKGROUNDS:
        return np.broadcast_to(np.array(PLAIN_BACKGROUNDS[name], np.float32), (H, W, 3)).copy()
    if name == "grass":  # dark green with vertical blades
        blades = rng.normal(0, 1, (H // 4 + 1, W)).repeat(4, axis=0)[:H]
        v = 20 * np.clip(blades, -1.5, 1.5) + rng.normal(0, 4, (H, W))
        base = np.array([60, 115, 40], np.float32)
        return base + v[..., None] * np.array([0.5, 1.0, 0.5], np.float32)
    if name == "sand":  # beige speckle with faint ripples
        ph = rng.uniform(0, 2 * np.pi)
        v = 8 * np.sin(0.5 * yy + 0.2 * xx + ph) + rng.normal(0, 7, (H, W))
        return np.array([215, 185, 125], np.float32) + v[..., None]
    if name == "water":  # dark teal with light wave lines
        ph = rng.uniform(0, 2 * np.pi)
        waves = np.clip(np.sin(0.9 * yy + 2.0 * np.sin(0.25 * xx + ph)) - 0.3, 0, None) / 0.7
        base = np.array([20, 80, 110], np.float32)
        return base + waves[..., None] * np.array([20, 35, 30], np.float32) + rng.normal(0, 3, (H, W, 1))
    if name == "sky":  # vertical gradient, darker blue at the top
        top, bottom = np.array([90, 150, 225], np.float32), np.array([175, 210, 240], np.float32)
        t = (yy / (H - 1))[..., None]
        return top * (1 - t) + bottom * t + rng.normal(0, 2, (H, W, 1))
    raise ValueError(f"unknown background {name!r}")


def _pattern_mask(pattern: str | None, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
    if pattern is None:
        return None
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    if pattern == "striped":
        return (xx + yy) % 6 < 2
    if pattern == "dotted":
        return (xx % 5 < 2) & (yy % 5 < 2)
    raise ValueError(pattern)


# ----------------------------------------------------------------------------------------------
# Scene grammar


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _np(o: Obj) -> list[tuple[str, str | None]]:
    """Words of a noun phrase with their roles: [(word, role)]."""
    words: list[tuple[str, str | None]] = []
    if o.size:
        words.append((o.size, "size"))
    if o.pattern:
        words.append((o.pattern, "pattern"))
    if getattr(o, "_say_colour", True):
        words.append((o.colour, "colour"))
    words.append((o.shape, "noun"))
    return [(_article(words[0][0]), None)] + words


class _Retry(Exception):
    pass


def _one_after_the_other(boxes, first: int, gap: int, along: int, rng, m: int):
    """Place two boxes ``gap`` px apart along an axis (0: x, ``first`` on the left; 1: y, ``first`` on top),
    centred on a shared line across it, the second shifted by up to 4 px."""
    second, across = 1 - first, 1 - along
    if boxes[first][along] + boxes[second][along] + gap > SIZE - 2 * m:
        raise _Retry
    a_first = int(rng.integers(m, SIZE - m - boxes[first][along] - gap - boxes[second][along] + 1))
    a_second = a_first + boxes[first][along] + gap
    span = max(boxes[0][across], boxes[1][across])
    centre = rng.integers(m + span // 2, SIZE - m - span // 2 + 1)
    shift = rng.integers(-4, 5)
    pos = [None, None]
    for i, a, d in ((first, a_first, 0), (second, a_second, shift)):
        c = int(np.clip(centre + d - boxes[i][across] // 2, m, SIZE - m - boxes[i][across]))
        pos[i] = (a, c) if along == 0 else (c, a)
    return _boxes(pos, boxes)


class ShapeWorld:
    """Deterministic scene generator. ``scene(split, index)`` is a pure function of ``(seed, split, index)``.

    ``kinds`` weights the scene types: ``single`` (one object), ``count`` (two or three alike),
    ``pair`` (two objects and a relation).
    """

    def __init__(self, seed: int = 0, kinds: dict[str, float] | None = None,
                 p_colour: float = 0.85, p_size: float = 0.25, p_pattern: float = 0.15,
                 p_textured: float = 0.6):
        self.seed = seed
        self.kinds = kinds or {"single": 0.25, "count": 0.15, "pair": 0.60}
        self.p_colour, self.p_size, self.p_pattern, self.p_textured = p_colour, p_size, p_pattern, p_textured

    # -- public API ------------------------------------------------------------------------
    def scene(self, split: str, index: int, kind: str | None = None) -> Scene:
        """Scene number ``index`` of ``split`` (train | val | test | unreal); ``kind`` forces a scene type."""
        if split not in _SPLIT_ID:
            raise ValueError(f"unknown split {split!r}; splits are: {', '.join(SPLITS)}")
        rng = np.random.default_rng([self.seed, _SPLIT_ID[split], index, {None: 0, "single": 1, "count": 2, "pair": 3}[kind]])
        for _ in range(10_000):
            if split == "unreal":
                k = "pair"
            elif kind is not None:
                k = kind
            else:
                names = list(self.kinds)
                p = np.array([self.kinds[n] for n in names], float)
                k = names[rng.choice(len(names), p=p / p.sum())]
            try:
                spec = self._spec(k, rng, unreal=split == "unreal")
                if split != "unreal" and not self._caption_in_split(spec["caption"], split):
                    continue
                return self._render(spec, rng, split, index)
            except _Retry:
                continue
        raise RuntimeError("could not sample a scene")  # pragma: no cover

    def scenes(self, split: str, start: int, n: int, kind: str | None = None) -> list[Scene]:
        return [self.scene(split, i, kind) for i in range(start, start + n)]

    @staticmethod
    def split_of_caption(caption: str) -> str:
        """train / val / test by caption hash (unreal captions are recognised by their combos)."""
        h = zlib.crc32(caption.encode()) % _HASH_MOD
        return "test" if h == 0 else "val" if h == 1 else "train"

    def _caption_in_split(self, caption: str, split: str) -> bool:
        return self.split_of_caption(caption) == split

    # -- sampling the content -----------------------------------------------------------------
    def _obj(self, rng, shape=None, colour=None, size_word=None, allow_adjs=True) -> Obj:
        shape = shape or SHAPES[rng.integers(len(SHAPES))]
        colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
        o = Obj(shape=shape, colour=colour, size=size_word)
        if allow_adjs and size_word is None and rng.random() < self.p_size:
            o.size = SIZES[rng.integers(2)]
        if allow_adjs and rng.random() < self.p_pattern:
            o.pattern = PATTERNS[rng.integers(2)]
        o._say_colour = rng.random() < self.p_colour  # type: ignore[attr-defined]
        return o

    @staticmethod
    def is_held_out(objs: list[Obj]) -> bool:
        if any((o.colour, o.shape) in HELD_OUT_COLOUR_SHAPE for o in objs):
            return True
        shapes = {o.shape for o in objs}
        return any(a in shapes and b in shapes for a, b in HELD_OUT_SHAPE_PAIRS)

    def _spec(self, kind: str, rng, unreal: bool = False) -> dict:
        textured = rng.random() < self.p_textured
        bgs = list(BACKGROUND_PHRASES) if textured else list(PLAIN_BACKGROUNDS)
        bg = bgs[rng.integers(len(bgs))]
        relation = None
        if kind == "single":
            objs = [self._obj(rng)]
            phrase = _np(objs[0])
        elif kind == "count":
            n = int(rng.integers(2, 4))
            o = self._obj(rng, allow_adjs=False)
            if rng.random() < self.p_size:
                o.size = "small" if n == 3 else SIZES[rng.integers(2)]
            if rng.random() < self.p_pattern:
                o.pattern = PATTERNS[rng.integers(2)]
            objs = [Obj(o.shape, o.colour, o.size, o.pattern) for _ in range(n)]
            phrase = [(NUMERALS[n], "numeral")]
            if o.size:
                phrase.append((o.size, "size"))
            if o.pattern:
                phrase.append((o.pattern, "pattern"))
            if o._say_colour:  # type: ignore[attr-defined]
                phrase.append((o.colour, "colour"))
            phrase.append((PLURAL[o.shape], "noun"))
        elif kind == "pair":
            relation = RELATIONS[rng.integers(len(RELATIONS))]
            if unreal:  # force at least one held-out combo
                if rng.random() < 0.5:
                    c, s = HELD_OUT_COLOUR_SHAPE[rng.integers(len(HELD_OUT_COLOUR_SHAPE))]
                    a, b = self._obj(rng, s, c), self._obj(rng)
                else:
                    s1, s2 = HELD_OUT_SHAPE_PAIRS[rng.integers(len(HELD_OUT_SHAPE_PAIRS))]
                    a, b = self._obj(rng, s1), self._obj(rng, s2)
                if rng.random() < 0.5:
                    a, b = b, a
                a._say_colour = b._say_colour = True  # type: ignore[attr-defined]
            else:
                a, b = self._obj(rng), self._obj(rng)
            if relation == "inside":
                b = self._obj(rng, CONTAINERS[rng.integers(len(CONTAINERS))], b.colour, "large")
                a.size = "small"
                if unreal and not self.is_held_out([a, b]):
                    raise _Retry
            if relation in ("inside", "touching", "overlapping") and a.colour == b.colour:
                raise _Retry
            objs = [a, b]
            phrase = _np(a) + [(w, None) for w in relation.split()] + _np(b)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        if self.is_held_out(objs) != unreal:
            raise _Retry
        if textured:
            phrase = phrase + [(w, "background" if w == bg else None) for w in BACKGROUND_PHRASES[bg].split()]
        caption = " ".join(w for w, _ in phrase)
        return {"kind": kind, "objs": objs, "bg": bg, "relation": relation, "phrase": phrase, "caption": caption}

    # -- layout ---------------------------------------------------------------------------------
    @staticmethod
    def _size(o: Obj, rng, pair: bool) -> int:
        lo, hi = _PAIR_LARGE if (pair and o.size == "large") else _SIZE_RANGE[o.size]
        return int(rng.integers(lo, hi + 1))

    def _layout(self, spec: dict, rng) -> list[tuple[int, int, int, int]]:
        objs, rel, kind = spec["objs"], spec["relation"], spec["kind"]
        m = 2  # margin to the image border
        boxes = [shape_box(o.shape, self._size(o, rng, kind != "single")) for o in objs]
        if rel == "inside":
            boxes[1] = shape_box(objs[1].shape, int(rng.integers(34, 43)))
        if any(w > SIZE - 2 * m or h > SIZE - 2 * m for w, h in boxes):
            raise _Retry

        g0 = 4 if len(objs) == 2 and objs[0].colour == objs[1].colour else 2  # same colours stay apart

        def rand_pos(w, h):
            return int(rng.integers(m, SIZE - m - w + 1)), int(rng.integers(m, SIZE - m - h + 1))

        for _ in range(30):
            pos = [rand_pos(w, h) for w, h in boxes]
            if kind != "pair" or rel == "and":
                ok = all(_gap(pos[i], boxes[i], pos[j], boxes[j]) >= 3 for i in range(len(objs)) for j in range(i))
                if ok:
                    return _boxes(pos, boxes)
                continue
            (wa, ha), (wb, hb) = boxes
            (xa, ya), (xb, yb) = pos
            if rel in ("above", "below", "left of", "right of", "next to"):
                if rel == "next to":
                    first = int(rng.integers(2))
                    g = int(rng.integers(g0 - 1, g0 + 4))
                else:
                    first = 0 if rel in ("above", "left of") else 1
                    g = int(rng.integers(g0, 9))
                return _one_after_the_other(boxes, first, g, 1 if rel in ("above", "below") else 0, rng, m)
            if rel == "inside":
                inner = _place_mask(objs[0].shape, boxes[0])
                outer = _place_mask(objs[1].shape, boxes[1])
                from scipy.ndimage import binary_erosion

                core = binary_erosion(outer > 0.5, iterations=2)
                (wi, hi_), (wo, ho) = boxes
                xo, yo = rand_pos(wo, ho)
                for _ in range(20):
                    dx, dy = int(rng.integers(0, wo - wi + 1)), int(rng.integers(0, ho - hi_ + 1))
                    sub = core[dy : dy + hi_, dx : dx + wi]
                    if sub.shape == inner.shape and np.all(sub[inner > 0.05]):
                        return _boxes([(xo + dx, yo + dy), (xo, yo)], boxes)
                raise _Retry
            if rel in ("touching", "overlapping"):
                # slide b towards a along a random direction until they touch / overlap enough
                ca = _place_mask(objs[0].shape, boxes[0]) > 0.5
                cb = _place_mask(objs[1].shape, boxes[1]) > 0.5
                ang = rng.uniform(0, 2 * np.pi)
                ux, uy = np.cos(ang), np.sin(ang)
                xa, ya = rand_pos(wa, ha)
                cax, cay = xa + wa / 2, ya + ha / 2
                want = (0.12, 0.35)
                prev = None
                for r in np.arange(SIZE, -1, -1.0):
                    xb_ = int(round(cax + ux * r - wb / 2))
                    yb2 = int(round(cay + uy * r - hb / 2))
                    if not (m <= xb_ <= SIZE - m - wb and m <= yb2 <= SIZE - m - hb):
                        continue
                    A = np.zeros((SIZE, SIZE), bool)
                    B = np.zeros((SIZE, SIZE), bool)
                    A[ya : ya + ha, xa : xa + wa] = ca
                    B[yb2 : yb2 + hb, xb_ : xb_ + wb] = cb
                    inter = (A & B).sum()
                    if rel == "touching":
                        if inter > 0:
                            if prev is None:
                                break
                            return _boxes([(xa, ya), prev], boxes)
                        from scipy.ndimage import binary_dilation

                        if (binary_dilation(A) & B).any():
                            return _boxes([(xa, ya), (xb_, yb2)], boxes)
                    else:
                        frac = inter / min(ca.sum(), cb.sum())
                        if want[0] <= frac <= want[1]:
                            return _boxes([(xa, ya), (xb_, yb2)], boxes)
                        if frac > want[1]:
                            break
                    prev = (xb_, yb2)
                continue
        raise _Retry

    # -- rendering ----------------------------------------------------------------------------
    def _render(self, spec: dict, rng, split: str, index: int) -> Scene:
        objs: list[Obj] = spec["objs"]
        bboxes = self._layout(spec, rng)
        img = _background(spec["bg"], rng)
        label = np.full((SIZE, SIZE), -1, np.int16)
        # "a overlapping b": a is drawn on top; "a inside b": a on top of b
        order = list(range(len(objs)))
        if spec["relation"] in ("overlapping", "inside"):
            order = [1, 0]
        for i in order:
            o = objs[i]
            x0, y0, x1, y1 = bboxes[i]
            o.bbox = bboxes[i]
            a = shape_coverage(o.shape, x1 - x0, y1 - y0)
            col = np.broadcast_to(np.array(COLOURS[o.colour], np.float32), (y1 - y0, x1 - x0, 3)).copy()
            pm = _pattern_mask(o.pattern, x0, y0, x1 - x0, y1 - y0)
            if pm is not None:
                col[pm] *= PATTERN_SHADE
            region = img[y0:y1, x0:x1]
            img[y0:y1, x0:x1] = region * (1 - a[..., None]) + col * a[..., None]
            label[y0:y1, x0:x1][a > 0.5] = i
        image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        for i, o in enumerate(objs):
            o.mask = label == i
            if o.mask.sum() < 20:
                raise _Retry
        bg_mask = label < 0
        words = [w for w, _ in spec["phrase"]]
        roles = {j: r for j, (_, r) in enumerate(spec["phrase"]) if r is not None}
        masks: dict[int, np.ndarray] = {}
        if spec["kind"] == "count":
            union = label >= 0
            for j, r in roles.items():
                masks[j] = bg_mask if r == "background" else union
        else:
            # noun phrases in order; each adjective/noun maps to the object of its phrase
            obj_i = 0
            for j, (w, r) in enumerate(spec["phrase"]):
                if r == "background":
                    masks[j] = bg_mask
                elif r is not None:
                    masks[j] = objs[obj_i].mask
                    if r == "noun":
                        obj_i += 1
        return Scene(image=image, caption=spec["caption"], words=words, masks=masks, objects=objs,
                     background=spec["bg"], background_mask=bg_mask, kind=spec["kind"],
                     relation=spec["relation"], split=split, index=index, roles=roles)


def _place_mask(shape: str, box: tuple[int, int]) -> np.ndarray:
    return shape_coverage(shape, box[0], box[1])


def _boxes(pos, boxes) -> list[tuple[int, int, int, int]]:
    return [(x, y, x + w, y + h) for (x, y), (w, h) in zip(pos, boxes)]


def _gap(pa, ba, pb, bb) -> int:
    """Chebyshev gap between two boxes (negative if they overlap)."""
    dx = max(pb[0] - (pa[0] + ba[0]), pa[0] - (pb[0] + bb[0]))
    dy = max(pb[1] - (pa[1] + ba[1]), pa[1] - (pb[1] + bb[1]))
    return max(dx, dy)
