"""ShapeWorld-CLIP: a small CLIP (causal text transformer + conv image encoder) trained contrastively on
ShapeWorld scenes and their captions, so that a diffusion model can be conditioned on *contextual*,
frozen text states as Stable Diffusion is on OpenAI's CLIP.

Training (symmetric InfoNCE, learnable temperature) sees only rendered images and caption strings —
never masks, annotator output or attention maps. With probability ``p_hypernym`` a training caption
names some of its shapes by their family instead (``a red polygon above a blue round shape``, see
:func:`hypernym_caption`), so the shapes of one family share captions and the encoder can learn that
cohyponyms are similar. Scenes themselves are untouched.

    python -m daamlib.shapeworld.clip train --max-minutes 60      # resumable: run again to continue
    python -m daamlib.shapeworld.clip evaluate                    # zero-shot retrieval on test scenes

The folder it writes (``data/models/shapeworld-clip/clip``) holds the tokenizer, the whole text tower
with its projection (``CLIPTextModelWithProjection``), the image tower and ``report.json``.
:func:`penultimate_text_encoder` turns the text tower into what a diffusion model is conditioned on:
its first ``L − 1`` layers and the final layer norm, as Stable Diffusion 2 ships OpenCLIP-H.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .world import HYPERNYM, PLURAL, SHAPES, ShapeWorld, all_words

# the family's name as a caption says it: singular, plural
HYPERNYM_NOUN: dict[str, tuple[str, str]] = {
    "polygon": ("polygon", "polygons"),
    "round": ("round shape", "round shapes"),
    "pointed": ("pointed shape", "pointed shapes"),
    "symbol": ("symbol", "symbols"),
}
_SINGULAR = {PLURAL[s]: s for s in SHAPES}


def clip_words() -> list[str]:
    """The world's words plus the family names (each one token of the CLIP tokenizer)."""
    extra = {w for pair in HYPERNYM_NOUN.values() for phrase in pair for w in phrase.split()}
    return sorted(set(all_words()) | extra)


def hypernym_caption(caption: str, rng: np.random.Generator, p: float = 0.5) -> str:
    """``caption`` with each shape noun replaced by its family's name with probability ``p`` (at least
    one is replaced when the caption has a shape), articles fixed (``an ellipse`` → ``a round shape``)."""
    words = caption.split()
    nouns = [i for i, w in enumerate(words) if w in HYPERNYM or w in _SINGULAR]
    if not nouns:
        return caption
    chosen = [i for i in nouns if rng.random() < p] or [nouns[int(rng.integers(len(nouns)))]]
    for i in chosen:
        w = words[i]
        plural = w in _SINGULAR
        words[i] = HYPERNYM_NOUN[HYPERNYM[_SINGULAR.get(w, w)]][int(plural)]
    text = " ".join(words).split()
    for i in range(len(text) - 1):
        if text[i] in ("a", "an"):
            text[i] = "an" if text[i + 1][0] in "aeiou" else "a"
    return " ".join(text)


@dataclass
class ClipConfig:
    width: int = 128  # text width = the UNet's cross_attention_dim
    text_layers: int = 6  # the diffusion model is conditioned on layer 5 (penultimate), as SD 2
    text_heads: int = 4
    max_length: int = 24  # as the embedded model's tokenizer
    pad_token: str = "!"  # SD 2.x pads with "!"
    image_channels: tuple[int, ...] = (24, 48, 96, 160)  # 64→32→16→8→4
    embed_dim: int = 128  # the joint embedding
    init_temperature: float = 0.07

    def to_dict(self) -> dict:
        return asdict(self)


class ImageEncoder(nn.Module):
    """Conv tower: four stride-2 stages (64×64 → 4×4), then a linear map of the whole 4×4 grid, so the
    embedding keeps where things are (captions say ``above``, ``left of``)."""

    def __init__(self, channels: tuple[int, ...], embed_dim: int):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.GELU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.GELU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        side = 64 // 2 ** len(channels)
        self.head = nn.Linear(c_in * side * side, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, 64, 64] in [−1, 1]
        return self.head(self.body(x).flatten(1))  # [B, embed_dim]


def build_tokenizer(out_dir: str | Path, cfg: ClipConfig):
    from ..testing.vocab import build_clip_tokenizer

    words = clip_words()
    tok = build_clip_tokenizer([" ".join(words)] * 4, out_dir, num_merges=5000,
                               model_max_length=cfg.max_length, pad_token=cfg.pad_token)
    for w in words:
        if len(tok(w, add_special_tokens=False).input_ids) != 1:
            raise RuntimeError(f"word {w!r} is not one token; raise num_merges")
    return tok


def build_text_tower(cfg: ClipConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tc = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=cfg.width, intermediate_size=4 * cfg.width,
                        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                        max_position_embeddings=cfg.max_length, projection_dim=cfg.embed_dim,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModelWithProjection(tc)


def penultimate_text_encoder(text_tower):
    """A ``CLIPTextModel`` of the tower's first ``L − 1`` layers and its final layer norm: its
    ``last_hidden_state`` is the penultimate layer's states, normalised (Stable Diffusion 2's choice)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    d = text_tower.config.to_dict()
    d["num_hidden_layers"] -= 1
    for k in ("architectures", "model_type", "transformers_version", "projection_dim"):
        d.pop(k, None)
    enc = CLIPTextModel(CLIPTextConfig(**d))
    src = {k: v for k, v in text_tower.state_dict().items() if not k.startswith("text_projection")}
    last = f"text_model.encoder.layers.{d['num_hidden_layers']}."
    src = {k: v for k, v in src.items() if not k.startswith(last)}
    own = enc.state_dict().keys()  # with or without the "text_model." prefix, by transformers version
    enc.load_state_dict({next(o for o in own if k.endswith(o) or o.endswith(k.removeprefix("text_model."))): v
                         for k, v in src.items()})
    return enc.eval()


class ShapeWorldClip(nn.Module):
    def __init__(self, cfg: ClipConfig, tokenizer):
        super().__init__()
        self.cfg = cfg
        self.text = build_text_tower(cfg, tokenizer)
        self.image = ImageEncoder(cfg.image_channels, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(input_ids=ids).text_embeds, dim=-1)  # [B, E]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(images), dim=-1)  # [B, E]

    def loss(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetric InfoNCE over the batch; returns (loss, image→text top-1 accuracy in the batch)."""
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * self.encode_image(images) @ self.encode_text(ids).T
        target = torch.arange(len(ids), device=ids.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return loss, (logits.argmax(1) == target).float().mean()


def to_input(images_uint8) -> torch.Tensor:
    return torch.as_tensor(np.asarray(images_uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1


def save(model: ShapeWorldClip, tokenizer, out: Path, report: dict | None = None) -> None:
    """Write the folder (tokenizer, text tower, image tower, config) to a temp dir, then swap it in."""
    from safetensors.torch import save_file

    tmp = out.parent / (out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer.save_pretrained(tmp / "tokenizer")
    model.text.save_pretrained(tmp / "text_tower")
    save_file({**{k: v.contiguous() for k, v in model.image.state_dict().items()},
               "logit_scale": model.logit_scale.detach().reshape(1)}, tmp / "image_tower.safetensors")
    (tmp / "clip_config.json").write_text(json.dumps(model.cfg.to_dict(), indent=1) + "\n")
    for name in ("report.json", "training_log.csv"):
        if (out / name).exists() and not (tmp / name).exists():
            shutil.copy(out / name, tmp / name)
    if report is not None:
        (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    old = out.parent / (out.name + ".old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def load(folder: str | Path) -> tuple[ShapeWorldClip, object]:
    """(model, tokenizer) from a folder written by :func:`save`."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    d = json.loads((folder / "clip_config.json").read_text())
    cfg = ClipConfig(**{**d, "image_channels": tuple(d["image_channels"])})
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    model = ShapeWorldClip(cfg, tok)
    model.text = CLIPTextModelWithProjection.from_pretrained(folder / "text_tower")
    sd = load_file(folder / "image_tower.safetensors")
    model.logit_scale.data = sd.pop("logit_scale")[0]
    model.image.load_state_dict(sd)
    return model.eval(), tok


# ----------------------------------------------------------------------------------------------
# Evaluation


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a proportion k/n."""
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


@torch.no_grad()
def retrieval(model: ShapeWorldClip, tokenizer, split: str = "test", n: int = 1024, group: int = 32,
              seed: int = 0) -> dict:
    """Zero-shot caption → image retrieval among ``group`` held-out scenes (and image → caption): top-1
    accuracy with a 95 % Wilson interval, n captions, by scene kind; chance is 1/group."""
    scenes = ShapeWorld(seed=seed).scenes(split, 0, n)
    ids = tokenizer([s.caption for s in scenes], padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    img = torch.cat([model.encode_image(to_input([s.image for s in scenes[a : a + 256]])) for a in range(0, n, 256)])
    txt = torch.cat([model.encode_text(ids[a : a + 256]) for a in range(0, n, 256)])
    t2i, i2t, kinds = [], [], []
    for a in range(0, n - group + 1, group):
        sim = txt[a : a + group] @ img[a : a + group].T  # [caption, image]
        t2i += (sim.argmax(1) == torch.arange(group)).tolist()
        i2t += (sim.argmax(0) == torch.arange(group)).tolist()
        kinds += [s.kind for s in scenes[a : a + group]]
    out = {"split": split, "n": len(t2i), "group": group, "chance": 1 / group}
    for name, hits in (("caption_to_image", t2i), ("image_to_caption", i2t)):
        k = int(sum(hits))
        out[name] = {"top1": k / len(hits), "ci95": wilson(k, len(hits))}
    for kind in sorted(set(kinds)):
        h = [x for x, kk in zip(t2i, kinds) if kk == kind]
        out.setdefault("caption_to_image_by_kind", {})[kind] = {"top1": sum(h) / len(h), "n": len(h)}
    return out


@torch.no_grad()
def word_similarity(model: ShapeWorldClip, tokenizer, layer: int = -2) -> dict:
    """Cosine similarity of shape nouns' token states (layer ``layer`` of the text tower, each noun in
    the caption ``a <noun>``): mean over cohyponym pairs (same family) and over other pairs."""
    ids = tokenizer([f"a {s}" for s in SHAPES], padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    hs = model.text(input_ids=ids, output_hidden_states=True).hidden_states[layer][:, 2]  # [shape, D] the noun
    hs = F.normalize(hs - hs.mean(0), dim=-1)  # centred: the shared "a ... noun" component removed
    sim = hs @ hs.T
    same, other, by_family = [], [], {}
    for i in range(len(SHAPES)):
        for j in range(i + 1, len(SHAPES)):
            family = HYPERNYM[SHAPES[i]] if HYPERNYM[SHAPES[i]] == HYPERNYM[SHAPES[j]] else None
            (same if family else other).append(float(sim[i, j]))
            if family:
                by_family.setdefault(family, []).append(float(sim[i, j]))
    return {"layer": layer, "cohyponym_mean_cos": float(np.mean(same)), "n_cohyponym_pairs": len(same),
            "other_mean_cos": float(np.mean(other)), "n_other_pairs": len(other),
            "cohyponym_mean_cos_by_family": {f: round(float(np.mean(v)), 4) for f, v in by_family.items()}}


# ----------------------------------------------------------------------------------------------
# Training


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m daamlib.shapeworld.clip", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("train", "evaluate"))
    p.add_argument("--run-dir", default="runs/shapeworld-clip", help="checkpoints and logs (git-ignored)")
    p.add_argument("--out", default="data/models/shapeworld-clip/clip", help="the shipped CLIP folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3000, help="stop at this step (the learning rate follows a cosine to it)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time (this invocation)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--p-hypernym", type=float, default=0.3, help="fraction of captions naming shape families")
    p.add_argument("--pool", type=int, default=8192, help="train scenes kept in memory")
    p.add_argument("--refresh", type=int, default=512, help="new scenes every --refresh-every steps")
    p.add_argument("--refresh-every", type=int, default=25)
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--text-layers", type=int, default=6)
    p.add_argument("--n-eval", type=int, default=1024)
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# CLIP's train scenes start far from the UNet trainer's (which start at 0), so the two never share a scene
CLIP_INDEX_OFFSET = 80_000_000


def train(args) -> None:
    from transformers import CLIPTokenizer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run, out = Path(args.run_dir), Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    cfg = ClipConfig(text_layers=args.text_layers)
    tok = (CLIPTokenizer.from_pretrained(run / "tokenizer") if (run / "tokenizer" / "vocab.json").exists()
           else build_tokenizer(run / "tokenizer", cfg))
    torch.manual_seed(args.seed)
    model = ShapeWorldClip(cfg, tok).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    step, counter, wall = 0, CLIP_INDEX_OFFSET + args.pool, 0.0
    rng = np.random.default_rng(args.seed)
    ck = run / "ckpt.pt"
    if ck.exists():
        s = torch.load(ck, weights_only=True, map_location="cpu")  # tensors and plain containers (numpy's RNG state is ints)
        model.load_state_dict(s["model"]), opt.load_state_dict(s["opt"])
        torch.set_rng_state(s["torch_rng"])
        rng.bit_generator.state = s["np_rng"]
        step, counter, wall = s["step"], s["counter"], s["wall"]
        log(f"resumed from {ck} at step {step}")
    log(f"text tower {sum(p.numel() for p in model.text.parameters()) / 1e6:.2f}M, image tower "
        f"{sum(p.numel() for p in model.image.parameters()) / 1e6:.2f}M parameters")
    world = ShapeWorld(seed=args.seed)

    def render(a: int, n: int):
        sc = world.scenes("train", a, n)
        return np.stack([s.image for s in sc]), [s.caption for s in sc]

    t0 = time.time()
    pool_img, pool_cap = render(counter - args.pool, args.pool)
    pool_cap = list(pool_cap)
    log(f"pool of {args.pool} scenes in {time.time() - t0:.0f}s")
    stop = {"flag": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(flag=True))

    def checkpoint() -> None:
        tmp = ck.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "np_rng": rng.bit_generator.state, "step": step, "counter": counter, "wall": wall,
                    "args": vars(args)}, tmp)
        os.replace(tmp, ck)

    log_csv = run / "loss.csv"
    new = not log_csv.exists()
    flog = open(log_csv, "a")
    if new:
        flog.write("step,loss,batch_acc,temperature,lr,sec_per_step,wall_seconds\n")
    t_start = t_ck = t_mark = time.time()
    window: list[tuple[float, float]] = []
    model.train()
    while step < args.steps and not stop["flag"]:
        if args.max_minutes is not None and time.time() - t_start > args.max_minutes * 60:
            log("max minutes reached")
            break
        if step > 0 and step % args.refresh_every == 0:  # the oldest scenes make room for new ones
            img, cap = render(counter, args.refresh)
            slots = np.arange(counter, counter + args.refresh) % args.pool
            pool_img[slots] = img
            for j, c in zip(slots, cap):
                pool_cap[j] = c
            counter += args.refresh
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.choice(args.pool, args.batch, replace=False)
        caps = [hypernym_caption(pool_cap[i], rng) if rng.random() < args.p_hypernym else pool_cap[i] for i in idx]
        ids = tok(caps, padding="max_length", truncation=True, max_length=cfg.max_length,
                  return_tensors="pt").input_ids.to(device)
        loss, acc = model.loss(to_input(pool_img[idx]).to(device), ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        now = time.time()
        wall += now - t_mark
        t_mark = now
        window.append((float(loss.detach()), float(acc)))
        if step % 10 == 0:
            lo, ac = np.mean(window, axis=0)
            temp = float(1 / model.logit_scale.clamp(max=math.log(100)).exp())
            flog.write(f"{step},{lo:.4f},{ac:.4f},{temp:.4f},{lr:.2e},{wall / step:.3f},{wall:.0f}\n")
            flog.flush()
            if step % 100 == 0:
                log(f"step {step} loss {lo:.3f} batch acc {ac:.3f} T {temp:.3f} lr {lr:.1e}")
            window = []
        if time.time() - t_ck > args.ckpt_minutes * 60:
            checkpoint()
            t_ck = time.time()
    checkpoint()
    flog.close()
    model.eval()
    shutil.copy(log_csv, run / "training_log.csv")
    report = evaluate_model(model, tok, args)
    report["training"] = {"step": step, "steps_planned": args.steps, "wall_seconds": round(wall, 1),
                          "scenes_seen": counter - CLIP_INDEX_OFFSET, "batch": args.batch, "lr": args.lr,
                          "p_hypernym": args.p_hypernym, "device": str(device), "threads": args.threads,
                          "command": "python -m daamlib.shapeworld.clip " + " ".join(sys.argv[1:])}
    save(model.cpu(), tok, out, report)
    shutil.copy(log_csv, out / "training_log.csv")
    log(f"stopped at step {step} ({wall / 60:.1f} min); wrote {out}")


def evaluate_model(model, tok, args) -> dict:
    t = time.time()
    rep = {"retrieval_test": retrieval(model.cpu(), tok, "test", args.n_eval),
           "retrieval_val": retrieval(model.cpu(), tok, "val", args.n_eval),
           "word_similarity_penultimate": word_similarity(model, tok, -2),
           "word_similarity_last": word_similarity(model, tok, -1)}
    r = rep["retrieval_test"]["caption_to_image"]
    log(f"test caption→image top-1 among 32: {r['top1']:.3f} (95% CI {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f}); "
        f"evaluated in {time.time() - t:.0f}s")
    return rep


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.command == "train":
        return train(args)
    torch.set_num_threads(args.threads)
    model, tok = load(args.out)
    rep = evaluate_model(model, tok, args)
    path = Path(args.out) / "report.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **rep}, indent=1) + "\n")  # the training section stays
    print(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
