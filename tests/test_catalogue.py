"""The bad-input catalogue (issue 7): one row per case, the exception type, and a message that names
the problem and the fix. Rows marked "outcome" check a behaviour instead (no error where none is due).

Some cases are also tested where they live (test_words, test_trace, test_io); this is the one list
of them all. Add a row here for every new way a user can get input wrong.
"""

import hashlib
import json
import math
import pickle
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from papermill.exceptions import PapermillExecutionError

from daamlib import (AmbiguousWordError, ExperimentError, TraceError, UnsupportedPipelineError, WordNotFoundError,
                     generate, load_experiment, load_pipeline, save_experiment, trace)
from daamlib.heatmap import WordHeatMap
from daamlib.kernel import binarize
from daamlib.pipeline import set_scheduler
from daamlib.replay import ReplayError
from daamlib.runner import DamagedItemsError, ItemError, SettingsChangedError, load_results, run_experiments
from daamlib.words import Word

PROMPT = "a cat and a dog"
LONG = " ".join(["cat"] * 80) + " zebra"  # 81 words: past the tiny CLIP's 77 tokens
ONE = [{"id": "one", "prompt": "a cat", "seed": 0, "steps": 1}]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@dataclass
class Ctx:
    """What the rows act on: the tiny SD-1 pipeline, its heat maps for PROMPT, and fresh folders."""

    pipe: object
    hm: object
    tmp: object
    finished_run: object  # an output folder of the runner with ONE finished
    nb_started: float = 0.0

    def exp(self):
        """A freshly saved experiment folder (to damage)."""
        return save_experiment(self.tmp / "exp", self.hm, seed=0, overwrite=True)

    def run_out(self):
        """A fresh copy of the finished runner output."""
        return shutil.copytree(self.finished_run, self.tmp / "run")

    def runner(self, items, out=None, **kw):
        return run_experiments(self.pipe, items, out or self.tmp / "out", model_name="tiny-sd1", progress=False, **kw)


@pytest.fixture(scope="module")
def shared(tiny, tmp_path_factory):
    pipe = tiny("sd1")
    hm = generate(pipe, PROMPT, seed=0, steps=1)
    out = tmp_path_factory.mktemp("finished")
    run_experiments(pipe, ONE, out, model_name="tiny-sd1", progress=False)
    return pipe, hm, out


@pytest.fixture
def ctx(shared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a pickle payload would write here
    pipe, hm, out = shared
    return Ctx(pipe, hm, tmp_path, out)


# -- notebooks: a bad parameter fails in the first code cell, before anything is generated -------------
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_segmentation.ipynb"


def run_notebook(c, **params):
    import papermill as pm

    c.nb_started = time.monotonic()
    pm.execute_notebook(str(NOTEBOOK), str(c.tmp / "run.ipynb"), kernel_name="python3", progress_bar=False,
                        parameters={"OUT_DIR": str(c.tmp / "nb-out"), "FIGURES_DIR": str(c.tmp / "nb-fig"), **params},
                        cwd=str(NOTEBOOK.parent))


def nothing_generated(c):
    assert not (c.tmp / "nb-out" / "runs").exists()
    assert time.monotonic() - c.nb_started < 120  # seconds (kernel start and imports), not an hour


# -- actions that need more than one line -------------------------------------------------------
def long_prompt_generation(c):
    generate(c.pipe, LONG, seed=0, steps=1)


def long_prompt_truncated_word(c):
    with pytest.warns(UserWarning):
        hm = generate(c.pipe, LONG, seed=0, steps=1)
    assert hm["cat", 74].heat.shape == (64, 64)  # the last word that fits has its map
    hm["zebra"]


def nan_map(c):
    heat = torch.rand(8, 8)
    heat[2, 3] = math.nan
    WordHeatMap(Word("cat", 1, 0, (2, 5), (2,)), heat, None, PROMPT).binarize(0.4)


def all_zero_map(c):
    zero = WordHeatMap(Word("cat", 1, 0, (2, 5), (2,)), torch.zeros(8, 8), None, PROMPT)
    for mode in ("minmax", "max"):
        for tau in (0.0, 0.4, 1.0):
            assert not zero.binarize(tau, mode).any()  # an empty mask, not NaN > τ or a division by zero
        n = zero.normalized(mode)
        assert not n.isnan().any() and (n == 0).all()
    assert not binarize(torch.full((8, 8), 3.0), 0.0, "minmax").any()  # constant: no contrast, nothing stands out


def map_before_generation(c):
    with trace(c.pipe) as tc:
        tc.heat_maps(0)


class NoCrossAttention:
    unet = torch.nn.Linear(2, 2)


def unsupported_pipeline(c):
    with trace(NoCrossAttention()):
        pass


def unsupported_no_unet(c):
    with trace(object()):
        pass


def nested_trace(c):
    with trace(c.pipe):
        with trace(c.pipe):
            pass


def exception_inside_trace(c):
    c.before = c.pipe.unet.attn_processors
    with trace(c.pipe):
        raise RuntimeError("boom: the user's own error inside the block")


def after_exception_inside_trace(c):
    after = c.pipe.unet.attn_processors
    assert all(after[k] is c.before[k] for k in c.before)  # the very same processor objects
    assert "encode_prompt" not in vars(c.pipe) and not hasattr(c.pipe, "_daam_trace")
    assert generate(c.pipe, "a cat", seed=0, steps=1)["cat"].heat.shape == (64, 64)  # the next trace works


def damage(name, how):
    def action(c):
        p = c.exp()
        f = p / name
        if how == "delete":
            f.unlink()
        elif how == "truncate":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        elif how == "truncate+rehash":  # a checksum cannot catch it: the file itself must be refused
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
            rehash(p, name)
        load_experiment(p)
    return action


def rehash(p, name):
    meta = json.loads((p / "meta.json").read_text())
    meta["files"][name] = hashlib.sha256((p / name).read_bytes()).hexdigest()
    write_meta(p, json.dumps(meta))


def write_meta(p, text: str, forge: bool = True) -> None:
    """Write meta.json; ``forge`` also writes a matching meta.sha256, so the checks behind the checksum are reached."""
    import hashlib

    (p / "meta.json").write_text(text)
    if forge:
        (p / "meta.sha256").write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")


def edit_meta(change, forge: bool = True):
    def action(c):
        p = c.exp()
        meta = json.loads((p / "meta.json").read_text())
        change(meta)
        write_meta(p, json.dumps(meta), forge)
        load_experiment(p)
    return action


def garble_meta(c):
    p = c.exp()
    write_meta(p, '{"format": "daam-experiment/1", "prompt": ')
    load_experiment(p)


class Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def planted_pickle(name):
    """A pickle in place of one of the files, with a matching checksum: loading must refuse it, never run it."""
    def action(c):
        p = c.exp()
        (p / name).write_bytes(pickle.dumps({"x": Payload()}))
        if name != "meta.json":
            rehash(p, name)
        load_experiment(p)
    return action


def not_executed(c):
    assert not (c.tmp / "PWNED").exists()


def path_is_a_file_load(c):
    (c.tmp / "exp").write_text("x")
    load_experiment(c.tmp / "exp")


def path_is_a_file_save(c):
    (c.tmp / "exp").write_text("x")
    save_experiment(c.tmp / "exp", c.hm)


def runner_out_is_a_file(c):
    (c.tmp / "out").write_text("x")
    c.runner(ONE)


def runner_settings_changed(c):
    c.runner([dict(ONE[0], steps=2)], out=c.run_out())


def runner_record_edited(c):
    out = c.run_out()
    f = out / "manifest" / "one.json"
    f.write_text(f.read_text().replace('"seed": 0', '"seed": 7'))
    c.runner(ONE, out=out)


def runner_record_edited_load(c):
    out = c.run_out()
    f = out / "manifest" / "one.json"
    f.write_text(f.read_text().replace('"prompt": "a cat"', '"prompt": "a dog"'))
    load_results(out)


def runner_unfinished_items(c):
    load_results(c.run_out(), ONE + [{"id": "two", "prompt": "a dog", "seed": 1}])


def one(**changes):
    """The table ONE with its row changed."""
    return [dict(ONE[0], **changes)]



# -- issue 13: settings validated before the model loads, values actually used recorded -------------------
class CliError(Exception):
    """What `daam` printed when it exited with status 2."""


def cli(*argv, loads: bool = False):
    """Run the `daam` command in-process; raise CliError with its message on exit status 2. Unless ``loads``, a
    model load is itself a failure: the option must be refused before it."""
    import contextlib
    import io as _io
    from unittest import mock

    from daamlib import cli as daam_cli, pipeline

    err = _io.StringIO()
    real = pipeline.load_pipeline
    loaded = []

    def watched(*a, **k):
        loaded.append(a)
        return real(*a, **k)

    with mock.patch.object(pipeline, "load_pipeline", watched), contextlib.redirect_stderr(err):
        rc = daam_cli.main(list(argv))
    if rc == 2:
        assert loads or not loaded, f"the model was loaded before refusing: {err.getvalue()}"
        raise CliError(err.getvalue())
    assert rc == 0, err.getvalue()


def cli_records_what_ran(c):
    cli("a cat", "--model", "tiny-sd1", "--height", "96", "--dtype", "float16", "--out", str(c.tmp / "o"), loads=True)
    hm, meta = load_experiment(c.tmp / "o" / "experiment")
    s = meta["settings"]
    assert hm.size == (96, 64) and meta["size"] == [96, 64]  # a side given alone is paired with the default other
    assert (s["height"], s["width"], s["steps"], s["steps_completed"], s["guidance"]) == (96, 64, 50, 50, 7.5)
    assert (s["dtype"], s["scheduler"]) == ("float16", "DDIMScheduler")  # the tiny model in the dtype asked for


def unwritable_out(c):
    cli("a cat", "--model", "tiny-sd1", "--out", "/sys/daam-not-writable")


def cli_out_is_a_file(c):
    (c.tmp / "f").write_text("x")
    cli("a cat", "--model", "tiny-sd1", "--out", str(c.tmp / "f"))


class Transformer16:
    """A stand-in for a transformer pipeline: VAE factor 8, 2×2 patches → sizes must be multiples of 16."""

    vae_scale_factor = 8
    default_sample_size = 128
    transformer = type("T", (), {"config": type("C", (), {"patch_size": 2, "sample_size": 128})()})()

    def __call__(self, prompt, num_inference_steps: int = 28, guidance_scale: float = 3.5):
        raise AssertionError("not called")


def model_factor(c):
    from daamlib.pipeline import resolve_settings

    assert resolve_settings(Transformer16()) == {"steps": 28, "guidance": 3.5, "height": 1024, "width": 1024}
    resolve_settings(Transformer16(), height=72, width=64)


def late_bad_row(c):
    rows = [{"id": f"p{i}", "prompt": "a cat", "seed": i, "steps": 1} for i in range(600)]
    rows[500]["height"] = 63
    c.runner(rows)


def nothing_generated_by_runner(c):
    assert not any((c.tmp / "out" / "items").glob("*")) if (c.tmp / "out").exists() else True


def runner_unwritable(c):
    c.runner(ONE, out=Path("/sys/daam-not-writable"))


def table_file(name: str, data: bytes):
    def action(c):
        f = c.tmp / name
        f.write_bytes(data)
        return c.runner(f)
    return action


def bom_csv(c):
    records = table_file("items.csv", "\ufeffid,prompt,seed,steps\none,a cat,0,1\n".encode())(c)
    assert [(r["id"], r["status"]) for r in records] == [("one", "generated")]


# -- issue 13: damaged runs and traces that would change what the model computes --------------------------
def damaged_run(how: str):
    def action(c):
        out = c.run_out()
        folder = out / "items" / "one"
        if how == "truncate":
            maps = folder / "maps.safetensors"
            maps.write_bytes(maps.read_bytes()[: maps.stat().st_size // 2])
        else:
            (folder / "image.png").unlink()
        c.out = out
        return c.runner(ONE, out=out, on_damaged="stop")
    return action


def damaged_run_repaired(c):
    from daamlib.runner import DamagedItemsError

    with pytest.raises(DamagedItemsError):
        damaged_run("delete")(c)
    before = (c.finished_run / "items" / "one" / "maps.safetensors").read_bytes()
    assert [r["status"] for r in c.runner(ONE, out=c.out)] == ["repaired"]
    assert (c.out / "items" / "one" / "maps.safetensors").read_bytes() == before  # byte-identical
    assert [r["id"] for r in load_results(c.out)] == ["one"]


def damaged_run_load(c):
    out = c.run_out()
    (out / "items" / "one" / "image.png").unlink()
    load_results(out)


def trace_with_processor(c, processor):
    """Trace a copy of the pipeline whose every attention layer has ``processor`` (the shared UNet stays as it is)."""
    pipe = type(c.pipe)(**c.pipe.components)
    pipe.unet = __import__("copy").deepcopy(c.pipe.unet)
    pipe.unet.set_attn_processor(processor)
    with trace(pipe):
        pass


def users_processor(c):
    from diffusers.models.attention_processor import AttnProcessor2_0

    class Reweighting(AttnProcessor2_0):
        pass

    trace_with_processor(c, Reweighting())


def users_processor_named_as_diffusers(c):
    from diffusers.models.attention_processor import AttnProcessor2_0 as Diffusers

    class AttnProcessor2_0(Diffusers):  # the user's own, under diffusers' class name
        pass

    trace_with_processor(c, AttnProcessor2_0())


def users_sdpa_kept(c):
    import torch.nn.functional as F

    torch_sdpa, calls = F.scaled_dot_product_attention, []

    def mine(*args, **kwargs):
        calls.append(1)
        return torch_sdpa(*args, **kwargs)

    F.scaled_dot_product_attention = mine
    try:
        with trace(c.pipe):
            c.pipe("a cat", num_inference_steps=1, output_type="pt")
        assert calls and F.scaled_dot_product_attention is mine
    finally:
        F.scaled_dot_product_attention = torch_sdpa


def empty_prompt_plot(c):
    import matplotlib.pyplot as plt

    with trace(c.pipe) as tc:
        c.pipe("", num_inference_steps=1, output_type="pt")
    tc.heat_maps(0).plot()
    plt.close("all")


def replay_other_model(c):
    from daamlib.replay import AttentionStore
    from daamlib.testing.tiny import tiny_pipeline

    store = AttentionStore()
    with trace(c.pipe, store=store):
        c.pipe("a cat", num_inference_steps=1, output_type="pt")
    other = tiny_pipeline("sd2")
    with trace(other, replay=store):
        other("a cat", num_inference_steps=1, output_type="pt")


def bit_flip_repaired(c):
    out = c.run_out()
    png = out / "items" / "one" / "image.png"
    before = png.read_bytes()
    data = bytearray(before)
    data[60] ^= 0xFF  # inside the pixel data: the PNG's chunks stay intact
    png.write_bytes(bytes(data))
    assert [r["status"] for r in c.runner(ONE, out=out)] == ["repaired"]
    assert png.read_bytes() == before


def emptied_record_rebuilt(c):
    out = c.run_out()
    (out / "manifest" / "one.json").write_bytes(b"")
    assert [r["status"] for r in c.runner(ONE, out=out)] == ["skipped"]
    assert load_results(out)[0]["prompt"] == "a cat" and list((out / "manifest").glob(".one.json.damaged-*"))


def disk_full(c):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    real, safetensors.torch.save_file = safetensors.torch.save_file, full
    try:
        save_experiment(c.tmp / "full", c.hm)
    finally:
        safetensors.torch.save_file = real


def _unsummed(c, change):
    path = c.exp()
    meta = json.loads((path / "meta.json").read_text())
    change(meta, path)
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "meta.sha256").unlink()
    load_experiment(path)


def meta_tokens_swapped(c):
    def swap(meta, path):
        w = meta["words"]
        w[1]["tokens"], w[4]["tokens"] = w[4]["tokens"], w[1]["tokens"]

    _unsummed(c, swap)


def meta_size_inflated(c):
    def inflate(meta, path):
        (path / "image.png").unlink(missing_ok=True)
        meta["files"].pop("image.png", None)
        meta["size"] = [16384, 16384]

    _unsummed(c, inflate)


def ratings_file(content: bytes):
    def action(c):
        from daamlib.studies.pos import load_ratings

        (c.tmp / "ratings.csv").write_bytes(content)
        load_ratings(c.tmp / "ratings.csv")

    return action


def shared_unet(c):
    twin = type(c.pipe)(**c.pipe.components)
    with trace(c.pipe):
        with trace(twin):
            pass


def encode_prompt_restored(c):
    mine = c.pipe.encode_prompt.__func__.__get__(c.pipe)  # a bound override set on the instance
    c.pipe.encode_prompt = mine
    try:
        with trace(c.pipe):
            pass
        assert c.pipe.encode_prompt is mine
    finally:
        del c.pipe.encode_prompt


def sdxl_prompt_2(c):
    from daamlib.testing.tiny import tiny_pipeline

    pipe = tiny_pipeline("sdxl")
    with trace(pipe):
        pipe("a cat", prompt_2="a dog", num_inference_steps=1, output_type="pt")


def interrupted(c):
    def stop_after_two(p, step, timestep, kwargs):
        if step == 1:
            p._interrupt = True
        return kwargs

    with trace(c.pipe) as tc:
        out = c.pipe("a cat", num_inference_steps=5, output_type="pt", callback_on_step_end=stop_after_two)
    c.hm_interrupted = tc.heat_maps(0, image=out.images[0])


def interrupted_counts(c):
    assert (c.hm_interrupted.steps_completed, c.hm_interrupted.steps_expected) == (2, 5)


CASES = [
    # id, action, raises, the problem (regex), the fix (regex), a check after
    # -- words and prompts --------------------------------------------------------------------------
    ("word-not-in-prompt", lambda c: c.hm["zebra"], WordNotFoundError,
     r"'zebra' is not in the prompt 'a cat and a dog'", r"words are: a, cat, and, a, dog"),
    ("several-words-as-one", lambda c: c.hm["a cat"], WordNotFoundError,
     r"'a cat' is not in the prompt", r"look them up one at a time"),
    ("repeated-word-without-occurrence", lambda c: c.hm["a"], AmbiguousWordError,
     r"'a' occurs 2 times", r"occurrence=0\.\.1 \(e\.g\. heat_maps\['a', 1\]"),
    ("occurrence-out-of-range", lambda c: c.hm["a", 2], WordNotFoundError,
     r"occurrence=2 is out of range", r"use occurrence=0\.\.1"),
    ("word-not-a-string", lambda c: c.hm.word(3), TypeError, r"got int 3", r"must be a string"),
    ("empty-prompt", lambda c: generate(c.pipe, "", steps=1), ValueError,
     r"the prompt is empty", r"give it at least one word"),
    ("blank-prompt", lambda c: generate(c.pipe, " \t ", steps=1), ValueError,
     r"the prompt is empty", r"give it at least one word"),
    ("empty-prompt-list", lambda c: generate(c.pipe, [], steps=1), TypeError,
     r"got list: \[\]", r"must be a string or a non-empty list of strings"),
    ("prompt-not-a-string", lambda c: generate(c.pipe, 42, steps=1), TypeError,
     r"got int: 42", r"must be a string or a non-empty list of strings"),
    ("prompt-list-with-a-non-string", lambda c: generate(c.pipe, ["a cat", None], steps=1), TypeError,
     r"got list: \['a cat', None\]", r"must be a string or a non-empty list of strings"),
    ("prompt-bytes", lambda c: generate(c.pipe, b"a cat", steps=1), TypeError,
     r"got bytes", r"must be a string"),
    ("long-prompt-warns-at-generation", long_prompt_generation, UserWarning,
     r"longer than the text encoder's 77 tokens; words past the limit were dropped", r"shorten the prompt"),
    ("long-prompt-truncated-word-requested", long_prompt_truncated_word, WordNotFoundError,
     r"'zebra' .* lies past the text encoder's limit of 77 tokens", r"shorten the prompt"),
    # -- maps and τ -----------------------------------------------------------------------------------
    ("tau-above-1", lambda c: c.hm["cat"].binarize(1.5), ValueError, r"got 1\.5", r"must be in \[0, 1\]"),
    ("tau-below-0", lambda c: c.hm["cat"].binarize(-0.1), ValueError, r"got -0\.1", r"must be in \[0, 1\]"),
    ("tau-nan", lambda c: c.hm["cat"].binarize(float("nan")), ValueError, r"got nan", r"must be in \[0, 1\]"),
    ("unknown-binarize-mode", lambda c: c.hm["cat"].binarize(0.4, mode="mean"), ValueError,
     r"got 'mean'", r"mode must be one of \('max', 'minmax'\)"),
    ("nan-map", nan_map, ValueError, r"heat map contains NaN", r"dtype=torch\.float32"),
    ("all-zero-map-gives-an-empty-mask (outcome)", all_zero_map, None, None, None),
    ("map-before-any-generation", map_before_generation, TraceError,
     r"no generation was recorded yet", r"call the pipeline inside `with trace\(pipe\)`"),
    # -- pipelines and traces --------------------------------------------------------------------------
    ("unsupported-pipeline", unsupported_pipeline, UnsupportedPipelineError,
     r"NoCrossAttention has no UNet with cross-attention", r"supported: StableDiffusionPipeline.*StableDiffusionXLPipeline"),
    ("unsupported-pipeline-without-unet", unsupported_no_unet, UnsupportedPipelineError,
     r"object has no UNet", r"supported: StableDiffusionPipeline"),
    ("trace-nested-in-a-trace", nested_trace, TraceError,
     r"already being traced", r"leave the outer `with trace\(pipe\)` block first"),
    ("exception-inside-a-trace (outcome: restored, next trace works)", exception_inside_trace, RuntimeError,
     r"boom", r"", after_exception_inside_trace),
    ("unknown-model-folder", lambda c: load_pipeline("./no/such/model"), FileNotFoundError,
     r"'\./no/such/model' does not exist", r"pass a folder with model_index\.json"),
    ("hub-model-not-available-offline", lambda c: load_pipeline("nobody/no-such-model"), OSError,
     r"could not load 'nobody/no-such-model'", r"download the model elsewhere and pass its folder"),
    ("unknown-scheduler", lambda c: set_scheduler(c.pipe, "fast"), ValueError,
     r"unknown scheduler 'fast'", r"choose one of \('ddim', 'dpm', 'euler', 'pndm'\)"),
    # -- experiment folders ------------------------------------------------------------------------------
    ("experiment-missing-maps", damage("maps.safetensors", "delete"), ExperimentError,
     r"maps\.safetensors is missing", r"re-run it to regenerate"),
    ("experiment-missing-image", damage("image.png", "delete"), ExperimentError,
     r"image\.png is missing", r"re-run it to regenerate"),
    ("experiment-missing-meta", damage("meta.json", "delete"), ExperimentError,
     r"meta\.json is missing: .* not a complete experiment", r"re-run it to regenerate"),
    ("truncated-safetensors", damage("maps.safetensors", "truncate"), ExperimentError,
     r"does not match the checksum in meta\.json: it is truncated", r"re-run the experiment"),
    ("truncated-safetensors-checksum-updated", damage("maps.safetensors", "truncate+rehash"), ExperimentError,
     r"not a readable safetensors file", r"re-run the experiment"),
    ("meta-edited-key-removed", edit_meta(lambda m: m.pop("tokens")), ExperimentError,
     r"lacks \['tokens'\]; it was edited by hand", r"re-run the experiment"),
    ("meta-edited-layer-shape", edit_meta(lambda m: next(iter(m["layers"].values())).__setitem__(0, 9)), ExperimentError,
     r"does not fit \d+ steps", r"re-run the experiment"),
    ("meta-edited-without-its-checksum", edit_meta(lambda m: m.update(size=[128, 128]), forge=False), ExperimentError,
     r"meta\.json does not match its checksum in meta\.sha256", r"re-run the experiment"),
    ("meta-forged-huge-size", edit_meta(lambda m: m.update(size=[40000, 40000])), ExperimentError,
     r"field 'size' must be \[height, width\] with sides from 1 to 16384", r"re-run the experiment"),
    ("meta-forged-file-outside", edit_meta(lambda m: m["files"].update({"../../etc/hostname": "0" * 64})),
     ExperimentError, r"field 'files' must map maps\.safetensors", r"re-run the experiment"),
    ("meta-edited-format", edit_meta(lambda m: m.update(format="daam-experiment/0")), ExperimentError,
     r"is not a daam-experiment/1 file \(format='daam-experiment/0'\)", r"re-run the experiment"),
    ("meta-edited-words", edit_meta(lambda m: m["words"][0].pop("span")), ExperimentError,
     r"is not a word of the prompt", r"re-run the experiment"),
    ("meta-not-json", garble_meta, ExperimentError, r"meta\.json is not valid JSON", r"re-run the experiment"),
    ("experiment-path-is-a-file (load)", path_is_a_file_load, ExperimentError,
     r"is a file, not an experiment folder", r"pass the folder that holds meta\.json"),
    ("experiment-path-is-a-file (save)", path_is_a_file_save, ExperimentError,
     r"is a file, not an experiment folder", r"choose another output path"),
    ("experiment-path-absent", lambda c: load_experiment(c.tmp / "nope"), ExperimentError,
     r"no experiment at", r"check the path"),
    ("pickle-planted-as-maps", planted_pickle("maps.safetensors"), ExperimentError,
     r"not a readable safetensors file", r"re-run the experiment", not_executed),
    ("pickle-planted-as-image", planted_pickle("image.png"), ExperimentError,
     r"image\.png is not a readable image", r"re-run the experiment", not_executed),
    ("pickle-planted-as-meta", planted_pickle("meta.json"), ExperimentError,
     r"meta\.json does not match its checksum in meta\.sha256", r"re-run the experiment", not_executed),
    # -- the runner's item table and output folder --------------------------------------------------------
    ("item-id-path-traversal", lambda c: c.runner(one(id="../evil")), ItemError,
     r"row 0 \(id '\.\./evil'\): id '\.\./evil' is not a safe folder name", r"use 1–100 letters, digits"),
    ("item-id-with-a-slash", lambda c: c.runner(one(id="a/b")), ItemError,
     r"id 'a/b' is not a safe folder name", r"starting with a letter or digit"),
    ("item-id-hidden", lambda c: c.runner(one(id=".hidden")), ItemError,
     r"id '\.hidden' is not a safe folder name", r"starting with a letter or digit"),
    ("item-id-missing", lambda c: c.runner(one(id="")), ItemError,
     r"row 0: no 'id'", r"every row needs id, prompt and seed"),
    ("item-ids-repeated-ignoring-case", lambda c: c.runner(one(id="Cat") + one(id="cat")),
     ItemError, r"row 1 \(id 'cat'\): id 'cat' is used again \(first by row 0\)", r"must be\s+unique"),
    ("item-seed-missing", lambda c: c.runner([{"id": "x", "prompt": "a cat"}]), ItemError,
     r"row 0 \(id 'x'\): no 'seed'", r"every row needs id, prompt and seed"),
    ("item-seed-not-an-integer", lambda c: c.runner(one(seed="abc")), ItemError,
     r"seed must be an integer, got 'abc'", r"fix them and run again"),
    ("item-steps-negative", lambda c: c.runner(one(steps=-3)), ItemError,
     r"steps must be an integer from 1 to 10000, got -3", r"fix them and run again"),
    ("item-guidance-not-a-number", lambda c: c.runner(one(guidance="high")), ItemError,
     r"guidance must be a number, got 'high'", r"fix them and run again"),
    ("item-column-misspelt", lambda c: c.runner(one(step=3)), ItemError,
     r"unknown column 'step'", r"did you mean 'steps'\? Rename it"),
    ("item-prompt-empty", lambda c: c.runner(one(prompt="  ")), ItemError,
     r"row 0 \(id 'one'\): the prompt is empty", r"give it at least one word"),
    ("item-prompt-not-a-string", lambda c: c.runner(one(prompt=["a", "b"])), ItemError,
     r"prompt must be one string per row, got list", r"fix them and run again"),
    ("item-table-empty", lambda c: c.runner([]), ItemError,
     r"the item table is empty", r"give at least one row with id, prompt and seed"),
    ("item-table-file-absent", lambda c: c.runner(c.tmp / "items.csv"), FileNotFoundError,
     r"item table .*items\.csv does not exist", r"pass a \.csv, \.jsonl or \.json file"),
    ("runner-unsupported-pipeline", lambda c: run_experiments(NoCrossAttention(), ONE, c.tmp / "out", progress=False),
     UnsupportedPipelineError, r"NoCrossAttention has no UNet with cross-attention", r"supported: StableDiffusionPipeline"),
    ("runner-out-is-a-file", runner_out_is_a_file, ExperimentError,
     r"is a file, not an output folder", r"choose another --out / out_dir"),
    ("runner-finished-item-settings-changed", runner_settings_changed, SettingsChangedError,
     r"one: steps: 1 → 2", r"Pass overwrite=True \(--overwrite\) to generate them again"),
    ("runner-manifest-record-edited", runner_record_edited, ExperimentError,
     r"one\.json does not match the experiment in items/one \(record → experiment: seed: 7 → 0\)",
     r"edited by hand — delete it and run again"),
    ("runner-manifest-record-edited (load_results)", runner_record_edited_load, ExperimentError,
     r"prompt: 'a dog' → 'a cat'", r"delete it and run again"),
    ("runner-results-not-finished", runner_unfinished_items, ExperimentError,
     r"1 of 2 items are not finished .*: two", r"run the runner again to finish them"),
    # -- issue 13 §3: options and columns refused before the model loads; what ran is recorded ------------------
    ("cli-steps-0", lambda c: cli("a cat", "--model", "tiny-sd1", "--steps", "0"), CliError,
     r"steps must be an integer from 1 to 10000, got 0", r"from 1 to 10000"),
    ("cli-steps-negative", lambda c: cli("a cat", "--model", "tiny-sd1", "--steps", "-1"), CliError,
     r"got -1", r"steps must be an integer from 1 to 10000"),
    ("cli-height-not-a-multiple-of-8", lambda c: cli("a cat", "--model", "tiny-sd1", "--height", "63"), CliError,
     r"height must be a multiple of 8 .*got 63", r"use e\.g\. 64"),
    ("cli-height-alone-and-dtype (outcome: 96×64 float16 generated and recorded)", cli_records_what_ran, None, None, None),
    ("size-not-a-multiple-of-the-models-factor", model_factor, ValueError,
     r"height must be a multiple of 16 for Transformer16 .*got 72", r"use e\.g\. 64"),
    ("cli-guidance-nan", lambda c: cli("a cat", "--model", "tiny-sd1", "--guidance", "nan"), CliError,
     r"guidance must be a finite number, got nan", r"finite number"),
    pytest.param("cli-cuda-without-cuda", lambda c: cli("a cat", "--model", "tiny-sd1", "--device", "cuda"), CliError,
                 r"device 'cuda': CUDA is not available on this machine", r"pass --device cpu, or install a CUDA build",
                 None, id="cli-cuda-without-cuda", marks=NO_CUDA),
    ("cli-device-unknown", lambda c: cli("a cat", "--model", "tiny-sd1", "--device", "gpu"), CliError,
     r"device 'gpu' is not a torch device", r"pass cpu, cuda, cuda:1 or mps"),
    ("cli-seed-too-large", lambda c: cli("a cat", "--model", "tiny-sd1", "--seed", str(2**70)), CliError,
     r"seed must be an integer from 0 to 9223372036854775807, got 1180591620717411303424", r"from 0 to"),
    ("cli-out-is-a-file", cli_out_is_a_file, CliError, r"--out .*f is a file, not a folder", r"pass a folder path"),
    ("cli-out-unwritable", unwritable_out, CliError, r"cannot write to --out /sys/daam-not-writable",
     r"pass a folder you can write to"),
    ("generate-seed-too-large", lambda c: generate(c.pipe, "a cat", seed=2**70, steps=1), ValueError,
     r"seed must be an integer from 0 to 9223372036854775807", r"from 0 to"),
    ("runner-default-steps-0", lambda c: c.runner(ONE, defaults={"steps": 0}), ItemError,
     r"the default steps must be an integer from 1 to 10000, got 0", r"--steps / defaults="),
    ("runner-bad-row-500-of-600 (nothing generated)", late_bad_row, ItemError,
     r"row 500 \(id 'p500'\): height must be a multiple of 8 .*got 63", r"fix them and run again",
     nothing_generated_by_runner),
    ("runner-seed-too-large", lambda c: c.runner(one(seed=2**70)), ItemError,
     r"seed must be an integer from 0 to 9223372036854775807", r"fix them and run again"),
    ("runner-out-unwritable", runner_unwritable, ExperimentError,
     r"cannot write to the output folder /sys/daam-not-writable", r"choose another --out / out_dir"),
    ("table-csv-with-utf8-bom (outcome: read as Excel wrote it)", bom_csv, None, None, None),
    ("table-csv-unquoted-comma", table_file("items.csv", b"id,prompt,seed\none,a cat, and a dog,0\n"), ItemError,
     r"items\.csv, line 2: 4 fields but the header has 3", r'must be in double quotes: 1,"a cat, and a dog",0'),
    ("table-csv-latin1", table_file("items.csv", "id,prompt,seed\none,a café,0\n".encode("latin-1")), ItemError,
     r"items\.csv, line 2: byte 0xe9 is not UTF-8", r"save it as UTF-8 \(in Excel: \"CSV UTF-8\"\)"),
    ("table-jsonl-bad-line", table_file("items.jsonl", b'{"id": "a", "prompt": "a cat", "seed": 0}\n{"id": "b", \n'),
     ItemError, r"items\.jsonl, line 2: not valid JSON", r'each line must be one object such as \{"id"'),
    ("table-jsonl-line-not-an-object", table_file("items.jsonl", b'["a", "a cat", 0]\n'), ItemError,
     r"row 0: must be an object with id, prompt and seed, got list", r"fix them and run again"),
    ("table-json-bad", table_file("items.json", b'[{"id": "a",\n "prompt": }]'), ItemError,
     r"items\.json, line 2: not valid JSON", r"must hold a list of objects"),
    # -- issue 13 §1: damaged finished items -------------------------------------------------------------------
    ("runner-damaged-maps-listed (on_damaged='stop')", damaged_run("truncate"), DamagedItemsError,
     r"1 finished item\(s\) .* damaged:\n  one: maps\.safetensors is truncated",
     r"Run again without --on-damaged stop .* to regenerate them"),
    ("runner-damaged-image-repaired (outcome: byte-identical)", damaged_run_repaired, None, None, None),
    ("load-results-damaged-item", damaged_run_load, ExperimentError,
     r"1 finished item\(s\) .* damaged:\n  one: image\.png is missing", r"it regenerates damaged items"),
    # -- issue 13 §2: a trace never changes what the model computes without saying so ------------------------
    ("trace-users-own-processor", users_processor, TraceError,
     r"processors of your own \(Reweighting from test_catalogue\)", r"set_default_attn_processor"),
    # -- issue 27: every step counted once, the user's attention kept, damage caught without asking ------------------
    ("trace-processor-under-diffusers-name", users_processor_named_as_diffusers, TraceError,
     r"processors of your own \(AttnProcessor2_0 from test_catalogue\)", r"set_default_attn_processor"),
    ("trace-users-patched-sdpa (outcome: it computes the output and stays installed)", users_sdpa_kept, None, None,
     None),
    ("trace-empty-prompt-plot (outcome: plotted, no crash)", empty_prompt_plot, None, None, None),
    ("replay-onto-another-model", replay_other_model, ReplayError,
     r"recorded with another model \(UNet2DConditionModel, config \w+\) than this pipeline's",
     r"replay onto the model that recorded it"),
    ("runner-bit-flip-in-image (outcome: repaired without --verify)", bit_flip_repaired, None, None, None),
    ("runner-emptied-manifest-record (outcome: rebuilt, kept aside)", emptied_record_rebuilt, None, None, None),
    ("runner-disk-full-writing-maps", disk_full, ExperimentError,
     r"no space left to write .*maps\.safetensors", r"free some space .* experiments already saved are complete"),
    ("meta-tokens-swapped-without-checksum", meta_tokens_swapped, ExperimentError,
     r"word 'cat' is not spelled by its tokens \['dog</w>'\]", r"re-run the experiment"),
    ("meta-size-inflated-without-checksum", meta_size_inflated, ExperimentError,
     r"size 16384×16384 does not fit maps whose finest grid is \d+×\d+", r"re-run the experiment"),
    ("table-seed-float-beyond-2**53", lambda c: c.runner(__import__("pandas").DataFrame(
        {"id": ["one"], "prompt": ["a cat"], "seed": [9007199254740993.0]})), ItemError,
     r"seed 9007199254740992 came as a float of 2⁵³ or more", r"give it as an integer or as text"),
    ("ratings-file-truncated-row", ratings_file(b"item_id,word,occurrence,pos,rater,rating,label,timestamp\n"
                                                b"i,cat,0,NOUN,r"), ValueError,
     r"ratings file .*ratings\.csv, line 2: 5 fields where the header has 8", r"fix or remove that line"),
    ("ratings-file-latin-1", ratings_file("item_id,word,occurrence,pos,rater,rating,label,timestamp\n"
                                          "i,café,0,NOUN,r,4,good,t\n".encode("latin-1")), ValueError,
     r"ratings file .*ratings\.csv is not UTF-8", r"save it again as 'CSV UTF-8'"),
    ("ratings-file-empty", ratings_file(b""), ValueError, r"ratings file .*ratings\.csv is empty",
     r"move it aside to start a new ratings file"),
    ("trace-shared-unet", shared_unet, TraceError,
     r"UNet is already being traced through another pipeline", r"trace one pipeline at a time"),
    ("trace-encode-prompt-override-restored (outcome)", encode_prompt_restored, None, None, None),
    ("trace-sdxl-prompt-2-differs", sdxl_prompt_2, UserWarning, r"prompt_2 differs from prompt",
     r"leave prompt_2 unset \(or equal to prompt\)"),
    ("trace-interrupted-generation", interrupted, UserWarning,
     r"interrupted: its maps sum 2 of the 5 steps", r"generate again", interrupted_counts),
    # -- notebooks (issue 7: "a notebook run with a bad parameter fails fast") ------------------------------
    ("notebook-negative-N", lambda c: run_notebook(c, MODEL_ID="tiny-sd1", N_PROMPTS=-1),
     PapermillExecutionError, r"parameter N_PROMPTS must be a positive integer, got -1", r"positive integer",
     nothing_generated),
    ("notebook-unknown-model-path", lambda c: run_notebook(c, MODEL_ID="./no/such/model"),
     PapermillExecutionError, r"MODEL_ID='\./no/such/model' is neither a registered model \(shapeworld, .*tiny-sd1",
     r"an existing folder nor a Hub id", nothing_generated),
    ("notebook-model-without-world-or-prompts", lambda c: run_notebook(c, MODEL_ID="tiny-sd1"),
     PapermillExecutionError, r"PROMPTS_CSV is required for tiny-sd1", r"columns id, prompt, seed", nothing_generated),
    ("notebook-masks-folder-missing", lambda c: run_notebook(c, MODEL_ID="tiny-sd1", MASKS_DIR="/no/masks"),
     PapermillExecutionError, r"no human-mask folder at /no/masks", r"<item_id>/<noun>\.png", nothing_generated),
]


def _param(case):
    if hasattr(case, "marks"):  # already a pytest.param
        return case
    case = case + (None,) * (6 - len(case))
    return pytest.param(*case, id=case[0])


@pytest.mark.parametrize("name, action, raises, problem, fix, after", [_param(c) for c in CASES])
def test_bad_input(ctx, name, action, raises, problem, fix, after):
    if raises is None:  # an outcome row: must not raise
        action(ctx)
    elif issubclass(raises, Warning):
        with pytest.warns(raises) as caught:
            action(ctx)
        message = " | ".join(str(w.message) for w in caught if issubclass(w.category, raises))
        assert re.search(problem, message) and re.search(fix, message), message
    else:
        with pytest.raises(raises) as info:
            action(ctx)
        assert info.type is raises or issubclass(info.type, raises)
        assert info.match(problem), str(info.value)
        assert info.match(fix), str(info.value)
    if after is not None:
        after(ctx)
