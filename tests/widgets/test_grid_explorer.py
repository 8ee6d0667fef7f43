"""The grid explorer (comparison grids of any run folder as a widget; a calibration's reference table drives it),
driven from Python; tests/test_browser.py drives it in JupyterLab through notebook 03."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ipywidgets")

from img2img_lab.errors import Img2ImgLabError  # noqa: E402
from img2img_lab.widgets.grid_explorer import GridExplorer, fit_image  # noqa: E402
from img2img_lab.store.run_store import RunStore  # noqa: E402


def _grid_images(explorer) -> list[bytes]:
    images = []

    def walk(widget):
        if type(widget).__name__ == "Image":
            images.append(bytes(widget.value))
        for child in getattr(widget, "children", ()):
            walk(child)

    walk(explorer.grid)
    return images


def _headers(explorer) -> list[str]:
    return [child.value for child in explorer.grid.children
            if type(child).__name__ == "HTML" and "i2i-column-header" in child.value]


def test_selecting_a_band_shows_its_strengths_with_their_cis(small_calibration):
    explorer = GridExplorer(small_calibration, annotate=["oracle_kept"], border="ssim")
    saved = explorer.calibration
    assert [value for _, value in explorer.guidance.options] == [2.0, 3.0] and len(explorer.band.options) >= 2
    assert "guidance_scale" not in explorer.pins  # the reference table's guidance dropdown pins it
    first_images, first_headers = _grid_images(explorer), _headers(explorer)
    first = explorer.grid_columns()
    assert first == saved.band_strengths(2.0, 0)
    explorer.band.value = len(explorer.band.options) - 1
    last = explorer.grid_columns()
    assert last == saved.band_strengths(2.0, explorer.band.value) and not set(first) & set(last)
    assert _grid_images(explorer) != first_images and _headers(explorer) != first_headers
    # each column header carries the calibration's mean and CI at that strength
    mean, low, high = saved.strength_statistics(2.0, last[0])["oracle_kept"]
    header = _headers(explorer)[0]
    assert f"strength {last[0]:g}" in header and "CI" in header and low <= mean <= high
    assert "background:#fff1b8" in explorer.band_table.value.split("</tr>")[explorer.band.value + 1]
    # the guidance dropdown re-pins the grid
    explorer.guidance.value = 3.0
    shown = explorer._shown()
    assert set(shown["guidance_scale"]) == {3.0} and explorer.band.value == 0


def test_a_cell_s_details_button_shows_its_row_its_source_and_the_difference_map(small_calibration):
    explorer = GridExplorer(small_calibration, annotate=["ssim"])
    buttons = []

    def walk(widget):
        if type(widget).__name__ == "Button" and "i2i-cell" in widget._dom_classes:
            buttons.append(widget)
        for child in getattr(widget, "children", ()):
            walk(child)

    walk(explorer.grid)
    assert len(buttons) == len(explorer.cell_keys())
    buttons[-1].click()
    key = explorer.cell_keys()[-1]
    assert explorer.selected["cell_key"] == key and key in explorer.detail_row.value
    detail = Image.open(io.BytesIO(bytes(explorer.detail_image.value)))
    width = detail.width
    explorer.zoom.value = 8  # 64 px images at 8 screen px per pixel
    assert Image.open(io.BytesIO(bytes(explorer.detail_image.value))).width > 1.5 * width >= 3 * 256


def test_the_recommendations_open_the_cells_they_recommend(small_calibration):
    explorer = GridExplorer(small_calibration)
    recommended = {key: value for key, value in explorer.calibration.recommendations.items()
                   if value.get("strength") is not None}
    assert recommended and len(explorer.recommendations) == len(recommended)
    for button, recommendation in zip(explorer.recommendations, recommended.values()):
        button.click()
        assert explorer.selected["strength"] == pytest.approx(recommendation["strength"])
        assert explorer.selected["guidance_scale"] == recommendation["guidance_scale"]
        assert recommendation["strength"] in explorer.grid_columns()


def test_borders_use_the_fixed_scale_and_mixed_sizes_fit_their_cells(small_calibration):
    from img2img_lab.widgets.grid_html import border_css

    explorer = GridExplorer(small_calibration, border="ssim")
    frames = []

    def walk(widget):
        if type(widget).__name__ == "Image" and "i2i-cell-image" in widget._dom_classes:
            frames.append(widget.layout.border)
        for child in getattr(widget, "children", ()):
            walk(child)

    walk(explorer.grid)
    shown = explorer._shown().sort_values(["seed", "strength"])
    expected = [f"4px solid {border_css('ssim', value)}" for value in shown["ssim"]]
    assert [frame for frame in frames if "transparent" not in frame] == expected
    assert border_css("ssim", 0.175) == "rgb(165,0,38)"  # red: SSIM 0.175 is another picture
    assert "red</b> at ssim ≤ 0.3" in explorer.scale_note.value
    sizes = [fit_image(Image.new("RGB", size), 128).size for size in ((64, 64), (64, 40), (40, 64), (300, 150))]
    assert sizes == [(128, 128), (128, 80), (80, 128), (128, 64)]


def test_every_other_varying_axis_is_pinned_and_a_sweep_folder_has_no_reference_table(small_calibration, tmp_path):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(small_calibration, sweep)
    shutil.rmtree(RunStore(sweep).calibration_dir())
    explorer = GridExplorer(sweep, rows="source_name", cols="seed")
    assert explorer.calibration is None and not hasattr(explorer, "band")
    assert set(explorer.pins) == {"guidance_scale", "strength"}  # no reference table: guidance is a pin
    explorer.pins["strength"].value = 1.0
    shown = explorer._shown()
    assert set(shown["strength"]) == {1.0} and explorer.grid_columns() == [0, 1]
    explorer.rows.value = "strength"
    assert "strength" not in explorer.pins and "source_name" in explorer.pins


def test_static_output_is_the_comparison_grid_of_the_selection(small_calibration):
    explorer = GridExplorer(small_calibration, annotate=["ssim"])
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    static = bundle["text/html"]
    assert "i2i-bands" in static and static.count("<img") == 1
    data = re.search(r"base64,([^']+)'", static).group(1)
    import base64

    grid = Image.open(io.BytesIO(base64.b64decode(data)))
    assert grid.width > 3 * 64 and np.asarray(grid).std() > 10


def test_bad_requests_are_one_line_errors(small_calibration, tmp_path):
    with pytest.raises(Img2ImgLabError, match="cannot use 'colour' as a grid axis here. Fix: use one of"):
        GridExplorer(small_calibration, rows="colour")
    with pytest.raises(Img2ImgLabError, match="metric 'lpips' is not measured in .* Fix: use one of ssim"):
        GridExplorer(small_calibration, annotate=["lpips"])
    explorer = GridExplorer(small_calibration)
    explorer.rows.value = "strength"  # the same as the columns
    assert "rows and columns are the same axis" in explorer.status.value
    with pytest.raises(Img2ImgLabError, match="no cell 'nope'"):
        explorer.open_cell("nope")
