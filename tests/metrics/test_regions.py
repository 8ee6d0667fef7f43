"""Keep the subject, change the background (issue #18): region metrics on known answers, PIE-Bench's formulas, subject
masks (files, automatic, the oracle's) and the one-line warnings when the model is the wrong tool."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from img2img_lab.cli.main import main
from img2img_lab.errors import ImageError
from img2img_lab.metrics.masks import auto_subject_mask, load_mask, mask_iou, oracle_subject_mask
from img2img_lab.metrics.fidelity import delta_e, ssim
from img2img_lab.metrics.regions import pie_bench_scores, region_scores
from img2img_lab.store.run_store import RunStore


def _astronaut_with_a_new_background():
    """scikit-image's astronaut, a hand-made subject mask (head and torso: an ellipse and a trapezoid), and the same
    photo with everything outside the mask replaced by a blue studio backdrop with noise."""
    from skimage import data

    source = data.astronaut()
    mask_image = Image.new("L", (512, 512), 0)
    draw = ImageDraw.Draw(mask_image)
    draw.ellipse((150, 20, 330, 250), fill=255)  # helmet-less head and hair
    draw.polygon([(60, 512), (120, 250), (380, 250), (470, 512)], fill=255)  # shoulders and suit
    mask = np.asarray(mask_image) > 127
    rng = np.random.default_rng(0)
    backdrop = np.clip(np.array([40, 80, 160]) + rng.normal(0, 6, (512, 512, 3)), 0, 255).astype(np.uint8)
    output = np.where(mask[..., None], source, backdrop)
    return source, output, mask


def test_replacing_only_the_background_keeps_the_subject_scores_perfect(capsys):
    source, output, mask = _astronaut_with_a_new_background()
    scores = region_scores(source, output, mask, ["ssim@subject", "delta_e@subject", "psnr@subject", "mse@subject",
                                                  "ssim@background", "delta_e@background"])
    whole_ssim, whole_delta_e = ssim(source, output), delta_e(source, output)
    with capsys.disabled():
        print(f"\n[regions] astronaut, background replaced: ssim@subject {scores['ssim@subject']:.4f}, "
              f"delta_e@subject {scores['delta_e@subject']:.4f}; whole image ssim {whole_ssim:.3f}, delta_e "
              f"{whole_delta_e:.1f}; ssim@background {scores['ssim@background']:.3f}, delta_e@background "
              f"{scores['delta_e@background']:.1f}")
    assert scores["ssim@subject"] == 1.0 and scores["delta_e@subject"] == 0.0
    assert scores["psnr@subject"] == float("inf") and scores["mse@subject"] == 0.0
    assert whole_ssim < 0.6 and whole_delta_e > 10  # the whole-image scores call a perfect swap a large change
    assert scores["ssim@background"] < whole_ssim and scores["delta_e@background"] > whole_delta_e
    # a whole-image region scores exactly the whole-image metric
    everything = np.ones(mask.shape, bool)
    assert region_scores(source, output, everything, ["ssim@subject"])["ssim@subject"] == pytest.approx(whole_ssim)


def test_pie_bench_mode_equals_their_formula_on_the_same_arrays():
    import torch
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
    from torchmetrics.regression import MeanSquaredError

    source, output, mask = _astronaut_with_a_new_background()
    output = output.copy()
    output[mask] = np.clip(output[mask].astype(int) + 12, 0, 255)  # change the subject a little too
    unedited = ~mask  # PIE-Bench's mask marks the edited region; they score the rest, zero-filled
    ours = pie_bench_scores(source, output, unedited, ["pie_psnr", "pie_mse", "pie_ssim"])

    def tensor(image):  # their calculate_*: float32 / 255, times the mask, CHW, a batch of one
        return torch.tensor(np.asarray(image).astype(np.float32) / 255 * unedited[..., None]).permute(2, 0, 1)[None]

    pred, gt = tensor(output), tensor(source)
    theirs = {"pie_psnr": float(PeakSignalNoiseRatio(data_range=1.0)(pred, gt)),
              "pie_mse": float(MeanSquaredError()(pred[0].contiguous(), gt[0].contiguous())),
              "pie_ssim": float(StructuralSimilarityIndexMeasure(data_range=1.0)(pred, gt))}
    for name in theirs:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-5), name


def _product_shot(kind: str, size: int = 256):
    """An object on a white table with a soft cast shadow (the product photographer's plain background) and the true
    mask of the object (the shadow is not the object)."""
    rng = np.random.default_rng({"mug": 1, "bottle": 2, "box": 3}[kind])
    canvas = Image.new("RGB", (size, size), (250, 250, 248))
    shadow = Image.new("L", (size, size), 0)
    truth = Image.new("L", (size, size), 0)
    shapes = {"mug": [("ellipse", (70, 60, 170, 200)), ("ellipse", (150, 100, 200, 160))],
              "bottle": [("rectangle", (105, 40, 150, 70)), ("rounded", (80, 70, 175, 215))],
              "box": [("rectangle", (60, 80, 190, 200))]}[kind]
    colour = {"mug": (196, 38, 40), "bottle": (30, 70, 170), "box": (40, 150, 70)}[kind]
    for form, box in shapes:
        draw = getattr(ImageDraw.Draw(truth), {"rounded": "rounded_rectangle"}.get(form, form))
        draw(box, fill=255, **({"radius": 18} if form == "rounded" else {}))
    ImageDraw.Draw(shadow).ellipse((70, 185, 235, 240), fill=170)  # cast to the right, touching the object's base
    shadow = shadow.filter(ImageFilter.GaussianBlur(8))
    array = np.asarray(canvas).astype(np.float64)
    array *= 1 - np.asarray(shadow)[..., None] / 255 * 0.45  # a grey shadow, up to ΔE ~25 from the table
    y = np.linspace(0.8, 1.15, size)[:, None, None]  # light from above: the object's shading
    object_pixels = np.clip(np.array(colour) * y, 0, 255)
    array = np.where((np.asarray(truth) > 127)[..., None], object_pixels, array)
    if kind == "mug":  # a specular highlight, the table's white, inside the body
        array[85:175, 98:106] = (252, 250, 250)
    if kind == "box":  # a white label with a logo: holes in the colour, not in the object
        array[120:160, 90:160] = (245, 245, 245)
        array[130:150, 110:140] = (20, 20, 20)
    photo = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))  # the lens
    photo = np.asarray(photo).astype(np.float64) + rng.normal(0, 2.0, array.shape)  # sensor noise
    return np.clip(photo, 0, 255).astype(np.uint8), np.asarray(truth) > 127


def test_the_automatic_mask_finds_products_and_shapes(capsys):
    from img2img_lab.shapes.world import random_scene, render, shape_mask

    scores = {}
    for kind in ("mug", "bottle", "box"):
        image, truth = _product_shot(kind)
        estimate = auto_subject_mask(image)
        scores[kind] = mask_iou(estimate.mask, truth)
        assert not estimate.warnings, (kind, estimate.warnings)
    rng = np.random.default_rng(7)
    shapes = []
    for _ in range(12):
        scene = random_scene(rng)
        shapes.append(mask_iou(auto_subject_mask(render(scene)).mask, shape_mask(scene) > 0.5))
        assert mask_iou(oracle_subject_mask(render(scene)), shape_mask(scene) > 0.5) >= 0.85
    with capsys.disabled():
        print(f"\n[masks] automatic mask IoU: {', '.join(f'{k} {v:.3f}' for k, v in scores.items())}; 12 rendered "
              f"shapes min {min(shapes):.3f}, mean {np.mean(shapes):.3f}")
    assert min(scores.values()) >= 0.9 and min(shapes) >= 0.9


def test_a_poor_automatic_mask_says_why():
    rng = np.random.default_rng(0)
    busy = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert any("not one plain colour" in doubt for doubt in auto_subject_mask(busy).warnings)
    plain = np.full((64, 64, 3), 200, np.uint8)
    assert auto_subject_mask(plain).warnings == ["no subject stands out from the background"]


def test_mask_files_are_fitted_like_their_source_and_bad_ones_are_one_line_errors(tmp_path):
    mask = Image.new("L", (800, 600), 0)
    ImageDraw.Draw(mask).rectangle((200, 150, 600, 450), fill=255)
    mask.save(tmp_path / "mask.png")
    fit = {"original": [800, 600], "max_side": 64, "size_multiple": 8, "policy": "crop"}
    fitted = load_mask(tmp_path / "mask.png", fit=fit, size=(64, 48))
    assert fitted.shape == (48, 64) and abs(fitted.mean() - 0.25) < 0.03  # the middle quarter, as in the source
    rgba = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((10, 10, 30, 30), fill=(0, 0, 0, 255))  # opaque = subject, whatever the colour
    rgba.save(tmp_path / "cutout.png")
    assert load_mask(tmp_path / "cutout.png", size=(64, 48)).sum() == 21 * 21
    with pytest.raises(ImageError, match="the mask is 800x600 but its source is 640x480. Fix: draw the mask on"):
        load_mask(tmp_path / "mask.png", fit={**fit, "original": [640, 480]}, size=(64, 48))
    Image.new("L", (64, 48), 0).save(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="the mask is empty"):
        load_mask(tmp_path / "empty.png", size=(64, 48))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="the mask cannot be read"):
        load_mask(tmp_path / "broken.png", size=(64, 48))


@pytest.fixture(scope="module")
def photo_sweep(tmp_path_factory):
    """``img2img-lab sweep`` of an 800-px photo with an out-of-vocabulary prompt on the embedded model."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photo")
    Image.fromarray(data.astronaut()).resize((800, 800), Image.Resampling.LANCZOS).save(folder / "photo.png")
    config = folder / "photo.yaml"
    config.write_text(f"images: [{folder / 'photo.png'}]\nprompts: [a red star on a velvet cushion]\n"
                      f"strengths: [0.3, 0.6]\nseeds: [0]\nsteps: 4\n")
    return folder, config


def test_the_wrong_tool_is_said_once_in_one_line_each(photo_sweep, capsys):
    folder, config = photo_sweep
    assert main(["sweep", str(config), "--out", str(folder / "run"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert sum("photo.png: downscaled from 800x800 to 64x64" in line for line in lines) == 1
    assert sum("photo.png: the model cannot represent this image" in line for line in lines) == 1
    assert sum("does not know: velvet, cushion" in line for line in lines) == 1
    assert "Warning:" not in err and ".py:" not in err  # never Python's warning format
    notes = json.loads((folder / "run" / "manifest.json").read_text())["notes"]
    assert any("downscaled from 800x800" in note for note in notes) and any("velvet" in note for note in notes)


def test_measure_region_metrics_with_stored_masks_and_a_mask_folder(photo_sweep, tmp_path, capsys):
    folder, _ = photo_sweep
    run = folder / "run"
    assert main(["measure", str(run), "--metrics", "ssim@subject,delta_e@background", "--no-progress"]) == 0
    store = RunStore.open(run)
    table = store.read_table()
    assert table["ssim@subject"].notna().all() and table["delta_e@background"].notna().all()
    (source_hash,) = set(table["source_hash"])
    automatic = store.load_mask(source_hash)
    assert automatic is not None and json.loads((run / "manifest.json").read_text())["masks"][source_hash].startswith("auto")
    masks = tmp_path / "masks"
    masks.mkdir()
    ImageDraw.Draw(image := Image.new("L", (800, 800), 0)).rectangle((0, 0, 399, 799), fill=255)
    image.save(masks / "photo.png")  # the left half is the subject
    before = table["ssim@subject"].tolist()
    assert main(["measure", str(run), "--metrics", "ssim@subject", "--masks", str(masks), "--no-progress"]) == 0
    assert "ssim@subject 2" in capsys.readouterr().out  # the mask changed: both rows measured again
    remeasured = RunStore.open(run).read_table()["ssim@subject"].tolist()
    assert remeasured != before and abs(store.load_mask(source_hash).mean() - 0.5) < 0.02
    assert main(["measure", str(run), "--metrics", "ssim@colour"]) == 2
    assert "unknown region 'colour' in metric 'ssim@colour'. Fix: use ssim@subject or ssim@background." in \
        capsys.readouterr().err


def test_catalogue_consistency_falls_as_the_prompt_takes_over(small_calibration, capsys):
    from img2img_lab.figures.consistency import catalogue_consistency, consistency_curve

    table = catalogue_consistency(small_calibration, masks="oracle")
    assert (table["sources"] == 2).all() and (table["seeds"] == 2).all()
    for _, part in table.groupby("guidance_scale"):
        part = part.sort_values("strength")
        first, last = part.iloc[0], part.iloc[-1]
        # strength 0 keeps each source's backdrop; strength 1 paints the prompt's black backdrop behind every product
        assert abs(first["background_spread"] - first["source_spread"]) < 5
        assert last["strength"] == 1.0 and last["background_spread"] < first["background_spread"] / 4
    with capsys.disabled():
        print("\n[consistency] background spread (ΔE2000) by strength at guidance 2: " + ", ".join(
            f"{row.strength:g}: {row.background_spread:.1f}" for row in table[table.guidance_scale == 2.0].itertuples())
            + f"; the sources' own spread {table.source_spread.iloc[0]:.1f}")
    figure = consistency_curve(table)
    assert figure.axes[0].get_xlabel() == "strength"


def test_catalogue_consistency_keeps_the_models_of_a_folder_apart(small_calibration, tmp_path):
    """A folder that compares models held every model's outputs in one group per prompt and strength: the spread
    mixed the models' backdrops. Each model is its own row now, with the values it has alone."""
    import hashlib
    import shutil

    import pandas as pd

    from img2img_lab.figures.consistency import catalogue_consistency, consistency_curve
    from img2img_lab.store.run_store import RunStore

    alone = catalogue_consistency(small_calibration, masks="oracle")
    shutil.copytree(small_calibration, tmp_path / "two-models")
    store = RunStore.open(tmp_path / "two-models")
    table = store.read_table()
    untouched = table[table.strength == table.strength.min()].groupby("source_hash").first()
    keys = table.cell_key.map(lambda key: hashlib.sha256(f"{key}-b".encode()).hexdigest()[:20])
    other = table.assign(model="another model", cell_key=keys, output_path="images/" + keys + ".png",
                         output_hash=table.source_hash.map(untouched["output_hash"]))  # its outputs: the sources kept
    for key, source_hash in zip(keys, table.source_hash):  # each in its own file, as a run folder holds it
        shutil.copy(store.root / untouched.loc[source_hash, "output_path"], store.root / "images" / f"{key}.png")
    store.replace_table(pd.concat([table, other], ignore_index=True))
    both = catalogue_consistency(tmp_path / "two-models", masks="oracle")
    assert sorted(both.model.unique()) == sorted([table.model.iloc[0], "another model"])
    mine = both[both.model == table.model.iloc[0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine[alone.columns], alone)
    labels = [text.get_text() for text in consistency_curve(both).axes[0].get_legend().get_texts()]
    assert any("another model" in label for label in labels)


def test_a_calibration_can_target_regions(tmp_path):
    from img2img_lab.calibration.procedure import CalibrationSettings, Target, calibrate
    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.resources import data_path

    plan = SweepPlan(images=[str(data_path("sources", "red_circle_on_blue.png")),
                             str(data_path("sources", "green_triangle_on_yellow.png"))],
                     prompts=["a yellow star on a black background"], strengths=[0.0, 0.5, 1.0], seeds=[0, 1],
                     guidance_scales=[2.0], steps=10)
    settings = CalibrationSettings(metrics=["ssim@subject", "delta_e@background", "oracle_background_match"],
                                   keep=[Target("ssim@subject", at_least=0.6)],
                                   follow=[Target("oracle_background_match", at_least=0.8)], refine_rounds=0,
                                   n_resamples=200)
    result = calibrate(plan, tmp_path / "run", settings=settings, pipe=load_pipeline(device="cpu"), progress=False)
    summary = result.summary.set_index("strength")
    assert summary.loc[0.0, "ssim@subject"] > summary.loc[1.0, "ssim@subject"]
    assert summary.loc[1.0, "delta_e@background"] > summary.loc[0.0, "delta_e@background"]
    assert {"keep", "follow", "both"} <= set(result.recommendations)
    assert "ssim@subject" in result.reference_table().columns[5:].str.removesuffix("_min").tolist()
    assert RunStore.open(tmp_path / "run").read_manifest()["masks"]  # the automatic masks, kept with their origin
