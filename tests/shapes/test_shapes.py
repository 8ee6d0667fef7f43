"""The shapes world: generator, oracle (>= 99% exact), tokenizer, VAE whitening, training smoke test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import img2img_lab  # noqa: F401
from img2img_lab.errors import Img2ImgLabError
from img2img_lab.images.hashes import content_hash
from img2img_lab.metrics.measure import measure_pair
from img2img_lab.metrics.registry import METRICS, load_plugins
from img2img_lab.shapes import oracle
from img2img_lab.shapes.tokenizer import WORDS, build_merges, build_tokenizer
from img2img_lab.shapes.world import (
    COLOURS,
    SAMPLE_SCENES,
    SHAPES,
    Scene,
    all_combinations,
    caption,
    make_dataset,
    parse_caption,
    render,
)

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_world_is_seeded_and_captions_round_trip():
    a_images, a_captions, a_scenes = make_dataset(50, seed=7)
    b_images, b_captions, _ = make_dataset(50, seed=7)
    assert np.array_equal(a_images, b_images) and a_captions == b_captions
    assert not np.array_equal(a_images, make_dataset(50, seed=8)[0])
    for text, scene in zip(a_captions, a_scenes):
        assert parse_caption(text) == scene.attributes()
        assert scene.colour != scene.background
    assert len(all_combinations()) == 120
    assert len({scene.shape for scene in make_dataset(200, seed=1)[2]}) == len(SHAPES)


def test_render_draws_the_scene():
    image = render(Scene("square", "red", "white", 0.5, 0.5, 0.3, 0.0))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert tuple(image[32, 32]) == COLOURS["red"] and tuple(image[1, 1]) == COLOURS["white"]
    edge = image[32, 18:20]  # anti-aliased boundary of the square (|x - 32| = 0.3 * 64 / sqrt(2) * ...)
    assert len({tuple(pixel) for pixel in image.reshape(-1, 3)}) > 2  # anti-aliasing makes in-between colours


def test_parse_caption_rejects_other_text():
    with pytest.raises(Img2ImgLabError, match=r"not a shapes-world prompt"):
        parse_caption("a photo of a cat")
    with pytest.raises(Img2ImgLabError, match=r"not a shapes-world prompt"):
        parse_caption("a purple star on a blue background")


def test_oracle_is_exact_on_clean_images():
    images, _, scenes = make_dataset(600, seed=99)
    correct = sum(oracle.read_image(image).attributes() == scene.attributes() for image, scene in zip(images, scenes))
    assert correct / len(scenes) >= 0.99, correct
    readings = [oracle.read_image(image) for image in images[:100]]
    assert all(0.0 <= reading.confidence <= 1.0 for reading in readings)
    assert np.mean([reading.confidence for reading in readings]) > 0.3


def test_oracle_survives_mild_noise_and_reports_missing_shapes():
    rng = np.random.default_rng(0)
    images, _, scenes = make_dataset(100, seed=5)
    noisy = np.clip(images + rng.normal(0, 12, images.shape), 0, 255).astype(np.uint8)
    correct = sum(oracle.read_image(image).attributes() == scene.attributes() for image, scene in zip(noisy, scenes))
    assert correct >= 95
    plain = np.zeros((64, 64, 3), np.uint8) + np.array(COLOURS["blue"], np.uint8)
    reading = oracle.read_image(plain)
    assert reading.attributes() == (None, None, "blue") and reading.shape_confidence == 0.0


def test_oracle_metrics_through_the_registry():
    source = render(Scene("circle", "red", "blue"))
    same_but_background = render(Scene("circle", "red", "white"))
    load_plugins()  # the oracle is a built-in plugin, loaded on first use
    assert {"oracle_adherence", "oracle_match", "oracle_preservation", "oracle_kept"} <= set(METRICS)
    values = measure_pair(source, same_but_background, ["oracle_preservation", "oracle_kept", "oracle_adherence",
                                                        "oracle_match"], prompt="a red circle on a white background")
    assert values == {"oracle_preservation": pytest.approx(2 / 3), "oracle_kept": 0.0, "oracle_adherence": 1.0,
                      "oracle_match": 1.0}
    not_world = measure_pair(source, source, ["oracle_adherence"], prompt="a watercolor teapot")
    assert np.isnan(not_world["oracle_adherence"])


def test_tokenizer_makes_every_word_one_token():
    tokenizer = build_tokenizer()
    for word in WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    ids = tokenizer("A Yellow Triangle on a green background").input_ids
    assert len(ids) == 9 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(tokenizer("a purple cat").input_ids) > 4  # unknown words still tokenize (by character)
    assert tokenizer.model_max_length == 16
    # the trap the simulation avoids: merges made for "red" must not split "green"
    merges = build_merges(["red", "green", "yellow"])
    assert len(merges) == len(set(merges))


def test_sample_sources_are_the_world_renderings():
    for name, scene in SAMPLE_SCENES.items():
        path = REPO / "data" / "sources" / f"{name}.png"
        assert content_hash(Image.open(path)) == content_hash(render(scene)), name
        assert oracle.read_image(Image.open(path)).attributes() == scene.attributes()


def test_example_configs_parse_and_point_at_real_files():
    from img2img_lab.calibration.procedure import load_config
    from img2img_lab.plan.sweep_plan import SweepPlan

    configs = sorted((REPO / "data" / "configs").glob("*.yaml"))
    assert {path.stem for path in configs} >= {"demo", "quick", "guidance", "calibrate"}
    for path in configs:
        plan = load_config(path)[0] if "calibration:" in path.read_text() else SweepPlan.from_yaml(path)
        assert all(__import__("pathlib").Path(image).is_file() for image in plan.images), path
    demo = SweepPlan.from_yaml(REPO / "data" / "configs" / "demo.yaml")
    assert len(demo.cells()) == 2 * 2 * 8 * 3


def test_whitening_keeps_reconstructions_and_balances_channels():
    from diffusers import AutoencoderKL

    from img2img_lab.shapes.train import whiten_vae_latents

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, layers_per_block=1,
                        mid_block_add_attention=False)
    pixels = torch.rand(8, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(pixels).latent_dist.mean).sample
        std_before = vae.encode(pixels).latent_dist.std
    centre, spread = whiten_vae_latents(vae, pixels)
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        after = vae.decode(posterior.mean).sample
    assert (before - after).abs().max() < 1e-4
    assert torch.allclose(posterior.mean.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(posterior.mean.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4)
    assert torch.allclose(posterior.std, std_before / spread[None, :, None, None], rtol=1e-4)


def test_training_smoke_stop_resume_export(tmp_path):
    """A few steps at tiny sizes through the real training code: stop at a deadline, resume, export, load."""
    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.shapes.train import TrainConfig, Trainer

    config = TrainConfig(dataset_size=48, vae_steps=4, vae_batch_size=4, unet_steps=4, batch_size=4,
                         vae_channels=(8, 16, 32), unet_channels=(16, 32, 64), text_hidden=32, checkpoint_every=2,
                         log_every=1, warmup_steps=2)
    out = tmp_path / "model"
    stopped = Trainer(out, config, device="cpu", minutes=1e-9, progress=False).run(resume=False)
    assert stopped == {"complete": False} and (out / ".checkpoint" / "state.pt").is_file()
    report = Trainer(out, config, device="cpu", minutes=None, progress=False).run(resume=True)
    assert report["complete"] and report["vae_steps"] == 4 and report["unet_steps"] == 4
    assert not (out / ".checkpoint").exists()
    assert report["latent_channel_std"] == pytest.approx([1.0] * 4, abs=0.05)
    log = (out / "train_log.csv").read_text().splitlines()
    assert log[0] == "phase,step,loss,lr,elapsed_s" and sum(line.startswith("unet,") for line in log) == 4
    training = json.loads((out / "training.json").read_text())
    assert training["config"]["mismatch_below_t"] == 200
    pipe = load_pipeline(str(out), device="cpu")
    assert pipe.unet.dtype == torch.float32  # stored in fp16, loaded as fp32 on the CPU
    image = pipe(image=Image.fromarray(render(Scene("circle", "red", "blue"))), prompt="a red circle on a blue background",
                 strength=0.5, num_inference_steps=4, generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert image.size == (64, 64)
