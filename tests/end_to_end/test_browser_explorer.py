"""The strength explorer in a real browser: ``02_strength_explorer.ipynb`` in JupyterLab, driven by chromium: drags
the strength slider, clicks Generate and checks that the executed-steps label and the displayed image changed
(``explorer_before.png``, ``explorer_after.png``)."""

from __future__ import annotations

import time

import pytest

from jupyter_browser import ARTIFACTS, jupyterlab, run_notebook  # noqa: F401 - jupyterlab: the fixture


@pytest.mark.slow
def test_explorer_runs_in_jupyterlab_in_chromium(jupyterlab, chromium, capsys):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, token, tmp_path = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    started = time.perf_counter()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(**chromium)
        try:
            page, external = run_notebook(browser, url, token, "02_strength_explorer.ipynb", (1300, 1500))

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
