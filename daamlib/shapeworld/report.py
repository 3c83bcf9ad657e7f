"""Figures for the ShapeWorld model card: loss curve, sample grids per scheduler, VAE reconstructions.

    python -m daamlib.shapeworld.report data/models/shapeworld --out data/models/shapeworld

Writes ``loss_curve.png``, ``samples_ddim.png``, ``samples_dpm.png`` (a flow-matching transformer such as
``shapeworld-mmdit``: ``samples_euler.png``, its own scheduler) and ``report.json`` (the annotator's verdict on
the samples: how often every caption noun was found with its colour).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .world import COLOURS, ShapeWorld


def plot_loss(csv_path: str | Path, ax=None, ylabel: str = "ε-prediction MSE"):
    """Training loss against training images seen (runs differ in batch size), log scale, with a
    running median; a dotted line marks each change of batch size."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    batch = df["batch"] if "batch" in df else pd.Series(32, index=df.index)  # logs before the column: batch 32
    seen = (df["step"].diff().fillna(df["step"]) * batch).cumsum() / 1e6
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(seen, df["loss"], lw=0.5, alpha=0.4, label="loss (mean of each logged window)")
    ax.plot(seen, df["loss"].rolling(21, min_periods=1, center=True).median(), lw=1.5,
            label="running median (21 windows)")
    for i in df.index[1:][batch.diff().iloc[1:] != 0]:
        ax.axvline(seen[i - 1], ls=":", c="k", lw=1)
        ax.annotate(f"batch {batch[i - 1]} → {batch[i]}", (seen[i - 1], 0.98), xycoords=("data", "axes fraction"),
                    ha="right", va="top", fontsize=8, rotation=90)
    ax.set_xlabel("training images seen (millions)")
    ax.set_ylabel(ylabel)  # (the MMDiT's: flow matching's velocity MSE)
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return ax


@torch.no_grad()
def samples(pipe, prompts: list[str], scheduler: str | None = "ddim", steps: int = 25, guidance: float = 5.0,
            seed: int = 0) -> np.ndarray:
    """uint8 [N, 64, 64, 3] images from ``pipe`` with the named scheduler (made from the pipeline's own
    scheduler config, which is put back afterwards; None: the pipeline's own)."""
    from ..pipeline import set_scheduler

    own = pipe.scheduler
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    try:
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                   generator=torch.Generator().manual_seed(seed)).images
    finally:
        pipe.scheduler = own
    return (out * 255).round().astype(np.uint8)


def save_grid(images: np.ndarray, captions: list[str], path: str | Path, cols: int = 8) -> None:
    import matplotlib.pyplot as plt

    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, im, cap in zip(np.ravel(axes), images, captions):
        ax.imshow(im, interpolation="nearest")
        words = cap.split()
        ax.set_title("\n".join([" ".join(words[: (len(words) + 1) // 2]), " ".join(words[(len(words) + 1) // 2 :])]),
                     fontsize=5.5)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def annotate_samples(images: np.ndarray, captions: list[str]) -> dict:
    """Fraction of samples where the annotator finds every caption noun (with its colour, if named)."""
    from .annotator import Annotator

    ann = Annotator.load()
    ok, per_noun = [], []
    for im, cap in zip(images, captions):
        a = ann.annotate(im, cap)
        words = cap.split()
        found = []
        for i, present in a.present.items():
            colour = words[i - 1] if i > 0 and words[i - 1] in COLOURS else None
            good = present and (colour is None or any(d.colour == colour and (d.mask & a.noun_masks[i]).any()
                                                        for d in a.objects))
            found.append(good)
        per_noun += found
        ok.append(all(found) if found else False)
    return {"samples": len(images), "all_nouns_found": float(np.mean(ok)), "nouns_found": float(np.mean(per_noun))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m daamlib.shapeworld.report")
    ap.add_argument("path", nargs="?", default="data/models/shapeworld")
    ap.add_argument("--out", default=None, help="folder for the figures (default: the model folder)")
    ap.add_argument("--n", type=int, default=32, help="validation prompts to sample")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out or a.path)
    out.mkdir(parents=True, exist_ok=True)
    rep: dict = {}
    # a UNet's DDPM-trained model is sampled with DDIM and DPM-Solver; a flow-matching transformer with its own Euler
    scheduler = json.loads((Path(a.path) / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    flow = scheduler.startswith("FlowMatch")
    log = Path(a.path) / "training_log.csv"
    if log.exists():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ax = plot_loss(log, ylabel="flow-matching velocity (ε − x₀) MSE" if flow else "ε-prediction MSE")
        ax.figure.tight_layout()
        ax.figure.savefig(out / "loss_curve.png", dpi=130)
        plt.close(ax.figure)
    world = ShapeWorld()
    caps = [world.scene("val", i, kind="pair" if i % 2 == 0 else None).caption for i in range(a.n)]
    from ..pipeline import load_pipeline

    pipe = load_pipeline(str(a.path))
    pipe.set_progress_bar_config(disable=True)
    for name in ("euler",) if flow else ("ddim", "dpm"):
        ims = samples(pipe, caps, None if flow else name, a.steps, a.guidance)
        save_grid(ims, caps, out / f"samples_{name}.png")
        rep[name] = annotate_samples(ims, caps)
        rep[name].update(steps=a.steps, guidance=a.guidance)
    st = Path(a.path) / "training_state.json"
    if st.exists():
        rep["step"] = json.loads(st.read_text())["step"]
    print(json.dumps(rep, indent=1))
    (out / "report.json").write_text(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
