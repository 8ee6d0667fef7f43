"""The notebooks in a real browser: JupyterLab on 127.0.0.1 driven by Debian's chromium (``jupyter_browser.py``),
one server and one browser for the module, each notebook run once.

* Nothing spills at 1280 px: notebooks 01-04 at 1280x900 with the file browser open; from the DOM, no output area
  scrolls sideways and no visible output text is under 10 px.
* The strength explorer (notebook 02, on the page the layout test read): drags the strength slider, clicks Generate
  and checks that the executed-steps label and the displayed image changed (``explorer_before.png``,
  ``explorer_after.png``).
* The reference-table widget (notebook 03 on a small calibration, on the page the layout test read): selects a band,
  checks the grid's pixels and column headers changed, presses a cell's **details** and checks the detail shows that
  cell's row (``calibration_widget_first_band.png``, ``..._last_band.png``, ``..._detail.png``).
* The mode-table widget: switching the goal switches the recommended mode.
"""

from __future__ import annotations

import json
import time

import pytest

from jupyter_browser import (ARTIFACTS, LAYOUT_PROBLEMS, REPO, browser, column_headers,  # noqa: F401 - fixtures
                             executed, jupyterlab, run_notebook)


@pytest.mark.slow
def test_notebooks_fit_1280_px_and_their_text_is_readable(executed, capsys):
    """Notebooks 01–04 in JupyterLab at 1280×900 with the file browser open: no output area scrolls sideways (a
    wide table or grid scrolls inside its own box), and no visible text in an output is under 10 px."""
    problems = {}
    for notebook in ("01_quickstart.ipynb", "02_strength_explorer.ipynb", "03_strength_calibration.ipynb",
                     "04_report.ipynb"):
        page, _ = executed(notebook)
        page.wait_for_timeout(1500)
        assert page.locator(".jp-FileBrowser").is_visible()
        problems[notebook] = page.evaluate(LAYOUT_PROBLEMS)
        page.screenshot(path=str(ARTIFACTS / f"fit_1280_{notebook.split('_')[0]}.png"), full_page=False)
    with capsys.disabled():
        print(f"\n[browser] 1280x900: {json.dumps(problems, indent=1)[:3000]}")
    for notebook, found in problems.items():
        assert found["cells"] > 2, notebook
        assert found["wide"] == [], (notebook, found["wide"])
        assert found["small"] == [], (notebook, found["small"][:20])


@pytest.mark.slow
def test_explorer_runs_in_jupyterlab_in_chromium(jupyterlab, executed, capsys):
    _, _, tmp_path = jupyterlab
    started = time.perf_counter()
    page, external = executed("02_strength_explorer.ipynb", viewport=(1300, 1500))
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


BROKEN_IMAGES = """() => {
    const shown = Array.from(document.images).filter(i => i.offsetParent !== null);
    const detail = document.querySelector('.i2i-detail-image');
    return {broken: shown.filter(i => !i.complete || i.naturalWidth === 0).length,
            grid: shown.filter(i => i.closest('.i2i-grid') && i.naturalWidth > 0).length,
            detail_shown: !!(detail && detail.offsetParent !== null && detail.naturalWidth > 0)};
}"""


@pytest.mark.slow
def test_reference_table_widget_drives_the_grid_in_jupyterlab(jupyterlab, executed, capsys):
    _, _, tmp_path = jupyterlab
    started = time.perf_counter()
    page, external = executed("03_strength_calibration.ipynb", viewport=(1400, 1600))
    bands = page.locator(".i2i-band button")
    bands.first.wait_for(state="visible", timeout=300_000)
    grid = page.locator(".i2i-grid")
    page.wait_for_function("() => document.querySelectorAll('.i2i-grid img').length > 2", timeout=60_000)
    page.locator(".i2i-reference-table").scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    headers_before, pixels_before = column_headers(page), grid.screenshot()
    # the grid's pictures inside the widget all loaded, and no empty picture draws a broken-image icon
    # (the detail's image stays hidden until a cell is opened)
    images_before = page.evaluate(BROKEN_IMAGES)
    page.screenshot(path=str(ARTIFACTS / "calibration_widget_first_band.png"))

    band_count = bands.count()
    bands.nth(band_count - 1).click()  # the last band: the highest strengths
    page.wait_for_function("(before) => Array.from(document.querySelectorAll('.i2i-grid .i2i-column-header'))"
                           ".map(h => h.innerText).join(' | ') !== before", arg=headers_before, timeout=60_000)
    page.wait_for_timeout(800)
    headers_after, pixels_after = column_headers(page), grid.screenshot()
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
    images_after = page.evaluate(BROKEN_IMAGES)
    page.screenshot(path=str(ARTIFACTS / "calibration_widget_detail.png"))
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n[browser] notebook 03 reference-table widget: {seconds:.1f} s; {band_count} bands; headers "
              f"{headers_before!r} -> {headers_after!r}; clicked {clicked!r} -> cell {detail.get('cell_key', '')[:12]}")
    assert images_before["broken"] == 0 and images_before["grid"] > 2 and not images_before["detail_shown"], \
        images_before
    assert images_after["broken"] == 0 and images_after["detail_shown"], images_after
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
def test_mode_table_widget_switches_mode_by_goal_in_jupyterlab(jupyterlab, browser, capsys):
    """Issue #31: a mode calibration's explorer in JupyterLab — picking a mode or a goal switches the grid's mode."""
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
    page.close()
    with capsys.disabled():
        print(f"\n[browser] mode table widget: started in {first_mode}; active mode after each click {seen}")
    assert seen["mode button"] == other
    assert not external, f"the page requested outside hosts: {external[:5]}"
