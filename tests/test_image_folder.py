"""Your own images and masks for notebook 06: both layouts read, cropped and resized, captions made or checked,
VOC's boundary band left out of every IoU, val and test split by name."""

import numpy as np
import pytest
from PIL import Image

from daamlib.studies.image_folder import VOC_CLASSES, ImageFolder, split_of


def names(split, n):
    return [f"img{i}" for i in range(200) if split_of(f"img{i}") == split][:n]


def per_image_folder(root, n_test=2, n_val=1):
    rng = np.random.default_rng(0)
    for name in names("test", n_test) + names("val", n_val):
        d = root / name
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(d / "image.png")  # not square
        dog = np.zeros((48, 80), np.uint8)
        dog[10:30, 20:40] = 255
        Image.fromarray(dog).save(d / "dog.png")
        cat = np.zeros((48, 80), np.uint8)
        cat[5:15, 50:70] = 255
        Image.fromarray(cat).save(d / "cat.png")
    return root


def test_per_image_folders_are_cropped_resized_and_captioned(tmp_path):
    folder = ImageFolder(per_image_folder(tmp_path / "mine"), 32)
    items = folder.items(5, split="test")
    assert len(items) == 2 and folder.vocabulary == ["cat", "dog"]
    it = items[0]
    assert it["image"].shape == (32, 32, 3) and it["caption"] == "a photo of a cat and a dog"
    assert {it["words"][i] for i in it["masks"]} == {"cat", "dog"} and it["ignore"] is None
    dog = it["masks"][it["words"].index("dog")]
    assert dog.shape == (32, 32) and 0 < dog.mean() < 0.5  # the centre 48² crop, resized: the dog survives
    assert it["concept_present"] == ["cat", "dog"] and it["concept_absent"] == []  # no other class in the folder
    assert len(folder.items(5, split="val")) == 1


def test_a_caption_must_name_every_masked_class(tmp_path):
    root = per_image_folder(tmp_path / "mine", 1, 0)
    (root / names("test", 1)[0] / "caption.txt").write_text("a dog on a sofa")
    with pytest.raises(ValueError, match="does not name 'cat'"):
        ImageFolder(root, 32).items(1)
    (root / names("test", 1)[0] / "caption.txt").write_text("A cat watches a dog.")
    it = ImageFolder(root, 32).items(1)[0]
    assert it["caption"] == "A cat watches a dog." and {it["words"][i] for i in it["masks"]} == {"cat", "dog"}


def test_voc_palette_masks_with_the_boundary_band_left_out(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    name = names("test", 1)[0]
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    labels = np.zeros((40, 40), np.uint8)
    labels[10:20, 10:20] = VOC_CLASSES.index("potted plant") + 1
    labels[9, 9:21] = 255  # the boundary band
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0] * 256)
    palette.save(root / "SegmentationClass" / f"{name}.png")
    it = ImageFolder(root, 40).items(1)[0]
    assert it["caption"] == "a photo of a potted plant" and it["words"][list(it["masks"])[0]] == "plant"
    assert it["concept_of"] == {list(it["masks"])[0]: "potted plant"} and len(it["concept_absent"]) == 2
    assert it["ignore"].sum() == 12 and it["masks"][list(it["masks"])[0]].sum() == 100


def test_a_folder_runs_through_the_study_without_an_annotator(tmp_path):
    """The rows on your images: every method scored on your masks; the comparison with generations, which needs
    an annotator, is left out (NaN) and says so in the tables."""
    import daamlib
    from daamlib.studies import real_images

    pipe = daamlib.load_pipeline("tiny-sd1")
    folder = per_image_folder(tmp_path / "mine")
    items, val, truth = real_images.open_images("tiny-sd1", folder, 64, 2, 1, 0, pipe)
    assert truth is None and items[0]["image"].shape == (64, 64, 3)
    rows, concepts = real_images.real_image_rows(pipe, items, truth, (500,))
    assert len(rows) == 4 and all(np.isnan(r["generation vs annotator"]) for r in rows)
    table = real_images.methods_table(rows).set_index("method")
    assert table.loc["DAAM word map", "n nouns"] == 4 and table.loc["DAAM word map on renders", "n nouns"] == 0
    assert {c["concept"] for c in concepts} == {"cat", "dog"}


def test_bad_folders_are_refused_with_the_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected <name>/image.png"):
        ImageFolder(tmp_path / "none", 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image in either layout"):
        ImageFolder(tmp_path / "empty", 64)
    with pytest.raises(ValueError, match="size must be a multiple of 8"):
        ImageFolder(per_image_folder(tmp_path / "mine"), 50)


def test_settings_are_chosen_on_val_each_map_at_its_own_best_threshold(tmp_path):
    """choose_settings: the timesteps and τ with the best val mIoU of the word maps, and at those timesteps the τ
    with the best val mIoU of the concept maps, recomputed here from attribute's own maps; the rows then score
    each kind of map at its own τ."""
    import daamlib
    from daamlib.studies import real_images
    import torch

    from daamlib.stats import iou

    pipe = daamlib.load_pipeline("tiny-sd1")
    folder = per_image_folder(tmp_path / "mine", n_test=1, n_val=2)
    items, val, _ = real_images.open_images("tiny-sd1", folder, 64, 1, 2, 0, pipe)
    candidates, taus = [(250,), (750,)], (0.2, 0.5, 0.8)
    ts, tau, table = real_images.choose_settings(pipe, val, candidates, taus)
    assert len(table) == 2 * 2 * 3 and table["chosen"].sum() == 2
    want = {}
    for t in candidates:
        for it in val:
            hm = daamlib.attribute(pipe, it["image"], it["caption"], timesteps=t, seed=it["seed"],
                                   concepts=sorted(set(it["concept_of"].values())))
            for index, exact in it["masks"].items():
                exact = torch.as_tensor(np.asarray(exact, bool))
                for x in taus:
                    for kind, m in (("word", hm[it["words"][index]]), ("concept", hm.concepts[it["concept_of"][index]])):
                        want.setdefault((kind, t, x), []).append(100 * iou(m.binarize(x), exact))
    # every image has two nouns: the clustered estimate is the mean over nouns
    best = max(((t, x) for t in candidates for x in taus), key=lambda k: np.mean(want["word", k[0], k[1]]))
    assert ts == best[0] and tau["word"] == best[1]
    assert tau[real_images.OVAM] == max(taus, key=lambda x: np.mean(want["concept", ts, x]))
    rows, _ = real_images.real_image_rows(pipe, items, None, ts, threshold=tau)
    table = real_images.methods_table(rows, tau).set_index("method")
    assert table.loc["DAAM word map", "τ"] == tau["word"] and table.loc["concept map (OVAM)", "τ"] == tau[real_images.OVAM]


def test_joint_transformers_are_scored_in_both_of_conceptattentions_spaces(tmp_path):
    """On a joint transformer (tiny SD3) the rows hold ConceptAttention's cross-attention and output-space maps,
    each at its own val-chosen τ; the tables compare each with the word map and the two spaces with each other."""
    from daamlib.studies import real_images as R
    from daamlib.testing.tiny_dit import tiny_dit_pipeline

    pipe = tiny_dit_pipeline("sd3")
    folder = per_image_folder(tmp_path / "mine", n_test=2, n_val=2)
    items, val, _ = R.open_images("tiny-sd3", folder, 64, 2, 2, 0, pipe)
    ts, tau, table = R.choose_settings(pipe, val, [(500,)], (0.3, 0.6))
    assert set(tau) == {"word", R.CROSS, R.OUTPUT} and set(table["map"]) == {"word map", R.CROSS, R.OUTPUT}
    rows, _ = R.real_image_rows(pipe, items, None, ts, threshold=tau)
    assert all(R.CROSS in r and R.OUTPUT in r and R.OVAM not in r for r in rows)
    methods = R.methods_table(rows, tau).set_index("method")
    assert methods.loc[R.OUTPUT, "τ"] == tau[R.OUTPUT] and methods.loc[R.CROSS, "n nouns"] == 4
    assert f"{R.OUTPUT} − {R.CROSS}" in set(R.differences_table(rows)["difference"])
    claims = set(R.paper_vs_here(rows)["claim"])
    assert "concept map, output space − cross-attention space (IoU points)" in claims
    shown = R.plot_real_examples(items, 1, "tiny-sd3")
    assert shown.ax_.shape == (1, 6) and "output space" in shown.ax_[0, 5].get_title()
