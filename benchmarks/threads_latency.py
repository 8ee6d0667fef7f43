"""Single-image latency of the embedded model by CPU thread count, idle and with one busy core (issue #15).

One image = one plain img2img call at strength 1.0, 20 steps (20 UNet evaluations with guidance, 64 px). For each
thread count (img2img-lab's default for small models, and torch's own default: one per core) it measures
``--repeats`` images idle and ``--repeats`` with one other process spinning on a core, interleaved, and prints the
medians and their ratios measured in this run (no timing asserts).

    python benchmarks/threads_latency.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def one_image(pipe, source, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    pipe(image=source, prompt="a yellow star on a black background", strength=1.0, num_inference_steps=20,
         guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="images per thread count and load (default 5)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.resources import bundled_sources
    from img2img_lab.sweep.sources import prepare_source
    from img2img_lab.models.threads import threads_for

    torch_default = torch.get_num_threads()
    pipe = load_pipeline(threads=None)
    parameters = sum(p.numel() for c in pipe.components.values() if hasattr(c, "parameters") for p in c.parameters())
    ours, why = threads_for(parameters=parameters, environ={})
    source = prepare_source(bundled_sources()["red_circle_on_blue"], pipe.img2img_lab_model)
    counts = sorted({ours or torch_default, torch_default})
    one_image(pipe, source, counts[0])  # warm-up
    times = {(count, load): [] for count in counts for load in ("idle", "busy")}
    for _ in range(args.repeats):
        for count in counts:
            times[(count, "idle")].append(one_image(pipe, source, count))
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(0.2)
                times[(count, "busy")].append(one_image(pipe, source, count))
            finally:
                spinner.kill()
                spinner.wait()
    print(f"embedded model: {parameters / 1e6:.1f} M parameters; {os.cpu_count()} cores; torch default "
          f"{torch_default} threads; img2img-lab default {ours} ({why})")
    medians = {key: statistics.median(values) for key, values in times.items()}
    for (count, load), median in medians.items():
        spread = ", ".join(f"{value:.2f}" for value in times[(count, load)])
        print(f"  {count} thread(s), {load:<4}: median {median:.2f} s per image  ({spread})")
    for count in counts:
        print(f"  {count} thread(s): busy / idle = {medians[(count, 'busy')] / medians[(count, 'idle')]:.2f}x")


if __name__ == "__main__":
    main()
