"""Will it fit (issue #39): a model's parameters and the memory its weights need per dtype, from its configs alone
(a folder, a hub id's config files, a bundled architecture), the memory here, and the settings recommended."""

from __future__ import annotations

import json

import pytest

from img2img_lab.cli.main import main
from img2img_lab.models.fit import fit_report, recommend


def test_a_folder_s_parameters_are_counted_from_its_configs_exactly(tiny_model_dir):
    from img2img_lab.models.loading import load_model

    report = fit_report(str(tiny_model_dir))
    loaded = load_model(str(tiny_model_dir), device="cpu").pipe
    expected = {name: sum(p.numel() for p in getattr(loaded, name).parameters()) for name in ("unet", "vae",
                                                                                              "text_encoder")}
    assert {name: entry["parameters"] for name, entry in report["components"].items()} == expected
    assert report["bytes"]["float32"] == 4 * report["parameters"] == 2 * report["bytes"]["float16"]


def test_the_bundled_architectures_are_counted_without_memory():
    counts = {name: fit_report(name)["parameters"] // 10**6 for name in ("sd15", "sdxl", "sd35-medium",
                                                                           "flux-dev-reduced")}
    assert counts == {"sd15": 1066, "sdxl": 3468, "sd35-medium": 3662, "flux-dev-reduced": 2034}


@pytest.mark.parametrize("free, offload", [(40e9, "none"), (9e9, "model"), (3e9, "sequential")])
def test_a_gpu_gets_half_precision_and_offload_by_what_fits(free, offload):
    report = {"pipeline": "StableDiffusionXLImg2ImgPipeline",
              "bytes": {"float16": 7e9, "bfloat16": 7e9, "float32": 14e9},
              "largest_component": {"float16": 5.1e9, "bfloat16": 5.1e9, "float32": 10.2e9},
              "here": {"device": "cuda", "name": "a GPU", "free": free, "total": 48e9}}
    advice = recommend(report)
    assert (advice["dtype"], advice["offload"], advice["memory_budget"]) == ("float16", offload, "auto")
    flux = recommend({**report, "pipeline": "FluxImg2ImgPipeline"})
    assert flux["dtype"] == "bfloat16"


def test_a_cpu_that_cannot_hold_the_weights_is_told_so():
    report = {"pipeline": "StableDiffusionXLImg2ImgPipeline", "bytes": {"float32": 14e9},
              "largest_component": {"float32": 10e9}, "here": {"device": "cpu", "name": "CPU", "free": 8e9,
                                                               "total": None}}
    advice = recommend(report)
    assert advice["fits"] is False and "will not fit here" in advice["why"] and advice["offload"] == "none"


def test_doctor_fit_prints_a_screen_and_json_and_one_line_for_a_model_it_cannot_read(tiny_model_dir, capsys):
    assert main(["doctor", "--fit", str(tiny_model_dir)]) == 0
    screen = capsys.readouterr().out
    assert screen.startswith(f"will it fit: {tiny_model_dir}") and "recommends: dtype float32" in screen
    assert main(["doctor", "--fit", "sd15", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["components"]["unet"]["parameters"] == 859_520_964
    assert main(["doctor", "--fit", "nobody/not-cached-anywhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in the Hugging Face cache" in err[0]
