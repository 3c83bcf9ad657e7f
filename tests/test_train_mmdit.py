"""The ShapeWorld MMDiT trainer on a toy-sized transformer: a run cut in two equals one that was not, bit for bit;
the saved folder loads as a StableDiffusion3Pipeline, generates, and is traced; training's text states are exactly
encode_prompt's."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from daamlib.shapeworld import train_mmdit

TOY = ["--layers", "2", "--heads", "2", "--head-dim", "16", "--batch", "4", "--pool", "64", "--refresh", "16",
       "--refresh-every", "2", "--warmup", "2", "--log-every", "1", "--ckpt-every", "1"]
PROMPT = "a red circle above a blue square on grass"


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 3-step run saved as a pipeline, and the same run as 2 + 1 steps in two calls."""
    root = tmp_path_factory.mktemp("mmdit")
    train_mmdit.main(["--out", str(root / "whole"), *TOY, "--steps", "3", "--save-pipeline", str(root / "pipe")])
    train_mmdit.main(["--out", str(root / "split"), *TOY, "--steps", "2"])
    train_mmdit.main(["--out", str(root / "split"), *TOY, "--steps", "3"])
    return root


@pytest.mark.slow
def test_resumed_run_is_bit_exact(runs):
    whole = torch.load(runs / "whole" / "ckpt.pt", weights_only=True)
    split = torch.load(runs / "split" / "ckpt.pt", weights_only=True)
    assert whole["step"] == split["step"] == 3 and whole["counter"] == split["counter"] == 64 + 16  # refresh at step 2
    for part in ("model", "ema"):
        assert whole[part].keys() == split[part].keys()
        for k in whole[part]:
            assert torch.equal(whole[part][k], split[part][k]), f"{part}.{k} differs after resuming"
    for s, t in zip(whole["opt"]["state"].values(), split["opt"]["state"].values()):
        assert torch.equal(s["exp_avg"], t["exp_avg"]) and torch.equal(s["exp_avg_sq"], t["exp_avg_sq"])
    assert torch.equal(whole["rng"], split["rng"])
    assert [r["loss"] for r in rows(runs / "whole" / "training_log.csv")] == \
        [r["loss"] for r in rows(runs / "split" / "training_log.csv")]
    state = json.loads((runs / "split" / "training_state.json").read_text())
    assert state["step"] == 3 and state["images_seen"] == 12 and state["hardware"]["device"] == "cpu"
    assert state["sampling"]["status"].startswith("placeholder")


@pytest.mark.slow
def test_killed_run_redoes_the_steps_after_its_checkpoint(runs, tmp_path):
    """A log row written after the last checkpoint (a SIGKILL) is dropped on resume, then written again."""
    import shutil

    out = tmp_path / "killed"
    shutil.copytree(runs / "split", out)
    log = out / "training_log.csv"
    with open(log, "a", newline="") as f:
        csv.writer(f).writerow([4, "9.99999", "0", "0", "0", "00:00:00", 4, "cpu"])
    train_mmdit.main(["--out", str(out), *TOY, "--steps", "3"])  # already at 3: trains nothing, trims the log
    assert [r["step"] for r in rows(log)] == ["1", "2", "3"]


@pytest.mark.slow
def test_saved_pipeline_loads_generates_and_traces(runs):
    from diffusers import StableDiffusion3Pipeline

    import daamlib

    folder = runs / "pipe"
    with pytest.raises(ValueError):  # diffusers must be told that there is no T5
        StableDiffusion3Pipeline.from_pretrained(folder)
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.config.patch_size == 1 and pipe.vae.config.shift_factor == 0.0
    assert json.loads((folder / "sampling.json").read_text()) == train_mmdit.SAMPLING_PLACEHOLDER
    whole = torch.load(runs / "whole" / "ckpt.pt", weights_only=True)["ema"]
    # the EMA weights, stored in float16 and loaded as float32
    assert pipe.transformer.dtype == torch.float32
    assert all(torch.equal(v, whole[k].half().float()) for k, v in pipe.transformer.state_dict().items())
    # --export writes the same folder from the checkpoint alone, touching nothing in --out
    before = {f.name: f.stat().st_mtime_ns for f in (runs / "whole").iterdir()}
    train_mmdit.main(["--out", str(runs / "whole"), "--export", str(runs / "exported")])
    assert {f.name: f.stat().st_mtime_ns for f in (runs / "whole").iterdir()} == before
    exported = StableDiffusion3Pipeline.from_pretrained(runs / "exported", text_encoder_3=None, tokenizer_3=None)
    assert all(torch.equal(v, whole[k].half().float()) for k, v in exported.transformer.state_dict().items())
    # a re-export keeps what was chosen or written by hand beside the weights; a new folder gets the placeholder
    chosen = {"steps": 20, "guidance": 4.0}
    (runs / "exported" / "sampling.json").write_text(json.dumps(chosen))
    (runs / "exported" / "quality_val.json").write_text("{}")
    (runs / "exported" / "MODEL_CARD.md").write_text("card")
    train_mmdit.main(["--out", str(runs / "whole"), "--export", str(runs / "exported")])
    assert json.loads((runs / "exported" / "sampling.json").read_text()) == chosen
    assert (runs / "exported" / "quality_val.json").is_file() and (runs / "exported" / "MODEL_CARD.md").is_file()

    # what training feeds the transformer is what the pipeline does, for captions and for the empty caption
    prompts = [PROMPT, "two green triangles"]
    pe, npe, pooled, npooled = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=True)
    ids = pipe.tokenizer(prompts + [""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    e, p = train_mmdit.encode_ids(pipe.text_encoder, ids, pipe.transformer.config.joint_attention_dim, 256)
    assert pe.shape == (2, 24 + 256, 256)
    assert torch.equal(e[:2], pe) and torch.equal(p[:2], pooled) and torch.equal(e[2], npe[0]) and torch.equal(p[2], npooled[0])

    image = pipe(PROMPT, num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    hm = daamlib.generate(pipe, PROMPT, steps=2)
    assert hm.words == PROMPT.split()
    m = hm["circle"]
    assert m.heat.shape == (64, 64) and torch.isfinite(m.heat).all() and m.heat.max() > 0
    # daamlib.load_pipeline passes the folder's absent components (no T5) itself, and reads its sampling.json
    loaded = daamlib.load_pipeline(str(folder))
    assert type(loaded).__name__ == "StableDiffusion3Pipeline" and loaded.text_encoder_3 is None
    assert loaded.daam_sampling["steps"] == train_mmdit.SAMPLING_PLACEHOLDER["steps"]
    # the card's figures: the loss in flow matching's terms and samples with the model's own Euler scheduler
    from daamlib.shapeworld import report

    report.main([str(folder), "--out", str(runs / "card"), "--n", "2", "--steps", "2"])
    assert {"loss_curve.png", "samples_euler.png", "report.json"} <= {f.name for f in (runs / "card").iterdir()}
    assert json.loads((runs / "card" / "report.json").read_text())["euler"]["samples"] == 2


def test_collapsed_null_rows_equal_the_full_rows_forward_and_backward():
    """Training feeds one zero row with its logit raised by ln 256 in place of the pipeline's 256 zero rows: the
    prediction and every parameter's gradient equal the full sequence's (float64), so training computes exactly
    the model that inference runs."""
    import copy

    torch.manual_seed(0)
    full = train_mmdit.build_transformer(train_mmdit.MMDiTConfig(layers=3, heads=2, head_dim=16), 128, 128).double()
    collapsed = copy.deepcopy(full)
    train_mmdit.collapse_null_rows(collapsed, 256)
    B = 3
    x, clip = torch.randn(B, 4, 16, 16, dtype=torch.float64), torch.randn(B, 24, 256, dtype=torch.float64)
    pooled, t = torch.randn(B, 256, dtype=torch.float64), torch.tensor([100.0, 500.0, 900.0], dtype=torch.float64)
    preds = []
    for model, rows in ((full, 256), (collapsed, 1)):
        text = torch.cat([clip, clip.new_zeros(B, rows, 256)], dim=1)
        pred = model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t).sample
        (pred * torch.linspace(-1, 1, pred.numel(), dtype=torch.float64).view_as(pred)).sum().backward()
        preds.append(pred.detach())
    torch.testing.assert_close(preds[1], preds[0], rtol=0, atol=1e-12)
    named, learning = dict(collapsed.named_parameters()), 0
    for name, p in full.named_parameters():  # the last block's text query and outputs feed nothing: no gradient
        assert (p.grad is None) == (named[name].grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(named[name].grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
            learning += int(p.grad.abs().max() > 0)
    assert learning > 0.9 * len(named)
