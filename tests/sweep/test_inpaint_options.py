"""Inpainting as people's tools run it (issue #41): compositing, mask blur and "only masked" as axes, each cell the
plain diffusers call with the same arguments; recorded per cell; repaired and extended from the folder; bad input one
line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import structured_image
from img2img_lab.cli.main import main
from img2img_lab.errors import PlanError
from img2img_lab.models.families.base import call_parameters
from img2img_lab.models.handle import as_model
from img2img_lab.models.loading import load_pipeline
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.store.run_store import RunStore
from img2img_lab.sweep.run import run_sweep
from img2img_lab.testing import save_tiny_family

STEPS = 4
OPTIONS = {"composite": [False, True], "mask_blur": [0, 3], "padding_mask_crop": [None, 2]}


@pytest.fixture(scope="module")
def inpaint_world(tmp_path_factory):
    """A 32 px source, its subject mask (a 12 px square, off centre: a crop is not the whole image) and tiny SD,
    SDXL and FLUX.1 inpainting pipelines saved offline."""
    root = tmp_path_factory.mktemp("inpaint-world")
    structured_image(32).save(root / "source.png")
    subject = np.zeros((32, 32), np.uint8)
    subject[6:18, 10:22] = 255
    (root / "masks").mkdir()
    Image.fromarray(subject, mode="L").save(root / "masks" / "source.png")
    return {"root": root, **{name: save_tiny_family(name, root / name)
                             for name in ("sd-inpaint", "sdxl-inpaint", "flux-inpaint")}}


def _plan(world, repaint="subject", strengths=(0.5, 1.0), **options) -> SweepPlan:
    return SweepPlan(images=[str(world["root"] / "source.png")], prompts=["a red cat"], strengths=list(strengths),
                     guidance_scales=[3.0], steps=[STEPS], max_side=None, modes=["inpaint"],
                     inpaint={"mask": str(world["root"] / "masks"), "repaint": repaint, **options})


def _plain(pipe, source, mask, row) -> np.ndarray:
    """What a user of diffusers types: blur the mask, call the pipeline (its own crop where asked), paste back."""
    if row["mask_blur"]:
        mask = pipe.mask_processor.blur(mask, blur_factor=int(row["mask_blur"]))
    kwargs = dict(image=source, mask_image=mask, prompt="a red cat", strength=row["strength"],
                  num_inference_steps=STEPS, guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(0))
    if not np.isnan(row["padding_mask_crop"]):
        kwargs["padding_mask_crop"] = int(row["padding_mask_crop"])
    if "height" in call_parameters(pipe) and "Flux" in type(pipe).__name__:
        kwargs.update(height=source.height, width=source.width)
    image = pipe(**kwargs).images[0]
    if row["composite"] and "padding_mask_crop" not in kwargs:
        image = pipe.image_processor.apply_overlay(mask, source, image)
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("name", ["sd-inpaint", "sdxl-inpaint", "flux-inpaint"])
def test_every_combination_of_composite_blur_and_crop_is_the_plain_call(inpaint_world, name, tmp_path):
    pipe = load_pipeline(str(inpaint_world[name]), device="cpu", threads=1)
    table = run_sweep(_plan(inpaint_world, **OPTIONS), tmp_path / "run", pipe=pipe, engine="per-cell",
                      progress=False)
    # composite x blur x crop, a crop composited by the pipeline itself: 3 settings per blur, 2 strengths each
    assert len(table) == 12 and table.cell_key.nunique() == 12
    settings = {(row["composite"], row["mask_blur"], None if np.isnan(row["padding_mask_crop"]) else
                 row["padding_mask_crop"]) for row in table.to_dict("records")}
    assert settings == {(False, 0, None), (True, 0, None), (True, 0, 2), (False, 3, None), (True, 3, None),
                        (True, 3, 2)}
    source = Image.open(inpaint_world["root"] / "source.png").convert("RGB")
    mask = Image.open(inpaint_world["root"] / "masks" / "source.png").convert("L")  # repaint: subject (white)
    as_model(pipe).use_scheduler("default")
    worst, stored_by_setting = 0, {}
    for row in table.to_dict("records"):
        stored = np.asarray(Image.open(tmp_path / "run" / row["output_path"]).convert("RGB"), dtype=np.int16)
        worst = max(worst, int(np.abs(stored - _plain(pipe, source, mask, row)).max()))
        stored_by_setting[(row["composite"], row["mask_blur"], row["strength"])] = stored
    print(f"\n[inpaint options] {name}: 12 cells, largest difference from the plain call {worst}/255")
    assert worst <= 1, (name, worst)
    # compositing pastes the source back exactly where the unblurred mask keeps it; without it the decoder moves it
    kept = np.asarray(mask) == 0
    composited = stored_by_setting[(True, 0, 1.0)]
    assert np.array_equal(composited[kept], np.asarray(source, dtype=np.int16)[kept])
    assert not np.array_equal(stored_by_setting[(False, 0, 1.0)][kept], np.asarray(source, dtype=np.int16)[kept])


def test_the_options_are_recorded_keyed_and_left_out_of_img2img_cells(inpaint_world, tmp_path):
    plan = SweepPlan(images=[str(inpaint_world["root"] / "source.png")], prompts=["p"], strengths=[0.5],
                     modes=["img2img", "inpaint"], max_side=None,
                     inpaint={"mask": "oracle", "composite": [False, True], "mask_blur": [0, 4]})
    cells = plan.cells()
    assert [(cell.mode, cell.composite, cell.mask_blur) for cell in cells] == [
        ("img2img", False, 0), ("inpaint", False, 0), ("inpaint", False, 4), ("inpaint", True, 0),
        ("inpaint", True, 4)]
    labels = [cell.label() for cell in cells]
    assert labels[4].endswith("inpaint · composited · mask blur 4") and "blur" not in labels[0]
    from img2img_lab.plan.axes import key_payload

    # an option at its baseline keys the cell as before the options existed (old run folders stay cached)
    payloads = [key_payload(cell) for cell in cells]
    assert len({repr(sorted(payload.items())) for payload in payloads}) == 5
    assert payloads[4]["composite"] is True and payloads[4]["mask_blur"] == 4
    bare = SweepPlan(images=plan.images, prompts=["p"], strengths=[0.5], modes=["inpaint"], max_side=None,
                     inpaint={"mask": "oracle"}).cells()[0]
    assert key_payload(bare) == payloads[1] and not {"composite", "mask_blur", "padding_mask_crop"} & set(payloads[1])


def test_a_composited_cell_is_repaired_and_extended_from_the_folder(inpaint_world, tmp_path):
    pipe = load_pipeline(str(inpaint_world["sd-inpaint"]), device="cpu", threads=1)
    run = tmp_path / "run"
    table = run_sweep(_plan(inpaint_world, strengths=[1.0], composite=[True], mask_blur=[3]), run, pipe=pipe,
                      progress=False)
    row = table.iloc[0]
    (run / row["output_path"]).unlink()
    from img2img_lab.sweep.verify import verify_run

    assert verify_run(run, sample=1, repair=True, pipe=pipe).ok
    assert RunStore.open(run).read_table().set_index("cell_key").loc[row["cell_key"], "output_hash"] == \
        row["output_hash"]
    extended = run_sweep(_plan(inpaint_world, strengths=[0.5, 1.0], composite=[True], mask_blur=[3]), run,
                         pipe=pipe, progress=False)
    assert len(extended) == 2 and (extended.set_index("cell_key").loc[row["cell_key"], "output_hash"]
                                   == row["output_hash"])
    # the seam is measured with the folder's mask and drawn in the report
    from img2img_lab.figures.report import render_report
    from img2img_lab.metrics.measure import measure_run

    measure_run(run, ["seam"], progress=False)
    assert RunStore.open(run).read_table()["seam"].gt(0).all()
    assert "alt='seam vs strength'" in render_report(run)


@pytest.mark.parametrize("inpaint, modes, message", [
    ("{mask: oracle, mask_blur: [-1]}", "[inpaint]", "inpaint mask_blur value -1 must be a whole number of pixels"),
    ("{mask: oracle, padding_mask_crop: [-4]}", "[inpaint]", "inpaint padding_mask_crop value -4 must be a whole"),
    ("{mask: oracle, mask_blur: [100]}", "[inpaint]", "inpaint mask_blur 100 is larger than red_circle_on_blue "
                                                      "(64x64 after preparation). Fix: use at most 64 pixels."),
    ("{mask: oracle, padding_mask_crop: [65]}", "[inpaint]", "inpaint padding_mask_crop 65 is larger than"),
    ("{composite: [true]}", "[img2img]", "gives inpaint settings (composite) but no 'inpaint' mode, so there is no "
                                         "mask to composite or blur. Fix: add modes: [inpaint]"),
    ("{mask: oracle, composite: [yes please]}", "[inpaint]", "inpaint composite value 'yes please' must be true or"),
])
def test_bad_inpainting_options_are_one_line_and_write_nothing(tmp_path, capsys, inpaint, modes, message):
    (tmp_path / "red_circle_on_blue.png").write_bytes(open("data/sources/red_circle_on_blue.png", "rb").read())
    config = tmp_path / "c.yaml"
    config.write_text(f"images: [red_circle_on_blue.png]\nprompts: [p]\nstrengths: [0.5]\nsteps: [2]\n"
                      f"modes: {modes}\ninpaint: {inpaint}\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_control_image_of_another_size_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "red_circle_on_blue.png").write_bytes(open("data/sources/red_circle_on_blue.png", "rb").read())
    (tmp_path / "controls").mkdir()
    Image.new("RGB", (48, 48)).save(tmp_path / "controls" / "red_circle_on_blue.png")
    config = tmp_path / "c.yaml"
    config.write_text("model: embedded-controlnet\nimages: [red_circle_on_blue.png]\nprompts: [p]\n"
                      "strengths: [0.5]\nsteps: [2]\ncontrol: {image: controls}\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the control image is 48x48 but its source is 64x64" in err, err
    assert not (tmp_path / "run").exists()


def test_plan_level_checks_name_the_option():
    with pytest.raises(PlanError, match="unknown inpaint setting 'blur'. Fix: use mask, repaint, composite"):
        SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5], modes=["inpaint"], inpaint={"blur": 4})
