"""The strength explorer's behaviour, driven from Python (the browser test drives the same app in JupyterLab)."""

from __future__ import annotations

import io
import shutil
from datetime import datetime, timezone

import pytest
from PIL import Image

from conftest import structured_image

pytest.importorskip("ipywidgets")

from img2img_lab.errors import StoreError  # noqa: E402
from img2img_lab.store.run_store import RunStore  # noqa: E402
from img2img_lab.widgets.strength_explorer import StrengthExplorer, bundled_sources, strength_readout  # noqa: E402


@pytest.fixture
def explorer(tiny_pipe, sources_dir, tmp_path):
    sources = {path.stem: str(path) for path in sorted(sources_dir.glob("*.png"))}
    return StrengthExplorer(tiny_pipe, run_dir=tmp_path / "explorer", sources=sources, prompt="a red disc",
                            strength=0.5, steps=10, scheduler="ddim", guidance_scale=3.0,
                            metrics=["ssim", "delta_e"])


def _decoded(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(bytes(png))).convert("RGB")


def test_bundled_sources_are_the_data_folder_pngs():
    sources = bundled_sources()
    assert len(sources) == 6 and all(path.endswith(".png") for path in sources.values())


def test_strength_slider_updates_the_executed_steps_label(explorer):
    assert "executes 5 of 10 steps" in explorer.steps_label.value
    explorer.strength.value = 0.73
    assert "executes 7 of 10 steps" in explorer.steps_label.value
    explorer.steps.value = 30
    assert "executes 21 of 30 steps" in explorer.steps_label.value
    explorer.strength.value = 0.02
    assert "executes 0 of 30 steps" in explorer.steps_label.value and "VAE round trip" in explorer.steps_label.value
    explorer.strength.value = 1.0
    label = explorer.steps_label.value
    assert "executes 30 of 30 steps" in label and "σ=" in label and "√ᾱ=" in label


def test_label_matches_the_scheduler_arithmetic(explorer, tiny_pipe):
    from img2img_lab.models.handle import as_model

    explorer.scheduler.value = "euler"
    explorer.steps.value = 20
    explorer.strength.value = 0.35
    schedule = as_model(tiny_pipe).step_plan("euler", 20, 0.35, width=32, height=32)
    assert f"starts at t={schedule.start_timestep:.0f}" in explorer.steps_label.value
    assert f"noise σ={schedule.sigma:.2f}" in explorer.steps_label.value


def test_generate_stores_a_cell_and_updates_image_table_and_curve(explorer, tmp_path):
    assert bytes(explorer.image.value) == b"" and explorer.current is None
    steps_seen = []
    explorer.progress.observe(lambda change: steps_seen.append(change["new"]), names="value")
    explorer.generate_button.click()
    table = RunStore.open(tmp_path / "explorer").read_table()
    assert len(table) == 1 and explorer.generated == 1
    row = table.iloc[0]
    assert row["strength"] == 0.5 and row["executed_steps"] == 5 and row["guidance_scale"] == 3.0
    assert 0 < row["ssim"] <= 1 and row["delta_e"] >= 0
    first_image = explorer.image.value
    assert _decoded(first_image).width > 2 * 32  # source and output, upscaled
    assert "0.500" in explorer.table.value and bytes(explorer.curve.value).startswith(b"\x89PNG")
    assert steps_seen[-5:] == [1, 2, 3, 4, 5]  # one progress tick per denoising step
    assert "generated" in explorer.status.value and not explorer.generate_button.disabled

    explorer.strength.value = 0.9
    explorer.generate_button.click()
    assert len(RunStore.open(tmp_path / "explorer").read_table()) == 2
    assert explorer.image.value != first_image and explorer.current["executed_steps"] == 9
    assert explorer.table.value.count("</tr>") == 3  # header + two images


def test_returning_to_a_setting_is_recalled_not_regenerated(explorer, tmp_path, tiny_pipe, sources_dir):
    explorer.generate_button.click()
    first = explorer.image.value
    explorer.seed.value = 4
    explorer.generate_button.click()
    explorer.seed.value = 0
    explorer.generate_button.click()
    assert explorer.generated == 2 and "recalled from the cache" in explorer.status.value
    assert explorer.image.value == first
    assert len(RunStore.open(tmp_path / "explorer").read_table()) == 2
    # A new session on the same folder recalls too (nothing generated).
    sources = {path.stem: str(path) for path in sorted(sources_dir.glob("*.png"))}
    again = StrengthExplorer(tiny_pipe, run_dir=tmp_path / "explorer", sources=sources, prompt="a red disc",
                             strength=0.5, steps=10, scheduler="ddim", guidance_scale=3.0, metrics=["ssim", "delta_e"])
    assert len(again.rows()) == 2 and "<tr>" in again.table.value
    row = again.generate()
    assert again.generated == 0 and row["seed"] == 0


def test_views_side_by_side_difference_and_grid(explorer):
    explorer.generate_button.click()
    explorer.seed.value = 1
    explorer.generate_button.click()
    side = _decoded(explorer.image.value)
    explorer.view.value = "difference"
    difference = _decoded(explorer.image.value)
    assert difference.width > side.width * 1.3  # a third panel
    explorer.view.value = "grid"
    grid = _decoded(explorer.image.value)
    assert grid.height > side.height * 1.5  # two seed rows
    assert "showing <b>grid</b>" in explorer.image_caption.value


def test_a_view_picked_during_a_generation_shows_when_it_ends(explorer):
    explorer.generate_button.click()
    explorer.strength.value = 0.8
    captions = []

    def pick_difference(change):
        if change["new"] == 2 and explorer.view.value != "difference":
            explorer.view.value = "difference"
            captions.append(explorer.image_caption.value)

    explorer.progress.observe(pick_difference, names="value")
    explorer.generate_button.click()
    assert "shows when this image is done" in captions[0]
    assert "showing <b>difference</b>" in explorer.image_caption.value and "strength 0.8" in explorer.image_caption.value
    assert _decoded(explorer.image.value).width > 3 * 32 * 2  # three panels of the new image


def test_upload_adds_and_selects_a_source(explorer, tmp_path):
    stream = io.BytesIO()
    structured_image(48, seed=5).save(stream, format="PNG")
    explorer.upload.value = ({"name": "mine.png", "type": "image/png", "size": len(stream.getvalue()),
                              "content": memoryview(stream.getvalue()), "last_modified": datetime.now(timezone.utc)},)
    assert explorer.source.value.endswith("mine.png") and "mine (uploaded)" in dict(explorer.source.options)
    row = explorer.generate()
    assert row["source_name"] == "mine" and row["width"] == 32  # sized to the model (native 32 px)


def test_upload_of_a_broken_file_is_refused_with_the_reason(explorer):
    before = explorer.source.value
    explorer.upload.value = ({"name": "notes.png", "type": "image/png", "size": 5, "content": memoryview(b"hello"),
                              "last_modified": datetime.now(timezone.utc)},)
    assert "upload refused" in explorer.status.value and explorer.source.value == before


def test_an_upload_never_writes_through_a_linked_uploads_folder(explorer, tmp_path):
    """uploads/ linked to a folder outside the run folder: the upload is refused in the status line, nothing is
    written there (issue #28)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    uploads = explorer.run_dir / "uploads"
    if uploads.exists():
        shutil.rmtree(uploads)
    uploads.parent.mkdir(parents=True, exist_ok=True)
    uploads.symlink_to(outside)
    stream = io.BytesIO()
    structured_image(48, seed=6).save(stream, format="PNG")
    explorer.upload.value = ({"name": "mine.png", "type": "image/png", "size": len(stream.getvalue()),
                              "content": memoryview(stream.getvalue()), "last_modified": datetime.now(timezone.utc)},)
    assert "upload refused" in explorer.status.value and "leads outside the run folder" in explorer.status.value
    assert list(outside.iterdir()) == []


def test_bad_settings_show_an_error_and_generate_nothing(explorer, tmp_path):
    explorer.source.options = [("missing", str(tmp_path / "missing.png"))]
    explorer.generate_button.click()
    assert "error:" in explorer.status.value and "missing.png" in explorer.status.value
    assert "Fix:" in explorer.status.value and not explorer.generate_button.disabled
    assert not (tmp_path / "explorer" / "results.parquet").exists() and explorer.current is None


def test_a_folder_of_another_model_is_refused(explorer, tiny_pipe, tmp_path):
    explorer.generate_button.click()
    manifest = RunStore.open(tmp_path / "explorer").read_manifest()
    manifest["model_fingerprint"]["fingerprint"] = "0" * 64
    RunStore.open(tmp_path / "explorer").write_manifest(manifest)
    with pytest.raises(StoreError, match="another model"):
        StrengthExplorer(tiny_pipe, run_dir=tmp_path / "explorer", metrics=["ssim"])


def test_strength_readout_zero_step_and_pndm_single_call(tiny_pipe):
    from img2img_lab.models.handle import as_model

    model = as_model(tiny_pipe)
    assert strength_readout(model.step_plan("ddim", 20, 0.04, width=32, height=32)).startswith(
        "executes 0 of 20 steps · no denoising")
    # PNDM: diffusers counts 0 steps at 0.04 but keeps one timestep, so the UNet runs once (not a round trip)
    assert strength_readout(model.step_plan("default", 20, 0.04, width=32, height=32)).startswith(
        "executes 0 of 20 steps (1 denoiser call) · starts at t=")


def test_the_status_line_says_when_the_model_is_the_wrong_tool(explorer):
    explorer.prompt.value = "a red disc on a velvet cushion " * 3  # longer than the tiny model's tokenizer reads
    explorer.generate_button.click()
    assert any("cut off" in advisory for advisory in explorer.advisories)
    assert "i2i-advisory" in explorer.status.value and "cut off" in explorer.status.value
