"""Metrics: sanity, agreement with independent implementations, LPIPS availability, prompt hooks, run folders."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from skimage.transform import resize

import img2img_lab.metrics.lpips_metric as lpips_metric
from img2img_lab.metrics.clip_score import ClipScore
from img2img_lab.errors import Img2ImgLabError
from img2img_lab.errors import MetricUnavailable
from img2img_lab.metrics.availability import metric_status
from img2img_lab.metrics.fidelity import delta_e, edge_f1, ms_ssim, mse, psnr, ssim
from img2img_lab.metrics.lpips_metric import LPIPS_BACKBONE_FILES, lpips_distances, lpips_status
from img2img_lab.metrics.measure import measure_pair, measure_pairs, measure_run
from img2img_lab.metrics.registry import register_prompt_scorer


@pytest.fixture(scope="module")
def astronaut():
    image = resize(skdata.astronaut(), (128, 128), anti_aliasing=True, preserve_range=True)
    return np.rint(image).astype(np.uint8)


def _noisy(image, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


def test_identical_images(astronaut):
    assert ssim(astronaut, astronaut) == pytest.approx(1.0, abs=1e-12)
    assert ms_ssim(astronaut, astronaut) == pytest.approx(1.0, abs=1e-12)
    assert psnr(astronaut, astronaut) == math.inf  # documented: identical images have infinite PSNR
    assert mse(astronaut, astronaut) == 0.0
    assert delta_e(astronaut, astronaut) == 0.0
    assert edge_f1(astronaut, astronaut) == 1.0
    # LPIPS wiring only: a random backbone, never reported as LPIPS.
    assert lpips_distances([astronaut], [astronaut], random_backbone=True)[0] == pytest.approx(0.0, abs=1e-7)


def test_increasing_noise_moves_every_metric_the_right_way(astronaut):
    sigmas = [2, 5, 10, 20, 40, 80]
    noisy = [_noisy(astronaut, sigma) for sigma in sigmas]
    ssims = [ssim(astronaut, image) for image in noisy]
    ms = [ms_ssim(astronaut, image) for image in noisy]
    psnrs = [psnr(astronaut, image) for image in noisy]
    delta = [delta_e(astronaut, image) for image in noisy]
    edges = [edge_f1(astronaut, image) for image in noisy]
    wiring = lpips_distances([astronaut] * len(noisy), noisy, random_backbone=True)
    assert all(a > b for a, b in zip(ssims, ssims[1:])), ssims
    assert all(a > b for a, b in zip(ms, ms[1:])), ms
    assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert all(a < b for a, b in zip(delta, delta[1:])), delta
    assert all(a < b for a, b in zip(wiring, wiring[1:])), wiring
    assert edges[0] > edges[-1]
    assert ssims[0] > 0.9 and ssims[-1] < 0.3


def test_ssim_and_psnr_agree_with_torchmetrics(astronaut):
    """SSIM: torchmetrics averages the SSIM map over the whole image (borders from reflect padding), the paper
    and scikit-image over the valid region; cropping torchmetrics' full map to the valid region must give our
    value to 1e-4. PSNR must agree directly."""
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    coffee = np.rint(resize(skdata.coffee(), (256, 384), preserve_range=True, anti_aliasing=True)).astype(np.uint8)
    as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].double()  # noqa: E731
    for reference in (astronaut, coffee):
        for sigma in (5, 15, 40):
            other = _noisy(reference, sigma, seed=3)
            _, full_map = structural_similarity_index_measure(
                as_tensor(other), as_tensor(reference), data_range=255.0, gaussian_kernel=True, sigma=1.5,
                kernel_size=11, return_full_image=True)
            expected_ssim = full_map[..., 5:-5, 5:-5].mean().item()
            expected_psnr = peak_signal_noise_ratio(as_tensor(other), as_tensor(reference), data_range=255.0).item()
            assert ssim(reference, other) == pytest.approx(expected_ssim, abs=1e-4)
            assert psnr(reference, other) == pytest.approx(expected_psnr, abs=1e-4)
            # one-scale MS-SSIM is SSIM, computed along the other path (tests/test_fidelity.py holds scikit-image)
            assert ms_ssim(reference, other, scales=1) == pytest.approx(expected_ssim, abs=1e-4)
    # One-scale MS-SSIM is SSIM; five-scale MS-SSIM is close to torchmetrics' (which also keeps borders).
    other = _noisy(coffee, 15, seed=4)
    assert ms_ssim(coffee, other, scales=1) == pytest.approx(ssim(coffee, other), abs=1e-7)
    expected = multiscale_structural_similarity_index_measure(
        as_tensor(other), as_tensor(coffee), data_range=255.0, kernel_size=11, sigma=1.5).item()
    assert ms_ssim(coffee, other) == pytest.approx(expected, abs=0.02)


def test_psnr_and_mse_by_hand():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255
    assert mse(a, b) == pytest.approx(1 / 48)
    assert psnr(a, b) == pytest.approx(10 * math.log10(48))


def test_delta_e_reference_pair():
    # Sharma et al. (2005) table, pair 1 is Lab-based; here an sRGB check: pure red vs pure blue is ~52.9.
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((2, 2, 3), np.uint8)
    blue[..., 2] = 255
    assert delta_e(red, blue) == pytest.approx(52.88, abs=0.05)


def test_edge_f1_sees_composition_not_colour():
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = (255, 0, 0)
    recoloured = square.copy()
    recoloured[16:48, 16:48] = (0, 0, 255)
    moved = np.zeros_like(square)
    moved[4:36, 28:60] = (255, 0, 0)
    assert edge_f1(square, recoloured) == pytest.approx(1.0)
    assert edge_f1(square, moved) < 0.5
    assert delta_e(square, recoloured) > 10


def test_bad_inputs():
    with pytest.raises(Img2ImgLabError, match=r"differ in size"):
        ssim(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 24, 3), np.uint8))
    with pytest.raises(Img2ImgLabError, match=r"RGB uint8 images of shape HxWx3"):
        ssim(np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8))
    with pytest.raises(Img2ImgLabError, match=r"unknown metric 'sharpness'"):
        measure_pair(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), ["sharpness"])


def test_lpips_missing_backbone_names_the_file(monkeypatch, tmp_path, no_converted_weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(lpips_metric, "_LPIPS_MODELS", {})
    available, explanation = lpips_status("alex")
    assert not available
    assert "alexnet-owt-7be5be79.pth" in explanation and str(tmp_path / "torch-home" / "hub" / "checkpoints") in explanation
    with pytest.raises(MetricUnavailable, match=r"backbone weights missing at .*alexnet-owt-7be5be79\.pth"):
        lpips_distances([np.zeros((32, 32, 3), np.uint8)], [np.zeros((32, 32, 3), np.uint8)])
    values = measure_pairs([np.zeros((32, 32, 3), np.uint8)], [np.zeros((32, 32, 3), np.uint8)], ["lpips", "ssim"])
    assert math.isnan(values["lpips"][0]) and values["ssim"][0] == 1.0
    for net, name in LPIPS_BACKBONE_FILES.items():
        assert name in lpips_status(net)[1]


def test_lpips_planted_backbone_of_another_hash_is_refused(monkeypatch, tmp_path, no_converted_weights):
    """A file of torchvision's name in $TORCH_HOME/hub/checkpoints whose SHA-256 is not the one its name carries (here
    random weights) is never used: LPIPS is unavailable with the reason (it used to load silently)."""
    import torchvision

    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), checkpoints / LPIPS_BACKBONE_FILES["alex"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(lpips_metric, "_LPIPS_MODELS", {})
    available, explanation = metric_status("lpips")
    assert not available and "SHA-256 does not start with 7be5be79" in explanation and "not used" in explanation
    with pytest.raises(MetricUnavailable, match="SHA-256 does not start with 7be5be79"):
        lpips_distances([np.zeros((32, 32, 3), np.uint8)], [np.zeros((32, 32, 3), np.uint8)])


def test_clip_score_unavailable_offline_and_wired_with_local_weights(tmp_path):
    with pytest.raises(MetricUnavailable, match=r"clip_score: CLIP weights 'img2img-lab/no-such-clip' are not available"):
        ClipScore("img2img-lab/no-such-clip")
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from img2img_lab._utils.bpe import write_clip_bpe

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_bpe(tmp_path / "tok", [], model_max_length=32))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path / "tiny-clip"
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    scorer = ClipScore(str(folder))
    value = scorer(np.zeros((48, 48, 3), np.uint8), "a red circle")
    assert 0.0 <= value <= 100.0
    assert scorer(np.zeros((48, 48, 3), np.uint8), "a red circle") == value


def test_prompt_scorer_hook():
    calls = []

    def factory():
        def scorer(image, prompt):
            calls.append(prompt)
            return float(np.asarray(image).mean() / 255.0)
        return scorer

    register_prompt_scorer("mean_brightness", factory, value_range=(0, 1), description="test hook")
    white = np.full((16, 16, 3), 255, np.uint8)
    assert measure_pair(white, white, ["mean_brightness"], prompt="a white square") == {"mean_brightness": 1.0}
    assert calls == ["a white square"]
    with pytest.raises(Img2ImgLabError, match=r"needs the prompts"):
        measure_pairs([white], [white], ["mean_brightness"])

    def unavailable():
        raise MetricUnavailable("never: no weights. Fix: none")

    register_prompt_scorer("never", unavailable)
    assert math.isnan(measure_pair(white, white, ["never"], prompt="x")["never"])
    assert metric_status("never") == (False, "never: no weights. Fix: none")


def test_measure_run_is_idempotent_and_notes_unavailable_metrics(tiny_pipe, sources_dir, tmp_path, monkeypatch,
                                                                 no_converted_weights):
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.sweep.run import run_sweep

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(lpips_metric, "_LPIPS_MODELS", {})
    run = tmp_path / "run"
    plan = SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["p"], strengths=[0.0, 0.5, 1.0],
                     seeds=[0, 1], steps=[10], schedulers=["ddim"], guidance_scales=[2.0])
    run_sweep(plan, run, pipe=tiny_pipe, progress=False)
    first = measure_run(run, ["ssim", "psnr", "delta_e", "lpips"], progress=False)
    assert first["computed"] == {"ssim": 6, "psnr": 6, "delta_e": 6}
    assert "alexnet-owt-7be5be79.pth" in first["unavailable"]["lpips"]
    table = pd.read_parquet(run / "results.parquet")
    assert table["lpips"].isna().all() and table["ssim"].notna().all()
    second = measure_run(run, ["ssim", "psnr", "delta_e", "lpips"], progress=False)
    assert second["computed"] == {}
    pd.testing.assert_frame_equal(table, pd.read_parquet(run / "results.parquet"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert sum("alexnet-owt-7be5be79.pth" in note for note in manifest["notes"]) == 1
    # Rows missing different metrics are measured in groups, to the same values.
    from img2img_lab.store.run_store import RunStore

    holes = table.copy()
    holes.loc[[0, 1], "ssim"] = np.nan
    holes.loc[[1, 2], "delta_e"] = np.nan
    RunStore.open(run).replace_table(holes)
    assert measure_run(run, ["ssim", "psnr", "delta_e"], progress=False)["computed"] == {"ssim": 2, "delta_e": 2}
    pd.testing.assert_frame_equal(table, pd.read_parquet(run / "results.parquet"), rtol=0, atol=1e-9)
    # Zero-step cells hold the VAE round trip, which is exactly the floor of the same seed (one per source: the plan's
    # first seed).
    floor = pd.read_parquet(run / "floor.parquet")
    assert len(floor) == 1 and floor["ssim"].notna().all()
    zero = table[table.strength == 0.0].set_index("seed")["ssim"]
    assert zero[floor["seed"][0]] == pytest.approx(floor["ssim"][0], abs=1e-12)
    # Measured against the source, more strength means less similarity on average.
    by_strength = table.groupby("strength")["ssim"].mean()
    assert by_strength[0.0] > by_strength[1.0]


def test_sweep_measures_as_it_goes(tiny_pipe, sources_dir, tmp_path):
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.sweep.run import run_sweep

    plan = SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["p"], strengths=[0.3, 0.9], seeds=[0],
                     steps=[10], schedulers=["euler"], guidance_scales=[1.0])
    table = run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, progress=False, metrics=["ssim", "edge_f1"])
    assert table[["ssim", "edge_f1"]].notna().all().all()
    output = Image.open(tmp_path / "run" / table.output_path[0]).convert("RGB")
    source = Image.open(tmp_path / "run" / "sources" / f"{table.source_hash[0]}.png").convert("RGB")
    assert table.ssim[0] == pytest.approx(ssim(source, output))


def test_a_sweep_measures_its_floor_and_cells_with_one_reference_per_source(tiny_pipe, sources_dir, tmp_path,
                                                                            monkeypatch):
    """The floor (each source's VAE round trip) was measured with a reference of its own, on the CPU even
    where the pipeline is on a GPU; it now shares the cells' references, on the pipeline's device."""
    import img2img_lab.metrics.fidelity as fidelity
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.store.run_store import RunStore
    from img2img_lab.sweep.run import run_sweep

    devices = []
    real_init = fidelity.SourceReference.__init__
    monkeypatch.setattr(fidelity.SourceReference, "__init__",
                        lambda self, *a, **k: (devices.append(k.get("device")), real_init(self, *a, **k))[1])
    plan = SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["p"], strengths=[0.3, 0.9], seeds=[0, 1],
                     steps=[10], schedulers=["euler"], guidance_scales=[1.0])
    run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, progress=False, metrics=["ssim", "edge_f1"])
    floor = RunStore.open(tmp_path / "run").read_floor()
    assert len(floor) == 1 and floor[["ssim", "edge_f1"]].notna().all().all()
    assert devices == [str(tiny_pipe.device)]  # one source, one reference: floors and cells alike


def test_a_sweep_with_metrics_measures_the_floor_an_earlier_sweep_stored_unmeasured(tiny_pipe, sources_dir, tmp_path):
    """A folder first swept without metrics, then extended by a sweep with metrics and only new cells: the floor
    it found stayed unmeasured (no `ssim_floor` in a calibration, no floor line in the curves). Now the sweep measures
    the round trips it finds for the metrics they lack, with the values a fresh measurement gives (one whose image
    was damaged is made again, not an error)."""
    from img2img_lab.images.hashes import content_hash
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.store.run_store import RunStore
    from img2img_lab.sweep.run import run_sweep

    base = dict(images=[str(sources_dir / "source0.png")], prompts=["p"], seeds=[0, 1], steps=[10],
                schedulers=["ddim"], guidance_scales=[1.0])
    run_sweep(SweepPlan(strengths=[0.3], **base), tmp_path / "run", pipe=tiny_pipe, progress=False)
    store = RunStore.open(tmp_path / "run")
    assert "ssim" not in store.read_floor().columns
    damaged = store.root / store.read_floor().output_path[0]
    damaged.write_bytes(damaged.read_bytes()[:40])  # a truncated PNG
    table = run_sweep(SweepPlan(strengths=[0.9], **base), tmp_path / "run", pipe=tiny_pipe, progress=False,
                      metrics=["ssim", "psnr"])
    assert table[["ssim", "psnr"]].notna().all().all()
    floor = store.read_floor()
    assert len(floor) == 1 and floor[["ssim", "psnr"]].notna().all().all()
    for row in floor.to_dict("records"):
        assert content_hash(store.load_output(row)) == row["output_hash"]
        expected = measure_pair(store.load_source(row["source_hash"]), store.load_output(row), ["ssim", "psnr"])
        assert row["ssim"] == pytest.approx(expected["ssim"], abs=1e-12)
        assert row["psnr"] == pytest.approx(expected["psnr"], abs=1e-9)


def test_the_registry_loads_plugins_on_first_use_without_an_import_circle():
    probe = ("import sys, img2img_lab.metrics.measure as metrics\n"
             "print(sorted(name for name in sys.modules if name.startswith('img2img_lab.shapes')))\n"
             "print(metrics.measure_pair(*[__import__('numpy').zeros((8, 8, 3), 'uint8')] * 2, ['oracle_kept']))\n"
             "print('img2img_lab.shapes.oracle' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert output.splitlines() == ["[]", "{'oracle_kept': 0.0}", "True"], output  # a blank image: no shape


def test_an_unavailable_scorer_is_asked_again_and_metrics_unregister():
    from img2img_lab.errors import MetricUnavailable
    from img2img_lab.metrics.availability import metric_status
    from img2img_lab.metrics.registry import register_prompt_scorer, unregister_metric

    weights = []

    def factory():
        if not weights:
            raise MetricUnavailable("later: no weights yet. Fix: download them")
        return lambda image, prompt: 0.5

    register_prompt_scorer("later", factory)
    try:
        assert metric_status("later") == (False, "later: no weights yet. Fix: download them")
        weights.append("downloaded")  # e.g. the weights arrived while the notebook ran
        assert metric_status("later") == (True, "later: available")
    finally:
        unregister_metric("later")
    with pytest.raises(Img2ImgLabError, match=r"unknown metric 'later'"):
        metric_status("later")


def test_the_public_face_measures_two_arrays_and_refuses_images_too_small_for_lpips(astronaut):
    import img2img_lab.metrics as metrics

    noisy = _noisy(astronaut, 20)
    assert metrics.ssim(astronaut, noisy) == ssim(astronaut, noisy) < 1
    assert metrics.psnr(astronaut, noisy) == psnr(astronaut, noisy)
    assert metrics.delta_e(astronaut, noisy) == delta_e(astronaut, noisy) > 0
    assert metrics.metric_status("ssim") == metric_status("ssim")
    assert 0 < metrics.lpips(astronaut, noisy) == float(lpips_distances([astronaut], [noisy])[0])
    small = astronaut[:24, :24]  # AlexNet's pooling empties a 24-px feature map: a torch error before
    with pytest.raises(Img2ImgLabError, match=r"lpips \(alex\) needs images of at least 31x31 px; got 24x24\. Fix:"):
        metrics.lpips(small, small)
    assert metrics.lpips(small, small, net="vgg") == 0.0
    with pytest.warns(UserWarning, match="lpips is NaN: lpips .alex. needs images of at least 31x31"):
        values = measure_pairs([small], [small], ["lpips", "ssim"])
    assert math.isnan(values["lpips"][0]) and values["ssim"][0] == 1.0
