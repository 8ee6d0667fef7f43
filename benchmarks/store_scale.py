"""The run folder at scale (issue #16): per-cell store cost at 1,000 / 10,000 / 100,000 cells, with generation
replaced by a cheap fake image so only the store is timed.

Each size runs in a fresh process and folder, the way a batched sweep writes: ``save_cell`` per cell (image and row
file, atomically, under the lock) and a ``checkpoint`` after every 32 cells (the batched engine's chunk), then one
``flush`` (the consolidation at the end of a sweep). Printed per size: the mean cost per cell over the first and the
last 1,000 cells, the whole run, the rerun detection of the finished folder (open it and ask ``has_cell`` of every
key, as a rerun's keying does), and the process's peak memory.

    python benchmarks/store_scale.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 32


def one_size(cells: int, folder: Path) -> dict:
    from PIL import Image

    from img2img_lab.images.hashes import content_hash
    from img2img_lab.store.run_store import RunStore

    store = RunStore.create(folder, {"plan": {}})
    image = Image.new("RGB", (8, 8), "red")
    pixel_hash = content_hash(image)
    template = {name: 0.5 for name in ("strength", "guidance_scale", "sigma", "log_snr", "ssim", "seconds")}
    keys, marks = [], []
    started = time.perf_counter()
    for index in range(cells):
        key = hashlib.sha256(str(index).encode()).hexdigest()[:20]
        keys.append(key)
        store.save_cell(key, image, {**template, "cell_key": key, "output_hash": pixel_hash, "seed": index,
                                     "output_path": f"images/{key}.png", "prompt": "a fake cell"})
        if (index + 1) % CHUNK == 0:
            getattr(store, "checkpoint", store.flush)()  # (older versions: a full flush per chunk)
        marks.append(time.perf_counter())
    store.flush()
    total = time.perf_counter() - started
    window = min(1000, cells)
    first = (marks[window - 1] - started) / window
    last = (marks[-1] - marks[-window - 1 if cells > window else 0]) / window
    started = time.perf_counter()
    reopened = RunStore.open(folder)
    assert all(reopened.has_cell(key) for key in keys)
    rerun = time.perf_counter() - started
    assert len(reopened.read_table()) == cells
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"cells": cells, "first_ms": first * 1e3, "last_ms": last * 1e3, "total_s": total, "rerun_s": rerun,
            "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated cell counts")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process: one size
    args = parser.parse_args()
    if args.one is not None:
        with tempfile.TemporaryDirectory() as scratch:
            print(json.dumps(one_size(args.one, Path(scratch) / "run")))
        return
    results = []
    for cells in (int(size) for size in args.sizes.split(",")):
        output = subprocess.run([sys.executable, __file__, "--one", str(cells)], check=True, capture_output=True,
                                text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    print("| cells | ms per cell, first 1,000 | ms per cell, last 1,000 | whole run | rerun detection | peak memory |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['cells']:,} | {r['first_ms']:.2f} | {r['last_ms']:.2f} | {r['total_s']:.1f} s | "
              f"{r['rerun_s']:.2f} s | {r['peak_mb']:.0f} MB |")
    base = results[0]["last_ms"]
    print("per-cell cost (last 1,000) relative to the smallest: "
          + ", ".join(f"{r['cells']:,}: {r['last_ms'] / base:.2f}x" for r in results))


if __name__ == "__main__":
    main()
