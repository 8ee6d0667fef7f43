"""The benchmark scripts' CPU paths (toy sizes): what benchmarks/ prints runs, on every family it names (kept apart
from test_batched.py so the test workers share the load). A script that measures in one process runs in the test's
(``script_in_this_process``); real_size.py starts a process per architecture, so it runs as a command."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import script_in_this_process, structured_image
from img2img_lab.engine.batched import run_cells_batched
from img2img_lab.engine.per_cell import run_cell
from img2img_lab.models.handle import as_model
from img2img_lab.plan.sweep_plan import SweepPlan

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _difference(a, b) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def test_sd15_sized_pipeline_path_runs_tiny_on_cpu():
    """The --gpu-sd15 benchmark's pipeline, at toy widths: same structure; batched within 2/255 of per-cell
    (random weights at guidance 7.5 amplify batched-kernel rounding more than the 1/255 seen at guidance <= 3.5)."""
    from img2img_lab.testing import make_sd15_sized_pipeline

    pipe = make_sd15_sized_pipeline(tiny=True)
    assert pipe.unet.config.layers_per_block == 2 and len(pipe.unet.config.block_out_channels) == 4
    assert pipe.tokenizer.model_max_length == 77
    plan = SweepPlan(images=["a.png"], prompts=["a cat"], strengths=[0.5, 1.0], seeds=[0], guidance_scales=[7.5],
                     steps=[4], schedulers=["pndm"])
    source = [structured_image(64)]
    batched = run_cells_batched(as_model(pipe), plan.cells(), source)
    for cell, output in zip(plan.cells(), batched):
        assert _difference(output.image, run_cell(pipe, cell, source[0]).image) <= 2


def test_benchmark_script_runs_its_gpu_path_on_cpu_tiny():
    code, printed, errors = script_in_this_process(BENCHMARKS / "sweep_speed.py", "--gpu-sd15", "--tiny", "--device",
                                                   "cpu", "--strengths", "3", "--seeds", "2", "--steps", "4",
                                                   "--threads", "1")
    assert code == 0, errors[-2000:]
    assert "batched / naive" in printed and "of the best batched UNet throughput" in printed


def test_gpu_benchmark_runs_every_part_on_cpu_tiny():
    """benchmarks/gpu_speed.py (SD 1.5 / SDXL architectures on a GPU) at toy widths on the CPU: every part runs, and
    the metrics it times agree with the references there too."""
    import re

    code, printed, errors = script_in_this_process(BENCHMARKS / "gpu_speed.py", "--tiny", "--pairs", "1", "--sweeps",
                                                   "1", "--steps", "4", "--only", "engine,metrics,sweeps,profile")
    assert code == 0, errors[-2000:]
    for model in ("StableDiffusionImg2ImgPipeline", "StableDiffusionXLImg2ImgPipeline"):
        assert model in printed
    assert printed.count("ratio min") == 2 and printed.count("with the five") == 2
    assert "run_sweep" in printed  # the profile
    gaps = [float(value) for value in re.findall(r"(?:ssim|delta_e|edge_f1) (\d\.\de[-+]\d+)", printed)]
    assert len(gaps) == 8 and max(gaps) < 1e-4


def test_real_size_benchmark_runs_every_path_on_tiny_pipelines():
    """benchmarks/real_size.py (make bench-real) with each family's tiny pipeline: every architecture's sweep and plain
    loop, the table, and the memory-budget sweep; the sweep's pixels equal the loop's (per cell: exactly)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "real_size.py"
    result = subprocess.run([sys.executable, str(script), "--tiny", "--size", "32", "--steps", "2", "--pairs", "1",
                             "--budget", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^\| (sd15|sdxl|sd35-medium|flux-dev-reduced) \|.*\| (\d+)/255 \|$", result.stdout, re.M)
    assert [name for name, _ in rows] == ["sd15", "sdxl", "sd35-medium", "flux-dev-reduced"], result.stdout[-3000:]
    assert all(int(difference) <= 1 for _, difference in rows)  # batched within a level; per cell exactly
    # Every architecture batches (SD3 and FLUX.1 too). At 32 px a sample is a few MB, within the allocator's noise,
    # so whether a peak falls within its budget is measured at real size (docs/benchmarks.md), not asserted here.
    budgets = re.findall(r"budget \d+ MB .*: batch (\d+) \(default (\d+)\), peak \+\d+ MB (?:within|OVER) the "
                         r"budget; max \|bounded - default\| (\d+)/255", result.stdout)
    assert len(budgets) == 4, result.stdout[-3000:]
    assert all(int(limit) < int(default) and int(difference) <= 1 for limit, default, difference in budgets)
    assert len(re.findall(r"peak: sweep \+[0-9.]+ GB against loop \+ one batch", result.stdout)) == 4


def test_benchmark_script_runs_its_sdxl_path():
    code, printed, errors = script_in_this_process(BENCHMARKS / "sweep_speed.py", "--sdxl", "--strengths", "2",
                                                   "--seeds", "2", "--steps", "4", "--threads", "1")
    assert code == 0, errors[-2000:]
    assert "tiny random SDXL" in printed and "max |batched - naive| = " in printed
