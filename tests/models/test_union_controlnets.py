"""Union ControlNets (SDXL's ControlNet++ ``ControlNetUnionModel``, FLUX.1's ``num_mode`` ControlNet): the
``control_modes`` axis under ``control:`` gives each control image's mode. Every cell equals the plain diffusers call
with ``control_mode`` (per cell bit for bit, batched within one level), the mode is keyed, tabled and
labelled, and every misfit is refused in one line before anything is written. (Before, every union ControlNet was
refused.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import structured_image
from img2img_lab.errors import PlanError
from img2img_lab.metrics.edges import edge_map
from img2img_lab.models.handle import as_model
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.sweep.run import run_sweep
from img2img_lab.testing import make_tiny_family, make_tiny_variant

STEPS = 4


@pytest.fixture(scope="module")
def source_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("union-source")
    structured_image(32).save(folder / "source.png")
    silhouette = np.zeros((32, 32), np.uint8)
    silhouette[8:24, 8:24] = 255
    (folder / "maps").mkdir()
    Image.fromarray(np.stack([silhouette] * 3, -1), mode="RGB").save(folder / "maps" / "source.png")
    return folder


def _controls(source_files) -> tuple[Image.Image, list[Image.Image]]:
    """The source and the two control images the plans below name: its Canny edges and the ``maps/`` file."""
    source = Image.open(source_files / "source.png").convert("RGB")
    canny = Image.fromarray(np.stack([edge_map(source).astype(np.uint8) * 255] * 3, -1), mode="RGB")
    return source, [canny, Image.open(source_files / "maps" / "source.png").convert("RGB")]


def _plan(source_files, control: dict, strengths=(0.5, 1.0)) -> SweepPlan:
    return SweepPlan(images=[str(source_files / "source.png")], prompts=["p"], strengths=list(strengths),
                     steps=[STEPS], max_side=None, schedulers=["default"], control=control)


def _stored(run, row) -> np.ndarray:
    return np.asarray(Image.open(run / row["output_path"]).convert("RGB"), np.int16)


def _plain(pipe, source, strength, **arguments) -> np.ndarray:
    if "height" in arguments or type(pipe).__name__.startswith("Flux"):
        arguments.update(height=source.height, width=source.width)
    image = pipe(image=source, prompt="p", strength=strength, num_inference_steps=STEPS, guidance_scale=7.5,
                 generator=torch.Generator("cpu").manual_seed(0), **arguments).images[0]
    return np.asarray(image, np.int16)


def test_sdxl_controlnet_union_takes_a_mode_per_control_image(source_files, tmp_path):
    """ControlNet++ with two maps: ``control_modes: [[3, 1], "3,2"]`` are two settings of the pair; each cell is the
    plain call with ``control_mode=[3, 1]`` (or ``[3, 2]``): per cell bit for bit, batched within one level; the two
    settings give other images."""
    from img2img_lab.sweep.verify import verify_run

    pipe = make_tiny_family("sdxl-controlnet-union")
    plan = _plan(source_files, {"image": ["canny", str(source_files / "maps")], "control_modes": [[3, 1], "3,2"]})
    tables = {engine: run_sweep(plan, tmp_path / engine, pipe=pipe, progress=False, engine=engine)
              for engine in ("per-cell", "batched")}
    table = tables["per-cell"]
    assert sorted(table.control_mode.unique()) == ["3,1", "3,2"] and table.cell_key.nunique() == 4
    assert set(tables["batched"].engine) == {"batched"}
    source, controls = _controls(source_files)
    as_model(pipe).use_scheduler("default")
    plain = {}
    for row in table.to_dict("records"):
        modes = [int(mode) for mode in row["control_mode"].split(",")]
        plain[row["control_mode"], row["strength"]] = _plain(pipe, source, row["strength"], control_image=controls,
                                                             control_mode=modes)
        assert np.array_equal(_stored(tmp_path / "per-cell", row), plain[row["control_mode"], row["strength"]])
    for row in tables["batched"].to_dict("records"):
        assert np.abs(_stored(tmp_path / "batched", row) - plain[row["control_mode"], row["strength"]]).max() <= 1
    assert np.abs(plain["3,1", 1.0] - plain["3,2", 1.0]).max() > 8  # the modes reach the ControlNet
    assert {cell.label().split(" · ")[-1] for cell in plan.cells()} == {"control mode 3,1", "control mode 3,2"}
    victim = tmp_path / "per-cell" / table.output_path.iloc[0]
    expected = victim.read_bytes()
    victim.unlink()
    assert verify_run(tmp_path / "per-cell", sample=0, pipe=pipe, repair=True).ok and victim.read_bytes() == expected


def test_flux_union_controlnet_runs_batched_within_one_level_and_per_cell_exactly(source_files, tmp_path):
    """FLUX.1's union ControlNet (one map, InstantX-style): each mode a cell, batched (one transformer call per step
    for all of them) within one level of the plain call, per cell bit for bit."""
    pipe = make_tiny_variant("flux-controlnet-union")
    plan = _plan(source_files, {"image": "canny", "control_modes": [0, 2], "conditioning_scales": [0.5]})
    tables = {engine: run_sweep(plan, tmp_path / engine, pipe=pipe, progress=False, engine=engine)
              for engine in ("per-cell", "batched")}
    source, controls = _controls(source_files)
    plain = {}
    for row in tables["per-cell"].to_dict("records"):
        key = (row["control_mode"], row["strength"])
        plain[key] = _plain(pipe, source, row["strength"], control_image=controls[0], control_mode=int(key[0]),
                            controlnet_conditioning_scale=0.5)
        assert np.array_equal(_stored(tmp_path / "per-cell", row), plain[key]), key
    for row in tables["batched"].to_dict("records"):
        assert np.abs(_stored(tmp_path / "batched", row) - plain[row["control_mode"], row["strength"]]).max() <= 1
    assert any(np.abs(plain["0", strength] - plain["2", strength]).max() > 0 for strength in (0.5, 1.0))


def test_flux_union_controlnet_in_a_list_of_one_takes_several_maps(source_files, tmp_path):
    """diffusers' way to give FLUX.1's union ControlNet several maps: a ``FluxMultiControlNetModel`` of it alone, a
    mode and a scale per map. Run per cell, each cell is that plain call bit for bit."""
    pipe = make_tiny_variant("flux-controlnet-union-list")
    plan = _plan(source_files, {"image": ["canny", str(source_files / "maps")], "control_modes": [[0, 2]],
                                "conditioning_scales": [0.5]}, strengths=(0.5,))
    table = run_sweep(plan, tmp_path / "run", pipe=pipe, progress=False)
    source, controls = _controls(source_files)
    expected = _plain(pipe, source, 0.5, control_image=controls, control_mode=[0, 2],
                      controlnet_conditioning_scale=[0.5, 0.5])
    assert np.array_equal(_stored(tmp_path / "run", table.iloc[0]), expected)
    assert len(table.control_hash.iloc[0].split("+")) == 2


def test_control_modes_are_checked_against_the_controlnets_before_anything_is_written(source_files, tmp_path):
    from diffusers import FluxControlNetModel, FluxMultiControlNetModel

    union = make_tiny_family("sdxl-controlnet-union")
    cases = [  # (plan's control, pipeline, the error)
        ({"image": "canny"}, union, "holds a union ControlNet, which needs the mode of each control image (the kind "
                                    "of map it is: see the ControlNet's model card). Fix: add e.g. control_modes: "
                                    "[3] to control:."),
        ({"image": ["canny", "canny"], "control_modes": [3]}, union,
         "control_modes value '3' names 1 mode but control: image names 2 control images per source. Fix: one mode "
         "per control image, in its order: e.g. control_modes: [[3, 1]]."),
        ({"image": "canny", "control_modes": [None, 3]}, union, "holds a union ControlNet, which needs the mode of "
                                                                "each control image"),  # was an AttributeError
        ({"image": "canny", "control_modes": [4]}, union,
         "control_modes value '4': mode 4 is not one the ControlNet knows (it has modes 0 to 3)."),
        ({"image": "canny", "control_modes": [1]}, make_tiny_family("sdxl-controlnet"),
         "StableDiffusionXLControlNetImg2ImgPipeline's ControlNet has a single mode, so control_modes would give "
         "identical images. Fix: remove control_modes from control:"),
        ({"image": ["canny", "canny"], "control_modes": [[0, 1]]}, make_tiny_variant("flux-controlnet-union"),
         "holds 1 ControlNet but control: image names 2 control images per source."),
    ]
    flux = make_tiny_family("flux-controlnet")  # a single-mode ControlNet beside a union one
    settings = {key: value for key, value in flux.controlnet.config.items() if not key.startswith("_")}
    flux.controlnet = FluxMultiControlNetModel([flux.controlnet, FluxControlNetModel(**{**settings, "num_mode": 4})])
    cases.append(({"image": ["canny", "canny"], "control_modes": [[0, 1]]}, flux,
                  "FluxControlNetImg2ImgPipeline mixes union and single-mode ControlNets"))
    for index, (control, pipe, message) in enumerate(cases):
        with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            run_sweep(_plan(source_files, control), tmp_path / str(index), pipe=pipe, progress=False)
        assert not (tmp_path / str(index)).exists()


@pytest.mark.parametrize("value", ["a", -1, True, [], [1.5], "3,,1"])
def test_a_control_mode_that_is_not_whole_numbers_is_one_line(value):
    with pytest.raises(PlanError, match=r"must be a union ControlNet's mode \(a whole number >= 0\) or a list of "
                                        r"them, one per control image. Fix: e.g. control_modes: \[3\]"):
        SweepPlan.from_dict({"images": ["a.png"], "prompts": ["p"], "strengths": [0.5],
                             "control": {"image": "canny", "control_modes": [value]}})


def test_control_modes_read_as_one_value_per_setting():
    """A scalar is one setting, a list of numbers one setting each, a list in the list one mode per control image."""
    def modes(value):
        plan = SweepPlan.from_dict({"images": ["a.png"], "prompts": ["p"], "strengths": [0.5],
                                    "control": {"image": ["canny", "canny"], "control_modes": value}})
        return plan.control["control_modes"], [cell.control_mode for cell in plan.cells()]

    assert modes(3) == (["3"], ["3"])
    assert modes([3, 1]) == (["3", "1"], ["3", "1"])
    assert modes([[3, 1]]) == (["3,1"], ["3,1"])
    record = SweepPlan.from_dict({"images": ["a.png"], "prompts": ["p"], "strengths": [0.5],
                                  "control": {"image": "canny", "control_modes": [[3]]}}).to_dict()
    assert SweepPlan.from_dict(record).control["control_modes"] == ["3"]  # a record reads back
