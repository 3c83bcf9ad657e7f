"""JupyterLab on the workbook without touching a tracked file: ``make lab`` (``python -m daamlib.lab``).

JupyterLab saves a notebook into the file it opened: outputs, execution counts, and every edit of the parameters
cell, so opening the workbook's notebooks changes tracked files. Here JupyterLab serves the repository as it is, but
with a contents manager (:class:`WorkingCopies`) that reads and writes each tracked notebook
(``notebooks/NN_*.ipynb``) through a working copy under ``out/lab/`` (git-ignored): the first time a notebook is
opened its copy is made, and from then on every save (autosave included) goes to the copy. The kernel still runs
in ``notebooks/``, so the notebooks' relative paths (``../out/NN_slug``) mean what they mean under papermill.

A copy that was never edited follows the tracked notebook when that changes (a ``git pull``); an edited one is
kept. To start a notebook afresh, delete its copy (``out/lab/notebooks/NN_slug.ipynb``).

    python -m daamlib.lab                  # as make lab: the URL with its token is printed
    python -m daamlib.lab --port 8899 --working-dir /tmp/lab
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

TRACKED = re.compile(r"notebooks/\d\d_[\w-]+\.ipynb")  # the workbook's notebooks, relative to the root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def working_copy(root: Path, relative: str, working_dir: Path) -> Path:
    """The working copy of the tracked notebook ``relative`` (under ``root``), made or refreshed as needed: made
    when absent; replaced when the tracked notebook changed and the copy was never edited."""
    original, copy = root / relative, working_dir / relative
    ledger_path = working_dir / ".origins.json"
    try:
        ledger = json.loads(ledger_path.read_text())
    except (OSError, ValueError):
        ledger = {}
    seen = ledger.get(relative)
    if copy.is_file() and (not original.is_file() or seen is None or _sha(original) == seen["original"]
                           or _sha(copy) != seen["copy"]):
        return copy  # current, or edited by the user (kept), or its original is gone
    if original.is_file():
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, copy)
        ledger[relative] = {"original": _sha(original), "copy": _sha(copy)}
        tmp = ledger_path.with_name(".origins.json.tmp")
        tmp.write_text(json.dumps(ledger, indent=1))
        os.replace(tmp, ledger_path)
    return copy


def _contents_manager():
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from traitlets import Unicode

    class WorkingCopies(AsyncLargeFileManager):
        """Every tracked notebook (``notebooks/NN_*.ipynb``) is read and saved through its working copy under
        ``working_dir`` (relative to the server's root, default ``out/lab``)."""

        working_dir = Unicode("out/lab", config=True, help="where the working copies of tracked notebooks live")

        def _get_os_path(self, path):
            os_path = super()._get_os_path(path)
            root = Path(os.path.abspath(self.root_dir))
            try:
                relative = Path(os_path).relative_to(root).as_posix()
            except ValueError:
                return os_path
            if not TRACKED.fullmatch(relative):
                return os_path
            return str(working_copy(root, relative, root / self.working_dir))

    return WorkingCopies


def __getattr__(name: str):  # jupyter imports the class by name; jupyter_server is only needed then
    if name == "WorkingCopies":
        return _contents_manager()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def command(root: Path, working_dir: str = "out/lab", port: int | None = None, token: str | None = None,
            browser: bool | None = None) -> list[str]:
    """The ``jupyter lab`` command ``make lab`` runs: the repository as the root, notebooks through their working
    copies, ``--allow-root`` when run as root, no browser where there is no display."""
    jupyter = Path(sys.executable).parent / "jupyter-lab"
    cmd = [str(jupyter) if jupyter.exists() else "jupyter-lab", f"--ServerApp.root_dir={root}",
           "--ServerApp.contents_manager_class=daamlib.lab.WorkingCopies",
           f"--WorkingCopies.working_dir={working_dir}", "--ServerApp.default_url=/lab/tree/notebooks"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # JupyterLab refuses to start as root without it (containers, cloud machines)
    if browser is None:
        browser = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin")
    if not browser:
        cmd.append("--no-browser")
    if port is not None:
        cmd += ["--ip", "127.0.0.1", "--port", str(port)]
    if token is not None:
        cmd.append(f"--IdentityProvider.token={token}")
    return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daamlib.lab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=None, help="the port (default: JupyterLab's, 8888 or the next free)")
    ap.add_argument("--working-dir", default="out/lab", help="where working copies live, relative to the "
                                                            "repository (default: out/lab, git-ignored)")
    ap.add_argument("--token", default=None, help="the access token (default: a random one, printed)")
    ap.add_argument("--browser", action=argparse.BooleanOptionalAction, default=None,
                    help="open a browser (default: where there is a display)")
    a = ap.parse_args(argv)
    root = Path.cwd()
    if not (root / "notebooks").is_dir():
        print(f"daamlib.lab: error: no notebooks/ folder in {root}; run it from the repository's root "
              "(as `make lab` does)", file=sys.stderr)
        return 2
    if not (root / a.working_dir).resolve().is_relative_to(root.resolve()):
        print(f"daamlib.lab: error: --working-dir {a.working_dir} is outside {root}; JupyterLab only serves files "
              "inside its root: choose a folder under it (out/ is git-ignored)", file=sys.stderr)
        return 2
    cmd = command(root, a.working_dir, a.port, a.token, a.browser)
    print(f"JupyterLab on {root}: notebooks are opened and saved as working copies in {a.working_dir}/notebooks/ "
          "(tracked files are never written); outputs go to out/NN_slug/", flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
