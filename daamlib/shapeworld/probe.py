"""Training monitor: does a ShapeWorld model's cross-attention look at the right pixels?

For rendered *validation* scenes (never test), the scene is encoded, noised to a few time steps,
and denoised once with its caption under :func:`daamlib.trace` (no guidance: every row is the
caption's); the kernel (:func:`daamlib.kernel.aggregate`) sums the recorded probabilities over
layers, heads and time steps and upsamples them to 64×64, exactly as DAAM does for a generation
(per resolution too, for the by-resolution ratios). For each token the probe reports

* ``obj/bg``: mean attention on the token's own region over the mean on background pixels (for a
  background word: the background over all objects; for words without a region, EOS and padding:
  all objects over the background), and
* ``own/other``: in two-object scenes, mean on the word's own object over the other object.

Ratios above 1 mean the token localises. Every token position is kept (padding included), since
no prompt goes through ``encode_prompt`` here.

    python -m daamlib.shapeworld.probe data/models/shapeworld --scenes 64
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..kernel import aggregate
from ..trace import trace
from .model import images_to_tensor
from .world import SIZE, ShapeWorld


def _category(role: str | None, word: str) -> str:
    return role if role is not None else "function"


@torch.no_grad()
def probe(path: str | Path, n_scenes: int = 64, timesteps=(100, 300, 500, 700, 900), seed: int = 0,
          batch: int = 32) -> dict:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    unet, vae, text, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    world = ShapeWorld(seed=0)
    scenes = [world.scene("val", i) for i in range(n_scenes)]
    sched = pipe.scheduler
    g = torch.Generator().manual_seed(seed)
    sf = vae.config.scaling_factor
    obj_bg = defaultdict(list)
    own_other = defaultdict(list)
    per_res = defaultdict(lambda: defaultdict(list))
    for a in range(0, n_scenes, batch):
        sc = scenes[a : a + batch]
        z0 = vae.encode(images_to_tensor(np.stack([s.image for s in sc]))).latent_dist.mean * sf
        ids = tok([s.caption for s in sc], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        cond = text(ids)[0]
        with trace(pipe) as tc:  # UNet calls made directly: one recorded step per time step, every row and token
            for t in timesteps:
                noise = torch.randn(z0.shape, generator=g)
                tt = torch.full((len(sc),), t, dtype=torch.long)
                unet(sched.add_noise(z0, noise, tt), tt, encoder_hidden_states=cond)
        recorded = tc.generations[-1].maps  # layer → per step [B, K, h, w], heads summed
        B, K = len(sc), ids.shape[1]
        by_res: dict[int, list[torch.Tensor]] = defaultdict(list)
        for steps in recorded.values():
            m = torch.stack(steps)  # [steps, B, K, h, w]
            by_res[m.shape[-2]].append(m.flatten(1, 2))  # [steps, B·K, h, w]: images and tokens as one axis

        def eq6(layer_maps) -> torch.Tensor:  # → [B, K, 64, 64]
            return aggregate(layer_maps, (SIZE, SIZE)).reshape(B, K, SIZE, SIZE)

        maps = {r: eq6(ms) for r, ms in by_res.items()}  # resolution (grid height) → [B, K, 64, 64]
        total = eq6([m for ms in by_res.values() for m in ms])
        for bi, s in enumerate(sc):
            objs_union = ~s.background_mask
            bg = s.background_mask
            for k in range(ids.shape[1]):
                wi = k - 1
                if k == 0:
                    cat, own = "bos", objs_union
                elif wi < len(s.words):
                    role = s.roles.get(wi)
                    cat = _category(role, s.words[wi])
                    own = s.masks.get(wi, objs_union)
                elif k == len(s.words) + 1:
                    cat, own = "eos", objs_union
                else:
                    cat, own = "pad", objs_union
                if cat == "background":
                    num, den = bg, objs_union
                else:
                    num, den = own, bg
                if num.sum() == 0 or den.sum() == 0:
                    continue
                for res, mp in list(maps.items()) + [("all", total)]:
                    a_map = mp[bi, k].numpy()
                    ratio = float(a_map[num].mean() / max(a_map[den].mean(), 1e-12))
                    if res == "all":
                        obj_bg[cat].append(ratio)
                    else:
                        per_res[cat][res].append(ratio)
                if s.kind == "pair" and cat in ("noun", "colour", "size", "pattern") and wi in s.masks:
                    other = [o.mask for o in s.objects if o.mask is not s.masks[wi]]
                    if other and other[0].sum() > 0:
                        a_map = total[bi, k].numpy()
                        own_other[cat].append(float(a_map[s.masks[wi]].mean() / max(a_map[other[0]].mean(), 1e-12)))
    summary = {
        "scenes": n_scenes,
        "split": "val",
        "timesteps": list(timesteps),
        "obj_bg": {c: round(float(np.mean(v)), 4) for c, v in sorted(obj_bg.items())},
        "obj_bg_median": {c: round(float(np.median(v)), 4) for c, v in sorted(obj_bg.items())},
        "own_other": {c: round(float(np.mean(v)), 4) for c, v in sorted(own_other.items())},
        "own_other_frac_gt1": {c: round(float(np.mean(np.array(v) > 1)), 3) for c, v in sorted(own_other.items())},
        "obj_bg_by_resolution": {c: {str(r): round(float(np.mean(v)), 4) for r, v in sorted(d.items())}
                                 for c, d in sorted(per_res.items())},
        "n": {c: len(v) for c, v in sorted(obj_bg.items())},
    }
    st = Path(path) / "training_state.json"
    if st.exists():
        summary["step"] = json.loads(st.read_text())["step"]
    return summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m daamlib.shapeworld.probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default="data/models/shapeworld")
    ap.add_argument("--scenes", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--history", default="runs/shapeworld/probe_history.jsonl", help="append the result here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t = time.time()
    res = probe(a.path, a.scenes)
    res["seconds"] = round(time.time() - t, 1)
    print(json.dumps(res, indent=1))
    if a.history:
        Path(a.history).parent.mkdir(parents=True, exist_ok=True)
        with open(a.history, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
