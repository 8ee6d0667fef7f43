"""One sweep across processes (issue #16): ``torchrun --standalone --nproc-per-node 2`` with gloo on the CPU, on the
embedded model. Two ranks store every cell exactly once and the same pixels as one process; a killed job resumes
with another world size; a finished job reruns with two ranks and generates nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import cli_in_this_process
from img2img_lab.sweep.distributed import Context, ShardedRunner, chunk_cost, shard_chunks
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.engine.runners import BatchedRunner, PerCellRunner

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
SOURCES = [str(REPO / "data" / "sources" / name) for name in ("red_circle_on_blue.png", "green_triangle_on_yellow.png")]


class _Source:
    size = (64, 64)


def _planned(strengths, seeds):
    plan = SweepPlan(images=SOURCES, prompts=["a star"], strengths=strengths, seeds=seeds, steps=[20],
                     guidance_scales=[2.0])
    return [(cell, f"k{index:03d}") for index, cell in enumerate(plan.cells()) if cell.duplicate_of is None]


def test_sharding_is_deterministic_balanced_and_never_splits_a_batch():
    assert shard_chunks([], 3) == [[], [], []]
    chunks = [([f"c{i}"], float(cost)) for i, cost in enumerate([10, 9, 8, 7, 6, 5, 4, 3, 2, 1])]
    shards = shard_chunks(chunks, 3)

    def members(shards):
        return [sorted(keys for keys, _ in shard) for shard in shards]

    assert members(shard_chunks(list(reversed(chunks)), 3)) == members(shards)  # the order given does not matter
    assert [sum(cost for _, cost in shard) for shard in shards] == [19, 18, 18]  # largest first, least loaded
    planned = _planned([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], list(range(6)))  # 72 cells: three 32-cell-max chunks
    batched = BatchedRunner(model=None, sources=[_Source(), _Source()], max_batch_size=4)
    every = [[key for _, key in chunk] for chunk, _ in batched.chunks(planned, planned)]
    assert [len(keys) for keys in every] == [32, 32, 8]
    for world_size in (1, 2, 3, 5):
        runners = [ShardedRunner(batched, Context(rank, world_size, rank)) for rank in range(world_size)]
        mine = [[[key for _, key in chunk] for chunk, _ in runner.chunks(planned, planned)] for runner in runners]
        assert sorted(keys for shard in mine for keys in shard) == sorted(every)  # each chunk once, whole
    per_cell = [ShardedRunner(PerCellRunner(None, []), Context(rank, 2, rank)) for rank in range(2)]
    halves = [[cell for chunk, _ in runner.chunks(planned, planned) for cell, _ in chunk] for runner in per_cell]
    assert len(halves[0]) + len(halves[1]) == 72 and abs(chunk_cost(halves[0]) - chunk_cost(halves[1])) <= 80


def _config(tmp_path: Path, strengths, seeds, steps: int) -> Path:
    config = tmp_path / "study.yaml"
    config.write_text(f"images: [{', '.join(SOURCES)}]\nprompts: [a yellow star on a black background]\n"
                      f"strengths: {list(strengths)}\nseeds: {list(seeds)}\nsteps: {steps}\nguidance: 2.0\n")
    return config


def _environment() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "IMG2IMG_LAB_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _one_process(command, config, out, *extra) -> str:
    """``img2img-lab command`` in this very process, at the ranks' one thread: the single-process reference."""
    code, printed = cli_in_this_process(command, str(config), "--out", str(out), "--no-progress", *extra, threads=1)
    assert code == 0, printed[-3000:]
    return printed


def _torchrun(command: str, config, out, *extra, ranks: int, background: bool = False, progress: bool = False):
    """``img2img-lab command`` under ``torchrun --nproc-per-node ranks``; ``background``: return the running
    process."""
    launcher = [str(TORCHRUN), "--standalone", f"--nproc-per-node={ranks}", "-m", "img2img_lab"]
    arguments = [*launcher, command, str(config), "--out", str(out), *([] if progress else ["--no-progress"]), *extra]
    if background:
        return subprocess.Popen(arguments, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = subprocess.run(arguments, env=_environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), deepest first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return list(reversed(found))


def _table(run) -> pd.DataFrame:
    return pd.read_parquet(Path(run) / "results.parquet").set_index("cell_key").sort_index()


def _counts(run) -> dict:
    return json.loads((Path(run) / "manifest.json").read_text())["counts"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["per-cell", "batched"])
def test_two_ranks_store_every_cell_once_with_the_pixels_of_one_process(engine, tmp_path, capsys):
    config = _config(tmp_path, [0.0, 0.3, 0.5, 0.8, 1.0], range(4), 10)  # 40 cells: 2 batched chunks (32 + 8)
    extra = ["--engine", engine, "--max-batch", "4"]
    started = time.perf_counter()
    _one_process("sweep", config, tmp_path / "one", *extra)
    single = time.perf_counter() - started
    started = time.perf_counter()
    two = _torchrun("sweep", config, tmp_path / "two", *extra, ranks=2, progress=True)
    double = time.perf_counter() - started
    assert two.stdout.count("wrote ") == 1  # rank 0 alone prints
    # rank 0 alone shows a bar, for the whole job: it ends at the job's total, never running backwards
    counts_shown = [(int(done), int(total)) for done, total in re.findall(r"sweep [^:]*:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)",
                                                                          two.stderr)]
    assert counts_shown and len({total for _, total in counts_shown}) == 1, two.stderr[-2000:]
    assert counts_shown[-1][0] == counts_shown[-1][1] > 0
    assert [done for done, _ in counts_shown] == sorted(done for done, _ in counts_shown)
    one_table, two_table = _table(tmp_path / "one"), _table(tmp_path / "two")
    assert list(two_table.index) == list(one_table.index) and len(two_table) == 40
    assert (two_table["output_hash"] == one_table["output_hash"]).all()  # bit for bit, either engine
    if engine == "batched":
        assert (two_table["batch_id"] == one_table["batch_id"]).all() and two_table["batch_id"].nunique() == 2
    counts = _counts(tmp_path / "two")
    assert counts["generated"] == 40 and sum(counts["generated_by_rank"]) == 40
    assert min(counts["generated_by_rank"]) > 0 and "stored_by_another_writer" not in counts
    assert len(list((tmp_path / "two" / "rows").glob("*.json"))) == 40
    with capsys.disabled():
        print(f"\n[distributed] {engine}: 40 cells, this process {single:.1f} s, torchrun 2 ranks {double:.1f} s "
              f"(their start-up included); cells per rank {counts['generated_by_rank']}; hashes equal")


@pytest.mark.slow
def test_a_killed_job_resumes_with_one_rank_and_a_finished_one_reruns_with_two_for_nothing(tmp_path, capsys):
    config = _config(tmp_path, [0.2, 0.4, 0.6, 0.8, 1.0], range(4), 12)
    extra = ["--engine", "per-cell"]
    _one_process("sweep", config, tmp_path / "reference", *extra)
    run = tmp_path / "run"
    job = _torchrun("sweep", config, run, *extra, ranks=2, background=True)
    deadline = time.monotonic() + 300
    while len(list((run / "rows").glob("*.json"))) < 6 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in [*_descendants(job.pid), job.pid]:  # every rank (torchrun starts them in sessions of their own)
        os.kill(pid, signal.SIGKILL)
    job.wait()
    time.sleep(0.5)
    kept = len(list((run / "rows").glob("*.json")))
    assert 6 <= kept < 40, kept
    _one_process("sweep", config, run, *extra)  # one plain process
    counts = _counts(run)
    assert counts["already_done"] == kept and counts["generated"] == 40 - kept
    assert (_table(run)["output_hash"] == _table(tmp_path / "reference")["output_hash"]).all()
    again = _torchrun("sweep", config, run, *extra, ranks=2)
    counts = _counts(run)
    assert counts["generated"] == 0 and counts.get("answered_from_run_folder") is True, again.stdout
    with capsys.disabled():
        print(f"\n[distributed] killed at {kept} of 40 cells stored; the rerun with 1 rank generated {40 - kept}, "
              f"hashes equal a single-process run; a rerun of the finished job with 2 ranks generated 0")


@pytest.mark.slow
def test_calibration_with_its_refinement_rounds_on_two_ranks_equals_one_process(tmp_path, capsys):
    config = tmp_path / "calibrate.yaml"
    config.write_text(_config(tmp_path, [0.0, 0.5, 1.0], range(2), 10).read_text()
                      + "calibration:\n  metrics: [ssim]\n  keep:\n    - {metric: ssim, at_least: 0.5}\n"
                        "  refine_rounds: 2\n  n_resamples: 300\n")
    runs = {0: tmp_path / "ranks-0", 2: tmp_path / "ranks-2"}
    assert _one_process("calibrate", config, runs[0]).count("# Strength calibration") == 1
    result = _torchrun("calibrate", config, runs[2], ranks=2)
    assert result.stdout.count("# Strength calibration") == 1  # rank 0 alone prints
    one, two = _table(runs[0]), _table(runs[2])
    assert list(one.index) == list(two.index) and (one["output_hash"] == two["output_hash"]).all()
    rounds = [entry["strengths"] for entry in json.loads(
        (runs[2] / "manifest.json").read_text())["calibration"]["rounds"]]
    assert len(rounds) > 1  # refinement rounds ran across both ranks
    reference = [pd.read_csv(run / "calibration" / "reference_table.csv") for run in runs.values()]
    assert reference[0].equals(reference[1])
    with capsys.disabled():
        print(f"\n[distributed] calibration on 2 ranks: rounds {rounds}, {len(two)} cells, reference table equal to "
              f"one process")
