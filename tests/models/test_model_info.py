"""Start-up: the pipeline class a model folder names is imported alone, and `info` keeps a model's description while
its files stay the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import img2img_lab.models.loading as loading
from img2img_lab.cli.main import main
from img2img_lab.models.info import describe_model


def test_the_class_a_folder_names_is_used_and_text_to_image_names_map_to_img2img(tiny_model_dir, tmp_path):
    assert loading.img2img_pipeline_class("x", tiny_model_dir).__name__ == "StableDiffusionImg2ImgPipeline"
    folder = tmp_path / "t2i"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert loading.img2img_pipeline_class("x", folder).__name__ == "StableDiffusionXLImg2ImgPipeline"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    assert loading.img2img_pipeline_class("x", folder).__name__ == "AutoPipelineForImage2Image"


def test_loading_a_model_does_not_import_every_pipeline(tiny_model_dir):
    """AutoPipelineForImage2Image imports every ControlNet (1-2 s); a folder naming its class does not need it."""
    code = (f"import sys; from img2img_lab.models.loading import load_pipeline; load_pipeline({str(tiny_model_dir)!r}); "
            f"print('diffusers.models.controlnets' in sys.modules, 'diffusers.loading.auto_pipeline' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


def test_commands_that_load_no_model_do_not_import_diffusers(tmp_path):
    code = ("import sys, contextlib, io\nfrom img2img_lab.cli.main import main\nwith contextlib.redirect_stdout(io.StringIO()):"
            "\n    try: main(['report', '--help'])\n    except SystemExit: pass\nprint('diffusers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_info_keeps_a_description_until_a_file_changes(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMG2IMG_LAB_CACHE_DIR", str(tmp_path / "cache"))
    loads = []
    real_load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: (loads.append(1), real_load(*a, **k))[1])
    first = describe_model(tiny_model_dir, device="cpu")
    assert describe_model(tiny_model_dir, device="cpu") == first and len(loads) == 1  # read back
    assert main(["info", str(tiny_model_dir), "--device", "cpu"]) == 0 and len(loads) == 1
    assert "StableDiffusionImg2ImgPipeline" in capsys.readouterr().out
    describe_model(tiny_model_dir, device="cpu", reload=True)
    assert len(loads) == 2
    describe_model(tiny_model_dir, device="cpu", dtype="float32")  # asked differently: described anew
    assert len(loads) == 3
    config = tiny_model_dir / "scheduler" / "scheduler_config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a file changed
    try:
        assert describe_model(tiny_model_dir, device="cpu") == first and len(loads) == 4
    finally:
        os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    kept = list((tmp_path / "cache" / "model-info").glob("*.json"))
    assert len(kept) == 3 and json.loads(kept[0].read_text())["pipeline_class"] == "StableDiffusionImg2ImgPipeline"


def test_an_unwritable_cache_still_describes(tiny_model_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("IMG2IMG_LAB_CACHE_DIR", str(blocker))
    assert describe_model(tiny_model_dir, device="cpu")["family"] == "sd"


@pytest.mark.parametrize("text", ["{not json", ""])
def test_a_damaged_description_is_made_anew(tiny_model_dir, tmp_path, monkeypatch, text):
    monkeypatch.setenv("IMG2IMG_LAB_CACHE_DIR", str(tmp_path / "cache"))
    first = describe_model(tiny_model_dir, device="cpu")
    (kept,) = (tmp_path / "cache" / "model-info").glob("*.json")
    kept.write_text(text)
    assert describe_model(tiny_model_dir, device="cpu") == first
    assert json.loads(kept.read_text()) == first
