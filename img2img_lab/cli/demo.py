"""``img2img-lab demo``: the whole loop, offline, on the embedded shapes-world model.

Sweeps ``data/configs/demo.yaml`` (2 sources x 2 prompts x 8 strengths x 3 seeds), measures every image
(SSIM, CIEDE2000, edge F1, LPIPS when its weights are present, and the shapes-world oracle: does the output
keep the source's shape/colour/background, does it show the prompt's), and writes into the run folder:

* ``grid_<source>.png`` — source, then one column per strength, one row per prompt (seed 0);
* ``curves_oracle.png`` — share of outputs that keep the source vs that match the prompt, against strength;
* ``curves_ssim.png`` — SSIM against strength with its spread over seeds and the VAE floor;
* ``summary.csv`` — the per-strength table printed at the end.

>>> summary = run_demo("runs/small-demo", seeds=[0], strengths=[0.0, 0.5], progress=False)  # doctest: +ELLIPSIS
...
>>> summary.strength.tolist()
[0.0, 0.5]
"""

from __future__ import annotations

import time
from pathlib import Path

from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.resources import example_config

DEMO_METRICS = ("ssim", "delta_e", "edge_f1", "lpips", "oracle_kept", "oracle_match", "oracle_preservation",
                "oracle_adherence")


def demo_summary(table):
    """Per strength: executed steps, mean SSIM / Delta E / LPIPS, and the share of outputs that keep the source
    (all three attributes) and that match the prompt (all three).

    >>> demo_summary(table.assign(delta_e=2.0, lpips=0.25, oracle_kept=1.0, oracle_match=0.0)).columns.tolist()
    ['strength', 'steps', 'ssim', 'delta_e', 'lpips', 'kept_source', 'matches_prompt', 'images']
    """
    grouped = table.groupby("strength")
    summary = grouped.agg(steps=("executed_steps", "first"), ssim=("ssim", "mean"), delta_e=("delta_e", "mean"),
                          lpips=("lpips", "mean"), kept_source=("oracle_kept", "mean"),
                          matches_prompt=("oracle_match", "mean"), images=("cell_key", "count"))
    return summary.reset_index()


def run_demo(out: str | Path = "runs/demo", *, config: str | Path | None = None, seeds=None, strengths=None,
             pipe=None, progress: bool = True):
    """Run the demo study into ``out`` and return the per-strength summary (a DataFrame)."""
    import matplotlib.pyplot as plt

    from img2img_lab.figures.grids import comparison_grid, save_png, strength_curves
    from img2img_lab.store.run_store import atomic_write
    from img2img_lab.sweep.run import run_sweep

    plan = SweepPlan.from_yaml(example_config("demo") if config is None else config)
    if seeds is not None:
        plan.seeds = list(seeds)
    if strengths is not None:
        plan.strengths = list(strengths)
    plan = SweepPlan.from_dict(plan.to_dict())  # re-validate the overrides
    out = Path(out)
    table = run_sweep(plan, out, pipe=pipe, progress=progress, metrics=DEMO_METRICS)
    for source in table["source_name"].unique():
        grid = comparison_grid(out, rows="prompt", cols="strength", annotate=["ssim", "oracle_kept", "oracle_match"],
                               where={"source_name": source, "seed": plan.seeds[0]}, title=True)
        save_png(grid, out / f"grid_{source}.png")
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=100)
    strength_curves(out, "oracle_kept", hue=None, ax=axis, spread="none", show_floor=False,
                    label="keeps the source (oracle_kept)")
    strength_curves(out, "oracle_match", hue=None, ax=axis, spread="none", show_floor=False,
                    label="matches the prompt (oracle_match)")
    axis.set_ylabel("share of outputs")
    axis.set_ylim(-0.03, 1.03)
    axis.set_title(f"all {len(plan.seeds)} seeds x {len(plan.images)} sources x {len(plan.prompts)} prompts per strength")
    atomic_write(out / "curves_oracle.png", lambda stream: figure.savefig(stream, format="png"))
    plt.close(figure)
    figure = strength_curves(out, "ssim", hue="prompt")
    atomic_write(out / "curves_ssim.png", lambda stream: figure.savefig(stream, format="png"))
    plt.close(figure)
    summary = demo_summary(table)
    atomic_write(out / "summary.csv", lambda stream: summary.to_csv(stream, index=False), binary=False)
    return summary


def main(out: str, *, seeds=None, strengths=None, progress: bool = True) -> int:
    """CLI body: run, then print where everything is and the summary table."""
    started = time.perf_counter()
    summary = run_demo(out, seeds=seeds, strengths=strengths, progress=progress)
    elapsed = time.perf_counter() - started
    print(f"\nimg2img-lab demo: {int(summary['images'].sum())} images in {elapsed:.1f} s -> {out}/")
    print("  grids: grid_<source>.png   curves: curves_oracle.png, curves_ssim.png   table: results.parquet\n")
    formatted = summary.assign(
        ssim=summary["ssim"].map("{:.3f}".format), delta_e=summary["delta_e"].map("{:.1f}".format),
        lpips=summary["lpips"].map("{:.3f}".format), kept_source=summary["kept_source"].map("{:.0%}".format),
        matches_prompt=summary["matches_prompt"].map("{:.0%}".format))
    print(formatted.to_string(index=False))
    return 0
