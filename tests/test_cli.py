"""The `daam` command end to end on a tiny model, and its refusals."""

import shutil
import subprocess
import sys

import pytest

from daamlib import load_experiment
from daamlib.cli import main


def test_cli_writes_image_overlays_grid_and_experiment(tmp_path):
    exe = shutil.which("daam") or shutil.which("daam", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the `daam` console script is not installed (pip install -e .)"
    out = tmp_path / "out"
    proc = subprocess.run([exe, "a giraffe, and a zebra", "--model", "tiny-sd2", "--steps", "2", "--seed", "3",
                           "--guidance", "4", "--height", "64", "--width", "96", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for f in ("image.png", "grid.png", "grid_masks.png"):
        assert (out / f).stat().st_size > 1000
    words = sorted(p.name for p in (out / "words").iterdir())
    assert words == ["00_a.png", "01_giraffe.png", "02_punct.png", "03_and.png", "04_a.png", "05_zebra.png"]
    hm, meta = load_experiment(out / "experiment")
    assert meta["seed"] == 3 and meta["settings"]["model"] == "tiny-sd2" and meta["settings"]["guidance"] == 4
    assert hm.size == (64, 96) and hm.image.shape == (64, 96, 3)
    # refuses to overwrite a finished experiment
    assert main(["a cat", "--model", "tiny-sd1", "--steps", "1", "--out", str(out)]) == 2


@pytest.mark.parametrize("argv, message", [
    (["", "--model", "tiny-sd1"], "prompt is empty"),
    (["a cat", "--threshold", "1.5"], r"must be in \[0, 1\]"),
    (["a cat", "--model", "./no/such/folder"], "does not exist"),
])
def test_cli_bad_input_fails_fast_with_a_message(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
