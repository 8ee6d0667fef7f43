"""The committed shapes-world model: loads as the default, is small, documented, and behaves (oracle-checked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from img2img_lab.models.handle import as_model
from img2img_lab.models.loading import EMBEDDED_MODEL_DIR, load_pipeline
from img2img_lab.shapes import oracle
from img2img_lab.shapes.world import SAMPLE_SCENES, caption, render

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedded():
    return load_pipeline(device="cpu")


@pytest.fixture(scope="module")
def card():
    return json.loads((EMBEDDED_MODEL_DIR / "evaluation.json").read_text())


def test_default_model_is_the_committed_shapes_world(embedded, monkeypatch):
    monkeypatch.delenv("IMG2IMG_LAB_MODEL", raising=False)
    info = as_model(embedded).describe()
    assert info["model"] == "embedded:shapes-world"
    assert info["pipeline_class"] == "StableDiffusionImg2ImgPipeline"
    assert info["native_resolution"] == 64 and info["size_multiple"] == 4
    assert info["dtype"] == "float32" and info["scheduler"] == "DDIMScheduler"
    assert Path(as_model(embedded).folder) == EMBEDDED_MODEL_DIR and (EMBEDDED_MODEL_DIR / "model_index.json").is_file()


def test_model_is_small_and_documented(card):
    weights = sum(path.stat().st_size for path in EMBEDDED_MODEL_DIR.rglob("*.safetensors"))
    assert weights <= 25e6
    readme = (EMBEDDED_MODEL_DIR / "README.md").read_text()
    for needle in ("## Training", "python -m img2img_lab.shapes.train", "wall time", "## Evaluation",
                   "## Known limits", "Recommended settings"):
        assert needle in readme, needle
    training = json.loads((EMBEDDED_MODEL_DIR / "training.json").read_text())
    assert training["complete"] and training["unet_steps"] == training["config"]["unet_steps"]
    assert float(card["recommended_guidance"]) > 1


def test_low_strength_keeps_and_high_strength_follows_the_prompt(embedded, card):
    """On the six bundled sources, asked for a different scene: strength 0.1 keeps the source, 1.0 follows."""
    guidance = float(card["recommended_guidance"])
    sources = [Image.fromarray(render(scene)) for scene in SAMPLE_SCENES.values()]
    targets = ["a yellow star on a black background" if scene.shape != "star" else
               "a red square on a white background" for scene in SAMPLE_SCENES.values()]

    def run(strength):
        images = embedded(image=sources, prompt=targets, strength=strength, guidance_scale=guidance,
                          num_inference_steps=20,
                          generator=[torch.Generator("cpu").manual_seed(index) for index in range(len(sources))]).images
        return [oracle.read_image(image).attributes() for image in images]

    low, high = run(0.1), run(1.0)
    kept = sum(seen == scene.attributes() for seen, scene in zip(low, SAMPLE_SCENES.values()))
    reached = sum(seen == oracle.parse_caption(target) for seen, target in zip(high, targets))
    assert kept >= 5, low
    assert reached >= 3, high


def test_demo_writes_grids_curves_and_summary(tmp_path, embedded, capsys):
    from img2img_lab.cli.demo import run_demo

    summary = run_demo(tmp_path / "demo", seeds=[0], strengths=[0.1, 1.0], pipe=embedded, progress=False)
    assert list(summary["strength"]) == [0.1, 1.0] and list(summary["images"]) == [4, 4]
    for name in ("grid_red_circle_on_blue.png", "grid_green_triangle_on_yellow.png", "curves_oracle.png",
                 "curves_ssim.png", "summary.csv", "results.parquet", "manifest.json"):
        assert (tmp_path / "demo" / name).is_file(), name
    low, high = summary.iloc[0], summary.iloc[1]
    assert low["kept_source"] > high["kept_source"] and high["matches_prompt"] > low["matches_prompt"]
    assert low["ssim"] > high["ssim"]
