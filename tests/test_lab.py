"""The workbook in JupyterLab, in a real headless Chromium: notebook 00's explorer and notebook 02's rating
widget render and respond to clicks and key presses made on the page (not to kernel calls).

Needs Debian's ``chromium`` (``.ci/run`` installs it as root) and Playwright for Python (``.[test]``);
skips, saying which is missing, where neither can be had. Screenshots go to ``$DAAM_SCREENSHOTS``
(``figures`` for the README's), else ``out/lab-screenshots/``. JupyterLab is started as ``make lab`` starts it
(:mod:`daamlib.lab`), and the last test checks that the checkout's ``git status`` is what it was before.
"""

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
MODEL = REPO / "data" / "models" / "shapeworld" / "model_index.json"

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = PlaywrightTimeout = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (as root), as .ci/run does"),
    pytest.mark.skipif(sync_playwright is None, reason="Playwright for Python is not installed: pip install -e '.[test]'"),
    pytest.mark.skipif(shutil.which("jupyter-lab") is None and not (Path(sys.executable).parent / "jupyter-lab").exists(),
                       reason="JupyterLab is not installed: pip install -e '.[notebooks]'"),
    pytest.mark.skipif(not MODEL.is_file(), reason="the embedded model is not in data/models/shapeworld"),
]
SHOTS = Path(os.environ.get("DAAM_SCREENSHOTS", REPO / "out" / "lab-screenshots"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkout_state() -> dict:
    """`git status --porcelain` of the checkout, with the content hash of every path it lists (so that a file
    already modified before the test must also be unchanged after it)."""
    import hashlib

    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    state = {}
    for line in out.splitlines():
        path = REPO / line[3:].split(" -> ")[-1].strip('"')
        state[line] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return state


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab started as README says (`make lab`: daamlib.lab's command, root flags included) on a free
    loopback port with a token, on the checkout itself; the working copies of the notebooks go to out/lab-test-<pid>/
    instead of out/lab/ (removed afterwards), so that a developer's own copies are left alone."""
    from daamlib.lab import command

    ws = tmp_path_factory.mktemp("lab")
    before = checkout_state()
    # every cell in the page (no windowing: cells out of view are still in the DOM), and no news toast
    settings = ws / ".jupyter" / "lab" / "user-settings" / "@jupyterlab"
    for ext, values in (("notebook-extension/tracker", {"windowingMode": "none"}),
                        ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False})):
        (settings / ext).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{ext}.jupyterlab-settings").write_text(json.dumps(values))
    port, token = free_port(), "daam-test-token"
    copies = REPO / "out" / f"lab-test-{os.getpid()}"  # inside the root, as out/lab is; git-ignored
    cmd = command(REPO, str(copies.relative_to(REPO)), port, token, browser=False) + ["--LabApp.news_url="]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "JUPYTER_CONFIG_DIR": str(ws / ".jupyter")})
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start within 60 s")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield {"url": url, "token": token, "workspace": ws, "copies": copies, "browser": browser, "before": before}
        browser.close()
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(copies, ignore_errors=True)


def open_notebook(lab, name: str):
    page = lab["browser"].new_page(viewport={"width": 1300, "height": 1000})
    # a workspace of its own (reset): only this notebook open, none restored from an earlier page
    page.goto(f"{lab['url']}/lab/workspaces/{name.replace('_', '-')}/tree/notebooks/{name}.ipynb?reset&token={lab['token']}")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'] >> visible=true", timeout=120_000)
    return page


def edit_parameters_and_save(page, lab, name: str, lines: list[str]) -> None:
    """Type lines at the end of the parameters cell, as a user would, and save with Ctrl+S (the working copy)."""
    editor = page.locator(".jp-CodeCell", has_text="FIGURES_DIR = None").locator(".cm-content").first
    editor.click()
    page.keyboard.press("Control+End")
    for line in lines:
        page.keyboard.press("Enter")
        page.keyboard.type(line)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    copy = lab["copies"] / "notebooks" / f"{name}.ipynb"
    for _ in range(100):
        if copy.is_file() and all(line in copy.read_text() for line in (json.dumps(x)[1:-1] for x in lines)):
            return
        page.wait_for_timeout(100)
    pytest.fail(f"the edited parameters were not saved to the working copy {copy}")


def run_all(page, settle_s: int = 300):
    """Run All, and return once every code cell has run. Under load the kernel's connection can lag its "idle"
    indicator: then Run All is lost, wholly or after the first cells (they stay "[ ]" with nothing running or
    queued); either way it is clicked again, up to four times."""
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
    started = page.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]"))
    seen, dialogs = [], []
    for _ in range(4):
        dialog = page.locator(".jp-Dialog >> visible=true")
        if dialog.count():  # e.g. "the kernel appears to have died": said in the failure, closed, then retried
            dialogs.append(" ".join(dialog.first.inner_text().split()))
            warnings.warn(f"JupyterLab showed a dialog while running the notebook: {dialogs[-1]}")
            page.keyboard.press("Escape")
            dialog.first.wait_for(state="hidden", timeout=10_000)
        page.locator(".jp-Notebook >> visible=true").first.click()  # focus the notebook: the Run menu acts on it
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            started.first.wait_for(timeout=20_000)
        except PlaywrightTimeout:
            continue
        idle = 0
        for _ in range(settle_s * 2):  # settled: nothing running or queued ("[*]") for 2 s in a row
            seen = [t.strip() for t in prompts.all_text_contents()]
            idle = 0 if any("*" in t for t in seen) else idle + 1
            if idle >= 4:
                break
            page.wait_for_timeout(500)
        if seen and all(re.search(r"\[\d+\]", t) for t in seen):
            return page
    pytest.fail(f"JupyterLab did not run every cell (Run All was clicked four times); prompts: {seen}; "
                f"dialogs: {dialogs}")


@pytest.fixture
def shoot_on_failure(request):
    """On a failure, keep a screenshot of the page (``page`` set by the test) for the reader of the CI log."""
    box = {}
    yield box
    rep = getattr(request.node, "rep_call", None)
    if "page" in box and (rep is None or rep.failed):
        SHOTS.mkdir(parents=True, exist_ok=True)
        box["page"].screenshot(path=str(SHOTS / f"failed_{request.node.name}.png"), full_page=True)


def wait_for_new_src(page, img, old: str, what: str) -> str:
    for _ in range(200):
        src = img.get_attribute("src")
        if src and src != old:
            return src
        page.wait_for_timeout(100)
    pytest.fail(f"the rendered image did not change after {what}")


def test_explorer_renders_and_redraws_on_clicks_and_keys(lab, shoot_on_failure):
    page = shoot_on_failure["page"] = open_notebook(lab, "00_quickstart")  # its defaults, as README runs it
    run_all(page)
    dropdown = page.locator(".widget-dropdown select").first
    dropdown.wait_for(timeout=180_000)
    explorer = page.locator(".widget-vbox", has=dropdown).first
    img = explorer.locator("img.widget-image")
    img.wait_for()
    explorer.scroll_into_view_if_needed()
    first = img.get_attribute("src")
    SHOTS.mkdir(parents=True, exist_ok=True)
    explorer.screenshot(path=str(SHOTS / "lab_explorer.png"))

    dropdown.select_option(label="circle #2")  # the word, chosen on the page
    after_word = wait_for_new_src(page, img, first, "choosing another word")
    status = explorer.locator(".widget-html-content").last
    assert "'circle'" in status.inner_text()

    handle = explorer.locator(".widget-hslider .noUi-handle").first  # τ, moved with the keyboard
    handle.focus()
    for _ in range(4):
        handle.press("ArrowRight")
    wait_for_new_src(page, img, after_word, "moving τ with the arrow keys")
    assert handle.get_attribute("aria-valuenow") == "0.6"
    assert "mask covers" in status.inner_text()
    explorer.screenshot(path=str(SHOTS / "lab_explorer_tau.png"))


def test_rating_widget_records_a_click_and_a_key_press_in_the_csv(lab, shoot_on_failure):
    """RATER set in the parameters cell, typed and saved in the page; the ratings go to OUT_DIR/ratings.csv."""
    page = shoot_on_failure["page"] = open_notebook(lab, "02_pos_attribution")
    out = lab["workspace"] / "out02"
    edit_parameters_and_save(page, lab, "02_pos_attribution", ["N_PROMPTS = 2", "WORDS_PER_POS = 2", "STEPS = 5",
                                                                'RATER = "lab-test"', f'OUT_DIR = "{out}"'])
    run_all(page)
    good = page.locator("button", has_text="4 good").first
    good.wait_for(timeout=240_000)
    widget = page.locator(".widget-vbox", has=good).first
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(SHOTS / "lab_rating.png"))
    good.click()
    csv_path = out / "ratings.csv"
    for _ in range(100):
        if csv_path.is_file() and len(list(csv.DictReader(csv_path.open()))) == 1:
            break
        page.wait_for_timeout(100)
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["rater"], r["rating"], r["label"]) for r in rows] == [("lab-test", "4", "good")]
    widget.locator("input[type='text']").first.click()
    page.keyboard.press("2")  # the keyboard shortcut for "2 poor"
    for _ in range(100):
        rows = list(csv.DictReader(csv_path.open()))
        if len(rows) == 2:
            break
        page.wait_for_timeout(100)
    assert [r["rating"] for r in rows] == ["4", "2"]
    assert "2 of" in widget.locator(".widget-html-content").last.inner_text()


def test_the_checkout_is_unchanged_after_both_notebooks_ran(lab):
    """Running 00 at its defaults and 02 with an edited, saved parameters cell (the tests above) changed no tracked
    file and left no untracked one: saves went to working copies, outputs under out/ (git-ignored)."""
    assert checkout_state() == lab["before"]
