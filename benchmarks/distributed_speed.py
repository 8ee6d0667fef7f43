"""One sweep on 2 ranks x 1 thread vs 1 rank x 1 thread (torchrun, gloo, CPU), same 80 cells (issue #16).

The embedded model, per-cell engine (the reference runner: its cost is what scales), 2 sources x 2 prompts x 5
strengths x 4 seeds at 20 steps. Each configuration runs into a fresh folder; the runs alternate (1, 2, 1, 2...)
and the ratio of medians is printed: the whole command (start-up and model load included) and the sweep itself
(the manifest's ``counts.seconds``: rank 0 from opening the folder to the consolidated table).

    python benchmarks/distributed_speed.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = """images: [{a}, {b}]
prompts: [a yellow star on a black background, a white square on a green background]
strengths: [0.2, 0.4, 0.6, 0.8, 1.0]
seeds: [0, 1, 2, 3]
steps: 20
guidance: 2.0
"""


def run(ranks: int, folder: Path, config: Path) -> tuple[float, float, list]:
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun), "--standalone", f"--nproc-per-node={ranks}"] if ranks > 1 else [sys.executable]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "IMG2IMG_LAB_THREADS": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run([*launcher, "-m", "img2img_lab", "sweep", str(config), "--out", str(folder), "--engine",
                    "per-cell", "--no-progress"], env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    counts = json.loads((folder / "manifest.json").read_text())["counts"]
    assert counts["generated"] == 80, counts
    return wall, counts["seconds"], counts.get("generated_by_rank", [80])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (default 2)")
    args = parser.parse_args()
    sources = REPO / "data" / "sources"
    results: dict[int, list] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "study.yaml"
        config.write_text(CONFIG.format(a=sources / "red_circle_on_blue.png", b=sources / "black_square_on_green.png"))
        for repeat in range(args.repeats):
            for ranks in (1, 2):
                results[ranks].append(run(ranks, Path(scratch) / f"run-{ranks}-{repeat}", config))
    print(f"80 cells, embedded model, per-cell engine, 20 steps, 1 thread per rank, {os.cpu_count()} cores")
    for ranks, runs in results.items():
        walls, sweeps = [wall for wall, _, _ in runs], [sweep for _, sweep, _ in runs]
        print(f"  {ranks} rank(s): command {statistics.median(walls):.1f} s, sweep {statistics.median(sweeps):.1f} s "
              f"(cells per rank {runs[-1][2]})")
    speedup = {name: statistics.median(x[index] for x in results[1]) / statistics.median(x[index] for x in results[2])
               for index, name in ((0, "command"), (1, "sweep"))}
    print(f"  2 ranks vs 1: {speedup['sweep']:.2f}x on the sweep, {speedup['command']:.2f}x on the whole command")


if __name__ == "__main__":
    main()
