"""End to end: the course's JupyterLab, started the way `make lab` starts it, in a real browser.

Headless Chromium from Debian's ``chromium`` package, driven by Playwright from PyPI (no
browser download). The lab serves a temporary copy of lessons/01_softmax, so the learner files
in the repository are never touched. The test types a wrong ``softmax`` into the exercise cell,
runs the notebook, reads the named mistake and the hint in the check's box; types a right one,
sees the pass line; presses nbgrader's Validate button; and checks that no news pop-up shows.
Screenshots go to the test's temporary directory.

    make test-browser          # or: pytest -m browser -s   (prints where the screenshots are)

Skipped (with the reason) when chromium or Playwright is missing; CI installs chromium
(.ci/run).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tantra_lib.lab import NOTIFICATION_PLUGIN
from tantra_lib.lessons import LESSONS

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]')")
expect, sync_playwright = sync_api.expect, sync_api.sync_playwright

pytestmark = pytest.mark.browser

LESSON = "01_softmax"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000  # generous: CI machines are slow and shared; every wait returns as soon as it can

WRONG_SOFTMAX = (  # normalises over the wrong axis: a mistake the check names
    "def softmax(x, dim=-1):\n"
    "    e = (x - x.amax(dim=0, keepdim=True)).exp()\n"
    "    return e / e.sum(dim=0, keepdim=True)\n"
)
RIGHT_SOFTMAX = (
    "def softmax(x, dim=-1):\n"
    "    shifted = x - x.amax(dim=dim, keepdim=True)\n"
    "    e = shifted.exp()\n"
    "    return e / e.sum(dim=dim, keepdim=True)\n"
)


def _chromium() -> str | None:
    for candidate in (os.environ.get("TANTRA_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Lab:
    def __init__(self, url: str, token: str, root: Path, log: Path):
        self.url, self.token, self.root, self.log = url, token, root, log

    def get_json(self, path: str):
        req = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read().decode())


@pytest.fixture
def lab(tmp_path):
    """JupyterLab started through tantra_lib.lab (what `make lab` runs) on a copy of the lesson."""
    source = LESSONS / LESSON / f"{LESSON}.ipynb"
    if not source.exists():
        pytest.skip(f"{source} does not exist yet (make lessons)")
    root = tmp_path / "lessons"
    shutil.copytree(LESSONS / LESSON, root / LESSON, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "lab.log"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    cmd = [sys.executable, "-m", "tantra_lib.lab", "--no-browser", "--port", str(port), "--root", str(root), "--",
           f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
           # keep the test's lab state out of the developer's ~/.jupyter (and theirs out of the test)
           f"--LabApp.user_settings_dir={tmp_path / 'user-settings'}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, root, log)
    try:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                server.get_json("/api/status")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on port {port}:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.25)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def page(lab, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`apt-get install chromium`; .ci/run does it in CI)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def _wait_kernel_idle(page) -> None:
    page.wait_for_function(
        """() => {
            const name = document.querySelector(".jp-Toolbar-item[data-jp-item-name='kernelName']");
            const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
            return name && !name.textContent.includes('No Kernel')
                && status && status.getAttribute('data-status') === 'idle';
        }""",
        timeout=TIMEOUT_MS,
    )


def _replace_cell(page, starts_with: str, code: str) -> None:
    """Select the code cell whose source contains `starts_with` and replace its text by `code`."""
    cell = page.locator(".jp-CodeCell").filter(has=page.locator(".cm-content", has_text=starts_with))
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    # insert_text types the whole text at once (no key-by-key auto-indent or bracket closing)
    page.keyboard.insert_text(code)
    page.keyboard.press("Escape")
    assert editor.inner_text().strip() == code.strip()


def _run_all(page) -> None:
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-item[data-command='runmenu:run-all']")


def _shot(page, locator, path: Path) -> None:
    locator.scroll_into_view_if_needed()
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")


def test_lab_shows_hint_then_pass_line(lab, page, tmp_path):
    original = _digest(LESSONS / LESSON / f"{LESSON}.ipynb")

    # The lab's effective settings: no news pop-up, no update check.
    settings = lab.get_json(f"/lab/api/settings/{NOTIFICATION_PLUGIN}")
    props = settings["schema"]["properties"]
    assert props["fetchNews"]["default"] == "false" and props["checkForUpdates"]["default"] is False
    assert "fetchNews" not in settings.get("settings", {})

    page.goto(f"{lab.url}/lab/tree/{LESSON}/{LESSON}.ipynb?token={lab.token}")
    page.wait_for_selector(".jp-CodeCell .cm-content >> text=def softmax(x, dim=-1):")
    _wait_kernel_idle(page)

    # 1) a wrong softmax: the check's box names the mistake and gives the hint
    _replace_cell(page, "def softmax(x, dim=-1):", WRONG_SOFTMAX)
    _run_all(page)
    box = page.locator(".tantra-check[data-exercise='softmax']")
    expect(box).to_contain_text("normalised along dim -2 instead of dim=-1", timeout=TIMEOUT_MS)
    expect(box).to_contain_text("Hint:")
    expect(box).to_contain_text("keepdim=True")
    expect(box).to_have_class(re.compile(r"\btantra-fail\b"))
    assert box.locator("details summary", has_text="show details").count() == 1
    # not a wall of traceback: the error under the box is one short line (nbgrader still sees an error)
    check_cell = page.locator(".jp-CodeCell").filter(has=box)
    error = check_cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    expect(error).to_have_count(1)
    expect(error).to_contain_text("CheckFailed")
    assert len(error.text_content().strip().splitlines()) <= 2, error.text_content()
    _shot(page, box, tmp_path / "1-wrong-softmax.png")

    # 2) a right softmax: the one-line pass
    _replace_cell(page, "def softmax(x, dim=-1):", RIGHT_SOFTMAX)
    _run_all(page)
    passed = page.locator(".tantra-check.tantra-pass[data-exercise='softmax']")
    expect(passed).to_have_text("✓ softmax passed", timeout=TIMEOUT_MS)
    assert page.locator(".tantra-check.tantra-fail[data-exercise='softmax']").count() == 0
    # one short line and nothing else (no echoed `Result(...)`)
    expect(page.locator(".jp-CodeCell").filter(has=passed).locator(".jp-OutputArea-output")).to_have_count(1)
    _shot(page, passed, tmp_path / "2-right-softmax.png")

    # 3) nbgrader's Validate button (saves, then validates the copy): softmax passes, the others do not yet
    page.locator(".jp-NotebookPanel-toolbar").get_by_text("Validate", exact=True).click()
    dialog = page.locator(".jp-Dialog-content")
    dialog.wait_for()
    page.wait_for_function("() => !document.querySelector('.jp-Dialog-content')?.textContent.includes('Validating')",
                           timeout=TIMEOUT_MS)
    report = dialog.text_content()
    _shot(page, dialog, tmp_path / "3-validate.png")
    assert "check_log_softmax(log_softmax)" in report and "check_masked_softmax(masked_softmax)" in report, report
    assert "check_softmax(softmax)" not in report, report

    # no news / announcement notification at any point
    assert page.get_by_text("official Jupyter news").count() == 0
    assert page.locator(".jp-Notification-Toast").count() == 0
    saved = json.loads((lab.root / LESSON / f"{LESSON}.ipynb").read_text())
    assert any("shifted = x - x.amax(dim=dim, keepdim=True)" in "".join(c["source"]) for c in saved["cells"])
    assert _digest(LESSONS / LESSON / f"{LESSON}.ipynb") == original, "the repository's lesson was modified"
