"""Real-size architectures, measured: the whole sweep against the plain loop a user would write, in one process,
interleaved (``make bench-real``).

For each architecture (``data/architectures``: SD 1.5, SDXL, SD 3.5 medium, FLUX.1-dev reduced in depth; random
weights, built offline) it runs ``--pairs`` interleaved pairs of

* the **plain loop**: one ``pipe(...)`` call per cell, with the arguments a user types, then the default metrics of
  every output against the source;
* the **sweep**: ``run_sweep`` of the same cells into a fresh run folder with the default metrics (store, PNGs, the
  VAE floor and the metrics included),

and prints per pair the seconds of each, their ratio (loop / sweep: above 1 the sweep is faster), the time spent
inside the denoiser (the bound no engine beats), the peak memory each added (CPU: resident memory, sampled; CUDA:
the allocator's peak), the batch the sweep chose and the largest pixel difference between the two. The first pair
also pays what a sweep does once per loaded model (the weights' fingerprint; each source's VAE floor, then shared
by later sweeps): it is printed apart, and the ratio reported is the median of every pair. ``--budget`` adds a sweep
whose ``memory_budget`` is three samples' measured footprint: its peak against the budget and its pixels against
the default sweep's, and checks the sweep's peak against the loop's plus one batch (the batch the sweep chose times
one sample's measured footprint). Each architecture runs in a process of its own, so one's memory never counts
against the next (SDXL's float32 weights alone take 14 GB).

    python benchmarks/real_size.py --arch sd15,sdxl --size 256 --steps 4 --pairs 3 --threads 2
    python benchmarks/real_size.py --arch sd15,sdxl --device cuda --dtype float16 --size 0   # native size on a GPU
    python benchmarks/real_size.py --tiny --size 32 --steps 2 --pairs 1 --budget   # every path, in seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


#: Each architecture's family's tiny pipeline (``--tiny``).
TINY = {"sd15": "sd1", "sdxl": "sdxl", "sd35-medium": "sd3", "flux-dev-reduced": "flux-dev"}


def _source(folder: Path, size: int) -> Path:
    """A structured picture (a colour gradient with a disc), not noise: VAEs and metrics see structure."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    image = np.stack([x, y, 1 - x], axis=-1) * 200
    image[(y - 0.5) ** 2 + (x - 0.45) ** 2 < 0.08] = (210, 40, 40)
    path = folder / "source.png"
    Image.fromarray(image.astype(np.uint8)).save(path)
    return path


class DenoiserClock:
    """Seconds spent inside the denoiser's forward (a wrapper on it while the benchmark runs)."""

    def __init__(self, denoiser, device: str):
        self.seconds, self.device = 0.0, device
        self._forward = denoiser.forward

        def timed(*args, **kwargs):
            started = time.perf_counter()
            result = self._forward(*args, **kwargs)
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - started
            return result

        denoiser.forward = timed


def plain_loop(model, plan, source_path: Path, metrics: list[str]) -> tuple[list, dict]:
    """What a user writes: one pipeline call per cell, then the metrics of every output."""
    import torch
    from PIL import Image

    from img2img_lab.metrics.measure import measure_pairs

    pipe, source = model.pipe, Image.open(source_path).convert("RGB")
    takes = set(__import__("inspect").signature(type(pipe).__call__).parameters)
    outputs = []
    model.use_scheduler("default")
    for cell in plan.cells():
        kwargs = dict(image=source, prompt=cell.prompt, strength=cell.strength, num_inference_steps=cell.num_inference_steps,
                      guidance_scale=cell.guidance_scale, generator=torch.Generator("cpu").manual_seed(cell.seed))
        if "height" in takes:
            kwargs.update(height=source.height, width=source.width)
        outputs.append(((cell.strength, cell.seed), pipe(**kwargs).images[0]))
    values = measure_pairs([source] * len(outputs), [image for _, image in outputs], metrics,
                           device=str(pipe.device))
    return outputs, values


def sweep(model, plan, folder: Path, metrics: list[str], **memory) -> tuple[list, dict]:
    from PIL import Image

    from img2img_lab.store.run_store import RunStore
    from img2img_lab.sweep.run import run_sweep

    table = run_sweep(plan, folder, pipe=model, metrics=metrics, progress=False, memory=memory or None)
    outputs = [((row["strength"], row["seed"]), Image.open(folder / row["output_path"]).convert("RGB"))
               for row in table.to_dict("records")]
    return outputs, RunStore.open(folder).read_manifest()["memory"]


def _difference(first: list, second: list) -> int:
    other = dict(second)
    return max(int(np.abs(np.asarray(image, np.int16) - np.asarray(other[key], np.int16)).max())
               for key, image in first)


def measure(name: str, args, work: Path) -> dict:
    """One architecture: build it, run ``--pairs`` interleaved pairs of plain loop and sweep, then the budget check."""
    from img2img_lab.engine.batched import batched_tolerance, batching_supported
    from img2img_lab.metrics.registry import DEFAULT_METRICS
    from img2img_lab.models.families.architectures import architecture
    from img2img_lab.plan.sweep_plan import SweepPlan

    model, size, built = _build(name, args)
    folder = work / name
    folder.mkdir()
    source = _source(folder, size)
    plan = SweepPlan(images=[str(source)], prompts=["a red cat"], strengths=[0.5, 1.0],
                     seeds=[0, 1], guidance_scales=[model.default_guidance() or 7.5], steps=[args.steps], max_side=None)
    print(f"{built}; {size}x{size} px, {args.steps} steps, guidance {plan.guidance_scales[0]:g}, "
          f"{len(plan.cells())} cells ({architecture(name)['reduced'] or 'full size'})")
    clock = DenoiserClock(model.family.denoiser(), args.device)
    metrics = list(DEFAULT_METRICS)
    pairs = [_run_pair(index, model, plan, source, folder, metrics, clock, args) for index in range(args.pairs)]
    result = {"name": name, "pairs": pairs, "median": statistics.median(pair["ratio"] for pair in pairs),
              "tolerance": batched_tolerance(args.dtype)}
    later = [pair["ratio"] for pair in pairs[1:]]
    print(f"  {name}: loop/sweep median {result['median']:.2f}x over {len(pairs)} pairs"
          + (f" (after the first: median {statistics.median(later):.2f}x)" if later else ""))
    batched, why = batching_supported(model)
    if args.budget and batched:
        result["budget"] = budget_check(model, plan, folder, metrics, pairs, args)
    elif args.budget:
        print(f"  no budget check: {why} (a budget sizes the batched engine's batches)")
    return result


def _build(name: str, args):
    """``(model, size, what)``: the architecture's random-weight pipeline (``--tiny``: its family's tiny one, the same
    code path in seconds), the image size to run it at, and what was built in words."""
    import torch

    from img2img_lab._utils.memory import resident_bytes
    from img2img_lab.models.families.architectures import architecture
    from img2img_lab.models.handle import as_model
    from img2img_lab.testing import make_real_size_pipeline, make_tiny_family

    record = architecture(name)
    started = time.perf_counter()
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    if args.tiny:
        pipe = make_tiny_family(TINY[name]).to(device=args.device, dtype=dtype)
    else:
        pipe = make_real_size_pipeline(name, dtype=dtype, device=args.device)
    model = as_model(pipe)
    built = time.perf_counter() - started
    what = (f"\n{name}: {record['source']}; {type(model.pipe).__name__}, built in {built:.0f} s, resident "
            f"{resident_bytes() / 1e9:.1f} GB")
    return model, args.size or record["native_size"], what


def _run_pair(index: int, model, plan, source: Path, folder: Path, metrics: list[str], clock, args) -> dict:
    """One interleaved pair (the loop first in even pairs, the sweep first in odd ones), printed."""
    from img2img_lab._utils.memory import PeakMemory

    runs = {}
    for method in (("loop", "sweep") if index % 2 == 0 else ("sweep", "loop")):
        clock.seconds = 0.0
        with PeakMemory(args.device) as peak:
            began = time.perf_counter()
            outputs, extra = (plain_loop(model, plan, source, metrics) if method == "loop"
                              else sweep(model, plan, folder / f"run-{index}", metrics))
            seconds = time.perf_counter() - began
        runs[method] = {"seconds": seconds, "denoiser": clock.seconds, "peak": peak.rise, "outputs": outputs,
                        "extra": extra}
    pair = {"loop": runs["loop"]["seconds"], "sweep": runs["sweep"]["seconds"],
            "ratio": runs["loop"]["seconds"] / runs["sweep"]["seconds"],
            "denoiser": runs["sweep"]["denoiser"], "loop_denoiser": runs["loop"]["denoiser"],
            "peak_loop": runs["loop"]["peak"], "peak_sweep": runs["sweep"]["peak"],
            "batch": runs["sweep"]["extra"].get("batch_limit"),
            "difference": _difference(runs["sweep"]["outputs"], runs["loop"]["outputs"])}
    print(f"  pair {index + 1}{' (pays the fingerprint and the floor)' if index == 0 else ''}: loop "
          f"{pair['loop']:.1f} s, sweep {pair['sweep']:.1f} s, loop/sweep {pair['ratio']:.2f}x; denoiser "
          f"{pair['denoiser']:.1f} s in the sweep ({pair['denoiser'] / pair['sweep']:.0%} of it), "
          f"{pair['loop_denoiser']:.1f} s in the loop; peak +{pair['peak_sweep'] / 1e9:.2f} GB sweep, "
          f"+{pair['peak_loop'] / 1e9:.2f} GB loop; batch {pair['batch']}; max |sweep - loop| "
          f"{pair['difference']}/255", flush=True)
    return pair


def budget_check(model, plan, folder: Path, metrics: list[str], pairs: list[dict], args) -> dict:
    """A sweep whose memory budget is three samples' measured footprint: its peak against the budget, its pixels
    against the default sweep's."""
    from PIL import Image

    from img2img_lab._utils.memory import PeakMemory
    from img2img_lab.engine.batch_limits import sample_footprints

    source = Image.open(folder / "source.png").convert("RGB")
    denoiser, decoder = sample_footprints(model, source)
    budget = 3 * max(denoiser, decoder)  # the engine decodes half a batch, so this allows at least 3 samples
    last = pairs[-1]
    default, _ = sweep(model, plan, folder / "budget-default", metrics)
    with PeakMemory(args.device) as peak:
        bounded, memory = sweep(model, plan, folder / "budget", metrics, memory_budget=budget)
    check = {"budget": budget, "peak": peak.rise, "limit": memory["batch_limit"],
             "difference": _difference(bounded, default), "sample": denoiser, "decode": decoder}
    bound = max(p["peak_loop"] for p in pairs) + last["batch"] * denoiser
    check["bound"], check["sweep_peak"] = bound, max(p["peak_sweep"] for p in pairs)
    print(f"  peak: sweep +{check['sweep_peak'] / 1e9:.2f} GB against loop + one batch ({last['batch']} x "
          f"{denoiser / 1e6:.0f} MB) +{bound / 1e9:.2f} GB: {'within' if check['sweep_peak'] <= bound else 'OVER'}")
    print(f"  budget {budget / 1e6:.0f} MB (3 x one sample: {denoiser / 1e6:.0f} MB denoiser, {decoder / 1e6:.0f} "
          f"MB decode): batch {check['limit']} (default {last['batch']}), peak +{peak.rise / 1e6:.0f} MB "
          f"{'within' if peak.rise <= budget else 'OVER'} the budget; max |bounded - default| "
          f"{check['difference']}/255")
    return check


def _measure_apart(name: str, args) -> dict:
    """One architecture's :func:`measure`, in a child process of its own (its memory is gone when it ends)."""
    with tempfile.TemporaryDirectory() as work:
        result = Path(work) / "result.json"
        argv = [arg for arg in sys.argv[1:] if not arg.startswith("--arch=")]
        if "--arch" in argv:
            del argv[argv.index("--arch"):argv.index("--arch") + 2]
        completed = subprocess.run([sys.executable, __file__, *argv, "--arch", name, "--result", str(result)])
        if completed.returncode or not result.exists():
            sys.exit(f"{name}: the benchmark's process ended with status {completed.returncode} (out of memory? "
                     f"see above); measure it alone with --arch {name}")
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sd15,sdxl,sd35-medium,flux-dev-reduced")
    parser.add_argument("--size", type=int, default=256, help="image side; 0: the architecture's native size")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--budget", action="store_true", help="also run a sweep under a 3-sample memory budget")
    parser.add_argument("--tiny", action="store_true", help="each family's tiny pipeline instead (a quick check)")
    parser.add_argument("--result", help=argparse.SUPPRESS)  # one architecture's result, as JSON (a child process)
    args = parser.parse_args()
    import os

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("IMG2IMG_LAB_THREADS", str(args.threads))
    if args.result:
        with tempfile.TemporaryDirectory() as work:
            Path(args.result).write_text(json.dumps(measure(args.arch, args, Path(work))))
        return
    print(f"real-size benchmark: {os.cpu_count()} cores, torch {torch.__version__} on {args.threads} threads, "
          f"{args.device} {args.dtype}, load average {os.getloadavg()[0]:.2f}")
    if args.tiny:  # tiny pipelines take little memory: one process, as a test runs it
        with tempfile.TemporaryDirectory() as work:
            results = [measure(name, args, Path(work)) for name in args.arch.split(",")]
    else:
        results = [_measure_apart(name, args) for name in args.arch.split(",")]
    print("\n| architecture | loop / sweep (median) | pairs | first pair | peak sweep / loop (GB) | batch | max diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for result in results:
        pairs = result["pairs"]
        print(f"| {result['name']} | {result['median']:.2f}x | {len(pairs)} | {pairs[0]['ratio']:.2f}x | "
              f"{max(p['peak_sweep'] for p in pairs) / 1e9:.2f} / {max(p['peak_loop'] for p in pairs) / 1e9:.2f} | "
              f"{pairs[-1]['batch']} | {max(p['difference'] for p in pairs)}/255 |")
    worst = max(max(p["difference"] for p in result["pairs"]) - result["tolerance"] for result in results)
    print(f"pixels: every sweep within the engine's {args.dtype} tolerance "
          f"({results[0]['tolerance']}/255) of the plain calls: {'yes' if worst <= 0 else 'NO'}")


if __name__ == "__main__":
    main()
