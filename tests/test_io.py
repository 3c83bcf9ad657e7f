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


def forge(p, meta_text: str) -> None:
    """Write meta.json *and* a matching meta.sha256, as a careful forger would: the schema must still catch it."""
    import hashlib

    (p / "meta.json").write_text(meta_text)
    (p / "meta.sha256").write_text(hashlib.sha256(meta_text.encode()).hexdigest() + "\n")


def edit(p, change) -> None:
    meta = json.loads((p / "meta.json").read_text())
    change(meta)
    forge(p, json.dumps(meta))


def damage_meta_edited(p):
    edit(p, lambda m: m.pop("tokens"))


def damage_meta_garbled(p):
    forge(p, "{not json")


def damage_layers_edited(p):
    edit(p, lambda m: m["layers"][next(iter(m["layers"]))].__setitem__(0, m["layers"][next(iter(m["layers"]))][0] + 1))


def damage_tokens_swapped(p):  # hm["cat"] would return the dog's map: caught by meta.sha256
    meta = json.loads((p / "meta.json").read_text())
    w = meta["words"]
    w[1]["tokens"], w[4]["tokens"] = w[4]["tokens"], w[1]["tokens"]
    (p / "meta.json").write_text(json.dumps(meta))


def damage_huge_size(p):
    edit(p, lambda m: m.__setitem__("size", [40000, 40000]))


def damage_files_a_list(p):
    edit(p, lambda m: m.__setitem__("files", ["maps.safetensors"]))


def damage_steps_an_int(p):
    edit(p, lambda m: m.__setitem__("steps", 3))


def damage_deep_json(p):
    forge(p, "[" * 100_000 + "]" * 100_000)


def damage_path_outside(p):
    edit(p, lambda m: m["files"].__setitem__("../../etc/hostname", "0" * 64))


def damage_image_bomb(p):
    """A 20000×20000 PNG (a tiny file: its rows are all zero) with a matching checksum and meta."""
    import hashlib
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    side = 20000
    raw = zlib.compress(b"\x00" * (side + 1) * 64)  # only a few rows: the header is what matters
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    (p / "image.png").write_bytes(png)
    edit(p, lambda m: m["files"].__setitem__("image.png", hashlib.sha256(png).hexdigest()))


class Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def damage_pickle_planted(p):
    # a pickle in place of the maps, with a matching checksum: loading must still refuse it
    import hashlib

    f = p / "maps.safetensors"
    f.write_bytes(pickle.dumps({"x": Payload()}))
    edit(p, lambda m: m["files"].__setitem__("maps.safetensors", hashlib.sha256(f.read_bytes()).hexdigest()))


def damage_tokens_swapped_forged(p):  # the same swap with meta.sha256 recomputed: the tokens no longer spell the words
    meta = json.loads((p / "meta.json").read_text())
    w = meta["words"]
    w[1]["tokens"], w[4]["tokens"] = w[4]["tokens"], w[1]["tokens"]
    forge(p, json.dumps(meta))


def damage_tokens_swapped_unsummed(p):  # ... or with meta.sha256 deleted
    damage_tokens_swapped(p)
    (p / "meta.sha256").unlink()


def damage_size_inflated_unsummed(p):  # 16384² declared for a 64² item without its image: 1 GB per word map
    meta = json.loads((p / "meta.json").read_text())
    (p / "image.png").unlink()
    del meta["files"]["image.png"]
    meta["size"] = [16384, 16384]
    (p / "meta.json").write_text(json.dumps(meta))
    (p / "meta.sha256").unlink()


@pytest.mark.parametrize("damage, message", [
    (damage_tokens_swapped_forged, r"word 'giraffe' is not spelled by its tokens \['z', 'ebra</w>'\]"),
    (damage_tokens_swapped_unsummed, r"word 'giraffe' is not spelled by its tokens"),
    (damage_size_inflated_unsummed, r"size 16384×16384 does not fit maps whose finest grid is 32×32"),
    (damage_missing, "maps.safetensors is missing"),
    (damage_truncated, "does not match the checksum"),
    (damage_meta_edited, r"lacks \['tokens'\]"),
    (damage_meta_garbled, "not valid JSON"),
    (damage_layers_edited, r"does not fit \d+ steps"),
    (damage_pickle_planted, "not a readable safetensors file"),
    (damage_tokens_swapped, r"does not match its checksum in meta.sha256"),
    (damage_huge_size, r"field 'size' must be \[height, width\] with sides from 1 to 16384"),
    (damage_files_a_list, r"field 'files' must map"),
    (damage_steps_an_int, r"field 'steps' must be a list"),
    (damage_deep_json, r"not valid JSON \(RecursionError\)"),
    (damage_path_outside, r"field 'files' must map maps.safetensors"),
    (damage_image_bomb, r"image.png is not a readable image .*decompression bomb"),  # refused before decoding
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


def test_files_get_one_mode_and_write_errors_name_the_file(heat_maps, tmp_path, monkeypatch):
    """maps.safetensors gets the mode the other files get (safetensors alone makes it 0600); a full disk while
    writing the maps is a one-line error naming the file, and nothing is left under the final name."""
    import stat

    import safetensors.torch
    from safetensors import SafetensorError

    path = save_experiment(tmp_path / "exp", heat_maps)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()}
    assert len(set(modes.values())) == 1, modes

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ExperimentError, match=r"no space left to write .*exp2/maps.safetensors: free some space"):
        save_experiment(tmp_path / "exp2", heat_maps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temporary left, the first experiment kept


def test_an_unreadable_file_is_named_with_the_fix(heat_maps, tmp_path, monkeypatch):
    """Another user's 0600 file (simulated: the tests may run as root, who reads everything)."""
    import builtins

    from daamlib.io import check_files

    path = save_experiment(tmp_path / "exp", heat_maps)
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if str(file).endswith("maps.safetensors"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    found = check_files(path, full=True)
    assert len(found) == 1 and "cannot read" in found[0] and "permission denied" in found[0] and "chmod" in found[0]


def test_the_schedulers_order_round_trips(heat_maps, tmp_path):
    heat_maps.order = 2
    try:
        hm, meta = load_experiment(save_experiment(tmp_path / "exp", heat_maps))
    finally:
        heat_maps.order = 1
    assert meta["order"] == 2 and hm.order == 2
