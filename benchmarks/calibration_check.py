"""Check a calibration of the embedded model against ground truth, and adaptive refinement against a dense grid.

    python benchmarks/calibration_check.py [--out runs/calibration-check] [--held-out 32] [--seeds 3]

1. Calibrates ``data/configs/calibrate.yaml`` (coarse grid + adaptive refinement) into ``OUT/calibrate``.
2. Held-out validation: renders ``--held-out`` new (source, prompt) pairs of the shapes world that differ from the
   source in shape, colour and background (none is a calibration source or prompt), runs each goal's recommended
   (strength, guidance) on every pair x seed, and prints the oracle's rates: "keep the subject" must keep the
   source's three attributes in >= 90% of runs, "follow the prompt" must show the prompt's three in >= 80%.
3. Dense grid: the same sources, prompts, seeds and guidance values at every executed-step count (21 strengths
   at 20 steps) without refinement; prints both crossings and both cell counts.

Everything is cached in ``OUT`` (rerunning computes nothing new). One run, one process; prints what it measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import img2img_lab  # noqa: F401  - torchvision shim first

REPO = Path(__file__).resolve().parent.parent


def held_out_pairs(count: int, folder: Path, *, exclude_images, exclude_prompts, seed: int = 99):
    """``count`` rendered (image path, prompt) pairs, all three attributes different; no image is a calibration
    source and no prompt (nor source caption) is a calibration prompt or a calibration source's caption."""
    from PIL import Image

    from img2img_lab.images.hashes import content_hash
    from img2img_lab.shapes.evaluate import evaluation_pairs
    from img2img_lab.shapes.world import Scene, caption, render

    folder.mkdir(parents=True, exist_ok=True)
    excluded_hashes = {content_hash(Image.open(path).convert("RGB")) for path in exclude_images}
    pairs = []
    for index, (scene, target) in enumerate(evaluation_pairs(count * 3, seed=seed)):
        prompt = caption(Scene(*target))
        image = Image.fromarray(render(scene))
        if prompt in exclude_prompts or caption(scene) in exclude_prompts or content_hash(image) in excluded_hashes:
            continue
        path = folder / f"held_out_{index:03d}.png"
        if not path.is_file():
            image.save(path)
        pairs.append((str(path), prompt))
        if len(pairs) == count:
            break
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "data" / "configs" / "calibrate.yaml"))
    parser.add_argument("--out", default="runs/calibration-check")
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-dense", action="store_true")
    args = parser.parse_args()

    import torch

    from img2img_lab.calibration.procedure import CalibrationSettings, calibrate, load_config, strength_for_steps, validate
    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.shapes.world import caption, parse_caption, Scene

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    plan, settings = load_config(args.config)
    pipe = load_pipeline(plan.model)

    started = time.perf_counter()
    result = calibrate((plan, settings), out / "calibrate", pipe=pipe, progress=False)
    print(f"calibration: {result.counts['cells']} cells ({result.counts['coarse_cells']} coarse + "
          f"{result.counts['refinement_cells']} refinement, {result.counts['refinement_rounds']} rounds) "
          f"in {time.perf_counter() - started:.1f} s")
    for recommendation in result.recommendations.values():
        print(f"  {recommendation.goal}: {recommendation.message}")

    calibration_prompts = set(plan.prompts)
    source_captions = set()
    from img2img_lab.shapes.oracle import read_image
    from PIL import Image

    for path in plan.images:
        reading = read_image(Image.open(path).convert("RGB"))
        source_captions.add(caption(Scene(reading.shape, reading.colour, reading.background)))
    pairs = held_out_pairs(args.held_out, out / "held-out-sources", exclude_images=plan.images,
                           exclude_prompts=calibration_prompts | source_captions)
    assert not {prompt for _, prompt in pairs} & calibration_prompts
    started = time.perf_counter()
    validation = validate(result, pairs=pairs, seeds=list(range(args.seeds)), out_dir=out / "held-out", pipe=pipe)
    print(f"\nheld-out validation: {len(pairs)} pairs x {args.seeds} seeds per goal, "
          f"{time.perf_counter() - started:.1f} s")
    print(validation.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    for _, prompt in pairs:
        parse_caption(prompt)  # every held-out prompt is a caption the oracle can check

    if args.skip_dense:
        return
    steps = plan.steps[0]
    dense_plan = SweepPlan.from_dict({**plan.to_dict(), "strengths": [strength_for_steps(steps, k)
                                                                      for k in range(steps + 1)]})
    dense_settings = CalibrationSettings(**{**settings.__dict__, "refine_rounds": 0})
    started = time.perf_counter()
    dense = calibrate((dense_plan, dense_settings), out / "dense", pipe=pipe, progress=False, save=False)
    print(f"\ndense grid: {dense.counts['cells']} cells in {time.perf_counter() - started:.1f} s")
    print(f"{'crossing':<58} {'adaptive':>9} {'dense':>9}")
    same = True
    for found, reference in zip(result.crossings, dense.crossings):
        label = f"g={found.guidance_scale:g} {found.kind} {found.target.describe()}"
        print(f"{label:<58} {str(found.strength):>9} {str(reference.strength):>9}")
        same &= found.strength == reference.strength
    print(f"cells: adaptive {result.counts['cells']} vs dense {dense.counts['cells']} = "
          f"{result.counts['cells'] / dense.counts['cells']:.0%}; same crossings: {same}")


if __name__ == "__main__":
    main()
