"""Image-conditioned pipelines beyond plain img2img (issue #30): refusals before anything is written, the never-guess
check of unknown classes, control and mode mismatches, ControlNet axes, the embedded model's inpainting, and repairs
of masked and controlled cells. (Every class's sweep against plain calls is in ``test_families.py``.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ZeroStepCall, hooked_call, structured_image
from img2img_lab.metrics.edges import edge_map
from img2img_lab.models.registry import NO_STRENGTH, REFUSED
from img2img_lab.models.handle import as_model
from img2img_lab.models.loading import load_pipeline
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.sweep.run import run_sweep
from img2img_lab.testing import save_tiny_family

STRENGTHS = [0.0, 0.1, 0.25, 0.3, 0.34, 0.6, 1.0]
STEPS = 4


@pytest.fixture(scope="module")
def source_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conditioned-source")
    structured_image(32).save(folder / "source.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255  # the "subject": kept when the background is repainted
    (folder / "masks").mkdir()
    Image.fromarray(mask, mode="L").save(folder / "masks" / "source.png")
    return folder


def test_chroma_constant_shift_records_the_grid_it_ran():
    """Before #30 the generic adapter recorded [1000, 667, 334, 1], flow_sigma NaN and a VP log-SNR (13.82 at 0.1)."""
    from img2img_lab.testing import make_tiny_family

    model = as_model(make_tiny_family("chroma-constant"))
    full = model.step_plan("default", STEPS, 1.0, width=32, height=32)
    assert full.timesteps == (1000.0, 750.0, 500.0, 250.0) and full.log_snr == -math.inf
    low = model.step_plan("default", STEPS, 0.1, width=32, height=32)
    assert low.flow_sigma == pytest.approx(0.25) and low.log_snr == pytest.approx(2 * math.log(3), abs=1e-6)  # 2.197
    dynamic = as_model(make_tiny_family("chroma-dynamic")).step_plan("default", STEPS, 0.1, width=32, height=32)
    assert dynamic.executed_steps == 1  # was refused: "mu must be passed ... Fix: choose a higher strength"


@pytest.mark.parametrize("class_name", sorted({**NO_STRENGTH, **REFUSED}))
def test_every_refused_class_gets_one_line_naming_it_the_reason_and_the_fix(class_name):
    import diffusers

    from img2img_lab.models.registry import refusal

    reason = refusal(object.__new__(getattr(diffusers, class_name)))  # the class decides; no weights needed
    assert reason.startswith(f"{class_name} ") and "Fix:" in reason and "\n" not in reason
    assert ({**NO_STRENGTH, **REFUSED}[class_name] in reason) and (class_name not in NO_STRENGTH
                                                                   or "no strength dial" in reason)


def _tree(folder):
    import hashlib

    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_flux_kontext_is_refused_before_anything_is_written(tmp_path, capsys):
    """Before #30: TypeError '... unexpected keyword argument strength' after the manifest, floor and sources."""
    from img2img_lab.cli.main import main
    from img2img_lab.testing import save_tiny_family

    folder = save_tiny_family("flux-kontext", tmp_path / "kontext")
    capsys.readouterr()
    assert main(["sweep", "quick", "--model", str(folder), "--out", str(tmp_path / "new")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    error = [line for line in error if "Loading" not in line]  # loading bars of a plain (not --quiet) run
    assert len(error) == 1 and error[0].startswith("error: FluxKontextPipeline edits from a reference image"), error
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    before = _tree(existing)
    assert main(["sweep", "quick", "--model", str(folder), "--out", str(existing)]) == 2
    assert _tree(existing) == before


def test_unknown_pipelines_are_checked_never_guessed():
    from diffusers import StableDiffusionImg2ImgPipeline

    from img2img_lab.models.registry import refusal
    from img2img_lab.testing import make_tiny_family

    class MyImg2ImgPipeline(StableDiffusionImg2ImgPipeline):  # a subclass: its own get_timesteps runs, checked
        pass

    class BrokenImg2ImgPipeline(StableDiffusionImg2ImgPipeline):
        def get_timesteps(self, num_inference_steps, strength, device):
            raise RuntimeError("custom schedule")

    base = make_tiny_family("sd1")
    known = MyImg2ImgPipeline(**base.components)
    assert refusal(known) is None and as_model(known).family.name == "generic"
    assert "has no img2img-lab family module" in as_model(known)._family_notes()[0]
    broken = refusal(BrokenImg2ImgPipeline(**base.components))
    assert broken.startswith("BrokenImg2ImgPipeline is not a pipeline img2img-lab knows") and "custom schedule" in broken

    class OddScheduler(type(base.scheduler)):
        pass

    odd = StableDiffusionImg2ImgPipeline(**{**base.components, "scheduler": OddScheduler.from_config(base.scheduler.config)})
    assert "OddScheduler has a noise formula img2img-lab does not know" in refusal(odd)


def test_control_and_mode_mismatches_are_refused_before_writing(source_files, tmp_path):
    from img2img_lab.errors import PlanError
    from img2img_lab.testing import make_tiny_family

    source = str(source_files / "source.png")
    plain = SweepPlan(images=[source], prompts=["p"], strengths=[0.5], steps=[STEPS], max_side=None)
    with pytest.raises(PlanError, match="needs a control image per source. Fix: add control: {image: canny}"):
        run_sweep(plain, tmp_path / "a", pipe=make_tiny_family("sd-controlnet"), progress=False)
    controlled = SweepPlan(images=[source], prompts=["p"], strengths=[0.5], steps=[STEPS], max_side=None,
                           control={"image": "canny"})
    with pytest.raises(PlanError, match="takes no control image"):
        run_sweep(controlled, tmp_path / "b", pipe=make_tiny_family("sd1"), progress=False)
    with pytest.raises(PlanError, match="is an inpainting pipeline: it cannot run plain img2img. Fix: use modes"):
        run_sweep(plain, tmp_path / "c", pipe=make_tiny_family("sd-inpaint-9"), progress=False)
    from img2img_lab.models.families.tiny_parts import with_two_controlnets

    several = with_two_controlnets(make_tiny_family("sd-controlnet"))
    with pytest.raises(PlanError, match=r"holds 2 ControlNets but control: image names 1 control image per source. "
                                        r"Fix: give one per ControlNet, in its order: control: {image: \[canny, canny"):
        run_sweep(controlled, tmp_path / "d", pipe=several, progress=False)  # was diffusers' TypeError mid-sweep
    from diffusers import FluxControlNetModel, FluxMultiControlNetModel

    flux = make_tiny_family("flux-controlnet")
    settings = {key: value for key, value in flux.controlnet.config.items() if not key.startswith("_")}
    flux.controlnet = FluxMultiControlNetModel([flux.controlnet, FluxControlNetModel(**{**settings, "num_mode": 4})])
    two = SweepPlan(images=[source], prompts=["p"], strengths=[0.5], steps=[STEPS], max_side=None,
                    control={"image": ["canny", "canny"]}, schedulers=["default"])
    with pytest.raises(PlanError, match="FluxControlNetImg2ImgPipeline mixes union and single-mode ControlNets, "
                                        "whose modes img2img-lab cannot key apart. Fix: load only union"):
        run_sweep(two, tmp_path / "d", pipe=flux, progress=False)  # was diffusers' ValueError mid-sweep
    cropped = SweepPlan(images=[source], prompts=["p"], strengths=[0.5], steps=[STEPS], max_side=None,
                        modes=["inpaint"], inpaint={"mask": "oracle", "padding_mask_crop": [None, 4]})
    with pytest.raises(PlanError, match="StableDiffusionPAGInpaintPipeline cannot crop around the mask: its __call__ "
                                        "hands check_inputs output_type=None"):  # was diffusers' error mid-sweep
        run_sweep(cropped, tmp_path / "e", pipe=make_tiny_family("sd-pag-inpaint"), progress=False)
    with pytest.raises(PlanError, match="unknown mode 'outpaint'"):
        SweepPlan(images=[source], prompts=["p"], strengths=[0.5], modes=["outpaint"])
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_support_table_names_every_class_of_both_mappings():
    from img2img_lab.models.registry import support_table

    rows = support_table()
    assert len(rows) == 45 and len({(row["mapping"], row["key"]) for row in rows}) == 45
    supported = {row["class"] for row in rows if row["status"] == "supported"}
    assert {"ChromaImg2ImgPipeline", "QwenImageImg2ImgPipeline"} - supported == {"ChromaImg2ImgPipeline"}  # not mapped
    assert "FluxKontextPipeline" not in supported and "FluxControlNetImg2ImgPipeline" in supported
    assert all(row["family"] for row in rows)  # every mapped class is named by a family module
    counts = {status: sum(row["status"] == status for row in rows) for status in ("supported", "no strength",
                                                                                  "refused")}
    assert counts == {"supported": 30, "no strength": 9, "refused": 6}, counts  # SDXL's union ControlNets: supported


def test_an_inpainting_run_measures_verifies_and_repairs_from_its_folder(tmp_path, capsys):
    """The embedded model inpaints through StableDiffusionInpaintPipeline (its 4-channel UNet); the oracle's subject
    mask is stored once and serves the region metrics; verify regenerates inpainting cells with the stored mask, and
    a repair restores a deleted one bit for bit, reading nothing outside the folder."""
    import pandas as pd

    from img2img_lab.cli.main import main
    from img2img_lab.store.run_store import RunStore

    source = tmp_path / "red_circle_on_blue.png"
    source.write_bytes(open("data/sources/red_circle_on_blue.png", "rb").read())
    config = tmp_path / "inpaint.yaml"
    config.write_text("images: [red_circle_on_blue.png]\nprompts: [a red circle on a yellow background]\n"
                      "strengths: [0.5, 1.0]\nsteps: [4]\nguidance_scales: [2.0]\nmodes: [img2img, inpaint]\n"
                      "inpaint: {mask: oracle, repaint: background}\n")
    run = tmp_path / "run"
    assert main(["sweep", str(config), "--out", str(run), "--no-progress", "--metrics", "ssim@subject"]) == 0
    table = pd.read_parquet(run / "results.parquet")
    assert sorted(table["mode"]) == ["img2img", "img2img", "inpaint", "inpaint"]
    assert table["ssim@subject"].notna().all() and table.cell_key.nunique() == 4
    inpainted = table[table["mode"] == "inpaint"].set_index("strength")
    assert inpainted.loc[1.0, "start_from"] == "pure noise" and inpainted.loc[0.5, "start_from"] == "noised source"
    store = RunStore.open(run)
    assert store.read_manifest()["masks"] == {inpainted.loc[0.5, "source_hash"]: "oracle"}
    assert main(["verify", str(run), "--sample", "4"]) == 0
    victim = run / inpainted.loc[0.5, "output_path"]
    expected = victim.read_bytes()
    victim.unlink()
    source.unlink()  # the repair must not need it
    assert main(["verify", str(run), "--repair"]) == 0
    assert victim.read_bytes() == expected
    capsys.readouterr()


def test_control_axes_are_keyed_and_passed_only_where_the_pipeline_takes_them(source_files, tmp_path):
    from img2img_lab.errors import PlanError
    from img2img_lab.testing import make_tiny_family

    pipe = make_tiny_family("sd-controlnet")
    plan = SweepPlan(images=[str(source_files / "source.png")], prompts=["p"], strengths=[0.5], steps=[STEPS],
                     max_side=None, control={"image": "canny", "conditioning_scales": [0.5, 1.0],
                                             "guidance_ends": [0.5, 1.0]})
    table = run_sweep(plan, tmp_path / "run", pipe=pipe, progress=False)
    assert len(table) == 4 and table.cell_key.nunique() == 4 and table.output_hash.nunique() == 4
    row = table[(table.controlnet_conditioning_scale == 0.5) & (table.control_guidance_end == 0.5)].iloc[0]
    source = Image.open(source_files / "source.png").convert("RGB")
    control = Image.fromarray(np.stack([edge_map(source).astype(np.uint8) * 255] * 3, -1), mode="RGB")
    as_model(pipe).use_scheduler("default")
    plain = pipe(image=source, control_image=control, prompt="p", strength=0.5, num_inference_steps=STEPS,
                 guidance_scale=7.5, controlnet_conditioning_scale=0.5, control_guidance_end=0.5,
                 generator=torch.Generator("cpu").manual_seed(0)).images[0]
    stored = Image.open(tmp_path / "run" / row["output_path"]).convert("RGB")
    assert np.array_equal(np.asarray(stored), np.asarray(plain))
    # a repair finds the control image in the folder by the hash the manifest records (it was lost before)
    from img2img_lab.sweep.verify import verify_run

    victim = tmp_path / "run" / row["output_path"]
    expected = victim.read_bytes()
    victim.unlink()
    assert verify_run(tmp_path / "run", sample=0, pipe=pipe, repair=True).ok
    assert victim.read_bytes() == expected
    # a pipeline without controlnet_conditioning_scale refuses the axis
    from img2img_lab.sweep.source_conditions import check_conditions_fit

    model = as_model(make_tiny_family("flux-controlnet"))
    model.pipe.__class__ = type("NoScaleFluxControlImg2ImgPipeline", (type(model.pipe),),
                                {"__call__": lambda self, image, control_image, prompt, strength: None})
    with pytest.raises(PlanError, match="has no controlnet_conditioning_scale, so control conditioning_scales"):
        check_conditions_fit(plan, model)


def test_several_controlnets_take_a_control_image_each(source_files, tmp_path):
    """A ``MultiControlNetModel`` takes one control image per ControlNet (``control: {image: [...]}``): each cell
    equals the plain call with the list (per cell exactly, batched within one level), both images are kept under
    their own hashes, and a repair finds them."""
    from img2img_lab.images.hashes import content_hash
    from img2img_lab.models.families.tiny_parts import with_two_controlnets
    from img2img_lab.sweep.verify import verify_run
    from img2img_lab.testing import make_tiny_family

    pipe = with_two_controlnets(make_tiny_family("sd-controlnet"))
    plan = SweepPlan(images=[str(source_files / "source.png")], prompts=["p"], strengths=[0.5, 1.0], steps=[STEPS],
                     max_side=None, control={"image": ["canny", str(source_files / "masks")],
                                             "conditioning_scales": [0.5]})
    tables = {engine: run_sweep(plan, tmp_path / engine, pipe=pipe, progress=False, engine=engine)
              for engine in ("per-cell", "batched")}
    source = Image.open(source_files / "source.png").convert("RGB")
    controls = [Image.fromarray(np.stack([edge_map(source).astype(np.uint8) * 255] * 3, -1), mode="RGB"),
                Image.open(source_files / "masks" / "source.png").convert("RGB")]
    as_model(pipe).use_scheduler("default")
    for strength in (0.5, 1.0):
        plain = np.asarray(pipe(image=source, control_image=controls, prompt="p", strength=strength,
                                num_inference_steps=STEPS, guidance_scale=7.5, controlnet_conditioning_scale=0.5,
                                generator=torch.Generator("cpu").manual_seed(0)).images[0], np.int16)
        stored = {engine: np.asarray(Image.open(tmp_path / engine / table[table.strength == strength].iloc[0][
            "output_path"]).convert("RGB"), np.int16) for engine, table in tables.items()}
        assert np.array_equal(stored["per-cell"], plain) and np.abs(stored["batched"] - plain).max() <= 1
    hashes = tables["batched"].control_hash.iloc[0].split("+")
    from img2img_lab.store.run_store import RunStore

    kept = RunStore.open(tmp_path / "batched")
    assert len(hashes) == 2 and [content_hash(kept.load_source(part)) for part in hashes] == hashes
    victim = tmp_path / "batched" / tables["batched"].output_path.iloc[0]
    expected = victim.read_bytes()
    victim.unlink()
    assert verify_run(tmp_path / "batched", sample=0, pipe=pipe, repair=True).ok and victim.read_bytes() == expected


def test_several_flux_controlnets_take_a_mode_and_a_scale_each_as_diffusers_needs(source_files, tmp_path):
    """FLUX.1's ``FluxMultiControlNetModel`` fails in diffusers without a ``control_mode`` and a conditioning scale
    per ControlNet (it was refused): each single-mode ControlNet now gets ``None`` and the cell's scale, and every
    cell equals that plain call bit for bit."""
    from img2img_lab.testing import make_tiny_variant

    pipe = make_tiny_variant("flux-controlnet-multi")
    plan = SweepPlan(images=[str(source_files / "source.png")], prompts=["p"], strengths=[0.5, 1.0], steps=[STEPS],
                     max_side=None, schedulers=["default"], control={"image": ["canny", str(source_files / "masks")],
                                                                     "conditioning_scales": [0.5]})
    table = run_sweep(plan, tmp_path / "run", pipe=pipe, progress=False)
    source = Image.open(source_files / "source.png").convert("RGB")
    controls = [Image.fromarray(np.stack([edge_map(source).astype(np.uint8) * 255] * 3, -1), mode="RGB"),
                Image.open(source_files / "masks" / "source.png").convert("RGB")]
    stored = {}
    for strength in (0.5, 1.0):
        plain = np.asarray(pipe(image=source, control_image=controls, prompt="p", strength=strength,
                                num_inference_steps=STEPS, guidance_scale=7.5, control_mode=[None, None],
                                controlnet_conditioning_scale=[0.5, 0.5], height=source.height, width=source.width,
                                generator=torch.Generator("cpu").manual_seed(0)).images[0], np.int16)
        stored[strength] = np.asarray(Image.open(tmp_path / "run" / table[table.strength == strength].iloc[0][
            "output_path"]).convert("RGB"), np.int16)
        assert np.array_equal(stored[strength], plain)
    assert len(table.control_hash.iloc[0].split("+")) == 2


def test_the_embedded_model_inpaints_like_a_plain_inpainting_pipeline_of_its_components(tmp_path):
    """modes: [inpaint] on an img2img pipeline: every cell equals StableDiffusionInpaintPipeline(**components) called
    with the oracle's background mask, within the batched engine's level (bit for bit with ``--engine per-cell``:
    tests/sweep/test_inpaint_options.py); strength 1 starts from pure noise."""
    from diffusers import StableDiffusionInpaintPipeline

    from img2img_lab.metrics.masks import oracle_subject_mask

    source_path = "data/sources/red_circle_on_blue.png"
    pipe = load_pipeline(threads=1)
    plan = SweepPlan(images=[source_path], prompts=["a red circle on a yellow background"], strengths=STRENGTHS,
                     seeds=[0, 1], guidance_scales=[2.0], steps=[STEPS], modes=["inpaint"],
                     inpaint={"mask": "oracle", "repaint": "background"})
    table = run_sweep(plan, tmp_path / "run", pipe=pipe, progress=False)
    plain = StableDiffusionInpaintPipeline(**pipe.components)
    plain.set_progress_bar_config(disable=True)
    source = Image.open(source_path).convert("RGB")
    mask = Image.fromarray((~oracle_subject_mask(source)).astype(np.uint8) * 255, mode="L")
    compared = 0
    for row in table.to_dict("records"):
        if row["zero_step"]:
            assert row["start_from"] == "source" and row["executed_steps"] == 0
            continue
        image = plain(image=source, mask_image=mask, prompt=row["prompt"], strength=row["strength"],
                      num_inference_steps=STEPS, guidance_scale=2.0,
                      generator=torch.Generator("cpu").manual_seed(int(row["seed"]))).images[0]
        stored = Image.open(tmp_path / "run" / row["output_path"]).convert("RGB")
        difference = np.abs(np.asarray(stored, np.int16) - np.asarray(image, np.int16)).max()
        assert difference <= 1, (row["strength"], row["seed"])
        compared += 1
    assert compared >= 8 and set(table["engine"]) == {"batched"}
    assert set(table.loc[table.strength == 1.0, "start_from"]) == {"pure noise"}
    assert set(table["inpaint_method"]) == {"latent blend"}
