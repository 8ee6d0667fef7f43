"""Figures a person can read (issue #17): one fixed colour scale per metric for grid borders, the right direction
in curve titles, and one clear error for a metric with nothing to show."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from img2img_lab.cli.main import main
from img2img_lab.errors import Img2ImgLabError
from img2img_lab.figures.grids import _border_colours, comparison_grid, strength_curves
from img2img_lab.figures.metric_scales import BORDER_SCALES, border_position, direction_text
from img2img_lab.store.run_store import RunStore


def test_border_colours_follow_a_fixed_scale_not_the_grid_s_own_range():
    import pandas as pd

    low_only = pd.DataFrame({"ssim": [0.15, 0.175, 0.2]})  # a grid whose best SSIM is 0.2
    colour = _border_colours(low_only, "ssim")
    red, green = colour(0.175), _border_colours(pd.DataFrame({"ssim": [0.9]}), "ssim")(0.9)
    assert red[0] > 150 and red[1] < 80, red  # SSIM 0.175 is red, not the dark green the grid's range gave it
    assert green[1] > 100 and green[0] < 80, green
    assert colour(0.9) == green  # the same value, the same colour, in any grid
    assert border_position("delta_e", 40) == 0.0 and border_position("delta_e", 1) == 1.0  # lower is better
    assert border_position("oracle_kept", 1) == 1.0 and border_position("oracle_match", 0) == 0.0
    assert set(BORDER_SCALES) >= {"ssim", "psnr", "delta_e", "lpips", "edge_f1"}


def test_curve_titles_say_the_direction_of_each_metric():
    assert direction_text("ssim") == "higher = closer to source"
    assert direction_text("delta_e") == "lower = closer to source"
    assert direction_text("oracle_match") == direction_text("oracle_adherence") == "higher = follows the prompt"


def _run_with_an_unmeasured_column(tmp_path):
    store = RunStore.create(tmp_path / "run", {"plan": {}})
    image = Image.fromarray(np.full((16, 16, 3), 120, np.uint8))
    from img2img_lab.images.hashes import content_hash

    for seed in range(2):
        key = f"{seed:020x}"
        store.save_cell(key, image, {
            "cell_key": key, "output_hash": content_hash(image), "output_path": f"images/{key}.png", "seed": seed,
            "strength": 0.5, "executed_steps": 5, "source_name": "s", "source_hash": "ab" * 32, "prompt": "p",
            "negative_prompt": "", "guidance_scale": 2.0, "num_inference_steps": 10, "scheduler": "default",
            "ssim": 0.5, "lpips": float("nan")})
    store.flush()
    return store


def test_an_unmeasured_metric_is_one_clear_error(tmp_path, capsys, monkeypatch, no_converted_weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # LPIPS unavailable here
    store = _run_with_an_unmeasured_column(tmp_path)
    with pytest.raises(Img2ImgLabError, match=r"metric 'lpips' has no values in .*could not be computed here "
                                              r"\(lpips \(alex\): backbone weights missing.*Fix: `img2img-lab measure"):
        strength_curves(store.root, "lpips")
    with pytest.raises(Img2ImgLabError, match=r"metric 'delta_e' is not in the run's table\. Fix: `img2img-lab "
                                              r"measure .* --metrics delta_e`"):
        comparison_grid(store.root, annotate=["delta_e"])
    assert main(["curves", str(store.root), "--metric", "lpips", "--out", str(tmp_path / "c.png")]) == 2
    assert "has no values" in capsys.readouterr().err and not (tmp_path / "c.png").exists()
    assert main(["grid", str(store.root), "--cols", "seed", "--rows", "strength", "--border", "lpips", "--out",
                 str(tmp_path / "g.png")]) == 2
    assert "has no values" in capsys.readouterr().err


@pytest.fixture(scope="module")
def mixed_sizes_run(tmp_path_factory):
    """Three sources of 64x64, 64x40 and 40x64 swept by the embedded model into one folder."""
    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.resources import data_path
    from img2img_lab.sweep.run import run_sweep

    folder = tmp_path_factory.mktemp("mixed")
    base = Image.open(data_path("sources", "red_circle_on_blue.png"))
    paths = []
    for name, size in (("square", (64, 64)), ("wide", (64, 40)), ("tall", (40, 64))):
        path = folder / f"{name}.png"
        base.convert("RGB").resize(size).save(path)
        paths.append(str(path))
    plan = SweepPlan(images=paths, prompts=["a yellow star on a black background"], strengths=[0.5, 1.0],
                     steps=[4], guidance_scales=[2.0])
    run_sweep(plan, folder / "run", pipe=load_pipeline(device="cpu"), metrics=["ssim"], progress=False)
    return folder / "run"


def test_a_grid_of_mixed_aspect_ratios_does_not_overlap_and_stays_readable(mixed_sizes_run):
    from img2img_lab.figures.grids import _scaled, grid_layout

    store = RunStore.open(mixed_sizes_run)
    table = store.read_table()
    assert sorted({(w, h) for w, h in zip(table.width, table.height)}) == [(40, 64), (64, 40), (64, 64)]
    grid = comparison_grid(mixed_sizes_run, rows="source_name", cols="strength", annotate=["ssim"], border="ssim")
    rows = sorted(table["source_name"].unique())
    # the text size comparison_grid chose, recovered from its geometry, stays >= 10 px at 1,000 px wide
    for font_size in range(14, 40):
        layout = grid_layout(3, 3, (64, 64), annotate=["ssim"], font_size=font_size,
                             row_labels=[f"source_name: {name}" for name in rows])
        if (layout.width, layout.height) == grid.size:
            break
    else:
        raise AssertionError(f"no layout matches the grid's size {grid.size}")
    assert font_size * 1000 / grid.width >= 10, (font_size, grid.width)
    boxes = [layout.cell_box(r, c) for r in range(3) for c in range(3)]
    assert all(a == b or a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1] for a in boxes for b in boxes)
    for r, name in enumerate(rows):  # every image lies whole, centred, inside its own cell
        for c, strength in enumerate([0.5, 1.0]):
            row = table[(table.source_name == name) & (table.strength == strength)].iloc[0]
            image = _scaled(store.load_output(row), layout)
            left, top, right, bottom = layout.cell_box(r, c + 1)
            x, y = left + (right - left - image.width) // 2, top + (bottom - top - image.height) // 2
            inner = grid.crop((x + 3, y + 3, x + image.width - 3, y + image.height - 3))  # inside the border
            assert inner.tobytes() == image.crop((3, 3, image.width - 3, image.height - 3)).tobytes(), (name, strength)


def test_calibration_thumbnails_are_embedded_at_display_size_and_link_the_full_image(tmp_path):
    import base64
    import io
    import re
    from types import SimpleNamespace

    from img2img_lab.calibration.render import THUMBNAIL_PX, _image_tag

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(tmp_path / "images" / "k.png")
    tag = _image_tag(SimpleNamespace(run_dir=str(tmp_path)), "images/k.png", tmp_path)
    embedded = Image.open(io.BytesIO(base64.b64decode(re.search(r"base64,([^']+)'", tag).group(1))))
    assert max(embedded.size) == THUMBNAIL_PX and "<a href='images/k.png'>" in tag
    # the saved calibration.html lives in calibration/: its links climb to the run folder
    assert "<a href='../images/k.png'>" in _image_tag(SimpleNamespace(run_dir=str(tmp_path)), "images/k.png",
                                                      tmp_path / "calibration")
    assert len(tag) < (tmp_path / "images" / "k.png").stat().st_size / 10  # a 512-px image is not embedded whole


def test_a_report_written_elsewhere_links_every_full_size_image(small_calibration, tmp_path):
    import re

    from img2img_lab.figures.report import write_report

    for out in (small_calibration / "report.html", tmp_path / "elsewhere" / "report.html"):
        text = write_report(small_calibration, out).read_text()
        links = re.findall(r"href='([^'#][^']*)'", text)
        assert links and all((out.parent / href).is_file() for href in links), links[:3]
    saved = (RunStore(small_calibration).calibration_dir() / "calibration.html").read_text()
    assert all((RunStore(small_calibration).calibration_dir() / href).is_file()
               for href in re.findall(r"href='([^']+)'", saved))  # the saved fragment's links work where it lies


def test_report_grids_are_embedded_at_display_size_within_a_byte_budget(small_calibration, tmp_path, monkeypatch,
                                                                        capsys):
    import re
    import shlex

    from img2img_lab.figures import report as report
    from img2img_lab.cli.main import main

    wide = Image.effect_noise((3000, 500), 60).convert("RGB")
    assert "width='1000'" in report.display_image_tag(wide) and len(report.display_image_tag(wide)) < 1_000_000
    monkeypatch.setattr(report, "GRID_BUDGET_BYTES", 1)  # one grid, then the commands that draw the others
    store = RunStore.open(small_calibration)
    section = report.grids_section(store, store.read_table()).body
    families = store.read_table().drop_duplicates(["source_name", "guidance_scale"])
    assert section.count("<img") == 1 and f"{len(families) - 1} more families are not drawn" in section
    command = re.search(r"<li><code>(img2img-lab grid [^<]+)</code>", section).group(1)
    arguments = shlex.split(command.replace("&#x27;", "'").replace("&quot;", '"'))[1:]
    monkeypatch.chdir(tmp_path)
    assert main(arguments) == 0 and Image.open(tmp_path / "grid.png").width > 64 * 3


def test_a_figure_s_floor_is_the_floor_of_the_cells_it_shows(tiny_pipe, sources_dir, tmp_path):
    """A curve filtered to one source drew the floor of every source in the folder (embedded model: 0.885 for a
    source whose own floor is 0.894), and a calibration's ``<metric>_floor`` took in other sweeps' sources and seeds.
    Both now use the floor of the cells they show: their sources, seeds and models."""
    from img2img_lab.calibration.stats import strength_summary
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.sweep.run import run_sweep

    plan = SweepPlan(images=[str(sources_dir / "source0.png"), str(sources_dir / "source1.png")], prompts=["p"],
                     strengths=[0.3, 0.9], seeds=[0, 1], steps=[10], schedulers=["ddim"], guidance_scales=[1.0])
    table = run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, progress=False, metrics=["ssim"])
    store = RunStore.open(tmp_path / "run")
    floor = store.read_floor()
    per_source = floor.groupby("source_hash")["ssim"].mean()
    assert per_source.max() - per_source.min() > 0.003  # the two sources' floors differ (0.027, 0.023)
    for source_hash, name in table.groupby("source_hash")["source_name"].first().items():
        figure = strength_curves(tmp_path / "run", "ssim", where={"source_name": name}, hue=None)
        line = next(line for line in figure.axes[0].get_lines() if line.get_label() == "VAE round-trip floor")
        assert line.get_ydata()[0] == pytest.approx(per_source[source_hash], abs=1e-12)
    one = table[(table.source_hash == table.source_hash[0]) & (table.seed == 0)]
    summary = strength_summary(one, ["ssim"], floor=store.read_floor_of(one), n_resamples=10)
    expected = floor[(floor.source_hash == table.source_hash[0]) & (floor.seed == 0)]["ssim"].item()
    assert summary["ssim_floor"].tolist() == pytest.approx([expected] * 2, abs=1e-12)


def test_a_curve_that_mixes_guidance_scales_says_so_and_the_report_draws_one_line_each(tiny_pipe, sources_dir,
                                                                                       tmp_path, capsys):
    """A strength x guidance study's curves drew one line per prompt, each the mean over every guidance scale (the
    report's too): the study's whole question averaged away, without a word. Now a curve whose lines mix models,
    guidance scales, steps or schedulers warns (one line, with the fix), and the report draws one line per guidance
    scale."""
    import warnings

    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.figures.curves import CurveWarning
    from img2img_lab.figures.report import curve_views
    from img2img_lab.sweep.run import run_sweep

    plan = SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["p"], strengths=[0.3, 0.9], seeds=[0, 1],
                     steps=[10], schedulers=["ddim"], guidance_scales=[1.0, 3.0])
    table = run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, progress=False, metrics=["ssim"])
    with pytest.warns(CurveWarning, match=r"mixes guidance_scale 1, 3 .* Fix: one line per value \(--hue "
                                          r"guidance_scale\) or one value \(--where guidance_scale=1\)"):
        strength_curves(tmp_path / "run", "ssim", hue="prompt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CurveWarning)
        strength_curves(tmp_path / "run", "ssim", hue="guidance_scale")
        figure = strength_curves(tmp_path / "run", "ssim", hue=None, where={"guidance_scale": 3.0})
    assert figure.axes[0].get_title().endswith("\nguidance_scale 3.0")  # a pinned figure says what it shows
    assert curve_views(table) == [("guidance_scale", {})]
    assert main(["curves", str(tmp_path / "run"), "--metric", "ssim", "--out", str(tmp_path / "c.png")]) == 0
    errors = capsys.readouterr().err
    assert errors.count("warning: each line of the ssim curve mixes guidance_scale 1, 3") == 1, errors
