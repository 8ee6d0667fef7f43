"""The batched engine with masks and control images (Stable Diffusion's and SDXL's ControlNet img2img, inpainting
and ControlNet inpainting, 4- and 9-channel, with PAG too, pooled (guess-mode) ControlNets, two ControlNets and
union ControlNets;
FLUX.1 Control and ControlNet img2img and inpainting, InstantX- and XLabs-style and two of them; SD3 (16- and
33-channel), FLUX.1, Chroma, Qwen-Image and Z-Image inpainting): every cell within one level of the plain call with
the same arguments (float32), the mask blurred and the source pasted back as the per-cell runner does; cells cropped
around their mask batched on their crops (the control image cropped too where the pipeline crops it)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import structured_image
from img2img_lab.engine.batched import batching_supported, run_cells_batched
from img2img_lab.engine.per_cell import run_cell
from img2img_lab.engine.runners import run_chunk
from img2img_lab.models.handle import as_model
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.sweep.sources import source_steps
from img2img_lab.testing import make_tiny_family, make_tiny_variant


def _difference(a, b) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def _mask(offset: int) -> Image.Image:
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (4 + offset, 8, 24, 28))
    return mask


CASES = {  # family -> (scheduler, the plan's mode and its condition settings, the condition per source)
    "sd-controlnet": ("euler_a", {"control": {"image": "c.png", "conditioning_scales": [0.5],
                                              "guidance_ends": [0.6]}},
                      lambda index: {"control_image": structured_image(32, seed=7 + index)}),
    "sd-inpaint": ("euler_a", {"modes": ["inpaint"], "inpaint": {"mask": "m.png", "composite": [True],
                                                                  "mask_blur": [3]}},
                   lambda index: {"mask_image": _mask(4 * index)}),
    "sd-inpaint-9": ("dpmpp_2m", {"modes": ["inpaint"], "inpaint": {"mask": "m.png"}},
                     lambda index: {"mask_image": _mask(4 * index)}),
    "sd-controlnet-inpaint": ("dpmpp_2m", {"modes": ["inpaint"], "inpaint": {"mask": "m.png", "composite": [True]},
                                           "control": {"image": "c.png", "guidance_ends": [0.6]}},
                              lambda index: {"mask_image": _mask(4 * index),
                                             "control_image": structured_image(32, seed=7 + index)}),
    "sd-controlnet-inpaint-9": ("euler_a", {"modes": ["inpaint"], "inpaint": {"mask": "m.png"},
                                             "control": {"image": "c.png", "conditioning_scales": [0.7]}},
                                lambda index: {"mask_image": _mask(4 * index),
                                               "control_image": structured_image(32, seed=7 + index)}),
    "sdxl-controlnet": ("dpmpp_2m", {"control": {"image": "c.png", "guidance_starts": [0.2]}},
                        lambda index: {"control_image": structured_image(32, seed=7 + index)}),
    "sdxl-controlnet-inpaint": ("euler", {"modes": ["inpaint"], "inpaint": {"mask": "m.png"},
                                          "control": {"image": "c.png", "guidance_starts": [0.2]}},
                                lambda index: {"mask_image": _mask(4 * index),
                                               "control_image": structured_image(32, seed=7 + index)}),
    "sdxl-inpaint": ("euler", {"modes": ["inpaint"], "inpaint": {"mask": "m.png"}},
                     lambda index: {"mask_image": _mask(4 * index)}),
    "sd-pag-inpaint": ("euler_a", {"modes": ["inpaint"], "inpaint": {"mask": "m.png", "mask_blur": [2]}},
                       lambda index: {"mask_image": _mask(4 * index)}),
    "sd-pag-inpaint-9": ("ddim", {"modes": ["inpaint"], "inpaint": {"mask": "m.png"}},
                         lambda index: {"mask_image": _mask(4 * index)}),
    "sd-controlnet-pag-inpaint": ("dpmpp_2m", {"modes": ["inpaint"], "inpaint": {"mask": "m.png"},
                                               "control": {"image": "c.png", "guidance_ends": [0.6]}},
                                  lambda index: {"mask_image": _mask(4 * index),
                                                 "control_image": structured_image(32, seed=7 + index)}),
    "sdxl-pag-inpaint": ("euler", {"modes": ["inpaint"], "inpaint": {"mask": "m.png", "composite": [True]}},
                         lambda index: {"mask_image": _mask(4 * index)}),
    "sdxl-controlnet-pag": ("euler_a", {"control": {"image": "c.png", "conditioning_scales": [0.6],
                                                    "guidance_starts": [0.2]}},
                            lambda index: {"control_image": structured_image(32, seed=7 + index)}),
    "sd3-inpaint": ("default", {"modes": ["inpaint"], "inpaint": {"mask": "m.png", "mask_blur": [2]}},
                    lambda index: {"mask_image": _mask(4 * index)}),
    "flux-inpaint": ("default", {"modes": ["inpaint"], "inpaint": {"mask": "m.png", "mask_blur": [3]}},
                     lambda index: {"mask_image": _mask(4 * index)}),
    "flux-control": ("default", {"control": {"image": "c.png"}},
                     lambda index: {"control_image": structured_image(32, seed=7 + index)}),
    "flux-control-inpaint": ("default", {"modes": ["inpaint"], "inpaint": {"mask": "m.png", "mask_blur": [2]},
                                         "control": {"image": "c.png"}},
                             lambda index: {"mask_image": _mask(4 * index),
                                            "control_image": structured_image(32, seed=7 + index)}),
    "flux-controlnet": ("default", {"control": {"image": "c.png", "conditioning_scales": [0.6],
                                                "guidance_ends": [0.5]}},
                        lambda index: {"control_image": structured_image(32, seed=7 + index)}),
    "flux-controlnet-inpaint": ("default", {"modes": ["inpaint"], "inpaint": {"mask": "m.png", "mask_blur": [2]},
                                            "control": {"image": "c.png", "conditioning_scales": [0.6],
                                                        "guidance_starts": [0.2]}},
                                lambda index: {"mask_image": _mask(4 * index),
                                               "control_image": structured_image(32, seed=7 + index)}),
    "chroma-inpaint": ("default", {"modes": ["inpaint"], "inpaint": {"mask": "m.png", "composite": [True]}},
                       lambda index: {"mask_image": _mask(4 * index)}),
    "qwenimage-inpaint": ("default", {"modes": ["inpaint"], "inpaint": {"mask": "m.png"}},
                          lambda index: {"mask_image": _mask(4 * index)}),
    "zimage-inpaint": ("default", {"modes": ["inpaint"], "inpaint": {"mask": "m.png", "mask_blur": [2]}},
                       lambda index: {"mask_image": _mask(4 * index)}),
}
CASES["flux-controlnet-xlabs"] = CASES["flux-controlnet"]  # an input hint block reads the control pixels
CASES["flux-controlnet-inpaint-xlabs"] = CASES["flux-controlnet-inpaint"]
CASES["sdxl-controlnet-multi"] = ("euler_a", {"control": {"image": ["c.png", "d.png"], "guidance_ends": [0.6]}},
                                  lambda index: {"control_image": [structured_image(32, seed=7 + index),
                                                                   structured_image(32, seed=9 + index)]})
CASES["sd3-inpaint-33"] = CASES["sd3-inpaint"]  # the mask and the masked source as channels
CASES["flux-controlnet-multi"] = ("default", {"control": {"image": ["c.png", "d.png"], "conditioning_scales": [0.6],
                                                           "guidance_ends": [0.5]}},
                                  CASES["sdxl-controlnet-multi"][2])
CASES["flux-controlnet-inpaint-multi"] = ("default", {"modes": ["inpaint"], "inpaint": {"mask": "m.png"},
                                                      "control": {"image": ["c.png", "d.png"],
                                                                  "guidance_starts": [0.2]}},
                                          lambda index: {"mask_image": _mask(4 * index),
                                                         **CASES["sdxl-controlnet-multi"][2](index)})
CASES["sd-controlnet-pooled"] = CASES["sd-controlnet"]  # guess mode: the negative sample takes no residuals
CASES["sd-controlnet-inpaint-pooled"] = CASES["sd-controlnet-inpaint"]  # guess mode, the ControlNet on 4 channels
CASES["sdxl-controlnet-inpaint-pooled"] = CASES["sdxl-controlnet-inpaint"]  # pooled, but never guess mode
# Union ControlNets: ControlNet++ with two maps (the guidance window makes the samples' scales differ: one ControlNet
# call per scale) and with one map while inpainting; FLUX.1's with one map.
CASES["sdxl-controlnet-union"] = ("euler_a", {"control": {"image": ["c.png", "d.png"], "control_modes": [[3, 1]],
                                                          "guidance_ends": [0.6]}}, CASES["sdxl-controlnet-multi"][2])
CASES["sdxl-controlnet-union-inpaint"] = ("euler", {"modes": ["inpaint"], "inpaint": {"mask": "m.png"},
                                                    "control": {"image": "c.png", "control_modes": [2],
                                                                "guidance_starts": [0.2]}},
                                          CASES["sdxl-controlnet-inpaint"][2])
CASES["flux-controlnet-union"] = ("default", {"control": {"image": "c.png", "control_modes": [1],
                                                          "conditioning_scales": [0.6], "guidance_ends": [0.5]}},
                                  CASES["flux-controlnet"][2])


@pytest.mark.parametrize("family", list(CASES))
def test_batched_conditions_equal_plain_calls_within_one_level(family, capsys):
    pipe = make_tiny_variant(family)
    model = as_model(pipe)
    scheduler, settings, condition_of = CASES[family]
    assert batching_supported(model)[0]
    sources = [structured_image(32, seed=0), structured_image(32, seed=3)]
    conditions = [condition_of(index) for index in range(2)]
    plan = SweepPlan(images=["a.png", "b.png"], prompts=["a red disc"], strengths=[0.05, 0.5, 1.0], seeds=[0, 1],
                     guidance_scales=[1.0, 3.5], steps=[4], schedulers=[scheduler], **settings)
    cells = plan.cells(steps=source_steps(model, sources))  # the model's own strength rule (FLUX.1: N·s, no int)
    stats = {}
    batched = run_cells_batched(model, cells, sources, stats=stats, max_batch_size=16, conditions=conditions)
    worst = max(_difference(output.image, run_cell(pipe, cell, sources[cell.image_index],
                                                   condition=conditions[cell.image_index]).image)
                for cell, output in zip(cells, batched))
    with capsys.disabled():
        print(f"\n[batched conditions] {family}: {len(cells)} cells, max |batched - plain call| = {worst}/255, "
              f"{stats['unet_calls']} UNet calls for {stats['unet_samples']} samples")
    assert worst <= 1 and stats["unet_calls"] < stats["unet_samples"] / 4
    from img2img_lab.engine.batch_limits import sample_footprints

    assert min(sample_footprints(model, sources[0])) >= 1  # a memory budget can size these batches too


def test_guess_mode_runs_the_controlnet_on_positive_samples_and_a_negative_only_call_takes_none():
    """Guess mode (a pooled ControlNet): the ControlNet runs on the positive samples alone, and a call holding only
    negative samples (one sample per call here) adds no residuals, as the pipeline adds zeros."""
    pipe = make_tiny_variant("sd-controlnet-pooled")
    model, calls = as_model(pipe), []
    pipe.controlnet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    sources, conditions = [structured_image(32, seed=0)], [CASES["sd-controlnet"][2](0)]
    plan = SweepPlan(images=["a.png"], prompts=["a red disc"], strengths=[0.5, 1.0], guidance_scales=[3.5], steps=[4],
                     schedulers=["euler_a"], control={"image": "c.png"})
    cells, stats, seen = plan.cells(), {}, {}
    for limit in (1, 16):
        calls.clear()
        outputs = run_cells_batched(model, cells, sources, max_batch_size=limit, conditions=conditions, stats=stats)
        seen[limit] = list(calls)
        assert max(_difference(output.image, run_cell(pipe, cell, sources[0], condition=conditions[0]).image)
                   for cell, output in zip(cells, outputs)) <= 1
    # strength 1 runs 4 steps, 0.5 the last 2: one positive sample at the first two, two at the last two
    assert seen == {1: [1] * 6, 16: [1, 1, 2, 2]} and stats["unet_samples"] == 12


@pytest.mark.parametrize("family", ["sd-inpaint", "flux-inpaint"])
def test_cells_cropped_around_their_mask_run_batched_within_one_level(family, monkeypatch):
    """"Only masked" (``padding_mask_crop``): the cells run batched on each source's crop (one per mask blur) and are
    pasted back as the pipeline pastes them; only the zero-step cells (which never reach the pipeline) run per cell."""
    import img2img_lab.engine.runners as runners

    pipe = make_tiny_variant(family)
    model = as_model(pipe)
    sources, conditions = [structured_image(32, seed=0), structured_image(32, seed=3)], [{"mask_image": _mask(0)},
                                                                                         {"mask_image": _mask(6)}]
    plan = SweepPlan(images=["a.png", "b.png"], prompts=["a red disc"], strengths=[0.05, 0.5], seeds=[0],
                     guidance_scales=[3.0], steps=[4], modes=["inpaint"],
                     inpaint={"mask": "m.png", "padding_mask_crop": [2], "mask_blur": [0, 3]})
    cells = plan.cells(steps=source_steps(model, sources))
    per_cell = []
    monkeypatch.setattr(runners, "run_cell", lambda *args, **kwargs: per_cell.append(args[1]) or run_cell(*args,
                                                                                                         **kwargs))
    outputs = run_chunk(model, cells, sources, conditions, max_batch_size=8)
    worst = max(_difference(output.image, run_cell(pipe, cell, sources[cell.image_index],
                                                   condition=conditions[cell.image_index]).image)
                for cell, output in zip(cells, outputs))
    assert worst <= 1 and per_cell == [cell for cell in cells if cell.zero_step]  # SD: strength 0.05; FLUX.1: none
    uncropped = [cell for cell in SweepPlan(images=["a.png"], prompts=["a red disc"], strengths=[0.5], steps=[4],
                                            modes=["inpaint"], inpaint={"mask": "m.png"}).cells()]
    assert _difference(outputs[1].image, run_cell(pipe, uncropped[0], sources[0], condition=conditions[0]).image) > 8


@pytest.mark.parametrize("family, crops_control", [("sd-controlnet-inpaint", True),
                                                   ("flux-controlnet-inpaint", False)])
def test_cropped_cells_with_a_control_image_take_it_as_their_pipeline_does(family, crops_control, monkeypatch):
    """SD's ControlNet inpainting crops the control image with the source; FLUX.1's resizes it whole and pastes
    nothing back. Both run batched on the crops, within one level; the control image handled the other way is off."""
    import img2img_lab.engine.mask_crop as mask_crop
    import img2img_lab.engine.runners as runners

    pipe = make_tiny_family(family)
    model = as_model(pipe)
    sources = [structured_image(32, seed=0)]
    conditions = [{"mask_image": _mask(0), "control_image": structured_image(32, seed=7)}]
    plan = SweepPlan(images=["a.png"], prompts=["a red disc"], strengths=[0.5, 1.0], guidance_scales=[3.0], steps=[4],
                     modes=["inpaint"], inpaint={"mask": "m.png", "padding_mask_crop": [2]},
                     control={"image": "c.png"}, schedulers=["default"])
    cells, per_cell = plan.cells(steps=source_steps(model, sources)), []
    monkeypatch.setattr(runners, "run_cell", lambda *args, **kwargs: per_cell.append(args[1]) or run_cell(*args,
                                                                                                         **kwargs))
    plain = [run_cell(pipe, cell, sources[0], condition=conditions[0]).image for cell in cells]

    def worst(outputs) -> int:
        return max(_difference(output.image, image) for output, image in zip(outputs, plain))

    assert mask_crop.crops_control_image(pipe) is crops_control
    assert worst(run_chunk(model, cells, sources, conditions, max_batch_size=8)) <= 1 and per_cell == []
    monkeypatch.setattr(mask_crop, "crops_control_image", lambda pipe: not crops_control)
    if not crops_control:  # FLUX.1 has no control-image processor of its own: crop with its image processor
        pipe.control_image_processor = pipe.image_processor
    assert worst(run_chunk(model, cells, sources, conditions, max_batch_size=8)) > 1


def test_cells_planned_with_another_strength_rule_are_refused():
    """FLUX.1 starts strength 0.6 of 4 steps at step 1 (N·s, no int); cells planned with Stable Diffusion's rule say
    step 2. The engine refuses them instead of running them from the wrong step."""
    model = as_model(make_tiny_family("flux-dev"))
    plan = SweepPlan(images=["a.png"], prompts=["a red disc"], strengths=[0.6], steps=[4], schedulers=["default"])
    with pytest.raises(ValueError, match="starts at step 2, but this model's pipeline starts it at 1"):
        run_cells_batched(model, plan.cells(), [structured_image(32)])
