"""What a user feels (issue #19), each figure a ratio measured in this one run, on the embedded model:

    python benchmarks/felt_speed.py [--only extension,metrics,startup,engine] [--pairs 3]

* extension: a finished 10-strength x 4-seed sweep, extended by one strength and (another copy) by one seed:
  cells generated / cells new, and the extension's wall time against the fresh sweep's.
* metrics: the five default fidelity metrics per image at 64 / 256 / 512 px (1 thread), the reference
  implementations (scikit-image, scipy; per pair) against img2img-lab's (torch, source side once), interleaved;
  their share of the embedded model's generation time at the same size (20 steps at strength 0.5); and the
  40-cell sweep with --metrics against without.
* startup: CLI wall times, median of 5, interleaved: ``--help``, ``info`` described anew (``--reload``) and
  ``info`` read back, beside ``python -c "import img2img_lab, diffusers; diffusers.StableDiffusionImg2ImgPipeline"``
  (the floor of any command that loads a model).
* engine: the 40-cell sweep as a plain diffusers loop (``pipe(...)`` per cell) against the batched runner, at 1
  and 2 torch threads, ``--pairs`` interleaved pairs each: min and median ratio, and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import img2img_lab  # noqa: F401  - torchvision shim first

METRICS = ["ssim", "ms_ssim", "psnr", "delta_e", "edge_f1"]
PROMPT = "a yellow star on a black background"


def _plan(strengths: int = 10, seeds: int = 4, **extra):
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.resources import data_path

    return SweepPlan(images=[str(data_path("sources", "red_circle_on_blue.png"))], prompts=[PROMPT],
                     strengths=[round((i + 1) / strengths, 4) for i in range(strengths)] + extra.pop("more", []),
                     seeds=list(range(seeds)), guidance_scales=[2.0], steps=[20], schedulers=["ddim"], **extra)


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def extension(pipe, folder: Path) -> None:
    from img2img_lab.store.run_store import RunStore
    from img2img_lab.sweep.run import run_sweep

    def sweep(plan, out) -> tuple[float, int]:
        seconds = _timed(lambda: run_sweep(plan, folder / out, pipe=pipe, progress=False))
        return seconds, RunStore.open(folder / out).read_manifest()["counts"]["generated"]

    fresh, made = sweep(_plan(), "run")
    shutil.copytree(folder / "run", folder / "run-seed")
    by_strength = sweep(_plan(more=[0.15]), "run")
    by_seed = sweep(_plan(seeds=5), "run-seed")
    print(f"extension: fresh 40-cell sweep {fresh:.2f} s ({made} cells generated)")
    for what, (seconds, generated), new in (("+1 strength", by_strength, 4), ("+1 seed", by_seed, 10)):
        print(f"  {what:<12} generated {generated} for {new} new cells (ratio {generated / new:.2f}); "
              f"{seconds:.2f} s = {seconds / fresh:.2f}x the fresh sweep")


def metrics(pipe, folder: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "metrics"))
    from test_fidelity import REFERENCES  # the reference implementations the agreement test holds

    from img2img_lab.engine.per_cell import run_cell
    from img2img_lab.images.intake import fit_to_model
    from img2img_lab.metrics.measure import measure_pairs
    from img2img_lab.resources import data_path
    from img2img_lab.sweep.run import run_sweep

    torch.set_num_threads(1)
    photo = Image.open(data_path("sources", "red_circle_on_blue.png")).convert("RGB")
    print("metrics: five default metrics per image, 1 thread (reference per pair | img2img-lab, source once)")
    for side in (64, 256, 512):
        source = fit_to_model(photo.resize((side, side), Image.Resampling.LANCZOS))
        cell = _plan(strengths=2, seeds=1).cells()[0]  # strength 0.5: 10 of 20 steps
        started = time.perf_counter()
        array = np.asarray(run_cell(pipe, cell, source).image)
        generate = time.perf_counter() - started
        rng = np.random.default_rng(side)  # six outputs: the generated image with a little noise each
        outputs = [np.clip(array + rng.normal(0, 4, array.shape), 0, 255).astype(np.uint8) for _ in range(6)]
        source_array = np.asarray(source)
        old, new = [], []
        for _ in range(2):  # interleaved rounds
            old.append(_timed(lambda: [REFERENCES[n](source_array, o) for o in outputs for n in METRICS]) / 6)
            new.append(_timed(lambda: measure_pairs([source_array] * 6, outputs, METRICS)) / 6)
        print(f"  {side:>3} px: reference {min(old) * 1000:7.1f} ms | img2img-lab {min(new) * 1000:6.1f} ms "
              f"({min(old) / min(new):.1f}x); generation {generate * 1000:7.0f} ms/image -> metrics "
              f"{min(new) / generate:.1%} of it (reference {min(old) / generate:.1%})")
    torch.set_num_threads(2)
    plain, measured = [], []
    for index in range(2):
        plain.append(_timed(lambda: run_sweep(_plan(), folder / f"plain{index}", pipe=pipe, progress=False)))
        measured.append(_timed(lambda: run_sweep(_plan(), folder / f"measured{index}", pipe=pipe, progress=False,
                                                 metrics=METRICS)))
    print(f"  40-cell sweep, 2 threads: without metrics {min(plain):.2f} s, with the five {min(measured):.2f} s "
          f"-> {min(measured) / min(plain):.3f}x")


def startup() -> None:
    command = [str(Path(sys.executable).parent / "img2img-lab")]
    runs = {"--help": command + ["--help"], "info (described anew)": command + ["info", "--reload"],
            "info (read back)": command + ["info"],
            "import diffusers + SD img2img class": [sys.executable, "-c", "import img2img_lab, diffusers; "
                                                    "diffusers.StableDiffusionImg2ImgPipeline"]}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(5):
        for name, argv in runs.items():
            times[name].append(_timed(lambda: subprocess.run(argv, capture_output=True, check=True)))
    print("startup: CLI wall time, median of 5 (min)")
    for name, values in times.items():
        print(f"  {name:<36} {statistics.median(values):5.2f} s ({min(values):.2f})")


def engine(pipe, pairs: int) -> None:
    import torch
    from PIL import Image

    from img2img_lab.models.handle import as_model
    from img2img_lab.engine.batched import run_cells_batched
    from img2img_lab.images.intake import fit_to_model
    from img2img_lab.models.handle import cell_generator
    from img2img_lab.resources import data_path

    cells = _plan().cells()
    source = fit_to_model(Image.open(data_path("sources", "red_circle_on_blue.png")).convert("RGB"))

    def plain_loop():
        for cell in cells:
            pipe(prompt=cell.prompt, image=source, strength=cell.strength, num_inference_steps=20,
                 guidance_scale=2.0, generator=cell_generator(cell.seed))

    print("engine: 40 cells, plain diffusers loop / batched runner, interleaved pairs")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        run_cells_batched(as_model(pipe), cells[:4], [source])  # warm-up
        ratios, load = [], [os.getloadavg()[0]]
        for index in range(pairs):
            order = (plain_loop, lambda: run_cells_batched(as_model(pipe), cells, [source]))
            seconds = [_timed(step) for step in (order if index % 2 == 0 else order[::-1])]
            plain, batched = seconds if index % 2 == 0 else seconds[::-1]
            ratios.append(plain / batched)
            load.append(os.getloadavg()[0])
        print(f"  {threads} thread{'s' if threads > 1 else ''}: ratio min {min(ratios):.2f}x, median "
              f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}); load average "
              f"{min(load):.2f}-{max(load):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="extension,metrics,startup,engine")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved pairs per thread count (engine)")
    args = parser.parse_args()
    parts = args.only.split(",")

    import torch

    from img2img_lab.models.loading import load_pipeline

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    pipe = load_pipeline(None, device="cpu", threads=2) if set(parts) - {"startup"} else None
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        if "extension" in parts:
            extension(pipe, Path(scratch) / "extension")
        if "metrics" in parts:
            metrics(pipe, Path(scratch) / "metrics")
        if "startup" in parts:
            startup()
        if "engine" in parts:
            engine(pipe, args.pairs)


if __name__ == "__main__":
    main()
