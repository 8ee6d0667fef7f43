"""Comparison grids (geometry, labels, pixels), curves and difference maps, from a run folder alone."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from img2img_lab.cli.main import main
from img2img_lab.errors import Img2ImgLabError
from img2img_lab.figures.grids import (
    comparison_grid,
    curve_data,
    difference_array,
    difference_map,
    grid_figure,
    grid_layout,
    save_png,
    strength_curves,
)
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.sweep.run import run_sweep

STRENGTHS = [0.1, 0.3, 0.5, 0.7, 1.0]


@pytest.fixture(scope="module")
def run_dir(tiny_pipe, tmp_path_factory):
    from conftest import structured_image

    folder = tmp_path_factory.mktemp("grid-run")
    structured_image(32, seed=5).save(folder / "source.png")
    plan = SweepPlan(images=[str(folder / "source.png")], prompts=["a red circle", "a blue square"],
                     strengths=STRENGTHS, seeds=[0, 1, 2], steps=[10], schedulers=["ddim"], guidance_scales=[2.0])
    run_sweep(plan, folder / "run", pipe=tiny_pipe, progress=False, metrics=["ssim", "delta_e"])
    return folder / "run"


def test_grid_geometry_and_pixels(run_dir):
    grid = comparison_grid(run_dir, rows="seed", cols="strength", annotate=["ssim", "delta_e"], border="ssim",
                           where={"prompt": "a red circle"})
    layout = grid_layout(3, 6, (32, 32), annotate=["ssim", "delta_e"], row_labels=["seed: 0", "seed: 1", "seed: 2"])
    assert layout.scale == 5 and layout.cell_width == 160
    assert grid.size == (layout.width, layout.height)
    # width = margins + row labels + gap + 6 columns of (160 px + gap) - last gap
    assert layout.width == 2 * 12 + layout.label_width + 8 + 6 * (160 + 8) - 8
    assert layout.height == 2 * 12 + layout.header_height + 8 + 3 * (160 + layout.annotation_height + 8) - 8
    table = pd.read_parquet(run_dir / "results.parquet")
    table = table[table.prompt == "a red circle"]
    pixels = np.asarray(grid)
    for row, seed in enumerate([0, 1, 2]):
        source_box = layout.cell_box(row, 0)
        source = Image.open(run_dir / "sources" / f"{table.source_hash.iloc[0]}.png").convert("RGB")
        expected = np.asarray(source.resize((160, 160), Image.Resampling.NEAREST))
        assert np.array_equal(pixels[source_box[1]:source_box[3], source_box[0]:source_box[2]], expected)
        for col, strength in enumerate(STRENGTHS, start=1):
            left, top, right, bottom = layout.cell_box(row, col)
            cell = table[(table.seed == seed) & np.isclose(table.strength, strength)].iloc[0]
            output = Image.open(run_dir / cell.output_path).convert("RGB")
            expected = np.asarray(output.resize((160, 160), Image.Resampling.NEAREST))
            assert np.array_equal(pixels[top:bottom, left:right], expected), (seed, strength)
            band = pixels[bottom + 2:bottom + layout.annotation_height, left:right]
            assert (band.min(axis=2) < 100).sum() > 20, "annotation text drawn under each image"
            ring = pixels[top - 3, left:right]
            assert not np.all(ring == 255), "coloured border drawn"
    # labels: dark text in each column header and in each row's label area; blank outer margin
    for col in range(6):
        left, _, right, _ = layout.cell_box(0, col)
        header = pixels[12:12 + layout.header_height, left:right]
        assert (header.min(axis=2) < 100).sum() > 20
    for row in range(3):
        _, top, _, bottom = layout.cell_box(row, 0)
        label = pixels[top:bottom, 12:12 + layout.label_width]
        assert (label.min(axis=2) < 100).sum() > 20
    assert np.all(pixels[:10] == 255) and np.all(pixels[:, :10] == 255)


def test_grid_with_prompt_rows_and_without_annotations(run_dir):
    grid = comparison_grid(run_dir, rows="prompt", cols="strength", where={"seed": 0})
    layout = grid_layout(2, 6, (32, 32), row_labels=["prompt: a red circle", "prompt: a blue square"])
    assert grid.size == (layout.width, layout.height) and layout.annotation_height == 0


def test_ambiguous_grid_says_which_axis_to_pin(run_dir):
    with pytest.raises(Img2ImgLabError, match=r"ambiguous: prompt \(2 values.*Fix: pick one value.*--where prompt=VALUE"):
        comparison_grid(run_dir, rows="seed", cols="strength")
    with pytest.raises(Img2ImgLabError, match=r"metric 'lpips' is not in the run's table.*img2img-lab measure"):
        comparison_grid(run_dir, annotate=["lpips"], where={"prompt": "a red circle"})
    with pytest.raises(Img2ImgLabError, match=r"no cells match"):
        comparison_grid(run_dir, where={"seed": 99})
    with pytest.raises(Img2ImgLabError, match=r"unknown grid axis 'colour'"):
        comparison_grid(run_dir, rows="colour")


def test_grid_png_and_figure(run_dir, tmp_path):
    grid = comparison_grid(run_dir, where={"prompt": "a blue square"}, annotate=["ssim"])
    path = save_png(grid, tmp_path / "grid.png")
    assert Image.open(path).size == grid.size
    figure = grid_figure(grid)
    assert tuple(figure.get_size_inches() * figure.dpi) == pytest.approx(grid.size)


def test_curves_plot_the_means_over_seeds(run_dir):
    table = pd.read_parquet(run_dir / "results.parquet")
    figure = strength_curves(run_dir, "ssim", hue="prompt")
    axis = figure.axes[0]
    lines = {line.get_label(): line for line in axis.get_lines()}
    assert {"prompt: a red circle", "prompt: a blue square", "VAE round-trip floor"} <= set(lines)
    expected = table[table.prompt == "a red circle"].groupby("strength")["ssim"].mean()
    assert np.allclose(lines["prompt: a red circle"].get_ydata(), expected.to_numpy())
    assert np.allclose(lines["prompt: a red circle"].get_xdata(), STRENGTHS)
    steps = strength_curves(run_dir, "delta_e", x="executed_steps", hue=None)
    assert list(steps.axes[0].get_lines()[0].get_xdata()) == [1, 3, 5, 7, 10]
    data = curve_data(table, "ssim", x="sqrt_alpha_bar", hue="prompt")
    assert (data["count"] == 3).all() and len(data) == 10
    with pytest.raises(Img2ImgLabError, match=r"unknown x axis 'time'"):
        curve_data(table, "ssim", x="time")


def test_difference_map(run_dir):
    table = pd.read_parquet(run_dir / "results.parquet")
    key = table.sort_values("strength").cell_key.iloc[-1]
    figure = difference_map(run_dir, key)
    assert len(figure.axes) == 4  # source, output, map, colour bar
    same = np.zeros((16, 16, 3), np.uint8)
    assert difference_array(same, same).max() == 0.0
    other = same.copy()
    other[:8] = 255
    assert difference_array(same, other)[:8].min() == 1.0 and difference_array(same, other)[8:].max() == 0.0
    assert difference_array(same, other, kind="ssim").max() > 0.5
    with pytest.raises(Img2ImgLabError, match=r"no cell 'nope'"):
        difference_map(run_dir, "nope")


def test_cli_measure_grid_curves(run_dir, tmp_path, capsys):
    assert main(["measure", str(run_dir), "--metrics", "ssim,psnr", "--no-progress"]) == 0
    assert "psnr 30" in capsys.readouterr().out  # ssim was measured during the sweep; psnr is new
    assert main(["measure", str(run_dir), "--metrics", "ssim,psnr", "--no-progress"]) == 0
    assert "nothing missing" in capsys.readouterr().out
    out = tmp_path / "grid.png"
    assert main(["grid", str(run_dir), "--rows", "seed", "--cols", "strength", "--annotate", "ssim,psnr",
                 "--border", "ssim", "--where", "prompt=a red circle", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 1000
    assert main(["curves", str(run_dir), "--metric", "ssim", "--out", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").size == (700, 420)
    assert main(["grid", str(run_dir), "--out", str(tmp_path / "g.png")]) == 2
    assert "ambiguous" in capsys.readouterr().err
    assert main(["grid", str(run_dir), "--annotate", "sharpness", "--out", str(tmp_path / "g.png")]) == 2


def _ink_line_heights(grid: Image.Image, top: float, bottom: float, *, display_width: int = 1000) -> list[int]:
    """The heights of the text lines between ``top`` and ``bottom`` (grid pixels), read from the pixels of the grid
    as it is shown ``display_width`` px wide: runs of image rows holding dark ink, separated by blank rows."""
    factor = display_width / grid.width
    shown = np.asarray(grid.resize((display_width, round(grid.height * factor)), Image.LANCZOS).convert("L"))
    inked = (shown[int(top * factor):int(bottom * factor)] < 140).any(axis=1)
    heights, run = [], 0
    for dark in [*inked, False]:
        if dark:
            run += 1
        elif run:
            heights.append(run)
            run = 0
    return heights


@pytest.mark.parametrize("columns", [7, 11])
def test_grid_text_stays_10_px_tall_at_1000_px_wide(tiny_pipe, tmp_path, columns):
    """The header "strength: 0.1" (an ascender and a descender) measured in the pixels of a 7- and an 11-column
    grid scaled to 1,000 px, as the report and a notebook show it: at least 10 px of ink from top to bottom."""
    from conftest import structured_image

    structured_image(32, seed=5).save(tmp_path / "source.png")
    strengths = [round(0.1 * step, 1) for step in range(1, columns)]
    plan = SweepPlan(images=[str(tmp_path / "source.png")], prompts=["a red circle"], strengths=strengths,
                     steps=[10], guidance_scales=[2.0])
    run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, progress=False, metrics=["ssim"])
    grid = comparison_grid(tmp_path / "run", rows="seed", cols="strength", annotate=["ssim"], border="ssim")
    assert grid.width > 1000  # shown scaled down
    layout_top = grid_layout(1, columns, (32, 32), annotate=["ssim"], row_labels=["seed: 0"]).margin
    header = _ink_line_heights(grid, layout_top, layout_top + 0.06 * grid.width)
    assert header and header[0] >= 10, header


def test_a_standalone_grid_names_what_it_shows(run_dir):
    """`img2img-lab grid` PNGs carry a title band (what every cell shares) and the border legend above the grid."""
    from img2img_lab.figures.grids import grid_title

    where = {"prompt": "a red circle"}
    plain = comparison_grid(run_dir, rows="seed", cols="strength", where=where, border="ssim")
    titled = comparison_grid(run_dir, rows="seed", cols="strength", where=where, border="ssim", title=True)
    band = titled.height - plain.height
    assert titled.width == plain.width and band > 0
    assert np.array_equal(np.asarray(titled)[band:], np.asarray(plain))  # the grid itself is unchanged
    assert (np.asarray(titled)[:band] < 128).any()  # the band holds ink
    assert "prompt: a red circle" in grid_title(pd.read_parquet(run_dir / "results.parquet").query(
        "prompt == 'a red circle'"))
