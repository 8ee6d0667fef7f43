"""LoRA scale × strength on the embedded model, measured: the project's outlined-style adapter
(``data/adapters/outline.safetensors``) swept over the sample sources, with the oracle reading each output.

For every (LoRA scale, strength) it prints, with two-stage bootstrap 95% CIs over sources then seeds
(:func:`img2img_lab.calibration.stats.strength_summary`), the share of outputs

* **show the style** (``oracle_outlined``: the shape in an outline ring),
* **keep the subject** (``oracle_subject_kept``: the source's shape and colour), and
* **both at once** (per image),

then a held-out check: the (scale, strength) with the highest "both" share on the first half of the sources,
measured on the other half. One run folder, batched engine, CPU.

    python benchmarks/lora_scale_strength.py --out runs/lora-bench --seeds 4 --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCALES = [0.0, 0.25, 0.5, 0.75, 1.0]
STRENGTHS = [0.25, 0.5, 0.75, 1.0]
#: The embedded model's recommended guidance (data/models/shapes-world/evaluation.json).
GUIDANCE = 2.0
GOALS = {"oracle_outlined": "show the style", "oracle_subject_kept": "keep the subject", "both": "both"}


def sweep_table(out: Path, seeds: int, steps: int):
    """Every sample source with its own caption x seeds x strengths x LoRA scales, measured by the oracle."""
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.resources import bundled_sources, data_path
    from img2img_lab.shapes.world import SAMPLE_SCENES, caption
    from img2img_lab.sweep.run import run_sweep

    adapter = data_path("adapters", "outline.safetensors")
    tables = []
    for name, path in sorted(bundled_sources().items()):
        plan = SweepPlan(images=[path], prompts=[caption(SAMPLE_SCENES[name])], strengths=STRENGTHS,
                         seeds=list(range(seeds)), steps=[steps], guidance_scales=[GUIDANCE],
                         loras=[{"file": str(adapter), "scales": SCALES}])
        tables.append(run_sweep(plan, out, metrics=list(GOALS)[:2], progress=False))
    import pandas as pd

    table = pd.concat(tables, ignore_index=True)
    table["both"] = (table["oracle_outlined"] * table["oracle_subject_kept"]).astype(float)
    table["lora_scale"] = table["lora_scales"].astype(float)
    return table


def summary(table):
    from img2img_lab.calibration.stats import strength_summary

    return strength_summary(table, list(GOALS), n_resamples=2000).assign(
        lora_scale=lambda frame: frame["lora"].map(dict(zip(table["lora"], table["lora_scale"]))))


def print_table(result, goal: str) -> None:
    print(f"\n{GOALS[goal]} ({goal}): share of outputs, mean [95% CI]")
    print("| LoRA scale | " + " | ".join(f"strength {strength:g}" for strength in STRENGTHS) + " |")
    print("| --- |" + " --- |" * len(STRENGTHS))
    for scale in SCALES:
        rows = result[result["lora_scale"] == scale].set_index("strength")
        cells = [f"{rows.loc[s, goal]:.2f} [{rows.loc[s, goal + '_ci_low']:.2f}, {rows.loc[s, goal + '_ci_high']:.2f}]"
                 for s in STRENGTHS]
        print(f"| {scale:g} | " + " | ".join(cells) + " |")


def held_out(table) -> None:
    """Each half of the sources in turn: its best (scale, strength) for "both", measured on the other half."""
    sources = sorted(table["source_hash"].unique())
    halves = (sources[:len(sources) // 2], sources[len(sources) // 2:])
    for chosen, other in (halves, halves[::-1]):
        means = table[table["source_hash"].isin(chosen)].groupby(["lora_scale", "strength"])["both"].mean()
        if means.max() == 0:
            print(f"\nheld out: on {len(chosen)} sources no setting both shows the style and keeps the subject")
            continue
        scale, strength = means.idxmax()
        check = summary(table[table["source_hash"].isin(other)])
        row = check[(check["lora_scale"] == scale) & (check["strength"] == strength)].iloc[0]
        print(f"\nheld out: best for both on {len(chosen)} sources: LoRA scale {scale:g}, strength {strength:g} "
              f"({means.max():.2f}); on the other {len(other)}: {row['both']:.2f} [{row['both_ci_low']:.2f}, "
              f"{row['both_ci_high']:.2f}]")


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/lora-bench")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = sweep_table(Path(args.out), args.seeds, args.steps)
    print(f"{len(table)} images: {table['source_hash'].nunique()} sources x {args.seeds} seeds x {len(STRENGTHS)} "
          f"strengths x {len(SCALES)} LoRA scales, {args.steps} steps, guidance {GUIDANCE:g}, torch "
          f"{torch.__version__} on {args.threads} threads")
    result = summary(table)
    for goal in GOALS:
        print_table(result, goal)
    held_out(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
