"""ShapeWorld-CLIP: family-name captions, the penultimate-layer text encoder, a toy training run that
resumes, and the UNet trainer conditioned on a frozen CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from daamlib.shapeworld import clip, train
from daamlib.shapeworld.world import HYPERNYM, SHAPES

from test_train import TOY


def test_family_captions_replace_shape_nouns_and_fix_articles():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        out = clip.hypernym_caption("an ellipse above two striped squares on grass", rng)
        seen.add(out)
        words = out.split()
        assert words[-2:] == ["on", "grass"] and "above" in words
        assert "ellipse" not in words or "polygons" in words  # at least one noun was replaced
    assert seen == {"a round shape above two striped squares on grass",
                    "an ellipse above two striped polygons on grass",
                    "a round shape above two striped polygons on grass"}
    assert clip.hypernym_caption("a red arrow", rng) == "a red pointed shape"  # the adjective keeps "a"
    assert clip.hypernym_caption("an orange heart", rng) == "an orange symbol"
    assert clip.hypernym_caption("", rng) == ""


def test_every_shape_has_a_family_name_and_every_word_is_one_token(tmp_path):
    assert {HYPERNYM[s] for s in SHAPES} == set(clip.HYPERNYM_NOUN)
    tok = clip.build_tokenizer(tmp_path, clip.ClipConfig())  # raises if a word is several tokens
    assert {"polygon", "symbols", "shape"} <= set(clip.clip_words())
    assert tok.pad_token == "!"


def test_penultimate_encoder_is_the_towers_layer_l_minus_1_normalised(tmp_path):
    cfg = clip.ClipConfig(text_layers=3)
    tok = clip.build_tokenizer(tmp_path, cfg)
    torch.manual_seed(0)
    model = clip.ShapeWorldClip(cfg, tok).eval()
    ids = tok(["a red circle above a blue square", "two stars"], padding="max_length", max_length=24,
              return_tensors="pt").input_ids
    enc = clip.penultimate_text_encoder(model.text)
    assert enc.config.num_hidden_layers == 2
    with torch.no_grad():
        hs = model.text(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        want = model.text.text_model.final_layer_norm(hs)
        assert torch.equal(enc(ids).last_hidden_state, want)


@pytest.mark.slow
def test_toy_clip_trains_resumes_and_conditions_a_unet(tmp_path):
    from diffusers import StableDiffusionPipeline

    run, out = tmp_path / "clip_run", tmp_path / "clip"
    toy = ["--run-dir", str(run), "--out", str(out), "--batch", "8", "--pool", "32", "--refresh", "8",
           "--refresh-every", "2", "--text-layers", "2", "--n-eval", "64", "--warmup", "2"]
    clip.main(["train", *toy, "--steps", "3"])
    assert torch.load(run / "ckpt.pt", weights_only=True)["step"] == 3
    report = json.loads((out / "report.json").read_text())
    r = report["retrieval_test"]
    assert r["n"] == 64 and r["group"] == 32 and r["chance"] == 1 / 32
    assert 0 <= r["caption_to_image"]["top1"] <= 1 and report["training"]["step"] == 3
    clip.main(["train", *toy, "--steps", "5"])  # resumes from the checkpoint
    s = torch.load(run / "ckpt.pt", weights_only=True)
    assert s["step"] == 5 and s["counter"] == clip.CLIP_INDEX_OFFSET + 32 + 2 * 8  # refreshes at steps 2 and 4
    model, tok = clip.load(out)
    assert model.text.config.num_hidden_layers == 2

    # a first toy diffusion model, then a second one started from it and conditioned on the frozen CLIP
    first, second = tmp_path / "first", tmp_path / "second"
    train.main(["--run-dir", str(tmp_path / "r1"), "--export-dir", str(first), *TOY, "--steps", "2"])
    train.main(["--run-dir", str(tmp_path / "r2"), "--export-dir", str(second), *TOY, "--steps", "2",
                "--clip", str(out), "--init-from", str(first)])
    (second / "clip").mkdir()
    (second / "clip" / "kept.txt").write_text("x")
    train.main(["--run-dir", str(tmp_path / "r2"), "--export-dir", str(second), *TOY, "--steps", "3",
                "--clip", str(out), "--init-from", str(first)])  # resumes; a re-export keeps folders it did not write
    assert (second / "clip" / "kept.txt").read_text() == "x"
    pipe = StableDiffusionPipeline.from_pretrained(second)
    want = clip.penultimate_text_encoder(model.text)
    assert pipe.text_encoder.config.num_hidden_layers == 1  # frozen: exactly the CLIP's layer 1
    for k, v in want.state_dict().items():
        assert torch.equal(pipe.text_encoder.state_dict()[k], v), k
    assert pipe.tokenizer.get_vocab() == tok.get_vocab()
    a = StableDiffusionPipeline.from_pretrained(first)
    for k, v in a.vae.state_dict().items():  # the VAE is the first model's
        assert torch.equal(pipe.vae.state_dict()[k], v), k
    state = json.loads((second / "training_state.json").read_text())
    assert "init_from" in state["model"]["extra"] and "ShapeWorld-CLIP" in state["model"]["extra"]["text_encoder"]


def test_trainer_refuses_a_folder_that_is_not_a_clip(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--clip", str(tmp_path)])
    assert "no clip_config.json there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--init-from", str(tmp_path)])
    assert "no unet/config.json there" in capsys.readouterr().err


CLIP_MODEL = Path(__file__).resolve().parents[1] / "data" / "models" / "shapeworld-clip"


@pytest.mark.skipif(not (CLIP_MODEL / "model_index.json").exists(), reason="no exported shapeworld-clip model")
def test_shipped_contextual_model_is_conditioned_on_its_clip_and_traces():
    """data/models/shapeworld-clip: within the size budget, its text encoder is exactly the penultimate layer of
    the CLIP shipped beside it, it loads by name, and its maps cover every word of a caption."""
    import daamlib

    size = sum(f.stat().st_size for f in CLIP_MODEL.rglob("*") if f.is_file())
    assert size <= 40 * 2**20, f"{size / 2**20:.1f} MB"
    pipe = daamlib.load_pipeline("shapeworld-clip")
    model, tok = clip.load(CLIP_MODEL / "clip")
    want = clip.penultimate_text_encoder(model.text).state_dict()
    assert pipe.text_encoder.config.num_hidden_layers == model.text.config.num_hidden_layers - 1 >= 4
    assert all(torch.equal(pipe.text_encoder.state_dict()[k], v) for k, v in want.items())
    assert pipe.tokenizer.get_vocab() == tok.get_vocab()
    hm = daamlib.generate(pipe, "a red circle above a blue square on grass", steps=3)
    assert list(hm.words) == "a red circle above a blue square on grass".split() and hm.size == (64, 64)
