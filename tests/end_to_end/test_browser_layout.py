"""Nothing spills at 1280 px: notebooks 01-04 in JupyterLab at 1280x900 with the file browser open; from the DOM, no
output area scrolls sideways and no visible output text is under 10 px."""

from __future__ import annotations

import pytest

from jupyter_browser import (ARTIFACTS, LAYOUT_PROBLEMS, jupyterlab,  # noqa: F401 - jupyterlab: the fixture
                             run_notebook, small_calibration_notebook)


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
    small_calibration_notebook(tmp_path / "notebooks")
    ARTIFACTS.mkdir(exist_ok=True)
    problems = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(**chromium)
        try:
            for notebook in ("01_quickstart.ipynb", "02_strength_explorer.ipynb", "03_strength_calibration.ipynb",
                             "04_report.ipynb"):
                page, _ = run_notebook(browser, url, token, notebook, (1280, 900), workspace=notebook[:2])
                page.wait_for_function(
                    "() => { const node = window.jupyterapp.shell.currentWidget.node;"
                    " const prompts = Array.from(node.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))"
                    ".map(p => p.innerText); return prompts.length && prompts.every(p => /\\[\\d+\\]/.test(p)); }",
                    timeout=400_000)
                page.wait_for_timeout(1500)
                assert page.locator(".jp-FileBrowser").is_visible()
                problems[notebook] = page.evaluate(LAYOUT_PROBLEMS)
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
