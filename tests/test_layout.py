"""The layout the README promises: a core that imports neither the studies nor ShapeWorld, models and worlds
found by name through entry points, and notebooks that only tell the story."""

import json
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
    """Code cells of at most 8 lines, one parameters cell, and no branch on which model runs."""
    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    longest = max(len(src.splitlines()) for src in code)
    assert longest <= 8, f"{path.name}: a code cell of {longest} lines"
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in cells) == 1
    for c in cells:
        if c["cell_type"] == "code" and "parameters" not in c.get("metadata", {}).get("tags", []):
            src = "".join(c["source"])
            assert "EMBEDDED" not in src and "shapeworld" not in src.lower(), f"{path.name}: a model branch in {src!r}"


def test_non_default_runs_never_write_to_the_tracked_figures(tmp_path, monkeypatch, capsys):
    from daamlib.studies.workbook import figures_dir

    monkeypatch.chdir(REPO / "notebooks")
    defaults = {"MODEL_ID": "shapeworld", "N_PROMPTS": 100, "SEED": 0, "GALLERY_N": 6, "STEPS": None, "GUIDANCE": None,
                "SCHEDULER": None, "DEVICE": "cpu", "PAPER_COMPARABLE": False, "THRESHOLDS": [0.3, 0.4, 0.5], "PROMPTS_CSV": None, "MASKS_DIR": None,
                "OUT_DIR": "../out/01_segmentation", "FIGURES_DIR": "../figures"}
    assert str(figures_dir("../figures", defaults, "01_segmentation")) == "../figures"  # make figures
    changed = {**defaults, "N_PROMPTS": 10}
    assert figures_dir("../figures", changed, "01_segmentation") == Path("../out/01_segmentation/figures")
    assert "non-default parameters (N_PROMPTS)" in capsys.readouterr().out
    assert figures_dir(tmp_path, changed, "01_segmentation") == tmp_path  # an explicit FIGURES_DIR is kept
