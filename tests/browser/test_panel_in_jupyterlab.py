"""The edit panel as a person uses it: JupyterLab in headless Chromium, driven by Playwright.

Starts JupyterLab on 127.0.0.1 (a free port, a random token, autosave off so the notebook
file is never rewritten), opens ``NOTEBOOK``, runs all cells from the Run menu, waits for
the panel's edited image, moves a slider with the keyboard and checks that the displayed
image's pixels change, then moves a second slider and checks that they change again.
Screenshots and the server log go to ``test-artifacts/browser/``.  The server, its kernels
and the browser are stopped whatever happens.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` Python client
(``pip install playwright``; never ``playwright install``: the system Chromium is used).
The test is skipped when either is missing, unless ``NOISECLR_REQUIRE_BROWSER=1`` (CI sets
it), which turns the skip into a failure.

To test another notebook that displays an ``EditPanel`` (e.g. the composing-edits tutorial),
change ``NOTEBOOK``; the test only relies on the panel's CSS classes (``noiseclr-current``,
``noiseclr-slider``, ``noiseclr-status``) and on the notebook displaying one panel.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
#: The notebook to open, relative to the repository root (the server's root folder).
NOTEBOOK = "tests/browser/panel_tiny.ipynb"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SERVER_START_S = 90  # seconds for JupyterLab to answer
FIRST_IMAGE_S = 150  # kernel start + imports + the notebook's cells + the first render
RENDER_S = 60  # one re-render after a slider move


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does this)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python client is missing: pip install playwright (in the dev extra)"
    return None


_REASON = _missing()
if _REASON and os.environ.get("NOISECLR_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"NOISECLR_REQUIRE_BROWSER=1 but {_REASON}")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"browser test skipped: {_REASON}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and everything it started (kernels run in their own sessions)."""
    import psutil  # a dependency of ipykernel, so present wherever JupyterLab is

    try:
        family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # lets the server shut its kernels down cleanly
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    for p in family:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving the repository; yields (base_url, token)."""
    port, token = _free_port(), secrets.token_hex(16)
    settings = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               IPYTHONDIR=str(tmp_path / "ipython"), PYTHONUNBUFFERED="1")
    env.setdefault("NOISECLR_TEST_THREADS", "1")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO}",
               f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
               f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log_path = tmp_path / "jupyterlab.log"
    notebook_before = (REPO / NOTEBOOK).read_bytes()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer in {SERVER_START_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        _stop(proc)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / "jupyterlab.log")
    assert (REPO / NOTEBOOK).read_bytes() == notebook_before, f"{NOTEBOOK} was modified by the test"


_PIXELS_JS = """img => {
    if (!img.complete || !img.naturalWidth) return null;
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    canvas.getContext('2d').drawImage(img, 0, 0);
    return {src: img.src, png: canvas.toDataURL('image/png')};
}"""


def _pixels(image) -> tuple[str, np.ndarray] | None:
    """(src, RGB array) of the displayed <img>, as the browser decoded it; None while it has none."""
    shown = image.evaluate(_PIXELS_JS)
    if shown is None:
        return None
    data = base64.b64decode(shown["png"].split(",", 1)[1])
    return shown["src"], np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _wait_for_change(page, image, before: np.ndarray | None, timeout_s: float, what: str):
    """Poll until the displayed image exists and its pixels differ from ``before``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shown = _pixels(image)
        if shown is not None and (before is None or shown[1].shape != before.shape or (shown[1] != before).any()):
            return shown[1]
        page.wait_for_timeout(250)
    status = page.locator(".noiseclr-status").first.inner_text() if page.locator(".noiseclr-status").count() else "?"
    raise AssertionError(f"{what}: the displayed image did not change within {timeout_s} s (panel status: {status!r})")


def _move_slider(page, index: int, presses: int) -> str:
    """Focus slider ``index``'s handle, press ArrowRight ``presses`` times; returns its readout."""
    slider = page.locator(".noiseclr-slider").nth(index)
    slider.scroll_into_view_if_needed()
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(presses):
        handle.press("ArrowRight")
        page.wait_for_timeout(50)
    return slider.locator(".widget-readout").first.inner_text()


def test_sliders_change_the_displayed_image_in_jupyterlab(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, token = jupyterlab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1400})
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", wait_until="domcontentloaded", timeout=90_000)
            page.locator(".jp-NotebookPanel").first.wait_for(state="visible", timeout=90_000)
            # the kernel must be up before "Run All Cells" (else the run waits on a kernel picker)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=90_000)
            page.screenshot(path=ARTIFACTS / "1-opened.png")

            page.locator("#jp-MainMenu").get_by_text("Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            image = page.locator("img.noiseclr-current").first
            image.wait_for(state="attached", timeout=FIRST_IMAGE_S * 1000)
            image.scroll_into_view_if_needed()
            first = _wait_for_change(page, image, None, FIRST_IMAGE_S, "first render")
            page.screenshot(path=ARTIFACTS / "2-panel.png")
            page.locator(".noiseclr-panel").first.screenshot(path=ARTIFACTS / "2-panel-only.png")
            assert page.locator(".noiseclr-slider").count() == 5  # 3 face + 2 cat directions

            readout = _move_slider(page, 0, presses=20)
            assert readout not in ("0.00", "0.0"), f"the first slider did not move (readout {readout!r})"
            second = _wait_for_change(page, image, first, RENDER_S, "first slider")
            assert second.shape == first.shape and (second != first).mean() > 0.01
            page.screenshot(path=ARTIFACTS / "3-first-slider.png")

            readout = _move_slider(page, 3, presses=20)  # a direction of the other set
            assert readout not in ("0.00", "0.0"), f"the second slider did not move (readout {readout!r})"
            third = _wait_for_change(page, image, second, RENDER_S, "second slider")
            assert (third != second).mean() > 0.01
            page.screenshot(path=ARTIFACTS / "4-second-slider.png")
        except BaseException:
            page.screenshot(path=ARTIFACTS / "failure.png")
            raise
        finally:
            context.close()
    print(f"\nbrowser test: {time.monotonic() - started:.1f} s from opening the page to the second change")
