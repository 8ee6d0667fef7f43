"""The whole sweep against its UNet-only bound (issue #42), on the embedded model, in one run:

    python benchmarks/sweep_bound.py [--pairs 3] [--threads 1,2] [--metrics default|none]

The sweep is what a user runs: ``run_sweep`` of 10 strengths x 4 seeds, 20 steps, DDIM, guidance 2, into a fresh
folder (keys, store, PNGs, the VAE floor and, by default, the default metrics). Its **UNet-only bound** is the time
of the UNet calls that sweep makes, replayed alone: every call's own inputs (latents, timestep, text embeddings),
recorded from a warm-up sweep, and nothing else. A sweep with no cost beside its UNet calls would take exactly the
bound, so ``bound / sweep`` is the share of the bound the sweep reaches. Per thread count, ``--pairs`` interleaved
rounds (the order alternating) and the median share.

Where a sweep runs its chunks side by side (:mod:`img2img_lab.sweep.chunk_streams`: on the CPU at 2 threads or more),
each round times both ways: chunks **in turn** (``IMG2IMG_LAB_CHUNK_STREAMS=1``), against its own calls replayed in
turn; and **side by side**, against the stricter of two bounds for its calls: replayed in turn on every thread, and
replayed as the streams made them, each stream's calls on its own thread with its share of the threads (two streams of
UNet calls alone run faster than one on all threads). For chunks in turn each sweep also times its own UNet calls:
its seconds outside them are its overhead, and ``bound / (bound + overhead)`` (medians) is the share by parts, steadier
on a machine whose speed wanders between a round's parts. The plain diffusers loop (one ``pipe(...)`` per cell) is
timed once per thread count. Last, at the last thread count, the default metrics' share of generation at 512 px
(``--share-side``): 8 outputs generated batched, then measured together.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import img2img_lab  # noqa: F401  - torchvision shim first

sys.path.insert(0, str(Path(__file__).resolve().parent))
from felt_speed import _plan  # noqa: E402 - the same 40-cell plan as felt_speed.py's engine part

from img2img_lab.sweep.chunk_streams import STREAMS_VARIABLE  # noqa: E402


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
            self.calls.append((sample.clone(), timestep, encoder_hidden_states.clone(), threading.get_ident()))
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
        for latents, timestep, text, _ in calls:
            pipe.unet(latents, timestep, encoder_hidden_states=text, return_dict=False)


def replay_in_streams(pipe, calls) -> None:
    """The recorded UNet calls alone, each thread's calls on a thread of its own with its share of torch's threads,
    as a sweep's side-by-side streams made them."""
    import torch

    from img2img_lab.sweep.chunk_streams import stream_threads

    streams: dict[int, list] = {}
    for call in calls:
        streams.setdefault(call[3], []).append(call)
    threads = torch.get_num_threads()
    torch.set_num_threads(stream_threads(threads, len(streams)))
    try:
        with ThreadPoolExecutor(max_workers=len(streams)) as pool:
            for future in [pool.submit(replay, pipe, own) for own in streams.values()]:
                future.result()
    finally:
        torch.set_num_threads(threads)


def interleaved_rounds(steps: dict, rounds: int, timers: dict) -> dict[str, list]:
    """``rounds`` rounds of every named step, the order reversed every other round: each step's seconds, and for each
    step with a :class:`UNetTime` in ``timers`` its seconds outside its UNet calls (under ``"<name> outside"``)."""
    seconds: dict[str, list] = {}
    for index in range(rounds):
        for name in (list(steps) if index % 2 == 0 else list(steps)[::-1]):
            timer = timers.get(name)
            if timer is not None:
                timer.seconds = 0.0
                with timer:
                    whole = _timed(steps[name])
                seconds.setdefault(f"{name} outside", []).append(whole - timer.seconds)
            else:
                whole = _timed(steps[name])
            seconds.setdefault(name, []).append(whole)
    return seconds


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

    def sweep(index, streams: str | None = "1"):
        """A sweep into a fresh folder, its chunks in turn (``"1"``) or as the rules choose (``None``); its manifest's
        stream count."""
        if streams is None:
            os.environ.pop(STREAMS_VARIABLE, None)
        else:
            os.environ[STREAMS_VARIABLE] = streams
        folder = scratch / f"run-{index}"
        shutil.rmtree(folder, ignore_errors=True)
        run_sweep(plan, folder, pipe=model, metrics=metrics, progress=False)
        return json.loads((folder / "manifest.json").read_text())["engine"]["streams"]

    try:
        for threads in [int(value) for value in args.threads.split(",")]:
            torch.set_num_threads(threads)
            recorded = {}
            for name, streams in (("in turn", "1"), ("side by side", None)):
                with UNetCalls(pipe.unet) as recorder:
                    ran = sweep(f"warm-{name}", streams)  # warm-up, and the UNet calls the sweep makes
                if name == "in turn" or ran > 1:
                    recorded[name] = recorder.calls
            source = Image.open(plan.images[0]).convert("RGB")
            plain = _timed(lambda: [pipe(prompt=cell.prompt, image=source, strength=cell.strength,
                                         num_inference_steps=20, guidance_scale=2.0,
                                         generator=cell_generator(cell.seed)) for cell in plan.cells()])
            report(threads, measure(pipe, sweep, recorded, args.pairs), recorded, plain)
        if args.share_side:
            metrics_share(model, args.share_side)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure(pipe, sweep, recorded: dict, rounds: int) -> dict[str, list]:
    """Interleaved rounds of the sweep in turn and its bound, and where it runs side by side that sweep and its two
    bounds."""
    steps = {"bound": lambda: replay(pipe, recorded["in turn"]), "sweep": lambda: sweep("in-turn")}
    if "side by side" in recorded:
        calls = recorded["side by side"]
        steps.update({"side-by-side bound in turn": lambda: replay(pipe, calls),
                      "side-by-side bound in streams": lambda: replay_in_streams(pipe, calls),
                      "side-by-side sweep": lambda: sweep("side-by-side", None)})
    return interleaved_rounds(steps, rounds, {"sweep": UNetTime(pipe.unet)})


def report(threads: int, seconds: dict, recorded: dict, plain: float) -> None:
    """Print one thread count's figures (see the module doc)."""
    def listed(name, unit=" s"):
        values = seconds[name]
        return f"{', '.join(f'{value:.2f}' for value in values)}{unit} (median {statistics.median(values):.2f})"

    def calls(name):
        return f"{len(recorded[name])} UNet calls of {sum(call[0].shape[0] for call in recorded[name])} samples"

    median = {name: statistics.median(values) for name, values in seconds.items()}
    shares = [bound / whole for bound, whole in zip(seconds["bound"], seconds["sweep"])]
    by_parts = median["bound"] / (median["bound"] + median["sweep outside"])
    print(f"  {threads} thread{'s' if threads > 1 else ''}, chunks in turn: {calls('in turn')}; bound "
          f"{listed('bound')}, sweep {listed('sweep')}; share of the bound {', '.join(f'{s:.0%}' for s in shares)} "
          f"(median {statistics.median(shares):.0%}); outside its UNet calls {listed('sweep outside')}: by parts "
          f"{by_parts:.0%}; plain loop {plain:.2f} s = {plain / median['sweep']:.2f}x the sweep; load average "
          f"{os.getloadavg()[0]:.2f}")
    if "side by side" not in recorded:
        print(f"    (chunks run in turn at {threads} thread{'s' if threads > 1 else ''}: no side-by-side sweep)")
        return
    bounds = zip(seconds["side-by-side bound in turn"], seconds["side-by-side bound in streams"])
    strict = [min(pair) for pair in bounds]
    shares = [bound / whole for bound, whole in zip(strict, seconds["side-by-side sweep"])]
    faster = [turn / side for turn, side in zip(seconds["sweep"], seconds["side-by-side sweep"])]
    print(f"    chunks side by side: {calls('side by side')}; bound in turn {listed('side-by-side bound in turn')}, "
          f"in streams {listed('side-by-side bound in streams')}; sweep {listed('side-by-side sweep')}; share of "
          f"the stricter bound {', '.join(f'{s:.0%}' for s in shares)} (median {statistics.median(shares):.0%}); "
          f"in turn / side by side {', '.join(f'{f:.2f}' for f in faster)} (median {statistics.median(faster):.2f}x); "
          f"plain loop = {plain / median['side-by-side sweep']:.2f}x the sweep; load average "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
