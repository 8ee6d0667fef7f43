"""Calibrate "swap the background" on the embedded model and check the recommendation on held-out pairs (issue #18).

    python benchmarks/swap_background_check.py [--out runs/swap-background] [--held-out 32] [--seeds 3]

1. Renders the calibration sources (a red circle on blue, green and black) and calibrates with prompts that keep
   the subject and name a new background (yellow, white): keep = the oracle reads the source's shape and colour
   (``oracle_subject_kept >= 0.9``), follow = it reads the prompt's background (``oracle_background_match >= 0.8``),
   and both at once (``goal_both``: at least 80% of images meet both).
2. Region metrics of the calibration (the oracle's exact subject masks): SSIM inside and outside the subject per
   strength, beside whole-image SSIM.
3. Held-out validation: ``--held-out`` rendered pairs of other shapes and colours on other backgrounds, each prompt
   naming the source's own shape and colour on a new background; every goal's recommended (strength, guidance) on
   every pair x seed; the oracle's rates with bootstrap CIs.

Everything is cached in ``OUT`` (rerunning computes nothing new). One run, one process; prints what it measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import img2img_lab  # noqa: F401  - torchvision shim first

KEEP, FOLLOW = "oracle_subject_kept", "oracle_background_match"
SOURCE_BACKGROUNDS, PROMPT_BACKGROUNDS = ("blue", "green", "black"), ("yellow", "white")


def calibration_sources(folder: Path) -> list[str]:
    from PIL import Image

    from img2img_lab.shapes.world import Scene, render

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for background in SOURCE_BACKGROUNDS:
        path = folder / f"red_circle_on_{background}.png"
        if not path.is_file():
            Image.fromarray(render(Scene("circle", "red", background))).save(path)
        paths.append(str(path))
    return paths


def held_out_pairs(count: int, folder: Path, *, seed: int = 123) -> list[tuple[str, str]]:
    """Rendered sources of any shape and colour but the calibration's (a red circle), each with a prompt naming its
    own shape and colour on another background."""
    import numpy as np
    from PIL import Image

    from img2img_lab.shapes.world import COLOURS, Scene, caption, random_scene, render

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    while len(pairs) < count:
        scene = random_scene(rng)
        if (scene.shape, scene.colour) == ("circle", "red"):
            continue
        backgrounds = [name for name in COLOURS if name not in (scene.colour, scene.background)]
        target = Scene(scene.shape, scene.colour, str(rng.choice(backgrounds)))
        path = folder / f"held_out_{len(pairs):03d}.png"
        if not path.is_file():
            Image.fromarray(render(scene)).save(path)
        pairs.append((str(path), caption(target)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/swap-background")
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from img2img_lab.calibration.procedure import CalibrationSettings, Target, calibrate, validate
    from img2img_lab.metrics.measure import measure_run
    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.store.run_store import RunStore

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    plan = SweepPlan(images=calibration_sources(out / "sources"),
                     prompts=[f"a red circle on a {colour} background" for colour in PROMPT_BACKGROUNDS],
                     strengths=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], seeds=list(range(5)), guidance_scales=[2.0, 4.0],
                     steps=20, name="swap-background")
    settings = CalibrationSettings(metrics=[KEEP, FOLLOW, "ssim"], keep=[Target(KEEP, at_least=0.9)],
                                   follow=[Target(FOLLOW, at_least=0.8)], refine_rounds=2, n_resamples=1000)
    pipe = load_pipeline()
    started = time.perf_counter()
    result = calibrate((plan, settings), out / "calibrate", pipe=pipe, progress=False)
    print(f"calibration: {result.counts['summary']} in {time.perf_counter() - started:.1f} s")
    for recommendation in result.recommendations.values():
        print(f"  {recommendation.goal}: {recommendation.message}")
    columns = ["guidance_scale", "strength", KEEP, FOLLOW, "goal_both", "goal_both_ci_low", "goal_both_ci_high"]
    print(result.summary[columns].to_string(index=False, float_format=lambda value: f"{value:.2f}"))

    measure_run(out / "calibrate", ["ssim@subject", "ssim@background"], masks="oracle", progress=False)
    table = RunStore.open(out / "calibrate").read_table()
    regions = table.groupby("strength")[["ssim", "ssim@subject", "ssim@background"]].mean()
    print("\nregion SSIM (oracle masks), mean over sources, prompts, seeds and guidance:")
    print(regions.to_string(float_format=lambda value: f"{value:.3f}"))

    pairs = held_out_pairs(args.held_out, out / "held-out-sources")
    started = time.perf_counter()
    validation = validate(result, pairs=pairs, seeds=list(range(args.seeds)), out_dir=out / "held-out", pipe=pipe)
    print(f"\nheld-out validation: {len(pairs)} pairs x {args.seeds} seeds per goal, "
          f"{time.perf_counter() - started:.1f} s")
    print(validation.to_string(index=False, float_format=lambda value: f"{value:.3f}"))


if __name__ == "__main__":
    main()
