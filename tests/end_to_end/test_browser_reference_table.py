"""The reference-table widget in a real browser: ``03_strength_calibration.ipynb`` on a small calibration selects a
band, checks the grid's pixels and column headers changed, presses a cell's **details** and checks the detail shows
that cell's row (``calibration_widget_first_band.png``, ``..._last_band.png``, ``..._detail.png``)."""

from __future__ import annotations

import time

import pytest

from jupyter_browser import (ARTIFACTS, column_headers, jupyterlab,  # noqa: F401 - jupyterlab: the fixture
                             run_notebook, small_calibration_notebook)


BROKEN_IMAGES = """() => {
    const shown = Array.from(document.images).filter(i => i.offsetParent !== null);
    const detail = document.querySelector('.i2i-detail-image');
    return {broken: shown.filter(i => !i.complete || i.naturalWidth === 0).length,
            grid: shown.filter(i => i.closest('.i2i-grid') && i.naturalWidth > 0).length,
            detail_shown: !!(detail && detail.offsetParent !== null && detail.naturalWidth > 0)};
}"""


@pytest.mark.slow
def test_reference_table_widget_drives_the_grid_in_jupyterlab(jupyterlab, chromium, capsys):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, token, tmp_path = jupyterlab
    small_calibration_notebook(tmp_path / "notebooks")
    ARTIFACTS.mkdir(exist_ok=True)
    started = time.perf_counter()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(**chromium)
        try:
            page, external = run_notebook(browser, url, token, "03_strength_calibration.ipynb", (1400, 1600))
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
        finally:
            browser.close()
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
