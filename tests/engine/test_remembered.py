"""A per-cell sweep encodes each prompt and each source once (engine/remembered.py), stays bit-identical to plain
calls (every family: tests/models/test_families.py) and leaves the pipeline as it found it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from img2img_lab.engine.remembered import remembered_encodings
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.sweep.run import run_sweep
from img2img_lab.testing import make_tiny_family


@pytest.fixture(scope="module")
def sd3():
    torch.manual_seed(0)
    return make_tiny_family("sd3")


def _count_forwards(module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_a_per_cell_sweep_encodes_each_prompt_and_source_once(sd3, tmp_path):
    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(source)
    t5, vae_encoder = _count_forwards(sd3.text_encoder_3), _count_forwards(sd3.vae.encoder)
    plan = SweepPlan(images=[str(source)], prompts=["a red cat", "a blue dog"], strengths=[0.5, 1.0], seeds=[0, 1],
                     guidance_scales=[3.0], steps=[2], max_side=None)
    table = run_sweep(plan, tmp_path / "run", pipe=sd3, engine="per-cell", metrics=[], progress=False)
    floor_passes = 1  # the floor's VAE round trip, before generation
    # 8 cells: a plain loop runs T5 16 times (prompt and negative each call) and the VAE encoder 8 times.
    assert (len(table), len(t5), len(vae_encoder)) == (8, 2 * 2, 1 + floor_passes)
    assert "encode_prompt" not in vars(sd3) and "encode" not in vars(sd3.vae)  # given back after the sweep
    image = Image.open(source).convert("RGB")
    row = table[(table.prompt == "a blue dog") & (table.strength == 0.5) & (table.seed == 1)].iloc[0]
    plain = sd3(image=image, prompt="a blue dog", strength=0.5, num_inference_steps=2, guidance_scale=3.0,
                height=32, width=32, generator=torch.Generator("cpu").manual_seed(1)).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "run" / row["output_path"]).convert("RGB")),
                          np.asarray(plain))


def test_an_answer_changed_in_place_does_not_change_the_next(sd3):
    with remembered_encodings([sd3]) as memo:
        first = sd3.encode_prompt("a red cat", None, None, device="cpu", do_classifier_free_guidance=False)
        kept = first[0].clone()
        first[0].mul_(0)
        second = sd3.encode_prompt("a red cat", None, None, device="cpu", do_classifier_free_guidance=False)
    assert memo.answered["encode_prompt"] == 1 and torch.equal(second[0], kept)


def test_a_call_with_tensors_goes_through_and_an_error_undoes_the_wrapping(sd3):
    embeds = torch.zeros(1, 4, 32)
    with pytest.raises(RuntimeError, match="stop"):
        with remembered_encodings([sd3]) as memo:
            for _ in range(2):
                sd3.encode_prompt(None, None, None, prompt_embeds=embeds, pooled_prompt_embeds=torch.zeros(1, 64),
                                  device="cpu", do_classifier_free_guidance=False)
            raise RuntimeError("stop")
    assert memo.calls["encode_prompt"] == 2 and memo.answered["encode_prompt"] == 0
    assert "encode_prompt" not in vars(sd3) and "encode" not in vars(sd3.vae)
