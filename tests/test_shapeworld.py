"""ShapeWorld: the world's determinism and ground truth, the annotator's accuracy, the shipped model folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from daamlib.shapeworld.world import (
    COLOURS,
    HELD_OUT_COLOUR_SHAPE,
    HELD_OUT_SHAPE_PAIRS,
    ONTOLOGY,
    SHAPES,
    ShapeWorld,
    all_words,
)

MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "models" / "shapeworld"
WORLD_DIGEST = "2953443b7f17beb698adec90ef4c7476f8a051b4bc1f80f82c0dbfb014338786"  # 400 scenes, see the test


@pytest.fixture(scope="module")
def world():
    return ShapeWorld()


def test_vocabulary_sizes():
    assert len(SHAPES) >= 12 and len(ONTOLOGY) >= 4 and len(COLOURS) >= 6
    assert all(len(group) >= 2 for group in ONTOLOGY.values())  # cohyponym pairs exist


def test_deterministic(world):
    a, b = world.scene("val", 7), ShapeWorld().scene("val", 7)
    assert a.caption == b.caption and np.array_equal(a.image, b.image)
    assert all(np.array_equal(a.masks[i], b.masks[i]) for i in a.masks)
    c = world.scene("val", 8)
    assert not np.array_equal(a.image, c.image)
    assert ShapeWorld(seed=1).scene("val", 7).caption != a.caption or not np.array_equal(
        ShapeWorld(seed=1).scene("val", 7).image, a.image)


def _digest(world, n: int) -> str:
    import hashlib

    h = hashlib.sha256()
    for split in ("train", "val", "test", "unreal"):
        for i in range(n):
            for s in (world.scene(split, i), world.scene(split, i, kind="pair")):
                h.update(s.caption.encode())
                h.update(np.ascontiguousarray(s.image).tobytes())
                for k in sorted(s.masks):
                    h.update(str(k).encode())
                    h.update(np.ascontiguousarray(s.masks[k]).tobytes())
    return h.hexdigest()


def test_the_world_is_the_one_the_shipped_model_was_trained_on(world):
    """Refactoring the generator must not change a single scene: the model, its splits and its
    held-out combinations were made from exactly these. Update the digest only with a retrained model."""
    assert _digest(world, 50) == WORLD_DIGEST


def test_masks_match_words(world):
    for i in range(60):
        s = world.scene("train", i)
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.words == s.caption.split()
        assert set(s.masks) == set(s.roles)
        union = np.zeros((64, 64), bool)
        for o in s.objects:
            assert o.mask.sum() >= 20
            assert not (union & o.mask).any()  # visible masks are disjoint
            union |= o.mask
        assert np.array_equal(~union, s.background_mask)
        for j, role in s.roles.items():
            m = s.masks[j]
            assert m.dtype == bool and m.shape == (64, 64) and m.any()
            if role == "background":
                assert np.array_equal(m, s.background_mask)
            elif role == "numeral":
                assert np.array_equal(m, union)
            else:  # an adjective shares the mask of the noun that ends its phrase
                noun = next(k for k in range(j, len(s.words)) if s.roles.get(k) == "noun")
                assert np.array_equal(m, s.masks[noun])
        if s.kind == "pair":
            nouns = [k for k, r in s.roles.items() if r == "noun"]
            assert [s.words[k] for k in nouns] == [o.shape for o in s.objects]
            assert s.relation.split()[0] in s.words


def test_held_out_combos_only_in_unreal(world):
    for split in ("train", "val", "test"):
        for i in range(150):
            s = world.scene(split, i)
            assert not world.is_held_out(s.objects), (split, i, s.caption)
            assert ShapeWorld.split_of_caption(s.caption) == split
    for i in range(40):
        s = world.scene("unreal", i)
        pairs = {(o.colour, o.shape) for o in s.objects}
        shapes = {o.shape for o in s.objects}
        assert pairs & set(HELD_OUT_COLOUR_SHAPE) or any(a in shapes and b in shapes for a, b in HELD_OUT_SHAPE_PAIRS)


def test_every_world_word_is_one_token(tmp_path):
    from daamlib.shapeworld.model import ModelConfig, build_tokenizer

    tok = build_tokenizer(tmp_path, ModelConfig())
    s = ShapeWorld().scene("val", 0)
    ids = tok(s.caption).input_ids
    assert len(ids) == len(s.words) + 2
    assert len(all_words()) > 50


def test_annotator_on_rendered_scenes():
    from daamlib.shapeworld.annotator import WEIGHTS, Annotator, validate

    if not WEIGHTS.exists():
        pytest.skip("annotator weights not trained")
    res = validate(Annotator.load(), n=100, split="test")
    # the card's figures on 1,000 scenes are higher; small-N tolerance
    assert res["mean_iou"] >= 0.88 and res["shape_acc"] >= 0.9 and res["colour_acc"] >= 0.93, res


def test_annotator_matches_caption_nouns():
    from daamlib.shapeworld.annotator import WEIGHTS, Annotator

    if not WEIGHTS.exists():
        pytest.skip("annotator weights not trained")
    ann = Annotator.load()
    world = ShapeWorld()
    hits = total = 0
    for i in range(30):
        s = world.scene("test", i, kind="pair")
        a = ann.annotate(s.image, s.caption)
        nouns = [k for k, r in s.roles.items() if r == "noun"]
        assert sorted(a.noun_masks) == nouns
        total += len(nouns)
        hits += sum(a.present[k] for k in nouns)
    assert hits / total >= 0.9


@pytest.mark.skipif(not (MODEL_DIR / "model_index.json").exists(), reason="no exported model")
def test_probe_traces_with_daamlib_and_finds_the_nouns():
    """The probe records through daamlib.trace and sums with the kernel: nouns' maps sit on their objects
    (obj/bg 2.1 on 64 scenes at step 12,190), every layer resolution is reported, and the UNet is left as found."""
    from daamlib.shapeworld.probe import probe

    res = probe(MODEL_DIR, n_scenes=8, timesteps=(300, 700), batch=4)
    assert res["scenes"] == 8 and res["n"]["noun"] >= 8
    assert res["obj_bg"]["noun"] > 1.3 and res["obj_bg"]["colour"] > 1.3, res["obj_bg"]
    assert set(res["obj_bg_by_resolution"]["noun"]) == {"4", "8", "16"}
    assert all(np.isfinite(v) for v in res["obj_bg"].values())


@pytest.mark.skipif(not (MODEL_DIR / "model_index.json").exists(), reason="no exported model")
def test_shipped_model_loads_and_samples():
    from diffusers import StableDiffusionPipeline

    size = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 40 * 2**20, f"{size / 2**20:.1f} MB"
    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR, local_files_only=True)
    assert pipe.safety_checker is None and pipe.text_encoder.config.num_hidden_layers == 0
    # cross-attention at three resolutions of the 16×16 latent
    cross = [n for n, m in pipe.unet.named_modules() if getattr(m, "is_cross_attention", False)]
    assert {n.split(".")[0] for n in cross} >= {"down_blocks", "mid_block", "up_blocks"}
    s = ShapeWorld().scene("test", 0)
    ids = pipe.tokenizer(s.caption).input_ids
    assert len(ids) == len(s.words) + 2
    img = pipe(s.caption, num_inference_steps=2, guidance_scale=5.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()


# Measured on the shipped weights (step 12,190) with the call below: both objects right in 11 of 12
# images, DAAM-0.4 mIoU 35.8 vs 8.1 for the whole image (margin 27.7, 23 nouns), colour mass own
# 0.129 vs other 0.085 (ratio 1.53, 17 words). The test keeps a tolerance under them, so a change that
# breaks generation or attribution fails here.
SMALL_N_QUALITY = {"n": 12, "steps": 20, "both_correct_min": 50.0, "miou_margin_min": 20.0,
                   "colour_own_over_other_min": 1.2}


@pytest.mark.slow
def test_shipped_model_quality_small_n(tmp_path):
    """The issue-3 bars' small-N version: DAAM-0.4 noun masks beat the whole image by a margin, and
    colour words put more map mass on their own object than on the other one."""
    from daamlib.shapeworld.quality import evaluate

    q = SMALL_N_QUALITY
    s = evaluate(n=q["n"], steps=q["steps"], out_dir=tmp_path, progress=False)
    assert s["nouns_scored"] >= q["n"] // 2, s
    assert s["both_correct_pct"] >= q["both_correct_min"], s
    assert s["miou_daam"] - s["miou_whole"] >= q["miou_margin_min"], s
    assert s["colour_words_scored"] >= 3, s
    assert s["colour_mass_own"] >= q["colour_own_over_other_min"] * s["colour_mass_other"], s
    # the baselines that matter, and the annotator's ceiling on the same captions' true scenes
    assert s["miou_foreground"] > s["miou_whole"] and 0 <= s["miou_other"] < s["miou_daam"], s
    assert s["annotator_ceiling"]["rendered_both_found_pct"] >= s["annotator_ceiling"]["both_found_pct"] >= 50, s
    assert 0 < s["eot_share"] < 0.5 and s["eot_share_ci"][0] <= s["eot_share"] <= s["eot_share_ci"][1], s
    from daamlib.shapeworld.quality import compare_table

    table = compare_table({"a": s, "b": s}).splitlines()
    assert table[0] == "| | a | b |" and any(line.startswith("| end-of-text share") for line in table)


def test_caption_roles_equal_the_rendered_scenes_roles():
    """ShapeWorld's ground truth for §3.2 reads word roles from the caption alone; they must be the scene's."""
    from daamlib.shapeworld.studies import caption_roles

    world = ShapeWorld()
    for split in ("test", "unreal"):
        for i in range(300):
            s = world.scene(split, i)
            assert caption_roles(s.caption) == s.roles, s.caption


def test_shapeworld_items_per_study_are_held_out_and_deterministic():
    from daamlib.shapeworld.studies import ShapeWorldStudies

    src = ShapeWorldStudies()
    seg = src.items("segmentation", 3, seed=5)
    assert [r["id"] for r in seg] == ["gen-0000", "gen-0001", "gen-0002", "unreal-0000", "unreal-0001", "unreal-0002",
                                      "val-0000", "val-0001", "val-0002"]
    assert seg[0]["seed"] == 5 and {r["split"] for r in seg} == {"Gen", "Unreal", "val"}
    assert all(ShapeWorld.split_of_caption(r["prompt"]) == "val" for r in seg if r["split"] == "val")
    assert all(ShapeWorld.split_of_caption(r["prompt"]) == "test" for r in src.items("pos", 20))
    assert src.items("syntax", 2) == ShapeWorldStudies().items("syntax", 2)
    templates, adjectives = src.adjective_prompts(4, seed=0)
    assert len(templates) == 4 and all(t.count("{adj}") == 1 for t in templates) and "red" in adjectives
    with pytest.raises(ValueError, match="not 'cohyponyms'"):
        src.items("cohyponyms", 2)
