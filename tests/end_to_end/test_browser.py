"""The widget apps in a real browser: JupyterLab on 127.0.0.1, Debian's chromium driven by Playwright.

Each test serves a copy of ``notebooks/`` with JupyterLab and runs a notebook in headless chromium
(``executable_path``, no browser download):

* ``02_strength_explorer.ipynb``: drags the strength slider, clicks Generate and checks that the executed-steps label
  and the displayed image changed (``explorer_before.png``, ``explorer_after.png``);
* ``03_strength_calibration.ipynb`` on a small calibration: selects a band in the reference-table widget, checks the
  grid's pixels and column headers changed, presses a cell's **details** and checks the detail shows that cell's
  row (``calibration_widget_first_band.png``, ``calibration_widget_last_band.png``, ``calibration_widget_detail.png``).

Screenshots are saved to ``test-artifacts/``.

Chromium comes from Debian (``apt-get install -y chromium``; ``.ci/run`` installs it). Without it the test
is skipped locally and fails under CI.
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
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab serving a copy of notebooks/ on 127.0.0.1; yields (url, token); stops it afterwards."""
    pytest.importorskip("jupyterlab")
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root)
    port, token = _free_port(), secrets.token_hex(16)
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


def _run_notebook(browser, url: str, token: str, notebook: str, viewport: tuple[int, int], *, workspace: str = ""):
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


@pytest.mark.slow
def test_explorer_runs_in_jupyterlab_in_chromium(jupyterlab, chromium, capsys):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, token, tmp_path = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    started = time.perf_counter()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(**chromium)
        try:
            page, external = _run_notebook(browser, url, token, "02_strength_explorer.ipynb", (1300, 1500))

            image = page.locator("img.i2i-image")
            image.wait_for(state="visible", timeout=240_000)
            page.wait_for_function("() => { const s = document.querySelector('.i2i-status');"
                                   " return s && /generated|recalled/.test(s.textContent); }", timeout=240_000)
            image.scroll_into_view_if_needed()
            label = page.locator(".i2i-steps-label")
            label_before = label.inner_text()
            source_before = image.get_attribute("src")
            pixels_before = image.screenshot()
            page.screenshot(path=str(ARTIFACTS / "explorer_before.png"))

            # Drag the strength slider's handle to the right: the label must follow before any generation.
            handle = page.locator(".i2i-strength .noUi-handle")
            handle.scroll_into_view_if_needed()
            box = handle.bounding_box()
            track = page.locator(".i2i-strength .noUi-target").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(track["x"] + track["width"] * 0.85, box["y"] + box["height"] / 2, steps=12)
            page.mouse.up()
            page.wait_for_function(
                "(before) => document.querySelector('.i2i-steps-label').innerText !== before", arg=label_before,
                timeout=30_000)
            label_after = label.inner_text()

            page.locator("button.i2i-generate").click()
            page.wait_for_function(
                "(before) => { const img = document.querySelector('img.i2i-image');"
                " return img && img.getAttribute('src') !== before; }", arg=source_before, timeout=120_000)
            page.wait_for_function("() => /generated/.test(document.querySelector('.i2i-status').textContent)"
                                   " && !document.querySelector('button.i2i-generate').disabled", timeout=120_000)
            image.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            pixels_after = image.screenshot()
            status = page.locator(".i2i-status").inner_text()
            page.locator(".i2i-strength").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "explorer_after.png"))
        finally:
            browser.close()
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n[browser] JupyterLab + chromium explorer test: {seconds:.1f} s; label {label_before!r} -> "
              f"{label_after!r}; status {status!r}; screenshots in {ARTIFACTS}")
    assert label_after != label_before and "executes" in label_after
    assert pixels_after != pixels_before
    assert "generated" in status
    from img2img_lab.store.run_store import RunStore

    table = RunStore.open(tmp_path / "notebooks" / "runs" / "explorer").read_table()  # next to the notebook
    assert len(table) == 2 and table["strength"].max() > 0.5
    assert not external, f"the page requested outside hosts: {external[:5]}"


#: Notebook 03's parameters for a small calibration (as tests/test_notebooks.py runs it).
SMALL_CALIBRATION = ('OVERRIDES = {"images": ["../sources/red_circle_on_blue.png", "../sources/green_triangle_on_yellow.png"],'
                     ' "seeds": [0, 1], "strengths": [0.0, 0.5, 1.0], "guidance_scales": [2.0, 3.0],'
                     ' "refine_rounds": 1, "n_resamples": 500}')


def _small_calibration_notebook(root: Path) -> None:
    import nbformat

    path = root / "03_strength_calibration.ipynb"
    notebook = nbformat.read(path, as_version=4)
    cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    assert "OVERRIDES = {}" in cell.source
    cell.source = cell.source.replace("OVERRIDES = {}", SMALL_CALIBRATION)
    nbformat.write(notebook, path)


def _column_headers(page) -> str:
    return page.evaluate("() => Array.from(document.querySelectorAll('.i2i-grid .i2i-column-header'))"
                         ".map(h => h.innerText).join(' | ')")


@pytest.mark.slow
def test_reference_table_widget_drives_the_grid_in_jupyterlab(jupyterlab, chromium, capsys):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, token, tmp_path = jupyterlab
    _small_calibration_notebook(tmp_path / "notebooks")
    ARTIFACTS.mkdir(exist_ok=True)
    started = time.perf_counter()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(**chromium)
        try:
            page, external = _run_notebook(browser, url, token, "03_strength_calibration.ipynb", (1400, 1600))
            bands = page.locator(".i2i-band button")
            bands.first.wait_for(state="visible", timeout=300_000)
            grid = page.locator(".i2i-grid")
            page.wait_for_function("() => document.querySelectorAll('.i2i-grid img').length > 2", timeout=60_000)
            page.locator(".i2i-reference-table").scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            headers_before, pixels_before = _column_headers(page), grid.screenshot()
            page.screenshot(path=str(ARTIFACTS / "calibration_widget_first_band.png"))

            band_count = bands.count()
            bands.nth(band_count - 1).click()  # the last band: the highest strengths
            page.wait_for_function("(before) => Array.from(document.querySelectorAll('.i2i-grid .i2i-column-header'))"
                                   ".map(h => h.innerText).join(' | ') !== before", arg=headers_before, timeout=60_000)
            page.wait_for_timeout(800)
            headers_after, pixels_after = _column_headers(page), grid.screenshot()
            page.locator(".i2i-reference-table").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "calibration_widget_last_band.png"))

            cell_button = page.locator("button.i2i-cell").last
            clicked = cell_button.get_attribute("title")
            cell_button.click()
            page.wait_for_function("() => /cell_key/.test(document.querySelector('.i2i-detail-row').innerText)",
                                   timeout=60_000)
            detail = page.evaluate("() => Object.fromEntries(Array.from(document.querySelectorAll('.i2i-detail-row tr'))"
                                   ".map(tr => [tr.querySelector('th').innerText, tr.querySelector('td').innerText]))")
            page.locator(".i2i-detail-image").scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "calibration_widget_detail.png"))
        finally:
            browser.close()
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n[browser] notebook 03 reference-table widget: {seconds:.1f} s; {band_count} bands; headers "
              f"{headers_before!r} -> {headers_after!r}; clicked {clicked!r} -> cell {detail.get('cell_key', '')[:12]}")
    assert band_count >= 2 and headers_after != headers_before and "CI" in headers_after
    assert pixels_after != pixels_before
    from img2img_lab.store.run_store import RunStore

    table = RunStore.open(tmp_path / "notebooks" / "runs" / "calibrate").read_table()
    row = table[table["cell_key"] == detail["cell_key"]]
    assert len(row) == 1, detail
    seed, strength = clicked.split(":")[0].replace("seed ", "").split(" · strength ")
    assert int(row["seed"].iloc[0]) == int(seed) and float(row["strength"].iloc[0]) == float(strength)
    assert f"strength {float(strength):g}" in headers_after and float(detail["strength"]) == float(strength)
    assert not external, f"the page requested outside hosts: {external[:5]}"


@pytest.mark.slow
def test_mode_table_widget_switches_mode_by_goal_in_jupyterlab(jupyterlab, chromium, capsys):
    """Issue #31: a mode calibration's explorer in JupyterLab — picking a mode or a goal switches the grid's mode."""
    sync_api = pytest.importorskip("playwright.sync_api")
    import nbformat
    import pandas as pd

    from img2img_lab.cli.main import main
    from conftest import SMALL_MODES_CONFIG as CONFIG

    url, token, tmp_path = jupyterlab
    root = tmp_path / "notebooks"
    (root / "modes-small.yaml").write_text(CONFIG.format(root=REPO))
    assert main(["calibrate", str(root / "modes-small.yaml"), "--out", str(root / "runs" / "modes"),
                 "--no-progress"]) == 0
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from img2img_lab.widgets.grid_explorer import GridExplorer\nexplorer = GridExplorer('runs/modes')\nexplorer.ui")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, root / "mode_table.ipynb")
    table = pd.read_csv(root / "runs" / "modes" / "calibration" / "modes.csv")
    ARTIFACTS.mkdir(exist_ok=True)
    active = "() => document.querySelector('.i2i-mode button.mod-active').innerText.trim()"
    sources = "() => Array.from(document.querySelectorAll('.i2i-grid img')).map(i => i.src).join('|')"
    seen = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(**chromium)
        try:
            page, external = _run_notebook(browser, url, token, "mode_table.ipynb", (1400, 1600))
            page.locator(".i2i-goal button").first.wait_for(state="visible", timeout=300_000)
            page.wait_for_function("() => document.querySelectorAll('.i2i-grid img').length > 2", timeout=60_000)
            first_mode, first_grid = page.evaluate(active), page.evaluate(sources)
            page.screenshot(path=str(ARTIFACTS / "mode_widget_first.png"))
            other = "inpaint" if first_mode == "img2img" else "img2img"
            page.locator(".i2i-mode button", has_text=other).click()
            page.wait_for_function(f"(before) => ({sources})() !== before", arg=first_grid, timeout=60_000)
            seen["mode button"] = page.evaluate(active)
            for goal, label in (("follow", "follow the prompt"), ("both", "both at once"), ("keep", "keep the subject")):
                page.locator(".i2i-goal button", has_text=label).click()
                part = table[table.goal == goal]
                expected = (part[part.best] if part.best.any() else part).iloc[0]["mode"]
                page.wait_for_function(f"(want) => ({active})() === want", arg=expected, timeout=60_000)
                seen[goal] = page.evaluate(active)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "mode_widget_after_goals.png"))
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\n[browser] mode table widget: started in {first_mode}; active mode after each click {seen}")
    assert seen["mode button"] == other
    assert not external, f"the page requested outside hosts: {external[:5]}"


#: Every output area of the notebook: a JSON list of the ones that scroll sideways themselves, and of visible text
#: in them under 10 px (computed font size), each named by its cell and a sample of its text.
_LAYOUT_PROBLEMS = """() => {
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


@pytest.mark.slow
def test_notebooks_fit_1280_px_and_their_text_is_readable(jupyterlab, chromium, capsys):
    """Notebooks 01–04 in JupyterLab at 1280×900 with the file browser open: no output area scrolls sideways (a
    wide table or grid scrolls inside its own box), and no visible text in an output is under 10 px."""
    sync_api = pytest.importorskip("playwright.sync_api")
    import json

    url, token, tmp_path = jupyterlab
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))  # every cell laid out
    _small_calibration_notebook(tmp_path / "notebooks")
    ARTIFACTS.mkdir(exist_ok=True)
    problems = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(**chromium)
        try:
            for notebook in ("01_quickstart.ipynb", "02_strength_explorer.ipynb", "03_strength_calibration.ipynb",
                             "04_report.ipynb"):
                page, _ = _run_notebook(browser, url, token, notebook, (1280, 900), workspace=notebook[:2])
                page.wait_for_function(
                    "() => { const node = window.jupyterapp.shell.currentWidget.node;"
                    " const prompts = Array.from(node.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))"
                    ".map(p => p.innerText); return prompts.length && prompts.every(p => /\\[\\d+\\]/.test(p)); }",
                    timeout=400_000)
                page.wait_for_timeout(1500)
                assert page.locator(".jp-FileBrowser").is_visible()
                problems[notebook] = page.evaluate(_LAYOUT_PROBLEMS)
                page.screenshot(path=str(ARTIFACTS / f"fit_1280_{notebook.split('_')[0]}.png"), full_page=False)
                page.close()
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\n[browser] 1280x900: {json.dumps(problems, indent=1)[:3000]}")
    for notebook, found in problems.items():
        assert found["cells"] > 2, notebook
        assert found["wide"] == [], (notebook, found["wide"])
        assert found["small"] == [], (notebook, found["small"][:20])
