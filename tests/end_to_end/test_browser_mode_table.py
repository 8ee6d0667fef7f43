"""The mode-table widget in a real browser: switching the goal switches the recommended mode."""

from __future__ import annotations

import pytest

from jupyter_browser import ARTIFACTS, REPO, jupyterlab, run_notebook  # noqa: F401 - jupyterlab: the fixture


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
            page, external = run_notebook(browser, url, token, "mode_table.ipynb", (1400, 1600))
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
