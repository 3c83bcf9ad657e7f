"""Experiment folders: exact round trip, and a clear error for every kind of damage."""

import json
import pickle

import pytest
import torch

from daamlib import ExperimentError, load_experiment, save_experiment


@pytest.fixture(scope="module")
def heat_maps(traced):
    return traced("a giraffe and a zebra")


def test_round_trip_is_exact(heat_maps, tmp_path):
    path = save_experiment(tmp_path / "exp", heat_maps, seed=7, settings={"steps": 2})
    hm, meta = load_experiment(path)
    assert meta["seed"] == 7 and meta["settings"] == {"steps": 2}
    assert hm.prompt == heat_maps.prompt and hm.tokens == heat_maps.tokens and hm.words == heat_maps.words
    assert hm.layers == heat_maps.layers  # same order: the order the layers ran in
    for k in hm.maps:
        assert torch.equal(hm.maps[k], heat_maps.maps[k])
    assert (hm.image == heat_maps.image).all()
    assert hm.timesteps == heat_maps.timesteps and hm.steps == heat_maps.steps
    torch.testing.assert_close(hm["zebra"].heat, heat_maps["zebra"].heat, rtol=0, atol=0)
    assert not list(tmp_path.glob(".exp.tmp-*"))  # no temporary folder left behind


def test_refuses_to_overwrite_unless_asked(heat_maps, tmp_path):
    save_experiment(tmp_path / "exp", heat_maps, seed=1)
    with pytest.raises(ExperimentError, match="overwrite=True"):
        save_experiment(tmp_path / "exp", heat_maps, seed=2)
    save_experiment(tmp_path / "exp", heat_maps, seed=2, overwrite=True)
    assert load_experiment(tmp_path / "exp")[1]["seed"] == 2


def damage_missing(p):
    (p / "maps.safetensors").unlink()


def damage_truncated(p):
    f = p / "maps.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def damage_meta_edited(p):
    meta = json.loads((p / "meta.json").read_text())
    del meta["tokens"]
    (p / "meta.json").write_text(json.dumps(meta))


def damage_meta_garbled(p):
    (p / "meta.json").write_text("{not json")


def damage_layers_edited(p):
    meta = json.loads((p / "meta.json").read_text())
    name = next(iter(meta["layers"]))
    meta["layers"][name][0] += 1
    (p / "meta.json").write_text(json.dumps(meta))


class Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def damage_pickle_planted(p):
    # a pickle in place of the maps, with a matching checksum: loading must still refuse it
    import hashlib

    f = p / "maps.safetensors"
    f.write_bytes(pickle.dumps({"x": Payload()}))
    meta = json.loads((p / "meta.json").read_text())
    meta["files"]["maps.safetensors"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (p / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    (damage_missing, "maps.safetensors is missing"),
    (damage_truncated, "does not match the checksum"),
    (damage_meta_edited, r"lacks \['tokens'\]"),
    (damage_meta_garbled, "not valid JSON"),
    (damage_layers_edited, "do not belong together"),
    (damage_pickle_planted, "not a readable safetensors file"),
])
def test_damaged_experiment_gives_a_clear_error(heat_maps, tmp_path, monkeypatch, damage, message):
    monkeypatch.chdir(tmp_path)
    path = save_experiment(tmp_path / "exp", heat_maps)
    damage(path)
    with pytest.raises(ExperimentError, match=message):
        load_experiment(path)
    assert not (tmp_path / "PWNED").exists()


def test_path_that_is_a_file_or_absent(heat_maps, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ExperimentError, match="is a file"):
        load_experiment(f)
    with pytest.raises(ExperimentError, match="is a file"):
        save_experiment(f, heat_maps)
    with pytest.raises(ExperimentError, match="no experiment at"):
        load_experiment(tmp_path / "nope")
