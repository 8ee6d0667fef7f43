"""Run folders: layout, tidy table, manifest, duplicates, resume, atomic writes, kill mid-run, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from img2img_lab.models.handle import as_model
from img2img_lab.cli.main import main
from img2img_lab.errors import StoreError
from img2img_lab.images.hashes import content_hash
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.store.run_store import RunStore, atomic_write
from img2img_lab.sweep.run import COLUMNS, run_sweep

REPO = Path(__file__).resolve().parents[2]


def _plan(sources_dir, **changes):
    values = dict(images=[str(sources_dir / "source0.png"), str(sources_dir / "source1.png")],
                  prompts=["a red circle"], strengths=[0.0, 0.04, 0.3, 0.34, 0.8], seeds=[0, 1],
                  guidance_scales=[2.0], steps=[10], schedulers=["ddim"])
    values.update(changes)
    return SweepPlan(**values)


def test_sweep_writes_a_complete_run_folder(tiny_pipe, sources_dir, tmp_path):
    run = tmp_path / "run"
    table = run_sweep(_plan(sources_dir), run, pipe=tiny_pipe, progress=False)
    assert len(table) == 2 * 5 * 2 and table["cell_key"].is_unique
    assert list(table.columns) == COLUMNS
    on_disk = pd.read_parquet(run / "results.parquet")
    assert len(on_disk) == len(table)
    pngs = sorted((run / "images").glob("*.png"))
    assert len(pngs) == len(table) and not list((run / "images").glob(".*"))
    for row in table.itertuples():
        image = Image.open(run / row.output_path)
        assert image.size == (32, 32)
        assert content_hash(image) == row.output_hash
    by_strength = table.groupby("strength").first()
    assert by_strength["executed_steps"].tolist() == [0, 0, 3, 3, 8]
    assert by_strength["zero_step"].tolist() == [True, True, False, False, False]
    assert by_strength["produced"].tolist() == ["vae_roundtrip", "duplicate:vae_roundtrip", "diffusion",
                                                "duplicate:diffusion", "diffusion"]
    assert by_strength["sqrt_alpha_bar"].is_monotonic_decreasing
    # Duplicate strengths hold the very same pixels as the strength they duplicate.
    for _, group in table.groupby(["source", "seed"]):
        hashes = dict(zip(group.strength, group.output_hash))
        assert hashes[0.34] == hashes[0.3] and hashes[0.04] == hashes[0.0] and hashes[0.8] != hashes[0.3]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model_fingerprint"]["fingerprint"] == table["model_fingerprint"].iloc[0]
    assert manifest["packages"]["torch"].startswith("2.") and manifest["dtype"] == "float32"
    assert [s["hash"] for s in manifest["sources"]] == sorted(set(table["source_hash"]), key=list(
        table["source_hash"]).index)
    assert manifest["counts"] == {"generated": 12, "reused": 8, "already_done": 0, "cells": 20,
                                  "seconds": manifest["counts"]["seconds"]}
    assert SweepPlan.from_dict(manifest["plan"]).cells() == _plan(sources_dir).cells()


def test_rerun_and_extension_compute_only_missing_cells(tiny_pipe, sources_dir, tmp_path):
    run = tmp_path / "run"
    first = run_sweep(_plan(sources_dir), run, pipe=tiny_pipe, progress=False)
    again = run_sweep(_plan(sources_dir), run, pipe=tiny_pipe, progress=False)
    assert RunStore.open(run).read_manifest()["counts"]["already_done"] == 20
    pd.testing.assert_frame_equal(first, again)
    extended = run_sweep(_plan(sources_dir, seeds=[0, 1, 2]), run, pipe=tiny_pipe, progress=False)
    counts = RunStore.open(run).read_manifest()["counts"]
    assert counts["already_done"] == 20 and counts["generated"] + counts["reused"] == 10
    assert len(extended) == 30 and len(pd.read_parquet(run / "results.parquet")) == 30


def test_run_folder_of_another_model_is_refused(tiny_pipe, sources_dir, tmp_path):
    from img2img_lab.models.loading import load_pipeline
    import torch

    run = tmp_path / "run"
    run_sweep(_plan(sources_dir, strengths=[0.5], seeds=[0]), run, pipe=tiny_pipe, progress=False)
    other = load_pipeline(as_model(tiny_pipe).folder, device="cpu")
    with torch.no_grad():
        next(other.unet.parameters()).view(-1)[0] += 1.0
    with pytest.raises(StoreError, match=r"holds a run of another model.*Fix: choose a new --out folder"):
        run_sweep(_plan(sources_dir, strengths=[0.5], seeds=[0]), run, pipe=other, progress=False)


def test_not_a_run_folder(tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(StoreError, match=r"is not empty and is not an img2img-lab run folder"):
        RunStore.create(tmp_path, {})
    with pytest.raises(StoreError, match=r"not an img2img-lab run folder"):
        RunStore.open(tmp_path)


def test_atomic_write_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "table.bin"
    atomic_write(target, lambda stream: stream.write(b"complete"))

    def failing(stream):
        stream.write(b"half of the new con")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"complete"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["table.bin"]


def test_stale_temp_files_are_removed_on_open(tmp_path):
    store = RunStore.create(tmp_path / "run", {"plan": {}})
    stale = store.images_dir / ".abc.png.x1.tmp"
    stale.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = store.images_dir / ".def.png.x2.tmp"
    fresh.write_bytes(b"in flight")
    assert RunStore.create(tmp_path / "run", {"plan": {}}).remove_stale_temp_files() == 0  # already removed
    assert not stale.exists() and fresh.exists()


def test_cli_sweep_and_info(tiny_model_dir, sources_dir, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tiny_model_dir}\nimages: {sources_dir / 'source0.png'}\nprompts: a cat\n"
                      f"strengths: [0.04, 0.5, 0.52]\nsteps: 20\nscheduler: ddim\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "= 3 cells" in out and "1 zero-step cells" in out and "1 cells run the same steps" in out
    assert main(["info", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "StableDiffusionImg2ImgPipeline" in out and "size multiple:     2 px" in out and "unet" in out
    assert main(["info", str(tiny_model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["native_resolution"] == 32


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("images: a.png\nprompts: a cat\nstrengths: [0.5, 1.5]\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "strength 1.5 is outside [0, 1]" in error and "Fix:" in error
    assert main(["info", "./no/such/model"]) == 2
    assert "model folder './no/such/model' does not exist" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([str(Path(sys.executable).parent / "img2img-lab"), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "sweep" in result.stdout and "info" in result.stdout


def test_a_rerun_with_a_new_metric_returns_the_values_it_measured(tiny_pipe, sources_dir, tmp_path):
    """The rows done before are measured at the end of the rerun; the table it returns holds those values (it used
    to return the rows cached before the measurement: NaN for every earlier cell)."""
    from img2img_lab.store.run_store import RunStore

    base = dict(images=[str(sources_dir / "source0.png")], prompts=["a cat"], seeds=[0], guidance_scales=[2.0],
                steps=[4], schedulers=["ddim"])
    run_sweep(SweepPlan(strengths=[0.5, 1.0], **base), tmp_path / "run", pipe=tiny_pipe, metrics=["ssim"],
              progress=False)
    table = run_sweep(SweepPlan(strengths=[0.5, 0.8, 1.0], **base), tmp_path / "run", pipe=tiny_pipe,
                      metrics=["ssim", "delta_e"], progress=False)
    assert table["delta_e"].notna().all()
    stored = RunStore.open(tmp_path / "run").read_table().set_index("cell_key")
    assert (table.set_index("cell_key")["delta_e"] == stored.loc[table["cell_key"], "delta_e"]).all()


@pytest.mark.slow
def test_extending_a_finished_sweep_generates_exactly_the_new_cells(tmp_path, capsys, monkeypatch):
    """Batches hold only cells to generate (issue #19): one more strength of a 40-cell embedded sweep runs its 4 cells
    through the model, one more seed its 11 (it used to run whole plan-fixed chunks again: 44 and more), and verify
    passes on what they made."""
    import img2img_lab.engine.batched as batched
    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.resources import data_path
    from img2img_lab.sweep.verify import verify_run

    pipe = load_pipeline(device="cpu")
    ran, original = [], batched.denoise_cells_batched

    def counting(pipe, cells, *args, **kwargs):
        ran.append(len(cells))
        return original(pipe, cells, *args, **kwargs)

    monkeypatch.setattr(batched, "denoise_cells_batched", counting)
    base = dict(images=[str(data_path("sources", "red_circle_on_blue.png"))],
                prompts=["a yellow star on a black background"], guidance_scales=[2.0], steps=[12])
    strengths = [round(0.1 * step, 1) for step in range(1, 11)]  # 1, 2, 3, 4, 6, 7, 8, 9, 10 and 12 of 12 steps

    def generated(plan, folder="run") -> int:
        ran.clear()
        run_sweep(plan, tmp_path / folder, pipe=pipe, progress=False, max_batch_size=4)
        stored = json.loads((tmp_path / folder / "manifest.json").read_text())["counts"]["generated"]
        assert stored == sum(ran), (stored, ran)  # every cell run through the model is a new cell, stored
        return sum(ran)

    assert generated(SweepPlan(strengths=strengths, seeds=[0, 1, 2, 3], **base)) == 40
    shutil.copytree(tmp_path / "run", tmp_path / "run-seed")
    assert generated(SweepPlan(strengths=strengths, seeds=[0, 1, 2, 3, 4], **base), "run-seed") == 10
    assert generated(SweepPlan(strengths=strengths + [0.45], seeds=[0, 1, 2, 3], **base)) == 4  # 5 steps: new
    assert generated(SweepPlan(strengths=strengths + [0.45], seeds=[0, 1, 2, 3, 4], **base)) == 11
    assert generated(SweepPlan(strengths=strengths + [0.45], seeds=[0, 1, 2, 3, 4], **base)) == 0
    monkeypatch.setattr(batched, "denoise_cells_batched", original)
    report = verify_run(tmp_path / "run", sample=3)
    with capsys.disabled():
        print(f"\n[extend] 40 cells; +1 seed generated 10; +1 strength generated 4, then +1 seed 11, rerun 0; "
              f"verify {'OK' if report.ok else 'FAILED'}")
    assert report.ok


def test_extending_by_a_prompt_or_a_source_generates_exactly_the_new_cells(tiny_pipe, sources_dir, tmp_path,
                                                                          monkeypatch):
    """The other two axes of issue #19's extension: a new prompt, then a new source, run exactly their cells; the
    cells already stored keep their pixels, and the folder matches a fresh sweep of the whole plan within the batched
    engine's tolerance (its batches were composed differently)."""
    import numpy as np

    import img2img_lab.engine.batched as batched
    from img2img_lab.images.hashes import file_pixel_hash

    ran, original = [], batched.denoise_cells_batched

    def counting(pipe, cells, *args, **kwargs):
        ran.append(len(cells))
        return original(pipe, cells, *args, **kwargs)

    monkeypatch.setattr(batched, "denoise_cells_batched", counting)
    base = dict(strengths=[0.3, 0.8], seeds=[0, 1], guidance_scales=[2.0], steps=[10], schedulers=["ddim"])
    plans = [SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["a red circle"], **base),
             SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["a red circle", "a blue square"], **base),
             SweepPlan(images=[str(sources_dir / "source0.png"), str(sources_dir / "source1.png")],
                       prompts=["a red circle", "a blue square"], **base)]
    generated, pixels = [], {}
    for plan in plans:
        ran.clear()
        table = run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, progress=False, max_batch_size=4)
        generated.append(sum(ran))
        store = RunStore.open(tmp_path / "run")
        assert {key: file_pixel_hash(store.image_path(key)) for key in pixels} == pixels  # kept as they were
        pixels = {row.cell_key: row.output_hash for row in table.itertuples()}
    assert generated == [4, 4, 8]
    fresh = run_sweep(plans[-1], tmp_path / "fresh", pipe=tiny_pipe, progress=False, max_batch_size=4)
    extended = RunStore.open(tmp_path / "run")
    worst = max(int(np.abs(np.asarray(extended.load_output(row), dtype=int)
                           - np.asarray(RunStore.open(tmp_path / "fresh").load_output(row), dtype=int)).max())
                for row in fresh.to_dict("records"))
    assert worst <= batched.BATCHED_TOLERANCE["float32"], worst


def test_a_finished_sweep_leaves_no_empty_work_folders(tiny_pipe, sources_dir, tmp_path):
    """results.parts/ and .tmp/ are working folders: a finished sweep removes them when empty, and a later sweep
    into the folder makes them again as it needs them."""
    run = tmp_path / "run"
    run_sweep(_plan(sources_dir), run, pipe=tiny_pipe, progress=False)
    assert not (run / "results.parts").exists() and not (run / ".tmp").exists()
    assert len(run_sweep(_plan(sources_dir, seeds=[0, 1, 2]), run, pipe=tiny_pipe, progress=False)) == 2 * 5 * 3
    assert not (run / "results.parts").exists() and not (run / ".tmp").exists()


def test_the_writer_thread_shortens_the_gil_switch_interval_only_while_it_runs():
    """A writer in pure Python keeps the GIL for a whole switch interval (5 ms) each time the generating thread lets it
    go between two torch operations (35 replayed UNet calls: 1.7 s alone, 93 s beside a pure-Python loop). While
    the writer thread runs the interval is :data:`SWITCH_INTERVAL`; after the block, and after an error in a chunk,
    it is the caller's again. Written in turn, nothing changes."""
    from img2img_lab.sweep.chunk_writer import SWITCH_INTERVAL, ChunkWriter

    before, seen = sys.getswitchinterval(), []
    with ChunkWriter() as writer:
        writer.submit(lambda: seen.append(sys.getswitchinterval()))
    assert seen == [pytest.approx(SWITCH_INTERVAL)] and sys.getswitchinterval() == before
    with pytest.raises(ZeroDivisionError):
        with ChunkWriter() as writer:
            writer.submit(lambda: 1 / 0)
    assert sys.getswitchinterval() == before
    with ChunkWriter(overlap=False) as writer:
        writer.submit(lambda: seen.append(sys.getswitchinterval()))
    assert seen[-1] == before


def test_a_writer_thread_stores_what_writing_in_turn_stores(tiny_pipe, sources_dir, tmp_path, monkeypatch):
    """Chunks decoded, measured and stored on the writer thread while the next one denoises (where a core is spare)
    make the same folder as chunks written in turn: the same keys, pixels and metric values, every batch recorded."""
    import torch

    import threading

    import img2img_lab.engine.batched as batched

    decoded_on, original = [], batched._decode

    def decode(*args, **kwargs):
        decoded_on.append(threading.current_thread().name.startswith("img2img-lab-writer"))
        return original(*args, **kwargs)

    monkeypatch.setattr(batched, "_decode", decode)
    plan = _plan(sources_dir, strengths=[0.5, 1.0], seeds=[0, 1], steps=[6, 8])  # one chunk per steps value
    tables = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("IMG2IMG_LAB_WRITER_THREAD", flag)
        run, decoded_on[:] = tmp_path / f"writer-{flag}", []
        tables[flag] = run_sweep(plan, run, pipe=tiny_pipe, metrics=["ssim", "psnr"], max_batch_size=2,
                                 progress=False).set_index("cell_key").sort_index()
        assert len(RunStore.open(run).batch_ids()) > 1  # several chunks: the writer overlapped at least one
        assert decoded_on == [flag == "1"] * len(decoded_on) and decoded_on  # the writer decodes, where it runs
    threaded, in_turn = tables["1"], tables["0"]
    assert list(threaded.index) == list(in_turn.index)
    assert list(threaded.output_hash) == list(in_turn.output_hash)
    assert torch.allclose(torch.tensor(threaded.ssim.to_numpy()), torch.tensor(in_turn.ssim.to_numpy()))
