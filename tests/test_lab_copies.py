"""make lab's working copies (daamlib.lab): JupyterLab reads and saves the tracked notebooks through copies under
out/lab/, so opening, editing and running them never writes a tracked file. The browser test (test_lab.py) runs
the real thing; these check the rules without a browser."""

import json

import pytest


def notebook(text: str) -> str:
    return json.dumps({"cells": [{"cell_type": "code", "source": text, "metadata": {}}], "metadata": {},
                       "nbformat": 4, "nbformat_minor": 5})


def test_a_copy_is_made_kept_when_edited_and_refreshed_when_not(tmp_path):
    from daamlib.lab import working_copy

    (tmp_path / "notebooks").mkdir()
    tracked = tmp_path / "notebooks" / "01_x.ipynb"
    tracked.write_text(notebook("A = 1"))
    copies = tmp_path / "out" / "lab"
    copy = working_copy(tmp_path, "notebooks/01_x.ipynb", copies)
    assert copy == copies / "notebooks" / "01_x.ipynb" and copy.read_text() == tracked.read_text()
    tracked.write_text(notebook("A = 2"))  # a git pull, the copy never edited: it follows
    assert "A = 2" in working_copy(tmp_path, "notebooks/01_x.ipynb", copies).read_text()
    copy.write_text(notebook("A = 3  # mine"))  # the user's edit, saved
    tracked.write_text(notebook("A = 4"))
    assert "mine" in working_copy(tmp_path, "notebooks/01_x.ipynb", copies).read_text()  # kept
    assert "A = 4" in tracked.read_text()


def test_the_contents_manager_redirects_tracked_notebooks_only(tmp_path):
    pytest.importorskip("jupyter_server")
    from daamlib.lab import WorkingCopies

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "00_quickstart.ipynb").write_text(notebook("B = 1"))
    (tmp_path / "notebooks" / "scratch.ipynb").write_text(notebook("C = 1"))
    cm = WorkingCopies(root_dir=str(tmp_path))
    assert cm._get_os_path("notebooks/00_quickstart.ipynb") == str(tmp_path / "out/lab/notebooks/00_quickstart.ipynb")
    assert cm._get_os_path("notebooks/scratch.ipynb") == str(tmp_path / "notebooks" / "scratch.ipynb")
    assert cm._get_os_path("notebooks") == str(tmp_path / "notebooks")


def test_the_command_runs_as_root_and_headless(monkeypatch, tmp_path):
    import daamlib.lab as lab

    monkeypatch.setattr(lab.os, "geteuid", lambda: 0)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    cmd = lab.command(tmp_path)
    assert "--allow-root" in cmd and "--no-browser" in cmd
    assert "--ServerApp.contents_manager_class=daamlib.lab.WorkingCopies" in cmd
    monkeypatch.setattr(lab.os, "geteuid", lambda: 1000)
    assert "--allow-root" not in lab.command(tmp_path)
