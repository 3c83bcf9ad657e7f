"""Train the embedded ShapeWorld model: first the VAE, then the UNet and text encoder jointly.

    python -m daamlib.shapeworld.train                 # start, or resume where a killed run stopped
    python -m daamlib.shapeworld.train --max-minutes 100
    python -m daamlib.shapeworld.train --device cuda --workers 12 --batch 256 --refresh 2048 --pool 32768 --max-minutes 7 --cooldown-minutes 2.5

Resumable: a checkpoint (model, EMA, optimizer, step, RNG state) is written atomically to
``runs/shapeworld/ckpt.pt`` every ``--ckpt-minutes``; the diffusers folder (EMA weights, DDIM
scheduler) is exported atomically to ``data/models/shapeworld`` every ``--export-minutes``. With no
``runs/`` (a fresh checkout has only what git holds) training resumes from the exported weights and
the step count in its ``training_state.json``, with a fresh optimizer. Nothing here sees a mask.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .model import (
    ModelConfig,
    build_sample_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_train_scheduler,
    build_unet,
    build_vae,
    images_to_tensor,
    make_pipeline,
    reconstruct_images,
    tensor_to_images,
)
from .world import ShapeWorld

# sampling settings read by daamlib.load_pipeline / generate (chosen on validation captions, see the model card:
# guidance 7.5 oversaturates this model; 3–10 give the same quality within noise)
SAMPLING = {"steps": 30, "guidance": 5.0}
VAE_INDEX_OFFSET = 50_000_000  # VAE training scenes are train-split scenes from this index on
VAL_PROMPTS = [
    "a red circle above a blue square on grass",
    "two green triangles",
    "a large striped hexagon next to a yellow star",
    "a purple heart left of an orange diamond in the sky",
    "a small yellow ring inside a large red square",
    "three blue crosses on sand",
    "a green ellipse overlapping a purple pentagon on water",
    "an orange arrow below a red semicircle",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m daamlib.shapeworld.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/shapeworld", help="checkpoints, logs, samples (git-ignored)")
    p.add_argument("--export-dir", default="data/models/shapeworld", help="the shipped diffusers folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device of the UNet phase (cpu, cuda); the VAE phase runs on the CPU")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that render scenes for the latent pool (0: in this process); refreshes are "
                        "rendered ahead while the model trains")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-crop", type=int, default=32, help="train the (fully convolutional) VAE on crops")
    p.add_argument("--steps", type=int, default=1_000_000, help="stop at this UNet step")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time (this invocation)")
    p.add_argument("--cooldown-minutes", type=float, default=0.0,
                   help="with --max-minutes: decay the learning rate linearly to 0.1× over this invocation's last M minutes")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--min-snr-gamma", type=float, default=5.0,
                   help="min-SNR-γ loss weighting (Hang et al. 2023): weight min(SNR, γ)/SNR per sample; 0 = uniform")
    p.add_argument("--p-uncond", type=float, default=0.1, help="fraction of empty captions (for guidance)")
    p.add_argument("--pool", type=int, default=16384, help="scenes whose latents are kept in memory")
    p.add_argument("--refresh-every", type=int, default=50, help="steps between pool refreshes")
    p.add_argument("--refresh", type=int, default=256, help="new scenes per refresh (oldest dropped)")
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--export-minutes", type=float, default=15.0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--finetune-decoder", action="store_true",
                   help="instead of training: fine-tune the VAE decoder only (run it beside training, niced)")
    p.add_argument("--decoder-minutes", type=float, default=40.0)
    p.add_argument("--decoder-lr", type=float, default=5e-4)
    p.add_argument("--text-layers", type=int, default=0)
    p.add_argument("--unet-channels", default="32,64,128")
    p.add_argument("--unet-heads", type=int, default=4)
    p.add_argument("--clip", default=None, metavar="DIR",
                   help="condition on the frozen penultimate layer of this ShapeWorld-CLIP folder (its tokenizer "
                        "too) instead of training a text encoder with the UNet, as Stable Diffusion does")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="a fresh run starts from this exported model's UNet and VAE instead of random weights")
    args = p.parse_args(argv)
    for flag, d, need in (("--clip", args.clip, "clip_config.json"), ("--init-from", args.init_from, "unet/config.json")):
        if d is not None and not (Path(d) / need).exists():
            p.error(f"{flag} {d}: no {need} there; give the folder written by "
                    + ("`python -m daamlib.shapeworld.clip train`" if flag == "--clip" else "this trainer's export"))
    if args.cooldown_minutes > 0 and (args.max_minutes is None or args.cooldown_minutes > args.max_minutes):
        p.error("--cooldown-minutes needs --max-minutes at least as long (the cool-down is the run's last minutes)")
    return args


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def grid_png(rows: list[np.ndarray], path: Path, scale: int = 2) -> None:
    from PIL import Image

    g = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray(g).resize((g.shape[1] * scale, g.shape[0] * scale), Image.NEAREST).save(path)


# ----------------------------------------------------------------------------------------------
# Phase 1: the VAE


def train_vae(args, cfg: ModelConfig, world: ShapeWorld, run: Path, export: Path, stop: dict | None = None):
    from diffusers import AutoencoderKL

    vae_dir = run / "vae"
    if (vae_dir / "config.json").exists():
        return AutoencoderKL.from_pretrained(vae_dir)
    for folder in (export, Path(args.init_from) if args.init_from else None):
        if folder is not None and (folder / "vae" / "config.json").exists():
            log(f"using the exported VAE from {folder / 'vae'}")
            return AutoencoderKL.from_pretrained(folder / "vae")
    torch.manual_seed(args.seed)
    vae = build_vae(cfg)
    with torch.no_grad():  # start with a small posterior std (e^-3 ≈ 0.05): at the default (~0.7) the
        vae.quant_conv.bias[cfg.latent_channels :] -= 6.0  # sampling noise drowned colour for hundreds of steps
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    start = 0
    ck = run / "vae_ckpt.pt"
    if ck.exists():
        s = torch.load(ck, weights_only=True)  # restricted unpickler: tensors, containers, numbers, strings
        vae.load_state_dict(s["vae"])
        opt.load_state_dict(s["opt"])
        torch.set_rng_state(s["rng"])
        start = s["step"]
        log(f"VAE: resumed at step {start}")
    log(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M params, {args.vae_steps} steps of {args.vae_batch}")
    t_ck = time.time()
    B = args.vae_batch
    vae.train()
    for step in range(start, args.vae_steps):
        if stop is not None and stop["flag"]:
            atomic_save({"vae": vae.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
                         "step": step}, ck)
            log(f"VAE: stopped at step {step}")
            sys.exit(0)
        lr = args.vae_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.vae_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        imgs = np.stack([world.scene("train", VAE_INDEX_OFFSET + step * B + i).image for i in range(B)])
        x = images_to_tensor(imgs)
        if args.vae_crop < x.shape[-1]:  # random crops (on the 4-px latent grid): 4× the steps per second at 32
            c = args.vae_crop
            offs = torch.randint(0, (x.shape[-1] - c) // 4 + 1, (B, 2)) * 4
            x = torch.stack([xi[:, oy : oy + c, ox : ox + c] for xi, (oy, ox) in zip(x, offs.tolist())])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        kl = post.kl().mean()
        loss = rec_loss + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            log(f"VAE step {step} loss {rec_loss.item():.5f} kl {kl.item():.1f} lr {lr:.2e}")
        if time.time() - t_ck > args.ckpt_minutes * 60:
            atomic_save({"vae": vae.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
                         "step": step + 1}, ck)
            t_ck = time.time()
    vae.eval()
    # scaling factor: 1 / std of the latents of held-apart scenes (SD's 0.18215 was found the same way)
    val = np.stack([world.scene("val", i).image for i in range(256)])
    with torch.no_grad():
        lat = torch.cat([vae.encode(images_to_tensor(val[i : i + 64])).latent_dist.mean for i in range(0, 256, 64)])
        rec = torch.cat([vae.decode(lat[i : i + 64]).sample for i in range(0, 256, 64)])
    sf = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=sf)
    rec_u8 = tensor_to_images(rec)
    mse = float(((rec_u8.astype(float) - val.astype(float)) ** 2).mean())
    psnr = 10 * math.log10(255**2 / mse)
    log(f"VAE done: val MSE {mse:.1f} (0..255 units), PSNR {psnr:.2f} dB, latent std {lat.std():.3f}, "
        f"scaling_factor {sf:.4f}")
    (run / "vae_metrics.json").write_text(json.dumps({"val_mse_255": mse, "val_psnr_db": psnr, "scaling_factor": sf,
                                                     "steps": args.vae_steps, "batch": B}, indent=1))
    grid_png([val[:8], rec_u8[:8], val[8:16], rec_u8[8:16]], run / "vae_recon.png", scale=3)
    vae.save_pretrained(vae_dir)
    return vae


DECODER_FILE = "vae_decoder.safetensors"


def _decoder_state(vae) -> dict:
    return {k: v for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}


def load_decoder(vae, path: Path) -> None:
    from safetensors.torch import load_file

    missing = vae.load_state_dict(load_file(str(path)), strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys


def finetune_decoder(args, run: Path) -> None:
    """Train only the VAE decoder on latents of the frozen encoder (so a UNet trained on those latents
    stays valid), writing ``runs/.../vae_decoder.safetensors`` atomically; the trainer loads it at export."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    vae = AutoencoderKL.from_pretrained(run / "vae")
    if (run / DECODER_FILE).exists():
        load_decoder(vae, run / DECODER_FILE)
    world = ShapeWorld(seed=args.seed)
    vae.encoder.requires_grad_(False), vae.quant_conv.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)

    def save() -> None:  # atomically: the trainer may load it at any export
        tmp = run / (DECODER_FILE + ".tmp")
        save_file({k: v.contiguous() for k, v in _decoder_state(vae).items()}, str(tmp))
        os.replace(tmp, run / DECODER_FILE)

    B, t0, t_save = args.vae_batch // 2, time.time(), time.time()
    step = 0
    offset = VAE_INDEX_OFFSET + 10_000_000
    while time.time() - t0 < args.decoder_minutes * 60:
        frac = (time.time() - t0) / (args.decoder_minutes * 60)
        for g in opt.param_groups:
            g["lr"] = args.decoder_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        x = images_to_tensor(np.stack([world.scene("train", offset + step * B + i).image for i in range(B)]))
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 20 == 0:
            log(f"decoder step {step} loss {loss.item():.5f}")
        if time.time() - t_save > 300:
            save()
            t_save = time.time()
    save()
    val = np.stack([world.scene("val", i).image for i in range(256)])
    rec_u8 = reconstruct_images(vae, val)
    mse = float(((rec_u8.astype(float) - val.astype(float)) ** 2).mean())
    log(f"decoder fine-tuned for {step} steps: val MSE {mse:.1f}, PSNR {10 * math.log10(255**2 / mse):.2f} dB")
    (run / "decoder_metrics.json").write_text(json.dumps({"steps": step, "batch": B, "val_mse_255": mse,
                                                         "val_psnr_db": 10 * math.log10(255**2 / mse)}, indent=1))
    grid_png([val[:8], rec_u8[:8], val[8:16], rec_u8[8:16]], run / "vae_recon_finetuned.png", scale=3)


# ----------------------------------------------------------------------------------------------
# Phase 2: UNet + text encoder


def render_train(seed: int, start: int, stop: int) -> tuple[np.ndarray, list[str]]:
    """Images and captions of train scenes ``start..stop-1`` (a world is a few settings: cheap to make per call)."""
    scenes = ShapeWorld(seed=seed).scenes("train", start, stop - start)
    return np.stack([s.image for s in scenes]), [s.caption for s in scenes]


class SceneRenderer:
    """Renders train scenes in chunks, in this process or in ``workers`` processes (same scenes either way)."""

    def __init__(self, seed: int, workers: int = 0, chunk: int = 64, render=None):
        self.seed, self.chunk = seed, chunk
        self.render_chunk = render or render_train  # (seed, start, stop) -> (images, captions); module-level
        self.procs = None
        if workers > 0:
            import multiprocessing as mp

            self.procs = mp.get_context("spawn").Pool(workers)

    def _ranges(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        return [(self.seed, a, min(a + self.chunk, stop)) for a in range(start, stop, self.chunk)]

    def render_ahead(self, start: int, stop: int):
        """Start rendering in the workers now (in this process: when the chunks are read); call the
        returned function for an iterator of (first index, images, captions) chunks, in order."""
        ranges = self._ranges(start, stop)
        if self.procs is None:
            return lambda: ((r[1], *self.render_chunk(*r)) for r in ranges)
        pending = self.procs.starmap_async(self.render_chunk, ranges)
        return lambda: ((r[1], *out) for r, out in zip(ranges, pending.get()))

    def render(self, start: int, stop: int):
        """Scenes ``start..stop-1`` as (first index, images, captions) chunks, in order."""
        return self.render_ahead(start, stop)()

    def close(self) -> None:
        if self.procs is not None:
            self.procs.terminate()


class LatentPool:
    """Posterior moments of the last ``size`` train scenes; scene ``i`` lives in slot ``i % size``."""

    def __init__(self, size: int, max_length: int, latent_shape=(4, 16, 16), device="cpu"):
        self.size = size
        self.mean = torch.zeros(size, *latent_shape, device=device)
        self.std = torch.zeros(size, *latent_shape, device=device)
        self.ids = torch.zeros(size, max_length, dtype=torch.long, device=device)

    @torch.no_grad()
    def add(self, chunks, vae, tokenizer) -> None:
        """Encode (first index, images, captions) chunks into their slots."""
        device = self.mean.device
        for a, images, captions in chunks:
            d = vae.encode(images_to_tensor(images).to(device)).latent_dist
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            slots = torch.arange(a, a + len(captions), device=device) % self.size
            self.mean[slots], self.std[slots], self.ids[slots] = d.mean, d.std, ids.to(device)


def add_batch_column(path: Path, batch: int) -> None:
    """Logs written before the ``batch`` column existed (all at one batch size) get it, atomically."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "batch" in rows[0]:
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([rows[0] + ["batch"]] + [r + [str(batch)] for r in rows[1:]])
    os.replace(tmp, path)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)


def export_folder(export: Path, vae, text, tokenizer, unet, cfg, state: dict, run: Path) -> None:
    """Write the diffusers folder to a temp dir, then swap it in; keeps MODEL_CARD.md and figures."""
    tmp = export.parent / (export.name + ".tmp")
    old = export.parent / (export.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe = make_pipeline(vae, text, tokenizer, unet, build_sample_scheduler(cfg))
    pipe.save_pretrained(tmp)
    (tmp / "training_state.json").write_text(json.dumps(state, indent=1))
    (tmp / "sampling.json").write_text(json.dumps(SAMPLING, indent=1) + "\n")  # the model's own defaults
    if (run / "loss.csv").exists():
        shutil.copy(run / "loss.csv", tmp / "training_log.csv")
    if export.exists():
        for f in export.iterdir():  # hand-written card and figures survive re-exports
            if f.is_file() and (f.suffix in (".md", ".png") or f.name.endswith(".json") and f.name != "model_index.json"
                                and f.name != "training_state.json") and not (tmp / f.name).exists():
                shutil.copy(f, tmp / f.name)
            elif f.is_dir() and not (tmp / f.name).exists():  # e.g. the ShapeWorld-CLIP that conditions it (clip/)
                shutil.copytree(f, tmp / f.name)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(export, old)
    os.replace(tmp, export)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def sample_grid(vae, text, tokenizer, unet, cfg, path: Path, seed: int = 0, steps: int = 25, guidance: float = 5.0):
    pipe = make_pipeline(vae, text, tokenizer, unet, build_sample_scheduler(cfg))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    out = pipe(VAL_PROMPTS, num_inference_steps=steps, guidance_scale=guidance, generator=g,
               output_type="np", height=64, width=64).images
    imgs = (out * 255).round().astype(np.uint8)
    grid_png([imgs], path, scale=2)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    run, export = Path(args.run_dir), Path(args.export_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig(text_layers=args.text_layers, unet_channels=tuple(int(c) for c in args.unet_channels.split(",")),
                      unet_heads=args.unet_heads)
    world = ShapeWorld(seed=args.seed)
    t_invocation = time.time()
    stop = {"flag": False}

    def on_signal(signum, frame):
        log(f"signal {signum}: checkpointing and stopping")
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log(f"args: {' '.join(sys.argv[1:])}")
    if args.finetune_decoder:
        return finetune_decoder(args, run)
    vae = train_vae(args, cfg, world, run, export, stop)
    if (run / DECODER_FILE).exists():
        load_decoder(vae, run / DECODER_FILE)
    vae.requires_grad_(False).eval()

    from transformers import CLIPTokenizer

    if args.clip:  # the CLIP's own tokenizer (its vocabulary has the shape families' names too)
        tokenizer = CLIPTokenizer.from_pretrained(Path(args.clip) / "tokenizer")
    elif (run / "tokenizer" / "vocab.json").exists():
        tokenizer = CLIPTokenizer.from_pretrained(run / "tokenizer")
    elif (export / "tokenizer" / "tokenizer_config.json").exists():  # transformers 5 saves tokenizer.json only
        tokenizer = CLIPTokenizer.from_pretrained(export / "tokenizer")
    else:
        tokenizer = build_tokenizer(run / "tokenizer", cfg)

    torch.manual_seed(args.seed)
    if args.clip:
        from .clip import load as load_clip, penultimate_text_encoder

        text = penultimate_text_encoder(load_clip(args.clip)[0].text).requires_grad_(False)
        cfg.text_layers = text.config.num_hidden_layers
        cfg.extra = {"text_encoder": f"frozen ShapeWorld-CLIP ({args.clip}), layer {cfg.text_layers} of "
                                     f"{cfg.text_layers + 1} (penultimate) + final layer norm"}
    else:
        text = build_text_encoder(cfg, tokenizer)
    unet = build_unet(cfg)
    if args.init_from and not (run / "ckpt.pt").exists() and not (export / "training_state.json").exists():
        from diffusers import UNet2DConditionModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(Path(args.init_from) / "unet").state_dict())
        log(f"UNet initialised from {args.init_from}")
    if args.init_from:
        cfg.extra["init_from"] = f"UNet and VAE initialised from {args.init_from} at step 0"
    ema_text, ema_unet = copy.deepcopy(text).requires_grad_(False), copy.deepcopy(unet).requires_grad_(False)
    for m in (vae, text, unet, ema_text, ema_unet):
        m.to(device)
    params = list(unet.parameters()) + ([] if args.clip else list(text.parameters()))
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    log(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, text encoder "
        f"{sum(p.numel() for p in text.parameters()) / 1e6:.3f}M, VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M")

    step, counter = 0, args.pool
    prev_batch = args.batch  # the batch of the run this one resumes (for the loss log's batch column)
    wall_by_device: dict[str, float] = {}  # training wall time by device (cpu, cuda); the total is their sum
    ck = run / "ckpt.pt"
    if ck.exists():
        s = torch.load(ck, weights_only=True, map_location="cpu")  # restricted unpickler: tensors, containers, ...
        unet.load_state_dict(s["unet"]), text.load_state_dict(s["text"])
        ema_unet.load_state_dict(s["ema_unet"]), ema_text.load_state_dict(s["ema_text"])
        opt.load_state_dict(s["opt"])
        torch.set_rng_state(s["rng"])
        step, counter = s["step"], s["counter"]
        wall_by_device = s.get("wall_by_device", {"cpu": s["wall"]})  # checkpoints before 2026-11-30 ran on the CPU
        prev_batch = s["args"]["batch"]
        log(f"resumed from {ck} at step {step}")
    elif (export / "training_state.json").exists():
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        st = json.loads((export / "training_state.json").read_text())
        eu = UNet2DConditionModel.from_pretrained(export / "unet")
        et = CLIPTextModel.from_pretrained(export / "text_encoder")
        for m in (unet, ema_unet):
            m.load_state_dict(eu.state_dict())
        if not args.clip:
            for m in (text, ema_text):
                m.load_state_dict(et.state_dict())
        step, counter = st["step"], st["scene_counter"]
        wall_by_device = st.get("wall_seconds_by_device", {"cpu": st["wall_seconds"]})
        prev_batch = st["batch"]
        if (export / "training_log.csv").exists() and not (run / "loss.csv").exists():
            shutil.copy(export / "training_log.csv", run / "loss.csv")  # keep the whole loss curve
        log(f"no checkpoint: resumed from the exported weights at step {step} with a fresh optimizer")
    warm_from = 0 if ck.exists() else step  # a fresh optimizer warms up again (Adam's first steps are full size)

    sched = build_train_scheduler(cfg)
    sf = vae.config.scaling_factor
    pool = LatentPool(args.pool, tokenizer.model_max_length, device=device)
    renderer = SceneRenderer(args.seed, args.workers)
    t0 = time.time()
    pool.add(renderer.render(counter - args.pool, counter), vae, tokenizer)
    log(f"latent pool of {args.pool} scenes built in {time.time() - t0:.0f}s (scenes {counter - args.pool}..{counter - 1})")
    empty_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                          return_tensors="pt").input_ids[0].to(device)

    loss_csv = run / "loss.csv"
    header = ["step", "loss", "lr", "sec_per_step", "wall_seconds", "time_utc", "batch"]
    if loss_csv.exists():
        add_batch_column(loss_csv, prev_batch)
    new_csv = not loss_csv.exists()
    fcsv = open(loss_csv, "a", newline="")
    writer = csv.writer(fcsv)
    if new_csv:
        writer.writerow(header)

    def state() -> dict:
        return {"step": step, "scene_counter": counter, "wall_seconds": round(sum(wall_by_device.values()), 1),
                "wall_seconds_by_device": {k: round(v, 1) for k, v in wall_by_device.items()}, "seed": args.seed,
                "batch": args.batch, "lr": args.lr, "ema": args.ema, "p_uncond": args.p_uncond,
                "min_snr_gamma": args.min_snr_gamma,
                "threads": args.threads, "device": str(device), "model": cfg.to_dict(), "vae_scaling_factor": sf,
                "command": "python -m daamlib.shapeworld.train " + " ".join(sys.argv[1:]),
                "exported_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def checkpoint() -> None:
        atomic_save({"unet": unet.state_dict(), "text": text.state_dict(), "ema_unet": ema_unet.state_dict(),
                     "ema_text": ema_text.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
                     "step": step, "counter": counter, "wall": sum(wall_by_device.values()),
                     "wall_by_device": wall_by_device,
                     "args": vars(args)}, ck)

    decoder_seen = {"mtime": 0.0}

    def maybe_reload_decoder() -> None:
        """Pick up a decoder fine-tuned by `--finetune-decoder` (the encoder, hence the latents, is unchanged)."""
        f = run / DECODER_FILE
        if f.exists() and f.stat().st_mtime > decoder_seen["mtime"]:
            load_decoder(vae, f)
            decoder_seen["mtime"] = f.stat().st_mtime
            log(f"loaded the fine-tuned decoder {f}")

    def do_export() -> None:
        t = time.time()
        fcsv.flush()
        maybe_reload_decoder()
        ema_unet.eval(), ema_text.eval()
        export_folder(export, vae, ema_text, tokenizer, ema_unet, cfg, state(), run)
        try:
            sample_grid(vae, ema_text, tokenizer, ema_unet, cfg, run / f"samples_{step:06d}.png")
        except Exception as e:  # a sampling failure must not kill training
            log(f"sampling failed: {e!r}")
        log(f"exported step {step} to {export} ({time.time() - t:.0f}s)")

    unet.train(), text.train(args.clip is None)
    t_ck = t_ex = time.time()
    t_last, losses = time.time(), []
    t_mark = time.time()  # wall time counts everything in the loop: steps, pool refreshes, exports
    alphas_cumprod = sched.alphas_cumprod.float().to(device)
    next_refresh = renderer.render_ahead(counter, counter + args.refresh)
    cooldown_from = None if args.max_minutes is None else (args.max_minutes - args.cooldown_minutes) * 60
    log(f"training from step {step} on {device}")
    while step < args.steps and not stop["flag"]:
        if args.max_minutes is not None and time.time() - t_invocation > args.max_minutes * 60:
            log("max minutes reached")
            break
        if step > 0 and step % args.refresh_every == 0:
            pool.add(next_refresh(), vae, tokenizer)
            counter += args.refresh
            next_refresh = renderer.render_ahead(counter, counter + args.refresh)
        lr = args.lr * min(1.0, (step + 1 - warm_from) / args.warmup)
        if args.cooldown_minutes > 0 and time.time() - t_invocation > cooldown_from:
            lr *= 1 - 0.9 * min(1.0, (time.time() - t_invocation - cooldown_from) / (args.cooldown_minutes * 60))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, args.pool, (args.batch,)).to(device)
        z0 = (pool.mean[idx] + pool.std[idx] * torch.randn_like(pool.mean[idx])) * sf  # [B, 4, 16, 16]
        ids = pool.ids[idx].clone()  # [B, L]
        drop = (torch.rand(args.batch) < args.p_uncond).to(device)
        ids[drop] = empty_ids
        noise = torch.randn_like(z0)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,)).to(device)
        zt = sched.add_noise(z0, noise, t)
        with torch.set_grad_enabled(args.clip is None):  # a frozen CLIP needs no graph
            cond = text(ids).last_hidden_state  # [B, L, D]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        if args.min_snr_gamma > 0:
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            weighted = (per_sample * torch.clamp(snr, max=args.min_snr_gamma) / snr).mean()
        else:
            weighted = per_sample.mean()
        loss = per_sample.mean().detach()  # logged unweighted, so the loss curve stays comparable across settings
        opt.zero_grad(set_to_none=True)
        weighted.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        if not args.clip:
            ema_update(ema_text, text, decay)
        step += 1
        now = time.time()
        wall_by_device[device.type] = wall_by_device.get(device.type, 0.0) + now - t_mark
        t_mark = now
        losses.append(loss)  # a tensor: no device sync per step
        if step % args.log_every == 0:
            sps = (time.time() - t_last) / len(losses)
            losses = [float(torch.stack(losses).mean())]
            writer.writerow([step, f"{np.mean(losses):.5f}", f"{lr:.2e}", f"{sps:.3f}", f"{sum(wall_by_device.values()):.0f}",
                             time.strftime("%H:%M:%S", time.gmtime()), args.batch])
            fcsv.flush()
            if step % (args.log_every * 5) == 0:
                log(f"step {step} loss {np.mean(losses):.4f} lr {lr:.1e} {sps:.2f}s/step")
            t_last, losses = time.time(), []
        if time.time() - t_ck > args.ckpt_minutes * 60:
            checkpoint()
            t_ck = time.time()
        if time.time() - t_ex > args.export_minutes * 60:
            do_export()
            t_ex = time.time()
    checkpoint()
    do_export()
    fcsv.close()
    renderer.close()
    log(f"stopped at step {step}; total training wall time {sum(wall_by_device.values()) / 60:.1f} min")


if __name__ == "__main__":
    main()
