"""The whole sweep against its UNet-only bound (issue #42), on the embedded model, in one run:

    python benchmarks/sweep_bound.py [--pairs 3] [--threads 1,2] [--metrics default|none]

The sweep is what a user runs: ``run_sweep`` of 10 strengths x 4 seeds, 20 steps, DDIM, guidance 2, into a fresh
folder (keys, store, PNGs, the VAE floor and, by default, the default metrics). Its **UNet-only bound** is the time
of the UNet calls that sweep makes, replayed alone: every call's own inputs (latents, timestep, text embeddings),
recorded from a warm-up sweep, and nothing else. A sweep with no cost beside its UNet calls would take exactly the
bound, so ``bound / sweep`` is the share of the bound the sweep reaches. Per thread count, ``--pairs`` interleaved pairs
(bound, sweep; the order alternating) and the median share. On a machine whose speed wanders from second to
second a pair's two halves can run at different speeds, so each sweep also times its own UNet calls: its seconds
outside them are its overhead, and ``bound / (bound + overhead)`` (medians) is the share by parts. The plain
diffusers loop (one ``pipe(...)`` per cell) is timed once per thread count for the ratio a user feels. Last, at the
last thread count, the default metrics' share of generation at 512 px (``--share-side``): 8 outputs generated
batched, then measured together.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import img2img_lab  # noqa: F401  - torchvision shim first

sys.path.insert(0, str(Path(__file__).resolve().parent))
from felt_speed import _plan  # noqa: E402 - the same 40-cell plan as felt_speed.py's engine part


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


class UNetCalls:
    """Records every UNet call's inputs (latents, timestep, text embeddings) while installed (``with``)."""

    def __init__(self, unet):
        self.unet, self.calls = unet, []

    def __enter__(self):
        original = self.original = type(self.unet).forward

        def recording(unet, sample, timestep, encoder_hidden_states, *args, **kwargs):
            self.calls.append((sample.clone(), timestep, encoder_hidden_states.clone()))
            return original(unet, sample, timestep, encoder_hidden_states, *args, **kwargs)

        type(self.unet).forward = recording
        return self

    def __exit__(self, *exc):
        type(self.unet).forward = self.original


class UNetTime:
    """Adds up the seconds spent in UNet calls while installed (``with``): a sweep's time outside them is its own
    overhead, measured inside the same sweep (robust to the machine slowing down between a pair's two halves)."""

    def __init__(self, unet):
        self.unet, self.seconds = unet, 0.0

    def __enter__(self):
        original = self.original = type(self.unet).forward

        def timed(unet, *args, **kwargs):
            started = time.perf_counter()
            try:
                return original(unet, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        type(self.unet).forward = timed
        return self

    def __exit__(self, *exc):
        type(self.unet).forward = self.original


def replay(pipe, calls) -> None:
    """The recorded UNet calls alone, with their own inputs."""
    import torch

    with torch.no_grad():
        for latents, timestep, text in calls:
            pipe.unet(latents, timestep, encoder_hidden_states=text, return_dict=False)


def interleaved_pairs(pipe, calls, sweep, pairs: int) -> tuple[list, list, list]:
    """``pairs`` interleaved (bound, sweep) pairs, the order alternating: the bound's seconds, each sweep's seconds
    and each sweep's seconds outside its UNet calls."""
    bounds, sweeps, outside = [], [], []
    for index in range(pairs):
        timer = UNetTime(pipe.unet)

        def timed_sweep(index=index, timer=timer):
            with timer:
                sweep(index)

        steps = [lambda: replay(pipe, calls), timed_sweep]
        seconds = [_timed(step) for step in (steps if index % 2 == 0 else steps[::-1])]
        bound, whole = seconds if index % 2 == 0 else seconds[::-1]
        bounds.append(bound)
        sweeps.append(whole)
        outside.append(whole - timer.seconds)
    return bounds, sweeps, outside


def metrics_share(model, side: int = 512, count: int = 8) -> None:
    """The default metrics of ``count`` outputs at ``side`` px, measured together as a sweep's chunk is, against
    generating them with the batched engine (strength 0.5 and 1.0, 20 steps): per image, and the share."""
    import statistics

    from PIL import Image

    from img2img_lab.engine.batched import run_cells_batched
    from img2img_lab.images.intake import fit_to_model
    from img2img_lab.metrics.fidelity import ReferenceCache
    from img2img_lab.metrics.measure import measure_pairs
    from img2img_lab.metrics.registry import DEFAULT_METRICS
    from img2img_lab.plan.sweep_plan import SweepPlan

    photo = Image.open(_plan().images[0]).convert("RGB")
    source = fit_to_model(photo.resize((side, side), Image.Resampling.LANCZOS))
    plan = SweepPlan(images=["source.png"], prompts=["a yellow star on a black background"], strengths=[0.5, 1.0],
                     seeds=list(range(count // 2)), guidance_scales=[2.0], steps=[20], schedulers=["ddim"],
                     max_side=None)
    rounds = []
    for _ in range(2):  # interleaved rounds: generate, then measure what was generated
        generate = _timed(lambda: rounds.append(run_cells_batched(model, plan.cells(), [source])))
        outputs = [output.image for output in rounds[-1]]
        measure = _timed(lambda: measure_pairs([source] * len(outputs), outputs, list(DEFAULT_METRICS),
                                               device=str(model.pipe.device), references=ReferenceCache()))
        rounds[-1] = (generate / len(outputs), measure / len(outputs))
    generate, measure = (statistics.median(values) for values in zip(*rounds))
    print(f"  metrics at {side} px ({', '.join(DEFAULT_METRICS)}; {count} outputs measured together): "
          f"{measure * 1000:.0f} ms per image against {generate * 1000:.0f} ms to generate it batched -> "
          f"{measure / generate:.1%} of generation")


def main() -> None:
    import torch
    from PIL import Image

    from img2img_lab.metrics.registry import DEFAULT_METRICS
    from img2img_lab.models.handle import cell_generator
    from img2img_lab.models.loading import load_model
    from img2img_lab.sweep.run import run_sweep

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--metrics", choices=("default", "none"), default="default")
    parser.add_argument("--share-side", type=int, default=512, help="the side of the metrics-share check (0: skip)")
    args = parser.parse_args()
    model = load_model(threads=1)
    pipe, plan = model.pipe, _plan()
    metrics = list(DEFAULT_METRICS) if args.metrics == "default" else []
    scratch = Path(tempfile.mkdtemp(prefix="sweep-bound-"))
    print(f"embedded model, {len(plan.cells())} cells (10 strengths x 4 seeds, 20 steps, DDIM, guidance 2), metrics: "
          f"{', '.join(metrics) or 'none'}; load average {os.getloadavg()[0]:.2f}")

    def sweep(index: int):
        folder = scratch / f"run-{index}"
        shutil.rmtree(folder, ignore_errors=True)
        return run_sweep(plan, folder, pipe=model, metrics=metrics, progress=False)

    try:
        for threads in [int(value) for value in args.threads.split(",")]:
            torch.set_num_threads(threads)
            with UNetCalls(pipe.unet) as recorder:
                sweep(-1)  # warm-up, and the UNet calls the sweep makes
            cells = plan.cells()
            source = Image.open(plan.images[0]).convert("RGB")
            plain = _timed(lambda: [pipe(prompt=cell.prompt, image=source, strength=cell.strength,
                                         num_inference_steps=20, guidance_scale=2.0,
                                         generator=cell_generator(cell.seed)) for cell in cells])
            bounds, sweeps, outside = interleaved_pairs(pipe, recorder.calls, sweep, args.pairs)
            shares = [bound / whole for bound, whole in zip(bounds, sweeps)]
            by_parts = statistics.median(bounds) / (statistics.median(bounds) + statistics.median(outside))
            print(f"  {threads} thread{'s' if threads > 1 else ''}: {len(recorder.calls)} UNet calls of "
                  f"{sum(call[0].shape[0] for call in recorder.calls)} samples; bound "
                  f"{', '.join(f'{b:.2f}' for b in bounds)} s, sweep {', '.join(f'{s:.2f}' for s in sweeps)} s; "
                  f"share of the bound {', '.join(f'{s:.0%}' for s in shares)} (median "
                  f"{statistics.median(shares):.0%}); outside its UNet calls each sweep spent "
                  f"{', '.join(f'{o:.3f}' for o in outside)} s (median {statistics.median(outside):.3f}): "
                  f"bound / (bound + that) = {by_parts:.0%}; plain loop {plain:.2f} s = "
                  f"{plain / statistics.median(sweeps):.2f}x the sweep, {plain / statistics.median(bounds):.2f}x the "
                  f"bound; load average {os.getloadavg()[0]:.2f}")
        if args.share_side:
            metrics_share(model, args.share_side)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
