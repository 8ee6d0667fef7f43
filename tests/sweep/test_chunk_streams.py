"""A CPU sweep's chunks side by side (img2img_lab.sweep.chunk_streams): when they run so, and that the folder they
leave is a correct one: the cells of the same plan within the engine's tolerance of the per-cell reference, the rows
recording the threads each chunk ran on, batches that regenerate bit for bit."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from img2img_lab.engine import runners
from img2img_lab.engine.batched import batched_tolerance
from img2img_lab.engine.runners import choose_runner, split_chunks
from img2img_lab.errors import PlanError
from img2img_lab.figures.report import manifest_section
from img2img_lab.models import threads as thread_rules
from img2img_lab.models.handle import as_model
from img2img_lab.models.registry import FAMILIES, tiny_pipeline
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.store.run_store import RunStore
from img2img_lab.sweep.chunk_streams import STREAMS_VARIABLE, chunk_streams, generate_side_by_side, run_side_by_side
from img2img_lab.sweep.run import run_sweep
from img2img_lab.sweep.verify import verify_run


def _plan(sources_dir) -> SweepPlan:
    return SweepPlan(images=[str(sources_dir / "source0.png"), str(sources_dir / "source1.png")],
                     prompts=["a red circle"], strengths=[0.3, 0.6, 1.0], seeds=[0, 1], guidance_scales=[2.0],
                     steps=[6], schedulers=["ddim"])


def _pixels(run, table) -> dict[tuple, np.ndarray]:
    """Each cell's image by what it is (source, strength, seed): cell keys name the engine too."""
    return {(row.source_hash, row.strength, row.seed): np.asarray(Image.open(run / row.output_path), dtype=np.int16)
            for row in table.itertuples()}


#: Every class a family module declares safe side by side, and the tiny pipeline that tests it.
SIDE_BY_SIDE = {"StableDiffusionImg2ImgPipeline": "sd1", "StableDiffusionXLImg2ImgPipeline": "sdxl"}


def test_every_class_declared_side_by_side_is_tested_here():
    declared = {name for family in set(FAMILIES.values()) for name in family.side_by_side}
    assert declared == set(SIDE_BY_SIDE)


@pytest.mark.parametrize("class_name", sorted(SIDE_BY_SIDE))
def test_chunks_side_by_side_store_the_plan_within_tolerance_and_regenerate(class_name, tmp_path, sources_dir,
                                                                           monkeypatch):
    tiny_pipe = tiny_pipeline(SIDE_BY_SIDE[class_name])
    assert type(tiny_pipe).__name__ == class_name
    ran_on, run, both = [], runners.BatchedRunner.run, threading.Barrier(2, timeout=120)

    def noting_thread(self, cells):
        ran_on.append(threading.current_thread().name)
        if ran_on[-1].startswith("img2img-lab-stream"):
            both.wait()  # the two chunks run at once (one stream taking both would break the barrier)
        return run(self, cells)

    monkeypatch.setattr(runners.BatchedRunner, "run", noting_thread)
    plan, threads, interval = _plan(sources_dir), torch.get_num_threads(), sys.getswitchinterval()
    tables = {"per-cell": run_sweep(plan, tmp_path / "per-cell", pipe=tiny_pipe, engine="per-cell", progress=False)}
    for streams in ("1", "2"):
        monkeypatch.setenv(STREAMS_VARIABLE, streams)
        torch.set_num_threads(2)  # each of two streams runs on one
        try:
            tables[streams] = run_sweep(plan, tmp_path / streams, pipe=tiny_pipe, metrics=["ssim"], progress=False)
        finally:
            torch.set_num_threads(threads)
    assert sys.getswitchinterval() == interval
    side_by_side = RunStore.open(tmp_path / "2")
    assert side_by_side.read_manifest()["engine"]["streams"] == 2
    assert f"chunks: 2 side by side, as {STREAMS_VARIABLE} asks" in manifest_section(side_by_side, tables["2"]).body
    assert len(side_by_side.batch_ids()) == 2 and len(set(ran_on[-2:])) == 2
    assert all(name.startswith("img2img-lab-stream") for name in ran_on[-2:])
    assert set(tables["2"]["torch_threads"]) == {1} and set(tables["1"]["torch_threads"]) == {2}
    reference = _pixels(tmp_path / "per-cell", tables["per-cell"])
    for streams in ("1", "2"):
        pixels = _pixels(tmp_path / streams, tables[streams])
        assert pixels.keys() == reference.keys() and len(pixels) == 12
        assert max(np.abs(pixels[cell] - reference[cell]).max() for cell in pixels) <= batched_tolerance(torch.float32)
    report = verify_run(tmp_path / "2", sample=12, pipe=tiny_pipe)  # each batch regenerated whole, at 1 thread
    assert report.ok and "2 batches regenerated whole" in report.summary(), report.summary()


def test_a_resumed_side_by_side_sweep_stores_the_same_pixels(tmp_path, sources_dir, tiny_pipe, monkeypatch):
    monkeypatch.setenv(STREAMS_VARIABLE, "2")
    plan, run = _plan(sources_dir), tmp_path / "run"
    first = run_sweep(plan, run, pipe=tiny_pipe, progress=False).set_index("cell_key")
    lost = first.index[3]
    (run / first.loc[lost, "output_path"]).unlink()
    again = run_sweep(plan, run, pipe=tiny_pipe, progress=False).set_index("cell_key")
    assert again.loc[lost, "output_hash"] == first.loc[lost, "output_hash"]  # its recorded batch, run again whole
    assert list(again["output_hash"]) == list(first["output_hash"])


def test_chunks_are_dealt_so_side_by_side_chunks_share_their_mix():
    cells = list(range(40))
    assert [len(chunk) for chunk in split_chunks(cells, 32)] == [32, 8]
    assert [len(chunk) for chunk in split_chunks(list(range(65)), 32, streams=2)] == [17, 16, 16, 16]
    assert sorted(sum(split_chunks(cells, 32, streams=2), [])) == cells


def test_side_by_side_chunks_get_the_same_strengths_whatever_the_plan_order(tiny_pipe):
    """Plan order is seed by seed, strength by strength: dealt in turn, one chunk got every odd strength and the
    other every even one (the strongest, 20 % more denoising steps), so one stream idled at the end."""
    seeds_outer = SweepPlan(images=["a.png"], prompts=["a red circle"], strengths=[i / 10 for i in range(1, 11)],
                            seeds=[0, 1, 2, 3], guidance_scales=[2.0], steps=[20], schedulers=["ddim"])
    cells = [cell for cell in seeds_outer.cells() if cell.duplicate_of is None]
    assert [cell.strength for cell in cells[:3]] == [0.1, 0.2, 0.3]
    runner = runners.BatchedRunner(as_model(tiny_pipe), [Image.new("RGB", (32, 32))], streams=2)
    keyed = [(cell, str(index)) for index, cell in enumerate(cells)]
    chunks = [chunk for chunk, _ in runner.chunks(keyed, keyed)]
    assert [len(chunk) for chunk in chunks] == [20, 20]
    strengths = [sorted(cell.strength for cell, _ in chunk) for chunk in chunks]
    assert strengths[0] == strengths[1] == sorted([i / 10 for i in range(1, 11)] * 2)


def test_which_sweeps_run_chunks_side_by_side(tiny_pipe, monkeypatch):
    model = as_model(tiny_pipe)
    source = Image.new("RGB", (32, 32))
    runner = choose_runner(model, [source], engine="batched")[0]
    monkeypatch.delenv(STREAMS_VARIABLE, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert chunk_streams(model, runner) == (2, "2 side by side, 1 torch thread(s) each (2 threads on 2 cores)")
    refused = {
        "per-cell runner": chunk_streams(model, choose_runner(model, [source], engine="per-cell")[0]),
        "launched job": chunk_streams(model, runner, distributed=True),
        "LoRA": chunk_streams(model, runner, lora=True),
        "on_step": chunk_streams(model, runner, on_step=print),
        "batch size": chunk_streams(model, choose_runner(model, [source], engine="batched", max_batch_size=4)[0]),
    }
    assert {why: streams for why, (streams, _) in refused.items()} == dict.fromkeys(refused, 1)
    assert "scaled in place" in refused["LoRA"][1] and "one cell at a time" in refused["per-cell runner"][1]
    assert "sizes one batch at a time" in refused["batch size"][1]
    monkeypatch.setattr(model, "offload", "model")
    assert chunk_streams(model, runner)[1].endswith("an offload hook or a cast VAE changes the pipeline as it runs")
    monkeypatch.setattr(model, "offload", "none")
    small = thread_rules.SMALL_MODEL_PARAMETERS
    monkeypatch.setattr(thread_rules, "SMALL_MODEL_PARAMETERS", 1000)  # the tiny pipeline counts as large
    assert chunk_streams(model, runner)[1].endswith("M parameters) keeps every thread busy in one chunk")
    monkeypatch.setattr(thread_rules, "SMALL_MODEL_PARAMETERS", small)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert chunk_streams(model, runner) == (1, "one chunk at a time: 1 torch thread(s) on 2 core(s)")
    monkeypatch.setenv(STREAMS_VARIABLE, "2")
    assert chunk_streams(model, runner)[0] == 2
    monkeypatch.setenv(STREAMS_VARIABLE, "1")
    assert chunk_streams(model, runner) == (1, f"one chunk at a time, as {STREAMS_VARIABLE} asks")
    monkeypatch.setenv(STREAMS_VARIABLE, "4")
    with pytest.raises(PlanError, match=f"^{STREAMS_VARIABLE}='4' is not 1 or 2. Fix: set it to 1"):
        chunk_streams(model, runner)


def test_a_class_its_family_does_not_declare_runs_one_chunk_at_a_time(monkeypatch):
    monkeypatch.setenv(STREAMS_VARIABLE, "2")
    model = as_model(tiny_pipeline("sd-pag"))  # PAG swaps the UNet's attention processors for its passes
    runner = choose_runner(model, [Image.new("RGB", (32, 32))], engine="batched")[0]
    assert chunk_streams(model, runner) == (1, "one chunk at a time: StableDiffusionPAGImg2ImgPipeline is not "
                                               "declared safe to run twice at once by its family module")


def test_a_failing_chunk_stops_the_streams_and_restores_threads_and_interval():
    threads, interval, done = torch.get_num_threads(), sys.getswitchinterval(), []

    def work(chunk):
        if chunk == 1:
            raise ValueError("chunk 1 failed")
        done.append(chunk)

    with pytest.raises(ValueError, match="chunk 1 failed"):
        run_side_by_side(range(5), work, streams=1)
    assert done == [0]  # nothing taken after the failure
    with pytest.raises(ValueError, match="chunk 1 failed"):
        run_side_by_side(range(5), work, streams=2)
    assert (torch.get_num_threads(), sys.getswitchinterval()) == (threads, interval)


def test_one_stream_measures_while_the_other_stores():
    """Where the last two chunks finish together, the second measures while the first stores (each step still one
    stream at a time): with one lock over both, the first store would wait here for a measure that cannot start."""
    both_measured, measured_by, stored = threading.Event(), [], []

    class Doubling:
        streams, on_work = 2, None

        def run(self, cells):
            return [2 * cell for cell in cells]

    def measure(chunk, outputs):
        measured_by.append(threading.current_thread().name)
        if len(measured_by) == 2:
            both_measured.set()
        return outputs

    def store(measured, batch_id, last):
        assert both_measured.wait(timeout=20), "the other stream could not measure while this one stored"
        stored.append((batch_id, measured, last))

    chunks = [([(1, "key 1")], "a"), ([(2, "key 2")], "b")]
    generate_side_by_side(chunks, Doubling(), record=lambda chunk, batch_id: None, measure=measure, store=store)
    assert sorted(stored) == [("a", [2], False), ("b", [4], True)]
    assert len(set(measured_by)) == 2  # each chunk on its own stream
