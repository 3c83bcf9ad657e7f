"""Train ``shapeworld-mmdit``: an SD3-style joint-attention transformer (MMDiT) on the embedded ShapeWorld.

The same world, train split, latent pool and VAE as the UNets (:mod:`daamlib.shapeworld.train`); the text is the
*frozen* ShapeWorld-CLIP text tower, used as both of SD3's CLIP encoders (no T5: ``text_encoder_3=None``, so the
pipeline appends ``max_sequence_length`` zero rows). The transformer is diffusers' ``SD3Transformer2DModel`` with
``patch_size=1`` on the 16×16×4 latent, so the image is a 16×16 token grid (one token per 4×4 pixels). Training is
SD3's rectified flow: ``x_t = (1 − σ) x_0 + σ ε``, the model predicts ``ε − x_0``, ``σ`` logit-normal then shifted as
``FlowMatchEulerDiscreteScheduler(shift=…)`` shifts it. The text states are exactly what
``StableDiffusion3Pipeline.encode_prompt`` returns at inference (:func:`encode_ids`, tested against it).

    python -m daamlib.shapeworld.train_mmdit --out runs/shapeworld-mmdit --minutes 60      # CPU, resumable chunks
    python -m daamlib.shapeworld.train_mmdit --out runs/shapeworld-mmdit --device cuda --batch 256 --steps 8000 \\
        --workers 12 --pool 32768 --refresh 2048 --save-pipeline data/models/shapeworld-mmdit

Resumable and bit-exact: ``--out/ckpt.pt`` (model, EMA, optimizer, step, scene counter, the sampler's RNG state) is
written atomically every ``--ckpt-every`` steps, on SIGTERM/SIGINT and at the end; running the same command again
continues from it, and a run cut into chunks gives the same weights as one that was not. ``training_state.json``
(steps, images seen, hardware, wall time) and ``training_log.csv`` (the loss) sit beside it. ``--save-pipeline DIR``
writes the EMA weights as a folder that ``StableDiffusion3Pipeline.from_pretrained(DIR, text_encoder_3=None,
tokenizer_3=None)`` loads. Nothing here sees a mask, annotator output or attention map: only train-split images
(through the frozen VAE) and their captions.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .train import LatentPool, SceneRenderer, atomic_save, ema_update, log

CLIP_DIR = "data/models/shapeworld-clip/clip"  # ShapeWorld-CLIP: tokenizer/ and text_tower/
VAE_DIR = "data/models/shapeworld/vae"  # the UNets' VAE (shapeworld-clip ships the same one)
# placeholders until steps and guidance are chosen on val captions: SD3's own defaults. sampling.json may hold only
# daamlib's keys (steps, guidance, scheduler), so the "placeholder" mark lives in training_state.json
SAMPLING_PLACEHOLDER = {"steps": 28, "guidance": 5.0}


@dataclass
class MMDiTConfig:
    layers: int = 6  # joint blocks (the last one is context_pre_only, as in SD3)
    heads: int = 6  # SD3 ties heads to depth (heads = layers, width = 64 · layers); 6 × 32 keeps it under 40 MB
    head_dim: int = 32
    qk_norm: str | None = "rms_norm"  # SD3.5's: RMS-normalised queries and keys keep the logits bounded
    latent_size: int = 16  # 64×64 images → 16×16×4 latents → 16×16 tokens at patch_size 1
    latent_channels: int = 4
    max_sequence_length: int = 256  # zero rows where T5 would be: the pipeline's default, so no caller has to set it
    num_train_timesteps: int = 1000  # timestep = σ · 1000, as FlowMatchEulerDiscreteScheduler
    shift: float = 1.0  # SD3's time shift √(tokens / 256): 1 at 256 image tokens (SD3 uses 3 at 4096)
    logit_mean: float = 0.0  # σ = sigmoid(N(mean, std)): SD3's rf/lognorm(0.00, 1.00)
    logit_std: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Builders


def load_clip_text(folder: str | Path = CLIP_DIR):
    """(tokenizer, text tower) of a ShapeWorld-CLIP folder: the whole ``CLIPTextModelWithProjection``, frozen.
    SD3 takes its penultimate hidden states (no final layer norm) and its projected pooled embedding."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    if not (folder / "text_tower" / "config.json").exists():
        raise FileNotFoundError(f"{folder} has no text_tower/config.json; pass the ShapeWorld-CLIP folder written by "
                                "`python -m daamlib.shapeworld.clip train` (e.g. data/models/shapeworld-clip/clip)")
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text = CLIPTextModelWithProjection.from_pretrained(folder / "text_tower")
    return tok, text.requires_grad_(False).eval()


def load_vae(folder: str | Path = VAE_DIR):
    """The UNets' VAE, frozen, with ``shift_factor`` 0.0: SD3 decodes ``z / scaling_factor + shift_factor`` and a
    null shift factor fails there; 0.0 keeps the UNets' latents (``z = sample · scaling_factor``) unchanged."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder)
    vae.register_to_config(shift_factor=0.0)
    return vae.requires_grad_(False).eval()


def build_transformer(cfg: MMDiTConfig, text_width: int, pooled_width: int):
    """``SD3Transformer2DModel`` on the latent grid; its text input is the two CLIP encoders' states side by side."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=cfg.latent_size, patch_size=1, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        num_layers=cfg.layers, attention_head_dim=cfg.head_dim, num_attention_heads=cfg.heads,
        joint_attention_dim=2 * text_width,  # [clip_1 | clip_2] without padding; the zero rows have this width too
        caption_projection_dim=cfg.heads * cfg.head_dim, pooled_projection_dim=2 * pooled_width,
        pos_embed_max_size=cfg.latent_size, qk_norm=cfg.qk_norm)


def build_scheduler(cfg: MMDiTConfig):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps, shift=cfg.shift)


def make_pipeline(transformer, vae, text, tokenizer, scheduler):
    """A ``StableDiffusion3Pipeline`` whose two CLIP encoders are the same frozen ShapeWorld-CLIP tower."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text,
                                    tokenizer=tokenizer, text_encoder_2=text, tokenizer_2=tokenizer,
                                    text_encoder_3=None, tokenizer_3=None)


def load_pipeline_folder(folder: str | Path, **kwargs):
    """Load a folder written by ``--save-pipeline`` (it has no T5, which ``from_pretrained`` must be told)."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None, **kwargs)


@torch.no_grad()
def encode_ids(text, ids: torch.Tensor, joint_dim: int, max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``StableDiffusion3Pipeline.encode_prompt``'s (prompt_embeds, pooled) for token ids ``[B, L]`` when both CLIP
    encoders are ``text`` and there is no T5: ``[B, L + max_sequence_length, joint_dim]`` and ``[B, 2 · proj]``."""
    out = text(ids, output_hidden_states=True)
    states = out.hidden_states[-2]  # [B, L, D]: the penultimate layer, as SD3 (clip_skip None)
    clip = F.pad(torch.cat([states, states], dim=-1), (0, joint_dim - 2 * states.shape[-1]))  # [B, L, joint_dim]
    zeros = clip.new_zeros(ids.shape[0], max_sequence_length, joint_dim)  # where T5's states would be
    return torch.cat([clip, zeros], dim=1), torch.cat([out.text_embeds, out.text_embeds], dim=-1)


class CollapsedNullRows:
    """SD3's joint attention (``JointAttnProcessor2_0``) with the last text row standing for ``copies`` identical rows.

    Without T5 the pipeline appends ``max_sequence_length`` zero rows; no position embedding reaches the text stream,
    so every block computes the same state for all of them. ``copies`` identical keys with identical values are, in
    a softmax, one key whose logit is raised by ``ln copies``; the row's own output is each copy's output; and since
    the loss sees the copies only through keys and values, gradients are equal too (tested against the full rows).
    Training therefore runs on the CLIP tokens plus one row: 281 tokens per image in place of 536."""

    def __init__(self, copies: int):
        self.log_copies = math.log(copies)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        B, N, heads = hidden_states.shape[0], hidden_states.shape[1], attn.heads

        def split(x):
            return x.view(B, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        def normed(norm, x):
            return x if norm is None else norm(x)

        q = torch.cat([normed(attn.norm_q, split(attn.to_q(hidden_states))),
                       normed(attn.norm_added_q, split(attn.add_q_proj(encoder_hidden_states)))], dim=2)
        k = torch.cat([normed(attn.norm_k, split(attn.to_k(hidden_states))),
                       normed(attn.norm_added_k, split(attn.add_k_proj(encoder_hidden_states)))], dim=2)
        v = torch.cat([split(attn.to_v(hidden_states)), split(attn.add_v_proj(encoder_hidden_states))], dim=2)
        # in float32 (or the model's float64) whatever autocast says: bf16 would round ln 256 to ≈ 252.5 copies
        wide = torch.promote_types(q.dtype, torch.float32)
        bias = torch.zeros(1, 1, 1, k.shape[2], device=q.device, dtype=wide)
        bias[..., -1] = self.log_copies  # the collapsed null row is the last key
        with torch.autocast(q.device.type, enabled=False):
            out = F.scaled_dot_product_attention(q.to(wide), k.to(wide), v.to(wide), attn_mask=bias)
        out = out.transpose(1, 2).reshape(B, -1, out.shape[1] * out.shape[3]).to(q.dtype)
        image, text = out[:, :N], out[:, N:]
        image = attn.to_out[1](attn.to_out[0](image))
        return image, (text if attn.context_pre_only else attn.to_add_out(text))


def collapse_null_rows(model, copies: int) -> None:
    """Set :class:`CollapsedNullRows` on every joint block of ``model`` (training only; processors are not saved)."""
    model.set_attn_processor(CollapsedNullRows(copies))


def sample_sigmas(n: int, cfg: MMDiTConfig, generator: torch.Generator) -> torch.Tensor:
    """σ ∈ (0, 1): logit-normal, then the scheduler's time shift ``s·σ / (1 + (s − 1)·σ)``."""
    sigma = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=generator))
    return cfg.shift * sigma / (1 + (cfg.shift - 1) * sigma)


def flow_targets(z0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target) of rectified flow: ``x_t = (1 − σ) x_0 + σ ε`` and the velocity ``ε − x_0``."""
    s = sigma.view(-1, 1, 1, 1)
    return (1 - s) * z0 + s * noise, noise - z0


# ----------------------------------------------------------------------------------------------
# Training


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m daamlib.shapeworld.train_mmdit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/shapeworld-mmdit", help="checkpoint, training_state.json, training_log.csv")
    p.add_argument("--save-pipeline", default=None, metavar="DIR",
                   help="at the end, write the EMA weights as a StableDiffusion3Pipeline folder here")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="write --out's checkpoint (its EMA weights) as a pipeline folder here and exit; trains nothing "
                        "and writes nothing into --out, so it may run beside the training")
    p.add_argument("--clip", default=CLIP_DIR, help="the frozen ShapeWorld-CLIP folder (tokenizer/, text_tower/)")
    p.add_argument("--vae", default=VAE_DIR, help="the frozen VAE (the UNets')")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=0, help="processes rendering scenes for the latent pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=100_000, help="stop at this step (the learning rate decays toward it)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall time (this invocation)")
    p.add_argument("--ckpt-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--decay", type=float, default=0.2, help="decay the lr linearly to 0.1× over this last fraction of --steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--p-uncond", type=float, default=0.1, help="fraction of empty captions (for guidance)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="autocast (default: bf16 on cuda)")
    p.add_argument("--pool", type=int, default=16384, help="scenes whose latents are kept in memory")
    p.add_argument("--refresh-every", type=int, default=50, help="steps between pool refreshes")
    p.add_argument("--refresh", type=int, default=256, help="new scenes per refresh (oldest dropped)")
    d = MMDiTConfig()
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--head-dim", type=int, default=d.head_dim)
    p.add_argument("--max-sequence-length", type=int, default=d.max_sequence_length,
                   help="zero rows after the CLIP tokens; anything but 256 must be passed to the pipeline at inference")
    p.add_argument("--shift", type=float, default=d.shift)
    p.add_argument("--phrasings", choices=("trained", "canonical"), default="trained",
                   help="captions in the trained phrasing families (daamlib.shapeworld.phrasings: canonical, definite, "
                        "swapped; 'background first' held out) or the world's own only")
    p.add_argument("--full-null-rows", action="store_true",
                   help="feed all max_sequence_length zero rows (slower; the default collapses them into one exactly)")
    args = p.parse_args(argv)
    if args.precision is None:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    return args


def hardware(device: torch.device, threads: int) -> dict:
    h = {"device": str(device), "torch": torch.__version__, "cpu_threads": threads, "cpu_count": os.cpu_count(),
         "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        h["gpu"] = torch.cuda.get_device_name(device)
    return h


def truncate_log(path: Path, step: int) -> None:
    """Drop the log's rows past ``step`` (those of a killed run after its last checkpoint: they are redone)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if int(r[0]) <= step]
    if len(keep) < len(rows):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(keep)
        os.replace(tmp, path)


def save_pipeline(folder: Path, transformer, vae, text, tokenizer, cfg: MMDiTConfig, out: Path) -> None:
    """Write the pipeline folder to a temp dir, then swap it in. The transformer is stored in float16 (half the
    bytes: the folder stays under the 40 MB of issue 25) and loads as float32: ``from_pretrained`` without a dtype
    upcasts it, and images differ from the float32 weights' by under 1/255 (measured: max 0.0035, mean 0.0001 on
    a 28-step sample). Hand-written files survive a rewrite: the card (.md), its figures (.png), the sampling
    settings chosen on val (``sampling.json``; a new folder gets SD3's defaults) and the val quality record
    (``quality_val.json``, :func:`daamlib.studies.paper.gate`)."""
    tmp, old = folder.parent / (folder.name + ".tmp"), folder.parent / (folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    half = copy.deepcopy(transformer).to(torch.float16)
    make_pipeline(half, vae, text, tokenizer, build_scheduler(cfg)).save_pretrained(tmp)
    (tmp / "sampling.json").write_text(json.dumps(SAMPLING_PLACEHOLDER, indent=1) + "\n")
    kept = {"sampling.json", "quality_val.json"}
    for name in ("training_state.json", "training_log.csv"):
        if (out / name).exists():
            shutil.copy(out / name, tmp / name)
    if folder.exists():
        for f in folder.iterdir():
            if f.is_file() and (f.suffix in (".md", ".png") and not (tmp / f.name).exists() or f.name in kept):
                shutil.copy(f, tmp / f.name)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def export(out: Path, folder: Path, clip=CLIP_DIR, vae_dir=VAE_DIR) -> int:
    """The checkpoint in ``out`` as a pipeline folder (EMA weights): the step it holds."""
    ck = Path(out) / "ckpt.pt"
    if not ck.exists():
        raise SystemExit(f"{ck} does not exist: nothing to export (train with --out {out} first)")
    saved = torch.load(ck, weights_only=True, map_location="cpu")
    cfg = MMDiTConfig(**saved["cfg"])
    tokenizer, text = load_clip_text(clip)
    ema = build_transformer(cfg, text.config.hidden_size, text.config.projection_dim)
    ema.load_state_dict(saved["ema"])
    save_pipeline(Path(folder), ema.eval(), load_vae(vae_dir), text, tokenizer, cfg, Path(out))
    return saved["step"]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.export:
        log(f"pipeline of step {export(Path(args.out), Path(args.export), args.clip, args.vae)} written to "
            f"{args.export}")
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ck, log_csv, state_json = out / "ckpt.pt", out / "training_log.csv", out / "training_state.json"
    saved = torch.load(ck, weights_only=True, map_location="cpu") if ck.exists() else None
    # the architecture is the checkpoint's: a resumed run ignores --layers/--heads/... given differently
    cfg = MMDiTConfig(**saved["cfg"]) if saved else MMDiTConfig(
        layers=args.layers, heads=args.heads, head_dim=args.head_dim, max_sequence_length=args.max_sequence_length,
        shift=args.shift)

    stop = {"flag": False}

    def on_signal(signum, frame):
        log(f"signal {signum}: checkpointing and stopping")
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    tokenizer, text = load_clip_text(args.clip)
    vae = load_vae(args.vae)
    joint_dim = 2 * text.config.hidden_size
    torch.manual_seed(args.seed)
    model = build_transformer(cfg, text.config.hidden_size, text.config.projection_dim)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    collapsed = not args.full_null_rows and cfg.max_sequence_length > 1
    if collapsed:
        collapse_null_rows(model, cfg.max_sequence_length)
    null_rows = 1 if collapsed else cfg.max_sequence_length  # the rows training feeds after the CLIP tokens
    for m in (text, vae, model, ema):  # before the optimizer: its loaded state follows the parameters' device
        m.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)  # every random draw of training comes from here (CPU, resumable)
    step, counter, images_seen, wall_by_device = 0, args.pool, 0, {}
    if saved:
        model.load_state_dict(saved["model"]), ema.load_state_dict(saved["ema"]), opt.load_state_dict(saved["opt"])
        gen.set_state(saved["rng"])
        step, counter, images_seen = saved["step"], saved["counter"], saved["images_seen"]
        wall_by_device = saved["wall_by_device"]
        if saved["args"]["pool"] != args.pool:
            raise SystemExit(f"{ck} was trained with --pool {saved['args']['pool']}; resume with the same pool size")
        if saved["args"].get("phrasings", "canonical") != args.phrasings:
            raise SystemExit(f"{ck} was trained with --phrasings {saved['args'].get('phrasings', 'canonical')}; "
                             "resume with the same phrasings (or start a new --out)")
        log(f"resumed from {ck} at step {step}")
        truncate_log(log_csv, step)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"MMDiT {n_params / 1e6:.2f}M params ({cfg.layers} layers, {cfg.heads}×{cfg.head_dim}), "
        f"{cfg.latent_size}² image + {tokenizer.model_max_length}+{cfg.max_sequence_length} text tokens"
        + (" (the zero rows collapsed into one, exactly)" if collapsed else ""))

    def state() -> dict:
        return {"step": step, "images_seen": images_seen, "scene_counter": counter,
                "wall_seconds": round(sum(wall_by_device.values()), 1),
                "wall_seconds_by_device": {k: round(v, 1) for k, v in wall_by_device.items()},
                "hardware": hardware(device, args.threads), "params": n_params, "model": cfg.to_dict(),
                "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "decay": args.decay, "steps": args.steps,
                "ema": args.ema, "p_uncond": args.p_uncond, "null_rows_collapsed": collapsed,
                "phrasings": ("canonical, definite, swapped (daamlib.shapeworld.phrasings; 'background first' held out)"
                              if args.phrasings == "trained" else "canonical only"),
                "precision": args.precision, "pool": args.pool,
                "text_encoder": f"frozen ShapeWorld-CLIP text tower ({args.clip}) as text_encoder and text_encoder_2; "
                                "penultimate hidden states + projected pooled embedding; no T5",
                "vae": f"{args.vae}, shift_factor 0.0",
                "sampling": {**SAMPLING_PLACEHOLDER, "status": "placeholder (SD3's defaults), not chosen on val"},
                "command": "python -m daamlib.shapeworld.train_mmdit " + " ".join(sys.argv[1:] if argv is None else argv),
                "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def checkpoint() -> None:
        atomic_save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "rng": gen.get_state(), "step": step, "counter": counter, "images_seen": images_seen,
                     "wall_by_device": wall_by_device, "cfg": cfg.to_dict(), "args": vars(args)}, ck)
        tmp = state_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(state(), indent=1) + "\n")
        os.replace(tmp, state_json)

    sf = vae.config.scaling_factor
    pool = LatentPool(args.pool, tokenizer.model_max_length, (cfg.latent_channels, cfg.latent_size, cfg.latent_size),
                      device=device)
    from .phrasings import render_train_phrased

    renderer = SceneRenderer(args.seed, args.workers,
                             render=render_train_phrased if args.phrasings == "trained" else None)
    t0 = time.time()
    pool.add(renderer.render(counter - args.pool, counter), vae, tokenizer)  # train split only (render_train)
    log(f"latent pool of {args.pool} scenes built in {time.time() - t0:.0f}s")
    empty_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                          return_tensors="pt").input_ids[0].to(device)

    new_log = not log_csv.exists()
    flog = open(log_csv, "a", newline="")
    writer = csv.writer(flog)
    if new_log:
        writer.writerow(["step", "loss", "lr", "sec_per_step", "wall_seconds", "time_utc", "batch", "device"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    model.train()
    t_start = t_mark = t_last = time.time()
    losses: list[torch.Tensor] = []
    next_refresh = renderer.render_ahead(counter, counter + args.refresh)
    decay_from = int(args.steps * (1 - args.decay))
    log(f"training from step {step} to {args.steps} on {device} ({args.precision})")
    while step < args.steps and not stop["flag"]:
        if args.minutes is not None and time.time() - t_start > args.minutes * 60:
            log("--minutes reached")
            break
        if step > 0 and step % args.refresh_every == 0:
            pool.add(next_refresh(), vae, tokenizer)
            counter += args.refresh
            next_refresh = renderer.render_ahead(counter, counter + args.refresh)
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        if step >= decay_from:
            lr *= 1 - 0.9 * (step - decay_from) / max(1, args.steps - decay_from)
        for g in opt.param_groups:
            g["lr"] = lr
        B, shape = args.batch, (args.batch, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        idx = torch.randint(0, args.pool, (B,), generator=gen).to(device)
        post_eps = torch.randn(shape, generator=gen).to(device)
        noise = torch.randn(shape, generator=gen).to(device)
        drop = (torch.rand(B, generator=gen) < args.p_uncond).to(device)
        sigma = sample_sigmas(B, cfg, gen).to(device)
        z0 = (pool.mean[idx] + pool.std[idx] * post_eps) * sf  # [B, 4, 16, 16]; (z − shift_factor 0) · sf
        ids = torch.where(drop[:, None], empty_ids, pool.ids[idx])  # [B, L]
        prompt_embeds, pooled = encode_ids(text, ids, joint_dim, null_rows)  # [B, L + T, 2D], [B, 2P]
        xt, target = flow_targets(z0, noise, sigma)
        with autocast:
            pred = model(hidden_states=xt, encoder_hidden_states=prompt_embeds, pooled_projections=pooled,
                         timestep=sigma * cfg.num_train_timesteps).sample
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, min(args.ema, (1 + step) / (10 + step)))
        step += 1
        images_seen += B
        now = time.time()
        wall_by_device[device.type] = wall_by_device.get(device.type, 0.0) + now - t_mark
        t_mark = now
        losses.append(loss.detach())  # a tensor: no device sync per step
        if step % args.log_every == 0:
            sps = (now - t_last) / len(losses)
            mean = float(torch.stack(losses).mean())
            writer.writerow([step, f"{mean:.5f}", f"{lr:.2e}", f"{sps:.3f}", f"{sum(wall_by_device.values()):.0f}",
                             time.strftime("%H:%M:%S", time.gmtime()), B, device.type])
            flog.flush()
            if step % (args.log_every * 10) == 0:
                log(f"step {step} loss {mean:.4f} lr {lr:.1e} {sps:.3f}s/step")
            t_last, losses = time.time(), []
        if step % args.ckpt_every == 0:
            flog.flush()
            checkpoint()
    flog.close()
    checkpoint()
    renderer.close()
    log(f"stopped at step {step}; {images_seen} images seen; wall time {sum(wall_by_device.values()) / 60:.1f} min")
    if args.save_pipeline:
        ema.eval()
        save_pipeline(Path(args.save_pipeline), ema.to("cpu"), vae.to("cpu"), text.to("cpu"), tokenizer, cfg, out)
        log(f"pipeline (EMA weights) written to {args.save_pipeline}")


if __name__ == "__main__":
    main()
