"""What the browser tests (``test_browser.py``) share: one JupyterLab on 127.0.0.1 serving a copy of ``notebooks/``
with notebook 03 set to a small calibration (the :func:`jupyterlab` fixture), one Debian chromium driven by
Playwright (``executable_path``, no browser download; the :func:`browser` fixture), and each notebook opened and run
once (:func:`executed`): the layout test reads every notebook's outputs, and the widget tests drive the explorer and
the reference table on the same pages. Screenshots go to ``test-artifacts/``.

Chromium comes from Debian (``apt-get install -y chromium``; ``.ci/run`` installs it). Without it the tests are
skipped locally and fail under CI (the ``chromium`` fixture in ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """JupyterLab serving a copy of notebooks/ (03 on a small calibration; every cell laid out, no windowing) on
    127.0.0.1; yields (url, token, folder); stops it afterwards."""
    pytest.importorskip("jupyterlab")
    import json

    tmp_path = tmp_path_factory.mktemp("jupyterlab")
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root)
    small_calibration_notebook(root)
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"), "IPYTHONDIR": str(tmp_path / "ipython"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces")}
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"] + (["--allow-root"] if os.geteuid() == 0 else []),
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text())
                time.sleep(0.5)
        yield url, token, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(chromium):
    """One chromium for the module's tests (Playwright's sync API), closed afterwards."""
    sync_api = pytest.importorskip("playwright.sync_api")
    playwright = sync_api.sync_playwright().start()
    try:
        launched = playwright.chromium.launch(**chromium)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="module")
def executed(jupyterlab, browser):
    """``executed(notebook, viewport=None)``: the notebook's page (opened at 1280x900 in its own workspace) once every
    cell ran, brought to the front (resized to ``viewport``), and the list of requests it made to other hosts; each
    notebook is opened and run once per module. Screenshots go to ARTIFACTS."""
    url, token, _ = jupyterlab
    pages: dict[str, tuple] = {}
    ARTIFACTS.mkdir(exist_ok=True)

    def page_of(notebook: str, viewport: tuple[int, int] | None = None):
        if notebook not in pages:
            page, external = run_notebook(browser, url, token, notebook, (1280, 900), workspace=notebook[:2])
            page.wait_for_function(
                "() => { const node = window.jupyterapp.shell.currentWidget.node;"
                " const prompts = Array.from(node.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))"
                ".map(p => p.innerText); return prompts.length && prompts.every(p => /\\[\\d+\\]/.test(p)); }",
                timeout=400_000)
            pages[notebook] = page, external
        page, external = pages[notebook]
        page.bring_to_front()
        if viewport:
            page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
        return page, external

    yield page_of
    for page, _ in pages.values():
        page.close()


def run_notebook(browser, url: str, token: str, notebook: str, viewport: tuple[int, int], *, workspace: str = ""):
    """Open ``notebook`` in JupyterLab (in its own ``workspace`` if named: no other notebook is restored beside it),
    wait for its kernel, run all cells; return the page and the list that collects every request to a host other
    than 127.0.0.1."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    external = []
    page.on("request", lambda request: None if request.url.startswith(("http://127.0.0.1", "blob:", "data:"))
            else external.append(request.url))
    page.goto(f"{url}/lab/{f'workspaces/{workspace}/' if workspace else ''}tree/{notebook}?token={token}")
    page.wait_for_function(
        "() => { const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " const kernel = panel && panel.sessionContext && panel.sessionContext.session"
        " && panel.sessionContext.session.kernel; return kernel && kernel.status === 'idle'; }",
        timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    return page, external


SMALL_CALIBRATION = ('OVERRIDES = {"images": ["../sources/red_circle_on_blue.png", "../sources/green_triangle_on_yellow.png"],'
                     ' "seeds": [0, 1], "strengths": [0.0, 0.5, 1.0], "guidance_scales": [2.0, 3.0],'
                     ' "refine_rounds": 1, "n_resamples": 500}')


def small_calibration_notebook(root: Path) -> None:
    import nbformat

    path = root / "03_strength_calibration.ipynb"
    notebook = nbformat.read(path, as_version=4)
    cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    assert "OVERRIDES = {}" in cell.source
    cell.source = cell.source.replace("OVERRIDES = {}", SMALL_CALIBRATION)
    nbformat.write(notebook, path)


def column_headers(page) -> str:
    return page.evaluate("() => Array.from(document.querySelectorAll('.i2i-grid .i2i-column-header'))"
                         ".map(h => h.innerText).join(' | ')")


LAYOUT_PROBLEMS = """() => {
  const cells = Array.from(window.jupyterapp.shell.currentWidget.node.querySelectorAll('.jp-CodeCell'));
  const wide = [], small = [];
  cells.forEach((cell, index) => {
    for (const area of cell.querySelectorAll('.jp-OutputArea-output')) {
      if (area.scrollWidth > area.clientWidth + 1)
        wide.push(`cell ${index + 1}: ${area.scrollWidth} > ${area.clientWidth} px: ${area.innerText.slice(0, 60)}`);
      for (const element of area.querySelectorAll('*')) {
        const text = Array.from(element.childNodes).filter(node => node.nodeType === 3)
          .map(node => node.textContent.trim()).join('');
        if (!text || element.offsetWidth === 0 || element.closest('svg')) continue;
        const size = parseFloat(getComputedStyle(element).fontSize);
        if (size < 10) small.push(`cell ${index + 1}: ${size} px: ${text.slice(0, 40)}`);
      }
    }
  });
  return {wide, small, cells: cells.length};
}"""
