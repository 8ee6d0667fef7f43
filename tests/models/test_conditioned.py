"""Image-conditioned pipelines beyond plain img2img, measured right (issue #30).

Each pipeline is a tiny random-weight one of its real diffusers class, saved with ``save_pretrained`` and loaded back
through ``load_pipeline``. A sweep over strengths x 2 seeds (inpainting with a mask file, ControlNet with Canny
control images) must give, for every cell, the image of a plain pipeline call with the same arguments — including
``mask_image`` / ``control_image`` — bit for bit, and record what the pipeline ran: timesteps (a hook on the call),
the start timestep and flow sigma (a hook on the scheduler's ``add_noise`` / ``scale_noise``), pure-noise starts of
inpainting at strength 1, zero-step and duplicate flags.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ZeroStepCall, hooked_call, structured_image
from img2img_lab.metrics.edges import edge_map
from img2img_lab.models.handle import as_model
from img2img_lab.models.loading import load_pipeline
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.sweep.run import run_sweep
from img2img_lab.testing.tiny_conditioned import save_tiny_conditioned

STRENGTHS = [0.0, 0.1, 0.25, 0.3, 0.34, 0.6, 1.0]
STEPS = 4
SIZED = ("Flux", "StableDiffusion3", "Chroma")  # classes whose __call__ takes height/width
SWEPT = ("chroma-dynamic", "chroma-constant", "sd-controlnet", "sdxl-controlnet", "flux-controlnet", "sd-inpaint",
         "sd-inpaint-9", "sdxl-inpaint", "sd3-inpaint", "flux-inpaint")


@pytest.fixture(scope="module")
def source_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conditioned-source")
    structured_image(32).save(folder / "source.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255  # the "subject": kept when the background is repainted
    (folder / "masks").mkdir()
    Image.fromarray(mask, mode="L").save(folder / "masks" / "source.png")
    return folder


def _plain_call(pipe, source, strength, seed, *, mask=None, control=None):
    """A plain diffusers call, hooked (:func:`conftest.hooked_call`): returns (image, what ran)."""
    kwargs = dict(image=source, prompt="a red cat", strength=strength, num_inference_steps=STEPS, guidance_scale=3.0,
                  generator=torch.Generator("cpu").manual_seed(seed))
    if type(pipe).__name__.startswith(SIZED):
        kwargs.update(height=source.height, width=source.width)
    if mask is not None:
        kwargs["mask_image"] = mask
    if control is not None:
        kwargs["control_image"] = control
    return hooked_call(pipe, **kwargs)


@pytest.mark.parametrize("name", SWEPT)
def test_conditioned_sweep_equals_plain_calls(name, source_files, tmp_path, capsys):
    pipe = load_pipeline(str(save_tiny_conditioned(name, tmp_path / name)), device="cpu", threads=1)
    model = as_model(pipe)
    inpaint = model.inpaints
    plan = SweepPlan(images=[str(source_files / "source.png")], prompts=["a red cat"], strengths=STRENGTHS,
                     seeds=[0, 1], guidance_scales=[3.0], steps=[STEPS], max_side=None,
                     modes=["inpaint" if inpaint else "img2img"],
                     inpaint={"mask": str(source_files / "masks"), "repaint": "background"} if inpaint else None,
                     control={"image": "canny"} if model.needs_control_image else None)
    table = run_sweep(plan, tmp_path / "run", pipe=pipe, progress=False)
    assert len(table) == len(STRENGTHS) * 2
    source = Image.open(source_files / "source.png").convert("RGB")
    subject = np.asarray(Image.open(source_files / "masks" / "source.png")) > 127
    mask = Image.fromarray((~subject).astype(np.uint8) * 255, mode="L") if inpaint else None
    control = (Image.fromarray(np.stack([edge_map(source).astype(np.uint8) * 255] * 3, -1), mode="RGB")
               if model.needs_control_image else None)
    model.use_scheduler("default")
    checks = {"bit-identical": 0, "steps": 0, "start": 0, "zero-step": 0}
    for seed, rows in table.groupby("seed"):
        first_by_run: dict[tuple, float] = {}
        for row in rows.sort_values("strength").to_dict("records"):
            stored = np.asarray(Image.open(tmp_path / "run" / row["output_path"]).convert("RGB"))
            try:
                image, seen = _plain_call(pipe, source, row["strength"], int(seed), mask=mask, control=control)
            except (ZeroStepCall, ValueError, IndexError):  # no timestep left: the sweep stored the VAE round trip
                assert row["zero_step"] and row["executed_steps"] == 0 and row["start_from"] == "source", row
                checks["zero-step"] += 1
                continue
            assert np.array_equal(stored, np.asarray(image)), (name, row["strength"], seed)
            checks["bit-identical"] += 1
            assert [float(v) for v in row["timesteps"].split(",")] == pytest.approx(seen["timesteps"], rel=1e-5)
            assert row["unet_evaluations"] == len(seen["timesteps"]) and not row["zero_step"]
            checks["steps"] += 1
            if inpaint and row["strength"] == 1.0:  # pure noise: no add_noise at the first timestep, or at σ = 1
                assert row["start_from"] == "pure noise" and row["log_snr"] == -math.inf
                assert seen["start"] != seen["timesteps"][0] or seen["flow_sigma"] == 1.0, seen
            else:
                assert row["start_from"] == "noised source" and seen["noise_after_step"] == 0
                assert row["start_timestep"] == pytest.approx(seen["start"], rel=1e-5)
                if seen["flow_sigma"] is not None:
                    assert row["flow_sigma"] == pytest.approx(seen["flow_sigma"], rel=1e-6)
                    sigma = seen["flow_sigma"]
                    assert row["log_snr"] == pytest.approx(2 * math.log((1 - sigma) / sigma) if sigma < 1 else -math.inf)
            checks["start"] += 1
            canonical = first_by_run.setdefault(tuple(seen["timesteps"]), row["strength"])
            duplicate = row["duplicate_of"]
            assert (None if duplicate is None or duplicate != duplicate else duplicate) == (
                None if canonical == row["strength"] else canonical)
    assert checks["bit-identical"] >= 8
    if inpaint:
        assert set(table["inpaint_method"]) == {"masked-image channels" if name == "sd-inpaint-9" else "latent blend"}
        assert table["mask_hash"].notna().all() and set(table["repaint"]) == {"background"}
    if control is not None:
        assert table["control_hash"].notna().all()
    with capsys.disabled():
        print(f"\n[conditioned] {name}: {checks}; executed steps "
              f"{dict(zip(STRENGTHS, table[table.seed == 0].executed_steps))}")


def _tiny_qwen_image():
    """QwenImageImg2ImgPipeline with a tiny transformer and video VAE, no text encoder (prompts go in as embeddings:
    a tiny Qwen2.5-VL text encoder with its chat-template tokenizer is not built offline here)."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageImg2ImgPipeline,
                           QwenImageTransformer2DModel)

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen-Image's scheduler_config.json (exponential, dynamic shift)
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0, shift_terminal=0.02,
        use_dynamic_shifting=True, time_shift_type="exponential")
    pipe = QwenImageImg2ImgPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                                    transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_qwen_image_records_the_timesteps_its_own_call_runs():
    """Before #30 a dynamic-shift QwenImage was refused ("mu must be passed ... choose a higher strength")."""
    from img2img_lab.engine.reference import vae_roundtrip
    from img2img_lab.models.handle import ModelHandle

    pipe = _tiny_qwen_image()
    model = ModelHandle(pipe)
    assert (model.family.name, model.refusal) == ("qwenimage", None)
    assert model.size_multiple() == 2 * pipe.vae_scale_factor  # packed 2x2: 16 px for the real VAE (factor 8)
    assert model.call_arguments(_cell(0.5), structured_image(32))["true_cfg_scale"] == 3.0
    image = structured_image(32)
    for strength in (0.1, 0.3, 0.34, 0.6, 1.0):
        seen: list[float] = []

        def on_step(pipeline, index, timestep, tensors):
            seen.append(float(timestep))
            return tensors

        pipe(image=image, prompt_embeds=torch.randn(1, 5, 16), prompt_embeds_mask=torch.ones(1, 5, dtype=torch.long),
             strength=strength, num_inference_steps=STEPS, height=32, width=32, true_cfg_scale=1.0,
             generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step)
        plan = model.step_plan("default", STEPS, strength, width=32, height=32)
        assert list(plan.timesteps) == pytest.approx(seen, rel=1e-6), strength
    assert model.step_plan("default", STEPS, 1.0, width=32, height=32).log_snr == -math.inf
    assert vae_roundtrip(pipe, image).size == (32, 32)  # the floor of a video VAE: one frame


def _cell(strength):
    from img2img_lab.plan.sweep_plan import Cell

    return Cell("s.png", 0, "p", "", strength, 0, 3.0, STEPS, "default", 2, 2, False)


def test_chroma_constant_shift_records_the_grid_it_ran():
    """Before #30 the generic adapter recorded [1000, 667, 334, 1], flow_sigma NaN and a VP log-SNR (13.82 at 0.1)."""
    from img2img_lab.testing.tiny_conditioned import make_tiny_conditioned

    model = as_model(make_tiny_conditioned("chroma-constant"))
    full = model.step_plan("default", STEPS, 1.0, width=32, height=32)
    assert full.timesteps == (1000.0, 750.0, 500.0, 250.0) and full.log_snr == -math.inf
    low = model.step_plan("default", STEPS, 0.1, width=32, height=32)
    assert low.flow_sigma == pytest.approx(0.25) and low.log_snr == pytest.approx(2 * math.log(3), abs=1e-6)  # 2.197
    dynamic = as_model(make_tiny_conditioned("chroma-dynamic")).step_plan("default", STEPS, 0.1, width=32, height=32)
    assert dynamic.executed_steps == 1  # was refused: "mu must be passed ... Fix: choose a higher strength"


@pytest.mark.parametrize("class_name", ["Flux2Pipeline", "Flux2KleinPipeline", "QwenImageEditPipeline",
                                        "QwenImageEditPlusPipeline", "QwenImageLayeredPipeline",
                                        "StableDiffusion3ControlNetInpaintingPipeline", "StableUnCLIPImg2ImgPipeline"])
def test_pipelines_without_strength_are_named_and_refused(class_name):
    import diffusers

    from img2img_lab.models.registry import refusal

    reason = refusal(object.__new__(getattr(diffusers, class_name)))  # the class decides; no weights needed
    assert reason.startswith(f"{class_name} ") and "no strength dial" in reason and "Fix:" in reason
    assert "\n" not in reason


def _tree(folder):
    import hashlib

    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_flux_kontext_is_refused_before_anything_is_written(tmp_path, capsys):
    """Before #30: TypeError '... unexpected keyword argument strength' after the manifest, floor and sources."""
    from img2img_lab.cli.main import main
    from img2img_lab.testing.tiny_conditioned import save_tiny_conditioned

    folder = save_tiny_conditioned("flux-kontext", tmp_path / "kontext")
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
    from img2img_lab.testing.tiny_families import make_tiny_family

    class MyImg2ImgPipeline(StableDiffusionImg2ImgPipeline):  # a subclass: its own get_timesteps runs, checked
        pass

    class BrokenImg2ImgPipeline(StableDiffusionImg2ImgPipeline):
        def get_timesteps(self, num_inference_steps, strength, device):
            raise RuntimeError("custom schedule")

    base = make_tiny_family("sd1")
    known = MyImg2ImgPipeline(**base.components)
    assert refusal(known) is None and as_model(known).family.name == "generic"
    assert "has no img2img-lab adapter" in as_model(known)._family_notes()[0]
    broken = refusal(BrokenImg2ImgPipeline(**base.components))
    assert broken.startswith("BrokenImg2ImgPipeline is not a pipeline img2img-lab knows") and "custom schedule" in broken

    class OddScheduler(type(base.scheduler)):
        pass

    odd = StableDiffusionImg2ImgPipeline(**{**base.components, "scheduler": OddScheduler.from_config(base.scheduler.config)})
    assert "OddScheduler has a noise formula img2img-lab does not know" in refusal(odd)


def test_control_and_mode_mismatches_are_refused_before_writing(source_files, tmp_path):
    from img2img_lab.errors import PlanError
    from img2img_lab.testing.tiny_conditioned import make_tiny_conditioned
    from img2img_lab.testing.tiny_families import make_tiny_family

    source = str(source_files / "source.png")
    plain = SweepPlan(images=[source], prompts=["p"], strengths=[0.5], steps=[STEPS], max_side=None)
    with pytest.raises(PlanError, match="needs a control image per source. Fix: add control: {image: canny}"):
        run_sweep(plain, tmp_path / "a", pipe=make_tiny_conditioned("sd-controlnet"), progress=False)
    controlled = SweepPlan(images=[source], prompts=["p"], strengths=[0.5], steps=[STEPS], max_side=None,
                           control={"image": "canny"})
    with pytest.raises(PlanError, match="takes no control image"):
        run_sweep(controlled, tmp_path / "b", pipe=make_tiny_family("sd1"), progress=False)
    with pytest.raises(PlanError, match="is an inpainting pipeline: it cannot run plain img2img. Fix: use modes"):
        run_sweep(plain, tmp_path / "c", pipe=make_tiny_conditioned("sd-inpaint-9"), progress=False)
    with pytest.raises(PlanError, match="unknown mode 'outpaint'"):
        SweepPlan(images=[source], prompts=["p"], strengths=[0.5], modes=["outpaint"])
    assert not any((tmp_path / name).exists() for name in "abc")


def test_support_table_names_every_class_of_both_mappings():
    from img2img_lab.models.registry import support_table

    rows = support_table()
    assert len(rows) == 45 and len({(row["mapping"], row["key"]) for row in rows}) == 45
    supported = {row["class"] for row in rows if row["status"] == "supported"}
    assert {"ChromaImg2ImgPipeline", "QwenImageImg2ImgPipeline"} - supported == {"ChromaImg2ImgPipeline"}  # not mapped
    assert "FluxKontextPipeline" not in supported and "FluxControlNetImg2ImgPipeline" in supported


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
    from img2img_lab.testing.tiny_conditioned import make_tiny_conditioned

    pipe = make_tiny_conditioned("sd-controlnet")
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
    from img2img_lab.sweep.conditions import check_conditions_fit

    model = as_model(make_tiny_conditioned("flux-controlnet"))
    model.pipe.__class__ = type("NoScaleFluxControlImg2ImgPipeline", (type(model.pipe),),
                                {"__call__": lambda self, image, control_image, prompt, strength: None})
    with pytest.raises(PlanError, match="has no controlnet_conditioning_scale, so control conditioning_scales"):
        check_conditions_fit(plan, model)


def test_the_embedded_model_inpaints_like_a_plain_inpainting_pipeline_of_its_components(tmp_path):
    """modes: [inpaint] on an img2img pipeline: every cell equals StableDiffusionInpaintPipeline(**components) called
    with the oracle's background mask, bit for bit; strength 1 starts from pure noise."""
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
        assert np.array_equal(np.asarray(stored), np.asarray(image)), (row["strength"], row["seed"])
        compared += 1
    assert compared >= 8
    assert set(table.loc[table.strength == 1.0, "start_from"]) == {"pure noise"}
    assert set(table["inpaint_method"]) == {"latent blend"}
