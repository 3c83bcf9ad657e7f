"""The resumable runner: killed with SIGKILL and resumed, sharded over 2 accelerate processes, refusals.

Each finished item's meta.json records the SHA-256 of its maps and image and no timestamp, so
"identical outputs" is checked byte for byte on all three files.
"""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daamlib import load_experiment
from daamlib.io import ExperimentError
from daamlib.runner import SettingsChangedError, load_results, read_items, run_experiments

ITEMS = [  # varied on purpose: guidance off, non-square, negative prompt, an info column, a slow item
    {"id": "cat-0", "prompt": "a cat and a dog", "seed": 0, "steps": 2},
    {"id": "Zebra.1", "prompt": "a giraffe and a zebra", "seed": 1, "steps": 2, "guidance": 1.0},
    {"id": "slow_2", "prompt": "a red circle above a blue square", "seed": 2, "steps": 15},  # killed in the middle of this one
    {"id": "wide-3", "prompt": "two birds flying over the sea", "seed": 3, "steps": 2, "height": 64, "width": 96},
    {"id": "neg-4", "prompt": "a bowl of fruit on a wooden table", "seed": 4, "steps": 2, "negative_prompt": "a dog"},
    {"id": "5", "prompt": "a man riding a horse", "seed": 5, "steps": 2, "group": "people"},
]
IDS = [r["id"] for r in ITEMS]
FILES = ("meta.json", "image.png", "maps.safetensors")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def model_dir(tiny, tmp_path_factory):
    """The tiny SD-1 pipeline saved as a model folder, so subprocesses load exactly the same weights."""
    path = tmp_path_factory.mktemp("model") / "tiny-sd1"
    tiny("sd1").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(model_dir):
    from daamlib import load_pipeline

    p = load_pipeline(str(model_dir))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "items.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "prompt", "seed", "steps", "guidance", "height", "width",
                                          "negative_prompt", "group"])
        w.writeheader()
        w.writerows(ITEMS)
    return path


@pytest.fixture(scope="module")
def reference(pipe, model_dir, table, tmp_path_factory):
    """An uninterrupted single-process run of the table."""
    out = tmp_path_factory.mktemp("reference")
    records = run_experiments(pipe, table, out, model_name=str(model_dir), progress=False)
    assert [r["status"] for r in records] == ["generated"] * len(ITEMS)
    return out


def starts(out, item_id):
    lines = (out / "log" / f"{item_id}.jsonl").read_text().splitlines()
    return sum(json.loads(line)["event"] == "start" for line in lines)


def assert_same_outputs(out, ref):
    assert sorted(p.name for p in (out / "items").iterdir()) == sorted(IDS)  # no temporaries, nothing extra
    for i in IDS:
        for f in FILES:
            assert (out / "items" / i / f).read_bytes() == (ref / "items" / i / f).read_bytes(), (i, f)
    volatile = {"finished", "seconds", "host", "device", "process", "num_processes"}
    for a, b in zip(load_results(out, ITEMS), load_results(ref, ITEMS)):
        assert {k: v for k, v in a.items() if k not in volatile | {"path"}} == \
               {k: v for k, v in b.items() if k not in volatile | {"path"}}


def subprocess_env():
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def test_reference_run_writes_folders_manifest_and_log(reference):
    records = load_results(reference, ITEMS)
    assert [r["id"] for r in records] == IDS
    hm, meta = load_experiment(records[3]["path"])
    assert hm.size == (64, 96) and meta["settings"]["width"] == 96 and meta["settings"]["dtype"] == "float32"
    assert records[1]["settings"]["guidance"] == 1.0 and records[4]["settings"]["negative_prompt"] == "a dog"
    assert records[5]["info"] == {"group": "people"} and records[0]["info"] == {"group": ""}
    assert all(starts(reference, i) == 1 for i in IDS)


def test_sigkill_mid_run_then_resume_gives_identical_outputs(reference, pipe, model_dir, table, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "daamlib.runner", str(table), "--model", str(model_dir),
                             "--out", str(out), "--no-progress"], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started = out / "log" / "slow_2.jsonl"  # the 3rd item has begun: the 1st and 2nd are finished
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, output[-2000:]  # killed, not finished on its own
    assert sorted(p.name for p in (out / "items").iterdir() if not p.name.startswith(".")) == ["Zebra.1", "cat-0"]
    assert not (out / "manifest" / "slow_2.json").exists()
    # what a kill during save_experiment leaves: a hidden temporary folder and a record's temporary file
    (out / "items" / ".slow_2.tmp-0badc0de").mkdir()
    (out / "items" / ".slow_2.tmp-0badc0de" / "maps.safetensors").write_bytes(b"half")
    (out / "manifest" / ".slow_2.json.tmp-0badc0de").write_text("{")

    records = run_experiments(pipe, table, out, model_name=str(model_dir), progress=False)
    assert [r["status"] for r in records] == ["skipped", "skipped"] + ["generated"] * 4
    assert not list((out / "manifest").glob(".*"))
    assert_same_outputs(out, reference)
    # nothing finished was generated twice: one attempt each, two for the one that was killed
    assert {i: starts(out, i) for i in IDS} == {i: 2 if i == "slow_2" else 1 for i in IDS}


def test_two_accelerate_processes_share_the_table_and_match_a_single_process_run(reference, model_dir, table, tmp_path):
    # `accelerate launch --cpu` runs one process unless mpirun is configured; a MULTI_GPU config launches N
    # processes through torchrun, and the runner then asks accelerate for a CPU (gloo) group itself
    config = tmp_path / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
                      "num_processes: 2\nmachine_rank: 0\nmixed_precision: 'no'\ngpu_ids: all\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("accelerate", path=str(BIN)) or shutil.which("accelerate")
    out = tmp_path / "run"
    proc = subprocess.run([exe, "launch", "--config_file", str(config), "--main_process_port", str(port),
                           "-m", "daamlib.runner", str(table), "--model", str(model_dir), "--out", str(out),
                           "--no-progress"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "process 1/2: 3 generated" in proc.stdout and "process 2/2: 3 generated" in proc.stdout
    assert_same_outputs(out, reference)
    assert all(starts(out, i) == 1 for i in IDS)  # every item generated exactly once
    records = load_results(out, ITEMS)
    assert [r["process"] for r in records] == [k % 2 for k in range(len(ITEMS))]  # disjoint round-robin shares


def test_missing_record_is_rebuilt_without_generating_again(reference, pipe, model_dir, table, tmp_path):
    out = shutil.copytree(reference, tmp_path / "run")
    (out / "manifest" / "wide-3.json").unlink()  # as if killed between the folder's rename and the record
    records = run_experiments(pipe, table, out, model_name=str(model_dir), progress=False)
    assert {r["status"] for r in records} == {"skipped"}
    assert starts(out, "wide-3") == 1
    assert load_results(out, ITEMS)[3]["settings"] == load_results(reference, ITEMS)[3]["settings"]


def test_changed_settings_are_refused_before_anything_runs_unless_overwrite(reference, pipe, model_dir, tmp_path):
    out = shutil.copytree(reference, tmp_path / "run")
    items = [dict(r, seed=9) if r["id"] == "5" else r for r in ITEMS] + [{"id": "new", "prompt": "a cat", "seed": 0, "steps": 1}]
    with pytest.raises(SettingsChangedError, match=r"5: seed: 5 → 9[\s\S]*overwrite=True"):
        run_experiments(pipe, items, out, model_name=str(model_dir), progress=False)
    assert not (out / "items" / "new").exists()  # refused before generating anything
    with pytest.raises(SettingsChangedError, match=r"model: '.*tiny-sd1' → 'other-model'"):
        run_experiments(pipe, ITEMS, out, model_name="other-model", progress=False)
    records = run_experiments(pipe, items, out, model_name=str(model_dir), overwrite=True, progress=False)
    assert [r["status"] for r in records] == ["skipped"] * 5 + ["regenerated", "generated"]
    assert load_experiment(out / "items" / "5")[1]["seed"] == 9 and load_results(out, items)[5]["seed"] == 9
    assert starts(out, "5") == 2 and not list((out / "items").glob(".*"))


def test_the_same_model_name_with_other_weights_is_refused(reference, model_dir, tmp_path):
    """A retrained export under the same name (the embedded model after more training) must not be mixed in."""
    import torch

    from daamlib import load_pipeline
    from daamlib.pipeline import weights_fingerprint

    out = shutil.copytree(reference, tmp_path / "run")
    other = load_pipeline(str(model_dir))
    same = weights_fingerprint(other)
    with torch.no_grad():
        other.unet.conv_out.bias.add_(1e-3)
    assert weights_fingerprint(other) != same
    with pytest.raises(SettingsChangedError, match=r"weights: '[0-9a-f]{16}' → '[0-9a-f]{16}'"):
        run_experiments(other, ITEMS, out, model_name=str(model_dir), progress=False)


def test_an_item_held_by_another_process_is_left_alone(pipe, tmp_path):
    import fcntl

    out = tmp_path / "run"
    (out / ".locks").mkdir(parents=True)
    (out / "items").mkdir()
    planted = out / "items" / ".a.tmp-12345678"  # the other process's temporary folder: must survive
    planted.mkdir()
    with open(out / ".locks" / "a.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        records = run_experiments(pipe, [{"id": "a", "prompt": "a cat", "seed": 0, "steps": 1}], out, progress=False)
    assert records[0]["status"] == "busy" and planted.is_dir() and not (out / "items" / "a").exists()


def test_read_items_from_a_dataframe_with_aliases_defaults_and_info():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"id": [1, 2], "prompt": ["a cat", "a dog"], "seed": [0, 1],
                       "num_inference_steps": [None, 4.0], "guidance_scale": [7.5, None], "word": ["cat", "dog"]})
    a, b = read_items(df, defaults={"steps": 3, "height": 64})
    assert (a.id, a.seed, a.settings["steps"], a.settings["guidance"], a.settings["height"]) == ("1", 0, 3, 7.5, 64)
    assert (b.settings["steps"], b.settings["guidance"], b.info) == (4, None, {"word": "dog"})
    assert type(a.seed) is int and type(b.settings["steps"]) is int


def test_cli_refuses_with_a_message_and_exit_status_2(reference, model_dir, tmp_path, capsys):
    from daamlib.runner import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "../x", "prompt": "a cat", "seed": 0}\n')
    assert main([str(bad), "--model", str(model_dir), "--out", str(tmp_path / "o")]) == 2
    assert "row 0 (id '../x'): id '../x' is not a safe folder name" in capsys.readouterr().err
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps([dict(r, steps=3) if r["id"] == "cat-0" else r for r in ITEMS]))
    out = shutil.copytree(reference, tmp_path / "run")
    assert main([str(changed), "--model", str(model_dir), "--out", str(out), "--no-progress"]) == 2
    assert "cat-0: steps: 2 → 3" in capsys.readouterr().err


def damage_two(out):
    maps = out / "items" / "cat-0" / "maps.safetensors"
    maps.write_bytes(maps.read_bytes()[: maps.stat().st_size // 2])  # truncated
    (out / "items" / "wide-3" / "image.png").unlink()  # deleted


def test_damaged_items_are_found_listed_and_repaired_byte_identical(reference, pipe, model_dir, table, tmp_path):
    """A truncated maps file and a deleted image in a finished run: load_results names both, a run with
    on_damaged='stop' lists both and generates nothing, a plain run regenerates exactly those two, identical to an
    undamaged run."""
    from daamlib.io import check_files
    from daamlib.runner import DamagedItemsError

    out = shutil.copytree(reference, tmp_path / "run")
    damage_two(out)
    assert check_files(out / "items" / "Zebra.1") == []
    assert "truncated" in check_files(out / "items" / "cat-0")[0] and "missing" in check_files(out / "items" / "wide-3")[0]
    with pytest.raises(ExperimentError, match=r"2 finished item\(s\) .* damaged:\n  cat-0: maps.safetensors is truncated"):
        load_results(out, ITEMS)
    with pytest.raises(DamagedItemsError, match=r"wide-3: image.png is missing"):
        run_experiments(pipe, table, out, model_name=str(model_dir), progress=False, on_damaged="stop")
    assert all(starts(out, i) == 1 for i in IDS)  # nothing generated by the refused run
    records = run_experiments(pipe, table, out, model_name=str(model_dir), progress=False)
    assert {r["id"]: r["status"] for r in records if r["status"] != "skipped"} == {"cat-0": "repaired", "wide-3": "repaired"}
    assert_same_outputs(out, reference)
    events = [json.loads(line)["event"] for line in (out / "log" / "cat-0.jsonl").read_text().splitlines()]
    assert events[-3:] == ["damaged", "start", "done"]


def flip(f, at):
    data = bytearray(f.read_bytes())
    data[at] ^= 0xFF
    f.write_bytes(bytes(data))


def test_a_bit_flip_is_caught_on_resume_and_on_load_without_asking(reference, pipe, model_dir, table, tmp_path):
    """A flipped byte inside the maps or inside the PNG's pixel data keeps size, header and PNG chunks: the structural
    check cannot see it, the checksums every resume and load compare can — even with overwrite, which regenerates
    only changed settings."""
    from daamlib.io import check_files

    out = shutil.copytree(reference, tmp_path / "run")
    flip(out / "items" / "Zebra.1" / "maps.safetensors", -3)
    flip(out / "items" / "cat-0" / "image.png", 60)  # inside IDAT: signature and IEND intact
    assert check_files(out / "items" / "Zebra.1") == [] and check_files(out / "items" / "cat-0") == []
    assert "does not match its checksum" in check_files(out / "items" / "Zebra.1", full=True)[0]
    with pytest.raises(ExperimentError, match=r"cat-0: image.png does not match its checksum"):
        load_results(out, ITEMS)
    records = run_experiments(pipe, table, out, model_name=str(model_dir), progress=False, overwrite=True)
    assert {r["id"]: r["status"] for r in records if r["status"] != "skipped"} == {"cat-0": "repaired",
                                                                                   "Zebra.1": "repaired"}
    assert_same_outputs(out, reference)


def test_verify_also_loads_every_item(reference, pipe, model_dir, table, tmp_path, monkeypatch):
    """--verify: each finished item is loaded as load_experiment loads it (found damaged here by a load that fails)."""
    import daamlib.io

    out = shutil.copytree(reference, tmp_path / "run")
    real = daamlib.io.load_experiment

    def failing(path):
        if Path(path).name == "wide-3":
            raise ExperimentError("wide-3: maps do not load")
        return real(path)

    monkeypatch.setattr(daamlib.io, "load_experiment", failing)
    assert run_experiments(pipe, table, out, model_name=str(model_dir), progress=False)[3]["status"] == "skipped"
    with pytest.raises(ExperimentError, match="wide-3: maps do not load"):
        load_results(out, ITEMS, verify=True)
    monkeypatch.setattr(daamlib.io, "load_experiment", real)


def test_an_emptied_record_is_rebuilt_from_the_item_and_kept_aside(reference, pipe, model_dir, table, tmp_path):
    """A manifest record emptied by a crash (written, not yet on disk) no longer stops anything: resume and
    load_results rebuild it from the item's meta.json, keep the damaged file beside and log it."""
    out = shutil.copytree(reference, tmp_path / "run")
    (out / "manifest" / "wide-3.json").write_bytes(b"")
    (out / "manifest" / "neg-4.json").write_bytes(b'{"id": "neg-4", "pro')  # truncated
    assert load_results(out, ITEMS)[4]["prompt"] == ITEMS[4]["prompt"]  # rebuilt by the reader too
    (out / "manifest" / "wide-3.json").write_bytes(b"")
    records = run_experiments(pipe, table, out, model_name=str(model_dir), progress=False)
    assert {r["status"] for r in records} == {"skipped"} and starts(out, "wide-3") == 1
    assert load_results(out, ITEMS)[3]["settings"] == load_results(reference, ITEMS)[3]["settings"]
    assert len(list((out / "manifest").glob(".wide-3.json.damaged-*"))) == 2
    assert "record rebuilt" in (out / "log" / "wide-3.jsonl").read_text()


def test_a_full_disk_is_one_line_naming_the_file_and_finished_items_stay(reference, model_dir, table, tmp_path,
                                                                          monkeypatch, capsys):
    import safetensors.torch
    from safetensors import SafetensorError

    from daamlib.runner import main

    out = shutil.copytree(reference, tmp_path / "run")
    shutil.rmtree(out / "items" / "neg-4")
    (out / "manifest" / "neg-4.json").unlink()

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert main([str(table), "--model", str(model_dir), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1]  # after the loading bars
    assert "Traceback" not in err and line.startswith("daamlib.runner: error: no space left to write")
    assert "neg-4/maps.safetensors" in line
    assert sorted(p.name for p in (out / "items").iterdir()) == sorted(set(IDS) - {"neg-4"})
    monkeypatch.undo()
    assert len(load_results(out)) == len(IDS) - 1


def test_seeds_are_read_exactly_beyond_float_precision(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("id,prompt,seed\na,a cat,9007199254740993\nb,a cat,9007199254740992\nc,a cat,3.0\n")
    assert [i.seed for i in read_items(path)] == [9007199254740993, 9007199254740992, 3]
    pd = pytest.importorskip("pandas")
    with pytest.raises(ValueError, match="a float of 2⁵³ or more"):
        read_items(pd.DataFrame({"id": ["a"], "prompt": ["a cat"], "seed": [9007199254740993.0]}))


def test_settings_left_to_defaults_are_recorded_as_used_and_old_runs_still_resume(reference, pipe, model_dir, table,
                                                                                    tmp_path):
    """Rows without steps, guidance or size record the values the pipeline used (50, 7.5, 64×64 here), not None; a
    run made before that (None recorded for a defaulted setting) is still recognised as finished, not refused."""
    import hashlib

    _, meta = load_experiment(reference / "items" / "cat-0")
    s = meta["settings"]
    assert (s["steps"], s["guidance"], s["height"], s["width"]) == (2, 7.5, 64, 64)
    out = shutil.copytree(reference, tmp_path / "run")
    folder = out / "items" / "cat-0"
    old = json.loads((folder / "meta.json").read_text())
    old["settings"].update(guidance=None, height=None, width=None)  # as the runner recorded them before issue 13
    text = json.dumps(old)
    (folder / "meta.json").write_text(text)
    (folder / "meta.sha256").write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")
    record = out / "manifest" / "cat-0.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "settings": old["settings"]}))
    statuses = {r["id"]: r["status"] for r in run_experiments(pipe, table, out, model_name=str(model_dir), progress=False)}
    assert set(statuses.values()) == {"skipped"}
    # a value the table now gives explicitly is compared as before
    rows = [dict(r, guidance=7.5) if r["id"] == "cat-0" else r for r in ITEMS]
    with pytest.raises(SettingsChangedError, match=r"cat-0: guidance: None → 7\.5"):
        run_experiments(pipe, rows, out, model_name=str(model_dir), progress=False)
