"""The layout the README promises: a core that imports neither the studies nor ShapeWorld, models and worlds
found by name through entry points, and notebooks that only tell the story."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = ["daamlib", "daamlib.trace", "daamlib.kernel", "daamlib.words", "daamlib.heatmap", "daamlib.replay",
        "daamlib.io", "daamlib.items", "daamlib.models", "daamlib.pipeline", "daamlib.stats", "daamlib.runner",
        "daamlib.explorer", "daamlib.cli", "daamlib.settings", "daamlib.dit"]

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("daamlib.studies", "daamlib.shapeworld")):
            raise ImportError(f"the core imported {name}")
sys.meta_path.insert(0, Block())
"""


def test_core_imports_and_runs_with_studies_and_shapeworld_blocked():
    """Every core module imports, and a tiny model is traced and saved end to end, while any import of
    daamlib.studies or daamlib.shapeworld raises."""
    code = BLOCKER + f"""
import importlib, tempfile
for m in {CORE!r}:
    importlib.import_module(m)
import daamlib
from daamlib.testing.tiny import tiny_pipeline
hm = daamlib.generate(tiny_pipeline("sd1"), "a red cat", steps=1)
daamlib.save_experiment(tempfile.mkdtemp() + "/x", hm, seed=0)
print("ok", hm.words)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok ['a', 'red', 'cat']" in proc.stdout, proc.stderr[-3000:]


def test_blocker_would_catch_a_core_import_of_the_studies():
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import daamlib.studies.segmentation"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "the core imported daamlib.studies" in proc.stderr


def test_core_source_never_names_the_studies_shapeworld_or_the_checkout():
    for name in CORE[1:]:
        path = REPO / name.replace(".", "/")
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]  # a package: every file
        src = "".join(f.read_text() for f in files)
        for bad in ("from .studies", "from .shapeworld", "daamlib.studies", "daamlib.shapeworld", "REPO_ROOT",
                    "data/models", '"data"'):
            assert bad not in src, f"{name} mentions {bad!r}"


def test_models_and_worlds_are_registered_by_name():
    from daamlib import models
    from daamlib.studies import data

    assert {"shapeworld", "tiny-sd1", "tiny-sd2", "tiny-sdxl"} <= set(models.registered())
    assert models.default() == ("shapeworld" if models.get("shapeworld").available() else "tiny-sd1")
    assert "shapeworld" in data.registered()
    with pytest.raises(ValueError, match="no '/'"):
        models.register("owner/name", lambda: "x")


def test_a_registered_folder_brings_its_own_sampling_settings(tmp_path, tiny):
    """sampling.json in a model folder sets steps and guidance for generate, the runner and the CLI."""
    import daamlib
    from daamlib import models
    from daamlib.runner import run_experiments

    tiny("sd1").save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "sampling.json").write_text(json.dumps({"steps": 2, "guidance": 3.0, "scheduler": "euler"}))
    models.register("tiny-folder", lambda: str(tmp_path / "m"))
    pipe = daamlib.load_pipeline("tiny-folder")
    assert pipe.daam_sampling == {"steps": 2, "guidance": 3.0, "scheduler": "euler"}
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert len(daamlib.generate(pipe, "a cat").steps) == 2
    rec = run_experiments(pipe, [{"id": "one", "prompt": "a cat", "seed": 0}], tmp_path / "run", progress=False)[0]
    assert rec["settings"]["steps"] == 2 and rec["settings"]["guidance"] == 3.0  # recorded as used
    (tmp_path / "m" / "sampling.json").write_text(json.dumps({"stpes": 2}))
    with pytest.raises(ValueError, match="unknown keys \\['stpes'\\]"):
        daamlib.load_pipeline(str(tmp_path / "m"))


@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_only_tell_the_story(path):
    """Code cells of at most 8 lines (the parameters cell aside: one parameter per line), one parameters cell, and
    no branch on which model runs."""
    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells
            if c["cell_type"] == "code" and "parameters" not in c.get("metadata", {}).get("tags", [])]
    longest = max(len(src.splitlines()) for src in code)
    assert longest <= 8, f"{path.name}: a code cell of {longest} lines"
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in cells) == 1
    for c in cells:
        if c["cell_type"] == "code" and "parameters" not in c.get("metadata", {}).get("tags", []):
            src = "".join(c["source"])
            assert "EMBEDDED" not in src and "shapeworld" not in src.lower(), f"{path.name}: a model branch in {src!r}"


def test_only_make_figures_writes_the_tracked_figures():
    """Every notebook's FIGURES_DIR is None (its OUT_DIR/figures); make figures alone passes ../figures."""
    from daamlib.studies.workbook import figures_dir

    assert figures_dir(None, "../out/01_segmentation") == Path("../out/01_segmentation/figures")
    assert figures_dir("../figures", "../out/01_segmentation") == Path("../figures")
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cell = next(c for c in json.loads(path.read_text())["cells"]
                    if "parameters" in c.get("metadata", {}).get("tags", []))
        params: dict = {}
        exec("".join(cell["source"]), {}, params)
        assert params["FIGURES_DIR"] is None and params["OUT_DIR"] == f"../out/{path.stem}", path.name
    assert "-p FIGURES_DIR ../figures" in (REPO / "Makefile").read_text()


@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_papermill_lists_every_parameter_with_its_comment(path):
    """One parameter per line with a comment, so `papermill --help-notebook` lists each (and a -p for any of them
    is never an "unknown parameter")."""
    import subprocess
    import sys

    cell = next(c for c in json.loads(path.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    lines = "".join(cell["source"]).splitlines()
    names = [line.split("=", 1)[0].strip() for line in lines]
    assert all(n.isidentifier() and n.isupper() for n in names), lines
    assert all("  # " in line for line in lines), [line for line in lines if "  # " not in line]
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)], capture_output=True,
                         text=True, timeout=120)
    listed = [m.group(1) for m in re.finditer(r"^  (\w+): ", out.stdout, re.M)]
    assert listed == names, out.stdout[-2000:]


def test_a_small_model_generates_at_one_thread_and_the_callers_setting_is_restored(tiny, monkeypatch):
    """torch.set_num_threads is process-wide: generate() sets one thread for a small model on the CPU (never
    pathological on a busy machine: README, Threads) and puts the caller's setting back; DAAM_THREADS overrides."""
    import torch

    import daamlib

    pipe = tiny("sd1")
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda *a: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        daamlib.generate(pipe, "a cat", steps=1)
        assert seen[-1] == 1 and torch.get_num_threads() == 2
        monkeypatch.setenv("DAAM_THREADS", "all")
        daamlib.generate(pipe, "a cat", steps=1)
        assert seen[-1] == 2
        monkeypatch.setenv("DAAM_THREADS", "zero")
        with pytest.raises(ValueError, match="DAAM_THREADS must be a positive number of threads or 'all'"):
            daamlib.generate(pipe, "a cat", steps=1)
    finally:
        hook.remove()
        torch.set_num_threads(before)


def test_a_result_that_differs_only_in_package_versions_is_not_rewritten(tmp_path):
    from daamlib.studies.workbook import record_results

    run = {"parameters": {"N_PROMPTS": 3}, "model": "m", "versions": {"torch": "2.13.0"}}
    record_results({"miou": 1.5}, "r", tmp_path, run)
    before = (tmp_path / "r.json").read_bytes()
    record_results({"miou": 1.5}, "r", tmp_path, {**run, "versions": {"torch": "2.14.0"}})
    assert (tmp_path / "r.json").read_bytes() == before
    record_results({"miou": 1.6}, "r", tmp_path, {**run, "versions": {"torch": "2.14.0"}})
    assert b"2.14.0" in (tmp_path / "r.json").read_bytes()  # a changed number rewrites it, with its versions
